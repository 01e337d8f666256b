//! Legacy block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1) against the PyPI `gguf` oracle and
//! llama.cpp: quantized bytes, dequantized bits, SIMD vs scalar dot products, edge values and the
//! importance-weighted search.
//!
//! Also home of `llama_cpp_byte_equality` (ignored): driven by `scripts/compare_quant_bytes_legacy.py`,
//! it compares every type of the legacy, IQ4 and ternary families with llama.cpp's C quantizer.

mod common;

use common::{fnv1a, golden_importance, golden_input, oracle_dequantize, weighted_error};
use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;
use crunch_quant::legacy::q8_1::BlockQ8_1;
use crunch_quant::legacy::{q4_0, q4_1, q5_0, q5_1, q8_0, q8_1};
use crunch_quant::{dequantize_rows, kernels, quantize_rows};
use crunch_testkit::{bytes_f32, f32_bytes, oracle, realistic_importance, realistic_weights, Rng, Scratch};
use half::f16;

const ORACLE_QUANT: [GgmlType; 5] = [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1];

/// Bytes per block as llama.cpp lays them out. `GgmlType::Q8_1.type_size()` still says 40 (gguf-py's
/// stale value from when `d` and `s` were f32); llama.cpp's `block_q8_1` holds two f16, 36 bytes.
fn block_bytes(ty: GgmlType) -> usize {
    if ty == GgmlType::Q8_1 {
        size_of::<BlockQ8_1>()
    } else {
        ty.type_size()
    }
}

/// Quantize whole rows through the public `quantize_rows` (row by row through the kernels for Q8_1,
/// whose table size disagrees with its block, see [`block_bytes`]).
fn quantize(ty: GgmlType, x: &[f32], row_len: usize, imatrix: Option<&[f32]>) -> Vec<u8> {
    let row_bytes = row_len / ty.block_size() * block_bytes(ty);
    let mut out = vec![0u8; x.len() / row_len * row_bytes];
    if ty == GgmlType::Q8_1 {
        for (o, r) in out.chunks_exact_mut(row_bytes).zip(x.chunks_exact(row_len)) {
            q8_1::quantize(r, None, o);
        }
    } else {
        quantize_rows(ty, x, row_len, imatrix, &mut out).unwrap();
    }
    out
}

fn dequantize(ty: GgmlType, q: &[u8], row_len: usize) -> Vec<f32> {
    let row_bytes = row_len / ty.block_size() * block_bytes(ty);
    let mut out = vec![0f32; q.len() / row_bytes * row_len];
    if ty == GgmlType::Q8_1 {
        q8_1::dequantize(q, &mut out);
    } else {
        dequantize_rows(ty, q, row_len, &mut out).unwrap();
    }
    out
}

fn oracle_quantize(ty: GgmlType, x: &[f32], row_len: usize) -> Vec<u8> {
    let s = Scratch::new("lg-q");
    std::fs::write(s.join("in.f32"), f32_bytes(x)).unwrap();
    let (i, o) = (s.join("in.f32"), s.join("out.bin"));
    oracle(&["quantize", ty.name(), &row_len.to_string(), i.to_str().unwrap(), o.to_str().unwrap()]);
    std::fs::read(o).unwrap()
}

/// Assert byte equality, naming the first differing block.
fn assert_same_bytes(ty: GgmlType, what: &str, ours: &[u8], theirs: &[u8]) {
    assert_eq!(ours.len(), theirs.len(), "{ty} {what}: length");
    let size = block_bytes(ty);
    let bad: Vec<usize> = (0..ours.len() / size)
        .filter(|&b| ours[b * size..(b + 1) * size] != theirs[b * size..(b + 1) * size])
        .collect();
    if let Some(&b) = bad.first() {
        panic!(
            "{ty} {what}: {} of {} blocks differ; first block {b}:\n ours   {:02x?}\n theirs {:02x?}",
            bad.len(),
            ours.len() / size,
            &ours[b * size..(b + 1) * size],
            &theirs[b * size..(b + 1) * size]
        );
    }
}

