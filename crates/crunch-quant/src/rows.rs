//! Whole-tensor quantization over rows, validated and spread over all cores.

use crate::kernels;
use crunch_core::GgmlType;
use rayon::prelude::*;

/// What can go wrong when quantizing or dequantizing a tensor.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("crunch has no kernels for type {0}")]
    Unsupported(GgmlType),
    #[error("row length {row_len} is not a multiple of {ty}'s block size {block}")]
    RowNotBlockMultiple { ty: GgmlType, row_len: usize, block: usize },
    #[error("{what}: expected {expected} elements/bytes, got {got}")]
    Length { what: &'static str, expected: usize, got: usize },
}

/// Quantize `src` (rows of `row_len` f32) to `ty` into `dst`, with optional per-column importance
/// weights (`imatrix.len() == row_len`). Rows are processed in parallel.
///
/// # Errors
/// Unsupported type, a row length that is not a multiple of the block size, or buffer sizes that
/// do not match.
pub fn quantize_rows(
    ty: GgmlType,
    src: &[f32],
    row_len: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    let k = kernels(ty).ok_or(QuantError::Unsupported(ty))?;
    let row_bytes = check_rows(ty, src.len(), row_len, dst.len())?;
    if let Some(w) = imatrix {
        if w.len() != row_len {
            return Err(QuantError::Length { what: "importance weights", expected: row_len, got: w.len() });
        }
    }
    if row_len == 0 {
        return Ok(());
    }
    let weights = if k.uses_weights { imatrix } else { None };
    dst.par_chunks_mut(row_bytes).zip(src.par_chunks(row_len)).for_each(|(d, s)| (k.quantize)(s, weights, d));
    Ok(())
}

/// Elements a worker converts at once in [`convert_rows`]: 256 KiB of f32, so the intermediate
/// values stay in the core's cache between dequantization and quantization.
const CONVERT_GROUP_ELEMS: usize = 64 * 1024;

/// Convert whole rows of `src_type` bytes to `dst_type` (with optional per-column importance
/// weights, as [`quantize_rows`]), in parallel and fused: each worker dequantizes a small group of
/// rows into its own cache-sized f32 buffer and quantizes it right away, so no f32 copy of the
/// tensor is ever made. Gives the same bytes as [`dequantize_rows`] followed by [`quantize_rows`].
///
/// # Errors
/// Unsupported types, a row length that is not a multiple of either block size, buffer sizes that
/// do not match.
pub fn convert_rows(
    src_type: GgmlType,
    src: &[u8],
    dst_type: GgmlType,
    row_len: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    convert_rows_with(src_type, src, dst_type, row_len, imatrix, None, dst)
}

/// A quantizer of one row of f32 into a type's blocks.
pub type RowQuantizer = fn(&[f32], &mut [u8]);

/// HQQ's quantizer for the GGUF types with a scale and a minimum per block of 32 (Q4_1, Q5_1).
pub fn hqq_quantizer(ty: GgmlType) -> Option<RowQuantizer> {
    match ty {
        GgmlType::Q4_1 => Some(crate::legacy::q4_1::quantize_hqq),
        GgmlType::Q5_1 => Some(crate::legacy::q5_1::quantize_hqq),
        _ => None,
    }
}

/// [`convert_rows`] with HQQ's scale and minimum per block ([`hqq_quantizer`]) instead of the
/// type's own quantizer.
///
/// # Errors
/// As [`convert_rows`]; a destination type HQQ does not serve.
pub fn convert_rows_hqq(
    src_type: GgmlType,
    src: &[u8],
    dst_type: GgmlType,
    row_len: usize,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    let q = hqq_quantizer(dst_type).ok_or(QuantError::Unsupported(dst_type))?;
    convert_rows_with(src_type, src, dst_type, row_len, None, Some(q), dst)
}

fn convert_rows_with(
    src_type: GgmlType,
    src: &[u8],
    dst_type: GgmlType,
    row_len: usize,
    imatrix: Option<&[f32]>,
    quantizer: Option<RowQuantizer>,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    let sk = kernels(src_type).ok_or(QuantError::Unsupported(src_type))?;
    let dk = kernels(dst_type).ok_or(QuantError::Unsupported(dst_type))?;
    let src_row = src_type.row_size(row_len).ok_or(QuantError::RowNotBlockMultiple {
        ty: src_type,
        row_len,
        block: src_type.block_size(),
    })?;
    if row_len == 0 || src_row == 0 {
        return check_rows(dst_type, 0, row_len, dst.len()).map(|_| ());
    }
    if !src.len().is_multiple_of(src_row) {
        return Err(QuantError::Length {
            what: "source bytes (not whole rows)",
            expected: src.len() / src_row * src_row,
            got: src.len(),
        });
    }
    let n_rows = src.len() / src_row;
    let dst_row = check_rows(dst_type, n_rows * row_len, row_len, dst.len())?;
    if let Some(w) = imatrix {
        if w.len() != row_len {
            return Err(QuantError::Length { what: "importance weights", expected: row_len, got: w.len() });
        }
    }
    if src_type == dst_type && quantizer.is_none() {
        dst.copy_from_slice(src);
        return Ok(());
    }
    let weights = if dk.uses_weights { imatrix } else { None };
    let group = (CONVERT_GROUP_ELEMS / row_len).max(1);
    dst.par_chunks_mut(group * dst_row).zip(src.par_chunks(group * src_row)).for_each_init(
        || vec![0f32; group * row_len],
        |buf, (d, s)| {
            let f = &mut buf[..s.len() / src_row * row_len];
            for (fr, sr) in f.chunks_exact_mut(row_len).zip(s.chunks_exact(src_row)) {
                (sk.dequantize)(sr, fr);
            }
            for (dr, fr) in d.chunks_exact_mut(dst_row).zip(f.chunks_exact(row_len)) {
                match quantizer {
                    Some(q) => q(fr, dr),
                    None => (dk.quantize)(fr, weights, dr),
                }
            }
        },
    );
    Ok(())
}

/// Dequantize rows of `ty` from `src` into `dst` (`row_len` elements per row), in parallel.
///
/// # Errors
/// Unsupported type or buffer sizes that do not match.
pub fn dequantize_rows(ty: GgmlType, src: &[u8], row_len: usize, dst: &mut [f32]) -> Result<(), QuantError> {
    let k = kernels(ty).ok_or(QuantError::Unsupported(ty))?;
    let row_bytes = check_rows(ty, dst.len(), row_len, src.len())?;
    if row_len == 0 {
        return Ok(());
    }
    dst.par_chunks_mut(row_len).zip(src.par_chunks(row_bytes)).for_each(|(d, s)| (k.dequantize)(s, d));
    Ok(())
}

fn check_rows(ty: GgmlType, n_elems: usize, row_len: usize, n_bytes: usize) -> Result<usize, QuantError> {
    let row_bytes =
        ty.row_size(row_len).ok_or(QuantError::RowNotBlockMultiple { ty, row_len, block: ty.block_size() })?;
    if row_len == 0 {
        return Ok(0);
    }
    if !n_elems.is_multiple_of(row_len) {
        return Err(QuantError::Length {
            what: "elements (not whole rows)",
            expected: n_elems / row_len * row_len,
            got: n_elems,
        });
    }
    let expected = n_elems / row_len * row_bytes;
    if n_bytes != expected {
        return Err(QuantError::Length { what: "quantized bytes", expected, got: n_bytes });
    }
    Ok(row_bytes)
}
