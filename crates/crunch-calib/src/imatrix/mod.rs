//! Importance matrices as llama.cpp's `llama-imatrix` makes them: for every linear layer the sum,
//! over calibration tokens, of the squared input activations of each column, and how many tokens
//! were summed.
//!
//! Files come in two formats, both read and written: the GGUF-based one (`general.type =
//! "imatrix"`, tensors `NAME.in_sum2` and `NAME.counts`, raw sums and token counts) and the
//! legacy `.dat` one (per-token means times the number of chunks). In memory an [`Imatrix`] always
//! holds raw sums and counts; a legacy file is converted with the chunk size, as llama.cpp does.

mod collect;
mod gguf;
mod legacy;
mod stats;

pub use collect::{collect, CollectOptions, Collector};
pub use stats::{layer_statistics, statistics, LayerStats, TensorStats};

use crate::error::{CalibError, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Sums of squared activations for one weight: `counts.len()` matrices (experts) of
/// `sums.len() / counts.len()` columns each.
#[derive(Clone, Debug, PartialEq)]
pub struct ImatrixEntry {
    pub sums: Vec<f32>,
    pub counts: Vec<i64>,
}

impl ImatrixEntry {
    /// Columns per matrix.
    pub fn n_cols(&self) -> usize {
        if self.counts.is_empty() {
            0
        } else {
            self.sums.len() / self.counts.len()
        }
    }

    /// Mean squared activation per column (what a quantizer weighs with); a matrix that saw no
    /// tokens gets 1 everywhere, as llama-quantize does.
    pub fn importance(&self) -> Vec<f32> {
        let n = self.n_cols();
        let mut out = vec![1.0f32; self.sums.len()];
        for (m, &c) in self.counts.iter().enumerate() {
            if c > 0 {
                for (o, &s) in out[m * n..(m + 1) * n].iter_mut().zip(&self.sums[m * n..(m + 1) * n]) {
                    *o = s / c as f32;
                }
            }
        }
        out
    }
}

/// File format of an importance matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// llama.cpp's GGUF-based format (the default since 2025).
    Gguf,
    /// The legacy `.dat` format.
    Dat,
}

impl Format {
    /// `.dat` files are legacy, everything else GGUF (as llama-imatrix decides by `--output-format`).
    pub fn from_path(p: &Path) -> Self {
        if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("dat")) {
            Format::Dat
        } else {
            Format::Gguf
        }
    }
}

/// A whole importance matrix: entries by weight name, with the datasets it was made from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imatrix {
    pub entries: BTreeMap<String, ImatrixEntry>,
    pub datasets: Vec<String>,
    /// Chunks of `chunk_size` tokens processed.
    pub chunk_count: u32,
    /// Tokens per chunk (the context size); 0 when unknown (legacy files).
    pub chunk_size: u32,
}

impl Imatrix {
    /// Read a file in either format (GGUF is tried first, as llama.cpp does). Legacy files are
    /// turned into raw sums with `chunk_size` tokens per chunk (llama.cpp's default is 512).
    ///
    /// # Errors
    /// Unreadable files, malformed content, missing metadata; the error names the file.
    pub fn load(path: &Path, legacy_chunk_size: u32) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| CalibError::io(path, e))?;
        if bytes.starts_with(b"GGUF") {
            gguf::read(path)
        } else {
            legacy::read(path, &bytes, legacy_chunk_size)
        }
    }

    /// Write in `format`, atomically (temp file, fsync, rename, `.sha256` sidecar).
    ///
    /// # Errors
    /// I/O errors, naming the file.
    pub fn save(&self, path: &Path, format: Format) -> Result<()> {
        match format {
            Format::Gguf => gguf::write(self, path),
            Format::Dat => legacy::write(self, path),
        }
    }

    /// Add another matrix's sums and counts (llama-imatrix `--in-file A --in-file B`).
    ///
    /// # Errors
    /// The same weight with a different number of columns or matrices.
    pub fn merge(&mut self, other: &Imatrix) -> Result<()> {
        for (name, e) in &other.entries {
            match self.entries.get_mut(name) {
                None => {
                    self.entries.insert(name.clone(), e.clone());
                }
                Some(mine) => {
                    if mine.sums.len() != e.sums.len() {
                        return Err(CalibError::ImatrixMismatch(format!(
                            "{name}: {} values in one file, {} in the other",
                            mine.sums.len(),
                            e.sums.len()
                        )));
                    }
                    if mine.counts.len() == 1 && e.counts.len() > 1 {
                        mine.counts = vec![mine.counts[0]; e.counts.len()];
                    }
                    let theirs: Vec<i64> = if e.counts.len() == 1 && mine.counts.len() > 1 {
                        vec![e.counts[0]; mine.counts.len()]
                    } else {
                        e.counts.clone()
                    };
                    if theirs.len() != mine.counts.len() {
                        return Err(CalibError::ImatrixMismatch(format!(
                            "{name}: {} matrices in one file, {} in the other",
                            mine.counts.len(),
                            theirs.len()
                        )));
                    }
                    for (a, b) in mine.sums.iter_mut().zip(&e.sums) {
                        *a += b;
                    }
                    for (a, b) in mine.counts.iter_mut().zip(&theirs) {
                        *a += b;
                    }
                }
            }
        }
        self.datasets.extend(other.datasets.iter().cloned());
        if self.chunk_size == 0 {
            self.chunk_size = other.chunk_size;
        }
        self.update_chunk_count();
        Ok(())
    }

    /// `chunk_count` from the largest token count, as llama.cpp recomputes it after loading.
    pub fn update_chunk_count(&mut self) {
        if self.chunk_size > 0 {
            let max = self.entries.values().flat_map(|e| e.counts.iter().copied()).max().unwrap_or(0);
            self.chunk_count = (max / self.chunk_size as i64) as u32;
        }
    }

    /// Per-column importance for weight `name` (means of squared activations), if present.
    pub fn importance(&self, name: &str) -> Option<Vec<f32>> {
        self.entries.get(name).map(ImatrixEntry::importance)
    }

    /// Check that every entry names a tensor of the model with that many columns (`tensors`:
    /// name and row length of each 2-D weight). Entries for unknown weights or with the wrong
    /// size mean the file was made for another model.
    ///
    /// # Errors
    /// The first few mismatches, named.
    pub fn check_against(&self, tensors: &[(String, usize)]) -> Result<()> {
        let known: BTreeMap<&str, usize> = tensors.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        let mut problems = Vec::new();
        let mut matched = 0usize;
        for (name, e) in &self.entries {
            match known.get(name.as_str()) {
                None => problems.push(format!("{name} is not a tensor of the model")),
                Some(&cols) if cols != e.n_cols() => {
                    problems.push(format!("{name} has {} columns in the imatrix, {cols} in the model", e.n_cols()))
                }
                Some(_) => matched += 1,
            }
        }
        if problems.is_empty() && (matched > 0 || self.entries.is_empty()) {
            return Ok(());
        }
        let n = problems.len();
        problems.truncate(4);
        Err(CalibError::ImatrixMismatch(format!(
            "{n} of {} entries do not match (was it made for another model?): {}{}",
            self.entries.len(),
            problems.join("; "),
            if n > 4 { "; …" } else { "" }
        )))
    }
}
