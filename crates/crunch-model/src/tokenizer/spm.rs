//! SentencePiece-style BPE (`tokenizer.ggml.model = "llama"`): starting from single characters,
//! repeatedly join the adjacent pair whose joined text is the vocabulary token with the highest
//! score; characters that end up in no token fall back to `<0xNN>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::vocab::Vocab;
use super::{Result, TokenizerError};

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Sym {
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
}

#[derive(Debug)]
struct Bigram {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl Ord for Bigram {
    /// Highest score first, then leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The token for one byte: `<0xNN>`, else the byte itself as a one-character token, else `<unk>`.
pub(crate) fn byte_token(vocab: &Vocab, b: u8) -> Result<u32> {
    if let Some(id) = vocab.id(&format!("<0x{b:02X}>")) {
        return Ok(id);
    }
    if b < 0x80 {
        let s = [b];
        if let Some(id) = std::str::from_utf8(&s).ok().and_then(|s| vocab.id(s)) {
            return Ok(id);
        }
    }
    vocab.unk.ok_or(TokenizerError::NoByteToken(b))
}

/// Tokenize already-escaped text (spaces replaced by `▁`).
pub(crate) fn tokenize(vocab: &Vocab, text: &str, out: &mut Vec<u32>) -> Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    if text.len() >= NONE as usize {
        return Err(TokenizerError::Unsupported("text longer than 4 GiB".into()));
    }
    let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        let idx = syms.len() as u32;
        syms.push(Sym { start: i as u32, len: c.len_utf8() as u32, prev: idx.wrapping_sub(1), next: idx + 1 });
    }
    if let Some(first) = syms.first_mut() {
        first.prev = NONE;
    }
    if let Some(last) = syms.last_mut() {
        last.next = NONE;
    }

    let mut heap = BinaryHeap::with_capacity(syms.len());
    let try_add = |heap: &mut BinaryHeap<Bigram>, syms: &[Sym], l: u32, r: u32| {
        if l == NONE || r == NONE {
            return;
        }
        let (a, b) = (syms[l as usize], syms[r as usize]);
        let piece = &text[a.start as usize..(b.start + b.len) as usize];
        if let Some(id) = vocab.id(piece) {
            heap.push(Bigram { score: vocab.scores[id as usize], left: l, right: r, size: piece.len() as u32 });
        }
    };
    for i in 1..syms.len() as u32 {
        try_add(&mut heap, &syms, i - 1, i);
    }
    while let Some(bg) = heap.pop() {
        let (l, r) = (bg.left as usize, bg.right as usize);
        if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != bg.size {
            continue;
        }
        syms[l].len += syms[r].len;
        syms[r].len = 0;
        let after = syms[r].next;
        syms[l].next = after;
        if after != NONE {
            syms[after as usize].prev = bg.left;
        }
        let before = syms[l].prev;
        try_add(&mut heap, &syms, before, bg.left);
        try_add(&mut heap, &syms, bg.left, after);
    }

    let mut i = 0u32;
    while i != NONE {
        let s = syms[i as usize];
        let piece = &text[s.start as usize..(s.start + s.len) as usize];
        match vocab.id(piece) {
            Some(id) => out.push(id),
            None => {
                for &b in piece.as_bytes() {
                    out.push(byte_token(vocab, b)?);
                }
            }
        }
        i = s.next;
    }
    Ok(())
}
