//! Fuzz `crunch_core::gguf::parse_header`: it must never panic, hang or over-allocate, and whatever it
//! accepts must be self-consistent: every tensor inside the file, and the header re-encoding to
//! exactly the bytes it was parsed from.
#![no_main]

use crunch_core::gguf::{encode_header, parse_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = parse_header(data) else { return };
    let len = data.len() as u64;
    assert!(h.data_start <= len || h.tensors.is_empty());
    for t in &h.tensors {
        let end = h.data_start + t.offset + t.n_bytes();
        assert!(end <= len, "tensor {:?} ends at {end}, file has {len} bytes", t.name);
    }
    let encoded = encode_header(&h);
    assert!(data.starts_with(&encoded), "re-encoded header differs from the input");
});
