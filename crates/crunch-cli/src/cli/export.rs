//! `crunch export`.

use super::progress::TermProgress;
use anyhow::{Context, Result};
use crunch::export;
use crunch::inspect::human_bytes;
use crunch::job::{ExportJob, Job, Outcome};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// GGUF model (any type crunch reads; quantized tensors are dequantized), or a GGUF LoRA
    /// adapter (needs --base).
    input: PathBuf,
    /// Output folder (created if needed): config.json, tokenizer files, *.safetensors; for an
    /// adapter, PEFT's adapter_config.json and adapter_model.safetensors.
    output: PathBuf,
    /// Tensor type of the safetensors: auto (keep the source's precision: F32, F16 and BF16
    /// tensors as they are, quantized ones as the file's float matrices, else f16), f16, bf16 or f32.
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Largest safetensors shard in bytes (a larger model is split, with an index file).
    #[arg(long, default_value_t = export::DEFAULT_SHARD_BYTES)]
    max_shard_bytes: u64,
    /// Store the blocks' linear weights in compressed-tensors' sparse layout (for pruned models;
    /// loaded by transformers with compressed-tensors): bitmask (sparse-bitmask, any sparsity) or
    /// 2:4 (sparse-24-bitmask, every row 2:4). Values keep --dtype.
    #[arg(long, value_name = "bitmask|2:4")]
    sparse: Option<String>,
    /// For a LoRA adapter: its base model (GGUF file or Hugging Face folder), which gives the module
    /// names, the attention heads of the Q/K row order and the shapes to check. The output is a
    /// PEFT adapter folder (auto keeps F32/F16/BF16 and writes Q8_0 as f32).
    #[arg(long, value_name = "MODEL")]
    base: Option<PathBuf>,
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

pub fn run(a: ExportArgs) -> Result<()> {
    let job = Job::Export(ExportJob {
        model: a.input.clone(),
        output: a.output.clone(),
        dtype: a.dtype.clone(),
        max_shard_bytes: a.max_shard_bytes,
        sparse: a.sparse.clone(),
        base: a.base.clone(),
    });
    let ctx = super::job_ctx(a.threads, TermProgress::shared(a.quiet || a.json), None)?;
    let Outcome::Export(o) = super::run_job(&job, &ctx)
        .with_context(|| format!("exporting {} to {}", a.input.display(), a.output.display()))?
    else {
        unreachable!("an export job has an export outcome")
    };
    let report = &o.result;
    if a.json {
        super::print_json(report)?;
    } else {
        println!(
            "wrote {} ({} tensors, {} as {} in {} files) in {:.1} s",
            report.dir,
            report.tensors,
            human_bytes(report.tensor_bytes),
            a.dtype,
            report.files.len(),
            report.seconds
        );
        if let Some(sp) = &report.sparse {
            let grew = sp.tensors.iter().filter(|t| t.compressed_bytes > t.dense_bytes).count();
            println!(
                "{}: {} linear weights {} dense -> {} ({:.1}%), whole checkpoint {} dense -> {}; global sparsity {:.1}%{}",
                sp.format,
                sp.tensors.len(),
                human_bytes(sp.dense_bytes),
                human_bytes(sp.compressed_bytes),
                100.0 * sp.compressed_bytes as f64 / sp.dense_bytes.max(1) as f64,
                human_bytes(report.tensor_bytes + sp.dense_bytes - sp.compressed_bytes),
                human_bytes(report.tensor_bytes),
                100.0 * sp.global_sparsity,
                if grew > 0 { format!("; {grew} weights are larger compressed (too few zeros)") } else { String::new() }
            );
        }
    }
    Ok(())
}
