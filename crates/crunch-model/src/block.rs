//! One Llama-family transformer block, the single definition inference ([`crate::LlamaModel`])
//! and block-by-block calibration (crunch-calib's runner) both run.
//!
//! The graph is llama.cpp's `llm_build_llama` / `llm_build_qwen2` / `llm_build_gemma3`, with the
//! per-architecture features read from [`LlamaConfig`]:
//!
//! ```text
//! h = rms_norm(x, attn_norm)
//! q, k, v = h Wqᵀ (+bq), h Wkᵀ (+bk), h Wvᵀ (+bv)          group Qkv
//! q, k = rms_norm per head (attn_q_norm, attn_k_norm)        qk_norm
//! q, k = rope(q), rope(k)   (the layer's base)              + q · q_scale
//! a = attention(q, k, v)    (causal, or the layer's window)
//! o = a Woᵀ                                                  group Out
//! o = rms_norm(o, post_attention_norm)                       post_norms
//! x += o
//! h = rms_norm(x, ffn_norm)
//! g, u = h Wgateᵀ, h Wupᵀ                                    group GateUp
//! g = silu(g) · u   or   gelu(g) · u                          ffn_act
//! d = g Wdownᵀ                                               group Down
//! d = rms_norm(d, post_ffw_norm)                             post_norms
//! x += d
//! ```
//!
//! What differs between the callers is behind [`BlockOps`]: how a group of linear layers is
//! applied (quantized weights from the memory map and LoRA terms, or f32 copies a calibration
//! hook may change first) and where attention finds its keys (a KV cache, or chunks that each
//! start at position 0).

use crunch_core::gguf::GgufFile;

use crate::attention::{attention_with, AttnOpts, AttnShape};
use crate::config::{FfnAct, LlamaConfig};
use crate::error::{ModelError, Result};
use crate::ops::{add_assign, geglu, rms_norm, swiglu};
use crate::rope::Rope;
use crate::weights::{load_optional_vector, load_vector};

/// The linear layers of a block that share one input, in evaluation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// attn_q, attn_k, attn_v (input: attention norm output).
    Qkv,
    /// attn_output (input: attention output).
    Out,
    /// ffn_gate, ffn_up (input: FFN norm output).
    GateUp,
    /// ffn_down (input: `act(gate) * up`).
    Down,
}

/// A block's normalization weights (GGUF stores Gemma's `1 + w` already, so every norm is a
/// plain RMSNorm times its weight).
#[derive(Clone, Debug)]
pub struct Norms {
    /// `attn_norm` (`n_embd`).
    pub attn: Vec<f32>,
    /// `ffn_norm` (`n_embd`).
    pub ffn: Vec<f32>,
    /// `attn_q_norm` / `attn_k_norm` (`head_dim`), when the config has `qk_norm`.
    pub q: Option<Vec<f32>>,
    pub k: Option<Vec<f32>>,
    /// `post_attention_norm` / `post_ffw_norm` (`n_embd`), when the config has `post_norms`.
    pub post_attn: Option<Vec<f32>>,
    pub post_ffn: Option<Vec<f32>>,
}

impl Norms {
    /// Block `i`'s norms; the ones the configuration calls for must be present (named if not).
    pub fn load(file: &GgufFile, c: &LlamaConfig, i: usize) -> Result<Self> {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        let need = |on: bool, s: &str, len: usize| -> Result<Option<Vec<f32>>> {
            if on {
                load_vector(file, &n(s), len).map(Some)
            } else {
                Ok(None)
            }
        };
        let norms = Norms {
            attn: load_vector(file, &n("attn_norm"), c.n_embd)?,
            ffn: load_vector(file, &n("ffn_norm"), c.n_embd)?,
            q: need(c.qk_norm, "attn_q_norm", c.head_dim)?,
            k: need(c.qk_norm, "attn_k_norm", c.head_dim)?,
            post_attn: need(c.post_norms, "post_attention_norm", c.n_embd)?,
            post_ffn: need(c.post_norms, "post_ffw_norm", c.n_embd)?,
        };
        // A Llama-style file with tensors this graph would ignore is refused, not run wrong.
        if !c.qk_norm && file.tensor(&n("attn_q_norm")).is_some() {
            return Err(ModelError::Config(format!(
                "{} has {} but architecture {} does not use it",
                file.path.display(),
                n("attn_q_norm"),
                c.arch.name()
            )));
        }
        Ok(norms)
    }
}

/// The RoPE of every layer: the global one and, for sliding-window layers with their own base,
/// the windowed one.
#[derive(Clone, Debug)]
pub struct Ropes {
    pub global: Rope,
    pub swa: Option<Rope>,
}

impl Ropes {
    /// From the configuration (`rope_freqs.weight` frequency factors apply to both).
    pub fn new(file: &GgufFile, c: &LlamaConfig) -> Result<Self> {
        let global = Rope {
            mode: c.rope_mode,
            n_rot: c.n_rot,
            head_dim: c.head_dim,
            freq_base: c.rope_freq_base,
            freq_factors: load_optional_vector(file, "rope_freqs.weight", c.n_rot / 2)?,
        };
        let swa = (c.n_swa > 0 && c.rope_freq_base_swa != c.rope_freq_base)
            .then(|| Rope { freq_base: c.rope_freq_base_swa, ..global.clone() });
        Ok(Ropes { global, swa })
    }

    /// The RoPE of layer `il`.
    pub fn layer(&self, c: &LlamaConfig, il: usize) -> &Rope {
        match &self.swa {
            Some(r) if c.is_swa(il) => r,
            _ => &self.global,
        }
    }

