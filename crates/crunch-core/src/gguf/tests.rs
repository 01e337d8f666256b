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
    m.set("a.strs", Value::strings(["x", ""]));
    m.set("a.nested", Value::from(vec![Array::from(vec![1i32, 2]), Array::empty(ValueType::F32)]));
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
    let mut a = Array::empty(ValueType::U8);
    for _ in 0..MAX_ARRAY_DEPTH {
        a = Array::Array(vec![a]);
    }
    let mut m = Metadata::default();
    m.set("deep", Value::Array(a));
    let h = GgufHeader { version: 3, metadata: m, tensors: vec![], alignment: 32, data_start: 0 };
    assert!(matches!(err(&encode_header(&h)), GgufError::TooLarge { .. }));
}

#[test]
fn accepts_the_deepest_nesting_allowed() {
    let mut a = Array::from(vec![7u8]);
    for _ in 1..MAX_ARRAY_DEPTH {
        a = Array::Array(vec![a]);
    }
    let mut m = Metadata::default();
    m.set("deep", Value::Array(a));
    let h = GgufHeader { version: 3, metadata: m.clone(), tensors: vec![], alignment: 32, data_start: 0 };
    assert_eq!(parse_header(&encode_header(&h)).unwrap().metadata, m);
}

fn header_of(m: Metadata) -> Vec<u8> {
    encode_header(&GgufHeader { version: 3, metadata: m, tensors: vec![], alignment: 32, data_start: 0 })
}

#[test]
fn string_and_nested_arrays_round_trip() {
    let strings = Array::from_strings([&b"hello"[..], b"", b"\xff\xfe not UTF-8", "\u{2581}tok".as_bytes(), b""]);
    let nested = Array::Array(vec![
        strings.clone(),
        Array::Array(vec![Array::from(vec![-1i8, 2]), Array::empty(ValueType::String), Array::Array(vec![])]),
        Array::from(vec![true, false]),
        Array::from(vec![u64::MAX]),
        Array::from(vec![f64::NAN, -0.0]),
    ]);
    let mut m = Metadata::default();
    m.set("strings", Value::Array(strings.clone()));
    m.set("nested", Value::Array(nested.clone()));
    m.set("empty.strings", Value::Array(Array::empty(ValueType::String)));
    let bytes = header_of(m);
    let back = parse_header(&bytes).unwrap();
    // byte for byte, NaN included
    assert_eq!(encode_header(&back), bytes);
    assert_eq!(back.metadata.get("strings"), Some(&Value::Array(strings)));
    let a = back.metadata.get("nested").and_then(Value::as_array).unwrap();
    assert_eq!((a.elem_type(), a.len()), (ValueType::Array, 5));
    let inner = a.as_arrays().unwrap();
    let s = inner[0].as_strings().unwrap();
    assert_eq!(s.len(), 5);
    assert_eq!(s.get(2), Some(&b"\xff\xfe not UTF-8"[..]));
    assert_eq!(s.iter_str().map(|x| x.is_some()).collect::<Vec<_>>(), [true, true, false, true, true]);
    assert_eq!(inner[1].as_arrays().unwrap()[0].as_i8s(), Some(&[-1i8, 2][..]));
    assert_eq!(inner[1].as_arrays().unwrap()[1].elem_type(), ValueType::String);
    assert!(inner[4].as_f64s().unwrap()[0].is_nan());
    assert_eq!(back.metadata.get("empty.strings").and_then(Value::as_array).map(Array::len), Some(0));
}

#[test]
fn rejects_bool_arrays_with_other_bytes() {
    let mut m = Metadata::default();
    m.set("flags", Value::from(vec![true, false, true]));
    let mut b = header_of(m);
    let at = find(&b, b"flags") + 5 + 4 + 4 + 8 + 1;
    assert_eq!(b[at], 0);
    b[at] = 2;
    assert!(matches!(err(&b), GgufError::BadMetadata { .. }));
}

#[test]
fn rejects_array_counts_past_the_end() {
    for (key, v) in [("a", Value::from(vec![1u32, 2, 3])), ("s", Value::strings(["x", "y"]))] {
        let len = v.as_array().unwrap().len() as u64;
        let mut m = Metadata::default();
        m.set(key, v);
        let mut b = header_of(m);
        let at = find(&b, key.as_bytes()) + 1 + 4 + 4;
        assert_eq!(b[at..at + 8], len.to_le_bytes());
        b[at..at + 8].copy_from_slice(&(len + 1).to_le_bytes());
        assert!(matches!(err(&b), GgufError::Truncated { .. }), "{}", err(&b));
        b[at..at + 8].copy_from_slice(&(MAX_ARRAY_LEN + 1).to_le_bytes());
        assert!(matches!(err(&b), GgufError::TooLarge { .. }));
    }
}

/// Hundreds of thousands of one-element nested arrays cost 64 bytes of memory each (an `Array` and
/// the smallest heap block) for 13 bytes of file: past the budget, refused before the allocation.
#[test]
fn refuses_headers_that_would_pass_the_memory_budget() {
    let n = 300_000;
    let many = |n: usize| {
        let mut m = Metadata::default();
        m.set("tiny", Value::Array(Array::Array((0..n).map(|i| Array::from(vec![i as u8])).collect())));
        header_of(m)
    };
    let b = many(n);
    match err(&b) {
        GgufError::MemoryLimit { need, limit, .. } => {
            assert!(need > limit && limit <= HEADER_MEMORY_FACTOR * b.len() as u64 + HEADER_MEMORY_SLACK)
        }
        e => panic!("{e}"),
    }
    // A few thousand fit in the slack.
    assert!(parse_header(&many(5_000)).is_ok());
    // Big arrays of the real kinds cost about their bytes and are read whatever their size.
    let mut m = Metadata::default();
    m.set("tokens", Value::strings((0..200_000).map(|i| format!("t{i}"))));
    m.set("scores", Value::from(vec![0.5f32; 200_000]));
    m.set("types", Value::from(vec![1i32; 200_000]));
    m.set("bytes", Value::from(vec![0u8; 3 << 20]));
    assert!(parse_header(&header_of(m)).is_ok());
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

    fn array() -> impl Strategy<Value = Array> {
        use proptest::collection::vec;
        let leaf = prop_oneof![
            vec(any::<u8>(), 0..8).prop_map(Array::U8),
            vec(any::<i8>(), 0..8).prop_map(Array::I8),
            vec(any::<i16>(), 0..8).prop_map(Array::I16),
            vec(any::<u32>(), 0..8).prop_map(Array::U32),
            vec(any::<i64>(), 0..8).prop_map(Array::I64),
            vec(any::<bool>(), 0..8).prop_map(Array::Bool),
            // any bits, NaNs included: the bytes must come back the same
            vec(any::<u32>(), 0..8).prop_map(|v| Array::F32(v.into_iter().map(f32::from_bits).collect())),
            vec(any::<u64>(), 0..8).prop_map(|v| Array::F64(v.into_iter().map(f64::from_bits).collect())),
            vec(vec(any::<u8>(), 0..20), 0..5).prop_map(Array::from_strings),
        ];
        leaf.prop_recursive(2, 16, 4, |inner| vec(inner, 0..4).prop_map(Array::Array))
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<u8>().prop_map(Value::U8),
            any::<i16>().prop_map(Value::I16),
            any::<u32>().prop_map(Value::U32),
            any::<i64>().prop_map(Value::I64),
            any::<bool>().prop_map(Value::Bool),
            any::<u32>().prop_map(|b| Value::F32(f32::from_bits(b))),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(Value::String),
            array().prop_map(Value::Array),
        ]
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
