//! How far a model's next-token distributions are from a base model's: KL-divergence, "same top
//! token" and the perplexity of both, over the scored positions of llama-perplexity's chunks.
//!
//! Key decision: the base model is evaluated once and kept as **top-k log-probabilities** per
//! position ([`BaseLogits`]): the `k` most likely token ids with their log-probabilities, the log
//! of the probability left to the other tokens, and the log-probability of the token that really
//! followed. Against that, the KL-divergence treats all tokens outside the base's top-k as one
//! bucket:
//!
//! `KL ≈ Σ_{i∈top-k} p_i (ln p_i − ln q_i) + R (ln R − ln Q_R)`, with `R = 1 − Σ_{top-k} p_i` and
//! `Q_R = 1 − Σ_{top-k} q_i`.
//!
//! Merging tokens can only lose information, so this is a lower bound of the full-vocabulary
//! KL-divergence (log-sum inequality); the gap is what the base puts outside its top-k, measured in
//! docs/EVAL.md. [`kld_full`] is the exact value when both logit rows are at hand.

use std::io::Write;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

const MAGIC: &[u8; 8] = b"CRNCHLGT";
const VERSION: u32 = 1;

/// `(max, ln Σ exp(l − max))` of a logit row, the sum in f64 as llama.cpp's `log_softmax`.
fn log_norm(logits: &[f32]) -> (f32, f64) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    (max, sum.ln())
}

/// Index of the largest logit (the first one on ties, as llama.cpp's greedy sampler).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best
}

/// Exact KL-divergence `Σ p (ln p − ln q)` of the distribution of `quant` logits from `base`'s,
/// over the whole vocabulary (llama.cpp's `--kl-divergence` per-token value).
pub fn kld_full(base: &[f32], quant: &[f32]) -> f64 {
    let (bm, bz) = log_norm(base);
    let (qm, qz) = log_norm(quant);
    let mut kl = 0f64;
    for (&b, &q) in base.iter().zip(quant) {
        let lp = (b - bm) as f64 - bz;
        let lq = (q - qm) as f64 - qz;
        kl += lp.exp() * (lp - lq);
    }
    kl.max(0.0)
}

/// One position's top-k view of the base distribution.
#[derive(Clone, Copy, Debug)]
pub struct TopKRow<'a> {
    /// Token ids, most likely first.
    pub ids: &'a [u32],
    /// Their log-probabilities.
    pub logp: &'a [f32],
    /// `ln` of the probability of every other token (−∞ when none is left).
    pub log_rest: f32,
}

/// Top-k KL-divergence of `quant` logits from a base row (see the module docs).
pub fn kld_top_k(base: TopKRow<'_>, quant: &[f32]) -> f64 {
    let (qm, qz) = log_norm(quant);
    let mut kl = 0f64;
    let mut q_top = 0f64;
    for (&id, &lp) in base.ids.iter().zip(base.logp) {
        let lq = (quant[id as usize] - qm) as f64 - qz;
        let p = (lp as f64).exp();
        kl += p * (lp as f64 - lq);
        q_top += lq.exp();
    }
    let rest = if base.log_rest.is_finite() { (base.log_rest as f64).exp() } else { 0.0 };
    if rest > 0.0 {
        // q's share of the same bucket; never below what f64 rounding can tell from zero
        let q_rest = (1.0 - q_top).max(1e-30);
        kl += rest * (base.log_rest as f64 - q_rest.ln());
    }
    kl.max(0.0)
}

/// The `k` most likely tokens of a logit row with their log-probabilities, and the log of the rest.
pub fn top_k_logprobs(logits: &[f32], k: usize) -> (Vec<u32>, Vec<f32>, f32) {
    let (max, lz) = log_norm(logits);
    let k = k.min(logits.len());
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    }
    idx.truncate(k);
    idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    let logp: Vec<f32> = idx.iter().map(|&i| ((logits[i as usize] - max) as f64 - lz) as f32).collect();
    // The rest, summed directly (no cancellation when the top-k holds almost everything).
    let mut in_top = vec![false; logits.len()];
    for &i in &idx {
        in_top[i as usize] = true;
    }
    let rest: f64 = logits.iter().zip(&in_top).filter(|(_, &t)| !t).map(|(&l, _)| ((l - max) as f64 - lz).exp()).sum();
    let log_rest = if rest > 0.0 { rest.ln() as f32 } else { f32::NEG_INFINITY };
    (idx, logp, log_rest)
}

