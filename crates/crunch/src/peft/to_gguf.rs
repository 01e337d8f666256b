//! A PEFT adapter folder to a GGUF LoRA adapter (`crunch convert DIR OUT --base BASE`).
//!
//! Every check runs in [`plan`], before a byte is written: the configuration (see
//! [`PeftConfig::parse`]), every tensor name (a LoRA `A` / `B` of a linear layer crunch maps), every
//! pair's shapes against the base and against the configuration's rank. [`write_gguf`] then reads
//! each pair, permutes the Q/K rows of `lora_B`, folds PEFT's per-module scale into `lora_B` where
//! it differs from llama.cpp's `alpha / r`, and writes the file atomically. The halves are held in
//! f32 until written (an adapter is a small fraction of its model).

use super::{module_to_gguf, BaseModel, PeftConfig, CONFIG_FILE, LORA_A, LORA_B, PREFIX, WEIGHTS_FILE};
use crate::convert::{ConvertReport, MappingRow};
use crate::error::{Error, Result};
use crate::memory::{self, AnonPeak};
use crate::progress::{Cancel, Progress};
use crunch_core::hf::{permute, HfError};
use crunch_core::safetensors::{self as st, Dtype, SafetensorsModel};
use crunch_core::GgmlType;
use crunch_model::lora::{self, LoraTensor};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One adapted weight, planned.
#[derive(Clone, Debug)]
pub struct PeftPair {
    /// Hugging Face module path (`model.layers.0.self_attn.q_proj`).
    pub module: String,
    /// The GGUF weight it adapts (`blk.0.attn_q.weight`).
    pub gguf: String,
    pub a: st::TensorInfo,
    pub b: st::TensorInfo,
    pub rank: usize,
    pub n_in: usize,
    pub n_out: usize,
    /// `lora_B`'s rows are permuted with this many heads (Llama Q/K).
    pub permute_heads: Option<usize>,
    /// `lora_B` is multiplied by this: PEFT's scale of the module over llama.cpp's `alpha / rank`
    /// (1: written as read).
    pub b_factor: f64,
}

/// What the dry run shows beside the tensor rows.
#[derive(Clone, Debug, Serialize)]
pub struct AdapterSummary {
    /// The base model read.
    pub base: String,
    /// `adapter.lora.alpha` written (`lora_alpha`).
    pub alpha: f32,
    /// Adapted weights.
    pub pairs: usize,
    /// Ranks found, ascending.
    pub ranks: Vec<usize>,
    /// Modules whose `lora_B` takes PEFT's different scale (`alpha_pattern`, rsLoRA).
    pub rescaled: Vec<String>,
}

/// Everything decided before the adapter is written.
pub struct AdapterPlan {
    pub dir: PathBuf,
    pub base: BaseModel,
    pub config: PeftConfig,
    /// `adapter.lora.alpha`.
    pub alpha: f32,
    /// Type of every tensor written.
    pub ty: GgmlType,
    /// In the base's tensor order.
    pub pairs: Vec<PeftPair>,
    model: SafetensorsModel,
}

fn tensor_err(name: &str, msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("tensor {name}: {msg}"))
}

fn shape(t: &st::TensorInfo) -> String {
    t.shape_string()
}

/// Types an adapter can be written in, by the convert job's `type` names.
pub fn parse_type(name: &str) -> Option<Option<GgmlType>> {
    match name.to_ascii_lowercase().as_str() {
        "auto" => Some(None),
        "f32" => Some(Some(GgmlType::F32)),
        "f16" => Some(Some(GgmlType::F16)),
        "bf16" => Some(Some(GgmlType::BF16)),
        "q8_0" => Some(Some(GgmlType::Q8_0)),
        _ => None,
    }
}

