//! Hyper-parameters between `config.json` and GGUF `{arch}.*` metadata, in both directions:
//! [`gguf_params`] writes the keys llama.cpp's converter writes, in its order; [`hf_config`] writes
//! a `config.json` from which [`gguf_params`] gives the same keys back.

use super::config::{keys, HfArch, HfConfig};
use super::error::HfError;
use crate::gguf::{Metadata, Value};
use serde_json::{json, Map, Value as Json};
use std::path::Path;

type Result<T> = std::result::Result<T, HfError>;

/// llama.cpp's pooling types (`{arch}.pooling_type`).
pub mod pooling {
    pub const MEAN: u32 = 1;
    pub const CLS: u32 = 2;
    pub const LAST: u32 = 3;
}

/// The pooling of a sentence-transformers folder: the first module in `modules.json` whose type
/// ends in `Pooling`, read from its `config.json`. `None` without `modules.json` or a pooling module.
///
/// # Errors
/// Unreadable files, or a pooling mode llama.cpp does not support (only mean, CLS and last token).
pub fn pooling_type(dir: &Path) -> Result<Option<u32>> {
    let modules = dir.join("modules.json");
    if !modules.is_file() {
        return Ok(None);
    }
    let list = read_json(&modules)?;
    let path = list.as_array().into_iter().flatten().find_map(|m| {
        let ty = m.get("type")?.as_str()?;
        ty.ends_with("Pooling").then(|| m.get("path").and_then(Json::as_str).unwrap_or("").to_string())
    });
    let Some(path) = path else { return Ok(None) };
    let file = dir.join(&path).join("config.json");
    if !file.is_file() {
        return Err(HfError::MissingFile {
            dir: dir.join(&path),
            file: "config.json".into(),
            why: "modules.json lists a pooling module; its config says how embeddings are pooled".into(),
        });
    }
    let cfg = read_json(&file)?;
    let flag = |k: &str| cfg.get(k).and_then(Json::as_bool).unwrap_or(false);
    let t = if flag("pooling_mode_mean_tokens") {
        pooling::MEAN
    } else if flag("pooling_mode_cls_token") {
        pooling::CLS
    } else if flag("pooling_mode_lasttoken") {
        pooling::LAST
    } else {
        match cfg.get("pooling_mode").and_then(Json::as_str) {
            Some("mean") => pooling::MEAN,
            Some("cls") => pooling::CLS,
            Some("lasttoken") => pooling::LAST,
            _ => {
                return Err(HfError::BadField {
                    file,
                    field: "pooling_mode_*".into(),
                    reason: "only mean, CLS and last-token pooling are supported (as in llama.cpp)".into(),
                })
            }
        }
    };
    Ok(Some(t))
}

/// Read a JSON file.
///
/// # Errors
/// I/O or invalid JSON, naming the file.
pub fn read_json(path: &Path) -> Result<Json> {
    let bytes = std::fs::read(path).map_err(|e| HfError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| HfError::Json { file: path.into(), source: e })
}

