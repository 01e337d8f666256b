//! Loss heads over logits (`n` rows of `n_vocab`), each with its gradient with respect to the
//! logits: causal-LM cross-entropy (fine-tuning) and `KL(p_base ‖ p_model)` against given base
//! log-probabilities (distillation), over the whole vocabulary or over the base's `k` most likely
//! tokens and one bucket for the rest ([`kl_top_k`], what `crunch distill` trains on: the base's
//! view of a text is computed once and kept as `crunch eval compare` keeps it).
//!
//! Losses are means over the scored rows; the gradients are of that mean. The per-row losses are
//! summed in row order (not by a parallel reduction, whose tree depends on work stealing), so a
//! loss is bit-identical from run to run.

use rayon::prelude::*;

use crate::float::Float;

/// `log softmax` of one row (max subtracted first).
pub fn log_softmax<T: Float>(row: &[T]) -> Vec<T> {
    let mut out = vec![T::ZERO; row.len()];
    let (max, sum) = exp_row(row, &mut out);
    let lse = max + sum.ln();
    for (o, &v) in out.iter_mut().zip(row) {
        *o = v - lse;
    }
    out
}

/// `out = e^(row − max)` (the unnormalized soft-max), returning `(max, Σ out)`, by the row
/// kernels of [`Float`] ([`Float::max_of`], [`Float::exp_sum`]: crunch-quant's vectorized ones in
/// f32, plain loops in f64) — one `exp` per logit and no allocation, where a log-softmax row and
/// `exp` of it cost two `exp` per logit and a row-sized vector.
fn exp_row<T: Float>(row: &[T], out: &mut [T]) -> (T, T) {
    let max = T::max_of(row);
    out.copy_from_slice(row);
    let sum = T::exp_sum(out, max);
    (max, sum)
}

/// `Σ x` in f64 over eight interleaved partial sums (independent additions, which the compiler
/// can keep in vector registers; the order is fixed, so the result is too).
fn sum_f64<T: Float>(x: &[T]) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v.to_f64();
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|v| v.to_f64()).sum();
    acc.iter().sum::<f64>() + tail
}

