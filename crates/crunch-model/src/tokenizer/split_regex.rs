//! Word splitting by a general regex, with llama.cpp's semantics.
//!
//! llama.cpp runs these patterns with `std::regex` on a "collapsed" text: every non-ASCII code
//! point is replaced by one stand-in per Unicode category (letter, number, punctuation, mark,
//! symbol, other) and non-ASCII whitespace by U+000B, and each `\p{..}` in the pattern by its
//! stand-in plus the ASCII members of the category. Patterns without `\p{..}` run on the real code
//! points, with non-ASCII whitespace still replaced by U+000B. We do the same with `fancy-regex`,
//! using private-use characters as the stand-ins, so that splits agree with llama.cpp even where
//! that differs from true Unicode matching.

use fancy_regex::{Regex, RegexBuilder};

use super::unicode::{flags, CpFlags};
use super::{Result, TokenizerError};

/// Stand-in code points for collapsed categories (llama.cpp uses the bytes 0xD0..0xD5).
const OTHER: char = '\u{E0D0}';
const NUMBER: char = '\u{E0D1}';
const LETTER: char = '\u{E0D2}';
const PUNCT: char = '\u{E0D3}';
const MARK: char = '\u{E0D4}';
const SYMBOL: char = '\u{E0D5}';

/// The `\p{..}` names llama.cpp collapses, with the category each stands for.
const CATEGORIES: &[(&str, u16)] = &[
    (r"\p{N}", CpFlags::NUMBER),
    (r"\p{L}", CpFlags::LETTER),
    (r"\p{P}", CpFlags::PUNCTUATION),
    (r"\p{M}", CpFlags::MARK),
    (r"\p{S}", CpFlags::SYMBOL),
    (r"\p{Lu}", CpFlags::LETTER),
    (r"\p{Ll}", CpFlags::LETTER),
    (r"\p{Lt}", CpFlags::LETTER),
    (r"\p{Lm}", CpFlags::LETTER),
    (r"\p{Lo}", CpFlags::LETTER),
];

/// Whether llama.cpp would run `pattern` on the collapsed text.
pub(crate) fn uses_categories(pattern: &str) -> bool {
    CATEGORIES.iter().any(|(name, _)| pattern.contains(name))
}

fn stand_in(category: u16) -> char {
    match category {
        CpFlags::NUMBER => NUMBER,
        CpFlags::LETTER => LETTER,
        CpFlags::PUNCTUATION => PUNCT,
        CpFlags::MARK => MARK,
        CpFlags::SYMBOL => SYMBOL,
        _ => OTHER,
    }
}

/// The body of a character class matching a collapsed category: its stand-in plus the ASCII
/// characters of that category (which the collapsed text keeps as they are).
fn class_body(category: u16) -> String {
    let mut s = format!("\\x{{{:X}}}", stand_in(category) as u32);
    for b in 0u8..128 {
        let c = b as char;
        if flags(c).category() == category {
            s.push_str(&format!("\\x{{{b:02X}}}"));
        }
    }
    s
}

/// Rewrite a pattern for the collapsed text, tracking `[...]` the way llama.cpp does.
fn collapse_pattern(pattern: &str) -> Result<String> {
    if !pattern.is_ascii() {
        return Err(TokenizerError::Regex(format!(
            "pattern mixes Unicode categories and non-ASCII characters: {pattern:?}"
        )));
    }
    let b = pattern.as_bytes();
    let mut out = String::with_capacity(pattern.len() * 2);
    let mut inside = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'[' && (i == 0 || b[i - 1] != b'\\') {
            out.push('[');
            inside = true;
            i += 1;
            continue;
        }
        if inside && c == b']' && i > 0 && b[i - 1] != b'\\' {
            out.push(']');
            inside = false;
            i += 1;
            continue;
        }
        if c == b'\\' && i + 3 < b.len() && b[i + 1] == b'p' && b[i + 2] == b'{' {
            if let Some(close) = pattern[i + 3..].find('}').map(|p| p + i + 3) {
                if close <= i + 10 {
                    let name = &pattern[i..=close];
                    if let Some(&(_, cat)) = CATEGORIES.iter().find(|(n, _)| *n == name) {
                        if !inside {
                            out.push('[');
                        }
                        out.push_str(&class_body(cat));
                        if !inside {
                            out.push(']');
                        }
                        i = close + 1;
                        continue;
                    }
                }
            }
        }
        out.push(c as char);
        i += 1;
    }
    Ok(out)
}

