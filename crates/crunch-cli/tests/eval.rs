//! `crunch eval` / `run` on the real SmolLM2: greedy generation against llama.cpp's tokens, KL-divergence
//! of crunch's own quantizations, multiple choice built from WikiText, and bad input through the binary.

mod common;

use common::{crunch, smollm2_f32};
use crunch::eval::{self, Base, ChoiceOptions, CompareOptions, EvalOptions, RunOptions};
use crunch::progress::{Cancel, NoProgress};
use crunch::quantize::{self, Ftype, QuantizeOptions};
use crunch_core::gguf::{GgufFile, GgufWriter, Metadata, TensorSpec, Value};
use crunch_core::GgmlType;
use crunch_model::generate::SamplerOptions;
use std::path::{Path, PathBuf};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// SmolLM2 F32 quantized by crunch's library to `ftype`, cached beside the F32 file.
fn quantized(ftype: Ftype) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let f32_path = smollm2_f32();
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dest = crunch_testkit::cache_dir().join(format!("models/smollm2-{}.gguf", ftype.name().to_lowercase()));
    if dest.exists() {
        return dest;
    }
    let src = GgufFile::open(&f32_path).unwrap();
    let plan = quantize::build_plan(src.metadata(), src.tensors(), &QuantizeOptions::new(ftype)).unwrap();
    quantize::execute(&src, &plan, &dest, None, &NoProgress, &Cancel::new()).unwrap();
    dest
}

