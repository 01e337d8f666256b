//! Parsing a GGUF header (metadata and tensor infos) from bytes, checking everything first.

use super::error::GgufError;
use super::limits::*;
use super::value::{Value, ValueType};
use super::{Metadata, TensorInfo};
use crate::GgmlType;
use std::collections::HashSet;

/// Everything in a GGUF file but the tensor data.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    /// Alignment of tensor data (from `general.alignment`, default 32).
    pub alignment: u64,
    /// Offset of the data section from the start of the file.
    pub data_start: u64,
}

type Result<T> = std::result::Result<T, GgufError>;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.left() as u64 {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                need: n,
                have: self.left() as u64,
            });
        }
        let n = n as usize;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed byte string, bounded by `limit` and by the bytes left.
    fn bytes(&mut self, limit: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > limit {
            return Err(GgufError::TooLarge { what: format!("length of {}", what()), value: len, limit });
        }
        self.take(len, what)
    }

    fn text(&mut self, limit: u64, what: &dyn Fn() -> String) -> Result<String> {
        let b = self.bytes(limit, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| GgufError::BadUtf8 { what: what() })
    }

    /// A count that will drive an allocation: bounded by `limit` and by how many items of at
    /// least `min_size` bytes can still fit in the file.
    fn count(&mut self, limit: u64, min_size: usize, what: &dyn Fn() -> String) -> Result<u64> {
        let n = self.u64(what)?;
        if n > limit {
            return Err(GgufError::TooLarge { what: what(), value: n, limit });
        }
        let fits = (self.left() / min_size.max(1)) as u64;
        if n > fits {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                need: n.saturating_mul(min_size as u64),
                have: self.left() as u64,
            });
        }
        Ok(n)
    }
}

