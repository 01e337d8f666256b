//! Named limits for hostile safetensors files and index files. Every length, count, offset and shape
//! read from a file is checked against these and against the bytes actually in the file before it is
//! used.

/// Bytes of the little-endian u64 that starts every file and gives the JSON header's length.
pub const LEN_PREFIX: u64 = 8;
/// Longest JSON header (the `safetensors` crate's own limit, 100 MB).
pub const MAX_HEADER_LEN: u64 = 100_000_000;
/// Most tensors in one file.
pub const MAX_TENSORS: usize = 1 << 20;
/// Most dimensions of one tensor (GGUF takes at most 4; more are listed, not converted).
pub const MAX_DIMS: usize = 8;
/// Longest tensor name in bytes.
pub const MAX_TENSOR_NAME_LEN: usize = 4096;
/// Largest `*.safetensors.index.json` read.
pub const MAX_INDEX_LEN: u64 = 64 << 20;
/// The writer pads the JSON header with spaces so the data section starts at a multiple of this.
pub const HEADER_ALIGN: u64 = 8;
/// The reserved header key holding the string-to-string metadata map.
pub const METADATA_KEY: &str = "__metadata__";
/// File name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// File name of a sharded checkpoint's index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
