//! Streaming safetensors writer: the header goes out first (every size is known from dtype and
//! shape), then each tensor's data in the given order, packed with no gaps. Memory stays at one
//! tensor, and every output file is atomic (see [`crate::output`]). [`ShardedWriter`] splits a
//! model into shards of bounded size plus `model.safetensors.index.json`, as Hugging Face does.

use super::error::SafetensorsError;
use super::limits::*;
use super::{Dtype, TensorInfo};
use crate::output::{sidecar_path, AtomicFile};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, SafetensorsError>;

/// A tensor to be written: name, dtype and PyTorch-order shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    /// PyTorch order: slowest dimension first.
    pub shape: Vec<u64>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: impl Into<Vec<u64>>) -> Self {
        TensorSpec { name: name.into(), dtype, shape: shape.into() }
    }

    /// A spec from ggml-order dims (row length first), as in a GGUF tensor info.
    pub fn from_ggml_dims(name: impl Into<String>, dtype: Dtype, dims: &[u64]) -> Self {
        TensorSpec { name: name.into(), dtype, shape: dims.iter().rev().copied().collect() }
    }
}

impl<S: Into<String>, D: Into<Vec<u64>>> From<(S, Dtype, D)> for TensorSpec {
    /// `(name, dtype, shape)`, shape in PyTorch order.
    fn from((name, dtype, shape): (S, Dtype, D)) -> Self {
        TensorSpec::new(name, dtype, shape)
    }
}

/// Check names and shapes; returns each tensor's byte size. `file` labels errors.
fn check_specs(specs: &[TensorSpec], file: &Path) -> Result<Vec<u64>> {
    let f = || file.to_path_buf();
    if specs.len() > MAX_TENSORS {
        return Err(SafetensorsError::TooLarge {
            file: f(),
            what: "tensor count".into(),
            value: specs.len() as u64,
            limit: MAX_TENSORS as u64,
        });
    }
    let mut names = HashSet::with_capacity(specs.len());
    let mut sizes = Vec::with_capacity(specs.len());
    for s in specs {
        let bad = |reason: String| SafetensorsError::BadTensorEntry { file: f(), tensor: s.name.clone(), reason };
        if s.name.is_empty() {
            return Err(bad("tensor names must not be empty".into()));
        }
        if s.name == METADATA_KEY {
            return Err(bad(format!("{METADATA_KEY} is reserved for the metadata map")));
        }
        if s.name.len() > MAX_TENSOR_NAME_LEN {
            return Err(SafetensorsError::TooLarge {
                file: f(),
                what: format!("length of tensor name {:?}", s.name),
                value: s.name.len() as u64,
                limit: MAX_TENSOR_NAME_LEN as u64,
            });
        }
        if !names.insert(s.name.as_str()) {
            return Err(SafetensorsError::DuplicateKey { file: f(), key: s.name.clone() });
        }
        let bad_shape = |reason: String| SafetensorsError::BadShape { file: f(), tensor: s.name.clone(), reason };
        if s.shape.len() > MAX_DIMS {
            return Err(bad_shape(format!("has {} dimensions, above the limit of {MAX_DIMS}", s.shape.len())));
        }
        let info =
            TensorInfo { name: s.name.clone(), dtype: s.dtype, shape: s.shape.clone(), data_offsets: (0, 0), shard: 0 };
        sizes.push(info.checked_n_bytes().map_err(bad_shape)?);
    }
    Ok(sizes)
}

fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Serialize the header for `specs` laid out packed in the given order: the 8-byte little-endian
/// length, the JSON (`__metadata__` first when non-empty, then the tensors in order), padded with
/// spaces so the data section starts at a multiple of [`HEADER_ALIGN`]. Returns the bytes and the
/// tensor infos with their offsets. `file` labels errors.
///
/// # Errors
/// Empty, reserved, duplicate or over-long names, bad shapes, a header above [`MAX_HEADER_LEN`].
pub fn encode_header(
    metadata: &BTreeMap<String, String>,
    specs: &[TensorSpec],
    file: &Path,
) -> Result<(Vec<u8>, Vec<TensorInfo>)> {
    let sizes = check_specs(specs, file)?;
    let mut json = String::from("{");
    if !metadata.is_empty() {
        json.push_str(&quoted(METADATA_KEY));
        json.push_str(":{");
        for (i, (k, v)) in metadata.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&quoted(k));
            json.push(':');
            json.push_str(&quoted(v));
        }
        json.push('}');
    }
    let mut infos = Vec::with_capacity(specs.len());
    let mut pos = 0u64;
    for (s, &n) in specs.iter().zip(&sizes) {
        let end = pos.checked_add(n).ok_or_else(|| SafetensorsError::BadShape {
            file: file.to_path_buf(),
            tensor: s.name.clone(),
            reason: "data section size overflows".into(),
        })?;
        if json.len() > 1 {
            json.push(',');
        }
        let dims: Vec<String> = s.shape.iter().map(u64::to_string).collect();
        json.push_str(&format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{pos},{end}]}}",
            quoted(&s.name),
            s.dtype,
            dims.join(",")
        ));
        infos.push(TensorInfo {
            name: s.name.clone(),
            dtype: s.dtype,
            shape: s.shape.clone(),
            data_offsets: (pos, end),
            shard: 0,
        });
        pos = end;
    }
    json.push('}');
    let pad = (HEADER_ALIGN - json.len() as u64 % HEADER_ALIGN) % HEADER_ALIGN;
    json.extend(std::iter::repeat_n(' ', pad as usize));
    if json.len() as u64 > MAX_HEADER_LEN {
        return Err(SafetensorsError::TooLarge {
            file: file.to_path_buf(),
            what: "header length".into(),
            value: json.len() as u64,
            limit: MAX_HEADER_LEN,
        });
    }
    let mut out = Vec::with_capacity(LEN_PREFIX as usize + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(json.as_bytes());
    Ok((out, infos))
}

/// Writes a safetensors file tensor by tensor.
pub struct SafetensorsWriter {
    out: AtomicFile,
    tensors: Vec<TensorInfo>,
    next: usize,
}

impl SafetensorsWriter {
    /// Create `dest` (atomically: nothing appears there until [`finish`](Self::finish)) and write the
    /// header for `metadata` and `specs`, laid out in the given order.
    ///
    /// # Errors
    /// Everything [`encode_header`] rejects, and I/O errors.
    pub fn create(dest: impl AsRef<Path>, metadata: BTreeMap<String, String>, specs: &[TensorSpec]) -> Result<Self> {
        let dest = dest.as_ref();
        let (bytes, tensors) = encode_header(&metadata, specs, dest)?;
        let mut out = AtomicFile::create(dest).map_err(|e| SafetensorsError::io(dest, e))?;
        out.write_all(&bytes).map_err(|e| SafetensorsError::io(dest, e))?;
        Ok(SafetensorsWriter { out, tensors, next: 0 })
    }

    /// The tensor infos (with offsets) as they are written.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor whose data must come next, if any.
    pub fn next_tensor(&self) -> Option<&TensorInfo> {
        self.tensors.get(self.next)
    }

