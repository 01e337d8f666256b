//! The training loop on any [`LoraModel`] (the tiny [`Model`] or a [`GgufModel`]): [`accumulate`]
//! (forward, loss, backward and the gradient added to a [`GradBuffer`] for each sample of a
//! micro-batch), [`Trainer::step`] (micro-batches, mean, clipping, schedule, AdamW) and
//! [`Trainer::run`] (a fixed number of steps over a list of chunks, drawn in an order fixed by the
//! seed; returns the loss curve).

use serde::{Deserialize, Serialize};

use crate::block::BlockGrads;
use crate::float::Float;
use crate::gguf_model::GgufModel;
use crate::init::SplitMix64;
use crate::loss::TopK;
use crate::model::{Model, Target};
use crate::optim::{
    clip_grad_norm, grads_to_tensors, AdamW, AdamWConfig, AdamWState, GradBuffer, Schedule, StateMismatch,
};
use crunch_model::ModelError;

/// One training sample: a context's tokens and what its logits are scored against.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk<T> {
    pub tokens: Vec<u32>,
    pub target: ChunkTarget<T>,
}

/// What a [`Chunk`]'s logits are scored against.
#[derive(Clone, Debug, PartialEq)]
pub enum ChunkTarget<T> {
    /// The chunk's own next tokens (fine-tuning).
    NextToken,
    /// The base model's log-probabilities, `tokens.len() × n_vocab` (distillation, exact).
    Full(Vec<T>),
    /// The base model's top-k view of the first positions (distillation as `crunch distill`
    /// runs it; see [`crate::loss::kl_top_k`]).
    TopK(TopKRows),
}

/// Owned top-k rows (the arrays of [`TopK`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TopKRows {
    pub k: usize,
    pub ids: Vec<u32>,
    pub logp: Vec<f32>,
    pub log_rest: Vec<f32>,
}

impl TopKRows {
    pub fn view(&self) -> TopK<'_> {
        TopK { k: self.k, ids: &self.ids, logp: &self.logp, log_rest: &self.log_rest }
    }
}

impl<T: Float> Chunk<T> {
    /// A fine-tuning sample.
    pub fn next_token(tokens: Vec<u32>) -> Self {
        Chunk { tokens, target: ChunkTarget::NextToken }
    }

    pub fn target(&self) -> Target<'_, T> {
        match &self.target {
            ChunkTarget::NextToken => Target::NextToken,
            ChunkTarget::Full(b) => Target::Distill(b),
            ChunkTarget::TopK(t) => Target::DistillTopK(t.view()),
        }
    }
}

/// Why a training step did not happen.
#[derive(Debug)]
pub enum TrainError {
    /// The caller's stop check fired (the step was abandoned; nothing changed).
    Stopped,
    /// The loss or the gradient was not finite (the update was not applied).
    NonFinite { step: u64, loss: f64, grad_norm: f64 },
    /// The model could not run a sample.
    Model(ModelError),
    /// An unusable configuration or chunk list.
    Config(String),
}