/// Plan the conversion of the PEFT folder `dir` against `base`; `ty` is the type of the written
/// tensors (`None`: the safetensors dtype, F32 if the tensors have several).
///
/// # Errors
/// A missing file, what [`PeftConfig::parse`] refuses, a tensor that is not a LoRA half of a
/// linear layer crunch maps (embedding adapters, DoRA magnitudes and biases named as such), a half
/// without its other half, shapes that do not fit the base or the configuration's rank (naming the
/// tensor and both shapes), dtypes other than F32/F16/BF16, Q8_0 with a rank or width that is not
/// a multiple of 32.
pub fn plan(dir: &Path, base: BaseModel, ty: Option<GgmlType>) -> Result<AdapterPlan> {
    let config = PeftConfig::read(&dir.join(CONFIG_FILE))?;
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.is_file() {
        let bin = if dir.join("adapter_model.bin").is_file() {
            " (adapter_model.bin is a pickle, which crunch does not read: save the adapter with safe_serialization=True)"
        } else {
            ""
        };
        return Err(Error::Invalid(format!("{}: missing {WEIGHTS_FILE}{bin}", dir.display())));
    }
    let model = SafetensorsModel::open(&weights)?;
    let arch = base.arch;

    // Every tensor named, mapped and paired.
    let mut halves: HashMap<String, (String, Option<st::TensorInfo>, Option<st::TensorInfo>)> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for t in model.tensors() {
        let name = t.name.as_str();
        let rest = name.strip_prefix(PREFIX).ok_or_else(|| {
            tensor_err(name, format!("not a PEFT LoRA tensor (names are {PREFIX}<module>{LORA_A} / {LORA_B})"))
        })?;
        if rest.contains("lora_embedding_A") || rest.contains("lora_embedding_B") {
            return Err(tensor_err(
                name,
                "an embedding adapter (lora_embedding_A/B): crunch converts adapters of linear layers only",
            ));
        }
        if rest.contains("lora_magnitude_vector") {
            return Err(tensor_err(name, "a DoRA magnitude vector, which a GGUF LoRA adapter cannot hold"));
        }
        let (module, is_a) = if let Some(m) = rest.strip_suffix(LORA_A) {
            (m, true)
        } else if let Some(m) = rest.strip_suffix(LORA_B) {
            (m, false)
        } else if rest.ends_with(".lora_B.bias") {
            return Err(tensor_err(name, "a bias of lora_B (lora_bias), which a GGUF LoRA adapter cannot hold"));
        } else {
            return Err(tensor_err(
                name,
                format!("not a LoRA half ({PREFIX}<module>{LORA_A} / {LORA_B}); crunch converts LoRA A/B pairs only"),
            ));
        };
        let (gguf, _) = module_to_gguf(arch, module).ok_or_else(|| {
            tensor_err(
                name,
                format!(
                    "module {module} is no linear layer of a {} model crunch maps to GGUF (attention and MLP projections, lm_head)",
                    arch.hf_name()
                ),
            )
        })?;
        if t.dtype.ggml_type().is_none() {
            return Err(HfError::UnsupportedDtype { tensor: t.name.clone(), dtype: t.dtype.to_string() }.into());
        }
        if t.shape.len() != 2 {
            return Err(tensor_err(name, format!("shape {}, a LoRA half is 2-D", shape(t))));
        }
        let e = halves.entry(gguf.clone()).or_insert_with(|| {
            order.push(gguf);
            (module.to_string(), None, None)
        });
        if is_a {
            e.1 = Some(t.clone());
        } else {
            e.2 = Some(t.clone());
        }
    }
    if halves.is_empty() {
        return Err(Error::Invalid(format!("{}: no LoRA tensors", weights.display())));
    }

    let alpha = config.lora_alpha as f32;
    let mut pairs = Vec::with_capacity(halves.len());
    for gguf in order {
        let (module, a, b) = halves.remove(&gguf).expect("every name in order has an entry");
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (Some(a), None) => {
                return Err(tensor_err(&a.name, format!("has no {}", super::tensor_name(&module, false))))
            }
            (None, Some(b)) => {
                return Err(tensor_err(&b.name, format!("has no {}", super::tensor_name(&module, true))))
            }
            (None, None) => unreachable!("an entry is made for a tensor"),
        };
        let (_, id) = module_to_gguf(arch, &module).expect("mapped above");
        let (n_in, n_out) = base.shape(&gguf).ok_or_else(|| {
            tensor_err(
                &a.name,
                format!(
                    "adapts {module} ({gguf}), which the base {} does not have (another base model?)",
                    base.path.display()
                ),
            )
        })?;
        let (rank, a_in) = (a.shape[0] as usize, a.shape[1] as usize);
        let (b_out, b_rank) = (b.shape[0] as usize, b.shape[1] as usize);
        let fit = format!(
            "the base's {gguf} ({module}) is [{n_out}, {n_in}] ([out_features, in_features]), so lora_A must be [r, {n_in}] and lora_B [{n_out}, r]"
        );
        if a_in != n_in {
            return Err(tensor_err(&a.name, format!("shape {} does not fit the base: {fit}", shape(&a))));
        }
        if b_out != n_out {
            return Err(tensor_err(&b.name, format!("shape {} does not fit the base: {fit}", shape(&b))));
        }
        if b_rank != rank || rank == 0 {
            return Err(tensor_err(
                &b.name,
                format!(
                    "shape {} does not pair with {} of shape {} (lora_A is [r, in], lora_B [out, r])",
                    shape(&b),
                    a.name,
                    shape(&a)
                ),
            ));
        }
        let want = config.rank_of(&module);
        if want != rank {
            return Err(tensor_err(
                &a.name,
                format!(
                    "shape {} has rank {rank}, {CONFIG_FILE} gives {module} rank {want} (r / rank_pattern); PEFT could not load it either",
                    shape(&a)
                ),
            ));
        }
        let permute_heads = base.permute_heads(id);
        if let Some(h) = permute_heads {
            if h == 0 || !n_out.is_multiple_of(h) || !(n_out / h).is_multiple_of(2) {
                return Err(tensor_err(&b.name, format!("{n_out} rows do not split into {h} heads of an even size")));
            }
        }
        // PEFT: scaling · B A. llama.cpp: alpha / rank · B A (1 · B A when alpha is 0).
        let b_factor = if alpha == 0.0 {
            config.scaling(&module, rank)
        } else {
            let alpha_t = config.alpha_of(&module);
            let f = if alpha_t == config.lora_alpha { 1.0 } else { alpha_t / config.lora_alpha };
            if config.use_rslora {
                f * (rank as f64).sqrt()
            } else {
                f
            }
        };
        pairs.push(PeftPair { module, gguf, a, b, rank, n_in, n_out, permute_heads, b_factor });
    }
    pairs.sort_by_key(|p| base.position(&p.gguf));

    let ty = match ty {
        Some(t) => t,
        None => {
            let mut dtypes = pairs.iter().flat_map(|p| [p.a.dtype, p.b.dtype]);
            let first = dtypes.next().unwrap_or(Dtype::F32);
            if dtypes.all(|d| d == first) {
                first.ggml_type().unwrap_or(GgmlType::F32)
            } else {
                GgmlType::F32
            }
        }
    };
    if !lora::WRITE_TYPES.contains(&ty) {
        return Err(Error::field(
            "convert.type",
            format!("an adapter is written as auto, f32, f16, bf16 or q8_0, not {ty}"),
        ));
    }
    for p in &pairs {
        for (row, what) in [(p.n_in, "in_features"), (p.rank, "rank")] {
            if !row.is_multiple_of(ty.block_size()) {
                return Err(Error::field(
                    "convert.type",
                    format!(
                        "{}: {what} {row} is not a multiple of {}'s block of {}; write the adapter as f32, f16 or bf16",
                        p.module,
                        ty.name(),
                        ty.block_size()
                    ),
                ));
            }
        }
    }
    Ok(AdapterPlan { dir: dir.to_path_buf(), base, config, alpha, ty, pairs, model })
}

