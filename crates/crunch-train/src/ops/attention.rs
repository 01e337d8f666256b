//! Causal grouped-query attention over one sequence (positions `0..n`), as crunch-model's
//! [`crunch_model::attention::attention`] computes it: scores `q·k` scaled by `1 / sqrt(head_dim)`,
//! soft-max over the positions a query sees, output `Σ p v`; query head `h` reads KV head
//! `h / (n_head / n_head_kv)`.

use rayon::prelude::*;

pub use crunch_model::attention::AttnShape;

use crate::float::Float;
use crate::ops::matmul::{axpy, dot};

fn check(q: &[impl Sized], k: &[impl Sized], v: &[impl Sized], n: usize, s: AttnShape) {
    assert!(
        s.n_head_kv > 0 && s.n_head.is_multiple_of(s.n_head_kv),
        "{} heads over {} KV heads",
        s.n_head,
        s.n_head_kv
    );
    assert_eq!(q.len(), n * s.n_head * s.head_dim, "q");
    assert_eq!(k.len(), n * s.n_head_kv * s.head_dim, "k");
    assert_eq!(v.len(), n * s.n_head_kv * s.head_dim, "v");
}

/// Attention of `n` queries over the `n` keys and values of the same sequence. `q` is
/// `n × (n_head · head_dim)`, `k` and `v` are `n × (n_head_kv · head_dim)`. Returns the output
/// (`n × (n_head · head_dim)`) and the attention probabilities, `n_head` matrices of `n × n`
/// (row `t` is zero after column `t`), which the backward pass needs.
///
/// # Panics
/// When the lengths do not match the shape or `n_head` is not a multiple of `n_head_kv`.
pub fn attention<T: Float>(q: &[T], k: &[T], v: &[T], n: usize, s: AttnShape) -> (Vec<T>, Vec<T>) {
    check(q, k, v, n, s);
    let d = s.head_dim;
    let (q_row, kv_row) = (s.n_head * d, s.n_head_kv * d);
    let group = s.n_head / s.n_head_kv;
    let scale = T::ONE / T::from_f64(d as f64).sqrt();
    let mut probs = vec![T::ZERO; s.n_head * n * n];
    let mut out = vec![T::ZERO; n * q_row];
    if n == 0 || d == 0 {
        return (out, probs);
    }
    let heads: Vec<Vec<T>> = probs
        .par_chunks_mut(n * n)
        .enumerate()
        .map(|(h, p)| {
            let kvh = h / group;
            let mut o = vec![T::ZERO; n * d];
            for (t, (pr, or)) in p.chunks_exact_mut(n).zip(o.chunks_exact_mut(d)).enumerate() {
                let qh = &q[t * q_row + h * d..][..d];
                let row = &mut pr[..=t];
                let mut max = T::NEG_INFINITY;
                for (j, sc) in row.iter_mut().enumerate() {
                    *sc = dot(qh, &k[j * kv_row + kvh * d..][..d]);
                    max = max.max(*sc * scale);
                }
                let mut sum = T::ZERO;
                for sc in row.iter_mut() {
                    *sc = (*sc * scale - max).exp();
                    sum += *sc;
                }
                let inv = T::ONE / sum;
                for (j, sc) in row.iter_mut().enumerate() {
                    *sc *= inv;
                    axpy(*sc, &v[j * kv_row + kvh * d..][..d], or);
                }
            }
            o
        })
        .collect();
    for (h, o) in heads.iter().enumerate() {
        for (t, or) in o.chunks_exact(d).enumerate() {
            out[t * q_row + h * d..][..d].copy_from_slice(or);
        }
    }
    (out, probs)
}

