//! A GGUF vocabulary (`tokenizer.ggml.*`) back to Hugging Face tokenizer files:
//! `tokenizer.json` (loadable by the `tokenizers` package, tokenizing as llama.cpp does),
//! `tokenizer_config.json`, `special_tokens_map.json`, and for SentencePiece vocabularies a
//! `tokenizer.model`. The files are written so that `crunch convert` reads back the same
//! `tokenizer.*` metadata.

use crate::convert::spm::{Piece, SpmModel};
use crate::convert::vocab::token_type::*;
use crate::error::{Error, Result};
use crunch_core::gguf::{Array, Metadata};
use crunch_model::tokenizer::pre_catalog;
use serde_json::{json, Map, Value as Json};
use std::collections::HashMap;

/// The vocabulary as read from GGUF metadata.
pub struct GgufTokenizer {
    pub model: String,
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    pub scores: Option<Vec<f32>>,
    pub merges: Vec<String>,
    /// `(type, id)` for bos, eos, unk, sep, pad, mask.
    pub special: Vec<(&'static str, u32)>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_sep: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub lowercase: Option<bool>,
    pub strip_accents: Option<bool>,
    pub chat_template: Option<String>,
}

fn bad(key: &str, what: &str) -> Error {
    Error::Invalid(format!("GGUF metadata {key}: expected {what}"))
}

fn strings(md: &Metadata, key: &str) -> Result<Option<Vec<String>>> {
    let Some(v) = md.get(key) else { return Ok(None) };
    let a = v.as_array().and_then(Array::as_strings).ok_or_else(|| bad(key, "an array of strings"))?;
    let mut lossy = 0;
    let out: Vec<String> = a
        .iter()
        .map(|b| match std::str::from_utf8(b) {
            Ok(s) => s.to_string(),
            Err(_) => {
                lossy += 1;
                String::from_utf8_lossy(b).into_owned()
            }
        })
        .collect();
    if lossy > 0 {
        tracing::warn!("{key}: {lossy} entries are not valid UTF-8 and were written with replacement characters");
    }
    Ok(Some(out))
}

impl GgufTokenizer {
    /// Read `tokenizer.ggml.*`.
    ///
    /// # Errors
    /// A missing model or token list, keys of the wrong type, a tokenizer model crunch cannot export.
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        let model = md
            .get_str("tokenizer.ggml.model")
            .ok_or_else(|| bad("tokenizer.ggml.model", "a string (the model has no tokenizer to export)"))?
            .to_string();
        if !matches!(model.as_str(), "gpt2" | "llama" | "bert") {
            return Err(Error::Invalid(format!(
                "tokenizer model {model:?} cannot be exported (crunch exports gpt2, llama and bert vocabularies)"
            )));
        }
        let tokens = strings(md, "tokenizer.ggml.tokens")?.ok_or_else(|| bad("tokenizer.ggml.tokens", "an array"))?;
        let types = match md.get("tokenizer.ggml.token_type") {
            None => vec![NORMAL; tokens.len()],
            Some(v) => v
                .as_array()
                .ok_or_else(|| bad("tokenizer.ggml.token_type", "an array"))?
                .iter()
                .map(|x| x.as_i64().map(|i| i as i32).ok_or_else(|| bad("tokenizer.ggml.token_type", "integers")))
                .collect::<Result<Vec<_>>>()?,
        };
        if types.len() != tokens.len() {
            return Err(bad("tokenizer.ggml.token_type", "one entry per token"));
        }
        let scores = match md.get("tokenizer.ggml.scores") {
            None => None,
            Some(v) => Some(
                v.as_array()
                    .ok_or_else(|| bad("tokenizer.ggml.scores", "an array"))?
                    .iter()
                    .map(|x| x.as_f64().map(|f| f as f32).ok_or_else(|| bad("tokenizer.ggml.scores", "numbers")))
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        let mut special = Vec::new();
        for (typ, key) in [
            ("bos", "bos_token_id"),
            ("eos", "eos_token_id"),
            ("unk", "unknown_token_id"),
            ("sep", "seperator_token_id"),
            ("pad", "padding_token_id"),
            ("mask", "mask_token_id"),
        ] {
            if let Some(id) = md.get_u64(&format!("tokenizer.ggml.{key}")) {
                if (id as usize) < tokens.len() {
                    special.push((typ, id as u32));
                }
            }
        }
        for k in ["eot_token_id", "eom_token_id", "prefix_token_id", "suffix_token_id", "middle_token_id"] {
            if md.get(&format!("tokenizer.ggml.{k}")).is_some() {
                tracing::warn!("tokenizer.ggml.{k} has no place in Hugging Face tokenizer files; not exported");
            }
        }
        Ok(GgufTokenizer {
            pre: md.get_str("tokenizer.ggml.pre").map(str::to_string),
            merges: strings(md, "tokenizer.ggml.merges")?.unwrap_or_default(),
            add_bos: md.get_bool("tokenizer.ggml.add_bos_token"),
            add_eos: md.get_bool("tokenizer.ggml.add_eos_token"),
            add_sep: md.get_bool("tokenizer.ggml.add_sep_token"),
            add_space_prefix: md.get_bool("tokenizer.ggml.add_space_prefix"),
            lowercase: md.get_bool("tokenizer.ggml.normalizer.lowercase"),
            strip_accents: md.get_bool("tokenizer.ggml.normalizer.strip_accents"),
            chat_template: md.get_str("tokenizer.chat_template").map(str::to_string),
            model,
            tokens,
            types,
            scores,
            special,
        })
    }

    fn id_of(&self, typ: &str) -> Option<u32> {
        self.special.iter().find(|(t, _)| *t == typ).map(|(_, id)| *id)
    }

    /// Tokens that go in `added_tokens` (control, user-defined, unknown).
    fn is_added(&self, id: usize) -> bool {
        matches!(self.types[id], CONTROL | USER_DEFINED) || (self.model == "llama" && self.types[id] == UNKNOWN)
    }

    /// An unused padding slot llama.cpp made up (`[PAD17]`), left out of the vocabulary.
    fn is_pad_slot(&self, id: usize) -> bool {
        self.types[id] == UNUSED && self.tokens[id] == format!("[PAD{id}]")
    }

    /// The token text in Hugging Face's form (WordPiece: `##` continuation instead of `▁` words).
    fn hf_text(&self, id: usize) -> String {
        let t = &self.tokens[id];
        if self.model != "bert" || self.types[id] == CONTROL {
            return t.clone();
        }
        match t.strip_prefix('\u{2581}') {
            Some(word) => word.to_string(),
            None => format!("##{t}"),
        }
    }

    fn added_tokens(&self) -> Vec<Json> {
        (0..self.tokens.len())
            .filter(|&i| self.is_added(i))
            .map(|i| {
                let special = self.types[i] != USER_DEFINED;
                json!({"id": i, "content": self.hf_text(i), "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": !special, "special": special})
            })
            .collect()
    }

    fn vocab_map(&self) -> Map<String, Json> {
        let mut m = Map::new();
        let mut dup = 0;
        for i in 0..self.tokens.len() {
            if self.is_pad_slot(i) {
                continue;
            }
            if m.insert(self.hf_text(i), json!(i)).is_some() {
                dup += 1;
            }
        }
        if dup > 0 {
            tracing::warn!("{dup} token texts appear twice in the vocabulary; Hugging Face keeps the last id of each");
        }
        m
    }

    fn post_processor(&self) -> Json {
        let (add_bos, add_eos) = (self.add_bos == Some(true), self.add_eos == Some(true));
        let (bos, eos) = (self.id_of("bos"), self.id_of("eos"));
        if !(add_bos && bos.is_some() || add_eos && eos.is_some()) {
            return Json::Null;
        }
        let sp = |id: u32, type_id: u32| json!({"SpecialToken": {"id": self.hf_text(id as usize), "type_id": type_id}});
        let seq = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut specials = Map::new();
        for (id, on) in [(bos, add_bos), (eos, add_eos)] {
            if let (Some(id), true) = (id, on) {
                let t = self.hf_text(id as usize);
                specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
            }
        }
        let wrap = |out: &mut Vec<Json>, s: &str, type_id: u32| {
            if let (Some(b), true) = (bos, add_bos) {
                if !(self.model == "bert" && s == "B") {
                    out.push(sp(b, type_id));
                }
            }
            out.push(seq(s, type_id));
            if let (Some(e), true) = (eos, add_eos) {
                out.push(sp(e, type_id));
            }
        };
        wrap(&mut single, "A", 0);
        wrap(&mut pair, "A", 0);
        wrap(&mut pair, "B", 1);
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
    }

    /// `tokenizer.json`.
    ///
    /// # Errors
    /// A pre-tokenizer that has no `tokenizer.json` equivalent.
    pub fn tokenizer_json(&self) -> Result<Json> {
        let mut t = Map::new();
        t.insert("version".into(), json!("1.0"));
        t.insert("truncation".into(), Json::Null);
        t.insert("padding".into(), Json::Null);
        t.insert("added_tokens".into(), Json::Array(self.added_tokens()));
        match self.model.as_str() {
            "gpt2" => {
                let pre = self.pre.as_deref().unwrap_or("default");
                t.insert("normalizer".into(), Json::Null);
                t.insert("pre_tokenizer".into(), hf_pre_tokenizer(pre)?);
                t.insert("post_processor".into(), self.post_processor());
                t.insert(
                    "decoder".into(),
                    json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
                );
                let merges: Vec<Json> = self.merges.iter().map(|m| json!(m)).collect();
                t.insert(
                    "model".into(),
                    json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                           "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                           "ignore_merges": pre_catalog::ignores_merges(pre)?,
                           "vocab": self.vocab_map(), "merges": merges}),
                );
            }
            "bert" => {
                t.insert(
                    "normalizer".into(),
                    json!({"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                           "strip_accents": self.strip_accents, "lowercase": self.lowercase.unwrap_or(true)}),
                );
                t.insert("pre_tokenizer".into(), json!({"type": "BertPreTokenizer"}));
                t.insert("post_processor".into(), self.post_processor());
                t.insert("decoder".into(), json!({"type": "WordPiece", "prefix": "##", "cleanup": true}));
                let unk = self.id_of("unk").map(|i| self.hf_text(i as usize)).unwrap_or_else(|| "[UNK]".into());
                t.insert(
                    "model".into(),
                    json!({"type": "WordPiece", "unk_token": unk, "continuing_subword_prefix": "##",
                           "max_input_chars_per_word": 100, "vocab": self.vocab_map()}),
                );
            }
            _ => {
                // SentencePiece BPE with byte fallback, as Llama / Mistral tokenizer.json files are.
                let mut norm = Vec::new();
                if self.add_space_prefix.unwrap_or(true) {
                    norm.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
                }
                norm.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
                t.insert("normalizer".into(), json!({"type": "Sequence", "normalizers": norm}));
                t.insert("pre_tokenizer".into(), Json::Null);
                t.insert("post_processor".into(), self.post_processor());
                let mut dec = vec![
                    json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                    json!({"type": "ByteFallback"}),
                    json!({"type": "Fuse"}),
                ];
                if self.add_space_prefix.unwrap_or(true) {
                    dec.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
                }
                t.insert("decoder".into(), json!({"type": "Sequence", "decoders": dec}));
                let unk = self.id_of("unk").map(|i| json!(self.tokens[i as usize])).unwrap_or(Json::Null);
                t.insert(
                    "model".into(),
                    json!({"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                           "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                           "vocab": self.vocab_map(), "merges": self.spm_merges()}),
                );
            }
        }
        Ok(Json::Object(t))
    }

    /// BPE merges equivalent to SentencePiece's score-ordered merging: every split of a token into
    /// two tokens, ranked by the merged token's score (highest first).
    fn spm_merges(&self) -> Vec<Json> {
        let scores = self.scores.clone().unwrap_or_else(|| vec![0.0; self.tokens.len()]);
        let ids: HashMap<&str, usize> = self
            .tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| matches!(self.types[*i], NORMAL | USER_DEFINED))
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        let mut order: Vec<usize> = ids.values().copied().collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        let mut out = Vec::new();
        for i in order {
            let t = &self.tokens[i];
            for (k, _) in t.char_indices().skip(1) {
                let (a, b) = t.split_at(k);
                if ids.contains_key(a) && ids.contains_key(b) {
                    out.push(json!([a, b]));
                }
            }
        }
        out
    }

