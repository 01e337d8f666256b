//! `crunch runs list|show|compare|export`: the registry's runs, printed.

use anyhow::{Context, Result};
use crunch::history;
use crunch::job::record::metric;
use crunch_registry::RunSummary;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct RunsArgs {
    /// Registry database (default: $CRUNCH_REGISTRY or ~/.local/share/crunch/registry.db).
    #[arg(long, global = true)]
    registry: Option<PathBuf>,
    #[command(subcommand)]
    command: RunsCommand,
}

#[derive(clap::Subcommand)]
enum RunsCommand {
    /// Recorded runs, newest first.
    List(ListArgs),
    /// Everything about one run.
    Show(ShowArgs),
    /// Runs side by side: metrics, sizes, and how their per-tensor types differ.
    Compare(CompareArgs),
    /// Every run with its metrics, as JSON or CSV.
    Export(ExportArgs),
}

#[derive(clap::Args)]
struct ListArgs {
    /// Only runs of this kind (quantize, fit, eval, search, convert…).
    #[arg(long)]
    kind: Option<String>,
    /// Only runs with this status (running, ok, failed).
    #[arg(long)]
    status: Option<String>,
    /// Only runs started by this run (a search's candidates).
    #[arg(long)]
    parent: Option<i64>,
    /// At most this many.
    #[arg(long, short = 'n')]
    limit: Option<usize>,
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    #[arg(long)]
    csv: bool,
}

#[derive(clap::Args)]
struct ShowArgs {
    /// Run id (default: the newest run).
    id: Option<i64>,
    #[arg(long)]
    json: bool,
    /// Also list every tensor's type.
    #[arg(long)]
    tensors: bool,
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Two or more run ids.
    #[arg(required = true, num_args = 2..)]
    ids: Vec<i64>,
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    #[arg(long)]
    csv: bool,
}

#[derive(clap::Args)]
struct ExportArgs {
    /// json or csv.
    #[arg(long, default_value = "json")]
    format: String,
    /// Write here instead of stdout.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
}

pub fn run(a: RunsArgs) -> Result<()> {
    let reg = history::open(a.registry.as_deref()).map_err(super::field_error)?;
    match a.command {
        RunsCommand::List(l) => {
            let f = history::filter(l.kind, l.status.as_deref(), l.parent, l.limit).map_err(super::field_error)?;
            let runs = history::list(&reg, &f)?;
            if l.json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else if l.csv {
                print!("{}", csv(&runs));
            } else {
                print!("{}", table(&runs));
            }
        }
        RunsCommand::Show(s) => {
            let r = history::get(&reg, s.id)?;
            if s.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", show(&r, s.tensors));
            }
        }
        RunsCommand::Compare(c) => {
            let recs = history::get_many(&reg, &c.ids)?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&recs)?);
            } else if c.csv {
                let s: Vec<RunSummary> = recs.iter().map(|r| r.summary.clone()).collect();
                print!("{}", csv(&s));
            } else {
                print!("{}", compare(&recs));
            }
        }
        RunsCommand::Export(e) => {
            let runs = history::list(&reg, &Default::default())?;
            let text = match e.format.as_str() {
                "json" => {
                    let ids: Vec<i64> = runs.iter().map(|r| r.id).collect();
                    serde_json::to_string_pretty(&history::get_many(&reg, &ids)?)? + "\n"
                }
                "csv" => csv(&runs),
                f => anyhow::bail!("--format {f:?}: expected json or csv"),
            };
            match e.output {
                Some(p) => crunch_core::output::write_small_atomic(&p, text.as_bytes())
                    .with_context(|| format!("writing {}", p.display()))?,
                None => print!("{text}"),
            }
        }
    }
    Ok(())
}

fn human(b: Option<u64>) -> String {
    b.map(crunch::inspect::human_bytes).unwrap_or_else(|| "-".into())
}

fn metric_cell(r: &RunSummary, k: &str, digits: usize) -> String {
    r.metrics.get(k).map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into())
}

/// The `runs list` table.
pub(crate) fn table(runs: &[RunSummary]) -> String {
    let mut s = format!(
        "{:>5} {:<8} {:<7} {:<19} {:>8} {:<28} {:>10} {:>6} {:>10} {:>9}\n",
        "id", "kind", "status", "started (UTC)", "seconds", "label", "size", "bpw", "kld", "ppl"
    );
    for r in runs {
        let label: String = r.label.clone().unwrap_or_default().chars().take(28).collect();
        s += &format!(
            "{:>5} {:<8} {:<7} {:<19} {:>8} {:<28} {:>10} {:>6} {:>10} {:>9}\n",
            r.id,
            r.kind,
            r.status.as_str(),
            crunch_registry::process::format_time(r.started_at),
            r.duration_s.map(|d| format!("{d:.1}")).unwrap_or_else(|| "-".into()),
            label,
            human(r.output_bytes.or(r.metrics.get(metric::FILE_BYTES).map(|v| *v as u64))),
            metric_cell(r, metric::BPW, 2),
            metric_cell(r, metric::KLD, 5),
            metric_cell(r, metric::PPL, 3),
        );
    }
    s
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One line per run: fixed columns, then every metric name any run has.
pub(crate) fn csv(runs: &[RunSummary]) -> String {
    let mut names: Vec<&String> = runs.iter().flat_map(|r| r.metrics.keys()).collect();
    names.sort();
    names.dedup();
    let mut s =
        String::from("id,kind,status,label,parent_id,started_utc,duration_s,output_path,output_bytes,peak_rss_bytes");
    for n in &names {
        s += ",";
        s += &csv_field(n);
    }
    s += "\n";
    for r in runs {
        let cols = [
            r.id.to_string(),
            r.kind.clone(),
            r.status.as_str().to_string(),
            r.label.clone().unwrap_or_default(),
            r.parent_id.map(|p| p.to_string()).unwrap_or_default(),
            crunch_registry::process::format_time(r.started_at),
            r.duration_s.map(|d| format!("{d:.3}")).unwrap_or_default(),
            r.output_path.clone().unwrap_or_default(),
            r.output_bytes.map(|b| b.to_string()).unwrap_or_default(),
            r.peak_rss_bytes.map(|b| b.to_string()).unwrap_or_default(),
        ];
        s += &cols.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",");
        for n in &names {
            s += ",";
            if let Some(v) = r.metrics.get(*n) {
                s += &v.to_string();
            }
        }
        s += "\n";
    }
    s
}

