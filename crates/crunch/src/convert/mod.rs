//! `crunch convert`: a Hugging Face folder (config, tokenizer, safetensors) to a GGUF file that
//! llama.cpp loads, written the way llama.cpp's `convert_hf_to_gguf.py` writes it, optionally
//! quantized in the same pass.
//!
//! Key decisions:
//! - **Streaming**: the shards are memory-mapped and every tensor is converted (and quantized) on its
//!   own, then written and its pages released, so memory stays near the largest tensor.
//! - **One pass = two passes**: with a quantization preset, every tensor is first brought to the
//!   type `convert --type <source dtype>` would write (F32/F16/BF16 as in the checkpoint, no
//!   rounding), and that file's metadata and tensors are then handed to the same plan and the same
//!   per-tensor code as `crunch quantize`. The result is byte for byte the file that converting to
//!   the source's float type and then quantizing gives.

pub mod naming;
pub mod pretok;
pub mod provenance;
pub mod quantized;
pub mod spm;
pub mod vocab;

use crate::error::{Error, Result};
use crate::memory::{self, AnonPeak};
use crate::progress::{Cancel, Progress};
use crate::quantize::{self, Ftype, Plan, QuantizeOptions};
use crunch_core::gguf::{GgufWriter, Metadata, TensorInfo, TensorSpec, Value};
use crunch_core::hf::names::{self, Mapped, Part, Role, TensorId};
use crunch_core::hf::{params, permute, HfArch, HfConfig, HfError, ModelCard};
use crunch_core::safetensors::{Dtype, SafetensorsModel};
use crunch_core::GgmlType;
use pretok::PreSource;
use serde::Serialize;
use serde_json::Value as Json;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// `quantize.ftype` F32, F16 or BF16 converts; any other preset converts and then quantizes
    /// with these options (as `crunch quantize` would).
    pub quantize: QuantizeOptions,
    /// Pre-tokenizer name to write instead of the detected one (`--pre`).
    pub pre: Option<String>,
    /// `general.name` to write instead of the one found in the folder.
    pub name: Option<String>,
    /// A quantized checkpoint's weights go to the GGUF type that holds them without requantizing
    /// ([`quantized::exact_route`]) instead of the float `quantize.ftype` (what `--type auto` does).
    pub keep_quantized: bool,
}

impl ConvertOptions {
    pub fn new(ftype: Ftype) -> Self {
        ConvertOptions { quantize: QuantizeOptions::new(ftype), pre: None, name: None, keep_quantized: false }
    }
}

/// One output tensor.
#[derive(Clone, Debug, Serialize)]
pub struct TensorConv {
    /// Name in the checkpoint (empty for a generated tensor such as `rope_freqs.weight`).
    pub hf_name: String,
    pub gguf_name: String,
    /// Shape in the checkpoint (PyTorch order).
    pub hf_shape: Vec<u64>,
    /// Checkpoint dtype (`F32`, `F16`, `BF16`).
    pub dtype: String,
    #[serde(serialize_with = "ser_type")]
    pub src_type: GgmlType,
    /// The type `convert --type <float>` writes (before any quantization).
    #[serde(serialize_with = "ser_type")]
    pub base_type: GgmlType,
    /// ggml order (row length first).
    pub dims: Vec<u64>,
    /// Q/K rows are permuted with this many heads.
    pub permute_heads: Option<u32>,
    /// Added to every value (llama.cpp's `+1` on Gemma 3's norm weights; 0 for other tensors).
    #[serde(skip_serializing_if = "is_zero")]
    pub shift: f32,
    #[serde(skip)]
    generated: Option<Vec<u8>>,
    /// A weight stored quantized (index in the plan's quantized weights): decoded when written.
    #[serde(skip)]
    quantized: Option<usize>,
}

fn is_zero(x: &f32) -> bool {
    *x == 0.0
}

fn ser_type<S: serde::Serializer>(t: &GgmlType, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(t.name())
}

/// The tokenizer found.
#[derive(Clone, Debug, Serialize)]
pub struct VocabSummary {
    pub model: String,
    pub n_tokens: usize,
    pub pre: Option<String>,
    pub pre_source: Option<PreSource>,
    pub pre_hash: Option<String>,
}

