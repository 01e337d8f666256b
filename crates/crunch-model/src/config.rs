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
    /// `gemma3`: the Llama block with per-head Q/K RMSNorm, post-attention and post-FFN norms,
    /// a GELU-gated FFN, embeddings scaled by `sqrt(n_embd)`, NeoX RoPE, and sliding-window
    /// attention on five layers of every six (their RoPE base 10000).
    Gemma3,
}

impl Arch {
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Arch::Llama),
            "mistral" => Ok(Arch::Mistral),
            "smollm" => Ok(Arch::SmolLm),
            "qwen2" => Ok(Arch::Qwen2),
            "gemma3" => Ok(Arch::Gemma3),
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
            Arch::Gemma3 => "gemma3",
        }
    }

    /// llama.cpp's RoPE mode for the architecture.
    pub fn rope_mode(self) -> RopeMode {
        match self {
            Arch::Qwen2 | Arch::Gemma3 => RopeMode::Neox,
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

/// The activation of the FFN's gate (`act(gate) * up`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnAct {
    /// SwiGLU: `silu(gate) * up` (Llama, Qwen2).
    Silu,
    /// GeGLU with the tanh approximation of GELU, as ggml computes it on the CPU (Gemma).
    GeluTanh,
}

/// Llama-family hyper-parameters, with the per-architecture features of the block spelled out
/// (every flag off for `llama`; see [`LlamaConfig::is_plain_llama`]).
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
    /// Per-head RMSNorm of Q and K before RoPE (`attn_q_norm` / `attn_k_norm`, Gemma 3).
    pub qk_norm: bool,
    /// RMSNorm of the attention and FFN outputs before each residual add
    /// (`post_attention_norm` / `post_ffw_norm`, Gemma 2/3).
    pub post_norms: bool,
    pub ffn_act: FfnAct,
    /// Factor on the token embeddings (Gemma: `sqrt(n_embd)`); `None` for none.
    pub embd_scale: Option<f32>,
    /// Factor Q is multiplied by before attention, whose scores are then not scaled again
    /// (Gemma's `f_attention_scale`); `None`: scores scaled by `1 / sqrt(head_dim)`.
    pub q_scale: Option<f32>,
    /// Sliding-window attention: a query at position `p` of a windowed layer sees keys
    /// `p - n_swa < j <= p` (llama.cpp's `LLAMA_SWA_TYPE_STANDARD`); 0 = no window.
    pub n_swa: usize,
    /// Layer `il` is windowed when `il % swa_pattern < swa_pattern - 1` (llama.cpp's
    /// `set_swa_pattern`; Gemma 3: 6, every sixth layer global).
    pub swa_pattern: usize,
    /// RoPE base of the windowed layers (Gemma 3: 10000; the others use `rope_freq_base`).
    pub rope_freq_base_swa: f32,
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
        let gemma3 = arch == Arch::Gemma3;
        let n_swa = if gemma3 { opt("attention.sliding_window")?.unwrap_or(0) } else { 0 };
        if gemma3 {
            // llama.cpp's gemma3 graph has no RoPE scaling other than linear; crunch implements none.
            if let Some(t) = md.get_str(&key("rope.scaling.type")) {
                if t != "none" {
                    return Err(ModelError::BadKey {
                        key: key("rope.scaling.type"),
                        reason: format!("RoPE scaling \"{t}\" is not implemented for gemma3"),
                    });
                }
            }
        }
        // gemma_pytorch's query_pre_attn_scalar: n_embd / n_head for the 27B model (62 layers),
        // head_dim otherwise (llama.cpp's f_attention_scale).
        let q_scale = gemma3.then(|| {
            let d = if n_layer == 62 { n_embd / n_head } else { head_dim };
            1.0 / (d as f32).sqrt()
        });
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
            qk_norm: gemma3,
            post_norms: gemma3,
            ffn_act: if gemma3 { FfnAct::GeluTanh } else { FfnAct::Silu },
            embd_scale: gemma3.then(|| (n_embd as f32).sqrt()),
            q_scale,
            n_swa,
            swa_pattern: if gemma3 { 6 } else { 0 },
            rope_freq_base_swa: if gemma3 { 10000.0 } else { 0.0 },
        })
    }

    /// Whether layer `il` attends through the sliding window.
    pub fn is_swa(&self, il: usize) -> bool {
        self.n_swa > 0 && self.swa_pattern > 0 && il % self.swa_pattern < self.swa_pattern - 1
    }

    /// The attention window of layer `il` (`None`: the whole causal past).
    pub fn window(&self, il: usize) -> Option<usize> {
        self.is_swa(il).then_some(self.n_swa)
    }

    /// The RoPE base of layer `il`.
    pub fn rope_base(&self, il: usize) -> f32 {
        if self.is_swa(il) {
            self.rope_freq_base_swa
        } else {
            self.rope_freq_base
        }
    }

    /// Whether the block is the plain Llama block (RMSNorm, SwiGLU, no extra norms, scales or
    /// windows): what crunch-train's hand-written backward computes.
    pub fn is_plain_llama(&self) -> bool {
        !self.qk_norm
            && !self.post_norms
            && self.ffn_act == FfnAct::Silu
            && self.embd_scale.is_none()
            && self.q_scale.is_none()
            && self.n_swa == 0
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
    fn gemma3_features_and_layer_pattern() {
        let mut m = md("gemma3");
        m.set("gemma3.attention.key_length", Value::U32(256));
        m.set("gemma3.attention.sliding_window", Value::U32(512));
        m.set("gemma3.rope.freq_base", Value::F32(1e6));
        let c = LlamaConfig::from_metadata(&m).unwrap();
        assert!(c.qk_norm && c.post_norms && !c.is_plain_llama());
        assert_eq!((c.ffn_act, c.rope_mode, c.head_dim), (FfnAct::GeluTanh, RopeMode::Neox, 256));
        assert_eq!(c.embd_scale, Some(8.0)); // sqrt(64)
        assert_eq!(c.q_scale, Some(1.0 / 16.0)); // 1 / sqrt(head_dim)
                                                 // llama.cpp's set_swa_pattern(6): five windowed layers, then a global one
        let swa: Vec<bool> = (0..13).map(|il| c.is_swa(il)).collect();
        let mut want = vec![true; 13];
        want[5] = false;
        want[11] = false;
        assert_eq!(swa, want);
        assert_eq!((c.window(0), c.window(5)), (Some(512), None));
        assert_eq!((c.rope_base(0), c.rope_base(5)), (10000.0, 1e6));
        assert!(LlamaConfig::from_metadata(&md("llama")).unwrap().is_plain_llama());
        m.set("gemma3.rope.scaling.type", Value::string("linear"));
        let e = LlamaConfig::from_metadata(&m).unwrap_err().to_string();
        assert!(e.contains("gemma3.rope.scaling.type"), "{e}");
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
