//! `crunch fit`.

use super::runs::{file_sha256, Recorder};
use anyhow::{bail, Context, Result};
use crunch::fit::session::{EvalSettings, Session, SessionOptions};
use crunch::fit::{parse_size, FitPlan, Target};
use crunch::inspect::human_bytes;
use crunch::progress::TermProgress;
use crunch::sensitivity::{default_work_dir, Method, SensitivityOptions};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Options shared by `fit` and `search`: the text, calibration, evaluation and caches.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Text for calibration (its first half) and held-out evaluation (its second half),
    /// e.g. WikiText-2.
    #[arg(long, value_name = "FILE")]
    pub text: PathBuf,
    /// How tensors are quantized: rtn (plain rounding), imatrix (importance-weighted with
    /// activation statistics from the calibration text), gptq.
    #[arg(long, value_enum, default_value = "rtn")]
    pub method: Method,
    /// Calibration chunk length (tokens) for the sensitivity probes.
    #[arg(long, default_value_t = 128)]
    pub calib_ctx: usize,
    /// Calibration chunks for the sensitivity probes.
    #[arg(long, default_value_t = 2)]
    pub calib_chunks: usize,
    /// Layers measured together per tensor kind in the sensitivity probes.
    #[arg(long, default_value_t = 5)]
    pub band: usize,
    /// Candidate types (comma-separated; default: every llama.cpp type crunch writes from Q2_K up to F16).
    #[arg(long, value_delimiter = ',')]
    pub types: Vec<String>,
    /// Held-out evaluation chunk length (tokens).
    #[arg(long, default_value_t = 256)]
    pub eval_ctx: usize,
    /// Held-out evaluation chunks.
    #[arg(long, default_value_t = 8)]
    pub eval_chunks: usize,
    /// Where sensitivity profiles and base logits are cached (default: ~/.cache/crunch/fit).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Registry database (default: $CRUNCH_REGISTRY or ~/.local/share/crunch/registry.db).
    #[arg(long)]
    pub registry: Option<PathBuf>,
    /// Worker threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

impl ModelArgs {
    pub fn sensitivity(&self) -> SensitivityOptions {
        let mut s = SensitivityOptions {
            method: self.method,
            ctx: self.calib_ctx,
            chunks: self.calib_chunks,
            band: self.band,
            ..Default::default()
        };
        if !self.types.is_empty() {
            s.types = self.types.iter().map(|t| t.trim().to_uppercase()).collect();
        }
        s
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| {
            std::env::var_os("CRUNCH_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    std::env::var_os("HOME")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| PathBuf::from("."))
                        .join(".cache/crunch")
                })
                .join("fit")
        })
    }

    /// Open a session on `model` (profile from the cache or measured now).
    pub fn session(
        &self,
        model: &Path,
        reg: Option<&crunch_registry::Registry>,
        json: bool,
        cancel: &crunch::progress::Cancel,
    ) -> Result<Session> {
        if !self.text.is_file() {
            bail!("--text {}: no such file (fit needs text for calibration and evaluation)", self.text.display());
        }
        let sha = file_sha256(reg, model)?;
        let opts = SessionOptions {
            model: model.to_path_buf(),
            model_sha256: sha,
            text: self.text.clone(),
            sensitivity: self.sensitivity(),
            eval: EvalSettings { ctx: self.eval_ctx, chunks: self.eval_chunks },
            cache_dir: self.cache_dir(),
            work_dir: default_work_dir(),
        };
        let progress = TermProgress::new(self.quiet || json);
        Session::open(opts, &progress, cancel).with_context(|| format!("profiling {}", model.display()))
    }
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["max_size", "max_bpw", "max_kld", "max_ram"])))]
pub struct FitArgs {
    /// Input GGUF model (F32/F16/BF16 base).
    model: PathBuf,
    /// Output GGUF (not needed with --dry-run).
    output: Option<PathBuf>,
    /// Largest output file, e.g. 4GiB, 90MB, 95000000.
    #[arg(long, value_name = "SIZE")]
    max_size: Option<String>,
    /// Most bits per weight.
    #[arg(long, value_name = "BPW")]
    max_bpw: Option<f64>,
    /// Largest KL-divergence from the base on held-out text: the smallest model meeting it.
    #[arg(long, value_name = "KLD")]
    max_kld: Option<f64>,
    /// Most memory llama.cpp may use to run the model (weights + KV cache at --ctx + buffers).
    #[arg(long, value_name = "SIZE")]
    max_ram: Option<String>,
    /// Context length counted for --max-ram.
    #[arg(long, default_value_t = 4096)]
    ctx: usize,
    /// Print the plan; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Write the output but do not evaluate it.
    #[arg(long)]
    no_eval: bool,
    /// Print the plan as llama-quantize --tensor-type arguments.
    #[arg(long)]
    print_tensor_types: bool,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    common: ModelArgs,
}

