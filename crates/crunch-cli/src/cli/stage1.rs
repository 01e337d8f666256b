//! `crunch stage1`: ternary fine-tuning, then SeedLM encoding, against a size-ratio and an
//! accuracy-drop target; exits non-zero naming a target it missed.

use super::progress::TermProgress;
use anyhow::{bail, Context, Result};
use crunch::inspect::human_bytes;
use crunch::job::{Job, Outcome, Stage1Job};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Stage1Args {
    /// Input model (GGUF): compressed, and the teacher of its ternary fine-tuning.
    model: PathBuf,
    /// Output SeedLM container (*.seedlm); OUT.ternary.gguf and OUT.metrics.json are written
    /// beside it.
    output: PathBuf,
    /// Input bytes over output bytes to reach.
    #[arg(long, default_value_t = 10.0)]
    target_ratio: f64,
    /// The largest relative accuracy drop allowed (top-1 on held-out text; multiple choice).
    #[arg(long, default_value_t = 0.05)]
    max_accuracy_drop: f64,
    /// Training text (the first --eval-chunks chunks are held out when it is also the eval text).
    #[arg(long, value_name = "FILE")]
    text: PathBuf,
    /// Multiple-choice tasks (JSONL, as `eval choice`).
    #[arg(long = "eval", value_name = "TASKS")]
    tasks: Option<PathBuf>,
    /// Held-out text (default: the training text's first chunks).
    #[arg(long, value_name = "FILE")]
    eval_text: Option<PathBuf>,
    #[arg(long, default_value_t = 512)]
    eval_ctx: usize,
    #[arg(long, default_value_t = 8)]
    eval_chunks: usize,
    /// 4bit or 3bit (default: the most precise one that reaches the ratio).
    #[arg(long)]
    config: Option<String>,
    /// Importance matrix for the SeedLM fit.
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,
    /// Encode this ternary model of MODEL (from `crunch ternary --text`) instead of fine-tuning one.
    #[arg(long, value_name = "FILE")]
    ternary: Option<PathBuf>,
    /// Metrics file (default: OUT.metrics.json).
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
    /// Ternary fine-tuning updates.
    #[arg(long, default_value_t = 200)]
    steps: u64,
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Updates over which full precision is blended into ternary (default: a quarter of --steps).
    #[arg(long)]
    blend_warmup: Option<u64>,
    /// Tokens per training chunk.
    #[arg(long, default_value_t = 256)]
    ctx: usize,
    /// Training chunks (default: all after the held-out ones).
    #[arg(long)]
    chunks: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
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

pub fn run(a: Stage1Args) -> Result<()> {
    let job = Job::Stage1(Stage1Job {
        model: a.model.clone(),
        output: a.output.clone(),
        target_ratio: a.target_ratio,
        max_accuracy_drop: a.max_accuracy_drop,
        text: a.text.clone(),
        tasks: a.tasks.clone(),
        eval_text: a.eval_text.clone(),
        eval_ctx: a.eval_ctx,
        eval_chunks: a.eval_chunks,
        config: a.config.clone(),
        imatrix: a.imatrix.clone(),
        ternary: a.ternary.clone(),
        metrics: a.metrics.clone(),
        steps: a.steps,
        lr: a.lr,
        blend_warmup: a.blend_warmup,
        ctx: a.ctx,
        chunks: a.chunks,
        seed: a.seed,
    });
    let ctx = super::job_ctx(a.threads, TermProgress::shared(a.quiet || a.json), None)?;
    let Outcome::Stage1(o) = super::run_job(&job, &ctx).with_context(|| format!("stage1 on {}", a.model.display()))?
    else {
        unreachable!("a stage1 job has a stage1 outcome")
    };
    let r = &o.result;
    if a.json {
        super::print_json(&o)?;
    } else if !a.quiet {
        let mc = |s: &crunch::stage1::Scores| {
            s.mc_acc.map(|m| format!(", multiple choice {:.1}%", 100.0 * m)).unwrap_or_default()
        };
        println!(
            "{} -> {}: {} -> {} ({:.2}x, SeedLM {})\n  before:  ppl {:.3}, top-1 {:.2}%{}\n  ternary: ppl {:.3}, top-1 {:.2}%{}\n  after:   ppl {:.3}, top-1 {:.2}%{}",
            r.model,
            r.output,
            human_bytes(r.input_bytes),
            human_bytes(r.output_bytes),
            r.size_ratio,
            r.config,
            r.before.ppl,
            100.0 * r.before.top1_acc,
            mc(&r.before),
            r.ternary.ppl,
            100.0 * r.ternary.top1_acc,
            mc(&r.ternary),
            r.after.ppl,
            100.0 * r.after.top1_acc,
            mc(&r.after),
        );
    }
    let missed: Vec<String> = r
        .constraints
        .iter()
        .filter(|c| !c.met)
        .map(|c| match c.name.as_str() {
            "target_ratio" => format!("--target-ratio {}: reached {:.2}x", c.limit, c.value),
            n => format!(
                "--max-accuracy-drop {} ({}): dropped {:.1}%",
                c.limit,
                n.trim_start_matches("max_accuracy_drop "),
                100.0 * c.value
            ),
        })
        .collect();
    if !missed.is_empty() {
        bail!(
            "missed {} (metrics in {})",
            missed.join("; "),
            crunch::job::Stage1Job::metrics_path_of(&a.output, a.metrics.as_deref()).display()
        );
    }
    Ok(())
}
