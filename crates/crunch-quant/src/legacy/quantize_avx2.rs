//! AVX2 versions of the reference quantizers of Q8_0, Q8_1, Q4_0 and Q4_1 (no importance weights).
//!
//! Each block is quantized with the very float operations of the scalar reference
//! ([`super::q8_0::quantize_block`], [`super::q8_1::quantize_block`], [`super::q4_0::quantize_block`],
//! [`super::q4_1::quantize_block`]), eight lanes at a time: the
//! same multiply, the same add, no FMA, and exact emulations of `roundf` (round half away from zero)
//! and of truncation. The block maximum is order independent, so it is taken with vector `max`. A
//! block whose maximum is not finite or whose inverse scale overflows (NaN, infinities, subnormal
//! blocks) goes to the scalar reference, where saturating conversions decide the codes; so the bytes
//! always equal the scalar reference's (tested on random, real and degenerate blocks).

use super::q4_0::{self, BlockQ4_0};
use super::q4_1::{self, BlockQ4_1};
use super::q8_0::{self, BlockQ8_0};
use super::q8_1::{self, BlockQ8_1};
use super::{inverse_or_zero, QK};
use half::f16;
use std::arch::x86_64::*;

/// The four 8-lane vectors of one block.
#[inline]
#[target_feature(enable = "avx2")]
fn load_block(x: &[f32; QK]) -> [__m256; 4] {
    // SAFETY: `x` holds 32 readable f32; `loadu` accepts any alignment.
    unsafe {
        [
            _mm256_loadu_ps(x.as_ptr()),
            _mm256_loadu_ps(x.as_ptr().add(8)),
            _mm256_loadu_ps(x.as_ptr().add(16)),
            _mm256_loadu_ps(x.as_ptr().add(24)),
        ]
    }
}

/// `|v|` of every lane, and the block's largest `|v|` (`None` if any lane is NaN).
#[inline]
#[target_feature(enable = "avx2")]
fn abs_max(v: &[__m256; 4]) -> Option<([__m256; 4], f32)> {
    let sign = _mm256_set1_ps(-0.0);
    let a = v.map(|x| _mm256_andnot_ps(sign, x));
    let nan = _mm256_or_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(v[0], v[1]), _mm256_cmp_ps::<_CMP_UNORD_Q>(v[2], v[3]));
    if _mm256_movemask_ps(nan) != 0 {
        return None;
    }
    let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m));
    Some((a, _mm_cvtss_f32(m)))
}

/// Eight i32 vectors of small values (32 lanes in element order) as 32 bytes in element order.
#[inline]
#[target_feature(enable = "avx2")]
fn pack_i32_to_i8(q: [__m256i; 4]) -> __m256i {
    let ab = _mm256_packs_epi32(q[0], q[1]);
    let cd = _mm256_packs_epi32(q[2], q[3]);
    let bytes = _mm256_packs_epi16(ab, cd);
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// `roundf` on eight lanes: truncate, then step away from zero when the dropped fraction is at
/// least one half (the fraction `x - trunc(x)` is exact).
#[inline]
#[target_feature(enable = "avx2")]
fn round_half_away(x: __m256) -> __m256 {
    let sign = _mm256_set1_ps(-0.0);
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
    let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(x, t));
    let step = _mm256_or_ps(_mm256_and_ps(x, sign), _mm256_set1_ps(1.0));
    let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
    _mm256_add_ps(t, _mm256_and_ps(up, step))
}

/// Pack 32 codes (element order, low 4 bits used) as nibbles: element `j` low, `j + 16` high.
#[inline]
#[target_feature(enable = "avx2")]
fn pack_nibbles(q: [__m256i; 4]) -> [u8; QK / 2] {
    let bytes = pack_i32_to_i8(q);
    // low 4 bits of each code, as the scalar `pack_nibbles` (codes can leave 0..=15 only when a
    // subnormal scale loses precision)
    let lo = _mm_and_si128(_mm256_castsi256_si128(bytes), _mm_set1_epi8(0x0f));
    let hi = _mm_and_si128(_mm_slli_epi16::<4>(_mm256_extracti128_si256::<1>(bytes)), _mm_set1_epi8(0xf0u8 as i8));
    let mut qs = [0u8; QK / 2];
    // SAFETY: `qs` is 16 writable bytes; `storeu` accepts any alignment.
    unsafe { _mm_storeu_si128(qs.as_mut_ptr().cast(), _mm_or_si128(lo, hi)) };
    qs
}

/// Horizontal minimum and maximum of one block (no NaN lanes).
#[inline]
#[target_feature(enable = "avx2")]
fn min_max(v: &[__m256; 4]) -> (f32, f32) {
    let lo = _mm256_min_ps(_mm256_min_ps(v[0], v[1]), _mm256_min_ps(v[2], v[3]));
    let hi = _mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3]));
    let lo = _mm_min_ps(_mm256_castps256_ps128(lo), _mm256_extractf128_ps::<1>(lo));
    let hi = _mm_max_ps(_mm256_castps256_ps128(hi), _mm256_extractf128_ps::<1>(hi));
    let lo = _mm_min_ps(lo, _mm_movehl_ps(lo, lo));
    let hi = _mm_max_ps(hi, _mm_movehl_ps(hi, hi));
    let lo = _mm_min_ss(lo, _mm_shuffle_ps::<0b01>(lo, lo));
    let hi = _mm_max_ss(hi, _mm_shuffle_ps::<0b01>(hi, hi));
    (_mm_cvtss_f32(lo), _mm_cvtss_f32(hi))
}

