//! Low-rank error correction of a quantized model, shipped as a LoRA adapter llama.cpp loads
//! (`llama-cli -m QUANT.gguf --lora OUT.gguf`) and crunch's engine applies (`--lora`).
//!
//! For every targeted linear weight, the error the quantizer left, `E = W − Ŵ` (base minus the
//! quantized file, both dequantized), is approximated by a rank-`r` product `B A`
//! (`crunch_calib::lowrank::correction`): with calibration text, the SVD of `E` whitened by the
//! second moment `H = XᵀX` of the layer's inputs on the base model (the EoRA / QERA closed form:
//! it minimises the error of the layer's *outputs* on those inputs); without text, the plain SVD.
//!
//! Ranks are either the same for every tensor (`rank`) or spread under a byte budget: keeping
//! component `i` of tensor `t` removes `σ_{t,i}²` of its whitened output error, i.e.
//! `σ_{t,i}² / ‖W_t X‖²` of its *relative* output error (the quantity crunch's sensitivity profile
//! turns into KL-divergence), for `(n_in + n_out)` elements of adapter. Components are taken
//! greedily by relative error removed per byte until the budget is spent (components of one
//! tensor come in order, largest first, so the greedy choice never skips one).
//!
//! The adapter's `alpha` is the most common rank; a tensor of another rank `r` gets `B` scaled by
//! `r / alpha`, so every correction is applied at exactly scale 1 (llama.cpp multiplies `B A` by
//! `alpha / r`). Each component is balanced (`B` column and `A` row of equal norm) so f16 keeps
//! its precision.
//!
//! Memory: one block's f32 weights and the calibration activations (as the other calibrated
//! methods), plus the factors kept for the adapter: `max_rank · (n_in + n_out)` f32 per tensor
//! while a budget is being spread, the chosen ranks only with a fixed rank.

use crate::calibrate::calib_err;
use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};
use crunch_calib::linalg;
use crunch_calib::lowrank::{correction_whitened, whitening, LowRank, Whitening};
use crunch_calib::runner::{Group, Layer, Runner};
use crunch_calib::text::{self, ChunkOptions, TextSource};
use crunch_core::gguf::{GgufFile, TensorInfo};
use crunch_core::GgmlType;
use crunch_model::lora::{self, LoraTensor};
use rayon::prelude::*;
use regex::Regex;
use serde::Serialize;
use std::collections::{BTreeMap, BinaryHeap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// How ranks are chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RankChoice {
    /// The same rank for every targeted tensor.
    Fixed(usize),
    /// Ranks spread so the adapter's tensor data fits this many bytes.
    Budget(u64),
}

/// What to correct and how.
#[derive(Clone, Debug)]
pub struct LowrankOptions {
    pub ranks: RankChoice,
    /// Calibration text (whitened SVD); `None`: plain SVD of the error.
    pub text: Option<TextSource>,
    pub chunks: ChunkOptions,
    /// Only tensors whose GGUF name matches (default: every linear weight of the blocks).
    pub tensors: Option<Regex>,
    /// The largest rank a budget may give one tensor.
    pub max_rank: usize,
    /// Type of the adapter's tensors (f32, f16, bf16, q8_0).
    pub ty: GgmlType,
    /// Dampening of `H`'s diagonal, relative to its mean.
    pub damp: f64,
    /// Where these options came from, for errors (`lowrank`, `fit.correction`).
    pub field: String,
}

/// Defaults shared by the job, the CLI and [`CorrectionSpec`].
pub const DEFAULT_MAX_RANK: usize = 256;
pub const DEFAULT_ADAPTER_TYPE: &str = "f16";
pub const DEFAULT_CTX: usize = 512;
pub const DEFAULT_CHUNKS: usize = 32;
pub const DEFAULT_DAMP: f64 = 0.01;

