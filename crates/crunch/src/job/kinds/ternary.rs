//! `ternary`: a model's block linears as TQ1_0 / TQ2_0 ternary weights (absmean), straight from
//! its weights or after ternary fine-tuning distilled from the model itself (see
//! `crate::ternary`).

use super::train::{
    default_clip, default_ctx, default_eval_every, default_min_lr, default_schedule, one, train_options,
};
use super::TrainJob;
use crate::error::{Error, Result};
use crate::job::record::{metric, Recorder};
use crate::job::{refuse_overwrite, RunCtx};
use crate::ternary::{self, TernaryReport, TernaryTraining};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `ternary`: ternarize a GGUF model, optionally after ternary fine-tuning.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TernaryJob {
    /// Input GGUF (F32/F16/BF16 or any type crunch dequantizes): the model, and the teacher its
    /// ternary version is distilled from.
    pub model: PathBuf,
    /// Output GGUF (block linears TQ1_0 / TQ2_0, the rest copied; llama.cpp runs it).
    pub output: PathBuf,
    /// `TQ1_0` (1.69 bits per weight) or `TQ2_0` (2.06, faster).
    #[serde(rename = "type", default = "default_type")]
    pub ty: String,
    /// Also write the model in the other ternary type here (same weights).
    #[serde(default)]
    pub twin: Option<PathBuf>,
    /// Fine-tuning text; without it the weights are ternarized as they are (post-training).
    #[serde(default)]
    pub text: Option<PathBuf>,
    /// Updates over which the full-precision weights are blended into the ternary ones
    /// (default: a quarter of the steps).
    #[serde(default)]
    pub blend_warmup: Option<u64>,
    #[serde(default = "default_steps")]
    pub steps: u64,
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// `cosine`, `linear` or `constant`.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    /// Learning-rate warmup updates (default: a twentieth of the steps).
    #[serde(default)]
    pub warmup: Option<u64>,
    #[serde(default = "default_min_lr")]
    pub min_lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "one")]
    pub batch: usize,
    #[serde(default = "one")]
    pub grad_accum: usize,
    #[serde(default = "default_clip")]
    pub clip: f64,
    #[serde(default)]
    pub seed: u64,
    /// Tokens per training chunk.
    #[serde(default = "default_ctx")]
    pub ctx: usize,
    #[serde(default)]
    pub chunks: Option<usize>,
    #[serde(default)]
    pub skip_chunks: usize,
    #[serde(default)]
    pub holdout: usize,
    #[serde(default = "default_eval_every")]
    pub eval_every: u64,
    /// Teacher tokens kept per position.
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub exact: bool,
    /// Write the loss curve as an SVG plot.
    #[serde(default)]
    pub plot: Option<PathBuf>,
}

fn default_type() -> String {
    "TQ2_0".into()
}
fn default_steps() -> u64 {
    200
}
fn default_lr() -> f64 {
    2e-4
}

impl TernaryJob {
    /// Post-training ternarization of `model` to `ty`.
    pub fn new(model: PathBuf, output: PathBuf, ty: &str) -> Self {
        TernaryJob {
            model,
            output,
            ty: ty.into(),
            twin: None,
            text: None,
            blend_warmup: None,
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
            top_k: None,
            exact: false,
            plot: None,
        }
    }

    /// The fine-tuning options, checked (`None` without text: post-training).
    ///
    /// # Errors
    /// The training fields' errors, named `ternary.*`.
    pub fn training(&self) -> Result<Option<TernaryTraining>> {
        let Some(text) = &self.text else { return Ok(None) };
        let tj = TrainJob {
            base: Some(self.model.clone()),
            top_k: self.top_k,
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
            exact: self.exact,
            plot: self.plot.clone(),
            ..TrainJob::new(self.model.clone(), text.clone(), self.output.clone(), 1)
        };
        let train = train_options(&tj, "ternary")?;
        Ok(Some(TernaryTraining { train, blend_warmup: self.blend_warmup.unwrap_or(self.steps / 4) }))
    }
}

/// What `ternary` did.
#[derive(Clone, Debug, Serialize)]
pub struct TernaryOutcome {
    pub result: TernaryReport,
    pub run_id: Option<i64>,
}

pub(crate) fn run(j: &TernaryJob, ctx: &RunCtx) -> Result<TernaryOutcome> {
    let ty = ternary::ternary_type(&j.ty, "ternary.type")?;
    let training = j.training()?;
    refuse_overwrite("ternary.output", &j.model, &j.output)?;
    if let Some(t) = &j.twin {
        refuse_overwrite("ternary.twin", &j.model, t)?;
        if t == &j.output {
            return Err(Error::field("ternary.twin", "must differ from the output"));
        }
    }
    let params = serde_json::to_value(j).map_err(|e| Error::Invalid(e.to_string()))?;
    let mut inputs: Vec<(&str, &Path)> = vec![("model", &j.model)];
    if let Some(t) = &j.text {
        inputs.push(("text", t));
    }
    let label = match &training {
        Some(_) => format!("{} fine-tuned {} steps", j.ty, j.steps),
        None => format!("{} post-training", j.ty),
    };
    let rec = Recorder::start("ternary", ctx.registry.as_deref(), Some(label), params, &inputs);
    let res = ternary::ternary(
        &j.model,
        &j.output,
        ty,
        j.twin.as_deref(),
        training.as_ref(),
        ctx.progress.as_ref(),
        &ctx.cancel,
    );
    let (result, run_id) = rec.close(res, |r| {
        let mut m = vec![(metric::FILE_BYTES, r.file_bytes as f64), (metric::BPW, r.bpw), (metric::SECONDS, r.seconds)];
        if let Some(s) = r.curve.last() {
            m.push((metric::TRAIN_LOSS, s.loss));
        }
        if let Some(&(_, h)) = r.heldout.last() {
            m.push((metric::HELDOUT_LOSS, h));
        }
        m
    })?;
    Ok(TernaryOutcome { result, run_id })
}