    /// The angles of positions `pos0..pos0 + n`, for the global and the windowed RoPE.
    pub fn angles(&self, pos0: usize, n: usize) -> Angles {
        Angles { global: self.global.angles_rows(pos0, n), swa: self.swa.as_ref().map(|r| r.angles_rows(pos0, n)) }
    }
}

/// Precomputed RoPE angles of a run of positions (see [`Ropes::angles`]).
#[derive(Clone, Debug)]
pub struct Angles {
    global: Vec<Vec<(f32, f32)>>,
    swa: Option<Vec<Vec<(f32, f32)>>>,
}

impl Angles {
    fn layer(&self, c: &LlamaConfig, il: usize) -> &[Vec<(f32, f32)>] {
        match &self.swa {
            Some(a) if c.is_swa(il) => a,
            _ => &self.global,
        }
    }
}

/// Rotate `q` and `k` (rows of `n_head * head_dim` and `n_head_kv * head_dim`) as layer `il`
/// does, and multiply `q` by the configuration's query scale (after RoPE, as llama.cpp).
pub fn rope_qk(c: &LlamaConfig, il: usize, ropes: &Ropes, angles: &Angles, q: &mut [f32], k: &mut [f32]) {
    let rope = ropes.layer(c, il);
    let a = angles.layer(c, il);
    rope.apply_rows_with(q, c.n_head * c.head_dim, a);
    rope.apply_rows_with(k, c.n_embd_kv(), a);
    if let Some(s) = c.q_scale {
        q.iter_mut().for_each(|v| *v *= s);
    }
}

/// Attention of layer `il` for `n` queries at `pos0..` over keys and values `0..pos0 + n`
/// (rotated keys; see [`rope_qk`]), with the layer's window and score scale.
pub fn attend(c: &LlamaConfig, il: usize, q: &[f32], k: &[f32], v: &[f32], pos0: usize, n: usize) -> Vec<f32> {
    let shape = AttnShape { n_head: c.n_head, n_head_kv: c.n_head_kv, head_dim: c.head_dim };
    let scale = if c.q_scale.is_some() { 1.0 } else { 1.0 / (c.head_dim as f32).sqrt() };
    attention_with(q, k, v, pos0, n, shape, AttnOpts { scale, window: c.window(il) })
}

/// What the two users of a block do their own way.
pub trait BlockOps {
    type Error: From<ModelError>;

    /// Apply group `g`'s linear layers, biases included, to `input` (rows of their common input
    /// width) and return their outputs in the group's order (q, k, v / o / gate, up / down).
    /// `input` is mutable so that a calibration method that rescales the layer before it can
    /// rescale the input to match.
    fn linear(&mut self, g: Group, input: &mut [f32]) -> std::result::Result<Vec<Vec<f32>>, Self::Error>;

    /// Attention of the block's layer for normalized, not yet rotated `q` and `k` and `v` (rows
    /// of the block's tokens): rotate (see [`rope_qk`]), reach the keys, attend (see [`attend`]).
    fn attention(&mut self, q: Vec<f32>, k: Vec<f32>, v: Vec<f32>) -> std::result::Result<Vec<f32>, Self::Error>;
}

fn outputs<E: From<ModelError>, const N: usize>(g: Group, v: Vec<Vec<f32>>) -> std::result::Result<[Vec<f32>; N], E> {
    let n = v.len();
    v.try_into().map_err(|_| E::from(ModelError::Input(format!("linear group {g:?} returned {n} outputs, not {N}"))))
}

/// Run the block on `x` (rows of `n_embd`) in place.
///
/// # Errors
/// Whatever `ops` returns.
pub fn forward<O: BlockOps>(
    c: &LlamaConfig,
    norms: &Norms,
    x: &mut [f32],
    ops: &mut O,
) -> std::result::Result<(), O::Error> {
    let eps = c.rms_eps;
    let mut h = rms_norm(x, &norms.attn, eps);
    let [mut q, mut k, v] = outputs(Group::Qkv, ops.linear(Group::Qkv, &mut h)?)?;
    drop(h);
    if let Some(w) = &norms.q {
        q = rms_norm(&q, w, eps);
    }
    if let Some(w) = &norms.k {
        k = rms_norm(&k, w, eps);
    }
    let mut a = ops.attention(q, k, v)?;
    let [mut o] = outputs(Group::Out, ops.linear(Group::Out, &mut a)?)?;
    drop(a);
    if let Some(w) = &norms.post_attn {
        o = rms_norm(&o, w, eps);
    }
    add_assign(x, &o);
    drop(o);

    let mut h = rms_norm(x, &norms.ffn, eps);
    let [mut g, u] = outputs(Group::GateUp, ops.linear(Group::GateUp, &mut h)?)?;
    drop(h);
    match c.ffn_act {
        FfnAct::Silu => swiglu(&mut g, &u),
        FfnAct::GeluTanh => geglu(&mut g, &u),
    }
    drop(u);
    let [mut d] = outputs(Group::Down, ops.linear(Group::Down, &mut g)?)?;
    drop(g);
    if let Some(w) = &norms.post_ffn {
        d = rms_norm(&d, w, eps);
    }
    add_assign(x, &d);
    Ok(())
}

/// Scale token embeddings as the architecture does (Gemma: `x · sqrt(n_embd)`).
pub fn scale_embeddings(c: &LlamaConfig, x: &mut [f32]) {
    if let Some(s) = c.embd_scale {
        x.iter_mut().for_each(|v| *v *= s);
    }
}
