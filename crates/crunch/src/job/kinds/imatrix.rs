//! The `imatrix` job: collect, merge, resume and save an importance matrix.

use super::{ImatrixJob, ImatrixOutcome};
use crate::calibrate::{self, run_imatrix};
use crate::error::{Error, Result};
use crate::job::record::{metric, Recorder};
use crate::job::RunCtx;
use crunch_calib::imatrix::Format;
use crunch_calib::text::TextSource;
use std::path::Path;

pub(crate) fn run(j: &ImatrixJob, ctx: &RunCtx) -> Result<ImatrixOutcome> {
    if j.ctx == 0 {
        return Err(Error::field("imatrix.ctx", "must be positive"));
    }
    let format = match j.format.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Format::from_path(&j.output),
        Some("gguf") => Format::Gguf,
        Some("dat") => Format::Dat,
        Some(f) => return Err(Error::field("imatrix.format", format!("{f:?}: expected gguf or dat"))),
    };
    let text = match (&j.text, &j.random_tokens) {
        (Some(_), Some(_)) => {
            return Err(Error::field("imatrix.random_tokens", "give either a text file or random tokens, not both"))
        }
        (Some(p), None) => Some(TextSource::File(p.clone())),
        (None, Some(r)) => {
            let spec = format!("random:{}", r.trim_start_matches("random:"));
            match TextSource::parse(&spec) {
                s @ TextSource::Random { .. } => Some(s),
                _ => return Err(Error::field("imatrix.random_tokens", format!("{r:?}: expected N or N:SEED"))),
            }
        }
        (None, None) => None,
    };
    let run = calibrate::ImatrixJob {
        model: j.model.clone(),
        text,
        output: j.output.clone(),
        format,
        n_ctx: j.ctx,
        n_chunks: j.chunks,
        skip_chunks: j.skip_chunks,
        shuffle_seed: j.seed,
        in_files: j.in_files.clone(),
        resume: j.resume,
        save_every: j.save_every,
        process_output: j.process_output,
        lora: j.lora.clone(),
    };
    let mut inputs: Vec<(&str, &Path)> = Vec::new();
    if let Some(m) = &j.model {
        inputs.push(("model", m));
    }
    if let Some(t) = &j.text {
        inputs.push(("text", t));
    }
    let mut params = serde_json::json!({ "ctx": j.ctx, "chunks": j.chunks, "skip_chunks": j.skip_chunks,
                                      "seed": j.seed, "in_files": j.in_files, "resume": j.resume });
    super::record_lora(&mut params, &mut inputs, &j.lora);
    let rec = Recorder::start("imatrix", ctx.registry.as_deref(), None, params, &inputs);
    let res = run_imatrix(&run, ctx.progress.as_ref(), &ctx.cancel);
    if res.is_ok() {
        rec.output(&j.output);
    }
    let (result, run_id) = rec.close(res, |r| vec![(metric::SECONDS, r.seconds)])?;
    Ok(ImatrixOutcome { result, run_id })
}
