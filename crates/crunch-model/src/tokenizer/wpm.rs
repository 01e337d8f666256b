//! WordPiece (`tokenizer.ggml.model = "bert"`), as llama.cpp runs it on converted BERT vocabularies:
//! word-initial pieces carry a `▁` prefix and continuation pieces are bare (the `##` is gone).

use super::unicode::{self, CpFlags};
use super::vocab::Vocab;

/// BERT's normalizer options.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WpmOptions {
    pub lowercase: bool,
    pub strip_accents: bool,
}

/// CJK ideographs, which BERT splits into one word each.
fn is_chinese(c: u32) -> bool {
    matches!(c,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B920..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

/// Normalize and split into words: whitespace separates, punctuation and CJK stand alone.
fn words(text: &str, opts: WpmOptions) -> Vec<String> {
    let mut words = vec![String::new()];
    for c in text.chars() {
        let c = if opts.strip_accents { unicode::nfd_first(c) } else { c };
        let f: CpFlags = unicode::flags(c);
        if f.is_whitespace() {
            if !words.last().is_some_and(|w| w.is_empty()) {
                words.push(String::new());
            }
            continue;
        }
        let cp = c as u32;
        if cp == 0 || cp == 0xFFFD || f.is_control() {
            continue;
        }
        if opts.strip_accents && f.is_mark() {
            continue;
        }
        let c = if opts.lowercase { unicode::to_lower(c) } else { c };
        if f.is_punctuation() || (cp < 0x7F && f.is_symbol()) || is_chinese(cp) {
            if !words.last().is_some_and(|w| w.is_empty()) {
                words.push(String::new());
            }
            if let Some(w) = words.last_mut() {
                w.push(c);
            }
            words.push(String::new());
        } else if let Some(w) = words.last_mut() {
            w.push(c);
        }
    }
    words.retain(|w| !w.is_empty());
    words
}

/// Greedy longest-match-first over each word.
pub(crate) fn tokenize(vocab: &Vocab, text: &str, opts: WpmOptions, out: &mut Vec<u32>) {
    let mut word1 = String::new();
    for word in words(text, opts) {
        word1.clear();
        word1.push('\u{2581}');
        word1.push_str(&word);
        let n = word1.len();
        let before = out.len();
        let mut i = 0;
        while i < n {
            let mut matched = None;
            let mut j = n.min(i + vocab.max_token_len + 1);
            while j > i {
                if word1.is_char_boundary(j) {
                    if let Some(id) = vocab.id(&word1[i..j]) {
                        matched = Some((id, j));
                        break;
                    }
                }
                j -= 1;
            }
            match matched {
                Some((id, j)) => {
                    out.push(id);
                    i = j;
                }
                None => {
                    out.truncate(before);
                    break;
                }
            }
        }
        if out.len() == before {
            if let Some(unk) = vocab.unk {
                out.push(unk);
            }
        }
    }
}
