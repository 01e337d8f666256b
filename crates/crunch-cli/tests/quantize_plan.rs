//! crunch's per-tensor plan for every preset equals llama.cpp's on SmolLM2 (F32 base made by crunch),
//! and the files crunch writes for a few presets are llama.cpp's, byte for byte.
//!
//! The fixture (per preset: llama.cpp's per-tensor types, sizes and the SHA-256 of its whole file) was
//! recorded from llama-cpp-python 0.3.36's vendored llama.cpp (2026-10-01; its `build` field names
//! the build) with
//!
//! ```text
//! ~/.cache/crunch/llama-venv/bin/python scripts/compare_llama_quantize.py \
//!     --f32 ~/.cache/crunch/models/smollm2-f32.gguf --crunch target/release/crunch \
//!     --fixture crates/crunch-cli/tests/fixtures/llama_plans_smollm2.json
//! ```
//!
//! which also compares crunch's whole files with llama.cpp's; this test needs no llama.cpp.

mod common;

use crunch::quantize::{self, Ftype, QuantizeOptions};
use crunch_core::gguf::GgufFile;
use std::collections::BTreeMap;

#[test]
fn plans_match_llama_cpp_for_every_preset() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/llama_plans_smollm2.json")).expect("fixture json");
    let f32_path = common::smollm2_f32();
    let model = GgufFile::open(&f32_path).unwrap();
    let presets = fixture["presets"].as_object().unwrap();
    assert!(presets.len() >= 18);
    for (name, want) in presets {
        let ftype: Ftype = name.parse().unwrap();
        let plan = quantize::build_plan(model.metadata(), model.tensors(), &QuantizeOptions::new(ftype)).unwrap();
        let ours: BTreeMap<&str, &str> = plan.tensors.iter().map(|t| (t.name.as_str(), t.dst_type.name())).collect();
        let theirs: BTreeMap<&str, &str> =
            want["types"].as_object().unwrap().iter().map(|(k, v)| (k.as_str(), v.as_str().unwrap())).collect();
        assert_eq!(ours, theirs, "{name}: per-tensor types differ from llama.cpp");
        assert_eq!(plan.dst_bytes, want["tensor_bytes"].as_u64().unwrap(), "{name}: tensor bytes differ");
    }
}

#[test]
fn written_files_are_llama_cpps_and_gguf_py_reads_them() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/llama_plans_smollm2.json")).expect("fixture json");
    let f32_path = common::smollm2_f32();
    let scratch = crunch_testkit::Scratch::new("qsize");
    // the k-quant presets here hold every k-quant type a SmolLM2 preset uses (Q3_K, Q4_K, Q5_K, Q6_K)
    for name in ["Q4_K_M", "Q3_K_S", "Q5_K_M", "Q8_0", "IQ4_XS"] {
        let out = scratch.join(&format!("{name}.gguf"));
        let o = common::crunch(&["quantize", f32_path.to_str().unwrap(), out.to_str().unwrap(), name, "-q"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let size = std::fs::metadata(&out).unwrap().len();
        assert_eq!(size, fixture["presets"][name]["file_size"].as_u64().unwrap(), "{name}: file size");
        let sha = crunch_core::output::sha256_file(&out).unwrap();
        assert_eq!(sha, fixture["presets"][name]["sha256"].as_str().unwrap(), "{name}: file differs from llama.cpp's");
        // llama.cpp's own Python reader accepts it and sees the planned types
        let json: serde_json::Value =
            serde_json::from_str(&crunch_testkit::oracle(&["read", out.to_str().unwrap()])).unwrap();
        for t in json["tensors"].as_array().unwrap() {
            let want = &fixture["presets"][name]["types"][t["name"].as_str().unwrap()];
            assert_eq!(&t["type"], want, "{name}: {}", t["name"]);
        }
        let ft = json["fields"]["general.file_type"]["value"].as_u64().unwrap();
        assert_eq!(ft as u32, name.parse::<Ftype>().unwrap().code());
        let v = common::crunch(&["verify", out.to_str().unwrap()]);
        assert!(v.status.success());
    }
}
