//! GPTQ for sentence encoders (BERT family): the Hessian `Σ xᵀx` of every linear layer's input is
//! collected in one pass of the base model over the calibration text's lines (each line one
//! sequence, as the encoder is used), then every weight is rounded onto its grid with GPTQ.
//!
//! Unlike the causal-LM pass ([`super::method`]), the inputs are the base model's, not those of
//! the already-quantized earlier blocks. AWQ is refused: in a post-LayerNorm block the scales of
//! Q/K/V and the FFN have no preceding operation to fold into without changing the model.

use super::method::{Keep, Pass, TensorNote};
use super::{calib_err, MethodOptions};
use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};
use crunch_calib::gptq;
use crunch_calib::text::TextSource;
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
    if opts.method.uses_awq() {
        return Err(Error::Invalid(format!(
            "method {}: {} is a sentence encoder, whose post-LayerNorm blocks leave AWQ's scales nowhere to \
             fold; use gptq (or an importance matrix)",
            opts.method,
            path.display()
        )));
    }
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

    // 1. Hessians of every weight to round, from the base model's activations.
    let mut hessians: BTreeMap<String, Hessian> = BTreeMap::new();
    let mut bad: Option<String> = None;
    {
        let mut obs = |name: &str, x: &[f32], n_tok: usize| {
            if !grids.contains_key(name) || n_tok == 0 || bad.is_some() {
                return;
            }
            let n_in = x.len() / n_tok;
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

    // 2. GPTQ per weight.
    let mut notes = Vec::new();
    progress.start("calibrate: GPTQ", grids.len() as u64);
    for (done, (&name, &grid)) in grids.iter().enumerate() {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let Some(hs) = hessians.get(name) else {
            notes.push(TensorNote {
                name: name.to_string(),
                what: "not a linear layer's weight; round-to-nearest".into(),
            });
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
        let (w, _) = crate::sensitivity::tensor_f32(&file, name)?;
        let n_in = hs.n_in;
        let importance = match grid {
            Grid::Type(_) => Some(
                imatrix
                    .and_then(|m| m.importance(name))
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
        keep.rounded(name, r.packed, None)?;
        progress.advance(done as u64 + 1, name);
    }
    Ok(Pass { n_layer, notes, scales: BTreeMap::new() })
}
