//! Perplexity of a GGUF Llama-family model on a text file, as llama-perplexity computes it.
//!
//! ```text
//! cargo run --release -p crunch-model --example perplexity -- MODEL.gguf TEXT.txt \
//!     [--ctx 512] [--chunks N] [--exact] [--json]
//! ```
//!
//! Prints llama.cpp's running `[i]ppl,` line and `Final estimate: PPL = … +/- …`; `--json` adds a
//! last line with the numbers (used by scripts/compare_perplexity.py). `--exact` dequantizes the
//! weights instead of quantizing the activations.

use std::io::Write;
use std::time::Instant;

use crunch_model::tokenizer::Tokenizer;
use crunch_model::{perplexity, LlamaModel, MatmulMode, PerplexityOptions};

fn main() {
    if let Err(e) = run() {
        eprintln!("perplexity: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut pos = Vec::new();
    let mut opts = PerplexityOptions::default();
    let mut exact = false;
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ctx" | "-c" => opts.n_ctx = args.next().ok_or("--ctx needs a value")?.parse()?,
            "--chunks" => opts.n_chunks = Some(args.next().ok_or("--chunks needs a value")?.parse()?),
            "--exact" => exact = true,
            "--json" => json = true,
            s if s.starts_with("--") => return Err(format!("unknown option {s}").into()),
            _ => pos.push(a),
        }
    }
    let [model_path, text_path] = pos.as_slice() else {
        return Err("usage: perplexity MODEL.gguf TEXT [--ctx N] [--chunks N] [--exact] [--json]".into());
    };
    let t0 = Instant::now();
    let mut model = LlamaModel::open(model_path)?;
    if exact {
        model.mode = MatmulMode::Exact;
    }
    let tok = Tokenizer::from_gguf(model.file())?;
    let text = std::fs::read_to_string(text_path)?;
    eprintln!("loaded {} ({:?}) in {:.2}s", model_path, model.config.arch, t0.elapsed().as_secs_f64());
    let res = perplexity(&model, &tok, &text, opts, |c| {
        eprint!("[{}]{:.4},", c.index + 1, c.ppl);
        let _ = std::io::stderr().flush();
    })?;
    eprintln!();
    let evaluated = res.chunks.len() * res.n_ctx;
    let tps = evaluated as f64 / res.seconds;
    println!("{}", res.final_estimate());
    println!(
        "{} tokens in text, {} chunks of {}, {} scored, {:.2}s ({:.1} tokens/s prompt processing)",
        res.n_tokens,
        res.chunks.len(),
        res.n_ctx,
        res.count,
        res.seconds,
        tps
    );
    if json {
        let v = serde_json::json!({
            "ppl": res.ppl,
            "ppl_err": res.ppl_err,
            "nll": res.nll,
            "count": res.count,
            "n_tokens": res.n_tokens,
            "chunk_nll": res.chunks.iter().map(|c| c.nll / c.count as f64).collect::<Vec<_>>(),
            "tokens_per_second": tps,
        });
        println!("{v}");
    }
    Ok(())
}
