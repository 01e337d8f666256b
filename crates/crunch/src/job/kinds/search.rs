//! The `search` job: every recipe planned, written, evaluated on held-out text; the Pareto front.

use super::fit::{profile_summary, session};
use super::{SearchJob, SearchOutcome};
use crate::error::{Error, Result};
use crate::fit::ram;
use crate::inspect::human_bytes;
use crate::job::record::{measured_metrics, metric, plan_rows, Recorder};
use crate::job::RunCtx;
use crate::progress::NoProgress;
use crate::search::energy::{self, Meter, PowerModel};
use crate::search::objective::{parse_objectives, Objective};
use crate::search::recipe::{self, Recipe, RecipeKind};
use crate::search::space::{SearchSpace, SpaceSpec};
use crate::search::strategy::{self, Point};
use crate::search::{self, Candidate, Executor, Trial, TrialMeasures, TrialRecord};
use crate::sensitivity::Method;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// The space a search job explores: its product space, or its listed recipes.
///
/// # Errors
/// Invalid recipes or space; both given.
pub fn space(j: &SearchJob) -> Result<SearchSpace> {
    let spec = match (&j.space, &j.space_file) {
        (Some(_), Some(_)) => return Err(Error::field("search.space_file", "give space or space_file, not both")),
        (Some(s), None) => Some(s.clone()),
        (None, Some(p)) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct File {
                space: SpaceSpec,
            }
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            let f: File = serde_saphyr::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))?;
            Some(f.space)
        }
        (None, None) => None,
    };
    match spec {
        Some(s) => {
            if j.recipes_file.is_some() || j.recipes.is_some() || !j.grid.is_empty() {
                return Err(Error::field("search.space", "a space replaces recipes_file, recipes and grid"));
            }
            SearchSpace::product(&s).map_err(|e| match e {
                Error::Field { field, message } if j.space.is_none() => Error::Invalid(format!(
                    "{}: {}: {message}",
                    j.space_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                    field.trim_start_matches("search.")
                )),
                e => e,
            })
        }
        None => Ok(SearchSpace::List(recipes(j)?)),
    }
}

/// What every trial of a search needs besides its recipe.
struct Env {
    power: PowerModel,
    g_per_kwh: f64,
    out_dir: PathBuf,
    temporary: bool,
}

