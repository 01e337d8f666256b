//! Q3_K: symmetric 3-bit k-quant, 3.4375 bits/weight.
//!
//! A 256-value super-block is 16 sub-blocks of 16 values; value = `d * (sc[j] - 32) * (q - 4)` with `q` in
//! 0..=7 and a 6-bit sub-block scale `sc`. The two low bits of `q` are laid out like Q2_K's `qs`; the
//! third bit of value `32 * k + l` (`l < 32`) is bit `k` of `hmask[l]`. The scales take 12 bytes:
//! low nibbles of sub-blocks 0..8 in the low nibbles of bytes 0..8, those of 8..16 in the high nibbles,
//! and the top two bits of sub-block `j` at bit `2 * (j / 4)` of byte `8 + j % 4`.

use super::q2_k::pack_2bit;
use super::search::{make_q3_quants, make_qx_quants, nearest_int};
use super::{dequantize_blocks, f16_to_f32, quantize_blocks, read_blocks, BlockQ8K, QK_K};
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::GgmlType;
use half::f16;

/// A Q3_K super-block (110 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(crate) struct BlockQ3K {
    /// High (third) bit of the quants.
    pub hmask: [u8; QK_K / 8],
    /// Low 2 bits of the quants.
    pub qs: [u8; QK_K / 4],
    /// 16 scales, 6 bits each.
    pub scales: [u8; 12],
    /// Super-block scale.
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 2 + QK_K / 4 + QK_K / 8 + 12);

/// Store the 6-bit code `l` (0..=63) of sub-block `j` into the packed scale bytes.
#[inline]
fn put_scale(scales: &mut [u8; 12], j: usize, l: u8) {
    if j < 8 {
        scales[j] = l & 0xF;
    } else {
        scales[j - 8] |= (l & 0xF) << 4;
    }
    scales[8 + j % 4] |= (l >> 4) << (2 * (j / 4));
}

