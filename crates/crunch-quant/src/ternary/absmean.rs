//! BitNet b1.58's "absmean" ternarization: each group of 256 weights (one TQ1_0 / TQ2_0 block) is
//! scaled by the mean of its magnitudes, `d = mean |x|`, and every weight becomes a trit
//! `clamp(round(x / d), -1, 1)`; the group's weights are then `trit · d`. llama.cpp's reference
//! quantizers ([`super::tq1_0::quantize_block`], [`super::tq2_0::quantize_block`]) scale by the
//! largest magnitude instead, which suits weights that were trained ternary; absmean is the rule
//! ternary training uses, so it is what a model trained through [`ternarize_absmean`] is
//! exported with.
//!
//! The scale is stored as f16 and the trits are computed with that rounded scale, so the values a
//! trainer sees ([`ternarize_absmean`]) are exactly what dequantizing the written blocks gives.
//! Rows whose length is not a multiple of 256 (SmolLM2-135M's 576-wide rows, say) cannot be TQ
//! blocks: their groups are 256 weights from the start of the row with a shorter last one, and
//! [`quantize_absmean_rows`] stores them exactly in Q4_0 (codes 7, 8, 9 for -1, 0, +1, the group's
//! scale in each 32-block of it) or, for rows that are not whole 32-blocks either, in F16;
//! [`absmean_storage_type`] says which.

use crunch_core::{GgmlType, QK_K};
use half::f16;
use rayon::prelude::*;

use super::tq1_0::{self, BlockTq1_0};
use super::tq2_0::{self, BlockTq2_0};
use crate::legacy::q4_0::BlockQ4_0;
use crate::legacy::{fill_blocks, QK};
use crate::QuantError;

/// Weights per absmean scale: one TQ1_0 / TQ2_0 block.
pub const GROUP: usize = QK_K;

/// The absmean scale of a group as stored: `f16(Σ|x| / len)`, the magnitudes summed in f32 over
/// eight interleaved partial sums combined in a fixed order (0 for an empty group).
pub fn absmean_scale(x: &[f32]) -> f16 {
    if x.is_empty() {
        return f16::ZERO;
    }
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v.abs();
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|v| v.abs()).sum();
    let sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
    f16::from_f32(sum / x.len() as f32)
}

/// `clamp(round(x / d), -1, 1)` with rounding half away from zero, written as the two comparisons
/// it amounts to (0 for a NaN quotient).
#[inline]
fn trit(x: f32, d: f32) -> i8 {
    let q = x / d;
    i8::from(q >= 0.5) - i8::from(q <= -0.5)
}

/// Ternarize one group (any length): its stored scale `d` ([`absmean_scale`]) and the trits
/// `clamp(round(x / d), -1, 1)` computed with `d` as stored; a zero scale gives all-zero trits.
///
/// # Panics
/// When `trits` is not as long as `x`.
pub fn absmean_group(x: &[f32], trits: &mut [i8]) -> f16 {
    assert_eq!(x.len(), trits.len(), "trits for a group of {}", x.len());
    let d = absmean_scale(x);
    let df = d.to_f32();
    if df == 0.0 {
        trits.fill(0);
    } else {
        for (t, &v) in trits.iter_mut().zip(x) {
            *t = trit(v, df);
        }
    }
    d
}

/// Ternarize one 256-element block: its f16 scale and trits ([`absmean_group`]).
pub fn absmean_block(x: &[f32; QK_K]) -> (f16, [i8; QK_K]) {
    let mut t = [0i8; QK_K];
    let d = absmean_group(x, &mut t);
    (d, t)
}

/// Quantize rows of f32 (whole 256-blocks) into TQ1_0 blocks by absmean.
pub fn quantize_tq1_0_absmean(src: &[f32], dst: &mut [u8]) {
    fill_blocks(dst, |out: &mut [BlockTq1_0]| {
        for (b, x) in out.iter_mut().zip(src.chunks_exact(QK_K)) {
            if let Ok(x) = x.try_into() {
                let (d, t) = absmean_block(x);
                *b = tq1_0::pack(d, |i| i32::from(t[i]) + 1);
            }
        }
    });
}

/// Quantize rows of f32 (whole 256-blocks) into TQ2_0 blocks by absmean.
pub fn quantize_tq2_0_absmean(src: &[f32], dst: &mut [u8]) {
    fill_blocks(dst, |out: &mut [BlockTq2_0]| {
        for (b, x) in out.iter_mut().zip(src.chunks_exact(QK_K)) {
            if let Ok(x) = x.try_into() {
                let (d, t) = absmean_block(x);
                *b = tq2_0::pack(d, |i| i32::from(t[i]) + 1);
            }
        }
    });
}

