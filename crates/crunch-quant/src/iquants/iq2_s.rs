//! IQ2_S: 256-element super-blocks of sixteen 16-element groups, 2.5625 bits per weight. Each
//! 8-element part has a 10-bit index into the 1024-point grid [`IQ2S_GRID`] (8 bits in `qs`, 2 in
//! `qh`) and a full byte of signs; each group has a 4-bit scale; one f16 super-block scale. Dot
//! products run against Q8_K.
//!
//! Quantization is llama.cpp's `quantize_row_iq2_s_impl`, operation for operation, with the
//! importance weights when given and llama.cpp's own fallback weighting (`sigma2 / 4 + x^2`) when not.

use super::iq2_grid::{tables, Iq2Kind, GROUP_MAX_EPS_IQ2_S, IQ2S_GRID, KMASK_IQ2XS};
use super::iq2_xs::search_group16;
use crate::kquants::search::nearest_int;
use crate::kquants::BlockQ8K;
use crate::legacy::{all_blocks, blocks, fill_blocks, usable_weights};
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::{GgmlType, QK_K};
use half::f16;

/// One IQ2_S super-block. Part `p` (8 elements, `p` in 0..32) has grid index
/// `qs[p] | ((qh[p / 4] >> 2 (p % 4)) & 3) << 8` and sign byte `qs[32 + p]`; group `g` (16 elements)
/// has scale nibble `g % 2` of `scales[g / 2]`: values are `d * (0.5 + s) / 4 * grid * sign`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIq2S {
    pub d: f16,
    pub qs: [u8; QK_K / 4],
    pub qh: [u8; QK_K / 32],
    pub scales: [u8; QK_K / 32],
}

const _: () = assert!(size_of::<BlockIq2S>() == 2 + QK_K / 4 + QK_K / 16);

impl BlockIq2S {
    /// Grid index of part `p` (0..32).
    #[inline]
    fn grid_index(&self, p: usize) -> usize {
        usize::from(self.qs[p]) | ((usize::from(self.qh[p / 4]) << (8 - 2 * (p % 4))) & 0x300)
    }
}

pub(crate) static KERNELS: Kernels = Kernels {
    ty: GgmlType::IQ2_S,
    quantize,
    dequantize,
    vec_dot: Some(vec_dot),
    dot_type: GgmlType::Q8_K,
    uses_weights: true,
};

/// Quantize one super-block of 256, importance-weighted when `importance` (its 256 weights) is given.
pub fn quantize_block(x: &[f32; QK_K], importance: Option<&[f32; QK_K]>) -> BlockIq2S {
    let t = tables(Iq2Kind::S);
    let mut sumx2 = 0.0f32;
    for &v in x {
        sumx2 += v * v;
    }
    let sigma2 = 2.0 * sumx2 / QK_K as f32;
    let mut b = BlockIq2S::zeroed();
    let mut scales = [0.0f32; QK_K / 16];
    let mut max_scale = 0.0f32;
    for (ib, sc) in scales.iter_mut().enumerate() {
        let xb = &x[16 * ib..16 * ib + 16];
        let mut weight = [0.0f32; 16];
        match importance {
            Some(qw) => {
                for ((w, &x), &q) in weight.iter_mut().zip(xb).zip(&qw[16 * ib..16 * ib + 16]) {
                    *w = q * (sigma2 + x * x).sqrt();
                }
            }
            None => {
                for (w, &x) in weight.iter_mut().zip(xb) {
                    *w = 0.25 * sigma2 + x * x;
                }
            }
        }
        let waux: [f32; 16] = weight.map(f32::sqrt);
        let mut xval = [0.0f32; 16];
        let mut block_signs = [0u8; 2];
        for (k, s) in block_signs.iter_mut().enumerate() {
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
        let mut max = xval[0];
        for &v in &xval[1..] {
            max = if max > v { max } else { v };
        }
        if max < GROUP_MAX_EPS_IQ2_S {
            *sc = 0.0;
            continue;
        }
        let (mut scale, index) = search_group16(t, &xval, &weight, &waux, max);
        if scale < 0.0 {
            // never happens for finite input (llama.cpp keeps the branch just in case)
            scale = -scale;
            for s in &mut block_signs {
                *s = !*s;
            }
        }
        for (k, &g) in index.iter().enumerate() {
            let i8 = 2 * ib + k;
            b.qs[i8] = g as u8;
            b.qh[i8 / 4] |= ((g >> 8) as u8) << (2 * (i8 % 4));
            b.qs[QK_K / 8 + i8] = block_signs[k];
        }
        *sc = scale;
        max_scale = if max_scale > scale { max_scale } else { scale };
    }
    if max_scale == 0.0 {
        return b;
    }
    let d = max_scale / 31.0;
    b.d = f16::from_f32(d * 0.9875);
    let id = 1.0 / d;
    for (ib, &s) in scales.iter().enumerate() {
        let l = nearest_int(0.5 * (id * s - 1.0)).clamp(0, 15) as u8;
        b.scales[ib / 2] |= l << (4 * (ib % 2));
    }
    b
}

/// Quantize one row (`src.len()` a multiple of 256) into IQ2_S super-blocks, importance-weighted
/// when `weights` (one per element of the row) are given.
pub fn quantize(src: &[f32], weights: Option<&[f32]>, dst: &mut [u8]) {
    let weights = usable_weights(src, weights);
    fill_blocks(dst, |out: &mut [BlockIq2S]| {
        for (i, (b, x)) in out.iter_mut().zip(src.chunks_exact(QK_K)).enumerate() {
            let w = weights.and_then(|w| w.get(i * QK_K..(i + 1) * QK_K)?.try_into().ok());
            if let Ok(x) = x.try_into() {
                *b = quantize_block(x, w);
            }
        }
    });
}

/// Dequantize IQ2_S super-blocks (llama.cpp's `dequantize_row_iq2_s`).
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, y) in all_blocks::<BlockIq2S>(src).iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (p, y8) in y.chunks_exact_mut(8).enumerate() {
            let s = (b.scales[p / 4] >> (4 * ((p / 2) % 2))) & 0x0f;
            let dl = d * (0.5 + f32::from(s)) * 0.25;
            let grid = IQ2S_GRID[b.grid_index(p)].to_le_bytes();
            let signs = b.qs[QK_K / 8 + p];
            for (j, v) in y8.iter_mut().enumerate() {
                let sign = if signs & KMASK_IQ2XS[j] != 0 { -1.0 } else { 1.0 };
                *v = dl * f32::from(grid[j]) * sign;
            }
        }
    }
}

