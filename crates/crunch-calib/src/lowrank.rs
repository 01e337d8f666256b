//! Low-rank correction of a quantization error (groundwork for issue #15: EoRA / QERA / LQER).
//!
//! A quantized weight `Ŵ` leaves an error `E = W − Ŵ` (`n_out` rows of `n_in`). A rank-`r` pair
//! `B` (`n_out × r`) and `A` (`r × n_in`) added beside the quantized layer gives `Ŵ + B A`. What
//! matters is the layer's output on real inputs, so the best pair minimises
//! `‖(E − B A) X‖² = tr((E − BA) H (E − BA)ᵀ)` with `H = XᵀX` the second moment of the layer's
//! input over calibration tokens. With `H + λI = L Lᵀ` (Cholesky), that is `‖(E − BA) L‖²`, so
//! the optimum comes from the SVD `E L = U Σ Vᵀ` (Eckart–Young): `B = U_r Σ_r`, `A = V_rᵀ L⁻¹`.
//! Without `H` it is the plain SVD of `E` (the identity whitening). Everything is in f64.
//!
//! The singular values tell what each rank buys: keeping component `i` removes `σ_i²` of the
//! whitened error energy, which is how ranks can be spread over tensors under a byte budget.

use crate::error::{CalibError, Result};
use faer::{Mat, Par, Side};

/// A rank-`rank` correction `B A` of one weight.
#[derive(Clone, Debug)]
pub struct LowRank {
    pub rank: usize,
    /// Rows of the corrected weight.
    pub n_out: usize,
    /// `rank` rows of `n_in` (llama.cpp's `lora_a`).
    pub a: Vec<f32>,
    /// `n_out` rows of `rank` (llama.cpp's `lora_b`).
    pub b: Vec<f32>,
    /// Every singular value of the whitened error, largest first (`min(n_out, n_in)` of them).
    pub singular_values: Vec<f64>,
    /// The whitened error energy `Σ σ_i²` before the correction.
    pub energy_before: f64,
    /// What is left after it: `Σ_{i ≥ rank} σ_i²`.
    pub energy_after: f64,
}

/// The best rank-`rank` correction of `err` (`n_out` rows of `n_in`) for inputs with second
/// moment `h` (`n_in × n_in`, row-major), or the plain SVD when `h` is `None`. `damp` is the
/// dampening added to `h`'s diagonal, relative to its mean. A rank above `min(n_out, n_in)` is
/// clamped to it.
///
/// # Errors
/// Sizes that do not match, an SVD that does not converge, a second moment that does not factor
/// even dampened (named by `name`).
pub fn correction(name: &str, err: &[f32], n_in: usize, h: Option<&[f32]>, rank: usize, damp: f64) -> Result<LowRank> {
    let l = h.map(|h| whitening(name, h, n_in, damp)).transpose()?;
    correction_whitened(name, err, n_in, l.as_ref(), rank)
}

/// A whitening factor (lower triangular, `n_in × n_in`).
pub type Whitening = Mat<f64>;

/// The whitening factor `L` of inputs with second moment `h` (`n_in × n_in`, row-major):
/// `H + λI = L Lᵀ` with `λ = damp ·` mean diagonal. Computed once, it serves every weight that
/// reads the same inputs ([`correction_whitened`]).
///
/// # Errors
/// A size that does not match, a matrix that does not factor even dampened (named by `name`).
pub fn whitening(name: &str, h: &[f32], n_in: usize, damp: f64) -> Result<Mat<f64>> {
    if n_in == 0 || h.len() != n_in * n_in {
        return Err(CalibError::Invalid(format!("{name}: second moment of {} values for rows of {n_in}", h.len())));
    }
    let mean = (0..n_in).map(|i| h[i * n_in + i] as f64).sum::<f64>() / n_in as f64;
    let lambda = (damp * mean).max(1e-12);
    let hm = Mat::<f64>::from_fn(n_in, n_in, |i, j| h[i * n_in + j] as f64 + if i == j { lambda } else { 0.0 });
    let llt = hm.llt(Side::Lower).map_err(|_| CalibError::NotPositiveDefinite {
        tensor: name.to_string(),
        damp: damp as f32,
        tries: 1,
    })?;
    Ok(llt.L().to_owned())
}

