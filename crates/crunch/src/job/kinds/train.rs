//! The training jobs: `distill` (a LoRA adapter that makes a quantized model match its base) and
//! `finetune` (a LoRA adapter trained on text). One set of fields serves both; `distill` needs a
//! base (a model or saved base log-probabilities), `finetune` refuses one.

use crate::error::{Error, Result};
use crate::job::record::{metric, Recorder};
use crate::job::{refuse_overwrite, RunCtx};
use crate::train::{self, BaseSource, Objective, TrainOptions, TrainReport};
use crunch_calib::text::{ChunkOptions, TextSource};
use crunch_model::LoraSpec;
use crunch_train::{AdamWConfig, Schedule, TrainConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `distill` / `finetune`: a LoRA adapter trained on the CPU over a frozen GGUF model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainJob {
    /// distill: the reference model (GGUF) whose distributions the adapter learns to match.
    #[serde(default)]
    pub base: Option<PathBuf>,
    /// distill: the base's top-k log-probabilities saved by an earlier run (`save_base`) for the
    /// same text and options, instead of `base`.
    #[serde(default)]
    pub base_logits: Option<PathBuf>,
    /// distill: keep the base's top-k log-probabilities here for later runs.
    #[serde(default)]
    pub save_base: Option<PathBuf>,
    /// distill: base tokens kept per position.
    #[serde(default)]
    pub top_k: Option<usize>,
    /// The model the adapter is for (GGUF, any type crunch reads; its weights stay frozen).
    pub model: PathBuf,
    /// Training text (`random:N[:SEED]` for random vocabulary tokens).
    pub text: PathBuf,
    /// Output adapter (GGUF, `general.type = adapter`, as llama.cpp's `--lora` loads).
    pub output: PathBuf,
    /// Rank of every pair.
    pub rank: usize,
    /// LoRA alpha (each pair is applied with `alpha / rank`); default: the rank.
    #[serde(default)]
    pub alpha: Option<f32>,
    /// Only block linears whose GGUF name matches this regular expression (default: all seven
    /// of every block).
    #[serde(default)]
    pub tensors: Option<String>,
    /// Start from this adapter (`FILE[:SCALE]`; a `crunch lowrank` correction for distill).
    #[serde(default)]
    pub init: Option<LoraSpec>,
    /// Optimizer updates.
    #[serde(default = "default_steps")]
    pub steps: u64,
    /// Peak learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// `cosine`, `linear` or `constant`.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    /// Warmup updates (default: a twentieth of the steps).
    #[serde(default)]
    pub warmup: Option<u64>,
    /// The learning rate a decaying schedule ends at, as a fraction of the peak.
    #[serde(default = "default_min_lr")]
    pub min_lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Chunks per micro-batch.
    #[serde(default = "one")]
    pub batch: usize,
    /// Micro-batches per update.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Clip the gradient's global norm to this (0: no clipping).
    #[serde(default = "default_clip")]
    pub clip: f64,
    /// Seeds the fresh pairs and the order the chunks are drawn in.
    #[serde(default)]
    pub seed: u64,
    /// Tokens per training chunk.
    #[serde(default = "default_ctx")]
    pub ctx: usize,
    /// Training chunks (default: every whole chunk of the text).
    #[serde(default)]
    pub chunks: Option<usize>,
    /// Skip this many chunks of the text first (keep evaluation text out).
    #[serde(default)]
    pub skip_chunks: usize,
    /// Chunks after the training ones held out and scored every `eval_every` updates.
    #[serde(default)]
    pub holdout: usize,
    #[serde(default = "default_eval_every")]
    pub eval_every: u64,
    /// Type of the adapter's tensors: f32, f16, bf16 or q8_0.
    #[serde(default = "default_adapter_type")]
    pub adapter_type: String,
    /// Checkpoint file (default: the output with `.ckpt` appended).
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Continue from the checkpoint when there is one (of the same run).
    #[serde(default)]
    pub resume: bool,
    /// Frozen products with dequantized weights instead of llama.cpp's quantized activations.
    #[serde(default)]
    pub exact: bool,
    /// Write the loss curve as an SVG plot.
    #[serde(default)]
    pub plot: Option<PathBuf>,
}

fn default_steps() -> u64 {
    100
}
fn default_lr() -> f64 {
    2e-4
}
pub(super) fn default_schedule() -> String {
    "cosine".into()
}
pub(super) fn default_min_lr() -> f64 {
    0.1
}
pub(super) fn one() -> usize {
    1
}
pub(super) fn default_clip() -> f64 {
    1.0
}
pub(super) fn default_ctx() -> usize {
    256
}
pub(super) fn default_eval_every() -> u64 {
    10
}
fn default_adapter_type() -> String {
    crate::lowrank::DEFAULT_ADAPTER_TYPE.into()
}
fn default_checkpoint_every() -> u64 {
    25
}

/// The default top-k of distillation (as `eval compare`'s).
pub const DEFAULT_TOP_K: usize = 32;

impl TrainJob {
    /// A job with every default for `model`, `text`, `output` and `rank`.
    pub fn new(model: PathBuf, text: PathBuf, output: PathBuf, rank: usize) -> Self {
        TrainJob {
            base: None,
            base_logits: None,
            save_base: None,
            top_k: None,
            model,
            text,
            output,
            rank,
            alpha: None,
            tensors: None,
            init: None,
            steps: default_steps(),
            lr: default_lr(),
            schedule: default_schedule(),
            warmup: None,
            min_lr: default_min_lr(),
            weight_decay: 0.0,
            batch: 1,
            grad_accum: 1,
            clip: default_clip(),
            seed: 0,
            ctx: default_ctx(),
            chunks: None,
            skip_chunks: 0,
            holdout: 0,
            eval_every: default_eval_every(),
            adapter_type: default_adapter_type(),
            checkpoint: None,
            checkpoint_every: default_checkpoint_every(),
            resume: false,
            exact: false,
            plot: None,
        }
    }

    /// The checkpoint file: the given one or the output with `.ckpt` appended.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.checkpoint.clone().unwrap_or_else(|| {
            let mut p = self.output.clone().into_os_string();
            p.push(".ckpt");
            PathBuf::from(p)
        })
    }
}