impl LowrankOptions {
    /// Check the options against the targeted weights `(name, n_in, n_out)`; returns the largest
    /// rank any tensor is computed at.
    ///
    /// # Errors
    /// A rank of 0, not a multiple of the adapter type's block, or larger than a weight allows; an
    /// empty budget; a largest rank below one block; a bad dampening.
    pub fn check(&self, shapes: &[(String, usize, usize)]) -> Result<usize> {
        let f = &self.field;
        let step = self.ty.block_size();
        if !lora::WRITE_TYPES.contains(&self.ty) {
            return Err(Error::field(
                format!("{f}.adapter_type"),
                format!("{}: choose f32, f16, bf16 or q8_0", self.ty),
            ));
        }
        if !(self.damp.is_finite() && self.damp >= 0.0) {
            return Err(Error::field(format!("{f}.damp"), "must be a non-negative number"));
        }
        match self.ranks {
            RankChoice::Fixed(r) => {
                if r == 0 {
                    return Err(Error::field(format!("{f}.rank"), "must be at least 1"));
                }
                if !r.is_multiple_of(step) {
                    return Err(Error::field(
                        format!("{f}.rank"),
                        format!("{r} is not a multiple of {}'s block of {step}", self.ty),
                    ));
                }
                if let Some((n, i, o)) = shapes.iter().find(|(_, i, o)| r > *i.min(o)) {
                    return Err(Error::field(
                        format!("{f}.rank"),
                        format!("{r} is larger than tensor {n} ([{i}, {o}]) allows: at most {}", i.min(o)),
                    ));
                }
                Ok(r)
            }
            RankChoice::Budget(b) => {
                if b == 0 {
                    return Err(Error::field(format!("{f}.budget"), "must be positive"));
                }
                if self.max_rank < step {
                    return Err(Error::field(
                        format!("{f}.max_rank"),
                        format!("{} is below one block of {} ({step})", self.max_rank, self.ty),
                    ));
                }
                let cheapest = shapes.iter().map(|(_, i, o)| lora_bytes(self.ty, i + o) * step as u64).min();
                if let Some(c) = cheapest.filter(|&c| c > b) {
                    return Err(Error::field(
                        format!("{f}.budget"),
                        format!(
                            "{b} bytes is too small for one rank of any targeted tensor (the cheapest takes {c}); \
                             raise it or use a fixed rank"
                        ),
                    ));
                }
                Ok(self.max_rank)
            }
        }
    }
}

/// What the correction did to one tensor.
#[derive(Clone, Debug, Serialize)]
pub struct CorrectedTensor {
    pub name: String,
    /// The tensor's type in the quantized model.
    pub quant_type: String,
    pub n_in: usize,
    pub n_out: usize,
    pub rank: usize,
    /// Relative output error of the quantized weight, `‖E X‖² / ‖W X‖²` (weight-space with no
    /// text), before and after the correction.
    pub error_before: f64,
    pub error_after: f64,
    /// Bytes of `A` and `B` in the adapter.
    pub bytes: u64,
}

/// What `lowrank` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct LowrankReport {
    pub tensors: Vec<CorrectedTensor>,
    /// `adapter.lora.alpha` (the most common rank).
    pub alpha: f32,
    pub adapter_type: String,
    /// Bytes of tensor data, and of the whole file.
    pub data_bytes: u64,
    pub file_bytes: u64,
    pub sha256: String,
    /// Whether the SVD was whitened by calibration activations.
    pub whitened: bool,
    pub calibration_tokens: usize,
    /// Relative output error summed over the targeted tensors, before and after.
    pub error_before: f64,
    pub error_after: f64,
    pub seconds: f64,
}

/// One targeted weight, found in both files.
struct Target {
    name: String,
    n_in: usize,
    n_out: usize,
    quant: TensorInfo,
}

/// A tensor's correction at the largest rank it may get, with what each component buys.
struct Candidate {
    name: String,
    n_in: usize,
    quant_type: GgmlType,
    lr: LowRank,
    /// `‖W X‖²` (or `‖W‖²`): the base output energy the errors are relative to.
    energy: f64,
}

const LINEARS: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

/// Whether `name` is a linear weight of a block (`blk.N.attn_q.weight`, …).
fn is_block_linear(name: &str) -> bool {
    name.strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .and_then(|(_, rest)| rest.strip_suffix(".weight"))
        .is_some_and(|kind| LINEARS.contains(&kind))
}

