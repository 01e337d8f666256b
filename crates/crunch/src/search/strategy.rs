//! Search strategies: which points of a search space to evaluate next, through an ask/tell
//! interface, so trials can be expensive and asynchronous (dispatched in batches, told back in
//! any order). Every objective is minimised; constraints arrive as one violation number.
//!
//! - [`Grid`]: every point of a discrete space, in lexicographic order.
//! - [`RandomSearch`]: uniform sampling, never repeating a point of a discrete space.
//! - [`Nsga2`]: NSGA-II (Deb et al. 2002), generational and elitist, made asynchronous.
//! - [`Tpe`]: multi-objective TPE (Bergstra et al. 2011; Ozaki et al. 2020).
//!
//! Every strategy here never proposes a point it has already proposed or been told about, so a
//! discrete space is never evaluated twice at the same point, and each stops (asks return
//! nothing) once such a space is exhausted.
//!
//! Randomness is ChaCha8 seeded from a `u64` through a fixed SplitMix64 expansion, and every
//! draw (uniform floats, bounded integers, normals) is derived here from raw `u64`s, so a seed
//! gives the same proposals whatever the versions of `rand`'s distributions.
//!
//! Crates looked at, none used:
//! - `moors`: NSGA-II/III and others, but its algorithms run the whole loop over a fitness
//!   closure on `ndarray` populations (pulling `ndarray` and `faer`); no ask/tell, no TPE.
//! - `optirustic` (since moved to `nsga-rs`): NSGA-II/III with choice variables and constraints,
//!   but it evaluates each generation synchronously through its own problem trait; no ask/tell,
//!   no TPE.
//! - `tpe` (sile): ask/tell TPE, but single-objective, one independent optimiser per parameter,
//!   with no constraints or de-duplication.
//! - `parzen`: TPE driven by its own single-objective study; no multi-objective split.
//! - `argmin`: single-objective solvers run by its executor; neither NSGA-II nor TPE.

use super::moo::{constrained_sort, crowding_distance};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{HashMap, HashSet};

/// The most points one `ask` returns, whatever it is asked for.
pub const MAX_BATCH: usize = 1 << 16;

/// Below this many points a nearly exhausted discrete space is enumerated to find the points
/// left; above it, only sampled.
const ENUMERATE_LIMIT: u128 = 1 << 20;

/// One dimension of a search space.
#[derive(Clone, Debug, PartialEq)]
pub enum Dim {
    /// `n` options, coordinates `0..n` (as `f64`).
    Choice(usize),
    /// A real interval `[lo, hi]`.
    Real { lo: f64, hi: f64 },
}

/// A search space: the product of its dimensions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Space {
    pub dims: Vec<Dim>,
}

/// A point of a [`Space`]: one coordinate per dimension; a `Choice` coordinate is its index as
/// `f64`.
pub type Point = Vec<f64>;

impl Space {
    /// The space of these dimensions.
    pub fn new(dims: Vec<Dim>) -> Self {
        Space { dims }
    }

    /// How many points the space has: the product of the choices' sizes (1 for no dimensions,
    /// `u128::MAX` if that overflows); `None` if any dimension is real.
    pub fn size(&self) -> Option<u128> {
        self.dims.iter().try_fold(1u128, |acc, d| match d {
            Dim::Choice(n) => Some(acc.saturating_mul(*n as u128)),
            Dim::Real { .. } => None,
        })
    }

    /// Every dimension is a choice.
    pub fn is_discrete(&self) -> bool {
        self.size().is_some()
    }

    /// Check that every choice has an option and every interval is finite and not reversed.
    ///
    /// # Errors
    /// Which dimension is wrong.
    pub fn validate(&self) -> Result<(), String> {
        for (i, d) in self.dims.iter().enumerate() {
            match *d {
                Dim::Choice(0) => return Err(format!("search dimension {i}: a choice needs at least one option")),
                Dim::Choice(_) => {}
                Dim::Real { lo, hi } => {
                    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                        return Err(format!("search dimension {i}: [{lo}, {hi}] is not a finite interval"));
                    }
                }
            }
        }
        Ok(())
    }

    /// `p` is a point of the space: one coordinate per dimension, a valid index for a choice, a
    /// value inside the interval for a real.
    pub fn contains(&self, p: &[f64]) -> bool {
        p.len() == self.dims.len()
            && self.dims.iter().zip(p).all(|(d, &x)| match *d {
                Dim::Choice(n) => x >= 0.0 && x.fract() == 0.0 && x < n as f64,
                Dim::Real { lo, hi } => lo <= x && x <= hi,
            })
    }

    /// A uniformly random point.
    fn sample(&self, rng: &mut ChaCha8Rng) -> Point {
        self.dims
            .iter()
            .map(|d| match *d {
                Dim::Choice(n) => below(rng, n) as f64,
                Dim::Real { lo, hi } => lo + unit(rng) * (hi - lo),
            })
            .collect()
    }

    /// The point at `index` in lexicographic order (the first dimension most significant); real
    /// dimensions take their lower bound.
    fn point_at(&self, mut index: u128) -> Point {
        let mut p = vec![0.0; self.dims.len()];
        for (x, d) in p.iter_mut().zip(&self.dims).rev() {
            match *d {
                Dim::Choice(n) => {
                    let n = n.max(1) as u128;
                    *x = (index % n) as f64;
                    index /= n;
                }
                Dim::Real { lo, .. } => *x = lo,
            }
        }
        p
    }
}

/// A search strategy, asked for points to evaluate and told their results.
pub trait Strategy: Send {
    /// Short name of the strategy (as [`by_name`] takes it).
    fn name(&self) -> &'static str;
    /// Up to `n` new points to evaluate next (never more than [`MAX_BATCH`]); fewer or none
    /// when the strategy is done (discrete space exhausted, grid finished, budget reached).
    fn ask(&mut self, n: usize) -> Vec<Point>;
    /// The result of a point it asked for: `objectives` (all minimised) or None when the trial
    /// failed; `violation` ≥ 0 (0 = every constraint met; the sum of normalised constraint
    /// excesses otherwise). Objectives that are empty, not finite, or of another count than the
    /// first result's count as a failed trial; a NaN violation as the worst violation. A point
    /// outside the space, or told a second time, is ignored.
    fn tell(&mut self, point: &Point, objectives: Option<&[f64]>, violation: f64);
}

/// An evaluated point.
#[derive(Clone, Debug, PartialEq)]
pub struct Trial {
    pub point: Point,
    /// All minimised.
    pub objectives: Vec<f64>,
    /// 0 when feasible.
    pub violation: f64,
}

// ---------------------------------------------------------------------------------------------
// Randomness: every draw from raw u64s, so seeds stay meaningful across `rand` versions.

