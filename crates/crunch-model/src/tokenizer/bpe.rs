//! Merge-ranked BPE (`tokenizer.ggml.model = "gpt2"`), applied word by word.
//!
//! Symbols are identified by integers: ids below the vocabulary size are tokens, higher ids are
//! strings that only occur inside the merge list. Merges become a hash map from a pair of symbol
//! ids to (rank, merged symbol id), so the merge loop never builds or hashes strings.

use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use super::byte_level;
use super::vocab::Vocab;
use super::{Result, TokenizerError};

/// A small, fast hasher for integer keys (the multiply-rotate scheme of rustc's FxHash).
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.add(b as u64);
        }
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    #[inline]
    fn add(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// No symbol: a byte or character that is neither a token nor part of any merge.
const NO_SYMBOL: u32 = u32::MAX;

/// Words longer than this use the heap-based merge loop instead of rescanning.
const SHORT_WORD: usize = 48;

#[derive(Debug)]
pub(crate) struct BpeModel {
    n_vocab: u32,
    /// (left, right) -> (rank, merged).
    merges: FxMap<(u32, u32), (u32, u32)>,
    /// Strings of symbol ids >= n_vocab.
    extra: HashMap<String, u32>,
    /// Symbol id of each byte's byte-level character.
    byte_sym: [u32; 256],
    byte_encode: bool,
    ignore_merges: bool,
    /// Gemma 4: a word made only of newlines that is a token is emitted whole.
    newline_words: bool,
}

#[derive(Clone, Copy, Debug)]
struct Sym {
    start: u32,
    end: u32,
    id: u32,
}

impl BpeModel {
    pub fn new(
        vocab: &Vocab,
        merges: &[String],
        byte_encode: bool,
        ignore_merges: bool,
        newline_words: bool,
    ) -> Result<Self> {
        let n_vocab = vocab.n_tokens() as u32;
        let mut extra: HashMap<String, u32> = HashMap::new();
        let intern = |s: &str, extra: &mut HashMap<String, u32>| -> u32 {
            if let Some(id) = vocab.id(s) {
                return id;
            }
            if let Some(&id) = extra.get(s) {
                return id;
            }
            let id = n_vocab + extra.len() as u32;
            extra.insert(s.to_string(), id);
            id
        };
        let mut map: FxMap<(u32, u32), (u32, u32)> = FxMap::default();
        map.reserve(merges.len());
        let mut joined = String::new();
        for (rank, m) in merges.iter().enumerate() {
            // Read as a C string, like llama.cpp does.
            let m = m.split('\0').next().unwrap_or("");
            // llama.cpp splits at the first space after the first byte.
            let Some(sp) = m.as_bytes().iter().skip(1).position(|&b| b == b' ').map(|p| p + 1) else {
                continue;
            };
            let (a, b) = (&m[..sp], &m[sp + 1..]);
            if a.is_empty() || b.is_empty() {
                continue;
            }
            let ia = intern(a, &mut extra);
            let ib = intern(b, &mut extra);
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let ij = intern(&joined, &mut extra);
            map.entry((ia, ib)).or_insert((rank as u32, ij));
        }
        if n_vocab as usize + extra.len() >= NO_SYMBOL as usize {
            return Err(TokenizerError::Vocab("too many merge symbols".into()));
        }
        let mut byte_sym = [NO_SYMBOL; 256];
        let mut buf = [0u8; 4];
        for (b, slot) in byte_sym.iter_mut().enumerate() {
            let s: &str = if byte_encode {
                byte_level::byte_to_char(b as u8).encode_utf8(&mut buf)
            } else if b < 0x80 {
                buf[0] = b as u8;
                std::str::from_utf8(&buf[..1]).unwrap_or("")
            } else {
                continue;
            };
            *slot = vocab.id(s).or_else(|| extra.get(s).copied()).unwrap_or(NO_SYMBOL);
        }
        Ok(BpeModel { n_vocab, merges: map, extra, byte_sym, byte_encode, ignore_merges, newline_words })
    }

    fn lookup(&self, vocab: &Vocab, s: &str) -> u32 {
        vocab.id(s).or_else(|| self.extra.get(s).copied()).unwrap_or(NO_SYMBOL)
    }

    #[inline]
    fn merge_of(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        if a == NO_SYMBOL || b == NO_SYMBOL {
            return None;
        }
        self.merges.get(&(a, b)).copied()
    }

    /// Tokenize one pre-tokenized word (raw UTF-8, not yet byte-level encoded).
    pub fn tokenize_word(&self, vocab: &Vocab, word: &str, scratch: &mut Scratch, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if self.ignore_merges || self.newline_words {
            let whole = if self.byte_encode {
                scratch.text.clear();
                byte_level::encode(word.as_bytes(), &mut scratch.text);
                vocab.id(&scratch.text)
            } else {
                vocab.id(word)
            };
            let applies = self.ignore_merges || word.bytes().all(|b| b == b'\n');
            if let (true, Some(id)) = (applies, whole) {
                out.push(id);
                return;
            }
        }
        let syms = &mut scratch.syms;
        syms.clear();
        if self.byte_encode {
            for (i, &b) in word.as_bytes().iter().enumerate() {
                syms.push(Sym { start: i as u32, end: i as u32 + 1, id: self.byte_sym[b as usize] });
            }
        } else {
            for (i, c) in word.char_indices() {
                let end = i + c.len_utf8();
                syms.push(Sym { start: i as u32, end: end as u32, id: self.lookup(vocab, &word[i..end]) });
            }
        }
        if syms.len() <= SHORT_WORD {
            self.merge_short(syms);
        } else {
            self.merge_long(syms, &mut scratch.links, &mut scratch.heap);
        }
        for s in syms.iter() {
            if s.id < self.n_vocab {
                out.push(s.id);
            } else {
                self.fallback(vocab, &word.as_bytes()[s.start as usize..s.end as usize], out);
            }
        }
    }

    /// A symbol that is not a token: llama.cpp looks up each byte of its text alone.
    fn fallback(&self, vocab: &Vocab, bytes: &[u8], out: &mut Vec<u32>) {
        for &b in bytes {
            let id = if self.byte_encode {
                let c = byte_level::byte_to_char(b);
                // A multi-byte character cut into single bytes is never a token.
                if c.is_ascii() {
                    let mut buf = [0u8; 4];
                    vocab.id(c.encode_utf8(&mut buf))
                } else {
                    None
                }
            } else {
                vocab.id(&format!("<0x{b:02X}>"))
            };
            out.extend(id);
        }
    }

    /// Repeatedly merge the best-ranked adjacent pair (leftmost on ties).
    fn merge_short(&self, syms: &mut Vec<Sym>) {
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some((rank, merged)) = self.merge_of(syms[i].id, syms[i + 1].id) {
                    if best.is_none_or(|(r, _, _)| rank < r) {
                        best = Some((rank, i, merged));
                    }
                }
            }
            let Some((_, i, merged)) = best else { break };
            syms[i].end = syms[i + 1].end;
            syms[i].id = merged;
            syms.remove(i + 1);
        }
    }

    /// The same merge order with a priority queue over a linked list (for long words).
    fn merge_long(&self, syms: &mut Vec<Sym>, links: &mut Vec<(u32, u32, bool)>, heap: &mut BinaryHeap<Cand>) {
        const NONE: u32 = u32::MAX;
        let n = syms.len();
        links.clear();
        links.extend(
            (0..n).map(|i| {
                (if i == 0 { NONE } else { i as u32 - 1 }, if i + 1 == n { NONE } else { i as u32 + 1 }, true)
            }),
        );
        heap.clear();
        let push = |heap: &mut BinaryHeap<Cand>, syms: &[Sym], l: u32, r: u32| {
            if l == NONE || r == NONE {
                return;
            }
            let (a, b) = (syms[l as usize].id, syms[r as usize].id);
            if let Some((rank, merged)) = self.merge_of(a, b) {
                heap.push(Cand { rank, left: l, right: r, left_id: a, right_id: b, merged });
            }
        };
        for i in 1..n {
            push(heap, syms, i as u32 - 1, i as u32);
        }
        while let Some(c) = heap.pop() {
            let (l, r) = (c.left as usize, c.right as usize);
            if !links[l].2
                || !links[r].2
                || links[l].1 != c.right
                || syms[l].id != c.left_id
                || syms[r].id != c.right_id
            {
                continue;
            }
            syms[l].end = syms[r].end;
            syms[l].id = c.merged;
            links[r].2 = false;
            let after = links[r].1;
            links[l].1 = after;
            if after != NONE {
                links[after as usize].0 = c.left;
            }
            let before = links[l].0;
            push(heap, syms, before, c.left);
            push(heap, syms, c.left, after);
        }
        let mut k = 0;
        for i in 0..n {
            if links[i].2 {
                syms[k] = syms[i];
                k += 1;
            }
        }
        syms.truncate(k);
    }
}

/// A merge candidate; the heap pops the lowest rank, then the leftmost.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Cand {
    rank: u32,
    left: u32,
    right: u32,
    left_id: u32,
    right_id: u32,
    merged: u32,
}

impl Ord for Cand {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.rank, other.left).cmp(&(self.rank, self.left))
    }
}

impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Buffers reused across words.
#[derive(Default)]
pub(crate) struct Scratch {
    syms: Vec<Sym>,
    links: Vec<(u32, u32, bool)>,
    heap: BinaryHeap<Cand>,
    text: String,
}
