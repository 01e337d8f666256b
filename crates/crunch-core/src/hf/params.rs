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
                if !matches!(rope_type.to_lowercase().as_str(), "dynamic" | "llama3" | "default") {
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
        HfArch::Gemma3 => gemma3_params(cfg, &mut out)?,
    }
    Ok(out)
}

/// llama.cpp's defaults for a `gemma3_text` config that leaves a value out (its
/// `Gemma3Model.set_gguf_parameters`).
pub mod gemma3_defaults {
    pub const CONTEXT: u32 = 131_072;
    pub const HEADS: u32 = 8;
    pub const HEADS_KV: u32 = 4;
    pub const RMS_EPS: f64 = 1e-6;
    pub const ROPE_THETA: f64 = 1_000_000.0;
    /// The RoPE base of the sliding-window layers, which llama.cpp does not store but hard-codes.
    pub const ROPE_LOCAL_BASE: f64 = 10_000.0;
    /// llama.cpp makes every sixth layer global (`set_swa_pattern(6)`), whatever the config says.
    pub const SWA_PATTERN: u32 = 6;
}

/// Whether layer `il` of a Gemma 3 model with a sliding window is windowed in llama.cpp (and in
/// transformers' `layer_types` for the default pattern).
pub fn gemma3_is_sliding(il: u32) -> bool {
    il % gemma3_defaults::SWA_PATTERN != gemma3_defaults::SWA_PATTERN - 1
}

/// Replace `key` in place if present, else append (gguf-py's writer overwrites a duplicated key
/// where it first was).
fn set_key(out: &mut Vec<(String, Value)>, key: String, v: Value) {
    match out.iter_mut().find(|(k, _)| *k == key) {
        Some(e) => e.1 = v,
        None => out.push((key, v)),
    }
}

