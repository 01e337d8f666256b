//! The registry's history as every front end shows it: runs listed, shown and compared, and the
//! HTML report written. `crunch runs` / `crunch report` and the server's `/v1/runs` / `/v1/report`
//! call these, so the CLI never opens the registry itself and both choose the same runs.

use crate::error::{Error, Result};
use crate::job::record::registry_path;
use crate::report;
use crunch_registry::{Filter, Registry, RunRecord, RunStatus, RunSummary};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Open the registry a front end names (`None`: `$CRUNCH_REGISTRY`, else the default path).
///
/// # Errors
/// The registry is turned off (`CRUNCH_REGISTRY=off`) or cannot be opened (naming its path).
pub fn open(flag: Option<&Path>) -> Result<Registry> {
    let path = registry_path(flag)
        .ok_or_else(|| Error::field("registry", "the registry is turned off (CRUNCH_REGISTRY=off)"))?;
    Registry::open(&path).map_err(|e| Error::Invalid(format!("opening the registry {}: {e}", path.display())))
}

/// A run status as written: `running`, `ok` or `failed`.
///
/// # Errors
/// Anything else, as a `status` field error.
pub fn parse_status(s: &str) -> Result<RunStatus> {
    match s {
        "running" => Ok(RunStatus::Running),
        "ok" => Ok(RunStatus::Ok),
        "failed" => Ok(RunStatus::Failed),
        o => Err(Error::field("status", format!("unknown status {o:?} (running, ok, failed)"))),
    }
}

/// The filter of a run listing.
///
/// # Errors
/// An unknown status.
pub fn filter(kind: Option<String>, status: Option<&str>, parent: Option<i64>, limit: Option<usize>) -> Result<Filter> {
    Ok(Filter { kind, status: status.map(parse_status).transpose()?, parent, limit })
}

/// Runs matching `f`, newest first.
///
/// # Errors
/// Registry errors.
pub fn list(reg: &Registry, f: &Filter) -> Result<Vec<RunSummary>> {
    Ok(reg.list(f)?)
}

/// Everything about run `id`, or about the newest run when `id` is `None`.
///
/// # Errors
/// No such run, an empty registry, registry errors.
pub fn get(reg: &Registry, id: Option<i64>) -> Result<RunRecord> {
    let id = match id {
        Some(id) => id,
        None => reg.latest(None)?.ok_or_else(|| Error::Invalid("the registry holds no runs".into()))?,
    };
    Ok(reg.get(id)?)
}

/// Everything about each of `ids`, in order.
///
/// # Errors
/// A run that does not exist, registry errors.
pub fn get_many(reg: &Registry, ids: &[i64]) -> Result<Vec<RunRecord>> {
    ids.iter().map(|&id| Ok(reg.get(id)?)).collect()
}

/// Runs a report shows when none are named and there is no search run.
pub const RECENT_RUNS: usize = 100;

/// The report's runs: `ids` if given; else the newest search run (which brings its candidates);
/// else the newest finished runs that wrote a model (oldest first). Empty when there are none.
///
/// # Errors
/// Registry errors.
pub fn report_runs(reg: &Registry, ids: &[i64]) -> Result<Vec<i64>> {
    if !ids.is_empty() {
        return Ok(ids.to_vec());
    }
    if let Some(search) = reg.latest(Some("search"))? {
        return Ok(vec![search]);
    }
    let recent = reg.list(&Filter { status: Some(RunStatus::Ok), limit: Some(RECENT_RUNS), ..Default::default() })?;
    Ok(recent
        .iter()
        .filter(|r| r.output_bytes.unwrap_or(0) > 0 || r.metrics.contains_key(crate::job::record::metric::FILE_BYTES))
        .map(|r| r.id)
        .rev()
        .collect())
}

/// The report's data for `ids` (see [`report_runs`] for the default).
///
/// # Errors
/// A run that does not exist, registry errors.
pub fn report_data(reg: &Registry, ids: &[i64]) -> Result<report::ReportData> {
    let ids = report_runs(reg, ids)?;
    if ids.is_empty() {
        return Ok(report::ReportData {
            title: "crunch report".into(),
            subtitle: "no finished runs in the registry yet".into(),
            ..Default::default()
        });
    }
    report::collect(reg, &ids)
}

/// What [`write_report`] wrote.
#[derive(Clone, Debug, Serialize)]
pub struct WrittenReport {
    pub html: PathBuf,
    pub models: usize,
    /// Plot files written (SVG and PNG).
    pub plots: Vec<PathBuf>,
}

/// Write the HTML report of `ids` to `output` (atomically), and each plot as SVG into `svg` and
/// as PNG into `png` (rendered by headless Chromium) when asked.
///
/// # Errors
/// No finished models among the runs, registry and I/O errors, Chromium missing or failing.
pub fn write_report(
    reg: &Registry,
    ids: &[i64],
    output: &Path,
    svg: Option<&Path>,
    png: Option<&Path>,
) -> Result<WrittenReport> {
    let d = report_data(reg, ids)?;
    if d.points.is_empty() {
        return Err(Error::Invalid("the runs given hold no finished models to report".into()));
    }
    crunch_core::output::write_small_atomic(output, report::html(&d).as_bytes()).map_err(|e| Error::io(output, e))?;
    let mut plots = Vec::new();
    for dir in [svg, png].into_iter().flatten() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    for (name, text) in &report::plots(&d) {
        let svg_path = match svg {
            Some(dir) => dir.join(name),
            None => std::env::temp_dir().join(format!("crunch-report-{}-{name}", std::process::id())),
        };
        if svg.is_some() || png.is_some() {
            crunch_core::output::write_small_atomic(&svg_path, text.as_bytes()).map_err(|e| Error::io(&svg_path, e))?;
        }
        let rendered = match png {
            Some(dir) => {
                let p = dir.join(name.replace(".svg", ".png"));
                let (w, h) = report::svg_size(text);
                report::screenshot(&svg_path, &p, w, h).map(|()| Some(p))
            }
            None => Ok(None),
        };
        if svg.is_none() {
            let _ = std::fs::remove_file(&svg_path);
            let _ = std::fs::remove_file(crunch_core::output::sidecar_path(&svg_path));
        } else {
            plots.push(svg_path);
        }
        plots.extend(rendered?);
    }
    Ok(WrittenReport { html: output.to_path_buf(), models: d.points.len(), plots })
}
