//! Multi-objective utilities: Pareto dominance, the fast non-dominated sort (plain and
//! constrained), crowding distance, exact hypervolume, normalisation and the inverted
//! generational distance.
//!
//! Every objective is minimised. Sorting, crowding distance and constrained domination follow
//! K. Deb, A. Pratap, S. Agarwal and T. Meyarivan, "A fast and elitist multiobjective genetic
//! algorithm: NSGA-II", IEEE Trans. Evol. Comput. 6(2), 2002. The hypervolume uses the
//! exclusive-volume recursion of L. While, L. Bradstreet and L. Barone, "A fast way of
//! calculating exact hypervolumes" (WFG), IEEE Trans. Evol. Comput. 16(1), 2012, slicing off
//! one objective per level, with a sweep in two dimensions.

use std::cmp::Ordering;

/// `a` Pareto-dominates `b`: at least as good in every objective (all minimised) and strictly
/// better in one. False when the lengths differ or either has a NaN where they are compared.
pub fn dominates(a: &[f64], b: &[f64]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut better = false;
    for (x, y) in a.iter().zip(b) {
        match x.partial_cmp(y) {
            Some(Ordering::Less) => better = true,
            Some(Ordering::Equal) => {}
            // Worse, or NaN.
            _ => return false,
        }
    }
    better
}

/// Deb's fast non-dominated sort over `n` items under a domination relation: the fronts, best
/// first, each in ascending index order.
fn sort_fronts(n: usize, dom: impl Fn(usize, usize) -> bool) -> Vec<Vec<usize>> {
    let mut beats: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut beaten_by = vec![0usize; n];
    for i in 0..n {
        for j in i + 1..n {
            if dom(i, j) {
                beats[i].push(j);
                beaten_by[j] += 1;
            } else if dom(j, i) {
                beats[j].push(i);
                beaten_by[i] += 1;
            }
        }
    }
    let mut fronts = Vec::new();
    let mut current: Vec<usize> = (0..n).filter(|&i| beaten_by[i] == 0).collect();
    while !current.is_empty() {
        let mut next = Vec::new();
        for &i in &current {
            for &j in &beats[i] {
                beaten_by[j] -= 1;
                if beaten_by[j] == 0 {
                    next.push(j);
                }
            }
        }
        next.sort_unstable();
        fronts.push(current);
        current = next;
    }
    fronts
}

/// The non-dominated fronts of `points` (Deb et al. 2002, fast non-dominated sort): indices into
/// `points`, the Pareto front first, each front in ascending index order. Every index appears
/// exactly once. A point with a NaN objective is comparable to nothing, so it lands in the first
/// front; callers drop such points first.
pub fn non_dominated_sort(points: &[Vec<f64>]) -> Vec<Vec<usize>> {
    sort_fronts(points.len(), |i, j| dominates(&points[i], &points[j]))
}

/// A violation as compared: NaN is the worst, negative values count as none.
fn clean_violation(v: f64) -> f64 {
    if v.is_nan() {
        f64::INFINITY
    } else {
        v.max(0.0)
    }
}

/// The fronts under Deb's constrained domination (Deb et al. 2002, section V): a feasible point
/// (violation 0) beats an infeasible one; of two infeasible points the smaller violation wins;
/// two feasible points compare by Pareto dominance. `violation[i]` belongs to `points[i]`; a
/// missing entry counts as 0, a negative one as 0 and NaN as the worst violation.
pub fn constrained_sort(points: &[Vec<f64>], violation: &[f64]) -> Vec<Vec<usize>> {
    let v: Vec<f64> = (0..points.len()).map(|i| clean_violation(violation.get(i).copied().unwrap_or(0.0))).collect();
    sort_fronts(points.len(), |i, j| match (v[i] == 0.0, v[j] == 0.0) {
        (true, true) => dominates(&points[i], &points[j]),
        (true, false) => true,
        (false, true) => false,
        (false, false) => v[i] < v[j],
    })
}

