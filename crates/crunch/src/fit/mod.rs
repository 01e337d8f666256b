//! `crunch fit`: the best model for a size, bits-per-weight, memory or quality target.
//!
//! Flow: the [`sensitivity`](crate::sensitivity) profile gives, for every tensor and candidate
//! type, the bytes it costs and the KL-divergence it is predicted to add; a multiple-choice
//! knapsack ([`solver`]) picks one type per tensor minimising the predicted KLD within the budget
//! (or, for `--max-kld`, the smallest model predicted within the target); the plan is written with
//! the quantize library, then checked against the base model on held-out text ([`heldout`]).

pub mod heldout;
pub mod ram;
pub mod session;
pub mod solver;

use crate::error::{Error, Result};
use crate::quantize::{self, Plan};
use crate::sensitivity::{plan_with_types, Objective, Profile};
use crunch_core::gguf::{align_up, encode_header, layout, GgufFile, GgufHeader, TensorSpec};
use crunch_core::GgmlType;
use serde::Serialize;
use solver::{Opt, Solution};
use std::collections::BTreeMap;

/// What to fit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The output file is at most this many bytes.
    MaxSize(u64),
    /// At most this many bits per weight (over all tensors, as `crunch quantize` reports).
    MaxBpw(f64),
    /// Predicted KL-divergence at most this (the smallest such model).
    MaxKld(f64),
    /// Running it with llama.cpp at a context of `ctx` tokens takes at most `bytes` of memory.
    MaxRam { bytes: u64, ctx: usize },
    /// An encoder's sentence embeddings keep a predicted mean cosine similarity of at least this
    /// to the base's (the smallest such model).
    MinCosine(f64),
}

impl Target {
    /// The job field that gives the target (for errors).
    pub fn field(&self) -> &'static str {
        match self {
            Target::MaxSize(_) => "fit.max_size",
            Target::MaxBpw(_) => "fit.max_bpw",
            Target::MaxKld(_) => "fit.max_kld",
            Target::MaxRam { .. } => "fit.max_ram",
            Target::MinCosine(_) => "fit.min_cosine",
        }
    }

    /// A target that does not fit the kind of model (`objective`) is an error naming its field:
    /// a cosine target for a causal LM, a KL-divergence or memory target for an encoder.
    ///
    /// # Errors
    /// As described, `model` naming the file.
    pub fn check_for(&self, objective: Objective, model: &str) -> Result<()> {
        let wrong = match (self, objective) {
            (Target::MinCosine(_), Objective::Kld) => Some(
                "is a causal language model: a cosine target judges sentence encoders; give a KL-divergence, \
                 size or bits-per-weight target",
            ),
            (Target::MaxKld(_), Objective::EmbedDamage) => Some(
                "is a sentence encoder, which has no next-token distribution to take a KL-divergence of; give a \
                 minimum cosine similarity, a size or a bits-per-weight target",
            ),
            (Target::MaxRam { .. }, Objective::EmbedDamage) => Some(
                "is a sentence encoder: the memory target models a causal LM's KV cache; give a size or \
                 bits-per-weight target",
            ),
            _ => None,
        };
        match wrong {
            Some(w) => Err(Error::field(self.field(), format!("{model} {w}"))),
            None => Ok(()),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::MaxSize(b) => write!(f, "max-size {}", crate::inspect::human_bytes(*b)),
            Target::MaxBpw(b) => write!(f, "max-bpw {b}"),
            Target::MaxKld(k) => write!(f, "max-kld {k}"),
            Target::MaxRam { bytes, ctx } => write!(f, "max-ram {} at ctx {ctx}", crate::inspect::human_bytes(*bytes)),
            Target::MinCosine(c) => write!(f, "min-cosine {c}"),
        }
    }
}

