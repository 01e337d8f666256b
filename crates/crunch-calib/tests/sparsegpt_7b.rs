//! Time of SparseGPT on one block shaped like a 7B Llama's (q, k, v, o: 4096 × 4096; gate, up:
//! 11008 × 4096; down: 4096 × 11008), beside GPTQ's on the same weights and Hessians (the same
//! inputs as `gptq_7b.rs`). Slow: run it on purpose with
//!
//!   cargo test --release -p crunch-calib --test sparsegpt_7b -- --ignored --nocapture
//!
//! Per tensor it prints SparseGPT at 50% (f32 output), SparseGPT 2:4, SparseGPT 50% jointly
//! quantized to Q4_K, GPTQ Q4_K, and Wanda 50% (whose only cost besides the column norms is a
//! selection per row).

use crunch_calib::gptq::{self, GptqOptions};
use crunch_calib::linalg;
use crunch_calib::prune::{self, Sparsity};
use crunch_core::GgmlType;
use crunch_testkit::{realistic_weights, Rng};
use std::time::Instant;

fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// As in `gptq_7b.rs`: shared factors plus noise, log-normal column scales, outlier channels.
fn activations(n_tok: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let k = 32;
    let mix: Vec<f32> = (0..k * n).map(|_| rng.normal() * 0.2).collect();
    let scale: Vec<f32> = (0..n).map(|c| (rng.normal() * 0.7).exp() * if c % 997 == 0 { 20.0 } else { 1.0 }).collect();
    let mut x = vec![0f32; n_tok * n];
    for row in x.chunks_exact_mut(n) {
        let f: Vec<f32> = (0..k).map(|_| rng.normal()).collect();
        for (c, v) in row.iter_mut().enumerate() {
            let mut s = 0.5 * rng.normal();
            for (i, fi) in f.iter().enumerate() {
                s += fi * mix[i * n + c];
            }
            *v = s * scale[c];
        }
    }
    x
}

fn secs<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed().as_secs_f64())
}

#[test]
#[ignore = "slow: a 7B-shaped block, five methods (several minutes on 2 cores)"]
fn sparsegpt_on_a_7b_shaped_block() {
    let (e, ff, n_tok) = (4096usize, 11008usize, 2048usize);
    let half = Sparsity::Fraction(0.5);
    let two_four = Sparsity::NM { n: 2, m: 4 };
    let o = GptqOptions::default();
    let mut total = [0f64; 5];
    for (names, n_in, n_out) in [
        (&["attn_q", "attn_k", "attn_v", "attn_output"][..], e, e),
        (&["ffn_gate", "ffn_up"][..], e, ff),
        (&["ffn_down"][..], ff, e),
    ] {
        let x = activations(n_tok, n_in, n_in as u64);
        let mut h = vec![0f32; n_in * n_in];
        let (_, h_secs) = secs(|| linalg::add_xtx(&mut h, &x, n_in));
        let col_sq = prune::column_sq_sums(&x, n_in);
        drop(x);
        for (i, name) in names.iter().enumerate() {
            let w = realistic_weights(n_out, n_in, i as u64 + 1);
            let (r, s_half) = secs(|| prune::sparsegpt(name, &w, n_in, &h, half, None, o).unwrap());
            assert_eq!(r.zeros, w.len() / 2);
            drop(r);
            let (_, s_24) = secs(|| prune::sparsegpt(name, &w, n_in, &h, two_four, None, o).unwrap());
            let (_, s_joint) =
                secs(|| prune::sparsegpt(name, &w, n_in, &h, half, Some((GgmlType::Q4_K, None)), o).unwrap());
            let (_, s_gptq) = secs(|| gptq::quantize(name, &w, n_in, &h, GgmlType::Q4_K, None, o).unwrap());
            let mut ww = w.clone();
            let (_, s_wanda) = secs(|| prune::wanda(name, &mut ww, n_in, &col_sq, half).unwrap());
            for (t, s) in total.iter_mut().zip([s_half, s_24, s_joint, s_gptq, s_wanda]) {
                *t += s;
            }
            eprintln!(
                "{name:12} {n_out:5} x {n_in:5}: SparseGPT 50% {s_half:6.1} s, 2:4 {s_24:6.1} s, 50%+Q4_K {s_joint:6.1} s, \
                 GPTQ Q4_K {s_gptq:6.1} s, Wanda 50% {s_wanda:5.2} s (H from {n_tok} tokens {h_secs:.1} s), peak RSS {:.0} MiB",
                peak_rss_mib()
            );
        }
    }
    eprintln!(
        "one block: SparseGPT 50% {:.1} s, 2:4 {:.1} s, 50%+Q4_K {:.1} s, GPTQ Q4_K {:.1} s, Wanda {:.2} s; peak RSS {:.0} MiB ({} threads)",
        total[0],
        total[1],
        total[2],
        total[3],
        total[4],
        peak_rss_mib(),
        rayon::current_num_threads()
    );
}
