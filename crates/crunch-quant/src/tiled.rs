//! Matrix products for prompt processing: a quantized (or f32) weight matrix times many activation
//! rows at once, each weight read once per tile of tokens instead of once per token.
//!
//! Key decision: a panel of weight rows is first unpacked to one integer code per weight plus, per
//! 16 weights, a float `scale` and `bias` (`w = scale * code + bias`; every legacy and k-quant
//! format has this form). Activations are quantized to the weight type's dot type exactly as
//! [`crate::Kernels::quantize`] does for `vec_dot` (Q8_0 / Q8_1 / Q8_K, as llama.cpp does), then a
//! tile of 4 weight rows × 2 tokens is computed with AVX2 byte products (`maddubs`). The integer
//! products are the same as the vec_dot kernels'; only the order in which float scales are applied
//! differs, which changes results in the last bits. The bias part is a short f32 dot product over
//! the per-16 sums of the activations.
//!
//! F32 weights go through the `gemm` crate.

// Kernels index several parallel arrays by the same position.
#![allow(clippy::needless_range_loop)]

use crunch_core::GgmlType;
use half::f16;

use crate::kquants::{read_blocks, unpack_scale_min_k4};

/// Sub-block length sharing one scale and bias.
const SUB: usize = 16;
/// Weight rows per tile.
const RM: usize = 4;
/// Tokens per tile.
const RN: usize = 2;

