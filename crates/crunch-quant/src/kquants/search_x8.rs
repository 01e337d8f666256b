//! Eight scale searches at once: lane `j` of an AVX2 register runs the search of sub-block `j`.
//!
//! The k-quant formats search every sub-block (8 of 32 values for Q4_K/Q5_K, 16 of 16 for Q2_K and
//! Q6_K) independently with the same candidate scales. Running eight sub-blocks side by side keeps
//! each lane's arithmetic exactly the scalar sequence of [`super::search`]: the same operations
//! (no FMA contraction) in the same element order, the same comparisons with the same NaN behaviour,
//! and the same data-dependent updates done with per-lane blends. So the results are bit-identical to
//! the scalar references, which stay the reference implementation (the tests compare both on many
//! inputs, degenerate ones included).
//!
//! Inputs are transposed: `xt[i][j]` is element `i` of sub-block `j`.

/// Results of eight asymmetric searches ([`super::search::make_qkx2_quants`] semantics).
pub(crate) struct AsymX8 {
    pub scale: [f32; 8],
    pub the_min: [f32; 8],
}

use super::search::{make_qkx2_quants, make_qkx3_quants, make_qx_quants};

/// Transpose 8 consecutive sub-blocks of `n` values (`v[j * n + i]`) into `out[i][j]`.
#[inline]
fn transpose(v: &[f32], n: usize, out: &mut [[f32; 8]; 32]) {
    for (j, sub) in v[..8 * n].chunks_exact(n).enumerate() {
        for (i, &e) in sub.iter().enumerate() {
            out[i][j] = e;
        }
    }
}

/// Eight asymmetric searches on consecutive sub-blocks of `n <= 32` values: sub-block `j` is
/// `x[j * n..(j + 1) * n]` with weights `w[j * n..]` and levels `l[j * n..]`. Same results as calling
/// [`make_qkx2_quants`] (or [`make_qkx3_quants`] with weights when `qkx3`) on each; AVX2 when the
/// CPU has it. Returns the scales and writes the (positive) mins to `mins`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx_quants_x8(
    n: usize,
    nmax: i32,
    x: &[f32],
    w: &[f32],
    l: &mut [u8],
    mins: &mut [f32; 8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
    qkx3: bool,
) -> [f32; 8] {
    #[cfg(target_arch = "x86_64")]
    if n <= 32 && super::simd::has_avx2_fma() {
        let (mut xt, mut wt) = ([[0.0f32; 8]; 32], [[0.0f32; 8]; 32]);
        transpose(x, n, &mut xt);
        transpose(w, n, &mut wt);
        let mut lt = [[0u8; 32]; 8];
        // SAFETY: AVX2 was detected on this CPU just above.
        let r = unsafe { x86::asym_search(&xt[..n], &wt[..n], nmax, &mut lt, rmin, rdelta, nstep, use_mad, qkx3) };
        for (j, lj) in lt.iter().enumerate() {
            l[j * n..(j + 1) * n].copy_from_slice(&lj[..n]);
        }
        *mins = r.the_min;
        return r.scale;
    }
    make_qkx_quants_x8_scalar(n, nmax, x, w, l, mins, rmin, rdelta, nstep, use_mad, qkx3)
}

/// The scalar reference of [`make_qkx_quants_x8`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx_quants_x8_scalar(
    n: usize,
    nmax: i32,
    x: &[f32],
    w: &[f32],
    l: &mut [u8],
    mins: &mut [f32; 8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
    qkx3: bool,
) -> [f32; 8] {
    let mut scales = [0.0f32; 8];
    let mut aux = vec![0u8; n];
    for j in 0..8 {
        let r = j * n..(j + 1) * n;
        let (xs, ws, ls) = (&x[r.clone()], &w[r.clone()], &mut l[r]);
        scales[j] = if qkx3 {
            make_qkx3_quants(n, nmax, xs, Some(ws), ls, &mut mins[j], &mut aux, rmin, rdelta, nstep, use_mad)
        } else {
            make_qkx2_quants(n, nmax, xs, ws, ls, &mut mins[j], &mut aux, rmin, rdelta, nstep, use_mad)
        };
    }
    scales
}

