//! `crunch report`: one self-contained HTML page (inline SVG, no scripts, no network) with the
//! Pareto plots (size against KL-divergence and against perplexity), predicted against measured
//! KL-divergence, the per-tensor type map of every candidate, the sensitivity heat map and the
//! metrics table; the plots can also be written as SVG files.

mod collect;
pub mod svg;

pub use collect::collect;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use svg::{esc, Axis, Series};

/// One model in the report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Point {
    pub name: String,
    /// `preset`, `fit`, `quantize`…
    pub kind: String,
    pub run_id: Option<i64>,
    pub file_bytes: u64,
    pub bpw: f64,
    pub predicted_kld: Option<f64>,
    pub kld: Option<f64>,
    pub ppl: Option<f64>,
    pub top1: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub ram_bytes: Option<u64>,
    /// A sentence encoder's predicted embedding damage (`1 − cosine`) and measured cosine
    /// similarity to the base's embeddings on held-out lines (mean, 1st percentile).
    #[serde(default)]
    pub predicted_damage: Option<f64>,
    #[serde(default)]
    pub cosine_mean: Option<f64>,
    #[serde(default)]
    pub cosine_p1: Option<f64>,
    /// A search trial's generation speed, energy per generated token, CO2, peak memory and
    /// multiple-choice accuracy.
    #[serde(default)]
    pub tg_tokens_per_s: Option<f64>,
    #[serde(default)]
    pub energy_j_per_token: Option<f64>,
    #[serde(default)]
    pub co2_g: Option<f64>,
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
    #[serde(default)]
    pub acc: Option<f64>,
    /// Outside the search's constraints (0 = feasible).
    #[serde(default)]
    pub violation: Option<f64>,
    pub pareto: bool,
    /// Type per tensor.
    pub types: BTreeMap<String, String>,
}

/// Everything the page shows.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReportData {
    pub title: String,
    pub subtitle: String,
    pub points: Vec<Point>,
    /// Predicted KLD per tensor per type.
    pub sensitivity: BTreeMap<String, BTreeMap<String, f64>>,
    pub base_ppl: Option<f64>,
    pub rank_correlation: Option<f64>,
    /// The search's objectives (a plot for every pair of them).
    #[serde(default)]
    pub objectives: Vec<crate::search::objective::Objective>,
    /// `rapl` or `modelled`, and how power was modelled.
    #[serde(default)]
    pub energy_source: Option<String>,
    #[serde(default)]
    pub power_model: Option<String>,
}

/// A point's value of an objective, in the units of [`Objective::label`].
///
/// [`Objective::label`]: crate::search::objective::Objective::label
pub fn value(p: &Point, o: crate::search::objective::Objective) -> Option<f64> {
    use crate::search::objective::Objective as O;
    match o {
        O::Size => Some(p.file_bytes as f64 / (1 << 20) as f64),
        O::Kld => p.kld.or(p.cosine_mean.map(|c| 1.0 - c)),
        O::Ppl => p.ppl,
        O::Top1 => p.top1.map(|t| t * 100.0),
        O::Acc => p.acc.map(|a| a * 100.0),
        O::Pp => p.tokens_per_s,
        O::Tg => p.tg_tokens_per_s,
        O::Ram => p.peak_rss_bytes.map(|b| b as f64 / (1 << 20) as f64),
        O::Energy => p.energy_j_per_token,
        O::Co2 => p.co2_g,
    }
}