pub(crate) fn run(j: &SearchJob, ctx: &RunCtx) -> Result<SearchOutcome> {
    let space = space(j)?;
    let objectives = parse_objectives(&j.objectives, "search.objectives")?;
    j.constraints.check("search.constraints")?;
    let sens = j.settings.sensitivity("search")?;
    if j.measure.choice_tasks.is_none()
        && (objectives.contains(&Objective::Acc) || j.constraints.max_acc_drop.is_some())
    {
        return Err(Error::field(
            "search.measure.choice_tasks",
            "the acc objective and max_acc_drop need choice tasks",
        ));
    }
    if j.measure.tg_tokens == 0
        && (objectives.iter().any(|o| matches!(o, Objective::Tg | Objective::Energy)) || j.constraints.min_tg.is_some())
    {
        return Err(Error::field(
            "search.measure.tg_tokens",
            "the tg and energy objectives and min_tg need tg_tokens > 0",
        ));
    }
    if let Some(w) = j.measure.cpu_watts {
        if !(w.is_finite() && w > 0.0) {
            return Err(Error::field("search.measure.cpu_watts", format!("{w}: must be a positive number of watts")));
        }
    }
    let g_per_kwh = match &j.measure.grid_intensity {
        Some(g) => energy::parse_intensity(g).map_err(|e| Error::field("search.measure.grid_intensity", e))?,
        None => energy::WORLD_G_PER_KWH,
    };
    if let SearchSpace::List(recipes) = &space {
        for r in recipes {
            check_recipe(j, r)?;
        }
    }
    let worker = !j.trial_points.is_empty();
    if worker && j.ray.is_some() {
        return Err(Error::field("search.trial_points", "a cluster worker's job does not use a cluster itself"));
    }
    let mut inputs: Vec<(&str, &Path)> = vec![("model", &j.model), ("text", &j.settings.text)];
    if let Some(r) = &j.recipes_file {
        inputs.push(("recipes", r));
    }
    if let Some(r) = &j.space_file {
        inputs.push(("space", r));
    }
    let params = json!({ "space": j.space, "recipes": match &space { SearchSpace::List(r) => json!(r), _ => json!(null) },
                          "strategy": j.strategy, "budget": j.budget, "seed": j.seed, "objectives": objectives,
                          "constraints": j.constraints, "measure": j.measure,
                          "ray": j.ray.as_ref().map(|r| &r.address), "sensitivity": sens,
                          "eval_ctx": j.settings.eval_ctx, "eval_chunks": j.settings.eval_chunks,
                          "ctx": j.ram_ctx, "dry_run": j.dry_run });
    // A worker's trials are recorded by the driver that asked for them.
    let rec = if worker || j.replay.is_some() {
        Recorder::off()
    } else {
        Recorder::start(
            "search",
            ctx.registry.as_deref(),
            Some(format!("search of {}", describe(j, &space))),
            params,
            &inputs,
        )
    };
    let power = PowerModel::for_machine(j.measure.cpu_watts);
    let res =
        search(j, &space, &objectives, Env { power, g_per_kwh, out_dir: PathBuf::new(), temporary: false }, &rec, ctx);
    let ((candidates, summary), run_id) = rec.close(res, |(_, s)| {
        let mut m = vec![(metric::N_CANDIDATES, s.n_candidates as f64), (metric::N_EVALUATED, s.n_evaluated as f64)];
        if let Some(r) = s.kld_rank_correlation {
            m.push((metric::KLD_RANK_CORRELATION, r));
        }
        if s.co2_g > 0.0 {
            m.push((metric::CO2_G, s.co2_g));
            m.push((metric::TRIAL_ENERGY_J, s.energy_j));
        }
        m.push((metric::SECONDS, s.wall_seconds));
        m
    })?;
    Ok(SearchOutcome { candidates, summary, run_id })
}

fn describe(j: &SearchJob, space: &SearchSpace) -> String {
    match space {
        SearchSpace::List(r) => format!("{} recipes", r.len()),
        SearchSpace::Product(_) => format!("a space of {} points ({})", space.len(), j.strategy),
    }
}

fn check_recipe(j: &SearchJob, r: &Recipe) -> Result<()> {
    let target = match &r.kind {
        RecipeKind::Fit(t) => Some(*t),
        _ => None,
    };
    super::fit::check_model_kind(&j.model, target, r.prune.is_some(), r.correction.is_some(), "search").map_err(|e| {
        match e {
            Error::Field { field, message } => Error::field(
                format!("search.recipes ({}).{}", r.name, field.rsplit('.').next().unwrap_or(&field)),
                message,
            ),
            e => e,
        }
    })
}

