//! `seedlm encode`: a model's weights as SeedLM seeds (`crunch_quant::seedlm`), in the container
//! `crunch_model::seedlm` documents. Decoding back to a GGUF llama.cpp runs is the `quantize` job
//! on the container (crunch opens a container by decoding it), so `seedlm decode IN OUT --type T`
//! reaches every GGUF type.
//!
//! Every 2-D `*.weight` tensor whose row length is a whole number of blocks is encoded (the
//! embedding and output projection included: they are a fifth of a small model), one tensor at a
//! time: dequantized to f32, searched on all cores, written; norms and other tensors are copied.
//! `tensors` (a regular expression) narrows the encoded weights; the others are copied as they are.
//! With an importance matrix, each tensor that has an entry is fitted by it (weighted least
//! squares and weighted error, see `crunch_quant::seedlm`).

use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};
use crunch_core::gguf::{GgufFile, GgufWriter, TensorInfo, TensorSpec};
use crunch_core::GgmlType;
use crunch_model::seedlm::{self as container, SeedTensor, SeedlmInfo};
use crunch_quant::seedlm::{self, Config, SearchStats};
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// What `seedlm encode` did.
#[derive(Clone, Debug, Serialize)]
pub struct EncodeReport {
    pub output: String,
    pub config: String,
    pub bits_per_weight: f64,
    pub tensors_encoded: usize,
    pub tensors_copied: usize,
    pub weights_encoded: u64,
    pub input_bytes: u64,
    pub file_bytes: u64,
    /// Bits per weight of the whole file (every tensor's elements).
    pub file_bpw: f64,
    pub imatrix: Option<String>,
    pub blocks: u64,
    /// Share of (block, seed) pairs whose fit the lower bound made unnecessary.
    pub skipped_share: f64,
    pub seconds: f64,
}

/// Is this tensor encoded?
pub fn encodes(t: &TensorInfo, cfg: Config) -> bool {
    let matrix = t.dims.len() >= 2 && t.dims[1] > 1 && t.dims[2..].iter().all(|&d| d == 1);
    matrix
        && t.name.ends_with(".weight")
        && t.dims[0].is_multiple_of(cfg.c as u64)
        && crunch_quant::kernels(t.ty).is_some()
        && t.ty != GgmlType::I8
}

/// Refuse a container name that suggests llama.cpp can run it.
///
/// # Errors
/// An output ending in `.gguf`.
pub fn check_output_name(output: &Path, field: &str) -> Result<()> {
    let ext = output.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext == "gguf" {
        return Err(Error::field(
            field,
            format!(
                "{}: a SeedLM container is not a model llama.cpp can load; name it *.{} \
                 (`crunch seedlm decode` writes a GGUF llama.cpp runs)",
                output.display(),
                container::EXTENSION
            ),
        ));
    }
    Ok(())
}

