//! Matrix products for prompt processing: a quantized (or f32) weight matrix times many activation
//! rows at once, each weight read once per tile of tokens instead of once per token.
//!
//! Key decision: a panel of weight rows is first unpacked to one integer code per weight plus, per
//! sub-block of 16 or 32 weights, a float `scale` and `bias` (`w = scale * code + bias`; every
//! legacy and k-quant format has this form), interleaved by tiles of 8 rows so that one AVX2
//! vector holds 4 consecutive codes of each of the 8 rows. Activations are quantized to the weight
//! type's dot type exactly as [`crate::Kernels::quantize`] does for `vec_dot` (Q8_0 / Q8_1 / Q8_K,
//! as llama.cpp does). A tile of 8 rows × 4 tokens then multiplies each code vector by 4 broadcast
//! activation bytes (`maddubs`), sums a sub-block's products in integers (16-bit as long as they
//! cannot overflow, then 32-bit), and applies the float scales once per sub-block for all 8 rows
//! at once. The integer products are the same as the vec_dot kernels'; only the order in which
//! float scales are applied differs, which changes results in the last bits. The bias part adds
//! `bias · (scaled activation sum of the sub-block)` per sub-block.
//!
//! F32 weights go through the `gemm` crate.

// Kernels index several parallel arrays by the same position.
#![allow(clippy::needless_range_loop)]

use crunch_core::GgmlType;
use half::f16;

use crate::kquants::{read_blocks, unpack_scale_min_k4};

/// Sub-block length sharing one scale and bias.
const SUB: usize = 16;
/// Weight rows per tile of the AVX2 kernel (one 256-bit vector of f32 outputs).
const TR: usize = 8;
/// Weight rows per tile of the AVX-512 VNNI kernel (one 512-bit vector of f32 outputs); the
/// widest tile, the size of a tile's output rows.
const TR_MAX: usize = 16;
/// Tokens per tile.
const RN: usize = 4;

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

