//! The legacy `.dat` imatrix format (little-endian): entry count (i32); per entry the name length
//! (i32), the name, `ncall` (i32, chunks), the value count (i32) and the values, each the mean
//! squared activation times `ncall`; then optionally the chunk count (i32) and the dataset name
//! (i32 length + bytes).

use super::{Imatrix, ImatrixEntry};
use crate::error::{CalibError, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Longest entry name accepted (llama.cpp tensor names are at most 64 bytes).
const MAX_NAME: usize = 4096;

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Parse a `.dat` file; sums are turned back into raw sums with `chunk_size` tokens per chunk
/// (`mean * ncall * chunk_size`, counts `ncall * chunk_size`), as llama-imatrix does on load.
pub fn read(path: &Path, bytes: &[u8], chunk_size: u32) -> Result<Imatrix> {
    let bad = |r: String| CalibError::bad(path, format!("not an imatrix file (GGUF or legacy .dat): {r}"));
    let mut c = Cursor { bytes, pos: 0 };
    let n = c.i32().ok_or_else(|| bad("empty".into()))?;
    if n < 1 || n as usize > bytes.len() / 12 {
        return Err(bad(format!("entry count {n}")));
    }
    let cs = chunk_size.max(1) as i64;
    let mut entries = BTreeMap::new();
    for i in 0..n {
        let len = c.i32().ok_or_else(|| bad(format!("entry {i}: truncated")))?;
        if len < 1 || len as usize > MAX_NAME {
            return Err(bad(format!("entry {i}: name length {len}")));
        }
        let name = c.take(len as usize).ok_or_else(|| bad(format!("entry {i}: truncated name")))?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| bad(format!("entry {i}: name is not UTF-8")))?;
        let ncall = c.i32().ok_or_else(|| bad(format!("{name}: truncated")))?;
        let nval = c.i32().ok_or_else(|| bad(format!("{name}: truncated")))?;
        if nval < 1 || ncall < 0 {
            return Err(bad(format!("{name}: {nval} values, {ncall} calls")));
        }
        let raw = c.take(nval as usize * 4).ok_or_else(|| bad(format!("{name}: truncated values")))?;
        let vals: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if let Some(v) = vals.iter().find(|v| !v.is_finite()) {
            return Err(bad(format!("{name}: non-finite value {v}")));
        }
        let sums = vals.iter().map(|&v| v * cs as f32).collect();
        entries.insert(name, ImatrixEntry { sums, counts: vec![ncall as i64 * cs] });
    }
    let mut datasets = Vec::new();
    let mut chunk_count = 0;
    if let Some(calls) = c.i32() {
        chunk_count = calls.max(0) as u32;
        if let Some(len) = c.i32() {
            if len > 0 {
                if let Some(d) = c.take(len as usize) {
                    datasets.push(String::from_utf8_lossy(d).into_owned());
                }
            }
        }
    }
    Ok(Imatrix { entries, datasets, chunk_count, chunk_size })
}

pub fn write(m: &Imatrix, path: &Path) -> Result<()> {
    let cs = m.chunk_size.max(1) as i64;
    let stored: Vec<(&String, &ImatrixEntry)> =
        m.entries.iter().filter(|(_, e)| !e.counts.is_empty() && e.counts.iter().any(|&c| c > 0)).collect();
    let mut out = Vec::new();
    out.extend_from_slice(&(stored.len() as i32).to_le_bytes());
    for (name, e) in stored {
        out.extend_from_slice(&(name.len() as i32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        let max = e.counts.iter().copied().max().unwrap_or(0);
        let ncall = ((max + cs - 1) / cs) as i32;
        out.extend_from_slice(&ncall.to_le_bytes());
        out.extend_from_slice(&(e.sums.len() as i32).to_le_bytes());
        let per = e.n_cols().max(1);
        for (i, &s) in e.sums.iter().enumerate() {
            let c = e.counts[i / per];
            let v = if c == 0 { 1.0 } else { s / c as f32 * ncall as f32 };
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out.extend_from_slice(&(m.chunk_count as i32).to_le_bytes());
    let ds = m.datasets.last().map(String::as_str).unwrap_or("");
    out.extend_from_slice(&(ds.len() as i32).to_le_bytes());
    out.extend_from_slice(ds.as_bytes());
    crunch_core::output::write_small_atomic(path, &out).map_err(|e| CalibError::io(path, e))
}