impl std::fmt::Display for TrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrainError::Stopped => write!(f, "stopped"),
            TrainError::NonFinite { step, loss, grad_norm } => write!(
                f,
                "step {step}: loss {loss}, gradient norm {grad_norm} (not finite); nothing was updated — \
                 try a lower learning rate or gradient clipping"
            ),
            TrainError::Model(e) => write!(f, "training sample: {e}"),
            TrainError::Config(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for TrainError {}

impl From<ModelError> for TrainError {
    fn from(e: ModelError) -> Self {
        TrainError::Model(e)
    }
}

/// What the trainer needs of a model: the loss and gradients of a sample, and the parameters to
/// update (in the order of the gradients, [`BlockGrads::flatten`] order per layer). The tiny
/// dense [`Model`] and the GGUF-backed [`GgufModel`] are both trained through it (their LoRA
/// factors), and [`crate::ternary::TernaryModel`] (the latent weights of its linears).
pub trait LoraModel<T: Float> {
    /// The loss of `tokens` against `target` and the gradients of every block.
    ///
    /// # Errors
    /// Input the model cannot run (a token outside the vocabulary, a context too long).
    fn loss_and_grad(&self, tokens: &[u32], target: Target<'_, T>) -> Result<(T, Vec<BlockGrads<T>>), ModelError>;
    /// Every trainable parameter (LoRA factors; an STE weight's latent).
    fn lora_params_mut(&mut self) -> Vec<&mut Vec<T>>;
    /// Called by [`Trainer::step`] before the samples of update `step` (from 0) run, for a model
    /// whose forward pass depends on the update (the ternary blend). Default: nothing.
    fn begin_step(&mut self, step: u64) {
        let _ = step;
    }
    /// Called by [`Trainer::step`] once the optimizer has changed the parameters in update
    /// `step` (not when the step failed), for a model that derives something from them (the
    /// ternary model's effective weights). Default: nothing.
    fn end_step(&mut self, step: u64) {
        let _ = step;
    }
}

impl<T: Float> LoraModel<T> for Model<T> {
    fn loss_and_grad(&self, tokens: &[u32], target: Target<'_, T>) -> Result<(T, Vec<BlockGrads<T>>), ModelError> {
        Ok(Model::loss_and_grad(self, tokens, target))
    }
    fn lora_params_mut(&mut self) -> Vec<&mut Vec<T>> {
        Model::lora_params_mut(self)
    }
}

impl LoraModel<f32> for GgufModel {
    fn loss_and_grad(
        &self,
        tokens: &[u32],
        target: Target<'_, f32>,
    ) -> Result<(f32, Vec<BlockGrads<f32>>), ModelError> {
        GgufModel::loss_and_grad(self, tokens, target)
    }
    fn lora_params_mut(&mut self) -> Vec<&mut Vec<f32>> {
        GgufModel::lora_params_mut(self)
    }
}

/// Forward, loss and backward of every sample of a micro-batch, each sample's loss and LoRA
/// gradient added to `buf`; `stop` is asked before each sample. Returns the micro-batch's mean
/// loss (0 for an empty batch).
///
/// # Errors
/// [`TrainError::Stopped`] when `stop` says so, [`TrainError::Model`] when a sample cannot run
/// (`buf` then holds part of the micro-batch: the caller discards it).
pub fn accumulate<T: Float, M: LoraModel<T> + ?Sized>(
    model: &M,
    batch: &[&Chunk<T>],
    buf: &mut GradBuffer,
    stop: &dyn Fn() -> bool,
) -> Result<f64, TrainError> {
    let mut sum = 0.0;
    for c in batch {
        if stop() {
            return Err(TrainError::Stopped);
        }
        let (loss, grads) = model.loss_and_grad(&c.tokens, c.target())?;
        buf.add(loss, &grads_to_tensors(grads));
        sum += loss.to_f64();
    }
    Ok(if batch.is_empty() { 0.0 } else { sum / batch.len() as f64 })
}

/// Hyper-parameters of a training run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub adamw: AdamWConfig,
    pub schedule: Schedule,
    /// Optimizer updates.
    pub steps: u64,
    /// Samples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per update (their gradients averaged).
    pub grad_accum: usize,
    /// Global-norm clipping (`None`: off).
    pub max_grad_norm: Option<f64>,
    /// The order chunks are drawn in.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            adamw: AdamWConfig::default(),
            schedule: Schedule::Constant,
            steps: 100,
            batch_size: 1,
            grad_accum: 1,
            max_grad_norm: Some(1.0),
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// Refuse settings no run can use: the offending field's name (`batch_size`, `lr`, …) and
    /// why.
    ///
    /// # Errors
    /// A zero batch size or accumulation, a learning rate or clipping norm that is not a
    /// positive finite number, betas outside `[0, 1)`, a negative weight decay.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let a = &self.adamw;
        if self.batch_size == 0 {
            return Err(("batch_size", "must be at least 1".into()));
        }
        if self.grad_accum == 0 {
            return Err(("grad_accum", "must be at least 1".into()));
        }
        if !(a.lr.is_finite() && a.lr > 0.0) {
            return Err(("lr", format!("{} must be a positive number", a.lr)));
        }
        if !((0.0..1.0).contains(&a.beta1) && (0.0..1.0).contains(&a.beta2)) {
            return Err(("betas", format!("({}, {}) must be in [0, 1)", a.beta1, a.beta2)));
        }
        if !(a.eps.is_finite() && a.eps > 0.0) {
            return Err(("eps", format!("{} must be a positive number", a.eps)));
        }
        if !(a.weight_decay.is_finite() && a.weight_decay >= 0.0) {
            return Err(("weight_decay", format!("{} must be 0 or more", a.weight_decay)));
        }
        if let Some(m) = self.max_grad_norm {
            if !(m.is_finite() && m > 0.0) {
                return Err(("max_grad_norm", format!("{m} must be a positive number")));
            }
        }
        Ok(())
    }
}

