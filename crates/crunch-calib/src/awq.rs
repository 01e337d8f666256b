//! AWQ (Lin et al., 2023): activation-aware per-input-channel scaling, searched on calibration
//! activations and folded into the layer before, so the model keeps its shape and tensors.
//!
//! For a group of linear layers sharing an input `x`, a scale `s_c` per input channel multiplies
//! the weights' columns (`W' = W·diag(s)`) and divides the input (`x' = x / s`), which leaves the
//! product unchanged but moves quantization error away from channels with large activations.
//! Candidates are `s = mean|x|^α / mean|W|^(1-α)` (normalized, `mean|W|` relative to each
//! quantization block's maximum) for `α` on a grid, plus no scaling; each candidate's weights are
//! quantized onto their real targets ([`Grid`]: a GGUF type, or the integer groups a GPU
//! checkpoint will store) and the one with the smallest output error
//! `‖x (W - Q(W·s)/s)ᵀ‖²` on a sample of tokens wins. The division of `x` is folded into the
//! RMSNorm weight before q/k/v and gate/up, into `attn_v`'s rows before `attn_output` (one scale
//! per key/value channel, shared by the query heads of a group under GQA) and into `ffn_up`'s
//! rows before `ffn_down`.

use crate::error::Result;
use crate::grid::Grid;
use crate::linalg;
use crate::runner::{column_abs_mean, Group, Layer};
use rayon::prelude::*;

/// AWQ settings.
#[derive(Clone, Copy, Debug)]
pub struct AwqOptions {
    /// Points of the `α` grid in `[0, 1)`.
    pub grid: usize,
    /// Tokens used to measure each candidate's output error (an even sample of all).
    pub max_tokens: usize,
}

impl Default for AwqOptions {
    fn default() -> Self {
        AwqOptions { grid: 20, max_tokens: 4096 }
    }
}

/// What the target of one weight is during the search.
pub struct Target<'a> {
    /// The weight's name (for errors).
    pub name: &'a str,
    /// What it will be rounded onto.
    pub grid: Grid,
    /// Importance of the unscaled input channels (an imatrix row), if any; a type's quantizer
    /// uses it, integer groups ignore it.
    pub importance: Option<&'a [f32]>,
}

/// Search result for one group.
#[derive(Clone, Debug)]
pub struct AwqChoice {
    /// Per input channel (after GQA tying).
    pub scales: Vec<f32>,
    /// Chosen `α`, `None` when no scaling was best.
    pub alpha: Option<f32>,
    pub loss: f64,
    pub loss_unscaled: f64,
}

fn sample_rows(x: &[f32], n: usize, max: usize) -> Vec<f32> {
    let rows = x.len() / n;
    if rows <= max {
        return x.to_vec();
    }
    let step = rows as f64 / max as f64;
    (0..max).flat_map(|i| x[(i as f64 * step) as usize * n..][..n].iter().copied()).collect()
}

/// Mean over rows of `|w| / max|w| of its block` per column (`w` rows of `n_in`).
fn weight_mean(w: &[f32], n_in: usize, block: usize) -> Vec<f32> {
    let rows = w.len() / n_in;
    let mut acc = vec![0f64; n_in];
    for row in w.chunks_exact(n_in) {
        for (b, blk) in row.chunks(block).enumerate() {
            let m = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
            if m > 0.0 {
                for (j, v) in blk.iter().enumerate() {
                    acc[b * block + j] += (v.abs() / m) as f64;
                }
            }
        }
    }
    acc.iter().map(|&s| (s / rows.max(1) as f64) as f32).collect()
}

/// Tie scales of query heads that share a key/value head (geometric mean), so the division can
/// be folded into `attn_v`'s rows. `s` has `n_head * head_dim` entries.
fn tie_gqa(s: &mut [f32], n_head: usize, n_head_kv: usize, head_dim: usize) {
    let group = n_head / n_head_kv.max(1);
    if group <= 1 {
        return;
    }
    for kvh in 0..n_head_kv {
        for d in 0..head_dim {
            let idx: Vec<usize> = (0..group).map(|g| ((kvh * group + g) * head_dim) + d).collect();
            let m = (idx.iter().map(|&i| (s[i] as f64).ln()).sum::<f64>() / group as f64).exp() as f32;
            for i in idx {
                s[i] = m;
            }
        }
    }
}

/// Output error of quantizing `linears` (weights, rows of `n_in`) with column scales `s`.
fn scaled_error(xs: &[f32], n_in: usize, linears: &[(&[f32], Target)], s: Option<&[f32]>) -> Result<f64> {
    let mut total = 0f64;
    for (w, t) in linears {
        let n_out = w.len() / n_in;
        let mut ws = w.to_vec();
        let mut imp = t.importance.map(<[f32]>::to_vec);
        if let Some(s) = s {
            ws.par_chunks_mut(n_in).for_each(|r| r.iter_mut().zip(s).for_each(|(v, f)| *v *= f));
            if let Some(i) = imp.as_mut() {
                i.iter_mut().zip(s).for_each(|(v, f)| *v /= f * f);
            }
        }
        let ws = t.grid.round_trip(t.name, &ws, n_in, imp.as_deref())?;
        let diff: Vec<f32> = w
            .par_chunks(n_in)
            .zip(ws.par_chunks(n_in))
            .flat_map_iter(|(a, b)| a.iter().zip(b).enumerate().map(move |(j, (x, y))| x - y / s.map_or(1.0, |s| s[j])))
            .collect();
        let y = linalg::matmul_xwt(xs, n_in, &diff, n_out);
        total += y.par_iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>();
    }
    Ok(total)
}