/// The base model's view of a text, kept to compare many candidates against it without running
/// the base again.
#[derive(Clone, Debug, PartialEq)]
pub struct BaseLogits {
    /// What the base was (a path or a description), for reports.
    pub model: String,
    pub n_vocab: usize,
    /// Chunk length.
    pub n_ctx: usize,
    pub n_chunks: usize,
    /// First position of each chunk kept (`n_ctx / 2` for evaluation as llama-perplexity scores;
    /// 0 for distillation, which trains on every position).
    pub first: usize,
    /// Top tokens kept per position.
    pub top_k: usize,
    /// The token put first in every chunk, if the vocabulary adds BOS.
    pub bos: Option<u32>,
    /// The text's tokens, `n_chunks × n_ctx` (as tokenized, before BOS substitution).
    pub tokens: Vec<u32>,
    ids: Vec<u32>,
    logp: Vec<f32>,
    log_rest: Vec<f32>,
    target_logp: Vec<f32>,
}

/// Header of the base-logits file (JSON after the magic and version).
#[derive(Serialize, Deserialize)]
struct Header {
    model: String,
    n_vocab: usize,
    n_ctx: usize,
    n_chunks: usize,
    /// Absent: `n_ctx / 2` (files written before it existed, and every evaluation file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first: Option<usize>,
    top_k: usize,
    bos: Option<u32>,
    n_positions: usize,
}

impl BaseLogits {
    /// An empty store for `n_chunks` chunks of `n_ctx` tokens.
    pub fn new(model: String, n_vocab: usize, layout: &crate::perplexity::ChunkLayout, top_k: usize) -> Self {
        BaseLogits {
            model,
            n_vocab,
            n_ctx: layout.n_ctx,
            n_chunks: layout.n_chunks,
            first: layout.first,
            top_k,
            bos: None,
            tokens: Vec::new(),
            ids: Vec::new(),
            logp: Vec::new(),
            log_rest: Vec::new(),
            target_logp: Vec::new(),
        }
    }

    /// The chunk layout these logits were made with.
    pub fn layout(&self) -> crate::perplexity::ChunkLayout {
        crate::perplexity::ChunkLayout { n_ctx: self.n_ctx, n_chunks: self.n_chunks, first: self.first }
    }

    /// Positions stored so far.
    pub fn n_positions(&self) -> usize {
        self.log_rest.len()
    }

    /// Append the scored rows of one chunk (`targets.len()` rows of `n_vocab` logits).
    pub fn push_rows(&mut self, logits: &[f32], targets: &[u32]) {
        let (n_vocab, k) = (self.n_vocab, self.top_k);
        let rows: Vec<_> = logits
            .par_chunks(n_vocab)
            .zip(targets.par_iter())
            .map(|(row, &t)| {
                let (ids, logp, rest) = top_k_logprobs(row, k);
                (ids, logp, rest, -crate::perplexity::log_softmax(row, t as usize) as f32)
            })
            .collect();
        for (ids, logp, rest, nll) in rows {
            self.ids.extend(ids);
            self.logp.extend(logp);
            self.log_rest.push(rest);
            self.target_logp.push(-nll);
        }
    }

