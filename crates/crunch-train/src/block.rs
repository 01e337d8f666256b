//! One Llama block (crunch-model's `llm_build_llama` layer): forward keeping what backward needs
//! ([`BlockTape`]), and backward giving the input gradient and the gradients of its seven
//! linears' trainable parameters (LoRA pairs, STE weights).
//!
//! ```text
//! h1 = rms_norm(x, attn_norm)        q, k, v = h1 Wq/Wk/Wvᵀ (+ bias, + LoRA)
//! q, k = rope(q), rope(k)            a = attention(q, k, v)
//! x1 = x + a Woᵀ                     h2 = rms_norm(x1, ffn_norm)
//! y = x1 + (silu(h2 Wgᵀ) ⊙ h2 Wuᵀ) Wdᵀ
//! ```

use crunch_model::rope::Rope;

use crate::float::Float;
use crate::ops::{
    add_assign, attention, attention_backward, rms_norm, rms_norm_apply, rms_norm_backward, rope, rope_backward,
    swiglu, swiglu_backward, AttnShape, Linear, LinearTape, LinearWeight, LoraGrad,
};

/// The seven linear layers of a block, in crunch-model's evaluation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proj {
    Q,
    K,
    V,
    Output,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::Output, Proj::Gate, Proj::Up, Proj::Down];

    /// The GGUF tensor name stem (`blk.N.{name}.weight`).
    pub fn name(self) -> &'static str {
        match self {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::Output => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        }
    }
}

/// Hyper-parameters a block needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockShape {
    pub n_embd: usize,
    pub n_ff: usize,
    pub attn: AttnShape,
    pub rms_eps: f32,
}

impl BlockShape {
    /// `(n_in, n_out)` of a linear.
    pub fn linear_shape(&self, p: Proj) -> (usize, usize) {
        let (e, f) = (self.n_embd, self.n_ff);
        let q = self.attn.n_head * self.attn.head_dim;
        let kv = self.attn.n_head_kv * self.attn.head_dim;
        match p {
            Proj::Q => (e, q),
            Proj::K | Proj::V => (e, kv),
            Proj::Output => (q, e),
            Proj::Gate | Proj::Up => (e, f),
            Proj::Down => (f, e),
        }
    }
}

/// A block's weights: frozen norms, seven linears (indexed by [`Proj`] in [`Proj::ALL`] order).
pub struct Block<T: Float> {
    pub shape: BlockShape,
    pub attn_norm: Vec<T>,
    pub ffn_norm: Vec<T>,
    pub linears: [Linear<T>; 7],
}

/// The activations [`Block::backward`] needs, kept by [`Block::forward`]. The two normalized
/// inputs (`h1`, `h2`) and the SwiGLU output are not kept: the backward pass recomputes them
/// (bit-identically) from `x`, `x1` and the row scales, and from `g` and `u`, a few element-wise
/// operations against about a quarter of the tape's memory (which is allocated, and page-faulted
/// in, on every step).
pub struct BlockTape<T> {
    n: usize,
    x: Vec<T>,
    rstd1: Vec<T>,
    /// After RoPE.
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    probs: Vec<T>,
    a: Vec<T>,
    x1: Vec<T>,
    rstd2: Vec<T>,
    g: Vec<T>,
    u: Vec<T>,
    lin: [LinearTape<T>; 7],
}

/// The gradients of a block's trainable parameters, indexed like [`Block::linears`]: each STE
/// weight's latent (`None` for a frozen weight) and each LoRA pair (`None` for a linear without
/// one).
#[derive(Clone, Debug, PartialEq)]
pub struct BlockGrads<T> {
    pub weight: [Option<Vec<T>>; 7],
    pub lora: [Option<LoraGrad<T>>; 7],
}

impl<T: Float> BlockGrads<T> {
    /// All gradients in [`Block::lora_params_mut`] order.
    pub fn flatten(&self) -> Vec<T> {
        self.tensors().into_iter().flatten().copied().collect()
    }

    /// The gradient tensors in [`Block::lora_params_mut`] order: per linear in [`Proj::ALL`]
    /// order, the STE weight's, then LoRA `A`, then `B`.
    pub fn tensors(&self) -> Vec<&Vec<T>> {
        let mut v = Vec::new();
        for (w, l) in self.weight.iter().zip(&self.lora) {
            v.extend(w.iter());
            if let Some(g) = l {
                v.push(&g.a);
                v.push(&g.b);
            }
        }
        v
    }

    /// [`BlockGrads::tensors`], owned.
    pub fn into_tensors(self) -> Vec<Vec<T>> {
        let mut v = Vec::new();
        for (w, l) in self.weight.into_iter().zip(self.lora) {
            v.extend(w);
            if let Some(g) = l {
                v.push(g.a);
                v.push(g.b);
            }
        }
        v
    }
}

impl<T: Float> Block<T> {
    /// # Panics
    /// When a linear or a norm does not fit `shape`.
    pub fn new(shape: BlockShape, attn_norm: Vec<T>, ffn_norm: Vec<T>, linears: [Linear<T>; 7]) -> Self {
        assert_eq!(attn_norm.len(), shape.n_embd, "attn_norm");
        assert_eq!(ffn_norm.len(), shape.n_embd, "ffn_norm");
        for (p, l) in Proj::ALL.iter().zip(&linears) {
            assert_eq!((l.n_in(), l.n_out()), shape.linear_shape(*p), "{}", p.name());
        }
        Block { shape, attn_norm, ffn_norm, linears }
    }

