//! The "legacy" block formats: 32 weights per block with one f16 scale (and, for the `_1` types, an
//! f16 minimum), llama.cpp's Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q8_1.
//!
//! Q8_0 doubles as the activation format for Q4_0, Q5_0, Q8_0 and IQ4_NL dot products, Q8_1 (which
//! carries `d * sum(q)` so the minimum term folds into one product) for Q4_1 and Q5_1.
//!
//! This module also holds the small byte-slice <-> block-slice helpers that the i-quant and ternary
//! formats share.

use crate::Kernels;
use bytemuck::Pod;
use crunch_core::GgmlType;
use std::borrow::Cow;

pub mod q4_0;
pub mod q4_1;
pub mod q5_0;
pub mod q5_1;
pub mod q8_0;
pub mod q8_1;

#[cfg(target_arch = "x86_64")]
mod quantize_avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod simd;

/// Elements per legacy block.
pub const QK: usize = 32;

pub(crate) fn kernels(ty: GgmlType) -> Option<&'static Kernels> {
    match ty {
        GgmlType::Q4_0 => Some(&q4_0::KERNELS),
        GgmlType::Q4_1 => Some(&q4_1::KERNELS),
        GgmlType::Q5_0 => Some(&q5_0::KERNELS),
        GgmlType::Q5_1 => Some(&q5_1::KERNELS),
        GgmlType::Q8_0 => Some(&q8_0::KERNELS),
        GgmlType::Q8_1 => Some(&q8_1::KERNELS),
        _ => None,
    }
}

/// The first `count` blocks of `bytes` (fewer if `bytes` is shorter), borrowed when the slice is
/// suitably aligned for `B` and copied otherwise, so callers may pass any byte slice.
pub(crate) fn blocks<B: Pod>(bytes: &[u8], count: usize) -> Cow<'_, [B]> {
    let size = size_of::<B>();
    let n = (bytes.len() / size).min(count);
    let bytes = &bytes[..n * size];
    match bytemuck::try_cast_slice(bytes) {
        Ok(b) => Cow::Borrowed(b),
        Err(_) => Cow::Owned(bytemuck::pod_collect_to_vec(bytes)),
    }
}

/// All whole blocks of `bytes`, see [`blocks`].
pub(crate) fn all_blocks<B: Pod>(bytes: &[u8]) -> Cow<'_, [B]> {
    blocks(bytes, usize::MAX)
}

/// Let `fill` write the whole blocks of `dst` in place, going through an aligned temporary when
/// `dst` is not aligned for `B`.
pub(crate) fn fill_blocks<B: Pod>(dst: &mut [u8], fill: impl FnOnce(&mut [B])) {
    let size = size_of::<B>();
    let n = dst.len() / size;
    let dst = &mut dst[..n * size];
    match bytemuck::try_cast_slice_mut(dst) {
        Ok(b) => fill(b),
        Err(_) => {
            let mut tmp = vec![B::zeroed(); n];
            fill(&mut tmp);
            dst.copy_from_slice(bytemuck::cast_slice(&tmp));
        }
    }
}

/// Sum of squares of a row, accumulated left to right in f32 as llama.cpp does before deriving the
/// per-row variance used by the importance-weighted searches.
pub(crate) fn sum_squares(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// Per-element search weights for one block of an importance-weighted quantization:
/// `importance[j] * sqrt(sigma2 + x[j]^2)`, llama.cpp's recipe.
pub(crate) fn block_weights(x: &[f32], importance: &[f32], sigma2: f32, out: &mut [f32]) {
    for ((o, &v), &q) in out.iter_mut().zip(x).zip(importance) {
        *o = q * (sigma2 + v * v).sqrt();
    }
}

/// The importance weights when they cover the row, `None` otherwise (a mismatched slice is ignored
/// rather than trusted).
pub(crate) fn usable_weights<'a>(src: &[f32], weights: Option<&'a [f32]>) -> Option<&'a [f32]> {
    weights.filter(|w| w.len() == src.len())
}

/// Scatter the 5th bits of 32 five-bit values into the little-endian `qh` word.
pub(crate) fn pack_high_bits(q: &[u8; QK]) -> [u8; 4] {
    let mut qh = 0u32;
    for (j, &v) in q.iter().enumerate() {
        qh |= u32::from((v >> 4) & 1) << j;
    }
    qh.to_le_bytes()
}

/// Pack 32 values (low 4 bits used) as nibbles: element `j` low, element `j + 16` high.
pub(crate) fn pack_nibbles(q: &[u8; QK]) -> [u8; QK / 2] {
    let mut out = [0u8; QK / 2];
    for (j, o) in out.iter_mut().enumerate() {
        *o = (q[j] & 0x0f) | ((q[j + QK / 2] & 0x0f) << 4);
    }
    out
}

/// Inverse of the scale, or 0 for a zero scale.
#[inline]
pub(crate) fn inverse_or_zero(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Block-level amax search that remembers the signed value with the largest magnitude (the first
/// one on ties), as the symmetric formats need it.
#[inline]
pub(crate) fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

/// Block minimum and maximum, seeded with ±f32::MAX as llama.cpp's reference quantizers do.
#[inline]
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}
