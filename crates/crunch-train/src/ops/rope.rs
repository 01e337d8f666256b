//! Rotary position embeddings in both of crunch's modes (`Normal`: pairs `(2i, 2i + 1)`, `NeoX`:
//! pairs `(i, i + n_rot / 2)`), with the angles of crunch-model's [`Rope::angles`] (f32, built by
//! repeated multiplication as ggml does, frequency factors included). The angles are constants,
//! so the backward pass is the inverse rotation.

use rayon::prelude::*;

use crunch_model::config::RopeMode;
use crunch_model::rope::Rope;

use crate::float::Float;

fn rotate<T: Float>(x: &mut [T], rope: &Rope, angles: &[(f32, f32)], inverse: bool) {
    let half = rope.n_rot / 2;
    if rope.head_dim == 0 {
        return;
    }
    for head in x.chunks_exact_mut(rope.head_dim) {
        for (i, &(c, s)) in angles.iter().enumerate().take(half) {
            let (a, b) = match rope.mode {
                RopeMode::Normal => (2 * i, 2 * i + 1),
                RopeMode::Neox => (i, i + half),
            };
            let (c, s) = (T::from_f32(c), T::from_f32(s));
            let s = if inverse { -s } else { s };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * c - x1 * s;
            head[b] = x0 * s + x1 * c;
        }
    }
}

/// Rotate every head of every row (`row_len = n_heads * head_dim`) in place; row `t` uses
/// `angles[t]` (from [`Rope::angles_rows`]).
pub fn rope<T: Float>(x: &mut [T], row_len: usize, rope: &Rope, angles: &[Vec<(f32, f32)>]) {
    if row_len == 0 {
        return;
    }
    x.par_chunks_mut(row_len).zip(angles.par_iter()).for_each(|(r, a)| rotate(r, rope, a, false));
}

/// The vector-Jacobian product of [`rope`]: `dy` rotated back (the transpose of a rotation), in place.
pub fn rope_backward<T: Float>(dy: &mut [T], row_len: usize, rope: &Rope, angles: &[Vec<(f32, f32)>]) {
    if row_len == 0 {
        return;
    }
    dy.par_chunks_mut(row_len).zip(angles.par_iter()).for_each(|(r, a)| rotate(r, rope, a, true));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{dot, numeric_gradient, relative_error};
    use crate::testutil::randn;

    fn ropes() -> Vec<Rope> {
        let mut v = Vec::new();
        for mode in [RopeMode::Normal, RopeMode::Neox] {
            for (n_rot, head_dim, ff) in [(8, 8, None), (4, 8, None), (8, 8, Some(vec![1.0, 2.0, 4.0, 8.0]))] {
                v.push(Rope { mode, n_rot, head_dim, freq_base: 10000.0, freq_factors: ff });
            }
        }
        v
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = crunch_testkit::Rng::new(5);
        for r in ropes() {
            let (n, heads) = (6, 3);
            let row = heads * r.head_dim;
            let angles = r.angles_rows(0, n);
            let x = randn(&mut rng, n * row, 1.0);
            let mut got = randn(&mut rng, n * row, 1.0);
            let dy = got.clone();
            rope_backward(&mut got, row, &r, &angles);
            let want = numeric_gradient(&x, 1e-5, |x| {
                let mut y = x.to_vec();
                rope(&mut y, row, &r, &angles);
                dot(&dy, &y)
            });
            let e = relative_error(&got, &want);
            assert!(e < 1e-6, "{:?} n_rot {}: relative error {e:e}", r.mode, r.n_rot);
        }
    }

    #[test]
    fn f32_forward_is_crunch_models() {
        let mut rng = crunch_testkit::Rng::new(6);
        for r in ropes() {
            let row = 2 * r.head_dim;
            let x: Vec<f32> = (0..5 * row).map(|_| rng.normal()).collect();
            let (mut a, mut b) = (x.clone(), x);
            rope(&mut a, row, &r, &r.angles_rows(0, 5));
            r.apply_rows(&mut b, row, 0);
            assert_eq!(a, b, "{:?}", r.mode);
        }
    }
}