/// Encode `model` (a GGUF) into the container `output`.
///
/// # Errors
/// Unreadable inputs, an imatrix made for another model, an output named `*.gguf`, I/O;
/// [`Error::Cancelled`] (nothing written).
pub fn encode(
    model: &Path,
    output: &Path,
    cfg: Config,
    imatrix: Option<&Path>,
    tensors: Option<&regex::Regex>,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<EncodeReport> {
    let start = Instant::now();
    check_output_name(output, "seedlm.output")?;
    let file = GgufFile::open(model)?;
    if container::is_seedlm(&file) {
        return Err(Error::Invalid(format!("{}: already a SeedLM container", model.display())));
    }
    let im = match imatrix {
        Some(p) => {
            let m = crunch_calib::Imatrix::load(p, 512).map_err(|e| Error::field("seedlm.imatrix", e.to_string()))?;
            let shapes: Vec<(String, usize)> = file
                .tensors()
                .iter()
                .filter(|t| t.dims.len() >= 2)
                .map(|t| (t.name.clone(), t.dims[0] as usize))
                .collect();
            m.check_against(&shapes).map_err(|e| Error::field("seedlm.imatrix", e.to_string()))?;
            Some(m)
        }
        None => None,
    };
    let encoded: Vec<&TensorInfo> =
        file.tensors().iter().filter(|t| encodes(t, cfg) && tensors.is_none_or(|re| re.is_match(&t.name))).collect();
    if encoded.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no 2-D weight{} has a row length that is a multiple of {}",
            model.display(),
            tensors.map(|re| format!(" matching {:?}", re.as_str())).unwrap_or_default(),
            cfg.c
        )));
    }
    let info = SeedlmInfo {
        config: cfg,
        tensors: encoded
            .iter()
            .map(|t| SeedTensor { name: t.name.clone(), row_len: t.dims[0], rows: t.dims[1], exponent_base: 0 })
            .collect(),
        imatrix: imatrix.map(|p| p.file_name().unwrap_or(p.as_os_str()).to_string_lossy().into_owned()),
    };
    // The exponent bases are only known once each tensor is read; the header is written after
    // every tensor is encoded (the codes are held until then: a quarter to an eighth of the f32).
    let total: u64 = encoded.iter().map(|t| t.n_elements() / cfg.c as u64).sum();
    progress.start("seedlm encode", total);
    let done = AtomicU64::new(0);
    let mut stats = SearchStats::default();
    let mut codes: Vec<(Vec<u8>, i32)> = Vec::with_capacity(encoded.len());
    for t in &encoded {
        let k = crunch_quant::kernels(t.ty).expect("checked by encodes");
        let mut w = vec![0f32; t.n_elements() as usize];
        (k.dequantize)(file.tensor_data(t), &mut w);
        file.release_tensor(t);
        let importance = im.as_ref().and_then(|m| m.importance(&t.name));
        let step = (t.n_elements() / cfg.c as u64 / 100).max(1024);
        let last = AtomicU64::new(done.load(Ordering::Relaxed));
        let on_blocks = |n: usize| {
            if cancel.is_cancelled() {
                return false;
            }
            let now = done.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
            let prev = last.load(Ordering::Relaxed);
            if now >= prev + step && last.compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                progress.advance(now, &t.name);
            }
            true
        };
        let (bytes, e_min, s) = seedlm::encode_tensor(&w, t.dims[0] as usize, importance.as_deref(), cfg, &on_blocks)
            .ok_or(Error::Cancelled)?;
        stats.add(s);
        codes.push((bytes, e_min));
        progress.advance(done.load(Ordering::Relaxed), &t.name);
    }
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    let mut info = info;
    for (t, (_, e_min)) in info.tensors.iter_mut().zip(&codes) {
        t.exponent_base = *e_min;
    }
    let mut meta = file.metadata().clone();
    meta.remove("general.file_type");
    info.write_keys(&mut meta);
    let mut by_name: std::collections::HashMap<String, Vec<u8>> =
        encoded.iter().zip(codes).map(|(t, (bytes, _))| (t.name.clone(), bytes)).collect();
    let specs: Vec<TensorSpec> = file
        .tensors()
        .iter()
        .map(|t| match by_name.get(&t.name) {
            Some(b) => TensorSpec {
                name: format!("{}{}", t.name, container::SUFFIX),
                ty: GgmlType::I8,
                dims: vec![b.len() as u64],
            },
            None => TensorSpec { name: t.name.clone(), ty: t.ty, dims: t.dims.clone() },
        })
        .collect();
    let mut w = GgufWriter::create(output, meta, &specs)?;
    for t in file.tensors() {
        match by_name.remove(&t.name) {
            Some(b) => w.write_tensor(&format!("{}{}", t.name, container::SUFFIX), &b)?,
            None => w.write_tensor(&t.name, file.tensor_data(t))?,
        }
    }
    w.finish()?;
    let file_bytes = std::fs::metadata(output).map_err(|e| Error::io(output, e))?.len();
    let elements: u64 = file.tensors().iter().map(|t| t.n_elements()).sum();
    let report = EncodeReport {
        output: output.display().to_string(),
        config: cfg.name().into(),
        bits_per_weight: cfg.bits_per_weight(),
        tensors_encoded: encoded.len(),
        tensors_copied: file.tensors().len() - encoded.len(),
        weights_encoded: encoded.iter().map(|t| t.n_elements()).sum(),
        input_bytes: file.file_size(),
        file_bytes,
        file_bpw: file_bytes as f64 * 8.0 / elements.max(1) as f64,
        imatrix: info.imatrix.clone(),
        blocks: stats.blocks,
        skipped_share: stats.skipped_share(),
        seconds: start.elapsed().as_secs_f64(),
    };
    progress.finish(&format!(
        "{} tensors encoded ({}), {:.2} bpw file, bound skipped {:.3}% of seeds",
        report.tensors_encoded,
        report.config,
        report.file_bpw,
        100.0 * report.skipped_share
    ));
    Ok(report)
}