/// The linear weights of the blocks both files have, filtered by `pattern`, in file order.
fn targets(base: &GgufFile, quant: &GgufFile, pattern: Option<&Regex>, field: &str) -> Result<Vec<Target>> {
    let mut out = Vec::new();
    for t in base.tensors() {
        if !is_block_linear(&t.name) || pattern.is_some_and(|p| !p.is_match(&t.name)) {
            continue;
        }
        let q = quant.tensor(&t.name).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: tensor {} of the base is missing (another model?)",
                quant.path.display(),
                t.name
            ))
        })?;
        if q.dims != t.dims || t.dims.len() != 2 || t.dims.contains(&0) {
            return Err(Error::Invalid(format!(
                "tensor {}: shape {} in {}, {} in {} (the quantized file must be made from this base)",
                t.name,
                t.shape_string(),
                base.path.display(),
                q.shape_string(),
                quant.path.display()
            )));
        }
        for (f, info) in [(base, t), (quant, q)] {
            if crunch_quant::kernels(info.ty).is_none() {
                return Err(Error::Invalid(format!(
                    "{}: tensor {} is {}, which crunch cannot dequantize",
                    f.path.display(),
                    info.name,
                    info.ty
                )));
            }
        }
        out.push(Target {
            name: t.name.clone(),
            n_in: t.dims[0] as usize,
            n_out: t.dims[1] as usize,
            quant: q.clone(),
        });
    }
    if out.is_empty() {
        return Err(Error::field(
            format!("{field}.tensors"),
            match pattern {
                Some(p) => format!("no linear weight of the blocks matches {:?}", p.as_str()),
                None => "the base model has no linear weights in blocks (blk.N.attn_q.weight, …)".into(),
            },
        ));
    }
    Ok(out)
}

fn dequantize(file: &GgufFile, info: &TensorInfo) -> Result<Vec<f32>> {
    let mut out = vec![0f32; info.n_elements() as usize];
    crunch_quant::dequantize_rows(info.ty, file.tensor_data(info), info.row_len() as usize, &mut out)
        .map_err(|source| Error::Quant { tensor: info.name.clone(), source })?;
    Ok(out)
}

