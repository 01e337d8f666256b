//! IQ1_M: 256-element super-blocks of sixteen 16-element sub-blocks (1.75 bits per weight). Each
//! group of eight weights is a point of IQ1_S's 2048-point ternary grid with its own shift sign
//! (`±IQ1M_DELTA`); each sub-block has a 3-bit scale `l` (value `d (2 l + 1)`), and the f16
//! super-block scale `d` is spread over the top nibbles of the four scale words. Dot products run
//! against Q8_K.
//!
//! Quantization is llama.cpp's `quantize_row_iq1_m_impl`: per sub-block an exhaustive search of
//! the two level boundaries in sorted order for the four sign combinations of its two groups, the
//! grid snap of IQ1_S ([`super::iq1_s`]), then a least-squares refit of `d` over the whole
//! super-block at the rounded sub-block scales. Unlike IQ1_S, llama.cpp quantizes IQ1_M without
//! importance weights (the search is then weighted by `x²`), and so does crunch, byte for byte.

use super::iq1_s::{
    abs_max, grid_values, levels, point_levels, refit_scale, search_weights, sigma2, snap_to_grid, sorted_order,
};
use super::iq2_grid::{tables, Iq2Kind, Iq2Tables};
use crate::kquants::search::nearest_int;
use crate::kquants::BlockQ8K;
use crate::legacy::{all_blocks, blocks, fill_blocks, usable_weights};
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::{GgmlType, QK_K};
use half::f16;

/// The shift of every grid value (`IQ1M_DELTA`).
pub const DELTA: f32 = 0.125;

/// Elements per sub-block.
const SUB: usize = 16;
/// Sub-blocks per super-block.
const SUBS: usize = QK_K / SUB;
/// Sub-blocks whose largest |x| is below this are stored as zero (`GROUP_MAX_EPS_IQ1_M`).
const GROUP_MAX_EPS: f32 = 1e-7;
/// `qh` bits of the four shift-sign combinations (bit 3: first group negative, bit 7: second).
const MASKS: [u8; 4] = [0x00, 0x80, 0x08, 0x88];

/// One IQ1_M super-block. Group `k` (0..2) of sub-block `ib` (0..16) is grid point
/// `qs[2 ib + k] | ((qh[ib] >> 4 k) & 7) << 8`, its shift negative when bit `4 k + 3` of `qh[ib]` is
/// set. Read `scales` as four little-endian u16 words `sc`: sub-block `ib`'s 3-bit scale is bits
/// `3 (ib % 4)..` of `sc[ib / 4]`, and the top nibbles of `sc[0..4]` are the f16 `d`, low to high.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIq1M {
    pub qs: [u8; QK_K / 8],
    pub qh: [u8; QK_K / 16],
    pub scales: [u8; QK_K / 32],
}

const _: () = assert!(size_of::<BlockIq1M>() == QK_K / 8 + QK_K / 16 + QK_K / 32);

impl BlockIq1M {
    /// The four scale words.
    #[inline]
    fn words(&self) -> [u16; 4] {
        let s = &self.scales;
        [0, 1, 2, 3].map(|i| u16::from_le_bytes([s[2 * i], s[2 * i + 1]]))
    }

    /// The super-block scale `d` (assembled from the four top nibbles).
    #[inline]
    pub fn d(&self) -> f16 {
        let sc = self.words();
        f16::from_bits((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000))
    }

    /// The odd multiplier `2 l + 1` of sub-block `ib` (0..16).
    #[inline]
    pub fn sub_scale(&self, ib: usize) -> i32 {
        let sc = self.words();
        2 * i32::from((sc[ib / 4] >> (3 * (ib % 4))) & 7) + 1
    }

    /// The odd multipliers `2 l + 1` of all sixteen sub-blocks.
    #[inline]
    pub fn sub_scales(&self) -> [i32; SUBS] {
        let sc = self.words();
        std::array::from_fn(|ib| 2 * i32::from((sc[ib / 4] >> (3 * (ib % 4))) & 7) + 1)
    }

    /// The grid index of group `k` (0..2) of sub-block `ib` (0..16).
    #[inline]
    pub fn grid_index(&self, ib: usize, k: usize) -> usize {
        usize::from(self.qs[2 * ib + k]) | (usize::from((self.qh[ib] >> (4 * k)) & 7) << 8)
    }

    /// The shift of group `k` of sub-block `ib` in units of [`DELTA`]: 1 or -1.
    #[inline]
    pub fn shift(&self, ib: usize, k: usize) -> i32 {
        if self.qh[ib] & (0x08 << (4 * k)) != 0 {
            -1
        } else {
            1
        }
    }
}