/// Search the scales for a group of linear layers with input `x` (rows of `n_in`).
/// `gqa`: `(n_head, n_head_kv, head_dim)` when the scales must be tied per key/value head.
///
/// # Errors
/// Quantization errors (unsupported types, sizes that do not fit the grid), naming the weight.
pub fn search(
    x: &[f32],
    n_in: usize,
    linears: &[(&[f32], Target)],
    gqa: Option<(usize, usize, usize)>,
    opts: AwqOptions,
) -> Result<AwqChoice> {
    let xs = sample_rows(x, n_in, opts.max_tokens);
    let x_mean = column_abs_mean(x, n_in);
    let block = linears.first().map_or(32, |(_, t)| t.grid.block().max(1));
    let all_w: Vec<f32> = linears.iter().flat_map(|(w, _)| w.iter().copied()).collect();
    let w_mean = weight_mean(&all_w, n_in, block);
    drop(all_w);
    let base = scaled_error(&xs, n_in, linears, None)?;
    let mut best = AwqChoice { scales: vec![1.0; n_in], alpha: None, loss: base, loss_unscaled: base };
    for i in 0..opts.grid.max(1) {
        let alpha = i as f32 / opts.grid.max(1) as f32;
        let mut s: Vec<f32> = x_mean
            .iter()
            .zip(&w_mean)
            .map(|(&xm, &wm)| (xm.max(1e-8).powf(alpha) / wm.max(1e-8).powf(1.0 - alpha)).max(1e-4))
            .collect();
        let (mx, mn) = s.iter().fold((0f32, f32::INFINITY), |(a, b), &v| (a.max(v), b.min(v)));
        let norm = (mx * mn).sqrt();
        s.iter_mut().for_each(|v| *v /= norm);
        if let Some((h, hkv, d)) = gqa {
            tie_gqa(&mut s, h, hkv, d);
        }
        if s.iter().any(|v| !v.is_finite() || *v <= 0.0) {
            continue;
        }
        let loss = scaled_error(&xs, n_in, linears, Some(&s))?;
        if loss < best.loss {
            best = AwqChoice { scales: s, alpha: Some(alpha), loss, loss_unscaled: base };
        }
    }
    Ok(best)
}

fn scale_columns(w: &mut [f32], n_in: usize, s: &[f32]) {
    w.par_chunks_mut(n_in).for_each(|r| r.iter_mut().zip(s).for_each(|(v, f)| *v *= f));
}

fn divide_rows(w: &mut [f32], n_in: usize, s: &[f32]) {
    w.par_chunks_mut(n_in).zip(s.par_iter()).for_each(|(r, f)| r.iter_mut().for_each(|v| *v /= f));
}

/// Fold the scales chosen for `g` into `layer` and divide the group's `input` (rows of the
/// group's input width) to match. Returns the names of the tensors that changed (a divided
/// bias by its own name, [`Layer`]'s `Linear::bias_name`).
pub fn apply(layer: &mut Layer, g: Group, s: &[f32], input: &mut [f32], gqa: (usize, usize, usize)) -> Vec<String> {
    let n = s.len();
    input.par_chunks_mut(n).for_each(|r| r.iter_mut().zip(s).for_each(|(v, f)| *v /= f));
    let mut changed = Vec::new();
    match g {
        Group::Qkv | Group::GateUp => {
            let (attn, ffn) = (layer.attn_norm_name(), layer.ffn_norm_name());
            let (norm, name) =
                if g == Group::Qkv { (&mut layer.norms.attn, attn) } else { (&mut layer.norms.ffn, ffn) };
            norm.iter_mut().zip(s).for_each(|(v, f)| *v /= f);
            changed.push(name);
        }
        Group::Out => {
            let (n_head, n_head_kv, hd) = gqa;
            let group = n_head / n_head_kv.max(1);
            let s_kv: Vec<f32> = (0..n_head_kv * hd).map(|c| s[(c / hd) * group * hd + c % hd]).collect();
            let v = &mut layer.v;
            divide_rows(&mut v.w, v.n_in, &s_kv);
            if let Some(b) = v.bias.as_mut() {
                b.iter_mut().zip(&s_kv).for_each(|(x, f)| *x /= f);
                changed.push(v.bias_name());
            }
            changed.push(v.name.clone());
        }
        Group::Down => {
            let up = &mut layer.up;
            divide_rows(&mut up.w, up.n_in, s);
            if let Some(b) = up.bias.as_mut() {
                b.iter_mut().zip(s).for_each(|(x, f)| *x /= f);
                changed.push(up.bias_name());
            }
            changed.push(up.name.clone());
        }
    }
    for lin in layer.group_mut(g) {
        scale_columns(&mut lin.w, lin.n_in, s);
        changed.push(lin.name.clone());
    }
    changed
}