fn assert_same_bits(ty: GgmlType, what: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{ty} {what}: length");
    if let Some(i) = (0..ours.len()).find(|&i| ours[i].to_bits() != theirs[i].to_bits()) {
        panic!(
            "{ty} {what}: element {i}: ours {} ({:#x}), oracle {} ({:#x})",
            ours[i],
            ours[i].to_bits(),
            theirs[i],
            theirs[i].to_bits()
        );
    }
}

/// Random block bytes whose f16 fields hold random finite values (any exponent but inf/NaN).
fn random_blocks(ty: GgmlType, n_blocks: usize, f16_offsets: &[usize], seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let size = block_bytes(ty);
    let mut out: Vec<u8> = (0..n_blocks * size).map(|_| rng.next_u64() as u8).collect();
    for b in out.chunks_exact_mut(size) {
        for &o in f16_offsets {
            let mut bits = rng.next_u64() as u16;
            if bits & 0x7c00 == 0x7c00 {
                bits &= !0x4000; // keep it finite
            }
            b[o..o + 2].copy_from_slice(&bits.to_le_bytes());
        }
    }
    out
}

fn f16_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 => &[0, 2],
        _ => &[0],
    }
}

/// Rows with exact rounding ties (values on coarse grids) and degenerate blocks, 32 per block.
fn ties_and_edges() -> Vec<f32> {
    let mut rng = Rng::new(7);
    let mut x: Vec<f32> = (0..512).map(|_| ((rng.next_u64() % 33) as f32 - 16.0) * 0.125).collect();
    x.extend((0..256).map(|_| ((rng.next_u64() % 81) as f32 - 40.0) * 0.5 + 0.25));
    x.extend([0.0f32; 32]);
    x.extend([0.75f32; 32]);
    x.extend([-3.0f32; 32]);
    x.extend((0..32).map(|i| if i == 9 { 5.0 } else { 0.0 }));
    x.extend((0..32).map(|_| rng.normal() * 1e-30));
    x.extend((0..32).map(|_| (rng.uniform() - 0.5) * 1.2e5));
    x.extend((0..32).map(|i| if i % 2 == 0 { 1e-8 } else { -1e-8 }));
    x.extend((0..32).map(|i| i as f32 - 16.0));
    x
}

/// The SmolLM2 test model, read with crunch-core's GGUF reader.
fn smollm2() -> GgufFile {
    GgufFile::open(crunch_testkit::smollm2_gguf()).expect("open SmolLM2 GGUF")
}

/// First `rows` rows of a real tensor: (type, row length, raw bytes).
fn real_tensor(file: &GgufFile, name: &str, rows: usize) -> (GgmlType, usize, Vec<u8>) {
    let info = file.tensor(name).unwrap_or_else(|| panic!("no tensor {name}"));
    let row_len = info.row_len() as usize;
    let bytes = file.tensor_data(info);
    (info.ty, row_len, bytes[..rows * info.ty.row_size(row_len).unwrap()].to_vec())
}

/// Quantization of every test section equals the oracle's. Unweighted legacy quantization is
/// block-local, so each type needs one oracle run over all sections concatenated (rows of 32).
#[test]
fn quantize_matches_gguf_oracle() {
    let model = smollm2();
    let mut inputs: Vec<(String, usize, Vec<f32>)> = Vec::new();
    for (row_len, rows, seed) in [(32usize, 24usize, 1u64), (576, 6, 2), (1536, 3, 3)] {
        inputs.push((format!("random {rows}x{row_len}"), row_len, realistic_weights(rows, row_len, seed)));
    }
    inputs.push(("ties and edges".into(), 32, ties_and_edges()));
    // real values already sit on a quantization grid: full of rounding ties
    for name in ["blk.0.ffn_down.weight", "token_embd.weight"] {
        let (ty, row_len, q) = real_tensor(&model, name, 16);
        inputs.push((format!("re-quantized {name}"), row_len, dequantize(ty, &q, row_len)));
    }
    let all: Vec<f32> = inputs.iter().flat_map(|(_, _, x)| x.iter().copied()).collect();
    for ty in ORACLE_QUANT {
        let theirs = oracle_quantize(ty, &all, 32);
        let mut off = 0;
        for (label, row_len, x) in &inputs {
            let ours = quantize(ty, x, *row_len, None);
            assert_same_bytes(ty, label, &ours, &theirs[off..off + ours.len()]);
            off += ours.len();
        }
        assert_eq!(off, theirs.len());
    }
}