fn read_value(c: &mut Cursor, ty: ValueType, key: &str, depth: usize) -> Result<Value> {
    let what = || format!("value of {key:?}");
    Ok(match ty {
        ValueType::U8 => Value::U8(c.array::<1>(&what)?[0]),
        ValueType::I8 => Value::I8(c.array::<1>(&what)?[0] as i8),
        ValueType::U16 => Value::U16(u16::from_le_bytes(c.array(&what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.array(&what)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(c.array(&what)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.array(&what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(c.array(&what)?)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(c.array(&what)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.array(&what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(c.array(&what)?)),
        ValueType::Bool => {
            let b = c.array::<1>(&what)?[0];
            if b > 1 {
                return Err(GgufError::BadMetadata {
                    key: key.into(),
                    reason: format!("bool byte is {b}, not 0 or 1"),
                });
            }
            Value::Bool(b == 1)
        }
        ValueType::String => Value::String(c.bytes(MAX_STRING_LEN, &what)?.to_vec()),
        ValueType::Array => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(GgufError::TooLarge {
                    what: format!("array nesting depth of {key:?}"),
                    value: depth as u64 + 1,
                    limit: MAX_ARRAY_DEPTH as u64,
                });
            }
            let code = c.u32(&|| format!("array element type of {key:?}"))?;
            let elem = ValueType::from_code(code).ok_or_else(|| GgufError::BadValueType { key: key.into(), code })?;
            let n = c.count(MAX_ARRAY_LEN, elem.min_encoded_size(), &|| format!("array length of {key:?}"))?;
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                items.push(read_value(c, elem, key, depth + 1)?);
            }
            Value::Array(elem, items)
        }
    })
}

/// Round `x` up to a multiple of `align` (a power of two), checked.
pub fn align_up(x: u64, align: u64) -> Option<u64> {
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// Parse and validate the header of a GGUF file held in `bytes` (normally a memory map).
///
/// # Errors
/// Any malformed, truncated, oversized or inconsistent field, named in the error.
pub fn parse_header(bytes: &[u8]) -> Result<GgufHeader> {
    let mut c = Cursor { buf: bytes, pos: 0 };
    let magic: [u8; 4] = c.array(&|| "magic".into())?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = c.u32(&|| "version".into())?;
    if !SUPPORTED_VERSIONS.contains(&version) {
        if SUPPORTED_VERSIONS.contains(&version.swap_bytes()) {
            return Err(GgufError::BigEndian);
        }
        return Err(GgufError::UnsupportedVersion(version));
    }
    // A tensor info takes at least 8 (name len) + 4 (n_dims) + 8 (one dim) + 4 (type) + 8 (offset).
    let n_tensors_raw = c.u64(&|| "tensor count".into())?;
    let n_kv = c.count(MAX_KV_COUNT, 8 + 4 + 1, &|| "metadata key/value count".into())?;
    if n_tensors_raw > MAX_TENSORS {
        return Err(GgufError::TooLarge { what: "tensor count".into(), value: n_tensors_raw, limit: MAX_TENSORS });
    }

    let mut metadata = Metadata::default();
    let mut seen = HashSet::new();
    for i in 0..n_kv {
        let key = c.text(MAX_KEY_LEN, &|| format!("metadata key #{i}"))?;
        let code = c.u32(&|| format!("value type of {key:?}"))?;
        let ty = ValueType::from_code(code).ok_or_else(|| GgufError::BadValueType { key: key.clone(), code })?;
        let value = read_value(&mut c, ty, &key, 0)?;
        if !seen.insert(key.clone()) {
            return Err(GgufError::DuplicateKey(key));
        }
        metadata.push(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if *a != 0 && a.is_power_of_two() && (*a as u64) <= MAX_ALIGNMENT => *a as u64,
        Some(v) => return Err(GgufError::BadAlignment(format!("{v} ({:?})", v.value_type()))),
    };

    if n_tensors_raw > (c.left() / 32) as u64 {
        return Err(GgufError::Truncated {
            what: "tensor infos".into(),
            offset: c.pos as u64,
            need: n_tensors_raw.saturating_mul(32),
            have: c.left() as u64,
        });
    }
    let mut tensors = Vec::with_capacity(n_tensors_raw as usize);
    let mut names = HashSet::new();
    for i in 0..n_tensors_raw {
        let name = c.text(MAX_KEY_LEN, &|| format!("name of tensor #{i}"))?;
        if name.len() as u64 > MAX_TENSOR_NAME_LEN {
            return Err(GgufError::TooLarge {
                what: format!("length of tensor name {name:?}"),
                value: name.len() as u64,
                limit: MAX_TENSOR_NAME_LEN,
            });
        }
        let n_dims = c.u32(&|| format!("dimension count of tensor {name:?}"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufError::BadShape {
                tensor: name,
                reason: format!("has {n_dims} dimensions; 1 to {MAX_DIMS} are allowed"),
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(&|| format!("dimension {d} of tensor {name:?}"))?);
        }
        let code = c.u32(&|| format!("type of tensor {name:?}"))?;
        let ty =
            GgmlType::from_code(code).ok_or_else(|| GgufError::UnknownTensorType { tensor: name.clone(), code })?;
        let offset = c.u64(&|| format!("data offset of tensor {name:?}"))?;
        let info = TensorInfo { name, dims, ty, offset };
        info.checked_n_bytes()?;
        if offset % alignment != 0 {
            return Err(GgufError::Misaligned { tensor: info.name, offset, alignment });
        }
        if !names.insert(info.name.clone()) {
            return Err(GgufError::DuplicateTensor(info.name));
        }
        tensors.push(info);
    }

    let header_end = c.pos as u64;
    let data_start = if tensors.is_empty() {
        header_end
    } else {
        align_up(header_end, alignment).ok_or(GgufError::TooLarge {
            what: "header size".into(),
            value: header_end,
            limit: u64::MAX,
        })?
    };
    // Found by fuzzing: with only zero-size tensors, a file cut inside the padding passed the layout
    // check and `GgufFile::tensor_data` then sliced past the end.
    if data_start > bytes.len() as u64 {
        return Err(GgufError::Truncated {
            what: "padding before the data section".into(),
            offset: header_end,
            need: data_start - header_end,
            have: bytes.len() as u64 - header_end,
        });
    }
    let data_len = bytes.len() as u64 - data_start;
    check_layout(&tensors, data_len)?;
    Ok(GgufHeader { version, metadata, tensors, alignment, data_start })
}

/// Every tensor lies inside the data section and no two overlap.
fn check_layout(tensors: &[TensorInfo], data_len: u64) -> Result<()> {
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(tensors.len());
    for t in tensors {
        let n = t.checked_n_bytes()?;
        let end = t.offset.saturating_add(n);
        if end > data_len {
            return Err(GgufError::OutOfBounds { tensor: t.name.clone(), start: t.offset, end, data_len });
        }
        spans.push((t.offset, end, &t.name));
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(GgufError::Overlap { a: w[0].2.to_string(), b: w[1].2.to_string() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod fuzz_regressions {
    use super::*;
    use crate::gguf::encode_header;

    /// `cargo fuzz run gguf_header` crash: zero-size tensors, file cut before the data section.
    #[test]
    fn zero_size_tensors_with_truncated_padding_are_rejected() {
        let mut metadata = Metadata::default();
        metadata.set("general.alignment", Value::U32(64));
        let tensors = vec![TensorInfo { name: "empty".into(), dims: vec![8, 0], ty: GgmlType::F32, offset: 0 }];
        let bytes = encode_header(&GgufHeader { version: 3, metadata, tensors, alignment: 64, data_start: 0 });
        assert_ne!(bytes.len() % 64, 0);
        assert!(matches!(parse_header(&bytes), Err(GgufError::Truncated { .. })));
        let mut padded = bytes.clone();
        padded.resize(align_up(bytes.len() as u64, 64).unwrap() as usize, 0);
        assert_eq!(parse_header(&padded).unwrap().data_start, padded.len() as u64);
    }
}
