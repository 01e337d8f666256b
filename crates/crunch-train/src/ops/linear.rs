//! A linear layer with a frozen weight and a trainable LoRA pair:
//! `y = x Wᵀ + bias + s · (x Aᵀ) Bᵀ`, `W` (`n_out × n_in`) frozen, `A` (`rank × n_in`) and
//! `B` (`n_out × rank`) trainable, the bias (Qwen2's Q/K/V) frozen.
//!
//! The frozen weight is behind [`Frozen`]: all the backward pass asks of it is `x Wᵀ` and
//! `dy W`, so a weight kept in its GGUF type only needs its rows dequantized a panel at a time.
//! The weight can instead be trained itself ([`SteWeight`], [`LinearWeight::Ste`]): the products
//! use an effective matrix derived from a latent one (ternary training: the latent's
//! ternarization, see [`crate::ternary`]) and the latent's gradient is the straight-through
//! estimate `dyᵀ x`.

use crate::float::Float;
use crate::ops::matmul::{matmul_nn, matmul_nn_acc, matmul_nt, matmul_nt_acc, matmul_tn};

/// A frozen weight matrix of `n_out` rows of `n_in`.
pub trait Frozen<T: Float>: Send + Sync {
    fn n_in(&self) -> usize;
    fn n_out(&self) -> usize;
    /// `y = x Wᵀ` for `n` rows of `x`.
    fn forward(&self, x: &[T], n: usize) -> Vec<T>;
    /// `dx = dy W` for `n` rows of `dy` (the input gradient; `W` itself gets none).
    fn backward(&self, dy: &[T], n: usize) -> Vec<T>;
    /// The whole matrix as `T`, row-major (`n_out × n_in`): where a trainable copy starts from.
    fn to_dense(&self) -> Vec<T>;
}

/// A dense row-major weight in `T` (the f64 reference, tests, small models).
#[derive(Clone, Debug)]
pub struct Dense<T> {
    pub n_in: usize,
    pub n_out: usize,
    pub w: Vec<T>,
}

impl<T: Float> Dense<T> {
    /// # Panics
    /// When `w` is not `n_out × n_in`.
    pub fn new(n_in: usize, n_out: usize, w: Vec<T>) -> Self {
        assert_eq!(w.len(), n_in * n_out, "weight of {} for {n_out} × {n_in}", w.len());
        Dense { n_in, n_out, w }
    }
}

impl<T: Float> Frozen<T> for Dense<T> {
    fn n_in(&self) -> usize {
        self.n_in
    }
    fn n_out(&self) -> usize {
        self.n_out
    }
    fn forward(&self, x: &[T], n: usize) -> Vec<T> {
        matmul_nt(x, n, &self.w, self.n_out)
    }
    fn backward(&self, dy: &[T], n: usize) -> Vec<T> {
        matmul_nn(dy, n, &self.w, self.n_out, self.n_in)
    }
    fn to_dense(&self) -> Vec<T> {
        self.w.clone()
    }
}

/// A weight trained through a straight-through estimator: the `latent` matrix the optimizer
/// updates and the `effective` matrix the products multiply by, a function of the latent that its
/// owner recomputes whenever the latent changes (ternary training: the blend of the latent and
/// its ternarization, [`crate::ternary::refresh`]). The backward pass treats that function as the
/// identity: the latent's gradient is `dyᵀ x`, the gradient of the effective matrix.
#[derive(Clone, Debug)]
pub struct SteWeight<T> {
    pub n_in: usize,
    pub n_out: usize,
    /// `n_out × n_in`, row-major.
    pub latent: Vec<T>,
    /// `n_out × n_in`, row-major: what [`Frozen::forward`] and [`Frozen::backward`] use.
    pub effective: Vec<T>,
}