    /// `tokenizer.model` for a SentencePiece vocabulary.
    pub fn spm_model(&self) -> Option<SpmModel> {
        if self.model != "llama" {
            return None;
        }
        let scores = self.scores.clone().unwrap_or_else(|| vec![0.0; self.tokens.len()]);
        Some(SpmModel {
            pieces: (0..self.tokens.len())
                .map(|i| Piece { piece: self.tokens[i].clone(), score: scores[i], kind: self.types[i] })
                .collect(),
            model_type: Some(2),
            add_dummy_prefix: self.add_space_prefix,
        })
    }

    /// `tokenizer_config.json` and `special_tokens_map.json`.
    pub fn configs(&self, context_length: Option<u64>) -> (Json, Json) {
        let mut c = Map::new();
        let class = match self.model.as_str() {
            "bert" => "BertTokenizerFast",
            "llama" => "LlamaTokenizerFast",
            _ => "PreTrainedTokenizerFast",
        };
        c.insert("tokenizer_class".into(), json!(class));
        if let Some(n) = context_length {
            c.insert("model_max_length".into(), json!(n));
        }
        c.insert("clean_up_tokenization_spaces".into(), json!(false));
        for (k, v) in [
            ("add_bos_token", self.add_bos),
            ("add_eos_token", self.add_eos),
            ("add_prefix_space", self.add_space_prefix),
        ] {
            if let Some(v) = v {
                c.insert(k.into(), json!(v));
            }
        }
        if self.model == "bert" {
            c.insert("do_lower_case".into(), json!(self.lowercase.unwrap_or(true)));
        }
        let mut map = Map::new();
        for &(typ, id) in &self.special {
            if !self.is_added(id as usize) {
                continue;
            }
            // BERT: llama.cpp takes BOS from cls_token and EOS from sep_token.
            let key = match (self.model.as_str(), typ) {
                ("bert", "bos") => "cls",
                ("bert", "eos") => "sep",
                _ => typ,
            };
            let text = self.hf_text(id as usize);
            c.entry(format!("{key}_token")).or_insert(json!(text));
            map.entry(format!("{key}_token")).or_insert(json!(text));
        }
        if let Some(t) = &self.chat_template {
            c.insert("chat_template".into(), json!(t));
        }
        let mut dec = Map::new();
        for i in (0..self.tokens.len()).filter(|&i| self.is_added(i)) {
            if self.model == "llama" && self.types[i] != USER_DEFINED {
                continue; // control pieces live in tokenizer.model with their scores
            }
            let special = self.types[i] != USER_DEFINED;
            dec.insert(
                i.to_string(),
                json!({"content": self.hf_text(i), "lstrip": false, "normalized": !special, "rstrip": false,
                       "single_word": false, "special": special}),
            );
        }
        c.insert("added_tokens_decoder".into(), Json::Object(dec));
        (Json::Object(c), Json::Object(map))
    }

