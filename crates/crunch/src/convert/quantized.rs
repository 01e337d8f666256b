//! Quantized Hugging Face checkpoints read back: GPTQ, AWQ, compressed-tensors `pack-quantized`
//! and bitsandbytes (4-bit NF4/FP4 with or without double quantization, LLM.int8).
//!
//! Each quantized linear layer is a set of tensors (`qweight`/`qzeros`/`scales`/`g_idx`, ...)
//! standing for one weight `P.weight`; [`scan`] finds the sets from `config.json`'s
//! `quantization_config`, checks every shape against the config, and [`QWeight::decode`] gives the
//! weight's exact values (and, for integer groups of consecutive columns, the groups themselves).
//!
//! Key decision: a weight is re-expressed on a GGUF type without requantizing where the math
//! allows ([`exact_route`]): symmetric 2/4-bit groups as Q4_0 and symmetric 8-bit groups as Q8_0
//! (the same scale and codes, exact), asymmetric 4-bit groups as Q4_1 (scale and codes kept, the
//! minimum `−scale·zero` rounded to f16: the only added error, reported), anything else (act-order
//! groups, groups not a multiple of 32, bitsandbytes) as F16 of its exact values, which is what the
//! owners' kernels compute with.

use crate::error::{Error, Result};
use crunch_core::safetensors::{Dtype, SafetensorsModel};
use crunch_core::GgmlType;
use crunch_quant::hfq::bnb::{self, Absmax};
use crunch_quant::hfq::pack::{self, Decoded, GptqZeros};
use crunch_quant::hfq::IntGroups;
use half::f16;
use serde_json::{Map, Value as Json};
use std::collections::HashSet;

/// How a checkpoint stores its quantized weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantKind {
    Gptq { bits: u8, zeros: GptqZeros },
    Awq,
    PackQuantized { bits: u8 },
    Bnb4,
    Bnb8,
}

impl QuantKind {
    pub fn label(&self) -> String {
        match self {
            QuantKind::Gptq { bits, zeros } => format!("gptq {bits}-bit ({zeros:?} zeros)"),
            QuantKind::Awq => "awq 4-bit".into(),
            QuantKind::PackQuantized { bits } => format!("compressed-tensors {bits}-bit"),
            QuantKind::Bnb4 => "bitsandbytes 4-bit".into(),
            QuantKind::Bnb8 => "bitsandbytes int8".into(),
        }
    }
}

/// One quantized weight of the checkpoint.
#[derive(Clone, Debug)]
pub struct QWeight {
    /// The module (`model.layers.0.mlp.up_proj`).
    pub stem: String,
    /// `[out, in]`.
    pub shape: [u64; 2],
    pub kind: QuantKind,
    /// Group size from the config, where it has one.
    group: Option<usize>,
}

impl QWeight {
    /// The dense weight's name (`P.weight`).
    pub fn hf_name(&self) -> String {
        format!("{}.weight", self.stem)
    }
}

/// The quantized weights of a checkpoint and the tensors they consume.
#[derive(Clone, Debug)]
pub struct QuantCheckpoint {
    pub method: String,
    pub weights: Vec<QWeight>,
    /// Names of every tensor belonging to a quantized weight.
    pub consumed: HashSet<String>,
}

/// A `config.json` key (not an option): named as the file spells it.
fn cfg_err(key: &str, m: impl Into<String>) -> Error {
    Error::Invalid(format!("config.json quantization_config.{key}: {}", m.into()))
}

fn get_u64(q: &Map<String, Json>, keys: &[&str]) -> Option<u64> {
    keys.iter().find_map(|k| q.get(*k).and_then(Json::as_u64))
}

