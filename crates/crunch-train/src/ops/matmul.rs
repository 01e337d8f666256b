//! Dense row-major products in any [`Float`] (the LoRA factors, the f64 reference weights): each
//! splits its output into blocks of rows run in parallel, and each block is one [`Float::gemm`]
//! (crunch-quant's blocked SIMD GEMM in f32, plain loops in f64).

use rayon::prelude::*;

use crate::float::{Float, Strides};

/// Multiply-adds below which a product runs as one task (splitting it costs more than it saves:
/// each task packs its operands for the GEMM).
const MIN_TASK_WORK: usize = 1 << 18;

/// Rows per parallel task when `rows` output rows cost `work_per_row` multiply-adds each: up to
/// four tasks per thread (load balance on a shared machine), none smaller than [`MIN_TASK_WORK`].
fn rows_per_task(rows: usize, work_per_row: usize) -> usize {
    let tasks = (rows.saturating_mul(work_per_row) / MIN_TASK_WORK).clamp(1, 4 * rayon::current_num_threads());
    rows.div_ceil(tasks).max(1)
}

/// `y = x Wᵀ`: `x` is `n × k`, `w` is `m × k`; `y` is `n × m`. Blocks of rows of `x` in
/// parallel, each one [`Float::gemm`].
pub fn matmul_nt<T: Float>(x: &[T], n: usize, w: &[T], m: usize) -> Vec<T> {
    let mut y = vec![T::ZERO; n * m];
    nt_into(false, &mut y, x, n, w, m);
    y
}

/// `y += x Wᵀ` (shapes as [`matmul_nt`]).
pub fn matmul_nt_acc<T: Float>(y: &mut [T], x: &[T], n: usize, w: &[T], m: usize) {
    nt_into(true, y, x, n, w, m);
}

fn nt_into<T: Float>(accumulate: bool, y: &mut [T], x: &[T], n: usize, w: &[T], m: usize) {
    assert_eq!(y.len(), n * m, "y of {} for {n} × {m}", y.len());
    if n == 0 || m == 0 {
        return;
    }
    let k = x.len() / n;
    assert_eq!(x.len(), n * k, "x of {} for {n} rows", x.len());
    assert_eq!(w.len(), m * k, "weight of {} for {m} × {k}", w.len());
    if k == 0 {
        return;
    }
    let rb = rows_per_task(n, m * k);
    y.par_chunks_mut(rb * m).zip(x.par_chunks(rb * k)).for_each(|(yb, xb)| {
        let rows = xb.len() / k;
        let ws = Strides { rs: 1, cs: k };
        T::gemm(accumulate, (rows, m, k), yb, Strides { rs: m, cs: 1 }, xb, Strides { rs: k, cs: 1 }, w, ws);
    });
}

/// `dx = dy W`: `dy` is `n × m`, `w` is `m × k`; `dx` is `n × k`. Blocks of rows of `dy` in
/// parallel, each one [`Float::gemm`].
pub fn matmul_nn<T: Float>(dy: &[T], n: usize, w: &[T], m: usize, k: usize) -> Vec<T> {
    let mut dx = vec![T::ZERO; n * k];
    nn_into(false, &mut dx, dy, n, w, m, k);
    dx
}

/// `dx += dy W` (shapes as [`matmul_nn`]).
pub fn matmul_nn_acc<T: Float>(dx: &mut [T], dy: &[T], n: usize, w: &[T], m: usize, k: usize) {
    nn_into(true, dx, dy, n, w, m, k);
}

fn nn_into<T: Float>(accumulate: bool, dx: &mut [T], dy: &[T], n: usize, w: &[T], m: usize, k: usize) {
    assert_eq!(dx.len(), n * k, "dx of {} for {n} × {k}", dx.len());
    if n == 0 || m == 0 || k == 0 {
        return;
    }
    assert_eq!(w.len(), m * k, "weight of {} for {m} × {k}", w.len());
    assert_eq!(dy.len(), n * m, "dy of {} for {n} × {m}", dy.len());
    let rb = rows_per_task(n, m * k);
    dx.par_chunks_mut(rb * k).zip(dy.par_chunks(rb * m)).for_each(|(xb, yb)| {
        let rows = yb.len() / m;
        let ws = Strides { rs: k, cs: 1 };
        T::gemm(accumulate, (rows, k, m), xb, Strides { rs: k, cs: 1 }, yb, Strides { rs: m, cs: 1 }, w, ws);
    });
}