/// One block's Q8_0 scale `d = amax / 127` and codes (round half away from zero), the
/// operations of the scalar code; `None` when the block holds a value that is not finite or the
/// inverse scale overflows (the scalar code handles those blocks).
#[inline]
#[target_feature(enable = "avx2")]
fn q8_scale_and_codes(x: &[f32; QK]) -> Option<(f32, [i8; QK])> {
    let v = load_block(x);
    let (_, amax) = abs_max(&v).filter(|&(_, m)| m.is_finite())?;
    let d = amax / 127.0;
    let id = inverse_or_zero(d);
    if !id.is_finite() {
        return None;
    }
    let idv = _mm256_set1_ps(id);
    let q = v.map(|x| _mm256_cvttps_epi32(round_half_away(_mm256_mul_ps(x, idv))));
    let mut qs = [0i8; QK];
    // SAFETY: `qs` is 32 writable bytes; `storeu` accepts any alignment.
    unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), pack_i32_to_i8(q)) };
    Some((d, qs))
}

/// Q8_0 blocks of `src` (whole blocks only) into `out`.
#[target_feature(enable = "avx2")]
pub(crate) fn quantize_q8_0(src: &[f32], out: &mut [BlockQ8_0]) {
    for (b, x) in out.iter_mut().zip(src.chunks_exact(QK)) {
        let x: &[f32; QK] = x.try_into().expect("whole block");
        *b = match q8_scale_and_codes(x) {
            Some((d, qs)) => BlockQ8_0 { d: f16::from_f32(d), qs },
            None => q8_0::quantize_block(x),
        };
    }
}

/// Q8_1 blocks of `src` (whole blocks only) into `out`: Q8_0's codes and scale, and
/// `s = d · Σ qs` from the stored codes as the scalar code forms it. The activation quantizer of
/// every Q4_1 and Q5_1 product (where the scalar code's `roundf` call per element was most of the
/// cost of quantizing activations).
#[target_feature(enable = "avx2")]
pub(crate) fn quantize_q8_1(src: &[f32], out: &mut [BlockQ8_1]) {
    for (b, x) in out.iter_mut().zip(src.chunks_exact(QK)) {
        let x: &[f32; QK] = x.try_into().expect("whole block");
        *b = match q8_scale_and_codes(x) {
            Some((d, qs)) => {
                let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
                BlockQ8_1 { d: f16::from_f32(d), s: f16::from_f32(sum as f32 * d), qs }
            }
            None => q8_1::quantize_block(x),
        };
    }
}

/// Q4_0 blocks of `src` (whole blocks only, no importance weights) into `out`.
#[target_feature(enable = "avx2")]
pub(crate) fn quantize_q4_0(src: &[f32], out: &mut [BlockQ4_0]) {
    for (b, x) in out.iter_mut().zip(src.chunks_exact(QK)) {
        let x: &[f32; QK] = x.try_into().expect("whole block");
        let v = load_block(x);
        let Some((a, amax)) = abs_max(&v).filter(|&(_, m)| m.is_finite()) else {
            *b = q4_0::quantize_block(x);
            continue;
        };
        // the signed value of the first element with the largest magnitude (0 for an all-zero block)
        let max = if amax > 0.0 {
            let m = _mm256_set1_ps(amax);
            let mut hits = 0u32;
            for (k, ak) in a.iter().enumerate() {
                hits |= (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(*ak, m)) as u32) << (8 * k);
            }
            x[hits.trailing_zeros() as usize]
        } else {
            0.0
        };
        let d = max / -8.0;
        let id = inverse_or_zero(d);
        if !id.is_finite() {
            *b = q4_0::quantize_block(x);
            continue;
        }
        let (idv, half) = (_mm256_set1_ps(id), _mm256_set1_ps(8.5));
        let fifteen = _mm256_set1_epi32(15);
        let q = v.map(|x| _mm256_min_epi32(_mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(x, idv), half)), fifteen));
        let qs = pack_nibbles(q);
        *b = BlockQ4_0 { d: f16::from_f32(d), qs };
    }
}

/// Q4_1 blocks of `src` (whole blocks only, no importance weights) into `out`.
#[target_feature(enable = "avx2")]
pub(crate) fn quantize_q4_1(src: &[f32], out: &mut [BlockQ4_1]) {
    for (b, x) in out.iter_mut().zip(src.chunks_exact(QK)) {
        let x: &[f32; QK] = x.try_into().expect("whole block");
        let v = load_block(x);
        let nan = _mm256_or_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(v[0], v[1]), _mm256_cmp_ps::<_CMP_UNORD_Q>(v[2], v[3]));
        let (min, max) = min_max(&v);
        // A zero extreme goes to the scalar code: which signed zero it keeps depends on element
        // order, and the sign of `min` is stored.
        if _mm256_movemask_ps(nan) != 0 || !min.is_finite() || !max.is_finite() || min == 0.0 || max == 0.0 {
            *b = q4_1::quantize_block(x);
            continue;
        }
        let d = (max - min) / 15.0;
        let id = inverse_or_zero(d);
        if !d.is_finite() || !id.is_finite() {
            *b = q4_1::quantize_block(x);
            continue;
        }
        let (minv, idv, half) = (_mm256_set1_ps(min), _mm256_set1_ps(id), _mm256_set1_ps(0.5));
        let fifteen = _mm256_set1_epi32(15);
        let q = v.map(|x| {
            let y = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(x, minv), idv), half);
            _mm256_min_epi32(_mm256_cvttps_epi32(y), fifteen)
        });
        *b = BlockQ4_1 { d: f16::from_f32(d), m: f16::from_f32(min), qs: pack_nibbles(q) };
    }
}
