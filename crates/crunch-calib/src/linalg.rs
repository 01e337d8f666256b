//! The dense linear algebra GPTQ needs, on faer: `XᵀX` accumulation, the upper Cholesky factor of
//! the dampened inverse Hessian (retrying with more dampening when a factorization fails), and
//! the blocked `W -= Uᵀ E` update.

use crate::error::{CalibError, Result};
use faer::linalg::solvers::DenseSolveCore;
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};

fn par() -> Par {
    Par::rayon(0)
}

/// `h += xᵀ x` for `x` with rows of `n` (row-major), `h` `n × n` row-major.
pub fn add_xtx(h: &mut [f32], x: &[f32], n: usize) {
    let rows = x.len() / n;
    if rows == 0 {
        return;
    }
    let xm = MatRef::from_row_major_slice(x, rows, n);
    let hm = MatMut::from_row_major_slice_mut(h, n, n);
    faer::linalg::matmul::matmul(hm, Accum::Add, xm.transpose(), xm, 1.0f32, par());
}

/// `w[rows_from.., :] -= u[r0..r1, rows_from..]ᵀ · e` where `w` is `n × m` row-major, `u`
/// `n × n` row-major and `e` `(r1 - r0) × m` row-major.
pub fn lazy_update(w: &mut [f32], m: usize, u: &[f32], n: usize, r0: usize, r1: usize, e: &[f32]) {
    if r1 >= n {
        return;
    }
    let um = MatRef::from_row_major_slice(u, n, n);
    let block = um.submatrix(r0, r1, r1 - r0, n - r1);
    let em = MatRef::from_row_major_slice(e, r1 - r0, m);
    let wm = MatMut::from_row_major_slice_mut(&mut w[r1 * m..], n - r1, m);
    faer::linalg::matmul::matmul(wm, Accum::Add, block.transpose(), em, -1.0f32, par());
}

/// The upper triangular `U` with `Uᵀ U = (H + λI)⁻¹`, `λ = damp · mean(diag H)`, row-major.
/// When a Cholesky factorization fails, `damp` is multiplied by 10 (up to `tries` times) and the
/// retry is logged. Returns `U` and the dampening used.
///
/// # Errors
/// [`CalibError::NotPositiveDefinite`] when every try fails.
pub fn inverse_cholesky_upper(h: &[f32], n: usize, damp: f32, tries: usize, name: &str) -> Result<(Vec<f32>, f32)> {
    let mean = (0..n).map(|i| h[i * n + i] as f64).sum::<f64>() / n.max(1) as f64;
    let mut d = damp;
    for attempt in 0..tries.max(1) {
        let lambda = (d as f64 * mean).max(1e-8) as f32;
        let hm = Mat::from_fn(n, n, |i, j| h[i * n + j] + if i == j { lambda } else { 0.0 });
        if let Ok(llt) = hm.llt(Side::Lower) {
            let hinv = llt.inverse();
            if let Ok(l2) = hinv.llt(Side::Lower) {
                let l = l2.L();
                let mut u = vec![0f32; n * n];
                for i in 0..n {
                    for j in i..n {
                        u[i * n + j] = l[(j, i)];
                    }
                }
                if u.iter().all(|v| v.is_finite()) {
                    return Ok((u, d));
                }
            }
        }
        tracing::warn!(
            tensor = name,
            damp = d,
            "Cholesky of the Hessian failed (try {}); retrying with dampening {}",
            attempt + 1,
            d * 10.0
        );
        d *= 10.0;
    }
    Err(CalibError::NotPositiveDefinite { tensor: name.to_string(), damp: d / 10.0, tries })
}

/// `y = x Wᵀ`: `x` has rows of `n_in`, `w` is `n_out × n_in` row-major; `y` rows of `n_out`.
pub fn matmul_xwt(x: &[f32], n_in: usize, w: &[f32], n_out: usize) -> Vec<f32> {
    let rows = x.len() / n_in.max(1);
    let mut y = vec![0f32; rows * n_out];
    if rows == 0 || n_out == 0 {
        return y;
    }
    let xm = MatRef::from_row_major_slice(x, rows, n_in);
    let wm = MatRef::from_row_major_slice(w, n_out, n_in);
    let ym = MatMut::from_row_major_slice_mut(&mut y, rows, n_out);
    faer::linalg::matmul::matmul(ym, Accum::Replace, xm, wm.transpose(), 1.0f32, par());
    y
}
