//! IQ1_S: 256-element super-blocks of eight 32-element sub-blocks (1.5625 bits per weight). Each
//! group of eight weights is one of 2048 points of llama.cpp's ternary grid `iq1s_grid` (values in
//! {-1, 0, 1}), shifted by `±IQ1S_DELTA` per sub-block; a sub-block scale `d (2 l + 1)` with a 3-bit
//! `l` scales it. Dot products run against Q8_K.
//!
//! Quantization is llama.cpp's `quantize_row_iq1_s_impl`: per sub-block, the weights are sorted
//! and the two boundaries splitting them into the levels -1, 0, 1 are searched exhaustively for
//! both signs of the shift; groups of eight that are not on the grid go to their best grid
//! neighbour (`iq1_find_best_neighbour2`). The search tables (grid, map, neighbour lists) are
//! ggml's `iq2xs_init_impl` for the 2048-point grid, built once in [`super::iq2_grid`].
//!
//! Without importance weights llama.cpp refuses IQ1_S (`GGML_ASSERT(quant_weights)` in the row
//! quantizer, `ggml_quantize_requires_imatrix` above it). crunch quantizes anyway with unit
//! importance, i.e. search weights `sqrt(sigma2 + x²)` (as crunch's IQ2_XXS / IQ2_XS do): the bytes
//! are exactly llama.cpp's for an importance vector of ones. On LLM-like rows this gives a lower
//! error than the `x²` weighting llama.cpp's IQ1_M uses without importance (relative RMSE 0.547 vs
//! 0.678 on 16 rows of `realistic_weights`, measured when choosing this fallback).

use super::iq2_grid::{tables, Iq2Kind, Iq2Tables, IQ1S_GRID};
use crate::kquants::search::nearest_int;
use crate::kquants::BlockQ8K;
use crate::legacy::{all_blocks, blocks, fill_blocks, usable_weights};
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::{GgmlType, QK_K};
use half::f16;

/// The shift of every grid value (`IQ1S_DELTA`; IQ1_M's `IQ1M_DELTA` is the same).
pub const DELTA: f32 = 0.125;

/// Elements per sub-block.
const SUB: usize = 32;
/// Sub-blocks per super-block.
const SUBS: usize = QK_K / SUB;
/// Sub-blocks whose largest |x| is below this are stored as zero (`GROUP_MAX_EPS_IQ1_S`).
const GROUP_MAX_EPS: f32 = 1e-12;

/// One IQ1_S super-block. Group `k` of sub-block `ib` is grid point
/// `qs[4 ib + k] | ((qh[ib] >> 3 k) & 7) << 8`; bits 12..15 of `qh[ib]` hold the sub-block scale
/// `l` (value `d (2 l + 1)`), bit 15 the sign of the shift (set: `-DELTA`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIq1S {
    pub d: f16,
    pub qs: [u8; QK_K / 8],
    pub qh: [u16; QK_K / 32],
}

const _: () = assert!(size_of::<BlockIq1S>() == 2 + QK_K / 8 + QK_K / 16);

impl BlockIq1S {
    /// The odd multiplier `2 l + 1` of sub-block `ib`.
    #[inline]
    pub fn sub_scale(&self, ib: usize) -> i32 {
        2 * i32::from((self.qh[ib] >> 12) & 7) + 1
    }

    /// The shift of sub-block `ib` in units of [`DELTA`]: 1 or -1.
    #[inline]
    pub fn shift(&self, ib: usize) -> i32 {
        if self.qh[ib] & 0x8000 != 0 {
            -1
        } else {
            1
        }
    }

    /// The grid index of group `k` (0..4) of sub-block `ib`.
    #[inline]
    pub fn grid_index(&self, ib: usize, k: usize) -> usize {
        usize::from(self.qs[4 * ib + k]) | (usize::from((self.qh[ib] >> (3 * k)) & 7) << 8)
    }
}

pub(crate) static KERNELS: Kernels = Kernels {
    ty: GgmlType::IQ1_S,
    quantize,
    dequantize,
    vec_dot: Some(vec_dot),
    dot_type: GgmlType::Q8_K,
    uses_weights: true,
};

