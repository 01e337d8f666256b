//! Named limits for hostile files. Every count, length and size read from a GGUF file is checked
//! against these and against the bytes actually left in the file before anything is allocated.

/// `G` `G` `U` `F`, read as a little-endian u32.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Versions crunch reads (v1 used 32-bit counts and is long gone).
pub const SUPPORTED_VERSIONS: [u32; 2] = [2, 3];
/// Version crunch writes.
pub const WRITE_VERSION: u32 = 3;
/// Default `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Largest accepted `general.alignment`.
pub const MAX_ALIGNMENT: u64 = 1 << 20;
/// Most metadata key/value pairs.
pub const MAX_KV_COUNT: u64 = 1 << 20;
/// Most tensors.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Longest metadata key or tensor name (ggml's GGML_MAX_NAME is 64 including the NUL).
pub const MAX_KEY_LEN: u64 = 1 << 16;
/// Longest tensor name, as ggml allows.
pub const MAX_TENSOR_NAME_LEN: u64 = 63;
/// Longest string value (chat templates can be large, but not this large).
pub const MAX_STRING_LEN: u64 = 1 << 28;
/// Most elements in one array value.
pub const MAX_ARRAY_LEN: u64 = 1 << 31;
/// Deepest nesting of arrays inside arrays.
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Most dimensions of a tensor (ggml's GGML_MAX_DIMS).
pub const MAX_DIMS: u32 = 4;
