//! Errors of model loading and inference.

use crunch_core::GgmlType;

/// What can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("GGUF: {0}")]
    Gguf(#[from] crunch_core::gguf::GgufError),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error("safetensors: {0}")]
    Safetensors(#[from] crunch_core::safetensors::SafetensorsError),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{what}: architecture {found:?} is not supported here (expected {expected})")]
    WrongArch { what: String, found: String, expected: &'static str },
    #[error("missing metadata key {0}")]
    MissingKey(String),
    #[error("metadata key {key}: {reason}")]
    BadKey { key: String, reason: String },
    #[error("unsupported architecture {0:?} (supported: llama, mistral, qwen2, smollm, gemma3)")]
    UnsupportedArch(String),
    #[error("missing tensor {0}")]
    MissingTensor(String),
    #[error("tensor {tensor}: shape {found}, expected {expected}")]
    BadShape { tensor: String, found: String, expected: String },
    #[error("tensor {tensor}: crunch has no {what} kernel for type {ty}")]
    UnsupportedType { tensor: String, ty: GgmlType, what: &'static str },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("token id {id} out of range (vocabulary of {n})")]
    TokenOutOfRange { id: u32, n: usize },
    #[error("context full: {have} positions cached, {add} more asked, context of {n_ctx}")]
    ContextFull { have: usize, add: usize, n_ctx: usize },
    #[error("base logits: {0}")]
    BadLogits(String),
    #[error("{0}")]
    Input(String),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
