//! `crunch imatrix` and calibrated `crunch quantize` end to end, on SmolLM2 and real text, with
//! small contexts so the suite stays fast.

mod common;

use common::crunch;
use crunch_calib::Imatrix;
use crunch_core::gguf::{GgufFile, GgufWriter, Metadata, TensorSpec, Value};
use crunch_core::GgmlType;
use crunch_testkit::Scratch;

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn err(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected failure, got: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn imatrix(model: &std::path::Path, out: &std::path::Path, chunks: usize, extra: &[&str]) -> std::process::Output {
    let wiki = crunch_testkit::wikitext_dev();
    let c = chunks.to_string();
    let mut args = vec!["imatrix", s(model), "--text", s(&wiki), "-o", s(out), "--ctx", "32", "--chunks", &c, "-q"];
    args.extend_from_slice(extra);
    crunch(&args)
}

#[test]
fn imatrix_runs_merges_resumes_and_feeds_quantize() {
    let f32m = common::smollm2_f32();
    let sc = Scratch::new("calib-cli");
    let two = sc.join("two.imatrix.gguf");
    ok(&imatrix(&f32m, &two, 2, &[]));
    let m2 = Imatrix::load(&two, 32).unwrap();
    assert_eq!((m2.entries.len(), m2.chunk_count, m2.chunk_size), (210, 2, 32));

    // Resume: one chunk, then continue to two; the sums match the straight run.
    let res = sc.join("resumed.imatrix.gguf");
    ok(&imatrix(&f32m, &res, 1, &[]));
    ok(&imatrix(&f32m, &res, 2, &["--resume"]));
    let mr = Imatrix::load(&res, 32).unwrap();
    assert_eq!(mr.chunk_count, 2);
    for (name, e) in &m2.entries {
        let r = &mr.entries[name];
        assert_eq!(r.counts, e.counts, "{name}");
        for (a, b) in e.sums.iter().zip(&r.sums) {
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1e-3), "{name}: {a} vs {b}");
        }
    }

    // Merge two files into a legacy .dat, then read it back.
    let merged = sc.join("merged.dat");
    ok(&crunch(&["imatrix", "--in-file", s(&two), "--in-file", s(&res), "-o", s(&merged), "--ctx", "32", "-q"]));
    let mm = Imatrix::load(&merged, 32).unwrap();
    assert_eq!(mm.chunk_count, 4);
    let stats = crunch(&["imatrix", "--in-file", s(&merged), "--show-statistics", "--ctx", "32"]);
    ok(&stats);
    assert!(String::from_utf8_lossy(&stats.stdout).contains("ffn_down"));

    // Quantize with it: llama.cpp's metadata keys are written.
    let q = sc.join("q4_0.gguf");
    ok(&crunch(&["quantize", s(&f32m), s(&q), "Q4_0", "--imatrix", s(&two), "-q"]));
    let f = GgufFile::open(&q).unwrap();
    assert_eq!(f.metadata().get_u64("quantize.imatrix.entries_count"), Some(210));
    assert_eq!(f.metadata().get_u64("quantize.imatrix.chunks_count"), Some(2));
    // Weighted quantization differs from plain.
    let plain = sc.join("plain.gguf");
    ok(&crunch(&["quantize", s(&f32m), s(&plain), "Q4_0", "-q"]));
    let pf = GgufFile::open(&plain).unwrap();
    let t = "blk.3.ffn_up.weight";
    assert_ne!(f.tensor_data(f.tensor(t).unwrap()), pf.tensor_data(pf.tensor(t).unwrap()));
}

#[test]
fn gptq_and_awq_write_normal_gguf() {
    let f32m = common::smollm2_f32();
    let sc = Scratch::new("calib-gptq");
    let wiki = crunch_testkit::wikitext_dev();
    for (method, ty) in [("gptq", "Q4_0"), ("awq,gptq", "IQ4_NL")] {
        let out = sc.join(&format!("{ty}.gguf"));
        let r = crunch(&[
            "quantize",
            s(&f32m),
            s(&out),
            ty,
            "--method",
            method,
            "--text",
            s(&wiki),
            "--ctx",
            "32",
            "--chunks",
            "2",
            "--awq-grid",
            "4",
            "-q",
        ]);
        ok(&r);
        assert!(!sc.join(&format!("{ty}.gguf.calib-tmp")).exists(), "scratch folder removed");
        let plan = crunch(&["quantize", s(&f32m), s(&sc.join("x.gguf")), ty, "--dry-run", "--json"]);
        let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
        let f = GgufFile::open(&out).unwrap();
        for t in plan["plan"]["tensors"].as_array().unwrap() {
            let info = f.tensor(t["name"].as_str().unwrap()).unwrap();
            assert_eq!(info.ty.name(), t["dst_type"].as_str().unwrap());
        }
        // The model runs.
        let m = crunch_model::LlamaModel::open(&out).unwrap();
        let logits = m.forward(&[1, 2, 3, 4], &mut m.new_cache(4)).unwrap();
        assert!(logits.iter().all(|v| v.is_finite()));
    }
}

