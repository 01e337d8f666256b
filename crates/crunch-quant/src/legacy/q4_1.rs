//! Q4_1: 32 weights as 4-bit codes `q` with `x = d * q + m`, f16 scale and minimum (5 bits per
//! weight).
//!
//! Without importance weights the block range is split into 15 steps, exactly as llama.cpp's
//! reference quantizer; with weights, llama.cpp's `make_qkx3_quants` scale/minimum search. Dot
//! products run against Q8_1, whose precomputed `d * Σq` folds the minimum into one product.

use super::q8_1::BlockQ8_1;
use super::{
    all_blocks, block_weights, blocks, fill_blocks, inverse_or_zero, min_max, pack_nibbles, sum_squares,
    usable_weights, QK,
};
use crate::kquants::search::make_qkx3_quants;
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::GgmlType;
use half::f16;

/// One Q4_1 block: element `j` in the low nibble of `qs[j]`, element `j + 16` in the high nibble.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}

const _: () = assert!(size_of::<BlockQ4_1>() == 4 + QK / 2);

pub(crate) static KERNELS: Kernels = Kernels {
    ty: GgmlType::Q4_1,
    quantize,
    dequantize,
    vec_dot: Some(vec_dot),
    dot_type: GgmlType::Q8_1,
    uses_weights: true,
};

/// Quantize one block exactly as llama.cpp's `quantize_row_q4_1_ref`.
pub fn quantize_block(x: &[f32; QK]) -> BlockQ4_1 {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse_or_zero(d);
    let mut q = [0u8; QK];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (((v - min) * id + 0.5) as i8).min(15) as u8;
    }
    BlockQ4_1 { d: f16::from_f32(d), m: f16::from_f32(min), qs: pack_nibbles(&q) }
}

/// Quantize one row (`src.len()` a multiple of 32) into Q4_1 blocks, importance-weighted when
/// `weights` (one per element of the row) are given.
pub fn quantize(src: &[f32], weights: Option<&[f32]>, dst: &mut [u8]) {
    fill_blocks(dst, |out: &mut [BlockQ4_1]| match usable_weights(src, weights) {
        Some(w) => quantize_weighted(src, w, out),
        None => {
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 was detected on this CPU just above.
                return unsafe { super::quantize_avx2::quantize_q4_1(src, out) };
            }
            quantize_blocks_scalar(src, out)
        }
    });
}

/// The scalar reference of [`quantize`] without importance weights, block by block.
pub fn quantize_scalar(src: &[f32], dst: &mut [u8]) {
    fill_blocks(dst, |out: &mut [BlockQ4_1]| quantize_blocks_scalar(src, out));
}

fn quantize_blocks_scalar(src: &[f32], out: &mut [BlockQ4_1]) {
    for (b, x) in out.iter_mut().zip(src.chunks_exact(QK)) {
        if let Ok(x) = x.try_into() {
            *b = quantize_block(x);
        }
    }
}

/// llama.cpp's `quantize_row_q4_1_impl` with weights.
fn quantize_weighted(src: &[f32], importance: &[f32], out: &mut [BlockQ4_1]) {
    let sigma2 = sum_squares(src) / src.len() as f32;
    let chunks = src.chunks_exact(QK).zip(importance.chunks_exact(QK));
    for (b, (x, qw)) in out.iter_mut().zip(chunks) {
        let mut w = [0.0f32; QK];
        block_weights(x, qw, sigma2, &mut w);
        let mut l = [0u8; QK];
        let mut scratch = [0u8; QK];
        let mut neg_min = 0.0f32;
        let d = make_qkx3_quants(QK, 15, x, Some(&w), &mut l, &mut neg_min, &mut scratch, -0.9, 0.05, 36, false);
        *b = BlockQ4_1 { d: f16::from_f32(d), m: f16::from_f32(-neg_min), qs: pack_nibbles(&l) };
    }
}

/// Quantize one row (`src.len()` a multiple of 32) into Q4_1 blocks with HQQ's scale and
/// minimum per block (half-quadratic, no data; see [`crate::hfq::hqq::scale_min`]).
pub fn quantize_hqq(src: &[f32], dst: &mut [u8]) {
    let o = crate::hfq::hqq::HqqOptions::default();
    fill_blocks(dst, |out: &mut [BlockQ4_1]| {
        for (b, x) in out.iter_mut().zip(src.chunks_exact(QK)) {
            let mut q = [0u8; QK];
            let (d, m) = crate::hfq::hqq::scale_min(x, 15, &o, &mut q);
            *b = BlockQ4_1 { d, m, qs: pack_nibbles(&q) };
        }
    });
}

/// Dequantize Q4_1 blocks.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, y) in all_blocks::<BlockQ4_1>(src).iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        let m = b.m.to_f32();
        let (lo, hi) = y.split_at_mut(QK / 2);
        for ((&q, l), h) in b.qs.iter().zip(lo).zip(hi) {
            *l = f32::from(q & 0x0f) * d + m;
            *h = f32::from(q >> 4) * d + m;
        }
    }
}

/// Dot product of `n` elements of Q4_1 `x` with Q8_1 `y`, using AVX2 when the CPU has it.
pub fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    vec_dot_simd(n, x, y).unwrap_or_else(|| vec_dot_scalar(n, x, y))
}

/// Scalar reference dot product (llama.cpp's generic kernel order).
pub fn vec_dot_scalar(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let xs = blocks::<BlockQ4_1>(x, n / QK);
    let ys = blocks::<BlockQ8_1>(y, n / QK);
    let mut sum = 0.0f32;
    for (bx, by) in xs.iter().zip(ys.iter()) {
        let (ylo, yhi) = by.qs.split_at(QK / 2);
        let mut isum = 0i32;
        for ((&q, &a), &b) in bx.qs.iter().zip(ylo).zip(yhi) {
            isum += i32::from(q & 0x0f) * i32::from(a);
            isum += i32::from(q >> 4) * i32::from(b);
        }
        sum += (bx.d.to_f32() * by.d.to_f32()) * isum as f32 + bx.m.to_f32() * by.s.to_f32();
    }
    sum
}

/// The SIMD dot product, or `None` when this CPU has no SIMD kernel for it.
pub fn vec_dot_simd(n: usize, x: &[u8], y: &[u8]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        let xs = blocks::<BlockQ4_1>(x, n / QK);
        let ys = blocks::<BlockQ8_1>(y, n / QK);
        // SAFETY: AVX2 and FMA were detected on this CPU just above.
        return Some(unsafe { avx2::dot(&xs, &ys) });
    }
    let _ = (n, x, y);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockQ4_1, BlockQ8_1};
    use crate::legacy::simd::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot(xs: &[BlockQ4_1], ys: &[BlockQ8_1]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0.0f32;
        for (bx, by) in xs.iter().zip(ys) {
            mins += bx.m.to_f32() * by.s.to_f32();
            let d = _mm256_set1_ps(bx.d.to_f32() * by.d.to_f32());
            // unsigned codes 0..=15 against signed activations
            let p = dot_u8_i8(nibbles_to_bytes(&bx.qs), load_i8_32(&by.qs));
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
        }
        hsum_f32(acc) + mins
    }
}
