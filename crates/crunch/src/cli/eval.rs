//! `crunch eval perplexity | compare | choice` (and `embed`, see its own module).

use anyhow::{bail, Context, Result};
use crunch::eval::{self, ChoiceOptions, CompareOptions, CompareReport, EvalOptions};
use crunch::progress::Progress;
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
    /// GGUF model (llama, mistral, qwen2, smollm).
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
    common: CommonArgs,
}

/// Prints each progress item as a line on stderr (the running estimates).
pub(crate) struct Lines {
    pub quiet: bool,
}

impl Progress for Lines {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64, item: &str) {
        if !self.quiet {
            eprintln!("{item}");
        }
    }
    fn finish(&self, _: &str) {}
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
    super::set_threads(a.common.threads)?;
    let opts = EvalOptions { ctx: a.ctx, chunks: a.chunks, exact: a.common.exact };
    let progress = Lines { quiet: a.common.quiet || a.common.json };
    let params = serde_json::json!({ "ctx": a.ctx, "chunks": a.chunks, "exact": a.common.exact });
    let inputs = [("model", a.model.as_path()), ("text", a.text.as_path())];
    let rec = super::runs::Recorder::start("eval", None, Some("perplexity".into()), params, &inputs);
    let r = eval::perplexity(&a.model, &a.text, &opts, &progress, &super::ctrl_c_cancel())
        .with_context(|| format!("perplexity of {}", a.model.display()));
    let r = rec.close(r, |r| vec![("ppl", r.ppl), ("ppl_err", r.ppl_err), ("seconds", r.seconds)])?;
    if a.common.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
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
    super::set_threads(a.common.threads)?;
    let opts =
        CompareOptions { eval: EvalOptions { ctx: a.ctx, chunks: a.chunks, exact: a.common.exact }, top_k: a.top_k };
    let progress = Lines { quiet: a.common.quiet || a.common.json };
    let cancel = super::ctrl_c_cancel();
    let (base, quants) = match &a.base_logits {
        Some(file) => (eval::load_base_logits(file)?, &a.models[..]),
        None => {
            let base = &a.models[0];
            if a.models.len() < 2 && a.save_base.is_none() {
                bail!("give BASE and QUANT model files (or BASE with --save-base FILE)");
            }
            let text = a.text.as_ref().context("--text FILE is needed to run the base model")?;
            let t = eval::read_text(text)?;
            let loaded = eval::open_model(base, a.common.exact)?;
            let b = eval::base_logits(&loaded, &base.display().to_string(), &t, &opts, &progress, &cancel)
                .with_context(|| format!("running the base model {}", base.display()))?;
            if let Some(dest) = &a.save_base {
                let sha = eval::save_base_logits(&b, dest)?;
                if !a.common.json {
                    println!(
                        "base logits: {} ({} positions, top-{}) sha256 {sha}",
                        dest.display(),
                        b.n_positions(),
                        b.top_k
                    );
                }
            }
            (b, &a.models[1..])
        }
    };
    if a.text.is_some() && a.base_logits.is_some() && !a.common.quiet {
        eprintln!("note: --text is ignored with --base-logits (the tokens are in the logits file)");
    }
    let mut reports = Vec::new();
    for q in quants {
        let params =
            serde_json::json!({ "base": base.model, "ctx": base.n_ctx, "chunks": base.n_chunks, "top_k": base.top_k });
        let rec = super::runs::Recorder::start("eval", None, Some("compare".into()), params, &[("model", q.as_path())]);
        let loaded = eval::open_model(q, a.common.exact)?;
        let t0 = std::time::Instant::now();
        let stats = eval::compare_with(&base, &loaded.model, &progress, &cancel)
            .with_context(|| format!("comparing {}", q.display()));
        let stats = rec.close(stats, |s| {
            vec![("kld", s.kld.mean), ("kld_p99", s.kld.p99), ("top1", s.same_top_pct), ("ppl", s.ppl_quant)]
        })?;
        let seconds = t0.elapsed().as_secs_f64();
        let r = CompareReport {
            base: base.model.clone(),
            quant: q.display().to_string(),
            ctx: base.n_ctx,
            n_chunks: base.n_chunks,
            top_k: base.top_k,
            stats,
            seconds,
            tokens_per_second: (base.n_chunks * base.n_ctx) as f64 / seconds.max(1e-9),
        };
        if !a.common.json {
            print_compare(&r);
        }
        reports.push(r);
    }
    if a.common.json {
        let v = if reports.len() == 1 { serde_json::to_value(&reports[0])? } else { serde_json::to_value(&reports)? };
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

fn choice(a: ChoiceArgs) -> Result<()> {
    super::set_threads(a.common.threads)?;
    let opts = ChoiceOptions { limit: a.limit, exact: a.common.exact };
    let progress = Lines { quiet: a.common.quiet || a.common.json };
    let r = eval::choice(&a.model, &a.tasks, &opts, &progress, &super::ctrl_c_cancel())
        .with_context(|| format!("multiple choice with {}", a.model.display()))?;
    if a.common.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
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
