//! safetensors: Hugging Face's tensor file format. Reader (memory-mapped, strictly validated; single
//! files, sharded checkpoints and model folders) and streaming writer (single files and sharded
//! checkpoints).
//!
//! Layout: an 8-byte little-endian length N, N bytes of UTF-8 JSON mapping each tensor name to
//! `{"dtype", "shape", "data_offsets": [begin, end]}` (plus an optional string-to-string
//! `__metadata__`), then the data section. Offsets are relative to the data section, which the tensors
//! must tile exactly: no overlap, no hole, no trailing byte. Shapes are in PyTorch order (slowest
//! dimension first); [`TensorInfo::ggml_dims`] gives ggml's order (row length first).
//!
//! A sharded checkpoint is several such files plus `model.safetensors.index.json`:
//! `{"metadata": {"total_size": BYTES}, "weight_map": {tensor name: shard file name}}`.

mod dtype;
pub mod error;
pub mod header;
mod json;
pub mod limits;
pub mod writer;

pub use dtype::Dtype;
pub use error::SafetensorsError;
pub use header::{parse_header, parse_index, SafetensorsHeader, SafetensorsIndex};
pub use writer::{encode_header, plan_shards, SafetensorsWriter, ShardedOutput, ShardedWriter, TensorSpec};

use crate::mmap::Mapped;
use crate::GgmlType;
use limits::{INDEX_FILE, SINGLE_FILE};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, SafetensorsError>;

/// One tensor's entry in a header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    /// PyTorch order: `shape[0]` is the slowest dimension, the last one is contiguous.
    pub shape: Vec<u64>,
    /// `[begin, end)` of the data, relative to the data section of its shard.
    pub data_offsets: (u64, u64),
    /// Index of the file holding the data in [`SafetensorsModel::shards`] (0 for a single file).
    pub shard: usize,
}

impl TensorInfo {
    /// Number of elements (1 for a scalar of shape `[]`).
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Size of the data in bytes.
    pub fn n_bytes(&self) -> u64 {
        self.data_offsets.1 - self.data_offsets.0
    }

    /// Size the dtype and shape need, checking for overflow and whole bytes.
    pub(crate) fn checked_n_bytes(&self) -> std::result::Result<u64, String> {
        let mut n: u64 = 1;
        for &d in &self.shape {
            n = n.checked_mul(d).ok_or_else(|| format!("shape {:?} overflows", self.shape))?;
        }
        let bits =
            n.checked_mul(self.dtype.bits()).ok_or_else(|| format!("byte size of shape {:?} overflows", self.shape))?;
        if bits % 8 != 0 {
            return Err(format!("{n} {} elements do not fill a whole number of bytes", self.dtype));
        }
        Ok(bits / 8)
    }

    /// Dimensions in ggml order, as in a GGUF [`crate::gguf::TensorInfo::dims`]: the reversed shape,
    /// row length first. A scalar (shape `[]`) gives `[1]`.
    pub fn ggml_dims(&self) -> Vec<u64> {
        if self.shape.is_empty() {
            return vec![1];
        }
        self.shape.iter().rev().copied().collect()
    }

    /// The GGML type the data converts to without loss (F32, F16, BF16).
    ///
    /// # Errors
    /// [`SafetensorsError::UnsupportedDtype`] for every other dtype.
    pub fn ggml_type(&self) -> Result<GgmlType> {
        self.dtype
            .ggml_type()
            .ok_or_else(|| SafetensorsError::UnsupportedDtype { tensor: self.name.clone(), dtype: self.dtype })
    }

    /// Shape as `[d0, d1, …]` text (PyTorch order).
    pub fn shape_string(&self) -> String {
        let d: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        format!("[{}]", d.join(", "))
    }
}

/// One memory-mapped safetensors file of a model.
pub struct Shard {
    path: PathBuf,
    map: Mapped,
    data_start: u64,
    metadata: BTreeMap<String, String>,
}

impl Shard {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This file's `__metadata__`.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Offset of the data section from the start of the file.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    pub fn file_size(&self) -> u64 {
        self.map.bytes().len() as u64
    }
}