/// ChaCha8 keyed by a SplitMix64 expansion of `seed`.
fn rng_from(seed: u64) -> ChaCha8Rng {
    let mut state = seed;
    let mut key = [0u8; 32];
    for chunk in key.chunks_exact_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// Uniform in `[0, 1)`, 53 random bits.
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform in `0..n` (0 when `n` is 0), without modulo bias.
fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    let n = n as u64;
    if n <= 1 {
        return 0;
    }
    // 2^64 mod n values are dropped from the bottom, leaving a multiple of n.
    let threshold = n.wrapping_neg() % n;
    loop {
        let x = rng.next_u64();
        if x >= threshold {
            return (x % n) as usize;
        }
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - unit(rng);
    let u2 = unit(rng);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

// ---------------------------------------------------------------------------------------------
// The ledger of points asked and told, shared by the strategies.

type Key = Vec<u64>;

fn key(p: &[f64]) -> Key {
    // `+ 0.0` folds −0 into +0.
    p.iter().map(|x| (x + 0.0).to_bits()).collect()
}

/// How a told point relates to what was asked.
#[derive(Debug, PartialEq)]
enum Settled {
    /// It was pending.
    Pending,
    /// Never asked, now recorded.
    New,
    /// Already told, or not a point of the space: to be ignored.
    Ignored,
}

/// Points proposed or told (never proposed again) and points pending.
#[derive(Debug)]
struct Ledger {
    space: Space,
    size: Option<u128>,
    seen: HashSet<Key>,
    pending: HashMap<Key, Point>,
}

impl Ledger {
    fn new(space: Space) -> Result<Self, String> {
        space.validate()?;
        Ok(Ledger { size: space.size(), space, seen: HashSet::new(), pending: HashMap::new() })
    }

    fn exhausted(&self) -> bool {
        self.size.is_some_and(|s| self.seen.len() as u128 >= s)
    }

    fn fresh(&self, p: &[f64]) -> bool {
        !self.seen.contains(&key(p))
    }

    /// Record `p` as proposed and pending.
    fn claim(&mut self, p: &Point) {
        let k = key(p);
        self.seen.insert(k.clone());
        self.pending.insert(k, p.clone());
    }

    fn settle(&mut self, p: &Point) -> Settled {
        if !self.space.contains(p) {
            return Settled::Ignored;
        }
        let k = key(p);
        if self.pending.remove(&k).is_some() {
            Settled::Pending
        } else if self.seen.insert(k) {
            Settled::New
        } else {
            Settled::Ignored
        }
    }

    /// A uniformly random point not yet proposed or told; `None` when the space is exhausted.
    fn random_fresh(&self, rng: &mut ChaCha8Rng) -> Option<Point> {
        if self.exhausted() {
            return None;
        }
        for _ in 0..64 {
            let p = self.space.sample(rng);
            if self.fresh(&p) {
                return Some(p);
            }
        }
        // Mostly seen: a small space is enumerated, a large one only sampled harder.
        match self.size {
            Some(size) if size <= ENUMERATE_LIMIT => {
                let free: Vec<u128> = (0..size).filter(|&i| self.fresh(&self.space.point_at(i))).collect();
                if free.is_empty() {
                    None
                } else {
                    Some(self.space.point_at(free[below(rng, free.len())]))
                }
            }
            _ => (0..1 << 16).map(|_| self.space.sample(rng)).find(|p| self.fresh(p)),
        }
    }
}

/// Objectives that count: non-empty, finite, as many as the first result's (whose count is
/// recorded in `n_obj`).
fn usable(objectives: Option<&[f64]>, n_obj: &mut Option<usize>) -> Option<Vec<f64>> {
    let o = objectives?;
    if o.is_empty() || o.iter().any(|x| !x.is_finite()) {
        return None;
    }
    match *n_obj {
        Some(m) if m != o.len() => None,
        _ => {
            *n_obj = Some(o.len());
            Some(o.to_vec())
        }
    }
}

/// A violation as stored: NaN the worst, negative none.
fn clean_violation(v: f64) -> f64 {
    if v.is_nan() {
        f64::INFINITY
    } else {
        v.max(0.0)
    }
}

/// Indices of the `k` best of `trials` by constrained non-dominated sort, the last front cut by
/// crowding distance (largest first); `only` restricts the candidates.
fn best_k(trials: &[Trial], only: &[usize], k: usize) -> Vec<usize> {
    let objs: Vec<Vec<f64>> = only.iter().map(|&i| trials[i].objectives.clone()).collect();
    let viol: Vec<f64> = only.iter().map(|&i| trials[i].violation).collect();
    let mut keep = Vec::with_capacity(k);
    for front in constrained_sort(&objs, &viol) {
        if keep.len() >= k {
            break;
        }
        if keep.len() + front.len() <= k {
            keep.extend(front.iter().map(|&j| only[j]));
        } else {
            let cd = crowding_distance(&objs, &front);
            let mut order: Vec<usize> = (0..front.len()).collect();
            order.sort_by(|&a, &b| cd[b].total_cmp(&cd[a]));
            let room = k - keep.len();
            keep.extend(order[..room].iter().map(|&j| only[front[j]]));
        }
    }
    keep
}

// ---------------------------------------------------------------------------------------------

/// Every point of a discrete space once, in lexicographic order (the first dimension most
/// significant). Results are not used.
#[derive(Debug)]
pub struct Grid {
    space: Space,
    size: u128,
    next: u128,
}

impl Grid {
    /// A grid over `space`.
    ///
    /// # Errors
    /// When a dimension is real, or the space is invalid.
    pub fn new(space: Space) -> Result<Self, String> {
        space.validate()?;
        let size = space.size().ok_or("a grid search needs every dimension to be a choice, not a real interval")?;
        Ok(Grid { space, size, next: 0 })
    }
}

impl Strategy for Grid {
    fn name(&self) -> &'static str {
        "grid"
    }

    fn ask(&mut self, n: usize) -> Vec<Point> {
        let take = (n.min(MAX_BATCH) as u128).min(self.size - self.next);
        let out = (self.next..self.next + take).map(|i| self.space.point_at(i)).collect();
        self.next += take;
        out
    }

    fn tell(&mut self, _point: &Point, _objectives: Option<&[f64]>, _violation: f64) {}
}

/// Uniform random sampling; in a discrete space it never repeats a point and stops when every
/// point has been proposed.
#[derive(Debug)]
pub struct RandomSearch {
    ledger: Ledger,
    rng: ChaCha8Rng,
}

impl RandomSearch {
    /// Random search over `space`, reproducible from `seed`.
    ///
    /// # Errors
    /// When the space is invalid.
    pub fn new(space: Space, seed: u64) -> Result<Self, String> {
        Ok(RandomSearch { ledger: Ledger::new(space)?, rng: rng_from(seed) })
    }
}

impl Strategy for RandomSearch {
    fn name(&self) -> &'static str {
        "random"
    }

    fn ask(&mut self, n: usize) -> Vec<Point> {
        let mut out = Vec::new();
        while out.len() < n.min(MAX_BATCH) {
            let Some(p) = self.ledger.random_fresh(&mut self.rng) else { break };
            self.ledger.claim(&p);
            out.push(p);
        }
        out
    }

    fn tell(&mut self, point: &Point, _objectives: Option<&[f64]>, _violation: f64) {
        self.ledger.settle(point);
    }
}

// ---------------------------------------------------------------------------------------------

/// Parameters of [`Nsga2`].
#[derive(Clone, Debug, PartialEq)]
pub struct Nsga2Config {
    /// Parents kept per generation, and offspring per generation.
    pub pop_size: usize,
    pub seed: u64,
    /// Probability that two parents are crossed (SBX on reals, uniform on choices).
    pub crossover_prob: f64,
    /// Distribution index of simulated binary crossover: larger keeps children nearer parents.
    pub eta_crossover: f64,
    /// Distribution index of polynomial mutation.
    pub eta_mutation: f64,
    /// Probability that each coordinate mutates; `None` for 1 / number of dimensions.
    pub mutation_prob: Option<f64>,
}

impl Default for Nsga2Config {
    fn default() -> Self {
        Nsga2Config {
            pop_size: 12,
            seed: 0,
            crossover_prob: 0.9,
            eta_crossover: 15.0,
            eta_mutation: 20.0,
            mutation_prob: None,
        }
    }
}