/// AWQ folds the division of `attn_output`'s input into `attn_v`'s rows *and bias*: on Qwen2.5
/// (biased Q/K/V) the AWQ model must compute what the original does, up to Q8_0 rounding. Before
/// the bias was written back the file scored KLD 3.8 (PPL x40); here it is about 0.001.
#[test]
fn awq_keeps_qwens_biased_value_projection_exact() {
    let qwen = crunch_testkit::qwen2_gguf();
    let sc = Scratch::new("calib-awq-qwen");
    let wiki = crunch_testkit::wikitext_dev();
    let out = sc.join("awq-q8_0.gguf");
    ok(&crunch(&[
        "quantize",
        s(&qwen),
        s(&out),
        "Q8_0",
        "--allow-requantize",
        "--method",
        "awq",
        "--text",
        s(&wiki),
        "--ctx",
        "64",
        "--chunks",
        "1",
        "--awq-grid",
        "2",
        "-q",
    ]));
    // Some value biases were rescaled (AWQ chose a scale for attn_output somewhere).
    let (a, b) = (GgufFile::open(&qwen).unwrap(), GgufFile::open(&out).unwrap());
    let bias = |f: &GgufFile, i: usize| {
        let t = f.tensor(&format!("blk.{i}.attn_v.bias")).unwrap();
        assert_eq!(t.ty, GgmlType::F32);
        f.tensor_data(t).to_vec()
    };
    let changed = (0..24).filter(|&i| bias(&a, i) != bias(&b, i)).count();
    assert!(changed > 0, "no attn_v.bias was rescaled");
    let r =
        crunch(&["eval", "compare", s(&qwen), s(&out), "--text", s(&wiki), "--ctx", "128", "--chunks", "2", "--json"]);
    ok(&r);
    let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let kld = j["kld"]["mean"].as_f64().unwrap();
    assert!(kld < 0.01, "AWQ changed what Qwen computes: KLD {kld}");
}

#[test]
fn bad_calibration_inputs_are_clear_errors() {
    let f32m = common::smollm2_f32();
    let sc = Scratch::new("calib-bad");
    // Text shorter than one context.
    let short = sc.join("short.txt");
    std::fs::write(&short, "A few words only.").unwrap();
    let e = err(&crunch(&["imatrix", s(&f32m), "--text", s(&short), "-o", s(&sc.join("x.gguf")), "--ctx", "512"]));
    assert!(e.contains("fewer than one context of 512 tokens"), "{e}");
    let e = err(&crunch(&[
        "quantize",
        s(&f32m),
        s(&sc.join("y.gguf")),
        "Q4_0",
        "--method",
        "gptq",
        "--text",
        s(&short),
        "--ctx",
        "64",
    ]));
    assert!(e.contains("fewer than one context of 64 tokens"), "{e}");
    assert!(!sc.join("y.gguf").exists());

    // An imatrix made for another model (other names and sizes).
    let mut other = Imatrix { chunk_size: 512, chunk_count: 1, datasets: vec!["x".into()], ..Default::default() };
    other
        .entries
        .insert("blk.0.attn_q.weight".into(), crunch_calib::ImatrixEntry { sums: vec![1.0; 4096], counts: vec![512] });
    other.entries.insert(
        "blk.40.ffn_down.weight".into(),
        crunch_calib::ImatrixEntry { sums: vec![1.0; 11008], counts: vec![512] },
    );
    let om = sc.join("other.imatrix.gguf");
    other.save(&om, crunch_calib::imatrix::Format::Gguf).unwrap();
    let e = err(&crunch(&["quantize", s(&f32m), s(&sc.join("z.gguf")), "Q4_K_M", "--imatrix", s(&om)]));
    assert!(e.contains("blk.0.attn_q.weight has 4096 columns in the imatrix, 576 in the model"), "{e}");
    assert!(e.contains("blk.40.ffn_down.weight is not a tensor of the model"), "{e}");

    // A model with no linear layers.
    let p = sc.join("embd-only.gguf");
    let mut md = Metadata::default();
    md.set("general.architecture", Value::string("llama"));
    let specs = [TensorSpec { name: "token_embd.weight".into(), ty: GgmlType::F32, dims: vec![8, 4] }];
    let mut w = GgufWriter::create(&p, md, &specs).unwrap();
    w.write_tensor("token_embd.weight", &[0u8; 128]).unwrap();
    w.finish().unwrap();
    let wiki = crunch_testkit::wikitext_dev();
    let e = err(&crunch(&["imatrix", s(&p), "--text", s(&wiki), "-o", s(&sc.join("e.gguf"))]));
    assert!(e.contains("has no linear layers to calibrate"), "{e}");
}
