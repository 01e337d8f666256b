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
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["recipes", "grid", "space"])))]
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
    /// A product space to explore instead of listed recipes (YAML; docs/SEARCH.md).
    #[arg(long, value_name = "FILE.yaml", conflicts_with_all = ["recipes", "grid"])]
    space: Option<PathBuf>,
    /// grid (every point), random, nsga2 or tpe.
    #[arg(long, default_value = "grid")]
    strategy: String,
    /// Most trials (default: every point for grid, a third of the space otherwise).
    #[arg(long)]
    budget: Option<usize>,
    /// Seed of random, nsga2 and tpe.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Objectives, comma-separated: size, kld, ppl, top1, acc, pp, tg, ram, energy, co2.
    #[arg(long, value_delimiter = ',', default_value = "size,kld")]
    objectives: Vec<String>,
    /// Constraint: largest file (e.g. 90MiB).
    #[arg(long, value_name = "SIZE")]
    max_size: Option<String>,
    /// Constraint: largest measured KL-divergence.
    #[arg(long)]
    max_kld: Option<f64>,
    /// Constraint: largest multiple-choice accuracy drop below the base (0.05 = 5 points).
    #[arg(long)]
    max_acc_drop: Option<f64>,
    /// Constraint (latency): slowest generation, tokens/s.
    #[arg(long)]
    min_tg: Option<f64>,
    /// Constraint: slowest prompt processing, tokens/s.
    #[arg(long)]
    min_pp: Option<f64>,
    /// Carbon budget of the whole search, grams CO2.
    #[arg(long, value_name = "GRAMS")]
    max_co2: Option<f64>,
    /// Tokens generated per trial for generation speed and energy per token (0: skip).
    #[arg(long, default_value_t = crunch::job::MeasureOptions::default_tg())]
    tg_tokens: usize,
    /// Multiple-choice tasks (JSONL, as eval choice) scored on every candidate and the base.
    #[arg(long, value_name = "FILE.jsonl")]
    choice_tasks: Option<PathBuf>,
    #[arg(long)]
    choice_limit: Option<usize>,
    /// This CPU's package watts with every logical CPU busy (default: a table by CPU model).
    #[arg(long)]
    cpu_watts: Option<f64>,
    /// Grams CO2 per kWh: a number, a country code (FR, US, …) or world (default).
    #[arg(long)]
    grid_intensity: Option<String>,
    /// Run the trials on the Ray cluster at this address (e.g. 127.0.0.1:6379).
    #[arg(long, value_name = "ADDRESS")]
    ray: Option<String>,
    /// The Python with ray installed (default $CRUNCH_RAY_PYTHON, else python3).
    #[arg(long, requires = "ray")]
    ray_python: Option<PathBuf>,
    /// CPUs and threads of one trial on the cluster.
    #[arg(long, default_value_t = crunch::job::RayOptions::default_cpus())]
    ray_cpus_per_trial: usize,
    /// Attempts after a lost worker before a trial is marked failed.
    #[arg(long, default_value_t = crunch::job::RayOptions::default_retries())]
    ray_max_retries: u32,
    /// Replay a recorded search of the same space (run id): trials are read back, nothing is
    /// recorded, and the summary says how much of that search's front this strategy reached.
    #[arg(long, value_name = "RUN_ID")]
    replay: Option<i64>,
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
        space: None,
        space_file: a.space.clone(),
        strategy: a.strategy.clone(),
        budget: a.budget,
        seed: a.seed,
        objectives: a.objectives.clone(),
        constraints: crunch::search::objective::Constraints {
            max_size: match &a.max_size {
                Some(s) => Some(crunch::fit::parse_size(s, "--max-size").map_err(super::field_error)?),
                None => None,
            },
            max_kld: a.max_kld,
            max_acc_drop: a.max_acc_drop,
            min_tg: a.min_tg,
            min_pp: a.min_pp,
            max_co2_g: a.max_co2,
        },
        measure: crunch::job::MeasureOptions {
            tg_tokens: a.tg_tokens,
            choice_tasks: a.choice_tasks.clone(),
            choice_limit: a.choice_limit,
            cpu_watts: a.cpu_watts,
            grid_intensity: a.grid_intensity.clone(),
        },
        ray: a.ray.as_ref().map(|address| crunch::job::RayOptions {
            address: address.clone(),
            python: a.ray_python.clone(),
            crunch: None,
            cpus_per_trial: a.ray_cpus_per_trial,
            max_retries: a.ray_max_retries,
        }),
        trial_points: Vec::new(),
        replay: a.replay,
    });
    let quiet = a.common.quiet || a.json;
    let ctx = super::job_ctx(a.common.threads, TermProgress::shared(quiet), a.common.registry.as_deref())?;
    let Outcome::Search(o) = super::run_job(&job, &ctx).with_context(|| format!("searching {}", a.model.display()))?
    else {
        unreachable!("a search job has a search outcome")
    };
    let (cands, summary) = (&o.candidates, &o.summary);
    if a.json {
        super::print_json(&json!({ "candidates": cands, "summary": summary, "run_id": o.run_id }))?;
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
        let objs: Vec<&str> = summary.objectives.iter().map(|o| o.name()).collect();
        println!("Pareto front ({}): {}", objs.join(", "), summary.pareto.join(", "));
        if let Some(src) = &summary.energy_source {
            println!(
                "energy {} ({}): {:.1} J, {:.3} g CO2 at {} g/kWh over {} trials ({} failed), {:.0} s",
                src,
                summary.power_model.as_deref().unwrap_or(""),
                summary.energy_j,
                summary.co2_g,
                summary.grid_g_per_kwh,
                summary.n_candidates,
                summary.n_failed,
                summary.wall_seconds
            );
        }
        if let Some(r) = &summary.replay {
            println!(
                "replay of run {}: {} trials of {} recorded; hypervolume {:.4} of the recorded front's; front points found {}/{}{}",
                r.run_id,
                r.trials,
                r.recorded,
                r.hypervolume_ratio,
                r.front_found,
                r.front_size,
                r.trials_to_front.map(|n| format!(", all after {n} trials")).unwrap_or_default()
            );
        }
        if let Some(s) = &summary.stopped {
            println!("stopped early: {s}");
        }
        if let Some(id) = o.run_id {
            println!("recorded as run {id}: crunch report {id} -o report.html");
        }
    }
    Ok(())
}

