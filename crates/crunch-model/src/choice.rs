//! Multiple-choice scoring, HellaSwag-style, the way llama.cpp's `llama-perplexity --hellaswag`
//! does it: each candidate is `context + " " + ending`, tokenized with special tokens added; the
//! tokens all candidates share are evaluated once, and each ending is scored by the log-likelihood
//! of its tokens after that common prefix.
//!
//! Two predictions per task: `acc` picks the ending with the largest summed log-likelihood;
//! `acc_norm` the largest mean log-likelihood per ending token (what llama.cpp reports).

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::llama::LlamaModel;
use crate::perplexity::log_softmax;
use crate::tokenizer::Tokenizer;

/// One multiple-choice question.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChoiceTask {
    pub context: String,
    pub endings: Vec<String>,
    /// Index of the correct ending.
    pub label: usize,
}

/// How a model scored one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    /// Summed log-likelihood of each ending's tokens.
    pub logprob: Vec<f64>,
    /// Tokens scored for each ending.
    pub n_tokens: Vec<usize>,
    /// Ending with the largest summed log-likelihood.
    pub pred: usize,
    /// Ending with the largest mean log-likelihood per token.
    pub pred_norm: usize,
}

fn best(v: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in v.enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}

/// Score one task. `cache` is reused between tasks (it is cleared here) and must hold the
/// longest candidate.
///
/// # Errors
/// Fewer than two endings, a label out of range, an ending that adds no token after the shared
/// prefix, candidates that share no token (no BOS and different first tokens), or a candidate
/// longer than the cache.
pub fn score_task(model: &LlamaModel, tok: &Tokenizer, task: &ChoiceTask, cache: &mut KvCache) -> Result<TaskScore> {
    if task.endings.len() < 2 {
        return Err(ModelError::Input(format!("a task needs at least 2 endings, it has {}", task.endings.len())));
    }
    if task.label >= task.endings.len() {
        return Err(ModelError::Input(format!("label {} but {} endings", task.label, task.endings.len())));
    }
    let seqs: Vec<Vec<u32>> = task
        .endings
        .iter()
        .map(|e| tok.encode(&format!("{} {}", task.context, e), true))
        .collect::<std::result::Result<_, _>>()?;
    let prefix = (0..seqs.iter().map(Vec::len).min().unwrap_or(0))
        .take_while(|&k| seqs.iter().all(|s| s[k] == seqs[0][k]))
        .count();
    if prefix == 0 {
        return Err(ModelError::Input("the candidates share no first token (and the vocabulary adds no BOS)".into()));
    }
    if let Some(i) = seqs.iter().position(|s| s.len() == prefix) {
        return Err(ModelError::Input(format!("ending {i} adds no token after the shared prefix")));
    }
    let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);
    if longest > cache.n_ctx() {
        return Err(ModelError::ContextFull { have: 0, add: longest, n_ctx: cache.n_ctx() });
    }
    let n_vocab = model.config.n_vocab;
    cache.clear();
    let last = model.forward_with(&seqs[0][..prefix], cache, prefix - 1, None)?;
    let mut logprob = Vec::with_capacity(seqs.len());
    let mut n_tokens = Vec::with_capacity(seqs.len());
    for s in &seqs {
        cache.truncate(prefix);
        let mut lp = log_softmax(&last[..n_vocab], s[prefix] as usize);
        // Ending tokens except the last give the logits for the tokens after them.
        let rest = &s[prefix..s.len() - 1];
        if !rest.is_empty() {
            let logits = model.forward(rest, cache)?;
            for (row, &t) in logits.chunks_exact(n_vocab).zip(&s[prefix + 1..]) {
                lp += log_softmax(row, t as usize);
            }
        }
        logprob.push(lp);
        n_tokens.push(s.len() - prefix);
    }
    let pred = best(logprob.iter().copied());
    let pred_norm = best(logprob.iter().zip(&n_tokens).map(|(l, &n)| l / n as f64));
    Ok(TaskScore { logprob, n_tokens, pred, pred_norm })
}

/// Accuracy over tasks with its 95% Wilson interval (as llama.cpp prints it), all in percent.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub correct: usize,
    pub total: usize,
    pub pct: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

impl Accuracy {
    pub fn new(correct: usize, total: usize) -> Self {
        if total == 0 {
            return Accuracy { correct, total, pct: f64::NAN, ci_low: f64::NAN, ci_high: f64::NAN };
        }
        let n = total as f64;
        let f = correct as f64 / n;
        let za = 1.959_963_984_54f64;
        let z = za * za / n;
        let cnf = z * (n * (4.0 * f * (1.0 - f) + z)).sqrt() / (2.0 * za);
        let a = (f + z * 0.5 - cnf) / (1.0 + z);
        let b = (f + z * 0.5 + cnf) / (1.0 + z);
        Accuracy { correct, total, pct: 100.0 * f, ci_low: 100.0 * a, ci_high: 100.0 * b }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval() {
        let a = Accuracy::new(50, 100);
        assert!((a.pct - 50.0).abs() < 1e-9);
        assert!(a.ci_low < 50.0 && a.ci_high > 50.0 && (a.ci_low - 40.4).abs() < 0.2, "{a:?}");
        let all = Accuracy::new(10, 10);
        assert!(all.ci_high <= 100.0 + 1e-9 && all.ci_low > 60.0);
        assert_eq!(best([1.0, 3.0, 3.0, 2.0].into_iter()), 1);
    }
}
