//! The `export` job: GGUF to a Hugging Face folder, optionally with sparse linear weights; a GGUF
//! LoRA adapter (with `base`) to a PEFT adapter folder.

use super::{ExportJob, ExportOutcome};
use crate::error::{Error, Result};
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
    let opts = ExportOptions { dtype, max_shard_bytes: j.max_shard_bytes, sparse };
    let params = serde_json::json!({
        "dtype": j.dtype,
        "max_shard_bytes": j.max_shard_bytes,
        "sparse": sparse.map(SparseFormat::name),
    });
    let rec = Recorder::start("export", ctx.registry.as_deref(), Some(j.dtype.clone()), params, &[("model", &j.model)]);
    let res = export::export(&input, &j.output, &opts, ctx.progress.as_ref(), &ctx.cancel);
    let (result, run_id) =
        rec.close(res, |r| vec![(metric::FILE_BYTES, r.tensor_bytes as f64), (metric::SECONDS, r.seconds)])?;
    Ok(ExportOutcome { result, run_id })
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
