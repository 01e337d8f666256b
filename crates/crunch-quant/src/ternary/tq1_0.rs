//! TQ1_0: 256 ternary weights in 54 bytes (1.6875 bits per weight).
//!
//! Five trits `t0..t4` (each 0, 1, 2 for -1, 0, +1) form the base-3 number `t0·81 + t1·27 + … + t4`,
//! stored as the byte `ceil(n · 256 / 243)`: the trits then sit in the top of the byte's successive
//! base-3 "digits", and multiplying the byte by 3^k (mod 256) and taking `(b · 3) >> 8` reads trit k.
//!
//! Element order: bytes `qs[0..32]` hold elements `m + 32 k` (k = 0..5) of the first 160, bytes
//! `qs[32..48]` elements `160 + m + 16 k` of the next 80, and `qh[0..4]` four trits each (elements
//! `240 + j + 4 k`, k = 0..4, the fifth digit unused).

use super::{absmax, trit};
use crate::kquants::BlockQ8K;
use crate::legacy::{all_blocks, blocks, fill_blocks, inverse_or_zero};
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::{GgmlType, QK_K};
use half::f16;

/// One TQ1_0 block.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockTq1_0 {
    pub qs: [u8; (QK_K - 4 * QK_K / 64) / 5],
    pub qh: [u8; QK_K / 64],
    pub d: f16,
}

const _: () = assert!(size_of::<BlockTq1_0>() == 2 + QK_K / 64 + (QK_K - 4 * QK_K / 64) / 5);

pub(crate) static KERNELS: Kernels = Kernels {
    ty: GgmlType::TQ1_0,
    quantize,
    dequantize,
    vec_dot: Some(vec_dot),
    dot_type: GgmlType::Q8_K,
    uses_weights: false,
};

const POW3: [u8; 5] = [1, 3, 9, 27, 81];

/// Pack base-3 digits (most significant first, as 0..=2 each, up to five) into a byte.
#[inline]
fn pack_trits(digits: impl Iterator<Item = i32>) -> u8 {
    let mut n = 0i32;
    for t in digits {
        // the reference accumulates in a byte, so wrap the same way
        n = (n.wrapping_mul(3).wrapping_add(t)) & 0xff;
    }
    // ceiling division: the byte that reads back as `n` digit by digit
    ((n * 256 + 242) / 243) as u8
}

/// Trit `k` (0..5) of a packed byte, as 0, 1 or 2.
#[inline]
fn unpack_trit(byte: u8, k: usize) -> i32 {
    let shifted = byte.wrapping_mul(POW3[k]);
    (i32::from(shifted) * 3) >> 8
}

/// Quantize one block exactly as llama.cpp's `quantize_row_tq1_0_ref`.
pub fn quantize_block(x: &[f32; QK_K]) -> BlockTq1_0 {
    let d = absmax(x);
    let id = inverse_or_zero(d);
    pack(f16::from_f32(d), |i| trit(x[i], id))
}

/// The block of scale `d` whose element `i` has the code `code(i)` (0, 1, 2 for -1, 0, +1; other
/// values wrap as the reference's byte arithmetic does): the packing every TQ1_0 quantizer shares.
pub(crate) fn pack(d: f16, code: impl Fn(usize) -> i32) -> BlockTq1_0 {
    let mut b = BlockTq1_0::zeroed();
    for (m, q) in b.qs[..32].iter_mut().enumerate() {
        *q = pack_trits((0..5).map(|k| code(m + 32 * k)));
    }
    for (m, q) in b.qs[32..].iter_mut().enumerate() {
        *q = pack_trits((0..5).map(|k| code(160 + m + 16 * k)));
    }
    for (j, q) in b.qh.iter_mut().enumerate() {
        // four trits, then a zero fifth digit
        *q = pack_trits((0..4).map(|k| code(240 + j + 4 * k)).chain([0]));
    }
    b.d = d;
    b
}

/// Quantize rows of f32 into TQ1_0 blocks (`weights` are ignored).
pub fn quantize(src: &[f32], _weights: Option<&[f32]>, dst: &mut [u8]) {
    fill_blocks(dst, |out: &mut [BlockTq1_0]| {
        for (b, x) in out.iter_mut().zip(src.chunks_exact(QK_K)) {
            if let Ok(x) = x.try_into() {
                *b = quantize_block(x);
            }
        }
    });
}

/// The 256 weights of a block as -1, 0, +1 (or up to +1 for any byte), in element order.
pub fn trits(b: &BlockTq1_0) -> [i8; QK_K] {
    let mut t = [0i8; QK_K];
    let mut i = 0;
    for (group, width) in [(&b.qs[..32], 32usize), (&b.qs[32..], 16)] {
        for k in 0..5 {
            for &byte in group.iter().take(width) {
                t[i] = (unpack_trit(byte, k) - 1) as i8;
                i += 1;
            }
        }
    }
    for k in 0..4 {
        for &byte in &b.qh {
            t[i] = (unpack_trit(byte, k) - 1) as i8;
            i += 1;
        }
    }
    t
}

/// Dequantize TQ1_0 blocks.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, y) in all_blocks::<BlockTq1_0>(src).iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (o, &t) in y.iter_mut().zip(&trits(b)) {
            *o = f32::from(t) * d;
        }
    }
}

