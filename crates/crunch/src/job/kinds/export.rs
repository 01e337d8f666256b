//! The `export` job: GGUF to a Hugging Face folder, optionally with sparse linear weights.

use super::{ExportJob, ExportOutcome};
use crate::error::{Error, Result};
use crate::export::sparse::SparseFormat;
use crate::export::{self, ExportOptions};
use crate::job::record::{metric, Recorder};
use crate::job::RunCtx;
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
