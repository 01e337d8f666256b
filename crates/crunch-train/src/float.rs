//! The float type the ops are generic over: `f32` for training, `f64` to check gradients.
//!
//! Besides scalar arithmetic, [`Float`] carries the two bulk kernels the ops are built on, so that
//! one generic implementation of each op serves both types: a strided matrix product
//! ([`Float::gemm`]) and a scaled soft-max ([`Float::softmax`]). The `f32` instance runs
//! crunch-quant's blocked SIMD GEMM and vectorized soft-max (the kernels crunch-model's inference
//! uses, with run-time CPU dispatch); the `f64` instance runs the plain loops of [`gemm_reference`]
//! and [`softmax_reference`], which the finite-difference checks then exercise, and against which
//! tests compare the `f32` kernels.

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

pub use crunch_quant::tiled::Strides;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// `f32` or `f64` (sealed). The `f32` instance computes `exp` with crunch's vectorizable
/// [`crunch_quant::vmath::exp_scalar`], as crunch-model's SiLU and soft-max do, so the `f32`
/// forward mirrors the inference forward; the `f64` instance uses the standard library.
pub trait Float:
    sealed::Sealed
    + Copy
    + Send
    + Sync
    + Debug
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + Sum
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn from_f64(v: f64) -> Self;
    fn from_f32(v: f32) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn max(self, other: Self) -> Self;

    /// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`, for an `m × k` `lhs` and a
    /// `k × n` `rhs`; all three are strided views (element `(i, j)` at `i * rs + j * cs`) of their
    /// slices. Single-threaded: callers split the work.
    ///
    /// # Panics
    /// When a view reaches outside its slice.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        accumulate: bool,
        mnk: (usize, usize, usize),
        dst: &mut [Self],
        ds: Strides,
        lhs: &[Self],
        ls: Strides,
        rhs: &[Self],
        rs: Strides,
    );

    /// Soft-max of `scale · x` in place: `e^(scale·x − max)` normalized to sum 1.
    fn softmax(x: &mut [Self], scale: Self);

    /// The largest element (−∞ for an empty slice; NaNs are skipped).
    fn max_of(x: &[Self]) -> Self;

    /// `x = e^(x − shift)` in place, returning the sum of the results (the loss heads'
    /// log-sum-exp and soft-max over a vocabulary row in one pass).
    fn exp_sum(x: &mut [Self], shift: Self) -> Self;

    /// `x = e^x` in place, element for element [`Float::exp`] (the same bits), as a bulk kernel.
    fn exp_slice(x: &mut [Self]);
}

/// The plain triple loop of [`Float::gemm`] (the `f64` kernel, and the reference the `f32` kernel
/// is tested against).
#[allow(clippy::too_many_arguments)]
pub fn gemm_reference<T: Float>(
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    ds: Strides,
    lhs: &[T],
    ls: Strides,
    rhs: &[T],
    rs: Strides,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = T::ZERO;
            for p in 0..k {
                s += lhs[i * ls.rs + p * ls.cs] * rhs[p * rs.rs + j * rs.cs];
            }
            let o = &mut dst[i * ds.rs + j * ds.cs];
            *o = if accumulate { *o + s } else { s };
        }
    }
}

/// The plain loops of [`Float::max_of`] (the `f64` kernel and the `f32` reference).
pub fn max_reference<T: Float>(x: &[T]) -> T {
    x.iter().fold(T::NEG_INFINITY, |m, &v| m.max(v))
}

/// The plain loop of [`Float::exp_sum`] (the `f64` kernel and the `f32` reference): the sum taken
/// in order.
pub fn exp_sum_reference<T: Float>(x: &mut [T], shift: T) -> T {
    let mut sum = T::ZERO;
    for v in x.iter_mut() {
        *v = (*v - shift).exp();
        sum += *v;
    }
    sum
}

