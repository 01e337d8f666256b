//! `crunch eval embed` and `crunch embed` end to end on all-MiniLM-L6-v2 and the WikiText-2 dev text:
//! the Hugging Face folder against crunch's own GGUF conversion (same embeddings), F32 against Q8_0
//! made by `crunch quantize` (cosine > 0.99), JSONL output, and clear errors for bad input.

mod common;

use common::crunch;
use serde_json::Value;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_of(args: &[&str]) -> Value {
    let o = crunch(args);
    assert!(o.status.success(), "crunch {args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("crunch {args:?}: not JSON ({e})"))
}

#[test]
fn eval_embed_minilm_f32_q8_0_and_jsonl() {
    let s = crunch_testkit::Scratch::new("embed");
    let dir = crunch_testkit::minilm_dir();
    let dir = dir.to_str().unwrap();
    let text = crunch_testkit::wikitext_dev();
    let text = text.to_str().unwrap();
    let f32_path = s.join("minilm-f32.gguf");
    let q8_path = s.join("minilm-q8_0.gguf");
    let (f32s, q8s) = (f32_path.to_str().unwrap(), q8_path.to_str().unwrap());

    let o = crunch(&["convert", dir, f32s, "--type", "f32", "--quiet"]);
    assert!(o.status.success(), "convert: {}", stderr(&o));
    let o = crunch(&["quantize", f32s, q8s, "q8_0"]);
    assert!(o.status.success(), "quantize: {}", stderr(&o));

    // The folder and crunch's GGUF of it: same tokens, same embeddings.
    let r = json_of(&["eval", "embed", dir, f32s, "--text", text, "--max-lines", "12", "--json"]);
    assert_eq!(r["n_texts"], 12);
    assert_eq!(r["dim"], 384);
    assert_eq!(r["max_tokens"], 256, "the folder's max_seq_length");
    assert_eq!(r["texts_tokenized_differently"], 0);
    let min = r["cosine"]["min"].as_f64().unwrap();
    assert!(min > 0.999_999, "folder vs GGUF: min cosine {min}");

    // F32 against Q8_0: what quantization cost, on a real model.
    let r = json_of(&["eval", "embed", f32s, q8s, "--text", text, "--max-lines", "32", "--json"]);
    let c = &r["cosine"];
    let (mean, p1, min) = (c["mean"].as_f64().unwrap(), c["p1"].as_f64().unwrap(), c["min"].as_f64().unwrap());
    eprintln!("MiniLM F32 vs Q8_0 over 32 lines: mean {mean:.6}, p1 {p1:.6}, min {min:.6}");
    assert!(mean > 0.99 && min > 0.98, "{r}");
    assert!(mean < 1.0, "Q8_0 cannot be exactly F32: {r}");
    assert_eq!(r["worst"].as_array().unwrap().len(), 5);

    // The table form names the figures.
    let o = crunch(&["eval", "embed", f32s, q8s, "--text", text, "--max-lines", "4", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Mean   cosine") && out.contains("1%     cosine"), "{out}");

    // crunch embed: one JSON object per line, unit vectors, sha256 sidecar.
    let jl = s.join("emb.jsonl");
    let o = crunch(&["embed", q8s, "--text", text, "--max-lines", "3", "-o", jl.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let body = std::fs::read_to_string(&jl).unwrap();
    let recs: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs.len(), 3);
    for r in &recs {
        let e: Vec<f64> = r["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(e.len(), 384);
        let norm = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        assert!(r["n_tokens"].as_u64().unwrap() >= 3);
    }
    assert!(s.join("emb.jsonl.sha256").exists());
}

#[test]
fn eval_embed_bad_input() {
    let s = crunch_testkit::Scratch::new("embed-bad");
    let dir = crunch_testkit::minilm_dir();
    let dir = dir.to_str().unwrap();
    let text = crunch_testkit::wikitext_dev();

    let empty = s.join("empty.txt");
    std::fs::write(&empty, "\n  \n").unwrap();
    let o = crunch(&["eval", "embed", dir, dir, "--text", empty.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("empty"), "{}", stderr(&o));

    let llama = crunch_testkit::smollm2_gguf();
    let o = crunch(&["eval", "embed", dir, llama.to_str().unwrap(), "--text", text.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("\"llama\"") && e.contains("expected bert"), "{e}");
    assert!(!e.contains("panicked"), "{e}");

    let o = crunch(&["embed", s.join("missing").to_str().unwrap(), "--text", text.to_str().unwrap(), "-o", "x"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no such file"), "{}", stderr(&o));

    let o = crunch(&["eval", "embed", dir, dir, "--text", text.to_str().unwrap(), "--max-tokens", "1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("max-tokens"), "{}", stderr(&o));
}