/// Whether the AVX-512 VNNI tile kernel can be used (and `CRUNCH_NO_VNNI` is not set, to
/// measure or test the AVX2 kernel on such CPUs).
fn use_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static V: OnceLock<bool> = OnceLock::new();
        *V.get_or_init(|| {
            has_avx2()
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512vnni")
                && std::env::var_os("CRUNCH_NO_VNNI").is_none()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// How a panel's codes are laid out for one tile kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// AVX2: tiles of [`TR`] rows; signed codes kept as `i8` with their absolute values beside
    /// them (the `maddubs` sign trick).
    Avx2,
    /// AVX-512 VNNI: tiles of [`TR_MAX`] rows; signed codes stored offset by 128 as unsigned
    /// bytes, the offset taken out of each sub-block's integer sum exactly
    /// (`Σ c·x = Σ (c + 128)·x − 128 · Σ x`).
    Vnni512,
}

impl Kernel {
    fn rows(self) -> usize {
        match self {
            Kernel::Avx2 => TR,
            Kernel::Vnni512 => TR_MAX,
        }
    }

    /// Whether signed codes are stored with the +128 offset (else as `i8` with `|code|`).
    fn offset(self) -> bool {
        self == Kernel::Vnni512
    }

    fn best() -> Self {
        if use_vnni() {
            Kernel::Vnni512
        } else {
            Kernel::Avx2
        }
    }
}

/// Unpack one block: codes (one per element), scale and bias per 16 elements.
pub(crate) type DecodeFn = fn(block: &[u8], codes: &mut [u8], scales: &mut [f32], biases: &mut [f32]);

pub(crate) struct Decoder {
    /// Elements and bytes per block.
    pub(crate) elems: usize,
    pub(crate) bytes: usize,
    /// Codes are signed bytes (i8 stored as u8), not small unsigned numbers.
    pub(crate) signed: bool,
    pub(crate) decode: DecodeFn,
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

pub(crate) fn decoder(ty: GgmlType) -> Option<Decoder> {
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

/// Activations quantized for one weight type: per token `n_in` codes, a scale per 32, the
/// scaled sum of each 16 and the integer sum of each 32.
struct Acts {
    n_in: usize,
    codes: Vec<i8>,
    d32: Vec<f32>,
    sum16: Vec<f32>,
    isum32: Vec<i32>,
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
        isum32: vec![0; n_pad * n_in / 32],
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
        .zip(acts.isum32.par_chunks_mut(n_in / 32))
        .zip(x.par_chunks(n_in).take(n_tokens))
        .for_each(|((((codes, d32), sum16), isum32), src)| {
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
                // integer sums of each 16 codes, once: the 32-sums and the scaled 16-sums follow
                let mut s16 = [0i32; 256 / 16];
                for (o, c) in s16.iter_mut().zip(codes[e0..e0 + elems].chunks_exact(16)) {
                    *o = c.iter().map(|&v| v as i32).sum();
                }
                let s16 = &s16[..elems / 16];
                for (s, pair) in isum32[e0 / 32..(e0 + elems) / 32].iter_mut().zip(s16.chunks_exact(2)) {
                    *s = pair[0] + pair[1];
                }
                let sums = &mut sum16[e0 / 16..(e0 + elems) / 16];
                if dot_type == GgmlType::Q8_1 {
                    // llama.cpp's Q4_1/Q5_1 dots use the block's stored (f16) sum `s`; both halves
                    // share one bias, so half of it each gives the same product.
                    sums.fill(h(blk, 2) * 0.5);
                } else {
                    for (o, &v) in sums.iter_mut().zip(s16) {
                        *o = d * v as f32;
                    }
                }
            }
        });
    Some(acts)
}

/// How a type's codes are multiplied: sub-block length sharing one scale and bias (16 or 32),
/// and how many byte-pair products may be summed in 16 bits before widening (from the largest
/// code: `2 · group · max_code · 127 < 2^15`); signed codes use the sign trick instead.
#[derive(Clone, Copy)]
struct Shape {
    sub: usize,
    group: usize,
}

fn shape(ty: GgmlType) -> Shape {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K => Shape { sub: 32, group: 8 },
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => Shape { sub: 32, group: 4 },
        GgmlType::Q6_K => Shape { sub: 16, group: 2 },
        GgmlType::Q3_K | GgmlType::Q2_K => Shape { sub: 16, group: 4 },
        // signed codes (Q8_0, IQ4_NL): one product per widening
        _ => Shape { sub: 32, group: 1 },
    }
}

/// Unpacked weight rows, interleaved by tiles of `tr` rows ([`Kernel::rows`]): for each step of
/// 4 elements, the 4 codes of each of the tile's rows (`4 · tr` bytes), so that one vector holds 4
/// products' worth of every row; per sub-block the tile's `tr` scales and `tr` biases. Signed
/// types keep `|code|` too for the AVX2 kernel, or are offset by 128 for the VNNI one.
struct Panel {
    tr: usize,
    tiles: usize,
    codes: Vec<u8>,
    abs: Vec<u8>,
    scales: Vec<f32>,
    biases: Vec<f32>,
}

fn unpack_panel(
    dec: &Decoder,
    sh: Shape,
    kernel: Kernel,
    w: &[u8],
    row_bytes: usize,
    n_in: usize,
    rows: usize,
) -> Panel {
    let tr = kernel.rows();
    let tiles = rows.div_ceil(tr);
    let ns = n_in / sh.sub;
    let keep_abs = dec.signed && !kernel.offset();
    let mut p = Panel {
        tr,
        tiles,
        codes: vec![0; tiles * tr * n_in],
        abs: if keep_abs { vec![0; tiles * tr * n_in] } else { Vec::new() },
        scales: vec![0.0; tiles * tr * ns],
        biases: vec![0.0; tiles * tr * ns],
    };
    let mut codes = vec![0u8; n_in];
    let mut s16 = vec![0f32; n_in / SUB];
    let mut z16 = vec![0f32; n_in / SUB];
    let per16 = sh.sub / SUB;
    for r in 0..rows {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        for (bi, blk) in row.chunks_exact(dec.bytes).enumerate() {
            let e0 = bi * dec.elems;
            let (s0, s1) = (e0 / SUB, (e0 + dec.elems) / SUB);
            (dec.decode)(blk, &mut codes[e0..e0 + dec.elems], &mut s16[s0..s1], &mut z16[s0..s1]);
        }
        if dec.signed && kernel.offset() {
            // i8 code c as the unsigned byte c + 128
            codes.iter_mut().for_each(|c| *c ^= 0x80);
        }
        let (t, lane) = (r / tr, r % tr);
        let base = t * tr * n_in;
        for (k, quad) in codes.chunks_exact(4).enumerate() {
            let o = base + k * 4 * tr + lane * 4;
            p.codes[o..o + 4].copy_from_slice(quad);
            if keep_abs {
                for b in 0..4 {
                    p.abs[o + b] = (quad[b] as i8).unsigned_abs();
                }
            }
        }
        for s in 0..ns {
            p.scales[(t * ns + s) * tr + lane] = s16[s * per16];
            p.biases[(t * ns + s) * tr + lane] = z16[s * per16];
        }
    }
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

    /// Store `v` at `(token t, columns r..r + v.len())`.
    ///
    /// # Safety
    /// `t < n_tokens`, `r + v.len() <= n_out`, and no other task writes these columns.
    #[inline(always)]
    unsafe fn set(self, t: usize, r: usize, v: &[f32]) {
        debug_assert!(t < self.n_tokens && r + v.len() <= self.n_out);
        // SAFETY: in bounds by the caller's contract; no concurrent writer of these elements.
        let dst = unsafe { self.ptr.add(t * self.n_out + r) };
        // SAFETY: as above, v.len() elements from `dst`; `v` is another allocation.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), dst, v.len()) };
    }
}

/// Weight rows per parallel task in [`matmul_quant`].
const PANEL: usize = 32;

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
    matmul_quant_with(Kernel::best(), ty, w, (n_in, n_out), x, n_tokens, y)
}

