//! Pruning on small random matrices: exact sparsity and N:M patterns for magnitude, Wanda and
//! SparseGPT, SparseGPT's output error below the others' on correlated inputs, joint
//! sparsification and quantization decoding exactly, and which GGUF types keep zeros.

mod common;
use common::{correlated_inputs, output_error};
use crunch_calib::gptq::{grid, GptqOptions};
use crunch_calib::linalg;
use crunch_calib::prune::{self, Sparsity};
use crunch_core::GgmlType;
use crunch_testkit::realistic_weights;

fn zeros(v: &[f32]) -> usize {
    v.iter().filter(|x| **x == 0.0).count()
}

/// Every group of `m` consecutive weights of every row has exactly `n` zeros.
fn assert_nm(w: &[f32], n_in: usize, n: usize, m: usize, what: &str) {
    for (r, row) in w.chunks_exact(n_in).enumerate() {
        for (g, grp) in row.chunks_exact(m).enumerate() {
            assert_eq!(zeros(grp), n, "{what}: row {r} group {g}: {grp:?}");
        }
    }
}

struct Case {
    x: Vec<f32>,
    w: Vec<f32>,
    h: Vec<f32>,
    col_sq: Vec<f32>,
}

fn case(n_out: usize, n_in: usize, n_tok: usize, seed: u64) -> Case {
    let x = correlated_inputs(n_tok, n_in, seed);
    let w = realistic_weights(n_out, n_in, seed + 100);
    let mut h = vec![0f32; n_in * n_in];
    linalg::add_xtx(&mut h, &x, n_in);
    let col_sq = prune::column_sq_sums(&x, n_in);
    Case { x, w, h, col_sq }
}

#[test]
fn unstructured_sparsity_is_exact() {
    // Odd shapes too: 7 rows of 96, 33 rows of 320.
    for (n_out, n_in) in [(7usize, 96usize), (33, 320), (48, 512)] {
        let c = case(n_out, n_in, 256, n_out as u64);
        for s in [0.5, 0.3, 0.9] {
            let sp = Sparsity::fraction(s).unwrap();
            let total = n_out * n_in;

            // Magnitude: per matrix, exactly round(s * n) zeros, the smallest magnitudes.
            let mut w = c.w.clone();
            let z = prune::magnitude("m", &mut w, n_in, sp).unwrap();
            assert_eq!(z, (s * total as f64).round() as usize, "magnitude {n_out}x{n_in} at {s}");
            assert_eq!(zeros(&w), z);
            let max_pruned = c.w.iter().zip(&w).filter(|(_, p)| **p == 0.0).map(|(o, _)| o.abs()).fold(0f32, f32::max);
            let min_kept =
                c.w.iter().zip(&w).filter(|(_, p)| **p != 0.0).map(|(o, _)| o.abs()).fold(f32::MAX, f32::min);
            assert!(max_pruned <= min_kept, "magnitude keeps the largest weights");
            assert!(w.iter().zip(&c.w).all(|(p, o)| *p == 0.0 || p == o), "survivors unchanged");

            // Wanda: per output row, exactly round(s * n_in) zeros, by |w| * ||x||.
            let mut w = c.w.clone();
            prune::wanda("w", &mut w, n_in, &c.col_sq, sp).unwrap();
            let k = (s * n_in as f64).round() as usize;
            for (r, (row, orig)) in w.chunks_exact(n_in).zip(c.w.chunks_exact(n_in)).enumerate() {
                assert_eq!(zeros(row), k, "wanda row {r}");
                let score = |j: usize| orig[j].abs() * c.col_sq[j].sqrt();
                let max_pruned = (0..n_in).filter(|&j| row[j] == 0.0).map(score).fold(0f32, f32::max);
                let min_kept = (0..n_in).filter(|&j| row[j] != 0.0).map(score).fold(f32::MAX, f32::min);
                assert!(max_pruned <= min_kept, "wanda row {r} keeps the largest scores");
            }

            // SparseGPT: exactly round(s * 128 * n_out) zeros per block of 128 columns (the
            // mask is chosen per block), so in total round(s * n) up to rounding per block.
            let r = prune::sparsegpt("s", &c.w, n_in, &c.h, sp, None, GptqOptions::default()).unwrap();
            let want: usize =
                (0..n_in).step_by(128).map(|c0| (s * (n_out * (n_in - c0).min(128)) as f64).round() as usize).sum();
            assert_eq!(r.zeros, want, "sparsegpt {n_out}x{n_in} at {s}");
            assert_eq!(zeros(&r.weights), want);
            assert!(r.bytes.is_none());
        }
    }
}

