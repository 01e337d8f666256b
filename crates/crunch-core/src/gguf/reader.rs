//! Parsing a GGUF header (metadata and tensor infos) from bytes, checking everything first.
//!
//! Every count is checked against a named limit and against the bytes left before anything is
//! allocated, and every allocation is charged to the header's memory budget first
//! ([`HEADER_MEMORY_FACTOR`] times the header bytes plus [`HEADER_MEMORY_SLACK`]).

use super::error::GgufError;
use super::limits::*;
use super::value::{Array, Strings, Value, ValueType};
use super::{Metadata, TensorInfo};
use crate::GgmlType;
use std::mem::size_of;

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
    /// Bytes of memory allocated for the parsed header so far, as [`heap_cost`] counts them.
    charged: u64,
}

/// What an allocation of `bytes` costs with the allocator's rounding and bookkeeping (glibc's malloc
/// takes 32 bytes for anything up to 24, then the size plus 8 rounded up to 16; this is never less).
fn heap_cost(bytes: u64) -> u64 {
    if bytes == 0 {
        0
    } else {
        bytes.saturating_add(16).next_multiple_of(16).max(32)
    }
}

/// [`heap_cost`] of a vector of `n` `T`s.
fn vec_cost<T>(n: u64) -> u64 {
    heap_cost(n.saturating_mul(size_of::<T>() as u64))
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

    /// Charge `bytes` of memory about to be allocated to the header's budget: at most
    /// [`HEADER_MEMORY_FACTOR`] times the bytes read so far plus `ahead` (bytes the value being read
    /// is known to take still, and checked to be in the file), plus [`HEADER_MEMORY_SLACK`].
    fn charge(&mut self, bytes: u64, ahead: u64, what: &dyn Fn() -> String) -> Result<()> {
        debug_assert!(ahead <= self.left() as u64);
        let need = self.charged.saturating_add(bytes);
        let limit = HEADER_MEMORY_FACTOR.saturating_mul(self.pos as u64 + ahead).saturating_add(HEADER_MEMORY_SLACK);
        if need > limit {
            return Err(GgufError::MemoryLimit { what: what(), need, limit });
        }
        self.charged = need;
        Ok(())
    }

    /// A length-prefixed byte string copied out, its memory charged.
    fn owned_bytes(&mut self, limit: u64, what: &dyn Fn() -> String) -> Result<Vec<u8>> {
        let b = self.bytes(limit, what)?;
        self.charge(heap_cost(b.len() as u64), 0, what)?;
        Ok(b.to_vec())
    }

    fn text(&mut self, limit: u64, what: &dyn Fn() -> String) -> Result<String> {
        let b = self.owned_bytes(limit, what)?;
        String::from_utf8(b).map_err(|_| GgufError::BadUtf8 { what: what() })
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
        ValueType::Bool => Value::Bool(bool_from(c.array::<1>(&what)?[0], key)?),
        ValueType::String => Value::String(c.owned_bytes(MAX_STRING_LEN, &what)?),
        ValueType::Array => Value::Array(read_array(c, key, depth)?),
    })
}

fn bool_from(b: u8, key: &str) -> Result<bool> {
    match b {
        0 | 1 => Ok(b == 1),
        _ => Err(GgufError::BadMetadata { key: key.into(), reason: format!("bool byte is {b}, not 0 or 1") }),
    }
}

/// `n` fixed-size elements of `N` bytes each, converted by `conv` into a vector charged first.
fn fixed<T, const N: usize>(c: &mut Cursor, n: u64, key: &str, conv: impl Fn([u8; N]) -> T) -> Result<Vec<T>> {
    let what = || format!("elements of array {key:?}");
    let bytes = c.take(n * N as u64, &what)?;
    c.charge(vec_cost::<T>(n), 0, &what)?;
    let mut v = Vec::with_capacity(n as usize);
    v.extend(bytes.chunks_exact(N).map(|b| conv(b.try_into().expect("chunks of N bytes"))));
    Ok(v)
}