/// What `distill` / `finetune` did.
#[derive(Clone, Debug, Serialize)]
pub struct TrainOutcome {
    pub result: TrainReport,
    pub run_id: Option<i64>,
}

/// The training options a job asks for, checked; `kind` is `distill`, `finetune` or `ternary`
/// (which distils from its own model, see [`super::ternary`]).
///
/// # Errors
/// A base for finetune or none for distill, a bad schedule, pattern, type or number.
pub fn train_options(j: &TrainJob, kind: &str) -> Result<TrainOptions> {
    let f = |name: &str| format!("{kind}.{name}");
    let objective = if kind != "finetune" {
        let base = match (&j.base, &j.base_logits) {
            (Some(b), None) => BaseSource::Model(b.clone()),
            (None, Some(l)) => BaseSource::Logits(l.clone()),
            (Some(_), Some(_)) => return Err(Error::field(f("base"), "give a base model or base_logits, not both")),
            (None, None) => return Err(Error::field(f("base"), "distillation needs the base model (or base_logits)")),
        };
        if j.save_base.is_some() && j.base.is_none() {
            return Err(Error::field(f("save_base"), "saving needs a base model to run"));
        }
        Objective::Distill { base, top_k: j.top_k.unwrap_or(DEFAULT_TOP_K), save_base: j.save_base.clone() }
    } else {
        for (set, name) in [
            (j.base.is_some(), "base"),
            (j.base_logits.is_some(), "base_logits"),
            (j.save_base.is_some(), "save_base"),
            (j.top_k.is_some(), "top_k"),
        ] {
            if set {
                return Err(Error::field(f(name), "fine-tuning learns from the text alone; use distill for a base"));
            }
        }
        Objective::Finetune
    };
    let warmup = j.warmup.unwrap_or(j.steps / 20);
    let schedule = match j.schedule.as_str() {
        "cosine" => Schedule::Cosine { warmup, total: j.steps, floor: j.min_lr },
        "linear" => Schedule::Linear { warmup, total: j.steps, floor: j.min_lr },
        "constant" => Schedule::Constant,
        other => return Err(Error::field(f("schedule"), format!("{other:?}: one of cosine, linear, constant"))),
    };
    if !(0.0..=1.0).contains(&j.min_lr) {
        return Err(Error::field(f("min_lr"), format!("{} must be a fraction of the peak, 0 to 1", j.min_lr)));
    }
    if !(j.clip.is_finite() && j.clip >= 0.0) {
        return Err(Error::field(f("clip"), format!("{} must be 0 (off) or a positive norm", j.clip)));
    }
    if j.ctx < 16 {
        return Err(Error::field(f("ctx"), format!("{} tokens is too small a context (at least 16)", j.ctx)));
    }
    if j.chunks == Some(0) {
        return Err(Error::field(f("chunks"), "must be at least 1"));
    }
    let tensors = j
        .tensors
        .as_deref()
        .map(|p| regex::Regex::new(p).map_err(|e| Error::field(f("tensors"), format!("{p:?}: {e}"))))
        .transpose()?;
    let adapter_type = crate::lowrank::adapter_type(&j.adapter_type, &f("adapter_type"))?;
    let o = TrainOptions {
        objective,
        text: TextSource::parse(&j.text.to_string_lossy()),
        chunks: ChunkOptions { n_ctx: j.ctx, n_chunks: j.chunks, skip: j.skip_chunks, shuffle_seed: None },
        holdout: j.holdout,
        eval_every: j.eval_every,
        rank: j.rank,
        alpha: j.alpha.unwrap_or(j.rank as f32),
        tensors,
        init: j.init.clone(),
        config: TrainConfig {
            adamw: AdamWConfig { lr: j.lr, weight_decay: j.weight_decay, ..AdamWConfig::default() },
            schedule,
            steps: j.steps,
            batch_size: j.batch,
            grad_accum: j.grad_accum,
            max_grad_norm: (j.clip > 0.0).then_some(j.clip),
            seed: j.seed,
        },
        adapter_type,
        checkpoint: j.checkpoint_path(),
        checkpoint_every: j.checkpoint_every,
        resume: j.resume,
        exact: j.exact,
        plot: j.plot.clone(),
        field: kind.into(),
    };
    train::check(&o)?;
    Ok(o)
}

