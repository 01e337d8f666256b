//! `crunch convert`.

use super::progress::TermProgress;
use anyhow::{Context, Result};
use crunch::inspect::human_bytes;
use crunch::job::{ConvertJob, ConvertSummary, Job, Outcome};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// Hugging Face model folder (config.json, tokenizer files, *.safetensors), or a PEFT LoRA
    /// adapter folder (adapter_config.json, adapter_model.safetensors; needs --base).
    input: PathBuf,
    /// Output GGUF file (written atomically; OUTPUT.sha256 is written beside it).
    output: PathBuf,
    /// f32, f16, bf16 (convert), auto (the checkpoint's own float type: f32, f16 or bf16, as its
    /// first matrix is stored), or any quantization
    /// preset (q8_0, q4_k_m, …): converted and quantized in one pass, with the same result as
    /// converting to the checkpoint's float type and running `crunch quantize`. A PEFT adapter is
    /// written as auto (its safetensors dtype), f32, f16, bf16 or q8_0.
    #[arg(long = "type", short = 't', value_name = "TYPE", default_value = "auto")]
    ftype: String,
    /// For a PEFT adapter folder: its base model (GGUF file or Hugging Face folder), which gives
    /// the architecture, the attention heads of the Q/K row order and the shapes to check. The
    /// output is a GGUF LoRA adapter (llama.cpp's --lora).
    #[arg(long, value_name = "MODEL")]
    base: Option<PathBuf>,
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

fn print_plan(plan: &ConvertSummary) {
    println!("{:<52} {:<28} {:>18} {:>5} -> {:<6} {:>10}", "Hugging Face", "GGUF", "shape", "dtype", "type", "size");
    for r in &plan.tensors {
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

fn summary(plan: &ConvertSummary) {
    if let Some(a) = &plan.adapter {
        let ranks: Vec<String> = a.ranks.iter().map(|r| r.to_string()).collect();
        let rescaled = if a.rescaled.is_empty() {
            String::new()
        } else {
            format!("; PEFT's scale folded into lora_B of {}", a.rescaled.join(", "))
        };
        println!(
            "{} -> {} LoRA adapter ({}), {} weights, rank {}, alpha {}, base {}{rescaled}; {} -> {}",
            plan.architecture,
            plan.gguf_architecture,
            plan.ftype,
            a.pairs,
            ranks.join("/"),
            a.alpha,
            a.base,
            human_bytes(plan.src_bytes),
            human_bytes(plan.dst_bytes)
        );
        return;
    }
    let Some(v) = &plan.tokenizer else { return };
    let pre = match (&v.pre, &v.pre_source) {
        (Some(p), Some(s)) => format!(", pre-tokenizer {p} ({s:?})"),
        _ => String::new(),
    };
    println!(
        "{} -> {} ({}), {} tensors, {} parameters; tokenizer {} with {} tokens{pre}; {} -> {}",
        plan.architecture,
        plan.gguf_architecture,
        plan.ftype,
        plan.tensors.len(),
        plan.total_params,
        v.model,
        v.n_tokens,
        human_bytes(plan.src_bytes),
        human_bytes(plan.dst_bytes)
    );
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let job = Job::Convert(ConvertJob {
        model: a.input.clone(),
        output: a.output.clone(),
        ftype: a.ftype.clone(),
        pre: a.pre.clone(),
        name: a.name.clone(),
        dry_run: a.dry_run,
        base: a.base.clone(),
    });
    let ctx = super::job_ctx(a.threads, TermProgress::shared(a.quiet || a.json || a.dry_run), None)?;
    let Outcome::Convert(o) =
        super::run_job(&job, &ctx).with_context(|| format!("converting {}", a.input.display()))?
    else {
        unreachable!("a convert job has a convert outcome")
    };
    let plan = &o.plan;
    let Some(report) = &o.result else {
        if a.json {
            super::print_json(plan)?;
        } else {
            print_plan(plan);
        }
        return Ok(());
    };
    if a.json {
        match &plan.adapter {
            Some(adapter) => super::print_json(&serde_json::json!({"adapter": adapter, "result": report}))?,
            None => super::print_json(&serde_json::json!({"tokenizer": plan.tokenizer, "result": report}))?,
        }
    } else {
        if !a.quiet {
            summary(plan);
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
