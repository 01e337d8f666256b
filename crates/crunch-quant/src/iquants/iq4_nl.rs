//! IQ4_NL: 32 weights as 4-bit indices into the non-linear code book [`KVALUES`], one f16 scale
//! (4.5 bits per weight). Dot products run against Q8_0.
//!
//! Quantization is llama.cpp's `quantize_iq4_nl` (the least-squares scale search with 15 trial
//! scales), importance-weighted when weights are given and weighted by x² otherwise.

use super::nonlinear::{block_scale, pack_codes, search_weights, super_block_sigma2, BLOCK, KVALUES};
use crate::legacy::q8_0::BlockQ8_0;
use crate::legacy::{all_blocks, blocks, fill_blocks, usable_weights};
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::GgmlType;
use half::f16;

/// Elements per block.
pub const QK: usize = BLOCK;

/// One IQ4_NL block: `x[j] = d * KVALUES[code j]`, element `j` in the low nibble of `qs[j]`,
/// element `j + 16` in the high nibble.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIq4Nl {
    pub d: f16,
    pub qs: [u8; QK / 2],
}

const _: () = assert!(size_of::<BlockIq4Nl>() == 2 + QK / 2);

pub(crate) static KERNELS: Kernels = Kernels {
    ty: GgmlType::IQ4_NL,
    quantize,
    dequantize,
    vec_dot: Some(vec_dot),
    dot_type: GgmlType::Q8_0,
    uses_weights: true,
};

/// Quantize one block; `importance` holds the block's 32 importance weights.
pub fn quantize_block(x: &[f32; QK], importance: Option<&[f32; QK]>) -> BlockIq4Nl {
    let sigma2 = super_block_sigma2(x);
    let weight = search_weights(x, importance.map(|w| &w[..]), sigma2);
    let d = block_scale(x, &weight);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0u8; QK / 2];
    pack_codes(x, id, &mut qs);
    BlockIq4Nl { d: f16::from_f32(d), qs }
}

/// Quantize one row (`src.len()` a multiple of 32) into IQ4_NL blocks, importance-weighted when
/// `weights` (one per element of the row) are given.
pub fn quantize(src: &[f32], weights: Option<&[f32]>, dst: &mut [u8]) {
    let weights = usable_weights(src, weights);
    fill_blocks(dst, |out: &mut [BlockIq4Nl]| {
        for (i, (b, x)) in out.iter_mut().zip(src.chunks_exact(QK)).enumerate() {
            let w = weights.and_then(|w| w.get(i * QK..(i + 1) * QK)?.try_into().ok());
            if let Ok(x) = x.try_into() {
                *b = quantize_block(x, w);
            }
        }
    });
}

/// Dequantize IQ4_NL blocks.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, y) in all_blocks::<BlockIq4Nl>(src).iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        let (lo, hi) = y.split_at_mut(QK / 2);
        for ((&q, l), h) in b.qs.iter().zip(lo).zip(hi) {
            *l = d * f32::from(KVALUES[usize::from(q & 0x0f)]);
            *h = d * f32::from(KVALUES[usize::from(q >> 4)]);
        }
    }
}

/// Dot product of `n` elements of IQ4_NL `x` with Q8_0 `y`, using AVX2 when the CPU has it.
pub fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    vec_dot_simd(n, x, y).unwrap_or_else(|| vec_dot_scalar(n, x, y))
}

/// Scalar reference dot product (llama.cpp's generic kernel order).
pub fn vec_dot_scalar(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let xs = blocks::<BlockIq4Nl>(x, n / QK);
    let ys = blocks::<BlockQ8_0>(y, n / QK);
    let mut sum = 0.0f32;
    for (bx, by) in xs.iter().zip(ys.iter()) {
        let d = by.d.to_f32() * bx.d.to_f32();
        let (ylo, yhi) = by.qs.split_at(QK / 2);
        let (mut s1, mut s2) = (0i32, 0i32);
        for ((&q, &a), &b) in bx.qs.iter().zip(ylo).zip(yhi) {
            s1 += i32::from(a) * i32::from(KVALUES[usize::from(q & 0x0f)]);
            s2 += i32::from(b) * i32::from(KVALUES[usize::from(q >> 4)]);
        }
        sum += d * (s1 + s2) as f32;
    }
    sum
}

/// The SIMD dot product, or `None` when this CPU has no SIMD kernel for it.
pub fn vec_dot_simd(n: usize, x: &[u8], y: &[u8]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if crate::legacy::simd::has_avx2_fma() {
        let xs = blocks::<BlockIq4Nl>(x, n / QK);
        let ys = blocks::<BlockQ8_0>(y, n / QK);
        // SAFETY: AVX2 and FMA were detected on this CPU just above.
        return Some(unsafe { avx2::dot(&xs, &ys) });
    }
    let _ = (n, x, y);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockIq4Nl, BlockQ8_0, KVALUES};
    use crate::legacy::simd::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot(xs: &[BlockIq4Nl], ys: &[BlockQ8_0]) -> f32 {
        let table = load_16(&KVALUES.map(|v| v as u8));
        let mut acc = _mm256_setzero_ps();
        for (bx, by) in xs.iter().zip(ys) {
            let d = _mm256_set1_ps(by.d.to_f32() * bx.d.to_f32());
            let qx = nibbles_through_table(&bx.qs, table);
            let p = dot_i8_i8(qx, load_i8_32(&by.qs));
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
        }
        hsum_f32(acc)
    }
}
