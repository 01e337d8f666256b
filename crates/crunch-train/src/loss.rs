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
    let max = row.iter().fold(T::NEG_INFINITY, |m, &v| m.max(v));
    let sum: T = row.iter().map(|&v| (v - max).exp()).sum();
    let lse = max + sum.ln();
    row.iter().map(|&v| v - lse).collect()
}

/// Cross-entropy of row `t` of `logits` against `targets[t]`, averaged over the rows, and its
/// gradient `(softmax − onehot) / rows`.
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
            let lp = log_softmax(row);
            for (g, &l) in g.iter_mut().zip(&lp) {
                *g = l.exp() * inv;
            }
            g[t] -= inv;
            -lp[t].to_f64()
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
        .map(|((g, row), base)| {
            let lp = log_softmax(row);
            let mut kl = 0f64;
            for ((g, &l), &b) in g.iter_mut().zip(&lp).zip(base) {
                let pb = b.exp();
                if pb > T::ZERO {
                    kl += (pb * (b - l)).to_f64();
                }
                *g = (l.exp() - pb) * inv;
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
        .map(|(r, (g, row))| {
            let ids = &top.ids[r * k..(r + 1) * k];
            let logp = &top.logp[r * k..(r + 1) * k];
            // The model's log-probabilities, in f64 (the rest bucket is a difference of sums).
            let max = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.to_f64()));
            let z: f64 = row.iter().map(|v| (v.to_f64() - max).exp()).sum();
            let lz = max + z.ln();
            let mut in_top = vec![false; n_vocab];
            let mut kl = 0.0;
            for (&id, &lp) in ids.iter().zip(logp) {
                let id = id as usize;
                assert!(id < n_vocab, "token id {id} outside a vocabulary of {n_vocab}");
                in_top[id] = true;
                let (lp, lq) = (lp as f64, row[id].to_f64() - lz);
                let p = lp.exp();
                kl += p * (lp - lq);
                g[id] = T::from_f64((lq.exp() - p) * inv);
            }
            let p_rest = if top.log_rest[r].is_finite() { (top.log_rest[r] as f64).exp() } else { 0.0 };
            let q_rest: f64 = row.iter().zip(&in_top).filter(|(_, &t)| !t).map(|(v, _)| (v.to_f64() - lz).exp()).sum();
            let q_rest = q_rest.max(1e-30);
            if p_rest > 0.0 {
                kl += p_rest * (top.log_rest[r] as f64 - q_rest.ln());
            }
            let f = 1.0 - p_rest / q_rest;
            for ((g, v), &t) in g.iter_mut().zip(row).zip(&in_top) {
                if !t {
                    *g = T::from_f64((v.to_f64() - lz).exp() * f * inv);
                }
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