/// [`matmul_quant`] with the given tile kernel (which the CPU must support).
fn matmul_quant_with(
    kernel: Kernel,
    ty: GgmlType,
    w: &[u8],
    (n_in, n_out): (usize, usize),
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
    let sh = shape(ty);
    let n_pad = n_tokens.div_ceil(RN) * RN;
    let Some(mut acts) = quantize_acts(x, n_tokens, n_pad, n_in, k.dot_type) else {
        return false;
    };
    if sh.sub == 32 {
        // biases are per 32 (both halves equal): the activation sum of each 32
        acts.sum16 = acts.sum16.chunks_exact(2).map(|p| p[0] + p[1]).collect();
    }
    let out = SharedOut::new(y, n_tokens, n_out);
    (0..n_out.div_ceil(PANEL)).into_par_iter().for_each(|pi| {
        let r0 = pi * PANEL;
        let rows = PANEL.min(n_out - r0);
        let wp = &w[r0 * row_bytes..(r0 + rows) * row_bytes];
        let panel = unpack_panel(&dec, sh, kernel, wp, row_bytes, n_in, rows);
        panel_product(&panel, &acts, Codes::of(dec.signed, kernel), sh, out, r0, rows);
    });
    true
}

/// How the codes of a tile are to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Codes {
    /// Small unsigned numbers with a bias per sub-block.
    Unsigned,
    /// `i8` codes, `|code|` beside them (AVX2).
    Signed,
    /// `i8` codes stored as `code + 128` (VNNI).
    Offset,
}

impl Codes {
    fn of(signed: bool, kernel: Kernel) -> Self {
        match (signed, kernel.offset()) {
            (false, _) => Codes::Unsigned,
            (true, false) => Codes::Signed,
            (true, true) => Codes::Offset,
        }
    }
}

