//! `crunch run`: generate text from a prompt.

use anyhow::{Context, Result};
use crunch::job::{GenerateJob, Job, Outcome};
use crunch::progress::{NoProgress, Progress};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

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
    #[command(flatten)]
    lora: super::LoraArgs,
}

/// Prints each generated piece as it comes.
struct Stream;

impl Progress for Stream {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64, piece: &str) {
        print!("{piece}");
        let _ = std::io::stdout().flush();
    }
    fn finish(&self, _: &str) {}
}

pub fn run(a: RunArgs) -> Result<()> {
    let job = Job::Generate(GenerateJob {
        model: a.model.clone(),
        prompt: a.prompt.clone(),
        n_predict: a.n_predict,
        temperature: a.temp,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        ignore_eos: a.ignore_eos,
        exact: a.exact,
        lora: a.lora.lora.clone(),
    });
    let progress: Arc<dyn Progress> = if a.json { Arc::new(NoProgress) } else { Arc::new(Stream) };
    if !a.json {
        print!("{}", a.prompt);
        let _ = std::io::stdout().flush();
    }
    let ctx = super::job_ctx(a.threads, progress, None)?;
    let Outcome::Generate(o) =
        super::run_job(&job, &ctx).with_context(|| format!("generating with {}", a.model.display()))?
    else {
        unreachable!("a generate job has a generate outcome")
    };
    let r = &o.result;
    if a.json {
        super::print_json(r)?;
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
