//! PEFT LoRA adapters (Hugging Face `peft`: `adapter_config.json` + `adapter_model.safetensors`)
//! to and from llama.cpp's GGUF LoRA adapters ([`crunch_model::lora`]).
//!
//! This module is the one place that knows PEFT's layout:
//! - **names**: `base_model.model.{module}.lora_A.weight` and `...lora_B.weight`, `{module}` being
//!   the base's Hugging Face module path (`model.layers.0.self_attn.q_proj`), which crunch's
//!   HF <-> GGUF table ([`crunch_core::hf::names`]) maps to the GGUF weight it adapts
//!   (`blk.0.attn_q.weight`);
//! - **shapes**: PEFT's `lora_A` is `[r, in_features]` and is the GGUF `N.lora_a` byte for byte
//!   (ggml dims `[in, r]`); `lora_B` is `[out_features, r]`, the GGUF `N.lora_b` (ggml `[r, out]`),
//!   whose rows of Llama `q_proj` / `k_proj` get the row permutation the converter gives the base's
//!   Q/K weights (heads from the base model; `lora_A` acts on the input and is not permuted);
//! - **scales**: PEFT multiplies `B A` by `lora_alpha / r` per module (`alpha_pattern` and
//!   `rank_pattern` override both per module, `use_rslora` divides by `sqrt(r)` instead of `r`);
//!   llama.cpp multiplies by `adapter.lora.alpha / r_tensor`. The GGUF file keeps `lora_alpha` as
//!   its alpha, and whatever PEFT scales differently (an `alpha_pattern` entry, rsLoRA) is folded
//!   into `lora_B`, so that `alpha / r_tensor · B` is PEFT's `scaling · B`;
//! - **config**: the `adapter_config.json` fields PEFT's `LoraConfig` writes ([`to_peft`]).
//!
//! [`to_gguf`] converts a PEFT folder (`crunch convert DIR OUT --base BASE`), [`to_peft`] writes
//! one (`crunch export ADAPTER DIR --base BASE`); both need the base model ([`BaseModel`], a GGUF
//! file or a Hugging Face folder) for the architecture, the head counts of the permutation and the
//! shapes every pair must fit. An F32, F16 or BF16 GGUF adapter with crunch's canonical metadata
//! ([`crunch_model::lora::adapter_metadata`]) whose tensors are in the base's order comes back
//! byte for byte from export then convert.

pub mod to_gguf;
pub mod to_peft;

use crate::error::{Error, Result};
use crunch_core::gguf::GgufFile;
use crunch_core::hf::names::{self, Mapped, Part, Role, TensorId};
use crunch_core::hf::{HfArch, HfConfig};
use crunch_core::safetensors::SafetensorsModel;
use regex::Regex;
use serde_json::{Map, Value as Json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use to_gguf::{plan as plan_gguf, write_gguf, AdapterPlan, AdapterSummary, PeftPair};
pub use to_peft::export as export_peft;

/// The adapter's configuration file.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's weights.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Prefix of every tensor name (`PeftModel.base_model` = `LoraModel`, its `.model` the base).
pub const PREFIX: &str = "base_model.model.";
/// Suffix of the `A` half (`[r, in_features]`).
pub const LORA_A: &str = ".lora_A.weight";
/// Suffix of the `B` half (`[out_features, r]`).
pub const LORA_B: &str = ".lora_B.weight";

/// Is `dir` a PEFT adapter folder (it has `adapter_config.json`)? Its weights are checked when it
/// is read.
pub fn is_peft_dir(dir: &Path) -> bool {
    dir.is_dir() && dir.join(CONFIG_FILE).is_file()
}

/// The PEFT tensor name of one half of `module`'s pair.
pub fn tensor_name(module: &str, a: bool) -> String {
    format!("{PREFIX}{module}{}", if a { LORA_A } else { LORA_B })
}

/// Roles PEFT adapts with plain `lora_A` / `lora_B` linear layers.
fn is_linear(role: Role) -> bool {
    matches!(
        role,
        Role::AttnQ
            | Role::AttnK
            | Role::AttnV
            | Role::AttnOut
            | Role::FfnGate
            | Role::FfnUp
            | Role::FfnDown
            | Role::Output
    )
}

/// The GGUF weight a Hugging Face module path (`model.layers.0.self_attn.q_proj`) is, if it is a
/// linear layer crunch maps.
pub fn module_to_gguf(arch: HfArch, module: &str) -> Option<(String, TensorId)> {
    match names::hf_to_gguf(arch, &format!("{module}.weight"))? {
        Mapped::Tensor { gguf, id } if id.part == Part::Weight && is_linear(id.role) => Some((gguf, id)),
        _ => None,
    }
}

/// The Hugging Face module path of a GGUF weight (`blk.0.attn_q.weight` ->
/// `model.layers.0.self_attn.q_proj`), if it is a linear layer.
pub fn gguf_to_module(arch: HfArch, gguf: &str) -> Option<(String, TensorId)> {
    let (hf, id) = names::gguf_to_hf(arch, gguf)?;
    if id.part != Part::Weight || !is_linear(id.role) {
        return None;
    }
    Some((hf.strip_suffix(".weight")?.to_string(), id))
}

/// One 2-D weight of the base model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseWeight {
    /// GGUF name.
    pub gguf: String,
    pub n_in: usize,
    pub n_out: usize,
}