/// The eight signed values (-1, 0, 1) of format grid point `index` (`iq1s_grid`).
#[inline]
pub(crate) fn grid_values(index: usize) -> [i8; 8] {
    IQ1S_GRID.get(index).copied().unwrap_or(0).to_le_bytes().map(|b| b as i8)
}

/// The three levels of one shift: `{-1, 0, 1} + DELTA` for a positive shift, `- DELTA` otherwise
/// (llama.cpp's `x_p` / `x_m`).
pub(crate) const fn levels(negative: bool, delta: f32) -> [f32; 3] {
    if negative {
        [-1.0 - delta, -delta, 1.0 - delta]
    } else {
        [-1.0 + delta, delta, 1.0 + delta]
    }
}

/// llama.cpp's super-block `sigma2 = 2 * sumx2 / QK_K`, squares summed left to right.
pub(crate) fn sigma2(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    2.0 * s / QK_K as f32
}

/// Search weights of one sub-block: `importance * sqrt(sigma2 + x²)`, or `x²` without importance.
pub(crate) fn search_weights(xb: &[f32], qw: Option<&[f32]>, sigma2: f32, out: &mut [f32]) {
    match qw {
        Some(qw) => {
            for ((o, &v), &q) in out.iter_mut().zip(xb).zip(qw) {
                *o = q * (sigma2 + v * v).sqrt();
            }
        }
        None => {
            for (o, &v) in out.iter_mut().zip(xb) {
                *o = v * v;
            }
        }
    }
}

/// llama.cpp's `max` of a sub-block: `MAX(max, fabsf(x))` from the first element on.
pub(crate) fn abs_max(xb: &[f32]) -> f32 {
    let mut max = xb.first().map_or(0.0, |v| v.abs());
    for v in xb.iter().skip(1) {
        let a = v.abs();
        max = if max > a { max } else { a };
    }
    max
}

/// The element indices of `xb` in ascending order of value, ties in index order: what glibc's
/// (stable, merge-sort) `qsort` gives llama.cpp with `iq1_sort_helper`. Insertion sort on `<`,
/// so non-finite values cannot make it fail.
pub(crate) fn sorted_order<const N: usize>(xb: &[f32; N]) -> [usize; N] {
    let mut idx = [0usize; N];
    for (i, v) in idx.iter_mut().enumerate() {
        *v = i;
    }
    for i in 1..N {
        let cur = idx[i];
        let mut j = i;
        while j > 0 && xb[cur] < xb[idx[j - 1]] {
            idx[j] = idx[j - 1];
            j -= 1;
        }
        idx[j] = cur;
    }
    idx
}

/// The level (0, 1, 2 for -1, 0, 1) of each element of quantizer grid point `index`.
#[inline]
pub(crate) fn point_levels(t: &Iq2Tables, index: usize) -> [usize; 8] {
    // ggml's `(pg[i] - 1) / 2` of the bytes 1, 3, 5
    t.point(index).map(|b| (b.clamp(1, 5) as usize - 1) / 2)
}

