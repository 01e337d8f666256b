//! TQ1_0 and TQ2_0 against the PyPI `gguf` oracle (quantized bytes and dequantized bits), dot
//! products against Q8_K, and edge values.

mod common;

use common::dequantize;
use crunch_core::GgmlType;
use crunch_quant::ternary::{tq1_0, tq2_0};
use crunch_quant::{kernels, quantize_rows};
use crunch_testkit::{bytes_f32, f32_bytes, oracle, realistic_weights, Rng, Scratch};

const TYPES: [GgmlType; 2] = [GgmlType::TQ1_0, GgmlType::TQ2_0];

fn quantize(ty: GgmlType, x: &[f32], row_len: usize) -> Vec<u8> {
    let mut out = vec![0u8; ty.tensor_size(row_len, x.len() / row_len).unwrap()];
    quantize_rows(ty, x, row_len, None, &mut out).unwrap();
    out
}

fn run_oracle(cmd: &str, ty: GgmlType, row_len: usize, input: &[u8]) -> Vec<u8> {
    let s = Scratch::new("tq");
    let (i, o) = (s.join("in"), s.join("out"));
    std::fs::write(&i, input).unwrap();
    oracle(&[cmd, ty.name(), &row_len.to_string(), i.to_str().unwrap(), o.to_str().unwrap()]);
    std::fs::read(o).unwrap()
}

/// Rows shaped like ternary-trained weights (-a, 0, +a plus noise), exact ±0.5 ties, Gaussian rows
/// and degenerate blocks.
fn test_rows(n: usize) -> Vec<f32> {
    let mut rng = Rng::new(17);
    let mut x = realistic_weights(4, n, 3);
    x.extend((0..2 * n).map(|_| ((rng.next_u64() % 3) as f32 - 1.0) * 0.05 + rng.normal() * 0.01));
    // amax 1 and values at exactly ±0.5: rounding ties away from zero
    x.extend((0..n).map(|i| match i % 4 {
        0 => 1.0,
        1 => 0.5,
        2 => -0.5,
        _ => -0.25,
    }));
    x.extend(vec![0.0; n]);
    x.extend(vec![-0.75; n]);
    x.extend((0..n).map(|i| if i == 3 { 9.0 } else { 0.0 }));
    x.extend((0..n).map(|_| rng.normal() * 1e-30));
    x
}

#[test]
fn quantize_matches_gguf_oracle() {
    for n in [256usize, 1536] {
        let x = test_rows(n);
        for ty in TYPES {
            let ours = quantize(ty, &x, n);
            let theirs = run_oracle("quantize", ty, n, &f32_bytes(&x));
            let size = ty.type_size();
            if let Some(b) =
                (0..ours.len() / size).find(|&b| ours[b * size..(b + 1) * size] != theirs[b * size..(b + 1) * size])
            {
                panic!(
                    "{ty} row len {n}: block {b} differs\n ours   {:02x?}\n theirs {:02x?}",
                    &ours[b * size..(b + 1) * size],
                    &theirs[b * size..(b + 1) * size]
                );
            }
            assert_eq!(ours.len(), theirs.len());
        }
    }
}

#[test]
fn dequantize_matches_gguf_oracle_bit_for_bit() {
    let n = 512;
    for ty in TYPES {
        let mut rng = Rng::new(ty.code() as u64);
        let size = ty.type_size();
        // arbitrary bytes (every trit byte value, codes 3 included) with finite f16 scales at the end
        let mut q: Vec<u8> = (0..8 * size).map(|_| rng.next_u64() as u8).collect();
        for b in q.chunks_exact_mut(size) {
            let mut bits = rng.next_u64() as u16;
            if bits & 0x7c00 == 0x7c00 {
                bits &= !0x4000;
            }
            b[size - 2..].copy_from_slice(&bits.to_le_bytes());
        }
        q.extend(quantize(ty, &test_rows(n), n));
        let ours = dequantize(ty, &q, n);
        let theirs = bytes_f32(&run_oracle("dequantize", ty, n, &q));
        assert_eq!(ours.len(), theirs.len());
        if let Some(i) = (0..ours.len()).find(|&i| ours[i].to_bits() != theirs[i].to_bits()) {
            panic!("{ty}: element {i}: ours {} oracle {}", ours[i], theirs[i]);
        }
    }
}

type DotFn = fn(usize, &[u8], &[u8]) -> f32;
type SimdDotFn = fn(usize, &[u8], &[u8]) -> Option<f32>;

#[test]
fn dot_products_match_dequantized_rows_and_simd_matches_scalar() {
    let cases: [(GgmlType, DotFn, SimdDotFn); 2] = [
        (GgmlType::TQ1_0, tq1_0::vec_dot_scalar, tq1_0::vec_dot_simd),
        (GgmlType::TQ2_0, tq2_0::vec_dot_scalar, tq2_0::vec_dot_simd),
    ];
    for (ty, scalar, simd) in cases {
        let k = kernels(ty).unwrap();
        assert_eq!((k.dot_type, k.uses_weights), (GgmlType::Q8_K, false));
        for n in [256usize, 2048] {
            let x = quantize(ty, &test_rows(n)[..n], n);
            let y = quantize(GgmlType::Q8_K, &realistic_weights(1, n, 9), n);
            let xd = dequantize(ty, &x, n);
            let yd = dequantize(GgmlType::Q8_K, &y, n);
            let exact: f64 = xd.iter().zip(&yd).map(|(&a, &b)| a as f64 * b as f64).sum();
            let mag: f64 = xd.iter().zip(&yd).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum::<f64>() + 1e-30;
            let s = scalar(n, &x, &y);
            assert!((s as f64 - exact).abs() <= 1e-5 * mag, "{ty}: {s} vs {exact}");
            if let Some(v) = simd(n, &x, &y) {
                // both sum integers exactly and scale once per block: identical results
                assert_eq!(v.to_bits(), s.to_bits(), "{ty}: simd {v} vs scalar {s}");
            }
            assert_eq!((k.vec_dot.unwrap())(n, &x, &y).to_bits(), s.to_bits());
            // arbitrary bytes (every packed value) with a moderate scale: still exact
            let mut rng = Rng::new(n as u64);
            let size = ty.type_size();
            let mut raw: Vec<u8> = (0..x.len()).map(|_| rng.next_u64() as u8).collect();
            for b in raw.chunks_exact_mut(size) {
                b[size - 2..].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
            }
            let s = scalar(n, &raw, &y);
            if let Some(v) = simd(n, &raw, &y) {
                assert_eq!(v.to_bits(), s.to_bits(), "{ty} arbitrary bytes: simd {v} vs scalar {s}");
            }
        }
    }
}

#[test]
fn edge_values_are_safe() {
    let n = 256;
    let mut rng = Rng::new(3);
    let rows: Vec<Vec<f32>> = vec![
        vec![0.0; n],
        vec![0.5; n],
        (0..n).map(|_| (rng.uniform() - 0.5) * 1.2e5).collect(),
        (0..n).map(|_| rng.normal() * 1e-41).collect(),
        (0..n).map(|i| if i == 77 { 7.0 } else { 0.0 }).collect(),
    ];
    for ty in TYPES {
        let k = kernels(ty).unwrap();
        for (r, row) in rows.iter().enumerate() {
            let mut q = vec![0u8; ty.row_size(n).unwrap()];
            (k.quantize)(row, Some(&vec![1.0; n]), &mut q);
            let mut back = vec![0f32; n];
            (k.dequantize)(&q, &mut back);
            assert!(back.iter().all(|v| v.is_finite()), "{ty} row {r}");
        }
    }
}
