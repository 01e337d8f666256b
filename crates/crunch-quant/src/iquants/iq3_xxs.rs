//! IQ3_XXS: 256-element super-blocks of eight 32-element sub-blocks (3.0625 bits per weight). Each
//! group of four elements is one index into the 256-point grid [`IQ3XXS_GRID`] of magnitudes; each
//! group of eight has seven stored sign bits (the eighth makes the number of minus signs even, see
//! `KSIGNS_IQ2XS`); each sub-block has a 4-bit scale `(2s + 1) / 4` relative to the f16 super-block
//! scale. Dot products run against Q8_K.
//!
//! Quantization is llama.cpp's `quantize_row_iq3_xxs_impl` (grid size 256), float operations in its
//! order so the bytes equal llama.cpp's, with importance weights `qw * sqrt(sigma2 + x²)` or `x²`
//! without them. [`search_sub_block`] is the scale and grid search it shares with IQ3_S.

use super::iq2_grid::{KMASK_IQ2XS, KSIGNS_IQ2XS};
use super::iq3_grid::{search_256, SearchTables, IQ3XXS_GRID};
use crate::kquants::search::nearest_int;
use crate::kquants::BlockQ8K;
use crate::legacy::{all_blocks, blocks, fill_blocks, sum_squares, usable_weights};
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::{GgmlType, QK_K};
use half::f16;

/// Elements per sub-block (one scale).
pub(super) const SUB: usize = 32;
/// Sub-blocks per super-block.
const SUBS: usize = QK_K / SUB;

/// One IQ3_XXS super-block. `qs[0..64]`: one grid index per group of four elements; `qs[64..96]`:
/// eight little-endian `u32`, one per sub-block, holding four 7-bit sign indices (bits `7l..7l + 7`
/// for the `l`-th group of eight) and the 4-bit scale in bits 28..32.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIq3Xxs {
    pub d: f16,
    pub qs: [u8; 3 * QK_K / 8],
}

const _: () = assert!(size_of::<BlockIq3Xxs>() == 2 + 3 * QK_K / 8);

impl BlockIq3Xxs {
    /// The scales-and-signs word of sub-block `ib`.
    #[inline]
    pub fn aux(&self, ib: usize) -> u32 {
        let o = QK_K / 4 + 4 * ib;
        u32::from_le_bytes([self.qs[o], self.qs[o + 1], self.qs[o + 2], self.qs[o + 3]])
    }
}

pub(crate) static KERNELS: Kernels = Kernels {
    ty: GgmlType::IQ3_XXS,
    quantize,
    dequantize,
    vec_dot: Some(vec_dot),
    dot_type: GgmlType::Q8_K,
    uses_weights: true,
};

/// llama.cpp's `iq3_find_best_neighbour`: the grid point among `neighbours` nearest to `xval` at
/// `scale` (weighted by `weight`), written into `l` as levels; returns its index. The first
/// neighbour stands in when no distance compares smaller (NaN input), where llama.cpp would abort.
fn find_best_neighbour(
    t: &SearchTables,
    neighbours: &[u16],
    xval: &[f32],
    weight: &[f32],
    scale: f32,
    l: &mut [i8],
) -> usize {
    let mut best_d2 = f32::MAX;
    let mut index = neighbours.first().map_or(0, |&j| usize::from(j));
    for &j in neighbours {
        let pg = t.point(usize::from(j));
        let mut d2 = 0.0f32;
        for i in 0..4 {
            let q = f32::from(pg[i]);
            let diff = scale * q - xval[i];
            d2 += weight[i] * diff * diff;
        }
        if d2 < best_d2 {
            best_d2 = d2;
            index = usize::from(j);
        }
    }
    for (li, &p) in l.iter_mut().zip(&t.point(index)) {
        *li = (p - 1) / 2;
    }
    index
}

/// The 12-bit lattice point of four levels.
#[inline]
fn lattice(l: &[i8]) -> usize {
    l.iter().take(4).enumerate().fold(0, |u, (i, &v)| u | ((v as usize & 7) << (3 * i)))
}

/// Levels of four elements at inverse scale `id`, clamped to the lattice.
#[inline]
fn levels(id: f32, xval: &[f32], l: &mut [i8]) {
    for (li, &x) in l.iter_mut().zip(xval) {
        *li = nearest_int(0.5 * (id * x - 1.0)).clamp(0, 7) as i8;
    }
}

