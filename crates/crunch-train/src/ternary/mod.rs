//! Ternary fine-tuning (BitNet b1.58 style): the seven linears of every block are trained so that
//! they work ternarized — each row cut into groups of 256 weights, each group `trit · d` with
//! `d = mean |w|` stored as f16 (crunch-quant's absmean rule,
//! [`crunch_quant::ternary::ternarize_absmean`]) — and the model is then written with those
//! linears as TQ1_0 or TQ2_0.
//!
//! Every linear becomes an [`SteWeight`]: a latent f32 matrix, initialised from the model's
//! (dequantized) weight, and the effective matrix the forward and backward products use,
//! `W_eff = λ·W + (1 − λ)·T(W)` with `T` the absmean ternarization of the latent, row by row.
//! `λ` is a warm-up blend ([`Blend`]): 1 at the first update, falling linearly to 0 over
//! `warmup` updates, 0 after (so with `warmup = 0` the model is ternary from the start). The
//! backward pass is the block's own; an STE weight's gradient is the straight-through estimate
//! `dW = dYᵀ·X` (the gradient of `W_eff`, `T` treated as the identity), `dX = dY·W_eff`. The
//! token embedding, the output projection (or the tied embedding) and the norms stay frozen.
//!
//! [`TernaryModel`] wraps a model made of [`Block`]s (the tiny dense [`Model`] or a
//! [`GgufModel`]) and is a [`LoraModel`] whose parameters are the latents, so [`Trainer`] runs it
//! unchanged with any loss head (next-token cross-entropy, top-k distillation): the trainer tells
//! it where each update starts ([`LoraModel::begin_step`], which sets `λ`) and that the optimizer
//! changed the latents ([`LoraModel::end_step`], which recomputes every effective matrix, in
//! parallel, for the next update's `λ`). At `λ = 0` the forward is exactly the model whose
//! linears are `T(W)`, which is what [`TernaryModel::export`] writes: every block linear quantized
//! by absmean from its latent (TQ1_0 / TQ2_0 where rows are whole 256-blocks, else stored exactly
//! in Q4_0 or F16, [`crunch_quant::ternary::absmean_storage_type`]), every other tensor and the
//! metadata copied, `general.file_type` set to llama.cpp's `MOSTLY_TQ1_0` / `MOSTLY_TQ2_0`.
//! [`export_absmean`] writes the same file from a model's own weights without building anything
//! (post-training ternarization, one tensor in memory at a time).
//!
//! Memory: per block linear the latent and the effective matrix (f32), AdamW's two moments, and
//! during a step the trainer's gradient (one f32 copy per sample plus its f64 sum).
//!
//! [`Trainer`]: crate::Trainer

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crunch_core::gguf::{GgufFile, GgufWriter, Metadata, TensorInfo, TensorSpec, Value};
use crunch_core::GgmlType;
use crunch_model::matmul::MatmulMode;
use crunch_model::{ModelError, Result};
use crunch_quant::ternary::{absmean_storage_type, quantize_absmean_rows, ternarize_absmean};

use crate::block::{Block, BlockGrads, Proj};
use crate::float::Float;
use crate::gguf_model::GgufModel;
use crate::model::{Model, Target};
use crate::ops::{LinearWeight, SteWeight};
use crate::train::LoraModel;

#[cfg(test)]
mod tests;

/// llama.cpp's `LLAMA_FTYPE_MOSTLY_TQ1_0` (`general.file_type` of a TQ1_0 model).
pub const FTYPE_MOSTLY_TQ1_0: u32 = 36;
/// llama.cpp's `LLAMA_FTYPE_MOSTLY_TQ2_0`.
pub const FTYPE_MOSTLY_TQ2_0: u32 = 37;

/// The warm-up blend of the effective weights, `W_eff = λ·W + (1 − λ)·T(W)`: `λ = 1 − step / warmup`
/// for the first `warmup` updates (1 at update 0), then 0. `warmup = 0`: ternary throughout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Blend {
    pub warmup: u64,
}

impl Blend {
    /// `λ` for the update of index `step` (from 0).
    pub fn lambda(&self, step: u64) -> f64 {
        if step >= self.warmup {
            0.0
        } else {
            1.0 - step as f64 / self.warmup as f64
        }
    }
}

