//! IQ2_XS: 256-element super-blocks of sixteen 16-element groups, 2.3125 bits per weight. Each
//! 8-element part is one u16: a 9-bit index into the 512-point grid [`IQ2XS_GRID`] and a 7-bit sign
//! pattern (the 8th sign restores even parity, [`KSIGNS_IQ2XS`]); each group has a 4-bit scale; one
//! f16 super-block scale. Dot products run against Q8_K.
//!
//! Quantization is llama.cpp's `quantize_row_iq2_xs_impl`, operation for operation. llama.cpp
//! refuses to quantize IQ2_XS without an importance matrix; crunch uses unit importance then (the
//! bytes equal llama.cpp's with an all-ones imatrix).

use super::iq2_grid::{
    fold_signs_even, tables, Iq2Kind, Iq2Tables, GROUP_MAX_EPS, IQ2XS_GRID, KMASK_IQ2XS, KSIGNS_IQ2XS,
};
use crate::kquants::search::nearest_int;
use crate::kquants::BlockQ8K;
use crate::legacy::{all_blocks, blocks, fill_blocks, usable_weights};
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::{GgmlType, QK_K};
use half::f16;

/// One IQ2_XS super-block. Part `p` (8 elements) is `qs[p]`: grid index `qs[p] & 511`, sign pattern
/// `qs[p] >> 9`; group `g` (16 elements) has scale nibble `g % 2` of `scales[g / 2]`: values are
/// `d * (0.5 + s) / 4 * grid * sign`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIq2Xs {
    pub d: f16,
    pub qs: [u16; QK_K / 8],
    pub scales: [u8; QK_K / 32],
}

const _: () = assert!(size_of::<BlockIq2Xs>() == 2 + QK_K / 4 + QK_K / 32);

pub(crate) static KERNELS: Kernels = Kernels {
    ty: GgmlType::IQ2_XS,
    quantize,
    dequantize,
    vec_dot: Some(vec_dot),
    dot_type: GgmlType::Q8_K,
    uses_weights: true,
};

const K_MAX_Q: i32 = 3;