/// `dW = dyᵀ x`: `dy` is `n × m`, `x` is `n × k`; `dW` is `m × k`. Split over blocks of rows of
/// `dW` (columns of `dy`) when it has more rows than columns, else over blocks of its columns
/// (the LoRA gradient `dA` is `rank × n_in`: a few rows, many columns), each block one
/// [`Float::gemm`] over all `n` rows.
pub fn matmul_tn<T: Float>(dy: &[T], x: &[T], n: usize, m: usize, k: usize) -> Vec<T> {
    let mut dw = vec![T::ZERO; m * k];
    if n == 0 || m == 0 || k == 0 {
        return dw;
    }
    assert_eq!(dy.len(), n * m, "dy of {} for {n} × {m}", dy.len());
    assert_eq!(x.len(), n * k, "x of {} for {n} × {k}", x.len());
    // dyᵀ from column j0 of dy on: element (i, t) of the view is dy[t * m + j0 + i].
    let (ys, xs) = (Strides { rs: 1, cs: m }, Strides { rs: k, cs: 1 });
    if m >= k {
        let rb = rows_per_task(m, n * k);
        dw.par_chunks_mut(rb * k).enumerate().for_each(|(b, wb)| {
            let (j0, rows) = (b * rb, wb.len() / k);
            T::gemm(false, (rows, k, n), wb, Strides { rs: k, cs: 1 }, &dy[j0..], ys, x, xs);
        });
        return dw;
    }
    let cb = rows_per_task(k, n * m);
    let blocks: Vec<Vec<T>> = (0..k.div_ceil(cb))
        .into_par_iter()
        .map(|b| {
            let (c0, cols) = (b * cb, cb.min(k - b * cb));
            let mut part = vec![T::ZERO; m * cols];
            T::gemm(false, (m, cols, n), &mut part, Strides { rs: cols, cs: 1 }, dy, ys, &x[c0..], xs);
            part
        })
        .collect();
    for (b, part) in blocks.iter().enumerate() {
        let (c0, cols) = (b * cb, part.len() / m);
        for (wr, pr) in dw.chunks_exact_mut(k).zip(part.chunks_exact(cols)) {
            wr[c0..c0 + cols].copy_from_slice(pr);
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::float::cast;

    /// In f64 (the reference GEMM) the products equal their defining sums.
    #[test]
    fn products_agree_with_loops() {
        let (n, m, k) = (3, 4, 5);
        let x: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let w: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.71).cos()).collect();
        let dy: Vec<f64> = (0..n * m).map(|i| (i as f64 * 1.3).sin()).collect();
        let y = matmul_nt(&x, n, &w, m);
        let dx = matmul_nn(&dy, n, &w, m, k);
        let dw = matmul_tn(&dy, &x, n, m, k);
        // the accumulating forms add to what is there
        let mut y2 = vec![1.0; n * m];
        matmul_nt_acc(&mut y2, &x, n, &w, m);
        let mut dx2 = vec![1.0; n * k];
        matmul_nn_acc(&mut dx2, &dy, n, &w, m, k);
        assert!(y2.iter().zip(&y).all(|(a, b)| (a - 1.0 - b).abs() < 1e-12));
        assert!(dx2.iter().zip(&dx).all(|(a, b)| (a - 1.0 - b).abs() < 1e-12));
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

    /// In f32 (crunch-quant's GEMM, split into parallel blocks) the products equal the f64 ones
    /// within f32 rounding, on LoRA-like shapes large enough to be split.
    #[test]
    fn f32_products_match_f64() {
        let mut rng = crunch_testkit::Rng::new(41);
        for (n, m, k) in [(7, 3, 5), (256, 16, 576), (200, 1536, 16), (64, 40, 300), (300, 1000, 40)] {
            let x: Vec<f32> = (0..n * k).map(|_| rng.normal()).collect();
            let w: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
            let dy: Vec<f32> = (0..n * m).map(|_| rng.normal()).collect();
            let (x64, w64, dy64) = (cast::<f32, f64>(&x), cast::<f32, f64>(&w), cast::<f32, f64>(&dy));
            let pairs = [
                (matmul_nt(&x, n, &w, m), matmul_nt(&x64, n, &w64, m), k),
                (matmul_nn(&dy, n, &w, m, k), matmul_nn(&dy64, n, &w64, m, k), m),
                (matmul_tn(&dy, &x, n, m, k), matmul_tn(&dy64, &x64, n, m, k), n),
            ];
            for (i, (got, want, depth)) in pairs.iter().enumerate() {
                let tol = 1e-6 * (*depth as f64 + 1.0);
                for (a, b) in got.iter().zip(want) {
                    assert!((*a as f64 - b).abs() <= tol, "product {i} ({n}, {m}, {k}): {a} vs {b}");
                }
            }
        }
    }
}