/// The grid index of four levels that lie on the grid (always, after [`search_sub_block`]); the
/// nearest neighbour otherwise, where llama.cpp would abort.
pub(super) fn grid_index(t: &SearchTables, l: &[i8]) -> usize {
    let m = t.map[lattice(l)];
    if m >= 0 {
        m as usize
    } else {
        t.neighbours_of(m).first().map_or(0, |&j| usize::from(j))
    }
}

/// `sum w x q` and `sum w q²` over a sub-block at levels `l` (`q = 2l + 1`).
#[inline]
fn sums(weight: &[f32; SUB], xval: &[f32; SUB], l: &[i8; SUB]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for i in 0..SUB {
        let w = weight[i];
        let q = f32::from(2 * l[i] + 1);
        sumqx += w * xval[i] * q;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// The scale and grid search of one sub-block of magnitudes `xval` (max `max > 0`), shared by
/// llama.cpp's `quantize_row_iq3_xxs_impl` (`steps` 15, `refit_all` false: trial scales
/// `(15 + 0.2 s) / max` for |s| <= 15, then the groups that were off the grid re-fitted) and
/// `quantize_row_iq3_s_impl` (`steps` 9, `refit_all` true: every group re-fitted). Returns the
/// levels (0..8, on the grid in groups of four) and the scale.
pub(super) fn search_sub_block(
    t: &SearchTables,
    steps: i32,
    refit_all: bool,
    xval: &[f32; SUB],
    weight: &[f32; SUB],
    waux: &[f32; SUB],
    max: f32,
) -> ([i8; SUB], f32) {
    let mut l = [0i8; SUB];
    let mut laux = [0i8; SUB];
    let mut best = 0.0f32;
    let mut scale = max / 15.0;
    let mut on_grid = [!refit_all; SUB / 4];
    let mut on_grid_aux = [true; SUB / 4];
    for is in -steps..=steps {
        let id = (15.0 + is as f32 * 0.2) / max;
        let this_scale = 1.0 / id;
        for (k, on) in on_grid_aux.iter_mut().enumerate() {
            let g = 4 * k..4 * k + 4;
            levels(id, &xval[g.clone()], &mut laux[g.clone()]);
            let m = t.map[lattice(&laux[g.clone()])];
            *on = m >= 0;
            if m < 0 {
                find_best_neighbour(
                    t,
                    t.neighbours_of(m),
                    &xval[g.clone()],
                    &waux[g.clone()],
                    this_scale,
                    &mut laux[g],
                );
            }
        }
        let (sumqx, sumq2) = sums(weight, xval, &laux);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            l = laux;
            on_grid = on_grid_aux;
        }
    }
    if on_grid.iter().any(|&g| !g) && scale > 0.0 {
        let id = 1.0 / scale;
        for (k, &on) in on_grid.iter().enumerate() {
            if !refit_all && on {
                continue;
            }
            let g = 4 * k..4 * k + 4;
            let mut lk = [0i8; 4];
            levels(id, &xval[g.clone()], &mut lk);
            let m = t.map[lattice(&lk)];
            let index = if m >= 0 {
                m as usize
            } else {
                find_best_neighbour(t, t.neighbours_of(m), &xval[g.clone()], &waux[g.clone()], scale, &mut l[g.clone()])
            };
            for (li, &p) in l[g].iter_mut().zip(&t.point(index)) {
                *li = (p - 1) / 2;
            }
        }
        let (sumqx, sumq2) = sums(weight, xval, &l);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    (l, scale)
}

/// Search weights of a sub-block: `qw * sqrt(sigma2 + x²)` with importance, `x²` without; and
/// their square roots (the neighbour search's weights).
pub(super) fn sub_block_weights(xb: &[f32], qw: Option<&[f32]>, sigma2: f32) -> ([f32; SUB], [f32; SUB]) {
    let mut weight = [0.0f32; SUB];
    match qw {
        Some(qw) => {
            for ((w, &x), &q) in weight.iter_mut().zip(xb).zip(qw) {
                *w = q * (sigma2 + x * x).sqrt();
            }
        }
        None => {
            for (w, &x) in weight.iter_mut().zip(xb) {
                *w = x * x;
            }
        }
    }
    (weight, weight.map(f32::sqrt))
}

/// llama.cpp's `MAX(a, b)`: `a > b ? a : b`.
#[inline]
pub(super) fn c_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// Quantize one super-block of 256; `importance` holds its 256 importance weights.
pub fn quantize_block(x: &[f32; QK_K], importance: Option<&[f32; QK_K]>) -> BlockIq3Xxs {
    let t = search_256();
    let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
    let mut scales = [0.0f32; SUBS];
    let mut q3 = [0u8; QK_K / 4];
    let mut aux = [0u32; SUBS];
    let mut max_scale = 0.0f32;
    for ib in 0..SUBS {
        let xb = &x[SUB * ib..SUB * (ib + 1)];
        let (weight, waux) = sub_block_weights(xb, importance.map(|w| &w[SUB * ib..SUB * (ib + 1)]), sigma2);
        let mut xval = [0.0f32; SUB];
        let mut signs = [0u8; 4];
        for (k, s) in signs.iter_mut().enumerate() {
            let mut nflip = 0;
            for i in 0..8 {
                let v = xb[8 * k + i];
                if v >= 0.0 {
                    xval[8 * k + i] = v;
                } else {
                    xval[8 * k + i] = -v;
                    nflip += 1;
                    *s |= 1 << i;
                }
            }
            if nflip % 2 == 1 {
                // an even number of minus signs is stored: flip the least important element
                let ax = |i: usize| weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
                let (mut imin, mut min) = (0, ax(0));
                for i in 1..8 {
                    if ax(i) < min {
                        min = ax(i);
                        imin = i;
                    }
                }
                xval[8 * k + imin] = -xval[8 * k + imin];
                *s ^= 1 << imin;
            }
            *s &= 127;
        }
        let max = xval[1..].iter().fold(xval[0], |m, &v| c_max(m, v));
        if max < 1e-8 {
            continue;
        }
        let (l, mut scale) = search_sub_block(t, 15, false, &xval, &weight, &waux, max);
        if scale < 0.0 {
            scale = -scale;
            for s in &mut signs {
                *s = !*s & 127;
            }
        }
        for (k, q) in q3[8 * ib..8 * ib + 8].iter_mut().enumerate() {
            *q = grid_index(t, &l[4 * k..4 * k + 4]) as u8;
        }
        aux[ib] = signs.iter().enumerate().fold(0, |a, (k, &s)| a | (u32::from(s) << (7 * k)));
        scales[ib] = scale;
        max_scale = c_max(max_scale, scale);
    }
    let mut b = BlockIq3Xxs::zeroed();
    if max_scale == 0.0 {
        return b;
    }
    let d = max_scale / 31.0;
    b.d = f16::from_f32(d * 1.0125);
    let id = 1.0 / d;
    for (a, &s) in aux.iter_mut().zip(&scales) {
        let l = nearest_int(0.5 * (id * s - 1.0)).clamp(0, 15);
        *a |= (l as u32) << 28;
    }
    b.qs[..QK_K / 4].copy_from_slice(&q3);
    for (o, a) in b.qs[QK_K / 4..].chunks_exact_mut(4).zip(aux) {
        o.copy_from_slice(&a.to_le_bytes());
    }
    b
}

/// Quantize one row (`src.len()` a multiple of 256) into IQ3_XXS super-blocks, importance-weighted
/// when `weights` (one per element of the row) are given.
pub fn quantize(src: &[f32], weights: Option<&[f32]>, dst: &mut [u8]) {
    let weights = usable_weights(src, weights);
    fill_blocks(dst, |out: &mut [BlockIq3Xxs]| {
        for (i, (b, x)) in out.iter_mut().zip(src.chunks_exact(QK_K)).enumerate() {
            let w = weights.and_then(|w| w.get(i * QK_K..(i + 1) * QK_K)?.try_into().ok());
            if let Ok(x) = x.try_into() {
                *b = quantize_block(x, w);
            }
        }
    });
}

/// `-1.0` where bit `j` of `signs` is set, `1.0` elsewhere.
#[inline]
fn sign(signs: u8, j: usize) -> f32 {
    if signs & KMASK_IQ2XS[j] != 0 {
        -1.0
    } else {
        1.0
    }
}

/// Dequantize IQ3_XXS super-blocks (llama.cpp's `dequantize_row_iq3_xxs`).
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, y) in all_blocks::<BlockIq3Xxs>(src).iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (ib, ys) in y.chunks_exact_mut(SUB).enumerate() {
            let aux = b.aux(ib);
            let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
            for (l, y8) in ys.chunks_exact_mut(8).enumerate() {
                let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                let g1 = IQ3XXS_GRID[usize::from(b.qs[8 * ib + 2 * l])].to_le_bytes();
                let g2 = IQ3XXS_GRID[usize::from(b.qs[8 * ib + 2 * l + 1])].to_le_bytes();
                for j in 0..4 {
                    y8[j] = db * f32::from(g1[j]) * sign(signs, j);
                    y8[j + 4] = db * f32::from(g2[j]) * sign(signs, j + 4);
                }
            }
        }
    }
}

