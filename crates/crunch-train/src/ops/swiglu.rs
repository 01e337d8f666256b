//! The SwiGLU activation `silu(g) ⊙ u` of the feed-forward block, with ggml's `silu(x) = x / (1 + e⁻ˣ)`.

use rayon::prelude::*;

use crate::float::Float;

/// Elements per parallel task.
const CHUNK: usize = 4096;

/// `silu(x) = x / (1 + e⁻ˣ)`, as crunch-model computes it.
#[inline]
pub fn silu<T: Float>(x: T) -> T {
    x / (T::ONE + (-x).exp())
}

/// `out = e^(−x)` element-wise by [`Float::exp_slice`] (crunch-quant's vectorized `exp` in f32,
/// the same bits as [`Float::exp`] one value at a time): the one transcendental of SiLU and its
/// derivative, in bulk, so that the rest is plain arithmetic the compiler vectorizes.
fn exp_neg<T: Float>(x: &[T], out: &mut [T]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = -v;
    }
    T::exp_slice(out);
}

/// `silu(g) ⊙ u`, element-wise (bit for bit [`silu`]`(g) · u`: the same operations, `e^(−g)`
/// taken in bulk first).
pub fn swiglu<T: Float>(g: &[T], u: &[T]) -> Vec<T> {
    let mut y = vec![T::ZERO; g.len()];
    y.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK))).for_each(|(y, (g, u))| {
        exp_neg(g, y);
        for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
            *y = g / (T::ONE + *y) * u;
        }
    });
    y
}

/// The vector-Jacobian product of [`swiglu`]: `(dg, du) = (dy ⊙ u ⊙ silu'(g), dy ⊙ silu(g))`,
/// `silu'(g) = σ(g) (1 + g (1 − σ(g)))`, `σ(g) = 1 / (1 + e^(−g))` with `e^(−g)` taken in bulk
/// (into `dg`, then overwritten) as in [`swiglu`].
pub fn swiglu_backward<T: Float>(g: &[T], u: &[T], dy: &[T]) -> (Vec<T>, Vec<T>) {
    let mut dg = vec![T::ZERO; g.len()];
    let mut du = vec![T::ZERO; g.len()];
    dg.par_chunks_mut(CHUNK)
        .zip(du.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)).zip(dy.par_chunks(CHUNK)))
        .for_each(|((dg, du), ((g, u), dy))| {
            exp_neg(g, dg);
            for ((((dg, du), &g), &u), &d) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(dy) {
                let s = T::ONE / (T::ONE + *dg);
                *du = d * g * s;
                *dg = d * u * s * (T::ONE + g * (T::ONE - s));
            }
        });
    (dg, du)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{dot, numeric_gradient, relative_error};
    use crate::testutil::randn;

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = crunch_testkit::Rng::new(3);
        for n in [1, 9, 64] {
            let g = randn(&mut rng, n, 3.0);
            let u = randn(&mut rng, n, 1.0);
            let dy = randn(&mut rng, n, 1.0);
            let (dg, du) = swiglu_backward(&g, &u, &dy);
            let want_g = numeric_gradient(&g, 1e-5, |g| dot(&dy, &swiglu(g, &u)));
            let want_u = numeric_gradient(&u, 1e-5, |u| dot(&dy, &swiglu(&g, u)));
            let (eg, eu) = (relative_error(&dg, &want_g), relative_error(&du, &want_u));
            assert!(eg < 1e-6 && eu < 1e-6, "n {n}: dg {eg:e} du {eu:e}");
        }
    }

    /// The bulk-`exp` forms are bit for bit the element-wise definitions (`silu(g) · u`, and
    /// `σ(g) = 1 / (1 + e^(−g))` in the derivative), in f32 (crunch-quant's vectorized `exp`).
    #[test]
    fn f32_bulk_exp_is_elementwise() {
        let mut rng = crunch_testkit::Rng::new(5);
        let n = 3 * CHUNK + 77;
        let g: Vec<f32> = (0..n).map(|_| 4.0 * rng.normal()).collect();
        let u: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        let dy: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        let y = swiglu(&g, &u);
        let (dg, du) = swiglu_backward(&g, &u, &dy);
        for i in 0..n {
            let (g, u, d) = (g[i], u[i], dy[i]);
            assert_eq!(y[i].to_bits(), (silu(g) * u).to_bits(), "[{i}]");
            let s = 1.0 / (1.0 + Float::exp(-g));
            assert_eq!(du[i].to_bits(), (d * g * s).to_bits(), "[{i}]");
            assert_eq!(dg[i].to_bits(), (d * u * s * (1.0 + g * (1.0 - s))).to_bits(), "[{i}]");
        }
    }

    #[test]
    fn f32_forward_is_crunch_models() {
        let mut rng = crunch_testkit::Rng::new(4);
        let g: Vec<f32> = (0..100).map(|_| 4.0 * rng.normal()).collect();
        let u: Vec<f32> = (0..100).map(|_| rng.normal()).collect();
        let mut want = g.clone();
        crunch_model::ops::swiglu(&mut want, &u);
        for (a, b) in swiglu(&g, &u).iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}
