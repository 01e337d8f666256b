//! Streaming GGUF writer: the header goes out first (all tensor sizes are known from type and
//! shape), then each tensor's data in order, each padded to the alignment. Memory stays at one
//! tensor, and the output is atomic (see [`crate::output`]).

use super::error::GgufError;
use super::limits::{DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, MAX_TENSOR_NAME_LEN, WRITE_VERSION};
use super::reader::align_up;
use super::value::{Array, Value};
use super::{GgufHeader, Metadata, TensorInfo};
use crate::output::AtomicFile;
use crate::GgmlType;
use std::io::Write;
use std::path::Path;

type Result<T> = std::result::Result<T, GgufError>;

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
    }
}

/// Element type, count, elements (the same for an array value and an array inside an array).
fn put_array(out: &mut Vec<u8>, a: &Array) {
    macro_rules! le {
        ($v:expr) => {
            for x in $v.iter() {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    out.extend_from_slice(&(a.elem_type() as u32).to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        Array::Bool(v) => out.extend(v.iter().map(|&x| x as u8)),
        Array::U16(v) => le!(v),
        Array::I16(v) => le!(v),
        Array::U32(v) => le!(v),
        Array::I32(v) => le!(v),
        Array::F32(v) => le!(v),
        Array::U64(v) => le!(v),
        Array::I64(v) => le!(v),
        Array::F64(v) => le!(v),
        Array::String(s) => {
            for x in s.iter() {
                put_str(out, x);
            }
        }
        Array::Array(v) => {
            for x in v {
                put_array(out, x);
            }
        }
    }
}

/// Serialize a header (up to, not including, the padding before the data section).
pub fn encode_header(h: &GgufHeader) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&h.version.to_le_bytes());
    out.extend_from_slice(&(h.tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(h.metadata.len() as u64).to_le_bytes());
    for (k, v) in h.metadata.iter() {
        put_str(&mut out, k.as_bytes());
        out.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
        put_value(&mut out, v);
    }
    for t in &h.tensors {
        put_str(&mut out, t.name.as_bytes());
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ty.code().to_le_bytes());
        out.extend_from_slice(&t.offset.to_le_bytes());
    }
    out
}

/// A tensor to be written: name, type and ggml-order dims.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub ty: GgmlType,
    pub dims: Vec<u64>,
}

/// Lay out tensors packed in order, each aligned; returns the infos and the data section size.
///
/// # Errors
/// Bad names, shapes or row lengths for the type.
pub fn layout(specs: &[TensorSpec], alignment: u64) -> Result<(Vec<TensorInfo>, u64)> {
    let mut pos = 0u64;
    let mut out = Vec::with_capacity(specs.len());
    let mut names = std::collections::HashSet::new();
    for s in specs {
        if s.name.len() as u64 > MAX_TENSOR_NAME_LEN {
            return Err(GgufError::TooLarge {
                what: format!("length of tensor name {:?}", s.name),
                value: s.name.len() as u64,
                limit: MAX_TENSOR_NAME_LEN,
            });
        }
        if s.dims.is_empty() || s.dims.len() > MAX_DIMS as usize {
            return Err(GgufError::BadShape { tensor: s.name.clone(), reason: format!("{} dimensions", s.dims.len()) });
        }
        if !names.insert(s.name.as_str()) {
            return Err(GgufError::DuplicateTensor(s.name.clone()));
        }
        let info = TensorInfo { name: s.name.clone(), dims: s.dims.clone(), ty: s.ty, offset: pos };
        let n = info.checked_n_bytes()?;
        pos = align_up(pos + n, alignment).expect("sizes checked above");
        out.push(info);
    }
    Ok((out, pos))
}

/// The header of a file of `metadata` and `tensors` (infos with offsets) and its encoding padded
/// to the data section.
fn padded_header(metadata: Metadata, tensors: &[TensorSpec]) -> Result<(GgufHeader, Vec<u8>)> {
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if *a != 0 && a.is_power_of_two() => *a as u64,
        Some(v) => return Err(GgufError::BadAlignment(v.to_string())),
    };
    let (infos, _) = layout(tensors, alignment)?;
    let mut header = GgufHeader { version: WRITE_VERSION, metadata, tensors: infos, alignment, data_start: 0 };
    let mut bytes = encode_header(&header);
    if !header.tensors.is_empty() {
        let padded = align_up(bytes.len() as u64, alignment).expect("header fits") as usize;
        bytes.resize(padded, 0);
    }
    header.data_start = bytes.len() as u64;
    Ok((header, bytes))
}

