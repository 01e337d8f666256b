//! Q4_K: asymmetric 4-bit k-quant, 4.5 bits/weight.
//!
//! A 256-value super-block is 8 sub-blocks of 32 values; value = `d * sc[j] * q - dmin * m[j]` with `q`
//! in 0..=15, 6-bit sub-block scales `sc` and mins `m` packed into 12 bytes (see
//! [`super::unpack_scale_min_k4`]) and two f16 super-block scales. Each group of 64 values shares 32
//! bytes of `qs`: the first 32 values in the low nibbles, the next 32 in the high nibbles.

use super::search::{make_qp_quants, nearest_int};
use super::search_x8::make_qkx_quants_x8;
use super::{
    dequantize_blocks, f16_to_f32, pack_scale_min_k4, quantize_blocks, read_blocks, unpack_scale_min_k4, BlockQ8K, QK_K,
};
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::GgmlType;
use half::f16;

/// A Q4_K super-block (144 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(crate) struct BlockQ4K {
    /// Super-block scale of the sub-block scales.
    pub d: f16,
    /// Super-block scale of the sub-block mins.
    pub dmin: f16,
    /// 8 scales and 8 mins, 6 bits each.
    pub scales: [u8; 12],
    /// 4-bit quants.
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 2 + 2 + 12 + QK_K / 2);

/// The encoded header shared by Q4_K and Q5_K super-blocks: two f16 scales and the 12 bytes of
/// packed 6-bit sub-block scales and mins.
pub(crate) struct AsymSuperBlock {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
}

/// Search every 32-value sub-block of `x` for its scale and min (levels `0..=nmax`), encode them, and
/// re-round every value against the encoded (f16 and 6-bit) scales, following llama.cpp's reference
/// path (`qw == None`) or its importance-weighted path. Returns the header; `levels` then holds the
/// final quants. Shared by Q4_K (`nmax = 15`) and Q5_K (`nmax = 31`).
pub(crate) fn quantize_asym_32(x: &[f32], qw: Option<&[f32]>, nmax: i32, levels: &mut [u8; QK_K]) -> AsymSuperBlock {
    let x = &x[..QK_K];
    let scales: [f32; 8];
    let mut mins = [0.0f32; 8];
    let (ls, lm, d, dmin) = match qw {
        None => {
            // Reference path: per-sub-block weights av|x| + |x|, then linear 6-bit encoding of the
            // scales and mins against their maxima.
            let (rmin, nstep) = if nmax == 15 { (-1.0, 20) } else { (-0.5, 15) };
            let mut all_weights = [0.0f32; QK_K];
            for (ws, xs) in all_weights.chunks_exact_mut(32).zip(x.chunks_exact(32)) {
                let mut sum_x2 = 0.0f32;
                for &v in xs {
                    sum_x2 += v * v;
                }
                let av_x = (sum_x2 / 32.0).sqrt();
                for (w, &v) in ws.iter_mut().zip(xs) {
                    *w = av_x + v.abs();
                }
            }
            scales = make_qkx_quants_x8(32, nmax, x, &all_weights, levels, &mut mins, rmin, 0.1, nstep, false, false);
            let mut max_scale = 0.0f32;
            let mut max_min = 0.0f32;
            for j in 0..8 {
                if scales[j] > max_scale {
                    max_scale = scales[j];
                }
                if mins[j] > max_min {
                    max_min = mins[j];
                }
            }
            let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
            let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
            let mut ls = [0u8; 8];
            let mut lm = [0u8; 8];
            for j in 0..8 {
                ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
                lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
            }
            (ls, lm, f16::from_f32(max_scale / 63.0), f16::from_f32(max_min / 63.0))
        }
        Some(qw) => {
            // Weighted path: importance times sqrt(sigma² + x²), a finer search, and a weighted
            // least-squares encoding of the scales and mins.
            let mut sum_x2 = 0.0f32;
            for &v in &x[..QK_K] {
                sum_x2 += v * v;
            }
            let sigma2 = 2.0 * sum_x2 / QK_K as f32;
            let mut sw = [0.0f32; 8];
            let mut all_weights = [0.0f32; QK_K];
            for j in 0..8 {
                let xs = &x[32 * j..32 * j + 32];
                let weights = &mut all_weights[32 * j..32 * j + 32];
                for ((w, &v), &q) in weights.iter_mut().zip(xs).zip(&qw[32 * j..32 * j + 32]) {
                    *w = q * (sigma2 + v * v).sqrt();
                }
                let mut sumw = 0.0f32;
                for &w in weights.iter() {
                    sumw += w;
                }
                sw[j] = sumw;
            }
            scales = make_qkx_quants_x8(32, nmax, x, &all_weights, levels, &mut mins, -0.9, 0.05, 36, false, true);
            let mut ls = [0u8; 8];
            let mut lm = [0u8; 8];
            let d_block = make_qp_quants(8, 63, &scales, &mut ls, &sw);
            let m_block = make_qp_quants(8, 63, &mins, &mut lm, &sw);
            if nmax == 31 {
                // Q5_K clamps the 6-bit codes here; Q4_K does not.
                for v in ls.iter_mut().chain(lm.iter_mut()) {
                    *v = (*v).min(63);
                }
            }
            (ls, lm, f16::from_f32(d_block), f16::from_f32(m_block))
        }
    };
    let packed = pack_scale_min_k4(&ls, &lm);
    let (sc, m) = unpack_scale_min_k4(&packed);
    let (d_f, dmin_f) = (f16_to_f32(d), f16_to_f32(dmin));
    for j in 0..8 {
        let dl = d_f * sc[j] as f32;
        if dl == 0.0 {
            continue;
        }
        let ml = dmin_f * m[j] as f32;
        for ii in 32 * j..32 * j + 32 {
            levels[ii] = nearest_int((x[ii] + ml) / dl).clamp(0, nmax) as u8;
        }
    }
    AsymSuperBlock { d, dmin, scales: packed }
}

