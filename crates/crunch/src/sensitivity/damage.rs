//! The quantization error a type does to one tensor, weighted by how strongly each input column
//! is used (the mean square of the activations that multiply it, i.e. an importance matrix).
//!
//! For a linear layer `y = W x`, the expected squared output error of a weight error `ΔW` is
//! `Σ_i Σ_j ΔW_ij² E[x_j²]` when the inputs' columns are uncorrelated; dividing by the same sum over
//! `W` makes it relative (`‖ΔW x‖² / ‖W x‖²` in expectation), a number comparable across tensors.

use crate::error::{Error, Result};
use crunch_core::GgmlType;

/// `(Σ w_j ΔW_ij², Σ w_j W_ij²)` over all rows, with per-column weights `w` (all 1 when `None`).
pub fn weighted_error_parts(original: &[f32], restored: &[f32], row_len: usize, weights: Option<&[f32]>) -> (f64, f64) {
    use rayon::prelude::*;
    original
        .par_chunks(row_len)
        .zip(restored.par_chunks(row_len))
        .map(|(o, r)| {
            let (mut num, mut den) = (0f64, 0f64);
            for j in 0..row_len {
                let w = weights.map_or(1.0, |w| w[j] as f64);
                let d = (o[j] - r[j]) as f64;
                num += w * d * d;
                den += w * (o[j] as f64) * (o[j] as f64);
            }
            (num, den)
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// Quantize `data` (rows of `row_len` f32) to `ty` and back; the relative weighted error (see the
/// module docs) and the quantized bytes. `quant_weights` are the importance weights the quantizer
/// itself uses (the `imatrix` method), `error_weights` those the error is measured with.
///
/// # Errors
/// Types crunch cannot quantize, row lengths that do not fit the type.
pub fn relative_error(
    name: &str,
    data: &[f32],
    row_len: usize,
    ty: GgmlType,
    quant_weights: Option<&[f32]>,
    error_weights: Option<&[f32]>,
) -> Result<f64> {
    let qerr = |source| Error::Quant { tensor: name.to_string(), source };
    if ty == GgmlType::F32 {
        return Ok(0.0);
    }
    let n_rows = data.len() / row_len.max(1);
    let bytes = ty
        .tensor_size(row_len, n_rows)
        .ok_or_else(|| Error::Invalid(format!("tensor {name}: row length {row_len} does not fit {ty}")))?;
    let mut q = vec![0u8; bytes];
    crunch_quant::quantize_rows(ty, data, row_len, quant_weights, &mut q).map_err(qerr)?;
    let mut back = vec![0f32; data.len()];
    crunch_quant::dequantize_rows(ty, &q, row_len, &mut back).map_err(qerr)?;
    let (num, den) = weighted_error_parts(data, &back, row_len, error_weights);
    Ok(if den > 0.0 { num / den } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bits_less_error() {
        let row = 256;
        let data: Vec<f32> = (0..row * 8).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.02).collect();
        let e2 = relative_error("t", &data, row, GgmlType::Q2_K, None, None).unwrap();
        let e4 = relative_error("t", &data, row, GgmlType::Q4_K, None, None).unwrap();
        let e8 = relative_error("t", &data, row, GgmlType::Q8_0, None, None).unwrap();
        assert!(e2 > e4 && e4 > e8 && e8 > 0.0, "{e2} {e4} {e8}");
        assert_eq!(relative_error("t", &data, row, GgmlType::F32, None, None).unwrap(), 0.0);
        // Weighting only the first column: the error is that column's error.
        let mut w = vec![0f32; row];
        w[0] = 1.0;
        let e = relative_error("t", &data, row, GgmlType::Q4_0, None, Some(&w)).unwrap();
        assert!(e.is_finite() && e >= 0.0);
        assert!(relative_error("t", &data[..100 * 8], 100, GgmlType::Q4_K, None, None).is_err());
    }
}
