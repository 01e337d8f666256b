//! `seedlm`: a model's weights encoded as SeedLM seeds (see `crate::seedlm`). Decoding a
//! container back to a GGUF type is the `quantize` job with the container as its model.

use crate::error::{Error, Result};
use crate::job::record::{metric, Recorder};
use crate::job::{refuse_overwrite, RunCtx};
use crate::seedlm::{self, EncodeReport};
use crunch_quant::seedlm::Config;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `seedlm`: encode a GGUF model's weights as SeedLM seeds into a container (`*.seedlm`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SeedlmJob {
    /// Input GGUF (any type crunch dequantizes).
    pub model: PathBuf,
    /// Output container (`*.seedlm`; llama.cpp cannot load it, so never `*.gguf`).
    pub output: PathBuf,
    /// `4bit` (8 weights, 3 coefficients) or `3bit` (12 weights, 4 coefficients).
    #[serde(default = "default_config")]
    pub config: String,
    /// Importance matrix (llama.cpp GGUF or `.dat`) to weight each fit by.
    #[serde(default)]
    pub imatrix: Option<PathBuf>,
    /// Only weights whose GGUF name matches this regular expression are encoded (default: every
    /// 2-D weight whose rows are whole blocks); the rest are copied.
    #[serde(default)]
    pub tensors: Option<String>,
}

fn default_config() -> String {
    "4bit".into()
}

/// What `seedlm` did.
#[derive(Clone, Debug, Serialize)]
pub struct SeedlmOutcome {
    pub result: EncodeReport,
    pub run_id: Option<i64>,
}

/// The configuration a job names.
///
/// # Errors
/// A name other than `4bit` / `3bit`, naming `field`.
pub fn config(name: &str, field: &str) -> Result<Config> {
    Config::named(name).ok_or_else(|| Error::field(field, format!("{name:?}: expected 4bit or 3bit")))
}

pub(crate) fn run(j: &SeedlmJob, ctx: &RunCtx) -> Result<SeedlmOutcome> {
    let cfg = config(&j.config, "seedlm.config")?;
    seedlm::check_output_name(&j.output, "seedlm.output")?;
    refuse_overwrite("seedlm.output", &j.model, &j.output)?;
    let tensors = j
        .tensors
        .as_deref()
        .map(|p| regex::Regex::new(p).map_err(|e| Error::field("seedlm.tensors", format!("{p:?}: {e}"))))
        .transpose()?;
    let params = serde_json::json!({ "config": j.config, "imatrix": j.imatrix, "tensors": j.tensors });
    let mut inputs: Vec<(&str, &Path)> = vec![("model", &j.model)];
    if let Some(m) = &j.imatrix {
        inputs.push(("imatrix", m));
    }
    let label = format!("seedlm {}{}", j.config, if j.imatrix.is_some() { " imatrix" } else { "" });
    let rec = Recorder::start("seedlm", ctx.registry.as_deref(), Some(label), params, &inputs);
    let res = seedlm::encode(
        &j.model,
        &j.output,
        cfg,
        j.imatrix.as_deref(),
        tensors.as_ref(),
        ctx.progress.as_ref(),
        &ctx.cancel,
    );
    let (result, run_id) = rec.close(res, |r| {
        vec![
            (metric::FILE_BYTES, r.file_bytes as f64),
            (metric::BPW, r.file_bpw),
            (metric::SECONDS, r.seconds),
            (metric::SEEDS_SKIPPED, r.skipped_share),
        ]
    })?;
    Ok(SeedlmOutcome { result, run_id })
}
