//! `crunch quantize`.

use super::progress::TermProgress;
use anyhow::{bail, Context, Result};
use crunch::inspect::human_bytes;
use crunch::job::{CalibrationSpec, Job, Outcome, QuantizeJob};
use crunch::method::Method;
use crunch::quantize::{Plan, Reason};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// Input GGUF model (F32/F16/BF16, or quantized with --allow-requantize).
    input: PathBuf,
    /// Output GGUF file (written atomically; OUTPUT.sha256 is written beside it).
    output: PathBuf,
    /// Preset or type, llama.cpp names: Q4_K_M, Q4_K_S, Q5_K_M, Q5_K_S, Q3_K_S/M/L, Q2_K, Q6_K,
    /// Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, F16, BF16, F32.
    #[arg(value_name = "TYPE")]
    ftype: String,
    /// Worker threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    /// Keep output.weight unquantized.
    #[arg(long)]
    leave_output_tensor: bool,
    /// Type for output.weight (and tied token embeddings).
    #[arg(long, value_name = "TYPE")]
    output_tensor_type: Option<String>,
    /// Type for token_embd.weight.
    #[arg(long, value_name = "TYPE")]
    token_embedding_type: Option<String>,
    /// PATTERN=TYPE: tensors whose name matches the regex PATTERN get TYPE (repeatable; first wins).
    #[arg(long, value_name = "PATTERN=TYPE")]
    tensor_type: Vec<String>,
    /// Every quantizable tensor gets the preset's default type (no per-tensor rules).
    #[arg(long)]
    pure: bool,
    /// Allow quantizing tensors that are already quantized.
    #[arg(long)]
    allow_requantize: bool,
    /// Print the plan (per-tensor types and final size) and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Machine-readable JSON on stdout (plan and result).
    #[arg(long)]
    json: bool,
    /// Print the plan as llama-quantize --tensor-type arguments.
    #[arg(long)]
    print_tensor_types: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
    /// Importance matrix (llama.cpp GGUF or legacy .dat, e.g. from `crunch imatrix` or
    /// llama-imatrix): importance-weighted quantization of every tensor it covers.
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,
    /// Use the imatrix only for tensors whose name contains this (repeatable).
    #[arg(long, value_name = "NAME")]
    include_weights: Vec<String>,
    /// Do not use the imatrix for tensors whose name contains this (repeatable).
    #[arg(long, value_name = "NAME")]
    exclude_weights: Vec<String>,
    #[command(flatten)]
    calib: CalibArgs,
}

/// Calibrated methods (GPTQ, AWQ) and their calibration text.
#[derive(clap::Args)]
pub struct CalibArgs {
    /// Method: rtn (plain), hqq (half-quadratic scale and minimum for the Q4_1 / Q5_1 tensors,
    /// no data), or the calibrated gptq, awq, awq,gptq.
    #[arg(long, value_name = "METHOD", default_value = "rtn", value_parser = parse_method)]
    method: QuantMethod,
    /// Calibration text file for GPTQ/AWQ (or random:N[:SEED] for N random vocabulary tokens).
    #[arg(long, value_name = "FILE")]
    text: Option<String>,
    /// Calibration context (tokens per chunk).
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Calibration chunks (default 64).
    #[arg(long, default_value_t = 64)]
    chunks: usize,
    /// Pick calibration chunks at random positions of the text with this seed (default: in order).
    #[arg(long)]
    seed: Option<u64>,
    /// GPTQ dampening, as a fraction of the mean of the Hessian's diagonal.
    #[arg(long, default_value_t = 0.01)]
    damp: f32,
    /// GPTQ columns per lazy update block.
    #[arg(long, default_value_t = 128)]
    gptq_block: usize,
    /// GPTQ: quantize columns in order of decreasing Hessian diagonal (act-order).
    #[arg(long)]
    act_order: bool,
    /// AWQ: grid points for the scale exponent alpha in [0, 1).
    #[arg(long, default_value_t = 20)]
    awq_grid: usize,
}

/// `--method`: one of crunch's methods, or HQQ (which needs no data).
#[derive(Clone, Copy, Debug)]
pub enum QuantMethod {
    Hqq,
    Other(Method),
}

fn parse_method(s: &str) -> Result<QuantMethod, String> {
    if s.trim().eq_ignore_ascii_case("hqq") {
        return Ok(QuantMethod::Hqq);
    }
    s.parse::<Method>().map(QuantMethod::Other).map_err(|e| format!("{e}, hqq"))
}