/// A safetensors model opened for reading: one file or every shard of a sharded checkpoint, each
/// memory-mapped and validated; tensor data stays on disk until touched.
pub struct SafetensorsModel {
    path: PathBuf,
    total_size: Option<u64>,
    shards: Vec<Shard>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

/// Map and validate one file.
fn open_shard(path: &Path) -> Result<(Shard, Vec<TensorInfo>)> {
    let map = Mapped::open(path).map_err(|e| SafetensorsError::io(path, e))?;
    let header = parse_header(map.bytes(), path)?;
    let shard = Shard { path: path.to_path_buf(), data_start: header.data_start(), metadata: header.metadata, map };
    Ok((shard, header.tensors))
}

/// Names of the files in `dir` ending in `suffix`, sorted.
fn files_ending(dir: &Path, suffix: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| SafetensorsError::io(dir, e))? {
        let entry = entry.map_err(|e| SafetensorsError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(suffix) && !name.starts_with('.') && entry.path().is_file() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// The checkpoint file to open in a model folder: `model.safetensors.index.json`, else
/// `model.safetensors`, else the only `*.safetensors.index.json`, else the only `*.safetensors`.
fn resolve_dir(dir: &Path) -> Result<PathBuf> {
    for name in [INDEX_FILE, SINGLE_FILE] {
        if dir.join(name).is_file() {
            return Ok(dir.join(name));
        }
    }
    for suffix in [".safetensors.index.json", ".safetensors"] {
        let found = files_ending(dir, suffix)?;
        match found.len() {
            0 => continue,
            1 => return Ok(dir.join(&found[0])),
            _ => return Err(SafetensorsError::AmbiguousCheckpoint { dir: dir.to_path_buf(), candidates: found }),
        }
    }
    Err(SafetensorsError::NoCheckpoint { dir: dir.to_path_buf() })
}

impl SafetensorsModel {
    /// Open a single `.safetensors` file, a sharded checkpoint's `*.safetensors.index.json`, or a
    /// folder holding either (searched for `model.safetensors.index.json`, then `model.safetensors`, then
    /// a lone `*.safetensors.index.json`, then a lone `*.safetensors`).
    ///
    /// # Errors
    /// I/O errors, every validation error of [`parse_header`] and [`parse_index`], shards that are
    /// missing, tensors the index maps to a shard that lacks them, and tensor names found twice.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| SafetensorsError::io(path, e))?;
        let file = if meta.is_dir() { resolve_dir(path)? } else { path.to_path_buf() };
        if file.to_string_lossy().ends_with(".json") {
            Self::open_index(&file)
        } else {
            let (shard, tensors) = open_shard(&file)?;
            Self::assemble(file, None, vec![shard], vec![tensors])
        }
    }

    fn open_index(index: &Path) -> Result<Self> {
        let len = std::fs::metadata(index).map_err(|e| SafetensorsError::io(index, e))?.len();
        if len > limits::MAX_INDEX_LEN {
            return Err(SafetensorsError::TooLarge {
                file: index.to_path_buf(),
                what: "index file size".into(),
                value: len,
                limit: limits::MAX_INDEX_LEN,
            });
        }
        let bytes = std::fs::read(index).map_err(|e| SafetensorsError::io(index, e))?;
        let idx = parse_index(&bytes, index)?;
        let dir = index.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };

        // Shards in name order (model-00001-of-N first), each opened once.
        let mut first_tensor: BTreeMap<&str, &str> = BTreeMap::new();
        for (tensor, shard) in &idx.weight_map {
            first_tensor.entry(shard.as_str()).or_insert(tensor.as_str());
        }
        let names: Vec<&str> = first_tensor.keys().copied().collect();
        let mut shards = Vec::with_capacity(names.len());
        let mut per_shard = Vec::with_capacity(names.len());
        for name in &names {
            let p = dir.join(name);
            if !p.is_file() {
                return Err(SafetensorsError::MissingShard {
                    index: index.to_path_buf(),
                    shard: p,
                    tensor: first_tensor[name].to_string(),
                });
            }
            let (shard, tensors) = open_shard(&p)?;
            shards.push(shard);
            per_shard.push(tensors);
        }
        let model = Self::assemble(index.to_path_buf(), idx.total_size, shards, per_shard)?;

        let mut indexed = BTreeSet::new();
        for (tensor, shard) in &idx.weight_map {
            let shard_i = names.iter().position(|n| n == shard).unwrap_or(usize::MAX);
            match model.tensor(tensor) {
                Some(t) if t.shard == shard_i => {
                    indexed.insert(tensor.as_str());
                }
                _ => {
                    return Err(SafetensorsError::TensorMissingFromShard {
                        index: index.to_path_buf(),
                        shard: dir.join(shard),
                        tensor: tensor.clone(),
                    })
                }
            }
        }
        for t in &model.tensors {
            if !indexed.contains(t.name.as_str()) {
                tracing::warn!(
                    "{}: tensor {:?} in {} is not in the index's weight_map",
                    index.display(),
                    t.name,
                    model.shards[t.shard].path.display()
                );
            }
        }
        Ok(model)
    }

    /// Join the shards' tensors, rejecting names found twice; the metadata of earlier shards wins.
    fn assemble(
        path: PathBuf,
        total_size: Option<u64>,
        shards: Vec<Shard>,
        per_shard: Vec<Vec<TensorInfo>>,
    ) -> Result<Self> {
        let mut tensors = Vec::with_capacity(per_shard.iter().map(Vec::len).sum());
        let mut by_name = HashMap::with_capacity(tensors.capacity());
        for (i, list) in per_shard.into_iter().enumerate() {
            for mut t in list {
                t.shard = i;
                if let Some(&j) = by_name.get(&t.name) {
                    let first: &TensorInfo = &tensors[j];
                    return Err(SafetensorsError::DuplicateTensor {
                        tensor: t.name,
                        first: shards[first.shard].path.clone(),
                        second: shards[i].path.clone(),
                    });
                }
                by_name.insert(t.name.clone(), tensors.len());
                tensors.push(t);
            }
        }
        let mut metadata = BTreeMap::new();
        for s in &shards {
            for (k, v) in &s.metadata {
                metadata.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        Ok(SafetensorsModel { path, total_size, shards, tensors, by_name, metadata })
    }

    /// The file that was opened: the single `.safetensors` file or the index.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when opened through an index.
    pub fn is_sharded(&self) -> bool {
        self.path.to_string_lossy().ends_with(".json")
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// All tensors: shard by shard, each in data order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The `__metadata__` maps of all shards, merged (the first shard's value wins on a conflict).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The index's `metadata.total_size`, if opened through an index that gives it.
    pub fn index_total_size(&self) -> Option<u64> {
        self.total_size
    }

    /// Bytes of tensor data in all shards.
    pub fn data_size(&self) -> u64 {
        self.tensors.iter().map(TensorInfo::n_bytes).sum()
    }

    /// The raw little-endian bytes of tensor `name`, straight from the memory map (not necessarily
    /// aligned for the element type).
    ///
    /// # Errors
    /// [`SafetensorsError::TensorNotFound`].
    pub fn data(&self, name: &str) -> Result<&[u8]> {
        let &i = self.by_name.get(name).ok_or_else(|| SafetensorsError::TensorNotFound(name.to_string()))?;
        let t = &self.tensors[i];
        let shard = &self.shards[t.shard];
        // Bounds were checked against the file length when the shard was opened.
        let start = (shard.data_start + t.data_offsets.0) as usize;
        let end = (shard.data_start + t.data_offsets.1) as usize;
        Ok(&shard.map.bytes()[start..end])
    }

    /// Tensor `name` converted to f32 (exact for F32, F16 and BF16).
    ///
    /// # Errors
    /// [`SafetensorsError::TensorNotFound`], [`SafetensorsError::UnsupportedDtype`].
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let data = self.data(name)?;
        let info = &self.tensors[self.by_name[name]];
        decode_f32(info, data)
    }

    /// Start reading tensor `name` from disk in the background (see [`Mapped::prefetch`]).
    pub fn prefetch_tensor(&self, name: &str) {
        if let Some(&i) = self.by_name.get(name) {
            let t = &self.tensors[i];
            let shard = &self.shards[t.shard];
            shard.map.prefetch((shard.data_start + t.data_offsets.0) as usize, t.n_bytes() as usize);
        }
    }

    /// Drop the pages of tensor `name` from memory once it has been processed, so streaming through
    /// a large checkpoint keeps resident memory near one tensor (see [`Mapped::release`]).
    pub fn release_tensor(&self, name: &str) {
        if let Some(&i) = self.by_name.get(name) {
            let t = &self.tensors[i];
            let shard = &self.shards[t.shard];
            shard.map.release((shard.data_start + t.data_offsets.0) as usize, t.n_bytes() as usize);
        }
    }
}

/// Decode the raw bytes of `info` (F32, F16 or BF16, little-endian) to f32.
///
/// # Errors
/// [`SafetensorsError::UnsupportedDtype`] for other dtypes.
pub fn decode_f32(info: &TensorInfo, data: &[u8]) -> Result<Vec<f32>> {
    Ok(match info.dtype {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        dtype => return Err(SafetensorsError::UnsupportedDtype { tensor: info.name.clone(), dtype }),
    })
}