/// A compiled llama.cpp-style split pattern.
#[derive(Debug)]
pub(crate) struct RegexSplit {
    re: Regex,
    collapsed: bool,
}

impl RegexSplit {
    pub fn new(pattern: &str) -> Result<Self> {
        let collapsed = uses_categories(pattern);
        let translated = if collapsed { collapse_pattern(pattern)? } else { pattern.to_string() };
        let re = RegexBuilder::new(&translated)
            .backtrack_limit(100_000_000)
            .build()
            .map_err(|e| TokenizerError::Regex(format!("{pattern:?}: {e}")))?;
        Ok(RegexSplit { re, collapsed })
    }

    pub fn collapsed(&self) -> bool {
        self.collapsed
    }

    /// Split each segment (code point ranges) into matches and the gaps between them.
    pub fn split(&self, hay: &Haystack, segs: &[(usize, usize)], out: &mut Vec<(usize, usize)>) -> Result<()> {
        out.clear();
        for &(ini, end) in segs {
            let (b0, b1) = (hay.offsets[ini], hay.offsets[end]);
            let slice = &hay.text[b0..b1];
            let mut last = ini;
            for m in self.re.find_iter(slice) {
                let m = m.map_err(|e| TokenizerError::Regex(e.to_string()))?;
                let ms = hay.cp_at(b0 + m.start(), ini, end);
                let me = hay.cp_at(b0 + m.end(), ini, end);
                if ms > last {
                    out.push((last, ms));
                }
                if me > ms {
                    out.push((ms, me));
                }
                last = last.max(me);
            }
            if last < end {
                out.push((last, end));
            }
        }
        Ok(())
    }
}

/// The text a regex runs on, with the byte offset of every code point.
pub(crate) struct Haystack {
    text: String,
    /// `offsets[i]` is the byte offset of code point `i`; one extra entry for the end.
    offsets: Vec<usize>,
}

impl Haystack {
    /// The collapsed text (`collapsed`) or the real text with non-ASCII whitespace replaced.
    pub fn new(cps: &[char], fl: &[CpFlags], collapsed: bool) -> Self {
        let mut text = String::with_capacity(cps.len() + cps.len() / 4);
        let mut offsets = Vec::with_capacity(cps.len() + 1);
        for (&c, &f) in cps.iter().zip(fl) {
            offsets.push(text.len());
            let r = if c.is_ascii() {
                c
            } else if f.is_whitespace() {
                '\u{0B}'
            } else if collapsed {
                stand_in(f.category())
            } else {
                c
            };
            text.push(r);
        }
        offsets.push(text.len());
        Haystack { text, offsets }
    }

    /// Code point index of a byte offset (always a char boundary of `text`).
    fn cp_at(&self, byte: usize, lo: usize, hi: usize) -> usize {
        let window = &self.offsets[lo..=hi];
        match window.binary_search(&byte) {
            Ok(i) | Err(i) => lo + i,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pattern: &str, text: &str) -> Vec<String> {
        let cps: Vec<char> = text.chars().collect();
        let fl: Vec<CpFlags> = cps.iter().map(|&c| flags(c)).collect();
        let r = RegexSplit::new(pattern).unwrap();
        let hay = Haystack::new(&cps, &fl, r.collapsed());
        let mut out = Vec::new();
        r.split(&hay, &[(0, cps.len())], &mut out).unwrap();
        out.iter().map(|&(a, b)| cps[a..b].iter().collect()).collect()
    }

    #[test]
    fn digits_isolated() {
        assert_eq!(run(r"\p{N}", "ab12 ٣x"), ["ab", "1", "2", " ", "٣", "x"]);
    }

    #[test]
    fn gpt2_pattern_collapsed() {
        let p = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
        assert_eq!(run(p, "Héllo  wörld's!"), ["Héllo", " ", " wörld", "'s", "!"]);
    }

    #[test]
    fn plain_pattern() {
        assert_eq!(run(r"[\r\n]", "a\nb"), ["a", "\n", "b"]);
        assert_eq!(run(r"\s+$", "a  "), ["a", "  "]);
    }
}