/// A solved fit.
#[derive(Clone, Debug, Serialize)]
pub struct FitPlan {
    pub target: Target,
    /// What the predicted figures measure (KL-divergence, or embedding damage for an encoder).
    pub objective: Objective,
    /// Type per quantizable tensor.
    pub types: BTreeMap<String, String>,
    /// Predicted contribution per tensor.
    pub tensor_kld: BTreeMap<String, f64>,
    pub predicted_kld: f64,
    /// Exact size of the file the plan writes.
    pub file_bytes: u64,
    pub bpw: f64,
    /// The file-size budget the target became (none for `--max-kld`).
    pub budget_bytes: Option<u64>,
    /// Solver answer: which solver, and how far from the proven lower bound.
    pub solver: &'static str,
    pub lower_bound: f64,
    pub gap: f64,
    /// The memory estimate (for `--max-ram`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram: Option<ram::RamEstimate>,
    #[serde(skip)]
    pub plan: Plan,
}

impl FitPlan {
    /// llama-quantize arguments reproducing the plan.
    pub fn tensor_type_args(&self) -> Vec<String> {
        self.types.iter().map(|(n, t)| format!("--tensor-type ^{}$={}", regex::escape(n), t.to_lowercase())).collect()
    }
}

/// Exact size of the GGUF file `plan` writes for `file`.
///
/// # Errors
/// Bad shapes.
pub fn file_size(file: &GgufFile, plan: &Plan) -> Result<u64> {
    let meta = quantize::output_metadata(file.metadata(), plan.ftype.code());
    let alignment = file.header.alignment.max(1);
    let specs: Vec<TensorSpec> = plan
        .tensors
        .iter()
        .map(|t| TensorSpec { name: t.name.clone(), ty: t.dst_type, dims: t.dims.clone() })
        .collect();
    let (infos, data) = layout(&specs, alignment)?;
    let header = GgufHeader { version: 3, metadata: meta, tensors: infos, alignment, data_start: 0 };
    let h = encode_header(&header).len() as u64;
    Ok(align_up(h, alignment).unwrap_or(h) + data)
}

/// Predicted KL-divergence of any plan (a preset's too) under `profile`: the sum of the
/// tensors' predicted contributions; tensors the profile does not know (kept as they are) add 0.
pub fn predicted_kld(profile: &Profile, plan: &Plan) -> f64 {
    plan.tensors
        .iter()
        .filter_map(|t| {
            let p = profile.tensor(&t.name)?;
            if t.dst_type == p.src_type {
                return Some(0.0);
            }
            Some(p.choice(t.dst_type).map_or(0.0, |c| c.kld))
        })
        .sum()
}

fn items(profile: &Profile) -> Vec<Vec<Opt>> {
    profile.tensors.iter().map(|t| t.choices.iter().map(|c| Opt { weight: c.bytes, cost: c.kld }).collect()).collect()
}

fn plan_from(file: &GgufFile, profile: &Profile, sol: &Solution) -> Result<(Plan, BTreeMap<String, GgmlType>)> {
    let types: BTreeMap<String, GgmlType> =
        profile.tensors.iter().zip(&sol.choice).map(|(t, &k)| (t.name.clone(), t.choices[k].ty)).collect();
    Ok((plan_with_types(file, &types)?, types))
}

