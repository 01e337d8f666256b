//! Element-wise and row-wise operations of the Llama graph.

use rayon::prelude::*;

/// RMSNorm of each row of `x` (rows of `w.len()`), times `w`, as ggml computes it (the mean of
/// squares accumulated in f64).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let n = w.len();
    let mut out = vec![0f32; x.len()];
    if n == 0 {
        return out;
    }
    out.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(|(o, r)| {
        let sum: f64 = r.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let mean = (sum / n as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, &v), &g) in o.iter_mut().zip(r).zip(w) {
            *o = v * scale * g;
        }
    });
    out
}

/// ggml's SiLU: `x / (1 + e^-x)` (with crunch's vectorizable `exp`).
#[inline]
pub fn silu(x: f32) -> f32 {
    crunch_quant::vmath::silu_scalar(x)
}

/// `silu(gate) * up`, element-wise, into `gate` (vectorized, in parallel chunks).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    gate.par_chunks_mut(4096).zip(up.par_chunks(4096)).for_each(|(g, u)| crunch_quant::vmath::swiglu(g, u));
}

/// `x += y`, element-wise.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Add `bias` to every row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    if bias.is_empty() {
        return;
    }
    for row in x.chunks_exact_mut(bias.len()) {
        add_assign(row, bias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_rows() {
        let x = [3.0, 4.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        let y = rms_norm(&x, &[1.0, 1.0, 2.0, 1.0], 0.0);
        let s = (25.0f32 / 4.0).sqrt();
        assert!((y[0] - 3.0 / s).abs() < 1e-6 && (y[1] - 4.0 / s).abs() < 1e-6);
        assert_eq!(&y[4..], &[1.0, 1.0, 2.0, 1.0]);
        assert!((silu(0.0)).abs() < 1e-9 && (silu(10.0) - 10.0).abs() < 1e-3);
    }
}
