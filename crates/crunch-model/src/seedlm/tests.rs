use super::*;
use crunch_core::gguf::{GgufWriter, TensorSpec};

/// A tiny "model": one encoded weight, one plain tensor.
fn write_container(path: &Path, corrupt: impl Fn(&mut Metadata, &mut Vec<u8>)) -> Vec<f32> {
    let cfg = seedlm::CONFIG_4BIT;
    let (rows, row_len) = (3usize, 16usize);
    let w: Vec<f32> = (0..rows * row_len).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.01).collect();
    let (mut bytes, e_min, _) = seedlm::encode_tensor(&w, row_len, None, cfg, &|_| true).unwrap();
    let mut decoded = vec![0f32; w.len()];
    assert!(seedlm::decode_tensor(&bytes, cfg, e_min, &mut decoded));
    let info = SeedlmInfo {
        config: cfg,
        tensors: vec![SeedTensor {
            name: "blk.0.ffn_up.weight".into(),
            row_len: row_len as u64,
            rows: rows as u64,
            exponent_base: e_min,
        }],
        imatrix: None,
    };
    let mut meta = Metadata::default();
    meta.set("general.architecture", Value::string("llama"));
    info.write_keys(&mut meta);
    corrupt(&mut meta, &mut bytes);
    let norm = [1.0f32, 2.0, 3.0, 4.0];
    let specs = [
        TensorSpec { name: "blk.0.ffn_norm.weight".into(), ty: GgmlType::F32, dims: vec![4] },
        TensorSpec { name: "blk.0.ffn_up.weight.seedlm".into(), ty: GgmlType::I8, dims: vec![bytes.len() as u64] },
    ];
    let mut wr = GgufWriter::create(path, meta, &specs).unwrap();
    wr.write_tensor("blk.0.ffn_norm.weight", &norm.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    wr.write_tensor("blk.0.ffn_up.weight.seedlm", &bytes).unwrap();
    wr.finish().unwrap();
    decoded
}

#[test]
fn a_container_is_read_back_and_decoded_to_f32_under_the_weights_own_names() {
    let dir = crunch_testkit::Scratch::new("seedlm-container");
    let path = dir.join("m.seedlm");
    let want = write_container(&path, |_, _| {});
    let file = GgufFile::open(&path).unwrap();
    let i = info(&file).unwrap().expect("a container");
    assert_eq!(i.config, seedlm::CONFIG_4BIT);
    assert_eq!(i.tensors[0].name, "blk.0.ffn_up.weight");
    let dec = decode(file).unwrap();
    assert!(!is_seedlm(&dec));
    let names: Vec<&str> = dec.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["blk.0.ffn_norm.weight", "blk.0.ffn_up.weight"]);
    let t = dec.tensor("blk.0.ffn_up.weight").unwrap();
    assert_eq!((t.ty, t.dims.clone()), (GgmlType::F32, vec![16, 3]));
    let got: Vec<f32> = dec.tensor_data(t).chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(got, want);
    let norm = dec.tensor("blk.0.ffn_norm.weight").unwrap();
    assert_eq!(&dec.tensor_data(norm)[..4], &1.0f32.to_le_bytes());
    // Decoding what is already decoded changes nothing.
    assert!(decode(dec).unwrap().tensor("blk.0.ffn_up.weight").is_some());
}

#[test]
fn damaged_containers_are_refused_naming_what_is_wrong() {
    let dir = crunch_testkit::Scratch::new("seedlm-bad");
    type Corrupt = Box<dyn Fn(&mut Metadata, &mut Vec<u8>)>;
    let cases: Vec<(&str, Corrupt, &str)> = vec![
        ("taps", Box::new(|m, _| m.set(KEY_LFSR_TAPS, vec![0u32, 2, 3, 5].into())), KEY_LFSR_TAPS),
        ("version", Box::new(|m, _| m.set(KEY_VERSION, Value::U32(9))), KEY_VERSION),
        ("config", Box::new(|m, _| m.set(KEY_COEFFS, Value::U32(5))), KEY_BLOCK),
        ("shapes", Box::new(|m, _| m.set(KEY_SHAPES, vec![16u64].into())), KEY_SHAPES),
        ("size", Box::new(|_, b| b.truncate(b.len() - 1)), "blk.0.ffn_up.weight.seedlm"),
        ("rows", Box::new(|m, _| m.set(KEY_SHAPES, vec![12u64, 4].into())), "whole blocks"),
    ];
    for (tag, corrupt, needle) in cases {
        let path = dir.join(&format!("{tag}.seedlm"));
        write_container(&path, corrupt);
        let Err(err) = decode(GgufFile::open(&path).unwrap()) else { panic!("{tag}: accepted") };
        let err = err.to_string();
        assert!(err.contains(needle), "{tag}: {err}");
    }
}
