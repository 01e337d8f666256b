//! The `fit` job (and the session both `fit` and `search` open).

use super::{FitJob, FitOutcome, FitSettings};
use crate::calibrate::structured::{self, StructuredOptions};
use crate::error::{Error, Result};
use crate::fit::session::{EvalSettings, Session, SessionOptions};
use crate::fit::Target;
use crate::job::record::{file_sha256, measured_metrics, metric, Recorder};
use crate::job::{refuse_overwrite, RunCtx};
use crate::sensitivity::{default_work_dir, Method, Objective, SensitivityOptions};
use crunch_calib::text::{ChunkOptions, TextSource};
use crunch_core::gguf::GgufFile;
use crunch_model::LlamaConfig;
use serde_json::json;
use std::path::{Path, PathBuf};

impl FitSettings {
    /// The sensitivity-profile options (`kind` names the job in errors).
    pub fn sensitivity(&self, kind: &str) -> Result<SensitivityOptions> {
        let method = self.method;
        if !crate::sensitivity::profiles(method) {
            return Err(Error::field(
                format!("{kind}.settings.method"),
                format!("{method}: {kind} measures rtn and imatrix profiles"),
            ));
        }
        let mut s = SensitivityOptions {
            method,
            ctx: self.calib_ctx,
            chunks: self.calib_chunks,
            band: self.band,
            types: crate::sensitivity::default_candidates(method),
        };
        if !self.types.is_empty() {
            s.types = self.types.iter().map(|t| t.trim().to_uppercase()).collect();
        }
        Ok(s)
    }

    /// Where profiles and base logits are cached: `cache_dir`, else `$CRUNCH_CACHE/fit`, else
    /// `~/.cache/crunch/fit`.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| {
            std::env::var_os("CRUNCH_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    std::env::var_os("HOME")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| PathBuf::from("."))
                        .join(".cache/crunch")
                })
                .join("fit")
        })
    }
}

/// Open a session on `model` with `method` (profile from the cache or measured now).
pub(crate) fn session(
    s: &FitSettings,
    kind: &str,
    model: &Path,
    method: Method,
    reg: Option<&crunch_registry::Registry>,
    ctx: &RunCtx,
) -> Result<Session> {
    if !s.text.is_file() {
        return Err(Error::field(
            format!("{kind}.settings.text"),
            format!("{}: no such file (needed for calibration and evaluation)", s.text.display()),
        ));
    }
    let mut sensitivity = s.sensitivity(kind)?;
    sensitivity.method = method;
    let opts = SessionOptions {
        model: model.to_path_buf(),
        model_sha256: file_sha256(reg, model)?,
        text: s.text.clone(),
        sensitivity,
        eval: EvalSettings { ctx: s.eval_ctx, chunks: s.eval_chunks },
        cache_dir: s.cache_dir(),
        work_dir: default_work_dir(),
    };
    Session::open(opts, ctx.progress.as_ref(), &ctx.cancel)
}

