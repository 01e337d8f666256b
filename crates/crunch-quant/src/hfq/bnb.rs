//! bitsandbytes' 4-bit (NF4, FP4) and 8-bit (LLM.int8) weight formats, as `Linear4bit` and
//! `Linear8bitLt` save them (docs/research/issue18-formats.md §1).
//!
//! 4-bit: the weight is flattened row-major and cut into blocks of `blocksize` consecutive values
//! (blocks may span rows; the last one may be partial and has its own absmax). Each value is the
//! code of the nearest entry of a 16-value table ([`NF4`] or [`FP4`]) to `x / absmax`, two codes a
//! byte with the **first in the high nibble**, and an odd count padded with the code of 0.0.
//! Optionally ("double quant") the absmax list itself is stored as 8-bit codes of the signed
//! [`dynamic_map`] in blocks of 256, after subtracting its mean.
//!
//! Key decision: every arithmetic step is done in f32 in the order bitsandbytes' pure-torch
//! reference kernels (`backends/default/ops.py`) use, so [`Bnb4::absmax_values`] and
//! [`Bnb4::dequantize`] are bit-identical to the f32 values bitsandbytes computes before its final
//! cast to the checkpoint dtype, and quantizing picks the codes that kernel picks (nearest table
//! entry, a value exactly between two entries takes the lower one). bitsandbytes' other kernels
//! (CUDA, the C++ CPU 8-bit quantizer) may choose a neighbouring code at exact midpoints or for the
//! sign of FP4's zero; the stored data decodes the same way whoever wrote it.

use rayon::prelude::*;

/// The two 4-bit code tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FourBit {
    /// NormalFloat4 (QLoRA): 16 normal quantiles, sorted.
    Nf4,
    /// E2M1 float with bias 2, in bit-pattern order (bit 3 = sign).
    Fp4,
}

impl FourBit {
    /// The name bitsandbytes uses (`quant_type`, the `bitsandbytes__` suffix).
    pub fn name(self) -> &'static str {
        match self {
            FourBit::Nf4 => "nf4",
            FourBit::Fp4 => "fp4",
        }
    }

    /// The kind named `s` ("nf4" or "fp4").
    pub fn from_name(s: &str) -> Option<FourBit> {
        match s {
            "nf4" => Some(FourBit::Nf4),
            "fp4" => Some(FourBit::Fp4),
            _ => None,
        }
    }

    /// The 16 values a code stands for (times the block's absmax).
    pub fn table(self) -> &'static [f32; 16] {
        match self {
            FourBit::Nf4 => &NF4,
            FourBit::Fp4 => &FP4,
        }
    }
}

/// NF4 (`get_4bit_type("nf4")`, = `create_normal_map(0.9677083, True)`); code = index, sorted.
/// Each literal is an exact f32 (bitsandbytes' decimals are f32 values printed as doubles).
#[allow(clippy::excessive_precision)]
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// FP4 (`get_4bit_type("fp4")`): the E2M1 values `[0, 0.0625, 8, 12, 4, 6, 2, 3]` and their
/// negatives in bit-pattern order, divided by 12 in f32. Index 8 is −0.0.
pub const FP4: [f32; 16] = [
    0.0,
    0.0625 / 12.0,
    8.0 / 12.0,
    1.0, // 12 / 12
    4.0 / 12.0,
    6.0 / 12.0,
    2.0 / 12.0,
    3.0 / 12.0,
    -0.0 / 12.0,
    -0.0625 / 12.0,
    -8.0 / 12.0,
    -1.0, // -12 / 12
    -4.0 / 12.0,
    -6.0 / 12.0,
    -2.0 / 12.0,
    -3.0 / 12.0,
];

/// Blocks of the nested (absmax) quantization: `quantize_4bit` always uses 256.
pub const NESTED_BLOCKSIZE: usize = 256;

/// The smallest divisor bitsandbytes' reference kernel uses (`absmax.clamp(min=1e-38)`).
const TINY: f32 = 1e-38;

/// `7.874015718698502e-3` (= f32(1/127)), the int8 dequantization factor.
#[allow(clippy::excessive_precision)]
const INV_127: f32 = 7.874_015_718_698_502e-3;

/// bitsandbytes' default signed dynamic 8-bit map (`create_dynamic_map(signed=True,
/// max_exponent_bits=7, total_bits=8)`), sorted: `-0.99296875 … 0 … 0.99296875, 1`, index 127 = 0.
///
/// For exponent `i` in 0..7 it takes the midpoints of `torch.linspace(0.1, 1, 2^i + 1)` (f32),
/// times `f32(10^(i−6))` and its negative, plus 0 and 1. torch's CPU linspace computes
/// `start + step·k` for the first half and `end − step·(steps−1−k)` for the second; done as fused
/// multiply-adds (as the compiled kernel evidently does) the table equals, bit for bit, the one
/// bitsandbytes shipped as `code.h` and that published ports hard-code (checked in the tests);
/// separate multiply and add would change 42 entries by one ulp. A reader needs no bit-identity
/// anyway: bitsandbytes decodes with the stored `nested_quant_map`.
pub fn dynamic_map() -> [f32; 256] {
    const SCALES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    let mut data = Vec::with_capacity(256);
    for (i, &scale) in SCALES.iter().enumerate() {
        let b = torch_linspace(0.1, 1.0, (1 << i) + 1);
        let s = scale as f32;
        for pair in b.windows(2) {
            let v = s * ((pair[0] + pair[1]) / 2.0);
            data.push(v);
            data.push(-v);
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    let mut out = [0f32; 256];
    out.copy_from_slice(&data);
    out
}

/// `torch.linspace(start, end, steps, dtype=float32)` as torch's CPU kernel computes it.
fn torch_linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|k| if k < half { step.mul_add(k as f32, start) } else { (-step).mul_add((steps - 1 - k) as f32, end) })
        .collect()
}

/// A sorted code table with its decision midpoints, and the code of each sorted position.
struct Nearest {
    mids: Vec<f32>,
    code: Vec<u8>,
}

impl Nearest {
    /// bitsandbytes' rule: `bounds = (sorted[:-1] + sorted[1:]) / 2` in f32, sorted position =
    /// `bucketize(x, bounds)` = the number of bounds strictly below `x`, then the table index of
    /// that position (argsort of the table, stable: FP4's +0 (index 0) sorts before −0 (index 8)).
    fn new(table: &[f32]) -> Nearest {
        let mut order: Vec<usize> = (0..table.len()).collect();
        order.sort_by(|&a, &b| table[a].partial_cmp(&table[b]).expect("code tables hold no NaN"));
        let mids = order.windows(2).map(|p| (table[p[0]] + table[p[1]]) / 2.0).collect();
        Nearest { mids, code: order.iter().map(|&i| i as u8).collect() }
    }

