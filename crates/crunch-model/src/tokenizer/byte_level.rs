//! GPT-2's byte-level alphabet: every byte gets a printable stand-in character, so byte-level BPE
//! vocabularies can be stored as text. Printable Latin-1 bytes stand for themselves; the other 68
//! bytes are mapped, in order, to U+0100, U+0101, ...

use std::sync::OnceLock;

struct Tables {
    to_char: [char; 256],
    /// Indexed by code point for the range the alphabet uses (< 0x200).
    from_char: Vec<Option<u8>>,
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let mut to_char = ['\0'; 256];
        let mut from_char = vec![None; 0x200];
        let mut next = 0x100u32;
        for b in 0..256u32 {
            let cp = if printable(b) {
                b
            } else {
                let cp = next;
                next += 1;
                cp
            };
            let c = char::from_u32(cp).unwrap_or('\u{FFFD}');
            to_char[b as usize] = c;
            from_char[cp as usize] = Some(b as u8);
        }
        Tables { to_char, from_char }
    })
}

/// The stand-in character of a byte.
#[inline]
pub(crate) fn byte_to_char(b: u8) -> char {
    tables().to_char[b as usize]
}

/// The byte a stand-in character represents, if it is one.
#[inline]
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    tables().from_char.get(c as usize).copied().flatten()
}

/// Encode raw bytes as byte-level text.
pub(crate) fn encode(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        out.push(byte_to_char(b));
    }
}

/// Decode byte-level text back to bytes, the way llama.cpp does: a character outside the alphabet
/// is kept as its own UTF-8 bytes.
pub(crate) fn decode(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        let mut s = String::new();
        encode("héllo wörld".as_bytes(), &mut s);
        let mut back = Vec::new();
        decode(&s, &mut back);
        assert_eq!(back, "héllo wörld".as_bytes());
    }
}
