//! The fields of every job kind (the wire format) and of its outcome. Each kind's runner is in
//! its own file.

pub(super) mod adapter;
pub use adapter::{LowrankJob, LowrankOutcome, MergeJob, MergeOutcome};
pub(super) mod convert;
pub use convert::ConvertSummary;
pub(super) mod eval;
pub(super) mod export;
pub(super) mod fit;
pub(super) mod imatrix;
pub(super) mod prune;
pub use prune::{PruneJob, PruneOutcome, PrunedOutput};
pub(super) mod quantize;
pub(super) mod search;
pub(super) mod seedlm;
pub use seedlm::{SeedlmJob, SeedlmOutcome};
pub(super) mod ternary;
pub use ternary::{TernaryJob, TernaryOutcome};
pub(super) mod stage1;
pub use stage1::{Stage1Job, Stage1Outcome};
pub(super) mod train;
pub use train::{TrainJob, TrainOutcome};

use super::PathRole;
use crate::error::{Error, Result};
use crate::eval::{BenchReport, ChoiceReport, CompareReport, PerplexityReport};
use crate::inspect::Inspection;
use crate::quantize::{Plan, QuantizeReport};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

fn yes() -> bool {
    true
}

/// A job's LoRA adapters in its registry run: `params["lora"]` lists their paths and scales
/// (left out without adapters, so such runs are recorded as before), and each file is an input
/// of role `lora` (hashed like the model).
pub(super) fn record_lora<'a>(
    params: &mut serde_json::Value,
    inputs: &mut Vec<(&'static str, &'a std::path::Path)>,
    lora: &'a [crunch_model::LoraSpec],
) {
    if lora.is_empty() {
        return;
    }
    let list: Vec<serde_json::Value> = lora
        .iter()
        .map(|a| {
            let path = std::path::absolute(&a.path).unwrap_or_else(|_| a.path.clone());
            serde_json::json!({ "path": path, "scale": a.scale })
        })
        .collect();
    if let Some(m) = params.as_object_mut() {
        m.insert("lora".into(), serde_json::Value::Array(list));
    }
    inputs.extend(lora.iter().map(|a| ("lora", a.path.as_path())));
}

/// `quantize`: a GGUF model to a llama.cpp preset or type.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuantizeJob {
    /// Input GGUF (F32/F16/BF16, or quantized with `allow_requantize`).
    pub model: PathBuf,
    /// Output GGUF (written atomically, with a `.sha256` sidecar).
    pub output: PathBuf,
    /// Preset or type, llama.cpp's names (`Q4_K_M`, `Q8_0`, …).
    #[serde(rename = "type")]
    pub ftype: String,
    #[serde(default)]
    pub leave_output_tensor: bool,
    /// Type for `output.weight`.
    #[serde(default)]
    pub output_tensor_type: Option<String>,
    /// Type for `token_embd.weight`.
    #[serde(default)]
    pub token_embedding_type: Option<String>,
    /// `PATTERN=TYPE` rules, first match wins.
    #[serde(default)]
    pub tensor_types: Vec<String>,
    /// Every quantizable tensor gets the preset's default type.
    #[serde(default)]
    pub pure: bool,
    #[serde(default)]
    pub allow_requantize: bool,
    /// Plan only; write nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Importance matrix (llama.cpp GGUF or legacy `.dat`).
    #[serde(default)]
    pub imatrix: Option<PathBuf>,
    /// Use the imatrix only for tensors whose name contains one of these.
    #[serde(default)]
    pub include_weights: Vec<String>,
    /// Do not use the imatrix for tensors whose name contains one of these.
    #[serde(default)]
    pub exclude_weights: Vec<String>,
    /// GPTQ / AWQ calibration; `None` rounds to nearest (weighted by the imatrix if given).
    #[serde(default)]
    pub calibration: Option<CalibrationSpec>,
    /// HQQ's half-quadratic scale and minimum for every Q4_1 / Q5_1 tensor of the plan (no
    /// data); other types round as usual.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hqq: bool,
}