    #[inline]
    fn code(&self, x: f32) -> u8 {
        self.code[self.mids.partition_point(|&m| m < x)]
    }
}

/// Blockwise absmax quantization of `x` (one block, the last of the tensor if shorter than the
/// block size), as `quantize_4bit` / `quantize_blockwise` of the reference kernel do it: a full
/// block stores `max|x|` and scales by `x · (1 / max(absmax, 1e-38))`; the partial last block
/// stores `max(max|x|, 1e-38)` and scales by `x / absmax`; both clamp to [−1, 1].
fn quantize_block(x: &[f32], full: bool, nearest: &Nearest, mut put: impl FnMut(usize, u8)) -> f32 {
    let m = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if full {
        let inv = 1.0 / m.max(TINY);
        for (i, &v) in x.iter().enumerate() {
            put(i, nearest.code((v * inv).clamp(-1.0, 1.0)));
        }
        m
    } else {
        let m = m.max(TINY);
        for (i, &v) in x.iter().enumerate() {
            put(i, nearest.code((v / m).clamp(-1.0, 1.0)));
        }
        m
    }
}

/// The per-block scale of a [`Bnb4`].
#[derive(Clone, Debug, PartialEq)]
pub enum Absmax {
    /// `P.weight.absmax`, F32 `[nblocks]`.
    Plain(Vec<f32>),
    /// Double quantization: `absmax[b] = f32(f32(nested_map[codes[b]] · nested_absmax[b /
    /// nested_blocksize]) + offset)`.
    Double {
        /// `P.weight.absmax`, U8 `[nblocks]`.
        codes: Vec<u8>,
        /// `P.weight.nested_absmax`, F32 `[ceil(nblocks / nested_blocksize)]`.
        nested_absmax: Vec<f32>,
        /// `P.weight.nested_quant_map`, F32 `[256]` ([`dynamic_map`] when crunch writes it).
        nested_map: Vec<f32>,
        /// `nested_offset` of the JSON: the f32 mean of the absmax list.
        offset: f32,
        /// `nested_blocksize` of the JSON (256).
        nested_blocksize: usize,
    },
}

impl Absmax {
    /// The tensors of a double-quantized absmax as read from a checkpoint; the two JSON fields
    /// (`offset`, `nested_blocksize`) are placeholders that [`Bnb4::from_parts`] fills in.
    pub fn nested(codes: Vec<u8>, nested_absmax: Vec<f32>, nested_map: Vec<f32>) -> Absmax {
        Absmax::Double { codes, nested_absmax, nested_map, offset: 0.0, nested_blocksize: NESTED_BLOCKSIZE }
    }

    /// Number of (4-bit) blocks this absmax covers.
    pub fn blocks(&self) -> usize {
        match self {
            Absmax::Plain(a) => a.len(),
            Absmax::Double { codes, .. } => codes.len(),
        }
    }
}

/// A weight in bitsandbytes' 4-bit format.
#[derive(Clone, Debug, PartialEq)]
pub struct Bnb4 {
    pub kind: FourBit,
    /// Number of values (`out · in`).
    pub n: usize,
    /// Values per block: a power of two in 32..=4096.
    pub blocksize: usize,
    /// `ceil(n / 2)` bytes, `byte[k] = code[2k] << 4 | code[2k + 1]` (`P.weight`, shape `[len, 1]`).
    pub packed: Vec<u8>,
    /// `ceil(n / blocksize)` block scales.
    pub absmax: Absmax,
}

fn check_blocksize(blocksize: usize) -> Result<(), String> {
    if blocksize.is_power_of_two() && (32..=4096).contains(&blocksize) {
        Ok(())
    } else {
        Err(format!("block size {blocksize}: bitsandbytes accepts 32, 64, 128, 256, 512, 1024, 2048 or 4096"))
    }
}

/// Quantize `w` (a weight flattened row-major) to NF4 or FP4 with blocks of `blocksize` values,
/// optionally double-quantizing the absmax list; all cores.
///
/// The double quantization subtracts the mean of the absmax list, computed in f64 and rounded to
/// f32 (torch's f32 cascade sum may differ in the last bit; the offset is stored, so readers use
/// whichever was written).
///
/// # Errors
/// An empty `w`, an unsupported block size, or a value that is not finite (named by index).
pub fn quantize_4bit(w: &[f32], kind: FourBit, blocksize: usize, double_quant: bool) -> Result<Bnb4, String> {
    check_blocksize(blocksize)?;
    if w.is_empty() {
        return Err("no values to quantize".into());
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(format!("value {} at index {i} is not finite", w[i]));
    }
    let n = w.len();
    let nearest = Nearest::new(kind.table());
    let mut packed = vec![0u8; n.div_ceil(2)];
    let mut absmax = vec![0f32; n.div_ceil(blocksize)];
    // The pad of an odd count is the code of the value 0.0.
    let pad = nearest.code(0.0);
    packed.par_chunks_mut(blocksize / 2).zip(absmax.par_iter_mut()).zip(w.par_chunks(blocksize)).for_each(
        |((p, a), x)| {
            if x.len() % 2 == 1 {
                p[x.len() / 2] = pad;
            }
            *a = quantize_block(x, x.len() == blocksize, &nearest, |i, q| {
                p[i / 2] |= if i.is_multiple_of(2) { q << 4 } else { q };
            });
        },
    );
    let absmax = if double_quant { double_quantize(&absmax) } else { Absmax::Plain(absmax) };
    Ok(Bnb4 { kind, n, blocksize, packed, absmax })
}

/// `quantize_blockwise(absmax − mean, blocksize=256)` with the dynamic map.
fn double_quantize(absmax: &[f32]) -> Absmax {
    let offset = (absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len() as f64) as f32;
    let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let map = dynamic_map();
    let nearest = Nearest::new(&map);
    let mut codes = vec![0u8; centred.len()];
    let mut nested_absmax = vec![0f32; centred.len().div_ceil(NESTED_BLOCKSIZE)];
    codes
        .par_chunks_mut(NESTED_BLOCKSIZE)
        .zip(nested_absmax.par_iter_mut())
        .zip(centred.par_chunks(NESTED_BLOCKSIZE))
        .for_each(|((c, a), x)| *a = quantize_block(x, x.len() == NESTED_BLOCKSIZE, &nearest, |i, q| c[i] = q));
    Absmax::Double { codes, nested_absmax, nested_map: map.to_vec(), offset, nested_blocksize: NESTED_BLOCKSIZE }
}

impl Bnb4 {
    /// Number of blocks.
    pub fn blocks(&self) -> usize {
        self.n.div_ceil(self.blocksize)
    }

