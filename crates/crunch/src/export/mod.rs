//! `crunch export`: a GGUF model back to a Hugging Face folder (`config.json`,
//! `generation_config.json`, tokenizer files, safetensors dequantized to F16, BF16 or F32, a model
//! card with the provenance), so a compressed model can go back into Python tooling.
//!
//! Key decision: the folder is written so that `crunch convert` gives back the same GGUF metadata
//! and tensors (Q/K rows un-permuted here, permuted there; every `general.*` and `tokenizer.*`
//! value put where the converter reads it). Tensors are dequantized one at a time and streamed
//! into shards. How each tensor is stored is a [`Layout`]: plain tensors here, compressed-tensors'
//! sparse bitmask formats in [`sparse`]; the folder, names, order and streaming are shared.

pub mod quantized;
pub mod sparse;
pub mod tokenizer;

use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};
use crate::quantize;
use crunch_core::gguf::{GgufFile, Metadata, TensorInfo, Value};
use crunch_core::hf::model_card::{self, CardValue};
use crunch_core::hf::names::{self, Role, TensorId};
use crunch_core::hf::params::{self, json_f32};
use crunch_core::hf::{permute, HfArch};
use crunch_core::output::AtomicFile;
use crunch_core::safetensors::{Dtype, ShardedWriter, TensorSpec};
use crunch_core::GgmlType;
use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokenizer::GgufTokenizer;

/// Hugging Face's default shard size (`max_shard_size="5GB"`).
pub const DEFAULT_SHARD_BYTES: u64 = 5_000_000_000;

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// F16, BF16 or F32 for every tensor, or `None` to keep the source's precision (see
    /// [`source_dtypes`]).
    pub dtype: Option<GgmlType>,
    /// Largest shard (bytes of tensor data).
    pub max_shard_bytes: u64,
    /// Store the blocks' linear weights in a compressed-tensors sparse format (see [`sparse`]).
    pub sparse: Option<sparse::SparseFormat>,
    /// Store the blocks' linear weights quantized in a GPU server's format (see [`quantized`]).
    pub quant: Option<quantized::QuantExport>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { dtype: None, max_shard_bytes: DEFAULT_SHARD_BYTES, sparse: None, quant: None }
    }
}

/// What was written.
#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    pub dir: String,
    /// Every file written, with its SHA-256.
    pub files: Vec<(String, String)>,
    pub tensors: usize,
    pub tensor_bytes: u64,
    pub seconds: f64,
    /// Metadata that has no place in a Hugging Face folder and was left out.
    pub dropped_keys: Vec<String>,
    /// With [`ExportOptions::sparse`]: the compressed tensors and their sizes against dense.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparse: Option<sparse::SparseReport>,
    /// With [`ExportOptions::quant`]: the quantized weights, their sizes and errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantized: Option<quantized::QuantReport>,
}

fn dtype_of(ty: GgmlType) -> Result<(Dtype, &'static str)> {
    match ty {
        GgmlType::F32 => Ok((Dtype::F32, "float32")),
        GgmlType::F16 => Ok((Dtype::F16, "float16")),
        GgmlType::BF16 => Ok((Dtype::BF16, "bfloat16")),
        t => Err(Error::Invalid(format!("cannot export tensors as {t}; choose f16, bf16 or f32"))),
    }
}

/// The float type each tensor is exported as when the source's precision is kept, as Hugging
/// Face folders do: F32, F16 and BF16 tensors keep their own type; quantized tensors take the
/// precision of the file's float matrices (F16 or BF16, whichever holds more parameters), else
/// F16. Returns the types in the file's tensor order.
pub fn source_dtypes(input: &GgufFile) -> Vec<GgmlType> {
    let (mut f16, mut bf16) = (0u64, 0u64);
    for t in input.tensors().iter().filter(|t| t.dims.len() >= 2) {
        match t.ty {
            GgmlType::F16 => f16 += t.n_elements(),
            GgmlType::BF16 => bf16 += t.n_elements(),
            _ => {}
        }
    }
    let quantized_as = if bf16 > f16 { GgmlType::BF16 } else { GgmlType::F16 };
    input
        .tensors()
        .iter()
        .map(|t| match t.ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => t.ty,
            _ => quantized_as,
        })
        .collect()
}

