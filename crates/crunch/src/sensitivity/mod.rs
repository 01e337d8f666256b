//! Sensitivity profile: for every quantizable tensor and every candidate type, how much damage that
//! type does, as a predicted contribution to the KL-divergence of the model's next-token
//! distribution from the base model's.
//!
//! Key decisions:
//! - **Two measurements, one model.** The cheap one, for every (tensor, type): the relative
//!   activation-weighted quantization error `r` (see [`damage`]), computed by really quantizing
//!   the tensor with the type (and the method: RTN or importance-weighted). The expensive one, per
//!   *group* of tensors (one kind of tensor in a band of consecutive layers): the measured
//!   KL-divergence when only that group is quantized, on calibration text (a probe GGUF is
//!   written and run). The group's scale `α = KLD / Σ r` (least squares over one or two probe
//!   types) turns errors into predicted KLD: `kld(t, type) = α_group(t) · r_t(type)`.
//! - **Additivity.** The predicted KLD of a whole plan is the sum over tensors; for small,
//!   independent perturbations KLD is quadratic in them and the cross terms average out.
//! - **Cached on disk** under a key made of the model's hash, the calibration text's hash, the
//!   options and crunch's version: a second `fit` on the same model is instant.

pub mod damage;
pub mod reference;

use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};
use crate::quantize::{self, rules, Ftype, QuantizeOptions};
use crunch_calib::imatrix::{CollectOptions, Collector};
use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;
use crunch_model::LlamaModel;
use reference::{mean_kld, model_err, scored_logits, Chunks};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bumped whenever the profile's meaning or format changes (invalidates caches).
pub const PROFILE_VERSION: u32 = 1;

/// The GGUF types llama.cpp runs that fit chooses from (before block-size fallbacks).
pub const CANDIDATE_TYPES: &[GgmlType] = &[
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::F16,
];

/// The lowest-bit i-quants, added to [`CANDIDATE_TYPES`] when the profile is measured with an
/// importance matrix (llama.cpp refuses to write them without one, see
/// [`rules::requires_imatrix`]).
pub const IMATRIX_CANDIDATE_TYPES: &[GgmlType] = &[
    GgmlType::IQ1_S,
    GgmlType::IQ1_M,
    GgmlType::IQ2_XXS,
    GgmlType::IQ2_XS,
    GgmlType::IQ2_S,
    GgmlType::IQ3_XXS,
    GgmlType::IQ3_S,
];

/// Whether `method` quantizes with an importance matrix (so the i-quants of
/// [`IMATRIX_CANDIDATE_TYPES`] can be written).
pub fn has_importance(method: Method) -> bool {
    !matches!(method, Method::Rtn)
}

/// The default candidate types for `method`: [`CANDIDATE_TYPES`], plus the i-quants that need an
/// importance matrix for `imatrix` (GPTQ has no per-element grid for these vector-quantized
/// types and would only round them, so they are left to an explicit `types` list there).
pub fn default_candidates(method: Method) -> Vec<String> {
    let extra = if method == Method::Imatrix { IMATRIX_CANDIDATE_TYPES } else { &[] };
    CANDIDATE_TYPES.iter().chain(extra).map(|t| t.name().to_string()).collect()
}

/// How tensors are quantized (the same method must be used when the plan is written). Profiles
/// are measured for [`Method::Rtn`] and [`Method::Imatrix`].
pub use crate::method::Method;

/// Whether sensitivity profiles (and so `fit` and `search`) support a method.
pub fn profiles(method: Method) -> bool {
    matches!(method, Method::Rtn | Method::Imatrix | Method::Gptq)
}

/// The candidate types for a row length: every candidate mapped through llama.cpp's block-size
/// fallback, without duplicates, smallest first.
pub fn candidates_for(row_len: u64, types: &[GgmlType]) -> Vec<GgmlType> {
    let mut out: Vec<GgmlType> = Vec::new();
    for &t in types {
        if let Some(f) = rules::fallback(t, row_len) {
            if row_len.is_multiple_of(f.block_size() as u64) && !out.contains(&f) {
                out.push(f);
            }
        }
    }
    out.sort_by_key(|t| (t.type_size() * 1_000_000 / t.block_size(), t.name()));
    out
}