/// The quantized weights `config.json` announces, if any.
///
/// # Errors
/// An unknown `quant_method`, a missing or contradicting key, a tensor set with a member missing
/// or of the wrong dtype or shape (naming the tensor and the key).
pub fn scan(raw: &Map<String, Json>, model: &SafetensorsModel) -> Result<Option<QuantCheckpoint>> {
    let Some(q) = raw.get("quantization_config").and_then(Json::as_object) else {
        return Ok(None);
    };
    let method = q.get("quant_method").and_then(Json::as_str).unwrap_or("").to_ascii_lowercase();
    let names: HashSet<&str> = model.tensors().iter().map(|t| t.name.as_str()).collect();
    let mut weights = Vec::new();
    let mut consumed = HashSet::new();
    let shape_of = |name: &str| model.tensor(name).map(|t| t.shape.clone());
    let need = |name: &str, dtype: Dtype| -> Result<Vec<u64>> {
        let t = model.tensor(name).ok_or_else(|| Error::Invalid(format!("tensor {name} is missing")))?;
        if t.dtype != dtype {
            return Err(Error::Invalid(format!("tensor {name} is {}, {dtype} expected", t.dtype)));
        }
        Ok(t.shape.clone())
    };
    match method.as_str() {
        "gptq" | "awq" => {
            let bits = get_u64(q, &["bits", "w_bit"]).ok_or_else(|| cfg_err("bits", "missing"))? as u8;
            let group = get_u64(q, &["group_size", "q_group_size"]);
            let awq = method == "awq";
            if awq && bits != 4 {
                return Err(cfg_err("bits", format!("{bits}: AWQ GEMM checkpoints are 4-bit")));
            }
            if !awq && ![2, 4, 8].contains(&bits) {
                return Err(cfg_err("bits", format!("{bits}: crunch reads 2, 4 and 8-bit GPTQ")));
            }
            if awq {
                if let Some(v) = q.get("version").and_then(Json::as_str) {
                    if !v.eq_ignore_ascii_case("gemm") {
                        return Err(cfg_err("version", format!("{v:?}: crunch reads AWQ's gemm layout")));
                    }
                }
            }
            let format = q.get("checkpoint_format").and_then(Json::as_str).unwrap_or("gptq");
            let v2 = match format {
                "gptq" => false,
                "gptq_v2" => true,
                other if !awq => {
                    return Err(cfg_err("checkpoint_format", format!("{other:?}: crunch reads gptq and gptq_v2")))
                }
                _ => false,
            };
            let sym = q.get("sym").and_then(Json::as_bool).unwrap_or(true);
            for n in names.iter().filter_map(|n| n.strip_suffix(".qweight")) {
                let qw = need(&format!("{n}.qweight"), Dtype::I32)?;
                let sc = shape_of(&format!("{n}.scales"))
                    .ok_or_else(|| Error::Invalid(format!("tensor {n}.scales is missing")))?;
                need(&format!("{n}.qzeros"), Dtype::I32)?;
                if qw.len() != 2 || sc.len() != 2 {
                    return Err(Error::Invalid(format!("tensor {n}.qweight or {n}.scales is not 2-D")));
                }
                let (out, inn) = if awq { (qw[1] * 8, qw[0]) } else { (qw[1], qw[0] * 32 / bits as u64) };
                if sc[1] != out {
                    return Err(cfg_err(
                        "bits",
                        format!(
                            "{bits}: {n}.qweight {qw:?} then holds {out} outputs x {inn} inputs, but {n}.scales is {sc:?}"
                        ),
                    ));
                }
                if let Some(gi) = shape_of(&format!("{n}.g_idx")) {
                    if gi != [inn] {
                        return Err(cfg_err(
                            "bits",
                            format!("{bits}: {n}.qweight {qw:?} then holds {inn} inputs, but {n}.g_idx has {gi:?}"),
                        ));
                    }
                }
                let g = match group {
                    Some(g) if g as i64 > 0 => g,
                    _ => inn, // -1: one group per column
                };
                if g == 0 || !inn.is_multiple_of(g) || inn / g != sc[0] {
                    return Err(cfg_err(
                        "group_size",
                        format!("{g} does not fit {n}: {inn} inputs, {n}.scales has {} groups", sc[0]),
                    ));
                }
                let zeros = if v2 {
                    GptqZeros::V2
                } else if sym {
                    // GPTQModel has written v2 zeros under the `gptq` label: look at them.
                    let zw: Vec<i32> = i32s(model.data(&format!("{n}.qzeros"))?);
                    pack::sniff_sym_zeros(&zw, bits).unwrap_or(GptqZeros::V1)
                } else {
                    GptqZeros::V1
                };
                let kind = if awq { QuantKind::Awq } else { QuantKind::Gptq { bits, zeros } };
                for s in ["qweight", "qzeros", "scales", "g_idx", "bias"] {
                    let t = format!("{n}.{s}");
                    if s != "bias" && names.contains(t.as_str()) {
                        consumed.insert(t);
                    }
                }
                weights.push(QWeight { stem: n.to_string(), shape: [out, inn], kind, group: Some(g as usize) });
            }
        }
        "compressed-tensors" => {
            let format = q.get("format").and_then(Json::as_str).unwrap_or("");
            let groups = q.get("config_groups").and_then(Json::as_object);
            let w = groups
                .and_then(|g| g.values().next())
                .and_then(|g| g.get("weights"))
                .and_then(Json::as_object)
                .ok_or_else(|| cfg_err("config_groups", "no weights arguments"))?;
            if groups.is_some_and(|g| g.len() != 1) {
                return Err(cfg_err("config_groups", "crunch reads checkpoints with one quantization group"));
            }
            if format != "pack-quantized" {
                return Err(cfg_err("format", format!("{format:?}: crunch reads pack-quantized")));
            }
            let bits =
                get_u64(w, &["num_bits"]).ok_or_else(|| cfg_err("config_groups.weights.num_bits", "missing"))? as u8;
            let group = get_u64(w, &["group_size"]);
            if w.get("actorder").is_some_and(|a| !a.is_null()) {
                return Err(cfg_err("config_groups.weights.actorder", "act-order groups are not read yet"));
            }
            for n in names.iter().filter_map(|n| n.strip_suffix(".weight_packed")) {
                let wp = need(&format!("{n}.weight_packed"), Dtype::I32)?;
                need(&format!("{n}.weight_shape"), Dtype::I64)?;
                let shp: Vec<i64> = model
                    .data(&format!("{n}.weight_shape"))?
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect();
                if shp.len() != 2 || shp.iter().any(|&d| d <= 0) {
                    return Err(Error::Invalid(format!("tensor {n}.weight_shape holds {shp:?}, not [out, in]")));
                }
                let (out, inn) = (shp[0] as u64, shp[1] as u64);
                if wp != [out, (inn * bits as u64).div_ceil(32)] {
                    return Err(cfg_err(
                        "config_groups.weights.num_bits",
                        format!(
                            "{bits}: {n}.weight_packed is {wp:?}, {out} x {inn} at {bits} bits needs [{out}, {}]",
                            (inn * bits as u64).div_ceil(32)
                        ),
                    ));
                }
                let sc = shape_of(&format!("{n}.weight_scale"))
                    .ok_or_else(|| Error::Invalid(format!("tensor {n}.weight_scale is missing")))?;
                let ng = sc.get(1).copied().unwrap_or(0);
                if sc.len() != 2 || sc[0] != out || ng == 0 || !inn.is_multiple_of(ng) {
                    return Err(Error::Invalid(format!("tensor {n}.weight_scale is {sc:?} for {out} x {inn}")));
                }
                if let Some(g) = group.filter(|&g| g > 0) {
                    if inn / g != ng || !inn.is_multiple_of(g) {
                        return Err(cfg_err(
                            "config_groups.weights.group_size",
                            format!("{g} contradicts {n}.weight_scale {sc:?} for {inn} inputs"),
                        ));
                    }
                }
                for s in ["weight_packed", "weight_shape", "weight_scale", "weight_zero_point", "weight_g_idx"] {
                    let t = format!("{n}.{s}");
                    if names.contains(t.as_str()) {
                        consumed.insert(t);
                    }
                }
                weights.push(QWeight {
                    stem: n.to_string(),
                    shape: [out, inn],
                    kind: QuantKind::PackQuantized { bits },
                    group: Some((inn / ng) as usize),
                });
            }
        }
        "bitsandbytes" => {
            for full in names.iter().filter(|n| n.contains(".weight.quant_state.bitsandbytes__")) {
                let n = full.split(".weight.quant_state.").next().expect("split");
                let json = std::str::from_utf8(model.data(full)?)
                    .map_err(|_| Error::Invalid(format!("tensor {full} is not UTF-8 JSON")))?;
                let v: Json = serde_json::from_str(json).map_err(|e| Error::Invalid(format!("tensor {full}: {e}")))?;
                let shape: Vec<u64> = v
                    .get("shape")
                    .and_then(Json::as_array)
                    .map(|a| a.iter().filter_map(Json::as_u64).collect())
                    .unwrap_or_default();
                if shape.len() != 2 {
                    return Err(Error::Invalid(format!(
                        "tensor {full}: key \"shape\" is {:?}, not [out, in]",
                        v.get("shape")
                    )));
                }
                for s in
                    ["weight", "weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map"]
                {
                    let t = format!("{n}.{s}");
                    if names.contains(t.as_str()) {
                        consumed.insert(t);
                    }
                }
                consumed.insert(full.to_string());
                weights.push(QWeight {
                    stem: n.to_string(),
                    shape: [shape[0], shape[1]],
                    kind: QuantKind::Bnb4,
                    group: None,
                });
            }
            for n in names.iter().filter_map(|n| n.strip_suffix(".SCB")) {
                let w = need(&format!("{n}.weight"), Dtype::I8)?;
                if w.len() != 2 {
                    return Err(Error::Invalid(format!("tensor {n}.weight is {w:?}, not 2-D")));
                }
                for s in ["weight", "SCB", "weight_format"] {
                    let t = format!("{n}.{s}");
                    if names.contains(t.as_str()) {
                        consumed.insert(t);
                    }
                }
                weights.push(QWeight { stem: n.to_string(), shape: [w[0], w[1]], kind: QuantKind::Bnb8, group: None });
            }
        }
        other => {
            return Err(cfg_err(
                "quant_method",
                format!("{other:?}: crunch reads gptq, awq, compressed-tensors (pack-quantized) and bitsandbytes"),
            ))
        }
    }
    if weights.is_empty() {
        return Err(cfg_err("quant_method", format!("{method:?} is announced but no tensor has that format's layout")));
    }
    weights.sort_by(|a, b| a.stem.cmp(&b.stem));
    Ok(Some(QuantCheckpoint { method, weights, consumed }))
}

