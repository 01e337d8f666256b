//! Q2_K: asymmetric 2-bit k-quant, 2.625 bits/weight.
//!
//! A 256-value super-block is 16 sub-blocks of 16 values; value = `d * (sc & 15) * q - dmin * (sc >> 4)`
//! with `q` in 0..=3, one byte per sub-block holding its 4-bit scale (low nibble) and 4-bit min (high
//! nibble), and two f16 super-block scales. Each half (128 values) uses 32 bytes of `qs`: value
//! `128 * h + 32 * k + l` sits at bits `2 * k` of `qs[32 * h + l]`.

use super::search::{make_qp_quants, nearest_int};
use super::search_x8::make_qkx_quants_x8;
use super::{dequantize_blocks, f16_to_f32, quantize_blocks, read_blocks, BlockQ8K, QK_K};
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::GgmlType;
use half::f16;

/// A Q2_K super-block (84 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(crate) struct BlockQ2K {
    /// Per sub-block: scale in the low nibble, min in the high nibble.
    pub scales: [u8; QK_K / 16],
    /// 2-bit quants.
    pub qs: [u8; QK_K / 4],
    /// Super-block scale of the sub-block scales.
    pub d: f16,
    /// Super-block scale of the sub-block mins.
    pub dmin: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 2 + 2 + QK_K / 16 + QK_K / 4);

/// Pack 256 levels in 0..=3 into the 64 bytes of 2-bit quants shared by Q2_K and Q3_K.
pub(crate) fn pack_2bit(levels: &[u8; QK_K], qs: &mut [u8; QK_K / 4]) {
    for (h, q) in qs.chunks_exact_mut(32).enumerate() {
        let lv = &levels[128 * h..128 * h + 128];
        for l in 0..32 {
            q[l] = lv[l] | (lv[l + 32] << 2) | (lv[l + 64] << 4) | (lv[l + 96] << 6);
        }
    }
}

impl BlockQ2K {
    /// Quantize 256 values exactly as llama.cpp's `quantize_q2_K`: `quantize_row_q2_K_ref` without
    /// weights, `quantize_row_q2_K_impl` with them.
    pub(crate) fn quantize(x: &[f32], qw: Option<&[f32]>) -> Self {
        let x = &x[..QK_K];
        let mut levels = [0u8; QK_K];
        let mut scales = [0.0f32; 16];
        let mut mins = [0.0f32; 16];
        let mut b = BlockQ2K::zeroed();
        match qw {
            None => {
                let mut all_weights = [0.0f32; QK_K];
                for (w, &v) in all_weights.iter_mut().zip(x) {
                    *w = v.abs();
                }
                for h in 0..2 {
                    let r = 128 * h..128 * h + 128;
                    let mut m = [0.0f32; 8];
                    let s = make_qkx_quants_x8(
                        16,
                        3,
                        &x[r.clone()],
                        &all_weights[r.clone()],
                        &mut levels[r],
                        &mut m,
                        -0.5,
                        0.1,
                        15,
                        true,
                        false,
                    );
                    scales[8 * h..8 * h + 8].copy_from_slice(&s);
                    mins[8 * h..8 * h + 8].copy_from_slice(&m);
                }
                let mut max_scale = 0.0f32;
                let mut max_min = 0.0f32;
                for j in 0..16 {
                    if scales[j] > max_scale {
                        max_scale = scales[j];
                    }
                    if mins[j] > max_min {
                        max_min = mins[j];
                    }
                }
                if max_scale > 0.0 {
                    let iscale = 15.0 / max_scale;
                    for (q, &s) in b.scales.iter_mut().zip(&scales) {
                        *q = nearest_int(iscale * s) as u8;
                    }
                    b.d = f16::from_f32(max_scale / 15.0);
                }
                if max_min > 0.0 {
                    let iscale = 15.0 / max_min;
                    for (q, &m) in b.scales.iter_mut().zip(&mins) {
                        *q |= (nearest_int(iscale * m) << 4) as u8;
                    }
                    b.dmin = f16::from_f32(max_min / 15.0);
                }
            }
            Some(qw) => {
                let mut sumx2 = 0.0f32;
                for &v in x {
                    sumx2 += v * v;
                }
                let sigma2 = sumx2 / QK_K as f32;
                let mut sw = [0.0f32; 16];
                let mut all_weights = [0.0f32; QK_K];
                for j in 0..16 {
                    let xs = &x[16 * j..16 * j + 16];
                    let weights = &mut all_weights[16 * j..16 * j + 16];
                    for ((w, &v), &q) in weights.iter_mut().zip(xs).zip(&qw[16 * j..16 * j + 16]) {
                        *w = q * (sigma2 + v * v).sqrt();
                    }
                    for &w in weights.iter() {
                        sw[j] += w;
                    }
                }
                for h in 0..2 {
                    let r = 128 * h..128 * h + 128;
                    let mut m = [0.0f32; 8];
                    let s = make_qkx_quants_x8(
                        16,
                        3,
                        &x[r.clone()],
                        &all_weights[r.clone()],
                        &mut levels[r],
                        &mut m,
                        -0.9,
                        0.05,
                        36,
                        false,
                        true,
                    );
                    scales[8 * h..8 * h + 8].copy_from_slice(&s);
                    mins[8 * h..8 * h + 8].copy_from_slice(&m);
                }
                let mut ls = [0u8; 16];
                let mut lm = [0u8; 16];
                let dm = make_qp_quants(16, 15, &scales, &mut ls, &sw);
                let mm = make_qp_quants(16, 15, &mins, &mut lm, &sw);
                b.d = f16::from_f32(dm);
                b.dmin = f16::from_f32(mm);
                for (q, (&s, &m)) in b.scales.iter_mut().zip(ls.iter().zip(&lm)) {
                    *q = s | (m << 4);
                }
            }
        }
        // Re-round every value against the encoded scales and mins.
        let (d_f, dmin_f) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
        for j in 0..16 {
            let d = d_f * (b.scales[j] & 0xF) as f32;
            if d == 0.0 {
                continue;
            }
            let m = dmin_f * (b.scales[j] >> 4) as f32;
            for ii in 16 * j..16 * j + 16 {
                levels[ii] = nearest_int((x[ii] + m) / d).clamp(0, 3) as u8;
            }
        }
        pack_2bit(&levels, &mut b.qs);
        b
    }

