//! The `search` job: every recipe planned, written, evaluated on held-out text; the Pareto front.

use super::fit::{profile_summary, session};
use super::{SearchJob, SearchOutcome};
use crate::error::{Error, Result};
use crate::fit::ram;
use crate::inspect::human_bytes;
use crate::job::record::{measured_metrics, metric, Recorder};
use crate::job::RunCtx;
use crate::progress::NoProgress;
use crate::search::recipe::{self, Recipe, RecipeKind};
use crate::search::{self, Candidate};
use crate::sensitivity::Method;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

fn json_err(e: serde_json::Error) -> Error {
    Error::Invalid(e.to_string())
}

/// The recipes a search job names (file, inline and grid), validated.
///
/// # Errors
/// Unreadable or invalid recipes, duplicate names, no recipes at all.
pub fn recipes(j: &SearchJob) -> Result<Vec<Recipe>> {
    let mut out = Vec::new();
    if let Some(p) = &j.recipes_file {
        let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
        out.extend(recipe::parse(&text, &p.display().to_string())?);
    }
    if let Some(file) = &j.recipes {
        out.extend(recipe::validate(file, "search.recipes")?);
    }
    if !j.grid.is_empty() {
        let methods = j
            .grid_methods
            .iter()
            .map(|m| m.parse::<Method>().map_err(|e| Error::field("search.grid_methods", e)))
            .collect::<Result<Vec<_>>>()?;
        for r in recipe::grid(&j.grid, &methods)? {
            if out.iter().any(|o: &Recipe| o.name == r.name) {
                return Err(Error::field("search.grid", format!("recipe {:?} is already in the recipes", r.name)));
            }
            out.push(r);
        }
    }
    if out.is_empty() {
        return Err(Error::field("search.recipes", "no recipes to search (give recipes_file, recipes or grid)"));
    }
    Ok(out)
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' }).collect()
}

pub(crate) fn run(j: &SearchJob, ctx: &RunCtx) -> Result<SearchOutcome> {
    let recipes = recipes(j)?;
    let sens = j.settings.sensitivity("search")?;
    for r in &recipes {
        let target = match &r.kind {
            crate::search::recipe::RecipeKind::Fit(t) => Some(*t),
            _ => None,
        };
        super::fit::check_model_kind(&j.model, target, r.prune.is_some(), r.correction.is_some(), "search").map_err(
            |e| match e {
                Error::Field { field, message } => Error::field(
                    format!("search.recipes ({}).{}", r.name, field.rsplit('.').next().unwrap_or(&field)),
                    message,
                ),
                e => e,
            },
        )?;
    }
    let mut inputs: Vec<(&str, &Path)> = vec![("model", &j.model), ("text", &j.settings.text)];
    if let Some(r) = &j.recipes_file {
        inputs.push(("recipes", r));
    }
    let params = json!({ "recipes": recipes, "sensitivity": sens, "eval_ctx": j.settings.eval_ctx,
                          "eval_chunks": j.settings.eval_chunks, "ctx": j.ram_ctx, "dry_run": j.dry_run });
    let rec = Recorder::start(
        "search",
        ctx.registry.as_deref(),
        Some(format!("search of {} recipes", recipes.len())),
        params,
        &inputs,
    );
    let res = search(j, &recipes, &rec, ctx);
    let ((candidates, summary), run_id) = rec.close(res, |(_, s)| {
        let mut m = vec![(metric::N_CANDIDATES, s.n_candidates as f64), (metric::N_EVALUATED, s.n_evaluated as f64)];
        if let Some(r) = s.kld_rank_correlation {
            m.push((metric::KLD_RANK_CORRELATION, r));
        }
        m
    })?;
    Ok(SearchOutcome { candidates, summary, run_id })
}

