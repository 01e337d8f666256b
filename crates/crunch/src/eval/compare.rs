//! `crunch eval compare`: how far a quantized model's next-token distributions are from the base
//! model's (KL-divergence, same top token, perplexity of both), with the base evaluated once and
//! kept as top-k log-probabilities ([`BaseLogits`]) in memory or in a file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crunch_model::kld::{kld_full, kld_top_k, top_k_logprobs, BaseLogits, CompareAccumulator, CompareStats, TopKRow};
use crunch_model::perplexity::eval_chunk;
use crunch_model::{LlamaModel, ModelError};

use super::perplexity::{layout_for, tokenize_for_eval, EvalOptions};
use super::{check_cancel, model_err, open_model, open_model_with, read_text};
use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};

/// Options of a comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareOptions {
    pub eval: EvalOptions,
    /// Base tokens kept per position (log-probabilities of the `top_k` most likely).
    pub top_k: usize,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions { eval: EvalOptions::default(), top_k: 32 }
    }
}

/// Where the base distributions come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Base {
    /// Run this GGUF model on the text.
    Model(PathBuf),
    /// Read top-k log-probabilities saved earlier with [`save_base_logits`].
    Logits(PathBuf),
}

/// The result of `crunch eval compare`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareReport {
    pub base: String,
    pub quant: String,
    pub ctx: usize,
    pub n_chunks: usize,
    pub top_k: usize,
    #[serde(flatten)]
    pub stats: CompareStats,
    /// Time spent running the quantized model.
    pub seconds: f64,
    pub tokens_per_second: f64,
}

/// Run `model` on the text and keep its top-k log-probabilities at every scored position.
pub fn base_logits(
    loaded: &super::Loaded,
    name: &str,
    text: &str,
    opts: &CompareOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<BaseLogits> {
    if opts.top_k == 0 || opts.top_k > loaded.model.config.n_vocab {
        return Err(Error::field(
            "compare.top_k",
            format!("{} must be between 1 and the vocabulary size {}", opts.top_k, loaded.model.config.n_vocab),
        ));
    }
    let what = Path::new(name);
    let (tokens, bos) = tokenize_for_eval(loaded, text, what)?;
    let layout = layout_for(&loaded.model, tokens.len(), &opts.eval, what)?;
    let model = &loaded.model;
    let mut base = BaseLogits::new(name.to_string(), model.config.n_vocab, &layout, opts.top_k);
    base.bos = bos;
    base.tokens = tokens[..layout.n_chunks * layout.n_ctx].to_vec();
    let mut cache = model.new_cache(layout.n_ctx);
    progress.start("base model", layout.n_chunks as u64);
    for i in 0..layout.n_chunks {
        check_cancel(cancel)?;
        let logits = eval_chunk(model, &mut cache, &layout, &base.tokens, i, bos).map_err(model_err(name))?;
        let targets = layout.targets(&base.tokens, i).to_vec();
        base.push_rows(&logits, &targets);
        progress.advance(i as u64 + 1, &format!("[{}] base chunk", i + 1));
    }
    progress.finish("base logits ready");
    Ok(base)
}

/// Save base logits atomically (with a `.sha256` sidecar); returns the file's sha256.
pub fn save_base_logits(base: &BaseLogits, dest: &Path) -> Result<String> {
    let mut f = crunch_core::output::AtomicFile::create(dest).map_err(|e| Error::io(dest, e))?;
    base.write_to(&mut std::io::BufWriter::new(&mut f)).map_err(|e| Error::io(dest, e))?;
    f.commit().map_err(|e| Error::io(dest, e))
}

/// Read base logits written by [`save_base_logits`].
pub fn load_base_logits(path: &Path) -> Result<BaseLogits> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    BaseLogits::from_bytes(&bytes).map_err(model_err(path.display()))
}

