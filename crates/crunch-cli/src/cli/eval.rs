//! `crunch eval perplexity | compare | choice` (and `embed`, see its own module).

use super::progress::Lines;
use anyhow::{bail, Context, Result};
use crunch::eval::CompareReport;
use crunch::job::{ChoiceJob, CompareJob, Job, Outcome, PerplexityJob};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(subcommand)]
    command: EvalCommand,
}

#[derive(clap::Subcommand)]
pub enum EvalCommand {
    /// Perplexity over a text file, computed as llama-perplexity does (chunks of --ctx tokens,
    /// the second half of each scored), with the running estimate per chunk.
    Perplexity(PerplexityArgs),
    /// KL-divergence of QUANT's next-token distributions from BASE's, same-top-token %,
    /// perplexity of both. Save the base once with --save-base, reuse it with --base-logits.
    /// --lora adapters apply to each QUANT, never to BASE.
    Compare(CompareArgs),
    /// Multiple-choice accuracy (HellaSwag-style) from a JSONL task file.
    Choice(ChoiceArgs),
    /// Cosine similarity of BASE's and QUANT's sentence embeddings (BERT encoders) per text line.
    Embed(super::embed::EvalEmbedArgs),
}

/// Options every eval shares.
#[derive(clap::Args)]
pub struct CommonArgs {
    /// Worker threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    /// Dequantize weights and multiply in f32 instead of quantizing activations (slower; for
    /// checking the quantized kernels).
    #[arg(long)]
    exact: bool,
    /// Print the result as JSON on stdout (and no progress lines).
    #[arg(long)]
    json: bool,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct PerplexityArgs {
    /// GGUF model (llama, mistral, qwen2, smollm, gemma3).
    model: PathBuf,
    /// UTF-8 text file.
    #[arg(long, short = 'f')]
    text: PathBuf,
    /// Tokens per chunk.
    #[arg(long, short = 'c', default_value_t = 512)]
    ctx: usize,
    /// Evaluate at most this many chunks (default: all that fit).
    #[arg(long)]
    chunks: Option<usize>,
    #[command(flatten)]
    lora: super::LoraArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(clap::Args)]
pub struct CompareArgs {
    /// BASE QUANT [QUANT…], or QUANT… with --base-logits, or BASE alone with --save-base.
    #[arg(required = true)]
    models: Vec<PathBuf>,
    /// UTF-8 text file (not needed with --base-logits: the tokens are in that file).
    #[arg(long, short = 'f')]
    text: Option<PathBuf>,
    /// Tokens per chunk.
    #[arg(long, short = 'c', default_value_t = 512)]
    ctx: usize,
    /// Evaluate at most this many chunks.
    #[arg(long)]
    chunks: Option<usize>,
    /// Base log-probabilities kept per position.
    #[arg(long, default_value_t = 32)]
    top_k: usize,
    /// Write the base model's top-k log-probabilities to FILE (for later --base-logits).
    #[arg(long, value_name = "FILE")]
    save_base: Option<PathBuf>,
    /// Read the base from FILE (written by --save-base) instead of running a base model.
    #[arg(long, value_name = "FILE", conflicts_with = "save_base")]
    base_logits: Option<PathBuf>,
    // applied to each QUANT, never to the base
    #[command(flatten)]
    lora: super::LoraArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(clap::Args)]
pub struct ChoiceArgs {
    /// GGUF model.
    model: PathBuf,
    /// JSONL tasks: {"context": "...", "endings": ["...", ...], "label": N} per line.
    #[arg(long)]
    tasks: PathBuf,
    /// Score only the first N tasks.
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    lora: super::LoraArgs,
    #[command(flatten)]
    common: CommonArgs,
}

pub fn run(a: EvalArgs) -> Result<()> {
    match a.command {
        EvalCommand::Perplexity(a) => perplexity(a),
        EvalCommand::Compare(a) => compare(a),
        EvalCommand::Choice(a) => choice(a),
        EvalCommand::Embed(a) => super::embed::eval_embed(a),
    }
}

fn perplexity(a: PerplexityArgs) -> Result<()> {
    let c = &a.common;
    let job = Job::Perplexity(PerplexityJob {
        model: a.model.clone(),
        text: a.text.clone(),
        ctx: a.ctx,
        chunks: a.chunks,
        exact: c.exact,
        lora: a.lora.lora.clone(),
    });
    let ctx = super::job_ctx(c.threads, Lines::shared(c.quiet || c.json), None)?;
    let Outcome::Perplexity(o) =
        super::run_job(&job, &ctx).with_context(|| format!("perplexity of {}", a.model.display()))?
    else {
        unreachable!("a perplexity job has a perplexity outcome")
    };
    let r = &o.result;
    if c.json {
        super::print_json(r)?;
    } else {
        println!("{}", r.final_estimate());
        println!(
            "{} tokens in text, {} chunks of {}, {} scored; {:.2} s, {:.1} tokens/s, {} threads{}",
            r.n_tokens,
            r.n_chunks,
            r.ctx,
            r.count,
            r.seconds,
            r.tokens_per_second,
            r.threads,
            r.peak_rss_bytes.map(|b| format!(", peak RSS {}", crunch::inspect::human_bytes(b))).unwrap_or_default()
        );
    }
    Ok(())
}

fn print_compare(r: &CompareReport) {
    let s = &r.stats;
    println!("base  {}\nquant {}", r.base, r.quant);
    println!("{} positions ({} chunks of {}, base top-{})", s.n_positions, r.n_chunks, r.ctx, r.top_k);
    println!("Mean PPL(Q)      : {:10.6}", s.ppl_quant);
    println!("Mean PPL(base)   : {:10.6}", s.ppl_base);
    println!("PPL(Q)/PPL(base) : {:10.6}", s.ppl_ratio);
    println!("Mean    KLD      : {:10.6} +/- {:.6}", s.kld.mean, s.kld.mean_err);
    println!("Median  KLD      : {:10.6}", s.kld.median);
    println!("99.0%   KLD      : {:10.6}", s.kld.p99);
    println!("Maximum KLD      : {:10.6}", s.kld.max);
    println!("Same top token   : {:9.3}% +/- {:.3}%", s.same_top_pct, s.same_top_err);
    println!("{:.2} s, {:.1} tokens/s", r.seconds, r.tokens_per_second);
}

fn compare(a: CompareArgs) -> Result<()> {
    let c = &a.common;
    let (base, models) = match &a.base_logits {
        Some(_) => (None, a.models.clone()),
        None => {
            if a.models.len() < 2 && a.save_base.is_none() {
                bail!("give BASE and QUANT model files (or BASE with --save-base FILE)");
            }
            (Some(a.models[0].clone()), a.models[1..].to_vec())
        }
    };
    if a.text.is_some() && a.base_logits.is_some() && !c.quiet {
        eprintln!("note: --text is ignored with --base-logits (the tokens are in the logits file)");
    }
    let job = Job::Compare(CompareJob {
        base,
        models,
        text: if a.base_logits.is_some() { None } else { a.text.clone() },
        ctx: a.ctx,
        chunks: a.chunks,
        top_k: a.top_k,
        save_base: a.save_base.clone(),
        base_logits: a.base_logits.clone(),
        exact: c.exact,
        lora: a.lora.lora.clone(),
    });
    let ctx = super::job_ctx(c.threads, Lines::shared(c.quiet || c.json), None)?;
    let Outcome::Compare(o) = super::run_job(&job, &ctx).context("comparing models")? else {
        unreachable!("a compare job has a compare outcome")
    };
    if let (Some((dest, sha)), false) = (&o.saved_base, c.json) {
        println!("base logits: {dest} ({} positions, top-{}) sha256 {sha}", o.base_positions, a.top_k);
    }
    if c.json {
        match o.reports.as_slice() {
            [one] => super::print_json(one)?,
            many => super::print_json(&many)?,
        }
    } else {
        o.reports.iter().for_each(print_compare);
    }
    Ok(())
}

fn choice(a: ChoiceArgs) -> Result<()> {
    let c = &a.common;
    let job = Job::Choice(ChoiceJob {
        model: a.model.clone(),
        tasks: a.tasks.clone(),
        limit: a.limit,
        exact: c.exact,
        lora: a.lora.lora.clone(),
    });
    let ctx = super::job_ctx(c.threads, Lines::shared(c.quiet || c.json), None)?;
    let Outcome::Choice(o) =
        super::run_job(&job, &ctx).with_context(|| format!("multiple choice with {}", a.model.display()))?
    else {
        unreachable!("a choice job has a choice outcome")
    };
    let r = &o.result;
    if c.json {
        super::print_json(r)?;
    } else {
        println!("{} tasks, chance {:.2}%", r.n_tasks, r.chance_pct);
        for (name, acc) in [("acc", r.acc), ("acc_norm", r.acc_norm)] {
            println!(
                "{name:<9}: {:.2}% [{:.2}%, {:.2}%] ({} of {})",
                acc.pct, acc.ci_low, acc.ci_high, acc.correct, acc.total
            );
        }
        println!("{:.2} s", r.seconds);
    }
    Ok(())
}
