//! SentencePiece `tokenizer.model` files (a protobuf `ModelProto`): the pieces with their scores and
//! types, read for conversion and written on export. Only the fields llama.cpp uses are decoded;
//! everything else is skipped by wire type, so newer files still read.

/// A piece of the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    /// SentencePiece's type, which is also llama.cpp's token type: 1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte.
    pub kind: i32,
}

/// The parts of a `ModelProto` crunch uses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpmModel {
    pub pieces: Vec<Piece>,
    /// `trainer_spec.model_type`: 1 unigram, 2 BPE.
    pub model_type: Option<i32>,
    /// `normalizer_spec.add_dummy_prefix`.
    pub add_dummy_prefix: Option<bool>,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or("field runs past the end")?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next `(field, wire type)`, or `None` at the end.
    fn key(&mut self) -> Result<Option<(u64, u8)>, String> {
        if self.pos >= self.b.len() {
            return Ok(None);
        }
        let k = self.varint()?;
        Ok(Some((k >> 3, (k & 7) as u8)))
    }

    /// A length-delimited field's bytes, or skip a field of another wire type (returning `None`).
    fn value(&mut self, wire: u8) -> Result<Value<'a>, String> {
        Ok(match wire {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "fixed64")?)),
            2 => {
                let n = self.varint()? as usize;
                Value::Bytes(self.take(n)?)
            }
            5 => Value::Fixed(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "fixed32")?) as u64),
            w => return Err(format!("unsupported wire type {w}")),
        })
    }
}

enum Value<'a> {
    Varint(u64),
    Fixed(u64),
    Bytes(&'a [u8]),
}

fn parse_piece(b: &[u8]) -> Result<Piece, String> {
    let mut r = Reader { b, pos: 0 };
    let mut p = Piece { piece: String::new(), score: 0.0, kind: 1 };
    while let Some((field, wire)) = r.key()? {
        match (field, r.value(wire)?) {
            (1, Value::Bytes(s)) => p.piece = String::from_utf8(s.to_vec()).map_err(|_| "piece is not UTF-8")?,
            (2, Value::Fixed(x)) => p.score = f32::from_bits(x as u32),
            (3, Value::Varint(t)) => p.kind = t as i32,
            _ => {}
        }
    }
    Ok(p)
}

fn sub_field(b: &[u8], want: u64) -> Result<Option<u64>, String> {
    let mut r = Reader { b, pos: 0 };
    let mut found = None;
    while let Some((field, wire)) = r.key()? {
        if let (true, Value::Varint(v)) = (field == want, r.value(wire)?) {
            found = Some(v);
        }
    }
    Ok(found)
}

impl SpmModel {
    /// Parse a `tokenizer.model`.
    ///
    /// # Errors
    /// Malformed protobuf, described.
    pub fn parse(b: &[u8]) -> Result<Self, String> {
        let mut r = Reader { b, pos: 0 };
        let mut m = SpmModel::default();
        while let Some((field, wire)) = r.key()? {
            match (field, r.value(wire)?) {
                (1, Value::Bytes(p)) => m.pieces.push(parse_piece(p)?),
                (2, Value::Bytes(t)) => m.model_type = sub_field(t, 3)?.map(|v| v as i32),
                (3, Value::Bytes(n)) => m.add_dummy_prefix = sub_field(n, 3)?.map(|v| v != 0),
                _ => {}
            }
        }
        if m.pieces.is_empty() {
            return Err("no pieces".into());
        }
        Ok(m)
    }

    /// Serialize: the pieces, a BPE trainer spec with byte fallback, and a normalizer spec that
    /// escapes whitespace (what Llama / Mistral `tokenizer.model` files hold).
    pub fn to_bytes(&self) -> Vec<u8> {
        fn varint(out: &mut Vec<u8>, mut v: u64) {
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    out.push(b);
                    return;
                }
                out.push(b | 0x80);
            }
        }
        fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
            varint(out, field << 3 | wire);
        }
        fn bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
            key(out, field, 2);
            varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        let mut out = Vec::new();
        for p in &self.pieces {
            let mut e = Vec::new();
            bytes(&mut e, 1, p.piece.as_bytes());
            key(&mut e, 2, 5);
            e.extend_from_slice(&p.score.to_bits().to_le_bytes());
            if p.kind != 1 {
                key(&mut e, 3, 0);
                varint(&mut e, p.kind as u64);
            }
            bytes(&mut out, 1, &e);
        }
        let mut t = Vec::new();
        key(&mut t, 3, 0);
        varint(&mut t, self.model_type.unwrap_or(2) as u64);
        key(&mut t, 4, 0);
        varint(&mut t, self.pieces.len() as u64);
        key(&mut t, 35, 0); // byte_fallback
        varint(&mut t, 1);
        bytes(&mut out, 2, &t);
        let mut n = Vec::new();
        bytes(&mut n, 1, b"identity");
        key(&mut n, 3, 0);
        varint(&mut n, self.add_dummy_prefix.unwrap_or(true) as u64);
        key(&mut n, 4, 0); // remove_extra_whitespaces
        varint(&mut n, 0);
        key(&mut n, 5, 0); // escape_whitespaces
        varint(&mut n, 1);
        bytes(&mut out, 3, &n);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let m = SpmModel {
            pieces: vec![
                Piece { piece: "<unk>".into(), score: 0.0, kind: 2 },
                Piece { piece: "<s>".into(), score: 0.0, kind: 3 },
                Piece { piece: "<0x0A>".into(), score: 0.0, kind: 6 },
                Piece { piece: "▁the".into(), score: -3.5, kind: 1 },
            ],
            model_type: Some(2),
            add_dummy_prefix: Some(false),
        };
        let b = m.to_bytes();
        assert_eq!(SpmModel::parse(&b).unwrap(), m);
        for cut in [1, 5, b.len() / 2, b.len() - 1] {
            assert!(SpmModel::parse(&b[..cut]).is_err() || SpmModel::parse(&b[..cut]).unwrap() != m);
        }
        assert!(SpmModel::parse(&[]).is_err());
    }
}
