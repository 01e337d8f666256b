//! Command-line front end: clap arguments become a `crunch::job::Job`, `crunch::job::run` runs
//! it, and the outcome is printed. One small module per subcommand; no job logic here.

mod adapter;
mod bench;
mod convert;
mod embed;
mod eval;
mod export;
mod fit;
mod imatrix;
mod progress;
mod prune;
mod quantize;
mod report;
mod run;
mod runs;
mod search;
mod seedlm;
mod serve;
mod stage1;
mod ternary;
mod train;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use crunch::job::{Job, Outcome, RunCtx};
use crunch::progress::{Cancel, Progress};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "crunch", version, about = "Make LLMs small on the CPU, and prove what it cost")]
struct Cli {
    /// More logging (-v info, -vv debug); also RUST_LOG.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Quantize a GGUF model with llama.cpp's type names and presets (Q4_K_M, Q8_0, IQ4_XS…).
    Quantize(quantize::QuantizeArgs),
    /// Importance matrix from calibration text, as llama-imatrix makes it (also merge, resume, statistics).
    Imatrix(imatrix::ImatrixArgs),
    /// Zero weights of the linear layers: magnitude, Wanda or SparseGPT, unstructured or N:M.
    Prune(prune::PruneArgs),
    /// Correct a quantized model's error with a low-rank LoRA adapter llama.cpp loads (--lora).
    Lowrank(adapter::LowrankArgs),
    /// Merge LoRA adapters into a model, optionally quantizing in the same pass.
    Merge(adapter::MergeArgs),
    /// Train a LoRA adapter on the CPU so a quantized model matches its base (top-k KL
    /// distillation), optionally starting from a lowrank correction.
    Distill(train::DistillArgs),
    /// Fine-tune a LoRA adapter on text on the CPU (QLoRA-style on a quantized model).
    Finetune(train::FinetuneArgs),
    /// Convert a Hugging Face folder to GGUF (optionally quantizing in the same pass).
    Convert(convert::ConvertArgs),
    /// SeedLM: weights as pseudo-random generator seeds (encode; decode to any GGUF type).
    Seedlm(seedlm::SeedlmArgs),
    /// Ternary TQ1_0 / TQ2_0 weights (absmean), post-training or after ternary fine-tuning.
    Ternary(ternary::TernaryArgs),
    /// Ternary fine-tuning then SeedLM encoding, against a size ratio and an accuracy-drop target.
    Stage1(stage1::Stage1Args),
    /// Write a GGUF model back as a Hugging Face folder (config, tokenizer, safetensors).
    Export(export::ExportArgs),
    /// Measure what compression cost: perplexity, KL-divergence vs a base, multiple choice.
    Eval(eval::EvalArgs),
    /// Generate text from a prompt (greedy or sampled), streaming, with tokens/s.
    Run(run::RunArgs),
    /// Prompt-processing and generation speed and peak memory.
    Bench(bench::BenchArgs),
    /// Sentence embeddings of each line of a text with a BERT encoder, as JSONL.
    Embed(embed::EmbedArgs),
    /// Show a model file's metadata and tensors (GGUF or safetensors).
    Inspect(InspectArgs),
    /// Check a file against its `.sha256` sidecar.
    Verify(VerifyArgs),
    /// The best model for a size, bits-per-weight, memory or KL-divergence target.
    Fit(fit::FitArgs),
    /// Many candidate recipes evaluated, and the Pareto front over size, quality, speed, memory.
    Search(search::SearchArgs),
    /// Recorded runs: list, show, compare, export.
    Runs(runs::RunsArgs),
    /// An HTML page with Pareto plots, type maps and the sensitivity heat map of recorded runs.
    Report(report::ReportArgs),
    /// Run one job given as JSON (the server's wire format) and print its outcome as one JSON
    /// line: what a cluster worker runs for `search --ray`.
    #[command(hide = true)]
    Job(JobArgs),
    /// Serve every job over HTTP: jobs with live progress, cancellation, the registry, metrics,
    /// an OpenAPI document and a dashboard.
    Serve(serve::ServeArgs),
}

#[derive(clap::Args)]
struct InspectArgs {
    /// GGUF file, safetensors file, sharded index, or HF folder.
    file: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Leave out the per-tensor table.
    #[arg(long)]
    no_tensors: bool,
}

#[derive(clap::Args)]
struct JobArgs {
    /// The job: JSON text, or @FILE.
    #[arg(long)]
    json: String,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// Files to check (each against FILE.sha256).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    match cli.command {
        Command::Imatrix(a) => imatrix::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Prune(a) => prune::run(a),
        Command::Lowrank(a) => adapter::lowrank(a),
        Command::Merge(a) => adapter::merge(a),
        Command::Distill(a) => train::distill(a),
        Command::Finetune(a) => train::finetune(a),
        Command::Convert(a) => convert::run(a),
        Command::Seedlm(a) => seedlm::run(a),
        Command::Ternary(a) => ternary::run(a),
        Command::Stage1(a) => stage1::run(a),
        Command::Export(a) => export::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Run(a) => run::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Inspect(a) => inspect(a),
        Command::Verify(a) => verify(a),
        Command::Fit(a) => fit::run(a),
        Command::Search(a) => search::run(a),
        Command::Runs(a) => runs::run(a),
        Command::Report(a) => report::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Job(a) => job(a),
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// A cancel flag tripped by Ctrl-C (the job then stops and removes its temp output).
pub(crate) fn ctrl_c_cancel() -> Cancel {
    let cancel = Cancel::new();
    let c = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if c.is_cancelled() {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: stopping after the current tensor, removing partial output");
        c.cancel();
    });
    cancel
}

