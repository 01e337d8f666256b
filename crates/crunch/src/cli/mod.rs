//! Command-line front end: clap definitions and one small function per subcommand.

mod bench;
mod convert;
mod embed;
mod eval;
mod export;
mod fit;
mod imatrix;
mod quantize;
mod report;
mod run;
mod runs;
mod search;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use crunch::progress::Cancel;
use std::path::{Path, PathBuf};

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
    /// Convert a Hugging Face folder to GGUF (optionally quantizing in the same pass).
    Convert(convert::ConvertArgs),
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
        Command::Convert(a) => convert::run(a),
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

/// Use `threads` worker threads for rayon (0 = all cores).
pub(crate) fn set_threads(threads: usize) -> Result<()> {
    if threads > 0 {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().context("setting up the thread pool")?;
    }
    Ok(())
}

fn inspect(a: InspectArgs) -> Result<()> {
    let ins = inspect_any(&a.file)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&ins)?);
    } else {
        print!("{}", crunch::inspect::render(&ins, !a.no_tensors));
    }
    Ok(())
}

fn inspect_any(path: &Path) -> Result<crunch::inspect::Inspection> {
    crunch::inspect::inspect_any(path).with_context(|| format!("inspecting {}", path.display()))
}

fn verify(a: VerifyArgs) -> Result<()> {
    let mut bad = 0;
    for f in &a.files {
        match crunch_core::output::verify_sidecar(f).with_context(|| format!("verifying {}", f.display()))? {
            crunch_core::output::Verified::Ok { .. } => println!("{}: OK", f.display()),
            crunch_core::output::Verified::Mismatch { expected, actual } => {
                println!("{}: FAILED (expected {expected}, got {actual})", f.display());
                bad += 1;
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} file(s) did not match their checksum");
    }
    Ok(())
}
