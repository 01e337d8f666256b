//! `crunch search`.

use super::fit::ModelArgs;
use super::progress::TermProgress;
use anyhow::{Context, Result};
use crunch::inspect::human_bytes;
use crunch::job::{Job, Outcome, SearchJob};
use crunch::search::Candidate;
use crunch::sensitivity::Method;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["recipes", "grid"])))]
pub struct SearchArgs {
    /// Input GGUF model (F32/F16/BF16 base).
    model: PathBuf,
    /// YAML recipe file (schema: docs/RECIPES.md).
    #[arg(long, value_name = "FILE.yaml")]
    recipes: Option<PathBuf>,
    /// KEY=V1,V2,… (repeatable): preset=Q4_0,Q4_K_M  max-bpw=4.5,5  max-size=90MB  max-kld=0.02  max-ram=1GiB  min-cosine=0.999 (encoders).
    #[arg(long, value_name = "KEY=VALUES")]
    grid: Vec<String>,
    /// Methods each grid entry is tried with (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "rtn")]
    grid_methods: Vec<Method>,
    /// Keep the candidate files here (default: written to a temp folder and removed after evaluation).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Context length for the memory estimate of each candidate.
    #[arg(long, default_value_t = 4096)]
    ctx: usize,
    /// Plan every recipe and print sizes and predicted KLD; write and evaluate nothing.
    #[arg(long)]
    dry_run: bool,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    common: ModelArgs,
}

pub fn run(a: SearchArgs) -> Result<()> {
    let job = Job::Search(SearchJob {
        model: a.model.clone(),
        recipes_file: a.recipes.clone(),
        recipes: None,
        grid: a.grid.clone(),
        grid_methods: a.grid_methods.iter().map(|m| m.name().to_string()).collect(),
        out_dir: a.out_dir.clone(),
        ram_ctx: a.ctx,
        dry_run: a.dry_run,
        settings: a.common.settings(),
    });
    let quiet = a.common.quiet || a.json;
    let ctx = super::job_ctx(a.common.threads, TermProgress::shared(quiet), a.common.registry.as_deref())?;
    let Outcome::Search(o) = super::run_job(&job, &ctx).with_context(|| format!("searching {}", a.model.display()))?
    else {
        unreachable!("a search job has a search outcome")
    };
    let (cands, summary) = (&o.candidates, &o.summary);
    if a.json {
        super::print_json(&json!({ "candidates": cands, "summary": summary }))?;
    } else {
        print_table(cands);
        match summary.kld_rank_correlation {
            Some(r) => println!(
                "rank correlation of predicted and measured KLD: {r:.3} over {} candidates",
                summary.n_evaluated
            ),
            None if a.dry_run => {}
            None => println!("rank correlation: too few evaluated candidates"),
        }
        println!("Pareto front (size vs KLD): {}", summary.front.join(", "));
        if let Some(id) = o.run_id {
            println!("recorded as run {id}: crunch report {id} -o report.html");
        }
    }
    Ok(())
}

fn print_table(cands: &[Candidate]) {
    println!(
        "{:<28} {:>10} {:>6} {:>10} {:>10} {:>9} {:>8} {:>9} {:>7}",
        "recipe", "size", "bpw", "pred. KLD", "KLD", "PPL", "top1 %", "tok/s", "front"
    );
    for c in cands {
        if let Some(e) = &c.error {
            println!("{:<28} error: {e}", c.name);
            continue;
        }
        let (k, p, t, s) = match &c.measured {
            Some(m) => (
                format!("{:.5}", m.kld),
                format!("{:.4}", m.ppl),
                format!("{:.2}", m.top1 * 100.0),
                format!("{:.1}", m.tokens_per_s),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<28} {:>10} {:>6.3} {:>10.5} {:>10} {:>9} {:>8} {:>9} {:>7}",
            c.name,
            human_bytes(c.file_bytes),
            c.bpw,
            c.predicted_kld,
            k,
            p,
            t,
            s,
            if c.pareto_size_kld { "*" } else { "" }
        );
    }
}
