//! Tokenizers for GGUF-embedded vocabularies, behaving like llama.cpp's `llama_vocab`.

use super::bpe::{BpeModel, Scratch};
use super::byte_level;
use super::pretokenizer::{PreConfig, PreTokenizer};
use super::special::{partition, Fragment};
use super::spm;
use super::vocab::{GgufVocab, SpecialIds, TokenAttr, Vocab, VocabKind};
use super::wpm::{self, WpmOptions};
use super::{Result, TokenizerError};

#[derive(Debug)]
enum Model {
    Bpe { bpe: Box<BpeModel>, pre: PreTokenizer },
    Spm,
    Wpm(WpmOptions),
}

/// A tokenizer built from a [`GgufVocab`].
#[derive(Debug)]
pub struct GgufTokenizer {
    vocab: Vocab,
    model: Model,
    add_bos: bool,
    add_eos: bool,
    add_sep: bool,
    add_space_prefix: bool,
    escape_whitespaces: bool,
    clean_spaces: bool,
    /// `token_to_piece` with special tokens rendered, for every id.
    pieces: Vec<Vec<u8>>,
}

const SPACE_ESCAPE: &str = "\u{2581}";

impl GgufTokenizer {
    pub fn new(v: &GgufVocab) -> Result<Self> {
        let n = v.tokens.len() as u32;
        let mut add_space_prefix = false;
        let add_bos;
        let mut add_sep = false;
        let mut escape_whitespaces = true;
        let mut clean_spaces = false;
        let mut force_bos = false;
        let (kind, defaults, pre_cfg) = match v.model.as_str() {
            "llama" => {
                add_space_prefix = true;
                add_bos = true;
                let d = SpecialIds { bos: Some(1), eos: Some(2), unk: Some(0), ..Default::default() };
                (VocabKind::Spm, d, None)
            }
            "bert" => {
                add_bos = true;
                add_sep = true;
                clean_spaces = true;
                let d =
                    SpecialIds { bos: Some(101), unk: Some(100), sep: Some(102), pad: Some(0), ..Default::default() };
                (VocabKind::Wpm, d, None)
            }
            "gpt2" | "gemma4" => {
                let pre = if v.model == "gemma4" { Some("gemma4") } else { v.pre.as_deref().filter(|p| !p.is_empty()) };
                let cfg = PreConfig::for_name(pre)?;
                add_bos = cfg.add_bos;
                clean_spaces = cfg.clean_spaces;
                escape_whitespaces = cfg.escape_whitespaces;
                force_bos = pre == Some("gemma4");
                let d = if v.model == "gemma4" {
                    SpecialIds::default()
                } else {
                    SpecialIds { bos: if cfg.no_bos { None } else { Some(11) }, eos: Some(11), ..Default::default() }
                };
                (VocabKind::Bpe, d, Some(cfg))
            }
            "t5" | "rwkv" | "plamo2" | "hybriddna" | "whitespace" => {
                return Err(TokenizerError::Unsupported(format!("tokenizer model {:?}", v.model)));
            }
            other => return Err(TokenizerError::UnknownModel(other.to_string())),
        };
        if n == 0 {
            return Err(TokenizerError::Vocab("the vocabulary has no tokens".into()));
        }
        let vocab = Vocab::new(v, kind, defaults)?;
        add_space_prefix = v.add_space_prefix.unwrap_or(add_space_prefix);
        let add_bos = v.add_bos.unwrap_or(add_bos) || force_bos;
        let add_eos = v.add_eos.unwrap_or(false);
        add_sep = v.add_sep.unwrap_or(add_sep);

        let model = match kind {
            VocabKind::Spm => Model::Spm,
            VocabKind::Wpm => {
                let lowercase = v.lowercase.unwrap_or(true);
                Model::Wpm(WpmOptions { lowercase, strip_accents: lowercase })
            }
            VocabKind::Bpe => {
                let cfg = pre_cfg.ok_or_else(|| TokenizerError::Vocab("missing pre-tokenizer".into()))?;
                let merges = v
                    .merges
                    .as_deref()
                    .ok_or_else(|| TokenizerError::Vocab("BPE vocabulary without tokenizer.ggml.merges".into()))?;
                let bpe = BpeModel::new(&vocab, merges, cfg.byte_encode, cfg.ignore_merges, force_bos)?;
                let pre = PreTokenizer::new(&cfg.patterns)?;
                Model::Bpe { bpe: Box::new(bpe), pre }
            }
        };
        let mut t = GgufTokenizer {
            vocab,
            model,
            add_bos,
            add_eos,
            add_sep,
            add_space_prefix,
            escape_whitespaces,
            clean_spaces,
            pieces: Vec::new(),
        };
        t.pieces = (0..n).map(|id| t.compute_piece(id)).collect();
        Ok(t)
    }