/// Everything decided before a byte of tensor data is read.
pub struct ConvertPlan {
    pub dir: PathBuf,
    pub config: HfConfig,
    model: SafetensorsModel,
    /// The quantized weights of a GPTQ, AWQ, compressed-tensors or bitsandbytes checkpoint.
    pub quantized: Option<quantized::QuantCheckpoint>,
    /// In checkpoint order (the order of a float conversion).
    pub tensors: Vec<TensorConv>,
    /// The metadata of the float conversion (before quantization).
    pub base_metadata: Metadata,
    /// The metadata written.
    pub metadata: Metadata,
    /// The float file type the tensors are first brought to.
    pub base_ftype: Ftype,
    pub ftype: Ftype,
    /// The quantization plan, for presets (its order is the write order).
    pub quant: Option<Plan>,
    pub vocab: VocabSummary,
    pub total_params: u64,
}

/// How a quantized checkpoint's weight was written.
#[derive(Clone, Debug, Serialize)]
pub struct RouteNote {
    pub tensor: String,
    /// The checkpoint's format (`gptq 4-bit (V1 zeros)`, ...).
    pub from: String,
    /// The GGUF type written.
    pub to: String,
    /// The largest difference from the checkpoint's exact values the written base type holds
    /// before any further quantization (0: exact); none when the values were requantized.
    pub max_abs_error: Option<f32>,
}

/// What a finished conversion reports.
#[derive(Clone, Debug, Serialize)]
pub struct ConvertReport {
    pub output: String,
    pub sha256: String,
    pub ftype: String,
    pub tensors: usize,
    pub src_bytes: u64,
    pub file_bytes: u64,
    pub seconds: f64,
    /// Checkpoint bytes read per second.
    pub read_mb_per_s: f64,
    /// Peak resident set (`VmHWM`), counting resident pages of the mapped inputs.
    pub peak_rss_bytes: u64,
    /// Peak anonymous memory sampled after each tensor (the memory crunch allocates).
    pub peak_anon_bytes: u64,
    /// Each quantized weight of a GPTQ/AWQ/compressed-tensors/bitsandbytes checkpoint: the type it
    /// went to and the error that added.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quantized: Vec<RouteNote>,
}

/// Hyper-parameters needed for shape checks.
struct Dims {
    hidden: u64,
    head_dim: u64,
    ff: u64,
    q_rows: u64,
    kv_rows: u64,
    vocab: Option<u64>,
    n_ctx: Option<u64>,
    type_vocab: u64,
}

impl Dims {
    fn of(cfg: &HfConfig) -> Result<Self> {
        let hd = cfg.head_dim()? as u64;
        Ok(Dims {
            hidden: cfg.hidden_size()? as u64,
            head_dim: hd,
            ff: cfg.ff_size()? as u64,
            q_rows: cfg.n_head()? as u64 * hd,
            kv_rows: cfg.n_head_kv()? as u64 * hd,
            vocab: cfg.vocab_size()?.map(u64::from),
            n_ctx: cfg.find_u32(crunch_core::hf::config::keys::CONTEXT)?.map(u64::from),
            type_vocab: cfg.find_u32(&["type_vocab_size"])?.unwrap_or(1) as u64,
        })
    }

    /// Expected shape (PyTorch order); `None` entries are not checked.
    fn expected(&self, arch: HfArch, id: TensorId) -> Vec<Option<u64>> {
        let (h, ff) = (Some(self.hidden), Some(self.ff));
        let bert = arch == HfArch::Bert;
        let (q, kv) = if bert { (h, h) } else { (Some(self.q_rows), Some(self.kv_rows)) };
        let w = id.part == Part::Weight;
        let mat = |rows: Option<u64>, cols: Option<u64>| if w { vec![rows, cols] } else { vec![rows] };
        match id.role {
            Role::TokenEmbd | Role::Output => vec![self.vocab, h],
            Role::PosEmbd => vec![self.n_ctx, h],
            Role::TokenTypes => vec![Some(self.type_vocab), h],
            Role::EmbdNorm
            | Role::OutputNorm
            | Role::AttnNorm
            | Role::FfnNorm
            | Role::AttnOutNorm
            | Role::LayerOutNorm
            | Role::PostAttnNorm
            | Role::PostFfwNorm => {
                vec![h]
            }
            Role::AttnQNorm | Role::AttnKNorm => vec![Some(self.head_dim)],
            Role::AttnQ => mat(q, h),
            Role::AttnK | Role::AttnV => mat(kv, h),
            Role::AttnOut => mat(h, q),
            Role::FfnGate | Role::FfnUp => mat(ff, h),
            Role::FfnDown => mat(h, ff),
        }
    }
}

