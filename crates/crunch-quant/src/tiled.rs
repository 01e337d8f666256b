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

/// Unpacked weight rows: codes, and per 16 elements a scale and a bias.
struct Panel {
    rows: usize,
    codes: Vec<u8>,
    scales: Vec<f32>,
    biases: Vec<f32>,
    has_bias: bool,
    /// Both 16-halves of every 32 share one scale (every format but Q2_K, Q3_K and Q6_K).
    per32: bool,
}

fn unpack_panel(dec: &Decoder, w: &[u8], row_bytes: usize, n_in: usize, rows: usize) -> Panel {
    let padded = rows.div_ceil(RM) * RM;
    let mut p = Panel {
        rows: padded,
        codes: vec![0; padded * n_in],
        scales: vec![0.0; padded * n_in / SUB],
        biases: vec![0.0; padded * n_in / SUB],
        has_bias: false,
        per32: true,
    };
    let per_block = dec.elems / SUB;
    for r in 0..rows {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        for (bi, blk) in row.chunks_exact(dec.bytes).enumerate() {
            let e0 = r * n_in + bi * dec.elems;
            let (s0, s1) = (e0 / SUB, e0 / SUB + per_block);
            (dec.decode)(blk, &mut p.codes[e0..e0 + dec.elems], &mut p.scales[s0..s1], &mut p.biases[s0..s1]);
        }
    }
    p.has_bias = p.biases.iter().any(|&b| b != 0.0);
    p.per32 = p.scales.chunks_exact(2).all(|s| s[0] == s[1]);
    p
}

/// Output `n_tokens × n_out` (row-major) shared by tasks that each write their own set of
/// columns.
#[derive(Clone, Copy)]
struct SharedOut {
    ptr: *mut f32,
    n_tokens: usize,
    n_out: usize,
}

// SAFETY: tasks only write disjoint elements (their own output columns) through `SharedOut`, and
// the buffer outlives every task (the parallel loops that use it are joined before it is released).
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn new(y: &mut [f32], n_tokens: usize, n_out: usize) -> Self {
        assert_eq!(y.len(), n_tokens * n_out, "output size");
        SharedOut { ptr: y.as_mut_ptr(), n_tokens, n_out }
    }

    /// Where column `r0` of token 0 is.
    fn column(self, r0: usize) -> *mut f32 {
        self.ptr.wrapping_add(r0)
    }

    /// Store output `(token t, column r)`.
    ///
    /// # Safety
    /// `t < n_tokens`, `r < n_out`, and no other task writes column `r`.
    #[inline(always)]
    unsafe fn set(self, t: usize, r: usize, v: f32) {
        debug_assert!(t < self.n_tokens && r < self.n_out);
        // SAFETY: in bounds by the caller's contract; no concurrent writer of this element.
        unsafe { *self.ptr.add(t * self.n_out + r) = v }
    }
}

/// Weight rows per parallel task in [`matmul_quant`].
const PANEL: usize = 16;

/// `y = x Wᵀ` for a quantized weight `w` (`n_out` rows of `n_in`, GGUF layout) and `n_tokens`
/// activation rows `x`: `y` is `n_tokens × n_out`, row-major. Returns `false`, leaving `y`
/// untouched, when the type or CPU is not supported or `n_in` is not a whole number of blocks.
pub fn matmul_quant(
    ty: GgmlType,
    w: &[u8],
    n_in: usize,
    n_out: usize,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
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
        || y.len() != n_out * n_tokens
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
    let out = SharedOut::new(y, n_tokens, n_out);
    (0..n_out.div_ceil(PANEL)).into_par_iter().for_each(|pi| {
        let r0 = pi * PANEL;
        let rows = PANEL.min(n_out - r0);
        let panel = unpack_panel(&dec, &w[r0 * row_bytes..(r0 + rows) * row_bytes], row_bytes, n_in, rows);
        panel_product(&panel, &acts, dec.signed, out, r0, rows);
    });
    true
}