    fn byte_encoded(&self) -> bool {
        matches!(&self.model, Model::Bpe { .. }) && !self.escape_whitespaces
    }

    /// llama.cpp's `token_to_piece` with `special = true`.
    fn compute_piece(&self, id: u32) -> Vec<u8> {
        let attr = self.vocab.attr(id);
        let text = &self.vocab.tokens[id as usize];
        if attr.has(TokenAttr::UNKNOWN | TokenAttr::CONTROL | TokenAttr::USER_DEFINED) {
            return text.as_bytes().to_vec();
        }
        if attr.has(TokenAttr::NORMAL) {
            if self.byte_encoded() {
                let mut out = Vec::with_capacity(text.len());
                byte_level::decode(text, &mut out);
                return out;
            }
            return text.replace(SPACE_ESCAPE, " ").into_bytes();
        }
        if attr.has(TokenAttr::BYTE) && matches!(self.vocab.kind, VocabKind::Spm | VocabKind::Bpe) {
            let hex = text.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok());
            return hex.map(|b| vec![b]).unwrap_or_default();
        }
        Vec::new()
    }

    pub fn kind(&self) -> VocabKind {
        self.vocab.kind
    }
    pub fn vocab_size(&self) -> usize {
        self.vocab.n_tokens()
    }
    pub fn bos(&self) -> Option<u32> {
        self.vocab.bos
    }
    pub fn eos(&self) -> Option<u32> {
        self.vocab.eos
    }
    pub fn eot(&self) -> Option<u32> {
        self.vocab.eot
    }
    pub fn unk(&self) -> Option<u32> {
        self.vocab.unk
    }
    pub fn pad(&self) -> Option<u32> {
        self.vocab.pad
    }
    pub fn sep(&self) -> Option<u32> {
        self.vocab.sep
    }
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }
    pub fn add_sep(&self) -> bool {
        self.add_sep
    }
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }
    /// End-of-generation tokens (EOS, EOT and the usual end-of-turn markers).
    pub fn eog_tokens(&self) -> &[u32] {
        &self.vocab.eog
    }
    pub fn is_eog(&self, id: u32) -> bool {
        self.vocab.eog.binary_search(&id).is_ok()
    }
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.tokens.get(id as usize).map(|s| s.as_str())
    }
    pub fn token_attr(&self, id: u32) -> TokenAttr {
        self.vocab.attr(id)
    }
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.id(text)
    }

    /// llama.cpp's `llama_tokenize(text, add_special, parse_special)`.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        if text.len() >= u32::MAX as usize / 2 {
            return Err(TokenizerError::Unsupported("text of 2 GiB or more in one call".into()));
        }
        let frags = partition(&self.vocab, text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        let need = |id: Option<u32>, what: &'static str| id.ok_or(TokenizerError::MissingToken(what));
        match &self.model {
            Model::Bpe { bpe, pre } => {
                if add_special && self.add_bos {
                    out.push(need(self.vocab.bos, "BOS")?);
                }
                let mut words = Vec::new();
                let mut scratch = Scratch::default();
                let mut escaped;
                for f in frags {
                    match f {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(a, b) => {
                            let piece = if self.escape_whitespaces {
                                escaped = text[a..b].replace(' ', SPACE_ESCAPE);
                                escaped.as_str()
                            } else {
                                &text[a..b]
                            };
                            words.clear();
                            pre.split(piece, &mut words)?;
                            for &(ws, we) in &words {
                                bpe.tokenize_word(&self.vocab, &piece[ws..we], &mut scratch, &mut out);
                            }
                        }
                    }
                }
                if add_special && self.add_eos {
                    out.push(need(self.vocab.eos, "EOS")?);
                }
            }
            Model::Spm => {
                if add_special && self.add_bos {
                    out.push(need(self.vocab.bos, "BOS")?);
                }
                let mut prev_special = true;
                let mut buf = String::new();
                for f in frags {
                    match f {
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                        Fragment::Text(a, b) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push_str(SPACE_ESCAPE);
                            }
                            for c in text[a..b].chars() {
                                if c == ' ' {
                                    buf.push_str(SPACE_ESCAPE);
                                } else {
                                    buf.push(c);
                                }
                            }
                            spm::tokenize(&self.vocab, &buf, &mut out)?;
                            prev_special = false;
                        }
                    }
                }
                if add_special && self.add_eos {
                    out.push(need(self.vocab.eos, "EOS")?);
                }
            }
            Model::Wpm(opts) => {
                if add_special {
                    out.push(need(self.vocab.bos, "BOS/CLS")?);
                }
                for f in frags {
                    match f {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(a, b) => wpm::tokenize(&self.vocab, &text[a..b], *opts, &mut out),
                    }
                }
                if add_special {
                    out.push(need(self.vocab.sep, "SEP")?);
                }
            }
        }
        Ok(out)
    }

    /// The bytes a token stands for (special tokens as their text). Empty for unknown ids.
    pub fn token_to_piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map(|p| p.as_slice()).unwrap_or(&[])
    }

    /// llama.cpp's `llama_detokenize(tokens, remove_special = false, unparse_special = !skip_special)`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<Vec<u8>> {
        let n = self.vocab.n_tokens();
        let mut out = Vec::with_capacity(ids.len() * 4);
        let mut remove_space = self.add_space_prefix;
        for &id in ids {
            if id as usize >= n {
                return Err(TokenizerError::IdOutOfRange { id, n });
            }
            if skip_special && self.vocab.attr(id).is_special() {
                // llama.cpp still consumes the one-space strip on a skipped first token.
                remove_space = false;
                continue;
            }
            let mut p = self.token_to_piece(id);
            if remove_space {
                if let Some(rest) = p.strip_prefix(b" ") {
                    p = rest;
                }
            }
            remove_space = false;
            out.extend_from_slice(p);
        }
        if self.clean_spaces {
            clean_up_spaces(&mut out);
        }
        Ok(out)
    }
}

