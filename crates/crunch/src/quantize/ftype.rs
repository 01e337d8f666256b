//! llama.cpp's file types (`llama_ftype`): the preset names users type (`Q4_K_M`), their codes in
//! `general.file_type`, and the default tensor type each one starts from.

use crunch_core::GgmlType;
use std::fmt;
use std::str::FromStr;

macro_rules! ftypes {
    ($( $variant:ident = $code:literal, $name:literal, $default:ident; )*) => {
        /// A llama.cpp file type / quantization preset.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Ftype { $( $variant, )* }

        impl Ftype {
            pub const ALL: &'static [Ftype] = &[$( Ftype::$variant, )*];

            /// Value stored in `general.file_type`.
            pub fn code(self) -> u32 {
                match self { $( Ftype::$variant => $code, )* }
            }

            /// The preset name as llama-quantize spells it.
            pub fn name(self) -> &'static str {
                match self { $( Ftype::$variant => $name, )* }
            }

            /// The tensor type most tensors get (`llama_ftype_get_default_type`).
            pub fn default_type(self) -> GgmlType {
                match self { $( Ftype::$variant => GgmlType::$default, )* }
            }
        }
    };
}

ftypes! {
    F32 = 0, "F32", F32;
    F16 = 1, "F16", F16;
    Q4_0 = 2, "Q4_0", Q4_0;
    Q4_1 = 3, "Q4_1", Q4_1;
    Q8_0 = 7, "Q8_0", Q8_0;
    Q5_0 = 8, "Q5_0", Q5_0;
    Q5_1 = 9, "Q5_1", Q5_1;
    Q2_K = 10, "Q2_K", Q2_K;
    Q3_K_S = 11, "Q3_K_S", Q3_K;
    Q3_K_M = 12, "Q3_K_M", Q3_K;
    Q3_K_L = 13, "Q3_K_L", Q3_K;
    Q4_K_S = 14, "Q4_K_S", Q4_K;
    Q4_K_M = 15, "Q4_K_M", Q4_K;
    Q5_K_S = 16, "Q5_K_S", Q5_K;
    Q5_K_M = 17, "Q5_K_M", Q5_K;
    Q6_K = 18, "Q6_K", Q6_K;
    IQ2_XXS = 19, "IQ2_XXS", IQ2_XXS;
    IQ2_XS = 20, "IQ2_XS", IQ2_XS;
    Q2_K_S = 21, "Q2_K_S", Q2_K;
    IQ3_XS = 22, "IQ3_XS", IQ3_S;
    IQ3_XXS = 23, "IQ3_XXS", IQ3_XXS;
    IQ1_S = 24, "IQ1_S", IQ1_S;
    IQ4_NL = 25, "IQ4_NL", IQ4_NL;
    IQ3_S = 26, "IQ3_S", IQ3_S;
    IQ3_M = 27, "IQ3_M", IQ3_S;
    IQ2_S = 28, "IQ2_S", IQ2_XS;
    IQ2_M = 29, "IQ2_M", IQ2_S;
    IQ4_XS = 30, "IQ4_XS", IQ4_XS;
    IQ1_M = 31, "IQ1_M", IQ1_M;
    BF16 = 32, "BF16", BF16;
    TQ1_0 = 36, "TQ1_0", TQ1_0;
    TQ2_0 = 37, "TQ2_0", TQ2_0;
}

impl Ftype {
    /// The preset for a `general.file_type` code.
    pub fn from_code(code: u32) -> Option<Self> {
        Ftype::ALL.iter().copied().find(|f| f.code() == code)
    }

    /// The plain (single-type) preset for a tensor type, if there is one (`Q6_K` -> `Q6_K`).
    pub fn for_type(ty: GgmlType) -> Option<Self> {
        Ftype::ALL.iter().copied().find(|f| f.default_type() == ty && f.name() == ty.name())
    }
}

impl fmt::Display for Ftype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Ftype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let norm = s.trim().replace('-', "_");
        Ftype::ALL.iter().copied().find(|f| f.name().eq_ignore_ascii_case(&norm)).ok_or_else(|| {
            let names: Vec<&str> = Ftype::ALL.iter().map(|f| f.name()).collect();
            format!("unknown quantization type {s:?}; known: {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn names_parse_case_insensitively() {
        assert_eq!("q4_k_m".parse::<Ftype>().unwrap(), Ftype::Q4_K_M);
        assert_eq!("Q4-K-M".parse::<Ftype>().unwrap(), Ftype::Q4_K_M);
        assert_eq!(Ftype::Q4_K_M.code(), 15);
        assert_eq!(Ftype::Q4_K_M.default_type(), GgmlType::Q4_K);
        assert_eq!(Ftype::for_type(GgmlType::Q6_K), Some(Ftype::Q6_K));
        assert!("q9".parse::<Ftype>().is_err());
    }
}