/// The `{arch}.*` keys (and `general.file_type`) llama.cpp's converter writes for `cfg`, in its
/// order. `pooling` comes from [`pooling_type`].
///
/// # Errors
/// Missing or malformed hyper-parameters, naming the field.
pub fn gguf_params(cfg: &HfConfig, pooling: Option<u32>, file_type: u32) -> Result<Vec<(String, Value)>> {
    let arch = cfg.arch.gguf_name();
    let mut out: Vec<(String, Value)> = Vec::new();
    let mut put = |k: &str, v: Value| out.push((format!("{arch}.{k}"), v));
    put("block_count", Value::U32(cfg.block_count()?));
    if let Some(n) = cfg.find_u32(keys::CONTEXT)? {
        put("context_length", Value::U32(n));
    }
    if let Some(n) = cfg.find_u32(keys::EMBD)? {
        put("embedding_length", Value::U32(n));
    }
    if let Some(n) = cfg.find_u32(keys::FF)? {
        put("feed_forward_length", Value::U32(n));
    }
    if let Some(n) = cfg.find_u32(keys::HEADS)? {
        put("attention.head_count", Value::U32(n));
    }
    if let Some(n) = cfg.find_u32(keys::HEADS_KV)? {
        put("attention.head_count_kv", Value::U32(n));
    }
    if cfg.get_bool("is_causal") == Some(false) {
        put("attention.causal", Value::Bool(false));
    }
    let rope = cfg.rope_parameters();
    let num = |k: &str| rope.get(k).and_then(Json::as_f64);
    if let Some(rope_type) = rope.get("rope_type").and_then(Json::as_str) {
        let factor = num("factor");
        match (rope_type, factor) {
            ("linear", Some(f)) => {
                put("rope.scaling.type", Value::string("linear"));
                put("rope.scaling.factor", Value::F32(f as f32));
            }
            ("yarn", Some(f)) => {
                put("rope.scaling.type", Value::string("yarn"));
                put("rope.scaling.factor", Value::F32(f as f32));
                let orig = rope.get("original_max_position_embeddings").and_then(Json::as_u64).ok_or_else(|| {
                    HfError::MissingField {
                        file: cfg.path.clone(),
                        field: "rope_scaling.original_max_position_embeddings".into(),
                        why: "YaRN scaling needs the original context length".into(),
                    }
                })?;
                put("rope.scaling.original_context_length", Value::U32(orig as u32));
                if let Some(x) = num("extrapolation_factor") {
                    put("rope.scaling.yarn_ext_factor", Value::F32(x as f32));
                }
                if let Some(x) = num("attention_factor").or_else(|| num("attn_factor")) {
                    put("rope.scaling.yarn_attn_factor", Value::F32(x as f32));
                }
                if let Some(x) = num("beta_fast") {
                    put("rope.scaling.yarn_beta_fast", Value::F32(x as f32));
                }
                if let Some(x) = num("beta_slow") {
                    put("rope.scaling.yarn_beta_slow", Value::F32(x as f32));
                }
            }
            ("su" | "longrope", _) => put("rope.scaling.type", Value::string("longrope")),
            _ => {
                if !matches!(rope_type.to_lowercase().as_str(), "dynamic" | "llama3") {
                    tracing::warn!(
                        "{}: unknown RoPE type {rope_type:?}, ignored (as llama.cpp does)",
                        cfg.path.display()
                    );
                }
            }
        }
    }
    if let Some(t) = num("rope_theta") {
        put("rope.freq_base", Value::F32(t as f32));
    }
    if let Some(e) = cfg.find_f64(keys::RMS_EPS)? {
        put("attention.layer_norm_rms_epsilon", Value::F32(e as f32));
    }
    if let Some(e) = cfg.find_f64(keys::LN_EPS)? {
        put("attention.layer_norm_epsilon", Value::F32(e as f32));
    }
    if let Some(d) = cfg.find_u32(&["head_dim"])? {
        put("attention.key_length", Value::U32(d));
        put("attention.value_length", Value::U32(d));
    }
    out.push(("general.file_type".into(), Value::U32(file_type)));
    let mut put = |k: &str, v: Value| out.push((format!("{arch}.{k}"), v));
    match cfg.arch {
        HfArch::Llama => {
            let v = cfg.vocab_size()?.ok_or_else(|| HfError::MissingField {
                file: cfg.path.clone(),
                field: "vocab_size".into(),
                why: "Llama models record it in {arch}.vocab_size".into(),
            })?;
            put("vocab_size", Value::U32(v));
            put("rope.dimension_count", Value::U32(cfg.head_dim()?));
        }
        HfArch::Bert => {
            put("attention.causal", Value::Bool(false));
            if let Some(p) = pooling {
                put("pooling_type", Value::U32(p));
            }
        }
        HfArch::Qwen2 => {
            if let Some(p) = pooling {
                put("pooling_type", Value::U32(p));
            }
        }
    }
    Ok(out)
}

/// A float as JSON with the shortest decimal that reads back as the same f32.
pub fn json_f32(x: f32) -> Json {
    let short: f64 = format!("{x}").parse().unwrap_or(x as f64);
    let v = if short as f32 == x { short } else { x as f64 };
    serde_json::Number::from_f64(v).map(Json::Number).unwrap_or(Json::Null)
}

fn gguf_err(msg: impl Into<String>) -> HfError {
    HfError::Gguf(msg.into())
}

