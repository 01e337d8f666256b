//! Central finite differences and the relative error used to check analytic gradients (in f64).

/// Central differences `(f(x + h eᵢ) − f(x − h eᵢ)) / 2h` for `i in 0..n`, where `f(i, δ)` is the
/// scalar function evaluated with coordinate `i` moved by `δ` (and put back afterwards).
pub fn central_differences(n: usize, h: f64, mut f: impl FnMut(usize, f64) -> f64) -> Vec<f64> {
    (0..n).map(|i| (f(i, h) - f(i, -h)) / (2.0 * h)).collect()
}

/// [`central_differences`] of `f` at the point `x` (a copy of `x` is moved one coordinate at a time).
pub fn numeric_gradient(x: &[f64], h: f64, mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut p = x.to_vec();
    central_differences(x.len(), h, |i, d| {
        let keep = p[i];
        p[i] = keep + d;
        let v = f(&p);
        p[i] = keep;
        v
    })
}

/// Norm-wise relative error `‖a − b‖ / max(‖a‖, ‖b‖)` (0 when both are 0).
pub fn relative_error(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "gradients of different lengths");
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    let den = na.max(nb);
    if den == 0.0 {
        0.0
    } else {
        diff / den
    }
}

/// `Σ aᵢ bᵢ`: the scalar `⟨dy, f(x)⟩` whose gradient is the vector-Jacobian product `dyᵀ J`.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