/// Dot product of `n` elements of TQ1_0 `x` with Q8_K `y`, using AVX2 when the CPU has it.
pub fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    vec_dot_simd(n, x, y).unwrap_or_else(|| vec_dot_scalar(n, x, y))
}

/// Scalar reference dot product (llama.cpp's generic kernel order).
pub fn vec_dot_scalar(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let xs = blocks::<BlockTq1_0>(x, n / QK_K);
    let ys = blocks::<BlockQ8K>(y, n / QK_K);
    let mut sum = 0.0f32;
    for (bx, by) in xs.iter().zip(ys.iter()) {
        let mut isum = 0i32;
        for (&t, &q) in trits(bx).iter().zip(&by.qs) {
            isum += i32::from(t) * i32::from(q);
        }
        sum += isum as f32 * (bx.d.to_f32() * by.d);
    }
    sum
}

/// The SIMD dot product, or `None` when this CPU has no SIMD kernel for it.
pub fn vec_dot_simd(n: usize, x: &[u8], y: &[u8]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if crate::legacy::simd::has_avx2_fma() {
        let xs = blocks::<BlockTq1_0>(x, n / QK_K);
        let ys = blocks::<BlockQ8K>(y, n / QK_K);
        // SAFETY: AVX2 and FMA were detected on this CPU just above.
        return Some(unsafe { avx2::dot(&xs, &ys) });
    }
    let _ = (n, x, y);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockQ8K, BlockTq1_0, POW3};
    use crate::legacy::simd::*;
    use std::arch::x86_64::*;

    /// Trit `k` of every byte, where each 16-bit lane of `mult` holds the lane's `3^k`: the byte
    /// times `3^k` modulo 256, times 3, top byte. Returns -1..=1 per byte.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn trits(bytes: __m256i, mult: __m256i) -> __m256i {
        let low_byte = _mm256_set1_epi16(0x00ff);
        let digit = |v: __m256i| {
            let shifted = _mm256_and_si256(_mm256_mullo_epi16(v, mult), low_byte);
            _mm256_srli_epi16(_mm256_mullo_epi16(shifted, _mm256_set1_epi16(3)), 8)
        };
        let even = digit(_mm256_and_si256(bytes, low_byte));
        let odd = digit(_mm256_srli_epi16(bytes, 8));
        let t = _mm256_or_si256(even, _mm256_slli_epi16(odd, 8));
        _mm256_sub_epi8(t, _mm256_set1_epi8(1))
    }

    /// 16-bit multipliers: `lo` for the low 128 bits, `hi` for the high.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn split_mult(lo: u8, hi: u8) -> __m256i {
        _mm256_set_m128i(_mm_set1_epi16(i16::from(hi)), _mm_set1_epi16(i16::from(lo)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot(xs: &[BlockTq1_0], ys: &[BlockQ8K]) -> f32 {
        let mut acc = 0.0f32;
        for (bx, by) in xs.iter().zip(ys) {
            let q8 = |start: usize| match <&[i8; 32]>::try_from(&by.qs[start..start + 32]) {
                Ok(v) => load_i8_32(v),
                Err(_) => _mm256_setzero_si256(),
            };
            let mut isum = _mm256_setzero_si256();
            // bytes 0..32: five trits each, elements 32 k + m
            let Ok(head) = <&[u8; 32]>::try_from(&bx.qs[..32]) else {
                continue;
            };
            let head = load_32(head);
            for (k, &p) in POW3.iter().enumerate() {
                let t = trits(head, _mm256_set1_epi16(i16::from(p)));
                isum = _mm256_add_epi32(isum, dot_i8_i8(t, q8(32 * k)));
            }
            // bytes 32..48: elements 160 + 16 k + m, two trit positions per register
            let Ok(mid) = <&[u8; 16]>::try_from(&bx.qs[32..]) else {
                continue;
            };
            let mid = load_16(mid);
            let mid2 = _mm256_set_m128i(mid, mid);
            for (k, start) in [(0usize, 160usize), (2, 192)] {
                let t = trits(mid2, split_mult(POW3[k], POW3[k + 1]));
                isum = _mm256_add_epi32(isum, dot_i8_i8(t, q8(start)));
            }
            // last trit of bytes 32..48 (elements 224..240) next to the 16 trits of qh (240..256),
            // element 240 + j + 4 k sitting in byte 16 + 4 k + j
            let qh = i32::from_le_bytes(bx.qh);
            let tail = _mm256_set_m128i(_mm_set1_epi32(qh), mid);
            let mult = _mm256_set_epi16(27, 27, 9, 9, 3, 3, 1, 1, 81, 81, 81, 81, 81, 81, 81, 81);
            isum = _mm256_add_epi32(isum, dot_i8_i8(trits(tail, mult), q8(224)));
            // integer-exact, so the float step matches the scalar kernel bit for bit
            acc += hsum_i32(isum) as f32 * (bx.d.to_f32() * by.d);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_trits_read_back() {
        for n in 0..243i32 {
            let digits = [n / 81 % 3, n / 27 % 3, n / 9 % 3, n / 3 % 3, n % 3];
            let byte = pack_trits(digits.into_iter());
            for (k, &t) in digits.iter().enumerate() {
                assert_eq!(unpack_trit(byte, k), t, "n={n} k={k}");
            }
        }
    }
}
