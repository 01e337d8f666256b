//! Plain float storage: F32, F16 and BF16 (no blocks; "quantization" is a conversion).

use crate::Kernels;
use crunch_core::GgmlType;
use half::{bf16, f16};

/// f32 -> bf16 as ggml does it: round to nearest even, NaN kept quiet.
#[inline]
pub fn f32_to_bf16(x: f32) -> bf16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return bf16::from_bits(((u >> 16) | 64) as u16);
    }
    bf16::from_bits(((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16)
}

fn quantize_f32(src: &[f32], _w: Option<&[f32]>, dst: &mut [u8]) {
    for (d, s) in dst.chunks_exact_mut(4).zip(src) {
        d.copy_from_slice(&s.to_le_bytes());
    }
}

fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    }
}

fn quantize_f16(src: &[f32], _w: Option<&[f32]>, dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: AVX and F16C were detected on this CPU just above.
        let done = unsafe { x86::f32_to_f16(src, dst) };
        return quantize_f16_scalar(&src[done..], &mut dst[2 * done..]);
    }
    quantize_f16_scalar(src, dst)
}

/// Scalar reference of the f32 -> f16 conversion (round to nearest even).
pub fn quantize_f16_scalar(src: &[f32], dst: &mut [u8]) {
    for (d, s) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&f16::from_f32(*s).to_le_bytes());
    }
}

/// f16 -> f32 for a whole row: 8 values per instruction with F16C (the hot first step of
/// quantizing an F16 model), the scalar reference elsewhere. Both are exact.
pub fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: AVX and F16C were detected on this CPU just above.
        let done = unsafe { x86::f16_to_f32(src, dst) };
        return dequantize_f16_scalar(&src[2 * done..], &mut dst[done..]);
    }
    dequantize_f16_scalar(src, dst)
}

/// Scalar reference of the f16 -> f32 conversion.
pub fn dequantize_f16_scalar(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = f16::from_le_bytes([s[0], s[1]]).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn has_f16c() -> bool {
    is_x86_feature_detected!("avx") && is_x86_feature_detected!("f16c")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Convert the first multiple of 8 values of `src` (f16 bytes) into `dst`; returns how many.
    #[target_feature(enable = "avx,f16c")]
    pub(super) fn f16_to_f32(src: &[u8], dst: &mut [f32]) -> usize {
        let n = (src.len() / 2).min(dst.len()) / 8 * 8;
        for (s, d) in src[..2 * n].chunks_exact(16).zip(dst[..n].chunks_exact_mut(8)) {
            // SAFETY: `s` is 16 readable bytes and `d` 8 writable f32; both intrinsics are unaligned.
            unsafe {
                let h = _mm_loadu_si128(s.as_ptr().cast());
                _mm256_storeu_ps(d.as_mut_ptr(), _mm256_cvtph_ps(h));
            }
        }
        n
    }

    /// Convert the first multiple of 8 values of `src` into f16 bytes in `dst` (round to nearest
    /// even, as `half`); returns how many.
    #[target_feature(enable = "avx,f16c")]
    pub(super) fn f32_to_f16(src: &[f32], dst: &mut [u8]) -> usize {
        let n = src.len().min(dst.len() / 2) / 8 * 8;
        for (s, d) in src[..n].chunks_exact(8).zip(dst[..2 * n].chunks_exact_mut(16)) {
            // SAFETY: `s` is 8 readable f32 and `d` 16 writable bytes; both intrinsics are unaligned.
            unsafe {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(s.as_ptr()));
                _mm_storeu_si128(d.as_mut_ptr().cast(), h);
            }
        }
        n
    }
}

fn quantize_bf16(src: &[f32], _w: Option<&[f32]>, dst: &mut [u8]) {
    for (d, s) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&f32_to_bf16(*s).to_le_bytes());
    }
}

fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = bf16::from_le_bytes([s[0], s[1]]).to_f32();
    }
}

fn dot_f32(n: usize, x: &[u8], y: &[u8]) -> f32 {
    let x: &[f32] = bytemuck::cast_slice(&x[..n * 4]);
    let y: &[f32] = bytemuck::cast_slice(&y[..n * 4]);
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

fn dot_f16(n: usize, x: &[u8], y: &[u8]) -> f32 {
    x[..n * 2]
        .chunks_exact(2)
        .zip(y[..n * 2].chunks_exact(2))
        .map(|(a, b)| f16::from_le_bytes([a[0], a[1]]).to_f32() * f16::from_le_bytes([b[0], b[1]]).to_f32())
        .sum()
}

fn dot_bf16(n: usize, x: &[u8], y: &[u8]) -> f32 {
    x[..n * 2]
        .chunks_exact(2)
        .zip(y[..n * 2].chunks_exact(2))
        .map(|(a, b)| bf16::from_le_bytes([a[0], a[1]]).to_f32() * bf16::from_le_bytes([b[0], b[1]]).to_f32())
        .sum()
}

static F32: Kernels = Kernels {
    ty: GgmlType::F32,
    quantize: quantize_f32,
    dequantize: dequantize_f32,
    vec_dot: Some(dot_f32),
    dot_type: GgmlType::F32,
    uses_weights: false,
};
static F16: Kernels = Kernels {
    ty: GgmlType::F16,
    quantize: quantize_f16,
    dequantize: dequantize_f16,
    vec_dot: Some(dot_f16),
    dot_type: GgmlType::F16,
    uses_weights: false,
};
static BF16: Kernels = Kernels {
    ty: GgmlType::BF16,
    quantize: quantize_bf16,
    dequantize: dequantize_bf16,
    vec_dot: Some(dot_bf16),
    dot_type: GgmlType::BF16,
    uses_weights: false,
};

pub(crate) fn kernels(ty: GgmlType) -> Option<&'static Kernels> {
    match ty {
        GgmlType::F32 => Some(&F32),
        GgmlType::F16 => Some(&F16),
        GgmlType::BF16 => Some(&BF16),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn bf16_rounding_matches_ggml() {
        assert_eq!(f32_to_bf16(1.0).to_bits(), 0x3f80);
        // exactly halfway between two bf16 values rounds to even
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)).to_bits(), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)).to_bits(), 0x3f82);
        assert!(f32_to_bf16(f32::NAN).to_f32().is_nan());
    }
}
