//! SeedLM encoding speed: time per block and the share of seed fits the lower bound skips.
//!
//! `cargo bench -p crunch-quant --bench seedlm` encodes rows of realistic weights shaped like a
//! Llama-2-7B block's matrices (rows of 4096 and of 11008) with the 4-bit and 3-bit
//! configurations, with and without an importance vector, on all cores, and prints microseconds
//! per SeedLM block (wall time, all cores), the share of (block, seed) pairs the bound skipped,
//! and what that makes one 7B transformer block (4·4096² + 3·4096·11008 weights) take. The
//! per-block cost does not depend on the matrix shape (every block is searched against every
//! seed), so the sampled rows stand for the whole block. A whole model: `crunch seedlm encode`.

use crunch_quant::seedlm::{encode_tensor, Config, CONFIG_3BIT, CONFIG_4BIT};
use std::time::Instant;

fn main() {
    let threads = rayon::current_num_threads();
    let weights_7b_block: f64 = 4.0 * 4096.0 * 4096.0 + 3.0 * 4096.0 * 11008.0;
    println!("SeedLM encoding, {threads} threads; 7B-shaped rows (4096 and 11008 wide)");
    println!(
        "{:<6} {:<9} {:>10} {:>12} {:>14} {:>18}",
        "config", "weighted", "blocks", "us/block", "bound skipped", "s per 7B block"
    );
    for cfg in [CONFIG_4BIT, CONFIG_3BIT] {
        for weighted in [false, true] {
            run(cfg, weighted, weights_7b_block);
        }
    }
}

fn run(cfg: Config, weighted: bool, weights_7b_block: f64) {
    // A weighted fit builds one table per column position (amortized over the rows), so it
    // needs as many rows as a real matrix has to be timed fairly: the 4096-wide sample uses 1024.
    let shapes: &[(usize, usize)] = if weighted { &[(1024, 4096)] } else { &[(48, 4096), (24, 11008)] };
    let (mut blocks, mut fitted, mut seconds) = (0u64, 0u64, 0f64);
    for (k, &(rows, cols)) in shapes.iter().enumerate() {
        // 3-bit blocks of 12 do not divide 4096 or 11008: the nearest whole-block width below.
        let cols = cols / cfg.c * cfg.c;
        let w = crunch_testkit::realistic_weights(rows, cols, 11 + k as u64);
        let imp = weighted.then(|| crunch_testkit::realistic_importance(cols, 5));
        let start = Instant::now();
        let (_, _, stats) = encode_tensor(&w, cols, imp.as_deref(), cfg, &|_| true).expect("not stopped");
        seconds += start.elapsed().as_secs_f64();
        blocks += stats.blocks;
        fitted += stats.fitted;
    }
    let us = seconds * 1e6 / blocks as f64;
    let skipped = 1.0 - fitted as f64 / (blocks as f64 * crunch_quant::seedlm::N_SEEDS as f64);
    let per_7b = weights_7b_block / cfg.c as f64 * us * 1e-6;
    println!(
        "{:<6} {:<9} {:>10} {:>12.1} {:>13.4}% {:>18.0}",
        cfg.name(),
        if weighted { "imatrix" } else { "-" },
        blocks,
        us,
        100.0 * skipped,
        per_7b
    );
}
