//! Multiple-choice knapsack: pick one option per item (a type per tensor) minimising the summed
//! cost (predicted damage) with the summed weight (bytes) within a budget.
//!
//! Two solvers, both run:
//! - **Lagrangian relaxation**: for a price `λ` per byte every item independently takes the option
//!   minimising `cost + λ·weight`; bisection finds the smallest `λ` that fits. The dual value
//!   `Σ_i min_o (c + λw) − λB` is a lower bound on the optimum, so `primal − dual` bounds how far
//!   any answer can be from the best.
//! - **Dynamic programming** over the budget cut into buckets (weights rounded up, so every answer
//!   fits the true budget): optimal for the rounded weights, which with tens of thousands of buckets
//!   is within a tiny fraction of the true optimum.
//!
//! The better feasible answer wins; the gap to the Lagrangian bound is reported.

use serde::Serialize;

/// One option of an item.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Opt {
    pub weight: u64,
    pub cost: f64,
}

/// The solver's answer.
#[derive(Clone, Debug, Serialize)]
pub struct Solution {
    /// Chosen option index per item.
    pub choice: Vec<usize>,
    pub weight: u64,
    pub cost: f64,
    /// A lower bound on the best possible cost within the budget.
    pub lower_bound: f64,
    /// `cost − lower_bound` (0 = provably optimal).
    pub gap: f64,
    /// Which solver produced the answer.
    pub solver: &'static str,
}

/// Why no answer exists.
#[derive(Clone, Debug, PartialEq)]
pub struct Infeasible {
    /// The smallest total weight any choice reaches.
    pub min_weight: u64,
}

fn totals(items: &[Vec<Opt>], choice: &[usize]) -> (u64, f64) {
    choice.iter().zip(items).fold((0, 0.0), |(w, c), (&k, opts)| (w + opts[k].weight, c + opts[k].cost))
}

/// The lightest option of every item (ties: the cheaper).
fn lightest(items: &[Vec<Opt>]) -> Vec<usize> {
    items
        .iter()
        .map(|opts| {
            (0..opts.len())
                .min_by(|&a, &b| opts[a].weight.cmp(&opts[b].weight).then(opts[a].cost.total_cmp(&opts[b].cost)))
                .unwrap_or(0)
        })
        .collect()
}

/// The answer taking every item's lightest option.
pub fn lightest_choice(items: &[Vec<Opt>]) -> Solution {
    let choice = lightest(items);
    let (weight, cost) = totals(items, &choice);
    Solution { choice, weight, cost, lower_bound: f64::NEG_INFINITY, gap: f64::NAN, solver: "lightest" }
}

fn best_at(items: &[Vec<Opt>], lambda: f64) -> (Vec<usize>, f64) {
    let mut dual = 0.0;
    let choice = items
        .iter()
        .map(|opts| {
            let mut best = 0;
            let mut bv = f64::INFINITY;
            for (k, o) in opts.iter().enumerate() {
                let v = o.cost + lambda * o.weight as f64;
                if v < bv || (v == bv && o.weight < opts[best].weight) {
                    bv = v;
                    best = k;
                }
            }
            dual += bv;
            best
        })
        .collect();
    (choice, dual)
}

/// Lagrangian relaxation: the best answer on the lower convex hull, and the dual bound.
pub fn lagrangian(items: &[Vec<Opt>], budget: u64) -> Result<Solution, Infeasible> {
    let light = lightest(items);
    let (min_w, _) = totals(items, &light);
    if min_w > budget {
        return Err(Infeasible { min_weight: min_w });
    }
    let (free, _) = best_at(items, 0.0);
    let (w0, c0) = totals(items, &free);
    if w0 <= budget {
        return Ok(Solution { choice: free, weight: w0, cost: c0, lower_bound: c0, gap: 0.0, solver: "lagrangian" });
    }
    // Find λ_hi that fits.
    let mut hi = 1e-12;
    loop {
        let (ch, _) = best_at(items, hi);
        if totals(items, &ch).0 <= budget || hi > 1e30 {
            break;
        }
        hi *= 4.0;
    }
    let mut lo = 0.0;
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        let (ch, _) = best_at(items, mid);
        if totals(items, &ch).0 <= budget {
            hi = mid;
        } else {
            lo = mid;
        }
        if hi - lo <= hi * 1e-12 {
            break;
        }
    }
    let (mut choice, _) = best_at(items, hi);
    if totals(items, &choice).0 > budget {
        choice = light;
    }
    // Best dual bound over the two ends of the bracket.
    let bound = |l: f64| best_at(items, l).1 - l * budget as f64;
    let lower_bound = bound(lo).max(bound(hi));
    // Greedy fill: spend what the hull answer leaves on the best cost drop per byte.
    improve_greedy(items, &mut choice, budget);
    let (weight, cost) = totals(items, &choice);
    Ok(Solution { choice, weight, cost, lower_bound, gap: (cost - lower_bound).max(0.0), solver: "lagrangian" })
}

