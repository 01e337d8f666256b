//! `crunch imatrix`: collect, merge, resume and save importance matrices.

use super::calib_err;
use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};
use crunch_calib::imatrix::{self, CollectOptions, Collector, Format};
use crunch_calib::text::{self, ChunkOptions, TextSource};
use crunch_calib::Imatrix;
use crunch_core::gguf::GgufFile;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// What `crunch imatrix` was asked to do.
#[derive(Clone, Debug)]
pub struct ImatrixJob {
    pub model: Option<PathBuf>,
    /// Calibration text; `None` only merges `in_files`.
    pub text: Option<TextSource>,
    pub output: PathBuf,
    pub format: Format,
    pub n_ctx: usize,
    pub n_chunks: Option<usize>,
    /// Chunks to skip at the start of the text.
    pub skip_chunks: usize,
    /// Pick chunks at random (seeded) instead of in order.
    pub shuffle_seed: Option<u64>,
    /// Earlier matrices to add (llama-imatrix `--in-file`).
    pub in_files: Vec<PathBuf>,
    /// Continue the run saved at `output`: load it and skip the chunks it already holds.
    pub resume: bool,
    /// Save every this many chunks (0: only at the end).
    pub save_every: usize,
    pub process_output: bool,
    /// LoRA adapters applied to the model while collecting (a bad one is an error of the
    /// `imatrix.lora` field).
    pub lora: Vec<crunch_model::LoraSpec>,
}

/// What a finished run reports.
#[derive(Clone, Debug, Serialize)]
pub struct ImatrixReport {
    pub output: String,
    pub entries: usize,
    pub chunks_done: usize,
    pub chunk_count: u32,
    pub tokens: usize,
    pub seconds: f64,
}

/// Load, merge, collect and save.
///
/// # Errors
/// Unreadable inputs, an imatrix for another model, text shorter than one context, a model
/// without linear layers, cancellation (the last saved state stays at `output`).
pub fn run_imatrix(job: &ImatrixJob, progress: &dyn Progress, cancel: &Cancel) -> Result<ImatrixReport> {
    let t0 = Instant::now();
    let cs = job.n_ctx as u32;
    let mut base = Imatrix { chunk_size: cs, ..Default::default() };
    for f in &job.in_files {
        let m = Imatrix::load(f, cs).map_err(calib_err)?;
        base.merge(&m).map_err(|e| Error::Invalid(format!("merging {}: {e}", f.display())))?;
    }
    let mut already = 0usize;
    if job.resume && job.output.exists() {
        let m = Imatrix::load(&job.output, cs).map_err(calib_err)?;
        if m.chunk_size != 0 && m.chunk_size != cs {
            return Err(Error::Invalid(format!(
                "resume: {} was made with chunks of {} tokens, not {}",
                job.output.display(),
                m.chunk_size,
                job.n_ctx
            )));
        }
        already = m.chunk_count as usize;
        base.merge(&m).map_err(|e| Error::Invalid(format!("resuming {}: {e}", job.output.display())))?;
    }
    let Some(source) = &job.text else {
        if job.in_files.is_empty() && !job.resume {
            return Err(Error::field(
                "imatrix.text",
                "nothing to do: give calibration text or matrices to merge (in_files)",
            ));
        }
        if let Some(model) = &job.model {
            check_model(&base, &GgufFile::open(model)?)?;
        }
        base.save(&job.output, job.format).map_err(calib_err)?;
        return Ok(report(job, &base, 0, 0, t0));
    };
    let model_path = job.model.as_ref().ok_or_else(|| Error::Invalid("collecting needs a model".into()))?;
    let file = Arc::new(GgufFile::open(model_path)?);
    check_model(&base, &file)?;
    if crate::eval::embed::is_encoder(file.metadata()) {
        return collect_encoder(job, model_path, source, base, already, t0, progress, cancel);
    }
    let mut model = crunch_model::LlamaModel::from_gguf(file.clone())
        .map_err(|source| Error::Model { context: model_path.display().to_string(), source })?;
    crate::eval::apply_adapters(&mut model, &job.lora, "imatrix.lora")?;
    let tok = crunch_model::tokenizer::Tokenizer::from_gguf(&file)?;
    let opts = ChunkOptions {
        n_ctx: job.n_ctx,
        n_chunks: job.n_chunks.map(|n| n.saturating_sub(already)),
        skip: job.skip_chunks + already,
        shuffle_seed: job.shuffle_seed,
    };
    let chunks = text::load_chunks(source, &tok, opts).map_err(calib_err)?;
    let mut collector = Collector::from_imatrix(&base, CollectOptions { process_output: job.process_output });
    let mut datasets = base.datasets.clone();
    if !datasets.contains(&chunks.dataset) {
        datasets.push(chunks.dataset.clone());
    }
    let total = chunks.chunks.len();
    progress.start("imatrix", (total * job.n_ctx) as u64);
    let mut done = 0usize;
    let mut cancelled = false;
    imatrix::collect(&model, &chunks, &mut collector, |i, c| {
        done = i + 1;
        progress.advance((done * job.n_ctx) as u64, &format!("chunk {}/{total}", done));
        if job.save_every > 0 && done.is_multiple_of(job.save_every) && done < total {
            c.to_imatrix(datasets.clone(), cs).save(&job.output, job.format)?;
        }
        cancelled = cancel.is_cancelled();
        Ok(!cancelled)
    })
    .map_err(calib_err)?;
    let m = collector.to_imatrix(datasets, cs);
    m.save(&job.output, job.format).map_err(calib_err)?;
    if cancelled {
        return Err(Error::Invalid(format!(
            "interrupted after {done} of {total} chunks; saved them to {} (resume to continue)",
            job.output.display()
        )));
    }
    progress.finish(&format!("wrote {}", job.output.display()));
    Ok(report(job, &m, done, chunks.chunks.iter().map(Vec::len).sum(), t0))
}

