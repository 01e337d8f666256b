//! `crunch convert` / `crunch export` on small hand-made Hugging Face folders: a sharded BF16 Llama
//! (layout, Q/K permutation, dtype conversion, pre-tokenizer recognised from the tokenizer.json
//! rules, round trip), and every kind of bad input: each a clear error naming what is wrong, a
//! non-zero exit, no panic and no output file.

mod common;

use common::{crunch, listing};
use crunch_core::gguf::{GgufFile, GgufWriter, Metadata, TensorSpec as GgufSpec, Value};
use crunch_core::safetensors::{Dtype, SafetensorsWriter, ShardedWriter, TensorSpec};
use crunch_core::GgmlType;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

const HIDDEN: u64 = 64;
const HEADS: u64 = 4;
const KV_HEADS: u64 = 2;
const FF: u64 = 96;
const LAYERS: u64 = 2;
const VOCAB: u64 = 256;

/// GPT-2's byte -> character table (printable bytes map to themselves).
fn byte_chars() -> Vec<char> {
    let mut keep: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut out = vec!['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        if keep.contains(&b) {
            out[b as usize] = char::from_u32(b).unwrap();
        } else {
            out[b as usize] = char::from_u32(256 + extra).unwrap();
            extra += 1;
        }
    }
    keep.clear();
    out
}

/// A byte-level BPE tokenizer.json with the 256 byte tokens, no merges, GPT-2 pre-tokenizer.
fn tokenizer_json(pre: serde_json::Value) -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> =
        byte_chars().iter().enumerate().map(|(i, c)| (c.to_string(), json!(i))).collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": pre, "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []}
    })
}

fn gpt2_pre() -> serde_json::Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
}

fn config() -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": FF, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "vocab_size": VOCAB, "tie_word_embeddings": false,
        "_name_or_path": "tiny/tiny-llama-1M"
    })
}

/// The tensors of the tiny Llama, in Hugging Face names and shapes.
fn llama_tensors() -> Vec<(String, Vec<u64>)> {
    let hd = HIDDEN / HEADS;
    let mut v = vec![
        ("model.embed_tokens.weight".to_string(), vec![VOCAB, HIDDEN]),
        ("model.norm.weight".to_string(), vec![HIDDEN]),
        ("lm_head.weight".to_string(), vec![VOCAB, HIDDEN]),
    ];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}.");
        v.extend([
            (format!("{p}input_layernorm.weight"), vec![HIDDEN]),
            (format!("{p}self_attn.q_proj.weight"), vec![HEADS * hd, HIDDEN]),
            (format!("{p}self_attn.k_proj.weight"), vec![KV_HEADS * hd, HIDDEN]),
            (format!("{p}self_attn.v_proj.weight"), vec![KV_HEADS * hd, HIDDEN]),
            (format!("{p}self_attn.o_proj.weight"), vec![HIDDEN, HEADS * hd]),
            (format!("{p}post_attention_layernorm.weight"), vec![HIDDEN]),
            (format!("{p}mlp.gate_proj.weight"), vec![FF, HIDDEN]),
            (format!("{p}mlp.up_proj.weight"), vec![FF, HIDDEN]),
            (format!("{p}mlp.down_proj.weight"), vec![HIDDEN, FF]),
        ]);
    }
    v
}

fn bf16_bytes(vals: &[f32]) -> Vec<u8> {
    vals.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect()
}