/// Snap eight levels (0..=2 each) to the grid: their own grid point when the map has one, otherwise
/// llama.cpp's `iq1_find_best_neighbour2` over the neighbour list (the point minimising the weighted
/// squared error at `scale` with level values `xg`), writing that point's levels back into `l`.
/// Returns the grid index and whether the levels were already on the grid.
pub(crate) fn snap_to_grid(
    t: &Iq2Tables,
    l: &mut [u8],
    xval: &[f32],
    weight: &[f32],
    scale: f32,
    xg: &[f32; 3],
) -> (u16, bool) {
    let u = l.iter().take(8).enumerate().fold(0u16, |u, (j, &v)| u | (u16::from(v & 3) << (2 * j)));
    if let Some(index) = t.index(u) {
        return (index as u16, true);
    }
    // the list is its length followed by the grid indices
    let list = t.neighbours_of(u).and_then(|n| n.get(1..)).unwrap_or(&[]);
    let d2_of = |index: usize| {
        let mut d2 = 0.0f32;
        for ((lv, &w), &x) in point_levels(t, index).iter().zip(weight).zip(xval) {
            let diff = scale * xg[*lv] - x;
            d2 += w * diff * diff;
        }
        d2
    };
    let mut best = f32::MAX;
    let mut found: Option<usize> = None;
    for &n in list {
        let d2 = d2_of(usize::from(n));
        if d2 < best {
            best = d2;
            found = Some(usize::from(n));
        }
    }
    if found.is_none() {
        // Every neighbour scored NaN or infinity. llama.cpp then scans the whole grid (reading
        // `xval[i]` for grid point i, past the eight values: undefined behaviour); crunch scans it
        // with the intended element and falls back to the first neighbour.
        for index in 0..t.grid.len() {
            let d2 = d2_of(index);
            if d2 < best {
                best = d2;
                found = Some(index);
            }
        }
    }
    let index = found.or_else(|| list.first().map(|&n| usize::from(n))).unwrap_or(0);
    for (o, lv) in l.iter_mut().zip(point_levels(t, index)) {
        *o = lv as u8;
    }
    (index as u16, false)
}

/// Scale of a sub-block refit on its grid points: `Σ w q x / Σ w q²` (llama.cpp's pass after a
/// group left the grid), `None` unless both sums are positive.
pub(crate) fn refit_scale(
    t: &Iq2Tables,
    index: &[u16],
    xb: &[f32],
    weight: &[f32],
    xx: impl Fn(usize) -> [f32; 3],
) -> Option<f32> {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for (k, &g) in index.iter().enumerate() {
        let xg = xx(k);
        for (j, lv) in point_levels(t, usize::from(g)).into_iter().enumerate() {
            let (w, x) = (weight[8 * k + j], xb[8 * k + j]);
            let q = xg[lv];
            sumqx += w * q * x;
            sumq2 += w * q * q;
        }
    }
    (sumqx > 0.0 && sumq2 > 0.0).then_some(sumqx / sumq2)
}

/// Quantize one super-block of 256; `importance` holds its 256 importance weights (see the module
/// documentation for the fallback without them).
pub fn quantize_block(x: &[f32; QK_K], importance: Option<&[f32; QK_K]>) -> BlockIq1S {
    quantize_block_with(tables(Iq2Kind::Iq1), x, importance)
}

