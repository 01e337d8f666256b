//! `crunch eval perplexity`: llama-perplexity's numbers for a GGUF model on a text file.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crunch_model::perplexity::{eval_chunk, row_nlls, ChunkResult, NllSum};
use crunch_model::{ChunkLayout, LlamaModel, LoraSpec, ModelError, PerplexityOptions};

use super::{check_cancel, model_err, open_model_with, peak_rss_bytes, read_text};
use crate::error::Result;
use crate::progress::{Cancel, Progress};

/// What text window an evaluation uses, shared by perplexity and compare.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalOptions {
    /// Tokens per chunk (llama.cpp's `-c`).
    pub ctx: usize,
    /// At most this many chunks (all that fit in the text when `None`).
    pub chunks: Option<usize>,
    /// Dequantize weights instead of quantizing activations.
    pub exact: bool,
    /// LoRA adapters applied to the model evaluated, in order (in a comparison: to the model
    /// under test, never to the base).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lora: Vec<LoraSpec>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { ctx: 512, chunks: None, exact: false, lora: Vec::new() }
    }
}

/// The result of `crunch eval perplexity`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerplexityReport {
    pub model: String,
    pub text: String,
    pub ctx: usize,
    pub n_chunks: usize,
    /// Tokens in the whole text.
    pub n_tokens: usize,
    /// Tokens scored.
    pub count: usize,
    pub ppl: f64,
    /// llama.cpp's `+/-`.
    pub ppl_err: f64,
    /// Mean negative log-likelihood.
    pub nll: f64,
    pub chunks: Vec<ChunkResult>,
    /// Evaluation time, tokenization excluded.
    pub seconds: f64,
    /// Prompt-processing speed: evaluated tokens (`n_chunks × ctx`) per second.
    pub tokens_per_second: f64,
    pub threads: usize,
    pub peak_rss_bytes: Option<u64>,
}

impl PerplexityReport {
    /// llama.cpp's final line.
    pub fn final_estimate(&self) -> String {
        format!("Final estimate: PPL = {:.4} +/- {:.5}", self.ppl, self.ppl_err)
    }
}

/// Tokenize as llama-perplexity does (special tokens added) and pick the BOS to put first in each
/// chunk, if the vocabulary adds one.
pub(crate) fn tokenize_for_eval(loaded: &super::Loaded, text: &str, what: &Path) -> Result<(Vec<u32>, Option<u32>)> {
    let tok = &loaded.tokenizer;
    let err = model_err(what.display());
    if tok.add_eos() {
        return Err(err(ModelError::Input("llama-perplexity refuses vocabularies that add EOS".into())));
    }
    let tokens = tok.encode(text, true).map_err(|e| err(e.into()))?;
    let bos = if tok.add_bos() {
        Some(tok.bos().ok_or_else(|| {
            model_err(what.display())(ModelError::Input("the vocabulary adds BOS but has none".into()))
        })?)
    } else {
        None
    };
    Ok((tokens, bos))
}

/// Check the window against the text and the model.
pub(crate) fn layout_for(model: &LlamaModel, n_tokens: usize, opts: &EvalOptions, what: &Path) -> Result<ChunkLayout> {
    model.check_context(opts.ctx).map_err(model_err(what.display()))?;
    ChunkLayout::new(n_tokens, PerplexityOptions { n_ctx: opts.ctx, n_chunks: opts.chunks })
        .map_err(model_err(what.display()))
}

/// Perplexity of `model` on already tokenized text.
pub fn perplexity_of(
    model: &LlamaModel,
    tokens: &[u32],
    bos: Option<u32>,
    layout: &ChunkLayout,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<(NllSum, Vec<ChunkResult>)> {
    let mut cache = model.new_cache(layout.n_ctx);
    let mut sum = NllSum::default();
    let mut chunks = Vec::with_capacity(layout.n_chunks);
    progress.start("perplexity", layout.n_chunks as u64);
    for i in 0..layout.n_chunks {
        check_cancel(cancel)?;
        let t0 = Instant::now();
        let logits = eval_chunk(model, &mut cache, layout, tokens, i, bos).map_err(model_err("evaluating"))?;
        let nll = row_nlls(&logits, model.config.n_vocab, layout.targets(tokens, i));
        nll.iter().for_each(|&v| sum.add(v));
        let (ppl, ppl_err) = sum.estimate();
        let c = ChunkResult {
            index: i,
            nll: nll.iter().sum(),
            count: nll.len(),
            ppl,
            ppl_err,
            seconds: t0.elapsed().as_secs_f64(),
        };
        progress.advance(i as u64 + 1, &format!("[{}]{:.4} +/- {:.4}", i + 1, ppl, ppl_err));
        chunks.push(c);
    }
    let (ppl, err) = sum.estimate();
    progress.finish(&format!("Final estimate: PPL = {ppl:.4} +/- {err:.5}"));
    Ok((sum, chunks))
}

/// `crunch eval perplexity MODEL --text FILE`.
///
/// # Errors
/// Unreadable or empty text, a model crunch cannot run, a context larger than the model's, or a
/// text shorter than two chunks; [`crate::Error::Cancelled`] when `cancel` trips.
pub fn perplexity(
    model_path: &Path,
    text_path: &Path,
    opts: &EvalOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<PerplexityReport> {
    let text = read_text(text_path)?;
    let loaded = open_model_with(model_path, opts.exact, &opts.lora, "perplexity.lora")?;
    let (tokens, bos) = tokenize_for_eval(&loaded, &text, text_path)?;
    let layout = layout_for(&loaded.model, tokens.len(), opts, text_path)?;
    let t0 = Instant::now();
    let (sum, chunks) = perplexity_of(&loaded.model, &tokens, bos, &layout, progress, cancel)?;
    let seconds = t0.elapsed().as_secs_f64();
    let (ppl, ppl_err) = sum.estimate();
    Ok(PerplexityReport {
        model: model_path.display().to_string(),
        text: text_path.display().to_string(),
        ctx: layout.n_ctx,
        n_chunks: layout.n_chunks,
        n_tokens: tokens.len(),
        count: sum.count,
        ppl,
        ppl_err,
        nll: sum.mean(),
        chunks,
        seconds,
        tokens_per_second: (layout.n_chunks * layout.n_ctx) as f64 / seconds.max(1e-9),
        threads: rayon::current_num_threads(),
        peak_rss_bytes: peak_rss_bytes(),
    })
}
