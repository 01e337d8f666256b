//! LoRA adapters (`--lora FILE[:SCALE]`) through every command that runs a model, on the real
//! SmolLM2 with small random adapters written by `crunch_model::lora::write_adapter`: they change
//! the numbers, scale 0 changes nothing, the base of a comparison never gets them, bad adapters
//! are errors naming the file and the key or tensor, and runs record them.

mod common;

use common::crunch;
use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;
use crunch_model::lora::{adapter_metadata, write_adapter, LoraTensor};
use std::path::{Path, PathBuf};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A rank-`rank` adapter for `arch` with alpha = rank (so SCALE is the factor of `B A`), values
/// of about 0.02; each target is `(tensor, n_in, n_out)`.
fn write_random(dest: &Path, arch: &str, targets: &[(&str, usize, usize)], rank: usize, seed: u64) {
    let mut rng = crunch_testkit::Rng::new(seed);
    let mut normal = |n: usize| (0..n).map(|_| 0.02 * rng.normal()).collect::<Vec<f32>>();
    let tensors: Vec<LoraTensor> = targets
        .iter()
        .map(|&(base, n_in, n_out)| LoraTensor {
            base: base.into(),
            rank,
            n_in,
            n_out,
            a: normal(rank * n_in),
            b: normal(n_out * rank),
        })
        .collect();
    write_adapter(dest, adapter_metadata(arch, rank as f32), GgmlType::F32, &tensors).unwrap();
}

