//! IQ2_XXS: 256-element super-blocks of eight 32-element groups, 2.0625 bits per weight. Each group
//! stores four 8-bit indices into the 256-point E8-lattice grid [`IQ2XXS_GRID`], four 7-bit sign
//! patterns (the 8th sign restores even parity, [`KSIGNS_IQ2XS`]) and a 4-bit scale, in two u32
//! words; one f16 super-block scale. Dot products run against Q8_K.
//!
//! Quantization is llama.cpp's `quantize_row_iq2_xxs_impl`, operation for operation. llama.cpp
//! refuses to quantize IQ2_XXS without an importance matrix; crunch uses unit importance then (the
//! bytes equal llama.cpp's with an all-ones imatrix).

use super::iq2_grid::{
    fold_signs_even, tables, Iq2Kind, Iq2Tables, GROUP_MAX_EPS, IQ2XXS_GRID, KMASK_IQ2XS, KSIGNS_IQ2XS,
};
use crate::kquants::search::{make_qp_quants, nearest_int};
use crate::kquants::BlockQ8K;
use crate::legacy::{all_blocks, blocks, fill_blocks, usable_weights};
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::{GgmlType, QK_K};
use half::f16;

/// One IQ2_XXS super-block. Group `g` is `qs[4 g..4 g + 4]` read as two little-endian u32 words
/// `a`, `b`: byte `l` of `a` is the grid index of its 8-element part `l`, bits `7 l..7 l + 7` of `b`
/// its sign pattern, and `b >> 28` the group scale `s`: values are `d * (0.5 + s) / 4 * grid * sign`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIq2Xxs {
    pub d: f16,
    pub qs: [u16; QK_K / 8],
}

const _: () = assert!(size_of::<BlockIq2Xxs>() == 2 + QK_K / 4);

impl BlockIq2Xxs {
    /// The two words of group `ib` (grid indices, then signs and scale).
    #[inline]
    fn words(&self, ib: usize) -> (u32, u32) {
        let q = &self.qs[4 * ib..4 * ib + 4];
        (u32::from(q[0]) | u32::from(q[1]) << 16, u32::from(q[2]) | u32::from(q[3]) << 16)
    }
}

pub(crate) static KERNELS: Kernels = Kernels {
    ty: GgmlType::IQ2_XXS,
    quantize,
    dequantize,
    vec_dot: Some(vec_dot),
    dot_type: GgmlType::Q8_K,
    uses_weights: true,
};

const K_MAX_Q: i32 = 3;