fn show(r: &crunch_registry::RunRecord, tensors: bool) -> String {
    let m = &r.summary;
    let mut s = format!("run {} ({}), {}\n", m.id, m.kind, m.status.as_str());
    if let Some(l) = &m.label {
        s += &format!("label:    {l}\n");
    }
    if let Some(p) = m.parent_id {
        s += &format!("parent:   run {p}\n");
    }
    s += &format!(
        "started:  {} UTC on {} (pid {}), crunch {}\n",
        crunch_registry::process::format_time(m.started_at),
        r.host,
        r.pid,
        r.crunch_version
    );
    if let Some(d) = m.duration_s {
        s += &format!("duration: {d:.2} s\n");
    }
    s += &format!("command:  {}\n", r.command.join(" "));
    for i in &r.inputs {
        s += &format!(
            "input:    {} {} ({}, sha256 {})\n",
            i.role,
            i.path,
            human(i.bytes),
            i.sha256.as_deref().unwrap_or("-")
        );
    }
    if let Some(o) = &r.output {
        s += &format!("output:   {} ({}, sha256 {})\n", o.path, human(o.bytes), o.sha256.as_deref().unwrap_or("-"));
    }
    if let Some(p) = m.peak_rss_bytes {
        s += &format!("peak RSS: {}\n", crunch::inspect::human_bytes(p));
    }
    if let Some(e) = &m.error {
        s += &format!("error:    {e}\n");
    }
    if !m.metrics.is_empty() {
        s += "metrics:\n";
        for (k, v) in &m.metrics {
            s += &format!("  {k:<20} {v}\n");
        }
    }
    if !r.params.is_null() {
        s += &format!("params:   {}\n", r.params);
    }
    if !r.tensors.is_empty() {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for t in &r.tensors {
            match counts.iter_mut().find(|(ty, _)| *ty == t.ty) {
                Some(c) => c.1 += 1,
                None => counts.push((t.ty.clone(), 1)),
            }
        }
        let c: Vec<String> = counts.iter().map(|(t, n)| format!("{t}: {n}")).collect();
        s += &format!("tensors:  {} [{}]\n", r.tensors.len(), c.join(", "));
        if tensors {
            for t in &r.tensors {
                let k = t.predicted_kld.map(|k| format!("  predicted KLD {k:.3e}")).unwrap_or_default();
                s += &format!("  {:<36} {:<8} {:>10}{k}\n", t.name, t.ty, crunch::inspect::human_bytes(t.bytes));
            }
        }
    }
    for k in r.data.keys() {
        s += &format!("data:     {k} (see --json)\n");
    }
    s
}

fn compare(recs: &[crunch_registry::RunRecord]) -> String {
    let mut names: Vec<&String> = recs.iter().flat_map(|r| r.summary.metrics.keys()).collect();
    names.sort();
    names.dedup();
    let mut s = format!("{:<20}", "");
    for r in recs {
        s += &format!(" {:>16}", format!("run {}", r.summary.id));
    }
    s += "\n";
    let mut row = |k: &str, f: &dyn Fn(&crunch_registry::RunRecord) -> String| {
        s += &format!("{k:<20}");
        for r in recs {
            s += &format!(" {:>16}", f(r));
        }
        s += "\n";
    };
    row("kind", &|r| r.summary.kind.clone());
    row("label", &|r| r.summary.label.clone().unwrap_or_default().chars().take(16).collect());
    row("status", &|r| r.summary.status.as_str().to_string());
    row("size", &|r| human(r.summary.output_bytes));
    for n in names {
        row(n, &|r| r.summary.metrics.get(n).map(|v| format!("{v:.6}")).unwrap_or_else(|| "-".into()));
    }
    if recs.len() >= 2 && recs.iter().all(|r| !r.tensors.is_empty()) {
        let a = &recs[0];
        for b in &recs[1..] {
            let diff = a
                .tensors
                .iter()
                .filter(|t| b.tensors.iter().find(|u| u.name == t.name).is_some_and(|u| u.ty != t.ty))
                .count();
            s += &format!("tensors typed differently in run {} and run {}: {diff}\n", a.summary.id, b.summary.id);
        }
    }
    s
}
