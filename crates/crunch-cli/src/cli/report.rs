//! `crunch report`.

use anyhow::{Context, Result};
use crunch::history;
use std::path::PathBuf;

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

pub fn run(a: ReportArgs) -> Result<()> {
    let reg = history::open(a.registry.as_deref()).map_err(super::field_error)?;
    let w = history::write_report(&reg, &a.runs, &a.output, a.svg.as_deref(), a.png.as_deref())
        .map_err(super::field_error)
        .context("writing the report")?;
    println!("wrote {} ({} models)", w.html.display(), w.models);
    for p in &w.plots {
        println!("wrote {}", p.display());
    }
    Ok(())
}