/// The plain loops of [`Float::softmax`] (the `f64` kernel, and the `f32` reference): the
/// largest `scale · x` subtracted before `exp`, the sum taken in order.
pub fn softmax_reference<T: Float>(x: &mut [T], scale: T) {
    let max = x.iter().fold(T::NEG_INFINITY, |m, &v| m.max(v * scale));
    let mut sum = T::ZERO;
    for v in x.iter_mut() {
        *v = (*v * scale - max).exp();
        sum += *v;
    }
    let inv = T::ONE / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    #[inline]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline]
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn exp(self) -> Self {
        crunch_quant::vmath::exp_scalar(self)
    }
    #[inline]
    fn ln(self) -> Self {
        f32::ln(self)
    }
    #[inline]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline]
    fn max(self, other: Self) -> Self {
        f32::max(self, other)
    }
    fn gemm(
        accumulate: bool,
        (m, n, k): (usize, usize, usize),
        dst: &mut [Self],
        ds: Strides,
        lhs: &[Self],
        ls: Strides,
        rhs: &[Self],
        rs: Strides,
    ) {
        if accumulate {
            crunch_quant::tiled::gemm_f32_strided_acc(m, n, k, dst, ds, lhs, ls, rhs, rs);
        } else {
            crunch_quant::tiled::gemm_f32_strided(m, n, k, dst, ds, lhs, ls, rhs, rs);
        }
    }
    fn softmax(x: &mut [Self], scale: Self) {
        crunch_quant::vmath::softmax(x, scale);
    }
    fn max_of(x: &[Self]) -> Self {
        crunch_quant::vmath::max_scaled_of(x, 1.0)
    }
    fn exp_sum(x: &mut [Self], shift: Self) -> Self {
        // `x · 1.0 − shift` is `x − shift`, bit for bit.
        crunch_quant::vmath::exp_sum(x, 1.0, shift)
    }
    fn exp_slice(x: &mut [Self]) {
        crunch_quant::vmath::exp_inplace(x);
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    #[inline]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline]
    fn from_f32(v: f32) -> Self {
        v as f64
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline]
    fn ln(self) -> Self {
        f64::ln(self)
    }
    #[inline]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline]
    fn max(self, other: Self) -> Self {
        f64::max(self, other)
    }
    fn gemm(
        accumulate: bool,
        mnk: (usize, usize, usize),
        dst: &mut [Self],
        ds: Strides,
        lhs: &[Self],
        ls: Strides,
        rhs: &[Self],
        rs: Strides,
    ) {
        gemm_reference(accumulate, mnk, dst, ds, lhs, ls, rhs, rs);
    }
    fn softmax(x: &mut [Self], scale: Self) {
        softmax_reference(x, scale);
    }
    fn max_of(x: &[Self]) -> Self {
        max_reference(x)
    }
    fn exp_sum(x: &mut [Self], shift: Self) -> Self {
        exp_sum_reference(x, shift)
    }
    fn exp_slice(x: &mut [Self]) {
        x.iter_mut().for_each(|v| *v = v.exp());
    }
}

/// Convert a slice element-wise.
pub fn cast<A: Float, B: Float>(v: &[A]) -> Vec<B> {
    v.iter().map(|&x| B::from_f64(x.to_f64())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(rng: &mut crunch_testkit::Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.normal()).collect()
    }

    /// The `f32` GEMM (crunch-quant's SIMD kernel) equals the reference loops (in f64) on
    /// transposed and padded views, overwriting and accumulating (the padding untouched): within
    /// `1e-6 · (k + 1)` absolute, f32 rounding of sums of `k` products of standard normals.
    #[test]
    fn f32_gemm_is_the_reference() {
        let mut rng = crunch_testkit::Rng::new(31);
        for (m, n, k) in [(1, 1, 1), (3, 5, 7), (64, 48, 300), (17, 130, 33), (5, 4, 0)] {
            // lhs stored transposed (k × m), rhs with a padded row stride, dst inside a wider buffer
            let lhs = rand(&mut rng, k * m);
            let rhs = rand(&mut rng, k * (n + 3));
            let start = rand(&mut rng, m * (n + 2));
            let (ds, ls, rs) = (Strides { rs: n + 2, cs: 1 }, Strides { rs: 1, cs: m }, Strides { rs: n + 3, cs: 1 });
            for accumulate in [false, true] {
                let mut got = start.clone();
                f32::gemm(accumulate, (m, n, k), &mut got, ds, &lhs, ls, &rhs, rs);
                let mut want: Vec<f64> = cast(&start);
                gemm_reference(accumulate, (m, n, k), &mut want, ds, &cast(&lhs), ls, &cast(&rhs), rs);
                let tol = 1e-6 * (k as f64 + 1.0);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!((*a as f64 - b).abs() <= tol, "({m}, {n}, {k}) acc {accumulate} [{i}]: {a} vs {b}");
                }
            }
        }
    }

    /// The `f32` row kernels of the loss heads and SwiGLU (crunch-quant's vectorized ones) against
    /// the reference loops: the maximum and every `exp` bit-identical (the same [`Float::exp`] per
    /// element), the sum (f32, over 16 lanes) within the bound of recursive summation of positive
    /// terms, `(len / 16 + 16) · 2⁻²⁴` relative, of the exact sum of the same values (1.8e-4 at
    /// 49152 values, a vocabulary row; measured there: 4e-6).
    #[test]
    fn f32_row_kernels_are_the_reference() {
        let mut rng = crunch_testkit::Rng::new(33);
        for len in [0, 1, 7, 16, 100, 257, 49152] {
            let x: Vec<f32> = rand(&mut rng, len).iter().map(|v| 4.0 * v).collect();
            let m = f32::max_of(&x);
            assert_eq!(m.to_bits(), max_reference(&x).to_bits(), "len {len}");
            let (mut a, mut b) = (x.clone(), x.clone());
            let sa = f32::exp_sum(&mut a, m);
            exp_sum_reference(&mut b, m);
            assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "len {len}");
            let exact: f64 = b.iter().map(|&v| v as f64).sum();
            let bound = (len / 16 + 16) as f64 * f64::from(f32::EPSILON) / 2.0;
            assert!((sa as f64 - exact).abs() <= bound * exact, "len {len}: {sa} vs {exact}");
            let mut e = x.clone();
            f32::exp_slice(&mut e);
            assert!(e.iter().zip(&x).all(|(p, &v)| p.to_bits() == Float::exp(v).to_bits()), "len {len}");
        }
    }

    /// The `f32` soft-max (crunch-quant's vectorized one) equals the reference loops within 1e-6.
    #[test]
    fn f32_softmax_is_the_reference() {
        let mut rng = crunch_testkit::Rng::new(32);
        for len in [1, 7, 16, 100, 257] {
            let x: Vec<f32> = rand(&mut rng, len).iter().map(|v| 5.0 * v).collect();
            let (mut a, mut b) = (x.clone(), x);
            f32::softmax(&mut a, 0.3);
            softmax_reference(&mut b, 0.3);
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() <= 1e-6, "len {len}: {p} vs {q}");
            }
        }
    }
}
