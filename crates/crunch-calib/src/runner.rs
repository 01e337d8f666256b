//! Running a Llama-family model one block at a time on f32 copies of the block's weights, so a
//! calibrated method can look at (and change) each group of linear layers just before it is used:
//! GPTQ quantizes a group and the rest of the block then runs on the quantized weights; AWQ folds
//! its scales in. Memory holds one block's weights and the hidden states of the calibration
//! tokens, whatever the model size.
//!
//! The block is crunch-model's [`crunch_model::block::forward`], the one inference runs (llama,
//! qwen2, gemma3 and their per-architecture features); here its linear layers are f32 copies a
//! hook sees before each group runs, and every chunk of `n_ctx` tokens is its own sequence
//! starting at position 0.

use crate::error::{CalibError, Result};
use crate::linalg;
use crunch_core::gguf::GgufFile;
use crunch_model::block::{self, Angles, BlockOps, Norms, Ropes};
use crunch_model::ops::add_bias;
use crunch_model::weights::load_optional_vector;
use crunch_model::LlamaConfig;
use rayon::prelude::*;
use std::sync::Arc;

/// A linear layer as f32 (`n_out` rows of `n_in`).
#[derive(Clone, Debug)]
pub struct Linear {
    pub name: String,
    pub w: Vec<f32>,
    pub n_in: usize,
    pub n_out: usize,
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    /// The GGUF name of this layer's bias (`blk.N.attn_v.bias` for `blk.N.attn_v.weight`).
    pub fn bias_name(&self) -> String {
        format!("{}.bias", self.name.strip_suffix(".weight").unwrap_or(&self.name))
    }

    /// `x Wᵀ (+ bias)` for `x` of rows of `n_in`.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut y = linalg::matmul_xwt(x, self.n_in, &self.w, self.n_out);
        if let Some(b) = &self.bias {
            add_bias(&mut y, b);
        }
        y
    }
}

/// The linear layers of a block that share one input (crunch-model's, the block being one).
pub use crunch_model::block::Group;

/// One block as f32.
#[derive(Clone, Debug)]
pub struct Layer {
    pub index: usize,
    /// The block's norms (AWQ folds its scales into `norms.attn` and `norms.ffn`).
    pub norms: Norms,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl Layer {
    pub fn attn_norm_name(&self) -> String {
        format!("blk.{}.attn_norm.weight", self.index)
    }
    pub fn ffn_norm_name(&self) -> String {
        format!("blk.{}.ffn_norm.weight", self.index)
    }
    /// The linear layers of `g`.
    pub fn group_mut(&mut self, g: Group) -> Vec<&mut Linear> {
        match g {
            Group::Qkv => vec![&mut self.q, &mut self.k, &mut self.v],
            Group::Out => vec![&mut self.o],
            Group::GateUp => vec![&mut self.gate, &mut self.up],
            Group::Down => vec![&mut self.down],
        }
    }
    pub fn linears(&self) -> [&Linear; 7] {
        [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down]
    }
}

/// Called before a group's linear layers run, with the group's input (all calibration tokens,
/// mutable so a method that rescales the previous layer can rescale the input to match).
pub type Hook<'a> = dyn FnMut(Group, &mut Layer, &mut [f32]) -> Result<()> + 'a;

/// Block-at-a-time runner over a GGUF Llama-family model.
pub struct Runner {
    file: Arc<GgufFile>,
    pub config: LlamaConfig,
    ropes: Ropes,
}

fn load_f32(file: &GgufFile, name: &str, n_in: usize, n_out: usize) -> Result<Vec<f32>> {
    let t = file.tensor(name).ok_or_else(|| crunch_model::ModelError::MissingTensor(name.to_string()))?;
    if t.dims.len() < 2 || t.dims[0] as usize != n_in || t.dims[1] as usize != n_out {
        return Err(crunch_model::ModelError::BadShape {
            tensor: name.to_string(),
            found: t.shape_string(),
            expected: format!("[{n_in}, {n_out}]"),
        }
        .into());
    }
    let mut out = vec![0f32; n_in * n_out];
    crunch_quant::dequantize_rows(t.ty, file.tensor_data(t), n_in, &mut out)
        .map_err(|source| CalibError::Quant { tensor: name.to_string(), source })?;
    Ok(out)
}

impl Runner {
    /// Read the configuration; the weights are loaded block by block later.
    ///
    /// # Errors
    /// Not a Llama-family model, or one without blocks.
    pub fn new(file: Arc<GgufFile>) -> Result<Self> {
        crate::targets::calibration_targets(&file, false)?;
        let config = LlamaConfig::from_metadata(file.metadata())?;
        let ropes = Ropes::new(&file, &config)?;
        Ok(Runner { file, config, ropes })
    }

    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// Token embeddings of every chunk, concatenated (`tokens × n_embd`).
    ///
    /// # Errors
    /// Token ids out of range.
    pub fn embed(&self, chunks: &[Vec<u32>]) -> Result<Vec<f32>> {
        let e = self.config.n_embd;
        let t = self
            .file
            .tensor("token_embd.weight")
            .ok_or_else(|| crunch_model::ModelError::MissingTensor("token_embd.weight".into()))?;
        let row = t.ty.row_size(e).ok_or_else(|| CalibError::Invalid("token_embd.weight: bad row size".into()))?;
        let data = self.file.tensor_data(t);
        let k = crunch_quant::kernels(t.ty)
            .ok_or_else(|| CalibError::Invalid(format!("token_embd.weight: no kernels for {}", t.ty)))?;
        let ids: Vec<u32> = chunks.iter().flatten().copied().collect();
        let mut x = vec![0f32; ids.len() * e];
        for (dst, &id) in x.chunks_exact_mut(e).zip(&ids) {
            let id = id as usize;
            if id >= self.config.n_vocab || (id + 1) * row > data.len() {
                return Err(crunch_model::ModelError::TokenOutOfRange { id: id as u32, n: self.config.n_vocab }.into());
            }
            (k.dequantize)(&data[id * row..(id + 1) * row], dst);
        }
        block::scale_embeddings(&self.config, &mut x);
        Ok(x)
    }

