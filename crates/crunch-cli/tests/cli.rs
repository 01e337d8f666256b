//! End-to-end tests of the `crunch` binary in scratch folders: good runs, bad input, interruption.

mod common;

use common::{crunch, listing};
use crunch_core::gguf::{GgufWriter, Metadata, TensorSpec, Value};
use crunch_core::GgmlType;
use std::path::Path;

/// A tiny valid GGUF (llama-like) whose bytes the hostile tests then break.
fn tiny_model(path: &Path) {
    let mut m = Metadata::default();
    m.set("general.architecture", Value::string("llama"));
    m.set("llama.block_count", Value::U32(1));
    let specs = vec![
        TensorSpec { name: "token_embd.weight".into(), ty: GgmlType::F32, dims: vec![64, 8] },
        TensorSpec { name: "blk.0.attn_q.weight".into(), ty: GgmlType::F32, dims: vec![64, 64] },
        TensorSpec { name: "blk.0.attn_norm.weight".into(), ty: GgmlType::F32, dims: vec![64] },
    ];
    let mut w = GgufWriter::create(path, m, &specs).unwrap();
    let infos = w.tensors().to_vec();
    for t in infos {
        let vals = crunch_testkit::realistic_weights(t.n_rows() as usize, t.row_len() as usize, 7);
        w.write_tensor(&t.name, &crunch_testkit::f32_bytes(&vals)).unwrap();
    }
    w.finish().unwrap();
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn quantize_inspect_verify_dry_run_json() {
    let s = crunch_testkit::Scratch::new("cli-ok");
    let src = s.join("tiny.gguf");
    tiny_model(&src);
    let out = s.join("q.gguf");
    let o = crunch(&["quantize", src.to_str().unwrap(), out.to_str().unwrap(), "q8_0", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["result"]["file_bytes"].as_u64().unwrap(), std::fs::metadata(&out).unwrap().len());
    let types: Vec<&str> =
        j["plan"]["tensors"].as_array().unwrap().iter().map(|t| t["dst_type"].as_str().unwrap()).collect();
    assert_eq!(types, vec!["Q8_0", "F32", "Q8_0"]); // llama.cpp order: token_embd, then blk.0.* by name
    assert!(crunch(&["verify", out.to_str().unwrap()]).status.success());
    let o = crunch(&["inspect", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["metadata"]["general.file_type"], 7);
    assert_eq!(j["metadata"]["general.quantization_version"], 2);

    // dry run writes nothing
    let dry = s.join("dry.gguf");
    let o = crunch(&["quantize", src.to_str().unwrap(), dry.to_str().unwrap(), "Q4_K_M", "--dry-run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("fallback"));
    assert!(!dry.exists());

    // overrides
    let o = crunch(&[
        "quantize",
        src.to_str().unwrap(),
        dry.to_str().unwrap(),
        "Q4_0",
        "--dry-run",
        "--json",
        "--tensor-type",
        "attn_q=q8_0",
        "--token-embedding-type",
        "f16",
    ]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let types: Vec<&str> =
        j["plan"]["tensors"].as_array().unwrap().iter().map(|t| t["dst_type"].as_str().unwrap()).collect();
    assert_eq!(types, vec!["F16", "F32", "Q8_0"]);

    // a corrupted output fails verification
    let mut bytes = std::fs::read(&out).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&out, bytes).unwrap();
    assert!(!crunch(&["verify", out.to_str().unwrap()]).status.success());
}

#[test]
fn requantizing_needs_the_flag_and_input_is_never_the_output() {
    let s = crunch_testkit::Scratch::new("cli-requant");
    let src = s.join("tiny.gguf");
    tiny_model(&src);
    let q = s.join("q.gguf");
    assert!(crunch(&["quantize", src.to_str().unwrap(), q.to_str().unwrap(), "Q8_0", "-q"]).status.success());
    let o = crunch(&["quantize", q.to_str().unwrap(), s.join("r.gguf").to_str().unwrap(), "Q4_0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--allow-requantize"), "{}", stderr(&o));
    let o = crunch(&["quantize", src.to_str().unwrap(), src.to_str().unwrap(), "Q4_0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("input"), "{}", stderr(&o));
    let o = crunch(&["quantize", src.to_str().unwrap(), q.to_str().unwrap(), "Q9_X"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown quantization type"), "{}", stderr(&o));
}

/// Each corruption must give a clear error, a non-zero exit, no panic and no output file.
#[test]
fn hostile_inputs_fail_cleanly() {
    let s = crunch_testkit::Scratch::new("cli-hostile");
    let good = s.join("good.gguf");
    tiny_model(&good);
    let bytes = std::fs::read(&good).unwrap();
    let header = crunch_core::gguf::parse_header(&bytes).unwrap();
    let enc = crunch_core::gguf::encode_header(&header);
    // offset of the first tensor info's fields: find "blk.0.attn_q.weight" name, then n_dims, dims, type, offset
    let name = b"blk.0.attn_q.weight";
    let at = enc.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let (dims_at, type_at, off_at) = (at + 4, at + 4 + 16, at + 4 + 16 + 4);
    let put = |b: &mut Vec<u8>, pos: usize, v: &[u8]| b[pos..pos + v.len()].copy_from_slice(v);

    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", bytes[..bytes.len() / 2].to_vec(), "past the end"),
        ("truncated-header", bytes[..40].to_vec(), "truncated"),
        ("empty", vec![], "truncated"),
        (
            "magic",
            {
                let mut b = bytes.clone();
                b[..4].copy_from_slice(b"GGML");
                b
            },
            "magic",
        ),
        (
            "version",
            {
                let mut b = bytes.clone();
                put(&mut b, 4, &9u32.to_le_bytes());
                b
            },
            "version",
        ),
        (
            "tensor-count",
            {
                let mut b = bytes.clone();
                put(&mut b, 8, &(1u64 << 40).to_le_bytes());
                b
            },
            "tensor count",
        ),
        (
            "kv-count",
            {
                let mut b = bytes.clone();
                put(&mut b, 16, &(1u64 << 19).to_le_bytes());
                b
            },
            "key/value count",
        ),
        (
            "string-len",
            {
                let mut b = bytes.clone();
                put(&mut b, 24, &(u64::MAX - 3).to_le_bytes());
                b
            },
            "length of metadata key",
        ),
        (
            "dims",
            {
                let mut b = bytes.clone();
                put(&mut b, dims_at, &(1u64 << 62).to_le_bytes());
                b
            },
            "blk.0.attn_q.weight",
        ),
        (
            "type",
            {
                let mut b = bytes.clone();
                put(&mut b, type_at, &77u32.to_le_bytes());
                b
            },
            "unknown type code 77",
        ),
        (
            "offset",
            {
                let mut b = bytes.clone();
                put(&mut b, off_at, &(1u64 << 50).to_le_bytes());
                b
            },
            "past the end",
        ),
        (
            "misaligned",
            {
                let mut b = bytes.clone();
                put(&mut b, off_at, &(64 * 8 * 4 + 4u64).to_le_bytes());
                b
            },
            "alignment",
        ),
    ];
    for (what, data, expect) in cases.drain(..) {
        let bad = s.join(&format!("{what}.gguf"));
        std::fs::write(&bad, &data).unwrap();
        let before = listing(s.path());
        let out = s.join(&format!("{what}-out.gguf"));
        let o = crunch(&["quantize", bad.to_str().unwrap(), out.to_str().unwrap(), "Q8_0"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: exit {:?}, stderr {err}", o.status);
        assert!(!err.contains("panicked"), "{what}: panic: {err}");
        assert!(err.contains(bad.to_str().unwrap()), "{what}: error does not name the file: {err}");
        assert!(err.to_lowercase().contains(&expect.to_lowercase()), "{what}: expected {expect:?} in: {err}");
        assert_eq!(listing(s.path()), before, "{what}: output or temp file left behind");
        assert_eq!(std::fs::read(&bad).unwrap(), data, "{what}: input modified");
        let o = crunch(&["inspect", bad.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{what}: inspect");
    }
}

#[test]
fn ctrl_c_leaves_no_partial_output() {
    let src = common::smollm2_f32();
    let s = crunch_testkit::Scratch::new("cli-sigint");
    let out = s.join("q.gguf");
    let child = std::process::Command::new(common::crunch_bin())
        .args(["quantize", src.to_str().unwrap(), out.to_str().unwrap(), "IQ4_XS", "--threads", "1", "-q"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // wait until the temp output exists, then interrupt
    let t0 = std::time::Instant::now();
    while listing(s.path()).is_empty() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!listing(s.path()).is_empty(), "no temp file appeared");
    let k = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(k.success());
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success(), "finished before the interrupt arrived");
    assert!(String::from_utf8_lossy(&o.stderr).contains("interrupted"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(listing(s.path()).is_empty(), "left behind: {:?}", listing(s.path()));
}
