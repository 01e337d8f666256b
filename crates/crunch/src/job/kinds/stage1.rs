//! `stage1`: ternary fine-tuning, then SeedLM encoding, measured against a size-ratio and an
//! accuracy-drop target (see `crate::stage1`).

use super::TernaryJob;
use crate::error::{Error, Result};
use crate::job::record::{metric, Recorder};
use crate::job::{refuse_overwrite, RunCtx};
use crate::stage1::{self, Stage1Options, Stage1Report};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `stage1`: the extreme-compression pipeline on a GGUF model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Stage1Job {
    /// Input GGUF: compressed, and the teacher of the ternary fine-tuning.
    pub model: PathBuf,
    /// The SeedLM container (`*.seedlm`).
    pub output: PathBuf,
    /// Input bytes over output bytes to reach.
    #[serde(default = "default_ratio")]
    pub target_ratio: f64,
    /// The largest relative accuracy drop allowed (top-1 on held-out text, multiple choice).
    #[serde(default = "default_drop")]
    pub max_accuracy_drop: f64,
    /// Training text for the ternary fine-tuning.
    pub text: PathBuf,
    /// Multiple-choice tasks (JSONL, as `choice`).
    #[serde(default)]
    pub tasks: Option<PathBuf>,
    /// Held-out text (default: the training text, whose first `eval_chunks` chunks training skips).
    #[serde(default)]
    pub eval_text: Option<PathBuf>,
    #[serde(default = "default_eval_ctx")]
    pub eval_ctx: usize,
    #[serde(default = "default_eval_chunks")]
    pub eval_chunks: usize,
    /// `4bit` or `3bit` (default: the most precise that reaches the ratio).
    #[serde(default)]
    pub config: Option<String>,
    #[serde(default)]
    pub imatrix: Option<PathBuf>,
    /// A ternary model of `model` already fine-tuned (`ternary`): encoded instead of training one.
    #[serde(default)]
    pub ternary: Option<PathBuf>,
    /// The metrics file (default: the output with `.metrics.json`).
    #[serde(default)]
    pub metrics: Option<PathBuf>,
    #[serde(default = "default_steps")]
    pub steps: u64,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default)]
    pub blend_warmup: Option<u64>,
    #[serde(default = "default_ctx")]
    pub ctx: usize,
    #[serde(default)]
    pub chunks: Option<usize>,
    #[serde(default)]
    pub seed: u64,
}

fn default_ratio() -> f64 {
    10.0
}
fn default_drop() -> f64 {
    0.05
}
fn default_eval_ctx() -> usize {
    512
}
fn default_eval_chunks() -> usize {
    8
}
fn default_steps() -> u64 {
    200
}
fn default_lr() -> f64 {
    2e-4
}
fn default_ctx() -> usize {
    256
}

impl Stage1Job {
    /// `OUT` with `suffix` appended to its name.
    fn beside(&self, suffix: &str) -> PathBuf {
        let mut p = self.output.clone().into_os_string();
        p.push(suffix);
        PathBuf::from(p)
    }

    pub fn metrics_path(&self) -> PathBuf {
        Self::metrics_path_of(&self.output, self.metrics.as_deref())
    }

    /// The metrics file of a job writing `output`: `metrics`, or `output` + `.metrics.json`.
    pub fn metrics_path_of(output: &Path, metrics: Option<&Path>) -> PathBuf {
        metrics.map(Path::to_path_buf).unwrap_or_else(|| {
            let mut p = output.to_path_buf().into_os_string();
            p.push(".metrics.json");
            PathBuf::from(p)
        })
    }

    pub fn ternary_path(&self) -> PathBuf {
        self.beside(".ternary.gguf")
    }

    /// The pipeline's options, checked.
    ///
    /// # Errors
    /// A bad configuration name or training field, named `stage1.*`.
    pub fn options(&self) -> Result<Stage1Options> {
        let eval_text = self.eval_text.clone().unwrap_or_else(|| self.text.clone());
        // Training never sees the held-out chunks of its own text.
        let skip =
            if eval_text == self.text { (self.eval_chunks * self.eval_ctx).div_ceil(self.ctx.max(1)) } else { 0 };
        let tj = TernaryJob {
            text: Some(self.text.clone()),
            steps: self.steps,
            lr: self.lr,
            blend_warmup: self.blend_warmup,
            ctx: self.ctx,
            chunks: self.chunks,
            skip_chunks: skip,
            seed: self.seed,
            ..TernaryJob::new(self.model.clone(), self.ternary_path(), "TQ2_0")
        };
        let training = tj
            .training()
            .map_err(|e| match e {
                Error::Field { field, message } => {
                    Error::Field { field: field.replacen("ternary.", "stage1.", 1), message }
                }
                e => e,
            })?
            .expect("text given");
        let config = self.config.as_deref().map(|c| super::seedlm::config(c, "stage1.config")).transpose()?;
        if self.eval_chunks == 0 {
            return Err(Error::field("stage1.eval_chunks", "must be at least 1"));
        }
        Ok(Stage1Options {
            target_ratio: self.target_ratio,
            max_accuracy_drop: self.max_accuracy_drop,
            training,
            eval_text,
            eval_ctx: self.eval_ctx,
            eval_chunks: self.eval_chunks,
            tasks: self.tasks.clone(),
            config,
            imatrix: self.imatrix.clone(),
            metrics: self.metrics_path(),
            ternary_output: self.ternary_path(),
            ternary_input: self.ternary.clone(),
        })
    }
}

/// What `stage1` did (`result.met`: whether every target was reached).
#[derive(Clone, Debug, Serialize)]
pub struct Stage1Outcome {
    pub result: Stage1Report,
    pub run_id: Option<i64>,
}

pub(crate) fn run(j: &Stage1Job, ctx: &RunCtx) -> Result<Stage1Outcome> {
    let o = j.options()?;
    refuse_overwrite("stage1.output", &j.model, &j.output)?;
    let params = serde_json::to_value(j).map_err(|e| Error::Invalid(e.to_string()))?;
    let mut inputs: Vec<(&str, &Path)> = vec![("model", &j.model), ("text", &j.text)];
    if let Some(t) = &j.tasks {
        inputs.push(("tasks", t));
    }
    let label = format!("stage1 ratio {} drop {}", j.target_ratio, j.max_accuracy_drop);
    let rec = Recorder::start("stage1", ctx.registry.as_deref(), Some(label), params, &inputs);
    let res = stage1::stage1(&j.model, &j.output, &o, ctx.progress.as_ref(), &ctx.cancel);
    let (result, run_id) = rec.close(res, |r| {
        let mut m = vec![
            (metric::FILE_BYTES, r.output_bytes as f64),
            (metric::SECONDS, r.seconds),
            (metric::PPL, r.after.ppl),
            (metric::TOP1, r.after.top1_agreement.unwrap_or(f64::NAN)),
        ];
        if let Some(a) = r.after.mc_acc {
            m.push((metric::ACC, a * 100.0));
        }
        m
    })?;
    Ok(Stage1Outcome { result, run_id })
}
