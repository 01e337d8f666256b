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
    let mut b = BlockTq1_0::zeroed();
    let (head, rest) = x.split_at(160);
    let (mid, tail) = rest.split_at(80);
    for (m, q) in b.qs[..32].iter_mut().enumerate() {
        *q = pack_trits((0..5).map(|k| trit(head[m + 32 * k], id)));
    }
    for (m, q) in b.qs[32..].iter_mut().enumerate() {
        *q = pack_trits((0..5).map(|k| trit(mid[m + 16 * k], id)));
    }
    for (j, q) in b.qh.iter_mut().enumerate() {
        // four trits, then a zero fifth digit
        *q = pack_trits((0..4).map(|k| trit(tail[j + 4 * k], id)).chain([0]));
    }
    b.d = f16::from_f32(d);
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

/// Dot product of `n` elements of TQ1_0 `x` with Q8_K `y`.
pub fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    vec_dot_scalar(n, x, y)
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

/// TQ1_0 has no SIMD kernel (yet): always `None`.
pub fn vec_dot_simd(_n: usize, _x: &[u8], _y: &[u8]) -> Option<f32> {
    None
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
