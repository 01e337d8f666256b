//! Structured pruning's model work: choose blocks to remove, prune FFN channels and attention KV
//! groups block by block, and write the smaller model as a GGUF with consistent
//! hyper-parameters. The scores and the refit live in `crunch_calib::prune::structured`.
//!
//! The work is streamed: the output's header is known before any data is read (every block keeps
//! the same widths, so llama.cpp's `llama` architecture loads it unchanged), and each block's
//! tensors are written as soon as the block has been pruned. Tensors that only lose rows (Q, K,
//! V, FFN gate and up) keep their type and bytes; tensors that lose input columns
//! (`attn_output`, `ffn_down`) are written as F32 after the least-squares refit, for the
//! quantizer that runs after this to put into the output type.
//!
//! Calibration is sequential: blocks are scored on the model as it is, and each block's widths
//! are chosen from inputs that went through the blocks before it as already pruned.

use super::calib_err;
use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};
use crate::quantize::{self, Ftype, Plan, QuantizeOptions, QuantizeReport};
use crunch_calib::linalg;
use crunch_calib::prune::structured::{self as st, LayerScore};
use crunch_calib::runner::{Group, Layer, Runner};
use crunch_calib::text::{self, ChunkOptions, TextSource};
use crunch_core::gguf::{GgufFile, GgufWriter, Metadata, TensorInfo, TensorSpec, Value};
use crunch_core::GgmlType;
use crunch_model::LlamaConfig;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Which blocks go.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerChoice {
    /// `n` blocks chosen by a calibrated score.
    Count { n: usize, score: LayerScore },
    /// These blocks (0-based).
    List(Vec<usize>),
}

/// What to remove.
#[derive(Clone, Debug)]
pub struct StructuredSpec {
    pub layers: Option<LayerChoice>,
    /// FFN channels kept in every block.
    pub ffn_keep: Option<usize>,
    /// KV groups (a K/V head and the query heads that share it) kept in every block.
    pub kv_keep: Option<usize>,
    /// Refit `attn_output` / `ffn_down` on the kept columns by least squares (else the kept
    /// columns are copied).
    pub refit: bool,
    /// Dampening of the refit's second moment, relative to its mean diagonal.
    pub damp: f64,
}

impl StructuredSpec {
    /// Whether the spec needs calibration text.
    pub fn needs_calibration(&self) -> bool {
        matches!(self.layers, Some(LayerChoice::Count { .. })) || self.ffn_keep.is_some() || self.kv_keep.is_some()
    }
    fn prunes_width(&self) -> bool {
        self.ffn_keep.is_some() || self.kv_keep.is_some()
    }
}

/// A tensor that lost input columns.
#[derive(Clone, Debug, Serialize)]
pub struct RefitTensor {
    /// Name in the output.
    pub name: String,
    pub columns_before: usize,
    pub columns_after: usize,
    /// `‖(W − W') X‖² / ‖W X‖²` over the calibration tokens (`W'` zero in removed columns).
    pub output_error: f64,
}

/// What structured pruning did.
#[derive(Clone, Debug, Serialize)]
pub struct StructuredReport {
    pub n_layer_before: usize,
    pub n_layer_after: usize,
    /// Blocks removed (input numbering).
    pub removed_layers: Vec<usize>,
    /// How the blocks were chosen (`None`: given as a list).
    pub layer_score: Option<LayerScore>,
    /// The score of every candidate: per block (influence) or per run starting at that block
    /// (angular distance).
    pub layer_scores: Vec<f64>,
    pub n_ff_before: usize,
    pub n_ff_after: usize,
    pub n_head_before: usize,
    pub n_head_after: usize,
    pub n_head_kv_before: usize,
    pub n_head_kv_after: usize,
    /// The KV groups each output block kept (input numbering), when groups were dropped.
    pub kept_kv_groups: Vec<Vec<usize>>,
    /// Every tensor that lost input columns.
    pub refit: Vec<RefitTensor>,
    /// The type each output tensor had in the input (by output name).
    #[serde(skip)]
    pub source_types: BTreeMap<String, GgmlType>,
    pub seconds: f64,
}