fn search(
    j: &SearchJob,
    space: &SearchSpace,
    objectives: &[Objective],
    mut env: Env,
    parent: &Recorder,
    ctx: &RunCtx,
) -> Result<(Vec<Candidate>, search::Summary)> {
    let t0 = std::time::Instant::now();
    (env.out_dir, env.temporary) = match &j.out_dir {
        Some(d) => (d.clone(), false),
        None => (
            crate::sensitivity::default_work_dir().join(format!("crunch-search-{}-{}", std::process::id(), unique())),
            true,
        ),
    };
    std::fs::create_dir_all(&env.out_dir).map_err(|e| Error::io(&env.out_dir, e))?;
    let mut local = Local { sessions: BTreeMap::new(), pruned: BTreeMap::new(), base_acc: None, recorded: None };
    let res = drive(j, space, objectives, &env, &mut local, parent, ctx);
    for (_, path) in local.pruned.values() {
        super::fit::remove_output(path);
    }
    if env.temporary {
        // This search's own folder: whatever a killed worker left in it goes too.
        let _ = std::fs::remove_dir_all(&env.out_dir);
    } else {
        remove_stale_temps(&env.out_dir);
    }
    let (mut cands, stopped) = res?;
    search::mark_fronts(&mut cands, objectives);
    let mut summary = search::summarize(&cands);
    summary.objectives = objectives.to_vec();
    summary.strategy = if j.trial_points.is_empty() { j.strategy.clone() } else { "points".into() };
    summary.stopped = stopped;
    summary.base_acc = local.base_acc;
    summary.wall_seconds = t0.elapsed().as_secs_f64();
    summary.energy_source = cands.iter().find_map(|c| c.t.extra.as_ref().map(|x| x.trial_energy.source.clone()));
    summary.power_model = Some(env.power.basis.clone());
    summary.grid_g_per_kwh = env.g_per_kwh;
    if let Some(id) = j.replay {
        let feasible = |c: &Candidate| -> Option<(String, Vec<f64>)> {
            if c.t.error.is_some() || c.t.measured.is_none() || c.violation > 0.0 {
                return None;
            }
            let v: Option<Vec<f64>> = objectives.iter().map(|o| o.minimised(c)).collect();
            Some((c.name.clone(), v?))
        };
        let all = local.recorded.take().unwrap_or_default();
        let found: Vec<(String, Vec<f64>)> = cands.iter().filter_map(feasible).collect();
        let all: Vec<(String, Vec<f64>)> = all.iter().filter_map(feasible).collect();
        summary.replay = Some(search::replay_stats(id, &found, &all));
    }
    // What the report needs: candidates, and the sensitivity of every tensor at every type.
    parent.data("candidates", &serde_json::to_value(&cands).map_err(json_err)?);
    parent.data("summary", &serde_json::to_value(&summary).map_err(json_err)?);
    if let Some(s) = local.sessions.values().next() {
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

/// Ask the strategy, run the trials, tell it the results, record each as it finishes.
fn drive(
    j: &SearchJob,
    space: &SearchSpace,
    objectives: &[Objective],
    env: &Env,
    local: &mut Local,
    parent: &Recorder,
    ctx: &RunCtx,
) -> Result<(Vec<Candidate>, Option<String>)> {
    let progress = ctx.progress.as_ref();
    let dims = space.dims();
    let n_points = space.len();
    let worker = !j.trial_points.is_empty();
    let budget = if worker {
        j.trial_points.len()
    } else {
        match j.budget {
            Some(0) => return Err(Error::field("search.budget", "must be at least 1")),
            Some(b) => b.min(n_points),
            None if j.strategy == "grid" => n_points,
            None => n_points.div_ceil(3).max(1),
        }
    };
    let mut strat: Box<dyn strategy::Strategy> = if worker {
        Box::new(Fixed(j.trial_points.iter().rev().cloned().collect()))
    } else {
        strategy::by_name(&j.strategy, &dims, j.seed, budget).map_err(|e| Error::field("search.strategy", e))?
    };
    if let Some(t) = &j.measure.choice_tasks {
        if !j.dry_run && !worker {
            let opts = crate::eval::choice::ChoiceOptions { limit: j.measure.choice_limit, ..Default::default() };
            let rep = crate::eval::choice::choice(&j.model, t, &opts, &NoProgress, &ctx.cancel)?;
            local.base_acc = Some(rep.acc_norm.pct / 100.0);
        }
    }
    let base_acc = local.base_acc;
    let mut exec: Box<dyn Executor + '_> = match &j.ray {
        _ if j.replay.is_some() => {
            let r = Replay::load(j, ctx)?;
            local.recorded = Some(r.all(space, j));
            Box::new(r)
        }
        Some(r) if !j.dry_run => {
            let cluster = crate::search::ray::Cluster::start(j, r, &env.out_dir, ctx)?;
            // The cluster's trials find the profiles and base outputs in the cache.
            for m in space.methods() {
                local.session(j, m, parent, ctx)?.heldout(progress, &ctx.cancel)?;
            }
            Box::new(cluster)
        }
        _ => Box::new(InProcess { j, env, local, ctx, queue: Vec::new() }),
    };
    let mut cands: Vec<(usize, Candidate)> = Vec::new();
    let mut pending: BTreeMap<usize, Candidate> = BTreeMap::new();
    let (mut asked, mut co2, mut stopped) = (0usize, 0.0f64, None);
    loop {
        ctx.check_cancel()?;
        while pending.len() < exec.slots() && asked < budget && stopped.is_none() {
            if let Some(limit) = j.constraints.max_co2_g {
                if co2 >= limit {
                    stopped = Some(format!("carbon budget spent: {co2:.3} g of {limit} g"));
                    break;
                }
            }
            let Some(p) = strat.ask(1).pop() else { break };
            asked += 1;
            match space.recipe(&p) {
                Ok(r) => {
                    progress.start(&format!("[{asked}/{budget}] {}", r.name), 1);
                    exec.submit(asked, &r, &p)?;
                    pending.insert(asked, Candidate::new(r, p));
                }
                Err(e) => {
                    strat.tell(&p, None, 0.0);
                    let r = Recipe {
                        name: format!("{p:?}"),
                        method: Method::Rtn,
                        kind: RecipeKind::Fit(crate::fit::Target::MaxBpw(0.0)),
                        prune: None,
                        correction: None,
                    };
                    let mut c = Candidate::new(r, p);
                    c.t.error = Some(e.to_string());
                    cands.push((asked, c));
                }
            }
        }
        let Some((id, trial)) = exec.next()? else { break };
        let Some(mut c) = pending.remove(&id) else {
            return Err(Error::Invalid(format!("search: a trial came back that was never asked for (#{id})")));
        };
        c.t = trial;
        c.violation = j.constraints.violation(&c, base_acc);
        finish_line(&c, progress);
        if let Some(x) = &c.t.extra {
            co2 += x.co2_g;
        }
        if !worker && !j.dry_run && j.replay.is_none() {
            record_trial(parent, ctx, &j.model, &mut c);
        }
        let obj: Option<Vec<f64>> = objectives.iter().map(|o| o.minimised(&c)).collect();
        strat.tell(&c.point, obj.as_deref().filter(|_| c.t.error.is_none()), c.violation);
        cands.push((id, c));
    }
    if !pending.is_empty() {
        return Err(Error::Invalid(format!("search: {} trials never came back", pending.len())));
    }
    // In the order they were asked.
    cands.sort_by_key(|(id, _)| *id);
    Ok((cands.into_iter().map(|(_, c)| c).collect(), stopped))
}

fn finish_line(c: &Candidate, progress: &dyn crate::progress::Progress) {
    let t = &c.t;
    let where_ =
        t.node.as_ref().map(|n| format!(" [node {n}, attempt {}]", t.attempts.unwrap_or(1))).unwrap_or_default();
    let line = match (&t.error, &t.measured) {
        (Some(e), _) => format!("{}: {e}{where_}", c.name),
        (None, None) => format!(
            "{}: {} ({:.3} bpw): predicted KLD {:.5}",
            c.name,
            human_bytes(t.file_bytes),
            t.bpw,
            t.predicted_kld
        ),
        (None, Some(m)) => {
            let extra = t
                .extra
                .as_ref()
                .map(|x| {
                    format!(
                        ", tg {:.1} tok/s, {:.3} J/token, {:.3} g CO2",
                        x.tg_tokens_per_s, x.energy_j_per_token, x.co2_g
                    )
                })
                .unwrap_or_default();
            match &m.cosine {
                Some(cos) => format!(
                    "{}: {} ({:.3} bpw): predicted cosine {:.6}, measured mean {:.6}, 1st percentile {:.6}{extra}{where_}",
                    c.name,
                    human_bytes(t.file_bytes),
                    t.bpw,
                    1.0 - t.predicted_kld,
                    cos.mean,
                    cos.p1
                ),
                None => format!(
                    "{}: {} ({:.3} bpw): predicted KLD {:.5}, measured {:.5}, PPL {:.4}, {:.1} tok/s{extra}{where_}",
                    c.name,
                    human_bytes(t.file_bytes),
                    t.bpw,
                    t.predicted_kld,
                    m.kld,
                    m.ppl,
                    m.tokens_per_s
                ),
            }
        }
    };
    progress.finish(&line);
}

/// A trial's registry row: a child of the search run, the same whether the trial ran here or on
/// a cluster.
fn record_trial(parent: &Recorder, ctx: &RunCtx, model: &Path, c: &mut Candidate) {
    let kind = match c.recipe.kind {
        RecipeKind::Fit(_) | RecipeKind::FitSizeOf { .. } => "fit",
        RecipeKind::Preset { .. } => "quantize",
    };
    let mut params = json!({ "recipe": c.recipe, "point": c.point });
    if let Some(n) = &c.t.node {
        params["node"] = json!(n);
        params["attempts"] = json!(c.t.attempts);
    }
    let mut child = Recorder::start_child(
        kind,
        ctx.registry.as_deref(),
        Some(c.name.clone()),
        params,
        &[("model", model)],
        parent.id(),
    );
    let rec = c.t.record.take().unwrap_or_default();
    if let Some(o) = &c.t.output {
        child.output(Path::new(o));
    }
    child.tensors(&rec.tensors);
    for (k, v) in &rec.data {
        child.data(k, v);
    }
    let t = &c.t;
    match (&t.error, &t.measured) {
        (None, Some(m)) => {
            let mut metrics = vec![
                (metric::FILE_BYTES, t.file_bytes as f64),
                (metric::BPW, t.bpw),
                (if m.cosine.is_some() { metric::PREDICTED_DAMAGE } else { metric::PREDICTED_KLD }, t.predicted_kld),
                (metric::QUANTIZE_SECONDS, t.quantize_seconds),
                (metric::VIOLATION, c.violation),
            ];
            if let Some(x) = &t.extra {
                metrics.push((metric::SECONDS, x.trial_energy.wall_seconds));
            }
            metrics.extend(measured_metrics(m));
            if let Some(r) = t.ram {
                metrics.push((metric::RAM_BYTES, r.total as f64));
            }
            if let Some(b) = t.adapter_bytes {
                metrics.push((metric::ADAPTER_BYTES, b as f64));
            }
            if let Some(x) = &t.extra {
                metrics.extend([
                    (metric::TG_TOKENS_PER_S, x.tg_tokens_per_s),
                    (metric::ENERGY_J_PER_TOKEN, x.energy_j_per_token),
                    (metric::TRIAL_ENERGY_J, x.trial_energy.joules),
                    (metric::CO2_G, x.co2_g),
                    (metric::CO2_G_PER_MTOK, x.co2_g_per_mtok),
                ]);
                if let Some(p) = x.peak_rss_bytes {
                    metrics.push((metric::PEAK_RSS_BYTES, p as f64));
                }
                if let Some(a) = x.acc {
                    metrics.push((metric::ACC_NORM, a));
                }
            }
            c.t.run_id = child.finish(&metrics);
        }
        (Some(e), _) => child.fail(e),
        (None, None) => child.fail("no measurement came back"),
    }
}

/// Trials read back from a recorded search instead of run.
struct Replay {
    run_id: i64,
    by_point: BTreeMap<Vec<i64>, (String, Trial)>,
    queue: Vec<(usize, Vec<f64>)>,
}

fn point_key(p: &[f64]) -> Vec<i64> {
    p.iter().map(|x| x.round() as i64).collect()
}

impl Replay {
    fn load(j: &SearchJob, ctx: &RunCtx) -> Result<Replay> {
        let id = j.replay.expect("a replay");
        let path = ctx.registry.as_deref().ok_or_else(|| Error::field("search.replay", "the registry is off"))?;
        let reg =
            crunch_registry::Registry::open(path).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        let run = reg.get(id).map_err(|e| Error::field("search.replay", format!("run {id}: {e}")))?;
        let cands = run
            .data
            .get("candidates")
            .and_then(|v| v.as_array())
            .ok_or_else(|| Error::field("search.replay", format!("run {id} is not a finished search")))?;
        let mut by_point = BTreeMap::new();
        for c in cands {
            let point: Vec<f64> =
                c.get("point").and_then(|p| serde_json::from_value(p.clone()).ok()).unwrap_or_default();
            let name = c.get("name").and_then(|n| n.as_str()).unwrap_or_default().to_string();
            let mut t: Trial = serde_json::from_value(c.clone())
                .map_err(|e| Error::field("search.replay", format!("run {id}: candidate {name}: {e}")))?;
            t.run_id = c.get("run_id").and_then(|v| v.as_i64());
            by_point.insert(point_key(&point), (name, t));
        }
        Ok(Replay { run_id: id, by_point, queue: Vec::new() })
    }

    /// Every recorded trial as a candidate of this space (its violation under this job's limits).
    fn all(&self, space: &SearchSpace, j: &SearchJob) -> Vec<Candidate> {
        self.by_point
            .iter()
            .filter_map(|(k, (_, t))| {
                let p: Vec<f64> = k.iter().map(|&x| x as f64).collect();
                let mut c = Candidate::new(space.recipe(&p).ok()?, p);
                c.t = t.clone();
                c.violation = j.constraints.violation(&c, None);
                Some(c)
            })
            .collect()
    }
}

impl Executor for Replay {
    fn slots(&self) -> usize {
        1
    }
    fn submit(&mut self, id: usize, recipe: &Recipe, point: &[f64]) -> Result<()> {
        match self.by_point.get(&point_key(point)) {
            Some((name, _)) if *name == recipe.name => {
                self.queue.push((id, point.to_vec()));
                Ok(())
            }
            Some((name, _)) => Err(Error::field(
                "search.replay",
                format!(
                    "run {} searched another space: its point {point:?} is {name}, here {}",
                    self.run_id, recipe.name
                ),
            )),
            None => Err(Error::field(
                "search.replay",
                format!(
                    "run {} has no trial at {point:?} ({}): replay a grid of the same space",
                    self.run_id, recipe.name
                ),
            )),
        }
    }
    fn next(&mut self) -> Result<Option<(usize, Trial)>> {
        if self.queue.is_empty() {
            return Ok(None);
        }
        let (id, p) = self.queue.remove(0);
        Ok(Some((id, self.by_point[&point_key(&p)].1.clone())))
    }
}

/// The points a worker was given, in order.
struct Fixed(Vec<Point>);

impl strategy::Strategy for Fixed {
    fn name(&self) -> &'static str {
        "points"
    }
    fn ask(&mut self, n: usize) -> Vec<Point> {
        (0..n).map_while(|_| self.0.pop()).collect()
    }
    fn tell(&mut self, _: &Point, _: Option<&[f64]>, _: f64) {}
}

