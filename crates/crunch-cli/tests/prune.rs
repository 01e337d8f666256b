//! `crunch prune` end to end on SmolLM2 (small calibration so the suite stays fast): exact
//! sparsity and N:M patterns in the written file, untouched tensors byte-identical, SparseGPT's
//! joint quantization, the zero fraction the outcome reports, and clear errors for bad input.

mod common;

use common::crunch;
use crunch_core::gguf::GgufFile;
use crunch_testkit::Scratch;
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn err(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected failure, got: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const LINEAR: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

fn is_linear(name: &str) -> bool {
    let p: Vec<&str> = name.split('.').collect();
    p.len() == 4 && p[0] == "blk" && LINEAR.contains(&p[2]) && p[3] == "weight"
}

fn weights(f: &GgufFile, name: &str) -> Vec<f32> {
    let t = f.tensor(name).unwrap();
    let (n_in, n_out) = (t.row_len() as usize, t.n_rows() as usize);
    let w = crunch_model::weights::Weight::load(f, name, n_in, n_out).unwrap();
    let mut out = vec![0f32; n_in * n_out];
    for (r, row) in out.chunks_exact_mut(n_in).enumerate() {
        w.dequantize_row(f, r, row).unwrap();
    }
    out
}

fn zeros(w: &[f32]) -> usize {
    w.iter().filter(|v| **v == 0.0).count()
}

#[test]
fn magnitude_and_wanda_write_exact_sparsity() {
    let f32m = common::smollm2_f32();
    let sc = Scratch::new("prune-cli");
    let base = GgufFile::open(&f32m).unwrap();

    // Magnitude, 50%, no text: every linear weight exactly half zero, the rest untouched.
    let out = sc.join("mag50.gguf");
    let o = ok(&crunch(&["prune", s(&f32m), s(&out), "--method", "magnitude", "--sparsity", "0.5", "--json"]));
    assert!(!sc.join("mag50.gguf.prune-tmp").exists(), "scratch folder removed");
    assert_eq!(o["tensors"].as_array().unwrap().len(), 30 * 7);
    assert!((o["zero_fraction"].as_f64().unwrap() - 0.5).abs() < 1e-6, "{}", o["zero_fraction"]);
    let f = GgufFile::open(&out).unwrap();
    for t in base.tensors() {
        let o = f.tensor(&t.name).unwrap();
        assert_eq!(o.ty, t.ty, "{}: type kept", t.name);
        if is_linear(&t.name) {
            let w = weights(&f, &t.name);
            assert_eq!(zeros(&w), w.len() / 2, "{}", t.name);
            // Survivors are the input's values.
            let b = weights(&base, &t.name);
            assert!(w.iter().zip(&b).all(|(x, y)| *x == 0.0 || x == y), "{}", t.name);
        } else {
            assert_eq!(f.tensor_data(o), base.tensor_data(t), "{} unchanged", t.name);
        }
    }

    // Wanda 2:4 with a little calibration text: 2 zeros in every 4 of every row.
    let wiki = crunch_testkit::wikitext_dev();
    let out = sc.join("wanda24.gguf");
    let o = ok(&crunch(&[
        "prune",
        s(&f32m),
        s(&out),
        "--method",
        "wanda",
        "--pattern",
        "2:4",
        "--text",
        s(&wiki),
        "--ctx",
        "64",
        "--chunks",
        "2",
        "--json",
    ]));
    assert_eq!(o["sparsity"], serde_json::json!({"n_m": {"n": 2, "m": 4}}));
    let f = GgufFile::open(&out).unwrap();
    for name in ["blk.0.attn_q.weight", "blk.7.ffn_down.weight", "blk.29.ffn_gate.weight"] {
        // The base (Q4_1 dequantized) has a few exact zeros of its own (0.03%): a group that
        // had more than 2 keeps them.
        let (w, b) = (weights(&f, name), weights(&base, name));
        for (g, bg) in w.chunks_exact(4).zip(b.chunks_exact(4)) {
            assert_eq!(zeros(g), zeros(bg).max(2), "{name}: 2:4 broken: {g:?} from {bg:?}");
        }
    }
    // Wanda is not magnitude: the activation norms change which weights go.
    let m = GgufFile::open(sc.join("mag50.gguf")).unwrap();
    let (a, b) = (weights(&f, "blk.3.ffn_up.weight"), weights(&m, "blk.3.ffn_up.weight"));
    assert!(a.iter().zip(&b).any(|(x, y)| (*x == 0.0) != (*y == 0.0)));
}

#[test]
fn sparsegpt_quantizes_jointly_and_reports_zeros() {
    let f32m = common::smollm2_f32();
    let sc = Scratch::new("prune-sparsegpt");
    let wiki = crunch_testkit::wikitext_dev();
    let run = |input: &Path, out: &Path, extra: &[&str]| {
        let mut args = vec![
            "prune",
            s(input),
            s(out),
            "--method",
            "sparsegpt",
            "--text",
            s(&wiki),
            "--ctx",
            "64",
            "--chunks",
            "2",
        ];
        args.extend_from_slice(extra);
        args.push("--json");
        ok(&crunch(&args))
    };
    // Onto Q8_0 in one pass: packed by SparseGPT, exact zeros kept (at least the target).
    let out = sc.join("sgpt-q8.gguf");
    let o = run(&f32m, &out, &["--sparsity", "0.5", "--type", "Q8_0"]);
    let f = GgufFile::open(&out).unwrap();
    let tensors = o["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 210);
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        assert_eq!(f.tensor(name).unwrap().ty.name(), t["type"].as_str().unwrap());
        if t["type"] == "Q8_0" {
            assert_eq!(t["joint_type"], "Q8_0", "{name}");
            assert!(t["zero_fraction"].as_f64().unwrap() >= 0.5 - 1e-6, "{t}");
        }
    }
    let m = crunch_model::LlamaModel::open(&out).unwrap();
    let logits = m.forward(&[1, 2, 3, 4], &mut m.new_cache(4)).unwrap();
    assert!(logits.iter().all(|v| v.is_finite()));

    // The shipped Q4_1 model keeps its types: SparseGPT rounds onto Q4_1's grid, which has no
    // exact zero (a per-block minimum), and the outcome says how many zeros survived.
    let q41 = crunch_testkit::smollm2_gguf();
    let out = sc.join("sgpt-q41.gguf");
    let o = run(&q41, &out, &["--pattern", "4:8"]);
    let t = &o["tensors"][0];
    assert_eq!(t["type"], "Q4_1");
    assert_eq!(t["joint_type"], "Q4_1");
    assert!(t["zero_fraction"].as_f64().unwrap() < 0.5, "{t}");
    assert!(o["zero_fraction"].as_f64().unwrap() < o["target"].as_f64().unwrap());
}

#[test]
fn bad_prune_inputs_are_clear_errors() {
    let f32m = common::smollm2_f32();
    let sc = Scratch::new("prune-bad");
    let out = sc.join("x.gguf");
    let wiki = crunch_testkit::wikitext_dev();
    let prune = |extra: &[&str]| {
        let mut a = vec!["prune", s(&f32m), s(&out)];
        a.extend_from_slice(extra);
        err(&crunch(&a))
    };
    for bad in ["0", "1.2", "1", "-0.5"] {
        let e = prune(&["--method", "magnitude", &format!("--sparsity={bad}")]);
        assert!(e.contains("--sparsity") && e.contains("between 0 and 1"), "{bad}: {e}");
    }
    let e = prune(&["--method", "magnitude", "--pattern", "5:7"]);
    assert!(e.contains("--pattern") && e.contains("5:7") && e.contains("blk.0.") && e.contains("rows of 576"), "{e}");
    let e = prune(&["--method", "magnitude", "--pattern", "4:2"]);
    assert!(e.contains("--pattern") && e.contains("0 < N < M"), "{e}");
    let e = prune(&["--method", "wanda", "--sparsity", "0.5"]);
    assert!(e.contains("--text") && e.contains("wanda needs calibration text"), "{e}");
    let e = prune(&["--method", "sparsegpt", "--pattern", "2:4"]);
    assert!(e.contains("--text") && e.contains("sparsegpt"), "{e}");
    let e = prune(&["--method", "magnitude"]);
    assert!(e.contains("--sparsity"), "{e}");
    let e = prune(&["--method", "magnitude", "--sparsity", "0.5", "--pattern", "2:4"]);
    assert!(e.contains("--pattern") && e.contains("not both"), "{e}");
    let e = prune(&["--method", "obs", "--sparsity", "0.5"]);
    assert!(e.contains("--method") && e.contains("magnitude, wanda, sparsegpt"), "{e}");
    let e = prune(&["--method", "wanda", "--sparsity", "0.5", "--text", s(&wiki), "--ctx", "0"]);
    assert!(e.contains("--ctx"), "{e}");
    let e = prune(&["--method", "magnitude", "--sparsity", "0.5", "--type", "Q9_9"]);
    assert!(e.contains("--type") && e.contains("Q9_9"), "{e}");
    let e = err(&crunch(&["prune", s(&f32m), s(&f32m), "--method", "magnitude", "--sparsity", "0.5"]));
    assert!(e.contains("refusing to overwrite the input"), "{e}");
    assert!(!out.exists());
    assert_eq!(common::listing(sc.path()), Vec::<String>::new(), "nothing left behind");
}
