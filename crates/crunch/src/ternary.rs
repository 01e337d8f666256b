//! `crunch ternary`: a model's block linears as ternary weights (TQ1_0 / TQ2_0, BitNet b1.58's
//! absmean rule), either straight from its weights (post-training: a model not trained for it
//! loses most of what it knew, measured in docs/TERNARY.md) or after ternary fine-tuning on the
//! CPU: latent weights trained through the ternarization with the straight-through estimator,
//! distilled from the original model's top-k distributions, with a warm-up that blends the full
//! precision weights into the ternary ones over the first updates (`crunch_train::ternary`).
//!
//! Training shares the LoRA jobs' machinery (`crate::train`): the text cut into training and
//! held-out chunks, the original's top-k log-probabilities computed once, the update loop with
//! progress, held-out scores and the loss curve. Unlike an adapter run there is no checkpoint:
//! the latents are the whole model's linears (a cancelled run leaves nothing).

use crate::error::{Error, Result};
use crate::eval::{self, model_err};
use crate::progress::{Cancel, Progress};
use crate::train::{self, Objective, Prepared, TrainOptions};
use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;
use crunch_model::matmul::MatmulMode;
use crunch_train::ternary::{export_absmean, Blend, TernaryExport, TernaryModel};
use crunch_train::{GgufModel, StepStats, Trainer};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The fine-tuning half of a ternary run.
#[derive(Clone, Debug)]
pub struct TernaryTraining {
    /// Text, chunks, held-out chunks, optimizer and schedule, top-k (the LoRA fields unused).
    pub train: TrainOptions,
    /// Updates over which the full-precision weights are blended into the ternary ones.
    pub blend_warmup: u64,
}

/// What `ternary` did.
#[derive(Clone, Debug, Serialize)]
pub struct TernaryReport {
    pub output: String,
    pub ty: String,
    pub sha256: String,
    pub file_bytes: u64,
    pub bpw: f64,
    /// Block linears written ternary, and those whose rows are not whole 256-blocks (kept exactly
    /// in another type).
    pub ternary_tensors: usize,
    pub fallbacks: Vec<(String, String)>,
    /// Updates made (0: post-training).
    pub steps: u64,
    pub curve: Vec<StepStats>,
    /// `(updates made, mean held-out KL)`.
    pub heldout: Vec<(u64, f64)>,
    pub train_chunks: usize,
    pub holdout_chunks: usize,
    pub tokens_per_second: f64,
    pub seconds: f64,
    pub peak_rss_bytes: Option<u64>,
}

/// Check the output type.
///
/// # Errors
/// A type other than TQ1_0 / TQ2_0, naming `field`.
pub fn ternary_type(name: &str, field: &str) -> Result<GgmlType> {
    match name.to_ascii_uppercase().as_str() {
        "TQ1_0" => Ok(GgmlType::TQ1_0),
        "TQ2_0" => Ok(GgmlType::TQ2_0),
        _ => Err(Error::field(field, format!("{name:?}: ternary models are written as TQ1_0 or TQ2_0"))),
    }
}

