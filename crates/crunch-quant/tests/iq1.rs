//! IQ1_S and IQ1_M: llama.cpp's bytes (golden SHA-256 in the default run, live comparisons on whole
//! SmolLM2 tensors in ignored tests), dequantization against the PyPI `gguf` oracle bit for bit,
//! SIMD vs scalar dot products, the fallback without importance weights and edge inputs.

mod common;

use common::{dequantize, golden_importance, golden_input, quantize, weighted_error};
use crunch_core::GgmlType;
use crunch_quant::iquants::{iq1_m, iq1_s};
use crunch_quant::kernels;
use crunch_testkit::{bytes_f32, oracle, realistic_importance, realistic_weights, Rng, Scratch};

const TYPES: [GgmlType; 2] = [GgmlType::IQ1_S, GgmlType::IQ1_M];

/// Blocks of arbitrary bytes whose f16 scale is finite (IQ1_S: bytes 0..2; IQ1_M: the top nibbles
/// of its four scale words), so every grid index, shift and sub-block scale is exercised.
fn random_blocks(ty: GgmlType, n_blocks: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let size = ty.type_size();
    let mut out: Vec<u8> = (0..n_blocks * size).map(|_| rng.next_u64() as u8).collect();
    for b in out.chunks_exact_mut(size) {
        let d = half::f16::from_f32((rng.uniform() - 0.3) * 0.02).to_bits();
        match ty {
            GgmlType::IQ1_S => b[..2].copy_from_slice(&d.to_le_bytes()),
            _ => {
                let sc = &mut b[48..56];
                for (i, shift) in [0u32, 4, 8, 12].into_iter().enumerate() {
                    let nibble = ((d >> shift) & 0xf) as u8;
                    sc[2 * i + 1] = (sc[2 * i + 1] & 0x0f) | (nibble << 4);
                }
            }
        }
    }
    out
}

#[test]
fn block_layouts_are_llama_cpps() {
    assert_eq!(size_of::<iq1_s::BlockIq1S>(), GgmlType::IQ1_S.type_size());
    assert_eq!(size_of::<iq1_m::BlockIq1M>(), GgmlType::IQ1_M.type_size());
    assert_eq!((GgmlType::IQ1_S.type_size(), GgmlType::IQ1_M.type_size()), (50, 56));
    for (ty, dot) in [(GgmlType::IQ1_S, GgmlType::Q8_K), (GgmlType::IQ1_M, GgmlType::Q8_K)] {
        let k = kernels(ty).unwrap();
        assert_eq!((k.ty, k.dot_type, k.uses_weights), (ty, dot, true));
        assert!(k.vec_dot.is_some());
    }
}

#[test]
fn dequantize_matches_gguf_oracle_bit_for_bit() {
    let model = common::smollm2();
    let (n, real) = common::smollm2_rows(&model, "blk.3.ffn_down.weight", Some(8));
    for ty in TYPES {
        let mut q = random_blocks(ty, 64, ty.code() as u64);
        q.extend(quantize(ty, &realistic_weights(4, n, 4), n, Some(&realistic_importance(n, 5))));
        q.extend(quantize(ty, &realistic_weights(2, n, 6), n, None));
        q.extend(quantize(ty, &real, n, Some(&realistic_importance(n, 7))));
        let ours = dequantize(ty, &q, 256);
        let s = Scratch::new("iq1-dq");
        let (i, o) = (s.join("in.bin"), s.join("out.f32"));
        std::fs::write(&i, &q).unwrap();
        oracle(&["dequantize", ty.name(), "256", i.to_str().unwrap(), o.to_str().unwrap()]);
        let theirs = bytes_f32(&std::fs::read(o).unwrap());
        assert_eq!(ours.len(), theirs.len(), "{ty}");
        if let Some(i) = (0..ours.len()).find(|&i| ours[i].to_bits() != theirs[i].to_bits()) {
            panic!("{ty}: element {i}: ours {:e}, oracle {:e}", ours[i], theirs[i]);
        }
    }
}

