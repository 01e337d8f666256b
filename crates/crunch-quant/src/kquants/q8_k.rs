//! Q8_K: the 8-bit activation format the k-quant dot products run against (9.125 bits/weight).
//!
//! One block holds 256 values as `d * q` with an f32 scale `d` and `q` in -127..=127, plus the sums of
//! each group of 16 quants (`bsums`), which lets asymmetric formats apply their mins with one small
//! dot product instead of touching every element.

use super::search::nearest_int;
use super::{dequantize_blocks, quantize_blocks, read_blocks, QK_K};
use crate::Kernels;
use bytemuck::{Pod, Zeroable};
use crunch_core::GgmlType;

/// A Q8_K super-block: 4-byte f32 scale, 256 signed 8-bit quants, 16 group sums (292 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(crate) struct BlockQ8K {
    /// Scale: value = `d * qs[i]`.
    pub d: f32,
    /// Quants in -127..=127 (-128 never produced by the quantizer).
    pub qs: [i8; QK_K],
    /// `bsums[j]` = sum of `qs[16 * j..16 * j + 16]`.
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 4 + QK_K + QK_K / 16 * 2);

impl BlockQ8K {
    /// Quantize 256 values (llama.cpp's `quantize_row_q8_K_ref` for one block): the value with the
    /// largest magnitude maps to -127 exactly, the rest round to nearest.
    pub(crate) fn quantize(x: &[f32]) -> Self {
        let x = &x[..QK_K];
        let mut b = BlockQ8K::zeroed();
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            return b;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, g) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = g.iter().map(|&q| q as i16).sum();
        }
        b.d = 1.0 / iscale;
        b
    }
}

/// Quantize a row (length a multiple of 256) into Q8_K blocks, for dot products against k-quants,
/// IQ4_XS and the ternary formats.
pub(crate) fn quantize_row_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    debug_assert_eq!(x.len(), y.len() * QK_K);
    for (b, xs) in y.iter_mut().zip(x.chunks_exact(QK_K)) {
        *b = BlockQ8K::quantize(xs);
    }
}

fn quantize(src: &[f32], _weights: Option<&[f32]>, dst: &mut [u8]) {
    match bytemuck::try_cast_slice_mut::<u8, BlockQ8K>(dst) {
        Ok(blocks) => quantize_row_q8_k(src, blocks),
        Err(_) => quantize_blocks(src, None, dst, |x, _| BlockQ8K::quantize(x)),
    }
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_blocks(src, dst, |b: &BlockQ8K, y| {
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = b.d * q as f32;
        }
    });
}

/// Q8_K · Q8_K (not used by llama.cpp, handy for checks).
fn vec_dot(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let nb = n / QK_K;
    let xs = read_blocks::<BlockQ8K>(x);
    let ys = read_blocks::<BlockQ8K>(y);
    let mut sum = 0.0f32;
    for (a, b) in xs.iter().zip(ys.iter()).take(nb) {
        let isum: i32 = a.qs.iter().zip(&b.qs).map(|(&p, &q)| (p as i16 * q as i16) as i32).sum();
        sum += a.d * b.d * isum as f32;
    }
    sum
}

pub(crate) static KERNELS: Kernels = Kernels {
    ty: GgmlType::Q8_K,
    quantize,
    dequantize,
    vec_dot: Some(vec_dot),
    dot_type: GgmlType::Q8_K,
    uses_weights: false,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_value_maps_to_minus_127_and_bsums_add_up() {
        let x: Vec<f32> = (0..QK_K).map(|i| ((i * 7919) % 255) as f32 - 127.0).collect();
        let b = BlockQ8K::quantize(&x);
        let amax_idx = x.iter().position(|v| v.abs() == 127.0).unwrap();
        assert_eq!(b.qs[amax_idx], -127);
        for j in 0..16 {
            let s: i32 = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
            assert_eq!(b.bsums[j] as i32, s);
        }
        let zero = BlockQ8K::quantize(&[0.0; QK_K]);
        assert_eq!(zero.d, 0.0);
    }
}