/// Recompute `w`'s effective matrix from its latent: `λ·W + (1 − λ)·T(W)`, `T` the absmean
/// ternarization of each row (computed in f32: an f64 latent is rounded to f32 first), rows in
/// parallel. `λ = 0` gives exactly `T(W)`, `λ = 1` exactly `W`.
pub fn refresh<T: Float>(w: &mut SteWeight<T>, lambda: f64) {
    let n_in = w.n_in;
    if n_in == 0 {
        return;
    }
    if lambda == 1.0 {
        w.effective.par_chunks_mut(n_in).zip(w.latent.par_chunks(n_in)).for_each(|(e, l)| e.copy_from_slice(l));
        return;
    }
    w.effective.par_chunks_mut(n_in).zip(w.latent.par_chunks(n_in)).for_each_init(
        || (Vec::new(), vec![0f32; n_in]),
        |(x, t): &mut (Vec<f32>, Vec<f32>), (eff, lat)| {
            x.clear();
            x.extend(lat.iter().map(|v| v.to_f64() as f32));
            ternarize_absmean(x, t);
            if lambda == 0.0 {
                for (e, &v) in eff.iter_mut().zip(t.iter()) {
                    *e = T::from_f32(v);
                }
            } else {
                for ((e, &v), &l) in eff.iter_mut().zip(t.iter()).zip(lat) {
                    *e = T::from_f64(lambda * l.to_f64() + (1.0 - lambda) * f64::from(v));
                }
            }
        },
    );
}

/// Make every block linear's weight an [`SteWeight`] whose latent (and effective matrix) starts as
/// the weight's dense copy ([`crate::ops::Frozen::to_dense`]: a GGUF weight dequantized); biases
/// and LoRA pairs are kept, linears that already are STE weights left as they are.
pub fn make_trainable<T: Float>(blocks: &mut [Block<T>]) {
    for b in blocks {
        for l in b.linears.iter_mut() {
            if let LinearWeight::Frozen(f) = &l.w {
                let (n_in, n_out) = (f.n_in(), f.n_out());
                l.w = LinearWeight::Ste(SteWeight::new(n_in, n_out, f.to_dense()));
            }
        }
    }
}

/// A model made of [`Block`]s of `Scalar`, which [`TernaryModel`] trains the linears of.
pub trait BlockModel: LoraModel<Self::Scalar> {
    type Scalar: Float;
    fn blocks(&self) -> &[Block<Self::Scalar>];
    fn blocks_mut(&mut self) -> &mut [Block<Self::Scalar>];
}

impl<T: Float> BlockModel for Model<T> {
    type Scalar = T;
    fn blocks(&self) -> &[Block<T>] {
        &self.blocks
    }
    fn blocks_mut(&mut self) -> &mut [Block<T>] {
        &mut self.blocks
    }
}

impl BlockModel for GgufModel {
    type Scalar = f32;
    fn blocks(&self) -> &[Block<f32>] {
        &self.blocks
    }
    fn blocks_mut(&mut self) -> &mut [Block<f32>] {
        &mut self.blocks
    }
}

/// A model whose block linears are trained ternary-aware (see the [module](self) documentation):
/// a [`LoraModel`] whose parameters are the linears' latent weights, with `λ` following the
/// trainer's update count.
pub struct TernaryModel<M> {
    model: M,
    blend: Blend,
    /// The update the effective weights are ready for.
    step: u64,
    /// The `λ` they were computed with.
    lambda: f64,
}

impl<T: Float, M: BlockModel<Scalar = T>> TernaryModel<M> {
    /// Every block linear of `model` made trainable ([`make_trainable`]) and its effective matrix
    /// computed for update 0.
    pub fn new(mut model: M, blend: Blend) -> Self {
        make_trainable(model.blocks_mut());
        let mut m = TernaryModel { model, blend, step: 0, lambda: blend.lambda(0) };
        m.refresh();
        m
    }

    /// The model (its forward pass, loss and gradients use the effective weights).
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The model, mutably: after changing a latent, call [`TernaryModel::refresh`].
    pub fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }

    pub fn blend(&self) -> Blend {
        self.blend
    }

    /// The update the effective weights are ready for.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The `λ` of the effective weights.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// Get ready for update `step` (a resumed run, an evaluation at `λ = 0` with a step past the
    /// warm-up): `λ` of that step and every effective matrix recomputed.
    pub fn set_step(&mut self, step: u64) {
        self.step = step;
        self.refresh();
    }

    /// Recompute every effective matrix from its latent with the current step's `λ` (linears one
    /// after the other, the rows of each in parallel).
    pub fn refresh(&mut self) {
        self.lambda = self.blend.lambda(self.step);
        let lambda = self.lambda;
        for b in self.model.blocks_mut() {
            for l in b.linears.iter_mut() {
                if let Some(w) = l.w.ste_mut() {
                    refresh(w, lambda);
                }
            }
        }
    }

    /// Every STE weight with its layer and linear.
    pub fn weights(&self) -> impl Iterator<Item = (usize, Proj, &SteWeight<T>)> + '_ {
        self.model
            .blocks()
            .iter()
            .enumerate()
            .flat_map(|(i, b)| Proj::ALL.iter().zip(&b.linears).filter_map(move |(&p, l)| l.w.ste().map(|w| (i, p, w))))
    }

    /// The latent weights, in the model's parameter order (what the trainer updates): after
    /// changing them, call [`TernaryModel::refresh`].
    pub fn latents_mut(&mut self) -> Vec<&mut Vec<T>> {
        self.model.lora_params_mut()
    }
}