fn ggml_of(dtype: Dtype) -> Option<GgmlType> {
    dtype.ggml_type()
}

/// The type llama.cpp's converter gives a tensor for a float file type (`target`), or, for a
/// quantized target, the checkpoint's own float type.
fn base_type(gguf: &str, role: Role, n_dims: usize, target: Ftype, src: GgmlType) -> GgmlType {
    if n_dims <= 1
        || gguf.ends_with("_norm.weight")
        || matches!(role, Role::PosEmbd | Role::TokenTypes)
        || !gguf.ends_with(".weight")
    {
        return GgmlType::F32;
    }
    match target {
        Ftype::F32 => GgmlType::F32,
        Ftype::F16 => GgmlType::F16,
        Ftype::BF16 => GgmlType::BF16,
        _ => src,
    }
}

fn is_float_target(f: Ftype) -> bool {
    matches!(f, Ftype::F32 | Ftype::F16 | Ftype::BF16)
}

/// llama.cpp's `rope_freqs.weight` for Llama 3.1-style RoPE scaling (`rope_type: llama3`).
fn llama3_rope_freqs(cfg: &HfConfig) -> Result<Option<Vec<f32>>> {
    let rp = cfg.rope_parameters();
    if rp.get("rope_type").and_then(Json::as_str).map(str::to_lowercase).as_deref() != Some("llama3") {
        return Ok(None);
    }
    let num = |k: &str, d: f64| rp.get(k).and_then(Json::as_f64).unwrap_or(d);
    let base = num("rope_theta", 10000.0) as f32;
    let dim = cfg.head_dim()? as usize;
    let factor = num("factor", 8.0) as f32;
    let low = num("low_freq_factor", 1.0) as f32;
    let high = num("high_freq_factor", 4.0) as f32;
    let old_ctx = num("original_max_position_embeddings", 8192.0) as f32;
    let low_wavelen = old_ctx / low;
    let high_wavelen = old_ctx / high;
    let out = (0..dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0f32 / base.powf(i as f32 / dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect();
    Ok(Some(out))
}

fn read_optional_obj(path: &Path) -> Result<serde_json::Map<String, Json>> {
    if !path.is_file() {
        return Ok(Default::default());
    }
    // llama.cpp ignores a generation_config.json it cannot parse; so does crunch.
    match params::read_json(path) {
        Ok(Json::Object(m)) => Ok(m),
        Ok(_) | Err(_) => {
            tracing::warn!("{}: not a JSON object, ignored", path.display());
            Ok(Default::default())
        }
    }
}

/// Plan the conversion of the Hugging Face folder `dir`.
///
/// # Errors
/// Missing files, an unsupported architecture, tensors that do not match `config.json` (unknown
/// names, wrong shapes, missing layers), unsupported dtypes, an unrecognised tokenizer.
pub fn plan(dir: &Path, opts: &ConvertOptions) -> Result<ConvertPlan> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    if !meta.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is not a folder (a Hugging Face model folder is expected)",
            dir.display()
        )));
    }
    let cfg_path = dir.join("config.json");
    if !cfg_path.is_file() {
        return Err(HfError::MissingFile {
            dir: dir.into(),
            file: "config.json".into(),
            why: "it names the architecture and its hyper-parameters".into(),
        }
        .into());
    }
    let cfg = HfConfig::from_file(&cfg_path)?;
    let arch = cfg.arch;
    let n_layer = cfg.block_count()?;
    let dims = Dims::of(&cfg)?;
    let model = SafetensorsModel::open(dir)?;
    let ftype = opts.quantize.ftype;
    let qck = quantized::scan(&cfg.raw, &model)?;

    let mut tensors: Vec<TensorConv> = Vec::new();
    if arch == HfArch::Llama {
        if let Some(f) = llama3_rope_freqs(&cfg)? {
            let n = f.len() as u64;
            let ty = GgmlType::F32;
            tensors.push(TensorConv {
                hf_name: String::new(),
                gguf_name: "rope_freqs.weight".into(),
                hf_shape: vec![n],
                dtype: "F32".into(),
                src_type: ty,
                base_type: ty,
                dims: vec![n],
                permute_heads: None,
                shift: 0.0,
                generated: Some(f.iter().flat_map(|x| x.to_le_bytes()).collect()),
                quantized: None,
            });
        }
    }
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut found: Vec<TensorId> = Vec::new();
    // Quantized weights stand in for the tensor sets holding them, as F32 sources.
    let virtual_weights: Vec<crunch_core::safetensors::TensorInfo> = qck
        .iter()
        .flat_map(|q| &q.weights)
        .map(|w| crunch_core::safetensors::TensorInfo {
            name: w.hf_name(),
            dtype: Dtype::F32,
            shape: w.shape.to_vec(),
            data_offsets: (0, 0),
            shard: 0,
        })
        .collect();
    let consumed = qck.as_ref().map(|q| &q.consumed);
    let sources =
        model.tensors().iter().filter(|t| !consumed.is_some_and(|c| c.contains(&t.name))).chain(&virtual_weights);
    for t in sources {
        let qidx = qck
            .as_ref()
            .and_then(|q| q.weights.iter().position(|w| w.hf_name() == t.name && w.shape.as_slice() == t.shape));
        let (gguf, id) = match names::hf_to_gguf(arch, &t.name) {
            None => return Err(HfError::UnmappedTensor { tensor: t.name.clone(), arch: cfg.hf_arch.clone() }.into()),
            Some(Mapped::Skip) => continue,
            Some(Mapped::Tensor { gguf, id }) => (gguf, id),
        };
        let src_type = ggml_of(t.dtype)
            .ok_or_else(|| HfError::UnsupportedDtype { tensor: t.name.clone(), dtype: t.dtype.to_string() })?;
        if let Some(l) = id.layer {
            if l >= n_layer {
                return Err(HfError::ShapeMismatch {
                    tensor: t.name.clone(),
                    found: t.shape.clone(),
                    expected: vec![],
                    why: format!("layer {l} does not exist: config.json has {n_layer} layers"),
                }
                .into());
            }
        }
        let want = dims.expected(arch, id);
        let fits = want.len() == t.shape.len() && want.iter().zip(&t.shape).all(|(w, s)| w.is_none_or(|w| w == *s));
        if !fits {
            return Err(HfError::ShapeMismatch {
                tensor: t.name.clone(),
                found: t.shape.clone(),
                expected: want.iter().map(|w| w.unwrap_or(0)).collect(),
                why: format!("{} from hidden_size, intermediate_size, heads, vocab_size", id_label(id)),
            }
            .into());
        }
        if let Some(prev) = seen.insert(gguf.clone(), t.name.clone()) {
            return Err(Error::Invalid(format!("tensors {prev:?} and {:?} both map to {gguf}", t.name)));
        }
        let permute_heads = match (arch.permutes_qk(), id.role) {
            (true, Role::AttnQ) => Some(cfg.n_head()?),
            (true, Role::AttnK) => Some(cfg.n_head_kv()?),
            _ => None,
        };
        found.push(id);
        let mut base = base_type(&gguf, id.role, t.shape.len(), ftype, src_type);
        let mut dtype = t.dtype.to_string();
        if let (Some(i), Some(q)) = (qidx, &qck) {
            let w = &q.weights[i];
            dtype = w.kind.label();
            if opts.keep_quantized {
                base = w.route(&model)?;
            }
        }
        tensors.push(TensorConv {
            hf_name: t.name.clone(),
            gguf_name: gguf,
            hf_shape: t.shape.clone(),
            dtype,
            src_type,
            base_type: base,
            dims: t.ggml_dims(),
            permute_heads,
            shift: arch.norm_shift(&t.name),
            generated: None,
            quantized: qidx,
        });
    }
    let missing: Vec<String> = names::required(arch, n_layer)
        .into_iter()
        .filter(|id| !found.contains(id))
        .map(|id| names::hf_name(arch, id))
        .collect();
    if !missing.is_empty() {
        let n = missing.len();
        let mut shown: Vec<String> = missing.into_iter().take(8).collect();
        if n > shown.len() {
            shown.push(format!("and {} more", n - shown.len()));
        }
        return Err(
            HfError::MissingTensors { tensors: shown, why: format!("{} with {n_layer} layers", cfg.hf_arch) }.into()
        );
    }

    let vocab = vocab::tokenizer_metadata(dir, &cfg, opts.pre.as_deref())?;
    if let Some(emb) = tensors.iter().find(|t| t.gguf_name == "token_embd.weight") {
        if emb.hf_shape[0] != vocab.n_tokens as u64 {
            return Err(Error::Invalid(format!(
                "the tokenizer has {} tokens but {} has {} rows; llama.cpp needs them equal",
                vocab.n_tokens, emb.hf_name, emb.hf_shape[0]
            )));
        }
    }
    let total_params: u64 = tensors.iter().map(|t| t.hf_shape.iter().product::<u64>()).sum();

    // The float type of the checkpoint's matrices, for the file a preset quantizes from.
    let base_ftype = if opts.keep_quantized && qck.is_some() {
        // general.file_type of a file holding a quantized checkpoint as it is: its main type.
        let mut count: HashMap<GgmlType, u64> = HashMap::new();
        for t in tensors.iter().filter(|t| t.quantized.is_some()) {
            *count.entry(t.base_type).or_default() += t.hf_shape.iter().product::<u64>();
        }
        match count.into_iter().max_by_key(|(ty, n)| (*n, ty.code())).map(|(t, _)| t) {
            Some(GgmlType::Q4_0) => Ftype::Q4_0,
            Some(GgmlType::Q4_1) => Ftype::Q4_1,
            Some(GgmlType::Q8_0) => Ftype::Q8_0,
            _ => ftype,
        }
    } else if is_float_target(ftype) {
        ftype
    } else {
        let mut count: HashMap<GgmlType, usize> = HashMap::new();
        for t in tensors.iter().filter(|t| t.base_type != GgmlType::F32 || t.hf_shape.len() >= 2) {
            *count.entry(t.base_type).or_default() += 1;
        }
        match count.into_iter().max_by_key(|(ty, n)| (*n, ty.code())).map(|(t, _)| t) {
            Some(GgmlType::F16) => Ftype::F16,
            Some(GgmlType::BF16) => Ftype::BF16,
            _ => Ftype::F32,
        }
    };

    let card_path = dir.join("README.md");
    let card = if card_path.is_file() {
        ModelCard::parse(&std::fs::read_to_string(&card_path).map_err(|e| Error::io(&card_path, e))?)
    } else {
        ModelCard::default()
    };
    let generation = read_optional_obj(&dir.join("generation_config.json"))?;
    let mut md = Metadata::default();
    md.set("general.architecture", Value::string(arch.gguf_name()));
    md.set("general.type", Value::string("model"));
    for (k, v) in provenance::general_metadata(dir, &cfg.raw, &card, &generation, total_params, opts.name.as_deref()) {
        md.set(&k, v);
    }
    let pooling = match arch {
        HfArch::Bert | HfArch::Qwen2 => params::pooling_type(dir)?,
        HfArch::Llama | HfArch::Gemma3 => None,
    };
    for (k, v) in params::gguf_params(&cfg, pooling, base_ftype.code())? {
        md.set(&k, v);
    }
    md.set("general.quantization_version", Value::U32(2));
    for (k, v) in &vocab.entries {
        md.set(k, v.clone());
    }

    let (metadata, quant) = if is_float_target(ftype) {
        (md.clone(), None)
    } else {
        let infos: Vec<TensorInfo> = tensors
            .iter()
            .map(|t| TensorInfo { name: t.gguf_name.clone(), dims: t.dims.clone(), ty: t.base_type, offset: 0 })
            .collect();
        let p = quantize::build_plan(&md, &infos, &opts.quantize)?;
        (quantize::output_metadata(&md, ftype.code()), Some(p))
    };
    let summary = VocabSummary {
        model: vocab.model.to_string(),
        n_tokens: vocab.n_tokens,
        pre_source: vocab.pre.as_ref().map(|p| p.1.clone()),
        pre: vocab.pre.map(|p| p.0),
        pre_hash: vocab.pre_hash,
    };
    Ok(ConvertPlan {
        dir: dir.to_path_buf(),
        config: cfg,
        model,
        quantized: qck,
        tensors,
        base_metadata: md,
        metadata,
        base_ftype,
        ftype,
        quant,
        vocab: summary,
        total_params,
    })
}

