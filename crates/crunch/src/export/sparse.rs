//! `crunch export --sparse`: the blocks' linear weights stored in compressed-tensors' bitmask
//! formats, so a pruned model is smaller on disk than its dense export.
//!
//! Key decision: only the layout of each tensor changes ([`Layout`]); the folder, the names,
//! `config.json` (plus `quantization_config.sparsity_config`), the tokenizer and the streaming are
//! plain export's. The layout, as compressed-tensors (0.14, the last release with its sparse
//! compressors) writes and reads it, for a weight `P.weight` of `rows x cols`:
//!
//! - `sparse-bitmask` (any sparsity): `P.compressed`, the nonzero values in row-major order (1-D,
//!   the weight's dtype); `P.bitmask`, U8 `[rows, ceil(cols / 8)]`, bit `c % 8` of byte `c / 8` of
//!   a row set when column `c` is stored (numpy's `packbits(..., bitorder="little")` per row, the
//!   last byte of a row padded with zero bits); `P.row_offsets`, I64 `[rows]`, where each row's
//!   values start in `P.compressed`; `P.shape`, I64 `[2]`.
//! - `sparse-24-bitmask` (every group of 4 along a row holds at most 2 nonzeros): exactly 2 values
//!   stored per group (the nonzeros, completed with the first zeros of the group), so
//!   `P.compressed` is `[rows, cols / 2]`; `P.bitmask` as above, with exactly the stored positions
//!   set; `P.shape`, I64 `[2, 1]`.
//!
//! Zero means `== 0` in the exported dtype (both signs, after rounding to F16/BF16): a value that
//! rounds to zero is dropped, so the checkpoint decodes to exactly the dense export. Embeddings,
//! norms and `lm_head` stay dense (`targets: ["Linear"]`, `ignore: ["lm_head"]`, as llm-compressor
//! writes for a model whose output projection is not pruned).

use super::{write_folder, ExportOptions, ExportReport, ExportTensor, Layout};
use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};
use crunch_core::gguf::GgufFile;
use crunch_core::hf::names::{Part, Role};
use crunch_core::safetensors::{Dtype, ShardedWriter, TensorSpec};
use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use std::collections::HashMap;
use std::path::Path;

/// The compressed-tensors release whose layout is written (`quantization_config.version`).
pub const FORMAT_VERSION: &str = "0.14.0.1";

/// A compressed-tensors sparse format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum SparseFormat {
    /// `sparse-bitmask`: any sparsity.
    Bitmask,
    /// `sparse-24-bitmask`: at most 2 nonzeros in every 4 along a row.
    TwoFour,
}

impl SparseFormat {
    /// `bitmask` / `sparse-bitmask`, or `2:4` / `24` / `sparse-24-bitmask` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bitmask" | "sparse-bitmask" => Some(SparseFormat::Bitmask),
            "2:4" | "24" | "sparse-24-bitmask" => Some(SparseFormat::TwoFour),
            _ => None,
        }
    }

    /// The name in `sparsity_config.format`.
    pub fn name(self) -> &'static str {
        match self {
            SparseFormat::Bitmask => "sparse-bitmask",
            SparseFormat::TwoFour => "sparse-24-bitmask",
        }
    }

    /// `sparsity_config.sparsity_structure`.
    pub fn structure(self) -> &'static str {
        match self {
            SparseFormat::Bitmask => "unstructured",
            SparseFormat::TwoFour => "2:4",
        }
    }
}

/// One compressed weight and its sizes.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SparseTensor {
    /// Hugging Face name of the dense weight (`model.layers.0.mlp.up_proj.weight`).
    pub name: String,
    /// The GGUF tensor it came from.
    pub gguf: String,
    /// `[rows, cols]`.
    pub shape: [u64; 2],
    pub nonzeros: u64,
    /// Bytes of the weight stored dense.
    pub dense_bytes: u64,
    /// Bytes of all its entries (values, bitmask, offsets, shape).
    pub compressed_bytes: u64,
}

/// What the sparse layout did.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SparseReport {
    /// `sparse-bitmask` or `sparse-24-bitmask`.
    pub format: String,
    pub sparsity_structure: String,
    /// Zero fraction over every parameter written (`sparsity_config.global_sparsity`).
    pub global_sparsity: f64,
    /// The compressed weights stored dense (bytes).
    pub dense_bytes: u64,
    /// The same weights as written.
    pub compressed_bytes: u64,
    pub tensors: Vec<SparseTensor>,
}

