//! Single-thread prompt-processing matrix products (`crunch_quant::tiled`) on SmolLM2-shaped and
//! 7B-shaped weights, per type, as GMAC/s (multiply-adds per second).
//!
//! `cargo bench -p crunch-quant --bench matmul [-- FILTER]`. One rayon thread, so the figure is one
//! core's throughput; wall time of the best of several passes (a pass is a few milliseconds, too
//! short for the CPU clock's resolution). The same shapes through llama.cpp are measured end to end by `scripts/bench_eval.py`.

use crunch_core::GgmlType;
use std::time::Instant;

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("thread pool");
    let n_tokens = 512;
    // (n_in, n_out): SmolLM2's FFN up and down, a 7B attention projection
    let shapes = [(576, 1536), (1536, 576), (4096, 1024)];
    let types = [
        GgmlType::F32,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::IQ4_NL,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q3_K,
        GgmlType::Q2_K,
    ];
    println!("| type | n_in x n_out | tokens | GMAC/s (1 thread) |");
    println!("|---|---|---:|---:|");
    for ty in types {
        if !filter.is_empty() && !filter.iter().any(|f| f.eq_ignore_ascii_case(ty.name())) {
            continue;
        }
        for (n_in, n_out) in shapes {
            if ty.block_size() > 32 && n_in % ty.block_size() != 0 {
                continue;
            }
            let w = crunch_testkit::realistic_weights(n_out, n_in, 3);
            let x = crunch_testkit::realistic_weights(n_tokens, n_in, 4);
            let rb = ty.row_size(n_in).expect("row size");
            let mut data = vec![0u8; rb * n_out];
            crunch_quant::quantize_rows(ty, &w, n_in, None, &mut data).expect("quantize");
            let mut y = vec![0f32; n_tokens * n_out];
            let mut best = f64::INFINITY;
            let mut total = 0.0;
            while total < 1.0 {
                // timed on the pool's thread, where the work runs
                let dt = pool.install(|| {
                    let t0 = Instant::now();
                    if ty == GgmlType::F32 {
                        crunch_quant::tiled::matmul_f32_panels(n_out, n_in, &x, n_tokens, &mut y, 32, &|r0, buf| {
                            buf.copy_from_slice(&w[r0 * n_in..r0 * n_in + buf.len()])
                        });
                    } else {
                        assert!(crunch_quant::tiled::matmul_quant(ty, &data, n_in, n_out, &x, n_tokens, &mut y));
                    }
                    t0.elapsed().as_secs_f64()
                });
                total += dt;
                best = best.min(dt);
            }
            let macs = (n_in * n_out * n_tokens) as f64;
            println!("| {} | {n_in} x {n_out} | {n_tokens} | {:.1} |", ty.name(), macs / best * 1e-9);
        }
    }
}
