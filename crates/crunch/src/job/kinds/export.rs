//! The `export` job: GGUF to a Hugging Face folder, optionally with sparse linear weights; a GGUF
//! LoRA adapter (with `base`) to a PEFT adapter folder.

use super::{ExportJob, ExportOutcome};
use crate::error::{Error, Result};
use crate::export::quantized::{HfFormat, HfMethod, QuantExport};
use crate::export::sparse::SparseFormat;
use crate::export::{self, ExportOptions};
use crate::job::record::{metric, Recorder};
use crate::job::RunCtx;
use crate::peft;
use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;

pub(crate) fn run(j: &ExportJob, ctx: &RunCtx) -> Result<ExportOutcome> {
    let dtype = match j.dtype.to_ascii_lowercase().as_str() {
        "auto" => None,
        "f16" | "float16" => Some(GgmlType::F16),
        "bf16" | "bfloat16" => Some(GgmlType::BF16),
        "f32" | "float32" => Some(GgmlType::F32),
        other => return Err(Error::field("export.dtype", format!("{other:?}: choose auto, f16, bf16 or f32"))),
    };
    if j.max_shard_bytes == 0 {
        return Err(Error::field("export.max_shard_bytes", "must be positive"));
    }
    let sparse = match j.sparse.as_deref() {
        None => None,
        Some(s) => Some(SparseFormat::parse(s).ok_or_else(|| {
            Error::field("export.sparse", format!("{s:?}: choose bitmask (sparse-bitmask) or 2:4 (sparse-24-bitmask)"))
        })?),
    };
    let input = GgufFile::open(&j.model)?;
    if crunch_model::lora::is_adapter(input.metadata()) {
        return run_adapter(j, input, dtype, ctx);
    }
    if j.base.is_some() {
        return Err(Error::field(
            "export.base",
            format!(
                "{} is not a LoRA adapter (general.type); a base model is only given for adapters",
                j.model.display()
            ),
        ));
    }
    let quant = quant_export(j)?;
    if quant.is_some() && sparse.is_some() {
        return Err(Error::field("export.sparse", "a sparse and a quantized format cannot be combined"));
    }
    let opts = ExportOptions { dtype, max_shard_bytes: j.max_shard_bytes, sparse, quant: quant.clone() };
    let params = serde_json::json!({
        "dtype": j.dtype,
        "max_shard_bytes": j.max_shard_bytes,
        "sparse": sparse.map(SparseFormat::name),
        "format": quant.as_ref().map(|q| q.format.name()),
        "bits": quant.as_ref().map(|q| q.bits),
        "group_size": quant.as_ref().map(|q| q.group_size),
        "sym": quant.as_ref().map(|q| q.sym),
        "method": j.calibration.as_ref().map(|c| c.method.to_string()).or_else(|| j.method.clone()),
    });
    let label = match &quant {
        Some(q) => format!(
            "{} {}",
            q.format.name(),
            j.calibration
                .as_ref()
                .map_or_else(|| j.method.clone().unwrap_or_else(|| "rtn".into()), |c| c.method.to_string())
        ),
        None => j.dtype.clone(),
    };
    let rec = Recorder::start("export", ctx.registry.as_deref(), Some(label), params, &[("model", &j.model)]);
    let res = match (&quant, &j.calibration) {
        (Some(q), Some(c)) => calibrated_export(&input, j, q, c, &opts, ctx),
        _ => export::export(&input, &j.output, &opts, ctx.progress.as_ref(), &ctx.cancel),
    };
    let (result, run_id) =
        rec.close(res, |r| vec![(metric::FILE_BYTES, r.tensor_bytes as f64), (metric::SECONDS, r.seconds)])?;
    Ok(ExportOutcome { result, run_id })
}

