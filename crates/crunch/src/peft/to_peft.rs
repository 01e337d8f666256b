//! A GGUF LoRA adapter to a PEFT adapter folder (`crunch export ADAPTER DIR --base BASE`).
//!
//! `adapter_model.safetensors` holds exactly the names and shapes PEFT writes
//! (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` `[r, in]`, `...lora_B.weight`
//! `[out, r]`, sorted by name as the `safetensors` package lays them out, `{"format": "pt"}`), with
//! the Q/K rows of `lora_B` put back in Hugging Face order; `adapter_config.json` has the fields
//! PEFT's `LoraConfig` writes, keys sorted as PEFT writes them. `r` is the most common rank (the
//! smaller on a tie), every other module is in `rank_pattern` under its module path
//! (`model.layers.0.self_attn.q_proj`: PEFT matches a key against a module path that equals it or
//! ends with `.` and the key). `lora_alpha` is the adapter's alpha, so PEFT's `lora_alpha / r` is
//! llama.cpp's `alpha / r_tensor` for every module; an adapter with alpha 0 (llama.cpp then scales
//! by 1) gets `lora_alpha = r` and `alpha_pattern` entries `rank` for the other ranks.
//!
//! Each file is written atomically (temp file, fsync, rename, `.sha256` sidecar); the weights
//! first, then the configuration, whose failure removes the weights again.

use super::{gguf_to_module, tensor_name, BaseModel, CONFIG_FILE, WEIGHTS_FILE};
use crate::error::{Error, Result};
use crate::export::ExportReport;
use crate::progress::{Cancel, Progress};
use crate::quantize;
use crunch_core::hf::params::json_f32;
use crunch_core::hf::{permute, HfArch};
use crunch_core::output::{sidecar_path, AtomicFile};
use crunch_core::safetensors::{Dtype, SafetensorsWriter, TensorSpec};
use crunch_core::GgmlType;
use crunch_model::lora::{self, LoraAdapter, LoraPair};
use serde_json::{json, Map, Value as Json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// The safetensors dtype a GGUF half is exported as: `dtype` if given, else its own type for
/// F32 / F16 / BF16 and F32 for any other (Q8_0 is dequantized).
fn out_type(ty: GgmlType, dtype: Option<GgmlType>) -> Result<(GgmlType, Dtype)> {
    let t = dtype.unwrap_or(match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => ty,
        _ => GgmlType::F32,
    });
    let d = match t {
        GgmlType::F32 => Dtype::F32,
        GgmlType::F16 => Dtype::F16,
        GgmlType::BF16 => Dtype::BF16,
        t => {
            return Err(Error::field(
                "export.dtype",
                format!("cannot export an adapter as {t}; choose f16, bf16 or f32"),
            ))
        }
    };
    Ok((t, d))
}

/// PEFT's `task_type` for a base of this family.
fn task_type(arch: HfArch) -> &'static str {
    match arch {
        HfArch::Bert => "FEATURE_EXTRACTION",
        HfArch::Llama | HfArch::Qwen2 | HfArch::Gemma3 => "CAUSAL_LM",
    }
}

/// A number as PEFT writes it: an integer when it is one.
fn json_number(x: f32) -> Json {
    if x.fract() == 0.0 && x.abs() < (1u32 << 24) as f32 {
        json!(x as i64)
    } else {
        json_f32(x)
    }
}

/// `adapter_config.json` for `modules` (module path, rank), in the adapter's order.
fn config_json(base: &BaseModel, alpha: f32, modules: &[(String, usize)]) -> Json {
    let mut count: BTreeMap<usize, usize> = BTreeMap::new();
    for (_, r) in modules {
        *count.entry(*r).or_default() += 1;
    }
    // The most common rank; on a tie the smaller (BTreeMap order, max_by_key keeps the last max).
    let r = count.iter().rev().max_by_key(|(_, n)| **n).map_or(8, |(r, _)| *r);
    let mut rank_pattern = Map::new();
    let mut alpha_pattern = Map::new();
    for (m, rank) in modules.iter().filter(|(_, rank)| *rank != r) {
        rank_pattern.insert(m.clone(), json!(rank));
        if alpha == 0.0 {
            alpha_pattern.insert(m.clone(), json!(rank));
        }
    }
    let lora_alpha = if alpha == 0.0 { json!(r) } else { json_number(alpha) };
    let targets: BTreeSet<&str> = modules.iter().map(|(m, _)| m.rsplit('.').next().unwrap_or(m)).collect();
    json!({
        "alpha_pattern": alpha_pattern,
        "auto_mapping": null,
        "base_model_name_or_path": base.name,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": lora_alpha,
        "lora_dropout": 0.0,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": r,
        "rank_pattern": rank_pattern,
        "revision": null,
        "target_modules": targets,
        "task_type": task_type(base.arch),
        "use_dora": false,
        "use_rslora": false,
    })
}

