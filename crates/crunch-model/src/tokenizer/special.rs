//! Cutting special tokens out of the text before the model sees it (llama.cpp's
//! `tokenizer_st_partition`).
//!
//! Special tokens are tried one after the other, longest text first; each one splits every piece of
//! raw text still left at each of its (non-overlapping, leftmost-first) occurrences. Control and
//! unknown tokens are only matched when `parse_special` is on; user-defined tokens always are.

use super::vocab::{TokenAttr, Vocab};

/// A piece of the input: raw text still to tokenize, or a token already decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// Byte range of the input text.
    Text(usize, usize),
    Token(u32),
}

/// C `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

pub(crate) fn partition(vocab: &Vocab, text: &str, parse_special: bool) -> Vec<Fragment> {
    let mut frags = Vec::new();
    if text.is_empty() {
        return frags;
    }
    frags.push(Fragment::Text(0, text.len()));
    let bytes = text.as_bytes();
    let mut next = Vec::new();
    for &id in &vocab.special_cache {
        let attr = vocab.attr(id);
        if !parse_special && attr.is_special() {
            continue;
        }
        let tok = vocab.tokens[id as usize].as_str();
        if tok.is_empty() {
            continue;
        }
        // Fast path: nothing to do if the token occurs in no text fragment.
        let occurs = frags.iter().any(|f| match *f {
            Fragment::Text(a, b) => text[a..b].contains(tok),
            Fragment::Token(_) => false,
        });
        if !occurs {
            continue;
        }
        next.clear();
        for &f in &frags {
            let Fragment::Text(mut start, end) = f else {
                next.push(f);
                continue;
            };
            loop {
                let Some(rel) = text[start..end].find(tok) else {
                    if end > start {
                        next.push(Fragment::Text(start, end));
                    }
                    break;
                };
                let m = start + rel;
                let mut left_end = m;
                if attr.has(TokenAttr::LSTRIP) {
                    while left_end > start && is_c_space(bytes[left_end - 1]) {
                        left_end -= 1;
                    }
                }
                if left_end > start {
                    next.push(Fragment::Text(start, left_end));
                }
                next.push(Fragment::Token(id));
                start = m + tok.len();
                if attr.has(TokenAttr::RSTRIP) {
                    while start < end && is_c_space(bytes[start]) {
                        start += 1;
                    }
                }
                if start >= end {
                    break;
                }
            }
        }
        std::mem::swap(&mut frags, &mut next);
    }
    frags
}
