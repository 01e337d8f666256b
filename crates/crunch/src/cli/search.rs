//! `crunch search`.

use super::fit::ModelArgs;
use super::runs::Recorder;
use anyhow::{bail, Context, Result};
use crunch::fit::ram;
use crunch::inspect::human_bytes;
use crunch::progress::{NoProgress, TermProgress};
use crunch::search::recipe::{self, Recipe};
use crunch::search::{self, Candidate};
use crunch::sensitivity::Method;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["recipes", "grid"])))]
pub struct SearchArgs {
    /// Input GGUF model (F32/F16/BF16 base).
    model: PathBuf,
    /// YAML recipe file (schema: docs/RECIPES.md).
    #[arg(long, value_name = "FILE.yaml")]
    recipes: Option<PathBuf>,
    /// KEY=V1,V2,… (repeatable): preset=Q4_0,Q4_K_M  max-bpw=4.5,5  max-size=90MB  max-kld=0.02  max-ram=1GiB.
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

fn load_recipes(a: &SearchArgs) -> Result<Vec<Recipe>> {
    let mut out = Vec::new();
    if let Some(p) = &a.recipes {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading recipes {}", p.display()))?;
        out.extend(recipe::parse(&text, &p.display().to_string())?);
    }
    if !a.grid.is_empty() {
        for r in recipe::grid(&a.grid, &a.grid_methods)? {
            if out.iter().any(|o: &Recipe| o.name == r.name) {
                bail!("--grid: recipe {:?} is already in the recipe file", r.name);
            }
            out.push(r);
        }
    }
    if out.is_empty() {
        bail!("no recipes to search");
    }
    Ok(out)
}

pub fn run(a: SearchArgs) -> Result<()> {
    super::set_threads(a.common.threads)?;
    let recipes = load_recipes(&a)?;
    let mut inputs: Vec<(&str, &std::path::Path)> = vec![("model", &a.model), ("text", &a.common.text)];
    if let Some(r) = &a.recipes {
        inputs.push(("recipes", r));
    }
    let params = json!({ "recipes": recipes, "sensitivity": a.common.sensitivity(), "eval_ctx": a.common.eval_ctx,
                          "eval_chunks": a.common.eval_chunks, "ctx": a.ctx, "dry_run": a.dry_run });
    let rec = Recorder::start(
        "search",
        a.common.registry.as_deref(),
        Some(format!("search of {} recipes", recipes.len())),
        params,
        &inputs,
    );
    let res = search(&a, &recipes, &rec);
    rec.close(res, |s| s.clone())?;
    Ok(())
}

fn search(a: &SearchArgs, recipes: &[Recipe], parent: &Recorder) -> Result<Vec<(&'static str, f64)>> {
    let cancel = super::ctrl_c_cancel();
    let quiet = a.common.quiet || a.json;
    let progress = TermProgress::new(quiet);
    let tmp;
    let out_dir = match &a.out_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = crunch::sensitivity::default_work_dir().join(format!("crunch-search-{}", std::process::id()));
            std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            tmp.clone()
        }
    };
    let mut sessions: BTreeMap<&'static str, crunch::fit::session::Session> = BTreeMap::new();
    let mut cands: Vec<Candidate> = Vec::new();
    for (i, r) in recipes.iter().enumerate() {
        if cancel.is_cancelled() {
            bail!("interrupted");
        }
        if !sessions.contains_key(r.method.name()) {
            let mut args = a.common.clone();
            args.method = r.method;
            let s = args.session(&a.model, parent.registry(), a.json, &cancel)?;
            sessions.insert(r.method.name(), s);
        }
        let session = sessions.get_mut(r.method.name()).expect("inserted above");
        if !quiet {
            eprintln!("[{}/{}] {}", i + 1, recipes.len(), r.name);
        }
        let kind = match r.kind {
            search::recipe::RecipeKind::Fit(_) | search::recipe::RecipeKind::FitSizeOf { .. } => "fit",
            search::recipe::RecipeKind::Preset { .. } => "quantize",
        };
        let mut c = Candidate {
            name: r.name.clone(),
            recipe: r.clone(),
            file_bytes: 0,
            bpw: 0.0,
            predicted_kld: f64::NAN,
            measured: None,
            ram: None,
            quantize_seconds: 0.0,
            output: None,
            run_id: None,
            error: None,
            pareto: false,
            pareto_size_kld: false,
            types: BTreeMap::new(),
            tensor_kld: BTreeMap::new(),
        };
        let planned = match search::plan_recipe(session, r) {
            Ok(p) => p,
            Err(e) => {
                if !quiet {
                    eprintln!("  {}: {e}", r.name);
                }
                c.error = Some(e.to_string());
                cands.push(c);
                continue;
            }
        };
        c.file_bytes = crunch::fit::file_size(&session.file, &planned.plan)?;
        c.bpw = planned.plan.bpw();
        c.predicted_kld = planned.predicted_kld;
        c.tensor_kld = planned.tensor_kld.clone();
        c.types = planned.plan.tensors.iter().map(|t| (t.name.clone(), t.dst_type.name().to_string())).collect();
        c.ram = ram::estimate(session.file.metadata(), c.file_bytes, a.ctx).ok();
        if a.dry_run {
            cands.push(c);
            continue;
        }
        let mut child = Recorder::start_child(
            kind,
            a.common.registry.as_deref(),
            Some(r.name.clone()),
            json!({ "recipe": r }),
            &[("model", &a.model)],
            parent.id(),
        );
        let path = out_dir.join(format!("{}.gguf", sanitize(&r.name)));
        let res = (|| -> Result<()> {
            let rep = session.write(&planned.plan, &path, &NoProgress, &cancel)?;
            c.quantize_seconds = rep.seconds;
            c.file_bytes = rep.file_bytes;
            child.output(&path);
            let klds = planned.tensor_kld.clone();
            child.plan(&planned.plan, Some(&|n: &str| klds.get(n).copied()));
            if let Some(fp) = &planned.fit {
                child.data("fit", &serde_json::to_value(fp)?);
            }
            let m = session.evaluate(&path, &progress, &cancel)?;
            c.measured = Some(m);
            Ok(())
        })();
        if a.out_dir.is_none() {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(crunch_core::output::sidecar_path(&path));
        } else {
            c.output = Some(path.display().to_string());
        }
        match res {
            Ok(()) => {
                let m = c.measured.clone().expect("set on success");
                if !quiet {
                    eprintln!(
                        "  {} ({:.3} bpw): predicted KLD {:.5}, measured {:.5}, PPL {:.4}, {:.1} tok/s",
                        human_bytes(c.file_bytes),
                        c.bpw,
                        c.predicted_kld,
                        m.kld,
                        m.ppl,
                        m.tokens_per_s
                    );
                }
                child.data("measured", &serde_json::to_value(&m)?);
                let mut metrics = vec![
                    ("file_bytes", c.file_bytes as f64),
                    ("bpw", c.bpw),
                    ("predicted_kld", c.predicted_kld),
                    ("kld", m.kld),
                    ("kld_err", m.kld_err),
                    ("kld_p99", m.kld_p99),
                    ("top1", m.top1),
                    ("ppl", m.ppl),
                    ("ppl_base", m.ppl_base),
                    ("tokens_per_s", m.tokens_per_s),
                    ("quantize_seconds", c.quantize_seconds),
                ];
                if let Some(r) = c.ram {
                    metrics.push(("ram_bytes", r.total as f64));
                }
                c.run_id = child.finish(&metrics);
            }
            Err(e) => {
                if !quiet {
                    eprintln!("  {}: {e:#}", r.name);
                }
                c.error = Some(format!("{e:#}"));
                child.fail(&format!("{e:#}"));
            }
        }
        cands.push(c);
    }
    if a.out_dir.is_none() {
        let _ = std::fs::remove_dir(&out_dir);
    }
    search::mark_fronts(&mut cands);
    let summary = search::summarize(&cands);
    // What the report needs: candidates, and the sensitivity of every tensor at every type.
    parent.data("candidates", &serde_json::to_value(&cands)?);
    parent.data("summary", &serde_json::to_value(&summary)?);
    if let Some(s) = sessions.values().next() {
        let sens: BTreeMap<&str, BTreeMap<&str, f64>> = s
            .profile
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.choices.iter().map(|c| (c.ty.name(), c.kld)).collect()))
            .collect();
        parent.data("sensitivity", &serde_json::to_value(&sens)?);
        parent.data("profile", &super::fit::profile_summary(s));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json!({ "candidates": cands, "summary": summary }))?);
    } else {
        print_table(&cands);
        match summary.kld_rank_correlation {
            Some(r) => println!(
                "rank correlation of predicted and measured KLD: {r:.3} over {} candidates",
                summary.n_evaluated
            ),
            None if a.dry_run => {}
            None => println!("rank correlation: too few evaluated candidates"),
        }
        println!("Pareto front (size vs KLD): {}", summary.front.join(", "));
        if let Some(id) = parent.id() {
            println!("recorded as run {id}: crunch report {id} -o report.html");
        }
    }
    let mut m = vec![("n_candidates", summary.n_candidates as f64), ("n_evaluated", summary.n_evaluated as f64)];
    if let Some(r) = summary.kld_rank_correlation {
        m.push(("kld_rank_correlation", r));
    }
    Ok(m)
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' }).collect()
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
