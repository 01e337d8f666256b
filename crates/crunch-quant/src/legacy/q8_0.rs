//! Q8_0: 32 signed bytes times one f16 scale (8.5 bits per weight).
//!
//! Also the activation format for the Q4_0, Q5_0, Q8_0 and IQ4_NL dot products. llama.cpp has no
//! importance-weighted search for it, so `weights` are ignored.

use super::{all_blocks, blocks, fill_blocks, inverse_or_zero, QK};
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::GgmlType;
use half::f16;

/// One Q8_0 block: `x[j] = d * qs[j]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}

const _: () = assert!(size_of::<BlockQ8_0>() == 2 + QK);

pub(crate) static KERNELS: Kernels = Kernels {
    ty: GgmlType::Q8_0,
    quantize,
    dequantize,
    vec_dot: Some(vec_dot),
    dot_type: GgmlType::Q8_0,
    uses_weights: false,
};

/// Quantize one block exactly as llama.cpp's `quantize_row_q8_0_ref`.
pub fn quantize_block(x: &[f32; QK]) -> BlockQ8_0 {
    let mut amax = 0.0f32;
    for &v in x {
        amax = if amax > v.abs() { amax } else { v.abs() };
    }
    let d = amax / 127.0;
    let id = inverse_or_zero(d);
    let mut qs = [0i8; QK];
    for (q, &v) in qs.iter_mut().zip(x) {
        // round half away from zero (C `roundf`); `as` saturates anything out of range
        *q = (v * id).round() as i8;
    }
    BlockQ8_0 { d: f16::from_f32(d), qs }
}

/// Quantize rows of f32 into Q8_0 blocks (`weights` are ignored): AVX2 when the CPU has it, the
/// scalar reference otherwise (same bytes either way).
pub fn quantize(src: &[f32], _weights: Option<&[f32]>, dst: &mut [u8]) {
    fill_blocks(dst, |out: &mut [BlockQ8_0]| {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected on this CPU just above.
            return unsafe { super::quantize_avx2::quantize_q8_0(src, out) };
        }
        quantize_blocks_scalar(src, out)
    });
}

/// The scalar reference of [`quantize`], block by block.
pub fn quantize_scalar(src: &[f32], dst: &mut [u8]) {
    fill_blocks(dst, |out: &mut [BlockQ8_0]| quantize_blocks_scalar(src, out));
}

fn quantize_blocks_scalar(src: &[f32], out: &mut [BlockQ8_0]) {
    for (b, x) in out.iter_mut().zip(src.chunks_exact(QK)) {
        if let Ok(x) = x.try_into() {
            *b = quantize_block(x);
        }
    }
}

/// Dequantize Q8_0 blocks.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, y) in all_blocks::<BlockQ8_0>(src).iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = f32::from(q) * d;
        }
    }
}

/// Dot product of `n` elements of Q8_0 `x` with Q8_0 `y`, using AVX2 when the CPU has it.
pub fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    vec_dot_simd(n, x, y).unwrap_or_else(|| vec_dot_scalar(n, x, y))
}

/// Scalar reference dot product (llama.cpp's generic kernel order).
pub fn vec_dot_scalar(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let xs = blocks::<BlockQ8_0>(x, n / QK);
    let ys = blocks::<BlockQ8_0>(y, n / QK);
    let mut sum = 0.0f32;
    for (bx, by) in xs.iter().zip(ys.iter()) {
        let mut isum = 0i32;
        for (&a, &b) in bx.qs.iter().zip(&by.qs) {
            isum += i32::from(a) * i32::from(b);
        }
        sum += isum as f32 * (bx.d.to_f32() * by.d.to_f32());
    }
    sum
}

/// The SIMD dot product, or `None` when this CPU has no SIMD kernel for it.
pub fn vec_dot_simd(n: usize, x: &[u8], y: &[u8]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        let xs = blocks::<BlockQ8_0>(x, n / QK);
        let ys = blocks::<BlockQ8_0>(y, n / QK);
        // SAFETY: AVX2 and FMA were detected on this CPU just above.
        return Some(unsafe { avx2::dot(&xs, &ys) });
    }
    let _ = (n, x, y);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::BlockQ8_0;
    use crate::legacy::simd::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot(xs: &[BlockQ8_0], ys: &[BlockQ8_0]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (bx, by) in xs.iter().zip(ys) {
            let d = _mm256_set1_ps(bx.d.to_f32() * by.d.to_f32());
            let p = dot_i8_i8(load_i8_32(&bx.qs), load_i8_32(&by.qs));
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
        }
        hsum_f32(acc)
    }
}