/// The plot of one pair of objectives: every point, the points on the search's whole front, and
/// the 2-D front of this pair.
fn pair_plot(d: &ReportData, a: crate::search::objective::Objective, b: crate::search::objective::Objective) -> String {
    let pts: Vec<(&Point, f64, f64)> = d.points.iter().filter_map(|p| Some((p, value(p, a)?, value(p, b)?))).collect();
    let min = |o: crate::search::objective::Objective, v: f64| if o.maximised() { -v } else { v };
    let two: Vec<Vec<f64>> = pts.iter().map(|(_, x, y)| vec![min(a, *x), min(b, *y)]).collect();
    let on2 = crate::search::pareto_front(&two);
    // Only this pair's front is labelled: sixty names on one plot are unreadable.
    let mut front2: Vec<(f64, f64, String)> =
        pts.iter().zip(&on2).filter(|(_, on)| **on).map(|((p, x, y), _)| (*x, *y, p.name.clone())).collect();
    front2.sort_by(|p, q| p.0.total_cmp(&q.0));
    let series = vec![
        Series {
            name: "trials".into(),
            color: OTHER_COLOR.into(),
            points: pts.iter().filter(|(p, _, _)| !p.pareto).map(|(_, x, y)| (*x, *y, String::new())).collect(),
            line: false,
            markers: true,
        },
        Series {
            name: "front (all objectives)".into(),
            color: FIT_COLOR.into(),
            points: pts.iter().filter(|(p, _, _)| p.pareto).map(|(_, x, y)| (*x, *y, String::new())).collect(),
            line: false,
            markers: true,
        },
        Series { name: "front (this pair)".into(), color: "#2ca02c".into(), points: front2, line: true, markers: true },
    ];
    let log = |o: crate::search::objective::Objective| matches!(o, crate::search::objective::Objective::Kld);
    svg::scatter(
        &format!("{} vs {}", a.label(), b.label()),
        &Axis { label: a.label().into(), log: log(a) },
        &Axis { label: b.label().into(), log: log(b) },
        &series,
        900.0,
        520.0,
    )
}

const PRESET_COLOR: &str = "#1f77b4";
const FIT_COLOR: &str = "#d62728";
const OTHER_COLOR: &str = "#7f7f7f";

fn color_of(kind: &str) -> &'static str {
    match kind {
        "preset" | "quantize" => PRESET_COLOR,
        "fit" => FIT_COLOR,
        _ => OTHER_COLOR,
    }
}

fn series_by_kind(points: &[Point], y: impl Fn(&Point) -> Option<f64>) -> Vec<Series> {
    let kinds: BTreeSet<&str> = points.iter().map(|p| p.kind.as_str()).collect();
    let mut out: Vec<Series> = kinds
        .into_iter()
        .map(|k| Series {
            name: match k {
                "quantize" | "preset" => "llama.cpp preset".to_string(),
                "fit" => "crunch fit".to_string(),
                k => k.to_string(),
            },
            color: color_of(k).into(),
            points: points
                .iter()
                .filter(|p| p.kind == k)
                .filter_map(|p| Some((p.file_bytes as f64 / 1e6, y(p)?, p.name.clone())))
                .collect(),
            line: false,
            markers: true,
        })
        .collect();
    let front: Vec<(f64, f64, String)> = points
        .iter()
        .filter(|p| p.pareto)
        .filter_map(|p| Some((p.file_bytes as f64 / 1e6, y(p)?, String::new())))
        .collect();
    if front.len() > 1 {
        out.push(Series {
            name: "Pareto front".into(),
            color: "#2ca02c".into(),
            points: front,
            line: true,
            markers: false,
        });
    }
    out
}

