//! `crunch convert` / `crunch export` on Gemma 3 (`gemma3` <-> `Gemma3ForCausalLM`): a tiny random
//! Gemma 3 folder (its tensor table, llama.cpp's `+1` on every norm weight and export's `-1`, the
//! `gemma3_text` config keys both ways, the SentencePiece vocabulary, malformed configs refused by
//! field name), and the real Gemma 3 270M round trip (GGUF -> folder -> GGUF: tensors bit-identical
//! to the dequantized original, the same keys, the same perplexity).

mod common;

use common::{crunch, listing, s, stderr};
use crunch::convert::spm::{Piece, SpmModel};
use crunch_core::gguf::{value::to_json, GgufFile, GgufWriter, Metadata, TensorSpec as GgufSpec, Value};
use crunch_core::safetensors::{Dtype, SafetensorsModel, SafetensorsWriter, TensorSpec};
use crunch_core::GgmlType;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

const HIDDEN: u64 = 64;
const HEADS: u64 = 2;
const KV_HEADS: u64 = 1;
/// Not hidden / heads (32): the checkpoint's `head_dim` is what counts.
const HEAD_DIM: u64 = 48;
const FF: u64 = 96;
/// Layer 5 is the one global layer (llama.cpp: every sixth).
const LAYERS: u64 = 7;
const WINDOW: u64 = 16;

/// The SentencePiece pieces: 4 special tokens, a control token, the 256 byte pieces, `▁` and
/// letters and `▁`-words with decreasing scores.
fn pieces() -> Vec<Piece> {
    let mut p = vec![
        Piece { piece: "<pad>".into(), score: 0.0, kind: 3 },
        Piece { piece: "<eos>".into(), score: 0.0, kind: 3 },
        Piece { piece: "<bos>".into(), score: 0.0, kind: 3 },
        Piece { piece: "<unk>".into(), score: 0.0, kind: 2 },
        Piece { piece: "<start_of_turn>".into(), score: 0.0, kind: 4 },
    ];
    p.extend((0..256).map(|b| Piece { piece: format!("<0x{b:02X}>"), score: 0.0, kind: 6 }));
    let mut words: Vec<String> = vec!["\u{2581}".into()];
    for c in 'a'..='z' {
        words.push(c.to_string());
        words.push(format!("\u{2581}{c}"));
    }
    words.extend(["\u{2581}the", "\u{2581}of", "\u{2581}and", "th", "he", "in", "er", "an"].map(String::from));
    p.extend(words.into_iter().enumerate().map(|(i, w)| Piece { piece: w, score: -(i as f32), kind: 1 }));
    p
}

fn vocab() -> u64 {
    pieces().len() as u64
}

fn layer_types() -> Vec<&'static str> {
    (0..LAYERS).map(|i| if i % 6 == 5 { "full_attention" } else { "sliding_attention" }).collect()
}

/// A `gemma3_text` config shaped like the published ones.
fn config() -> serde_json::Value {
    json!({
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "_sliding_window_pattern": 6,
        "attention_bias": false, "attention_dropout": 0.0, "attn_logit_softcapping": null,
        "final_logit_softcapping": null, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
        "head_dim": HEAD_DIM, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": HIDDEN,
        "intermediate_size": FF, "layer_types": layer_types(), "max_position_embeddings": 1024,
        "num_attention_heads": HEADS, "num_hidden_layers": LAYERS, "num_key_value_heads": KV_HEADS,
        "query_pre_attn_scalar": HEAD_DIM, "rms_norm_eps": 1e-6, "rope_local_base_freq": 10000.0,
        "rope_scaling": null, "rope_theta": 1000000.0, "sliding_window": WINDOW, "torch_dtype": "bfloat16",
        "use_bidirectional_attention": false, "use_cache": true, "vocab_size": vocab(),
        "_name_or_path": "tiny/tiny-gemma3"
    })
}