/// Greedy tokens equal llama.cpp's, from the fixture scripts/compare_generation.py wrote with
/// llama.cpp (never with crunch).
#[test]
fn greedy_generation_matches_llama_cpp() {
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/greedy_smollm2_f32.json"))
            .unwrap(),
    )
    .unwrap();
    let model = smollm2_f32();
    let n_check = 16;
    let opts = RunOptions {
        n_predict: n_check,
        sampler: SamplerOptions { temperature: 0.0, ..Default::default() },
        ..Default::default()
    };
    for case in fixture["cases"].as_array().unwrap().iter().take(3) {
        let prompt = case["prompt"].as_str().unwrap();
        let want: Vec<u32> = case["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let want_prompt: Vec<u32> =
            case["prompt_tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let mut streamed = String::new();
        let r = eval::run(&model, prompt, &opts, &Cancel::new(), &mut |s| {
            streamed.push_str(s);
            true
        })
        .unwrap();
        assert_eq!(r.prompt_tokens, want_prompt, "{prompt:?}: prompt tokens");
        let n = n_check.min(want.len());
        assert_eq!(&r.tokens[..n], &want[..n], "{prompt:?}: crunch {:?} vs llama.cpp {:?}", r.text, case["text"]);
        assert_eq!(streamed, r.text);
    }
}

/// KL-divergence of crunch's own Q8_0 / Q4_K_M / Q4_0 from the F32 model: Q8_0 is best; the base
/// logits survive a file round trip.
#[test]
fn compare_quantizations_with_f32() {
    let text = crunch_testkit::wikitext_dev();
    let opts = CompareOptions { eval: EvalOptions { ctx: 128, chunks: Some(3), ..Default::default() }, top_k: 32 };
    let f32_path = smollm2_f32();
    let loaded = eval::open_model(&f32_path, false).unwrap();
    let t = eval::read_text(&text).unwrap();
    let base = eval::base_logits(&loaded, "smollm2-f32", &t, &opts, &NoProgress, &Cancel::new()).unwrap();
    assert_eq!(base.n_positions(), 3 * 63);
    let mut stats = Vec::new();
    for ftype in [Ftype::Q8_0, Ftype::Q4_K_M, Ftype::Q4_0] {
        let m = eval::open_model(&quantized(ftype), false).unwrap();
        let s = eval::compare_with(&base, &m.model, &NoProgress, &Cancel::new()).unwrap();
        eprintln!(
            "{}: KLD mean {:.5} median {:.5} p99 {:.4} max {:.3}; same top {:.1}%; PPL {:.3} vs {:.3}",
            ftype.name(),
            s.kld.mean,
            s.kld.median,
            s.kld.p99,
            s.kld.max,
            s.same_top_pct,
            s.ppl_quant,
            s.ppl_base
        );
        assert!(s.kld.mean > 0.0 && s.kld.median <= s.kld.p99 && s.kld.p99 <= s.kld.max);
        assert!((s.ppl_ratio - s.ppl_quant / s.ppl_base).abs() < 1e-9);
        stats.push(s);
    }
    let (q8, q4km, q4) = (&stats[0], &stats[1], &stats[2]);
    assert!(q8.kld.mean < q4km.kld.mean && q8.kld.mean < q4.kld.mean, "Q8_0 is not the closest");
    assert!(q8.same_top_pct > 90.0, "Q8_0 same top token {:.1}%", q8.same_top_pct);
    assert!(q8.same_top_pct >= q4.same_top_pct);
    // The F32 model against itself: zero divergence, same perplexity.
    let same = eval::compare_with(&base, &loaded.model, &NoProgress, &Cancel::new()).unwrap();
    assert!(same.kld.max < 1e-4 && same.same_top_pct == 100.0, "{same:?}");

    // Saved and reloaded base logits give the same comparison through the file API.
    let s = crunch_testkit::Scratch::new("eval-logits");
    let file = s.join("base.logits");
    eval::save_base_logits(&base, &file).unwrap();
    assert!(crunch_core::output::sidecar_path(&file).exists());
    let r =
        eval::compare(&Base::Logits(file), &quantized(Ftype::Q8_0), None, &opts, &NoProgress, &Cancel::new()).unwrap();
    assert_eq!(r.stats, *q8);
}

/// Multiple choice built from the dev text: the context is the start of a WikiText sentence, the
/// right ending its true continuation, the wrong endings continuations of other sentences.
#[test]
fn choice_on_wikitext_sentences_beats_chance() {
    let text = std::fs::read_to_string(crunch_testkit::wikitext_dev()).unwrap();
    let sentences: Vec<Vec<&str>> = text
        .split(" . ")
        .map(|s| s.split_whitespace().collect::<Vec<_>>())
        .filter(|w| (12..40).contains(&w.len()) && w.iter().all(|x| !x.starts_with('=') && !x.starts_with('@')))
        .take(200)
        .collect();
    assert!(sentences.len() >= 100);
    let split = |w: &Vec<&str>| -> (String, String) {
        let k = w.len() * 2 / 3;
        (w[..k].join(" "), w[k..].join(" "))
    };
    let n_tasks = 24;
    let mut lines = String::new();
    let mut rng = crunch_testkit::Rng::new(5);
    for i in 0..n_tasks {
        let (context, right) = split(&sentences[i]);
        let label = (rng.next_u64() % 4) as usize;
        let mut endings = Vec::new();
        let mut other = 0;
        for e in 0..4 {
            if e == label {
                endings.push(right.clone());
            } else {
                other += 1;
                endings.push(split(&sentences[n_tasks + 3 * i + other]).1);
            }
        }
        let task = serde_json::json!({ "context": context, "endings": endings, "label": label });
        lines.push_str(&format!("{task}\n"));
    }
    let s = crunch_testkit::Scratch::new("eval-choice");
    let tasks = s.join("tasks.jsonl");
    std::fs::write(&tasks, lines).unwrap();
    let model = crunch_testkit::smollm2_gguf();
    let r = eval::choice(&model, &tasks, &ChoiceOptions::default(), &NoProgress, &Cancel::new()).unwrap();
    eprintln!("acc {:.1}% acc_norm {:.1}% (chance {:.0}%)", r.acc.pct, r.acc_norm.pct, r.chance_pct);
    assert_eq!((r.n_tasks, r.chance_pct), (n_tasks, 25.0));
    // Length-normalised scoring must beat chance beyond its 95% interval; the summed score, which
    // favours short endings, must at least be above chance.
    assert!(r.acc_norm.ci_low > r.chance_pct && r.acc.pct > r.chance_pct, "acc {:?} acc_norm {:?}", r.acc, r.acc_norm);

    // Bad task files name the line.
    std::fs::write(&tasks, "{\"context\": \"a\", \"endings\": [\"b\"], \"label\": 0}\n").unwrap();
    let e = eval::load_tasks(&tasks).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("at least 2"), "{e}");
    std::fs::write(&tasks, "\n{\"context\": \"a\", \"endings\": [\"b\", \"c\"], \"label\": \"7\"}\n").unwrap();
    assert!(eval::load_tasks(&tasks).unwrap_err().to_string().contains("line 2"));
}