#[test]
fn n_m_patterns_are_exact_for_every_method() {
    for (n_out, n_in) in [(5usize, 96usize), (24, 384)] {
        let c = case(n_out, n_in, 256, 3 + n_in as u64);
        for (n, m) in [(2usize, 4usize), (4, 8), (1, 3), (3, 4)] {
            let sp = Sparsity::pattern(&format!("{n}:{m}")).unwrap();
            assert_eq!(sp, Sparsity::NM { n, m });
            let mut w = c.w.clone();
            prune::magnitude("m", &mut w, n_in, sp).unwrap();
            assert_nm(&w, n_in, n, m, "magnitude");
            let mut w = c.w.clone();
            prune::wanda("w", &mut w, n_in, &c.col_sq, sp).unwrap();
            assert_nm(&w, n_in, n, m, "wanda");
            let r = prune::sparsegpt("s", &c.w, n_in, &c.h, sp, None, GptqOptions::default()).unwrap();
            assert_nm(&r.weights, n_in, n, m, "sparsegpt");
        }
    }
}

#[test]
fn sparsegpt_reconstructs_better_than_magnitude_and_wanda() {
    let n_in = 512;
    let c = case(64, n_in, 2048, 7);
    for sp in [Sparsity::Fraction(0.5), Sparsity::NM { n: 2, m: 4 }, Sparsity::Fraction(0.7)] {
        let mut wm = c.w.clone();
        prune::magnitude("m", &mut wm, n_in, sp).unwrap();
        let mut ww = c.w.clone();
        prune::wanda("w", &mut ww, n_in, &c.col_sq, sp).unwrap();
        let r = prune::sparsegpt("s", &c.w, n_in, &c.h, sp, None, GptqOptions::default()).unwrap();
        let (em, ew, es) = (
            output_error(&c.x, n_in, &c.w, &wm),
            output_error(&c.x, n_in, &c.w, &ww),
            output_error(&c.x, n_in, &c.w, &r.weights),
        );
        eprintln!("{sp}: output error magnitude {em:.4e}, wanda {ew:.4e}, sparsegpt {es:.4e}");
        assert!(ew < em, "{sp}: wanda {ew} not below magnitude {em}");
        assert!(es < ew * 0.8, "{sp}: sparsegpt {es} not clearly below wanda {ew}");
    }
}

