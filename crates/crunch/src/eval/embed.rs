//! Sentence-embedding agreement between a base encoder and a compressed one (`crunch eval embed`),
//! and plain embedding of a text file (`crunch embed`).
//!
//! Every non-empty line of the text (whitespace trimmed) is one input. Each model tokenizes it with
//! its own tokenizer (a Hugging Face folder uses `tokenizer.json`, a GGUF its embedded WordPiece
//! vocabulary), cut to the shorter of the two models' maximum lengths, and the cosine similarity of
//! the two pooled embeddings is taken per line. The report gives mean, median, 1st percentile and
//! minimum, and the worst lines.

use std::path::Path;
use std::time::Instant;

use crunch_model::bert::{batch_ranges, BertModel, BATCH_TOKENS};
use crunch_model::MatmulMode;
use serde::Serialize;

use super::{check_cancel, model_err, read_text};
use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};

/// What to embed and how.
#[derive(Clone, Debug, Default)]
pub struct EmbedOptions {
    /// Use only the first N non-empty lines.
    pub max_lines: Option<usize>,
    /// Cut inputs to this many tokens (default: the models' own limit, the smaller of the two).
    pub max_tokens: Option<usize>,
    /// Dequantize weights instead of quantizing activations.
    pub exact: bool,
}

/// Cosine-similarity statistics over lines.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct CosineStats {
    pub mean: f64,
    pub median: f64,
    /// 1st percentile (the low tail).
    pub p1: f64,
    pub min: f64,
    pub max: f64,
}

/// One of the lines whose embeddings agree least.
#[derive(Clone, Debug, Serialize)]
pub struct WorstLine {
    /// Index among the non-empty lines used (0-based).
    pub index: usize,
    pub cosine: f64,
    /// The line, cut to 120 characters.
    pub text: String,
}

/// Result of `crunch eval embed`.
#[derive(Clone, Debug, Serialize)]
pub struct EmbedReport {
    pub base: String,
    pub quant: String,
    pub n_texts: usize,
    /// Tokens the base model ran.
    pub n_tokens: usize,
    pub dim: usize,
    pub max_tokens: usize,
    /// Lines the two tokenizers split differently.
    pub texts_tokenized_differently: usize,
    pub cosine: CosineStats,
    pub worst: Vec<WorstLine>,
    pub seconds_base: f64,
    pub seconds_quant: f64,
    pub threads: usize,
}

/// Non-empty lines of a text file, trimmed; at most `max_lines`.
///
/// # Errors
/// Unreadable or empty file.
pub fn read_lines(path: &Path, max_lines: Option<usize>) -> Result<Vec<String>> {
    let text = read_text(path)?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(max_lines.unwrap_or(usize::MAX))
        .map(str::to_string)
        .collect())
}

/// Open an encoder (GGUF or Hugging Face folder) for embedding.
pub fn open_encoder(path: &Path, exact: bool) -> Result<BertModel> {
    let mut m = BertModel::open(path).map_err(model_err(path.display()))?;
    if exact {
        m.mode = MatmulMode::Exact;
    }
    Ok(m)
}

/// Token ids of every line, cut to `max_tokens` (keeping the final `[SEP]`).
pub(crate) fn tokenize_all(
    model: &BertModel,
    name: &str,
    lines: &[String],
    max_tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    lines
        .iter()
        .map(|l| {
            let mut ids = model.tokenize(l).map_err(model_err(format!("{name}: tokenizing")))?;
            if ids.len() > max_tokens {
                let last = ids[ids.len() - 1];
                ids.truncate(max_tokens - 1);
                ids.push(last);
            }
            Ok(ids)
        })
        .collect()
}

