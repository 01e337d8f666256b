//! How much memory running a model takes with llama.cpp on the CPU, to pick a model for a machine.
//!
//! `total = weights (the file, memory-mapped and all touched) + KV cache (F16 K and V for every
//! layer and position) + compute buffers (activations of one micro-batch, attention scores, the
//! logits) + a fixed runtime overhead`. The compute and overhead terms are estimates; the weights
//! and KV cache terms are exact for llama.cpp's defaults (`-ctk f16 -ctv f16`, `-ub 512`).

use crate::error::{Error, Result};
use crunch_core::gguf::Metadata;
use serde::Serialize;

/// Fixed runtime overhead (process, ggml context, tokenizer tables).
pub const OVERHEAD_BYTES: u64 = 64 << 20;

/// The parts of the estimate.
#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct RamEstimate {
    pub weights: u64,
    pub kv_cache: u64,
    pub compute: u64,
    pub overhead: u64,
    pub total: u64,
    pub n_ctx: usize,
}

/// Memory needed besides the weights, for a context of `n_ctx` tokens.
///
/// # Errors
/// Metadata that does not describe a Llama-family model.
pub fn non_weight_bytes(meta: &Metadata, n_ctx: usize) -> Result<(u64, u64)> {
    let c = crunch_model::LlamaConfig::from_metadata(meta).map_err(|e| Error::field("fit.max_ram", e.to_string()))?;
    let kv = 2 * c.n_layer as u64 * n_ctx as u64 * c.n_embd_kv() as u64 * 2;
    let ub = n_ctx.min(512) as u64;
    let per_token = c.n_vocab + 4 * c.n_embd + 2 * c.n_ff + c.n_head * n_ctx;
    let compute = 4 * ub * per_token as u64;
    Ok((kv, compute))
}

/// The whole estimate for a file of `file_bytes`.
///
/// # Errors
/// See [`non_weight_bytes`].
pub fn estimate(meta: &Metadata, file_bytes: u64, n_ctx: usize) -> Result<RamEstimate> {
    let (kv_cache, compute) = non_weight_bytes(meta, n_ctx)?;
    Ok(RamEstimate {
        weights: file_bytes,
        kv_cache,
        compute,
        overhead: OVERHEAD_BYTES,
        total: file_bytes + kv_cache + compute + OVERHEAD_BYTES,
        n_ctx,
    })
}
