//! IQ2_XXS, IQ2_XS and IQ2_S: quantization against hashes of llama.cpp's own bytes (synthetic, edge
//! and real SmolLM2 rows, with and without importance), dequantization against the PyPI `gguf`
//! oracle bit for bit, AVX2 dot products against the scalar reference, edge inputs.
//!
//! llama.cpp asserts when IQ2_XXS / IQ2_XS get no importance matrix; crunch quantizes them with unit
//! importance then, so their "plain" hashes below are llama.cpp's bytes with an all-ones imatrix.
//! IQ2_S has llama.cpp's own fallback weighting and is compared without one.

mod common;

use common::{dequantize, golden_importance, golden_input, oracle_dequantize, quantize, random_blocks, weighted_error};
use crunch_core::GgmlType;
use crunch_quant::iquants::{iq2_s, iq2_xs, iq2_xxs};
use crunch_quant::kernels;
use crunch_testkit::{realistic_importance, realistic_weights, Rng};

const TYPES: [GgmlType; 3] = [GgmlType::IQ2_XXS, GgmlType::IQ2_XS, GgmlType::IQ2_S];

/// llama.cpp's bytes for crunch's call `quantize(ty, x, cols, imp)`: the all-ones imatrix stands in
/// for "none" where llama.cpp requires one.
fn llama_bytes(ty: GgmlType, x: &[f32], cols: usize, imp: Option<&[f32]>) -> Vec<u8> {
    let ones = vec![1.0f32; cols];
    let imp = match (ty, imp) {
        (GgmlType::IQ2_XXS | GgmlType::IQ2_XS, None) => Some(&ones[..]),
        _ => imp,
    };
    common::llama_quantize(ty, x, cols, imp, false)
}

/// Degenerate rows of 256: zeros, a constant, a lone spike, tiny and large magnitudes, heavy tails,
/// every other group of 16 zero, groups of very different scales.
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
    x
}

struct GoldenCase {
    label: String,
    row_len: usize,
    x: Vec<f32>,
    imp: Vec<f32>,
}

/// The inputs behind [`GOLDEN`]: the deterministic rows of tests/iquants.rs, LLM-like random rows
/// (`crunch_testkit::realistic_weights`), the degenerate rows of [`golden_edge_rows`], and the first
/// 32 rows of three real SmolLM2 `ffn_down` tensors (1536 wide, dequantized from the Q4_1 test
/// model; SmolLM2's other matrices are 576 = 2.25·256 wide) with a log-normal importance vector.
fn golden_cases() -> Vec<GoldenCase> {
    let mut cases = vec![GoldenCase {
        label: "golden_4x1024".into(),
        row_len: 1024,
        x: golden_input(4 * 1024),
        imp: golden_importance(1024),
    }];
    let (x, imp) = (realistic_weights(8, 768, 501), realistic_importance(768, 502));
    cases.push(GoldenCase { label: "random_8x768".into(), row_len: 768, x, imp });
    let (x, imp) = (golden_edge_rows(), realistic_importance(256, 503));
    cases.push(GoldenCase { label: "edge_8x256".into(), row_len: 256, x, imp });
    let model = common::smollm2();
    for (k, layer) in [0, 15, 29].into_iter().enumerate() {
        let (n, x) = common::smollm2_rows(&model, &format!("blk.{layer}.ffn_down.weight"), Some(32));
        let imp = realistic_importance(n, 530 + k as u64);
        cases.push(GoldenCase { label: format!("smollm2_blk.{layer}.ffn_down_32x{n}"), row_len: n, x, imp });
    }
    cases
}