fn id_label(id: TensorId) -> String {
    format!("{:?}{}", id.role, if id.part == Part::Bias { " bias" } else { "" })
}

/// One row of the mapping as `--dry-run` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct MappingRow {
    pub hf_name: String,
    pub gguf_name: String,
    pub shape: Vec<u64>,
    pub dtype: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub bytes: u64,
}

impl ConvertPlan {
    /// Tensors in the order they are written, with their final types.
    pub fn rows(&self) -> Vec<MappingRow> {
        let by_name: HashMap<&str, &TensorConv> = self.tensors.iter().map(|t| (t.gguf_name.as_str(), t)).collect();
        let row = |t: &TensorConv, ty: GgmlType| MappingRow {
            hf_name: if t.hf_name.is_empty() { "(generated)".into() } else { t.hf_name.clone() },
            gguf_name: t.gguf_name.clone(),
            shape: t.hf_shape.clone(),
            dtype: t.dtype.clone(),
            ty: ty.name().to_string(),
            bytes: ty
                .tensor_size(t.dims[0] as usize, (t.dims.iter().product::<u64>() / t.dims[0].max(1)) as usize)
                .unwrap_or(0) as u64,
        };
        match &self.quant {
            None => self.tensors.iter().map(|t| row(t, t.base_type)).collect(),
            Some(p) => {
                p.tensors.iter().filter_map(|q| by_name.get(q.name.as_str()).map(|t| row(t, q.dst_type))).collect()
            }
        }
    }

