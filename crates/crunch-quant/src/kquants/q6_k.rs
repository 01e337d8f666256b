//! Q6_K: symmetric 6-bit k-quant, 6.5625 bits/weight.
//!
//! A 256-value super-block is 16 sub-blocks of 16 values; value = `d * scales[j] * (q - 32)` with `q` in
//! 0..=63 split into a low nibble (`ql`) and two high bits (`qh`), an 8-bit signed scale per sub-block
//! and one f16 super-block scale `d`. Within each half (128 values), `ql[l]` holds the low nibbles of
//! values `l` (low) and `l + 64` (high), `ql[l + 32]` those of `l + 32` and `l + 96`, and `qh[l]` the
//! high bits of `l`, `l + 32`, `l + 64`, `l + 96` at bit offsets 0, 2, 4, 6.

use super::search::{nearest_int, GROUP_MAX_EPS};
use super::search_x8::make_qx_quants_x8;
use super::{dequantize_blocks, f16_to_f32, quantize_blocks, read_blocks, BlockQ8K, QK_K};
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::GgmlType;
use half::f16;

/// A Q6_K super-block (210 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(crate) struct BlockQ6K {
    /// Low 4 bits of the quants.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits of the quants.
    pub qh: [u8; QK_K / 4],
    /// Sub-block scales.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale.
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 2 + QK_K / 2 + QK_K / 4 + QK_K / 16);