    /// Position `p`'s top-k row.
    pub fn row(&self, p: usize) -> TopKRow<'_> {
        let k = self.top_k;
        TopKRow { ids: &self.ids[p * k..(p + 1) * k], logp: &self.logp[p * k..(p + 1) * k], log_rest: self.log_rest[p] }
    }

    /// The base's log-probability of the token that followed position `p`.
    pub fn target_logp(&self, p: usize) -> f32 {
        self.target_logp[p]
    }

    /// Write the file format: magic `CRNCHLGT`, version (u32 LE), header length (u32 LE), JSON
    /// header, then little-endian arrays: tokens (u32, `n_chunks × n_ctx`), ids (u32, positions ×
    /// k), log-probs (f32, positions × k), log of the rest (f32, positions), target log-prob (f32,
    /// positions).
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let header = Header {
            model: self.model.clone(),
            n_vocab: self.n_vocab,
            n_ctx: self.n_ctx,
            n_chunks: self.n_chunks,
            first: (self.first != self.n_ctx / 2).then_some(self.first),
            top_k: self.top_k,
            bos: self.bos,
            n_positions: self.n_positions(),
        };
        let h = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        w.write_all(&(h.len() as u32).to_le_bytes())?;
        w.write_all(&h)?;
        let mut buf = Vec::with_capacity(1 << 20);
        let flush = |buf: &mut Vec<u8>, w: &mut dyn Write| -> std::io::Result<()> {
            w.write_all(buf)?;
            buf.clear();
            Ok(())
        };
        for &t in self.tokens.iter().chain(&self.ids) {
            buf.extend_from_slice(&t.to_le_bytes());
            if buf.len() >= 1 << 20 {
                flush(&mut buf, w)?;
            }
        }
        for &v in self.logp.iter().chain(&self.log_rest).chain(&self.target_logp) {
            buf.extend_from_slice(&v.to_le_bytes());
            if buf.len() >= 1 << 20 {
                flush(&mut buf, w)?;
            }
        }
        flush(&mut buf, w)
    }

    /// Read what [`BaseLogits::write_to`] wrote; every size is checked against the bytes present.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |why: String| ModelError::BadLogits(why);
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(bad("not a crunch base-logits file (bad magic)".into()));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(bad(format!("version {version}, this crunch reads version {VERSION}")));
        }
        let hlen = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
        let hend =
            16usize.checked_add(hlen).filter(|&e| e <= bytes.len()).ok_or_else(|| bad("truncated header".into()))?;
        let h: Header = serde_json::from_slice(&bytes[16..hend]).map_err(|e| bad(format!("header: {e}")))?;
        let n_tok = h.n_chunks.checked_mul(h.n_ctx);
        let n_pk = h.n_positions.checked_mul(h.top_k);
        let (Some(n_tok), Some(n_pk)) = (n_tok, n_pk) else {
            return Err(bad("sizes overflow".into()));
        };
        let first = h.first.unwrap_or(h.n_ctx / 2);
        let expected_positions = h.n_chunks.checked_mul(h.n_ctx.saturating_sub(1).saturating_sub(first));
        if h.n_ctx < 4
            || first >= h.n_ctx - 1
            || h.top_k == 0
            || h.top_k > h.n_vocab
            || expected_positions != Some(h.n_positions)
        {
            return Err(bad(format!(
                "inconsistent header: ctx {}, first position {first}, {} chunks, {} positions, top-k {}, vocabulary {}",
                h.n_ctx, h.n_chunks, h.n_positions, h.top_k, h.n_vocab
            )));
        }
        let words = n_tok
            .checked_add(n_pk.checked_mul(2).ok_or_else(|| bad("sizes overflow".into()))?)
            .and_then(|x| x.checked_add(2 * h.n_positions))
            .ok_or_else(|| bad("sizes overflow".into()))?;
        let body = &bytes[hend..];
        if Some(body.len()) != words.checked_mul(4) {
            return Err(bad(format!("{} bytes of data, the header announces {}", body.len(), words.saturating_mul(4))));
        }
        let mut words_iter = body.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
        let mut take_u32 = |n: usize| -> Vec<u32> { (&mut words_iter).take(n).map(u32::from_le_bytes).collect() };
        let tokens = take_u32(n_tok);
        let ids = take_u32(n_pk);
        let floats = |v: Vec<u32>| -> Vec<f32> { v.into_iter().map(f32::from_bits).collect() };
        let logp = floats(take_u32(n_pk));
        let log_rest = floats(take_u32(h.n_positions));
        let target_logp = floats(take_u32(h.n_positions));
        if let Some(&t) = tokens.iter().chain(&ids).find(|&&t| t as usize >= h.n_vocab) {
            return Err(bad(format!("token id {t} outside the vocabulary of {}", h.n_vocab)));
        }
        Ok(BaseLogits {
            model: h.model,
            n_vocab: h.n_vocab,
            n_ctx: h.n_ctx,
            n_chunks: h.n_chunks,
            first,
            top_k: h.top_k,
            bos: h.bos,
            tokens,
            ids,
            logp,
            log_rest,
            target_logp,
        })
    }
}

/// Distribution of per-position KL-divergences.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KldStats {
    pub mean: f64,
    /// Standard error of the mean.
    pub mean_err: f64,
    pub median: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl KldStats {
    /// Statistics of `values` (any order).
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return KldStats::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        let mean_err = if n > 1 { (var / (n - 1) as f64).sqrt() } else { 0.0 };
        // linear interpolation between closest ranks
        let q = |p: f64| {
            let x = p * (n - 1) as f64;
            let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
        };
        KldStats { mean, mean_err, median: q(0.5), p90: q(0.90), p95: q(0.95), p99: q(0.99), max: v[n - 1] }
    }
}

/// Per-position comparison figures, accumulated chunk by chunk.
#[derive(Clone, Debug, Default)]
pub struct CompareAccumulator {
    pub kld: Vec<f64>,
    pub same_top: usize,
    pub base_nll: crate::perplexity::NllSum,
    pub quant_nll: crate::perplexity::NllSum,
}

