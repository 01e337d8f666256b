//! The report's data gathered from the registry: a search run brings all its candidates; fit,
//! quantize and eval runs are one point each.

use super::{Point, ReportData};
use crate::error::{Error, Result};
use crate::job::record::metric;
use crunch_registry::{Filter, Registry, RunRecord};
use std::collections::BTreeMap;

fn m(r: &RunRecord, k: &str) -> Option<f64> {
    r.summary.metrics.get(k).copied()
}

fn point_of(r: &RunRecord) -> Point {
    Point {
        name: r.summary.label.clone().unwrap_or_else(|| format!("run {}", r.summary.id)),
        kind: r.summary.kind.clone(),
        run_id: Some(r.summary.id),
        file_bytes: r.summary.output_bytes.or(m(r, metric::FILE_BYTES).map(|v| v as u64)).unwrap_or(0),
        bpw: m(r, metric::BPW).unwrap_or(0.0),
        predicted_kld: m(r, metric::PREDICTED_KLD),
        kld: m(r, metric::KLD),
        ppl: m(r, metric::PPL),
        top1: m(r, metric::TOP1),
        tokens_per_s: m(r, metric::TOKENS_PER_S),
        ram_bytes: m(r, metric::RAM_BYTES).map(|v| v as u64),
        predicted_damage: m(r, metric::PREDICTED_DAMAGE),
        cosine_mean: m(r, metric::COSINE_MEAN),
        cosine_p1: m(r, metric::COSINE_P1),
        tg_tokens_per_s: m(r, metric::TG_TOKENS_PER_S),
        energy_j_per_token: m(r, metric::ENERGY_J_PER_TOKEN),
        co2_g: m(r, metric::CO2_G),
        peak_rss_bytes: m(r, metric::PEAK_RSS_BYTES).map(|v| v as u64),
        acc: m(r, metric::ACC_NORM),
        violation: m(r, metric::VIOLATION),
        pareto: false,
        types: r.tensors.iter().map(|t| (t.name.clone(), t.ty.clone())).collect(),
    }
}

/// Gather what the page shows from the registry.
///
/// # Errors
/// Registry errors; no run ids.
pub fn collect(reg: &Registry, ids: &[i64]) -> Result<ReportData> {
    if ids.is_empty() {
        return Err(Error::Invalid("no runs to report (crunch::history::report_runs chooses the default ones)".into()));
    }
    let mut d = ReportData { title: "crunch report".into(), ..Default::default() };
    let mut subtitle = Vec::new();
    for &id in ids {
        let r = reg.get(id)?;
        if r.summary.kind == "search" {
            let children = reg.list(&Filter { parent: Some(id), ..Default::default() })?;
            let fronts: BTreeMap<String, bool> = r
                .data
                .get("candidates")
                .and_then(|c| c.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|c| {
                            // The front over the search's objectives where it had more than size
                            // and KLD, else the size-KLD front.
                            let key = if r.data.get("summary").and_then(|s| s.get("objectives")).is_some() {
                                "pareto"
                            } else {
                                "pareto_size_kld"
                            };
                            Some((c.get("name")?.as_str()?.to_string(), c.get(key)?.as_bool()?))
                        })
                        .collect()
                })
                .unwrap_or_default();
            for c in children.iter().rev() {
                let full = reg.get(c.id)?;
                let mut p = point_of(&full);
                p.kind = if full.summary.kind == "fit" { "fit".into() } else { "preset".into() };
                if full.params.get("recipe").and_then(|r| r.get("prune")).is_some() {
                    p.kind = format!("prune + {}", p.kind);
                }
                p.pareto = fronts.get(&p.name).copied().unwrap_or(false);
                if full.summary.status == crunch_registry::RunStatus::Ok {
                    d.points.push(p);
                }
            }
            if let Some(s) = r.data.get("sensitivity") {
                d.sensitivity = serde_json::from_value(s.clone()).unwrap_or_default();
            }
            d.rank_correlation = m(&r, metric::KLD_RANK_CORRELATION);
            if let Some(s) = r.data.get("summary") {
                if let Some(o) = s.get("objectives").and_then(|o| serde_json::from_value(o.clone()).ok()) {
                    d.objectives = o;
                }
                d.energy_source = s.get("energy_source").and_then(|v| v.as_str()).map(String::from);
                d.power_model = s.get("power_model").and_then(|v| v.as_str()).map(String::from);
            }
            let model = r.inputs.iter().find(|i| i.role == "model").map(|i| i.path.clone()).unwrap_or_default();
            subtitle.push(format!("search run {id} on {model}, {} candidates", children.len()));
        } else {
            d.points.push(point_of(&r));
            subtitle.push(format!("{} run {id}", r.summary.kind));
        }
    }
    d.base_ppl = None;
    for id in d.points.iter().filter_map(|p| p.run_id) {
        if let Some(b) = reg.get(id)?.summary.metrics.get(metric::PPL_BASE) {
            d.base_ppl = Some(*b);
            break;
        }
    }
    if d.points.iter().all(|p| !p.pareto) {
        let pts: Vec<Vec<f64>> =
            d.points.iter().map(|p| vec![p.file_bytes as f64, p.kld.unwrap_or(f64::INFINITY)]).collect();
        for (p, f) in d.points.iter_mut().zip(crate::search::pareto_front(&pts)) {
            p.pareto = f && p.kld.is_some();
        }
    }
    if d.rank_correlation.is_none() {
        let pm: Vec<(f64, f64)> = d.points.iter().filter_map(|p| Some((p.predicted_kld?, p.kld?))).collect();
        let (a, b): (Vec<f64>, Vec<f64>) = pm.into_iter().unzip();
        d.rank_correlation = crate::search::spearman(&a, &b);
    }
    d.subtitle = subtitle.join("; ");
    Ok(d)
}