/// Hugging Face name, GGUF name and shape of every tensor (tied embeddings: no `lm_head`).
fn tensors() -> Vec<(String, String, Vec<u64>)> {
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    let mut v = vec![
        ("model.embed_tokens.weight".to_string(), "token_embd.weight".to_string(), vec![vocab(), HIDDEN]),
        ("model.norm.weight".into(), "output_norm.weight".into(), vec![HIDDEN]),
    ];
    for l in 0..LAYERS {
        let (p, b) = (format!("model.layers.{l}."), format!("blk.{l}."));
        for (hf, gguf, shape) in [
            ("input_layernorm", "attn_norm", vec![HIDDEN]),
            ("self_attn.q_proj", "attn_q", vec![q, HIDDEN]),
            ("self_attn.k_proj", "attn_k", vec![kv, HIDDEN]),
            ("self_attn.v_proj", "attn_v", vec![kv, HIDDEN]),
            ("self_attn.o_proj", "attn_output", vec![HIDDEN, q]),
            ("self_attn.q_norm", "attn_q_norm", vec![HEAD_DIM]),
            ("self_attn.k_norm", "attn_k_norm", vec![HEAD_DIM]),
            ("post_attention_layernorm", "post_attention_norm", vec![HIDDEN]),
            ("pre_feedforward_layernorm", "ffn_norm", vec![HIDDEN]),
            ("post_feedforward_layernorm", "post_ffw_norm", vec![HIDDEN]),
            ("mlp.gate_proj", "ffn_gate", vec![FF, HIDDEN]),
            ("mlp.up_proj", "ffn_up", vec![FF, HIDDEN]),
            ("mlp.down_proj", "ffn_down", vec![HIDDEN, FF]),
        ] {
            v.push((format!("{p}{hf}.weight"), format!("{b}{gguf}.weight"), shape));
        }
    }
    v
}

fn encode(dtype: Dtype, vals: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::BF16 => vals.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
        Dtype::F16 => vals.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
        _ => vals.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn decode(dtype: Dtype, b: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        _ => crunch_testkit::bytes_f32(b),
    }
}

/// Write the tiny Gemma 3 folder: `dtype` tensors (norm weights spread over [-1.2, 1.2], as trained
/// Gemma norms are; `model.norm.weight` replaced by `output_norm` when given), config, tokenizer.
fn tiny_gemma(dir: &Path, dtype: Dtype, output_norm: Option<&[f32]>) {
    std::fs::create_dir_all(dir).unwrap();
    let mut entries: Vec<(TensorSpec, Vec<u8>)> = Vec::new();
    for (i, (hf, _, shape)) in tensors().into_iter().enumerate() {
        let n: u64 = shape.iter().product();
        let mut vals = crunch_testkit::realistic_weights(1, n as usize, 700 + i as u64);
        if hf.ends_with("norm.weight") {
            let mut rng = crunch_testkit::Rng::new(900 + i as u64);
            vals = (0..n).map(|_| 2.4 * rng.uniform() - 1.2).collect();
            if let (Some(v), "model.norm.weight") = (output_norm, hf.as_str()) {
                vals[..v.len()].copy_from_slice(v);
            }
        }
        entries.push((TensorSpec::new(hf, dtype, shape), encode(dtype, &vals)));
    }
    let refs: Vec<(TensorSpec, &[u8])> = entries.iter().map(|(s, d)| (s.clone(), d.as_slice())).collect();
    SafetensorsWriter::write_file(dir.join("model.safetensors"), BTreeMap::new(), &refs).unwrap();
    std::fs::write(dir.join("config.json"), config().to_string()).unwrap();
    let spm = SpmModel { pieces: pieces(), model_type: Some(2), add_dummy_prefix: Some(false) };
    std::fs::write(dir.join("tokenizer.model"), spm.to_bytes()).unwrap();
    let tc = json!({
        "add_bos_token": true, "add_eos_token": false, "bos_token": "<bos>", "eos_token": "<eos>",
        "pad_token": "<pad>", "unk_token": "<unk>",
        "added_tokens_decoder": {"4": {"content": "<start_of_turn>", "lstrip": false, "normalized": false,
                                       "rstrip": false, "single_word": false, "special": true}}
    });
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
}

