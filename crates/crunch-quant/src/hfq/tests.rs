use super::hqq::{self, HqqOptions};
use super::pack::{self, GptqZeros};
use super::*;

fn lcg(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed;
    move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// A weight with a few outliers per row, like real layers.
fn weight(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut r = lcg(seed);
    (0..rows * cols)
        .map(|i| {
            let v = r() * 0.05;
            if i % 97 == 13 {
                v * 12.0
            } else {
                v
            }
        })
        .collect()
}

fn spec(bits: u8, group: usize, sym: bool) -> IntSpec {
    IntSpec { bits, group, sym, zero_min: 0 }
}

#[test]
fn rtn_values_are_scale_times_code_minus_zero() {
    let w = weight(16, 256, 1);
    for s in [spec(4, 32, true), spec(4, 128, false), spec(8, 64, true), spec(8, 256, false), spec(2, 32, false)] {
        let q = quantize_rtn("w", &w, 256, s).unwrap();
        let v = q.dequantize();
        let ng = q.groups_per_row();
        for (i, (&x, &y)) in w.iter().zip(&v).enumerate() {
            let k = (i / 256) * ng + (i % 256) / s.group;
            let step = q.scales[k].to_f32().abs();
            assert!(q.scales[k].to_f32() >= 0.0);
            assert!((x - y).abs() <= step * 0.5 + 1e-6 || !s.sym, "{s:?} at {i}: {x} -> {y} (step {step})");
            assert!(q.codes[i] <= s.max_code());
        }
        if s.sym {
            assert!(q.zeros.iter().all(|&z| z == s.mid()));
        }
        // Asymmetric round-to-nearest: the range fits the codes up to the zero's rounding, so the
        // error stays within a step.
        if !s.sym {
            for (i, (&x, &y)) in w.iter().zip(&v).enumerate() {
                let k = (i / 256) * ng + (i % 256) / s.group;
                assert!((x - y).abs() <= q.scales[k].to_f32(), "{s:?} at {i}");
            }
        }
    }
}

#[test]
fn sym_rtn_reproduces_a_q4_0_grid_exactly() {
    // Values already on a Q4_0 grid (d an f16, codes -8..7 with -8 used) come back unchanged.
    let mut r = lcg(7);
    let mut w = Vec::new();
    for _ in 0..64 {
        let d = half::f16::from_f32(0.001 + r().abs() * 0.01).to_f32();
        let mut blk: Vec<f32> = (0..32).map(|_| ((r() * 7.5).round().clamp(-7.0, 7.0)) * d).collect();
        blk[5] = -8.0 * d;
        w.extend(blk);
    }
    let q = quantize_rtn("w", &w, 256, spec(4, 32, true)).unwrap();
    assert_eq!(q.dequantize(), w);
}

#[test]
fn bad_shapes_are_named() {
    let w = vec![0.5f32; 96];
    let e = quantize_rtn("blk.0.ffn_up.weight", &w, 48, spec(4, 32, true)).unwrap_err();
    assert!(e.contains("blk.0.ffn_up.weight") && e.contains("group size 32"), "{e}");
    let mut w = vec![0.5f32; 64];
    w[40] = f32::NAN;
    let e = quantize_rtn("x", &w, 32, spec(4, 32, true)).unwrap_err();
    assert!(e.contains("row 1, column 8"), "{e}");
    assert!(quantize_rtn("x", &[0.0; 64], 32, spec(9, 32, true)).is_err());
}

#[test]
fn hqq_lowers_its_lp_error_against_round_to_nearest() {
    let w = weight(64, 512, 3);
    let s = spec(4, 64, false);
    let rtn = quantize_rtn("w", &w, 512, s).unwrap().dequantize();
    let hq = quantize_with("w", &w, 512, s, hqq::params).unwrap().dequantize();
    let lp = |v: &[f32]| -> f64 { w.iter().zip(v).map(|(a, b)| ((a - b).abs() as f64).powf(0.7)).sum() };
    let l2 = |v: &[f32]| -> f64 { w.iter().zip(v).map(|(a, b)| ((a - b) as f64).powi(2)).sum() };
    eprintln!("lp hqq {} rtn {}; l2 hqq {} rtn {}", lp(&hq), lp(&rtn), l2(&hq), l2(&rtn));
    assert!(l2(&hq) < l2(&rtn), "l2 {} vs {}", l2(&hq), l2(&rtn));
    // Without the scale grid, HQQ's zero alone is never worse than its starting point.
    let plain = HqqOptions { grid: 0, ..HqqOptions::default() };
    let hz = quantize_with("w", &w, 512, s, |x, s| hqq::params_with(x, s, &plain)).unwrap().dequantize();
    assert!(l2(&hz) <= l2(&rtn) * 1.05, "{} vs {}", l2(&hz), l2(&rtn));
    let _ = lp;
    // Symmetric formats have no zero: HQQ is round-to-nearest there.
    let sym = spec(4, 64, true);
    assert_eq!(quantize_with("w", &w, 512, sym, hqq::params).unwrap(), quantize_rtn("w", &w, 512, sym).unwrap());
    // A constant group does not divide by zero.
    assert_eq!(hqq::optimize(&[0.25; 16], 15, &HqqOptions::default()), (0.0, 0.0));
}

#[test]
fn gptq_round_trip_and_known_words() {
    let w = weight(64, 256, 5);
    for s in [spec(4, 128, true), spec(4, 32, false), spec(8, 64, true), spec(2, 64, true)] {
        let s = IntSpec { zero_min: if s.sym { 0 } else { 1 }, ..s };
        let q = quantize_rtn("w", &w, 256, s).unwrap();
        let g = pack::gptq_pack("w", &q).unwrap();
        let per = 32 / s.bits as usize;
        assert_eq!(g.qweight.len(), 256 / per * 64);
        assert_eq!(g.qzeros.len(), (256 / s.group) * 64 / per);
        assert_eq!(g.g_idx[255], (255 / s.group) as i32);
        if s.sym && s.bits == 4 {
            assert!(g.qzeros.iter().all(|&z| z as u32 == 0x7777_7777));
            assert_eq!(pack::sniff_sym_zeros(&g.qzeros, 4), Some(GptqZeros::V1));
        }
        let d =
            pack::gptq_unpack("w", s.bits, 64, 256, &g.qweight, &g.qzeros, &g.scales, Some(&g.g_idx), GptqZeros::V1)
                .unwrap();
        assert_eq!(d.values, q.dequantize(), "{s:?}");
        let back = d.groups.unwrap();
        assert_eq!((back.codes, back.zeros, back.scales), (q.codes.clone(), q.zeros.clone(), q.scales.clone()));
    }
    // Code of input i for output o sits in word [i/8, o], nibble i%8.
    let mut q = quantize_rtn("w", &vec![0.0; 8 * 8], 8, spec(4, 8, true)).unwrap();
    for (i, c) in q.codes[..8].iter_mut().enumerate() {
        *c = i as u8 + 1;
    }
    let g = pack::gptq_pack("w", &q).unwrap();
    assert_eq!(g.qweight[0] as u32, 0x8765_4321);
}

#[test]
fn gptq_act_order_g_idx_is_honoured() {
    // Two groups with swapped membership: column i belongs to group (i % 2).
    let (out, inn) = (8usize, 16usize);
    let qweight = vec![0x1111_1111i32; inn / 8 * out];
    let qzeros = vec![0x7777_7777i32; 2];
    let scales: Vec<half::f16> = (0..2 * out).map(|k| half::f16::from_f32(if k < out { 1.0 } else { 2.0 })).collect();
    let g_idx: Vec<i32> = (0..inn as i32).map(|i| i % 2).collect();
    let d = pack::gptq_unpack("l", 4, out, inn, &qweight, &qzeros, &scales, Some(&g_idx), GptqZeros::V1).unwrap();
    assert!(d.groups.is_none());
    assert_eq!(d.values[0], 1.0 * (1.0 - 8.0));
    assert_eq!(d.values[1], 2.0 * (1.0 - 8.0));
    let bad: Vec<i32> = vec![5; inn];
    let e = pack::gptq_unpack("l", 4, out, inn, &qweight, &qzeros, &scales, Some(&bad), GptqZeros::V1).unwrap_err();
    assert!(e.contains("l.g_idx[0] = 5"), "{e}");
    let e = pack::gptq_unpack("l", 4, out, inn, &qweight[1..], &qzeros, &scales, None, GptqZeros::V1).unwrap_err();
    assert!(e.contains("l.qweight"), "{e}");
}

#[test]
fn gptq_v1_refuses_zero_point_zero() {
    let w: Vec<f32> = (0..256).map(|i| (i % 32) as f32 * 0.01).collect(); // min 0: zero point 0
    let q = quantize_rtn("w", &w, 32, spec(4, 32, false)).unwrap();
    assert!(q.zeros.contains(&0));
    assert!(pack::gptq_pack("w", &q).unwrap_err().contains("zero point 0"));
    let q = quantize_rtn("w", &w, 32, IntSpec { zero_min: 1, ..spec(4, 32, false) }).unwrap();
    assert!(pack::gptq_pack("w", &q).is_ok());
}

#[test]
fn awq_interleave_and_round_trip() {
    let mut q = quantize_rtn("w", &vec![0.0; 8 * 32], 32, spec(4, 32, false)).unwrap();
    for o in 0..8 {
        q.codes[o * 32] = o as u8;
    }
    let a = pack::awq_pack("w", &q).unwrap();
    // Nibble p holds output AWQ_ORDER[p]: 0 2 4 6 1 3 5 7.
    assert_eq!(a.qweight[0] as u32, 0x7531_6420);
    let w = weight(64, 256, 9);
    let q = quantize_rtn("w", &w, 256, spec(4, 128, false)).unwrap();
    let a = pack::awq_pack("w", &q).unwrap();
    assert_eq!(a.qweight.len(), 256 * 64 / 8);
    let back = pack::awq_unpack("w", 64, 256, &a.qweight, &a.qzeros, &a.scales).unwrap();
    assert_eq!(back.dequantize(), q.dequantize());
    assert!(pack::awq_pack("w", &quantize_rtn("w", &w, 256, spec(8, 128, false)).unwrap()).is_err());
    let e = pack::awq_unpack("w", 64, 256, &a.qweight, &a.qzeros[1..], &a.scales).unwrap_err();
    assert!(e.contains("w.qzeros"), "{e}");
}

#[test]
fn compressed_tensors_is_gptq_transposed_when_symmetric() {
    let w = weight(32, 256, 11);
    let q = quantize_rtn("w", &w, 256, spec(4, 128, true)).unwrap();
    let c = pack::ct_pack("w", &q).unwrap();
    let g = pack::gptq_pack("w", &q).unwrap();
    assert!(c.weight_zero_point.is_none());
    let wpr = pack::ct_words(256, 4);
    for r in 0..wpr {
        for o in 0..32 {
            assert_eq!(c.weight_packed[o * wpr + r], g.qweight[r * 32 + o]);
        }
    }
    for s in [spec(4, 64, false), spec(8, 128, true), spec(8, 32, false)] {
        let q = quantize_rtn("w", &w, 256, s).unwrap();
        let c = pack::ct_pack("w", &q).unwrap();
        let back =
            pack::ct_unpack("w", s.bits, 32, 256, &c.weight_packed, &c.weight_scale, c.weight_zero_point.as_deref())
                .unwrap();
        assert_eq!(back, q, "{s:?}");
    }
    // Zero points are packed along the outputs: output o of group g at word [o/8, g], nibble o%8.
    let mut q = quantize_rtn("w", &vec![0.0; 8 * 64], 64, spec(4, 32, false)).unwrap();
    for o in 0..8 {
        q.zeros[o * 2 + 1] = o as u8 + 1;
    }
    let c = pack::ct_pack("w", &q).unwrap();
    assert_eq!(c.weight_zero_point.unwrap()[1] as u32, 0x8765_4321);
    let e = pack::ct_unpack("w", 4, 32, 256, &c.weight_packed, &[], None).unwrap_err();
    assert!(e.contains("w.weight_packed") || e.contains("w.weight_scale"), "{e}");
}
