//! The `prune` job: magnitude, Wanda or SparseGPT pruning of the linear weights (unstructured or
//! N:M), written through the quantizer as a dense GGUF with zeros; the output's real zero
//! fraction is measured per tensor (a type without an exact zero on its grid turns zeros into
//! small values).

use super::CalibrationSpec;
use crate::calibrate::prune::{prune_targets, PruneSpec, PrunedTensor};
use crate::calibrate::structured::{self, StructuredOptions, StructuredReport};
use crate::calibrate::{self, MethodOptions};
use crate::error::{Error, Result};
use crate::job::record::{metric, Recorder};
use crate::job::{refuse_overwrite, RunCtx};
use crate::quantize::{self, Ftype, Plan, QuantizeOptions, QuantizeReport};
use crunch_calib::gptq::GptqOptions;
use crunch_calib::prune::{PruneMethod, Sparsity};
use crunch_calib::text::{ChunkOptions, TextSource};
use crunch_core::gguf::GgufFile;
use crunch_model::LlamaConfig;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `prune`: zero a fraction (or an N:M pattern) of every linear weight of the blocks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PruneJob {
    /// Input GGUF (Llama family for the calibrated methods).
    pub model: PathBuf,
    /// Output GGUF (dense, with zeros; written atomically with a `.sha256` sidecar).
    pub output: PathBuf,
    /// Unstructured or N:M pruning: `magnitude`, `wanda` or `sparsegpt` (with `sparsity` or
    /// `pattern`). Leave out for structured pruning only.
    #[serde(default)]
    pub method: Option<String>,
    /// Fraction of each weight zeroed, in (0, 1) (or give `pattern`).
    #[serde(default)]
    pub sparsity: Option<f64>,
    /// `N:M`: N zeros in every M consecutive weights of a row (`2:4`, `4:8`).
    #[serde(default)]
    pub pattern: Option<String>,
    /// Calibration text (Wanda, SparseGPT); `random:N[:SEED]` for random vocabulary tokens.
    #[serde(default)]
    pub text: Option<PathBuf>,
    /// Output preset or type (`Q4_K_M`, `Q8_0`, `F16`); default: every tensor keeps its type.
    /// SparseGPT quantizes jointly onto every type GPTQ has a grid for.
    #[serde(rename = "type", default)]
    pub ftype: Option<String>,
    /// Calibration tokens per chunk.
    #[serde(default = "CalibrationSpec::default_ctx")]
    pub ctx: usize,
    /// Calibration chunks.
    #[serde(default = "CalibrationSpec::default_chunks")]
    pub chunks: usize,
    /// Structured: remove this many blocks, chosen by `layer_score` on the calibration text.
    #[serde(default)]
    pub layers: Option<usize>,
    /// Structured: remove these blocks (0-based; no calibration needed).
    #[serde(default)]
    pub remove_layers: Option<Vec<usize>>,
    /// How blocks are chosen: `angular` (the run of consecutive blocks whose input and output are
    /// closest in angle) or `influence` (the blocks that each change their input least).
    #[serde(default = "default_layer_score")]
    pub layer_score: String,
    /// Structured: the fraction of FFN channels every block keeps, in (0, 1).
    #[serde(default)]
    pub ffn: Option<f64>,
    /// The kept FFN width is rounded to a multiple of this (32 fits every GGUF block; 256 avoids
    /// the k-quants' fallback types).
    #[serde(default = "default_ffn_multiple")]
    pub ffn_multiple: usize,
    /// Structured: KV groups (a K/V head and the query heads sharing it) removed from every block.
    #[serde(default)]
    pub drop_kv_groups: Option<usize>,
    /// Structured: refit `attn_output` and `ffn_down` on the kept columns by least squares over
    /// the calibration activations (else the kept columns are copied).
    #[serde(default = "default_refit")]
    pub refit: bool,
}

fn default_layer_score() -> String {
    "angular".into()
}
fn default_ffn_multiple() -> usize {
    32
}
fn default_refit() -> bool {
    true
}