/// Rows `r0..r0 + rows` of the output from their unpacked panel.
fn panel_product(p: &Panel, a: &Acts, signed: bool, out: SharedOut, r0: usize, rows: usize) {
    let n_in = a.n_in;
    let ns = n_in / SUB;
    let n_tokens = out.n_tokens;
    let n_pad = a.codes.len() / n_in;
    assert!(r0 + rows <= out.n_out && n_pad >= n_tokens && p.rows >= rows);
    for rb in (0..p.rows).step_by(RM) {
        let codes: [&[u8]; RM] = std::array::from_fn(|i| &p.codes[(rb + i) * n_in..(rb + i + 1) * n_in]);
        let scales: [&[f32]; RM] = std::array::from_fn(|i| &p.scales[(rb + i) * ns..(rb + i + 1) * ns]);
        let biases: [&[f32]; RM] = std::array::from_fn(|i| &p.biases[(rb + i) * ns..(rb + i + 1) * ns]);
        for tb in (0..n_pad).step_by(RN) {
            let xs: [&[i8]; RN] = std::array::from_fn(|j| &a.codes[(tb + j) * n_in..(tb + j + 1) * n_in]);
            let ds: [&[f32]; RN] = std::array::from_fn(|j| &a.d32[(tb + j) * n_in / 32..(tb + j + 1) * n_in / 32]);
            let sums: [&[f32]; RN] = std::array::from_fn(|j| &a.sum16[(tb + j) * ns..(tb + j + 1) * ns]);
            let bias = p.has_bias.then_some((&biases, &sums));
            let tile = tile_product(&codes, &scales, &xs, &ds, bias, signed, p.per32);
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
                    // SAFETY: t < n_tokens, r0 + r < n_out (asserted above), and this task is the
                    // only one writing columns r0..r0 + rows.
                    unsafe { out.set(t, r0 + r, v) };
                }
            }
        }
    }
}

/// Scalar reference of the bias part of a tile: `Σ_k biases[i][k] · sums[j][k]`.
#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
fn bias_tile_scalar(biases: &[&[f32]; RM], sums: &[&[f32]; RN]) -> [[f32; RN]; RM] {
    std::array::from_fn(|i| std::array::from_fn(|j| biases[i].iter().zip(sums[j]).map(|(b, s)| b * s).sum()))
}

/// Scalar reference of the scaled integer part of a tile: `Σ_k scale16[i][k/16] · d32[j][k/32] ·
/// code[i][k] · x[j][k]` (codes signed bytes when `signed`).
#[cfg_attr(not(test), allow(dead_code))]
fn tile_scalar(
    codes: &[&[u8]; RM],
    scales: &[&[f32]; RM],
    xs: &[&[i8]; RN],
    ds: &[&[f32]; RN],
    signed: bool,
) -> [[f32; RN]; RM] {
    std::array::from_fn(|i| {
        std::array::from_fn(|j| {
            let mut y = 0f32;
            for s in 0..codes[i].len() / SUB {
                let mut acc = 0i32;
                for k in s * SUB..(s + 1) * SUB {
                    let w = if signed { codes[i][k] as i8 as i32 } else { codes[i][k] as i32 };
                    acc += w * xs[j][k] as i32;
                }
                y += scales[i][s] * ds[j][s / 2] * acc as f32;
            }
            y
        })
    })
}

/// Per-16 weight biases and activation sums of a tile.
type BiasParts<'a, 'b> = (&'a [&'b [f32]; RM], &'a [&'b [f32]; RN]);

