//! IQ4_XS: 256-element super-blocks of eight 32-element sub-blocks, each with a 6-bit signed scale
//! relative to one f16 super-block scale; codes index the IQ4_NL code book [`KVALUES`] (4.25 bits per
//! weight). Dot products run against Q8_K.
//!
//! Quantization is llama.cpp's `quantize_iq4_xs`: the IQ4_NL search per sub-block, then the sub-block
//! scales are rounded to `d * (l - 32)` and every element is re-coded at its rounded scale.

use super::nonlinear::{block_scale, pack_codes, search_weights, super_block_sigma2, BLOCK, KVALUES};
use crate::kquants::search::nearest_int;
use crate::kquants::BlockQ8K;
use crate::legacy::{all_blocks, blocks, fill_blocks, usable_weights};
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::{GgmlType, QK_K};
use half::f16;

/// Sub-blocks per super-block.
const SUBS: usize = QK_K / BLOCK;

/// One IQ4_XS super-block. Sub-block `i` has scale `d * (l - 32)` where `l` (6 bits) is the nibble
/// `i % 2` of `scales_l[i / 2]` plus bits `2i..2i+2` of `scales_h` on top; its codes are packed
/// like an IQ4_NL block in `qs[16 i..16 i + 16]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIq4Xs {
    pub d: f16,
    pub scales_h: u16,
    pub scales_l: [u8; QK_K / 64],
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(size_of::<BlockIq4Xs>() == 2 + 2 + QK_K / 64 + QK_K / 2);

impl BlockIq4Xs {
    /// The signed scale multiplier (`l - 32`, in -32..=31) of sub-block `i`.
    #[inline]
    pub fn sub_scale(&self, i: usize) -> i32 {
        let lo = (self.scales_l[i / 2] >> (4 * (i % 2))) & 0x0f;
        let hi = (self.scales_h >> (2 * i)) & 3;
        (i32::from(lo) | (i32::from(hi) << 4)) - 32
    }
}

pub(crate) static KERNELS: Kernels = Kernels {
    ty: GgmlType::IQ4_XS,
    quantize,
    dequantize,
    vec_dot: Some(vec_dot),
    dot_type: GgmlType::Q8_K,
    uses_weights: true,
};

/// Quantize one super-block of 256; `importance` holds its 256 importance weights.
pub fn quantize_block(x: &[f32; QK_K], importance: Option<&[f32; QK_K]>) -> BlockIq4Xs {
    let sigma2 = super_block_sigma2(x);
    let mut scales = [0.0f32; SUBS];
    let mut amax_scale = 0.0f32;
    let mut max_scale = 0.0f32;
    for (ib, (s, xb)) in scales.iter_mut().zip(x.chunks_exact(BLOCK)).enumerate() {
        let qw = importance.map(|w| &w[ib * BLOCK..(ib + 1) * BLOCK]);
        let weight = search_weights(xb, qw, sigma2);
        *s = block_scale(xb, &weight);
        if s.abs() > amax_scale {
            amax_scale = s.abs();
            max_scale = *s;
        }
    }

    // the super-block scale maps the largest sub-block scale onto -32
    let d = -max_scale / 32.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut b = BlockIq4Xs::zeroed();
    b.d = f16::from_f32(d);
    for (ib, (&s, xb)) in scales.iter().zip(x.chunks_exact(BLOCK)).enumerate() {
        let l = nearest_int(id * s).clamp(-32, 31);
        let dl = d * l as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        let mut packed = [0u8; BLOCK / 2];
        pack_codes(xb, idl, &mut packed);
        b.qs[ib * BLOCK / 2..(ib + 1) * BLOCK / 2].copy_from_slice(&packed);
        let l = (l + 32) as u8;
        b.scales_l[ib / 2] |= (l & 0x0f) << (4 * (ib % 2));
        b.scales_h |= u16::from(l >> 4) << (2 * ib);
    }
    b
}

/// Quantize one row (`src.len()` a multiple of 256) into IQ4_XS super-blocks, importance-weighted
/// when `weights` (one per element of the row) are given.
pub fn quantize(src: &[f32], weights: Option<&[f32]>, dst: &mut [u8]) {
    let weights = usable_weights(src, weights);
    fill_blocks(dst, |out: &mut [BlockIq4Xs]| {
        for (i, (b, x)) in out.iter_mut().zip(src.chunks_exact(QK_K)).enumerate() {
            let w = weights.and_then(|w| w.get(i * QK_K..(i + 1) * QK_K)?.try_into().ok());
            if let Ok(x) = x.try_into() {
                *b = quantize_block(x, w);
            }
        }
    });
}

