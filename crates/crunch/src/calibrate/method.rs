//! `crunch quantize --method gptq|awq|awq,gptq` and `crunch prune --method wanda|sparsegpt`: run
//! the calibrated methods block by block and keep their results (packed GPTQ and joint SparseGPT
//! tensors, AWQ-rescaled weights and norms, pruned weights) in a scratch folder beside the output
//! until the quantizer writes the GGUF.

use super::calib_err;
use super::prune::{prune_linear, PruneSpec, PrunedTensor};
use crate::error::{Error, Result};
use crate::method::Method;
use crate::progress::{Cancel, Progress};
use crate::quantize::{Plan, Replacement};
use crunch_calib::awq::{self, AwqOptions};
use crunch_calib::gptq::{self, GptqOptions};
use crunch_calib::prune::{self, PruneMethod};
use crunch_calib::runner::{Group, Layer, Runner};
use crunch_calib::text::{self, ChunkOptions, TextSource};
use crunch_calib::{linalg, Imatrix};
use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;
use serde::Serialize;
use std::collections::BTreeMap;
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
    let runner = Runner::new(file.clone()).map_err(calib_err)?;
    let tok = crunch_model::tokenizer::Tokenizer::from_gguf(&file)?;
    let chunks = text::load_chunks(&opts.text, &tok, opts.chunks).map_err(calib_err)?;
    let n_ctx = chunks.n_ctx;
    let mut out = CalibratedTensors::create(scratch)?;
    let types: BTreeMap<&str, GgmlType> =
        plan.tensors.iter().filter(|t| t.converts()).map(|t| (t.name.as_str(), t.dst_type)).collect();
    // Pruning writes every pruned tensor, converted or kept in its type.
    let out_types: BTreeMap<&str, GgmlType> = plan.tensors.iter().map(|t| (t.name.as_str(), t.dst_type)).collect();
    let mut x = runner.embed(&chunks.chunks).map_err(calib_err)?;
    let n_layer = runner.config.n_layer;
    progress.start(if opts.prune.is_some() { "prune" } else { "calibrate" }, n_layer as u64);
    tracing::info!(chunks = chunks.chunks.len(), n_ctx, "calibrating {} blocks", n_layer);
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
                        types.get(n.as_str()).map(|&ty| (&w[..], awq::Target { ty, importance: imp.as_deref() }))
                    })
                    .collect();
                if targets.is_empty() {
                    return Ok(());
                }
                let tie = (grp == Group::Out).then_some(g);
                let choice = awq::search(input, n_in, &targets, tie, opts.awq)?;
                if choice.alpha.is_some() {
                    for (_, name) in &weights {
                        out.scales.insert(name.clone(), choice.scales.clone());
                    }
                    changed.extend(awq::apply(l, grp, &choice.scales, input, g));
                }
                out.notes.push(TensorNote {
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
                        prune_linear(lin, spec, &h, &col_sq, n_tok, ty, &mut out)?;
                        quantized.push(lin.name.clone());
                    }
                    return Ok(());
                }
                let mut h = vec![0f32; n_in * n_in];
                linalg::add_xtx(&mut h, input, n_in);
                let n_tok = (input.len() / n_in) as f32;
                let diag: Vec<f32> = (0..n_in).map(|c| h[c * n_in + c] / n_tok).collect();
                for lin in l.group_mut(grp) {
                    let Some(&ty) = types.get(lin.name.as_str()) else { continue };
                    if !gptq::supports(ty) {
                        out.notes.push(TensorNote {
                            name: lin.name.clone(),
                            what: format!("GPTQ has no grid for {ty}; round-to-nearest"),
                        });
                        continue;
                    }
                    let user = imatrix.and_then(|m| m.importance(&lin.name)).map(|v| match out.scales.get(&lin.name) {
                        Some(s) => v.iter().zip(s).map(|(x, f)| x / (f * f)).collect(),
                        None => v,
                    });
                    let imp = user.unwrap_or_else(|| diag.clone());
                    let r = gptq::quantize(&lin.name, &lin.w, n_in, &h, ty, Some(&imp), opts.gptq)?;
                    lin.w = r.weights;
                    quantized.push(lin.name.clone());
                    out.notes.push(TensorNote {
                        name: lin.name.clone(),
                        what: format!("GPTQ {ty}: loss {:.4e}, dampening {}", r.loss, r.damp),
                    });
                    let path = out.dir.join(format!("{}.bin", lin.name));
                    std::fs::write(&path, &r.bytes).map_err(|e| crunch_calib::CalibError::io(&path, e))?;
                    out.stored.insert(lin.name.clone(), (path, true));
                }
                Ok(())
            };
            runner.forward_layer(&mut layer, &mut x, n_ctx, &mut hook).map_err(calib_err)?;
        }
        // AWQ-changed tensors GPTQ did not pack: keep their new f32 values.
        changed.sort();
        changed.dedup();
        for name in changed.iter().filter(|n| !quantized.contains(n)) {
            let v = if *name == layer.attn_norm_name() {
                layer.attn_norm.clone()
            } else if *name == layer.ffn_norm_name() {
                layer.ffn_norm.clone()
            } else {
                match layer.linears().iter().find(|l| &l.name == name) {
                    Some(l) => l.w.clone(),
                    None => continue,
                }
            };
            out.store_f32(name, &v)?;
        }
        progress.advance((i + 1) as u64, &format!("block {}/{n_layer}", i + 1));
    }
    out.seconds = t0.elapsed().as_secs_f64();
    let what = if opts.prune.is_some() { "pruned" } else { "calibrated" };
    progress.finish(&format!("{what} {n_layer} blocks in {:.1} s", out.seconds));
    Ok(out)
}