/// Degenerate rows of 256: zeros, a constant, a lone spike, tiny and large magnitudes, heavy tails,
/// every other 16 zero, sub-blocks of very different scales, values below IQ1_M's group threshold.
fn golden_edge_rows() -> Vec<f32> {
    let mut rng = Rng::new(421);
    let mut x = vec![0.0f32; 256];
    x.extend([0.5f32; 256]);
    x.extend((0..256).map(|i| if i == 77 { -3.0 } else { 0.0 }));
    x.extend((0..256).map(|_| rng.normal() * 1e-30));
    x.extend((0..256).map(|_| rng.normal() * 3e4));
    x.extend((0..256).map(|_| rng.normal().powi(3) * 0.05));
    x.extend((0..256).map(|i| if (i / 16) % 2 == 0 { 0.0 } else { rng.normal() * 0.02 }));
    x.extend((0..256).map(|i| rng.normal() * 10f32.powi((i / 16) % 5 - 4)));
    x.extend((0..256).map(|i| if i < 128 { rng.normal() * 1e-8 } else { rng.normal() }));
    x
}

struct GoldenCase {
    label: String,
    row_len: usize,
    x: Vec<f32>,
    imp: Vec<f32>,
}

/// The inputs behind [`IQ1_GOLDEN`]: the deterministic rows of tests/iquants.rs with their
/// importance, LLM-like random rows, the degenerate rows of [`golden_edge_rows`], and the first 32
/// rows of three real SmolLM2 `ffn_down` tensors (1536 wide, dequantized from the Q4_1 test model:
/// many ties within a sub-block, which exercises the sort) with a log-normal importance vector
/// (`crunch_testkit::realistic_importance`, the spread of a real imatrix's columns), one with a
/// third of its columns never activated (importance 0).
fn golden_cases() -> Vec<GoldenCase> {
    let mut cases = vec![GoldenCase {
        label: "golden_4x1024".into(),
        row_len: 1024,
        x: golden_input(4 * 1024),
        imp: golden_importance(1024),
    }];
    let (x, imp) = (realistic_weights(8, 768, 500), realistic_importance(768, 501));
    cases.push(GoldenCase { label: "random_8x768".into(), row_len: 768, x, imp });
    let (x, imp) = (golden_edge_rows(), realistic_importance(256, 520));
    cases.push(GoldenCase { label: "edge_9x256".into(), row_len: 256, x, imp });
    let model = common::smollm2();
    for (k, layer) in [0, 15, 29].into_iter().enumerate() {
        let (n, x) = common::smollm2_rows(&model, &format!("blk.{layer}.ffn_down.weight"), Some(32));
        let mut imp = realistic_importance(n, 530 + k as u64);
        if layer == 15 {
            for w in imp.iter_mut().step_by(3) {
                *w = 0.0;
            }
        }
        cases.push(GoldenCase { label: format!("smollm2_blk.{layer}.ffn_down_32x{n}"), row_len: n, x, imp });
    }
    cases
}

