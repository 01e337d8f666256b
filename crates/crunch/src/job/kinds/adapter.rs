//! The adapter jobs: `lowrank` (a quantized model's error corrected by a LoRA adapter) and
//! `merge` (adapters folded into a model, optionally quantized in the same pass).

use super::CalibrationSpec;
use crate::error::{Error, Result};
use crate::job::record::{metric, Recorder};
use crate::job::{refuse_overwrite, RunCtx};
use crate::lowrank::{self, LowrankOptions, LowrankReport};
use crate::merge::{self, MergeReport};
use crunch_calib::text::{ChunkOptions, TextSource};
use crunch_model::LoraSpec;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `lowrank`: a LoRA adapter that corrects the quantization error of `quant` against `base`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LowrankJob {
    /// The reference model (GGUF; F32/F16/BF16, or the quantized file the others were made from).
    pub base: PathBuf,
    /// The quantized model to correct (made from `base`).
    pub quant: PathBuf,
    /// Output adapter (GGUF, `general.type = adapter`).
    pub output: PathBuf,
    /// The same rank for every tensor (or give `budget`).
    #[serde(default)]
    pub rank: Option<usize>,
    /// Bytes of adapter data to spread over the tensors (`64MiB`, `5000000`), by what each rank
    /// buys in relative output error per byte.
    #[serde(default)]
    pub budget: Option<String>,
    /// Calibration text: the SVD is whitened by the layers' input activations (else plain SVD of
    /// the error); `random:N[:SEED]` for random vocabulary tokens.
    #[serde(default)]
    pub text: Option<PathBuf>,
    /// Only tensors whose GGUF name matches this regular expression.
    #[serde(default)]
    pub tensors: Option<String>,
    /// The largest rank a budget gives one tensor.
    #[serde(default = "default_max_rank")]
    pub max_rank: usize,
    /// Type of the adapter's tensors: f32, f16, bf16 or q8_0.
    #[serde(default = "default_adapter_type")]
    pub adapter_type: String,
    /// Calibration tokens per chunk.
    #[serde(default = "CalibrationSpec::default_ctx")]
    pub ctx: usize,
    /// Calibration chunks.
    #[serde(default = "default_lowrank_chunks")]
    pub chunks: usize,
    /// Skip this many chunks of the text first (keep evaluation text held out).
    #[serde(default)]
    pub skip_chunks: usize,
    /// Dampening of the activations' second moment, relative to its mean diagonal.
    #[serde(default = "default_damp")]
    pub damp: f64,
}

fn default_max_rank() -> usize {
    lowrank::DEFAULT_MAX_RANK
}
fn default_adapter_type() -> String {
    lowrank::DEFAULT_ADAPTER_TYPE.into()
}
fn default_lowrank_chunks() -> usize {
    lowrank::DEFAULT_CHUNKS
}
fn default_damp() -> f64 {
    lowrank::DEFAULT_DAMP
}

/// What `lowrank` did.
#[derive(Clone, Debug, Serialize)]
pub struct LowrankOutcome {
    pub result: LowrankReport,
    pub run_id: Option<i64>,
}

/// `merge`: adapters folded into a model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MergeJob {
    /// The model the adapters were made for (GGUF).
    pub model: PathBuf,
    /// Adapters and their scales, applied in order.
    pub adapters: Vec<LoraSpec>,
    /// Output GGUF.
    pub output: PathBuf,
    /// Quantize in the same pass to this preset or type (`Q4_K_M`, `Q8_0`); default: adapted
    /// float tensors keep their type, adapted quantized tensors become F32, the rest is copied.
    #[serde(rename = "type", default)]
    pub ftype: Option<String>,
}

/// What `merge` did.
#[derive(Clone, Debug, Serialize)]
pub struct MergeOutcome {
    pub result: MergeReport,
    pub run_id: Option<i64>,
}