fn run(args: &[&str]) {
    let o = crunch(args);
    assert!(o.status.success(), "crunch {args:?}: {}", stderr(&o));
}

fn f32s(g: &GgufFile, name: &str) -> Vec<f32> {
    let t = g.tensor(name).unwrap_or_else(|| panic!("no tensor {name}"));
    match t.ty {
        GgmlType::F32 => crunch_testkit::bytes_f32(g.tensor_data(t)),
        GgmlType::F16 => decode(Dtype::F16, g.tensor_data(t)),
        other => panic!("{name}: {other}"),
    }
}

/// The whole path on a tiny random Gemma 3: convert (names, +1 on norms, no Q/K permutation, the
/// `gemma3.*` and tokenizer keys), export (the checkpoint's bytes back, transformers' config), and
/// convert again (the same GGUF); crunch then computes with the converted file.
#[test]
fn tiny_gemma3_converts_exports_and_round_trips() {
    let sc = crunch_testkit::Scratch::new("gemma3-tiny");
    let hf = sc.join("tiny");
    tiny_gemma(&hf, Dtype::BF16, None);
    let g_path = sc.join("tiny-f32.gguf");
    run(&["convert", s(&hf), s(&g_path), "--type", "f32", "-q"]);
    let g = GgufFile::open(&g_path).unwrap();
    let md = g.metadata();
    assert_eq!(md.architecture(), Some("gemma3"));
    for (k, v) in [
        ("gemma3.block_count", LAYERS),
        ("gemma3.context_length", 1024),
        ("gemma3.embedding_length", HIDDEN),
        ("gemma3.feed_forward_length", FF),
        ("gemma3.attention.head_count", HEADS),
        ("gemma3.attention.head_count_kv", KV_HEADS),
        ("gemma3.attention.key_length", HEAD_DIM),
        ("gemma3.attention.value_length", HEAD_DIM),
        ("gemma3.attention.sliding_window", WINDOW),
        ("tokenizer.ggml.bos_token_id", 2),
        ("tokenizer.ggml.eos_token_id", 1),
        ("tokenizer.ggml.padding_token_id", 0),
    ] {
        assert_eq!(md.get_u64(k), Some(v), "{k}");
    }
    assert_eq!(md.get("gemma3.rope.freq_base"), Some(&Value::F32(1e6)));
    assert_eq!(md.get("gemma3.attention.layer_norm_rms_epsilon"), Some(&Value::F32(1e-6)));
    assert_eq!(md.get_str("tokenizer.ggml.model"), Some("llama"));
    assert_eq!(md.get_bool("tokenizer.ggml.add_space_prefix"), Some(false));
    assert_eq!(md.get_bool("tokenizer.ggml.add_bos_token"), Some(true));
    assert_eq!(md.get_bool("tokenizer.ggml.add_eos_token"), Some(false));
    let types = md.get("tokenizer.ggml.token_type").unwrap().as_array().unwrap();
    assert_eq!(types.len() as u64, vocab());
    assert_eq!(
        types.get(4).and_then(|v| v.as_i64()),
        Some(3),
        "<start_of_turn> is a control token (added_tokens_decoder)"
    );
    assert!(md.get("gemma3.rope.scaling.type").is_none() && md.get("gemma3.final_logit_softcapping").is_none());

    // Every tensor under its GGUF name; norms are 1 + the checkpoint (in f32), the rest as stored
    // (Q and K rows in the checkpoint's order: Gemma's RoPE is NeoX, nothing permuted).
    let st = SafetensorsModel::open(&hf).unwrap();
    assert_eq!(g.tensors().len(), tensors().len());
    let mut below_half = 0;
    for (hf_name, gguf, shape) in tensors() {
        let src = decode(Dtype::BF16, st.data(&hf_name).unwrap());
        let t = g.tensor(&gguf).unwrap_or_else(|| panic!("no {gguf}"));
        assert_eq!(t.dims, shape.iter().rev().copied().collect::<Vec<_>>(), "{gguf}");
        assert_eq!(t.ty, GgmlType::F32);
        let got = f32s(&g, &gguf);
        let norm = hf_name.ends_with("norm.weight");
        let want: Vec<f32> = src.iter().map(|x| if norm { x + 1.0 } else { *x }).collect();
        assert_eq!(got, want, "{gguf}");
        below_half += got.iter().filter(|&&x| norm && x < 0.5).count();
    }
    assert!(below_half > 100, "norm weights below 0.5 (where x - 1 + 1 is not trivially exact): {below_half}");

    // F16: matrices F16, norms F32 with the same values.
    let h = sc.join("tiny-f16.gguf");
    run(&["convert", s(&hf), s(&h), "--type", "f16", "-q"]);
    let h = GgufFile::open(&h).unwrap();
    assert_eq!(h.tensor("blk.5.attn_q.weight").unwrap().ty, GgmlType::F16);
    assert_eq!(h.tensor("blk.5.attn_q_norm.weight").unwrap().ty, GgmlType::F32);
    assert_eq!(f32s(&h, "blk.6.post_ffw_norm.weight"), f32s(&g, "blk.6.post_ffw_norm.weight"));

    // Export as BF16: every tensor is the checkpoint's bytes again (norms minus one, exactly).
    let back = sc.join("back-bf16");
    run(&["export", s(&g_path), s(&back), "--dtype", "bf16", "-q"]);
    let eb = SafetensorsModel::open(&back).unwrap();
    assert_eq!(eb.tensors().len(), tensors().len());
    for (hf_name, _, shape) in tensors() {
        let t = eb.tensors().iter().find(|t| t.name == hf_name).unwrap_or_else(|| panic!("{hf_name} not exported"));
        assert_eq!(t.shape, shape);
        assert!(eb.data(&hf_name).unwrap() == st.data(&hf_name).unwrap(), "{hf_name}");
    }
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(back.join("config.json")).unwrap()).unwrap();
    let orig = config();
    for k in [
        "architectures",
        "model_type",
        "head_dim",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "sliding_window",
        "layer_types",
        "query_pre_attn_scalar",
        "rope_local_base_freq",
        "rope_theta",
        "rms_norm_eps",
        "hidden_activation",
        "attn_logit_softcapping",
        "final_logit_softcapping",
        "rope_scaling",
        "vocab_size",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "use_bidirectional_attention",
    ] {
        assert_eq!(c[k], orig[k], "config.json {k}");
    }
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["torch_dtype"], "bfloat16");
    let tc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(tc["tokenizer_class"], "GemmaTokenizerFast");
    let spm = SpmModel::parse(&std::fs::read(back.join("tokenizer.model")).unwrap()).unwrap();
    assert_eq!(spm.pieces.len() as u64, vocab());
    assert_eq!(spm.add_dummy_prefix, Some(false));

    // Export as F32 and convert again: the same file contents (every tensor, every key).
    let back32 = sc.join("back-f32");
    run(&["export", s(&g_path), s(&back32), "--dtype", "f32", "-q"]);
    let again = sc.join("again.gguf");
    run(&["convert", s(&back32), s(&again), "--type", "f32", "-q"]);
    let a = GgufFile::open(&again).unwrap();
    for t in g.tensors() {
        assert!(g.tensor_data(t) == a.tensor_data(a.tensor(&t.name).unwrap()), "{}", t.name);
    }
    // The exported tokenizer.json's post-processor (BOS, then the text; as the published Gemma 3
    // folders have it) also tells llama.cpp's SpecialVocab "no separator": one key more than this
    // fixture without a tokenizer.json had (the real model's GGUF has it too).
    let sep = "tokenizer.ggml.add_sep_token";
    assert_eq!(a.metadata().get_bool(sep), Some(false));
    let keys = |m: &Metadata| m.iter().map(|(k, _)| k.to_string()).filter(|k| k != sep).collect::<Vec<_>>();
    assert_eq!(keys(md), keys(a.metadata()));
    for (k, v) in md.iter() {
        let w = a.metadata().get(k).unwrap();
        assert_eq!((to_json(v, usize::MAX), v.value_type()), (to_json(w, usize::MAX), w.value_type()), "{k}");
    }

    // crunch computes with the converted file (both orders of windowed and global layers).
    let text = sc.join("text.txt");
    std::fs::write(&text, "the cat and the hat of the north. ".repeat(40)).unwrap();
    let j =
        common::ok_json(&["eval", "perplexity", s(&g_path), "--text", s(&text), "--ctx", "64", "--json", "-t", "1"]);
    let ppl = j["ppl"].as_f64().unwrap();
    assert!(ppl.is_finite() && ppl > 1.0, "{j}");
}

