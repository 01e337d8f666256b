//! `crunch eval embed BASE QUANT --text FILE` and `crunch embed MODEL --text FILE -o OUT.jsonl`.

use anyhow::{Context, Result};
use crunch::eval::embed::{self, EmbedOptions, EmbedReport};
use std::io::Write;
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

impl EmbedCommon {
    fn options(&self) -> EmbedOptions {
        EmbedOptions { max_lines: self.max_lines, max_tokens: self.max_tokens, exact: self.exact }
    }
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
    super::set_threads(a.common.threads)?;
    let progress = super::progress::Lines { quiet: a.common.quiet || a.json };
    let r = embed::embed_compare(
        &a.base,
        &a.quant,
        &a.common.text,
        &a.common.options(),
        &progress,
        &super::ctrl_c_cancel(),
    )
    .with_context(|| format!("comparing embeddings of {} and {}", a.base.display(), a.quant.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_report(&r);
    }
    Ok(())
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
    super::set_threads(a.common.threads)?;
    let progress = super::progress::Lines { quiet: a.common.quiet };
    let records = embed::embed_file(&a.model, &a.common.text, &a.common.options(), &progress, &super::ctrl_c_cancel())
        .with_context(|| format!("embedding {} with {}", a.common.text.display(), a.model.display()))?;
    let mut out = crunch_core::output::AtomicFile::create(&a.output)
        .with_context(|| format!("creating {}", a.output.display()))?;
    for r in &records {
        serde_json::to_writer(&mut out, r)?;
        out.write_all(b"\n").with_context(|| format!("writing {}", a.output.display()))?;
    }
    let sha = out.commit().with_context(|| format!("writing {}", a.output.display()))?;
    if !a.common.quiet {
        eprintln!("{}: {} embeddings, sha256 {sha}", a.output.display(), records.len());
    }
    Ok(())
}