/// What a profile's predicted damage is.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Mean KL-divergence of the next-token distributions from the base's (causal LMs).
    #[default]
    Kld,
    /// Mean `1 − cosine` of the sentence embeddings against the base's (encoders).
    EmbedDamage,
}

impl Objective {
    /// The objective for the model in `file`: embedding damage for an encoder, KLD otherwise.
    pub fn of(file: &GgufFile) -> Self {
        if crate::eval::embed::is_encoder(file.metadata()) {
            Objective::EmbedDamage
        } else {
            Objective::Kld
        }
    }

    /// What the objective is called in messages.
    pub fn describe(self) -> &'static str {
        match self {
            Objective::Kld => "KL-divergence",
            Objective::EmbedDamage => "embedding damage (1 - cosine)",
        }
    }
}

/// What to measure, and on what.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SensitivityOptions {
    pub method: Method,
    /// Calibration chunk length in tokens.
    pub ctx: usize,
    /// Calibration chunks.
    pub chunks: usize,
    /// Consecutive layers measured together as one group per tensor kind.
    pub band: usize,
    /// Candidate types (before fallbacks).
    pub types: Vec<String>,
}

impl Default for SensitivityOptions {
    fn default() -> Self {
        SensitivityOptions { method: Method::Rtn, ctx: 128, chunks: 2, band: 5, types: default_candidates(Method::Rtn) }
    }
}

impl SensitivityOptions {
    /// The candidate types, parsed.
    ///
    /// # Errors
    /// Unknown type names, or types crunch cannot write.
    pub fn candidate_types(&self) -> Result<Vec<GgmlType>> {
        self.types
            .iter()
            .map(|s| {
                let t: GgmlType =
                    s.parse().map_err(|_| Error::Invalid(format!("candidate types: unknown tensor type {s:?}")))?;
                if crunch_quant::kernels(t).is_none() {
                    return Err(Error::Invalid(format!("candidate types: crunch cannot write {t}")));
                }
                if IMATRIX_CANDIDATE_TYPES.contains(&t) && !has_importance(self.method) {
                    return Err(Error::Invalid(format!(
                        "candidate types: {t} needs an importance matrix (method imatrix, gptq or awq), not {}",
                        self.method
                    )));
                }
                Ok(t)
            })
            .collect()
    }
}

/// One candidate type for one tensor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Choice {
    #[serde(with = "type_name")]
    pub ty: GgmlType,
    pub bytes: u64,
    /// Relative activation-weighted quantization error.
    pub rel_err: f64,
    /// Predicted contribution to the KL-divergence.
    pub kld: f64,
}

/// A quantizable tensor and its candidates (smallest first).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TensorProfile {
    pub name: String,
    pub group: String,
    pub n_elements: u64,
    pub row_len: u64,
    #[serde(with = "type_name")]
    pub src_type: GgmlType,
    pub choices: Vec<Choice>,
}

impl TensorProfile {
    pub fn choice(&self, ty: GgmlType) -> Option<&Choice> {
        self.choices.iter().find(|c| c.ty == ty)
    }
}

/// One probe measurement: a group quantized to one type, everything else left as in the base.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Probe {
    #[serde(with = "type_name")]
    pub ty: GgmlType,
    /// Σ r over the group's tensors at that type.
    pub sum_rel_err: f64,
    /// Measured mean KL-divergence on the calibration text.
    pub kld: f64,
}

/// A group of tensors measured together and its fitted scale.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GroupCalibration {
    pub group: String,
    pub tensors: Vec<String>,
    pub probes: Vec<Probe>,
    /// Predicted KLD per unit of relative error.
    pub alpha: f64,
}