/// `sum w x q` and `sum w q^2` over a group with `q = 2 l + 1`, in llama.cpp's order.
#[inline]
pub(super) fn weighted_sums(weight: &[f32], xval: &[f32], levels: &[i8]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for ((&w, &x), &l) in weight.iter().zip(xval).zip(levels) {
        let q = f32::from(2 * l + 1);
        sumqx += w * x * q;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// Levels `clamp(round((id x - 1) / 2), 0, 2)` of 8 values.
#[inline]
fn levels_at(id: f32, xval: &[f32], out: &mut [i8]) {
    for (o, &x) in out.iter_mut().zip(xval) {
        *o = nearest_int(0.5 * (id * x - 1.0)).clamp(0, K_MAX_Q - 1) as i8;
    }
}

/// The scale search of one 16-element group shared by IQ2_XS and IQ2_S (identical in llama.cpp):
/// 19 trial scales around `max / 5`, off-grid parts replaced by their best neighbour, then the
/// off-grid parts of the winner re-coded at its scale. `xval` are the folded magnitudes, `max` their
/// maximum. Returns the scale and the grid index of each 8-element part.
pub(super) fn search_group16(
    t: &Iq2Tables,
    xval: &[f32; 16],
    weight: &[f32; 16],
    waux: &[f32; 16],
    max: f32,
) -> (f32, [usize; 2]) {
    let mut l = [0i8; 16];
    let mut laux = [0i8; 16];
    let mut best = 0.0f32;
    let mut scale = max / (2 * K_MAX_Q - 1) as f32;
    let mut is_on_grid = [true; 2];
    let mut is_on_grid_aux = [true; 2];
    for is in -9i32..=9 {
        let id = ((2 * K_MAX_Q - 1) as f32 + is as f32 * 0.1) / max;
        let this_scale = 1.0 / id;
        for (k, on) in is_on_grid_aux.iter_mut().enumerate() {
            let r = 8 * k..8 * k + 8;
            levels_at(id, &xval[r.clone()], &mut laux[r.clone()]);
            *on = t.index_or_neighbour(&mut laux[r.clone()], &xval[r.clone()], &waux[r], this_scale).is_ok();
        }
        let (sumqx, sumq2) = weighted_sums(weight, xval, &laux);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            l = laux;
            is_on_grid = is_on_grid_aux;
        }
    }
    if is_on_grid.contains(&false) && scale > 0.0 {
        let id = 1.0 / scale;
        for (k, &on) in is_on_grid.iter().enumerate() {
            if on {
                continue;
            }
            let r = 8 * k..8 * k + 8;
            levels_at(id, &xval[r.clone()], &mut l[r.clone()]);
            let _ = t.index_or_neighbour(&mut l[r.clone()], &xval[r.clone()], &waux[r], scale);
        }
        let (sumqx, sumq2) = weighted_sums(weight, xval, &l);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    // on the grid by construction; for NaN input the lookup falls back to a neighbour
    let mut index = [0usize; 2];
    for (k, g) in index.iter_mut().enumerate() {
        let r = 8 * k..8 * k + 8;
        let (Ok(i) | Err(i)) = t.index_or_neighbour(&mut l[r.clone()], &xval[r.clone()], &waux[r], scale);
        *g = i;
    }
    (scale, index)
}

/// Quantize one super-block of 256 with its 256 importance weights.
pub fn quantize_block(x: &[f32; QK_K], importance: &[f32; QK_K]) -> BlockIq2Xs {
    let t = tables(Iq2Kind::Xs);
    let mut sumx2 = 0.0f32;
    for &v in x {
        sumx2 += v * v;
    }
    let sigma2 = sumx2 / QK_K as f32;
    let mut b = BlockIq2Xs::zeroed();
    let mut scales = [0.0f32; QK_K / 16];
    let mut max_scale = 0.0f32;
    for (ib, sc) in scales.iter_mut().enumerate() {
        let xb = &x[16 * ib..16 * ib + 16];
        let qw = &importance[16 * ib..16 * ib + 16];
        let mut weight = [0.0f32; 16];
        let mut waux = [0.0f32; 16];
        for ((w, a), (&x, &q)) in weight.iter_mut().zip(waux.iter_mut()).zip(xb.iter().zip(qw)) {
            *w = q * (sigma2 + x * x).sqrt();
            *a = w.sqrt();
        }
        let mut xval = [0.0f32; 16];
        let mut block_signs = [0u8; 2];
        for (k, s) in block_signs.iter_mut().enumerate() {
            let r = 8 * k..8 * k + 8;
            *s = fold_signs_even(&xb[r.clone()], &weight[r.clone()], &mut xval[r]);
        }
        let mut max = xval[0];
        for &v in &xval[1..] {
            max = if max > v { max } else { v };
        }
        if max < GROUP_MAX_EPS {
            *sc = 0.0;
            continue;
        }
        let (mut scale, index) = search_group16(t, &xval, &weight, &waux, max);
        if scale < 0.0 {
            // never happens for finite input (llama.cpp keeps the branch just in case)
            scale = -scale;
            for s in &mut block_signs {
                *s = !*s & 127;
            }
        }
        for k in 0..2 {
            b.qs[2 * ib + k] = index[k] as u16 | (u16::from(block_signs[k]) << 9);
        }
        *sc = scale;
        max_scale = if max_scale > scale { max_scale } else { scale };
    }
    if max_scale == 0.0 {
        b.qs = [0; QK_K / 8];
        return b;
    }
    let d = max_scale / 31.0;
    b.d = f16::from_f32(d);
    let id = 1.0 / d;
    for (ib, &s) in scales.iter().enumerate() {
        let l = nearest_int(0.5 * (id * s - 1.0)).clamp(0, 15) as u8;
        b.scales[ib / 2] |= l << (4 * (ib % 2));
    }
    b
}

/// Quantize one row (`src.len()` a multiple of 256) into IQ2_XS super-blocks with `weights` (one
/// per element) as importance, or unit importance when there are none.
pub fn quantize(src: &[f32], weights: Option<&[f32]>, dst: &mut [u8]) {
    let weights = usable_weights(src, weights);
    let ones = [1.0f32; QK_K];
    fill_blocks(dst, |out: &mut [BlockIq2Xs]| {
        for (i, (b, x)) in out.iter_mut().zip(src.chunks_exact(QK_K)).enumerate() {
            let w = weights.and_then(|w| w.get(i * QK_K..(i + 1) * QK_K)?.try_into().ok()).unwrap_or(&ones);
            if let Ok(x) = x.try_into() {
                *b = quantize_block(x, w);
            }
        }
    });
}

/// Dequantize IQ2_XS super-blocks (llama.cpp's `dequantize_row_iq2_xs`).
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, y) in all_blocks::<BlockIq2Xs>(src).iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (p, (y8, &q)) in y.chunks_exact_mut(8).zip(&b.qs).enumerate() {
            let s = (b.scales[p / 4] >> (4 * ((p / 2) % 2))) & 0x0f;
            let db = d * (0.5 + f32::from(s)) * 0.25;
            let grid = IQ2XS_GRID[usize::from(q & 511)].to_le_bytes();
            let signs = KSIGNS_IQ2XS[usize::from(q >> 9)];
            for (j, v) in y8.iter_mut().enumerate() {
                let sign = if signs & KMASK_IQ2XS[j] != 0 { -1.0 } else { 1.0 };
                *v = db * f32::from(grid[j]) * sign;
            }
        }
    }
}

