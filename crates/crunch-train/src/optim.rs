//! The optimizer side of LoRA training: AdamW, the learning-rate schedule, global-norm gradient
//! clipping and gradient accumulation over micro-batches.
//!
//! Parameters and gradients are lists of tensors (`Vec<T>` each), in the order of
//! [`Model::lora_params_mut`](crate::Model::lora_params_mut) and [`grads_to_tensors`]. The
//! optimizer state ([`AdamWState`]: step count and both moments) is serde, so a checkpoint can
//! hold it; [`AdamW::from_state`] checks it against the parameters it is resumed on.

use rayon::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::block::BlockGrads;
use crate::float::Float;

/// AdamW hyper-parameters (PyTorch's `AdamW`: decoupled weight decay, bias-corrected moments).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// The peak learning rate (the [`Schedule`] scales it per step).
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay: each step multiplies every parameter by `1 − lr · weight_decay`.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults but the weight decay (LoRA recipes use 0).
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// What an optimizer carries from step to step: the number of updates made and the first and
/// second moments of every parameter tensor (same shapes as the parameters).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "T: Serialize + DeserializeOwned")]
pub struct AdamWState<T> {
    pub step: u64,
    pub m: Vec<Vec<T>>,
    pub v: Vec<Vec<T>>,
}

/// A state that does not fit the parameters it is resumed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateMismatch(pub String);

impl std::fmt::Display for StateMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "optimizer state does not fit the parameters: {}", self.0)
    }
}

impl std::error::Error for StateMismatch {}

/// AdamW over a fixed list of parameter tensors.
#[derive(Clone, Debug)]
pub struct AdamW<T> {
    pub config: AdamWConfig,
    state: AdamWState<T>,
}

impl<T: Float> AdamW<T> {
    /// A fresh optimizer (zero moments, step 0) for tensors of `sizes`.
    pub fn new(config: AdamWConfig, sizes: &[usize]) -> Self {
        let zeros = || sizes.iter().map(|&n| vec![T::ZERO; n]).collect::<Vec<_>>();
        AdamW { config, state: AdamWState { step: 0, m: zeros(), v: zeros() } }
    }

    /// Resume from a saved state, checked against the parameter sizes.
    pub fn from_state(config: AdamWConfig, state: AdamWState<T>, sizes: &[usize]) -> Result<Self, StateMismatch> {
        for (name, mom) in [("m", &state.m), ("v", &state.v)] {
            if mom.len() != sizes.len() {
                return Err(StateMismatch(format!("{} tensors of {name} for {} parameters", mom.len(), sizes.len())));
            }
            for (i, (t, &n)) in mom.iter().zip(sizes).enumerate() {
                if t.len() != n {
                    return Err(StateMismatch(format!("{name}[{i}] has {} values for a parameter of {n}", t.len())));
                }
            }
        }
        Ok(AdamW { config, state })
    }

    pub fn state(&self) -> &AdamWState<T> {
        &self.state
    }

    /// The number of updates made so far.
    pub fn step_count(&self) -> u64 {
        self.state.step
    }

    /// One update at learning rate `lr` (the schedule's value for this step):
    /// `p ← p − lr·wd·p`, `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
    /// `p ← p − lr · m̂ / (√v̂ + ε)` with `m̂ = m / (1−β₁ᵗ)`, `v̂ = v / (1−β₂ᵗ)`, `t` the update's
    /// number from 1. Arithmetic in f64, stored in `T`. Tensors are updated in parallel (each
    /// element's update depends on that element only, so the result does not depend on the split).
    ///
    /// # Panics
    /// When `params` or `grads` do not have the sizes the optimizer was made for.
    pub fn step(&mut self, params: &mut [&mut Vec<T>], grads: &[Vec<T>], lr: f64) {
        let st = &mut self.state;
        assert_eq!(params.len(), st.m.len(), "parameter tensors");
        assert_eq!(grads.len(), st.m.len(), "gradient tensors");
        st.step += 1;
        let c = self.config;
        let t = st.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let decay = 1.0 - lr * c.weight_decay;
        for ((p, g), m) in params.iter().zip(grads).zip(&st.m) {
            assert_eq!(p.len(), m.len(), "parameter size");
            assert_eq!(g.len(), m.len(), "gradient size");
        }
        params.par_iter_mut().zip(grads).zip(&mut st.m).zip(&mut st.v).for_each(|(((p, g), m), v)| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let g = g.to_f64();
                let mn = c.beta1 * m.to_f64() + (1.0 - c.beta1) * g;
                let vn = c.beta2 * v.to_f64() + (1.0 - c.beta2) * g * g;
                *m = T::from_f64(mn);
                *v = T::from_f64(vn);
                let update = (mn / bc1) / ((vn / bc2).sqrt() + c.eps);
                *p = T::from_f64(p.to_f64() * decay - lr * update);
            }
        });
    }
}