/// One tile's inputs: the tile's interleaved codes (and `|codes|` for [`Codes::Signed`]), per
/// sub-block its scales and biases, and for each of its tokens the codes, scales per 32, scaled
/// sums per sub-block and integer sums per 32.
struct TileIn<'a> {
    /// Rows in the tile (8 or 16).
    tr: usize,
    codes: &'a [u8],
    abs: &'a [u8],
    scales: &'a [f32],
    biases: &'a [f32],
    xs: [&'a [i8]; RN],
    ds: [&'a [f32]; RN],
    sums: [&'a [f32]; RN],
    isums: [&'a [i32]; RN],
}

/// A tile's result: `RN` tokens × up to [`TR_MAX`] rows (the first `tr` are used).
type TileOut = [[f32; TR_MAX]; RN];

/// Rows `r0..r0 + rows` of the output from their unpacked panel.
fn panel_product(p: &Panel, a: &Acts, codes: Codes, sh: Shape, out: SharedOut, r0: usize, rows: usize) {
    let n_in = a.n_in;
    let ns = n_in / sh.sub;
    let n_tokens = out.n_tokens;
    let n_pad = a.codes.len() / n_in;
    let tr = p.tr;
    assert!(r0 + rows <= out.n_out && n_pad >= n_tokens && p.tiles * tr >= rows);
    for t in 0..p.tiles {
        let rows_here = tr.min(rows - t * tr);
        for tb in (0..n_pad).step_by(RN) {
            let ti = TileIn {
                tr,
                codes: &p.codes[t * tr * n_in..(t + 1) * tr * n_in],
                abs: if codes == Codes::Signed { &p.abs[t * tr * n_in..(t + 1) * tr * n_in] } else { &[] },
                scales: &p.scales[t * tr * ns..(t + 1) * tr * ns],
                biases: &p.biases[t * tr * ns..(t + 1) * tr * ns],
                xs: std::array::from_fn(|j| &a.codes[(tb + j) * n_in..(tb + j + 1) * n_in]),
                ds: std::array::from_fn(|j| &a.d32[(tb + j) * n_in / 32..(tb + j + 1) * n_in / 32]),
                sums: std::array::from_fn(|j| &a.sum16[(tb + j) * ns..(tb + j + 1) * ns]),
                isums: std::array::from_fn(|j| &a.isum32[(tb + j) * n_in / 32..(tb + j + 1) * n_in / 32]),
            };
            let tile = tile_product(&ti, codes, sh);
            for (j, v) in tile.iter().enumerate() {
                if tb + j >= n_tokens {
                    break;
                }
                // SAFETY: tb + j < n_tokens, r0 + t * tr + rows_here <= r0 + rows <= n_out
                // (asserted above), and this task is the only one writing columns r0..r0 + rows.
                unsafe { out.set(tb + j, r0 + t * tr, &v[..rows_here]) };
            }
        }
    }
}

/// Scalar reference of a tile: `out[j][l] = Σ_s scale[s][l] · Σ_{k in s} d32[j][k/32] · code[l][k]
/// · x[j][k] + (unsigned codes) Σ_s bias[s][l] · sum[j][s]`.
#[cfg_attr(not(test), allow(dead_code))]
fn tile_scalar(ti: &TileIn, codes: Codes, sh: Shape) -> TileOut {
    let n = ti.xs[0].len();
    let tr = ti.tr;
    std::array::from_fn(|j| {
        std::array::from_fn(|l| {
            let mut y = 0f32;
            if l >= tr {
                return y;
            }
            for s in 0..n / sh.sub {
                let mut acc = 0i32;
                for k in s * sh.sub..(s + 1) * sh.sub {
                    let c = ti.codes[(k / 4) * 4 * tr + l * 4 + k % 4];
                    let w = match codes {
                        Codes::Unsigned => c as i32,
                        Codes::Signed => c as i8 as i32,
                        Codes::Offset => c as i32 - 128,
                    };
                    acc += w * ti.xs[j][k] as i32;
                }
                y += ti.scales[s * tr + l] * ti.ds[j][s * sh.sub / 32] * acc as f32;
                if codes == Codes::Unsigned {
                    y += ti.biases[s * tr + l] * ti.sums[j][s];
                }
            }
            y
        })
    })
}

/// One tile with the kernel its layout was made for (the scalar reference where no SIMD kernel
/// fits).
fn tile_product(ti: &TileIn, codes: Codes, sh: Shape) -> TileOut {
    let n = ti.xs[0].len();
    let ns = n / sh.sub;
    let tr = ti.tr;
    assert!(n.is_multiple_of(32) && n.is_multiple_of(sh.sub));
    assert!(ti.codes.len() == tr * n && (codes != Codes::Signed || ti.abs.len() == tr * n));
    assert!(ti.scales.len() == tr * ns && ti.biases.len() == tr * ns);
    assert!(ti.xs.iter().all(|x| x.len() == n) && ti.ds.iter().all(|d| d.len() == n / 32));
    assert!(ti.sums.iter().all(|s| s.len() == ns) && ti.isums.iter().all(|s| s.len() == n / 32));
    #[cfg(target_arch = "x86_64")]
    {
        if tr == TR_MAX && use_vnni() {
            // SAFETY: `use_vnni()` confirmed AVX2, FMA, AVX-512F and VNNI; slice lengths were
            // checked just above, and the kernel reads within them.
            return unsafe {
                match (codes, sh.sub) {
                    (Codes::Offset, 32) => vnni::tile::<true, 32>(ti),
                    (Codes::Unsigned, 32) => vnni::tile::<false, 32>(ti),
                    (Codes::Unsigned, 16) => vnni::tile::<false, 16>(ti),
                    _ => tile_scalar(ti, codes, sh),
                }
            };
        }
        if tr == TR && has_avx2() {
            // SAFETY: `has_avx2()` confirmed AVX2 and FMA; lengths as checked above.
            return unsafe {
                match (codes, sh.sub, sh.group) {
                    (Codes::Signed, 32, _) => avx2::tile::<true, 32, 1>(ti),
                    (Codes::Unsigned, 32, 8) => avx2::tile::<false, 32, 8>(ti),
                    (Codes::Unsigned, 32, 4) => avx2::tile::<false, 32, 4>(ti),
                    (Codes::Unsigned, 16, 4) => avx2::tile::<false, 16, 4>(ti),
                    (Codes::Unsigned, 16, 2) => avx2::tile::<false, 16, 2>(ti),
                    _ => tile_scalar(ti, codes, sh),
                }
            };
        }
    }
    tile_scalar(ti, codes, sh)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{TileIn, TileOut, RN, TR};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2 and FMA must be available; `ti` is a tile of [`TR`] rows with the lengths
    /// [`super::tile_product`] checks, for sub-blocks of `SUBL` elements; `GROUP` divides
    /// `SUBL / 4` and keeps 16-bit sums in range.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const SIGNED: bool, const SUBL: usize, const GROUP: usize>(ti: &TileIn) -> TileOut {
        let n = ti.xs[0].len();
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); RN];
        let steps = SUBL / 4;
        let cp = ti.codes.as_ptr();
        let ap = ti.abs.as_ptr();
        for s in 0..n / SUBL {
            let mut isum = [_mm256_setzero_si256(); RN];
            for g in (0..steps).step_by(GROUP) {
                let mut p16 = [_mm256_setzero_si256(); RN];
                for q in 0..GROUP {
                    let k = s * steps + g + q;
                    // SAFETY: k < n / 4, so the 32 bytes at k * 32 are inside the tile's
                    // TR * n codes; the 4 activation bytes at 4k are inside each token's n.
                    let w = unsafe { _mm256_loadu_si256(cp.add(k * 32).cast()) };
                    let wabs = if SIGNED { unsafe { _mm256_loadu_si256(ap.add(k * 32).cast()) } } else { w };
                    for j in 0..RN {
                        let xv = unsafe { (ti.xs[j].as_ptr().add(4 * k) as *const i32).read_unaligned() };
                        let xb = _mm256_set1_epi32(xv);
                        let prod = if SIGNED {
                            _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(xb, w))
                        } else {
                            _mm256_maddubs_epi16(w, xb)
                        };
                        p16[j] = if GROUP == 1 { prod } else { _mm256_add_epi16(p16[j], prod) };
                    }
                }
                for j in 0..RN {
                    isum[j] = _mm256_add_epi32(isum[j], _mm256_madd_epi16(p16[j], ones));
                }
            }
            // SAFETY: s < n / SUBL sub-blocks: TR scales and biases at s * TR; one activation
            // scale per 32 and one sum per sub-block.
            let sc = unsafe { _mm256_loadu_ps(ti.scales.as_ptr().add(s * TR)) };
            let bias = if SIGNED { sc } else { unsafe { _mm256_loadu_ps(ti.biases.as_ptr().add(s * TR)) } };
            for j in 0..RN {
                let dx = unsafe { _mm256_broadcast_ss(ti.ds[j].get_unchecked(s * SUBL / 32)) };
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[j]), _mm256_mul_ps(sc, dx), acc[j]);
                if !SIGNED {
                    let sm = unsafe { _mm256_broadcast_ss(ti.sums[j].get_unchecked(s)) };
                    acc[j] = _mm256_fmadd_ps(bias, sm, acc[j]);
                }
            }
        }
        let mut out = [[0f32; super::TR_MAX]; RN];
        for j in 0..RN {
            // SAFETY: `out[j]` holds TR_MAX >= TR = 8 floats.
            unsafe { _mm256_storeu_ps(out[j].as_mut_ptr(), acc[j]) };
        }
        out
    }
}

