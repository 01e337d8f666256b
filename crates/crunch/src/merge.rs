//! Merging LoRA adapters into a model: `W' = W + Σ s · B A` for every adapted weight, written in
//! one streaming pass through the quantizer (so the merged model can be quantized in the same
//! pass, `--type`).
//!
//! Each adapted tensor is dequantized, corrected and handed to the writer as f32, one tensor at a
//! time; the others are copied (or quantized by the plan). Without a type, an adapted tensor keeps
//! its type if it is a float type and becomes F32 if it was quantized (re-quantizing would lose
//! part of the adapter; give `--type` to choose).

use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};
use crate::quantize::{self, exec::ExecOptions, Ftype, Plan, QuantizeOptions, QuantizeReport, Replacement};
use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;
use crunch_model::lora::{LoraAdapter, LoraSpec};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// One adapter merged.
#[derive(Clone, Debug, Serialize)]
pub struct MergedAdapter {
    pub path: String,
    pub scale: f32,
    pub alpha: f32,
    /// Weights it changed.
    pub tensors: usize,
}

/// What `merge` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct MergeReport {
    pub adapters: Vec<MergedAdapter>,
    /// Every weight that changed.
    pub merged: Vec<String>,
    pub plan: Plan,
    pub result: QuantizeReport,
}

/// Open `specs` and check each fits `base` (architecture, tensor names and shapes).
///
/// # Errors
/// An adapter that is not one, for another architecture, for tensors the base lacks or of other
/// shapes, or on the token embedding.
pub fn open_adapters(base: &GgufFile, specs: &[LoraSpec]) -> Result<Vec<(Arc<LoraAdapter>, f32)>> {
    let arch = base.metadata().architecture().unwrap_or("unknown").to_string();
    let model = base.path.display().to_string();
    let mut out = Vec::with_capacity(specs.len());
    for s in specs {
        let err =
            |e: crunch_model::ModelError| Error::field("merge.adapters", crate::eval::adapter_message(&s.path, &e));
        let a = LoraAdapter::open(&s.path).map_err(err)?;
        a.refuse_token_embedding().map_err(err)?;
        a.check_model(&model, &arch, |n| {
            base.tensor(n).filter(|t| t.dims.len() == 2).map(|t| (t.dims[0] as usize, t.dims[1] as usize))
        })
        .map_err(err)?;
        out.push((Arc::new(a), s.scale));
    }
    Ok(out)
}

/// `w += s · B A` (`w`: `n_out` rows of `n_in`; `a`: `rank` rows of `n_in`; `b`: `n_out` rows of
/// `rank`).
pub fn add_product(w: &mut [f32], n_in: usize, a: &[f32], b: &[f32], rank: usize, s: f32) {
    w.par_chunks_mut(n_in).zip(b.par_chunks(rank)).for_each(|(row, brow)| {
        for (k, &bk) in brow.iter().enumerate() {
            let f = s * bk;
            if f != 0.0 {
                for (x, &ak) in row.iter_mut().zip(&a[k * n_in..(k + 1) * n_in]) {
                    *x += f * ak;
                }
            }
        }
    });
}

/// Merge `specs` into the model at `base_path` and write `output` (atomic, `.sha256` sidecar),
/// quantized by `quantize` when given.
///
/// # Errors
/// As [`open_adapters`]; plan errors of the type; cancellation (nothing written); I/O errors.
pub fn merge(
    base_path: &Path,
    specs: &[LoraSpec],
    output: &Path,
    quantize: Option<QuantizeOptions>,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<MergeReport> {
    if specs.is_empty() {
        return Err(Error::field("merge.adapters", "give at least one adapter"));
    }
    let base = GgufFile::open(base_path)?;
    let adapters = open_adapters(&base, specs)?;
    // weight -> (adapter index, pair index, factor)
    let mut terms: BTreeMap<String, Vec<(usize, usize, f32)>> = BTreeMap::new();
    for (ai, (a, scale)) in adapters.iter().enumerate() {
        for (pi, p) in a.pairs().iter().enumerate() {
            terms.entry(p.base.clone()).or_default().push((ai, pi, a.scale_of(p, *scale)));
        }
    }
    let plan: Plan = match quantize {
        Some(mut q) => {
            q.allow_requantize = true;
            quantize::build_plan(base.metadata(), base.tensors(), &q)?
        }
        None => {
            let types: BTreeMap<String, GgmlType> = base
                .tensors()
                .iter()
                .filter(|t| terms.contains_key(&t.name) && t.ty.is_quantized())
                .map(|t| (t.name.clone(), GgmlType::F32))
                .collect();
            let ftype = base
                .metadata()
                .get_u64("general.file_type")
                .and_then(|c| Ftype::from_code(c as u32))
                .unwrap_or(Ftype::F32);
            quantize::plan::with_types(base.tensors(), &types, ftype)
        }
    };
    let replace = |name: &str| -> Result<Option<Replacement>> {
        let Some(ts) = terms.get(name) else { return Ok(None) };
        let info = base.tensor(name).ok_or_else(|| Error::Invalid(format!("tensor {name} vanished")))?;
        let n_in = info.dims[0] as usize;
        let mut w = vec![0f32; info.n_elements() as usize];
        crunch_quant::dequantize_rows(info.ty, base.tensor_data(info), n_in, &mut w)
            .map_err(|source| Error::Quant { tensor: name.to_string(), source })?;
        for &(ai, pi, s) in ts {
            let a = &adapters[ai].0;
            let p = &a.pairs()[pi];
            let (av, bv) =
                a.dequantize(p).map_err(|e| Error::Model { context: a.path().display().to_string(), source: e })?;
            add_product(&mut w, n_in, &av, &bv, p.rank, s);
        }
        Ok(Some(Replacement::F32(w)))
    };
    let result = quantize::exec::execute_with(
        &base,
        &plan,
        output,
        ExecOptions { replacements: Some(&replace), ..Default::default() },
        progress,
        cancel,
    )?;
    Ok(MergeReport {
        adapters: adapters
            .iter()
            .map(|(a, s)| MergedAdapter {
                path: a.path().display().to_string(),
                scale: *s,
                alpha: a.alpha,
                tensors: a.pairs().len(),
            })
            .collect(),
        merged: terms.into_keys().collect(),
        plan,
        result,
    })
}