impl<T: Float, M: BlockModel<Scalar = T>> LoraModel<T> for TernaryModel<M> {
    fn loss_and_grad(
        &self,
        tokens: &[u32],
        target: Target<'_, T>,
    ) -> std::result::Result<(T, Vec<BlockGrads<T>>), ModelError> {
        self.model.loss_and_grad(tokens, target)
    }

    /// The latent weights (and any LoRA pairs the model also has).
    fn lora_params_mut(&mut self) -> Vec<&mut Vec<T>> {
        self.model.lora_params_mut()
    }

    /// `λ` of update `step`, unless the effective weights are already for it.
    fn begin_step(&mut self, step: u64) {
        if step != self.step {
            self.set_step(step);
        }
    }

    /// The latents changed: every effective matrix recomputed for the next update.
    fn end_step(&mut self, step: u64) {
        self.set_step(step + 1);
    }
}

/// The GGUF names of the block linears [`TernaryModel`] ternarizes: `blk.N.{attn_q, attn_k,
/// attn_v, attn_output, ffn_gate, ffn_up, ffn_down}.weight`.
pub fn is_ternary_linear(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("blk.") else {
        return false;
    };
    let Some((layer, rest)) = rest.split_once('.') else {
        return false;
    };
    !layer.is_empty()
        && layer.bytes().all(|b| b.is_ascii_digit())
        && rest.strip_suffix(".weight").is_some_and(|p| Proj::ALL.iter().any(|q| q.name() == p))
}

/// What [`TernaryModel::export`] and [`export_absmean`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TernaryExport {
    /// The file's SHA-256 (hex).
    pub sha256: String,
    /// `general.file_type`.
    pub file_type: u32,
    /// Every ternarized tensor with the type it was stored in (the asked TQ type, or Q4_0 / F16
    /// for rows that are not whole 256-blocks).
    pub tensors: Vec<(String, GgmlType)>,
}

impl TernaryExport {
    /// The tensors not stored in the asked type (rows that are not whole 256-blocks).
    pub fn fallbacks(&self, ty: GgmlType) -> impl Iterator<Item = &(String, GgmlType)> {
        self.tensors.iter().filter(move |(_, t)| *t != ty)
    }
}

impl TernaryModel<GgufModel> {
    /// Open a GGUF Llama-family model for ternary training (see [`TernaryModel::from_gguf`]).
    ///
    /// # Errors
    /// As [`GgufModel::open`].
    pub fn open(path: impl AsRef<Path>, mode: MatmulMode, blend: Blend) -> Result<Self> {
        Self::from_gguf(Arc::new(GgufFile::open(path)?), mode, blend)
    }

    /// The model of an opened file with every block linear dequantized into its latent; `mode`
    /// is how the frozen output projection multiplies (see [`GgufModel::from_gguf`]). The linears'
    /// pages of the memory map are released afterwards (nothing reads them again).
    ///
    /// # Errors
    /// As [`GgufModel::from_gguf`].
    pub fn from_gguf(file: Arc<GgufFile>, mode: MatmulMode, blend: Blend) -> Result<Self> {
        let m = TernaryModel::new(GgufModel::from_gguf(file.clone(), mode)?, blend);
        for info in file.tensors().iter().filter(|t| is_ternary_linear(&t.name)) {
            file.release_tensor(info);
        }
        Ok(m)
    }