fn print_table(cands: &[Candidate]) {
    let extra = cands.iter().any(|c| c.t.extra.is_some());
    print!(
        "{:<28} {:>10} {:>6} {:>10} {:>10} {:>9} {:>8} {:>9}",
        "recipe", "size", "bpw", "pred. KLD", "KLD", "PPL", "top1 %", "tok/s"
    );
    if extra {
        print!(" {:>8} {:>9} {:>9} {:>9}", "tg t/s", "J/token", "CO2 g", "peak MiB");
    }
    println!(" {:>7}", "front");
    for c in cands {
        let t = &c.t;
        if let Some(e) = &t.error {
            println!("{:<28} error: {e}", c.name);
            continue;
        }
        let (k, p, t1, s) = match &t.measured {
            Some(m) => (
                format!("{:.5}", m.kld),
                format!("{:.4}", m.ppl),
                format!("{:.2}", m.top1 * 100.0),
                format!("{:.1}", m.tokens_per_s),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        print!(
            "{:<28} {:>10} {:>6.3} {:>10.5} {:>10} {:>9} {:>8} {:>9}",
            c.name,
            human_bytes(t.file_bytes),
            t.bpw,
            t.predicted_kld,
            k,
            p,
            t1,
            s
        );
        if extra {
            match &t.extra {
                Some(x) => print!(
                    " {:>8.1} {:>9.4} {:>9.4} {:>9}",
                    x.tg_tokens_per_s,
                    x.energy_j_per_token,
                    x.co2_g,
                    x.peak_rss_bytes.map_or("-".into(), |b| format!("{:.0}", b as f64 / 1048576.0))
                ),
                None => print!(" {:>8} {:>9} {:>9} {:>9}", "-", "-", "-", "-"),
            }
        }
        let mark = match (c.pareto, c.pareto_size_kld) {
            (true, true) => "**",
            (true, false) => "*",
            (false, true) => "s",
            _ if c.violation > 0.0 => "x",
            _ => "",
        };
        println!(" {mark:>7}");
    }
}
