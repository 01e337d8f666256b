//! Checkpoints of a LoRA training run on a [`GgufModel`]: everything needed to resume it exactly —
//! the LoRA factors (with their rank and factor), AdamW's step count and moments, where the chunk
//! order stands, the loss curve so far — and a fingerprint of what was being trained (the caller's
//! hash of model, text and settings), so a checkpoint is never resumed on another run.
//!
//! File layout: magic `CRNCHCKP`, version (u32 LE), header length (u32 LE), a JSON header, then
//! for every trainable tensor (in [`GgufModel::lora_params_mut`] order: each pair's `A` then
//! `B`) its values, then its first moments, then its second moments, all f32 little-endian. The
//! moments are raw bytes, not JSON numbers, so a resumed run is bit-identical to a straight one.
//! Written atomically (temp file, fsync, rename): an interrupted save leaves the previous
//! checkpoint as it was.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crunch_model::{ModelError, Result};

use crate::block::Proj;
use crate::gguf_model::GgufModel;
use crate::init::SplitMix64;
use crate::ops::Lora;
use crate::optim::AdamWState;
use crate::train::{StepStats, TrainConfig, Trainer, TrainerState};

const MAGIC: &[u8; 8] = b"CRNCHCKP";
const VERSION: u32 = 1;

/// One LoRA pair of the checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairInfo {
    /// The adapted weight, `blk.N.attn_q.weight`.
    pub base: String,
    pub rank: usize,
    pub n_in: usize,
    pub n_out: usize,
    pub scale: f32,
}

/// The JSON header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointHeader {
    /// What the run trains (the caller's hash of model, text and settings).
    pub fingerprint: String,
    pub config: TrainConfig,
    /// Updates made.
    pub step: u64,
    pub rng: SplitMix64,
    pub order: Vec<usize>,
    pub next: usize,
    /// Every update's statistics so far.
    pub curve: Vec<StepStats>,
    /// `(updates made, held-out loss)` so far (the caller's scoring, kept for its curve).
    #[serde(default)]
    pub heldout: Vec<(u64, f64)>,
    pub pairs: Vec<PairInfo>,
}

/// A checkpoint read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub header: CheckpointHeader,
    /// Per trainable tensor: values, first moments, second moments.
    tensors: Vec<[Vec<f32>; 3]>,
}

fn bad(path: &Path, why: impl std::fmt::Display) -> ModelError {
    ModelError::Input(format!("{}: checkpoint: {why}", path.display()))
}

