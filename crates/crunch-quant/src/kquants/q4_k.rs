//! Q4_K: asymmetric 4-bit k-quant, 4.5 bits/weight.
//!
//! A 256-value super-block is 8 sub-blocks of 32 values; value = `d * sc[j] * q - dmin * m[j]` with `q`
//! in 0..=15, 6-bit sub-block scales `sc` and mins `m` packed into 12 bytes (see
//! [`super::unpack_scale_min_k4`]) and two f16 super-block scales. Each group of 64 values shares 32
//! bytes of `qs`: the first 32 values in the low nibbles, the next 32 in the high nibbles.

use super::search::{make_qkx2_quants, make_qkx3_quants, make_qp_quants, nearest_int};
use super::{
    dequantize_blocks, pack_scale_min_k4, quantize_blocks, read_blocks, unpack_scale_min_k4, BlockQ8K, QK_K,
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

/// Per-sub-block scale and min from the searches, then the super-block encoding and the final
/// re-rounding of every value against the encoded (f16 and 6-bit) scales — shared by Q4_K and Q5_K.
pub(crate) struct AsymSuperBlock {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
}

/// Search every 32-value sub-block of `x` for its scale/min (levels `0..=nmax` into `levels`) and
/// encode them, following llama.cpp's reference (`weights == None`) or importance-weighted path.
/// Returns the encoded super-block header; `levels` then holds the final quants.
pub(crate) fn quantize_asym_32(x: &[f32], qw: Option<&[f32]>, nmax: i32, levels: &mut [u8; QK_K]) -> AsymSuperBlock {
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let mut weights = [0.0f32; 32];
    let mut aux = [0u8; 32];
    let (ls, lm, d, dmin) = match qw {
        None => {
            // Reference path: per-sub-block weights av|x| + |x|, then linear 6-bit encoding of the
            // scales and mins against their maxima.
            let (rmin, nstep) = if nmax == 15 { (-1.0, 20) } else { (-0.5, 15) };
            let mut max_scale = 0.0f32;
            let mut max_min = 0.0f32;
            for j in 0..8 {
                let xs = &x[32 * j..32 * j + 32];
                let mut sum_x2 = 0.0f32;
                for &v in xs {
                    sum_x2 += v * v;
                }
                let av_x = (sum_x2 / 32.0).sqrt();
                for (w, &v) in weights.iter_mut().zip(xs) {
                    *w = av_x + v.abs();
                }
                let lv = &mut levels[32 * j..32 * j + 32];
                scales[j] = make_qkx2_quants(32, nmax, xs, &weights, lv, &mut mins[j], &mut aux, rmin, 0.1, nstep, false);
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
            for j in 0..8 {
                let xs = &x[32 * j..32 * j + 32];
                for ((w, &v), &q) in weights.iter_mut().zip(xs).zip(&qw[32 * j..32 * j + 32]) {
                    *w = q * (sigma2 + v * v).sqrt();
                }
                let mut sumw = 0.0f32;
                for &w in &weights {
                    sumw += w;
                }
                sw[j] = sumw;
                let lv = &mut levels[32 * j..32 * j + 32];
                scales[j] =
                    make_qkx3_quants(32, nmax, xs, Some(&weights), lv, &mut mins[j], &mut aux, -0.9, 0.05, 36, false);
            }
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
    let (d_f, dmin_f) = (d.to_f32(), dmin.to_f32());
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
        let d = self.d.to_f32();
        let min = self.dmin.to_f32();
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
        let msum: i32 = by.bsums.iter().enumerate().map(|(j, &s)| s as i32 * m[j / 2] as i32).sum();
        let dy = by.d;
        sum += bx.d.to_f32() * dy * isum as f32 - bx.dmin.to_f32() * dy * msum as f32;
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
    use super::{BlockQ4K, BlockQ8K};

    /// AVX2+FMA Q4_K · Q8_K.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn dot(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
        super::dot_scalar(x, y)
    }
}