impl BlockQ4K {
    /// Quantize 256 values exactly as llama.cpp's `quantize_q4_K` (reference path without weights,
    /// importance-weighted path with them).
    pub(crate) fn quantize(x: &[f32], qw: Option<&[f32]>) -> Self {
        let mut levels = [0u8; QK_K];
        let h = quantize_asym_32(&x[..QK_K], qw, 15, &mut levels);
        let mut b = BlockQ4K { d: h.d, dmin: h.dmin, scales: h.scales, qs: [0; QK_K / 2] };
        for (g, q) in b.qs.chunks_exact_mut(32).enumerate() {
            let lv = &levels[64 * g..64 * g + 64];
            for l in 0..32 {
                q[l] = lv[l] | (lv[l + 32] << 4);
            }
        }
        b
    }

    pub(crate) fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let min = f16_to_f32(self.dmin);
        let (sc, m) = unpack_scale_min_k4(&self.scales);
        for (g, (ys, q)) in y[..QK_K].chunks_exact_mut(64).zip(self.qs.chunks_exact(32)).enumerate() {
            let (d1, m1) = (d * sc[2 * g] as f32, min * m[2 * g] as f32);
            let (d2, m2) = (d * sc[2 * g + 1] as f32, min * m[2 * g + 1] as f32);
            let (lo, hi) = ys.split_at_mut(32);
            for l in 0..32 {
                lo[l] = d1 * (q[l] & 0xF) as f32 - m1;
                hi[l] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

fn quantize(src: &[f32], weights: Option<&[f32]>, dst: &mut [u8]) {
    quantize_blocks(src, weights, dst, BlockQ4K::quantize);
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_blocks(src, dst, BlockQ4K::dequantize);
}

/// Sum of the Q8_K group sums weighted by the sub-block mins (each min covers two groups of 16).
#[inline(always)]
pub(crate) fn min_sum(by: &BlockQ8K, mins: &[u8; 8]) -> i32 {
    by.bsums.iter().enumerate().map(|(j, &s)| s as i32 * mins[j / 2] as i32).sum()
}

/// Scale one super-block's exact integer sums into the running total (shared by the scalar and SIMD
/// kernels of Q4_K and Q5_K so both round identically).
#[inline(always)]
pub(crate) fn accumulate(sum: f32, d: f16, dmin: f16, by: &BlockQ8K, isum: i32, msum: i32) -> f32 {
    sum + f16_to_f32(d) * by.d * isum as f32 - f16_to_f32(dmin) * by.d * msum as f32
}

/// Scalar reference dot product of Q4_K blocks with Q8_K blocks.
pub(crate) fn dot_scalar(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        let (sc, m) = unpack_scale_min_k4(&bx.scales);
        let mut isum = 0i32;
        for (g, q) in bx.qs.chunks_exact(32).enumerate() {
            let q8 = &by.qs[64 * g..64 * g + 64];
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                lo += (q[l] & 0xF) as i32 * q8[l] as i32;
                hi += (q[l] >> 4) as i32 * q8[l + 32] as i32;
            }
            isum += sc[2 * g] as i32 * lo + sc[2 * g + 1] as i32 * hi;
        }
        sum = accumulate(sum, bx.d, bx.dmin, by, isum, min_sum(by, &m));
    }
    sum
}

fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let nb = n / QK_K;
    let xs = read_blocks::<BlockQ4K>(x);
    let ys = read_blocks::<BlockQ8K>(y);
    let (xs, ys) = (&xs[..nb], &ys[..nb]);
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        // SAFETY: AVX2 and FMA were detected at run time just above.
        return unsafe { avx2::dot(xs, ys) };
    }
    dot_scalar(xs, ys)
}