/// Solve `target` for the model in `file` with its `profile`.
///
/// # Errors
/// [`Error::Budget`]-style errors (as [`Error::Plan`]) when the target is unreachable, naming the
/// smallest possible size; profile/model mismatches.
pub fn solve(file: &GgufFile, profile: &Profile, target: Target) -> Result<FitPlan> {
    for t in &profile.tensors {
        if file.tensor(&t.name).is_none() {
            return Err(Error::Invalid(format!("sensitivity profile names tensor {} that the model lacks", t.name)));
        }
    }
    target.check_for(profile.objective, &file.path.display().to_string())?;
    let items = items(profile);
    // Fixed bytes: what a plan costs besides the candidates' data (header, kept tensors, padding).
    let lightest = solver::lightest_choice(&items);
    let (plan0, _) = plan_from(file, profile, &lightest)?;
    let min_file = file_size(file, &plan0)?;
    let cand_min: u64 = lightest.weight;
    let slack_per_tensor = file.header.alignment.max(1);
    let fixed = min_file - cand_min + slack_per_tensor * items.len() as u64;
    let n_elements: u64 = plan0.n_elements;

    let (budget_file, ram_est) = match target {
        Target::MaxSize(b) => (Some(b), None),
        Target::MaxBpw(bpw) => {
            if !(bpw > 0.0 && bpw.is_finite()) {
                return Err(Error::field("fit.max_bpw", format!("{bpw}: must be a positive number")));
            }
            // bits per weight over all tensors' data (not the header), as quantize reports it.
            let data_budget = (bpw * n_elements as f64 / 8.0).floor() as u64;
            let header = min_file - plan0.dst_bytes;
            (Some(data_budget + header), None)
        }
        Target::MaxRam { bytes, ctx } => {
            let (kv, compute) = ram::non_weight_bytes(file.metadata(), ctx)?;
            let other = kv + compute + ram::OVERHEAD_BYTES;
            if bytes <= other {
                return Err(Error::field(
                    "fit.max_ram",
                    format!(
                        "{}: the KV cache ({}) and compute buffers ({}) at a context of {ctx} tokens \
                     already need {}; lower the context or raise the budget",
                        crate::inspect::human_bytes(bytes),
                        crate::inspect::human_bytes(kv),
                        crate::inspect::human_bytes(compute),
                        crate::inspect::human_bytes(other)
                    ),
                ));
            }
            (Some(bytes - other), Some((kv, compute, ctx)))
        }
        Target::MaxKld(k) => {
            if !(k > 0.0 && k.is_finite()) {
                return Err(Error::field("fit.max_kld", format!("{k}: must be a positive number")));
            }
            (None, None)
        }
        Target::MinCosine(c) => {
            if !(c > 0.0 && c < 1.0) {
                return Err(Error::field("fit.min_cosine", format!("{c}: must be between 0 and 1")));
            }
            (None, None)
        }
    };

    let unreachable = |what: String| -> Error {
        Error::Plan(format!(
            "{what} cannot be met: the smallest model crunch can make from these tensors is {} ({} bytes, \
             {:.2} bits per weight, every tensor at its smallest candidate type)",
            crate::inspect::human_bytes(min_file),
            min_file,
            plan0.bpw()
        ))
    };

    let mut inner: Option<u64> = match budget_file {
        Some(b) if b < fixed => return Err(unreachable(target.to_string())),
        Some(b) => Some(b - fixed),
        None => None,
    };
    let mut sol;
    let mut attempts = 0;
    loop {
        attempts += 1;
        sol = match (target, inner) {
            (Target::MaxKld(_) | Target::MinCosine(_), _) => {
                let limit = match target {
                    Target::MinCosine(c) => 1.0 - c,
                    Target::MaxKld(k) => k,
                    _ => unreachable!("matched above"),
                };
                solver::smallest_within(&items, limit).ok_or_else(|| {
                    let best: f64 = profile
                        .tensors
                        .iter()
                        .map(|t| t.choices.iter().map(|c| c.kld).fold(f64::INFINITY, f64::min))
                        .sum();
                    let what = match target {
                        Target::MinCosine(c) => {
                            format!("{c} cannot be met: the best predicted mean cosine is {:.6}", 1.0 - best)
                        }
                        _ => format!(
                            "{limit} cannot be met: the best predicted KL-divergence among the candidate types is \
                             {best:.3e}"
                        ),
                    };
                    Error::field(target.field(), what)
                })?
            }
            (_, Some(b)) => solver::solve(&items, b).map_err(|_| unreachable(target.to_string()))?,
            (_, None) => return Err(Error::Invalid("no budget for the target".into())),
        };
        let (plan, _) = plan_from(file, profile, &sol)?;
        let size = file_size(file, &plan)?;
        match (budget_file, inner) {
            (Some(limit), Some(b)) if size > limit => {
                let over = size - limit;
                if attempts >= 8 || over > b {
                    return Err(unreachable(target.to_string()));
                }
                inner = Some(b - over);
            }
            _ => break,
        }
    }
    let (plan, types) = plan_from(file, profile, &sol)?;
    let file_bytes = file_size(file, &plan)?;
    let tensor_kld: BTreeMap<String, f64> =
        profile.tensors.iter().zip(&sol.choice).map(|(t, &k)| (t.name.clone(), t.choices[k].kld)).collect();
    let ram = ram_est.map(|(kv, compute, ctx)| ram::RamEstimate {
        weights: file_bytes,
        kv_cache: kv,
        compute,
        overhead: ram::OVERHEAD_BYTES,
        total: file_bytes + kv + compute + ram::OVERHEAD_BYTES,
        n_ctx: ctx,
    });
    Ok(FitPlan {
        target,
        objective: profile.objective,
        types: types.iter().map(|(k, v)| (k.clone(), v.name().to_string())).collect(),
        tensor_kld,
        predicted_kld: sol.cost,
        file_bytes,
        bpw: plan.bpw(),
        budget_bytes: match target {
            Target::MaxSize(b) => Some(b),
            Target::MaxRam { .. } | Target::MaxBpw(_) => budget_file,
            Target::MaxKld(_) | Target::MinCosine(_) => None,
        },
        solver: sol.solver,
        lower_bound: sol.lower_bound,
        gap: sol.gap,
        ram,
        plan,
    })
}

