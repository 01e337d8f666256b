//! GPTQ for sentence encoders (BERT family): the Hessian `Σ xᵀx` of every linear layer's input is
//! collected in one pass of the base model over the calibration text's lines (each line one
//! sequence, as the encoder is used), then every weight is rounded onto its grid with GPTQ.
//!
//! Unlike the causal-LM pass ([`super::method`]), the inputs are the base model's, not those of
//! the already-quantized earlier blocks. AWQ scales only the attention output's input channels
//! (folded exactly into V's rows and bias: attention mixes V's channels linearly); in a
//! post-LayerNorm block the scales of Q/K/V and the FFN have no preceding operation to fold into
//! without changing the model (the LayerNorm's output is also the residual, GELU is not linear),
//! so those groups are left unscaled.

use super::method::{Keep, Pass, TensorNote};
use super::{calib_err, MethodOptions};
use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};
use crunch_calib::text::TextSource;
use crunch_calib::{awq, gptq};
use crunch_calib::{linalg, Grid, Imatrix};
use crunch_core::gguf::GgufFile;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One weight's accumulated Hessian.
struct Hessian {
    h: Vec<f32>,
    n_in: usize,
    n_tok: usize,
}

/// GPTQ over an encoder: the weights in `grids` rounded, results to `keep`.
///
/// # Errors
/// AWQ or pruning asked for, a text that is not a file or has no lines, model errors, Hessians
/// that stay indefinite, cancellation.
#[allow(clippy::too_many_arguments)]
pub(super) fn calibrate_blocks(
    file: Arc<GgufFile>,
    grids: &BTreeMap<&str, Grid>,
    imatrix: Option<&Imatrix>,
    opts: &MethodOptions,
    keep: &mut dyn Keep,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Pass> {
    let path = file.path.clone();
    if opts.prune.is_some() {
        return Err(Error::Invalid(format!(
            "{}: Wanda and SparseGPT pruning run on causal LMs (Llama family), not on a sentence encoder",
            path.display()
        )));
    }
    let TextSource::File(text) = &opts.text else {
        return Err(Error::Invalid(format!(
            "{}: a sentence encoder is calibrated on the lines of a text file, not random tokens",
            path.display()
        )));
    };
    let model = crate::eval::embed::open_encoder(&path, false)?;
    let max_tokens = opts.chunks.n_ctx.min(model.config.max_tokens);
    if max_tokens < 2 {
        return Err(Error::Invalid(format!(
            "calibration context {}: too short for [CLS] and [SEP]",
            opts.chunks.n_ctx
        )));
    }
    let lines: Vec<String> = crate::eval::embed::read_lines(text, None)?
        .into_iter()
        .skip(opts.chunks.skip)
        .take(opts.chunks.n_chunks.unwrap_or(usize::MAX))
        .collect();
    if lines.is_empty() {
        return Err(Error::Invalid(format!("{}: no lines to calibrate on", text.display())));
    }
    let seqs = crate::eval::embed::tokenize_all(&model, &path.display().to_string(), &lines, max_tokens)?;
    let n_layer = model.config.n_layer;

    // 1. Hessians of every weight to round (and AWQ's sample of the attention outputs), from the
    // base model's activations.
    let mut hessians: BTreeMap<String, Hessian> = BTreeMap::new();
    let mut samples: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut bad: Option<String> = None;
    {
        let mut obs = |name: &str, x: &[f32], n_tok: usize| {
            if !grids.contains_key(name) || n_tok == 0 || bad.is_some() {
                return;
            }
            let n_in = x.len() / n_tok;
            if opts.method.uses_awq() && name.ends_with(".attn_output.weight") {
                let v = samples.entry(name.to_string()).or_default();
                let room = (opts.awq.max_tokens * n_in).saturating_sub(v.len());
                v.extend_from_slice(&x[..room.min(x.len())]);
            }
            if !opts.method.uses_gptq() {
                return;
            }
            let e = hessians.entry(name.to_string()).or_insert_with(|| Hessian {
                h: vec![0f32; n_in * n_in],
                n_in,
                n_tok: 0,
            });
            if e.n_in != n_in {
                bad = Some(format!("tensor {name}: inputs of {} and {n_in} columns", e.n_in));
                return;
            }
            linalg::add_xtx(&mut e.h, x, n_in);
            e.n_tok += n_tok;
        };
        progress.start("calibrate: encoder activations", seqs.len() as u64);
        crate::eval::embed::embed_observed(&model, &seqs, Some(&mut obs), cancel)?;
    }
    if let Some(b) = bad {
        return Err(Error::Invalid(b));
    }

    // 2. AWQ on the attention outputs.
    let mut notes = Vec::new();
    let mut scales: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut rescaled: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for (name, x) in &samples {
        let v_name = name.replace(".attn_output.weight", ".attn_v.weight");
        let v_bias = name.replace(".attn_output.weight", ".attn_v.bias");
        if file.tensor(&v_name).is_none() {
            notes.push(TensorNote {
                name: name.clone(),
                what: "AWQ: no separate V weight to fold into; unscaled".into(),
            });
            continue;
        }
        let (mut wo, n_in) = crate::sensitivity::tensor_f32(&file, name)?;
        let n_in = n_in as usize;
        let imp = imatrix.and_then(|m| m.importance(name));
        let grid = grids[name.as_str()];
        let target = awq::Target { name, grid, importance: imp.as_deref() };
        let choice = awq::search(x, n_in, &[(&wo[..], target)], None, opts.awq).map_err(calib_err)?;
        notes.push(TensorNote {
            name: name.clone(),
            what: format!(
                "AWQ Out: alpha {}, output error {:.4e} -> {:.4e}",
                choice.alpha.map_or("none".into(), |a| format!("{a:.2}")),
                choice.loss_unscaled,
                choice.loss
            ),
        });
        if choice.alpha.is_none() {
            continue;
        }
        let s = &choice.scales;
        // W_o's columns times s, V's rows (its output channels) and bias divided by s.
        wo.chunks_exact_mut(n_in).for_each(|r| r.iter_mut().zip(s).for_each(|(w, f)| *w *= f));
        let (mut wv, v_in) = crate::sensitivity::tensor_f32(&file, &v_name)?;
        wv.chunks_exact_mut(v_in as usize).zip(s).for_each(|(r, f)| r.iter_mut().for_each(|w| *w /= f));
        if file.tensor(&v_bias).is_some() {
            let (mut b, _) = crate::sensitivity::tensor_f32(&file, &v_bias)?;
            b.iter_mut().zip(s).for_each(|(x, f)| *x /= f);
            rescaled.insert(v_bias, b);
        }
        // GPTQ then sees the scaled inputs x / s: H' = S⁻¹ H S⁻¹.
        if let Some(h) = hessians.get_mut(name) {
            for (i, row) in h.h.chunks_exact_mut(n_in).enumerate() {
                row.iter_mut().zip(s).for_each(|(v, f)| *v /= s[i] * f);
            }
        }
        scales.insert(name.clone(), s.clone());
        rescaled.insert(name.clone(), wo);
        rescaled.insert(v_name, wv);
    }

    // 3. GPTQ per weight.
    progress.start("calibrate: GPTQ", grids.len() as u64);
    for (done, (&name, &grid)) in grids.iter().enumerate() {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let Some(hs) = hessians.get(name) else {
            if opts.method.uses_gptq() {
                notes.push(TensorNote {
                    name: name.to_string(),
                    what: "not a linear layer's weight; round-to-nearest".into(),
                });
            }
            continue;
        };
        if let Grid::Type(ty) = grid {
            if !gptq::supports(ty) {
                notes.push(TensorNote {
                    name: name.to_string(),
                    what: format!("GPTQ has no grid for {ty}; round-to-nearest"),
                });
                continue;
            }
        }
        let before = rescaled.remove(name);
        let w = match &before {
            Some(w) => w.clone(),
            None => crate::sensitivity::tensor_f32(&file, name)?.0,
        };
        let n_in = hs.n_in;
        let importance = match grid {
            Grid::Type(_) => Some(
                imatrix
                    .and_then(|m| m.importance(name))
                    .map(|v| match scales.get(name) {
                        Some(s) => v.iter().zip(s).map(|(x, f)| x / (f * f)).collect(),
                        None => v,
                    })
                    .unwrap_or_else(|| (0..n_in).map(|c| hs.h[c * n_in + c] / hs.n_tok.max(1) as f32).collect()),
            ),
            Grid::Int(_) => None,
        };
        let r =
            gptq::quantize_onto(name, &w, n_in, &hs.h, grid, importance.as_deref(), opts.gptq).map_err(calib_err)?;
        notes.push(TensorNote {
            name: name.to_string(),
            what: format!("GPTQ {grid}: loss {:.4e}, dampening {}", r.loss, r.damp),
        });
        keep.rounded(name, r.packed, before)?;
        progress.advance(done as u64 + 1, name);
    }
    // What AWQ changed and GPTQ did not round.
    for (name, v) in &rescaled {
        keep.rescaled(name, v)?;
    }
    Ok(Pass { n_layer, notes, scales })
}