/// The whole profile.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    pub version: u32,
    pub crunch_version: String,
    pub model_sha256: String,
    pub calibration_sha256: String,
    pub options: SensitivityOptions,
    /// What `Choice::kld` and the probes' `kld` measure (KL-divergence for causal LMs, embedding
    /// damage for encoders).
    #[serde(default)]
    pub objective: Objective,
    pub tensors: Vec<TensorProfile>,
    pub groups: Vec<GroupCalibration>,
    /// Per-column activation mean squares of the linear layers on the calibration text (kept for
    /// the `imatrix` method, which quantizes with them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub importance: BTreeMap<String, Vec<f32>>,
    /// Calibration tokens evaluated per probe.
    pub n_tokens: usize,
    pub seconds: f64,
}

impl Profile {
    /// The cache key for these inputs.
    pub fn cache_key(model_sha256: &str, calibration_sha256: &str, opts: &SensitivityOptions) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let opts = serde_json::to_string(opts).unwrap_or_default();
        for part in [model_sha256, calibration_sha256, &opts, env!("CARGO_PKG_VERSION"), &PROFILE_VERSION.to_string()] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        crunch_core::output::hex(&h.finalize())[..24].to_string()
    }

    /// Load a cached profile if one exists for these inputs.
    pub fn load_cached(dir: &Path, key: &str) -> Option<Profile> {
        let bytes = std::fs::read(dir.join(format!("{key}.json"))).ok()?;
        let p: Profile = serde_json::from_slice(&bytes).ok()?;
        (p.version == PROFILE_VERSION).then_some(p)
    }

    /// Store the profile in the cache (atomically).
    ///
    /// # Errors
    /// I/O errors.
    pub fn save_cached(&self, dir: &Path, key: &str) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(format!("{key}.json"));
        let bytes = serde_json::to_vec(self).map_err(|e| Error::Invalid(format!("profile: {e}")))?;
        crunch_core::output::write_small_atomic(&path, &bytes).map_err(|e| Error::io(&path, e))?;
        Ok(path)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorProfile> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// The group a tensor is measured in: `kind@band` for layer tensors (`ffn_down@0-4`), the
/// tensor's own name otherwise.
pub fn group_of(name: &str, band: usize, n_layer: usize) -> String {
    if let Some(rest) = name.strip_prefix("blk.") {
        if let Some((layer, kind)) = rest.split_once('.') {
            if let Ok(l) = layer.parse::<usize>() {
                let band = band.max(1);
                let lo = l / band * band;
                let hi = (lo + band - 1).min(n_layer.saturating_sub(1).max(lo));
                let kind = kind.trim_end_matches(".weight");
                return format!("{kind}@{lo}-{hi}");
            }
        }
    }
    name.trim_end_matches(".weight").to_string()
}

/// The calibration inputs: the chunks the probes are evaluated on.
pub struct Calibration {
    pub chunks: Chunks,
    pub sha256: String,
}

/// A plan writing `types` (by tensor name) and keeping every other tensor as it is.
///
/// # Errors
/// A type that does not fit a tensor's rows.
pub fn plan_with_types(file: &GgufFile, types: &BTreeMap<String, GgmlType>) -> Result<quantize::Plan> {
    let main = types.values().max_by_key(|t| types.values().filter(|u| u == t).count()).copied();
    let ftype = main.and_then(Ftype::for_type).unwrap_or(Ftype::Q8_0);
    let mut opts = QuantizeOptions::new(ftype);
    opts.pure = true;
    opts.allow_requantize = true;
    for t in file.tensors() {
        if !rules::allows_quantization(&t.name, &t.dims, true) {
            continue;
        }
        let ty = types.get(&t.name).copied().unwrap_or(t.ty);
        let re = regex::Regex::new(&format!("^{}$", regex::escape(&t.name)))
            .map_err(|e| Error::Invalid(format!("tensor {}: {e}", t.name)))?;
        opts.tensor_types.push((re, ty));
    }
    let mut plan = quantize::build_plan(file.metadata(), file.tensors(), &opts)?;
    // A type that needed a fallback is not what was asked for: refuse rather than write something else.
    if let Some(t) = plan.tensors.iter().find(|t| t.wanted.is_some()) {
        return Err(Error::Plan(format!(
            "tensor {}: {} does not fit its rows of {}",
            t.name,
            t.wanted.map(|w| w.name()).unwrap_or("?"),
            t.dims[0]
        )));
    }
    plan.n_fallback = 0;
    Ok(plan)
}

