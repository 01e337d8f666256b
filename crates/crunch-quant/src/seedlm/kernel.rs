//! The bound's inner loop: for a tile of seeds, `‖Qᵀw‖²` of one block, sixteen seeds per step.
//!
//! A scalar reference over sixteen lanes and an AVX2 + FMA kernel doing the same fused
//! multiply-adds (correctly rounded everywhere) in the same order, so they agree bit for bit.

use super::{Config, TILE};
#[cfg(target_arch = "x86_64")]
use crate::legacy::simd::has_avx2_fma;

pub(super) const LANES: usize = 16;

/// Lanes per step; `TILE / LANES` chunk maxima.
pub(super) const CHUNKS: usize = TILE / LANES;

/// `energy[s] = Σ_j (Σ_i Qᵀ[j][i][s] · w_i)²` for the `TILE` seeds of one tile table, and the
/// largest energy of every chunk of `LANES` seeds (so the caller skips whole chunks at once).
pub(super) type EnergiesFn = fn(qt: &[f32], w: &[f32], cfg: Config, energy: &mut [f32], chunk_max: &mut [f32]);

fn energies_body(qt: &[f32], w: &[f32], cfg: Config, energy: &mut [f32], chunk_max: &mut [f32]) {
    let Config { c, p } = cfg;
    for ((chunk, out), top) in energy[..TILE].chunks_exact_mut(LANES).enumerate().zip(&mut chunk_max[..CHUNKS]) {
        let mut a = [[0f32; LANES]; 4];
        for (i, &wi) in w[..c].iter().enumerate() {
            for (j, aj) in a[..p].iter_mut().enumerate() {
                let q = &qt[(chunk * c * p + i * p + j) * LANES..][..LANES];
                for l in 0..LANES {
                    aj[l] = q[l].mul_add(wi, aj[l]);
                }
            }
        }
        let mut e = [0f32; LANES];
        for aj in &a[..p] {
            for l in 0..LANES {
                e[l] = aj[l].mul_add(aj[l], e[l]);
            }
        }
        out.copy_from_slice(&e);
        *top = e.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    }
}

/// The scalar reference.
pub(super) fn energies_scalar(qt: &[f32], w: &[f32], cfg: Config, energy: &mut [f32], chunk_max: &mut [f32]) {
    energies_body(qt, w, cfg, energy, chunk_max)
}

/// AVX2 + FMA: sixteen seeds in two registers, the same fused operations in the same order as
/// the scalar body, so the results are identical.
///
/// `C` and `P` are constants so the accumulators live in registers (a runtime-sized loop over
/// them would keep them on the stack).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn energies_avx2_impl<const C: usize, const P: usize>(
    qt: &[f32],
    w: &[f32],
    energy: &mut [f32],
    chunk_max: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (c, p) = (C, P);
    assert!(qt.len() >= c * p * TILE && energy.len() >= TILE && chunk_max.len() >= CHUNKS && w.len() >= c);
    for (chunk, top) in chunk_max[..CHUNKS].iter_mut().enumerate() {
        let base = chunk * LANES;
        // 2·P independent accumulator chains (up to eight registers) hide the FMA latency.
        let mut a = [[_mm256_setzero_ps(); 2]; P];
        for (i, &wi) in w[..C].iter().enumerate() {
            let wi = _mm256_set1_ps(wi);
            for (j, aj) in a.iter_mut().enumerate() {
                let at = (chunk * c * p + i * p + j) * LANES;
                // SAFETY: `at + 16 <= c·p·TILE <= qt.len()` (asserted above); unaligned loads.
                let (q0, q1) =
                    unsafe { (_mm256_loadu_ps(qt.as_ptr().add(at)), _mm256_loadu_ps(qt.as_ptr().add(at + 8))) };
                aj[0] = _mm256_fmadd_ps(q0, wi, aj[0]);
                aj[1] = _mm256_fmadd_ps(q1, wi, aj[1]);
            }
        }
        let mut e0 = _mm256_setzero_ps();
        let mut e1 = _mm256_setzero_ps();
        for aj in &a {
            e0 = _mm256_fmadd_ps(aj[0], aj[0], e0);
            e1 = _mm256_fmadd_ps(aj[1], aj[1], e1);
        }
        // SAFETY: `base + 16 <= TILE <= energy.len()`.
        unsafe {
            _mm256_storeu_ps(energy.as_mut_ptr().add(base), e0);
            _mm256_storeu_ps(energy.as_mut_ptr().add(base + 8), e1);
        }
        let m = _mm256_max_ps(e0, e1);
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
        *top = _mm_cvtss_f32(m);
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) fn energies_avx2(qt: &[f32], w: &[f32], cfg: Config, energy: &mut [f32], chunk_max: &mut [f32]) {
    assert!(has_avx2_fma(), "energies_avx2 called on a CPU without AVX2 and FMA");
    // SAFETY: the CPU has AVX2 and FMA (checked above).
    unsafe {
        match (cfg.c, cfg.p) {
            (8, 3) => energies_avx2_impl::<8, 3>(qt, w, energy, chunk_max),
            (12, 4) => energies_avx2_impl::<12, 4>(qt, w, energy, chunk_max),
            _ => unreachable!("SeedLM configurations are 8/3 and 12/4"),
        }
    }
}

/// The fastest variant this CPU runs.
pub(super) fn energies_fn() -> EnergiesFn {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        return energies_avx2;
    }
    energies_scalar
}
