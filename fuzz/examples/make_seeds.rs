//! Write the seed corpora for the fuzz targets with crunch's own writers:
//! `make_seeds GGUF_DIR SAFETENSORS_DIR`. Small files covering every GGUF value type, nested arrays,
//! custom alignment and a few tensor types; safetensors files with every convertible dtype, scalars,
//! empty tensors, metadata, and a sharded checkpoint's index.

use crunch_core::gguf::{Array, GgufWriter, Metadata, TensorSpec as GgufSpec, Value, ValueType};
use crunch_core::safetensors::{Dtype, SafetensorsWriter, ShardedWriter, TensorSpec};
use crunch_core::GgmlType;
use std::collections::BTreeMap;
use std::path::Path;

type Res = Result<(), Box<dyn std::error::Error>>;

fn gguf(dir: &Path, name: &str, meta: Metadata, tensors: &[(&str, GgmlType, Vec<u64>)]) -> Res {
    let specs: Vec<GgufSpec> =
        tensors.iter().map(|(n, ty, dims)| GgufSpec { name: n.to_string(), ty: *ty, dims: dims.clone() }).collect();
    let mut w = GgufWriter::create(dir.join(name), meta, &specs)?;
    for info in w.tensors().to_vec() {
        let n = info.n_bytes() as usize;
        let data: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
        w.write_tensor(&info.name, &data)?;
    }
    w.finish()?;
    Ok(())
}

fn main() -> Res {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [gguf_dir, st_dir] = args.as_slice() else {
        return Err("usage: make_seeds GGUF_DIR SAFETENSORS_DIR".into());
    };
    let (gguf_dir, st_dir) = (Path::new(gguf_dir), Path::new(st_dir));
    std::fs::create_dir_all(gguf_dir)?;
    std::fs::create_dir_all(st_dir)?;

    // GGUF: metadata only, with every value type.
    let mut all = Metadata::default();
    all.set("general.architecture", Value::String(b"llama".to_vec()));
    all.set("u8", Value::U8(7));
    all.set("i8", Value::I8(-7));
    all.set("u16", Value::U16(700));
    all.set("i16", Value::I16(-700));
    all.set("u32", Value::U32(70_000));
    all.set("i32", Value::I32(-70_000));
    all.set("f32", Value::F32(0.5));
    all.set("bool", Value::Bool(true));
    all.set("u64", Value::U64(1 << 40));
    all.set("i64", Value::I64(-(1 << 40)));
    all.set("f64", Value::F64(-0.25));
    all.set("tokenizer.ggml.tokens", Value::strings([&b"<s>"[..], b"a"]));
    all.set("nested", Value::from(vec![Array::from(vec![1i32, 2]), Array::empty(ValueType::U8)]));
    gguf(gguf_dir, "meta_only.gguf", all.clone(), &[])?;
    gguf(gguf_dir, "empty.gguf", Metadata::default(), &[])?;
    // GGUF: tensors of several types, default and custom alignment.
    let tensors = vec![
        ("token_embd.weight", GgmlType::F32, vec![8, 2]),
        ("blk.0.attn_q.weight", GgmlType::Q4_0, vec![32, 2]),
        ("blk.0.ffn_down.weight", GgmlType::Q4_K, vec![256, 1]),
        ("output_norm.weight", GgmlType::F16, vec![8]),
        ("blk.0.attn_k.weight", GgmlType::BF16, vec![4, 1, 1, 2]),
    ];
    gguf(gguf_dir, "tensors.gguf", all.clone(), &tensors)?;
    let mut aligned = Metadata::default();
    aligned.set("general.alignment", Value::U32(64));
    gguf(gguf_dir, "aligned64.gguf", aligned, &tensors[..2])?;

    // safetensors: every convertible dtype, other dtypes, scalar, empty, metadata.
    let st_tensors: Vec<(TensorSpec, Vec<u8>)> = vec![
        (TensorSpec::new("model.embed_tokens.weight", Dtype::F32, [2, 3]), vec![1; 24]),
        (TensorSpec::new("model.layers.0.self_attn.q_proj.weight", Dtype::F16, [2, 2]), vec![2; 8]),
        (TensorSpec::new("model.norm.weight", Dtype::BF16, [3]), vec![3; 6]),
        (TensorSpec::new("position_ids", Dtype::I64, [1, 2]), vec![4; 16]),
        (TensorSpec::new("mask", Dtype::BOOL, [2]), vec![1, 0]),
        (TensorSpec::new("packed", Dtype::F4, [2]), vec![0x21]),
        (TensorSpec::new("scale", Dtype::F32, Vec::<u64>::new()), vec![0, 0, 128, 63]),
        (TensorSpec::new("empty", Dtype::F32, [0, 4]), vec![]),
    ];
    let pairs: Vec<(TensorSpec, &[u8])> = st_tensors.iter().map(|(s, d)| (s.clone(), d.as_slice())).collect();
    let meta: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    SafetensorsWriter::write_file(st_dir.join("mixed.safetensors"), meta.clone(), &pairs)?;
    SafetensorsWriter::write_file(st_dir.join("one.safetensors"), BTreeMap::new(), &pairs[..1])?;
    SafetensorsWriter::write_file(st_dir.join("empty.safetensors"), BTreeMap::new(), &[])?;
    let shard_dir = st_dir.join("sharded");
    std::fs::create_dir_all(&shard_dir)?;
    let specs: Vec<TensorSpec> = st_tensors.iter().map(|(s, _)| s.clone()).collect();
    let mut w = ShardedWriter::create(&shard_dir, meta, &specs, 16)?;
    for (s, d) in &st_tensors {
        w.write_tensor(&s.name, d)?;
    }
    let out = w.finish()?;
    for (p, _) in out.shards.iter().take(2) {
        std::fs::copy(p, st_dir.join(p.file_name().ok_or("shard name")?))?;
    }
    if let Some((index, _)) = out.index {
        std::fs::copy(index, st_dir.join("model.safetensors.index.json"))?;
    }
    std::fs::remove_dir_all(&shard_dir)?;
    // The writers leave `.sha256` sidecars; they are not seeds.
    for dir in [gguf_dir, st_dir] {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "sha256") {
                std::fs::remove_file(p)?;
            }
        }
    }
    Ok(())
}
