//! Which weights of a model calibration applies to: the 2-D `blk.*.weight` tensors (what
//! llama-imatrix observes), with their row length (columns).

use crate::error::{CalibError, Result};
use crunch_core::gguf::GgufFile;

/// One weight calibration can see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    /// Row length: the number of input columns (imatrix entry size).
    pub n_cols: usize,
    pub n_rows: usize,
}

/// The linear weights in blocks (plus `output.weight` or the tied embedding when
/// `with_output`), in file order.
///
/// # Errors
/// A model without any, named.
pub fn calibration_targets(file: &GgufFile, with_output: bool) -> Result<Vec<Target>> {
    let v: Vec<Target> = file
        .tensors()
        .iter()
        .filter(|t| t.dims.len() >= 2 && t.dims[2..].iter().all(|&d| d == 1))
        .filter(|t| {
            (t.name.starts_with("blk.") && t.name.ends_with(".weight")) || (with_output && t.name == "output.weight")
        })
        .map(|t| Target { name: t.name.clone(), n_cols: t.dims[0] as usize, n_rows: t.dims[1] as usize })
        .collect();
    if !v.iter().any(|t| t.name.starts_with("blk.")) {
        return Err(CalibError::NoLinearLayers(format!(
            "{} has no linear layers to calibrate (no 2-D blk.*.weight tensors)",
            file.path.display()
        )));
    }
    Ok(v)
}
