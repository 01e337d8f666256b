//! Every job crunch does, as data, and the one call that runs it.
//!
//! A [`Job`] is plain serde data (internally tagged by `kind`, unknown fields refused), so the CLI
//! builds one from its arguments, the HTTP server deserializes one from a request body, and the
//! registry stores one. [`run`] executes any job in a [`RunCtx`] (progress sink, cancel token,
//! the job's own thread pool, the registry) and returns its [`Outcome`], also plain data; front
//! ends only print or serialize it. Recording the run in the registry is part of running it.
//!
//! Field paths in errors ([`Error::Field`]) are `kind.field` (`fit.max_kld`), so each front end
//! can word them its own way (`--max-kld` on the command line, a JSON field on the server).
//!
//! Names on the wire are the same across kinds: `model` (the input model), `output`, `text`
//! (a text file), `ctx` / `chunks` (the evaluation window: tokens per chunk, number of chunks).

mod ctx;
mod kinds;
pub mod record;

pub use ctx::{pool, RunCtx};
pub use kinds::*;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One unit of work. Parse one with [`from_json`] (which names the wrong field).
// A job is built once per run and moved whole; the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    /// Quantize a GGUF model to a llama.cpp preset or type (optionally calibrated).
    Quantize(QuantizeJob),
    /// Hugging Face folder to GGUF (optionally quantized in the same pass).
    Convert(ConvertJob),
    /// GGUF back to a Hugging Face folder.
    Export(ExportJob),
    /// Importance matrix from calibration text (or merged from earlier ones).
    Imatrix(ImatrixJob),
    /// Zero weights of the linear layers (magnitude, Wanda, SparseGPT; unstructured or N:M).
    Prune(PruneJob),
    /// A LoRA adapter correcting a quantized model's error (whitened SVD).
    Lowrank(LowrankJob),
    /// LoRA adapters merged into a model (optionally quantized in the same pass).
    Merge(MergeJob),
    /// A LoRA adapter trained so a quantized model matches its base (top-k KL distillation).
    Distill(TrainJob),
    /// A LoRA adapter trained on text (causal LM; QLoRA-style on a quantized model).
    Finetune(TrainJob),
    /// A model's weights encoded as SeedLM seeds (a container only crunch runs).
    Seedlm(SeedlmJob),
    /// A model's block linears as ternary TQ1_0 / TQ2_0 weights, optionally after ternary
    /// fine-tuning distilled from the model itself.
    Ternary(TernaryJob),
    /// Ternary fine-tuning then SeedLM encoding, against a size-ratio and accuracy-drop target.
    Stage1(Stage1Job),
    /// Perplexity over a text, as llama-perplexity computes it.
    Perplexity(PerplexityJob),
    /// KL-divergence, same top token and perplexity of quantized models against a base.
    Compare(CompareJob),
    /// Multiple-choice accuracy.
    Choice(ChoiceJob),
    /// Prompt-processing and generation speed, peak memory.
    Bench(BenchJob),
    /// The best model for a size, bits-per-weight, memory or KL-divergence target.
    Fit(FitJob),
    /// Many recipes evaluated; the Pareto front.
    Search(SearchJob),
    /// Sentence embeddings of every line with a BERT encoder.
    Embed(EmbedJob),
    /// Cosine similarity of two encoders' sentence embeddings.
    EmbedCompare(EmbedCompareJob),
    /// Text from a prompt.
    Generate(GenerateJob),
    /// A model file's metadata and tensors.
    Inspect(InspectJob),
    /// Files checked against their `.sha256` sidecars.
    Verify(VerifyJob),
}

/// Whether a path in a job is read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathRole {
    /// Read only (a model, a text, an imatrix).
    Input,
    /// Written (a file or a folder).
    Output,
}

