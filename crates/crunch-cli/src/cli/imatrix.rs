//! `crunch imatrix`.

use super::progress::TermProgress;
use anyhow::{bail, Context, Result};
use crunch::job::{ImatrixJob, Job, Outcome};
use crunch_calib::imatrix::{layer_statistics, statistics};
use crunch_calib::Imatrix;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ImatrixArgs {
    /// GGUF model to run (not needed to merge files or show statistics).
    model: Option<PathBuf>,
    /// Calibration text file (or random:N[:SEED] for N random vocabulary tokens).
    #[arg(long, short = 'f', value_name = "FILE")]
    text: Option<String>,
    /// Output file; a name ending in .dat is written in llama.cpp's legacy format, anything else
    /// in the GGUF-based one.
    #[arg(long, short = 'o', default_value = "imatrix.gguf")]
    output: PathBuf,
    /// Force the output format (gguf or dat).
    #[arg(long, value_name = "FORMAT")]
    output_format: Option<String>,
    /// Tokens per chunk (llama-imatrix --ctx-size).
    #[arg(long, short = 'c', default_value_t = 512)]
    ctx: usize,
    /// Process at most this many chunks.
    #[arg(long)]
    chunks: Option<usize>,
    /// Skip this many chunks at the start of the text (llama-imatrix --chunk).
    #[arg(long, default_value_t = 0)]
    skip_chunks: usize,
    /// Take chunks at random positions with this seed instead of in order.
    #[arg(long)]
    seed: Option<u64>,
    /// Add these matrices (repeatable); without --text they are only merged.
    #[arg(long, value_name = "FILE")]
    in_file: Vec<PathBuf>,
    /// Continue an interrupted run: load OUTPUT and skip the chunks it holds.
    #[arg(long)]
    resume: bool,
    /// Save OUTPUT every N chunks (0: at the end only).
    #[arg(long, default_value_t = 10)]
    save_frequency: usize,
    /// Also collect output.weight.
    #[arg(long)]
    process_output: bool,
    /// Print per-tensor statistics of --in-file (one file) or of OUTPUT after the run.
    #[arg(long)]
    show_statistics: bool,
    /// Worker threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    lora: super::LoraArgs,
}

pub fn run(a: ImatrixArgs) -> Result<()> {
    if a.show_statistics && a.text.is_none() && !a.resume {
        let [file] = a.in_file.as_slice() else {
            bail!("--show-statistics needs exactly one --in-file (or a run with --text)");
        };
        let m = Imatrix::load(file, a.ctx.max(1) as u32).with_context(|| format!("reading {}", file.display()))?;
        return print_statistics(&m, a.json);
    }
    let (text, random_tokens) = match a.text.as_deref() {
        Some(t) if t.starts_with("random:") => (None, Some(t.to_string())),
        Some(t) => (Some(PathBuf::from(t)), None),
        None => (None, None),
    };
    let job = Job::Imatrix(ImatrixJob {
        model: a.model.clone(),
        text,
        random_tokens,
        output: a.output.clone(),
        format: a.output_format.clone(),
        ctx: a.ctx,
        chunks: a.chunks,
        skip_chunks: a.skip_chunks,
        seed: a.seed,
        in_files: a.in_file.clone(),
        resume: a.resume,
        save_every: a.save_frequency,
        process_output: a.process_output,
        lora: a.lora.lora.clone(),
    });
    let ctx = super::job_ctx(a.threads, TermProgress::shared(a.quiet || a.json), None)?;
    let Outcome::Imatrix(o) = super::run_job(&job, &ctx).with_context(|| format!("making {}", a.output.display()))?
    else {
        unreachable!("an imatrix job has an imatrix outcome")
    };
    let report = &o.result;
    if a.show_statistics {
        let m = Imatrix::load(&a.output, a.ctx as u32)?;
        print_statistics(&m, a.json)?;
    } else if a.json {
        super::print_json(report)?;
    } else if !a.quiet {
        println!(
            "{}: {} entries, {} chunks of {} tokens ({} processed now) in {:.1} s",
            report.output, report.entries, report.chunk_count, a.ctx, report.chunks_done, report.seconds
        );
    }
    Ok(())
}

fn print_statistics(m: &Imatrix, json: bool) -> Result<()> {
    let ts = statistics(m);
    if ts.is_empty() {
        bail!("no statistics: every entry is empty");
    }
    let ls = layer_statistics(&ts);
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "tensors": ts, "layers": ls }))?);
        return Ok(());
    }
    println!(
        "{:>5} {:<14} {:>12} {:>10} {:>11} {:>9} {:>9} {:>8} {:>6} {:>9} {:>8} {:>7} {:>7}",
        "layer", "tensor", "Σ(act²)", "min", "max", "μ", "σ", "active", "N", "entropy", "E(norm)", "ZD", "cossim"
    );
    for t in &ts {
        println!(
            "{:>5} {:<14} {:>12.2} {:>10.4} {:>11.4} {:>9.2} {:>9.2} {:>7.2}% {:>6} {:>9.4} {:>7.2}% {:>6.2}% {:>7.4}",
            t.layer.map_or("-".into(), |l| l.to_string()),
            t.tensor,
            t.sum,
            t.min,
            t.max,
            t.mean,
            t.stddev,
            100.0 * t.active,
            t.n,
            t.entropy,
            100.0 * t.entropy_norm,
            100.0 * t.zd,
            t.cossim.unwrap_or(0.0)
        );
    }
    println!("\n{:>5} {:>14} {:>10} {:>8}", "layer", "μΣ(act²)", "μZD", "μcossim");
    for l in &ls {
        println!("{:>5} {:>14.2} {:>9.4}% {:>8.4}", l.layer, l.mean_sum, 100.0 * l.zd, l.cossim);
    }
    Ok(())
}
