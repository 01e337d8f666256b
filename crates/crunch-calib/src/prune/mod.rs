//! Unstructured and N:M pruning of linear weights: magnitude, Wanda and SparseGPT.
//!
//! Every method zeroes weights of a matrix `W` (`n_out` rows of `n_in`, row-major, as the
//! calibration runner holds it) so that either a fraction of them is zero (unstructured) or, in
//! every row, `N` of every `M` consecutive weights are zero (`N:M`, the convention of the Wanda and
//! SparseGPT papers' code; `2:4` and `4:8` are also NVIDIA's "2 of 4 kept" sparse-tensor-core
//! layouts). Which weights go is decided by a score, smallest first, with ties broken by position
//! so counts are exact:
//!
//! - **magnitude**: `|W_ij|`, compared across the whole matrix (unstructured) or within each group
//!   of `M` (N:M).
//! - **Wanda** (Sun et al., 2023): `|W_ij| · ‖X_j‖₂`, the weight times the L2 norm of its input
//!   column over the calibration tokens, compared within each output row (unstructured) or group.
//! - **SparseGPT** (Frantar & Alistarh, 2023): the optimal-brain-surgeon sweep of GPTQ
//!   ([`crate::gptq`]) with a mask: columns are visited in order, a pruned weight's error
//!   `w / U_jj` (`Uᵀ U = H⁻¹`) is spread over the columns not yet visited, so the surviving
//!   weights compensate for the removed ones. The mask is chosen lazily, per block of columns as
//!   the sweep reaches it (score `w² / U_jj²` with the block's weights already updated), across
//!   all rows of the block (unstructured) or per group of `M` in each row (N:M). Given a GGUF type
//!   with a grid, the surviving weights are rounded onto it in the same sweep, as GPTQ does, and
//!   the pruned ones go to the grid value nearest zero (exactly zero on symmetric grids).

mod select;
pub mod structured;

pub use select::mark_smallest;

use crate::error::{CalibError, Result};
use crate::gptq::{self, GptqOptions, Packed};
use crate::grid::Grid;
use crunch_core::GgmlType;
use rayon::prelude::*;
use serde::Serialize;
use std::fmt;

/// Which weights to zero.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sparsity {
    /// This fraction of the weights, in `(0, 1)`.
    Fraction(f64),
    /// `n` of every `m` consecutive weights of a row (`0 < n < m`).
    NM { n: usize, m: usize },
}

// Fractions are checked finite when made ([`Sparsity::fraction`]), so equality is total.
impl Eq for Sparsity {}

impl fmt::Display for Sparsity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sparsity::Fraction(s) => {
                let pct = format!("{:.2}", s * 100.0);
                write!(f, "{}%", pct.trim_end_matches('0').trim_end_matches('.'))
            }
            Sparsity::NM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

impl Sparsity {
    /// An unstructured sparsity.
    ///
    /// # Errors
    /// A value outside `(0, 1)` (or not finite), worded for the caller to prefix with its option.
    pub fn fraction(s: f64) -> std::result::Result<Self, String> {
        if !(s.is_finite() && s > 0.0 && s < 1.0) {
            return Err(format!("{s} is not a fraction strictly between 0 and 1 (0.5 zeroes half the weights)"));
        }
        Ok(Sparsity::Fraction(s))
    }

    /// `N:M`: `N` zeros in every `M` consecutive weights of a row.
    ///
    /// # Errors
    /// Not two integers `0 < N < M`.
    pub fn pattern(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{s:?} is not N:M with 0 < N < M (2:4 zeroes 2 of every 4 weights of a row)");
        let (n, m) = s.trim().split_once(':').ok_or_else(bad)?;
        let (n, m): (usize, usize) = (n.trim().parse().map_err(|_| bad())?, m.trim().parse().map_err(|_| bad())?);
        if n == 0 || n >= m || m > 4096 {
            return Err(bad());
        }
        Ok(Sparsity::NM { n, m })
    }

    /// The fraction of weights this zeroes.
    pub fn target(&self) -> f64 {
        match *self {
            Sparsity::Fraction(s) => s,
            Sparsity::NM { n, m } => n as f64 / m as f64,
        }
    }

    /// Is a row of `n_in` weights compatible? (N:M needs whole groups.)
    ///
    /// # Errors
    /// `M` does not divide `n_in`, naming the tensor.
    pub fn check_row(&self, name: &str, n_in: usize) -> Result<()> {
        match *self {
            Sparsity::NM { n, m } if !n_in.is_multiple_of(m) => Err(CalibError::Invalid(format!(
                "{n}:{m} needs rows whose length is a multiple of {m}, but {name} has rows of {n_in}"
            ))),
            _ => Ok(()),
        }
    }
}