/// Eight [`make_qx_quants`] searches (`rmse_type == 1`) on consecutive sub-blocks of `n <= 32`
/// values, laid out as in [`make_qkx_quants_x8`]; `qw` as in `make_qx_quants` (`None`: weights x²).
/// AVX2 when the CPU has it.
pub(crate) fn make_qx_quants_x8(n: usize, nmax: i32, x: &[f32], l: &mut [i8], qw: Option<&[f32]>) -> [f32; 8] {
    #[cfg(target_arch = "x86_64")]
    if n <= 32 && super::simd::has_avx2_fma() {
        let (mut xt, mut wt) = ([[0.0f32; 8]; 32], [[0.0f32; 8]; 32]);
        transpose(x, n, &mut xt);
        match qw {
            Some(w) => transpose(w, n, &mut wt),
            None => {
                for (wr, xr) in wt.iter_mut().zip(&xt).take(n) {
                    for (w, &v) in wr.iter_mut().zip(xr) {
                        *w = v * v;
                    }
                }
            }
        }
        let mut lt = [[0i8; 32]; 8];
        // SAFETY: AVX2 was detected on this CPU just above.
        let scales = unsafe { x86::qx_search(&xt[..n], &wt[..n], nmax, &mut lt) };
        for (j, lj) in lt.iter().enumerate() {
            l[j * n..(j + 1) * n].copy_from_slice(&lj[..n]);
        }
        return scales;
    }
    make_qx_quants_x8_scalar(n, nmax, x, l, qw)
}

