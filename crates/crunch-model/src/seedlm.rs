//! The SeedLM container: a GGUF whose large weights are SeedLM codes (see `crunch_quant::seedlm`
//! for the block format), read back and decoded for crunch's engine.
//!
//! The container, pinned (version 1), is an ordinary GGUF v3 file that llama.cpp refuses to load
//! (its weights are missing under their own names, by design):
//! - every metadata key of the source model, except `general.file_type` (no llama.cpp file type
//!   describes it), plus:
//!   - `crunch.seedlm.version` (u32, 1), `crunch.seedlm.lfsr_bits` (u32, 16),
//!     `crunch.seedlm.lfsr_taps` (u32 array, `[0, 1, 3, 12]`),
//!     `crunch.seedlm.block_size` (u32, C) and `crunch.seedlm.coefficients` (u32, P);
//!   - `crunch.seedlm.tensors` (string array): the encoded weights' own names;
//!     `crunch.seedlm.shapes` (u64 array, two per weight: row length, rows) and
//!     `crunch.seedlm.exponent_base` (i32 array, one per weight: `e_min`);
//!   - `crunch.seedlm.imatrix` (string, optional): the importance matrix the fit was weighted by.
//! - each encoded weight `W` is stored as the tensor `W.seedlm`, type I8, one dimension of
//!   `2·n + ⌈n·(1 + P)/2⌉` bytes for `n` blocks (seeds, then nibbles); every other tensor is kept
//!   as it was, under its name and type, in the source's order.
//!
//! crunch's engine decodes the weights when it opens such a file ([`open_gguf`]): each is
//! regenerated from its seeds into an F32 tensor of its own name, giving an in-memory GGUF the
//! rest of crunch reads like any model (evaluation, generation, `quantize` to any GGUF type). The
//! decoded values are exact (see the format), so crunch's engine runs exactly the model a
//! `seedlm decode --type F32` file gives llama.cpp.

use crunch_core::gguf::{in_memory, GgufFile, Metadata, TensorInfo, TensorSpec, Value};
use crunch_core::GgmlType;
use crunch_quant::seedlm::{self, Config};
use std::path::Path;

use crate::error::{ModelError, Result};

pub const KEY_VERSION: &str = "crunch.seedlm.version";
pub const KEY_LFSR_BITS: &str = "crunch.seedlm.lfsr_bits";
pub const KEY_LFSR_TAPS: &str = "crunch.seedlm.lfsr_taps";
pub const KEY_BLOCK: &str = "crunch.seedlm.block_size";
pub const KEY_COEFFS: &str = "crunch.seedlm.coefficients";
pub const KEY_TENSORS: &str = "crunch.seedlm.tensors";
pub const KEY_SHAPES: &str = "crunch.seedlm.shapes";
pub const KEY_EXP_BASE: &str = "crunch.seedlm.exponent_base";
pub const KEY_IMATRIX: &str = "crunch.seedlm.imatrix";
/// Suffix of a stored SeedLM tensor's name.
pub const SUFFIX: &str = ".seedlm";
/// The file extension crunch gives containers (never `.gguf`: llama.cpp cannot run them).
pub const EXTENSION: &str = "seedlm";

/// One encoded weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedTensor {
    /// The weight's own name (`blk.0.attn_q.weight`); stored as `name + ".seedlm"`.
    pub name: String,
    pub row_len: u64,
    pub rows: u64,
    pub exponent_base: i32,
}

impl SeedTensor {
    pub fn n_weights(&self) -> u64 {
        self.row_len * self.rows
    }

    pub fn stored_name(&self) -> String {
        format!("{}{SUFFIX}", self.name)
    }
}

/// What a container says about its encoding.
#[derive(Clone, Debug, PartialEq)]
pub struct SeedlmInfo {
    pub config: Config,
    pub tensors: Vec<SeedTensor>,
    pub imatrix: Option<String>,
}

impl SeedlmInfo {
    /// The `crunch.seedlm.*` keys describing this encoding.
    pub fn write_keys(&self, meta: &mut Metadata) {
        meta.set(KEY_VERSION, Value::U32(seedlm::VERSION));
        meta.set(KEY_LFSR_BITS, Value::U32(16));
        meta.set(KEY_LFSR_TAPS, seedlm::TAPS.to_vec().into());
        meta.set(KEY_BLOCK, Value::U32(self.config.c as u32));
        meta.set(KEY_COEFFS, Value::U32(self.config.p as u32));
        meta.set(KEY_TENSORS, Value::strings(self.tensors.iter().map(|t| t.name.as_str())));
        let shapes: Vec<u64> = self.tensors.iter().flat_map(|t| [t.row_len, t.rows]).collect();
        meta.set(KEY_SHAPES, shapes.into());
        let bases: Vec<i32> = self.tensors.iter().map(|t| t.exponent_base).collect();
        meta.set(KEY_EXP_BASE, bases.into());
        if let Some(m) = &self.imatrix {
            meta.set(KEY_IMATRIX, Value::string(m.clone()));
        }
    }

