//! Dense row-major products in any [`Float`] (the LoRA factors, the f64 reference weights).

use rayon::prelude::*;

use crate::float::Float;

#[inline]
pub(crate) fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut s = T::ZERO;
    for (&x, &y) in a.iter().zip(b) {
        s += x * y;
    }
    s
}

#[inline]
pub(crate) fn axpy<T: Float>(alpha: T, x: &[T], y: &mut [T]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += alpha * v;
    }
}

/// `y = x Wᵀ`: `x` is `n × k`, `w` is `m × k`; `y` is `n × m`.
pub fn matmul_nt<T: Float>(x: &[T], n: usize, w: &[T], m: usize) -> Vec<T> {
    let mut y = vec![T::ZERO; n * m];
    if n == 0 || m == 0 {
        return y;
    }
    let k = x.len() / n;
    debug_assert_eq!(w.len(), m * k);
    if k == 0 {
        return y;
    }
    y.par_chunks_mut(m).zip(x.par_chunks(k)).for_each(|(yr, xr)| {
        for (o, wr) in yr.iter_mut().zip(w.chunks_exact(k)) {
            *o = dot(xr, wr);
        }
    });
    y
}

/// `dx = dy W`: `dy` is `n × m`, `w` is `m × k`; `dx` is `n × k`.
pub fn matmul_nn<T: Float>(dy: &[T], n: usize, w: &[T], m: usize, k: usize) -> Vec<T> {
    let mut dx = vec![T::ZERO; n * k];
    if n == 0 || m == 0 || k == 0 {
        return dx;
    }
    debug_assert_eq!(w.len(), m * k);
    dx.par_chunks_mut(k).zip(dy.par_chunks(m)).for_each(|(xr, yr)| {
        for (&g, wr) in yr.iter().zip(w.chunks_exact(k)) {
            axpy(g, wr, xr);
        }
    });
    dx
}

/// `dW = dyᵀ x`: `dy` is `n × m`, `x` is `n × k`; `dW` is `m × k`.
pub fn matmul_tn<T: Float>(dy: &[T], x: &[T], n: usize, m: usize, k: usize) -> Vec<T> {
    let mut dw = vec![T::ZERO; m * k];
    if n == 0 || m == 0 || k == 0 {
        return dw;
    }
    dw.par_chunks_mut(k).enumerate().for_each(|(j, wr)| {
        for (yr, xr) in dy.chunks_exact(m).zip(x.chunks_exact(k)) {
            axpy(yr[j], xr, wr);
        }
    });
    dw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_agree_with_loops() {
        let (n, m, k) = (3, 4, 5);
        let x: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let w: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.71).cos()).collect();
        let dy: Vec<f64> = (0..n * m).map(|i| (i as f64 * 1.3).sin()).collect();
        let y = matmul_nt(&x, n, &w, m);
        let dx = matmul_nn(&dy, n, &w, m, k);
        let dw = matmul_tn(&dy, &x, n, m, k);
        for t in 0..n {
            for j in 0..m {
                let want: f64 = (0..k).map(|i| x[t * k + i] * w[j * k + i]).sum();
                assert!((y[t * m + j] - want).abs() < 1e-12);
            }
            for i in 0..k {
                let want: f64 = (0..m).map(|j| dy[t * m + j] * w[j * k + i]).sum();
                assert!((dx[t * k + i] - want).abs() < 1e-12);
            }
        }
        for j in 0..m {
            for i in 0..k {
                let want: f64 = (0..n).map(|t| dy[t * m + j] * x[t * k + i]).sum();
                assert!((dw[j * k + i] - want).abs() < 1e-12);
            }
        }
    }
}
