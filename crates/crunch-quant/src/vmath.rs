//! Vectorized element-wise math for the forward pass: `exp`, SiLU-gated products and soft-max.
//!
//! Key decision: one branch-free scalar definition per function (range reduction plus a degree-6
//! polynomial for `exp`, within 2 ulp of the correctly rounded value over the range the model
//! uses), compiled three times: plain (the reference), and inside `#[target_feature]` wrappers for
//! AVX2 and AVX-512, where the compiler vectorizes the same loop. The operations are written
//! without fused multiply-adds, so every variant gives the same bits; only the lane order of the
//! soft-max sum differs from the reference. libm's `expf` is a call per element and does not
//! vectorize; llama.cpp likewise uses a SIMD approximation (`ggml_v_expf`) for SiLU and soft-max.

/// `e^x` for one value: `x = k ln2 + r`, `|r| <= ln2 / 2`, `e^r` by a polynomial, `2^k` put into
/// the exponent bits. Inputs are clamped to `[-87.3, 88.37]` (results from about `1.2e-38` to
/// `2.6e38`); NaN stays NaN.
#[inline(always)]
pub fn exp_scalar(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that k · LN2_HI is exact for |k| < 2^9
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding it rounds to an integer held in the low mantissa bits
    const SHIFTER: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.37);
    let t = xc * LOG2E + SHIFTER;
    let k = t - SHIFTER;
    let r = xc - k * LN2_HI - k * LN2_LO;
    // minimax coefficients for (e^r - 1 - r) / r^2 on |r| <= ln2 / 2
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // k is in [-126, 128): shift it into the exponent field
    let ki = (t.to_bits() as i32).wrapping_sub(SHIFTER.to_bits() as i32);
    let out = f32::from_bits((y.to_bits() as i32).wrapping_add(ki << 23) as u32);
    if x.is_nan() {
        x
    } else {
        out
    }
}

/// SiLU `x / (1 + e^-x)` for one value (ggml's definition).
#[inline(always)]
pub fn silu_scalar(x: f32) -> f32 {
    x / (1.0 + exp_scalar(-x))
}

#[inline(always)]
fn exp_loop(x: &mut [f32]) {
    for v in x {
        *v = exp_scalar(*v);
    }
}

#[inline(always)]
fn swiglu_loop(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu_scalar(*g) * u;
    }
}

/// Lanes of the soft-max reductions (enough for one AVX-512 vector).
const LANES: usize = 16;

/// The largest `scale · x`.
#[inline(always)]
fn max_scaled(x: &[f32], scale: f32) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            let v = c[i] * scale;
            acc[i] = if v > acc[i] { v } else { acc[i] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for v in acc.into_iter().chain(chunks.remainder().iter().map(|&c| c * scale)) {
        m = if v > m { v } else { m };
    }
    m
}

/// `x = e^(scale · x − max)` in place; returns the sum.
#[inline(always)]
fn exp_sum_loop(x: &mut [f32], scale: f32, max: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp_scalar(c[i] * scale - max);
            acc[i] += c[i];
        }
    }
    let mut s = 0f32;
    for v in chunks.into_remainder() {
        *v = exp_scalar(*v * scale - max);
        s += *v;
    }
    acc.iter().sum::<f32>() + s
}

#[inline(always)]
fn scale_loop(x: &mut [f32], f: f32) {
    for v in x {
        *v *= f;
    }
}

#[inline(always)]
fn softmax_loop(x: &mut [f32], scale: f32) {
    if x.is_empty() {
        return;
    }
    let max = max_scaled(x, scale);
    let sum = exp_sum_loop(x, scale, max);
    scale_loop(x, 1.0 / sum);
}