fn search(
    j: &SearchJob,
    recipes: &[Recipe],
    parent: &Recorder,
    ctx: &RunCtx,
) -> Result<(Vec<Candidate>, search::Summary)> {
    let (out_dir, temporary) = match &j.out_dir {
        Some(d) => (d.clone(), false),
        None => (
            crate::sensitivity::default_work_dir().join(format!("crunch-search-{}-{}", std::process::id(), unique())),
            true,
        ),
    };
    std::fs::create_dir_all(&out_dir).map_err(|e| Error::io(&out_dir, e))?;
    // Sessions on the base, one per method; sessions on pruned copies of the base, one per
    // (method, pruning), each pruned file kept in the out folder until the search ends.
    let mut sessions: BTreeMap<&'static str, crate::fit::session::Session> = BTreeMap::new();
    let mut pruned: BTreeMap<String, (crate::fit::session::Session, std::path::PathBuf)> = BTreeMap::new();
    let res = candidates(j, recipes, parent, ctx, &out_dir, temporary, &mut sessions, &mut pruned);
    for (_, path) in pruned.values() {
        super::fit::remove_output(path);
    }
    if temporary {
        let _ = std::fs::remove_dir(&out_dir);
    }
    let mut cands = res?;
    search::mark_fronts(&mut cands);
    let summary = search::summarize(&cands);
    // What the report needs: candidates, and the sensitivity of every tensor at every type.
    parent.data("candidates", &serde_json::to_value(&cands).map_err(json_err)?);
    parent.data("summary", &serde_json::to_value(&summary).map_err(json_err)?);
    if let Some(s) = sessions.values().next() {
        let sens: BTreeMap<&str, BTreeMap<&str, f64>> = s
            .profile
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.choices.iter().map(|c| (c.ty.name(), c.kld)).collect()))
            .collect();
        parent.data("sensitivity", &serde_json::to_value(&sens).map_err(json_err)?);
        parent.data("profile", &profile_summary(s));
    }
    Ok((cands, summary))
}

type Sessions = BTreeMap<&'static str, crate::fit::session::Session>;
type PrunedSessions = BTreeMap<String, (crate::fit::session::Session, std::path::PathBuf)>;

