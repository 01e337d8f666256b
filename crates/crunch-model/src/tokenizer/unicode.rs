//! Unicode code point classes as llama.cpp's tokenizers see them.
//!
//! llama.cpp gives every code point exactly one general-category flag (letter, number, mark,
//! punctuation, symbol, separator, control, or "undefined" for unassigned code points) plus a
//! separate White_Space flag. The pre-tokenizers below are written against those flags, so we
//! build the same table once, from the Unicode data compiled into `regex-syntax`.

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

/// Highest code point + 1.
const MAX_CODEPOINTS: usize = 0x11_0000;

/// One general-category flag (exactly one bit is set per code point) plus White_Space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CpFlags(u16);

impl CpFlags {
    pub const UNDEFINED: u16 = 0x0001;
    pub const NUMBER: u16 = 0x0002;
    pub const LETTER: u16 = 0x0004;
    pub const SEPARATOR: u16 = 0x0008;
    pub const MARK: u16 = 0x0010;
    pub const PUNCTUATION: u16 = 0x0020;
    pub const SYMBOL: u16 = 0x0040;
    pub const CONTROL: u16 = 0x0080;
    pub const CATEGORIES: u16 = 0x00FF;
    pub const WHITESPACE: u16 = 0x0100;

    /// Flags of a position outside the text being split: nothing set at all.
    pub const NONE: CpFlags = CpFlags(0);

    #[inline]
    pub fn is_letter(self) -> bool {
        self.0 & Self::LETTER != 0
    }
    #[inline]
    pub fn is_number(self) -> bool {
        self.0 & Self::NUMBER != 0
    }
    #[inline]
    pub fn is_whitespace(self) -> bool {
        self.0 & Self::WHITESPACE != 0
    }
    #[inline]
    pub fn is_mark(self) -> bool {
        self.0 & Self::MARK != 0
    }
    #[inline]
    pub fn is_punctuation(self) -> bool {
        self.0 & Self::PUNCTUATION != 0
    }
    #[inline]
    pub fn is_symbol(self) -> bool {
        self.0 & Self::SYMBOL != 0
    }
    #[inline]
    pub fn is_control(self) -> bool {
        self.0 & Self::CONTROL != 0
    }
    /// True for every real code point (llama.cpp's `as_uint() != 0`); false only for [`CpFlags::NONE`].
    #[inline]
    pub fn is_some(self) -> bool {
        self.0 != 0
    }
    /// The single category bit.
    #[inline]
    pub fn category(self) -> u16 {
        self.0 & Self::CATEGORIES
    }
}

/// The White_Space property (the same fixed list llama.cpp uses).
#[inline]
pub(crate) fn is_whitespace_cp(c: u32) -> bool {
    matches!(
        c,
        0x09..=0x0D
            | 0x20
            | 0x85
            | 0xA0
            | 0x1680
            | 0x2000..=0x200A
            | 0x2028
            | 0x2029
            | 0x202F
            | 0x205F
            | 0x3000
    )
}

fn category_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = vec![CpFlags::UNDEFINED as u8; MAX_CODEPOINTS];
        let classes: [(&str, u16); 10] = [
            (r"\p{L}", CpFlags::LETTER),
            (r"\p{N}", CpFlags::NUMBER),
            (r"\p{Z}", CpFlags::SEPARATOR),
            (r"\p{M}", CpFlags::MARK),
            (r"\p{P}", CpFlags::PUNCTUATION),
            (r"\p{S}", CpFlags::SYMBOL),
            (r"\p{Cc}", CpFlags::CONTROL),
            (r"\p{Cf}", CpFlags::CONTROL),
            (r"\p{Co}", CpFlags::CONTROL),
            (r"\p{Cs}", CpFlags::CONTROL),
        ];
        for (pattern, flag) in classes {
            for (lo, hi) in class_ranges(pattern) {
                for c in lo..=hi.min(MAX_CODEPOINTS as u32 - 1) {
                    table[c as usize] = flag as u8;
                }
            }
        }
        table
    })
}

/// The code point ranges of a `\p{..}` class. regex-syntax cannot represent surrogates in a Unicode
/// class, so `\p{Cs}` comes back empty; that is fine because `char` never holds one.
fn class_ranges(pattern: &str) -> Vec<(u32, u32)> {
    let parsed = regex_syntax::ParserBuilder::new().utf8(false).build().parse(pattern);
    let Ok(hir) = parsed else {
        return Vec::new();
    };
    match hir.kind() {
        HirKind::Class(Class::Unicode(cls)) => {
            cls.ranges().iter().map(|r| (r.start() as u32, r.end() as u32)).collect()
        }
        _ => Vec::new(),
    }
}

/// llama.cpp's flags of one code point.
#[inline]
pub(crate) fn flags(c: char) -> CpFlags {
    let cp = c as u32;
    let cat = category_table()[cp as usize] as u16;
    let ws = if is_whitespace_cp(cp) { CpFlags::WHITESPACE } else { 0 };
    CpFlags(cat | ws)
}

/// Simple (one code point) lowercase mapping.
#[inline]
pub(crate) fn to_lower(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    c.to_lowercase().next().unwrap_or(c)
}

/// The first code point of the canonical decomposition (what llama.cpp's NFD table stores).
pub(crate) fn nfd_first(c: char) -> char {
    if c.is_ascii() {
        return c;
    }
    let mut first = None;
    unicode_normalization_alignments::char::decompose_canonical(c, |d| {
        if first.is_none() {
            first = Some(d);
        }
    });
    first.unwrap_or(c)
}

/// Warm the lookup table (about 1 MiB, built in a few milliseconds).
pub(crate) fn init() {
    let _ = category_table();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories() {
        assert!(flags('a').is_letter());
        assert!(flags('Ж').is_letter());
        assert!(flags('7').is_number());
        assert!(flags('½').is_number());
        assert!(flags(' ').is_whitespace());
        assert_eq!(flags(' ').category(), CpFlags::SEPARATOR);
        assert_eq!(flags('\n').category(), CpFlags::CONTROL);
        assert!(flags('\n').is_whitespace());
        assert!(flags('!').is_punctuation());
        assert!(flags('$').is_symbol());
        assert!(flags('\u{301}').is_mark());
        assert_eq!(flags('\u{378}').category(), CpFlags::UNDEFINED);
        assert!(flags('😀').is_symbol());
        assert_eq!(nfd_first('é'), 'e');
        assert_eq!(to_lower('Ä'), 'ä');
    }
}
