//! GPTQ (Frantar et al., 2022) rounding onto GGUF grids and group-wise integers.
//!
//! For a weight `W` (`n_out × n_in`) and the Hessian `H = Σ xᵀx` of its inputs, columns are
//! quantized one at a time; each column's rounding error, divided by the diagonal of `U`
//! (`Uᵀ U = H⁻¹`), is spread over the columns not yet quantized (`w_k -= U_jk · err`), lazily in
//! blocks of `block` columns. The grid comes from the target ([`Grid`]). A GGUF type: when the
//! first column of one of its blocks is reached, the type's own quantizer (importance-weighted
//! when an imatrix is given) encodes the block as it now stands, which fixes its scales; every
//! column of that block is then rounded to the nearest value those scales allow, and at the end
//! the codes are packed into the encoded blocks, so the tensor is exactly what GPTQ chose, in the
//! type's real format. Group-wise integers ([`IntSpec`]): when the first column of a group is
//! reached, each row's scale and zero come from round-to-nearest ([`hfq::rtn_params`]) on the
//! group's current (error-updated) values, as GPTQ's reference does without static groups; each
//! column is rounded to the nearest code ([`hfq::code_of`]) and the result is an [`IntGroups`].
//!
//! The sweep itself (`sweep`) is shared with SparseGPT ([`crate::prune`]), which adds a pruning
//! mask to it and may run it without a grid.

pub mod grid;

use crate::error::{CalibError, Result};
use crate::grid::Grid;
use crate::linalg;
use crate::prune::{self, Sparsity};
use crunch_core::GgmlType;
use crunch_quant::hfq::{self, IntGroups, IntSpec};
use grid::{type_grid, TypeGrid};
use half::f16;
use rayon::prelude::*;

/// GPTQ settings.
#[derive(Clone, Copy, Debug)]
pub struct GptqOptions {
    /// Dampening as a fraction of the mean of `diag(H)` (GPTQ's `percdamp`, default 0.01).
    pub damp: f32,
    /// Columns per lazy-update block (rounded up to a multiple of the type's block size).
    pub block: usize,
    /// Quantize columns in order of decreasing `diag(H)`.
    pub act_order: bool,
    /// Times the dampening is multiplied by 10 and the factorization retried.
    pub tries: usize,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions { damp: 0.01, block: 128, act_order: false, tries: 6 }
    }
}

/// One quantized weight.
#[derive(Clone, Debug)]
pub struct GptqResult {
    /// The tensor in the target type.
    pub bytes: Vec<u8>,
    /// `bytes` dequantized (`n_out × n_in`), what llama.cpp will compute with.
    pub weights: Vec<f32>,
    /// Dampening finally used.
    pub damp: f32,
    /// `Σ (err / U_jj)²`, GPTQ's loss proxy.
    pub loss: f64,
}

/// One weight rounded onto group-wise integers.
#[derive(Clone, Debug)]
pub struct GptqIntResult {
    /// The codes, scales and zeros (rows and columns as given).
    pub groups: IntGroups,
    /// `groups` dequantized (`n_out × n_in`), exactly the values GPTQ computed with.
    pub weights: Vec<f32>,
    /// Dampening finally used.
    pub damp: f32,
    /// `Σ (err / U_jj)²`, GPTQ's loss proxy.
    pub loss: f64,
}

/// A weight in its target's storage.
#[derive(Clone, Debug)]
pub enum Packed {
    /// The tensor in a GGUF type.
    Type(Vec<u8>),
    /// Group-wise integers.
    Int(IntGroups),
}

/// One weight rounded onto a [`Grid`].
#[derive(Clone, Debug)]
pub struct Rounded {
    pub packed: Packed,
    /// `packed` dequantized (`n_out × n_in`).
    pub weights: Vec<f32>,
    /// Dampening finally used.
    pub damp: f32,
    /// `Σ (err / U_jj)²`, GPTQ's loss proxy.
    pub loss: f64,
}

/// Can GPTQ round onto `ty`?
pub fn supports(ty: GgmlType) -> bool {
    type_grid(ty).is_some()
}