/// `config.json` for a GGUF model being exported. `dtype` is the `torch_dtype` of the written
/// tensors; `tensor_names` tell whether the output projection is tied and whether attention has biases.
///
/// # Errors
/// A missing or malformed `{arch}.*` key the config needs, naming it.
pub fn hf_config(arch: HfArch, md: &Metadata, tensor_names: &[&str], dtype: &str) -> Result<Map<String, Json>> {
    let a = arch.gguf_name();
    let key = |k: &str| format!("{a}.{k}");
    let req = |k: &str| -> Result<u64> {
        md.get_u64(&key(k)).ok_or_else(|| gguf_err(format!("missing integer key {}", key(k))))
    };
    let float = |k: &str| -> Option<f32> { md.get_f64(&key(k)).map(|x| x as f32) };
    let has = |n: &str| tensor_names.contains(&n);
    let n_vocab = match md.get_u64(&key("vocab_size")) {
        Some(v) => v,
        None => md
            .get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .map(|t| t.len() as u64)
            .ok_or_else(|| gguf_err(format!("neither {} nor tokenizer.ggml.tokens", key("vocab_size"))))?,
    };
    let mut c = Map::new();
    c.insert("architectures".into(), json!([arch.hf_name()]));
    c.insert("model_type".into(), json!(arch.hf_model_type()));
    c.insert("hidden_size".into(), json!(req("embedding_length")?));
    c.insert("intermediate_size".into(), json!(req("feed_forward_length")?));
    c.insert("num_hidden_layers".into(), json!(req("block_count")?));
    c.insert("num_attention_heads".into(), json!(req("attention.head_count")?));
    if let Some(n) = md.get_u64(&key("context_length")) {
        c.insert("max_position_embeddings".into(), json!(n));
    }
    c.insert("vocab_size".into(), json!(n_vocab));
    c.insert("torch_dtype".into(), json!(dtype));
    match arch {
        HfArch::Llama | HfArch::Qwen2 => {
            if let Some(n) = md.get_u64(&key("attention.head_count_kv")) {
                c.insert("num_key_value_heads".into(), json!(n));
            }
            if let Some(e) = float("attention.layer_norm_rms_epsilon") {
                c.insert("rms_norm_eps".into(), json_f32(e));
            }
            if let Some(t) = float("rope.freq_base") {
                c.insert("rope_theta".into(), json_f32(t));
            }
            c.insert("hidden_act".into(), json!("silu"));
            c.insert("tie_word_embeddings".into(), json!(!has("output.weight")));
            let heads = req("attention.head_count")?;
            let hidden = req("embedding_length")?;
            if let Some(kl) = md.get_u64(&key("attention.key_length")) {
                c.insert("head_dim".into(), json!(kl));
            } else if let (HfArch::Llama, Some(rd)) = (arch, md.get_u64(&key("rope.dimension_count"))) {
                if heads == 0 || rd != hidden / heads {
                    c.insert("head_dim".into(), json!(rd));
                }
            }
            if arch == HfArch::Llama {
                c.insert("attention_bias".into(), json!(has("blk.0.attn_q.bias")));
                c.insert("mlp_bias".into(), json!(false));
            } else {
                c.insert("use_sliding_window".into(), json!(false));
            }
            if let Some(t) = md.get_str(&key("rope.scaling.type")) {
                let mut r = Map::new();
                r.insert("rope_type".into(), json!(t));
                if let Some(f) = float("rope.scaling.factor") {
                    r.insert("factor".into(), json_f32(f));
                }
                if let Some(n) = md.get_u64(&key("rope.scaling.original_context_length")) {
                    r.insert("original_max_position_embeddings".into(), json!(n));
                }
                for (g, h) in [
                    ("yarn_ext_factor", "extrapolation_factor"),
                    ("yarn_attn_factor", "attention_factor"),
                    ("yarn_beta_fast", "beta_fast"),
                    ("yarn_beta_slow", "beta_slow"),
                ] {
                    if let Some(x) = float(&format!("rope.scaling.{g}")) {
                        r.insert(h.into(), json_f32(x));
                    }
                }
                c.insert("rope_scaling".into(), Json::Object(r));
            }
        }
        HfArch::Bert => {
            if let Some(e) = float("attention.layer_norm_epsilon") {
                c.insert("layer_norm_eps".into(), json_f32(e));
            }
            let types = md.get_u64("tokenizer.ggml.token_type_count").unwrap_or(2);
            c.insert("type_vocab_size".into(), json!(types));
            c.insert("hidden_act".into(), json!("gelu"));
            c.insert("position_embedding_type".into(), json!("absolute"));
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_f32_json() {
        assert_eq!(json_f32(1e-5).to_string(), "0.00001");
        assert_eq!(json_f32(100000.0).to_string(), "100000.0");
        for x in [1e-12f32, 1e-5, 0.1, 3.4e38, f32::MIN_POSITIVE, 9.1e-6] {
            assert_eq!(json_f32(x).as_f64().unwrap() as f32, x);
        }
    }

    #[test]
    fn llama_params_in_llama_cpp_order() {
        let cfg = HfConfig::from_json(
            br#"{"architectures":["LlamaForCausalLM"],"num_hidden_layers":2,"hidden_size":64,"intermediate_size":128,
            "num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":256,"rms_norm_eps":1e-5,
            "rope_theta":10000,"vocab_size":100}"#,
            Path::new("config.json"),
        )
        .unwrap();
        let p = gguf_params(&cfg, None, 1).unwrap();
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "llama.block_count",
                "llama.context_length",
                "llama.embedding_length",
                "llama.feed_forward_length",
                "llama.attention.head_count",
                "llama.attention.head_count_kv",
                "llama.rope.freq_base",
                "llama.attention.layer_norm_rms_epsilon",
                "general.file_type",
                "llama.vocab_size",
                "llama.rope.dimension_count"
            ]
        );
        assert_eq!(p[10].1, Value::U32(16));
    }
}
