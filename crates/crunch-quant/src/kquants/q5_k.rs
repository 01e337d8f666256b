//! Q5_K: asymmetric 5-bit k-quant, 5.5 bits/weight.
//!
//! Same super-block structure as Q4_K (8 sub-blocks of 32, 6-bit scales and mins, f16 `d` and `dmin`)
//! with `q` in 0..=31: the low 4 bits are laid out exactly like Q4_K's `qs`, and the fifth bit of value
//! `64 * g + l` (`l < 32`) is bit `2 * g` of `qh[l]`, that of value `64 * g + 32 + l` bit `2 * g + 1`.

use super::q4_k::{accumulate, min_sum, quantize_asym_32};
use super::{dequantize_blocks, f16_to_f32, quantize_blocks, read_blocks, unpack_scale_min_k4, BlockQ8K, QK_K};
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::GgmlType;
use half::f16;

/// A Q5_K super-block (176 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(crate) struct BlockQ5K {
    /// Super-block scale of the sub-block scales.
    pub d: f16,
    /// Super-block scale of the sub-block mins.
    pub dmin: f16,
    /// 8 scales and 8 mins, 6 bits each.
    pub scales: [u8; 12],
    /// Fifth bit of the quants.
    pub qh: [u8; QK_K / 8],
    /// Low 4 bits of the quants.
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 2 + 2 + 12 + QK_K / 8 + QK_K / 2);

impl BlockQ5K {
    /// Quantize 256 values exactly as llama.cpp's `quantize_q5_K` (reference path without weights,
    /// importance-weighted path with them).
    pub(crate) fn quantize(x: &[f32], qw: Option<&[f32]>) -> Self {
        let mut levels = [0u8; QK_K];
        let h = quantize_asym_32(&x[..QK_K], qw, 31, &mut levels);
        let mut b = BlockQ5K { d: h.d, dmin: h.dmin, scales: h.scales, qh: [0; QK_K / 8], qs: [0; QK_K / 2] };
        for (g, q) in b.qs.chunks_exact_mut(32).enumerate() {
            let lv = &levels[64 * g..64 * g + 64];
            let (m1, m2) = (1u8 << (2 * g), 2u8 << (2 * g));
            for l in 0..32 {
                let (mut l1, mut l2) = (lv[l], lv[l + 32]);
                if l1 > 15 {
                    l1 -= 16;
                    b.qh[l] |= m1;
                }
                if l2 > 15 {
                    l2 -= 16;
                    b.qh[l] |= m2;
                }
                q[l] = l1 | (l2 << 4);
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
            let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
            let (lo, hi) = ys.split_at_mut(32);
            for l in 0..32 {
                let h1 = if self.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if self.qh[l] & u2 != 0 { 16 } else { 0 };
                lo[l] = d1 * ((q[l] & 0xF) + h1) as f32 - m1;
                hi[l] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

fn quantize(src: &[f32], weights: Option<&[f32]>, dst: &mut [u8]) {
    quantize_blocks(src, weights, dst, BlockQ5K::quantize);
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_blocks(src, dst, BlockQ5K::dequantize);
}

/// Scalar reference dot product of Q5_K blocks with Q8_K blocks.
pub(crate) fn dot_scalar(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        let (sc, m) = unpack_scale_min_k4(&bx.scales);
        let mut isum = 0i32;
        for (g, q) in bx.qs.chunks_exact(32).enumerate() {
            let q8 = &by.qs[64 * g..64 * g + 64];
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                let h = bx.qh[l] >> (2 * g);
                let a = (q[l] & 0xF) | ((h & 1) << 4);
                let b = (q[l] >> 4) | ((h & 2) << 3);
                lo += a as i32 * q8[l] as i32;
                hi += b as i32 * q8[l + 32] as i32;
            }
            isum += sc[2 * g] as i32 * lo + sc[2 * g + 1] as i32 * hi;
        }
        sum = accumulate(sum, bx.d, bx.dmin, by, isum, min_sum(by, &m));
    }
    sum
}

fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let nb = n / QK_K;
    let xs = read_blocks::<BlockQ5K>(x);
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
    ty: GgmlType::Q5_K,
    quantize,
    dequantize,
    vec_dot: Some(vec_dot),
    dot_type: GgmlType::Q8_K,
    uses_weights: true,
};

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::super::simd::x86::{bit_mask, hsum_i32, load_i8, load_u8, scaled_dot};
    use super::super::unpack_scale_min_k4;
    use super::{accumulate, min_sum, BlockQ5K, BlockQ8K};
    use std::arch::x86_64::*;

    /// AVX2 Q5_K · Q8_K, bit-identical to [`super::dot_scalar`].
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn dot(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
        let m4 = _mm256_set1_epi8(0x0F);
        let sixteen = _mm256_set1_epi8(16);
        let mut sum = 0.0f32;
        for (bx, by) in x.iter().zip(y) {
            let (sc, m) = unpack_scale_min_k4(&bx.scales);
            let qh = load_u8(&bx.qh, 0);
            let mut acc = _mm256_setzero_si256();
            for g in 0..4 {
                let q = load_u8(&bx.qs, 32 * g);
                let lo = _mm256_and_si256(q, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                let lo = _mm256_or_si256(lo, _mm256_and_si256(bit_mask(qh, 2 * g), sixteen));
                let hi = _mm256_or_si256(hi, _mm256_and_si256(bit_mask(qh, 2 * g + 1), sixteen));
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

    fn random_block(rng: &mut Lcg) -> BlockQ5K {
        let mut b = BlockQ5K::zeroed();
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
        let mut rng = Lcg(5);
        for n in [1usize, 2, 5] {
            for _ in 0..20 {
                let x: Vec<BlockQ5K> = (0..n).map(|_| random_block(&mut rng)).collect();
                let y: Vec<BlockQ8K> = (0..n).map(|_| random_q8k(&mut rng)).collect();
                assert_eq!(dot_scalar(&x, &y).to_bits(), avx2_call!(avx2::dot(&x, &y)).to_bits());
            }
        }
        // extremes: every quant, scale and min byte at 0x00 or 0xFF against saturated activations
        for fill in [0x00u8, 0xFF, 0xAA, 0x55] {
            let mut x = BlockQ5K::zeroed();
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