/// Quantize `w` (`n_out` rows of `n_in`, row-major) onto `grid` with GPTQ, given `h` (`n_in ×
/// n_in`, row-major, `Σ xᵀx` over calibration tokens) and optional per-column importance (a
/// type's quantizer uses it; integer groups ignore it).
///
/// # Errors
/// A type without a grid, sizes that do not fit, non-finite weights or a scale beyond f16
/// (integers), a Hessian that stays indefinite; each naming `name`.
pub fn quantize_onto(
    name: &str,
    w: &[f32],
    n_in: usize,
    h: &[f32],
    grid: Grid,
    importance: Option<&[f32]>,
    opts: GptqOptions,
) -> Result<Rounded> {
    let r = sweep(name, w, n_in, h, Some((grid, importance)), None, opts)?;
    let packed = r.packed.ok_or_else(|| CalibError::Invalid(format!("{name}: GPTQ onto {grid} packed nothing")))?;
    Ok(Rounded { packed, weights: r.weights, damp: r.damp, loss: r.loss })
}

/// Quantize `w` (`n_out` rows of `n_in`, row-major) to `ty` with GPTQ, given `h` (`n_in × n_in`,
/// row-major, `Σ xᵀx` over calibration tokens) and optional per-column importance.
///
/// # Errors
/// A type without a grid, sizes that do not fit, a Hessian that stays indefinite.
pub fn quantize(
    name: &str,
    w: &[f32],
    n_in: usize,
    h: &[f32],
    ty: GgmlType,
    importance: Option<&[f32]>,
    opts: GptqOptions,
) -> Result<GptqResult> {
    let r = quantize_onto(name, w, n_in, h, Grid::Type(ty), importance, opts)?;
    match r.packed {
        Packed::Type(bytes) => Ok(GptqResult { bytes, weights: r.weights, damp: r.damp, loss: r.loss }),
        Packed::Int(_) => Err(CalibError::Invalid(format!("{name}: GPTQ onto {ty} returned integer groups"))),
    }
}

/// Quantize `w` (`n_out` rows of `n_in`, row-major) onto group-wise integers `spec` with GPTQ,
/// given `h` (`n_in × n_in`, row-major, `Σ xᵀx` over calibration tokens). Each group's scale and
/// zero per row are fixed by round-to-nearest when the sweep reaches the group; with
/// `opts.act_order` the columns are visited by decreasing `diag(H)` but groups stay consecutive
/// columns (a group is fixed when its first column in that order is reached), so the result needs
/// no `g_idx` permutation.
///
/// # Errors
/// A spec that does not fit the weight, non-finite weights, a scale beyond f16, a Hessian that
/// stays indefinite; each naming `name`.
pub fn quantize_int(
    name: &str,
    w: &[f32],
    n_in: usize,
    h: &[f32],
    spec: IntSpec,
    opts: GptqOptions,
) -> Result<GptqIntResult> {
    let r = quantize_onto(name, w, n_in, h, Grid::Int(spec), None, opts)?;
    match r.packed {
        Packed::Int(groups) => Ok(GptqIntResult { groups, weights: r.weights, damp: r.damp, loss: r.loss }),
        Packed::Type(_) => {
            Err(CalibError::Invalid(format!("{name}: GPTQ onto {} returned GGUF blocks", Grid::Int(spec))))
        }
    }
}

/// What one optimal-brain-surgeon sweep produced.
pub(crate) struct Swept {
    /// In the target's storage, when there is a target.
    pub packed: Option<Packed>,
    /// `n_out × n_in`: the packed tensor dequantized, or the swept f32 weights.
    pub weights: Vec<f32>,
    pub damp: f32,
    pub loss: f64,
}

/// The grid a sweep rounds onto. Its state during the sweep is an affine map per row and
/// "slot" (`value = a · level + b` for types, `scale · (code − zero)` for integers): one slot per
/// column for types (positions of a block may differ), one per group for integers.
enum Target<'a> {
    Type { ty: GgmlType, g: &'static TypeGrid, quantize: crunch_quant::QuantizeFn, imp: Option<&'a [f32]> },
    Int(IntSpec),
}

