//! IQ4_NL and IQ4_XS: dequantization against the PyPI `gguf` oracle, quantization against hashes of
//! llama.cpp's own output (gguf has no IQ4 quantizer; `scripts/compare_quant_bytes_legacy.py`
//! compares many more rows with llama.cpp directly), SIMD vs scalar dot products, edge values and
//! the importance-weighted search.

mod common;

use common::{
    dequantize, fnv1a, golden_importance, golden_input, oracle_dequantize, quantize, random_blocks, weighted_error,
};
use crunch_core::GgmlType;
use crunch_quant::iquants::{iq4_nl, iq4_xs, KVALUES};
use crunch_quant::kernels;
use crunch_testkit::{realistic_importance, realistic_weights, Rng};

const TYPES: [GgmlType; 2] = [GgmlType::IQ4_NL, GgmlType::IQ4_XS];

#[test]
fn dequantize_matches_gguf_oracle_bit_for_bit() {
    for ty in TYPES {
        let n = 1536;
        let mut q = random_blocks(ty, 4 * n / ty.block_size(), ty.code() as u64);
        q.extend(quantize(ty, &realistic_weights(3, n, 4), n, None));
        q.extend(quantize(ty, &realistic_weights(3, n, 5), n, Some(&realistic_importance(n, 6))));
        let ours = dequantize(ty, &q, n);
        let theirs = oracle_dequantize(ty, &q, n);
        assert_eq!(ours.len(), theirs.len());
        if let Some(i) = (0..ours.len()).find(|&i| ours[i].to_bits() != theirs[i].to_bits()) {
            panic!("{ty}: element {i}: ours {} oracle {}", ours[i], theirs[i]);
        }
    }
}

#[test]
fn quantize_matches_llama_cpp_golden_hashes() {
    // FNV-1a of llama.cpp's `ggml_quantize_chunk` output for 4 rows of 1024 (without / with imatrix)
    let n = 1024;
    let x = golden_input(4 * n);
    let imp = golden_importance(n);
    for (ty, plain, weighted) in [
        (GgmlType::IQ4_NL, 0x774b5dbbcc90eee2u64, 0x6c4674b829cb8cfcu64),
        (GgmlType::IQ4_XS, 0xb9285d8582ab01f3, 0xaf69c80109c5cae7),
    ] {
        assert_eq!(fnv1a(&quantize(ty, &x, n, None)), plain, "{ty} without weights");
        assert_eq!(fnv1a(&quantize(ty, &x, n, Some(&imp))), weighted, "{ty} with weights");
    }
}

#[test]
fn zero_super_block_keeps_llama_cpps_negative_zero_scale() {
    // llama.cpp stores -(0)/32 = -0.0 as the IQ4_XS scale of an all-zero super-block
    let q = quantize(GgmlType::IQ4_XS, &[0.0; 256], 256, None);
    assert_eq!(&q[..2], &[0x00, 0x80]);
    // codes point at the entry nearest to zero
    assert!(q[8..].iter().all(|&b| b == 0x88));
    let q = quantize(GgmlType::IQ4_NL, &[0.0; 32], 32, None);
    assert_eq!(&q[..2], &[0, 0]);
    assert_eq!(KVALUES[8], 1);
}

type DotFn = fn(usize, &[u8], &[u8]) -> f32;
type SimdDotFn = fn(usize, &[u8], &[u8]) -> Option<f32>;

#[test]
fn simd_dot_matches_scalar() {
    let cases: [(GgmlType, DotFn, SimdDotFn); 2] = [
        (GgmlType::IQ4_NL, iq4_nl::vec_dot_scalar, iq4_nl::vec_dot_simd),
        (GgmlType::IQ4_XS, iq4_xs::vec_dot_scalar, iq4_xs::vec_dot_simd),
    ];
    for (ty, scalar, simd) in cases {
        let k = kernels(ty).unwrap();
        for (n, seed) in [(256usize, 1u64), (1536, 2), (4096, 3)] {
            let act = realistic_weights(1, n, seed + 50);
            let y = quantize(k.dot_type, &act, n, None);
            let xs =
                [quantize(ty, &realistic_weights(1, n, seed), n, None), random_blocks(ty, n / ty.block_size(), seed)];
            for x in &xs {
                let xd = dequantize(ty, x, n);
                let yd = dequantize(k.dot_type, &y, n);
                let exact: f64 = xd.iter().zip(&yd).map(|(&a, &b)| a as f64 * b as f64).sum();
                let mag: f64 = xd.iter().zip(&yd).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum::<f64>() + 1e-30;
                let s = scalar(n, x, &y);
                assert!((s as f64 - exact).abs() <= 1e-4 * mag, "{ty}: scalar {s} vs {exact}");
                assert_eq!((k.vec_dot.unwrap())(n, x, &y).to_bits(), simd(n, x, &y).unwrap_or(s).to_bits());
                if let Some(v) = simd(n, x, &y) {
                    assert!(((v - s) as f64).abs() <= 1e-5 * mag, "{ty}: simd {v} vs scalar {s}");
                }
            }
        }
    }
}