    /// Bytes of tensor data read from the checkpoint.
    pub fn src_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.hf_shape.iter().product::<u64>() * (t.src_type.type_size() as u64)).sum()
    }

    /// Bytes of tensor data written.
    pub fn dst_bytes(&self) -> u64 {
        self.rows().iter().map(|r| r.bytes).sum()
    }

    /// The checkpoint files (to refuse writing over an input).
    pub fn inputs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.model.shards().iter().map(|s| s.path().to_path_buf()).collect();
        v.push(self.model.path().to_path_buf());
        v
    }

    /// The base-typed bytes of a tensor stored plainly in the checkpoint: its data, Q/K permuted,
    /// converted to the base type.
    fn plain_bytes<'a>(&'a self, t: &'a TensorConv) -> Result<Cow<'a, [u8]>> {
        let src: &[u8] = match &t.generated {
            Some(g) => g,
            None => self.model.data(&t.hf_name)?,
        };
        let mut data: Cow<[u8]> = Cow::Borrowed(src);
        if let Some(heads) = t.permute_heads {
            let mut out = Vec::new();
            permute::permute(&data, t.hf_shape[0] as usize, heads as usize, &mut out)
                .map_err(|e| Error::Invalid(format!("tensor {}: {e}", t.hf_name)))?;
            data = Cow::Owned(out);
        }
        let mut ty = t.src_type;
        if t.shift != 0.0 {
            data = Cow::Owned(shifted(t, &data)?);
            ty = GgmlType::F32;
        }
        if ty != t.base_type {
            let mut out = Vec::new();
            quantize::convert_tensor(&t.gguf_name, &data, ty, t.base_type, t.dims[0] as usize, None, &mut out)?;
            data = Cow::Owned(out);
        }
        Ok(data)
    }
}