/// The 16 sub-block scales, already offset by -32 (range -32..=31).
#[inline]
pub(crate) fn unpack_scales(scales: &[u8; 12]) -> [i8; 16] {
    let word = |i: usize| u32::from_le_bytes([scales[i], scales[i + 1], scales[i + 2], scales[i + 3]]);
    let (lo, mid, high) = (word(0), word(4), word(8));
    const NIBBLES: u32 = 0x0F0F_0F0F;
    const PAIRS: u32 = 0x0303_0303;
    // four scales per word: low nibble from bytes 0..8, top two bits from bytes 8..12
    let words = [
        (lo & NIBBLES) | ((high & PAIRS) << 4),
        (mid & NIBBLES) | (((high >> 2) & PAIRS) << 4),
        ((lo >> 4) & NIBBLES) | (((high >> 4) & PAIRS) << 4),
        ((mid >> 4) & NIBBLES) | (((high >> 6) & PAIRS) << 4),
    ];
    let mut out = [0i8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(words) {
        for (v, b) in o.iter_mut().zip(w.to_le_bytes()) {
            *v = b as i8 - 32;
        }
    }
    out
}

impl BlockQ3K {
    /// Quantize 256 values exactly as llama.cpp's `quantize_q3_K`: `quantize_row_q3_K_ref` without
    /// weights, `quantize_row_q3_K_impl` with them.
    pub(crate) fn quantize(x: &[f32], qw: Option<&[f32]>) -> Self {
        let x = &x[..QK_K];
        let mut levels = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        let mut b = BlockQ3K::zeroed();
        match qw {
            None => {
                let mut max_scale = 0.0f32;
                let mut amax = 0.0f32;
                for j in 0..16 {
                    let r = 16 * j..16 * j + 16;
                    scales[j] = make_q3_quants(16, 4, &x[r.clone()], &mut levels[r], true);
                    if scales[j].abs() > amax {
                        amax = scales[j].abs();
                        max_scale = scales[j];
                    }
                }
                if max_scale != 0.0 {
                    let iscale = -32.0 / max_scale;
                    for (j, &s) in scales.iter().enumerate() {
                        // the C code narrows to int8 before clamping
                        let l = (nearest_int(iscale * s) as i8).clamp(-32, 31) + 32;
                        put_scale(&mut b.scales, j, l as u8);
                    }
                    b.d = f16::from_f32(1.0 / iscale);
                }
            }
            Some(qw) => {
                let mut sumx2 = 0.0f32;
                for &v in x {
                    sumx2 += v * v;
                }
                let sigma2 = 2.0 * sumx2 / QK_K as f32;
                let mut weights = [0.0f32; 16];
                let mut sw = [0.0f32; 16];
                for j in 0..16 {
                    let r = 16 * j..16 * j + 16;
                    for ((w, &v), &q) in weights.iter_mut().zip(&x[r.clone()]).zip(&qw[r.clone()]) {
                        *w = q * (sigma2 + v * v).sqrt();
                    }
                    let mut sumw = 0.0f32;
                    for &w in &weights {
                        sumw += w;
                    }
                    sw[j] = sumw;
                    scales[j] = make_qx_quants(16, 4, &x[r.clone()], &mut levels[r], 1, Some(&weights));
                }
                let mut ls = [0i8; 16];
                let d_block = make_qx_quants(16, 32, &scales, &mut ls, 1, Some(&sw));
                for (j, &l) in ls.iter().enumerate() {
                    put_scale(&mut b.scales, j, l as u8);
                }
                b.d = f16::from_f32(d_block);
            }
        }
        // Re-round every value against the encoded scales.
        let d_f = f16_to_f32(b.d);
        for (j, &sc) in unpack_scales(&b.scales).iter().enumerate() {
            let d = d_f * sc as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 16 * j..16 * j + 16 {
                levels[ii] = (nearest_int(x[ii] / d).clamp(-4, 3) + 4) as i8;
            }
        }
        // Split off the third bit: value j goes to bit j / 32 of hmask[j % 32].
        let mut low = [0u8; QK_K];
        for (j, (&l, lo)) in levels.iter().zip(low.iter_mut()).enumerate() {
            let mut l = l;
            if l > 3 {
                b.hmask[j % 32] |= 1 << (j / 32);
                l -= 4;
            }
            *lo = l as u8;
        }
        pack_2bit(&low, &mut b.qs);
        b
    }

    /// The 256 signed quants `q - 4` (range -4..=3), in element order.
    #[inline]
    pub(crate) fn signed_quants(&self) -> [i8; QK_K] {
        let mut out = [0i8; QK_K];
        for (j, o) in out.chunks_exact_mut(32).enumerate() {
            // 32-value group j: half j / 4, 2-bit plane j % 4, high bit j of each hmask byte
            let (h, shift) = (j / 4, 2 * (j % 4));
            let qs = &self.qs[32 * h..32 * h + 32];
            for ((v, &q), &hm) in o.iter_mut().zip(qs).zip(&self.hmask) {
                let low = ((q >> shift) & 3) as i8;
                *v = low - (((hm >> j) & 1) ^ 1) as i8 * 4;
            }
        }
        out
    }

    pub(crate) fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let sc = unpack_scales(&self.scales);
        let q = self.signed_quants();
        for (j, (ys, qs)) in y[..QK_K].chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
            let dl = d * sc[j] as f32;
            for (o, &v) in ys.iter_mut().zip(qs) {
                *o = dl * v as f32;
            }
        }
    }
}

fn quantize(src: &[f32], weights: Option<&[f32]>, dst: &mut [u8]) {
    quantize_blocks(src, weights, dst, BlockQ3K::quantize);
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_blocks(src, dst, BlockQ3K::dequantize);
}

/// Scale one super-block's exact integer dot product into the running sum (shared by the scalar and
/// SIMD kernels so both round identically).
#[inline(always)]
fn accumulate(sum: f32, bx: &BlockQ3K, by: &BlockQ8K, isum: i32) -> f32 {
    sum + f16_to_f32(bx.d) * by.d * isum as f32
}

