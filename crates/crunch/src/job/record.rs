//! How a job records its run in the registry ([`Recorder`]), and the metric keys every job and
//! report uses ([`metric`]). A registry that cannot be opened only warns: the job still runs.

use crate::error::{Error, Result};
use crunch_registry::{InputFile, NewRun, OutputFile, Registry, RunGuard, TensorChoice};
use std::path::{Path, PathBuf};

/// Registry metric keys: one name per quantity, shared by the jobs that record them and the
/// report and search that read them back.
pub mod metric {
    pub const FILE_BYTES: &str = "file_bytes";
    pub const BPW: &str = "bpw";
    pub const SECONDS: &str = "seconds";
    pub const PEAK_RSS_BYTES: &str = "peak_rss_bytes";
    pub const PPL: &str = "ppl";
    pub const PPL_ERR: &str = "ppl_err";
    pub const PPL_BASE: &str = "ppl_base";
    pub const KLD: &str = "kld";
    pub const KLD_ERR: &str = "kld_err";
    pub const KLD_P99: &str = "kld_p99";
    pub const TOP1: &str = "top1";
    pub const TOKENS_PER_S: &str = "tokens_per_s";
    pub const PREDICTED_KLD: &str = "predicted_kld";
    pub const SOLVER_GAP: &str = "solver_gap";
    pub const QUANTIZE_SECONDS: &str = "quantize_seconds";
    pub const N_CANDIDATES: &str = "n_candidates";
    pub const N_EVALUATED: &str = "n_evaluated";
    pub const KLD_RANK_CORRELATION: &str = "kld_rank_correlation";
    pub const ACC: &str = "acc";
    pub const ACC_NORM: &str = "acc_norm";
    pub const PP_TOKENS_PER_S: &str = "pp_tokens_per_s";
    pub const TG_TOKENS_PER_S: &str = "tg_tokens_per_s";
    pub const RAM_BYTES: &str = "ram_bytes";
    /// Fraction of exact zeros in the pruned weights of an output.
    pub const ZERO_FRACTION: &str = "zero_fraction";
    /// Bytes of a correction adapter shipped beside the model (counted in `file_bytes`).
    pub const ADAPTER_BYTES: &str = "adapter_bytes";
    /// The last update's training loss (KL for distill, cross-entropy for finetune).
    pub const TRAIN_LOSS: &str = "train_loss";
    /// The last mean loss on held-out chunks.
    pub const HELDOUT_LOSS: &str = "heldout_loss";
    /// SeedLM encoding: the share of (block, seed) pairs the lower bound skipped.
    pub const SEEDS_SKIPPED: &str = "seeds_skipped";
    /// An encoder's predicted embedding damage (mean `1 − cosine`), as `predicted_kld` for a LM.
    pub const PREDICTED_DAMAGE: &str = "predicted_damage";
    /// An encoder's cosine similarity to the base's sentence embeddings on held-out lines.
    pub const COSINE_MEAN: &str = "cosine_mean";
    pub const COSINE_P1: &str = "cosine_p1";
    pub const COSINE_MIN: &str = "cosine_min";
    /// Energy per generated token, joules (RAPL or modelled: the run's data says which).
    pub const ENERGY_J_PER_TOKEN: &str = "energy_j_per_token";
    /// Energy of a whole trial or search, joules.
    pub const TRIAL_ENERGY_J: &str = "trial_energy_j";
    /// CO2 of a whole trial or search, grams.
    pub const CO2_G: &str = "co2_g";
    /// CO2 per million generated tokens, grams.
    pub const CO2_G_PER_MTOK: &str = "co2_g_per_mtok";
    /// How far a search candidate is outside the search's constraints (0 = feasible).
    pub const VIOLATION: &str = "violation";
}

/// The registry metrics of a model measured against its base on held-out text.
pub fn measured_metrics(m: &crate::fit::heldout::Measured) -> Vec<(&'static str, f64)> {
    if let Some(c) = &m.cosine {
        return vec![
            (metric::COSINE_MEAN, c.mean),
            (metric::COSINE_P1, c.p1),
            (metric::COSINE_MIN, c.min),
            (metric::TOKENS_PER_S, m.tokens_per_s),
        ];
    }
    vec![
        (metric::KLD, m.kld),
        (metric::KLD_ERR, m.kld_err),
        (metric::KLD_P99, m.kld_p99),
        (metric::TOP1, m.top1),
        (metric::PPL, m.ppl),
        (metric::PPL_BASE, m.ppl_base),
        (metric::TOKENS_PER_S, m.tokens_per_s),
    ]
}

/// Where the registry is: `flag`, else `$CRUNCH_REGISTRY`, else the default path.
/// `CRUNCH_REGISTRY=off` turns recording off.
pub fn registry_path(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = flag {
        return Some(p.to_path_buf());
    }
    match std::env::var("CRUNCH_REGISTRY") {
        Ok(v) if v.eq_ignore_ascii_case("off") => None,
        _ => Some(Registry::default_path()),
    }
}