/// `(name, n_in, n_out)` of SmolLM2's weights `names`.
fn shapes(names: &[&'static str]) -> Vec<(&'static str, usize, usize)> {
    let f = GgufFile::open(crunch_testkit::smollm2_gguf()).unwrap();
    names
        .iter()
        .map(|&n| {
            let t = f.tensor(n).unwrap_or_else(|| panic!("SmolLM2 has no {n}"));
            (n, t.dims[0] as usize, t.dims[1] as usize)
        })
        .collect()
}

/// The adapter of these tests: rank 8 on `blk.0.attn_q.weight` and `blk.3.ffn_down.weight`.
fn adapter(s: &crunch_testkit::Scratch) -> PathBuf {
    let p = s.join("adapter.gguf");
    write_random(&p, "llama", &shapes(&["blk.0.attn_q.weight", "blk.3.ffn_down.weight"]), 8, 15);
    p
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn json_of(args: &[&str]) -> serde_json::Value {
    let o = crunch(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[test]
fn an_adapter_changes_the_model_and_scale_zero_does_not() {
    let s = crunch_testkit::Scratch::new("lora");
    let a = adapter(&s);
    let a = a.to_str().unwrap();
    let model = crunch_testkit::smollm2_gguf();
    let model = model.to_str().unwrap();
    let text = crunch_testkit::wikitext_dev();
    let text = text.to_str().unwrap();
    let ppl = |extra: &[&str]| {
        let mut args = vec!["eval", "perplexity", model, "--text", text, "--ctx", "128", "--chunks", "2", "--json"];
        args.extend_from_slice(extra);
        json_of(&args)["ppl"].as_f64().unwrap()
    };
    let plain = ppl(&[]);
    let with = ppl(&["--lora", a]);
    let zero = ppl(&["--lora", &format!("{a}:0")]);
    assert_ne!(with, plain, "the adapter changed nothing");
    assert_eq!(zero, plain, "scale 0 must be the model without the adapter");
    // Two adapters add up: the same one twice at half scale is the adapter once, up to rounding.
    // With --exact only: activations quantized per block (the default, as llama.cpp) turn any
    // rounding difference into another draw of their quantization noise, about 1% of PPL on so
    // few tokens.
    let once = ppl(&["--exact", "--lora", a]);
    let halves = ppl(&["--exact", "--lora", &format!("{a}:0.5"), "--lora", &format!("{a}:0.5")]);
    assert!(((halves - once) / once).abs() < 1e-5, "{halves} vs {once}");
    assert_ne!(once, ppl(&["--exact"]));

    // compare: the adapter is applied to the model under test, never to the base
    let cmp = |extra: &[&str]| {
        let mut args = vec!["eval", "compare", model, model, "--text", text, "--ctx", "128", "--chunks", "2", "--json"];
        args.extend_from_slice(extra);
        json_of(&args)
    };
    let close = |x: &serde_json::Value, want: f64| (x.as_f64().unwrap() / want - 1.0).abs() < 1e-6;
    let same = cmp(&[]);
    let same_kld = same["kld"]["mean"].as_f64().unwrap();
    assert!(same_kld < 1e-6, "{same}");
    let c = cmp(&["--lora", a]);
    assert!(c["kld"]["mean"].as_f64().unwrap() > 100.0 * same_kld.max(1e-9), "{c}");
    assert!(close(&c["ppl_base"], plain) && close(&c["ppl_quant"], with), "{c}: {plain} {with}");

    // the other commands that run a model take it too
    let r = json_of(&["run", model, "-p", "The capital of France is", "-n", "4", "--lora", a, "--json"]);
    assert_eq!(r["tokens"].as_array().unwrap().len(), 4, "{r}");
    let b = json_of(&["bench", model, "--pp", "16", "--tg", "2", "-r", "1", "--lora", a, "--json"]);
    assert_eq!(b["results"].as_array().unwrap().len(), 2, "{b}");
    let out = s.join("imatrix.gguf");
    let imatrix = |dest: &Path, extra: &[&str]| {
        let mut args =
            vec!["imatrix", model, "-f", text, "--ctx", "128", "--chunks", "1", "-o", dest.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push("--quiet");
        let o = crunch(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        std::fs::read(dest).unwrap()
    };
    let plain_imatrix = imatrix(&s.join("plain.gguf"), &[]);
    assert_ne!(imatrix(&out, &["--lora", a]), plain_imatrix, "the adapter did not change the activations");
}

#[test]
fn bad_adapters_are_errors_naming_the_file_and_the_key_or_tensor() {
    let s = crunch_testkit::Scratch::new("lora-bad");
    let model = crunch_testkit::smollm2_gguf();
    let model = model.to_str().unwrap();
    let text = crunch_testkit::wikitext_dev();
    let text = text.to_str().unwrap();
    let check = |args: &[&str], needles: &[&str]| {
        let o = crunch(args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert!(!e.contains("panicked"), "{args:?} panicked: {e}");
        for n in needles {
            assert!(e.contains(n), "{args:?}: {n:?} not in {e}");
        }
    };
    let ppl = |lora: &Path| {
        vec![
            "eval".to_string(),
            "perplexity".into(),
            model.into(),
            "--text".into(),
            text.into(),
            "--ctx".into(),
            "128".into(),
            "--chunks".into(),
            "2".into(),
            "--lora".into(),
            lora.display().to_string(),
        ]
    };

    let qwen = s.join("qwen2-adapter.gguf");
    write_random(&qwen, "qwen2", &shapes(&["blk.0.attn_q.weight"]), 8, 1);
    check(&args(&ppl(&qwen)), &["--lora", "qwen2-adapter.gguf", "general.architecture", "\"qwen2\"", "\"llama\""]);

    let wrong = s.join("shape-adapter.gguf");
    write_random(&wrong, "llama", &[("blk.0.attn_q.weight", 576, 64)], 8, 2);
    check(&args(&ppl(&wrong)), &["--lora", "shape-adapter.gguf", "blk.0.attn_q.weight", "[576, 64]"]);
    let unknown = s.join("unknown-adapter.gguf");
    write_random(&unknown, "llama", &[("blk.99.attn_q.weight", 576, 576)], 8, 3);
    check(
        &["bench", model, "--pp", "8", "--tg", "0", "--lora", unknown.to_str().unwrap()],
        &["--lora", "unknown-adapter.gguf", "blk.99.attn_q.weight"],
    );
    let missing = s.join("missing-adapter.gguf");
    check(&args(&ppl(&missing)), &["missing-adapter.gguf"]);
    check(&["run", model, "-p", "hi", "--lora", model], &["--lora", "general.type"]);
    let out = s.join("i.gguf");
    let o = out.to_str().unwrap();
    let imatrix =
        ["imatrix", model, "-f", text, "--ctx", "128", "--chunks", "1", "-o", o, "--lora", wrong.to_str().unwrap()];
    check(&imatrix, &["--lora", "blk.0.attn_q.weight"]);
    assert!(!out.exists());
    // a scale that is not a finite number is refused by the argument parser
    let o = crunch(&["eval", "perplexity", model, "--text", text, "--lora", "a.gguf:nan"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--lora") && stderr(&o).contains("finite"), "{}", stderr(&o));
}

/// Runs with an adapter are recorded with it: `params.lora` (path and scale) and an input of role
/// `lora` with its hash.
#[test]
fn runs_record_their_adapters() {
    use crunch::job::{Job, Outcome, PerplexityJob, RunCtx};
    let s = crunch_testkit::Scratch::new("lora-registry");
    let a = adapter(&s);
    let registry = s.join("runs.db");
    let ctx = RunCtx::new(2).unwrap().with_registry(Some(registry.clone()));
    let job = |lora: Vec<crunch_model::LoraSpec>| {
        Job::Perplexity(PerplexityJob {
            model: crunch_testkit::smollm2_gguf(),
            text: crunch_testkit::wikitext_dev(),
            ctx: 64,
            chunks: Some(2),
            exact: false,
            lora,
        })
    };
    let run = |j: &Job| match crunch::job::run(j, &ctx).unwrap() {
        Outcome::Perplexity(o) => o.run_id.expect("recorded"),
        other => panic!("{other:?}"),
    };
    let spec = crunch_model::LoraSpec::parse(&format!("{}:0.5", a.display())).unwrap();
    let with = run(&job(vec![spec]));
    let without = run(&job(Vec::new()));
    let reg = crunch_registry::Registry::open(&registry).unwrap();
    let r = reg.get(with).unwrap();
    let lora = r.params["lora"].as_array().unwrap_or_else(|| panic!("{}", r.params));
    assert_eq!(lora.len(), 1);
    assert_eq!(lora[0]["scale"].as_f64(), Some(0.5));
    assert!(lora[0]["path"].as_str().unwrap().ends_with("adapter.gguf"), "{}", r.params);
    let input = r.inputs.iter().find(|i| i.role == "lora").expect("the adapter is an input");
    assert_eq!(input.sha256.as_deref(), Some(crunch_core::output::sha256_file(&a).unwrap().as_str()));
    let r = reg.get(without).unwrap();
    assert!(r.params.get("lora").is_none(), "{}", r.params);
    assert!(r.inputs.iter().all(|i| i.role != "lora"));
}