impl PruneJob {
    /// Whether the job asks for structured pruning.
    pub fn is_structured(&self) -> bool {
        self.layers.is_some() || self.remove_layers.is_some() || self.ffn.is_some() || self.drop_kv_groups.is_some()
    }
}

/// One pruned tensor in the output.
#[derive(Clone, Debug, Serialize)]
pub struct PrunedOutput {
    #[serde(flatten)]
    pub pruned: PrunedTensor,
    /// The tensor's type in the output.
    #[serde(rename = "type")]
    pub ty: String,
    /// Fraction of exact zeros the pruning step left.
    pub pruned_fraction: f64,
    /// Fraction of exact zeros in the output tensor as llama.cpp dequantizes it.
    pub zero_fraction: f64,
}

/// What `prune` did.
#[derive(Clone, Debug, Serialize)]
pub struct PruneOutcome {
    /// The unstructured method (`None` for structured pruning).
    pub method: Option<PruneMethod>,
    pub sparsity: Option<Sparsity>,
    /// The fraction of weights the sparsity asks to zero.
    pub target: Option<f64>,
    /// What structured pruning removed.
    pub structured: Option<StructuredReport>,
    pub plan: Plan,
    pub result: QuantizeReport,
    pub tensors: Vec<PrunedOutput>,
    /// Exact zeros over all pruned tensors of the output.
    pub zero_fraction: f64,
    /// Seconds spent pruning (calibration run included), before writing.
    pub prune_seconds: f64,
    pub run_id: Option<i64>,
}

/// Every tensor keeps its type: the plan of a pruned model written in the input's types.
fn keep_plan(input: &GgufFile) -> Plan {
    let ftype =
        input.metadata().get_u64("general.file_type").and_then(|c| Ftype::from_code(c as u32)).unwrap_or(Ftype::F32);
    quantize::plan::with_types(input.tensors(), &Default::default(), ftype)
}

/// The method and sparsity a job asks for, checked.
///
/// # Errors
/// An unknown method; a sparsity outside (0, 1); a malformed pattern; neither or both.
pub fn spec(j: &PruneJob) -> Result<(PruneMethod, Sparsity)> {
    let Some(method) = j.method.as_deref() else {
        return Err(Error::field(
            "prune.method",
            "give a method (magnitude, wanda, sparsegpt) with a sparsity or pattern, or structured options \
             (layers, remove_layers, ffn, drop_kv_groups)",
        ));
    };
    let method: PruneMethod = method.parse().map_err(|e: String| Error::field("prune.method", e))?;
    let sparsity = match (j.sparsity, j.pattern.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(Error::field("prune.pattern", "give either a sparsity or an N:M pattern, not both"))
        }
        (None, None) => {
            return Err(Error::field("prune.sparsity", "give a sparsity in (0, 1) (e.g. 0.5) or an N:M pattern (2:4)"))
        }
        (Some(s), None) => Sparsity::fraction(s).map_err(|e| Error::field("prune.sparsity", e))?,
        (None, Some(p)) => Sparsity::pattern(p).map_err(|e| Error::field("prune.pattern", e))?,
    };
    Ok((method, sparsity))
}

/// Exact zeros of each pruned tensor in the written file.
fn measure_zeros(output: &Path, pruned: &[PrunedTensor]) -> Result<Vec<PrunedOutput>> {
    let file = GgufFile::open(output)?;
    pruned
        .iter()
        .map(|p| {
            let t = file
                .tensor(&p.name)
                .ok_or_else(|| Error::Invalid(format!("{}: no tensor {}", output.display(), p.name)))?;
            let mut w = vec![0f32; t.n_elements() as usize];
            crunch_quant::dequantize_rows(t.ty, file.tensor_data(t), t.row_len() as usize, &mut w)
                .map_err(|source| Error::Quant { tensor: p.name.clone(), source })?;
            file.release_tensor(t);
            let zeros = w.par_iter().filter(|v| **v == 0.0).count();
            let n = p.n_elements.max(1) as f64;
            Ok(PrunedOutput {
                pruned: p.clone(),
                ty: t.ty.name().to_string(),
                pruned_fraction: p.zeros as f64 / n,
                zero_fraction: zeros as f64 / n,
            })
        })
        .collect()
}

