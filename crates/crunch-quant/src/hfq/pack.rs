//! How GPTQ, AWQ and compressed-tensors store an [`IntGroups`] weight, both ways.
//!
//! All three pack codes little end first into 32-bit words and differ in the direction and order:
//!
//! | format | codes | zeros | scales |
//! |---|---|---|---|
//! | GPTQ (`gptq`, v1) | `qweight [in·b/32, out]`, along `in` | `qzeros [groups, out·b/32]`, `zero − 1` | `scales [groups, out]` |
//! | AWQ (GEMM) | `qweight [in, out/8]`, along `out`, order 0 2 4 6 1 3 5 7 | `qzeros [groups, out/8]`, same order, `zero` | `scales [groups, out]` |
//! | compressed-tensors (`pack-quantized`) | `weight_packed [out, in·b/32]`, along `in` | `weight_zero_point [out·b/32, groups]`, along `out` | `weight_scale [out, groups]` |
//!
//! GPTQ's v1 checkpoints store `zero − 1` in each field (a zero of 0 cannot be written, so
//! asymmetric GPTQ export uses `zero_min = 1`); `gptq_v2` stores the zero itself. Symmetric GPTQ
//! stores `mid − 1` (v1) everywhere; compressed-tensors stores no zero points when symmetric
//! (its codes are the signed value plus `2^(b−1)`, the same unsigned codes as here).

use super::{IntGroups, IntSpec};
use half::f16;

/// AWQ's nibble `p` of a word holds column `8c + AWQ_ORDER[p]`.
pub const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

fn per_word(bits: u8, what: &str) -> Result<usize, String> {
    match bits {
        2 | 4 | 8 => Ok(32 / bits as usize),
        b => Err(format!("{what}: {b}-bit codes cannot be packed (2, 4 or 8 bits)")),
    }
}

/// Pack `values` (each `< 2^bits`) into words, `per` per word, low bits first.
fn pack_words(values: impl Iterator<Item = u8>, bits: u8, out: &mut Vec<i32>) {
    let per = 32 / bits as usize;
    let (mut word, mut k) = (0u32, 0usize);
    for v in values {
        word |= (v as u32) << (bits as usize * k);
        k += 1;
        if k == per {
            out.push(word as i32);
            word = 0;
            k = 0;
        }
    }
    if k > 0 {
        out.push(word as i32);
    }
}

#[inline]
fn field(word: i32, k: usize, bits: u8) -> u8 {
    ((word as u32 >> (bits as usize * k)) & ((1u32 << bits) - 1)) as u8
}

/// A GPTQ layer's tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct Gptq {
    /// `[in·bits/32, out]`.
    pub qweight: Vec<i32>,
    /// `[groups, out·bits/32]`.
    pub qzeros: Vec<i32>,
    /// `[groups, out]`.
    pub scales: Vec<f16>,
    /// `[in]`: `i / group`.
    pub g_idx: Vec<i32>,
}

/// GPTQ v1 packing of `q` (`desc_act = false`: trivial `g_idx`).
///
/// # Errors
/// Bits other than 2, 4, 8; sizes that are not whole words; a zero of 0 (not storable in v1).
pub fn gptq_pack(name: &str, q: &IntGroups) -> Result<Gptq, String> {
    let bits = q.spec.bits;
    let per = per_word(bits, name)?;
    let (out, inn, g, ng) = (q.rows, q.cols, q.spec.group, q.groups_per_row());
    if !inn.is_multiple_of(per) || !out.is_multiple_of(per) {
        return Err(format!(
            "{name}: GPTQ packs {per} codes per 32-bit word along both dimensions; {out} x {inn} is not whole words"
        ));
    }
    if let Some(k) = q.zeros.iter().position(|&z| z == 0) {
        return Err(format!(
            "{name}: group {} of row {} has zero point 0, which GPTQ's v1 format cannot store",
            k % ng,
            k / ng
        ));
    }
    let mut qweight = Vec::with_capacity(inn / per * out);
    for r in 0..inn / per {
        for o in 0..out {
            let base = o * inn + r * per;
            let mut word = 0u32;
            for k in 0..per {
                word |= (q.codes[base + k] as u32) << (bits as usize * k);
            }
            qweight.push(word as i32);
        }
    }
    let mut qzeros = Vec::with_capacity(ng * out / per);
    let mut scales = Vec::with_capacity(ng * out);
    for gi in 0..ng {
        pack_words((0..out).map(|o| q.zeros[o * ng + gi] - 1), bits, &mut qzeros);
        scales.extend((0..out).map(|o| q.scales[o * ng + gi]));
    }
    let g_idx = (0..inn).map(|i| (i / g) as i32).collect();
    Ok(Gptq { qweight, qzeros, scales, g_idx })
}

