//! The vocabulary a GGUF file carries (`tokenizer.ggml.*`), as plain data, and the lookup tables
//! built from it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Result, TokenizerError};

/// A GGUF-embedded tokenizer vocabulary, field for field from the `tokenizer.ggml.*` metadata.
///
/// | field              | GGUF key                                   |
/// |--------------------|--------------------------------------------|
/// | `model`            | `tokenizer.ggml.model`                     |
/// | `pre`              | `tokenizer.ggml.pre`                       |
/// | `tokens`           | `tokenizer.ggml.tokens`                    |
/// | `scores`           | `tokenizer.ggml.scores`                    |
/// | `token_types`      | `tokenizer.ggml.token_type`                |
/// | `merges`           | `tokenizer.ggml.merges`                    |
/// | `bos_id`           | `tokenizer.ggml.bos_token_id`              |
/// | `eos_id`           | `tokenizer.ggml.eos_token_id`              |
/// | `unk_id`           | `tokenizer.ggml.unknown_token_id`          |
/// | `pad_id`           | `tokenizer.ggml.padding_token_id`          |
/// | `sep_id`           | `tokenizer.ggml.seperator_token_id` (sic)  |
/// | `eot_id`           | `tokenizer.ggml.eot_token_id`              |
/// | `add_bos`          | `tokenizer.ggml.add_bos_token`             |
/// | `add_eos`          | `tokenizer.ggml.add_eos_token`             |
/// | `add_sep`          | `tokenizer.ggml.add_sep_token`             |
/// | `add_space_prefix` | `tokenizer.ggml.add_space_prefix`          |
/// | `lowercase`        | `tokenizer.ggml.normalizer.lowercase`      |
///
/// Absent keys are `None`; the per-model defaults are llama.cpp's.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GgufVocab {
    /// `"gpt2"` (byte-level BPE), `"llama"` (SentencePiece BPE), `"bert"` (WordPiece) or `"gemma4"`.
    pub model: String,
    /// Pre-tokenizer name for `"gpt2"` vocabularies (`"llama-bpe"`, `"qwen2"`, `"smollm"`, ...).
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub scores: Option<Vec<f32>>,
    /// llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Option<Vec<i32>>,
    /// `"left right"` pairs, highest priority first.
    pub merges: Option<Vec<String>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub sep_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_sep: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub lowercase: Option<bool>,
}

impl GgufVocab {
    /// Read the JSON form written by `scripts/dump_vocab.py` (or by `serde_json` from this type).
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| TokenizerError::Vocab(format!("bad vocab JSON: {e}")))
    }
}

/// Token attributes (llama.cpp's `llama_token_attr` bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenAttr(pub u16);

impl TokenAttr {
    pub const UNDEFINED: u16 = 0;
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    pub const LSTRIP: u16 = 1 << 7;
    pub const RSTRIP: u16 = 1 << 8;

    fn from_type(t: i32) -> Self {
        TokenAttr(match t {
            1 => Self::NORMAL,
            2 => Self::UNKNOWN,
            3 => Self::CONTROL,
            4 => Self::USER_DEFINED,
            5 => Self::UNUSED,
            6 => Self::BYTE,
            _ => Self::UNDEFINED,
        })
    }
    #[inline]
    pub fn has(self, bits: u16) -> bool {
        self.0 & bits != 0
    }
    /// Control or unknown: hidden from text unless special tokens are asked for.
    #[inline]
    pub fn is_special(self) -> bool {
        self.has(Self::CONTROL | Self::UNKNOWN)
    }
}

/// The vocabulary's tokenizer family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VocabKind {
    /// SentencePiece BPE with scores (`"llama"`).
    Spm,
    /// Merge-ranked BPE (`"gpt2"`, `"gemma4"`).
    Bpe,
    /// WordPiece (`"bert"`).
    Wpm,
}

/// Lookup tables shared by all the GGUF tokenizers.
#[derive(Debug)]
pub(crate) struct Vocab {
    pub kind: VocabKind,
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub attrs: Vec<TokenAttr>,
    pub token_to_id: HashMap<String, u32>,
    /// Control, user-defined and unknown tokens, longest text first.
    pub special_cache: Vec<u32>,
    pub max_token_len: usize,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub sep: Option<u32>,
    pub eog: Vec<u32>,
}

const EOT_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_NAMES: &[&str] = &["<|eom_id|>"];
const FIM_NAMES: &[&[&str]] = &[
    &[
        "<|fim_prefix|>",
        "<fim-prefix>",
        "<fim_prefix>",
        "<｜fim▁begin｜>",
        "<PRE>",
        "▁<PRE>",
        "<|code_prefix|>",
        "<|prefix|>",
    ],
    &[
        "<|fim_suffix|>",
        "<fim-suffix>",
        "<fim_suffix>",
        "<｜fim▁hole｜>",
        "<SUF>",
        "▁<SUF>",
        "<|code_suffix|>",
        "<|suffix|>",
    ],
    &[
        "<|fim_middle|>",
        "<fim-middle>",
        "<fim_middle>",
        "<｜fim▁end｜>",
        "<MID>",
        "▁<MID>",
        "<|code_middle|>",
        "<|middle|>",
    ],
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"],
    &["<|file_sep|>"],
];
const EOG_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

