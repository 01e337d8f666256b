//! Tokenize a text file and print the ids as JSON (used by scripts/compare_tokens.py).
//!
//! ```text
//! cargo run --release -p crunch-model --example tokenize -- \
//!     (--gguf MODEL.gguf | --vocab VOCAB.json | --hf tokenizer.json) [--text FILE] [--lines] [--add-special] \
//!     [--no-parse-special] [--repeat N] [--strings] [--pieces]
//! ```
//!
//! `--gguf` reads the vocabulary from the model's metadata; `VOCAB.json` is a `GgufVocab` as
//! written by scripts/dump_vocab.py. The text comes from FILE or
//! standard input. `--lines` tokenizes each line (with its `\n`) on its own and prints a list of
//! lists; `--strings` reads the input as a JSON list of strings and does the same for each.
//! `--pieces` prints every token's piece (`token_to_piece`) as hex instead. Timing goes to
//! standard error.

use std::io::{Read, Write};
use std::time::Instant;

use crunch_model::tokenizer::{EncodeOptions, GgufVocab, Tokenizer};

fn main() {
    if let Err(e) = run() {
        eprintln!("tokenize: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut vocab = None;
    let mut hf = None;
    let mut gguf = None;
    let mut text_path = None;
    let mut lines = false;
    let mut opts = EncodeOptions { add_special: false, parse_special: true };
    let mut repeat = 1usize;
    let mut strings = false;
    let mut pieces = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--vocab" => vocab = args.next(),
            "--hf" => hf = args.next(),
            "--gguf" => gguf = args.next(),
            "--text" => text_path = args.next(),
            "--lines" => lines = true,
            "--add-special" => opts.add_special = true,
            "--no-parse-special" => opts.parse_special = false,
            "--strings" => strings = true,
            "--pieces" => pieces = true,
            "--repeat" => repeat = args.next().ok_or("--repeat needs a count")?.parse()?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let t0 = Instant::now();
    let tok = match (vocab, hf) {
        (None, None) if gguf.is_some() => {
            Tokenizer::from_gguf(&crunch_core::gguf::GgufFile::open(gguf.as_deref().unwrap_or_default())?)?
        }
        _ if gguf.is_some() => return Err("give exactly one of --gguf, --vocab and --hf".into()),
        (Some(v), None) => Tokenizer::from_gguf_vocab(&GgufVocab::from_json(&std::fs::read_to_string(v)?)?)?,
        (None, Some(h)) => Tokenizer::from_hf_file(h)?,
        _ => return Err("give exactly one of --gguf, --vocab and --hf".into()),
    };
    let load = t0.elapsed().as_secs_f64();
    let text = match text_path {
        Some(p) => std::fs::read_to_string(p)?,
        None => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
    };
    if pieces {
        let all: Vec<String> = (0..tok.vocab_size() as u32)
            .map(|id| tok.token_to_piece(id).iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        writeln!(std::io::stdout().lock(), "{}", serde_json::to_string(&all)?)?;
        return Ok(());
    }
    let inputs: Option<Vec<String>> = if strings { Some(serde_json::from_str(&text)?) } else { None };
    let mut best = f64::INFINITY;
    let mut json = String::new();
    for _ in 0..repeat.max(1) {
        let t1 = Instant::now();
        json = if let Some(inputs) = &inputs {
            let all: Vec<Vec<u32>> = inputs.iter().map(|l| tok.encode_with(l, opts)).collect::<Result<_, _>>()?;
            serde_json::to_string(&all)?
        } else if lines {
            let all: Vec<Vec<u32>> =
                text.split_inclusive('\n').map(|l| tok.encode_with(l, opts)).collect::<Result<_, _>>()?;
            serde_json::to_string(&all)?
        } else {
            serde_json::to_string(&tok.encode_with(&text, opts)?)?
        };
        best = best.min(t1.elapsed().as_secs_f64());
    }
    let mut out = std::io::stdout().lock();
    out.write_all(json.as_bytes())?;
    out.write_all(b"\n")?;
    eprintln!("load {load:.3}s, encode {best:.3}s for {} bytes", text.len());
    Ok(())
}