/// Scalar reference dot product of Q3_K blocks with Q8_K blocks.
pub(crate) fn dot_scalar(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        let sc = unpack_scales(&bx.scales);
        let q = bx.signed_quants();
        let mut isum = 0i32;
        for j in 0..16 {
            let r = 16 * j..16 * j + 16;
            let s: i32 = q[r.clone()].iter().zip(&by.qs[r]).map(|(&a, &b)| a as i32 * b as i32).sum();
            isum += sc[j] as i32 * s;
        }
        sum = accumulate(sum, bx, by, isum);
    }
    sum
}

fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let nb = n / QK_K;
    let xs = read_blocks::<BlockQ3K>(x);
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
    ty: GgmlType::Q3_K,
    quantize,
    dequantize,
    vec_dot: Some(vec_dot),
    dot_type: GgmlType::Q8_K,
    uses_weights: true,
};

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::super::simd::x86::{bit_mask, hsum_i32, load_i8, load_u8, scale_pairs, two_bits};
    use super::{accumulate, unpack_scales, BlockQ3K, BlockQ8K};
    use std::arch::x86_64::*;

    /// AVX2 Q3_K · Q8_K, bit-identical to [`super::dot_scalar`].
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn dot(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
        let four = _mm256_set1_epi8(4);
        let mut sum = 0.0f32;
        for (bx, by) in x.iter().zip(y) {
            let sc = unpack_scales(&bx.scales);
            let hm = load_u8(&bx.hmask, 0);
            let mut acc = _mm256_setzero_si256();
            for h in 0..2 {
                let q = load_u8(&bx.qs, 32 * h);
                for k in 0..4 {
                    let j = 4 * h + k;
                    let q8 = load_i8(&by.qs, 32 * j);
                    // value = low two bits - 4 unless the high bit is set
                    let minus = _mm256_andnot_si256(bit_mask(hm, j), four);
                    let pairs =
                        _mm256_sub_epi16(_mm256_maddubs_epi16(two_bits(q, k), q8), _mm256_maddubs_epi16(minus, q8));
                    let prod = scale_pairs(pairs, sc[2 * j] as i16, sc[2 * j + 1] as i16);
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

    fn random_block(rng: &mut Lcg) -> BlockQ3K {
        let mut b = BlockQ3K::zeroed();
        rng.fill(bytemuck::bytes_of_mut(&mut b));
        b.d = f16::from_f32(rng.signed() * 0.01);
        b
    }

    #[test]
    fn scale_packing_roundtrip() {
        let mut rng = Lcg(33);
        for _ in 0..100 {
            let codes: Vec<u8> = (0..16).map(|_| (rng.next() % 64) as u8).collect();
            let mut packed = [0u8; 12];
            for (j, &c) in codes.iter().enumerate() {
                put_scale(&mut packed, j, c);
            }
            let back = unpack_scales(&packed);
            for j in 0..16 {
                assert_eq!(back[j] as i32, codes[j] as i32 - 32);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_matches_scalar() {
        if !has_avx2_fma() {
            return;
        }
        let mut rng = Lcg(3);
        for n in [1usize, 2, 5] {
            for _ in 0..20 {
                let x: Vec<BlockQ3K> = (0..n).map(|_| random_block(&mut rng)).collect();
                let y: Vec<BlockQ8K> = (0..n).map(|_| random_q8k(&mut rng)).collect();
                assert_eq!(dot_scalar(&x, &y).to_bits(), avx2_call!(avx2::dot(&x, &y)).to_bits());
            }
        }
        // extremes: every quant, scale and min byte at 0x00 or 0xFF against saturated activations
        for fill in [0x00u8, 0xFF, 0xAA, 0x55] {
            let mut x = BlockQ3K::zeroed();
            bytemuck::bytes_of_mut(&mut x).fill(fill);
            x.d = f16::from_f32(1.0);
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