fn improve_greedy(items: &[Vec<Opt>], choice: &mut [usize], budget: u64) {
    let (mut w, _) = totals(items, choice);
    loop {
        let mut best: Option<(usize, usize, f64)> = None;
        for (i, opts) in items.iter().enumerate() {
            let cur = opts[choice[i]];
            for (k, o) in opts.iter().enumerate() {
                if o.cost < cur.cost && w - cur.weight + o.weight <= budget {
                    let extra = o.weight.saturating_sub(cur.weight).max(1) as f64;
                    let gain = (cur.cost - o.cost) / extra;
                    if best.is_none_or(|b| gain > b.2) {
                        best = Some((i, k, gain));
                    }
                }
            }
        }
        let Some((i, k, _)) = best else { break };
        w = w - items[i][choice[i]].weight + items[i][k].weight;
        choice[i] = k;
    }
}

/// Dynamic programming over `buckets` budget buckets (weights rounded up).
pub fn dynamic(items: &[Vec<Opt>], budget: u64, buckets: usize) -> Result<Solution, Infeasible> {
    let light = lightest(items);
    let (min_w, _) = totals(items, &light);
    if min_w > budget {
        return Err(Infeasible { min_weight: min_w });
    }
    // Only the weight above each item's lightest option is budgeted: finer buckets where it matters.
    let base: Vec<u64> = items.iter().zip(&light).map(|(o, &k)| o[k].weight).collect();
    let slack = budget - min_w;
    let n_b = buckets.max(1);
    let unit = (slack as f64 / n_b as f64).max(1.0);
    let cap = ((slack as f64 / unit).floor() as usize).min(n_b);
    let wq = |item: usize, o: &Opt| -> usize { ((o.weight - base[item]) as f64 / unit).ceil() as usize };
    const INF: f64 = f64::INFINITY;
    let mut dp = vec![INF; cap + 1];
    dp[0] = 0.0;
    let mut back: Vec<Vec<u8>> = Vec::with_capacity(items.len());
    for (i, opts) in items.iter().enumerate() {
        let mut next = vec![INF; cap + 1];
        let mut pick = vec![u8::MAX; cap + 1];
        for (k, o) in opts.iter().enumerate() {
            let q = wq(i, o);
            if q > cap {
                continue;
            }
            for b in q..=cap {
                let v = dp[b - q] + o.cost;
                if v < next[b] {
                    next[b] = v;
                    pick[b] = k as u8;
                }
            }
        }
        dp = next;
        back.push(pick);
    }
    let (mut b, _) =
        dp.iter().enumerate().filter(|(_, v)| v.is_finite()).min_by(|x, y| x.1.total_cmp(y.1)).unwrap_or((0, &0.0));
    let mut choice = vec![0; items.len()];
    for i in (0..items.len()).rev() {
        let k = back[i][b] as usize;
        choice[i] = k;
        b -= wq(i, &items[i][k]);
    }
    improve_greedy(items, &mut choice, budget);
    let (weight, cost) = totals(items, &choice);
    Ok(Solution { choice, weight, cost, lower_bound: f64::NEG_INFINITY, gap: f64::NAN, solver: "dp" })
}

/// Both solvers; the better feasible answer, with the Lagrangian bound.
pub fn solve(items: &[Vec<Opt>], budget: u64) -> Result<Solution, Infeasible> {
    assert!(items.iter().all(|o| !o.is_empty() && o.len() < 255), "every item needs 1..255 options");
    let lag = lagrangian(items, budget)?;
    let dp = dynamic(items, budget, 20_000)?;
    let mut best = if dp.cost < lag.cost { dp } else { lag.clone() };
    best.lower_bound = lag.lower_bound.min(best.cost);
    best.gap = (best.cost - best.lower_bound).max(0.0);
    Ok(best)
}

