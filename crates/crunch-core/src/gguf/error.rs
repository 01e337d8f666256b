//! The one error type of GGUF reading and writing: every variant names the field at fault.

use std::path::PathBuf;

/// What went wrong reading or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// An error of the file at `path` (what [`crate::gguf::GgufFile::open`] returns; the error
    /// itself is in the message, not a separate cause, so it is printed once).
    #[error("{path}: {error}")]
    File { path: PathBuf, error: Box<GgufError> },
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
    #[error(
        "holding {what} would take the parsed header to {need} bytes of memory, above its limit of {limit} \
         ({factor} times the header bytes read plus {slack} bytes)",
        factor = super::limits::HEADER_MEMORY_FACTOR,
        slack = super::limits::HEADER_MEMORY_SLACK
    )]
    MemoryLimit { what: String, need: u64, limit: u64 },
}

impl GgufError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GgufError::Io { path: path.into(), source }
    }

    /// This error as an error of the file at `path` (unchanged if it names a file already).
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        match self {
            GgufError::Io { .. } | GgufError::File { .. } => self,
            e => GgufError::File { path: path.into(), error: Box::new(e) },
        }
    }

    /// The file this error is about, if it names one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            GgufError::Io { path, .. } | GgufError::File { path, .. } => Some(path),
            _ => None,
        }
    }

    /// What went wrong, without the file: the error inside [`GgufError::File`], else this one.
    pub fn kind(&self) -> &GgufError {
        match self {
            GgufError::File { error, .. } => error,
            e => e,
        }
    }
}