/// Whether the sparse layout stores this tensor compressed: the 2-D weights of the blocks' linear
/// layers (attention and MLP projections). Embeddings, norms, biases and the output head stay dense.
pub(crate) fn is_target(t: &ExportTensor<'_>) -> bool {
    t.id.part == Part::Weight
        && t.id.layer.is_some()
        && t.info.dims.len() == 2
        && matches!(
            t.id.role,
            Role::AttnQ | Role::AttnK | Role::AttnV | Role::AttnOut | Role::FfnGate | Role::FfnUp | Role::FfnDown
        )
}

/// Bytes of one packed bitmask row.
pub fn bitmask_row_bytes(cols: usize) -> usize {
    cols.div_ceil(8)
}

/// Whether an element (little-endian F16, BF16 or F32 bytes) is zero of either sign.
fn is_zero(e: &[u8]) -> bool {
    match *e {
        [a, b] => a == 0 && b & 0x7f == 0,
        [a, b, c, d] => a == 0 && b == 0 && c == 0 && d & 0x7f == 0,
        _ => e.iter().all(|&x| x == 0),
    }
}

fn check_dims(what: &str, len: usize, rows: usize, cols: usize, esize: usize) -> Result<()> {
    let want = rows.checked_mul(cols).and_then(|n| n.checked_mul(esize));
    if esize == 0 || want != Some(len) {
        return Err(Error::Invalid(format!(
            "{what}: {len} bytes do not hold {rows} x {cols} elements of {esize} bytes"
        )));
    }
    Ok(())
}

/// Nonzero elements of `data` (elements of `esize` bytes).
pub fn count_nonzeros(data: &[u8], esize: usize) -> u64 {
    data.chunks_exact(esize.max(1)).filter(|e| !is_zero(e)).count() as u64
}

/// A weight in the `sparse-bitmask` layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmask {
    /// The nonzero elements, row-major (raw bytes of the dtype).
    pub compressed: Vec<u8>,
    /// `rows x ceil(cols / 8)` bytes, little bit order within a byte.
    pub bitmask: Vec<u8>,
    /// Index in `compressed` (in elements) where each row starts.
    pub row_offsets: Vec<i64>,
}

/// Encode a dense `rows x cols` weight (elements of `esize` bytes) as `sparse-bitmask`.
///
/// # Errors
/// `data` not `rows x cols` elements.
pub fn encode_bitmask(data: &[u8], rows: usize, cols: usize, esize: usize) -> Result<Bitmask> {
    check_dims("sparse-bitmask", data.len(), rows, cols, esize)?;
    let stride = bitmask_row_bytes(cols);
    let mut out = Bitmask {
        compressed: Vec::with_capacity(data.len() / 2),
        bitmask: vec![0u8; rows * stride],
        row_offsets: Vec::with_capacity(rows),
    };
    let mut stored = 0i64;
    for r in 0..rows {
        out.row_offsets.push(stored);
        let row = &data[r * cols * esize..(r + 1) * cols * esize];
        let mask = &mut out.bitmask[r * stride..(r + 1) * stride];
        for (c, e) in row.chunks_exact(esize).enumerate() {
            if !is_zero(e) {
                mask[c / 8] |= 1 << (c % 8);
                out.compressed.extend_from_slice(e);
                stored += 1;
            }
        }
    }
    Ok(out)
}

/// Whether bit `c` of a packed row is set.
fn bit(mask_row: &[u8], c: usize) -> bool {
    mask_row[c / 8] >> (c % 8) & 1 == 1
}

