//! Hyper-parameters of a Llama-family model, from GGUF metadata (`{arch}.*` keys).

use crunch_core::gguf::Metadata;

use crate::error::{ModelError, Result};

/// The Llama-family architectures crunch runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `llama` (also Mistral and SmolLM files written as `llama`).
    Llama,
    /// `mistral`: the Llama graph under its own key prefix.
    Mistral,
    /// `smollm`: the Llama graph under its own key prefix.
    SmolLm,
    /// `qwen2`: Llama with Q/K/V biases and NeoX-style RoPE.
    Qwen2,
}

impl Arch {
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Arch::Llama),
            "mistral" => Ok(Arch::Mistral),
            "smollm" => Ok(Arch::SmolLm),
            "qwen2" => Ok(Arch::Qwen2),
            other => Err(ModelError::UnsupportedArch(other.to_string())),
        }
    }

    /// The metadata key prefix (`general.architecture`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::SmolLm => "smollm",
            Arch::Qwen2 => "qwen2",
        }
    }

    /// llama.cpp's RoPE mode for the architecture.
    pub fn rope_mode(self) -> RopeMode {
        match self {
            Arch::Qwen2 => RopeMode::Neox,
            _ => RopeMode::Normal,
        }
    }
}

/// How RoPE pairs up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeMode {
    /// llama.cpp's default: rotate adjacent pairs `(2i, 2i + 1)` (GGUF Llama Q/K rows are permuted
    /// by the converter to make this right).
    Normal,
    /// GPT-NeoX style: rotate `(i, i + n_rot / 2)`.
    Neox,
}

/// Llama-family hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Elements per attention head (`n_embd / n_head` unless `attention.key_length` says otherwise).
    pub head_dim: usize,
    /// Dimensions of a head that RoPE rotates (`rope.dimension_count`, default `head_dim`).
    pub n_rot: usize,
    pub rope_freq_base: f32,
    pub rope_mode: RopeMode,
    pub rms_eps: f32,
    /// Training context (`context_length`).
    pub n_ctx_train: usize,
    pub n_vocab: usize,
}

impl LlamaConfig {
    /// Read the configuration; errors name the missing or invalid key, or the architecture.
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        let arch_name =
            md.get_str("general.architecture").ok_or_else(|| ModelError::MissingKey("general.architecture".into()))?;
        let arch = Arch::from_name(arch_name)?;
        let p = arch.name();
        let key = |k: &str| format!("{p}.{k}");
        let req = |k: &str| -> Result<usize> {
            let k = key(k);
            let v = md.get(&k).ok_or_else(|| ModelError::MissingKey(k.clone()))?;
            let v = v.as_u64().ok_or_else(|| ModelError::BadKey { key: k.clone(), reason: "not an integer".into() })?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0 && v < (1 << 31))
                .ok_or(ModelError::BadKey { key: k, reason: format!("{v} is out of range") })
        };
        let opt = |k: &str| -> Result<Option<usize>> {
            if md.get(&key(k)).is_some() {
                req(k).map(Some)
            } else {
                Ok(None)
            }
        };
        let float = |k: &str, default: f64| -> Result<f32> {
            let k = key(k);
            match md.get(&k) {
                None => Ok(default as f32),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .map(|x| x as f32)
                    .ok_or(ModelError::BadKey { key: k, reason: "not a positive number".into() }),
            }
        };
        let n_layer = req("block_count")?;
        let n_embd = req("embedding_length")?;
        let n_ff = req("feed_forward_length")?;
        let n_head = req("attention.head_count")?;
        let n_head_kv = opt("attention.head_count_kv")?.unwrap_or(n_head);
        let head_dim = match opt("attention.key_length")? {
            Some(d) => d,
            None => {
                if n_embd % n_head != 0 {
                    return Err(ModelError::Config(format!("embedding {n_embd} not divisible by {n_head} heads")));
                }
                n_embd / n_head
            }
        };
        if let Some(v) = opt("attention.value_length")? {
            if v != head_dim {
                return Err(ModelError::Config(format!("value length {v} differs from key length {head_dim}")));
            }
        }
        if n_head % n_head_kv != 0 {
            return Err(ModelError::Config(format!("{n_head} heads not a multiple of {n_head_kv} KV heads")));
        }
        let n_rot = opt("rope.dimension_count")?.unwrap_or(head_dim);
        if n_rot > head_dim || n_rot % 2 != 0 {
            return Err(ModelError::BadKey {
                key: key("rope.dimension_count"),
                reason: format!("{n_rot} must be even and at most the head size {head_dim}"),
            });
        }
        let n_vocab = match opt("vocab_size")? {
            Some(n) => n,
            None => md
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .filter(|&n| n > 0)
                .ok_or_else(|| ModelError::MissingKey(format!("{} (or tokenizer.ggml.tokens)", key("vocab_size"))))?,
        };
        Ok(LlamaConfig {
            arch,
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            n_rot,
            rope_freq_base: float("rope.freq_base", 10000.0)?,
            rope_mode: arch.rope_mode(),
            rms_eps: float("attention.layer_norm_rms_epsilon", 1e-5)?,
            n_ctx_train: opt("context_length")?.unwrap_or(2048),
            n_vocab,
        })
    }

    /// Width of the K and V projections (`n_head_kv * head_dim`).
    pub fn n_embd_kv(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crunch_core::gguf::Value;

    fn md(arch: &str) -> Metadata {
        let mut m = Metadata::default();
        m.set("general.architecture", Value::string(arch));
        for (k, v) in [
            ("block_count", 2u32),
            ("embedding_length", 64),
            ("feed_forward_length", 128),
            ("attention.head_count", 4),
            ("attention.head_count_kv", 2),
            ("vocab_size", 100),
        ] {
            m.set(&format!("{arch}.{k}"), Value::U32(v));
        }
        m
    }

    #[test]
    fn reads_keys_with_defaults() {
        let c = LlamaConfig::from_metadata(&md("llama")).unwrap();
        assert_eq!((c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_rot), (2, 64, 4, 2, 16, 16));
        assert_eq!(c.rope_freq_base, 10000.0);
        assert_eq!(c.rope_mode, RopeMode::Normal);
        let q = LlamaConfig::from_metadata(&md("qwen2")).unwrap();
        assert_eq!(q.rope_mode, RopeMode::Neox);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = LlamaConfig::from_metadata(&md("gpt2")).unwrap_err();
        assert!(e.to_string().contains("\"gpt2\""), "{e}");
        let mut m = md("llama");
        m.remove("llama.embedding_length");
        let e = LlamaConfig::from_metadata(&m).unwrap_err();
        assert!(e.to_string().contains("llama.embedding_length"), "{e}");
        let mut m = md("llama");
        m.set("llama.attention.head_count_kv", Value::U32(3));
        assert!(LlamaConfig::from_metadata(&m).is_err());
        let mut m = md("llama");
        m.set("llama.rope.freq_base", Value::string("x"));
        let e = LlamaConfig::from_metadata(&m).unwrap_err();
        assert!(e.to_string().contains("llama.rope.freq_base"), "{e}");
        assert!(LlamaConfig::from_metadata(&Metadata::default()).is_err());
    }
}