/// An encoder's importance matrix: every non-empty line of the text is one input sequence (a
/// sentence, as the encoder is used), cut to the context; "chunks" count lines.
#[allow(clippy::too_many_arguments)]
fn collect_encoder(
    job: &ImatrixJob,
    model_path: &std::path::Path,
    source: &TextSource,
    base: Imatrix,
    already: usize,
    t0: Instant,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<ImatrixReport> {
    let TextSource::File(path) = source else {
        return Err(Error::field(
            "imatrix.random_tokens",
            format!("{}: a sentence encoder is calibrated on the lines of a text file", model_path.display()),
        ));
    };
    if !job.lora.is_empty() {
        return Err(Error::field("imatrix.lora", "LoRA adapters apply to causal LMs, not to a sentence encoder"));
    }
    if job.shuffle_seed.is_some() {
        return Err(Error::field("imatrix.seed", "a sentence encoder reads the text's lines in order"));
    }
    if already > 0 {
        return Err(Error::field(
            "imatrix.resume",
            "a sentence encoder's matrix counts tokens, not lines: collect again (or merge with --in-file)",
        ));
    }
    let model = crate::eval::embed::open_encoder(model_path, false)?;
    let max_tokens = job.n_ctx.min(model.config.max_tokens);
    if max_tokens < 2 {
        return Err(Error::field("imatrix.ctx", format!("{}: too short for [CLS] and [SEP]", job.n_ctx)));
    }
    let lines: Vec<String> = crate::eval::embed::read_lines(path, None)?
        .into_iter()
        .skip(job.skip_chunks)
        .take(job.n_chunks.unwrap_or(usize::MAX))
        .collect();
    if lines.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no lines left to calibrate on after skipping {}",
            path.display(),
            job.skip_chunks
        )));
    }
    let seqs = crate::eval::embed::tokenize_all(&model, &model_path.display().to_string(), &lines, max_tokens)?;
    let mut collector = Collector::from_imatrix(&base, CollectOptions { process_output: job.process_output });
    let mut datasets = base.datasets.clone();
    let dataset = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    if !datasets.contains(&dataset) {
        datasets.push(dataset);
    }
    let cs = max_tokens as u32;
    let total = seqs.len();
    progress.start("imatrix (encoder lines)", total as u64);
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let (mut done, mut saved) = (0usize, 0usize);
    let mut cancelled = false;
    for r in crunch_model::bert::batch_ranges(&refs, crunch_model::bert::BATCH_TOKENS) {
        if cancel.is_cancelled() {
            cancelled = true;
            break;
        }
        let mut err = None;
        {
            let mut obs = |name: &str, x: &[f32], n: usize| {
                if err.is_none() {
                    err = collector.observe(name, x, n).err();
                }
            };
            model
                .hidden_states_with(&refs[r.clone()], Some(&mut obs))
                .map_err(|source| Error::Model { context: model_path.display().to_string(), source })?;
        }
        if let Some(e) = err {
            return Err(calib_err(e));
        }
        done = r.end;
        progress.advance(done as u64, &format!("line {done}/{total}"));
        if job.save_every > 0 && done - saved >= job.save_every && done < total {
            collector.to_imatrix(datasets.clone(), cs).save(&job.output, job.format).map_err(calib_err)?;
            saved = done;
        }
    }
    let m = collector.to_imatrix(datasets, cs);
    m.save(&job.output, job.format).map_err(calib_err)?;
    if cancelled {
        return Err(Error::Invalid(format!(
            "interrupted after {done} of {total} lines; saved them to {} (resume to continue)",
            job.output.display()
        )));
    }
    progress.finish(&format!("wrote {}", job.output.display()));
    Ok(report(job, &m, done, refs[..done].iter().map(|s| s.len()).sum(), t0))
}

fn report(job: &ImatrixJob, m: &Imatrix, chunks_done: usize, tokens: usize, t0: Instant) -> ImatrixReport {
    ImatrixReport {
        output: job.output.display().to_string(),
        entries: m.entries.len(),
        chunks_done,
        chunk_count: m.chunk_count,
        tokens,
        seconds: t0.elapsed().as_secs_f64(),
    }
}

/// The 2-D weights of a GGUF model as (name, columns), for [`Imatrix::check_against`].
pub fn model_weights(file: &GgufFile) -> Vec<(String, usize)> {
    file.tensors().iter().filter(|t| t.dims.len() >= 2).map(|t| (t.name.clone(), t.dims[0] as usize)).collect()
}

/// An imatrix whose entries do not fit `file`'s weights is an error naming them.
///
/// # Errors
/// See [`Imatrix::check_against`]; a model without linear layers.
pub fn check_model(m: &Imatrix, file: &GgufFile) -> Result<()> {
    crunch_calib::calibration_targets(file, true).map_err(calib_err)?;
    m.check_against(&model_weights(file))
        .map_err(|e| Error::Invalid(format!("{} and the imatrix: {e}", file.path.display())))
}