/// Plan, write and evaluate every recipe.
#[allow(clippy::too_many_arguments)]
fn candidates(
    j: &SearchJob,
    recipes: &[Recipe],
    parent: &Recorder,
    ctx: &RunCtx,
    out_dir: &Path,
    temporary: bool,
    sessions: &mut Sessions,
    pruned: &mut PrunedSessions,
) -> Result<Vec<Candidate>> {
    let progress = ctx.progress.as_ref();
    let cancel = &ctx.cancel;
    let mut cands: Vec<Candidate> = Vec::new();
    for (i, r) in recipes.iter().enumerate() {
        ctx.check_cancel()?;
        if !sessions.contains_key(r.method.name()) {
            let s = session(&j.settings, "search", &j.model, r.method, parent.registry(), ctx)?;
            sessions.insert(r.method.name(), s);
        }
        let prune_key =
            r.prune.as_ref().map(|p| format!("{}|{}", r.method.name(), serde_json::to_string(p).unwrap_or_default()));
        if let (Some(key), Some(p)) = (&prune_key, &r.prune) {
            if !pruned.contains_key(key) {
                let at = format!("search.recipes ({})", r.name);
                let s = super::fit::pruned_session(
                    &j.settings,
                    &at,
                    &j.model,
                    r.method,
                    p,
                    out_dir,
                    parent.registry(),
                    ctx,
                )?;
                pruned.insert(key.clone(), s);
            }
        }
        progress.start(&format!("[{}/{}] {}", i + 1, recipes.len(), r.name), 1);
        let kind = match r.kind {
            RecipeKind::Fit(_) | RecipeKind::FitSizeOf { .. } => "fit",
            RecipeKind::Preset { .. } => "quantize",
        };
        let mut c = Candidate {
            name: r.name.clone(),
            recipe: r.clone(),
            file_bytes: 0,
            adapter_bytes: None,
            bpw: 0.0,
            predicted_kld: f64::NAN,
            measured: None,
            ram: None,
            quantize_seconds: 0.0,
            output: None,
            run_id: None,
            error: None,
            pareto: false,
            pareto_size_kld: false,
            types: BTreeMap::new(),
            tensor_kld: BTreeMap::new(),
        };
        let base = sessions.get_mut(r.method.name()).expect("inserted above");
        let solver: &crate::fit::session::Session = match &prune_key {
            Some(k) => &pruned[k].0,
            None => base,
        };
        let planned = match search::plan_recipe(solver, base, r) {
            Ok(p) => p,
            Err(e) => {
                progress.finish(&format!("{}: {e}", r.name));
                c.error = Some(e.to_string());
                cands.push(c);
                continue;
            }
        };
        c.file_bytes = crate::fit::file_size(&solver.file, &planned.plan)?;
        if let Some(corr) = &r.correction {
            // Planned size: the model plus the most its adapter can take.
            let at = format!("search.recipes ({}).correction", r.name);
            let reserve = corr.reserve_bytes(&at, &solver.file)?;
            c.adapter_bytes = Some(reserve);
            c.file_bytes += reserve;
        }
        let solver_model = solver.opts.model.clone();
        c.bpw = planned.plan.bpw();
        c.predicted_kld = planned.predicted_kld;
        c.tensor_kld = planned.tensor_kld.clone();
        c.types = planned.plan.tensors.iter().map(|t| (t.name.clone(), t.dst_type.name().to_string())).collect();
        c.ram = ram::estimate(solver.file.metadata(), c.file_bytes, j.ram_ctx).ok();
        if j.dry_run {
            cands.push(c);
            continue;
        }
        let mut child = Recorder::start_child(
            kind,
            ctx.registry.as_deref(),
            Some(r.name.clone()),
            json!({ "recipe": r }),
            &[("model", &j.model)],
            parent.id(),
        );
        let path = out_dir.join(format!("{}.gguf", sanitize(&r.name)));
        let mut lora: Vec<crunch_model::LoraSpec> = Vec::new();
        let res = (|| -> Result<()> {
            let rep = solver.write(&planned.plan, &path, &NoProgress, cancel)?;
            c.quantize_seconds = rep.seconds;
            c.file_bytes = rep.file_bytes;
            if let Some(corr) = &r.correction {
                // Corrected against the model the recipe quantized (the pruned copy if pruned).
                let at = format!("search.recipes ({}).correction", r.name);
                let (adapter, rep) = super::fit::correct(&j.settings, corr, &at, &solver_model, &path, ctx)?;
                c.adapter_bytes = Some(rep.file_bytes);
                c.file_bytes += rep.file_bytes;
                child.data("correction", &serde_json::to_value(&rep).map_err(json_err)?);
                lora.push(crunch_model::LoraSpec { path: adapter, scale: 1.0 });
            }
            child.output(&path);
            let klds = planned.tensor_kld.clone();
            child.plan(&planned.plan, Some(&|n: &str| klds.get(n).copied()));
            if let Some(fp) = &planned.fit {
                child.data("fit", &serde_json::to_value(fp).map_err(json_err)?);
            }
            Ok(())
        })();
        // Judged against the unpruned base whatever the recipe quantized.
        let res = res.and_then(|()| {
            let base = sessions.get_mut(r.method.name()).expect("inserted above");
            c.measured = Some(base.evaluate_with(&path, &lora, progress, cancel)?);
            Ok(())
        });
        // A model whose correction failed is not the candidate the recipe asked for.
        let uncorrected = r.correction.is_some() && lora.is_empty();
        if temporary || uncorrected {
            for p in std::iter::once(path.clone()).chain(lora.iter().map(|l| l.path.clone())) {
                let _ = std::fs::remove_file(&p);
                let _ = std::fs::remove_file(crunch_core::output::sidecar_path(&p));
            }
        } else {
            c.output = Some(path.display().to_string());
        }
        match res {
            Ok(()) => {
                let m = c.measured.clone().expect("set on success");
                progress.finish(&match &m.cosine {
                    Some(cos) => format!(
                        "{}: {} ({:.3} bpw): predicted cosine {:.6}, measured mean {:.6}, 1st percentile {:.6}",
                        r.name,
                        human_bytes(c.file_bytes),
                        c.bpw,
                        1.0 - c.predicted_kld,
                        cos.mean,
                        cos.p1
                    ),
                    None => format!(
                        "{}: {} ({:.3} bpw): predicted KLD {:.5}, measured {:.5}, PPL {:.4}, {:.1} tok/s",
                        r.name,
                        human_bytes(c.file_bytes),
                        c.bpw,
                        c.predicted_kld,
                        m.kld,
                        m.ppl,
                        m.tokens_per_s
                    ),
                });
                child.data("measured", &serde_json::to_value(&m).map_err(json_err)?);
                let mut metrics = vec![
                    (metric::FILE_BYTES, c.file_bytes as f64),
                    (metric::BPW, c.bpw),
                    (
                        if m.cosine.is_some() { metric::PREDICTED_DAMAGE } else { metric::PREDICTED_KLD },
                        c.predicted_kld,
                    ),
                    (metric::QUANTIZE_SECONDS, c.quantize_seconds),
                ];
                metrics.extend(measured_metrics(&m));
                if let Some(r) = c.ram {
                    metrics.push((metric::RAM_BYTES, r.total as f64));
                }
                if let Some(b) = c.adapter_bytes {
                    metrics.push((metric::ADAPTER_BYTES, b as f64));
                }
                c.run_id = child.finish(&metrics);
            }
            Err(Error::Cancelled) => {
                child.fail("interrupted");
                return Err(Error::Cancelled);
            }
            Err(e) => {
                progress.finish(&format!("{}: {e}", r.name));
                c.error = Some(e.to_string());
                child.fail(&e.to_string());
            }
        }
        cands.push(c);
    }
    Ok(cands)
}

/// A number unique within this process (two searches in one server use different folders).
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