/// The first half of the settings' text (the calibration half: held-out chunks come from the
/// second) written to `dir/NAME.txt`, for methods that read calibration text from a file.
///
/// # Errors
/// I/O errors.
pub(crate) fn calibration_half(s: &FitSettings, dir: &Path, name: &str) -> Result<PathBuf> {
    let text = std::fs::read_to_string(&s.text).map_err(|e| Error::io(&s.text, e))?;
    let (calib, _) = crate::fit::session::split_text(&text);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(format!("{name}.txt"));
    std::fs::write(&path, calib).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// The adapter a correction of the model at `model_path` is written to: `NAME.lora.gguf` beside it.
pub(crate) fn adapter_path(model_path: &Path) -> PathBuf {
    let stem = model_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    model_path.with_file_name(format!("{stem}.lora.gguf"))
}

/// Correct the model written at `written` (made from `base`) with `spec`, calibrated on the first
/// half of the settings' text; the adapter goes to [`adapter_path`].
///
/// # Errors
/// As [`crate::lowrank::lowrank`]; `field` names the spec.
pub(crate) fn correct(
    s: &FitSettings,
    spec: &crate::lowrank::CorrectionSpec,
    field: &str,
    base: &Path,
    written: &Path,
    ctx: &RunCtx,
) -> Result<(PathBuf, crate::lowrank::LowrankReport)> {
    // One folder per call: two jobs of one server never share it.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = default_work_dir().join(format!("crunch-correction-{}-{n}", std::process::id()));
    let res = (|| {
        let text = calibration_half(s, &dir, "calibration")?;
        let o = spec.options(field, TextSource::File(text))?;
        let out = adapter_path(written);
        let r = crate::lowrank::lowrank(base, written, &out, &o, ctx.progress.as_ref(), &ctx.cancel)?;
        Ok((out, r))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    res
}

/// A structurally pruned copy of `model`, written once into `dir` (calibrated on the first half
/// of the settings' text, by default 64 chunks of 512 tokens as the prune job), and a session
/// on it. `kind` names the job in errors (`fit.prune.ffn`). Returns the session and the file.
///
/// # Errors
/// Options that do not fit the model, pruning and session errors.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pruned_session(
    s: &FitSettings,
    kind: &str,
    model: &Path,
    method: Method,
    opts: &StructuredOptions,
    dir: &Path,
    reg: Option<&crunch_registry::Registry>,
    ctx: &RunCtx,
) -> Result<(Session, PathBuf)> {
    let file = GgufFile::open(model)?;
    let cfg = LlamaConfig::from_metadata(file.metadata())
        .map_err(|source| Error::Model { context: model.display().to_string(), source })?;
    drop(file);
    let spec = opts.spec(&cfg, &format!("{kind}.prune"))?;
    let tag = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(serde_json::to_vec(opts).map_err(|e| Error::Invalid(e.to_string()))?);
        crunch_core::output::hex(&h.finalize())[..12].to_string()
    };
    let calib_path = calibration_half(s, dir, &format!("prune-calib-{tag}"))?;
    let out = dir.join(format!("pruned-{tag}.gguf"));
    let chunks = ChunkOptions {
        n_ctx: opts.ctx.unwrap_or_else(super::CalibrationSpec::default_ctx),
        n_chunks: Some(opts.chunks.unwrap_or_else(super::CalibrationSpec::default_chunks)),
        skip: 0,
        shuffle_seed: None,
    };
    if chunks.n_ctx == 0 || chunks.n_chunks == Some(0) {
        return Err(Error::field(
            format!("{kind}.prune.chunks"),
            "calibration chunks and their length must be positive",
        ));
    }
    let res = structured::prune_to_file(
        model,
        &spec,
        Some((&TextSource::File(calib_path.clone()), chunks)),
        &out,
        None,
        ctx.progress.as_ref(),
        &ctx.cancel,
    );
    let _ = std::fs::remove_file(&calib_path);
    res?;
    let session = session(s, kind, &out, method, reg, ctx)?;
    Ok((session, out))
}

/// Remove a file this job wrote and its `.sha256` sidecar (a pruned copy, a model whose correction failed).
pub(crate) fn remove_output(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(crunch_core::output::sidecar_path(path));
}

/// The profile a session used, for outcomes and the registry.
pub(crate) fn profile_summary(s: &Session) -> serde_json::Value {
    json!({
        "path": s.profile_path,
        "cached": s.profile_cached,
        "seconds": s.profile.seconds,
        "options": s.profile.options,
        "groups": s.profile.groups,
    })
}

impl FitJob {
    /// The one target the job names.
    ///
    /// # Errors
    /// None or more than one of `max_size`, `max_bpw`, `max_kld`, `max_ram`.
    pub fn target(&self) -> Result<Target> {
        let mut t = Vec::new();
        if let Some(s) = &self.max_size {
            t.push(Target::MaxSize(s.bytes("fit.max_size")?));
        }
        if let Some(b) = self.max_bpw {
            if b.is_nan() || b <= 0.0 {
                return Err(Error::field("fit.max_bpw", format!("{b} is not a positive number of bits")));
            }
            t.push(Target::MaxBpw(b));
        }
        if let Some(k) = self.max_kld {
            if k.is_nan() || k <= 0.0 {
                return Err(Error::field("fit.max_kld", format!("{k} is not a positive KL-divergence")));
            }
            t.push(Target::MaxKld(k));
        }
        if let Some(s) = &self.max_ram {
            t.push(Target::MaxRam { bytes: s.bytes("fit.max_ram")?, ctx: self.ram_ctx });
        }
        if let Some(c) = self.min_cosine {
            if !(c > 0.0 && c < 1.0) {
                return Err(Error::field("fit.min_cosine", format!("{c} is not a cosine similarity in (0, 1)")));
            }
            t.push(Target::MinCosine(c));
        }
        match t.as_slice() {
            [one] => Ok(*one),
            [] => {
                Err(Error::field("fit.max_size", "give one target: max_size, max_bpw, max_kld, max_ram or min_cosine"))
            }
            _ => Err(Error::field(
                "fit.max_size",
                "give only one target of max_size, max_bpw, max_kld, max_ram, min_cosine",
            )),
        }
    }
}

/// A target, pruning or correction that does not fit the kind of model in `model` (an encoder or
/// a causal LM) is refused before any work, naming the field.
///
/// # Errors
/// As described; the model cannot be opened.
pub(crate) fn check_model_kind(
    model: &Path,
    target: Option<Target>,
    prune: bool,
    correction: bool,
    kind: &str,
) -> Result<()> {
    let objective = Objective::of(&GgufFile::open(model)?);
    if let Some(t) = target {
        t.check_for(objective, &model.display().to_string())?;
    }
    if objective == Objective::EmbedDamage {
        let refuse = |field: &str, what: &str| {
            Error::field(
                format!("{kind}.{field}"),
                format!("{}: {what} works on causal LMs (Llama family), not on a sentence encoder", model.display()),
            )
        };
        if prune {
            return Err(refuse("prune", "structured pruning"));
        }
        if correction {
            return Err(refuse("correction", "a low-rank correction"));
        }
    }
    Ok(())
}

pub(crate) fn run(j: &FitJob, ctx: &RunCtx) -> Result<FitOutcome> {
    let target = j.target()?;
    let sens = j.settings.sensitivity("fit")?;
    check_model_kind(&j.model, Some(target), j.prune.is_some(), j.correction.is_some(), "fit")?;
    let output = match (&j.output, j.dry_run) {
        (Some(o), _) => Some(o.clone()),
        (None, true) => None,
        (None, false) => return Err(Error::field("fit.output", "give an output file (or dry_run to only plan)")),
    };
    if let Some(o) = &output {
        refuse_overwrite("fit.output", &j.model, o)?;
    }
    let mut rec = if j.dry_run {
        Recorder::off()
    } else {
        let params = json!({ "target": target, "method": j.settings.method, "sensitivity": sens,
                              "eval_ctx": j.settings.eval_ctx, "eval_chunks": j.settings.eval_chunks,
                              "prune": j.prune, "correction": j.correction });
        Recorder::start(
            "fit",
            ctx.registry.as_deref(),
            Some(format!(
                "fit {target}{}{}",
                j.prune.as_ref().map(|p| format!(" after pruning ({})", p.describe())).unwrap_or_default(),
                j.correction.as_ref().map(|c| format!(" + correction {}", c.tag())).unwrap_or_default()
            )),
            params,
            &[("model", &j.model), ("text", &j.settings.text)],
        )
    };
    let res = fit(j, target, sens.method, output.as_deref(), &mut rec, ctx);
    let ((mut outcome, _), run_id) = rec.close(res, |(_, m)| m.clone())?;
    outcome.run_id = run_id;
    Ok(outcome)
}

type Metrics = Vec<(&'static str, f64)>;

fn fit(
    j: &FitJob,
    target: Target,
    method: Method,
    output: Option<&Path>,
    rec: &mut Recorder,
    ctx: &RunCtx,
) -> Result<(FitOutcome, Metrics)> {
    let mut base = session(&j.settings, "fit", &j.model, method, rec.registry(), ctx)?;
    // With pruning, the plan is solved on the pruned model and the file judged against the base.
    let pruned = match &j.prune {
        None => None,
        Some(p) => {
            let dir = default_work_dir().join(format!("crunch-fit-prune-{}", std::process::id()));
            let r = pruned_session(&j.settings, "fit", &j.model, method, p, &dir, rec.registry(), ctx);
            match r {
                Ok((s, path)) => Some((s, path, dir)),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
            }
        }
    };
    let res = fit_on(j, target, output, &mut base, pruned.as_ref().map(|p| &p.0), rec, ctx);
    if let Some((_, path, dir)) = &pruned {
        remove_output(path);
        let _ = std::fs::remove_dir_all(dir);
    }
    res
}

#[allow(clippy::too_many_arguments)]
fn fit_on(
    j: &FitJob,
    target: Target,
    output: Option<&Path>,
    base: &mut Session,
    pruned: Option<&Session>,
    rec: &mut Recorder,
    ctx: &RunCtx,
) -> Result<(FitOutcome, Metrics)> {
    let (progress, cancel) = (ctx.progress.as_ref(), &ctx.cancel);
    let solver: &Session = pruned.unwrap_or(base);
    // A correction's adapter ships beside the model: its bytes come off the target.
    let target = match &j.correction {
        Some(c) => {
            let n = solver.file.tensors().iter().map(|t| t.n_elements()).sum();
            crate::fit::reserve(target, c.reserve_bytes("fit.correction", &solver.file)?, n, "fit.correction")?
        }
        None => target,
    };
    let mut fp = solver.fit(target)?;
    let Some(output) = output else {
        let profile = profile_summary(solver);
        let o = FitOutcome {
            fit: fp,
            profile,
            result: None,
            measured: None,
            rounds: 0,
            adapter: None,
            correction: None,
            total_bytes: None,
            run_id: None,
        };
        return Ok((o, Vec::new()));
    };
    let mut report;
    let mut measured = None;
    let mut rounds = 0;
    let mut correction = None;
    loop {
        rounds += 1;
        report = pruned.unwrap_or(base).write(&fp.plan, output, progress, cancel)?;
        if let Some(c) = &j.correction {
            // Corrected against the model the plan quantized (the pruned copy when pruning).
            let made_from = pruned.map_or(j.model.as_path(), |p| p.opts.model.as_path());
            match correct(&j.settings, c, "fit.correction", made_from, output, ctx) {
                Ok(r) => correction = Some(r),
                Err(e) => {
                    // No model without the correction it was sized for.
                    remove_output(output);
                    return Err(e);
                }
            }
        }
        if !j.evaluate {
            break;
        }
        let lora: Vec<crunch_model::LoraSpec> =
            correction.iter().map(|(p, _)| crunch_model::LoraSpec { path: p.clone(), scale: 1.0 }).collect();
        let m = base.evaluate_with(output, &lora, progress, cancel)?;
        // The damage limit a quality target sets (KLD, or 1 − cosine for an encoder).
        let limit = match target {
            Target::MaxKld(k) => Some(k),
            Target::MinCosine(c) => Some(1.0 - c),
            _ => None,
        };
        let miss = limit.filter(|&k| m.damage() > k && rounds < 4);
        measured = Some(m.clone());
        let Some(k) = miss else { break };
        // The prediction was optimistic: aim lower in proportion and try again.
        let aim = fp.predicted_kld * (k / m.damage()) * 0.9;
        tracing::info!(
            "measured damage {:.5} is above the target {k}; solving again for a predicted {aim:.5} (was {:.5})",
            m.damage(),
            fp.predicted_kld
        );
        let retarget = match target {
            Target::MinCosine(_) => Target::MinCosine(1.0 - aim),
            _ => Target::MaxKld(aim),
        };
        let mut next = pruned.unwrap_or(base).fit(retarget)?;
        next.target = target;
        fp = next;
    }
    let adapter_bytes = correction.as_ref().map_or(0, |(_, r)| r.file_bytes);
    let total_bytes = report.file_bytes + adapter_bytes;
    let n_weights = fp.plan.n_elements.max(1);
    let mut metrics: Metrics = vec![
        (metric::FILE_BYTES, total_bytes as f64),
        // With a correction, its bytes count in the bits per weight too.
        (metric::BPW, fp.bpw + (adapter_bytes * 8) as f64 / n_weights as f64),
        (
            if base.profile.objective == Objective::EmbedDamage {
                metric::PREDICTED_DAMAGE
            } else {
                metric::PREDICTED_KLD
            },
            fp.predicted_kld,
        ),
        (metric::SOLVER_GAP, fp.gap),
        (metric::QUANTIZE_SECONDS, report.seconds),
    ];
    if let Some(m) = &measured {
        metrics.extend(measured_metrics(m));
    }
    let profile = profile_summary(pruned.unwrap_or(base));
    rec.output(output);
    let klds = fp.tensor_kld.clone();
    rec.plan(&fp.plan, Some(&|n: &str| klds.get(n).copied()));
    rec.data("fit", &serde_json::to_value(&fp).map_err(|e| Error::Invalid(e.to_string()))?);
    rec.data("profile", &profile);
    if let Some(m) = &measured {
        rec.data("measured", &serde_json::to_value(m).map_err(|e| Error::Invalid(e.to_string()))?);
    }
    if let Some((_, r)) = &correction {
        metrics.push((metric::ADAPTER_BYTES, r.file_bytes as f64));
        rec.data("correction", &serde_json::to_value(r).map_err(|e| Error::Invalid(e.to_string()))?);
    }
    let (adapter, correction) = correction.map_or((None, None), |(p, r)| (Some(p), Some(r)));
    let o = FitOutcome {
        fit: fp,
        profile,
        result: Some(report),
        measured,
        rounds,
        adapter,
        correction,
        total_bytes: Some(total_bytes),
        run_id: None,
    };
    Ok((o, metrics))
}
