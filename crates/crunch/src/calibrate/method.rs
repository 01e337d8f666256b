//! `crunch quantize --method gptq|awq|awq,gptq` and `crunch prune --method wanda|sparsegpt`: run
//! the calibrated methods block by block and keep their results (packed GPTQ and joint SparseGPT
//! tensors, AWQ-rescaled weights and norms, pruned weights) in a scratch folder beside the output
//! until the quantizer writes the GGUF. The same pass rounds onto the group-wise integers of GPU
//! checkpoints ([`calibrate_int`]), keeping GPTQ's codes and AWQ's rescaled tensors in memory for
//! the export.
//!
//! One pass serves both: each weight has a [`Grid`] (a GGUF type from the plan, or one
//! [`IntSpec`] for every block linear), and what the pass computed goes to a `Keep` (scratch
//! files for the quantizer, maps for the export).

use super::calib_err;
use super::prune::{prune_linear, PruneSpec, PrunedTensor};
use crate::error::{Error, Result};
use crate::method::Method;
use crate::progress::{Cancel, Progress};
use crate::quantize::{Plan, Replacement};
use crunch_calib::awq::{self, AwqOptions};
use crunch_calib::gptq::{self, GptqOptions, Packed};
use crunch_calib::prune::{self, PruneMethod};
use crunch_calib::runner::{Group, Layer, Runner};
use crunch_calib::text::{self, ChunkOptions, TextSource};
use crunch_calib::{linalg, CalibError, Grid, Imatrix};
use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;
use crunch_quant::hfq::{IntGroups, IntSpec};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Everything a calibrated run needs besides the model and the plan.
#[derive(Clone, Debug)]
pub struct MethodOptions {
    pub method: Method,
    pub text: TextSource,
    pub chunks: ChunkOptions,
    pub gptq: GptqOptions,
    pub awq: AwqOptions,
    /// Wanda or SparseGPT pruning of every linear layer (in the pass GPTQ runs in, instead of it).
    pub prune: Option<PruneSpec>,
}

/// What happened to one tensor.
#[derive(Clone, Debug, Serialize)]
pub struct TensorNote {
    pub name: String,
    pub what: String,
}

/// Results waiting to be written: files in a scratch folder (removed on drop).
pub struct CalibratedTensors {
    dir: PathBuf,
    stored: BTreeMap<String, (PathBuf, bool)>,
    /// AWQ column scales per weight (an imatrix made before scaling is divided by their squares).
    pub scales: BTreeMap<String, Vec<f32>>,
    pub notes: Vec<TensorNote>,
    /// What pruning did to each weight.
    pub pruned: Vec<PrunedTensor>,
    pub seconds: f64,
}

impl Drop for CalibratedTensors {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl CalibratedTensors {
    /// An empty set of results kept in `dir` (created; removed on drop).
    pub(crate) fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Ok(CalibratedTensors {
            dir: dir.to_path_buf(),
            stored: BTreeMap::new(),
            scales: BTreeMap::new(),
            notes: Vec::new(),
            pruned: Vec::new(),
            seconds: 0.0,
        })
    }

    fn store(&mut self, name: &str, bytes: &[u8], packed: bool) -> Result<()> {
        let path = self.dir.join(format!("{}.bin", name.replace(['/', '\\'], "_")));
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        self.stored.insert(name.to_string(), (path, packed));
        Ok(())
    }

    /// Keep data already in the tensor's output type.
    pub(crate) fn store_packed(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.store(name, bytes, true)
    }

    /// Keep new f32 values, converted to the output type when written.
    pub(crate) fn store_f32(&mut self, name: &str, v: &[f32]) -> Result<()> {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.store(name, &b, false)
    }