/// SHA-256 of llama.cpp's bytes for each type and each input of [`golden_cases`]: type, input,
/// without importance (all-ones imatrix for IQ2_XXS / IQ2_XS, see the top of this file), with the
/// input's importance vector (`ggml_quantize_chunk` of llama-cpp-python 0.3.36's vendored llama.cpp
/// of 2026-10-01, through scripts/compare_quant_bytes.py). Regenerate (needs
/// `~/.cache/crunch/llama-venv`, made by scripts/setup-llama-venv.sh) with
///
/// ```text
/// cargo test -p crunch-quant --test iq2 -- --ignored golden_hashes_are_llama_cpps --nocapture
/// ```
///
/// which quantizes the same inputs with llama.cpp and crunch, fails on any byte difference, prints
/// this table from llama.cpp's bytes and fails if it differs from the one recorded here.
const GOLDEN: &str = "\
IQ2_XXS golden_4x1024 9d39597c9328f2cf71eecfb20592cc8a56ca8c868ffcf22d4a5ce2e29bcd1e76 34b7b9091b7ca6ae48f38c6176778336390c84625ec8f5720fe2a8cf807a99a6
IQ2_XXS random_8x768 46628573ea6a9f23e38f62d26e57c8307d8cd911ebe9b5c5c2c13438e4bb8388 2f9f60db0661f7debb5857e6ec6ebd72b0d5af737697864194588321417ad2f3
IQ2_XXS edge_8x256 2d3a594aec7bdf49c4a406dc32e7c177c6b534596c1b1ddc85530bf41f2596e8 761c37a43b4af3e3c97594d1a31c3ee0d58018297956e749f22077011ebd7570
IQ2_XXS smollm2_blk.0.ffn_down_32x1536 e56ed91447696d210fdb9ddee6b3f6ef3dd6a166fab340a21a435d300cd0de1a af90434312f84c009af78a80f4b9d9d2a8e1e09b9d5108a2a71be3e5b54e09ea
IQ2_XXS smollm2_blk.15.ffn_down_32x1536 67e4daf7f9506de51645edeac05c757fe65d7b125b3f0eadef51f5f4bf5ee596 dcd3ee3eeff8fa22f8a8eff2d25fb28291e2f50ab33a1a3a526919faa91da783
IQ2_XXS smollm2_blk.29.ffn_down_32x1536 b247172f5186b5a94a550a5e4c8e2ecdd779e86bc5e1e029e58d08b51135fd9c eed8b098eea7e42b1207b26df264b44799cb762d6a97dbe4849bda7f7ac72118
IQ2_XS golden_4x1024 b387bd69040255863788092e1c0676e6fc4fe9e7b3bda96355310f15b969e9af 268575c8646a360b30c2f574589a598a8f5ed38951858978c688f271f0cb7cc7
IQ2_XS random_8x768 aa862e5c35d87ed363b5a64c4a07e68fd8aef4b1835493fbe837898f34333035 6962ff001a8563b00c76e406c069bb39c7d30a54558d18ca5c5bb9253db9ea9c
IQ2_XS edge_8x256 f06811f0dcd583852288a5fced76349c6401f164fcb4f90dc9ed1829602a9982 5fb591d9c086ed475b6024cfb4e94282fc1061808dd395337215425de8d371da
IQ2_XS smollm2_blk.0.ffn_down_32x1536 88e97caac59d70f7c8b267f7b1f990e18c9b502dd520f0d21d897f0681683f8b b7f0f99b5e55aad7b04a67b7c707d5d965b6e9d10627d54a86f458173bff39b0
IQ2_XS smollm2_blk.15.ffn_down_32x1536 396d0a5f5658ba8d6a7d06d6660a9b178cb2f23003e72f3ab9ffd3e9a94c2e73 8e06212c1127dee57e954be7b33b9add00ddfaa94eb1a4261b4cdea0e08e2481
IQ2_XS smollm2_blk.29.ffn_down_32x1536 feb588a84a07bad0b80bad60f9118c42baa53857aed3eba895effde13eb40822 48652a635d5cb6c1baa8ee021af98d53a135a612869d2cb30675810c29d1d7cc
IQ2_S golden_4x1024 6efcad76b3dd48ab78fba7f1df6eac255fbdb3442789dd6549bf5bbb2ea61997 f60dc40b87accfa58dd4234ebeeb49313bd0407fa28a5eb6a7ddbc2aefe335a8
IQ2_S random_8x768 6c9484c5c9d478bc865d86ca45cf7ecb351ead659513aa04e436465a8a4b0980 418fcd4fddf5247e3f269bd6efee2c83f4d659e195b5b57cd7b031db560413ad
IQ2_S edge_8x256 6807a17adecedce1b087930a4339706347fe26db6502b97f3cb2f56aef8e35f7 25a79efc4a1978193a888e10f96d3092ea1fa4cce968b71e8a7709fdf2feae52
IQ2_S smollm2_blk.0.ffn_down_32x1536 0d4c30cf6fe8ee717e4aee4a91293eb5ef7cec35906305c6af6a06b6e3dff39c 14eb8bfcd2a53fe547cbc528f84124687684b04ba2066ceb98828e45731badd3
IQ2_S smollm2_blk.15.ffn_down_32x1536 1f4379ba322adc79cb644ce5d7b8e5382db5818546b43dc4dd2d0154246d837c fd3d8425f5dac13f40315075aec73a43f40775d38137399dd97bd11e3bc309dc
IQ2_S smollm2_blk.29.ffn_down_32x1536 07dc3ec6cc82c246e1251fa97b0d0ed5d6eff84ba6bd1829e640b2b2732620e2 aa0a2a67f70a655f549726634c967ef2415fc75328915793a6c7a819d603753f
";