impl Vocab {
    /// Build the tables; `defaults` are the model-type special ids before the file's overrides.
    pub fn new(v: &GgufVocab, kind: VocabKind, defaults: SpecialIds) -> Result<Self> {
        let n = v.tokens.len();
        if n == 0 {
            return Err(TokenizerError::Vocab("the vocabulary has no tokens".into()));
        }
        if n > u32::MAX as usize / 2 {
            return Err(TokenizerError::Vocab(format!("vocabulary too large: {n} tokens")));
        }
        if let Some(s) = &v.scores {
            if s.len() < n {
                return Err(TokenizerError::Vocab(format!("{} scores for {n} tokens", s.len())));
            }
        }
        if let Some(t) = &v.token_types {
            if t.len() < n {
                return Err(TokenizerError::Vocab(format!("{} token types for {n} tokens", t.len())));
            }
        }

        let mut tokens = Vec::with_capacity(n);
        let mut token_to_id = HashMap::with_capacity(n);
        let mut max_token_len = 0;
        for (i, t) in v.tokens.iter().enumerate() {
            // llama.cpp reads token texts as C strings (cut at a NUL) and renames empty ones so
            // that every text maps to one id.
            let t = t.split('\0').next().unwrap_or("");
            let t = if t.is_empty() { format!("[EMPTY_{i}]") } else { t.to_string() };
            max_token_len = max_token_len.max(t.len());
            token_to_id.insert(t.clone(), i as u32);
            tokens.push(t);
        }
        let scores = match &v.scores {
            Some(s) => s[..n].to_vec(),
            None => vec![0.0; n],
        };
        let mut attrs: Vec<TokenAttr> = match &v.token_types {
            Some(t) => t[..n].iter().map(|&t| TokenAttr::from_type(t)).collect(),
            None => vec![TokenAttr(TokenAttr::NORMAL); n],
        };

        let check = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        let pick = |file: Option<u32>, default: Option<u32>| check(file).or(check(default));
        let bos = pick(v.bos_id, defaults.bos);
        let eos = pick(v.eos_id, defaults.eos);
        let unk = pick(v.unk_id, defaults.unk);
        let pad = pick(v.pad_id, defaults.pad);
        let sep = pick(v.sep_id, defaults.sep);
        let mut eot = check(v.eot_id);

        // llama.cpp's text-based detection of end-of-turn, end-of-message and fill-in-the-middle
        // tokens: the first one found of each kind is forced to be a control token.
        let first_named = |names: &[&str]| names.iter().filter_map(|s| token_to_id.get(*s).copied()).min();
        let mut promote = Vec::new();
        if eot.is_none() {
            eot = first_named(EOT_NAMES);
            promote.extend(eot);
        }
        let eom = first_named(EOM_NAMES);
        promote.extend(eom);
        for names in FIM_NAMES {
            promote.extend(first_named(names));
        }
        for id in promote {
            attrs[id as usize].0 |= TokenAttr::CONTROL;
        }
        // Control tokens whose text says "unused" are unused.
        for (t, a) in tokens.iter().zip(attrs.iter_mut()) {
            if a.has(TokenAttr::CONTROL) && t.contains("unused") {
                a.0 |= TokenAttr::UNUSED;
            }
        }
        // End-of-generation tokens.
        let mut eog: Vec<u32> = EOG_NAMES.iter().filter_map(|s| token_to_id.get(*s).copied()).collect();
        for &id in &eog {
            attrs[id as usize].0 |= TokenAttr::CONTROL;
        }
        for name in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(&id) = token_to_id.get(name) {
                attrs[id as usize] = TokenAttr(TokenAttr::USER_DEFINED);
            }
        }
        eog.extend(eos);
        eog.extend(eot);
        eog.extend(eom);
        let has = |eog: &[u32], s: &str| eog.iter().any(|&i| tokens[i as usize] == s);
        if (has(&eog, "<|return|>") && has(&eog, "<|call|>") && has(&eog, "<|end|>"))
            || (has(&eog, "<|calls|>") && has(&eog, "<|flush|>") && has(&eog, "<|end|>"))
        {
            if let Some(&end) = token_to_id.get("<|end|>") {
                eog.retain(|&i| i != end);
                attrs[end as usize] = TokenAttr(TokenAttr::USER_DEFINED);
            }
        }
        if (has(&eog, "<|tool_response>") || has(&eog, "<|plamo:eos|>")) && has(&eog, "</s>") {
            if let Some(&s) = token_to_id.get("</s>") {
                eog.retain(|&i| i != s);
                attrs[s as usize] = TokenAttr(TokenAttr::NORMAL);
            }
        }
        eog.sort_unstable();
        eog.dedup();

        let mut special_cache: Vec<u32> = (0..n as u32)
            .filter(|&i| attrs[i as usize].has(TokenAttr::CONTROL | TokenAttr::USER_DEFINED | TokenAttr::UNKNOWN))
            .collect();
        special_cache.sort_by(|&a, &b| tokens[b as usize].len().cmp(&tokens[a as usize].len()));

        Ok(Vocab {
            kind,
            tokens,
            scores,
            attrs,
            token_to_id,
            special_cache,
            max_token_len,
            bos,
            eos,
            eot,
            unk,
            pad,
            sep,
            eog,
        })
    }

    #[inline]
    pub fn n_tokens(&self) -> usize {
        self.tokens.len()
    }

    #[inline]
    pub fn id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    #[inline]
    pub fn attr(&self, id: u32) -> TokenAttr {
        self.attrs.get(id as usize).copied().unwrap_or_default()
    }
}

/// Model-type default special token ids.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub sep: Option<u32>,
}