type Sessions = BTreeMap<&'static str, crate::fit::session::Session>;
type PrunedSessions = BTreeMap<String, (crate::fit::session::Session, std::path::PathBuf)>;

/// Sessions on the base, one per method; sessions on pruned copies of the base, one per
/// (method, pruning), each pruned file kept in the out folder until the search ends.
struct Local {
    sessions: Sessions,
    pruned: PrunedSessions,
    base_acc: Option<f64>,
    /// A replayed search's recorded trials (read once, when the replay starts).
    recorded: Option<Vec<Candidate>>,
}

impl Local {
    fn session(
        &mut self,
        j: &SearchJob,
        m: Method,
        parent: &Recorder,
        ctx: &RunCtx,
    ) -> Result<&mut crate::fit::session::Session> {
        if !self.sessions.contains_key(m.name()) {
            let s = session(&j.settings, "search", &j.model, m, parent.registry(), ctx)?;
            self.sessions.insert(m.name(), s);
        }
        Ok(self.sessions.get_mut(m.name()).expect("inserted above"))
    }
}

/// Trials run here, one at a time, when the driver asks for the next result.
struct InProcess<'a> {
    j: &'a SearchJob,
    env: &'a Env,
    local: &'a mut Local,
    ctx: &'a RunCtx,
    queue: Vec<(usize, Recipe)>,
}

