//! llama.cpp's GGUF-based imatrix format: metadata `general.type = "imatrix"`,
//! `imatrix.datasets` (strings), `imatrix.chunk_count` and `imatrix.chunk_size` (u32); for each
//! weight, in name order, an F32 tensor `NAME.in_sum2` (`[columns, matrices]`) with the raw sums
//! of squared activations and an F32 tensor `NAME.counts` (`[1, matrices]`) with token counts.

use super::{Imatrix, ImatrixEntry};
use crate::error::{CalibError, Result};
use crunch_core::gguf::{Array, GgufFile, GgufWriter, Metadata, TensorSpec, Value};
use crunch_core::GgmlType;
use std::collections::BTreeMap;
use std::path::Path;

pub const KEY_DATASETS: &str = "imatrix.datasets";
pub const KEY_CHUNK_COUNT: &str = "imatrix.chunk_count";
pub const KEY_CHUNK_SIZE: &str = "imatrix.chunk_size";

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

pub fn read(path: &Path) -> Result<Imatrix> {
    let file = GgufFile::open(path)?;
    let md = file.metadata();
    let u32_key = |k: &str| -> Result<Option<u32>> {
        match md.get(k) {
            None => Ok(None),
            Some(Value::U32(v)) => Ok(Some(*v)),
            Some(v) => Err(CalibError::bad(path, format!("{k} should be a u32, found {v}"))),
        }
    };
    let chunk_count = u32_key(KEY_CHUNK_COUNT)?;
    let chunk_size = u32_key(KEY_CHUNK_SIZE)?;
    let datasets = match md.get(KEY_DATASETS) {
        None => None,
        Some(Value::Array(Array::String(items))) => {
            Some(items.iter_str().filter_map(|s| s.map(str::to_string)).collect::<Vec<_>>())
        }
        Some(v) => {
            return Err(CalibError::bad(path, format!("{KEY_DATASETS} should be an array of strings, found {v}")))
        }
    };
    let (Some(chunk_count), Some(chunk_size), Some(datasets)) = (chunk_count, chunk_size, datasets) else {
        return Err(CalibError::bad(
            path,
            format!("missing imatrix metadata ({KEY_DATASETS}, {KEY_CHUNK_COUNT}, {KEY_CHUNK_SIZE}); is it an imatrix file?"),
        ));
    };
    /// Per tensor: its `in_sum2` and `counts` arrays, as they are found.
    type Parts = BTreeMap<String, (Option<Vec<f32>>, Option<Vec<f32>>)>;
    let mut parts: Parts = BTreeMap::new();
    for t in file.tensors() {
        let (base, is_sums) = if let Some(b) = t.name.strip_suffix(".in_sum2") {
            (b, true)
        } else if let Some(b) = t.name.strip_suffix(".counts") {
            (b, false)
        } else {
            continue;
        };
        if t.ty != GgmlType::F32 {
            return Err(CalibError::bad(path, format!("tensor {} is {}, expected F32", t.name, t.ty)));
        }
        let data = f32s(file.tensor_data(t));
        let slot = parts.entry(base.to_string()).or_default();
        if is_sums {
            slot.0 = Some(data);
        } else {
            slot.1 = Some(data);
        }
    }
    if parts.is_empty() {
        return Err(CalibError::bad(path, "no imatrix entries (no NAME.in_sum2 / NAME.counts tensors)"));
    }
    let mut entries = BTreeMap::new();
    for (name, (sums, counts)) in parts {
        let (Some(sums), Some(counts)) = (sums, counts) else {
            return Err(CalibError::bad(path, format!("{name}: in_sum2 and counts must both be present")));
        };
        if counts.is_empty() || sums.len() % counts.len() != 0 {
            return Err(CalibError::bad(
                path,
                format!("{name}: {} sums do not split into {} matrices", sums.len(), counts.len()),
            ));
        }
        if let Some(bad) = sums.iter().chain(&counts).find(|v| !v.is_finite() || **v < 0.0) {
            return Err(CalibError::bad(path, format!("{name}: invalid value {bad}")));
        }
        let counts = counts.iter().map(|&c| c.round() as i64).collect();
        entries.insert(name, ImatrixEntry { sums, counts });
    }
    Ok(Imatrix { entries, datasets, chunk_count, chunk_size })
}

/// `ggml_n_dims`-style shape: trailing ones dropped (at least one dimension).
fn dims(ne0: usize, ne1: usize) -> Vec<u64> {
    if ne1 == 1 {
        vec![ne0 as u64]
    } else {
        vec![ne0 as u64, ne1 as u64]
    }
}

pub fn write(m: &Imatrix, path: &Path) -> Result<()> {
    let mut md = Metadata::default();
    md.set("general.type", Value::string("imatrix"));
    md.set(KEY_DATASETS, Value::strings(&m.datasets));
    md.set(KEY_CHUNK_COUNT, Value::U32(m.chunk_count));
    md.set(KEY_CHUNK_SIZE, Value::U32(m.chunk_size));
    let mut specs = Vec::new();
    for (name, e) in &m.entries {
        let nmat = e.counts.len();
        if nmat == 0 || e.sums.is_empty() {
            continue;
        }
        specs.push(TensorSpec { name: format!("{name}.in_sum2"), ty: GgmlType::F32, dims: dims(e.n_cols(), nmat) });
        specs.push(TensorSpec { name: format!("{name}.counts"), ty: GgmlType::F32, dims: dims(1, nmat) });
    }
    let mut w = GgufWriter::create(path, md, &specs)?;
    for (name, e) in &m.entries {
        if e.counts.is_empty() || e.sums.is_empty() {
            continue;
        }
        let sums: Vec<u8> = e.sums.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_tensor(&format!("{name}.in_sum2"), &sums)?;
        let counts: Vec<u8> = e.counts.iter().flat_map(|&c| (c as f32).to_le_bytes()).collect();
        w.write_tensor(&format!("{name}.counts"), &counts)?;
    }
    w.finish()?;
    Ok(())
}