/// The tile kernel with AVX-512 VNNI: tiles of 16 rows, `vpdpbusd` on 512-bit vectors multiplies
/// and sums 4 byte pairs of each of the 16 rows into 32-bit lanes directly (no 16-bit grouping).
/// Signed codes arrive offset by 128 (unsigned) and the offset is taken out of each sub-block's
/// integer sum with the activations' integer sum, so the result is the exact integer product.
#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{TileIn, TileOut, RN, TR_MAX};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2, FMA, AVX-512F and AVX-512 VNNI must be available; `ti` is a tile of [`TR_MAX`] rows
    /// with the lengths [`super::tile_product`] checks, for sub-blocks of `SUBL` elements
    /// (`SUBL` = 32 when `OFFSET`).
    #[target_feature(enable = "avx2,fma,avx512f,avx512vnni")]
    pub(super) unsafe fn tile<const OFFSET: bool, const SUBL: usize>(ti: &TileIn) -> TileOut {
        let n = ti.xs[0].len();
        let mut acc = [_mm512_setzero_ps(); RN];
        let steps = SUBL / 4;
        let cp = ti.codes.as_ptr();
        for s in 0..n / SUBL {
            // Two accumulators per token (even and odd steps): 2 · RN independent `vpdpbusd`
            // chains hide the instruction's latency.
            let mut isum = [[_mm512_setzero_si512(); RN]; 2];
            for q in 0..steps {
                let k = s * steps + q;
                // SAFETY: k < n / 4, so the 64 bytes at k * 64 are inside the tile's TR_MAX * n
                // codes; the 4 activation bytes at 4k are inside each token's n.
                let w = unsafe { _mm512_loadu_si512(cp.add(k * 64).cast()) };
                let a = &mut isum[q & 1];
                for j in 0..RN {
                    let xv = unsafe { (ti.xs[j].as_ptr().add(4 * k) as *const i32).read_unaligned() };
                    a[j] = _mm512_dpbusd_epi32(a[j], w, _mm512_set1_epi32(xv));
                }
            }
            // SAFETY: s < n / SUBL sub-blocks: TR_MAX scales and biases at s * TR_MAX; one
            // activation scale and integer sum per 32 and one scaled sum per sub-block.
            let sc = unsafe { _mm512_loadu_ps(ti.scales.as_ptr().add(s * TR_MAX)) };
            let bias = if OFFSET { sc } else { unsafe { _mm512_loadu_ps(ti.biases.as_ptr().add(s * TR_MAX)) } };
            for j in 0..RN {
                let mut is = _mm512_add_epi32(isum[0][j], isum[1][j]);
                if OFFSET {
                    let xs = unsafe { *ti.isums[j].get_unchecked(s * SUBL / 32) };
                    is = _mm512_sub_epi32(is, _mm512_set1_epi32(128 * xs));
                }
                let dx = _mm512_set1_ps(unsafe { *ti.ds[j].get_unchecked(s * SUBL / 32) });
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_mul_ps(sc, dx), acc[j]);
                if !OFFSET {
                    let sm = _mm512_set1_ps(unsafe { *ti.sums[j].get_unchecked(s) });
                    acc[j] = _mm512_fmadd_ps(bias, sm, acc[j]);
                }
            }
        }
        let mut out = [[0f32; TR_MAX]; RN];
        for j in 0..RN {
            // SAFETY: `out[j]` holds TR_MAX = 16 floats.
            unsafe { _mm512_storeu_ps(out[j].as_mut_ptr(), acc[j]) };
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
            gemm_raw(
                (rows, n_tokens, n_in),
                out.column(r0),
                Strides { rs: 1, cs: n_out },
                wf.as_ptr(),
                Strides { rs: n_in, cs: 1 },
                x.as_ptr(),
                Strides { rs: 1, cs: n_in },
            );
        }
    });
}

