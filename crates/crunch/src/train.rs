//! Training LoRA adapters on the CPU, on the quantized GGUF the user will run (its weights stay
//! frozen in their stored types): `distill` trains the adapter so the quantized model matches a
//! base model's token distributions (KL on the base's top-k log-probabilities, computed once and
//! kept as `eval compare` keeps them), optionally starting from a `crunch lowrank` correction;
//! `finetune` is causal-LM fine-tuning on text (QLoRA-style on a quantized model). The engine —
//! forward, hand-written backward, AdamW, schedules, checkpoints — is crunch-train's.
//!
//! A run checkpoints every few steps (and when it is cancelled) so that `resume` continues it
//! exactly; the adapter is written atomically at the end, as llama.cpp's `--lora` loads it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crunch_calib::text::{self, ChunkOptions, TextSource};
use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;
use crunch_model::kld::BaseLogits;
use crunch_model::matmul::MatmulMode;
use crunch_model::perplexity::{eval_chunk, ChunkLayout};
use crunch_model::tokenizer::Tokenizer;
use crunch_model::{LoraSpec, ModelError};
use crunch_train::{
    checkpoint, Chunk, ChunkTarget, GgufModel, LoraModel, StepStats, TopKRows, TrainConfig, TrainError, Trainer,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::calibrate::calib_err;
use crate::error::{Error, Result};
use crate::eval::{self, model_err};
use crate::progress::{Cancel, Progress};

/// Where distillation's base distributions come from.
#[derive(Clone, Debug, PartialEq)]
pub enum BaseSource {
    /// Run this model (GGUF) on the training chunks.
    Model(PathBuf),
    /// Top-k log-probabilities saved by an earlier run (`save_base`), for the same chunks.
    Logits(PathBuf),
}

/// What the adapter is trained to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Objective {
    /// Match the base's distributions: mean top-k KL(base ‖ model) per position.
    Distill { base: BaseSource, top_k: usize, save_base: Option<PathBuf> },
    /// Predict the text's next tokens: mean cross-entropy.
    Finetune,
}

impl Objective {
    pub fn name(&self) -> &'static str {
        match self {
            Objective::Distill { .. } => "distill",
            Objective::Finetune => "finetune",
        }
    }
}

/// Everything a training run needs but the model and the output.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub objective: Objective,
    pub text: TextSource,
    /// Training chunks (context, how many, chunks skipped first, shuffled selection).
    pub chunks: ChunkOptions,
    /// Chunks after the training ones kept out of training and scored every `eval_every` steps.
    pub holdout: usize,
    pub eval_every: u64,
    /// Rank of every fresh pair.
    pub rank: usize,
    /// LoRA alpha: each fresh pair is applied with `alpha / rank`.
    pub alpha: f32,
    /// Only block linears whose GGUF name matches (default: all seven of every block).
    pub tensors: Option<regex::Regex>,
    /// Start from this adapter (a `crunch lowrank` correction): its pairs replace the fresh ones.
    pub init: Option<LoraSpec>,
    pub config: TrainConfig,
    /// Type of the written adapter's tensors.
    pub adapter_type: GgmlType,
    pub checkpoint: PathBuf,
    /// Save a checkpoint every this many updates (and when cancelled, and at the end).
    pub checkpoint_every: u64,
    /// Continue from `checkpoint` when it exists (it must be of the same run).
    pub resume: bool,
    /// Frozen products with dequantized weights instead of llama.cpp's quantized activations.
    pub exact: bool,
    /// Write the loss curve as an SVG plot here.
    pub plot: Option<PathBuf>,
    /// The job field messages name (`distill`, `finetune`).
    pub field: String,
}

/// What a training run did.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub objective: String,
    pub output: String,
    pub sha256: String,
    pub adapter_bytes: u64,
    /// LoRA pairs trained and their parameters.
    pub pairs: usize,
    pub trainable_params: usize,
    pub train_chunks: usize,
    pub holdout_chunks: usize,
    pub ctx: usize,
    pub steps: u64,
    /// The step a resumed run started at.
    pub resumed_at: Option<u64>,
    /// Every update (loss before it, gradient norm, learning rate).
    pub curve: Vec<StepStats>,
    /// `(updates made, mean held-out loss)`.
    pub heldout: Vec<(u64, f64)>,
    /// Training tokens per second of this session's updates (held-out scoring excluded).
    pub tokens_per_second: f64,
    pub seconds: f64,
    pub peak_rss_bytes: Option<u64>,
    pub checkpoint: String,
    /// Base log-probabilities saved (`path`, sha256).
    pub saved_base: Option<(String, String)>,
}