impl BlockQ6K {
    /// Quantize 256 values as llama.cpp does: `quantize_row_q6_K_ref` without weights, the weighted
    /// `quantize_row_q6_K_impl` with them (the two differ only in the per-sub-block search weights).
    pub(crate) fn quantize(x: &[f32], qw: Option<&[f32]>) -> Self {
        let x = &x[..QK_K];
        let mut levels = [0i8; QK_K];
        let mut scales = [0.0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for h in 0..2 {
            let r = 128 * h..128 * h + 128;
            let w = qw.map(|w| &w[r.clone()]);
            let s = make_qx_quants_x8(16, 32, &x[r.clone()], &mut levels[r], w);
            scales[8 * h..8 * h + 8].copy_from_slice(&s);
        }
        for &scale in &scales {
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        let mut b = BlockQ6K::zeroed();
        if max_abs_scale < GROUP_MAX_EPS {
            return b;
        }
        let iscale = -128.0 / max_scale;
        b.d = f16::from_f32(1.0 / iscale);
        for (q, &s) in b.scales.iter_mut().zip(&scales) {
            *q = nearest_int(iscale * s).min(127) as i8;
        }
        let d_super = f16_to_f32(b.d);
        for j in 0..QK_K / 16 {
            let d = d_super * b.scales[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 16 * j..16 * j + 16 {
                let l = nearest_int(x[ii] / d).clamp(-32, 31);
                levels[ii] = (l + 32) as i8;
            }
        }
        let levels = levels.map(|l| l as u8);
        for half in 0..2 {
            let (ql, qh, lv) = (&mut b.ql[64 * half..], &mut b.qh[32 * half..], &levels[128 * half..]);
            for l in 0..32 {
                let (q1, q2, q3, q4) = (lv[l], lv[l + 32], lv[l + 64], lv[l + 96]);
                ql[l] = (q1 & 0xF) | ((q3 & 0xF) << 4);
                ql[l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
                qh[l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
            }
        }
        b
    }

    /// The 256 signed quants `q - 32`, in element order.
    #[inline]
    pub(crate) fn signed_quants(&self) -> [i8; QK_K] {
        let mut out = [0i8; QK_K];
        for half in 0..2 {
            let (ql, qh, o) = (&self.ql[64 * half..], &self.qh[32 * half..], &mut out[128 * half..]);
            for l in 0..32 {
                let h = qh[l];
                o[l] = ((ql[l] & 0xF) | ((h & 3) << 4)) as i8 - 32;
                o[l + 32] = ((ql[l + 32] & 0xF) | (((h >> 2) & 3) << 4)) as i8 - 32;
                o[l + 64] = ((ql[l] >> 4) | (((h >> 4) & 3) << 4)) as i8 - 32;
                o[l + 96] = ((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) as i8 - 32;
            }
        }
        out
    }

    pub(crate) fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let q = self.signed_quants();
        for (j, (ys, qs)) in y[..QK_K].chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
            let dl = d * self.scales[j] as f32;
            for (o, &v) in ys.iter_mut().zip(qs) {
                *o = dl * v as f32;
            }
        }
    }
}

fn quantize(src: &[f32], weights: Option<&[f32]>, dst: &mut [u8]) {
    quantize_blocks(src, weights, dst, BlockQ6K::quantize);
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_blocks(src, dst, BlockQ6K::dequantize);
}

/// Scale one super-block's exact integer dot product into the running sum (shared by the scalar and
/// SIMD kernels so both round identically).
#[inline(always)]
fn accumulate(sum: f32, bx: &BlockQ6K, by: &BlockQ8K, isum: i32) -> f32 {
    sum + f16_to_f32(bx.d) * by.d * isum as f32
}

/// Scalar reference dot product of Q6_K blocks with Q8_K blocks.
pub(crate) fn dot_scalar(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        let q = bx.signed_quants();
        let mut isum = 0i32;
        for j in 0..QK_K / 16 {
            let r = 16 * j..16 * j + 16;
            let s: i32 = q[r.clone()].iter().zip(&by.qs[r]).map(|(&a, &b)| a as i32 * b as i32).sum();
            isum += bx.scales[j] as i32 * s;
        }
        sum = accumulate(sum, bx, by, isum);
    }
    sum
}

fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let nb = n / QK_K;
    let xs = read_blocks::<BlockQ6K>(x);
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
    ty: GgmlType::Q6_K,
    quantize,
    dequantize,
    vec_dot: Some(vec_dot),
    dot_type: GgmlType::Q8_K,
    uses_weights: true,
};

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::super::simd::x86::{hsum_i32, load_i8, load_u8, scale_pairs};
    use super::{accumulate, BlockQ6K, BlockQ8K};
    use std::arch::x86_64::*;

    /// AVX2 Q6_K · Q8_K, bit-identical to [`super::dot_scalar`].
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn dot(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
        let m4 = _mm256_set1_epi8(0x0F);
        let m2 = _mm256_set1_epi8(0x30);
        let offset = _mm256_set1_epi8(32);
        let mut sum = 0.0f32;
        for (bx, by) in x.iter().zip(y) {
            let mut acc = _mm256_setzero_si256();
            for h in 0..2 {
                let qh = load_u8(&bx.qh, 32 * h);
                let ql0 = load_u8(&bx.ql, 64 * h);
                let ql1 = load_u8(&bx.ql, 64 * h + 32);
                // reassemble the four 32-value groups of this half as unsigned 0..=63
                let groups = [
                    _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m2)),
                    _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m2)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4), _mm256_and_si256(qh, m2)),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m2),
                    ),
                ];
                for (c, q) in groups.into_iter().enumerate() {
                    let q8 = load_i8(&by.qs, 128 * h + 32 * c);
                    // (q - 32) * q8 summed in pairs; stays far inside i16
                    let pairs = _mm256_sub_epi16(_mm256_maddubs_epi16(q, q8), _mm256_maddubs_epi16(offset, q8));
                    let s = 8 * h + 2 * c;
                    let prod = scale_pairs(pairs, bx.scales[s] as i16, bx.scales[s + 1] as i16);
                    acc = _mm256_add_epi32(acc, prod);
                }
            }
            sum = accumulate(sum, bx, by, hsum_i32(acc));
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kquants::simd::has_avx2_fma;
    use crate::kquants::test_util::{avx2_call, random_q8k, Lcg};

    fn random_block(rng: &mut Lcg) -> BlockQ6K {
        let mut b = BlockQ6K::zeroed();
        rng.fill(bytemuck::bytes_of_mut(&mut b));
        b.d = f16::from_f32(rng.signed() * 0.01);
        b
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_matches_scalar() {
        if !has_avx2_fma() {
            return;
        }
        let mut rng = Lcg(6);
        for n in [1usize, 2, 5] {
            for _ in 0..20 {
                let x: Vec<BlockQ6K> = (0..n).map(|_| random_block(&mut rng)).collect();
                let y: Vec<BlockQ8K> = (0..n).map(|_| random_q8k(&mut rng)).collect();
                assert_eq!(dot_scalar(&x, &y).to_bits(), avx2_call!(avx2::dot(&x, &y)).to_bits());
            }
        }
        // extremes: all quants and scales at their limits
        let mut x = BlockQ6K::zeroed();
        x.d = f16::from_f32(1.0);
        for (ql, qh, sc) in [(0xFFu8, 0xFFu8, 127i8), (0, 0, -128), (0xFF, 0xFF, -128), (0, 0, 127)] {
            x.ql = [ql; 128];
            x.qh = [qh; 64];
            x.scales = [sc; 16];
            for q in [127i8, -128, -127] {
                let mut y = BlockQ8K::zeroed();
                y.d = 1.0;
                y.qs = [q; QK_K];
                let (a, b) = (dot_scalar(&[x], &[y]), avx2_call!(avx2::dot(&[x], &[y])));
                assert_eq!(a.to_bits(), b.to_bits(), "{a} vs {b}");
            }
        }
    }
}
