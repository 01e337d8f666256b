//! HQQ, half-quadratic quantization (Badri & Shaji, 2023): the zero point of each group chosen
//! without calibration data by minimising an `l_p` norm (`p < 1`) of the rounding error, which
//! lets a few outliers keep a large error instead of stretching every other weight's.
//!
//! With the scale fixed by the group's range, half-quadratic splitting adds an error variable
//! `e` and alternates two closed forms until the mean absolute error stops falling:
//!
//! ```text
//! q = clamp(round(w·s + z), 0, max)         (s = 1 / scale, z in code units)
//! e = shrink_p(w − (q − z)/s, β)            shrink_p(x) = sign(x)·max(|x| − |x|^(p−1)/β, 0)
//! z = mean(q − (w − e)·s)
//! ```
//!
//! `β` is fixed (HQQ's default solver does not grow it). The zero comes out fractional: formats
//! with a floating minimum (GGUF's Q4_1/Q5_1, `min = −scale·z`) keep it, the integer formats
//! round it ([`params`]).
//!
//! Key decision: HQQ proper never moves the scale, and with an integer zero its fractional
//! optimum mostly rounds back to the round-to-nearest zero. So, as HQQ's optional scale grid
//! search does, the range is also shrunk over a small grid (`1, 0.98, …, 0.80` of the group's
//! range); each candidate gets HQQ's zero (rounded where the format needs it) and the candidate
//! with the least squared error on the group is kept. The unshrunk candidate is always tried, so
//! the result is never worse than HQQ with its own scale.

use super::IntSpec;
use half::f16;

/// HQQ's settings (defaults: HQQ's own, `p = 0.7, β = 10, 20 iterations`) and the scale grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HqqOptions {
    pub p: f32,
    pub beta: f32,
    pub iters: usize,
    /// Range shrink steps tried (`1 − 0.02·k`, `k = 0..=grid`); 0 keeps HQQ's scale only.
    pub grid: usize,
}

impl Default for HqqOptions {
    fn default() -> Self {
        HqqOptions { p: 0.7, beta: 10.0, iters: 20, grid: 10 }
    }
}

/// `x` rounded to the nearest code in `0..=maxq` (ties to even), without a call to `roundf`:
/// after clamping, adding and subtracting 1.5·2²³ rounds in the FPU's default mode.
#[inline]
fn round_code(x: f32, maxq: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    let c = if x.is_nan() { 0.0 } else { x.clamp(0.0, maxq) };
    (c + MAGIC) - MAGIC
}

/// `shrink_p(x, β)`; `cutoff` is `β^(−1/(2−p))`, below which it is 0 (`|x| ≤ |x|^(p−1)/β`), so
/// the power is only taken for the rare large errors.
#[inline]
fn shrink(x: f32, p: f32, beta: f32, cutoff: f32) -> f32 {
    let a = x.abs();
    if a <= cutoff {
        return 0.0;
    }
    let t = a - a.powf(p - 1.0) / beta;
    if t > 0.0 {
        t.copysign(x)
    } else {
        0.0
    }
}

/// The scale (not yet rounded) and fractional zero HQQ finds for group `x` with codes
/// `0..=max_code`. The scale is the group's range over the code range; all-equal groups get
/// scale 0 and zero 0.
pub fn optimize(x: &[f32], max_code: u8, o: &HqqOptions) -> (f32, f32) {
    let (lo, hi) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    optimize_range(x, lo, hi, max_code, o)
}

/// [`optimize`] with the range `lo..=hi` the initial scale and zero come from.
fn optimize_range(x: &[f32], lo: f32, hi: f32, max_code: u8, o: &HqqOptions) -> (f32, f32) {
    if x.is_empty() || hi - lo <= 0.0 || !(hi - lo).is_finite() {
        return (0.0, 0.0);
    }
    let maxq = max_code as f32;
    let s = maxq / (hi - lo);
    let mut z = (-lo * s).round();
    let (mut best_z, mut best_err) = (z, f32::INFINITY);
    let n = x.len() as f32;
    let cutoff = if o.p < 2.0 && o.beta > 0.0 { o.beta.powf(-1.0 / (2.0 - o.p)) * (1.0 - 1e-6) } else { 0.0 };
    let mut e = vec![0f32; x.len()];
    for _ in 0..o.iters.max(1) {
        let mut err = 0f32;
        let mut zsum = 0f32;
        for (&w, ev) in x.iter().zip(e.iter_mut()) {
            let q = round_code(w * s + z, maxq);
            let r = (q - z) / s;
            err += (w - r).abs();
            *ev = shrink(w - r, o.p, o.beta, cutoff);
            zsum += q - (w - *ev) * s;
        }
        let err = err / n;
        if err < best_err {
            best_err = err;
            best_z = z;
        } else {
            break;
        }
        z = zsum / n;
    }
    (1.0 / s, best_z)
}

/// The best of the scale grid ([`HqqOptions::grid`]): each candidate range gets HQQ's zero, made
/// storable by `store` (rounding, f16), and is scored by the squared error of `x` decoded with
/// what `store` returns (`value(code) = scale·(code − zero)`). Returns the stored scale and zero.
pub fn search<S: Copy>(
    x: &[f32],
    max_code: u8,
    o: &HqqOptions,
    store: impl Fn(f32, f32) -> (S, f32, f32),
) -> Option<S> {
    let (lo, hi) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let maxq = max_code as f32;
    let mut best: Option<(f64, S)> = None;
    for k in 0..=o.grid {
        let f = 1.0 - 0.02 * k as f32;
        let (scale, z) = optimize_range(x, lo * f, hi * f, max_code, o);
        if scale <= 0.0 {
            continue;
        }
        let (stored, s, zf) = store(scale, z);
        if s <= 0.0 || !s.is_finite() {
            continue;
        }
        let err: f64 = x
            .iter()
            .map(|&v| {
                let q = round_code(v / s + zf, maxq);
                ((v - s * (q - zf)) as f64).powi(2)
            })
            .sum();
        if best.as_ref().is_none_or(|(e, _)| err < *e) {
            best = Some((err, stored));
        }
    }
    best.map(|(_, s)| s)
}

