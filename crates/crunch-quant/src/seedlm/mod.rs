//! SeedLM (Shafipour et al., ICLR 2025): each block of `C` consecutive weights of a row is stored
//! as the seed of a 16-bit linear feedback shift register plus `P` small integer coefficients and
//! one shared exponent. The decoder regenerates a `C×P` matrix `U` from the seed and computes
//! `ŵ = U·q·2^e`.
//!
//! The format, pinned (version 1):
//! - **LFSR**: 16-bit Fibonacci register, feedback bit = XOR of state bits {0, 1, 3, 12}
//!   (x¹⁶ + x¹² + x³ + x + 1, maximal: every non-zero state is on one cycle of 65,535); a step
//!   shifts right and puts the feedback bit in bit 15. Seeds are the non-zero states 1..=65535.
//! - **Basis**: starting from the seed, the register is stepped once before each element; element
//!   `k` (row-major: `U[i][j]` at `k = i·P + j`) is `(state − 32768) / 32768`, exact in f32.
//! - **Coefficients**: `P` 4-bit two's-complement integers `q_j ∈ [−8, 7]` and one 4-bit exponent
//!   code `c`; the exponent is `e = e_min + c` with `e_min` one integer per tensor.
//! - **Decoding**: `ŵ_i = (Σ_j U[i][j]·q_j) · 2^e`. Every product is an integer over 2¹⁵ with at
//!   most 19 significant bits, so the sum is exact in f32 in any order, and so is the scaling.
//! - **Layout of a tensor**: blocks in row-major order (a row's length is a multiple of `C`), first
//!   every block's seed as u16 little-endian, then a stream of nibbles, low nibble of each byte
//!   first, `1 + P` per block: the exponent code, then `q_0..q_{P−1}`.
//!
//! Encoding is the least-squares fit the paper describes, searched over every seed: for a seed,
//! `t = U⁺w` (pseudo-inverse built in f64), the exponent is the smallest that keeps every
//! `round(t_j / 2^e)` within [−8, 7] (so the largest coefficient uses the whole mantissa range,
//! magnitude 4 to 8), clamped to the tensor's 16 exponents; the seed with the least squared error
//! wins (ties: the lowest seed). With an importance vector `d` (an imatrix row), `t` is the
//! weighted least-squares fit and the error `Σ d_i (w_i − ŵ_i)²`.
//!
//! The search skips seeds by an exact lower bound: no quantized fit beats the unquantized one, so
//! a seed's error is at least `‖w‖² − ‖Qᵀw‖²` (`Q` an orthonormal basis of `U`'s columns), times
//! `min d_i` when weighted. The bound costs `C·P` multiply-adds per seed, computed sixteen seeds at
//! a time from a seed-major table; only seeds whose bound is below the best error so far are fitted
//! and quantized. [`encode_block_exhaustive`] fits every seed and is the reference the search is
//! tested against, seed for seed.

use rayon::prelude::*;
use std::sync::OnceLock;

mod kernel;

/// Number of usable seeds (the non-zero register states).
pub const N_SEEDS: usize = 65535;
/// The feedback taps, as bit positions of the state.
pub const TAPS: [u32; 4] = [0, 1, 3, 12];
/// Format version written into containers.
pub const VERSION: u32 = 1;
/// Number of exponent codes (4 bits).
pub const N_EXPONENTS: i32 = 16;

/// Seeds evaluated together in the bound's inner loop (a multiple of the kernel's lanes).
const TILE: usize = 1024;
/// Seed-table rows, padded to a whole number of tiles (the padding seeds are never used).
const TABLE_SEEDS: usize = N_SEEDS.div_ceil(TILE) * TILE;

/// One step of the register.
#[inline]
pub fn lfsr_step(s: u16) -> u16 {
    let fb = TAPS.iter().fold(0u16, |acc, &t| acc ^ (s >> t)) & 1;
    (s >> 1) | (fb << 15)
}

/// A block configuration: `c` weights per block, `p` coefficients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    pub c: usize,
    pub p: usize,
}

