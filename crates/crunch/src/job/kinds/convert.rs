//! The `convert` job: a Hugging Face folder to GGUF.

use super::{ConvertJob, ConvertOutcome};
use crate::convert::{self, ConvertOptions, MappingRow, VocabSummary};
use crate::error::{Error, Result};
use crate::job::record::{metric, Recorder};
use crate::job::RunCtx;
use crate::quantize::Ftype;
use crunch_core::safetensors::{Dtype, SafetensorsModel};
use serde::Serialize;
use std::path::Path;

/// What a conversion maps (the whole plan for a dry run).
#[derive(Clone, Debug, Serialize)]
pub struct ConvertSummary {
    pub architecture: String,
    pub gguf_architecture: String,
    #[serde(rename = "type")]
    pub ftype: String,
    pub base_type: String,
    pub tokenizer: VocabSummary,
    pub total_params: u64,
    pub src_bytes: u64,
    pub dst_bytes: u64,
    pub tensors: Vec<MappingRow>,
}

/// `auto`: the checkpoint's own float type, as its first matrix is stored (so a folder written
/// by `export` converts back to the same tensors). llama.cpp's `auto` differs for f32
/// checkpoints, which it halves to f16.
fn auto_type(dir: &Path) -> Result<Ftype> {
    let m = SafetensorsModel::open(dir)?;
    let first = m.tensors().iter().find(|t| t.shape.len() >= 2).map(|t| t.dtype);
    Ok(match first {
        Some(Dtype::BF16) => Ftype::BF16,
        Some(Dtype::F32) => Ftype::F32,
        _ => Ftype::F16,
    })
}

pub(crate) fn run(j: &ConvertJob, ctx: &RunCtx) -> Result<ConvertOutcome> {
    let ftype = if j.ftype.eq_ignore_ascii_case("auto") {
        auto_type(&j.model)?
    } else {
        j.ftype.parse::<Ftype>().map_err(|e| Error::field("convert.type", e))?
    };
    let mut opts = ConvertOptions::new(ftype);
    opts.pre = j.pre.clone();
    opts.name = j.name.clone();
    let plan = convert::plan(&j.model, &opts)?;
    let summary = ConvertSummary {
        architecture: plan.config.hf_arch.clone(),
        gguf_architecture: plan.config.arch.gguf_name().to_string(),
        ftype: plan.ftype.name().to_string(),
        base_type: plan.base_ftype.name().to_string(),
        tokenizer: plan.vocab.clone(),
        total_params: plan.total_params,
        src_bytes: plan.src_bytes(),
        dst_bytes: plan.dst_bytes(),
        tensors: plan.rows(),
    };
    if j.dry_run {
        return Ok(ConvertOutcome { plan: summary, result: None, run_id: None });
    }
    let out_abs = std::path::absolute(&j.output).unwrap_or_else(|_| j.output.clone());
    for input in plan.inputs() {
        let in_abs = input.canonicalize().unwrap_or(input.clone());
        if out_abs.canonicalize().ok().as_ref() == Some(&in_abs) || out_abs == in_abs {
            return Err(Error::field("convert.output", format!("{} is one of the input files", j.output.display())));
        }
    }
    let params = serde_json::json!({ "type": plan.ftype.name(), "pre": j.pre, "name": j.name });
    let rec = Recorder::start(
        "convert",
        ctx.registry.as_deref(),
        Some(plan.ftype.name().to_string()),
        params,
        &[("model", &j.model)],
    );
    let res = convert::execute(&plan, &j.output, ctx.progress.as_ref(), &ctx.cancel);
    if res.is_ok() {
        rec.output(&j.output);
    }
    let (report, run_id) = rec.close(res, |r| {
        vec![
            (metric::FILE_BYTES, r.file_bytes as f64),
            (metric::SECONDS, r.seconds),
            (metric::PEAK_RSS_BYTES, r.peak_rss_bytes as f64),
        ]
    })?;
    Ok(ConvertOutcome { plan: summary, result: Some(report), run_id })
}
