//! Every `crunch` command that opens a GGUF model, run on broken files: a copy of SmolLM2 cut inside
//! its header, one cut inside its tensor data, garbage, an empty file. Each must fail cleanly (exit
//! code 1 or 2, no panic) with the broken file's path in its message. Commands that take a second
//! model (or an imatrix file) get the broken one in each position.

mod common;

use crunch_core::gguf::GgufFile;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Broken copies of the test model, and the other inputs commands need, in a scratch folder.
struct Inputs {
    dir: crunch_testkit::Scratch,
    /// (what is wrong, path)
    broken: Vec<(&'static str, PathBuf)>,
    good: PathBuf,
    text: PathBuf,
}

impl Inputs {
    fn new(tag: &str) -> Self {
        let dir = crunch_testkit::Scratch::new(tag);
        let good = crunch_testkit::smollm2_gguf();
        let bytes = std::fs::read(&good).unwrap();
        let data_start = GgufFile::open(&good).unwrap().header.data_start as usize;
        assert!(data_start > 1 << 20, "the header cut must fall inside the header");
        let mut garbage = b"GGML".to_vec(); // not GGUF
        garbage.extend((0..65536u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        let mut broken = Vec::new();
        for (what, name, content) in [
            ("cut in the header", "header-cut.gguf", &bytes[..1 << 20]),
            ("cut in the tensor data", "data-cut.gguf", &bytes[..data_start + (1 << 20)]),
            ("garbage", "garbage.gguf", &garbage[..]),
            ("empty", "empty.gguf", &[][..]),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, content).unwrap();
            broken.push((what, p));
        }
        let text = dir.join("text.txt");
        let line = "The quick brown fox jumps over the lazy dog, and the dog does not seem to mind at all.\n";
        std::fs::write(&text, line.repeat(40)).unwrap();
        Inputs { dir, broken, good, text }
    }

    fn out(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `crunch ARGS` fails without a panic and names `bad` in its error. Runs are recorded in the
/// scratch folder's registry, not the user's.
fn fails_naming(inputs: &Inputs, args: &[&str], what: &str, bad: &Path) {
    let o = Command::new(common::crunch_bin())
        .args(args)
        .env("CRUNCH_REGISTRY", inputs.dir.join("registry.db"))
        .output()
        .expect("run crunch");
    let stderr = String::from_utf8_lossy(&o.stderr);
    let ctx = format!("crunch {} ({what}):\n{stderr}", args.join(" "));
    assert!(matches!(o.status.code(), Some(1 | 2)), "exit status {:?}: {ctx}", o.status);
    assert!(!stderr.contains("panicked"), "panic: {ctx}");
    assert!(stderr.contains(s(bad)), "the error does not name {}: {ctx}", bad.display());
}

/// Run `make(bad)` for each broken file.
fn each_broken(inputs: &Inputs, make: impl Fn(&str) -> Vec<String>) {
    for (what, bad) in &inputs.broken {
        let args = make(s(bad));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_naming(inputs, &args, what, bad);
    }
}

fn v(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[test]
fn quantize_export_inspect_name_the_broken_model() {
    let i = Inputs::new("open-errors-q");
    let out = i.out("out.gguf");
    let hf = i.out("hf");
    each_broken(&i, |m| v(&["quantize", m, &out, "Q8_0"]));
    each_broken(&i, |m| v(&["quantize", m, &out, "Q4_K_M", "--dry-run", "--json"]));
    each_broken(&i, |m| v(&["export", m, &hf, "--quiet"]));
    each_broken(&i, |m| v(&["inspect", m]));
    each_broken(&i, |m| v(&["inspect", m, "--json"]));
    // the importance matrix is the broken GGUF
    let good = s(&i.good);
    each_broken(&i, |m| v(&["quantize", good, &out, "Q4_K_M", "--allow-requantize", "--imatrix", m]));
    assert!(!Path::new(&out).exists());
}

#[test]
fn imatrix_names_the_broken_model_or_matrix() {
    let i = Inputs::new("open-errors-imatrix");
    let text = s(&i.text);
    let out = i.out("imatrix.gguf");
    each_broken(&i, |m| v(&["imatrix", m, "-f", text, "-o", &out, "--ctx", "64", "--chunks", "1", "--quiet"]));
    each_broken(&i, |m| v(&["imatrix", "--in-file", m, "--show-statistics"]));
    each_broken(&i, |m| v(&["imatrix", "--in-file", m, "--in-file", m, "-o", &out, "--quiet"]));
    assert!(!Path::new(&out).exists());
}

#[test]
fn eval_perplexity_choice_run_bench_name_the_broken_model() {
    let i = Inputs::new("open-errors-eval");
    let text = s(&i.text);
    let tasks = i.dir.join("tasks.jsonl");
    std::fs::write(
        &tasks,
        "{\"context\": \"The cat\", \"endings\": [\" sat down.\", \" flew away.\"], \"label\": 0}\n",
    )
    .unwrap();
    let tasks = s(&tasks);
    each_broken(&i, |m| v(&["eval", "perplexity", m, "-f", text, "--ctx", "64", "--chunks", "1", "--quiet"]));
    each_broken(&i, |m| v(&["eval", "choice", m, "--tasks", tasks, "--quiet"]));
    each_broken(&i, |m| v(&["run", m, "-p", "Hello", "-n", "2"]));
    each_broken(&i, |m| v(&["bench", m, "--pp", "8", "--tg", "2", "-r", "1"]));
}

#[test]
fn eval_compare_names_the_broken_model_in_either_position() {
    let i = Inputs::new("open-errors-compare");
    let (text, good) = (s(&i.text), s(&i.good));
    let common = ["-f", text, "--ctx", "64", "--chunks", "1", "--quiet"];
    let with = |models: [&str; 2]| -> Vec<String> {
        let mut a = v(&["eval", "compare", models[0], models[1]]);
        a.extend(v(&common));
        a
    };
    each_broken(&i, |m| with([m, good]));
    each_broken(&i, |m| with([good, m]));
    let base = i.out("base.logits");
    each_broken(&i, |m| v(&["eval", "compare", m, "-f", text, "--ctx", "64", "--chunks", "1", "--save-base", &base]));
}

#[test]
fn embed_names_the_broken_encoder_in_either_position() {
    let i = Inputs::new("open-errors-embed");
    let text = s(&i.text);
    let minilm = crunch_testkit::minilm_dir();
    let good = s(&minilm);
    let out = i.out("emb.jsonl");
    each_broken(&i, |m| v(&["embed", m, "-f", text, "-o", &out, "--quiet"]));
    each_broken(&i, |m| v(&["eval", "embed", m, good, "-f", text, "--max-lines", "2", "--quiet"]));
    each_broken(&i, |m| v(&["eval", "embed", good, m, "-f", text, "--max-lines", "2", "--quiet"]));
    assert!(!Path::new(&out).exists());
}

#[test]
fn fit_and_search_name_the_broken_model() {
    let i = Inputs::new("open-errors-fit");
    let text = s(&i.text);
    let reg = i.out("registry.db");
    let cache = i.out("cache");
    let out = i.out("fit.gguf");
    let common = ["--text", text, "--registry", &reg, "--cache-dir", &cache, "--quiet"];
    each_broken(&i, |m| {
        let mut a = v(&["fit", m, &out, "--max-bpw", "5"]);
        a.extend(v(&common));
        a
    });
    each_broken(&i, |m| {
        let mut a = v(&["search", m, "--grid", "preset=Q4_0,Q8_0", "--dry-run"]);
        a.extend(v(&common));
        a
    });
    assert!(!Path::new(&out).exists());
}
