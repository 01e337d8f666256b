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

/// `crunch prune MODEL OUT EXTRA...`, which must fail; its stderr.
fn prune_fails(model: &Path, out: &Path, extra: &[&str]) -> String {
    let mut a = vec!["prune", s(model), s(out)];
    a.extend_from_slice(extra);
    err(&crunch(&a))
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
    let prune = |extra: &[&str]| prune_fails(&f32m, &out, extra);
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
    let e = prune(&["--method", "magnitude", "--sparsity", "0.5", "--type", "IQ2_XS"]);
    assert!(e.contains("--type") && e.contains("importance matrix") && e.contains("crunch quantize --imatrix"), "{e}");
    let e = prune(&["--method", "magnitude", "--sparsity", "0.5", "--type", "Q9_9"]);
    assert!(e.contains("--type") && e.contains("Q9_9"), "{e}");
    let e = err(&crunch(&["prune", s(&f32m), s(&f32m), "--method", "magnitude", "--sparsity", "0.5"]));
    assert!(e.contains("refusing to overwrite the input"), "{e}");
    assert!(!out.exists());
    assert_eq!(common::listing(sc.path()), Vec::<String>::new(), "nothing left behind");
}

/// `blk.N.rest` of a name.
fn block(name: &str) -> Option<(usize, &str)> {
    let (n, rest) = name.strip_prefix("blk.")?.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// Blocks removed by list need no text: the other blocks come through byte for byte under their
/// new numbers, and the block count follows.
#[test]
fn removing_listed_blocks_renumbers_and_keeps_every_byte() {
    let m = crunch_testkit::smollm2_gguf();
    let sc = Scratch::new("prune-blocks");
    let out = sc.join("minus2.gguf");
    let o = ok(&crunch(&["prune", s(&m), s(&out), "--remove-layers", "7,3", "--json", "-q"]));
    assert_eq!(o["structured"]["removed_layers"], serde_json::json!([3, 7]));
    let (src, dst) = (GgufFile::open(&m).unwrap(), GgufFile::open(&out).unwrap());
    let n_src = src.metadata().get_u64("llama.block_count").unwrap() as usize;
    assert_eq!(dst.metadata().get_u64("llama.block_count"), Some(n_src as u64 - 2));
    let kept: Vec<usize> = (0..n_src).filter(|l| *l != 3 && *l != 7).collect();
    let per_block = src.tensors().iter().filter(|t| t.name.starts_with("blk.0.")).count();
    assert_eq!(dst.tensors().len(), src.tensors().len() - 2 * per_block);
    for t in dst.tensors() {
        let src_name = match block(&t.name) {
            Some((j, rest)) => format!("blk.{}.{rest}", kept[j]),
            None => t.name.clone(),
        };
        let st = src.tensor(&src_name).unwrap_or_else(|| panic!("{} has no source {src_name}", t.name));
        assert_eq!((t.ty, &t.dims), (st.ty, &st.dims), "{}", t.name);
        assert!(dst.tensor_data(t) == src.tensor_data(st), "{} differs from {src_name}", t.name);
    }
}

/// Calibrated structured pruning on SmolLM2: two blocks, a quarter of the FFN and one KV group
/// of three go; the file has consistent hyper-parameters and shapes, Q/K/V rows are the kept
/// heads' rows byte for byte, crunch runs it, and the least-squares refit of the narrowed layers
/// brings the model closer to the original than copying the kept columns.
#[test]
fn structured_pruning_makes_a_consistent_smaller_model() {
    let m = crunch_testkit::smollm2_gguf();
    let wiki = crunch_testkit::wikitext_dev();
    let sc = Scratch::new("prune-structured");
    let text = std::fs::read_to_string(&wiki).unwrap();
    let (calib, heldout) = text.split_at(text.len() / 2);
    let heldout = &heldout[heldout.find('\n').unwrap_or(0)..];
    let (calib_p, held_p) = (sc.join("calib.txt"), sc.join("heldout.txt"));
    std::fs::write(&calib_p, calib).unwrap();
    std::fs::write(&held_p, heldout).unwrap();
    let prune = |out: &Path, extra: &[&str]| {
        let mut a = vec!["prune", s(&m), s(out), "--layers", "2", "--ffn", "0.75", "--drop-kv-groups", "1"];
        a.extend_from_slice(&["--text", s(&calib_p), "--ctx", "512", "--chunks", "8", "--json", "-q"]);
        a.extend_from_slice(extra);
        ok(&crunch(&a))
    };
    let out = sc.join("structured.gguf");
    let o = prune(&out, &[]);
    let st = &o["structured"];
    assert_eq!((st["n_layer_before"].as_u64(), st["n_layer_after"].as_u64()), (Some(30), Some(28)));
    assert_eq!(
        (st["n_ff_after"].as_u64(), st["n_head_after"].as_u64(), st["n_head_kv_after"].as_u64()),
        (Some(1152), Some(6), Some(2))
    );
    let removed: Vec<usize> =
        st["removed_layers"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    assert_eq!(removed.len(), 2);
    // Angular distance removes a run of consecutive blocks.
    assert_eq!(removed[1], removed[0] + 1);
    for t in st["refit"].as_array().unwrap() {
        let e = t["output_error"].as_f64().unwrap();
        assert!(e.is_finite() && (0.0..1.0).contains(&e), "{t}");
    }

    let (src, dst) = (GgufFile::open(&m).unwrap(), GgufFile::open(&out).unwrap());
    let md = dst.metadata();
    for (k, v) in [
        ("block_count", 28),
        ("feed_forward_length", 1152),
        ("attention.head_count", 6),
        ("attention.head_count_kv", 2),
        ("attention.key_length", 64),
        ("attention.value_length", 64),
    ] {
        assert_eq!(md.get_u64(&format!("llama.{k}")), Some(v), "{k}");
    }
    let kept: Vec<usize> = (0..30).filter(|l| !removed.contains(l)).collect();
    let groups = st["kept_kv_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 28);
    for (j, &i) in kept.iter().enumerate() {
        let dims = |n: &str| dst.tensor(&format!("blk.{j}.{n}.weight")).unwrap().dims.clone();
        assert_eq!(dims("attn_q"), [576, 384]);
        assert_eq!(dims("attn_k"), [576, 128]);
        assert_eq!(dims("attn_v"), [576, 128]);
        assert_eq!(dims("attn_output"), [384, 576]);
        assert_eq!(dims("ffn_gate"), [576, 1152]);
        assert_eq!(dims("ffn_up"), [576, 1152]);
        assert_eq!(dims("ffn_down"), [1152, 576]);
        // K rows are the kept K heads' rows, in order, byte for byte (rows keep their type).
        let g: Vec<usize> = groups[j].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(g.len(), 2);
        let (sk, dk) = (
            src.tensor(&format!("blk.{i}.attn_k.weight")).unwrap(),
            dst.tensor(&format!("blk.{j}.attn_k.weight")).unwrap(),
        );
        assert_eq!(sk.ty, dk.ty);
        let row = sk.ty.row_size(576).unwrap();
        let want: Vec<u8> =
            g.iter().flat_map(|&h| src.tensor_data(sk)[h * 64 * row..(h + 1) * 64 * row].to_vec()).collect();
        assert!(dst.tensor_data(dk) == &want[..], "blk.{j}.attn_k rows are not source block {i}'s heads {g:?}");
    }
    assert!(std::fs::metadata(&out).unwrap().len() < std::fs::metadata(&m).unwrap().len());

    // crunch runs the pruned model, and the refit beats copying the kept columns.
    let kld = |f: &Path| -> f64 {
        let r = ok(&crunch(&[
            "eval",
            "compare",
            s(&m),
            s(f),
            "--text",
            s(&held_p),
            "--ctx",
            "256",
            "--chunks",
            "6",
            "--json",
            "-q",
        ]));
        r["kld"]["mean"].as_f64().unwrap()
    };
    let plain = sc.join("no-refit.gguf");
    prune(&plain, &["--no-refit"]);
    let (k_refit, k_plain) = (kld(&out), kld(&plain));
    assert!(k_refit.is_finite() && k_refit > 0.0);
    assert!(k_refit < k_plain, "refit KLD {k_refit} vs copied columns {k_plain}");
}

#[test]
fn bad_structured_options_are_clear_errors() {
    let m = crunch_testkit::smollm2_gguf();
    let sc = Scratch::new("prune-structured-bad");
    let out = sc.join("x.gguf");
    let wiki = crunch_testkit::wikitext_dev();
    let prune = |extra: &[&str]| prune_fails(&m, &out, extra);
    let t = ["--text", s(&wiki), "--chunks", "1", "--ctx", "64"];
    let with_text = |extra: &[&str]| prune(&[extra, &t[..]].concat());
    let e = with_text(&["--ffn", "1.5"]);
    assert!(e.contains("--ffn") && e.contains("between 0 and 1"), "{e}");
    let e = with_text(&["--ffn", "0.99", "--ffn-multiple", "256"]);
    assert!(e.contains("--ffn") && e.contains("keeps them all"), "{e}");
    let e = with_text(&["--drop-kv-groups", "3"]);
    assert!(e.contains("--drop-kv-groups") && e.contains("3 KV groups"), "{e}");
    let e = with_text(&["--layers", "30"]);
    assert!(e.contains("--layers") && e.contains("30 of 30"), "{e}");
    let all: Vec<String> = (0..30).map(|l| l.to_string()).collect();
    let e = prune(&["--remove-layers", &all.join(",")]);
    assert!(e.contains("--remove-layers") && e.contains("keep at least one"), "{e}");
    let e = prune(&["--remove-layers", "40"]);
    assert!(e.contains("--remove-layers") && e.contains("block 40 does not exist"), "{e}");
    let e = prune(&["--remove-layers", "4,4"]);
    assert!(e.contains("listed twice"), "{e}");
    let e = prune(&["--layers", "2"]);
    assert!(e.contains("--text"), "{e}");
    let e = with_text(&["--layers", "2", "--layer-score", "cosine"]);
    assert!(e.contains("--layer-score") && e.contains("angular, influence"), "{e}");
    let e = with_text(&["--layers", "2", "--method", "wanda", "--sparsity", "0.5"]);
    assert!(e.contains("--method") && e.contains("separate jobs"), "{e}");
    let e = prune(&[]);
    assert!(e.contains("--method"), "{e}");
    assert!(!out.exists());
    assert_eq!(common::listing(sc.path()), Vec::<String>::new(), "nothing left behind");
}

/// Gemma 3's extra norms are copied, its FFN narrowed like any other; removing blocks is refused
/// (its sliding-window layers are chosen by block index, so removal would move them).
#[test]
fn gemma3_ffn_pruning_runs_and_block_removal_is_refused() {
    let m = crunch_testkit::gemma3_gguf();
    let wiki = crunch_testkit::wikitext_dev();
    let sc = Scratch::new("prune-gemma3");
    let out = sc.join("ffn.gguf");
    for extra in [&["--remove-layers", "3"][..], &["--layers", "1", "--text", s(&wiki)][..]] {
        let e = prune_fails(&m, &out, extra);
        assert!(e.contains(extra[0]) && e.contains("sliding-window"), "{e}");
    }
    assert!(!out.exists());
    let o = ok(&crunch(&[
        "prune",
        s(&m),
        s(&out),
        "--ffn",
        "0.75",
        "--text",
        s(&wiki),
        "--ctx",
        "64",
        "--chunks",
        "2",
        "--json",
        "-q",
    ]));
    assert_eq!(o["structured"]["n_ff_after"].as_u64(), Some(1536));
    let (src, dst) = (GgufFile::open(&m).unwrap(), GgufFile::open(&out).unwrap());
    assert_eq!(dst.metadata().get_u64("gemma3.feed_forward_length"), Some(1536));
    for n in ["post_attention_norm", "post_ffw_norm", "attn_q_norm", "attn_k_norm"] {
        let name = format!("blk.5.{n}.weight");
        let (a, b) = (src.tensor(&name).unwrap(), dst.tensor(&name).unwrap());
        assert_eq!(src.tensor_data(a), dst.tensor_data(b), "{name} copied");
    }
    assert_eq!(dst.tensor("blk.5.ffn_down.weight").unwrap().dims, [1536, 640]);
    let model = crunch_model::LlamaModel::open(&out).unwrap();
    let logits = model.forward(&[2, 100, 200, 300], &mut model.new_cache(4)).unwrap();
    assert!(logits.iter().all(|v| v.is_finite()));
}