fn target(a: &FitArgs) -> Result<Target> {
    Ok(if let Some(s) = &a.max_size {
        Target::MaxSize(parse_size(s, "--max-size")?)
    } else if let Some(b) = a.max_bpw {
        Target::MaxBpw(b)
    } else if let Some(k) = a.max_kld {
        Target::MaxKld(k)
    } else if let Some(s) = &a.max_ram {
        Target::MaxRam { bytes: parse_size(s, "--max-ram")?, ctx: a.ctx }
    } else {
        bail!("give one target: --max-size, --max-bpw, --max-kld or --max-ram")
    })
}

pub(crate) fn print_fit(fp: &FitPlan) {
    println!("{:<36} {:<8} {:>10} {:>12}", "tensor", "type", "size", "pred. KLD");
    for t in &fp.plan.tensors {
        if let Some(k) = fp.tensor_kld.get(&t.name) {
            println!("{:<36} {:<8} {:>10} {:>12.3e}", t.name, t.dst_type.name(), human_bytes(t.dst_bytes), k);
        }
    }
    let counts: Vec<String> = fp.plan.type_counts().iter().map(|(t, n)| format!("{t}: {n}")).collect();
    println!("types: {}", counts.join(", "));
    println!(
        "target {}: {} ({} bytes, {:.3} bpw), predicted KLD {:.5} (solver {}, gap to lower bound {:.2e})",
        fp.target,
        human_bytes(fp.file_bytes),
        fp.file_bytes,
        fp.bpw,
        fp.predicted_kld,
        fp.solver,
        fp.gap
    );
    if let Some(r) = &fp.ram {
        println!(
            "memory at ctx {}: weights {} + KV cache {} + buffers {} + overhead {} = {}",
            r.n_ctx,
            human_bytes(r.weights),
            human_bytes(r.kv_cache),
            human_bytes(r.compute),
            human_bytes(r.overhead),
            human_bytes(r.total)
        );
    }
}

pub fn run(a: FitArgs) -> Result<()> {
    super::set_threads(a.common.threads)?;
    let target = target(&a)?;
    let output = match (&a.output, a.dry_run) {
        (Some(o), _) => Some(o.clone()),
        (None, true) => None,
        (None, false) => bail!("give an OUTPUT file, or --dry-run to only print the plan"),
    };
    if let Some(o) = &output {
        if same_path(&a.model, o) {
            bail!("output {} is the input file; refusing to overwrite the input", o.display());
        }
    }
    let params = json!({ "target": target, "method": a.common.method, "sensitivity": a.common.sensitivity(),
                          "eval_ctx": a.common.eval_ctx, "eval_chunks": a.common.eval_chunks, "dry_run": a.dry_run });
    let mut rec = if a.dry_run {
        None
    } else {
        Some(Recorder::start(
            "fit",
            a.common.registry.as_deref(),
            Some(format!("fit {target}")),
            params,
            &[("model", &a.model), ("text", &a.common.text)],
        ))
    };
    let res = fit(&a, target, output.as_deref(), rec.as_mut());
    match rec {
        Some(r) => r.close(res, |m| m.clone()).map(|_| ()),
        None => res.map(|_| ()),
    }
}