/// The absmean ternarization of `src` as f32 values `trit · d`: groups of [`GROUP`] from the start
/// of `src`, the last one shorter when `src.len()` is not a multiple of 256. For whole 256-blocks
/// (any number of rows) this is exactly what dequantizing [`quantize_tq1_0_absmean`]'s or
/// [`quantize_tq2_0_absmean`]'s blocks gives; for a row of another length, call it once per row
/// ([`ternarize_absmean_rows`]) so that groups start at each row.
///
/// # Panics
/// When `dst` is not as long as `src`.
pub fn ternarize_absmean(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "ternarized values for {} weights", src.len());
    let mut trits = [0i8; GROUP];
    for (x, y) in src.chunks(GROUP).zip(dst.chunks_mut(GROUP)) {
        let t = &mut trits[..x.len()];
        let d = absmean_group(x, t).to_f32();
        for (o, &t) in y.iter_mut().zip(t.iter()) {
            // the dequantizers' own operation, so the bits agree
            *o = f32::from(t) * d;
        }
    }
}

/// [`ternarize_absmean`] of every row of `row_len` (groups restart at each row), rows in parallel.
///
/// # Panics
/// When `dst` is not as long as `src` or `src` is not whole rows.
pub fn ternarize_absmean_rows(src: &[f32], row_len: usize, dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "ternarized values for {} weights", src.len());
    if row_len == 0 {
        return;
    }
    assert!(src.len().is_multiple_of(row_len), "{} weights are not rows of {row_len}", src.len());
    dst.par_chunks_mut(row_len).zip(src.par_chunks(row_len)).for_each(|(y, x)| ternarize_absmean(x, y));
}

/// One row (whole 32-blocks) of absmean trits stored exactly in Q4_0: every 32-block holds its
/// group's scale and the codes `trit + 8`, so it dequantizes to [`ternarize_absmean`] of the row.
fn quantize_q4_0_row(row: &[f32], dst: &mut [u8]) {
    fill_blocks(dst, |out: &mut [BlockQ4_0]| {
        let mut trits = [0i8; GROUP];
        for (x, blocks) in row.chunks(GROUP).zip(out.chunks_mut(GROUP / QK)) {
            let t = &mut trits[..x.len()];
            let d = absmean_group(x, t);
            for (b, tb) in blocks.iter_mut().zip(t.chunks_exact(QK)) {
                let code = |j: usize| (tb[j] + 8) as u8;
                let mut qs = [0u8; QK / 2];
                for (j, q) in qs.iter_mut().enumerate() {
                    *q = code(j) | (code(j + QK / 2) << 4);
                }
                *b = BlockQ4_0 { d, qs };
            }
        }
    });
}

/// One row of absmean values `trit · d` as F16 (exact: `±d` and 0 are f16 values).
fn quantize_f16_row(row: &[f32], dst: &mut [u8]) {
    let mut vals = vec![0f32; row.len()];
    ternarize_absmean(row, &mut vals);
    for (o, v) in dst.chunks_exact_mut(2).zip(&vals) {
        o.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
    }
}

/// The type a row of `row_len` absmean-ternary weights is stored in when `preferred` (TQ1_0 or
/// TQ2_0) is asked for: `preferred` when the row is whole 256-blocks, else Q4_0 when it is whole
/// 32-blocks (llama.cpp falls back from the TQ types to Q4_0 too), else F16. Each holds the
/// ternary values exactly.
pub fn absmean_storage_type(preferred: GgmlType, row_len: usize) -> GgmlType {
    if row_len.is_multiple_of(QK_K) {
        preferred
    } else if row_len.is_multiple_of(QK) {
        GgmlType::Q4_0
    } else {
        GgmlType::F16
    }
}