/// The plots, by file name.
pub fn plots(d: &ReportData) -> Vec<(String, String)> {
    let size = Axis { label: "file size (MB)".into(), log: false };
    let mut v = vec![
        (
            "pareto_size_kld.svg".to_string(),
            svg::scatter(
                "Size vs KL-divergence (held-out text)",
                &size,
                &Axis { label: "mean KLD vs base".into(), log: true },
                &series_by_kind(&d.points, |p| p.kld),
                900.0,
                520.0,
            ),
        ),
        (
            "pareto_size_ppl.svg".to_string(),
            svg::scatter(
                "Size vs perplexity (held-out text)",
                &size,
                &Axis { label: "perplexity".into(), log: false },
                &series_by_kind(&d.points, |p| p.ppl),
                900.0,
                520.0,
            ),
        ),
    ];
    if d.points.iter().any(|p| p.cosine_mean.is_some()) {
        v.push((
            "pareto_size_cosine.svg".to_string(),
            svg::scatter(
                "Size vs embedding damage (held-out lines)",
                &size,
                &Axis { label: "1 - mean cosine vs base".into(), log: true },
                &series_by_kind(&d.points, |p| p.cosine_mean.map(|c| 1.0 - c)),
                900.0,
                520.0,
            ),
        ));
    }
    let pm: Vec<(f64, f64, String)> = d
        .points
        .iter()
        .filter_map(|p| match (p.predicted_kld, p.kld, p.predicted_damage, p.cosine_mean) {
            (Some(a), Some(b), _, _) => Some((a, b, p.name.clone())),
            (_, _, Some(a), Some(c)) => Some((a, 1.0 - c, p.name.clone())),
            _ => None,
        })
        .collect();
    if !pm.is_empty() {
        let title = match d.rank_correlation {
            Some(r) => format!("Predicted vs measured damage (rank correlation {r:.3})"),
            None => "Predicted vs measured damage".into(),
        };
        let lo = pm.iter().map(|p| p.0.min(p.1)).filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
        let hi = pm.iter().map(|p| p.0.max(p.1)).fold(0.0, f64::max);
        let mut series =
            vec![Series { name: "candidates".into(), color: FIT_COLOR.into(), points: pm, line: false, markers: true }];
        if lo.is_finite() && hi > lo {
            series.push(Series {
                name: "predicted = measured".into(),
                color: "#999".into(),
                points: vec![(lo, lo, String::new()), (hi, hi, String::new())],
                line: true,
                markers: false,
            });
        }
        v.push((
            "predicted_vs_measured.svg".to_string(),
            svg::scatter(
                &title,
                &Axis { label: "predicted KLD (encoders: 1 - cosine)".into(), log: true },
                &Axis { label: "measured KLD (encoders: 1 - cosine)".into(), log: true },
                &series,
                900.0,
                520.0,
            ),
        ));
    }
    for (i, &a) in d.objectives.iter().enumerate() {
        for &b in &d.objectives[i + 1..] {
            if d.points.iter().any(|p| value(p, a).is_some() && value(p, b).is_some()) {
                v.push((format!("pair_{}_{}.svg", a.name(), b.name()), pair_plot(d, a, b)));
            }
        }
    }
    if let Some(h) = sensitivity_map(d) {
        v.push(("sensitivity.svg".to_string(), h));
    }
    v
}

/// `(kind, layer)` of a tensor name; non-layer tensors get layer `None`.
fn split_name(name: &str) -> (String, Option<usize>) {
    if let Some(rest) = name.strip_prefix("blk.") {
        if let Some((l, kind)) = rest.split_once('.') {
            if let Ok(l) = l.parse() {
                return (kind.trim_end_matches(".weight").to_string(), Some(l));
            }
        }
    }
    (name.trim_end_matches(".weight").to_string(), None)
}

fn layer_grid<T: Clone>(
    names: &[&String],
    value: impl Fn(&str) -> Option<T>,
) -> (Vec<String>, Vec<String>, Vec<Vec<Option<T>>>) {
    let mut kinds: Vec<String> = Vec::new();
    let mut n_layer = 0;
    let mut has_global = false;
    for n in names {
        let (k, l) = split_name(n);
        match l {
            Some(l) => {
                n_layer = n_layer.max(l + 1);
                if !kinds.contains(&k) {
                    kinds.push(k);
                }
            }
            None => has_global = true,
        }
    }
    let mut cols: Vec<String> = (0..n_layer).map(|l| l.to_string()).collect();
    if has_global {
        cols.push("global".into());
    }
    let mut rows = kinds.clone();
    let globals: Vec<String> = names.iter().filter(|n| split_name(n).1.is_none()).map(|n| split_name(n).0).collect();
    rows.extend(globals.iter().cloned());
    let vals = rows
        .iter()
        .map(|r| {
            (0..cols.len())
                .map(|c| {
                    if c < n_layer && kinds.contains(r) {
                        value(&format!("blk.{c}.{r}.weight"))
                    } else if c == n_layer && globals.contains(r) {
                        value(&format!("{r}.weight"))
                    } else {
                        None
                    }
                })
                .collect()
        })
        .collect();
    (rows, cols, vals)
}

fn sensitivity_map(d: &ReportData) -> Option<String> {
    if d.sensitivity.is_empty() {
        return None;
    }
    // Damage at 4.5-bit Q4_0 (valid for every tensor), else the tensor's smallest candidate.
    let names: Vec<&String> = d.sensitivity.keys().collect();
    let (rows, cols, vals) = layer_grid(&names, |n| {
        let m = d.sensitivity.get(n)?;
        m.get("Q4_0").or_else(|| m.values().next()).copied()
    });
    Some(svg::heatmap(
        "Sensitivity: predicted KLD when the tensor alone is Q4_0",
        &rows,
        &cols,
        &vals,
        None,
        "predicted KLD",
    ))
}

