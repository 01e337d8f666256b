//! GGUF: llama.cpp's model file format. Reader (memory-mapped, strictly validated) and streaming
//! writer that reproduces a file it read byte for byte.
//!
//! Layout: magic `GGUF`, version, tensor count, key/value count, the key/values, the tensor infos
//! (name, dims with the row length first, type code, offset into the data section), padding to
//! `general.alignment`, then the data section with every tensor aligned.

pub mod error;
pub mod limits;
pub mod reader;
pub mod value;
pub mod writer;

pub use error::GgufError;
pub use reader::{align_up, parse_header, GgufHeader};
pub use value::{Array, Strings, Value, ValueType};
pub use writer::{encode_header, in_memory, layout, GgufWriter, TensorSpec};

use crate::mmap::Mapped;
use crate::GgmlType;
use std::path::{Path, PathBuf};

/// Ordered metadata: keys keep the order they had in the file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
}

impl Metadata {
    /// Room for `n` entries.
    pub(crate) fn with_capacity(n: usize) -> Self {
        Metadata { entries: Vec::with_capacity(n) }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Set `key`, replacing the value in place if present, else appending.
    pub fn set(&mut self, key: &str, value: Value) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value,
            None => self.entries.push((key.to_string(), value)),
        }
    }

    pub(crate) fn push(&mut self, key: String, value: Value) {
        self.entries.push((key, value));
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key)?.as_f64()
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }
}

/// One tensor's entry in the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (contiguous), then rows, then higher dimensions.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Elements per row (`dims[0]`).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }

    /// Size of the data in bytes (the shape has been validated when the info was read).
    pub fn n_bytes(&self) -> u64 {
        self.checked_n_bytes().unwrap_or(u64::MAX)
    }

    /// Size of the data, checking that the row length fits the block size and nothing overflows.
    pub fn checked_n_bytes(&self) -> Result<u64, GgufError> {
        let bad = |reason: String| GgufError::BadShape { tensor: self.name.clone(), reason };
        let mut n: u64 = 1;
        for &d in &self.dims {
            n = n
                .checked_mul(d)
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| bad(format!("shape {:?} overflows", self.dims)))?;
        }
        let block = self.ty.block_size() as u64;
        let row = self.row_len();
        if !row.is_multiple_of(block) {
            return Err(bad(format!("row length {row} is not a multiple of {}'s block size {block}", self.ty)));
        }
        (n / block)
            .checked_mul(self.ty.type_size() as u64)
            .ok_or_else(|| bad(format!("byte size of shape {:?} overflows", self.dims)))
    }

    /// Shape as `[d0, d1, …]` text.
    pub fn shape_string(&self) -> String {
        let d: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        format!("[{}]", d.join(", "))
    }
}

/// A GGUF file opened for reading: parsed header plus memory-mapped data.
pub struct GgufFile {
    pub path: PathBuf,
    pub header: GgufHeader,
    map: Mapped,
}

impl GgufFile {
    /// Open and validate a GGUF file; tensor data stays on disk until touched. The parsed header
    /// takes at most the memory [`parse_header`] documents.
    ///
    /// # Errors
    /// I/O errors and every validation error of [`parse_header`], each naming the file
    /// ([`GgufError::Io`] or [`GgufError::File`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let map = Mapped::open(&path).map_err(|e| GgufError::io(&path, e))?;
        let header = parse_header(map.bytes()).map_err(|e| e.in_file(&path))?;
        Ok(GgufFile { path, header, map })
    }

    /// A GGUF held in memory (`bytes` is a whole file), validated exactly as [`GgufFile::open`]
    /// validates a file; `path` names it in errors and in `self.path`.
    ///
    /// # Errors
    /// Every validation error of [`parse_header`], naming `path`.
    pub fn from_bytes(path: impl AsRef<Path>, bytes: Vec<u8>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let map = Mapped::from_vec(bytes);
        let header = parse_header(map.bytes()).map_err(|e| e.in_file(&path))?;
        Ok(GgufFile { path, header, map })
    }

    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor (bounds were checked when the file was opened).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.header.data_start + info.offset) as usize;
        &self.map.bytes()[start..start + info.n_bytes() as usize]
    }

    /// Drop the pages of a tensor from memory once it has been processed (see [`Mapped::release`]).
    pub fn release_tensor(&self, info: &TensorInfo) {
        self.map.release((self.header.data_start + info.offset) as usize, info.n_bytes() as usize);
    }

    /// Size of the whole file in bytes.
    pub fn file_size(&self) -> u64 {
        self.map.bytes().len() as u64
    }
}

#[cfg(test)]
mod tests;