/// Calibrated quantization (GPTQ, AWQ) and its text.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSpec {
    /// `gptq`, `awq` or `awq,gptq`.
    pub method: crate::method::Method,
    /// Calibration text file.
    pub text: PathBuf,
    /// Tokens per chunk.
    #[serde(default = "CalibrationSpec::default_ctx")]
    pub ctx: usize,
    #[serde(default = "CalibrationSpec::default_chunks")]
    pub chunks: usize,
    /// Chunks at random positions with this seed (default: in order).
    #[serde(default)]
    pub seed: Option<u64>,
    /// GPTQ dampening (fraction of the mean Hessian diagonal).
    #[serde(default = "CalibrationSpec::default_damp")]
    pub damp: f32,
    /// GPTQ columns per lazy update block.
    #[serde(default = "CalibrationSpec::default_block")]
    pub gptq_block: usize,
    #[serde(default)]
    pub act_order: bool,
    /// AWQ grid points for the scale exponent.
    #[serde(default = "CalibrationSpec::default_grid")]
    pub awq_grid: usize,
}

impl CalibrationSpec {
    /// `method` on `text` with every other setting at its default.
    pub fn defaults(method: crate::method::Method, text: PathBuf) -> Self {
        CalibrationSpec {
            method,
            text,
            ctx: Self::default_ctx(),
            chunks: Self::default_chunks(),
            seed: None,
            damp: Self::default_damp(),
            gptq_block: Self::default_block(),
            act_order: false,
            awq_grid: Self::default_grid(),
        }
    }

    pub fn default_ctx() -> usize {
        512
    }
    pub fn default_chunks() -> usize {
        64
    }
    pub fn default_damp() -> f32 {
        0.01
    }
    pub fn default_block() -> usize {
        128
    }
    pub fn default_grid() -> usize {
        20
    }
}

/// `convert`: a Hugging Face folder to GGUF.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConvertJob {
    /// Hugging Face model folder.
    pub model: PathBuf,
    pub output: PathBuf,
    /// `auto` (the checkpoint's float type), `f32`, `f16`, `bf16` or a quantization preset.
    #[serde(rename = "type", default = "ConvertJob::default_type")]
    pub ftype: String,
    /// Pre-tokenizer name when crunch cannot recognise it.
    #[serde(default)]
    pub pre: Option<String>,
    /// `general.name` to write.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
    /// The base model (GGUF file or Hugging Face folder) of a PEFT adapter folder being converted
    /// to a GGUF LoRA adapter (`crunch::peft`); only for adapters.
    #[serde(default)]
    pub base: Option<PathBuf>,
}

impl ConvertJob {
    pub fn default_type() -> String {
        "auto".into()
    }
}

/// `export`: GGUF to a Hugging Face folder.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExportJob {
    pub model: PathBuf,
    /// Output folder.
    pub output: PathBuf,
    /// `auto` (keep the source's precision), `f16`, `bf16` or `f32`.
    #[serde(default = "ConvertJob::default_type")]
    pub dtype: String,
    /// Largest safetensors shard in bytes.
    #[serde(default = "ExportJob::default_shard")]
    pub max_shard_bytes: u64,
    /// Store the blocks' linear weights in a compressed-tensors sparse format: `bitmask`
    /// (`sparse-bitmask`) or `2:4` (`sparse-24-bitmask`, every row 2:4); none writes them dense.
    #[serde(default)]
    pub sparse: Option<String>,
    /// The base model (GGUF file or Hugging Face folder) of a GGUF LoRA adapter being exported as
    /// a PEFT adapter folder (`crunch::peft`); only for adapters.
    #[serde(default)]
    pub base: Option<PathBuf>,
    /// Store the blocks' linear weights quantized: `nf4`, `fp4` (bitsandbytes 4-bit), `bnb-int8`
    /// (LLM.int8), `gptq`, `awq`, `compressed-tensors`, or `int4` / `int8` (compressed-tensors
    /// W4A16 / W8A16). See `crunch::export::quantized`.
    #[serde(default)]
    pub format: Option<String>,
    /// Bits of GPTQ (2, 4, 8) and compressed-tensors (4, 8); default 4.
    #[serde(default)]
    pub bits: Option<u8>,
    /// Group size of the integer formats (default 128), block size of bitsandbytes 4-bit
    /// (default 64).
    #[serde(default)]
    pub group_size: Option<usize>,
    /// Integer codes with zero points (default for AWQ and `method: hqq`; GPTQ and
    /// compressed-tensors are symmetric otherwise).
    #[serde(default)]
    pub asym: Option<bool>,
    /// bitsandbytes 4-bit: quantize the absmax values again (default true).
    #[serde(default)]
    pub double_quant: Option<bool>,
    /// `rtn` (default) or `hqq`; GPTQ and AWQ codes come from `calibration` instead.
    #[serde(default)]
    pub method: Option<String>,
    /// GPTQ / AWQ calibration of the integer codes.
    #[serde(default)]
    pub calibration: Option<CalibrationSpec>,
    /// Also write the f32 values meant for every quantized weight to this safetensors file.
    #[serde(default)]
    pub reference: Option<PathBuf>,
}

