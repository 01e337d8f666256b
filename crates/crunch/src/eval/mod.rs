//! Measure what compression cost: perplexity, KL-divergence against a base model, multiple-choice
//! accuracy, generation and speed, each as one library call returning a serde-serializable report.
//!
//! The CLI (`crunch eval …`, `crunch run`, `crunch bench`) is a thin front end over these calls;
//! other jobs (the fit/search solver, calibration tables) call them directly. Numbers follow
//! llama.cpp's conventions (llama-perplexity's chunks, its KL-divergence and "same top token",
//! its HellaSwag scoring) so they can be compared with figures published for llama.cpp.
//!
//! Long jobs take a [`Progress`](crate::progress::Progress) sink (one `advance` per chunk or task,
//! with a readable running estimate as the item) and a [`Cancel`](crate::progress::Cancel) flag
//! checked between chunks.

pub mod bench;
pub mod choice;
pub mod compare;
pub mod embed;
pub mod perplexity;
pub mod run;

use std::path::Path;
use std::sync::Arc;

use crunch_model::tokenizer::Tokenizer;
use crunch_model::{LlamaModel, LoraAdapter, LoraSpec, MatmulMode, ModelError};

use crate::error::{Error, Result};
use crate::progress::Cancel;

pub use bench::{bench, BenchOptions, BenchReport};
pub use choice::{choice, load_tasks, ChoiceOptions, ChoiceReport};
pub use compare::{
    base_logits, compare, compare_with, load_base_logits, save_base_logits, topk_error, Base, CompareOptions,
    CompareReport, TopKError,
};
pub use crunch_model::kld::{BaseLogits, CompareStats, KldStats};
pub use perplexity::{perplexity, perplexity_of, EvalOptions, PerplexityReport};
pub use run::{run, RunOptions, RunReport};

/// A Llama-family model and its GGUF tokenizer, opened for evaluation.
pub struct Loaded {
    pub model: LlamaModel,
    pub tokenizer: Tokenizer,
}

/// Wrap a model error with what was being done (a GGUF error that names its file is passed on as
/// it is: the context would only repeat the path).
pub(crate) fn model_err(context: impl std::fmt::Display) -> impl FnOnce(ModelError) -> Error {
    let context = context.to_string();
    move |source| match source {
        ModelError::Gguf(e) if e.path().is_some() => Error::Gguf(e),
        source => Error::Model { context, source },
    }
}

/// Open a GGUF Llama-family model and its tokenizer; `exact` dequantizes weights instead of
/// quantizing activations.
///
/// # Errors
/// The file cannot be read, its architecture is not one crunch runs, a tensor is missing or has
/// the wrong shape; each message names the file and the tensor or key.
pub fn open_model(path: &Path, exact: bool) -> Result<Loaded> {
    let mut model = LlamaModel::open(path).map_err(model_err(path.display()))?;
    if exact {
        model.mode = MatmulMode::Exact;
    }
    let tokenizer = Tokenizer::from_gguf(model.file())
        .map_err(ModelError::from)
        .map_err(model_err(format!("{}: tokenizer", path.display())))?;
    Ok(Loaded { model, tokenizer })
}

/// [`open_model`] with LoRA adapters applied in order (each layer they adapt computes
/// `W x + s·B(A x)`, as llama.cpp's `--lora-scaled`).
///
/// # Errors
/// As [`open_model`]; an adapter that cannot be read, is not a LoRA adapter, or does not fit the
/// model is an error of the job field `field` (`perplexity.lora`) naming the adapter file and
/// the tensor or key at fault.
pub fn open_model_with(path: &Path, exact: bool, lora: &[LoraSpec], field: &str) -> Result<Loaded> {
    let mut loaded = open_model(path, exact)?;
    apply_adapters(&mut loaded.model, lora, field)?;
    Ok(loaded)
}

/// An adapter's error as text that names the adapter file once.
pub fn adapter_message(path: &Path, e: &ModelError) -> String {
    match e {
        // these already begin with the adapter's path
        ModelError::File { .. } => e.to_string(),
        ModelError::Gguf(g) if g.path().is_some() => g.to_string(),
        _ => format!("{}: {e}", path.display()),
    }
}

/// Apply LoRA adapters to an opened model; errors as [`open_model_with`]'s.
pub fn apply_adapters(model: &mut LlamaModel, lora: &[LoraSpec], field: &str) -> Result<()> {
    for spec in lora {
        let adapter_err = |e: ModelError| Error::field(field, adapter_message(&spec.path, &e));
        let adapter = LoraAdapter::open(&spec.path).map_err(adapter_err)?;
        model.add_adapter(Arc::new(adapter), spec.scale).map_err(adapter_err)?;
    }
    Ok(())
}

/// Read a UTF-8 text file; an empty (or all-whitespace) file is an error.
pub fn read_text(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    if text.trim().is_empty() {
        return Err(Error::Invalid(format!("{}: the text file is empty", path.display())));
    }
    Ok(text)
}

/// Peak resident memory of this process so far (`VmHWM`), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Reset the process's peak resident memory to its current size (Linux 4.0+: `5` written to
/// `/proc/self/clear_refs`), so [`peak_rss_bytes`] reads the peak of what follows. `false` where
/// that is not possible (the peak then covers the whole process).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

pub(crate) fn check_cancel(cancel: &Cancel) -> Result<()> {
    if cancel.is_cancelled() {
        Err(Error::Cancelled)
    } else {
        Ok(())
    }
}
