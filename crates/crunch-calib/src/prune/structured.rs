//! Structured pruning: whole blocks, FFN channels and attention KV groups.
//!
//! What is removed leaves a smaller dense model with the same architecture, so every runtime
//! benefits (fewer bytes, fewer FLOPs), unlike unstructured zeros.
//!
//! - **Blocks.** A block whose output hidden state points the same way as its input changes
//!   little. Two scores over the calibration tokens' residual stream `h_l` (the input of block
//!   `l`):
//!   - *angular distance* of a run of `n` blocks (Gromov et al., "The Unreasonable
//!     Ineffectiveness of the Deeper Layers", 2024): `mean_t arccos(cos(h_l, h_{l+n})) / π`; the
//!     run of `n` consecutive blocks with the smallest distance goes.
//!   - *block influence* of each block (Men et al., "ShortGPT", 2024):
//!     `1 − mean_t cos(h_l, h_{l+1})`; the `n` blocks with the smallest influence go.
//! - **Channels** (FFN width) and **KV groups** (attention heads): the input of the layer that
//!   consumes them (`ffn_down`'s input is the FFN's channels, `attn_output`'s input the heads'
//!   outputs) has a second moment `H = XᵀX` over the calibration tokens. Channel `j` carries
//!   `H_jj · ‖W_:,j‖²` of the layer's output energy (the same product Wanda scores one weight
//!   by, summed over the column); a KV group scores the sum over the columns of its query heads.
//!   The lowest go, then the consuming layer's surviving columns are refit by least squares so
//!   the layer's output on the calibration tokens changes as little as possible:
//!   `W' = W H_{:,K} (H_{K,K} + λI)⁻¹` (the structured form of the OBS update SparseGPT makes per
//!   weight).

use crate::error::{CalibError, Result};
use faer::linalg::solvers::Solve;
use faer::{Mat, Side};
use rayon::prelude::*;
use serde::Serialize;

/// How blocks to remove are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerScore {
    /// The run of consecutive blocks whose input and output are closest in angle.
    Angular,
    /// The blocks that each change their input the least (ShortGPT's block influence).
    Influence,
}

impl std::str::FromStr for LayerScore {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "angular" => Ok(LayerScore::Angular),
            "influence" | "bi" => Ok(LayerScore::Influence),
            other => Err(format!("unknown layer score {other:?} (angular, influence)")),
        }
    }
}

/// Mean over rows (tokens) of `(cos(a_t, b_t), arccos(cos(a_t, b_t)) / π)`, `a` and `b` with
/// rows of `n`. A zero row counts as cosine 1 (nothing changed).
pub fn mean_cosine_and_angle(a: &[f32], b: &[f32], n: usize) -> (f64, f64) {
    let rows = a.len() / n.max(1);
    if rows == 0 {
        return (1.0, 0.0);
    }
    let (c, d) = a
        .par_chunks_exact(n)
        .zip(b.par_chunks_exact(n))
        .map(|(x, y)| {
            let (mut xy, mut xx, mut yy) = (0f64, 0f64, 0f64);
            for (&p, &q) in x.iter().zip(y) {
                xy += p as f64 * q as f64;
                xx += p as f64 * p as f64;
                yy += q as f64 * q as f64;
            }
            let cos = if xx == 0.0 || yy == 0.0 { 1.0 } else { (xy / (xx * yy).sqrt()).clamp(-1.0, 1.0) };
            (cos, cos.acos() / std::f64::consts::PI)
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    (c / rows as f64, d / rows as f64)
}

/// Which of `n_layer` blocks to remove, `n` of them, from the scores: for
/// [`LayerScore::Angular`] `scores[l]` is the angular distance from block `l`'s input to block
/// `l + n - 1`'s output (`n_layer - n + 1` values); for [`LayerScore::Influence`] `scores[l]` is
/// block `l`'s influence (`n_layer` values). Sorted ascending.
///
/// # Errors
/// `n` is 0 or not below `n_layer`, or the scores have the wrong length.
pub fn layers_to_remove(how: LayerScore, scores: &[f64], n_layer: usize, n: usize) -> Result<Vec<usize>> {
    if n == 0 || n >= n_layer {
        return Err(CalibError::Invalid(format!(
            "cannot remove {n} of {n_layer} blocks (at least one must go and one must stay)"
        )));
    }
    let want = match how {
        LayerScore::Angular => n_layer - n + 1,
        LayerScore::Influence => n_layer,
    };
    if scores.len() != want {
        return Err(CalibError::Invalid(format!("{} layer scores for {want} places", scores.len())));
    }
    let order = ascending(scores);
    Ok(match how {
        LayerScore::Angular => (order[0]..order[0] + n).collect(),
        LayerScore::Influence => {
            let mut v = order[..n].to_vec();
            v.sort_unstable();
            v
        }
    })
}

/// Indices of `v` from smallest to largest (ties by index; NaN last).
fn ascending(v: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].partial_cmp(&v[b]).unwrap_or_else(|| v[a].is_nan().cmp(&v[b].is_nan())).then(a.cmp(&b)));
    idx
}