    /// Block `i`'s weights as f32.
    ///
    /// # Errors
    /// Missing tensors or wrong shapes, named.
    pub fn load_layer(&self, i: usize) -> Result<Layer> {
        let c = &self.config;
        let f = self.file.as_ref();
        let (e, kv, q) = (c.n_embd, c.n_embd_kv(), c.n_head * c.head_dim);
        let lin = |s: &str, bias: &str, n_in: usize, n_out: usize| -> Result<Linear> {
            let name = format!("blk.{i}.{s}.weight");
            Ok(Linear {
                w: load_f32(f, &name, n_in, n_out)?,
                bias: load_optional_vector(f, &format!("blk.{i}.{bias}.bias"), n_out)?,
                name,
                n_in,
                n_out,
            })
        };
        Ok(Layer {
            index: i,
            norms: Norms::load(f, c, i)?,
            q: lin("attn_q", "attn_q", e, q)?,
            k: lin("attn_k", "attn_k", e, kv)?,
            v: lin("attn_v", "attn_v", e, kv)?,
            o: lin("attn_output", "attn_output", q, e)?,
            gate: lin("ffn_gate", "ffn_gate", e, c.n_ff)?,
            up: lin("ffn_up", "ffn_up", e, c.n_ff)?,
            down: lin("ffn_down", "ffn_down", c.n_ff, e)?,
        })
    }

    /// Run `layer` on `x` (chunks of `n_ctx` tokens, `n_embd` each) in place, calling `hook`
    /// before each group of linear layers.
    ///
    /// # Errors
    /// Whatever `hook` returns; inconsistent sizes.
    pub fn forward_layer(&self, layer: &mut Layer, x: &mut [f32], n_ctx: usize, hook: &mut Hook<'_>) -> Result<()> {
        let c = &self.config;
        let n_tok = x.len() / c.n_embd;
        if n_ctx == 0 || !n_tok.is_multiple_of(n_ctx) {
            return Err(CalibError::Invalid(format!("{n_tok} tokens are not whole chunks of {n_ctx}")));
        }
        // Every chunk starts at position 0: one set of angles serves all chunks, q and k.
        let angles = self.ropes.angles(0, n_ctx);
        let norms = layer.norms.clone();
        let mut ops = ChunkOps { runner: self, layer, hook, n_ctx, angles: &angles };
        block::forward(c, &norms, x, &mut ops)
    }
}

/// [`BlockOps`] of the runner: the hook, then the layer's f32 linears; attention per chunk.
struct ChunkOps<'a, 'h> {
    runner: &'a Runner,
    layer: &'a mut Layer,
    hook: &'a mut Hook<'h>,
    n_ctx: usize,
    angles: &'a Angles,
}

impl BlockOps for ChunkOps<'_, '_> {
    type Error = CalibError;

    fn linear(&mut self, g: Group, input: &mut [f32]) -> Result<Vec<Vec<f32>>> {
        (self.hook)(g, self.layer, input)?;
        Ok(self.layer.group_mut(g).iter().map(|l| l.apply(input)).collect())
    }

    fn attention(&mut self, mut q: Vec<f32>, mut k: Vec<f32>, v: Vec<f32>) -> Result<Vec<f32>> {
        let c = &self.runner.config;
        let (il, n_ctx) = (self.layer.index, self.n_ctx);
        let (qd, kvd) = (c.n_head * c.head_dim, c.n_embd_kv());
        let n_tok = q.len() / qd;
        let mut att = vec![0f32; n_tok * qd];
        for ch in 0..n_tok / n_ctx {
            let qs = &mut q[ch * n_ctx * qd..(ch + 1) * n_ctx * qd];
            let ks = &mut k[ch * n_ctx * kvd..(ch + 1) * n_ctx * kvd];
            block::rope_qk(c, il, &self.runner.ropes, self.angles, qs, ks);
            let vs = &v[ch * n_ctx * kvd..(ch + 1) * n_ctx * kvd];
            let a = block::attend(c, il, qs, ks, vs, 0, n_ctx);
            att[ch * n_ctx * qd..(ch + 1) * n_ctx * qd].copy_from_slice(&a);
        }
        Ok(att)
    }
}

/// Mean absolute value of each column of `x` (rows of `n`).
pub fn column_abs_mean(x: &[f32], n: usize) -> Vec<f32> {
    let rows = (x.len() / n).max(1);
    let mut acc = vec![0f64; n];
    acc.par_chunks_mut(64).enumerate().for_each(|(b, a)| {
        let c0 = b * 64;
        let w = a.len();
        for row in x.chunks_exact(n) {
            for (s, v) in a.iter_mut().zip(&row[c0..c0 + w]) {
                *s += v.abs() as f64;
            }
        }
    });
    acc.iter().map(|&s| (s / rows as f64) as f32).collect()
}