impl Executor for InProcess<'_> {
    fn slots(&self) -> usize {
        1
    }
    fn submit(&mut self, id: usize, recipe: &Recipe, _: &[f64]) -> Result<()> {
        self.queue.push((id, recipe.clone()));
        Ok(())
    }
    fn next(&mut self) -> Result<Option<(usize, Trial)>> {
        if self.queue.is_empty() {
            return Ok(None);
        }
        let (id, r) = self.queue.remove(0);
        let t = trial(self.j, self.env, self.local, &r, self.ctx)?;
        Ok(Some((id, t)))
    }
}

/// Plan, write and evaluate one recipe. Errors of the recipe end in `Trial::error`; only a
/// cancel or a failure to set up the base's session is an `Err`.
fn trial(j: &SearchJob, env: &Env, local: &mut Local, r: &Recipe, ctx: &RunCtx) -> Result<Trial> {
    let progress = ctx.progress.as_ref();
    let cancel = &ctx.cancel;
    let recorder = Recorder::off();
    local.session(j, r.method, &recorder, ctx)?;
    let prune_key =
        r.prune.as_ref().map(|p| format!("{}|{}", r.method.name(), serde_json::to_string(p).unwrap_or_default()));
    if let (Some(key), Some(p)) = (&prune_key, &r.prune) {
        if !local.pruned.contains_key(key) {
            let at = format!("search.recipes ({})", r.name);
            let s = super::fit::pruned_session(&j.settings, &at, &j.model, r.method, p, &env.out_dir, None, ctx)?;
            local.pruned.insert(key.clone(), s);
        }
    }
    // The trial's own work: the sessions it shares with the others are not counted.
    let meter = Meter::start();
    let mut t = Trial { predicted_kld: f64::NAN, ..Trial::default() };
    let base = &local.sessions[r.method.name()];
    let solver: &crate::fit::session::Session = match &prune_key {
        Some(k) => &local.pruned[k].0,
        None => base,
    };
    let planned = match search::plan_recipe(solver, base, r) {
        Ok(p) => p,
        Err(e) => {
            t.error = Some(e.to_string());
            return Ok(t);
        }
    };
    t.file_bytes = crate::fit::file_size(&solver.file, &planned.plan)?;
    if let Some(corr) = &r.correction {
        // Planned size: the model plus the most its adapter can take.
        let at = format!("search.recipes ({}).correction", r.name);
        let reserve = corr.reserve_bytes(&at, &solver.file)?;
        t.adapter_bytes = Some(reserve);
        t.file_bytes += reserve;
    }
    let solver_model = solver.opts.model.clone();
    t.bpw = planned.plan.bpw();
    t.predicted_kld = planned.predicted_kld;
    t.tensor_kld = planned.tensor_kld.clone();
    t.types = planned.plan.tensors.iter().map(|t| (t.name.clone(), t.dst_type.name().to_string())).collect();
    t.ram = ram::estimate(solver.file.metadata(), t.file_bytes, j.ram_ctx).ok();
    if j.dry_run {
        return Ok(t);
    }
    let path = env.out_dir.join(format!("{}.gguf", sanitize(&r.name)));
    let mut lora: Vec<crunch_model::LoraSpec> = Vec::new();
    let klds = planned.tensor_kld.clone();
    let mut record =
        TrialRecord { tensors: plan_rows(&planned.plan, Some(&|n: &str| klds.get(n).copied())), data: BTreeMap::new() };
    if let Some(fp) = &planned.fit {
        record.data.insert("fit".into(), serde_json::to_value(fp).map_err(json_err)?);
    }
    let res = (|| -> Result<()> {
        let rep = solver.write(&planned.plan, &path, &NoProgress, cancel)?;
        t.quantize_seconds = rep.seconds;
        t.file_bytes = rep.file_bytes;
        if let Some(corr) = &r.correction {
            // Corrected against the model the recipe quantized (the pruned copy if pruned).
            let at = format!("search.recipes ({}).correction", r.name);
            let (adapter, rep) = super::fit::correct(&j.settings, corr, &at, &solver_model, &path, ctx)?;
            t.adapter_bytes = Some(rep.file_bytes);
            t.file_bytes += rep.file_bytes;
            record.data.insert("correction".into(), serde_json::to_value(&rep).map_err(json_err)?);
            lora.push(crunch_model::LoraSpec { path: adapter, scale: 1.0 });
        }
        Ok(())
    })();
    // Judged against the unpruned base whatever the recipe quantized.
    let res = res.and_then(|()| {
        crate::eval::reset_peak_rss();
        let base = local.sessions.get_mut(r.method.name()).expect("inserted above");
        let m = base.evaluate_with(&path, &lora, progress, cancel)?;
        record.data.insert("measured".into(), serde_json::to_value(&m).map_err(json_err)?);
        t.measured = Some(m);
        t.extra = Some(measure_extra(j, env, &path, &lora, &meter, ctx)?);
        Ok(())
    });
    // A model whose correction failed is not the candidate the recipe asked for.
    let uncorrected = r.correction.is_some() && lora.is_empty();
    if env.temporary || uncorrected {
        for p in std::iter::once(path.clone()).chain(lora.iter().map(|l| l.path.clone())) {
            let _ = std::fs::remove_file(&p);
            let _ = std::fs::remove_file(crunch_core::output::sidecar_path(&p));
        }
    } else {
        t.output = Some(path.display().to_string());
    }
    t.record = Some(record);
    match res {
        Ok(()) => Ok(t),
        Err(Error::Cancelled) => Err(Error::Cancelled),
        Err(e) => {
            t.error = Some(e.to_string());
            Ok(t)
        }
    }
}

