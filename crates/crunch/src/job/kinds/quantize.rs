//! The `quantize` job: plan, optional imatrix and GPTQ/AWQ calibration, streaming write, record.

use super::{CalibrationSpec, QuantizeJob, QuantizeOutcome};
use crate::calibrate::{self, Method, MethodOptions};
use crate::error::{Error, Result};
use crate::job::record::{metric, Recorder};
use crate::job::{refuse_overwrite, RunCtx};
use crate::quantize::{self, Ftype, QuantizeOptions};
use crunch_calib::awq::AwqOptions;
use crunch_calib::gptq::GptqOptions;
use crunch_calib::text::{ChunkOptions, TextSource};
use crunch_core::gguf::{GgufFile, Value};
use crunch_core::GgmlType;
use std::path::{Path, PathBuf};

/// An importance matrix and the metadata that records it in the output.
type LoadedImatrix = (crunch_calib::Imatrix, Vec<(String, Value)>);

/// The imatrix, filtered by `include_weights` / `exclude_weights`, and the
/// `quantize.imatrix.*` metadata llama-quantize writes with it.
fn load_imatrix(j: &QuantizeJob, input: &GgufFile) -> Result<Option<LoadedImatrix>> {
    let Some(path) = &j.imatrix else { return Ok(None) };
    let mut m = crunch_calib::Imatrix::load(path, 512).map_err(|e| Error::field("quantize.imatrix", e.to_string()))?;
    calibrate::imatrix::check_model(&m, input)?;
    m.entries.retain(|name, _| !j.exclude_weights.iter().any(|x| name.contains(x.as_str())));
    if !j.include_weights.is_empty() {
        m.entries.retain(|name, _| j.include_weights.iter().any(|x| name.contains(x.as_str())));
    }
    let file: String = path.display().to_string().chars().take(127).collect();
    let mut md = vec![("quantize.imatrix.file".to_string(), Value::string(file))];
    if let Some(d) = m.datasets.first() {
        md.push(("quantize.imatrix.dataset".into(), Value::string(d.chars().take(127).collect::<String>())));
    }
    md.push(("quantize.imatrix.entries_count".into(), Value::U32(m.entries.len() as u32)));
    if m.chunk_count > 0 {
        md.push(("quantize.imatrix.chunks_count".into(), Value::U32(m.chunk_count)));
    }
    Ok(Some((m, md)))
}

pub(crate) fn method_options(c: &CalibrationSpec) -> Result<Option<MethodOptions>> {
    let field = "quantize.calibration.method";
    let method = c.method;
    match method {
        Method::Rtn => return Ok(None),
        Method::Imatrix => {
            return Err(Error::field(
                field,
                "imatrix is not a calibration run: give the importance matrix as `imatrix`",
            ))
        }
        _ => {}
    }
    if c.ctx == 0 {
        return Err(Error::field("quantize.calibration.ctx", "must be positive"));
    }
    Ok(Some(MethodOptions {
        method,
        text: TextSource::parse(&c.text.to_string_lossy()),
        chunks: ChunkOptions { n_ctx: c.ctx, n_chunks: Some(c.chunks), skip: 0, shuffle_seed: c.seed },
        gptq: GptqOptions { damp: c.damp, block: c.gptq_block, act_order: c.act_order, ..Default::default() },
        awq: AwqOptions { grid: c.awq_grid, ..Default::default() },
        prune: None,
    }))
}

fn parse_type(s: &str, field: &str) -> Result<GgmlType> {
    s.parse::<GgmlType>().map_err(|_| Error::field(field, format!("unknown tensor type {s:?}")))
}

/// The quantize options a job asks for.
///
/// # Errors
/// An unknown preset or type, a malformed `PATTERN=TYPE` rule.
pub fn options(j: &QuantizeJob) -> Result<QuantizeOptions> {
    let ftype: Ftype = j.ftype.parse().map_err(|e: String| Error::field("quantize.type", e))?;
    let mut o = QuantizeOptions::new(ftype);
    o.output_tensor_type =
        j.output_tensor_type.as_deref().map(|s| parse_type(s, "quantize.output_tensor_type")).transpose()?;
    o.token_embedding_type =
        j.token_embedding_type.as_deref().map(|s| parse_type(s, "quantize.token_embedding_type")).transpose()?;
    o.leave_output_tensor = j.leave_output_tensor;
    o.pure = j.pure;
    o.allow_requantize = j.allow_requantize;
    for spec in &j.tensor_types {
        let field = "quantize.tensor_types";
        let (pat, ty) =
            spec.rsplit_once('=').ok_or_else(|| Error::field(field, format!("{spec:?}: expected PATTERN=TYPE")))?;
        let re = regex::Regex::new(pat).map_err(|e| Error::field(field, format!("{spec:?}: bad pattern: {e}")))?;
        o.tensor_types.push((re, parse_type(ty, field)?));
    }
    Ok(o)
}

