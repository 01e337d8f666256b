//! The Llama-family forward pass (llama, mistral, smollm, qwen2, gemma3) on the CPU, from a GGUF
//! file.
//!
//! The graph is llama.cpp's `llm_build_llama` / `llm_build_qwen2` / `llm_build_gemma3`: token
//! embedding (scaled by `sqrt(n_embd)` for Gemma), then per layer the block of [`crate::block`]
//! (RMSNorm → Q/K/V (+ biases for qwen2) → per-head Q/K norms (gemma3) → RoPE → causal
//! grouped-query attention, windowed on Gemma's sliding-window layers → output projection →
//! post-norm (gemma3) → residual, RMSNorm → SwiGLU / GeGLU FFN → post-norm (gemma3) → residual);
//! final RMSNorm and the output projection (tied to `token_embd.weight` when `output.weight` is
//! absent).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crunch_core::gguf::GgufFile;

use crate::block::{self, Angles, BlockOps, Group, Norms, Ropes};
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::lora::LoraAdapter;
use crate::matmul::{matmul, matmul_packed, MatmulMode};
use crate::ops::{add_bias, rms_norm};
use crate::weights::{load_optional_vector, load_vector, Weight};

/// Sees the input of every linear layer during a forward pass (the calibration hook: imatrix,
/// GPTQ's `XᵀX`, AWQ channel magnitudes).
///
/// `observe` is called once per linear layer per forward call, in evaluation order (see
/// [`LlamaModel::linear_names`]), from the calling thread, with
/// - `weight`: the GGUF tensor name of the weight about to be applied (`blk.3.attn_q.weight`,
///   `output.weight`; for tied embeddings the output layer reports `token_embd.weight`);
/// - `input`: exactly the activations multiplied by that weight, `n_tokens` rows of the weight's
///   `n_in` elements, row-major (f32, before any activation quantization);
/// - `n_tokens`: the number of rows (`input.len() / n_in`). The output layer sees only the rows
///   whose logits are computed.
///
/// Any `FnMut(&str, &[f32], usize)` closure is an observer.
pub trait Observer {
    fn observe(&mut self, weight: &str, input: &[f32], n_tokens: usize);
}

impl<F: FnMut(&str, &[f32], usize)> Observer for F {
    fn observe(&mut self, weight: &str, input: &[f32], n_tokens: usize) {
        self(weight, input, n_tokens)
    }
}

struct Layer {
    norms: Norms,
    wq: Weight,
    wk: Weight,
    wv: Weight,
    wo: Weight,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    gate: Weight,
    up: Weight,
    down: Weight,
}

/// One layer's [`BlockOps`] in [`LlamaModel::forward_with`]: linear layers through the model's
/// `lin` (quantized weights, LoRA terms, the observer), attention through the KV cache.
struct LayerOps<'a, 'o, F> {
    c: &'a LlamaConfig,
    il: usize,
    l: &'a Layer,
    lin: &'a F,
    observe: &'a mut Option<&'o mut dyn Observer>,
    ropes: &'a Ropes,
    angles: &'a Angles,
    cache: &'a mut KvCache,
    pos0: usize,
    n: usize,
}

impl<F> BlockOps for LayerOps<'_, '_, F>
where
    F: Fn(&Weight, &[f32], &mut Option<&mut dyn Observer>) -> Result<Vec<f32>>,
{
    type Error = ModelError;

    fn linear(&mut self, g: Group, input: &mut [f32]) -> Result<Vec<Vec<f32>>> {
        let l = self.l;
        let ws: &[(&Weight, Option<&Vec<f32>>)] = match g {
            Group::Qkv => &[(&l.wq, l.bq.as_ref()), (&l.wk, l.bk.as_ref()), (&l.wv, l.bv.as_ref())],
            Group::Out => &[(&l.wo, None)],
            Group::GateUp => &[(&l.gate, None), (&l.up, None)],
            Group::Down => &[(&l.down, None)],
        };
        let mut out = Vec::with_capacity(ws.len());
        for (w, b) in ws {
            let mut y = (self.lin)(w, input, self.observe)?;
            if let Some(b) = b {
                add_bias(&mut y, b);
            }
            out.push(y);
        }
        Ok(out)
    }

    fn attention(&mut self, mut q: Vec<f32>, mut k: Vec<f32>, v: Vec<f32>) -> Result<Vec<f32>> {
        let (c, il, pos0, n) = (self.c, self.il, self.pos0, self.n);
        let kv = c.n_embd_kv();
        block::rope_qk(c, il, self.ropes, self.angles, &mut q, &mut k);
        let (kc, vc) = (&mut self.cache.k[il], &mut self.cache.v[il]);
        kc[pos0 * kv..(pos0 + n) * kv].copy_from_slice(&k);
        vc[pos0 * kv..(pos0 + n) * kv].copy_from_slice(&v);
        Ok(block::attend(c, il, &q, &kc[..(pos0 + n) * kv], &vc[..(pos0 + n) * kv], pos0, n))
    }
}

