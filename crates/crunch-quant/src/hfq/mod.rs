//! Quantized weights as GPU and CPU servers load them from Hugging Face folders: group-wise
//! integers (GPTQ, AWQ, compressed-tensors) and bitsandbytes' 4-bit and 8-bit formats.
//!
//! Pure codecs: no files. A weight is `rows × cols` (PyTorch's `out × in`), groups are `group`
//! consecutive columns of one row (the direction of GGUF blocks).
//!
//! Key decision: every integer format here is one [`IntGroups`] (unsigned codes `u` in
//! `0..2^bits`, an f16 scale and an integer zero per group, value `scale · (u − zero)`, exact in
//! f32), and each file layout is only a packing of it ([`pack`]). A symmetric format is the same
//! with the zero fixed at `2^(bits−1)`. How the codes are chosen (round-to-nearest here, HQQ in
//! [`hqq`], GPTQ and AWQ in crunch-calib) is separate from how they are stored.

pub mod bnb;
pub mod hqq;
pub mod pack;

use half::f16;
use rayon::prelude::*;

/// The shape of a group-wise integer format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntSpec {
    /// Bits per code, 2..=8.
    pub bits: u8,
    /// Columns per group (divides the row).
    pub group: usize,
    /// Zero fixed at `2^(bits−1)` (no zero points stored).
    pub sym: bool,
    /// Smallest zero an asymmetric group may use: 1 for GPTQ's v1 checkpoints (they store
    /// `zero − 1` in `bits` bits), else 0.
    pub zero_min: u8,
}

impl IntSpec {
    /// Largest code.
    pub fn max_code(&self) -> u8 {
        ((1u16 << self.bits) - 1) as u8
    }

    /// The fixed zero of a symmetric format.
    pub fn mid(&self) -> u8 {
        1u8 << (self.bits - 1)
    }

    /// Check the spec and that it fits a `rows × cols` weight named `name`.
    ///
    /// # Errors
    /// A message naming the weight and the offending size.
    pub fn check(&self, name: &str, rows: usize, cols: usize) -> Result<(), String> {
        if !(2..=8).contains(&self.bits) {
            return Err(format!("{name}: {} bits per code (2..8 supported)", self.bits));
        }
        if self.group == 0 || cols == 0 || !cols.is_multiple_of(self.group) {
            return Err(format!("{name}: group size {} does not divide its rows of {cols} columns", self.group));
        }
        if rows == 0 {
            return Err(format!("{name}: no rows"));
        }
        if self.zero_min > self.max_code() {
            return Err(format!("{name}: smallest zero {} above the largest code", self.zero_min));
        }
        Ok(())
    }
}

/// A weight in a group-wise integer format: `w[r][c] = scales[r][c / group] · (codes[r][c] −
/// zeros[r][c / group])`.
#[derive(Clone, Debug, PartialEq)]
pub struct IntGroups {
    pub rows: usize,
    pub cols: usize,
    pub spec: IntSpec,
    /// `rows × cols` unsigned codes.
    pub codes: Vec<u8>,
    /// `rows × cols / group`.
    pub scales: Vec<f16>,
    /// `rows × cols / group`, in code units (`mid()` everywhere when symmetric).
    pub zeros: Vec<u8>,
}

impl IntGroups {
    /// Groups per row.
    pub fn groups_per_row(&self) -> usize {
        self.cols / self.spec.group
    }

    /// Reorder the rows: row `r` becomes the old row `order[r]` (codes, scales and zeros together).
    ///
    /// # Panics
    /// `order` is not a permutation of the rows (a caller's bug).
    pub fn permute_rows(&mut self, order: &[usize]) {
        assert_eq!(order.len(), self.rows, "a permutation of every row");
        let ng = self.groups_per_row();
        let pick = |v: &[u8], w: usize| -> Vec<u8> {
            order.iter().flat_map(|&r| v[r * w..(r + 1) * w].iter().copied()).collect()
        };
        self.codes = pick(&self.codes, self.cols);
        self.zeros = pick(&self.zeros, ng);
        self.scales = order.iter().flat_map(|&r| self.scales[r * ng..(r + 1) * ng].iter().copied()).collect();
    }

    /// The values (exact: an f16 times a small integer fits in f32), `rows × cols`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        let (g, ng) = (self.spec.group, self.groups_per_row());
        out.par_chunks_mut(self.cols).enumerate().for_each(|(r, row)| {
            for (c, x) in row.iter_mut().enumerate() {
                let k = r * ng + c / g;
                *x = self.scales[k].to_f32() * (self.codes[r * self.cols + c] as f32 - self.zeros[k] as f32);
            }
        });
        out
    }
}

