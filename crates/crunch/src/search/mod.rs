//! `crunch search`: many candidate recipes (presets, fit targets, methods), each planned, written,
//! evaluated on held-out text, then the Pareto front over size, KL-divergence, perplexity, speed
//! and memory, and how well the predicted KL-divergence ranks the candidates.

pub mod energy;
pub mod moo;
pub mod objective;
pub mod ray;
pub mod recipe;
pub mod space;
pub mod strategy;

use crate::error::Result;
use crate::fit::heldout::Measured;
use crate::fit::ram::RamEstimate;
use crate::fit::session::Session;
use crate::fit::{self, predicted_kld};
use crate::quantize::{Plan, QuantizeOptions};
use recipe::{Recipe, RecipeKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One evaluated candidate: a recipe and what its trial measured.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub name: String,
    pub recipe: Recipe,
    /// Its point in the search space (a choice index per dimension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub point: Vec<f64>,
    #[serde(flatten)]
    pub t: Trial,
    /// Outside the search's constraints by this much (0 = feasible).
    #[serde(default)]
    pub violation: f64,
    /// On the Pareto front over the search's objectives (feasible candidates only).
    pub pareto: bool,
    /// On the front of size against KLD alone.
    pub pareto_size_kld: bool,
}

impl Candidate {
    pub fn new(recipe: Recipe, point: Vec<f64>) -> Candidate {
        Candidate {
            name: recipe.name.clone(),
            recipe,
            point,
            t: Trial { predicted_kld: f64::NAN, ..Trial::default() },
            violation: 0.0,
            pareto: false,
            pareto_size_kld: false,
        }
    }
}

/// What one trial produced: sizes, the plan's prediction, the measurements. This is what a trial
/// run on another machine sends back (JSON), so it reads back exactly as written.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Trial {
    /// The model file plus its correction adapter, if any.
    pub file_bytes: u64,
    /// Bytes of the correction adapter (counted in `file_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_bytes: Option<u64>,
    pub bpw: f64,
    /// KLD the profile predicts from the quantization alone: from the base, or for a pruned
    /// recipe from its pruned copy (pruning's own loss is only in `measured`).
    #[serde(deserialize_with = "nan_if_null")]
    pub predicted_kld: f64,
    pub measured: Option<Measured>,
    /// Generation speed, memory, energy, CO2 and multiple-choice accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<TrialMeasures>,
    /// llama.cpp memory estimate at the search's context.
    pub ram: Option<RamEstimate>,
    pub quantize_seconds: f64,
    pub output: Option<String>,
    pub run_id: Option<i64>,
    pub error: Option<String>,
    /// Type per tensor.
    pub types: BTreeMap<String, String>,
    /// Where it ran (a Ray node) and in how many attempts, for a trial run on a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// What the registry row of the trial holds beyond its metrics; taken when it is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<TrialRecord>,
    #[serde(skip)]
    pub tensor_kld: BTreeMap<String, f64>,
}

/// Where trials run: in this process one at a time, or on a cluster several at a time.
pub trait Executor {
    /// Trials that may run at once.
    fn slots(&self) -> usize;
    fn submit(&mut self, id: usize, recipe: &Recipe, point: &[f64]) -> Result<()>;
    /// The next finished trial (any order), `None` when nothing is pending.
    fn next(&mut self) -> Result<Option<(usize, Trial)>>;
}

/// JSON has no NaN: serde_json writes it as null, read back as NaN here.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The measurements beyond the held-out comparison.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TrialMeasures {
    /// Generation speed: `tg_tokens` tokens one at a time after a warm-up token.
    pub tg_tokens_per_s: f64,
    pub tg_tokens: usize,
    /// Peak resident memory while the candidate was evaluated (the process's high-water mark,
    /// reset before the evaluation where Linux allows it).
    pub peak_rss_bytes: Option<u64>,
    /// Energy per generated token, joules.
    pub energy_j_per_token: f64,
    /// Energy of the generation test.
    pub generation_energy: energy::Energy,
    /// Energy of the whole trial: write (and correct) and evaluate.
    pub trial_energy: energy::Energy,
    /// CO2 of the whole trial, grams.
    pub co2_g: f64,
    /// CO2 per million generated tokens, grams.
    pub co2_g_per_mtok: f64,
    pub grid_g_per_kwh: f64,
    /// Multiple-choice accuracy (`acc_norm`, a fraction), when tasks were given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc: Option<f64>,
}

/// The parts of a trial's registry row other than its metrics.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrialRecord {
    pub tensors: Vec<crunch_registry::TensorChoice>,
    pub data: BTreeMap<String, serde_json::Value>,
}

/// A candidate's plan before it is written.
pub struct Planned {
    pub plan: Plan,
    pub predicted_kld: f64,
    pub tensor_kld: BTreeMap<String, f64>,
    pub fit: Option<fit::FitPlan>,
}