fn i32s(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
}

/// A scale tensor as f32 (F16, BF16 or F32).
fn scales_f32(model: &SafetensorsModel, name: &str) -> Result<Vec<f32>> {
    Ok(model.to_f32(name)?)
}

/// The scales as f16 when every one is exactly an f16.
fn exact_f16(v: &[f32]) -> Option<Vec<f16>> {
    let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
    h.iter().zip(v).all(|(a, &b)| a.to_f32() == b).then_some(h)
}

impl QWeight {
    /// The weight's exact values (`out × in`, Hugging Face row order) and its integer groups when
    /// they are consecutive columns with f16 scales.
    ///
    /// # Errors
    /// Tensor sizes that do not match, naming the tensor.
    pub fn decode(&self, model: &SafetensorsModel) -> Result<Decoded> {
        let n = &self.stem;
        let [out, inn] = self.shape.map(|d| d as usize);
        let t = |s: &str| format!("{n}.{s}");
        let inv = |e: String| Error::Invalid(e);
        match self.kind {
            QuantKind::Gptq { bits, zeros } => {
                let sc = scales_f32(model, &t("scales"))?;
                let h =
                    exact_f16(&sc).ok_or_else(|| inv(format!("tensor {}: scales are not f16 values", t("scales"))))?;
                let g_idx = match model.tensor(&t("g_idx")) {
                    Some(_) => Some(i32s(model.data(&t("g_idx"))?)),
                    None => None,
                };
                pack::gptq_unpack(
                    n,
                    bits,
                    out,
                    inn,
                    &i32s(model.data(&t("qweight"))?),
                    &i32s(model.data(&t("qzeros"))?),
                    &h,
                    g_idx.as_deref(),
                    zeros,
                )
                .map_err(inv)
            }
            QuantKind::Awq => {
                let sc = scales_f32(model, &t("scales"))?;
                let h =
                    exact_f16(&sc).ok_or_else(|| inv(format!("tensor {}: scales are not f16 values", t("scales"))))?;
                let g = pack::awq_unpack(
                    n,
                    out,
                    inn,
                    &i32s(model.data(&t("qweight"))?),
                    &i32s(model.data(&t("qzeros"))?),
                    &h,
                )
                .map_err(inv)?;
                Ok(Decoded { values: g.dequantize(), groups: Some(g) })
            }
            QuantKind::PackQuantized { bits } => {
                let sc = scales_f32(model, &t("weight_scale"))?;
                let h: Vec<f16> = sc.iter().map(|&x| f16::from_f32(x)).collect();
                let zp = match model.tensor(&t("weight_zero_point")) {
                    Some(_) => Some(i32s(model.data(&t("weight_zero_point"))?)),
                    None => None,
                };
                let g = pack::ct_unpack(n, bits, out, inn, &i32s(model.data(&t("weight_packed"))?), &h, zp.as_deref())
                    .map_err(inv)?;
                // Exact values from the stored scales (BF16 scales need not be f16 values).
                let ng = g.groups_per_row();
                let mut values = vec![0f32; out * inn];
                for (i, v) in values.iter_mut().enumerate() {
                    let k = (i / inn) * ng + (i % inn) / g.spec.group;
                    *v = sc[k] * (g.codes[i] as f32 - g.zeros[k] as f32);
                }
                let exact = exact_f16(&sc).is_some();
                Ok(Decoded { values, groups: exact.then_some(g) })
            }
            QuantKind::Bnb4 => {
                let json_name = model
                    .tensors()
                    .iter()
                    .find(|x| x.name.starts_with(&format!("{n}.weight.quant_state.bitsandbytes__")))
                    .map(|x| x.name.clone())
                    .ok_or_else(|| inv(format!("{n}: no quant_state tensor")))?;
                let json = std::str::from_utf8(model.data(&json_name)?)
                    .map_err(|_| inv(format!("tensor {json_name} is not UTF-8 JSON")))?;
                let absmax_t = model
                    .tensor(&t("weight.absmax"))
                    .ok_or_else(|| inv(format!("tensor {} is missing", t("weight.absmax"))))?;
                let absmax = if model.tensor(&t("weight.nested_absmax")).is_some() {
                    if absmax_t.dtype != Dtype::U8 {
                        return Err(inv(format!(
                            "tensor {}: {} with double quantization, U8 expected",
                            t("weight.absmax"),
                            absmax_t.dtype
                        )));
                    }
                    let v: Json = serde_json::from_str(json).map_err(|e| inv(format!("tensor {json_name}: {e}")))?;
                    Absmax::Double {
                        codes: model.data(&t("weight.absmax"))?.to_vec(),
                        nested_absmax: model.to_f32(&t("weight.nested_absmax"))?,
                        nested_map: model.to_f32(&t("weight.nested_quant_map"))?,
                        offset: v
                            .get("nested_offset")
                            .and_then(Json::as_f64)
                            .ok_or_else(|| inv(format!("tensor {json_name}: key \"nested_offset\" is missing")))?
                            as f32,
                        nested_blocksize: v.get("nested_blocksize").and_then(Json::as_u64).unwrap_or(256) as usize,
                    }
                } else {
                    Absmax::Plain(model.to_f32(&t("weight.absmax"))?)
                };
                let (b, shape, _dtype) =
                    bnb::Bnb4::from_parts(n, model.data(&t("weight"))?, absmax, json).map_err(inv)?;
                if shape != [out, inn] {
                    return Err(inv(format!("tensor {json_name}: shape {shape:?} changed since planning")));
                }
                Ok(Decoded { values: b.dequantize(), groups: None })
            }
            QuantKind::Bnb8 => {
                let codes: Vec<i8> = model.data(&t("weight"))?.iter().map(|&b| b as i8).collect();
                let scb = f32s(model.data(&t("SCB"))?);
                if scb.len() != out {
                    return Err(inv(format!("tensor {}: {} values for {out} rows", t("SCB"), scb.len())));
                }
                if let Some(f) = model.tensor(&t("weight_format")) {
                    let v = model.data(&f.name)?;
                    if v.first().copied().unwrap_or(0) != 0 {
                        return Err(inv(format!("tensor {}: only the row format (0) is read", f.name)));
                    }
                }
                let b = bnb::Bnb8 { rows: out, cols: inn, codes, scb };
                Ok(Decoded { values: b.dequantize(), groups: None })
            }
        }
    }