    fn lin(&self, p: Proj) -> &Linear<T> {
        &self.linears[p as usize]
    }

    /// The trainable parameters, linears in [`Proj::ALL`] order: each STE weight's latent, then
    /// `A` and `B` of each LoRA pair (so a model of frozen weights gives its LoRA factors only).
    pub fn lora_params_mut(&mut self) -> Vec<&mut Vec<T>> {
        let mut v = Vec::new();
        for l in self.linears.iter_mut() {
            if let LinearWeight::Ste(w) = &mut l.w {
                v.push(&mut w.latent);
            }
            if let Some(lo) = l.lora.as_mut() {
                v.push(&mut lo.a);
                v.push(&mut lo.b);
            }
        }
        v
    }

    /// The block on `n` rows of `x` (`n × n_embd`, positions `0..n`); `angles` from
    /// [`Rope::angles_rows`]`(0, n)`. Returns the output and the tape for [`Block::backward`].
    pub fn forward(&self, x: &[T], n: usize, rope_p: &Rope, angles: &[Vec<(f32, f32)>]) -> (Vec<T>, BlockTape<T>) {
        let s = &self.shape;
        let (q_row, kv_row) = (s.attn.n_head * s.attn.head_dim, s.attn.n_head_kv * s.attn.head_dim);
        let (h1, rstd1) = rms_norm(x, &self.attn_norm, s.rms_eps);
        let (mut q, tq) = self.lin(Proj::Q).forward(&h1, n);
        let (mut k, tk) = self.lin(Proj::K).forward(&h1, n);
        let (v, tv) = self.lin(Proj::V).forward(&h1, n);
        drop(h1);
        rope(&mut q, q_row, rope_p, angles);
        rope(&mut k, kv_row, rope_p, angles);
        let (a, probs) = attention(&q, &k, &v, n, s.attn);
        // The residual sums are formed in the branch's buffer (`o + x` is `x + o`, bit for bit).
        let (mut x1, to) = self.lin(Proj::Output).forward(&a, n);
        add_assign(&mut x1, x);
        let (h2, rstd2) = rms_norm(&x1, &self.ffn_norm, s.rms_eps);
        let (g, tg) = self.lin(Proj::Gate).forward(&h2, n);
        let (u, tu) = self.lin(Proj::Up).forward(&h2, n);
        drop(h2);
        let act = swiglu(&g, &u);
        let (mut y, td) = self.lin(Proj::Down).forward(&act, n);
        drop(act);
        add_assign(&mut y, &x1);
        let tape = BlockTape {
            n,
            x: x.to_vec(),
            rstd1,
            q,
            k,
            v,
            probs,
            a,
            x1,
            rstd2,
            g,
            u,
            lin: [tq, tk, tv, to, tg, tu, td],
        };
        (y, tape)
    }

    /// The backward pass from `dy` (the gradient of the block's output): the gradient of its
    /// input and the gradients of its linears' trainable parameters.
    pub fn backward(
        &self,
        t: &BlockTape<T>,
        dy: &[T],
        rope_p: &Rope,
        angles: &[Vec<(f32, f32)>],
    ) -> (Vec<T>, BlockGrads<T>) {
        let s = &self.shape;
        let n = t.n;
        let (q_row, kv_row) = (s.attn.n_head * s.attn.head_dim, s.attn.n_head_kv * s.attn.head_dim);
        let mut lora: [Option<LoraGrad<T>>; 7] = Default::default();
        let mut weight: [Option<Vec<T>>; 7] = Default::default();
        let mut back = |p: Proj, x: &[T], dy: &[T]| -> Vec<T> {
            let (dx, g) = self.lin(p).backward(x, &t.lin[p as usize], dy, n);
            (weight[p as usize], lora[p as usize]) = (g.weight, g.lora);
            dx
        };
        // FFN half: y = x1 + down(swiglu(gate(h2), up(h2))).
        let mut dx1 = dy.to_vec();
        let act = swiglu(&t.g, &t.u);
        let dact = back(Proj::Down, &act, dy);
        drop(act);
        let (dg, du) = swiglu_backward(&t.g, &t.u, &dact);
        let h2 = rms_norm_apply(&t.x1, &self.ffn_norm, &t.rstd2);
        let mut dh2 = back(Proj::Gate, &h2, &dg);
        add_assign(&mut dh2, &back(Proj::Up, &h2, &du));
        drop(h2);
        add_assign(&mut dx1, &rms_norm_backward(&t.x1, &self.ffn_norm, &t.rstd2, &dh2));
        // Attention half: x1 = x + output(attention(rope(q(h1)), rope(k(h1)), v(h1))).
        let da = back(Proj::Output, &t.a, &dx1);
        let (mut dq, mut dk, dv) = attention_backward(&t.q, &t.k, &t.v, &t.probs, &da, n, s.attn);
        rope_backward(&mut dq, q_row, rope_p, angles);
        rope_backward(&mut dk, kv_row, rope_p, angles);
        let h1 = rms_norm_apply(&t.x, &self.attn_norm, &t.rstd1);
        let mut dh1 = back(Proj::Q, &h1, &dq);
        add_assign(&mut dh1, &back(Proj::K, &h1, &dk));
        add_assign(&mut dh1, &back(Proj::V, &h1, &dv));
        let mut dx = dx1;
        add_assign(&mut dx, &rms_norm_backward(&t.x, &self.attn_norm, &t.rstd1, &dh1));
        (dx, BlockGrads { weight, lora })
    }
}
