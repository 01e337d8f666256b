//! `crunch lowrank` and `crunch merge`.

use super::progress::TermProgress;
use anyhow::{Context, Result};
use crunch::inspect::human_bytes;
use crunch::job::{Job, LowrankJob, MergeJob, Outcome};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct LowrankArgs {
    /// The reference model (GGUF) the quantized one was made from.
    base: PathBuf,
    /// The quantized model (GGUF) whose error is corrected.
    quant: PathBuf,
    /// Output LoRA adapter (GGUF; load it with llama.cpp's --lora or crunch's --lora).
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// The same rank for every tensor.
    #[arg(long, conflicts_with = "budget", required_unless_present = "budget")]
    rank: Option<usize>,
    /// Bytes of adapter data (64MiB, 5MB, 5000000), spread over the tensors by the relative output
    /// error each rank removes per byte.
    #[arg(long, value_name = "BYTES")]
    budget: Option<String>,
    /// Calibration text: the SVD is whitened by each layer's input activations (EoRA/QERA);
    /// without it, the plain SVD of the error (random:N[:SEED] for random vocabulary tokens).
    #[arg(long, value_name = "FILE")]
    text: Option<String>,
    /// Only tensors whose GGUF name matches this regular expression (default: every linear
    /// weight of the blocks).
    #[arg(long, value_name = "REGEX")]
    tensors: Option<String>,
    /// The largest rank --budget gives one tensor.
    #[arg(long, default_value_t = 256)]
    max_rank: usize,
    /// Type of the adapter's tensors: f32, f16, bf16 or q8_0.
    #[arg(long, default_value = "f16")]
    adapter_type: String,
    /// Calibration context (tokens per chunk).
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Calibration chunks.
    #[arg(long, default_value_t = 32)]
    chunks: usize,
    /// Skip this many chunks of the text first.
    #[arg(long, default_value_t = 0)]
    skip_chunks: usize,
    /// Dampening of the activations' second moment, relative to its mean diagonal.
    #[arg(long, default_value_t = 0.01)]
    damp: f64,
    /// Worker threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

impl LowrankArgs {
    pub fn job(&self) -> Job {
        Job::Lowrank(LowrankJob {
            base: self.base.clone(),
            quant: self.quant.clone(),
            output: self.output.clone(),
            rank: self.rank,
            budget: self.budget.clone(),
            text: self.text.as_ref().map(PathBuf::from),
            tensors: self.tensors.clone(),
            max_rank: self.max_rank,
            adapter_type: self.adapter_type.clone(),
            ctx: self.ctx,
            chunks: self.chunks,
            skip_chunks: self.skip_chunks,
            damp: self.damp,
        })
    }
}

/// Run `job` (progress on the terminal unless `quiet` or `json`); `None` when the outcome was
/// printed as JSON or nothing is to be printed.
fn run(job: &Job, threads: usize, quiet: bool, json: bool, what: String) -> Result<Option<Outcome>> {
    let ctx = super::job_ctx(threads, TermProgress::shared(quiet || json), None)?;
    let o = super::run_job(job, &ctx).context(what)?;
    if json {
        match &o {
            Outcome::Lowrank(x) => super::print_json(x)?,
            Outcome::Merge(x) => super::print_json(x)?,
            other => super::print_json(other)?,
        }
    }
    Ok((!quiet && !json).then_some(o))
}

pub fn lowrank(a: LowrankArgs) -> Result<()> {
    let what = format!("correcting {}", a.quant.display());
    let Some(Outcome::Lowrank(o)) = run(&a.job(), a.threads, a.quiet, a.json, what)? else { return Ok(()) };
    let r = &o.result;
    let used: Vec<_> = r.tensors.iter().filter(|t| t.rank > 0).collect();
    let (lo, hi) = (used.iter().map(|t| t.rank).min().unwrap_or(0), used.iter().map(|t| t.rank).max().unwrap_or(0));
    let ranks = if lo == hi { format!("rank {lo}") } else { format!("ranks {lo}-{hi} (alpha {})", r.alpha) };
    println!(
        "{}: {} of {} tensors corrected, {ranks}, {} {} ({} of data), {} SVD, {:.1} s",
        a.output.display(),
        used.len(),
        r.tensors.len(),
        human_bytes(r.file_bytes),
        r.adapter_type,
        human_bytes(r.data_bytes),
        if r.whitened { format!("whitened by {} calibration tokens", r.calibration_tokens) } else { "plain".into() },
        r.seconds
    );
    println!(
        "relative output error summed over the tensors: {:.4} -> {:.4} ({:.1}% removed)\nsha256 {}",
        r.error_before,
        r.error_after,
        100.0 * (1.0 - r.error_after / r.error_before.max(f64::MIN_POSITIVE)),
        r.sha256
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct MergeArgs {
    /// The model the adapters were made for (GGUF).
    model: PathBuf,
    /// LoRA adapters (GGUF) as FILE[:SCALE], applied in order.
    #[arg(required = true, value_parser = crunch_model::LoraSpec::parse)]
    adapters: Vec<crunch_model::LoraSpec>,
    /// Output GGUF.
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Quantize in the same pass to this preset or type (Q4_K_M, Q8_0, …); default: adapted
    /// float tensors keep their type, adapted quantized ones become F32, the rest is copied.
    #[arg(long = "type", value_name = "TYPE")]
    ftype: Option<String>,
    /// Worker threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

impl MergeArgs {
    pub fn job(&self) -> Job {
        Job::Merge(MergeJob {
            model: self.model.clone(),
            adapters: self.adapters.clone(),
            output: self.output.clone(),
            ftype: self.ftype.clone(),
        })
    }
}

pub fn merge(a: MergeArgs) -> Result<()> {
    let what = format!("merging into {}", a.model.display());
    let Some(Outcome::Merge(o)) = run(&a.job(), a.threads, a.quiet, a.json, what)? else { return Ok(()) };
    let r = &o.result;
    println!(
        "{} -> {}: {} adapter(s), {} weights changed, {} ({:.2} bpw), {:.1} s\nsha256 {}",
        a.model.display(),
        a.output.display(),
        r.adapters.len(),
        r.merged.len(),
        human_bytes(r.result.file_bytes),
        r.result.bpw,
        r.result.seconds,
        r.result.sha256
    );
    Ok(())
}
