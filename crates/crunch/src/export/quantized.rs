//! `crunch export --format nf4|fp4|bnb-int8|int8|int4|gptq|awq|compressed-tensors`: the blocks'
//! linear weights quantized in the layout GPU and CPU servers load (bitsandbytes, GPTQ, AWQ,
//! compressed-tensors), everything else as plain export writes it.
//!
//! Key decisions:
//! - Only the layout changes ([`Layout`]): names, `config.json`, tokenizer, streaming and atomic
//!   output are plain export's. Embeddings, norms and `lm_head` stay dense (`--dtype`), as the
//!   owners' tools leave them by default (`llm_int8_skip_modules`, `lm_head: false`,
//!   `modules_to_not_convert`, `ignore: ["lm_head"]`).
//! - The weights are quantized from their exact f32 values (the GGUF dequantized, Q/K rows in
//!   Hugging Face order); the codecs are [`crunch_quant::hfq`]'s. Integer formats are one
//!   [`IntGroups`] packed three ways; GPTQ's and AWQ's calibrated codes (from crunch-calib) arrive
//!   as [`Calibrated`] and are only packed here.
//! - `--reference FILE` writes, beside the folder, the f32 values crunch meant for every quantized
//!   weight (safetensors, Hugging Face names), so a reader written from the formats' documentation
//!   can check the folder decodes to exactly them (`scripts/check_quant_export.py`).

use super::{write_folder, ExportOptions, ExportReport, ExportTensor, Layout};
use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};
use crunch_core::gguf::GgufFile;
use crunch_core::hf::names::{Part, Role};
use crunch_core::safetensors::{Dtype, SafetensorsWriter, ShardedWriter, TensorSpec};
use crunch_core::GgmlType;
use crunch_quant::hfq::bnb::{self, FourBit};
use crunch_quant::hfq::{hqq, pack, IntGroups, IntSpec};
use half::f16;
use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A checkpoint format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HfFormat {
    /// bitsandbytes 4-bit NormalFloat (`Linear4bit`, `nf4`).
    Nf4,
    /// bitsandbytes 4-bit float (`fp4`, E2M1).
    Fp4,
    /// bitsandbytes LLM.int8 (`Linear8bitLt`): int8 rows with one absmax each.
    BnbInt8,
    /// GPTQ (`quant_method: gptq`, v1 zeros), 2, 4 or 8 bits.
    Gptq,
    /// AWQ GEMM, 4 bits with zero points.
    Awq,
    /// compressed-tensors `pack-quantized` (W4A16 / W8A16, group-wise).
    CompressedTensors,
}

impl HfFormat {
    /// The names `--format` accepts: `int4` and `int8` are compressed-tensors group-wise W4A16 and
    /// W8A16 (vLLM's plain integer formats).
    pub fn parse(s: &str) -> Option<(Self, Option<u8>)> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "nf4" => (HfFormat::Nf4, Some(4)),
            "fp4" => (HfFormat::Fp4, Some(4)),
            "bnb-int8" | "llm-int8" => (HfFormat::BnbInt8, Some(8)),
            "gptq" => (HfFormat::Gptq, None),
            "awq" => (HfFormat::Awq, Some(4)),
            "compressed-tensors" | "ct" => (HfFormat::CompressedTensors, None),
            "int4" => (HfFormat::CompressedTensors, Some(4)),
            "int8" => (HfFormat::CompressedTensors, Some(8)),
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            HfFormat::Nf4 => "nf4",
            HfFormat::Fp4 => "fp4",
            HfFormat::BnbInt8 => "bnb-int8",
            HfFormat::Gptq => "gptq",
            HfFormat::Awq => "awq",
            HfFormat::CompressedTensors => "compressed-tensors",
        }
    }

    fn is_int_groups(self) -> bool {
        matches!(self, HfFormat::Gptq | HfFormat::Awq | HfFormat::CompressedTensors)
    }
}

/// How the integer codes are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HfMethod {
    /// Round to nearest (absmax for bitsandbytes).
    Rtn,
    /// Half-quadratic zero points ([`hqq`]); needs a format with zero points.
    Hqq,
    /// Codes (and, for AWQ, rescaled weights) computed by calibration, handed in as [`Calibrated`].
    Calibrated,
}

