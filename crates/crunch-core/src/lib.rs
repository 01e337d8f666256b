//! crunch-core: the GGML type table, GGUF and safetensors I/O, and the lazy, memory-mapped
//! `TensorStore` every other crunch crate reads weights through.
//!
//! Key decision: GGUF is parsed by hand with strict, named limits (see [`gguf::limits`]); every count,
//! length, offset and shape read from a file is checked before it is used, and a file that is read and
//! written back unchanged is reproduced byte for byte (key order, tensor order and alignment kept).

#![deny(unsafe_code)]

pub mod ggml_type;
pub mod gguf;
pub mod hf;
pub mod mmap;
pub mod output;
pub mod safetensors;

pub use ggml_type::{GgmlType, UnknownType, QK_K};
