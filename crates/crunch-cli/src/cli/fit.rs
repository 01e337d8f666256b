//! `crunch fit`.

use super::progress::TermProgress;
use anyhow::{Context, Result};
use crunch::calibrate::structured::StructuredOptions;
use crunch::fit::FitPlan;
use crunch::inspect::human_bytes;
use crunch::job::{FitJob, FitSettings, Job, Outcome, SizeSpec};
use crunch::lowrank::CorrectionSpec;
use crunch::sensitivity::{Method, Objective};
use serde_json::json;
use std::path::PathBuf;

/// Options shared by `fit` and `search`: the text, calibration, evaluation and caches.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Text for calibration (its first half) and held-out evaluation (its second half),
    /// e.g. WikiText-2.
    #[arg(long, value_name = "FILE")]
    pub text: PathBuf,
    /// How tensors are quantized: rtn (plain rounding), imatrix (importance-weighted with
    /// activation statistics from the calibration text), gptq.
    #[arg(long, default_value = "rtn")]
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
    /// The job settings these arguments give.
    pub fn settings(&self) -> FitSettings {
        FitSettings {
            text: self.text.clone(),
            method: self.method,
            calib_ctx: self.calib_ctx,
            calib_chunks: self.calib_chunks,
            band: self.band,
            types: self.types.clone(),
            eval_ctx: self.eval_ctx,
            eval_chunks: self.eval_chunks,
            cache_dir: self.cache_dir.clone(),
        }
    }
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["max_size", "max_bpw", "max_kld", "max_ram", "min_cosine"])))]
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
    /// For a sentence encoder (BERT): the smallest mean cosine similarity of its embeddings to
    /// the base's on held-out lines: the smallest model meeting it.
    #[arg(long, value_name = "COSINE")]
    min_cosine: Option<f64>,
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
    /// Prune first: remove this many blocks (chosen by --prune-layer-score on the calibration half).
    #[arg(long, value_name = "N", help_heading = "Structured pruning before the fit")]
    prune_layers: Option<usize>,
    /// How --prune-layers chooses: angular or influence.
    #[arg(long, value_name = "SCORE", help_heading = "Structured pruning before the fit")]
    prune_layer_score: Option<String>,
    /// Prune first: keep this fraction of every block's FFN channels, in (0, 1).
    #[arg(long, value_name = "FRACTION", help_heading = "Structured pruning before the fit")]
    prune_ffn: Option<f64>,
    /// Prune first: drop this many KV groups from every block.
    #[arg(long, value_name = "N", help_heading = "Structured pruning before the fit")]
    prune_drop_kv_groups: Option<usize>,
    /// Calibration chunks of 512 tokens for the pruning (from the first half of --text).
    #[arg(long, value_name = "N", default_value_t = 64, help_heading = "Structured pruning before the fit")]
    prune_chunks: usize,
    /// Ship a low-rank correction beside the model: this rank on every linear weight of the
    /// blocks (OUTPUT.lora.gguf, a LoRA adapter llama.cpp loads with --lora). Its bytes count
    /// against the target.
    #[arg(long, value_name = "R", conflicts_with = "correction_budget", help_heading = "Low-rank correction")]
    correction_rank: Option<usize>,
    /// Or: this many bytes of correction (4MiB), spread by what each rank buys.
    #[arg(long, value_name = "BYTES", help_heading = "Low-rank correction")]
    correction_budget: Option<String>,
    /// The correction adapter's tensor type: f32, f16, bf16, q8_0.
    #[arg(long, value_name = "TYPE", default_value = "f16", help_heading = "Low-rank correction")]
    correction_type: String,
    /// Calibration chunks for the correction (from the first half of --text).
    #[arg(long, value_name = "N", default_value_t = 32, help_heading = "Low-rank correction")]
    correction_chunks: usize,
    /// Tokens per calibration chunk for the correction.
    #[arg(long, value_name = "N", default_value_t = 512, help_heading = "Low-rank correction")]
    correction_ctx: usize,
    #[command(flatten)]
    common: ModelArgs,
}

/// What the predicted figures of a plan are called.
fn damage_name(fp: &FitPlan) -> &'static str {
    match fp.objective {
        Objective::Kld => "KLD",
        Objective::EmbedDamage => "1-cos",
    }
}

