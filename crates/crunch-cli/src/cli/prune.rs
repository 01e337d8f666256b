//! `crunch prune`.

use super::progress::TermProgress;
use anyhow::{Context, Result};
use crunch::inspect::human_bytes;
use crunch::job::{Job, Outcome, PruneJob};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Input GGUF model.
    input: PathBuf,
    /// Output GGUF file (dense, with the pruned weights zero; OUTPUT.sha256 is written beside it).
    output: PathBuf,
    /// Unstructured / N:M pruning: magnitude (no calibration), wanda (|W|·‖X‖ per output row) or
    /// sparsegpt (OBS updates of the surviving weights; quantizes jointly onto the output type).
    #[arg(long, value_name = "METHOD")]
    method: Option<String>,
    /// Fraction of every linear weight to zero, in (0, 1).
    #[arg(long, value_name = "FRACTION")]
    sparsity: Option<f64>,
    /// N:M: N zeros in every M consecutive weights of a row (2:4, 4:8).
    #[arg(long, value_name = "N:M")]
    pattern: Option<String>,
    /// Calibration text for wanda and sparsegpt (or random:N[:SEED] for N random vocabulary tokens).
    #[arg(long, value_name = "FILE")]
    text: Option<String>,
    /// Output preset or type (Q4_K_M, Q8_0, F16, …); default: every tensor keeps its type.
    #[arg(long = "type", value_name = "TYPE")]
    ftype: Option<String>,
    /// Calibration context (tokens per chunk).
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Calibration chunks.
    #[arg(long, default_value_t = 64)]
    chunks: usize,
    /// Structured: remove this many blocks, chosen on the calibration text by --layer-score.
    #[arg(long, value_name = "N", help_heading = "Structured pruning")]
    layers: Option<usize>,
    /// Structured: remove these blocks (0-based, comma-separated; no calibration needed).
    #[arg(long, value_name = "I,J,...", value_delimiter = ',', help_heading = "Structured pruning")]
    remove_layers: Option<Vec<usize>>,
    /// How --layers chooses: angular (the run of consecutive blocks whose input and output are
    /// closest in angle) or influence (the blocks that each change their input least).
    #[arg(long, default_value = "angular", help_heading = "Structured pruning")]
    layer_score: String,
    /// Structured: the fraction of FFN channels every block keeps, in (0, 1) (0.75).
    #[arg(long, value_name = "FRACTION", help_heading = "Structured pruning")]
    ffn: Option<f64>,
    /// The kept FFN width is rounded to a multiple of this (256 avoids k-quant fallbacks).
    #[arg(long, default_value_t = 32, help_heading = "Structured pruning")]
    ffn_multiple: usize,
    /// Structured: KV groups (a K/V head with its query heads) removed from every block.
    #[arg(long, value_name = "N", help_heading = "Structured pruning")]
    drop_kv_groups: Option<usize>,
    /// Structured: copy the kept columns of attn_output / ffn_down instead of refitting them by
    /// least squares.
    #[arg(long, help_heading = "Structured pruning")]
    no_refit: bool,
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

impl PruneArgs {
    /// The job these arguments ask for.
    pub fn job(&self) -> Job {
        Job::Prune(PruneJob {
            model: self.input.clone(),
            output: self.output.clone(),
            method: self.method.clone(),
            sparsity: self.sparsity,
            pattern: self.pattern.clone(),
            text: self.text.as_ref().map(PathBuf::from),
            ftype: self.ftype.clone(),
            ctx: self.ctx,
            chunks: self.chunks,
            layers: self.layers,
            remove_layers: self.remove_layers.clone(),
            layer_score: self.layer_score.clone(),
            ffn: self.ffn,
            ffn_multiple: self.ffn_multiple,
            drop_kv_groups: self.drop_kv_groups,
            refit: !self.no_refit,
        })
    }
}

pub fn run(a: PruneArgs) -> Result<()> {
    let ctx = super::job_ctx(a.threads, TermProgress::shared(a.quiet || a.json), None)?;
    let Outcome::Prune(o) = super::run_job(&a.job(), &ctx).with_context(|| format!("pruning {}", a.input.display()))?
    else {
        unreachable!("a prune job has a prune outcome")
    };
    if a.json {
        return super::print_json(&o);
    }
    if a.quiet {
        return Ok(());
    }
    let r = &o.result;
    if let Some(st) = &o.structured {
        let removed =
            if st.removed_layers.is_empty() { String::new() } else { format!(" (removed {:?})", st.removed_layers) };
        println!(
            "{} -> {}: blocks {} -> {}{removed}, FFN width {} -> {}, heads {}/{} -> {}/{} (query/KV), \
             {} ({:.2} bpw), pruning {:.1} s, writing {:.1} s\nsha256 {}",
            a.input.display(),
            a.output.display(),
            st.n_layer_before,
            st.n_layer_after,
            st.n_ff_before,
            st.n_ff_after,
            st.n_head_before,
            st.n_head_kv_before,
            st.n_head_after,
            st.n_head_kv_after,
            human_bytes(r.file_bytes),
            r.bpw,
            o.prune_seconds,
            r.seconds,
            r.sha256
        );
        if !st.refit.is_empty() {
            let mean = st.refit.iter().map(|t| t.output_error).sum::<f64>() / st.refit.len() as f64;
            let worst = st.refit.iter().max_by(|a, b| a.output_error.total_cmp(&b.output_error)).expect("not empty");
            println!(
                "output error of the narrowed layers on the calibration text: mean {:.4}, worst {:.4} ({})",
                mean, worst.output_error, worst.name
            );
        }
        return Ok(());
    }
    let (Some(method), Some(sparsity), Some(target)) = (o.method, o.sparsity, o.target) else {
        return Ok(());
    };
    let not_exact: Vec<String> = o
        .tensors
        .iter()
        .filter(|t| t.zero_fraction + 1e-9 < t.pruned_fraction)
        .map(|t| format!("{} ({}: {:.1}% zero)", t.pruned.name, t.ty, 100.0 * t.zero_fraction))
        .collect();
    println!(
        "{} -> {}: {} {} pruned {} tensors, {:.2}% of their weights zero in the output (target {:.2}%), \
         {} ({:.2} bpw), pruning {:.1} s, writing {:.1} s\nsha256 {}",
        a.input.display(),
        a.output.display(),
        method.name(),
        sparsity,
        o.tensors.len(),
        100.0 * o.zero_fraction,
        100.0 * target,
        human_bytes(r.file_bytes),
        r.bpw,
        o.prune_seconds,
        r.seconds,
        r.sha256
    );
    if !not_exact.is_empty() {
        println!(
            "{} tensor(s) lost zeros in their type's quantizer (no exact zero on its grid), e.g. {}",
            not_exact.len(),
            not_exact.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}
