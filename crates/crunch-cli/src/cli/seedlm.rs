//! `crunch seedlm encode` and `crunch seedlm decode`.

use super::progress::TermProgress;
use anyhow::{Context, Result};
use crunch::inspect::human_bytes;
use crunch::job::{Job, Outcome, QuantizeJob, SeedlmJob};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct SeedlmArgs {
    #[command(subcommand)]
    command: SeedlmCommand,
}

#[derive(clap::Subcommand)]
enum SeedlmCommand {
    /// Encode a model's weights as SeedLM seeds: every block of weights becomes the seed of a
    /// 16-bit LFSR plus a few 4-bit coefficients (a container only crunch runs: *.seedlm).
    Encode(EncodeArgs),
    /// Decode a SeedLM container to a GGUF llama.cpp runs, of any type (F32 is exact).
    Decode(DecodeArgs),
}

#[derive(clap::Args)]
struct EncodeArgs {
    /// Input model (GGUF).
    model: PathBuf,
    /// Output container (*.seedlm).
    output: PathBuf,
    /// 4bit (8 weights, 3 coefficients) or 3bit (12 weights, 4 coefficients).
    #[arg(long, default_value = "4bit")]
    config: String,
    /// Importance matrix (llama.cpp GGUF or .dat): each fit is weighted by it.
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,
    /// Only weights whose GGUF name matches this regular expression (the rest are copied).
    #[arg(long, value_name = "REGEX")]
    tensors: Option<String>,
    /// Worker threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(clap::Args)]
struct DecodeArgs {
    /// Input container (*.seedlm).
    input: PathBuf,
    /// Output GGUF.
    output: PathBuf,
    /// Type or llama.cpp preset of the output (F32 reproduces the SeedLM weights exactly; F16,
    /// Q8_0, Q4_K_M, …).
    #[arg(long = "type", default_value = "F32")]
    ty: String,
    /// Worker threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(a: SeedlmArgs) -> Result<()> {
    match a.command {
        SeedlmCommand::Encode(a) => encode(a),
        SeedlmCommand::Decode(a) => decode(a),
    }
}

fn encode(a: EncodeArgs) -> Result<()> {
    let job = Job::Seedlm(SeedlmJob {
        model: a.model.clone(),
        output: a.output.clone(),
        config: a.config.clone(),
        imatrix: a.imatrix.clone(),
        tensors: a.tensors.clone(),
    });
    let ctx = super::job_ctx(a.threads, TermProgress::shared(a.quiet || a.json), None)?;
    let Outcome::Seedlm(o) =
        super::run_job(&job, &ctx).with_context(|| format!("encoding {} as SeedLM", a.model.display()))?
    else {
        unreachable!("a seedlm job has a seedlm outcome")
    };
    if a.json {
        return super::print_json(&o);
    }
    if !a.quiet {
        let r = &o.result;
        println!(
            "{} -> {}: {} -> {} ({:.2} bpw file; {} tensors encoded at {} bpw, {} copied) in {:.1} s; \
             the bound skipped {:.3}% of seed fits",
            a.model.display(),
            r.output,
            human_bytes(r.input_bytes),
            human_bytes(r.file_bytes),
            r.file_bpw,
            r.tensors_encoded,
            r.bits_per_weight,
            r.tensors_copied,
            r.seconds,
            100.0 * r.skipped_share
        );
    }
    Ok(())
}

fn decode(a: DecodeArgs) -> Result<()> {
    let job = Job::Quantize(QuantizeJob {
        model: a.input.clone(),
        output: a.output.clone(),
        ftype: a.ty.clone(),
        leave_output_tensor: false,
        output_tensor_type: None,
        token_embedding_type: None,
        tensor_types: Vec::new(),
        pure: false,
        allow_requantize: false,
        dry_run: false,
        imatrix: None,
        include_weights: Vec::new(),
        exclude_weights: Vec::new(),
        calibration: None,
        hqq: false,
    });
    let ctx = super::job_ctx(a.threads, TermProgress::shared(a.quiet || a.json), None)?;
    let Outcome::Quantize(o) = super::run_job(&job, &ctx).with_context(|| format!("decoding {}", a.input.display()))?
    else {
        unreachable!("a quantize job has a quantize outcome")
    };
    if a.json {
        return super::print_json(&o);
    }
    if let (false, Some(r)) = (a.quiet, &o.result) {
        println!("{} -> {} ({}, {})", a.input.display(), a.output.display(), a.ty, human_bytes(r.file_bytes));
    }
    Ok(())
}