#[test]
fn dequantize_matches_gguf_oracle_bit_for_bit() {
    for ty in ORACLE_QUANT {
        // arbitrary block contents, plus what our quantizer produces
        let mut q = random_blocks(ty, 5 * 576 / 32, f16_offsets(ty), ty.code() as u64);
        q.extend(quantize(ty, &realistic_weights(4, 576, 11), 576, None));
        let ours = dequantize(ty, &q, 576);
        let theirs = oracle_dequantize(ty, &q, 576);
        assert_same_bits(ty, "dequantize", &ours, &theirs);
    }
}

#[test]
fn q8_1_quantize_and_dequantize_are_consistent() {
    // gguf has no Q8_1 quantizer/dequantizer; check against Q8_0 (same d and qs) and s = d·Σq
    let x = realistic_weights(4, 576, 5);
    let q81 = quantize(GgmlType::Q8_1, &x, 576, None);
    let q80 = quantize(GgmlType::Q8_0, &x, 576, None);
    for (b1, b0) in q81.chunks_exact(36).zip(q80.chunks_exact(34)) {
        assert_eq!(&b1[..2], &b0[..2]);
        assert_eq!(&b1[4..], &b0[2..]);
        let d = f16::from_le_bytes([b0[0], b0[1]]).to_f32();
        let sum: i32 = b0[2..].iter().map(|&v| v as i8 as i32).sum();
        let s = f16::from_le_bytes([b1[2], b1[3]]);
        // s is f16(sum * d) with the unrounded f32 d: within one f16 ulp of the rounded product
        let approx = sum as f32 * d;
        assert!((s.to_f32() - approx).abs() <= approx.abs() * 2e-3 + 1e-7, "s {s} vs {approx}");
    }
    assert_same_bits(
        GgmlType::Q8_1,
        "dequantize",
        &dequantize(GgmlType::Q8_1, &q81, 576),
        &dequantize(GgmlType::Q8_0, &q80, 576),
    );
}

#[test]
fn real_smollm2_tensors_dequantize_like_gguf() {
    let model = smollm2();
    for (name, rows) in [("blk.0.ffn_down.weight", 576usize), ("blk.5.attn_k.weight", 64), ("token_embd.weight", 256)] {
        let (ty, row_len, q) = real_tensor(&model, name, rows);
        assert!(matches!(ty, GgmlType::Q4_1 | GgmlType::Q8_0), "{name} is {ty}");
        assert_same_bits(ty, name, &dequantize(ty, &q, row_len), &oracle_dequantize(ty, &q, row_len));
    }
}

type DotFn = fn(usize, &[u8], &[u8]) -> f32;
type SimdDotFn = fn(usize, &[u8], &[u8]) -> Option<f32>;

fn dot_cases() -> Vec<(GgmlType, DotFn, SimdDotFn)> {
    vec![
        (GgmlType::Q4_0, q4_0::vec_dot_scalar, q4_0::vec_dot_simd),
        (GgmlType::Q4_1, q4_1::vec_dot_scalar, q4_1::vec_dot_simd),
        (GgmlType::Q5_0, q5_0::vec_dot_scalar, q5_0::vec_dot_simd),
        (GgmlType::Q5_1, q5_1::vec_dot_scalar, q5_1::vec_dot_simd),
        (GgmlType::Q8_0, q8_0::vec_dot_scalar, q8_0::vec_dot_simd),
    ]
}