/// The base model an adapter belongs to: what converting an adapter needs from it.
#[derive(Clone, Debug)]
pub struct BaseModel {
    pub path: PathBuf,
    pub arch: HfArch,
    /// PEFT's `base_model_name_or_path`: the GGUF's `general.name`, a Hugging Face folder's
    /// `_name_or_path`, else the path.
    pub name: String,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// 2-D weights in the order of the GGUF file (for a Hugging Face folder: the order `crunch
    /// convert` writes them in, the checkpoint's).
    pub weights: Vec<BaseWeight>,
    index: HashMap<String, usize>,
}

impl BaseModel {
    /// Read a base model: a GGUF file or a Hugging Face folder (`config.json` and safetensors;
    /// only the headers are read).
    ///
    /// # Errors
    /// I/O and format errors, an architecture crunch has no tensor names for, a GGUF adapter
    /// given as the base, missing head counts.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            Self::from_hf(path)
        } else {
            Self::from_gguf(&GgufFile::open(path)?)
        }
    }

    /// The base from an opened GGUF model.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = &file.path;
        let md = file.metadata();
        if crunch_model::lora::is_adapter(md) {
            return Err(Error::Invalid(format!(
                "{} is a LoRA adapter, not a base model (the base is the model the adapter was trained on)",
                path.display()
            )));
        }
        let arch_name =
            md.architecture().ok_or_else(|| Error::Invalid(format!("{}: no general.architecture", path.display())))?;
        let arch = HfArch::from_gguf_name(arch_name).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: architecture {arch_name:?}; crunch maps PEFT adapters of llama, qwen2 and bert models",
                path.display()
            ))
        })?;
        let head_key = format!("{arch_name}.attention.head_count");
        let n_head = md.get_u64(&head_key).ok_or_else(|| {
            Error::Invalid(format!("{}: missing {head_key} (needed for the Q/K row permutation)", path.display()))
        })? as usize;
        let n_head_kv = md.get_u64(&format!("{arch_name}.attention.head_count_kv")).map_or(n_head, |v| v as usize);
        let weights = file
            .tensors()
            .iter()
            .filter(|t| t.dims.len() == 2)
            .map(|t| BaseWeight { gguf: t.name.clone(), n_in: t.dims[0] as usize, n_out: t.dims[1] as usize })
            .collect();
        let name = md.get_str("general.name").map_or_else(|| path.display().to_string(), str::to_string);
        Ok(Self::assemble(path.clone(), arch, name, n_head, n_head_kv, weights))
    }

    fn from_hf(dir: &Path) -> Result<Self> {
        let cfg = HfConfig::from_file(dir.join("config.json"))?;
        let model = SafetensorsModel::open(dir)?;
        let mut weights = Vec::new();
        for t in model.tensors().iter().filter(|t| t.shape.len() == 2) {
            if let Some(Mapped::Tensor { gguf, .. }) = names::hf_to_gguf(cfg.arch, &t.name) {
                weights.push(BaseWeight { gguf, n_in: t.shape[1] as usize, n_out: t.shape[0] as usize });
            }
        }
        let name = match cfg.raw.get("_name_or_path").and_then(Json::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => dir.display().to_string(),
        };
        let (n_head, n_head_kv) = (cfg.n_head()? as usize, cfg.n_head_kv()? as usize);
        Ok(Self::assemble(dir.to_path_buf(), cfg.arch, name, n_head, n_head_kv, weights))
    }

    fn assemble(
        path: PathBuf,
        arch: HfArch,
        name: String,
        n_head: usize,
        n_head_kv: usize,
        weights: Vec<BaseWeight>,
    ) -> Self {
        let index = weights.iter().enumerate().map(|(i, w)| (w.gguf.clone(), i)).collect();
        BaseModel { path, arch, name, n_head, n_head_kv, weights, index }
    }

    /// `(n_in, n_out)` of the GGUF weight `gguf`, if the base has it.
    pub fn shape(&self, gguf: &str) -> Option<(usize, usize)> {
        self.index.get(gguf).map(|&i| (self.weights[i].n_in, self.weights[i].n_out))
    }

    /// Position of `gguf` in the base's tensor order.
    pub fn position(&self, gguf: &str) -> Option<usize> {
        self.index.get(gguf).copied()
    }

    /// The heads the rows of a weight with this identity are permuted by (Llama Q and K), if any.
    pub fn permute_heads(&self, id: TensorId) -> Option<usize> {
        match (self.arch.permutes_qk(), id.role) {
            (true, Role::AttnQ) => Some(self.n_head),
            (true, Role::AttnK) => Some(self.n_head_kv),
            _ => None,
        }
    }
}

