//! `crunch stage1`: the extreme-compression pipeline: ternary fine-tuning (`crate::ternary`, the
//! block linears trained to work as absmean ternary weights, distilled from the original), then
//! SeedLM encoding of the ternary model (`crate::seedlm`, every 2-D weight as seeds), measured
//! before and after on held-out text and multiple-choice tasks, against a size-ratio and an
//! accuracy-drop target.
//!
//! Size ratio: the input file's bytes over the container's. The SeedLM configuration is the most
//! precise one (4-bit, then 3-bit) whose container reaches the target ratio, estimated from the
//! tensor shapes before any work (every 2-D weight at the configuration's bits, the rest as in the
//! input, the input's header). Accuracy: next-token top-1 accuracy on the held-out chunks, and
//! multiple-choice accuracy on the tasks when given; a drop is relative (`1 − after / before`).
//! The held-out chunks are the first `eval_chunks` of the evaluation text; training skips them
//! when it reads the same text.
//!
//! Outputs: the container (`OUT`), the intermediate ternary GGUF (`OUT` with `.ternary.gguf`,
//! which llama.cpp runs) and the metrics file (`OUT` with `.metrics.json`, written whether or not
//! the targets were met). Cancelled or failed, nothing of them is left.

use crate::error::{Error, Result};
use crate::eval::{self, model_err, ChoiceOptions};
use crate::progress::{Cancel, Progress};
use crate::seedlm::{self as seedenc, EncodeReport};
use crate::ternary::{self, TernaryReport, TernaryTraining};
use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;
use crunch_model::perplexity::{eval_chunk, ChunkLayout, PerplexityOptions};
use crunch_quant::seedlm::{Config, CONFIG_3BIT, CONFIG_4BIT};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `stage1` is asked for.
#[derive(Clone, Debug)]
pub struct Stage1Options {
    pub target_ratio: f64,
    pub max_accuracy_drop: f64,
    /// Ternary fine-tuning (its text is the training text).
    pub training: TernaryTraining,
    /// Held-out text (the first `eval_chunks` chunks of `eval_ctx` tokens).
    pub eval_text: PathBuf,
    pub eval_ctx: usize,
    pub eval_chunks: usize,
    /// Multiple-choice tasks (JSONL, as `eval choice`).
    pub tasks: Option<PathBuf>,
    /// Force a SeedLM configuration instead of the most precise one that meets the ratio.
    pub config: Option<Config>,
    pub imatrix: Option<PathBuf>,
    pub metrics: PathBuf,
    pub ternary_output: PathBuf,
    /// A ternary model of the input already fine-tuned (`crunch ternary`): encoded instead of
    /// training one (`ternary_output` is then not written).
    pub ternary_input: Option<PathBuf>,
}

/// One model's scores.
#[derive(Clone, Debug, Serialize)]
pub struct Scores {
    pub ppl: f64,
    /// Next-token top-1 accuracy on the held-out positions.
    pub top1_acc: f64,
    /// Multiple-choice accuracy (fraction), when tasks were given.
    pub mc_acc: Option<f64>,
    /// Same top token as the original, position by position.
    pub top1_agreement: Option<f64>,
    pub positions: usize,
}

/// A target and whether it was met.
#[derive(Clone, Debug, Serialize)]
pub struct Constraint {
    pub name: String,
    pub value: f64,
    pub limit: f64,
    pub met: bool,
}

/// The metrics file.
#[derive(Clone, Debug, Serialize)]
pub struct Stage1Report {
    pub model: String,
    pub output: String,
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub size_ratio: f64,
    pub config: String,
    pub before: Scores,
    pub ternary: Scores,
    pub after: Scores,
    /// Relative drops, `1 − after / before`.
    pub top1_acc_drop: f64,
    pub mc_acc_drop: Option<f64>,
    pub constraints: Vec<Constraint>,
    pub met: bool,
    /// The fine-tuning run (none when a fine-tuned ternary model was given).
    pub ternary_run: Option<TernaryReport>,
    pub ternary_model: String,
    pub seedlm_run: EncodeReport,
    pub seconds: f64,
}