/// `t`'s values plus `t.shift`, as f32 bytes, computed as llama.cpp's converter does in torch: F32
/// and BF16 checkpoints are widened to f32 first and the sum is f32; an F16 tensor stays F16, so
/// the sum is rounded to f16 before it is stored as F32.
fn shifted(t: &TensorConv, data: &[u8]) -> Result<Vec<u8>> {
    let mut f = Vec::new();
    quantize::convert_tensor(&t.gguf_name, data, t.src_type, GgmlType::F32, t.dims[0] as usize, None, &mut f)?;
    let vals: Vec<f32> = bytemuck::pod_collect_to_vec(&f);
    let f16 = t.src_type == GgmlType::F16;
    Ok(vals
        .into_iter()
        .map(|x| {
            let y = x + t.shift;
            if f16 {
                half::f16::from_f32(y).to_f32()
            } else {
                y
            }
        })
        .flat_map(f32::to_le_bytes)
        .collect())
}

impl ConvertPlan {
    /// A quantized weight as its base type: the integer groups copied onto the GGUF type that holds
    /// them when that is the base type ([`quantized::exact_route`]), else its exact values
    /// converted. Also the largest error the GGUF type adds to the checkpoint's values.
    fn quantized_bytes(&self, t: &TensorConv, w: &quantized::QWeight) -> Result<(Vec<u8>, f32)> {
        let d = w.decode(&self.model)?;
        let rows = t.hf_shape[0] as usize;
        let (route, err) = quantized::exact_route(&d);
        if let (Some(mut g), true) = (d.groups, route == t.base_type) {
            if let Some(h) = t.permute_heads {
                let order = permute::row_order(rows, h as usize, true)
                    .map_err(|e| Error::Invalid(format!("tensor {}: {e}", t.hf_name)))?;
                g.permute_rows(&order);
            }
            return Ok((quantized::encode_exact(&t.gguf_name, &g, route)?, err));
        }
        let mut data: Vec<u8> = bytemuck::cast_slice(&d.values).to_vec();
        if let Some(heads) = t.permute_heads {
            let mut out = Vec::new();
            permute::permute(&data, rows, heads as usize, &mut out)
                .map_err(|e| Error::Invalid(format!("tensor {}: {e}", t.hf_name)))?;
            data = out;
        }
        if t.base_type == GgmlType::F32 {
            return Ok((data, 0.0));
        }
        let mut out = Vec::new();
        quantize::convert_tensor(&t.gguf_name, &data, GgmlType::F32, t.base_type, t.dims[0] as usize, None, &mut out)?;
        Ok((out, f32::NAN))
    }
}