/// The 4-bit configuration: 8 weights, 3 coefficients (16 + 4 + 12 = 32 bits per block).
pub const CONFIG_4BIT: Config = Config { c: 8, p: 3 };
/// The 3-bit configuration: 12 weights, 4 coefficients (16 + 4 + 16 = 36 bits per block).
pub const CONFIG_3BIT: Config = Config { c: 12, p: 4 };

impl Config {
    /// The configuration named `4bit` or `3bit`.
    pub fn named(name: &str) -> Option<Config> {
        match name {
            "4bit" => Some(CONFIG_4BIT),
            "3bit" => Some(CONFIG_3BIT),
            _ => None,
        }
    }

    /// The configuration with these dimensions, if crunch supports it.
    pub fn from_dims(c: usize, p: usize) -> Option<Config> {
        [CONFIG_4BIT, CONFIG_3BIT].into_iter().find(|k| k.c == c && k.p == p)
    }

    pub fn name(self) -> &'static str {
        if self == CONFIG_3BIT {
            "3bit"
        } else {
            "4bit"
        }
    }

    /// Bits per block: seed, exponent, coefficients.
    pub fn block_bits(self) -> usize {
        16 + 4 + 4 * self.p
    }

    pub fn bits_per_weight(self) -> f64 {
        self.block_bits() as f64 / self.c as f64
    }

    /// Bytes of a tensor of `n_blocks` blocks.
    pub fn tensor_bytes(self, n_blocks: usize) -> usize {
        2 * n_blocks + (n_blocks * (1 + self.p)).div_ceil(2)
    }
}

/// The basis `U` (row-major `C×P`) of `seed`, as exact f32 values.
pub fn basis(seed: u16, cfg: Config, out: &mut [f32]) {
    let mut s = seed;
    for u in out[..cfg.c * cfg.p].iter_mut() {
        s = lfsr_step(s);
        *u = (s as f32 - 32768.0) / 32768.0;
    }
}

/// Precomputed per-seed matrices of one configuration, for unit importance (shared by every
/// tensor, built once per process) or for one block position's importance `d` (an imatrix gives
/// every column its own weight, and the blocks of one column position share it).
pub struct Tables {
    cfg: Config,
    /// `√d_i` (all ones without importance).
    sqrt_d: Vec<f32>,
    /// Seed-major `Q'ᵀ` for the bound, `Q'` an orthonormal basis of `D^½U`'s columns: element
    /// `(j, i)` of seed index `s` at `((s / L) · C·P + i·P + j) · L + s % L` with `L` the kernel's
    /// sixteen lanes, so the kernel reads one contiguous run per sixteen seeds (rows a page apart
    /// would alias in the L1 cache). Zero for unusable and padding seeds.
    qt: Vec<f32>,
    /// Per seed index: the (weighted) pseudo-inverse `(UᵀDU)⁻¹UᵀD` (`P×C`, row-major).
    pinv: Vec<f32>,
    /// Per seed index: `U` (`C×P`, row-major).
    u: Vec<f32>,
    /// Seeds whose basis has full column rank. Consecutive register states are correlated (each
    /// is the last shifted by one bit), so a few hundred bases are numerically rank-deficient
    /// (about 200 of 4-bit's, 50 of 3-bit's); the search never picks them.
    usable: Vec<bool>,
}

