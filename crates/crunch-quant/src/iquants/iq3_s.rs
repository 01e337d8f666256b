//! IQ3_S: 256-element super-blocks of eight 32-element sub-blocks (3.4375 bits per weight). Each
//! group of four elements is one 9-bit index into the 512-point grid [`IQ3S_GRID`] of magnitudes
//! (low 8 bits in `qs`, the 9th in `qh`), every element has its own sign bit, and each pair of
//! sub-blocks shares a byte of two 4-bit scales `2s + 1` relative to the f16 super-block scale. Dot
//! products run against Q8_K.
//!
//! Quantization is llama.cpp's `quantize_row_iq3_s_impl` (block size 32), float operations in its
//! order so the bytes equal llama.cpp's, importance-weighted like IQ3_XXS. One quirk is kept on
//! purpose: llama.cpp does not advance its `qs` / `signs` write positions past an all-zero
//! sub-block, so the sub-blocks after one land a slot early (and their last slot stays zero);
//! crunch writes the same bytes.

use super::iq2_grid::KMASK_IQ2XS;
use super::iq3_grid::{search_512, IQ3S_GRID};
use super::iq3_xxs::{c_max, grid_index, search_sub_block, sub_block_weights, SUB};
use crate::kquants::search::nearest_int;
use crate::kquants::BlockQ8K;
use crate::legacy::{all_blocks, blocks, fill_blocks, sum_squares, usable_weights};
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::{GgmlType, QK_K};
use half::f16;

/// Sub-blocks per super-block.
const SUBS: usize = QK_K / SUB;

/// One IQ3_S super-block. Group `g` (of 64) has grid index `qs[g] | (bit g % 8 of qh[g / 8]) << 8`;
/// element `e` is negative when bit `e % 8` of `signs[e / 8]` is set; sub-block `ib` has scale
/// `d * (2s + 1)` with `s` the nibble `ib % 2` of `scales[ib / 2]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIq3S {
    pub d: f16,
    pub qs: [u8; QK_K / 4],
    pub qh: [u8; QK_K / 32],
    pub signs: [u8; QK_K / 8],
    pub scales: [u8; QK_K / 64],
}

const _: () = assert!(size_of::<BlockIq3S>() == 2 + 13 * (QK_K / 32) + QK_K / 64);

impl BlockIq3S {
    /// The grid index of group `g` (0..64).
    #[inline]
    pub fn grid_index(&self, g: usize) -> usize {
        usize::from(self.qs[g]) | (usize::from((self.qh[g / 8] >> (g % 8)) & 1) << 8)
    }

    /// The scale multiplier `2s + 1` of sub-block `ib`.
    #[inline]
    pub fn sub_scale(&self, ib: usize) -> i32 {
        2 * i32::from((self.scales[ib / 2] >> (4 * (ib % 2))) & 0x0f) + 1
    }
}

pub(crate) static KERNELS: Kernels = Kernels {
    ty: GgmlType::IQ3_S,
    quantize,
    dequantize,
    vec_dot: Some(vec_dot),
    dot_type: GgmlType::Q8_K,
    uses_weights: true,
};

/// Quantize one super-block of 256; `importance` holds its 256 importance weights.
pub fn quantize_block(x: &[f32; QK_K], importance: Option<&[f32; QK_K]>) -> BlockIq3S {
    let t = search_512();
    let mut b = BlockIq3S::zeroed();
    let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
    let mut scales = [0.0f32; SUBS];
    let mut max_scale = 0.0f32;
    // llama.cpp's write positions in qs and signs (see the module docs)
    let (mut qs_at, mut signs_at) = (0usize, 0usize);
    for ib in 0..SUBS {
        let xb = &x[SUB * ib..SUB * (ib + 1)];
        let (weight, waux) = sub_block_weights(xb, importance.map(|w| &w[SUB * ib..SUB * (ib + 1)]), sigma2);
        let mut xval = [0.0f32; SUB];
        let mut signs = [0u8; SUB / 8];
        for (k, s) in signs.iter_mut().enumerate() {
            for i in 0..8 {
                let v = xb[8 * k + i];
                if v >= 0.0 {
                    xval[8 * k + i] = v;
                } else {
                    xval[8 * k + i] = -v;
                    *s |= 1 << i;
                }
            }
        }
        let max = xval[1..].iter().fold(xval[0], |m, &v| c_max(m, v));
        if max == 0.0 {
            continue;
        }
        let (l, mut scale) = search_sub_block(t, 9, true, &xval, &weight, &waux, max);
        if scale < 0.0 {
            scale = -scale;
            for s in &mut signs {
                *s = !*s;
            }
        }
        for k in 0..SUB / 4 {
            let index = grid_index(t, &l[4 * k..4 * k + 4]);
            b.qs[qs_at + k] = index as u8;
            b.qh[ib] |= ((index >> 8) as u8) << k;
        }
        qs_at += SUB / 4;
        b.signs[signs_at..signs_at + SUB / 8].copy_from_slice(&signs);
        signs_at += SUB / 8;
        scales[ib] = scale;
        max_scale = c_max(max_scale, scale);
    }
    if max_scale == 0.0 {
        return b;
    }
    let d = max_scale / 31.0;
    b.d = f16::from_f32(d * 1.033);
    let id = 1.0 / d;
    for (o, pair) in b.scales.iter_mut().zip(scales.chunks_exact(2)) {
        let l1 = nearest_int(0.5 * (id * pair[0] - 1.0)).clamp(0, 15);
        let l2 = nearest_int(0.5 * (id * pair[1] - 1.0)).clamp(0, 15);
        *o = (l1 | (l2 << 4)) as u8;
    }
    b
}

