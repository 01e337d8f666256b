//! Perplexity exactly as llama.cpp's `llama-perplexity` computes it (tools/perplexity, default
//! mode): tokenize the whole text with special tokens added (`common_tokenize(ctx, text, true)`),
//! cut it into `tokens.len() / n_ctx` chunks of `n_ctx`, put BOS in place of each chunk's first
//! token when the vocabulary adds BOS, evaluate each chunk from an empty cache and score the
//! tokens of its second half: the logits at positions `n_ctx/2 .. n_ctx - 2` predict the next
//! token, `n_ctx - 1 - n_ctx/2` scores per chunk.

use std::time::Instant;

use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::llama::LlamaModel;
use crate::tokenizer::Tokenizer;

/// What to evaluate.
#[derive(Clone, Copy, Debug)]
pub struct PerplexityOptions {
    /// Chunk length (llama.cpp's `-c`, 512 by default).
    pub n_ctx: usize,
    /// At most this many chunks (llama.cpp's `--chunks`); all by default.
    pub n_chunks: Option<usize>,
}

impl Default for PerplexityOptions {
    fn default() -> Self {
        PerplexityOptions { n_ctx: 512, n_chunks: None }
    }
}

/// One evaluated chunk.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkResult {
    /// 0-based chunk index.
    pub index: usize,
    /// Sum of the chunk's negative log-likelihoods.
    pub nll: f64,
    /// Tokens scored in the chunk.
    pub count: usize,
    /// Running perplexity over the chunks so far (what llama.cpp prints as `[i]ppl,`).
    pub ppl: f64,
    /// Running standard error of that perplexity.
    pub ppl_err: f64,
    pub seconds: f64,
}

/// The result of a perplexity run.
#[derive(Clone, Debug, PartialEq)]
pub struct PerplexityResult {
    /// Tokens in the whole text.
    pub n_tokens: usize,
    pub n_ctx: usize,
    pub chunks: Vec<ChunkResult>,
    /// Tokens scored.
    pub count: usize,
    /// Mean negative log-likelihood.
    pub nll: f64,
    /// `exp(nll)`.
    pub ppl: f64,
    /// llama.cpp's `+/-`: `ppl * sqrt((mean(nll²) - nll²) / (count - 1))`.
    pub ppl_err: f64,
    /// Evaluation time (tokenization excluded).
    pub seconds: f64,
}

impl PerplexityResult {
    /// llama.cpp's final line.
    pub fn final_estimate(&self) -> String {
        format!("Final estimate: PPL = {:.4} +/- {:.5}", self.ppl, self.ppl_err)
    }
}

/// Tokenize `text` as llama-perplexity does and compute the perplexity; `on_chunk` sees each chunk
/// as it finishes.
pub fn perplexity(
    model: &LlamaModel,
    tokenizer: &Tokenizer,
    text: &str,
    opts: PerplexityOptions,
    on_chunk: impl FnMut(&ChunkResult),
) -> Result<PerplexityResult> {
    if tokenizer.add_eos() {
        return Err(ModelError::Input("llama-perplexity refuses vocabularies that add EOS".into()));
    }
    let tokens = tokenizer.encode(text, true)?;
    let bos = if tokenizer.add_bos() {
        Some(tokenizer.bos().ok_or(crate::tokenizer::TokenizerError::MissingToken("BOS"))?)
    } else {
        None
    };
    perplexity_tokens(model, &tokens, bos, opts, on_chunk)
}

/// Perplexity of already tokenized text; `bos` replaces the first token of each chunk.
pub fn perplexity_tokens(
    model: &LlamaModel,
    tokens: &[u32],
    bos: Option<u32>,
    opts: PerplexityOptions,
    mut on_chunk: impl FnMut(&ChunkResult),
) -> Result<PerplexityResult> {
    let n_ctx = opts.n_ctx;
    if n_ctx < 4 {
        return Err(ModelError::Input(format!("context of {n_ctx} tokens is too small")));
    }
    if tokens.len() < 2 * n_ctx {
        return Err(ModelError::Input(format!(
            "you need at least {} tokens to evaluate perplexity with a context of {n_ctx}; the text has {}",
            2 * n_ctx,
            tokens.len()
        )));
    }
    let n_chunk_max = tokens.len() / n_ctx;
    let n_chunk = opts.n_chunks.map_or(n_chunk_max, |c| c.min(n_chunk_max));
    let first = n_ctx / 2;
    let n_vocab = model.config.n_vocab;
    let mut cache = model.new_cache(n_ctx);
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let mut chunks = Vec::with_capacity(n_chunk);
    let t_all = Instant::now();
    for i in 0..n_chunk {
        let t0 = Instant::now();
        let start = i * n_ctx;
        let mut batch = tokens[start..start + n_ctx].to_vec();
        if let Some(b) = bos {
            batch[0] = b;
        }
        cache.clear();
        let logits = model.forward_with(&batch, &mut cache, first, None)?;
        // Logits row r is position first + r and predicts the original token at first + r + 1.
        let n_score = n_ctx - 1 - first;
        let targets = &tokens[start + first + 1..start + n_ctx];
        let per_token: Vec<f64> = logits
            .par_chunks(n_vocab)
            .take(n_score)
            .zip(targets.par_iter())
            .map(|(row, &tok)| -log_softmax(row, tok as usize))
            .collect();
        let chunk_nll: f64 = per_token.iter().sum();
        nll += chunk_nll;
        nll2 += per_token.iter().map(|v| v * v).sum::<f64>();
        count += n_score;
        let (ppl, ppl_err) = estimate(nll, nll2, count);
        let c =
            ChunkResult { index: i, nll: chunk_nll, count: n_score, ppl, ppl_err, seconds: t0.elapsed().as_secs_f64() };
        on_chunk(&c);
        chunks.push(c);
    }
    let (ppl, ppl_err) = estimate(nll, nll2, count);
    Ok(PerplexityResult {
        n_tokens: tokens.len(),
        n_ctx,
        chunks,
        count,
        nll: if count > 0 { nll / count as f64 } else { f64::NAN },
        ppl,
        ppl_err,
        seconds: t_all.elapsed().as_secs_f64(),
    })
}

/// `(exp(mean), its standard error)` as llama.cpp's final estimate computes them.
fn estimate(nll: f64, nll2: f64, count: usize) -> (f64, f64) {
    if count == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = nll / count as f64;
    let ppl = mean.exp();
    let var = nll2 / count as f64 - mean * mean;
    let err = if var > 0.0 && count > 1 { (var / (count - 1) as f64).sqrt() * ppl } else { 0.0 };
    (ppl, err)
}

/// llama.cpp's `log_softmax`: max in f32, `Σ expf(l - max)` in f64, result
/// `(logits[tok] - max) - ln Σ`. Returns the log-probability of `tok`.
pub fn log_softmax(logits: &[f32], tok: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    let lt = logits.get(tok).copied().unwrap_or(f32::NEG_INFINITY);
    (lt - max) as f64 - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_of_uniform() {
        let l = vec![0.5f32; 8];
        assert!((log_softmax(&l, 3) + (8f64).ln()).abs() < 1e-9);
        let (p, e) = estimate(2.0 * 10.0, 4.0 * 10.0, 10);
        assert!((p - 2f64.exp()).abs() < 1e-9 && e == 0.0);
    }
}