impl ExportJob {
    pub fn default_shard() -> u64 {
        crate::export::DEFAULT_SHARD_BYTES
    }
}

/// `imatrix`: an importance matrix from calibration text, or merged from earlier ones.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImatrixJob {
    /// The GGUF model to run (not needed to merge).
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// Calibration text; none only merges `in_files`.
    #[serde(default)]
    pub text: Option<PathBuf>,
    /// `random:N[:SEED]` random vocabulary tokens instead of a text file.
    #[serde(default)]
    pub random_tokens: Option<String>,
    pub output: PathBuf,
    /// `gguf` or `dat` (default: from the output's extension).
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default = "CalibrationSpec::default_ctx")]
    pub ctx: usize,
    #[serde(default)]
    pub chunks: Option<usize>,
    #[serde(default)]
    pub skip_chunks: usize,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub in_files: Vec<PathBuf>,
    #[serde(default)]
    pub resume: bool,
    #[serde(default = "ImatrixJob::default_save_every")]
    pub save_every: usize,
    #[serde(default)]
    pub process_output: bool,
    /// LoRA adapters applied to the model while collecting, in order (`FILE[:SCALE]` on the
    /// command line).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lora: Vec<crunch_model::LoraSpec>,
}

impl ImatrixJob {
    pub fn default_save_every() -> usize {
        10
    }
}

/// `perplexity`: as llama-perplexity computes it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PerplexityJob {
    pub model: PathBuf,
    pub text: PathBuf,
    #[serde(default = "CalibrationSpec::default_ctx")]
    pub ctx: usize,
    #[serde(default)]
    pub chunks: Option<usize>,
    /// Dequantize weights and multiply in f32.
    #[serde(default)]
    pub exact: bool,
    /// LoRA adapters applied to the model, in order (`FILE[:SCALE]` on the command line).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lora: Vec<crunch_model::LoraSpec>,
}

/// `compare`: quantized models against a base (KL-divergence, same top token, perplexity).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompareJob {
    /// The base model (or `base_logits`).
    #[serde(default)]
    pub base: Option<PathBuf>,
    /// The models compared with the base.
    #[serde(default)]
    pub models: Vec<PathBuf>,
    /// Text (not needed with `base_logits`).
    #[serde(default)]
    pub text: Option<PathBuf>,
    #[serde(default = "CalibrationSpec::default_ctx")]
    pub ctx: usize,
    #[serde(default)]
    pub chunks: Option<usize>,
    /// Base log-probabilities kept per position.
    #[serde(default = "CompareJob::default_top_k")]
    pub top_k: usize,
    /// Write the base's top-k log-probabilities here.
    #[serde(default)]
    pub save_base: Option<PathBuf>,
    /// Read the base from a file written with `save_base`.
    #[serde(default)]
    pub base_logits: Option<PathBuf>,
    #[serde(default)]
    pub exact: bool,
    /// LoRA adapters applied to each of `models` (never to the base), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lora: Vec<crunch_model::LoraSpec>,
}

impl CompareJob {
    pub fn default_top_k() -> usize {
        32
    }
}

