//! A quantization plan: for every tensor of the input, the type it will be written as and why,
//! with sizes. Built without touching tensor data, so `--dry-run` is instant.

use super::ftype::Ftype;
use super::rules::{self, Category, ModelFacts, RuleState};
use crate::error::{Error, Result};
use crunch_core::gguf::{Metadata, TensorInfo};
use crunch_core::GgmlType;
use serde::Serialize;

/// What the user asked for (llama-quantize's options).
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub ftype: Ftype,
    /// `--output-tensor-type`
    pub output_tensor_type: Option<GgmlType>,
    /// `--token-embedding-type`
    pub token_embedding_type: Option<GgmlType>,
    /// `--leave-output-tensor`: keep `output.weight` as it is.
    pub leave_output_tensor: bool,
    /// `--pure`: every quantizable tensor gets the default type (fallbacks still apply).
    pub pure: bool,
    /// `--tensor-type PATTERN=TYPE`, first match wins (regex search on the tensor name).
    pub tensor_types: Vec<(regex::Regex, GgmlType)>,
    /// `--allow-requantize`: accept quantized inputs (dequantized, then quantized again).
    pub allow_requantize: bool,
    /// An importance matrix is available (changes a few preset rules, as in llama.cpp).
    pub has_imatrix: bool,
}

impl QuantizeOptions {
    pub fn new(ftype: Ftype) -> Self {
        QuantizeOptions {
            ftype,
            output_tensor_type: None,
            token_embedding_type: None,
            leave_output_tensor: false,
            pure: false,
            tensor_types: Vec::new(),
            allow_requantize: false,
            has_imatrix: false,
        }
    }
}

/// Why a tensor got its type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not a quantization candidate (norms, biases, 1-D…): copied as is.
    Kept,
    /// The preset's default type.
    Default,
    /// A preset rule chose a different type (e.g. more bits for attn_v).
    PresetRule,
    /// `--tensor-type`, `--output-tensor-type` or `--token-embedding-type`.
    User,
    /// The row length is not a multiple of the chosen type's block size.
    Fallback,
}

/// One tensor in the plan.
#[derive(Clone, Debug, Serialize)]
pub struct TensorPlan {
    pub name: String,
    pub dims: Vec<u64>,
    #[serde(serialize_with = "ser_type")]
    pub src_type: GgmlType,
    #[serde(serialize_with = "ser_type")]
    pub dst_type: GgmlType,
    pub src_bytes: u64,
    pub dst_bytes: u64,
    pub reason: Reason,
    /// The type before the block-size fallback, when a fallback happened.
    #[serde(serialize_with = "ser_opt_type", skip_serializing_if = "Option::is_none")]
    pub wanted: Option<GgmlType>,
    pub requires_imatrix: bool,
}

fn ser_type<S: serde::Serializer>(t: &GgmlType, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(t.name())
}

fn ser_opt_type<S: serde::Serializer>(t: &Option<GgmlType>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(t.name()),
        None => s.serialize_none(),
    }
}

impl TensorPlan {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// True when the data must be converted (not just copied).
    pub fn converts(&self) -> bool {
        self.src_type != self.dst_type
    }
}

/// The whole plan, tensors in the order they will be written.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    #[serde(serialize_with = "ser_ftype")]
    pub ftype: Ftype,
    pub tensors: Vec<TensorPlan>,
    pub src_bytes: u64,
    pub dst_bytes: u64,
    pub n_elements: u64,
    pub n_fallback: usize,
}

fn ser_ftype<S: serde::Serializer>(f: &Ftype, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(f.name())
}

impl Plan {
    /// Bits per weight of the planned tensors.
    pub fn bpw(&self) -> f64 {
        if self.n_elements == 0 {
            0.0
        } else {
            self.dst_bytes as f64 * 8.0 / self.n_elements as f64
        }
    }

    /// Count of tensors per destination type, most common first.
    pub fn type_counts(&self) -> Vec<(GgmlType, usize)> {
        let mut counts: Vec<(GgmlType, usize)> = Vec::new();
        for t in &self.tensors {
            match counts.iter_mut().find(|(ty, _)| *ty == t.dst_type) {
                Some(c) => c.1 += 1,
                None => counts.push((t.dst_type, 1)),
            }
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        counts
    }

    /// The plan as llama-quantize `--tensor-type` arguments (one per converted tensor), so
    /// llama.cpp users can reproduce it.
    pub fn as_tensor_type_args(&self) -> Vec<String> {
        self.tensors
            .iter()
            .filter(|t| t.converts() || t.reason != Reason::Kept)
            .map(|t| format!("--tensor-type ^{}$={}", regex::escape(&t.name), t.dst_type.name().to_lowercase()))
            .collect()
    }
}

/// Model facts from GGUF metadata (`{arch}.block_count` etc.).
pub fn model_facts(meta: &Metadata) -> ModelFacts {
    let arch = meta.architecture().unwrap_or("").to_string();
    let get = |k: &str| meta.get_u64(&format!("{arch}.{k}")).unwrap_or(0) as u32;
    let n_layer = get("block_count");
    ModelFacts {
        n_head: get("attention.head_count"),
        n_head_kv: meta
            .get_u64(&format!("{arch}.attention.head_count_kv"))
            .map(|v| v as u32)
            .unwrap_or_else(|| get("attention.head_count")),
        n_expert: get("expert_count"),
        is_70b: arch == "llama" && n_layer == 80,
        n_layer,
        arch,
    }
}

/// Plan the quantization of `tensors` (from a GGUF header with `meta`).
///
/// # Errors
/// A quantized input without `allow_requantize`, or a rule that cannot place a tensor.
pub fn build(meta: &Metadata, tensors: &[TensorInfo], opts: &QuantizeOptions) -> Result<Plan> {
    let facts = model_facts(meta);
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| rules::llama_order_key(&t.name));