impl AdapterPlan {
    /// The GGUF tensors in write order, each beside the PEFT tensor it comes from.
    pub fn rows(&self) -> Vec<MappingRow> {
        let mut v = Vec::with_capacity(2 * self.pairs.len());
        for p in &self.pairs {
            for (t, suffix) in [(&p.a, lora::LORA_A), (&p.b, lora::LORA_B)] {
                let (row, n_rows) = (t.shape[1] as usize, t.shape[0] as usize);
                v.push(MappingRow {
                    hf_name: t.name.clone(),
                    gguf_name: format!("{}{suffix}", p.gguf),
                    shape: t.shape.clone(),
                    dtype: t.dtype.to_string(),
                    ty: self.ty.name().to_string(),
                    bytes: self.ty.tensor_size(row, n_rows).unwrap_or(0) as u64,
                });
            }
        }
        v
    }

    pub fn summary(&self) -> AdapterSummary {
        let mut ranks: Vec<usize> = self.pairs.iter().map(|p| p.rank).collect();
        ranks.sort_unstable();
        ranks.dedup();
        AdapterSummary {
            base: self.base.path.display().to_string(),
            alpha: self.alpha,
            pairs: self.pairs.len(),
            ranks,
            rescaled: self.pairs.iter().filter(|p| p.b_factor != 1.0).map(|p| p.module.clone()).collect(),
        }
    }

