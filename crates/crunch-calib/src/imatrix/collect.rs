//! Collecting an importance matrix by running the model on calibration chunks, as llama-imatrix
//! does with its graph callback: for every matrix multiplication by a `blk.*` weight (and
//! `output.weight` when asked) with at least 16 input rows, add each column's squared input to
//! the weight's sums and the number of rows to its count.

use super::{Imatrix, ImatrixEntry};
use crate::error::{CalibError, Result};
use crate::text::Chunks;
use crunch_model::LlamaModel;
use rayon::prelude::*;
use std::collections::BTreeMap;

/// llama-imatrix ignores multiplications with fewer rows (tokens) than this.
pub const MIN_ROWS: usize = 16;

/// What to collect.
#[derive(Clone, Copy, Debug, Default)]
pub struct CollectOptions {
    /// Also collect `output.weight` (llama-imatrix `--process-output`).
    pub process_output: bool,
}

/// Running sums (f64) for a set of weights.
#[derive(Clone, Debug, Default)]
pub struct Collector {
    sums: BTreeMap<String, (Vec<f64>, i64)>,
    opts: CollectOptions,
}

impl Collector {
    pub fn new(opts: CollectOptions) -> Self {
        Collector { sums: BTreeMap::new(), opts }
    }

    /// Start from an existing matrix (resume or merge); only single-matrix entries are kept
    /// as running sums.
    pub fn from_imatrix(m: &Imatrix, opts: CollectOptions) -> Self {
        let sums = m
            .entries
            .iter()
            .filter(|(_, e)| e.counts.len() == 1)
            .map(|(n, e)| (n.clone(), (e.sums.iter().map(|&v| v as f64).collect(), e.counts[0])))
            .collect();
        Collector { sums, opts }
    }

    /// Should the input of `name` be collected?
    pub fn wants(&self, name: &str, n_rows: usize) -> bool {
        n_rows >= MIN_ROWS && (name.starts_with("blk.") || (self.opts.process_output && name == "output.weight"))
    }

    /// Add one multiplication's input (`n_rows` rows).
    ///
    /// # Errors
    /// A weight seen before with another width, or non-finite activations.
    pub fn observe(&mut self, name: &str, input: &[f32], n_rows: usize) -> Result<()> {
        if !self.wants(name, n_rows) || input.is_empty() {
            return Ok(());
        }
        let n_cols = input.len() / n_rows;
        let e = self.sums.entry(name.to_string()).or_insert_with(|| (vec![0.0; n_cols], 0));
        if e.0.len() != n_cols {
            return Err(CalibError::ImatrixMismatch(format!(
                "{name}: {} columns collected before, now {n_cols}",
                e.0.len()
            )));
        }
        // Column blocks in parallel, rows in order inside each.
        e.0.par_chunks_mut(64).enumerate().for_each(|(b, acc)| {
            let (c0, w) = (b * 64, acc.len());
            for row in input.chunks_exact(n_cols) {
                for (a, &x) in acc.iter_mut().zip(&row[c0..c0 + w]) {
                    *a += (x as f64) * (x as f64);
                }
            }
        });
        if e.0.iter().any(|v| !v.is_finite()) {
            return Err(CalibError::Invalid(format!("non-finite activations in the input of {name}")));
        }
        e.1 += n_rows as i64;
        Ok(())
    }

    /// The matrix so far.
    pub fn to_imatrix(&self, datasets: Vec<String>, chunk_size: u32) -> Imatrix {
        let entries = self
            .sums
            .iter()
            .map(|(n, (s, c))| {
                (n.clone(), ImatrixEntry { sums: s.iter().map(|&v| v as f32).collect(), counts: vec![*c] })
            })
            .collect();
        let mut m = Imatrix { entries, datasets, chunk_count: 0, chunk_size };
        m.update_chunk_count();
        m
    }
}

/// Run `chunks` through `model`, adding to `collector`; `on_chunk(i)` is called after chunk `i`
/// and may stop the run by returning `false`.
///
/// # Errors
/// Model errors, a model without linear layers, inconsistent shapes.
pub fn collect(
    model: &LlamaModel,
    chunks: &Chunks,
    collector: &mut Collector,
    mut on_chunk: impl FnMut(usize, &Collector) -> Result<bool>,
) -> Result<()> {
    if model.config.n_layer == 0 || !model.linear_names().iter().any(|n| n.starts_with("blk.")) {
        return Err(CalibError::NoLinearLayers(format!(
            "{} has no linear layers in blocks to calibrate",
            model.file().path.display()
        )));
    }
    let mut cache = model.new_cache(chunks.n_ctx);
    let process_output = collector.opts.process_output;
    for (i, c) in chunks.chunks.iter().enumerate() {
        cache.clear();
        let mut err = None;
        {
            let mut obs = |name: &str, input: &[f32], n: usize| {
                if err.is_none() {
                    if let Err(e) = collector.observe(name, input, n) {
                        err = Some(e);
                    }
                }
            };
            // Logits only when output.weight is collected (llama-imatrix computes them all for its
            // perplexity printout; they change no other input).
            let from = if process_output { 0 } else { c.len() };
            model.forward_with(c, &mut cache, from, Some(&mut obs))?;
        }
        if let Some(e) = err {
            return Err(e);
        }
        if !on_chunk(i, collector)? {
            break;
        }
    }
    Ok(())
}