/// Dot product of `n` elements of IQ2_S `x` with Q8_K `y`, using AVX2 when the CPU has it.
pub fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    vec_dot_simd(n, x, y).unwrap_or_else(|| vec_dot_scalar(n, x, y))
}

/// Scalar reference dot product (llama.cpp's generic kernel order).
pub fn vec_dot_scalar(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let xs = blocks::<BlockIq2S>(x, n / QK_K);
    let ys = blocks::<BlockQ8K>(y, n / QK_K);
    let mut sumf = 0.0f32;
    for (bx, by) in xs.iter().zip(ys.iter()) {
        let d = bx.d.to_f32() * by.d;
        let mut bsum = 0i32;
        for (ib, q8) in by.qs.chunks_exact(32).enumerate() {
            let ls1 = 1 + 2 * i32::from(bx.scales[ib] & 0xf);
            let ls2 = 1 + 2 * i32::from(bx.scales[ib] >> 4);
            let mut sumi = [0i32; 2];
            for l in 0..4 {
                let p = 4 * ib + l;
                let grid = IQ2S_GRID[bx.grid_index(p)].to_le_bytes();
                let signs = bx.qs[QK_K / 8 + p];
                for j in 0..8 {
                    let v = i32::from(q8[8 * l + j]) * i32::from(grid[j]);
                    sumi[l / 2] += if signs & KMASK_IQ2XS[j] != 0 { -v } else { v };
                }
            }
            bsum += ls1 * sumi[0] + ls2 * sumi[1];
        }
        sumf += d * bsum as f32;
    }
    0.125 * sumf
}

/// The SIMD dot product, or `None` when this CPU has no SIMD kernel for it.
pub fn vec_dot_simd(n: usize, x: &[u8], y: &[u8]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if crate::legacy::simd::has_avx2_fma() {
        let xs = blocks::<BlockIq2S>(x, n / QK_K);
        let ys = blocks::<BlockQ8K>(y, n / QK_K);
        // SAFETY: AVX2 and FMA were detected on this CPU just above.
        return Some(unsafe { avx2::dot(&xs, &ys) });
    }
    let _ = (n, x, y);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::iq2_grid::{IQ2S_GRID, SIGNS_X8};
    use super::{BlockIq2S, BlockQ8K, QK_K};
    use crate::legacy::simd::*;
    use std::arch::x86_64::*;

    /// Integer sums per super-block exactly as the scalar kernel (so the result is bit-identical),
    /// with the products of 32 elements at a time.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot(xs: &[BlockIq2S], ys: &[BlockQ8K]) -> f32 {
        let mut sumf = 0.0f32;
        for (bx, by) in xs.iter().zip(ys) {
            let mut isum = _mm256_setzero_si256();
            for (ib, q8) in by.qs.chunks_exact(32).enumerate() {
                let Ok(q8) = <&[i8; 32]>::try_from(q8) else { continue };
                let g = |l: usize| IQ2S_GRID[bx.grid_index(4 * ib + l)] as i64;
                let sg = |l: usize| SIGNS_X8[usize::from(bx.qs[QK_K / 8 + 4 * ib + l])] as i64;
                let grid = _mm256_set_epi64x(g(3), g(2), g(1), g(0));
                let signs = _mm256_set_epi64x(sg(3), sg(2), sg(1), sg(0));
                let q = _mm256_sign_epi8(load_i8_32(q8), signs);
                // grid bytes are at most 0x2b: the i16 pair sums cannot saturate
                let pairs = _mm256_maddubs_epi16(grid, q);
                let sc = bx.scales[ib];
                let ls = _mm256_set_m128i(
                    _mm_set1_epi16(2 * i16::from(sc >> 4) + 1),
                    _mm_set1_epi16(2 * i16::from(sc & 0xf) + 1),
                );
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(pairs, ls));
            }
            let d = bx.d.to_f32() * by.d;
            sumf += d * hsum_i32(isum) as f32;
        }
        0.125 * sumf
    }
}