/// The outcome of comparing a model with the base.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareStats {
    pub n_positions: usize,
    pub kld: KldStats,
    /// Percentage of positions where both models' most likely token is the same.
    pub same_top_pct: f64,
    /// Its standard error (binomial), in percent.
    pub same_top_err: f64,
    pub ppl_base: f64,
    pub ppl_quant: f64,
    /// `ppl_quant / ppl_base`.
    pub ppl_ratio: f64,
}

impl CompareAccumulator {
    /// Add one chunk: the candidate's scored logits against positions `p0..` of `base`.
    pub fn add_chunk(&mut self, base: &BaseLogits, p0: usize, logits: &[f32], targets: &[u32]) {
        let n_vocab = base.n_vocab;
        let rows: Vec<(f64, bool, f64)> = logits
            .par_chunks(n_vocab)
            .zip(targets.par_iter())
            .enumerate()
            .map(|(r, (row, &t))| {
                let b = base.row(p0 + r);
                let kl = kld_top_k(b, row);
                let same = argmax(row) as u32 == b.ids[0];
                (kl, same, -crate::perplexity::log_softmax(row, t as usize))
            })
            .collect();
        for (r, (kl, same, nll)) in rows.into_iter().enumerate() {
            self.kld.push(kl);
            self.same_top += same as usize;
            self.quant_nll.add(nll);
            self.base_nll.add(-(base.target_logp(p0 + r) as f64));
        }
    }

    pub fn finish(&self) -> CompareStats {
        let n = self.kld.len();
        let f = if n > 0 { self.same_top as f64 / n as f64 } else { f64::NAN };
        let err = if n > 1 { (f * (1.0 - f) / (n - 1) as f64).sqrt() } else { 0.0 };
        let ppl_base = self.base_nll.estimate().0;
        let ppl_quant = self.quant_nll.estimate().0;
        CompareStats {
            n_positions: n,
            kld: KldStats::of(&self.kld),
            same_top_pct: 100.0 * f,
            same_top_err: 100.0 * err,
            ppl_base,
            ppl_quant,
            ppl_ratio: ppl_quant / ppl_base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
            })
            .collect()
    }

    #[test]
    fn top_k_with_whole_vocab_is_exact_and_lower_bound_otherwise() {
        let n = 500;
        let b = row(1, n);
        let q: Vec<f32> = b.iter().zip(row(2, n)).map(|(x, y)| x + 0.3 * y).collect();
        let full = kld_full(&b, &q);
        assert!(kld_full(&b, &b) < 1e-9);
        let (ids, logp, rest) = top_k_logprobs(&b, n);
        let all = kld_top_k(TopKRow { ids: &ids, logp: &logp, log_rest: rest }, &q);
        assert!((all - full).abs() < 1e-5, "{all} vs {full}");
        let mut prev = 0.0;
        for k in [1, 8, 64, 256] {
            let (ids, logp, rest) = top_k_logprobs(&b, k);
            assert_eq!(ids[0] as usize, argmax(&b));
            let total: f64 = logp.iter().map(|&l| (l as f64).exp()).sum::<f64>() + (rest as f64).exp();
            assert!((total - 1.0).abs() < 1e-5, "k {k}: mass {total}");
            let kk = kld_top_k(TopKRow { ids: &ids, logp: &logp, log_rest: rest }, &q);
            assert!(kk <= full + 1e-6 && kk + 1e-9 >= prev, "k {k}: {kk} (full {full}, previous {prev})");
            prev = kk;
        }
    }

    #[test]
    fn stats_and_file_round_trip() {
        let s = KldStats::of(&[3.0, 1.0, 2.0, 4.0, 5.0]);
        assert_eq!((s.mean, s.median, s.max), (3.0, 3.0, 5.0));
        let layout = crate::perplexity::ChunkLayout { n_ctx: 8, n_chunks: 2, first: 4 };
        let mut b = BaseLogits::new("m".into(), 50, &layout, 5);
        b.tokens = (0..16).collect();
        b.bos = Some(1);
        for c in 0..2 {
            let logits: Vec<f32> = (0..3).flat_map(|r| row(10 + c * 3 + r, 50)).collect();
            b.push_rows(&logits, &[4, 5, 6]);
        }
        let mut bytes = Vec::new();
        b.write_to(&mut bytes).unwrap();
        assert_eq!(BaseLogits::from_bytes(&bytes).unwrap(), b);
        for cut in [0, 10, 20, bytes.len() - 1] {
            assert!(BaseLogits::from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(BaseLogits::from_bytes(&bad).unwrap_err().to_string().contains("magic"));
    }
}