    /// The 4-bit code of value `i`.
    #[inline]
    pub fn code(&self, i: usize) -> u8 {
        let b = self.packed[i / 2];
        if i.is_multiple_of(2) {
            b >> 4
        } else {
            b & 0xF
        }
    }

    /// The per-block absmax exactly as bitsandbytes decodes it: the stored list, or with double
    /// quantization `f32(f32(nested_map[code] · nested_absmax[b / nested_blocksize]) + offset)`.
    pub fn absmax_values(&self) -> Vec<f32> {
        match &self.absmax {
            Absmax::Plain(a) => a.clone(),
            Absmax::Double { codes, nested_absmax, nested_map, offset, nested_blocksize } => codes
                .iter()
                .enumerate()
                .map(|(b, &c)| nested_map[c as usize] * nested_absmax[b / nested_blocksize] + offset)
                .collect(),
        }
    }

    /// The values `f32(table[code] · absmax[block])`, `n` of them: what bitsandbytes computes
    /// before casting to the JSON's `dtype`.
    pub fn dequantize(&self) -> Vec<f32> {
        let table = self.kind.table();
        let absmax = self.absmax_values();
        let mut out = vec![0f32; self.n];
        out.par_chunks_mut(self.blocksize).zip(absmax.par_iter()).enumerate().for_each(|(b, (o, &a))| {
            let base = b * self.blocksize;
            for (j, x) in o.iter_mut().enumerate() {
                *x = table[self.code(base + j) as usize] * a;
            }
        });
        out
    }

    /// The packed quant state, `P.weight.quant_state.bitsandbytes__{nf4,fp4}` (its bytes are this
    /// UTF-8 string), as bitsandbytes' `pack_dict_to_tensor` writes it: `json.dumps` with default
    /// separators and keys `quant_type, blocksize, dtype, shape` then, with double quantization,
    /// `nested_blocksize, nested_dtype, nested_offset` (Python's float repr of the f32 offset).
    /// `shape` is the weight's `[out, in]`, `dtype` the torch dtype name it dequantizes to
    /// ("bfloat16", "float16" or "float32").
    ///
    /// # Panics
    /// If `shape` does not hold `n` values.
    pub fn quant_state_json(&self, shape: [usize; 2], dtype: &str) -> String {
        assert_eq!(shape[0] * shape[1], self.n, "shape {shape:?} does not hold {} values", self.n);
        let mut s = format!(
            "{{\"quant_type\": \"{}\", \"blocksize\": {}, \"dtype\": {}, \"shape\": [{}, {}]",
            self.kind.name(),
            self.blocksize,
            json_string(dtype),
            shape[0],
            shape[1]
        );
        if let Absmax::Double { offset, nested_blocksize, .. } = &self.absmax {
            s += &format!(
                ", \"nested_blocksize\": {nested_blocksize}, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
                py_float_repr(*offset as f64)
            );
        }
        s.push('}');
        s
    }

    /// Rebuild a weight read from a checkpoint: `name` is the weight (`P.weight`), `packed` its
    /// bytes, `absmax` the absmax tensors (for double quantization the `offset` and
    /// `nested_blocksize` passed in are ignored and taken from the JSON, see [`Absmax::nested`]),
    /// `json` the text of `P.weight.quant_state.bitsandbytes__*`. Returns the weight, its shape and
    /// the dtype bitsandbytes dequantizes to.
    ///
    /// # Errors
    /// A message naming the tensor or JSON key at fault: malformed JSON, an unknown, missing or
    /// ill-typed key, an unsupported quant type, block size, dtype or nested dtype, nested keys
    /// without nested tensors or the reverse, any size that does not match the shape, or a
    /// non-finite scale.
    pub fn from_parts(
        name: &str,
        packed: &[u8],
        absmax: Absmax,
        json: &str,
    ) -> Result<(Bnb4, [usize; 2], String), String> {
        let qs = |msg: String| format!("{name}.quant_state: {msg}");
        let obj = match parse_json(json).map_err(qs)? {
            Json::Obj(o) => o,
            _ => return Err(qs("not a JSON object".into())),
        };
        const KEYS: [&str; 7] =
            ["quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset"];
        for (i, (k, _)) in obj.iter().enumerate() {
            if !KEYS.contains(&k.as_str()) {
                return Err(qs(format!("unknown key \"{k}\"")));
            }
            if obj[..i].iter().any(|(k2, _)| k2 == k) {
                return Err(qs(format!("key \"{k}\" appears twice")));
            }
        }
        let get = |k: &str| obj.iter().find(|(k2, _)| k2 == k).map(|(_, v)| v);
        let need = |k: &str| get(k).ok_or_else(|| qs(format!("missing key \"{k}\"")));
        let string = |k: &str| match need(k)? {
            Json::Str(s) => Ok(s.clone()),
            _ => Err(qs(format!("key \"{k}\" is not a string"))),
        };
        let uint =
            |k: &str, v: &Json| v.as_uint().ok_or_else(|| qs(format!("key \"{k}\" is not a non-negative integer")));

        let quant_type = string("quant_type")?;
        let kind = FourBit::from_name(&quant_type)
            .ok_or_else(|| qs(format!("key \"quant_type\" is \"{quant_type}\" (nf4 or fp4 supported)")))?;
        let blocksize = uint("blocksize", need("blocksize")?)?;
        check_blocksize(blocksize).map_err(|e| qs(format!("key \"blocksize\": {e}")))?;
        let dtype = string("dtype")?;
        if !["float32", "float16", "bfloat16"].contains(&dtype.as_str()) {
            return Err(qs(format!("key \"dtype\" is \"{dtype}\" (float32, float16 or bfloat16 supported)")));
        }
        let shape = match need("shape")? {
            Json::Arr(a) if a.len() == 2 => [uint("shape", &a[0])?, uint("shape", &a[1])?],
            _ => return Err(qs("key \"shape\" is not a list of two integers".into())),
        };
        let n = shape[0]
            .checked_mul(shape[1])
            .filter(|&n| n > 0)
            .ok_or_else(|| qs(format!("key \"shape\" {shape:?} holds no values or too many")))?;
        let nblocks = n.div_ceil(blocksize);

        if packed.len() != n.div_ceil(2) {
            return Err(format!(
                "{name}: {} bytes, expected {} for shape {shape:?} (two 4-bit codes a byte)",
                packed.len(),
                n.div_ceil(2)
            ));
        }
        let len_err = |tensor: &str, got: usize, want: usize, what: String| {
            Err(format!("{name}.{tensor}: {got} values, expected {want} ({what})"))
        };
        let nested_keys = ["nested_blocksize", "nested_dtype", "nested_offset"];
        let absmax = match absmax {
            Absmax::Plain(a) => {
                if let Some(k) = nested_keys.iter().find(|k| get(k).is_some()) {
                    return Err(qs(format!("key \"{k}\" but no nested (double-quantized) absmax tensors")));
                }
                if a.len() != nblocks {
                    return len_err("absmax", a.len(), nblocks, format!("{n} values in blocks of {blocksize}"));
                }
                if let Some(i) = a.iter().position(|v| !v.is_finite()) {
                    return Err(format!("{name}.absmax: value {} at index {i} is not finite", a[i]));
                }
                Absmax::Plain(a)
            }
            Absmax::Double { codes, nested_absmax, nested_map, .. } => {
                for k in nested_keys {
                    need(k).map_err(|e| format!("{e} (the absmax is double-quantized)"))?;
                }
                let nbs = uint("nested_blocksize", need("nested_blocksize")?)?;
                if nbs == 0 {
                    return Err(qs("key \"nested_blocksize\" is 0".into()));
                }
                let nested_dtype = string("nested_dtype")?;
                if nested_dtype != "float32" {
                    return Err(qs(format!("key \"nested_dtype\" is \"{nested_dtype}\" (float32 supported)")));
                }
                let offset = match need("nested_offset")? {
                    Json::Num(t) => {
                        t.parse::<f64>().map_err(|_| qs(format!("key \"nested_offset\": bad number {t}")))?
                    }
                    _ => return Err(qs("key \"nested_offset\" is not a number".into())),
                } as f32;
                if !offset.is_finite() {
                    return Err(qs("key \"nested_offset\" is not a finite f32".into()));
                }
                if codes.len() != nblocks {
                    return len_err("absmax", codes.len(), nblocks, format!("{n} values in blocks of {blocksize}"));
                }
                let nn = nblocks.div_ceil(nbs);
                if nested_absmax.len() != nn {
                    return len_err(
                        "nested_absmax",
                        nested_absmax.len(),
                        nn,
                        format!("{nblocks} codes in blocks of {nbs}"),
                    );
                }
                if nested_map.len() != 256 {
                    return len_err("nested_quant_map", nested_map.len(), 256, "an 8-bit code table".into());
                }
                for (tensor, v) in [("nested_absmax", &nested_absmax), ("nested_quant_map", &nested_map)] {
                    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                        return Err(format!("{name}.{tensor}: value {} at index {i} is not finite", v[i]));
                    }
                }
                Absmax::Double { codes, nested_absmax, nested_map, offset, nested_blocksize: nbs }
            }
        };
        Ok((Bnb4 { kind, n, blocksize, packed: packed.to_vec(), absmax }, shape, dtype))
    }
}