/// Check scalar dot == f64 dot of the dequantized rows (loosely) and SIMD == scalar (tightly).
fn check_dot(ty: GgmlType, scalar: DotFn, simd: SimdDotFn, n: usize, x_q: &[u8], seed: u64) {
    let k = kernels(ty).unwrap();
    let act = realistic_weights(1, n, seed);
    let y_q = quantize(k.dot_type, &act, n, None);
    let xd = dequantize(ty, x_q, n);
    let yd = dequantize(k.dot_type, &y_q, n);
    let exact: f64 = xd.iter().zip(&yd).map(|(&a, &b)| a as f64 * b as f64).sum();
    let mag: f64 = xd.iter().zip(&yd).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum::<f64>() + 1e-30;
    let s = scalar(n, x_q, &y_q);
    assert!(((s as f64) - exact).abs() <= 2e-3 * mag, "{ty}: scalar {s} vs dequantized {exact}");
    assert_eq!((k.vec_dot.unwrap())(n, x_q, &y_q).is_finite(), s.is_finite());
    if let Some(v) = simd(n, x_q, &y_q) {
        assert!(((v - s) as f64).abs() <= 1e-5 * mag, "{ty}: simd {v} vs scalar {s} (magnitude {mag})");
    }
}

#[test]
fn simd_dot_matches_scalar() {
    #[cfg(target_arch = "x86_64")]
    assert!(
        q4_0::vec_dot_simd(32, &[0; 18], &[0; 34]).is_some()
            == (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    );
    for (i, (ty, scalar, simd)) in dot_cases().into_iter().enumerate() {
        for (n, seed) in [(32usize, 1u64), (576, 2), (1536, 3), (4096, 4)] {
            let x = realistic_weights(1, n, seed * 31 + i as u64);
            check_dot(ty, scalar, simd, n, &quantize(ty, &x, n, None), seed + 100);
            // arbitrary block bytes too (all code values, odd scales)
            let raw = random_blocks(ty, n / 32, f16_offsets(ty), seed + 7);
            check_dot(ty, scalar, simd, n, &raw, seed + 200);
        }
    }
}

#[test]
fn dot_kernels_are_wired_as_in_llama_cpp() {
    let expect = [
        (GgmlType::Q4_0, GgmlType::Q8_0, true),
        (GgmlType::Q4_1, GgmlType::Q8_1, true),
        (GgmlType::Q5_0, GgmlType::Q8_0, true),
        (GgmlType::Q5_1, GgmlType::Q8_1, true),
        (GgmlType::Q8_0, GgmlType::Q8_0, false),
        (GgmlType::Q8_1, GgmlType::Q8_1, false),
    ];
    for (ty, dot, weights) in expect {
        let k = kernels(ty).unwrap();
        assert_eq!(k.ty, ty);
        assert_eq!(k.dot_type, dot, "{ty}");
        assert_eq!(k.uses_weights, weights, "{ty}");
        assert_eq!(k.vec_dot.is_some(), ty != GgmlType::Q8_1, "{ty}");
    }
}

/// Rows that stress the searches: zeros, constants, huge and tiny magnitudes, lone outliers.
fn edge_rows(n: usize) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(99);
    let mut rows = vec![
        vec![0.0; n],
        vec![0.5; n],
        vec![-2.0; n],
        (0..n).map(|_| (rng.uniform() - 0.5) * 1.2e5).collect(),
        (0..n).map(|_| rng.normal() * 1e-30).collect(),
        (0..n).map(|_| rng.normal() * 1e-41).collect(),
        (0..n).map(|i| if i == n / 3 { 7.0 } else { 0.0 }).collect(),
        (0..n).map(|i| if i == 5 { -300.0 } else { rng.normal() * 1e-3 }).collect(),
        (0..n).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect(),
    ];
    rows.push((0..n).map(|i| if i % 64 < 32 { 0.0 } else { rng.normal() }).collect());
    rows
}

