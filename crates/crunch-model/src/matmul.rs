//! `y = x Wᵀ` for activations `x` (`n_tokens` rows of `n_in` f32) and a weight `W` (`n_out` rows
//! of `n_in`) stored in any GGML type.
//!
//! Native mode works the way llama.cpp's CPU backend does: for a quantized weight each activation
//! row is quantized once to the weight's `dot_type` (Q8_0, Q8_1 or Q8_K) and every output is one
//! `vec_dot` of a weight row with it; for F16/BF16 weights activations are rounded to that type and
//! the product is taken in f32. Exact mode dequantizes the weights (a block of rows at a time, never
//! the whole matrix) and multiplies in f32 with the activations untouched.
//!
//! Work is spread over blocks of output rows with rayon, so each weight row is read once per call
//! whatever the number of tokens; the per-token paths compute the result transposed and turn it
//! around at the end, the tiled and GEMM paths write it token-major in place.
//! From a few tokens on (prompt processing), quantized weights go through
//! `crunch_quant::tiled` (a panel of rows unpacked once, then AVX2 tiles of rows × tokens) and
//! float weights through a blocked f32 GEMM on panels of rows. A single token (generation) goes
//! through `crunch_quant::gemv` on the weight repacked once into interleaved tiles of 16 rows
//! (kept in the weight's [`PackSlot`], made the first time a single token multiplies it), or one
//! `vec_dot` per row for the types gemv does not pack.

use crunch_core::GgmlType;
use rayon::prelude::*;

use crate::error::{ModelError, Result};

/// How to multiply by quantized weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatmulMode {
    /// Quantize activations to the weight's dot type and use the integer dot kernels (llama.cpp).
    #[default]
    Native,
    /// Dequantize weights to f32 and multiply in f32.
    Exact,
}

/// Where a weight keeps its repacking for single-token products ([`crunch_quant::gemv::Packed`]),
/// made on first use; `None` inside when the type or shape has no packed kernel.
#[derive(Default)]
pub struct PackSlot(std::sync::OnceLock<Option<crunch_quant::gemv::Packed>>);

impl std::fmt::Debug for PackSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.get() {
            Some(Some(p)) => write!(f, "PackSlot({p:?})"),
            Some(None) => f.write_str("PackSlot(unsupported)"),
            None => f.write_str("PackSlot(empty)"),
        }
    }
}

impl PackSlot {
    /// The packing of `w`, made now if this is the first call.
    fn get(&self, w: &WeightView) -> Option<&crunch_quant::gemv::Packed> {
        self.0.get_or_init(|| crunch_quant::gemv::Packed::new(w.ty, w.data, w.n_in, w.n_out)).as_ref()
    }
}

/// Whether single tokens use the packed kernels (`CRUNCH_NO_GEMV` set: one `vec_dot` per row, to
/// compare the two).
fn gemv_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("CRUNCH_NO_GEMV").is_none()) && !NO_GEMV.with(|c| c.get())
}

