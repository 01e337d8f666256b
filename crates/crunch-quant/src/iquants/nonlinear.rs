//! The scale search shared by IQ4_NL and IQ4_XS (llama.cpp's `quantize_row_iq4_nl_impl`).
//!
//! For each 32-element block the search starts from the scale that maps the largest-magnitude value
//! onto the code book's end (-127), picks the nearest code book entry for every element, and then
//! tries 15 nearby inverse scales, keeping the weighted least-squares optimum. The float operations
//! follow the C code one for one so the chosen scales (and hence the bytes) are identical.

use crate::kquants::search::GROUP_MAX_EPS;

/// The IQ4_NL / IQ4_XS code book (llama.cpp's `kvalues_iq4nl`): a 4-bit code `q` stands for
/// `KVALUES[q]` times the block scale.
pub const KVALUES: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// Inverse scales tried on each side of the first guess (llama.cpp's `ntry` for file quantization).
const NTRY: i32 = 7;

/// Elements per block (IQ4_NL block, IQ4_XS sub-block).
pub(crate) const BLOCK: usize = 32;

/// The code whose value is nearest to `x` (ties go to the upper entry unless strictly nearer below,
/// as in llama.cpp's `best_index_int8`). NaN maps to the last code.
#[inline]
pub(crate) fn best_index(x: f32) -> u8 {
    let value = |i: usize| f32::from(KVALUES[i]);
    if x <= value(0) {
        return 0;
    }
    if x >= value(15) {
        return 15;
    }
    let (mut lo, mut hi) = (0usize, 15usize);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if x < value(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if x - value(hi - 1) < value(hi) - x {
        (hi - 1) as u8
    } else {
        hi as u8
    }
}

/// Codes for `x` at inverse scale `id`, packed as nibbles (element `j` low, `j + 16` high).
pub(crate) fn pack_codes(x: &[f32], id: f32, out: &mut [u8; BLOCK / 2]) {
    let (lo, hi) = x.split_at(BLOCK / 2);
    for ((o, &a), &b) in out.iter_mut().zip(lo).zip(hi) {
        *o = best_index(id * a) | (best_index(id * b) << 4);
    }
}

/// llama.cpp's `sigma2` for a super-block: twice the mean square, summed left to right.
pub(crate) fn super_block_sigma2(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s * (2.0 / x.len() as f32)
}

/// Search weights of one block: `importance * sqrt(sigma2 + x²)`, or `x²` without importance.
pub(crate) fn search_weights(xb: &[f32], importance: Option<&[f32]>, sigma2: f32) -> [f32; BLOCK] {
    let mut w = [0.0f32; BLOCK];
    match importance {
        Some(qw) => {
            for ((w, &v), &q) in w.iter_mut().zip(xb).zip(qw) {
                *w = q * (sigma2 + v * v).sqrt();
            }
        }
        None => {
            for (w, &v) in w.iter_mut().zip(xb) {
                *w = v * v;
            }
        }
    }
    w
}

/// Weighted `Σ w·q·x` and `Σ w·q²` of the codes chosen at inverse scale `id`.
#[inline]
fn fit(xb: &[f32], weight: &[f32; BLOCK], id: f32) -> (f32, f32) {
    let mut sumqx = 0.0f32;
    let mut sumq2 = 0.0f32;
    for (&x, &w) in xb.iter().zip(weight) {
        let q = f32::from(KVALUES[usize::from(best_index(id * x))]);
        sumqx += w * q * x;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// The best scale for one block of 32 (0 for a block of zeros).
pub(crate) fn block_scale(xb: &[f32], weight: &[f32; BLOCK]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in xb {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let first = f32::from(KVALUES[0]);
    // first guess: the largest-magnitude value lands on -127 (so its sign flips into the scale)
    let d = -max / first;
    let (sumqx, sumq2) = fit(xb, weight, 1.0 / d);
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let id = (itry + i32::from(KVALUES[0])) as f32 / max;
        let (sumqx, sumq2) = fit(xb, weight, id);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_index_picks_nearest_entry() {
        assert_eq!(best_index(-1000.0), 0);
        assert_eq!(best_index(1000.0), 15);
        assert_eq!(best_index(0.0), 8);
        assert_eq!(best_index(-4.5), 8); // halfway between -10 and 1: the upper code
        assert_eq!(best_index(-5.0), 7);
        assert_eq!(best_index(-4.0), 8);
        assert_eq!(best_index(f32::NAN), 15);
        for (i, &v) in KVALUES.iter().enumerate() {
            assert_eq!(usize::from(best_index(f32::from(v))), i);
        }
    }
}
