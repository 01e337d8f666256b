//! Run-time CPU feature detection and the AVX2 building blocks of the k-quant dot products.
//!
//! The AVX2 kernels compute the same exact integer sums per super-block as the scalar references and
//! then apply the block scales with the very same scalar float expression, so their results are
//! bit-identical to the scalar code (the tests check exactly that).

/// True when the CPU supports AVX2 and FMA (cached by the standard library after the first call).
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// Load `bytes[off..off + 32]` (any alignment).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn load_u8(bytes: &[u8], off: usize) -> __m256i {
        let chunk: &[u8; 32] = bytes[off..off + 32].try_into().expect("32-byte slice");
        // SAFETY: `chunk` is 32 readable bytes and `loadu` accepts any alignment.
        unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) }
    }

    /// Load `bytes[off..off + 32]` of signed bytes (any alignment).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn load_i8(bytes: &[i8], off: usize) -> __m256i {
        let chunk: &[i8; 32] = bytes[off..off + 32].try_into().expect("32-byte slice");
        // SAFETY: `chunk` is 32 readable bytes and `loadu` accepts any alignment.
        unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) }
    }

    /// Sum of the eight i32 lanes (wrapping; k-quant block sums stay far from overflow).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn hsum_i32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }

    /// Dot products of 32 unsigned bytes `u` with 32 signed bytes `s`, as eight i32 lanes where the
    /// first 16 bytes are weighted by `scale_lo` and the last 16 by `scale_hi` (two 16-value
    /// sub-blocks). `u` must be at most 63 so the pairwise i16 sums cannot saturate.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn scaled_dot(u: __m256i, s: __m256i, scale_lo: i16, scale_hi: i16) -> __m256i {
        scale_pairs(_mm256_maddubs_epi16(u, s), scale_lo, scale_hi)
    }

    /// Multiply sixteen i16 pair sums (eight per 128-bit half) by `scale_lo` (low half) and `scale_hi`
    /// (high half) and add neighbours into eight i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn scale_pairs(pairs: __m256i, scale_lo: i16, scale_hi: i16) -> __m256i {
        _mm256_madd_epi16(pairs, _mm256_set_m128i(_mm_set1_epi16(scale_hi), _mm_set1_epi16(scale_lo)))
    }

    /// The 2-bit field at bit offset `2 * k` of every byte of `q`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn two_bits(q: __m256i, k: usize) -> __m256i {
        let shifted = _mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * k as i32));
        _mm256_and_si256(shifted, _mm256_set1_epi8(3))
    }

    /// 0xFF in every byte of `bits` that has bit `b` set, 0 elsewhere.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn bit_mask(bits: __m256i, b: usize) -> __m256i {
        let sel = _mm256_set1_epi8((1u8 << b) as i8);
        _mm256_cmpeq_epi8(_mm256_and_si256(bits, sel), sel)
    }
}
