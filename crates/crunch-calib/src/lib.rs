//! crunch-calib: calibration-aware quantization on the CPU — importance matrices compatible with
//! llama.cpp, GPTQ and AWQ — and pruning (magnitude, Wanda, SparseGPT; unstructured or N:M),
//! producing ordinary GGUF tensors.
//!
//! Key decision: every method ends on the grid of a real GGUF type. GPTQ fixes each block's
//! scales with the type's own quantizer when it reaches the block, then rounds column by column
//! onto that block's grid and spreads the error over the columns not yet quantized; the codes are
//! then packed into the type's blocks, so what llama.cpp dequantizes is exactly what GPTQ chose.
//! AWQ's scales are folded into the preceding norm or linear layer, so no new tensor appears.

#![forbid(unsafe_code)]

pub mod awq;
pub mod error;
pub mod gptq;
pub mod imatrix;
pub mod linalg;
pub mod lowrank;
pub mod prune;
pub mod runner;
pub mod targets;
pub mod text;

pub use error::{CalibError, Result};
pub use imatrix::{Imatrix, ImatrixEntry};
pub use targets::{calibration_targets, Target};
