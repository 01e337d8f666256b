//! Q8_1: Q8_0 plus `s = d * sum(qs)` (9 bits per weight).
//!
//! Only an activation format: the Q4_1 and Q5_1 dot products use `s` to apply their block minimum
//! with one multiplication. ggml has no dot product with Q8_1 on the left, so neither has crunch.

use super::{all_blocks, fill_blocks, inverse_or_zero, QK};
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::GgmlType;
use half::f16;

/// One Q8_1 block: `x[j] = d * qs[j]`, with `s = d * Σ qs[j]` precomputed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK],
}

const _: () = assert!(size_of::<BlockQ8_1>() == 4 + QK);

pub(crate) static KERNELS: Kernels =
    Kernels { ty: GgmlType::Q8_1, quantize, dequantize, vec_dot: None, dot_type: GgmlType::Q8_1, uses_weights: false };

/// Quantize one block exactly as llama.cpp's `quantize_row_q8_1_ref`.
pub fn quantize_block(x: &[f32; QK]) -> BlockQ8_1 {
    let mut amax = 0.0f32;
    for &v in x {
        amax = if amax > v.abs() { amax } else { v.abs() };
    }
    let d = amax / 127.0;
    let id = inverse_or_zero(d);
    let mut qs = [0i8; QK];
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
        sum += i32::from(*q);
    }
    BlockQ8_1 { d: f16::from_f32(d), s: f16::from_f32(sum as f32 * d), qs }
}

/// Quantize rows of f32 into Q8_1 blocks (`weights` are ignored): AVX2 when the CPU has it, the
/// scalar reference otherwise (same bytes either way).
pub fn quantize(src: &[f32], _weights: Option<&[f32]>, dst: &mut [u8]) {
    fill_blocks(dst, |out: &mut [BlockQ8_1]| {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected on this CPU just above.
            return unsafe { super::quantize_avx2::quantize_q8_1(src, out) };
        }
        quantize_blocks_scalar(src, out)
    });
}

/// The scalar reference of [`quantize`], block by block.
pub fn quantize_scalar(src: &[f32], dst: &mut [u8]) {
    fill_blocks(dst, |out: &mut [BlockQ8_1]| quantize_blocks_scalar(src, out));
}

fn quantize_blocks_scalar(src: &[f32], out: &mut [BlockQ8_1]) {
    for (b, x) in out.iter_mut().zip(src.chunks_exact(QK)) {
        if let Ok(x) = x.try_into() {
            *b = quantize_block(x);
        }
    }
}

/// Dequantize Q8_1 blocks (`d * qs[j]`; `s` is redundant).
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, y) in all_blocks::<BlockQ8_1>(src).iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = f32::from(q) * d;
        }
    }
}