pub(crate) fn run(j: &PruneJob, ctx: &RunCtx) -> Result<PruneOutcome> {
    if j.is_structured() {
        return run_structured(j, ctx);
    }
    let (method, sparsity) = spec(j)?;
    let input = GgufFile::open(&j.model)?;
    // Every N:M pattern must fit every row; name the first tensor it does not.
    for t in prune_targets(&input)? {
        sparsity.check_row(&t.name, t.n_cols).map_err(|e| Error::field("prune.pattern", e.to_string()))?;
    }
    let plan = match &j.ftype {
        None => keep_plan(&input),
        Some(s) => {
            let ftype: Ftype = s.parse().map_err(|e: String| Error::field("prune.type", e))?;
            let mut o = QuantizeOptions::new(ftype);
            o.allow_requantize = true;
            quantize::build_plan(input.metadata(), input.tensors(), &o)?
        }
    };
    refuse_imatrix_types(&plan)?;
    let text = match (&j.text, method.needs_calibration()) {
        (Some(t), true) => Some(TextSource::parse(&t.to_string_lossy())),
        (None, true) => {
            return Err(Error::field(
                "prune.text",
                format!(
                    "{} needs calibration text to measure activations (a text file, or random:N for N random tokens)",
                    method.name()
                ),
            ))
        }
        (_, false) => None,
    };
    if method.needs_calibration() {
        if j.ctx == 0 {
            return Err(Error::field("prune.ctx", "must be positive"));
        }
        if j.chunks == 0 {
            return Err(Error::field("prune.chunks", "must be positive"));
        }
    }
    refuse_overwrite("prune.output", &j.model, &j.output)?;
    let params = serde_json::json!({ "method": method, "sparsity": j.sparsity, "pattern": j.pattern,
                                      "type": j.ftype, "ctx": j.ctx, "chunks": j.chunks });
    let mut inputs: Vec<(&str, &Path)> = vec![("model", &j.model)];
    if let (Some(t), Some(TextSource::File(_))) = (&j.text, &text) {
        inputs.push(("text", t));
    }
    let label = format!("{} {}", method.name(), sparsity);
    let mut rec = Recorder::start("prune", ctx.registry.as_deref(), Some(label), params, &inputs);
    let spec = PruneSpec { method, sparsity, gptq: GptqOptions::default() };
    let res = (|| {
        let scratch = PathBuf::from(format!("{}.prune-tmp", j.output.display()));
        let pruned = match text {
            None => calibrate::prune::prune_magnitude(&j.model, &spec, &scratch, ctx.progress.as_ref(), &ctx.cancel)?,
            Some(text) => {
                let opts = MethodOptions {
                    method: crate::method::Method::Rtn,
                    text,
                    chunks: ChunkOptions { n_ctx: j.ctx, n_chunks: Some(j.chunks), skip: 0, shuffle_seed: None },
                    gptq: GptqOptions::default(),
                    awq: Default::default(),
                    prune: Some(spec),
                };
                calibrate::calibrate_model(&j.model, &plan, None, &opts, &scratch, ctx.progress.as_ref(), &ctx.cancel)?
            }
        };
        let replace = |name: &str| pruned.replacement(name);
        let exec = quantize::ExecOptions {
            importance: None,
            replacements: Some(&replace as quantize::ReplacementLookup),
            ..Default::default()
        };
        let report = quantize::execute_with(&input, &plan, &j.output, exec, ctx.progress.as_ref(), &ctx.cancel)?;
        let tensors = measure_zeros(&j.output, &pruned.pruned)?;
        Ok((report, tensors, pruned.seconds))
    })();
    if res.is_ok() {
        rec.output(&j.output);
        rec.plan(&plan, None);
    }
    let ((result, tensors, prune_seconds), run_id) = rec.close(res, |(r, t, _)| {
        vec![
            (metric::FILE_BYTES, r.file_bytes as f64),
            (metric::BPW, r.bpw),
            (metric::SECONDS, r.seconds),
            (metric::ZERO_FRACTION, zero_fraction(t)),
        ]
    })?;
    let zero_fraction = zero_fraction(&tensors);
    Ok(PruneOutcome {
        method: Some(method),
        sparsity: Some(sparsity),
        target: Some(sparsity.target()),
        structured: None,
        plan,
        result,
        tensors,
        zero_fraction,
        prune_seconds,
        run_id,
    })
}

