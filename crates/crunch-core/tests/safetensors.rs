//! safetensors reader and writer: round trips (single file and sharded), the real all-MiniLM-L6-v2
//! checkpoint against PyPI `safetensors`, files crunch writes loaded by PyPI `safetensors`, and hostile
//! inputs that must give the right error without panicking.

use crunch_core::output::{verify_sidecar, Verified};
use crunch_core::safetensors::{
    parse_header, parse_index, Dtype, SafetensorsError as E, SafetensorsModel, SafetensorsWriter, ShardedWriter,
    TensorSpec,
};
use crunch_core::GgmlType;
use crunch_testkit as kit;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn sha_hex(b: &[u8]) -> String {
    crunch_core::output::hex(&Sha256::digest(b))
}

/// A mix of dtypes and shapes (scalar, empty, 3-D), with deterministic bytes.
fn fixture() -> Vec<(TensorSpec, Vec<u8>)> {
    let f32s: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 3.0).collect();
    let f16s: Vec<u8> =
        [1.0f32, -2.5, 0.125, 65504.0, -0.0, 3.0].iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
    let bf16s: Vec<u8> =
        [1.0f32, -2.0, 0.5, 1e30].iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
    let i64s: Vec<u8> = (0..5i64).flat_map(|i| (i * 1000 - 7).to_le_bytes()).collect();
    vec![
        (TensorSpec::new("model.embed.weight", Dtype::F32, [2, 3, 4]), kit::f32_bytes(&f32s)),
        (TensorSpec::new("layers.0.attn.q.weight", Dtype::F16, [3, 2]), f16s),
        (TensorSpec::new("layers.0.norm.weight", Dtype::BF16, [4]), bf16s),
        (TensorSpec::new("position_ids", Dtype::I64, [1, 5]), i64s),
        (TensorSpec::new("mask", Dtype::U8, [3]), vec![1, 0, 255]),
        (TensorSpec::new("scale", Dtype::F32, Vec::<u64>::new()), 1.5f32.to_le_bytes().to_vec()),
        (TensorSpec::new("empty", Dtype::F32, [0, 4]), vec![]),
        (
            TensorSpec::new("wide \"name\" é", Dtype::F64, [2]),
            [1.0f64, -1.0].iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
    ]
}

fn write_fixture(path: &Path, m: BTreeMap<String, String>) -> String {
    let fx = fixture();
    let pairs: Vec<(TensorSpec, &[u8])> = fx.iter().map(|(s, d)| (s.clone(), d.as_slice())).collect();
    SafetensorsWriter::write_file(path, m, &pairs).unwrap()
}

fn check_fixture(model: &SafetensorsModel) {
    let fx = fixture();
    assert_eq!(model.len(), fx.len());
    for (spec, bytes) in &fx {
        let t = model.tensor(&spec.name).unwrap_or_else(|| panic!("{} missing", spec.name));
        assert_eq!(t.dtype, spec.dtype, "{}", spec.name);
        assert_eq!(t.shape, spec.shape, "{}", spec.name);
        assert_eq!(model.data(&spec.name).unwrap(), bytes.as_slice(), "{}", spec.name);
    }
}