/// Embed token sequences in batches, reporting progress and checking the cancel flag between them.
pub fn embed_sequences(
    model: &BertModel,
    name: &str,
    ids: &[Vec<u32>],
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Vec<Vec<f32>>> {
    let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let mut out = Vec::with_capacity(ids.len());
    progress.start(name, ids.len() as u64);
    for r in batch_ranges(&refs, BATCH_TOKENS) {
        check_cancel(cancel)?;
        let end = r.end;
        out.extend(model.embed_ids(&refs[r]).map_err(model_err(format!("{name}: embedding")))?);
        progress.advance(end as u64, &format!("{name}: {end}/{} texts", ids.len()));
    }
    progress.finish(name);
    Ok(out)
}

/// Cosine similarity in f64 (two zero vectors agree; a zero and a non-zero one do not).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return if na == nb { 1.0 } else { 0.0 };
    }
    dot / (na * nb)
}

/// Statistics of a non-empty list of cosines.
pub fn cosine_stats(cos: &[f64]) -> CosineStats {
    let mut s = cos.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let at = |q: f64| s[((q * (n - 1) as f64).round() as usize).min(n - 1)];
    CosineStats { mean: s.iter().sum::<f64>() / n as f64, median: at(0.5), p1: at(0.01), min: s[0], max: s[n - 1] }
}

/// Whether a GGUF model is a sentence encoder (BERT family) rather than a causal LM.
pub fn is_encoder(md: &crunch_core::gguf::Metadata) -> bool {
    md.architecture() == Some("bert")
}

/// The non-empty lines of `text` tokenized by `model` (cut to its maximum length), in order,
/// until they hold `budget` tokens (at least one line): the sequences an encoder is calibrated
/// or judged on.
///
/// # Errors
/// A text without a non-empty line, tokenizer errors; `what` names the text.
pub fn token_lines(model: &BertModel, text: &str, budget: usize, what: &str) -> Result<Vec<Vec<u32>>> {
    let mut out = Vec::new();
    let mut n = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if n >= budget.max(1) {
            break;
        }
        let ids = model.tokenize(line).map_err(model_err(format!("{what}: tokenizing")))?;
        n += ids.len();
        out.push(ids);
    }
    if out.is_empty() {
        return Err(Error::Invalid(format!("{what}: no non-empty line to embed")));
    }
    Ok(out)
}

/// Embeddings of token sequences in batches, `obs` seeing every linear layer's input (for
/// activation statistics); the cancel flag is checked between batches.
///
/// # Errors
/// Forward-pass errors, cancellation.
pub fn embed_observed(
    model: &BertModel,
    seqs: &[Vec<u32>],
    mut obs: Option<&mut dyn crunch_model::Observer>,
    cancel: &Cancel,
) -> Result<Vec<Vec<f32>>> {
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let mut out = Vec::with_capacity(seqs.len());
    for r in batch_ranges(&refs, BATCH_TOKENS) {
        check_cancel(cancel)?;
        let emb = match obs.as_mut() {
            Some(o) => {
                let mut f = |n: &str, x: &[f32], t: usize| o.observe(n, x, t);
                model.embed_ids_with(&refs[r], Some(&mut f))
            }
            None => model.embed_ids(&refs[r]),
        };
        out.extend(emb.map_err(model_err("embedding"))?);
    }
    Ok(out)
}

/// Embedding damage of `other` against `base`: the mean of `1 − cosine` over the sequences (the
/// quantity an encoder's sensitivity profile predicts, as KL-divergence for a causal LM).
pub fn mean_damage(base: &[Vec<f32>], other: &[Vec<f32>]) -> f64 {
    let n = base.len().min(other.len());
    if n == 0 {
        return 0.0;
    }
    base.iter().zip(other).map(|(a, b)| 1.0 - cosine(a, b)).sum::<f64>() / n as f64
}