/// What `--format` and its options ask for.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantExport {
    pub format: HfFormat,
    /// Bits of the integer formats (GPTQ 2, 4, 8; compressed-tensors 4, 8; AWQ 4).
    pub bits: u8,
    /// Group size of the integer formats, block size of bitsandbytes 4-bit.
    pub group_size: usize,
    /// Symmetric integer codes (no zero points).
    pub sym: bool,
    /// bitsandbytes 4-bit: quantize the absmax values again (8-bit, blocks of 256).
    pub double_quant: bool,
    pub method: HfMethod,
    /// Write the f32 values meant for every quantized weight to this safetensors file.
    pub reference: Option<PathBuf>,
}

impl QuantExport {
    /// The usual settings of `format` (GPTQ and compressed-tensors: 4-bit symmetric g128; AWQ:
    /// 4-bit with zero points g128; bitsandbytes: blocks of 64, double quantization).
    pub fn new(format: HfFormat) -> Self {
        let (bits, group) = match format {
            HfFormat::Nf4 | HfFormat::Fp4 => (4, 64),
            HfFormat::BnbInt8 => (8, 0),
            _ => (4, 128),
        };
        QuantExport {
            format,
            bits,
            group_size: group,
            sym: format != HfFormat::Awq,
            double_quant: true,
            method: HfMethod::Rtn,
            reference: None,
        }
    }

    /// The integer grid, for the integer formats.
    pub fn int_spec(&self) -> Option<IntSpec> {
        self.format.is_int_groups().then(|| IntSpec {
            bits: self.bits,
            group: self.group_size,
            sym: self.sym,
            zero_min: u8::from(self.format == HfFormat::Gptq && !self.sym),
        })
    }

    /// Refuse settings the format cannot hold, naming the option.
    ///
    /// # Errors
    /// `export.bits`, `export.group_size`, `export.sym`, `export.method`.
    pub fn check(&self) -> Result<()> {
        let bad = |field: &str, m: String| Err(Error::field(format!("export.{field}"), m));
        let f = self.format.name();
        match self.format {
            HfFormat::Nf4 | HfFormat::Fp4 => {
                if !(self.group_size.is_power_of_two() && (32..=4096).contains(&self.group_size)) {
                    return bad(
                        "group_size",
                        format!(
                            "{f} blocks of {} values: bitsandbytes uses a power of two from 32 to 4096",
                            self.group_size
                        ),
                    );
                }
                if self.method != HfMethod::Rtn {
                    return bad("method", format!("{f} stores absmax-scaled codes; only rtn applies"));
                }
            }
            HfFormat::BnbInt8 => {
                if self.method != HfMethod::Rtn {
                    return bad("method", format!("{f} stores one absmax per row; only rtn applies"));
                }
            }
            HfFormat::Gptq | HfFormat::Awq | HfFormat::CompressedTensors => {
                let allowed: &[u8] = match self.format {
                    HfFormat::Gptq => &[2, 4, 8],
                    HfFormat::Awq => &[4],
                    _ => &[4, 8],
                };
                if !allowed.contains(&self.bits) {
                    return bad("bits", format!("{f} is written with {allowed:?} bits, not {}", self.bits));
                }
                if self.group_size == 0 {
                    return bad("group_size", "must be at least 1".to_string());
                }
                if self.format == HfFormat::Awq && self.sym {
                    return bad("sym", "AWQ's GEMM layout always stores zero points (zero_point: true)".to_string());
                }
                if self.method == HfMethod::Hqq && self.sym {
                    return bad("method", format!("hqq optimises zero points; symmetric {f} has none (use --asym)"));
                }
            }
        }
        Ok(())
    }
}

/// Results of calibration to be packed: GPTQ's codes and the weights and norms AWQ rescaled, by
/// GGUF tensor name, rows in the GGUF's order.
#[derive(Clone, Debug, Default)]
pub struct Calibrated {
    pub groups: HashMap<String, IntGroups>,
    pub values: HashMap<String, Vec<f32>>,
}

