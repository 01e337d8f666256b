//! Parsing a safetensors header (and a sharded checkpoint's index) from bytes, checking every length,
//! dtype, shape and offset before anything is used.

use super::error::SafetensorsError;
use super::json::Json;
use super::limits::*;
use super::{Dtype, TensorInfo};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

type Result<T> = std::result::Result<T, SafetensorsError>;

/// Everything in a safetensors file but the tensor data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafetensorsHeader {
    /// Length of the JSON header (padding included), as given by the first 8 bytes.
    pub header_len: u64,
    /// The `__metadata__` map (empty if absent).
    pub metadata: BTreeMap<String, String>,
    /// The tensors in data order (sorted by offset); `shard` is 0.
    pub tensors: Vec<TensorInfo>,
}

impl SafetensorsHeader {
    /// Offset of the data section from the start of the file.
    pub fn data_start(&self) -> u64 {
        LEN_PREFIX + self.header_len
    }
}

/// At most 64 characters of a name that may be hostile and huge, for messages.
fn short(name: &str) -> String {
    match name.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &name[..i]),
        None => name.to_string(),
    }
}

/// Parse and validate the header of a safetensors file held in `bytes` (normally a memory map); `file`
/// only labels errors.
///
/// Checks: the length prefix against [`MAX_HEADER_LEN`] and the file size; UTF-8; JSON; no duplicate
/// keys; `__metadata__` is a string-to-string map; every tensor has exactly `dtype` (a known name),
/// `shape` (at most [`MAX_DIMS`] non-negative integers) and `data_offsets` (`[begin, end]`, begin ≤
/// end, inside the data section, spanning exactly the bytes the dtype and shape need); and the tensors
/// cover the data section exactly, with no overlap, hole or trailing byte. The JSON may list tensors in
/// any order; they are returned in data order.
///
/// # Errors
/// The first check that fails, naming `file` and the tensor or field.
pub fn parse_header(bytes: &[u8], file: &Path) -> Result<SafetensorsHeader> {
    let f = || file.to_path_buf();
    let file_len = bytes.len() as u64;
    let Some(prefix) = bytes.first_chunk::<8>() else {
        return Err(SafetensorsError::TooShort { file: f(), len: file_len });
    };
    let header_len = u64::from_le_bytes(*prefix);
    if header_len > MAX_HEADER_LEN {
        return Err(SafetensorsError::HeaderTooLarge { file: f(), len: header_len, limit: MAX_HEADER_LEN });
    }
    if header_len > file_len - LEN_PREFIX {
        return Err(SafetensorsError::HeaderTruncated { file: f(), len: header_len, file_len });
    }
    let data_start = LEN_PREFIX + header_len;
    let json = &bytes[LEN_PREFIX as usize..data_start as usize];
    let text = std::str::from_utf8(json)
        .map_err(|e| SafetensorsError::HeaderUtf8 { file: f(), offset: LEN_PREFIX + e.valid_up_to() as u64 })?;
    let root: Json = serde_json::from_str(text).map_err(|e| SafetensorsError::HeaderJson { file: f(), source: e })?;
    let Json::Obj(entries) = root else {
        return Err(SafetensorsError::BadHeader {
            file: f(),
            reason: format!("header is {}, expected a JSON object", root.kind()),
        });
    };
    if let Some(key) = Json::duplicate_key(&entries) {
        return Err(SafetensorsError::DuplicateKey { file: f(), key: short(key) });
    }
    if entries.len() > MAX_TENSORS + 1 {
        return Err(SafetensorsError::TooLarge {
            file: f(),
            what: "tensor count".into(),
            value: entries.len() as u64,
            limit: MAX_TENSORS as u64,
        });
    }

    let data_len = file_len - data_start;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if name == METADATA_KEY {
            metadata = parse_metadata(value, file)?;
        } else {
            tensors.push(parse_tensor(name, value, data_len, file)?);
        }
    }
    check_coverage(&mut tensors, data_len, file)?;
    Ok(SafetensorsHeader { header_len, metadata, tensors })
}