impl PruneJob {
    /// The structured options of the job.
    pub fn structured(&self) -> StructuredOptions {
        StructuredOptions {
            layers: self.layers,
            remove_layers: self.remove_layers.clone(),
            layer_score: Some(self.layer_score.clone()),
            ffn: self.ffn,
            ffn_multiple: Some(self.ffn_multiple),
            drop_kv_groups: self.drop_kv_groups,
            refit: Some(self.refit),
            chunks: None,
            ctx: None,
        }
    }
}

fn run_structured(j: &PruneJob, ctx: &RunCtx) -> Result<PruneOutcome> {
    if j.method.is_some() || j.sparsity.is_some() || j.pattern.is_some() {
        return Err(Error::field(
            "prune.method",
            "structured pruning (layers, remove_layers, ffn, drop_kv_groups) and unstructured pruning (method with \
             sparsity or pattern) are separate jobs: prune structurally first, then run the unstructured job on its output",
        ));
    }
    if j.ctx == 0 {
        return Err(Error::field("prune.ctx", "must be positive"));
    }
    if j.chunks == 0 {
        return Err(Error::field("prune.chunks", "must be positive"));
    }
    let input = GgufFile::open(&j.model)?;
    let cfg = LlamaConfig::from_metadata(input.metadata())
        .map_err(|source| Error::Model { context: j.model.display().to_string(), source })?;
    let spec = j.structured().spec(&cfg, "prune")?;
    let ftype = match &j.ftype {
        None => None,
        Some(s) => Some(s.parse::<Ftype>().map_err(|e: String| Error::field("prune.type", e))?),
    };
    if let Some(f) = ftype {
        // The same preset on the unpruned model asks for the same importance matrices.
        let mut o = QuantizeOptions::new(f);
        o.allow_requantize = true;
        refuse_imatrix_types(&quantize::build_plan(input.metadata(), input.tensors(), &o)?)?;
    }
    drop(input);
    let text = match (&j.text, spec.needs_calibration()) {
        (Some(t), true) => Some(TextSource::parse(&t.to_string_lossy())),
        (None, true) => return Err(Error::field(
            "prune.text",
            "choosing blocks, FFN channels or KV groups to remove needs calibration text (a text file, or random:N)",
        )),
        (_, false) => None,
    };
    refuse_overwrite("prune.output", &j.model, &j.output)?;
    let params = serde_json::json!({ "structured": j.structured(), "type": j.ftype, "ctx": j.ctx, "chunks": j.chunks });
    let mut inputs: Vec<(&str, &Path)> = vec![("model", &j.model)];
    if let (Some(t), Some(TextSource::File(_))) = (&j.text, &text) {
        inputs.push(("text", t));
    }
    let mut rec = Recorder::start("prune", ctx.registry.as_deref(), Some(spec.label(&cfg)), params, &inputs);
    let chunks = ChunkOptions { n_ctx: j.ctx, n_chunks: Some(j.chunks), skip: 0, shuffle_seed: None };
    let res = structured::prune_to_file(
        &j.model,
        &spec,
        text.as_ref().map(|t| (t, chunks)),
        &j.output,
        ftype,
        ctx.progress.as_ref(),
        &ctx.cancel,
    );
    if let Ok(w) = &res {
        rec.output(&j.output);
        rec.plan(&w.plan, None);
    }
    let (w, run_id) = rec.close(res, |w| {
        vec![
            (metric::FILE_BYTES, w.result.file_bytes as f64),
            (metric::BPW, w.result.bpw),
            (metric::SECONDS, w.result.seconds),
        ]
    })?;
    let prune_seconds = w.structured.seconds;
    Ok(PruneOutcome {
        method: None,
        sparsity: None,
        target: None,
        structured: Some(w.structured),
        plan: w.plan,
        result: w.result,
        tensors: Vec::new(),
        zero_fraction: 0.0,
        prune_seconds,
        run_id,
    })
}

