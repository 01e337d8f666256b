//! `crunch prune`.

use super::progress::TermProgress;
use anyhow::{Context, Result};
use crunch::inspect::human_bytes;
use crunch::job::{Job, Outcome, PruneJob};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Input GGUF model.
    input: PathBuf,
    /// Output GGUF file (dense, with the pruned weights zero; OUTPUT.sha256 is written beside it).
    output: PathBuf,
    /// magnitude (no calibration), wanda (|W|·‖X‖ per output row) or sparsegpt (OBS updates of
    /// the surviving weights; quantizes jointly onto the output type).
    #[arg(long, value_name = "METHOD")]
    method: String,
    /// Fraction of every linear weight to zero, in (0, 1).
    #[arg(long, value_name = "FRACTION")]
    sparsity: Option<f64>,
    /// N:M: N zeros in every M consecutive weights of a row (2:4, 4:8).
    #[arg(long, value_name = "N:M")]
    pattern: Option<String>,
    /// Calibration text for wanda and sparsegpt (or random:N[:SEED] for N random vocabulary tokens).
    #[arg(long, value_name = "FILE")]
    text: Option<String>,
    /// Output preset or type (Q4_K_M, Q8_0, F16, …); default: every tensor keeps its type.
    #[arg(long = "type", value_name = "TYPE")]
    ftype: Option<String>,
    /// Calibration context (tokens per chunk).
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Calibration chunks.
    #[arg(long, default_value_t = 64)]
    chunks: usize,
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

impl PruneArgs {
    /// The job these arguments ask for.
    pub fn job(&self) -> Job {
        Job::Prune(PruneJob {
            model: self.input.clone(),
            output: self.output.clone(),
            method: self.method.clone(),
            sparsity: self.sparsity,
            pattern: self.pattern.clone(),
            text: self.text.as_ref().map(PathBuf::from),
            ftype: self.ftype.clone(),
            ctx: self.ctx,
            chunks: self.chunks,
        })
    }
}

pub fn run(a: PruneArgs) -> Result<()> {
    let ctx = super::job_ctx(a.threads, TermProgress::shared(a.quiet || a.json), None)?;
    let Outcome::Prune(o) = super::run_job(&a.job(), &ctx).with_context(|| format!("pruning {}", a.input.display()))?
    else {
        unreachable!("a prune job has a prune outcome")
    };
    if a.json {
        return super::print_json(&o);
    }
    if a.quiet {
        return Ok(());
    }
    let r = &o.result;
    let not_exact: Vec<String> = o
        .tensors
        .iter()
        .filter(|t| t.zero_fraction + 1e-9 < t.pruned_fraction)
        .map(|t| format!("{} ({}: {:.1}% zero)", t.pruned.name, t.ty, 100.0 * t.zero_fraction))
        .collect();
    println!(
        "{} -> {}: {} {} pruned {} tensors, {:.2}% of their weights zero in the output (target {:.2}%), \
         {} ({:.2} bpw), pruning {:.1} s, writing {:.1} s\nsha256 {}",
        a.input.display(),
        a.output.display(),
        o.method.name(),
        o.sparsity,
        o.tensors.len(),
        100.0 * o.zero_fraction,
        100.0 * o.target,
        human_bytes(r.file_bytes),
        r.bpw,
        o.prune_seconds,
        r.seconds,
        r.sha256
    );
    if !not_exact.is_empty() {
        println!(
            "{} tensor(s) lost zeros in their type's quantizer (no exact zero on its grid), e.g. {}",
            not_exact.len(),
            not_exact.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}