/// HQQ's scale and zero for an integer format (see [`search`]): the scale rounded to f16, the
/// zero rounded to an integer in `zero_min..=max_code`. Symmetric formats have no zero to
/// optimise: they get [`super::rtn_params`].
pub fn params(x: &[f32], spec: &IntSpec) -> (f16, u8) {
    params_with(x, spec, &HqqOptions::default())
}

/// [`params`] with explicit settings.
pub fn params_with(x: &[f32], spec: &IntSpec, o: &HqqOptions) -> (f16, u8) {
    if spec.sym {
        return super::rtn_params(x, spec);
    }
    let store = |scale: f32, z: f32| {
        let s = f16::from_f32(scale);
        let zero = z.round().clamp(spec.zero_min as f32, spec.max_code() as f32) as u8;
        ((s, zero), s.to_f32(), zero as f32)
    };
    search(x, spec.max_code(), o, store).unwrap_or_else(|| super::rtn_params(x, spec))
}

/// HQQ's scale `d` and minimum `m` (both f16) for a block of a GGUF type that stores
/// `x = d·q + m` with codes `0..=max_code` (Q4_1: 15, Q5_1: 31), and the codes, written to
/// `codes`. The minimum is `−scale·zero`; the codes are the nearest for the stored `d` and `m`.
/// When round-to-nearest on the block's own range (llama.cpp's reference rule) has the smaller
/// squared error, that is returned instead, so the block is never worse than plain rounding.
pub fn scale_min(x: &[f32], max_code: u8, o: &HqqOptions, codes: &mut [u8]) -> (f16, f16) {
    let maxq = max_code as f32;
    let encode = |d: f16, m: f16, codes: &mut [u8]| -> f64 {
        let (df, mf) = (d.to_f32(), m.to_f32());
        let inv = if df != 0.0 { 1.0 / df } else { 0.0 };
        let mut err = 0f64;
        for (c, &v) in codes.iter_mut().zip(x) {
            let q = round_code((v - mf) * inv, maxq);
            *c = q as u8;
            err += ((v - (df * q + mf)) as f64).powi(2);
        }
        err
    };
    // Plain rounding on the block's range, as llama.cpp's reference quantizers.
    let (lo, hi) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let rtn = (f16::from_f32((hi - lo) / maxq), f16::from_f32(lo));
    let store = |scale: f32, z: f32| {
        let (d, m) = (f16::from_f32(scale), f16::from_f32(-scale * z));
        let df = d.to_f32();
        ((d, m), df, if df != 0.0 { -m.to_f32() / df } else { 0.0 })
    };
    let best = match search(x, max_code, o, store) {
        Some(h) => {
            let mut tmp = vec![0u8; x.len()];
            if encode(h.0, h.1, &mut tmp) < encode(rtn.0, rtn.1, codes) {
                h
            } else {
                rtn
            }
        }
        None => rtn,
    };
    encode(best.0, best.1, codes);
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_min_is_never_worse_than_plain_rounding() {
        // A block with an outlier, where HQQ's zero helps, and a plain one.
        let mut x: Vec<f32> = (0..32).map(|i| ((i * 37 % 29) as f32 - 14.0) * 0.013).collect();
        x[5] = 0.9;
        for block in [x.clone(), (0..32).map(|i| i as f32 * 0.01).collect()] {
            let mut q = vec![0u8; 32];
            let (d, m) = scale_min(&block, 15, &HqqOptions::default(), &mut q);
            let err: f32 =
                block.iter().zip(&q).map(|(&v, &c)| (v - (d.to_f32() * c as f32 + m.to_f32())).powi(2)).sum();
            let (lo, hi) = block.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let (rd, rm) = (f16::from_f32((hi - lo) / 15.0).to_f32(), f16::from_f32(lo).to_f32());
            let rtn: f32 = block.iter().map(|&v| (v - (rd * round_code((v - rm) / rd, 15.0) + rm)).powi(2)).sum();
            assert!(err <= rtn * (1.0 + 1e-6), "HQQ {err} vs plain {rtn}");
            assert!(q.iter().all(|&c| c <= 15));
        }
    }

    #[test]
    fn round_code_is_nearest_within_range() {
        for i in -2000..6000 {
            let x = i as f32 * 0.0371;
            let r = super::round_code(x, 255.0);
            let want = x.clamp(0.0, 255.0);
            assert!((r - want).abs() <= 0.5 && r == r.trunc(), "{x} -> {r}");
        }
        assert_eq!(super::round_code(f32::NAN, 15.0), 0.0);
        assert_eq!(super::round_code(1e30, 15.0), 15.0);
    }

    #[test]
    fn shrink_cutoff_is_where_the_formula_gives_zero() {
        for &(p, beta) in &[(0.7f32, 10.0f32), (0.5, 1.0), (1.0, 100.0), (0.9, 3.0)] {
            let cutoff = beta.powf(-1.0 / (2.0 - p)) * (1.0 - 1e-6);
            for i in 0..20000 {
                let x = (i as f32 - 10000.0) * 1e-4 * (1.0 + cutoff * 5.0);
                assert_eq!(
                    super::shrink(x, p, beta, cutoff),
                    super::shrink(x, p, beta, 0.0),
                    "x {x} p {p} beta {beta}"
                );
            }
        }
    }
}
