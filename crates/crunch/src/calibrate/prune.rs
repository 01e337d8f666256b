//! `crunch prune`'s tensor work. Magnitude pruning needs no activations and goes over the file's
//! linear weights one at a time; Wanda and SparseGPT run inside the block-by-block calibration
//! run (`method::calibrate_model`, with `MethodOptions::prune` set), so each block's statistics
//! come from inputs that already went through the pruned blocks before it. Results are kept as
//! replacements for the quantizer like GPTQ's: packed bytes when SparseGPT quantized jointly
//! onto the output type, f32 weights otherwise.

use super::calib_err;
use super::method::{CalibratedTensors, TensorNote};
use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};
use crunch_calib::gptq::GptqOptions;
use crunch_calib::prune::{self, PruneMethod, Sparsity};
use crunch_calib::runner::Linear;
use crunch_calib::Target;
use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// What to prune and how.
#[derive(Clone, Copy, Debug)]
pub struct PruneSpec {
    pub method: PruneMethod,
    pub sparsity: Sparsity,
    /// SparseGPT's dampening and lazy block (the mask is chosen per block).
    pub gptq: GptqOptions,
}

/// One pruned weight, as the pruning step left it (before the quantizer).
#[derive(Clone, Debug, Serialize)]
pub struct PrunedTensor {
    pub name: String,
    pub n_elements: u64,
    /// Exact zeros in the pruned weights (for a joint SparseGPT result: in its packed blocks).
    pub zeros: u64,
    /// The type SparseGPT quantized onto in the same pass, if it did.
    pub joint_type: Option<String>,
    /// SparseGPT's loss proxy `Σ (err / U_jj)²`.
    pub loss: Option<f64>,
}

/// The linear layers of the blocks (what the calibration runner holds): attention q, k, v and
/// output, FFN gate, up and down.
pub const LINEAR_KINDS: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

/// The weights pruning applies to, in file order.
///
/// # Errors
/// A model without linear layers in blocks.
pub fn prune_targets(file: &GgufFile) -> Result<Vec<Target>> {
    let v: Vec<Target> = crunch_calib::calibration_targets(file, false)
        .map_err(calib_err)?
        .into_iter()
        .filter(|t| {
            let mut parts = t.name.split('.');
            parts.next() == Some("blk")
                && parts.next().is_some_and(|l| l.parse::<usize>().is_ok())
                && parts.next().is_some_and(|k| LINEAR_KINDS.contains(&k))
                && parts.next() == Some("weight")
                && parts.next().is_none()
        })
        .collect();
    if v.is_empty() {
        return Err(Error::Invalid(format!(
            "{} has no linear layers to prune (blk.N.{{{}}}.weight)",
            file.path.display(),
            LINEAR_KINDS.join(",")
        )));
    }
    Ok(v)
}

/// Prune one linear layer of the calibration run in place and keep the result in `out`.
/// `h`: the group's Hessian `Σ xᵀx` (SparseGPT); `col_sq`: its per-column sums of squares
/// (Wanda; SparseGPT's importance for the joint quantizer); `ty`: the output type of the tensor.
pub(crate) fn prune_linear(
    lin: &mut Linear,
    spec: &PruneSpec,
    h: &[f32],
    col_sq: &[f32],
    n_tok: usize,
    ty: Option<GgmlType>,
    out: &mut CalibratedTensors,
) -> crunch_calib::Result<()> {
    let n_elements = lin.w.len() as u64;
    let (zeros, joint, loss) = match spec.method {
        PruneMethod::Magnitude => (prune::magnitude(&lin.name, &mut lin.w, lin.n_in, spec.sparsity)?, None, None),
        PruneMethod::Wanda => (prune::wanda(&lin.name, &mut lin.w, lin.n_in, col_sq, spec.sparsity)?, None, None),
        PruneMethod::SparseGpt => {
            let joint = ty.filter(|t| prune::joint_supports(*t));
            let imp: Vec<f32> = col_sq.iter().map(|v| v / n_tok.max(1) as f32).collect();
            let r = prune::sparsegpt(
                &lin.name,
                &lin.w,
                lin.n_in,
                h,
                spec.sparsity,
                joint.map(|t| (t, Some(&imp[..]))),
                spec.gptq,
            )?;
            lin.w = r.weights;
            out.notes.push(TensorNote {
                name: lin.name.clone(),
                what: format!(
                    "SparseGPT {}{}: loss {:.4e}, dampening {}",
                    spec.sparsity,
                    joint.map_or(String::new(), |t| format!(" jointly quantized to {t}")),
                    r.loss,
                    r.damp
                ),
            });
            if let Some(bytes) = &r.bytes {
                out.store_packed(&lin.name, bytes).map_err(|e| crunch_calib::CalibError::Invalid(e.to_string()))?;
            }
            (r.zeros, joint, Some(r.loss))
        }
    };
    if joint.is_none() {
        out.store_f32(&lin.name, &lin.w).map_err(|e| crunch_calib::CalibError::Invalid(e.to_string()))?;
    }
    out.pruned.push(PrunedTensor {
        name: lin.name.clone(),
        n_elements,
        zeros: zeros as u64,
        joint_type: joint.map(|t| t.name().to_string()),
        loss,
    });
    Ok(())
}

/// Magnitude pruning of every linear weight of `model_path` (no calibration text), kept in
/// `scratch` (created) for the quantizer.
///
/// # Errors
/// A model without linear layers, N:M groups that do not divide a row (naming the tensor),
/// unreadable tensors, I/O, cancellation.
pub fn prune_magnitude(
    model_path: &Path,
    spec: &PruneSpec,
    scratch: &Path,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<CalibratedTensors> {
    let t0 = Instant::now();
    let file = GgufFile::open(model_path)?;
    let targets = prune_targets(&file)?;
    let mut out = CalibratedTensors::create(scratch)?;
    progress.start("prune", targets.len() as u64);
    for (i, t) in targets.iter().enumerate() {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let info = file.tensor(&t.name).ok_or_else(|| Error::Invalid(format!("tensor {} vanished", t.name)))?;
        let mut w = vec![0f32; t.n_cols * t.n_rows];
        crunch_quant::dequantize_rows(info.ty, file.tensor_data(info), t.n_cols, &mut w)
            .map_err(|source| Error::Quant { tensor: t.name.clone(), source })?;
        file.release_tensor(info);
        let mut lin = Linear { name: t.name.clone(), w, n_in: t.n_cols, n_out: t.n_rows, bias: None };
        prune_linear(&mut lin, spec, &[], &[], 0, None, &mut out).map_err(calib_err)?;
        progress.advance((i + 1) as u64, &t.name);
    }
    out.seconds = t0.elapsed().as_secs_f64();
    progress.finish(&format!("pruned {} tensors in {:.1} s", targets.len(), out.seconds));
    Ok(out)
}