/// Decode `sparse-bitmask` back to the dense `rows x cols` weight. Padding bits past `cols` are
/// ignored, as numpy's `unpackbits(count=cols)` does.
///
/// # Errors
/// Sizes that do not agree (bitmask, values, offsets).
pub fn decode_bitmask(b: &Bitmask, rows: usize, cols: usize, esize: usize) -> Result<Vec<u8>> {
    let stride = bitmask_row_bytes(cols);
    let bad = |m: String| Error::Invalid(format!("sparse-bitmask {rows} x {cols}: {m}"));
    if b.bitmask.len() != rows * stride {
        return Err(bad(format!("bitmask has {} bytes, expected {}", b.bitmask.len(), rows * stride)));
    }
    if b.row_offsets.len() != rows {
        return Err(bad(format!("{} row offsets for {rows} rows", b.row_offsets.len())));
    }
    if esize == 0 || !b.compressed.len().is_multiple_of(esize) {
        return Err(bad(format!("{} bytes of values are not whole {esize}-byte elements", b.compressed.len())));
    }
    let mut out = vec![0u8; rows * cols * esize];
    let mut next = 0usize;
    for r in 0..rows {
        if b.row_offsets[r] != next as i64 {
            return Err(bad(format!("row {r} starts at value {next}, row_offsets says {}", b.row_offsets[r])));
        }
        let mask = &b.bitmask[r * stride..(r + 1) * stride];
        for c in (0..cols).filter(|&c| bit(mask, c)) {
            let v = b.compressed.get(next * esize..(next + 1) * esize).ok_or_else(|| bad("too few values".into()))?;
            out[(r * cols + c) * esize..(r * cols + c + 1) * esize].copy_from_slice(v);
            next += 1;
        }
    }
    if next * esize != b.compressed.len() {
        return Err(bad(format!("{} values stored, the bitmask uses {next}", b.compressed.len() / esize)));
    }
    Ok(out)
}

/// A group of 4 with more than 2 nonzeros: not 2:4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Not24 {
    pub row: usize,
    /// First column of the group.
    pub col: usize,
    pub nonzeros: usize,
}

/// The first group of 4 along a row holding more than 2 nonzeros, if any (`cols` must be a
/// multiple of 4).
pub fn find_not_24(data: &[u8], cols: usize, esize: usize) -> Option<Not24> {
    let (row_bytes, group_bytes) = (cols * esize, 4 * esize);
    if row_bytes == 0 {
        return None;
    }
    for (r, row) in data.chunks_exact(row_bytes).enumerate() {
        for (g, group) in row.chunks_exact(group_bytes).enumerate() {
            let n = group.chunks_exact(esize).filter(|e| !is_zero(e)).count();
            if n > 2 {
                return Some(Not24 { row: r, col: 4 * g, nonzeros: n });
            }
        }
    }
    None
}

/// A weight in the `sparse-24-bitmask` layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwoFour {
    /// `rows x cols / 2` elements: 2 per group of 4, in column order.
    pub compressed: Vec<u8>,
    /// `rows x ceil(cols / 8)` bytes, exactly 2 bits set per group of 4.
    pub bitmask: Vec<u8>,
}

/// Encode a dense `rows x cols` weight as `sparse-24-bitmask`: each group of 4 keeps its nonzeros
/// and, when it has fewer than 2, its first zeros, so every group stores exactly 2 values.
///
/// # Errors
/// `data` not `rows x cols` elements, `cols` not a multiple of 4, a group with more than 2 nonzeros.
pub fn encode_24(data: &[u8], rows: usize, cols: usize, esize: usize) -> Result<TwoFour> {
    check_dims("sparse-24-bitmask", data.len(), rows, cols, esize)?;
    if !cols.is_multiple_of(4) {
        return Err(Error::Invalid(format!("sparse-24-bitmask: rows of {cols} are not whole groups of 4")));
    }
    if let Some(n) = find_not_24(data, cols, esize) {
        return Err(Error::Invalid(format!(
            "sparse-24-bitmask: row {} columns {}..{} hold {} nonzeros",
            n.row,
            n.col,
            n.col + 4,
            n.nonzeros
        )));
    }
    let stride = bitmask_row_bytes(cols);
    let mut out = TwoFour { compressed: Vec::with_capacity(data.len() / 2), bitmask: vec![0u8; rows * stride] };
    for r in 0..rows {
        let mask = &mut out.bitmask[r * stride..(r + 1) * stride];
        for g in 0..cols / 4 {
            let group = &data[(r * cols + 4 * g) * esize..(r * cols + 4 * g + 4) * esize];
            let nonzero = group.chunks_exact(esize).filter(|e| !is_zero(e)).count();
            // Zeros still to keep so that the group stores exactly 2 values.
            let mut fill = 2 - nonzero;
            for (j, e) in group.chunks_exact(esize).enumerate() {
                let keep = if is_zero(e) && fill > 0 {
                    fill -= 1;
                    true
                } else {
                    !is_zero(e)
                };
                if keep {
                    let c = 4 * g + j;
                    mask[c / 8] |= 1 << (c % 8);
                    out.compressed.extend_from_slice(e);
                }
            }
        }
    }
    Ok(out)
}