/// Save `model`'s LoRA pairs and `trainer`'s state (taken between steps) with the curve and the
/// held-out scores so far.
///
/// # Errors
/// The trainer's state does not fit the model's pairs, I/O errors (the previous file at `dest`,
/// if any, is then unchanged).
pub fn save(
    dest: &Path,
    fingerprint: &str,
    model: &GgufModel,
    trainer: &Trainer<f32>,
    curve: &[StepStats],
    heldout: &[(u64, f64)],
) -> Result<()> {
    let TrainerState { optim, rng, order, next } = trainer.state();
    let mut pairs = Vec::new();
    let mut values: Vec<&[f32]> = Vec::new();
    for (i, b) in model.blocks.iter().enumerate() {
        for (p, l) in Proj::ALL.iter().zip(&b.linears) {
            if let Some(lo) = &l.lora {
                pairs.push(PairInfo {
                    base: format!("blk.{i}.{}.weight", p.name()),
                    rank: lo.rank,
                    n_in: l.n_in(),
                    n_out: l.n_out(),
                    scale: lo.scale,
                });
                values.push(&lo.a);
                values.push(&lo.b);
            }
        }
    }
    if optim.m.len() != values.len()
        || optim.v.len() != values.len()
        || values.iter().zip(&optim.m).zip(&optim.v).any(|((p, m), v)| p.len() != m.len() || p.len() != v.len())
    {
        return Err(bad(dest, "the optimizer state does not fit the model's LoRA pairs"));
    }
    let header = CheckpointHeader {
        fingerprint: fingerprint.to_string(),
        config: trainer.config,
        step: optim.step,
        rng,
        order,
        next,
        curve: curve.to_vec(),
        heldout: heldout.to_vec(),
        pairs,
    };
    let h = serde_json::to_vec(&header).map_err(|e| bad(dest, e))?;
    let n_floats: usize = values.iter().map(|v| 3 * v.len()).sum();
    let mut bytes = Vec::with_capacity(16 + h.len() + 4 * n_floats);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&(h.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&h);
    for ((p, m), v) in values.iter().zip(&optim.m).zip(&optim.v) {
        for x in p.iter().chain(m).chain(v) {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
    }
    crunch_core::output::write_small_atomic(dest, &bytes).map_err(|e| bad(dest, e))
}

/// Read a checkpoint; every size in the header is checked against the bytes present.
///
/// # Errors
/// Not a crunch checkpoint, another version, a header that does not parse or does not add up,
/// I/O errors.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| bad(path, e))?;
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(bad(path, "not a crunch training checkpoint (bad magic)"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(bad(path, format!("version {version}, this crunch reads version {VERSION}")));
    }
    let hlen = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    let hend = 16usize.checked_add(hlen).filter(|&e| e <= bytes.len()).ok_or_else(|| bad(path, "truncated header"))?;
    let header: CheckpointHeader =
        serde_json::from_slice(&bytes[16..hend]).map_err(|e| bad(path, format!("header: {e}")))?;
    let mut lens = Vec::with_capacity(2 * header.pairs.len());
    for p in &header.pairs {
        let a = p.rank.checked_mul(p.n_in);
        let b = p.rank.checked_mul(p.n_out);
        match (a, b) {
            (Some(a), Some(b)) if p.rank > 0 && p.scale.is_finite() => lens.extend([a, b]),
            _ => return Err(bad(path, format!("pair {}: rank {} of [{}, {}]", p.base, p.rank, p.n_in, p.n_out))),
        }
    }
    let floats = lens.iter().try_fold(0usize, |s, &l| l.checked_mul(3).and_then(|x| s.checked_add(x)));
    let body = &bytes[hend..];
    if floats.and_then(|f| f.checked_mul(4)) != Some(body.len()) {
        return Err(bad(
            path,
            format!("{} bytes of data, the header announces {} values", body.len(), floats.unwrap_or(0)),
        ));
    }
    if header.next > header.order.len() || header.step as usize != header.curve.len() {
        return Err(bad(
            path,
            format!(
                "position {} in an order of {}, step {} with {} curve points",
                header.next,
                header.order.len(),
                header.step,
                header.curve.len()
            ),
        ));
    }
    let mut words = body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    let tensors = lens
        .iter()
        .map(|&l| {
            let mut take = || (&mut words).take(l).collect::<Vec<f32>>();
            [take(), take(), take()]
        })
        .collect();
    Ok(Checkpoint { header, tensors })
}

impl Checkpoint {
    /// Put the checkpoint's LoRA pairs into `model` (replacing every pair it had) and make the
    /// trainer that continues the run with `config` (its `steps` may differ from the saved run's:
    /// a longer run continues; the schedule is `config`'s). Returns the trainer and the curve so far.
    ///
    /// # Errors
    /// A pair the model has no linear for or of another shape (nothing is changed then).
    pub fn restore(self, model: &mut GgufModel, config: TrainConfig) -> Result<(Trainer<f32>, Vec<StepStats>)> {
        let shapes = crate::adapter::linear_shapes(model);
        for p in &self.header.pairs {
            match shapes.get(&p.base) {
                Some(&s) if s == (p.n_in, p.n_out) => {}
                _ => {
                    return Err(ModelError::Input(format!(
                        "checkpoint pair {} [{}, {}] does not fit the model",
                        p.base, p.n_in, p.n_out
                    )));
                }
            }
        }
        for b in &mut model.blocks {
            for l in b.linears.iter_mut() {
                l.lora = None;
            }
        }
        let mut m = Vec::with_capacity(self.tensors.len());
        let mut v = Vec::with_capacity(self.tensors.len());
        let mut it = self.tensors.into_iter();
        for p in &self.header.pairs {
            let (Some([a, ma, va]), Some([b, mb, vb])) = (it.next(), it.next()) else {
                unreachable!("two tensors per pair, checked on load")
            };
            let (layer, name) = p.base.strip_prefix("blk.").and_then(|r| r.split_once('.')).expect("checked above");
            let layer: usize = layer.parse().expect("checked above");
            let pi = Proj::ALL.iter().position(|q| name == format!("{}.weight", q.name())).expect("checked above");
            model.blocks[layer].linears[pi].lora = Some(Lora { rank: p.rank, a, b, scale: p.scale });
            m.extend([ma, mb]);
            v.extend([va, vb]);
        }
        let state = TrainerState {
            optim: AdamWState { step: self.header.step, m, v },
            rng: self.header.rng,
            order: self.header.order,
            next: self.header.next,
        };
        let trainer = Trainer::resume(config, state, model).map_err(|e| ModelError::Input(e.to_string()))?;
        Ok((trainer, self.header.curve))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::Chunk;
    use crunch_model::matmul::MatmulMode;
    use crunch_model::tokenizer::Tokenizer;

    const TEXT: &str = "Checkpoints keep a run: the factors, the optimizer's moments and the order of the chunks, so that a run stopped and resumed ends where a straight run ends.";

    /// Stopped, saved, loaded and resumed, a run ends bit-identical to a straight run; a stop in
    /// the middle of a step leaves the last checkpoint's state; damaged files are refused.
    #[test]
    fn resume_from_a_checkpoint_is_exact() {
        let path = crunch_testkit::smollm2_gguf();
        let file = std::sync::Arc::new(crunch_core::gguf::GgufFile::open(&path).unwrap());
        let text = Tokenizer::from_gguf(&file).unwrap().encode(TEXT, false).unwrap();
        let chunks: Vec<Chunk<f32>> = text.chunks_exact(12).take(3).map(|c| Chunk::next_token(c.to_vec())).collect();
        let select = |n: &str| n.starts_with("blk.1.") || n.starts_with("blk.2.ffn");
        let cfg = TrainConfig { steps: 4, batch_size: 2, ..TrainConfig::default() };
        let fresh = || {
            let mut m = GgufModel::from_gguf(file.clone(), MatmulMode::Exact).unwrap();
            m.init_lora_where(2, 1.0, 7, &select);
            m
        };
        let mut m = fresh();
        let straight = Trainer::new(cfg, &mut m).run(&mut m, &chunks).unwrap();
        let want: Vec<u32> = m.lora_params_mut().into_iter().flatten().map(|v| v.to_bits()).collect();

        let scratch = crunch_testkit::Scratch::new("train-checkpoint");
        let ck = scratch.join("run.ckpt");
        let mut m2 = fresh();
        let mut t = Trainer::new(cfg, &mut m2);
        let mut curve = vec![t.next_step(&mut m2, &chunks, &|| false).unwrap()];
        curve.push(t.next_step(&mut m2, &chunks, &|| false).unwrap());
        save(&ck, "fp", &m2, &t, &curve, &[(0, 1.5)]).unwrap();
        let saved_state = t.state();
        let saved_params: Vec<u32> = m2.lora_params_mut().into_iter().flatten().map(|v| v.to_bits()).collect();
        // A stop inside the third step changes nothing.
        let calls = std::cell::Cell::new(0);
        let stop = || {
            calls.set(calls.get() + 1);
            calls.get() > 1
        };
        let before = t.state();
        assert!(matches!(t.next_step(&mut m2, &chunks, &stop), Err(crate::TrainError::Stopped)));
        assert_eq!(t.state(), before);

        let loaded = load(&ck).unwrap();
        assert_eq!(loaded.header.fingerprint, "fp");
        assert_eq!(loaded.header.heldout, [(0, 1.5)]);
        let mut m3 = GgufModel::from_gguf(file.clone(), MatmulMode::Exact).unwrap();
        m3.init_lora(3, 0.5, 1); // other pairs: replaced by the checkpoint's
        let (mut t3, mut curve3) = loaded.restore(&mut m3, cfg).unwrap();
        // The file gives back exactly what was saved.
        assert_eq!(t3.state(), saved_state);
        assert_eq!(curve3, curve);
        let got: Vec<u32> = m3.lora_params_mut().into_iter().flatten().map(|v| v.to_bits()).collect();
        assert_eq!(got, saved_params);
        // And the run continues to where the straight run ends (the same samples in the same
        // order; the GGUF model's parallel products round alike up to the last bits).
        curve3.extend(t3.run(&mut m3, &chunks).unwrap());
        assert_eq!(curve3.len(), straight.len());
        for (a, b) in curve3.iter().zip(&straight) {
            assert!(
                (a.loss - b.loss).abs() < 1e-5 * b.loss && (a.grad_norm - b.grad_norm).abs() < 1e-4 * b.grad_norm,
                "{a:?} vs {b:?}"
            );
        }
        let got: Vec<f32> = m3.lora_params_mut().into_iter().flatten().map(|v| *v).collect();
        let diff = got.iter().zip(&want).map(|(a, b)| (a - f32::from_bits(*b)).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-5, "parameters differ by {diff}");

        // Damaged files.
        let bytes = std::fs::read(&ck).unwrap();
        let cut = scratch.join("cut.ckpt");
        std::fs::write(&cut, &bytes[..bytes.len() - 4]).unwrap();
        let e = load(&cut).unwrap_err().to_string();
        assert!(e.contains("cut.ckpt") && e.contains("bytes of data"), "{e}");
        std::fs::write(&cut, b"GGUF and more bytes").unwrap();
        assert!(load(&cut).unwrap_err().to_string().contains("bad magic"));
    }
}