/// A whole GGUF file in memory with every tensor's data zeroed, and the header (tensor offsets
/// relative to `data_start`) so the caller fills each tensor in place; what
/// [`GgufFile::from_bytes`](super::GgufFile::from_bytes) then reads.
///
/// # Errors
/// Invalid metadata, names or shapes; sizes beyond memory.
pub fn in_memory(metadata: Metadata, tensors: &[TensorSpec]) -> Result<(GgufHeader, Vec<u8>)> {
    let (header, mut bytes) = padded_header(metadata, tensors)?;
    let (_, data_len) = layout(tensors, header.alignment)?;
    let total = (header.data_start).checked_add(data_len).and_then(|t| usize::try_from(t).ok()).ok_or_else(|| {
        GgufError::TooLarge { what: "in-memory GGUF".into(), value: data_len, limit: usize::MAX as u64 }
    })?;
    bytes.resize(total, 0);
    Ok((header, bytes))
}

/// Writes a GGUF file tensor by tensor.
pub struct GgufWriter {
    out: AtomicFile,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    next: usize,
    data_pos: u64,
}

impl GgufWriter {
    /// Create `dest` (atomically) and write the header for `metadata` and `tensors`.
    ///
    /// # Errors
    /// Invalid metadata, names or shapes, and I/O errors.
    pub fn create(dest: impl AsRef<Path>, metadata: Metadata, tensors: &[TensorSpec]) -> Result<Self> {
        let dest = dest.as_ref();
        let (header, bytes) = padded_header(metadata, tensors)?;
        let alignment = header.alignment;
        let mut out = AtomicFile::create(dest).map_err(|e| GgufError::io(dest, e))?;
        out.write_all(&bytes).map_err(|e| GgufError::io(dest, e))?;
        Ok(GgufWriter { out, tensors: header.tensors, alignment, next: 0, data_pos: 0 })
    }

    /// The tensor infos (with offsets) as they are written.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Name of the tensor whose data must come next, if any.
    pub fn next_tensor(&self) -> Option<&TensorInfo> {
        self.tensors.get(self.next)
    }

    /// Write the data of the next tensor (tensors are written in header order).
    ///
    /// # Errors
    /// Wrong tensor, wrong size, I/O errors.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let info = self.tensors.get(self.next).ok_or_else(|| GgufError::Write {
            tensor: name.into(),
            reason: "all tensors were already written".into(),
        })?;
        if info.name != name {
            return Err(GgufError::Write {
                tensor: name.into(),
                reason: format!("expected tensor {:?} next", info.name),
            });
        }
        if data.len() as u64 != info.n_bytes() {
            return Err(GgufError::Write {
                tensor: name.into(),
                reason: format!(
                    "{} bytes given, {} {} needs {}",
                    data.len(),
                    info.shape_string(),
                    info.ty,
                    info.n_bytes()
                ),
            });
        }
        let dest = self.out.dest().to_path_buf();
        let end = self.data_pos + data.len() as u64;
        let padded = align_up(end, self.alignment).expect("checked at layout");
        self.out.write_all(data).map_err(|e| GgufError::io(&dest, e))?;
        self.out.write_all(&vec![0u8; (padded - end) as usize]).map_err(|e| GgufError::io(&dest, e))?;
        self.data_pos = padded;
        self.next += 1;
        Ok(())
    }

    /// Finish the file: every tensor must have been written. Returns the SHA-256 (hex).
    ///
    /// # Errors
    /// Missing tensors, I/O errors. On error nothing is left at the destination.
    pub fn finish(self) -> Result<String> {
        if let Some(t) = self.tensors.get(self.next) {
            return Err(GgufError::Write { tensor: t.name.clone(), reason: "data never written".into() });
        }
        let dest = self.out.dest().to_path_buf();
        self.out.commit().map_err(|e| GgufError::io(&dest, e))
    }
}