pub(crate) fn print_fit(fp: &FitPlan) {
    println!("{:<36} {:<8} {:>10} {:>12}", "tensor", "type", "size", format!("pred. {}", damage_name(fp)));
    for t in &fp.plan.tensors {
        if let Some(k) = fp.tensor_kld.get(&t.name) {
            println!("{:<36} {:<8} {:>10} {:>12.3e}", t.name, t.dst_type.name(), human_bytes(t.dst_bytes), k);
        }
    }
    let counts: Vec<String> = fp.plan.type_counts().iter().map(|(t, n)| format!("{t}: {n}")).collect();
    println!("types: {}", counts.join(", "));
    println!(
        "target {}: {} ({} bytes, {:.3} bpw), predicted {} {:.5} (solver {}, gap to lower bound {:.2e})",
        fp.target,
        human_bytes(fp.file_bytes),
        fp.file_bytes,
        fp.bpw,
        damage_name(fp),
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
    let size = |s: &Option<String>| s.clone().map(SizeSpec::Text);
    let job = Job::Fit(FitJob {
        model: a.model.clone(),
        output: a.output.clone(),
        max_size: size(&a.max_size),
        max_bpw: a.max_bpw,
        max_kld: a.max_kld,
        min_cosine: a.min_cosine,
        max_ram: size(&a.max_ram),
        ram_ctx: a.ctx,
        dry_run: a.dry_run,
        evaluate: !a.no_eval,
        settings: a.common.settings(),
        prune: (a.prune_layers.is_some() || a.prune_ffn.is_some() || a.prune_drop_kv_groups.is_some()).then(|| {
            StructuredOptions {
                layers: a.prune_layers,
                layer_score: a.prune_layer_score.clone(),
                ffn: a.prune_ffn,
                drop_kv_groups: a.prune_drop_kv_groups,
                chunks: Some(a.prune_chunks),
                ..Default::default()
            }
        }),
        correction: (a.correction_rank.is_some() || a.correction_budget.is_some()).then(|| {
            Box::new(CorrectionSpec {
                rank: a.correction_rank,
                budget: a.correction_budget.clone(),
                adapter_type: Some(a.correction_type.clone()),
                ctx: Some(a.correction_ctx),
                chunks: Some(a.correction_chunks),
                ..Default::default()
            })
        }),
    });
    let quiet = a.common.quiet || a.json;
    let ctx = super::job_ctx(a.common.threads, TermProgress::shared(quiet), a.common.registry.as_deref())?;
    let Outcome::Fit(o) = super::run_job(&job, &ctx).with_context(|| format!("fitting {}", a.model.display()))? else {
        unreachable!("a fit job has a fit outcome")
    };
    let fp = &o.fit;
    if a.print_tensor_types {
        for arg in fp.tensor_type_args() {
            println!("{arg}");
        }
    }
    let (Some(report), Some(output)) = (&o.result, &a.output) else {
        if a.json {
            super::print_json(&json!({ "fit": fp, "profile": o.profile }))?;
        } else if !a.print_tensor_types {
            print_fit(fp);
        }
        return Ok(());
    };
    if a.json {
        super::print_json(&json!({ "fit": fp, "result": report, "measured": o.measured, "profile": o.profile,
                                   "adapter": o.adapter, "correction": o.correction, "total_bytes": o.total_bytes }))?;
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
        if let (Some(p), Some(c)) = (&o.adapter, &o.correction) {
            println!(
                "correction {}: {} ({} tensors), model + correction {} ({} bytes)",
                p.display(),
                human_bytes(c.file_bytes),
                c.tensors.iter().filter(|t| t.rank > 0).count(),
                human_bytes(o.total_bytes.unwrap_or(report.file_bytes)),
                o.total_bytes.unwrap_or(report.file_bytes)
            );
        }
        match &o.measured {
            Some(m) if m.cosine.is_some() => {
                let c = m.cosine.as_ref().expect("matched");
                println!(
                    "embeddings on held-out lines ({}): cosine mean {:.6} (predicted {:.6}), 1st percentile {:.6}, min {:.6}",
                    m.n_positions,
                    c.mean,
                    1.0 - fp.predicted_kld,
                    c.p1,
                    c.min
                )
            }
            Some(m) => println!(
                "KLD on held-out text: predicted {:.5}, measured {:.5} +/- {:.5}; same top token {:.2}%; PPL {:.4} (base {:.4})",
                fp.predicted_kld,
                m.kld,
                m.kld_err,
                m.top1 * 100.0,
                m.ppl,
                m.ppl_base
            ),
            None => println!("{} predicted {:.5} (not evaluated)", damage_name(fp), fp.predicted_kld),
        }
        println!("sha256 {}", report.sha256);
    }
    Ok(())
}
