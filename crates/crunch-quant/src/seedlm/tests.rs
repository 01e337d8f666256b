use super::*;
use crunch_testkit::Rng;

fn gaussian(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.normal() * scale).collect()
}

#[test]
fn the_register_visits_every_nonzero_state_once() {
    let mut seen = vec![false; 65536];
    let mut s = 1u16;
    for _ in 0..N_SEEDS {
        assert!(!seen[s as usize], "state {s} repeated");
        seen[s as usize] = true;
        s = lfsr_step(s);
    }
    assert_eq!(s, 1, "period is 65535");
    assert!(!seen[0]);
}

#[test]
fn basis_values_are_states_scaled_to_minus_one_one() {
    let mut u = [0f32; 24];
    basis(1, CONFIG_4BIT, &mut u);
    let mut s = 1u16;
    for &v in &u {
        s = lfsr_step(s);
        assert_eq!(v * 32768.0 + 32768.0, s as f32);
        assert!((-1.0..1.0).contains(&v));
    }
}

#[test]
fn sizes_match_the_configurations() {
    assert_eq!(CONFIG_4BIT.bits_per_weight(), 4.0);
    assert_eq!(CONFIG_3BIT.bits_per_weight(), 3.0);
    assert_eq!(CONFIG_4BIT.tensor_bytes(10), 20 + 20);
    assert_eq!(CONFIG_3BIT.tensor_bytes(3), 6 + 8);
    assert_eq!(Config::named("3bit"), Some(CONFIG_3BIT));
    assert_eq!(Config::from_dims(8, 3), Some(CONFIG_4BIT));
    assert_eq!(Config::named("2bit"), None);
}

#[test]
fn pseudo_inverses_invert_the_bases() {
    for cfg in [CONFIG_4BIT, CONFIG_3BIT] {
        let t = Tables::get(cfg);
        // Consecutive register states are correlated (each is the last shifted by a bit), so a few
        // hundred bases lose rank; they are never chosen.
        let unusable = t.usable.iter().filter(|&&u| !u).count();
        assert!(unusable < N_SEEDS / 100, "{cfg:?}: {unusable} rank-deficient seeds");
        let (c, p) = (cfg.c, cfg.p);
        for idx in (0..N_SEEDS).step_by(997).filter(|&i| t.usable[i]) {
            let u = t.u_of(idx);
            let pinv = &t.pinv[idx * c * p..(idx + 1) * c * p];
            for a in 0..p {
                for b in 0..p {
                    let v: f32 = (0..c).map(|i| pinv[a * c + i] * u[i * p + b]).sum();
                    let want = if a == b { 1.0 } else { 0.0 };
                    assert!((v - want).abs() < 1e-4, "seed {} U⁺U[{a}][{b}] = {v}", idx + 1);
                }
            }
        }
    }
}

#[test]
fn codes_survive_packing() {
    for cfg in [CONFIG_4BIT, CONFIG_3BIT] {
        let mut rng = Rng::new(3);
        let codes: Vec<Code> = (0..37)
            .map(|_| {
                let mut q = [0i8; 4];
                for qj in &mut q[..cfg.p] {
                    *qj = (rng.next_u64() % 16) as i8 - 8;
                }
                Code { seed: (rng.next_u64() % 65535) as u16 + 1, exp: (rng.next_u64() % 16) as u8, q }
            })
            .collect();
        let bytes = pack(&codes, cfg);
        assert_eq!(bytes.len(), cfg.tensor_bytes(codes.len()));
        assert_eq!(unpack(&bytes, codes.len(), cfg).unwrap(), codes);
        assert!(unpack(&bytes[1..], codes.len(), cfg).is_none(), "a short tensor is refused");
        let mut whole = vec![0f32; codes.len() * cfg.c];
        assert!(decode_tensor(&bytes, cfg, -9, &mut whole));
        for (code, got) in codes.iter().zip(whole.chunks_exact(cfg.c)) {
            let mut one = vec![0f32; cfg.c];
            decode_block(code, cfg, -9, &mut one);
            assert_eq!(got, &one[..]);
        }
        assert!(!decode_tensor(&bytes, cfg, -9, &mut whole[..cfg.c]), "wrong size refused");
    }
}

