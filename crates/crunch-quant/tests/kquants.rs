//! K-quant formats (Q2_K..Q6_K, Q8_K): oracle dequantization, error budgets, importance weights,
//! dot products and degenerate inputs.

use crunch_core::GgmlType;
use crunch_quant::{dequantize_rows, kernels, quantize_rows};
use crunch_testkit::{bytes_f32, f32_bytes, oracle, realistic_importance, realistic_weights, Rng, Scratch};
use std::path::PathBuf;
use std::process::Command;

const K_TYPES: [GgmlType; 5] = [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K];
const ALL_TYPES: [GgmlType; 6] =
    [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q8_K];

fn quantize(ty: GgmlType, x: &[f32], row_len: usize, imatrix: Option<&[f32]>) -> Vec<u8> {
    let mut q = vec![0u8; ty.row_size(row_len).unwrap() * (x.len() / row_len)];
    quantize_rows(ty, x, row_len, imatrix, &mut q).unwrap();
    q
}

fn dequantize(ty: GgmlType, q: &[u8], row_len: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; q.len() / ty.row_size(row_len).unwrap() * row_len];
    dequantize_rows(ty, q, row_len, &mut y).unwrap();
    y
}

/// Dequantize through the gguf oracle and require bit-identical f32 output.
fn assert_oracle_dequant(ty: GgmlType, q: &[u8], row_len: usize, what: &str) {
    let ours = dequantize(ty, q, row_len);
    let s = Scratch::new("kq-oracle");
    let (inp, out) = (s.join("in.bin"), s.join("out.f32"));
    std::fs::write(&inp, q).unwrap();
    oracle(&["dequantize", ty.name(), &row_len.to_string(), inp.to_str().unwrap(), out.to_str().unwrap()]);
    let theirs = bytes_f32(&std::fs::read(&out).unwrap());
    assert_eq!(ours.len(), theirs.len(), "{ty} {what}: length");
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert!(a.to_bits() == b.to_bits(), "{ty} {what} row_len {row_len}: element {i}: ours {a:e}, oracle {b:e}");
    }
}

/// Random block bytes with finite f16 scales at the type's known offsets, so every bit pattern of the
/// quants and sub-block scales is exercised (not only what the quantizer produces).
fn random_blocks(ty: GgmlType, n_blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let size = ty.type_size();
    let f16_offsets: &[usize] = match ty {
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    };
    let mut out = vec![0u8; size * n_blocks];
    for b in out.chunks_exact_mut(size) {
        for v in b.iter_mut() {
            *v = rng.next_u64() as u8;
        }
        for &o in f16_offsets {
            let d = half::f16::from_f32((rng.uniform() - 0.3) * 0.01);
            b[o..o + 2].copy_from_slice(&d.to_le_bytes());
        }
    }
    out
}

#[test]
fn dequantize_matches_gguf_oracle() {
    std::thread::scope(|sc| {
        for (t, ty) in K_TYPES.into_iter().enumerate() {
            sc.spawn(move || {
                let mut rng = Rng::new(100 + t as u64);
                for (k, row_len) in [256usize, 512, 1536].into_iter().enumerate() {
                    let rows = 3;
                    let x = realistic_weights(rows, row_len, 7 + k as u64);
                    let imp = realistic_importance(row_len, 9 + k as u64);
                    let mut q = quantize(ty, &x, row_len, None);
                    q.extend(quantize(ty, &x, row_len, Some(&imp)));
                    q.extend(random_blocks(ty, 2 * row_len / 256, &mut rng));
                    assert_oracle_dequant(ty, &q, row_len, "quantized+random blocks");
                }
            });
        }
    });
}

#[test]
fn q8_k_roundtrip_and_layout() {
    let x = realistic_weights(4, 512, 3);
    let q = quantize(GgmlType::Q8_K, &x, 512, None);
    let y = dequantize(GgmlType::Q8_K, &q, 512);
    for (blk, (xs, ys)) in q.chunks_exact(292).zip(x.chunks_exact(256).zip(y.chunks_exact(256))) {
        let d = f32::from_le_bytes(blk[0..4].try_into().unwrap());
        let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!((d.abs() - amax / 127.0).abs() <= amax * 1e-6);
        for j in 0..16 {
            let s: i32 = blk[4 + 16 * j..4 + 16 * j + 16].iter().map(|&b| b as i8 as i32).sum();
            let bs = i16::from_le_bytes([blk[260 + 2 * j], blk[261 + 2 * j]]);
            assert_eq!(s, bs as i32);
        }
        for (a, b) in xs.iter().zip(ys) {
            assert!((a - b).abs() <= d.abs() * 0.5 + 1e-12);
        }
    }
}

