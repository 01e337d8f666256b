//! The k-quant block formats: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and the Q8_K activation format.
//!
//! All of them use 256-element super-blocks ([`QK_K`]) split into sub-blocks of 16 or 32 elements whose
//! scales (and mins, for the asymmetric types) are themselves quantized against one or two f16
//! super-block scales. Quantization follows llama.cpp exactly (same searches in [`search`], same float
//! evaluation order), so for the same input and importance weights the bytes equal llama.cpp's.
//! `vec_dot` multiplies a row against Q8_K activations; the scalar version is the reference and an
//! AVX2+FMA version is picked at run time where available.

// The block routines walk several parallel arrays (values, weights, levels) with one index, mirroring
// the reference algorithms; zipping four iterators would obscure that.
#![allow(clippy::needless_range_loop)]

use crate::Kernels;
use bytemuck::Pod;
use crunch_core::GgmlType;
use std::borrow::Cow;

pub(crate) mod q2_k;
pub(crate) mod q3_k;
pub(crate) mod q4_k;
pub(crate) mod q5_k;
pub(crate) mod q6_k;
pub(crate) mod q8_k;
pub(crate) mod search;
pub(crate) mod search_x8;
pub(crate) mod simd;
#[cfg(test)]
mod test_util;

pub use crunch_core::QK_K;
#[allow(unused_imports)] // for the i-quant and ternary dot products
pub(crate) use q8_k::{quantize_row_q8_k, BlockQ8K};

pub(crate) fn kernels(ty: GgmlType) -> Option<&'static Kernels> {
    match ty {
        GgmlType::Q2_K => Some(&q2_k::KERNELS),
        GgmlType::Q3_K => Some(&q3_k::KERNELS),
        GgmlType::Q4_K => Some(&q4_k::KERNELS),
        GgmlType::Q5_K => Some(&q5_k::KERNELS),
        GgmlType::Q6_K => Some(&q6_k::KERNELS),
        GgmlType::Q8_K => Some(&q8_k::KERNELS),
        _ => None,
    }
}

/// Exact f16 -> f32 conversion in plain integer/float code: no run-time CPU dispatch, so it inlines into
/// the per-block hot paths.
#[inline(always)]
pub(crate) fn f16_to_f32(h: half::f16) -> f32 {
    let h = h.to_bits() as u32;
    let sign = (h & 0x8000) << 16;
    let exp = (h >> 10) & 0x1F;
    let man = h & 0x3FF;
    let bits = match exp {
        // zero and subnormals: man * 2^-24, exact in f32
        0 => return f32::from_bits(sign | (man as f32 * (1.0 / 16_777_216.0)).to_bits()),
        0x1F => sign | 0x7F80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// View `bytes` as blocks: borrowed when the slice happens to be aligned for `B`, copied otherwise
/// (row buffers carry no alignment guarantee). Trailing bytes that do not fill a block are ignored.
pub(crate) fn read_blocks<B: Pod>(bytes: &[u8]) -> Cow<'_, [B]> {
    let size = std::mem::size_of::<B>();
    let whole = &bytes[..bytes.len() / size * size];
    match bytemuck::try_cast_slice::<u8, B>(whole) {
        Ok(blocks) => Cow::Borrowed(blocks),
        Err(_) => Cow::Owned(whole.chunks_exact(size).map(bytemuck::pod_read_unaligned).collect()),
    }
}

/// Quantize `src` block by block with `f(values, weights)` and store the blocks into `dst`.
pub(crate) fn quantize_blocks<B: Pod>(
    src: &[f32],
    weights: Option<&[f32]>,
    dst: &mut [u8],
    mut f: impl FnMut(&[f32], Option<&[f32]>) -> B,
) {
    let size = std::mem::size_of::<B>();
    debug_assert_eq!(src.len() / QK_K * size, dst.len());
    for (i, (x, out)) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(size)).enumerate() {
        let w = weights.map(|w| &w[i * QK_K..(i + 1) * QK_K]);
        out.copy_from_slice(bytemuck::bytes_of(&f(x, w)));
    }
}

/// Dequantize every block of `src` into consecutive 256-value chunks of `dst`.
pub(crate) fn dequantize_blocks<B: Pod>(src: &[u8], dst: &mut [f32], f: impl Fn(&B, &mut [f32])) {
    let blocks = read_blocks::<B>(src);
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        f(b, y);
    }
}

/// Unpack the twelve bytes of 6-bit scales and mins used by Q4_K and Q5_K into 8 scales and 8 mins.
///
/// Sub-blocks 0..4 keep their scale and min in the low 6 bits of bytes `j` and `j + 4`; sub-blocks 4..8
/// keep the low 4 bits in byte `j + 4` (scale low nibble, min high nibble) and the top 2 bits in the
/// high bits of bytes `j - 4` (scale) and `j` (min).
#[inline]
pub(crate) fn unpack_scale_min_k4(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            sc[j] = q[j] & 63;
            m[j] = q[j + 4] & 63;
        } else {
            sc[j] = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
            m[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
    }
    (sc, m)
}

/// Pack 8 scales and 8 mins (each meant to be 6-bit) into Q4_K/Q5_K's twelve bytes, with the same
/// wrapping byte arithmetic as llama.cpp when a value exceeds 6 bits.
#[inline]
pub(crate) fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            q[j] = ls[j];
            q[j + 4] = lm[j];
        } else {
            q[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            q[j - 4] |= (ls[j] >> 4) << 6;
            q[j] |= (lm[j] >> 4) << 6;
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_is_exact() {
        for bits in 0..=u16::MAX {
            let h = half::f16::from_bits(bits);
            let (a, b) = (f16_to_f32(h), h.to_f32());
            assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{bits:#x}: {a} vs {b}");
        }
    }

    #[test]
    fn scale_min_pack_roundtrip() {
        let ls = [0u8, 1, 17, 63, 40, 5, 33, 62];
        let lm = [63u8, 2, 31, 0, 9, 48, 16, 1];
        let (s, m) = unpack_scale_min_k4(&pack_scale_min_k4(&ls, &lm));
        assert_eq!(s, ls);
        assert_eq!(m, lm);
    }

    #[test]
    fn read_blocks_handles_misaligned_bytes() {
        let raw: Vec<u8> = (0..(2 * 292 + 1)).map(|i| i as u8).collect();
        let aligned = read_blocks::<BlockQ8K>(&raw[..2 * 292]).into_owned();
        let shifted: Vec<u8> = raw[..2 * 292].to_vec();
        let mut buf = vec![0u8; 1];
        buf.extend_from_slice(&shifted);
        let mis = read_blocks::<BlockQ8K>(&buf[1..]).into_owned();
        assert_eq!(bytemuck::cast_slice::<_, u8>(&aligned), bytemuck::cast_slice::<_, u8>(&mis));
    }

    #[test]
    fn every_type_has_kernels() {
        for ty in [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q8_K] {
            let k = kernels(ty).expect("kernels");
            assert_eq!(k.ty, ty);
        }
    }
}