/// A small Llama-shaped GGUF with random weights; `edit` may change metadata and tensor specs.
fn tiny_llama(path: &Path, edit: impl FnOnce(&mut Metadata, &mut Vec<TensorSpec>)) {
    let mut m = Metadata::default();
    m.set("general.architecture", Value::string("llama"));
    for (k, v) in [
        ("block_count", 1u32),
        ("embedding_length", 64),
        ("feed_forward_length", 128),
        ("attention.head_count", 4),
        ("context_length", 256),
        ("vocab_size", 100),
    ] {
        m.set(&format!("llama.{k}"), Value::U32(v));
    }
    let t = |name: &str, dims: Vec<u64>| TensorSpec { name: name.into(), ty: GgmlType::F32, dims };
    let mut specs = vec![
        t("token_embd.weight", vec![64, 100]),
        t("blk.0.attn_norm.weight", vec![64]),
        t("blk.0.attn_q.weight", vec![64, 64]),
        t("blk.0.attn_k.weight", vec![64, 64]),
        t("blk.0.attn_v.weight", vec![64, 64]),
        t("blk.0.attn_output.weight", vec![64, 64]),
        t("blk.0.ffn_norm.weight", vec![64]),
        t("blk.0.ffn_gate.weight", vec![64, 128]),
        t("blk.0.ffn_up.weight", vec![64, 128]),
        t("blk.0.ffn_down.weight", vec![128, 64]),
        t("output_norm.weight", vec![64]),
    ];
    edit(&mut m, &mut specs);
    let mut w = GgufWriter::create(path, m, &specs).unwrap();
    for t in w.tensors().to_vec() {
        let vals = crunch_testkit::realistic_weights(t.n_rows() as usize, t.row_len() as usize, 3);
        w.write_tensor(&t.name, &crunch_testkit::f32_bytes(&vals)).unwrap();
    }
    w.finish().unwrap();
}

/// Bad input through the binary: each a non-zero exit with a message naming the problem.
#[test]
fn bad_input_is_a_clear_error() {
    let s = crunch_testkit::Scratch::new("eval-bad");
    let text = crunch_testkit::wikitext_dev();
    let text = text.to_str().unwrap();
    let check = |args: &[&str], needles: &[&str]| {
        let o = crunch(args);
        let e = stderr(&o);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert!(!e.contains("panicked"), "{args:?} panicked: {e}");
        for n in needles {
            assert!(e.contains(n), "{args:?}: {n:?} not in {e}");
        }
    };
    let arch = s.join("arch.gguf");
    tiny_llama(&arch, |m, _| m.set("general.architecture", Value::string("gpt2")));
    check(&["eval", "perplexity", arch.to_str().unwrap(), "--text", text], &["\"gpt2\"", "arch.gguf"]);

    let missing = s.join("missing.gguf");
    tiny_llama(&missing, |_, t| t.retain(|t| t.name != "blk.0.ffn_up.weight"));
    check(&["eval", "perplexity", missing.to_str().unwrap(), "--text", text], &["blk.0.ffn_up.weight"]);

    let shape = s.join("shape.gguf");
    tiny_llama(&shape, |_, t| t[3].dims = vec![64, 32]);
    check(&["run", shape.to_str().unwrap(), "-p", "hi"], &["blk.0.attn_k.weight", "[64, 32]"]);

    let model = crunch_testkit::smollm2_gguf();
    let model = model.to_str().unwrap();
    let empty = s.join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    check(&["eval", "perplexity", model, "--text", empty.to_str().unwrap()], &["empty.txt", "empty"]);
    check(&["eval", "perplexity", model, "--text", text, "--ctx", "100000"], &["100000", "context_length"]);
    check(&["bench", model, "--pp", "100000", "--tg", "0"], &["context_length"]);
    let nofile = s.join("nope.gguf");
    check(&["eval", "choice", nofile.to_str().unwrap(), "--tasks", empty.to_str().unwrap()], &["no tasks"]);
    let garbage = s.join("garbage.logits");
    std::fs::write(&garbage, b"not logits at all").unwrap();
    check(&["eval", "compare", model, "--base-logits", garbage.to_str().unwrap()], &["garbage.logits", "magic"]);
}