pub(crate) static KERNELS: Kernels = Kernels {
    ty: GgmlType::IQ1_M,
    quantize,
    dequantize,
    vec_dot: Some(vec_dot),
    dot_type: GgmlType::Q8_K,
    uses_weights: true,
};

/// Whether group `g` (0 or 1) has a negative shift under sign combination `k` (0: +,+; 1: +,-;
/// 2: -,+; 3: -,-).
#[inline]
fn negative(k: usize, g: usize) -> bool {
    if g == 0 {
        k >= 2
    } else {
        k % 2 == 1
    }
}

/// Quantize one super-block of 256; `importance` holds its 256 importance weights (`x²` weighting
/// without them, as llama.cpp).
pub fn quantize_block(x: &[f32; QK_K], importance: Option<&[f32; QK_K]>) -> BlockIq1M {
    quantize_block_with(tables(Iq2Kind::Iq1), x, importance)
}

/// The best split and sign combination of one sub-block: `(i1, i2, k, scale)` with elements in
/// sorted positions `..i1` at level 0, `i1..i2` at level 1, the rest at level 2.
///
/// This is the prefix-sum form of llama.cpp's search (llama.cpp of 2026-10): prefix sums of `w x`
/// and `w` in sorted order kept per half of the sub-block (each half has its own shift sign), and
/// since the level steps are 1 for both signs, a split's `Σ w q x` is `T v2 - S(i1) - S(i2)`. The
/// float operations and their order are llama.cpp's, so ties between splits resolve the same way.
fn search(xb: &[f32; SUB], weight: &[f32; SUB], order: &[usize; SUB]) -> Option<(usize, usize, usize, f32)> {
    let x_p = levels(false, DELTA);
    let x_m = levels(true, DELTA);
    let mut px = [[0.0f32; SUB + 1]; 2];
    let mut pw = [[0.0f32; SUB + 1]; 2];
    for (j, &i) in order.iter().enumerate() {
        let h = usize::from(i >= SUB / 2);
        px[h][j + 1] = px[h][j] + weight[i] * xb[i];
        px[1 - h][j + 1] = px[1 - h][j];
        pw[h][j + 1] = pw[h][j] + weight[i];
        pw[1 - h][j + 1] = pw[1 - h][j];
    }
    let txs = [px[0][SUB], px[1][SUB]];
    let tws = [pw[0][SUB], pw[1][SUB]];
    let (p2, m2) = (x_p[2], x_m[2]);
    let cp1 = x_p[0] * x_p[0] - x_p[1] * x_p[1];
    let cp2 = x_p[1] * x_p[1] - x_p[2] * x_p[2];
    let cm1 = x_m[0] * x_m[0] - x_m[1] * x_m[1];
    let cm2 = x_m[1] * x_m[1] - x_m[2] * x_m[2];
    let mut best_score = -f32::MAX;
    let mut best = None;
    for i1 in 0..=SUB {
        for i2 in i1..=SUB {
            let (mut qx_p, mut qx_m, mut q2_p, mut q2_m) = ([0.0f32; 2], [0.0f32; 2], [0.0f32; 2], [0.0f32; 2]);
            for h in 0..2 {
                let sx = px[h][i1] + px[h][i2];
                qx_p[h] = txs[h] * p2 - sx;
                qx_m[h] = txs[h] * m2 - sx;
                q2_p[h] = tws[h] * p2 * p2 + pw[h][i1] * cp1 + pw[h][i2] * cp2;
                q2_m[h] = tws[h] * m2 * m2 + pw[h][i1] * cm1 + pw[h][i2] * cm2;
            }
            // sign combinations 0: (+, +), 1: (+, -), 2: (-, +), 3: (-, -)
            let sumqx = [qx_p[0] + qx_p[1], qx_p[0] + qx_m[1], qx_m[0] + qx_p[1], qx_m[0] + qx_m[1]];
            let sumq2 = [q2_p[0] + q2_p[1], q2_p[0] + q2_m[1], q2_m[0] + q2_p[1], q2_m[0] + q2_m[1]];
            for k in 0..4 {
                if sumq2[k] > 0.0 && sumqx[k] * sumqx[k] > best_score * sumq2[k] {
                    let scale = sumqx[k] / sumq2[k];
                    best_score = scale * sumqx[k];
                    best = Some((i1, i2, k, scale));
                }
            }
        }
    }
    best
}

