//! Time and memory of GPTQ on one block shaped like a 7B Llama's (q, k, v, o: 4096 × 4096;
//! gate, up: 11008 × 4096; down: 4096 × 11008), with weights like a trained model's and inputs
//! with the correlated, uneven columns of real activations. Slow: run it on purpose with
//!
//!   cargo test --release -p crunch-calib --test gptq_7b -- --ignored --nocapture
//!
//! It prints the per-block time (×32 blocks for the whole model) and the peak resident memory.

use crunch_calib::gptq::{self, GptqOptions};
use crunch_calib::linalg;
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

/// `n_tok` rows of `n` columns: a few shared factors plus noise, log-normal column scales and a
/// handful of outlier channels, as transformer activations have.
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

#[test]
#[ignore = "slow: a 7B-shaped block (about a minute per block on 2 cores)"]
fn gptq_on_a_7b_shaped_block() {
    let (e, ff, n_tok) = (4096usize, 11008usize, 2048usize);
    let ty = GgmlType::Q4_K;
    let t_all = Instant::now();
    let mut gptq_secs = 0.0;
    for (names, n_in, n_out) in [
        (&["attn_q", "attn_k", "attn_v", "attn_output"][..], e, e),
        (&["ffn_gate", "ffn_up"][..], e, ff),
        (&["ffn_down"][..], ff, e),
    ] {
        let t = Instant::now();
        let x = activations(n_tok, n_in, n_in as u64);
        let mut h = vec![0f32; n_in * n_in];
        linalg::add_xtx(&mut h, &x, n_in);
        drop(x);
        let h_secs = t.elapsed().as_secs_f64();
        for (i, name) in names.iter().enumerate() {
            let w = realistic_weights(n_out, n_in, i as u64 + 1);
            let t = Instant::now();
            let r = gptq::quantize(name, &w, n_in, &h, ty, None, GptqOptions::default()).unwrap();
            let s = t.elapsed().as_secs_f64();
            gptq_secs += s;
            eprintln!(
                "{name:12} {n_out:5} x {n_in:5}: GPTQ {s:6.1} s (H from {n_tok} tokens {h_secs:.1} s), damp {}, peak RSS {:.0} MiB",
                r.damp,
                peak_rss_mib()
            );
        }
    }
    eprintln!(
        "one block: GPTQ {gptq_secs:.1} s, total {:.1} s; 32 blocks ≈ {:.1} min; peak RSS {:.0} MiB ({} threads)",
        t_all.elapsed().as_secs_f64(),
        gptq_secs * 32.0 / 60.0,
        peak_rss_mib(),
        rayon::current_num_threads()
    );
}