/// Bytes a container of `cfg` made from `file` would have (header and unencoded tensors as they
/// are, encoded weights at `cfg`'s bits, alignment padding ignored).
fn estimate_bytes(file: &GgufFile, cfg: Config) -> u64 {
    let mut bytes = file.header.data_start;
    for t in file.tensors() {
        bytes += if seedenc::encodes(t, cfg) {
            cfg.tensor_bytes((t.n_elements() / cfg.c as u64) as usize) as u64
        } else {
            t.n_bytes()
        };
    }
    bytes
}

/// The configuration for the ratio target.
///
/// # Errors
/// No configuration reaches it (named by `stage1.target_ratio`).
pub fn pick_config(file: &GgufFile, target_ratio: f64, forced: Option<Config>) -> Result<Config> {
    let input = file.file_size() as f64;
    let candidates = forced.map_or(vec![CONFIG_4BIT, CONFIG_3BIT], |c| vec![c]);
    for &cfg in &candidates {
        if input / estimate_bytes(file, cfg) as f64 >= target_ratio {
            return Ok(cfg);
        }
    }
    let last = *candidates.last().expect("a configuration");
    Err(Error::field(
        "stage1.target_ratio",
        format!(
            "{target_ratio} is out of reach: SeedLM {} gives about {:.2}x of {}",
            last.name(),
            input / estimate_bytes(file, last) as f64,
            file.path.display()
        ),
    ))
}