/// The tile `Σ_k scale·d·code·x` plus, with `bias`, `Σ_s bias[i][s]·sum[j][s]`.
fn tile_product(
    codes: &[&[u8]; RM],
    scales: &[&[f32]; RM],
    xs: &[&[i8]; RN],
    ds: &[&[f32]; RN],
    bias: Option<BiasParts>,
    signed: bool,
    per32: bool,
) -> [[f32; RN]; RM] {
    let n = xs[0].len();
    assert!(n.is_multiple_of(32));
    assert!(codes.iter().all(|c| c.len() == n) && scales.iter().all(|s| s.len() == n / SUB));
    assert!(xs.iter().all(|x| x.len() == n) && ds.iter().all(|d| d.len() == n / 32));
    if let Some((b, s)) = bias {
        assert!(b.iter().all(|v| v.len() == n / SUB) && s.iter().all(|v| v.len() == n / SUB));
    }
    #[cfg(target_arch = "x86_64")]
    {
        let empty: [&[f32]; RM] = [&[]; RM];
        let empty_s: [&[f32]; RN] = [&[]; RN];
        let (b, s) = bias.unwrap_or((&empty, &empty_s));
        let has_bias = bias.is_some();
        // SAFETY: callers reach this only after `has_avx2()` confirmed AVX2 and FMA; slice lengths
        // were checked just above (bias slices only read when `has_bias`), and the kernel reads
        // within them.
        unsafe {
            match (signed, per32, has_bias) {
                (true, true, false) => avx2::tile::<true, true, false>(codes, scales, xs, ds, b, s),
                (true, false, false) => avx2::tile::<true, false, false>(codes, scales, xs, ds, b, s),
                (false, true, false) => avx2::tile::<false, true, false>(codes, scales, xs, ds, b, s),
                (false, false, false) => avx2::tile::<false, false, false>(codes, scales, xs, ds, b, s),
                (true, true, true) => avx2::tile::<true, true, true>(codes, scales, xs, ds, b, s),
                (true, false, true) => avx2::tile::<true, false, true>(codes, scales, xs, ds, b, s),
                (false, true, true) => avx2::tile::<false, true, true>(codes, scales, xs, ds, b, s),
                (false, false, true) => avx2::tile::<false, false, true>(codes, scales, xs, ds, b, s),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = per32;
        let mut t = tile_scalar(codes, scales, xs, ds, signed);
        if let Some((b, s)) = bias {
            let bt = bias_tile_scalar(b, s);
            for i in 0..RM {
                for j in 0..RN {
                    t[i][j] += bt[i][j];
                }
            }
        }
        t
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{RM, RN};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// AVX2 and FMA must be available; every slice holds `n` codes (`n % 32 == 0`), `n / 16`
    /// scales, `n / 32` activation scales, and with `BIAS` `n / 16` biases and sums.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const SIGNED: bool, const PER32: bool, const BIAS: bool>(
        codes: &[&[u8]; RM],
        scales: &[&[f32]; RM],
        xs: &[&[i8]; RN],
        ds: &[&[f32]; RN],
        biases: &[&[f32]; RM],
        sums: &[&[f32]; RN],
    ) -> [[f32; RN]; RM] {
        let n = xs[0].len();
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); RN]; RM];
        let n_chunks = n / 32;
        for c in 0..n_chunks {
            // SAFETY (all loads below): c * 32 + 32 <= n codes, 2 * c + 1 < n / 16 scales,
            // c < n / 32 activation scales.
            let x: [__m256i; RN] =
                std::array::from_fn(|j| unsafe { _mm256_loadu_si256(xs[j].as_ptr().add(c * 32).cast()) });
            let dx: [__m256; RN] = std::array::from_fn(|j| unsafe { _mm256_broadcast_ss(ds[j].get_unchecked(c)) });
            for i in 0..RM {
                let w = unsafe { _mm256_loadu_si256(codes[i].as_ptr().add(c * 32).cast()) };
                let sv = if PER32 {
                    unsafe { _mm256_broadcast_ss(scales[i].get_unchecked(2 * c)) }
                } else {
                    let s0 = unsafe { _mm256_broadcast_ss(scales[i].get_unchecked(2 * c)) };
                    let s1 = unsafe { _mm256_broadcast_ss(scales[i].get_unchecked(2 * c + 1)) };
                    _mm256_blend_ps(s0, s1, 0xF0)
                };
                let wabs = if SIGNED { _mm256_sign_epi8(w, w) } else { w };
                for j in 0..RN {
                    let p16 = if SIGNED {
                        _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(x[j], w))
                    } else {
                        _mm256_maddubs_epi16(w, x[j])
                    };
                    let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                    acc[i][j] = _mm256_fmadd_ps(p, _mm256_mul_ps(sv, dx[j]), acc[i][j]);
                }
            }
            if BIAS && c % 4 == 3 {
                // the 8 sub-blocks of the last 4 chunks; SAFETY: (c + 1) * 2 <= n / 16.
                let k = (c - 3) * 2;
                let sm: [__m256; RN] = std::array::from_fn(|j| unsafe { _mm256_loadu_ps(sums[j].as_ptr().add(k)) });
                for i in 0..RM {
                    let b = unsafe { _mm256_loadu_ps(biases[i].as_ptr().add(k)) };
                    for j in 0..RN {
                        acc[i][j] = _mm256_fmadd_ps(b, sm[j], acc[i][j]);
                    }
                }
            }
        }
        if BIAS && !n_chunks.is_multiple_of(4) {
            // the remaining 2, 4 or 6 sub-blocks
            let k = n_chunks / 4 * 8;
            let rem = (2 * (n_chunks % 4)) as i32;
            let mask = _mm256_setr_epi32(
                -((rem > 0) as i32),
                -((rem > 1) as i32),
                -((rem > 2) as i32),
                -((rem > 3) as i32),
                -((rem > 4) as i32),
                -((rem > 5) as i32),
                -((rem > 6) as i32),
                0,
            );
            // SAFETY: the mask only enables lanes k..k + rem < n / 16.
            let sm: [__m256; RN] =
                std::array::from_fn(|j| unsafe { _mm256_maskload_ps(sums[j].as_ptr().add(k), mask) });
            for i in 0..RM {
                let b = unsafe { _mm256_maskload_ps(biases[i].as_ptr().add(k), mask) };
                for j in 0..RN {
                    acc[i][j] = _mm256_fmadd_ps(b, sm[j], acc[i][j]);
                }
            }
        }
        let mut out = [[0f32; RN]; RM];
        for i in 0..RM {
            for j in 0..RN {
                out[i][j] = unsafe { hsum(acc[i][j]) };
            }
        }
        out
    }
}

