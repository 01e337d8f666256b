//! `crunch inspect`: what is in a model file: metadata, tensors, types, shapes, sizes, bits per
//! weight.

use crate::error::Result;
use crunch_core::gguf::{value, GgufFile};
use serde::Serialize;
use std::path::Path;

/// One tensor row of the inspection.
#[derive(Clone, Debug, Serialize)]
pub struct TensorRow {
    pub name: String,
    pub ty: String,
    pub dims: Vec<u64>,
    pub bytes: u64,
    pub bpw: f64,
}

/// The inspection of a model file.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub path: String,
    pub format: String,
    pub version: Option<u32>,
    pub file_bytes: u64,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub tensors: Vec<TensorRow>,
    pub n_elements: u64,
    pub tensor_bytes: u64,
    pub bpw: f64,
    /// Tensor count per type.
    pub types: Vec<(String, usize)>,
}

/// Inspect a GGUF file.
///
/// # Errors
/// The file cannot be opened or is not valid GGUF.
pub fn inspect_gguf(path: &Path) -> Result<Inspection> {
    let f = GgufFile::open(path)?;
    let mut metadata = serde_json::Map::new();
    for (k, v) in f.metadata().iter() {
        metadata.insert(k.to_string(), value::to_json(v, 16));
    }
    // A SeedLM container lists its encoded weights under their own names and shapes, with the
    // stored bytes (`seedlm-4bit` / `seedlm-3bit`).
    let seed = crunch_model::seedlm::info(&f)
        .map_err(|e| crate::error::Error::Model { context: path.display().to_string(), source: e })?;
    let encoded: std::collections::HashMap<String, &crunch_model::seedlm::SeedTensor> =
        seed.iter().flat_map(|i| i.tensors.iter().map(|t| (t.stored_name(), t))).collect();
    let tensors: Vec<TensorRow> = f
        .tensors()
        .iter()
        .map(|t| match (encoded.get(&t.name), &seed) {
            (Some(e), Some(info)) => TensorRow {
                name: e.name.clone(),
                ty: format!("seedlm-{}", info.config.name()),
                dims: vec![e.row_len, e.rows],
                bytes: t.n_bytes(),
                bpw: t.n_bytes() as f64 * 8.0 / e.n_weights() as f64,
            },
            _ => TensorRow {
                name: t.name.clone(),
                ty: t.ty.name().to_string(),
                dims: t.dims.clone(),
                bytes: t.n_bytes(),
                bpw: t.ty.bits_per_weight(),
            },
        })
        .collect();
    let format = if seed.is_some() { "seedlm (GGUF container; crunch only)" } else { "gguf" };
    Ok(finish(path, format, Some(f.header.version), f.file_size(), metadata, tensors))
}

pub(crate) fn finish(
    path: &Path,
    format: &str,
    version: Option<u32>,
    file_bytes: u64,
    metadata: serde_json::Map<String, serde_json::Value>,
    tensors: Vec<TensorRow>,
) -> Inspection {
    let n_elements: u64 = tensors.iter().map(|t| t.dims.iter().product::<u64>()).sum();
    let tensor_bytes: u64 = tensors.iter().map(|t| t.bytes).sum();
    let mut types: Vec<(String, usize)> = Vec::new();
    for t in &tensors {
        match types.iter_mut().find(|(n, _)| *n == t.ty) {
            Some(c) => c.1 += 1,
            None => types.push((t.ty.clone(), 1)),
        }
    }
    types.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Inspection {
        path: path.display().to_string(),
        format: format.into(),
        version,
        file_bytes,
        metadata,
        bpw: if n_elements == 0 { 0.0 } else { tensor_bytes as f64 * 8.0 / n_elements as f64 },
        tensors,
        n_elements,
        tensor_bytes,
        types,
    }
}

/// Human-readable size: `123.4 MiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// The inspection as a text report.
pub fn render(ins: &Inspection, show_tensors: bool) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} ({}{}), {}",
        ins.path,
        ins.format,
        ins.version.map(|v| format!(" v{v}")).unwrap_or_default(),
        human_bytes(ins.file_bytes)
    );
    let _ = writeln!(
        s,
        "{} tensors, {:.1} M parameters, {} of tensor data, {:.3} bits per weight",
        ins.tensors.len(),
        ins.n_elements as f64 / 1e6,
        human_bytes(ins.tensor_bytes),
        ins.bpw
    );
    let types: Vec<String> = ins.types.iter().map(|(t, n)| format!("{t}: {n}")).collect();
    let _ = writeln!(s, "types: {}", types.join(", "));
    let _ = writeln!(s, "\nmetadata ({} keys):", ins.metadata.len());
    for (k, v) in &ins.metadata {
        let mut text = v.to_string();
        if text.len() > 100 {
            text.truncate(97);
            text.push_str("...");
        }
        let _ = writeln!(s, "  {k:<45} {text}");
    }
    if show_tensors {
        let _ = writeln!(s, "\n  {:<40} {:>8} {:>22} {:>12} {:>7}", "tensor", "type", "shape", "size", "bpw");
        for t in &ins.tensors {
            let dims: Vec<String> = t.dims.iter().map(|d| d.to_string()).collect();
            let _ = writeln!(
                s,
                "  {:<40} {:>8} {:>22} {:>12} {:>7.3}",
                t.name,
                t.ty,
                format!("[{}]", dims.join(", ")),
                human_bytes(t.bytes),
                t.bpw
            );
        }
    }
    s
}

/// Inspect a safetensors file, a sharded checkpoint's index, or a folder holding either.
///
/// # Errors
/// The file cannot be opened or is not valid safetensors.
pub fn inspect_safetensors(path: &Path) -> Result<Inspection> {
    let m = crunch_core::safetensors::SafetensorsModel::open(path)
        .map_err(|e| crate::Error::Invalid(format!("{}: {e}", path.display())))?;
    let metadata = m.metadata().iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    let tensors = m
        .tensors()
        .iter()
        .map(|t| TensorRow {
            name: t.name.clone(),
            ty: t.dtype.name().to_string(),
            dims: t.shape.clone(),
            bytes: t.n_bytes(),
            bpw: t.dtype.bits() as f64,
        })
        .collect();
    let file_bytes = m.shards().iter().map(|s| s.file_size()).sum();
    Ok(finish(
        path,
        if m.is_sharded() { "safetensors (sharded)" } else { "safetensors" },
        None,
        file_bytes,
        metadata,
        tensors,
    ))
}

/// Inspect any model file crunch reads, by content: GGUF magic, else safetensors.
///
/// # Errors
/// Unreadable or invalid files.
pub fn inspect_any(path: &Path) -> Result<Inspection> {
    let mut magic = [0u8; 4];
    let is_gguf = path.is_file()
        && std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok()
        && &magic == b"GGUF";
    if is_gguf {
        inspect_gguf(path)
    } else {
        inspect_safetensors(path)
    }
}
