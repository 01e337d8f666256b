//! The one error type of reading a Hugging Face model folder: every variant names the file, field or
//! tensor at fault.

use std::path::PathBuf;

/// What is wrong with a Hugging Face model folder (config, tensors, model card).
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{file}: not valid JSON: {source}")]
    Json { file: PathBuf, source: serde_json::Error },
    #[error("{dir}: missing {file} ({why})")]
    MissingFile { dir: PathBuf, file: String, why: String },
    #[error("{file}: missing field {field:?} ({why})")]
    MissingField { file: PathBuf, field: String, why: String },
    #[error("{file}: field {field:?}: {reason}")]
    BadField { file: PathBuf, field: String, reason: String },
    #[error("unsupported architecture {found:?}; crunch converts {}", supported.join(", "))]
    UnsupportedArchitecture { found: String, supported: Vec<String> },
    #[error("tensor {tensor:?} has no GGUF name for architecture {arch} (not part of a {arch} model)")]
    UnmappedTensor { tensor: String, arch: String },
    #[error("missing tensor(s) {}: the checkpoint does not match config.json ({why})", tensors.join(", "))]
    MissingTensors { tensors: Vec<String>, why: String },
    #[error("tensor {tensor:?} has shape {found:?}, config.json implies {expected:?} ({why})")]
    ShapeMismatch { tensor: String, found: Vec<u64>, expected: Vec<u64>, why: String },
    #[error("tensor {tensor:?} has dtype {dtype}; only F32, F16 and BF16 tensors can be converted")]
    UnsupportedDtype { tensor: String, dtype: String },
    #[error("GGUF metadata: {0}")]
    Gguf(String),
}

impl HfError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HfError::Io { path: path.into(), source }
    }
}