fn field(o: &TrainOptions, name: &str) -> String {
    format!("{}.{name}", o.field)
}

/// Refuse options no run can use; each message names the field.
///
/// # Errors
/// Rank 0, alpha not positive, a bad training configuration, zero steps, top-k 0.
pub fn check(o: &TrainOptions) -> Result<()> {
    if o.rank == 0 {
        return Err(Error::field(field(o, "rank"), "must be at least 1 (a rank-0 adapter changes nothing)"));
    }
    if !(o.alpha.is_finite() && o.alpha > 0.0) {
        return Err(Error::field(field(o, "alpha"), format!("{} must be a positive number", o.alpha)));
    }
    if o.config.steps == 0 {
        return Err(Error::field(field(o, "steps"), "must be at least 1"));
    }
    o.config.check().map_err(|(name, why)| {
        // The job's names of the configuration's fields.
        let name = match name {
            "batch_size" => "batch",
            "max_grad_norm" => "clip",
            n => n,
        };
        Error::field(field(o, name), why)
    })?;
    if o.checkpoint_every == 0 {
        return Err(Error::field(field(o, "checkpoint_every"), "must be at least 1"));
    }
    if o.eval_every == 0 {
        return Err(Error::field(field(o, "eval_every"), "must be at least 1"));
    }
    if let Objective::Distill { top_k: 0, .. } = o.objective {
        return Err(Error::field(field(o, "top_k"), "must be at least 1"));
    }
    if !crunch_model::lora::WRITE_TYPES.contains(&o.adapter_type) {
        return Err(Error::field(field(o, "adapter_type"), "adapters are written as f32, f16, bf16 or q8_0"));
    }
    Ok(())
}