fn parse_metadata(value: Json, file: &Path) -> Result<BTreeMap<String, String>> {
    let bad = |reason: String| SafetensorsError::BadHeader { file: file.to_path_buf(), reason };
    let Json::Obj(entries) = value else {
        return Err(bad(format!("{METADATA_KEY} is {}, expected an object of strings", value.kind())));
    };
    if let Some(key) = Json::duplicate_key(&entries) {
        return Err(SafetensorsError::DuplicateKey {
            file: file.to_path_buf(),
            key: format!("{METADATA_KEY}.{}", short(key)),
        });
    }
    let mut out = BTreeMap::new();
    for (k, v) in entries {
        match v {
            Json::Str(s) => {
                out.insert(k, s);
            }
            other => {
                return Err(bad(format!("{METADATA_KEY} key {:?} is {}, expected a string", short(&k), other.kind())))
            }
        }
    }
    Ok(out)
}

fn parse_tensor(name: String, value: Json, data_len: u64, file: &Path) -> Result<TensorInfo> {
    let f = || file.to_path_buf();
    if name.len() > MAX_TENSOR_NAME_LEN {
        return Err(SafetensorsError::TooLarge {
            file: f(),
            what: format!("length of tensor name {:?}", short(&name)),
            value: name.len() as u64,
            limit: MAX_TENSOR_NAME_LEN as u64,
        });
    }
    let bad = |reason: String| SafetensorsError::BadTensorEntry { file: f(), tensor: name.clone(), reason };
    let Json::Obj(fields) = value else {
        return Err(bad(format!("entry is {}, expected an object", value.kind())));
    };
    if let Some(key) = Json::duplicate_key(&fields) {
        return Err(bad(format!("field {:?} appears twice", short(key))));
    }
    let (mut dtype, mut shape, mut offsets) = (None, None, None);
    for (k, v) in fields {
        match k.as_str() {
            "dtype" => dtype = Some(v),
            "shape" => shape = Some(v),
            "data_offsets" => offsets = Some(v),
            _ => return Err(bad(format!("unknown field {:?}", short(&k)))),
        }
    }
    let dtype = match dtype {
        Some(Json::Str(s)) => Dtype::from_name(&s).ok_or_else(|| SafetensorsError::UnknownDtype {
            file: f(),
            tensor: name.clone(),
            dtype: short(&s),
        })?,
        Some(v) => return Err(bad(format!("dtype is {}, expected a string", v.kind()))),
        None => return Err(bad("missing field \"dtype\"".into())),
    };
    let bad_shape = |reason: String| SafetensorsError::BadShape { file: f(), tensor: name.clone(), reason };
    let shape = match shape {
        Some(Json::Arr(items)) => {
            if items.len() > MAX_DIMS {
                return Err(bad_shape(format!("has {} dimensions, above the limit of {MAX_DIMS}", items.len())));
            }
            let mut dims = Vec::with_capacity(items.len());
            for (i, d) in items.iter().enumerate() {
                match d {
                    Json::U64(d) => dims.push(*d),
                    other => {
                        return Err(bad_shape(format!("dimension {i} is {other:?}, expected a non-negative integer")))
                    }
                }
            }
            dims
        }
        Some(v) => return Err(bad(format!("shape is {}, expected an array", v.kind()))),
        None => return Err(bad("missing field \"shape\"".into())),
    };
    let (begin, end) = match offsets {
        Some(Json::Arr(items)) => match items.as_slice() {
            [Json::U64(b), Json::U64(e)] => (*b, *e),
            _ => return Err(bad("data_offsets must be two non-negative integers [begin, end]".into())),
        },
        Some(v) => return Err(bad(format!("data_offsets is {}, expected an array", v.kind()))),
        None => return Err(bad("missing field \"data_offsets\"".into())),
    };

    let info = TensorInfo { name: name.clone(), dtype, shape, data_offsets: (begin, end), shard: 0 };
    let expected = info.checked_n_bytes().map_err(bad_shape)?;
    if begin > end {
        return Err(SafetensorsError::ReversedOffsets { file: f(), tensor: info.name, begin, end });
    }
    if end > data_len {
        return Err(SafetensorsError::OutOfBounds { file: f(), tensor: info.name, begin, end, data_len });
    }
    if end - begin != expected {
        return Err(SafetensorsError::SizeMismatch {
            file: f(),
            tensor: info.name,
            dtype,
            shape: info.shape,
            expected,
            found: end - begin,
        });
    }
    Ok(info)
}