/// Whether [`matmul_quant`] handles `ty` on this CPU.
pub fn supports(ty: GgmlType) -> bool {
    has_avx2() && decoder(ty).is_some()
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Unpack one block: codes (one per element), scale and bias per 16 elements.
type DecodeFn = fn(block: &[u8], codes: &mut [u8], scales: &mut [f32], biases: &mut [f32]);

struct Decoder {
    /// Elements and bytes per block.
    elems: usize,
    bytes: usize,
    /// Codes are signed bytes (i8 stored as u8), not small unsigned numbers.
    signed: bool,
    decode: DecodeFn,
}

fn h(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn nibbles(qs: &[u8], codes: &mut [u8]) {
    for j in 0..16 {
        codes[j] = qs[j] & 15;
        codes[j + 16] = qs[j] >> 4;
    }
}

fn high_bits(qh: u32, codes: &mut [u8]) {
    for (j, c) in codes.iter_mut().enumerate().take(32) {
        *c |= (((qh >> j) & 1) as u8) << 4;
    }
}

fn fill2(scales: &mut [f32], biases: &mut [f32], s: f32, b: f32) {
    scales[..2].fill(s);
    biases[..2].fill(b);
}

fn decode_q4_0(b: &[u8], c: &mut [u8], s: &mut [f32], z: &mut [f32]) {
    let d = h(b, 0);
    nibbles(&b[2..18], c);
    fill2(s, z, d, -8.0 * d);
}

fn decode_q4_1(b: &[u8], c: &mut [u8], s: &mut [f32], z: &mut [f32]) {
    nibbles(&b[4..20], c);
    fill2(s, z, h(b, 0), h(b, 2));
}

fn decode_q5_0(b: &[u8], c: &mut [u8], s: &mut [f32], z: &mut [f32]) {
    let d = h(b, 0);
    nibbles(&b[6..22], c);
    high_bits(u32::from_le_bytes([b[2], b[3], b[4], b[5]]), c);
    fill2(s, z, d, -16.0 * d);
}

fn decode_q5_1(b: &[u8], c: &mut [u8], s: &mut [f32], z: &mut [f32]) {
    nibbles(&b[8..24], c);
    high_bits(u32::from_le_bytes([b[4], b[5], b[6], b[7]]), c);
    fill2(s, z, h(b, 0), h(b, 2));
}

fn decode_q8_0(b: &[u8], c: &mut [u8], s: &mut [f32], z: &mut [f32]) {
    c[..32].copy_from_slice(&b[2..34]);
    fill2(s, z, h(b, 0), 0.0);
}

fn decode_iq4_nl(b: &[u8], c: &mut [u8], s: &mut [f32], z: &mut [f32]) {
    let kv = crate::iquants::KVALUES;
    for j in 0..16 {
        c[j] = kv[(b[2 + j] & 15) as usize] as u8;
        c[j + 16] = kv[(b[2 + j] >> 4) as usize] as u8;
    }
    fill2(s, z, h(b, 0), 0.0);
}

fn decode_q4_k(b: &[u8], c: &mut [u8], s: &mut [f32], z: &mut [f32]) {
    let blk = &read_blocks::<crate::kquants::q4_k::BlockQ4K>(b)[0];
    let (d, dmin) = (blk.d.to_f32(), blk.dmin.to_f32());
    let (sc, m) = unpack_scale_min_k4(&blk.scales);
    for j in 0..4 {
        for l in 0..32 {
            let q = blk.qs[32 * j + l];
            c[64 * j + l] = q & 15;
            c[64 * j + 32 + l] = q >> 4;
        }
    }
    for i in 0..8 {
        fill2(&mut s[2 * i..], &mut z[2 * i..], d * sc[i] as f32, -dmin * m[i] as f32);
    }
}

fn decode_q5_k(b: &[u8], c: &mut [u8], s: &mut [f32], z: &mut [f32]) {
    let blk = &read_blocks::<crate::kquants::q5_k::BlockQ5K>(b)[0];
    let (d, dmin) = (blk.d.to_f32(), blk.dmin.to_f32());
    let (sc, m) = unpack_scale_min_k4(&blk.scales);
    for j in 0..4 {
        for l in 0..32 {
            let q = blk.qs[32 * j + l];
            let hb = blk.qh[l];
            c[64 * j + l] = (q & 15) | (((hb >> (2 * j)) & 1) << 4);
            c[64 * j + 32 + l] = (q >> 4) | (((hb >> (2 * j + 1)) & 1) << 4);
        }
    }
    for i in 0..8 {
        fill2(&mut s[2 * i..], &mut z[2 * i..], d * sc[i] as f32, -dmin * m[i] as f32);
    }
}

fn decode_q6_k(b: &[u8], c: &mut [u8], s: &mut [f32], z: &mut [f32]) {
    let blk = &read_blocks::<crate::kquants::q6_k::BlockQ6K>(b)[0];
    let d = blk.d.to_f32();
    for (o, q) in c.iter_mut().zip(blk.signed_quants()) {
        *o = (q + 32) as u8;
    }
    for j in 0..16 {
        s[j] = d * blk.scales[j] as f32;
        z[j] = -32.0 * s[j];
    }
}

fn decode_q3_k(b: &[u8], c: &mut [u8], s: &mut [f32], z: &mut [f32]) {
    let blk = &read_blocks::<crate::kquants::q3_k::BlockQ3K>(b)[0];
    let d = blk.d.to_f32();
    for (o, q) in c.iter_mut().zip(blk.signed_quants()) {
        *o = (q + 4) as u8;
    }
    let sc = crate::kquants::q3_k::unpack_scales(&blk.scales);
    for j in 0..16 {
        s[j] = d * sc[j] as f32;
        z[j] = -4.0 * s[j];
    }
}

fn decode_q2_k(b: &[u8], c: &mut [u8], s: &mut [f32], z: &mut [f32]) {
    let blk = &read_blocks::<crate::kquants::q2_k::BlockQ2K>(b)[0];
    let (d, dmin) = (blk.d.to_f32(), blk.dmin.to_f32());
    for j in 0..16 {
        let (half, shift, part) = (j / 8, 2 * ((j % 8) / 2), j % 2);
        let q = &blk.qs[32 * half + 16 * part..32 * half + 16 * part + 16];
        for (o, &v) in c[16 * j..16 * j + 16].iter_mut().zip(q) {
            *o = (v >> shift) & 3;
        }
        let sc = blk.scales[j];
        s[j] = d * (sc & 15) as f32;
        z[j] = -dmin * (sc >> 4) as f32;
    }
}

fn decoder(ty: GgmlType) -> Option<Decoder> {
    let (elems, signed, decode): (usize, bool, DecodeFn) = match ty {
        GgmlType::Q4_0 => (32, false, decode_q4_0),
        GgmlType::Q4_1 => (32, false, decode_q4_1),
        GgmlType::Q5_0 => (32, false, decode_q5_0),
        GgmlType::Q5_1 => (32, false, decode_q5_1),
        GgmlType::Q8_0 => (32, true, decode_q8_0),
        GgmlType::IQ4_NL => (32, true, decode_iq4_nl),
        GgmlType::Q2_K => (256, false, decode_q2_k),
        GgmlType::Q3_K => (256, false, decode_q3_k),
        GgmlType::Q4_K => (256, false, decode_q4_k),
        GgmlType::Q5_K => (256, false, decode_q5_k),
        GgmlType::Q6_K => (256, false, decode_q6_k),
        _ => return None,
    };
    debug_assert_eq!(ty.block_size(), elems);
    Some(Decoder { elems, bytes: ty.type_size(), signed, decode })
}

/// Activations quantized for one weight type: per token `n_in` codes, a scale per 32 and the
/// scaled sum of each 16.
struct Acts {
    n_in: usize,
    codes: Vec<i8>,
    d32: Vec<f32>,
    sum16: Vec<f32>,
}

fn quantize_acts(x: &[f32], n_tokens: usize, n_pad: usize, n_in: usize, dot_type: GgmlType) -> Option<Acts> {
    use rayon::prelude::*;
    let k = crate::kernels(dot_type)?;
    let rb = dot_type.row_size(n_in)?;
    let mut acts = Acts {
        n_in,
        codes: vec![0; n_pad * n_in],
        d32: vec![0.0; n_pad * n_in / 32],
        sum16: vec![0.0; n_pad * n_in / 16],
    };
    /// Block bytes, values per block, where the scale is read from, offset of the codes.
    type ActLayout = (usize, usize, fn(&[u8]) -> f32, usize);
    let (block_bytes, elems, d_at, q_at): ActLayout = match dot_type {
        GgmlType::Q8_0 => (34, 32, |b| h(b, 0), 2),
        GgmlType::Q8_1 => (36, 32, |b| h(b, 0), 4),
        GgmlType::Q8_K => (292, 256, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]), 4),
        _ => return None,
    };
    acts.codes
        .par_chunks_mut(n_in)
        .zip(acts.d32.par_chunks_mut(n_in / 32))
        .zip(acts.sum16.par_chunks_mut(n_in / 16))
        .zip(x.par_chunks(n_in).take(n_tokens))
        .for_each(|(((codes, d32), sum16), src)| {
            let mut buf = vec![0u8; rb];
            (k.quantize)(src, None, &mut buf);
            for (bi, blk) in buf.chunks_exact(block_bytes).enumerate() {
                let d = d_at(blk);
                let q = &blk[q_at..q_at + elems];
                let e0 = bi * elems;
                for (o, &v) in codes[e0..e0 + elems].iter_mut().zip(q) {
                    *o = v as i8;
                }
                d32[e0 / 32..(e0 + elems) / 32].fill(d);
                if dot_type == GgmlType::Q8_1 {
                    // llama.cpp's Q4_1/Q5_1 dots use the block's stored (f16) sum `s`; both halves
                    // share one bias, so half of it each gives the same product.
                    sum16[e0 / 16..e0 / 16 + 2].fill(h(blk, 2) * 0.5);
                    continue;
                }
                for (j, s) in sum16[e0 / 16..(e0 + elems) / 16].iter_mut().enumerate() {
                    let part = &codes[e0 + 16 * j..e0 + 16 * j + 16];
                    *s = d * part.iter().map(|&v| v as i32).sum::<i32>() as f32;
                }
            }
        });
    Some(acts)
}