/// `blk.N.rest` → `(N, rest)`.
fn block_of(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("blk.")?;
    let (n, rest) = rest.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// What happens to a block tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Copy,
    /// Rows of the kept query heads.
    QRows,
    /// Rows of the kept K/V heads.
    KvRows,
    /// Rows of the kept FFN channels.
    FfnRows,
    /// Refit on the kept query heads' columns.
    OutCols,
    /// Refit on the kept FFN channels' columns.
    DownCols,
}

fn role(rest: &str, spec: &StructuredSpec) -> Option<Role> {
    let kv = spec.kv_keep.is_some();
    let ffn = spec.ffn_keep.is_some();
    Some(match rest {
        "attn_norm.weight"
        | "ffn_norm.weight"
        | "attn_output.bias"
        | "ffn_down.bias"
        | "attn_q_norm.weight"
        | "attn_k_norm.weight"
        | "post_attention_norm.weight"
        | "post_ffw_norm.weight" => Role::Copy,
        "attn_q.weight" | "attn_q.bias" => {
            if kv {
                Role::QRows
            } else {
                Role::Copy
            }
        }
        "attn_k.weight" | "attn_k.bias" | "attn_v.weight" | "attn_v.bias" => {
            if kv {
                Role::KvRows
            } else {
                Role::Copy
            }
        }
        "attn_output.weight" => {
            if kv {
                Role::OutCols
            } else {
                Role::Copy
            }
        }
        "ffn_gate.weight" | "ffn_gate.bias" | "ffn_up.weight" | "ffn_up.bias" => {
            if ffn {
                Role::FfnRows
            } else {
                Role::Copy
            }
        }
        "ffn_down.weight" => {
            if ffn {
                Role::DownCols
            } else {
                Role::Copy
            }
        }
        _ if !spec.prunes_width() => Role::Copy,
        _ => return None,
    })
}

/// Check what the options cannot: per-block widths, block lists, counts.
fn check(cfg: &LlamaConfig, spec: &StructuredSpec, prefix: &str) -> Result<()> {
    let field = |f: &str| format!("{prefix}.{f}");
    if spec.layers.is_some() && cfg.n_swa > 0 && cfg.swa_pattern > 0 {
        return Err(Error::field(
            field(if matches!(spec.layers, Some(LayerChoice::List(_))) { "remove_layers" } else { "layers" }),
            format!(
                "this model alternates sliding-window and global attention by block index (every {}th block \
                 global): removing blocks would move that pattern; prune FFN channels or KV heads instead",
                cfg.swa_pattern
            ),
        ));
    }
    if let Some(LayerChoice::List(v)) = &spec.layers {
        let mut seen = std::collections::BTreeSet::new();
        for &l in v {
            if l >= cfg.n_layer {
                return Err(Error::field(
                    field("remove_layers"),
                    format!("block {l} does not exist (the model has blocks 0..{})", cfg.n_layer - 1),
                ));
            }
            if !seen.insert(l) {
                return Err(Error::field(field("remove_layers"), format!("block {l} is listed twice")));
            }
        }
        if v.is_empty() || v.len() >= cfg.n_layer {
            return Err(Error::field(
                field("remove_layers"),
                format!("removing {} of {} blocks: remove at least one and keep at least one", v.len(), cfg.n_layer),
            ));
        }
    }
    if let Some(LayerChoice::Count { n, .. }) = spec.layers {
        if n == 0 || n >= cfg.n_layer {
            return Err(Error::field(
                field("layers"),
                format!("removing {n} of {} blocks: remove at least one and keep at least one", cfg.n_layer),
            ));
        }
    }
    Ok(())
}

