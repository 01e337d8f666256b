//! Loss heads over logits (`n` rows of `n_vocab`), each with its gradient with respect to the
//! logits: causal-LM cross-entropy (fine-tuning) and `KL(p_base ‖ p_model)` against given base
//! log-probabilities (distillation; full vocabulary for now, top-k later).
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
}
