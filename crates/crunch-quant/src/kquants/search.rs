//! Scale searches shared by the k-quant formats (and by the weighted legacy / i-quant paths).
//!
//! These are faithful ports of llama.cpp's `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`,
//! `make_qkx3_quants` and `make_qp_quants`: same arguments, same float evaluation order, same integer
//! truncations, so the chosen levels and scales are bit-identical to llama.cpp's. Where the C code
//! stores an `int` into an 8-bit array, the Rust code uses a wrapping `as` cast on purpose.
//!
//! Every routine takes `n` explicitly (like the C) and only touches the first `n` elements of its
//! slices; callers must pass slices at least that long.

/// Below this absolute maximum a group is treated as all zeros.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even, with the exact bit trick llama.cpp uses.
///
/// It never asserts: for |x| >= 2^22 (which only happens with degenerate scales) it returns the same
/// wrapped value the C code produces, and callers clamp it.
#[inline(always)]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let val = x + 12_582_912.0;
    (val.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// The value of the largest |x[i]| (first one wins on ties), and that absolute value.
#[inline]
fn signed_abs_max(x: &[f32]) -> (f32, f32) {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (max, amax)
}

/// Symmetric quantization of `x[..n]` to levels `-nmax..nmax-1` (stored in `l` offset by `nmax`),
/// returning the scale. Port of llama.cpp's `make_qx_quants`.
///
/// `rmse_type` picks the error weighting when `qw` is `None`: 0 = plain rounding at `-nmax/max`
/// (no search), 1 = x², 2 = 1, 3 = |x|, other = sqrt|x|. A negative `rmse_type` uses weighting
/// `-rmse_type` and returns right after the first least-squares step (average of the two scales).
/// With `qw`, those per-element weights are used instead. Otherwise 18 nearby inverse scales are tried
/// and the one with the best weighted least-squares fit is kept.
pub(crate) fn make_qx_quants(n: usize, nmax: i32, x: &[f32], l: &mut [i8], rmse_type: i32, qw: Option<&[f32]>) -> f32 {
    let x = &x[..n];
    let l = &mut l[..n];
    let (max, amax) = signed_abs_max(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let mut iscale = -nmax_f / max;
    if rmse_type == 0 {
        for (li, &xi) in l.iter_mut().zip(x) {
            let q = nearest_int(iscale * xi);
            *li = (nmax + q.clamp(-nmax, nmax - 1)) as i8;
        }
        return 1.0 / iscale;
    }
    let return_early = rmse_type < 0;
    let rmse_type = rmse_type.abs();
    let weight = |i: usize| -> f32 {
        match qw {
            Some(w) => w[i],
            None => {
                let xi = x[i];
                match rmse_type {
                    1 => xi * xi,
                    2 => 1.0,
                    3 => xi.abs(),
                    _ => xi.abs().sqrt(),
                }
            }
        }
    };
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l[i] = (q + nmax) as i8;
        let w = weight(i);
        let qf = q as f32;
        sumlx += w * x[i] * qf;
        suml2 += w * qf * qf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 { 0.5 * (scale + 1.0 / iscale) } else { 1.0 / iscale };
    }
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax_f + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let qf = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1) as f32;
            let w = weight(i);
            sumlx += w * x[i] * qf;
            suml2 += w * qf * qf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (li, &xi) in l.iter_mut().zip(x) {
                let q = nearest_int(iscale * xi);
                *li = (nmax + q.clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric quantization for Q3_K's reference path: levels `-nmax..nmax-1` stored offset by `nmax`.
/// With `do_rmse`, the x²-weighted fit is refined by moving one level at a time (up to 5 sweeps).
/// Port of llama.cpp's `make_q3_quants`.
pub(crate) fn make_q3_quants(n: usize, nmax: i32, x: &[f32], l: &mut [i8], do_rmse: bool) -> f32 {
    let x = &x[..n];
    let l = &mut l[..n];
    let (max, amax) = signed_abs_max(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    if do_rmse {
        let mut sumlx = 0.0f32;
        let mut suml2 = 0.0f32;
        for (li, &xi) in l.iter_mut().zip(x) {
            let q = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
            *li = q as i8;
            let w = xi * xi;
            let qf = q as f32;
            sumlx += w * xi * qf;
            suml2 += w * qf * qf;
        }
        for _ in 0..5 {
            let mut n_changed = 0;
            for (li, &xi) in l.iter_mut().zip(x) {
                let w = xi * xi;
                let cur = *li as f32;
                let mut slx = sumlx - w * xi * cur;
                if slx > 0.0 {
                    let mut sl2 = suml2 - w * cur * cur;
                    let new_l = nearest_int(xi * sl2 / slx).clamp(-nmax, nmax - 1);
                    if new_l != *li as i32 {
                        let nf = new_l as f32;
                        slx += w * xi * nf;
                        sl2 += w * nf * nf;
                        if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                            *li = new_l as i8;
                            sumlx = slx;
                            suml2 = sl2;
                            n_changed += 1;
                        }
                    }
                }
            }
            if n_changed == 0 {
                break;
            }
        }
        for li in l.iter_mut() {
            *li = li.wrapping_add(nmax as i8);
        }
        return if suml2 > 0.0 { sumlx / suml2 } else { 0.0 };
    }
    for (li, &xi) in l.iter_mut().zip(x) {
        let q = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
        *li = (q + nmax) as i8;
    }
    1.0 / iscale
}

/// Asymmetric quantization `x ≈ scale * l - the_min` with `l` in `0..=nmax`, minimizing the weighted
/// error (|diff| with `use_mad`, diff² otherwise) over `nstep + 1` inverse scales
/// `(rmin + rdelta * is + nmax) / (max - min)`. The min is never positive (`the_min >= 0`).
/// Port of llama.cpp's `make_qkx2_quants`; `laux` is scratch of at least `n` bytes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx2_quants(
    n: usize,
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    the_min: &mut f32,
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> f32 {
    let mut scale_search = AsymSearch::new(n, x, |i| weights[i]);
    if scale_search.max == scale_search.min {
        l[..n].fill(0);
        *the_min = -scale_search.min;
        return 0.0;
    }
    scale_search.run(nmax, l, the_min, laux, rmin, rdelta, nstep, use_mad)
}

/// Like [`make_qkx2_quants`], but `weights` may be absent (then x² is used) and a degenerate range
/// is detected with `max <= min`. Port of llama.cpp's `make_qkx3_quants`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx3_quants(
    n: usize,
    nmax: i32,
    x: &[f32],
    weights: Option<&[f32]>,
    l: &mut [u8],
    the_min: &mut f32,
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> f32 {
    let weight = |i: usize| match weights {
        Some(w) => w[i],
        None => x[i] * x[i],
    };
    let mut scale_search = AsymSearch::new(n, x, weight);
    if scale_search.max <= scale_search.min {
        l[..n].fill(0);
        *the_min = -scale_search.min;
        return 0.0;
    }
    scale_search.run(nmax, l, the_min, laux, rmin, rdelta, nstep, use_mad)
}

/// State shared by the two asymmetric searches (their bodies only differ in the weight source and
/// the degenerate-range test).
struct AsymSearch<'a, W: Fn(usize) -> f32> {
    x: &'a [f32],
    weight: W,
    min: f32,
    max: f32,
    sum_w: f32,
    sum_x: f32,
}

impl<'a, W: Fn(usize) -> f32> AsymSearch<'a, W> {
    fn new(n: usize, x: &'a [f32], weight: W) -> Self {
        let x = &x[..n];
        let mut min = x[0];
        let mut max = x[0];
        let mut sum_w = weight(0);
        let mut sum_x = sum_w * x[0];
        for (i, &xi) in x.iter().enumerate().skip(1) {
            if xi < min {
                min = xi;
            }
            if xi > max {
                max = xi;
            }
            let w = weight(i);
            sum_w += w;
            sum_x += w * xi;
        }
        if min > 0.0 {
            min = 0.0;
        }
        AsymSearch { x, weight, min, max, sum_w, sum_x }
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        nmax: i32,
        l: &mut [u8],
        the_min: &mut f32,
        laux: &mut [u8],
        rmin: f32,
        rdelta: f32,
        nstep: i32,
        use_mad: bool,
    ) -> f32 {
        let x = self.x;
        let n = x.len();
        let l = &mut l[..n];
        let laux = &mut laux[..n];
        let nmax_f = nmax as f32;
        let (max, mut min) = (self.max, self.min);
        let err = |d: f32| if use_mad { d.abs() } else { d * d };

        let mut iscale = nmax_f / (max - min);
        let mut scale = 1.0 / iscale;
        let mut best_error = 0.0f32;
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            l[i] = q as u8;
            let diff = scale * l[i] as f32 + min - x[i];
            best_error += (self.weight)(i) * err(diff);
        }
        if nstep < 1 {
            *the_min = -min;
            return scale;
        }
        for is in 0..=nstep {
            iscale = (rmin + rdelta * is as f32 + nmax_f) / (max - min);
            let mut sum_l = 0.0f32;
            let mut sum_l2 = 0.0f32;
            let mut sum_xl = 0.0f32;
            for i in 0..n {
                let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
                laux[i] = q as u8;
                let w = (self.weight)(i);
                let qf = q as f32;
                sum_l += w * qf;
                sum_l2 += w * qf * qf;
                sum_xl += w * qf * x[i];
            }
            let det = self.sum_w * sum_l2 - sum_l * sum_l;
            if det > 0.0 {
                let mut this_scale = (self.sum_w * sum_xl - self.sum_x * sum_l) / det;
                let mut this_min = (sum_l2 * self.sum_x - sum_l * sum_xl) / det;
                if this_min > 0.0 {
                    this_min = 0.0;
                    this_scale = sum_xl / sum_l2;
                }
                let mut cur_error = 0.0f32;
                for i in 0..n {
                    let diff = this_scale * laux[i] as f32 + this_min - x[i];
                    cur_error += (self.weight)(i) * err(diff);
                }
                if cur_error < best_error {
                    l.copy_from_slice(laux);
                    best_error = cur_error;
                    scale = this_scale;
                    min = this_min;
                }
            }
        }
        *the_min = -min;
        scale
    }
}

/// Quantization of non-negative values (the sub-block scales and mins) to `0..=nmax` with a single
/// scale, minimizing the `quant_weights`-weighted squared error: a coarse search over 8 nearby inverse
/// scales, then up to 5 sweeps of single-level moves. Port of llama.cpp's `make_qp_quants`.
pub(crate) fn make_qp_quants(n: usize, nmax: i32, x: &[f32], l: &mut [u8], quant_weights: &[f32]) -> f32 {
    let x = &x[..n];
    let l = &mut l[..n];
    let qw = &quant_weights[..n];
    let mut max = 0.0f32;
    for &v in x {
        // same comparison order as the C `MAX` macro (matters only for NaN)
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let mut iscale = nmax_f / max;
    for (li, &xi) in l.iter_mut().zip(x) {
        *li = nearest_int(iscale * xi) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * l[i] as f32;
        best_mse += qw[i] * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax_f) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let q = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * q as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * x[i]).min(nmax);
        l[i] = q as u8;
        let w = qw[i];
        let qf = q as f32;
        sumlx += w * x[i] * qf;
        suml2 += w * qf * qf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = qw[i];
            let cur = l[i] as f32;
            let mut slx = sumlx - w * x[i] * cur;
            let mut sl2 = suml2 - w * cur * cur;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l[i] as i32 {
                    let nf = new_l as f32;
                    slx += w * x[i] * nf;
                    sl2 += w * nf * nf;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_matches_round_half_even() {
        for &(x, r) in &[(0.5f32, 0), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, -2), (3.49, 3), (-7.6, -8)] {
            assert_eq!(nearest_int(x), r, "{x}");
        }
    }

    #[test]
    fn qx_all_zero_group() {
        let x = [0.0f32; 16];
        let mut l = [5i8; 16];
        assert_eq!(make_qx_quants(16, 32, &x, &mut l, 1, None), 0.0);
        assert!(l.iter().all(|&v| v == 0));
    }

    #[test]
    fn qx_reconstructs_a_ramp() {
        let x: Vec<f32> = (0..16).map(|i| (i as f32 - 8.0) * 0.25).collect();
        let mut l = [0i8; 16];
        let d = make_qx_quants(16, 8, &x, &mut l, 1, None);
        for (xi, li) in x.iter().zip(l) {
            assert!((d * (li as f32 - 8.0) - xi).abs() < 0.13, "{xi} {li} {d}");
        }
    }

    #[test]
    fn qkx_search_never_worse_than_first_guess() {
        let x: Vec<f32> = (0..32).map(|i| ((i * 37 % 23) as f32 - 7.0) * 0.1).collect();
        let w: Vec<f32> = x.iter().map(|v| v.abs() + 0.1).collect();
        let (mut l, mut aux) = ([0u8; 32], [0u8; 32]);
        let mut min = 0.0;
        let s = make_qkx2_quants(32, 15, &x, &w, &mut l, &mut min, &mut aux, -1.0, 0.1, 20, false);
        let err: f32 = (0..32).map(|i| w[i] * (s * l[i] as f32 - min - x[i]).powi(2)).sum();
        let s0 = 1.0 / (15.0 / 2.2);
        let err0: f32 = (0..32)
            .map(|i| {
                let q = nearest_int((x[i] + 0.7) / s0).clamp(0, 15) as f32;
                w[i] * (s0 * q - 0.7 - x[i]).powi(2)
            })
            .sum();
        assert!(err <= err0 + 1e-6, "{err} > {err0}");
        let s3 = make_qkx3_quants(32, 15, &x, None, &mut l, &mut min, &mut aux, -0.9, 0.05, 36, false);
        assert!(s3 > 0.0 && min >= 0.0);
    }

    #[test]
    fn qp_quantizes_nonnegative_values() {
        let x: Vec<f32> = (0..8).map(|i| 0.01 * (i as f32 + 1.0)).collect();
        let w = [1.0f32; 8];
        let mut l = [0u8; 8];
        let d = make_qp_quants(8, 63, &x, &mut l, &w);
        for (xi, li) in x.iter().zip(l) {
            assert!((d * li as f32 - xi).abs() < 0.001);
        }
    }
}
