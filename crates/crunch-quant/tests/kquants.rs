//! K-quant formats (Q2_K..Q6_K, Q8_K): llama.cpp's bytes (golden SHA-256 in the default run, live
//! comparisons in ignored tests), oracle dequantization, error budgets, importance weights, dot
//! products and degenerate inputs.

mod common;

use common::{dequantize, quantize};
use crunch_core::GgmlType;
use crunch_quant::{dequantize_rows, kernels};
use crunch_testkit::{bytes_f32, oracle, realistic_importance, realistic_weights, Rng, Scratch};

const K_TYPES: [GgmlType; 5] = [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K];
const ALL_TYPES: [GgmlType; 6] =
    [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q8_K];

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

/// One input of the golden hashes: rows of `row_len`, and the importance vector of the weighted run.
struct GoldenCase {
    label: String,
    row_len: usize,
    x: Vec<f32>,
    imp: Vec<f32>,
}

/// Degenerate rows of 256: zeros, a constant, a lone spike, tiny and large magnitudes, heavy tails,
/// every other sub-block of 16 zero, sub-blocks of very different scales.
fn golden_edge_rows() -> Vec<f32> {
    let mut rng = Rng::new(321);
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

/// The inputs behind [`K_GOLDEN`]: LLM-like random rows of 256, 768 and 2048
/// (`crunch_testkit::realistic_weights`), the degenerate rows of [`golden_edge_rows`], and the first
/// 32 rows of three real SmolLM2 `ffn_down` tensors (1536 wide, dequantized from the Q4_1 test
/// model like the F32 base of the presets; SmolLM2's other matrices are 576 = 2.25·256 wide, which
/// no k-quant block fits). Importance: `crunch_testkit::realistic_importance`, one vector per input.
fn golden_cases() -> Vec<GoldenCase> {
    let mut cases = Vec::new();
    for (k, (rows, n)) in [(16usize, 256usize), (8, 768), (4, 2048)].into_iter().enumerate() {
        let (x, imp) = (realistic_weights(rows, n, 300 + k as u64), realistic_importance(n, 310 + k as u64));
        cases.push(GoldenCase { label: format!("random_{rows}x{n}"), row_len: n, x, imp });
    }
    let (x, imp) = (golden_edge_rows(), realistic_importance(256, 320));
    cases.push(GoldenCase { label: "edge_8x256".into(), row_len: 256, x, imp });
    let model = common::smollm2();
    for (k, layer) in [0, 15, 29].into_iter().enumerate() {
        let (n, x) = common::smollm2_rows(&model, &format!("blk.{layer}.ffn_down.weight"), Some(32));
        let imp = realistic_importance(n, 330 + k as u64);
        cases.push(GoldenCase { label: format!("smollm2_blk.{layer}.ffn_down_32x{n}"), row_len: n, x, imp });
    }
    cases
}

/// SHA-256 of llama.cpp's bytes for each k-quant and each input of [`golden_cases`]: type, input,
/// without importance weights, with the input's importance vector (`ggml_quantize_chunk` of
/// llama-cpp-python 0.3.36's vendored llama.cpp of 2026-10-01, libggml-base through
/// scripts/compare_quant_bytes.py). Regenerate (needs `~/.cache/crunch/llama-venv`, made by
/// scripts/setup-llama-venv.sh) with
///
/// ```text
/// cargo test -p crunch-quant --test kquants -- --ignored golden_hashes_are_llama_cpps --nocapture
/// ```
///
/// which quantizes the same inputs with llama.cpp and crunch, fails on any byte difference, prints
/// this table from llama.cpp's bytes and fails if it differs from the one recorded here.
const K_GOLDEN: &str = "\
Q2_K random_16x256 f372357cef19b0648b68032af787abe6a06fe998a4172d114f1acd9addc19740 d8fa5f2b54f92b8a213d1c4a4d4b54c70d42c4183c6062d2895ea793ece510c4
Q2_K random_8x768 8d8eeb8fc0726d3b49c0c1ef3c31783f474e0c6b100c1a3e83dd6e808e9a61b9 7932c589163064930d2a59c74e7e3ffc383734e2d169cdb13d52da8e84c71b4e
Q2_K random_4x2048 ae9f3b669be5bb5aae1fe47757c9778e33cbfbf6d399da662376dc2af5b80538 ebdd868988ac40fac42fba2c9b5632916c841c4dba9efccb82ce3c281ee4f17f
Q2_K edge_8x256 7ad9a8f45a2b9d785c4de7dc1610e3754e00b5106d8e1c820827ad34faebed03 c6fccd1eb1cf539d0e255820e49c65459e31d3876f3184c3d5b98226216fe286
Q2_K smollm2_blk.0.ffn_down_32x1536 88cf68b69a0b572e4bca7ee546b22f0ede5cd6ff23891cb7c196192bfb2129fd f0b9a42e97c1ffcaf9dc132794b99964bced55a2c3a00574c67aeb4c5c1450e5
Q2_K smollm2_blk.15.ffn_down_32x1536 9d6599aa5e7c47bf72756dc428c4b620f5555eb0f286d94d16188f12cf94b1d1 bd154cc9cb82fc74485aad2236d3f652826e4258aaef97c39a4d9f9449115f39
Q2_K smollm2_blk.29.ffn_down_32x1536 4cbac389685e870eed37a3a6e9e542c29779ed3de2f469f4f7fc43c135951f83 932dcf1171fc8c03a9500a27db1ceb74ca90089060132d01c1b40ffe15e6fb4a
Q3_K random_16x256 38b2a845e361f28a839fd74678f9edc96d8960ea4142aaeeaca8d1a6baaee16b 99c9acbdadba69424a496ffe07c71db5b91896fc7aec76a8e95a65feae177008
Q3_K random_8x768 a55a63a685b2a82086d7f7e974be911db8fa8f3f2321efa965bf92d241dbd3f4 3aa900a6fc9e6a8e84b385b0d62cfdb489bef13c84a052a0c46ed1268b8eafd8
Q3_K random_4x2048 c076bfc9aad7ad5f6b341b9c720db5cba949bb8286cce01bc9daac754e1b5bb5 4eddda363d3aa4eacee507968fade554c9aef149bb65ba597f2b3eea2f78cc15
Q3_K edge_8x256 a203908ec703c9eddb05a99919dca8a2779616f89f1937c80bb06f1fc05dade9 5320787231dd653a5c29f3e99f6e261c333d0cf782e343945cadb30de8f33015
Q3_K smollm2_blk.0.ffn_down_32x1536 ba80349bf3bc9832d026e8fde2cb620defaa3214c75e9ba4b6dd8ad391449138 b6cf8f36d84352e2987452a69c5cef27666238c40686241dad5d127d08bc4414
Q3_K smollm2_blk.15.ffn_down_32x1536 3c61ae95b7075b34dd4b335f8fc15dd11fba47aa8e60cc6369415cceedc632f2 d4091281899332a1a5180ee6e7ba2b1868d4048db9cbca3829861230d2624ddc
Q3_K smollm2_blk.29.ffn_down_32x1536 f693fc7eaae6cc7c04414c2a7520d560b179aa0c1e246bcd203a6a87662934d2 3f8eba69f98f9e3e2ddddc355337bc8ad1d8ace0c6701a1a6feef8eb8ad96f28
Q4_K random_16x256 7d9d7a22a775642e400efbb958a2d65196020b83212d27b231bbcb1c07a8df2d b6fb81f2aad33f918db00bbde633eb656ead85cc64da246d1a0bcf3aea423804
Q4_K random_8x768 01171365a64c782efe18df182d554a7b19a06514b1ef37c68d022d3f52402236 974ae270bf2085469cae43f6a094b951eb7f9ebe2ce12563dbaf5f9a7bce6549
Q4_K random_4x2048 45b3b818be9f9468a765442a3410dd95393db06c6dcabc76467d7e497c7ac28c 158c650943bf1e84461c9183145d726dd5ce8198b3ce10855349dc3db589577a
Q4_K edge_8x256 c505a0e666c5f0fc23fe5d252549024ee3a3505e34375f8b865e268dfbb96f86 00e94102d9a3494f4a3e8ced3331ef4d296ac162441549269fcdd03bb309f946
Q4_K smollm2_blk.0.ffn_down_32x1536 4126a91830b7897ef6972d96286754c960563f353bcc1204d0ca73bc055711de 88d585f87b861da0a9abc0ec536bbd655bb4a65ebf4f3bc7123363920322b4c3
Q4_K smollm2_blk.15.ffn_down_32x1536 5a4ed552df29e325be1e4628667ab413ed40aff8abe9ed5f6b29b968aff31e04 cd0b18b3a6e1d0b92f0a58a5319d43de4911affd0a7b5333da76f062ab366b6a
Q4_K smollm2_blk.29.ffn_down_32x1536 2b1f1426f9dd96b1d6f7acea2a1329f4ce3d9ad5337dfe6478fecdf3bd0b4b0e 562ba8420f927c712840293d94041da97f48cbddefaa8520fc5e8825a0d49f9e
Q5_K random_16x256 a21910c39034ff52d06590110f057fd7d527d583ef9c4afbe1a5cd7f83e8ff43 324a8f7cc41b171ab30b9b7ae7056fcd1738be7efb0ba749b321dcc9e0d15a8a
Q5_K random_8x768 21b3825e40c8a052d7f467dca9c2e0d8b7e7c5227dcfb4d97fd5f9faf80a3bc5 8f0dd6efc8cba963ba51776ba7e4c6169ecb9bc9c313f3be932bedb7d413f952
Q5_K random_4x2048 e9d4a7367cc2c040c1aadfea2d2427b01d7a8d96da88d62bf749ff1be790ef79 a50738e609f323f8850e7cab4eb864b21cece4a9663ba1bee1e438230916c002
Q5_K edge_8x256 026d2af86b96d89b09acdb3c0b5d8ed425b1d86ff8bd4b167d26e1a559fc506d 8d752c0f26276b01543da257e58cb144a94e9566fde1f7963d97f874681a24b4
Q5_K smollm2_blk.0.ffn_down_32x1536 708c02ce984f5d39750270ce38fe5e847c3342c66d08b2b045e81a5d52a210a5 54775e21be9ea9df8f936becfa7a19e24239d5cb4de799f8902d8bffbeed90e2
Q5_K smollm2_blk.15.ffn_down_32x1536 ef77cd61500427edcca9f0949ca6387f478781f6ca4b0eb99fa74c53959081a9 3b1f413223296abeb7032083080781deb50555357cfa815f9d878bb2dbcc8e39
Q5_K smollm2_blk.29.ffn_down_32x1536 d7dfe333432ac87cb991eedae409eb9bc6dfcdfd4adfa76d3af4e5a9da869362 bdda69bda4bc193692e8cc3a456a7194abc481f8084164156b59153d02cec1ef
Q6_K random_16x256 033f5d8217fcc3a605cf2caa0b87f6c344eba8e33e6aa890f6af9f39f49b9ee3 086db508d38f6e3155005043329675d8497f76dc02b14cf97777350ecc5e46ac
Q6_K random_8x768 e3a41678710102a10392fd49774d3785206c9c3b6666200c7c3b29677690429c 7b654044528cbfa799d03488746952aaa5a1e0821fc191cbc154a87d5f11dd20
Q6_K random_4x2048 cec556e202508515f56ae6117f46fb3617e3104fcc415da91c44ce81e558f4b6 5ebcd58040c22f6259220b7e42e7e6411a187a406d95f2b09c3a34aa797f3270
Q6_K edge_8x256 a7e1d4443e5023608426953768163644d1c332c1f917f2c4d469383dd3ad9e59 1660ab03e3647e914e689c589ab3caa0eb01df69b686db2e3f984031116e15ef
Q6_K smollm2_blk.0.ffn_down_32x1536 a798540ba4b208f9b29df74ed6543fe2da2f9a8137b0d58c9d868ba107ce5985 98e11649805ee96ec55bf70ad8c5c09a92976ed15ed9c6bd3fca407bd93b8e59
Q6_K smollm2_blk.15.ffn_down_32x1536 e07be8563f6bb3f100c014c2abb78f15c2c19e0ecfd8cec851cbab19ca067165 b67906c8d1a2c498421c910aa0d42b05dcd0d46262ebd93bb03343558b95c097
Q6_K smollm2_blk.29.ffn_down_32x1536 cd46e318393269ceb47d366602da465236726428575302d61947efe2e5495a5a d3c54ea81cc77b6a7706e24d661fbe9b73b71ad915b6961a232b6ed67334313c
";

fn parse_goldens() -> Vec<(GgmlType, &'static str, &'static str, &'static str)> {
    K_GOLDEN
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 4, "golden line {l:?}");
            (f[0].parse().unwrap(), f[1], f[2], f[3])
        })
        .collect()
}