impl Tables {
    /// The unit-importance tables of `cfg`, built once per process (in f64, all cores).
    pub fn get(cfg: Config) -> &'static Tables {
        static T4: OnceLock<Tables> = OnceLock::new();
        static T3: OnceLock<Tables> = OnceLock::new();
        let cell = if cfg == CONFIG_3BIT { &T3 } else { &T4 };
        cell.get_or_init(|| Tables::build(cfg, None, true))
    }

    /// Tables for the importance `d` of one block position (`C` positive values), built on the
    /// calling thread (tens of milliseconds).
    pub fn weighted(cfg: Config, d: &[f32]) -> Tables {
        Tables::build(cfg, Some(d), false)
    }

    fn build(cfg: Config, d: Option<&[f32]>, parallel: bool) -> Tables {
        let (c, p) = (cfg.c, cfg.p);
        let cp = c * p;
        let dd: Vec<f64> = (0..c).map(|i| d.map_or(1.0, |d| d[i].max(0.0) as f64)).collect();
        let mut t = Tables {
            cfg,
            sqrt_d: dd.iter().map(|&v| v.sqrt() as f32).collect(),
            qt: vec![0f32; TABLE_SEEDS * cp],
            pinv: vec![0f32; TABLE_SEEDS * cp],
            u: vec![0f32; TABLE_SEEDS * cp],
            usable: vec![false; TABLE_SEEDS],
        };
        let fill = |tile: usize, (qt, pinv, u, usable): (&mut [f32], &mut [f32], &mut [f32], &mut [bool])| {
            for lane in 0..TILE {
                let idx = tile * TILE + lane;
                if idx >= N_SEEDS {
                    break;
                }
                let ui = &mut u[lane * cp..(lane + 1) * cp];
                basis((idx + 1) as u16, cfg, ui);
                if let Some((q, pi)) = seed_matrices(ui, &dd, cfg) {
                    for j in 0..p {
                        for i in 0..c {
                            qt[((lane / kernel::LANES) * cp + i * p + j) * kernel::LANES + lane % kernel::LANES] =
                                q[i * p + j] as f32;
                        }
                    }
                    for (dst, &v) in pinv[lane * cp..(lane + 1) * cp].iter_mut().zip(&pi) {
                        *dst = v as f32;
                    }
                    usable[lane] = true;
                }
            }
        };
        let parts =
            t.qt.chunks_mut(TILE * cp)
                .zip(t.pinv.chunks_mut(TILE * cp))
                .zip(t.u.chunks_mut(TILE * cp))
                .zip(t.usable.chunks_mut(TILE))
                .map(|(((a, b), c), d)| (a, b, c, d));
        if parallel {
            parts.collect::<Vec<_>>().into_par_iter().enumerate().for_each(|(tile, part)| fill(tile, part));
        } else {
            parts.enumerate().for_each(|(tile, part)| fill(tile, part));
        }
        t
    }

    pub fn config(&self) -> Config {
        self.cfg
    }

    fn u_of(&self, idx: usize) -> &[f32] {
        let cp = self.cfg.c * self.cfg.p;
        &self.u[idx * cp..(idx + 1) * cp]
    }

    fn pinv_of(&self, idx: usize) -> &[f32] {
        let cp = self.cfg.c * self.cfg.p;
        &self.pinv[idx * cp..(idx + 1) * cp]
    }
}

/// For a basis `u` (f32, `C×P`) and importance `d`: `Q'` (`C×P`, orthonormal columns spanning
/// `D^½U`) and the weighted pseudo-inverse (`P×C`), in f64; `None` when the basis is
/// rank-deficient. With `G = UᵀDU = L Lᵀ`: row `i` of `Q'` is `L⁻¹(√d_i u_i)`, column `i` of the
/// pseudo-inverse `L⁻ᵀ(√d_i q'_i)`.
fn seed_matrices(u: &[f32], d: &[f64], cfg: Config) -> Option<(Vec<f64>, Vec<f64>)> {
    let (c, p) = (cfg.c, cfg.p);
    let mut g = vec![0f64; p * p];
    for i in 0..c {
        for a in 0..p {
            for b in 0..p {
                g[a * p + b] += d[i] * u[i * p + a] as f64 * u[i * p + b] as f64;
            }
        }
    }
    let trace: f64 = (0..p).map(|a| g[a * p + a]).sum();
    let l = cholesky(&g, p, 1e-10 * trace)?;
    let mut q = vec![0f64; c * p];
    let mut pinv = vec![0f64; c * p];
    let mut row = [0f64; 4];
    for i in 0..c {
        let sd = d[i].sqrt();
        for (r, &v) in row.iter_mut().zip(&u[i * p..(i + 1) * p]) {
            *r = sd * v as f64;
        }
        let qi = forward_subst(&l, p, &row);
        let scaled = qi.map(|v| sd * v);
        let col = back_subst_t(&l, p, &scaled);
        q[i * p..(i + 1) * p].copy_from_slice(&qi[..p]);
        for j in 0..p {
            pinv[j * c + i] = col[j];
        }
    }
    Some((q, pinv))
}