/// Compare a loaded model with base logits: the library call for solvers that try many
/// candidates. The model must share the base's vocabulary; it sees the base's tokens.
pub fn compare_with(
    base: &BaseLogits,
    model: &LlamaModel,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<CompareStats> {
    if model.config.n_vocab != base.n_vocab {
        return Err(Error::Invalid(format!(
            "vocabularies differ: the base has {} tokens, the model {}",
            base.n_vocab, model.config.n_vocab
        )));
    }
    let layout = base.layout();
    model.check_context(layout.n_ctx).map_err(model_err("compare"))?;
    let mut acc = CompareAccumulator::default();
    let mut cache = model.new_cache(layout.n_ctx);
    progress.start("compare", layout.n_chunks as u64);
    for i in 0..layout.n_chunks {
        check_cancel(cancel)?;
        let logits = eval_chunk(model, &mut cache, &layout, &base.tokens, i, base.bos).map_err(model_err("compare"))?;
        acc.add_chunk(base, i * layout.n_score(), &logits, layout.targets(&base.tokens, i));
        let s = acc.finish();
        progress.advance(
            i as u64 + 1,
            &format!(
                "[{}] KLD {:.6} +/- {:.6}, same top {:.2}%, PPL {:.4} vs {:.4}",
                i + 1,
                s.kld.mean,
                s.kld.mean_err,
                s.same_top_pct,
                s.ppl_quant,
                s.ppl_base
            ),
        );
    }
    let s = acc.finish();
    progress.finish(&format!("KLD {:.6}, same top {:.2}%", s.kld.mean, s.same_top_pct));
    Ok(s)
}

/// `crunch eval compare BASE QUANT --text FILE`, or against saved logits (then `text` may be
/// `None`: the tokens are in the file). The adapters of `opts.eval.lora` are applied to `quant`
/// only.
///
/// # Errors
/// As [`super::perplexity`], plus base logits from another vocabulary or an unreadable logits file.
pub fn compare(
    base: &Base,
    quant: &Path,
    text: Option<&Path>,
    opts: &CompareOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<CompareReport> {
    let base_logits = match base {
        Base::Model(p) => {
            let text = text.ok_or_else(|| Error::field("compare.text", "comparing with a base model needs a text"))?;
            let t = read_text(text)?;
            let loaded = open_model(p, opts.eval.exact)?;
            base_logits(&loaded, &p.display().to_string(), &t, opts, progress, cancel)?
        }
        Base::Logits(p) => load_base_logits(p)?,
    };
    let loaded = open_model_with(quant, opts.eval.exact, &opts.eval.lora, "compare.lora")?;
    let t0 = Instant::now();
    let stats = compare_with(&base_logits, &loaded.model, progress, cancel)?;
    let seconds = t0.elapsed().as_secs_f64();
    Ok(CompareReport {
        base: base_logits.model.clone(),
        quant: quant.display().to_string(),
        ctx: base_logits.n_ctx,
        n_chunks: base_logits.n_chunks,
        top_k: base_logits.top_k,
        stats,
        seconds,
        tokens_per_second: (base_logits.n_chunks * base_logits.n_ctx) as f64 / seconds.max(1e-9),
    })
}

/// Mean KL-divergence from the full vocabulary and from the top-k approximation, for a few k.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopKError {
    pub n_positions: usize,
    /// Exact mean KLD over the whole vocabulary.
    pub full: f64,
    /// `(k, mean top-k KLD, mean probability the base puts outside its top k)`.
    pub top_k: Vec<(usize, f64, f64)>,
}

/// Measure the top-k approximation: run both models on the text and compare the exact KLD with
/// the top-k estimate for each `k` in `ks`.
pub fn topk_error(
    base: &LlamaModel,
    quant: &LlamaModel,
    tokens: &[u32],
    bos: Option<u32>,
    opts: &EvalOptions,
    ks: &[usize],
) -> Result<TopKError> {
    if base.config.n_vocab != quant.config.n_vocab {
        return Err(Error::Invalid("vocabularies differ".into()));
    }
    let layout = layout_for(base, tokens.len(), opts, Path::new("text"))?;
    let n_vocab = base.config.n_vocab;
    let mut cb = base.new_cache(layout.n_ctx);
    let mut cq = quant.new_cache(layout.n_ctx);
    let mut full = 0f64;
    let mut sums = vec![(0f64, 0f64); ks.len()];
    let mut n = 0usize;
    for i in 0..layout.n_chunks {
        let lb = eval_chunk(base, &mut cb, &layout, tokens, i, bos).map_err(model_err("base"))?;
        let lq = eval_chunk(quant, &mut cq, &layout, tokens, i, bos).map_err(model_err("quant"))?;
        for (rb, rq) in lb.chunks_exact(n_vocab).zip(lq.chunks_exact(n_vocab)) {
            full += kld_full(rb, rq);
            for (s, &k) in sums.iter_mut().zip(ks) {
                let (ids, logp, rest) = top_k_logprobs(rb, k);
                s.0 += kld_top_k(TopKRow { ids: &ids, logp: &logp, log_rest: rest }, rq);
                s.1 += (rest as f64).exp();
            }
            n += 1;
        }
    }
    if n == 0 {
        return Err(Error::Model { context: "topk_error".into(), source: ModelError::Input("no positions".into()) });
    }
    let nf = n as f64;
    Ok(TopKError {
        n_positions: n,
        full: full / nf,
        top_k: ks.iter().zip(sums).map(|(&k, (a, r))| (k, a / nf, r / nf)).collect(),
    })
}
