//! Choosing exactly `k` weights to prune: the `k` smallest scores, ties broken by position.

use std::cmp::Ordering;

/// Set `mask[i]` for the `k` smallest of `scores` (ties: lower index first), leaving the other
/// entries as they are. Linear time (one selection on a copy, one pass).
pub fn mark_smallest(scores: &[f32], k: usize, mask: &mut [bool]) {
    debug_assert_eq!(scores.len(), mask.len());
    let k = k.min(scores.len());
    if k == 0 {
        return;
    }
    if k == scores.len() {
        mask.fill(true);
        return;
    }
    // Small groups (N:M): a sort of a few positions beats copying for a selection.
    if scores.len() <= 16 {
        let mut idx = [0u8; 16];
        let idx = &mut idx[..scores.len()];
        for (i, v) in idx.iter_mut().enumerate() {
            *v = i as u8;
        }
        idx.sort_unstable_by(|&a, &b| scores[a as usize].total_cmp(&scores[b as usize]).then(a.cmp(&b)));
        for &i in &idx[..k] {
            mask[i as usize] = true;
        }
        return;
    }
    let mut tmp = scores.to_vec();
    let (_, &mut thr, _) = tmp.select_nth_unstable_by(k - 1, f32::total_cmp);
    let below = scores.iter().filter(|s| s.total_cmp(&thr) == Ordering::Less).count();
    let mut equal_left = k - below;
    for (m, s) in mask.iter_mut().zip(scores) {
        match s.total_cmp(&thr) {
            Ordering::Less => *m = true,
            Ordering::Equal if equal_left > 0 => {
                *m = true;
                equal_left -= 1;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_k_with_ties_by_position() {
        for len in [3usize, 8, 16, 17, 100] {
            let scores: Vec<f32> = (0..len).map(|i| ((i * 7) % 5) as f32).collect();
            for k in 0..=len {
                let mut mask = vec![false; len];
                mark_smallest(&scores, k, &mut mask);
                assert_eq!(mask.iter().filter(|m| **m).count(), k, "len {len} k {k}");
                // Every marked score is <= every unmarked one; among equals the earlier ones go.
                let max_in = scores.iter().zip(&mask).filter(|(_, &m)| m).map(|(s, _)| *s).fold(f32::MIN, f32::max);
                let min_out = scores.iter().zip(&mask).filter(|(_, &m)| !m).map(|(s, _)| *s).fold(f32::MAX, f32::min);
                assert!(max_in <= min_out);
                if k > 0 && k < len && max_in == min_out {
                    let last_in = (0..len).filter(|&i| mask[i] && scores[i] == max_in).max().unwrap();
                    let first_out = (0..len).filter(|&i| !mask[i] && scores[i] == max_in).min().unwrap();
                    assert!(last_in < first_out);
                }
            }
        }
    }
}