/// `y = x Wᵀ` in f32 for `n_tokens` activation rows `x` (`n_in` each) and `n_out` weight rows
/// produced `panel` rows at a time by `fill(r0, buf)` (rows `r0..r0 + buf.len() / n_in`,
/// row-major); `y` is `n_tokens × n_out`, row-major. Panels run in parallel, each a blocked GEMM
/// writing its columns of `y` in place.
pub fn matmul_f32_panels(
    n_out: usize,
    n_in: usize,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
    panel: usize,
    fill: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    use rayon::prelude::*;
    assert_eq!(x.len(), n_tokens * n_in, "activation size");
    let out = SharedOut::new(y, n_tokens, n_out);
    if n_out == 0 || n_tokens == 0 || n_in == 0 {
        return;
    }
    let panel = panel.max(1);
    (0..n_out.div_ceil(panel)).into_par_iter().for_each(|pi| {
        let r0 = pi * panel;
        let rows = panel.min(n_out - r0);
        let mut wf = vec![0f32; rows * n_in];
        fill(r0, &mut wf);
        // SAFETY: element (r, t) of this product goes to y[t * n_out + r0 + r]: r0 + r < n_out and
        // t < n_tokens keep it inside `y` (size asserted by `SharedOut::new`), and only this task
        // writes columns r0..r0 + rows. `wf` is rows × n_in (row stride n_in) and `x` viewed as
        // an n_in × n_tokens matrix has element (k, t) at t * n_in + k.
        unsafe {
            gemm::gemm(
                rows,
                n_tokens,
                n_in,
                out.column(r0),
                n_out as isize,
                1,
                false,
                wf.as_ptr(),
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
    });
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
                    let got = yt[t * n_out + r];
                    assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{ty} r{r} t{t}: {got} vs {want}");
                }
            }
        }
    }

    /// The SIMD tile kernels equal the scalar reference (integer parts exact, floats to rounding).
    #[test]
    fn simd_tiles_match_scalar() {
        if !has_avx2() {
            return;
        }
        let n = 96;
        let r = rand(10_000, 5);
        let mut it = r.iter().map(|v| ((v + 1.0) * 127.9) as i32);
        for signed in [false, true] {
            for per32 in [false, true] {
                let codes: Vec<Vec<u8>> = (0..RM)
                    .map(|_| {
                        (0..n)
                            .map(|_| {
                                if signed {
                                    (it.next().unwrap() - 127) as i8 as u8
                                } else {
                                    (it.next().unwrap() & 15) as u8
                                }
                            })
                            .collect()
                    })
                    .collect();
                let scales: Vec<Vec<f32>> = (0..RM)
                    .map(|i| (0..n / SUB).map(|s| 0.01 * (1 + i + if per32 { s / 2 } else { s }) as f32).collect())
                    .collect();
                let xs: Vec<Vec<i8>> =
                    (0..RN).map(|_| (0..n).map(|_| (it.next().unwrap() - 127).min(127) as i8).collect()).collect();
                let ds: Vec<Vec<f32>> =
                    (0..RN).map(|j| (0..n / 32).map(|b| 0.02 * (1 + j + b) as f32).collect()).collect();
                let c: [&[u8]; RM] = std::array::from_fn(|i| &codes[i][..]);
                let s: [&[f32]; RM] = std::array::from_fn(|i| &scales[i][..]);
                let x: [&[i8]; RN] = std::array::from_fn(|j| &xs[j][..]);
                let d: [&[f32]; RN] = std::array::from_fn(|j| &ds[j][..]);
                let got = tile_product(&c, &s, &x, &d, None, signed, per32);
                let want = tile_scalar(&c, &s, &x, &d, signed);
                for i in 0..RM {
                    for j in 0..RN {
                        let (g, w) = (got[i][j], want[i][j]);
                        assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "signed {signed} per32 {per32}: {g} vs {w}");
                    }
                }
            }
        }
        // with biases, n / 16 = 36 sub-blocks (a partial group of 8 at the end)
        let n = 576;
        let codes: Vec<Vec<u8>> =
            (0..RM).map(|i| rand(n, 30 + i as u64).iter().map(|v| ((v + 1.0) * 7.9) as u8).collect()).collect();
        let scales: Vec<Vec<f32>> = (0..RM).map(|i| rand(n / SUB, 40 + i as u64)).collect();
        let biases: Vec<Vec<f32>> = (0..RM).map(|i| rand(n / SUB, 10 + i as u64)).collect();
        let xs: Vec<Vec<i8>> =
            (0..RN).map(|j| rand(n, 50 + j as u64).iter().map(|v| (v * 127.0) as i8).collect()).collect();
        let ds: Vec<Vec<f32>> = (0..RN).map(|j| rand(n / 32, 60 + j as u64)).collect();
        let sums: Vec<Vec<f32>> = (0..RN).map(|j| rand(n / SUB, 20 + j as u64)).collect();
        let c: [&[u8]; RM] = std::array::from_fn(|i| &codes[i][..]);
        let s: [&[f32]; RM] = std::array::from_fn(|i| &scales[i][..]);
        let b: [&[f32]; RM] = std::array::from_fn(|i| &biases[i][..]);
        let x: [&[i8]; RN] = std::array::from_fn(|j| &xs[j][..]);
        let d: [&[f32]; RN] = std::array::from_fn(|j| &ds[j][..]);
        let sm: [&[f32]; RN] = std::array::from_fn(|j| &sums[j][..]);
        let got = tile_product(&c, &s, &x, &d, Some((&b, &sm)), false, false);
        let (want, bias) = (tile_scalar(&c, &s, &x, &d, false), bias_tile_scalar(&b, &sm));
        for i in 0..RM {
            for j in 0..RN {
                let w = want[i][j] + bias[i][j];
                assert!((got[i][j] - w).abs() <= 1e-4 * (1.0 + w.abs()), "bias: {} vs {w}", got[i][j]);
            }
        }
    }

    #[test]
    fn f32_panels_match_naive() {
        let (n_out, n_in, n_tok) = (37, 33, 6);
        let w = rand(n_out * n_in, 7);
        let x = rand(n_tok * n_in, 8);
        let mut y = vec![0f32; n_tok * n_out];
        matmul_f32_panels(n_out, n_in, &x, n_tok, &mut y, 8, &|r0, buf| {
            buf.copy_from_slice(&w[r0 * n_in..r0 * n_in + buf.len()]);
        });
        for r in 0..n_out {
            for t in 0..n_tok {
                let want: f32 = (0..n_in).map(|k| w[r * n_in + k] * x[t * n_in + k]).sum();
                assert!((y[t * n_out + r] - want).abs() < 1e-4);
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
