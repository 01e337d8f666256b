//! `crunch bench`: prompt-processing and generation speed and peak memory, as llama-bench
//! measures them (pp: one batch of `pp` tokens from an empty cache; tg: `tg` tokens one at a time).

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crunch_model::LoraSpec;

use super::{check_cancel, model_err, open_model_with, peak_rss_bytes};
use crate::error::Result;
use crate::progress::Cancel;

/// Options of `crunch bench`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchOptions {
    /// Prompt tokens processed in one batch (0 skips the test).
    pub pp: usize,
    /// Tokens generated one by one (0 skips the test).
    pub tg: usize,
    /// Repetitions of each test; the report gives the mean and standard deviation.
    pub reps: usize,
    pub exact: bool,
    /// LoRA adapters applied to the model measured, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lora: Vec<LoraSpec>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions { pp: 512, tg: 128, reps: 1, exact: false, lora: Vec::new() }
    }
}

/// One speed test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpeedResult {
    /// `pp512` or `tg128`, llama-bench's names.
    pub test: String,
    pub tokens: usize,
    pub tokens_per_second: f64,
    pub stddev: f64,
    pub seconds: Vec<f64>,
}

/// The result of `crunch bench`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub model: String,
    pub file_bytes: u64,
    pub n_params: u64,
    /// Most common weight type of the 2-D tensors.
    pub weight_type: String,
    pub threads: usize,
    pub exact: bool,
    pub load_seconds: f64,
    pub results: Vec<SpeedResult>,
    pub peak_rss_bytes: Option<u64>,
}

fn summarize(test: String, tokens: usize, seconds: Vec<f64>) -> SpeedResult {
    let tps: Vec<f64> = seconds.iter().map(|s| tokens as f64 / s.max(1e-9)).collect();
    let mean = tps.iter().sum::<f64>() / tps.len() as f64;
    let var = if tps.len() > 1 {
        tps.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (tps.len() - 1) as f64
    } else {
        0.0
    };
    SpeedResult { test, tokens, tokens_per_second: mean, stddev: var.sqrt(), seconds }
}

/// `crunch bench MODEL`: token ids are a fixed pseudo-random sequence (as llama-bench's).
pub fn bench(model_path: &Path, opts: &BenchOptions, cancel: &Cancel) -> Result<BenchReport> {
    let t0 = Instant::now();
    let loaded = open_model_with(model_path, opts.exact, &opts.lora, "bench.lora")?;
    let load_seconds = t0.elapsed().as_secs_f64();
    let m = &loaded.model;
    let err = || model_err(model_path.display());
    m.check_context(opts.pp.max(opts.tg)).map_err(err())?;
    let n_vocab = m.config.n_vocab as u64;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n_vocab) as u32
    };
    let reps = opts.reps.max(1);
    let mut results = Vec::new();
    if opts.pp > 0 {
        let tokens: Vec<u32> = (0..opts.pp).map(|_| next()).collect();
        let mut cache = m.new_cache(opts.pp);
        // one warm-up pass (page in the weights), as llama-bench does
        m.forward_with(&tokens, &mut cache, opts.pp - 1, None).map_err(err())?;
        let mut secs = Vec::new();
        for _ in 0..reps {
            check_cancel(cancel)?;
            cache.clear();
            let t = Instant::now();
            m.forward_with(&tokens, &mut cache, opts.pp - 1, None).map_err(err())?;
            secs.push(t.elapsed().as_secs_f64());
        }
        results.push(summarize(format!("pp{}", opts.pp), opts.pp, secs));
    }
    if opts.tg > 0 {
        let mut cache = m.new_cache(opts.tg);
        let mut secs = Vec::new();
        m.forward(&[next()], &mut cache).map_err(err())?;
        for _ in 0..reps {
            cache.clear();
            let t = Instant::now();
            let mut tok = next();
            for _ in 0..opts.tg {
                check_cancel(cancel)?;
                let logits = m.forward(&[tok], &mut cache).map_err(err())?;
                tok = crunch_model::kld::argmax(&logits) as u32;
            }
            secs.push(t.elapsed().as_secs_f64());
        }
        results.push(summarize(format!("tg{}", opts.tg), opts.tg, secs));
    }
    let file = m.file();
    let mut by_type: std::collections::BTreeMap<String, u64> = Default::default();
    let mut n_params = 0u64;
    for t in file.tensors() {
        n_params += t.n_elements();
        if t.dims.len() >= 2 {
            *by_type.entry(t.ty.name().to_string()).or_default() += t.n_elements();
        }
    }
    let weight_type = by_type.into_iter().max_by_key(|(_, n)| *n).map(|(t, _)| t).unwrap_or_default();
    Ok(BenchReport {
        model: model_path.display().to_string(),
        file_bytes: file.file_size(),
        n_params,
        weight_type,
        threads: rayon::current_num_threads(),
        exact: opts.exact,
        load_seconds,
        results,
        peak_rss_bytes: peak_rss_bytes(),
    })
}