/// SHA-256 of llama.cpp's bytes for each type and input of [`golden_cases`]: type, input, without
/// importance weights (`-` for IQ1_S, which llama.cpp refuses to quantize without them), with the
/// input's importance vector (`ggml_quantize_chunk` of llama-cpp-python 0.3.36's vendored llama.cpp
/// of 2026-10-01, libggml-base through scripts/compare_quant_bytes.py). Regenerate with
///
/// ```text
/// cargo test -p crunch-quant --test iq1 -- --ignored golden_hashes_are_llama_cpps --nocapture
/// ```
///
/// which quantizes the same inputs with llama.cpp and crunch, fails on any byte difference, prints
/// this table from llama.cpp's bytes and fails if it differs from the one recorded here.
const IQ1_GOLDEN: &str = "\
IQ1_S golden_4x1024 - 491ec5bb0c42234ce87ca97b3d80c913734f8cd0c9f19272c81a1639ddae110b
IQ1_S random_8x768 - 0a220bd7f285c6dea4ec9a5206b30bcc52b7fa09aea835eb3bb177ac31b97053
IQ1_S edge_9x256 - 4aca16e46966336296f374a55a3854ab954fc723da3445c378cb8904df24be10
IQ1_S smollm2_blk.0.ffn_down_32x1536 - fde94fca67ad669bcdbc05f74dc52d05c7c0b299e517bb3fba26c586f7d68b85
IQ1_S smollm2_blk.15.ffn_down_32x1536 - 917de933e9760cd896faa048e59765c3f1febfb6ef03b7a00a3d1aeab57c0e1f
IQ1_S smollm2_blk.29.ffn_down_32x1536 - cd011c75123f0008033eaed86b39efd2b34b3f7d8992417e3883f36c2ff4be0e
IQ1_M golden_4x1024 974981c12396f02c81c4f7851e45509c041df5532483c5ef70ba6ab6b64496df 2deac671834a9f3e724d75e699c4c9ef67bea0b686bdde5bc6dc5f33232866f9
IQ1_M random_8x768 47bec74d49330f35193e1b253e9546d39f2ceb89348ba079a4085fef1d265f6b 4db7fdf86137b005daf60c098998cbb56220cc5597f31740204caad22434fb56
IQ1_M edge_9x256 851212e211fd3dfdee4d559b013d3f05502e36451796aa3295cf21bc180affb7 a3ef43f5bc88aa91c67daff0396e3550b11b79d43e84977796ce9244cb4fd5dc
IQ1_M smollm2_blk.0.ffn_down_32x1536 2fd1a21de63761ee15156ff3e4b6fcb4a84cc14aba34c9f31686f396c4481063 ba518adabd33189aa663d25cbe1b45265ee637e03f72b942e0930e7ff6bc88d8
IQ1_M smollm2_blk.15.ffn_down_32x1536 7962ce6697a363cf0df9b7a0d6ceafaf51afcf297f8f037d46e90133bbdda0bd 52afddcc341afca94b557fd8544d2d78b9cafbfcf5d22c403518f091d4d22e4e
IQ1_M smollm2_blk.29.ffn_down_32x1536 cfedb09c665d0b384bab7e2609f321300f53019321498fc74c6aff6f2ed9d8b4 b61b9171583efb570a8d93eecd29a7d367266e2a28e31ff7d1bdef4847240f71
";

fn parse_goldens() -> Vec<(GgmlType, &'static str, &'static str, &'static str)> {
    IQ1_GOLDEN
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 4, "golden line {l:?}");
            (f[0].parse().unwrap(), f[1], f[2], f[3])
        })
        .collect()
}

/// Whether llama.cpp quantizes `ty` without importance weights.
fn llama_quantizes_without_weights(ty: GgmlType) -> bool {
    ty != GgmlType::IQ1_S
}

/// crunch's IQ1 bytes equal llama.cpp's (by their recorded SHA-256) on deterministic, random,
/// degenerate and real rows; no llama.cpp needed.
#[test]
fn quantized_bytes_match_llama_cpp_golden_hashes() {
    let cases = golden_cases();
    let goldens = parse_goldens();
    assert_eq!(goldens.len(), TYPES.len() * cases.len(), "one golden line per type and input");
    let bad: Vec<String> = std::thread::scope(|sc| {
        let jobs: Vec<_> = goldens
            .iter()
            .map(|&(ty, label, plain, weighted)| {
                let c = cases.iter().find(|c| c.label == label).unwrap_or_else(|| panic!("no input {label}"));
                sc.spawn(move || {
                    let mut bad = Vec::new();
                    for (imp, want) in [(None, plain), (Some(&c.imp[..]), weighted)] {
                        if want == "-" {
                            continue;
                        }
                        let got = common::sha256_hex(&quantize(ty, &c.x, c.row_len, imp));
                        if got != want {
                            bad.push(format!(
                                "{ty} {label} weighted={}: sha256 {got}, llama.cpp {want}",
                                imp.is_some()
                            ));
                        }
                    }
                    bad
                })
            })
            .collect();
        jobs.into_iter().flat_map(|j| j.join().unwrap()).collect()
    });
    assert!(bad.is_empty(), "{} cases differ from llama.cpp:\n{}", bad.len(), bad.join("\n"));
}

/// Blocks of `ours` that differ from `theirs`.
fn differing_blocks(ty: GgmlType, ours: &[u8], theirs: &[u8]) -> usize {
    assert_eq!(ours.len(), theirs.len(), "{ty}: sizes");
    let size = ty.type_size();
    ours.chunks(size).zip(theirs.chunks(size)).filter(|(a, b)| a != b).count()
}