fn rel_rmse(x: &[f32], y: &[f32]) -> f64 {
    let err: f64 = x.iter().zip(y).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
    let sig: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (err / sig).sqrt()
}

fn weighted_err(x: &[f32], y: &[f32], imp: &[f32]) -> f64 {
    x.iter().zip(y).enumerate().map(|(i, (a, b))| imp[i % imp.len()] as f64 * (*a as f64 - *b as f64).powi(2)).sum()
}

#[test]
fn quantization_error_within_budget() {
    // Relative RMSE on realistic weights; llama.cpp's own quantizers land just below these.
    let budgets = [
        (GgmlType::Q2_K, 0.36),
        (GgmlType::Q3_K, 0.20),
        (GgmlType::Q4_K, 0.10),
        (GgmlType::Q5_K, 0.05),
        (GgmlType::Q6_K, 0.025),
        (GgmlType::Q8_K, 0.02),
    ];
    let (rows, cols) = (16, 1024);
    let x = realistic_weights(rows, cols, 42);
    for (ty, budget) in budgets {
        let y = dequantize(ty, &quantize(ty, &x, cols, None), cols);
        let e = rel_rmse(&x, &y);
        eprintln!("{ty}: relative RMSE {e:.4}");
        assert!(e < budget, "{ty}: relative RMSE {e:.4} over budget {budget}");
        assert!(e > budget / 4.0, "{ty}: relative RMSE {e:.4} suspiciously low");
    }
}

#[test]
fn importance_weights_lower_weighted_error() {
    let (rows, cols) = (16, 1024);
    let x = realistic_weights(rows, cols, 5);
    let imp = realistic_importance(cols, 6);
    for ty in K_TYPES {
        assert!(kernels(ty).unwrap().uses_weights);
        let plain = dequantize(ty, &quantize(ty, &x, cols, None), cols);
        let weighted = dequantize(ty, &quantize(ty, &x, cols, Some(&imp)), cols);
        let (ep, ew) = (weighted_err(&x, &plain, &imp), weighted_err(&x, &weighted, &imp));
        assert!(ew < ep, "{ty}: weighted error {ew:e} not below unweighted {ep:e}");
        // and the unweighted error must not blow up
        assert!(rel_rmse(&x, &weighted) < 1.5 * rel_rmse(&x, &plain), "{ty}");
    }
}