/// Unpacked weight rows: codes, scales expanded to 8 per 32 elements (lanes 0-3 the first 16,
/// 4-7 the second), biases per 16.
struct Panel {
    rows: usize,
    codes: Vec<u8>,
    scales: Vec<f32>,
    biases: Vec<f32>,
    has_bias: bool,
}

fn unpack_panel(dec: &Decoder, w: &[u8], row_bytes: usize, n_in: usize, rows: usize) -> Panel {
    let padded = rows.div_ceil(RM) * RM;
    let mut p = Panel {
        rows: padded,
        codes: vec![0; padded * n_in],
        scales: vec![0.0; padded * n_in / 4],
        biases: vec![0.0; padded * n_in / SUB],
        has_bias: false,
    };
    let per_block = dec.elems / SUB;
    let mut s = vec![0f32; per_block];
    let mut z = vec![0f32; per_block];
    for r in 0..rows {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        for (bi, blk) in row.chunks_exact(dec.bytes).enumerate() {
            let e0 = bi * dec.elems;
            (dec.decode)(blk, &mut p.codes[r * n_in + e0..r * n_in + e0 + dec.elems], &mut s, &mut z);
            let sc = &mut p.scales[(r * n_in + e0) / 4..(r * n_in + e0 + dec.elems) / 4];
            for (pair, out) in sc.chunks_exact_mut(8).enumerate() {
                out[..4].fill(s[2 * pair]);
                out[4..].fill(s[2 * pair + 1]);
            }
            p.biases[(r * n_in + e0) / SUB..(r * n_in + e0 + dec.elems) / SUB].copy_from_slice(&z);
        }
    }
    p.has_bias = p.biases.iter().any(|&b| b != 0.0);
    p
}