/// A weight read from a quantized checkpoint: its exact values, and the [`IntGroups`] when its
/// groups are consecutive columns (what a lossless GGUF re-expression needs).
#[derive(Clone, Debug)]
pub struct Decoded {
    /// `out × in`.
    pub values: Vec<f32>,
    pub groups: Option<IntGroups>,
}

/// Which GPTQ zero convention a checkpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GptqZeros {
    /// Fields hold `zero − 1` (`checkpoint_format: gptq`, the default).
    V1,
    /// Fields hold the zero (`gptq_v2`).
    V2,
}

/// Decode a GPTQ layer of `out × inn` with `bits`-bit codes. `g_idx` may be any assignment of
/// columns to groups (act-order); `sym` says whether the checkpoint claims symmetric quantization.
///
/// # Errors
/// Tensor sizes that do not match the shape, group indices out of range; each names the tensor.
#[allow(clippy::too_many_arguments)]
pub fn gptq_unpack(
    name: &str,
    bits: u8,
    out: usize,
    inn: usize,
    qweight: &[i32],
    qzeros: &[i32],
    scales: &[f16],
    g_idx: Option<&[i32]>,
    zeros: GptqZeros,
) -> Result<Decoded, String> {
    let per = per_word(bits, name)?;
    if !inn.is_multiple_of(per) || qweight.len() != inn / per * out {
        return Err(format!(
            "{name}.qweight: {} words for {out} outputs x {inn} inputs at {bits} bits (expected [{}, {out}])",
            qweight.len(),
            inn / per
        ));
    }
    if out == 0 || !scales.len().is_multiple_of(out) || scales.is_empty() {
        return Err(format!("{name}.scales: {} values are not whole rows of {out} outputs", scales.len()));
    }
    let ng = scales.len() / out;
    let zw = out.div_ceil(per);
    if qzeros.len() != ng * zw {
        return Err(format!("{name}.qzeros: {} words, expected [{ng}, {zw}]", qzeros.len()));
    }
    let gi: Vec<usize> = match g_idx {
        Some(gx) => {
            if gx.len() != inn {
                return Err(format!("{name}.g_idx: {} entries for {inn} inputs", gx.len()));
            }
            let mut v = Vec::with_capacity(inn);
            for (i, &x) in gx.iter().enumerate() {
                if x < 0 || x as usize >= ng {
                    return Err(format!("{name}.g_idx[{i}] = {x}, but there are {ng} groups"));
                }
                v.push(x as usize);
            }
            v
        }
        None => {
            if !inn.is_multiple_of(ng) {
                return Err(format!("{name}: {ng} groups do not divide {inn} inputs and there is no g_idx"));
            }
            (0..inn).map(|i| i / (inn / ng)).collect()
        }
    };
    let add = match zeros {
        GptqZeros::V1 => 1u16,
        GptqZeros::V2 => 0,
    };
    let zero = |g: usize, o: usize| -> u16 { field(qzeros[g * zw + o / per], o % per, bits) as u16 + add };
    let mut values = vec![0f32; out * inn];
    let mut codes = vec![0u8; out * inn];
    for i in 0..inn {
        let (r, k) = (i / per, i % per);
        let g = gi[i];
        for o in 0..out {
            let u = field(qweight[r * out + o], k, bits);
            codes[o * inn + i] = u;
            values[o * inn + i] = scales[g * out + o].to_f32() * (u as f32 - zero(g, o) as f32);
        }
    }
    // Consecutive groups (trivial g_idx) and zeros that fit the code range: an IntGroups.
    let gsize = inn / ng;
    let trivial = inn.is_multiple_of(ng) && gi.iter().enumerate().all(|(i, &g)| g == i / gsize);
    let max = (1u16 << bits) - 1;
    let groups = if trivial && (0..ng).all(|g| (0..out).all(|o| zero(g, o) <= max)) {
        let mut z = vec![0u8; out * ng];
        let mut s = vec![f16::ZERO; out * ng];
        for o in 0..out {
            for g in 0..ng {
                z[o * ng + g] = zero(g, o) as u8;
                s[o * ng + g] = scales[g * out + o];
            }
        }
        let mid = 1u8 << (bits - 1);
        let sym = z.iter().all(|&v| v == mid);
        Some(IntGroups {
            rows: out,
            cols: inn,
            spec: IntSpec { bits, group: gsize, sym, zero_min: 0 },
            codes,
            scales: s,
            zeros: z,
        })
    } else {
        None
    };
    Ok(Decoded { values, groups })
}