/// A tensor of `file` as f32 values (dequantized) and its row length.
pub(crate) fn tensor_f32(file: &GgufFile, name: &str) -> Result<(Vec<f32>, u64)> {
    let info = file.tensor(name).ok_or_else(|| Error::Invalid(format!("tensor {name} missing")))?;
    let row_len = info.row_len();
    let mut out = vec![0f32; info.n_elements() as usize];
    let src = file.tensor_data(info);
    if info.ty == GgmlType::F32 {
        for (d, c) in out.iter_mut().zip(src.chunks_exact(4)) {
            *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    } else {
        crunch_quant::dequantize_rows(info.ty, src, row_len as usize, &mut out)
            .map_err(|source| Error::Quant { tensor: name.to_string(), source })?;
    }
    Ok((out, row_len))
}

/// Where probe files go: a RAM-backed folder when there is one.
pub fn default_work_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Measure the profile of the model in `base_path`.
///
/// # Errors
/// Model, I/O and quantization errors; cancellation.
#[allow(clippy::too_many_arguments)]
pub fn measure(
    base_path: &Path,
    model_sha256: &str,
    calib: &Calibration,
    opts: &SensitivityOptions,
    work_dir: &Path,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Profile> {
    let t0 = std::time::Instant::now();
    // A GPTQ plan is profiled as importance-weighted rounding (GPTQ's errors are at most those,
    // so the prediction is conservative); the file is then written with GPTQ.
    let weighted = matches!(opts.method, Method::Imatrix | Method::Gptq);
    let types = opts.candidate_types()?;
    let file = Arc::new(GgufFile::open(base_path)?);
    let objective = Objective::of(&file);

    // 1. The base pass: reference outputs and activation statistics (an importance matrix as
    // `crunch imatrix` collects it).
    progress.start("sensitivity: base pass", calib.chunks.chunks.len() as u64);
    let mut collector = Collector::new(CollectOptions { process_output: true });
    let mut collect_err = None;
    let (reference, n_layer) = {
        let mut obs = |n: &str, x: &[f32], t: usize| {
            if collect_err.is_none() {
                collect_err = collector.observe(n, x, t).err();
            }
        };
        Reference::base(base_path, file.clone(), objective, &calib.chunks, &mut obs, cancel)?
    };
    if let Some(e) = collect_err {
        return Err(crate::calibrate::calib_err(e));
    }
    let stats = collector.to_imatrix(Vec::new(), opts.ctx as u32);

    // 2. Quantization error of every candidate type on every tensor.
    let candidates: Vec<_> =
        file.tensors().iter().filter(|t| rules::allows_quantization(&t.name, &t.dims, true)).cloned().collect();
    let total: u64 = candidates.iter().map(|t| t.n_elements()).sum();
    progress.start("sensitivity: quantization error per type", total);
    let mut tensors = Vec::with_capacity(candidates.len());
    let mut done = 0;
    for info in &candidates {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let (data, row_len) = tensor_f32(&file, &info.name)?;
        let imp = stats.importance(&info.name);
        let quant_w = if weighted { imp.as_deref() } else { None };
        let mut choices = Vec::new();
        for ty in candidates_for(row_len, &types) {
            let rel_err = damage::relative_error(&info.name, &data, row_len as usize, ty, quant_w, imp.as_deref())?;
            let bytes = ty.tensor_size(row_len as usize, info.n_rows() as usize).unwrap_or(0) as u64;
            choices.push(Choice { ty, bytes, rel_err, kld: 0.0 });
        }
        file.release_tensor(info);
        done += info.n_elements();
        progress.advance(done, &info.name);
        tensors.push(TensorProfile {
            name: info.name.clone(),
            group: group_of(&info.name, opts.band, n_layer),
            n_elements: info.n_elements(),
            row_len,
            src_type: info.ty,
            choices,
        });
    }

    // 3. Probes: one group at a time quantized, KL-divergence on the calibration text.
    let mut group_names: Vec<String> = Vec::new();
    for t in &tensors {
        if !group_names.contains(&t.group) {
            group_names.push(t.group.clone());
        }
    }
    let importance = |name: &str| stats.importance(name);
    let mut groups = Vec::new();
    progress.start("sensitivity: probes", group_names.len() as u64);
    for (gi, g) in group_names.iter().enumerate() {
        let members: Vec<&TensorProfile> = tensors.iter().filter(|t| &t.group == g).collect();
        let probe_types = probe_types(&members);
        let mut probes = Vec::new();
        for ty in probe_types {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let mut map = BTreeMap::new();
            let mut sum_rel_err = 0.0;
            for m in &members {
                let c = m.choice(ty).or_else(|| m.choices.first()).expect("a tensor has at least one candidate");
                map.insert(m.name.clone(), c.ty);
                sum_rel_err += c.rel_err;
            }
            let plan = plan_with_types(&file, &map)?;
            let tmp = work_dir.join(format!("crunch-probe-{}-{gi}-{}.gguf", std::process::id(), ty.name()));
            let imp: Option<quantize::exec::ImportanceLookup> = if weighted { Some(&importance) } else { None };
            quantize::execute(&file, &plan, &tmp, imp, &crate::progress::NoProgress, cancel)?;
            let res = reference.damage(&tmp, &calib.chunks, cancel);
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(crunch_core::output::sidecar_path(&tmp));
            let kld = res?;
            tracing::info!("probe {g} @ {ty}: sum r = {sum_rel_err:.3e}, damage = {kld:.3e}");
            probes.push(Probe { ty, sum_rel_err, kld });
        }
        // Least squares through the origin: alpha = Σ kld·r / Σ r².
        let (num, den) =
            probes.iter().fold((0.0, 0.0), |(n, d), p| (n + p.kld * p.sum_rel_err, d + p.sum_rel_err.powi(2)));
        let alpha = if den > 0.0 { (num / den).max(0.0) } else { 0.0 };
        groups.push(GroupCalibration {
            group: g.clone(),
            tensors: members.iter().map(|m| m.name.clone()).collect(),
            probes,
            alpha,
        });
        progress.advance(gi as u64 + 1, g);
    }
    for t in &mut tensors {
        let alpha = groups.iter().find(|g| g.group == t.group).map_or(0.0, |g| g.alpha);
        for c in &mut t.choices {
            c.kld = alpha * c.rel_err;
        }
    }
    progress.finish("sensitivity profile ready");
    let importance = if weighted {
        tensors.iter().filter_map(|t| Some((t.name.clone(), stats.importance(&t.name)?))).collect()
    } else {
        BTreeMap::new()
    };
    Ok(Profile {
        version: PROFILE_VERSION,
        crunch_version: env!("CARGO_PKG_VERSION").to_string(),
        model_sha256: model_sha256.to_string(),
        calibration_sha256: calib.sha256.clone(),
        options: opts.clone(),
        objective,
        tensors,
        groups,
        importance,
        n_tokens: calib.chunks.chunks.iter().map(|c| c.len()).sum(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The base model's outputs on the calibration sequences, which every probe is compared with.
enum Reference {
    /// A causal LM's scored logits per chunk.
    Lm(Vec<Vec<f32>>),
    /// An encoder's sentence embeddings per sequence.
    Encoder(Vec<Vec<f32>>),
}

impl Reference {
    /// Run the base model on the calibration sequences, `obs` seeing every linear layer's input.
    /// Returns the reference and the model's layer count.
    fn base(
        path: &Path,
        file: Arc<GgufFile>,
        objective: Objective,
        chunks: &Chunks,
        obs: &mut dyn crunch_model::Observer,
        cancel: &Cancel,
    ) -> Result<(Self, usize)> {
        match objective {
            Objective::Kld => {
                let model = LlamaModel::from_gguf(file).map_err(|e| model_err(path, e))?;
                Ok((Reference::Lm(scored_logits(&model, chunks, Some(obs))?), model.config.n_layer))
            }
            Objective::EmbedDamage => {
                let model = crunch_model::BertModel::open(path).map_err(|e| model_err(path, e))?;
                let emb = crate::eval::embed::embed_observed(&model, &chunks.chunks, Some(obs), cancel)?;
                Ok((Reference::Encoder(emb), model.config.n_layer))
            }
        }
    }

    /// The damage of the model at `path` against the reference on the same sequences.
    fn damage(&self, path: &Path, chunks: &Chunks, cancel: &Cancel) -> Result<f64> {
        match self {
            Reference::Lm(base) => {
                let m = LlamaModel::open(path).map_err(|e| model_err(path, e))?;
                mean_kld(&m, chunks, base)
            }
            Reference::Encoder(base) => {
                let m = crunch_model::BertModel::open(path).map_err(|e| model_err(path, e))?;
                let emb = crate::eval::embed::embed_observed(&m, &chunks.chunks, None, cancel)?;
                Ok(crate::eval::embed::mean_damage(base, &emb))
            }
        }
    }
}

/// The types a group is probed with: 4.5-bit Q4_0 (valid for any row of 32), plus the group's
/// smallest candidate when that is much smaller (to see the low-bit end of the curve).
fn probe_types(members: &[&TensorProfile]) -> Vec<GgmlType> {
    let mut v = vec![GgmlType::Q4_0];
    let smallest = members
        .iter()
        .filter_map(|m| m.choices.first())
        .map(|c| c.ty)
        .min_by_key(|t| t.type_size() * 1_000_000 / t.block_size());
    if let Some(s) = smallest {
        let bpw = s.type_size() as f64 * 8.0 / s.block_size() as f64;
        if bpw < 4.0 && members.iter().all(|m| m.choice(s).is_some()) {
            v.push(s);
        }
    }
    v
}

mod type_name {
    use crunch_core::GgmlType;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &GgmlType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(t.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<GgmlType, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|_| serde::de::Error::custom(format!("unknown tensor type {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iquants_are_candidates_only_with_an_importance_matrix() {
        let rtn = default_candidates(Method::Rtn);
        let im = default_candidates(Method::Imatrix);
        for t in IMATRIX_CANDIDATE_TYPES {
            assert!(!rtn.contains(&t.name().to_string()) && im.contains(&t.name().to_string()), "{t}");
        }
        let opts = SensitivityOptions { types: vec!["IQ2_XXS".into()], ..Default::default() };
        let e = opts.candidate_types().unwrap_err().to_string();
        assert!(e.contains("IQ2_XXS") && e.contains("importance"), "{e}");
        let ok = SensitivityOptions { method: Method::Imatrix, types: im.clone(), ..Default::default() };
        assert_eq!(ok.candidate_types().unwrap().len(), im.len());
    }

    #[test]
    fn candidates_follow_block_sizes() {
        let c576 = candidates_for(576, CANDIDATE_TYPES);
        assert!(c576.iter().all(|t| 576 % t.block_size() == 0), "{c576:?}");
        assert!(!c576.contains(&GgmlType::Q4_K) && c576.contains(&GgmlType::IQ4_NL));
        let c1536 = candidates_for(1536, CANDIDATE_TYPES);
        assert_eq!(c1536.first(), Some(&GgmlType::Q2_K));
        assert_eq!(c1536.last(), Some(&GgmlType::F16));
        assert_eq!(c1536.len(), CANDIDATE_TYPES.len());
    }

    #[test]
    fn groups() {
        assert_eq!(group_of("blk.7.ffn_down.weight", 5, 30), "ffn_down@5-9");
        assert_eq!(group_of("blk.29.attn_q.weight", 4, 30), "attn_q@28-29");
        assert_eq!(group_of("token_embd.weight", 5, 30), "token_embd");
        assert_eq!(group_of("blk.3.attn_k.weight", 1, 30), "attn_k@3-3");
    }
}