/// Plan a recipe on an open session (`session`: the model the recipe quantizes, pruned or not;
/// `base`: the unpruned model, whose preset sizes `max_size_of` means).
///
/// # Errors
/// Planning errors (an unreachable fit target, a bad override).
pub fn plan_recipe(session: &Session, base: &Session, r: &Recipe) -> Result<Planned> {
    // A correction ships beside the model: its bytes come off a fit's target.
    let reserve = |t: fit::Target| -> Result<fit::Target> {
        match &r.correction {
            None => Ok(t),
            Some(c) => {
                let at = format!("search.recipes ({}).correction", r.name);
                let n = session.file.tensors().iter().map(|t| t.n_elements()).sum();
                fit::reserve(t, c.reserve_bytes(&at, &session.file)?, n, &at)
            }
        }
    };
    match &r.kind {
        RecipeKind::Preset { ftype, tensor_types } => {
            let mut o = QuantizeOptions::new(*ftype);
            o.has_imatrix = session.method() == crate::sensitivity::Method::Imatrix;
            o.allow_requantize = true;
            for (pat, ty) in tensor_types {
                let re = regex::Regex::new(pat).map_err(|e| crate::Error::Invalid(format!("{}: {e}", r.name)))?;
                let t = ty.parse().map_err(|_| crate::Error::Invalid(format!("{}: type {ty}", r.name)))?;
                o.tensor_types.push((re, t));
            }
            let plan = crate::quantize::build_plan(session.file.metadata(), session.file.tensors(), &o)?;
            let tensor_kld = plan
                .tensors
                .iter()
                .filter_map(|t| {
                    let p = session.profile.tensor(&t.name)?;
                    Some((t.name.clone(), p.choice(t.dst_type).map_or(0.0, |c| c.kld)))
                })
                .collect();
            Ok(Planned { predicted_kld: predicted_kld(&session.profile, &plan), plan, tensor_kld, fit: None })
        }
        RecipeKind::Fit(_) | RecipeKind::FitSizeOf { .. } => {
            let t = match &r.kind {
                RecipeKind::FitSizeOf { ftype } => {
                    let preset = base.preset_plan(*ftype)?;
                    fit::Target::MaxSize(fit::file_size(&base.file, &preset)?)
                }
                RecipeKind::Fit(t) => *t,
                RecipeKind::Preset { .. } => unreachable!("matched above"),
            };
            let fp = session.fit(reserve(t)?)?;
            Ok(Planned {
                plan: fp.plan.clone(),
                predicted_kld: fp.predicted_kld,
                tensor_kld: fp.tensor_kld.clone(),
                fit: Some(fp),
            })
        }
    }
}

/// Which points are on the Pareto front (every objective minimised).
pub fn pareto_front(points: &[Vec<f64>]) -> Vec<bool> {
    points.iter().map(|p| !points.iter().any(|q| moo::dominates(q, p))).collect()
}

/// Mark the fronts on evaluated, feasible candidates: over the search's objectives, and size
/// against damage (KLD, or `1 − cosine` for an encoder).
pub fn mark_fronts(cands: &mut [Candidate], objectives: &[objective::Objective]) {
    let idx: Vec<usize> = (0..cands.len())
        .filter(|&i| {
            let c = &cands[i];
            c.t.measured.is_some() && c.t.error.is_none() && c.violation == 0.0
        })
        .collect();
    let full: Vec<Vec<f64>> = idx
        .iter()
        .map(|&i| objectives.iter().map(|o| o.minimised(&cands[i]).unwrap_or(f64::INFINITY)).collect())
        .collect();
    let two: Vec<Vec<f64>> = idx
        .iter()
        .map(|&i| {
            let c = &cands[i];
            vec![c.t.file_bytes as f64, c.t.measured.as_ref().map_or(f64::INFINITY, |m| m.damage())]
        })
        .collect();
    let (f, t) = (pareto_front(&full), pareto_front(&two));
    for (k, &i) in idx.iter().enumerate() {
        cands[i].pareto = f[k];
        cands[i].pareto_size_kld = t[k];
    }
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[idx[k]] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (ties get average ranks); `None` for fewer than 3 points.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 3 {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        return None;
    }
    Some(cov / (va * vb).sqrt())
}

