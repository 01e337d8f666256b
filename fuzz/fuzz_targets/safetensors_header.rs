//! Fuzz `crunch_core::safetensors::parse_header` and `parse_index`: never panic, and whatever crunch
//! accepts must (a) lie inside the file, (b) be accepted identically by the reference `safetensors`
//! crate (crunch is stricter, never looser), and (c) survive a re-encode by crunch's writer.
#![no_main]

use crunch_core::safetensors::{encode_header, parse_header, parse_index, TensorSpec};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = parse_index(data, Path::new("fuzz.index.json"));
    let Ok(h) = parse_header(data, Path::new("fuzz.safetensors")) else { return };
    let data_len = data.len() as u64 - h.data_start();
    for t in &h.tensors {
        assert!(t.data_offsets.0 <= t.data_offsets.1 && t.data_offsets.1 <= data_len);
    }

    let reference = safetensors::SafeTensors::deserialize(data)
        .unwrap_or_else(|e| panic!("crunch accepted a header the safetensors crate rejects: {e}"));
    assert_eq!(reference.len(), h.tensors.len());
    for t in &h.tensors {
        let r = reference.tensor(&t.name).expect("same tensor names");
        assert_eq!(r.dtype().to_string(), t.dtype.name());
        assert_eq!(r.shape().iter().map(|&d| d as u64).collect::<Vec<_>>(), t.shape);
        let start = (h.data_start() + t.data_offsets.0) as usize;
        assert_eq!(r.data(), &data[start..start + t.n_bytes() as usize]);
    }

    // Tensors come back in data order, so re-encoding reproduces the same offsets. (The writer
    // refuses empty names, which a reader must still accept.)
    if h.tensors.iter().any(|t| t.name.is_empty()) {
        return;
    }
    let specs: Vec<TensorSpec> =
        h.tensors.iter().map(|t| TensorSpec::new(t.name.clone(), t.dtype, t.shape.clone())).collect();
    let (bytes, infos) = encode_header(&h.metadata, &specs, Path::new("re-encoded")).expect("re-encode");
    let offsets: Vec<_> = infos.iter().map(|t| t.data_offsets).collect();
    assert_eq!(offsets, h.tensors.iter().map(|t| t.data_offsets).collect::<Vec<_>>());
    let mut file = bytes;
    file.extend_from_slice(&data[h.data_start() as usize..]);
    let h2 = parse_header(&file, Path::new("re-encoded")).expect("re-encoded header parses");
    assert_eq!((h2.metadata, h2.tensors), (h.metadata, h.tensors));
});
