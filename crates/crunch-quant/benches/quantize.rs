//! Single-thread quantization throughput on realistic 4096-wide rows.
//!
//! `cargo bench -p crunch-quant --bench quantize [-- FILTER]` prints, per type, the MB/s of f16 input
//! (2 bytes per weight, as a model file stores it) converted by one thread, including the f16 -> f32
//! conversion that `crunch quantize` does first. Time is the thread's CPU time (Linux
//! `/proc/thread-self/schedstat`, wall time elsewhere), so the figure holds on a busy machine; the
//! counterpart for llama.cpp is `scripts/bench_quantize.py --kernels`.

use crunch_core::GgmlType;
use half::f16;
use std::time::Instant;

/// Seconds of CPU time this thread has used (wall-clock seconds since `start` where the kernel
/// does not say).
fn thread_seconds(start: Instant) -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()))
        .map_or_else(|| start.elapsed().as_secs_f64(), |ns| ns as f64 * 1e-9)
}

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let cols = 4096;
    let rows = 512;
    let src = crunch_testkit::realistic_weights(rows, cols, 7);
    let f16_bytes: Vec<u8> = src.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
    let f16k = crunch_quant::kernels(GgmlType::F16).expect("f16");
    let mut f32_row = vec![0f32; cols];
    let types = [
        GgmlType::F16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q3_K,
        GgmlType::Q2_K,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
    ];
    for ty in types {
        let name = ty.name();
        if !filter.is_empty() && !filter.iter().any(|f| f.eq_ignore_ascii_case(name)) {
            continue;
        }
        let k = crunch_quant::kernels(ty).expect("kernels");
        let row_bytes = ty.row_size(cols).expect("row size");
        let mut out = vec![0u8; row_bytes];
        // whole passes until at least half a CPU second has run (the kernel's CPU clock ticks coarsely)
        let origin = Instant::now();
        let start = thread_seconds(origin);
        let mut passes = 0u32;
        while passes == 0 || thread_seconds(origin) - start < 0.5 {
            for r in 0..rows {
                (f16k.dequantize)(&f16_bytes[r * cols * 2..(r + 1) * cols * 2], &mut f32_row);
                if ty != GgmlType::F16 {
                    (k.quantize)(&f32_row, None, &mut out);
                }
                std::hint::black_box(&out);
            }
            passes += 1;
        }
        let seconds = (thread_seconds(origin) - start) / passes as f64;
        let mb = (rows * cols * 2) as f64 / 1e6;
        println!("{name:>7}: {:8.1} MB/s of f16 input (crunch, 1 thread, per CPU second)", mb / seconds);
    }
}
