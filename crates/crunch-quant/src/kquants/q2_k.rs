//! Q2_K: asymmetric 2-bit k-quant, 2.625 bits/weight.
//!
//! A 256-value super-block is 16 sub-blocks of 16 values; value = `d * (sc & 15) * q - dmin * (sc >> 4)`
//! with `q` in 0..=3, one byte per sub-block holding its 4-bit scale (low nibble) and 4-bit min (high
//! nibble), and two f16 super-block scales. Each half (128 values) uses 32 bytes of `qs`: value
//! `128 * h + 32 * k + l` sits at bits `2 * k` of `qs[32 * h + l]`.

use super::search::{make_qkx2_quants, make_qkx3_quants, make_qp_quants, nearest_int};
use super::{dequantize_blocks, quantize_blocks, read_blocks, BlockQ8K, QK_K};
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
        let mut weights = [0.0f32; 16];
        let mut aux = [0u8; 16];
        let mut b = BlockQ2K::zeroed();
        match qw {
            None => {
                let mut max_scale = 0.0f32;
                let mut max_min = 0.0f32;
                for j in 0..16 {
                    let xs = &x[16 * j..16 * j + 16];
                    for (w, &v) in weights.iter_mut().zip(xs) {
                        *w = v.abs();
                    }
                    let lv = &mut levels[16 * j..16 * j + 16];
                    scales[j] = make_qkx2_quants(16, 3, xs, &weights, lv, &mut mins[j], &mut aux, -0.5, 0.1, 15, true);
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
                for j in 0..16 {
                    let xs = &x[16 * j..16 * j + 16];
                    for ((w, &v), &q) in weights.iter_mut().zip(xs).zip(&qw[16 * j..16 * j + 16]) {
                        *w = q * (sigma2 + v * v).sqrt();
                    }
                    for &w in &weights {
                        sw[j] += w;
                    }
                    let lv = &mut levels[16 * j..16 * j + 16];
                    scales[j] =
                        make_qkx3_quants(16, 3, xs, Some(&weights), lv, &mut mins[j], &mut aux, -0.9, 0.05, 36, false);
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
        let (d_f, dmin_f) = (b.d.to_f32(), b.dmin.to_f32());
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
        let d = self.d.to_f32();
        let min = self.dmin.to_f32();
        for (h, (ys, q)) in y[..QK_K].chunks_exact_mut(128).zip(self.qs.chunks_exact(32)).enumerate() {
            for (k, yk) in ys.chunks_exact_mut(32).enumerate() {
                let shift = 2 * k;
                for (half, yy) in yk.chunks_exact_mut(16).enumerate() {
                    let sc = self.scales[8 * h + 2 * k + half];
                    let dl = d * (sc & 0xF) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for (l, o) in yy.iter_mut().enumerate() {
                        *o = dl * ((q[16 * half + l] >> shift) & 3) as f32 - ml;
                    }
                }
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

/// Scalar reference dot product of Q2_K blocks with Q8_K blocks.
pub(crate) fn dot_scalar(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        let msum: i32 = by.bsums.iter().zip(&bx.scales).map(|(&s, &sc)| s as i32 * (sc >> 4) as i32).sum();
        let mut isum = 0i32;
        for j in 0..16 {
            // sub-block j: half h, 2-bit plane k, bytes 16 * (j % 2)..+16 of that half's 32
            let (h, k, part) = (j / 8, (j % 8) / 2, j % 2);
            let q = &bx.qs[32 * h + 16 * part..32 * h + 16 * part + 16];
            let q8 = &by.qs[16 * j..16 * j + 16];
            let s: i32 = q.iter().zip(q8).map(|(&a, &b)| ((a >> (2 * k)) & 3) as i32 * b as i32).sum();
            isum += (bx.scales[j] & 0xF) as i32 * s;
        }
        let dy = by.d;
        sum += dy * bx.d.to_f32() * isum as f32 - dy * bx.dmin.to_f32() * msum as f32;
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
    use super::{BlockQ2K, BlockQ8K};

    /// AVX2+FMA Q2_K · Q8_K.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn dot(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
        super::dot_scalar(x, y)
    }
}