fn bpw_of(ty: &str) -> Option<f64> {
    let t: crunch_core::GgmlType = ty.parse().ok()?;
    Some(t.type_size() as f64 * 8.0 / t.block_size() as f64)
}

fn type_map(p: &Point) -> Option<String> {
    if p.types.is_empty() {
        return None;
    }
    let names: Vec<&String> = p.types.keys().filter(|n| n.ends_with(".weight") && !n.contains("norm")).collect();
    let (rows, cols, vals) = layer_grid(&names, |n| p.types.get(n).and_then(|t| bpw_of(t)));
    let (_, _, text) = layer_grid(&names, |n| p.types.get(n).cloned());
    let text: Vec<Vec<String>> =
        text.into_iter().map(|r| r.into_iter().map(|t| t.unwrap_or_default()).collect()).collect();
    Some(svg::heatmap(&format!("Tensor types: {}", p.name), &rows, &cols, &vals, Some(&text), "bits per weight"))
}

/// The whole page.
pub fn html(d: &ReportData) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:sans-serif;margin:24px;color:#222}} table{{border-collapse:collapse;font-size:13px}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} th{{background:#f0f0f0}}\
         td:first-child,th:first-child{{text-align:left}} tr.front td{{background:#eef8ee}}\
         .plot{{margin:12px 0}} .maps{{display:flex;flex-wrap:wrap;gap:12px}} .maps svg{{max-width:100%}}\
         </style></head><body>",
        esc(&d.title)
    );
    let _ = write!(h, "<h1>{}</h1><p>{}</p>", esc(&d.title), esc(&d.subtitle));
    if let Some(r) = d.rank_correlation {
        let _ = write!(h, "<p>Rank correlation of predicted and measured KL-divergence: <b>{r:.3}</b></p>");
    }
    let plots = plots(d);
    let _ = write!(h, "<h2>Pareto plots</h2>");
    for (name, svg) in &plots {
        if name.starts_with("pareto") || name.starts_with("pair_") || name.starts_with("predicted") {
            let _ = write!(h, "<div class=\"plot\" id=\"{}\">{svg}</div>", esc(name.trim_end_matches(".svg")));
        }
    }
    let encoders = d.points.iter().any(|p| p.cosine_mean.is_some());
    let trials = d.points.iter().any(|p| p.tg_tokens_per_s.is_some() || p.co2_g.is_some());
    if trials {
        let _ = write!(
            h,
            "<p>Energy: <b>{}</b>{}. CO2 = energy × grid intensity.</p>",
            esc(d.energy_source.as_deref().unwrap_or("modelled")),
            d.power_model.as_deref().map(|m| format!(" ({})", esc(m))).unwrap_or_default()
        );
    }
    let _ = write!(
        h,
        "<h2>Metrics</h2><table><tr><th>model</th><th>kind</th><th>run</th><th>size (bytes)</th><th>bpw</th>\
         <th>predicted KLD</th><th>KLD</th><th>PPL</th><th>same top %</th><th>tok/s</th><th>RAM est.</th>{}{}<th>front</th></tr>",
        if encoders { "<th>predicted cosine</th><th>cosine mean</th><th>cosine 1st pct</th>" } else { "" },
        if trials {
            format!(
                "<th>gen. tok/s</th><th>J/token ({})</th><th>CO2 g</th><th>peak RSS</th><th>acc %</th>",
                esc(d.energy_source.as_deref().unwrap_or("modelled"))
            )
        } else {
            String::new()
        }
    );
    let f = |v: Option<f64>, d: usize| v.map(|v| format!("{v:.d$}")).unwrap_or_else(|| "-".into());
    let mut pts: Vec<&Point> = d.points.iter().collect();
    pts.sort_by_key(|p| p.file_bytes);
    for p in &pts {
        let _ = write!(
            h,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{}{}<td>{}</td></tr>",
            if p.pareto { "front" } else { "" },
            esc(&p.name),
            esc(&p.kind),
            p.run_id.map(|i| i.to_string()).unwrap_or_default(),
            p.file_bytes,
            p.bpw,
            f(p.predicted_kld, 5),
            f(p.kld, 5),
            f(p.ppl, 4),
            f(p.top1.map(|t| t * 100.0), 2),
            f(p.tokens_per_s, 1),
            p.ram_bytes.map(crate::inspect::human_bytes).unwrap_or_else(|| "-".into()),
            if encoders {
                format!(
                    "<td>{}</td><td>{}</td><td>{}</td>",
                    f(p.predicted_damage.map(|d| 1.0 - d), 6),
                    f(p.cosine_mean, 6),
                    f(p.cosine_p1, 6)
                )
            } else {
                String::new()
            },
            if trials {
                format!(
                    "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
                    f(p.tg_tokens_per_s, 1),
                    f(p.energy_j_per_token, 4),
                    f(p.co2_g, 4),
                    p.peak_rss_bytes.map(crate::inspect::human_bytes).unwrap_or_else(|| "-".into()),
                    f(p.acc.map(|a| a * 100.0), 1)
                )
            } else {
                String::new()
            },
            if p.pareto { "*" } else { "" }
        );
    }
    h += "</table>";
    h += &pruned_beside_plain(&pts);
    if let Some(b) = d.base_ppl {
        let _ = write!(h, "<p>Base model perplexity on the same text: {b:.4}</p>");
    }
    if let Some((_, s)) = plots.iter().find(|(n, _)| n == "sensitivity.svg") {
        let _ = write!(h, "<h2>Sensitivity</h2><div class=\"plot\" id=\"sensitivity\">{s}</div>");
    }
    let maps: Vec<String> = pts.iter().filter_map(|p| type_map(p)).collect();
    if !maps.is_empty() {
        let _ = write!(h, "<h2>Per-tensor types</h2><div class=\"maps\">");
        for m in maps {
            h += &m;
        }
        h += "</div>";
    }
    h += "</body></html>\n";
    h
}

