//! Perplexity exactly as llama.cpp's `llama-perplexity` computes it (tools/perplexity, default
//! mode): tokenize the whole text with special tokens added (`common_tokenize(ctx, text, true)`),
//! cut it into `tokens.len() / n_ctx` chunks of `n_ctx`, put BOS in place of each chunk's first
//! token when the vocabulary adds BOS, evaluate each chunk from an empty cache and score the
//! tokens of its second half: the logits at positions `n_ctx/2 .. n_ctx - 2` predict the next
//! token, `n_ctx - 1 - n_ctx/2` scores per chunk.

use std::time::Instant;

use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::llama::LlamaModel;
use crate::tokenizer::Tokenizer;

/// What to evaluate.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
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
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
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
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
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

/// How a token sequence is cut into perplexity chunks (llama-perplexity's layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLayout {
    /// Tokens per chunk.
    pub n_ctx: usize,
    /// Chunks evaluated.
    pub n_chunks: usize,
    /// First position whose logits are scored (`n_ctx / 2`).
    pub first: usize,
}

impl ChunkLayout {
    /// The layout for `n_tokens` tokens; errors when the text is shorter than two chunks (as
    /// llama.cpp) or the context is too small.
    pub fn new(n_tokens: usize, opts: PerplexityOptions) -> Result<Self> {
        let n_ctx = opts.n_ctx;
        if n_ctx < 4 {
            return Err(ModelError::Input(format!("context of {n_ctx} tokens is too small (at least 4)")));
        }
        if n_tokens < 2 * n_ctx {
            return Err(ModelError::Input(format!(
                "you need at least {} tokens to evaluate perplexity with a context of {n_ctx}; the text has {n_tokens}",
                2 * n_ctx,
            )));
        }
        let n_chunk_max = n_tokens / n_ctx;
        let n_chunks = opts.n_chunks.map_or(n_chunk_max, |c| c.min(n_chunk_max));
        if n_chunks == 0 {
            return Err(ModelError::Input("--chunks 0: nothing to evaluate".into()));
        }
        Ok(ChunkLayout { n_ctx, n_chunks, first: n_ctx / 2 })
    }

    /// Positions scored per chunk (`n_ctx - 1 - n_ctx / 2`).
    pub fn n_score(&self) -> usize {
        self.n_ctx - 1 - self.first
    }

    /// Tokens of chunk `i` as they are fed to the model (BOS, when given, replaces the first).
    pub fn chunk_input(&self, tokens: &[u32], i: usize, bos: Option<u32>) -> Vec<u32> {
        let mut batch = tokens[i * self.n_ctx..(i + 1) * self.n_ctx].to_vec();
        if let Some(b) = bos {
            batch[0] = b;
        }
        batch
    }

    /// The tokens the scored logits of chunk `i` predict (`n_score` of them).
    pub fn targets<'a>(&self, tokens: &'a [u32], i: usize) -> &'a [u32] {
        let start = i * self.n_ctx;
        &tokens[start + self.first + 1..start + self.n_ctx]
    }
}

/// Evaluate chunk `i` of `tokens` from an empty cache; returns the scored logits
/// (`n_score × n_vocab`, row `r` predicting `targets[r]`).
pub fn eval_chunk(
    model: &LlamaModel,
    cache: &mut KvCache,
    layout: &ChunkLayout,
    tokens: &[u32],
    i: usize,
    bos: Option<u32>,
) -> Result<Vec<f32>> {
    let batch = layout.chunk_input(tokens, i, bos);
    cache.clear();
    let mut logits = model.forward_with(&batch, cache, layout.first, None)?;
    logits.truncate(layout.n_score() * model.config.n_vocab);
    Ok(logits)
}

/// Running sums of negative log-likelihoods, for llama.cpp's estimate and its error.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NllSum {
    pub nll: f64,
    pub nll2: f64,
    pub count: usize,
}

impl NllSum {
    pub fn add(&mut self, v: f64) {
        self.nll += v;
        self.nll2 += v * v;
        self.count += 1;
    }

    /// `(perplexity, its standard error)`.
    pub fn estimate(&self) -> (f64, f64) {
        estimate(self.nll, self.nll2, self.count)
    }

    /// Mean negative log-likelihood.
    pub fn mean(&self) -> f64 {
        if self.count > 0 {
            self.nll / self.count as f64
        } else {
            f64::NAN
        }
    }
}

/// Negative log-likelihood of each target under each logit row (in parallel).
pub fn row_nlls(logits: &[f32], n_vocab: usize, targets: &[u32]) -> Vec<f64> {
    logits.par_chunks(n_vocab).zip(targets.par_iter()).map(|(row, &tok)| -log_softmax(row, tok as usize)).collect()
}

/// Perplexity of already tokenized text; `bos` replaces the first token of each chunk.
pub fn perplexity_tokens(
    model: &LlamaModel,
    tokens: &[u32],
    bos: Option<u32>,
    opts: PerplexityOptions,
    mut on_chunk: impl FnMut(&ChunkResult),
) -> Result<PerplexityResult> {
    let layout = ChunkLayout::new(tokens.len(), opts)?;
    model.check_context(layout.n_ctx)?;
    let n_vocab = model.config.n_vocab;
    let mut cache = model.new_cache(layout.n_ctx);
    let mut sum = NllSum::default();
    let mut chunks = Vec::with_capacity(layout.n_chunks);
    let t_all = Instant::now();
    for i in 0..layout.n_chunks {
        let t0 = Instant::now();
        let logits = eval_chunk(model, &mut cache, &layout, tokens, i, bos)?;
        let per_token = row_nlls(&logits, n_vocab, layout.targets(tokens, i));
        for &v in &per_token {
            sum.add(v);
        }
        let (ppl, ppl_err) = sum.estimate();
        let c = ChunkResult {
            index: i,
            nll: per_token.iter().sum(),
            count: per_token.len(),
            ppl,
            ppl_err,
            seconds: t0.elapsed().as_secs_f64(),
        };
        on_chunk(&c);
        chunks.push(c);
    }
    let (ppl, ppl_err) = sum.estimate();
    Ok(PerplexityResult {
        n_tokens: tokens.len(),
        n_ctx: layout.n_ctx,
        chunks,
        count: sum.count,
        nll: sum.mean(),
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
