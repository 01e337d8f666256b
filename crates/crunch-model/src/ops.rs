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

/// ggml's tanh-approximated GELU in f32: `0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x²)))`.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044715;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF_A * x * x)).tanh())
}

/// GELU of every f16 value, rounded to f16 (ggml's `ggml_table_gelu_f16`).
fn gelu_table() -> &'static [half::f16] {
    static TABLE: std::sync::OnceLock<Vec<half::f16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX).map(|b| half::f16::from_f32(gelu_tanh(half::f16::from_bits(b).to_f32()))).collect()
    })
}

/// GELU as ggml's CPU backend computes it (`GGML_GELU_FP16`): 0 at or below -10, the identity
/// at or above 10, in between the f16 table looked up at `x` rounded to f16.
#[inline]
pub fn gelu_ggml(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        gelu_table()[half::f16::from_f32(x).to_bits() as usize].to_f32()
    }
}

/// `gelu(gate) * up`, element-wise, into `gate` (ggml's `geglu` on the CPU, [`gelu_ggml`]).
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    let table = gelu_table();
    gate.par_chunks_mut(4096).zip(up.par_chunks(4096)).for_each(|(g, u)| {
        for (g, &u) in g.iter_mut().zip(u) {
            let x = *g;
            *g = if x <= -10.0 {
                0.0
            } else if x >= 10.0 {
                x * u
            } else {
                table[half::f16::from_f32(x).to_bits() as usize].to_f32() * u
            };
        }
    });
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

    /// GELU from its definition with the error function, in f64.
    fn gelu_erf(x: f64) -> f64 {
        // Abramowitz-Stegun 7.1.26 is too coarse here; integrate erf's series instead.
        let z = x / std::f64::consts::SQRT_2;
        let mut term = z;
        let mut sum = z;
        for n in 1..200 {
            term *= -z * z / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        0.5 * x * (1.0 + 2.0 / std::f64::consts::PI.sqrt() * sum)
    }

    #[test]
    fn gelu_follows_its_definition_and_ggml_rounding() {
        for i in -400..=400 {
            let x = i as f32 * 0.02;
            // the tanh form is within 1e-3 of the exact GELU
            assert!((gelu_tanh(x) as f64 - gelu_erf(x as f64)).abs() < 1e-3, "{x}");
            // ggml's table: the tanh form at x rounded to f16, rounded to f16
            let want = half::f16::from_f32(gelu_tanh(half::f16::from_f32(x).to_f32())).to_f32();
            assert_eq!(gelu_ggml(x), want, "{x}");
            assert!((gelu_ggml(x) - gelu_tanh(x)).abs() <= 2e-3 * (1.0 + x.abs()), "{x}");
        }
        assert_eq!((gelu_ggml(-10.0), gelu_ggml(-50.0), gelu_ggml(10.0), gelu_ggml(37.5)), (0.0, 0.0, 10.0, 37.5));
        let mut g = vec![-20.0, -1.0, 0.0, 0.5, 3.0, 12.0];
        let u = vec![2.0, 2.0, 2.0, 2.0, 2.0, 0.5];
        geglu(&mut g, &u);
        let want: Vec<f32> =
            [-20.0f32, -1.0, 0.0, 0.5, 3.0, 12.0].iter().zip(&u).map(|(x, u)| gelu_ggml(*x) * u).collect();
        assert_eq!(g, want);
    }
}
