//! `config.json`: the architecture and hyper-parameters of a Hugging Face model, read the way
//! llama.cpp's converter reads them (several alternative key names per value, `text_config` merged
//! into the top level).

use super::error::HfError;
use serde_json::{Map, Value as Json};
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, HfError>;

/// The model families crunch converts, each with llama.cpp's architecture name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HfArch {
    /// `LlamaForCausalLM`, `MistralForCausalLM` (SmolLM is a Llama): GGUF `llama`, Q/K rows permuted.
    Llama,
    /// `Qwen2ForCausalLM`: GGUF `qwen2` (Q/K/V biases, NeoX RoPE, no permutation).
    Qwen2,
    /// `BertModel` (sentence-transformers encoders such as all-MiniLM): GGUF `bert`.
    Bert,
    /// `Gemma3ForCausalLM` (`model_type: gemma3_text`): GGUF `gemma3`. Q/K norms, post-attention
    /// and post-FFN norms, NeoX RoPE (no permutation); llama.cpp stores every norm weight plus one
    /// (Gemma's RMSNorm scales by `1 + weight`), see [`HfArch::norm_shift`].
    Gemma3,
}

/// Hugging Face architecture names crunch accepts, and the family each one is converted as.
pub const SUPPORTED_ARCHITECTURES: &[(&str, HfArch)] = &[
    ("LlamaForCausalLM", HfArch::Llama),
    ("MistralForCausalLM", HfArch::Llama),
    ("Qwen2ForCausalLM", HfArch::Qwen2),
    ("BertModel", HfArch::Bert),
    ("BertForMaskedLM", HfArch::Bert),
    ("Gemma3ForCausalLM", HfArch::Gemma3),
];

impl HfArch {
    /// The family of a Hugging Face architecture name (`config.json` `architectures[0]`).
    ///
    /// # Errors
    /// [`HfError::UnsupportedArchitecture`] listing the supported names.
    pub fn from_hf_name(name: &str) -> Result<Self> {
        SUPPORTED_ARCHITECTURES.iter().find(|(n, _)| *n == name).map(|(_, a)| *a).ok_or_else(|| {
            HfError::UnsupportedArchitecture {
                found: name.to_string(),
                supported: SUPPORTED_ARCHITECTURES.iter().map(|(n, _)| n.to_string()).collect(),
            }
        })
    }

    /// `general.architecture` of the GGUF file.
    pub fn gguf_name(self) -> &'static str {
        match self {
            HfArch::Llama => "llama",
            HfArch::Qwen2 => "qwen2",
            HfArch::Bert => "bert",
            HfArch::Gemma3 => "gemma3",
        }
    }

    /// The family of a GGUF `general.architecture`, for export.
    pub fn from_gguf_name(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(HfArch::Llama),
            "qwen2" => Some(HfArch::Qwen2),
            "bert" => Some(HfArch::Bert),
            "gemma3" => Some(HfArch::Gemma3),
            _ => None,
        }
    }

    /// The Hugging Face architecture a GGUF of this family is exported as.
    pub fn hf_name(self) -> &'static str {
        match self {
            HfArch::Llama => "LlamaForCausalLM",
            HfArch::Qwen2 => "Qwen2ForCausalLM",
            HfArch::Bert => "BertModel",
            HfArch::Gemma3 => "Gemma3ForCausalLM",
        }
    }

    /// `model_type` in an exported `config.json`.
    pub fn hf_model_type(self) -> &'static str {
        match self {
            HfArch::Llama => "llama",
            HfArch::Qwen2 => "qwen2",
            HfArch::Bert => "bert",
            HfArch::Gemma3 => "gemma3_text",
        }
    }

    /// Whether llama.cpp permutes the rows of Q and K for this family (Llama's RoPE layout).
    pub fn permutes_qk(self) -> bool {
        self == HfArch::Llama
    }

    /// What llama.cpp's converter adds to a tensor of this family (`hf_name` is the checkpoint
    /// name): Gemma 3's RMSNorm scales by `1 + weight`, so every `*norm.weight` is stored plus one
    /// in GGUF. Convert adds it, export subtracts it.
    pub fn norm_shift(self, hf_name: &str) -> f32 {
        match self {
            HfArch::Gemma3 if hf_name.ends_with("norm.weight") => 1.0,
            _ => 0.0,
        }
    }

    /// The architectures crunch exports GGUF files of (for error messages).
    pub fn exported_names() -> &'static str {
        "llama, qwen2, gemma3 and bert"
    }
}

/// `head_dim` of a `gemma3_text` config that does not give one (transformers' and llama.cpp's default).
pub const GEMMA3_DEFAULT_HEAD_DIM: u32 = 256;

/// A parsed `config.json`.
#[derive(Clone, Debug)]
pub struct HfConfig {
    /// The file it came from (for error messages).
    pub path: PathBuf,
    /// The JSON object, with `text_config` merged into the top level as llama.cpp does.
    pub raw: Map<String, Json>,
    /// `architectures[0]`.
    pub hf_arch: String,
    pub arch: HfArch,
}

