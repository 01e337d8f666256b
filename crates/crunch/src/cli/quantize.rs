//! `crunch quantize`.

use anyhow::{bail, Context, Result};
use crunch::inspect::human_bytes;
use crunch::progress::TermProgress;
use crunch::quantize::{self, Ftype, Plan, QuantizeOptions, Reason};
use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;
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
}

fn parse_type(s: &str, what: &str) -> Result<GgmlType> {
    s.parse::<GgmlType>().map_err(|_| anyhow::anyhow!("{what}: unknown tensor type {s:?}"))
}

fn options(a: &QuantizeArgs) -> Result<QuantizeOptions> {
    let ftype: Ftype = a.ftype.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let mut o = QuantizeOptions::new(ftype);
    o.output_tensor_type =
        a.output_tensor_type.as_deref().map(|s| parse_type(s, "--output-tensor-type")).transpose()?;
    o.token_embedding_type =
        a.token_embedding_type.as_deref().map(|s| parse_type(s, "--token-embedding-type")).transpose()?;
    o.leave_output_tensor = a.leave_output_tensor;
    o.pure = a.pure;
    o.allow_requantize = a.allow_requantize;
    for spec in &a.tensor_type {
        let (pat, ty) =
            spec.rsplit_once('=').with_context(|| format!("--tensor-type {spec:?}: expected PATTERN=TYPE"))?;
        let re = regex::Regex::new(pat).with_context(|| format!("--tensor-type {spec:?}: bad pattern"))?;
        o.tensor_types.push((re, parse_type(ty, "--tensor-type")?));
    }
    Ok(o)
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
    super::set_threads(a.threads)?;
    let opts = options(&a)?;
    let input = GgufFile::open(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let plan = quantize::build_plan(input.metadata(), input.tensors(), &opts)
        .with_context(|| format!("planning {}", a.input.display()))?;
    if a.print_tensor_types {
        for arg in plan.as_tensor_type_args() {
            println!("{arg}");
        }
        if a.dry_run {
            return Ok(());
        }
    }
    if a.dry_run {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "plan": plan }))?);
        } else if !a.print_tensor_types {
            print_plan(&plan);
        }
        return Ok(());
    }
    if same_file(&a.input, &a.output) {
        bail!("output {} is the input file; refusing to overwrite the input", a.output.display());
    }
    let cancel = super::ctrl_c_cancel();
    let progress = TermProgress::new(a.quiet || a.json);
    let report = quantize::execute(&input, &plan, &a.output, None, &progress, &cancel)
        .with_context(|| format!("writing {}", a.output.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "plan": plan, "result": report }))?);
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

fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}