/// Cholesky factor (lower, row-major) of the `p×p` matrix `g`, or `None` if a pivot is below
/// `min_pivot`.
fn cholesky(g: &[f64], p: usize, min_pivot: f64) -> Option<Vec<f64>> {
    let mut l = vec![0f64; p * p];
    for a in 0..p {
        for b in 0..=a {
            let s: f64 = g[a * p + b] - (0..b).map(|k| l[a * p + k] * l[b * p + k]).sum::<f64>();
            if a == b {
                if s <= min_pivot {
                    return None;
                }
                l[a * p + a] = s.sqrt();
            } else {
                l[a * p + b] = s / l[b * p + b];
            }
        }
    }
    Some(l)
}

/// Solve `L x = b` (L lower-triangular, row-major, `p ≤ 4`).
fn forward_subst(l: &[f64], p: usize, b: &[f64]) -> [f64; 4] {
    let mut x = [0f64; 4];
    for a in 0..p {
        let s: f64 = b[a] - (0..a).map(|k| l[a * p + k] * x[k]).sum::<f64>();
        x[a] = s / l[a * p + a];
    }
    x
}

/// Solve `Lᵀ x = b` (`p ≤ 4`).
fn back_subst_t(l: &[f64], p: usize, b: &[f64]) -> [f64; 4] {
    let mut x = [0f64; 4];
    for a in (0..p).rev() {
        let s: f64 = b[a] - (a + 1..p).map(|k| l[k * p + a] * x[k]).sum::<f64>();
        x[a] = s / l[a * p + a];
    }
    x
}

/// One encoded block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Code {
    pub seed: u16,
    /// Exponent code 0..=15 (`e = e_min + exp`).
    pub exp: u8,
    /// Coefficients in −8..=7 (the first `P` are used).
    pub q: [i8; 4],
}

/// Decode one block into `out` (`C` weights).
pub fn decode_block(code: &Code, cfg: Config, e_min: i32, out: &mut [f32]) {
    let mut u = [0f32; 48];
    basis(code.seed, cfg, &mut u);
    reconstruct(&u, &code.q, cfg, e_min + code.exp as i32, out);
}

#[inline]
fn reconstruct(u: &[f32], q: &[i8; 4], cfg: Config, e: i32, out: &mut [f32]) {
    let scale = pow2(e);
    for (i, o) in out[..cfg.c].iter_mut().enumerate() {
        let mut s = 0f32;
        for j in 0..cfg.p {
            s += u[i * cfg.p + j] * q[j] as f32;
        }
        *o = s * scale;
    }
}

/// `2^e` as f32 (exact for the exponents a tensor can use).
#[inline]
fn pow2(e: i32) -> f32 {
    (e as f32).exp2()
}

/// `floor(log2(m))` of a positive finite f32, exactly (subnormals count as −127).
#[inline]
fn ilog2(m: f32) -> i32 {
    ((m.to_bits() >> 23) & 0xff) as i32 - 127
}

/// Quantize least-squares coefficients `t` with the shared-exponent rule, clamped to the tensor's
/// exponents `[e_min, e_min + 15]`.
#[inline]
fn quantize_coeffs(t: &[f32], e_min: i32) -> (u8, [i8; 4]) {
    let m = t.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let e_max = e_min + N_EXPONENTS - 1;
    let mut e = if m > 0.0 && m.is_finite() { ilog2(m) - 3 } else { e_min };
    e = e.clamp(e_min, e_max);
    let round = |e: i32| {
        let inv = pow2(-e);
        let mut q = [0i8; 4];
        let mut fits = true;
        for (qj, &tj) in q.iter_mut().zip(t) {
            let r = (tj * inv).round();
            fits &= (-8.0..=7.0).contains(&r);
            *qj = r.clamp(-8.0, 7.0) as i8;
        }
        (q, fits)
    };
    loop {
        let (q, fits) = round(e);
        if fits || e >= e_max {
            return ((e - e_min) as u8, q);
        }
        e += 1;
    }
}