/// NSGA-II (K. Deb, A. Pratap, S. Agarwal, T. Meyarivan, "A fast and elitist multiobjective
/// genetic algorithm: NSGA-II", IEEE Trans. Evol. Comput. 6(2), 2002), asynchronous through
/// ask/tell.
///
/// The first generation is random (distinct points). Later ones are children of the current
/// parents: binary tournaments by (constrained rank, crowding distance), then simulated binary
/// crossover and polynomial mutation on real coordinates, uniform crossover and random-reset
/// mutation on choices. Once `pop_size` results have been told since the last survival,
/// parents and those offspring go through elitist (μ+λ) survival by constrained non-dominated
/// sort and crowding distance. Asking more than a generation before telling just breeds more
/// children of the same parents; results told after a survival join the next one. Failed
/// trials are never parents. In a discrete space a child already proposed or told is mutated
/// again, bred anew, and at last replaced by a random unseen point.
#[derive(Debug)]
pub struct Nsga2 {
    cfg: Nsga2Config,
    ledger: Ledger,
    rng: ChaCha8Rng,
    mutation_prob: f64,
    parents: Vec<Trial>,
    rank: Vec<usize>,
    crowding: Vec<f64>,
    offspring: Vec<Trial>,
    told: usize,
    queue: Vec<Point>,
    n_obj: Option<usize>,
    generation: usize,
}

impl Nsga2 {
    /// NSGA-II over `space`.
    ///
    /// # Errors
    /// When the space is invalid, the population is empty, or a probability or distribution
    /// index is out of range.
    pub fn new(space: Space, cfg: Nsga2Config) -> Result<Self, String> {
        if cfg.pop_size == 0 {
            return Err("NSGA-II needs a population of at least one".into());
        }
        let prob = |p: f64| (0.0..=1.0).contains(&p);
        if !prob(cfg.crossover_prob) || !cfg.mutation_prob.is_none_or(prob) {
            return Err("NSGA-II: crossover and mutation probabilities must be within [0, 1]".into());
        }
        if !(cfg.eta_crossover >= 0.0 && cfg.eta_mutation >= 0.0) {
            return Err("NSGA-II: distribution indices must be finite and non-negative".into());
        }
        let mutation_prob = cfg.mutation_prob.unwrap_or(1.0 / space.dims.len().max(1) as f64);
        Ok(Nsga2 {
            rng: rng_from(cfg.seed),
            ledger: Ledger::new(space)?,
            cfg,
            mutation_prob,
            parents: Vec::new(),
            rank: Vec::new(),
            crowding: Vec::new(),
            offspring: Vec::new(),
            told: 0,
            queue: Vec::new(),
            n_obj: None,
            generation: 0,
        })
    }

    /// The current parents: the survivors of the last survival (empty before the first).
    pub fn population(&self) -> &[Trial] {
        &self.parents
    }

    /// Survivals so far.
    pub fn generation(&self) -> usize {
        self.generation
    }

    /// Elitist survival of parents and offspring, then ranks and crowding for tournaments.
    fn survive(&mut self) {
        let mut pool = std::mem::take(&mut self.parents);
        pool.append(&mut self.offspring);
        self.told = 0;
        self.queue.clear();
        self.generation += 1;
        if pool.len() > self.cfg.pop_size {
            let all: Vec<usize> = (0..pool.len()).collect();
            let mut keep = best_k(&pool, &all, self.cfg.pop_size);
            keep.sort_unstable();
            let mut slots: Vec<Option<Trial>> = pool.into_iter().map(Some).collect();
            pool = keep.iter().filter_map(|&i| slots[i].take()).collect();
        }
        let objs: Vec<Vec<f64>> = pool.iter().map(|t| t.objectives.clone()).collect();
        let viol: Vec<f64> = pool.iter().map(|t| t.violation).collect();
        self.rank = vec![0; pool.len()];
        self.crowding = vec![0.0; pool.len()];
        for (r, front) in constrained_sort(&objs, &viol).iter().enumerate() {
            for (&i, c) in front.iter().zip(crowding_distance(&objs, front)) {
                self.rank[i] = r;
                self.crowding[i] = c;
            }
        }
        self.parents = pool;
    }

    /// Binary tournament: lower rank, then larger crowding distance, then a coin.
    fn tournament(&mut self) -> usize {
        let n = self.parents.len();
        let (a, b) = (below(&mut self.rng, n), below(&mut self.rng, n));
        match self.rank[a].cmp(&self.rank[b]).then(self.crowding[b].total_cmp(&self.crowding[a])) {
            std::cmp::Ordering::Less => a,
            std::cmp::Ordering::Greater => b,
            std::cmp::Ordering::Equal => {
                if unit(&mut self.rng) < 0.5 {
                    a
                } else {
                    b
                }
            }
        }
    }

    /// Two children of two tournament winners.
    fn breed(&mut self) -> (Point, Point) {
        let (i, j) = (self.tournament(), self.tournament());
        let mut a = self.parents[i].point.clone();
        let mut b = self.parents[j].point.clone();
        if unit(&mut self.rng) < self.cfg.crossover_prob {
            for (d, dim) in self.ledger.space.dims.iter().enumerate() {
                match *dim {
                    Dim::Real { lo, hi } => {
                        if unit(&mut self.rng) < 0.5 {
                            (a[d], b[d]) = sbx(&mut self.rng, a[d], b[d], lo, hi, self.cfg.eta_crossover);
                        }
                    }
                    Dim::Choice(_) => {
                        if unit(&mut self.rng) < 0.5 {
                            std::mem::swap(&mut a[d], &mut b[d]);
                        }
                    }
                }
            }
        }
        for child in [&mut a, &mut b] {
            for d in 0..child.len() {
                if unit(&mut self.rng) < self.mutation_prob {
                    self.mutate(child, d);
                }
            }
        }
        (a, b)
    }

    /// Mutate coordinate `d`: polynomial mutation of a real, a different option of a choice.
    fn mutate(&mut self, p: &mut [f64], d: usize) {
        match self.ledger.space.dims[d] {
            Dim::Real { lo, hi } => p[d] = polynomial_mutation(&mut self.rng, p[d], lo, hi, self.cfg.eta_mutation),
            Dim::Choice(n) if n > 1 => {
                let other = below(&mut self.rng, n - 1) as f64;
                p[d] = if other >= p[d] { other + 1.0 } else { other };
            }
            Dim::Choice(_) => {}
        }
    }

    /// The next child not yet proposed or told; `None` when the space is exhausted.
    fn child(&mut self) -> Option<Point> {
        if self.ledger.exhausted() {
            return None;
        }
        if self.parents.is_empty() {
            return self.ledger.random_fresh(&mut self.rng);
        }
        let dims = self.ledger.space.dims.len();
        for _ in 0..8 {
            let mut c = match self.queue.pop() {
                Some(c) => c,
                None => {
                    let (a, b) = self.breed();
                    self.queue.push(b);
                    a
                }
            };
            for _ in 0..8 {
                if self.ledger.fresh(&c) {
                    return Some(c);
                }
                if dims == 0 {
                    break;
                }
                let d = below(&mut self.rng, dims);
                self.mutate(&mut c, d);
            }
        }
        self.ledger.random_fresh(&mut self.rng)
    }
}

/// Simulated binary crossover of one bounded coordinate (Deb and Agrawal 1995, in the bounded
/// form of Deb et al.'s NSGA-II): two children spread around the parents, clamped to
/// `[lo, hi]`.
fn sbx(rng: &mut ChaCha8Rng, a: f64, b: f64, lo: f64, hi: f64, eta: f64) -> (f64, f64) {
    if (a - b).abs() <= 1e-14 || hi <= lo {
        return (a, b);
    }
    let (y1, y2) = if a < b { (a, b) } else { (b, a) };
    let span = y2 - y1;
    let u = unit(rng);
    let power = 1.0 / (eta + 1.0);
    // The spread factor's distribution, truncated so the child stays within the bound at
    // distance `beta` parent-spans away.
    let spread = |beta: f64| {
        let alpha = 2.0 - beta.powf(-(eta + 1.0));
        if u <= 1.0 / alpha {
            (u * alpha).powf(power)
        } else {
            (1.0 / (2.0 - u * alpha)).powf(power)
        }
    };
    let c1 = (0.5 * (y1 + y2 - spread(1.0 + 2.0 * (y1 - lo) / span) * span)).clamp(lo, hi);
    let c2 = (0.5 * (y1 + y2 + spread(1.0 + 2.0 * (hi - y2) / span) * span)).clamp(lo, hi);
    if unit(rng) < 0.5 {
        (c2, c1)
    } else {
        (c1, c2)
    }
}