/// Per-block widths in the metadata, which structured pruning does not handle.
fn check_uniform(meta: &Metadata, arch: &str) -> Result<()> {
    for key in ["feed_forward_length", "attention.head_count", "attention.head_count_kv"] {
        if matches!(meta.get(&format!("{arch}.{key}")), Some(Value::Array(_))) {
            return Err(Error::Invalid(format!(
                "{arch}.{key} differs per block in this model; structured pruning needs one width for all blocks"
            )));
        }
    }
    Ok(())
}

/// Score the blocks on the dense model and choose `n` to remove.
fn score_layers(
    runner: &Runner,
    mut x: Vec<f32>,
    n_ctx: usize,
    n: usize,
    how: LayerScore,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<(Vec<usize>, Vec<f64>)> {
    let (n_layer, e) = (runner.config.n_layer, runner.config.n_embd);
    progress.start("score blocks", n_layer as u64);
    let mut scores = Vec::new();
    // Angular: the last n + 1 block inputs; influence: the previous one.
    let mut states: VecDeque<Vec<f32>> = VecDeque::new();
    states.push_back(x.clone());
    let mut none = |_: Group, _: &mut Layer, _: &mut [f32]| -> crunch_calib::Result<()> { Ok(()) };
    for i in 0..n_layer {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let mut layer = runner.load_layer(i).map_err(calib_err)?;
        runner.forward_layer(&mut layer, &mut x, n_ctx, &mut none).map_err(calib_err)?;
        match how {
            LayerScore::Influence => {
                let prev = states.pop_front().unwrap_or_default();
                let (cos, _) = st::mean_cosine_and_angle(&prev, &x, e);
                scores.push(1.0 - cos);
                states.push_back(x.clone());
            }
            LayerScore::Angular => {
                states.push_back(x.clone());
                if states.len() > n + 1 {
                    states.pop_front();
                }
                if states.len() == n + 1 {
                    let (_, angle) = st::mean_cosine_and_angle(&states[0], &states[n], e);
                    scores.push(angle);
                }
            }
        }
        progress.advance((i + 1) as u64, &format!("block {}/{n_layer}", i + 1));
    }
    let removed =
        st::layers_to_remove(how, &scores, n_layer, n).map_err(|e| Error::field("prune.layers", e.to_string()))?;
    Ok((removed, scores))
}

/// Output energy error of replacing `w` by `w_new` (both `n_out` rows of `n_in`) under the
/// second moment `h`: `(tr(Δ H Δᵀ), tr(W H Wᵀ))`.
fn output_error(w: &[f32], w_new: &[f32], n_in: usize, h: &[f32]) -> f64 {
    let delta: Vec<f32> = w.iter().zip(w_new).map(|(a, b)| a - b).collect();
    let energy = |m: &[f32]| -> f64 {
        let mh = linalg::matmul_xwt(m, n_in, h, n_in); // m Hᵀ = m H
        mh.iter().zip(m).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let total = energy(w);
    if total > 0.0 {
        energy(&delta) / total
    } else {
        0.0
    }
}

/// Kept columns and refit weights of one block.
#[derive(Default)]
struct BlockCut {
    /// Kept KV groups.
    kv: Vec<usize>,
    /// Kept FFN channels.
    ffn: Vec<usize>,
    /// `attn_output` on the kept query columns (rows of `kept heads · head_dim`).
    out: Vec<f32>,
    /// `ffn_down` on the kept channels.
    down: Vec<f32>,
}

/// Run block `layer` on `x`, choosing its kept groups and channels and refitting the consumers;
/// the block then computes what the pruned block computes (zero columns), so the next block
/// sees the pruned model's hidden states.
fn cut_block(
    runner: &Runner,
    layer: &mut Layer,
    x: &mut [f32],
    n_ctx: usize,
    spec: &StructuredSpec,
    notes: &mut Vec<RefitTensor>,
    out_name: &dyn Fn(&str) -> String,
) -> Result<BlockCut> {
    let c = &runner.config;
    let group_width = c.n_head / c.n_head_kv * c.head_dim;
    let mut cut = BlockCut::default();
    let mut hook = |grp: Group, l: &mut Layer, input: &mut [f32]| -> crunch_calib::Result<()> {
        let (keep_groups, width, lin) = match (grp, spec.kv_keep, spec.ffn_keep) {
            (Group::Out, Some(k), _) => (k, group_width, &mut l.o),
            (Group::Down, _, Some(k)) => (k, 1, &mut l.down),
            _ => return Ok(()),
        };
        let n_in = lin.n_in;
        let mut h = vec![0f32; n_in * n_in];
        linalg::add_xtx(&mut h, input, n_in);
        let scores = st::column_scores(&lin.w, n_in, &h);
        let groups = st::keep_groups(&scores, width, keep_groups);
        let cols = st::group_columns(&groups, width);
        let compact = if spec.refit {
            st::refit_columns(&lin.name, &lin.w, n_in, &h, &cols, spec.damp)?
        } else {
            st::select_columns(&lin.w, n_in, &cols)
        };
        let full = st::scatter_columns(&compact, n_in, &cols);
        notes.push(RefitTensor {
            name: out_name(&lin.name),
            columns_before: n_in,
            columns_after: cols.len(),
            output_error: output_error(&lin.w, &full, n_in, &h),
        });
        lin.w = full;
        if grp == Group::Out {
            cut.kv = groups;
            cut.out = compact;
        } else {
            cut.ffn = groups;
            cut.down = compact;
        }
        Ok(())
    };
    runner.forward_layer(layer, x, n_ctx, &mut hook).map_err(calib_err)?;
    Ok(cut)
}

/// Rows `rows` of a tensor's data (each row `row_bytes` long).
fn take_rows(data: &[u8], row_bytes: usize, rows: impl Iterator<Item = usize>) -> Vec<u8> {
    rows.flat_map(|r| data[r * row_bytes..(r + 1) * row_bytes].iter().copied()).collect()
}

/// The output tensor for input tensor `t` of a block, with its data.
fn block_tensor(
    file: &GgufFile,
    t: &TensorInfo,
    role: Role,
    cut: &BlockCut,
    cfg: &LlamaConfig,
) -> Result<(Vec<u64>, GgmlType, Vec<u8>)> {
    let data = file.tensor_data(t);
    let hd = cfg.head_dim;
    let per_group = cfg.n_head / cfg.n_head_kv;
    let row_len = t.row_len() as usize;
    let row_bytes = t.ty.row_size(row_len).ok_or_else(|| Error::Invalid(format!("{}: bad row size", t.name)))?;
    // A 1-D tensor (a bias) is sliced by element: one "row" per element of a plain float type.
    let (unit_bytes, n_units) = if t.dims.len() == 1 {
        if t.ty.block_size() != 1 {
            return Err(Error::Invalid(format!("{}: cannot slice a {} vector", t.name, t.ty)));
        }
        (t.ty.type_size(), row_len)
    } else {
        (row_bytes, t.n_rows() as usize)
    };
    let rows_of = |units: Vec<usize>| -> Result<(Vec<u64>, GgmlType, Vec<u8>)> {
        if let Some(&u) = units.iter().find(|&&u| u >= n_units) {
            return Err(Error::Invalid(format!("{}: row {u} out of {n_units}", t.name)));
        }
        let mut dims = t.dims.clone();
        *dims.last_mut().expect("tensor has dims") = units.len() as u64;
        Ok((dims, t.ty, take_rows(data, unit_bytes, units.into_iter())))
    };
    match role {
        Role::Copy => Ok((t.dims.clone(), t.ty, data.to_vec())),
        Role::QRows => rows_of(cut.kv.iter().flat_map(|&g| (g * per_group * hd)..((g + 1) * per_group * hd)).collect()),
        Role::KvRows => rows_of(cut.kv.iter().flat_map(|&g| (g * hd)..((g + 1) * hd)).collect()),
        Role::FfnRows => rows_of(cut.ffn.clone()),
        Role::OutCols | Role::DownCols => {
            let m = if role == Role::OutCols { &cut.out } else { &cut.down };
            let k = if role == Role::OutCols { cut.kv.len() * per_group * hd } else { cut.ffn.len() };
            let n_rows = t.n_rows();
            if m.len() as u64 != n_rows * k as u64 {
                return Err(Error::Invalid(format!(
                    "{}: refit has {} values for {n_rows} rows of {k}",
                    t.name,
                    m.len()
                )));
            }
            let bytes: Vec<u8> = m.iter().flat_map(|v| v.to_le_bytes()).collect();
            Ok((vec![k as u64, n_rows], GgmlType::F32, bytes))
        }
    }
}

/// Prune `model` structurally and write the result to `dest` (a GGUF whose changed tensors are
/// F32, for the quantizer to convert). `text` is needed when [`StructuredSpec::needs_calibration`].
///
/// # Errors
/// Options that do not fit the model (named by field), a model outside the Llama family, text
/// shorter than one chunk, I/O errors, cancellation.
pub fn prune_structured(
    model: &Path,
    spec: &StructuredSpec,
    text: Option<(&TextSource, ChunkOptions)>,
    dest: &Path,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<StructuredReport> {
    let t0 = Instant::now();
    let file = Arc::new(GgufFile::open(model)?);
    let meta = file.metadata();
    let arch = meta
        .architecture()
        .ok_or_else(|| Error::Invalid(format!("{}: no general.architecture", model.display())))?
        .to_string();
    let cfg = LlamaConfig::from_metadata(meta)
        .map_err(|source| Error::Model { context: model.display().to_string(), source })?;
    check_uniform(meta, &arch)?;
    check(&cfg, spec, "prune")?;

    let calib = match (spec.needs_calibration(), text) {
        (false, _) => None,
        (true, None) => {
            return Err(Error::field(
                "prune.text",
                "choosing blocks, channels or heads to remove needs calibration text (a text file, or random:N)",
            ))
        }
        (true, Some((src, opts))) => {
            let runner = Runner::new(file.clone()).map_err(calib_err)?;
            let tok = crunch_model::tokenizer::Tokenizer::from_gguf(&file)?;
            let chunks = text::load_chunks(src, &tok, opts).map_err(calib_err)?;
            Some((runner, chunks))
        }
    };

    let (removed, layer_scores, layer_score) = match &spec.layers {
        None => (Vec::new(), Vec::new(), None),
        Some(LayerChoice::List(v)) => {
            let mut v = v.clone();
            v.sort_unstable();
            (v, Vec::new(), None)
        }
        Some(LayerChoice::Count { n, score }) => {
            let (runner, chunks) = calib.as_ref().expect("calibration loaded above");
            let x = runner.embed(&chunks.chunks).map_err(calib_err)?;
            let (r, s) = score_layers(runner, x, chunks.n_ctx, *n, *score, progress, cancel)?;
            (r, s, Some(*score))
        }
    };
    let kept: Vec<usize> = (0..cfg.n_layer).filter(|l| !removed.contains(l)).collect();
    let new_index: BTreeMap<usize, usize> = kept.iter().enumerate().map(|(j, &i)| (i, j)).collect();

    // The output's metadata and header, known before any data is read.
    let mut out_meta = meta.clone();
    let per_group = cfg.n_head / cfg.n_head_kv;
    let n_ff = spec.ffn_keep.unwrap_or(cfg.n_ff);
    let n_kv = spec.kv_keep.unwrap_or(cfg.n_head_kv);
    out_meta.set(&format!("{arch}.block_count"), Value::U32(kept.len() as u32));
    out_meta.set(&format!("{arch}.feed_forward_length"), Value::U32(n_ff as u32));
    if spec.kv_keep.is_some() {
        out_meta.set(&format!("{arch}.attention.head_count"), Value::U32((n_kv * per_group) as u32));
        out_meta.set(&format!("{arch}.attention.head_count_kv"), Value::U32(n_kv as u32));
        // The head size no longer follows from n_embd / n_head: say it.
        out_meta.set(&format!("{arch}.attention.key_length"), Value::U32(cfg.head_dim as u32));
        out_meta.set(&format!("{arch}.attention.value_length"), Value::U32(cfg.head_dim as u32));
    }
    let hd = cfg.head_dim;
    let shape_of = |t: &TensorInfo, role: Role| -> (Vec<u64>, GgmlType) {
        let mut dims = t.dims.clone();
        let last = dims.len() - 1;
        match role {
            Role::Copy => {}
            Role::QRows => dims[last] = (n_kv * per_group * hd) as u64,
            Role::KvRows => dims[last] = (n_kv * hd) as u64,
            Role::FfnRows => dims[last] = n_ff as u64,
            Role::OutCols => return (vec![(n_kv * per_group * hd) as u64, t.n_rows()], GgmlType::F32),
            Role::DownCols => return (vec![n_ff as u64, t.n_rows()], GgmlType::F32),
        }
        (dims, t.ty)
    };
    let mut globals: Vec<&TensorInfo> = Vec::new();
    let mut blocks: BTreeMap<usize, Vec<(&TensorInfo, Role)>> = BTreeMap::new();
    for t in file.tensors() {
        match block_of(&t.name) {
            None => globals.push(t),
            Some((i, rest)) => {
                if i >= cfg.n_layer {
                    return Err(Error::Invalid(format!("{}: block {i} beyond block_count {}", t.name, cfg.n_layer)));
                }
                let role = role(rest, spec).ok_or_else(|| {
                    Error::Invalid(format!("{}: structured pruning does not know how to resize this tensor", t.name))
                })?;
                if new_index.contains_key(&i) {
                    blocks.entry(i).or_default().push((t, role));
                }
            }
        }
    }
    let rename = |name: &str| -> String {
        match block_of(name) {
            Some((i, rest)) => format!("blk.{}.{rest}", new_index[&i]),
            None => name.to_string(),
        }
    };
    let mut specs = Vec::new();
    let mut source_types = BTreeMap::new();
    for t in &globals {
        specs.push(TensorSpec { name: t.name.clone(), ty: t.ty, dims: t.dims.clone() });
        source_types.insert(t.name.clone(), t.ty);
    }
    for ts in blocks.values() {
        for (t, role) in ts {
            let (dims, ty) = shape_of(t, *role);
            let name = rename(&t.name);
            source_types.insert(name.clone(), t.ty);
            specs.push(TensorSpec { name, ty, dims });
        }
    }
    let mut w = GgufWriter::create(dest, out_meta, &specs)?;
    for t in &globals {
        w.write_tensor(&t.name, file.tensor_data(t))?;
        file.release_tensor(t);
    }

    // Blocks, in order: prune the widths on the calibration stream, then write.
    let mut refit = Vec::new();
    let mut x = match (&calib, spec.prunes_width()) {
        (Some((runner, chunks)), true) => Some(runner.embed(&chunks.chunks).map_err(calib_err)?),
        _ => None,
    };
    let mut kept_kv_groups = Vec::new();
    progress.start("prune", kept.len() as u64);
    for (j, &i) in kept.iter().enumerate() {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let cut = match (&calib, x.as_mut()) {
            (Some((runner, chunks)), Some(x)) => {
                let mut layer = runner.load_layer(i).map_err(calib_err)?;
                cut_block(runner, &mut layer, x, chunks.n_ctx, spec, &mut refit, &rename)?
            }
            _ => BlockCut::default(),
        };
        if spec.kv_keep.is_some() {
            kept_kv_groups.push(cut.kv.clone());
        }
        for (t, role) in blocks.get(&i).map(Vec::as_slice).unwrap_or_default() {
            let (_, _, data) = block_tensor(&file, t, *role, &cut, &cfg)?;
            w.write_tensor(&rename(&t.name), &data)?;
            file.release_tensor(t);
        }
        progress.advance((j + 1) as u64, &format!("block {}/{}", j + 1, kept.len()));
    }
    w.finish()?;
    let seconds = t0.elapsed().as_secs_f64();
    progress.finish(&format!(
        "{} of {} blocks kept, FFN {} -> {}, heads {} -> {} in {seconds:.1} s",
        kept.len(),
        cfg.n_layer,
        cfg.n_ff,
        n_ff,
        cfg.n_head,
        n_kv * per_group
    ));
    Ok(StructuredReport {
        n_layer_before: cfg.n_layer,
        n_layer_after: kept.len(),
        removed_layers: removed,
        layer_score,
        layer_scores,
        n_ff_before: cfg.n_ff,
        n_ff_after: n_ff,
        n_head_before: cfg.n_head,
        n_head_after: n_kv * per_group,
        n_head_kv_before: cfg.n_head_kv,
        n_head_kv_after: n_kv,
        kept_kv_groups,
        refit,
        source_types,
        seconds,
    })
}

/// Structured pruning options as a job or a recipe writes them (every field optional).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StructuredOptions {
    /// Remove this many blocks, chosen by `layer_score` on the calibration text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
    /// Remove these blocks (0-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_layers: Option<Vec<usize>>,
    /// `angular` (default) or `influence`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_score: Option<String>,
    /// The fraction of FFN channels every block keeps, in (0, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn: Option<f64>,
    /// The kept FFN width is rounded to a multiple of this (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn_multiple: Option<usize>,
    /// KV groups removed from every block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_kv_groups: Option<usize>,
    /// Refit the narrowed layers by least squares (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refit: Option<bool>,
    /// Calibration chunks when a fit or search prunes (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<usize>,
    /// Calibration tokens per chunk when a fit or search prunes (default 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctx: Option<usize>,
}

impl StructuredOptions {
    /// Whether anything is asked for.
    pub fn is_empty(&self) -> bool {
        self.layers.is_none() && self.remove_layers.is_none() && self.ffn.is_none() && self.drop_kv_groups.is_none()
    }

    /// A short label: `-4 blocks, FFN 75%, -1 KV group`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.layers {
            parts.push(format!("-{n} blocks"));
        }
        if let Some(v) = &self.remove_layers {
            parts.push(format!("-blocks {}", v.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(",")));
        }
        if let Some(f) = self.ffn {
            parts.push(format!("FFN {:.0}%", f * 100.0));
        }
        if let Some(d) = self.drop_kv_groups {
            parts.push(format!("-{d} KV group{}", if d == 1 { "" } else { "s" }));
        }
        parts.join(", ")
    }

    /// Check the options against a model's widths; `prefix` names the fields in errors
    /// (`prune` gives `prune.ffn`).
    ///
    /// # Errors
    /// Values out of range, nothing asked for, both a count and a list of blocks.
    pub fn spec(&self, cfg: &LlamaConfig, prefix: &str) -> Result<StructuredSpec> {
        let field = |f: &str| format!("{prefix}.{f}");
        if self.is_empty() {
            return Err(Error::field(
                field("layers"),
                "structured pruning needs layers, remove_layers, ffn or drop_kv_groups",
            ));
        }
        let layers = match (self.layers, &self.remove_layers) {
            (Some(_), Some(_)) => {
                return Err(Error::field(
                    field("remove_layers"),
                    "give either a number of blocks to remove or a list, not both",
                ))
            }
            (Some(n), None) => {
                let score: LayerScore = self
                    .layer_score
                    .as_deref()
                    .unwrap_or("angular")
                    .parse()
                    .map_err(|e: String| Error::field(field("layer_score"), e))?;
                Some(LayerChoice::Count { n, score })
            }
            (None, Some(v)) => Some(LayerChoice::List(v.clone())),
            (None, None) => None,
        };
        let ffn_keep = match self.ffn {
            None => None,
            Some(f) if !(f.is_finite() && f > 0.0 && f < 1.0) => {
                return Err(Error::field(
                    field("ffn"),
                    format!(
                    "{f} is not a fraction strictly between 0 and 1 (0.75 keeps three quarters of the FFN channels)"
                ),
                ))
            }
            Some(f) => {
                let m = self.ffn_multiple.unwrap_or(32);
                if m == 0 || m >= cfg.n_ff {
                    return Err(Error::field(
                        field("ffn_multiple"),
                        format!("{m} must be positive and below the FFN width {}", cfg.n_ff),
                    ));
                }
                let keep = (((f * cfg.n_ff as f64) / m as f64).round() as usize).max(1) * m;
                if keep >= cfg.n_ff {
                    return Err(Error::field(
                        field("ffn"),
                        format!("{f} of {} channels rounded to a multiple of {m} keeps them all; keep fewer", cfg.n_ff),
                    ));
                }
                Some(keep)
            }
        };
        let kv_keep = match self.drop_kv_groups {
            None => None,
            Some(d) if d == 0 || d >= cfg.n_head_kv => {
                return Err(Error::field(
                    field("drop_kv_groups"),
                    format!(
                        "{d}: this model has {} KV groups per block ({} query heads over {} K/V heads); drop at least one and keep at least one",
                        cfg.n_head_kv, cfg.n_head, cfg.n_head_kv
                    ),
                ))
            }
            Some(d) => Some(cfg.n_head_kv - d),
        };
        let spec = StructuredSpec { layers, ffn_keep, kv_keep, refit: self.refit.unwrap_or(true), damp: 0.01 };
        check(cfg, &spec, prefix)?;
        Ok(spec)
    }
}