/// `y = x Wᵀ` in f32 for a row-major f32 weight `w` (`n_out` rows of `n_in`) read in place, and
/// `n_tokens` activation rows `x`; `y` is `n_tokens × n_out`, row-major. The rows are split into a
/// few blocks per thread, each a blocked GEMM writing its columns of `y` in place.
///
/// # Panics
/// If a slice's length does not match the shape.
pub fn matmul_f32(w: &[f32], n_out: usize, n_in: usize, x: &[f32], n_tokens: usize, y: &mut [f32]) {
    use rayon::prelude::*;
    assert_eq!(w.len(), n_out * n_in, "weight size");
    assert_eq!(x.len(), n_tokens * n_in, "activation size");
    let out = SharedOut::new(y, n_tokens, n_out);
    if n_out == 0 || n_tokens == 0 || n_in == 0 {
        return;
    }
    let block = f32_block_rows(n_out);
    (0..n_out.div_ceil(block)).into_par_iter().for_each(|bi| {
        let r0 = bi * block;
        let rows = block.min(n_out - r0);
        // SAFETY: as in `matmul_f32_panels`; the weight view is rows r0..r0 + rows of `w`
        // (row stride n_in), inside `w` by the size assertion.
        unsafe {
            gemm_raw(
                (rows, n_tokens, n_in),
                out.column(r0),
                Strides { rs: 1, cs: n_out },
                w.as_ptr().add(r0 * n_in),
                Strides { rs: n_in, cs: 1 },
                x.as_ptr(),
                Strides { rs: 1, cs: n_in },
            );
        }
    });
}

/// Weight rows per parallel task of an f32 product with `n_out` rows: about 8 tasks per thread
/// (load balance), at least 32 rows (GEMM efficiency), at most 2048 (buffer size).
pub fn f32_block_rows(n_out: usize) -> usize {
    (n_out / (rayon::current_num_threads() * 8)).clamp(32, 2048)
}

/// A strided matrix view for [`gemm_f32_strided`]: element `(i, j)` at `i * rs + j * cs`.
#[derive(Clone, Copy, Debug)]
pub struct Strides {
    pub rs: usize,
    pub cs: usize,
}

/// `dst = lhs · rhs` for an `m × k` `lhs` and a `k × n` `rhs`, all three strided views of slices
/// (single-threaded blocked GEMM). Panics if a view reaches outside its slice or if two `dst`
/// elements would share a place.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    ds: Strides,
    lhs: &[f32],
    ls: Strides,
    rhs: &[f32],
    rs: Strides,
) {
    gemm_f32_checked(false, (m, n, k), dst, ds, lhs, ls, rhs, rs);
}

/// `dst += lhs · rhs`, otherwise as [`gemm_f32_strided`]: the accumulating form lets a caller
/// sum products over slices of the inner dimension (panels of a weight's rows, say) straight
/// into one destination, without a temporary per slice.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32_strided_acc(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    ds: Strides,
    lhs: &[f32],
    ls: Strides,
    rhs: &[f32],
    rs: Strides,
) {
    gemm_f32_checked(true, (m, n, k), dst, ds, lhs, ls, rhs, rs);
}

/// The bounds and overlap checks of [`gemm_f32_strided`] and [`gemm_f32_strided_acc`], then the
/// product (added to `dst` when `accumulate`, else written over it).
#[allow(clippy::too_many_arguments)]
fn gemm_f32_checked(
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    ds: Strides,
    lhs: &[f32],
    ls: Strides,
    rhs: &[f32],
    rs: Strides,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, s: Strides| (rows - 1) * s.rs + (cols - 1) * s.cs;
    assert!(last(m, n, ds) < dst.len(), "gemm destination view out of bounds");
    assert!(
        (ds.cs >= 1 && ds.rs >= n * ds.cs)
            || (ds.rs >= 1 && ds.cs >= m * ds.rs)
            || (m == 1 && ds.cs >= 1)
            || (n == 1 && ds.rs >= 1),
        "gemm destination elements overlap"
    );
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[i * ds.rs + j * ds.cs] = 0.0;
                }
            }
        }
        return;
    }
    assert!(last(m, k, ls) < lhs.len(), "gemm lhs view out of bounds");
    assert!(last(k, n, rs) < rhs.len(), "gemm rhs view out of bounds");
    // SAFETY: every element addressed by the three views is inside its slice (asserted above),
    // distinct destination elements are distinct places, and `dst` is borrowed mutably (no alias
    // with `lhs` or `rhs`).
    unsafe { gemm_raw_acc(accumulate, (m, n, k), dst.as_mut_ptr(), ds, lhs.as_ptr(), ls, rhs.as_ptr(), rs) };
}