/// Keys llama.cpp accepts for each hyper-parameter, first match wins (`find_hparam`).
pub mod keys {
    pub const BLOCK_COUNT: &[&str] = &["n_layers", "num_hidden_layers", "n_layer", "num_layers"];
    pub const CONTEXT: &[&str] =
        &["max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length", "model_max_length"];
    pub const EMBD: &[&str] = &["hidden_size", "n_embd", "dim"];
    pub const FF: &[&str] =
        &["prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size", "n_inner", "hidden_dim"];
    pub const HEADS: &[&str] = &["num_attention_heads", "n_head", "n_heads"];
    pub const HEADS_KV: &[&str] = &["num_key_value_heads", "n_kv_heads"];
    pub const ROPE_THETA: &[&str] =
        &["global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta", "rotary_emb_base"];
    pub const RMS_EPS: &[&str] = &["rms_norm_eps", "norm_eps"];
    pub const LN_EPS: &[&str] = &["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"];
}

impl HfConfig {
    /// Read `config.json`.
    ///
    /// # Errors
    /// I/O, invalid JSON, a missing or unsupported `architectures` entry.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| HfError::io(path, e))?;
        Self::from_json(&bytes, path)
    }

    /// Parse the bytes of a `config.json` (`path` is used in errors).
    ///
    /// # Errors
    /// Invalid JSON, a missing or unsupported `architectures` entry.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self> {
        let json: Json = serde_json::from_slice(bytes).map_err(|e| HfError::Json { file: path.into(), source: e })?;
        let Json::Object(mut raw) = json else {
            return Err(HfError::BadField {
                file: path.into(),
                field: "(top level)".into(),
                reason: "not an object".into(),
            });
        };
        if let Some(Json::Object(text)) = raw.get("text_config").cloned() {
            for (k, v) in text {
                raw.insert(k, v);
            }
        }
        let hf_arch = match raw.get("architectures") {
            Some(Json::Array(a)) if !a.is_empty() => a[0].as_str().map(str::to_string).ok_or_else(|| {
                HfError::BadField { file: path.into(), field: "architectures".into(), reason: "not a string".into() }
            })?,
            _ => {
                return Err(HfError::MissingField {
                    file: path.into(),
                    field: "architectures".into(),
                    why: format!(
                        "the model class tells crunch how to convert; supported: {}",
                        SUPPORTED_ARCHITECTURES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ),
                })
            }
        };
        let arch = HfArch::from_hf_name(&hf_arch)?;
        Ok(HfConfig { path: path.into(), raw, hf_arch, arch })
    }

    /// The first of `keys` present (and not null), with the key that matched.
    pub fn find<'a, 'k>(&'a self, keys: &[&'k str]) -> Option<(&'k str, &'a Json)> {
        keys.iter().find_map(|&k| self.raw.get(k).filter(|v| !v.is_null()).map(|v| (k, v)))
    }

    fn bad(&self, field: &str, reason: impl Into<String>) -> HfError {
        HfError::BadField { file: self.path.clone(), field: field.into(), reason: reason.into() }
    }

    /// An optional non-negative integer that fits in u32.
    ///
    /// # Errors
    /// [`HfError::BadField`] when present but not such an integer.
    pub fn find_u32(&self, keys: &[&str]) -> Result<Option<u32>> {
        match self.find(keys) {
            None => Ok(None),
            Some((k, v)) => v
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| self.bad(k, format!("expected a non-negative integer below 2^32, found {v}"))),
        }
    }

    /// A required non-negative integer.
    ///
    /// # Errors
    /// [`HfError::MissingField`] naming the first key, or [`HfError::BadField`].
    pub fn require_u32(&self, keys: &[&str], why: &str) -> Result<u32> {
        self.find_u32(keys)?.ok_or_else(|| HfError::MissingField {
            file: self.path.clone(),
            field: keys.join(" | "),
            why: why.into(),
        })
    }

    /// An optional number.
    ///
    /// # Errors
    /// [`HfError::BadField`] when present but not a number.
    pub fn find_f64(&self, keys: &[&str]) -> Result<Option<f64>> {
        match self.find(keys) {
            None => Ok(None),
            Some((k, v)) => v.as_f64().map(Some).ok_or_else(|| self.bad(k, format!("expected a number, found {v}"))),
        }
    }

    /// An optional boolean (`tie_word_embeddings`, `is_causal`…).
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.raw.get(key).and_then(Json::as_bool)
    }

    /// Number of layers.
    ///
    /// # Errors
    /// Missing or malformed.
    pub fn block_count(&self) -> Result<u32> {
        self.require_u32(keys::BLOCK_COUNT, "the number of layers")
    }

    /// Width of the residual stream.
    ///
    /// # Errors
    /// Missing or malformed.
    pub fn hidden_size(&self) -> Result<u32> {
        self.require_u32(keys::EMBD, "the embedding width")
    }

    /// Attention heads.
    ///
    /// # Errors
    /// Missing or malformed.
    pub fn n_head(&self) -> Result<u32> {
        self.require_u32(keys::HEADS, "the number of attention heads")
    }

    /// Key/value heads (grouped-query attention); the head count when absent.
    ///
    /// # Errors
    /// Malformed.
    pub fn n_head_kv(&self) -> Result<u32> {
        match self.find_u32(keys::HEADS_KV)? {
            Some(n) => Ok(n),
            None => self.n_head(),
        }
    }

    /// Width of one attention head: `head_dim` when given, else hidden size / heads.
    ///
    /// # Errors
    /// Missing values, or a hidden size not divisible by the head count.
    pub fn head_dim(&self) -> Result<u32> {
        if let Some(d) = self.find_u32(&["head_dim"])? {
            return Ok(d);
        }
        if self.arch == HfArch::Gemma3 {
            // transformers' Gemma3TextConfig and llama.cpp's converter both default to 256.
            return Ok(GEMMA3_DEFAULT_HEAD_DIM);
        }
        let (h, n) = (self.hidden_size()?, self.n_head()?);
        if n == 0 || !h.is_multiple_of(n) {
            return Err(self.bad("num_attention_heads", format!("{n} heads do not divide hidden_size {h}")));
        }
        Ok(h / n)
    }

    /// Feed-forward width.
    ///
    /// # Errors
    /// Missing or malformed.
    pub fn ff_size(&self) -> Result<u32> {
        self.require_u32(keys::FF, "the feed-forward width")
    }

    /// Vocabulary size (`vocab_size`).
    ///
    /// # Errors
    /// Malformed.
    pub fn vocab_size(&self) -> Result<Option<u32>> {
        self.find_u32(&["vocab_size"])
    }

    /// Whether the output projection shares the token embedding (default true for Llama-family
    /// configs without `lm_head`, as transformers does).
    pub fn tie_word_embeddings(&self) -> bool {
        self.get_bool("tie_word_embeddings").unwrap_or(true)
    }

    /// The RoPE parameters llama.cpp reads: `rope_parameters` or `rope_scaling` (or empty), with the
    /// top-level `rope_theta` mirrored in and `type` copied to `rope_type`, then the
    /// `full_attention` sub-table if there is one.
    pub fn rope_parameters(&self) -> Map<String, Json> {
        let mut p = match self.raw.get("rope_parameters").or_else(|| self.raw.get("rope_scaling")) {
            Some(Json::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        if !p.contains_key("full_attention") && !p.contains_key("sliding_attention") {
            if !p.contains_key("rope_theta") {
                if let Some((_, v)) = self.find(keys::ROPE_THETA) {
                    p.insert("rope_theta".into(), v.clone());
                }
            }
            if !p.contains_key("rope_type") {
                if let Some(t) = p.get("type").cloned() {
                    p.insert("rope_type".into(), t);
                }
            }
        }
        match p.get("full_attention") {
            Some(Json::Object(f)) => f.clone(),
            _ => p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<HfConfig> {
        HfConfig::from_json(json.as_bytes(), Path::new("config.json"))
    }

    #[test]
    fn architectures_are_checked_and_listed() {
        let c = cfg(r#"{"architectures":["MistralForCausalLM"],"hidden_size":64,"num_attention_heads":4}"#).unwrap();
        assert_eq!(c.arch, HfArch::Llama);
        assert_eq!(c.head_dim().unwrap(), 16);
        assert_eq!(c.n_head_kv().unwrap(), 4);
        let e = cfg(r#"{"architectures":["GPT2LMHeadModel"]}"#).unwrap_err().to_string();
        assert!(e.contains("GPT2LMHeadModel") && e.contains("LlamaForCausalLM") && e.contains("BertModel"), "{e}");
        let e = cfg(r#"{"hidden_size":64}"#).unwrap_err().to_string();
        assert!(e.contains("architectures"), "{e}");
    }

    #[test]
    fn alternative_keys_and_bad_values() {
        let c = cfg(r#"{"architectures":["LlamaForCausalLM"],"n_layers":3,"dim":8,"num_layers":9}"#).unwrap();
        assert_eq!(c.block_count().unwrap(), 3);
        assert_eq!(c.hidden_size().unwrap(), 8);
        let c = cfg(r#"{"architectures":["LlamaForCausalLM"],"num_hidden_layers":-1}"#).unwrap();
        assert!(c.block_count().unwrap_err().to_string().contains("num_hidden_layers"));
        let e = c.ff_size().unwrap_err().to_string();
        assert!(e.contains("intermediate_size"), "{e}");
    }

    #[test]
    fn rope_parameters_mirror_theta() {
        let c = cfg(r#"{"architectures":["LlamaForCausalLM"],"rope_theta":500000.0,
            "rope_scaling":{"rope_type":"llama3","factor":8.0}}"#)
        .unwrap();
        let p = c.rope_parameters();
        assert_eq!(p["rope_theta"].as_f64(), Some(500000.0));
        assert_eq!(p["rope_type"].as_str(), Some("llama3"));
    }
}
