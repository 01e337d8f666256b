//! Rotary position embeddings, computed as ggml's `ggml_rope_ext` does on the CPU (f32 angles
//! built by repeated multiplication, `Normal` or `NeoX` pairing, optional frequency factors).

use crate::config::RopeMode;

/// RoPE parameters for one model.
#[derive(Clone, Debug)]
pub struct Rope {
    pub mode: RopeMode,
    /// Rotated dimensions per head (the rest pass through).
    pub n_rot: usize,
    pub head_dim: usize,
    pub freq_base: f32,
    /// Per-pair frequency divisors (`rope_freqs.weight`, Llama 3.1), `n_rot / 2` of them.
    pub freq_factors: Option<Vec<f32>>,
}

impl Rope {
    /// `(cos, sin)` for the `n_rot / 2` pairs at position `pos`.
    pub fn angles(&self, pos: usize) -> Vec<(f32, f32)> {
        let theta_scale = self.freq_base.powf(-2.0 / self.n_rot as f32);
        let mut theta = pos as f32;
        (0..self.n_rot / 2)
            .map(|i| {
                let ff = self.freq_factors.as_ref().and_then(|f| f.get(i)).copied().unwrap_or(1.0);
                let t = theta / ff;
                theta *= theta_scale;
                (t.cos(), t.sin())
            })
            .collect()
    }

    /// Rotate every head of one token's vector (`n_heads * head_dim`) in place.
    pub fn apply(&self, x: &mut [f32], angles: &[(f32, f32)]) {
        let half = self.n_rot / 2;
        for head in x.chunks_exact_mut(self.head_dim) {
            for (i, &(c, s)) in angles.iter().enumerate().take(half) {
                let (a, b) = match self.mode {
                    RopeMode::Normal => (2 * i, 2 * i + 1),
                    RopeMode::Neox => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    }

    /// Rotate `n_tokens` rows of `row_len` (`n_heads * head_dim`) at positions `pos0..`.
    pub fn apply_rows(&self, x: &mut [f32], row_len: usize, pos0: usize) {
        self.apply_rows_with(x, row_len, &self.angles_rows(pos0, x.len() / row_len.max(1)));
    }

    /// The angles of `n` consecutive positions from `pos0` (for [`Rope::apply_rows_with`]).
    pub fn angles_rows(&self, pos0: usize, n: usize) -> Vec<Vec<(f32, f32)>> {
        use rayon::prelude::*;
        (pos0..pos0 + n).into_par_iter().map(|p| self.angles(p)).collect()
    }

    /// [`Rope::apply_rows`] with the angles of each row's position precomputed (row `t` uses
    /// `angles[t]`), so that the layers of one forward pass share them.
    pub fn apply_rows_with(&self, x: &mut [f32], row_len: usize, angles: &[Vec<(f32, f32)>]) {
        use rayon::prelude::*;
        x.par_chunks_mut(row_len).zip(angles.par_iter()).for_each(|(row, a)| self.apply(row, a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook formula in f64: pair `(a, b)` rotated by `pos * base^(-2i / n_rot)`.
    fn naive(x: &[f32], pos: usize, mode: RopeMode, n_rot: usize, base: f64) -> Vec<f32> {
        let mut out = x.to_vec();
        let half = n_rot / 2;
        for i in 0..half {
            let theta = pos as f64 * base.powf(-2.0 * i as f64 / n_rot as f64);
            let (a, b) = if mode == RopeMode::Normal { (2 * i, 2 * i + 1) } else { (i, i + half) };
            let (x0, x1) = (x[a] as f64, x[b] as f64);
            out[a] = (x0 * theta.cos() - x1 * theta.sin()) as f32;
            out[b] = (x0 * theta.sin() + x1 * theta.cos()) as f32;
        }
        out
    }

    #[test]
    fn matches_textbook_rotation() {
        let head_dim = 16;
        for mode in [RopeMode::Normal, RopeMode::Neox] {
            for n_rot in [16, 8] {
                let rope = Rope { mode, n_rot, head_dim, freq_base: 10000.0, freq_factors: None };
                for pos in [0usize, 1, 7, 100, 511] {
                    let x: Vec<f32> = (0..head_dim).map(|i| (i as f32 * 0.37).sin() + 0.1).collect();
                    let mut got = x.clone();
                    rope.apply(&mut got, &rope.angles(pos));
                    let want = naive(&x, pos, mode, n_rot, 10000.0);
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() < 2e-4, "{mode:?} n_rot {n_rot} pos {pos}: {g} vs {w}");
                    }
                    // Rotation keeps the norm.
                    let n0: f32 = x.iter().map(|v| v * v).sum();
                    let n1: f32 = got.iter().map(|v| v * v).sum();
                    assert!((n0 - n1).abs() < 1e-3);
                }
            }
        }
    }

    #[test]
    fn precomputed_angles_equal_per_row() {
        let rope = Rope { mode: RopeMode::Neox, n_rot: 8, head_dim: 8, freq_base: 10000.0, freq_factors: None };
        let x: Vec<f32> = (0..5 * 16).map(|i| (i as f32 * 0.37).sin()).collect();
        let (mut a, mut b) = (x.clone(), x);
        rope.apply_rows(&mut a, 16, 3);
        rope.apply_rows_with(&mut b, 16, &rope.angles_rows(3, 5));
        assert_eq!(a, b);
    }

    #[test]
    fn relative_position_property() {
        // q(m)·k(n) depends only on m - n.
        let rope = Rope { mode: RopeMode::Normal, n_rot: 8, head_dim: 8, freq_base: 10000.0, freq_factors: None };
        let q: Vec<f32> = (0..8).map(|i| i as f32 * 0.1 - 0.3).collect();
        let k: Vec<f32> = (0..8).map(|i| 0.5 - i as f32 * 0.07).collect();
        let dot_at = |m: usize, n: usize| {
            let (mut a, mut b) = (q.clone(), k.clone());
            rope.apply(&mut a, &rope.angles(m));
            rope.apply(&mut b, &rope.angles(n));
            a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
        };
        assert!((dot_at(5, 2) - dot_at(13, 10)).abs() < 1e-4);
    }
}
