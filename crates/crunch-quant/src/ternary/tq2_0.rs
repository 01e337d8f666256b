//! TQ2_0: 256 ternary weights as 2-bit codes (0, 1, 2 for -1, 0, +1) and one f16 scale (2.0625 bits
//! per weight).
//!
//! Element order: byte `qs[32 c + m]` holds elements `128 c + 32 k + m` in bits `2k..2k+2`
//! (c = 0..2, k = 0..4, m = 0..32).

use super::{absmax, trit};
use crate::kquants::BlockQ8K;
use crate::legacy::{all_blocks, blocks, fill_blocks, inverse_or_zero};
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::{GgmlType, QK_K};
use half::f16;

/// One TQ2_0 block.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockTq2_0 {
    pub qs: [u8; QK_K / 4],
    pub d: f16,
}

const _: () = assert!(size_of::<BlockTq2_0>() == 2 + QK_K / 4);

pub(crate) static KERNELS: Kernels = Kernels {
    ty: GgmlType::TQ2_0,
    quantize,
    dequantize,
    vec_dot: Some(vec_dot),
    dot_type: GgmlType::Q8_K,
    uses_weights: false,
};

/// Quantize one block exactly as llama.cpp's `quantize_row_tq2_0_ref`.
pub fn quantize_block(x: &[f32; QK_K]) -> BlockTq2_0 {
    let d = absmax(x);
    let id = inverse_or_zero(d);
    pack(f16::from_f32(d), |i| trit(x[i], id))
}

/// The block of scale `d` whose element `i` has the code `code(i)` (0, 1, 2 for -1, 0, +1; the
/// low two bits are kept): the packing every TQ2_0 quantizer shares.
pub(crate) fn pack(d: f16, code: impl Fn(usize) -> i32) -> BlockTq2_0 {
    let mut b = BlockTq2_0::zeroed();
    for (c, qs) in b.qs.chunks_exact_mut(32).enumerate() {
        for (m, q) in qs.iter_mut().enumerate() {
            let mut byte = 0u8;
            for k in 0..4 {
                byte |= ((code(128 * c + 32 * k + m) & 3) as u8) << (2 * k);
            }
            *q = byte;
        }
    }
    b.d = d;
    b
}

/// Quantize rows of f32 into TQ2_0 blocks (`weights` are ignored).
pub fn quantize(src: &[f32], _weights: Option<&[f32]>, dst: &mut [u8]) {
    fill_blocks(dst, |out: &mut [BlockTq2_0]| {
        for (b, x) in out.iter_mut().zip(src.chunks_exact(QK_K)) {
            if let Ok(x) = x.try_into() {
                *b = quantize_block(x);
            }
        }
    });
}

/// The 256 codes of a block minus one (-1..=2), in element order.
pub fn trits(b: &BlockTq2_0) -> [i8; QK_K] {
    let mut t = [0i8; QK_K];
    for (out, qs) in t.chunks_exact_mut(128).zip(b.qs.chunks_exact(32)) {
        for (k, part) in out.chunks_exact_mut(32).enumerate() {
            for (o, &byte) in part.iter_mut().zip(qs) {
                *o = ((byte >> (2 * k)) & 3) as i8 - 1;
            }
        }
    }
    t
}

/// Dequantize TQ2_0 blocks.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, y) in all_blocks::<BlockTq2_0>(src).iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (o, &t) in y.iter_mut().zip(&trits(b)) {
            *o = f32::from(t) * d;
        }
    }
}

/// Dot product of `n` elements of TQ2_0 `x` with Q8_K `y`, using AVX2 when the CPU has it.
pub fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    vec_dot_simd(n, x, y).unwrap_or_else(|| vec_dot_scalar(n, x, y))
}

/// Scalar reference dot product (llama.cpp's generic kernel order).
pub fn vec_dot_scalar(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let xs = blocks::<BlockTq2_0>(x, n / QK_K);
    let ys = blocks::<BlockQ8K>(y, n / QK_K);
    let mut sum = 0.0f32;
    for (bx, by) in xs.iter().zip(ys.iter()) {
        let mut isum = 0i32;
        for (&t, &q) in trits(bx).iter().zip(&by.qs) {
            isum += i32::from(q) * i32::from(t);
        }
        sum += isum as f32 * (by.d * bx.d.to_f32());
    }
    sum
}

/// The SIMD dot product, or `None` when this CPU has no SIMD kernel for it.
pub fn vec_dot_simd(n: usize, x: &[u8], y: &[u8]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if crate::legacy::simd::has_avx2_fma() {
        let xs = blocks::<BlockTq2_0>(x, n / QK_K);
        let ys = blocks::<BlockQ8K>(y, n / QK_K);
        // SAFETY: AVX2 and FMA were detected on this CPU just above.
        return Some(unsafe { avx2::dot(&xs, &ys) });
    }
    let _ = (n, x, y);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockQ8K, BlockTq2_0};
    use crate::legacy::simd::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot(xs: &[BlockTq2_0], ys: &[BlockQ8K]) -> f32 {
        let mut acc = 0.0f32;
        for (bx, by) in xs.iter().zip(ys) {
            let mut isum = _mm256_setzero_si256();
            for (c, qs) in bx.qs.chunks_exact(32).enumerate() {
                let Ok(qs) = <&[u8; 32]>::try_from(qs) else {
                    continue;
                };
                let packed = load_32(qs);
                for k in 0..4 {
                    let start = 128 * c + 32 * k;
                    let Ok(q8) = <&[i8; 32]>::try_from(&by.qs[start..start + 32]) else {
                        continue;
                    };
                    let shifted = match k {
                        0 => packed,
                        1 => _mm256_srli_epi16(packed, 2),
                        2 => _mm256_srli_epi16(packed, 4),
                        _ => _mm256_srli_epi16(packed, 6),
                    };
                    // codes 0..=2 become -1..=1
                    let codes = _mm256_and_si256(shifted, _mm256_set1_epi8(3));
                    let qx = _mm256_sub_epi8(codes, _mm256_set1_epi8(1));
                    isum = _mm256_add_epi32(isum, dot_i8_i8(qx, load_i8_32(q8)));
                }
            }
            let total = hsum_i32(isum);
            // integer-exact, so the float step matches the scalar kernel bit for bit
            acc += total as f32 * (by.d * bx.d.to_f32());
        }
        acc
    }
}
