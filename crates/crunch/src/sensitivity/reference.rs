//! The base model's next-token distributions on a set of token chunks, kept so that any other
//! model (a probe with one group of tensors quantized) can be compared with it quickly.

use crate::error::{Error, Result};
use crunch_model::LlamaModel;
use std::path::Path;

/// Token chunks and where scoring starts in each (llama-perplexity's layout: the second half).
#[derive(Clone, Debug)]
pub struct Chunks {
    pub chunks: Vec<Vec<u32>>,
    /// First scored position in every chunk.
    pub first: usize,
}

impl Chunks {
    /// `n` chunks of `ctx` tokens from `tokens`, starting at token `start`; BOS (if any) replaces
    /// the first token of each chunk.
    ///
    /// # Errors
    /// Not enough tokens.
    pub fn cut(tokens: &[u32], start: usize, ctx: usize, n: usize, bos: Option<u32>, what: &str) -> Result<Self> {
        if ctx < 8 {
            return Err(Error::Invalid(format!("{what}: context of {ctx} tokens is too small (at least 8)")));
        }
        let need = start + ctx * n;
        if tokens.len() < need || n == 0 {
            return Err(Error::Invalid(format!(
                "{what}: need {n} chunk(s) of {ctx} tokens after token {start}, the text has {} tokens",
                tokens.len()
            )));
        }
        let chunks = (0..n)
            .map(|i| {
                let mut c = tokens[start + i * ctx..start + (i + 1) * ctx].to_vec();
                if let Some(b) = bos {
                    c[0] = b;
                }
                c
            })
            .collect();
        Ok(Chunks { chunks, first: ctx / 2 })
    }

    /// Scored positions per chunk: `first .. ctx - 1` (the last position's next token is not in
    /// the chunk), as llama-perplexity.
    pub fn n_scored(&self) -> usize {
        self.chunks.first().map_or(0, |c| c.len() - 1 - self.first)
    }

    /// The token each scored position of chunk `i` predicts.
    pub fn targets(&self, i: usize) -> &[u32] {
        &self.chunks[i][self.first + 1..]
    }
}

pub(crate) fn model_err(path: &Path, e: crunch_model::ModelError) -> Error {
    Error::Invalid(format!("{}: {e}", path.display()))
}

/// Scored logits of every chunk, in order (`n_scored × n_vocab` per chunk).
///
/// # Errors
/// Forward-pass errors.
pub fn scored_logits(
    model: &LlamaModel,
    chunks: &Chunks,
    mut observe: Option<&mut dyn crunch_model::Observer>,
) -> Result<Vec<Vec<f32>>> {
    let path = model.file().path.clone();
    let mut out = Vec::with_capacity(chunks.chunks.len());
    for c in &chunks.chunks {
        let mut cache = model.new_cache(c.len());
        let mut logits = match observe.as_mut() {
            Some(o) => {
                let mut f = |n: &str, x: &[f32], t: usize| o.observe(n, x, t);
                model.forward_with(c, &mut cache, chunks.first, Some(&mut f))
            }
            None => model.forward_with(c, &mut cache, chunks.first, None),
        }
        .map_err(|e| model_err(&path, e))?;
        logits.truncate(chunks.n_scored() * model.config.n_vocab);
        out.push(logits);
    }
    Ok(out)
}

/// Mean KL-divergence of `model`'s distributions from the reference `base` ones over all scored
/// positions (full vocabulary).
///
/// # Errors
/// Forward-pass errors.
pub fn mean_kld(model: &LlamaModel, chunks: &Chunks, base: &[Vec<f32>]) -> Result<f64> {
    let q = scored_logits(model, chunks, None)?;
    let n_vocab = model.config.n_vocab;
    let (mut sum, mut n) = (0f64, 0usize);
    for (b, q) in base.iter().zip(&q) {
        for (br, qr) in b.chunks_exact(n_vocab).zip(q.chunks_exact(n_vocab)) {
            sum += crunch_model::kld::kld_full(br, qr);
            n += 1;
        }
    }
    Ok(if n > 0 { sum / n as f64 } else { 0.0 })
}
