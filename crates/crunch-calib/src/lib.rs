//! crunch-calib: calibration-aware quantization on the CPU — importance matrices compatible with
//! llama.cpp, GPTQ and AWQ — and pruning (magnitude, Wanda, SparseGPT; unstructured or N:M),
//! producing ordinary GGUF tensors.
//!
//! Key decision: every method ends on a real grid ([`Grid`]): a GGUF type's blocks or the
//! group-wise integers of GPU checkpoints. GPTQ fixes each block's (group's) scales when it
//! reaches the block, with the type's own quantizer or round-to-nearest's scale and zero, then
//! rounds column by column onto that grid and spreads the error over the columns not yet
//! quantized; the codes are then packed into the type's blocks (or an
//! [`crunch_quant::hfq::IntGroups`]), so what llama.cpp or the GPU kernel dequantizes is exactly
//! what GPTQ chose. AWQ's scales are folded into the preceding norm or linear layer, so no new
//! tensor appears.

#![forbid(unsafe_code)]

pub mod awq;
pub mod error;
pub mod gptq;
pub mod grid;
pub mod imatrix;
pub mod linalg;
pub mod lowrank;
pub mod prune;
pub mod runner;
pub mod targets;
pub mod text;

pub use error::{CalibError, Result};
pub use grid::Grid;
pub use imatrix::{Imatrix, ImatrixEntry};
pub use targets::{calibration_targets, Target};
