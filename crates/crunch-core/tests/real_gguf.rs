//! The GGUF reader and writer on the real SmolLM2 file, checked against PyPI `gguf`.

use crunch_core::gguf::{GgufFile, GgufWriter, TensorSpec};
use crunch_testkit as kit;

#[test]
fn smollm2_round_trips_byte_for_byte() {
    let src = kit::smollm2_gguf();
    let f = GgufFile::open(&src).unwrap();
    let scratch = kit::Scratch::new("rt");
    let out = scratch.join("copy.gguf");
    let specs: Vec<TensorSpec> =
        f.tensors().iter().map(|t| TensorSpec { name: t.name.clone(), ty: t.ty, dims: t.dims.clone() }).collect();
    let mut w = GgufWriter::create(&out, f.metadata().clone(), &specs).unwrap();
    for t in f.tensors() {
        w.write_tensor(&t.name, f.tensor_data(t)).unwrap();
    }
    let sha = w.finish().unwrap();
    let a = std::fs::read(&src).unwrap();
    let b = std::fs::read(&out).unwrap();
    assert_eq!(a.len(), b.len(), "sizes differ");
    assert!(a == b, "bytes differ");
    assert_eq!(sha, crunch_core::output::sha256_file(&src).unwrap());
}

#[test]
fn smollm2_matches_gguf_python_reader() {
    let src = kit::smollm2_gguf();
    let f = GgufFile::open(&src).unwrap();
    let json: serde_json::Value = serde_json::from_str(&kit::oracle(&["read", src.to_str().unwrap()])).unwrap();
    let tensors = json["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), f.tensors().len());
    for (t, o) in f.tensors().iter().zip(tensors) {
        assert_eq!(o["name"], t.name.as_str());
        assert_eq!(o["type"], t.ty.name());
        let shape: Vec<u64> = o["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(shape, t.dims, "{}", t.name);
        assert_eq!(o["offset"].as_u64().unwrap(), f.header.data_start + t.offset);
        assert_eq!(o["n_bytes"].as_u64().unwrap(), t.n_bytes());
    }
    let fields = json["fields"].as_object().unwrap();
    // key order as in the file (gguf-py's pseudo-fields GGUF.* left out by the oracle)
    let real: Vec<&str> = json["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    let ours: Vec<&str> = f.metadata().iter().map(|(k, _)| k).collect();
    assert_eq!(real, ours);
    assert_eq!(f.metadata().architecture(), Some("llama"));
    assert_eq!(f.metadata().get_u64("llama.block_count"), Some(30));
    assert_eq!(fields["general.name"]["value"].as_str(), f.metadata().get_str("general.name"));
}