/// The `gemma3.*` keys llama.cpp's `Gemma3Model` writes on top of the generic ones, after checking
/// that the config describes the model llama.cpp's gemma3 graph computes (each refusal names the
/// field).
fn gemma3_params(cfg: &HfConfig, out: &mut Vec<(String, Value)>) -> Result<()> {
    use gemma3_defaults as d;
    let bad = |field: &str, reason: String| HfError::BadField { file: cfg.path.clone(), field: field.into(), reason };
    let present = |k: &str| cfg.raw.get(k).filter(|v| !v.is_null());
    if let Some(v) = present("attn_logit_softcapping") {
        return Err(bad(
            "attn_logit_softcapping",
            format!("must be null for Gemma 3 (found {v}); llama.cpp's gemma3 has no attention soft-capping"),
        ));
    }
    for key in ["hidden_activation", "hidden_act"] {
        if let Some(v) = present(key) {
            if v.as_str() != Some("gelu_pytorch_tanh") {
                return Err(bad(
                    key,
                    format!("expected \"gelu_pytorch_tanh\" (llama.cpp's gemma3 uses GELU with the tanh approximation), found {v}"),
                ));
            }
        }
    }
    if let Some(v) = present("use_bidirectional_attention") {
        if v.as_bool() != Some(false) {
            return Err(bad("use_bidirectional_attention", format!("llama.cpp's gemma3 is causal; found {v}")));
        }
    }
    let n_layer = cfg.block_count()?;
    let head_dim = cfg.head_dim()?;
    let n_head = cfg.find_u32(&["num_attention_heads"])?.unwrap_or(d::HEADS);
    if let Some(v) = present("query_pre_attn_scalar") {
        // llama.cpp scales queries by 1/sqrt(head_dim), by 1/sqrt(hidden/heads) for the 27B model (62 layers).
        let want = if n_layer == 62 { cfg.hidden_size()? as f64 / n_head.max(1) as f64 } else { head_dim as f64 };
        if v.as_f64() != Some(want) {
            return Err(bad(
                "query_pre_attn_scalar",
                format!("llama.cpp's gemma3 assumes {want} for this model (head_dim, or hidden_size / heads at 62 layers), found {v}"),
            ));
        }
    }
    let rope = cfg.rope_parameters();
    let local = match cfg.raw.get("rope_parameters").or_else(|| cfg.raw.get("rope_scaling")) {
        Some(Json::Object(p)) => p.get("sliding_attention").and_then(|s| s.get("rope_theta")).cloned(),
        _ => None,
    };
    for (field, v) in [
        ("rope_local_base_freq", present("rope_local_base_freq").cloned()),
        ("rope_parameters.sliding_attention.rope_theta", local),
    ] {
        if let Some(v) = v {
            if v.as_f64() != Some(d::ROPE_LOCAL_BASE) {
                return Err(bad(
                    field,
                    format!(
                        "llama.cpp's gemma3 hard-codes {} for the sliding-window layers, found {v}",
                        d::ROPE_LOCAL_BASE
                    ),
                ));
            }
        }
    }
    // `sliding_window_pattern` (older transformers) or `_sliding_window_pattern` (newer): llama.cpp
    // reads the first only, and computes every sixth layer globally whatever it says.
    let mut pattern = None;
    for key in ["sliding_window_pattern", "_sliding_window_pattern"] {
        if let Some(v) = present(key) {
            match v.as_u64() {
                Some(1) | Some(6) => pattern = pattern.or(v.as_u64()),
                _ => {
                    return Err(bad(
                        key,
                        format!("llama.cpp's gemma3 supports 6 (every sixth layer global) or 1 (no window), found {v}"),
                    ))
                }
            }
        }
    }
    let windowed = present("sliding_window_pattern").and_then(Json::as_u64) != Some(1);
    if let Some(v) = present("layer_types") {
        let list = v.as_array().filter(|a| a.len() == n_layer as usize).ok_or_else(|| {
            bad("layer_types", format!("expected a list of {n_layer} entries (one per layer), found {v}"))
        })?;
        for (il, t) in list.iter().enumerate() {
            let want = if windowed && gemma3_is_sliding(il as u32) { "sliding_attention" } else { "full_attention" };
            if t.as_str() != Some(want) {
                return Err(bad(
                    "layer_types",
                    format!(
                        "layer {il} is {t}, but llama.cpp's gemma3 makes it {want:?} (every sixth layer global{})",
                        if windowed { "" } else { "; no window with sliding_window_pattern 1" }
                    ),
                ));
            }
        }
    }
    let a = cfg.arch.gguf_name();
    let key = |k: &str| format!("{a}.{k}");
    let ctx = cfg.find_u32(&["max_position_embeddings"])?.unwrap_or(d::CONTEXT);
    set_key(out, key("context_length"), Value::U32(ctx));
    set_key(out, key("attention.head_count"), Value::U32(n_head));
    let eps = cfg.find_f64(&["rms_norm_eps"])?.unwrap_or(d::RMS_EPS);
    set_key(out, key("attention.layer_norm_rms_epsilon"), Value::F32(eps as f32));
    set_key(out, key("attention.key_length"), Value::U32(head_dim));
    set_key(out, key("attention.value_length"), Value::U32(head_dim));
    let theta = match rope.get("rope_theta") {
        None | Some(Json::Null) => d::ROPE_THETA,
        Some(v) => v.as_f64().ok_or_else(|| bad("rope_theta", format!("expected a number, found {v}")))?,
    };
    set_key(out, key("rope.freq_base"), Value::F32(theta as f32));
    if let Some(v) = present("final_logit_softcapping") {
        let x = v
            .as_f64()
            .ok_or_else(|| bad("final_logit_softcapping", format!("expected a number or null, found {v}")))?;
        if x != 0.0 {
            set_key(out, key("final_logit_softcapping"), Value::F32(x as f32));
        }
    }
    if windowed {
        let w = cfg.require_u32(&["sliding_window"], "the attention window of Gemma 3's local layers")?;
        set_key(out, key("attention.sliding_window"), Value::U32(w));
    }
    let kv = cfg.find_u32(&["num_key_value_heads"])?.unwrap_or(d::HEADS_KV);
    set_key(out, key("attention.head_count_kv"), Value::U32(kv));
    Ok(())
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
            if let Some(r) = rope_scaling_json(arch, md) {
                c.insert("rope_scaling".into(), r);
            }
        }
        HfArch::Gemma3 => gemma3_config(md, &mut c, &has)?,
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

