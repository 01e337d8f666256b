//! `crunch report`.

use super::runs::registry_path;
use anyhow::{bail, Context, Result};
use crunch::report::{self, Point, ReportData};
use crunch_registry::{Filter, Registry, RunRecord};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Runs to show: a search run brings all its candidates; fit / quantize / eval runs are one
    /// point each. Default: the newest search run.
    runs: Vec<i64>,
    /// The HTML page to write (self-contained: inline SVG, no scripts).
    #[arg(long, short = 'o', default_value = "report.html")]
    output: PathBuf,
    /// Also write each plot as an SVG file into this folder.
    #[arg(long, value_name = "DIR")]
    svg: Option<PathBuf>,
    /// Also write each plot as a PNG into this folder (rendered with headless Chromium).
    #[arg(long, value_name = "DIR")]
    png: Option<PathBuf>,
    /// Registry database (default: $CRUNCH_REGISTRY or ~/.local/share/crunch/registry.db).
    #[arg(long)]
    registry: Option<PathBuf>,
}

fn m(r: &RunRecord, k: &str) -> Option<f64> {
    r.summary.metrics.get(k).copied()
}

fn point_of(r: &RunRecord) -> Point {
    Point {
        name: r.summary.label.clone().unwrap_or_else(|| format!("run {}", r.summary.id)),
        kind: r.summary.kind.clone(),
        run_id: Some(r.summary.id),
        file_bytes: r.summary.output_bytes.or(m(r, "file_bytes").map(|v| v as u64)).unwrap_or(0),
        bpw: m(r, "bpw").unwrap_or(0.0),
        predicted_kld: m(r, "predicted_kld"),
        kld: m(r, "kld"),
        ppl: m(r, "ppl"),
        top1: m(r, "top1"),
        tokens_per_s: m(r, "tokens_per_s"),
        ram_bytes: m(r, "ram_bytes").map(|v| v as u64),
        pareto: false,
        types: r.tensors.iter().map(|t| (t.name.clone(), t.ty.clone())).collect(),
    }
}

/// Gather what the page shows from the registry.
pub(crate) fn collect(reg: &Registry, ids: &[i64]) -> Result<ReportData> {
    let ids: Vec<i64> = if ids.is_empty() {
        vec![reg.latest(Some("search"))?.context("no search run in the registry; give run ids")?]
    } else {
        ids.to_vec()
    };
    let mut d = ReportData { title: "crunch report".into(), ..Default::default() };
    let mut subtitle = Vec::new();
    for id in ids {
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
                            Some((c.get("name")?.as_str()?.to_string(), c.get("pareto_size_kld")?.as_bool()?))
                        })
                        .collect()
                })
                .unwrap_or_default();
            for c in children.iter().rev() {
                let full = reg.get(c.id)?;
                let mut p = point_of(&full);
                p.kind = if full.summary.kind == "fit" { "fit".into() } else { "preset".into() };
                p.pareto = fronts.get(&p.name).copied().unwrap_or(false);
                if full.summary.status == crunch_registry::RunStatus::Ok {
                    d.points.push(p);
                }
            }
            if let Some(s) = r.data.get("sensitivity") {
                d.sensitivity = serde_json::from_value(s.clone()).unwrap_or_default();
            }
            d.rank_correlation = m(&r, "kld_rank_correlation");
            let model = r.inputs.iter().find(|i| i.role == "model").map(|i| i.path.clone()).unwrap_or_default();
            subtitle.push(format!("search run {id} on {model}, {} candidates", children.len()));
        } else {
            d.points.push(point_of(&r));
            subtitle.push(format!("{} run {id}", r.summary.kind));
        }
    }
    d.base_ppl = None;
    for id in d.points.iter().filter_map(|p| p.run_id) {
        if let Some(b) = reg.get(id)?.summary.metrics.get("ppl_base") {
            d.base_ppl = Some(*b);
            break;
        }
    }
    if d.points.iter().all(|p| !p.pareto) {
        let pts: Vec<Vec<f64>> =
            d.points.iter().map(|p| vec![p.file_bytes as f64, p.kld.unwrap_or(f64::INFINITY)]).collect();
        for (p, f) in d.points.iter_mut().zip(crunch::search::pareto_front(&pts)) {
            p.pareto = f && p.kld.is_some();
        }
    }
    if d.rank_correlation.is_none() {
        let pm: Vec<(f64, f64)> = d.points.iter().filter_map(|p| Some((p.predicted_kld?, p.kld?))).collect();
        let (a, b): (Vec<f64>, Vec<f64>) = pm.into_iter().unzip();
        d.rank_correlation = crunch::search::spearman(&a, &b);
    }
    d.subtitle = subtitle.join("; ");
    Ok(d)
}

/// A Chromium binary, if one is installed.
pub(crate) fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CRUNCH_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Render an SVG or HTML file to a PNG with headless Chromium.
pub(crate) fn screenshot(page: &Path, png: &Path, width: u32, height: u32) -> Result<()> {
    let chrome = chromium().context("--png needs Chromium (apt-get install chromium), or use --svg")?;
    let url = format!("file://{}", std::path::absolute(page)?.display());
    let out = std::process::Command::new(&chrome)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg(format!("--screenshot={}", std::path::absolute(png)?.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(&url)
        .output()
        .with_context(|| format!("running {}", chrome.display()))?;
    if !png.is_file() {
        bail!("{} did not write {}: {}", chrome.display(), png.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn svg_size(svg: &str) -> (u32, u32) {
    let get = |k: &str| -> Option<u32> {
        let i = svg.find(&format!("{k}=\""))? + k.len() + 2;
        let j = svg[i..].find('"')? + i;
        svg[i..j].parse::<f64>().ok().map(|v| v.ceil() as u32)
    };
    (get("width").unwrap_or(900), get("height").unwrap_or(520))
}

pub fn run(a: ReportArgs) -> Result<()> {
    let path = registry_path(a.registry.as_deref()).context("the registry is turned off (CRUNCH_REGISTRY=off)")?;
    let reg = Registry::open(&path).with_context(|| format!("opening the registry {}", path.display()))?;
    let d = collect(&reg, &a.runs)?;
    if d.points.is_empty() {
        bail!("the runs given hold no finished models to report");
    }
    let html = report::html(&d);
    crunch_core::output::write_small_atomic(&a.output, html.as_bytes())
        .with_context(|| format!("writing {}", a.output.display()))?;
    println!("wrote {} ({} models)", a.output.display(), d.points.len());
    let plots = report::plots(&d);
    for dir in [&a.svg, &a.png].into_iter().flatten() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for (name, svg) in &plots {
        let svg_path = match &a.svg {
            Some(dir) => dir.join(name),
            None => std::env::temp_dir().join(format!("crunch-report-{}-{name}", std::process::id())),
        };
        if a.svg.is_some() || a.png.is_some() {
            crunch_core::output::write_small_atomic(&svg_path, svg.as_bytes())
                .with_context(|| format!("writing {}", svg_path.display()))?;
        }
        if let Some(dir) = &a.png {
            let png = dir.join(name.replace(".svg", ".png"));
            let (w, h) = svg_size(svg);
            screenshot(&svg_path, &png, w, h)?;
            println!("wrote {}", png.display());
        }
        if a.svg.is_none() {
            let _ = std::fs::remove_file(&svg_path);
            let _ = std::fs::remove_file(crunch_core::output::sidecar_path(&svg_path));
        } else {
            println!("wrote {}", svg_path.display());
        }
    }
    Ok(())
}