fn dot_f64(a: &[f32], b: &[f32]) -> (f64, f64) {
    let s = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let m = a.iter().zip(b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum();
    (s, m)
}

#[test]
fn vec_dot_matches_dequantized_dot() {
    // The dispatched kernel (AVX2 where available) against an f64 dot of the dequantized rows.
    let mut rng = Rng::new(77);
    for ty in ALL_TYPES {
        let k = kernels(ty).unwrap();
        assert_eq!(k.dot_type, GgmlType::Q8_K);
        let dot = k.vec_dot.unwrap();
        for (case, n) in [256usize, 512, 2816].into_iter().enumerate() {
            let x = realistic_weights(1, n, 11 + case as u64);
            let mut a: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            if case == 2 {
                // extreme activations: saturating values and exact zeros
                for (i, v) in a.iter_mut().enumerate() {
                    *v = match i % 5 {
                        0 => 1e4,
                        1 => -1e4,
                        2 => 0.0,
                        _ => *v,
                    };
                }
            }
            let qx = if ty == GgmlType::Q8_K {
                quantize(ty, &x, n, None)
            } else {
                random_or_quantized(ty, &x, n, &mut rng, case)
            };
            let qa = quantize(GgmlType::Q8_K, &a, n, None);
            let got = dot(n, &qx, &qa) as f64;
            let (want, mag) = dot_f64(&dequantize(ty, &qx, n), &dequantize(GgmlType::Q8_K, &qa, n));
            assert!((got - want).abs() <= 1e-5 * mag + 1e-30, "{ty} n={n}: vec_dot {got:e} vs {want:e} (mag {mag:e})");
        }
    }
}

fn random_or_quantized(ty: GgmlType, x: &[f32], n: usize, rng: &mut Rng, case: usize) -> Vec<u8> {
    if case == 1 {
        random_blocks(ty, n / 256, rng)
    } else {
        quantize(ty, x, n, None)
    }
}

#[test]
fn vec_dot_handles_misaligned_buffers() {
    let n = 512;
    let x = realistic_weights(1, n, 1);
    let a = realistic_weights(1, n, 2);
    let qa = quantize(GgmlType::Q8_K, &a, n, None);
    for ty in K_TYPES {
        let qx = quantize(ty, &x, n, None);
        let dot = kernels(ty).unwrap().vec_dot.unwrap();
        let base = dot(n, &qx, &qa);
        let mut bx = vec![0u8; 1];
        bx.extend_from_slice(&qx);
        let mut ba = vec![0u8; 3];
        ba.extend_from_slice(&qa);
        assert_eq!(base.to_bits(), dot(n, &bx[1..], &ba[3..]).to_bits(), "{ty}");
        let mut y = vec![0.0f32; n];
        dequantize_rows(ty, &bx[1..], n, &mut y).unwrap();
        assert_eq!(y, dequantize(ty, &qx, n), "{ty}");
    }
}

#[test]
fn degenerate_inputs_stay_finite() {
    let n = 512;
    let imp = realistic_importance(n, 3);
    let zero_imp = vec![0.0f32; n];
    let mut ramp: Vec<f32> = (0..n).map(|i| (i as f32 - 256.0) / 256.0).collect();
    ramp[7] = 0.0;
    let cases: Vec<(&str, Vec<f32>)> = vec![
        ("zeros", vec![0.0; n]),
        ("negative zeros", vec![-0.0; n]),
        ("constant", vec![0.37; n]),
        ("negative constant", vec![-2.5; n]),
        ("f16 max", (0..n).map(|i| if i % 2 == 0 { 65504.0 } else { -65504.0 }).collect()),
        ("huge spike", (0..n).map(|i| if i == 100 { 6.0e4 } else { 1e-3 * (i % 7) as f32 }).collect()),
        ("tiny", ramp.iter().map(|v| v * 1e-30).collect()),
        ("subnormal", ramp.iter().map(|v| v * 1e-40).collect()),
        ("single nonzero", (0..n).map(|i| if i == 3 { 1.0 } else { 0.0 }).collect()),
    ];
    for ty in ALL_TYPES {
        for (name, x) in &cases {
            for (wname, w) in [("none", None), ("imatrix", Some(&imp[..])), ("zero imatrix", Some(&zero_imp[..]))] {
                let q = quantize(ty, x, n, w);
                let y = dequantize(ty, &q, n);
                assert!(y.iter().all(|v| v.is_finite()), "{ty} {name} weights={wname}: non-finite output");
                let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let e = x.iter().zip(&y).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(e <= amax * 1.01 + 1e-30, "{ty} {name} weights={wname}: error {e:e} vs max {amax:e}");
                let qa = quantize(GgmlType::Q8_K, x, n, None);
                let d = kernels(ty).unwrap().vec_dot.unwrap()(n, &q, &qa);
                assert!(d.is_finite(), "{ty} {name}: dot {d}");
            }
        }
        // Beyond the f16 range and non-finite input: no panic (output follows llama.cpp, unspecified).
        for x in [vec![1e30f32; n], vec![f32::INFINITY; n], vec![f32::NAN; n]] {
            let q = quantize(ty, &x, n, Some(&imp));
            let _ = dequantize(ty, &quantize(ty, &x, n, None), n);
            let _ = dequantize(ty, &q, n);
        }
    }
}

/// Quantize `x` (rows of `cols`) with llama.cpp's C code (through llama-cpp-python's libggml-base) and
/// with crunch, for every k-quant with and without `imp`; one report line per case.
fn compare_with_llama_cpp(label: &str, x: &[f32], cols: usize, imp: &[f32]) -> Vec<String> {
    let py = std::env::var_os("CRUNCH_LLAMA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| crunch_testkit::cache_dir().join("llama-venv/bin/python"));
    let script = crunch_testkit::repo_root().join("scripts/compare_quant_bytes.py");
    let s = Scratch::new("kq-llama");
    let cols_s = cols.to_string();
    let (inp, imf, out) = (s.join("x.f32"), s.join("imp.f32"), s.join("ref.bin"));
    std::fs::write(&inp, f32_bytes(x)).unwrap();
    std::fs::write(&imf, f32_bytes(imp)).unwrap();
    let mut report = Vec::new();
    for ty in ALL_TYPES {
        for weighted in [false, true] {
            if ty == GgmlType::Q8_K && weighted {
                continue;
            }
            let cmd = if ty == GgmlType::Q8_K { "from_float_ref" } else { "quantize" };
            let mut args = vec![cmd, ty.name(), &cols_s, inp.to_str().unwrap(), out.to_str().unwrap()];
            if weighted {
                args.push(imf.to_str().unwrap());
            }
            let res = Command::new(&py).arg(&script).args(&args).output().expect("run llama.cpp script");
            assert!(res.status.success(), "{args:?}: {}", String::from_utf8_lossy(&res.stderr));
            let theirs = std::fs::read(&out).unwrap();
            let ours = quantize(ty, x, cols, if weighted { Some(imp) } else { None });
            assert_eq!(ours.len(), theirs.len());
            let size = ty.type_size();
            let bad = ours.chunks(size).zip(theirs.chunks(size)).filter(|(a, b)| a != b).count();
            report.push(format!("{ty} {label} weighted={weighted}: {bad}/{} blocks differ", ours.len() / size));
        }
    }
    report
}

fn assert_all_equal(report: &[String]) {
    println!("{}", report.join("\n"));
    assert!(report.iter().all(|l| l.contains(": 0/")), "{}", report.join("\n"));
}

/// Byte-for-byte comparison with llama.cpp's C quantizer on synthetic weights with degenerate blocks.
/// Needs `~/.cache/crunch/llama-venv`; run with `cargo test -p crunch-quant --test kquants -- --ignored`.
#[test]
#[ignore = "needs the llama-cpp-python virtualenv"]
fn quantized_bytes_equal_llama_cpp() {
    let mut report = Vec::new();
    for (seed, (rows, cols)) in [(8usize, 256usize), (16, 1536), (4, 4096), (12, 2048)].into_iter().enumerate() {
        let mut x = realistic_weights(rows, cols, 1000 + seed as u64);
        let mut imp = realistic_importance(cols, 2000 + seed as u64);
        // degenerate blocks in the mix: zeros, a constant, heavy tails, tiny, subnormal and large values
        let mut rng = Rng::new(seed as u64);
        x[..256].fill(0.0);
        x[cols..cols + 128].fill(0.5);
        for (r, row) in x.chunks_exact_mut(cols).enumerate().skip(2) {
            let scale = match r % 6 {
                0 => 1e-30,
                1 => 1e-41,
                2 => 3e4,
                _ => 1.0,
            };
            for v in row.iter_mut() {
                *v *= scale;
                if r % 6 == 3 {
                    *v = rng.normal().powi(3) * 0.05;
                }
            }
        }
        if seed == 3 {
            // imatrix columns that never saw an activation
            for (i, w) in imp.iter_mut().enumerate() {
                if i % 3 == 0 {
                    *w = 0.0;
                }
            }
        }
        report.extend(compare_with_llama_cpp(&format!("{rows}x{cols}"), &x, cols, &imp));
    }
    assert_all_equal(&report);
}

/// Byte-for-byte comparison with llama.cpp on real weights: SmolLM2's first and last `ffn_down`
/// (rows of 1536, dequantized from the Q4_1 GGUF by the gguf oracle).
#[test]
#[ignore = "needs the llama-cpp-python virtualenv and the SmolLM2 test model"]
fn real_weights_bytes_equal_llama_cpp() {
    let model = crunch_testkit::smollm2_gguf();
    let s = Scratch::new("kq-real");
    let (raw, f32s) = (s.join("t.bin"), s.join("t.f32"));
    let mut report = Vec::new();
    for name in ["blk.0.ffn_down.weight", "blk.29.ffn_down.weight"] {
        oracle(&["tensor", model.to_str().unwrap(), name, raw.to_str().unwrap()]);
        oracle(&["dequantize", "Q4_1", "1536", raw.to_str().unwrap(), f32s.to_str().unwrap()]);
        let x = bytes_f32(&std::fs::read(&f32s).unwrap());
        let imp = realistic_importance(1536, 17);
        report.extend(compare_with_llama_cpp(name, &x, 1536, &imp));
    }
    assert_all_equal(&report);
}