    /// The config's group size.
    pub fn group_size(&self) -> Option<usize> {
        self.group
    }

    /// The GGUF type [`exact_route`] will give the weight, from its small tensors only (zeros,
    /// group indices, the scales' dtype), so a plan knows every size before decoding.
    ///
    /// # Errors
    /// Reading those tensors.
    pub fn route(&self, model: &SafetensorsModel) -> Result<GgmlType> {
        let n = &self.stem;
        let t = |s: &str| format!("{n}.{s}");
        let g = self.group.unwrap_or(0);
        let f16_scales = |name: &str| model.tensor(name).is_some_and(|x| x.dtype == Dtype::F16);
        let field_all = |words: &[i32], bits: u8, v: u32| {
            let per = 32 / bits as usize;
            let mask = (1u32 << bits) - 1;
            words.iter().all(|&w| (0..per).all(|k| (w as u32 >> (bits as usize * k)) & mask == v))
        };
        if g == 0 || !g.is_multiple_of(32) {
            return Ok(GgmlType::F16);
        }
        let (bits, sym) = match self.kind {
            QuantKind::Bnb4 | QuantKind::Bnb8 => return Ok(GgmlType::F16),
            QuantKind::Gptq { bits, zeros } => {
                if !f16_scales(&t("scales")) {
                    return Ok(GgmlType::F16);
                }
                if model.tensor(&t("g_idx")).is_some() {
                    let gi = i32s(model.data(&t("g_idx"))?);
                    if gi.iter().enumerate().any(|(i, &x)| x as i64 != (i / g) as i64) {
                        return Ok(GgmlType::F16);
                    }
                }
                let mid = 1u32 << (bits - 1);
                let stored = if zeros == GptqZeros::V1 { mid - 1 } else { mid };
                (bits, field_all(&i32s(model.data(&t("qzeros"))?), bits, stored))
            }
            QuantKind::Awq => {
                if !f16_scales(&t("scales")) {
                    return Ok(GgmlType::F16);
                }
                (4, field_all(&i32s(model.data(&t("qzeros"))?), 4, 8))
            }
            QuantKind::PackQuantized { bits } => {
                if !f16_scales(&t("weight_scale")) {
                    return Ok(GgmlType::F16);
                }
                (bits, model.tensor(&t("weight_zero_point")).is_none())
            }
        };
        Ok(match (bits, sym) {
            (2 | 4, true) => GgmlType::Q4_0,
            (8, true) => GgmlType::Q8_0,
            (4, false) => GgmlType::Q4_1,
            _ => GgmlType::F16,
        })
    }
}