/// `choice`: multiple-choice accuracy from JSONL tasks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChoiceJob {
    pub model: PathBuf,
    pub tasks: PathBuf,
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub exact: bool,
    /// LoRA adapters applied to the model, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lora: Vec<crunch_model::LoraSpec>,
}

/// `bench`: speed and peak memory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BenchJob {
    pub model: PathBuf,
    /// Prompt tokens in one batch (0 skips).
    #[serde(default = "CalibrationSpec::default_ctx")]
    pub pp: usize,
    /// Tokens generated one at a time (0 skips).
    #[serde(default = "BenchJob::default_tg")]
    pub tg: usize,
    #[serde(default = "BenchJob::default_reps")]
    pub reps: usize,
    #[serde(default)]
    pub exact: bool,
    /// LoRA adapters applied to the model, in order (their cost is part of the speed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lora: Vec<crunch_model::LoraSpec>,
}

impl BenchJob {
    pub fn default_tg() -> usize {
        128
    }
    pub fn default_reps() -> usize {
        3
    }
}

/// Text, calibration and evaluation settings shared by `fit` and `search`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FitSettings {
    /// Calibration (first half) and held-out evaluation (second half) text.
    pub text: PathBuf,
    /// `rtn`, `imatrix` or `gptq`.
    #[serde(default = "FitSettings::default_method")]
    pub method: crate::method::Method,
    #[serde(default = "FitSettings::default_calib_ctx")]
    pub calib_ctx: usize,
    #[serde(default = "FitSettings::default_calib_chunks")]
    pub calib_chunks: usize,
    /// Layers measured together per tensor kind.
    #[serde(default = "FitSettings::default_band")]
    pub band: usize,
    /// Candidate types (default: every type crunch writes from Q2_K up to F16).
    #[serde(default)]
    pub types: Vec<String>,
    /// Held-out evaluation window.
    #[serde(default = "FitSettings::default_eval_ctx")]
    pub eval_ctx: usize,
    #[serde(default = "FitSettings::default_eval_chunks")]
    pub eval_chunks: usize,
    /// Where profiles and base logits are cached (default: `$CRUNCH_CACHE/fit`).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

impl FitSettings {
    pub fn default_method() -> crate::method::Method {
        crate::method::Method::Rtn
    }
    pub fn default_calib_ctx() -> usize {
        128
    }
    pub fn default_calib_chunks() -> usize {
        2
    }
    pub fn default_band() -> usize {
        5
    }
    pub fn default_eval_ctx() -> usize {
        256
    }
    pub fn default_eval_chunks() -> usize {
        8
    }

    pub(in crate::job) fn paths_mut<'a>(&'a mut self, v: &mut Vec<(&'static str, PathRole, &'a mut PathBuf)>) {
        v.push(("settings.text", PathRole::Input, &mut self.text));
        if let Some(p) = &mut self.cache_dir {
            v.push(("settings.cache_dir", PathRole::Output, p));
        }
    }
}

/// `fit`: the best model for one target. Exactly one of the `max_*` fields.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FitJob {
    pub model: PathBuf,
    /// Output GGUF (none with `dry_run`).
    #[serde(default)]
    pub output: Option<PathBuf>,
    /// Largest output file: bytes, or a size such as `90MB`, `4GiB`.
    #[serde(default)]
    pub max_size: Option<SizeSpec>,
    #[serde(default)]
    pub max_bpw: Option<f64>,
    /// Largest KL-divergence from the base on held-out text.
    #[serde(default)]
    pub max_kld: Option<f64>,
    /// Smallest mean cosine similarity of an encoder's sentence embeddings to the base's on
    /// held-out lines: the smallest model meeting it (encoders only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cosine: Option<f64>,
    /// Most memory llama.cpp may use at `ram_ctx`.
    #[serde(default)]
    pub max_ram: Option<SizeSpec>,
    /// Context length counted for `max_ram`.
    #[serde(default = "FitJob::default_ram_ctx")]
    pub ram_ctx: usize,
    #[serde(default)]
    pub dry_run: bool,
    /// Evaluate the written file on held-out text.
    #[serde(default = "yes")]
    pub evaluate: bool,
    /// Text, calibration and evaluation settings.
    pub settings: FitSettings,
    /// Structured pruning of the base before fitting (blocks, FFN width, KV groups), calibrated
    /// on the first half of the text; the result is still judged against the unpruned base.
    #[serde(default)]
    pub prune: Option<crate::calibrate::structured::StructuredOptions>,
    /// A low-rank correction of the written model, shipped as a LoRA adapter beside it
    /// (`OUTPUT` with `.lora.gguf`); its bytes count against the size, bpw or memory target.
    #[serde(default)]
    pub correction: Option<Box<crate::lowrank::CorrectionSpec>>,
}