impl<T: Float> SteWeight<T> {
    /// A weight whose latent and effective matrices both start as `w` (`n_out × n_in`).
    ///
    /// # Panics
    /// When `w` is not `n_out × n_in`.
    pub fn new(n_in: usize, n_out: usize, w: Vec<T>) -> Self {
        assert_eq!(w.len(), n_in * n_out, "weight of {} for {n_out} × {n_in}", w.len());
        SteWeight { n_in, n_out, effective: w.clone(), latent: w }
    }
}

/// The products of the effective matrix (the latent's gradient is [`Linear::backward`]'s).
impl<T: Float> Frozen<T> for SteWeight<T> {
    fn n_in(&self) -> usize {
        self.n_in
    }
    fn n_out(&self) -> usize {
        self.n_out
    }
    fn forward(&self, x: &[T], n: usize) -> Vec<T> {
        matmul_nt(x, n, &self.effective, self.n_out)
    }
    fn backward(&self, dy: &[T], n: usize) -> Vec<T> {
        matmul_nn(dy, n, &self.effective, self.n_out, self.n_in)
    }
    fn to_dense(&self) -> Vec<T> {
        self.effective.clone()
    }
}

/// The weight of a [`Linear`]: frozen, or trained through a straight-through estimator.
pub enum LinearWeight<T: Float> {
    Frozen(Box<dyn Frozen<T>>),
    Ste(SteWeight<T>),
}

impl<T: Float> LinearWeight<T> {
    /// The products `x Wᵀ` and `dy W` (by the effective matrix of an STE weight).
    pub fn product(&self) -> &dyn Frozen<T> {
        match self {
            LinearWeight::Frozen(w) => w.as_ref(),
            LinearWeight::Ste(w) => w,
        }
    }

    /// The STE weight, when it is one.
    pub fn ste(&self) -> Option<&SteWeight<T>> {
        match self {
            LinearWeight::Ste(w) => Some(w),
            LinearWeight::Frozen(_) => None,
        }
    }

    /// The STE weight, when it is one, mutably.
    pub fn ste_mut(&mut self) -> Option<&mut SteWeight<T>> {
        match self {
            LinearWeight::Ste(w) => Some(w),
            LinearWeight::Frozen(_) => None,
        }
    }
}

/// A LoRA pair applied as `s · (x Aᵀ) Bᵀ`.
#[derive(Clone, Debug)]
pub struct Lora<T> {
    pub rank: usize,
    /// `rank × n_in`.
    pub a: Vec<T>,
    /// `n_out × rank`.
    pub b: Vec<T>,
    /// `s` (llama.cpp: `alpha / rank` times the user scale).
    pub scale: T,
}

/// The gradients of a LoRA pair's `A` and `B` (same shapes).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraGrad<T> {
    pub a: Vec<T>,
    pub b: Vec<T>,
}

/// What [`Linear::backward`] needs from the forward pass besides the input: `s · x Aᵀ`.
#[derive(Clone, Debug, Default)]
pub struct LinearTape<T> {
    /// `s · x Aᵀ` (`n × rank`; empty without LoRA).
    pub xa: Vec<T>,
}

/// The gradients [`Linear::backward`] gives besides the input's: the STE weight's latent
/// (`dyᵀ x`, `n_out × n_in`) and the LoRA pair's, each when the layer has it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinearGrad<T> {
    pub weight: Option<Vec<T>>,
    pub lora: Option<LoraGrad<T>>,
}

/// A linear layer: a frozen or STE-trained weight, optional frozen bias, optional LoRA pair.
pub struct Linear<T: Float> {
    pub w: LinearWeight<T>,
    pub bias: Option<Vec<T>>,
    pub lora: Option<Lora<T>>,
}

impl<T: Float> Linear<T> {
    /// A layer on a frozen weight.
    ///
    /// # Panics
    /// When the bias or the LoRA factors do not fit the weight.
    pub fn new(w: Box<dyn Frozen<T>>, bias: Option<Vec<T>>, lora: Option<Lora<T>>) -> Self {
        Self::with_weight(LinearWeight::Frozen(w), bias, lora)
    }

