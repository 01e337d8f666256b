//! `crunch export`.

use super::progress::TermProgress;
use anyhow::{Context, Result};
use crunch::export;
use crunch::inspect::human_bytes;
use crunch::job::{CalibrationSpec, ExportJob, Job, Outcome};
use crunch::method::Method;
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
    /// Store the blocks' linear weights quantized, in the layout GPU and CPU servers load:
    /// nf4 / fp4 (bitsandbytes 4-bit), bnb-int8 (LLM.int8), gptq, awq (GEMM), compressed-tensors
    /// (pack-quantized), int4 / int8 (compressed-tensors W4A16 / W8A16). Embeddings, norms and
    /// lm_head stay F16.
    #[arg(long, value_name = "FORMAT")]
    format: Option<String>,
    /// Bits of gptq (2, 4, 8) and compressed-tensors (4, 8).
    #[arg(long)]
    bits: Option<u8>,
    /// Columns per group of the integer formats (default 128); values per block of nf4/fp4
    /// (default 64).
    #[arg(long, value_name = "G")]
    group_size: Option<usize>,
    /// Integer codes with zero points (the default for awq and --method hqq).
    #[arg(long, conflicts_with = "sym")]
    asym: bool,
    /// Symmetric integer codes (the default for gptq and compressed-tensors).
    #[arg(long)]
    sym: bool,
    /// nf4/fp4: keep the block absmax values in f32 (no double quantization).
    #[arg(long)]
    no_double_quant: bool,
    /// How the codes are chosen: rtn (round to nearest), hqq (half-quadratic zero points, no
    /// data), gptq, awq or awq,gptq (calibrated on --text).
    #[arg(long, value_name = "METHOD")]
    method: Option<String>,
    /// Calibration text for gptq/awq (or random:N[:SEED]).
    #[arg(long, value_name = "FILE")]
    text: Option<String>,
    /// Calibration context (tokens per chunk).
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Calibration chunks.
    #[arg(long, default_value_t = 64)]
    chunks: usize,
    /// Write the f32 values meant for every quantized weight to this safetensors file (to check
    /// the folder with an independent reader).
    #[arg(long, value_name = "FILE")]
    reference: Option<PathBuf>,
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
    let (method, calibration) = match a.method.as_deref() {
        None => (None, None),
        Some(m) if ["rtn", "hqq"].contains(&m.to_ascii_lowercase().as_str()) => (Some(m.to_string()), None),
        Some(m) => {
            let method: Method = m.parse().map_err(anyhow::Error::msg)?;
            if !method.is_calibrated() {
                anyhow::bail!("--method {m}: choose rtn, hqq, gptq, awq or awq,gptq");
            }
            let text =
                a.text.as_ref().with_context(|| format!("--method {m}: give calibration text with --text FILE"))?;
            let d = CalibrationSpec::defaults(method, PathBuf::from(text));
            (None, Some(CalibrationSpec { ctx: a.ctx, chunks: a.chunks, ..d }))
        }
    };
    if a.text.is_some() && calibration.is_none() {
        anyhow::bail!("--text is calibration text for --method gptq, awq or awq,gptq");
    }
    let job = Job::Export(ExportJob {
        model: a.input.clone(),
        output: a.output.clone(),
        dtype: a.dtype.clone(),
        max_shard_bytes: a.max_shard_bytes,
        sparse: a.sparse.clone(),
        base: a.base.clone(),
        format: a.format.clone(),
        bits: a.bits,
        group_size: a.group_size,
        asym: if a.asym {
            Some(true)
        } else if a.sym {
            Some(false)
        } else {
            None
        },
        double_quant: a.no_double_quant.then_some(false),
        method,
        calibration,
        reference: a.reference.clone(),
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
        if let Some(q) = &report.quantized {
            println!(
                "{}: {} linear weights at {:.3} bits per weight ({}, {} parameters), quantized in {:.1} s{}",
                q.format,
                q.tensors.len(),
                q.bits_per_weight,
                human_bytes(q.quantized_bytes),
                q.quantized_params,
                q.seconds_quantizing,
                q.reference.as_ref().map(|r| format!("; reference values in {r}")).unwrap_or_default()
            );
        }
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