/// `tr(W H Wᵀ)`: the squared norm of `W`'s outputs for inputs of second moment `h` (`W H` by
/// one matrix product, then its entries against `W`'s).
fn output_energy(w: &[f32], n_in: usize, h: &[f32]) -> f64 {
    // H is symmetric, so W Hᵀ = W H.
    let wh = linalg::matmul_xwt(w, n_in, h, n_in);
    wh.iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Spread ranks under `budget` bytes: `gains[t][i]` is what component `i` of tensor `t` buys
/// (non-increasing in `i`), `cost[t]` its bytes; ranks move in steps of `step`. Greedy by gain
/// per byte; returns each tensor's rank.
pub fn allocate(gains: &[Vec<f64>], cost: &[u64], budget: u64, step: usize) -> Vec<usize> {
    #[derive(PartialEq)]
    struct Next(f64, usize);
    impl Eq for Next {}
    impl PartialOrd for Next {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for Next {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            self.0.total_cmp(&o.0).then(o.1.cmp(&self.1))
        }
    }
    let step = step.max(1);
    let value = |t: usize, from: usize| -> Option<f64> {
        let g = &gains[t];
        (from + step <= g.len()).then(|| g[from..from + step].iter().sum::<f64>() / (cost[t] * step as u64) as f64)
    };
    let mut ranks = vec![0usize; gains.len()];
    let mut heap: BinaryHeap<Next> = (0..gains.len()).filter_map(|t| value(t, 0).map(|v| Next(v, t))).collect();
    let mut left = budget;
    while let Some(Next(_, t)) = heap.pop() {
        let c = cost[t] * step as u64;
        if c > left {
            continue; // this tensor's next step no longer fits; cheaper ones may
        }
        left -= c;
        ranks[t] += step;
        if let Some(v) = value(t, ranks[t]) {
            heap.push(Next(v, t));
        }
    }
    ranks
}

/// Correct the quantization error of `quant` against `base` and write the correction to `output`
/// as a GGUF LoRA adapter (atomic, with a `.sha256` sidecar).
///
/// # Errors
/// Files that do not match (architecture, tensors, shapes), a rank larger than a targeted
/// matrix allows, a budget too small for anything, calibration text shorter than a chunk,
/// cancellation (nothing is written), I/O errors.
pub fn lowrank(
    base_path: &Path,
    quant_path: &Path,
    output: &Path,
    o: &LowrankOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<LowrankReport> {
    let t0 = Instant::now();
    let base = Arc::new(GgufFile::open(base_path)?);
    let quant = GgufFile::open(quant_path)?;
    let arch = base
        .metadata()
        .architecture()
        .ok_or_else(|| Error::Invalid(format!("{}: missing general.architecture", base_path.display())))?
        .to_string();
    if quant.metadata().architecture() != Some(arch.as_str()) {
        return Err(Error::Invalid(format!(
            "{} is {:?} (general.architecture), the base {} is {arch:?}",
            quant_path.display(),
            quant.metadata().architecture().unwrap_or("unknown"),
            base_path.display()
        )));
    }
    let step = o.ty.block_size();
    let targets = targets(&base, &quant, o.tensors.as_ref(), &o.field)?;
    let shapes: Vec<(String, usize, usize)> = targets.iter().map(|t| (t.name.clone(), t.n_in, t.n_out)).collect();
    let cap = o.check(&shapes)?;
    let bytes_per = |t: &Target| -> u64 { lora_bytes(o.ty, t.n_in + t.n_out) };
    let by_name: BTreeMap<&str, &Target> = targets.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut cands: Vec<Candidate> = Vec::with_capacity(targets.len());
    let mut calibration_tokens = 0;
    let correct = |t: &Target, w: &[f32], h: Option<(&[f32], &Whitening)>| -> Result<Candidate> {
        let wq = dequantize(&quant, &t.quant)?;
        let err: Vec<f32> = w.iter().zip(&wq).map(|(a, b)| a - b).collect();
        let energy = match h {
            Some((h, _)) => output_energy(w, t.n_in, h),
            None => w.iter().map(|&x| (x as f64).powi(2)).sum(),
        };
        let max = cap.min(t.n_in.min(t.n_out)) / step * step;
        let mut lr = correction_whitened(&t.name, &err, t.n_in, h.map(|(_, l)| l), max).map_err(calib_err)?;
        lr.balance(t.n_in);
        Ok(Candidate { name: t.name.clone(), n_in: t.n_in, quant_type: t.quant.ty, lr, energy })
    };
    match &o.text {
        Some(src) => {
            let runner = Runner::new(base.clone()).map_err(calib_err)?;
            let tok = crunch_model::tokenizer::Tokenizer::from_gguf(&base)?;
            let chunks = text::load_chunks(src, &tok, o.chunks).map_err(calib_err)?;
            let n_ctx = chunks.n_ctx;
            calibration_tokens = chunks.chunks.len() * n_ctx;
            let mut x = runner.embed(&chunks.chunks).map_err(calib_err)?;
            let n_layer = runner.config.n_layer;
            progress.start("lowrank", n_layer as u64);
            for i in 0..n_layer {
                if cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let mut layer = runner.load_layer(i).map_err(calib_err)?;
                let mut failed: Option<Error> = None;
                let mut hook = |grp: Group, l: &mut Layer, input: &mut [f32]| -> crunch_calib::Result<()> {
                    let lins: Vec<&crunch_calib::runner::Linear> = l
                        .group_mut(grp)
                        .into_iter()
                        .map(|x| &*x)
                        .filter(|x| by_name.contains_key(x.name.as_str()))
                        .collect();
                    if lins.is_empty() || failed.is_some() {
                        return Ok(());
                    }
                    let n_in = lins[0].n_in;
                    let mut h = vec![0f32; n_in * n_in];
                    linalg::add_xtx(&mut h, input, n_in);
                    // The group's tensors share H and its factor: their SVDs run side by side.
                    let l = whitening(&lins[0].name, &h, n_in, o.damp)?;
                    let done: Vec<Result<Candidate>> = lins
                        .par_iter()
                        .map(|lin| correct(by_name[lin.name.as_str()], &lin.w, Some((&h, &l))))
                        .collect();
                    for c in done {
                        match c {
                            Ok(c) => cands.push(c),
                            Err(e) => {
                                failed = Some(e);
                                return Ok(());
                            }
                        }
                    }
                    Ok(())
                };
                runner.forward_layer(&mut layer, &mut x, n_ctx, &mut hook).map_err(calib_err)?;
                if let Some(e) = failed {
                    return Err(e);
                }
                progress.advance((i + 1) as u64, &format!("block {}/{n_layer}", i + 1));
            }
        }
        None => {
            progress.start("lowrank", targets.len() as u64);
            // A few tensors at a time: their SVDs run side by side, as many as fit in about 2 GiB
            // (an SVD holds about four f64 copies of its matrix).
            let largest = targets.iter().map(|t| 32 * t.n_in as u64 * t.n_out as u64).max().unwrap_or(1);
            let width = ((2u64 << 30) / largest.max(1)).clamp(1, rayon::current_num_threads().max(1) as u64) as usize;
            for (n, group) in targets.chunks(width).enumerate() {
                if cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let done: Vec<Result<Candidate>> = group
                    .par_iter()
                    .map(|t| {
                        let info = base.tensor(&t.name).expect("target comes from the base");
                        correct(t, &dequantize(&base, info)?, None)
                    })
                    .collect();
                for c in done {
                    cands.push(c?);
                }
                progress.advance((n * width + group.len()) as u64, &group[group.len() - 1].name);
            }
        }
    }
    // Ranks.
    let ranks: Vec<usize> = match o.ranks {
        RankChoice::Fixed(r) => cands.iter().map(|c| r.min(c.lr.rank)).collect(),
        RankChoice::Budget(b) => {
            let gains: Vec<Vec<f64>> = cands
                .iter()
                .map(|c| {
                    c.lr.singular_values[..c.lr.rank].iter().map(|s| s * s / c.energy.max(f64::MIN_POSITIVE)).collect()
                })
                .collect();
            let cost: Vec<u64> = cands.iter().map(|c| bytes_per(by_name[c.name.as_str()]).max(1)).collect();
            allocate(&gains, &cost, b, step)
        }
    };
    if ranks.iter().all(|&r| r == 0) {
        return Err(Error::field(
            format!("{}.budget", o.field),
            "too small for one rank of any targeted tensor; raise it or use a fixed rank".to_string(),
        ));
    }
    // alpha: the most common rank; other ranks get B scaled so every correction applies at 1.
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for &r in ranks.iter().filter(|&&r| r > 0) {
        *counts.entry(r).or_default() += 1;
    }
    let alpha_rank = counts.iter().max_by_key(|(r, n)| (**n, **r)).map(|(r, _)| *r).expect("a rank > 0");
    let alpha = alpha_rank as f32;
    let mut report_tensors = Vec::new();
    let mut tensors = Vec::new();
    for (mut c, &r) in cands.into_iter().zip(&ranks) {
        let t = by_name[c.name.as_str()];
        let e = c.energy.max(f64::MIN_POSITIVE);
        let before = c.lr.energy_before / e;
        c.lr.truncate(c.n_in, r);
        report_tensors.push(CorrectedTensor {
            name: c.name.clone(),
            quant_type: c.quant_type.name().to_string(),
            n_in: t.n_in,
            n_out: t.n_out,
            rank: r,
            error_before: before,
            error_after: c.lr.energy_after / e,
            bytes: if r == 0 { 0 } else { bytes_per(t) * r as u64 },
        });
        if r == 0 {
            continue;
        }
        let mut b = c.lr.b;
        if r != alpha_rank {
            let f = r as f32 / alpha;
            b.iter_mut().for_each(|x| *x *= f);
        }
        tensors.push(LoraTensor { base: c.name, rank: r, n_in: t.n_in, n_out: t.n_out, a: c.lr.a, b });
    }
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    let sha256 = lora::write_adapter(output, lora::adapter_metadata(&arch, alpha), o.ty, &tensors)
        .map_err(|e| Error::Model { context: output.display().to_string(), source: e })?;
    let file_bytes = std::fs::metadata(output).map_err(|e| Error::io(output, e))?.len();
    let data_bytes = report_tensors.iter().map(|t| t.bytes).sum();
    let seconds = t0.elapsed().as_secs_f64();
    progress.finish(&format!("{} tensors corrected, {} bytes, {seconds:.1} s", tensors.len(), file_bytes));
    Ok(LowrankReport {
        error_before: report_tensors.iter().map(|t| t.error_before).sum(),
        error_after: report_tensors.iter().map(|t| t.error_after).sum(),
        tensors: report_tensors,
        alpha,
        adapter_type: o.ty.name().to_ascii_lowercase(),
        data_bytes,
        file_bytes,
        sha256,
        whitened: o.text.is_some(),
        calibration_tokens,
        seconds,
    })
}

/// How ranks are asked for: exactly one of `rank` and `budget` (`field` names the option in
/// errors, e.g. `lowrank` or `fit.correction`).
///
/// # Errors
/// Neither or both, a budget that is not a size.
pub fn rank_choice(rank: Option<usize>, budget: Option<&str>, field: &str) -> Result<RankChoice> {
    match (rank, budget) {
        (Some(r), None) => Ok(RankChoice::Fixed(r)),
        (None, Some(b)) => Ok(RankChoice::Budget(
            crate::fit::parse_size(b, "budget").map_err(|e| Error::field(format!("{field}.budget"), e.to_string()))?,
        )),
        (None, None) => Err(Error::field(format!("{field}.rank"), "give a rank or a budget")),
        (Some(_), Some(_)) => Err(Error::field(format!("{field}.budget"), "give a rank or a budget, not both")),
    }
}

/// The adapter type named `s` (f32, f16, bf16, q8_0).
///
/// # Errors
/// Any other name, reported at `field`.
pub fn adapter_type(s: &str, field: &str) -> Result<GgmlType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" => Ok(GgmlType::F32),
        "f16" => Ok(GgmlType::F16),
        "bf16" => Ok(GgmlType::BF16),
        "q8_0" => Ok(GgmlType::Q8_0),
        other => Err(Error::field(field, format!("{other:?}: choose f32, f16, bf16 or q8_0"))),
    }
}

