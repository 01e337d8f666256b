//! `crunch quantize`.

use anyhow::{bail, Context, Result};
use crunch::calibrate::{self, Method, MethodOptions};
use crunch::inspect::human_bytes;
use crunch::progress::TermProgress;
use crunch::quantize::{self, Ftype, Plan, QuantizeOptions, Reason};
use crunch_calib::awq::AwqOptions;
use crunch_calib::gptq::GptqOptions;
use crunch_calib::text::{ChunkOptions, TextSource};
use crunch_core::gguf::{GgufFile, Value};
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
    /// Calibrated method(s): rtn (plain), gptq, awq, or awq,gptq.
    #[arg(long, value_name = "METHOD", default_value = "rtn")]
    method: String,
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

/// An importance matrix and the metadata that records it in the output.
type LoadedImatrix = (crunch_calib::Imatrix, Vec<(String, Value)>);

/// The imatrix for `--imatrix`, filtered by `--include-weights` / `--exclude-weights`, and the
/// `quantize.imatrix.*` metadata llama-quantize writes with it.
fn load_imatrix(a: &QuantizeArgs, input: &GgufFile) -> Result<Option<LoadedImatrix>> {
    let Some(path) = &a.imatrix else { return Ok(None) };
    let mut m = crunch_calib::Imatrix::load(path, 512).with_context(|| format!("reading {}", path.display()))?;
    crunch::calibrate::imatrix::check_model(&m, input)?;
    m.entries.retain(|name, _| !a.exclude_weights.iter().any(|x| name.contains(x.as_str())));
    if !a.include_weights.is_empty() {
        m.entries.retain(|name, _| a.include_weights.iter().any(|x| name.contains(x.as_str())));
    }
    let file: String = path.display().to_string().chars().take(127).collect();
    let mut md = vec![("quantize.imatrix.file".to_string(), Value::string(file))];
    if let Some(d) = m.datasets.first() {
        md.push(("quantize.imatrix.dataset".into(), Value::string(d.chars().take(127).collect::<String>())));
    }
    md.push(("quantize.imatrix.entries_count".into(), Value::U32(m.entries.len() as u32)));
    if m.chunk_count > 0 {
        md.push(("quantize.imatrix.chunks_count".into(), Value::U32(m.chunk_count)));
    }
    Ok(Some((m, md)))
}

fn method_options(c: &CalibArgs) -> Result<Option<MethodOptions>> {
    let Some(method) = Method::parse(&c.method)? else { return Ok(None) };
    let text = c
        .text
        .as_deref()
        .with_context(|| format!("--method {}: give calibration text with --text FILE (or random:N)", c.method))?;
    Ok(Some(MethodOptions {
        method,
        text: TextSource::parse(text),
        chunks: ChunkOptions { n_ctx: c.ctx, n_chunks: Some(c.chunks), skip: 0, shuffle_seed: c.seed },
        gptq: GptqOptions { damp: c.damp, block: c.gptq_block, act_order: c.act_order, ..Default::default() },
        awq: AwqOptions { grid: c.awq_grid, ..Default::default() },
    }))
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
    let mut opts = options(&a)?;
    let input = GgufFile::open(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let imatrix = load_imatrix(&a, &input)?;
    opts.has_imatrix = imatrix.as_ref().is_some_and(|(m, _)| !m.entries.is_empty());
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
    let method = method_options(&a.calib)?;
    let scratch = PathBuf::from(format!("{}.calib-tmp", a.output.display()));
    let calibrated = match &method {
        Some(m) => Some(
            calibrate::calibrate_model(
                &a.input,
                &plan,
                imatrix.as_ref().map(|(m, _)| m),
                m,
                &scratch,
                &progress,
                &cancel,
            )
            .with_context(|| format!("calibrating {}", a.input.display()))?,
        ),
        None => None,
    };
    let importance = |name: &str| {
        let base = imatrix.as_ref().and_then(|(m, _)| m.importance(name));
        match &calibrated {
            Some(c) => c.adjust_importance(name, base),
            None => base,
        }
    };
    let replace = |name: &str| calibrated.as_ref().map_or(Ok(None), |c| c.replacement(name));
    let extra = imatrix.as_ref().map(|(_, md)| md.clone()).unwrap_or_default();
    let exec = quantize::ExecOptions {
        importance: Some(&importance),
        replacements: calibrated.as_ref().map(|_| &replace as quantize::ReplacementLookup),
        extra_metadata: &extra,
    };
    let params = serde_json::json!({ "type": a.ftype, "method": a.calib.method, "pure": a.pure,
                                      "tensor_type": a.tensor_type, "imatrix": a.imatrix });
    let mut rec = super::runs::Recorder::start("quantize", None, Some(a.ftype.clone()), params, &[("model", &a.input)]);
    let res = quantize::execute_with(&input, &plan, &a.output, exec, &progress, &cancel)
        .with_context(|| format!("writing {}", a.output.display()));
    if res.is_ok() {
        rec.output(&a.output);
        rec.plan(&plan, None);
    }
    let report =
        rec.close(res, |r| vec![("file_bytes", r.file_bytes as f64), ("bpw", r.bpw), ("seconds", r.seconds)])?;
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