impl Job {
    /// The kind's name on the wire (`quantize`, `fit`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Job::Quantize(_) => "quantize",
            Job::Convert(_) => "convert",
            Job::Export(_) => "export",
            Job::Imatrix(_) => "imatrix",
            Job::Prune(_) => "prune",
            Job::Lowrank(_) => "lowrank",
            Job::Merge(_) => "merge",
            Job::Distill(_) => "distill",
            Job::Finetune(_) => "finetune",
            Job::Seedlm(_) => "seedlm",
            Job::Ternary(_) => "ternary",
            Job::Stage1(_) => "stage1",
            Job::Perplexity(_) => "perplexity",
            Job::Compare(_) => "compare",
            Job::Choice(_) => "choice",
            Job::Bench(_) => "bench",
            Job::Fit(_) => "fit",
            Job::Search(_) => "search",
            Job::Embed(_) => "embed",
            Job::EmbedCompare(_) => "embed_compare",
            Job::Generate(_) => "generate",
            Job::Inspect(_) => "inspect",
            Job::Verify(_) => "verify",
        }
    }

    /// Whether the job is heavy (runs a model or rewrites one) rather than a quick look.
    pub fn is_heavy(&self) -> bool {
        !matches!(self, Job::Inspect(_) | Job::Verify(_))
    }

    /// Programs the job would start, named in the job itself (a search's `ray.python` and
    /// `ray.crunch`): a server refuses these rather than run what a request names.
    pub fn programs(&self) -> Vec<(&'static str, &std::path::Path)> {
        let mut v: Vec<(&'static str, &std::path::Path)> = Vec::new();
        if let Job::Search(SearchJob { ray: Some(r), .. }) = self {
            if let Some(p) = &r.python {
                v.push(("ray.python", p));
            }
            if let Some(p) = &r.crunch {
                v.push(("ray.crunch", p));
            }
        }
        v
    }

    /// Every path the job reads or writes, with its field name and role, mutable (a server
    /// resolves and confines them before running the job).
    pub fn paths_mut(&mut self) -> Vec<(&'static str, PathRole, &mut PathBuf)> {
        use PathRole::{Input as I, Output as O};
        let mut v: Vec<(&'static str, PathRole, &mut PathBuf)> = Vec::new();
        match self {
            Job::Quantize(j) => {
                v.push(("model", I, &mut j.model));
                v.push(("output", O, &mut j.output));
                if let Some(p) = &mut j.imatrix {
                    v.push(("imatrix", I, p));
                }
                if let Some(c) = &mut j.calibration {
                    v.push(("calibration.text", I, &mut c.text));
                }
            }
            Job::Convert(j) => {
                v.push(("model", I, &mut j.model));
                v.push(("output", O, &mut j.output));
                if let Some(p) = &mut j.base {
                    v.push(("base", I, p));
                }
            }
            Job::Export(j) => {
                v.push(("model", I, &mut j.model));
                v.push(("output", O, &mut j.output));
                if let Some(p) = &mut j.base {
                    v.push(("base", I, p));
                }
            }
            Job::Imatrix(j) => {
                if let Some(p) = &mut j.model {
                    v.push(("model", I, p));
                }
                if let Some(p) = &mut j.text {
                    v.push(("text", I, p));
                }
                v.push(("output", O, &mut j.output));
                for p in &mut j.in_files {
                    v.push(("in_files", I, p));
                }
                for a in &mut j.lora {
                    v.push(("lora", I, &mut a.path));
                }
            }
            Job::Prune(j) => {
                v.push(("model", I, &mut j.model));
                v.push(("output", O, &mut j.output));
                if let Some(p) = &mut j.text {
                    v.push(("text", I, p));
                }
            }
            Job::Lowrank(j) => {
                v.push(("base", I, &mut j.base));
                v.push(("quant", I, &mut j.quant));
                v.push(("output", O, &mut j.output));
                if let Some(p) = &mut j.text {
                    v.push(("text", I, p));
                }
            }
            Job::Merge(j) => {
                v.push(("model", I, &mut j.model));
                for a in &mut j.adapters {
                    v.push(("adapters", I, &mut a.path));
                }
                v.push(("output", O, &mut j.output));
            }
            Job::Seedlm(j) => {
                v.push(("model", I, &mut j.model));
                v.push(("output", O, &mut j.output));
                if let Some(p) = &mut j.imatrix {
                    v.push(("imatrix", I, p));
                }
            }
            Job::Ternary(j) => {
                v.push(("model", I, &mut j.model));
                v.push(("output", O, &mut j.output));
                if let Some(p) = &mut j.text {
                    v.push(("text", I, p));
                }
                for (name, p) in [("twin", &mut j.twin), ("plot", &mut j.plot)] {
                    if let Some(p) = p {
                        v.push((name, O, p));
                    }
                }
            }
            Job::Stage1(j) => {
                // The metrics file made explicit (it derives from the output); the intermediate
                // `OUT.ternary.gguf` sits beside the output and is removed by the job itself when
                // it does not finish.
                j.metrics = Some(j.metrics_path());
                v.push(("model", I, &mut j.model));
                v.push(("text", I, &mut j.text));
                for (name, p) in [
                    ("tasks", &mut j.tasks),
                    ("eval_text", &mut j.eval_text),
                    ("imatrix", &mut j.imatrix),
                    ("ternary", &mut j.ternary),
                ] {
                    if let Some(p) = p {
                        v.push((name, I, p));
                    }
                }
                v.push(("output", O, &mut j.output));
                if let Some(p) = &mut j.metrics {
                    v.push(("metrics", O, p));
                }
            }
            Job::Distill(j) | Job::Finetune(j) => {
                for (name, p) in [("base", &mut j.base), ("base_logits", &mut j.base_logits)] {
                    if let Some(p) = p {
                        v.push((name, I, p));
                    }
                }
                v.push(("model", I, &mut j.model));
                v.push(("text", I, &mut j.text));
                if let Some(a) = &mut j.init {
                    v.push(("init", I, &mut a.path));
                }
                v.push(("output", O, &mut j.output));
                for (name, p) in
                    [("save_base", &mut j.save_base), ("checkpoint", &mut j.checkpoint), ("plot", &mut j.plot)]
                {
                    if let Some(p) = p {
                        v.push((name, O, p));
                    }
                }
            }
            Job::Perplexity(j) => {
                v.push(("model", I, &mut j.model));
                v.push(("text", I, &mut j.text));
                for a in &mut j.lora {
                    v.push(("lora", I, &mut a.path));
                }
            }
            Job::Compare(j) => {
                if let Some(p) = &mut j.base {
                    v.push(("base", I, p));
                }
                for p in &mut j.models {
                    v.push(("models", I, p));
                }
                if let Some(p) = &mut j.text {
                    v.push(("text", I, p));
                }
                if let Some(p) = &mut j.base_logits {
                    v.push(("base_logits", I, p));
                }
                if let Some(p) = &mut j.save_base {
                    v.push(("save_base", O, p));
                }
                for a in &mut j.lora {
                    v.push(("lora", I, &mut a.path));
                }
            }
            Job::Choice(j) => {
                v.push(("model", I, &mut j.model));
                v.push(("tasks", I, &mut j.tasks));
                for a in &mut j.lora {
                    v.push(("lora", I, &mut a.path));
                }
            }
            Job::Bench(j) => {
                v.push(("model", I, &mut j.model));
                for a in &mut j.lora {
                    v.push(("lora", I, &mut a.path));
                }
            }
            Job::Fit(j) => {
                v.push(("model", I, &mut j.model));
                if let Some(p) = &mut j.output {
                    v.push(("output", O, p));
                }
                j.settings.paths_mut(&mut v);
            }
            Job::Search(j) => {
                v.push(("model", I, &mut j.model));
                if let Some(p) = &mut j.recipes_file {
                    v.push(("recipes_file", I, p));
                }
                if let Some(p) = &mut j.out_dir {
                    v.push(("out_dir", O, p));
                }
                if let Some(p) = &mut j.space_file {
                    v.push(("space_file", I, p));
                }
                if let Some(p) = &mut j.measure.choice_tasks {
                    v.push(("measure.choice_tasks", I, p));
                }
                j.settings.paths_mut(&mut v);
            }
            Job::Embed(j) => {
                v.push(("model", I, &mut j.model));
                v.push(("text", I, &mut j.text));
                v.push(("output", O, &mut j.output));
            }
            Job::EmbedCompare(j) => {
                v.push(("base", I, &mut j.base));
                v.push(("model", I, &mut j.model));
                v.push(("text", I, &mut j.text));
            }
            Job::Generate(j) => {
                v.push(("model", I, &mut j.model));
                for a in &mut j.lora {
                    v.push(("lora", I, &mut a.path));
                }
            }
            Job::Inspect(j) => v.push(("path", I, &mut j.path)),
            Job::Verify(j) => {
                for p in &mut j.files {
                    v.push(("files", I, p));
                }
            }
        }
        v
    }

    /// Every output path of the job (files or folders it writes) that a run which did not finish
    /// must not leave behind, which is all of them but [`KEPT_WHEN_STOPPED`].
    pub fn outputs(&self) -> Vec<PathBuf> {
        let mut j = self.clone();
        j.paths_mut()
            .into_iter()
            .filter(|(f, r, _)| *r == PathRole::Output && !KEPT_WHEN_STOPPED.contains(f))
            .map(|(_, _, p)| p.clone())
            .collect()
    }
}

/// Output fields a stopped run keeps: a training checkpoint (to resume from) and the base
/// log-probabilities a distillation saved (complete once written, reusable by the next run).
pub const KEPT_WHEN_STOPPED: [&str; 2] = ["checkpoint", "save_base"];

/// What a job produced: one variant per kind, each with the id of its registry run when
/// recorded.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    Quantize(QuantizeOutcome),
    Convert(ConvertOutcome),
    Export(ExportOutcome),
    Imatrix(ImatrixOutcome),
    Prune(PruneOutcome),
    Lowrank(LowrankOutcome),
    Merge(MergeOutcome),
    Distill(TrainOutcome),
    Finetune(TrainOutcome),
    Seedlm(SeedlmOutcome),
    Ternary(TernaryOutcome),
    Stage1(Stage1Outcome),
    Perplexity(PerplexityOutcome),
    Compare(CompareOutcome),
    Choice(ChoiceOutcome),
    Bench(BenchOutcome),
    Fit(FitOutcome),
    Search(SearchOutcome),
    Embed(EmbedOutcome),
    EmbedCompare(EmbedCompareOutcome),
    Generate(GenerateOutcome),
    Inspect(InspectOutcome),
    Verify(VerifyOutcome),
}

