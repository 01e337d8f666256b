//! `crunch eval embed BASE QUANT --text FILE` and `crunch embed MODEL --text FILE -o OUT.jsonl`.

use super::progress::Lines;
use anyhow::{Context, Result};
use crunch::eval::embed::EmbedReport;
use crunch::job::{EmbedCompareJob, EmbedJob, Job, Outcome};
use std::path::PathBuf;

/// Options shared by both commands.
#[derive(clap::Args)]
pub struct EmbedCommon {
    /// UTF-8 text: every non-empty line is one input.
    #[arg(long, short = 'f')]
    text: PathBuf,
    /// Use only the first N non-empty lines.
    #[arg(long, value_name = "N")]
    max_lines: Option<usize>,
    /// Cut inputs to N tokens, [CLS] and [SEP] included (default: the model's limit, e.g.
    /// sentence-transformers' max_seq_length).
    #[arg(long, value_name = "N")]
    max_tokens: Option<usize>,
    /// Worker threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    /// Dequantize weights and multiply in f32 instead of quantizing activations.
    #[arg(long)]
    exact: bool,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct EvalEmbedArgs {
    /// Base encoder: GGUF (bert) or Hugging Face folder (BertModel + tokenizer.json).
    base: PathBuf,
    /// Compressed encoder, same forms.
    quant: PathBuf,
    #[command(flatten)]
    common: EmbedCommon,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn eval_embed(a: EvalEmbedArgs) -> Result<()> {
    let c = &a.common;
    let job = Job::EmbedCompare(EmbedCompareJob {
        base: a.base.clone(),
        model: a.quant.clone(),
        text: c.text.clone(),
        max_lines: c.max_lines,
        max_tokens: c.max_tokens,
        exact: c.exact,
    });
    let ctx = super::job_ctx(c.threads, Lines::shared(c.quiet || a.json), None)?;
    let Outcome::EmbedCompare(o) = super::run_job(&job, &ctx)
        .with_context(|| format!("comparing embeddings of {} and {}", a.base.display(), a.quant.display()))?
    else {
        unreachable!("an embed_compare job has an embed_compare outcome")
    };
    if a.json {
        super::print_json(&o.result)
    } else {
        print_report(&o.result);
        Ok(())
    }
}

fn print_report(r: &EmbedReport) {
    let c = &r.cosine;
    println!("base  {}\nquant {}", r.base, r.quant);
    println!(
        "{} texts, {} tokens (at most {} per text), {} dimensions{}",
        r.n_texts,
        r.n_tokens,
        r.max_tokens,
        r.dim,
        if r.texts_tokenized_differently > 0 {
            format!("; {} texts tokenized differently", r.texts_tokenized_differently)
        } else {
            String::new()
        }
    );
    println!("Mean   cosine : {:.6}", c.mean);
    println!("Median cosine : {:.6}", c.median);
    println!("1%     cosine : {:.6}", c.p1);
    println!("Min    cosine : {:.6}", c.min);
    if let Some(w) = r.worst.first() {
        println!("Worst line #{} ({:.6}): {}", w.index, w.cosine, w.text);
    }
    let tps = |s: f64| if s > 0.0 { r.n_tokens as f64 / s } else { 0.0 };
    println!(
        "base {:.2} s ({:.0} tokens/s), quant {:.2} s ({:.0} tokens/s), {} threads",
        r.seconds_base,
        tps(r.seconds_base),
        r.seconds_quant,
        tps(r.seconds_quant),
        r.threads
    );
}

#[derive(clap::Args)]
pub struct EmbedArgs {
    /// Encoder: GGUF (bert) or Hugging Face folder (BertModel + tokenizer.json).
    model: PathBuf,
    #[command(flatten)]
    common: EmbedCommon,
    /// Output JSONL file: {"text", "n_tokens", "embedding"} per line (plus OUT.sha256).
    #[arg(long, short = 'o')]
    output: PathBuf,
}

pub fn run(a: EmbedArgs) -> Result<()> {
    let c = &a.common;
    let job = Job::Embed(EmbedJob {
        model: a.model.clone(),
        text: c.text.clone(),
        output: a.output.clone(),
        max_lines: c.max_lines,
        max_tokens: c.max_tokens,
        exact: c.exact,
    });
    let ctx = super::job_ctx(c.threads, Lines::shared(c.quiet), None)?;
    let Outcome::Embed(o) = super::run_job(&job, &ctx)
        .with_context(|| format!("embedding {} with {}", c.text.display(), a.model.display()))?
    else {
        unreachable!("an embed job has an embed outcome")
    };
    if !c.quiet {
        eprintln!("{}: {} embeddings, sha256 {}", o.output, o.embeddings, o.sha256);
    }
    Ok(())
}
