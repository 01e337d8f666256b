//! `crunch export --sparse` end to end on SmolLM2 pruned by `crunch prune` (magnitude, no text):
//! the compressed-tensors checkpoint, decoded by scripts/check_sparse_bitmask.py (numpy, written
//! from the format's description), equals the dense export of the same file tensor by tensor; 2:4
//! keeps its pattern (in BF16, over several shards); a file that is not 2:4 is refused naming the
//! tensor and row; an unpruned file still exports, larger, and says so.

mod common;

use common::crunch;
use crunch_testkit::Scratch;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn err(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected failure, got: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// scripts/check_sparse_bitmask.py SPARSE DENSE [extra]: its JSON summary (it exits 1 on any mismatch).
fn check(sparse: &Path, dense: &Path, extra: &[&str]) -> Value {
    let out = Command::new(crunch_testkit::python())
        .arg(crunch_testkit::repo_root().join("scripts/check_sparse_bitmask.py"))
        .args([s(sparse), s(dense)])
        .args(extra)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check_sparse_bitmask.py:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).unwrap()
}

fn config(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap()
}

/// The totals the report gives agree with what the Python reader counted in the files.
fn same_totals(report: &Value, py: &Value) {
    let sp = &report["sparse"];
    assert_eq!(sp["tensors"].as_array().unwrap().len(), 30 * 7, "every linear weight of the blocks");
    assert_eq!(py["compressed"], 30 * 7);
    assert_eq!(sp["compressed_bytes"], py["compressed_bytes"]);
    assert_eq!(sp["dense_bytes"], py["dense_bytes_of_compressed"]);
    let per: u64 = sp["tensors"].as_array().unwrap().iter().map(|t| t["compressed_bytes"].as_u64().unwrap()).sum();
    assert_eq!(Some(per), sp["compressed_bytes"].as_u64());
}

#[test]
fn bitmask_at_50_percent_decodes_to_the_dense_export() {
    let f32m = common::smollm2_f32();
    let sc = Scratch::new("export-sparse-50");
    let pruned = sc.join("mag50.gguf");
    ok(&crunch(&["prune", s(&f32m), s(&pruned), "--method", "magnitude", "--sparsity", "0.5", "--json", "-q"]));

    let (dense, sparse) = (sc.join("dense"), sc.join("sparse"));
    let d = ok(&crunch(&["export", s(&pruned), s(&dense), "--dtype", "f16", "--json", "-q"]));
    assert!(d.get("sparse").is_none(), "a plain export has no sparse report");
    let r = ok(&crunch(&["export", s(&pruned), s(&sparse), "--dtype", "f16", "--sparse", "bitmask", "--json", "-q"]));
    let py = check(&sparse, &dense, &[]);
    assert_eq!(py["format"], "sparse-bitmask");
    same_totals(&r, &py);

    // Half of every linear weight is zero: 16 + 1 bits per 2 weights, plus 8 bytes per row.
    let sp = &r["sparse"];
    for t in sp["tensors"].as_array().unwrap() {
        let (rows, cols) = (t["shape"][0].as_u64().unwrap(), t["shape"][1].as_u64().unwrap());
        assert_eq!(t["nonzeros"].as_u64().unwrap(), rows * cols / 2, "{}", t["name"]);
        let want = rows * cols + rows * cols.div_ceil(8) + 8 * rows + 16;
        assert_eq!(t["compressed_bytes"].as_u64().unwrap(), want, "{}", t["name"]);
        assert_eq!(t["dense_bytes"].as_u64().unwrap(), 2 * rows * cols);
    }
    assert!(r["tensor_bytes"].as_u64().unwrap() < d["tensor_bytes"].as_u64().unwrap() * 7 / 10);

    // config.json: the dense one plus compressed-tensors' sparsity_config.
    let (cs, cd) = (config(&sparse), config(&dense));
    let qc = &cs["quantization_config"];
    assert_eq!(qc["quant_method"], "compressed-tensors");
    let spc = &qc["sparsity_config"];
    assert_eq!(spc["format"], "sparse-bitmask");
    assert_eq!(spc["sparsity_structure"], "unstructured");
    assert_eq!(spc["targets"], serde_json::json!(["Linear"]));
    assert_eq!(spc["ignore"], serde_json::json!(["lm_head"]));
    assert!((spc["global_sparsity"].as_f64().unwrap() - py["global_sparsity"].as_f64().unwrap()).abs() < 1e-12);
    let mut rest = cs.as_object().unwrap().clone();
    rest.remove("quantization_config");
    assert_eq!(&rest, cd.as_object().unwrap(), "nothing else in config.json changes");
    // The tokenizer and the other side files are the plain export's.
    for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"] {
        assert_eq!(std::fs::read(sparse.join(f)).unwrap(), std::fs::read(dense.join(f)).unwrap(), "{f}");
    }
    let card = std::fs::read_to_string(sparse.join("README.md")).unwrap();
    assert!(card.contains("sparse-bitmask"), "{card}");

    // The same checkpoint in the source's precision (F32 here: `auto`).
    let sparse32 = sc.join("sparse32");
    let dense32 = sc.join("dense32");
    ok(&crunch(&["export", s(&pruned), s(&dense32), "--json", "-q"]));
    ok(&crunch(&["export", s(&pruned), s(&sparse32), "--sparse", "sparse-bitmask", "--json", "-q"]));
    check(&sparse32, &dense32, &[]);

    // 2:4 refused on a file that is not 2:4, naming the first tensor and row; nothing written.
    let bad = sc.join("not24");
    let e = err(&crunch(&["export", s(&pruned), s(&bad), "--sparse", "2:4", "-q"]));
    assert!(
        e.contains("--sparse")
            && e.contains("blk.0.attn_k.weight")
            && e.contains("model.layers.0.self_attn.k_proj.weight")
            && e.contains("is not 2:4")
            && e.contains("row 0 has 3 nonzeros in columns 0..4"),
        "{e}"
    );
    assert!(!bad.exists(), "nothing written");
    let e = err(&crunch(&["export", s(&pruned), s(&bad), "--sparse", "4:8", "-q"]));
    assert!(e.contains("--sparse") && e.contains("\"4:8\"") && e.contains("bitmask"), "{e}");
}