/// Quantize one row (`src.len()` a multiple of 256) into IQ3_S super-blocks, importance-weighted
/// when `weights` (one per element of the row) are given.
pub fn quantize(src: &[f32], weights: Option<&[f32]>, dst: &mut [u8]) {
    let weights = usable_weights(src, weights);
    fill_blocks(dst, |out: &mut [BlockIq3S]| {
        for (i, (b, x)) in out.iter_mut().zip(src.chunks_exact(QK_K)).enumerate() {
            let w = weights.and_then(|w| w.get(i * QK_K..(i + 1) * QK_K)?.try_into().ok());
            if let Ok(x) = x.try_into() {
                *b = quantize_block(x, w);
            }
        }
    });
}

/// Dequantize IQ3_S super-blocks (llama.cpp's `dequantize_row_iq3_s`).
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, y) in all_blocks::<BlockIq3S>(src).iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (ib, ys) in y.chunks_exact_mut(SUB).enumerate() {
            let db = d * b.sub_scale(ib) as f32;
            for (l, y8) in ys.chunks_exact_mut(8).enumerate() {
                let signs = b.signs[4 * ib + l];
                let g1 = IQ3S_GRID[b.grid_index(8 * ib + 2 * l)].to_le_bytes();
                let g2 = IQ3S_GRID[b.grid_index(8 * ib + 2 * l + 1)].to_le_bytes();
                for j in 0..4 {
                    let s = |j: usize| if signs & KMASK_IQ2XS[j] != 0 { -1.0f32 } else { 1.0 };
                    y8[j] = db * f32::from(g1[j]) * s(j);
                    y8[j + 4] = db * f32::from(g2[j]) * s(j + 4);
                }
            }
        }
    }
}

/// Dot product of `n` elements of IQ3_S `x` with Q8_K `y`, using AVX2 when the CPU has it.
pub fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    vec_dot_simd(n, x, y).unwrap_or_else(|| vec_dot_scalar(n, x, y))
}

/// Scalar reference dot product (llama.cpp's `ggml_vec_dot_iq3_s_q8_K_generic` order).
pub fn vec_dot_scalar(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let xs = blocks::<BlockIq3S>(x, n / QK_K);
    let ys = blocks::<BlockQ8K>(y, n / QK_K);
    let mut sumf = 0.0f32;
    for (bx, by) in xs.iter().zip(ys.iter()) {
        let d = bx.d.to_f32() * by.d;
        let mut bsum = 0i32;
        for (ib, q8) in by.qs.chunks_exact(SUB).enumerate() {
            let mut sumi = 0i32;
            for (l, q8) in q8.chunks_exact(8).enumerate() {
                let signs = bx.signs[4 * ib + l];
                let g1 = IQ3S_GRID[bx.grid_index(8 * ib + 2 * l)].to_le_bytes();
                let g2 = IQ3S_GRID[bx.grid_index(8 * ib + 2 * l + 1)].to_le_bytes();
                for j in 0..4 {
                    let s = |j: usize| if signs & KMASK_IQ2XS[j] != 0 { -1 } else { 1 };
                    sumi += i32::from(g1[j]) * i32::from(q8[j]) * s(j);
                    sumi += i32::from(g2[j]) * i32::from(q8[j + 4]) * s(j + 4);
                }
            }
            bsum += sumi * bx.sub_scale(ib);
        }
        sumf += d * bsum as f32;
    }
    sumf
}

/// The SIMD dot product, or `None` when this CPU has no SIMD kernel for it.
pub fn vec_dot_simd(n: usize, x: &[u8], y: &[u8]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if crate::legacy::simd::has_avx2_fma() {
        let xs = blocks::<BlockIq3S>(x, n / QK_K);
        let ys = blocks::<BlockQ8K>(y, n / QK_K);
        // SAFETY: AVX2 and FMA were detected on this CPU just above.
        return Some(unsafe { avx2::dot(&xs, &ys) });
    }
    let _ = (n, x, y);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockIq3S, BlockQ8K, IQ3S_GRID, SUB};
    use crate::legacy::simd::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot(xs: &[BlockIq3S], ys: &[BlockQ8K]) -> f32 {
        let one = _mm256_set1_epi8(1);
        let mut acc = _mm256_setzero_ps();
        for (bx, by) in xs.iter().zip(ys) {
            let mut isum = _mm256_setzero_si256();
            for (ib, q8) in by.qs.chunks_exact(SUB).enumerate() {
                let (Ok(q8), Ok(signs)) =
                    (<&[i8; 32]>::try_from(q8), <[u8; 4]>::try_from(&bx.signs[4 * ib..4 * ib + 4]))
                else {
                    continue;
                };
                let g = |k: usize| IQ3S_GRID[bx.grid_index(8 * ib + k)] as i32;
                let grid = _mm256_set_epi32(g(7), g(6), g(5), g(4), g(3), g(2), g(1), g(0));
                // ±1 per element, applied to the activations so the magnitudes stay unsigned
                let pm = _mm256_or_si256(bits_to_byte_mask(signs), one);
                let q8s = _mm256_sign_epi8(load_i8_32(q8), pm);
                // i16 pair sums (at most 2·15·127), then weighted by 2s + 1 into i32
                let pairs = _mm256_maddubs_epi16(grid, q8s);
                let ls = _mm256_set1_epi16(bx.sub_scale(ib) as i16);
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(pairs, ls));
            }
            let d = _mm256_set1_ps(bx.d.to_f32() * by.d);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), acc);
        }
        hsum_f32(acc)
    }
}