impl QuantizeArgs {
    /// The job these arguments ask for.
    pub fn job(&self) -> Job {
        let c = &self.calib;
        let (method, hqq) = match c.method {
            QuantMethod::Hqq => (Method::Rtn, true),
            QuantMethod::Other(m) => (m, false),
        };
        let calibration = c.text.as_ref().filter(|_| method.is_calibrated()).map(|text| CalibrationSpec {
            method,
            text: PathBuf::from(text),
            ctx: c.ctx,
            chunks: c.chunks,
            seed: c.seed,
            damp: c.damp,
            gptq_block: c.gptq_block,
            act_order: c.act_order,
            awq_grid: c.awq_grid,
        });
        Job::Quantize(QuantizeJob {
            model: self.input.clone(),
            output: self.output.clone(),
            ftype: self.ftype.clone(),
            leave_output_tensor: self.leave_output_tensor,
            output_tensor_type: self.output_tensor_type.clone(),
            token_embedding_type: self.token_embedding_type.clone(),
            tensor_types: self.tensor_type.clone(),
            pure: self.pure,
            allow_requantize: self.allow_requantize,
            dry_run: self.dry_run,
            imatrix: self.imatrix.clone(),
            include_weights: self.include_weights.clone(),
            exclude_weights: self.exclude_weights.clone(),
            calibration,
            hqq,
        })
    }
}

fn print_plan(plan: &Plan) {
    println!("{:<36} {:>20} {:>8} -> {:<8} {:>11} {:>11}  note", "tensor", "shape", "from", "to", "size", "new size");
    for t in &plan.tensors {
        let dims: Vec<String> = t.dims.iter().map(|d| d.to_string()).collect();
        let note = match (t.reason, t.wanted) {
            (Reason::Fallback, Some(w)) => {
                format!("fallback from {w} (row {} not a multiple of {})", t.dims[0], w.block_size())
            }
            (Reason::PresetRule, _) => "preset rule".into(),
            (Reason::User, _) => "user override".into(),
            (Reason::Kept, _) => "kept".into(),
            _ => String::new(),
        };
        println!(
            "{:<36} {:>20} {:>8} -> {:<8} {:>11} {:>11}  {note}",
            t.name,
            format!("[{}]", dims.join(", ")),
            t.src_type.name(),
            t.dst_type.name(),
            human_bytes(t.src_bytes),
            human_bytes(t.dst_bytes)
        );
    }
    let counts: Vec<String> = plan.type_counts().iter().map(|(t, n)| format!("{t}: {n}")).collect();
    println!("types: {}", counts.join(", "));
    if plan.n_fallback > 0 {
        println!("{} tensor(s) fell back to another type because of their row length", plan.n_fallback);
    }
    println!(
        "size: {} -> {} ({:.2} bits per weight)",
        human_bytes(plan.src_bytes),
        human_bytes(plan.dst_bytes),
        plan.bpw()
    );
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    if let QuantMethod::Other(m) = a.calib.method {
        if m.is_calibrated() && a.calib.text.is_none() {
            bail!("--method {m}: give calibration text with --text FILE (or random:N)");
        }
    }
    let ctx = super::job_ctx(a.threads, TermProgress::shared(a.quiet || a.json || a.dry_run), None)?;
    let Outcome::Quantize(o) =
        super::run_job(&a.job(), &ctx).with_context(|| format!("quantizing {}", a.input.display()))?
    else {
        unreachable!("a quantize job has a quantize outcome")
    };
    let plan = &o.plan;
    if a.print_tensor_types {
        for arg in plan.as_tensor_type_args() {
            println!("{arg}");
        }
    }
    let Some(report) = &o.result else {
        if a.json {
            super::print_json(&serde_json::json!({ "plan": plan }))?;
        } else if !a.print_tensor_types {
            print_plan(plan);
        }
        return Ok(());
    };
    if a.json {
        super::print_json(&serde_json::json!({ "plan": plan, "result": report }))?;
    } else if !a.quiet {
        let counts: Vec<String> = plan.type_counts().iter().map(|(t, n)| format!("{t}: {n}")).collect();
        println!(
            "{} -> {}: {} -> {} ({:.2} bpw) in {:.2} s [{}]\nsha256 {}",
            a.input.display(),
            a.output.display(),
            human_bytes(report.src_bytes),
            human_bytes(report.file_bytes),
            report.bpw,
            report.seconds,
            counts.join(", "),
            report.sha256
        );
    }
    Ok(())
}