impl StructuredSpec {
    /// A short label of what goes: `-4 blocks, FFN 1152/1536, KV 2/3`.
    pub fn label(&self, cfg: &LlamaConfig) -> String {
        let mut parts = Vec::new();
        match &self.layers {
            Some(LayerChoice::Count { n, .. }) => parts.push(format!("-{n} blocks")),
            Some(LayerChoice::List(v)) => parts.push(format!("-{} blocks", v.len())),
            None => {}
        }
        if let Some(k) = self.ffn_keep {
            parts.push(format!("FFN {k}/{}", cfg.n_ff));
        }
        if let Some(k) = self.kv_keep {
            parts.push(format!("KV {k}/{}", cfg.n_head_kv));
        }
        parts.join(", ")
    }
}

/// Removes a scratch folder when dropped.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A structurally pruned model, written.
#[derive(Clone, Debug)]
pub struct PrunedFile {
    pub structured: StructuredReport,
    pub plan: Plan,
    pub result: QuantizeReport,
}

/// Prune `model` structurally and write the result to `output` (atomically, with a `.sha256`
/// sidecar): every tensor in its input type (`ftype: None`) or planned for a preset. The
/// intermediate model lives in `OUTPUT.prune-tmp/` and is removed however the work ends.
///
/// # Errors
/// As [`prune_structured`]; planning and writing errors.
pub fn prune_to_file(
    model: &Path,
    spec: &StructuredSpec,
    text: Option<(&TextSource, ChunkOptions)>,
    output: &Path,
    ftype: Option<Ftype>,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<PrunedFile> {
    let scratch = Scratch(PathBuf::from(format!("{}.prune-tmp", output.display())));
    std::fs::create_dir_all(&scratch.0).map_err(|e| Error::io(&scratch.0, e))?;
    let pruned_path = scratch.0.join("structured.gguf");
    let structured = prune_structured(model, spec, text, &pruned_path, progress, cancel)?;
    let pruned = GgufFile::open(&pruned_path)?;
    let input = GgufFile::open(model)?;
    let file_ftype =
        input.metadata().get_u64("general.file_type").and_then(|c| Ftype::from_code(c as u32)).unwrap_or(Ftype::F32);
    let plan = match ftype {
        None => quantize::plan::with_types(pruned.tensors(), &structured.source_types, file_ftype),
        Some(f) => {
            let mut o = QuantizeOptions::new(f);
            o.allow_requantize = true;
            quantize::build_plan(pruned.metadata(), pruned.tensors(), &o)?
        }
    };
    let result = quantize::execute(&pruned, &plan, output, None, progress, cancel)?;
    Ok(PrunedFile { structured, plan, result })
}
