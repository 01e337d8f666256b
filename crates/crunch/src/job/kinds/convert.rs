//! The `convert` job: a Hugging Face folder to GGUF, or a PEFT adapter folder to a GGUF LoRA
//! adapter (with `base`).

use super::{ConvertJob, ConvertOutcome};
use crate::convert::{self, ConvertOptions, MappingRow, VocabSummary};
use crate::error::{Error, Result};
use crate::job::record::{metric, Recorder};
use crate::job::RunCtx;
use crate::peft;
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
    /// The tokenizer found (none for a PEFT adapter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<VocabSummary>,
    /// What a PEFT adapter folder holds (none for a model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<peft::AdapterSummary>,
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
    if peft::is_peft_dir(&j.model) {
        return run_peft(j, ctx);
    }
    if j.base.is_some() {
        return Err(Error::field(
            "convert.base",
            format!(
                "{} is not a PEFT adapter folder ({} + {}); a base model is only given for adapters",
                j.model.display(),
                peft::CONFIG_FILE,
                peft::WEIGHTS_FILE
            ),
        ));
    }
    let ftype = if j.ftype.eq_ignore_ascii_case("auto") {
        auto_type(&j.model)?
    } else {
        j.ftype.parse::<Ftype>().map_err(|e| Error::field("convert.type", e))?
    };
    let mut opts = ConvertOptions::new(ftype);
    opts.keep_quantized = j.ftype.eq_ignore_ascii_case("auto");
    opts.pre = j.pre.clone();
    opts.name = j.name.clone();
    let plan = convert::plan(&j.model, &opts)?;
    let summary = ConvertSummary {
        architecture: plan.config.hf_arch.clone(),
        gguf_architecture: plan.config.arch.gguf_name().to_string(),
        ftype: plan.ftype.name().to_string(),
        base_type: plan.base_ftype.name().to_string(),
        tokenizer: Some(plan.vocab.clone()),
        adapter: None,
        total_params: plan.total_params,
        src_bytes: plan.src_bytes(),
        dst_bytes: plan.dst_bytes(),
        tensors: plan.rows(),
    };
    if j.dry_run {
        return Ok(ConvertOutcome { plan: summary, result: None, run_id: None });
    }
    refuse_input_as_output(&j.output, &plan.inputs())?;
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

fn refuse_input_as_output(output: &Path, inputs: &[std::path::PathBuf]) -> Result<()> {
    let out_abs = std::path::absolute(output).unwrap_or_else(|_| output.to_path_buf());
    for input in inputs {
        let in_abs = input.canonicalize().unwrap_or(input.clone());
        if out_abs.canonicalize().ok().as_ref() == Some(&in_abs) || out_abs == in_abs {
            return Err(Error::field("convert.output", format!("{} is one of the input files", output.display())));
        }
    }
    Ok(())
}

/// A PEFT adapter folder to a GGUF LoRA adapter against `base`.
fn run_peft(j: &ConvertJob, ctx: &RunCtx) -> Result<ConvertOutcome> {
    let base_path = j.base.as_ref().ok_or_else(|| {
        Error::field(
            "convert.base",
            format!(
                "{} is a PEFT adapter folder: name its base model (GGUF file or Hugging Face folder), which gives the \
                 architecture, the attention heads of the Q/K row order and the shapes to check",
                j.model.display()
            ),
        )
    })?;
    let ty = peft::to_gguf::parse_type(&j.ftype).ok_or_else(|| {
        Error::field(
            "convert.type",
            format!("{:?}: a LoRA adapter is written as auto, f32, f16, bf16 or q8_0", j.ftype),
        )
    })?;
    if j.pre.is_some() {
        return Err(Error::field("convert.pre", "a LoRA adapter has no tokenizer"));
    }
    if j.name.is_some() {
        return Err(Error::field(
            "convert.name",
            "a LoRA adapter's metadata is exactly its architecture, type and alpha",
        ));
    }
    let base = peft::BaseModel::open(base_path)?;
    let plan = peft::plan_gguf(&j.model, base, ty)?;
    let summary = ConvertSummary {
        architecture: format!("PEFT LoRA adapter ({})", plan.base.arch.hf_name()),
        gguf_architecture: plan.base.arch.gguf_name().to_string(),
        ftype: plan.ty.name().to_string(),
        base_type: plan.ty.name().to_string(),
        tokenizer: None,
        adapter: Some(plan.summary()),
        total_params: plan.n_params(),
        src_bytes: plan.src_bytes(),
        dst_bytes: plan.dst_bytes(),
        tensors: plan.rows(),
    };
    if j.dry_run {
        return Ok(ConvertOutcome { plan: summary, result: None, run_id: None });
    }
    refuse_input_as_output(&j.output, &plan.inputs())?;
    let params = serde_json::json!({ "type": plan.ty.name(), "adapter": "peft" });
    let rec = Recorder::start(
        "convert",
        ctx.registry.as_deref(),
        Some(format!("lora {}", plan.ty.name())),
        params,
        &[("model", &plan.dir.join(peft::WEIGHTS_FILE)), ("base", base_path)],
    );
    let res = peft::write_gguf(&plan, &j.output, ctx.progress.as_ref(), &ctx.cancel);
    if res.is_ok() {
        rec.output(&j.output);
    }
    let (report, run_id) =
        rec.close(res, |r| vec![(metric::FILE_BYTES, r.file_bytes as f64), (metric::SECONDS, r.seconds)])?;
    Ok(ConvertOutcome { plan: summary, result: Some(report), run_id })
}
