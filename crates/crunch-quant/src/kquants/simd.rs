//! Run-time CPU feature detection and small AVX2 helpers shared by the k-quant dot products.

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