#[test]
fn quantize_matches_llama_cpp_golden_hashes() {
    let cases = golden_cases();
    let mut bad = Vec::new();
    let mut n = 0;
    for line in GOLDEN.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [ty, label, plain, weighted] = f[..] else { panic!("bad GOLDEN line {line}") };
        let ty: GgmlType = ty.parse().unwrap();
        let c = cases.iter().find(|c| c.label == label).unwrap();
        for (imp, want) in [(None, plain), (Some(&c.imp[..]), weighted)] {
            n += 1;
            let got = common::sha256_hex(&quantize(ty, &c.x, c.row_len, imp));
            if got != want {
                bad.push(format!("{ty} {label} weighted={}: sha256 {got}, llama.cpp {want}", imp.is_some()));
            }
        }
    }
    assert_eq!(n, 2 * TYPES.len() * cases.len());
    assert!(bad.is_empty(), "{} of {n} cases differ from llama.cpp:\n{}", bad.len(), bad.join("\n"));
}

/// Regenerates and checks [`GOLDEN`] against llama.cpp itself (see there).
#[test]
#[ignore = "needs the llama-cpp-python virtualenv; prints GOLDEN"]
fn golden_hashes_are_llama_cpps() {
    let mut table = String::new();
    let mut diff = Vec::new();
    for ty in TYPES {
        for c in golden_cases() {
            let mut hashes = Vec::new();
            for imp in [None, Some(&c.imp[..])] {
                let theirs = llama_bytes(ty, &c.x, c.row_len, imp);
                let ours = quantize(ty, &c.x, c.row_len, imp);
                let size = ty.type_size();
                let blocks = ours.chunks(size).zip(theirs.chunks(size)).filter(|(a, b)| a != b).count();
                if ours.len() != theirs.len() || blocks > 0 {
                    diff.push(format!("{ty} {} weighted={}: {blocks} blocks differ", c.label, imp.is_some()));
                }
                hashes.push(common::sha256_hex(&theirs));
            }
            table.push_str(&format!("{ty} {} {} {}\n", c.label, hashes[0], hashes[1]));
        }
    }
    println!("{table}");
    assert!(diff.is_empty(), "crunch differs from llama.cpp:\n{}", diff.join("\n"));
    assert_eq!(table, GOLDEN, "GOLDEN is not llama.cpp's: paste the table printed above");
}