/// `config.json`'s `torch_dtype`: the type holding most of the matrices' parameters.
fn dominant_dtype(input: &GgufFile, types: &[GgmlType]) -> GgmlType {
    let mut by_type: Vec<(GgmlType, u64)> = Vec::new();
    for (t, ty) in input.tensors().iter().zip(types).filter(|(t, _)| t.dims.len() >= 2) {
        match by_type.iter_mut().find(|(k, _)| k == ty) {
            Some((_, n)) => *n += t.n_elements(),
            None => by_type.push((*ty, t.n_elements())),
        }
    }
    by_type.into_iter().max_by_key(|&(_, n)| n).map_or(GgmlType::F32, |(ty, _)| ty)
}

/// One GGUF tensor as export writes it.
pub(crate) struct ExportTensor<'a> {
    pub info: &'a TensorInfo,
    pub hf_name: String,
    pub id: TensorId,
    /// Un-permute the Q/K rows with this many heads.
    pub permute_heads: Option<usize>,
    /// Subtracted from every value: llama.cpp's `+1` on Gemma 3's norm weights (0 otherwise).
    pub shift: f32,
    /// Exported as (F32, F16 or BF16).
    pub ty: GgmlType,
    pub dtype: Dtype,
}

impl ExportTensor<'_> {
    /// PyTorch-order shape.
    pub fn shape(&self) -> Vec<u64> {
        self.info.dims.iter().rev().copied().collect()
    }

    /// Bytes of one exported element.
    pub fn elem_bytes(&self) -> usize {
        (self.dtype.bits() / 8) as usize
    }

    /// The values as exported (`ty`), in the GGUF's row order (before Q/K un-permutation), into
    /// `buf` (cleared first).
    pub fn values(&self, input: &GgufFile, buf: &mut Vec<u8>) -> Result<()> {
        buf.clear();
        let src = input.tensor_data(self.info);
        quantize::convert_tensor(&self.info.name, src, self.info.ty, self.ty, self.info.row_len() as usize, None, buf)
    }

    /// The bytes of the Hugging Face tensor: [`values`](Self::values) (or `replaced`, the
    /// tensor's f32 values when something such as AWQ changed them) with the Q/K rows un-permuted;
    /// `buf` and `perm` are scratch.
    pub fn hf_bytes<'b>(
        &self,
        input: &GgufFile,
        buf: &'b mut Vec<u8>,
        perm: &'b mut Vec<u8>,
        replaced: Option<&[f32]>,
    ) -> Result<&'b [u8]> {
        let shifted: Vec<f32>;
        let replaced = match (replaced, self.shift != 0.0) {
            (r, false) => r,
            (r, true) => {
                // Subtract in f32 (exact for the values llama.cpp's +1 produced), then round to `ty`.
                let vals: Vec<f32> = match r {
                    Some(v) => v.to_vec(),
                    None => {
                        let mut f = Vec::new();
                        let src = input.tensor_data(self.info);
                        let n = self.info.row_len() as usize;
                        quantize::convert_tensor(&self.info.name, src, self.info.ty, GgmlType::F32, n, None, &mut f)?;
                        bytemuck::pod_collect_to_vec(&f)
                    }
                };
                shifted = vals.into_iter().map(|x| x - self.shift).collect();
                Some(shifted.as_slice())
            }
        };
        match replaced {
            Some(v) => {
                if v.len() as u64 != self.info.n_elements() {
                    return Err(Error::Invalid(format!(
                        "tensor {}: {} replacement values for {} elements",
                        self.info.name,
                        v.len(),
                        self.info.n_elements()
                    )));
                }
                buf.clear();
                let bytes: &[u8] = bytemuck::cast_slice(v);
                quantize::convert_tensor(
                    &self.info.name,
                    bytes,
                    GgmlType::F32,
                    self.ty,
                    self.info.row_len() as usize,
                    None,
                    buf,
                )?;
            }
            None => self.values(input, buf)?,
        }
        match self.permute_heads {
            Some(h) => {
                permute::unpermute(buf, self.info.n_rows() as usize, h, perm).map_err(|e| {
                    Error::Invalid(format!("tensor {}: {e} (attention.head_count = {h})", self.info.name))
                })?;
                Ok(perm)
            }
            None => Ok(buf),
        }
    }
}