/// [`correction`] with the whitening factor already computed ([`whitening`]; `None`: plain SVD).
///
/// # Errors
/// As [`correction`].
pub fn correction_whitened(name: &str, err: &[f32], n_in: usize, l: Option<&Mat<f64>>, rank: usize) -> Result<LowRank> {
    if n_in == 0 || err.is_empty() || !err.len().is_multiple_of(n_in) {
        return Err(CalibError::Invalid(format!("{name}: {} values are not rows of {n_in}", err.len())));
    }
    let n_out = err.len() / n_in;
    if let Some(l) = l {
        if l.nrows() != n_in || l.ncols() != n_in {
            return Err(CalibError::Invalid(format!("{name}: whitening of size {} for rows of {n_in}", l.nrows())));
        }
    }
    let e = Mat::<f64>::from_fn(n_out, n_in, |i, j| err[i * n_in + j] as f64);
    let m = match l {
        Some(l) => &e * l,
        None => e,
    };
    let svd = m.thin_svd().map_err(|e| CalibError::Invalid(format!("{name}: SVD did not converge ({e:?})")))?;
    let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    let r = rank.min(s.len());
    let (u, v) = (svd.U(), svd.V());
    let mut b = vec![0f32; n_out * r];
    for i in 0..n_out {
        for k in 0..r {
            b[i * r + k] = (u[(i, k)] * s[k]) as f32;
        }
    }
    // Aᵀ = L⁻ᵀ V_r: solve Lᵀ Aᵀ = V_r.
    let mut at = Mat::<f64>::from_fn(n_in, r, |i, k| v[(i, k)]);
    if let Some(l) = l {
        faer::linalg::triangular_solve::solve_upper_triangular_in_place(l.transpose(), at.as_mut(), Par::rayon(0));
    }
    let mut a = vec![0f32; r * n_in];
    for k in 0..r {
        for j in 0..n_in {
            a[k * n_in + j] = at[(j, k)] as f32;
        }
    }
    if a.iter().chain(&b).any(|x| !x.is_finite()) {
        return Err(CalibError::Invalid(format!("{name}: the correction is not finite")));
    }
    let energy_before: f64 = s.iter().map(|x| x * x).sum();
    let energy_after: f64 = s[r..].iter().map(|x| x * x).sum();
    Ok(LowRank { rank: r, n_out, a, b, singular_values: s, energy_before, energy_after })
}

impl LowRank {
    /// Rescale each component so that its column of `B` and its row of `A` have the same norm
    /// (`B A` is unchanged). The whitened factors are lopsided (`B` carries the singular values,
    /// `A` the inverse of the activations' scale); balanced ones keep their precision in f16.
    pub fn balance(&mut self, n_in: usize) {
        let r = self.rank;
        for k in 0..r {
            let nb = (0..self.n_out).map(|i| (self.b[i * r + k] as f64).powi(2)).sum::<f64>().sqrt();
            let na = self.a[k * n_in..(k + 1) * n_in].iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            if nb <= 0.0 || na <= 0.0 || !nb.is_finite() || !na.is_finite() {
                continue;
            }
            let c = (nb / na).sqrt();
            for i in 0..self.n_out {
                self.b[i * r + k] = (self.b[i * r + k] as f64 / c) as f32;
            }
            for x in &mut self.a[k * n_in..(k + 1) * n_in] {
                *x = (*x as f64 * c) as f32;
            }
        }
    }

    /// Keep the first `rank` components (of at most `self.rank`).
    pub fn truncate(&mut self, n_in: usize, rank: usize) {
        let r = self.rank;
        let k = rank.min(r);
        self.a.truncate(k * n_in);
        self.b = (0..self.n_out).flat_map(|i| self.b[i * r..i * r + k].to_vec()).collect();
        self.rank = k;
        self.energy_after = self.singular_values[k..].iter().map(|x| x * x).sum();
    }

    /// `B A` as a full `n_out × n_in` matrix (for applying or checking a correction).
    pub fn product(&self, n_in: usize) -> Vec<f32> {
        let n_out = self.n_out;
        let mut out = vec![0f32; n_out * n_in];
        for i in 0..n_out {
            for k in 0..self.rank {
                let bik = self.b[i * self.rank + k];
                for (o, &akj) in out[i * n_in..(i + 1) * n_in].iter_mut().zip(&self.a[k * n_in..(k + 1) * n_in]) {
                    *o += bik * akj;
                }
            }
        }
        out
    }
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

    /// Correlated inputs: a few strong directions, so whitening matters.
    fn inputs(n_tok: usize, n_in: usize, seed: u64) -> Vec<f32> {
        let mut r = rng(seed);
        let basis: Vec<f32> = (0..4 * n_in).map(|_| r()).collect();
        let mut x = vec![0f32; n_tok * n_in];
        for row in x.chunks_exact_mut(n_in) {
            let c: Vec<f32> = (0..4).map(|k| r() * (8.0 / (k + 1) as f32)).collect();
            for (j, v) in row.iter_mut().enumerate() {
                *v = 0.1 * r() + (0..4).map(|k| c[k] * basis[k * n_in + j]).sum::<f32>();
            }
        }
        x
    }