/// Generation speed and energy, peak memory, multiple choice, the whole trial's energy and CO2.
fn measure_extra(
    j: &SearchJob,
    env: &Env,
    path: &Path,
    lora: &[crunch_model::LoraSpec],
    trial_meter: &Meter,
    ctx: &RunCtx,
) -> Result<TrialMeasures> {
    let mut x = TrialMeasures { grid_g_per_kwh: env.g_per_kwh, tg_tokens: j.measure.tg_tokens, ..Default::default() };
    if j.measure.tg_tokens > 0 {
        let opts =
            crate::eval::BenchOptions { pp: 0, tg: j.measure.tg_tokens, reps: 1, exact: false, lora: lora.to_vec() };
        let m = Meter::start();
        let rep = crate::eval::bench(path, &opts, &ctx.cancel)?;
        x.generation_energy = m.finish(&env.power);
        x.tg_tokens_per_s = rep.results.first().map_or(0.0, |r| r.tokens_per_second);
        x.energy_j_per_token = x.generation_energy.joules / j.measure.tg_tokens as f64;
        x.co2_g_per_mtok = energy::co2_grams(x.energy_j_per_token * 1e6, env.g_per_kwh);
    }
    x.peak_rss_bytes = crate::eval::peak_rss_bytes();
    if let Some(tasks) = &j.measure.choice_tasks {
        let opts =
            crate::eval::choice::ChoiceOptions { limit: j.measure.choice_limit, exact: false, lora: lora.to_vec() };
        let rep = crate::eval::choice::choice(path, tasks, &opts, &NoProgress, &ctx.cancel)?;
        x.acc = Some(rep.acc_norm.pct / 100.0);
    }
    x.trial_energy = trial_meter.finish(&env.power);
    x.co2_g = energy::co2_grams(x.trial_energy.joules, env.g_per_kwh);
    Ok(x)
}

/// Temp files of trial outputs left in a kept out folder by a trial process that was killed
/// (a lost cluster worker) before it could remove them: `.NAME.gguf.crunch-tmp-PID-N` whose
/// process is gone.
fn remove_stale_temps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((_, tail)) = name.split_once(".gguf.crunch-tmp-") else { continue };
        let pid = tail.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if name.starts_with('.') && pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A number unique within this process (two searches in one server use different folders).
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