fn quantize_block_with(t: &Iq2Tables, x: &[f32; QK_K], importance: Option<&[f32; QK_K]>) -> BlockIq1S {
    let x_p = levels(false, DELTA);
    let x_m = levels(true, DELTA);
    let mut y = BlockIq1S::zeroed();
    let sigma2 = sigma2(x);
    let mut scales = [0.0f32; SUBS];
    let mut shifts = [1i32; SUBS];
    let mut max_scale = 0.0f32;
    // unit importance when none is given (see the module documentation)
    let importance = importance.unwrap_or(&[1.0; QK_K]);

    for ib in 0..SUBS {
        let Ok(xb) = <&[f32; SUB]>::try_from(&x[SUB * ib..SUB * (ib + 1)]) else { continue };
        let mut weight = [0.0f32; SUB];
        search_weights(xb, Some(&importance[SUB * ib..SUB * (ib + 1)]), sigma2, &mut weight);
        if abs_max(xb) < GROUP_MAX_EPS {
            continue;
        }
        // prefix sums of w·x and w over the values in ascending order: every split into the three
        // levels is two boundaries in that order
        let order = sorted_order(xb);
        let mut sumx = [0.0f32; SUB + 1];
        let mut sumw = [0.0f32; SUB + 1];
        for (j, &i) in order.iter().enumerate() {
            sumx[j + 1] = sumx[j] + weight[i] * xb[i];
            sumw[j + 1] = sumw[j] + weight[i];
        }
        let mut best_score = -f32::MAX;
        let mut scale = 0.0f32;
        let mut best: Option<(usize, usize, i32)> = None;
        for i1 in 0..=SUB {
            for i2 in i1..=SUB {
                for (shift, xs) in [(1, &x_p), (-1, &x_m)] {
                    let sumqx =
                        (sumx[i1] - sumx[0]) * xs[0] + (sumx[i2] - sumx[i1]) * xs[1] + (sumx[SUB] - sumx[i2]) * xs[2];
                    let sumq2 = (sumw[i1] - sumw[0]) * xs[0] * xs[0]
                        + (sumw[i2] - sumw[i1]) * xs[1] * xs[1]
                        + (sumw[SUB] - sumw[i2]) * xs[2] * xs[2];
                    if sumq2 > 0.0 && sumqx * sumqx > best_score * sumq2 {
                        scale = sumqx / sumq2;
                        best_score = scale * sumqx;
                        best = Some((i1, i2, shift));
                    }
                }
            }
        }
        let Some((i1, i2, mut shift)) = best else { continue };
        let mut l = [0u8; SUB];
        for (j, &i) in order.iter().enumerate() {
            l[i] = if j < i1 {
                0
            } else if j < i2 {
                1
            } else {
                2
            };
        }
        if scale < 0.0 {
            for v in &mut l {
                *v = 2 - *v;
            }
            scale = -scale;
            shift = -shift;
        }
        let xx = if shift == 1 { x_p } else { x_m };
        let mut index = [0u16; SUB / 8];
        let mut all_on_grid = true;
        for (k, g) in index.iter_mut().enumerate() {
            let r = 8 * k..8 * k + 8;
            let (i, on) = snap_to_grid(t, &mut l[r.clone()], &xb[r.clone()], &weight[r], scale, &xx);
            *g = i;
            all_on_grid &= on;
        }
        if !all_on_grid {
            if let Some(s) = refit_scale(t, &index, xb, &weight, |_| xx) {
                scale = s;
            }
        }
        let mut h = 0u16;
        for (k, &g) in index.iter().enumerate() {
            y.qs[4 * ib + k] = (g & 255) as u8;
            h |= (g >> 8) << (3 * k);
        }
        y.qh[ib] = h;
        scales[ib] = scale;
        shifts[ib] = shift;
        max_scale = if max_scale > scale { max_scale } else { scale };
    }

    if max_scale == 0.0 {
        return y;
    }
    let d = max_scale / 15.0;
    // 1.125: llama.cpp's fudge factor on the stored scale
    y.d = f16::from_f32(d * 1.125);
    let id = 1.0 / d;
    for ((qh, &s), &shift) in y.qh.iter_mut().zip(&scales).zip(&shifts) {
        let mut l = nearest_int(0.5 * (id * s - 1.0)).clamp(0, 7) as u16;
        if shift == -1 {
            l |= 8;
        }
        *qh |= l << 12;
    }
    y
}

/// Quantize one row (`src.len()` a multiple of 256) into IQ1_S super-blocks, importance-weighted
/// when `weights` (one per element of the row) are given, with unit importance otherwise.
pub fn quantize(src: &[f32], weights: Option<&[f32]>, dst: &mut [u8]) {
    let weights = usable_weights(src, weights);
    let t = tables(Iq2Kind::Iq1);
    fill_blocks(dst, |out: &mut [BlockIq1S]| {
        for (i, (b, x)) in out.iter_mut().zip(src.chunks_exact(QK_K)).enumerate() {
            let w = weights.and_then(|w| w.get(i * QK_K..(i + 1) * QK_K)?.try_into().ok());
            if let Ok(x) = x.try_into() {
                *b = quantize_block_with(t, x, w);
            }
        }
    });
}

/// Dequantize IQ1_S super-blocks: `d (2 l + 1) (grid + shift)`.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, y) in all_blocks::<BlockIq1S>(src).iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (ib, ys) in y.chunks_exact_mut(SUB).enumerate() {
            let dl = d * b.sub_scale(ib) as f32;
            let delta = if b.shift(ib) < 0 { -DELTA } else { DELTA };
            for (k, yg) in ys.chunks_exact_mut(8).enumerate() {
                for (o, g) in yg.iter_mut().zip(grid_values(b.grid_index(ib, k))) {
                    *o = dl * (f32::from(g) + delta);
                }
            }
        }
    }
}