/// The CLI's JSON outputs parse and carry the numbers (short runs on the shipped Q4_1).
#[test]
fn cli_json_outputs() {
    let model = crunch_testkit::smollm2_gguf();
    let model = model.to_str().unwrap();
    let text = crunch_testkit::wikitext_dev();
    let o = crunch(&[
        "eval",
        "perplexity",
        model,
        "--text",
        text.to_str().unwrap(),
        "--ctx",
        "64",
        "--chunks",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["n_chunks"].as_u64(), v["count"].as_u64()), (Some(2), Some(2 * 31)));
    assert!(v["ppl"].as_f64().unwrap() > 1.0 && v["chunks"].as_array().unwrap().len() == 2);

    let o = crunch(&["run", model, "-p", "The capital of France is", "-n", "4", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tokens"].as_array().unwrap().len(), 4);
    assert!(v["text"].as_str().unwrap().contains("Paris"), "{v}");

    let o = crunch(&["bench", model, "--pp", "16", "--tg", "4", "-r", "1", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tests: Vec<&str> = v["results"].as_array().unwrap().iter().map(|r| r["test"].as_str().unwrap()).collect();
    assert_eq!(tests, ["pp16", "tg4"]);
    assert!(v["peak_rss_bytes"].as_u64().unwrap() > 0 && v["weight_type"] == "Q4_1");
}

/// The top-k approximation of the KL-divergence against the exact full-vocabulary value (numbers for
/// docs/EVAL.md): `cargo test --release -p crunch-cli --test eval -- --ignored topk --nocapture`.
#[test]
#[ignore = "slow: runs F32 and two quantizations at ctx 512"]
fn topk_approximation_error() {
    let base = eval::open_model(&smollm2_f32(), false).unwrap();
    let t = eval::read_text(&crunch_testkit::wikitext_dev()).unwrap();
    let tokens = base.tokenizer.encode(&t, true).unwrap();
    let bos = base.tokenizer.add_bos().then(|| base.tokenizer.bos()).flatten();
    let opts = EvalOptions { ctx: 512, chunks: Some(4), ..Default::default() };
    let ks = [1, 4, 16, 32, 64, 256];
    for ftype in [Ftype::Q8_0, Ftype::Q4_K_M, Ftype::Q4_0] {
        let q = eval::open_model(&quantized(ftype), false).unwrap();
        let e = eval::topk_error(&base.model, &q.model, &tokens, bos, &opts, &ks).unwrap();
        println!("{} ({} positions): full-vocabulary mean KLD {:.6}", ftype.name(), e.n_positions, e.full);
        for (k, kl, rest) in &e.top_k {
            println!(
                "  top-{k:<4} mean KLD {kl:.6}  ({:+.2}% of full)  mean base mass outside top-k {rest:.4}",
                100.0 * (kl - e.full) / e.full
            );
        }
        for w in e.top_k.windows(2) {
            assert!(w[1].1 + 1e-9 >= w[0].1 && w[1].1 <= e.full + 1e-6);
        }
    }
}
