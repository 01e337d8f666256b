//! Carrying out a plan: stream tensor by tensor from the memory-mapped input, convert in slabs of
//! rows on all cores, write to a temp file, rename into place at the end.

use super::plan::Plan;
use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};
use crunch_core::gguf::{GgufFile, GgufWriter, Metadata, TensorSpec, Value};
use crunch_core::GgmlType;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// Importance weights per tensor name (one value per column).
pub type ImportanceLookup<'a> = &'a (dyn Fn(&str) -> Option<Vec<f32>> + Sync);

/// New contents for a tensor, from a calibrated method (GPTQ, AWQ).
#[derive(Clone, Debug)]
pub enum Replacement {
    /// Data already in the planned destination type (e.g. GPTQ's packed blocks).
    Bytes(Vec<u8>),
    /// Modified weights (e.g. AWQ-scaled) to convert to the destination type as usual.
    F32(Vec<f32>),
}

/// Replacement contents per tensor name (`None`: use the input's data).
pub type ReplacementLookup<'a> = &'a (dyn Fn(&str) -> Result<Option<Replacement>> + Sync);

/// What besides the plan shapes the output.
#[derive(Clone, Copy, Default)]
pub struct ExecOptions<'a> {
    pub importance: Option<ImportanceLookup<'a>>,
    pub replacements: Option<ReplacementLookup<'a>>,
    /// Metadata appended after `general.file_type` (llama-quantize's `quantize.imatrix.*` keys).
    pub extra_metadata: &'a [(String, Value)],
    /// Quantize the tensors whose type has a scale and a minimum per block (Q4_1, Q5_1) with
    /// HQQ's half-quadratic zero point instead of the type's own rule.
    pub hqq: bool,
}

/// What a finished quantization reports.
#[derive(Clone, Debug, Serialize)]
pub struct QuantizeReport {
    pub output: String,
    pub sha256: String,
    pub src_bytes: u64,
    pub dst_bytes: u64,
    pub file_bytes: u64,
    pub bpw: f64,
    pub seconds: f64,
}

/// The output metadata: the input's, without split keys, with `general.quantization_version`
/// and `general.file_type` moved to the end as llama.cpp does.
pub fn output_metadata(input: &Metadata, file_type: u32) -> Metadata {
    let mut m = input.clone();
    for k in ["split.no", "split.count", "split.tensors.count", "general.quantization_version", "general.file_type"] {
        m.remove(k);
    }
    m.set("general.quantization_version", Value::U32(2));
    m.set("general.file_type", Value::U32(file_type));
    m
}

/// Convert one tensor's bytes from `src_type` to `dst_type`, appending to `out`.
///
/// # Errors
/// Unsupported types or sizes, naming the tensor.
pub fn convert_tensor(
    name: &str,
    src: &[u8],
    src_type: GgmlType,
    dst_type: GgmlType,
    row_len: usize,
    importance: Option<&[f32]>,
    out: &mut Vec<u8>,
) -> Result<()> {
    convert_tensor_with(name, src, src_type, dst_type, row_len, importance, false, out)
}

/// [`convert_tensor`], with HQQ's quantizer where `hqq` is set and the type has one.
#[allow(clippy::too_many_arguments)]
fn convert_tensor_with(
    name: &str,
    src: &[u8],
    src_type: GgmlType,
    dst_type: GgmlType,
    row_len: usize,
    importance: Option<&[f32]>,
    hqq: bool,
    out: &mut Vec<u8>,
) -> Result<()> {
    let qerr = |source| Error::Quant { tensor: name.to_string(), source };
    let hqq = hqq && crunch_quant::hqq_quantizer(dst_type).is_some();
    if src_type == dst_type && !hqq {
        out.extend_from_slice(src);
        return Ok(());
    }
    let dst_row = dst_type.row_size(row_len).ok_or_else(|| Error::Invalid(format!("tensor {name}: bad row length")))?;
    let n_rows = src_type.row_size(row_len).and_then(|r| src.len().checked_div(r)).unwrap_or(0);
    let start = out.len();
    out.resize(start + n_rows * dst_row, 0);
    // fused per small group of rows on all cores: no f32 copy of the tensor is made
    if hqq {
        return crunch_quant::convert_rows_hqq(src_type, src, dst_type, row_len, &mut out[start..]).map_err(qerr);
    }
    crunch_quant::convert_rows(src_type, src, dst_type, row_len, importance, &mut out[start..]).map_err(qerr)
}