#[test]
fn two_four_decodes_keeps_the_pattern_and_shards() {
    let f32m = common::smollm2_f32();
    let sc = Scratch::new("export-sparse-24");
    let pruned = sc.join("mag24.gguf");
    ok(&crunch(&["prune", s(&f32m), s(&pruned), "--method", "magnitude", "--pattern", "2:4", "--json", "-q"]));

    // BF16 values, shards of at most 40 MB (the compressed parts of a weight may land in two).
    let (dense, sparse) = (sc.join("dense"), sc.join("sparse"));
    let shard = "40000000";
    ok(&crunch(&["export", s(&pruned), s(&dense), "--dtype", "bf16", "--max-shard-bytes", shard, "--json", "-q"]));
    let r = ok(&crunch(&[
        "export",
        s(&pruned),
        s(&sparse),
        "--dtype",
        "bf16",
        "--max-shard-bytes",
        shard,
        "--sparse",
        "2:4",
        "--json",
        "-q",
    ]));
    assert!(sparse.join("model.safetensors.index.json").exists(), "sharded");
    let py = check(&sparse, &dense, &["--pattern", "2:4"]);
    assert_eq!(py["format"], "sparse-24-bitmask");
    same_totals(&r, &py);
    for t in r["sparse"]["tensors"].as_array().unwrap() {
        let (rows, cols) = (t["shape"][0].as_u64().unwrap(), t["shape"][1].as_u64().unwrap());
        // Exactly half the values stored (2 of every 4, zeros included), 1 bit per weight.
        let want = rows * cols + rows * cols.div_ceil(8) + 16;
        assert_eq!(t["compressed_bytes"].as_u64().unwrap(), want, "{}", t["name"]);
        assert!(t["nonzeros"].as_u64().unwrap() <= rows * cols / 2);
    }
    let spc = &config(&sparse)["quantization_config"]["sparsity_config"];
    assert_eq!(spc["format"], "sparse-24-bitmask");
    assert_eq!(spc["sparsity_structure"], "2:4");

    // A 2:4 file is also valid as sparse-bitmask.
    let b = sc.join("bitmask");
    ok(&crunch(&["export", s(&pruned), s(&b), "--dtype", "bf16", "--sparse", "bitmask", "--json", "-q"]));
    check(&b, &dense, &["--pattern", "2:4"]);
}

#[test]
fn an_unpruned_model_exports_larger_and_says_so() {
    let f32m = common::smollm2_f32();
    let sc = Scratch::new("export-sparse-dense");
    let out = sc.join("sparse");
    let o = crunch(&["export", s(&f32m), s(&out), "--dtype", "f16", "--sparse", "bitmask"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("sparse-bitmask: 210 linear weights") && text.contains("larger compressed"), "{text}");
    let r = ok(&crunch(&["export", s(&f32m), s(&sc.join("again")), "--dtype", "f16", "--sparse", "bitmask", "--json"]));
    let sp = &r["sparse"];
    assert!(sp["compressed_bytes"].as_u64() > sp["dense_bytes"].as_u64());
    let dense = sc.join("dense");
    ok(&crunch(&["export", s(&f32m), s(&dense), "--dtype", "f16", "--json", "-q"]));
    check(&out, &dense, &[]);
}
