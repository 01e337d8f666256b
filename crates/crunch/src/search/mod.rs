//! `crunch search`: many candidate recipes (presets, fit targets, methods), each planned, written,
//! evaluated on held-out text, then the Pareto front over size, KL-divergence, perplexity, speed
//! and memory, and how well the predicted KL-divergence ranks the candidates.

pub mod recipe;

use crate::error::Result;
use crate::fit::heldout::Measured;
use crate::fit::ram::RamEstimate;
use crate::fit::session::Session;
use crate::fit::{self, predicted_kld};
use crate::quantize::{Plan, QuantizeOptions};
use recipe::{Recipe, RecipeKind};
use serde::Serialize;
use std::collections::BTreeMap;

/// One evaluated candidate.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub name: String,
    pub recipe: Recipe,
    /// The model file plus its correction adapter, if any.
    pub file_bytes: u64,
    /// Bytes of the correction adapter (counted in `file_bytes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter_bytes: Option<u64>,
    pub bpw: f64,
    /// KLD the profile predicts from the quantization alone: from the base, or for a pruned
    /// recipe from its pruned copy (pruning's own loss is only in `measured`).
    pub predicted_kld: f64,
    pub measured: Option<Measured>,
    /// llama.cpp memory estimate at the search's context.
    pub ram: Option<RamEstimate>,
    pub quantize_seconds: f64,
    pub output: Option<String>,
    pub run_id: Option<i64>,
    pub error: Option<String>,
    /// On the Pareto front (size, KLD, perplexity, speed, memory).
    pub pareto: bool,
    /// On the front of size against KLD alone.
    pub pareto_size_kld: bool,
    /// Type per tensor.
    pub types: BTreeMap<String, String>,
    #[serde(skip)]
    pub tensor_kld: BTreeMap<String, f64>,
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

/// `dominates(a, b)`: `a` is at least as good as `b` in every objective (all minimised) and
/// better in one.
fn dominates(a: &[f64], b: &[f64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x <= y) && a.iter().zip(b).any(|(x, y)| x < y)
}

/// Which points are on the Pareto front (every objective minimised).
pub fn pareto_front(points: &[Vec<f64>]) -> Vec<bool> {
    points.iter().map(|p| !points.iter().any(|q| dominates(q, p))).collect()
}

/// Mark the fronts on evaluated candidates: size, damage (KLD, or `1 − cosine` for an encoder),
/// perplexity, memory, and speed (negated).
pub fn mark_fronts(cands: &mut [Candidate]) {
    let idx: Vec<usize> = (0..cands.len()).filter(|&i| cands[i].measured.is_some()).collect();
    let full: Vec<Vec<f64>> = idx
        .iter()
        .map(|&i| {
            let c = &cands[i];
            let m = c.measured.as_ref().expect("filtered");
            vec![c.file_bytes as f64, m.damage(), m.ppl, c.ram.map_or(0.0, |r| r.total as f64), -m.tokens_per_s]
        })
        .collect();
    let two: Vec<Vec<f64>> = full.iter().map(|p| vec![p[0], p[1]]).collect();
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
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub n_candidates: usize,
    pub n_evaluated: usize,
    /// Rank correlation of predicted and measured damage (KLD, or `1 − cosine` for an encoder)
    /// over the evaluated candidates that quantize
    /// the base itself (a pruned recipe's prediction is relative to its pruned copy).
    pub kld_rank_correlation: Option<f64>,
    pub front: Vec<String>,
}

pub fn summarize(cands: &[Candidate]) -> Summary {
    let ev: Vec<&Candidate> = cands.iter().filter(|c| c.measured.is_some()).collect();
    let same_base: Vec<&&Candidate> = ev.iter().filter(|c| c.recipe.prune.is_none()).collect();
    let pred: Vec<f64> = same_base.iter().map(|c| c.predicted_kld).collect();
    let meas: Vec<f64> = same_base.iter().map(|c| c.measured.as_ref().map_or(0.0, |m| m.damage())).collect();
    Summary {
        n_candidates: cands.len(),
        n_evaluated: ev.len(),
        kld_rank_correlation: spearman(&pred, &meas),
        front: cands.iter().filter(|c| c.pareto_size_kld).map(|c| c.name.clone()).collect(),
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
