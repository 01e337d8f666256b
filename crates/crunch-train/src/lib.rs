//! crunch-train: training on the CPU — LoRA / QLoRA fine-tuning and distillation onto a quantized
//! model (what `crunch distill` and `crunch finetune` run, see `crunch::train`) and ternary
//! fine-tuning of a model's linears ([`ternary`]): the backward pass of crunch's Llama block,
//! checked against finite differences, and the optimizer side of training on top of it.
//!
//! - [`ops`]: every op of the block — RMSNorm, RoPE (normal and NeoX, crunch-model's angles),
//!   causal grouped-query attention, SwiGLU, the residual add, and the linear layer
//!   `y = x Wᵀ + s·(x Aᵀ) Bᵀ` with `W` frozen and the LoRA factors `A`, `B` trainable — each a
//!   forward that mirrors crunch-model's math and its vector-Jacobian product. `W` can instead
//!   be trained through a straight-through estimator ([`ops::SteWeight`]: the products use an
//!   effective matrix derived from a latent one, whose gradient is `dyᵀ x`).
//! - [`loss`]: causal-LM cross-entropy and `KL(p_base ‖ p_model)`, over the full vocabulary or
//!   over the base's top-k tokens and the rest ([`loss::kl_top_k`]), with their logit gradients.
//! - [`block`]: a whole block forward (keeping its activations) and backward (input gradient and
//!   the gradients of its seven linears: LoRA pairs, STE weights); [`model`]: embedding → blocks
//!   → final norm → output projection → loss, and the gradients of every block, on a tiny dense
//!   model.
//! - [`gguf_model`]: [`GgufModel`], the same blocks over a real GGUF Llama-family file with the
//!   frozen base in its stored types (QLoRA-style): every linear, the output projection (or the
//!   tied embedding) included, is an [`ops::GgufWeight`]; tokens are embedded by dequantizing
//!   their rows; only norms and biases are f32. With zero LoRA its logits are crunch-model's
//!   `LlamaModel`'s (SmolLM2, `MatmulMode::Exact`: 3e-6 relative), with LoRA those of the
//!   model plus the written adapter, and its LoRA gradients match finite differences.
//! - [`gradcheck`]: central differences and the relative error the tests use.
//! - [`optim`]: AdamW (decoupled weight decay, bias correction; its state — step count and
//!   moments — serde for checkpoints), the learning-rate [`Schedule`] (linear warmup, then cosine
//!   or linear decay to a floor), global-norm clipping (returns the pre-clip norm) and
//!   [`GradBuffer`], gradient accumulation over micro-batches (per-sample gradients summed in f64,
//!   then averaged over the samples, so `k` micro-batches equal one batch of all their samples).
//! - [`init`]: LoRA initialisation as PEFT does it (`A` Kaiming-uniform with `a = √5` from a
//!   seeded [`SplitMix64`], `B = 0`), or from given factors by base-weight name (a `crunch lowrank`
//!   correction to start distillation from).
//! - [`ternary`]: BitNet-style ternary fine-tuning. [`TernaryModel`] makes every block linear
//!   an STE weight whose effective matrix is `λ·W + (1 − λ)·T(W)`, `T` crunch-quant's absmean
//!   ternarization (per 256-weight group of a row, f16 scale), `λ` a warm-up [`Blend`] from 1 to 0
//!   over the first updates; trained by the same [`Trainer`] and loss heads, and exported as a
//!   TQ1_0 / TQ2_0 GGUF whose linears dequantize to exactly the weights the forward used at
//!   `λ = 0` ([`export_absmean`]: the same file from a model's own weights, no training).
//! - [`train`]: [`LoraModel`] (what training needs of a model: loss and gradients of a sample,
//!   the parameters, hooks around each update; implemented by [`Model`], [`GgufModel`] and
//!   [`TernaryModel`]), [`accumulate`] (forward, loss — cross-entropy or KL against given base
//!   log-probabilities — backward and accumulation for a micro-batch) and [`Trainer`]: steps of
//!   micro-batches drawn from a list of [`Chunk`]s in an order fixed by the seed, clipping,
//!   schedule and AdamW; returns the loss curve, bit-identical for the same seed, and resumes
//!   from a [`TrainerState`].
//!
//! Everything is generic over [`Float`] (`f32` to train, `f64` to check gradients) but
//! [`GgufModel`], which is f32 as crunch's kernels are.
//!
//! # Why a hand-written backward over crunch's own ops, not an autograd crate
//! candle-core's backprop (the obvious candidate) would need the frozen model as candle tensors,
//! that is an f32 (or f16) copy of every weight: its quantized matmul has no backward upstream
//! (huggingface/candle pull request 2729, still open when this was written, proposes one). Here the frozen weights stay in their GGUF type in the memory map and are multiplied
//! by crunch's own kernels (`crunch_model::matmul`, the tiled quantized products); the backward
//! pass needs only `dX = dY·W`, which reads `W` by rows, so a weight can be dequantized a panel
//! of rows at a time and never copied whole. The graph is fixed (one block type, repeated), so
//! writing its backward by hand is a few hundred lines, each op checked against finite
//! differences in f64; and only the LoRA factors need gradients, so nothing keeps or computes
//! gradients of the frozen weights, norms or embeddings. candle was not built and timed beside it:
//! it would first need that f32 copy of the model.
//!
//! [`ops::GgufWeight`] is that frozen weight (forward by crunch-model's `matmul`; backward by
//! blocks of dequantized columns for wide weights, panels of up to 256 dequantized rows summed
//! per worker for tall ones), tested against its dequantized matrix; the tiny [`Model`] of
//! the gradient checks uses dense weights; [`GgufModel`] is built on `GgufWeight`s; the trainer
//! runs on either through [`LoraModel`]. [`adapter`] moves LoRA pairs between a [`GgufModel`] and
//! llama.cpp's adapter files; [`checkpoint`] saves and restores a run.

#![forbid(unsafe_code)]

pub mod adapter;
pub mod block;
pub mod checkpoint;
pub mod float;
pub mod gguf_model;
pub mod gradcheck;
pub mod init;
pub mod loss;
pub mod model;
pub mod ops;
pub mod optim;
pub mod ternary;
pub mod train;

#[cfg(test)]
mod tests;

pub use block::{Block, BlockGrads, BlockShape, BlockTape, Proj};
pub use float::Float;
pub use gguf_model::{GgufModel, GgufModelTape};
pub use init::{init_from_factors, init_lora, LoraInit, SplitMix64};
pub use model::{Model, ModelConfig, Target};
pub use optim::{clip_grad_norm, AdamW, AdamWConfig, AdamWState, GradBuffer, Schedule};
pub use ternary::{export_absmean, Blend, TernaryExport, TernaryModel};
pub use train::{
    accumulate, Chunk, ChunkTarget, LoraModel, StepStats, TopKRows, TrainConfig, TrainError, Trainer, TrainerState,
};

#[cfg(test)]
pub(crate) mod testutil {
    /// `n` normal samples times `scale`, in f64.
    pub fn randn(rng: &mut crunch_testkit::Rng, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| rng.normal() as f64 * scale).collect()
    }
}