fn quantize_block_with(t: &Iq2Tables, x: &[f32; QK_K], importance: Option<&[f32; QK_K]>) -> BlockIq1M {
    let xx = |k: usize, g: usize| levels(negative(k, g), DELTA);
    let mut y = BlockIq1M::zeroed();
    let sigma2 = sigma2(x);
    let mut scales = [0.0f32; SUBS];
    let mut shifts = [0usize; SUBS];
    let mut max_scale = 0.0f32;
    let sub_weights = |ib: usize, xb: &[f32; SUB]| {
        let mut weight = [0.0f32; SUB];
        search_weights(xb, importance.map(|w| &w[SUB * ib..SUB * (ib + 1)]), sigma2, &mut weight);
        weight
    };

    for ib in 0..SUBS {
        let Ok(xb) = <&[f32; SUB]>::try_from(&x[SUB * ib..SUB * (ib + 1)]) else { continue };
        let weight = sub_weights(ib, xb);
        if abs_max(xb) < GROUP_MAX_EPS {
            continue;
        }
        let order = sorted_order(xb);
        let Some((i1, i2, mut k, mut scale)) = search(xb, &weight, &order) else { continue };
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
            k = 3 - k;
        }
        let mut index = [0u16; 2];
        let mut all_on_grid = true;
        for (g, gi) in index.iter_mut().enumerate() {
            let r = 8 * g..8 * g + 8;
            let (i, on) = snap_to_grid(t, &mut l[r.clone()], &xb[r.clone()], &weight[r], scale, &xx(k, g));
            *gi = i;
            all_on_grid &= on;
        }
        if !all_on_grid {
            if let Some(s) = refit_scale(t, &index, xb, &weight, |g| xx(k, g)) {
                scale = s;
            }
        }
        y.qs[2 * ib] = (index[0] & 255) as u8;
        y.qs[2 * ib + 1] = (index[1] & 255) as u8;
        y.qh[ib] = ((index[0] >> 8) | ((index[1] >> 8) << 4)) as u8;
        scales[ib] = scale;
        shifts[ib] = k;
        max_scale = if max_scale > scale { max_scale } else { scale };
    }

    if max_scale == 0.0 {
        return y;
    }
    let mut sc = [0u16; 4];
    let mut d = max_scale / 15.0;
    let id = 1.0 / d;
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for ib in 0..SUBS {
        let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7);
        sc[ib / 4] |= (l as u16) << (3 * (ib % 4));
        y.qh[ib] |= MASKS[shifts[ib]];
        let Ok(xb) = <&[f32; SUB]>::try_from(&x[SUB * ib..SUB * (ib + 1)]) else { continue };
        let weight = sub_weights(ib, xb);
        let m = (2 * l + 1) as f32;
        for g in 0..2 {
            let xg = xx(shifts[ib], g);
            let index = usize::from(y.qs[2 * ib + g]) | ((usize::from(y.qh[ib]) << (8 - 4 * g)) & 0x700);
            for (j, lv) in point_levels(t, index).into_iter().enumerate() {
                let (w, v) = (weight[8 * g + j], xb[8 * g + j]);
                let q = xg[lv] * m;
                sumqx += w * q * v;
                sumq2 += w * q * q;
            }
        }
    }
    if sumq2 > 0.0 {
        d = sumqx / sumq2;
    }
    // 1.1125: llama.cpp's fudge factor on the stored scale
    let s = f16::from_f32(d * 1.1125).to_bits();
    sc[0] |= (s & 0x000f) << 12;
    sc[1] |= (s & 0x00f0) << 8;
    sc[2] |= (s & 0x0f00) << 4;
    sc[3] |= s & 0xf000;
    for (i, w) in sc.iter().enumerate() {
        y.scales[2 * i..2 * i + 2].copy_from_slice(&w.to_le_bytes());
    }
    y
}

/// Quantize one row (`src.len()` a multiple of 256) into IQ1_M super-blocks, importance-weighted
/// when `weights` (one per element of the row) are given, weighted by `x²` otherwise.
pub fn quantize(src: &[f32], weights: Option<&[f32]>, dst: &mut [u8]) {
    let weights = usable_weights(src, weights);
    let t = tables(Iq2Kind::Iq1);
    fill_blocks(dst, |out: &mut [BlockIq1M]| {
        for (i, (b, x)) in out.iter_mut().zip(src.chunks_exact(QK_K)).enumerate() {
            let w = weights.and_then(|w| w.get(i * QK_K..(i + 1) * QK_K)?.try_into().ok());
            if let Ok(x) = x.try_into() {
                *b = quantize_block_with(t, x, w);
            }
        }
    });
}

/// Dequantize IQ1_M super-blocks: `d (2 l + 1) (grid + shift)`.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, y) in all_blocks::<BlockIq1M>(src).iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d().to_f32();
        let ls = b.sub_scales();
        for (ib, ys) in y.chunks_exact_mut(SUB).enumerate() {
            let dl = d * ls[ib] as f32;
            for (k, yg) in ys.chunks_exact_mut(8).enumerate() {
                let delta = if b.shift(ib, k) < 0 { -DELTA } else { DELTA };
                for (o, g) in yg.iter_mut().zip(grid_values(b.grid_index(ib, k))) {
                    *o = dl * (f32::from(g) + delta);
                }
            }
        }
    }
}