/// A weight in bitsandbytes' LLM.int8 format: `P.weight` I8 `[rows, cols]` (row-major, "row"
/// format), `P.SCB` F32 `[rows]` (each row's absmax), `P.weight_format` U8 scalar 0.
#[derive(Clone, Debug, PartialEq)]
pub struct Bnb8 {
    pub rows: usize,
    pub cols: usize,
    /// `rows × cols` codes in −127..=127.
    pub codes: Vec<i8>,
    /// Per-row absmax.
    pub scb: Vec<f32>,
}

/// Quantize `w` (`rows × cols`, row-major) row-wise to int8 as bitsandbytes'
/// `int8_vectorwise_quant` (threshold 0) does: `SCB = max|row|`, `CB = round(w · f32(f32(1 / SCB)
/// · 127))` in f32, ties to even. An all-zero row gets codes 0 (bitsandbytes divides by zero
/// there). All cores.
///
/// # Errors
/// No columns, a length that is not whole rows, or a value that is not finite.
pub fn quantize_int8(w: &[f32], cols: usize) -> Result<Bnb8, String> {
    if cols == 0 || w.is_empty() || !w.len().is_multiple_of(cols) {
        return Err(format!("{} values are not rows of {cols}", w.len()));
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(format!("value {} at row {}, column {} is not finite", w[i], i / cols, i % cols));
    }
    let rows = w.len() / cols;
    let mut codes = vec![0i8; w.len()];
    let mut scb = vec![0f32; rows];
    codes.par_chunks_mut(cols).zip(scb.par_iter_mut()).zip(w.par_chunks(cols)).for_each(|((c, s), row)| {
        let m = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        *s = m;
        if m > 0.0 {
            let scale = (1.0 / m) * 127.0;
            for (c, &v) in c.iter_mut().zip(row) {
                *c = (v * scale).round_ties_even().clamp(-127.0, 127.0) as i8;
            }
        }
    });
    Ok(Bnb8 { rows, cols, codes, scb })
}

impl Bnb8 {
    /// Rebuild a weight read from a checkpoint (`name` = `P.weight`, `shape` its `[rows, cols]`).
    ///
    /// # Errors
    /// Sizes that do not match the shape, a `weight_format` other than 0 ("row"), or a
    /// non-finite SCB; the message names the tensor.
    pub fn from_parts(
        name: &str,
        shape: [usize; 2],
        codes: &[i8],
        scb: &[f32],
        weight_format: u8,
    ) -> Result<Bnb8, String> {
        let [rows, cols] = shape;
        if weight_format != 0 {
            return Err(format!("{name}_format is {weight_format}, only 0 (row-major) is supported"));
        }
        if rows.checked_mul(cols) != Some(codes.len()) || codes.is_empty() {
            return Err(format!("{name}: {} codes do not fill shape {shape:?}", codes.len()));
        }
        let scb_name = name.strip_suffix("weight").map_or_else(|| format!("{name}.SCB"), |p| format!("{p}SCB"));
        if scb.len() != rows {
            return Err(format!("{scb_name}: {} values, expected {rows} (one per row)", scb.len()));
        }
        if let Some(i) = scb.iter().position(|v| !v.is_finite()) {
            return Err(format!("{scb_name}: value {} at index {i} is not finite", scb[i]));
        }
        Ok(Bnb8 { rows, cols, codes: codes.to_vec(), scb: scb.to_vec() })
    }

    /// The values `f32(f32(CB · SCB) · 7.874015718698502e-3)`, as bitsandbytes'
    /// `int8_vectorwise_dequant` computes them (before any cast).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.codes.len()];
        out.par_chunks_mut(self.cols).zip(self.codes.par_chunks(self.cols)).zip(self.scb.par_iter()).for_each(
            |((o, c), &s)| {
                for (x, &q) in o.iter_mut().zip(c) {
                    *x = q as f32 * s * INV_127;
                }
            },
        );
        out
    }
}