/// A correction asked for beside a quantization (`fit --correction-rank`, a search recipe's
/// `correction:`): its adapter's bytes count against the size target.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CorrectionSpec {
    /// The same rank for every linear weight of the blocks.
    #[serde(default)]
    pub rank: Option<usize>,
    /// Or bytes of adapter data spread over them (`4MiB`).
    #[serde(default)]
    pub budget: Option<String>,
    /// f32, f16 (default), bf16, q8_0.
    #[serde(default)]
    pub adapter_type: Option<String>,
    /// The largest rank a budget gives one tensor (256).
    #[serde(default)]
    pub max_rank: Option<usize>,
    /// Calibration tokens per chunk (512) and chunks (32), from the first half of the text.
    #[serde(default)]
    pub ctx: Option<usize>,
    #[serde(default)]
    pub chunks: Option<usize>,
}

impl CorrectionSpec {
    /// A short tag for names: `r64`, `lr4MiB`.
    pub fn tag(&self) -> String {
        match (self.rank, &self.budget) {
            (Some(r), _) => format!("r{r}"),
            (_, Some(b)) => format!("lr{b}"),
            _ => "lr".into(),
        }
    }

    /// The lowrank options, calibrated on `text` (`field` names the spec in errors).
    ///
    /// # Errors
    /// Neither or both of rank and budget, a bad type, empty chunks.
    pub fn options(&self, field: &str, text: TextSource) -> Result<LowrankOptions> {
        let chunks = ChunkOptions {
            n_ctx: self.ctx.unwrap_or(DEFAULT_CTX),
            n_chunks: Some(self.chunks.unwrap_or(DEFAULT_CHUNKS)),
            skip: 0,
            shuffle_seed: None,
        };
        if chunks.n_ctx == 0 {
            return Err(Error::field(format!("{field}.ctx"), "must be positive"));
        }
        if chunks.n_chunks == Some(0) {
            return Err(Error::field(format!("{field}.chunks"), "must be positive"));
        }
        Ok(LowrankOptions {
            ranks: rank_choice(self.rank, self.budget.as_deref(), field)?,
            text: Some(text),
            chunks,
            tensors: None,
            max_rank: self.max_rank.unwrap_or(DEFAULT_MAX_RANK),
            ty: adapter_type(
                self.adapter_type.as_deref().unwrap_or(DEFAULT_ADAPTER_TYPE),
                &format!("{field}.adapter_type"),
            )?,
            damp: DEFAULT_DAMP,
            field: field.to_string(),
        })
    }