/// Weights zeroed among `count` at sparsity `s` (the nearest whole number).
pub(crate) fn zeros_of(s: f64, count: usize) -> usize {
    ((s * count as f64).round() as usize).min(count)
}

/// The pruning methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneMethod {
    Magnitude,
    Wanda,
    SparseGpt,
}

impl std::str::FromStr for PruneMethod {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "magnitude" => Ok(PruneMethod::Magnitude),
            "wanda" => Ok(PruneMethod::Wanda),
            "sparsegpt" => Ok(PruneMethod::SparseGpt),
            other => Err(format!("unknown pruning method {other:?} (magnitude, wanda, sparsegpt)")),
        }
    }
}

impl PruneMethod {
    pub fn name(self) -> &'static str {
        match self {
            PruneMethod::Magnitude => "magnitude",
            PruneMethod::Wanda => "wanda",
            PruneMethod::SparseGpt => "sparsegpt",
        }
    }

    /// Does the method need activations from calibration text?
    pub fn needs_calibration(self) -> bool {
        !matches!(self, PruneMethod::Magnitude)
    }
}

fn check_shape(name: &str, w: &[f32], n_in: usize, sp: Sparsity) -> Result<usize> {
    if n_in == 0 || !w.len().is_multiple_of(n_in) {
        return Err(CalibError::Invalid(format!("{name}: {} weights are not whole rows of {n_in}", w.len())));
    }
    sp.check_row(name, n_in)?;
    Ok(w.len() / n_in)
}

/// Zero the weights of `w` whose `score(row, col, w)` is smallest, in the scope the sparsity and
/// `per_row` ask for. Returns the number of zeros in `w` afterwards.
fn prune_by_score(
    w: &mut [f32],
    n_in: usize,
    sp: Sparsity,
    per_row: bool,
    score: impl Fn(usize, f32) -> f32 + Sync,
) -> usize {
    match sp {
        Sparsity::Fraction(s) if !per_row => {
            let scores: Vec<f32> =
                w.par_chunks(n_in).flat_map_iter(|row| row.iter().enumerate().map(|(c, &v)| score(c, v))).collect();
            let mut mask = vec![false; w.len()];
            mark_smallest(&scores, zeros_of(s, w.len()), &mut mask);
            w.par_iter_mut().zip(mask.par_iter()).for_each(|(v, &m)| {
                if m {
                    *v = 0.0;
                }
            });
        }
        Sparsity::Fraction(s) => {
            let k = zeros_of(s, n_in);
            w.par_chunks_mut(n_in).for_each(|row| {
                let scores: Vec<f32> = row.iter().enumerate().map(|(c, &v)| score(c, v)).collect();
                let mut mask = vec![false; n_in];
                mark_smallest(&scores, k, &mut mask);
                row.iter_mut().zip(&mask).filter(|(_, &m)| m).for_each(|(v, _)| *v = 0.0);
            });
        }
        Sparsity::NM { n, m } => {
            w.par_chunks_mut(n_in).for_each(|row| {
                let (mut scores, mut mask) = (vec![0f32; m], vec![false; m]);
                for (g, grp) in row.chunks_exact_mut(m).enumerate() {
                    for (p, (s, &v)) in scores.iter_mut().zip(grp.iter()).enumerate() {
                        *s = score(g * m + p, v);
                    }
                    mask.fill(false);
                    mark_smallest(&scores, n, &mut mask);
                    grp.iter_mut().zip(&mask).filter(|(_, &k)| k).for_each(|(v, _)| *v = 0.0);
                }
            });
        }
    }
    count_zeros(w)
}

/// Exact zeros in `w`.
pub fn count_zeros(w: &[f32]) -> usize {
    w.par_iter().filter(|v| **v == 0.0).count()
}

/// Magnitude pruning in place: the smallest `|w|` of the whole matrix (unstructured) or of each
/// group of `M` (N:M). Returns the zeros in `w` afterwards.
///
/// # Errors
/// Sizes that are not whole rows, N:M groups that do not divide the rows.
pub fn magnitude(name: &str, w: &mut [f32], n_in: usize, sp: Sparsity) -> Result<usize> {
    check_shape(name, w, n_in, sp)?;
    Ok(prune_by_score(w, n_in, sp, false, |_, v| v.abs()))
}