/// An F16 checkpoint: llama.cpp adds the 1 in torch's f16, so the stored norm is the sum rounded
/// to f16 (then widened to F32); BF16 and F32 checkpoints add in f32.
#[test]
fn f16_norms_are_shifted_in_f16() {
    let sc = crunch_testkit::Scratch::new("gemma3-f16");
    let hf = sc.join("tiny");
    let tiny = 2f32.powi(-12); // 1 + 2^-12 is between two f16 values (f16's step at 1 is 2^-10)
    tiny_gemma(&hf, Dtype::F16, Some(&[tiny, 0.5, -1.0, 3.0, -0.25]));
    let out = sc.join("f32.gguf");
    run(&["convert", s(&hf), s(&out), "--type", "f32", "-q"]);
    let g = GgufFile::open(&out).unwrap();
    let norm = f32s(&g, "output_norm.weight");
    assert_eq!(&norm[..5], &[1.0, 1.5, 0.0, 4.0, 0.75]);
    let st = SafetensorsModel::open(&hf).unwrap();
    let src = decode(Dtype::F16, st.data("model.layers.3.input_layernorm.weight").unwrap());
    let want: Vec<f32> = src.iter().map(|x| half::f16::from_f32(x + 1.0).to_f32()).collect();
    assert_eq!(f32s(&g, "blk.3.attn_norm.weight"), want);
    // ... and in f32 it would have differed for the tiny value.
    assert_ne!(tiny + 1.0, 1.0);
}