    /// Write the model to `dest` (atomically, with a `.sha256` sidecar) with every block linear
    /// quantized by absmean from its latent into `ty` (TQ1_0 or TQ2_0; rows that are not whole
    /// 256-blocks in Q4_0 or F16, which hold the same values) — the weights the forward pass uses
    /// at `λ = 0` — and every other tensor and the metadata copied from the model's file.
    ///
    /// # Errors
    /// `ty` not TQ1_0 or TQ2_0, I/O errors.
    pub fn export(&self, dest: impl AsRef<Path>, ty: GgmlType) -> Result<TernaryExport> {
        let latents: HashMap<String, &SteWeight<f32>> =
            self.weights().map(|(i, p, w)| (format!("blk.{i}.{}.weight", p.name()), w)).collect();
        write_ternary(self.model.file(), dest.as_ref(), ty, &|name| latents.contains_key(name), &|info| {
            let w: &SteWeight<f32> = latents[&info.name];
            Ok(Cow::Borrowed(w.latent.as_slice()))
        })
    }
}

/// Post-training ternarization: `file` written to `dest` as [`TernaryModel::export`] writes it,
/// each block linear ([`is_ternary_linear`]) quantized by absmean from its own (dequantized)
/// weights, one tensor in memory at a time. The same bytes as exporting a [`TernaryModel`] of the
/// file before any training.
///
/// # Errors
/// `ty` not TQ1_0 or TQ2_0, a linear of a type crunch cannot dequantize, I/O errors.
pub fn export_absmean(file: &GgufFile, dest: impl AsRef<Path>, ty: GgmlType) -> Result<TernaryExport> {
    write_ternary(file, dest.as_ref(), ty, &is_ternary_linear, &|info| {
        let row_len = info.row_len() as usize;
        let mut w = vec![0f32; info.n_elements() as usize];
        crunch_quant::dequantize_rows(info.ty, file.tensor_data(info), row_len, &mut w)
            .map_err(|e| ModelError::Input(format!("tensor {}: {e}", info.name)))?;
        Ok(Cow::Owned(w))
    })
}

/// The output metadata: the input's without split keys, `general.quantization_version` (2) and
/// `general.file_type` at the end, as llama.cpp's quantizer writes them.
fn ternary_metadata(input: &Metadata, file_type: u32) -> Metadata {
    let mut m = input.clone();
    for k in ["split.no", "split.count", "split.tensors.count", "general.quantization_version", "general.file_type"] {
        m.remove(k);
    }
    m.set("general.quantization_version", Value::U32(2));
    m.set("general.file_type", Value::U32(file_type));
    m
}

type LatentOf<'a> = dyn Fn(&TensorInfo) -> Result<Cow<'a, [f32]>> + 'a;

/// Write `file` to `dest` with the tensors `ternary` names quantized by absmean from the values
/// `latent` gives, every other tensor copied byte for byte.
fn write_ternary<'a>(
    file: &GgufFile,
    dest: &Path,
    ty: GgmlType,
    ternary: &dyn Fn(&str) -> bool,
    latent: &LatentOf<'a>,
) -> Result<TernaryExport> {
    let file_type = match ty {
        GgmlType::TQ1_0 => FTYPE_MOSTLY_TQ1_0,
        GgmlType::TQ2_0 => FTYPE_MOSTLY_TQ2_0,
        _ => return Err(ModelError::Input(format!("a ternary model is written as TQ1_0 or TQ2_0, not {ty}"))),
    };
    let specs: Vec<TensorSpec> = file
        .tensors()
        .iter()
        .map(|t| {
            let stored = if ternary(&t.name) { absmean_storage_type(ty, t.row_len() as usize) } else { t.ty };
            TensorSpec { name: t.name.clone(), ty: stored, dims: t.dims.clone() }
        })
        .collect();
    let mut out = GgufWriter::create(dest, ternary_metadata(file.metadata(), file_type), &specs)?;
    let mut tensors = Vec::new();
    for (info, spec) in file.tensors().iter().zip(&specs) {
        if !ternary(&info.name) {
            out.write_tensor(&info.name, file.tensor_data(info))?;
            continue;
        }
        let w = latent(info)?;
        let (row_len, rows) = (info.row_len() as usize, info.n_rows() as usize);
        let size = spec.ty.tensor_size(row_len, rows).ok_or_else(|| {
            ModelError::Input(format!("tensor {}: rows of {row_len} do not fit {}", info.name, spec.ty))
        })?;
        let mut bytes = vec![0u8; size];
        quantize_absmean_rows(spec.ty, &w, row_len, &mut bytes)
            .map_err(|e| ModelError::Input(format!("tensor {}: {e}", info.name)))?;
        out.write_tensor(&info.name, &bytes)?;
        tensors.push((info.name.clone(), spec.ty));
    }
    let sha256 = out.finish()?;
    Ok(TernaryExport { sha256, file_type, tensors })
}