/// The fit of one seed: coefficients `t = U⁺w` (the table's, weighted when it is), quantized,
/// and the (weighted) squared error in f64.
fn fit_seed(tables: &Tables, idx: usize, w: &[f32], e_min: i32) -> (f64, Code) {
    let Config { c, p } = tables.cfg;
    let pinv = tables.pinv_of(idx);
    let mut t = [0f32; 4];
    for (j, tj) in t[..p].iter_mut().enumerate() {
        *tj = (0..c).map(|i| pinv[j * c + i] * w[i]).sum();
    }
    let (exp, q) = quantize_coeffs(&t[..p], e_min);
    let code = Code { seed: (idx + 1) as u16, exp, q };
    let mut r = [0f32; 12];
    reconstruct(tables.u_of(idx), &q, tables.cfg, e_min + exp as i32, &mut r);
    let err = (0..c)
        .map(|i| {
            let e = (w[i] as f64 - r[i] as f64) * tables.sqrt_d[i] as f64;
            e * e
        })
        .sum();
    (err, code)
}

/// What a search did, for the statistics the benchmark reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SearchStats {
    pub blocks: u64,
    /// Seeds whose fit was computed (the rest were skipped by the bound).
    pub fitted: u64,
}

impl SearchStats {
    pub fn add(&mut self, o: SearchStats) {
        self.blocks += o.blocks;
        self.fitted += o.fitted;
    }

    /// Share of (block, seed) pairs the bound skipped.
    pub fn skipped_share(&self) -> f64 {
        let total = self.blocks as f64 * N_SEEDS as f64;
        if total == 0.0 {
            0.0
        } else {
            1.0 - self.fitted as f64 / total
        }
    }
}

/// Reference search: fit every seed, keep the least error (the first on ties). `tables` carry
/// the importance (unit for [`Tables::get`]).
pub fn encode_block_exhaustive(w: &[f32], tables: &Tables, e_min: i32) -> (Code, f64) {
    let mut best = (Code::default(), f64::INFINITY);
    for idx in 0..N_SEEDS {
        if !tables.usable[idx] {
            continue;
        }
        let (err, code) = fit_seed(tables, idx, w, e_min);
        if err < best.1 {
            best = (code, err);
        }
    }
    best
}

/// Encode blocks (`w.len()` a multiple of `C`) with the bound; one code per block. Every block is
/// fitted with `tables` (so with its importance, when they are weighted).
pub fn encode_blocks(w: &[f32], tables: &Tables, e_min: i32, stats: &mut SearchStats) -> Vec<Code> {
    let cfg = tables.cfg;
    let Config { c, p } = cfg;
    let cp = c * p;
    let n = w.len() / c;
    let mut best: Vec<(Code, f64)> = vec![(Code::default(), f64::INFINITY); n];
    // Blocks scaled by √d (the bound works in the whitened space) and their squared norms.
    let scaled: Vec<f32> = w.iter().enumerate().map(|(k, &v)| v * tables.sqrt_d[k % c]).collect();
    let norms: Vec<f64> = scaled.chunks_exact(c).map(|b| b.iter().map(|&v| v as f64 * v as f64).sum()).collect();
    let energies = kernel::energies_fn();
    let mut energy = vec![0f32; TILE];
    let mut chunk_max = vec![0f32; kernel::CHUNKS];
    let lanes = TILE / kernel::CHUNKS;
    for tile in 0..TABLE_SEEDS / TILE {
        let qt = &tables.qt[tile * cp * TILE..(tile + 1) * cp * TILE];
        for b in 0..n {
            let wn = norms[b];
            // The bound's rounding error (f32 sums of C·P terms) is far below this margin, so a
            // skipped seed's fit is never below the best one's.
            let margin = 1e-5 * wn;
            let (best_code, best_err) = &mut best[b];
            // A seed is fitted only if wn − e − margin < best, i.e. e > wn − margin − best.
            let need = wn - margin - *best_err;
            energies(qt, &scaled[b * c..(b + 1) * c], cfg, &mut energy, &mut chunk_max);
            for (chunk, &top) in chunk_max.iter().enumerate() {
                // `top` may be NaN only for a non-finite block; then every seed is fitted.
                if (top as f64) < need {
                    continue;
                }
                let lanes_range = chunk * lanes..(chunk + 1) * lanes;
                for (lane, &e) in lanes_range.clone().zip(&energy[lanes_range]) {
                    let idx = tile * TILE + lane;
                    if idx >= N_SEEDS || !tables.usable[idx] {
                        continue;
                    }
                    if wn - e as f64 - margin >= *best_err {
                        continue;
                    }
                    stats.fitted += 1;
                    let (err, code) = fit_seed(tables, idx, &w[b * c..(b + 1) * c], e_min);
                    if err < *best_err {
                        *best_code = code;
                        *best_err = err;
                    }
                }
            }
        }
    }
    stats.blocks += n as u64;
    best.into_iter().map(|(code, _)| code).collect()
}

