//! `crunch convert`.

use anyhow::{bail, Context, Result};
use crunch::convert::{self, ConvertOptions, ConvertPlan};
use crunch::inspect::human_bytes;
use crunch::progress::TermProgress;
use crunch::quantize::Ftype;
use crunch_core::safetensors::SafetensorsModel;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// Hugging Face model folder (config.json, tokenizer files, *.safetensors).
    input: PathBuf,
    /// Output GGUF file (written atomically; OUTPUT.sha256 is written beside it).
    output: PathBuf,
    /// f32, f16, bf16 (convert), auto (bf16 for a bf16 checkpoint, else f16), or any quantization
    /// preset (q8_0, q4_k_m, …): converted and quantized in one pass, with the same result as
    /// converting to the checkpoint's float type and running `crunch quantize`.
    #[arg(long = "type", short = 't', value_name = "TYPE", default_value = "auto")]
    ftype: String,
    /// Pre-tokenizer name to write (tokenizer.ggml.pre) when crunch cannot recognise it.
    #[arg(long, value_name = "NAME")]
    pre: Option<String>,
    /// general.name to write instead of the one found in the folder.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Print the mapping (Hugging Face name -> GGUF name, shape, type) and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

/// llama.cpp's `--outtype auto`: bf16 if the first matrix in the checkpoint is bf16, else f16.
fn auto_type(dir: &Path) -> Result<Ftype> {
    let m = SafetensorsModel::open(dir).with_context(|| format!("reading the safetensors in {}", dir.display()))?;
    let first = m.tensors().iter().find(|t| t.shape.len() >= 2).map(|t| t.dtype);
    Ok(if first == Some(crunch_core::safetensors::Dtype::BF16) { Ftype::BF16 } else { Ftype::F16 })
}

fn print_plan(plan: &ConvertPlan) {
    println!("{:<52} {:<28} {:>18} {:>5} -> {:<6} {:>10}", "Hugging Face", "GGUF", "shape", "dtype", "type", "size");
    for r in plan.rows() {
        let shape: Vec<String> = r.shape.iter().map(|d| d.to_string()).collect();
        println!(
            "{:<52} {:<28} {:>18} {:>5} -> {:<6} {:>10}",
            r.hf_name,
            r.gguf_name,
            format!("[{}]", shape.join(", ")),
            r.dtype,
            r.ty,
            human_bytes(r.bytes)
        );
    }
    summary(plan);
}

fn summary(plan: &ConvertPlan) {
    let v = &plan.vocab;
    let pre = match (&v.pre, &v.pre_source) {
        (Some(p), Some(s)) => format!(", pre-tokenizer {p} ({s:?})"),
        _ => String::new(),
    };
    println!(
        "{} -> {} ({}), {} tensors, {} parameters; tokenizer {} with {} tokens{pre}; {} -> {}",
        plan.config.hf_arch,
        plan.config.arch.gguf_name(),
        plan.ftype,
        plan.tensors.len(),
        plan.total_params,
        v.model,
        v.n_tokens,
        human_bytes(plan.src_bytes()),
        human_bytes(plan.dst_bytes())
    );
}

pub fn run(a: ConvertArgs) -> Result<()> {
    super::set_threads(a.threads)?;
    let ftype = if a.ftype.eq_ignore_ascii_case("auto") {
        auto_type(&a.input)?
    } else {
        a.ftype.parse::<Ftype>().map_err(|e| anyhow::anyhow!(e))?
    };
    let mut opts = ConvertOptions::new(ftype);
    opts.pre = a.pre.clone();
    opts.name = a.name.clone();
    let plan = convert::plan(&a.input, &opts).with_context(|| format!("converting {}", a.input.display()))?;
    if a.dry_run {
        if a.json {
            let j = serde_json::json!({
                "architecture": plan.config.hf_arch,
                "gguf_architecture": plan.config.arch.gguf_name(),
                "type": plan.ftype.name(),
                "base_type": plan.base_ftype.name(),
                "tokenizer": plan.vocab,
                "total_params": plan.total_params,
                "src_bytes": plan.src_bytes(),
                "dst_bytes": plan.dst_bytes(),
                "tensors": plan.rows(),
            });
            println!("{}", serde_json::to_string_pretty(&j)?);
        } else {
            print_plan(&plan);
        }
        return Ok(());
    }
    let out_abs = std::path::absolute(&a.output).unwrap_or_else(|_| a.output.clone());
    for input in plan.inputs() {
        let in_abs = input.canonicalize().unwrap_or(input.clone());
        if out_abs.canonicalize().ok().as_ref() == Some(&in_abs) || out_abs == in_abs {
            bail!("the output {} is one of the input files", a.output.display());
        }
    }
    let cancel = super::ctrl_c_cancel();
    let progress = TermProgress::new(a.quiet || a.json);
    let params = serde_json::json!({ "type": plan.ftype.name(), "pre": a.pre, "name": a.name });
    let rec = super::runs::Recorder::start(
        "convert",
        None,
        Some(plan.ftype.name().to_string()),
        params,
        &[("model", &a.input)],
    );
    let res = convert::execute(&plan, &a.output, &progress, &cancel)
        .with_context(|| format!("writing {}", a.output.display()));
    if res.is_ok() {
        rec.output(&a.output);
    }
    let report = rec.close(res, |r| {
        vec![("file_bytes", r.file_bytes as f64), ("seconds", r.seconds), ("peak_rss_bytes", r.peak_rss_bytes as f64)]
    })?;
    if a.json {
        let j = serde_json::json!({"tokenizer": plan.vocab, "result": report});
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        if !a.quiet {
            summary(&plan);
        }
        println!(
            "wrote {} ({}) in {:.1} s, {:.0} MB/s read; peak memory {} (anonymous {})",
            report.output,
            human_bytes(report.file_bytes),
            report.seconds,
            report.read_mb_per_s,
            human_bytes(report.peak_rss_bytes),
            human_bytes(report.peak_anon_bytes)
        );
    }
    Ok(())
}