/// Cross-entropy of row `t` of `logits` against `targets[t]`, averaged over the rows, and its
/// gradient `(softmax − onehot) / rows`.
///
/// Per row, [`exp_row`] writes `e^(l − max)` into the gradient row and returns its sum `Z`; the
/// gradient is that times `1 / (Z · rows)` (minus `1 / rows` at the target), the loss
/// `max + ln Z − l_t`. In f32 that is one vectorized `exp` per logit; the `f64` instance (plain
/// loops) is the reference of the finite-difference checks and of the f32 test.
///
/// # Panics
/// When `logits` is not `targets.len() × n_vocab` or a target is `>= n_vocab`.
pub fn cross_entropy<T: Float>(logits: &[T], n_vocab: usize, targets: &[u32]) -> (T, Vec<T>) {
    assert_eq!(logits.len(), targets.len() * n_vocab, "logits for {} targets of {n_vocab}", targets.len());
    let mut grad = vec![T::ZERO; logits.len()];
    if targets.is_empty() || n_vocab == 0 {
        return (T::ZERO, grad);
    }
    let inv = T::ONE / T::from_f64(targets.len() as f64);
    let loss: f64 = grad
        .par_chunks_mut(n_vocab)
        .zip(logits.par_chunks(n_vocab))
        .zip(targets.par_iter())
        .map(|((g, row), &t)| {
            let t = t as usize;
            assert!(t < n_vocab, "target {t} outside a vocabulary of {n_vocab}");
            let (max, sum) = exp_row(row, g);
            let f = inv / sum;
            for v in g.iter_mut() {
                *v *= f;
            }
            g[t] -= inv;
            (max + sum.ln()).to_f64() - row[t].to_f64()
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    (T::from_f64(loss / targets.len() as f64), grad)
}

/// Causal-LM cross-entropy: the logits of position `t` predict `tokens[t + 1]`, so the last row
/// is not scored (its gradient is zero). `logits` is `tokens.len() × n_vocab`.
///
/// # Panics
/// As [`cross_entropy`].
pub fn causal_lm<T: Float>(logits: &[T], n_vocab: usize, tokens: &[u32]) -> (T, Vec<T>) {
    assert_eq!(logits.len(), tokens.len() * n_vocab, "logits for {} tokens of {n_vocab}", tokens.len());
    if tokens.len() < 2 {
        return (T::ZERO, vec![T::ZERO; logits.len()]);
    }
    let scored = (tokens.len() - 1) * n_vocab;
    let (loss, mut grad) = cross_entropy(&logits[..scored], n_vocab, &tokens[1..]);
    grad.resize(logits.len(), T::ZERO);
    (loss, grad)
}

/// `KL(p_base ‖ p_model) = Σᵥ p_base (log p_base − log p_model)` per row, averaged over the
/// rows, and its gradient with respect to the model's logits, `(p_model − p_base) / rows`.
/// `base_logprobs` are the base model's log-probabilities (each row normalized).
///
/// Per row: the model's soft-max by [`exp_row`] (into the gradient row), `p_base = e^b` by
/// [`Float::exp_slice`] into a per-task scratch row, the row's KL summed in f64.
///
/// # Panics
/// When `logits` and `base_logprobs` differ in length or are not whole rows.
pub fn kl_divergence<T: Float>(logits: &[T], n_vocab: usize, base_logprobs: &[T]) -> (T, Vec<T>) {
    assert_eq!(logits.len(), base_logprobs.len(), "logits and base log-probabilities");
    let mut grad = vec![T::ZERO; logits.len()];
    if n_vocab == 0 || logits.is_empty() {
        return (T::ZERO, grad);
    }
    assert_eq!(logits.len() % n_vocab, 0, "logits are not whole rows of {n_vocab}");
    let rows = logits.len() / n_vocab;
    let inv = T::ONE / T::from_f64(rows as f64);
    let loss: f64 = grad
        .par_chunks_mut(n_vocab)
        .zip(logits.par_chunks(n_vocab))
        .zip(base_logprobs.par_chunks(n_vocab))
        .map_init(Vec::new, |pb: &mut Vec<T>, ((g, row), base)| {
            let (max, sum) = exp_row(row, g);
            let lse = max + sum.ln();
            pb.clear();
            pb.extend_from_slice(base);
            T::exp_slice(pb);
            let mut kl = 0f64;
            for ((&p, &b), &l) in pb.iter().zip(base).zip(row) {
                if p > T::ZERO {
                    kl += (p * (b - (l - lse))).to_f64();
                }
            }
            let f = T::ONE / sum;
            for (g, &p) in g.iter_mut().zip(pb.iter()) {
                *g = (*g * f - p) * inv;
            }
            kl
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    (T::from_f64(loss / rows as f64), grad)
}

/// The base model's top-k view of some positions (`rows = log_rest.len()`): for row `r`, tokens
/// `ids[r·k..(r+1)·k]` with log-probabilities `logp[r·k..]`, and `ln` of the probability of all
/// other tokens (`−∞` when none is left). The layout of `crunch_model::kld::BaseLogits`.
#[derive(Clone, Copy, Debug)]
pub struct TopK<'a> {
    pub k: usize,
    pub ids: &'a [u32],
    pub logp: &'a [f32],
    pub log_rest: &'a [f32],
}

impl TopK<'_> {
    /// Positions covered.
    pub fn rows(&self) -> usize {
        self.log_rest.len()
    }
}

/// `KL(p_base ‖ p_model)` with the base known only through its top `k` tokens and the mass of
/// the rest: `Σᵢ pᵢ (log pᵢ − log qᵢ) + p_rest (log p_rest − log q_rest)`, where `q_rest` is the
/// model's probability of the same other tokens (the estimate `crunch eval compare` reports). The
/// first `top.rows()` rows of `logits` are scored (later rows get a zero gradient); the loss is
/// their mean. The gradient with respect to logit `j` of a row is `(q_j − p_j) / rows` for a top
/// token and `q_j (1 − p_rest / q_rest) / rows` for any other: the base's leftover mass spread as
/// the model spreads its own.
///
/// Per row, `e^(l − max)` once by [`exp_row`] (vectorized in f32) into the gradient row; the
/// normalizer and `q_rest` are sums of those in f64 (`q_rest` summed directly over the other
/// tokens, their top entries zeroed first: no cancellation when the top-k holds almost all the
/// mass), the top tokens' terms in f64 as `crunch_model::kld::kld_top_k` computes them.
///
/// # Panics
/// When `top` covers more rows than `logits` holds, its arrays disagree with `k`, or a token id is
/// `>= n_vocab`.
pub fn kl_top_k<T: Float>(logits: &[T], n_vocab: usize, top: TopK<'_>) -> (T, Vec<T>) {
    let rows = top.rows();
    let k = top.k;
    assert!(n_vocab > 0 && logits.len().is_multiple_of(n_vocab), "logits are not whole rows of {n_vocab}");
    assert!(rows * n_vocab <= logits.len(), "{rows} base rows for {} logit rows", logits.len() / n_vocab);
    assert!(top.ids.len() == rows * k && top.logp.len() == rows * k, "top-{k} arrays for {rows} rows");
    let mut grad = vec![T::ZERO; logits.len()];
    if rows == 0 {
        return (T::ZERO, grad);
    }
    let inv = 1.0 / rows as f64;
    let per_row: Vec<f64> = grad[..rows * n_vocab]
        .par_chunks_mut(n_vocab)
        .zip(logits[..rows * n_vocab].par_chunks(n_vocab))
        .enumerate()
        .map_init(Vec::new, |top_grad: &mut Vec<f64>, (r, (g, row))| {
            let ids = &top.ids[r * k..(r + 1) * k];
            let logp = &top.logp[r * k..(r + 1) * k];
            // The model's log-probabilities: l − lz with lz = max + ln Σ e^(l − max) in f64.
            let (max, _) = exp_row(row, g);
            let z = sum_f64(g);
            let lz = max.to_f64() + z.ln();
            let mut kl = 0.0;
            top_grad.clear();
            for (&id, &lp) in ids.iter().zip(logp) {
                let id = id as usize;
                assert!(id < n_vocab, "token id {id} outside a vocabulary of {n_vocab}");
                let (lp, lq) = (lp as f64, row[id].to_f64() - lz);
                let p = lp.exp();
                kl += p * (lp - lq);
                top_grad.push((lq.exp() - p) * inv);
            }
            // The other tokens' share: their e^(l − max), summed directly.
            for &id in ids {
                g[id as usize] = T::ZERO;
            }
            let p_rest = if top.log_rest[r].is_finite() { (top.log_rest[r] as f64).exp() } else { 0.0 };
            let q_rest = (sum_f64(g) / z).max(1e-30);
            if p_rest > 0.0 {
                kl += p_rest * (top.log_rest[r] as f64 - q_rest.ln());
            }
            // q_j (1 − p_rest / q_rest) / rows for the others (their top entries are zero), then the
            // top tokens' own values.
            let c = T::from_f64((1.0 - p_rest / q_rest) * inv / z);
            for v in g.iter_mut() {
                *v *= c;
            }
            for (&id, &d) in ids.iter().zip(top_grad.iter()) {
                g[id as usize] = T::from_f64(d);
            }
            kl
        })
        .collect();
    (T::from_f64(per_row.iter().sum::<f64>() * inv), grad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{numeric_gradient, relative_error};
    use crate::testutil::randn;

    #[test]
    fn cross_entropy_gradient_matches_finite_differences() {
        let mut rng = crunch_testkit::Rng::new(10);
        for (n, v) in [(1, 2), (3, 7), (6, 33)] {
            let logits = randn(&mut rng, n * v, 2.0);
            let tokens: Vec<u32> = (0..n).map(|_| (rng.next_u64() % v as u64) as u32).collect();
            let (_, g) = causal_lm(&logits, v, &tokens);
            let want = numeric_gradient(&logits, 1e-5, |l| causal_lm(l, v, &tokens).0);
            let e = relative_error(&g, &want);
            assert!(e < 1e-6 || (n == 1 && g.iter().all(|&x| x == 0.0)), "n {n} v {v}: {e:e}");
            let (_, g) = cross_entropy(&logits, v, &tokens);
            let want = numeric_gradient(&logits, 1e-5, |l| cross_entropy(l, v, &tokens).0);
            let e = relative_error(&g, &want);
            assert!(e < 1e-6, "n {n} v {v}: {e:e}");
        }
        // Uniform logits: loss ln V.
        let (l, _) = cross_entropy(&[0.0f64; 8], 8, &[3]);
        assert!((l - 8f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn kl_gradient_matches_finite_differences() {
        let mut rng = crunch_testkit::Rng::new(11);
        for (n, v) in [(1, 2), (4, 9), (3, 40)] {
            let logits = randn(&mut rng, n * v, 2.0);
            let base: Vec<f64> = randn(&mut rng, n * v, 2.0).chunks(v).flat_map(log_softmax).collect();
            let (kl, g) = kl_divergence(&logits, v, &base);
            assert!(kl > 0.0);
            let want = numeric_gradient(&logits, 1e-5, |l| kl_divergence(l, v, &base).0);
            let e = relative_error(&g, &want);
            assert!(e < 1e-6, "n {n} v {v}: {e:e}");
            // Zero at the base itself.
            let (kl0, g0) = kl_divergence(&base, v, &base);
            assert!(kl0.abs() < 1e-12 && g0.iter().all(|x| x.abs() < 1e-12));
        }
    }

    /// The f32 loss heads (crunch-quant's vectorized `exp`, max and sum) against the f64
    /// reference (plain loops, what the finite-difference checks run) on the same logits, rows
    /// of a vocabulary-sized 5000 with logits of spread 3 (so soft-max values span ~1e-8..1e-1):
    /// the losses within 2e-6 absolute plus 2e-6 relative (f32 rounding of the logits'
    /// differences and of a log-sum-exp over 16-lane sums; measured ≤ 5e-7), every gradient entry
    /// within 1e-5 of the largest (`exp` within 2 ulp, sums within a few 1e-7; measured ≤ 2e-7).
    #[test]
    fn f32_heads_match_f64_reference() {
        let mut rng = crunch_testkit::Rng::new(13);
        let (n, v, k) = (5, 5000, 20);
        let logits64 = randn(&mut rng, n * v, 3.0);
        let base64: Vec<f64> = randn(&mut rng, n * v, 3.0).chunks(v).flat_map(log_softmax).collect();
        let tokens: Vec<u32> = (0..n).map(|_| (rng.next_u64() % v as u64) as u32).collect();
        // The f64 reference runs on the f32-rounded inputs, so only the arithmetic differs.
        let logits32: Vec<f32> = logits64.iter().map(|&x| x as f32).collect();
        let logits64: Vec<f64> = logits32.iter().map(|&x| x as f64).collect();
        let base32: Vec<f32> = base64.iter().map(|&x| x as f32).collect();
        let base64: Vec<f64> = base32.iter().map(|&x| x as f64).collect();
        let (ids, logp, rest) = top_k_of(&base64[..(n - 1) * v], v, k);
        let top = TopK { k, ids: &ids, logp: &logp, log_rest: &rest };
        type Head<T> = (T, Vec<T>);
        let heads: [(&str, Head<f32>, Head<f64>); 4] = [
            ("cross_entropy", cross_entropy(&logits32, v, &tokens), cross_entropy(&logits64, v, &tokens)),
            ("causal_lm", causal_lm(&logits32, v, &tokens), causal_lm(&logits64, v, &tokens)),
            ("kl_divergence", kl_divergence(&logits32, v, &base32), kl_divergence(&logits64, v, &base64)),
            ("kl_top_k", kl_top_k(&logits32, v, top), kl_top_k(&logits64, v, top)),
        ];
        for (name, (l32, g32), (l64, g64)) in heads {
            let el = (l32 as f64 - l64).abs();
            let scale = g64.iter().fold(0f64, |m, x| m.max(x.abs()));
            let eg = g32.iter().zip(&g64).fold(0f64, |m, (&a, &b)| m.max((a as f64 - b).abs())) / scale;
            eprintln!("{name}: loss {l64} (f32 off by {el:e}), gradient off by {eg:e} of its largest entry");
            assert!(el <= 2e-6 + 2e-6 * l64.abs(), "{name}: loss {l32} vs {l64}");
            assert!(eg <= 1e-5, "{name}: gradient {eg:e}");
        }
    }

    /// A base's top-k view of rows of log-probabilities (the layout `BaseLogits` stores).
    fn top_k_of(base: &[f64], v: usize, k: usize) -> (Vec<u32>, Vec<f32>, Vec<f32>) {
        let (mut ids, mut logp, mut rest) = (Vec::new(), Vec::new(), Vec::new());
        for row in base.chunks(v) {
            let r32: Vec<f32> = row.iter().map(|&x| x as f32).collect();
            let (i, l, r) = crunch_model::kld::top_k_logprobs(&r32, k);
            ids.extend(i);
            logp.extend(l);
            rest.push(r);
        }
        (ids, logp, rest)
    }

    #[test]
    fn top_k_kl_gradient_matches_finite_differences() {
        let mut rng = crunch_testkit::Rng::new(12);
        for (n, v, k, scored) in [(1, 2, 1, 1), (4, 9, 3, 3), (3, 40, 8, 3), (2, 6, 6, 2)] {
            let logits = randn(&mut rng, n * v, 2.0);
            let base: Vec<f64> = randn(&mut rng, n * v, 2.0).chunks(v).flat_map(log_softmax).collect();
            let (ids, logp, rest) = top_k_of(&base[..scored * v], v, k);
            let top = TopK { k, ids: &ids, logp: &logp, log_rest: &rest };
            let (kl, g) = kl_top_k(&logits, v, top);
            assert!(kl > 0.0);
            let want = numeric_gradient(&logits, 1e-5, |l| kl_top_k(l, v, top).0);
            let e = relative_error(&g, &want);
            assert!(e < 1e-6, "n {n} v {v} k {k}: {e:e}");
            assert!(g[scored * v..].iter().all(|&x| x == 0.0), "unscored rows get no gradient");
            // The same number `eval compare` reports for these rows (its top-k estimate).
            let want_kl: f64 = (0..scored)
                .map(|r| {
                    let q: Vec<f32> = logits[r * v..(r + 1) * v].iter().map(|&x| x as f32).collect();
                    let row = crunch_model::kld::TopKRow {
                        ids: &ids[r * k..(r + 1) * k],
                        logp: &logp[r * k..(r + 1) * k],
                        log_rest: rest[r],
                    };
                    crunch_model::kld::kld_top_k(row, &q)
                })
                .sum::<f64>()
                / scored as f64;
            assert!((kl - want_kl).abs() < 1e-5 * want_kl.max(1e-3), "{kl} vs eval compare's {want_kl}");
            // With every token kept it is the full KL.
            if k == v {
                let (full, gf) = kl_divergence(&logits[..scored * v], v, &base[..scored * v]);
                assert!((kl - full).abs() < 1e-5, "{kl} vs {full}");
                assert!(relative_error(&g[..scored * v], &gf) < 1e-5);
            }
        }
    }
}