/// The learning-rate schedule: a factor of the peak learning rate for each update.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The peak learning rate throughout.
    Constant,
    /// Linear warmup over `warmup` updates, then cosine decay to `floor` (a fraction of the peak)
    /// at update `total`, `floor` after.
    Cosine { warmup: u64, total: u64, floor: f64 },
    /// Linear warmup over `warmup` updates, then linear decay to `floor` at update `total`.
    Linear { warmup: u64, total: u64, floor: f64 },
}

impl Schedule {
    /// The factor of the peak learning rate for the update of index `step` (from 0). With
    /// `t = step + 1`, the update's number: `t / warmup` while `t ≤ warmup` (so the first update is
    /// not wasted at 0 and update `warmup` is at the peak), then the decay from 1 at
    /// `t = warmup` to `floor` at `t = total`.
    pub fn factor(&self, step: u64) -> f64 {
        let (warmup, total, floor, cosine) = match *self {
            Schedule::Constant => return 1.0,
            Schedule::Cosine { warmup, total, floor } => (warmup, total, floor, true),
            Schedule::Linear { warmup, total, floor } => (warmup, total, floor, false),
        };
        let t = step + 1;
        if t <= warmup {
            return t as f64 / warmup as f64;
        }
        if t >= total {
            return floor;
        }
        let p = (t - warmup) as f64 / (total - warmup) as f64;
        let shape = if cosine { 0.5 * (1.0 + (std::f64::consts::PI * p).cos()) } else { 1.0 - p };
        floor + (1.0 - floor) * shape
    }
}

/// The global L2 norm of all gradient tensors (accumulated in f64): each tensor's sum of squares
/// over eight interleaved partial sums (independent additions the compiler keeps in vector
/// registers), tensors in parallel, their sums added in tensor order — a fixed order, so the norm
/// is the same from run to run.
pub fn global_norm<T: Float>(grads: &[Vec<T>]) -> f64 {
    let per_tensor: Vec<f64> = grads
        .par_iter()
        .map(|g| {
            let mut acc = [0f64; 8];
            let mut chunks = g.chunks_exact(8);
            for c in &mut chunks {
                for (a, &v) in acc.iter_mut().zip(c) {
                    *a += v.to_f64() * v.to_f64();
                }
            }
            let tail: f64 = chunks.remainder().iter().map(|&v| v.to_f64() * v.to_f64()).sum();
            acc.iter().sum::<f64>() + tail
        })
        .collect();
    per_tensor.iter().sum::<f64>().sqrt()
}

/// Global-norm clipping: when the norm of all gradients exceeds `max_norm`, scale them all by
/// `max_norm / norm` (so the norm becomes `max_norm`); smaller gradients are left as they are.
/// Returns the norm before clipping.
pub fn clip_grad_norm<T: Float>(grads: &mut [Vec<T>], max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    if norm > max_norm && norm.is_finite() {
        let s = max_norm / norm;
        grads.par_iter_mut().for_each(|g| g.iter_mut().for_each(|g| *g = T::from_f64(g.to_f64() * s)));
    }
    norm
}

/// The model's gradients as a list of tensors, in [`Model::lora_params_mut`](crate::Model::lora_params_mut)
/// order (per linear the STE weight's, then `A` and `B` of its LoRA pair; linears in block order,
/// blocks in layer order).
pub fn grads_to_tensors<T: Float>(grads: Vec<BlockGrads<T>>) -> Vec<Vec<T>> {
    grads.into_iter().flat_map(BlockGrads::into_tensors).collect()
}

/// Gradient accumulation: per-sample gradients summed over the micro-batches of a step, then
/// averaged over the samples, so `k` micro-batches give the gradient of one batch of all their
/// samples (whatever the micro-batch sizes). Sums are kept in f64.
#[derive(Clone, Debug, Default)]
pub struct GradBuffer {
    sum: Vec<Vec<f64>>,
    loss_sum: f64,
    samples: usize,
}

impl GradBuffer {
    pub fn new() -> Self {
        GradBuffer::default()
    }

    /// Add one sample's loss and gradient tensors.
    ///
    /// # Panics
    /// When the tensors do not have the sizes of the ones added before.
    pub fn add<T: Float>(&mut self, loss: T, grads: &[Vec<T>]) {
        if self.samples == 0 && self.sum.is_empty() {
            self.sum = grads.iter().map(|g| vec![0.0; g.len()]).collect();
        }
        assert_eq!(grads.len(), self.sum.len(), "gradient tensors");
        for (s, g) in self.sum.iter().zip(grads) {
            assert_eq!(s.len(), g.len(), "gradient size");
        }
        // Element-wise, so tensors in parallel give the same sums.
        self.sum.par_iter_mut().zip(grads).for_each(|(s, g)| {
            for (s, &g) in s.iter_mut().zip(g) {
                *s += g.to_f64();
            }
        });
        self.loss_sum += loss.to_f64();
        self.samples += 1;
    }

