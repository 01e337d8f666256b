//! `crunch report`.

use anyhow::{bail, Context, Result};
use crunch::job::record::registry_path;
use crunch::report;
use crunch_registry::Registry;
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
    let d = report::collect(&reg, &a.runs)?;
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