    /// The most bytes the adapter file can take for the model in `file` (exact for a fixed rank;
    /// a budget's data plus the header of every tensor at the largest rank).
    ///
    /// # Errors
    /// As [`CorrectionSpec::options`]; a rank larger than a weight allows.
    pub fn reserve_bytes(&self, field: &str, file: &GgufFile) -> Result<u64> {
        let o = self.options(field, TextSource::Random { n_tokens: 0, seed: 0 })?;
        let arch = file.metadata().architecture().unwrap_or("llama");
        let shapes: Vec<(String, usize, usize)> = file
            .tensors()
            .iter()
            .filter(|t| is_block_linear(&t.name) && t.dims.len() == 2)
            .map(|t| (t.name.clone(), t.dims[0] as usize, t.dims[1] as usize))
            .collect();
        o.check(&shapes)?;
        let meta = lora::adapter_metadata(arch, 1.0);
        let file_bytes = |ranks: &[(String, usize, usize, usize)]| {
            lora::adapter_file_bytes(meta.clone(), o.ty, ranks)
                .map_err(|e| Error::field(format!("{field}.rank"), e.to_string()))
        };
        match o.ranks {
            RankChoice::Fixed(r) => {
                file_bytes(&shapes.into_iter().map(|(n, i, out)| (n, i, out, r)).collect::<Vec<_>>())
            }
            RankChoice::Budget(budget) => {
                // The header of every tensor (sized at the smallest rank), the budget's data and
                // the most alignment padding two tensors per weight can add.
                let step = o.ty.block_size();
                let ranks: Vec<_> = shapes.into_iter().map(|(n, i, out)| (n, i, out, step)).collect();
                let data: u64 = ranks.iter().map(|(_, i, out, r)| lora_bytes(o.ty, i + out) * *r as u64).sum();
                let align = 2 * crunch_core::gguf::limits::DEFAULT_ALIGNMENT * ranks.len() as u64;
                Ok(file_bytes(&ranks)?.saturating_sub(data) + budget + align)
            }
        }
    }
}

