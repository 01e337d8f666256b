//! crunch-quant: the GGML block formats and their kernels.
//!
//! Every format lives in its own file as a `#[repr(C)]` block struct with a size assertion, plus
//! three kernels working on whole rows:
//! - `quantize(src, weights, dst)`: `src.len()` is a multiple of the block size; `weights`, when given,
//!   has the same length and holds per-element importance (llama.cpp's imatrix row for that tensor);
//! - `dequantize(src, dst)`;
//! - `vec_dot(n, x, y)`: dot product of a row of this type with a row of its `dot_type` (Q8_0 / Q8_K
//!   activations, as llama.cpp does).
//!
//! Key decision: the scalar code is the reference and is always compiled; SIMD variants are picked at
//! run time (`is_x86_feature_detected!`) and tested against the scalar reference.

use crunch_core::GgmlType;

pub mod float;
pub mod gemv;
pub mod hfq;
pub mod iquants;
pub mod kquants;
pub mod legacy;
pub mod rows;
pub mod seedlm;
pub mod ternary;
pub mod tiled;
pub mod vmath;

pub use rows::{
    convert_rows, convert_rows_hqq, dequantize_rows, hqq_quantizer, quantize_rows, QuantError, RowQuantizer,
};

/// Row quantizer: `src.len()` is a multiple of the block size, `dst` holds exactly the blocks.
pub type QuantizeFn = fn(src: &[f32], weights: Option<&[f32]>, dst: &mut [u8]);
/// Row dequantizer: `dst.len()` is `src.len() / type_size * block_size`.
pub type DequantizeFn = fn(src: &[u8], dst: &mut [f32]);
/// Dot product of `n` elements: `x` in this type, `y` in [`Kernels::dot_type`].
pub type VecDotFn = fn(n: usize, x: &[u8], y: &[u8]) -> f32;

/// The kernels for one GGML type.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub ty: GgmlType,
    pub quantize: QuantizeFn,
    pub dequantize: DequantizeFn,
    /// Dot product against a row of `dot_type`; `None` where no kernel exists.
    pub vec_dot: Option<VecDotFn>,
    /// The type activations are quantized to for `vec_dot`.
    pub dot_type: GgmlType,
    /// True when `quantize` uses `weights`; types without an importance-aware search ignore them.
    pub uses_weights: bool,
}

/// The kernels for `ty`, or `None` if crunch cannot quantize/dequantize it.
pub fn kernels(ty: GgmlType) -> Option<&'static Kernels> {
    float::kernels(ty)
        .or_else(|| legacy::kernels(ty))
        .or_else(|| kquants::kernels(ty))
        .or_else(|| iquants::kernels(ty))
        .or_else(|| ternary::kernels(ty))
}

/// Types crunch can write.
pub fn supported_types() -> Vec<GgmlType> {
    GgmlType::ALL.iter().copied().filter(|&t| kernels(t).is_some()).collect()
}