/// Dot product of `n` elements of IQ1_M `x` with Q8_K `y`, using AVX2 when the CPU has it.
pub fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    vec_dot_simd(n, x, y).unwrap_or_else(|| vec_dot_scalar(n, x, y))
}

/// Scalar reference dot product (llama.cpp's generic `ggml_vec_dot_iq1_m_q8_K` order): integer
/// grid products and signed activation sums per sub-block, then `d_x d_y (Σ + DELTA Σ_shift)`.
pub fn vec_dot_scalar(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let xs = blocks::<BlockIq1M>(x, n / QK_K);
    let ys = blocks::<BlockQ8K>(y, n / QK_K);
    let mut sumf = 0.0f32;
    for (bx, by) in xs.iter().zip(ys.iter()) {
        let (mut sumi1, mut sumi2) = (0i32, 0i32);
        let scales = bx.sub_scales();
        for (ib, q8) in by.qs.chunks_exact(SUB).enumerate() {
            let (mut sum1, mut sum2) = (0i32, 0i32);
            for (k, q8g) in q8.chunks_exact(8).enumerate() {
                let (mut lsum1, mut lsum2) = (0i32, 0i32);
                for (&q, g) in q8g.iter().zip(grid_values(bx.grid_index(ib, k))) {
                    lsum1 += i32::from(q) * i32::from(g);
                    lsum2 += i32::from(q);
                }
                sum1 += lsum1;
                sum2 += lsum2 * bx.shift(ib, k);
            }
            let ls = scales[ib];
            sumi1 += sum1 * ls;
            sumi2 += sum2 * ls;
        }
        sumf += bx.d().to_f32() * by.d * (sumi1 as f32 + DELTA * sumi2 as f32);
    }
    sumf
}

/// The SIMD dot product, or `None` when this CPU has no SIMD kernel for it.
pub fn vec_dot_simd(n: usize, x: &[u8], y: &[u8]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if crate::legacy::simd::has_avx2_fma() {
        let xs = blocks::<BlockIq1M>(x, n / QK_K);
        let ys = blocks::<BlockQ8K>(y, n / QK_K);
        // SAFETY: AVX2 and FMA were detected on this CPU just above.
        return Some(unsafe { avx2::dot(&xs, &ys) });
    }
    let _ = (n, x, y);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::iq2_grid::IQ1S_GRID;
    use super::{BlockIq1M, BlockQ8K, DELTA};
    use crate::legacy::simd::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot(xs: &[BlockIq1M], ys: &[BlockQ8K]) -> f32 {
        let ones = _mm256_set1_epi8(1);
        let mut acc1 = _mm256_setzero_ps();
        let mut acc2 = _mm256_setzero_ps();
        for (bx, by) in xs.iter().zip(ys) {
            let mut sumi1 = _mm256_setzero_si256();
            let mut sumi2 = _mm256_setzero_si256();
            let ls = bx.sub_scales();
            // 32 elements at a time: sub-blocks 2 ib and 2 ib + 1, four groups of eight
            for (ib, q8) in by.qs.chunks_exact(32).enumerate() {
                let Ok(q8) = <&[i8; 32]>::try_from(q8) else { continue };
                let group = |g: usize| (2 * ib + g / 2, g % 2);
                let grid = |g: usize| {
                    let (sb, k) = group(g);
                    IQ1S_GRID.get(bx.grid_index(sb, k)).copied().unwrap_or(0) as i64
                };
                let sign = |g: usize| {
                    let (sb, k) = group(g);
                    i64::from_le_bytes([bx.shift(sb, k) as i8 as u8; 8])
                };
                let q1 = _mm256_set_epi64x(grid(3), grid(2), grid(1), grid(0));
                let signs = _mm256_set_epi64x(sign(3), sign(2), sign(1), sign(0));
                let q8v = load_i8_32(q8);
                // i16 pair sums: grid products, and the activations carrying their group's shift sign
                let dot = dot_i8_i8_pairs(q1, q8v);
                let shifted = _mm256_maddubs_epi16(ones, _mm256_sign_epi8(q8v, signs));
                let scale = _mm256_set_m128i(_mm_set1_epi16(ls[2 * ib + 1] as i16), _mm_set1_epi16(ls[2 * ib] as i16));
                sumi1 = _mm256_add_epi32(sumi1, _mm256_madd_epi16(dot, scale));
                sumi2 = _mm256_add_epi32(sumi2, _mm256_madd_epi16(shifted, scale));
            }
            let d = _mm256_set1_ps(bx.d().to_f32() * by.d);
            acc1 = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi1), acc1);
            acc2 = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi2), acc2);
        }
        hsum_f32(acc1) + DELTA * hsum_f32(acc2)
    }
}
