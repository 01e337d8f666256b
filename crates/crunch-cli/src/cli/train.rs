//! `crunch distill` and `crunch finetune`.

use super::progress::TermProgress;
use anyhow::{Context, Result};
use crunch::inspect::human_bytes;
use crunch::job::{Job, Outcome, TrainJob};
use std::path::PathBuf;

/// Options both training commands take.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// Training text (UTF-8; random:N[:SEED] for random vocabulary tokens).
    #[arg(long, value_name = "FILE")]
    text: String,
    /// Output LoRA adapter (GGUF; load it with llama.cpp's --lora or crunch's --lora).
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Rank of every LoRA pair.
    #[arg(long)]
    rank: usize,
    /// LoRA alpha: pairs are applied with alpha/rank (default: the rank, a factor of 1).
    #[arg(long)]
    alpha: Option<f32>,
    /// Only block linears whose GGUF name matches this regular expression (default: all seven
    /// of every block).
    #[arg(long, value_name = "REGEX")]
    tensors: Option<String>,
    /// Start from this adapter (FILE[:SCALE]); its pairs replace the fresh ones.
    #[arg(long, value_name = "FILE[:SCALE]", value_parser = crunch_model::LoraSpec::parse)]
    init: Option<crunch_model::LoraSpec>,
    /// Optimizer updates.
    #[arg(long, default_value_t = 100)]
    steps: u64,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Learning-rate schedule after the warmup: cosine, linear or constant.
    #[arg(long, default_value = "cosine")]
    schedule: String,
    /// Warmup updates (default: a twentieth of the steps).
    #[arg(long)]
    warmup: Option<u64>,
    /// Where a decaying schedule ends, as a fraction of the peak learning rate.
    #[arg(long, default_value_t = 0.1)]
    min_lr: f64,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Chunks per micro-batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Micro-batches per update (their gradients averaged).
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Clip the gradient's global norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Seeds the fresh pairs and the order chunks are drawn in.
    #[arg(long, default_value_t = 0)]
    seed: u64,
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
    /// Type of the adapter's tensors: f32, f16, bf16 or q8_0.
    #[arg(long, default_value = "f16")]
    adapter_type: String,
    /// Checkpoint file (default: OUTPUT.ckpt).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Save a checkpoint every this many updates (also on Ctrl-C and at the end).
    #[arg(long, default_value_t = 25)]
    checkpoint_every: u64,
    /// Continue from the checkpoint when there is one (of the same run; --steps may grow).
    #[arg(long)]
    resume: bool,
    /// Frozen products with dequantized weights instead of llama.cpp's quantized activations.
    #[arg(long)]
    exact: bool,
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

impl TrainArgs {
    fn job(&self, model: PathBuf) -> TrainJob {
        TrainJob {
            alpha: self.alpha,
            tensors: self.tensors.clone(),
            init: self.init.clone(),
            steps: self.steps,
            lr: self.lr,
            schedule: self.schedule.clone(),
            warmup: self.warmup,
            min_lr: self.min_lr,
            weight_decay: self.weight_decay,
            batch: self.batch,
            grad_accum: self.grad_accum,
            clip: self.clip,
            seed: self.seed,
            ctx: self.ctx,
            chunks: self.chunks,
            skip_chunks: self.skip_chunks,
            holdout: self.holdout,
            eval_every: self.eval_every,
            adapter_type: self.adapter_type.clone(),
            checkpoint: self.checkpoint.clone(),
            checkpoint_every: self.checkpoint_every,
            resume: self.resume,
            exact: self.exact,
            plot: self.plot.clone(),
            ..TrainJob::new(model, PathBuf::from(&self.text), self.output.clone(), self.rank)
        }
    }
}