/// What one update did.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// The update's index (from 0).
    pub step: u64,
    /// Mean loss of the step's samples, before the update.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate used.
    pub lr: f64,
}

/// What a checkpoint needs to resume a [`Trainer`] exactly: the optimizer state and where the
/// chunk order stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "T: Serialize + serde::de::DeserializeOwned")]
pub struct TrainerState<T> {
    pub optim: AdamWState<T>,
    pub rng: SplitMix64,
    pub order: Vec<usize>,
    pub next: usize,
}

/// Runs updates of a model's LoRA factors.
#[derive(Clone, Debug)]
pub struct Trainer<T> {
    pub config: TrainConfig,
    optim: AdamW<T>,
    buf: GradBuffer,
    rng: SplitMix64,
    /// Chunk indices of the current epoch and how many were used.
    order: Vec<usize>,
    next: usize,
}

impl<T: Float> Trainer<T> {
    /// A trainer for `model`'s current LoRA parameters (a fresh AdamW state).
    pub fn new<M: LoraModel<T> + ?Sized>(config: TrainConfig, model: &mut M) -> Self {
        let sizes: Vec<usize> = model.lora_params_mut().iter().map(|p| p.len()).collect();
        Trainer {
            config,
            optim: AdamW::new(config.adamw, &sizes),
            buf: GradBuffer::new(),
            rng: SplitMix64::new(config.seed),
            order: Vec::new(),
            next: 0,
        }
    }

    /// Resume from a checkpoint's state (checked against `model`'s LoRA parameters).
    pub fn resume<M: LoraModel<T> + ?Sized>(
        config: TrainConfig,
        state: TrainerState<T>,
        model: &mut M,
    ) -> Result<Self, StateMismatch> {
        let sizes: Vec<usize> = model.lora_params_mut().iter().map(|p| p.len()).collect();
        if state.next > state.order.len() {
            return Err(StateMismatch(format!("position {} in an order of {}", state.next, state.order.len())));
        }
        Ok(Trainer {
            config,
            optim: AdamW::from_state(config.adamw, state.optim, &sizes)?,
            buf: GradBuffer::new(),
            rng: state.rng,
            order: state.order,
            next: state.next,
        })
    }

    /// The state to checkpoint (taken between steps).
    pub fn state(&self) -> TrainerState<T> {
        TrainerState {
            optim: self.optim.state().clone(),
            rng: self.rng.clone(),
            order: self.order.clone(),
            next: self.next,
        }
    }

    pub fn optimizer(&self) -> &AdamW<T> {
        &self.optim
    }