/// crunch's k-quant bytes equal llama.cpp's (by their recorded SHA-256), with and without importance
/// weights, on random, degenerate and real rows; no llama.cpp needed.
#[test]
fn quantized_bytes_match_llama_cpp_golden_hashes() {
    let cases = golden_cases();
    let goldens = parse_goldens();
    assert_eq!(goldens.len(), K_TYPES.len() * cases.len(), "one golden line per type and input");
    let bad: Vec<String> = std::thread::scope(|sc| {
        let jobs: Vec<_> = goldens
            .iter()
            .map(|&(ty, label, plain, weighted)| {
                let c = cases.iter().find(|c| c.label == label).unwrap_or_else(|| panic!("no input {label}"));
                sc.spawn(move || {
                    let mut bad = Vec::new();
                    for (imp, want) in [(None, plain), (Some(&c.imp[..]), weighted)] {
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
    assert!(bad.is_empty(), "{} of {} cases differ from llama.cpp:\n{}", bad.len(), 2 * goldens.len(), bad.join("\n"));
}

/// Regenerates and checks [`K_GOLDEN`] against llama.cpp itself (see there).
#[test]
#[ignore = "needs the llama-cpp-python virtualenv; prints K_GOLDEN"]
fn golden_hashes_are_llama_cpps() {
    let mut table = String::new();
    let mut diff = Vec::new();
    for ty in K_TYPES {
        for c in golden_cases() {
            let mut hashes = Vec::new();
            for imp in [None, Some(&c.imp[..])] {
                let theirs = common::llama_quantize(ty, &c.x, c.row_len, imp, false);
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
    assert_eq!(table, K_GOLDEN, "K_GOLDEN is not llama.cpp's: paste the table printed above");
}

/// Quantize `x` (rows of `cols`) with llama.cpp's C code (through llama-cpp-python's libggml-base) and
/// with crunch, for every k-quant with and without `imp`; one report line per case.
fn compare_with_llama_cpp(label: &str, x: &[f32], cols: usize, imp: &[f32]) -> Vec<String> {
    let mut report = Vec::new();
    for ty in ALL_TYPES {
        for weighted in [false, true] {
            if ty == GgmlType::Q8_K && weighted {
                continue;
            }
            let w = if weighted { Some(imp) } else { None };
            let theirs = common::llama_quantize(ty, x, cols, w, ty == GgmlType::Q8_K);
            let ours = quantize(ty, x, cols, w);
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
/// (all 576 rows of 1536, dequantized from the Q4_1 GGUF).
#[test]
#[ignore = "needs the llama-cpp-python virtualenv and the SmolLM2 test model"]
fn real_weights_bytes_equal_llama_cpp() {
    let model = common::smollm2();
    let mut report = Vec::new();
    for name in ["blk.0.ffn_down.weight", "blk.29.ffn_down.weight"] {
        let (cols, x) = common::smollm2_rows(&model, name, None);
        let imp = realistic_importance(cols, 17);
        report.extend(compare_with_llama_cpp(name, &x, cols, &imp));
    }
    assert_all_equal(&report);
}
