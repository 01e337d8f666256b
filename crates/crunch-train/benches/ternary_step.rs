//! Ternary fine-tuning speed on SmolLM2-135M (F32): seconds per training step of a
//! [`TernaryModel`] (every block linear an f32 latent, forward and backward through the absmean
//! ternarization, top-32 distillation towards the dense model, AdamW on the ~106M latent weights,
//! the effective weights recomputed after the update) for one chunk of 128 and of 256 tokens,
//! with the step's parts timed alone (forward + backward, recomputing the effective weights), and
//! the process's peak resident set size (`VmHWM`).
//!
//! `cargo bench -p crunch-train --bench ternary_step [-- ROUNDS]` (default 3 rounds; the figures
//! are medians). Needs `$CRUNCH_CACHE/models/smollm2-f32.gguf`. The text is the start of
//! `../shared/data/wikitext2-test-dev.txt` when present (else a fixed sentence, repeated).

use std::sync::Arc;
use std::time::Instant;

use crunch_core::gguf::GgufFile;
use crunch_model::kld::top_k_logprobs;
use crunch_model::matmul::MatmulMode;
use crunch_model::tokenizer::Tokenizer;
use crunch_train::{Blend, Chunk, ChunkTarget, GgufModel, LoraModel, TernaryModel, TopKRows, TrainConfig, Trainer};

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
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(3).max(1);
    let path = crunch_testkit::cache_dir().join("models/smollm2-f32.gguf");
    let file = Arc::new(GgufFile::open(&path).expect("open the F32 SmolLM2"));
    let tokenizer = Tokenizer::from_gguf(&file).expect("tokenizer");
    let wiki = crunch_testkit::repo_root().join("../shared/data/wikitext2-test-dev.txt");
    let (source, text) = match std::fs::read_to_string(&wiki) {
        Ok(t) => ("wikitext2-test-dev", t.chars().take(64 * 1024).collect::<String>()),
        Err(_) => ("a fixed sentence", FALLBACK_TEXT.to_string()),
    };
    let encoded = tokenizer.encode(&text, false).expect("tokenize");
    let sizes = [128usize, 256];

    // Targets: the dense model's top-32 log-probabilities, computed before the ternary model
    // exists (so that its memory is not counted twice).
    let base = GgufModel::from_gguf(file.clone(), MatmulMode::Native).expect("GgufModel");
    let n_vocab = base.config.n_vocab;
    let chunks: Vec<Chunk<f32>> = sizes
        .iter()
        .map(|&n| {
            let toks: Vec<u32> = encoded.iter().copied().cycle().take(n).collect();
            let logits = base.forward(&toks).expect("forward").0;
            let mut top = TopKRows { k: 32, ids: Vec::new(), logp: Vec::new(), log_rest: Vec::new() };
            for row in logits.chunks(n_vocab) {
                let (ids, logp, rest) = top_k_logprobs(row, 32);
                top.ids.extend(ids);
                top.logp.extend(logp);
                top.log_rest.push(rest);
            }
            Chunk { tokens: toks, target: ChunkTarget::TopK(top) }
        })
        .collect();
    drop(base);

    let t = Instant::now();
    let mut model = TernaryModel::from_gguf(file, MatmulMode::Native, Blend { warmup: 0 }).expect("TernaryModel");
    let build = t.elapsed().as_secs_f64();
    let n_params: usize = model.weights().map(|(_, _, w)| w.latent.len()).sum();
    println!(
        "SmolLM2 F32 ternary training: {:.1}M latent weights, {} threads, text {source}, top-32 distillation, \
         {rounds} rounds; model built in {build:.2} s",
        n_params as f64 / 1e6,
        rayon::current_num_threads()
    );
    let cfg = TrainConfig { steps: u64::MAX, ..TrainConfig::default() };
    let mut trainer = Trainer::new(cfg, &mut model);
    for chunk in &chunks {
        let n = chunk.tokens.len();
        // Warm-up: the moments and gradient buffers allocated, pages faulted in.
        trainer.step(&mut model, &[vec![chunk]], &|| false).unwrap();
        let mut steps = Vec::new();
        for r in 0..rounds {
            let mut loss = 0.0;
            let s = seconds(&mut || loss = trainer.step(&mut model, &[vec![chunk]], &|| false).unwrap().loss);
            println!("  {n} tokens, round {r}: step {s:.3} s (KL {loss:.4})");
            steps.push(s);
        }
        let fb = median(
            (0..rounds)
                .map(|_| seconds(&mut || drop(model.loss_and_grad(&chunk.tokens, chunk.target()).unwrap())))
                .collect(),
        );
        let refresh = median((0..rounds).map(|_| seconds(&mut || model.refresh())).collect());
        let step = median(steps);
        println!(
            "{n} tokens: {step:.3} s per step ({:.1} tok/s); forward + backward {fb:.3} s, \
             effective weights recomputed {refresh:.3} s, the rest (gradient sum, clipping, AdamW) {:.3} s",
            n as f64 / step,
            step - fb - refresh
        );
    }
    match peak_rss_mib() {
        Some(m) => println!("peak RSS (VmHWM): {m:.0} MiB"),
        None => println!("peak RSS: /proc/self/status not readable"),
    }
}