    /// The number of samples added since the last [`GradBuffer::take_mean`].
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The mean loss and mean gradients of the samples added, and a reset buffer (the tensors'
    /// sizes are kept for the next step). `None` when nothing was added.
    pub fn take_mean<T: Float>(&mut self) -> Option<(f64, Vec<Vec<T>>)> {
        if self.samples == 0 {
            return None;
        }
        let inv = 1.0 / self.samples as f64;
        let grads = self
            .sum
            .par_iter_mut()
            .map(|s| {
                let g = s.iter().map(|&v| T::from_f64(v * inv)).collect();
                s.iter_mut().for_each(|v| *v = 0.0);
                g
            })
            .collect();
        let loss = self.loss_sum * inv;
        self.loss_sum = 0.0;
        self.samples = 0;
        Some((loss, grads))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two AdamW updates of a 3-vector, computed by hand.
    #[test]
    fn adamw_matches_a_hand_computed_two_step_update() {
        let c = AdamWConfig { lr: 0.1, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.01 };
        let mut p = vec![1.0f64, -2.0, 0.5];
        let g1 = vec![0.5f64, -1.0, 0.0];
        let g2 = vec![-0.25f64, 2.0, 1.0];
        let mut opt = AdamW::<f64>::new(c, &[3]);
        opt.step(&mut [&mut p], std::slice::from_ref(&g1), 0.1);
        // Step 1: m = 0.1 g, v = 0.01 g², m̂ = g, v̂ = g², update = g / (|g| + eps) = sign(g).
        let want1: Vec<f64> = [1.0f64, -2.0, 0.5]
            .iter()
            .zip(&g1)
            .map(|(&p0, &g)| p0 * (1.0 - 0.1 * 0.01) - 0.1 * g / (g.abs() + 1e-8))
            .collect();
        for (a, b) in p.iter().zip(&want1) {
            assert!((a - b).abs() < 1e-15, "{a} vs {b}");
        }
        for (a, b) in want1.iter().zip([0.899, -1.898, 0.4995]) {
            assert!((a - b).abs() < 1e-8, "{a} vs {b}");
        }
        // Step 2, lr 0.05: m = 0.9·0.1·g1 + 0.1·g2, v = 0.99·0.01·g1² + 0.01·g2².
        opt.step(&mut [&mut p], std::slice::from_ref(&g2), 0.05);
        let want2: Vec<f64> = (0..3)
            .map(|i| {
                let m = 0.09 * g1[i] + 0.1 * g2[i];
                let v = 0.0099 * g1[i] * g1[i] + 0.01 * g2[i] * g2[i];
                let (mh, vh) = (m / (1.0 - 0.81), v / (1.0 - 0.9801));
                want1[i] * (1.0 - 0.05 * 0.01) - 0.05 * mh / (vh.sqrt() + 1e-8)
            })
            .collect();
        for (a, b) in p.iter().zip(&want2) {
            assert!((a - b).abs() < 1e-14, "{a} vs {b}");
        }
        // Element 2 had g1 = 0: m̂ = 0.1/0.19, v̂ = 0.01/0.0199, so the update is
        // (0.1/0.19)/sqrt(0.01/0.0199) ≈ 0.74246.
        let u = (0.1 / 0.19) / ((0.01f64 / 0.0199).sqrt() + 1e-8);
        assert!((p[2] - (0.4995 * 0.9995 - 0.05 * u)).abs() < 1e-15);
        assert!((u - 0.742_462).abs() < 1e-5, "{u}");
        assert_eq!(opt.step_count(), 2);
        assert!((opt.state().m[0][1] - 0.11).abs() < 1e-15);

        // The state goes through serde and resumes to the same next update.
        // (serde_json may round the last bit of an f64: compare with a tolerance.)
        let json = serde_json::to_string(opt.state()).unwrap();
        let state: AdamWState<f64> = serde_json::from_str(&json).unwrap();
        assert_eq!(state.step, 2);
        for (a, b) in state.m.iter().chain(&state.v).flatten().zip(opt.state().m.iter().chain(&opt.state().v).flatten())
        {
            assert!((a - b).abs() <= 1e-15 * b.abs(), "{a} vs {b}");
        }
        let mut resumed = AdamW::from_state(c, state.clone(), &[3]).unwrap();
        let mut q = p.clone();
        opt.step(&mut [&mut p], std::slice::from_ref(&g1), 0.1);
        resumed.step(&mut [&mut q], std::slice::from_ref(&g1), 0.1);
        for (a, b) in p.iter().zip(&q) {
            assert!((a - b).abs() < 1e-14, "{a} vs {b}");
        }
        assert_eq!(resumed.step_count(), 3);
        let e = AdamW::from_state(c, state, &[4]).unwrap_err();
        assert!(e.to_string().contains("m[0] has 3 values for a parameter of 4"), "{e}");
    }

    #[test]
    fn clipping_scales_to_the_max_norm_and_leaves_small_gradients() {
        // Norm 13 (3-4-12 over two tensors).
        let mut g = vec![vec![3.0f64, 4.0], vec![12.0]];
        let norm = clip_grad_norm(&mut g, 6.5);
        assert_eq!(norm, 13.0);
        assert_eq!(g, vec![vec![1.5, 2.0], vec![6.0]]);
        assert!((global_norm(&g) - 6.5).abs() < 1e-15);
        let mut small = vec![vec![0.3f32, -0.4], vec![]];
        let before = small.clone();
        let norm = clip_grad_norm(&mut small, 1.0);
        assert!((norm - 0.5).abs() < 1e-7);
        assert_eq!(small, before);
        // Exactly at the limit: untouched.
        let mut edge = vec![vec![3.0f64, 4.0]];
        assert_eq!(clip_grad_norm(&mut edge, 5.0), 5.0);
        assert_eq!(edge, vec![vec![3.0, 4.0]]);
    }

    #[test]
    fn schedule_values_at_warmup_and_decay_ends() {
        for (s, mid) in [
            (Schedule::Cosine { warmup: 10, total: 110, floor: 0.1 }, 0.1 + 0.9 * 0.5),
            (Schedule::Linear { warmup: 10, total: 110, floor: 0.1 }, 0.1 + 0.9 * 0.5),
        ] {
            assert_eq!(s.factor(0), 0.1, "{s:?}: warmup start");
            assert_eq!(s.factor(4), 0.5, "{s:?}");
            assert_eq!(s.factor(9), 1.0, "{s:?}: warmup end");
            assert!((s.factor(59) - mid).abs() < 1e-12, "{s:?}: half way {}", s.factor(59));
            assert_eq!(s.factor(109), 0.1, "{s:?}: decay end");
            assert_eq!(s.factor(500), 0.1, "{s:?}: after the end");
            // Monotone decay.
            for t in 9..109 {
                assert!(s.factor(t + 1) <= s.factor(t), "{s:?} at {t}");
            }
        }
        let cos = Schedule::Cosine { warmup: 0, total: 4, floor: 0.0 };
        assert_eq!(cos.factor(0), 1.0 - 0.5 * (1.0 - (std::f64::consts::PI / 4.0).cos()));
        assert_eq!(cos.factor(3), 0.0);
        let lin = Schedule::Linear { warmup: 0, total: 4, floor: 0.0 };
        assert_eq!(lin.factor(0), 0.75);
        assert_eq!(lin.factor(1), 0.5);
        assert_eq!(Schedule::Constant.factor(12345), 1.0);
        // Serde, tagged by kind.
        let json = serde_json::to_string(&Schedule::Cosine { warmup: 5, total: 50, floor: 0.0 }).unwrap();
        assert_eq!(json, r#"{"kind":"cosine","warmup":5,"total":50,"floor":0.0}"#);
        assert_eq!(
            serde_json::from_str::<Schedule>(&json).unwrap(),
            Schedule::Cosine { warmup: 5, total: 50, floor: 0.0 }
        );
        assert_eq!(serde_json::from_str::<Schedule>(r#"{"kind":"constant"}"#).unwrap(), Schedule::Constant);
    }

    #[test]
    fn grad_buffer_averages_over_samples() {
        let mut b = GradBuffer::new();
        assert!(b.take_mean::<f64>().is_none());
        b.add(1.0f64, &[vec![1.0, 2.0], vec![3.0]]);
        b.add(2.0f64, &[vec![3.0, 2.0], vec![-3.0]]);
        assert_eq!(b.samples(), 2);
        let (loss, g) = b.take_mean::<f64>().unwrap();
        assert_eq!(loss, 1.5);
        assert_eq!(g, vec![vec![2.0, 2.0], vec![0.0]]);
        assert_eq!(b.samples(), 0);
        b.add(4.0f64, &[vec![1.0, 1.0], vec![1.0]]);
        assert_eq!(b.take_mean::<f64>().unwrap(), (4.0, vec![vec![1.0, 1.0], vec![1.0]]));
    }
}