/// Write `plan` for `input` to `output`.
///
/// # Errors
/// I/O, unsupported types, cancellation; nothing is left at `output` on error.
pub fn execute(
    input: &GgufFile,
    plan: &Plan,
    output: &Path,
    importance: Option<ImportanceLookup>,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<QuantizeReport> {
    execute_with(input, plan, output, ExecOptions { importance, ..Default::default() }, progress, cancel)
}

/// [`execute`] with calibrated replacements and extra metadata.
///
/// # Errors
/// As [`execute`]; a tensor whose type needs an importance matrix and has none (as llama.cpp
/// refuses); replacement data of the wrong size.
pub fn execute_with(
    input: &GgufFile,
    plan: &Plan,
    output: &Path,
    opts: ExecOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<QuantizeReport> {
    let t0 = Instant::now();
    let importance = opts.importance;
    for t in &plan.tensors {
        if t.converts() && t.requires_imatrix && importance.and_then(|f| f(&t.name)).is_none() {
            return Err(Error::field(
                "quantize.imatrix",
                format!("tensor {}: {} needs an importance matrix with an entry for it", t.name, t.dst_type),
            ));
        }
        if t.converts() {
            for ty in [t.src_type, t.dst_type] {
                if crunch_quant::kernels(ty).is_none() {
                    return Err(Error::Plan(format!(
                        "tensor {}: crunch cannot convert {} yet (supported: {})",
                        t.name,
                        ty,
                        crunch_quant::supported_types().iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
    }
    let mut meta = output_metadata(input.metadata(), plan.ftype.code());
    for (k, v) in opts.extra_metadata {
        meta.set(k, v.clone());
    }
    let specs: Vec<TensorSpec> = plan
        .tensors
        .iter()
        .map(|t| TensorSpec { name: t.name.clone(), ty: t.dst_type, dims: t.dims.clone() })
        .collect();
    let mut writer = GgufWriter::create(output, meta, &specs)?;
    progress.start("quantize", plan.src_bytes);
    let mut done = 0u64;
    let mut buf = Vec::new();
    for t in &plan.tensors {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let info = input.tensor(&t.name).ok_or_else(|| Error::Invalid(format!("tensor {} vanished", t.name)))?;
        let src = input.tensor_data(info);
        buf.clear();
        let imp = if t.converts() { importance.and_then(|f| f(&t.name)) } else { None };
        let replacement = match opts.replacements {
            Some(r) => r(&t.name)?,
            None => None,
        };
        match replacement {
            None if t.converts() => convert_tensor_with(
                &t.name,
                src,
                t.src_type,
                t.dst_type,
                t.dims[0] as usize,
                imp.as_deref(),
                opts.hqq,
                &mut buf,
            )?,
            None => convert_tensor(&t.name, src, t.src_type, t.dst_type, t.dims[0] as usize, None, &mut buf)?,
            Some(Replacement::Bytes(b)) => buf = b,
            Some(Replacement::F32(v)) => {
                if v.len() as u64 != t.n_elements() {
                    return Err(Error::Invalid(format!(
                        "tensor {}: replacement has {} values, the tensor {}",
                        t.name,
                        v.len(),
                        t.n_elements()
                    )));
                }
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                convert_tensor_with(
                    &t.name,
                    &bytes,
                    GgmlType::F32,
                    t.dst_type,
                    t.dims[0] as usize,
                    imp.as_deref(),
                    opts.hqq && t.converts(),
                    &mut buf,
                )?;
            }
        }
        writer.write_tensor(&t.name, &buf)?;
        input.release_tensor(info);
        done += t.src_bytes;
        progress.advance(done, &format!("{} {} -> {}", t.name, t.src_type, t.dst_type));
    }
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    let sha256 = writer.finish()?;
    let file_bytes = std::fs::metadata(output).map_err(|e| Error::io(output, e))?.len();
    progress.finish(&format!("wrote {}", output.display()));
    Ok(QuantizeReport {
        output: output.display().to_string(),
        sha256,
        src_bytes: plan.src_bytes,
        dst_bytes: plan.dst_bytes,
        file_bytes,
        bpw: plan.bpw(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}
