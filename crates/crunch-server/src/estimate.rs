//! `POST /v1/estimate`: the size, bits per weight and memory of a quantization recipe for a GGUF
//! model, from the plan alone (`crunch::quantize::build_plan`, `crunch::fit::file_size`,
//! `crunch::fit::ram::estimate`); no tensor data is read and nothing is written.

use crate::error::ApiError;
use crate::paths::Roots;
use crunch::quantize::{Ftype, QuantizeOptions};
use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Parsed GGUF headers kept for estimates (a header with a large vocabulary takes a while to
/// parse; a dashboard or a script asks about the same few models again and again).
pub const CACHED_MODELS: usize = 4;

type Key = (u64, Option<SystemTime>);

/// The last few models estimated, keyed by path, size and modification time (a file replaced
/// in place is opened again).
#[derive(Default)]
pub struct HeaderCache(Mutex<Vec<(PathBuf, Key, Arc<GgufFile>)>>);

impl HeaderCache {
    fn open(&self, path: &Path) -> Result<Arc<GgufFile>, ApiError> {
        let key = std::fs::metadata(path).map(|m| (m.len(), m.modified().ok())).unwrap_or((0, None));
        {
            let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = c.iter().position(|(p, k, _)| p == path && *k == key) {
                let hit = c.remove(i);
                let file = hit.2.clone();
                c.push(hit);
                return Ok(file);
            }
        }
        let file = Arc::new(GgufFile::open(path).map_err(|e| {
            ApiError::field("model", format!("{}: not a GGUF model crunch can read: {e}", path.display()))
        })?);
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        c.retain(|(p, _, _)| p != path);
        c.push((path.to_path_buf(), key, file.clone()));
        if c.len() > CACHED_MODELS {
            c.remove(0);
        }
        Ok(file)
    }
}

/// A recipe for a model (the fields of a `quantize` job that change the plan).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EstimateRequest {
    /// A GGUF model inside a models folder (or the out folder).
    #[schema(value_type = String)]
    pub model: PathBuf,
    /// Preset or type, llama.cpp's names (`Q4_K_M`, `Q8_0`).
    #[serde(rename = "type")]
    pub ftype: String,
    /// `PATTERN=TYPE` rules, first match wins (regex on the tensor name).
    #[serde(default)]
    pub tensor_types: Vec<String>,
    #[serde(default)]
    pub output_tensor_type: Option<String>,
    #[serde(default)]
    pub token_embedding_type: Option<String>,
    #[serde(default)]
    pub leave_output_tensor: bool,
    #[serde(default)]
    pub pure: bool,
    /// Plan as if an importance matrix were given (a few preset rules change).
    #[serde(default)]
    pub imatrix: bool,
    /// Context length for the memory estimate.
    #[serde(default = "default_ctx")]
    pub ctx: usize,
    /// Include the per-tensor plan.
    #[serde(default)]
    pub tensors: bool,
}

fn default_ctx() -> usize {
    4096
}

/// Memory llama.cpp needs to run the model on the CPU.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RamView {
    /// The file (memory-mapped, all touched).
    pub weights: u64,
    /// F16 K and V for every layer and position.
    pub kv_cache: u64,
    /// Activations, attention scores, logits.
    pub compute: u64,
    pub overhead: u64,
    pub total: u64,
    pub n_ctx: usize,
}

/// What the recipe makes of the model.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Estimate {
    pub model: String,
    /// The preset.
    #[serde(rename = "type")]
    pub ftype: String,
    /// Exact size of the GGUF file the plan writes.
    pub file_bytes: u64,
    /// Bits per weight of the whole file.
    pub file_bpw: f64,
    /// Bytes of tensor data, and bits per weight of the tensors.
    pub tensor_bytes: u64,
    pub bpw: f64,
    /// Size of the input model's tensor data.
    pub src_bytes: u64,
    pub n_elements: u64,
    pub n_tensors: usize,
    /// Tensors converted (the rest are copied as they are).
    pub n_converted: usize,
    /// Tensors that fell back to another type (row length not a multiple of the block size).
    pub n_fallback: usize,
    /// Tensors whose type needs an importance matrix.
    pub n_requires_imatrix: usize,
    /// Tensor count per output type.
    pub types: BTreeMap<String, usize>,
    /// Memory at `ctx` tokens (absent for models crunch cannot size, with `ram_error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram: Option<RamView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram_error: Option<String>,
    /// The per-tensor plan (when asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub plan: Option<serde_json::Value>,
}