/// An array value after its type code: element type, count, elements. Depth counts the arrays
/// around this one.
fn read_array(c: &mut Cursor, key: &str, depth: usize) -> Result<Array> {
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
    let what = || format!("array {key:?}");
    Ok(match elem {
        ValueType::U8 => Array::U8(fixed(c, n, key, |[b]| b)?),
        ValueType::I8 => Array::I8(fixed(c, n, key, |[b]| b as i8)?),
        ValueType::U16 => Array::U16(fixed(c, n, key, u16::from_le_bytes)?),
        ValueType::I16 => Array::I16(fixed(c, n, key, i16::from_le_bytes)?),
        ValueType::U32 => Array::U32(fixed(c, n, key, u32::from_le_bytes)?),
        ValueType::I32 => Array::I32(fixed(c, n, key, i32::from_le_bytes)?),
        ValueType::F32 => Array::F32(fixed(c, n, key, f32::from_le_bytes)?),
        ValueType::U64 => Array::U64(fixed(c, n, key, u64::from_le_bytes)?),
        ValueType::I64 => Array::I64(fixed(c, n, key, i64::from_le_bytes)?),
        ValueType::F64 => Array::F64(fixed(c, n, key, f64::from_le_bytes)?),
        ValueType::Bool => {
            let bytes = c.take(n, &what)?;
            c.charge(vec_cost::<bool>(n), 0, &what)?;
            if let Some(&b) = bytes.iter().find(|&&b| b > 1) {
                bool_from(b, key)?;
            }
            // (checked first: collecting `Result`s would grow the vector by doubling)
            Array::Bool(bytes.iter().map(|&b| b == 1).collect())
        }
        ValueType::String => {
            // First pass: check every length and find the total, so the buffer is allocated once,
            // at its size.
            let start = c.pos;
            let mut total = 0u64;
            for _ in 0..n {
                total += c.bytes(MAX_STRING_LEN, &what)?.len() as u64;
            }
            let ahead = (c.pos - start) as u64;
            c.pos = start;
            let cost = heap_cost(size_of::<Strings>() as u64) + heap_cost(total) + vec_cost::<usize>(n);
            c.charge(cost, ahead, &what)?;
            let mut s = Strings::with_capacity(n as usize, total as usize);
            for _ in 0..n {
                s.push(c.bytes(MAX_STRING_LEN, &what)?);
            }
            Array::from(s)
        }
        ValueType::Array => {
            c.charge(vec_cost::<Array>(n), n * ValueType::Array.min_encoded_size() as u64, &what)?;
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                items.push(read_array(c, key, depth + 1)?);
            }
            Array::Array(items)
        }
    })
}

/// Round `x` up to a multiple of `align` (a power of two), checked.
pub fn align_up(x: u64, align: u64) -> Option<u64> {
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// Parse and validate the header of a GGUF file held in `bytes` (normally a memory map).
///
/// Memory: the parsed header takes at most [`HEADER_MEMORY_FACTOR`] (4) times the header's bytes
/// plus [`HEADER_MEMORY_SLACK`] (1 MiB), whatever the file holds; see [`HEADER_MEMORY_FACTOR`].
///
/// # Errors
/// Any malformed, truncated, oversized or inconsistent field, named in the error; a header that
/// would take more memory than that ([`GgufError::MemoryLimit`]).
pub fn parse_header(bytes: &[u8]) -> Result<GgufHeader> {
    let mut c = Cursor { buf: bytes, pos: 0, charged: 0 };
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

    c.charge(vec_cost::<(String, Value)>(n_kv), n_kv * (8 + 4 + 1), &|| "the metadata".into())?;
    let mut metadata = Metadata::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = c.text(MAX_KEY_LEN, &|| format!("metadata key #{i}"))?;
        let code = c.u32(&|| format!("value type of {key:?}"))?;
        let ty = ValueType::from_code(code).ok_or_else(|| GgufError::BadValueType { key: key.clone(), code })?;
        let value = read_value(&mut c, ty, &key, 0)?;
        metadata.push(key, value);
    }
    c.charge(vec_cost::<&str>(n_kv), 0, &|| "the list of keys checked for duplicates".into())?;
    if let Some(key) = first_duplicate(metadata.iter().map(|(k, _)| k).collect()) {
        return Err(GgufError::DuplicateKey(key.to_string()));
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
    c.charge(vec_cost::<TensorInfo>(n_tensors_raw), n_tensors_raw * 32, &|| "the tensor infos".into())?;
    let mut tensors = Vec::with_capacity(n_tensors_raw as usize);
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
        let dims_what = || format!("dimensions of tensor {name:?}");
        let dim_bytes = c.take(8 * n_dims as u64, &dims_what)?;
        c.charge(vec_cost::<u64>(n_dims as u64), 0, &dims_what)?;
        let dims: Vec<u64> =
            dim_bytes.chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
        let code = c.u32(&|| format!("type of tensor {name:?}"))?;
        let ty =
            GgmlType::from_code(code).ok_or_else(|| GgufError::UnknownTensorType { tensor: name.clone(), code })?;
        let offset = c.u64(&|| format!("data offset of tensor {name:?}"))?;
        let info = TensorInfo { name, dims, ty, offset };
        info.checked_n_bytes()?;
        if offset % alignment != 0 {
            return Err(GgufError::Misaligned { tensor: info.name, offset, alignment });
        }
        tensors.push(info);
    }
    c.charge(vec_cost::<&str>(n_tensors_raw), 0, &|| "the list of tensor names checked for duplicates".into())?;
    if let Some(name) = first_duplicate(tensors.iter().map(|t| t.name.as_str()).collect()) {
        return Err(GgufError::DuplicateTensor(name.to_string()));
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
    c.charge(vec_cost::<Span>(n_tensors_raw), 0, &|| "the tensor layout check".into())?;
    check_layout(&tensors, data_len)?;
    Ok(GgufHeader { version, metadata, tensors, alignment, data_start })
}

/// The smallest name that appears more than once in `names` (sorted in place).
fn first_duplicate(mut names: Vec<&str>) -> Option<&str> {
    names.sort_unstable();
    names.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// A tensor's data: start, end, name.
type Span<'a> = (u64, u64, &'a str);

/// Every tensor lies inside the data section and no two overlap.
fn check_layout(tensors: &[TensorInfo], data_len: u64) -> Result<()> {
    let mut spans: Vec<Span> = Vec::with_capacity(tensors.len());
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