/// Wanda in place: the smallest `|w_ij| · ‖x_j‖₂` of each output row (unstructured) or group of
/// `M` (N:M). `col_sq` is the sum over calibration tokens of each input column's squared
/// activation (an imatrix row: `‖x_j‖₂²` up to a constant factor, which does not change the
/// order). Returns the zeros in `w` afterwards.
///
/// # Errors
/// Sizes that do not fit, N:M groups that do not divide the rows.
pub fn wanda(name: &str, w: &mut [f32], n_in: usize, col_sq: &[f32], sp: Sparsity) -> Result<usize> {
    check_shape(name, w, n_in, sp)?;
    if col_sq.len() != n_in {
        return Err(CalibError::Invalid(format!(
            "{name}: {} activation norms for rows of {n_in} inputs",
            col_sq.len()
        )));
    }
    let norm: Vec<f32> = col_sq.iter().map(|&s| s.max(0.0).sqrt()).collect();
    Ok(prune_by_score(w, n_in, sp, true, |c, v| v.abs() * norm[c]))
}

/// Per-column sums of squares of `x` (rows of `n`), as f32: Wanda's `‖x_j‖₂²`.
pub fn column_sq_sums(x: &[f32], n: usize) -> Vec<f32> {
    let mut acc = vec![0f64; n];
    acc.par_chunks_mut(64).enumerate().for_each(|(b, a)| {
        let (c0, w) = (b * 64, a.len());
        for row in x.chunks_exact(n) {
            for (s, v) in a.iter_mut().zip(&row[c0..c0 + w]) {
                *s += (*v as f64) * (*v as f64);
            }
        }
    });
    acc.into_iter().map(|s| s as f32).collect()
}

/// A SparseGPT result.
#[derive(Clone, Debug)]
pub struct SparseGptResult {
    /// The pruned (and, with a target type, quantized) weights, `n_out × n_in`: what llama.cpp
    /// computes with.
    pub weights: Vec<f32>,
    /// The tensor packed in the target type, when one was given.
    pub bytes: Option<Vec<u8>>,
    /// Dampening finally used.
    pub damp: f32,
    /// `Σ (err / U_jj)²` over pruned (and rounded) weights.
    pub loss: f64,
    /// Exact zeros in `weights`.
    pub zeros: usize,
}

/// Can SparseGPT quantize jointly onto `ty`? (The types GPTQ has a grid for.)
pub fn joint_supports(ty: GgmlType) -> bool {
    gptq::supports(ty)
}

/// SparseGPT: prune `w` (`n_out` rows of `n_in`) to `sp` given the Hessian `h` (`n_in × n_in`,
/// `Σ xᵀx`), updating the surviving weights. With `quantize = Some((ty, importance))` the
/// survivors are rounded onto `ty`'s grid in the same sweep (joint sparsification and
/// quantization) and the packed tensor is returned. `opts.block` is the lazy-update and
/// mask-selection block (rounded up to whole quantization blocks and N:M groups);
/// `opts.act_order` is ignored (the mask needs the columns in order).
///
/// # Errors
/// Sizes that do not fit, N:M groups that do not divide the rows, a type without a grid, a
/// Hessian that stays indefinite.
pub fn sparsegpt(
    name: &str,
    w: &[f32],
    n_in: usize,
    h: &[f32],
    sp: Sparsity,
    quantize: Option<(GgmlType, Option<&[f32]>)>,
    opts: GptqOptions,
) -> Result<SparseGptResult> {
    check_shape(name, w, n_in, sp)?;
    let r = gptq::sweep(name, w, n_in, h, quantize.map(|(ty, imp)| (Grid::Type(ty), imp)), Some(sp), opts)?;
    let zeros = count_zeros(&r.weights);
    let bytes = match r.packed {
        Some(Packed::Type(b)) => Some(b),
        Some(Packed::Int(_)) | None => None,
    };
    Ok(SparseGptResult { weights: r.weights, bytes, damp: r.damp, loss: r.loss, zeros })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparsities_parse_and_print() {
        assert_eq!(Sparsity::fraction(0.5).unwrap().to_string(), "50%");
        assert_eq!(Sparsity::fraction(0.3).unwrap().to_string(), "30%");
        assert_eq!(Sparsity::fraction(0.125).unwrap().to_string(), "12.5%");
        assert_eq!(Sparsity::pattern(" 2:4 ").unwrap().to_string(), "2:4");
        assert_eq!(Sparsity::pattern("4:8").unwrap().target(), 0.5);
        assert!(Sparsity::NM { n: 2, m: 4 }.check_row("t", 576).is_ok());
        assert!(Sparsity::NM { n: 3, m: 7 }.check_row("t", 576).is_err());
        assert!(Sparsity::Fraction(0.5).check_row("t", 7).is_ok());
        assert_eq!("SparseGPT".parse::<PruneMethod>().unwrap(), PruneMethod::SparseGpt);
        assert!(!PruneMethod::Magnitude.needs_calibration() && PruneMethod::Wanda.needs_calibration());
    }
}