/// Byte-for-byte comparison with llama.cpp on whole real tensors: every row of SmolLM2's `ffn_down`
/// in four layers (576 rows of 1536 each), with a realistic importance vector and without one.
#[test]
#[ignore = "needs the llama-cpp-python virtualenv and the SmolLM2 test model"]
fn real_tensors_bytes_equal_llama_cpp() {
    let model = common::smollm2();
    let mut report = Vec::new();
    let (mut total, mut matched) = (0usize, 0usize);
    for (k, layer) in [0, 9, 20, 29].into_iter().enumerate() {
        let name = format!("blk.{layer}.ffn_down.weight");
        let (cols, x) = common::smollm2_rows(&model, &name, None);
        let imp = realistic_importance(cols, 700 + k as u64);
        for ty in TYPES {
            for imp in [None, Some(&imp[..])] {
                let theirs = llama_bytes(ty, &x, cols, imp);
                let ours = quantize(ty, &x, cols, imp);
                assert_eq!(ours.len(), theirs.len());
                let size = ty.type_size();
                let blocks = ours.len() / size;
                let same = ours.chunks(size).zip(theirs.chunks(size)).filter(|(a, b)| a == b).count();
                total += blocks;
                matched += same;
                report.push(format!("{ty} {name} weighted={}: {same}/{blocks} blocks equal", imp.is_some()));
            }
        }
    }
    println!("{}\n{matched} of {total} blocks equal llama.cpp's", report.join("\n"));
    assert_eq!(matched, total, "{}", report.join("\n"));
}

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

type DotFn = fn(usize, &[u8], &[u8]) -> f32;
type SimdDotFn = fn(usize, &[u8], &[u8]) -> Option<f32>;

#[test]
fn simd_dot_matches_scalar() {
    let cases: [(GgmlType, DotFn, SimdDotFn); 3] = [
        (GgmlType::IQ2_XXS, iq2_xxs::vec_dot_scalar, iq2_xxs::vec_dot_simd),
        (GgmlType::IQ2_XS, iq2_xs::vec_dot_scalar, iq2_xs::vec_dot_simd),
        (GgmlType::IQ2_S, iq2_s::vec_dot_scalar, iq2_s::vec_dot_simd),
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
                    // same integer sums and the same float steps: identical, not just close
                    assert_eq!(v.to_bits(), s.to_bits(), "{ty}: simd {v} vs scalar {s}");
                }
            }
        }
    }
}

#[test]
fn kernels_are_wired_as_in_llama_cpp() {
    for (ty, size) in [(GgmlType::IQ2_XXS, 66), (GgmlType::IQ2_XS, 74), (GgmlType::IQ2_S, 82)] {
        let k = kernels(ty).unwrap();
        assert_eq!((k.ty, k.dot_type, k.uses_weights), (ty, GgmlType::Q8_K, true));
        assert!(k.vec_dot.is_some());
        assert_eq!((ty.block_size(), ty.type_size()), (256, size));
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
        (0..n).map(|_| rng.normal() * 1e30).collect(),
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
                let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                if amax > 1e4 * 65504.0 {
                    continue; // beyond f16's range the scale saturates; only "no panic" is asked
                }
                assert!(back.iter().all(|v| v.is_finite()), "{ty} row {r}");
                let err = row.iter().zip(&back).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(err <= 2.0 * amax + 1e-6, "{ty} row {r}: error {err}, amax {amax}");
            }
        }
        // non-finite input: no panic, whatever comes out
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut row = realistic_weights(1, n, 9);
            row[3] = bad;
            let mut q = vec![0u8; ty.row_size(n).unwrap()];
            (k.quantize)(&row, None, &mut q);
            (k.quantize)(&row, Some(&realistic_importance(n, 4)), &mut q);
        }
    }
}

#[test]
fn importance_weights_lower_the_weighted_error_and_bits_buy_accuracy() {
    let n = 1536;
    let x = realistic_weights(16, n, 31);
    let imp = realistic_importance(n, 32);
    let mut errs = Vec::new();
    for ty in TYPES {
        let plain = weighted_error(&x, &dequantize(ty, &quantize(ty, &x, n, None), n), &imp);
        let weighted = weighted_error(&x, &dequantize(ty, &quantize(ty, &x, n, Some(&imp)), n), &imp);
        assert!(weighted < 0.95 * plain, "{ty}: weighted {weighted} vs plain {plain}");
        // relative to the signal: 2-bit codes keep well under half of the energy as error
        let energy = weighted_error(&x, &vec![0.0; x.len()], &imp);
        assert!(weighted < 0.5 * energy, "{ty}: error {weighted} of energy {energy}");
        errs.push(weighted);
    }
    // more bits per weight, less error: IQ2_XXS (2.06) > IQ2_XS (2.31) > IQ2_S (2.56)
    assert!(errs[0] > errs[1] && errs[1] > errs[2], "{errs:?}");
}