/// `rope_scaling` of `config.json` from `{arch}.rope.scaling.*`.
fn rope_scaling_json(arch: HfArch, md: &Metadata) -> Option<Json> {
    let key = |k: &str| format!("{}.rope.scaling.{k}", arch.gguf_name());
    let t = md.get_str(&key("type"))?;
    let float = |k: &str| md.get_f64(&key(k)).map(|x| x as f32);
    let mut r = Map::new();
    r.insert("rope_type".into(), json!(t));
    if let Some(f) = float("factor") {
        r.insert("factor".into(), json_f32(f));
    }
    if let Some(n) = md.get_u64(&key("original_context_length")) {
        r.insert("original_max_position_embeddings".into(), json!(n));
    }
    for (g, h) in [
        ("yarn_ext_factor", "extrapolation_factor"),
        ("yarn_attn_factor", "attention_factor"),
        ("yarn_beta_fast", "beta_fast"),
        ("yarn_beta_slow", "beta_slow"),
    ] {
        if let Some(x) = float(g) {
            r.insert(h.into(), json_f32(x));
        }
    }
    Some(Json::Object(r))
}

/// The `gemma3_text` keys of `config.json` (transformers' `Gemma3TextConfig`), for the model
/// llama.cpp computes from `gemma3.*`: its hard-coded values (local RoPE base 10000, every sixth
/// layer global, the query scale) written out, so that transformers computes the same model and
/// [`gguf_params`] gives the same keys back.
///
/// # Errors
/// Missing required keys, or keys transformers cannot express (key and value widths differ).
fn gemma3_config(md: &Metadata, c: &mut Map<String, Json>, has: &dyn Fn(&str) -> bool) -> Result<()> {
    use gemma3_defaults as d;
    let key = |k: &str| format!("gemma3.{k}");
    let req = |k: &str| -> Result<u64> {
        md.get_u64(&key(k)).ok_or_else(|| gguf_err(format!("missing integer key {}", key(k))))
    };
    let n_layer = req("block_count")?;
    let heads = req("attention.head_count")?;
    let hidden = req("embedding_length")?;
    if heads == 0 {
        return Err(gguf_err(format!("{} is 0", key("attention.head_count"))));
    }
    // llama.cpp's defaults when a key is absent: K/V heads = heads, head width = hidden / heads.
    let kv = md.get_u64(&key("attention.head_count_kv")).unwrap_or(heads);
    let kl = md.get_u64(&key("attention.key_length")).unwrap_or(hidden / heads);
    let vl = md.get_u64(&key("attention.value_length")).unwrap_or(kl);
    if kl != vl {
        return Err(gguf_err(format!(
            "{} ({kl}) and {} ({vl}) differ; a Gemma 3 config has one head_dim",
            key("attention.key_length"),
            key("attention.value_length")
        )));
    }
    c.insert("num_key_value_heads".into(), json!(kv));
    c.insert("head_dim".into(), json!(kl));
    if let Some(e) = md.get_f64(&key("attention.layer_norm_rms_epsilon")) {
        c.insert("rms_norm_eps".into(), json_f32(e as f32));
    }
    // llama.cpp's RoPE base when the key is absent is 10000, not transformers' default 1e6.
    let theta = md.get_f64(&key("rope.freq_base")).map_or(10_000.0, |x| x as f32);
    c.insert("rope_theta".into(), json_f32(theta));
    c.insert("rope_local_base_freq".into(), json_f32(d::ROPE_LOCAL_BASE as f32));
    c.insert("rope_scaling".into(), rope_scaling_json(HfArch::Gemma3, md).unwrap_or(Json::Null));
    // llama.cpp: queries scaled by 1/sqrt(head_dim), by 1/sqrt(hidden/heads) for the 27B model.
    let scalar = if n_layer == 62 { json!(hidden / heads) } else { json!(kl) };
    c.insert("query_pre_attn_scalar".into(), scalar);
    let window = md.get_u64(&key("attention.sliding_window")).filter(|&w| w > 0);
    let types: Vec<&str> = (0..n_layer as u32)
        .map(|il| if window.is_some() && gemma3_is_sliding(il) { "sliding_attention" } else { "full_attention" })
        .collect();
    match window {
        Some(w) => {
            c.insert("sliding_window".into(), json!(w));
            c.insert("sliding_window_pattern".into(), json!(d::SWA_PATTERN));
        }
        // No window in llama.cpp: every layer global, and no `sliding_window` written back.
        None => {
            c.insert("sliding_window_pattern".into(), json!(1));
        }
    }
    c.insert("layer_types".into(), json!(types));
    c.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
    c.insert("tie_word_embeddings".into(), json!(!has("output.weight")));
    c.insert("attention_bias".into(), json!(false));
    c.insert("attention_dropout".into(), json!(0.0));
    c.insert("attn_logit_softcapping".into(), Json::Null);
    let cap = md.get_f64(&key("final_logit_softcapping")).map_or(Json::Null, |x| json_f32(x as f32));
    c.insert("final_logit_softcapping".into(), cap);
    c.insert("use_bidirectional_attention".into(), json!(false));
    c.insert("use_cache".into(), json!(true));
    c.insert("initializer_range".into(), json!(0.02));
    Ok(())
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

    /// `config.json` of google/gemma-3-270m as published (transformers 4.55).
    const GEMMA3_270M: &str = r#"{
      "_sliding_window_pattern": 6, "architectures": ["Gemma3ForCausalLM"], "attention_bias": false,
      "attention_dropout": 0.0, "attn_logit_softcapping": null, "bos_token_id": 2, "eos_token_id": 1,
      "final_logit_softcapping": null, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
      "hidden_size": 640, "initializer_range": 0.02, "intermediate_size": 2048,
      "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention",
        "sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "sliding_attention",
        "sliding_attention", "sliding_attention", "full_attention", "sliding_attention", "sliding_attention",
        "sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
      "max_position_embeddings": 32768, "model_type": "gemma3_text", "num_attention_heads": 4,
      "num_hidden_layers": 18, "num_key_value_heads": 1, "pad_token_id": 0, "query_pre_attn_scalar": 256,
      "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0, "rope_scaling": null, "rope_theta": 1000000.0,
      "sliding_window": 512, "torch_dtype": "bfloat16", "use_bidirectional_attention": false,
      "use_cache": true, "vocab_size": 262144
    }"#;

    /// A change to a config.
    type Edit = Box<dyn Fn(&mut Map<String, Json>)>;

    fn gemma(edit: impl FnOnce(&mut Map<String, Json>)) -> HfConfig {
        let mut j: Map<String, Json> = serde_json::from_str(GEMMA3_270M).unwrap();
        edit(&mut j);
        HfConfig::from_json(&serde_json::to_vec(&j).unwrap(), Path::new("config.json")).unwrap()
    }

    fn as_md(p: &[(String, Value)]) -> Metadata {
        let mut md = Metadata::default();
        md.set("general.architecture", Value::string("gemma3"));
        md.set("tokenizer.ggml.tokens", Value::strings((0..300).map(|i| i.to_string())));
        for (k, v) in p {
            md.set(k, v.clone());
        }
        md
    }

    /// The keys llama.cpp wrote into the real gemma3-270m GGUF (values as gguf-py reads them there),
    /// from the published config; written in the generic order, Gemma's additions after the file type.
    #[test]
    fn gemma3_params_from_the_real_config() {
        let cfg = gemma(|_| {});
        assert_eq!(cfg.arch, HfArch::Gemma3);
        let p = gguf_params(&cfg, None, 0).unwrap();
        let want = [
            ("gemma3.block_count", Value::U32(18)),
            ("gemma3.context_length", Value::U32(32768)),
            ("gemma3.embedding_length", Value::U32(640)),
            ("gemma3.feed_forward_length", Value::U32(2048)),
            ("gemma3.attention.head_count", Value::U32(4)),
            ("gemma3.attention.head_count_kv", Value::U32(1)),
            ("gemma3.rope.freq_base", Value::F32(1e6)),
            ("gemma3.attention.layer_norm_rms_epsilon", Value::F32(1e-6)),
            ("gemma3.attention.key_length", Value::U32(256)),
            ("gemma3.attention.value_length", Value::U32(256)),
            ("general.file_type", Value::U32(0)),
            ("gemma3.attention.sliding_window", Value::U32(512)),
        ];
        let got: Vec<(&str, &Value)> = p.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let want: Vec<(&str, &Value)> = want.iter().map(|(k, v)| (*k, v)).collect();
        assert_eq!(got, want);
        assert_eq!(Value::F32(1e-6), Value::F32(9.999999974752427e-07_f64 as f32), "the GGUF's epsilon");
    }

    /// llama.cpp's defaults for what a config leaves out; no window with sliding_window_pattern 1;
    /// transformers v5's `rope_parameters` with per-layer-type tables; soft-capping and linear scaling.
    #[test]
    fn gemma3_defaults_and_variants() {
        let keys = [
            "head_dim",
            "max_position_embeddings",
            "num_attention_heads",
            "num_key_value_heads",
            "rms_norm_eps",
            "rope_theta",
            "layer_types",
            "query_pre_attn_scalar",
        ];
        let cfg = gemma(|j| {
            for k in keys {
                j.remove(k);
            }
        });
        let md = as_md(&gguf_params(&cfg, None, 0).unwrap());
        assert_eq!(md.get_u64("gemma3.context_length"), Some(131_072));
        assert_eq!(md.get_u64("gemma3.attention.head_count"), Some(8));
        assert_eq!(md.get_u64("gemma3.attention.head_count_kv"), Some(4));
        assert_eq!(md.get_u64("gemma3.attention.key_length"), Some(256));
        assert_eq!(md.get("gemma3.rope.freq_base"), Some(&Value::F32(1e6)));
        assert_eq!(md.get("gemma3.attention.layer_norm_rms_epsilon"), Some(&Value::F32(1e-6)));

        let cfg = gemma(|j| {
            j.insert("sliding_window_pattern".into(), json!(1));
            j.insert("layer_types".into(), json!(vec!["full_attention"; 18]));
            j.insert("final_logit_softcapping".into(), json!(30.0));
            j.remove("rope_theta");
            j.insert(
                "rope_parameters".into(),
                json!({"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                       "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
            );
        });
        let md = as_md(&gguf_params(&cfg, None, 0).unwrap());
        assert_eq!(md.get("gemma3.attention.sliding_window"), None);
        assert_eq!(md.get("gemma3.final_logit_softcapping"), Some(&Value::F32(30.0)));
        assert_eq!(md.get_str("gemma3.rope.scaling.type"), Some("linear"));
        assert_eq!(md.get("gemma3.rope.scaling.factor"), Some(&Value::F32(8.0)));
        assert_eq!(md.get("gemma3.rope.freq_base"), Some(&Value::F32(1e6)));
    }

    /// export's config.json, read back by convert, gives the same `gemma3.*` keys; the values
    /// llama.cpp hard-codes are spelled out for transformers.
    #[test]
    fn gemma3_config_round_trips() {
        for edit in [
            Box::new(|_: &mut Map<String, Json>| {}) as Edit,
            Box::new(|j: &mut Map<String, Json>| {
                j.insert("sliding_window_pattern".into(), json!(1));
                j.insert("layer_types".into(), json!(vec!["full_attention"; 18]));
                j.insert("final_logit_softcapping".into(), json!(30.0));
                j.insert("rope_scaling".into(), json!({"rope_type": "linear", "factor": 8.0}));
            }),
        ] {
            let p = gguf_params(&gemma(edit), None, 0).unwrap();
            let md = as_md(&p);
            for tied in [true, false] {
                let names: &[&str] =
                    if tied { &["token_embd.weight"] } else { &["token_embd.weight", "output.weight"] };
                let c = hf_config(HfArch::Gemma3, &md, names, "float32").unwrap();
                assert_eq!(c["architectures"], json!(["Gemma3ForCausalLM"]));
                assert_eq!(c["model_type"], "gemma3_text");
                assert_eq!(c["tie_word_embeddings"], json!(tied));
                assert_eq!(c["hidden_activation"], "gelu_pytorch_tanh");
                assert_eq!((&c["query_pre_attn_scalar"], &c["rope_local_base_freq"]), (&json!(256), &json!(10000.0)));
                assert_eq!(c["attn_logit_softcapping"], Json::Null);
                assert_eq!(c["vocab_size"], 300);
                let types = c["layer_types"].as_array().unwrap();
                assert_eq!(types.len(), 18);
                let back =
                    HfConfig::from_json(&serde_json::to_vec(&Json::Object(c.clone())).unwrap(), Path::new("c.json"))
                        .unwrap();
                assert_eq!(gguf_params(&back, None, 0).unwrap(), p, "{c:?}");
            }
        }
        let c = hf_config(HfArch::Gemma3, &as_md(&gguf_params(&gemma(|_| {}), None, 0).unwrap()), &[], "bfloat16");
        let c = c.unwrap();
        assert_eq!(c["sliding_window"], 512);
        let global: Vec<usize> = c["layer_types"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(_, t)| *t == "full_attention")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(global, [5, 11, 17]);
        // Key and value widths must agree (transformers has one head_dim).
        let mut md = as_md(&gguf_params(&gemma(|_| {}), None, 0).unwrap());
        md.set("gemma3.attention.value_length", Value::U32(128));
        let e = hf_config(HfArch::Gemma3, &md, &[], "float32").unwrap_err().to_string();
        assert!(e.contains("gemma3.attention.value_length"), "{e}");
    }

    /// A config llama.cpp's gemma3 would not compute as written: refused, naming the field.
    #[test]
    fn malformed_gemma3_configs_name_the_field() {
        let cases: Vec<(&str, Edit)> = vec![
            ("\"attn_logit_softcapping\"", Box::new(|j| _ = j.insert("attn_logit_softcapping".into(), json!(50.0)))),
            ("\"hidden_activation\"", Box::new(|j| _ = j.insert("hidden_activation".into(), json!("silu")))),
            (
                "\"use_bidirectional_attention\"",
                Box::new(|j| _ = j.insert("use_bidirectional_attention".into(), json!(true))),
            ),
            ("\"query_pre_attn_scalar\"", Box::new(|j| _ = j.insert("query_pre_attn_scalar".into(), json!(224)))),
            ("\"rope_local_base_freq\"", Box::new(|j| _ = j.insert("rope_local_base_freq".into(), json!(20000.0)))),
            ("\"_sliding_window_pattern\"", Box::new(|j| _ = j.insert("_sliding_window_pattern".into(), json!(4)))),
            ("\"sliding_window_pattern\"", Box::new(|j| _ = j.insert("sliding_window_pattern".into(), json!("6")))),
            ("layer 5 is \"sliding_attention\"", Box::new(|j| j["layer_types"][5] = json!("sliding_attention"))),
            ("\"layer_types\"", Box::new(|j| _ = j.insert("layer_types".into(), json!(["full_attention"])))),
            ("\"sliding_window\"", Box::new(|j| _ = j.remove("sliding_window"))),
            ("\"sliding_window\"", Box::new(|j| _ = j.insert("sliding_window".into(), json!("wide")))),
            ("\"rope_theta\"", Box::new(|j| _ = j.insert("rope_theta".into(), json!("big")))),
            ("\"final_logit_softcapping\"", Box::new(|j| _ = j.insert("final_logit_softcapping".into(), json!("x")))),
            ("\"head_dim\"", Box::new(|j| _ = j.insert("head_dim".into(), json!(-1)))),
        ];
        for (want, edit) in cases {
            let e = gguf_params(&gemma(edit), None, 0).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("config.json"), "expected {want} in: {e}");
        }
    }
}