#[test]
fn kernels_are_wired_as_in_llama_cpp() {
    for (ty, dot) in [(GgmlType::IQ4_NL, GgmlType::Q8_0), (GgmlType::IQ4_XS, GgmlType::Q8_K)] {
        let k = kernels(ty).unwrap();
        assert_eq!((k.ty, k.dot_type, k.uses_weights), (ty, dot, true));
        assert!(k.vec_dot.is_some());
    }
}

#[test]
fn edge_values_are_safe() {
    let n = 512;
    let mut rng = Rng::new(5);
    let rows: Vec<Vec<f32>> = vec![
        vec![0.0; n],
        vec![0.5; n],
        vec![-2.0; n],
        (0..n).map(|_| (rng.uniform() - 0.5) * 1.2e5).collect(),
        (0..n).map(|_| rng.normal() * 1e-30).collect(),
        (0..n).map(|_| rng.normal() * 1e-41).collect(),
        (0..n).map(|i| if i == 77 { 7.0 } else { 0.0 }).collect(),
        (0..n).map(|i| if i == 5 { -300.0 } else { rng.normal() * 1e-3 }).collect(),
        (0..n).map(|i| if i < 256 { 0.0 } else { rng.normal() }).collect(),
    ];
    let imps = [None, Some(realistic_importance(n, 3)), Some(vec![0.0; n]), Some(vec![1e-30; n])];
    for ty in TYPES {
        let k = kernels(ty).unwrap();
        for (r, row) in rows.iter().enumerate() {
            for imp in &imps {
                let mut q = vec![0u8; ty.row_size(n).unwrap()];
                (k.quantize)(row, imp.as_deref(), &mut q);
                let mut back = vec![0f32; n];
                (k.dequantize)(&q, &mut back);
                assert!(back.iter().all(|v| v.is_finite()), "{ty} row {r}");
                let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                let err = row.iter().zip(&back).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(err <= 2.0 * amax + 1e-6, "{ty} row {r}: error {err}, amax {amax}");
            }
        }
    }
}

#[test]
fn importance_weights_lower_the_weighted_error() {
    let n = 1536;
    let x = realistic_weights(16, n, 31);
    let imp = realistic_importance(n, 32);
    for ty in TYPES {
        let plain = weighted_error(&x, &dequantize(ty, &quantize(ty, &x, n, None), n), &imp);
        let weighted = weighted_error(&x, &dequantize(ty, &quantize(ty, &x, n, Some(&imp)), n), &imp);
        assert!(weighted < 0.9 * plain, "{ty}: weighted {weighted} vs plain {plain}");
    }
}

#[test]
fn non_linear_grid_beats_q4_0() {
    let n = 1536;
    let x = realistic_weights(16, n, 41);
    let ones = vec![1.0f32; n];
    let err = |ty| weighted_error(&x, &dequantize(ty, &quantize(ty, &x, n, None), n), &ones);
    let q4 = err(GgmlType::Q4_0);
    assert!(err(GgmlType::IQ4_NL) < q4, "IQ4_NL vs Q4_0");
    assert!(err(GgmlType::IQ4_XS) < q4, "IQ4_XS vs Q4_0");
}

#[test]
fn misaligned_buffers_give_the_same_bytes() {
    let n = 512;
    let x = realistic_weights(1, n, 8);
    for ty in TYPES {
        let k = kernels(ty).unwrap();
        let aligned = quantize(ty, &x, n, None);
        let mut buf = vec![0u8; aligned.len() + 1];
        (k.quantize)(&x, None, &mut buf[1..]);
        assert_eq!(&buf[1..], &aligned[..], "{ty}");
        let mut back = vec![0f32; n];
        (k.dequantize)(&buf[1..], &mut back);
        assert_eq!(back, dequantize(ty, &aligned, n), "{ty}");
    }
}
