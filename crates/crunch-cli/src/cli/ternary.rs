//! `crunch ternary`: block linears as TQ1_0 / TQ2_0 (absmean), post-training or fine-tuned.

use super::progress::TermProgress;
use anyhow::{Context, Result};
use crunch::inspect::human_bytes;
use crunch::job::{Job, Outcome, TernaryJob};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct TernaryArgs {
    /// Input model (GGUF): ternarized, and the teacher its fine-tuning distils from.
    model: PathBuf,
    /// Output GGUF (llama.cpp runs it).
    output: PathBuf,
    /// TQ1_0 (1.69 bits per weight) or TQ2_0 (2.06, faster).
    #[arg(long = "type", default_value = "TQ2_0")]
    ty: String,
    /// Also write the model in the other ternary type (TQ1_0 <-> TQ2_0, same weights) here.
    #[arg(long, value_name = "FILE")]
    twin: Option<PathBuf>,
    /// Fine-tune on this text first (ternary weights trained with the straight-through estimator,
    /// distilled from the model's top-k distributions); without it, post-training ternarization.
    #[arg(long, value_name = "FILE")]
    text: Option<PathBuf>,
    /// Updates over which full precision is blended into ternary (default: a quarter of --steps).
    #[arg(long)]
    blend_warmup: Option<u64>,
    /// Optimizer updates.
    #[arg(long, default_value_t = 200)]
    steps: u64,
    /// Peak learning rate (AdamW on the latent weights).
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Learning-rate schedule after the warmup: cosine, linear or constant.
    #[arg(long, default_value = "cosine")]
    schedule: String,
    /// Learning-rate warmup updates (default: a twentieth of the steps).
    #[arg(long)]
    warmup: Option<u64>,
    /// Tokens per training chunk.
    #[arg(long, default_value_t = 256)]
    ctx: usize,
    /// Training chunks (default: every whole chunk of the text).
    #[arg(long)]
    chunks: Option<usize>,
    /// Skip this many chunks of the text first (keep evaluation text out of training).
    #[arg(long, default_value_t = 0)]
    skip_chunks: usize,
    /// Chunks after the training ones held out and scored every --eval-every updates.
    #[arg(long, default_value_t = 0)]
    holdout: usize,
    #[arg(long, default_value_t = 10)]
    eval_every: u64,
    /// Teacher tokens kept per position.
    #[arg(long, default_value_t = 32)]
    top_k: usize,
    /// Seeds the order chunks are drawn in.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the loss curve as an SVG plot.
    #[arg(long, value_name = "SVG")]
    plot: Option<PathBuf>,
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

impl TernaryArgs {
    pub fn job(&self) -> Job {
        Job::Ternary(TernaryJob {
            text: self.text.clone(),
            twin: self.twin.clone(),
            blend_warmup: self.blend_warmup,
            steps: self.steps,
            lr: self.lr,
            schedule: self.schedule.clone(),
            warmup: self.warmup,
            ctx: self.ctx,
            chunks: self.chunks,
            skip_chunks: self.skip_chunks,
            holdout: self.holdout,
            eval_every: self.eval_every,
            top_k: Some(self.top_k),
            seed: self.seed,
            plot: self.plot.clone(),
            ..TernaryJob::new(self.model.clone(), self.output.clone(), &self.ty)
        })
    }
}

pub fn run(a: TernaryArgs) -> Result<()> {
    let ctx = super::job_ctx(a.threads, TermProgress::shared(a.quiet || a.json), None)?;
    let Outcome::Ternary(o) =
        super::run_job(&a.job(), &ctx).with_context(|| format!("ternarizing {}", a.model.display()))?
    else {
        unreachable!("a ternary job has a ternary outcome")
    };
    if a.json {
        return super::print_json(&o);
    }
    if !a.quiet {
        let r = &o.result;
        let trained = match (r.curve.last(), r.heldout.last()) {
            (Some(s), Some(&(_, h))) => format!(", {} steps: last loss {:.4}, held-out {h:.4}", r.steps, s.loss),
            (Some(s), None) => format!(", {} steps: last loss {:.4}", r.steps, s.loss),
            _ => " (post-training)".into(),
        };
        println!(
            "{} -> {} ({}, {} linears ternary, {} kept exactly in another type): {} ({:.2} bpw){trained}",
            a.model.display(),
            r.output,
            r.ty,
            r.ternary_tensors,
            r.fallbacks.len(),
            human_bytes(r.file_bytes),
            r.bpw
        );
    }
    Ok(())
}