pub(crate) static KERNELS: Kernels = Kernels {
    ty: GgmlType::Q4_K,
    quantize,
    dequantize,
    vec_dot: Some(vec_dot),
    dot_type: GgmlType::Q8_K,
    uses_weights: true,
};

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::super::simd::x86::{hsum_i32, load_i8, load_u8, scaled_dot};
    use super::super::unpack_scale_min_k4;
    use super::{accumulate, min_sum, BlockQ4K, BlockQ8K};
    use std::arch::x86_64::*;

    /// AVX2 Q4_K · Q8_K, bit-identical to [`super::dot_scalar`].
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn dot(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
        let m4 = _mm256_set1_epi8(0x0F);
        let mut sum = 0.0f32;
        for (bx, by) in x.iter().zip(y) {
            let (sc, m) = unpack_scale_min_k4(&bx.scales);
            let mut acc = _mm256_setzero_si256();
            for g in 0..4 {
                let q = load_u8(&bx.qs, 32 * g);
                let lo = _mm256_and_si256(q, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                let (s_lo, s_hi) = (sc[2 * g] as i16, sc[2 * g + 1] as i16);
                acc = _mm256_add_epi32(acc, scaled_dot(lo, load_i8(&by.qs, 64 * g), s_lo, s_lo));
                acc = _mm256_add_epi32(acc, scaled_dot(hi, load_i8(&by.qs, 64 * g + 32), s_hi, s_hi));
            }
            sum = accumulate(sum, bx.d, bx.dmin, by, hsum_i32(acc), min_sum(by, &m));
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kquants::simd::has_avx2_fma;
    use crate::kquants::test_util::{avx2_call, random_q8k, Lcg};

    fn random_block(rng: &mut Lcg) -> BlockQ4K {
        let mut b = BlockQ4K::zeroed();
        rng.fill(bytemuck::bytes_of_mut(&mut b));
        b.d = f16::from_f32(rng.signed() * 0.01);
        b.dmin = f16::from_f32(rng.signed() * 0.01);
        b
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_matches_scalar() {
        if !has_avx2_fma() {
            return;
        }
        let mut rng = Lcg(4);
        for n in [1usize, 2, 5] {
            for _ in 0..20 {
                let x: Vec<BlockQ4K> = (0..n).map(|_| random_block(&mut rng)).collect();
                let y: Vec<BlockQ8K> = (0..n).map(|_| random_q8k(&mut rng)).collect();
                assert_eq!(dot_scalar(&x, &y).to_bits(), avx2_call!(avx2::dot(&x, &y)).to_bits());
            }
        }
        // extremes: every quant, scale and min byte at 0x00 or 0xFF against saturated activations
        for fill in [0x00u8, 0xFF, 0xAA, 0x55] {
            let mut x = BlockQ4K::zeroed();
            bytemuck::bytes_of_mut(&mut x).fill(fill);
            x.d = f16::from_f32(1.0);
            x.dmin = f16::from_f32(0.5);
            for q in [127i8, -128, -127] {
                let mut y = BlockQ8K::zeroed();
                y.d = 1.0;
                y.qs = [q; QK_K];
                y.bsums = [16 * q as i16; 16];
                let (a, b) = (dot_scalar(&[x], &[y]), avx2_call!(avx2::dot(&[x], &[y])));
                assert_eq!(a.to_bits(), b.to_bits(), "fill {fill:#x} q {q}: {a} vs {b}");
            }
        }
    }
}