impl FitJob {
    pub fn default_ram_ctx() -> usize {
        4096
    }
}

/// A size: bytes, or text with a unit (`90MB`, `4GiB`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SizeSpec {
    Bytes(u64),
    Text(String),
}

impl SizeSpec {
    /// The size in bytes; errors name `field`.
    pub fn bytes(&self, field: &str) -> Result<u64> {
        match self {
            SizeSpec::Bytes(b) => Ok(*b),
            SizeSpec::Text(t) => crate::fit::parse_size(t, field).map_err(|e| Error::field(field, e.to_string())),
        }
    }
}

/// `search`: many recipes evaluated, and their Pareto front.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SearchJob {
    pub model: PathBuf,
    /// A YAML recipe file (docs/RECIPES.md).
    #[serde(default)]
    pub recipes_file: Option<PathBuf>,
    /// Recipes inline, in the recipe file's YAML/JSON schema (`{"recipes": [...]}`).
    #[serde(default)]
    pub recipes: Option<crate::search::recipe::RecipeFile>,
    /// `KEY=V1,V2,…` grids (`preset=Q4_0,Q4_K_M`, `max-bpw=4.5,5`).
    #[serde(default)]
    pub grid: Vec<String>,
    /// Methods each grid entry is tried with.
    #[serde(default = "SearchJob::default_grid_methods")]
    pub grid_methods: Vec<String>,
    /// Keep candidate files here (default: a temporary folder, removed after).
    #[serde(default)]
    pub out_dir: Option<PathBuf>,
    /// Context length for each candidate's memory estimate.
    #[serde(default = "FitJob::default_ram_ctx")]
    pub ram_ctx: usize,
    #[serde(default)]
    pub dry_run: bool,
    /// Text, calibration and evaluation settings.
    pub settings: FitSettings,
    /// A product space to explore (types per tensor group, presets, fit targets, methods,
    /// pruning, corrections: docs/SEARCH.md), instead of listed recipes.
    #[serde(default)]
    pub space: Option<crate::search::space::SpaceSpec>,
    /// The same as a YAML file (`space:` at the top).
    #[serde(default)]
    pub space_file: Option<PathBuf>,
    /// `grid` (every point, in order), `random`, `nsga2` or `tpe`.
    #[serde(default = "SearchJob::default_strategy")]
    pub strategy: String,
    /// Most trials (default: every point for `grid`, a third of the space otherwise).
    #[serde(default)]
    pub budget: Option<usize>,
    /// Seed of the `random`, `nsga2` and `tpe` strategies.
    #[serde(default)]
    pub seed: u64,
    /// Objectives (at least two): size, kld, ppl, top1, acc, pp, tg, ram, energy, co2.
    #[serde(default = "SearchJob::default_objectives")]
    pub objectives: Vec<String>,
    #[serde(default)]
    pub constraints: crate::search::objective::Constraints,
    /// What each trial measures beyond the held-out comparison.
    #[serde(default)]
    pub measure: MeasureOptions,
    /// Run the trials as tasks on a Ray cluster.
    #[serde(default)]
    pub ray: Option<RayOptions>,
    /// Evaluate exactly these points of the space, record nothing, and return the trials (what
    /// a cluster worker runs for the driver).
    #[serde(default)]
    pub trial_points: Vec<Vec<f64>>,
    /// Replay a recorded search of the same space (its run id): every trial is read back from
    /// that run instead of run again, nothing is recorded, and the summary says how much of the
    /// recorded front the strategy reached (to compare strategies cheaply).
    #[serde(default)]
    pub replay: Option<i64>,
}

