//! Calibration text: a file (or seeded random tokens from the model's vocabulary), tokenized and
//! cut into chunks of `n_ctx` tokens the way llama-imatrix and llama-perplexity cut them: the
//! whole text is tokenized once with BOS, chunk `i` is tokens `i*n_ctx..(i+1)*n_ctx`, and the
//! first token of every chunk is replaced by BOS when the vocabulary adds one.

use crate::error::{CalibError, Result};
use crunch_model::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

/// Where calibration tokens come from.
#[derive(Clone, Debug)]
pub enum TextSource {
    /// A UTF-8 text file.
    File(PathBuf),
    /// `n_tokens` random ordinary tokens of the model's vocabulary, from `seed` (a built-in
    /// source that needs no data set; llama.cpp users use such "random token" imatrices too).
    Random { n_tokens: usize, seed: u64 },
}

impl TextSource {
    /// `random:N` or `random:N:SEED` is the built-in source, anything else a file.
    pub fn parse(s: &str) -> Self {
        if let Some(rest) = s.strip_prefix("random:") {
            let mut it = rest.split(':');
            let n = it.next().and_then(|v| v.parse().ok());
            let seed = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            if let Some(n_tokens) = n {
                return TextSource::Random { n_tokens, seed };
            }
        }
        TextSource::File(PathBuf::from(s))
    }

    /// A short description for the imatrix `datasets` list.
    pub fn describe(&self) -> String {
        match self {
            TextSource::File(p) => p.display().to_string(),
            TextSource::Random { n_tokens, seed } => format!("random:{n_tokens}:{seed}"),
        }
    }
}

/// Calibration chunks ready to run.
#[derive(Clone, Debug)]
pub struct Chunks {
    /// Each exactly `n_ctx` tokens, BOS first when the vocabulary adds one.
    pub chunks: Vec<Vec<u32>>,
    pub n_ctx: usize,
    /// Tokens in the whole text.
    pub n_tokens: usize,
    pub dataset: String,
}

/// How to cut the text.
#[derive(Clone, Copy, Debug)]
pub struct ChunkOptions {
    pub n_ctx: usize,
    /// At most this many chunks (all when `None`).
    pub n_chunks: Option<usize>,
    /// Skip this many chunks at the start (llama-imatrix `--chunk`).
    pub skip: usize,
    /// Pick chunks at random positions (seeded) instead of in order.
    pub shuffle_seed: Option<u64>,
}

/// A small deterministic generator (SplitMix64), so runs are reproducible everywhere.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| CalibError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| CalibError::Text(format!("{}: not UTF-8 ({e})", path.display())))
}

/// Tokenize `source` with the model's tokenizer (BOS added as the vocabulary says).
///
/// # Errors
/// Unreadable or non-UTF-8 files, tokenizer errors.
pub fn tokenize(source: &TextSource, tok: &Tokenizer) -> Result<Vec<u32>> {
    match source {
        TextSource::File(p) => Ok(tok.encode(&read_text(p)?, true)?),
        TextSource::Random { n_tokens, seed } => {
            let ordinary: Vec<u32> = (0..tok.vocab_size() as u32)
                .filter(|&id| !tok.is_eog(id) && Some(id) != tok.bos() && !tok.token_to_piece(id).is_empty())
                .collect();
            if ordinary.is_empty() {
                return Err(CalibError::Text("the vocabulary has no ordinary tokens".into()));
            }
            let mut rng = SplitMix(*seed);
            let mut out: Vec<u32> = tok.bos().filter(|_| tok.add_bos()).into_iter().collect();
            while out.len() < *n_tokens {
                out.push(ordinary[rng.below(ordinary.len())]);
            }
            Ok(out)
        }
    }
}

/// Cut tokens into chunks.
///
/// # Errors
/// A context below 16 tokens, or a text shorter than one context after skipping.
pub fn chunk(tokens: &[u32], bos: Option<u32>, dataset: &str, o: ChunkOptions) -> Result<Chunks> {
    if o.n_ctx < 16 {
        return Err(CalibError::Text(format!("context of {} tokens is too small (at least 16)", o.n_ctx)));
    }
    let available = (tokens.len() / o.n_ctx).saturating_sub(o.skip);
    if available == 0 {
        return Err(CalibError::Text(format!(
            "{dataset} has {} tokens, fewer than one context of {} tokens{}; give more text or a smaller --ctx",
            tokens.len(),
            o.n_ctx,
            if o.skip > 0 { format!(" after skipping {} chunks", o.skip) } else { String::new() }
        )));
    }
    let n = o.n_chunks.map_or(available, |c| c.min(available));
    let mut starts: Vec<usize> = (o.skip..o.skip + available).collect();
    if let Some(seed) = o.shuffle_seed {
        let mut rng = SplitMix(seed);
        for i in (1..starts.len()).rev() {
            starts.swap(i, rng.below(i + 1));
        }
    }
    starts.truncate(n);
    let chunks = starts
        .into_iter()
        .map(|c| {
            let mut v = tokens[c * o.n_ctx..(c + 1) * o.n_ctx].to_vec();
            if let Some(b) = bos {
                v[0] = b;
            }
            v
        })
        .collect();
    Ok(Chunks { chunks, n_ctx: o.n_ctx, n_tokens: tokens.len(), dataset: dataset.to_string() })
}

/// Tokenize and cut in one go; BOS per chunk as the tokenizer says.
///
/// # Errors
/// See [`tokenize`] and [`chunk`].
pub fn load_chunks(source: &TextSource, tok: &Tokenizer, o: ChunkOptions) -> Result<Chunks> {
    let tokens = tokenize(source, tok)?;
    let bos = if tok.add_bos() { tok.bos() } else { None };
    chunk(&tokens, bos, &source.describe(), o)
}