    /// Bytes of a stored tensor.
    pub fn stored_bytes(&self, t: &SeedTensor) -> u64 {
        self.config.tensor_bytes((t.n_weights() / self.config.c as u64) as usize) as u64
    }
}

/// Is this GGUF a SeedLM container?
pub fn is_seedlm(file: &GgufFile) -> bool {
    file.metadata().get(KEY_VERSION).is_some()
}

fn bad(file: &GgufFile, key: &str, reason: impl Into<String>) -> ModelError {
    ModelError::File { path: file.path.display().to_string(), reason: format!("SeedLM key {key}: {}", reason.into()) }
}

/// The container's description, checked against the format and against its tensors (every size
/// is checked before anything is decoded); `None` for an ordinary GGUF.
///
/// # Errors
/// A wrong version, register or configuration, arrays of different lengths, a stored tensor
/// missing or of the wrong type or size, a weight present under its own name as well.
pub fn info(file: &GgufFile) -> Result<Option<SeedlmInfo>> {
    let m = file.metadata();
    let Some(version) = m.get(KEY_VERSION) else { return Ok(None) };
    if version.as_u64() != Some(seedlm::VERSION as u64) {
        return Err(bad(file, KEY_VERSION, format!("{version} (crunch reads version {})", seedlm::VERSION)));
    }
    if m.get_u64(KEY_LFSR_BITS) != Some(16) {
        return Err(bad(file, KEY_LFSR_BITS, "must be 16"));
    }
    let taps = m.get(KEY_LFSR_TAPS).and_then(|v| v.as_array()).and_then(|a| a.as_u32s());
    if taps != Some(&seedlm::TAPS[..]) {
        return Err(bad(file, KEY_LFSR_TAPS, format!("must be {:?}", seedlm::TAPS)));
    }
    let (c, p) = (m.get_u64(KEY_BLOCK), m.get_u64(KEY_COEFFS));
    let config = c
        .zip(p)
        .and_then(|(c, p)| Config::from_dims(c as usize, p as usize))
        .ok_or_else(|| bad(file, KEY_BLOCK, format!("block {c:?} with {p:?} coefficients is not 8/3 or 12/4")))?;
    let names = m
        .get(KEY_TENSORS)
        .and_then(|v| v.as_array())
        .and_then(|a| a.as_strings())
        .ok_or_else(|| bad(file, KEY_TENSORS, "missing or not a string array"))?;
    let shapes = m
        .get(KEY_SHAPES)
        .and_then(|v| v.as_array())
        .and_then(|a| a.as_u64s())
        .ok_or_else(|| bad(file, KEY_SHAPES, "missing or not a u64 array"))?;
    let bases = m
        .get(KEY_EXP_BASE)
        .and_then(|v| v.as_array())
        .and_then(|a| a.as_i32s())
        .ok_or_else(|| bad(file, KEY_EXP_BASE, "missing or not an i32 array"))?;
    let n = names.len();
    if shapes.len() != 2 * n || bases.len() != n {
        return Err(bad(
            file,
            KEY_SHAPES,
            format!("{n} tensors but {} shape values and {} exponent bases", shapes.len(), bases.len()),
        ));
    }
    let mut tensors = Vec::with_capacity(n);
    for (i, name) in names.iter_str().enumerate() {
        let name = name.ok_or_else(|| bad(file, KEY_TENSORS, format!("entry {i} is not UTF-8")))?.to_string();
        let (row_len, rows) = (shapes[2 * i], shapes[2 * i + 1]);
        let t = SeedTensor { name, row_len, rows, exponent_base: bases[i] };
        if row_len == 0 || rows == 0 || row_len % config.c as u64 != 0 || row_len.checked_mul(rows).is_none() {
            return Err(bad(
                file,
                KEY_SHAPES,
                format!("{}: [{row_len}, {rows}] is not whole blocks of {}", t.name, config.c),
            ));
        }
        if !(-200..=200).contains(&t.exponent_base) {
            return Err(bad(file, KEY_EXP_BASE, format!("{}: {} is out of range", t.name, t.exponent_base)));
        }
        if file.tensor(&t.name).is_some() {
            return Err(bad(file, KEY_TENSORS, format!("{} is stored both plain and encoded", t.name)));
        }
        let stored = file.tensor(&t.stored_name()).ok_or_else(|| ModelError::MissingTensor(t.stored_name()))?;
        let want = config.tensor_bytes(usize::try_from(t.n_weights() / config.c as u64).unwrap_or(usize::MAX)) as u64;
        if stored.ty != GgmlType::I8 || stored.dims.len() != 1 || stored.n_bytes() != want {
            return Err(ModelError::BadShape {
                tensor: t.stored_name(),
                found: format!("{} {}", stored.ty, stored.shape_string()),
                expected: format!("I8 [{want}]"),
            });
        }
        tensors.push(t);
    }
    let imatrix = m.get_str(KEY_IMATRIX).map(str::to_string);
    Ok(Some(SeedlmInfo { config, tensors, imatrix }))
}

