//! Unit tests of the GGUF reader and writer: round trips and one test per failure.

use super::limits::*;
use super::*;
use crate::output::AtomicFile;
use std::io::Write;

fn sample_metadata() -> Metadata {
    let mut m = Metadata::default();
    m.set("general.architecture", Value::string("llama"));
    m.set("a.u8", Value::U8(7));
    m.set("a.i8", Value::I8(-7));
    m.set("a.u16", Value::U16(65535));
    m.set("a.i16", Value::I16(-300));
    m.set("a.u32", Value::U32(123456));
    m.set("a.i32", Value::I32(-123456));
    m.set("a.f32", Value::F32(1.5));
    m.set("a.bool", Value::Bool(true));
    m.set("a.u64", Value::U64(u64::MAX));
    m.set("a.i64", Value::I64(i64::MIN));
    m.set("a.f64", Value::F64(-2.25));
    m.set("a.strs", Value::Array(ValueType::String, vec![Value::string("x"), Value::string("")]));
    m.set(
        "a.nested",
        Value::Array(
            ValueType::Array,
            vec![
                Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(2)]),
                Value::Array(ValueType::F32, vec![]),
            ],
        ),
    );
    m
}

fn build(meta: Metadata, specs: &[TensorSpec]) -> Vec<u8> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("crunch-gguf-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.gguf");
    let mut w = GgufWriter::create(&path, meta, specs).unwrap();
    let infos = w.tensors().to_vec();
    for t in &infos {
        let data: Vec<u8> = (0..t.n_bytes()).map(|i| (i * 7 + 3) as u8).collect();
        w.write_tensor(&t.name, &data).unwrap();
    }
    w.finish().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    bytes
}

fn specs() -> Vec<TensorSpec> {
    vec![
        TensorSpec { name: "a".into(), ty: GgmlType::F32, dims: vec![3, 2] },
        TensorSpec { name: "b".into(), ty: GgmlType::Q4_0, dims: vec![64, 3] },
        TensorSpec { name: "c".into(), ty: GgmlType::Q6_K, dims: vec![256] },
    ]
}

#[test]
fn write_read_round_trip_is_byte_exact() {
    let bytes = build(sample_metadata(), &specs());
    let h = parse_header(&bytes).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.metadata, sample_metadata());
    assert_eq!(h.tensors.len(), 3);
    assert_eq!(h.tensors[1].offset % 32, 0);
    assert_eq!(h.tensors[1].n_bytes(), 3 * 2 * 18);
    // Re-encode the parsed header and compare with the file's header bytes.
    let enc = encode_header(&h);
    assert_eq!(&bytes[..enc.len()], &enc[..]);
}

#[test]
fn custom_alignment_is_honoured() {
    let mut m = sample_metadata();
    m.set("general.alignment", Value::U32(64));
    let bytes = build(m, &specs());
    let h = parse_header(&bytes).unwrap();
    assert_eq!(h.alignment, 64);
    assert_eq!(h.data_start % 64, 0);
    assert!(h.tensors.iter().all(|t| t.offset % 64 == 0));
}

fn valid() -> Vec<u8> {
    build(sample_metadata(), &specs())
}

fn err(bytes: &[u8]) -> GgufError {
    parse_header(bytes).expect_err("must fail")
}

#[test]
fn rejects_bad_magic() {
    let mut b = valid();
    b[0] = b'X';
    assert!(matches!(err(&b), GgufError::BadMagic { .. }));
}

#[test]
fn rejects_versions() {
    let mut b = valid();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(matches!(err(&b), GgufError::UnsupportedVersion(1)));
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(matches!(err(&b), GgufError::BigEndian));
}

#[test]
fn rejects_every_truncation_without_panicking() {
    let b = valid();
    let h = parse_header(&b).unwrap();
    let needed = h.data_start as usize + h.tensors.iter().map(|t| t.offset + t.n_bytes()).max().unwrap() as usize;
    for cut in 0..needed {
        assert!(parse_header(&b[..cut]).is_err(), "truncated at {cut} accepted");
    }
}

#[test]
fn rejects_absurd_counts() {
    let mut b = valid();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(err(&b), GgufError::TooLarge { .. }));
    let mut b = valid();
    b[16..24].copy_from_slice(&(MAX_KV_COUNT - 1).to_le_bytes());
    assert!(matches!(err(&b), GgufError::Truncated { .. }));
}

#[test]
fn rejects_huge_string_length() {
    let mut b = valid();
    // first key length at byte 24
    b[24..32].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(matches!(err(&b), GgufError::TooLarge { .. }));
}