/// The base's top-k view of every position of `chunks` (BOS already in place), from a model run
/// or a saved file (checked to be of the same chunks).
fn base_view(
    o: &TrainOptions,
    source: &BaseSource,
    top_k: usize,
    model: &GgufModel,
    chunks: &[Vec<u32>],
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<BaseLogits> {
    let n_ctx = o.chunks.n_ctx;
    let tokens: Vec<u32> = chunks.concat();
    let layout = ChunkLayout { n_ctx, n_chunks: chunks.len(), first: 0 };
    match source {
        BaseSource::Logits(p) => {
            let b = eval::load_base_logits(p)?;
            let why = if b.n_vocab != model.config.n_vocab {
                Some(format!("a vocabulary of {}, the model has {}", b.n_vocab, model.config.n_vocab))
            } else if b.layout() != layout || b.tokens != tokens {
                Some(format!(
                    "{} chunks of {} from position {}, not this run's {} chunks of {n_ctx} (other text or options?)",
                    b.n_chunks,
                    b.n_ctx,
                    b.first,
                    chunks.len()
                ))
            } else if b.top_k != top_k {
                Some(format!("top-{} log-probabilities, this run asks for top-{top_k}", b.top_k))
            } else {
                None
            };
            match why {
                Some(w) => Err(Error::field(field(o, "base_logits"), format!("{}: {w}", p.display()))),
                None => Ok(b),
            }
        }
        BaseSource::Model(p) => {
            let loaded = eval::open_model(p, false)?;
            let base = &loaded.model;
            if base.config.n_vocab != model.config.n_vocab {
                return Err(Error::field(
                    field(o, "base"),
                    format!(
                        "{} has a vocabulary of {}, the model {}: not the same tokenizer",
                        p.display(),
                        base.config.n_vocab,
                        model.config.n_vocab
                    ),
                ));
            }
            base.check_context(n_ctx).map_err(model_err(p.display()))?;
            let mut out = BaseLogits::new(p.display().to_string(), base.config.n_vocab, &layout, top_k);
            out.tokens = tokens;
            let mut cache = base.new_cache(n_ctx);
            progress.start("base model", chunks.len() as u64);
            for i in 0..chunks.len() {
                if cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let logits =
                    eval_chunk(base, &mut cache, &layout, &out.tokens, i, None).map_err(model_err(p.display()))?;
                let targets = layout.targets(&out.tokens, i).to_vec();
                out.push_rows(&logits, &targets);
                progress.advance(i as u64 + 1, &format!("[{}/{}] base chunk", i + 1, chunks.len()));
            }
            progress.finish("base log-probabilities ready");
            Ok(out)
        }
    }
}

/// Chunk `i`'s training target from the base's view.
fn top_k_rows(base: &BaseLogits, i: usize) -> TopKRows {
    let per = base.n_ctx - 1;
    let mut r = TopKRows { k: base.top_k, ids: Vec::new(), logp: Vec::new(), log_rest: Vec::with_capacity(per) };
    for p in i * per..(i + 1) * per {
        let row = base.row(p);
        r.ids.extend_from_slice(row.ids);
        r.logp.extend_from_slice(row.logp);
        r.log_rest.push(row.log_rest);
    }
    r
}

/// Mean loss of the held-out chunks.
pub(crate) fn heldout_loss(model: &GgufModel, chunks: &[Chunk<f32>], cancel: &Cancel) -> Result<f64> {
    let mut sum = 0.0;
    for c in chunks {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        sum += model.loss(&c.tokens, c.target()).map_err(model_err("held-out chunk"))? as f64;
    }
    Ok(sum / chunks.len().max(1) as f64)
}

/// Add a file's sha256 (its `.sha256` sidecar when current, as run records read it).
fn hash_file(h: &mut Sha256, p: &Path) -> Result<()> {
    h.update(crate::job::record::file_sha256(None, p)?.as_bytes());
    Ok(())
}

/// What identifies a run for its checkpoint: the model, the chunks and their targets, the pairs,
/// the seed and the batch shape (the order chunks are drawn in). Not the number of steps, the
/// learning rate, the schedule or the clipping: a resumed run may extend or retune them.
fn fingerprint(o: &TrainOptions, model_path: &Path, chunks: &[Chunk<f32>]) -> Result<String> {
    let mut h = Sha256::new();
    h.update(o.objective.name().as_bytes());
    hash_file(&mut h, model_path)?;
    for c in chunks {
        for t in &c.tokens {
            h.update(t.to_le_bytes());
        }
        if let ChunkTarget::TopK(r) = &c.target {
            for (&id, &lp) in r.ids.iter().zip(&r.logp) {
                h.update(id.to_le_bytes());
                h.update(lp.to_le_bytes());
            }
            r.log_rest.iter().for_each(|v| h.update(v.to_le_bytes()));
        }
    }
    if let Some(init) = &o.init {
        hash_file(&mut h, &init.path)?;
        h.update(init.scale.to_le_bytes());
    }
    let c = &o.config;
    let settings = serde_json::json!({
        "rank": o.rank, "alpha": o.alpha, "tensors": o.tensors.as_ref().map(|r| r.as_str().to_string()),
        "exact": o.exact, "seed": c.seed, "batch_size": c.batch_size, "grad_accum": c.grad_accum,
    });
    h.update(settings.to_string().as_bytes());
    Ok(crunch_core::output::hex(&h.finalize()))
}

fn eta(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// The training chunks and the held-out ones after them, with their targets.
pub(crate) struct Prepared {
    pub chunks: Vec<Chunk<f32>>,
    /// The first `n_train` chunks are trained on, the rest held out.
    pub n_train: usize,
    /// Base log-probabilities saved (`path`, sha256).
    pub saved_base: Option<(String, String)>,
}

/// Cut the text into chunks and build their targets (next tokens, or the base's top-k
/// log-probabilities, computed once or read back).
///
/// # Errors
/// A context longer than the model's, top-k beyond the vocabulary, too little text, the base's
/// errors; [`Error::Cancelled`].
pub(crate) fn prepare(
    model_path: &Path,
    file: &GgufFile,
    model: &GgufModel,
    o: &TrainOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Prepared> {
    let n_ctx = o.chunks.n_ctx;
    if n_ctx > model.config.n_ctx_train {
        return Err(Error::field(
            field(o, "ctx"),
            format!("{n_ctx} is larger than the model's training context of {}", model.config.n_ctx_train),
        ));
    }
    if let Objective::Distill { top_k, .. } = o.objective {
        if top_k > model.config.n_vocab {
            return Err(Error::field(
                field(o, "top_k"),
                format!("{top_k} is larger than the vocabulary of {}", model.config.n_vocab),
            ));
        }
    }

    // The text, cut into training and held-out chunks.
    let tok = Tokenizer::from_gguf(file)
        .map_err(ModelError::from)
        .map_err(model_err(format!("{}: tokenizer", model_path.display())))?;
    let tokens = text::tokenize(&o.text, &tok).map_err(calib_err)?;
    let bos = if tok.add_bos() { tok.bos() } else { None };
    let want = o.chunks.n_chunks.map(|n| n + o.holdout);
    let cut = text::chunk(&tokens, bos, &o.text.describe(), ChunkOptions { n_chunks: want, ..o.chunks })
        .map_err(|e| Error::field(field(o, "text"), e.to_string()))?;
    if cut.chunks.len() <= o.holdout {
        return Err(Error::field(
            field(o, "text"),
            format!(
                "{} has {} tokens: {} chunks of {n_ctx}, not enough for training chunks and {} held out",
                o.text.describe(),
                tokens.len(),
                cut.chunks.len(),
                o.holdout
            ),
        ));
    }
    let n_train = cut.chunks.len() - o.holdout;

    // Targets.
    let mut saved_base = None;
    let chunks: Vec<Chunk<f32>> = match &o.objective {
        Objective::Finetune => cut.chunks.iter().map(|c| Chunk::next_token(c.clone())).collect(),
        Objective::Distill { base, top_k, save_base } => {
            let view = base_view(o, base, *top_k, model, &cut.chunks, progress, cancel)?;
            if let Some(dest) = save_base {
                let sha = eval::save_base_logits(&view, dest)?;
                saved_base = Some((dest.display().to_string(), sha));
            }
            cut.chunks
                .iter()
                .enumerate()
                .map(|(i, c)| Chunk { tokens: c.clone(), target: ChunkTarget::TopK(top_k_rows(&view, i)) })
                .collect()
        }
    };
    Ok(Prepared { chunks, n_train, saved_base })
}

/// Train an adapter for the GGUF at `model_path` and write it to `output`.
///
/// # Errors
/// Bad options (see [`check`]), a text shorter than the chunks asked for (at least one context
/// plus the held-out chunks), a model crunch cannot train (not Llama-family, a type it cannot
/// dequantize), an `init` adapter or a checkpoint that does not fit the model or the run, a loss
/// that stops being finite, I/O errors, [`Error::Cancelled`] (the last checkpoint is then up to
/// date and no adapter is written).
pub fn train(
    model_path: &Path,
    output: &Path,
    o: &TrainOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<TrainReport> {
    check(o)?;
    let t_start = Instant::now();
    let file = Arc::new(GgufFile::open(model_path)?);
    let mode = if o.exact { MatmulMode::Exact } else { MatmulMode::Native };
    let mut model = GgufModel::from_gguf(file.clone(), mode).map_err(model_err(model_path.display()))?;
    let Prepared { chunks, n_train, saved_base } = prepare(model_path, &file, &model, o, progress, cancel)?;
    let (train_chunks, holdout) = chunks.split_at(n_train);
    let n_ctx = o.chunks.n_ctx;

    // The pairs: fresh ones, then the init adapter's.
    let select = |name: &str| o.tensors.as_ref().is_none_or(|r| r.is_match(name));
    let n_pairs = model.init_lora_where(o.rank, o.alpha / o.rank as f32, o.config.seed, &select);
    if n_pairs == 0 {
        return Err(Error::field(field(o, "tensors"), "matches no block linear of the model"));
    }
    if let Some(init) = &o.init {
        model.load_adapter(init).map_err(|e| Error::field(field(o, "init"), e.to_string()))?;
    }

    // A fresh trainer, or the checkpoint's.
    let fp = fingerprint(o, model_path, &chunks)?;
    let mut resumed_at = None;
    let (mut trainer, mut curve, mut heldout) = if o.resume && o.checkpoint.exists() {
        let ck = checkpoint::load(&o.checkpoint).map_err(model_err("resume"))?;
        if ck.header.fingerprint != fp {
            return Err(Error::field(
                field(o, "resume"),
                format!(
                    "{} is the checkpoint of another run (model, text, targets or settings differ); \
                     remove it or run without resume",
                    o.checkpoint.display()
                ),
            ));
        }
        let heldout = ck.header.heldout.clone();
        let (t, c) = ck.restore(&mut model, o.config).map_err(model_err(o.checkpoint.display()))?;
        resumed_at = Some(c.len() as u64);
        (t, c, heldout)
    } else {
        (Trainer::new(o.config, &mut model), Vec::new(), Vec::new())
    };
    let pairs = model.lora_tensors();
    let trainable_params: usize = pairs.iter().map(|t| t.a.len() + t.b.len()).sum();

    let save = |model: &GgufModel, trainer: &Trainer<f32>, curve: &[StepStats], heldout: &[(u64, f64)]| {
        checkpoint::save(&o.checkpoint, &fp, model, trainer, curve, heldout).map_err(model_err("checkpoint"))
    };
    let score = |model: &GgufModel, at: u64, heldout: &mut Vec<(u64, f64)>| -> Result<Option<f64>> {
        if holdout.is_empty() {
            return Ok(None);
        }
        let l = heldout_loss(model, holdout, cancel)?;
        heldout.push((at, l));
        Ok(Some(l))
    };
    let train_seconds = run_steps(
        &mut model,
        &mut trainer,
        train_chunks,
        o,
        &mut curve,
        &mut heldout,
        &score,
        &save,
        progress,
        cancel,
    )?;
    let start = resumed_at.unwrap_or(0);
    let steps = o.config.steps;
    let tokens_per_step = (o.config.batch_size * o.config.grad_accum * n_ctx) as f64;
    let sha256 = model
        .write_adapter(output, o.adapter_type)
        .map_err(|e| Error::Model { context: output.display().to_string(), source: e })?;
    let adapter_bytes = std::fs::metadata(output).map_err(|e| Error::io(output, e))?.len();
    if let Some(p) = &o.plot {
        let svg = plot(o.objective.name(), &curve, &heldout);
        crunch_core::output::write_small_atomic(p, svg.as_bytes()).map_err(|e| Error::io(p, e))?;
    }
    let trained = (curve.len() as u64 - start) as f64;
    let last = curve.last().map(|s| s.loss).unwrap_or(f64::NAN);
    progress.finish(&format!("{} steps, last loss {last:.4}; wrote {}", curve.len(), output.display()));
    Ok(TrainReport {
        objective: o.objective.name().into(),
        output: output.display().to_string(),
        sha256,
        adapter_bytes,
        pairs: pairs.len(),
        trainable_params,
        train_chunks: n_train,
        holdout_chunks: o.holdout,
        ctx: n_ctx,
        steps,
        resumed_at,
        curve,
        heldout,
        tokens_per_second: if train_seconds > 0.0 { tokens_per_step * trained / train_seconds } else { 0.0 },
        seconds: t_start.elapsed().as_secs_f64(),
        peak_rss_bytes: eval::peak_rss_bytes(),
        checkpoint: o.checkpoint.display().to_string(),
        saved_base,
    })
}

/// Held-out scoring of a model kind: `(model, updates made, scores so far)` → the new score.
pub(crate) type ScoreFn<'a, M> = dyn Fn(&M, u64, &mut Vec<(u64, f64)>) -> Result<Option<f64>> + 'a;
/// Checkpointing of a model kind.
pub(crate) type SaveFn<'a, M> = dyn Fn(&M, &Trainer<f32>, &[StepStats], &[(u64, f64)]) -> Result<()> + 'a;

/// The training loop every kind of training shares: updates until the trainer is done, held-out
/// scores every `eval_every`, checkpoints every `checkpoint_every` and when cancelled, progress
/// with loss, gradient norm, learning rate, tokens/s and ETA. Returns the seconds spent in updates.
///
/// # Errors
/// A model error, a non-finite step (named by `o.field`), [`Error::Cancelled`] (after saving).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_steps<M: LoraModel<f32>>(
    model: &mut M,
    trainer: &mut Trainer<f32>,
    train_chunks: &[Chunk<f32>],
    o: &TrainOptions,
    curve: &mut Vec<StepStats>,
    heldout: &mut Vec<(u64, f64)>,
    score: &ScoreFn<'_, M>,
    save: &SaveFn<'_, M>,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<f64> {
    let steps = o.config.steps;
    let start = curve.len() as u64;
    if start == 0 {
        score(model, 0, heldout)?;
    }
    let tokens_per_step = (o.config.batch_size * o.config.grad_accum * o.chunks.n_ctx) as f64;
    progress.start(o.objective.name(), steps);
    if start > 0 {
        progress.advance(start, &format!("resumed at step {start}"));
    }
    let mut train_seconds = 0.0;
    let mut last_saved = start;
    let stop = || cancel.is_cancelled();
    while !trainer.finished() {
        let t = Instant::now();
        let r = trainer.next_step(model, train_chunks, &stop);
        train_seconds += t.elapsed().as_secs_f64();
        let s = match r {
            Ok(s) => s,
            Err(TrainError::Stopped) => {
                if curve.len() as u64 > last_saved {
                    save(model, trainer, curve, heldout)?;
                }
                return Err(Error::Cancelled);
            }
            Err(TrainError::Model(e)) => return Err(model_err("training")(e)),
            Err(e) => return Err(Error::field(o.field.clone(), e.to_string())),
        };
        curve.push(s);
        let done = s.step + 1;
        let held = if done.is_multiple_of(o.eval_every) || done == steps {
            match score(model, done, heldout) {
                Err(Error::Cancelled) => {
                    save(model, trainer, curve, heldout)?;
                    return Err(Error::Cancelled);
                }
                r => r?,
            }
        } else {
            None
        };
        if done.is_multiple_of(o.checkpoint_every) {
            save(model, trainer, curve, heldout)?;
            last_saved = done;
        }
        let tps = tokens_per_step * (done - start) as f64 / train_seconds.max(1e-9);
        let left = (steps - done) as f64 * tokens_per_step / tps.max(1e-9);
        let held = held.map(|h| format!(", held-out {h:.4}")).unwrap_or_default();
        progress.advance(
            done,
            &format!(
                "step {done}/{steps} loss {:.4}{held}, |g| {:.3}, lr {:.2e}, {tps:.0} tok/s, ETA {}",
                s.loss,
                s.grad_norm,
                s.lr,
                eta(left)
            ),
        );
    }
    if curve.len() as u64 > last_saved {
        save(model, trainer, curve, heldout)?;
    }
    Ok(train_seconds)
}

/// The loss curve as SVG: every update's training loss (and its running mean over 10 updates)
/// and the held-out loss.
pub fn plot(objective: &str, curve: &[StepStats], heldout: &[(u64, f64)]) -> String {
    use crate::report::svg::{scatter, Axis, Series};
    let what = if objective == "distill" { "KL(base || model), nats" } else { "cross-entropy, nats" };
    let train: Vec<(f64, f64, String)> = curve.iter().map(|s| ((s.step + 1) as f64, s.loss, String::new())).collect();
    let w = 10usize;
    let mean: Vec<(f64, f64, String)> = (0..curve.len())
        .map(|i| {
            let lo = i.saturating_sub(w - 1);
            let m = curve[lo..=i].iter().map(|s| s.loss).sum::<f64>() / (i - lo + 1) as f64;
            ((i + 1) as f64, m, String::new())
        })
        .collect();
    let held: Vec<(f64, f64, String)> = heldout.iter().map(|&(s, l)| (s as f64, l, String::new())).collect();
    let series = [
        Series {
            name: "training (per step)".into(),
            color: "#bbbbbb".into(),
            points: train,
            line: true,
            markers: false,
        },
        Series {
            name: "training (mean of 10)".into(),
            color: "#1f77b4".into(),
            points: mean,
            line: true,
            markers: false,
        },
        Series { name: "held-out".into(), color: "#d62728".into(), points: held, line: true, markers: true },
    ];
    scatter(
        &format!("crunch {objective}: loss per update"),
        &Axis { label: "update".into(), log: false },
        &Axis { label: what.into(), log: false },
        &series,
        760.0,
        420.0,
    )
}
