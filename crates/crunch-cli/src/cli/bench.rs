//! `crunch bench`: speed and memory, as a table or JSON.

use anyhow::{Context, Result};
use crunch::inspect::human_bytes;
use crunch::job::{BenchJob, Job, Outcome};
use crunch::progress::NoProgress;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// GGUF model.
    model: PathBuf,
    /// Prompt tokens processed in one batch (0 skips).
    #[arg(long, default_value_t = 512)]
    pp: usize,
    /// Tokens generated one at a time (0 skips).
    #[arg(long, default_value_t = 128)]
    tg: usize,
    /// Repetitions of each test.
    #[arg(long, short = 'r', default_value_t = 3)]
    reps: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    /// Dequantize weights instead of quantizing activations.
    #[arg(long)]
    exact: bool,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    lora: super::LoraArgs,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let job = Job::Bench(BenchJob {
        model: a.model.clone(),
        pp: a.pp,
        tg: a.tg,
        reps: a.reps,
        exact: a.exact,
        lora: a.lora.lora.clone(),
    });
    let ctx = super::job_ctx(a.threads, std::sync::Arc::new(NoProgress), None)?;
    let Outcome::Bench(o) =
        super::run_job(&job, &ctx).with_context(|| format!("benchmarking {}", a.model.display()))?
    else {
        unreachable!("a bench job has a bench outcome")
    };
    let r = &o.result;
    if a.json {
        return super::print_json(r);
    }
    let name = a.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    println!(
        "| {:<40} | {:>10} | {:>8} | {:<6} | {:>7} | {:>7} | {:>18} |",
        "model", "size", "params", "type", "threads", "test", "t/s"
    );
    println!("|{:-<42}|{:->12}|{:->10}|{:-<8}|{:->9}|{:->9}|{:->20}|", "", "", "", "", "", "", "");
    for s in &r.results {
        println!(
            "| {:<40} | {:>10} | {:>7.1}M | {:<6} | {:>7} | {:>7} | {:>9.2} ± {:>6.2} |",
            name,
            human_bytes(r.file_bytes),
            r.n_params as f64 / 1e6,
            r.weight_type,
            r.threads,
            s.test,
            s.tokens_per_second,
            s.stddev
        );
    }
    if let Some(b) = r.peak_rss_bytes {
        println!(
            "peak RSS {} (model file {}), load {:.2} s",
            human_bytes(b),
            human_bytes(r.file_bytes),
            r.load_seconds
        );
    }
    Ok(())
}