/// One quantized weight in the report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct QuantTensor {
    pub name: String,
    pub gguf: String,
    pub shape: [u64; 2],
    /// Bytes of its entries.
    pub bytes: u64,
    /// Root-mean-square error against the exported f32 values.
    pub rmse: f64,
    /// `rmse` over the root-mean-square of the values.
    pub rel_rmse: f64,
    /// Codes from calibration (GPTQ) rather than from the values.
    pub calibrated: bool,
}

/// What the quantized layout did.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct QuantReport {
    pub format: String,
    pub bits: u8,
    pub group_size: usize,
    pub sym: bool,
    pub method: HfMethod,
    /// Bits per weight of the quantized weights (codes, scales, zeros, everything stored for them).
    pub bits_per_weight: f64,
    pub quantized_params: u64,
    pub quantized_bytes: u64,
    pub reference: Option<String>,
    pub seconds_quantizing: f64,
    pub tensors: Vec<QuantTensor>,
}

fn is_target(t: &ExportTensor<'_>) -> bool {
    t.id.part == Part::Weight
        && t.id.layer.is_some()
        && t.info.dims.len() == 2
        && matches!(
            t.id.role,
            Role::AttnQ | Role::AttnK | Role::AttnV | Role::AttnOut | Role::FfnGate | Role::FfnUp | Role::FfnDown
        )
}