/// Quantize rows of `row_len` f32 by absmean into `ty` — TQ1_0, TQ2_0, Q4_0 or F16, the types
/// [`absmean_storage_type`] picks — rows in parallel. The result dequantizes to
/// [`ternarize_absmean_rows`] of `src` bit for bit.
///
/// # Errors
/// Another type, a row length that is not a multiple of `ty`'s block size, buffer sizes that do
/// not match.
pub fn quantize_absmean_rows(ty: GgmlType, src: &[f32], row_len: usize, dst: &mut [u8]) -> Result<(), QuantError> {
    let quantize: fn(&[f32], &mut [u8]) = match ty {
        GgmlType::TQ1_0 => quantize_tq1_0_absmean,
        GgmlType::TQ2_0 => quantize_tq2_0_absmean,
        GgmlType::Q4_0 => quantize_q4_0_row,
        GgmlType::F16 => quantize_f16_row,
        _ => return Err(QuantError::Unsupported(ty)),
    };
    let row_bytes =
        ty.row_size(row_len).ok_or(QuantError::RowNotBlockMultiple { ty, row_len, block: ty.block_size() })?;
    if row_len == 0 {
        return Ok(());
    }
    if !src.len().is_multiple_of(row_len) {
        return Err(QuantError::Length {
            what: "elements (not whole rows)",
            expected: src.len() / row_len * row_len,
            got: src.len(),
        });
    }
    let expected = src.len() / row_len * row_bytes;
    if dst.len() != expected {
        return Err(QuantError::Length { what: "quantized bytes", expected, got: dst.len() });
    }
    dst.par_chunks_mut(row_bytes).zip(src.par_chunks(row_len)).for_each(|(d, s)| quantize(s, d));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dequantize_rows;

    fn weights(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                // roughly uniform in (-0.05, 0.05), with some exact zeros
                let u = (s >> 11) as f64 / (1u64 << 53) as f64;
                if s.is_multiple_of(17) {
                    0.0
                } else {
                    ((u - 0.5) * 0.1) as f32
                }
            })
            .collect()
    }

    fn dequantized(ty: GgmlType, q: &[u8], row_len: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n];
        dequantize_rows(ty, q, row_len, &mut out).unwrap();
        out
    }

    fn quantized(ty: GgmlType, x: &[f32], row_len: usize) -> Vec<u8> {
        let mut q = vec![0u8; ty.tensor_size(row_len, x.len() / row_len).unwrap()];
        quantize_absmean_rows(ty, x, row_len, &mut q).unwrap();
        q
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Every storage type dequantizes to the ternarized values bit for bit, for rows of whole
    /// 256-blocks (TQ1_0, TQ2_0), of whole 32-blocks (Q4_0) and of neither (F16).
    #[test]
    fn dequantized_blocks_are_the_ternarized_values() {
        for (row_len, rows) in [(256usize, 3usize), (1536, 2), (576, 3), (96, 4), (40, 3)] {
            let x = weights(row_len * rows, row_len as u64);
            let mut want = vec![0f32; x.len()];
            ternarize_absmean_rows(&x, row_len, &mut want);
            for preferred in [GgmlType::TQ1_0, GgmlType::TQ2_0] {
                let ty = absmean_storage_type(preferred, row_len);
                let expected = match row_len {
                    256 | 1536 => preferred,
                    576 | 96 => GgmlType::Q4_0,
                    _ => GgmlType::F16,
                };
                assert_eq!(ty, expected, "row {row_len}");
                let got = dequantized(ty, &quantized(ty, &x, row_len), row_len, x.len());
                assert_eq!(bits(&got), bits(&want), "{ty} rows of {row_len}");
            }
            // Values are trit · d: at most three per group, symmetric.
            for (r, row) in want.chunks(row_len).enumerate() {
                for g in row.chunks(GROUP) {
                    let d = g.iter().fold(0f32, |m, v| m.max(v.abs()));
                    assert!(g.iter().all(|&v| v == 0.0 || v.abs() == d), "row {r}");
                }
            }
        }
        // Whole 256-blocks ternarized as one slice equal the same rows one by one.
        let x = weights(4 * 512, 9);
        let (mut a, mut b) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        ternarize_absmean(&x, &mut a);
        ternarize_absmean_rows(&x, 512, &mut b);
        assert_eq!(bits(&a), bits(&b));
        // The TQ quantizers on whole blocks agree with the rows entry point.
        let mut q1 = vec![0u8; GgmlType::TQ1_0.tensor_size(512, 4).unwrap()];
        quantize_tq1_0_absmean(&x, &mut q1);
        assert_eq!(q1, quantized(GgmlType::TQ1_0, &x, 512));
        let mut q2 = vec![0u8; GgmlType::TQ2_0.tensor_size(512, 4).unwrap()];
        quantize_tq2_0_absmean(&x, &mut q2);
        assert_eq!(q2, quantized(GgmlType::TQ2_0, &x, 512));
    }

    /// The block's scale is the f16 mean magnitude and the trits are `round(x / d)` clamped.
    #[test]
    fn block_trits_follow_the_rule() {
        let x: [f32; QK_K] = std::array::from_fn(|i| ((i as f32) * 0.37).sin() * if i % 5 == 0 { 3.0 } else { 1.0 });
        let (d, t) = absmean_block(&x);
        let mean = x.iter().map(|v| v.abs() as f64).sum::<f64>() / QK_K as f64;
        assert!((d.to_f64() - mean).abs() <= 1e-3 * mean, "{d} vs {mean}");
        for (&v, &t) in x.iter().zip(&t) {
            let want = (v as f64 / d.to_f64()).round().clamp(-1.0, 1.0) as i8;
            assert_eq!(t, want, "{v}");
        }
        assert!(t.contains(&1) && t.contains(&-1) && t.contains(&0));
    }

    /// A zero block (and one too small for an f16 scale) has scale 0 and trits 0; the stored
    /// blocks dequantize to zeros.
    #[test]
    fn zero_block() {
        for scale in [0.0f32, 1e-12] {
            let x = [scale; QK_K];
            let (d, t) = absmean_block(&x);
            assert_eq!(d.to_f32(), 0.0);
            assert!(t.iter().all(|&t| t == 0));
            for ty in [GgmlType::TQ1_0, GgmlType::TQ2_0] {
                let got = dequantized(ty, &quantized(ty, &x, QK_K), QK_K, QK_K);
                assert!(got.iter().all(|&v| v == 0.0), "{ty}");
            }
            let mut v = [1f32; QK_K];
            ternarize_absmean(&x, &mut v);
            assert!(v.iter().all(|&v| v == 0.0));
        }
    }

    /// A block whose f32 mean is not an f16 value, with an element right between half the f32
    /// mean and half the f16 scale: its trit follows the stored (f16) scale, so the dequantized
    /// block is the ternarized one.
    #[test]
    fn trits_use_the_f16_scale() {
        // 255 elements of ±v with v between f16 values (spacing 2^-10 near 1) …
        let v = 1.0f32 + 2f32.powi(-11) + 2f32.powi(-13);
        let mut found = 0;
        for step in 0..4000 {
            // … and one element x near half the scale.
            let x = 0.5 + (step as f32 - 2000.0) * 2f32.powi(-20);
            let mut b = [0f32; QK_K];
            for (i, o) in b.iter_mut().enumerate() {
                *o = if i % 2 == 0 { v } else { -v };
            }
            b[7] = x;
            let mean32 = b.iter().map(|v| v.abs()).sum::<f32>() / QK_K as f32;
            let (d, t) = absmean_block(&b);
            if d.to_f32() == mean32 {
                continue;
            }
            let by_f32 = (x / mean32).round().clamp(-1.0, 1.0) as i8;
            let by_f16 = (x / d.to_f32()).round().clamp(-1.0, 1.0) as i8;
            assert_eq!(t[7], by_f16);
            if by_f32 != by_f16 {
                found += 1;
                for ty in [GgmlType::TQ1_0, GgmlType::TQ2_0] {
                    let got = dequantized(ty, &quantized(ty, &b, QK_K), QK_K, QK_K);
                    let mut want = [0f32; QK_K];
                    ternarize_absmean(&b, &mut want);
                    assert_eq!(bits(&got), bits(&want), "{ty}");
                    assert_eq!(got[7], f32::from(by_f16) * d.to_f32());
                }
            }
        }
        assert!(found > 0, "no element fell between the two halves");
    }

    #[test]
    fn other_types_and_bad_sizes_are_refused() {
        let x = weights(512, 1);
        let mut q = vec![0u8; GgmlType::Q8_0.tensor_size(256, 2).unwrap()];
        assert_eq!(
            quantize_absmean_rows(GgmlType::Q8_0, &x, 256, &mut q),
            Err(QuantError::Unsupported(GgmlType::Q8_0))
        );
        let mut q = vec![0u8; 10];
        assert!(quantize_absmean_rows(GgmlType::TQ2_0, &x, 256, &mut q).is_err());
        assert!(quantize_absmean_rows(GgmlType::TQ2_0, &x[..320], 320, &mut q).is_err());
    }

    /// The refactored reference quantizers still pack what they did: scale = absmax, trits by
    /// `round(x / amax)` (checked against the absmean packer fed the same trits).
    #[test]
    fn reference_and_absmean_share_the_packer() {
        let x: [f32; QK_K] = std::array::from_fn(|i| ((i as f32) * 0.91).cos());
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let t: Vec<i32> = x.iter().map(|&v| (v * (1.0 / amax)).round() as i32 + 1).collect();
        assert_eq!(tq1_0::quantize_block(&x), tq1_0::pack(f16::from_f32(amax), |i| t[i]));
        assert_eq!(tq2_0::quantize_block(&x), tq2_0::pack(f16::from_f32(amax), |i| t[i]));
    }
}
