//! A whole Llama-family model on dense weights: token embedding → blocks → final RMSNorm →
//! output projection → loss, with the LoRA gradient of every block. Small enough for the f64
//! finite-difference checks; the real models ([`crate::GgufModel`]) keep their frozen weights in
//! their GGUF types behind `Frozen` and run the same blocks.

use crunch_model::config::RopeMode;
use crunch_model::rope::Rope;

use crate::block::{Block, BlockGrads, BlockShape, BlockTape, Proj};
use crate::float::Float;
use crate::loss::{causal_lm, kl_divergence, kl_top_k, TopK};
use crate::ops::{rms_norm, rms_norm_backward, AttnShape, Dense, Frozen, Linear, Lora};

/// Hyper-parameters of a [`Model`] built by [`Model::random`].
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_layer: usize,
    /// Dimensions of a head RoPE rotates (even, at most `n_embd / n_head`).
    pub n_rot: usize,
    pub rope_mode: RopeMode,
    pub rope_freq_base: f32,
    pub rms_eps: f32,
    /// Biases on Q, K and V (Qwen2).
    pub qkv_bias: bool,
    /// LoRA rank on every block linear (0: none).
    pub rank: usize,
    /// The factor `s` of `s · B A`.
    pub lora_scale: f64,
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    pub fn block_shape(&self) -> BlockShape {
        BlockShape {
            n_embd: self.n_embd,
            n_ff: self.n_ff,
            attn: AttnShape { n_head: self.n_head, n_head_kv: self.n_head_kv, head_dim: self.head_dim() },
            rms_eps: self.rms_eps,
        }
    }

    pub fn rope(&self) -> Rope {
        Rope {
            mode: self.rope_mode,
            n_rot: self.n_rot,
            head_dim: self.head_dim(),
            freq_base: self.rope_freq_base,
            freq_factors: None,
        }
    }
}