/// A Hugging Face folder (plain or quantized) as a GGUF to compute with: converted to a temporary
/// file that is memory-mapped and unlinked at once. Float checkpoints keep their type; quantized
/// weights take their exact GGUF route where it adds no error (Q4_0, Q8_0), F32 where it would
/// (Q4_1), F16 for bitsandbytes (the type bitsandbytes computes in).
///
/// # Errors
/// [`plan`]'s and [`execute`]'s.
pub fn open_folder(dir: &Path) -> Result<crunch_core::gguf::GgufFile> {
    let m = SafetensorsModel::open(dir)?;
    let first = m.tensors().iter().find(|t| t.shape.len() >= 2 && ggml_of(t.dtype).is_some()).map(|t| t.dtype);
    drop(m);
    let ftype = match first {
        Some(Dtype::BF16) => Ftype::BF16,
        Some(Dtype::F32) => Ftype::F32,
        _ => Ftype::F16,
    };
    let mut opts = ConvertOptions::new(ftype);
    opts.keep_quantized = true;
    let mut p = plan(dir, &opts)?;
    for t in p.tensors.iter_mut().filter(|t| t.quantized.is_some() && t.base_type == GgmlType::Q4_1) {
        t.base_type = GgmlType::F32;
    }
    let tmp = std::env::temp_dir().join(format!(
        "crunch-folder-{}-{}.gguf",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    ));
    let res = execute(&p, &tmp, &crate::progress::NoProgress, &Cancel::default())
        .and_then(|_| crunch_core::gguf::GgufFile::open(&tmp).map_err(Error::from));
    let _ = std::fs::remove_file(&tmp);
    res
}

/// Make [`crunch_model::seedlm::open_gguf`] (and so every model crunch computes with) open
/// Hugging Face folders through [`open_folder`].
pub fn register_folder_opener() {
    crunch_model::seedlm::set_folder_opener(|dir| open_folder(dir).map_err(|e| e.to_string()));
}

