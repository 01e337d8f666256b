//! The one error type of safetensors reading and writing: every variant names the file, and the
//! tensor or field at fault where there is one.

use super::Dtype;
use std::path::PathBuf;

/// What went wrong reading or writing a safetensors file or a sharded checkpoint's index.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{file}: {len} bytes is too short for a safetensors file (the header length alone takes 8)")]
    TooShort { file: PathBuf, len: u64 },
    #[error("{file}: header length {len} is above the limit of {limit} bytes")]
    HeaderTooLarge { file: PathBuf, len: u64, limit: u64 },
    #[error("{file}: header length {len} runs past the end of the file ({file_len} bytes)")]
    HeaderTruncated { file: PathBuf, len: u64, file_len: u64 },
    #[error("{file}: header is not valid UTF-8 (bad byte at file offset {offset})")]
    HeaderUtf8 { file: PathBuf, offset: u64 },
    #[error("{file}: header is not valid JSON: {source}")]
    HeaderJson { file: PathBuf, source: serde_json::Error },
    #[error("{file}: {reason}")]
    BadHeader { file: PathBuf, reason: String },
    #[error("{file}: JSON key {key:?} appears twice")]
    DuplicateKey { file: PathBuf, key: String },
    #[error("{file}: {what} is {value}, above the limit of {limit}")]
    TooLarge { file: PathBuf, what: String, value: u64, limit: u64 },
    #[error("{file}: tensor {tensor:?}: {reason}")]
    BadTensorEntry { file: PathBuf, tensor: String, reason: String },
    #[error("{file}: tensor {tensor:?} has unknown dtype {dtype:?}")]
    UnknownDtype { file: PathBuf, tensor: String, dtype: String },
    #[error("{file}: tensor {tensor:?}: {reason}")]
    BadShape { file: PathBuf, tensor: String, reason: String },
    #[error("{file}: tensor {tensor:?} has data_offsets [{begin}, {end}]: begin is after end")]
    ReversedOffsets { file: PathBuf, tensor: String, begin: u64, end: u64 },
    #[error(
        "{file}: tensor {tensor:?} ({dtype}, shape {shape:?}) needs {expected} bytes but data_offsets span {found}"
    )]
    SizeMismatch { file: PathBuf, tensor: String, dtype: Dtype, shape: Vec<u64>, expected: u64, found: u64 },
    #[error(
        "{file}: tensor {tensor:?} data [{begin}, {end}) lies past the end of the data section ({data_len} bytes)"
    )]
    OutOfBounds { file: PathBuf, tensor: String, begin: u64, end: u64, data_len: u64 },
    #[error("{file}: tensors {a:?} and {b:?} overlap in the data section")]
    Overlap { file: PathBuf, a: String, b: String },
    #[error("{file}: bytes [{start}, {end}) of the data section belong to no tensor")]
    Hole { file: PathBuf, start: u64, end: u64 },
    #[error("{file}: {reason}")]
    BadIndex { file: PathBuf, reason: String },
    #[error("{index}: shard file name {shard:?} is not a plain relative path")]
    BadShardName { index: PathBuf, shard: String },
    #[error("{index}: shard {shard:?} (holding tensor {tensor:?}) does not exist")]
    MissingShard { index: PathBuf, shard: PathBuf, tensor: String },
    #[error("{index}: tensor {tensor:?} is mapped to {shard}, which does not contain it")]
    TensorMissingFromShard { index: PathBuf, shard: PathBuf, tensor: String },
    #[error("tensor {tensor:?} appears in both {first} and {second}")]
    DuplicateTensor { tensor: String, first: PathBuf, second: PathBuf },
    #[error("{dir}: no safetensors checkpoint found (looked for model.safetensors.index.json, model.safetensors, *.safetensors)")]
    NoCheckpoint { dir: PathBuf },
    #[error("{dir}: several candidate checkpoints ({}); pass the file to use", candidates.join(", "))]
    AmbiguousCheckpoint { dir: PathBuf, candidates: Vec<String> },
    #[error("no tensor named {0:?}")]
    TensorNotFound(String),
    #[error("tensor {tensor:?} has dtype {dtype}; only F32, F16 and BF16 can be converted")]
    UnsupportedDtype { tensor: String, dtype: Dtype },
    #[error("{file}: tensor {tensor:?}: {reason}")]
    Write { file: PathBuf, tensor: String, reason: String },
}

impl SafetensorsError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SafetensorsError::Io { path: path.into(), source }
    }
}