/// Polynomial mutation of one bounded coordinate (Deb and Goyal 1996, the bounded form used by
/// NSGA-II).
fn polynomial_mutation(rng: &mut ChaCha8Rng, y: f64, lo: f64, hi: f64, eta: f64) -> f64 {
    let span = hi - lo;
    if span <= 0.0 {
        return y;
    }
    let u = unit(rng);
    let power = 1.0 / (eta + 1.0);
    let delta = if u < 0.5 {
        let xy = 1.0 - (y - lo) / span;
        (2.0 * u + (1.0 - 2.0 * u) * xy.powf(eta + 1.0)).powf(power) - 1.0
    } else {
        let xy = 1.0 - (hi - y) / span;
        1.0 - (2.0 * (1.0 - u) + 2.0 * (u - 0.5) * xy.powf(eta + 1.0)).powf(power)
    };
    (y + delta * span).clamp(lo, hi)
}

impl Strategy for Nsga2 {
    fn name(&self) -> &'static str {
        "nsga2"
    }

    fn ask(&mut self, n: usize) -> Vec<Point> {
        let mut out = Vec::new();
        while out.len() < n.min(MAX_BATCH) {
            let Some(p) = self.child() else { break };
            self.ledger.claim(&p);
            out.push(p);
        }
        // Nothing more to propose and nothing out: let the last results survive, so that
        // `population` reflects every result.
        if out.is_empty() && self.ledger.pending.is_empty() && !self.offspring.is_empty() {
            self.survive();
        }
        out
    }

    fn tell(&mut self, point: &Point, objectives: Option<&[f64]>, violation: f64) {
        if self.ledger.settle(point) == Settled::Ignored {
            return;
        }
        self.told += 1;
        if let Some(objectives) = usable(objectives, &mut self.n_obj) {
            self.offspring.push(Trial { point: point.clone(), objectives, violation: clean_violation(violation) });
        }
        if self.told >= self.cfg.pop_size {
            self.survive();
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// Parameters of [`Tpe`].
#[derive(Clone, Debug, PartialEq)]
pub struct TpeConfig {
    pub seed: u64,
    /// Random points before the model is used (pending ones count).
    pub n_startup: usize,
    /// Candidates drawn from the good density per proposal.
    pub n_ei_candidates: usize,
    /// Fraction of the results taken as good.
    pub gamma: f64,
    /// Weight of the prior: per option of a choice, and of the prior component of a real.
    pub prior_weight: f64,
}

impl Default for TpeConfig {
    fn default() -> Self {
        TpeConfig { seed: 0, n_startup: 10, n_ei_candidates: 24, gamma: 0.25, prior_weight: 1.0 }
    }
}

/// Multi-objective tree-structured Parzen estimator: TPE (J. Bergstra, R. Bardenet, Y. Bengio,
/// B. Kégl, "Algorithms for hyper-parameter optimization", NeurIPS 2011) with the
/// multi-objective split of MOTPE (Y. Ozaki, Y. Tanigaki, S. Watanabe, M. Onishi,
/// "Multiobjective tree-structured Parzen estimator for computationally expensive
/// optimization problems", GECCO 2020).
///
/// After `n_startup` random points, the results split into "good" (the first non-dominated
/// fronts of the feasible results, ⌈γ·n⌉ of them, the last front cut by crowding distance
/// where MOTPE uses hypervolume contributions) and "bad" (the rest, every infeasible and failed
/// trial, and the pending points, as a constant liar so a batch spreads out). While no result
/// is feasible, the least violating ones are good instead, to steer towards feasibility. Each
/// dimension gets a Parzen estimator per group: smoothed counts for a choice, a truncated
/// Gaussian mixture with a prior component and Bergstra's neighbour bandwidths for a real.
/// Candidates are drawn from the good densities l(x), and the unseen one maximising l(x)/g(x)
/// is proposed.
#[derive(Debug)]
pub struct Tpe {
    cfg: TpeConfig,
    ledger: Ledger,
    rng: ChaCha8Rng,
    trials: Vec<Trial>,
    failed: Vec<Point>,
    n_obj: Option<usize>,
}

impl Tpe {
    /// MOTPE over `space`.
    ///
    /// # Errors
    /// When the space is invalid, `gamma` is not within (0, 1], the prior weight is not
    /// positive, or there are no candidates.
    pub fn new(space: Space, cfg: TpeConfig) -> Result<Self, String> {
        if !(cfg.gamma > 0.0 && cfg.gamma <= 1.0) {
            return Err("TPE: gamma must be within (0, 1]".into());
        }
        if !(cfg.prior_weight > 0.0 && cfg.prior_weight.is_finite()) {
            return Err("TPE: the prior weight must be positive".into());
        }
        if cfg.n_ei_candidates == 0 {
            return Err("TPE needs at least one candidate per proposal".into());
        }
        Ok(Tpe {
            rng: rng_from(cfg.seed),
            ledger: Ledger::new(space)?,
            cfg,
            trials: Vec::new(),
            failed: Vec::new(),
            n_obj: None,
        })
    }

    /// The successful results so far.
    pub fn trials(&self) -> &[Trial] {
        &self.trials
    }

    /// Which results are good (indices into `trials`).
    fn good(&self) -> Vec<usize> {
        let n = self.trials.len() + self.failed.len();
        let target = ((self.cfg.gamma * n as f64).ceil() as usize).max(1);
        let feasible: Vec<usize> = (0..self.trials.len()).filter(|&i| self.trials[i].violation == 0.0).collect();
        let pool = if feasible.is_empty() { (0..self.trials.len()).collect() } else { feasible };
        best_k(&self.trials, &pool, target)
    }

    /// The best of `n_ei_candidates` draws from the good densities, or `None` if none is unseen.
    fn suggest(&mut self, good: &[usize]) -> Option<Point> {
        let is_good = {
            let mut g = vec![false; self.trials.len()];
            for &i in good {
                g[i] = true;
            }
            g
        };
        let good_pts: Vec<&Point> = good.iter().map(|&i| &self.trials[i].point).collect();
        let bad_pts: Vec<&Point> = (0..self.trials.len())
            .filter(|&i| !is_good[i])
            .map(|i| &self.trials[i].point)
            .chain(&self.failed)
            .chain(self.ledger.pending.values())
            .collect();
        let w = self.cfg.prior_weight;
        let dims = &self.ledger.space.dims;
        let column = |pts: &[&Point], d: usize| pts.iter().map(|p| p[d]).collect::<Vec<f64>>();
        let l: Vec<Parzen> =
            dims.iter().enumerate().map(|(d, dim)| Parzen::fit(dim, &column(&good_pts, d), w)).collect();
        let g: Vec<Parzen> =
            dims.iter().enumerate().map(|(d, dim)| Parzen::fit(dim, &column(&bad_pts, d), w)).collect();
        let mut best: Option<(f64, Point)> = None;
        for _ in 0..4 {
            for _ in 0..self.cfg.n_ei_candidates {
                let x: Point = l.iter().map(|e| e.sample(&mut self.rng)).collect();
                if !self.ledger.fresh(&x) {
                    continue;
                }
                let score: f64 = x.iter().zip(l.iter().zip(&g)).map(|(&v, (l, g))| l.log_pdf(v) - g.log_pdf(v)).sum();
                if best.as_ref().is_none_or(|(s, _)| score > *s) {
                    best = Some((score, x));
                }
            }
            if best.is_some() {
                break;
            }
        }
        best.map(|(_, x)| x)
    }
}

impl Strategy for Tpe {
    fn name(&self) -> &'static str {
        "tpe"
    }

    fn ask(&mut self, n: usize) -> Vec<Point> {
        let mut out = Vec::new();
        let good = self.good();
        while out.len() < n.min(MAX_BATCH) {
            let started = self.trials.len() + self.failed.len() + self.ledger.pending.len();
            let p = if started < self.cfg.n_startup || self.trials.is_empty() {
                self.ledger.random_fresh(&mut self.rng)
            } else {
                self.suggest(&good).or_else(|| self.ledger.random_fresh(&mut self.rng))
            };
            let Some(p) = p else { break };
            self.ledger.claim(&p);
            out.push(p);
        }
        out
    }

    fn tell(&mut self, point: &Point, objectives: Option<&[f64]>, violation: f64) {
        if self.ledger.settle(point) == Settled::Ignored {
            return;
        }
        match usable(objectives, &mut self.n_obj) {
            Some(objectives) => {
                self.trials.push(Trial { point: point.clone(), objectives, violation: clean_violation(violation) })
            }
            None => self.failed.push(point.clone()),
        }
    }
}

/// A one-dimensional Parzen estimator.
enum Parzen {
    /// A degenerate interval: always this value.
    Fixed(f64),
    /// Option probabilities (logs) and their cumulative sums.
    Choice { log_p: Vec<f64>, cdf: Vec<f64> },
    /// A Gaussian mixture truncated to `[lo, hi]`.
    Real {
        lo: f64,
        hi: f64,
        mu: Vec<f64>,
        sigma: Vec<f64>,
        /// log of weight / (σ √(2π) · mass inside the interval), per component.
        log_c: Vec<f64>,
        /// Cumulative normalised weights.
        cdf: Vec<f64>,
    },
}

impl Parzen {
    /// Fit to the observed coordinates `xs` of one dimension, with `prior` as the weight of
    /// each option's pseudo-count or of the real prior component.
    fn fit(dim: &Dim, xs: &[f64], prior: f64) -> Parzen {
        match *dim {
            Dim::Choice(n) => {
                let mut w = vec![prior; n.max(1)];
                for &x in xs {
                    if let Some(c) = w.get_mut(x as usize) {
                        *c += 1.0;
                    }
                }
                let total: f64 = w.iter().sum();
                let cdf = cumulative(&w, total);
                Parzen::Choice { log_p: w.iter().map(|c| (c / total).ln()).collect(), cdf }
            }
            Dim::Real { lo, hi } => {
                let span = hi - lo;
                if span <= 0.0 {
                    return Parzen::Fixed(lo);
                }
                // (mean, weight, is the prior), sorted by mean.
                let mut comps: Vec<(f64, f64, bool)> = xs.iter().map(|&x| (x.clamp(lo, hi), 1.0, false)).collect();
                comps.push((0.5 * (lo + hi), prior, true));
                comps.sort_by(|a, b| a.0.total_cmp(&b.0));
                let m = comps.len();
                let min_sigma = span / (1.0 + m as f64).min(100.0);
                let sigma: Vec<f64> = (0..m)
                    .map(|i| {
                        if comps[i].2 {
                            return span;
                        }
                        let left = comps[i].0 - if i == 0 { lo } else { comps[i - 1].0 };
                        let right = if i + 1 == m { hi } else { comps[i + 1].0 } - comps[i].0;
                        left.max(right).clamp(min_sigma, span)
                    })
                    .collect();
                let total: f64 = comps.iter().map(|c| c.1).sum();
                let mu: Vec<f64> = comps.iter().map(|c| c.0).collect();
                let log_c = (0..m)
                    .map(|i| {
                        let mass = norm_cdf((hi - mu[i]) / sigma[i]) - norm_cdf((lo - mu[i]) / sigma[i]);
                        (comps[i].1 / total).ln()
                            - sigma[i].ln()
                            - mass.max(1e-300).ln()
                            - 0.5 * std::f64::consts::TAU.ln()
                    })
                    .collect();
                let weights: Vec<f64> = comps.iter().map(|c| c.1).collect();
                Parzen::Real { lo, hi, cdf: cumulative(&weights, total), mu, sigma, log_c }
            }
        }
    }

    fn log_pdf(&self, x: f64) -> f64 {
        match self {
            Parzen::Fixed(_) => 0.0,
            Parzen::Choice { log_p, .. } => log_p.get(x as usize).copied().unwrap_or(f64::NEG_INFINITY),
            Parzen::Real { mu, sigma, log_c, .. } => {
                let terms: Vec<f64> = (0..mu.len())
                    .map(|i| {
                        let z = (x - mu[i]) / sigma[i];
                        log_c[i] - 0.5 * z * z
                    })
                    .collect();
                let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if top == f64::NEG_INFINITY {
                    return top;
                }
                top + terms.iter().map(|t| (t - top).exp()).sum::<f64>().ln()
            }
        }
    }

    fn sample(&self, rng: &mut ChaCha8Rng) -> f64 {
        match self {
            Parzen::Fixed(v) => *v,
            Parzen::Choice { cdf, .. } => pick(cdf, unit(rng)) as f64,
            Parzen::Real { lo, hi, mu, sigma, cdf, .. } => {
                let i = pick(cdf, unit(rng));
                // Rejection from the untruncated component: each keeps at least a third of its
                // mass inside, since its mean is inside and its width at most the interval's.
                for _ in 0..64 {
                    let x = mu[i] + sigma[i] * normal(rng);
                    if *lo <= x && x <= *hi {
                        return x;
                    }
                }
                lo + unit(rng) * (hi - lo)
            }
        }
    }
}

/// Cumulative sums of `w` divided by `total`.
fn cumulative(w: &[f64], total: f64) -> Vec<f64> {
    w.iter()
        .scan(0.0, |acc, &x| {
            *acc += x / total;
            Some(*acc)
        })
        .collect()
}

/// The first index whose cumulative weight exceeds `u` (the last if rounding leaves none).
fn pick(cdf: &[f64], u: f64) -> usize {
    cdf.partition_point(|&c| c <= u).min(cdf.len().saturating_sub(1))
}

/// Standard normal distribution function.
fn norm_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// Complementary error function, relative error below 1.2e-7 (the Chebyshev-fitted
/// approximation in Press et al., Numerical Recipes, §6.2).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

// ---------------------------------------------------------------------------------------------

/// A strategy that stops after `left` more points.
struct Capped {
    inner: Box<dyn Strategy>,
    left: usize,
}

impl Strategy for Capped {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn ask(&mut self, n: usize) -> Vec<Point> {
        let out = self.inner.ask(n.min(self.left));
        self.left -= out.len().min(self.left);
        out
    }

    fn tell(&mut self, point: &Point, objectives: Option<&[f64]>, violation: f64) {
        self.inner.tell(point, objectives, violation);
    }
}

/// The strategy called `name` ("grid", "random", "nsga2" or "tpe", any case) over `space`,
/// proposing at most `budget` points in all (0: no limit), with defaults for that budget:
/// NSGA-II's population is budget/3 within [4, 12] (12 without a budget); TPE starts with
/// budget/3 random points within [2, 10] (10 without a budget).
///
/// # Errors
/// An unknown name, an invalid space, or a grid over a real dimension.
pub fn by_name(name: &str, space: &Space, seed: u64, budget: usize) -> Result<Box<dyn Strategy>, String> {
    let space = space.clone();
    let third = |lo: usize, hi: usize| if budget == 0 { hi } else { (budget / 3).clamp(lo, hi) };
    let inner: Box<dyn Strategy> = match name.trim().to_ascii_lowercase().as_str() {
        "grid" => Box::new(Grid::new(space)?),
        "random" => Box::new(RandomSearch::new(space, seed)?),
        // Small populations: a search's budget is tens of trials, and more generations of a few
        // individuals beat a few generations of many (measured on SmolLM2's 64-point space,
        // docs/SEARCH.md: populations 4-8 above 12-16 at 16-48 trials).
        "nsga2" => {
            let pop = if budget == 0 { 12 } else { (budget / 8).clamp(4, 12) };
            Box::new(Nsga2::new(space, Nsga2Config { pop_size: pop, seed, ..Default::default() })?)
        }
        "tpe" => Box::new(Tpe::new(space, TpeConfig { n_startup: third(2, 10), seed, ..Default::default() })?),
        _ => return Err(format!("unknown search strategy {name:?}: expected grid, random, nsga2 or tpe")),
    };
    Ok(if budget == 0 { inner } else { Box::new(Capped { inner, left: budget }) })
}

#[cfg(test)]
mod tests {
    use super::super::moo::{hypervolume, igd, non_dominated_sort};
    use super::*;

    /// A test problem: objectives (None for a failed trial) and violation.
    type Problem = fn(&Point) -> (Option<Vec<f64>>, f64);

    /// One finished trial as a driver saw it.
    struct Seen {
        point: Point,
        objectives: Option<Vec<f64>>,
        violation: f64,
    }

    /// Ask in batches of `batch`, evaluate with `f`, tell, until `budget` points or the strategy
    /// stops.
    fn drive(
        s: &mut dyn Strategy,
        batch: usize,
        budget: usize,
        f: impl Fn(&Point) -> (Option<Vec<f64>>, f64),
    ) -> Vec<Seen> {
        let mut all = Vec::new();
        while all.len() < budget {
            let asked = s.ask(batch.min(budget - all.len()));
            if asked.is_empty() {
                break;
            }
            for p in asked {
                let (objectives, violation) = f(&p);
                s.tell(&p, objectives.as_deref(), violation);
                all.push(Seen { point: p, objectives, violation });
            }
        }
        all
    }

    fn distinct(points: &[Point]) -> bool {
        let keys: HashSet<Key> = points.iter().map(|p| key(p)).collect();
        keys.len() == points.len()
    }

    fn reals(n: usize) -> Space {
        Space::new(vec![Dim::Real { lo: 0.0, hi: 1.0 }; n])
    }

    /// ZDT problems (E. Zitzler, K. Deb, L. Thiele, "Comparison of multiobjective evolutionary
    /// algorithms: empirical results", Evolutionary Computation 8(2), 2000).
    #[derive(Clone, Copy, Debug)]
    enum Zdt {
        One,
        Two,
        Three,
    }

    impl Zdt {
        fn h(self, f1: f64, g: f64) -> f64 {
            let r = f1 / g;
            match self {
                Zdt::One => 1.0 - r.sqrt(),
                Zdt::Two => 1.0 - r * r,
                Zdt::Three => 1.0 - r.sqrt() - r * (10.0 * std::f64::consts::PI * f1).sin(),
            }
        }

        fn eval(self, x: &[f64]) -> Vec<f64> {
            let g = 1.0 + 9.0 * x[1..].iter().sum::<f64>() / (x.len() - 1) as f64;
            vec![x[0], g * self.h(x[0], g)]
        }

        /// `n` points of the true front (g = 1), evenly spaced in f1 along its pieces.
        fn front(self, n: usize) -> Vec<Vec<f64>> {
            let dense: Vec<Vec<f64>> =
                (0..=200_000).map(|i| i as f64 / 200_000.0).map(|f1| vec![f1, self.h(f1, 1.0)]).collect();
            let mut nd: Vec<Vec<f64>> = non_dominated_2d(&dense);
            nd.sort_by(|a, b| a[0].total_cmp(&b[0]));
            (0..n).map(|i| nd[i * (nd.len() - 1) / (n - 1)].clone()).collect()
        }
    }

    /// Non-dominated points of a 2-D set by a sweep.
    fn non_dominated_2d(pts: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let mut s = pts.to_vec();
        s.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
        let mut best = f64::INFINITY;
        s.into_iter()
            .filter(|p| {
                let keep = p[1] < best;
                best = best.min(p[1]);
                keep
            })
            .collect()
    }

    fn first_front(pop: &[Trial]) -> Vec<Vec<f64>> {
        let objs: Vec<Vec<f64>> = pop.iter().map(|t| t.objectives.clone()).collect();
        non_dominated_sort(&objs).first().map(|f| f.iter().map(|&i| objs[i].clone()).collect()).unwrap_or_default()
    }

    /// NSGA-II, population 100, on a 30-variable ZDT problem: IGD to 500 front points and the
    /// hypervolume (reference (1.1, 1.1)) as a fraction of the true front's.
    fn nsga2_on(zdt: Zdt, generations: usize, seed: u64) -> (f64, f64) {
        let cfg = Nsga2Config { pop_size: 100, seed, ..Default::default() };
        let mut s = Nsga2::new(reals(30), cfg).unwrap();
        drive(&mut s, 100, 100 * generations, |x| (Some(zdt.eval(x)), 0.0));
        assert_eq!(s.generation(), generations);
        let found = first_front(s.population());
        let truth = zdt.front(500);
        let r = [1.1, 1.1];
        let true_hv = hypervolume(&zdt.front(20_000), &r);
        (igd(&found, &truth), hypervolume(&found, &r) / true_hv)
    }

    #[test]
    fn nsga2_zdt1() {
        let (igd, hv) = nsga2_on(Zdt::One, 200, 1);
        eprintln!("ZDT1: IGD {igd:.5}, hypervolume {:.4} of the front's", hv);
        assert!(igd < 0.01, "IGD {igd}");
        assert!(hv > 0.97, "hypervolume ratio {hv}");
    }

    #[test]
    fn nsga2_zdt2() {
        let (igd, hv) = nsga2_on(Zdt::Two, 200, 2);
        eprintln!("ZDT2: IGD {igd:.5}, hypervolume {:.4} of the front's", hv);
        assert!(igd < 0.01, "IGD {igd}");
        assert!(hv > 0.97, "hypervolume ratio {hv}");
    }

    #[test]
    fn nsga2_zdt3() {
        let (igd, hv) = nsga2_on(Zdt::Three, 250, 3);
        eprintln!("ZDT3: IGD {igd:.5}, hypervolume {:.4} of the front's", hv);
        assert!(igd < 0.01, "IGD {igd}");
        assert!(hv > 0.97, "hypervolume ratio {hv}");
    }

    /// Hypervolume of everything evaluated.
    fn hv_of(seen: &[Seen], r: &[f64]) -> f64 {
        let objs: Vec<Vec<f64>> =
            seen.iter().filter(|s| s.violation == 0.0).filter_map(|s| s.objectives.clone()).collect();
        hypervolume(&objs, r)
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    /// TPE against random search on ZDT1 in 5 variables, 200 trials in batches of 4, by the
    /// hypervolume of everything evaluated: the median of 3 seeds, at the usual reference
    /// (1.1, 1.1) (which random search barely reaches) and at (1.1, 11).
    #[test]
    fn tpe_beats_random_on_zdt1() {
        let budget = 200;
        let f = |x: &Point| (Some(Zdt::One.eval(x)), 0.0);
        let (mut tpe, mut random) = (Vec::new(), Vec::new());
        for seed in [1, 2, 3] {
            let mut t = Tpe::new(reals(5), TpeConfig { seed, ..Default::default() }).unwrap();
            let seen = drive(&mut t, 4, budget, f);
            assert_eq!(seen.len(), budget);
            tpe.push(seen);
            let mut s = RandomSearch::new(reals(5), seed).unwrap();
            random.push(drive(&mut s, 4, budget, f));
        }
        for r in [[1.1, 1.1], [1.1, 11.0]] {
            let t: Vec<f64> = tpe.iter().map(|s| hv_of(s, &r)).collect();
            let u: Vec<f64> = random.iter().map(|s| hv_of(s, &r)).collect();
            eprintln!("ZDT1 (5 variables, {budget} trials), hypervolume at {r:?}: TPE {t:.4?}, random {u:.4?}");
            assert!(median(t.clone()) > median(u.clone()), "TPE {t:?} random {u:?}");
        }
    }

    /// A discrete bi-objective problem over 4 choices of 5 options: cost rises and error falls
    /// with each coordinate, at different rates, with an interaction.
    fn discrete() -> (Space, Problem) {
        let space = Space::new(vec![Dim::Choice(5); 4]);
        let f = |x: &Point| {
            let v: Vec<f64> = x.iter().map(|c| c / 4.0).collect();
            let cost = v[0] + 2.0 * v[1] + 3.0 * v[2] + 4.0 * v[3];
            let error =
                4.0 * (1.0 - v[0]).powi(2) + 3.0 * (1.0 - v[1]).powi(3) + 2.0 * (1.0 - v[2]) + (1.0 - v[3]).sqrt()
                    - v[0] * v[3];
            (Some(vec![cost, error]), 0.0)
        };
        (space, f)
    }

    /// Grid enumerates the 625 points once; NSGA-II, TPE and random search with 250 trials (40%),
    /// median of 3 seeds: hypervolume at (11, 11) as a fraction of the grid's, and no repeats.
    #[test]
    fn discrete_problem() {
        let (space, f) = discrete();
        assert_eq!(space.size(), Some(625));
        let r = [11.0, 11.0];
        let mut grid = Grid::new(space.clone()).unwrap();
        let all = drive(&mut grid, 7, usize::MAX, f);
        assert_eq!(all.len(), 625);
        assert!(distinct(&all.iter().map(|s| s.point.clone()).collect::<Vec<_>>()));
        let full = hv_of(&all, &r);
        let budget = 250;
        let mut ratios = Vec::new();
        for name in ["nsga2", "tpe", "random"] {
            let mut per_seed = Vec::new();
            for seed in [1, 2, 3] {
                let mut s = by_name(name, &space, seed, 0).unwrap();
                let seen = drive(s.as_mut(), 6, budget, f);
                assert_eq!(seen.len(), budget, "{name}");
                assert!(distinct(&seen.iter().map(|s| s.point.clone()).collect::<Vec<_>>()), "{name} repeated a point");
                per_seed.push(hv_of(&seen, &r) / full);
            }
            ratios.push((name, median(per_seed)));
        }
        eprintln!("625-point discrete problem, 250 trials, hypervolume of the grid's: {ratios:.4?}");
        let random = ratios[2].1;
        for (&(name, ratio), least) in ratios[..2].iter().zip([0.985, 0.975]) {
            assert!(ratio > least && ratio > random, "{name}: {ratio} (random {random})");
        }
    }

    #[test]
    fn strategies_stop_when_the_space_is_exhausted() {
        let space = Space::new(vec![Dim::Choice(3), Dim::Choice(4), Dim::Choice(2)]);
        let f = |x: &Point| (Some(vec![x[0] + x[1], 3.0 - x[0] + x[2]]), 0.0);
        for name in ["grid", "random", "nsga2", "tpe"] {
            for batch in [1, 5, 30] {
                let mut s = by_name(name, &space, 9, 0).unwrap();
                let seen = drive(s.as_mut(), batch, usize::MAX, f);
                assert_eq!(seen.len(), 24, "{name}, batches of {batch}");
                assert!(distinct(&seen.iter().map(|s| s.point.clone()).collect::<Vec<_>>()), "{name}");
                assert!(seen.iter().all(|s| space.contains(&s.point)));
                assert!(s.ask(10).is_empty(), "{name}");
            }
            // Asking everything at once, before any result, also stops at the space's size.
            let mut s = by_name(name, &space, 9, 0).unwrap();
            assert_eq!(s.ask(100).len(), 24, "{name}");
            assert!(s.ask(1).is_empty());
        }
        // An empty grid and a one-point space.
        let mut g = Grid::new(Space::default()).unwrap();
        assert_eq!(g.ask(3), vec![Vec::<f64>::new()]);
        assert!(g.ask(3).is_empty());
        let mut t = Tpe::new(Space::new(vec![Dim::Choice(1)]), TpeConfig::default()).unwrap();
        assert_eq!(t.ask(3), vec![vec![0.0]]);
    }

    #[test]
    fn grid_order_and_errors() {
        let mut g = Grid::new(Space::new(vec![Dim::Choice(2), Dim::Choice(3)])).unwrap();
        let pts = g.ask(100);
        let want: Vec<Point> = (0..2).flat_map(|a| (0..3).map(move |b| vec![a as f64, b as f64])).collect();
        assert_eq!(pts, want);
        let mixed = Space::new(vec![Dim::Choice(2), Dim::Real { lo: 0.0, hi: 1.0 }]);
        assert_eq!(mixed.size(), None);
        assert!(Grid::new(mixed.clone()).is_err());
        assert!(by_name("grid", &mixed, 0, 10).is_err());
        assert!(by_name("simulated-annealing", &mixed, 0, 10).is_err());
        assert!(Space::new(vec![Dim::Choice(0)]).validate().is_err());
        assert!(Space::new(vec![Dim::Real { lo: 1.0, hi: 0.0 }]).validate().is_err());
        assert!(RandomSearch::new(Space::new(vec![Dim::Real { lo: 0.0, hi: f64::NAN }]), 0).is_err());
        assert_eq!(Space::new(vec![Dim::Choice(1 << 40); 4]).size(), Some(u128::MAX));
    }

    #[test]
    fn by_name_defaults_and_budget() {
        let space = reals(3);
        for (name, want) in [("random", "random"), ("NSGA2", "nsga2"), (" tpe ", "tpe")] {
            let mut s = by_name(name, &space, 4, 10).unwrap();
            assert_eq!(s.name(), want);
            let seen = drive(s.as_mut(), 3, usize::MAX, |x| (Some(vec![x[0], 1.0 - x[0]]), 0.0));
            assert_eq!(seen.len(), 10, "{name} stops at the budget");
            assert!(s.ask(5).is_empty());
        }
    }

    #[test]
    fn same_seed_same_points() {
        let space = Space::new(vec![Dim::Choice(4), Dim::Real { lo: -1.0, hi: 2.0 }, Dim::Choice(3)]);
        let f = |x: &Point| (Some(vec![x[0] + x[1] * x[1], x[2] - x[1]]), 0.0);
        for name in ["random", "nsga2", "tpe"] {
            let run = |seed| {
                let mut s = by_name(name, &space, seed, 40).unwrap();
                drive(s.as_mut(), 5, 40, f).into_iter().map(|s| s.point).collect::<Vec<_>>()
            };
            assert_eq!(run(5), run(5), "{name}");
            assert_ne!(run(5), run(6), "{name}");
        }
    }

    /// Deb's CONSTR: x1 in [0.1, 1], x2 in [0, 5]; minimise x1 and (1 + x2) / x1 subject to
    /// x2 + 9 x1 ≥ 6 and 9 x1 − x2 ≥ 1.
    fn constr(x: &Point) -> (Option<Vec<f64>>, f64) {
        let v = (6.0 - x[1] - 9.0 * x[0]).max(0.0) / 6.0 + (1.0 + x[1] - 9.0 * x[0]).max(0.0);
        (Some(vec![x[0], (1.0 + x[1]) / x[0]]), v)
    }

    fn constr_space() -> Space {
        Space::new(vec![Dim::Real { lo: 0.1, hi: 1.0 }, Dim::Real { lo: 0.0, hi: 5.0 }])
    }

    #[test]
    fn nsga2_constraints() {
        let mut s = Nsga2::new(constr_space(), Nsga2Config { pop_size: 40, seed: 3, ..Default::default() }).unwrap();
        let seen = drive(&mut s, 40, 40 * 50, constr);
        let infeasible_at_start = seen[..40].iter().filter(|s| s.violation > 0.0).count();
        let pop = s.population();
        assert_eq!(pop.len(), 40);
        assert!(pop.iter().all(|t| t.violation == 0.0), "infeasible survivors");
        eprintln!("CONSTR: {infeasible_at_start}/40 infeasible at first, all 40 survivors feasible");
        // Spread along the front: x1 from below 0.45 to 1.
        let x1: Vec<f64> = pop.iter().map(|t| t.objectives[0]).collect();
        assert!(x1.iter().copied().fold(f64::INFINITY, f64::min) < 0.45);
        assert!(x1.iter().copied().fold(0.0, f64::max) > 0.95);
    }

    #[test]
    fn tpe_constraints() {
        let mut t = Tpe::new(constr_space(), TpeConfig { seed: 4, ..Default::default() }).unwrap();
        drive(&mut t, 3, 120, constr);
        let good = t.good();
        assert!(!good.is_empty());
        assert!(good.iter().all(|&i| t.trials()[i].violation == 0.0));
        // With nothing feasible yet, the least violating are good.
        let mut t = Tpe::new(constr_space(), TpeConfig::default()).unwrap();
        let pts = t.ask(4);
        for (i, p) in pts.iter().enumerate() {
            t.tell(p, Some(&[1.0, 1.0]), 1.0 + i as f64);
        }
        assert_eq!(t.good(), vec![0]);
    }

    #[test]
    fn failed_trials_are_never_parents() {
        // ZDT1 in 5 variables, failing when x1 > 0.6, NaN when x2 < 0.1, infinite when x3 < 0.05.
        let f = |x: &Point| {
            let mut o = Zdt::One.eval(x);
            if x[0] > 0.6 {
                return (None, 0.0);
            }
            if x[1] < 0.1 {
                o[1] = f64::NAN;
            }
            if x[2] < 0.05 {
                o[0] = f64::INFINITY;
            }
            (Some(o), 0.0)
        };
        let bad = |x: &Point| x[0] > 0.6 || x[1] < 0.1 || x[2] < 0.05;
        let mut s = Nsga2::new(reals(5), Nsga2Config { pop_size: 20, seed: 5, ..Default::default() }).unwrap();
        let mut failures = 0;
        for _ in 0..30 {
            for p in s.ask(20) {
                let (o, v) = f(&p);
                failures += usize::from(bad(&p));
                s.tell(&p, o.as_deref(), v);
            }
            assert!(s.population().iter().all(|t| !bad(&t.point)));
        }
        assert!(failures > 0);
        assert_eq!(s.population().len(), 20);
        let mut t = Tpe::new(reals(5), TpeConfig { seed: 5, ..Default::default() }).unwrap();
        drive(&mut t, 5, 100, f);
        assert!(t.trials().iter().all(|t| !bad(&t.point)));
        assert!(!t.failed.is_empty());
        // Failing everything still proposes points, and nothing panics.
        let mut s = Nsga2::new(reals(2), Nsga2Config { pop_size: 4, ..Default::default() }).unwrap();
        assert_eq!(drive(&mut s, 3, 30, |_| (None, 0.0)).len(), 30);
        assert!(s.population().is_empty());
        let mut t = Tpe::new(reals(2), TpeConfig::default()).unwrap();
        assert_eq!(drive(&mut t, 3, 30, |_| (Some(vec![f64::NAN, 1.0]), f64::NAN)).len(), 30);
    }

    #[test]
    fn asynchronous_tells() {
        let space = Space::new(vec![Dim::Choice(6), Dim::Choice(6), Dim::Real { lo: 0.0, hi: 1.0 }]);
        let f = |x: &Point| vec![x[0] + x[2], 5.0 - x[0] + x[1] * x[2]];
        let mut s = Nsga2::new(space.clone(), Nsga2Config { pop_size: 8, seed: 1, ..Default::default() }).unwrap();
        // More than a generation out at once, told in reverse order, with extra tells that are
        // ignored: a repeat, a point outside the space, a point never asked.
        let first = s.ask(13);
        assert_eq!(first.len(), 13);
        for p in first.iter().rev() {
            s.tell(p, Some(&f(p)), 0.0);
        }
        assert_eq!(s.generation(), 1);
        assert_eq!(s.population().len(), 8);
        s.tell(&first[0], Some(&[0.0, 0.0]), 0.0);
        s.tell(&vec![9.0, 0.0, 0.5], Some(&[0.0, 0.0]), 0.0);
        s.tell(&vec![1.0, 0.0], Some(&[0.0, 0.0]), 0.0);
        assert!(s.population().iter().all(|t| t.objectives != [0.0, 0.0]));
        // A steady trickle (always 3 out) still advances generations.
        let mut out: Vec<Point> = s.ask(3);
        for _ in 0..40 {
            let p = out.remove(0);
            s.tell(&p, Some(&f(&p)), 0.0);
            out.extend(s.ask(1));
        }
        assert!(s.generation() >= 5, "generation {}", s.generation());
        // A point told without being asked is recorded, and never proposed afterwards.
        let mut r = RandomSearch::new(Space::new(vec![Dim::Choice(2)]), 0).unwrap();
        r.tell(&vec![1.0], Some(&[1.0]), 0.0);
        assert_eq!(r.ask(5), vec![vec![0.0]]);
    }

    #[test]
    fn parzen_densities() {
        // Truncated mixtures integrate to one.
        let dim = Dim::Real { lo: -1.0, hi: 3.0 };
        for xs in [vec![], vec![-1.0], vec![0.2, 0.25, 2.9, 3.0, 1.0]] {
            let p = Parzen::fit(&dim, &xs, 1.0);
            let n = 200_000;
            let h = 4.0 / n as f64;
            let total: f64 = (0..n).map(|i| p.log_pdf(-1.0 + (i as f64 + 0.5) * h).exp() * h).sum();
            assert!((total - 1.0).abs() < 1e-4, "{xs:?}: {total}");
            let mut rng = rng_from(1);
            assert!((0..1000).map(|_| p.sample(&mut rng)).all(|x| (-1.0..=3.0).contains(&x)));
        }
        let c = Parzen::fit(&Dim::Choice(3), &[0.0, 0.0, 2.0], 1.0);
        let probs: Vec<f64> = (0..3).map(|i| c.log_pdf(i as f64).exp()).collect();
        assert!((probs[0] - 0.5).abs() < 1e-12 && (probs[1] - 1.0 / 6.0).abs() < 1e-12);
        assert!((norm_cdf(1.0) - 0.841_344_746).abs() < 1e-7);
        assert!((erfc(-0.5) - 1.520_499_878).abs() < 1e-7);
        assert_eq!(Parzen::fit(&Dim::Real { lo: 2.0, hi: 2.0 }, &[2.0], 1.0).sample(&mut rng_from(0)), 2.0);
    }

    #[test]
    fn uniform_draws() {
        let mut rng = rng_from(42);
        let mut counts = [0usize; 6];
        for _ in 0..60_000 {
            counts[below(&mut rng, 6)] += 1;
        }
        assert!(counts.iter().all(|&c| (9_500..10_500).contains(&c)), "{counts:?}");
        let mean: f64 = (0..100_000).map(|_| normal(&mut rng)).sum::<f64>() / 100_000.0;
        assert!(mean.abs() < 0.02);
        assert_eq!(below(&mut rng, 0), 0);
    }
}