/// The sha256 of a file: from its `.sha256` sidecar when that is newer than the file, else from
/// the registry's cache of hashes (path + size + mtime), else computed (and cached).
///
/// # Errors
/// The file cannot be read.
pub fn file_sha256(reg: Option<&Registry>, path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64);
    let side = crunch_core::output::sidecar_path(path);
    if let (Ok(sm), Ok(text)) = (std::fs::metadata(&side), std::fs::read_to_string(&side)) {
        if sm.modified().ok() >= meta.modified().ok() {
            if let Some(h) = text.split_whitespace().next().filter(|h| h.len() == 64) {
                return Ok(h.to_string());
            }
        }
    }
    let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf()).display().to_string();
    if let Some(r) = reg {
        if let Ok(Some(h)) = r.cached_hash(&key, meta.len(), mtime_ns) {
            return Ok(h);
        }
    }
    let h = crunch_core::output::sha256_file(path).map_err(|e| Error::io(path, e))?;
    if let Some(r) = reg {
        let _ = r.store_hash(&key, meta.len(), mtime_ns, &h);
    }
    Ok(h)
}

/// Predicted KLD of a tensor by name, where known.
pub type PredictedKld<'a> = &'a dyn Fn(&str) -> Option<f64>;

/// A run being recorded, or nothing when the registry is off or unusable.
pub struct Recorder {
    reg: Option<Registry>,
    run: Option<RunGuard>,
}

impl Recorder {
    /// A recorder that records nothing.
    pub fn off() -> Recorder {
        Recorder { reg: None, run: None }
    }

    /// Open the registry and start a run of `kind` (inputs are hashed, with caching).
    pub fn start(
        kind: &str,
        registry: Option<&Path>,
        label: Option<String>,
        params: serde_json::Value,
        inputs: &[(&str, &Path)],
    ) -> Recorder {
        Self::start_child(kind, registry, label, params, inputs, None)
    }

    /// [`Recorder::start`] for a run started by another (a search's candidates).
    pub fn start_child(
        kind: &str,
        registry: Option<&Path>,
        label: Option<String>,
        params: serde_json::Value,
        inputs: &[(&str, &Path)],
        parent: Option<i64>,
    ) -> Recorder {
        let Some(path) = registry else { return Recorder::off() };
        let reg = match Registry::open(path) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("not recording this run: {e}");
                return Recorder::off();
            }
        };
        let mut new = NewRun::new(kind).params(params).parent(parent);
        new.label = label;
        for (role, p) in inputs {
            let sha = file_sha256(Some(&reg), p).ok();
            let bytes = std::fs::metadata(p).ok().map(|m| m.len());
            new.inputs.push(InputFile { role: role.to_string(), path: abs(p), sha256: sha, bytes });
        }
        match reg.start_run(new) {
            Ok(run) => Recorder { reg: Some(reg), run: Some(run) },
            Err(e) => {
                tracing::warn!("not recording this run: {e}");
                Recorder::off()
            }
        }
    }

    pub fn id(&self) -> Option<i64> {
        self.run.as_ref().map(|r| r.id())
    }

    pub fn registry(&self) -> Option<&Registry> {
        self.reg.as_ref()
    }

    fn warn<T>(r: crunch_registry::Result<T>) {
        if let Err(e) = r {
            tracing::warn!("registry: {e}");
        }
    }

    /// Record the output file (its hash from the sidecar written beside it).
    pub fn output(&self, path: &Path) {
        if let Some(run) = &self.run {
            let sha = file_sha256(self.reg.as_ref(), path).ok();
            let bytes = std::fs::metadata(path).ok().map(|m| m.len());
            Self::warn(run.set_output(&OutputFile { path: abs(path), sha256: sha, bytes }));
        }
    }

    /// Record a quantization plan (per-tensor types), with predicted KLD where known.
    pub fn plan(&mut self, plan: &crate::quantize::Plan, predicted: Option<PredictedKld<'_>>) {
        self.tensors(&plan_rows(plan, predicted));
    }

    /// Record the per-tensor rows of a plan.
    pub fn tensors(&mut self, t: &[TensorChoice]) {
        if let Some(run) = &mut self.run {
            if !t.is_empty() {
                Self::warn(run.set_tensors(t));
            }
        }
    }

    pub fn data(&self, key: &str, value: &serde_json::Value) {
        if let Some(run) = &self.run {
            Self::warn(run.data(key, value));
        }
    }

    /// Mark the run finished with these metrics.
    pub fn finish(mut self, m: &[(&str, f64)]) -> Option<i64> {
        let run = self.run.take()?;
        match run.finish(m) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!("registry: {e}");
                None
            }
        }
    }

    /// Mark the run failed.
    pub fn fail(mut self, error: &str) {
        if let Some(run) = self.run.take() {
            Self::warn(run.fail(error));
        }
    }

    /// Finish or fail the run from a job's result, passing the result on with the run's id.
    pub fn close<T>(
        self,
        r: Result<T>,
        metrics: impl FnOnce(&T) -> Vec<(&'static str, f64)>,
    ) -> Result<(T, Option<i64>)> {
        match r {
            Ok(v) => {
                let m = metrics(&v);
                let id = self.finish(&m);
                Ok((v, id))
            }
            Err(e) => {
                self.fail(&e.to_string());
                Err(e)
            }
        }
    }
}

/// The registry rows of a plan: type and bytes per tensor, with predicted KLD where known.
pub fn plan_rows(plan: &crate::quantize::Plan, predicted: Option<PredictedKld<'_>>) -> Vec<TensorChoice> {
    plan.tensors
        .iter()
        .map(|t| TensorChoice {
            name: t.name.clone(),
            ty: t.dst_type.name().to_string(),
            n_elements: t.n_elements(),
            bytes: t.dst_bytes,
            predicted_kld: predicted.and_then(|f| f(&t.name)),
        })
        .collect()
}

fn abs(p: &Path) -> String {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}