impl SearchJob {
    pub fn default_grid_methods() -> Vec<String> {
        vec!["rtn".into()]
    }
    pub fn default_strategy() -> String {
        "grid".into()
    }
    pub fn default_objectives() -> Vec<String> {
        vec!["size".into(), "kld".into()]
    }
}

/// Measurements of every trial beyond the held-out comparison.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MeasureOptions {
    /// Tokens generated one at a time for the generation speed and energy per token (0: skip).
    #[serde(default = "MeasureOptions::default_tg")]
    pub tg_tokens: usize,
    /// Multiple-choice tasks (JSONL, as `eval choice`) scored on every candidate and the base.
    #[serde(default)]
    pub choice_tasks: Option<PathBuf>,
    /// Score only the first N tasks.
    #[serde(default)]
    pub choice_limit: Option<usize>,
    /// Package watts of this CPU with every logical CPU busy (default: a table by CPU model).
    #[serde(default)]
    pub cpu_watts: Option<f64>,
    /// Grams CO2 per kWh: a number, a country code (FR, US, …) or `world` (the default).
    #[serde(default)]
    pub grid_intensity: Option<String>,
}

impl MeasureOptions {
    pub fn default_tg() -> usize {
        64
    }
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions {
            tg_tokens: Self::default_tg(),
            choice_tasks: None,
            choice_limit: None,
            cpu_watts: None,
            grid_intensity: None,
        }
    }
}

/// Trials as tasks on a Ray cluster: each runs the `crunch` binary on a worker (same paths for
/// the model, text and cache on every node) and sends its trial back; the driver records them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RayOptions {
    /// The cluster's address (`127.0.0.1:6379`).
    pub address: String,
    /// The Python with `ray` installed (default `$CRUNCH_RAY_PYTHON`, else `python3`).
    #[serde(default)]
    pub python: Option<PathBuf>,
    /// The `crunch` binary the workers run (default: this one).
    #[serde(default)]
    pub crunch: Option<PathBuf>,
    /// CPUs (and threads) of one trial.
    #[serde(default = "RayOptions::default_cpus")]
    pub cpus_per_trial: usize,
    /// Attempts after a lost worker before the trial is marked failed.
    #[serde(default = "RayOptions::default_retries")]
    pub max_retries: u32,
}

impl RayOptions {
    pub fn default_cpus() -> usize {
        1
    }
    pub fn default_retries() -> u32 {
        2
    }
}

/// `embed`: sentence embeddings of every non-empty line with a BERT encoder, as JSONL.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmbedJob {
    /// Encoder: GGUF (bert) or Hugging Face folder.
    pub model: PathBuf,
    pub text: PathBuf,
    /// JSONL output: `{"text", "n_tokens", "embedding"}` per line.
    pub output: PathBuf,
    #[serde(default)]
    pub max_lines: Option<usize>,
    /// Cut inputs to this many tokens (default: the model's limit).
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub exact: bool,
}

/// `embed_compare`: cosine similarity of two encoders' sentence embeddings per line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmbedCompareJob {
    pub base: PathBuf,
    pub model: PathBuf,
    pub text: PathBuf,
    #[serde(default)]
    pub max_lines: Option<usize>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub exact: bool,
}

/// `generate`: text from a prompt (each piece is sent to the progress sink as it comes).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GenerateJob {
    pub model: PathBuf,
    /// The prompt (no chat template is applied).
    pub prompt: String,
    #[serde(default = "BenchJob::default_tg")]
    pub n_predict: usize,
    /// 0 is greedy.
    #[serde(default)]
    pub temperature: f32,
    #[serde(default = "GenerateJob::default_top_k")]
    pub top_k: usize,
    #[serde(default = "GenerateJob::default_top_p")]
    pub top_p: f32,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub ignore_eos: bool,
    #[serde(default)]
    pub exact: bool,
    /// LoRA adapters applied to the model, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lora: Vec<crunch_model::LoraSpec>,
}