/// The context a command runs its job in: `threads` workers (0 = all cores), Ctrl-C cancels,
/// progress to `progress`, the run recorded in `registry` (else `$CRUNCH_REGISTRY` or the default).
pub(crate) fn job_ctx(threads: usize, progress: Arc<dyn Progress>, registry: Option<&Path>) -> Result<RunCtx> {
    Ok(RunCtx::new(threads)?
        .with_progress(progress)
        .with_cancel(ctrl_c_cancel())
        .with_registry(crunch::job::record::registry_path(registry)))
}

/// Run a job; a wrong job field is worded as the command-line option it came from.
pub(crate) fn run_job(job: &Job, ctx: &RunCtx) -> Result<Outcome> {
    crunch::job::run(job, ctx).map_err(field_error)
}

/// `--lora FILE[:SCALE]`, repeatable: the adapters of a command that runs a model.
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct LoraArgs {
    /// Apply a LoRA adapter (GGUF, llama.cpp's layout) to the model, repeatable. Each adapted
    /// layer computes W x + s·B(A x) with s = SCALE·alpha/rank, as llama.cpp's --lora-scaled
    /// FILE SCALE (SCALE defaults to 1; 0 turns the adapter off).
    #[arg(long = "lora", value_name = "FILE[:SCALE]", value_parser = crunch_model::LoraSpec::parse)]
    pub lora: Vec<crunch_model::LoraSpec>,
}

/// A library error, a wrong field worded as the command-line option it came from.
pub(crate) fn field_error(e: crunch::Error) -> anyhow::Error {
    match e {
        crunch::Error::Field { field, message } => anyhow::anyhow!("{}: {message}", flag_of(&field)),
        other => anyhow::Error::new(other),
    }
}

/// The option (or argument) a job field is given with: `fit.max_kld` -> `--max-kld`.
fn flag_of(field: &str) -> String {
    let last = field.rsplit('.').next().unwrap_or(field);
    if let Some(rest) = field.strip_prefix("fit.prune.") {
        return format!("--prune-{}", rest.replace('_', "-"));
    }
    if let Some(rest) = field.strip_prefix("fit.correction.") {
        return format!("--correction-{}", rest.replace("adapter_", "").replace('_', "-"));
    }
    if field == "fit.correction" {
        return "--correction-rank/--correction-budget".into();
    }
    if field == "convert.base" || field == "export.base" {
        return "--base".into(); // an option there, not compare's positional BASE
    }
    if let Some(rest) = field.strip_prefix("search.ray.") {
        return if rest == "address" { "--ray".into() } else { format!("--ray-{}", rest.replace('_', "-")) };
    }
    if field.starts_with("search.space.") {
        return field.trim_start_matches("search.").to_string();
    }
    if field.starts_with("search.recipes") {
        // A recipe file's field: named as the file names it.
        return field.trim_start_matches("search.").to_string();
    }
    let flag = match last {
        "model" | "output" | "path" | "files" | "base" | "models" => return last.to_ascii_uppercase(),
        "type" if field.starts_with("quantize") => return "TYPE".into(),
        "type" => "type",
        "ram_ctx" => "ctx",
        "tensor_types" => "tensor-type",
        "in_files" => "in-file",
        "recipes_file" => "recipes",
        "space_file" => "space",
        "max_co2_g" => "max-co2",
        "save_every" => "save-frequency",
        "evaluate" => "no-eval",
        "refit" => "no-refit",
        "format" if field.starts_with("imatrix") => "output-format",
        "asym" => "asym/--sym",
        "double_quant" => "no-double-quant",
        "calibration" if field.starts_with("export") => "method",
        "hqq" => "method",
        "random_tokens" => "text",
        "quant" => return "QUANT".into(),
        "adapters" => return "ADAPTER".into(),
        "temperature" => "temp",
        other => other,
    };
    format!("--{}", flag.replace('_', "-"))
}

/// Print a value as pretty JSON on stdout.
pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn job(a: JobArgs) -> Result<()> {
    let text = match a.json.strip_prefix('@') {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {p}"))?,
        None => a.json.into_bytes(),
    };
    let job = crunch::job::from_json(&text).map_err(field_error)?;
    let ctx = job_ctx(a.threads, progress::TermProgress::shared(true), None)?;
    let o = run_job(&job, &ctx)?;
    println!("{}", serde_json::to_string(&o)?);
    Ok(())
}

fn inspect(a: InspectArgs) -> Result<()> {
    let job = Job::Inspect(crunch::job::InspectJob { path: a.file.clone() });
    let ctx = RunCtx::new(1)?;
    let Outcome::Inspect(o) = run_job(&job, &ctx).with_context(|| format!("inspecting {}", a.file.display()))? else {
        unreachable!("an inspect job has an inspect outcome")
    };
    if a.json {
        print_json(&o.inspection)?;
    } else {
        print!("{}", crunch::inspect::render(&o.inspection, !a.no_tensors));
    }
    Ok(())
}

fn verify(a: VerifyArgs) -> Result<()> {
    let job = Job::Verify(crunch::job::VerifyJob { files: a.files.clone() });
    let ctx = RunCtx::new(1)?;
    let Outcome::Verify(o) = run_job(&job, &ctx).context("verifying")? else {
        unreachable!("a verify job has a verify outcome")
    };
    for v in &o.files {
        if v.ok {
            println!("{}: OK", v.file);
        } else {
            println!("{}: FAILED (expected {}, got {})", v.file, v.expected, v.actual);
        }
    }
    if o.failed > 0 {
        anyhow::bail!("{} file(s) did not match their checksum", o.failed);
    }
    Ok(())
}