/// The one call into the `gemm` crate: `dst = lhs · rhs`, `(m, n, k)` = rows of `dst`, columns
/// of `dst`, inner dimension; single-threaded (callers split the work).
///
/// # Safety
/// Every element the three views address must be inside its allocation, distinct `dst` elements
/// must be distinct places, and no other thread may touch the `dst` elements meanwhile.
unsafe fn gemm_raw(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    ds: Strides,
    lhs: *const f32,
    ls: Strides,
    rhs: *const f32,
    rs: Strides,
) {
    // SAFETY: forwarded from the caller's contract.
    unsafe { gemm_raw_acc(false, (m, n, k), dst, ds, lhs, ls, rhs, rs) }
}

/// [`gemm_raw`], adding the product to `dst` when `accumulate` (`dst` is then read, so it must be
/// initialized).
///
/// # Safety
/// As [`gemm_raw`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw_acc(
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    ds: Strides,
    lhs: *const f32,
    ls: Strides,
    rhs: *const f32,
    rs: Strides,
) {
    // SAFETY: forwarded from the caller's contract; gemm takes (column, row) strides and computes
    // `dst = alpha · dst + beta · lhs · rhs` (reading `dst` only when told to).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            ds.cs as isize,
            ds.rs as isize,
            accumulate,
            lhs,
            ls.cs as isize,
            ls.rs as isize,
            rhs,
            rs.cs as isize,
            rs.rs as isize,
            if accumulate { 1.0f32 } else { 0.0f32 },
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
            for kernel in kernels_here() {
                let mut yt = vec![0f32; n_out * n_tok];
                assert!(matmul_quant_with(kernel, ty, &w, (n_in, n_out), &x, n_tok, &mut yt), "{ty}");
                let xrb = k.dot_type.row_size(n_in).unwrap();
                for t in 0..n_tok {
                    let mut xq = vec![0u8; xrb];
                    (crate::kernels(k.dot_type).unwrap().quantize)(&x[t * n_in..(t + 1) * n_in], None, &mut xq);
                    for r in 0..n_out {
                        let want = (k.vec_dot.unwrap())(n_in, &w[r * rb..(r + 1) * rb], &xq);
                        let got = yt[t * n_out + r];
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{ty} {kernel:?} r{r} t{t}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// The kernels this CPU can run.
    fn kernels_here() -> Vec<Kernel> {
        let mut k = Vec::new();
        if has_avx2() {
            k.push(Kernel::Avx2);
        }
        if use_vnni() {
            k.push(Kernel::Vnni512);
        }
        k
    }

    /// The SIMD tile kernels equal the scalar reference (integer parts exact, floats to rounding),
    /// at the largest codes each shape allows.
    #[test]
    fn simd_tiles_match_scalar() {
        let n = 576;
        for kernel in kernels_here() {
            let tr = kernel.rows();
            for (signed, sub, group, max) in
                [(true, 32, 1, 127), (false, 32, 8, 15), (false, 32, 4, 31), (false, 16, 4, 7), (false, 16, 2, 63)]
            {
                let sh = Shape { sub, group };
                let ns = n / sub;
                let kind = Codes::of(signed, kernel);
                let code = |v: f32| {
                    if signed {
                        (v * 127.0) as i8 as u8
                    } else {
                        ((v + 1.0) * 0.5 * (max as f32 + 0.99)) as u8
                    }
                };
                let logical: Vec<u8> = rand(tr * n, 1).into_iter().map(code).collect();
                let abs: Vec<u8> = logical.iter().map(|&c| (c as i8).unsigned_abs()).collect();
                let stored: Vec<u8> =
                    if kind == Codes::Offset { logical.iter().map(|&c| c ^ 0x80).collect() } else { logical.clone() };
                let scales = rand(tr * ns, 2);
                let biases = rand(tr * ns, 3);
                let xs: Vec<Vec<i8>> =
                    (0..RN).map(|j| rand(n, 10 + j as u64).iter().map(|v| (v * 127.0) as i8).collect()).collect();
                let ds: Vec<Vec<f32>> = (0..RN).map(|j| rand(n / 32, 20 + j as u64)).collect();
                let sums: Vec<Vec<f32>> = (0..RN).map(|j| rand(ns, 30 + j as u64)).collect();
                let isums: Vec<Vec<i32>> =
                    xs.iter().map(|x| x.chunks(32).map(|c| c.iter().map(|&v| v as i32).sum()).collect()).collect();
                let tile = |codes: &'_ [u8], kind: Codes| {
                    let ti = TileIn {
                        tr,
                        codes,
                        abs: if kind == Codes::Signed { &abs } else { &[] },
                        scales: &scales,
                        biases: &biases,
                        xs: std::array::from_fn(|j| &xs[j][..]),
                        ds: std::array::from_fn(|j| &ds[j][..]),
                        sums: std::array::from_fn(|j| &sums[j][..]),
                        isums: std::array::from_fn(|j| &isums[j][..]),
                    };
                    (tile_scalar(&ti, kind, sh), tile_product(&ti, kind, sh))
                };
                let (want, got) = tile(&stored, kind);
                if kind == Codes::Offset {
                    // the offset layout means the same numbers as the signed one
                    assert_eq!(tile(&logical, Codes::Signed).0, want);
                }
                for j in 0..RN {
                    for l in 0..tr {
                        let (g, w) = (got[j][l], want[j][l]);
                        assert!(
                            (g - w).abs() <= 1e-3 * (1.0 + w.abs()),
                            "{kernel:?} signed {signed} sub {sub} group {group}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    /// Both f32 paths (weights in place, weights filled panel by panel) equal the naive product.
    #[test]
    fn f32_products_match_naive() {
        for (n_out, n_in, n_tok) in [(37, 33, 6), (301, 40, 9)] {
            let w = rand(n_out * n_in, 7);
            let x = rand(n_tok * n_in, 8);
            let mut in_place = vec![0f32; n_tok * n_out];
            matmul_f32(&w, n_out, n_in, &x, n_tok, &mut in_place);
            let mut panels = vec![0f32; n_tok * n_out];
            matmul_f32_panels(n_out, n_in, &x, n_tok, &mut panels, 8, &|r0, buf| {
                buf.copy_from_slice(&w[r0 * n_in..r0 * n_in + buf.len()]);
            });
            for r in 0..n_out {
                for t in 0..n_tok {
                    let want: f32 = (0..n_in).map(|k| w[r * n_in + k] * x[t * n_in + k]).sum();
                    assert!((in_place[t * n_out + r] - want).abs() < 1e-4);
                    assert!((panels[t * n_out + r] - want).abs() < 1e-4);
                }
            }
        }
    }

    #[test]
    fn strided_gemm_matches_naive() {
        // dst (3 × 4) inside a wider buffer, lhs transposed view, rhs with a row stride of 7
        let (m, n, k) = (3, 4, 5);
        let lhs = rand(k * m, 11); // element (i, p) at p * m + i
        let rhs = rand(k * 7, 12); // element (p, j) at p * 7 + j
        let mut dst = vec![0f32; m * 10];
        let ds = Strides { rs: 10, cs: 1 };
        gemm_f32_strided(m, n, k, &mut dst, ds, &lhs, Strides { rs: 1, cs: m }, &rhs, Strides { rs: 7, cs: 1 });
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|p| lhs[p * m + i] * rhs[p * 7 + j]).sum();
                assert!((dst[i * 10 + j] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn accumulating_gemm_adds_to_dst() {
        // dst (4 × 3) already holds values; lhs row-major, rhs transposed view
        let (m, n, k) = (4, 3, 6);
        let lhs = rand(m * k, 21);
        let rhs = rand(n * k, 22); // element (p, j) at j * k + p
        let start = rand(m * n, 23);
        let mut dst = start.clone();
        let (ds, ls, rs) = (Strides { rs: n, cs: 1 }, Strides { rs: k, cs: 1 }, Strides { rs: 1, cs: k });
        gemm_f32_strided_acc(m, n, k, &mut dst, ds, &lhs, ls, &rhs, rs);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = start[i * n + j] + (0..k).map(|p| lhs[i * k + p] * rhs[j * k + p]).sum::<f32>();
                assert!((dst[i * n + j] - want).abs() < 1e-5);
            }
        }
        // an empty inner dimension adds nothing
        let before = dst.clone();
        gemm_f32_strided_acc(m, n, 0, &mut dst, ds, &[], ls, &[], rs);
        assert_eq!(dst, before);
    }

    #[test]
    fn gemm_panel_matches_naive() {
        let (rows, n_in, n_tok) = (5, 33, 4);
        let w = rand(rows * n_in, 3);
        let x = rand(n_tok * n_in, 4);
        let mut out = vec![0f32; rows * n_tok];
        // W (rows × n_in) times xᵀ (x's rows as columns) into a rows × n_tok output.
        let (ws, xs, os) = (Strides { rs: n_in, cs: 1 }, Strides { rs: 1, cs: n_in }, Strides { rs: n_tok, cs: 1 });
        gemm_f32_strided(rows, n_tok, n_in, &mut out, os, &w, ws, &x, xs);
        for r in 0..rows {
            for t in 0..n_tok {
                let want: f32 = (0..n_in).map(|k| w[r * n_in + k] * x[t * n_in + k]).sum();
                assert!((out[r * n_tok + t] - want).abs() < 1e-4);
            }
        }
    }
}