#[test]
fn the_exponent_uses_the_whole_mantissa_range() {
    for t in [[0.3f32, -0.01, 0.2], [-1.7, 0.4, 0.0], [0.0234, 0.0117, -0.0001]] {
        let (code, q) = quantize_coeffs(&t, -20);
        let e = code as i32 - 20;
        let top = q[..3].iter().map(|v| v.unsigned_abs()).max().unwrap();
        assert!((4..=8).contains(&top), "{t:?}: q {q:?} at 2^{e}");
        // One exponent lower would not fit.
        let inv = (-(e - 1) as f32).exp2();
        assert!(t.iter().any(|&v| !(-8.0..=7.0).contains(&(v * inv).round())));
    }
    // Clamped at the tensor's exponents, both ends.
    assert_eq!(quantize_coeffs(&[1e-9, 0.0, 0.0], -20).0, 0);
    assert_eq!(quantize_coeffs(&[1000.0, -1000.0, 0.0], -20), (15, [7, -8, 0, 0]));
}

/// `d`: the importance of the blocks' `C` positions, or none.
fn check_search_matches_reference(cfg: Config, w: &[f32], d: Option<&[f32]>) {
    let e_min = exponent_base(w);
    let weighted = d.map(|d| Tables::weighted(cfg, d));
    let tables = weighted.as_ref().unwrap_or_else(|| Tables::get(cfg));
    let mut stats = SearchStats::default();
    let fast = encode_blocks(w, tables, e_min, &mut stats);
    for (b, code) in fast.iter().enumerate() {
        let wb = &w[b * cfg.c..(b + 1) * cfg.c];
        let (want, _) = encode_block_exhaustive(wb, tables, e_min);
        assert_eq!(*code, want, "block {b} ({cfg:?}, weighted {})", d.is_some());
    }
    assert!(stats.skipped_share() > 0.5, "the bound skipped only {:.3}", stats.skipped_share());
}

#[test]
fn search_with_the_bound_equals_the_exhaustive_search_on_random_blocks() {
    for (k, cfg) in [CONFIG_4BIT, CONFIG_3BIT].into_iter().enumerate() {
        let mut w = gaussian(cfg.c * 12, 0.02, 10 + k as u64);
        // Special blocks: all zero, one outlier, tiny values.
        w[..cfg.c].fill(0.0);
        w[cfg.c + 2] = 0.9;
        for v in &mut w[2 * cfg.c..3 * cfg.c] {
            *v *= 1e-4;
        }
        check_search_matches_reference(cfg, &w, None);
        let d: Vec<f32> = gaussian(cfg.c, 1.0, 99).iter().map(|v| 0.05 + v.abs()).collect();
        check_search_matches_reference(cfg, &w, Some(&d));
    }
}

#[test]
fn search_with_the_bound_equals_the_exhaustive_search_on_real_weights() {
    let path = crunch_testkit::smollm2_gguf();
    let file = crunch_core::gguf::GgufFile::open(&path).expect("SmolLM2 test model");
    let info = file.tensor("blk.3.ffn_down.weight").expect("tensor").clone();
    let k = crate::kernels(info.ty).expect("kernels");
    let row_len = info.row_len() as usize;
    let mut rows = vec![0f32; 2 * row_len];
    let bytes = file.tensor_data(&info);
    let row_bytes = bytes.len() / info.n_rows() as usize;
    (k.dequantize)(&bytes[..2 * row_bytes], &mut rows);
    for cfg in [CONFIG_4BIT, CONFIG_3BIT] {
        let w = &rows[..cfg.c * 10];
        check_search_matches_reference(cfg, w, None);
        let imp = crunch_testkit::realistic_importance(cfg.c, 5);
        check_search_matches_reference(cfg, w, Some(&imp));
    }
}