#[test]
fn single_file_round_trip() {
    let dir = kit::Scratch::new("st-single");
    let path = dir.join("model.safetensors");
    let sha = write_fixture(&path, meta(&[("format", "pt"), ("quote\"key", "line\nbreak")]));
    assert_eq!(verify_sidecar(&path).unwrap(), Verified::Ok { sha256: sha.clone() });
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(n % 8, 0, "header padded to a multiple of 8");
    assert_eq!(bytes[8], b'{');

    for open in [path.clone(), dir.path().to_path_buf()] {
        let model = SafetensorsModel::open(&open).unwrap();
        assert!(!model.is_sharded());
        assert_eq!(model.metadata(), &meta(&[("format", "pt"), ("quote\"key", "line\nbreak")]));
        check_fixture(&model);
        // Tensors come in the order they were written.
        let names: Vec<&str> = model.tensors().iter().map(|t| t.name.as_str()).collect();
        let want: Vec<String> = fixture().into_iter().map(|(s, _)| s.name).collect();
        assert_eq!(names, want);
    }

    let model = SafetensorsModel::open(&path).unwrap();
    let t = model.tensor("model.embed.weight").unwrap();
    assert_eq!(t.ggml_dims(), vec![4, 3, 2]);
    assert_eq!(t.ggml_type().unwrap(), GgmlType::F32);
    assert_eq!(model.tensor("layers.0.attn.q.weight").unwrap().ggml_type().unwrap(), GgmlType::F16);
    assert_eq!(model.tensor("layers.0.norm.weight").unwrap().ggml_type().unwrap(), GgmlType::BF16);
    assert_eq!(model.tensor("scale").unwrap().ggml_dims(), vec![1]);
    assert_eq!(model.tensor("empty").unwrap().ggml_dims(), vec![4, 0]);
    assert_eq!(model.to_f32("layers.0.attn.q.weight").unwrap(), vec![1.0, -2.5, 0.125, 65504.0, -0.0, 3.0]);
    assert_eq!(model.to_f32("layers.0.norm.weight").unwrap()[..3], [1.0, -2.0, 0.5]);
    assert_eq!(model.to_f32("scale").unwrap(), vec![1.5]);
    let err = model.tensor("position_ids").unwrap().ggml_type().unwrap_err();
    assert!(matches!(err, E::UnsupportedDtype { dtype: Dtype::I64, .. }), "{err}");
    assert!(err.to_string().contains("position_ids"), "{err}");
    assert!(matches!(model.to_f32("mask"), Err(E::UnsupportedDtype { dtype: Dtype::U8, .. })));
    assert!(matches!(model.data("nope"), Err(E::TensorNotFound(_))));

    // The `safetensors` crate reads it too.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (spec, data) in fixture() {
        let v = st.tensor(&spec.name).unwrap();
        assert_eq!(v.data(), data.as_slice());
        assert_eq!(v.shape().iter().map(|&d| d as u64).collect::<Vec<_>>(), spec.shape);
    }

    // An empty model is a valid file.
    let empty = dir.join("empty.safetensors");
    SafetensorsWriter::write_file(&empty, BTreeMap::new(), &[]).unwrap();
    assert!(SafetensorsModel::open(&empty).unwrap().is_empty());
    assert!(safetensors::SafeTensors::deserialize(&std::fs::read(&empty).unwrap()).unwrap().is_empty());
}

