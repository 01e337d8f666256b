//! Small numeric helpers shared by the block formats.

use half::f16;

/// Round to nearest, ties to even, as llama.cpp's `nearest_int` (valid for |x| < 2^22).
#[inline]
pub fn nearest_int(x: f32) -> i32 {
    debug_assert!(x.abs() <= 4_194_303.0);
    let val = x + 12_582_912.0;
    (val.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// f32 -> f16 bits (round to nearest even), as ggml's `GGML_FP32_TO_FP16`.
#[inline]
pub fn f32_to_f16(x: f32) -> f16 {
    f16::from_f32(x)
}

/// f16 -> f32.
#[inline]
pub fn f16_to_f32(x: f16) -> f32 {
    x.to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn nearest_int_ties_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(2.4999), 2);
        assert_eq!(nearest_int(-7.6), -8);
    }
}