/// Dot product of `n` elements of IQ2_XS `x` with Q8_K `y`, using AVX2 when the CPU has it.
pub fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    vec_dot_simd(n, x, y).unwrap_or_else(|| vec_dot_scalar(n, x, y))
}

/// Scalar reference dot product (llama.cpp's generic kernel order).
pub fn vec_dot_scalar(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let xs = blocks::<BlockIq2Xs>(x, n / QK_K);
    let ys = blocks::<BlockQ8K>(y, n / QK_K);
    let mut sumf = 0.0f32;
    for (bx, by) in xs.iter().zip(ys.iter()) {
        let d = bx.d.to_f32() * by.d;
        let mut bsum = 0i32;
        for (ib, (q2, q8)) in bx.qs.chunks_exact(4).zip(by.qs.chunks_exact(32)).enumerate() {
            let ls = [2 * i32::from(bx.scales[ib] & 0xf) + 1, 2 * i32::from(bx.scales[ib] >> 4) + 1];
            for (h, ls) in ls.into_iter().enumerate() {
                let mut sumi = 0i32;
                for l in 2 * h..2 * h + 2 {
                    let grid = IQ2XS_GRID[usize::from(q2[l] & 511)].to_le_bytes();
                    let signs = KSIGNS_IQ2XS[usize::from(q2[l] >> 9)];
                    for j in 0..8 {
                        let v = i32::from(grid[j]) * i32::from(q8[8 * l + j]);
                        sumi += if signs & KMASK_IQ2XS[j] != 0 { -v } else { v };
                    }
                }
                bsum += sumi * ls;
            }
        }
        sumf += d * bsum as f32;
    }
    0.125 * sumf
}

/// The SIMD dot product, or `None` when this CPU has no SIMD kernel for it.
pub fn vec_dot_simd(n: usize, x: &[u8], y: &[u8]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if crate::legacy::simd::has_avx2_fma() {
        let xs = blocks::<BlockIq2Xs>(x, n / QK_K);
        let ys = blocks::<BlockQ8K>(y, n / QK_K);
        // SAFETY: AVX2 and FMA were detected on this CPU just above.
        return Some(unsafe { avx2::dot(&xs, &ys) });
    }
    let _ = (n, x, y);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::iq2_grid::{IQ2XS_GRID, KSIGNS_IQ2XS_X8};
    use super::{BlockIq2Xs, BlockQ8K};
    use crate::legacy::simd::*;
    use std::arch::x86_64::*;

    /// Integer sums per super-block exactly as the scalar kernel (so the result is bit-identical),
    /// with the products of 32 elements at a time.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot(xs: &[BlockIq2Xs], ys: &[BlockQ8K]) -> f32 {
        let mut sumf = 0.0f32;
        for (bx, by) in xs.iter().zip(ys) {
            let mut isum = _mm256_setzero_si256();
            for (ib, (q2, q8)) in bx.qs.chunks_exact(4).zip(by.qs.chunks_exact(32)).enumerate() {
                let Ok(q8) = <&[i8; 32]>::try_from(q8) else { continue };
                let g = |l: usize| IQ2XS_GRID[usize::from(q2[l] & 511)] as i64;
                let sg = |l: usize| KSIGNS_IQ2XS_X8[usize::from(q2[l] >> 9)] as i64;
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