/// `target` with `bytes` set aside for something shipped beside the model (a correction
/// adapter): a size or memory target shrinks by them, a bits-per-weight target by their bits per
/// weight of the model's `n_elements`; a KL-divergence target is unchanged.
///
/// # Errors
/// A target the set-aside bytes already fill (`field` names the option).
pub fn reserve(target: Target, bytes: u64, n_elements: u64, field: &str) -> Result<Target> {
    let too_small = |what: String| {
        Error::field(field, format!("the correction alone takes {} ({what})", crate::inspect::human_bytes(bytes)))
    };
    Ok(match target {
        Target::MaxSize(b) if bytes >= b => return Err(too_small(format!("the size target is {b} bytes"))),
        Target::MaxSize(b) => Target::MaxSize(b - bytes),
        Target::MaxRam { bytes: b, .. } if bytes >= b => {
            return Err(too_small(format!("the memory target is {b} bytes")))
        }
        Target::MaxRam { bytes: b, ctx } => Target::MaxRam { bytes: b - bytes, ctx },
        Target::MaxBpw(x) => {
            let extra = bytes as f64 * 8.0 / n_elements.max(1) as f64;
            if extra >= x {
                return Err(too_small(format!("{extra:.3} bits per weight of the {x} asked for")));
            }
            Target::MaxBpw(x - extra)
        }
        t @ (Target::MaxKld(_) | Target::MinCosine(_)) => t,
    })
}

/// Parse a size with an optional binary or decimal unit: `4GiB`, `3.5G`, `800MB`, `123456`.
///
/// # Errors
/// Anything else, naming `what`.
pub fn parse_size(s: &str, what: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 =
        num.parse().map_err(|_| Error::Invalid(format!("{what} {s:?}: expected a size such as 4GiB or 800MB")))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        "t" | "tib" => 1024f64.powi(4),
        "tb" => 1e12,
        u => {
            return Err(Error::Invalid(format!("{what} {s:?}: unknown unit {u:?} (use B, KiB, MiB, GiB, KB, MB, GB)")))
        }
    };
    let bytes = v * mult;
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(Error::Invalid(format!("{what} {s:?}: must be at least one byte")));
    }
    Ok(bytes.floor() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4GiB", "x").unwrap(), 4 << 30);
        assert_eq!(parse_size("800MB", "x").unwrap(), 800_000_000);
        assert_eq!(parse_size("1.5k", "x").unwrap(), 1536);
        assert_eq!(parse_size("123", "x").unwrap(), 123);
        assert!(parse_size("4 parsecs", "--max-size").unwrap_err().to_string().contains("--max-size"));
        assert!(parse_size("", "x").is_err());
        assert!(parse_size("0", "x").is_err());
    }
}
