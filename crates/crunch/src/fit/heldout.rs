//! Checking a written model against the base on held-out text, with the eval library
//! ([`crate::eval::compare_with`]): mean KL-divergence, same top token, perplexity of both,
//! speed. The base is evaluated once (and its top-k distributions cached on disk). An encoder is
//! judged by the cosine similarity of its sentence embeddings to the base's on held-out lines.

use crate::error::{Error, Result};
use crate::eval::embed::CosineStats;
use crate::eval::{self, BaseLogits, CompareOptions, EvalOptions};
use crate::progress::{Cancel, NoProgress, Progress};
use crunch_model::LlamaModel;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// What a candidate measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Measured {
    /// Mean KL-divergence from the base over the scored positions.
    pub kld: f64,
    /// Its standard error.
    pub kld_err: f64,
    /// 99th percentile of the per-position KL-divergence.
    pub kld_p99: f64,
    /// Fraction of positions where the most likely token is the base's.
    pub top1: f64,
    pub ppl: f64,
    pub ppl_base: f64,
    /// Scored positions.
    pub n_positions: usize,
    /// Prompt-processing speed of the candidate (tokens per second, this machine).
    pub tokens_per_s: f64,
    pub seconds: f64,
    /// An encoder's cosine similarity to the base's sentence embeddings over the held-out lines
    /// (the KLD, top-1 and perplexity fields are then 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine: Option<CosineStats>,
}

impl Measured {
    /// The damage measured: KL-divergence, or `1 − mean cosine` for an encoder.
    pub fn damage(&self) -> f64 {
        self.cosine.as_ref().map_or(self.kld, |c| 1.0 - c.mean)
    }
}

/// The base model's outputs on the held-out text.
pub enum HeldOut {
    /// A causal LM's top-k distributions on the held-out chunks.
    Lm(BaseLogits),
    /// An encoder's held-out lines (tokenized) and their embeddings.
    Encoder { seqs: Vec<Vec<u32>>, base: Vec<Vec<f32>> },
}

impl HeldOut {
    /// Evaluate the base model at `model` on `text`, or load the result from `cache` when a file
    /// is there (and store it there otherwise).
    ///
    /// # Errors
    /// Model and text errors.
    pub fn new(
        model: &Path,
        text: &str,
        ctx: usize,
        chunks: usize,
        cache: Option<&Path>,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<Self> {
        if crate::eval::embed::is_encoder(crunch_core::gguf::GgufFile::open(model)?.metadata()) {
            let m = crate::eval::embed::open_encoder(model, false)?;
            let what = format!("held-out text of {}", model.display());
            let seqs = crate::eval::embed::token_lines(&m, text, ctx * chunks, &what)?;
            progress.start("held-out base embeddings", seqs.len() as u64);
            let base = crate::eval::embed::embed_observed(&m, &seqs, None, cancel)?;
            return Ok(HeldOut::Encoder { seqs, base });
        }
        if let Some(c) = cache.filter(|c| c.exists()) {
            if let Ok(base) = eval::load_base_logits(c) {
                return Ok(HeldOut::Lm(base));
            }
        }
        let loaded = eval::open_model(model, false)?;
        let opts = CompareOptions {
            eval: EvalOptions { ctx, chunks: Some(chunks), exact: false, lora: Vec::new() },
            top_k: 32,
        };
        let base = eval::base_logits(&loaded, &model.display().to_string(), text, &opts, progress, cancel)?;
        if let Some(c) = cache {
            if let Some(dir) = c.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            eval::save_base_logits(&base, c)?;
        }
        Ok(HeldOut::Lm(base))
    }

    /// Evaluate the model in `path` against the base.
    ///
    /// # Errors
    /// The model cannot be loaded or run, or its vocabulary differs.
    pub fn evaluate(&self, path: &Path, cancel: &Cancel) -> Result<Measured> {
        self.evaluate_with(path, &[], cancel)
    }

    /// [`HeldOut::evaluate`] with LoRA adapters applied to the model (a correction shipped beside it).
    ///
    /// # Errors
    /// As [`HeldOut::evaluate`]; an adapter that does not fit the model.
    pub fn evaluate_with(&self, path: &Path, lora: &[crunch_model::LoraSpec], cancel: &Cancel) -> Result<Measured> {
        let t0 = Instant::now();
        let base = match self {
            HeldOut::Lm(b) => b,
            HeldOut::Encoder { seqs, base } => {
                if !lora.is_empty() {
                    return Err(Error::Invalid(format!(
                        "{}: LoRA adapters apply to causal LMs, not to an encoder",
                        path.display()
                    )));
                }
                let m = crate::eval::embed::open_encoder(path, false)?;
                let t1 = Instant::now();
                let emb = crate::eval::embed::embed_observed(&m, seqs, None, cancel)?;
                let eval_s = t1.elapsed().as_secs_f64();
                let cos: Vec<f64> = base.iter().zip(&emb).map(|(a, b)| crate::eval::embed::cosine(a, b)).collect();
                let n_tok: usize = seqs.iter().map(Vec::len).sum();
                return Ok(Measured {
                    n_positions: seqs.len(),
                    tokens_per_s: n_tok as f64 / eval_s.max(1e-9),
                    seconds: t0.elapsed().as_secs_f64(),
                    cosine: Some(crate::eval::embed::cosine_stats(&cos)),
                    ..Measured::default()
                });
            }
        };
        let mut model = LlamaModel::open(path).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        eval::apply_adapters(&mut model, lora, "lora")?;
        let t1 = Instant::now();
        let s = eval::compare_with(base, &model, &NoProgress, cancel)?;
        let eval_s = t1.elapsed().as_secs_f64();
        Ok(Measured {
            kld: s.kld.mean,
            kld_err: s.kld.mean_err,
            kld_p99: s.kld.p99,
            top1: s.same_top_pct / 100.0,
            ppl: s.ppl_quant,
            ppl_base: s.ppl_base,
            n_positions: s.n_positions,
            tokens_per_s: (base.n_chunks * base.n_ctx) as f64 / eval_s.max(1e-9),
            seconds: t0.elapsed().as_secs_f64(),
            cosine: None,
        })
    }
}