/// `yt = W xᵀ` for a quantized weight `w` (`n_out` rows of `n_in`, GGUF layout) and `n_tokens`
/// activation rows `x`: `yt` is `n_out × n_tokens` (transposed). Returns `false`, leaving `yt`
/// untouched, when the type or CPU is not supported or `n_in` is not a whole number of blocks.
pub fn matmul_quant(
    ty: GgmlType,
    w: &[u8],
    n_in: usize,
    n_out: usize,
    x: &[f32],
    n_tokens: usize,
    yt: &mut [f32],
) -> bool {
    use rayon::prelude::*;
    let Some(dec) = decoder(ty).filter(|_| has_avx2()) else {
        return false;
    };
    let Some(k) = crate::kernels(ty) else {
        return false;
    };
    if !n_in.is_multiple_of(dec.elems)
        || !n_in.is_multiple_of(32)
        || x.len() != n_tokens * n_in
        || yt.len() != n_out * n_tokens
    {
        return false;
    }
    let row_bytes = n_in / dec.elems * dec.bytes;
    if w.len() != row_bytes * n_out {
        return false;
    }
    let n_pad = n_tokens.div_ceil(RN) * RN;
    let Some(acts) = quantize_acts(x, n_tokens, n_pad, n_in, k.dot_type) else {
        return false;
    };
    const PANEL: usize = 16;
    yt.par_chunks_mut(PANEL * n_tokens).enumerate().for_each(|(pi, out)| {
        let r0 = pi * PANEL;
        let rows = out.len() / n_tokens;
        let panel = unpack_panel(&dec, &w[r0 * row_bytes..(r0 + rows) * row_bytes], row_bytes, n_in, rows);
        panel_product(&panel, &acts, dec.signed, n_tokens, out);
    });
    true
}