/// A broken tiny Gemma 3: the run fails with a message containing `expect`, leaving nothing.
fn expect_failure(tag: &str, break_it: impl FnOnce(&Path), expect: &str) {
    let sc = crunch_testkit::Scratch::new(tag);
    let hf = sc.join("model");
    tiny_gemma(&hf, Dtype::BF16, None);
    break_it(&hf);
    let out = sc.join("out.gguf");
    let o = crunch(&["convert", s(&hf), s(&out)]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{tag}: should fail");
    assert!(!err.contains("panicked"), "{tag}: {err}");
    assert!(err.contains(expect), "{tag}: expected {expect:?} in:\n{err}");
    assert!(!out.exists(), "{tag}: output left behind");
    assert_eq!(listing(sc.path()), vec!["model"], "{tag}: stray files");
}

fn edit_config(hf: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(hf.join("config.json")).unwrap()).unwrap();
    f(&mut c);
    std::fs::write(hf.join("config.json"), c.to_string()).unwrap();
}

/// Rewrite the checkpoint without `name`, or with its shape changed.
fn edit_tensor(hf: &Path, name: &str, shape: Option<Vec<u64>>) {
    let path = hf.join("model.safetensors");
    let m = SafetensorsModel::open(&path).unwrap();
    let mut entries: Vec<(TensorSpec, Vec<u8>)> = Vec::new();
    for t in m.tensors() {
        let data = m.data(&t.name).unwrap().to_vec();
        match (t.name == name, &shape) {
            (false, _) => entries.push((TensorSpec::new(t.name.clone(), t.dtype, t.shape.clone()), data)),
            (true, None) => {}
            (true, Some(s)) => {
                let n = s.iter().product::<u64>() as usize * 2;
                entries.push((TensorSpec::new(t.name.clone(), t.dtype, s.clone()), vec![0u8; n]));
            }
        }
    }
    drop(m);
    let refs: Vec<(TensorSpec, &[u8])> = entries.iter().map(|(s, d)| (s.clone(), d.as_slice())).collect();
    SafetensorsWriter::write_file(&path, BTreeMap::new(), &refs).unwrap();
}