/// The quantized format a job asks for, checked; `None` for a plain export.
fn quant_export(j: &ExportJob) -> Result<Option<QuantExport>> {
    let Some(f) = &j.format else {
        let set = [
            ("bits", j.bits.is_some()),
            ("group_size", j.group_size.is_some()),
            ("asym", j.asym.is_some()),
            ("double_quant", j.double_quant.is_some()),
            ("method", j.method.is_some()),
            ("calibration", j.calibration.is_some()),
            ("reference", j.reference.is_some()),
        ];
        if let Some((k, _)) = set.iter().find(|(_, s)| *s) {
            return Err(Error::field(format!("export.{k}"), "only applies with a quantized format (`format`)"));
        }
        return Ok(None);
    };
    let (format, fixed_bits) = HfFormat::parse(f).ok_or_else(|| {
        Error::field(
            "export.format",
            format!("{f:?}: choose nf4, fp4, bnb-int8, gptq, awq, compressed-tensors, int4 or int8"),
        )
    })?;
    let mut q = QuantExport::new(format);
    if let Some(b) = fixed_bits {
        q.bits = b;
        if let Some(asked) = j.bits.filter(|&x| x != b) {
            return Err(Error::field("export.bits", format!("{f} is {b}-bit; {asked} bits were asked")));
        }
    } else if let Some(b) = j.bits {
        q.bits = b;
    }
    if let Some(g) = j.group_size {
        q.group_size = g;
    }
    if let Some(d) = j.double_quant {
        if !matches!(format, HfFormat::Nf4 | HfFormat::Fp4) {
            return Err(Error::field("export.double_quant", format!("only bitsandbytes 4-bit has it, not {f}")));
        }
        q.double_quant = d;
    }
    q.method = match (j.method.as_deref().map(str::to_ascii_lowercase).as_deref(), &j.calibration) {
        (None | Some("rtn"), None) => HfMethod::Rtn,
        (Some("hqq"), None) => HfMethod::Hqq,
        (None, Some(_)) => HfMethod::Calibrated,
        (Some(m), Some(_)) => {
            return Err(Error::field("export.method", format!("{m:?} and a calibration were both given; choose one")))
        }
        (Some(m), None) => {
            return Err(Error::field(
                "export.method",
                format!("{m:?}: choose rtn or hqq (gptq and awq need calibration text)"),
            ))
        }
    };
    // Zero points: AWQ always; HQQ optimises them, so it implies them unless told otherwise.
    q.sym = match j.asym {
        Some(a) => !a,
        None => format != HfFormat::Awq && q.method != HfMethod::Hqq,
    };
    q.reference.clone_from(&j.reference);
    q.check()?;
    Ok(Some(q))
}

/// GPTQ / AWQ onto the integer grid, then the quantized export of their results.
fn calibrated_export(
    input: &GgufFile,
    j: &ExportJob,
    q: &QuantExport,
    c: &super::CalibrationSpec,
    opts: &ExportOptions,
    ctx: &RunCtx,
) -> Result<export::ExportReport> {
    let spec = q.int_spec().ok_or_else(|| {
        Error::field(
            "export.calibration",
            format!(
                "{} is not an integer format; GPTQ and AWQ calibrate gptq, awq and compressed-tensors",
                q.format.name()
            ),
        )
    })?;
    let mo = super::quantize::method_options(c)?
        .ok_or_else(|| Error::field("export.calibration.method", "choose gptq, awq or awq,gptq"))?;
    let file = std::sync::Arc::new(GgufFile::open(&j.model)?);
    let cal = crate::calibrate::method::calibrate_int(file, spec, &mo, ctx.progress.as_ref(), &ctx.cancel)?;
    let cal = export::quantized::Calibrated { groups: cal.groups, values: cal.values };
    export::quantized::export(input, &j.output, opts, q, Some(&cal), ctx.progress.as_ref(), &ctx.cancel)
}

/// A GGUF LoRA adapter to a PEFT adapter folder against `base`.
fn run_adapter(j: &ExportJob, input: GgufFile, dtype: Option<GgmlType>, ctx: &RunCtx) -> Result<ExportOutcome> {
    let base_path = j.base.as_ref().ok_or_else(|| {
        Error::field(
            "export.base",
            format!(
                "{} is a LoRA adapter: name its base model (GGUF file or Hugging Face folder), which gives the module \
                 names, the attention heads of the Q/K row order and the shapes to check",
                j.model.display()
            ),
        )
    })?;
    if j.sparse.is_some() {
        return Err(Error::field("export.sparse", "a LoRA adapter is exported dense (PEFT's layout)"));
    }
    let adapter = crunch_model::lora::LoraAdapter::from_gguf(std::sync::Arc::new(input))
        .map_err(|source| Error::Model { context: j.model.display().to_string(), source })?;
    let base = peft::BaseModel::open(base_path)?;
    let params = serde_json::json!({ "dtype": j.dtype, "adapter": "peft" });
    let rec = Recorder::start(
        "export",
        ctx.registry.as_deref(),
        Some(format!("lora {}", j.dtype)),
        params,
        &[("model", &j.model), ("base", base_path)],
    );
    let res = peft::export_peft(&adapter, &base, &j.output, dtype, ctx.progress.as_ref(), &ctx.cancel);
    let (result, run_id) =
        rec.close(res, |r| vec![(metric::FILE_BYTES, r.tensor_bytes as f64), (metric::SECONDS, r.seconds)])?;
    Ok(ExportOutcome { result, run_id })
}