pub(crate) fn run(j: &TrainJob, kind: &str, ctx: &RunCtx) -> Result<TrainOutcome> {
    let o = train_options(j, kind)?;
    let out_field = format!("{kind}.output");
    let mut inputs: Vec<(&str, &Path)> = vec![("model", &j.model)];
    for (role, p) in [("base", &j.base), ("base_logits", &j.base_logits)] {
        if let Some(p) = p {
            inputs.push((role, p));
        }
    }
    if let Some(a) = &j.init {
        inputs.push(("lora", &a.path));
    }
    if matches!(o.text, TextSource::File(_)) {
        inputs.push(("text", &j.text));
    }
    let checkpoint = j.checkpoint_path();
    for (_, input) in &inputs {
        for (name, out) in [(out_field.clone(), &j.output), (format!("{kind}.checkpoint"), &checkpoint)] {
            refuse_overwrite(&name, input, out)?;
        }
    }
    if checkpoint == j.output {
        return Err(Error::field(format!("{kind}.checkpoint"), "must differ from the output"));
    }
    let params = serde_json::to_value(j).map_err(|e| Error::Invalid(e.to_string()))?;
    let label = format!("rank {}, {} steps", j.rank, j.steps);
    let rec = Recorder::start(kind, ctx.registry.as_deref(), Some(label), params, &inputs);
    let res = train::train(&j.model, &j.output, &o, ctx.progress.as_ref(), &ctx.cancel);
    let (result, run_id) = rec.close(res, |r| {
        let mut m = vec![
            (metric::ADAPTER_BYTES, r.adapter_bytes as f64),
            (metric::SECONDS, r.seconds),
            (metric::TOKENS_PER_S, r.tokens_per_second),
        ];
        if let Some(rss) = r.peak_rss_bytes {
            m.push((metric::PEAK_RSS_BYTES, rss as f64));
        }
        if let Some(s) = r.curve.last() {
            m.push((metric::TRAIN_LOSS, s.loss));
        }
        if let Some(&(_, l)) = r.heldout.last() {
            m.push((metric::HELDOUT_LOSS, l));
        }
        m
    })?;
    Ok(TrainOutcome { result, run_id })
}