/// How each tensor is stored in the safetensors shards. [`export`] keeps everything else (the
/// folder's files, names, tensor order, streaming one tensor at a time, atomic output) and asks
/// the layout only this.
pub(crate) trait Layout {
    /// The safetensors entries of each tensor (`tensors` in the order they are written), before a
    /// byte is written. May read the tensors' values (for sizes that depend on them, or to refuse
    /// a tensor early).
    ///
    /// # Errors
    /// A tensor this layout cannot store (naming it), I/O, cancellation.
    fn plan(
        &mut self,
        input: &GgufFile,
        tensors: &[ExportTensor<'_>],
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<Vec<Vec<TensorSpec>>>;

    /// Write one tensor, `data` being its values as exported (Hugging Face row order), as the
    /// entries planned for it. Returns the bytes written.
    ///
    /// # Errors
    /// As the writer's.
    fn write(&mut self, t: &ExportTensor<'_>, data: &[u8], out: &mut ShardedWriter) -> Result<u64>;

    /// Add to `config.json`, once every tensor is written.
    fn config(&self, _config: &mut Map<String, Json>) {}

    /// The type a tensor's values are handed to [`write`](Self::write) in, instead of the
    /// export's (e.g. F32 for weights the layout quantizes itself).
    fn source_type(&self, _t: &ExportTensor<'_>) -> Option<GgmlType> {
        None
    }

    /// The tensor's f32 values when the layout replaces the file's (GGUF row order).
    fn source_values(&self, _t: &ExportTensor<'_>) -> Option<&[f32]> {
        None
    }

    /// More JSON files for the folder (name, content), once every tensor is written.
    fn extra_files(&self) -> Vec<(String, Json)> {
        Vec::new()
    }

    /// Finish files the layout wrote besides the folder's; their names and SHA-256.
    ///
    /// # Errors
    /// I/O.
    fn finish(&mut self) -> Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }

    /// A paragraph for the model card.
    fn card_note(&self) -> Option<String> {
        None
    }
}

/// Every tensor as one plain safetensors tensor.
struct Dense;

impl Layout for Dense {
    fn plan(
        &mut self,
        _: &GgufFile,
        tensors: &[ExportTensor<'_>],
        _: &dyn Progress,
        _: &Cancel,
    ) -> Result<Vec<Vec<TensorSpec>>> {
        Ok(tensors.iter().map(|t| vec![TensorSpec::new(t.hf_name.clone(), t.dtype, t.shape())]).collect())
    }

    fn write(&mut self, t: &ExportTensor<'_>, data: &[u8], out: &mut ShardedWriter) -> Result<u64> {
        out.write_tensor(&t.hf_name, data)?;
        Ok(data.len() as u64)
    }
}

fn write_file(dir: &Path, name: &str, bytes: &[u8], files: &mut Vec<(String, String)>) -> Result<()> {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let mut f = AtomicFile::create(&path).map_err(|e| Error::io(&path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&path, e))?;
    let sha = f.commit().map_err(|e| Error::io(&path, e))?;
    files.push((name.to_string(), sha));
    Ok(())
}

/// The model card front matter for `general.*` (the keys `crunch convert` and llama.cpp read back).
fn model_card(md: &Metadata, source: &Path, note: Option<&str>, dropped: &mut Vec<String>) -> String {
    let mut entries: Vec<(String, CardValue)> = Vec::new();
    let s = |k: &str| md.get_str(&format!("general.{k}")).map(str::to_string);
    for (gk, ck) in [
        ("name", "name"),
        ("author", "author"),
        ("version", "version"),
        ("organization", "organization"),
        ("finetune", "finetune"),
        ("basename", "basename"),
        ("description", "description"),
        ("size_label", "size_label"),
        ("license", "license"),
        ("license.name", "license_name"),
        ("license.link", "license_link"),
        ("source.url", "url"),
        ("source.doi", "doi"),
        ("source.uuid", "uuid"),
        ("source.repo_url", "repo_url"),
    ] {
        if let Some(v) = s(gk) {
            entries.push((ck.to_string(), CardValue::Str(v)));
        }
    }
    let list = |k: &str| -> Option<Vec<String>> {
        md.get(&format!("general.{k}"))?
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
    };
    if let Some(t) = list("tags") {
        entries.push(("tags".into(), CardValue::List(t)));
    }
    if let Some(l) = list("languages") {
        entries.push(("language".into(), CardValue::List(l)));
    }
    for (k, _) in md.iter() {
        let kept = [
            "general.architecture",
            "general.type",
            "general.file_type",
            "general.quantization_version",
            "general.alignment",
        ];
        if k.starts_with("general.")
            && !kept.contains(&k)
            && !k.starts_with("general.sampling.")
            && !entries.iter().any(|(ck, _)| {
                let g = match ck.as_str() {
                    "license_name" => "license.name".to_string(),
                    "license_link" => "license.link".to_string(),
                    "url" | "doi" | "uuid" | "repo_url" => format!("source.{ck}"),
                    "language" => "languages".to_string(),
                    other => other.to_string(),
                };
                k == format!("general.{g}")
            })
        {
            dropped.push(k.to_string());
        }
    }
    let name = source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut card = format!("{}\nExported from `{name}` by crunch (`crunch export`).\n", model_card::render(&entries));
    if let Some(note) = note {
        card.push('\n');
        card.push_str(note);
        card.push('\n');
    }
    card
}

fn generation_config(md: &Metadata, tok: &GgufTokenizer) -> Json {
    let mut g = Map::new();
    for (typ, key) in [("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "pad_token_id")] {
        if let Some((_, id)) = tok.special.iter().find(|(t, _)| *t == typ) {
            g.insert(key.into(), json!(id));
        }
    }
    for (gk, hk) in [
        ("sequence", "sequence"),
        ("top_k", "top_k"),
        ("top_p", "top_p"),
        ("min_p", "min_p"),
        ("xtc_probability", "xtc_probability"),
        ("xtc_threshold", "xtc_threshold"),
        ("temp", "temperature"),
        ("penalty_last_n", "penalty_last_n"),
        ("penalty_repeat", "repetition_penalty"),
        ("mirostat", "mirostat"),
        ("mirostat_tau", "mirostat_tau"),
        ("mirostat_eta", "mirostat_eta"),
    ] {
        let v = match md.get(&format!("general.sampling.{gk}")) {
            Some(Value::F32(x)) => json_f32(*x),
            Some(Value::String(_)) => json!(md.get_str(&format!("general.sampling.{gk}"))),
            Some(v) => match v.as_i64() {
                Some(i) => json!(i),
                None => continue,
            },
            None => continue,
        };
        g.insert(hk.into(), v);
    }
    Json::Object(g)
}

/// Export `input` into the folder `dir` (created if needed); with [`ExportOptions::sparse`], the
/// blocks' linear weights in that compressed-tensors format (see [`sparse`]).
///
/// # Errors
/// An architecture or tokenizer crunch cannot export, tensors it cannot map, I/O, cancellation;
/// with `sparse`, what [`sparse::export`] refuses. Files are written atomically; on error, shards
/// already written are removed.
pub fn export(
    input: &GgufFile,
    dir: &Path,
    opts: &ExportOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<ExportReport> {
    match (opts.sparse, &opts.quant) {
        (Some(_), Some(_)) => Err(Error::field("export.sparse", "a sparse and a quantized format cannot be combined")),
        (None, None) => write_folder(input, dir, opts, &mut Dense, progress, cancel),
        (Some(format), None) => sparse::export(input, dir, opts, format, progress, cancel),
        (None, Some(q)) => quantized::export(input, dir, opts, q, None, progress, cancel),
    }
}

/// The export itself, each tensor stored as `layout` says.
pub(crate) fn write_folder(
    input: &GgufFile,
    dir: &Path,
    opts: &ExportOptions,
    layout: &mut dyn Layout,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<ExportReport> {
    let t0 = Instant::now();
    let md = input.metadata();
    let arch_name = md.architecture().ok_or_else(|| Error::Invalid("GGUF has no general.architecture".into()))?;
    let arch = HfArch::from_gguf_name(arch_name).ok_or_else(|| {
        Error::Invalid(format!(
            "architecture {arch_name:?} cannot be exported; crunch exports {}",
            HfArch::exported_names()
        ))
    })?;
    let types = match opts.dtype {
        Some(t) => vec![t; input.tensors().len()],
        None => source_dtypes(input),
    };
    let (_, torch_dtype) = dtype_of(dominant_dtype(input, &types))?;
    let key = |k: &str| format!("{arch_name}.{k}");
    let n_head = md.get_u64(&key("attention.head_count")).unwrap_or(0) as usize;
    let n_head_kv = md.get_u64(&key("attention.head_count_kv")).map(|v| v as usize).unwrap_or(n_head);

    let mut planned = Vec::new();
    for (info, &ty) in input.tensors().iter().zip(&types) {
        let (hf_name, id) = names::gguf_to_hf(arch, &info.name).ok_or_else(|| {
            Error::Invalid(format!(
                "tensor {} has no Hugging Face {} name; crunch cannot export it{}",
                info.name,
                arch.hf_name(),
                if info.name == "rope_freqs.weight" {
                    " (Llama 3.1 RoPE scaling factors are not exported yet)"
                } else {
                    ""
                }
            ))
        })?;
        if crunch_quant::kernels(info.ty).is_none() {
            return Err(Error::Invalid(format!("tensor {}: crunch cannot dequantize {}", info.name, info.ty)));
        }
        let permute_heads = match (arch.permutes_qk(), id.role) {
            (true, Role::AttnQ) => Some(n_head),
            (true, Role::AttnK) => Some(n_head_kv),
            _ => None,
        };
        let (dtype, _) = dtype_of(ty)?;
        let shift = arch.norm_shift(&hf_name);
        let mut t = ExportTensor { info, hf_name, id, permute_heads, shift, ty, dtype };
        if let Some(ty) = layout.source_type(&t) {
            t.ty = ty;
            t.dtype = dtype_of(ty)?.0;
        }
        planned.push(t);
    }
    let tok = GgufTokenizer::from_metadata(md)?;
    // Check the tokenizer can be written before any tensor is.
    let tokenizer_json = tok.tokenizer_json()?;

    // Everything but the tensors is prepared first: a problem there stops the export before a byte is written.
    let names: Vec<&str> = input.tensors().iter().map(|t| t.name.as_str()).collect();
    let mut config = params::hf_config(arch, md, &names, torch_dtype)?;
    for (k, id) in tok.config_ids() {
        config.entry(k).or_insert(json!(id));
    }
    let mut side: Vec<(String, Vec<u8>)> = Vec::new();
    let json_bytes = |v: &Json| -> Result<Vec<u8>> {
        let mut t = serde_json::to_string_pretty(v).map_err(|e| Error::Invalid(e.to_string()))?;
        t.push('\n');
        Ok(t.into_bytes())
    };
    // config.json goes first, written once the layout has had its say (after the tensors).
    side.push(("generation_config.json".into(), json_bytes(&generation_config(md, &tok))?));
    side.push(("tokenizer.json".into(), json_bytes(&tokenizer_json)?));
    let (mut tc, stm) = tok.configs(md.get_u64(&key("context_length")));
    if let (HfArch::Gemma3, Some(c)) = (arch, tc.as_object_mut()) {
        if tok.model == "llama" {
            c.insert("tokenizer_class".into(), json!("GemmaTokenizerFast"));
        }
    }
    side.push(("tokenizer_config.json".into(), json_bytes(&tc)?));
    side.push(("special_tokens_map.json".into(), json_bytes(&stm)?));
    if let Some(spm) = tok.spm_model() {
        side.push(("tokenizer.model".into(), spm.to_bytes()));
    }
    if let Some(p) = md.get_u64(&key("pooling_type")) {
        let mode = match p as u32 {
            params::pooling::MEAN => "pooling_mode_mean_tokens",
            params::pooling::CLS => "pooling_mode_cls_token",
            params::pooling::LAST => "pooling_mode_lasttoken",
            _ => "",
        };
        if !mode.is_empty() {
            let modules = json!([
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
            ]);
            side.push(("modules.json".into(), json_bytes(&modules)?));
            let mut pc = Map::new();
            pc.insert("word_embedding_dimension".into(), json!(md.get_u64(&key("embedding_length"))));
            for m in [
                "pooling_mode_cls_token",
                "pooling_mode_mean_tokens",
                "pooling_mode_max_tokens",
                "pooling_mode_mean_sqrt_len_tokens",
                "pooling_mode_lasttoken",
            ] {
                pc.insert(m.into(), json!(m == mode));
            }
            side.push(("1_Pooling/config.json".into(), json_bytes(&Json::Object(pc))?));
        }
    }

    // The layout's entries (it may read the tensors: a tensor it refuses stops the export here).
    let specs: Vec<TensorSpec> = layout.plan(input, &planned, progress, cancel)?.into_iter().flatten().collect();
    let mut dropped = Vec::new();
    let card = model_card(md, &input.path, layout.card_note().as_deref(), &mut dropped);
    side.push(("README.md".into(), card.into_bytes()));

    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut st_meta = std::collections::BTreeMap::new();
    st_meta.insert("format".to_string(), "pt".to_string());
    let mut writer = ShardedWriter::create(dir, st_meta, &specs, opts.max_shard_bytes)?;
    let total: u64 = planned.iter().map(|p| p.info.n_bytes()).sum();
    progress.start("export", total);
    let (mut done, mut buf, mut perm) = (0u64, Vec::new(), Vec::new());
    let mut tensor_bytes = 0u64;
    for p in &planned {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let data = p.hf_bytes(input, &mut buf, &mut perm, layout.source_values(p))?;
        tensor_bytes += layout.write(p, data, &mut writer)?;
        input.release_tensor(p.info);
        done += p.info.n_bytes();
        progress.advance(done, &format!("{} -> {}", p.info.name, p.hf_name));
    }
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    layout.config(&mut config);
    side.insert(0, ("config.json".into(), json_bytes(&Json::Object(config))?));
    for (name, v) in layout.extra_files() {
        side.push((name, json_bytes(&v)?));
    }
    let mut files = Vec::new();
    for (name, bytes) in &side {
        write_file(dir, name, bytes, &mut files)?;
    }
    let out = writer.finish()?;
    let extra = layout.finish()?;
    for (path, sha) in out.shards.iter().chain(out.index.iter()) {
        files.push((path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), sha.clone()));
    }
    files.extend(extra);
    if !dropped.is_empty() {
        tracing::warn!("left out (no place in a Hugging Face folder): {}", dropped.join(", "));
    }
    progress.finish(&format!("wrote {}", dir.display()));
    Ok(ExportReport {
        dir: dir.display().to_string(),
        files,
        tensors: planned.len(),
        tensor_bytes,
        seconds: t0.elapsed().as_secs_f64(),
        dropped_keys: dropped,
        sparse: None,
        quantized: None,
    })
}

/// The folder a GGUF file would be exported to by default (`MODEL-hf` beside it).
pub fn default_dir(input: &Path) -> PathBuf {
    let stem = input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    input.with_file_name(format!("{stem}-hf"))
}
