//! Hand-written word splitters for the common pre-tokenizer regexes, equivalent to llama.cpp's
//! (which replaces these regexes by code both for speed and to get Unicode classes right).
//!
//! Each splitter refines a list of segments (half-open code point ranges of the text) into words.
//! Inside one segment, positions outside it look like "no character at all".

use super::unicode::CpFlags;

/// Code points and their flags for the whole text being split.
pub(crate) struct Text<'a> {
    pub cps: &'a [char],
    pub flags: &'a [CpFlags],
}

/// One segment being split, with llama.cpp's out-of-range conventions.
struct Seg<'a, 'b> {
    t: &'b Text<'a>,
    ini: usize,
    end: usize,
    prev: usize,
    out: &'b mut Vec<(usize, usize)>,
}

impl Seg<'_, '_> {
    #[inline]
    fn cp(&self, pos: usize) -> Option<char> {
        if pos >= self.ini && pos < self.end {
            Some(self.t.cps[pos])
        } else {
            None
        }
    }
    #[inline]
    fn fl(&self, pos: usize) -> CpFlags {
        if pos >= self.ini && pos < self.end {
            self.t.flags[pos]
        } else {
            CpFlags::NONE
        }
    }
    /// Close the word that runs up to `end`; returns its length.
    #[inline]
    fn add(&mut self, end: usize) -> usize {
        let len = end - self.prev;
        if len > 0 {
            self.out.push((self.prev, end));
        }
        self.prev = end;
        len
    }
    /// `'s|'t|'re|'ve|'m|'ll|'d` at `pos`, optionally case-insensitive: the match length.
    #[inline]
    fn contraction(&self, pos: usize, ignore_case: bool) -> usize {
        if self.cp(pos) != Some('\'') || pos + 1 >= self.end {
            return 0;
        }
        let low = |c: Option<char>| {
            let c = c.unwrap_or('\0');
            if ignore_case {
                c.to_ascii_lowercase()
            } else {
                c
            }
        };
        let n1 = low(self.cp(pos + 1));
        if matches!(n1, 's' | 't' | 'm' | 'd') {
            return 2;
        }
        if pos + 2 < self.end {
            let n2 = low(self.cp(pos + 2));
            if matches!((n1, n2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                return 3;
            }
        }
        0
    }
    fn whitespace_run(&self, pos: usize) -> (usize, usize) {
        let mut n = 0;
        let mut last_newline_end = 0;
        while self.fl(pos + n).is_whitespace() {
            if matches!(self.cp(pos + n), Some('\r' | '\n')) {
                last_newline_end = pos + n + 1;
            }
            n += 1;
        }
        (n, last_newline_end)
    }
}

fn for_each_segment(
    t: &Text<'_>,
    segs: &[(usize, usize)],
    out: &mut Vec<(usize, usize)>,
    mut body: impl FnMut(&mut Seg<'_, '_>),
) {
    out.clear();
    for &(ini, end) in segs {
        let mut s = Seg { t, ini, end, prev: ini, out: &mut *out };
        body(&mut s);
    }
}

/// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
pub(crate) fn gpt2(t: &Text<'_>, segs: &[(usize, usize)], out: &mut Vec<(usize, usize)>) {
    for_each_segment(t, segs, out, |s| {
        let mut pos = s.ini;
        while pos < s.end {
            let c = t.cps[pos];
            let f = t.flags[pos];
            let n = s.contraction(pos, false);
            if n > 0 {
                pos += s.add(pos + n);
                continue;
            }
            let space = c == ' ';
            let mut f2 = if space { s.fl(pos + 1) } else { f };
            if f2.is_letter() {
                pos += space as usize;
                while f2.is_letter() {
                    pos += 1;
                    f2 = s.fl(pos);
                }
                s.add(pos);
                continue;
            }
            if f2.is_number() {
                pos += space as usize;
                while f2.is_number() {
                    pos += 1;
                    f2 = s.fl(pos);
                }
                s.add(pos);
                continue;
            }
            let other = |f: CpFlags| !(f.is_whitespace() || f.is_letter() || f.is_number()) && f.is_some();
            if other(f2) {
                pos += space as usize;
                while other(f2) {
                    pos += 1;
                    f2 = s.fl(pos);
                }
                s.add(pos);
                continue;
            }
            let (nws, _) = s.whitespace_run(pos);
            if nws > 1 && s.cp(pos + nws).is_some() {
                pos += nws - 1;
                s.add(pos);
                continue;
            }
            if nws > 0 {
                pos += nws;
                s.add(pos);
                continue;
            }
            pos += 1;
            s.add(pos);
        }
    });
}

/// The Llama 3 family:
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,D}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
/// with `D = max_digits` (3 for Llama 3, 1 for Qwen2). With `marks`, combining marks count as
/// letters (Qwen 3.5: `[\p{L}\p{M}]+`).
pub(crate) fn llama3_like(
    t: &Text<'_>,
    segs: &[(usize, usize)],
    out: &mut Vec<(usize, usize)>,
    max_digits: usize,
    marks: bool,
) {
    let wordy = |f: CpFlags| f.is_letter() || (marks && f.is_mark());
    for_each_segment(t, segs, out, |s| {
        let mut pos = s.ini;
        while pos < s.end {
            let c = t.cps[pos];
            let f = t.flags[pos];
            let n = s.contraction(pos, true);
            if n > 0 {
                pos += s.add(pos + n);
                continue;
            }
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(c == '\r' || c == '\n' || f.is_number()) && (wordy(f) || wordy(s.fl(pos + 1))) {
                pos += 1;
                while wordy(s.fl(pos)) {
                    pos += 1;
                }
                s.add(pos);
                continue;
            }
            // \p{N}{1,D}
            if f.is_number() {
                let mut ini = pos;
                while s.fl(pos).is_number() {
                    pos += 1;
                    if pos - ini >= max_digits {
                        s.add(pos);
                        ini = pos;
                    }
                }
                s.add(pos);
                continue;
            }
            // <space>?[^\s\p{L}\p{N}]+[\r\n]*
            let other = |f: CpFlags| !(f.is_whitespace() || wordy(f) || f.is_number());
            let space = c == ' ';
            let mut f2 = if space { s.fl(pos + 1) } else { f };
            if other(f2) && f.is_some() {
                pos += space as usize;
                while other(f2) && f2.is_some() {
                    pos += 1;
                    f2 = s.fl(pos);
                }
                while matches!(s.cp(pos), Some('\r' | '\n')) {
                    pos += 1;
                }
                s.add(pos);
                continue;
            }
            let (nws, last_newline_end) = s.whitespace_run(pos);
            // \s*[\r\n]+
            if last_newline_end > 0 {
                pos = last_newline_end;
                s.add(pos);
                continue;
            }
            // \s+(?!\S)
            if nws > 1 && s.cp(pos + nws).is_some() {
                pos += nws - 1;
                s.add(pos);
                continue;
            }
            // \s+
            if nws > 0 {
                pos += nws;
                s.add(pos);
                continue;
            }
            pos += 1;
            s.add(pos);
        }
    });
}