/// `sum w x q` and `sum w q^2` over a group with `q = 2 l + 1`, in llama.cpp's order.
#[inline]
fn weighted_sums(weight: &[f32], xval: &[f32], levels: &[i8]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for ((&w, &x), &l) in weight.iter().zip(xval).zip(levels) {
        let q = f32::from(2 * l + 1);
        sumqx += w * x * q;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// Levels `clamp(round((id x - 1) / 2), 0, kMaxQ - 1)` of 8 values.
#[inline]
fn levels_at(id: f32, xval: &[f32], out: &mut [i8]) {
    for (o, &x) in out.iter_mut().zip(xval) {
        *o = nearest_int(0.5 * (id * x - 1.0)).clamp(0, K_MAX_Q - 1) as i8;
    }
}

/// Quantize one group of 32: returns its scale (0 for an all-zero group) and fills the two words
/// (without the scale bits).
fn quantize_group(t: &Iq2Tables, xb: &[f32], qw: &[f32], sigma2: f32, words: &mut [u32; 2]) -> f32 {
    let mut weight = [0.0f32; 32];
    let mut waux = [0.0f32; 32];
    for ((w, a), (&x, &q)) in weight.iter_mut().zip(waux.iter_mut()).zip(xb.iter().zip(qw)) {
        *w = q * (sigma2 + x * x).sqrt();
        *a = w.sqrt();
    }
    let mut xval = [0.0f32; 32];
    let mut block_signs = [0u8; 4];
    for (k, s) in block_signs.iter_mut().enumerate() {
        let r = 8 * k..8 * k + 8;
        *s = fold_signs_even(&xb[r.clone()], &weight[r.clone()], &mut xval[r]);
    }
    let mut max = xval[0];
    for &v in &xval[1..] {
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        return 0.0;
    }
    let mut lq = [0u8; 32];
    let mut scale = make_qp_quants(32, K_MAX_Q + 1, &xval, &mut lq, &weight);
    let eff_max = scale * K_MAX_Q as f32;
    if eff_max <= 0.0 {
        return 0.0;
    }
    // llama.cpp reads make_qp_quants' output through an int8 view
    let mut l: [i8; 32] = lq.map(|v| v as i8);
    let mut laux = [0i8; 32];
    let mut best = 0.0f32;
    for is in -6i32..=6 {
        let id = ((2 * K_MAX_Q - 1) as f32 + is as f32 * 0.1) / eff_max;
        let this_scale = 1.0 / id;
        for k in 0..4 {
            let r = 8 * k..8 * k + 8;
            levels_at(id, &xval[r.clone()], &mut laux[r.clone()]);
            let _ = t.index_or_neighbour(&mut laux[r.clone()], &xval[r.clone()], &waux[r], this_scale);
        }
        let (sumqx, sumq2) = weighted_sums(&weight, &xval, &laux);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            l = laux;
        }
    }
    if scale > 0.0 {
        let id = 1.0 / scale;
        for k in 0..4 {
            let r = 8 * k..8 * k + 8;
            let mut lv = [0i8; 8];
            levels_at(id, &xval[r.clone()], &mut lv);
            let (Ok(g) | Err(g)) = t.index_or_neighbour(&mut lv, &xval[r.clone()], &waux[r.clone()], scale);
            for (o, &b) in l[r].iter_mut().zip(&t.point(g)) {
                *o = (b - 1) / 2;
            }
        }
        let (sumqx, sumq2) = weighted_sums(&weight, &xval, &l);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    if scale < 0.0 {
        // never happens for finite input (llama.cpp keeps the branch just in case)
        scale = -scale;
        for s in &mut block_signs {
            *s = !*s & 127;
        }
    }
    for (k, &s) in block_signs.iter().enumerate() {
        let r = 8 * k..8 * k + 8;
        // on the grid by construction; for NaN input the lookup falls back to a neighbour
        let (Ok(g) | Err(g)) = t.index_or_neighbour(&mut l[r.clone()], &xval[r.clone()], &waux[r], scale);
        words[0] |= (g as u32) << (8 * k);
        words[1] |= u32::from(s) << (7 * k);
    }
    scale
}

/// Quantize one super-block of 256 with its 256 importance weights.
pub fn quantize_block(x: &[f32; QK_K], importance: &[f32; QK_K]) -> BlockIq2Xxs {
    let t = tables(Iq2Kind::Xxs);
    let mut sumx2 = 0.0f32;
    for &v in x {
        sumx2 += v * v;
    }
    let sigma2 = sumx2 / QK_K as f32;
    let mut q2 = [0u32; QK_K / 16];
    let mut scales = [0.0f32; QK_K / 32];
    let mut max_scale = 0.0f32;
    for (ib, s) in scales.iter_mut().enumerate() {
        let r = 32 * ib..32 * ib + 32;
        let mut words = [0u32; 2];
        *s = quantize_group(t, &x[r.clone()], &importance[r], sigma2, &mut words);
        q2[2 * ib..2 * ib + 2].copy_from_slice(&words);
        max_scale = if max_scale > *s { max_scale } else { *s };
    }
    let mut b = BlockIq2Xxs::zeroed();
    if max_scale == 0.0 {
        return b;
    }
    let d = max_scale / 31.0;
    b.d = f16::from_f32(d);
    let id = 1.0 / d;
    for (ib, &s) in scales.iter().enumerate() {
        let l = nearest_int(0.5 * (id * s - 1.0)).clamp(0, 15);
        q2[2 * ib + 1] |= (l as u32) << 28;
    }
    for (j, w) in q2.iter().enumerate() {
        b.qs[2 * j] = *w as u16;
        b.qs[2 * j + 1] = (*w >> 16) as u16;
    }
    b
}

/// Quantize one row (`src.len()` a multiple of 256) into IQ2_XXS super-blocks with `weights` (one
/// per element) as importance, or unit importance when there are none.
pub fn quantize(src: &[f32], weights: Option<&[f32]>, dst: &mut [u8]) {
    let weights = usable_weights(src, weights);
    let ones = [1.0f32; QK_K];
    fill_blocks(dst, |out: &mut [BlockIq2Xxs]| {
        for (i, (b, x)) in out.iter_mut().zip(src.chunks_exact(QK_K)).enumerate() {
            let w = weights.and_then(|w| w.get(i * QK_K..(i + 1) * QK_K)?.try_into().ok()).unwrap_or(&ones);
            if let Ok(x) = x.try_into() {
                *b = quantize_block(x, w);
            }
        }
    });
}

/// Dequantize IQ2_XXS super-blocks (llama.cpp's `dequantize_row_iq2_xxs`).
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, y) in all_blocks::<BlockIq2Xxs>(src).iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (ib, yg) in y.chunks_exact_mut(32).enumerate() {
            let (a, s) = b.words(ib);
            let db = d * (0.5 + (s >> 28) as f32) * 0.25;
            for (l, y8) in yg.chunks_exact_mut(8).enumerate() {
                let grid = IQ2XXS_GRID[((a >> (8 * l)) & 255) as usize].to_le_bytes();
                let signs = KSIGNS_IQ2XS[((s >> (7 * l)) & 127) as usize];
                for (j, v) in y8.iter_mut().enumerate() {
                    let sign = if signs & KMASK_IQ2XS[j] != 0 { -1.0 } else { 1.0 };
                    *v = db * f32::from(grid[j]) * sign;
                }
            }
        }
    }
}

