//! LoRA adapters in llama.cpp's GGUF layout: read, checked against a model, applied, written.
//!
//! An adapter file has `general.type = "adapter"`, `adapter.type = "lora"`, the base model's
//! `general.architecture` and `adapter.lora.alpha` (f32). For every adapted weight `W` (GGUF
//! name `N`, dims `[n_in, n_out]`) it holds `N.lora_a` with dims `[n_in, r]` (`r` rows of `n_in`)
//! and `N.lora_b` with dims `[r, n_out]` (`n_out` rows of `r`). A layer then computes
//! `y = W x + s · B (A x)` with `s = scale · alpha / r` (llama.cpp uses `s = scale` when alpha
//! is 0), `scale` being the user's `--lora FILE:SCALE` (1 by default).
//!
//! This module is the one place that knows the layout: [`LoraAdapter`] reads and validates a
//! file (every pair complete, shapes consistent, types crunch can compute with),
//! [`LoraAdapter::check_model`] checks it fits a model, [`write_adapter`] writes one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crunch_core::gguf::{GgufFile, GgufWriter, Metadata, TensorInfo, TensorSpec, Value};
use crunch_core::GgmlType;

use crate::error::{ModelError, Result};
use crate::matmul::WeightView;

/// Suffix of the `A` half (`r` rows of `n_in`).
pub const LORA_A: &str = ".lora_a";
/// Suffix of the `B` half (`n_out` rows of `r`).
pub const LORA_B: &str = ".lora_b";
/// `general.type` of an adapter.
pub const KEY_GENERAL_TYPE: &str = "general.type";
/// `adapter.type`: `lora`.
pub const KEY_ADAPTER_TYPE: &str = "adapter.type";
/// `adapter.lora.alpha` (f32).
pub const KEY_ALPHA: &str = "adapter.lora.alpha";
/// `adapter.alora.invocation_tokens`: an activated LoRA (llama.cpp applies it only after these).
pub const KEY_ALORA_TOKENS: &str = "adapter.alora.invocation_tokens";

/// One adapted weight: its `A` and `B` tensors in the adapter file.
#[derive(Clone, Debug)]
pub struct LoraPair {
    /// The base model's tensor this pair adapts (`blk.0.attn_q.weight`).
    pub base: String,
    pub a: TensorInfo,
    pub b: TensorInfo,
    pub rank: usize,
    pub n_in: usize,
    pub n_out: usize,
}

/// A LoRA adapter file, memory-mapped and validated.
pub struct LoraAdapter {
    file: Arc<GgufFile>,
    /// `general.architecture`.
    pub arch: String,
    /// `adapter.lora.alpha`.
    pub alpha: f32,
    pairs: Vec<LoraPair>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for LoraAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraAdapter")
            .field("path", &self.file.path)
            .field("arch", &self.arch)
            .field("alpha", &self.alpha)
            .field("pairs", &self.pairs.len())
            .finish()
    }
}

fn file_err(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::File { path: path.display().to_string(), reason: reason.into() }
}

/// Is `file` a LoRA adapter (`general.type = "adapter"`)?
pub fn is_adapter(meta: &Metadata) -> bool {
    meta.get_str(KEY_GENERAL_TYPE) == Some("adapter")
}

fn dim(info: &TensorInfo, i: usize) -> usize {
    info.dims.get(i).copied().unwrap_or(1) as usize
}