/// A Chromium binary (`$CRUNCH_CHROMIUM`, else `chromium`, `chromium-browser`, `google-chrome` or
/// `chrome` on the `PATH`), if one is installed.
pub fn chromium() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("CRUNCH_CHROMIUM") {
        return Some(std::path::PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser", "google-chrome", "chrome"].map(|n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Render an SVG or HTML file to a PNG of `width` x `height` with headless Chromium.
///
/// # Errors
/// No Chromium, or Chromium did not write the PNG (its stderr is in the message).
pub fn screenshot(page: &std::path::Path, png: &std::path::Path, width: u32, height: u32) -> crate::error::Result<()> {
    use crate::error::Error;
    let chrome = chromium()
        .ok_or_else(|| Error::field("png", "PNG plots need Chromium (apt-get install chromium); SVG needs nothing"))?;
    let abs = |p: &std::path::Path| std::path::absolute(p).map_err(|e| Error::io(p, e));
    let out = std::process::Command::new(&chrome)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg(format!("--screenshot={}", abs(png)?.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("file://{}", abs(page)?.display()))
        .output()
        .map_err(|e| Error::io(&chrome, e))?;
    if !png.is_file() {
        return Err(Error::Invalid(format!(
            "{} did not write {}: {}",
            chrome.display(),
            png.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// The `width` and `height` an SVG declares (900 x 520 when it does not).
pub fn svg_size(svg: &str) -> (u32, u32) {
    let get = |k: &str| -> Option<u32> {
        let i = svg.find(&format!("{k}=\""))? + k.len() + 2;
        let j = svg[i..].find('"')? + i;
        svg[i..j].parse::<f64>().ok().map(|v| v.ceil() as u32)
    };
    (get("width").unwrap_or(900), get("height").unwrap_or(520))
}

/// Search recipes that prune before quantizing, each beside the recipe that quantizes the base
/// alone with the same budget (`prune-…+NAME` beside `NAME`); empty when there are none.
fn pruned_beside_plain(pts: &[&Point]) -> String {
    let f = |v: Option<f64>, d: usize| v.map(|v| format!("{v:.d$}")).unwrap_or_else(|| "-".into());
    let mut rows = String::new();
    for p in pts.iter().filter(|p| p.kind.starts_with("prune")) {
        let Some((_, plain_name)) = p.name.split_once('+') else { continue };
        let Some(q) = pts.iter().find(|q| q.name == plain_name && !q.kind.starts_with("prune")) else { continue };
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.name),
            p.file_bytes,
            f(p.kld, 5),
            f(p.ppl, 4),
            esc(&q.name),
            q.file_bytes,
            f(q.kld, 5),
            f(q.ppl, 4)
        );
    }
    if rows.is_empty() {
        return rows;
    }
    format!(
        "<h2>Prune + quantize beside quantize only, same budget</h2><table id=\"pruned\"><tr><th>prune + quantize</th>\
         <th>size (bytes)</th><th>KLD</th><th>PPL</th><th>quantize only</th><th>size (bytes)</th><th>KLD</th>\
         <th>PPL</th></tr>{rows}</table>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_has_the_parts() {
        let mut types = BTreeMap::new();
        types.insert("blk.0.attn_q.weight".to_string(), "Q4_0".to_string());
        types.insert("blk.1.attn_q.weight".to_string(), "Q8_0".to_string());
        types.insert("token_embd.weight".to_string(), "Q6_K".to_string());
        let p = |name: &str, kind: &str, b: u64, k: f64, front: bool| Point {
            name: name.into(),
            kind: kind.into(),
            file_bytes: b,
            bpw: 4.5,
            predicted_kld: Some(k * 0.9),
            kld: Some(k),
            ppl: Some(20.0 + k * 100.0),
            pareto: front,
            types: types.clone(),
            ..Default::default()
        };
        let mut sens = BTreeMap::new();
        sens.insert("blk.0.attn_q.weight".to_string(), BTreeMap::from([("Q4_0".to_string(), 1e-3)]));
        let d = ReportData {
            title: "t".into(),
            subtitle: "s".into(),
            points: vec![p("Q4_0", "quantize", 90_000_000, 0.05, false), p("fit", "fit", 89_000_000, 0.03, true)],
            sensitivity: sens,
            base_ppl: Some(20.0),
            rank_correlation: Some(0.95),
            ..Default::default()
        };
        let page = html(&d);
        assert!(page.contains("id=\"pareto_size_kld\"") && page.contains("id=\"sensitivity\""));
        assert!(page.contains("Tensor types: fit") && page.contains("0.950"));
        assert!(!page.contains("<script"));
        assert_eq!(plots(&d).len(), 4);
        // A search's objectives: a plot for every pair, energy columns saying "modelled".
        use crate::search::objective::Objective;
        let mut d = d;
        d.objectives = vec![Objective::Size, Objective::Kld, Objective::Tg, Objective::Energy];
        for (i, p) in d.points.iter_mut().enumerate() {
            p.tg_tokens_per_s = Some(50.0 + i as f64);
            p.energy_j_per_token = Some(0.05 - i as f64 * 0.01);
            p.co2_g = Some(0.004);
        }
        let names: Vec<String> = plots(&d).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.iter().filter(|n| n.starts_with("pair_")).count(), 6, "{names:?}");
        assert!(names.contains(&"pair_tg_energy.svg".to_string()));
        let page = html(&d);
        assert!(
            page.contains("J/token (modelled)") && page.contains("id=\"pair_kld_tg\""),
            "energy columns and pair plots"
        );
        assert!(!page.contains("id=\"pruned\""), "no pruned recipes, no pairing table");

        // A pruned recipe is paired with the plain recipe of the same budget.
        let mut d2 = d.clone();
        d2.points.push(p("fit-size-of-Q4_0", "fit", 88_000_000, 0.02, true));
        d2.points.push(p("prune-2L+fit-size-of-Q4_0", "prune + fit", 87_000_000, 0.25, false));
        let page = html(&d2);
        let table = &page[page.find("id=\"pruned\"").expect("pairing table")..];
        let row = &table[table.find("prune-2L+fit-size-of-Q4_0").unwrap()..];
        let row = &row[..row.find("</tr>").unwrap()];
        assert!(
            row.contains("87000000") && row.contains("0.25000") && row.contains("fit-size-of-Q4_0</td><td>88000000"),
            "{row}"
        );
    }
}