/// Cosine similarity of BASE's and QUANT's sentence embeddings over the lines of `text`.
///
/// # Errors
/// Unreadable models or text, an empty text, models of different embedding size, cancellation.
pub fn embed_compare(
    base_path: &Path,
    quant_path: &Path,
    text: &Path,
    opts: &EmbedOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<EmbedReport> {
    let lines = read_lines(text, opts.max_lines)?;
    let base = open_encoder(base_path, opts.exact)?;
    let quant = open_encoder(quant_path, opts.exact)?;
    if base.dim() != quant.dim() {
        return Err(Error::Invalid(format!(
            "{} embeds into {} dimensions but {} into {}",
            base_path.display(),
            base.dim(),
            quant_path.display(),
            quant.dim()
        )));
    }
    let max_tokens = opts.max_tokens.unwrap_or(usize::MAX).min(base.config.max_tokens).min(quant.config.max_tokens);
    if max_tokens < 2 {
        return Err(Error::Invalid(format!("--max-tokens {max_tokens} leaves no room for [CLS] and [SEP]")));
    }
    let bname = base_path.display().to_string();
    let qname = quant_path.display().to_string();
    let base_ids = tokenize_all(&base, &bname, &lines, max_tokens)?;
    let quant_ids = tokenize_all(&quant, &qname, &lines, max_tokens)?;
    let differ = base_ids.iter().zip(&quant_ids).filter(|(a, b)| a != b).count();
    if differ > 0 {
        tracing::warn!("{differ} of {} lines are tokenized differently by the two models", lines.len());
    }

    let t = Instant::now();
    let eb = embed_sequences(&base, "base", &base_ids, progress, cancel)?;
    let seconds_base = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let eq = embed_sequences(&quant, "quant", &quant_ids, progress, cancel)?;
    let seconds_quant = t.elapsed().as_secs_f64();

    let cos: Vec<f64> = eb.iter().zip(&eq).map(|(a, b)| cosine(a, b)).collect();
    let mut order: Vec<usize> = (0..cos.len()).collect();
    order.sort_by(|&a, &b| cos[a].total_cmp(&cos[b]));
    let worst = order
        .iter()
        .take(5)
        .map(|&i| WorstLine { index: i, cosine: cos[i], text: lines[i].chars().take(120).collect() })
        .collect();
    Ok(EmbedReport {
        base: bname,
        quant: qname,
        n_texts: lines.len(),
        n_tokens: base_ids.iter().map(Vec::len).sum(),
        dim: base.dim(),
        max_tokens,
        texts_tokenized_differently: differ,
        cosine: cosine_stats(&cos),
        worst,
        seconds_base,
        seconds_quant,
        threads: rayon::current_num_threads(),
    })
}

/// One line's embedding, as `crunch embed` writes it (one JSON object per line).
#[derive(Clone, Debug, Serialize)]
pub struct EmbeddingRecord {
    pub text: String,
    pub n_tokens: usize,
    pub embedding: Vec<f32>,
}

/// Embeddings of every non-empty line of `text` with one model.
///
/// # Errors
/// Unreadable model or text, an empty text, cancellation.
pub fn embed_file(
    model_path: &Path,
    text: &Path,
    opts: &EmbedOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Vec<EmbeddingRecord>> {
    let lines = read_lines(text, opts.max_lines)?;
    let model = open_encoder(model_path, opts.exact)?;
    let max_tokens = opts.max_tokens.unwrap_or(usize::MAX).min(model.config.max_tokens);
    if max_tokens < 2 {
        return Err(Error::Invalid(format!("--max-tokens {max_tokens} leaves no room for [CLS] and [SEP]")));
    }
    let name = model_path.display().to_string();
    let ids = tokenize_all(&model, &name, &lines, max_tokens)?;
    let emb = embed_sequences(&model, &name, &ids, progress, cancel)?;
    Ok(lines
        .into_iter()
        .zip(ids)
        .zip(emb)
        .map(|((text, ids), embedding)| EmbeddingRecord { text, n_tokens: ids.len(), embedding })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_cosines() {
        let c: Vec<f64> = (0..101).map(|i| 0.9 + i as f64 * 0.001).collect();
        let s = cosine_stats(&c);
        assert!((s.mean - 0.95).abs() < 1e-12);
        assert_eq!((s.min, s.max), (0.9, 1.0));
        assert!((s.p1 - 0.901).abs() < 1e-12 && (s.median - 0.95).abs() < 1e-12);
        assert_eq!(cosine(&[1.0, 0.0], &[2.0, 0.0]), 1.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }
}