fn find(b: &[u8], needle: &[u8]) -> usize {
    b.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn rejects_unknown_value_type() {
    let mut b = valid();
    let at = find(&b, b"a.u8") + 4;
    b[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    assert!(matches!(err(&b), GgufError::BadValueType { code: 99, .. }));
}

/// Offset of tensor `name`'s info: name length (8) + name bytes.
fn tensor_info_at(b: &[u8], name: &str) -> usize {
    let h = parse_header(b).unwrap();
    let enc = encode_header(&h);
    let mut pat = (name.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(name.as_bytes());
    pat.extend_from_slice(&(h.tensor(name).unwrap().dims.len() as u32).to_le_bytes());
    let pos = enc.windows(pat.len()).rposition(|w| w == pat.as_slice()).unwrap();
    pos + pat.len()
}

impl GgufHeader {
    fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

#[test]
fn rejects_unknown_tensor_type() {
    let mut b = valid();
    let at = tensor_info_at(&b, "b") + 16; // two dims
    b[at..at + 4].copy_from_slice(&4u32.to_le_bytes());
    assert!(matches!(err(&b), GgufError::UnknownTensorType { code: 4, .. }));
}

#[test]
fn rejects_row_not_block_multiple() {
    let mut b = valid();
    let at = tensor_info_at(&b, "b");
    b[at..at + 8].copy_from_slice(&33u64.to_le_bytes());
    assert!(matches!(err(&b), GgufError::BadShape { .. }));
}

#[test]
fn rejects_overflowing_shape() {
    let mut b = valid();
    let at = tensor_info_at(&b, "a");
    b[at..at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(matches!(err(&b), GgufError::BadShape { .. }));
}

#[test]
fn rejects_offsets_past_end_and_misaligned_and_overlap() {
    let b0 = valid();
    let at = tensor_info_at(&b0, "c") + 8 + 4; // one dim, type
    let mut b = b0.clone();
    b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(err(&b), GgufError::OutOfBounds { .. }));
    let mut b = b0.clone();
    b[at..at + 8].copy_from_slice(&3u64.to_le_bytes());
    assert!(matches!(err(&b), GgufError::Misaligned { .. }));
    let mut b = b0.clone();
    b[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
    assert!(matches!(err(&b), GgufError::Overlap { .. }));
}

#[test]
fn rejects_too_many_dims() {
    let mut b = valid();
    let at = tensor_info_at(&b, "a") - 4;
    b[at..at + 4].copy_from_slice(&5u32.to_le_bytes());
    assert!(matches!(err(&b), GgufError::BadShape { .. }));
}

#[test]
fn rejects_bad_alignment() {
    let mut m = sample_metadata();
    m.set("general.alignment", Value::U32(48));
    let mut w = Vec::new();
    let h = GgufHeader { version: 3, metadata: m, tensors: vec![], alignment: 32, data_start: 0 };
    w.extend_from_slice(&encode_header(&h));
    assert!(matches!(err(&w), GgufError::BadAlignment(_)));
}

#[test]
fn rejects_duplicate_keys() {
    let mut b = valid();
    let at = find(&b, b"a.i8");
    b[at..at + 4].copy_from_slice(b"a.u8");
    assert!(matches!(err(&b), GgufError::DuplicateKey(_)));
}

#[test]
fn rejects_deep_nesting() {
    let mut v = Value::Array(ValueType::U8, vec![]);
    for _ in 0..MAX_ARRAY_DEPTH + 1 {
        v = Value::Array(ValueType::Array, vec![v]);
    }
    let mut m = Metadata::default();
    m.set("deep", v);
    let h = GgufHeader { version: 3, metadata: m, tensors: vec![], alignment: 32, data_start: 0 };
    assert!(matches!(err(&encode_header(&h)), GgufError::TooLarge { .. }));
}

#[test]
fn writer_refuses_wrong_order_and_size_and_leaves_no_file() {
    let dir = std::env::temp_dir().join(format!("crunch-gguf-w-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.gguf");
    let mut w = GgufWriter::create(&path, Metadata::default(), &specs()).unwrap();
    assert!(w.write_tensor("b", &[0; 108]).is_err());
    assert!(w.write_tensor("a", &[0; 5]).is_err());
    w.write_tensor("a", &[0; 24]).unwrap();
    assert!(w.finish().is_err());
    assert!(!path.exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "temp file left behind");
    // AtomicFile dropped mid-write leaves nothing either
    let mut f = AtomicFile::create(&path).unwrap();
    f.write_all(b"x").unwrap();
    drop(f);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<u8>().prop_map(Value::U8),
            any::<i16>().prop_map(Value::I16),
            any::<u32>().prop_map(Value::U32),
            any::<i64>().prop_map(Value::I64),
            any::<bool>().prop_map(Value::Bool),
            any::<u32>().prop_map(|b| Value::F32(f32::from_bits(b & 0x7f7f_ffff))),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(Value::String),
        ];
        leaf.prop_recursive(2, 16, 4, |inner| {
            proptest::collection::vec(inner, 0..4).prop_map(|items| {
                // keep arrays homogeneous: use the first element's type, drop the others
                let t = items.first().map(|v| v.value_type()).unwrap_or(ValueType::U32);
                let items = items.into_iter().filter(|v| v.value_type() == t).collect();
                Value::Array(t, items)
            })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn header_round_trips(values in proptest::collection::vec(value(), 0..6)) {
            let mut m = Metadata::default();
            for (i, v) in values.into_iter().enumerate() {
                m.set(&format!("k{i}"), v);
            }
            let h = GgufHeader { version: 3, metadata: m, tensors: vec![], alignment: 32, data_start: 0 };
            let enc = encode_header(&h);
            let back = parse_header(&enc).unwrap();
            prop_assert_eq!(encode_header(&back), enc);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut b = b"GGUF\x03\0\0\0".to_vec();
            b.extend_from_slice(&bytes);
            let _ = parse_header(&b);
        }
    }
}