/// The per-tensor exponent base: the largest exponent lets coefficients reach about eight times
/// the largest weight; the 15 below it cover smaller blocks.
pub fn exponent_base(w: &[f32]) -> i32 {
    let m = w.iter().fold(0f32, |a, &v| if v.is_finite() { a.max(v.abs()) } else { a });
    let top = if m > 0.0 { ilog2(m) + 1 } else { 0 };
    top - (N_EXPONENTS - 1)
}

/// Pack codes into the tensor layout (seeds, then nibbles).
pub fn pack(codes: &[Code], cfg: Config) -> Vec<u8> {
    let n = codes.len();
    let mut out = vec![0u8; cfg.tensor_bytes(n)];
    for (o, c) in out.chunks_exact_mut(2).zip(codes) {
        o.copy_from_slice(&c.seed.to_le_bytes());
    }
    let nib = &mut out[2 * n..];
    let mut k = 0usize;
    for c in codes {
        let mut put = |v: u8| {
            nib[k / 2] |= (v & 0xf) << (4 * (k % 2));
            k += 1;
        };
        put(c.exp);
        for &q in &c.q[..cfg.p] {
            put(q as u8);
        }
    }
    out
}

/// Read `n` codes back from packed bytes; `None` if the byte count is wrong or a seed is zero.
pub fn unpack(bytes: &[u8], n: usize, cfg: Config) -> Option<Vec<Code>> {
    if bytes.len() != cfg.tensor_bytes(n) {
        return None;
    }
    let (seeds, nib) = bytes.split_at(2 * n);
    let get = |k: usize| (nib[k / 2] >> (4 * (k % 2))) & 0xf;
    let mut codes = Vec::with_capacity(n);
    for (b, s) in seeds.chunks_exact(2).enumerate() {
        let seed = u16::from_le_bytes([s[0], s[1]]);
        if seed == 0 {
            return None;
        }
        let base = b * (1 + cfg.p);
        let mut q = [0i8; 4];
        for (j, qj) in q[..cfg.p].iter_mut().enumerate() {
            *qj = ((get(base + 1 + j) << 4) as i8) >> 4;
        }
        codes.push(Code { seed, exp: get(base), q });
    }
    Some(codes)
}

/// Decode a packed tensor into `out` (its weights, row-major), all cores. Returns false, writing
/// nothing, when `bytes` is not the size of `out.len() / C` blocks or `out` is not whole blocks.
pub fn decode_tensor(bytes: &[u8], cfg: Config, e_min: i32, out: &mut [f32]) -> bool {
    let n = out.len() / cfg.c;
    if !out.len().is_multiple_of(cfg.c) || bytes.len() != cfg.tensor_bytes(n) {
        return false;
    }
    let (seeds, nib) = bytes.split_at(2 * n);
    let get = |k: usize| (nib[k / 2] >> (4 * (k % 2))) & 0xf;
    out.par_chunks_mut(cfg.c * 256).enumerate().for_each(|(g, chunk)| {
        for (bi, o) in chunk.chunks_exact_mut(cfg.c).enumerate() {
            let b = g * 256 + bi;
            let seed = u16::from_le_bytes([seeds[2 * b], seeds[2 * b + 1]]);
            let base = b * (1 + cfg.p);
            let mut q = [0i8; 4];
            for (j, qj) in q[..cfg.p].iter_mut().enumerate() {
                *qj = ((get(base + 1 + j) << 4) as i8) >> 4;
            }
            decode_block(&Code { seed, exp: get(base), q }, cfg, e_min, o);
        }
    });
    true
}