/// The detokenizer's clean-up passes (HF's `clean_up_tokenization_spaces`, as llama.cpp does it).
fn clean_up_spaces(text: &mut Vec<u8>) {
    // " ?", " !", " .", " ,": drop the space.
    let mut out: Vec<u8> = Vec::with_capacity(text.len());
    for (i, &x) in text.iter().enumerate() {
        if i > 0 && text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            out.pop();
        }
        out.push(x);
    }
    // " ' " becomes "'".
    let mut src = std::mem::take(&mut out);
    let mut i = 0;
    while i < src.len() {
        let x = src[i];
        if i > 0 && x == b'\'' && i + 1 < src.len() && src[i - 1] == b' ' && src[i + 1] == b' ' {
            out.pop();
            out.push(x);
            // llama.cpp blanks the skipped space, which a following check then sees.
            src[i + 1] = 0;
            i += 2;
            continue;
        }
        out.push(x);
        i += 1;
    }
    // " 's", " 'm", " 're", " 've": drop the space.
    let src = std::mem::take(&mut out);
    for (i, &x) in src.iter().enumerate() {
        if i > 0 && src[i - 1] == b' ' && x == b'\'' && i + 1 < src.len() {
            let x1 = src[i + 1];
            let x2 = src.get(i + 2).copied();
            if matches!(x1, b's' | b'm') || matches!((x1, x2), (b'r', Some(b'e')) | (b'v', Some(b'e'))) {
                out.pop();
            }
        }
        out.push(x);
    }
    *text = out;
}