/// Which vector width the CPU offers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static I: OnceLock<Isa> = OnceLock::new();
        *I.get_or_init(|| {
            if std::is_x86_feature_detected!("avx512f") {
                Isa::Avx512
            } else if std::is_x86_feature_detected!("avx2") {
                Isa::Avx2
            } else {
                Isa::Scalar
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Isa::Scalar
    }
}

/// Defines `pub fn $name($args)` that runs `$body` (an `#[inline(always)]` loop) compiled for the
/// widest vector unit the CPU has.
macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident ($($a:ident : $t:ty),*) -> $r:ty = $body:ident) => {
        $(#[$doc])*
        pub fn $name($($a: $t),*) -> $r {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn wide($($a: $t),*) -> $r {
                    $body($($a),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn narrow($($a: $t),*) -> $r {
                    $body($($a),*)
                }
                match isa() {
                    // SAFETY: the CPU has AVX-512F (checked by `isa`).
                    Isa::Avx512 => return unsafe { wide($($a),*) },
                    // SAFETY: the CPU has AVX2 (checked by `isa`).
                    Isa::Avx2 => return unsafe { narrow($($a),*) },
                    Isa::Scalar => {}
                }
            }
            $body($($a),*)
        }
    };
}

dispatch!(
    /// `x = e^x` element-wise ([`exp_scalar`]).
    exp_inplace(x: &mut [f32]) -> () = exp_loop
);
dispatch!(
    /// `gate = silu(gate) · up` element-wise (the SwiGLU of a Llama FFN); `up` as long as `gate`.
    swiglu(gate: &mut [f32], up: &[f32]) -> () = swiglu_loop
);
dispatch!(
    /// Soft-max of `scale · x` in place (`e^(scale·x − max)` normalized to sum 1), the sum taken in
    /// f32 over 16 lanes.
    softmax(x: &mut [f32], scale: f32) -> () = softmax_loop
);
dispatch!(
    /// The largest `scale · x` (−∞ for an empty slice; NaNs are skipped): the first pass of
    /// [`softmax`], for callers that need the maximum itself (a log-sum-exp).
    max_scaled_of(x: &[f32], scale: f32) -> f32 = max_scaled
);
dispatch!(
    /// `x = e^(scale · x − shift)` element-wise ([`exp_scalar`]), returning the sum of the results
    /// (in f32 over 16 lanes, the lane order fixed, so every dispatch gives the same bits): the
    /// second pass of [`softmax`], for callers that need the sum itself (a log-sum-exp, or a
    /// soft-max with its normalization folded into a later scale).
    exp_sum(x: &mut [f32], scale: f32, shift: f32) -> f32 = exp_sum_loop
);

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i32).wrapping_sub(b.to_bits() as i32).unsigned_abs()
    }

    #[test]
    fn exp_within_two_ulp_of_f64() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp() as f32;
            let got = exp_scalar(x);
            worst = worst.max(ulps(got, want));
            x += 0.000_97;
        }
        assert!(worst <= 2, "worst {worst} ulp");
        assert_eq!(exp_scalar(0.0), 1.0);
        assert!(exp_scalar(-1000.0) < 1.3e-38 && exp_scalar(-1000.0) >= 0.0);
        assert!(exp_scalar(1000.0) > 1e38);
        assert!(exp_scalar(f32::NAN).is_nan());
    }

    #[test]
    fn vector_paths_equal_scalar() {
        let xs: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) * 0.173).collect();
        let mut v = xs.clone();
        exp_inplace(&mut v);
        for (a, &x) in v.iter().zip(&xs) {
            assert_eq!(a.to_bits(), exp_scalar(x).to_bits());
        }
        let up: Vec<f32> = xs.iter().map(|x| x * 0.5 - 1.0).collect();
        let mut g = xs.clone();
        swiglu(&mut g, &up);
        for ((a, &x), &u) in g.iter().zip(&xs).zip(&up) {
            assert_eq!(a.to_bits(), (silu_scalar(x) * u).to_bits());
        }
    }

    /// The dispatched maximum and exp-sum (the CPU's widest vector unit) give the bits of their
    /// plain loops (the scalar reference), on lengths with and without a remainder of 16.
    #[test]
    fn max_and_exp_sum_equal_scalar() {
        for len in [0usize, 1, 15, 16, 17, 1000, 4099] {
            let xs: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1013) as f32 * 0.031 - 15.0).collect();
            for scale in [1.0f32, 0.125] {
                let m = max_scaled_of(&xs, scale);
                assert_eq!(m.to_bits(), max_scaled(&xs, scale).to_bits(), "len {len}");
                let want_m = xs.iter().map(|&x| x * scale).fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(m, want_m);
                let (mut a, mut b) = (xs.clone(), xs.clone());
                let sa = exp_sum(&mut a, scale, m);
                let sb = exp_sum_loop(&mut b, scale, m);
                assert_eq!(sa.to_bits(), sb.to_bits(), "len {len}");
                for ((p, q), &x) in a.iter().zip(&b).zip(&xs) {
                    assert_eq!(p.to_bits(), q.to_bits());
                    assert_eq!(p.to_bits(), exp_scalar(x * scale - m).to_bits());
                }
                let want: f64 = xs.iter().map(|&x| ((x * scale - m) as f64).exp()).sum();
                assert!((sa as f64 - want).abs() <= 1e-5 * want.max(1e-30), "len {len}: {sa} vs {want}");
            }
        }
    }

    #[test]
    fn softmax_matches_f64() {
        for scale in [0.125f32, 1.0, -0.5] {
            let xs: Vec<f32> = (0..77).map(|i| ((i * 37) % 23) as f32 * 0.9 - 7.0).collect();
            let mut v = xs.clone();
            softmax(&mut v, scale);
            let m = xs.iter().map(|&x| (x * scale) as f64).fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = xs.iter().map(|&x| ((x * scale) as f64 - m).exp()).sum();
            for (a, &x) in v.iter().zip(&xs) {
                let want = ((x * scale) as f64 - m).exp() / z;
                assert!((*a as f64 - want).abs() <= 1e-6 * want.max(1e-3), "{a} vs {want}");
            }
            assert!((v.iter().map(|&p| p as f64).sum::<f64>() - 1.0).abs() < 1e-5);
        }
        let mut empty: [f32; 0] = [];
        softmax(&mut empty, 1.0);
    }
}