/// Decode a container into an in-memory GGUF: every encoded weight regenerated from its seeds as
/// F32 under its own name, in the place of its stored tensor; the other tensors and keys copied
/// (the `crunch.seedlm.*` keys dropped). An ordinary GGUF is returned as it is.
///
/// # Errors
/// [`info`]'s errors; memory for the decoded model.
pub fn decode(file: GgufFile) -> Result<GgufFile> {
    let Some(info) = info(&file)? else { return Ok(file) };
    let by_stored: std::collections::HashMap<String, &SeedTensor> =
        info.tensors.iter().map(|t| (t.stored_name(), t)).collect();
    let mut meta = file.metadata().clone();
    for k in [
        KEY_VERSION,
        KEY_LFSR_BITS,
        KEY_LFSR_TAPS,
        KEY_BLOCK,
        KEY_COEFFS,
        KEY_TENSORS,
        KEY_SHAPES,
        KEY_EXP_BASE,
        KEY_IMATRIX,
    ] {
        meta.remove(k);
    }
    let specs: Vec<TensorSpec> = file
        .tensors()
        .iter()
        .map(|t| match by_stored.get(&t.name) {
            Some(s) => TensorSpec { name: s.name.clone(), ty: GgmlType::F32, dims: vec![s.row_len, s.rows] },
            None => TensorSpec { name: t.name.clone(), ty: t.ty, dims: t.dims.clone() },
        })
        .collect();
    let (header, mut bytes) = in_memory(meta, &specs)?;
    for (src, dst) in file.tensors().iter().zip(&header.tensors) {
        let at = (header.data_start + dst.offset) as usize;
        let out = &mut bytes[at..at + dst.n_bytes() as usize];
        match by_stored.get(&src.name) {
            Some(s) => decode_into(&file, src, s, info.config, out)?,
            None => out.copy_from_slice(file.tensor_data(src)),
        }
    }
    let label = file.path.clone();
    drop(file);
    Ok(GgufFile::from_bytes(label, bytes)?)
}

fn decode_into(file: &GgufFile, src: &TensorInfo, t: &SeedTensor, cfg: Config, out: &mut [u8]) -> Result<()> {
    let mut w = vec![0f32; t.n_weights() as usize];
    if !seedlm::decode_tensor(file.tensor_data(src), cfg, t.exponent_base, &mut w) {
        return Err(ModelError::BadShape {
            tensor: src.name.clone(),
            found: src.shape_string(),
            expected: format!("the bytes of {} SeedLM blocks", t.n_weights() / cfg.c as u64),
        });
    }
    for (o, v) in out.chunks_exact_mut(4).zip(&w) {
        o.copy_from_slice(&v.to_le_bytes());
    }
    file.release_tensor(src);
    Ok(())
}

/// Opens a Hugging Face folder as a GGUF (conversion lives above this crate: `crunch` registers
/// it with [`set_folder_opener`]).
pub type FolderOpener = fn(&Path) -> std::result::Result<GgufFile, String>;

static FOLDER_OPENER: std::sync::OnceLock<FolderOpener> = std::sync::OnceLock::new();

/// Let [`open_gguf`] open Hugging Face folders (quantized checkpoints included) with `f`; the
/// first registration wins.
pub fn set_folder_opener(f: FolderOpener) {
    let _ = FOLDER_OPENER.set(f);
}

/// Open a model for computing with it: a SeedLM container is decoded ([`decode`]), a Hugging
/// Face folder is converted by the registered [`FolderOpener`], any other file is memory-mapped
/// as it is.
///
/// # Errors
/// The GGUF reader's errors, [`decode`]'s, the folder opener's (or a folder with none registered).
pub fn open_gguf(path: impl AsRef<Path>) -> Result<GgufFile> {
    let path = path.as_ref();
    if path.is_dir() {
        let open = FOLDER_OPENER.get().ok_or_else(|| ModelError::File {
            path: path.display().to_string(),
            reason: "is a folder; convert it to GGUF first (crunch convert)".into(),
        })?;
        return open(path).map_err(|reason| ModelError::File { path: path.display().to_string(), reason });
    }
    decode(GgufFile::open(path)?)
}

#[cfg(test)]
mod tests;