    let mut st = RuleState {
        n_attention_wv: tensors
            .iter()
            .filter(|t| matches!(Category::of(&t.name), Category::AttnV | Category::AttnQkv | Category::AttnKvB))
            .count() as u32,
        has_tied_embeddings: !tensors.iter().any(|t| t.name == "output.weight"),
        has_imatrix: opts.has_imatrix,
        ..Default::default()
    };
    let default_type = opts.ftype.default_type();
    let mut out = Vec::with_capacity(order.len());
    let mut n_fallback = 0;
    for t in order {
        let row_len = t.row_len();
        let category = Category::of(&t.name);
        let candidate = rules::allows_quantization(&t.name, &t.dims, !opts.leave_output_tensor);
        let (mut dst, mut reason, mut wanted) = (t.ty, Reason::Kept, None);
        if candidate {
            if let (Some(ty), Category::TokenEmbd) = (opts.token_embedding_type, category) {
                dst = ty;
                reason = Reason::User;
            } else if let (Some(ty), Category::Output) = (opts.output_tensor_type, category) {
                dst = ty;
                reason = Reason::User;
            } else {
                dst = default_type;
                reason = Reason::Default;
                if default_type.is_quantized() {
                    let manual = opts.tensor_types.iter().find(|(re, _)| re.is_match(&t.name)).map(|(_, ty)| *ty);
                    if let Some(ty) = manual {
                        dst = ty;
                        reason = Reason::User;
                    } else if !opts.pure {
                        dst = rules::preset_type(
                            &mut st,
                            &facts,
                            opts.ftype,
                            &t.name,
                            row_len,
                            category,
                            opts.output_tensor_type,
                        )
                        .map_err(Error::Plan)?;
                        if dst != default_type {
                            reason = Reason::PresetRule;
                        }
                    }
                    match rules::fallback(dst, row_len) {
                        Some(f) if f != dst => {
                            wanted = Some(dst);
                            dst = f;
                            reason = Reason::Fallback;
                            n_fallback += 1;
                        }
                        Some(_) => {}
                        None => {
                            return Err(Error::Plan(format!(
                                "tensor {}: row length {row_len} does not fit {dst} and no fallback type exists",
                                t.name
                            )))
                        }
                    }
                }
            }
            if dst != t.ty && t.ty.is_quantized() && !opts.allow_requantize {
                return Err(Error::field(
                    "quantize.allow_requantize",
                    format!(
                        "tensor {} is already quantized ({}); requantizing loses quality, allow it to do it anyway",
                        t.name, t.ty
                    ),
                ));
            }
            if row_len % dst.block_size() as u64 != 0 {
                return Err(Error::Plan(format!(
                    "tensor {}: row length {row_len} is not a multiple of {dst}'s block size {}",
                    t.name,
                    dst.block_size()
                )));
            }
        }
        let dst_bytes = dst.tensor_size(row_len as usize, t.n_rows() as usize).unwrap_or(0) as u64;
        out.push(TensorPlan {
            name: t.name.clone(),
            dims: t.dims.clone(),
            src_type: t.ty,
            dst_type: dst,
            src_bytes: t.n_bytes(),
            dst_bytes,
            reason,
            wanted,
            requires_imatrix: candidate && rules::requires_imatrix(&t.name, dst, opts.ftype),
        });
    }
    let src_bytes = out.iter().map(|t| t.src_bytes).sum();
    let dst_bytes = out.iter().map(|t| t.dst_bytes).sum();
    let n_elements = out.iter().map(|t| t.n_elements()).sum();
    Ok(Plan { ftype: opts.ftype, tensors: out, src_bytes, dst_bytes, n_elements, n_fallback })
}

/// A plan that writes every tensor in the type `types` names for it (its own type when absent),
/// with llama.cpp's block-size fallback where the row length does not fit (F16 when none does):
/// a model kept in its types, or a reshaped one given its source types back.
pub fn with_types(tensors: &[TensorInfo], types: &std::collections::BTreeMap<String, GgmlType>, ftype: Ftype) -> Plan {
    let tensors: Vec<TensorPlan> = tensors
        .iter()
        .map(|t| {
            let want = types.get(&t.name).copied().unwrap_or(t.ty);
            let dst = if want == t.ty { Some(want) } else { rules::fallback(want, t.row_len()) };
            let dst = dst.unwrap_or(GgmlType::F16);
            let dst_bytes = dst.row_size(t.row_len() as usize).map_or(t.n_bytes(), |r| r as u64 * t.n_rows());
            TensorPlan {
                name: t.name.clone(),
                dims: t.dims.clone(),
                src_type: t.ty,
                dst_type: dst,
                src_bytes: t.n_bytes(),
                dst_bytes,
                reason: if dst == want { Reason::Kept } else { Reason::Fallback },
                wanted: (dst != want).then_some(want),
                requires_imatrix: false,
            }
        })
        .collect();
    Plan {
        ftype,
        src_bytes: tensors.iter().map(|t| t.src_bytes).sum(),
        dst_bytes: tensors.iter().map(|t| t.dst_bytes).sum(),
        n_elements: tensors.iter().map(|t| t.n_elements()).sum(),
        n_fallback: tensors.iter().filter(|t| t.reason == Reason::Fallback).count(),
        tensors,
    }
}