#[test]
fn joint_sparsegpt_packs_the_pruned_weights_exactly() {
    let n_in = 512;
    let c = case(32, n_in, 1024, 9);
    let diag: Vec<f32> = (0..n_in).map(|i| c.h[i * n_in + i] / 1024.0).collect();
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q6_K, GgmlType::Q4_K, GgmlType::IQ4_NL, GgmlType::Q5_1] {
        for sp in [Sparsity::Fraction(0.5), Sparsity::NM { n: 2, m: 4 }] {
            let r =
                prune::sparsegpt("t", &c.w, n_in, &c.h, sp, Some((ty, Some(&diag))), GptqOptions::default()).unwrap();
            let bytes = r.bytes.as_ref().expect("joint result is packed");
            assert_eq!(bytes.len(), ty.row_size(n_in).unwrap() * 32);
            let mut dec = vec![0f32; c.w.len()];
            crunch_quant::dequantize_rows(ty, bytes, n_in, &mut dec).unwrap();
            assert_eq!(dec, r.weights, "{ty}: bytes decode to SparseGPT's weights");
            // Symmetric grids hold an exact zero: at least the target's zeros, the N:M pattern
            // holds (survivors may round to zero too).
            let exact_zero = matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q6_K);
            let z = zeros(&r.weights) as f64 / r.weights.len() as f64;
            eprintln!("{ty} {sp}: zeros {:.2}%, loss {:.4e}", 100.0 * z, r.loss);
            if exact_zero {
                assert!(z >= 0.5 - 1e-9, "{ty}: only {z} zeros");
                if let Sparsity::NM { n, m } = sp {
                    for row in r.weights.chunks_exact(n_in) {
                        assert!(row.chunks_exact(m).all(|g| zeros(g) >= n), "{ty}: N:M broken");
                    }
                }
            }
            // Joint pruning + quantization beats pruning with Wanda and then rounding to nearest.
            let mut ww = c.w.clone();
            prune::wanda("w", &mut ww, n_in, &c.col_sq, sp).unwrap();
            let mut q = vec![0u8; bytes.len()];
            crunch_quant::quantize_rows(ty, &ww, n_in, Some(&diag), &mut q).unwrap();
            crunch_quant::dequantize_rows(ty, &q, n_in, &mut ww).unwrap();
            let (ej, ew) = (output_error(&c.x, n_in, &c.w, &r.weights), output_error(&c.x, n_in, &c.w, &ww));
            assert!(ej < ew, "{ty} {sp}: joint SparseGPT {ej} not below Wanda + RTN {ew}");
        }
    }
}

/// Which types' quantizers turn a zero weight into an exact zero (the survivors of pruning are
/// ordinary weights): the symmetric grids do, the ones with a per-block minimum or without a
/// zero level (IQ4's code book) do not.
#[test]
fn which_types_keep_zeros() {
    let n = 1024;
    let mut w = realistic_weights(8, n, 5);
    prune::magnitude("z", &mut w, n, Sparsity::Fraction(0.5)).unwrap();
    let before = zeros(&w);
    let mut keep = Vec::new();
    for ty in [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q6_K,
        GgmlType::Q5_K,
        GgmlType::Q4_K,
        GgmlType::Q3_K,
        GgmlType::Q2_K,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
    ] {
        let mut q = vec![0u8; ty.row_size(n).unwrap() * 8];
        crunch_quant::quantize_rows(ty, &w, n, None, &mut q).unwrap();
        let mut d = vec![0f32; w.len()];
        crunch_quant::dequantize_rows(ty, &q, n, &mut d).unwrap();
        let kept = w.iter().zip(&d).filter(|(a, b)| **a == 0.0 && **b == 0.0).count();
        eprintln!("{ty}: {:.1}% of the zeros stay exactly zero", 100.0 * kept as f64 / before as f64);
        if kept == before {
            keep.push(ty);
        }
    }
    use GgmlType::*;
    assert_eq!(keep, [F16, BF16, Q8_0, Q5_0, Q4_0, Q6_K, Q3_K], "types whose quantizer keeps every zero");
    assert!(grid::type_grid(Q8_0).is_some());
}

#[test]
fn bad_sparsities_are_refused() {
    for s in [0.0, 1.0, 1.2, -0.1, f64::NAN] {
        let e = Sparsity::fraction(s).unwrap_err();
        assert!(e.contains("between 0 and 1"), "{e}");
    }
    for p in ["4:2", "2:2", "0:4", "a:b", "2-4", ""] {
        assert!(Sparsity::pattern(p).is_err(), "{p}");
    }
    let c = case(4, 96, 64, 1);
    let sp = Sparsity::pattern("5:7").unwrap();
    let e = prune::magnitude("blk.0.attn_q.weight", &mut c.w.clone(), 96, sp).unwrap_err().to_string();
    assert!(e.contains("blk.0.attn_q.weight") && e.contains("96") && e.contains("5:7"), "{e}");
    let e = prune::sparsegpt("blk.1.ffn_up.weight", &c.w, 96, &c.h, sp, None, GptqOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("blk.1.ffn_up.weight"), "{e}");
}