/// `[^\n]+|[\n]+`: runs of newlines and runs of everything else.
pub(crate) fn newlines(t: &Text<'_>, segs: &[(usize, usize)], out: &mut Vec<(usize, usize)>) {
    out.clear();
    for &(ini, end) in segs {
        let mut pos = ini;
        while pos < end {
            let nl = t.cps[pos] == '\n';
            let start = pos;
            while pos < end && (t.cps[pos] == '\n') == nl {
                pos += 1;
            }
            out.push((start, pos));
        }
    }
}

/// Digit runs cut into groups of three counted from the right (AFMoE, Tiny Aya). As in llama.cpp,
/// text before a digit run is joined to the run's first group.
pub(crate) fn digit_groups(t: &Text<'_>, segs: &[(usize, usize)], out: &mut Vec<(usize, usize)>) {
    for_each_segment(t, segs, out, |s| {
        let mut pos = s.ini;
        while pos < s.end {
            if s.fl(pos).is_number() {
                let start = pos;
                while pos < s.end && s.fl(pos).is_number() {
                    pos += 1;
                }
                let count = pos - start;
                let mut cur = start;
                let rem = count % 3;
                if rem > 0 {
                    s.add(cur + rem);
                    cur += rem;
                }
                while cur < start + count {
                    s.add(cur + 3);
                    cur += 3;
                }
                continue;
            }
            pos += 1;
        }
        if s.prev < s.end {
            let end = s.end;
            s.add(end);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::unicode::flags;
    use super::*;

    fn run(text: &str, f: impl Fn(&Text<'_>, &[(usize, usize)], &mut Vec<(usize, usize)>)) -> Vec<String> {
        let cps: Vec<char> = text.chars().collect();
        let fl: Vec<CpFlags> = cps.iter().map(|&c| flags(c)).collect();
        let t = Text { cps: &cps, flags: &fl };
        let mut out = Vec::new();
        f(&t, &[(0, cps.len())], &mut out);
        out.iter().map(|&(a, b)| cps[a..b].iter().collect()).collect()
    }

    #[test]
    fn gpt2_words() {
        assert_eq!(
            run("Hello world's  3.14 !!\n\n  x", gpt2),
            ["Hello", " world", "'s", " ", " 3", ".", "14", " !!", "\n\n ", " x"]
        );
    }

    #[test]
    fn llama3_words() {
        let l3 = |t: &Text<'_>, s: &[(usize, usize)], o: &mut Vec<(usize, usize)>| llama3_like(t, s, o, 3, false);
        assert_eq!(run("I'M 12345 ok\n\n  x", l3), ["I", "'M", " ", "123", "45", " ok", "\n\n", " ", " x"]);
    }

    #[test]
    fn digit_grouping() {
        assert_eq!(run("ab1234567c", digit_groups), ["ab1", "234", "567", "c"]);
    }
}