/// Sort `tensors` into data order and check they tile `[0, data_len)` exactly.
fn check_coverage(tensors: &mut [TensorInfo], data_len: u64, file: &Path) -> Result<()> {
    tensors.sort_by(|a, b| a.data_offsets.cmp(&b.data_offsets).then_with(|| a.name.cmp(&b.name)));
    let mut pos = 0u64;
    let mut prev: Option<&str> = None;
    for t in tensors.iter() {
        let (begin, end) = t.data_offsets;
        if begin < pos {
            return Err(SafetensorsError::Overlap {
                file: file.to_path_buf(),
                a: prev.unwrap_or_default().to_string(),
                b: t.name.clone(),
            });
        }
        if begin > pos {
            return Err(SafetensorsError::Hole { file: file.to_path_buf(), start: pos, end: begin });
        }
        pos = end;
        prev = Some(&t.name);
    }
    if pos != data_len {
        return Err(SafetensorsError::Hole { file: file.to_path_buf(), start: pos, end: data_len });
    }
    Ok(())
}

/// A sharded checkpoint's `*.safetensors.index.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafetensorsIndex {
    /// `metadata.total_size` if given (bytes of tensor data in all shards).
    pub total_size: Option<u64>,
    /// `weight_map` in file order: tensor name → shard file name (relative to the index's folder).
    pub weight_map: Vec<(String, String)>,
}

/// Parse and validate an index file held in `bytes`; `file` only labels errors.
///
/// # Errors
/// Not JSON, not an object, a missing or malformed `weight_map`, duplicate tensor names, shard names
/// that are not plain relative paths, a `metadata.total_size` that is not a non-negative integer.
pub fn parse_index(bytes: &[u8], file: &Path) -> Result<SafetensorsIndex> {
    let f = || file.to_path_buf();
    let bad = |reason: String| SafetensorsError::BadIndex { file: f(), reason };
    if bytes.len() as u64 > MAX_INDEX_LEN {
        return Err(SafetensorsError::TooLarge {
            file: f(),
            what: "index file size".into(),
            value: bytes.len() as u64,
            limit: MAX_INDEX_LEN,
        });
    }
    let root: Json = serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let Json::Obj(entries) = root else {
        return Err(bad(format!("index is {}, expected a JSON object", root.kind())));
    };
    if let Some(key) = Json::duplicate_key(&entries) {
        return Err(SafetensorsError::DuplicateKey { file: f(), key: short(key) });
    }
    let mut total_size = None;
    let mut weight_map = None;
    for (k, v) in entries {
        match (k.as_str(), v) {
            ("metadata", Json::Obj(meta)) => {
                for (mk, mv) in meta {
                    if mk == "total_size" {
                        total_size = Some(match mv {
                            Json::U64(n) => n,
                            // Some exporters write the size as a float; accept it only when exact.
                            Json::F64(x) if x >= 0.0 && x.fract() == 0.0 && x < u64::MAX as f64 => x as u64,
                            other => {
                                return Err(bad(format!("metadata.total_size is {other:?}, expected a byte count")))
                            }
                        });
                    }
                }
            }
            ("metadata", v) => return Err(bad(format!("metadata is {}, expected an object", v.kind()))),
            ("weight_map", Json::Obj(map)) => weight_map = Some(map),
            ("weight_map", v) => return Err(bad(format!("weight_map is {}, expected an object", v.kind()))),
            _ => {}
        }
    }
    let map = weight_map.ok_or_else(|| bad("missing \"weight_map\"".into()))?;
    if map.is_empty() {
        return Err(bad("weight_map is empty".into()));
    }
    if let Some(key) = Json::duplicate_key(&map) {
        return Err(SafetensorsError::DuplicateKey { file: f(), key: format!("weight_map.{}", short(key)) });
    }
    let mut out = Vec::with_capacity(map.len());
    for (tensor, shard) in map {
        let Json::Str(shard) = shard else {
            return Err(bad(format!("weight_map[{:?}] is {}, expected a file name", short(&tensor), shard.kind())));
        };
        if !is_plain_relative(&shard) {
            return Err(SafetensorsError::BadShardName { index: f(), shard: short(&shard) });
        }
        out.push((tensor, shard));
    }
    Ok(SafetensorsIndex { total_size, weight_map: out })
}

/// True for a non-empty relative path made only of normal components (no `..`, no root, no `.`).
fn is_plain_relative(name: &str) -> bool {
    let p = PathBuf::from(name);
    !name.is_empty() && !name.contains('\0') && p.components().all(|c| matches!(c, Component::Normal(_)))
}