fn panel_product(p: &Panel, a: &Acts, signed: bool, n_tokens: usize, out: &mut [f32]) {
    let n_in = a.n_in;
    let rows = out.len() / n_tokens;
    let n_pad = a.codes.len() / n_in;
    for rb in (0..p.rows).step_by(RM) {
        let codes: [&[u8]; RM] = std::array::from_fn(|i| &p.codes[(rb + i) * n_in..(rb + i + 1) * n_in]);
        let scales: [&[f32]; RM] = std::array::from_fn(|i| &p.scales[(rb + i) * n_in / 4..(rb + i + 1) * n_in / 4]);
        for tb in (0..n_pad).step_by(RN) {
            let xs: [&[i8]; RN] = std::array::from_fn(|j| &a.codes[(tb + j) * n_in..(tb + j + 1) * n_in]);
            let ds: [&[f32]; RN] = std::array::from_fn(|j| &a.d32[(tb + j) * n_in / 32..(tb + j + 1) * n_in / 32]);
            let tile = tile_product(&codes, &scales, &xs, &ds, signed);
            for (i, trow) in tile.iter().enumerate() {
                let r = rb + i;
                if r >= rows {
                    break;
                }
                for (j, &v) in trow.iter().enumerate() {
                    let t = tb + j;
                    if t >= n_tokens {
                        break;
                    }
                    let mut y = v;
                    if p.has_bias {
                        let b = &p.biases[r * n_in / SUB..(r + 1) * n_in / SUB];
                        let s = &a.sum16[t * n_in / SUB..(t + 1) * n_in / SUB];
                        y += b.iter().zip(s).map(|(x, y)| x * y).sum::<f32>();
                    }
                    out[r * n_tokens + t] = y;
                }
            }
        }
    }
}

fn tile_product(
    codes: &[&[u8]; RM],
    scales: &[&[f32]; RM],
    xs: &[&[i8]; RN],
    ds: &[&[f32]; RN],
    signed: bool,
) -> [[f32; RN]; RM] {
    let n = xs[0].len();
    assert!(n.is_multiple_of(32));
    assert!(codes.iter().all(|c| c.len() == n) && scales.iter().all(|s| s.len() == n / 4));
    assert!(xs.iter().all(|x| x.len() == n) && ds.iter().all(|d| d.len() == n / 32));
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: callers reach this only after `has_avx2()` confirmed AVX2 and FMA; slice lengths
        // were checked just above, and the kernel reads within them.
        unsafe {
            if signed {
                avx2::tile::<true>(codes, scales, xs, ds)
            } else {
                avx2::tile::<false>(codes, scales, xs, ds)
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = signed;
        unreachable!("tiled products need AVX2")
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{RM, RN};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2 and FMA must be available; every slice holds `n` codes (`n % 32 == 0`), `n / 4`
    /// scales, `n / 32` activation scales.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const SIGNED: bool>(
        codes: &[&[u8]; RM],
        scales: &[&[f32]; RM],
        xs: &[&[i8]; RN],
        ds: &[&[f32]; RN],
    ) -> [[f32; RN]; RM] {
        let n = xs[0].len();
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); RN]; RM];
        for c in 0..n / 32 {
            let mut w = [_mm256_setzero_si256(); RM];
            let mut wabs = [_mm256_setzero_si256(); RM];
            let mut sv = [_mm256_setzero_ps(); RM];
            for i in 0..RM {
                // SAFETY: c * 32 + 32 <= n codes and c * 8 + 8 <= n / 4 scales.
                w[i] = unsafe { _mm256_loadu_si256(codes[i].as_ptr().add(c * 32).cast()) };
                sv[i] = unsafe { _mm256_loadu_ps(scales[i].as_ptr().add(c * 8)) };
                if SIGNED {
                    wabs[i] = _mm256_sign_epi8(w[i], w[i]);
                }
            }
            for j in 0..RN {
                // SAFETY: as above for the activation codes; c < n / 32 scales.
                let x = unsafe { _mm256_loadu_si256(xs[j].as_ptr().add(c * 32).cast()) };
                let dx = _mm256_set1_ps(unsafe { *ds[j].get_unchecked(c) });
                for i in 0..RM {
                    let p16 = if SIGNED {
                        _mm256_maddubs_epi16(wabs[i], _mm256_sign_epi8(x, w[i]))
                    } else {
                        _mm256_maddubs_epi16(w[i], x)
                    };
                    let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                    acc[i][j] = _mm256_fmadd_ps(p, _mm256_mul_ps(sv[i], dx), acc[i][j]);
                }
            }
        }
        let mut out = [[0f32; RN]; RM];
        for i in 0..RM {
            for j in 0..RN {
                let v = acc[i][j];
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_movehdup_ps(s));
                out[i][j] = _mm_cvtss_f32(s);
            }
        }
        out
    }
}