impl Outcome {
    /// The registry run the job recorded, if any.
    pub fn run_id(&self) -> Option<i64> {
        match self {
            Outcome::Quantize(o) => o.run_id,
            Outcome::Convert(o) => o.run_id,
            Outcome::Export(o) => o.run_id,
            Outcome::Imatrix(o) => o.run_id,
            Outcome::Prune(o) => o.run_id,
            Outcome::Lowrank(o) => o.run_id,
            Outcome::Merge(o) => o.run_id,
            Outcome::Distill(o) | Outcome::Finetune(o) => o.run_id,
            Outcome::Seedlm(o) => o.run_id,
            Outcome::Ternary(o) => o.run_id,
            Outcome::Stage1(o) => o.run_id,
            Outcome::Perplexity(o) => o.run_id,
            Outcome::Compare(o) => o.run_ids.last().copied().flatten(),
            Outcome::Choice(o) => o.run_id,
            Outcome::Bench(o) => o.run_id,
            Outcome::Fit(o) => o.run_id,
            Outcome::Search(o) => o.run_id,
            Outcome::Embed(_)
            | Outcome::EmbedCompare(_)
            | Outcome::Generate(_)
            | Outcome::Inspect(_)
            | Outcome::Verify(_) => None,
        }
    }
}

/// Run a job to the end in `ctx`: every parallel loop on `ctx.pool`, progress to
/// `ctx.progress`, the run recorded in `ctx.registry`.
///
/// # Errors
/// A job field that is wrong ([`Error::Field`]), unreadable or invalid inputs (each naming the
/// file, tensor or key), I/O, [`Error::Cancelled`] (no output left behind).
pub fn run(job: &Job, ctx: &RunCtx) -> Result<Outcome> {
    ctx.check_cancel()?;
    // Models may be Hugging Face folders (quantized checkpoints included) wherever one is read.
    crate::convert::register_folder_opener();
    ctx.pool.install(|| match job {
        Job::Quantize(j) => kinds::quantize::run(j, ctx).map(Outcome::Quantize),
        Job::Convert(j) => kinds::convert::run(j, ctx).map(Outcome::Convert),
        Job::Export(j) => kinds::export::run(j, ctx).map(Outcome::Export),
        Job::Imatrix(j) => kinds::imatrix::run(j, ctx).map(Outcome::Imatrix),
        Job::Prune(j) => kinds::prune::run(j, ctx).map(Outcome::Prune),
        Job::Lowrank(j) => kinds::adapter::run_lowrank(j, ctx).map(Outcome::Lowrank),
        Job::Merge(j) => kinds::adapter::run_merge(j, ctx).map(Outcome::Merge),
        Job::Distill(j) => kinds::train::run(j, "distill", ctx).map(Outcome::Distill),
        Job::Finetune(j) => kinds::train::run(j, "finetune", ctx).map(Outcome::Finetune),
        Job::Seedlm(j) => kinds::seedlm::run(j, ctx).map(Outcome::Seedlm),
        Job::Ternary(j) => kinds::ternary::run(j, ctx).map(Outcome::Ternary),
        Job::Stage1(j) => kinds::stage1::run(j, ctx).map(Outcome::Stage1),
        Job::Perplexity(j) => kinds::eval::perplexity(j, ctx).map(Outcome::Perplexity),
        Job::Compare(j) => kinds::eval::compare(j, ctx).map(Outcome::Compare),
        Job::Choice(j) => kinds::eval::choice(j, ctx).map(Outcome::Choice),
        Job::Bench(j) => kinds::eval::bench(j, ctx).map(Outcome::Bench),
        Job::Fit(j) => kinds::fit::run(j, ctx).map(Outcome::Fit),
        Job::Search(j) => kinds::search::run(j, ctx).map(Outcome::Search),
        Job::Embed(j) => kinds::eval::embed(j, ctx).map(Outcome::Embed),
        Job::EmbedCompare(j) => kinds::eval::embed_compare(j, ctx).map(Outcome::EmbedCompare),
        Job::Generate(j) => kinds::eval::generate(j, ctx).map(Outcome::Generate),
        Job::Inspect(j) => kinds::inspect(j).map(Outcome::Inspect),
        Job::Verify(j) => kinds::verify(j).map(Outcome::Verify),
    })
}