fn fit(
    a: &FitArgs,
    target: Target,
    output: Option<&Path>,
    rec: Option<&mut Recorder>,
) -> Result<Vec<(&'static str, f64)>> {
    let cancel = super::ctrl_c_cancel();
    let mut session = a.common.session(&a.model, rec.as_ref().and_then(|r| r.registry()), a.json, &cancel)?;
    let progress = TermProgress::new(a.common.quiet || a.json);
    let mut fp = session.fit(target)?;
    if a.print_tensor_types {
        for arg in fp.tensor_type_args() {
            println!("{arg}");
        }
    }
    let Some(output) = output else {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&json!({ "fit": fp, "profile": profile_summary(&session) }))?);
        } else if !a.print_tensor_types {
            print_fit(&fp);
        }
        return Ok(Vec::new());
    };
    let mut report;
    let mut measured = None;
    let mut rounds = 0;
    loop {
        rounds += 1;
        report = session
            .write(&fp.plan, output, &progress, &cancel)
            .with_context(|| format!("writing {}", output.display()))?;
        if a.no_eval {
            break;
        }
        let m =
            session.evaluate(output, &progress, &cancel).with_context(|| format!("evaluating {}", output.display()))?;
        let miss = match target {
            Target::MaxKld(k) if m.kld > k && rounds < 4 => Some(k),
            _ => None,
        };
        measured = Some(m.clone());
        let Some(k) = miss else { break };
        // The prediction was optimistic: aim lower in proportion and try again.
        let aim = fp.predicted_kld * (k / m.kld) * 0.9;
        if !a.common.quiet && !a.json {
            eprintln!(
                "measured KLD {:.5} is above the target {k}; solving again for a predicted {aim:.5} (was {:.5})",
                m.kld, fp.predicted_kld
            );
        }
        let mut next = session.fit(Target::MaxKld(aim))?;
        next.target = target;
        fp = next;
    }
    let mut metrics: Vec<(&'static str, f64)> = vec![
        ("file_bytes", report.file_bytes as f64),
        ("bpw", fp.bpw),
        ("predicted_kld", fp.predicted_kld),
        ("solver_gap", fp.gap),
        ("quantize_seconds", report.seconds),
    ];
    if let Some(m) = &measured {
        metrics.extend([
            ("kld", m.kld),
            ("kld_err", m.kld_err),
            ("kld_p99", m.kld_p99),
            ("top1", m.top1),
            ("ppl", m.ppl),
            ("ppl_base", m.ppl_base),
            ("tokens_per_s", m.tokens_per_s),
        ]);
    }
    if let Some(r) = rec {
        r.output(output);
        let klds = fp.tensor_kld.clone();
        r.plan(&fp.plan, Some(&|n: &str| klds.get(n).copied()));
        r.data("fit", &serde_json::to_value(&fp)?);
        r.data("profile", &profile_summary(&session));
        if let Some(m) = &measured {
            r.data("measured", &serde_json::to_value(m)?);
        }
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "fit": fp, "result": report, "measured": measured,
                                                  "profile": profile_summary(&session) }))?
        );
    } else if !a.common.quiet {
        if !a.print_tensor_types {
            let counts: Vec<String> = fp.plan.type_counts().iter().map(|(t, n)| format!("{t}: {n}")).collect();
            println!("types: {}", counts.join(", "));
        }
        println!(
            "{} -> {}: {} ({} bytes, {:.3} bpw) for {}",
            a.model.display(),
            output.display(),
            human_bytes(report.file_bytes),
            report.file_bytes,
            fp.bpw,
            fp.target
        );
        match &measured {
            Some(m) => println!(
                "KLD on held-out text: predicted {:.5}, measured {:.5} +/- {:.5}; same top token {:.2}%; PPL {:.4} (base {:.4})",
                fp.predicted_kld,
                m.kld,
                m.kld_err,
                m.top1 * 100.0,
                m.ppl,
                m.ppl_base
            ),
            None => println!("KLD predicted {:.5} (not evaluated)", fp.predicted_kld),
        }
        println!("sha256 {}", report.sha256);
    }
    Ok(metrics)
}

pub(crate) fn profile_summary(s: &Session) -> serde_json::Value {
    json!({
        "path": s.profile_path,
        "cached": s.profile_cached,
        "seconds": s.profile.seconds,
        "options": s.profile.options,
        "groups": s.profile.groups,
    })
}

fn same_path(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}