impl Target<'_> {
    /// Columns whose scales are fixed together.
    fn block(&self) -> usize {
        match self {
            Target::Type { ty, .. } => ty.block_size(),
            Target::Int(spec) => spec.group,
        }
    }

    /// Slots per row.
    fn slots(&self, n_in: usize) -> usize {
        match self {
            Target::Type { .. } => n_in,
            Target::Int(spec) => n_in / spec.group,
        }
    }

    /// The slot of the `j`-th column visited, column `c` of the weight.
    #[inline]
    fn slot(&self, j: usize, c: usize) -> usize {
        match self {
            Target::Type { .. } => j,
            Target::Int(spec) => c / spec.group,
        }
    }

    /// The code nearest to `x` on the grid `(a, b)` and its value.
    #[inline]
    fn round(&self, x: f32, a: f32, b: f32) -> (u8, f32) {
        match self {
            Target::Type { g, .. } => {
                let c = g.round(x, a, b);
                (c, a * g.levels.value(c) + b)
            }
            Target::Int(spec) => {
                // `a` is an f16 scale and `b` an integer zero, both exact in f32.
                let c = hfq::code_of(x, f16::from_f32(a), b as u8, spec);
                (c, a * (c as f32 - b))
            }
        }
    }

    /// Largest relative difference allowed between the packed tensor decoded and the values
    /// the sweep computed with: a type's real dequantizer may round `a · level + b` differently;
    /// integers decode exactly.
    fn tolerance(&self) -> f32 {
        match self {
            Target::Type { .. } => 1e-3,
            Target::Int(_) => 0.0,
        }
    }
}