    /// A layer on either kind of weight.
    ///
    /// # Panics
    /// When the bias or the LoRA factors do not fit the weight.
    pub fn with_weight(w: LinearWeight<T>, bias: Option<Vec<T>>, lora: Option<Lora<T>>) -> Self {
        let (n_in, n_out) = (w.product().n_in(), w.product().n_out());
        if let Some(b) = &bias {
            assert_eq!(b.len(), n_out, "bias");
        }
        if let Some(l) = &lora {
            assert_eq!(l.a.len(), l.rank * n_in, "LoRA A");
            assert_eq!(l.b.len(), n_out * l.rank, "LoRA B");
        }
        Linear { w, bias, lora }
    }

    pub fn n_in(&self) -> usize {
        self.w.product().n_in()
    }

    pub fn n_out(&self) -> usize {
        self.w.product().n_out()
    }

    /// `y = x Wᵀ + bias + s · (x Aᵀ) Bᵀ` for `n` rows of `x`, and the tape for [`Linear::backward`].
    pub fn forward(&self, x: &[T], n: usize) -> (Vec<T>, LinearTape<T>) {
        let mut y = self.w.product().forward(x, n);
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(b.len().max(1)) {
                for (o, &v) in row.iter_mut().zip(b) {
                    *o += v;
                }
            }
        }
        let mut tape = LinearTape::default();
        if let Some(l) = &self.lora {
            // s · (x Aᵀ), then y += (s x Aᵀ) Bᵀ straight into y.
            let mut xa = matmul_nt(x, n, &l.a, l.rank);
            xa.iter_mut().for_each(|v| *v *= l.scale);
            matmul_nt_acc(&mut y, &xa, n, &l.b, self.n_out());
            tape.xa = xa;
        }
        (y, tape)
    }

    /// The vector-Jacobian products of [`Linear::forward`]: `dx = dy W + s (dy B) A`, for an STE
    /// weight its latent's straight-through gradient `dW = dyᵀ x`, and for the LoRA pair
    /// `dB = s dyᵀ (x Aᵀ)`, `dA = s (dy B)ᵀ x`.
    pub fn backward(&self, x: &[T], tape: &LinearTape<T>, dy: &[T], n: usize) -> (Vec<T>, LinearGrad<T>) {
        let mut dx = self.w.product().backward(dy, n);
        let weight = self.w.ste().map(|w| matmul_tn(dy, x, n, w.n_out, w.n_in));
        let Some(l) = &self.lora else {
            return (dx, LinearGrad { weight, lora: None });
        };
        let (n_in, n_out, r) = (self.n_in(), self.n_out(), l.rank);
        // s · dy B: n × rank, scaled once; dx += (s dy B) A straight into dx.
        let mut dyb = matmul_nn(dy, n, &l.b, n_out, r);
        dyb.iter_mut().for_each(|v| *v *= l.scale);
        matmul_nn_acc(&mut dx, &dyb, n, &l.a, r, n_in);
        let da = matmul_tn(&dyb, x, n, r, n_in);
        // the tape holds s · x Aᵀ, so this is s dyᵀ (x Aᵀ)
        let db = matmul_tn(dy, &tape.xa, n, n_out, r);
        (dx, LinearGrad { weight, lora: Some(LoraGrad { a: da, b: db }) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{dot, numeric_gradient, relative_error};
    use crate::testutil::randn;

    fn layer(rng: &mut crunch_testkit::Rng, n_in: usize, n_out: usize, rank: usize, bias: bool) -> Linear<f64> {
        let w = Dense::new(n_in, n_out, randn(rng, n_in * n_out, 1.0));
        let bias = bias.then(|| randn(rng, n_out, 1.0));
        let lora = (rank > 0).then(|| Lora {
            rank,
            a: randn(rng, rank * n_in, 1.0),
            b: randn(rng, n_out * rank, 1.0),
            scale: 0.7,
        });
        Linear::new(Box::new(w), bias, lora)
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = crunch_testkit::Rng::new(9);
        for (n, n_in, n_out, rank, bias) in
            [(1, 3, 2, 1, false), (4, 8, 5, 2, true), (6, 5, 12, 4, false), (3, 4, 4, 0, true)]
        {
            let mut lin = layer(&mut rng, n_in, n_out, rank, bias);
            let x = randn(&mut rng, n * n_in, 1.0);
            let dy = randn(&mut rng, n * n_out, 1.0);
            let (_, tape) = lin.forward(&x, n);
            let (dx, g) = lin.backward(&x, &tape, &dy, n);
            let want = numeric_gradient(&x, 1e-5, |x| dot(&dy, &lin.forward(x, n).0));
            let e = relative_error(&dx, &want);
            assert!(e < 1e-6, "dx {n}x{n_in}->{n_out} r{rank}: {e:e}");
            assert!(g.weight.is_none(), "a frozen weight has no gradient");
            let Some(g) = g.lora else {
                assert_eq!(rank, 0);
                continue;
            };
            let a0 = lin.lora.as_ref().unwrap().a.clone();
            let want_a = numeric_gradient(&a0, 1e-5, |a| {
                lin.lora.as_mut().unwrap().a.copy_from_slice(a);
                dot(&dy, &lin.forward(&x, n).0)
            });
            lin.lora.as_mut().unwrap().a = a0;
            let b0 = lin.lora.as_ref().unwrap().b.clone();
            let want_b = numeric_gradient(&b0, 1e-5, |b| {
                lin.lora.as_mut().unwrap().b.copy_from_slice(b);
                dot(&dy, &lin.forward(&x, n).0)
            });
            let (ea, eb) = (relative_error(&g.a, &want_a), relative_error(&g.b, &want_b));
            assert!(ea < 1e-6 && eb < 1e-6, "dA {ea:e} dB {eb:e}");
        }
    }
    /// An STE weight's gradient is the gradient of its effective matrix (what the products use,
    /// here unlike the latent), alone and under a LoRA pair; `dx` goes through the effective
    /// matrix.
    #[test]
    fn ste_weight_gradient_is_the_effective_matrix_gradient() {
        let mut rng = crunch_testkit::Rng::new(10);
        for (n, n_in, n_out, rank) in [(3, 5, 4, 0), (6, 8, 3, 2)] {
            let mut w = SteWeight::new(n_in, n_out, randn(&mut rng, n_in * n_out, 1.0));
            w.effective = randn(&mut rng, n_in * n_out, 1.0);
            let lora = (rank > 0).then(|| Lora {
                rank,
                a: randn(&mut rng, rank * n_in, 1.0),
                b: randn(&mut rng, n_out * rank, 1.0),
                scale: 0.5,
            });
            let mut lin = Linear::with_weight(LinearWeight::Ste(w), None, lora);
            let x = randn(&mut rng, n * n_in, 1.0);
            let dy = randn(&mut rng, n * n_out, 1.0);
            let (_, tape) = lin.forward(&x, n);
            let (dx, g) = lin.backward(&x, &tape, &dy, n);
            assert_eq!(g.lora.is_some(), rank > 0);
            let want_dx = numeric_gradient(&x, 1e-5, |x| dot(&dy, &lin.forward(x, n).0));
            assert!(relative_error(&dx, &want_dx) < 1e-6);
            let eff = lin.w.ste().unwrap().effective.clone();
            let want = numeric_gradient(&eff, 1e-5, |e| {
                lin.w.ste_mut().unwrap().effective.copy_from_slice(e);
                dot(&dy, &lin.forward(&x, n).0)
            });
            let e = relative_error(g.weight.as_ref().unwrap(), &want);
            assert!(e < 1e-6, "dW {n}x{n_in}->{n_out} r{rank}: {e:e}");
        }
    }
}