/// The GGUF type a decoded weight goes to without requantizing, and the largest error that adds
/// (0 when exact).
pub fn exact_route(d: &Decoded) -> (GgmlType, f32) {
    let Some(g) = &d.groups else { return (GgmlType::F16, f16_error(&d.values)) };
    if !g.spec.group.is_multiple_of(32) {
        return (GgmlType::F16, f16_error(&d.values));
    }
    match (g.spec.bits, g.spec.sym) {
        (2 | 4, true) => (GgmlType::Q4_0, 0.0),
        (8, true) => (GgmlType::Q8_0, 0.0),
        (4, false) => {
            let ng = g.groups_per_row();
            let mut worst = 0f32;
            for k in 0..g.rows * ng {
                let s = g.scales[k].to_f32();
                let m = -s * g.zeros[k] as f32;
                worst = worst.max((f16::from_f32(m).to_f32() - m).abs());
            }
            (GgmlType::Q4_1, worst)
        }
        _ => (GgmlType::F16, f16_error(&d.values)),
    }
}

fn f16_error(v: &[f32]) -> f32 {
    v.iter().map(|&x| (f16::from_f32(x).to_f32() - x).abs()).fold(0.0, f32::max)
}

/// `g` (rows already in the GGUF's order) as `ty`'s blocks, per [`exact_route`].
///
/// # Errors
/// A type that is not `g`'s exact route.
pub fn encode_exact(name: &str, g: &IntGroups, ty: GgmlType) -> Result<Vec<u8>> {
    let ng = g.groups_per_row();
    let nb = g.cols / 32;
    let mut out = Vec::with_capacity(g.rows * nb * ty.type_size());
    for r in 0..g.rows {
        for b in 0..nb {
            let k = r * ng + (b * 32) / g.spec.group;
            let (s, z) = (g.scales[k], g.zeros[k]);
            let codes = &g.codes[r * g.cols + b * 32..r * g.cols + b * 32 + 32];
            match ty {
                GgmlType::Q4_0 => {
                    // Q4_0: d·(nibble − 8); symmetric codes u with zero z: nibble = u − z + 8.
                    out.extend_from_slice(&s.to_le_bytes());
                    for j in 0..16 {
                        let lo = (codes[j] as i16 - z as i16 + 8) as u8;
                        let hi = (codes[j + 16] as i16 - z as i16 + 8) as u8;
                        out.push(lo | hi << 4);
                    }
                }
                GgmlType::Q8_0 => {
                    out.extend_from_slice(&s.to_le_bytes());
                    out.extend(codes.iter().map(|&u| (u as i16 - z as i16) as i8 as u8));
                }
                GgmlType::Q4_1 => {
                    let m = f16::from_f32(-s.to_f32() * z as f32);
                    out.extend_from_slice(&s.to_le_bytes());
                    out.extend_from_slice(&m.to_le_bytes());
                    for j in 0..16 {
                        out.push(codes[j] | codes[j + 16] << 4);
                    }
                }
                _ => {
                    return Err(Error::Invalid(format!("tensor {name}: {ty} is not an exact route for integer groups")))
                }
            }
        }
    }
    Ok(out)
}