/// Write the planned GGUF to `output`.
///
/// # Errors
/// I/O, conversion errors, cancellation; nothing is left at `output` on error.
pub fn execute(plan: &ConvertPlan, output: &Path, progress: &dyn Progress, cancel: &Cancel) -> Result<ConvertReport> {
    let t0 = Instant::now();
    let anon = AnonPeak::default();
    let by_name: HashMap<&str, &TensorConv> = plan.tensors.iter().map(|t| (t.gguf_name.as_str(), t)).collect();
    // (tensor, final type) in write order.
    let order: Vec<(&TensorConv, GgmlType)> = match &plan.quant {
        None => plan.tensors.iter().map(|t| (t, t.base_type)).collect(),
        Some(p) => p
            .tensors
            .iter()
            .map(|q| by_name.get(q.name.as_str()).map(|t| (*t, q.dst_type)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::Plan("the quantization plan names a tensor the conversion does not have".into()))?,
    };
    if let Some(p) = &plan.quant {
        if let Some(t) = p.tensors.iter().find(|t| t.converts() && t.requires_imatrix) {
            return Err(Error::Plan(format!(
                "tensor {}: {} needs an importance matrix; convert to {} first, then quantize with an importance matrix",
                t.name,
                t.dst_type,
                plan.base_ftype.name().to_lowercase()
            )));
        }
    }
    for (t, ty) in &order {
        if crunch_quant::kernels(*ty).is_none() {
            return Err(Error::Plan(format!("tensor {}: crunch cannot write {ty} yet", t.gguf_name)));
        }
    }
    let specs: Vec<TensorSpec> =
        order.iter().map(|(t, ty)| TensorSpec { name: t.gguf_name.clone(), ty: *ty, dims: t.dims.clone() }).collect();
    let mut writer = GgufWriter::create(output, plan.metadata.clone(), &specs)?;
    let total = plan.src_bytes();
    progress.start("convert", total);
    // Two stages overlap: this thread converts tensor i+1 (its pages prefetched) while a writer
    // thread writes tensor i; a rendezvous channel keeps at most two tensors in memory.
    let mut routes: Vec<RouteNote> = Vec::new();
    let sha256 = std::thread::scope(|scope| -> Result<String> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Cow<[u8]>)>(0);
        let order_ref = &order;
        let anon_ref = &anon;
        let handle = scope.spawn(move || -> Result<String> {
            let mut done = 0u64;
            for (i, data) in rx {
                let (t, ty) = order_ref[i];
                writer.write_tensor(&t.gguf_name, &data)?;
                anon_ref.sample();
                drop(data);
                if !t.hf_name.is_empty() {
                    plan.model.release_tensor(&t.hf_name);
                }
                done += t.hf_shape.iter().product::<u64>() * t.src_type.type_size() as u64;
                progress.advance(done, &format!("{} -> {} {}", t.hf_name, t.gguf_name, ty));
            }
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            Ok(writer.finish()?)
        });
        let mut failed = None;
        for (i, &(t, ty)) in order.iter().enumerate() {
            if cancel.is_cancelled() {
                failed = Some(Error::Cancelled);
                break;
            }
            if let Some((next, _)) = order.get(i + 1) {
                if !next.hf_name.is_empty() {
                    plan.model.prefetch_tensor(&next.hf_name);
                }
            }
            let base = match (t.quantized, &plan.quantized) {
                (Some(qi), Some(q)) => plan.quantized_bytes(t, &q.weights[qi]).map(|(b, err)| {
                    routes.push(RouteNote {
                        tensor: t.gguf_name.clone(),
                        from: t.dtype.clone(),
                        to: t.base_type.name().to_string(),
                        max_abs_error: if err.is_nan() { None } else { Some(err) },
                    });
                    Cow::Owned(b)
                }),
                _ => plan.plain_bytes(t),
            };
            let data = match base {
                Ok(base) if ty == t.base_type => Ok(base),
                Ok(base) => {
                    let mut buf = Vec::new();
                    quantize::convert_tensor(&t.gguf_name, &base, t.base_type, ty, t.dims[0] as usize, None, &mut buf)
                        .map(|()| Cow::Owned(buf))
                }
                Err(e) => Err(e),
            };
            match data {
                Ok(d) => {
                    anon.sample();
                    if tx.send((i, d)).is_err() {
                        break; // the writer stopped on an error, reported by join below
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let written = handle.join().map_err(|_| Error::Invalid("the writer thread panicked".into()))?;
        match failed {
            Some(e) => Err(e),
            None => written,
        }
    })?;
    let file_bytes = std::fs::metadata(output).map_err(|e| Error::io(output, e))?.len();
    let seconds = t0.elapsed().as_secs_f64();
    progress.finish(&format!("wrote {}", output.display()));
    Ok(ConvertReport {
        output: output.display().to_string(),
        sha256,
        ftype: plan.ftype.name().to_string(),
        tensors: plan.tensors.len(),
        src_bytes: total,
        file_bytes,
        seconds,
        read_mb_per_s: total as f64 / 1e6 / seconds.max(1e-9),
        peak_rss_bytes: memory::status().map(|s| s.peak_rss).unwrap_or(0),
        peak_anon_bytes: anon.get(),
        quantized: routes,
    })
}
