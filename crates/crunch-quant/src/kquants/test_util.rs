//! Random blocks for the SIMD-versus-scalar unit tests.

use super::{BlockQ8K, QK_K};
use bytemuck::Zeroable;

/// Tiny deterministic generator (64-bit LCG, high bits out).
pub(crate) struct Lcg(pub u64);

impl Lcg {
    pub(crate) fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }
    /// Uniform in [-1, 1).
    pub(crate) fn signed(&mut self) -> f32 {
        self.next() as f32 / (1u32 << 30) as f32 - 1.0
    }
    pub(crate) fn fill(&mut self, bytes: &mut [u8]) {
        for b in bytes {
            *b = self.next() as u8;
        }
    }
}

/// A Q8_K block with arbitrary quants (including -128) and consistent `bsums`.
pub(crate) fn random_q8k(rng: &mut Lcg) -> BlockQ8K {
    let mut b = BlockQ8K::zeroed();
    for q in b.qs.iter_mut() {
        *q = rng.next() as i8;
    }
    for (s, g) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
        *s = g.iter().map(|&q| q as i16).sum();
    }
    b.d = rng.signed() * 0.1;
    debug_assert_eq!(b.qs.len(), QK_K);
    b
}

/// Run an AVX2 kernel from a test (callers have checked `has_avx2_fma`).
#[cfg(target_arch = "x86_64")]
macro_rules! avx2_call {
    ($f:expr) => {{
        // SAFETY: every caller returns early unless AVX2 and FMA were detected at run time.
        unsafe { $f }
    }};
}
#[cfg(target_arch = "x86_64")]
pub(crate) use avx2_call;