#[test]
fn sharded_round_trip() {
    let dir = kit::Scratch::new("st-sharded");
    let fx = fixture();
    let specs: Vec<TensorSpec> = fx.iter().map(|(s, _)| s.clone()).collect();
    // 96-byte first tensor alone, then groups of at most 40 bytes.
    let mut w = ShardedWriter::create(dir.path(), meta(&[("format", "pt")]), &specs, 40).unwrap();
    let planned = w.shard_paths();
    assert!(planned.len() >= 3, "{planned:?}");
    for (s, d) in &fx {
        w.write_tensor(&s.name, d).unwrap();
    }
    let out = w.finish().unwrap();
    assert_eq!(out.shards.len(), planned.len());
    let total: u64 = fx.iter().map(|(_, d)| d.len() as u64).sum();
    assert_eq!(out.total_size, total);
    for (p, sha) in &out.shards {
        assert_eq!(verify_sidecar(p).unwrap(), Verified::Ok { sha256: sha.clone() });
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("model-0000") && name.contains(&format!("-of-{:05}", planned.len())), "{name}");
    }
    let (index_path, _) = out.index.clone().unwrap();
    assert_eq!(index_path, dir.join("model.safetensors.index.json"));

    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    assert_eq!(index["metadata"]["total_size"], total);
    assert_eq!(index["weight_map"].as_object().unwrap().len(), fx.len());
    assert_eq!(index["weight_map"]["model.embed.weight"], format!("model-00001-of-{:05}.safetensors", planned.len()));

    for open in [index_path.clone(), dir.path().to_path_buf()] {
        let model = SafetensorsModel::open(&open).unwrap();
        assert!(model.is_sharded());
        assert_eq!(model.shards().len(), planned.len());
        assert_eq!(model.index_total_size(), Some(total));
        assert_eq!(model.data_size(), total);
        assert_eq!(model.metadata(), &meta(&[("format", "pt")]));
        check_fixture(&model);
        let names: Vec<&str> = model.tensors().iter().map(|t| t.name.as_str()).collect();
        let want: Vec<&str> = fx.iter().map(|(s, _)| s.name.as_str()).collect();
        assert_eq!(names, want);
    }

    // Everything fits: one model.safetensors, no index (as Hugging Face does).
    let dir1 = kit::Scratch::new("st-sharded-one");
    let mut w = ShardedWriter::create(dir1.path(), BTreeMap::new(), &specs, 1 << 30).unwrap();
    for (s, d) in &fx {
        w.write_tensor(&s.name, d).unwrap();
    }
    let out = w.finish().unwrap();
    assert!(out.index.is_none());
    assert_eq!(out.shards.len(), 1);
    assert_eq!(out.shards[0].0, dir1.join("model.safetensors"));
    check_fixture(&SafetensorsModel::open(dir1.path()).unwrap());
}

#[test]
fn writer_rejects_misuse_and_leaves_nothing() {
    let dir = kit::Scratch::new("st-writer");
    let path = dir.join("w.safetensors");
    let specs = [TensorSpec::new("a", Dtype::F32, [2]), TensorSpec::new("b", Dtype::F16, [3])];

    let mut w = SafetensorsWriter::create(&path, BTreeMap::new(), &specs).unwrap();
    let e = w.write_tensor("b", &[0; 6]).unwrap_err();
    assert!(matches!(&e, E::Write { tensor, reason, .. } if tensor == "b" && reason.contains("\"a\"")), "{e}");
    let e = w.write_tensor("a", &[0; 7]).unwrap_err();
    assert!(matches!(&e, E::Write { reason, .. } if reason.contains("7 bytes")), "{e}");
    w.write_tensor("a", &[0; 8]).unwrap();
    let e = w.finish().unwrap_err();
    assert!(matches!(&e, E::Write { tensor, reason, .. } if tensor == "b" && reason.contains("never written")), "{e}");
    assert!(!path.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no temp files left");

    let mut w = SafetensorsWriter::create(&path, BTreeMap::new(), &specs).unwrap();
    w.write_tensor("a", &[0; 8]).unwrap();
    w.write_tensor("b", &[0; 6]).unwrap();
    assert!(matches!(w.write_tensor("c", &[]), Err(E::Write { .. })));
    drop(w);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "dropped writer leaves nothing");

    let dup = [TensorSpec::new("a", Dtype::F32, [1]), TensorSpec::new("a", Dtype::F32, [1])];
    assert!(matches!(SafetensorsWriter::create(&path, BTreeMap::new(), &dup), Err(E::DuplicateKey { .. })));
    let reserved = [TensorSpec::new("__metadata__", Dtype::F32, [1])];
    assert!(matches!(SafetensorsWriter::create(&path, BTreeMap::new(), &reserved), Err(E::BadTensorEntry { .. })));
    let overflow = [TensorSpec::new("big", Dtype::F32, [u64::MAX, 2])];
    assert!(matches!(SafetensorsWriter::create(&path, BTreeMap::new(), &overflow), Err(E::BadShape { .. })));
    let half_byte = [TensorSpec::new("f4", Dtype::F4, [3])];
    assert!(matches!(SafetensorsWriter::create(&path, BTreeMap::new(), &half_byte), Err(E::BadShape { .. })));

    // A sharded writer dropped half way removes the shards it had already finished.
    let many: Vec<TensorSpec> = (0..4).map(|i| TensorSpec::new(format!("t{i}"), Dtype::F32, [4])).collect();
    let mut w = ShardedWriter::create(dir.path(), BTreeMap::new(), &many, 16).unwrap();
    w.write_tensor("t0", &[0; 16]).unwrap();
    w.write_tensor("t1", &[0; 16]).unwrap();
    assert!(dir.join("model-00001-of-00004.safetensors").exists());
    drop(w);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "dropped sharded writer leaves nothing");
}

