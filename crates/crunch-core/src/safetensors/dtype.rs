//! safetensors element types, named exactly as in the format (`"F32"`, `"BF16"`, `"F8_E4M3"`…).

use crate::GgmlType;
use std::fmt;

macro_rules! dtypes {
    ($( $variant:ident = $name:literal, $bits:literal; )*) => {
        /// A safetensors element type. Every type of the format can be listed; only
        /// [`F32`](Dtype::F32), [`F16`](Dtype::F16) and [`BF16`](Dtype::BF16) can be converted.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Dtype {
            $( $variant, )*
        }

        impl Dtype {
            /// Every dtype of the format.
            pub const ALL: &'static [Dtype] = &[$( Dtype::$variant, )*];

            /// The dtype for its name in a header (case-sensitive, as the format is), or `None`.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $( $name => Some(Dtype::$variant), )*
                    _ => None,
                }
            }

            /// The name written in headers (`"BF16"`).
            pub fn name(self) -> &'static str {
                match self { $( Dtype::$variant => $name, )* }
            }

            /// Bits per element (4 for `F4`, 6 for the `F6` types).
            pub fn bits(self) -> u64 {
                match self { $( Dtype::$variant => $bits, )* }
            }
        }
    };
}

dtypes! {
    BOOL = "BOOL", 8;
    F4 = "F4", 4;
    F6_E2M3 = "F6_E2M3", 6;
    F6_E3M2 = "F6_E3M2", 6;
    U8 = "U8", 8;
    I8 = "I8", 8;
    F8_E5M2 = "F8_E5M2", 8;
    F8_E4M3 = "F8_E4M3", 8;
    F8_E8M0 = "F8_E8M0", 8;
    F8_E4M3FNUZ = "F8_E4M3FNUZ", 8;
    F8_E5M2FNUZ = "F8_E5M2FNUZ", 8;
    I16 = "I16", 16;
    U16 = "U16", 16;
    F16 = "F16", 16;
    BF16 = "BF16", 16;
    I32 = "I32", 32;
    U32 = "U32", 32;
    F32 = "F32", 32;
    C64 = "C64", 64;
    F64 = "F64", 64;
    I64 = "I64", 64;
    U64 = "U64", 64;
}

impl Dtype {
    /// The GGML type crunch converts this dtype to without loss: `F32`, `F16`, `BF16`; `None` for
    /// every other dtype.
    pub fn ggml_type(self) -> Option<GgmlType> {
        match self {
            Dtype::F32 => Some(GgmlType::F32),
            Dtype::F16 => Some(GgmlType::F16),
            Dtype::BF16 => Some(GgmlType::BF16),
            _ => None,
        }
    }

    /// Bytes taken by `n_elements` of this dtype, or `None` on overflow or if they do not fill a
    /// whole number of bytes (sub-byte types).
    pub fn n_bytes(self, n_elements: u64) -> Option<u64> {
        let bits = n_elements.checked_mul(self.bits())?;
        (bits % 8 == 0).then_some(bits / 8)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