/// Bytes of one rank of a tensor's `A` and `B` together: `n` elements (`n_in + n_out`) of `ty`.
fn lora_bytes(ty: GgmlType, n: usize) -> u64 {
    (n as f64 * ty.type_size() as f64 / ty.block_size() as f64).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_follows_gain_per_byte_within_the_budget() {
        // tensor 0: big early gains, cheap; tensor 1: small gains, expensive.
        let gains = vec![vec![8.0, 4.0, 2.0, 1.0], vec![3.0, 2.9, 0.1, 0.0]];
        let cost = vec![10, 20];
        let r = allocate(&gains, &cost, 40, 1);
        // per byte: t0 0.8, 0.4, 0.2, 0.1; t1 0.15, 0.145 → t0 takes 3 (30 bytes), 10 left.
        assert_eq!(r, vec![4, 0]);
        // t0 ×3 (30), t1 ×2 (70); t0's last (10) and t1's third (20) no longer fit.
        let r = allocate(&gains, &cost, 75, 1);
        assert_eq!(r, vec![3, 2]);
        assert_eq!(allocate(&gains, &cost, 5, 1), vec![0, 0]);
        // steps of 2: t0's first step is worth (8+4)/20 = 0.6 per byte.
        assert_eq!(allocate(&gains, &cost, 30, 2), vec![2, 0]);
        assert_eq!(allocate(&gains, &cost, 40, 2), vec![4, 0]);
    }
}
