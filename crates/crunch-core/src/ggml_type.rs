//! The GGML tensor type table: type codes, block sizes and byte sizes, in one place.
//!
//! Codes and sizes follow ggml's `ggml_type` enum exactly, so a code read from a GGUF file maps to the
//! same type llama.cpp would see. Names are llama.cpp's (`Q4_K`, `IQ4_NL`, `TQ2_0`…), parsed
//! case-insensitively.

use std::fmt;
use std::str::FromStr;

/// Number of weights in a k-quant / i-quant super-block.
pub const QK_K: usize = 256;

macro_rules! ggml_types {
    ($( $variant:ident = $code:literal, $name:literal, $block:expr, $bytes:expr; )*) => {
        /// A GGML tensor element type, as stored in GGUF tensor infos.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum GgmlType {
            $( $variant = $code, )*
        }

        impl GgmlType {
            /// Every known type, in code order.
            pub const ALL: &'static [GgmlType] = &[$( GgmlType::$variant, )*];

            /// The type for a GGUF type code, or `None` if the code is unknown.
            pub fn from_code(code: u32) -> Option<Self> {
                match code {
                    $( $code => Some(GgmlType::$variant), )*
                    _ => None,
                }
            }

            /// llama.cpp's name for the type (`"Q4_K"`).
            pub fn name(self) -> &'static str {
                match self { $( GgmlType::$variant => $name, )* }
            }

            /// Number of elements in one block.
            pub fn block_size(self) -> usize {
                match self { $( GgmlType::$variant => $block, )* }
            }

            /// Number of bytes in one block.
            pub fn type_size(self) -> usize {
                match self { $( GgmlType::$variant => $bytes, )* }
            }
        }
    };
}

ggml_types! {
    F32 = 0, "F32", 1, 4;
    F16 = 1, "F16", 1, 2;
    Q4_0 = 2, "Q4_0", 32, 2 + 16;
    Q4_1 = 3, "Q4_1", 32, 2 + 2 + 16;
    Q5_0 = 6, "Q5_0", 32, 2 + 4 + 16;
    Q5_1 = 7, "Q5_1", 32, 2 + 2 + 4 + 16;
    Q8_0 = 8, "Q8_0", 32, 2 + 32;
    Q8_1 = 9, "Q8_1", 32, 2 + 2 + 32;
    Q2_K = 10, "Q2_K", QK_K, 2 + 2 + QK_K / 16 + QK_K / 4;
    Q3_K = 11, "Q3_K", QK_K, 2 + QK_K / 4 + QK_K / 8 + 12;
    Q4_K = 12, "Q4_K", QK_K, 2 + 2 + QK_K / 2 + 12;
    Q5_K = 13, "Q5_K", QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12;
    Q6_K = 14, "Q6_K", QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16;
    Q8_K = 15, "Q8_K", QK_K, 4 + QK_K + QK_K / 8;
    IQ2_XXS = 16, "IQ2_XXS", QK_K, 2 + QK_K / 4;
    IQ2_XS = 17, "IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32;
    IQ3_XXS = 18, "IQ3_XXS", QK_K, 2 + QK_K / 4 + QK_K / 8;
    IQ1_S = 19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16;
    IQ4_NL = 20, "IQ4_NL", 32, 2 + 16;
    IQ3_S = 21, "IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4;
    IQ2_S = 22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16;
    IQ4_XS = 23, "IQ4_XS", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64;
    I8 = 24, "I8", 1, 1;
    I16 = 25, "I16", 1, 2;
    I32 = 26, "I32", 1, 4;
    I64 = 27, "I64", 1, 8;
    F64 = 28, "F64", 1, 8;
    IQ1_M = 29, "IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32;
    BF16 = 30, "BF16", 1, 2;
    TQ1_0 = 34, "TQ1_0", QK_K, 2 + 4 * 13;
    TQ2_0 = 35, "TQ2_0", QK_K, 2 + 64;
    MXFP4 = 39, "MXFP4", 32, 1 + 16;
}

impl GgmlType {
    /// The GGUF type code.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// True for block-quantized types (everything that is not a plain float or integer).
    pub fn is_quantized(self) -> bool {
        !matches!(
            self,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::BF16
                | GgmlType::F64
                | GgmlType::I8
                | GgmlType::I16
                | GgmlType::I32
                | GgmlType::I64
        )
    }

    /// Bits per weight of the storage format.
    pub fn bits_per_weight(self) -> f64 {
        self.type_size() as f64 * 8.0 / self.block_size() as f64
    }

    /// Bytes needed for one row of `n` elements, or `None` if `n` is not a multiple of the block size.
    pub fn row_size(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        (n / self.block_size()).checked_mul(self.type_size())
    }

    /// Bytes needed for `n_elements` stored as whole rows of `row_len`, checked for overflow and for
    /// `row_len` being a multiple of the block size.
    pub fn tensor_size(self, row_len: usize, n_rows: usize) -> Option<usize> {
        self.row_size(row_len)?.checked_mul(n_rows)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for a type name that is not in the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tensor type {0:?}")]
pub struct UnknownType(pub String);

impl FromStr for GgmlType {
    type Err = UnknownType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GgmlType::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownType(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for &t in GgmlType::ALL {
            assert_eq!(GgmlType::from_code(t.code()), Some(t));
            assert_eq!(t.name().parse::<GgmlType>().unwrap(), t);
            assert_eq!(t.name().to_lowercase().parse::<GgmlType>().unwrap(), t);
        }
        assert_eq!(GgmlType::from_code(4), None);
        assert!("Q9_K".parse::<GgmlType>().is_err());
    }

    #[test]
    fn well_known_bpw() {
        assert_eq!(GgmlType::Q4_0.bits_per_weight(), 4.5);
        assert_eq!(GgmlType::Q4_K.bits_per_weight(), 4.5);
        assert_eq!(GgmlType::Q6_K.bits_per_weight(), 6.5625);
        assert_eq!(GgmlType::Q8_0.bits_per_weight(), 8.5);
        assert_eq!(GgmlType::IQ4_XS.bits_per_weight(), 4.25);
        assert_eq!(GgmlType::TQ2_0.bits_per_weight(), 2.0625);
        assert_eq!(GgmlType::Q4_K.row_size(576), None);
        assert_eq!(GgmlType::Q4_K.row_size(1536), Some(6 * 144));
    }
}
