//! Single-thread prompt-processing matrix products (`crunch_quant::tiled`) on SmolLM2-shaped and
//! 7B-shaped weights, per type, as GMAC/s (multiply-adds per second).
//!
//! `cargo bench -p crunch-quant --bench matmul [-- FILTER]`. One rayon thread, so the figure is one
//! core's throughput; wall time of the best of several passes (a pass is a few milliseconds, too
//! short for the CPU clock's resolution). The same shapes through llama.cpp are measured end to end by `scripts/bench_eval.py`.
//!
//! A second table times one token (generation): `vec_dot` per row against `crunch_quant::gemv` on
//! the repacked weight, as GB/s of the GGUF weight bytes and their ratio (same run), one thread,
//! SmolLM2's shapes, its 49152-row output layer and a 4096 x 4096 square.

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
    gemv_table(&pool, &filter);
}

/// One token: `vec_dot` per row vs the packed gemv, GB/s of GGUF weight bytes.
fn gemv_table(pool: &rayon::ThreadPool, filter: &[String]) {
    let types = crunch_quant::gemv::PACKED_TYPES;
    // SmolLM2's FFN up and down and output layer, a 7B-shaped square (k-quants and IQ4_XS only
    // where the rows are a multiple of 256)
    let shapes = [(576, 1536), (1536, 576), (576, 49152), (4096, 4096)];
    println!();
    println!("| type | n_in x n_out | vec_dot GB/s | gemv GB/s | gemv / vec_dot |");
    println!("|---|---|---:|---:|---:|");
    for ty in types {
        if !filter.is_empty() && !filter.iter().any(|f| f.eq_ignore_ascii_case(ty.name())) {
            continue;
        }
        for (n_in, n_out) in shapes {
            if n_in % ty.block_size() != 0 {
                continue;
            }
            let k = crunch_quant::kernels(ty).expect("kernels");
            let w = crunch_testkit::realistic_weights(n_out, n_in, 3);
            let x = crunch_testkit::realistic_weights(1, n_in, 4);
            let rb = ty.row_size(n_in).expect("row size");
            let mut data = vec![0u8; rb * n_out];
            crunch_quant::quantize_rows(ty, &w, n_in, None, &mut data).expect("quantize");
            let packed = crunch_quant::gemv::Packed::new(ty, &data, n_in, n_out).expect("packed");
            let mut y = vec![0f32; n_out];
            let dot = k.vec_dot.expect("vec_dot");
            let time = |f: &mut (dyn FnMut() + Send)| {
                let (mut best, mut total) = (f64::INFINITY, 0.0);
                while total < 0.5 {
                    let dt = pool.install(|| {
                        let t0 = Instant::now();
                        f();
                        t0.elapsed().as_secs_f64()
                    });
                    total += dt;
                    best = best.min(dt);
                }
                data.len() as f64 / best * 1e-9
            };
            let per_row = time(&mut || {
                let mut xq = vec![0u8; k.dot_type.row_size(n_in).expect("row size")];
                (crunch_quant::kernels(k.dot_type).expect("dot type").quantize)(&x, None, &mut xq);
                for (r, o) in y.iter_mut().enumerate() {
                    *o = dot(n_in, &data[r * rb..(r + 1) * rb], &xq);
                }
            });
            let mut y2 = vec![0f32; n_out];
            let gemv = time(&mut || assert!(packed.gemv(&x, &mut y2)));
            println!("| {} | {n_in} x {n_out} | {per_row:.1} | {gemv:.1} | {:.2} |", ty.name(), gemv / per_row);
        }
    }
}
