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

/// Memory budget of a parsed header. [`crate::gguf::parse_header`] never allocates more than
/// `HEADER_MEMORY_FACTOR` times the header bytes it has read (or checked are there to be read) plus
/// [`HEADER_MEMORY_SLACK`]: before each allocation it adds the allocation's cost, as the allocator
/// takes it (the size rounded up to 16 bytes plus 16 bytes of bookkeeping, at least 32), to a running
/// total, and refuses the file ([`crate::gguf::GgufError::MemoryLimit`]) if the total would pass the
/// budget. So opening any GGUF file, however hostile, takes at most 4x its header's bytes plus 1 MiB
/// of heap, besides the header's pages of the memory map.
///
/// Real files stay far below: typed arrays cost their bytes in the file (a `u8` one byte, an `f32`
/// four) and arrays of strings too (the bytes, and an 8-byte end offset per string in place of the
/// 8-byte length); a key/value or a tensor info costs about a hundred bytes over its key and name.
/// What the budget stops are headers made of millions of tiny pieces (keys, nested arrays of one
/// element, empty strings in nested arrays), each of which needs tens of bytes of bookkeeping for a
/// dozen bytes of file.
pub const HEADER_MEMORY_FACTOR: u64 = 4;
/// Allowance on top of [`HEADER_MEMORY_FACTOR`] times the header bytes (small headers, bookkeeping).
pub const HEADER_MEMORY_SLACK: u64 = 1 << 20;