/// The lightest choice whose cost is at most `max_cost`: bisection on the budget (the best cost
/// for a budget only falls as the budget grows). `None` when even the costliest answer misses.
pub fn smallest_within(items: &[Vec<Opt>], max_cost: f64) -> Option<Solution> {
    let light = lightest(items);
    let (mut lo, _) = totals(items, &light);
    let mut hi: u64 = items.iter().map(|o| o.iter().map(|x| x.weight).max().unwrap_or(0)).sum();
    let top = solve(items, hi).ok()?;
    if top.cost > max_cost {
        return None;
    }
    let mut best = top;
    if let Ok(s) = solve(items, lo) {
        if s.cost <= max_cost {
            return Some(s);
        }
    }
    while hi - lo > (hi / 100_000).max(1) {
        let mid = lo + (hi - lo) / 2;
        match solve(items, mid) {
            Ok(s) if s.cost <= max_cost => {
                hi = mid;
                best = s;
            }
            _ => lo = mid,
        }
    }
    Some(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(items: &[Vec<Opt>], budget: u64) -> Option<f64> {
        let mut best: Option<f64> = None;
        let mut idx = vec![0usize; items.len()];
        loop {
            let (w, c) = totals(items, &idx);
            if w <= budget && best.is_none_or(|b| c < b) {
                best = Some(c);
            }
            let mut i = 0;
            loop {
                if i == items.len() {
                    return best;
                }
                idx[i] += 1;
                if idx[i] < items[i].len() {
                    break;
                }
                idx[i] = 0;
                i += 1;
            }
        }
    }

    fn random_items(seed: u64, n: usize, k: usize) -> Vec<Vec<Opt>> {
        let mut s = seed;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        (0..n)
            .map(|_| {
                let scale = (next() % 1000 + 1) as f64;
                (0..k)
                    .map(|j| {
                        let w = (j as u64 + 1) * 100 + next() % 50;
                        Opt { weight: w, cost: scale * (0.5f64).powi(j as i32) * (1.0 + (next() % 100) as f64 / 100.0) }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn matches_brute_force() {
        for seed in 1..40u64 {
            let items = random_items(seed, 6, 4);
            let min: u64 = items.iter().map(|o| o.iter().map(|x| x.weight).min().unwrap()).sum();
            let max: u64 = items.iter().map(|o| o.iter().map(|x| x.weight).max().unwrap()).sum();
            for frac in [0.0, 0.2, 0.5, 0.8, 1.0] {
                let budget = min + ((max - min) as f64 * frac) as u64;
                let want = brute(&items, budget).unwrap();
                let got = solve(&items, budget).unwrap();
                assert!(got.weight <= budget);
                assert!(
                    (got.cost - want).abs() <= 1e-9 * want.max(1.0),
                    "seed {seed} frac {frac}: {} vs {want}",
                    got.cost
                );
                assert!(got.lower_bound <= want + 1e-9);
            }
        }
    }

    #[test]
    fn infeasible_and_trivial_budgets() {
        let items = random_items(7, 5, 3);
        let min: u64 = items.iter().map(|o| o.iter().map(|x| x.weight).min().unwrap()).sum();
        assert_eq!(solve(&items, min - 1).unwrap_err().min_weight, min);
        let all = solve(&items, u64::MAX / 4).unwrap();
        assert_eq!(all.gap, 0.0);
    }

    #[test]
    fn smallest_within_target() {
        let items = random_items(3, 20, 5);
        let loose = solve(&items, u64::MAX / 4).unwrap().cost;
        let target = loose * 20.0;
        let s = smallest_within(&items, target).unwrap();
        assert!(s.cost <= target);
        // A little less budget misses the target.
        if let Ok(t) = solve(&items, s.weight - s.weight / 50) {
            assert!(t.cost > target * 0.999 || t.weight < s.weight);
        }
        assert!(smallest_within(&items, loose * 0.5).is_none());
    }
}
