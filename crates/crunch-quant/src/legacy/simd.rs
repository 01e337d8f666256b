//! AVX2 building blocks shared by the dot-product kernels of the 32-element formats.
//!
//! Every function here is compiled for AVX2 (plus FMA where it accumulates floats); callers must only
//! reach them after `is_x86_feature_detected!` has confirmed those features.

use std::arch::x86_64::*;

/// Load 32 bytes without alignment requirements.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn load_32(bytes: &[u8; 32]) -> __m256i {
    // SAFETY: `bytes` is 32 readable bytes and `loadu` accepts any alignment.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

/// Load 32 signed bytes without alignment requirements.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn load_i8_32(bytes: &[i8; 32]) -> __m256i {
    // SAFETY: `bytes` is 32 readable bytes and `loadu` accepts any alignment.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

/// Load 16 bytes without alignment requirements.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn load_16(bytes: &[u8; 16]) -> __m128i {
    // SAFETY: `bytes` is 16 readable bytes and `loadu` accepts any alignment.
    unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
}

/// Split 16 packed bytes into 32 nibbles: the low nibbles land in bytes 0..16, the high nibbles in
/// bytes 16..32 (the element order of every 32-element block), each in `0..=15`.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn nibbles_to_bytes(packed: &[u8; 16]) -> __m256i {
    let raw = load_16(packed);
    let both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// Look the 32 nibbles of `packed` up in a 16-entry signed table (IQ4_NL's code book), same element
/// order as [`nibbles_to_bytes`].
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn nibbles_through_table(packed: &[u8; 16], table: __m128i) -> __m256i {
    let raw = load_16(packed);
    let mask = _mm_set1_epi8(0x0f);
    let lo = _mm_shuffle_epi8(table, _mm_and_si128(raw, mask));
    let hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(raw, 4), mask));
    _mm256_set_m128i(hi, lo)
}

/// Expand the 32 bits of `bits` (little-endian) to 32 bytes: 0xFF where the bit is set, 0 elsewhere.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn bits_to_byte_mask(bits: [u8; 4]) -> __m256i {
    let word = _mm256_set1_epi32(i32::from_le_bytes(bits));
    // byte k takes source byte k / 8 ...
    let spread = _mm256_shuffle_epi8(
        word,
        _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0),
    );
    // ... and keeps only bit k % 8 of it
    let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select)
}

/// Products of unsigned bytes `u` with signed bytes `s`, summed over each group of four adjacent
/// bytes into eight i32 lanes. Pairs must stay within i16 (true for 4/5-bit `u`, or for `u <= 128`
/// with `s` in `-127..=127`).
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    let pairs = _mm256_maddubs_epi16(u, s);
    _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
}

/// Signed byte products summed pairwise into sixteen i16 lanes. `y` must not hold -128 (the
/// activation quantizers never produce it).
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn dot_i8_i8_pairs(x: __m256i, y: __m256i) -> __m256i {
    // |x| times y carrying x's sign: the same products, with an unsigned left operand
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_maddubs_epi16(ax, sy)
}

/// Signed byte products summed over each group of four into eight i32 lanes (see
/// [`dot_i8_i8_pairs`] for the range condition).
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn dot_i8_i8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(dot_i8_i8_pairs(x, y), _mm256_set1_epi16(1))
}

/// Horizontal sum of eight f32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn hsum_f32(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Horizontal sum of eight i32 lanes (wrapping).
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// True when the AVX2 + FMA kernels may run on this CPU.
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}