    /// The replacement for `name`, if a method produced one.
    ///
    /// # Errors
    /// The scratch file cannot be read.
    pub fn replacement(&self, name: &str) -> Result<Option<Replacement>> {
        let Some((path, packed)) = self.stored.get(name) else { return Ok(None) };
        let b = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Ok(Some(if *packed {
            Replacement::Bytes(b)
        } else {
            Replacement::F32(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        }))
    }

    /// `importance` adjusted for AWQ's scaling of `name`'s input columns.
    pub fn adjust_importance(&self, name: &str, importance: Option<Vec<f32>>) -> Option<Vec<f32>> {
        match (importance, self.scales.get(name)) {
            (Some(mut v), Some(s)) if v.len() == s.len() => {
                v.iter_mut().zip(s).for_each(|(x, f)| *x /= f * f);
                Some(v)
            }
            (v, _) => v,
        }
    }
}

fn gqa(r: &Runner) -> (usize, usize, usize) {
    (r.config.n_head, r.config.n_head_kv, r.config.head_dim)
}

/// GPTQ's and AWQ's results for a checkpoint of group-wise integers, by GGUF tensor name (rows
/// in the GGUF's order: the export permutes Q/K rows as it does for every tensor).
#[derive(Clone, Debug)]
pub struct IntCalibrated {
    pub spec: IntSpec,
    /// Every weight GPTQ rounded: its codes, scales and zeros.
    pub groups: HashMap<String, IntGroups>,
    /// Every tensor AWQ rescaled (linear weights and the norms the scales were folded into):
    /// its values after scaling, before any rounding. A weight in neither map is unchanged.
    pub values: HashMap<String, Vec<f32>>,
    /// AWQ column scales per weight.
    pub scales: BTreeMap<String, Vec<f32>>,
    pub notes: Vec<TensorNote>,
    pub seconds: f64,
}

/// Where the block-by-block pass keeps the tensors it computed.
pub(super) trait Keep {
    /// A weight GPTQ rounded; `rescaled`: its values before rounding, when AWQ changed them.
    fn rounded(&mut self, name: &str, packed: Packed, rescaled: Option<Vec<f32>>) -> Result<()>;
    /// A tensor AWQ changed that GPTQ did not round, as its block left it.
    fn rescaled(&mut self, name: &str, values: &[f32]) -> Result<()>;
    /// Where pruning keeps its results, if it can.
    fn pruning(&mut self) -> Option<&mut CalibratedTensors>;
}

impl Keep for CalibratedTensors {
    fn rounded(&mut self, name: &str, packed: Packed, _rescaled: Option<Vec<f32>>) -> Result<()> {
        match packed {
            Packed::Type(bytes) => self.store_packed(name, &bytes),
            Packed::Int(_) => Err(Error::Invalid(format!("tensor {name}: integer groups cannot be written to GGUF"))),
        }
    }
    fn rescaled(&mut self, name: &str, values: &[f32]) -> Result<()> {
        self.store_f32(name, values)
    }
    fn pruning(&mut self) -> Option<&mut CalibratedTensors> {
        Some(self)
    }
}

impl Keep for IntCalibrated {
    fn rounded(&mut self, name: &str, packed: Packed, rescaled: Option<Vec<f32>>) -> Result<()> {
        match packed {
            Packed::Int(g) => self.groups.insert(name.to_string(), g),
            Packed::Type(_) => {
                return Err(Error::Invalid(format!("tensor {name}: GGUF blocks where integer groups were asked")))
            }
        };
        if let Some(v) = rescaled {
            self.values.insert(name.to_string(), v);
        }
        Ok(())
    }
    fn rescaled(&mut self, name: &str, values: &[f32]) -> Result<()> {
        self.values.insert(name.to_string(), values.to_vec());
        Ok(())
    }
    fn pruning(&mut self) -> Option<&mut CalibratedTensors> {
        None
    }
}

/// An error of the pass's results store, inside a runner hook.
fn keep_err(e: Error) -> CalibError {
    CalibError::Invalid(e.to_string())
}

/// Run the calibrated methods over `model_path` for `plan`; results go to `scratch` (created).
///
/// # Errors
/// Text shorter than one context, a model without linear layers, Hessians that stay indefinite,
/// I/O errors, cancellation.
pub fn calibrate_model(
    model_path: &Path,
    plan: &Plan,
    imatrix: Option<&Imatrix>,
    opts: &MethodOptions,
    scratch: &Path,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<CalibratedTensors> {
    let t0 = Instant::now();
    let file = Arc::new(GgufFile::open(model_path)?);
    let mut out = CalibratedTensors::create(scratch)?;
    let grids: BTreeMap<&str, Grid> =
        plan.tensors.iter().filter(|t| t.converts()).map(|t| (t.name.as_str(), Grid::Type(t.dst_type))).collect();
    // Pruning writes every pruned tensor, converted or kept in its type.
    let out_types: BTreeMap<&str, GgmlType> = plan.tensors.iter().map(|t| (t.name.as_str(), t.dst_type)).collect();
    let pass = calibrate_blocks(file, &grids, &out_types, imatrix, opts, &mut out, progress, cancel)?;
    let n_layer = pass.n_layer;
    out.notes.extend(pass.notes);
    out.scales = pass.scales;
    out.seconds = t0.elapsed().as_secs_f64();
    let what = if opts.prune.is_some() { "pruned" } else { "calibrated" };
    progress.finish(&format!("{what} {n_layer} blocks in {:.1} s", out.seconds));
    Ok(out)
}

/// Run `opts.method` (gptq, awq or awq,gptq) over `file` with every linear weight of its blocks
/// rounded onto the group-wise integers `spec`, for a GPTQ / AWQ / compressed-tensors export:
/// GPTQ's codes for the weights it rounded, AWQ's rescaled values for the tensors it changed
/// (an AWQ-only run rounds nothing: the export quantizes those values to nearest).
///
/// # Errors
/// A method that is not a calibration run, pruning, a spec that does not fit a weight (naming
/// it), and everything [`calibrate_model`] reports.
pub fn calibrate_int(
    file: Arc<GgufFile>,
    spec: IntSpec,
    opts: &MethodOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<IntCalibrated> {
    let t0 = Instant::now();
    if !opts.method.is_calibrated() {
        return Err(Error::Invalid(format!(
            "method {} computes nothing for integer groups; calibrated methods are gptq, awq, awq,gptq",
            opts.method
        )));
    }
    if opts.prune.is_some() {
        return Err(Error::Invalid("pruning cannot run while calibrating integer groups".into()));
    }
    let linears = super::prune::prune_targets(&file)?;
    for t in &linears {
        spec.check(&t.name, t.n_rows, t.n_cols).map_err(Error::Invalid)?;
    }
    let grids: BTreeMap<&str, Grid> = linears.iter().map(|t| (t.name.as_str(), Grid::Int(spec))).collect();
    let mut out = IntCalibrated {
        spec,
        groups: HashMap::new(),
        values: HashMap::new(),
        scales: BTreeMap::new(),
        notes: Vec::new(),
        seconds: 0.0,
    };
    let pass = calibrate_blocks(file, &grids, &BTreeMap::new(), None, opts, &mut out, progress, cancel)?;
    let n_layer = pass.n_layer;
    out.notes = pass.notes;
    out.scales = pass.scales;
    out.seconds = t0.elapsed().as_secs_f64();
    progress.finish(&format!("calibrated {n_layer} blocks onto {} in {:.1} s", Grid::Int(spec), out.seconds));
    Ok(out)
}

/// What the block-by-block pass reports besides the tensors it keeps.
pub(super) struct Pass {
    pub(super) n_layer: usize,
    /// AWQ's and GPTQ's notes (pruning writes its own into the [`CalibratedTensors`]).
    pub(super) notes: Vec<TensorNote>,
    /// AWQ's column scales per weight.
    pub(super) scales: BTreeMap<String, Vec<f32>>,
}

/// The block-by-block pass: per block, AWQ's search and folding (each weight measured on
/// `grids[name]`), then GPTQ onto those grids, or pruning (`out_types`: every tensor's output
/// type, for SparseGPT's joint quantization); tensors go to `keep`.
#[allow(clippy::too_many_arguments)]
fn calibrate_blocks(
    file: Arc<GgufFile>,
    grids: &BTreeMap<&str, Grid>,
    out_types: &BTreeMap<&str, GgmlType>,
    imatrix: Option<&Imatrix>,
    opts: &MethodOptions,
    keep: &mut dyn Keep,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Pass> {
    if crate::eval::embed::is_encoder(file.metadata()) {
        return super::encoder::calibrate_blocks(file, grids, imatrix, opts, keep, progress, cancel);
    }
    let runner = Runner::new(file.clone()).map_err(calib_err)?;
    let tok = crunch_model::tokenizer::Tokenizer::from_gguf(&file)?;
    let chunks = text::load_chunks(&opts.text, &tok, opts.chunks).map_err(calib_err)?;
    let n_ctx = chunks.n_ctx;
    let mut x = runner.embed(&chunks.chunks).map_err(calib_err)?;
    let n_layer = runner.config.n_layer;
    progress.start(if opts.prune.is_some() { "prune" } else { "calibrate" }, n_layer as u64);
    tracing::info!(chunks = chunks.chunks.len(), n_ctx, "calibrating {} blocks", n_layer);
    let mut notes: Vec<TensorNote> = Vec::new();
    let mut scales: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for i in 0..n_layer {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let mut layer = runner.load_layer(i).map_err(calib_err)?;
        let mut changed: Vec<String> = Vec::new();
        if opts.method.uses_awq() {
            let mut xa = x.clone();
            let g = gqa(&runner);
            let mut hook = |grp: Group, l: &mut Layer, input: &mut [f32]| -> crunch_calib::Result<()> {
                let n_in = l.group_mut(grp)[0].n_in;
                let weights: Vec<(Vec<f32>, String)> =
                    l.group_mut(grp).iter().map(|lin| (lin.w.clone(), lin.name.clone())).collect();
                let imps: Vec<Option<Vec<f32>>> =
                    weights.iter().map(|(_, n)| imatrix.and_then(|m| m.importance(n))).collect();
                let targets: Vec<(&[f32], awq::Target)> = weights
                    .iter()
                    .zip(&imps)
                    .filter_map(|((w, n), imp)| {
                        grids
                            .get(n.as_str())
                            .map(|&grid| (&w[..], awq::Target { name: n, grid, importance: imp.as_deref() }))
                    })
                    .collect();
                if targets.is_empty() {
                    return Ok(());
                }
                let tie = (grp == Group::Out).then_some(g);
                let choice = awq::search(input, n_in, &targets, tie, opts.awq)?;
                if choice.alpha.is_some() {
                    for (_, name) in &weights {
                        scales.insert(name.clone(), choice.scales.clone());
                    }
                    changed.extend(awq::apply(l, grp, &choice.scales, input, g));
                }
                notes.push(TensorNote {
                    name: weights[0].1.clone(),
                    what: format!(
                        "AWQ {:?}: alpha {}, output error {:.4e} -> {:.4e}",
                        grp,
                        choice.alpha.map_or("none".into(), |a| format!("{a:.2}")),
                        choice.loss_unscaled,
                        choice.loss
                    ),
                });
                Ok(())
            };
            runner.forward_layer(&mut layer, &mut xa, n_ctx, &mut hook).map_err(calib_err)?;
            if !opts.method.uses_gptq() {
                x = xa;
            }
        }
        let mut quantized: Vec<String> = Vec::new();
        if opts.method.uses_gptq() || opts.prune.is_some() {
            let mut hook = |grp: Group, l: &mut Layer, input: &mut [f32]| -> crunch_calib::Result<()> {
                let n_in = l.group_mut(grp)[0].n_in;
                if let Some(spec) = &opts.prune {
                    let out = keep
                        .pruning()
                        .ok_or_else(|| CalibError::Invalid("pruning keeps its results only for GGUF outputs".into()))?;
                    // Wanda needs the column norms, SparseGPT the Hessian (and the norms as the
                    // joint quantizer's importance).
                    let mut h = Vec::new();
                    if spec.method == PruneMethod::SparseGpt {
                        h = vec![0f32; n_in * n_in];
                        linalg::add_xtx(&mut h, input, n_in);
                    }
                    let col_sq = prune::column_sq_sums(input, n_in);
                    let n_tok = input.len() / n_in;
                    for lin in l.group_mut(grp) {
                        let ty = out_types.get(lin.name.as_str()).copied();
                        prune_linear(lin, spec, &h, &col_sq, n_tok, ty, out)?;
                        quantized.push(lin.name.clone());
                    }
                    return Ok(());
                }
                let mut h = vec![0f32; n_in * n_in];
                linalg::add_xtx(&mut h, input, n_in);
                let n_tok = (input.len() / n_in) as f32;
                let diag: Vec<f32> = (0..n_in).map(|c| h[c * n_in + c] / n_tok).collect();
                for lin in l.group_mut(grp) {
                    let Some(&grid) = grids.get(lin.name.as_str()) else { continue };
                    let importance = match grid {
                        Grid::Type(ty) if !gptq::supports(ty) => {
                            notes.push(TensorNote {
                                name: lin.name.clone(),
                                what: format!("GPTQ has no grid for {ty}; round-to-nearest"),
                            });
                            continue;
                        }
                        Grid::Type(_) => {
                            let user =
                                imatrix.and_then(|m| m.importance(&lin.name)).map(|v| match scales.get(&lin.name) {
                                    Some(s) => v.iter().zip(s).map(|(x, f)| x / (f * f)).collect(),
                                    None => v,
                                });
                            Some(user.unwrap_or_else(|| diag.clone()))
                        }
                        Grid::Int(_) => None,
                    };
                    let r = gptq::quantize_onto(&lin.name, &lin.w, n_in, &h, grid, importance.as_deref(), opts.gptq)?;
                    let before = std::mem::replace(&mut lin.w, r.weights);
                    quantized.push(lin.name.clone());
                    notes.push(TensorNote {
                        name: lin.name.clone(),
                        what: format!("GPTQ {grid}: loss {:.4e}, dampening {}", r.loss, r.damp),
                    });
                    let rescaled = changed.contains(&lin.name).then_some(before);
                    keep.rounded(&lin.name, r.packed, rescaled).map_err(keep_err)?;
                }
                Ok(())
            };
            runner.forward_layer(&mut layer, &mut x, n_ctx, &mut hook).map_err(calib_err)?;
        }
        // AWQ-changed tensors GPTQ did not round: keep their new f32 values.
        changed.sort();
        changed.dedup();
        for name in changed.iter().filter(|n| !quantized.contains(n)) {
            let v: &[f32] = if *name == layer.attn_norm_name() {
                &layer.norms.attn
            } else if *name == layer.ffn_norm_name() {
                &layer.norms.ffn
            } else {
                let found = layer.linears().into_iter().find_map(|l| {
                    if &l.name == name {
                        Some(&l.w[..])
                    } else if &l.bias_name() == name {
                        l.bias.as_deref()
                    } else {
                        None
                    }
                });
                match found {
                    Some(v) => v,
                    None => continue,
                }
            };
            keep.rescaled(name, v)?;
        }
        progress.advance((i + 1) as u64, &format!("block {}/{n_layer}", i + 1));
    }
    Ok(Pass { n_layer, notes, scales })
}
