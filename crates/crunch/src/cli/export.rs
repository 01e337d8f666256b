//! `crunch export`.

use anyhow::{Context, Result};
use crunch::export::{self, ExportOptions};
use crunch::inspect::human_bytes;
use crunch::progress::TermProgress;
use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// GGUF model (any type crunch reads; quantized tensors are dequantized).
    input: PathBuf,
    /// Output folder (created if needed): config.json, tokenizer files, *.safetensors.
    output: PathBuf,
    /// Tensor type of the safetensors: f16, bf16 or f32.
    #[arg(long, default_value = "f16")]
    dtype: String,
    /// Largest safetensors shard in bytes (a larger model is split, with an index file).
    #[arg(long, default_value_t = export::DEFAULT_SHARD_BYTES)]
    max_shard_bytes: u64,
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
    super::set_threads(a.threads)?;
    let dtype = match a.dtype.to_ascii_lowercase().as_str() {
        "f16" | "float16" => GgmlType::F16,
        "bf16" | "bfloat16" => GgmlType::BF16,
        "f32" | "float32" => GgmlType::F32,
        other => anyhow::bail!("--dtype {other:?}: choose f16, bf16 or f32"),
    };
    let input = GgufFile::open(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let opts = ExportOptions { dtype, max_shard_bytes: a.max_shard_bytes.max(1) };
    let cancel = super::ctrl_c_cancel();
    let progress = TermProgress::new(a.quiet || a.json);
    let report = export::export(&input, &a.output, &opts, &progress, &cancel)
        .with_context(|| format!("exporting {} to {}", a.input.display(), a.output.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "wrote {} ({} tensors, {} of {} in {} files) in {:.1} s",
            report.dir,
            report.tensors,
            human_bytes(report.tensor_bytes),
            a.dtype,
            report.files.len(),
            report.seconds
        );
    }
    Ok(())
}