/// Parse a job from JSON, naming the field that is wrong.
///
/// # Errors
/// Malformed JSON (field `job`), a missing or unknown `kind`, or a wrong, missing or unknown
/// field ([`Error::Field`] with its path, e.g. `calibration.ctx`).
pub fn from_json(body: &[u8]) -> Result<Job> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| Error::field("job", e.to_string()))?;
    let serde_json::Value::Object(mut fields) = v else {
        return Err(Error::field("job", "expected a JSON object with a \"kind\""));
    };
    let kind = match fields.remove("kind") {
        Some(serde_json::Value::String(k)) => k,
        Some(_) => return Err(Error::field("kind", "expected a string")),
        None => return Err(Error::field("kind", format!("missing; one of {}", KINDS.join(", ")))),
    };
    let rest = serde_json::Value::Object(fields);
    Ok(match kind.as_str() {
        "quantize" => Job::Quantize(part(rest)?),
        "convert" => Job::Convert(part(rest)?),
        "export" => Job::Export(part(rest)?),
        "imatrix" => Job::Imatrix(part(rest)?),
        "prune" => Job::Prune(part(rest)?),
        "lowrank" => Job::Lowrank(part(rest)?),
        "merge" => Job::Merge(part(rest)?),
        "distill" => Job::Distill(part(rest)?),
        "finetune" => Job::Finetune(part(rest)?),
        "seedlm" => Job::Seedlm(part(rest)?),
        "ternary" => Job::Ternary(part(rest)?),
        "stage1" => Job::Stage1(part(rest)?),
        "perplexity" => Job::Perplexity(part(rest)?),
        "compare" => Job::Compare(part(rest)?),
        "choice" => Job::Choice(part(rest)?),
        "bench" => Job::Bench(part(rest)?),
        "fit" => Job::Fit(part(rest)?),
        "search" => Job::Search(part(rest)?),
        "embed" => Job::Embed(part(rest)?),
        "embed_compare" => Job::EmbedCompare(part(rest)?),
        "generate" => Job::Generate(part(rest)?),
        "inspect" => Job::Inspect(part(rest)?),
        "verify" => Job::Verify(part(rest)?),
        other => return Err(Error::field("kind", format!("unknown kind {other:?}; one of {}", KINDS.join(", ")))),
    })
}