/// The lowrank options a job asks for, checked.
///
/// # Errors
/// Neither or both of `rank` and `budget`, a bad budget, pattern, type or chunk size.
pub fn lowrank_options(j: &LowrankJob) -> Result<LowrankOptions> {
    let ranks = lowrank::rank_choice(j.rank, j.budget.as_deref(), "lowrank")?;
    let ty = lowrank::adapter_type(&j.adapter_type, "lowrank.adapter_type")?;
    let tensors = j
        .tensors
        .as_deref()
        .map(|p| regex::Regex::new(p).map_err(|e| Error::field("lowrank.tensors", format!("{p:?}: {e}"))))
        .transpose()?;
    if j.ctx == 0 {
        return Err(Error::field("lowrank.ctx", "must be positive"));
    }
    if j.chunks == 0 {
        return Err(Error::field("lowrank.chunks", "must be positive"));
    }
    Ok(LowrankOptions {
        ranks,
        text: j.text.as_ref().map(|t| TextSource::parse(&t.to_string_lossy())),
        chunks: ChunkOptions { n_ctx: j.ctx, n_chunks: Some(j.chunks), skip: j.skip_chunks, shuffle_seed: None },
        tensors,
        max_rank: j.max_rank,
        ty,
        damp: j.damp,
        field: "lowrank".into(),
    })
}

pub(crate) fn run_lowrank(j: &LowrankJob, ctx: &RunCtx) -> Result<LowrankOutcome> {
    let o = lowrank_options(j)?;
    refuse_overwrite("lowrank.output", &j.base, &j.output)?;
    refuse_overwrite("lowrank.output", &j.quant, &j.output)?;
    let params = serde_json::json!({
        "rank": j.rank, "budget": j.budget, "text": j.text, "tensors": j.tensors, "max_rank": j.max_rank,
        "adapter_type": j.adapter_type, "ctx": j.ctx, "chunks": j.chunks, "skip_chunks": j.skip_chunks, "damp": j.damp,
    });
    let label = match (j.rank, &j.budget) {
        (Some(r), _) => format!("rank {r}"),
        (_, Some(b)) => format!("budget {b}"),
        _ => String::new(),
    };
    let mut inputs: Vec<(&str, &Path)> = vec![("base", &j.base), ("model", &j.quant)];
    if let Some(t) = &j.text {
        inputs.push(("text", t));
    }
    let rec = Recorder::start("lowrank", ctx.registry.as_deref(), Some(label), params, &inputs);
    let res = lowrank::lowrank(&j.base, &j.quant, &j.output, &o, ctx.progress.as_ref(), &ctx.cancel);
    let (result, run_id) =
        rec.close(res, |r| vec![(metric::FILE_BYTES, r.file_bytes as f64), (metric::SECONDS, r.seconds)])?;
    Ok(LowrankOutcome { result, run_id })
}

pub(crate) fn run_merge(j: &MergeJob, ctx: &RunCtx) -> Result<MergeOutcome> {
    let quantize = match &j.ftype {
        None => None,
        Some(t) => {
            Some(crate::quantize::QuantizeOptions::new(t.parse().map_err(|e: String| Error::field("merge.type", e))?))
        }
    };
    refuse_overwrite("merge.output", &j.model, &j.output)?;
    for a in &j.adapters {
        refuse_overwrite("merge.output", &a.path, &j.output)?;
    }
    let params = serde_json::json!({ "adapters": j.adapters, "type": j.ftype });
    let mut inputs: Vec<(&str, &Path)> = vec![("model", &j.model)];
    for a in &j.adapters {
        inputs.push(("adapter", &a.path));
    }
    let rec = Recorder::start("merge", ctx.registry.as_deref(), j.ftype.clone(), params, &inputs);
    let res = merge::merge(&j.model, &j.adapters, &j.output, quantize, ctx.progress.as_ref(), &ctx.cancel);
    let (result, run_id) = rec.close(res, |r| {
        vec![
            (metric::FILE_BYTES, r.result.file_bytes as f64),
            (metric::BPW, r.result.bpw),
            (metric::SECONDS, r.result.seconds),
        ]
    })?;
    Ok(MergeOutcome { result, run_id })
}