/// Write a tiny Llama folder: BF16 tensors in several shards (with an index), config, tokenizer.
fn tiny_llama(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let tensors = llama_tensors();
    let specs: Vec<TensorSpec> =
        tensors.iter().map(|(n, s)| TensorSpec::new(n.clone(), Dtype::BF16, s.clone())).collect();
    let mut w = ShardedWriter::create(dir, BTreeMap::new(), &specs, 40_000).unwrap();
    for (i, (name, shape)) in tensors.iter().enumerate() {
        let n: u64 = shape.iter().product();
        let vals = crunch_testkit::realistic_weights(1, n as usize, 100 + i as u64);
        w.write_tensor(name, &bf16_bytes(&vals)).unwrap();
    }
    let out = w.finish().unwrap();
    assert!(out.shards.len() > 2, "want a sharded checkpoint");
    std::fs::write(dir.join("config.json"), config().to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json(gpt2_pre()).to_string()).unwrap();
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn sharded_bf16_llama_converts_and_round_trips() {
    let s = crunch_testkit::Scratch::new("conv-tiny");
    let hf = s.join("tiny");
    tiny_llama(&hf);
    // Dry run: the mapping, nothing written.
    let dry = s.join("dry.gguf");
    let o = crunch(&["convert", hf.to_str().unwrap(), dry.to_str().unwrap(), "--dry-run", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["type"], "BF16", "auto picks bf16 for a bf16 checkpoint");
    assert_eq!(j["tokenizer"]["pre"], "gpt-2");
    assert_eq!(j["tokenizer"]["pre_source"], "rules");
    let rows = j["tensors"].as_array().unwrap();
    assert_eq!(rows.len(), llama_tensors().len());
    let q = rows.iter().find(|r| r["hf_name"] == "model.layers.1.self_attn.q_proj.weight").unwrap();
    assert_eq!((q["gguf_name"].as_str(), q["type"].as_str()), (Some("blk.1.attn_q.weight"), Some("BF16")));
    assert!(!dry.exists());

    let out = s.join("tiny-f16.gguf");
    let o = crunch(&["convert", hf.to_str().unwrap(), out.to_str().unwrap(), "--type", "f16", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let g = GgufFile::open(&out).unwrap();
    let md = g.metadata();
    assert_eq!(md.get_str("general.name"), Some("Tiny Llama 1M"));
    // llama.cpp reads "1M" in the id as a context length (far from the 94.5K parameters).
    assert_eq!(md.get_str("general.size_label"), Some("95K"));
    assert_eq!(md.get_str("general.finetune"), Some("1m"));
    assert_eq!(md.get_u64("llama.attention.head_count_kv"), Some(KV_HEADS));
    assert_eq!(md.get_u64("llama.rope.dimension_count"), Some(HIDDEN / HEADS));
    assert_eq!(md.get_u64("general.file_type"), Some(1));
    assert_eq!(md.get_str("tokenizer.ggml.pre"), Some("gpt-2"));
    assert_eq!(g.tensor("blk.0.attn_norm.weight").unwrap().ty, GgmlType::F32);
    assert_eq!(g.tensor("output.weight").unwrap().ty, GgmlType::F16);

    // K of layer 0: GGUF row 2i+j of each head is checkpoint row j*half+i, values bf16 -> f16.
    let st = crunch_core::safetensors::SafetensorsModel::open(&hf).unwrap();
    let k = st.to_f32("model.layers.0.self_attn.k_proj.weight").unwrap();
    let t = g.tensor("blk.0.attn_k.weight").unwrap();
    let got: Vec<f32> =
        g.tensor_data(t).chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
    let (hd, cols) = ((HIDDEN / HEADS) as usize, HIDDEN as usize);
    let half_rows = hd / 2;
    for head in 0..KV_HEADS as usize {
        for i in 0..half_rows {
            for j in 0..2 {
                let dst = head * hd + 2 * i + j;
                let src = head * hd + j * half_rows + i;
                for c in 0..cols {
                    assert_eq!(got[dst * cols + c], half::f16::from_f32(k[src * cols + c]).to_f32());
                }
            }
        }
    }

    // Export back to bf16 and convert again: the same GGUF.
    let back_dir = s.join("back");
    let o = crunch(&["export", out.to_str().unwrap(), back_dir.to_str().unwrap(), "--dtype", "f32", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let again = s.join("again.gguf");
    let o = crunch(&[
        "convert",
        back_dir.to_str().unwrap(),
        again.to_str().unwrap(),
        "--type",
        "f16",
        "--name",
        "Tiny Llama 1M",
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = GgufFile::open(&again).unwrap();
    for t in g.tensors() {
        assert!(g.tensor_data(t) == a.tensor_data(a.tensor(&t.name).unwrap()), "{}", t.name);
    }
    for (k, v) in md.iter() {
        assert_eq!(a.metadata().get(k), Some(v), "{k}");
    }

    // A preset in one pass: Q8_0 everywhere the rules allow.
    let q8 = s.join("q8.gguf");
    let o = crunch(&["convert", hf.to_str().unwrap(), q8.to_str().unwrap(), "--type", "q8_0", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let q = GgufFile::open(&q8).unwrap();
    assert_eq!(q.tensor("blk.1.ffn_down.weight").unwrap().ty, GgmlType::Q8_0);
    assert_eq!(q.metadata().get_u64("general.file_type"), Some(7));
}

/// A broken copy of the tiny model: `break_it` damages the folder; the run must fail with a message
/// containing `expect`, and leave no output.
fn expect_failure(tag: &str, break_it: impl FnOnce(&Path), args: &[&str], expect: &str) {
    let s = crunch_testkit::Scratch::new(tag);
    let hf = s.join("model");
    tiny_llama(&hf);
    break_it(&hf);
    let out = s.join("out.gguf");
    let mut a = vec!["convert", hf.to_str().unwrap(), out.to_str().unwrap()];
    a.extend_from_slice(args);
    let o = crunch(&a);
    let err = stderr(&o);
    assert!(!o.status.success(), "{tag}: should fail");
    assert!(!err.contains("panicked"), "{tag}: {err}");
    assert!(err.contains(expect), "{tag}: expected {expect:?} in:\n{err}");
    assert!(!out.exists(), "{tag}: output left behind");
    assert_eq!(listing(s.path()), vec!["model"], "{tag}: stray files");
}

fn shard_of(hf: &Path, tensor: &str) -> std::path::PathBuf {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hf.join("model.safetensors.index.json")).unwrap()).unwrap();
    hf.join(index["weight_map"][tensor].as_str().unwrap())
}

fn edit_config(hf: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(hf.join("config.json")).unwrap()).unwrap();
    f(&mut c);
    std::fs::write(hf.join("config.json"), c.to_string()).unwrap();
}

/// Rewrite the shard holding `name` with `name`'s entry changed by `f` (None: dropped).
fn edit_tensor(hf: &Path, name: &str, f: impl Fn(&str, &[u64], &[u8]) -> Option<(String, Dtype, Vec<u64>, Vec<u8>)>) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hf.join("model.safetensors.index.json")).unwrap()).unwrap();
    let shard = index["weight_map"][name].as_str().unwrap().to_string();
    let path = hf.join(&shard);
    let m = crunch_core::safetensors::SafetensorsModel::open(&path).unwrap();
    let mut entries: Vec<(TensorSpec, Vec<u8>)> = Vec::new();
    let mut map = index["weight_map"].as_object().unwrap().clone();
    for t in m.tensors() {
        let data = m.data(&t.name).unwrap().to_vec();
        if t.name == name {
            map.remove(name);
            if let Some((n, dt, shape, bytes)) = f(&t.name, &t.shape, &data) {
                map.insert(n.clone(), json!(shard));
                entries.push((TensorSpec::new(n, dt, shape), bytes));
            }
        } else {
            entries.push((TensorSpec::new(t.name.clone(), t.dtype, t.shape.clone()), data));
        }
    }
    drop(m);
    let refs: Vec<(TensorSpec, &[u8])> = entries.iter().map(|(s, d)| (s.clone(), d.as_slice())).collect();
    SafetensorsWriter::write_file(&path, BTreeMap::new(), &refs).unwrap();
    let idx = json!({"metadata": index["metadata"], "weight_map": map});
    std::fs::write(hf.join("model.safetensors.index.json"), idx.to_string()).unwrap();
}

#[test]
fn bad_hugging_face_folders_fail_cleanly() {
    expect_failure(
        "conv-arch",
        |hf| edit_config(hf, |c| c["architectures"] = json!(["GPT2LMHeadModel"])),
        &[],
        "unsupported architecture \"GPT2LMHeadModel\"; crunch converts LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, BertModel",
    );
    expect_failure(
        "conv-noconfig",
        |hf| std::fs::remove_file(hf.join("config.json")).unwrap(),
        &[],
        "missing config.json",
    );
    expect_failure(
        "conv-notok",
        |hf| std::fs::remove_file(hf.join("tokenizer.json")).unwrap(),
        &[],
        "missing tokenizer.json",
    );
    expect_failure(
        "conv-noshard",
        |hf| std::fs::remove_file(shard_of(hf, "model.layers.1.mlp.up_proj.weight")).unwrap(),
        &[],
        "\" (holding tensor",
    );
    expect_failure(
        "conv-shape",
        |hf| edit_config(hf, |c| c["intermediate_size"] = json!(128)),
        &[],
        "model.layers.0.mlp.gate_proj.weight\" has shape [96, 64], config.json implies [128, 64]",
    );
    expect_failure(
        "conv-heads",
        |hf| edit_config(hf, |c| c["num_key_value_heads"] = json!(4)),
        &[],
        "self_attn.k_proj.weight\" has shape [32, 64], config.json implies [64, 64]",
    );
    expect_failure(
        "conv-dtype",
        |hf| {
            edit_tensor(hf, "model.layers.1.mlp.up_proj.weight", |n, s, d| {
                Some((n.to_string(), Dtype::I16, s.to_vec(), d.to_vec()))
            })
        },
        &[],
        "tensor \"model.layers.1.mlp.up_proj.weight\" has dtype I16; only F32, F16 and BF16",
    );
    expect_failure(
        "conv-unknown",
        |hf| {
            edit_tensor(hf, "model.norm.weight", |_, s, d| {
                Some(("model.layers.0.mlp.extra_proj.weight".into(), Dtype::BF16, s.to_vec(), d.to_vec()))
            })
        },
        &[],
        "tensor \"model.layers.0.mlp.extra_proj.weight\" has no GGUF name",
    );
    expect_failure(
        "conv-missing",
        |hf| edit_tensor(hf, "model.layers.1.mlp.down_proj.weight", |_, _, _| None),
        &[],
        "missing tensor(s) model.layers.1.mlp.down_proj.weight",
    );
    expect_failure(
        "conv-layers",
        |hf| edit_config(hf, |c| c["num_hidden_layers"] = json!(1)),
        &[],
        "layer 1 does not exist: config.json has 1 layers",
    );
    expect_failure(
        "conv-vocab",
        |hf| edit_config(hf, |c| c["vocab_size"] = json!(300)),
        &[],
        "model.embed_tokens.weight\" has shape [256, 64], config.json implies [300, 64]",
    );
    let odd_pre =
        json!({"type": "Split", "pattern": {"Regex": "[a-z]+|[^a-z]+"}, "behavior": "Isolated", "invert": false});
    expect_failure(
        "conv-pre",
        |hf| std::fs::write(hf.join("tokenizer.json"), tokenizer_json(odd_pre.clone()).to_string()).unwrap(),
        &[],
        "pass --pre NAME",
    );
    expect_failure("conv-type", |_| {}, &["--type", "q9_z"], "unknown quantization type");
    expect_failure(
        "conv-json",
        |hf| std::fs::write(hf.join("config.json"), "{not json").unwrap(),
        &[],
        "config.json: not valid JSON",
    );

    // --pre overrides an unrecognised pre-tokenizer.
    let s = crunch_testkit::Scratch::new("conv-pre-ok");
    let hf = s.join("m");
    tiny_llama(&hf);
    std::fs::write(hf.join("tokenizer.json"), tokenizer_json(odd_pre).to_string()).unwrap();
    let out = s.join("o.gguf");
    let o = crunch(&["convert", hf.to_str().unwrap(), out.to_str().unwrap(), "--pre", "gpt-2", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(GgufFile::open(&out).unwrap().metadata().get_str("tokenizer.ggml.pre"), Some("gpt-2"));
    // The output may not be an input.
    let shard = shard_of(&hf, "model.norm.weight");
    let o = crunch(&["convert", hf.to_str().unwrap(), shard.to_str().unwrap(), "--pre", "gpt-2"]);
    assert!(!o.status.success() && stderr(&o).contains("is one of the input files"), "{}", stderr(&o));
    // Not a folder.
    let o = crunch(&["convert", shard.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("is not a folder"), "{}", stderr(&o));
}

#[test]
fn bad_export_inputs_fail_cleanly() {
    let s = crunch_testkit::Scratch::new("export-bad");
    let write = |name: &str, arch: &str, with_vocab: bool| {
        let mut m = Metadata::default();
        m.set("general.architecture", Value::string(arch));
        m.set(&format!("{arch}.block_count"), Value::U32(1));
        if with_vocab {
            m.set("tokenizer.ggml.model", Value::string("gpt2"));
            m.set("tokenizer.ggml.pre", Value::string("gpt-2"));
            m.set("tokenizer.ggml.tokens", Value::strings(["a"]));
        }
        let p = s.join(name);
        let specs = vec![GgufSpec { name: "token_embd.weight".into(), ty: GgmlType::F32, dims: vec![8, 1] }];
        let mut w = GgufWriter::create(&p, m, &specs).unwrap();
        w.write_tensor("token_embd.weight", &[0u8; 32]).unwrap();
        w.finish().unwrap();
        p
    };
    let cases = [
        (
            write("gpt2.gguf", "gpt2", true),
            "architecture \"gpt2\" cannot be exported; crunch exports llama, qwen2, gemma3 and bert",
        ),
        (write("novocab.gguf", "llama", false), "tokenizer.ggml.model"),
    ];
    for (path, expect) in cases {
        let out = s.join("hf-out");
        let o = crunch(&["export", path.to_str().unwrap(), out.to_str().unwrap()]);
        let err = stderr(&o);
        assert!(!o.status.success() && err.contains(expect) && !err.contains("panicked"), "{err}");
        assert!(!out.exists() || listing(&out).is_empty(), "{:?}", listing(&out));
    }
    let o =
        crunch(&["export", s.join("gpt2.gguf").to_str().unwrap(), s.join("x").to_str().unwrap(), "--dtype", "q4_0"]);
    assert!(!o.status.success() && stderr(&o).contains("choose auto, f16, bf16 or f32"));
}