#[test]
fn malformed_gemma3_folders_fail_naming_the_field() {
    expect_failure(
        "g3-layer-types",
        |hf| edit_config(hf, |c| c["layer_types"][5] = json!("sliding_attention")),
        "field \"layer_types\": layer 5 is \"sliding_attention\", but llama.cpp's gemma3 makes it \"full_attention\"",
    );
    expect_failure(
        "g3-softcap",
        |hf| edit_config(hf, |c| c["attn_logit_softcapping"] = json!(50.0)),
        "field \"attn_logit_softcapping\": must be null",
    );
    expect_failure(
        "g3-act",
        |hf| edit_config(hf, |c| c["hidden_activation"] = json!("silu")),
        "field \"hidden_activation\": expected \"gelu_pytorch_tanh\"",
    );
    expect_failure(
        "g3-scalar",
        |hf| edit_config(hf, |c| c["query_pre_attn_scalar"] = json!(32)),
        "field \"query_pre_attn_scalar\"",
    );
    expect_failure(
        "g3-window",
        |hf| edit_config(hf, |c| _ = c.as_object_mut().unwrap().remove("sliding_window")),
        "missing field \"sliding_window\"",
    );
    expect_failure(
        "g3-headdim",
        |hf| edit_config(hf, |c| c["head_dim"] = json!(32)),
        "\"model.layers.0.self_attn.q_proj.weight\" has shape [96, 64], config.json implies [64, 64]",
    );
    expect_failure(
        "g3-knorm-missing",
        |hf| edit_tensor(hf, "model.layers.2.self_attn.k_norm.weight", None),
        "missing tensor(s) model.layers.2.self_attn.k_norm.weight",
    );
    expect_failure(
        "g3-qnorm-shape",
        |hf| edit_tensor(hf, "model.layers.1.self_attn.q_norm.weight", Some(vec![HIDDEN])),
        "\"model.layers.1.self_attn.q_norm.weight\" has shape [64], config.json implies [48]",
    );
}

/// A `gemma3` GGUF whose key and value head widths differ has no `gemma3_text` config: export
/// refuses it by key name, before writing anything.
#[test]
fn export_refuses_unequal_key_and_value_widths() {
    let sc = crunch_testkit::Scratch::new("gemma3-kv");
    let hf = sc.join("tiny");
    tiny_gemma(&hf, Dtype::BF16, None);
    let g_path = sc.join("g.gguf");
    run(&["convert", s(&hf), s(&g_path), "--type", "f32", "-q"]);
    let g = GgufFile::open(&g_path).unwrap();
    let mut md = g.metadata().clone();
    md.set("gemma3.attention.value_length", Value::U32(32));
    let bad = sc.join("bad.gguf");
    let specs: Vec<GgufSpec> =
        g.tensors().iter().map(|t| GgufSpec { name: t.name.clone(), ty: t.ty, dims: t.dims.clone() }).collect();
    let mut w = GgufWriter::create(&bad, md, &specs).unwrap();
    for t in g.tensors() {
        w.write_tensor(&t.name, g.tensor_data(t)).unwrap();
    }
    w.finish().unwrap();
    let out = sc.join("hf-out");
    let o = crunch(&["export", s(&bad), s(&out)]);
    let err = stderr(&o);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("gemma3.attention.key_length (48) and gemma3.attention.value_length (32) differ"), "{err}");
    assert!(!out.exists() || listing(&out).is_empty(), "{:?}", listing(&out));
}