    /// Write the data of the next tensor (tensors are written in the order given to `create`).
    ///
    /// # Errors
    /// Wrong tensor, wrong size, I/O errors.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let dest = self.out.dest().to_path_buf();
        let write_err = |reason: String| SafetensorsError::Write { file: dest.clone(), tensor: name.into(), reason };
        let info = self.tensors.get(self.next).ok_or_else(|| write_err("all tensors were already written".into()))?;
        if info.name != name {
            return Err(write_err(format!("expected tensor {:?} next", info.name)));
        }
        if data.len() as u64 != info.n_bytes() {
            return Err(write_err(format!(
                "{} bytes given, {} {} needs {}",
                data.len(),
                info.shape_string(),
                info.dtype,
                info.n_bytes()
            )));
        }
        self.out.write_all(data).map_err(|e| SafetensorsError::io(&dest, e))?;
        self.next += 1;
        Ok(())
    }

    /// Finish the file: every tensor must have been written. Returns the SHA-256 (hex); the
    /// `.sha256` sidecar is written beside the file.
    ///
    /// # Errors
    /// Missing tensors, I/O errors. On error nothing is left at the destination.
    pub fn finish(self) -> Result<String> {
        let dest = self.out.dest().to_path_buf();
        if let Some(t) = self.tensors.get(self.next) {
            return Err(SafetensorsError::Write {
                file: dest,
                tensor: t.name.clone(),
                reason: "data never written".into(),
            });
        }
        self.out.commit().map_err(|e| SafetensorsError::io(&dest, e))
    }

    /// Write a whole file at once from `(spec, data)` pairs. Returns the SHA-256 (hex).
    ///
    /// # Errors
    /// As [`create`](Self::create), [`write_tensor`](Self::write_tensor) and [`finish`](Self::finish).
    pub fn write_file(
        dest: impl AsRef<Path>,
        metadata: BTreeMap<String, String>,
        tensors: &[(TensorSpec, &[u8])],
    ) -> Result<String> {
        let specs: Vec<TensorSpec> = tensors.iter().map(|(s, _)| s.clone()).collect();
        let mut w = Self::create(dest, metadata, &specs)?;
        for (s, data) in tensors {
            w.write_tensor(&s.name, data)?;
        }
        w.finish()
    }
}

/// Split tensors of the given byte sizes, in order, into consecutive shards of at most `max_bytes`
/// of data each; a tensor larger than `max_bytes` gets a shard of its own (as Hugging Face does).
/// Always returns at least one (possibly empty) shard.
pub fn plan_shards(sizes: &[u64], max_bytes: u64) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut acc) = (0usize, 0u64);
    for (i, &n) in sizes.iter().enumerate() {
        if i > start && acc.saturating_add(n) > max_bytes {
            out.push(start..i);
            start = i;
            acc = 0;
        }
        acc = acc.saturating_add(n);
    }
    out.push(start..sizes.len());
    out
}

/// What a [`ShardedWriter`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardedOutput {
    /// Each shard file and its SHA-256 (hex).
    pub shards: Vec<(PathBuf, String)>,
    /// The index file and its SHA-256, when there is more than one shard.
    pub index: Option<(PathBuf, String)>,
    /// Bytes of tensor data in all shards (the index's `metadata.total_size`).
    pub total_size: u64,
}

/// Writes a checkpoint into a folder as Hugging Face does: `model.safetensors` when everything fits
/// in one shard, else `model-00001-of-0000N.safetensors`… plus `model.safetensors.index.json`
/// (written last). Tensors are written in order, one at a time. Shards already finished are removed
/// again if the writer is dropped before [`finish`](Self::finish).
pub struct ShardedWriter {
    dir: PathBuf,
    metadata: BTreeMap<String, String>,
    specs: Vec<TensorSpec>,
    plan: Vec<Range<usize>>,
    file_names: Vec<String>,
    current: Option<SafetensorsWriter>,
    shard: usize,
    next: usize,
    done: Vec<(PathBuf, String)>,
    total_size: u64,
    finished: bool,
}

