//! A linear layer with a frozen weight and a trainable LoRA pair:
//! `y = x Wᵀ + bias + s · (x Aᵀ) Bᵀ`, `W` (`n_out × n_in`) frozen, `A` (`rank × n_in`) and
//! `B` (`n_out × rank`) trainable, the bias (Qwen2's Q/K/V) frozen.
//!
//! The frozen weight is behind [`Frozen`]: all the backward pass asks of it is `x Wᵀ` and
//! `dy W`, so a weight kept in its GGUF type only needs its rows dequantized a panel at a time.

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

/// A linear layer: frozen weight, optional frozen bias, optional LoRA pair.
pub struct Linear<T: Float> {
    pub w: Box<dyn Frozen<T>>,
    pub bias: Option<Vec<T>>,
    pub lora: Option<Lora<T>>,
}

impl<T: Float> Linear<T> {
    /// # Panics
    /// When the bias or the LoRA factors do not fit the weight.
    pub fn new(w: Box<dyn Frozen<T>>, bias: Option<Vec<T>>, lora: Option<Lora<T>>) -> Self {
        if let Some(b) = &bias {
            assert_eq!(b.len(), w.n_out(), "bias");
        }
        if let Some(l) = &lora {
            assert_eq!(l.a.len(), l.rank * w.n_in(), "LoRA A");
            assert_eq!(l.b.len(), w.n_out() * l.rank, "LoRA B");
        }
        Linear { w, bias, lora }
    }

    pub fn n_in(&self) -> usize {
        self.w.n_in()
    }

    pub fn n_out(&self) -> usize {
        self.w.n_out()
    }

    /// `y = x Wᵀ + bias + s · (x Aᵀ) Bᵀ` for `n` rows of `x`, and the tape for [`Linear::backward`].
    pub fn forward(&self, x: &[T], n: usize) -> (Vec<T>, LinearTape<T>) {
        let mut y = self.w.forward(x, n);
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

    /// The vector-Jacobian products of [`Linear::forward`]: `dx = dy W + s (dy B) A`, and for the
    /// LoRA pair `dB = s dyᵀ (x Aᵀ)`, `dA = s (dy B)ᵀ x`.
    pub fn backward(&self, x: &[T], tape: &LinearTape<T>, dy: &[T], n: usize) -> (Vec<T>, Option<LoraGrad<T>>) {
        let mut dx = self.w.backward(dy, n);
        let Some(l) = &self.lora else {
            return (dx, None);
        };
        let (n_in, n_out, r) = (self.n_in(), self.n_out(), l.rank);
        // s · dy B: n × rank, scaled once; dx += (s dy B) A straight into dx.
        let mut dyb = matmul_nn(dy, n, &l.b, n_out, r);
        dyb.iter_mut().for_each(|v| *v *= l.scale);
        matmul_nn_acc(&mut dx, &dyb, n, &l.a, r, n_in);
        let da = matmul_tn(&dyb, x, n, r, n_in);
        // the tape holds s · x Aᵀ, so this is s dyᵀ (x Aᵀ)
        let db = matmul_tn(dy, &tape.xa, n, n_out, r);
        (dx, Some(LoraGrad { a: da, b: db }))
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
            let Some(g) = g else {
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
}