/// Dot product of `n` elements of IQ3_XXS `x` with Q8_K `y`, using AVX2 when the CPU has it.
pub fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    vec_dot_simd(n, x, y).unwrap_or_else(|| vec_dot_scalar(n, x, y))
}

/// Scalar reference dot product (llama.cpp's `ggml_vec_dot_iq3_xxs_q8_K_generic` order).
pub fn vec_dot_scalar(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let xs = blocks::<BlockIq3Xxs>(x, n / QK_K);
    let ys = blocks::<BlockQ8K>(y, n / QK_K);
    let mut sumf = 0.0f32;
    for (bx, by) in xs.iter().zip(ys.iter()) {
        let d = bx.d.to_f32() * by.d;
        let mut bsum = 0i32;
        for (ib, q8) in by.qs.chunks_exact(SUB).enumerate() {
            let aux = bx.aux(ib);
            let ls = 2 * (aux >> 28) as i32 + 1;
            let mut sumi = 0i32;
            for (l, q8) in q8.chunks_exact(8).enumerate() {
                let g1 = IQ3XXS_GRID[usize::from(bx.qs[8 * ib + 2 * l])].to_le_bytes();
                let g2 = IQ3XXS_GRID[usize::from(bx.qs[8 * ib + 2 * l + 1])].to_le_bytes();
                let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                for j in 0..4 {
                    let s = |j: usize| if signs & KMASK_IQ2XS[j] != 0 { -1 } else { 1 };
                    sumi += i32::from(g1[j]) * i32::from(q8[j]) * s(j);
                    sumi += i32::from(g2[j]) * i32::from(q8[j + 4]) * s(j + 4);
                }
            }
            bsum += sumi * ls;
        }
        sumf += d * bsum as f32;
    }
    0.25 * sumf
}