impl GenerateJob {
    pub fn default_top_k() -> usize {
        40
    }
    pub fn default_top_p() -> f32 {
        0.95
    }
}

/// `inspect`: a model file's metadata and tensors.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InspectJob {
    /// GGUF, safetensors, sharded index or Hugging Face folder.
    pub path: PathBuf,
}

/// `verify`: files against their `.sha256` sidecars.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VerifyJob {
    pub files: Vec<PathBuf>,
}

/// What `quantize` did.
#[derive(Clone, Debug, Serialize)]
pub struct QuantizeOutcome {
    pub plan: Plan,
    /// `None` for a dry run.
    pub result: Option<QuantizeReport>,
    pub run_id: Option<i64>,
}

/// What `convert` did.
#[derive(Clone, Debug, Serialize)]
pub struct ConvertOutcome {
    pub plan: ConvertSummary,
    pub result: Option<crate::convert::ConvertReport>,
    pub run_id: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExportOutcome {
    pub result: crate::export::ExportReport,
    pub run_id: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImatrixOutcome {
    pub result: crate::calibrate::ImatrixReport,
    pub run_id: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PerplexityOutcome {
    #[serde(flatten)]
    pub result: PerplexityReport,
    pub run_id: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompareOutcome {
    /// Where the base's logits were saved, with their sha256.
    pub saved_base: Option<(String, String)>,
    pub base_positions: usize,
    pub reports: Vec<CompareReport>,
    /// The registry run of each report.
    pub run_ids: Vec<Option<i64>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChoiceOutcome {
    #[serde(flatten)]
    pub result: ChoiceReport,
    pub run_id: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchOutcome {
    #[serde(flatten)]
    pub result: BenchReport,
    pub run_id: Option<i64>,
}

/// What `fit` did.
#[derive(Clone, Debug, Serialize)]
pub struct FitOutcome {
    pub fit: crate::fit::FitPlan,
    pub profile: serde_json::Value,
    pub result: Option<QuantizeReport>,
    pub measured: Option<crate::fit::heldout::Measured>,
    /// How many times the plan was solved and written (a KLD target missed is solved again).
    pub rounds: usize,
    /// The correction adapter written beside the model, and what it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correction: Option<crate::lowrank::LowrankReport>,
    /// Model file plus adapter.
    pub total_bytes: Option<u64>,
    pub run_id: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SearchOutcome {
    pub candidates: Vec<crate::search::Candidate>,
    pub summary: crate::search::Summary,
    pub run_id: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EmbedOutcome {
    pub output: String,
    pub embeddings: usize,
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct EmbedCompareOutcome {
    #[serde(flatten)]
    pub result: crate::eval::embed::EmbedReport,
    /// The registry run (none when recording is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GenerateOutcome {
    #[serde(flatten)]
    pub result: crate::eval::RunReport,
}

#[derive(Clone, Debug, Serialize)]
pub struct InspectOutcome {
    #[serde(flatten)]
    pub inspection: Inspection,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyOutcome {
    pub files: Vec<Verified>,
    pub failed: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Verified {
    pub file: String,
    pub ok: bool,
    pub expected: String,
    pub actual: String,
}

pub(super) fn inspect(j: &InspectJob) -> Result<InspectOutcome> {
    Ok(InspectOutcome { inspection: crate::inspect::inspect_any(&j.path)? })
}

pub(super) fn verify(j: &VerifyJob) -> Result<VerifyOutcome> {
    use crunch_core::output::{verify_sidecar, Verified as V};
    if j.files.is_empty() {
        return Err(Error::field("verify.files", "give at least one file"));
    }
    let mut files = Vec::new();
    for f in &j.files {
        let file = f.display().to_string();
        match verify_sidecar(f).map_err(|e| Error::io(f, e))? {
            V::Ok { sha256 } => files.push(Verified { file, ok: true, expected: sha256.clone(), actual: sha256 }),
            V::Mismatch { expected, actual } => files.push(Verified { file, ok: false, expected, actual }),
        }
    }
    let failed = files.iter().filter(|v| !v.ok).count();
    Ok(VerifyOutcome { files, failed })
}