pub(crate) fn run(j: &QuantizeJob, ctx: &RunCtx) -> Result<QuantizeOutcome> {
    let mut opts = options(j)?;
    // A SeedLM container is decoded in memory: quantizing it is `seedlm decode`.
    let input = crunch_model::seedlm::open_gguf(&j.model)
        .map_err(|e| Error::Model { context: j.model.display().to_string(), source: e })?;
    let imatrix = load_imatrix(j, &input)?;
    opts.has_imatrix = imatrix.as_ref().is_some_and(|(m, _)| !m.entries.is_empty());
    let plan = quantize::build_plan(input.metadata(), input.tensors(), &opts)?;
    if j.dry_run {
        return Ok(QuantizeOutcome { plan, result: None, run_id: None });
    }
    refuse_overwrite("quantize.output", &j.model, &j.output)?;
    if j.hqq {
        if j.calibration.is_some() {
            return Err(Error::field("quantize.hqq", "HQQ chooses scales without data: not together with gptq or awq"));
        }
        if !plan.tensors.iter().any(|t| t.converts() && crunch_quant::hqq_quantizer(t.dst_type).is_some()) {
            return Err(Error::field(
                "quantize.hqq",
                format!(
                    "the {} plan has no Q4_1 or Q5_1 tensor, the types with a scale and a minimum HQQ serves",
                    j.ftype
                ),
            ));
        }
    }
    let method = j.calibration.as_ref().map(method_options).transpose()?.flatten();
    let params = serde_json::json!({ "type": j.ftype, "method": j.calibration.as_ref().map(|c| &c.method), "hqq": j.hqq,
                                      "pure": j.pure, "tensor_type": j.tensor_types, "imatrix": j.imatrix });
    let mut inputs: Vec<(&str, &Path)> = vec![("model", &j.model)];
    if let Some(m) = &j.imatrix {
        inputs.push(("imatrix", m));
    }
    let mut rec = Recorder::start("quantize", ctx.registry.as_deref(), Some(j.ftype.clone()), params, &inputs);
    let res = (|| {
        let scratch = PathBuf::from(format!("{}.calib-tmp", j.output.display()));
        let calibrated = match &method {
            Some(m) => Some(calibrate::calibrate_model(
                &j.model,
                &plan,
                imatrix.as_ref().map(|(m, _)| m),
                m,
                &scratch,
                ctx.progress.as_ref(),
                &ctx.cancel,
            )?),
            None => None,
        };
        let importance = |name: &str| {
            let base = imatrix.as_ref().and_then(|(m, _)| m.importance(name));
            match &calibrated {
                Some(c) => c.adjust_importance(name, base),
                None => base,
            }
        };
        let replace = |name: &str| calibrated.as_ref().map_or(Ok(None), |c| c.replacement(name));
        let extra = imatrix.as_ref().map(|(_, md)| md.clone()).unwrap_or_default();
        let exec = quantize::ExecOptions {
            importance: Some(&importance),
            replacements: calibrated.as_ref().map(|_| &replace as quantize::ReplacementLookup),
            extra_metadata: &extra,
            hqq: j.hqq,
        };
        quantize::execute_with(&input, &plan, &j.output, exec, ctx.progress.as_ref(), &ctx.cancel)
    })();
    if res.is_ok() {
        rec.output(&j.output);
        rec.plan(&plan, None);
    }
    let (report, run_id) = rec.close(res, |r| {
        vec![(metric::FILE_BYTES, r.file_bytes as f64), (metric::BPW, r.bpw), (metric::SECONDS, r.seconds)]
    })?;
    Ok(QuantizeOutcome { plan, result: Some(report), run_id })
}