/// A Llama-family model whose weights stay in the memory-mapped GGUF file.
pub struct LlamaModel {
    file: Arc<GgufFile>,
    pub config: LlamaConfig,
    tok_embd: Weight,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    output: Weight,
    ropes: Ropes,
    /// How quantized weights are multiplied (default: as llama.cpp does).
    pub mode: MatmulMode,
    /// LoRA adapters applied on top: per weight name, the adapter, its pair and the factor of `B A`.
    loras: HashMap<String, Vec<(Arc<LoraAdapter>, usize, f32)>>,
    adapters: Vec<(Arc<LoraAdapter>, f32)>,
}

impl std::fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaModel").field("path", &self.file.path).field("config", &self.config).finish()
    }
}

impl LlamaModel {
    /// Open a GGUF file and load the model (a SeedLM container is decoded first, see
    /// [`crate::seedlm`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_gguf(Arc::new(crate::seedlm::open_gguf(path)?))
    }

    /// Load from an opened file: check every tensor's presence, shape and type.
    pub fn from_gguf(file: Arc<GgufFile>) -> Result<Self> {
        let c = LlamaConfig::from_metadata(file.metadata())?;
        let f = file.as_ref();
        let (e, kv, q) = (c.n_embd, c.n_embd_kv(), c.n_head * c.head_dim);
        let tok_embd = Weight::load(f, "token_embd.weight", e, c.n_vocab)?;
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            layers.push(Layer {
                norms: Norms::load(f, &c, i)?,
                wq: Weight::load(f, &n("attn_q.weight"), e, q)?,
                wk: Weight::load(f, &n("attn_k.weight"), e, kv)?,
                wv: Weight::load(f, &n("attn_v.weight"), e, kv)?,
                wo: Weight::load(f, &n("attn_output.weight"), q, e)?,
                bq: load_optional_vector(f, &n("attn_q.bias"), q)?,
                bk: load_optional_vector(f, &n("attn_k.bias"), kv)?,
                bv: load_optional_vector(f, &n("attn_v.bias"), kv)?,
                gate: Weight::load(f, &n("ffn_gate.weight"), e, c.n_ff)?,
                up: Weight::load(f, &n("ffn_up.weight"), e, c.n_ff)?,
                down: Weight::load(f, &n("ffn_down.weight"), c.n_ff, e)?,
            });
        }
        let output_norm = load_vector(f, "output_norm.weight", e)?;
        let output = if f.tensor("output.weight").is_some() {
            Weight::load(f, "output.weight", e, c.n_vocab)?
        } else {
            tok_embd.clone()
        };
        let ropes = Ropes::new(f, &c)?;
        Ok(LlamaModel {
            file,
            config: c,
            tok_embd,
            layers,
            output_norm,
            output,
            ropes,
            mode: MatmulMode::Native,
            loras: HashMap::new(),
            adapters: Vec::new(),
        })
    }

    /// The linear weights an adapter can target: name -> (n_in, n_out).
    fn linear_shapes(&self) -> HashMap<&str, (usize, usize)> {
        let mut m = HashMap::new();
        for l in &self.layers {
            for w in [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down] {
                m.insert(w.name.as_str(), (w.n_in, w.n_out));
            }
        }
        if self.output.name != self.tok_embd.name {
            m.insert(self.output.name.as_str(), (self.output.n_in, self.output.n_out));
        }
        m
    }

    /// Apply `adapter` at `scale` in every later forward pass: each adapted layer computes
    /// `W x + s · B (A x)` as llama.cpp's `--lora-scaled` does; several adapters add up.
    ///
    /// # Errors
    /// An adapter for another architecture, for weights this model does not have or of other
    /// shapes, or on the token embedding (not supported).
    pub fn add_adapter(&mut self, adapter: Arc<LoraAdapter>, scale: f32) -> Result<()> {
        let arch = self.file.metadata().architecture().unwrap_or(self.config.arch.name()).to_string();
        adapter.refuse_token_embedding()?;
        let shapes = self.linear_shapes();
        adapter.check_model(&self.file.path.display().to_string(), &arch, |n| shapes.get(n).copied())?;
        for (i, p) in adapter.pairs().iter().enumerate() {
            let s = adapter.scale_of(p, scale);
            self.loras.entry(p.base.clone()).or_default().push((adapter.clone(), i, s));
        }
        self.adapters.push((adapter, scale));
        Ok(())
    }

    /// The adapters applied, with their user scales.
    pub fn adapters(&self) -> &[(Arc<LoraAdapter>, f32)] {
        &self.adapters
    }

    /// The GGUF file the weights live in.
    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// Check that a context of `n_ctx` positions fits the model's training context
    /// (`{arch}.context_length`), as llama.cpp's tools refuse longer ones.
    pub fn check_context(&self, n_ctx: usize) -> Result<()> {
        if n_ctx > self.config.n_ctx_train {
            return Err(ModelError::Input(format!(
                "context of {n_ctx} tokens is larger than the model's training context of {} ({}.context_length)",
                self.config.n_ctx_train,
                self.config.arch.name()
            )));
        }
        Ok(())
    }

    /// An empty KV cache for up to `n_ctx` positions.
    pub fn new_cache(&self, n_ctx: usize) -> KvCache {
        KvCache::new(self.config.n_layer, n_ctx, self.config.n_embd_kv())
    }

    /// Names of the linear layers in evaluation order (what an observer sees).
    pub fn linear_names(&self) -> Vec<String> {
        let mut v = Vec::new();
        for l in &self.layers {
            for w in [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down] {
                v.push(w.name.clone());
            }
        }
        v.push(self.output.name.clone());
        v
    }

    /// Run `tokens` at the positions after those in `cache`, append their K/V to it and return
    /// the logits of every token (`tokens.len() × n_vocab`).
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        self.forward_with(tokens, cache, 0, None)
    }

    /// Run `tokens` as one sequence from an empty cache, showing `observer` the input of every
    /// linear layer; returns the logits of every token (`tokens.len() × n_vocab`).
    ///
    /// # Errors
    /// Token ids outside the vocabulary, or more tokens than the model's training context.
    pub fn forward_observed(&self, tokens: &[u32], observer: &mut dyn Observer) -> Result<Vec<f32>> {
        if tokens.len() > self.config.n_ctx_train {
            return Err(ModelError::ContextFull { have: 0, add: tokens.len(), n_ctx: self.config.n_ctx_train });
        }
        let mut cache = self.new_cache(tokens.len());
        self.forward_with(tokens, &mut cache, 0, Some(observer))
    }

    /// [`LlamaModel::forward`] returning logits only for batch indices `logits_from..` (none if
    /// `logits_from >= tokens.len()`), and showing `observer` the input of every linear layer.
    pub fn forward_with(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        logits_from: usize,
        mut observe: Option<&mut dyn Observer>,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let f = self.file.as_ref();
        let n = tokens.len();
        let pos0 = cache.len();
        if pos0 + n > cache.n_ctx() {
            return Err(ModelError::ContextFull { have: pos0, add: n, n_ctx: cache.n_ctx() });
        }
        if cache.n_layer() != c.n_layer || cache.n_embd_kv() != c.n_embd_kv() {
            return Err(ModelError::Input("KV cache made for another model".into()));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let e = c.n_embd;
        let mut x = vec![0f32; n * e];
        for (row, &id) in x.chunks_exact_mut(e).zip(tokens) {
            if id as usize >= c.n_vocab {
                return Err(ModelError::TokenOutOfRange { id, n: c.n_vocab });
            }
            self.tok_embd.dequantize_row(f, id as usize, row)?;
        }
        block::scale_embeddings(c, &mut x);
        let mode = self.mode;
        let lin = |w: &Weight, input: &[f32], obs: &mut Option<&mut dyn Observer>| -> Result<Vec<f32>> {
            if let Some(o) = obs.as_mut() {
                o.observe(&w.name, input, input.len() / w.n_in);
            }
            let n_tok = input.len() / w.n_in;
            let mut y = matmul_packed(input, n_tok, &w.view(f), Some(w.pack_slot()), mode)?;
            if let Some(terms) = self.loras.get(&w.name) {
                for (ad, i, s) in terms {
                    let p = &ad.pairs()[*i];
                    let t = matmul(input, n_tok, &ad.a_view(p), mode)?;
                    let d = matmul(&t, n_tok, &ad.b_view(p), mode)?;
                    y.iter_mut().zip(&d).for_each(|(y, d)| *y += s * d);
                }
            }
            Ok(y)
        };
        let angles = self.ropes.angles(pos0, n);
        for (il, l) in self.layers.iter().enumerate() {
            let mut ops = LayerOps {
                c,
                il,
                l,
                lin: &lin,
                observe: &mut observe,
                ropes: &self.ropes,
                angles: &angles,
                cache,
                pos0,
                n,
            };
            block::forward(c, &l.norms, &mut x, &mut ops)?;
        }
        cache.set_len(pos0 + n);
        if logits_from >= n {
            return Ok(Vec::new());
        }
        let h = rms_norm(&x[logits_from * e..], &self.output_norm, c.rms_eps);
        lin(&self.output, &h, &mut observe)
    }
}