/// Summary numbers of a finished search.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub n_candidates: usize,
    pub n_evaluated: usize,
    /// Trials that ended in an error (each recorded as a failed run).
    pub n_failed: usize,
    /// Rank correlation of predicted and measured damage (KLD, or `1 − cosine` for an encoder)
    /// over the evaluated candidates that quantize
    /// the base itself (a pruned recipe's prediction is relative to its pruned copy).
    pub kld_rank_correlation: Option<f64>,
    /// The front of size against damage.
    pub front: Vec<String>,
    /// The front over the search's objectives.
    pub pareto: Vec<String>,
    pub objectives: Vec<objective::Objective>,
    pub strategy: String,
    /// Why the search stopped before its budget (the carbon budget), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// The base model's multiple-choice accuracy, when tasks were given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_acc: Option<f64>,
    pub wall_seconds: f64,
    /// Energy and CO2 of all trials.
    pub energy_j: f64,
    pub co2_g: f64,
    /// `rapl` or `modelled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_model: Option<String>,
    pub grid_g_per_kwh: f64,
    /// For a replayed search: how close its trials came to the recorded search's front.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayStats>,
}

/// How much of a recorded search's front a replayed strategy reached.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplayStats {
    /// The recorded search's run id.
    pub run_id: i64,
    pub trials: usize,
    /// Points of the recorded search.
    pub recorded: usize,
    /// Hypervolume of the trials' feasible points over that of every recorded feasible point,
    /// objectives scaled to [0, 1] by the recorded ideal and nadir, reference point 1.1 each.
    pub hypervolume_ratio: f64,
    /// Recorded front points the trials found, of how many.
    pub front_found: usize,
    pub front_size: usize,
    /// Trials after which every recorded front point had been found (if they all were).
    pub trials_to_front: Option<usize>,
}

/// [`ReplayStats`] of `found` (trials in the order run) against `all` (the recorded candidates),
/// both as minimised objective vectors of feasible points keyed by name.
pub fn replay_stats(run_id: i64, found: &[(String, Vec<f64>)], all: &[(String, Vec<f64>)]) -> ReplayStats {
    let pts: Vec<Vec<f64>> = all.iter().map(|(_, v)| v.clone()).collect();
    let mut st = ReplayStats { run_id, trials: found.len(), recorded: all.len(), ..Default::default() };
    let Some((ideal, nadir)) = moo::ideal_and_nadir(&pts) else { return st };
    let reference = vec![1.1; ideal.len()];
    let hv = |v: &[Vec<f64>]| moo::hypervolume(&moo::normalize(v, &ideal, &nadir), &reference);
    let total = hv(&pts);
    let got: Vec<Vec<f64>> = found.iter().map(|(_, v)| v.clone()).collect();
    st.hypervolume_ratio = if total > 0.0 { hv(&got) / total } else { 0.0 };
    let front: Vec<&String> = all.iter().zip(pareto_front(&pts)).filter(|(_, on)| *on).map(|((n, _), _)| n).collect();
    st.front_size = front.len();
    let mut seen = std::collections::BTreeSet::new();
    for (i, (n, _)) in found.iter().enumerate() {
        if front.contains(&n) {
            seen.insert(n.clone());
            if seen.len() == front.len() && st.trials_to_front.is_none() {
                st.trials_to_front = Some(i + 1);
            }
        }
    }
    st.front_found = seen.len();
    st
}

pub fn summarize(cands: &[Candidate]) -> Summary {
    let ev: Vec<&Candidate> = cands.iter().filter(|c| c.t.measured.is_some() && c.t.error.is_none()).collect();
    let same_base: Vec<&&Candidate> = ev.iter().filter(|c| c.recipe.prune.is_none()).collect();
    let pred: Vec<f64> = same_base.iter().map(|c| c.t.predicted_kld).collect();
    let meas: Vec<f64> = same_base.iter().map(|c| c.t.measured.as_ref().map_or(0.0, |m| m.damage())).collect();
    let extra = || cands.iter().filter_map(|c| c.t.extra.as_ref());
    Summary {
        n_candidates: cands.len(),
        n_evaluated: ev.len(),
        n_failed: cands.iter().filter(|c| c.t.error.is_some()).count(),
        kld_rank_correlation: spearman(&pred, &meas),
        front: cands.iter().filter(|c| c.pareto_size_kld).map(|c| c.name.clone()).collect(),
        pareto: cands.iter().filter(|c| c.pareto).map(|c| c.name.clone()).collect(),
        energy_j: extra().map(|x| x.trial_energy.joules).sum(),
        co2_g: extra().map(|x| x.co2_g).sum(),
        ..Summary::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fronts_and_ranks() {
        let pts = vec![vec![1.0, 5.0], vec![2.0, 3.0], vec![3.0, 3.0], vec![4.0, 1.0], vec![2.0, 6.0]];
        assert_eq!(pareto_front(&pts), vec![true, true, false, true, false]);
        assert_eq!(spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]), Some(-1.0));
        let r = spearman(&[1.0, 2.0, 2.0, 4.0], &[1.0, 3.0, 2.0, 4.0]).unwrap();
        assert!(r > 0.9 && r < 1.0);
        assert_eq!(spearman(&[1.0, 2.0], &[1.0, 2.0]), None);
    }
}
