//! Tokenizers: text to token ids and back.
//!
//! Two sources of vocabularies:
//! - GGUF-embedded vocabularies ([`GgufVocab`], the `tokenizer.ggml.*` metadata), tokenized the way
//!   llama.cpp does it, ids for ids: byte-level BPE (`"gpt2"`, with the pre-tokenizer chosen by
//!   `tokenizer.ggml.pre`), SentencePiece BPE (`"llama"`) and WordPiece (`"bert"`);
//! - Hugging Face `tokenizer.json` files, run by the `tokenizers` crate.
//!
//! [`Tokenizer`] is the common front.

mod bpe;
mod byte_level;
mod gguf;
mod gguf_vocab;
mod hf;
pub mod pre_catalog;
mod pretokenizer;
mod special;
mod split_custom;
mod split_regex;
mod spm;
mod unicode;
mod vocab;
mod wpm;

use std::path::Path;

pub use gguf::GgufTokenizer;
pub use hf::HfTokenizer;
pub use vocab::{GgufVocab, TokenAttr, VocabKind};

/// Tokenizer errors.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("invalid vocabulary: {0}")]
    Vocab(String),
    #[error("unknown tokenizer model {0:?} (tokenizer.ggml.model)")]
    UnknownModel(String),
    #[error("unknown pre-tokenizer {0:?} (tokenizer.ggml.pre)")]
    UnknownPreTokenizer(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("pre-tokenizer regex: {0}")]
    Regex(String),
    #[error("token id {id} out of range (vocabulary of {n})")]
    IdOutOfRange { id: u32, n: usize },
    #[error("the vocabulary has no {0} token")]
    MissingToken(&'static str),
    #[error("no token for byte 0x{0:02X} and no unknown token")]
    NoByteToken(u8),
    #[error("tokenizer.json: {0}")]
    Hf(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

/// How to encode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Add the model's BOS/EOS (or CLS/SEP) as its vocabulary says.
    pub add_special: bool,
    /// Match control tokens written in the text (`"<|im_start|>"`) as single tokens. User-defined
    /// tokens are always matched. Only GGUF vocabularies honour `false`; `tokenizer.json` ones
    /// always match their added tokens.
    pub parse_special: bool,
}

/// A tokenizer of either kind.
#[derive(Debug)]
pub enum Tokenizer {
    Gguf(Box<GgufTokenizer>),
    Hf(Box<HfTokenizer>),
}

impl Tokenizer {
    /// From a GGUF-embedded vocabulary.
    pub fn from_gguf_vocab(vocab: &GgufVocab) -> Result<Self> {
        Ok(Tokenizer::Gguf(Box::new(GgufTokenizer::new(vocab)?)))
    }

    /// From the vocabulary embedded in a GGUF file (`tokenizer.ggml.*`).
    pub fn from_gguf(file: &crunch_core::gguf::GgufFile) -> Result<Self> {
        Self::from_gguf_vocab(&GgufVocab::from_gguf(file)?)
    }

    /// From a Hugging Face `tokenizer.json` file.
    pub fn from_hf_file(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Tokenizer::Hf(Box::new(HfTokenizer::from_file(path)?)))
    }

    /// From the bytes of a `tokenizer.json`.
    pub fn from_hf_json(json: &[u8]) -> Result<Self> {
        Ok(Tokenizer::Hf(Box::new(HfTokenizer::from_bytes(json)?)))
    }

    /// Encode text. `add_special` adds BOS/EOS as the model wants (see [`Tokenizer::add_bos`]).
    /// Control tokens written in the text are *not* matched (llama.cpp's `parse_special = false`,
    /// what its perplexity tool uses); see [`Tokenizer::encode_with`].
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.encode_with(text, EncodeOptions { add_special, parse_special: false })
    }

    /// Encode text with special tokens in it matched (chat templates).
    pub fn encode_special(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.encode_with(text, EncodeOptions { add_special, parse_special: true })
    }

    pub fn encode_with(&self, text: &str, opts: EncodeOptions) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Gguf(t) => t.encode(text, opts.add_special, opts.parse_special),
            Tokenizer::Hf(t) => t.encode(text, opts.add_special),
        }
    }

    /// Decode to text, special tokens included (llama.cpp's `common_detokenize` default). Invalid
    /// UTF-8 (a multi-byte character cut by the id list's ends) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, false)
    }

    /// Decode, optionally leaving out control tokens.
    pub fn decode_with(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        match self {
            Tokenizer::Gguf(t) => Ok(String::from_utf8_lossy(&t.decode(ids, skip_special)?).into_owned()),
            Tokenizer::Hf(t) => t.decode(ids, skip_special),
        }
    }

    /// The raw bytes of one token, for streaming output: concatenating the pieces of generated
    /// tokens and decoding UTF-8 at the end gives the text. Empty for an unknown id.
    pub fn token_to_piece(&self, id: u32) -> Vec<u8> {
        match self {
            Tokenizer::Gguf(t) => t.token_to_piece(id).to_vec(),
            Tokenizer::Hf(t) => t.token_to_piece(id),
        }
    }

    pub fn bos(&self) -> Option<u32> {
        match self {
            Tokenizer::Gguf(t) => t.bos(),
            Tokenizer::Hf(t) => t.bos(),
        }
    }

    pub fn eos(&self) -> Option<u32> {
        match self {
            Tokenizer::Gguf(t) => t.eos(),
            Tokenizer::Hf(t) => t.eos(),
        }
    }

    /// Whether to start a sequence with BOS (`tokenizer.ggml.add_bos_token`, defaulting as in
    /// llama.cpp: true for SentencePiece and WordPiece, and for BPE only with the Llama 3, Tekken,
    /// Chameleon and Gemma 4 pre-tokenizers).
    pub fn add_bos(&self) -> bool {
        match self {
            Tokenizer::Gguf(t) => t.add_bos(),
            Tokenizer::Hf(t) => t.add_bos(),
        }
    }

    /// Whether to end a sequence with EOS (`tokenizer.ggml.add_eos_token`).
    pub fn add_eos(&self) -> bool {
        match self {
            Tokenizer::Gguf(t) => t.add_eos(),
            Tokenizer::Hf(t) => t.add_eos(),
        }
    }

    /// Does this token end generation?
    pub fn is_eog(&self, id: u32) -> bool {
        match self {
            Tokenizer::Gguf(t) => t.is_eog(id),
            Tokenizer::Hf(t) => Some(id) == t.eos(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Gguf(t) => t.vocab_size(),
            Tokenizer::Hf(t) => t.vocab_size(),
        }
    }

    /// The vocabulary string of a token (byte-level and `▁`-escaped as stored).
    pub fn token_text(&self, id: u32) -> Option<String> {
        match self {
            Tokenizer::Gguf(t) => t.token_text(id).map(str::to_string),
            Tokenizer::Hf(t) => t.token_text(id),
        }
    }

    pub fn token_id(&self, text: &str) -> Option<u32> {
        match self {
            Tokenizer::Gguf(t) => t.token_id(text),
            Tokenizer::Hf(t) => t.token_id(text),
        }
    }
}