#[test]
fn simd_energies_equal_the_scalar_reference() {
    #[cfg(target_arch = "x86_64")]
    if crate::legacy::simd::has_avx2_fma() {
        for cfg in [CONFIG_4BIT, CONFIG_3BIT] {
            let t = Tables::get(cfg);
            let cp = cfg.c * cfg.p;
            let w = gaussian(cfg.c, 0.05, 1);
            for tile in [0, 17, TABLE_SEEDS / TILE - 1] {
                let qt = &t.qt[tile * cp * TILE..(tile + 1) * cp * TILE];
                let (mut a, mut b) = (vec![0f32; TILE], vec![0f32; TILE]);
                let (mut ma, mut mb) = (vec![0f32; kernel::CHUNKS], vec![0f32; kernel::CHUNKS]);
                kernel::energies_scalar(qt, &w, cfg, &mut a, &mut ma);
                kernel::energies_avx2(qt, &w, cfg, &mut b, &mut mb);
                assert_eq!(a, b);
                assert_eq!(ma, mb);
                assert_eq!(ma[3], a[48..64].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)));
            }
        }
    }
}

#[test]
fn energies_are_the_projection_of_the_block() {
    // ‖Qᵀw‖² equals ‖U U⁺ w‖² (the least-squares fit's energy), seed by seed.
    let cfg = CONFIG_3BIT;
    let t = Tables::get(cfg);
    let cp = cfg.c * cfg.p;
    let w = gaussian(cfg.c, 0.05, 2);
    let mut e = vec![0f32; TILE];
    kernel::energies_scalar(&t.qt[..cp * TILE], &w, cfg, &mut e, &mut [0f32; kernel::CHUNKS]);
    for idx in [0usize, 5, 1000] {
        let (u, pinv) = (t.u_of(idx), t.pinv_of(idx));
        let coef: Vec<f64> =
            (0..cfg.p).map(|j| (0..cfg.c).map(|i| pinv[j * cfg.c + i] as f64 * w[i] as f64).sum()).collect();
        let fit: f64 =
            (0..cfg.c).map(|i| (0..cfg.p).map(|j| u[i * cfg.p + j] as f64 * coef[j]).sum::<f64>().powi(2)).sum();
        assert!((e[idx] as f64 - fit).abs() < 1e-6 * fit.max(1e-12), "seed {}: {} vs {fit}", idx + 1, e[idx]);
    }
}

#[test]
fn encoding_a_tensor_then_decoding_it_is_close_and_weighted_fits_favour_important_columns() {
    let (rows, row_len) = (6, 96);
    let w = crunch_testkit::realistic_weights(rows, row_len, 4);
    let imp: Vec<f32> = (0..row_len).map(|i| if i % 8 < 2 { 50.0 } else { 1.0 }).collect();
    for cfg in [CONFIG_4BIT, CONFIG_3BIT] {
        let (bytes, e_min, stats) = encode_tensor(&w, row_len, None, cfg, &|_| true).unwrap();
        assert_eq!(stats.blocks as usize, w.len() / cfg.c);
        let mut back = vec![0f32; w.len()];
        assert!(decode_tensor(&bytes, cfg, e_min, &mut back));
        let err: f64 = w.iter().zip(&back).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let energy: f64 = w.iter().map(|&a| (a as f64).powi(2)).sum();
        let rel = (err / energy).sqrt();
        assert!(rel < if cfg == CONFIG_4BIT { 0.45 } else { 0.55 }, "{cfg:?}: relative error {rel}");

        let (wbytes, e_min_w, _) = encode_tensor(&w, row_len, Some(&imp), cfg, &|_| true).unwrap();
        let mut wback = vec![0f32; w.len()];
        assert!(decode_tensor(&wbytes, cfg, e_min_w, &mut wback));
        let werr = |r: &[f32]| -> f64 {
            w.iter().zip(r).enumerate().map(|(k, (a, b))| imp[k % row_len] as f64 * ((a - b) as f64).powi(2)).sum()
        };
        assert!(werr(&wback) < werr(&back), "{cfg:?}: weighted fit lowers the weighted error");
    }
    // Stopping returns nothing.
    assert!(encode_tensor(&w, row_len, None, CONFIG_4BIT, &|_| false).is_none());
}
