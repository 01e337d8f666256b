//! Causal grouped-query attention over one sequence (positions `0..n`), as crunch-model's
//! [`crunch_model::attention::attention`] computes it: scores `q·k` scaled by `1 / sqrt(head_dim)`,
//! soft-max over the positions a query sees, output `Σ p v`; query head `h` reads KV head
//! `h / (n_head / n_head_kv)`.
//!
//! Forward and backward are written as matrix products over blocks of queries and the keys they
//! see ([`Float::gemm`]: the blocked SIMD GEMM in f32), so that at training contexts (hundreds of
//! tokens) attention costs a few GEMMs per head rather than a dot product per (query, key).

use rayon::prelude::*;

pub use crunch_model::attention::AttnShape;

use crate::float::{Float, Strides};
use crate::ops::add_assign;

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

/// Queries per block: each block's scores and outputs are matrix products over the keys its last
/// query sees (the causal part only).
const QUERY_BLOCK: usize = 64;

/// Attention of `n` queries over the `n` keys and values of the same sequence. `q` is
/// `n × (n_head · head_dim)`, `k` and `v` are `n × (n_head_kv · head_dim)`. Returns the output
/// (`n × (n_head · head_dim)`) and the attention probabilities, `n_head` matrices of `n × n`
/// (row `t` is zero after column `t`), which the backward pass needs.
///
/// Work is split into (head, block of [`QUERY_BLOCK`] queries) tasks, later blocks (more keys)
/// first; each task is `S = Q Kᵀ` over the visible keys, a soft-max per row ([`Float::softmax`]),
/// `O = P V`, the products by [`Float::gemm`] (crunch-model's prompt attention does the same in
/// f32).
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
    // (head, block, the block's rows of that head's probabilities)
    let mut tasks: Vec<(usize, usize, &mut [T])> = probs
        .chunks_mut(n * n)
        .enumerate()
        .flat_map(|(h, p)| p.chunks_mut(QUERY_BLOCK * n).enumerate().map(move |(b, pb)| (h, b, pb)))
        .collect();
    tasks.sort_by_key(|&(h, b, _)| (std::cmp::Reverse(b), h));
    let blocks: Vec<(usize, usize, Vec<T>)> = tasks
        .into_par_iter()
        .map(|(h, b, pb)| {
            let kvh = h / group;
            let t0 = b * QUERY_BLOCK;
            let nq = pb.len() / n;
            let n_vis = t0 + nq;
            let ps = Strides { rs: n, cs: 1 };
            // scores: row t (query t0 + t) against keys 0..n_vis; K viewed as d × n_vis
            let (qs, ks) = (Strides { rs: q_row, cs: 1 }, Strides { rs: 1, cs: kv_row });
            T::gemm(false, (nq, n_vis, d), pb, ps, &q[t0 * q_row + h * d..], qs, &k[kvh * d..], ks);
            for (t, row) in pb.chunks_exact_mut(n).enumerate() {
                let visible = t0 + t + 1;
                T::softmax(&mut row[..visible], scale);
                row[visible..].fill(T::ZERO);
            }
            let mut o = vec![T::ZERO; nq * d];
            let (os, vs) = (Strides { rs: d, cs: 1 }, Strides { rs: kv_row, cs: 1 });
            T::gemm(false, (nq, d, n_vis), &mut o, os, pb, ps, &v[kvh * d..], vs);
            (h, t0, o)
        })
        .collect();
    for (h, t0, o) in &blocks {
        for (t, or) in o.chunks_exact(d).enumerate() {
            out[(t0 + t) * q_row + h * d..][..d].copy_from_slice(or);
        }
    }
    (out, probs)
}