/// One safetensors tensor to write.
struct Entry<'a> {
    name: String,
    pair: &'a LoraPair,
    is_a: bool,
    ty: GgmlType,
    dtype: Dtype,
    permute_heads: Option<usize>,
}

impl Entry<'_> {
    fn info(&self) -> &crunch_core::gguf::TensorInfo {
        if self.is_a {
            &self.pair.a
        } else {
            &self.pair.b
        }
    }

    /// PyTorch shape: `[r, in]` or `[out, r]`.
    fn shape(&self) -> Vec<u64> {
        let p = self.pair;
        if self.is_a {
            vec![p.rank as u64, p.n_in as u64]
        } else {
            vec![p.n_out as u64, p.rank as u64]
        }
    }
}

/// Write `adapter` as a PEFT folder `dir` (created if needed) for `base`; `dtype` forces the
/// safetensors dtype (F32, F16, BF16), `None` keeps each tensor's (see [`out_type`]).
///
/// # Errors
/// An adapter that does not fit the base (architecture, a weight the base lacks, shapes, naming
/// the tensor), an adapted weight that is not a linear layer PEFT names, I/O, cancellation.
pub fn export(
    adapter: &LoraAdapter,
    base: &BaseModel,
    dir: &Path,
    dtype: Option<GgmlType>,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<ExportReport> {
    let t0 = Instant::now();
    let label = format!("the base {}", base.path.display());
    adapter
        .check_model(&label, base.arch.gguf_name(), |n| base.shape(n))
        .map_err(|source| Error::Model { context: adapter.path().display().to_string(), source })?;
    let mut modules = Vec::with_capacity(adapter.pairs().len());
    let mut entries = Vec::with_capacity(2 * adapter.pairs().len());
    for p in adapter.pairs() {
        let (module, id) = gguf_to_module(base.arch, &p.base).ok_or_else(|| {
            Error::Invalid(format!(
                "tensor {}{}: {} is not a linear layer PEFT adapts with lora_A / lora_B (attention and MLP projections, output)",
                p.base,
                lora::LORA_A,
                p.base
            ))
        })?;
        for (is_a, info) in [(true, &p.a), (false, &p.b)] {
            let (ty, dtype) = out_type(info.ty, dtype)?;
            entries.push(Entry {
                name: tensor_name(&module, is_a),
                pair: p,
                is_a,
                ty,
                dtype,
                permute_heads: if is_a { None } else { base.permute_heads(id) },
            });
        }
        modules.push((module, p.rank));
    }
    // The safetensors package writes tensors sorted by name (all of one dtype here, usually).
    entries.sort_by(|x, y| x.name.cmp(&y.name));
    let config = config_json(base, adapter.alpha, &modules);
    let mut config_bytes = serde_json::to_string_pretty(&config).map_err(|e| Error::Invalid(e.to_string()))?;
    config_bytes.push('\n');
    let canonical = ["general.architecture", lora::KEY_GENERAL_TYPE, lora::KEY_ADAPTER_TYPE, lora::KEY_ALPHA];
    let dropped: Vec<String> = adapter
        .file()
        .metadata()
        .iter()
        .map(|(k, _)| k)
        .filter(|k| !canonical.contains(k))
        .map(str::to_string)
        .collect();

    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let specs: Vec<TensorSpec> = entries.iter().map(|e| TensorSpec::new(e.name.clone(), e.dtype, e.shape())).collect();
    let weights = dir.join(WEIGHTS_FILE);
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let mut w = SafetensorsWriter::create(&weights, meta, &specs)?;
    let file = adapter.file();
    let total: u64 = entries.iter().map(|e| e.info().n_bytes()).sum();
    progress.start("export", total);
    let (mut buf, mut perm, mut done, mut tensor_bytes) = (Vec::new(), Vec::new(), 0u64, 0u64);
    for e in &entries {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let info = e.info();
        buf.clear();
        quantize::convert_tensor(
            &info.name,
            file.tensor_data(info),
            info.ty,
            e.ty,
            info.row_len() as usize,
            None,
            &mut buf,
        )?;
        let data = match e.permute_heads {
            Some(h) => {
                permute::unpermute(&buf, e.pair.n_out, h, &mut perm).map_err(|err| {
                    Error::Invalid(format!("tensor {}: {err} (attention heads of the base: {h})", info.name))
                })?;
                &perm
            }
            None => &buf,
        };
        w.write_tensor(&e.name, data)?;
        tensor_bytes += data.len() as u64;
        done += info.n_bytes();
        progress.advance(done, &format!("{} -> {}", info.name, e.name));
    }
    let weights_sha = w.finish()?;
    let config_path = dir.join(CONFIG_FILE);
    let config_sha = (|| {
        let mut f = AtomicFile::create(&config_path)?;
        f.write_all(config_bytes.as_bytes())?;
        f.commit()
    })()
    .map_err(|e| {
        let _ = std::fs::remove_file(&weights);
        let _ = std::fs::remove_file(sidecar_path(&weights));
        Error::io(&config_path, e)
    })?;
    if !dropped.is_empty() {
        tracing::warn!("left out (no place in a PEFT adapter): {}", dropped.join(", "));
    }
    progress.finish(&format!("wrote {}", dir.display()));
    Ok(ExportReport {
        dir: dir.display().to_string(),
        files: vec![(WEIGHTS_FILE.to_string(), weights_sha), (CONFIG_FILE.to_string(), config_sha)],
        tensors: entries.len(),
        tensor_bytes,
        seconds: t0.elapsed().as_secs_f64(),
        dropped_keys: dropped,
        sparse: None,
        quantized: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BaseModel {
        BaseModel::assemble("base.gguf".into(), HfArch::Llama, "SmolLM2".into(), 9, 3, Vec::new())
    }

    #[test]
    fn config_has_the_most_common_rank_and_the_others_as_patterns() {
        let m = |s: &str, r| (s.to_string(), r);
        let mods = [
            m("model.layers.0.self_attn.k_proj", 16),
            m("model.layers.0.self_attn.q_proj", 8),
            m("model.layers.0.self_attn.v_proj", 8),
            m("model.layers.0.mlp.down_proj", 8),
        ];
        let c = config_json(&base(), 16.0, &mods);
        assert_eq!(c["r"], 8);
        assert_eq!(c["lora_alpha"], 16);
        assert_eq!(c["rank_pattern"], json!({"model.layers.0.self_attn.k_proj": 16}));
        assert_eq!(c["alpha_pattern"], json!({}));
        assert_eq!(c["target_modules"], json!(["down_proj", "k_proj", "q_proj", "v_proj"]));
        assert_eq!(c["base_model_name_or_path"], "SmolLM2");
        assert_eq!(c["task_type"], "CAUSAL_LM");
        // a tie takes the smaller rank; alpha 0 becomes r with a pattern per other rank
        let c = config_json(&base(), 0.0, &mods[..2]);
        assert_eq!(c["r"], 8);
        assert_eq!(c["lora_alpha"], 8);
        assert_eq!(c["alpha_pattern"], json!({"model.layers.0.self_attn.k_proj": 16}));
        assert_eq!(config_json(&base(), 0.1, &mods)["lora_alpha"].as_f64().unwrap() as f32, 0.1f32);
        // PEFT's own check of what it reads back
        let cfg = super::super::PeftConfig::parse(&serde_json::to_vec(&c).unwrap(), Path::new("a.json")).unwrap();
        assert_eq!(cfg.rank_of("model.layers.0.self_attn.k_proj"), 16);
        assert_eq!(cfg.scaling("model.layers.0.self_attn.k_proj", 16), 1.0);
        assert_eq!(cfg.scaling("model.layers.0.self_attn.q_proj", 8), 1.0);
    }
}