/// `adapter_config.json` as far as converting the weights needs it.
#[derive(Clone, Debug)]
pub struct PeftConfig {
    pub path: PathBuf,
    /// Default rank.
    pub r: usize,
    /// Default alpha.
    pub lora_alpha: f64,
    /// Scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    /// Set for GPT-2-style `Conv1D` bases. PEFT forces it off for `nn.Linear` layers (every layer
    /// crunch maps), whose `lora_A` / `lora_B` it stores the same way either way, so it changes
    /// nothing here.
    pub fan_in_fan_out: bool,
    rank_pattern: Vec<(String, Regex, usize)>,
    alpha_pattern: Vec<(String, Regex, f64)>,
}

fn cfg_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: {msg}", path.display()))
}

/// A JSON object's entries in file order (PEFT picks the first pattern key that matches).
struct Ordered(Vec<(String, Json)>);

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object or null")
            }
            fn visit_unit<E>(self) -> std::result::Result<Ordered, E> {
                Ok(Ordered(Vec::new()))
            }
            fn visit_none<E>(self) -> std::result::Result<Ordered, E> {
                Ok(Ordered(Vec::new()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> std::result::Result<Ordered, A::Error> {
                let mut v = Vec::new();
                while let Some((k, x)) = m.next_entry::<String, Json>()? {
                    v.push((k, x));
                }
                Ok(Ordered(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(serde::Deserialize)]
struct Patterns {
    #[serde(default)]
    rank_pattern: Option<Ordered>,
    #[serde(default)]
    alpha_pattern: Option<Ordered>,
}

/// PEFT's `get_pattern_key`: a key matches a module path that is the key or ends with `.` and the
/// key (the key being a regular expression).
fn pattern_regex(path: &Path, field: &str, key: &str) -> Result<Regex> {
    Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
        .map_err(|e| cfg_err(path, format!("{field} key {key:?} is not a regular expression PEFT could match: {e}")))
}

impl PeftConfig {
    /// Read `adapter_config.json`.
    ///
    /// # Errors
    /// See [`parse`](Self::parse).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes, path)
    }

    /// Parse and check a configuration: a LoRA adapter (`peft_type` LORA) without DoRA, trained
    /// biases, embedding layers or full copies of modules (`modules_to_save`), with `r` and
    /// `lora_alpha`. `path` names the file in messages.
    ///
    /// # Errors
    /// What a GGUF LoRA adapter cannot hold, a missing or mistyped key (named).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let obj: Map<String, Json> = match serde_json::from_slice(bytes) {
            Ok(Json::Object(m)) => m,
            Ok(_) => return Err(cfg_err(path, "not a JSON object")),
            Err(e) => return Err(cfg_err(path, format!("not valid JSON: {e}"))),
        };
        let missing = |k: &str, why: &str| cfg_err(path, format!("missing key {k} ({why})"));
        let bad = |k: &str, v: &Json, want: &str| cfg_err(path, format!("{k} is {v}, {want}"));
        match obj.get("peft_type") {
            None => return Err(missing("peft_type", "PEFT writes \"LORA\" for a LoRA adapter")),
            Some(Json::String(s)) if s == "LORA" => {}
            Some(v) => {
                return Err(cfg_err(
                    path,
                    format!(
                        "peft_type is {v}; crunch converts LoRA adapters (\"LORA\") to GGUF, not other PEFT methods"
                    ),
                ))
            }
        }
        let flag = |k: &str| -> Result<bool> {
            match obj.get(k) {
                None | Some(Json::Null) => Ok(false),
                Some(Json::Bool(b)) => Ok(*b),
                Some(v) => Err(bad(k, v, "expected true or false")),
            }
        };
        if flag("use_dora")? {
            return Err(cfg_err(
                path,
                "use_dora is true: a DoRA adapter rescales each weight column by a learned magnitude \
                 (lora_magnitude_vector), which a GGUF LoRA adapter cannot hold",
            ));
        }
        match obj.get("bias") {
            None | Some(Json::Null) => {}
            Some(Json::String(s)) if s == "none" => {}
            Some(v) => {
                return Err(cfg_err(
                    path,
                    format!(
                        "bias is {v}: the adapter trained bias vectors, which a GGUF LoRA adapter cannot hold (only \"none\" converts)"
                    ),
                ))
            }
        }
        if flag("lora_bias")? {
            return Err(cfg_err(path, "lora_bias is true: lora_B has a bias, which a GGUF LoRA adapter cannot hold"));
        }
        match obj.get("modules_to_save") {
            None | Some(Json::Null) => {}
            Some(Json::Array(a)) if a.is_empty() => {}
            Some(v) => {
                return Err(cfg_err(
                    path,
                    format!(
                        "modules_to_save is {v}: the adapter holds full trained copies of those modules, which a GGUF LoRA adapter cannot hold"
                    ),
                ))
            }
        }
        match obj.get("layer_replication") {
            None | Some(Json::Null) => {}
            Some(v) => {
                return Err(cfg_err(
                    path,
                    format!("layer_replication is {v}: the adapter is for a base with duplicated layers, which crunch cannot build"),
                ))
            }
        }
        let positive_int = |k: &str, v: &Json| -> Result<usize> {
            v.as_u64().filter(|&r| r > 0).map(|r| r as usize).ok_or_else(|| bad(k, v, "expected a positive integer"))
        };
        let number = |k: &str, v: &Json| -> Result<f64> {
            v.as_f64().filter(|a| a.is_finite()).ok_or_else(|| bad(k, v, "expected a number"))
        };
        let r = positive_int("r", obj.get("r").ok_or_else(|| missing("r", "the adapter's rank"))?)?;
        let lora_alpha = number(
            "lora_alpha",
            obj.get("lora_alpha").ok_or_else(|| missing("lora_alpha", "PEFT scales each B A by lora_alpha / r"))?,
        )?;
        let use_rslora = flag("use_rslora")?;
        let fan_in_fan_out = flag("fan_in_fan_out")?;
        let pats: Patterns = serde_json::from_slice(bytes)
            .map_err(|e| cfg_err(path, format!("rank_pattern / alpha_pattern: expected objects ({e})")))?;
        let mut rank_pattern = Vec::new();
        for (k, v) in pats.rank_pattern.map(|o| o.0).unwrap_or_default() {
            let r = positive_int(&format!("rank_pattern[{k:?}]"), &v)?;
            rank_pattern.push((k.clone(), pattern_regex(path, "rank_pattern", &k)?, r));
        }
        let mut alpha_pattern = Vec::new();
        for (k, v) in pats.alpha_pattern.map(|o| o.0).unwrap_or_default() {
            let a = number(&format!("alpha_pattern[{k:?}]"), &v)?;
            alpha_pattern.push((k.clone(), pattern_regex(path, "alpha_pattern", &k)?, a));
        }
        Ok(PeftConfig {
            path: path.to_path_buf(),
            r,
            lora_alpha,
            use_rslora,
            fan_in_fan_out,
            rank_pattern,
            alpha_pattern,
        })
    }

    /// The rank of `module` (`model.layers.0.self_attn.q_proj`): its `rank_pattern` entry, else `r`.
    pub fn rank_of(&self, module: &str) -> usize {
        self.rank_pattern.iter().find(|(_, re, _)| re.is_match(module)).map_or(self.r, |e| e.2)
    }

    /// The alpha of `module`: its `alpha_pattern` entry, else `lora_alpha`.
    pub fn alpha_of(&self, module: &str) -> f64 {
        self.alpha_pattern.iter().find(|(_, re, _)| re.is_match(module)).map_or(self.lora_alpha, |e| e.2)
    }

    /// What PEFT multiplies `B A` of `module` (rank `rank`) by.
    pub fn scaling(&self, module: &str, rank: usize) -> f64 {
        let div = if self.use_rslora { (rank as f64).sqrt() } else { rank as f64 };
        self.alpha_of(module) / div
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<PeftConfig> {
        PeftConfig::parse(&serde_json::to_vec(&v).unwrap(), Path::new("adapter_config.json"))
    }

    fn good() -> serde_json::Value {
        serde_json::json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "bias": "none", "use_dora": false})
    }

    #[test]
    fn patterns_follow_peft_matching_and_order() {
        let mut c = good();
        c["rank_pattern"] =
            serde_json::json!({"model.layers.0.self_attn.q_proj": 16, "k_proj": 4, "layers.1.self_attn.k_proj": 2});
        c["alpha_pattern"] = serde_json::json!({"q_proj": 32.5});
        let cfg = parse(c).unwrap();
        assert_eq!(cfg.rank_of("model.layers.0.self_attn.q_proj"), 16);
        assert_eq!(cfg.rank_of("model.layers.10.self_attn.q_proj"), 8);
        // "k_proj" comes first in the file, so it wins over the more specific key after it
        assert_eq!(cfg.rank_of("model.layers.1.self_attn.k_proj"), 4);
        assert_eq!(cfg.rank_of("model.layers.1.self_attn.xk_proj"), 8);
        assert_eq!(cfg.alpha_of("model.layers.3.self_attn.q_proj"), 32.5);
        assert_eq!(cfg.scaling("model.layers.3.self_attn.q_proj", 8), 32.5 / 8.0);
        assert_eq!(cfg.scaling("model.layers.3.self_attn.v_proj", 8), 2.0);
        let mut c = good();
        c["use_rslora"] = true.into();
        assert_eq!(parse(c).unwrap().scaling("m", 16), 4.0);
    }

    #[test]
    fn refusals_name_the_key() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("lora_alpha", serde_json::Value::Null, "adapter_config.json: missing key lora_alpha"),
            ("r", serde_json::Value::Null, "missing key r"),
            ("peft_type", "IA3".into(), "peft_type is \"IA3\""),
            ("use_dora", true.into(), "use_dora is true"),
            ("bias", "all".into(), "bias is \"all\""),
            ("lora_bias", true.into(), "lora_bias is true"),
            ("modules_to_save", serde_json::json!(["lm_head"]), "modules_to_save"),
            ("r", 0.into(), "r is 0"),
            ("lora_alpha", "x".into(), "lora_alpha is \"x\""),
            ("rank_pattern", serde_json::json!({"q_proj(": 4}), "rank_pattern key \"q_proj(\""),
        ];
        for (key, value, want) in cases {
            let mut c = good();
            if value.is_null() {
                c.as_object_mut().unwrap().remove(key);
            } else {
                c[key] = value;
            }
            let e = parse(c).unwrap_err().to_string();
            assert!(e.contains(want), "{key}: {e}");
        }
        let mut c = good();
        c["fan_in_fan_out"] = true.into();
        assert!(parse(c).unwrap().fan_in_fan_out);
    }

    #[test]
    fn module_names_map_both_ways() {
        let (g, id) = module_to_gguf(HfArch::Llama, "model.layers.3.self_attn.k_proj").unwrap();
        assert_eq!(g, "blk.3.attn_k.weight");
        assert_eq!(id.role, Role::AttnK);
        assert_eq!(gguf_to_module(HfArch::Llama, &g).unwrap().0, "model.layers.3.self_attn.k_proj");
        assert_eq!(module_to_gguf(HfArch::Llama, "lm_head").unwrap().0, "output.weight");
        assert!(module_to_gguf(HfArch::Llama, "model.layers.3.input_layernorm").is_none());
        assert!(module_to_gguf(HfArch::Llama, "model.embed_tokens").is_none());
        assert!(gguf_to_module(HfArch::Llama, "blk.0.attn_norm.weight").is_none());
        assert_eq!(
            module_to_gguf(HfArch::Bert, "encoder.layer.1.attention.self.query").unwrap().0,
            "blk.1.attn_q.weight"
        );
        assert_eq!(tensor_name("lm_head", false), "base_model.model.lm_head.lora_B.weight");
    }
}