/// Regenerates and checks [`IQ1_GOLDEN`] against llama.cpp itself (see there).
#[test]
#[ignore = "needs the llama-cpp-python virtualenv; prints IQ1_GOLDEN"]
fn golden_hashes_are_llama_cpps() {
    let mut table = String::new();
    let mut diff = Vec::new();
    for ty in TYPES {
        for c in golden_cases() {
            let mut hashes = Vec::new();
            for imp in [None, Some(&c.imp[..])] {
                if imp.is_none() && !llama_quantizes_without_weights(ty) {
                    hashes.push("-".to_string());
                    continue;
                }
                let theirs = common::llama_quantize(ty, &c.x, c.row_len, imp, false);
                let ours = quantize(ty, &c.x, c.row_len, imp);
                let blocks = differing_blocks(ty, &ours, &theirs);
                if blocks > 0 {
                    diff.push(format!("{ty} {} weighted={}: {blocks} blocks differ", c.label, imp.is_some()));
                }
                hashes.push(common::sha256_hex(&theirs));
            }
            table.push_str(&format!("{ty} {} {} {}\n", c.label, hashes[0], hashes[1]));
        }
    }
    println!("{table}");
    assert!(diff.is_empty(), "crunch differs from llama.cpp:\n{}", diff.join("\n"));
    assert_eq!(table, IQ1_GOLDEN, "IQ1_GOLDEN is not llama.cpp's: paste the table printed above");
}

/// Byte-for-byte comparison with llama.cpp on whole real tensors: five SmolLM2 `ffn_down` matrices
/// (576 rows of 1536 each, 3456 super-blocks per tensor and type), with a log-normal importance
/// vector, and for IQ1_M also without one. Prints the blocks matched; all must match.
///
/// ```text
/// cargo test -p crunch-quant --release --test iq1 -- --ignored real_tensors_equal_llama_cpp --nocapture
/// ```
#[test]
#[ignore = "needs the llama-cpp-python virtualenv and the SmolLM2 test model"]
fn real_tensors_equal_llama_cpp() {
    let model = common::smollm2();
    let mut report = Vec::new();
    let (mut total, mut matched) = (0usize, 0usize);
    for (k, layer) in [0, 7, 15, 22, 29].into_iter().enumerate() {
        let name = format!("blk.{layer}.ffn_down.weight");
        let (cols, x) = common::smollm2_rows(&model, &name, None);
        let imp = realistic_importance(cols, 700 + k as u64);
        for ty in TYPES {
            for imp in [Some(&imp[..]), None] {
                if imp.is_none() && !llama_quantizes_without_weights(ty) {
                    continue;
                }
                let theirs = common::llama_quantize(ty, &x, cols, imp, false);
                let ours = quantize(ty, &x, cols, imp);
                let blocks = ours.len() / ty.type_size();
                let bad = differing_blocks(ty, &ours, &theirs);
                total += blocks;
                matched += blocks - bad;
                report.push(format!("{ty} {name} weighted={}: {}/{blocks} blocks match", imp.is_some(), blocks - bad));
            }
        }
    }
    println!("{}\nall: {matched}/{total} blocks match", report.join("\n"));
    assert_eq!(matched, total, "{}", report.join("\n"));
}

/// Byte-for-byte comparison with llama.cpp on synthetic rows with degenerate blocks and importance
/// vectors with zero columns.
#[test]
#[ignore = "needs the llama-cpp-python virtualenv"]
fn synthetic_rows_equal_llama_cpp() {
    let mut report = Vec::new();
    let mut all = true;
    for (seed, (rows, cols)) in [(8usize, 256usize), (16, 1536), (4, 4096), (12, 2048)].into_iter().enumerate() {
        let mut x = realistic_weights(rows, cols, 1000 + seed as u64);
        let mut imp = realistic_importance(cols, 2000 + seed as u64);
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
            for w in imp.iter_mut().step_by(3) {
                *w = 0.0;
            }
        }
        for ty in TYPES {
            for w in [Some(&imp[..]), None] {
                if w.is_none() && !llama_quantizes_without_weights(ty) {
                    continue;
                }
                let theirs = common::llama_quantize(ty, &x, cols, w, false);
                let ours = quantize(ty, &x, cols, w);
                let bad = differing_blocks(ty, &ours, &theirs);
                all &= bad == 0;
                let n = ours.len() / ty.type_size();
                report.push(format!("{ty} {rows}x{cols} weighted={}: {}/{n} blocks match", w.is_some(), n - bad));
            }
        }
    }
    println!("{}", report.join("\n"));
    assert!(all, "{}", report.join("\n"));
}