/// What the loss compares the logits with.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a, T> {
    /// Causal LM: position `t` predicts the input's token `t + 1`.
    NextToken,
    /// `KL(p_base ‖ p_model)` against the base model's log-probabilities (`n × n_vocab`).
    Distill(&'a [T]),
    /// `KL(p_base ‖ p_model)` against the base's top-k view of the first positions
    /// ([`crate::loss::kl_top_k`]).
    DistillTopK(TopK<'a>),
}

/// Embedding, blocks, final norm and output projection; everything frozen but the LoRA factors.
pub struct Model<T: Float> {
    pub config: ModelConfig,
    /// `n_vocab × n_embd`.
    pub tok_embd: Vec<T>,
    pub blocks: Vec<Block<T>>,
    pub output_norm: Vec<T>,
    /// `n_vocab` rows of `n_embd`.
    pub output: Dense<T>,
    pub rope: Rope,
}

/// What the backward of the blocks, final norm and output projection needs from their forward
/// (shared by [`Model`] and [`crate::GgufModel`]).
pub struct ModelTape<T> {
    n: usize,
    blocks: Vec<BlockTape<T>>,
    /// The last block's output.
    x: Vec<T>,
    rstd: Vec<T>,
    angles: Vec<Vec<(f32, f32)>>,
}

/// The part every model shares after embedding: the blocks, the final RMSNorm and the output
/// projection, forward (keeping the tape) from embedded rows `x` of `n` tokens.
pub(crate) fn trunk_forward<T: Float>(
    blocks: &[Block<T>],
    rope: &Rope,
    output_norm: &[T],
    rms_eps: f32,
    output: &dyn Frozen<T>,
    mut x: Vec<T>,
    n: usize,
) -> (Vec<T>, ModelTape<T>) {
    let angles = rope.angles_rows(0, n);
    let mut tapes = Vec::with_capacity(blocks.len());
    for b in blocks {
        let (y, tape) = b.forward(&x, n, rope, &angles);
        tapes.push(tape);
        x = y;
    }
    let (h, rstd) = rms_norm(&x, output_norm, rms_eps);
    let logits = output.forward(&h, n);
    (logits, ModelTape { n, blocks: tapes, x, rstd, angles })
}

/// [`trunk_forward`]'s backward from the gradient of the logits: every block's LoRA gradients
/// (layer order).
pub(crate) fn trunk_backward<T: Float>(
    blocks: &[Block<T>],
    rope: &Rope,
    output_norm: &[T],
    output: &dyn Frozen<T>,
    tape: &ModelTape<T>,
    dlogits: &[T],
) -> Vec<BlockGrads<T>> {
    let dh = output.backward(dlogits, tape.n);
    let mut dx = rms_norm_backward(&tape.x, output_norm, &tape.rstd, &dh);
    let mut grads = Vec::with_capacity(blocks.len());
    for (b, t) in blocks.iter().zip(&tape.blocks).rev() {
        let (d, g) = b.backward(t, &dx, rope, &tape.angles);
        grads.push(g);
        dx = d;
    }
    grads.reverse();
    grads
}

/// The loss of `logits` (rows of `n_vocab`) against `target`, and its gradient w.r.t. the logits.
pub(crate) fn loss_of<T: Float>(n_vocab: usize, logits: &[T], tokens: &[u32], target: Target<'_, T>) -> (T, Vec<T>) {
    match target {
        Target::NextToken => causal_lm(logits, n_vocab, tokens),
        Target::Distill(base) => kl_divergence(logits, n_vocab, base),
        Target::DistillTopK(top) => kl_top_k(logits, n_vocab, top),
    }
}

/// Draw from `normal` in a fixed order: the same sampler gives the same weights in f32 and f64.
fn draw<T: Float>(normal: &mut dyn FnMut() -> f64, len: usize, scale: f64) -> Vec<T> {
    (0..len).map(|_| T::from_f64(normal() * scale)).collect()
}

/// A block of `shape` with random weights: linears `N(0, 1/n_in)`, norms `1 + N(0, 0.01)`,
/// LoRA `A ~ N(0, 1/n_in)` and `B ~ N(0, 1/rank)` (`B` is not zero, so that a gradient check
/// sees every path; training starts from `B = 0` or from a low-rank correction).
pub fn random_block<T: Float>(
    shape: BlockShape,
    rank: usize,
    lora_scale: f64,
    qkv_bias: bool,
    normal: &mut dyn FnMut() -> f64,
) -> Block<T> {
    let attn_norm = (0..shape.n_embd).map(|_| T::from_f64(1.0 + 0.1 * normal())).collect();
    let ffn_norm = (0..shape.n_embd).map(|_| T::from_f64(1.0 + 0.1 * normal())).collect();
    let linears = Proj::ALL.map(|p| {
        let (n_in, n_out) = shape.linear_shape(p);
        let w: Box<dyn Frozen<T>> =
            Box::new(Dense::new(n_in, n_out, draw(normal, n_in * n_out, (n_in as f64).powf(-0.5))));
        let bias = (qkv_bias && matches!(p, Proj::Q | Proj::K | Proj::V)).then(|| draw(normal, n_out, 0.1));
        let lora = (rank > 0).then(|| Lora {
            rank,
            a: draw(normal, rank * n_in, (n_in as f64).powf(-0.5)),
            b: draw(normal, n_out * rank, (rank as f64).powf(-0.5)),
            scale: T::from_f64(lora_scale),
        });
        Linear::new(w, bias, lora)
    });
    Block::new(shape, attn_norm, ffn_norm, linears)
}

impl<T: Float> Model<T> {
    /// A model of `config` with weights drawn from `normal` (a standard normal sampler), in a
    /// fixed order, so one seed gives the same model in f32 and f64.
    pub fn random(config: &ModelConfig, normal: &mut dyn FnMut() -> f64) -> Self {
        let (v, e) = (config.n_vocab, config.n_embd);
        let tok_embd = draw(normal, v * e, 1.0);
        let blocks = (0..config.n_layer)
            .map(|_| random_block(config.block_shape(), config.rank, config.lora_scale, config.qkv_bias, normal))
            .collect();
        let output_norm = (0..e).map(|_| T::from_f64(1.0 + 0.1 * normal())).collect();
        let output = Dense::new(e, v, draw(normal, v * e, (e as f64).powf(-0.5)));
        Model { config: config.clone(), tok_embd, blocks, output_norm, output, rope: config.rope() }
    }

    /// The logits of every position (`tokens.len() × n_vocab`) and the tape for [`Model::backward`].
    ///
    /// # Panics
    /// On a token outside the vocabulary.
    pub fn forward(&self, tokens: &[u32]) -> (Vec<T>, ModelTape<T>) {
        let (n, e) = (tokens.len(), self.config.n_embd);
        let mut x = Vec::with_capacity(n * e);
        for &t in tokens {
            let t = t as usize;
            assert!(t < self.config.n_vocab, "token {t} outside a vocabulary of {}", self.config.n_vocab);
            x.extend_from_slice(&self.tok_embd[t * e..(t + 1) * e]);
        }
        trunk_forward(&self.blocks, &self.rope, &self.output_norm, self.config.rms_eps, &self.output, x, n)
    }

    /// The loss of `logits` against `target`, and its gradient with respect to the logits.
    pub fn loss_of(&self, logits: &[T], tokens: &[u32], target: Target<'_, T>) -> (T, Vec<T>) {
        loss_of(self.config.n_vocab, logits, tokens, target)
    }

    /// The loss only (what finite differences evaluate).
    pub fn loss(&self, tokens: &[u32], target: Target<'_, T>) -> T {
        let (logits, _) = self.forward(tokens);
        self.loss_of(&logits, tokens, target).0
    }

    /// Backward from the gradient of the logits: the LoRA gradients of every block.
    pub fn backward(&self, tape: &ModelTape<T>, dlogits: &[T]) -> Vec<BlockGrads<T>> {
        trunk_backward(&self.blocks, &self.rope, &self.output_norm, &self.output, tape, dlogits)
    }

    /// The loss and the LoRA gradients of every block (layer order).
    pub fn loss_and_grad(&self, tokens: &[u32], target: Target<'_, T>) -> (T, Vec<BlockGrads<T>>) {
        let (logits, tape) = self.forward(tokens);
        let (loss, dlogits) = self.loss_of(&logits, tokens, target);
        (loss, self.backward(&tape, &dlogits))
    }

    /// Every trainable LoRA factor, layer by layer in [`Block::lora_params_mut`] order (the
    /// order of [`BlockGrads::flatten`]).
    pub fn lora_params_mut(&mut self) -> Vec<&mut Vec<T>> {
        self.blocks.iter_mut().flat_map(|b| b.lora_params_mut()).collect()
    }
}
