//! RMSNorm with a (frozen) weight, as crunch-model's [`crunch_model::ops::rms_norm`] computes it.

use rayon::prelude::*;

use crate::float::Float;

/// `y = x · rstd · w` for each row of `x` (rows of `w.len()`), `rstd = 1 / sqrt(mean(x²) + eps)`
/// with the mean of squares accumulated in f64 (as ggml and crunch-model do). Returns `y` and the
/// `rstd` of every row (what the backward pass needs besides `x`).
pub fn rms_norm<T: Float>(x: &[T], w: &[T], eps: f32) -> (Vec<T>, Vec<T>) {
    let n = w.len();
    let mut y = vec![T::ZERO; x.len()];
    if n == 0 {
        return (y, Vec::new());
    }
    let mut rstd = vec![T::ZERO; x.len() / n];
    y.par_chunks_mut(n).zip(x.par_chunks(n)).zip(rstd.par_iter_mut()).for_each(|((o, r), rs)| {
        let sum: f64 = r.iter().map(|&v| v.to_f64() * v.to_f64()).sum();
        let mean = T::from_f64(sum / n as f64);
        let scale = T::ONE / (mean + T::from_f32(eps)).sqrt();
        *rs = scale;
        for ((o, &v), &g) in o.iter_mut().zip(r).zip(w) {
            *o = v * scale * g;
        }
    });
    (y, rstd)
}

/// [`rms_norm`]'s output again from its input and the `rstd` it returned (bit-identical: the same
/// operations), so that a tape can keep `x` and `rstd` instead of the normalized rows.
pub fn rms_norm_apply<T: Float>(x: &[T], w: &[T], rstd: &[T]) -> Vec<T> {
    let n = w.len();
    let mut y = vec![T::ZERO; x.len()];
    if n == 0 {
        return y;
    }
    y.par_chunks_mut(n).zip(x.par_chunks(n)).zip(rstd.par_iter()).for_each(|((o, r), &scale)| {
        for ((o, &v), &g) in o.iter_mut().zip(r).zip(w) {
            *o = v * scale * g;
        }
    });
    y
}

/// The vector-Jacobian product of [`rms_norm`] with respect to `x`:
/// `dx = rstd · (w ⊙ dy) − rstd³ / n · x · Σᵢ wᵢ dyᵢ xᵢ` per row.
pub fn rms_norm_backward<T: Float>(x: &[T], w: &[T], rstd: &[T], dy: &[T]) -> Vec<T> {
    let n = w.len();
    let mut dx = vec![T::ZERO; x.len()];
    if n == 0 {
        return dx;
    }
    let inv_n = T::ONE / T::from_f64(n as f64);
    dx.par_chunks_mut(n).zip(x.par_chunks(n)).zip(dy.par_chunks(n)).zip(rstd.par_iter()).for_each(
        |(((dx, x), dy), &r)| {
            let mut s = T::ZERO;
            for ((&xi, &gi), &wi) in x.iter().zip(dy).zip(w) {
                s += xi * gi * wi;
            }
            let c = r * r * r * inv_n * s;
            for (((o, &xi), &gi), &wi) in dx.iter_mut().zip(x).zip(dy).zip(w) {
                *o = r * wi * gi - c * xi;
            }
        },
    );
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{dot, numeric_gradient, relative_error};
    use crate::testutil::randn;

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = crunch_testkit::Rng::new(1);
        for (rows, n, eps) in [(1, 4, 1e-5f32), (3, 7, 1e-6), (5, 16, 1e-2)] {
            let x = randn(&mut rng, rows * n, 1.0);
            let w = randn(&mut rng, n, 1.0);
            let dy = randn(&mut rng, rows * n, 1.0);
            let (_, rstd) = rms_norm(&x, &w, eps);
            let got = rms_norm_backward(&x, &w, &rstd, &dy);
            let want = numeric_gradient(&x, 1e-5, |x| dot(&dy, &rms_norm(x, &w, eps).0));
            let e = relative_error(&got, &want);
            assert!(e < 1e-6, "rows {rows} n {n}: relative error {e:e}");
        }
    }

    #[test]
    fn apply_repeats_the_forward() {
        let mut rng = crunch_testkit::Rng::new(3);
        let x: Vec<f32> = (0..7 * 24).map(|_| rng.normal()).collect();
        let w: Vec<f32> = (0..24).map(|_| 1.0 + 0.1 * rng.normal()).collect();
        let (y, rstd) = rms_norm(&x, &w, 1e-5);
        assert_eq!(rms_norm_apply(&x, &w, &rstd), y);
    }

    #[test]
    fn f32_forward_is_crunch_models() {
        let mut rng = crunch_testkit::Rng::new(2);
        let x: Vec<f32> = (0..5 * 24).map(|_| rng.normal()).collect();
        let w: Vec<f32> = (0..24).map(|_| 1.0 + 0.1 * rng.normal()).collect();
        assert_eq!(rms_norm(&x, &w, 1e-5).0, crunch_model::ops::rms_norm(&x, &w, 1e-5));
    }
}