/// The vector-Jacobian product of [`attention`] with respect to `q`, `k` and `v`, from the
/// probabilities it returned: `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`,
/// `dQ = scale · dS K`, `dK = scale · dSᵀ Q`, `dV = Pᵀ dO` (K and V gradients summed over the
/// query heads that share a KV head).
///
/// # Panics
/// As [`attention`].
pub fn attention_backward<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    probs: &[T],
    dout: &[T],
    n: usize,
    s: AttnShape,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    check(q, k, v, n, s);
    let d = s.head_dim;
    let (q_row, kv_row) = (s.n_head * d, s.n_head_kv * d);
    let group = s.n_head / s.n_head_kv;
    let scale = T::ONE / T::from_f64(d as f64).sqrt();
    let mut dq = vec![T::ZERO; q.len()];
    let mut dk = vec![T::ZERO; k.len()];
    let mut dv = vec![T::ZERO; v.len()];
    if n == 0 || d == 0 {
        return (dq, dk, dv);
    }
    // Per KV head: its dK, dV (n × d each) and the dQ of its query heads (group × n × d).
    let parts: Vec<(Vec<T>, Vec<T>, Vec<T>)> = (0..s.n_head_kv)
        .into_par_iter()
        .map(|g| {
            let mut dkg = vec![T::ZERO; n * d];
            let mut dvg = vec![T::ZERO; n * d];
            let mut dqg = vec![T::ZERO; group * n * d];
            let mut dp = vec![T::ZERO; n];
            for hi in 0..group {
                let h = g * group + hi;
                let p = &probs[h * n * n..][..n * n];
                for t in 0..n {
                    let pr = &p[t * n..][..=t];
                    let dot_h = &dout[t * q_row + h * d..][..d];
                    let qh = &q[t * q_row + h * d..][..d];
                    let mut sum = T::ZERO;
                    for (j, (dpj, &pj)) in dp.iter_mut().zip(pr).enumerate() {
                        *dpj = dot(dot_h, &v[j * kv_row + g * d..][..d]);
                        sum += pj * *dpj;
                        axpy(pj, dot_h, &mut dvg[j * d..][..d]);
                    }
                    let dqt = &mut dqg[(hi * n + t) * d..][..d];
                    for (j, (&dpj, &pj)) in dp.iter().zip(pr).enumerate() {
                        let ds = pj * (dpj - sum) * scale;
                        axpy(ds, &k[j * kv_row + g * d..][..d], dqt);
                        axpy(ds, qh, &mut dkg[j * d..][..d]);
                    }
                }
            }
            (dqg, dkg, dvg)
        })
        .collect();
    for (g, (dqg, dkg, dvg)) in parts.iter().enumerate() {
        for t in 0..n {
            dk[t * kv_row + g * d..][..d].copy_from_slice(&dkg[t * d..][..d]);
            dv[t * kv_row + g * d..][..d].copy_from_slice(&dvg[t * d..][..d]);
            for hi in 0..group {
                let h = g * group + hi;
                dq[t * q_row + h * d..][..d].copy_from_slice(&dqg[(hi * n + t) * d..][..d]);
            }
        }
    }
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{dot, numeric_gradient, relative_error};
    use crate::testutil::randn;

    const SHAPES: [(usize, AttnShape); 5] = [
        (1, AttnShape { n_head: 1, n_head_kv: 1, head_dim: 4 }),
        (5, AttnShape { n_head: 2, n_head_kv: 2, head_dim: 4 }),
        (6, AttnShape { n_head: 4, n_head_kv: 2, head_dim: 3 }),
        (7, AttnShape { n_head: 6, n_head_kv: 2, head_dim: 4 }),
        (4, AttnShape { n_head: 3, n_head_kv: 1, head_dim: 8 }),
    ];

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = crunch_testkit::Rng::new(7);
        for (n, s) in SHAPES {
            let d = s.head_dim;
            let q = randn(&mut rng, n * s.n_head * d, 1.0);
            let k = randn(&mut rng, n * s.n_head_kv * d, 1.0);
            let v = randn(&mut rng, n * s.n_head_kv * d, 1.0);
            let dy = randn(&mut rng, n * s.n_head * d, 1.0);
            let (_, p) = attention(&q, &k, &v, n, s);
            let (dq, dk, dv) = attention_backward(&q, &k, &v, &p, &dy, n, s);
            let f = |q: &[f64], k: &[f64], v: &[f64]| dot(&dy, &attention(q, k, v, n, s).0);
            let wq = numeric_gradient(&q, 1e-5, |q| f(q, &k, &v));
            let wk = numeric_gradient(&k, 1e-5, |k| f(&q, k, &v));
            let wv = numeric_gradient(&v, 1e-5, |v| f(&q, &k, v));
            for (name, got, want) in [("q", &dq, &wq), ("k", &dk, &wk), ("v", &dv, &wv)] {
                let e = relative_error(got, want);
                assert!(e < 1e-6, "n {n} {s:?}: d{name} relative error {e:e}");
            }
        }
    }

    #[test]
    fn f32_forward_is_crunch_models() {
        let mut rng = crunch_testkit::Rng::new(8);
        for (n, s) in SHAPES.into_iter().chain([(20, AttnShape { n_head: 6, n_head_kv: 2, head_dim: 16 })]) {
            let d = s.head_dim;
            let mut r = |len: usize| (0..len).map(|_| rng.normal()).collect::<Vec<f32>>();
            let (q, k, v) = (r(n * s.n_head * d), r(n * s.n_head_kv * d), r(n * s.n_head_kv * d));
            let want = crunch_model::attention::attention(&q, &k, &v, 0, n, s);
            let got = attention(&q, &k, &v, n, s).0;
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "n {n} {s:?}: {a} vs {b}");
            }
        }
    }
}