    pub(crate) fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let min = f16_to_f32(self.dmin);
        for (j, ys) in y[..QK_K].chunks_exact_mut(16).enumerate() {
            // sub-block j: half j / 8, 2-bit plane (j % 8) / 2, bytes 16 * (j % 2).. of that half
            let (h, shift, part) = (j / 8, 2 * ((j % 8) / 2), j % 2);
            let q = &self.qs[32 * h + 16 * part..32 * h + 16 * part + 16];
            let sc = self.scales[j];
            let dl = d * (sc & 0xF) as f32;
            let ml = min * (sc >> 4) as f32;
            for (o, &b) in ys.iter_mut().zip(q) {
                *o = dl * ((b >> shift) & 3) as f32 - ml;
            }
        }
    }
}

fn quantize(src: &[f32], weights: Option<&[f32]>, dst: &mut [u8]) {
    quantize_blocks(src, weights, dst, BlockQ2K::quantize);
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_blocks(src, dst, BlockQ2K::dequantize);
}

/// Scale one super-block's exact integer sums into the running total (shared by the scalar and SIMD
/// kernels so both round identically).
#[inline(always)]
fn accumulate(sum: f32, bx: &BlockQ2K, by: &BlockQ8K, isum: i32) -> f32 {
    let msum: i32 = by.bsums.iter().zip(&bx.scales).map(|(&s, &sc)| s as i32 * (sc >> 4) as i32).sum();
    sum + by.d * f16_to_f32(bx.d) * isum as f32 - by.d * f16_to_f32(bx.dmin) * msum as f32
}

/// Scalar reference dot product of Q2_K blocks with Q8_K blocks.
pub(crate) fn dot_scalar(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        let mut isum = 0i32;
        for j in 0..16 {
            // sub-block j: half h, 2-bit plane k, bytes 16 * (j % 2)..+16 of that half's 32
            let (h, k, part) = (j / 8, (j % 8) / 2, j % 2);
            let q = &bx.qs[32 * h + 16 * part..32 * h + 16 * part + 16];
            let q8 = &by.qs[16 * j..16 * j + 16];
            let s: i32 = q.iter().zip(q8).map(|(&a, &b)| ((a >> (2 * k)) & 3) as i32 * b as i32).sum();
            isum += (bx.scales[j] & 0xF) as i32 * s;
        }
        sum = accumulate(sum, bx, by, isum);
    }
    sum
}

fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let nb = n / QK_K;
    let xs = read_blocks::<BlockQ2K>(x);
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
    ty: GgmlType::Q2_K,
    quantize,
    dequantize,
    vec_dot: Some(vec_dot),
    dot_type: GgmlType::Q8_K,
    uses_weights: true,
};

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::super::simd::x86::{hsum_i32, load_i8, load_u8, scaled_dot, two_bits};
    use super::{accumulate, BlockQ2K, BlockQ8K};
    use std::arch::x86_64::*;

    /// AVX2 Q2_K · Q8_K, bit-identical to [`super::dot_scalar`].
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn dot(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
        let mut sum = 0.0f32;
        for (bx, by) in x.iter().zip(y) {
            let mut acc = _mm256_setzero_si256();
            for h in 0..2 {
                let q = load_u8(&bx.qs, 32 * h);
                for k in 0..4 {
                    let s = 8 * h + 2 * k;
                    let (s_lo, s_hi) = ((bx.scales[s] & 0xF) as i16, (bx.scales[s + 1] & 0xF) as i16);
                    let q8 = load_i8(&by.qs, 128 * h + 32 * k);
                    acc = _mm256_add_epi32(acc, scaled_dot(two_bits(q, k), q8, s_lo, s_hi));
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

    fn random_block(rng: &mut Lcg) -> BlockQ2K {
        let mut b = BlockQ2K::zeroed();
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
        let mut rng = Lcg(2);
        for n in [1usize, 2, 5] {
            for _ in 0..20 {
                let x: Vec<BlockQ2K> = (0..n).map(|_| random_block(&mut rng)).collect();
                let y: Vec<BlockQ8K> = (0..n).map(|_| random_q8k(&mut rng)).collect();
                assert_eq!(dot_scalar(&x, &y).to_bits(), avx2_call!(avx2::dot(&x, &y)).to_bits());
            }
        }
        // extremes: every quant, scale and min byte at 0x00 or 0xFF against saturated activations
        for fill in [0x00u8, 0xFF, 0xAA, 0x55] {
            let mut x = BlockQ2K::zeroed();
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