/// Types llama.cpp writes only with an importance matrix (IQ1_*, IQ2_*, some Q2_K tensors), which
/// `prune` does not take: refuse before any work.
fn refuse_imatrix_types(plan: &Plan) -> Result<()> {
    if let Some(t) = plan.tensors.iter().find(|t| t.converts() && t.requires_imatrix) {
        return Err(Error::field(
            "prune.type",
            format!(
                "{} needs an importance matrix for {} ({}), which prune does not take: prune to F16 (or leave out \
                 the type), then `crunch quantize --imatrix` the pruned file",
                plan.ftype.name(),
                t.name,
                t.dst_type
            ),
        ));
    }
    Ok(())
}

fn zero_fraction(t: &[PrunedOutput]) -> f64 {
    let n: u64 = t.iter().map(|p| p.pruned.n_elements).sum();
    let z: f64 = t.iter().map(|p| p.zero_fraction * p.pruned.n_elements as f64).sum();
    if n == 0 {
        0.0
    } else {
        z / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{from_json, Job};

    fn job(body: &str) -> PruneJob {
        match from_json(body.as_bytes()).unwrap() {
            Job::Prune(p) => p,
            other => panic!("{other:?}"),
        }
    }

    fn field_of(j: &PruneJob) -> String {
        match spec(j) {
            Err(Error::Field { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prune_jobs_parse_with_defaults_and_round_trip() {
        let j = job(
            r#"{"kind": "prune", "model": "m.gguf", "output": "o.gguf", "method": "wanda", "pattern": "2:4", "text": "t.txt"}"#,
        );
        assert_eq!((j.ctx, j.chunks, j.ftype.as_deref(), j.sparsity), (512, 64, None, None));
        assert_eq!(spec(&j).unwrap(), (PruneMethod::Wanda, Sparsity::NM { n: 2, m: 4 }));
        let back = from_json(&serde_json::to_vec(&Job::Prune(j.clone())).unwrap()).unwrap();
        assert_eq!(back, Job::Prune(j.clone()));
        let mut jj = Job::Prune(j);
        let roles: Vec<&str> = jj.paths_mut().into_iter().map(|(f, _, _)| f).collect();
        assert_eq!(roles, ["model", "output", "text"]);
        assert_eq!(jj.kind(), "prune");
    }

    #[test]
    fn wrong_fields_are_named() {
        let base = r#""kind": "prune", "model": "m", "output": "o""#;
        let j = |extra: &str| job(&format!("{{{base}, {extra}}}"));
        assert_eq!(field_of(&j(r#""method": "magnitude", "sparsity": 1.0"#)), "prune.sparsity");
        assert_eq!(field_of(&j(r#""method": "magnitude", "sparsity": 0"#)), "prune.sparsity");
        assert_eq!(field_of(&j(r#""method": "magnitude""#)), "prune.sparsity");
        assert_eq!(field_of(&j(r#""method": "magnitude", "pattern": "4:4""#)), "prune.pattern");
        assert_eq!(field_of(&j(r#""method": "magnitude", "pattern": "2:4", "sparsity": 0.5"#)), "prune.pattern");
        assert_eq!(field_of(&j(r#""method": "owl", "sparsity": 0.5"#)), "prune.method");
        match from_json(format!("{{{base}, \"method\": \"wanda\", \"sparsity\": 0.5, \"bogus\": 1}}").as_bytes()) {
            Err(Error::Field { field, .. }) => assert_eq!(field, "bogus"),
            other => panic!("{other:?}"),
        }
    }
}