/// Crowding distance of each member of `front` (indices into `points`), in `front`'s order
/// (Deb et al. 2002, section III-B): per objective, the gap between a member's two neighbours
/// divided by the objective's range, summed over the objectives. The extremes of any objective
/// get infinity, and so does every member of a front of at most two. An objective without range
/// adds nothing. An index out of range counts as a point of NaN objectives.
pub fn crowding_distance(points: &[Vec<f64>], front: &[usize]) -> Vec<f64> {
    let n = front.len();
    if n <= 2 {
        return vec![f64::INFINITY; n];
    }
    let m = front.iter().filter_map(|&i| points.get(i)).map(Vec::len).max().unwrap_or(0);
    let val = |k: usize, j: usize| points.get(front[k]).and_then(|p| p.get(j)).copied().unwrap_or(f64::NAN);
    let mut dist = vec![0.0; n];
    let mut order: Vec<usize> = (0..n).collect();
    for j in 0..m {
        order.sort_by(|&a, &b| val(a, j).total_cmp(&val(b, j)));
        let (first, last) = (order[0], order[n - 1]);
        dist[first] = f64::INFINITY;
        dist[last] = f64::INFINITY;
        let range = val(last, j) - val(first, j);
        if !(range > 0.0 && range.is_finite()) {
            continue;
        }
        for w in order.windows(3) {
            dist[w[1]] += (val(w[2], j) - val(w[0], j)) / range;
        }
    }
    dist
}

/// The component-wise minimum (ideal point) and maximum (nadir of these points) of `points`;
/// `None` when there are none. All points should have the same length; the shortest decides.
pub fn ideal_and_nadir(points: &[Vec<f64>]) -> Option<(Vec<f64>, Vec<f64>)> {
    let m = points.iter().map(Vec::len).min()?;
    let mut ideal = vec![f64::INFINITY; m];
    let mut nadir = vec![f64::NEG_INFINITY; m];
    for p in points {
        for j in 0..m {
            ideal[j] = ideal[j].min(p[j]);
            nadir[j] = nadir[j].max(p[j]);
        }
    }
    Some((ideal, nadir))
}

/// `points` scaled so that `ideal` maps to 0 and `nadir` to 1 in each objective. An objective
/// whose range is not positive (or missing from `ideal`/`nadir`) is only shifted.
pub fn normalize(points: &[Vec<f64>], ideal: &[f64], nadir: &[f64]) -> Vec<Vec<f64>> {
    points
        .iter()
        .map(|p| {
            p.iter()
                .enumerate()
                .map(|(j, &x)| {
                    let lo = ideal.get(j).copied().unwrap_or(0.0);
                    let range = nadir.get(j).map_or(0.0, |&hi| hi - lo);
                    if range > 0.0 {
                        (x - lo) / range
                    } else {
                        x - lo
                    }
                })
                .collect()
        })
        .collect()
}

/// Inverted generational distance: the mean, over the points of `reference_front`, of the
/// Euclidean distance to the nearest point of `front`. 0 when `reference_front` is empty,
/// infinity when only `front` is.
pub fn igd(front: &[Vec<f64>], reference_front: &[Vec<f64>]) -> f64 {
    if reference_front.is_empty() {
        return 0.0;
    }
    if front.is_empty() {
        return f64::INFINITY;
    }
    let dist = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let total: f64 =
        reference_front.iter().map(|r| front.iter().map(|f| dist(f, r)).fold(f64::INFINITY, f64::min)).sum();
    total / reference_front.len() as f64
}

/// Hypervolume of the region dominated by `points` and bounded by `reference` (all objectives
/// minimised), exactly, in any number of objectives. Only points strictly better than the
/// reference in every objective count; points of another length or with a non-finite
/// coordinate are ignored. A reference with a NaN is NaN; one with an infinite coordinate gives
/// infinity if any point counts. 0 for an empty reference.
///
/// Two objectives are a sweep; more are computed by WFG's exclusive-volume recursion (While,
/// Bradstreet and Barone 2012): with the points in decreasing order of the last objective, each
/// point's exclusive volume is its slab in that objective times its (d−1)-dimensional box less
/// the hypervolume of the later points limited by it. Milliseconds for a few hundred points in
/// five objectives.
pub fn hypervolume(points: &[Vec<f64>], reference: &[f64]) -> f64 {
    let d = reference.len();
    if d == 0 {
        return 0.0;
    }
    if reference.iter().any(|r| r.is_nan()) {
        return f64::NAN;
    }
    let counted: Vec<Vec<f64>> = points
        .iter()
        .filter(|p| p.len() == d && p.iter().zip(reference).all(|(x, r)| x.is_finite() && x < r))
        .cloned()
        .collect();
    if counted.is_empty() {
        return 0.0;
    }
    if reference.iter().any(|r| r.is_infinite()) {
        return f64::INFINITY;
    }
    hv(nondominated(counted), reference)
}

