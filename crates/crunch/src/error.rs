//! The crunch library's error type.

use std::path::PathBuf;

/// Everything that can stop a crunch job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Gguf(#[from] crunch_core::gguf::GgufError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("tensor {tensor}: {source}")]
    Quant { tensor: String, source: crunch_quant::QuantError },
    #[error("{0}")]
    Plan(String),
    #[error("{0}")]
    Invalid(String),
    /// A job field is wrong; `field` is its path in the job (`fit.max_kld`), which each front end
    /// words its own way (a CLI flag, a JSON pointer).
    #[error("{field}: {message}")]
    Field { field: String, message: String },
    #[error("interrupted; no output was written")]
    Cancelled,
    #[error("{context}: {source}")]
    Model { context: String, source: crunch_model::ModelError },
    #[error(transparent)]
    Hf(#[from] crunch_core::hf::HfError),
    #[error(transparent)]
    Safetensors(#[from] crunch_core::safetensors::SafetensorsError),
    #[error(transparent)]
    Registry(#[from] crunch_registry::RegistryError),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] crunch_model::tokenizer::TokenizerError),
}

impl Error {
    /// A wrong job field (`field` is its path in the job, e.g. `fit.max_kld`).
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Field { field: field.into(), message: message.into() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