/// Dot product of `n` elements of IQ2_XXS `x` with Q8_K `y`, using AVX2 when the CPU has it.
pub fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    vec_dot_simd(n, x, y).unwrap_or_else(|| vec_dot_scalar(n, x, y))
}

/// Scalar reference dot product (llama.cpp's generic kernel order).
pub fn vec_dot_scalar(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let xs = blocks::<BlockIq2Xxs>(x, n / QK_K);
    let ys = blocks::<BlockQ8K>(y, n / QK_K);
    let mut sumf = 0.0f32;
    for (bx, by) in xs.iter().zip(ys.iter()) {
        let d = bx.d.to_f32() * by.d;
        let mut bsum = 0i32;
        for (ib, q8) in by.qs.chunks_exact(32).enumerate() {
            let (a, s) = bx.words(ib);
            let ls = 2 * (s >> 28) as i32 + 1;
            let mut sumi = 0i32;
            for (l, q8) in q8.chunks_exact(8).enumerate() {
                let grid = IQ2XXS_GRID[((a >> (8 * l)) & 255) as usize].to_le_bytes();
                let signs = KSIGNS_IQ2XS[((s >> (7 * l)) & 127) as usize];
                for j in 0..8 {
                    let v = i32::from(grid[j]) * i32::from(q8[j]);
                    sumi += if signs & KMASK_IQ2XS[j] != 0 { -v } else { v };
                }
            }
            bsum += sumi * ls;
        }
        sumf += d * bsum as f32;
    }
    0.125 * sumf
}

/// The SIMD dot product, or `None` when this CPU has no SIMD kernel for it.
pub fn vec_dot_simd(n: usize, x: &[u8], y: &[u8]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if crate::legacy::simd::has_avx2_fma() {
        let xs = blocks::<BlockIq2Xxs>(x, n / QK_K);
        let ys = blocks::<BlockQ8K>(y, n / QK_K);
        // SAFETY: AVX2 and FMA were detected on this CPU just above.
        return Some(unsafe { avx2::dot(&xs, &ys) });
    }
    let _ = (n, x, y);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::iq2_grid::{IQ2XXS_GRID, KSIGNS_IQ2XS_X8};
    use super::{BlockIq2Xxs, BlockQ8K};
    use crate::legacy::simd::*;
    use std::arch::x86_64::*;

    /// Integer sums per super-block exactly as the scalar kernel (so the result is bit-identical),
    /// with the products of 32 elements at a time.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot(xs: &[BlockIq2Xxs], ys: &[BlockQ8K]) -> f32 {
        let mut sumf = 0.0f32;
        for (bx, by) in xs.iter().zip(ys) {
            let mut isum = _mm256_setzero_si256();
            for (ib, q8) in by.qs.chunks_exact(32).enumerate() {
                let Ok(q8) = <&[i8; 32]>::try_from(q8) else { continue };
                let (a, s) = bx.words(ib);
                let g = |l: u32| IQ2XXS_GRID[((a >> (8 * l)) & 255) as usize] as i64;
                let sg = |l: u32| KSIGNS_IQ2XS_X8[((s >> (7 * l)) & 127) as usize] as i64;
                let grid = _mm256_set_epi64x(g(3), g(2), g(1), g(0));
                let signs = _mm256_set_epi64x(sg(3), sg(2), sg(1), sg(0));
                let q = _mm256_sign_epi8(load_i8_32(q8), signs);
                // grid bytes are at most 0x2b: the i16 pair sums cannot saturate
                let pairs = _mm256_maddubs_epi16(grid, q);
                let ls = _mm256_set1_epi16((2 * (s >> 28) + 1) as i16);
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(pairs, ls));
            }
            let d = bx.d.to_f32() * by.d;
            sumf += d * hsum_i32(isum) as f32;
        }
        0.125 * sumf
    }
}
