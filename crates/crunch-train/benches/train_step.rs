//! Training speed against inference speed on SmolLM2 (issue 16's figure of merit): tokens per
//! second of a full LoRA training step (rank 16 on all seven linears of every block: forward with
//! tape, next-token cross-entropy, backward, AdamW) beside crunch-model's forward-only
//! `LlamaModel` on the same 256 tokens (`MatmulMode::Native` on both sides), their ratio, and the
//! process's peak resident set size (`VmHWM`: the memory-mapped quantized model plus activations).
//!
//! `cargo bench -p crunch-train --bench train_step [-- ROUNDS]` (default 5 rounds). Each round
//! times one forward and one training step, alternating, so that load from other processes on a
//! shared machine falls on both; the figures are the medians over the rounds. The text is the
//! first tokens of `../shared/data/wikitext2-test-dev.txt` when present (else a fixed sentence,
//! repeated). `CRUNCH_TRAIN_BENCH_CTX` overrides the context of 256 tokens.

use std::sync::Arc;
use std::time::Instant;

use crunch_core::gguf::GgufFile;
use crunch_model::matmul::MatmulMode;
use crunch_model::tokenizer::Tokenizer;
use crunch_model::LlamaModel;
use crunch_train::{Chunk, GgufModel, TrainConfig, Trainer};

/// Used when the wikitext file is not there.
const FALLBACK_TEXT: &str = "The quick brown fox jumps over the lazy dog. In the beginning the Universe was created. \
                             This has made a lot of people very angry and been widely regarded as a bad move.";

/// Peak resident set size of this process (`VmHWM`), in MiB, where /proc is readable.
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

fn seconds(f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5).max(1);
    let n: usize = std::env::var("CRUNCH_TRAIN_BENCH_CTX").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let path = crunch_testkit::smollm2_gguf();
    let file = Arc::new(GgufFile::open(&path).expect("open SmolLM2"));
    let tokenizer = Tokenizer::from_gguf(&file).expect("tokenizer");
    let wiki = crunch_testkit::repo_root().join("../shared/data/wikitext2-test-dev.txt");
    let (source, text) = match std::fs::read_to_string(&wiki) {
        // A few tens of KiB is plenty for 256 tokens and keeps the tokenizer quick.
        Ok(t) => ("wikitext2-test-dev", t.chars().take(64 * 1024).collect::<String>()),
        Err(_) => ("a fixed sentence", FALLBACK_TEXT.to_string()),
    };
    let encoded = tokenizer.encode(&text, false).expect("tokenize");
    assert!(!encoded.is_empty(), "no tokens");
    let toks: Vec<u32> = encoded.iter().copied().cycle().take(n).collect();

    let mut llama = LlamaModel::from_gguf(file.clone()).expect("LlamaModel");
    llama.mode = MatmulMode::Native;
    let mut model = GgufModel::from_gguf(file, MatmulMode::Native).expect("GgufModel");
    model.init_lora(16, 2.0, 1);
    let chunk = Chunk::next_token(toks.clone());
    let cfg = TrainConfig { steps: u64::MAX, ..TrainConfig::default() };
    let mut trainer = Trainer::new(cfg, &mut model);

    println!(
        "SmolLM2 ({}), {n} tokens of {source}, LoRA rank 16 on all seven linears, {} threads, {rounds} rounds",
        path.file_name().and_then(|s| s.to_str()).unwrap_or("?"),
        rayon::current_num_threads()
    );
    // Warm-up: page the weights in, grow the allocator's arenas.
    llama.forward(&toks, &mut llama.new_cache(n)).expect("forward");
    trainer.step(&mut model, &[vec![&chunk]], &|| false).unwrap();

    let (mut fwd, mut train) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let tf = seconds(&mut || {
            llama.forward(&toks, &mut llama.new_cache(n)).expect("forward");
        });
        let mut loss = 0.0;
        let tt = seconds(&mut || {
            loss = trainer.step(&mut model, &[vec![&chunk]], &|| false).unwrap().loss;
        });
        println!(
            "round {r}: forward {:.1} tok/s, training step {:.1} tok/s (loss {loss:.4})",
            n as f64 / tf,
            n as f64 / tt
        );
        fwd.push(tf);
        train.push(tt);
    }
    let (tf, tt) = (median(fwd), median(train));
    println!("forward (LlamaModel, Native): {:.1} tok/s (median {:.3} s)", n as f64 / tf, tf);
    println!("training step (LoRA r16, AdamW): {:.1} tok/s (median {:.3} s)", n as f64 / tt, tt);
    println!("ratio train / forward: {:.3}", tf / tt);
    match peak_rss_mib() {
        Some(m) => println!("peak RSS (VmHWM): {m:.0} MiB"),
        None => println!("peak RSS: /proc/self/status not readable"),
    }
}