    /// One update from `micro_batches` (gradients averaged over all their samples, clipped,
    /// AdamW at the schedule's learning rate), between the model's [`LoraModel::begin_step`] and
    /// [`LoraModel::end_step`]. `stop` is asked before every sample.
    ///
    /// # Errors
    /// [`TrainError::Stopped`] (nothing changed), [`TrainError::NonFinite`] (the update was not
    /// applied), [`TrainError::Model`], [`TrainError::Config`] when the micro-batches hold no
    /// sample.
    pub fn step<M: LoraModel<T> + ?Sized>(
        &mut self,
        model: &mut M,
        micro_batches: &[Vec<&Chunk<T>>],
        stop: &dyn Fn() -> bool,
    ) -> Result<StepStats, TrainError> {
        model.begin_step(self.optim.step_count());
        for mb in micro_batches {
            if let Err(e) = accumulate(&*model, mb, &mut self.buf, stop) {
                self.buf = GradBuffer::new();
                return Err(e);
            }
        }
        let (loss, mut grads) =
            self.buf.take_mean::<T>().ok_or_else(|| TrainError::Config("a training step without samples".into()))?;
        let step = self.optim.step_count();
        let grad_norm = match self.config.max_grad_norm {
            Some(max) => clip_grad_norm(&mut grads, max),
            None => crate::optim::global_norm(&grads),
        };
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Err(TrainError::NonFinite { step, loss, grad_norm });
        }
        let lr = self.config.adamw.lr * self.config.schedule.factor(step);
        self.optim.step(&mut model.lora_params_mut(), &grads, lr);
        model.end_step(step);
        Ok(StepStats { step, loss, grad_norm, lr })
    }

    /// The next `n` chunk indices: epochs of `n_chunks`, each in a fresh order from the seed.
    fn draw(&mut self, n: usize, n_chunks: usize) -> Vec<usize> {
        (0..n)
            .map(|_| {
                if self.next >= self.order.len() {
                    self.order = (0..n_chunks).collect();
                    self.rng.shuffle(&mut self.order);
                    self.next = 0;
                }
                self.next += 1;
                self.order[self.next - 1]
            })
            .collect()
    }

    /// Whether `config.steps` updates have been made.
    pub fn finished(&self) -> bool {
        self.optim.step_count() >= self.config.steps
    }

    /// The run's next update: `grad_accum` micro-batches of `batch_size` chunks drawn from
    /// `chunks` (every chunk once per epoch, in an order fixed by the seed), then
    /// [`Trainer::step`]. When the step fails the draw is undone too, so [`Trainer::state`] is
    /// still the state after the last update (what a checkpoint keeps).
    ///
    /// # Errors
    /// As [`Trainer::step`]; [`TrainError::Config`] for an empty chunk list or a bad configuration.
    pub fn next_step<M: LoraModel<T> + ?Sized>(
        &mut self,
        model: &mut M,
        chunks: &[Chunk<T>],
        stop: &dyn Fn() -> bool,
    ) -> Result<StepStats, TrainError> {
        if chunks.is_empty() {
            return Err(TrainError::Config("no training chunks".into()));
        }
        self.config.check().map_err(|(f, why)| TrainError::Config(format!("{f} {why}")))?;
        let (bs, accum) = (self.config.batch_size, self.config.grad_accum);
        let saved = (self.rng.clone(), self.order.clone(), self.next);
        let idx = self.draw(bs * accum, chunks.len());
        let mbs: Vec<Vec<&Chunk<T>>> = idx.chunks(bs).map(|c| c.iter().map(|&i| &chunks[i]).collect()).collect();
        let r = self.step(model, &mbs, stop);
        if r.is_err() {
            (self.rng, self.order, self.next) = saved;
        }
        r
    }

    /// `config.steps` updates (less those already made: a resumed trainer finishes the run),
    /// each by [`Trainer::next_step`]. Returns the statistics of every update (the loss curve).
    /// The same model, chunks and configuration give a bit-identical curve.
    ///
    /// # Errors
    /// As [`Trainer::next_step`].
    pub fn run<M: LoraModel<T> + ?Sized>(
        &mut self,
        model: &mut M,
        chunks: &[Chunk<T>],
    ) -> Result<Vec<StepStats>, TrainError> {
        let mut curve = Vec::new();
        while !self.finished() {
            curve.push(self.next_step(model, chunks, &|| false)?);
        }
        Ok(curve)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{central_differences, relative_error};
    use crate::init::{init_lora, LoraInit};
    use crate::loss::log_softmax;
    use crate::model::ModelConfig;
    use crunch_model::config::RopeMode;

    fn config() -> ModelConfig {
        ModelConfig {
            n_vocab: 11,
            n_embd: 16,
            n_ff: 24,
            n_head: 2,
            n_head_kv: 1,
            n_layer: 2,
            n_rot: 8,
            rope_mode: RopeMode::Normal,
            rope_freq_base: 10000.0,
            rms_eps: 1e-5,
            qkv_bias: false,
            rank: 0,
            lora_scale: 1.0,
        }
    }

    /// A tiny random model with PEFT-initialised LoRA of rank 4.
    fn model<T: Float>(seed: u64) -> Model<T> {
        let mut rng = crunch_testkit::Rng::new(seed);
        let mut m = Model::random(&config(), &mut || rng.normal() as f64);
        init_lora(&mut m, 4, 2.0, LoraInit::Peft { seed: seed + 1 });
        m
    }

    fn random_tokens(seed: u64, n: usize) -> Vec<u32> {
        let mut rng = crunch_testkit::Rng::new(seed);
        (0..n).map(|_| (rng.next_u64() % config().n_vocab as u64) as u32).collect()
    }

    /// `n` chunks of `len` tokens cut from one random sequence.
    fn lm_chunks<T: Float>(seed: u64, n: usize, len: usize) -> Vec<Chunk<T>> {
        random_tokens(seed, n * len).chunks(len).map(|t| Chunk::next_token(t.to_vec())).collect()
    }

    /// The chunks with a teacher's log-probabilities as targets.
    fn distill_chunks<T: Float>(teacher: &Model<T>, chunks: &[Chunk<T>]) -> Vec<Chunk<T>> {
        let v = teacher.config.n_vocab;
        chunks
            .iter()
            .map(|c| {
                let logits = teacher.forward(&c.tokens).0;
                Chunk {
                    tokens: c.tokens.clone(),
                    target: ChunkTarget::Full(logits.chunks(v).flat_map(log_softmax).collect()),
                }
            })
            .collect()
    }

    fn mean_loss<T: Float>(m: &Model<T>, chunks: &[Chunk<T>]) -> f64 {
        chunks.iter().map(|c| m.loss(&c.tokens, c.target()).to_f64()).sum::<f64>() / chunks.len() as f64
    }

    fn train_config(seed: u64, steps: u64) -> TrainConfig {
        TrainConfig {
            adamw: AdamWConfig { lr: 2e-2, ..AdamWConfig::default() },
            schedule: Schedule::Cosine { warmup: 5, total: steps, floor: 0.1 },
            steps,
            batch_size: 2,
            grad_accum: 2,
            max_grad_norm: Some(1.0),
            seed,
        }
    }

    /// k micro-batches accumulated give the gradient of one batch of all their samples (the
    /// gradient of the samples' mean loss), and the same update.
    #[test]
    fn accumulation_equals_one_batch() {
        let mut m = model::<f64>(1);
        // B ≠ 0, so that every gradient path is live.
        for p in m.lora_params_mut() {
            for (i, v) in p.iter_mut().enumerate() {
                *v += 0.05 * ((i % 7) as f64 - 3.0);
            }
        }
        let lm = lm_chunks::<f64>(2, 6, 7);
        let teacher = model::<f64>(3);
        let mut chunks = lm[..3].to_vec();
        chunks.extend(distill_chunks(&teacher, &lm[3..]));
        let all: Vec<&Chunk<f64>> = chunks.iter().collect();

        let mut one = GradBuffer::new();
        let l1 = accumulate(&m, &all, &mut one, &|| false).unwrap();
        let (loss1, g1) = one.take_mean::<f64>().unwrap();
        assert_eq!(l1, loss1);
        let mut acc = GradBuffer::new();
        let mut start = 0;
        for size in [1, 3, 2] {
            accumulate(&m, &all[start..start + size], &mut acc, &|| false).unwrap();
            start += size;
        }
        assert_eq!(acc.samples(), 6);
        let (loss_k, gk) = acc.take_mean::<f64>().unwrap();
        assert!((loss_k - loss1).abs() < 1e-14);
        let flat = |g: &[Vec<f64>]| g.iter().flatten().copied().collect::<Vec<f64>>();
        let e = relative_error(&flat(&gk), &flat(&g1));
        assert!(e < 1e-14, "{e:e}");
        assert!((loss1 - mean_loss(&m, &chunks)).abs() < 1e-12);

        // The averaged gradient is the gradient of the mean loss (checked on a few tensors).
        for pi in [0, 1, 13, 27] {
            let len = m.lora_params_mut()[pi].len();
            let want = central_differences(len, 1e-5, |i, d| {
                m.lora_params_mut()[pi][i] += d;
                let v = mean_loss(&m, &chunks);
                m.lora_params_mut()[pi][i] -= d;
                v
            });
            let e = relative_error(&g1[pi], &want);
            assert!(e < 1e-6, "tensor {pi}: {e:e}");
        }

        // And the trainer's update is the same from three micro-batches as from one batch.
        let mut m2 = model::<f64>(1);
        for (p, q) in m2.lora_params_mut().into_iter().zip(m.lora_params_mut()) {
            p.clone_from(q);
        }
        let cfg = train_config(0, 10);
        let s1 = Trainer::new(cfg, &mut m).step(&mut m, std::slice::from_ref(&all), &|| false).unwrap();
        let s2 = Trainer::new(cfg, &mut m2)
            .step(&mut m2, &[all[..1].to_vec(), all[1..4].to_vec(), all[4..].to_vec()], &|| false)
            .unwrap();
        assert!((s1.loss - s2.loss).abs() < 1e-14 && (s1.grad_norm - s2.grad_norm).abs() < 1e-12);
        let (p1, p2): (Vec<f64>, Vec<f64>) = (
            m.lora_params_mut().into_iter().flat_map(|p| p.clone()).collect(),
            m2.lora_params_mut().into_iter().flat_map(|p| p.clone()).collect(),
        );
        assert!(relative_error(&p1, &p2) < 1e-12);
    }

    #[test]
    fn training_lowers_cross_entropy() {
        let mut m = model::<f32>(10);
        let chunks = lm_chunks::<f32>(11, 4, 16);
        let before = mean_loss(&m, &chunks);
        let curve = Trainer::new(train_config(5, 50), &mut m).run(&mut m, &chunks).unwrap();
        let after = mean_loss(&m, &chunks);
        eprintln!(
            "cross-entropy {before:.4} -> {after:.4}; curve {:?}",
            curve.iter().map(|s| s.loss as f32).collect::<Vec<_>>()
        );
        assert_eq!(curve.len(), 50);
        assert!((curve[0].loss - before).abs() < 0.5);
        assert!(after < 0.7 * before, "cross-entropy {before} -> {after}");
        assert!(curve.iter().all(|s| s.loss.is_finite() && s.grad_norm.is_finite()));
        assert!((curve[4].lr - 2e-2).abs() < 1e-12 && (curve[49].lr - 2e-3).abs() < 1e-12);
    }

    #[test]
    fn distillation_lowers_kl_to_a_teacher() {
        let mut m = model::<f32>(20);
        let teacher = model::<f32>(21);
        let chunks = distill_chunks(&teacher, &lm_chunks::<f32>(22, 4, 16));
        let before = mean_loss(&m, &chunks);
        let curve = Trainer::new(train_config(6, 50), &mut m).run(&mut m, &chunks).unwrap();
        let after = mean_loss(&m, &chunks);
        eprintln!("KL {before:.4} -> {after:.4}; curve {:?}", curve.iter().map(|s| s.loss as f32).collect::<Vec<_>>());
        assert!(before > 0.1);
        assert!(after < 0.7 * before, "KL {before} -> {after}");
    }

    #[test]
    fn same_seed_gives_a_bit_identical_loss_curve() {
        let run = |seed: u64| {
            let mut m = model::<f32>(30);
            let chunks = lm_chunks::<f32>(31, 5, 12);
            let mut cfg = train_config(seed, 12);
            cfg.batch_size = 1;
            cfg.grad_accum = 3;
            let curve = Trainer::new(cfg, &mut m).run(&mut m, &chunks).unwrap();
            let params: Vec<u32> = m.lora_params_mut().into_iter().flatten().map(|v| v.to_bits()).collect();
            (curve.iter().map(|s| (s.loss.to_bits(), s.grad_norm.to_bits())).collect::<Vec<_>>(), params)
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a.0, run(8).0, "another seed draws the chunks in another order");
    }

    /// A run stopped after some steps and resumed from its state ends where the straight run does.
    #[test]
    fn resumed_run_matches_a_straight_run() {
        let chunks = lm_chunks::<f32>(41, 5, 10);
        let cfg = train_config(4, 9);
        let mut m = model::<f32>(40);
        let straight = Trainer::new(cfg, &mut m).run(&mut m, &chunks).unwrap();
        let want: Vec<f32> = m.lora_params_mut().into_iter().flat_map(|p| p.clone()).collect();

        let mut m2 = model::<f32>(40);
        // Stopped after 4 steps; the state a checkpoint would hold taken there.
        let mut t = Trainer::new(TrainConfig { steps: 4, ..cfg }, &mut m2);
        let first = t.run(&mut m2, &chunks).unwrap();
        let state = t.state();
        assert_eq!(state.optim.step, 4);
        let mut resumed = Trainer::resume(cfg, state.clone(), &mut m2).unwrap();
        let rest = resumed.run(&mut m2, &chunks).unwrap();
        assert_eq!(first.len() + rest.len(), straight.len());
        let got: Vec<StepStats> = first.into_iter().chain(rest).collect();
        assert_eq!(got, straight);
        let params: Vec<f32> = m2.lora_params_mut().into_iter().flat_map(|p| p.clone()).collect();
        assert_eq!(params, want);
        // A state for another model is refused.
        let mut other = model::<f32>(40);
        init_lora(&mut other, 2, 1.0, LoraInit::Peft { seed: 0 });
        assert!(Trainer::resume(cfg, state, &mut other).is_err());
    }

    #[test]
    fn train_config_round_trips_through_serde() {
        let c = train_config(3, 40);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<TrainConfig>(&json).unwrap(), c);
        let d: TrainConfig = serde_json::from_str(r#"{"steps": 7, "adamw": {"lr": 0.5}}"#).unwrap();
        assert_eq!((d.steps, d.adamw.lr, d.adamw.beta2), (7, 0.5, 0.999));
        assert!(serde_json::from_str::<TrainConfig>(r#"{"stepz": 7}"#).is_err());
    }
}