thread_local! {
    static NO_GEMV: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` with single-token products of this thread's matmuls through one `vec_dot` per row
/// (as without packing), to compare the two paths.
pub fn without_gemv<R>(f: impl FnOnce() -> R) -> R {
    let before = NO_GEMV.with(|c| c.replace(true));
    let r = f();
    NO_GEMV.with(|c| c.set(before));
    r
}

/// A borrowed weight matrix: `n_out` rows of `n_in` elements of type `ty`.
#[derive(Clone, Copy, Debug)]
pub struct WeightView<'a> {
    pub name: &'a str,
    pub ty: GgmlType,
    pub n_in: usize,
    pub n_out: usize,
    pub data: &'a [u8],
}

impl WeightView<'_> {
    fn row_bytes(&self) -> Result<usize> {
        let rb = self.ty.row_size(self.n_in).ok_or_else(|| ModelError::BadShape {
            tensor: self.name.to_string(),
            found: format!("rows of {}", self.n_in),
            expected: format!("a multiple of {}'s block size {}", self.ty, self.ty.block_size()),
        })?;
        if self.data.len() != rb * self.n_out {
            return Err(ModelError::BadShape {
                tensor: self.name.to_string(),
                found: format!("{} bytes", self.data.len()),
                expected: format!("{} bytes ({} rows of {rb})", rb * self.n_out, self.n_out),
            });
        }
        Ok(rb)
    }

    /// Dequantize one row into `out` (`n_in` elements).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<()> {
        let rb = self.row_bytes()?;
        let k = crunch_quant::kernels(self.ty).ok_or_else(|| unsupported(self, "dequantize"))?;
        if row >= self.n_out || out.len() != self.n_in {
            return Err(ModelError::Input(format!(
                "{}: row {row} of {} into a buffer of {} (row length {})",
                self.name,
                self.n_out,
                out.len(),
                self.n_in
            )));
        }
        (k.dequantize)(&self.data[row * rb..(row + 1) * rb], out);
        Ok(())
    }
}

fn unsupported(w: &WeightView, what: &'static str) -> ModelError {
    ModelError::UnsupportedType { tensor: w.name.to_string(), ty: w.ty, what }
}

/// Output rows per parallel task.
const ROW_BLOCK: usize = 16;
/// From this many tokens on, weights are unpacked once per call and multiplied by tiles of tokens.
const TILED_MIN_TOKENS: usize = 4;

/// `y = x Wᵀ`: `x` is `n_tokens × n_in`, the result `n_tokens × n_out`, row-major.
pub fn matmul(x: &[f32], n_tokens: usize, w: &WeightView, mode: MatmulMode) -> Result<Vec<f32>> {
    matmul_packed(x, n_tokens, w, None, mode)
}

/// [`matmul`] keeping `w`'s repacking for single tokens in `slot` (which must belong to this
/// weight: the packing is made from `w` on the first single-token call and reused after).
pub fn matmul_packed(
    x: &[f32],
    n_tokens: usize,
    w: &WeightView,
    slot: Option<&PackSlot>,
    mode: MatmulMode,
) -> Result<Vec<f32>> {
    let rb = w.row_bytes()?;
    if x.len() != n_tokens * w.n_in {
        return Err(ModelError::Input(format!(
            "{}: {} activations for {n_tokens} tokens of {}",
            w.name,
            x.len(),
            w.n_in
        )));
    }
    if n_tokens == 0 || w.n_out == 0 {
        return Ok(Vec::new());
    }
    let k = crunch_quant::kernels(w.ty).ok_or_else(|| unsupported(w, "dequantize"))?;
    let quantized_dot = match (mode, k.vec_dot) {
        (MatmulMode::Native, Some(dot)) if w.ty.is_quantized() => Some(dot),
        _ => None,
    };
    let mut yt = vec![0f32; n_tokens * w.n_out];
    if quantized_dot.is_some() && n_tokens == 1 && gemv_enabled() {
        if let Some(p) = slot.and_then(|s| s.get(w)) {
            if p.gemv(x, &mut yt) {
                return Ok(yt);
            }
        }
    }
    if quantized_dot.is_some()
        && n_tokens >= TILED_MIN_TOKENS
        && crunch_quant::tiled::matmul_quant(w.ty, w.data, w.n_in, w.n_out, x, n_tokens, &mut yt)
    {
        // several tokens per weight-row read; the result is already token-major
        return Ok(yt);
    } else if let Some(dot) = quantized_dot {
        // Activations in the dot type, once.
        let dk = crunch_quant::kernels(k.dot_type).ok_or_else(|| unsupported(w, "activation quantization"))?;
        let xrb = k.dot_type.row_size(w.n_in).ok_or_else(|| unsupported(w, "activation quantization"))?;
        let mut xq = vec![0u8; n_tokens * xrb];
        xq.par_chunks_mut(xrb).zip(x.par_chunks(w.n_in)).for_each(|(d, s)| (dk.quantize)(s, None, d));
        let n_in = w.n_in;
        yt.par_chunks_mut(ROW_BLOCK * n_tokens).enumerate().for_each(|(b, out)| {
            let r0 = b * ROW_BLOCK;
            let rows = out.len() / n_tokens;
            let wrows = &w.data[r0 * rb..(r0 + rows) * rb];
            for (t, xt) in xq.chunks_exact(xrb).enumerate() {
                for (r, wr) in wrows.chunks_exact(rb).enumerate() {
                    out[r * n_tokens + t] = dot(n_in, wr, xt);
                }
            }
        });
    } else {
        // Float path: round activations as llama.cpp does for float weights (F16/BF16 dot types)
        // in native mode, dequantize a block of weight rows, multiply in f32.
        let rounded;
        let xs: &[f32] = if mode == MatmulMode::Native && w.ty != GgmlType::F32 && !w.ty.is_quantized() {
            rounded = round_through(x, w.n_in, k.dot_type).ok_or_else(|| unsupported(w, "activation rounding"))?;
            &rounded
        } else {
            x
        };
        let n_in = w.n_in;
        if let Some(wf) = f32_in_place(w) {
            // F32 weights straight from the (aligned) memory map, any number of tokens
            crunch_quant::tiled::matmul_f32(wf, w.n_out, n_in, xs, n_tokens, &mut yt);
            return Ok(yt);
        }
        if n_tokens >= TILED_MIN_TOKENS {
            // A panel of weight rows in f32, multiplied by all tokens with a blocked GEMM.
            let fill = |r0: usize, wf: &mut [f32]| {
                let rows = wf.len() / n_in;
                (k.dequantize)(&w.data[r0 * rb..(r0 + rows) * rb], wf);
            };
            let panel = crunch_quant::tiled::f32_block_rows(w.n_out);
            crunch_quant::tiled::matmul_f32_panels(w.n_out, n_in, xs, n_tokens, &mut yt, panel, &fill);
            return Ok(yt);
        }
        yt.par_chunks_mut(ROW_BLOCK * n_tokens).enumerate().for_each(|(b, out)| {
            let r0 = b * ROW_BLOCK;
            let rows = out.len() / n_tokens;
            let mut wf = vec![0f32; rows * n_in];
            for (r, d) in wf.chunks_exact_mut(n_in).enumerate() {
                let src = &w.data[(r0 + r) * rb..(r0 + r + 1) * rb];
                (k.dequantize)(src, d);
            }
            for (t, xt) in xs.chunks_exact(n_in).enumerate() {
                let mut r = 0;
                while r + 4 <= rows {
                    let ws = &wf[r * n_in..(r + 4) * n_in];
                    let (w0, rest) = ws.split_at(n_in);
                    let (w1, rest) = rest.split_at(n_in);
                    let (w2, w3) = rest.split_at(n_in);
                    let d = dot4(xt, [w0, w1, w2, w3]);
                    for (i, v) in d.into_iter().enumerate() {
                        out[(r + i) * n_tokens + t] = v;
                    }
                    r += 4;
                }
                while r < rows {
                    out[r * n_tokens + t] = dot_f32(xt, &wf[r * n_in..(r + 1) * n_in]);
                    r += 1;
                }
            }
        });
    }
    Ok(transpose(yt, n_tokens, w.n_out))
}

/// An F32 weight's bytes as f32 when they are 4-byte aligned (GGUF aligns tensor data to 32
/// bytes, so they are in every file llama.cpp writes); `None` for other types.
fn f32_in_place<'a>(w: &WeightView<'a>) -> Option<&'a [f32]> {
    if w.ty != GgmlType::F32 || w.data.len() != w.n_out * w.n_in * 4 || cfg!(target_endian = "big") {
        return None;
    }
    bytemuck::try_cast_slice(w.data).ok()
}

/// `n_out × n_tokens` to `n_tokens × n_out`.
fn transpose(yt: Vec<f32>, n_tokens: usize, n_out: usize) -> Vec<f32> {
    if n_tokens == 1 {
        return yt;
    }
    // Blocks of tokens: each output row of `yt` is read as one short contiguous run per block.
    const TB: usize = 16;
    let mut y = vec![0f32; n_tokens * n_out];
    y.par_chunks_mut(TB * n_out).enumerate().for_each(|(b, rows)| {
        let t0 = b * TB;
        let nt = rows.len() / n_out;
        for r in 0..n_out {
            let src = &yt[r * n_tokens + t0..r * n_tokens + t0 + nt];
            for (j, &v) in src.iter().enumerate() {
                rows[j * n_out + r] = v;
            }
        }
    });
    y
}

/// Round `x` through `ty` (quantize then dequantize each row); `None` if `ty` has no kernels.
fn round_through(x: &[f32], n_in: usize, ty: GgmlType) -> Option<Vec<f32>> {
    let k = crunch_quant::kernels(ty)?;
    let rb = ty.row_size(n_in)?;
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(n_in).zip(x.par_chunks(n_in)).for_each(|(o, s)| {
        let mut buf = vec![0u8; rb];
        (k.quantize)(s, None, &mut buf);
        (k.dequantize)(&buf, o);
    });
    Some(out)
}

const LANES: usize = 8;

/// f32 dot product with independent lanes so that it vectorizes.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

/// Four dot products sharing the activation row.
fn dot4(x: &[f32], w: [&[f32]; 4]) -> [f32; 4] {
    let n = x.len();
    let mut acc = [[0f32; LANES]; 4];
    let full = n / LANES * LANES;
    let mut i = 0;
    while i < full {
        let xv = &x[i..i + LANES];
        for (a, wr) in acc.iter_mut().zip(&w) {
            let wv = &wr[i..i + LANES];
            for l in 0..LANES {
                a[l] += xv[l] * wv[l];
            }
        }
        i += LANES;
    }
    let mut out = [0f32; 4];
    for ((o, a), wr) in out.iter_mut().zip(&acc).zip(&w) {
        let mut s: f32 = a.iter().sum();
        for j in full..n {
            s += x[j] * wr[j];
        }
        *o = s;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], n_tokens: usize, w: &[f32], n_in: usize) -> Vec<f32> {
        let n_out = w.len() / n_in;
        let mut y = vec![0f32; n_tokens * n_out];
        for t in 0..n_tokens {
            for r in 0..n_out {
                y[t * n_out + r] =
                    (0..n_in).map(|i| x[t * n_in + i] as f64 * w[r * n_in + i] as f64).sum::<f64>() as f32;
            }
        }
        y
    }

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_naive_for_float_and_quantized() {
        let (n_in, n_out, n_tok) = (256, 37, 5);
        let x = rand(n_tok * n_in, 1);
        let wf = rand(n_out * n_in, 2);
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::Q4_K, GgmlType::Q6_K] {
            let rb = ty.row_size(n_in).unwrap();
            let mut data = vec![0u8; rb * n_out];
            crunch_quant::quantize_rows(ty, &wf, n_in, None, &mut data).unwrap();
            let mut deq = vec![0f32; wf.len()];
            crunch_quant::dequantize_rows(ty, &data, n_in, &mut deq).unwrap();
            let want = naive(&x, n_tok, &deq, n_in);
            let view = WeightView { name: "w", ty, n_in, n_out, data: &data };
            for mode in [MatmulMode::Exact, MatmulMode::Native] {
                let got = matmul(&x, n_tok, &view, mode).unwrap();
                let tol = if mode == MatmulMode::Exact || ty == GgmlType::F32 { 1e-4 } else { 0.15 };
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= tol, "{ty} {mode:?}: {g} vs {w}");
                }
            }
        }
    }

    /// A single token through the packed kernels equals one `vec_dot` per row, and the slot keeps
    /// one packing that later calls reuse.
    #[test]
    fn packed_single_token_matches_vec_dot() {
        let (n_in, n_out) = (512, 45);
        let x = rand(n_in, 5);
        let wf = rand(n_out * n_in, 6);
        for ty in crunch_quant::gemv::PACKED_TYPES {
            let rb = ty.row_size(n_in).unwrap();
            let mut data = vec![0u8; rb * n_out];
            crunch_quant::quantize_rows(ty, &wf, n_in, None, &mut data).unwrap();
            let view = WeightView { name: "w", ty, n_in, n_out, data: &data };
            let want = matmul(&x, 1, &view, MatmulMode::Native).unwrap();
            let slot = PackSlot::default();
            for _ in 0..2 {
                let got = matmul_packed(&x, 1, &view, Some(&slot), MatmulMode::Native).unwrap();
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{ty}: {g} vs {w}");
                }
            }
            assert!(matches!(slot.0.get(), Some(Some(_))), "{ty} was not packed");
        }
    }

    #[test]
    fn rejects_bad_sizes() {
        let data = vec![0u8; 4 * 8 * 3];
        let view = WeightView { name: "w", ty: GgmlType::F32, n_in: 8, n_out: 3, data: &data };
        assert!(matmul(&[0.0; 7], 1, &view, MatmulMode::Native).is_err());
        let short = WeightView { data: &data[..10], ..view };
        assert!(matmul(&[0.0; 8], 1, &short, MatmulMode::Native).is_err());
    }
}