/// Ternarize `model_path` into `output` (`ty` TQ1_0 or TQ2_0), after fine-tuning when `training`
/// is given. `twin`: also write the model in the other ternary type there (the same weights: TQ1_0 and
/// TQ2_0 of one latent decode to the same values).
///
/// # Errors
/// Unreadable inputs, the training options' errors (named by field), I/O; [`Error::Cancelled`]
/// (nothing written; a twin that fails takes the output with it).
pub fn ternary(
    model_path: &Path,
    output: &Path,
    ty: GgmlType,
    twin: Option<&Path>,
    training: Option<&TernaryTraining>,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<TernaryReport> {
    let start = Instant::now();
    let file = Arc::new(GgufFile::open(model_path)?);
    let write_err = |e| Error::Model { context: output.display().to_string(), source: e };
    let Some(t) = training else {
        progress.start("ternary (post-training)", 1);
        let export = export_absmean(&file, output, ty).map_err(write_err)?;
        if let Some(t) = twin {
            export_absmean(&file, t, other(ty)).map_err(write_err).inspect_err(|_| remove(output))?;
        }
        progress.finish(&format!("wrote {}", output.display()));
        return report(output, ty, export, Vec::new(), Vec::new(), (0, 0, 0.0), start);
    };
    let o = &t.train;
    train::check(o)?;
    if !matches!(o.objective, Objective::Distill { .. }) {
        return Err(Error::Invalid("ternary fine-tuning distils from the original model".into()));
    }
    let mode = if o.exact { MatmulMode::Exact } else { MatmulMode::Native };
    let base = GgufModel::from_gguf(file.clone(), mode).map_err(model_err(model_path.display()))?;
    let Prepared { chunks, n_train, .. } = train::prepare(model_path, &file, &base, o, progress, cancel)?;
    let (train_chunks, holdout) = chunks.split_at(n_train);
    let mut model = TernaryModel::new(base, Blend { warmup: t.blend_warmup });
    let mut trainer = Trainer::new(o.config, &mut model);
    let (mut curve, mut heldout) = (Vec::new(), Vec::new());
    let score = |m: &TernaryModel<GgufModel>, at: u64, h: &mut Vec<(u64, f64)>| -> Result<Option<f64>> {
        if holdout.is_empty() {
            return Ok(None);
        }
        let l = train::heldout_loss(m.model(), holdout, cancel)?;
        h.push((at, l));
        Ok(Some(l))
    };
    let no_checkpoint = |_: &TernaryModel<GgufModel>, _: &Trainer<f32>, _: &[StepStats], _: &[(u64, f64)]| Ok(());
    let seconds = train::run_steps(
        &mut model,
        &mut trainer,
        train_chunks,
        o,
        &mut curve,
        &mut heldout,
        &score,
        &no_checkpoint,
        progress,
        cancel,
    )?;
    let tokens = (o.config.batch_size * o.config.grad_accum * o.chunks.n_ctx) as f64 * curve.len() as f64;
    let export = model.export(output, ty).map_err(write_err)?;
    if let Some(t) = twin {
        model.export(t, other(ty)).map_err(write_err).inspect_err(|_| remove(output))?;
    }
    if let Some(p) = &o.plot {
        let svg = train::plot("ternary", &curve, &heldout);
        crunch_core::output::write_small_atomic(p, svg.as_bytes()).map_err(|e| Error::io(p, e))?;
    }
    progress.finish(&format!("{} steps; wrote {}", curve.len(), output.display()));
    let tps = if seconds > 0.0 { tokens / seconds } else { 0.0 };
    report(output, ty, export, curve, heldout, (n_train, holdout.len(), tps), start)
}

/// The other ternary type.
fn other(ty: GgmlType) -> GgmlType {
    if ty == GgmlType::TQ1_0 {
        GgmlType::TQ2_0
    } else {
        GgmlType::TQ1_0
    }
}

/// Remove a written output and its sidecar (a twin that could not be written takes its pair along).
fn remove(p: &Path) {
    let _ = std::fs::remove_file(p);
    let _ = std::fs::remove_file(crunch_core::output::sidecar_path(p));
}

fn report(
    output: &Path,
    ty: GgmlType,
    export: TernaryExport,
    curve: Vec<StepStats>,
    heldout: Vec<(u64, f64)>,
    (train_chunks, holdout_chunks, tokens_per_second): (usize, usize, f64),
    start: Instant,
) -> Result<TernaryReport> {
    let file_bytes = std::fs::metadata(output).map_err(|e| Error::io(output, e))?.len();
    let f = GgufFile::open(output)?;
    let elements: u64 = f.tensors().iter().map(|t| t.n_elements()).sum();
    let fallbacks: Vec<(String, String)> = export.fallbacks(ty).map(|(n, t)| (n.clone(), t.to_string())).collect();
    Ok(TernaryReport {
        output: output.display().to_string(),
        ty: ty.to_string(),
        sha256: export.sha256.clone(),
        file_bytes,
        bpw: file_bytes as f64 * 8.0 / elements.max(1) as f64,
        ternary_tensors: export.tensors.len() - fallbacks.len(),
        fallbacks,
        steps: curve.len() as u64,
        curve,
        heldout,
        train_chunks,
        holdout_chunks,
        tokens_per_second,
        seconds: start.elapsed().as_secs_f64(),
        peak_rss_bytes: eval::peak_rss_bytes(),
    })
}