fn stem(hf_name: &str) -> &str {
    hf_name.strip_suffix(".weight").unwrap_or(hf_name)
}

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f16_bytes(v: &[f16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The quantized [`Layout`].
struct QuantLayout<'c> {
    q: QuantExport,
    calibrated: Option<&'c Calibrated>,
    /// bitsandbytes 4-bit: each target's packed quant state (its length is part of the plan).
    states: HashMap<String, String>,
    reference: Option<SafetensorsWriter>,
    tensors: Vec<QuantTensor>,
    seconds: f64,
}

impl QuantLayout<'_> {
    fn entries(&self, t: &ExportTensor<'_>) -> Vec<TensorSpec> {
        let s = stem(&t.hf_name);
        let shape = t.shape();
        let (out, inn) = (shape[0], shape[1]);
        let e = |suffix: &str, dtype: Dtype, shape: Vec<u64>| TensorSpec::new(format!("{s}.{suffix}"), dtype, shape);
        let bits = self.q.bits as u64;
        let g = self.q.group_size as u64;
        match self.q.format {
            HfFormat::Nf4 | HfFormat::Fp4 => {
                let n = out * inn;
                let nb = n.div_ceil(g);
                let state = &self.states[&t.hf_name];
                let mut v = vec![e("weight", Dtype::U8, vec![n.div_ceil(2), 1])];
                if self.q.double_quant {
                    v.push(e("weight.absmax", Dtype::U8, vec![nb]));
                    v.push(e("weight.nested_absmax", Dtype::F32, vec![nb.div_ceil(256)]));
                    v.push(e("weight.nested_quant_map", Dtype::F32, vec![256]));
                } else {
                    v.push(e("weight.absmax", Dtype::F32, vec![nb]));
                }
                v.push(e("weight.quant_map", Dtype::F32, vec![16]));
                v.push(e(
                    &format!("weight.quant_state.bitsandbytes__{}", self.q.format.name()),
                    Dtype::U8,
                    vec![state.len() as u64],
                ));
                v
            }
            HfFormat::BnbInt8 => vec![
                e("weight", Dtype::I8, vec![out, inn]),
                e("SCB", Dtype::F32, vec![out]),
                e("weight_format", Dtype::U8, vec![]),
            ],
            HfFormat::Gptq => vec![
                e("qweight", Dtype::I32, vec![inn * bits / 32, out]),
                e("qzeros", Dtype::I32, vec![inn / g, out * bits / 32]),
                e("scales", Dtype::F16, vec![inn / g, out]),
                e("g_idx", Dtype::I32, vec![inn]),
            ],
            HfFormat::Awq => vec![
                e("qweight", Dtype::I32, vec![inn, out / 8]),
                e("qzeros", Dtype::I32, vec![inn / g, out / 8]),
                e("scales", Dtype::F16, vec![inn / g, out]),
            ],
            HfFormat::CompressedTensors => {
                let mut v = vec![
                    e("weight_packed", Dtype::I32, vec![out, (inn * bits).div_ceil(32)]),
                    e("weight_scale", Dtype::F16, vec![out, inn / g]),
                    e("weight_shape", Dtype::I64, vec![2]),
                ];
                if !self.q.sym {
                    v.push(e("weight_zero_point", Dtype::I32, vec![(out * bits).div_ceil(32), inn / g]));
                }
                v
            }
        }
    }

    /// Shape problems of an integer format, before anything is written.
    fn check_target(&self, t: &ExportTensor<'_>) -> Result<()> {
        let shape = t.shape();
        let (out, inn) = (shape[0] as usize, shape[1] as usize);
        let which = format!("tensor {} ({})", t.info.name, t.hf_name);
        let field = |m: String| Err(Error::field("export.group_size", m));
        if let Some(spec) = self.q.int_spec() {
            if !inn.is_multiple_of(spec.group) {
                return field(format!("{which}: group size {} does not divide its rows of {inn} inputs", spec.group));
            }
            let per = 32 / spec.bits as usize;
            match self.q.format {
                HfFormat::Gptq if !inn.is_multiple_of(per) || !out.is_multiple_of(per) => {
                    return field(format!(
                        "{which}: GPTQ packs {per} codes per word; {out} x {inn} is not whole words"
                    ));
                }
                HfFormat::Awq if !out.is_multiple_of(8) => {
                    return field(format!("{which}: AWQ packs 8 outputs per word; it has {out}"));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl Layout for QuantLayout<'_> {
    fn source_type(&self, t: &ExportTensor<'_>) -> Option<GgmlType> {
        is_target(t).then_some(GgmlType::F32)
    }

    fn source_values(&self, t: &ExportTensor<'_>) -> Option<&[f32]> {
        self.calibrated.and_then(|c| c.values.get(&t.info.name)).map(Vec::as_slice)
    }

    fn plan(
        &mut self,
        input: &GgufFile,
        tensors: &[ExportTensor<'_>],
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<Vec<Vec<TensorSpec>>> {
        let mut out = Vec::new();
        let mut reference = Vec::new();
        let bnb4 = matches!(self.q.format, HfFormat::Nf4 | HfFormat::Fp4);
        let total: u64 = if bnb4 { tensors.iter().filter(|t| is_target(t)).map(|t| t.info.n_bytes()).sum() } else { 0 };
        if bnb4 {
            progress.start("plan", total);
        }
        let (mut done, mut buf, mut perm) = (0u64, Vec::new(), Vec::new());
        for t in tensors {
            if !is_target(t) {
                out.push(vec![TensorSpec::new(t.hf_name.clone(), t.dtype, t.shape())]);
                continue;
            }
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            self.check_target(t)?;
            if bnb4 {
                // The quant state's length depends on the absmax mean (double quantization).
                let data = t.hf_bytes(input, &mut buf, &mut perm, self.source_values(t))?;
                let values: Vec<f32> = bytemuck::pod_collect_to_vec(data);
                let b = self.quantize_bnb4(t, &values)?;
                let shape = t.shape();
                self.states
                    .insert(t.hf_name.clone(), b.quant_state_json([shape[0] as usize, shape[1] as usize], "float16"));
                input.release_tensor(t.info);
                done += t.info.n_bytes();
                progress.advance(done, &format!("planned {}", t.info.name));
            }
            reference.push(TensorSpec::new(t.hf_name.clone(), Dtype::F32, t.shape()));
            out.push(self.entries(t));
        }
        if let Some(path) = &self.q.reference {
            let mut meta = BTreeMap::new();
            meta.insert("format".to_string(), "pt".to_string());
            meta.insert(
                "crunch.reference".to_string(),
                format!("f32 values meant by crunch export --format {}", self.q.format.name()),
            );
            self.reference = Some(SafetensorsWriter::create(path, meta, &reference)?);
        }
        Ok(out)
    }

    fn write(&mut self, t: &ExportTensor<'_>, data: &[u8], out: &mut ShardedWriter) -> Result<u64> {
        if !is_target(t) {
            out.write_tensor(&t.hf_name, data)?;
            return Ok(data.len() as u64);
        }
        let t0 = std::time::Instant::now();
        let shape = t.shape();
        let (rows, cols) = (shape[0] as usize, shape[1] as usize);
        let values: Vec<f32> = bytemuck::pod_collect_to_vec(data);
        let s = stem(&t.hf_name).to_string();
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        let mut put = |suffix: &str, bytes: Vec<u8>| entries.push((format!("{s}.{suffix}"), bytes));
        let mut calibrated = false;
        let meant: Vec<f32> = match self.q.format {
            HfFormat::Nf4 | HfFormat::Fp4 => {
                let b = self.quantize_bnb4(t, &values)?;
                let state = b.quant_state_json([rows, cols], "float16");
                if state != self.states[&t.hf_name] {
                    return Err(Error::Invalid(format!("tensor {}: its values changed since planning", t.info.name)));
                }
                put("weight", b.packed.clone());
                match &b.absmax {
                    bnb::Absmax::Plain(a) => put("weight.absmax", f32_bytes(a)),
                    bnb::Absmax::Double { codes, nested_absmax, nested_map, .. } => {
                        put("weight.absmax", codes.clone());
                        put("weight.nested_absmax", f32_bytes(nested_absmax));
                        put("weight.nested_quant_map", f32_bytes(nested_map));
                    }
                }
                let table = match self.q.format {
                    HfFormat::Nf4 => bnb::NF4,
                    _ => bnb::FP4,
                };
                put("weight.quant_map", f32_bytes(&table));
                put(&format!("weight.quant_state.bitsandbytes__{}", self.q.format.name()), state.into_bytes());
                b.dequantize()
            }
            HfFormat::BnbInt8 => {
                let b = bnb::quantize_int8(&values, cols)
                    .map_err(|e| Error::Invalid(format!("tensor {}: {e}", t.info.name)))?;
                put("weight", b.codes.iter().map(|&c| c as u8).collect());
                put("SCB", f32_bytes(&b.scb));
                put("weight_format", vec![0u8]);
                b.dequantize()
            }
            HfFormat::Gptq | HfFormat::Awq | HfFormat::CompressedTensors => {
                let spec = self.q.int_spec().expect("integer format");
                let name = format!("{} ({})", t.info.name, t.hf_name);
                let groups = match self.calibrated.and_then(|c| c.groups.get(&t.info.name)) {
                    Some(g) => {
                        calibrated = true;
                        let mut g = g.clone();
                        if let Some(h) = t.permute_heads {
                            let order = crunch_core::hf::permute::row_order(g.rows, h, false)
                                .map_err(|e| Error::Invalid(format!("tensor {name}: {e}")))?;
                            g.permute_rows(&order);
                        }
                        if g.spec != spec || (g.rows, g.cols) != (rows, cols) {
                            return Err(Error::Invalid(format!(
                                "tensor {name}: calibrated codes are {:?} {}x{}, the export asks for {spec:?} {rows}x{cols}",
                                g.spec, g.rows, g.cols
                            )));
                        }
                        g
                    }
                    None => match self.q.method {
                        HfMethod::Hqq => crunch_quant::hfq::quantize_with(&name, &values, cols, spec, hqq::params),
                        _ => crunch_quant::hfq::quantize_rtn(&name, &values, cols, spec),
                    }
                    .map_err(|e| Error::field("export.group_size", e))?,
                };
                let err = |e: String| Error::Invalid(e);
                match self.q.format {
                    HfFormat::Gptq => {
                        let p = pack::gptq_pack(&name, &groups).map_err(err)?;
                        put("qweight", i32_bytes(&p.qweight));
                        put("qzeros", i32_bytes(&p.qzeros));
                        put("scales", f16_bytes(&p.scales));
                        put("g_idx", i32_bytes(&p.g_idx));
                    }
                    HfFormat::Awq => {
                        let p = pack::awq_pack(&name, &groups).map_err(err)?;
                        put("qweight", i32_bytes(&p.qweight));
                        put("qzeros", i32_bytes(&p.qzeros));
                        put("scales", f16_bytes(&p.scales));
                    }
                    _ => {
                        let p = pack::ct_pack(&name, &groups).map_err(err)?;
                        put("weight_packed", i32_bytes(&p.weight_packed));
                        put("weight_scale", f16_bytes(&p.weight_scale));
                        put("weight_shape", [rows as i64, cols as i64].iter().flat_map(|x| x.to_le_bytes()).collect());
                        if let Some(z) = &p.weight_zero_point {
                            put("weight_zero_point", i32_bytes(z));
                        }
                    }
                }
                groups.dequantize()
            }
        };
        let mut bytes = 0u64;
        for (name, b) in &entries {
            out.write_tensor(name, b)?;
            bytes += b.len() as u64;
        }
        if let Some(r) = &mut self.reference {
            r.write_tensor(&t.hf_name, &f32_bytes(&meant))?;
        }
        let se: f64 = values.iter().zip(&meant).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let ss: f64 = values.iter().map(|&a| (a as f64).powi(2)).sum();
        self.tensors.push(QuantTensor {
            name: t.hf_name.clone(),
            gguf: t.info.name.clone(),
            shape: [rows as u64, cols as u64],
            bytes,
            rmse: (se / values.len().max(1) as f64).sqrt(),
            rel_rmse: if ss > 0.0 { (se / ss).sqrt() } else { 0.0 },
            calibrated,
        });
        self.seconds += t0.elapsed().as_secs_f64();
        Ok(bytes)
    }

    fn finish(&mut self) -> Result<Vec<(String, String)>> {
        match self.reference.take() {
            Some(w) => {
                let sha = w.finish()?;
                let path = self.q.reference.as_ref().expect("reference path").display().to_string();
                Ok(vec![(path, sha)])
            }
            None => Ok(Vec::new()),
        }
    }

    fn extra_files(&self) -> Vec<(String, Json)> {
        match self.q.format {
            HfFormat::Gptq => vec![("quantize_config.json".into(), self.quantization_config())],
            _ => Vec::new(),
        }
    }

    fn config(&self, config: &mut Map<String, Json>) {
        config.insert("torch_dtype".into(), json!("float16"));
        config.insert("quantization_config".into(), self.quantization_config());
    }

    fn card_note(&self) -> Option<String> {
        let q = &self.q;
        let what = match q.format {
            HfFormat::Nf4 | HfFormat::Fp4 => format!(
                "bitsandbytes 4-bit `{}` (blocks of {}{})",
                q.format.name(),
                q.group_size,
                if q.double_quant { ", double quantization" } else { "" }
            ),
            HfFormat::BnbInt8 => "bitsandbytes LLM.int8 (one absmax per row)".into(),
            _ => format!(
                "{} {}-bit {} groups of {} ({})",
                q.format.name(),
                q.bits,
                if q.sym { "symmetric" } else { "asymmetric" },
                q.group_size,
                match q.method {
                    HfMethod::Rtn => "round to nearest",
                    HfMethod::Hqq => "HQQ zero points",
                    HfMethod::Calibrated => "calibrated",
                }
            ),
        };
        Some(format!(
            "The linear weights of the blocks are stored as {what} (`quantization_config` in `config.json`); \
             embeddings, norms and `lm_head` are dense."
        ))
    }
}

impl QuantLayout<'_> {
    fn quantize_bnb4(&self, t: &ExportTensor<'_>, values: &[f32]) -> Result<bnb::Bnb4> {
        let kind = if self.q.format == HfFormat::Nf4 { FourBit::Nf4 } else { FourBit::Fp4 };
        bnb::quantize_4bit(values, kind, self.q.group_size, self.q.double_quant)
            .map_err(|e| Error::Invalid(format!("tensor {} ({}): {e}", t.info.name, t.hf_name)))
    }

    fn quantization_config(&self) -> Json {
        let q = &self.q;
        match q.format {
            HfFormat::Nf4 | HfFormat::Fp4 => json!({
                "quant_method": "bitsandbytes",
                "_load_in_4bit": true,
                "_load_in_8bit": false,
                "load_in_4bit": true,
                "load_in_8bit": false,
                "bnb_4bit_quant_type": q.format.name(),
                "bnb_4bit_use_double_quant": q.double_quant,
                "bnb_4bit_compute_dtype": "float16",
                "bnb_4bit_quant_storage": "uint8",
                "llm_int8_threshold": 6.0,
                "llm_int8_skip_modules": self.skipped(),
                "llm_int8_enable_fp32_cpu_offload": false,
                "llm_int8_has_fp16_weight": false,
            }),
            HfFormat::BnbInt8 => json!({
                "quant_method": "bitsandbytes",
                "_load_in_4bit": false,
                "_load_in_8bit": true,
                "load_in_4bit": false,
                "load_in_8bit": true,
                "llm_int8_threshold": 6.0,
                "llm_int8_skip_modules": self.skipped(),
                "llm_int8_enable_fp32_cpu_offload": false,
                "llm_int8_has_fp16_weight": false,
            }),
            HfFormat::Gptq => json!({
                "bits": q.bits,
                "group_size": q.group_size,
                "desc_act": false,
                "sym": q.sym,
                "static_groups": false,
                "true_sequential": true,
                "damp_percent": 0.01,
                "lm_head": false,
                "quant_method": "gptq",
                "checkpoint_format": "gptq",
                "format": "gptq",
                "pack_dtype": "int32",
                "meta": {"quantizer": [format!("crunch:{}", env!("CARGO_PKG_VERSION"))]},
            }),
            HfFormat::Awq => json!({
                "quant_method": "awq",
                "zero_point": true,
                "group_size": q.group_size,
                "bits": 4,
                "version": "gemm",
                "modules_to_not_convert": null,
            }),
            HfFormat::CompressedTensors => json!({
                "quant_method": "compressed-tensors",
                "format": "pack-quantized",
                "quantization_status": "compressed",
                "version": CT_VERSION,
                "global_compression_ratio": null,
                "kv_cache_scheme": null,
                "ignore": ["lm_head"],
                "config_groups": {"group_0": {
                    "targets": ["Linear"],
                    "format": "pack-quantized",
                    "weights": {
                        "num_bits": q.bits,
                        "type": "int",
                        "symmetric": q.sym,
                        "strategy": "group",
                        "group_size": q.group_size,
                        "dynamic": false,
                        "actorder": null,
                        "block_structure": null,
                        "observer": "minmax",
                        "observer_kwargs": {},
                        "scale_dtype": null,
                        "zp_dtype": if q.sym { Json::Null } else { json!("torch.int8") },
                    },
                    "input_activations": null,
                    "output_activations": null,
                }},
            }),
        }
    }

    /// Modules left dense that transformers would otherwise quantize.
    fn skipped(&self) -> Json {
        json!(["lm_head"])
    }
}

/// The compressed-tensors release whose `pack-quantized` layout is written.
pub const CT_VERSION: &str = "0.20.0";

/// Export `input` into `dir` as [`super::export`] does, the blocks' linear weights as `q` says
/// (with `calibrated` codes and values where given).
///
/// # Errors
/// As [`super::export`]; settings the format cannot hold, a weight whose shape does not fit the
/// format (naming the tensor and the option), before anything is written.
pub fn export(
    input: &GgufFile,
    dir: &Path,
    opts: &ExportOptions,
    q: &QuantExport,
    calibrated: Option<&Calibrated>,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<ExportReport> {
    q.check()?;
    if q.method == HfMethod::Calibrated && calibrated.is_none() {
        return Err(Error::field("export.method", "calibrated codes were not computed"));
    }
    let mut layout = QuantLayout {
        q: q.clone(),
        calibrated,
        states: HashMap::new(),
        reference: None,
        tensors: Vec::new(),
        seconds: 0.0,
    };
    let mut report = write_folder(input, dir, opts, &mut layout, progress, cancel)?;
    let params: u64 = layout.tensors.iter().map(|t| t.shape[0] * t.shape[1]).sum();
    let bytes: u64 = layout.tensors.iter().map(|t| t.bytes).sum();
    report.quantized = Some(QuantReport {
        format: q.format.name().into(),
        bits: q.bits,
        group_size: q.group_size,
        sym: q.sym,
        method: q.method,
        bits_per_weight: if params == 0 { 0.0 } else { bytes as f64 * 8.0 / params as f64 },
        quantized_params: params,
        quantized_bytes: bytes,
        reference: q.reference.as_ref().map(|p| p.display().to_string()),
        seconds_quantizing: layout.seconds,
        tensors: layout.tensors,
    });
    Ok(report)
}