// ---------------------------------------------------------------------------------------------
// Against PyPI `safetensors`.

fn st_read(path: &Path) -> serde_json::Value {
    serde_json::from_str(&kit::oracle(&["st-read", path.to_str().unwrap()])).unwrap()
}

fn st_f32(path: &Path, name: &str, scratch: &kit::Scratch) -> Vec<f32> {
    let out = scratch.join("oracle.f32");
    kit::oracle(&["st-f32", path.to_str().unwrap(), name, out.to_str().unwrap()]);
    std::fs::read(&out).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Every tensor's dtype, shape and bytes (by SHA-256) as the reference loader sees them.
fn compare_with_reference(model: &SafetensorsModel, file: &Path) {
    let want = st_read(file);
    let tensors = want["tensors"].as_object().unwrap();
    let in_file: Vec<_> = model.tensors().iter().filter(|t| model.shards()[t.shard].path() == file).collect();
    assert_eq!(in_file.len(), tensors.len(), "{}", file.display());
    for t in in_file {
        let w = &tensors[&t.name];
        assert_eq!(w["dtype"], t.dtype.name(), "{}", t.name);
        let shape: Vec<u64> = w["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(shape, t.shape, "{}", t.name);
        assert_eq!(w["n_bytes"], t.n_bytes(), "{}", t.name);
        assert_eq!(w["sha256"], sha_hex(model.data(&t.name).unwrap()), "{}", t.name);
    }
    let m: BTreeMap<String, String> = serde_json::from_value(want["metadata"].clone()).unwrap();
    let shard = model.shards().iter().find(|s| s.path() == file).unwrap();
    assert_eq!(&m, shard.metadata());
}

#[test]
fn minilm_matches_pypi_safetensors() {
    let scratch = kit::Scratch::new("st-minilm");
    let dir = kit::minilm_dir();
    let model = SafetensorsModel::open(&dir).unwrap();
    let file = dir.join("model.safetensors");
    assert_eq!(model.path(), file);
    assert_eq!(model.metadata().get("format").map(String::as_str), Some("pt"));
    compare_with_reference(&model, &file);

    let emb = model.tensor("embeddings.word_embeddings.weight").unwrap();
    assert_eq!(emb.dtype, Dtype::F32);
    assert_eq!(emb.shape, vec![30522, 384]);
    assert_eq!(emb.ggml_dims(), vec![384, 30522]);
    assert_eq!(emb.ggml_type().unwrap(), GgmlType::F32);
    let q = model.tensor("encoder.layer.0.attention.self.query.weight").unwrap();
    assert_eq!((q.shape.clone(), q.ggml_dims()), (vec![384, 384], vec![384, 384]));
    let ff = model.tensor("encoder.layer.5.intermediate.dense.weight").unwrap();
    assert_eq!((ff.shape.clone(), ff.ggml_dims()), (vec![1536, 384], vec![384, 1536]));
    let pos = model.tensor("embeddings.position_ids").unwrap();
    assert_eq!(pos.dtype, Dtype::I64);
    assert!(matches!(pos.ggml_type(), Err(E::UnsupportedDtype { .. })));

    for name in [
        "embeddings.LayerNorm.weight",
        "encoder.layer.3.output.dense.bias",
        "encoder.layer.2.attention.self.key.weight",
    ] {
        assert_eq!(model.to_f32(name).unwrap(), st_f32(&file, name, &scratch), "{name}");
    }
    assert_eq!(model.to_f32("encoder.layer.0.attention.self.query.weight").unwrap().len(), 384 * 384);
}

#[test]
fn files_written_by_crunch_load_in_pypi_safetensors() {
    let scratch = kit::Scratch::new("st-to-py");
    let path = scratch.join("crunch.safetensors");
    write_fixture(&path, meta(&[("format", "pt"), ("by", "crunch")]));
    let model = SafetensorsModel::open(&path).unwrap();
    compare_with_reference(&model, &path);
    for name in ["model.embed.weight", "layers.0.attn.q.weight", "layers.0.norm.weight", "scale"] {
        assert_eq!(model.to_f32(name).unwrap(), st_f32(&path, name, &scratch), "{name}");
    }

    // Shards too, each on its own.
    let fx = fixture();
    let specs: Vec<TensorSpec> = fx.iter().map(|(s, _)| s.clone()).collect();
    let mut w = ShardedWriter::create(scratch.path(), meta(&[("format", "pt")]), &specs, 64).unwrap();
    for (s, d) in &fx {
        w.write_tensor(&s.name, d).unwrap();
    }
    let out = w.finish().unwrap();
    let model = SafetensorsModel::open(out.index.unwrap().0).unwrap();
    for (p, _) in &out.shards {
        compare_with_reference(&model, p);
    }
}

#[test]
fn files_written_by_pypi_safetensors_load_in_crunch() {
    let scratch = kit::Scratch::new("st-from-py");
    let path = scratch.join("py.safetensors");
    kit::oracle(&["st-save", path.to_str().unwrap()]);
    let model = SafetensorsModel::open(&path).unwrap();
    compare_with_reference(&model, &path);
    assert_eq!(model.len(), 7);
    assert_eq!(model.tensor("w.f32").unwrap().ggml_dims(), vec![4, 3, 2]);
    assert_eq!(model.to_f32("w.bf16").unwrap(), vec![1.0, 2.0, -3.0, 0.5, -0.0, f32::INFINITY]);
    for name in ["w.f32", "w.f16", "scalar.f32", "empty.f32"] {
        assert_eq!(model.to_f32(name).unwrap(), st_f32(&path, name, &scratch), "{name}");
    }
    assert_eq!(model.tensor("scalar.f32").unwrap().shape, Vec::<u64>::new());
}

// ---------------------------------------------------------------------------------------------
// Hostile inputs.

/// A file from a header JSON and a data section, unpadded.
fn raw_file(json: &str, data_len: usize) -> Vec<u8> {
    let mut b = (json.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(json.as_bytes());
    b.extend(std::iter::repeat_n(0u8, data_len));
    b
}

fn parse(bytes: &[u8]) -> Result<crunch_core::safetensors::SafetensorsHeader, E> {
    parse_header(bytes, Path::new("hostile.safetensors"))
}

#[test]
fn hostile_headers_give_named_errors() {
    let two = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#;
    parse(&raw_file(two, 16)).unwrap();

    // Truncated.
    assert!(matches!(parse(&[1, 2, 3]), Err(E::TooShort { len: 3, .. })));
    assert!(matches!(parse(&[]), Err(E::TooShort { len: 0, .. })));
    let full = raw_file(two, 16);
    assert!(matches!(parse(&full[..20]), Err(E::HeaderTruncated { .. })));
    match parse(&full[..full.len() - 3]) {
        Err(E::OutOfBounds { tensor, end: 16, data_len: 13, .. }) => assert_eq!(tensor, "b"),
        other => panic!("{other:?}"),
    }
    // Header length absurd.
    let mut absurd = full.clone();
    absurd[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(parse(&absurd), Err(E::HeaderTooLarge { .. })));
    absurd[..8].copy_from_slice(&200_000_000u64.to_le_bytes());
    assert!(matches!(parse(&absurd), Err(E::HeaderTooLarge { .. })));

    let case = |json: &str, data_len: usize| parse(&raw_file(json, data_len)).unwrap_err();
    // Offsets past the end.
    let e = case(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, 4);
    assert!(matches!(&e, E::OutOfBounds { tensor, .. } if tensor == "a"), "{e}");
    let e = case(r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551614,18446744073709551615]}}"#, 4);
    assert!(matches!(&e, E::OutOfBounds { .. }), "{e}");
    // Overlapping.
    let e = case(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        12,
    );
    assert!(matches!(&e, E::Overlap { a, b, .. } if a == "a" && b == "b"), "{e}");
    // Reversed (out-of-order) offsets.
    let e = case(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#, 8);
    assert!(matches!(&e, E::ReversedOffsets { begin: 8, end: 0, .. }), "{e}");
    // A hole between tensors, and trailing bytes.
    let e = case(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}"#,
        20,
    );
    assert!(matches!(&e, E::Hole { start: 8, end: 12, .. }), "{e}");
    let e = case(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, 9);
    assert!(matches!(&e, E::Hole { start: 8, end: 9, .. }), "{e}");
    // Listing tensors out of data order in the JSON is allowed; they come back in data order.
    let swapped = r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let h = parse(&raw_file(swapped, 16)).unwrap();
    assert_eq!(h.tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    // Bad JSON, bad UTF-8, not an object.
    assert!(matches!(case(r#"{"a":{"dtype":"F32","#, 0), E::HeaderJson { .. }));
    assert!(matches!(case("{} trailing", 0), E::HeaderJson { .. }));
    let mut bad_utf8 = raw_file("{\"\u{e9}\":1}", 0);
    bad_utf8[10] = 0xff;
    assert!(matches!(parse(&bad_utf8), Err(E::HeaderUtf8 { .. })));
    assert!(matches!(case("[1,2]", 0), E::BadHeader { .. }));
    // Unknown dtype.
    let e = case(r#"{"a":{"dtype":"F12","shape":[2],"data_offsets":[0,8]}}"#, 8);
    assert!(matches!(&e, E::UnknownDtype { tensor, dtype, .. } if tensor == "a" && dtype == "F12"), "{e}");
    assert!(e.to_string().contains("hostile.safetensors"), "{e}");
    // Shape and size disagree.
    let e = case(r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, 8);
    assert!(matches!(&e, E::SizeMismatch { expected: 12, found: 8, .. }), "{e}");
    // Malformed shapes.
    let e = case(r#"{"a":{"dtype":"F32","shape":[18446744073709551615,2],"data_offsets":[0,8]}}"#, 8);
    assert!(matches!(&e, E::BadShape { .. }), "{e}");
    let e = case(r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, 8);
    assert!(matches!(&e, E::BadShape { .. }), "{e}");
    let e = case(r#"{"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}"#, 8);
    assert!(matches!(&e, E::BadShape { .. }), "{e}");
    let e = case(r#"{"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}}"#, 4);
    assert!(matches!(&e, E::BadShape { .. }), "{e}");
    let e = case(r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#, 2);
    assert!(matches!(&e, E::BadShape { .. }), "{e}");
    // Malformed entries.
    let e = case(r#"{"a":{"dtype":"F32","shape":[2]}}"#, 0);
    assert!(matches!(&e, E::BadTensorEntry { reason, .. } if reason.contains("data_offsets")), "{e}");
    let e = case(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}}"#, 8);
    assert!(matches!(&e, E::BadTensorEntry { reason, .. } if reason.contains("extra")), "{e}");
    let e = case(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}}"#, 8);
    assert!(matches!(&e, E::BadTensorEntry { .. }), "{e}");
    let e = case(r#"{"a":[1]}"#, 0);
    assert!(matches!(&e, E::BadTensorEntry { .. }), "{e}");
    let e = case(r#"{"a":{"dtype":7,"shape":[2],"data_offsets":[0,8]}}"#, 8);
    assert!(matches!(&e, E::BadTensorEntry { .. }), "{e}");
    // Duplicate keys (serde_json alone would keep the last one silently).
    let e = case(
        r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#,
        2,
    );
    assert!(matches!(&e, E::DuplicateKey { key, .. } if key == "a"), "{e}");
    // Metadata must be strings.
    let e = case(r#"{"__metadata__":{"n":1}}"#, 0);
    assert!(matches!(&e, E::BadHeader { .. }), "{e}");
    // Deep nesting is refused by serde_json's recursion limit, not by a stack overflow.
    let deep = format!("{{\"__metadata__\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(matches!(case(&deep, 0), E::HeaderJson { .. }));
}

#[test]
fn hostile_bytes_never_panic() {
    let dir = kit::Scratch::new("st-mutate");
    let path = dir.join("seed.safetensors");
    write_fixture(&path, meta(&[("format", "pt")]));
    let seed = std::fs::read(&path).unwrap();
    let mut rng = kit::Rng::new(7);
    let (mut ok, mut err) = (0, 0);
    for i in 0..20_000 {
        let mut b = seed.clone();
        match i % 4 {
            0 => b.truncate((rng.next_u64() % b.len() as u64) as usize),
            _ => {
                for _ in 0..1 + rng.next_u64() % 4 {
                    let at = (rng.next_u64() % b.len() as u64) as usize;
                    b[at] = match rng.next_u64() % 3 {
                        0 => rng.next_u64() as u8,
                        1 => b"0123456789[]{},:\"-."[(rng.next_u64() % 19) as usize],
                        _ => b[at] ^ 1 << (rng.next_u64() % 8),
                    };
                }
            }
        }
        match parse(&b) {
            Ok(h) => {
                ok += 1;
                // Whatever parses must be consistent with the file length.
                let data_len = b.len() as u64 - h.data_start();
                assert!(h.tensors.iter().all(|t| t.data_offsets.1 <= data_len));
            }
            Err(e) => {
                err += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert!(err > 10_000 && ok > 0, "ok {ok}, err {err}");
}

#[test]
fn hostile_checkpoints_give_named_errors() {
    let dir = kit::Scratch::new("st-index");
    let fx = fixture();
    let specs: Vec<TensorSpec> = fx.iter().map(|(s, _)| s.clone()).collect();
    let mut w = ShardedWriter::create(dir.path(), BTreeMap::new(), &specs, 64).unwrap();
    for (s, d) in &fx {
        w.write_tensor(&s.name, d).unwrap();
    }
    let out = w.finish().unwrap();
    let index_path = out.index.unwrap().0;
    let good = std::fs::read_to_string(&index_path).unwrap();
    let mut index: serde_json::Value = serde_json::from_str(&good).unwrap();
    let write_index = |v: &serde_json::Value| std::fs::write(&index_path, serde_json::to_string(v).unwrap()).unwrap();

    // An index pointing at a missing shard.
    index["weight_map"]["scale"] = "model-00099-of-00099.safetensors".into();
    write_index(&index);
    let e = SafetensorsModel::open(dir.path()).err().unwrap();
    assert!(
        matches!(&e, E::MissingShard { tensor, shard, .. } if tensor == "scale" && shard.ends_with("model-00099-of-00099.safetensors")),
        "{e}"
    );
    assert!(e.to_string().contains("model.safetensors.index.json"), "{e}");

    // An index pointing at a shard that lacks the tensor.
    let first = out.shards[0].0.file_name().unwrap().to_str().unwrap().to_string();
    let mut index: serde_json::Value = serde_json::from_str(&good).unwrap();
    index["weight_map"]["scale"] = first.clone().into();
    write_index(&index);
    let e = SafetensorsModel::open(&index_path).err().unwrap();
    assert!(
        matches!(&e, E::TensorMissingFromShard { tensor, shard, .. } if tensor == "scale" && shard.ends_with(&first)),
        "{e}"
    );

    // An index naming a tensor no shard has.
    let mut index: serde_json::Value = serde_json::from_str(&good).unwrap();
    index["weight_map"]["ghost"] = first.clone().into();
    write_index(&index);
    assert!(
        matches!(SafetensorsModel::open(&index_path), Err(E::TensorMissingFromShard { tensor, .. }) if tensor == "ghost")
    );

    // Shard names must stay inside the folder.
    let mut index: serde_json::Value = serde_json::from_str(&good).unwrap();
    index["weight_map"]["scale"] = "../outside.safetensors".into();
    write_index(&index);
    assert!(matches!(SafetensorsModel::open(&index_path), Err(E::BadShardName { .. })));
    index["weight_map"]["scale"] = "/etc/passwd".into();
    write_index(&index);
    assert!(matches!(SafetensorsModel::open(&index_path), Err(E::BadShardName { .. })));

    // Malformed indexes.
    let f = Path::new("bad.index.json");
    assert!(matches!(parse_index(b"{", f), Err(E::BadIndex { .. })));
    assert!(matches!(parse_index(b"{\"metadata\":{}}", f), Err(E::BadIndex { .. })));
    assert!(matches!(parse_index(b"{\"weight_map\":{}}", f), Err(E::BadIndex { .. })));
    assert!(matches!(parse_index(b"{\"weight_map\":{\"a\":1}}", f), Err(E::BadIndex { .. })));
    assert!(matches!(parse_index(b"{\"weight_map\":{\"a\":\"x\",\"a\":\"y\"}}", f), Err(E::DuplicateKey { .. })));
    assert!(matches!(
        parse_index(b"{\"metadata\":{\"total_size\":-1},\"weight_map\":{\"a\":\"x\"}}", f),
        Err(E::BadIndex { .. })
    ));
    let ok = parse_index(b"{\"metadata\":{\"total_size\":16.0},\"weight_map\":{\"a\":\"x.safetensors\"}}", f).unwrap();
    assert_eq!(ok.total_size, Some(16));

    // The same tensor in two shards.
    std::fs::write(&index_path, &good).unwrap();
    SafetensorsModel::open(&index_path).unwrap();
    let dup = kit::Scratch::new("st-dup");
    let t = |name: &str| (TensorSpec::new(name, Dtype::U8, [2]), &[1u8, 2][..]);
    SafetensorsWriter::write_file(dup.join("a.safetensors"), BTreeMap::new(), &[t("x"), t("y")]).unwrap();
    SafetensorsWriter::write_file(dup.join("b.safetensors"), BTreeMap::new(), &[t("y"), t("z")]).unwrap();
    let dup_index = dup.join("model.safetensors.index.json");
    std::fs::write(&dup_index, r#"{"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors"}}"#)
        .unwrap();
    let e = SafetensorsModel::open(dup.path()).err().unwrap();
    assert!(
        matches!(&e, E::DuplicateTensor { tensor, first, second } if tensor == "y" && first.ends_with("a.safetensors") && second.ends_with("b.safetensors")),
        "{e}"
    );

    // Folder resolution.
    let empty = kit::Scratch::new("st-empty-dir");
    assert!(matches!(SafetensorsModel::open(empty.path()), Err(E::NoCheckpoint { .. })));
    let two = kit::Scratch::new("st-two");
    write_fixture(&two.join("a.safetensors"), BTreeMap::new());
    write_fixture(&two.join("b.safetensors"), BTreeMap::new());
    assert!(
        matches!(SafetensorsModel::open(two.path()), Err(E::AmbiguousCheckpoint { candidates, .. }) if candidates.len() == 2)
    );
    std::fs::remove_file(two.join("b.safetensors")).unwrap();
    check_fixture(&SafetensorsModel::open(two.path()).unwrap());
    assert!(matches!(SafetensorsModel::open(two.join("missing.safetensors")), Err(E::Io { .. })));
}