/// Dot product of `n` elements of IQ1_S `x` with Q8_K `y`, using AVX2 when the CPU has it.
pub fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    vec_dot_simd(n, x, y).unwrap_or_else(|| vec_dot_scalar(n, x, y))
}

/// Scalar reference dot product (llama.cpp's generic `ggml_vec_dot_iq1_s_q8_K` order): integer
/// grid products and shift sums per super-block, then `d_x d_y (Σ + DELTA Σ_shift)`.
pub fn vec_dot_scalar(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let xs = blocks::<BlockIq1S>(x, n / QK_K);
    let ys = blocks::<BlockQ8K>(y, n / QK_K);
    let mut sumf = 0.0f32;
    for (bx, by) in xs.iter().zip(ys.iter()) {
        let (mut sumi, mut sumi1) = (0i32, 0i32);
        for (ib, q8) in by.qs.chunks_exact(SUB).enumerate() {
            let ls = bx.sub_scale(ib);
            let mut lsum = 0i32;
            for (k, q8g) in q8.chunks_exact(8).enumerate() {
                for (&q, g) in q8g.iter().zip(grid_values(bx.grid_index(ib, k))) {
                    lsum += i32::from(q) * i32::from(g);
                }
            }
            sumi += ls * lsum;
            sumi1 += ls * bx.shift(ib) * (i32::from(by.bsums[2 * ib]) + i32::from(by.bsums[2 * ib + 1]));
        }
        sumf += bx.d.to_f32() * by.d * (sumi as f32 + DELTA * sumi1 as f32);
    }
    sumf
}

/// The SIMD dot product, or `None` when this CPU has no SIMD kernel for it.
pub fn vec_dot_simd(n: usize, x: &[u8], y: &[u8]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if crate::legacy::simd::has_avx2_fma() {
        let xs = blocks::<BlockIq1S>(x, n / QK_K);
        let ys = blocks::<BlockQ8K>(y, n / QK_K);
        // SAFETY: AVX2 and FMA were detected on this CPU just above.
        return Some(unsafe { avx2::dot(&xs, &ys) });
    }
    let _ = (n, x, y);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockIq1S, BlockQ8K, DELTA, IQ1S_GRID, SUB};
    use crate::legacy::simd::*;
    use std::arch::x86_64::*;

    /// The four grid points of sub-block `ib` as 32 signed bytes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn sub_block_grid(b: &BlockIq1S, ib: usize) -> __m256i {
        let g = |k: usize| IQ1S_GRID.get(b.grid_index(ib, k)).copied().unwrap_or(0) as i64;
        _mm256_set_epi64x(g(3), g(2), g(1), g(0))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot(xs: &[BlockIq1S], ys: &[BlockQ8K]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut acc1 = 0.0f32;
        for (bx, by) in xs.iter().zip(ys) {
            let mut sumi = _mm256_setzero_si256();
            let mut sumi1 = 0i32;
            for (ib, q8) in by.qs.chunks_exact(SUB).enumerate() {
                let Ok(q8) = <&[i8; 32]>::try_from(q8) else { continue };
                // grid values are -1, 0, 1: i16 pair sums of the products, then times the scale
                let pairs = dot_i8_i8_pairs(sub_block_grid(bx, ib), load_i8_32(q8));
                let ls = bx.sub_scale(ib);
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pairs, _mm256_set1_epi16(ls as i16)));
                sumi1 += ls * bx.shift(ib) * (i32::from(by.bsums[2 * ib]) + i32::from(by.bsums[2 * ib + 1]));
            }
            let d = by.d * bx.d.to_f32();
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
            acc1 += d * sumi1 as f32;
        }
        hsum_f32(acc) + DELTA * acc1
    }
}