impl LoraAdapter {
    /// Open and validate an adapter file.
    ///
    /// # Errors
    /// Not a GGUF file, not a LoRA adapter, a missing or mistyped key (named), a tensor without
    /// its other half, shapes that do not pair up, types crunch cannot dequantize.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_gguf(Arc::new(GgufFile::open(path)?))
    }

    /// Validate an opened file as an adapter.
    pub fn from_gguf(file: Arc<GgufFile>) -> Result<Self> {
        let path = file.path.clone();
        let meta = file.metadata();
        let key_str = |key: &str| -> Result<String> {
            match meta.get(key) {
                None => Err(file_err(&path, format!("missing metadata key {key} (is this a LoRA adapter?)"))),
                Some(v) => v.as_str().map(str::to_string).ok_or_else(|| {
                    file_err(&path, format!("metadata key {key} is a {:?}, not a string", v.value_type()))
                }),
            }
        };
        let general_type = key_str(KEY_GENERAL_TYPE)?;
        if general_type != "adapter" {
            return Err(file_err(
                &path,
                format!("{KEY_GENERAL_TYPE} is {general_type:?}, a LoRA adapter has \"adapter\""),
            ));
        }
        let adapter_type = key_str(KEY_ADAPTER_TYPE)?;
        if adapter_type != "lora" {
            return Err(file_err(
                &path,
                format!("{KEY_ADAPTER_TYPE} is {adapter_type:?}; crunch reads \"lora\" adapters"),
            ));
        }
        let arch = key_str("general.architecture")?;
        if meta.get(KEY_ALORA_TOKENS).is_some() {
            return Err(file_err(
                &path,
                format!("{KEY_ALORA_TOKENS}: activated LoRA (applied only after its invocation tokens) is not supported by crunch"),
            ));
        }
        let alpha = match meta.get(KEY_ALPHA) {
            None => {
                return Err(file_err(
                    &path,
                    format!("missing metadata key {KEY_ALPHA} (the adapter's scale is alpha / rank; write it as f32)"),
                ))
            }
            Some(Value::F32(a)) if a.is_finite() => *a,
            Some(v) => {
                return Err(file_err(
                    &path,
                    format!("metadata key {KEY_ALPHA} is {v} ({:?}); llama.cpp reads a finite f32", v.value_type()),
                ))
            }
        };
        let mut halves: HashMap<&str, (Option<&TensorInfo>, Option<&TensorInfo>)> = HashMap::new();
        let mut order: Vec<&str> = Vec::new();
        for t in file.tensors() {
            let (base, is_a) = if let Some(b) = t.name.strip_suffix(LORA_A) {
                (b, true)
            } else if let Some(b) = t.name.strip_suffix(LORA_B) {
                (b, false)
            } else if t.name.ends_with("_norm.weight") {
                continue; // llama.cpp ignores norm tensors in adapters too
            } else {
                return Err(file_err(&path, format!("tensor {} is neither {LORA_A} nor {LORA_B}", t.name)));
            };
            let e = halves.entry(base).or_insert_with(|| {
                order.push(base);
                (None, None)
            });
            if is_a {
                e.0 = Some(t);
            } else {
                e.1 = Some(t);
            }
        }
        let mut pairs = Vec::with_capacity(order.len());
        for base in order {
            let (a, b) = halves[base];
            let (a, b) = match (a, b) {
                (Some(a), Some(b)) => (a, b),
                (Some(_), None) => return Err(file_err(&path, format!("tensor {base}{LORA_A} has no {base}{LORA_B}"))),
                (None, _) => return Err(file_err(&path, format!("tensor {base}{LORA_B} has no {base}{LORA_A}"))),
            };
            for t in [a, b] {
                if t.dims.len() != 2 {
                    return Err(file_err(
                        &path,
                        format!("tensor {}: shape {}, a LoRA half is 2-D", t.name, t.shape_string()),
                    ));
                }
                if crunch_quant::kernels(t.ty).is_none() {
                    return Err(ModelError::UnsupportedType { tensor: t.name.clone(), ty: t.ty, what: "dequantize" });
                }
            }
            let (n_in, rank, n_out) = (dim(a, 0), dim(a, 1), dim(b, 1));
            if dim(b, 0) != rank || rank == 0 || n_in == 0 || n_out == 0 {
                return Err(file_err(
                    &path,
                    format!(
                        "tensor {}: shape {} does not pair with {} of shape {} (lora_a is [n_in, rank], lora_b [rank, n_out])",
                        b.name,
                        b.shape_string(),
                        a.name,
                        a.shape_string()
                    ),
                ));
            }
            pairs.push(LoraPair { base: base.to_string(), a: a.clone(), b: b.clone(), rank, n_in, n_out });
        }
        let index = pairs.iter().enumerate().map(|(i, p)| (p.base.clone(), i)).collect();
        Ok(LoraAdapter { file, arch, alpha, pairs, index })
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// Every adapted weight, in file order.
    pub fn pairs(&self) -> &[LoraPair] {
        &self.pairs
    }

    /// The pair adapting base tensor `name`, if any.
    pub fn pair(&self, name: &str) -> Option<&LoraPair> {
        self.index.get(name).map(|&i| &self.pairs[i])
    }

    /// The factor `B A` is multiplied by for a user scale `scale` (llama.cpp's rule).
    pub fn scale_of(&self, pair: &LoraPair, scale: f32) -> f32 {
        if self.alpha == 0.0 {
            scale
        } else {
            scale * self.alpha / pair.rank as f32
        }
    }

    /// Refuse an adapter on the token embedding (llama.cpp stores those transposed; crunch does
    /// not apply them).
    ///
    /// # Errors
    /// A pair on `token_embd.weight`, named.
    pub fn refuse_token_embedding(&self) -> Result<()> {
        match self.pair("token_embd.weight") {
            Some(p) => Err(file_err(
                self.path(),
                format!("tensor {}: adapters on the token embedding are not supported by crunch", p.a.name),
            )),
            None => Ok(()),
        }
    }

    /// Check the adapter fits a model of architecture `arch` whose 2-D weights have the shapes
    /// `shape_of(name) = Some((n_in, n_out))` (`None`: no such tensor). `model` names the model
    /// in messages.
    ///
    /// # Errors
    /// Another architecture, a tensor the model does not have, a shape that differs.
    pub fn check_model(
        &self,
        model: &str,
        arch: &str,
        shape_of: impl Fn(&str) -> Option<(usize, usize)>,
    ) -> Result<()> {
        let path = self.path();
        if self.arch != arch {
            return Err(file_err(
                path,
                format!("adapter for architecture {:?} (general.architecture), {model} is {arch:?}", self.arch),
            ));
        }
        for p in &self.pairs {
            match shape_of(&p.base) {
                None => {
                    return Err(file_err(
                        path,
                        format!("tensor {}{LORA_A} adapts {}, which {model} does not have (another base model?)", p.base, p.base),
                    ))
                }
                Some((n_in, n_out)) if (n_in, n_out) != (p.n_in, p.n_out) => {
                    return Err(file_err(
                        path,
                        format!(
                            "tensor {}: the adapter is for a [{}, {}] weight (lora_a {}, lora_b {}), {model} has [{n_in}, {n_out}]",
                            p.base,
                            p.n_in,
                            p.n_out,
                            p.a.shape_string(),
                            p.b.shape_string()
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// `A` as a weight: `rank` outputs of `n_in` inputs.
    pub fn a_view<'a>(&'a self, p: &'a LoraPair) -> WeightView<'a> {
        WeightView { name: &p.a.name, ty: p.a.ty, n_in: p.n_in, n_out: p.rank, data: self.file.tensor_data(&p.a) }
    }

    /// `B` as a weight: `n_out` outputs of `rank` inputs.
    pub fn b_view<'a>(&'a self, p: &'a LoraPair) -> WeightView<'a> {
        WeightView { name: &p.b.name, ty: p.b.ty, n_in: p.rank, n_out: p.n_out, data: self.file.tensor_data(&p.b) }
    }

    /// `A` (`rank × n_in`) and `B` (`n_out × rank`) in f32.
    pub fn dequantize(&self, p: &LoraPair) -> Result<(Vec<f32>, Vec<f32>)> {
        let deq = |info: &TensorInfo| -> Result<Vec<f32>> {
            let k = crunch_quant::kernels(info.ty).ok_or_else(|| ModelError::UnsupportedType {
                tensor: info.name.clone(),
                ty: info.ty,
                what: "dequantize",
            })?;
            let mut out = vec![0f32; info.n_elements() as usize];
            (k.dequantize)(self.file.tensor_data(info), &mut out);
            Ok(out)
        };
        Ok((deq(&p.a)?, deq(&p.b)?))
    }
}

/// An adapter named on a command line or in a job: `FILE[:SCALE]`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraSpec {
    pub path: PathBuf,
    #[serde(default = "one")]
    pub scale: f32,
}

fn one() -> f32 {
    1.0
}

impl LoraSpec {
    /// Parse `FILE[:SCALE]` (the part after the last `:` is a scale only if it parses as a number).
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        if let Some((p, sc)) = s.rsplit_once(':') {
            if let Ok(scale) = sc.parse::<f32>() {
                if !scale.is_finite() {
                    return Err(format!("{s}: the scale after ':' must be a finite number"));
                }
                if p.is_empty() {
                    return Err(format!("{s}: no adapter file before ':'"));
                }
                return Ok(LoraSpec { path: PathBuf::from(p), scale });
            }
        }
        if s.is_empty() {
            return Err("empty adapter path".into());
        }
        Ok(LoraSpec { path: PathBuf::from(s), scale: 1.0 })
    }
}

/// One weight's correction to write: `a` is `rank` rows of `n_in`, `b` is `n_out` rows of `rank`.
#[derive(Clone, Debug)]
pub struct LoraTensor {
    pub base: String,
    pub rank: usize,
    pub n_in: usize,
    pub n_out: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// Types an adapter's halves can be written in.
pub const WRITE_TYPES: [GgmlType; 4] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0];

/// Metadata of an adapter for `arch` with `alpha`, in the order crunch writes it.
pub fn adapter_metadata(arch: &str, alpha: f32) -> Metadata {
    let mut m = Metadata::default();
    m.set("general.architecture", Value::string(arch));
    m.set(KEY_GENERAL_TYPE, Value::string("adapter"));
    m.set(KEY_ADAPTER_TYPE, Value::string("lora"));
    m.set(KEY_ALPHA, Value::F32(alpha));
    m
}

/// The header entries of an adapter's tensors: `(base, n_in, n_out, rank)` each, `A` then `B`.
fn adapter_specs(
    ty: GgmlType,
    shapes: impl IntoIterator<Item = (String, usize, usize, usize)>,
) -> Result<Vec<TensorSpec>> {
    let mut specs = Vec::new();
    for (base, n_in, n_out, rank) in shapes {
        if n_in == 0 || n_out == 0 || rank == 0 {
            return Err(ModelError::Input(format!(
                "{base}: a [{n_in}, {n_out}] weight with rank {rank} has nothing to adapt"
            )));
        }
        for (row, what) in [(n_in, "n_in"), (rank, "rank")] {
            if !row.is_multiple_of(ty.block_size()) {
                return Err(ModelError::Input(format!(
                    "{base}: {what} {row} is not a multiple of {}'s block of {}; write the adapter as f32 or f16",
                    ty.name(),
                    ty.block_size()
                )));
            }
        }
        specs.push(TensorSpec { name: format!("{base}{LORA_A}"), ty, dims: vec![n_in as u64, rank as u64] });
        specs.push(TensorSpec { name: format!("{base}{LORA_B}"), ty, dims: vec![rank as u64, n_out as u64] });
    }
    Ok(specs)
}

/// The exact size of the file [`write_adapter`] writes for `meta` and tensors
/// `(base, n_in, n_out, rank)` in type `ty` (what an adapter adds to a model's size).
///
/// # Errors
/// Row lengths the type's block does not divide, names or shapes GGUF cannot hold.
pub fn adapter_file_bytes(meta: Metadata, ty: GgmlType, shapes: &[(String, usize, usize, usize)]) -> Result<u64> {
    let specs = adapter_specs(ty, shapes.iter().cloned())?;
    let alignment = crunch_core::gguf::limits::DEFAULT_ALIGNMENT;
    let (infos, data) = crunch_core::gguf::layout(&specs, alignment)?;
    let header = crunch_core::gguf::GgufHeader {
        version: crunch_core::gguf::limits::WRITE_VERSION,
        metadata: meta,
        tensors: infos,
        alignment,
        data_start: 0,
    };
    let head = crunch_core::gguf::encode_header(&header).len() as u64;
    Ok(if specs.is_empty() { head } else { crunch_core::gguf::align_up(head, alignment).unwrap_or(head) + data })
}

/// Write an adapter atomically: metadata `meta` (see [`adapter_metadata`]), then `A` and `B` of
/// each tensor in order, in type `ty` (one of [`WRITE_TYPES`]). Returns the file's SHA-256.
///
/// # Errors
/// A type crunch does not write adapters in, sizes that do not match, a row length the type's
/// block does not divide, I/O errors (nothing is left at `dest`).
pub fn write_adapter(dest: &Path, meta: Metadata, ty: GgmlType, tensors: &[LoraTensor]) -> Result<String> {
    if !WRITE_TYPES.contains(&ty) {
        return Err(ModelError::Input(format!(
            "adapters are written as f32, f16, bf16 or q8_0, not {}",
            ty.name().to_ascii_lowercase()
        )));
    }
    let k = crunch_quant::kernels(ty).ok_or_else(|| ModelError::Input(format!("no kernels for {ty}")))?;
    for t in tensors {
        if t.a.len() != t.rank * t.n_in || t.b.len() != t.n_out * t.rank || t.rank == 0 {
            return Err(ModelError::Input(format!(
                "{}: rank {} correction with {} A values and {} B values for a [{}, {}] weight",
                t.base,
                t.rank,
                t.a.len(),
                t.b.len(),
                t.n_in,
                t.n_out
            )));
        }
    }
    let specs = adapter_specs(ty, tensors.iter().map(|t| (t.base.clone(), t.n_in, t.n_out, t.rank)))?;
    let mut w = GgufWriter::create(dest, meta, &specs)?;
    for t in tensors {
        for (suffix, vals, row) in [(LORA_A, &t.a, t.n_in), (LORA_B, &t.b, t.rank)] {
            let rb = ty.row_size(row).expect("row length checked above");
            let mut bytes = vec![0u8; rb * (vals.len() / row)];
            for (src, dst) in vals.chunks_exact(row).zip(bytes.chunks_exact_mut(rb)) {
                (k.quantize)(src, None, dst);
            }
            w.write_tensor(&format!("{}{suffix}", t.base), &bytes)?;
        }
    }
    Ok(w.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(base: &str, rank: usize, n_in: usize, n_out: usize, seed: f32) -> LoraTensor {
        LoraTensor {
            base: base.into(),
            rank,
            n_in,
            n_out,
            a: (0..rank * n_in).map(|i| ((i as f32 + seed) * 0.37).sin()).collect(),
            b: (0..n_out * rank).map(|i| ((i as f32 - seed) * 0.53).cos()).collect(),
        }
    }

    #[test]
    fn written_adapter_reads_back_with_its_shapes_and_scale() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.gguf");
        let ts = [tensor("blk.0.attn_q.weight", 4, 64, 32, 1.0), tensor("blk.0.ffn_down.weight", 2, 96, 64, 2.0)];
        write_adapter(&p, adapter_metadata("llama", 8.0), GgmlType::F32, &ts).unwrap();
        let shapes: Vec<_> = ts.iter().map(|t| (t.base.clone(), t.n_in, t.n_out, t.rank)).collect();
        let predicted = adapter_file_bytes(adapter_metadata("llama", 8.0), GgmlType::F32, &shapes).unwrap();
        assert_eq!(predicted, std::fs::metadata(&p).unwrap().len());
        let a = LoraAdapter::open(&p).unwrap();
        assert_eq!(a.arch, "llama");
        assert_eq!(a.pairs().len(), 2);
        let q = a.pair("blk.0.attn_q.weight").unwrap();
        assert_eq!((q.rank, q.n_in, q.n_out), (4, 64, 32));
        assert_eq!(q.a.dims, vec![64, 4]);
        assert_eq!(q.b.dims, vec![4, 32]);
        assert_eq!(a.scale_of(q, 0.5), 0.5 * 8.0 / 4.0);
        let (av, bv) = a.dequantize(q).unwrap();
        assert_eq!(av, ts[0].a);
        assert_eq!(bv, ts[0].b);
        let shapes = |n: &str| match n {
            "blk.0.attn_q.weight" => Some((64, 32)),
            "blk.0.ffn_down.weight" => Some((96, 64)),
            _ => None,
        };
        a.check_model("m", "llama", shapes).unwrap();
        let e = a.check_model("m", "qwen2", shapes).unwrap_err().to_string();
        assert!(e.contains("general.architecture") && e.contains("qwen2"), "{e}");
        let e = a.check_model("m", "llama", |n| shapes(n).map(|(i, o)| (i, o + 1))).unwrap_err().to_string();
        assert!(e.contains("blk.0.attn_q.weight") && e.contains("[64, 33]"), "{e}");
        let e =
            a.check_model("m", "llama", |n| if n.contains("ffn") { None } else { shapes(n) }).unwrap_err().to_string();
        assert!(e.contains("blk.0.ffn_down.weight"), "{e}");
    }

    #[test]
    fn missing_alpha_and_unpaired_halves_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.gguf");
        let mut m = adapter_metadata("llama", 1.0);
        m.remove(KEY_ALPHA);
        write_adapter(&p, m, GgmlType::F16, &[tensor("blk.0.attn_k.weight", 2, 32, 32, 0.0)]).unwrap();
        let e = LoraAdapter::open(&p).unwrap_err().to_string();
        assert!(e.contains(KEY_ALPHA), "{e}");

        // a lora_a whose lora_b has another rank
        let specs = [
            TensorSpec { name: "w.lora_a".into(), ty: GgmlType::F32, dims: vec![32, 4] },
            TensorSpec { name: "w.lora_b".into(), ty: GgmlType::F32, dims: vec![3, 32] },
        ];
        let mut w = GgufWriter::create(&p, adapter_metadata("llama", 1.0), &specs).unwrap();
        w.write_tensor("w.lora_a", &vec![0u8; 32 * 4 * 4]).unwrap();
        w.write_tensor("w.lora_b", &vec![0u8; 3 * 32 * 4]).unwrap();
        w.finish().unwrap();
        let e = LoraAdapter::open(&p).unwrap_err().to_string();
        assert!(e.contains("w.lora_b") && e.contains("w.lora_a"), "{e}");

        let specs = [TensorSpec { name: "w.lora_a".into(), ty: GgmlType::F32, dims: vec![32, 4] }];
        let mut w = GgufWriter::create(&p, adapter_metadata("llama", 1.0), &specs).unwrap();
        w.write_tensor("w.lora_a", &vec![0u8; 32 * 4 * 4]).unwrap();
        w.finish().unwrap();
        let e = LoraAdapter::open(&p).unwrap_err().to_string();
        assert!(e.contains("w.lora_a") && e.contains("w.lora_b"), "{e}");
    }

    #[test]
    fn spec_parses_file_and_scale() {
        assert_eq!(LoraSpec::parse("a.gguf").unwrap(), LoraSpec { path: "a.gguf".into(), scale: 1.0 });
        assert_eq!(LoraSpec::parse("dir/a.gguf:0.5").unwrap(), LoraSpec { path: "dir/a.gguf".into(), scale: 0.5 });
        assert_eq!(LoraSpec::parse("c:/x.gguf").unwrap().path, PathBuf::from("c:/x.gguf"));
        assert!(LoraSpec::parse("a.gguf:inf").is_err());
        assert!(LoraSpec::parse(":0.5").is_err());
    }
}