/// The SIMD dot product, or `None` when this CPU has no SIMD kernel for it.
pub fn vec_dot_simd(n: usize, x: &[u8], y: &[u8]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if crate::legacy::simd::has_avx2_fma() {
        let xs = blocks::<BlockIq3Xxs>(x, n / QK_K);
        let ys = blocks::<BlockQ8K>(y, n / QK_K);
        // SAFETY: AVX2 and FMA were detected on this CPU just above.
        return Some(unsafe { avx2::dot(&xs, &ys) });
    }
    let _ = (n, x, y);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockIq3Xxs, BlockQ8K, IQ3XXS_GRID, KSIGNS_IQ2XS, SUB};
    use crate::legacy::simd::*;
    use std::arch::x86_64::*;

    /// The eight grid entries of one sub-block as 32 unsigned magnitudes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn grid8(idx: &[u8]) -> __m256i {
        let g = |k: usize| IQ3XXS_GRID[usize::from(idx[k])] as i32;
        _mm256_set_epi32(g(7), g(6), g(5), g(4), g(3), g(2), g(1), g(0))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot(xs: &[BlockIq3Xxs], ys: &[BlockQ8K]) -> f32 {
        let one = _mm256_set1_epi8(1);
        let mut acc = _mm256_setzero_ps();
        for (bx, by) in xs.iter().zip(ys) {
            let mut isum = _mm256_setzero_si256();
            for (ib, q8) in by.qs.chunks_exact(SUB).enumerate() {
                let Ok(q8) = <&[i8; 32]>::try_from(q8) else {
                    continue;
                };
                let aux = bx.aux(ib);
                let signs: [u8; 4] = std::array::from_fn(|l| KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize]);
                // ±1 per element, applied to the activations so the magnitudes stay unsigned
                let pm = _mm256_or_si256(bits_to_byte_mask(signs), one);
                let q8s = _mm256_sign_epi8(load_i8_32(q8), pm);
                // i16 pair sums (at most 2·62·127), then weighted by 2s + 1 into i32
                let pairs = _mm256_maddubs_epi16(grid8(&bx.qs[8 * ib..8 * ib + 8]), q8s);
                let ls = _mm256_set1_epi16(2 * (aux >> 28) as i16 + 1);
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(pairs, ls));
            }
            let d = _mm256_set1_ps(bx.d.to_f32() * by.d);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), acc);
        }
        0.25 * hsum_f32(acc)
    }
}