    fn output_error(e: &[f32], fix: &[f32], x: &[f32], n_in: usize) -> f64 {
        let d: Vec<f32> = e.iter().zip(fix).map(|(a, b)| a - b).collect();
        let n_out = e.len() / n_in;
        linalg::matmul_xwt(x, n_in, &d, n_out).iter().map(|v| (*v as f64).powi(2)).sum()
    }

    #[test]
    fn full_rank_reproduces_the_error() {
        let (n_out, n_in) = (7, 5);
        let mut r = rng(3);
        let e: Vec<f32> = (0..n_out * n_in).map(|_| r()).collect();
        let x = inputs(200, n_in, 9);
        let mut h = vec![0f32; n_in * n_in];
        linalg::add_xtx(&mut h, &x, n_in);
        for hh in [None, Some(&h[..])] {
            let c = correction("t", &e, n_in, hh, 99, 1e-9).unwrap();
            assert_eq!(c.rank, 5);
            for (a, b) in c.product(n_in).iter().zip(&e) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
            assert!(c.energy_after < 1e-9 * c.energy_before);
        }
    }

    /// On the calibration inputs, the whitened correction leaves less output error than the plain
    /// SVD of the same rank, and the energy it reports left is that output error.
    #[test]
    fn whitening_beats_plain_svd_on_real_outputs() {
        let (n_out, n_in, n_tok, rank) = (24, 32, 400, 4);
        let mut r = rng(5);
        let e: Vec<f32> = (0..n_out * n_in).map(|_| 0.05 * r()).collect();
        let x = inputs(n_tok, n_in, 11);
        let mut h = vec![0f32; n_in * n_in];
        linalg::add_xtx(&mut h, &x, n_in);
        let w = correction("t", &e, n_in, Some(&h), rank, 1e-9).unwrap();
        let p = correction("t", &e, n_in, None, rank, 0.0).unwrap();
        let (ew, ep, e0) = (
            output_error(&e, &w.product(n_in), &x, n_in),
            output_error(&e, &p.product(n_in), &x, n_in),
            output_error(&e, &vec![0.0; e.len()], &x, n_in),
        );
        assert!(ew < ep, "whitened {ew} vs plain {ep}");
        assert!(ew < 0.5 * e0, "rank {rank} of strongly correlated inputs removes most of {e0}: {ew}");
        assert!((w.energy_before - e0).abs() < 1e-3 * e0, "{} vs {e0}", w.energy_before);
        assert!((w.energy_after - ew).abs() < 1e-3 * e0, "{} vs {ew}", w.energy_after);
        assert!(w.singular_values.windows(2).all(|s| s[0] >= s[1]));
    }

    #[test]
    fn balance_and_truncate_keep_the_product() {
        let (n_out, n_in) = (9, 6);
        let mut r = rng(7);
        let e: Vec<f32> = (0..n_out * n_in).map(|_| r()).collect();
        let x = inputs(100, n_in, 2);
        let mut h = vec![0f32; n_in * n_in];
        linalg::add_xtx(&mut h, &x, n_in);
        let mut c = correction("t", &e, n_in, Some(&h), 4, 1e-6).unwrap();
        let before = c.product(n_in);
        c.balance(n_in);
        for (a, b) in c.product(n_in).iter().zip(&before) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
        let two = correction("t", &e, n_in, Some(&h), 2, 1e-6).unwrap();
        c.truncate(n_in, 2);
        assert_eq!((c.rank, c.a.len(), c.b.len()), (2, 2 * n_in, 2 * n_out));
        assert!((c.energy_after - two.energy_after).abs() < 1e-9 * c.energy_before);
        for (a, b) in c.product(n_in).iter().zip(&two.product(n_in)) {
            assert!((a - b).abs() < 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn bad_sizes_are_named() {
        let e = correction("blk.0.attn_q.weight", &[0.0; 10], 3, None, 1, 0.0).unwrap_err().to_string();
        assert!(e.contains("blk.0.attn_q.weight"), "{e}");
        let e = correction("t", &[0.0; 9], 3, Some(&[0.0; 4]), 1, 0.0).unwrap_err().to_string();
        assert!(e.contains("second moment"), "{e}");
    }
}