/// Parse the request, naming the field that is wrong.
///
/// # Errors
/// `400` naming the field.
pub fn parse(body: &[u8]) -> Result<EstimateRequest, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() { "estimate".to_string() } else { path };
        ApiError::field(field, e.into_inner().to_string())
    })
}

fn ty(field: &str, s: &str) -> Result<GgmlType, ApiError> {
    s.trim().parse::<GgmlType>().map_err(|e| ApiError::field(field, e.to_string()))
}

/// The estimate (blocking: opens the model's header).
///
/// # Errors
/// `403` for a model outside the folders, `400` for a wrong field or a file that is not GGUF.
pub fn estimate(roots: &Roots, cache: &HeaderCache, req: EstimateRequest) -> Result<Estimate, ApiError> {
    let path = roots.input("model", &req.model)?;
    let ftype: Ftype = req.ftype.parse().map_err(|e: String| ApiError::field("type", e))?;
    let mut opts = QuantizeOptions::new(ftype);
    // An estimate never refuses a quantized input: it says what requantizing it would give.
    opts.allow_requantize = true;
    opts.pure = req.pure;
    opts.leave_output_tensor = req.leave_output_tensor;
    opts.has_imatrix = req.imatrix;
    opts.output_tensor_type = req.output_tensor_type.as_deref().map(|s| ty("output_tensor_type", s)).transpose()?;
    opts.token_embedding_type =
        req.token_embedding_type.as_deref().map(|s| ty("token_embedding_type", s)).transpose()?;
    for (i, rule) in req.tensor_types.iter().enumerate() {
        let field = format!("tensor_types[{i}]");
        let (pattern, t) =
            rule.rsplit_once('=').ok_or_else(|| ApiError::field(&field, format!("{rule:?} is not PATTERN=TYPE")))?;
        let re = regex::Regex::new(pattern).map_err(|e| ApiError::field(&field, e.to_string()))?;
        opts.tensor_types.push((re, ty(&field, t)?));
    }
    let file = cache.open(&path)?;
    let plan = crunch::quantize::build_plan(file.metadata(), file.tensors(), &opts)
        .map_err(|e| ApiError::from_crunch(e, axum::http::StatusCode::BAD_REQUEST))?;
    let file_bytes = crunch::fit::file_size(&file, &plan)
        .map_err(|e| ApiError::from_crunch(e, axum::http::StatusCode::BAD_REQUEST))?;
    let (ram, ram_error) = match crunch::fit::ram::estimate(file.metadata(), file_bytes, req.ctx) {
        Ok(r) => (
            Some(RamView {
                weights: r.weights,
                kv_cache: r.kv_cache,
                compute: r.compute,
                overhead: r.overhead,
                total: r.total,
                n_ctx: r.n_ctx,
            }),
            None,
        ),
        Err(e) => (None, Some(e.to_string())),
    };
    let types = plan.type_counts().into_iter().map(|(t, n)| (t.name().to_string(), n)).collect();
    Ok(Estimate {
        model: path.display().to_string(),
        ftype: ftype.name().to_string(),
        file_bytes,
        file_bpw: if plan.n_elements == 0 { 0.0 } else { file_bytes as f64 * 8.0 / plan.n_elements as f64 },
        tensor_bytes: plan.dst_bytes,
        bpw: plan.bpw(),
        src_bytes: plan.src_bytes,
        n_elements: plan.n_elements,
        n_tensors: plan.tensors.len(),
        n_converted: plan.tensors.iter().filter(|t| t.converts()).count(),
        n_fallback: plan.n_fallback,
        n_requires_imatrix: plan.tensors.iter().filter(|t| t.requires_imatrix).count(),
        types,
        ram,
        ram_error,
        plan: if req.tensors { serde_json::to_value(&plan).ok() } else { None },
    })
}
