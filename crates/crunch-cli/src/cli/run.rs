//! `crunch run`: generate text from a prompt.

use anyhow::{Context, Result};
use crunch::eval::{self, RunOptions};
use crunch_model::generate::SamplerOptions;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct RunArgs {
    /// GGUF model.
    model: PathBuf,
    /// The prompt (no chat template is applied).
    #[arg(long, short = 'p')]
    prompt: String,
    /// Tokens to generate at most.
    #[arg(long, short = 'n', default_value_t = 128)]
    n_predict: usize,
    /// Sampling temperature; 0 is greedy (always the most likely token).
    #[arg(long, default_value_t = 0.0)]
    temp: f32,
    /// Sample only from the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Sample only from the most likely tokens whose probabilities add up to P.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Do not stop at end-of-generation tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Worker threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    /// Dequantize weights instead of quantizing activations.
    #[arg(long)]
    exact: bool,
    /// Print the result (token ids, text, speed) as JSON instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: RunArgs) -> Result<()> {
    super::set_threads(a.threads)?;
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        anyhow::bail!("--top-p {} must be in (0, 1]", a.top_p);
    }
    let opts = RunOptions {
        n_predict: a.n_predict,
        sampler: SamplerOptions { temperature: a.temp, top_k: a.top_k, top_p: a.top_p, seed: a.seed },
        exact: a.exact,
        ignore_eos: a.ignore_eos,
    };
    let cancel = super::ctrl_c_cancel();
    let mut out = std::io::stdout();
    if !a.json {
        print!("{}", a.prompt);
        let _ = out.flush();
    }
    let json = a.json;
    let r = eval::run(&a.model, &a.prompt, &opts, &cancel, &mut |piece| {
        if !json {
            print!("{piece}");
            let _ = std::io::stdout().flush();
        }
        true
    })
    .with_context(|| format!("generating with {}", a.model.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!();
        eprintln!(
            "prompt: {} tokens, {:.1} tokens/s; generated: {} tokens, {:.1} tokens/s ({:?})",
            r.prompt_tokens.len(),
            r.prompt_tps,
            r.tokens.len(),
            r.gen_tps,
            r.stop
        );
    }
    Ok(())
}