impl ShardedWriter {
    /// Plan the shards of `specs` (at most `max_shard_bytes` of data each) in folder `dir`, which
    /// must exist. Every name and shape is checked here, before anything is written.
    ///
    /// # Errors
    /// Everything [`encode_header`] rejects, for any shard.
    pub fn create(
        dir: impl AsRef<Path>,
        metadata: BTreeMap<String, String>,
        specs: &[TensorSpec],
        max_shard_bytes: u64,
    ) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let sizes = check_specs(specs, &dir.join(INDEX_FILE))?;
        let plan = plan_shards(&sizes, max_shard_bytes);
        let n = plan.len();
        let file_names: Vec<String> = if n == 1 {
            vec![SINGLE_FILE.to_string()]
        } else {
            (1..=n).map(|i| format!("model-{i:05}-of-{n:05}.safetensors")).collect()
        };
        for (range, name) in plan.iter().zip(&file_names) {
            encode_header(&metadata, &specs[range.clone()], &dir.join(name))?;
        }
        Ok(ShardedWriter {
            dir,
            metadata,
            specs: specs.to_vec(),
            plan,
            file_names,
            current: None,
            shard: 0,
            next: 0,
            done: Vec::new(),
            total_size: sizes.iter().sum(),
            finished: false,
        })
    }

    /// The shard files this writer produces, in order.
    pub fn shard_paths(&self) -> Vec<PathBuf> {
        self.file_names.iter().map(|n| self.dir.join(n)).collect()
    }

    /// Open the writer of the current shard if it is not open yet.
    fn ensure_open(&mut self) -> Result<&mut SafetensorsWriter> {
        if self.current.is_none() {
            let path = self.dir.join(&self.file_names[self.shard]);
            let range = self.plan[self.shard].clone();
            self.current = Some(SafetensorsWriter::create(path, self.metadata.clone(), &self.specs[range])?);
        }
        Ok(self.current.as_mut().expect("opened above"))
    }

    /// Commit the current shard.
    fn close_shard(&mut self) -> Result<()> {
        if let Some(w) = self.current.take() {
            let path = self.dir.join(&self.file_names[self.shard]);
            let sha = w.finish()?;
            self.done.push((path, sha));
            self.shard += 1;
        }
        Ok(())
    }

    /// Write the data of the next tensor (in the order given to `create`).
    ///
    /// # Errors
    /// Wrong tensor, wrong size, I/O errors.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        if self.next >= self.specs.len() {
            return Err(SafetensorsError::Write {
                file: self.dir.clone(),
                tensor: name.into(),
                reason: "all tensors were already written".into(),
            });
        }
        self.ensure_open()?.write_tensor(name, data)?;
        self.next += 1;
        if self.next == self.plan[self.shard].end {
            self.close_shard()?;
        }
        Ok(())
    }

    /// Finish: every tensor must have been written. Writes the index when there are several shards.
    ///
    /// # Errors
    /// Missing tensors, I/O errors.
    pub fn finish(mut self) -> Result<ShardedOutput> {
        if let Some(t) = self.specs.get(self.next) {
            let file = self.dir.join(&self.file_names[self.shard]);
            return Err(SafetensorsError::Write { file, tensor: t.name.clone(), reason: "data never written".into() });
        }
        if self.specs.is_empty() {
            self.ensure_open()?;
            self.close_shard()?;
        }
        let index = if self.file_names.len() > 1 { Some(self.write_index()?) } else { None };
        self.finished = true;
        Ok(ShardedOutput { shards: std::mem::take(&mut self.done), index, total_size: self.total_size })
    }

    fn write_index(&self) -> Result<(PathBuf, String)> {
        let mut weight_map = BTreeMap::new();
        for (range, file) in self.plan.iter().zip(&self.file_names) {
            for s in &self.specs[range.clone()] {
                weight_map.insert(s.name.as_str(), file.as_str());
            }
        }
        let json = serde_json::json!({
            "metadata": { "total_size": self.total_size },
            "weight_map": weight_map,
        });
        let mut text = serde_json::to_string_pretty(&json).map_err(|e| SafetensorsError::BadIndex {
            file: self.dir.join(INDEX_FILE),
            reason: format!("cannot serialize: {e}"),
        })?;
        text.push('\n');
        let path = self.dir.join(INDEX_FILE);
        let mut out = AtomicFile::create(&path).map_err(|e| SafetensorsError::io(&path, e))?;
        out.write_all(text.as_bytes()).map_err(|e| SafetensorsError::io(&path, e))?;
        let sha = out.commit().map_err(|e| SafetensorsError::io(&path, e))?;
        Ok((path, sha))
    }
}

impl Drop for ShardedWriter {
    fn drop(&mut self) {
        if !self.finished {
            for (path, _) in &self.done {
                let _ = std::fs::remove_file(path);
                let _ = std::fs::remove_file(sidecar_path(path));
            }
        }
    }
}