/// Perplexity, top-1 accuracy and (against `reference`) top-1 agreement on the held-out chunks;
/// returns the scores and this model's top tokens.
fn score_text(
    model_path: &Path,
    o: &Stage1Options,
    reference: Option<&[u32]>,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<(Scores, Vec<u32>)> {
    let loaded = eval::open_model(model_path, false)?;
    let text = std::fs::read_to_string(&o.eval_text).map_err(|e| Error::io(&o.eval_text, e))?;
    let (tokens, bos) = eval::perplexity::tokenize_for_eval(&loaded, &text, &o.eval_text)?;
    let model = &loaded.model;
    model.check_context(o.eval_ctx).map_err(model_err(model_path.display()))?;
    let layout = ChunkLayout::new(tokens.len(), PerplexityOptions { n_ctx: o.eval_ctx, n_chunks: Some(o.eval_chunks) })
        .map_err(model_err(o.eval_text.display()))?;
    let n_vocab = model.config.n_vocab;
    let mut cache = model.new_cache(layout.n_ctx);
    let (mut nll, mut correct, mut top) = (0f64, 0usize, Vec::new());
    progress.start(&format!("scoring {}", model_path.display()), layout.n_chunks as u64);
    for i in 0..layout.n_chunks {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let logits =
            eval_chunk(model, &mut cache, &layout, &tokens, i, bos).map_err(model_err(model_path.display()))?;
        for (row, &target) in logits.chunks_exact(n_vocab).zip(layout.targets(&tokens, i)) {
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            let arg = row.iter().position(|&v| v == max).unwrap_or(0) as u32;
            let lse = max as f64 + row.iter().map(|&v| ((v - max) as f64).exp()).sum::<f64>().ln();
            nll += lse - row[target as usize] as f64;
            correct += usize::from(arg == target);
            top.push(arg);
        }
        progress.advance(i as u64 + 1, &format!("chunk {}/{}", i + 1, layout.n_chunks));
    }
    let n = top.len().max(1);
    let agreement = reference.map(|r| r.iter().zip(&top).filter(|(a, b)| a == b).count() as f64 / n as f64);
    let mc_acc = match &o.tasks {
        Some(t) => Some(eval::choice(model_path, t, &ChoiceOptions::default(), progress, cancel)?.acc.pct / 100.0),
        None => None,
    };
    let scores = Scores {
        ppl: (nll / n as f64).exp(),
        top1_acc: correct as f64 / n as f64,
        mc_acc,
        top1_agreement: agreement,
        positions: top.len(),
    };
    Ok((scores, top))
}

/// Run the pipeline on `model` into `output`.
///
/// # Errors
/// An unreachable ratio (before any work), the steps' errors; [`Error::Cancelled`]. Missing the
/// targets is not an error: the report says which were missed (`met`, `constraints`).
pub fn stage1(
    model: &Path,
    output: &Path,
    o: &Stage1Options,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Stage1Report> {
    let res = run(model, output, o, progress, cancel);
    if res.is_err() {
        let written = if o.ternary_input.is_none() { Some(o.ternary_output.as_path()) } else { None };
        for p in [Some(output), written, Some(o.metrics.as_path())].into_iter().flatten() {
            let _ = std::fs::remove_file(p);
            let _ = std::fs::remove_file(crunch_core::output::sidecar_path(p));
        }
    }
    res
}

fn run(
    model: &Path,
    output: &Path,
    o: &Stage1Options,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Stage1Report> {
    let start = Instant::now();
    seedenc::check_output_name(output, "stage1.output")?;
    if !(o.target_ratio.is_finite() && o.target_ratio > 0.0) {
        return Err(Error::field("stage1.target_ratio", format!("{} must be a positive ratio", o.target_ratio)));
    }
    if !(0.0..=1.0).contains(&o.max_accuracy_drop) {
        return Err(Error::field(
            "stage1.max_accuracy_drop",
            format!("{} must be a fraction, 0 to 1", o.max_accuracy_drop),
        ));
    }
    let file = GgufFile::open(model)?;
    let input_bytes = file.file_size();
    let cfg = pick_config(&file, o.target_ratio, o.config)?;
    drop(file);

    let (before, reference) = score_text(model, o, None, progress, cancel)?;
    let (ternary_run, ternary_model) = match &o.ternary_input {
        Some(t) => (None, t.clone()),
        None => {
            let r =
                ternary::ternary(model, &o.ternary_output, GgmlType::TQ2_0, None, Some(&o.training), progress, cancel)?;
            (Some(r), o.ternary_output.clone())
        }
    };
    let (ternary_scores, _) = score_text(&ternary_model, o, Some(&reference), progress, cancel)?;
    let seedlm_run = seedenc::encode(&ternary_model, output, cfg, o.imatrix.as_deref(), None, progress, cancel)?;
    let (after, _) = score_text(output, o, Some(&reference), progress, cancel)?;

    let output_bytes = std::fs::metadata(output).map_err(|e| Error::io(output, e))?.len();
    let size_ratio = input_bytes as f64 / output_bytes as f64;
    let drop = |b: f64, a: f64| if b > 0.0 { 1.0 - a / b } else { 0.0 };
    let top1_acc_drop = drop(before.top1_acc, after.top1_acc);
    let mc_acc_drop = before.mc_acc.zip(after.mc_acc).map(|(b, a)| drop(b, a));
    let mut constraints = vec![
        Constraint {
            name: "target_ratio".into(),
            value: size_ratio,
            limit: o.target_ratio,
            met: size_ratio >= o.target_ratio,
        },
        Constraint {
            name: "max_accuracy_drop (top-1)".into(),
            value: top1_acc_drop,
            limit: o.max_accuracy_drop,
            met: top1_acc_drop <= o.max_accuracy_drop,
        },
    ];
    if let Some(d) = mc_acc_drop {
        constraints.push(Constraint {
            name: "max_accuracy_drop (multiple choice)".into(),
            value: d,
            limit: o.max_accuracy_drop,
            met: d <= o.max_accuracy_drop,
        });
    }
    let report = Stage1Report {
        model: model.display().to_string(),
        output: output.display().to_string(),
        input_bytes,
        output_bytes,
        size_ratio,
        config: cfg.name().into(),
        before,
        ternary: ternary_scores,
        after,
        top1_acc_drop,
        mc_acc_drop,
        met: constraints.iter().all(|c| c.met),
        constraints,
        ternary_run,
        ternary_model: ternary_model.display().to_string(),
        seedlm_run,
        seconds: start.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::Invalid(e.to_string()))?;
    crunch_core::output::write_small_atomic(&o.metrics, &json).map_err(|e| Error::io(&o.metrics, e))?;
    Ok(report)
}
