//! Filling a [`GgufVocab`] from a GGUF file's `tokenizer.ggml.*` metadata.

use crunch_core::gguf::{Array, GgufFile, Metadata, Value};

use super::vocab::GgufVocab;
use super::{Result, TokenizerError};

const PREFIX: &str = "tokenizer.ggml.";

impl GgufVocab {
    /// Read the vocabulary a GGUF file carries. Missing optional keys stay `None` (the tokenizer
    /// then applies llama.cpp's defaults); a missing `tokenizer.ggml.model` or token list, or a
    /// key of the wrong type, is an error naming the key.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        Self::from_metadata(file.metadata())
    }

    /// As [`GgufVocab::from_gguf`], from the metadata alone.
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        let key = |k: &str| format!("{PREFIX}{k}");
        let model = md
            .get_str(&key("model"))
            .ok_or_else(|| TokenizerError::Vocab(format!("missing string key {}", key("model"))))?
            .to_string();
        let tokens = string_array(md, &key("tokens"))?
            .ok_or_else(|| TokenizerError::Vocab(format!("missing array key {}", key("tokens"))))?;
        Ok(GgufVocab {
            model,
            pre: opt_str(md, &key("pre"))?,
            tokens,
            scores: f32_array(md, &key("scores"))?,
            token_types: i32_array(md, &key("token_type"))?,
            merges: string_array(md, &key("merges"))?,
            bos_id: opt_id(md, &key("bos_token_id"))?,
            eos_id: opt_id(md, &key("eos_token_id"))?,
            unk_id: opt_id(md, &key("unknown_token_id"))?,
            pad_id: opt_id(md, &key("padding_token_id"))?,
            sep_id: opt_id(md, &key("seperator_token_id"))?,
            eot_id: opt_id(md, &key("eot_token_id"))?,
            add_bos: opt_bool(md, &key("add_bos_token"))?,
            add_eos: opt_bool(md, &key("add_eos_token"))?,
            add_sep: opt_bool(md, &key("add_sep_token"))?,
            add_space_prefix: opt_bool(md, &key("add_space_prefix"))?,
            lowercase: opt_bool(md, &key("normalizer.lowercase"))?,
        })
    }
}

fn bad(key: &str, what: &str) -> TokenizerError {
    TokenizerError::Vocab(format!("{key}: expected {what}"))
}

fn opt_str(md: &Metadata, key: &str) -> Result<Option<String>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::String(b)) => Ok(Some(String::from_utf8_lossy(b).into_owned())),
        Some(_) => Err(bad(key, "a string")),
    }
}

fn opt_bool(md: &Metadata, key: &str) -> Result<Option<bool>> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| bad(key, "a boolean")),
    }
}

/// A token id; llama.cpp stores them as u32 but some writers use -1 for "none".
fn opt_id(md: &Metadata, key: &str) -> Result<Option<u32>> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(i) if i < 0 => Ok(None),
            Some(i) => u32::try_from(i).map(Some).map_err(|_| bad(key, "a token id below 2^32")),
            None => Err(bad(key, "an integer token id")),
        },
    }
}

fn array<'a>(md: &'a Metadata, key: &str) -> Result<Option<&'a Array>> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v.as_array().map(Some).ok_or_else(|| bad(key, "an array")),
    }
}

fn string_array(md: &Metadata, key: &str) -> Result<Option<Vec<String>>> {
    let Some(a) = array(md, key)? else { return Ok(None) };
    let strings = a.as_strings().ok_or_else(|| bad(key, "an array of strings"))?;
    // Token texts are bytes in GGUF; invalid UTF-8 is kept as replacement characters.
    Ok(Some(strings.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect()))
}

fn f32_array(md: &Metadata, key: &str) -> Result<Option<Vec<f32>>> {
    let Some(a) = array(md, key)? else { return Ok(None) };
    if let Some(v) = a.as_f32s() {
        return Ok(Some(v.to_vec()));
    }
    a.iter()
        .map(|v| v.as_f64().map(|x| x as f32).ok_or_else(|| bad(key, "an array of numbers")))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn i32_array(md: &Metadata, key: &str) -> Result<Option<Vec<i32>>> {
    let Some(a) = array(md, key)? else { return Ok(None) };
    if let Some(v) = a.as_i32s() {
        return Ok(Some(v.to_vec()));
    }
    a.iter()
        .map(|v| v.as_i64().and_then(|x| i32::try_from(x).ok()).ok_or_else(|| bad(key, "an array of i32")))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}