/// Python's `repr(float)` (what `json.dumps` writes for a float): the shortest round-trip digits,
/// positional for exponents −4..=15 (with ".0" when integral), else `d.ddde±XX`.
fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let e = format!("{x:e}");
    let (mant, exp) = e.split_once('e').expect("LowerExp writes an exponent");
    let exp: i32 = exp.parse().expect("LowerExp writes an integer exponent");
    let (sign, mant) = mant.strip_prefix('-').map_or(("", mant), |m| ("-", m));
    let digits: String = mant.chars().filter(|&c| c != '.').collect();
    let decpt = exp + 1; // value = 0.digits × 10^decpt
    let body = if (-3..=16).contains(&decpt) {
        if decpt <= 0 {
            format!("0.{}{digits}", "0".repeat((-decpt) as usize))
        } else if decpt as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(decpt as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..decpt as usize], &digits[decpt as usize..])
        }
    } else {
        let m = if digits.len() == 1 { digits.clone() } else { format!("{}.{}", &digits[..1], &digits[1..]) };
        format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs())
    };
    format!("{sign}{body}")
}

/// A JSON string literal as `json.dumps` (ensure_ascii) writes it.
fn json_string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            '\u{8}' => o.push_str("\\b"),
            '\u{c}' => o.push_str("\\f"),
            c if c.is_ascii() && !c.is_ascii_control() => o.push(c),
            c => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    o.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    o.push('"');
    o
}

/// A parsed JSON value (numbers kept as their text).
#[derive(Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// A number written as a non-negative integer (no fraction or exponent).
    fn as_uint(&self) -> Option<usize> {
        match self {
            Json::Num(t) if t.bytes().all(|b| b.is_ascii_digit()) => t.parse().ok(),
            _ => None,
        }
    }
}