/// Output energy carried by each input column of a linear layer: `H_jj · ‖W_:,j‖²` for `w`
/// (`n_out` rows of `n_in`) and the second moment `h` (`n_in × n_in`, row-major).
pub fn column_scores(w: &[f32], n_in: usize, h: &[f32]) -> Vec<f64> {
    let mut norms = vec![0f64; n_in];
    for row in w.chunks_exact(n_in) {
        for (s, &v) in norms.iter_mut().zip(row) {
            *s += v as f64 * v as f64;
        }
    }
    norms.iter().enumerate().map(|(j, s)| s * h[j * n_in + j].max(0.0) as f64).collect()
}

/// The `keep` highest-scoring of `scores.len() / width` groups of `width` consecutive columns,
/// as sorted group indices.
pub fn keep_groups(scores: &[f64], width: usize, keep: usize) -> Vec<usize> {
    let groups: Vec<f64> = scores.chunks(width.max(1)).map(|g| g.iter().sum()).collect();
    // Highest first, ties to the earlier group.
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by(|&a, &b| groups[b].partial_cmp(&groups[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    let mut kept: Vec<usize> = order[..keep.min(order.len())].to_vec();
    kept.sort_unstable();
    kept
}

/// The columns of the kept groups.
pub fn group_columns(groups: &[usize], width: usize) -> Vec<usize> {
    groups.iter().flat_map(|&g| g * width..(g + 1) * width).collect()
}

/// Columns `keep` of `w` (`n_out` rows of `n_in`): `n_out` rows of `keep.len()`.
pub fn select_columns(w: &[f32], n_in: usize, keep: &[usize]) -> Vec<f32> {
    w.chunks_exact(n_in).flat_map(|row| keep.iter().map(move |&j| row[j])).collect()
}

/// Rows `keep` of `w` (rows of `n_in`).
pub fn select_rows(w: &[f32], n_in: usize, keep: &[usize]) -> Vec<f32> {
    keep.iter().flat_map(|&i| w[i * n_in..(i + 1) * n_in].iter().copied()).collect()
}

/// The least-squares refit of a linear layer restricted to input columns `keep`:
/// `W' = W H_{:,K} (H_{K,K} + λI)⁻¹` with `λ = damp · mean(diag H_{K,K})`, in f64. `w` has `n_out`
/// rows of `n_in`, `h` is `n_in × n_in`; returns `n_out` rows of `keep.len()`. When the damped
/// system still cannot be factored, `damp` grows tenfold (up to five times).
///
/// # Errors
/// [`CalibError::NotPositiveDefinite`] naming `name` when every try fails.
pub fn refit_columns(name: &str, w: &[f32], n_in: usize, h: &[f32], keep: &[usize], damp: f64) -> Result<Vec<f32>> {
    let (n_out, k) = (w.len() / n_in.max(1), keep.len());
    if k == 0 {
        return Ok(Vec::new());
    }
    // rhs = H_{K,:} Wᵀ (k × n_out); solve (H_KK + λI) Z = rhs, W' = Zᵀ.
    let hk = Mat::<f64>::from_fn(k, n_in, |a, j| h[keep[a] * n_in + j] as f64);
    let wt = Mat::<f64>::from_fn(n_in, n_out, |j, o| w[o * n_in + j] as f64);
    let rhs = &hk * &wt;
    let mean = keep.iter().map(|&j| h[j * n_in + j] as f64).sum::<f64>() / k as f64;
    let mut d = damp;
    for _ in 0..5 {
        let lambda = (d * mean).max(1e-10);
        let a =
            Mat::<f64>::from_fn(k, k, |p, q| h[keep[p] * n_in + keep[q]] as f64 + if p == q { lambda } else { 0.0 });
        if let Ok(llt) = a.llt(Side::Lower) {
            let z = llt.solve(&rhs);
            let mut out = vec![0f32; n_out * k];
            for o in 0..n_out {
                for p in 0..k {
                    out[o * k + p] = z[(p, o)] as f32;
                }
            }
            if out.iter().all(|v| v.is_finite()) {
                return Ok(out);
            }
        }
        tracing::warn!(
            tensor = name,
            damp = d,
            "refit: the kept columns' second moment did not factor; more dampening"
        );
        d *= 10.0;
    }
    Err(CalibError::NotPositiveDefinite { tensor: name.to_string(), damp: (d / 10.0) as f32, tries: 5 })
}

/// Scatter `compact` (`n_out` rows of `keep.len()`) back into a full-width matrix (rows of
/// `n_in`), zeros in the removed columns: the same layer, computed at full width.
pub fn scatter_columns(compact: &[f32], n_in: usize, keep: &[usize]) -> Vec<f32> {
    let k = keep.len().max(1);
    let mut full = vec![0f32; compact.len() / k * n_in];
    for (row, src) in full.chunks_exact_mut(n_in).zip(compact.chunks_exact(k)) {
        for (&j, &v) in keep.iter().zip(src) {
            row[j] = v;
        }
    }
    full
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg;

    /// Uniform in [-1, 1).
    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut r = crunch_testkit::Rng::new(seed);
        move || r.uniform() * 2.0 - 1.0
    }

    #[test]
    fn angles_of_known_vectors() {
        let a = [1.0, 0.0, 1.0, 0.0];
        let b = [0.0, 1.0, 2.0, 0.0];
        let (c, d) = mean_cosine_and_angle(&a, &b, 2);
        assert!((c - 0.5).abs() < 1e-12, "{c}");
        assert!((d - 0.25).abs() < 1e-12, "{d}");
    }

    #[test]
    fn block_choice() {
        // Angular: the run starting at the smallest score.
        assert_eq!(layers_to_remove(LayerScore::Angular, &[0.3, 0.1, 0.2], 4, 2).unwrap(), vec![1, 2]);
        // Influence: the n smallest, sorted.
        assert_eq!(layers_to_remove(LayerScore::Influence, &[0.3, 0.1, 0.5, 0.05], 4, 2).unwrap(), vec![1, 3]);
        assert!(layers_to_remove(LayerScore::Influence, &[0.1; 4], 4, 4).is_err());
        assert!(layers_to_remove(LayerScore::Influence, &[0.1; 4], 4, 0).is_err());
        assert!(layers_to_remove(LayerScore::Angular, &[0.1; 4], 4, 2).is_err());
    }

    #[test]
    fn groups_keep_the_highest() {
        let s = [1.0, 1.0, 5.0, 5.0, 0.1, 0.1, 3.0, 3.0];
        assert_eq!(keep_groups(&s, 2, 2), vec![1, 3]);
        assert_eq!(group_columns(&[1, 3], 2), vec![2, 3, 6, 7]);
        assert_eq!(keep_groups(&s, 1, 3), vec![2, 3, 6]);
    }

    #[test]
    fn rows_and_columns() {
        let w: Vec<f32> = (0..12).map(|v| v as f32).collect(); // 3 rows of 4
        assert_eq!(select_columns(&w, 4, &[1, 3]), vec![1.0, 3.0, 5.0, 7.0, 9.0, 11.0]);
        assert_eq!(select_rows(&w, 4, &[2]), vec![8.0, 9.0, 10.0, 11.0]);
        assert_eq!(scatter_columns(&[1.0, 3.0], 4, &[1, 3]), vec![0.0, 1.0, 0.0, 3.0]);
    }

    /// The refit is exact when a removed column is a combination of kept ones, and never worse
    /// than dropping the columns without it.
    #[test]
    fn refit_compensates_removed_columns() {
        let (n_in, n_out, n_tok) = (12, 5, 400);
        let mut r = rng(7);
        let mut x = vec![0f32; n_tok * n_in];
        for row in x.chunks_exact_mut(n_in) {
            for v in row.iter_mut() {
                *v = r();
            }
            // Column 11 is a combination of columns 0 and 3.
            row[11] = 0.5 * row[0] - 2.0 * row[3];
        }
        let w: Vec<f32> = (0..n_out * n_in).map(|_| r()).collect();
        let mut h = vec![0f32; n_in * n_in];
        linalg::add_xtx(&mut h, &x, n_in);
        let keep: Vec<usize> = (0..11).collect();
        let err = |wk: &[f32]| -> f64 {
            let y = linalg::matmul_xwt(&x, n_in, &w, n_out);
            let xk = select_columns(&x, n_in, &keep);
            let yk = linalg::matmul_xwt(&xk, keep.len(), wk, n_out);
            y.iter().zip(&yk).map(|(a, b)| ((a - b) as f64).powi(2)).sum()
        };
        let refit = refit_columns("t", &w, n_in, &h, &keep, 1e-9).unwrap();
        let dropped = select_columns(&w, n_in, &keep);
        let (e_refit, e_drop) = (err(&refit), err(&dropped));
        assert!(e_refit < 1e-6 * e_drop, "refit {e_refit} vs drop {e_drop}");
        // Random columns removed: the refit is the least-squares optimum, so no worse.
        let keep2 = [0, 2, 4, 5, 7, 9];
        let refit2 = refit_columns("t", &w, n_in, &h, &keep2, 1e-9).unwrap();
        let drop2 = select_columns(&w, n_in, &keep2);
        let xk = select_columns(&x, n_in, &keep2);
        let y = linalg::matmul_xwt(&x, n_in, &w, n_out);
        let e = |wk: &[f32]| -> f64 {
            let yk = linalg::matmul_xwt(&xk, keep2.len(), wk, n_out);
            y.iter().zip(&yk).map(|(a, b)| ((a - b) as f64).powi(2)).sum()
        };
        assert!(e(&refit2) < e(&drop2), "{} vs {}", e(&refit2), e(&drop2));
    }

    #[test]
    fn column_scores_are_energy() {
        // Two inputs: the first twice as large, the second with twice the weight norm.
        let w = [1.0f32, 2.0, 1.0, 2.0];
        let h = [4.0f32, 0.0, 0.0, 1.0];
        assert_eq!(column_scores(&w, 2, &h), vec![8.0, 8.0]);
    }
}