    /// `{typ}_token_id` entries for `config.json` (read by llama.cpp after tokenizer_config.json).
    pub fn config_ids(&self) -> Vec<(String, u32)> {
        self.special.iter().map(|(t, id)| (format!("{t}_token_id"), *id)).collect()
    }
}

/// A `tokenizer.json` pre-tokenizer splitting as the named llama.cpp pre-tokenizer does.
///
/// # Errors
/// A name crunch does not know, or one that is not byte-level.
pub fn hf_pre_tokenizer(pre: &str) -> Result<Json> {
    if !pre_catalog::is_byte_level(pre)? {
        return Err(Error::Invalid(format!(
            "pre-tokenizer {pre:?} is not byte-level BPE; it cannot be written to tokenizer.json"
        )));
    }
    let pats = pre_catalog::patterns(pre)?;
    let gpt2 = pre_catalog::patterns("gpt-2")?[0];
    let mut steps = Vec::new();
    let n = pats.len();
    for (i, p) in pats.iter().enumerate() {
        if *p == gpt2 && i + 1 == n {
            steps
                .push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}));
            return Ok(if steps.len() == 1 {
                steps.pop().unwrap_or_default()
            } else {
                json!({"type": "Sequence", "pretokenizers": steps})
            });
        } else if *p == r"\p{N}" {
            steps.push(json!({"type": "Digits", "individual_digits": true}));
        } else {
            steps.push(json!({"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": false}));
        }
    }
    steps.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}));
    Ok(json!({"type": "Sequence", "pretokenizers": steps}))
}