/// Dequantize IQ4_XS super-blocks.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, y) in all_blocks::<BlockIq4Xs>(src).iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let subs = y.chunks_exact_mut(BLOCK).zip(b.qs.chunks_exact(BLOCK / 2));
        for (ib, (ys, qs)) in subs.enumerate() {
            let dl = d * b.sub_scale(ib) as f32;
            let (lo, hi) = ys.split_at_mut(BLOCK / 2);
            for ((&q, l), h) in qs.iter().zip(lo).zip(hi) {
                *l = dl * f32::from(KVALUES[usize::from(q & 0x0f)]);
                *h = dl * f32::from(KVALUES[usize::from(q >> 4)]);
            }
        }
    }
}

/// Dot product of `n` elements of IQ4_XS `x` with Q8_K `y`, using AVX2 when the CPU has it.
pub fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    vec_dot_simd(n, x, y).unwrap_or_else(|| vec_dot_scalar(n, x, y))
}

/// Scalar reference dot product (llama.cpp's generic kernel order).
pub fn vec_dot_scalar(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let xs = blocks::<BlockIq4Xs>(x, n / QK_K);
    let ys = blocks::<BlockQ8K>(y, n / QK_K);
    let mut sum = 0.0f32;
    for (bx, by) in xs.iter().zip(ys.iter()) {
        let d4d8 = bx.d.to_f32() * by.d;
        let subs = bx.qs.chunks_exact(BLOCK / 2).zip(by.qs.chunks_exact(BLOCK));
        for (ib, (qs, q8)) in subs.enumerate() {
            let dl = d4d8 * bx.sub_scale(ib) as f32;
            let (ylo, yhi) = q8.split_at(BLOCK / 2);
            let (mut s1, mut s2) = (0i32, 0i32);
            for ((&q, &a), &b) in qs.iter().zip(ylo).zip(yhi) {
                s1 += i32::from(a) * i32::from(KVALUES[usize::from(q & 0x0f)]);
                s2 += i32::from(b) * i32::from(KVALUES[usize::from(q >> 4)]);
            }
            sum += dl * (s1 + s2) as f32;
        }
    }
    sum
}

/// The SIMD dot product, or `None` when this CPU has no SIMD kernel for it.
pub fn vec_dot_simd(n: usize, x: &[u8], y: &[u8]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if crate::legacy::simd::has_avx2_fma() {
        let xs = blocks::<BlockIq4Xs>(x, n / QK_K);
        let ys = blocks::<BlockQ8K>(y, n / QK_K);
        // SAFETY: AVX2 and FMA were detected on this CPU just above.
        return Some(unsafe { avx2::dot(&xs, &ys) });
    }
    let _ = (n, x, y);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockIq4Xs, BlockQ8K, BLOCK, KVALUES};
    use crate::legacy::simd::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot(xs: &[BlockIq4Xs], ys: &[BlockQ8K]) -> f32 {
        let table = load_16(&KVALUES.map(|v| v as u8));
        let mut acc = _mm256_setzero_ps();
        for (bx, by) in xs.iter().zip(ys) {
            let mut isum = _mm256_setzero_si256();
            let subs = bx.qs.chunks_exact(BLOCK / 2).zip(by.qs.chunks_exact(BLOCK));
            for (ib, (qs, q8)) in subs.enumerate() {
                let (Ok(qs), Ok(q8)) = (<&[u8; 16]>::try_from(qs), <&[i8; 32]>::try_from(q8)) else {
                    continue;
                };
                let qx = nibbles_through_table(qs, table);
                // i16 pair sums (at most 2·127·127), then weighted by the sub-block scale into i32
                let pairs = dot_i8_i8_pairs(qx, load_i8_32(q8));
                let scale = _mm256_set1_epi16(bx.sub_scale(ib) as i16);
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(pairs, scale));
            }
            let d = _mm256_set1_ps(bx.d.to_f32() * by.d);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), acc);
        }
        hsum_f32(acc)
    }
}