#[derive(clap::Args)]
pub struct DistillArgs {
    /// BASE QUANT: the reference model whose token distributions the adapter learns to match, and
    /// the quantized model the adapter is trained on (GGUF; its weights stay frozen). With
    /// --base-logits, QUANT alone.
    #[arg(required = true, num_args = 1..=2, value_name = "BASE QUANT")]
    models: Vec<PathBuf>,
    /// Read the base's top-k log-probabilities saved by an earlier run (--save-base) instead of
    /// running the base.
    #[arg(long, value_name = "FILE", conflicts_with = "save_base")]
    base_logits: Option<PathBuf>,
    /// Keep the base's top-k log-probabilities for later runs.
    #[arg(long, value_name = "FILE")]
    save_base: Option<PathBuf>,
    /// Base tokens kept per position.
    #[arg(long, default_value_t = 32)]
    top_k: usize,
    #[command(flatten)]
    train: TrainArgs,
}

impl DistillArgs {
    /// # Errors
    /// Two models with --base-logits, or one without.
    pub fn job(&self) -> Result<Job> {
        let (base, quant) = match (self.models.as_slice(), &self.base_logits) {
            ([b, q], None) => (Some(b.clone()), q.clone()),
            ([q], Some(_)) => (None, q.clone()),
            (_, None) => anyhow::bail!("give BASE and QUANT (or QUANT with --base-logits)"),
            (_, Some(_)) => anyhow::bail!("with --base-logits give QUANT only: the base is not run"),
        };
        Ok(Job::Distill(TrainJob {
            base,
            base_logits: self.base_logits.clone(),
            save_base: self.save_base.clone(),
            top_k: Some(self.top_k),
            ..self.train.job(quant)
        }))
    }
}

#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// The model (GGUF, any type crunch reads; quantized: QLoRA-style) the adapter is for.
    model: PathBuf,
    #[command(flatten)]
    train: TrainArgs,
}

impl FinetuneArgs {
    pub fn job(&self) -> Job {
        Job::Finetune(self.train.job(self.model.clone()))
    }
}

fn run(job: &Job, a: &TrainArgs, what: String) -> Result<()> {
    let ctx = super::job_ctx(a.threads, TermProgress::shared(a.quiet || a.json), None)?;
    let o = super::run_job(job, &ctx).context(what)?;
    let (Outcome::Distill(o) | Outcome::Finetune(o)) = o else { unreachable!("a training job") };
    if a.json {
        return super::print_json(&o);
    }
    if a.quiet {
        return Ok(());
    }
    let r = &o.result;
    let first = r.curve.first().map(|s| s.loss).unwrap_or(f64::NAN);
    let last = r.curve.last().map(|s| s.loss).unwrap_or(f64::NAN);
    let what = if r.objective == "distill" { "KL" } else { "cross-entropy" };
    println!(
        "{}: {} LoRA pairs, {} parameters, {} ({}); {} steps on {} chunks of {} tokens{}",
        r.output,
        r.pairs,
        r.trainable_params,
        human_bytes(r.adapter_bytes),
        a.adapter_type,
        r.steps,
        r.train_chunks,
        r.ctx,
        r.resumed_at.map(|s| format!(" (resumed at step {s})")).unwrap_or_default()
    );
    println!("training {what} {first:.4} -> {last:.4} (first and last update)");
    if let (Some(h0), Some(h1)) = (r.heldout.first(), r.heldout.last()) {
        println!(
            "held-out {what} ({} chunks) {:.4} at step {} -> {:.4} at step {}",
            r.holdout_chunks, h0.1, h0.0, h1.1, h1.0
        );
    }
    println!(
        "{:.1} training tokens/s, {:.1} s, peak RSS {}; checkpoint {}\nsha256 {}",
        r.tokens_per_second,
        r.seconds,
        r.peak_rss_bytes.map(human_bytes).unwrap_or_else(|| "?".into()),
        r.checkpoint,
        r.sha256
    );
    Ok(())
}

pub fn distill(a: DistillArgs) -> Result<()> {
    let job = a.job()?;
    let what = match &job {
        Job::Distill(j) => format!("distilling into {}", j.model.display()),
        _ => unreachable!("a distill job"),
    };
    run(&job, &a.train, what)
}

pub fn finetune(a: FinetuneArgs) -> Result<()> {
    let what = format!("fine-tuning {}", a.model.display());
    run(&a.job(), &a.train, what)
}
