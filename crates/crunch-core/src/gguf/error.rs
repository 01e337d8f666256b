//! The one error type of GGUF reading and writing: every variant names the field at fault.

use std::path::PathBuf;

/// What went wrong reading or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("not a GGUF file: magic is {found:?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("GGUF version {0} is not supported (crunch reads versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("big-endian GGUF files are not supported")]
    BigEndian,
    #[error("file truncated while reading {what} at byte {offset}: need {need} bytes, {have} left")]
    Truncated { what: String, offset: u64, need: u64, have: u64 },
    #[error("{what} is {value}, above the limit of {limit}")]
    TooLarge { what: String, value: u64, limit: u64 },
    #[error("metadata key {key:?} has unknown value type code {code}")]
    BadValueType { key: String, code: u32 },
    #[error("{what} is not valid UTF-8")]
    BadUtf8 { what: String },
    #[error("metadata key {0:?} appears twice")]
    DuplicateKey(String),
    #[error("tensor {0:?} appears twice")]
    DuplicateTensor(String),
    #[error("general.alignment must be a non-zero power of two u32 no larger than 1 MiB, found {0}")]
    BadAlignment(String),
    #[error("tensor {tensor:?} has unknown type code {code}")]
    UnknownTensorType { tensor: String, code: u32 },
    #[error("tensor {tensor:?}: {reason}")]
    BadShape { tensor: String, reason: String },
    #[error("tensor {tensor:?} data offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned { tensor: String, offset: u64, alignment: u64 },
    #[error("tensor {tensor:?} data [{start}, {end}) lies past the end of the data section ({data_len} bytes)")]
    OutOfBounds { tensor: String, start: u64, end: u64, data_len: u64 },
    #[error("tensors {a:?} and {b:?} overlap in the data section")]
    Overlap { a: String, b: String },
    #[error("metadata key {key:?}: {reason}")]
    BadMetadata { key: String, reason: String },
    #[error("tensor {tensor:?}: {reason}")]
    Write { tensor: String, reason: String },
}

impl GgufError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GgufError::Io { path: path.into(), source }
    }
}