/// Every job kind's name.
pub const KINDS: [&str; 23] = [
    "quantize",
    "convert",
    "export",
    "imatrix",
    "prune",
    "lowrank",
    "merge",
    "distill",
    "finetune",
    "seedlm",
    "ternary",
    "stage1",
    "perplexity",
    "compare",
    "choice",
    "bench",
    "fit",
    "search",
    "embed",
    "embed_compare",
    "generate",
    "inspect",
    "verify",
];

/// One kind's fields, with the path of the first wrong one.
fn part<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let mut field = if path == "." { String::new() } else { path };
        // An unknown or missing field is reported at its parent: name it.
        for prefix in ["unknown field `", "missing field `"] {
            let name = message.strip_prefix(prefix).and_then(|r| r.split('`').next());
            if let Some(name) = name.filter(|n| field != *n && !field.ends_with(&format!(".{n}"))) {
                field = if field.is_empty() { name.to_string() } else { format!("{field}.{name}") };
            }
        }
        Error::field(if field.is_empty() { "job".to_string() } else { field }, message)
    })
}

/// Refuse an output that is one of the inputs.
pub(crate) fn refuse_overwrite(field: &str, input: &std::path::Path, output: &std::path::Path) -> Result<()> {
    let same = match (input.canonicalize(), output.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    };
    if same {
        return Err(Error::field(
            field,
            format!("{} is the input file; refusing to overwrite the input", output.display()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_parse_with_defaults_and_round_trip() {
        let j = from_json(br#"{"kind": "quantize", "model": "a.gguf", "output": "b.gguf", "type": "Q4_K_M"}"#).unwrap();
        let Job::Quantize(q) = &j else { panic!("{j:?}") };
        assert_eq!(q.ftype, "Q4_K_M");
        assert!(!q.dry_run && q.calibration.is_none());
        assert_eq!(j.kind(), "quantize");
        let back = from_json(&serde_json::to_vec(&j).unwrap()).unwrap();
        assert_eq!(back, j);

        let f = from_json(br#"{"kind": "fit", "model": "m.gguf", "max_size": "90MB", "settings": {"text": "t.txt"}, "dry_run": true}"#)
            .unwrap();
        let Job::Fit(fit) = &f else { panic!() };
        assert_eq!(fit.target().unwrap(), crate::fit::Target::MaxSize(90_000_000));
        assert_eq!(fit.settings.eval_ctx, 256);
        assert_eq!(from_json(&serde_json::to_vec(&f).unwrap()).unwrap(), f);
    }

    #[test]
    fn errors_name_the_field() {
        let field_of = |body: &str| match from_json(body.as_bytes()) {
            Err(Error::Field { field, .. }) => field,
            other => panic!("{body}: {other:?}"),
        };
        assert_eq!(
            field_of(r#"{"kind": "quantize", "model": "a", "output": "b", "type": "Q4_0", "bogus": 1}"#),
            "bogus"
        );
        assert_eq!(field_of(r#"{"kind": "quantize", "model": "a", "type": "Q4_0"}"#), "output");
        assert_eq!(
            field_of(r#"{"kind": "fit", "model": "a", "settings": {"text": "t", "band": 2, "nope": 0}}"#),
            "settings.nope"
        );
        assert_eq!(field_of(r#"{"kind": "quantize", "model": 3, "output": "b", "type": "Q4_0"}"#), "model");
        assert_eq!(
            field_of(
                r#"{"kind": "quantize", "model": "a", "output": "b", "type": "Q4_0", "calibration": {"method": "gptq", "text": "t", "ctx": "x"}}"#
            ),
            "calibration.ctx"
        );
        assert_eq!(field_of(r#"{"kind": "nope"}"#), "kind");
        assert_eq!(field_of(r#"{"model": "a"}"#), "kind");
        assert_eq!(field_of(r#"{"kind": "quantize""#), "job");
        let unknown = from_json(br#"{"kind": "quantize", "model": "a", "output": "b", "type": "Q4_0", "bogus": 1}"#);
        assert!(unknown.unwrap_err().to_string().contains("bogus"));
    }

    #[test]
    fn paths_are_listed_with_their_roles() {
        let mut j = from_json(
            br#"{"kind": "quantize", "model": "a.gguf", "output": "b.gguf", "type": "Q4_0", "imatrix": "i.gguf"}"#,
        )
        .unwrap();
        let p: Vec<(&str, PathRole)> = j.paths_mut().into_iter().map(|(f, r, _)| (f, r)).collect();
        assert_eq!(p, [("model", PathRole::Input), ("output", PathRole::Output), ("imatrix", PathRole::Input)]);
        assert_eq!(j.outputs(), [PathBuf::from("b.gguf")]);

        // every adapter of a job that runs a model is an input, scale 1 by default
        let mut j = from_json(
            br#"{"kind": "compare", "base": "a.gguf", "models": ["q.gguf"], "text": "t.txt",
                 "lora": [{"path": "l1.gguf"}, {"path": "l2.gguf", "scale": 0.5}]}"#,
        )
        .unwrap();
        let Job::Compare(c) = &j else { panic!() };
        assert_eq!((c.lora[0].scale, c.lora[1].scale), (1.0, 0.5));
        assert_eq!(from_json(&serde_json::to_vec(&j).unwrap()).unwrap(), j);
        let p: Vec<&str> =
            j.paths_mut().into_iter().filter(|(f, ..)| *f == "lora").map(|(.., p)| p.to_str().unwrap()).collect();
        assert_eq!(p, ["l1.gguf", "l2.gguf"]);
        let no_lora = serde_json::to_value(from_json(br#"{"kind": "bench", "model": "a.gguf"}"#).unwrap()).unwrap();
        assert!(no_lora.get("lora").is_none(), "{no_lora}");
    }

    #[test]
    fn fit_needs_exactly_one_target() {
        let j = |extra: &str| {
            let body = format!(r#"{{"kind": "fit", "model": "m", "settings": {{"text": "t"}}{extra}}}"#);
            let Job::Fit(f) = from_json(body.as_bytes()).unwrap() else { panic!() };
            f.target()
        };
        assert!(matches!(j(""), Err(Error::Field { .. })));
        assert!(matches!(j(r#", "max_bpw": 4, "max_kld": 0.1"#), Err(Error::Field { .. })));
        assert!(matches!(j(r#", "max_kld": -1"#), Err(Error::Field { field, .. }) if field == "fit.max_kld"));
        assert!(j(r#", "max_ram": 1000000000"#).is_ok());
    }
}