/// Quantize edge rows with and without (also all-zero) importance: no panic, no NaN, finite output.
fn check_edges(types: &[GgmlType], n: usize) {
    let imps = [None, Some(realistic_importance(n, 3)), Some(vec![0.0; n]), Some(vec![1e-30; n])];
    for &ty in types {
        let k = kernels(ty).unwrap();
        for (r, row) in edge_rows(n).iter().enumerate() {
            for imp in &imps {
                let mut q = vec![0u8; n / ty.block_size() * block_bytes(ty)];
                (k.quantize)(row, imp.as_deref(), &mut q);
                let mut back = vec![0f32; n];
                (k.dequantize)(&q, &mut back);
                assert!(back.iter().all(|v| v.is_finite()), "{ty} edge row {r} (weights {}): {back:?}", imp.is_some());
                let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                let err = row.iter().zip(&back).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                // nothing may blow up beyond the row's own range
                assert!(err <= 2.0 * amax + 1e-6, "{ty} edge row {r}: error {err} for amax {amax}");
            }
        }
    }
}

#[test]
fn edge_values_are_safe() {
    check_edges(&[GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q8_1], 256);
}

#[test]
fn importance_weights_lower_the_weighted_error() {
    let n = 1536;
    let x = realistic_weights(16, n, 21);
    let imp = realistic_importance(n, 22);
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1] {
        let plain = weighted_error(&x, &dequantize(ty, &quantize(ty, &x, n, None), n), &imp);
        let weighted = weighted_error(&x, &dequantize(ty, &quantize(ty, &x, n, Some(&imp)), n), &imp);
        assert!(weighted < 0.9 * plain, "{ty}: weighted error {weighted} vs plain {plain}");
    }
}

#[test]
fn misaligned_buffers_give_the_same_bytes() {
    let x = realistic_weights(2, 512, 8);
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q8_1] {
        let k = kernels(ty).unwrap();
        let aligned = quantize(ty, &x, 512, None);
        let mut buf = vec![0u8; aligned.len() + 1];
        for (r, row) in x.chunks_exact(512).enumerate() {
            let rb = 512 / 32 * block_bytes(ty);
            (k.quantize)(row, None, &mut buf[1 + r * rb..1 + (r + 1) * rb]);
        }
        assert_eq!(&buf[1..], &aligned[..], "{ty}");
        let mut back = vec![0f32; x.len()];
        (k.dequantize)(&buf[1..], &mut back);
        assert_same_bits(ty, "misaligned dequantize", &back, &dequantize(ty, &aligned, 512));
    }
}

#[test]
fn weighted_paths_match_llama_cpp_golden_hashes() {
    let n = 1024;
    let x = golden_input(4 * n);
    let imp = golden_importance(n);
    let golden: [(GgmlType, u64, u64); 6] = [
        (GgmlType::Q4_0, 0x45ed30f5803e05ce, 0x9607c1fc8577926c),
        (GgmlType::Q4_1, 0xd0b0c397da5b59fb, 0xefea71759085d983),
        (GgmlType::Q5_0, 0x3d0935f63ded5258, 0x7dd8cdcf8ead8c4c),
        (GgmlType::Q5_1, 0x968639f3d97de08a, 0x4f5792a9e5f31974),
        (GgmlType::Q8_0, 0x15a55461283ac265, 0x15a55461283ac265),
        (GgmlType::Q8_1, 0xa3adf22bab07313d, 0xa3adf22bab07313d),
    ];
    for (ty, plain, weighted) in golden {
        assert_eq!(fnv1a(&quantize(ty, &x, n, None)), plain, "{ty} without weights");
        assert_eq!(fnv1a(&quantize(ty, &x, n, Some(&imp))), weighted, "{ty} with weights");
    }
}