type DotFn = fn(usize, &[u8], &[u8]) -> f32;
type SimdDotFn = fn(usize, &[u8], &[u8]) -> Option<f32>;

#[test]
fn simd_dot_matches_scalar_and_the_dequantized_dot() {
    let cases: [(GgmlType, DotFn, SimdDotFn); 2] = [
        (GgmlType::IQ1_S, iq1_s::vec_dot_scalar, iq1_s::vec_dot_simd),
        (GgmlType::IQ1_M, iq1_m::vec_dot_scalar, iq1_m::vec_dot_simd),
    ];
    for (ty, scalar, simd) in cases {
        let k = kernels(ty).unwrap();
        for (n, seed) in [(256usize, 1u64), (1536, 2), (4096, 3)] {
            let act = realistic_weights(1, n, seed + 50);
            let y = quantize(k.dot_type, &act, n, None);
            let yd = dequantize(k.dot_type, &y, n);
            let x_imp = realistic_importance(n, seed + 60);
            let xs = [
                quantize(ty, &realistic_weights(1, n, seed), n, Some(&x_imp)),
                quantize(ty, &realistic_weights(1, n, seed), n, None),
                random_blocks(ty, n / 256, seed),
            ];
            for x in &xs {
                let xd = dequantize(ty, x, n);
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
fn dot_handles_misaligned_buffers() {
    let n = 512;
    for ty in TYPES {
        let k = kernels(ty).unwrap();
        let x = quantize(ty, &realistic_weights(1, n, 9), n, Some(&realistic_importance(n, 10)));
        let y = quantize(k.dot_type, &realistic_weights(1, n, 11), n, None);
        let want = (k.vec_dot.unwrap())(n, &x, &y);
        let mut xb = vec![0u8; x.len() + 1];
        xb[1..].copy_from_slice(&x);
        let mut yb = vec![0u8; y.len() + 3];
        yb[3..].copy_from_slice(&y);
        assert_eq!((k.vec_dot.unwrap())(n, &xb[1..], &yb[3..]).to_bits(), want.to_bits(), "{ty}");
    }
}

#[test]
fn misaligned_buffers_give_the_same_bytes() {
    let n = 512;
    let x = realistic_weights(1, n, 8);
    let imp = realistic_importance(n, 9);
    for ty in TYPES {
        let k = kernels(ty).unwrap();
        let aligned = quantize(ty, &x, n, Some(&imp));
        let mut buf = vec![0u8; aligned.len() + 1];
        (k.quantize)(&x, Some(&imp), &mut buf[1..]);
        assert_eq!(&buf[1..], &aligned[..], "{ty}");
        let mut back = vec![0f32; n];
        (k.dequantize)(&buf[1..], &mut back);
        assert_eq!(back, dequantize(ty, &aligned, n), "{ty}");
    }
}

fn rel_rmse(x: &[f32], back: &[f32]) -> f64 {
    let ones = [1.0f32];
    (weighted_error(x, back, &ones) / x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>()).sqrt()
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

/// Without importance weights (which llama.cpp requires for IQ1_S) IQ1_S uses unit importance:
/// exactly the bytes llama.cpp writes for an importance vector of ones, which beat the `x²`
/// weighting llama.cpp's IQ1_M falls back to. IQ1_M keeps llama.cpp's own fallback (its bytes are
/// in the golden table).
#[test]
fn quantizes_without_importance_weights() {
    let n = 1536;
    let x = realistic_weights(16, n, 41);
    let ones = vec![1.0f32; n];
    let plain = quantize(GgmlType::IQ1_S, &x, n, None);
    assert_eq!(plain, quantize(GgmlType::IQ1_S, &x, n, Some(&ones)), "IQ1_S without weights = unit importance");
    let err = |ty, imp: Option<&[f32]>| rel_rmse(&x, &dequantize(ty, &quantize(ty, &x, n, imp), n));
    let (s, m) = (err(GgmlType::IQ1_S, None), err(GgmlType::IQ1_M, None));
    println!("relative RMSE without importance: IQ1_S {s:.4}, IQ1_M {m:.4}");
    assert!(s < 0.6 && m < 0.65, "IQ1_S {s}, IQ1_M {m}");
}

#[test]
fn edge_inputs_are_safe() {
    let n = 512;
    let mut rng = Rng::new(5);
    let rows: Vec<Vec<f32>> = vec![
        vec![0.0; n],
        vec![-0.0; n],
        vec![0.5; n],
        vec![-2.0; n],
        (0..n).map(|_| (rng.uniform() - 0.5) * 1.2e5).collect(),
        (0..n).map(|_| rng.normal() * 3e18).collect(),
        (0..n).map(|_| rng.normal() * 1e-30).collect(),
        (0..n).map(|_| rng.normal() * 1e-41).collect(),
        (0..n).map(|i| if i == 77 { 7.0 } else { 0.0 }).collect(),
        (0..n).map(|i| if i == 5 { -300.0 } else { rng.normal() * 1e-3 }).collect(),
        (0..n).map(|i| if i < 256 { 0.0 } else { rng.normal() }).collect(),
        (0..n).map(|i| if i % 2 == 0 { f32::MAX } else { -f32::MAX }).collect(),
    ];
    let non_finite: Vec<Vec<f32>> = vec![
        (0..n).map(|i| if i == 3 { f32::NAN } else { rng.normal() }).collect(),
        (0..n).map(|i| if i == 300 { f32::INFINITY } else { rng.normal() }).collect(),
        vec![f32::NAN; n],
    ];
    let imps = [
        None,
        Some(realistic_importance(n, 3)),
        Some(vec![0.0; n]),
        Some(vec![1e-30; n]),
        Some(vec![1e30; n]),
        Some((0..n).map(|i| if i % 5 == 0 { f32::NAN } else { 1.0 }).collect()),
        Some(vec![1.0; n - 1]),
    ];
    for ty in TYPES {
        let k = kernels(ty).unwrap();
        for (r, row) in rows.iter().enumerate() {
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (w, imp) in imps.iter().enumerate() {
                let mut q = vec![0u8; ty.row_size(n).unwrap()];
                (k.quantize)(row, imp.as_deref(), &mut q);
                let mut back = vec![0f32; n];
                (k.dequantize)(&q, &mut back);
                if amax < 1e30 && !matches!(imp.as_deref(), Some(v) if v.iter().any(|x| x.is_nan())) {
                    assert!(back.iter().all(|v| v.is_finite()), "{ty} row {r} importance {w}");
                    let err = row.iter().zip(&back).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                    assert!(err <= 2.0 * amax + 1e-6, "{ty} row {r} importance {w}: error {err}, amax {amax}");
                }
            }
        }
        for row in &non_finite {
            for imp in &imps {
                let mut q = vec![0u8; ty.row_size(n).unwrap()];
                (k.quantize)(row, imp.as_deref(), &mut q);
                let mut back = vec![0f32; n];
                (k.dequantize)(&q, &mut back);
            }
        }
        // a short destination or source quantizes what fits, never panics
        let mut short = vec![0u8; ty.type_size() - 1];
        (k.quantize)(&rows[4], None, &mut short);
        let mut back = vec![0f32; 100];
        (k.dequantize)(&random_blocks(ty, 1, 1), &mut back);
        let y = quantize(GgmlType::Q8_K, &rows[4][..256], 256, None);
        assert!((k.vec_dot.unwrap())(512, &random_blocks(ty, 1, 2), &y).is_finite());
    }
}

/// Zero sub-blocks keep llama.cpp's encoding: an all-zero IQ1_S super-block is all zero bytes,
/// a zero sub-block inside a non-zero one keeps grid index 0 and scale 0.
#[test]
fn zero_blocks_are_encoded_as_llama_cpp() {
    for ty in TYPES {
        let q = quantize(ty, &[0.0; 256], 256, Some(&[1.0; 256]));
        assert!(q.iter().all(|&b| b == 0), "{ty}: {q:?}");
    }
    let mut x = realistic_weights(1, 256, 3);
    x[..32].fill(0.0);
    let q = quantize(GgmlType::IQ1_S, &x, 256, Some(&[1.0; 256]));
    let b: iq1_s::BlockIq1S = bytemuck::pod_read_unaligned(&q);
    assert_eq!((b.qs[..4].to_vec(), b.qh[0]), (vec![0u8; 4], 0));
    assert!(b.qh[1..].iter().any(|&h| h >> 12 != 0));
}