/// The real Gemma 3 270M (Q4_K_M mix): export --dtype f32 -> convert --type f32 gives every tensor
/// as crunch's dequantization of the original (which equals gguf-py's, see the quant tests) bit for
/// bit, every `gemma3.*` and `tokenizer.*` key with its type, and the same perplexity; the exported
/// tokenizer.json, in PyPI `tokenizers`, tokenizes like llama.cpp's GGUF vocabulary.
#[test]
fn gemma3_270m_round_trip() {
    let original = crunch_testkit::gemma3_gguf();
    let sc = crunch_testkit::Scratch::new("gemma3-real");
    let hf = sc.join("hf");
    let rt = sc.join("rt.gguf");
    run(&["export", s(&original), s(&hf), "--dtype", "f32", "-q"]);
    run(&["convert", s(&hf), s(&rt), "--type", "f32", "-q"]);
    let (a, b) = (GgufFile::open(&original).unwrap(), GgufFile::open(&rt).unwrap());
    assert_eq!(a.tensors().len(), 236);
    assert_eq!(b.tensors().len(), 236);
    let mut buf = Vec::new();
    for t in a.tensors() {
        let u = b.tensor(&t.name).unwrap_or_else(|| panic!("{} missing", t.name));
        assert_eq!((u.ty, &u.dims), (GgmlType::F32, &t.dims), "{}", t.name);
        buf.clear();
        crunch::quantize::convert_tensor(
            &t.name,
            a.tensor_data(t),
            t.ty,
            GgmlType::F32,
            t.row_len() as usize,
            None,
            &mut buf,
        )
        .unwrap();
        assert!(buf == b.tensor_data(u), "{}: not the dequantized original", t.name);
    }
    let mut compared = 0;
    for (k, v) in a.metadata().iter().filter(|(k, _)| k.starts_with("gemma3.") || k.starts_with("tokenizer.")) {
        let w = b.metadata().get(k).unwrap_or_else(|| panic!("{k} missing in the round trip"));
        assert!(v == w && v.value_type() == w.value_type(), "{k}");
        compared += 1;
    }
    assert_eq!(compared, 24);
    let extra: Vec<&str> = b
        .metadata()
        .iter()
        .map(|(k, _)| k)
        .filter(|k| (k.starts_with("gemma3.") || k.starts_with("tokenizer.")) && a.metadata().get(k).is_none())
        .collect();
    assert!(extra.is_empty(), "keys only the round trip has: {extra:?}");

    // The same perplexity (the original's weights dequantized: --exact).
    let text = crunch_testkit::wikitext_dev();
    let ppl = |m: &Path| {
        let args = ["eval", "perplexity", s(m), "--text", s(&text), "--ctx", "128", "--chunks", "2", "--exact"];
        common::ok_json(&[&args[..], &["--json"]].concat())["ppl"].as_f64().unwrap()
    };
    let (pa, pb) = (ppl(&original), ppl(&rt));
    assert_eq!(pa, pb);
    assert!((pa - 15.63).abs() < 1.0, "{pa}");

    // The exported tokenizer.json in PyPI `tokenizers` gives the GGUF tokenizer's ids.
    let full = std::fs::read_to_string(&text).unwrap();
    let cut = full.char_indices().nth(60_000).map_or(full.len(), |(i, _)| i);
    let slice = sc.join("slice.txt");
    std::fs::write(&slice, &full[..cut]).unwrap();
    let tok = crunch_model::tokenizer::Tokenizer::from_gguf(&a).unwrap();
    let ids = tok.encode(&full[..cut], false).unwrap();
    let ids_file = sc.join("ids.json");
    std::fs::write(&ids_file, serde_json::to_vec(&ids).unwrap()).unwrap();
    let out = std::process::Command::new(crunch_testkit::python())
        .arg(crunch_testkit::repo_root().join("scripts/check_export_python.py"))
        .args(["export", s(&hf), "--text", s(&slice), "--ids", s(&ids_file)])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(j["ids_equal"], true);
    assert_eq!(j["tokens"].as_u64().unwrap() as usize, ids.len());
}
