//! Hugging Face `tokenizer.json` tokenizers, run by the `tokenizers` crate.

use std::path::Path;

use tokenizers::decoders::DecoderWrapper;

use super::byte_level;
use super::{Result, TokenizerError};

/// A `tokenizer.json` tokenizer.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    byte_level: bool,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish()
    }
}

fn hf_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Hf(e.to_string())
}

const BOS_NAMES: &[&str] = &["<s>", "<|begin_of_text|>", "<bos>", "[CLS]", "<|startoftext|>", "<|im_start|>"];
const EOS_NAMES: &[&str] = &["</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "[SEP]", "<|im_end|>", "<|eot_id|>"];

impl HfTokenizer {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::Io(path.display().to_string(), e))?;
        Self::from_bytes(&bytes)
    }

    pub fn from_bytes(json: &[u8]) -> Result<Self> {
        let mut inner = tokenizers::Tokenizer::from_bytes(json).map_err(hf_err)?;
        // Truncation and padding are the caller's business (all-MiniLM's file truncates at 128).
        inner.with_truncation(None).map_err(hf_err)?;
        inner.with_padding(None);
        let byte_level = match inner.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => true,
            Some(DecoderWrapper::Sequence(_)) | None => {
                // A byte-level model without a decoder entry still stores Ġ-style tokens.
                inner.token_to_id("Ġ").is_some() && inner.token_to_id("Ċ").is_some()
            }
            _ => false,
        };
        // What the post-processor adds around a text tells which tokens are BOS and EOS.
        let plain = inner.encode("a", false).map_err(hf_err)?.get_ids().to_vec();
        let framed = inner.encode("a", true).map_err(hf_err)?.get_ids().to_vec();
        let (mut prefix, mut suffix) = (Vec::new(), Vec::new());
        if framed.len() > plain.len() {
            if let Some(k) = (0..=framed.len() - plain.len()).find(|&k| framed[k..k + plain.len()] == plain[..]) {
                prefix = framed[..k].to_vec();
                suffix = framed[k + plain.len()..].to_vec();
            }
        }
        let named = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let bos = prefix.first().copied().or_else(|| named(BOS_NAMES));
        let eos = suffix.last().copied().or_else(|| named(EOS_NAMES));
        Ok(HfTokenizer { byte_level, bos, eos, add_bos: !prefix.is_empty(), add_eos: !suffix.is_empty(), inner })
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    /// The post-processor puts a token in front of the text.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
    /// The post-processor puts a token after the text.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    /// Encode; `add_special` runs the post-processor (e.g. BERT's `[CLS] … [SEP]`). Added special
    /// tokens in the text are always matched, as `tokenizers` does.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text, add_special).map_err(hf_err)?.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let n = self.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= n) {
            return Err(TokenizerError::IdOutOfRange { id, n });
        }
        self.inner.decode(ids, skip_special).map_err(hf_err)
    }

    /// The bytes of one token: byte-level tokens are mapped back to raw bytes; others are decoded
    /// on their own.
    pub fn token_to_piece(&self, id: u32) -> Vec<u8> {
        let Some(tok) = self.inner.id_to_token(id) else {
            return Vec::new();
        };
        if self.byte_level {
            let mut out = Vec::with_capacity(tok.len());
            byte_level::decode(&tok, &mut out);
            return out;
        }
        self.inner.decode(&[id], false).map(String::into_bytes).unwrap_or_else(|_| tok.into_bytes())
    }
}