/// Guess the zero convention of a checkpoint labelled symmetric GPTQ from its first zero field
/// (`mid − 1` in v1, `mid` in v2): GPTQModel has written v2 zeros under the `gptq` label.
pub fn sniff_sym_zeros(qzeros: &[i32], bits: u8) -> Option<GptqZeros> {
    let mid = 1u8 << (bits - 1);
    match qzeros.first().map(|&w| field(w, 0, bits)) {
        Some(v) if v == mid - 1 => Some(GptqZeros::V1),
        Some(v) if v == mid => Some(GptqZeros::V2),
        _ => None,
    }
}

/// An AWQ (GEMM) layer's tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct Awq {
    /// `[in, out/8]`.
    pub qweight: Vec<i32>,
    /// `[groups, out/8]`.
    pub qzeros: Vec<i32>,
    /// `[groups, out]`.
    pub scales: Vec<f16>,
}

/// AWQ GEMM packing of a 4-bit `q`.
///
/// # Errors
/// Not 4 bits, outputs not a multiple of 8.
pub fn awq_pack(name: &str, q: &IntGroups) -> Result<Awq, String> {
    if q.spec.bits != 4 {
        return Err(format!("{name}: AWQ stores 4-bit codes only, not {}", q.spec.bits));
    }
    let (out, inn, ng) = (q.rows, q.cols, q.groups_per_row());
    if !out.is_multiple_of(8) {
        return Err(format!("{name}: AWQ packs 8 outputs per word; {out} outputs is not a multiple of 8"));
    }
    let interleaved = |get: &dyn Fn(usize) -> u8, dst: &mut Vec<i32>| {
        for c in 0..out / 8 {
            let mut word = 0u32;
            for (p, &j) in AWQ_ORDER.iter().enumerate() {
                word |= (get(8 * c + j) as u32) << (4 * p);
            }
            dst.push(word as i32);
        }
    };
    let mut qweight = Vec::with_capacity(inn * out / 8);
    for i in 0..inn {
        interleaved(&|o| q.codes[o * inn + i], &mut qweight);
    }
    let mut qzeros = Vec::with_capacity(ng * out / 8);
    let mut scales = Vec::with_capacity(ng * out);
    for g in 0..ng {
        interleaved(&|o| q.zeros[o * ng + g], &mut qzeros);
        scales.extend((0..out).map(|o| q.scales[o * ng + g]));
    }
    Ok(Awq { qweight, qzeros, scales })
}

/// Decode an AWQ GEMM layer of `out × inn`.
///
/// # Errors
/// Tensor sizes that do not match; each names the tensor.
pub fn awq_unpack(
    name: &str,
    out: usize,
    inn: usize,
    qweight: &[i32],
    qzeros: &[i32],
    scales: &[f16],
) -> Result<IntGroups, String> {
    if !out.is_multiple_of(8) || qweight.len() != inn * out / 8 {
        return Err(format!("{name}.qweight: {} words, expected [{inn}, {}]", qweight.len(), out / 8));
    }
    if scales.is_empty() || !scales.len().is_multiple_of(out) || !inn.is_multiple_of(scales.len() / out) {
        return Err(format!(
            "{name}.scales: {} values are not whole groups of [{inn} inputs, {out} outputs]",
            scales.len()
        ));
    }
    let ng = scales.len() / out;
    if qzeros.len() != ng * out / 8 {
        return Err(format!("{name}.qzeros: {} words, expected [{ng}, {}]", qzeros.len(), out / 8));
    }
    let mut pos = [0usize; 8];
    for (p, &j) in AWQ_ORDER.iter().enumerate() {
        pos[j] = p;
    }
    let at = |words: &[i32], row: usize, o: usize| field(words[row * out / 8 + o / 8], pos[o % 8], 4);
    let mut codes = vec![0u8; out * inn];
    for i in 0..inn {
        for o in 0..out {
            codes[o * inn + i] = at(qweight, i, o);
        }
    }
    let mut zeros = vec![0u8; out * ng];
    let mut s = vec![f16::ZERO; out * ng];
    for g in 0..ng {
        for o in 0..out {
            zeros[o * ng + g] = at(qzeros, g, o);
            s[o * ng + g] = scales[g * out + o];
        }
    }
    let sym = zeros.iter().all(|&z| z == 8);
    Ok(IntGroups {
        rows: out,
        cols: inn,
        spec: IntSpec { bits: 4, group: inn / ng, sym, zero_min: 0 },
        codes,
        scales: s,
        zeros,
    })
}