/// The sweep shared by GPTQ and SparseGPT: columns in order (or act-order), each one rounded onto
/// `target`'s grid (GPTQ) and/or masked to zero (SparseGPT, mask chosen per lazy block or per
/// group of `M` as the sweep reaches it, scores `w² / U_jj²`), its error `(w - q) / U_jj` spread
/// over the columns not yet visited. Without a target, surviving weights keep their f32 values
/// and only pruning errors propagate.
pub(crate) fn sweep(
    name: &str,
    w: &[f32],
    n_in: usize,
    h: &[f32],
    target: Option<(Grid, Option<&[f32]>)>,
    sparsity: Option<Sparsity>,
    opts: GptqOptions,
) -> Result<Swept> {
    let target = match target {
        Some((Grid::Type(ty), importance)) => Some(Target::Type {
            ty,
            g: type_grid(ty).ok_or_else(|| CalibError::Invalid(format!("{name}: GPTQ cannot round onto {ty}")))?,
            quantize: crunch_quant::kernels(ty)
                .ok_or_else(|| CalibError::Invalid(format!("{name}: no kernels for {ty}")))?
                .quantize,
            imp: importance.filter(|v| v.len() == n_in),
        }),
        Some((Grid::Int(spec), _)) => {
            let rows = w.len().checked_div(n_in).unwrap_or(0);
            spec.check(name, rows, n_in).map_err(CalibError::Invalid)?;
            if let Some(i) = w.iter().position(|v| !v.is_finite()) {
                return Err(CalibError::Invalid(format!(
                    "{name}: weight {} at row {}, column {} is not finite",
                    w[i],
                    i / n_in,
                    i % n_in
                )));
            }
            Some(Target::Int(spec))
        }
        None => None,
    };
    let bs = target.as_ref().map_or(1, Target::block);
    if n_in == 0 || !n_in.is_multiple_of(bs) || !w.len().is_multiple_of(n_in) || h.len() != n_in * n_in {
        return Err(CalibError::Invalid(format!(
            "{name}: {} weights, rows of {n_in}, Hessian of {} values{}",
            w.len(),
            h.len(),
            target.as_ref().map_or(String::new(), |t| match t {
                Target::Type { ty, .. } => format!(", {ty} blocks of {bs}"),
                Target::Int(spec) => format!(", {} groups of {bs}", Grid::Int(*spec)),
            })
        )));
    }
    if let Some(sp) = sparsity {
        sp.check_row(name, n_in)?;
    }
    let n_out = w.len() / n_in;
    let act_order = opts.act_order && sparsity.is_none();

    // Column order (act-order) and transposed weights: row j of `wt` is column perm[j] of w.
    let mut h = h.to_vec();
    let mut dead = vec![false; n_in];
    for (i, d) in dead.iter_mut().enumerate() {
        if h[i * n_in + i] <= 0.0 {
            *d = true;
            h[i * n_in + i] = 1.0;
        }
    }
    let mut perm: Vec<usize> = (0..n_in).collect();
    if act_order {
        perm.sort_by(|&a, &b| h[b * n_in + b].total_cmp(&h[a * n_in + a]));
    }
    let mut pos = vec![0usize; n_in];
    for (j, &c) in perm.iter().enumerate() {
        pos[c] = j;
    }
    let hp: Vec<f32> = if act_order {
        let mut v = vec![0f32; n_in * n_in];
        v.par_chunks_mut(n_in).enumerate().for_each(|(i, row)| {
            for (j, x) in row.iter_mut().enumerate() {
                *x = h[perm[i] * n_in + perm[j]];
            }
        });
        v
    } else {
        h
    };
    let (u, damp) = linalg::inverse_cholesky_upper(&hp, n_in, opts.damp, opts.tries, name)?;
    drop(hp);
    let mut wt = vec![0f32; n_in * n_out];
    wt.par_chunks_mut(n_out).enumerate().for_each(|(j, row)| {
        let c = perm[j];
        if !dead[c] {
            for (r, x) in row.iter_mut().enumerate() {
                *x = w[r * n_in + c];
            }
        }
    });

    // Grid state: affine maps indexed (slot, row), codes indexed like `wt` (visited column, row);
    // empty without a target.
    let slots = target.as_ref().map_or(0, |t| t.slots(n_in));
    let mut ga = vec![0f32; slots * n_out];
    let mut gb = vec![0f32; slots * n_out];
    let mut codes = vec![0u8; if target.is_some() { n_in * n_out } else { 0 }];
    let (row_bytes, blk_bytes) = match &target {
        Some(Target::Type { ty, .. }) => (
            ty.row_size(n_in)
                .ok_or_else(|| CalibError::Invalid(format!("{name}: rows of {n_in} are not whole {ty} blocks")))?,
            ty.type_size(),
        ),
        _ => (0, 0),
    };
    let mut encoded = vec![0u8; n_out * row_bytes];
    let mut fixed = vec![false; n_in / bs];

    // Lazy blocks hold whole quantization blocks and whole N:M groups.
    let group = match sparsity {
        Some(Sparsity::NM { m, .. }) => m,
        _ => 1,
    };
    let unit = bs / gcd(bs, group) * group;
    let bsz = opts.block.max(1).div_ceil(unit) * unit;
    let mut loss = 0f64;
    let mut mask: Vec<bool> = Vec::new();
    let mut i1 = 0;
    while i1 < n_in {
        let i2 = (i1 + bsz).min(n_in);
        let mut err = vec![0f32; (i2 - i1) * n_out];
        if let Some(sp) = sparsity {
            mask.clear();
            mask.resize((i2 - i1) * n_out, false);
            if let Sparsity::Fraction(s) = sp {
                let scores = obs_scores(&wt, &u, n_in, n_out, i1, i2);
                prune::mark_smallest(&scores, prune::zeros_of(s, scores.len()), &mut mask);
            }
        }
        for j in i1..i2 {
            if let Some(Sparsity::NM { n, m }) = sparsity {
                if j.is_multiple_of(m) {
                    let scores = obs_scores(&wt, &u, n_in, n_out, j, j + m);
                    let mk = &mut mask[(j - i1) * n_out..(j - i1 + m) * n_out];
                    nm_mask(&scores, n_out, m, n, mk);
                }
            }
            if let Some(t) = &target {
                let blk = perm[j] / bs;
                if !fixed[blk] {
                    let masked = sparsity.map(|_| (&mask[..], i1));
                    fix_block(
                        t,
                        blk,
                        bs,
                        n_out,
                        &pos,
                        &wt,
                        masked,
                        &mut ga,
                        &mut gb,
                        &mut encoded,
                        row_bytes,
                        blk_bytes,
                    );
                    fixed[blk] = true;
                }
            }
            let d = u[j * n_in + j];
            let e = &mut err[(j - i1) * n_out..(j - i1 + 1) * n_out];
            let row_w = &mut wt[j * n_out..(j + 1) * n_out];
            let row_m = if sparsity.is_some() { Some(&mask[(j - i1) * n_out..(j - i1 + 1) * n_out]) } else { None };
            let l: f64 = match &target {
                Some(t) => {
                    let k = t.slot(j, perm[j]);
                    let (row_a, row_b, row_c) = (
                        &ga[k * n_out..(k + 1) * n_out],
                        &gb[k * n_out..(k + 1) * n_out],
                        &mut codes[j * n_out..(j + 1) * n_out],
                    );
                    row_w
                        .par_iter_mut()
                        .zip(row_c.par_iter_mut())
                        .zip(e.par_iter_mut())
                        .enumerate()
                        .map(|(r, ((x, c), e))| {
                            let pruned = row_m.is_some_and(|m| m[r]);
                            let (q_code, q) = t.round(if pruned { 0.0 } else { *x }, row_a[r], row_b[r]);
                            *c = q_code;
                            *e = (*x - q) / d;
                            *x = q;
                            (*e as f64) * (*e as f64)
                        })
                        .sum()
                }
                None => row_w
                    .par_iter_mut()
                    .zip(e.par_iter_mut())
                    .enumerate()
                    .map(|(r, (x, e))| {
                        if row_m.is_some_and(|m| m[r]) {
                            *e = *x / d;
                            *x = 0.0;
                        } else {
                            *e = 0.0;
                        }
                        (*e as f64) * (*e as f64)
                    })
                    .sum(),
            };
            loss += l;
            // Intra-block update of the remaining columns of this lazy block.
            let e = &err[(j - i1) * n_out..(j - i1 + 1) * n_out];
            let urow = &u[j * n_in..(j + 1) * n_in];
            wt[(j + 1) * n_out..i2 * n_out].par_chunks_mut(n_out).enumerate().for_each(|(kk, row)| {
                let f = urow[j + 1 + kk];
                if f != 0.0 {
                    for (x, &ev) in row.iter_mut().zip(e) {
                        *x -= f * ev;
                    }
                }
            });
        }
        linalg::lazy_update(&mut wt, n_out, &u, n_in, i1, i2, &err);
        i1 = i2;
    }
    drop(u);

    let Some(t) = target else {
        // No grid: the swept f32 weights, back in row-major order.
        let mut weights = vec![0f32; n_out * n_in];
        weights.par_chunks_mut(n_in).enumerate().for_each(|(r, row)| {
            for (c, x) in row.iter_mut().enumerate() {
                *x = wt[pos[c] * n_out + r];
            }
        });
        return Ok(Swept { packed: None, weights, damp, loss });
    };
    let mut weights = vec![0f32; n_out * n_in];
    let packed = match &t {
        Target::Type { ty, g, .. } => {
            drop((ga, gb));
            // Pack codes into the encoded blocks, row by row (original column order).
            encoded.par_chunks_mut(row_bytes).enumerate().for_each(|(r, row)| {
                let mut c = vec![0u8; bs];
                for (b, blk) in row.chunks_exact_mut(blk_bytes).enumerate() {
                    for (p, cv) in c.iter_mut().enumerate() {
                        *cv = codes[pos[b * bs + p] * n_out + r];
                    }
                    (g.pack)(blk, &c);
                }
            });
            crunch_quant::dequantize_rows(*ty, &encoded, n_in, &mut weights)
                .map_err(|source| CalibError::Quant { tensor: name.to_string(), source })?;
            Packed::Type(encoded)
        }
        Target::Int(spec) => {
            let groups = int_groups(name, *spec, n_in, n_out, &pos, &codes, &ga, &gb)?;
            weights = groups.dequantize();
            Packed::Int(groups)
        }
    };
    // What was packed must be what GPTQ computed with.
    let worst = weights
        .par_chunks(n_in)
        .enumerate()
        .map(|(r, row)| {
            row.iter()
                .enumerate()
                .map(|(c, &v)| {
                    let q = wt[pos[c] * n_out + r];
                    (v - q).abs() / q.abs().max(1e-6)
                })
                .fold(0f32, f32::max)
        })
        .reduce(|| 0f32, f32::max);
    if worst > t.tolerance() {
        let what = match &t {
            Target::Type { ty, .. } => format!("packed {ty} blocks"),
            Target::Int(spec) => format!("{} codes", Grid::Int(*spec)),
        };
        return Err(CalibError::Invalid(format!(
            "{name}: {what} differ from GPTQ's values (relative {worst:e}); grid bug"
        )));
    }
    Ok(Swept { packed: Some(packed), weights, damp, loss })
}