/// Compare with llama.cpp's C quantizer: run `scripts/compare_quant_bytes_legacy.py`, which prepares
/// `$CRUNCH_LLAMA_REF` (rows, importance, llama.cpp's bytes, `cases.txt`) and then runs this test.
#[test]
#[ignore = "driven by scripts/compare_quant_bytes_legacy.py (needs llama-cpp-python)"]
fn llama_cpp_byte_equality() {
    let dir = std::path::PathBuf::from(
        std::env::var_os("CRUNCH_LLAMA_REF").expect("set CRUNCH_LLAMA_REF (see scripts/compare_quant_bytes_legacy.py)"),
    );
    let cases = std::fs::read_to_string(dir.join("cases.txt")).unwrap();
    let (mut ok, mut bad) = (0usize, 0usize);
    for line in cases.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (ty, n, name, tag): (GgmlType, usize, &str, &str) =
            (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2], f[3]);
        let x = bytes_f32(&std::fs::read(dir.join(format!("{name}.f32"))).unwrap());
        let imp = (tag == "w").then(|| bytes_f32(&std::fs::read(dir.join(format!("{name}.imatrix.f32"))).unwrap()));
        let theirs = std::fs::read(dir.join(format!("{name}.{}.{tag}.bin", f[0]))).unwrap();
        let ours = quantize(ty, &x, n, imp.as_deref());
        let size = block_bytes(ty);
        let nb = theirs.len() / size;
        let diff: Vec<usize> = (0..nb)
            .filter(|&b| ours.get(b * size..(b + 1) * size) != Some(&theirs[b * size..(b + 1) * size]))
            .collect();
        if diff.is_empty() && ours.len() == theirs.len() {
            ok += 1;
            println!("CASE {ty:<6} {name:<22} {tag:<2}: OK ({nb} blocks identical)");
        } else {
            bad += 1;
            let b = diff.first().copied().unwrap_or(0);
            println!(
                "CASE {ty:<6} {name:<22} {tag:<2}: MISMATCH {}/{nb} blocks; first {b}\n  ours   {:02x?}\n  llama  {:02x?}",
                diff.len(),
                ours.get(b * size..(b + 1) * size).unwrap_or(&[]),
                &theirs[b * size..(b + 1) * size]
            );
        }
    }
    println!("SUMMARY {ok} identical, {bad} different");
    assert_eq!(bad, 0);
}

/// HQQ's scale and minimum for Q4_1 / Q5_1: never a larger squared error than the type's own
/// rounding block by block, and an exact reproduction of weights already on the type's grid.
#[test]
fn hqq_blocks_are_never_worse_than_rounding_and_keep_a_grid() {
    let row = 4096;
    let x = realistic_weights(8, row, 17);
    for (ty, hqq) in
        [(GgmlType::Q4_1, q4_1::quantize_hqq as fn(&[f32], &mut [u8])), (GgmlType::Q5_1, q5_1::quantize_hqq)]
    {
        let plain = quantize(ty, &x, row, None);
        let mut ours = vec![0u8; plain.len()];
        for (src, dst) in x.chunks_exact(row).zip(ours.chunks_exact_mut(ty.row_size(row).unwrap())) {
            hqq(src, dst);
        }
        let (mut dp, mut dh) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        dequantize_rows(ty, &plain, row, &mut dp).unwrap();
        dequantize_rows(ty, &ours, row, &mut dh).unwrap();
        let err = |d: &[f32], b: usize| -> f64 {
            x[b * 32..(b + 1) * 32].iter().zip(&d[b * 32..(b + 1) * 32]).map(|(a, c)| ((a - c) as f64).powi(2)).sum()
        };
        let (mut total_p, mut total_h) = (0f64, 0f64);
        for b in 0..x.len() / 32 {
            assert!(err(&dh, b) <= err(&dp, b) * (1.0 + 1e-9) + 1e-18, "{ty} block {b}");
            total_p += err(&dp, b);
            total_h += err(&dh, b);
        }
        assert!(total_h < total_p * 0.97, "{ty}: HQQ {total_h} vs rounding {total_p}");
        // Weights on the type's own grid come back as the same bytes.
        let mut again = vec![0u8; plain.len()];
        for (src, dst) in dp.chunks_exact(row).zip(again.chunks_exact_mut(ty.row_size(row).unwrap())) {
            hqq(src, dst);
        }
        let mut back = vec![0f32; x.len()];
        dequantize_rows(ty, &again, row, &mut back).unwrap();
        assert_eq!(back, dp, "{ty}: a grid HQQ must not leave");
    }
}