/// A compressed-tensors `pack-quantized` layer's tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct PackQuantized {
    /// `[out, ceil(in·bits/32)]`.
    pub weight_packed: Vec<i32>,
    /// `[out, groups]`.
    pub weight_scale: Vec<f16>,
    /// `[ceil(out·bits/32), groups]`, when asymmetric.
    pub weight_zero_point: Option<Vec<i32>>,
}

/// Words per packed row of `n` codes of `bits`.
pub fn ct_words(n: usize, bits: u8) -> usize {
    (n * bits as usize).div_ceil(32)
}

/// compressed-tensors packing of `q` (4 or 8 bits; rows padded to whole words).
///
/// # Errors
/// Bits other than 4 or 8.
pub fn ct_pack(name: &str, q: &IntGroups) -> Result<PackQuantized, String> {
    let bits = q.spec.bits;
    if bits != 4 && bits != 8 {
        return Err(format!("{name}: compressed-tensors pack-quantized is written for 4 and 8 bits, not {bits}"));
    }
    let (out, inn, ng) = (q.rows, q.cols, q.groups_per_row());
    let mut weight_packed = Vec::with_capacity(out * ct_words(inn, bits));
    for row in q.codes.chunks(inn) {
        pack_words(row.iter().copied(), bits, &mut weight_packed);
    }
    let weight_zero_point = (!q.spec.sym).then(|| {
        // Packed along the outputs: word row `o·b/32`, one column per group.
        let rows = ct_words(out, bits);
        let mut zp = vec![0i32; rows * ng];
        for g in 0..ng {
            let mut col = Vec::with_capacity(rows);
            pack_words((0..out).map(|o| q.zeros[o * ng + g]), bits, &mut col);
            for (r, w) in col.into_iter().enumerate() {
                zp[r * ng + g] = w;
            }
        }
        zp
    });
    Ok(PackQuantized { weight_packed, weight_scale: q.scales.clone(), weight_zero_point })
}

/// Decode a compressed-tensors `pack-quantized` layer of `out × inn` (groups of consecutive
/// columns; `weight_g_idx` is not supported).
///
/// # Errors
/// Tensor sizes that do not match; each names the tensor.
pub fn ct_unpack(
    name: &str,
    bits: u8,
    out: usize,
    inn: usize,
    weight_packed: &[i32],
    weight_scale: &[f16],
    weight_zero_point: Option<&[i32]>,
) -> Result<IntGroups, String> {
    if bits != 4 && bits != 8 {
        return Err(format!("{name}: {bits}-bit pack-quantized weights are not supported (4 or 8)"));
    }
    let wpr = ct_words(inn, bits);
    if weight_packed.len() != out * wpr {
        return Err(format!("{name}.weight_packed: {} words, expected [{out}, {wpr}]", weight_packed.len()));
    }
    if out == 0 || weight_scale.is_empty() || !weight_scale.len().is_multiple_of(out) {
        return Err(format!("{name}.weight_scale: {} values are not whole rows of {out}", weight_scale.len()));
    }
    let ng = weight_scale.len() / out;
    if !inn.is_multiple_of(ng) {
        return Err(format!("{name}.weight_scale: {ng} groups do not divide {inn} inputs"));
    }
    let per = 32 / bits as usize;
    let mut codes = vec![0u8; out * inn];
    for o in 0..out {
        for i in 0..inn {
            codes[o * inn + i] = field(weight_packed[o * wpr + i / per], i % per, bits);
        }
    }
    let mid = 1u8 << (bits - 1);
    let zeros = match weight_zero_point {
        None => vec![mid; out * ng],
        Some(zp) => {
            let rows = ct_words(out, bits);
            if zp.len() != rows * ng {
                return Err(format!("{name}.weight_zero_point: {} words, expected [{rows}, {ng}]", zp.len()));
            }
            let mut z = vec![0u8; out * ng];
            for o in 0..out {
                for g in 0..ng {
                    z[o * ng + g] = field(zp[(o / per) * ng + g], o % per, bits);
                }
            }
            z
        }
    };
    let sym = weight_zero_point.is_none();
    Ok(IntGroups {
        rows: out,
        cols: inn,
        spec: IntSpec { bits, group: inn / ng, sym, zero_min: 0 },
        codes,
        scales: weight_scale.to_vec(),
        zeros,
    })
}