/// Decode `sparse-24-bitmask` back to the dense `rows x cols` weight.
///
/// # Errors
/// Sizes that do not agree, a group whose bitmask does not mark exactly 2 positions.
pub fn decode_24(t: &TwoFour, rows: usize, cols: usize, esize: usize) -> Result<Vec<u8>> {
    let stride = bitmask_row_bytes(cols);
    let bad = |m: String| Error::Invalid(format!("sparse-24-bitmask {rows} x {cols}: {m}"));
    if !cols.is_multiple_of(4) {
        return Err(bad("rows are not whole groups of 4".into()));
    }
    if t.bitmask.len() != rows * stride {
        return Err(bad(format!("bitmask has {} bytes, expected {}", t.bitmask.len(), rows * stride)));
    }
    if t.compressed.len() != rows * (cols / 2) * esize {
        return Err(bad(format!("{} bytes of values, expected {}", t.compressed.len(), rows * (cols / 2) * esize)));
    }
    let mut out = vec![0u8; rows * cols * esize];
    let mut next = 0usize;
    for r in 0..rows {
        let mask = &t.bitmask[r * stride..(r + 1) * stride];
        for g in 0..cols / 4 {
            let set: Vec<usize> = (4 * g..4 * g + 4).filter(|&c| bit(mask, c)).collect();
            if set.len() != 2 {
                return Err(bad(format!("row {r} columns {}..{}: {} positions marked", 4 * g, 4 * g + 4, set.len())));
            }
            for c in set {
                out[(r * cols + c) * esize..(r * cols + c + 1) * esize]
                    .copy_from_slice(&t.compressed[next * esize..(next + 1) * esize]);
                next += 1;
            }
        }
    }
    Ok(out)
}

/// The sparse [`Layout`]: compressed entries for the targets, plain tensors for the rest.
struct SparseLayout {
    format: SparseFormat,
    /// Nonzeros of each target, by Hugging Face name (counted when planning).
    planned: HashMap<String, u64>,
    zeros: u64,
    params: u64,
    tensors: Vec<SparseTensor>,
    arch_ignore: Vec<String>,
}

fn stem(hf_name: &str) -> &str {
    hf_name.strip_suffix(".weight").unwrap_or(hf_name)
}

impl SparseLayout {
    fn entries(&self, t: &ExportTensor<'_>, nonzeros: u64) -> Vec<TensorSpec> {
        let (s, shape) = (stem(&t.hf_name), t.shape());
        let (rows, cols) = (shape[0], shape[1]);
        let mask = TensorSpec::new(format!("{s}.bitmask"), Dtype::U8, vec![rows, cols.div_ceil(8)]);
        match self.format {
            SparseFormat::Bitmask => vec![
                mask,
                TensorSpec::new(format!("{s}.compressed"), t.dtype, vec![nonzeros]),
                TensorSpec::new(format!("{s}.row_offsets"), Dtype::I64, vec![rows]),
                TensorSpec::new(format!("{s}.shape"), Dtype::I64, vec![2]),
            ],
            SparseFormat::TwoFour => vec![
                mask,
                TensorSpec::new(format!("{s}.compressed"), t.dtype, vec![rows, cols / 2]),
                TensorSpec::new(format!("{s}.shape"), Dtype::I64, vec![2, 1]),
            ],
        }
    }
}

fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Layout for SparseLayout {
    fn plan(
        &mut self,
        input: &GgufFile,
        tensors: &[ExportTensor<'_>],
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<Vec<Vec<TensorSpec>>> {
        let field = |m: String| Error::field("export.sparse", m);
        let total: u64 = tensors.iter().filter(|t| is_target(t)).map(|t| t.info.n_bytes()).sum();
        progress.start("scan", total);
        let (mut done, mut buf, mut out) = (0u64, Vec::new(), Vec::new());
        for t in tensors {
            if !is_target(t) {
                out.push(vec![TensorSpec::new(t.hf_name.clone(), t.dtype, t.shape())]);
                continue;
            }
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let (rows, cols) = (t.info.n_rows() as usize, t.info.row_len() as usize);
            let which = format!("tensor {} ({})", t.info.name, t.hf_name);
            if self.format == SparseFormat::TwoFour && !cols.is_multiple_of(4) {
                return Err(field(format!(
                    "{which}: rows of {cols} values are not whole groups of 4; sparse-24-bitmask needs them"
                )));
            }
            t.values(input, &mut buf)?;
            let esize = t.elem_bytes();
            check_dims(&which, buf.len(), rows, cols, esize)?;
            if self.format == SparseFormat::TwoFour {
                if let Some(n) = find_not_24(&buf, cols, esize) {
                    return Err(field(format!(
                        "{which} is not 2:4: row {} has {} nonzeros in columns {}..{} (sparse-24-bitmask allows at \
                         most 2 in every 4 along a row; prune with --pattern 2:4, or export with --sparse bitmask)",
                        n.row,
                        n.nonzeros,
                        n.col,
                        n.col + 4
                    )));
                }
            }
            let nonzeros = count_nonzeros(&buf, esize);
            input.release_tensor(t.info);
            self.planned.insert(t.hf_name.clone(), nonzeros);
            self.zeros += (rows * cols) as u64 - nonzeros;
            self.params += (rows * cols) as u64;
            out.push(self.entries(t, nonzeros));
            done += t.info.n_bytes();
            progress.advance(done, &format!("scanned {}", t.info.name));
        }
        Ok(out)
    }

    fn write(&mut self, t: &ExportTensor<'_>, data: &[u8], out: &mut ShardedWriter) -> Result<u64> {
        let esize = t.elem_bytes();
        let Some(&planned) = self.planned.get(&t.hf_name) else {
            self.zeros += data.len() as u64 / esize as u64 - count_nonzeros(data, esize);
            self.params += data.len() as u64 / esize as u64;
            out.write_tensor(&t.hf_name, data)?;
            return Ok(data.len() as u64);
        };
        let (rows, cols) = (t.info.n_rows() as usize, t.info.row_len() as usize);
        let s = stem(&t.hf_name);
        let shape = [rows as i64, cols as i64];
        let mut written = Vec::new();
        let mut put = |suffix: &str, bytes: &[u8]| -> Result<()> {
            out.write_tensor(&format!("{s}.{suffix}"), bytes)?;
            written.push(bytes.len() as u64);
            Ok(())
        };
        let nonzeros = match self.format {
            SparseFormat::Bitmask => {
                let b = encode_bitmask(data, rows, cols, esize)?;
                let n = (b.compressed.len() / esize) as u64;
                if n != planned {
                    return Err(Error::Invalid(format!(
                        "tensor {}: {n} nonzeros now, {planned} when planned",
                        t.info.name
                    )));
                }
                put("bitmask", &b.bitmask)?;
                put("compressed", &b.compressed)?;
                put("row_offsets", &i64_bytes(&b.row_offsets))?;
                put("shape", &i64_bytes(&shape))?;
                n
            }
            SparseFormat::TwoFour => {
                let e = encode_24(data, rows, cols, esize)
                    .map_err(|e| Error::Invalid(format!("tensor {} ({}): {e}", t.info.name, t.hf_name)))?;
                put("bitmask", &e.bitmask)?;
                put("compressed", &e.compressed)?;
                put("shape", &i64_bytes(&shape))?;
                planned
            }
        };
        let compressed_bytes: u64 = written.iter().sum();
        self.tensors.push(SparseTensor {
            name: t.hf_name.clone(),
            gguf: t.info.name.clone(),
            shape: [rows as u64, cols as u64],
            nonzeros,
            dense_bytes: data.len() as u64,
            compressed_bytes,
        });
        Ok(compressed_bytes)
    }

    fn config(&self, config: &mut Map<String, Json>) {
        config.insert(
            "quantization_config".into(),
            json!({
                "quant_method": "compressed-tensors",
                "version": FORMAT_VERSION,
                "sparsity_config": {
                    "format": self.format.name(),
                    "targets": ["Linear"],
                    "ignore": self.arch_ignore,
                    "global_sparsity": self.global_sparsity(),
                    "sparsity_structure": self.format.structure(),
                },
            }),
        );
    }

    fn card_note(&self) -> Option<String> {
        Some(format!(
            "The linear weights of the blocks are stored in compressed-tensors' `{}` format \
             (`quantization_config.sparsity_config` in `config.json`); embeddings, norms and `lm_head` are dense.",
            self.format.name()
        ))
    }
}

impl SparseLayout {
    fn global_sparsity(&self) -> f64 {
        if self.params == 0 {
            0.0
        } else {
            self.zeros as f64 / self.params as f64
        }
    }
}

/// Export `input` into `dir` as [`super::export`] does, the blocks' linear weights in `format`.
///
/// # Errors
/// As [`super::export`]; with [`SparseFormat::TwoFour`], a linear weight whose rows are not whole
/// groups of 4 or have a group with more than 2 nonzeros (`export.sparse`, naming the tensor, the
/// row and the columns), before anything is written.
pub fn export(
    input: &GgufFile,
    dir: &Path,
    opts: &ExportOptions,
    format: SparseFormat,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<ExportReport> {
    let arch_ignore = match input.metadata().architecture() {
        Some("bert") => vec!["re:.*pooler\\.dense$".to_string()],
        _ => vec!["lm_head".to_string()],
    };
    let mut layout =
        SparseLayout { format, planned: HashMap::new(), zeros: 0, params: 0, tensors: Vec::new(), arch_ignore };
    let mut report = write_folder(input, dir, opts, &mut layout, progress, cancel)?;
    report.sparse = Some(SparseReport {
        format: format.name().into(),
        sparsity_structure: format.structure().into(),
        global_sparsity: layout.global_sparsity(),
        dense_bytes: layout.tensors.iter().map(|t| t.dense_bytes).sum(),
        compressed_bytes: layout.tensors.iter().map(|t| t.compressed_bytes).sum(),
        tensors: layout.tensors,
    });
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crunch_testkit::Rng;

    /// A nonzero f16 (any sign, normal exponent).
    fn f16_bits(r: &mut Rng) -> u16 {
        let r = r.next_u64();
        let sign = ((r & 1) as u16) << 15;
        let exp = (1 + (r >> 1) % 30) as u16;
        sign | exp << 10 | ((r >> 8) as u16 & 0x3ff)
    }

    fn f16_le(bits: u16) -> [u8; 2] {
        bits.to_le_bytes()
    }

    /// 1.0, 2.0, ... as f16 bits (exact for small integers).
    fn f16_int(n: u16) -> u16 {
        let e = 15 - n.leading_zeros() as u16;
        (15 + e) << 10 | ((n ^ (1 << e)) << (10 - e)) & 0x3ff
    }

    /// A `rows x cols` f16 weight with `density` of its entries nonzero (and some negative zeros
    /// among the zeros), from a seed.
    fn weight(rows: usize, cols: usize, density: f32, seed: u64) -> Vec<u8> {
        let mut rng = Rng::new(seed);
        let mut out = Vec::with_capacity(rows * cols * 2);
        for _ in 0..rows * cols {
            let bits: u16 = if rng.uniform() < density {
                f16_bits(&mut rng)
            } else if rng.uniform() < 0.2 {
                0x8000
            } else {
                0
            };
            out.extend_from_slice(&f16_le(bits));
        }
        out
    }

    /// Dense values with every zero written as +0 (the decoders give +0 where nothing is stored).
    fn positive_zeros(data: &[u8], esize: usize) -> Vec<u8> {
        data.chunks_exact(esize).flat_map(|e| if is_zero(e) { vec![0u8; esize] } else { e.to_vec() }).collect()
    }

    /// numpy's `unpackbits(row, count=cols, bitorder="little")`, written out by hand.
    fn unpack_little(row: &[u8], cols: usize) -> Vec<bool> {
        (0..cols).map(|c| (row[c / 8] >> (c % 8)) & 1 == 1).collect()
    }

    const ODD: &[(usize, usize)] =
        &[(1, 1), (1, 7), (1, 9), (7, 1), (13, 1), (3, 5), (5, 13), (9, 17), (11, 63), (2, 64), (17, 100)];

    #[test]
    fn bitmask_round_trip_on_odd_shapes() {
        for (i, &(rows, cols)) in ODD.iter().enumerate() {
            for density in [0.0, 0.3, 0.5, 1.0] {
                let w = weight(rows, cols, density, 7 + i as u64);
                let b = encode_bitmask(&w, rows, cols, 2).unwrap();
                let stride = cols.div_ceil(8);
                assert_eq!(b.bitmask.len(), rows * stride, "{rows}x{cols}");
                assert_eq!(b.row_offsets.len(), rows);
                assert_eq!(b.compressed.len() as u64, count_nonzeros(&w, 2) * 2);
                // Each bit is the element's nonzero-ness, in little bit order; padding bits are 0.
                for r in 0..rows {
                    let row = &b.bitmask[r * stride..(r + 1) * stride];
                    let bits = unpack_little(row, stride * 8);
                    for c in 0..stride * 8 {
                        let want = c < cols && !is_zero(&w[(r * cols + c) * 2..(r * cols + c) * 2 + 2]);
                        assert_eq!(bits[c], want, "{rows}x{cols} row {r} col {c}");
                    }
                }
                let back = decode_bitmask(&b, rows, cols, 2).unwrap();
                assert_eq!(back, positive_zeros(&w, 2), "{rows}x{cols} density {density}");
            }
        }
    }

    #[test]
    fn bitmask_all_zero_and_fully_dense_rows() {
        let (rows, cols) = (4, 11);
        let mut w = weight(rows, cols, 0.5, 3);
        // Row 1 all zeros (both signs), row 2 without a zero.
        for c in 0..cols {
            let z: u16 = if c % 2 == 0 { 0 } else { 0x8000 };
            w[(cols + c) * 2..(cols + c) * 2 + 2].copy_from_slice(&z.to_le_bytes());
            w[(2 * cols + c) * 2..(2 * cols + c) * 2 + 2].copy_from_slice(&f16_le(f16_int(c as u16 + 1)));
        }
        let b = encode_bitmask(&w, rows, cols, 2).unwrap();
        let stride = 2;
        assert_eq!(&b.bitmask[stride..2 * stride], &[0, 0], "all-zero row");
        assert_eq!(&b.bitmask[2 * stride..3 * stride], &[0xff, 0x07], "dense row: 11 bits");
        assert_eq!(b.row_offsets[2], b.row_offsets[1], "an empty row takes no values");
        assert_eq!(b.row_offsets[3], b.row_offsets[2] + cols as i64);
        assert_eq!(decode_bitmask(&b, rows, cols, 2).unwrap(), positive_zeros(&w, 2));
    }

    #[test]
    fn bitmask_f32_and_bf16_elements() {
        let vals = [0.0f32, -0.0, 1.5, 0.0, -2.25, 1e-30, 0.0, 3.0, 0.0];
        let f32b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let b = encode_bitmask(&f32b, 3, 3, 4).unwrap();
        assert_eq!(b.compressed.len() / 4, 4, "1e-30 is not zero in f32");
        assert_eq!(b.row_offsets, vec![0, 1, 3]);
        assert_eq!(b.bitmask, vec![0b100, 0b110, 0b010]);
        assert_eq!(decode_bitmask(&b, 3, 3, 4).unwrap(), positive_zeros(&f32b, 4));
        // bf16 is the top half of f32.
        let bf: Vec<u8> = vals.iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect();
        let b = encode_bitmask(&bf, 3, 3, 2).unwrap();
        assert_eq!(decode_bitmask(&b, 3, 3, 2).unwrap(), positive_zeros(&bf, 2));
    }

    #[test]
    fn bitmask_decoder_rejects_inconsistent_parts() {
        let w = weight(3, 10, 0.5, 11);
        let b = encode_bitmask(&w, 3, 10, 2).unwrap();
        let mut short = b.clone();
        short.compressed.truncate(short.compressed.len() - 2);
        assert!(decode_bitmask(&short, 3, 10, 2).is_err());
        let mut offs = b.clone();
        offs.row_offsets[1] += 1;
        assert!(decode_bitmask(&offs, 3, 10, 2).unwrap_err().to_string().contains("row 1"));
        assert!(decode_bitmask(&b, 3, 17, 2).unwrap_err().to_string().contains("bitmask has 6 bytes"));
        assert!(encode_bitmask(&w, 3, 11, 2).is_err());
    }

    /// A 2:4 weight: in every group of 4, `k` (0, 1 or 2) nonzeros at seeded positions.
    fn weight_24(rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut w = weight(rows, cols, 1.0, seed);
        let mut rng = Rng::new(seed ^ 0x55);
        for g in 0..rows * cols / 4 {
            let keep = (rng.next_u64() % 3) as usize;
            let mut pos: Vec<usize> = (0..4).collect();
            for i in 0..4 {
                let j = i + (rng.next_u64() % (4 - i) as u64) as usize;
                pos.swap(i, j);
            }
            for &p in &pos[keep..] {
                let z: u16 = if rng.uniform() < 0.3 { 0x8000 } else { 0 };
                w[(4 * g + p) * 2..(4 * g + p) * 2 + 2].copy_from_slice(&z.to_le_bytes());
            }
        }
        w
    }

    #[test]
    fn two_four_round_trip_on_odd_shapes() {
        for (i, &(rows, cols)) in [(1, 4), (7, 4), (1, 12), (3, 20), (5, 36), (9, 100), (2, 64)].iter().enumerate() {
            let w = weight_24(rows, cols, 21 + i as u64);
            let t = encode_24(&w, rows, cols, 2).unwrap();
            let stride = cols.div_ceil(8);
            assert_eq!(t.compressed.len(), rows * cols / 2 * 2);
            assert_eq!(t.bitmask.len(), rows * stride);
            for r in 0..rows {
                let bits = unpack_little(&t.bitmask[r * stride..(r + 1) * stride], stride * 8);
                assert!(bits[cols..].iter().all(|b| !b), "padding bits clear");
                for g in 0..cols / 4 {
                    assert_eq!(bits[4 * g..4 * g + 4].iter().filter(|b| **b).count(), 2, "row {r} group {g}");
                    // Every nonzero is kept.
                    for c in 4 * g..4 * g + 4 {
                        if !is_zero(&w[(r * cols + c) * 2..(r * cols + c) * 2 + 2]) {
                            assert!(bits[c]);
                        }
                    }
                }
            }
            // Stored zeros keep their sign, so the decoded weight is the input, bit for bit where
            // stored and +0 elsewhere: equal as numbers everywhere.
            let back = decode_24(&t, rows, cols, 2).unwrap();
            assert_eq!(positive_zeros(&back, 2), positive_zeros(&w, 2), "{rows}x{cols}");
        }
    }

    #[test]
    fn two_four_all_zero_and_dense_groups() {
        // One row: an all-zero group, a group of 2 nonzeros, a group with 1.
        let vals = [0u16, 0, 0, 0, 0, 1, 0, 2, 0, 0, 3, 0];
        let d: Vec<u8> = vals.iter().flat_map(|&v| f16_le(if v == 0 { 0 } else { f16_int(v) })).collect();
        let t = encode_24(&d, 1, 12, 2).unwrap();
        // Group 0 keeps columns 0, 1; group 1 columns 5, 7; group 2 columns 8 and 10.
        assert_eq!(t.bitmask, vec![0b1010_0011, 0b0101]);
        let kept: Vec<u16> = t.compressed.chunks_exact(2).map(|e| u16::from_le_bytes([e[0], e[1]])).collect();
        assert_eq!(kept, vec![0, 0, f16_int(1), f16_int(2), 0, f16_int(3)]);
        assert_eq!(decode_24(&t, 1, 12, 2).unwrap(), d);
    }

    #[test]
    fn two_four_refuses_what_is_not_2_4() {
        let mut w = weight_24(6, 16, 5);
        // Row 4, group at column 8: 3 nonzeros.
        for c in 8..12 {
            let v = if c < 11 { f16_int(1) } else { 0 };
            w[(4 * 16 + c) * 2..(4 * 16 + c) * 2 + 2].copy_from_slice(&f16_le(v));
        }
        assert_eq!(find_not_24(&w, 16, 2), Some(Not24 { row: 4, col: 8, nonzeros: 3 }));
        let e = encode_24(&w, 6, 16, 2).unwrap_err().to_string();
        assert!(e.contains("row 4 columns 8..12"), "{e}");
        assert!(encode_24(&weight(2, 6, 0.5, 1), 2, 6, 2).unwrap_err().to_string().contains("groups of 4"));
        let t = encode_24(&weight_24(2, 8, 9), 2, 8, 2).unwrap();
        let mut three = t.clone();
        three.bitmask[0] |= 0x0f;
        assert!(decode_24(&three, 2, 8, 2).unwrap_err().to_string().contains("positions marked"));
    }

    #[test]
    fn formats_parse() {
        for (s, f) in [
            ("bitmask", SparseFormat::Bitmask),
            ("sparse-bitmask", SparseFormat::Bitmask),
            ("2:4", SparseFormat::TwoFour),
            ("24", SparseFormat::TwoFour),
            ("Sparse-24-Bitmask", SparseFormat::TwoFour),
        ] {
            assert_eq!(SparseFormat::parse(s), Some(f), "{s}");
        }
        assert_eq!(SparseFormat::parse("4:8"), None);
        assert_eq!(SparseFormat::TwoFour.name(), "sparse-24-bitmask");
    }
}
