//! The registry's error type.

use std::path::PathBuf;

/// Everything that can go wrong with the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("registry {path}: cannot create its folder: {source}")]
    Folder { path: PathBuf, source: std::io::Error },
    #[error("registry schema version {found} is newer than this crunch understands ({supported}); upgrade crunch")]
    TooNew { found: u32, supported: u32 },
    #[error("registry migration to schema version {version} failed: {source}")]
    Migration { version: u32, source: rusqlite::Error },
    #[error("registry is corrupt: {0}")]
    Corrupt(String),
    #[error("no run with id {0} in the registry")]
    NoSuchRun(i64),
    #[error("no job with id {0} in the registry")]
    NoSuchJob(i64),
    #[error("run {id}: field {field} holds invalid JSON: {source}")]
    BadJson { id: i64, field: &'static str, source: serde_json::Error },
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

pub type Result<T> = std::result::Result<T, RegistryError>;