    /// Parameters of the adapter.
    pub fn n_params(&self) -> u64 {
        self.pairs.iter().map(|p| (p.rank * (p.n_in + p.n_out)) as u64).sum()
    }

    /// Bytes of tensor data read.
    pub fn src_bytes(&self) -> u64 {
        self.pairs.iter().map(|p| p.a.n_bytes() + p.b.n_bytes()).sum()
    }

    /// Bytes of tensor data written.
    pub fn dst_bytes(&self) -> u64 {
        self.rows().iter().map(|r| r.bytes).sum()
    }

    /// The files read (to refuse writing over one).
    pub fn inputs(&self) -> Vec<PathBuf> {
        vec![self.model.path().to_path_buf(), self.config.path.clone(), self.base.path.clone()]
    }

    /// A pair's halves as written: `A` as stored, `B` with its rows permuted and its scale folded.
    fn pair_values(&self, p: &PeftPair) -> Result<LoraTensor> {
        let a = st::decode_f32(&p.a, self.model.data(&p.a.name)?)?;
        let raw_b = self.model.data(&p.b.name)?;
        let mut permuted = Vec::new();
        let raw_b = match p.permute_heads {
            Some(h) => {
                permute::permute(raw_b, p.n_out, h, &mut permuted).map_err(|e| tensor_err(&p.b.name, e))?;
                &permuted[..]
            }
            None => raw_b,
        };
        let mut b = st::decode_f32(&p.b, raw_b)?;
        if p.b_factor != 1.0 {
            let f = p.b_factor as f32;
            b.iter_mut().for_each(|x| *x *= f);
        }
        Ok(LoraTensor { base: p.gguf.clone(), rank: p.rank, n_in: p.n_in, n_out: p.n_out, a, b })
    }
}

/// Write the planned adapter to `output` (atomically, with its `.sha256`); its metadata is exactly
/// [`lora::adapter_metadata`] for the base's architecture and `lora_alpha`.
///
/// # Errors
/// I/O, cancellation; nothing is left at `output` on error.
pub fn write_gguf(
    plan: &AdapterPlan,
    output: &Path,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<ConvertReport> {
    let t0 = Instant::now();
    let anon = AnonPeak::default();
    let total = plan.src_bytes();
    progress.start("convert", total);
    let mut tensors = Vec::with_capacity(plan.pairs.len());
    let mut done = 0u64;
    for p in &plan.pairs {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        tensors.push(plan.pair_values(p)?);
        anon.sample();
        plan.model.release_tensor(&p.a.name);
        plan.model.release_tensor(&p.b.name);
        done += p.a.n_bytes() + p.b.n_bytes();
        progress.advance(done, &format!("{} -> {}", p.module, p.gguf));
    }
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    let meta = lora::adapter_metadata(plan.base.arch.gguf_name(), plan.alpha);
    let sha256 = lora::write_adapter(output, meta, plan.ty, &tensors)
        .map_err(|source| Error::Model { context: format!("writing {}", output.display()), source })?;
    let file_bytes = std::fs::metadata(output).map_err(|e| Error::io(output, e))?.len();
    let seconds = t0.elapsed().as_secs_f64();
    progress.finish(&format!("wrote {}", output.display()));
    Ok(ConvertReport {
        output: output.display().to_string(),
        sha256,
        ftype: plan.ty.name().to_string(),
        tensors: 2 * plan.pairs.len(),
        src_bytes: total,
        file_bytes,
        seconds,
        read_mb_per_s: total as f64 / 1e6 / seconds.max(1e-9),
        peak_rss_bytes: memory::status().map(|s| s.peak_rss).unwrap_or(0),
        peak_anon_bytes: anon.get(),
        quantized: Vec::new(),
    })
}