/// `out = W xᵀ` in f32 for `rows` weight rows `w` (row-major, `n_in` each) and `n_tokens`
/// activation rows `x`: `out` is `rows × n_tokens`. Single-threaded (callers split the rows).
pub fn gemm_f32_panel(w: &[f32], rows: usize, n_in: usize, x: &[f32], n_tokens: usize, out: &mut [f32]) {
    assert_eq!(w.len(), rows * n_in, "weight panel size");
    assert_eq!(x.len(), n_tokens * n_in, "activation size");
    assert_eq!(out.len(), rows * n_tokens, "output size");
    if rows == 0 || n_tokens == 0 {
        return;
    }
    // SAFETY: the three buffers have the sizes asserted above and the strides below address
    // exactly those elements: out[r][t] (row stride n_tokens), w[r][k] (row stride n_in) and
    // x viewed as a k × t matrix (element (k, t) at t * n_in + k).
    unsafe {
        gemm::gemm(
            rows,
            n_tokens,
            n_in,
            out.as_mut_ptr(),
            1,
            n_tokens as isize,
            false,
            w.as_ptr(),
            1,
            n_in as isize,
            x.as_ptr(),
            n_in as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The tiled product equals one `vec_dot` per (row, token) up to float rounding.
    #[test]
    fn matches_vec_dot() {
        if !has_avx2() {
            return;
        }
        let (n_in, n_out, n_tok) = (512, 23, 7);
        let x = rand(n_tok * n_in, 1);
        let wf = rand(n_out * n_in, 2);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::IQ4_NL,
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            let k = crate::kernels(ty).unwrap();
            let rb = ty.row_size(n_in).unwrap();
            let mut w = vec![0u8; rb * n_out];
            crate::quantize_rows(ty, &wf, n_in, None, &mut w).unwrap();
            let mut yt = vec![0f32; n_out * n_tok];
            assert!(matmul_quant(ty, &w, n_in, n_out, &x, n_tok, &mut yt), "{ty}");
            let xrb = k.dot_type.row_size(n_in).unwrap();
            for t in 0..n_tok {
                let mut xq = vec![0u8; xrb];
                (crate::kernels(k.dot_type).unwrap().quantize)(&x[t * n_in..(t + 1) * n_in], None, &mut xq);
                for r in 0..n_out {
                    let want = (k.vec_dot.unwrap())(n_in, &w[r * rb..(r + 1) * rb], &xq);
                    let got = yt[r * n_tok + t];
                    assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{ty} r{r} t{t}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn gemm_panel_matches_naive() {
        let (rows, n_in, n_tok) = (5, 33, 4);
        let w = rand(rows * n_in, 3);
        let x = rand(n_tok * n_in, 4);
        let mut out = vec![0f32; rows * n_tok];
        gemm_f32_panel(&w, rows, n_in, &x, n_tok, &mut out);
        for r in 0..rows {
            for t in 0..n_tok {
                let want: f32 = (0..n_in).map(|k| w[r * n_in + k] * x[t * n_in + k]).sum();
                assert!((out[r * n_tok + t] - want).abs() < 1e-4);
            }
        }
    }
}