/// Encode a whole tensor (rows of `row_len`, `row_len % C == 0`; `importance` one value per
/// column, e.g. the imatrix row) on the current rayon pool. `on_blocks(n)` is told as each piece
/// of work starts (0) and finishes (`n` blocks); it returns false to stop, and then `None` is
/// returned.
///
/// Without importance, groups of rows share the process-wide tables. With it, the blocks are
/// encoded by column position: the blocks at one position share `d`, so that position's weighted
/// tables are built once and the bound stays exact and as tight as without importance.
///
/// # Panics
/// `row_len` not a positive multiple of the block size, `w` not whole rows, or `importance` not
/// one value per column: the caller picks the tensors (`crunch seedlm encode` encodes only those
/// whose rows are whole blocks).
pub fn encode_tensor(
    w: &[f32],
    row_len: usize,
    importance: Option<&[f32]>,
    cfg: Config,
    on_blocks: &(dyn Fn(usize) -> bool + Sync),
) -> Option<(Vec<u8>, i32, SearchStats)> {
    let c = cfg.c;
    assert!(
        row_len > 0 && row_len.is_multiple_of(c) && w.len().is_multiple_of(row_len),
        "SeedLM encodes rows that are whole blocks of {c}: {} values in rows of {row_len}",
        w.len()
    );
    assert!(importance.is_none_or(|imp| imp.len() == row_len), "one importance value per column");
    let e_min = exponent_base(w);
    let rows = w.len() / row_len;
    let per_row = row_len / c;
    let mut codes = vec![Code::default(); rows * per_row];
    let mut stats = SearchStats::default();
    match importance {
        None => {
            let tables = Tables::get(cfg);
            // Groups of blocks that share a seed tile in cache while it is used.
            let group = 64 * c;
            let results: Vec<Option<(Vec<Code>, SearchStats)>> = w
                .par_chunks(group)
                .map(|chunk| {
                    if !on_blocks(0) {
                        return None;
                    }
                    let mut s = SearchStats::default();
                    let codes = encode_blocks(chunk, tables, e_min, &mut s);
                    on_blocks(codes.len()).then_some((codes, s))
                })
                .collect();
            let mut at = 0;
            for r in results {
                let (part, s) = r?;
                codes[at..at + part.len()].copy_from_slice(&part);
                at += part.len();
                stats.add(s);
            }
        }
        Some(imp) => {
            let results: Vec<Option<(Vec<Code>, SearchStats)>> = (0..per_row)
                .into_par_iter()
                .map(|pos| {
                    if !on_blocks(0) {
                        return None;
                    }
                    let tables = Tables::weighted(cfg, &imp[pos * c..(pos + 1) * c]);
                    let column: Vec<f32> = (0..rows)
                        .flat_map(|r| &w[r * row_len + pos * c..r * row_len + (pos + 1) * c])
                        .copied()
                        .collect();
                    let mut s = SearchStats::default();
                    let mut out = Vec::with_capacity(rows);
                    // Rows in groups, so a cancel is seen within one group of a large tensor.
                    for part in column.chunks(256 * c) {
                        out.extend(encode_blocks(part, &tables, e_min, &mut s));
                        if !on_blocks(part.len() / c) {
                            return None;
                        }
                    }
                    Some((out, s))
                })
                .collect();
            for (pos, r) in results.into_iter().enumerate() {
                let (col, s) = r?;
                for (row, code) in col.into_iter().enumerate() {
                    codes[row * per_row + pos] = code;
                }
                stats.add(s);
            }
        }
    }
    Some((pack(&codes, cfg), e_min, stats))
}

#[cfg(test)]
mod tests;