/// The vector-Jacobian product of [`attention`] with respect to `q`, `k` and `v`, from the
/// probabilities it returned: `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`,
/// `dQ = scale · dS K`, `dK = scale · dSᵀ Q`, `dV = Pᵀ dO` (K and V gradients summed over the
/// query heads that share a KV head).
///
/// One task per query head, each by blocks of [`QUERY_BLOCK`] queries over the keys they see;
/// every product is a [`Float::gemm`] (`dK` and `dV` accumulated across the blocks).
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
    assert_eq!(probs.len(), s.n_head * n * n, "probs");
    assert_eq!(dout.len(), q.len(), "dout");
    let mut dq = vec![T::ZERO; q.len()];
    let mut dk = vec![T::ZERO; k.len()];
    let mut dv = vec![T::ZERO; v.len()];
    if n == 0 || d == 0 {
        return (dq, dk, dv);
    }
    // Per query head: its dQ, and its parts of its KV head's dK and dV (n × d each).
    let parts: Vec<(Vec<T>, Vec<T>, Vec<T>)> = (0..s.n_head)
        .into_par_iter()
        .map(|h| {
            let g = h / group;
            let p = &probs[h * n * n..][..n * n];
            let (mut dqh, mut dkh, mut dvh) = (vec![T::ZERO; n * d], vec![T::ZERO; n * d], vec![T::ZERO; n * d]);
            let mut ds = vec![T::ZERO; QUERY_BLOCK.min(n) * n];
            let (qs, kvs, hs) = (Strides { rs: q_row, cs: 1 }, Strides { rs: kv_row, cs: 1 }, Strides { rs: d, cs: 1 });
            let kv_t = Strides { rs: 1, cs: kv_row };
            for t0 in (0..n).step_by(QUERY_BLOCK) {
                let nq = QUERY_BLOCK.min(n - t0);
                let n_vis = t0 + nq;
                let pb = &p[t0 * n..];
                let ps_t = Strides { rs: 1, cs: n };
                let dob = &dout[t0 * q_row + h * d..];
                // dV[0..n_vis] += Pᵀ dO
                T::gemm(true, (n_vis, d, nq), &mut dvh, hs, pb, ps_t, dob, qs);
                // dP = dO Vᵀ, then dS = scale · P ⊙ (dP − rowsum(P ⊙ dP)) in place
                let dss = Strides { rs: n_vis, cs: 1 };
                let dsb = &mut ds[..nq * n_vis];
                T::gemm(false, (nq, n_vis, d), dsb, dss, dob, qs, &v[g * d..], kv_t);
                for (t, row) in dsb.chunks_exact_mut(n_vis).enumerate() {
                    let pr = &pb[t * n..][..n_vis];
                    let mut sum = T::ZERO;
                    for (&pj, &dpj) in pr.iter().zip(row.iter()) {
                        sum += pj * dpj;
                    }
                    for (x, &pj) in row.iter_mut().zip(pr) {
                        *x = pj * (*x - sum) * scale;
                    }
                }
                // dQ[t0..t0 + nq] = dS K; dK[0..n_vis] += dSᵀ Q
                T::gemm(false, (nq, d, n_vis), &mut dqh[t0 * d..], hs, dsb, dss, &k[g * d..], kvs);
                let dss_t = Strides { rs: 1, cs: n_vis };
                T::gemm(true, (n_vis, d, nq), &mut dkh, hs, dsb, dss_t, &q[t0 * q_row + h * d..], qs);
            }
            (dqh, dkh, dvh)
        })
        .collect();
    for (h, (dqh, dkh, dvh)) in parts.iter().enumerate() {
        let g = h / group;
        for t in 0..n {
            dq[t * q_row + h * d..][..d].copy_from_slice(&dqh[t * d..][..d]);
            add_assign(&mut dk[t * kv_row + g * d..][..d], &dkh[t * d..][..d]);
            add_assign(&mut dv[t * kv_row + g * d..][..d], &dvh[t * d..][..d]);
        }
    }
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{numeric_gradient, relative_error};
    use crate::testutil::randn;

    #[inline]
    fn dot<T: Float>(a: &[T], b: &[T]) -> T {
        let mut s = T::ZERO;
        for (&x, &y) in a.iter().zip(b) {
            s += x * y;
        }
        s
    }

    #[inline]
    fn axpy<T: Float>(alpha: T, x: &[T], y: &mut [T]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o += alpha * v;
        }
    }

    /// The first implementation of [`attention`] (one query and key at a time, dot products and
    /// AXPYs), kept as the reference of the blocked one.
    ///
    /// Attention of `n` queries over the `n` keys and values of the same sequence. `q` is
    /// `n × (n_head · head_dim)`, `k` and `v` are `n × (n_head_kv · head_dim)`. Returns the output
    /// (`n × (n_head · head_dim)`) and the attention probabilities, `n_head` matrices of `n × n`
    /// (row `t` is zero after column `t`), which the backward pass needs.
    ///
    /// # Panics
    /// When the lengths do not match the shape or `n_head` is not a multiple of `n_head_kv`.
    fn attention_reference<T: Float>(q: &[T], k: &[T], v: &[T], n: usize, s: AttnShape) -> (Vec<T>, Vec<T>) {
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

    /// The first implementation of [`attention_backward`] (one query and key at a time), kept as
    /// the reference of the blocked one.
    ///
    /// The vector-Jacobian product of [`attention`] with respect to `q`, `k` and `v`, from the
    /// probabilities it returned: `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`,
    /// `dQ = scale · dS K`, `dK = scale · dSᵀ Q`, `dV = Pᵀ dO` (K and V gradients summed over the
    /// query heads that share a KV head).
    ///
    /// # Panics
    /// As [`attention`].
    fn attention_backward_reference<T: Float>(
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

    /// The blocked attention (GEMMs and the vectorized soft-max in f32) equals the first,
    /// one-query-at-a-time implementation, forward and backward, in f64 (to 1e-12: the same math,
    /// other summation orders) and in f32 (to 2e-5 of the largest value: f32 rounding over sums of
    /// up to 150 terms), on shapes that span several query blocks.
    #[test]
    fn blocked_equals_reference() {
        let mut rng = crunch_testkit::Rng::new(9);
        let shapes = [
            (7, AttnShape { n_head: 6, n_head_kv: 2, head_dim: 4 }),
            (150, AttnShape { n_head: 3, n_head_kv: 1, head_dim: 16 }),
            (QUERY_BLOCK, AttnShape { n_head: 2, n_head_kv: 2, head_dim: 8 }),
            (QUERY_BLOCK + 1, AttnShape { n_head: 4, n_head_kv: 2, head_dim: 8 }),
        ];
        fn close<T: Float>(got: &[T], want: &[T], tol: f64, what: &str) {
            assert_eq!(got.len(), want.len(), "{what}");
            let scale = want.iter().fold(1e-30f64, |m, v| m.max(v.to_f64().abs()));
            for (a, b) in got.iter().zip(want) {
                assert!((a.to_f64() - b.to_f64()).abs() <= tol * scale, "{what}: {a:?} vs {b:?}");
            }
        }
        fn run<T: Float>(q: &[T], k: &[T], v: &[T], dy: &[T], n: usize, s: AttnShape, tol: f64) {
            let (o, p) = attention(q, k, v, n, s);
            let (ro, rp) = attention_reference(q, k, v, n, s);
            close(&o, &ro, tol, "out");
            close(&p, &rp, tol, "probs");
            let got = attention_backward(q, k, v, &p, dy, n, s);
            let want = attention_backward_reference(q, k, v, &p, dy, n, s);
            close(&got.0, &want.0, tol, "dq");
            close(&got.1, &want.1, tol, "dk");
            close(&got.2, &want.2, tol, "dv");
        }
        for (n, s) in shapes {
            let d = s.head_dim;
            let q = randn(&mut rng, n * s.n_head * d, 1.0);
            let k = randn(&mut rng, n * s.n_head_kv * d, 1.0);
            let v = randn(&mut rng, n * s.n_head_kv * d, 1.0);
            let dy = randn(&mut rng, n * s.n_head * d, 1.0);
            run(&q, &k, &v, &dy, n, s, 1e-12);
            let f = |x: &[f64]| crate::float::cast::<f64, f32>(x);
            run(&f(&q), &f(&k), &f(&v), &f(&dy), n, s, 2e-5);
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
