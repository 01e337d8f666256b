//! The error type of crunch-calib.

use std::path::PathBuf;

/// What can stop a calibration job.
#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    #[error(transparent)]
    Model(#[from] crunch_model::ModelError),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] crunch_model::tokenizer::TokenizerError),
    #[error(transparent)]
    Gguf(#[from] crunch_core::gguf::GgufError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("imatrix file {path}: {reason}")]
    BadImatrix { path: PathBuf, reason: String },
    #[error("imatrix does not fit the model: {0}")]
    ImatrixMismatch(String),
    #[error("calibration text: {0}")]
    Text(String),
    #[error("model {0}")]
    NoLinearLayers(String),
    #[error("tensor {tensor}: {source}")]
    Quant { tensor: String, source: crunch_quant::QuantError },
    #[error("tensor {tensor}: the Hessian is not positive definite even with dampening {damp} (after {tries} tries)")]
    NotPositiveDefinite { tensor: String, damp: f32, tries: usize },
    #[error("{0}")]
    Invalid(String),
    #[error("interrupted")]
    Cancelled,
}

impl CalibError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CalibError::Io { path: path.into(), source }
    }
    pub fn bad(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        CalibError::BadImatrix { path: path.into(), reason: reason.into() }
    }
}

pub type Result<T, E = CalibError> = std::result::Result<T, E>;
