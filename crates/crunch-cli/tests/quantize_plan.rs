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

/// The importance matrix the i-quant fixture was recorded with: `crunch imatrix` on the F32 base,
/// 4 chunks of 128 tokens of the wikitext dev text (the same file on every machine, whatever the
/// thread count).
fn smollm2_small_imatrix(dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join("smollm2-small.imatrix");
    let text = crunch_testkit::wikitext_dev();
    let f32_path = common::smollm2_f32();
    let o = common::crunch(&[
        "imatrix",
        f32_path.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--ctx",
        "128",
        "--chunks",
        "4",
        "-q",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    out
}

/// The i-quant presets, which llama.cpp writes only with an importance matrix. The fixture
/// (`fixtures/llama_iquant_plans_smollm2.json`) holds llama.cpp's plans and the SHA-256 of its
/// tensors given the importance matrix of [`smollm2_small_imatrix`], recorded with
///
/// ```text
/// ~/.cache/crunch/llama-venv/bin/python scripts/compare_llama_quantize.py \
///     --f32 ~/.cache/crunch/models/smollm2-f32.gguf --crunch target/release/crunch \
///     --presets IQ1_S,IQ1_M,IQ2_XXS,IQ2_XS,IQ2_S,IQ2_M,IQ3_XXS,IQ3_XS,IQ3_S,IQ3_M,Q2_K_S \
///     --imatrix smollm2-small.imatrix --ppl ../shared/data/wikitext2-test-dev.txt \
///     --fixture crates/crunch-cli/tests/fixtures/llama_iquant_plans_smollm2.json
/// ```
///
/// which also found every tensor of every preset byte-identical (llama.cpp's file adds no
/// `quantize.imatrix.*` keys when called as a library, so whole files differ by those only).
/// Here: crunch's plan for every preset is llama.cpp's, the i-quant tensors of the first and last
/// layer of every preset are llama.cpp's bytes, and one whole preset written by `crunch quantize
/// --imatrix` has llama.cpp's tensor data.
#[test]
fn iquant_presets_are_llama_cpps_given_the_same_imatrix() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/llama_iquant_plans_smollm2.json")).expect("fixture json");
    let f32_path = common::smollm2_f32();
    let model = GgufFile::open(&f32_path).unwrap();
    let scratch = crunch_testkit::Scratch::new("iq-presets");
    let imatrix_path = smollm2_small_imatrix(scratch.path());
    let imatrix = crunch_calib::Imatrix::load(&imatrix_path, 512).unwrap();
    let presets = fixture["presets"].as_object().unwrap();
    assert_eq!(presets.len(), 11);
    let mut types_seen = std::collections::BTreeSet::new();
    for (name, want) in presets {
        let ftype: Ftype = name.parse().unwrap();
        let mut opts = QuantizeOptions::new(ftype);
        opts.has_imatrix = true;
        let plan = quantize::build_plan(model.metadata(), model.tensors(), &opts).unwrap();
        let ours: BTreeMap<&str, &str> = plan.tensors.iter().map(|t| (t.name.as_str(), t.dst_type.name())).collect();
        let theirs: BTreeMap<&str, &str> =
            want["types"].as_object().unwrap().iter().map(|(k, v)| (k.as_str(), v.as_str().unwrap())).collect();
        assert_eq!(ours, theirs, "{name}: per-tensor types differ from llama.cpp");
        assert_eq!(plan.dst_bytes, want["tensor_bytes"].as_u64().unwrap(), "{name}: tensor bytes differ");
        for (tensor, sha) in want["tensor_sha256"].as_object().unwrap() {
            if !(tensor.starts_with("blk.0.") || tensor.starts_with("blk.29.")) {
                continue;
            }
            let info = model.tensor(tensor).unwrap();
            let ty: crunch_core::GgmlType = theirs[tensor.as_str()].parse().unwrap();
            types_seen.insert(ty);
            let row_len = info.row_len() as usize;
            let x = crunch_testkit::bytes_f32(model.tensor_data(info));
            let imp = imatrix.importance(tensor).expect("imatrix entry");
            let mut q = vec![0u8; ty.tensor_size(row_len, x.len() / row_len).unwrap()];
            crunch_quant::quantize_rows(ty, &x, row_len, Some(&imp), &mut q).unwrap();
            assert_eq!(sha_hex(&q), sha.as_str().unwrap(), "{name}: {tensor} ({ty}) differs from llama.cpp's");
        }
    }
    let names: Vec<&str> = types_seen.iter().map(|t| t.name()).collect();
    for t in ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S"] {
        assert!(names.contains(&t), "no {t} tensor checked (checked: {names:?})");
    }
    // one whole preset through the command line
    let name = "IQ2_XXS";
    let out = scratch.join("IQ2_XXS.gguf");
    let o = common::crunch(&[
        "quantize",
        f32_path.to_str().unwrap(),
        out.to_str().unwrap(),
        name,
        "--imatrix",
        imatrix_path.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let written = GgufFile::open(&out).unwrap();
    let mut names: Vec<&str> = written.tensors().iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    let mut all = Vec::new();
    for n in names {
        all.extend_from_slice(written.tensor_data(written.tensor(n).unwrap()));
    }
    assert_eq!(sha_hex(&all), fixture["presets"][name]["tensor_data_sha256"].as_str().unwrap(), "{name}: tensor data");
}

/// SHA-256 of `bytes` in hex, as the fixture holds it.
fn sha_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    crunch_core::output::hex(&sha2::Sha256::digest(bytes))
}