/// Round-to-nearest scale and zero of one group, as stored (f16 scale).
///
/// Symmetric: the smallest positive scale that holds the group without clipping, the codes being
/// `−2^(bits−1) ..= 2^(bits−1) − 1`: `max(max⁺ / (2^(bits−1) − 1), max⁻ / 2^(bits−1))`, so a
/// negative extreme uses the extra code (as GGUF's Q4_0 does) and a positive one is not clipped.
/// Scales stay positive, as the owners' tools write them. Asymmetric: `scale = (max − min) /
/// max_code` over a range that includes 0, `zero = round(−min / scale)` clamped to
/// `zero_min..=max_code` (GPTQ's reference quantizer).
pub fn rtn_params(x: &[f32], spec: &IntSpec) -> (f16, u8) {
    if spec.sym {
        let (lo, hi) = x.iter().fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let mid = spec.mid() as f32;
        let scale = (hi / (mid - 1.0)).max(-lo / mid);
        // Round the scale up to an f16 that still holds the extremes.
        let mut s = f16::from_f32(scale);
        if s.to_f32() < scale {
            s = f16::from_bits(s.to_bits() + 1);
        }
        (s, spec.mid())
    } else {
        let (lo, hi) = x.iter().fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let scale = f16::from_f32((hi - lo) / spec.max_code() as f32);
        let s = scale.to_f32();
        let zero = if s > 0.0 { (-lo / s).round() } else { 0.0 };
        (scale, zero.clamp(spec.zero_min as f32, spec.max_code() as f32) as u8)
    }
}

/// The code of `v` for a stored scale and zero: nearest, clamped to the code range.
#[inline]
pub fn code_of(v: f32, scale: f16, zero: u8, spec: &IntSpec) -> u8 {
    let s = scale.to_f32();
    if s == 0.0 || !s.is_finite() {
        return zero;
    }
    ((v / s).round() + zero as f32).clamp(0.0, spec.max_code() as f32) as u8
}

/// Encode group `x` with the given scale and zero into `codes`.
pub fn encode_group(x: &[f32], scale: f16, zero: u8, spec: &IntSpec, codes: &mut [u8]) {
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = code_of(v, scale, zero, spec);
    }
}

/// Quantize `w` (`rows × cols`, row-major) with `params` choosing each group's scale and zero
/// (e.g. [`rtn_params`] or [`hqq::params`]); all cores.
///
/// # Errors
/// What [`IntSpec::check`] says.
pub fn quantize_with(
    name: &str,
    w: &[f32],
    cols: usize,
    spec: IntSpec,
    params: impl Fn(&[f32], &IntSpec) -> (f16, u8) + Sync,
) -> Result<IntGroups, String> {
    let rows = w.len().checked_div(cols).unwrap_or(0);
    spec.check(name, rows, cols)?;
    if rows * cols != w.len() {
        return Err(format!("{name}: {} values are not rows of {cols}", w.len()));
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(format!("{name}: value {} at row {}, column {} is not finite", w[i], i / cols, i % cols));
    }
    let ng = cols / spec.group;
    let mut codes = vec![0u8; rows * cols];
    let mut scales = vec![f16::ZERO; rows * ng];
    let mut zeros = vec![0u8; rows * ng];
    codes
        .par_chunks_mut(cols)
        .zip(scales.par_chunks_mut(ng))
        .zip(zeros.par_chunks_mut(ng))
        .zip(w.par_chunks(cols))
        .for_each(|(((c, s), z), row)| {
            for (k, x) in row.chunks(spec.group).enumerate() {
                let (scale, zero) = params(x, &spec);
                s[k] = scale;
                z[k] = zero;
                encode_group(x, scale, zero, &spec, &mut c[k * spec.group..(k + 1) * spec.group]);
            }
        });
    Ok(IntGroups { rows, cols, spec, codes, scales, zeros })
}

/// Round-to-nearest quantization (see [`rtn_params`]).
///
/// # Errors
/// What [`quantize_with`] says.
pub fn quantize_rtn(name: &str, w: &[f32], cols: usize, spec: IntSpec) -> Result<IntGroups, String> {
    quantize_with(name, w, cols, spec, rtn_params)
}

#[cfg(test)]
mod tests;