/// The integer groups a sweep chose: codes (indexed like `wt`) back in column order, each
/// group's scale and zero from its slot (`ga`, `gb` indexed (group, row)).
#[allow(clippy::too_many_arguments)]
fn int_groups(
    name: &str,
    spec: IntSpec,
    n_in: usize,
    n_out: usize,
    pos: &[usize],
    codes: &[u8],
    ga: &[f32],
    gb: &[f32],
) -> Result<IntGroups> {
    let ng = n_in / spec.group;
    if let Some(i) = ga.iter().position(|a| !a.is_finite()) {
        return Err(CalibError::Invalid(format!(
            "{name}: row {}, group {}: the scale exceeds f16 (values too large for {})",
            i % n_out,
            i / n_out,
            Grid::Int(spec)
        )));
    }
    let mut out = vec![0u8; n_out * n_in];
    out.par_chunks_mut(n_in).enumerate().for_each(|(r, row)| {
        for (c, x) in row.iter_mut().enumerate() {
            *x = codes[pos[c] * n_out + r];
        }
    });
    let at = |i: usize| (i % ng) * n_out + i / ng;
    Ok(IntGroups {
        rows: n_out,
        cols: n_in,
        spec,
        codes: out,
        scales: (0..n_out * ng).map(|i| f16::from_f32(ga[at(i)])).collect(),
        zeros: (0..n_out * ng).map(|i| gb[at(i)] as u8).collect(),
    })
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// SparseGPT's pruning scores `w² / U_jj²` of columns `c0..c1` (in `wt`'s layout).
fn obs_scores(wt: &[f32], u: &[f32], n_in: usize, n_out: usize, c0: usize, c1: usize) -> Vec<f32> {
    let mut s = wt[c0 * n_out..c1 * n_out].to_vec();
    s.par_chunks_mut(n_out).enumerate().for_each(|(k, col)| {
        let d = u[(c0 + k) * n_in + c0 + k];
        let d2 = d * d;
        col.iter_mut().for_each(|v| *v = *v * *v / d2);
    });
    s
}

/// The N:M mask of one group of `m` columns (`scores` and `mask` in `wt`'s layout: `m` columns
/// of `n_out`): in every row, the `n` smallest.
fn nm_mask(scores: &[f32], n_out: usize, m: usize, n: usize, mask: &mut [bool]) {
    let rows: Vec<Vec<usize>> = (0..n_out)
        .into_par_iter()
        .map(|r| {
            let s: Vec<f32> = (0..m).map(|k| scores[k * n_out + r]).collect();
            let mut mk = vec![false; m];
            prune::mark_smallest(&s, n, &mut mk);
            (0..m).filter(|&k| mk[k]).collect()
        })
        .collect();
    for (r, ks) in rows.iter().enumerate() {
        for &k in ks {
            mask[k * n_out + r] = true;
        }
    }
}

/// Fix the grid of block (group) `blk` of every row from its values as they now stand (weights
/// already chosen for pruning as zero). A type: encode the block, remember the encoded bytes and
/// read off the affine map of each of its positions. Integers: each row's round-to-nearest scale
/// and zero, in the group's slot. `masked`: the pruning mask of the current lazy block and the
/// block's first column.
#[allow(clippy::too_many_arguments)]
fn fix_block(
    t: &Target,
    blk: usize,
    bs: usize,
    n_out: usize,
    pos: &[usize],
    wt: &[f32],
    masked: Option<(&[bool], usize)>,
    ga: &mut [f32],
    gb: &mut [f32],
    encoded: &mut [u8],
    row_bytes: usize,
    blk_bytes: usize,
) {
    let cols: Vec<usize> = (blk * bs..(blk + 1) * bs).map(|c| pos[c]).collect();
    let current = |r: usize| -> Vec<f32> {
        cols.iter()
            .map(|&j| match masked {
                Some((m, i1)) if m[(j - i1) * n_out + r] => 0.0,
                _ => wt[j * n_out + r],
            })
            .collect()
    };
    match t {
        Target::Type { g, quantize, imp, .. } => {
            let iw = imp.map(|v| &v[blk * bs..(blk + 1) * bs]);
            let per_row: Vec<(Vec<f32>, Vec<f32>)> = encoded
                .par_chunks_mut(row_bytes)
                .enumerate()
                .map(|(r, row)| {
                    let out = &mut row[blk * blk_bytes..(blk + 1) * blk_bytes];
                    quantize(&current(r), iw, out);
                    let (mut a, mut b) = (vec![0f32; bs], vec![0f32; bs]);
                    g.affine(out, &mut a, &mut b);
                    (a, b)
                })
                .collect();
            for (r, (a, b)) in per_row.iter().enumerate() {
                for (p, &j) in cols.iter().enumerate() {
                    ga[j * n_out + r] = a[p];
                    gb[j * n_out + r] = b[p];
                }
            }
        }
        Target::Int(spec) => {
            let slot = blk * n_out..(blk + 1) * n_out;
            ga[slot.clone()].par_iter_mut().zip(gb[slot].par_iter_mut()).enumerate().for_each(|(r, (a, b))| {
                let (scale, zero) = hfq::rtn_params(&current(r), spec);
                *a = scale.to_f32();
                *b = zero as f32;
            });
        }
    }
}