/// The points that no other weakly dominates, without duplicates.
fn nondominated(mut pts: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    // In lexicographic order a point can only be weakly dominated by one before it.
    pts.sort_by(|a, b| lex_cmp(a, b));
    let mut kept: Vec<Vec<f64>> = Vec::with_capacity(pts.len());
    for p in pts {
        if !kept.iter().any(|q| q.iter().zip(&p).all(|(x, y)| x <= y)) {
            kept.push(p);
        }
    }
    kept
}

fn lex_cmp(a: &[f64], b: &[f64]) -> Ordering {
    a.iter().zip(b).map(|(x, y)| x.total_cmp(y)).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
}

/// Hypervolume of mutually non-dominated points, each strictly inside `r`.
fn hv(mut pts: Vec<Vec<f64>>, r: &[f64]) -> f64 {
    let d = r.len();
    match (pts.len(), d) {
        (0, _) => 0.0,
        (1, _) => pts[0].iter().zip(r).map(|(x, y)| y - x).product(),
        (_, 1) => r[0] - pts.iter().map(|p| p[0]).fold(f64::INFINITY, f64::min),
        (_, 2) => {
            // Non-dominated and sorted by the first objective: the second decreases.
            pts.sort_by(|a, b| a[0].total_cmp(&b[0]));
            let mut top = r[1];
            let mut sum = 0.0;
            for p in &pts {
                sum += (r[0] - p[0]) * (top - p[1]);
                top = p[1];
            }
            sum
        }
        _ => {
            let last = d - 1;
            pts.sort_by(|a, b| b[last].total_cmp(&a[last]));
            let mut sum = 0.0;
            for (k, p) in pts.iter().enumerate() {
                // Every later point is at least as good in the last objective, so limited by
                // `p` it shares `p`'s slab [p_last, r_last): the problem loses a dimension.
                let limited: Vec<Vec<f64>> =
                    pts[k + 1..].iter().map(|q| (0..last).map(|i| p[i].max(q[i])).collect()).collect();
                let boxed: f64 = (0..last).map(|i| r[i] - p[i]).product();
                let covered = hv(nondominated(limited), &r[..last]);
                sum += (r[last] - p[last]) * (boxed - covered).max(0.0);
            }
            sum
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator for test data (SplitMix64).
    struct Mix(u64);
    impl Mix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Hypervolume by inclusion–exclusion over every non-empty subset.
    fn hv_inclusion_exclusion(points: &[Vec<f64>], r: &[f64]) -> f64 {
        let pts: Vec<&Vec<f64>> = points.iter().filter(|p| p.iter().zip(r).all(|(x, y)| x < y)).collect();
        let mut total = 0.0;
        for mask in 1u32..(1 << pts.len()) {
            let members: Vec<&Vec<f64>> = (0..pts.len()).filter(|i| mask >> i & 1 == 1).map(|i| pts[i]).collect();
            let vol: f64 =
                (0..r.len()).map(|j| r[j] - members.iter().map(|p| p[j]).fold(f64::NEG_INFINITY, f64::max)).product();
            total += if members.len() % 2 == 1 { vol } else { -vol };
        }
        total
    }

    /// Hypervolume of integer points inside `[0, side)^d` by counting the unit cells they dominate.
    fn hv_grid_count(points: &[Vec<f64>], d: usize, side: usize) -> f64 {
        let mut count = 0usize;
        let mut cell = vec![0usize; d];
        loop {
            if points.iter().any(|p| p.iter().zip(&cell).all(|(x, &c)| *x <= c as f64)) {
                count += 1;
            }
            let mut i = 0;
            while i < d {
                cell[i] += 1;
                if cell[i] < side {
                    break;
                }
                cell[i] = 0;
                i += 1;
            }
            if i == d {
                return count as f64;
            }
        }
    }

    #[test]
    fn dominance() {
        assert!(dominates(&[1.0, 2.0], &[1.0, 3.0]));
        assert!(!dominates(&[1.0, 3.0], &[1.0, 3.0]));
        assert!(!dominates(&[0.0, 4.0], &[1.0, 3.0]));
        assert!(!dominates(&[f64::NAN, 1.0], &[2.0, 2.0]));
        assert!(!dominates(&[1.0, 1.0], &[2.0, f64::NAN]));
        assert!(!dominates(&[1.0], &[2.0, 2.0]));
    }

    #[test]
    fn fronts_by_hand() {
        let pts = vec![vec![1.0, 5.0], vec![2.0, 3.0], vec![3.0, 3.0], vec![4.0, 1.0], vec![2.0, 6.0], vec![5.0, 5.0]];
        assert_eq!(non_dominated_sort(&pts), vec![vec![0, 1, 3], vec![2, 4], vec![5]]);
        assert!(non_dominated_sort(&[]).is_empty());
        // Equal points share a front.
        assert_eq!(non_dominated_sort(&[vec![1.0, 1.0], vec![1.0, 1.0]]), vec![vec![0, 1]]);
    }

    #[test]
    fn constrained_fronts_by_hand() {
        let pts = vec![vec![1.0, 1.0], vec![5.0, 5.0], vec![2.0, 0.0], vec![0.0, 0.0], vec![0.0, 0.0]];
        // 0 and 2 feasible and mutually non-dominated; 1 feasible but dominated; 3 and 4 infeasible,
        // the smaller violation first, although they dominate every feasible point.
        let v = [0.0, 0.0, 0.0, 0.5, 2.0];
        assert_eq!(constrained_sort(&pts, &v), vec![vec![0, 2], vec![1], vec![3], vec![4]]);
        // NaN violation is the worst; a missing entry is feasible (4, which then dominates 2 and 1).
        let v = [f64::NAN, 0.0, 0.0, 1.0];
        assert_eq!(constrained_sort(&pts, &v), vec![vec![4], vec![2], vec![1], vec![3], vec![0]]);
        assert_eq!(constrained_sort(&pts[..2], &[3.0, 3.0]), vec![vec![0, 1]]);
    }

    #[test]
    fn crowding_by_hand() {
        let pts = vec![vec![0.0, 4.0], vec![1.0, 2.0], vec![2.0, 1.0], vec![4.0, 0.0], vec![9.0, 9.0]];
        let cd = crowding_distance(&pts, &[3, 1, 0, 2]);
        assert_eq!(cd[0], f64::INFINITY);
        assert_eq!(cd[2], f64::INFINITY);
        assert!((cd[1] - 1.25).abs() < 1e-12, "{cd:?}");
        assert!((cd[3] - 1.25).abs() < 1e-12, "{cd:?}");
        assert_eq!(crowding_distance(&pts, &[0, 1]), vec![f64::INFINITY; 2]);
        assert!(crowding_distance(&pts, &[]).is_empty());
        // A bad index does not panic.
        assert_eq!(crowding_distance(&pts, &[0, 1, 2, 77]).len(), 4);
    }

    #[test]
    fn hypervolume_by_hand() {
        let pts = vec![vec![1.0, 3.0], vec![2.0, 2.0], vec![3.0, 1.0]];
        assert_eq!(hypervolume(&pts, &[4.0, 4.0]), 6.0);
        // Dominated points and duplicates change nothing; points on the reference count nothing.
        let mut more = pts.clone();
        more.extend([vec![2.5, 2.5], vec![2.0, 2.0], vec![4.0, 0.0], vec![0.0, 4.0], vec![f64::NAN, 0.0]]);
        assert_eq!(hypervolume(&more, &[4.0, 4.0]), 6.0);
        assert_eq!(hypervolume(&[vec![1.0, 2.0, 3.0]], &[2.0, 4.0, 7.0]), 8.0);
        assert_eq!(hypervolume(&[vec![1.0]], &[3.0]), 2.0);
        assert_eq!(hypervolume(&[], &[1.0, 1.0]), 0.0);
        assert_eq!(hypervolume(&pts, &[]), 0.0);
        assert!(hypervolume(&pts, &[f64::NAN, 4.0]).is_nan());
        assert_eq!(hypervolume(&pts, &[f64::INFINITY, 4.0]), f64::INFINITY);
        // Two unit-offset cubes in 3-D: 8 + 8 − 1.
        let cubes = vec![vec![0.0, 0.0, 1.0], vec![1.0, 1.0, 0.0]];
        assert_eq!(hypervolume(&cubes, &[2.0, 2.0, 2.0]), 4.0 + 2.0 - 1.0);
    }

    #[test]
    fn hypervolume_matches_inclusion_exclusion() {
        let mut g = Mix(7);
        for d in 2..=6 {
            for n in 1..=9 {
                let pts: Vec<Vec<f64>> = (0..n).map(|_| (0..d).map(|_| g.unit()).collect()).collect();
                let r = vec![1.0; d];
                let (a, b) = (hypervolume(&pts, &r), hv_inclusion_exclusion(&pts, &r));
                assert!((a - b).abs() < 1e-12, "d={d} n={n}: {a} vs {b}");
            }
        }
        // Points spread over a front (x on a simplex) so that few are dominated.
        for d in 3..=5 {
            let pts: Vec<Vec<f64>> = (0..10)
                .map(|_| {
                    let w: Vec<f64> = (0..d).map(|_| g.unit() + 0.01).collect();
                    let s: f64 = w.iter().sum();
                    w.iter().map(|x| x / s).collect()
                })
                .collect();
            let r = vec![1.1; d];
            let (a, b) = (hypervolume(&pts, &r), hv_inclusion_exclusion(&pts, &r));
            assert!((a - b).abs() < 1e-12, "d={d}: {a} vs {b}");
        }
    }

    #[test]
    fn hypervolume_matches_cell_counting() {
        let mut g = Mix(11);
        for (d, side, n) in [(3, 12, 40), (4, 8, 60), (5, 6, 80)] {
            let pts: Vec<Vec<f64>> = (0..n).map(|_| (0..d).map(|_| g.below(side as u64) as f64).collect()).collect();
            assert_eq!(hypervolume(&pts, &vec![side as f64; d]), hv_grid_count(&pts, d, side), "d={d}");
        }
        // 200 mutually non-dominated integer points in five objectives: coordinates in 0..=10
        // summing to 20.
        let mut seen = std::collections::HashSet::new();
        let mut pts = Vec::new();
        while pts.len() < 200 {
            let mut p = [0u64; 5];
            for x in p.iter_mut().take(4) {
                *x = g.below(11);
            }
            let rest = 20i64 - p[..4].iter().sum::<u64>() as i64;
            if !(0..=10).contains(&rest) {
                continue;
            }
            p[4] = rest as u64;
            if seen.insert(p) {
                pts.push(p.iter().map(|&x| x as f64).collect::<Vec<f64>>());
            }
        }
        assert_eq!(non_dominated_sort(&pts).len(), 1);
        let t = std::time::Instant::now();
        let fast = hypervolume(&pts, &[11.0; 5]);
        let took = t.elapsed();
        assert_eq!(fast, hv_grid_count(&pts, 5, 11));
        eprintln!("hypervolume of 200 points in 5-D: {fast} in {took:?}");
    }

    #[test]
    fn normalisation_and_igd() {
        let pts = vec![vec![1.0, 10.0], vec![3.0, 30.0], vec![2.0, 10.0]];
        let (ideal, nadir) = ideal_and_nadir(&pts).unwrap();
        assert_eq!((ideal.clone(), nadir.clone()), (vec![1.0, 10.0], vec![3.0, 30.0]));
        assert_eq!(normalize(&pts, &ideal, &nadir), vec![vec![0.0, 0.0], vec![1.0, 1.0], vec![0.5, 0.0]]);
        assert_eq!(normalize(&[vec![5.0]], &[5.0], &[5.0]), vec![vec![0.0]]);
        assert!(ideal_and_nadir(&[]).is_none());
        assert_eq!(igd(&pts, &pts), 0.0);
        assert_eq!(igd(&[vec![0.0, 0.0]], &[vec![3.0, 4.0], vec![0.0, 1.0]]), 3.0);
        assert_eq!(igd(&[], &pts), f64::INFINITY);
        assert_eq!(igd(&pts, &[]), 0.0);
    }
}