fn parse_json(text: &str) -> Result<Json, String> {
    let mut p = JsonParser { s: text.as_bytes(), i: 0 };
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("bad JSON: trailing text at byte {}", p.i));
    }
    Ok(v)
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("bad JSON: {what} at byte {}", self.i))
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > 64 {
            return self.err("nesting too deep");
        }
        self.ws();
        match self.s.get(self.i) {
            None => self.err("unexpected end"),
            Some(b'{') => {
                self.i += 1;
                let mut o = Vec::new();
                if self.eat(b'}') {
                    return Ok(Json::Obj(o));
                }
                loop {
                    self.ws();
                    if self.s.get(self.i) != Some(&b'"') {
                        return self.err("expected a key");
                    }
                    let k = self.string()?;
                    if !self.eat(b':') {
                        return self.err("expected ':'");
                    }
                    o.push((k, self.value(depth + 1)?));
                    if self.eat(b'}') {
                        return Ok(Json::Obj(o));
                    }
                    if !self.eat(b',') {
                        return self.err("expected ',' or '}'");
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut a = Vec::new();
                if self.eat(b']') {
                    return Ok(Json::Arr(a));
                }
                loop {
                    a.push(self.value(depth + 1)?);
                    if self.eat(b']') {
                        return Ok(Json::Arr(a));
                    }
                    if !self.eat(b',') {
                        return self.err("expected ',' or ']'");
                    }
                }
            }
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => {
                for (word, v) in [("true", Json::Bool(true)), ("false", Json::Bool(false)), ("null", Json::Null)] {
                    if self.s[self.i..].starts_with(word.as_bytes()) {
                        self.i += word.len();
                        return Ok(v);
                    }
                }
                self.err("unexpected character")
            }
        }
    }

    fn number(&mut self) -> Result<Json, String> {
        let start = self.i;
        let digits = |p: &mut Self| {
            let d = p.i;
            while p.i < p.s.len() && p.s[p.i].is_ascii_digit() {
                p.i += 1;
            }
            p.i > d
        };
        if self.s[self.i] == b'-' {
            self.i += 1;
        }
        if self.s.get(self.i) == Some(&b'0') {
            self.i += 1;
        } else if !digits(self) {
            return self.err("bad number");
        }
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            if !digits(self) {
                return self.err("bad number");
            }
        }
        if matches!(self.s.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.s.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !digits(self) {
                return self.err("bad number");
            }
        }
        Ok(Json::Num(String::from_utf8_lossy(&self.s[start..self.i]).into_owned()))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self.s.get(self.i..self.i + 4).and_then(|h| std::str::from_utf8(h).ok());
        match h.and_then(|h| u32::from_str_radix(h, 16).ok()) {
            Some(v) => {
                self.i += 4;
                Ok(v)
            }
            None => self.err("bad \\u escape"),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.i += 1; // the opening quote
        let mut out = Vec::new();
        loop {
            match self.s.get(self.i) {
                None => return self.err("unterminated string"),
                Some(b'"') => {
                    self.i += 1;
                    return String::from_utf8(out).or_else(|_| self.err("invalid UTF-8 in string"));
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = match self.s.get(self.i) {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.i += 1;
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) && self.s[self.i..].starts_with(b"\\u") {
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return self.err("bad surrogate pair");
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            let c = char::from_u32(cp).map_or_else(|| self.err("bad \\u escape"), Ok)?;
                            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                            continue;
                        }
                        _ => return self.err("bad escape"),
                    };
                    self.i += 1;
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                Some(&b) if b < 0x20 => return self.err("control character in string"),
                Some(&b) => {
                    out.push(b);
                    self.i += 1;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::excessive_precision)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    fn weight(n: usize, seed: u64) -> Vec<f32> {
        let mut r = rng(seed);
        (0..n).map(|i| r() * if i % 61 == 7 { 0.4 } else { 0.03 }).collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn nf4_literals_are_bnbs_f32_values() {
        // bitsandbytes' decimals, which must print back unchanged from the f32 values.
        let text = [
            "-1",
            "-0.6961928009986877",
            "-0.5250730514526367",
            "-0.39491748809814453",
            "-0.28444138169288635",
            "-0.18477343022823334",
            "-0.09105003625154495",
            "0",
            "0.07958029955625534",
            "0.16093020141124725",
            "0.24611230194568634",
            "0.33791524171829224",
            "0.44070982933044434",
            "0.5626170039176941",
            "0.7229568362236023",
            "1",
        ];
        for (v, t) in NF4.iter().zip(text) {
            assert_eq!(format!("{}", *v as f64), t);
        }
        assert!(NF4.windows(2).all(|p| p[0] < p[1]));
    }

    #[test]
    fn fp4_table_in_bit_pattern_order() {
        let raw = [0.0f32, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0];
        for (i, r) in raw.iter().enumerate() {
            assert_eq!(FP4[i].to_bits(), (r / 12.0).to_bits());
            assert_eq!(FP4[i + 8].to_bits(), (-r / 12.0).to_bits());
        }
        assert_eq!(FP4[8].to_bits(), 0x8000_0000, "index 8 is -0.0");
        assert_eq!(FP4[3], 1.0);
        assert_eq!(FP4[11], -1.0);
        assert_eq!(FP4[1], (1.0f64 / 192.0) as f32);
        assert_eq!(FP4[2], (2.0f64 / 3.0) as f32);
        // bnb's C++ CPU table writes the same f32 values as decimals.
        assert_eq!(FP4[1], 0.005_208_333_333_f32);
        assert_eq!(FP4[4], 0.333_333_33_f32);
    }

    #[test]
    fn dynamic_map_matches_bnbs_table() {
        let m = dynamic_map();
        assert!(m.windows(2).all(|p| p[0] < p[1]));
        assert_eq!(m[127], 0.0);
        assert_eq!(m[255], 1.0);
        for (a, b) in m[..127].iter().zip(m[128..255].iter().rev()) {
            assert_eq!(*a, -b);
        }
        // Spot values (bit patterns) of the table bitsandbytes shipped as code.h; index 20 and 25
        // are among those that need the fused multiply-add of torch's linspace.
        for (i, b) in [
            (0, 0xbf7e3333u32),
            (1, 0xbf7a999a),
            (20, 0xbf363334),
            (25, 0xbf243334),
            (64, 0xbdc9eb85),
            (126, 0xb513a3b7),
            (128, 0x3513a3b7),
            (129, 0x365a1a94),
            (200, 0x3e6f3333),
            (254, 0x3f7e3333),
        ] {
            assert_eq!(m[i].to_bits(), b, "entry {i}");
        }
        // FNV-1a over the little-endian bytes of all 256 entries of that table.
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for v in m {
            for byte in v.to_le_bytes() {
                h = (h ^ byte as u64).wrapping_mul(0x100_0000_01b3);
            }
        }
        assert_eq!(h, 0xd677_f22a_9666_5bc4);
    }

    #[test]
    fn nf4_row_of_64_known_answer() {
        // Each value is 2·NF4[i % 16]: absmax 2, scaled values are the table itself.
        let w: Vec<f32> = (0..64).map(|i| 2.0 * NF4[i % 16]).collect();
        let q = quantize_4bit(&w, FourBit::Nf4, 64, false).unwrap();
        let row = [0x01u8, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF];
        assert_eq!(q.packed, row.repeat(4), "first value in the high nibble");
        assert_eq!(q.absmax, Absmax::Plain(vec![2.0]));
        assert_eq!(bits(&q.dequantize()), bits(&w));

        // Hand-picked values, absmax 1 (from the last one): 0.5 lies below the midpoint
        // 0.50166 of 0.4407 and 0.5626 → 12; −0.25 below −0.2346 → 4; 0 → 7; −0.9 → 0.
        let mut w = vec![0f32; 64];
        w[..5].copy_from_slice(&[0.5, -0.25, 0.0, -0.9, 0.1]);
        w[63] = 1.0;
        let q = quantize_4bit(&w, FourBit::Nf4, 64, false).unwrap();
        assert_eq!(&q.packed[..3], &[0xC4, 0x70, 0x87]);
        assert_eq!(q.packed[31], 0x7F);
        assert_eq!(q.dequantize()[0], NF4[12]);
    }

    #[test]
    fn midpoints_go_to_the_lower_code() {
        let nearest = Nearest::new(&NF4);
        for k in 0..15 {
            let mid = (NF4[k] + NF4[k + 1]) / 2.0;
            assert_eq!(nearest.code(mid), k as u8);
            assert_eq!(nearest.code(mid.next_up()), k as u8 + 1);
            assert_eq!(nearest.code(NF4[k]), k as u8);
        }
        let fp4 = Nearest::new(&FP4);
        for (i, &v) in FP4.iter().enumerate().filter(|&(i, _)| i != 8) {
            assert_eq!(fp4.code(v), i as u8);
        }
        // bucketize on the stably sorted table: ±0 and small negatives → +0 (index 0), small
        // positives up to the midpoint 1/384 → −0 (index 8), as bnb's torch kernel does.
        assert_eq!(fp4.code(0.0), 0);
        assert_eq!(fp4.code(-0.0), 0);
        assert_eq!(fp4.code(-0.002), 0);
        assert_eq!(fp4.code(0.002), 8);
        assert_eq!(fp4.code(0.003), 1);
        assert_eq!(fp4.code(-0.003), 9);
        assert_eq!(fp4.code(-1.0), 11);
    }

    #[test]
    fn fp4_known_answer_and_negative_zero() {
        let mut w = vec![0f32; 32];
        w[..4].copy_from_slice(&[-6.0, 1.0, 0.004, 3.0]);
        let q = quantize_4bit(&w, FourBit::Fp4, 32, false).unwrap();
        // −6/6 = −1 → 0b1011; 1/6 → 0b0110; 0.004/6 below 1/384 → −0 (8); 3/6 = 0.5 → 0b0101.
        assert_eq!(&q.packed[..2], &[0xB6, 0x85]);
        assert_eq!(q.packed[2..], [0u8; 14]);
        let d = q.dequantize();
        assert_eq!(d[0], -6.0);
        assert_eq!(d[2].to_bits(), 0x8000_0000, "code 8 dequantizes to -0.0");
        assert_eq!(d[4].to_bits(), 0);
    }

    #[test]
    fn odd_count_padding_and_partial_last_block() {
        // 33 values in blocks of 32: the second block holds only w[32] and has its own absmax.
        let mut w: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) / 16.0).collect();
        w.push(-3.0);
        let q = quantize_4bit(&w, FourBit::Nf4, 32, false).unwrap();
        assert_eq!(q.packed.len(), 17);
        assert_eq!(q.absmax, Absmax::Plain(vec![1.0, 3.0]));
        assert_eq!(q.packed[16], 0x07, "code 0 (-1.0) then the pad: the code of 0.0, 7 for NF4");
        assert_eq!(q.dequantize()[32], -3.0);
        let f = quantize_4bit(&w, FourBit::Fp4, 32, false).unwrap();
        assert_eq!(f.packed[16], 0xB0, "FP4 -1.0 is 0b1011, the pad (code of 0.0) is 0");

        // A partial all-zero block stores 1e-38 (bnb clamps before storing), a full one 0.
        let q = quantize_4bit(&[0.0; 65], FourBit::Nf4, 64, false).unwrap();
        assert_eq!(q.absmax, Absmax::Plain(vec![0.0, 1e-38]));
        assert!(q.packed.iter().all(|&b| b == 0x77));
        assert!(q.dequantize().iter().all(|&x| x == 0.0));

        // A single value, shorter than any block.
        let q = quantize_4bit(&[0.25], FourBit::Nf4, 4096, false).unwrap();
        assert_eq!((q.packed.clone(), q.absmax.clone()), (vec![0xF7], Absmax::Plain(vec![0.25])));
    }

    #[test]
    fn every_code_dequantizes_to_table_times_absmax() {
        let packed: Vec<u8> = (0..=255).collect();
        let absmax = vec![0.37f32, 1.5, 2e-3, 7.0, 0.0, 1e-30, 3.25, 0.125];
        for kind in [FourBit::Nf4, FourBit::Fp4] {
            let q = Bnb4 { kind, n: 512, blocksize: 64, packed: packed.clone(), absmax: Absmax::Plain(absmax.clone()) };
            let d = q.dequantize();
            for (k, &b) in packed.iter().enumerate() {
                let a = absmax[2 * k / 64];
                assert_eq!(d[2 * k].to_bits(), (kind.table()[(b >> 4) as usize] * a).to_bits());
                assert_eq!(d[2 * k + 1].to_bits(), (kind.table()[(b & 15) as usize] * a).to_bits());
            }
        }
    }

    #[test]
    fn quantized_values_are_nearest() {
        let w = weight(64 * 37 + 9, 3);
        for kind in [FourBit::Nf4, FourBit::Fp4] {
            for bs in [32, 64, 256] {
                let q = quantize_4bit(&w, kind, bs, false).unwrap();
                let d = q.dequantize();
                let a = q.absmax_values();
                for (i, (&x, &y)) in w.iter().zip(&d).enumerate() {
                    let am = a[i / bs];
                    let best = kind.table().iter().map(|t| (t * am - x).abs()).fold(f32::INFINITY, f32::min);
                    assert!((y - x).abs() <= best + am * 1e-6, "{kind:?} bs {bs} index {i}");
                }
            }
        }
    }

    #[test]
    fn double_quant_with_more_than_256_blocks() {
        let w = weight(64 * 300 + 10, 5); // 301 blocks → nested blocks of 256 and 45
        let plain = quantize_4bit(&w, FourBit::Nf4, 64, false).unwrap();
        let dq = quantize_4bit(&w, FourBit::Nf4, 64, true).unwrap();
        assert_eq!(dq.packed, plain.packed, "codes depend only on the exact absmax");
        let Absmax::Plain(exact) = &plain.absmax else { panic!() };
        let Absmax::Double { codes, nested_absmax, nested_map, offset, nested_blocksize } = &dq.absmax else {
            panic!()
        };
        assert_eq!((codes.len(), nested_absmax.len(), nested_map.len(), *nested_blocksize), (301, 2, 256, 256));
        assert_eq!(nested_map[..], dynamic_map()[..]);
        let mean = exact.iter().map(|&a| a as f64).sum::<f64>() / 301.0;
        assert_eq!(*offset, mean as f32);
        for (b, &e) in exact.iter().enumerate() {
            let c = e - offset;
            let nb = b / 256;
            let na = nested_absmax[nb];
            let want =
                exact[nb * 256..exact.len().min(nb * 256 + 256)].iter().fold(0f32, |m, &a| m.max((a - offset).abs()));
            assert_eq!(na, want);
            // The dynamic map's widest gap is 1/64 (near ±1): error at most half of it.
            let got = dq.absmax_values()[b];
            assert!((got - e).abs() <= na / 128.0 + 1e-6, "block {b}: {got} vs {e}");
            assert_eq!(got.to_bits(), (nested_map[codes[b] as usize] * na + offset).to_bits());
            assert!((c / na).abs() <= 1.0);
        }
        let d = dq.dequantize();
        let a = dq.absmax_values();
        for (i, &y) in d.iter().enumerate() {
            assert_eq!(y.to_bits(), (NF4[dq.code(i) as usize] * a[i / 64]).to_bits());
        }
    }

    #[test]
    fn json_exact() {
        let w: Vec<f32> = (0..64).map(|i| 2.0 * NF4[i % 16]).collect();
        let q = quantize_4bit(&w, FourBit::Nf4, 64, false).unwrap();
        assert_eq!(
            q.quant_state_json([1, 64], "bfloat16"),
            r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [1, 64]}"#
        );
        // Two blocks with absmax 1 and 2: offset 1.5.
        let mut w = vec![0f32; 128];
        w[0] = 1.0;
        w[64] = -2.0;
        let q = quantize_4bit(&w, FourBit::Fp4, 64, true).unwrap();
        assert_eq!(
            q.quant_state_json([2, 64], "float16"),
            r#"{"quant_type": "fp4", "blocksize": 64, "dtype": "float16", "shape": [2, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 1.5}"#
        );
        // −0.5 and 0.5 against nested absmax 0.5: codes 0 (−0.99297) and 255 (1.0).
        let Absmax::Double { codes, nested_absmax, .. } = &q.absmax else { panic!() };
        assert_eq!((codes.as_slice(), nested_absmax.as_slice()), ([0u8, 255].as_slice(), [0.5f32].as_slice()));
        assert_eq!(q.absmax_values(), vec![0.5 * dynamic_map()[0] + 1.5, 2.0]);
    }

    #[test]
    fn python_float_repr() {
        for (x, s) in [
            (0.1f32 as f64, "0.10000000149011612"),
            (1.5, "1.5"),
            (3.0, "3.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (0.0001, "0.0001"),
            (-0.00012345, "-0.00012345"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456.75, "123456.75"),
            (1.25e100, "1.25e+100"),
            (0.007874015718698502, "0.007874015718698502"),
        ] {
            assert_eq!(py_float_repr(x), s);
        }
    }

    #[test]
    fn from_parts_round_trip() {
        let w = weight(96 * 50 + 1, 9);
        for (kind, bs, dq) in [(FourBit::Nf4, 64, true), (FourBit::Fp4, 32, false), (FourBit::Nf4, 4096, true)] {
            let q = quantize_4bit(&w, kind, bs, dq).unwrap();
            let json = q.quant_state_json([1, w.len()], "bfloat16");
            let absmax = match &q.absmax {
                Absmax::Plain(a) => Absmax::Plain(a.clone()),
                Absmax::Double { codes, nested_absmax, nested_map, .. } => {
                    Absmax::nested(codes.clone(), nested_absmax.clone(), nested_map.clone())
                }
            };
            let (r, shape, dtype) = Bnb4::from_parts("m.up.weight", &q.packed, absmax, &json).unwrap();
            assert_eq!((r.clone(), shape, dtype.as_str()), (q.clone(), [1, w.len()], "bfloat16"));
            assert_eq!(bits(&r.dequantize()), bits(&q.dequantize()));
        }
    }

    #[test]
    fn from_parts_rejects_bad_inputs() {
        let w = weight(64 * 300, 11);
        let q = quantize_4bit(&w, FourBit::Nf4, 64, true).unwrap();
        let json = q.quant_state_json([300, 64], "bfloat16");
        let Absmax::Double { codes, nested_absmax, nested_map, .. } = q.absmax.clone() else { panic!() };
        let nested = || Absmax::nested(codes.clone(), nested_absmax.clone(), nested_map.clone());
        let name = "model.layers.0.mlp.up_proj.weight";
        let err = |packed: &[u8], a: Absmax, j: &str| Bnb4::from_parts(name, packed, a, j).unwrap_err();
        assert!(Bnb4::from_parts(name, &q.packed, nested(), &json).is_ok());

        let e = err(&q.packed[1..], nested(), &json);
        assert!(e.starts_with(&format!("{name}: ")) && e.contains("9600"), "{e}");
        let e = err(&q.packed, Absmax::nested(codes[1..].to_vec(), nested_absmax.clone(), nested_map.clone()), &json);
        assert!(e.starts_with(&format!("{name}.absmax: ")), "{e}");
        let e = err(&q.packed, Absmax::nested(codes.clone(), vec![1.0], nested_map.clone()), &json);
        assert!(e.starts_with(&format!("{name}.nested_absmax: ")), "{e}");
        let e = err(&q.packed, Absmax::nested(codes.clone(), nested_absmax.clone(), vec![0.0; 16]), &json);
        assert!(e.starts_with(&format!("{name}.nested_quant_map: ")), "{e}");
        let e = err(&q.packed, Absmax::nested(codes.clone(), vec![f32::NAN, 1.0], nested_map.clone()), &json);
        assert!(e.starts_with(&format!("{name}.nested_absmax: ")) && e.contains("finite"), "{e}");
        let e = err(&q.packed, Absmax::Plain(vec![1.0; 300]), &json);
        assert!(e.contains("quant_state") && e.contains("nested_blocksize"), "{e}");
        let plain_json = r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [300, 64]}"#;
        let e = err(&q.packed, nested(), plain_json);
        assert!(e.contains("quant_state") && e.contains("missing key \"nested_blocksize\""), "{e}");
        let e = err(&q.packed, Absmax::Plain(vec![1.0; 299]), plain_json);
        assert!(e.starts_with(&format!("{name}.absmax: 299 values, expected 300")), "{e}");
        assert!(Bnb4::from_parts(name, &q.packed, Absmax::Plain(vec![1.0; 300]), plain_json).is_ok());

        let qs = format!("{name}.quant_state: ");
        for (j, key) in [
            (json.replace("\"blocksize\"", "\"blocksiz\""), "\"blocksiz\""),
            (json.replace("\"blocksize\": 64", "\"blocksize\": 48"), "\"blocksize\""),
            (json.replace("\"blocksize\": 64", "\"blocksize\": 64.0"), "\"blocksize\""),
            (json.replace("nf4", "int4"), "\"quant_type\""),
            (json.replace("bfloat16", "float64"), "\"dtype\""),
            (json.replace("[300, 64]", "[300, 64, 1]"), "\"shape\""),
            (json.replace("[300, 64]", "[301, 64]"), "9632"),
            (json.replace("\"nested_dtype\": \"float32\"", "\"nested_dtype\": \"float16\""), "\"nested_dtype\""),
            (json.replace(", \"nested_offset\"", ", \"dtype\": \"float32\", \"nested_offset\""), "twice"),
            (json.replace('}', ""), "bad JSON"),
            ("[1, 2]".to_string(), "not a JSON object"),
        ] {
            let e = err(&q.packed, nested(), &j);
            assert!(e.contains(key) && e.starts_with(name), "{j} → {e}");
            if key != "9632" {
                assert!(e.starts_with(&qs), "{e}");
            }
        }
    }

    #[test]
    fn quantize_rejects_bad_inputs() {
        assert!(quantize_4bit(&[1.0; 64], FourBit::Nf4, 48, false).unwrap_err().contains("48"));
        assert!(quantize_4bit(&[1.0; 64], FourBit::Nf4, 8192, false).is_err());
        assert!(quantize_4bit(&[1.0; 64], FourBit::Nf4, 16, false).is_err());
        assert!(quantize_4bit(&[], FourBit::Nf4, 64, false).is_err());
        let mut w = vec![0.5f32; 100];
        w[77] = f32::INFINITY;
        assert!(quantize_4bit(&w, FourBit::Fp4, 64, true).unwrap_err().contains("index 77"));
        w[77] = f32::NAN;
        assert!(quantize_int8(&w, 10).unwrap_err().contains("row 7, column 7"));
        assert!(quantize_int8(&[1.0; 10], 3).is_err());
        assert!(quantize_int8(&[1.0; 10], 0).is_err());
    }

    #[test]
    fn int8_round_trip() {
        let mut w = weight(16 * 40, 13);
        w[40..80].fill(0.0); // an all-zero row
        let q = quantize_int8(&w, 40).unwrap();
        assert_eq!((q.rows, q.cols), (16, 40));
        assert_eq!(q.scb[1], 0.0);
        assert!(q.codes[40..80].iter().all(|&c| c == 0));
        let d = q.dequantize();
        for r in 0..16 {
            let row = &w[r * 40..(r + 1) * 40];
            let m = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(q.scb[r], m);
            if m > 0.0 {
                let i = row.iter().position(|v| v.abs() == m).unwrap();
                assert_eq!(q.codes[r * 40 + i].abs(), 127);
            }
            for c in 0..40 {
                let k = r * 40 + c;
                assert!((d[k] - w[k]).abs() <= m / 254.0 * 1.0001, "{k}");
                assert_eq!(d[k].to_bits(), (q.codes[k] as f32 * q.scb[r] * INV_127).to_bits());
            }
        }
        // Hand-computed: row absmax 2, 1 · 127/2 = 63.5 rounds to even 64, −0.5 → −31.75 → −32.
        let q = quantize_int8(&[2.0, 1.0, -0.5, 0.0], 4).unwrap();
        assert_eq!(q.codes, vec![127, 64, -32, 0]);
        assert_eq!(q.dequantize()[0], 127.0 * 2.0 * INV_127);
        assert_eq!(INV_127, 1.0f32 / 127.0);

        let r = Bnb8::from_parts("m.q.weight", [16, 40], &q_codes(&w), &quantize_int8(&w, 40).unwrap().scb, 0);
        assert_eq!(r.unwrap(), quantize_int8(&w, 40).unwrap());
        let e = Bnb8::from_parts("m.q.weight", [16, 40], &q_codes(&w), &[1.0; 15], 0).unwrap_err();
        assert!(e.starts_with("m.q.SCB: 15 values"), "{e}");
        let e = Bnb8::from_parts("m.q.weight", [16, 41], &q_codes(&w), &[1.0; 16], 0).unwrap_err();
        assert!(e.starts_with("m.q.weight: 640 codes"), "{e}");
        let e = Bnb8::from_parts("m.q.weight", [16, 40], &q_codes(&w), &[1.0; 16], 1).unwrap_err();
        assert!(e.starts_with("m.q.weight_format is 1"), "{e}");
    }

    fn q_codes(w: &[f32]) -> Vec<i8> {
        quantize_int8(w, 40).unwrap().codes
    }
}