/// The scalar reference of [`make_qx_quants_x8`].
pub(crate) fn make_qx_quants_x8_scalar(n: usize, nmax: i32, x: &[f32], l: &mut [i8], qw: Option<&[f32]>) -> [f32; 8] {
    let mut scales = [0.0f32; 8];
    for (j, s) in scales.iter_mut().enumerate() {
        let r = j * n..(j + 1) * n;
        *s = make_qx_quants(n, nmax, &x[r.clone()], &mut l[r.clone()], 1, qw.map(|w| &w[r]));
    }
    scales
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::AsymX8;
    use crate::kquants::search::GROUP_MAX_EPS;
    use std::arch::x86_64::*;

    /// The scalar `nearest_int` on eight lanes: add 1.5 * 2^23 and take the low mantissa bits.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn nearest_int(v: __m256) -> __m256i {
        let val = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12_582_912.0)));
        _mm256_sub_epi32(_mm256_and_si256(val, _mm256_set1_epi32(0x007f_ffff)), _mm256_set1_epi32(0x0040_0000))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn clamp(q: __m256i, lo: i32, hi: i32) -> __m256i {
        _mm256_min_epi32(_mm256_max_epi32(q, _mm256_set1_epi32(lo)), _mm256_set1_epi32(hi))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load(v: &[f32; 8]) -> __m256 {
        // SAFETY: `v` is 8 readable f32 and `loadu` accepts any alignment.
        unsafe { _mm256_loadu_ps(v.as_ptr()) }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn store(v: __m256) -> [f32; 8] {
        let mut out = [0.0f32; 8];
        // SAFETY: `out` is 8 writable f32 and `storeu` accepts any alignment.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        out
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn store_i32(v: __m256i) -> [i32; 8] {
        let mut out = [0i32; 8];
        // SAFETY: `out` is 32 writable bytes and `storeu` accepts any alignment.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) };
        out
    }

    /// `a > b` per lane (false when either is NaN, like the scalar `>`).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn gt(a: __m256, b: __m256) -> __m256 {
        _mm256_cmp_ps::<_CMP_GT_OQ>(a, b)
    }

    /// `a < b` per lane (false when either is NaN).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn lt(a: __m256, b: __m256) -> __m256 {
        _mm256_cmp_ps::<_CMP_LT_OQ>(a, b)
    }

    /// `mask ? a : b` per lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn select(mask: __m256, a: __m256, b: __m256) -> __m256 {
        _mm256_blendv_ps(b, a, mask)
    }

    /// Eight [`crate::kquants::search::make_qkx2_quants`] (`qkx3 == false`) or `make_qkx3_quants`
    /// (`qkx3 == true`, weights given) searches over `n = xt.len()` values (at most 32) each. Levels
    /// go to `l[j][..n]`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    pub(crate) fn asym_search(
        xt: &[[f32; 8]],
        wt: &[[f32; 8]],
        nmax: i32,
        l: &mut [[u8; 32]; 8],
        rmin: f32,
        rdelta: f32,
        nstep: i32,
        use_mad: bool,
        qkx3: bool,
    ) -> AsymX8 {
        let n = xt.len();
        assert!((1..=32).contains(&n) && wt.len() == n);
        let zero = _mm256_setzero_ps();
        let sign = _mm256_set1_ps(-0.0);
        let err = |d: __m256| if use_mad { _mm256_andnot_ps(sign, d) } else { _mm256_mul_ps(d, d) };
        // AsymSearch::new
        let mut x = [zero; 32];
        let mut w = [zero; 32];
        for i in 0..n {
            x[i] = load(&xt[i]);
            w[i] = load(&wt[i]);
        }
        let mut min = x[0];
        let mut max = x[0];
        let mut sum_w = w[0];
        let mut sum_x = _mm256_mul_ps(sum_w, x[0]);
        for i in 1..n {
            // `if xi < min { min = xi }` is exactly `min_ps(xi, min)`, NaN included; same for max.
            min = _mm256_min_ps(x[i], min);
            max = _mm256_max_ps(x[i], max);
            sum_w = _mm256_add_ps(sum_w, w[i]);
            sum_x = _mm256_add_ps(sum_x, _mm256_mul_ps(w[i], x[i]));
        }
        min = select(gt(min, zero), zero, min);
        let degenerate =
            if qkx3 { _mm256_cmp_ps::<_CMP_LE_OQ>(max, min) } else { _mm256_cmp_ps::<_CMP_EQ_OQ>(max, min) };
        let min0 = min;

        // AsymSearch::run
        let nmax_f = _mm256_set1_ps(nmax as f32);
        let mut iscale = _mm256_div_ps(nmax_f, _mm256_sub_ps(max, min));
        let mut scale = _mm256_div_ps(_mm256_set1_ps(1.0), iscale);
        let mut best_error = zero;
        let mut best_q = [zero; 32];
        for i in 0..n {
            let q = _mm256_cvtepi32_ps(clamp(nearest_int(_mm256_mul_ps(iscale, _mm256_sub_ps(x[i], min))), 0, nmax));
            best_q[i] = q;
            let diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale, q), min), x[i]);
            best_error = _mm256_add_ps(best_error, _mm256_mul_ps(w[i], err(diff)));
        }
        if nstep >= 1 {
            let mut qs = [zero; 32];
            for is in 0..=nstep {
                let num = _mm256_set1_ps(rmin + rdelta * is as f32 + nmax as f32);
                iscale = _mm256_div_ps(num, _mm256_sub_ps(max, min));
                let mut sum_l = zero;
                let mut sum_l2 = zero;
                let mut sum_xl = zero;
                for i in 0..n {
                    let q = _mm256_cvtepi32_ps(clamp(
                        nearest_int(_mm256_mul_ps(iscale, _mm256_sub_ps(x[i], min))),
                        0,
                        nmax,
                    ));
                    qs[i] = q;
                    let wq = _mm256_mul_ps(w[i], q);
                    sum_l = _mm256_add_ps(sum_l, wq);
                    sum_l2 = _mm256_add_ps(sum_l2, _mm256_mul_ps(wq, q));
                    sum_xl = _mm256_add_ps(sum_xl, _mm256_mul_ps(wq, x[i]));
                }
                let det = _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_l2), _mm256_mul_ps(sum_l, sum_l));
                let ok = gt(det, zero);
                if _mm256_movemask_ps(ok) == 0 {
                    continue;
                }
                let mut this_scale =
                    _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_w, sum_xl), _mm256_mul_ps(sum_x, sum_l)), det);
                let mut this_min =
                    _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_l2, sum_x), _mm256_mul_ps(sum_l, sum_xl)), det);
                let pos = gt(this_min, zero);
                this_min = select(pos, zero, this_min);
                this_scale = select(pos, _mm256_div_ps(sum_xl, sum_l2), this_scale);
                let mut cur_error = zero;
                for i in 0..n {
                    let diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(this_scale, qs[i]), this_min), x[i]);
                    cur_error = _mm256_add_ps(cur_error, _mm256_mul_ps(w[i], err(diff)));
                }
                let better = _mm256_and_ps(ok, lt(cur_error, best_error));
                if _mm256_movemask_ps(better) == 0 {
                    continue;
                }
                for i in 0..n {
                    best_q[i] = select(better, qs[i], best_q[i]);
                }
                best_error = select(better, cur_error, best_error);
                scale = select(better, this_scale, scale);
                min = select(better, this_min, min);
            }
        }
        let mut scale = store(scale);
        let mut the_min = store(_mm256_xor_ps(min, sign));
        let deg = _mm256_movemask_ps(degenerate);
        let min0 = store(min0);
        for i in 0..n {
            let q = store_i32(_mm256_cvtps_epi32(best_q[i]));
            for j in 0..8 {
                l[j][i] = q[j] as u8;
            }
        }
        for j in 0..8 {
            if deg & (1 << j) != 0 {
                l[j][..n].fill(0);
                the_min[j] = -min0[j];
                scale[j] = 0.0;
            }
        }
        AsymX8 { scale, the_min }
    }

    /// Eight [`crate::kquants::search::make_qx_quants`] searches with `rmse_type == 1` over
    /// `n = xt.len()` values (at most 32) each; `wt` are the weights (`x²` for the unweighted path,
    /// which the caller computes). Levels (offset by `nmax`) go to `l[j][..n]`; returns the scales.
    #[target_feature(enable = "avx2")]
    pub(crate) fn qx_search(xt: &[[f32; 8]], wt: &[[f32; 8]], nmax: i32, l: &mut [[i8; 32]; 8]) -> [f32; 8] {
        let n = xt.len();
        assert!((1..=32).contains(&n) && wt.len() == n);
        let zero = _mm256_setzero_ps();
        let sign = _mm256_set1_ps(-0.0);
        let mut x = [zero; 32];
        let mut w = [zero; 32];
        let mut max = zero;
        let mut amax = zero;
        for i in 0..n {
            x[i] = load(&xt[i]);
            w[i] = load(&wt[i]);
            let ax = _mm256_andnot_ps(sign, x[i]);
            let m = gt(ax, amax);
            amax = select(m, ax, amax);
            max = select(m, x[i], max);
        }
        let small = lt(amax, _mm256_set1_ps(GROUP_MAX_EPS));
        let nmax_f = nmax as f32;
        let sums = |iscale: __m256| {
            let mut sumlx = zero;
            let mut suml2 = zero;
            for i in 0..n {
                let q = _mm256_cvtepi32_ps(clamp(nearest_int(_mm256_mul_ps(iscale, x[i])), -nmax, nmax - 1));
                sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(_mm256_mul_ps(w[i], x[i]), q));
                suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w[i], q), q));
            }
            (sumlx, suml2)
        };
        let mut best_iscale = _mm256_div_ps(_mm256_set1_ps(-nmax_f), max);
        let (sumlx, suml2) = sums(best_iscale);
        let nonzero = _mm256_cmp_ps::<_CMP_NEQ_UQ>(suml2, zero);
        let mut scale = _mm256_and_ps(nonzero, _mm256_div_ps(sumlx, suml2));
        let mut best = _mm256_mul_ps(scale, sumlx);
        for is in -9i32..=9 {
            if is == 0 {
                continue;
            }
            let iscale = _mm256_div_ps(_mm256_set1_ps(-(nmax_f + 0.1 * is as f32)), max);
            let (sumlx, suml2) = sums(iscale);
            let better = _mm256_and_ps(gt(suml2, zero), gt(_mm256_mul_ps(sumlx, sumlx), _mm256_mul_ps(best, suml2)));
            if _mm256_movemask_ps(better) == 0 {
                continue;
            }
            best_iscale = select(better, iscale, best_iscale);
            scale = select(better, _mm256_div_ps(sumlx, suml2), scale);
            best = select(better, _mm256_mul_ps(scale, sumlx), best);
        }
        for i in 0..n {
            let q = clamp(nearest_int(_mm256_mul_ps(best_iscale, x[i])), -nmax, nmax - 1);
            let q = store_i32(_mm256_add_epi32(q, _mm256_set1_epi32(nmax)));
            for j in 0..8 {
                l[j][i] = q[j] as i8;
            }
        }
        let mut scale = store(scale);
        let small = _mm256_movemask_ps(small);
        for j in 0..8 {
            if small & (1 << j) != 0 {
                l[j][..n].fill(0);
                scale[j] = 0.0;
            }
        }
        scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic test inputs: realistic values plus degenerate sub-blocks (all zero, constant,
    /// all positive, one spike, tiny values, huge values, NaN and infinities).
    fn cases(n: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut out = Vec::new();
        for k in 0..400 {
            let mut v: Vec<f32> = (0..8 * n).map(|_| (next() - 0.5) * 0.05).collect();
            for (j, sub) in v.chunks_exact_mut(n).enumerate() {
                match (k + j) % 13 {
                    0 => sub.fill(0.0),
                    1 => sub.fill(0.01),
                    2 => sub.iter_mut().for_each(|e| *e = e.abs() + 0.001),
                    3 => sub[j % n] = 1.0,
                    4 => sub.iter_mut().for_each(|e| *e *= 1e-18),
                    5 => sub.iter_mut().for_each(|e| *e *= 1e30),
                    6 if k % 5 == 0 => sub[1] = f32::NAN,
                    7 if k % 7 == 0 => sub[2] = f32::INFINITY,
                    8 => sub.iter_mut().for_each(|e| *e = -e.abs()),
                    9 => sub[0] = -0.0,
                    _ => {}
                }
            }
            out.push(v);
        }
        out
    }

    fn same(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
    }

    #[test]
    fn asym_x8_matches_scalar() {
        // (n, nmax, rmin, rdelta, nstep, use_mad, qkx3): the k-quant and legacy call sites
        let configs = [
            (32, 15, -1.0, 0.1, 20, false, false),
            (32, 31, -0.5, 0.1, 15, false, false),
            (16, 3, -0.5, 0.1, 15, true, false),
            (32, 15, -0.9, 0.05, 36, false, true),
            (16, 3, -0.9, 0.05, 36, false, true),
            (32, 15, -1.0, 0.1, 0, false, false),
        ];
        for (c, &(n, nmax, rmin, rdelta, nstep, mad, qkx3)) in configs.iter().enumerate() {
            for (k, x) in cases(n, c as u64 + 1).into_iter().enumerate() {
                let w: Vec<f32> = x.iter().enumerate().map(|(i, v)| v.abs() + (i % 7) as f32 * 0.003).collect();
                let (mut l1, mut l2) = (vec![0u8; 8 * n], vec![0u8; 8 * n]);
                let (mut m1, mut m2) = ([0.0f32; 8], [0.0f32; 8]);
                let s1 = make_qkx_quants_x8(n, nmax, &x, &w, &mut l1, &mut m1, rmin, rdelta, nstep, mad, qkx3);
                let s2 = make_qkx_quants_x8_scalar(n, nmax, &x, &w, &mut l2, &mut m2, rmin, rdelta, nstep, mad, qkx3);
                assert!(
                    same(&s1, &s2) && same(&m1, &m2) && l1 == l2,
                    "config {c} case {k}: {s1:?} {s2:?} {m1:?} {m2:?}"
                );
            }
        }
    }

    #[test]
    fn qx_x8_matches_scalar() {
        for (c, &(n, nmax)) in [(16, 32), (32, 8), (16, 4), (32, 16)].iter().enumerate() {
            for (k, x) in cases(n, c as u64 + 11).into_iter().enumerate() {
                let w: Vec<f32> = x.iter().enumerate().map(|(i, v)| v.abs() + (i % 5) as f32 * 0.01).collect();
                for qw in [None, Some(&w[..])] {
                    let (mut l1, mut l2) = (vec![0i8; 8 * n], vec![0i8; 8 * n]);
                    let s1 = make_qx_quants_x8(n, nmax, &x, &mut l1, qw);
                    let s2 = make_qx_quants_x8_scalar(n, nmax, &x, &mut l2, qw);
                    assert!(same(&s1, &s2) && l1 == l2, "config {c} case {k}: {s1:?} {s2:?}");
                }
            }
        }
    }
}
