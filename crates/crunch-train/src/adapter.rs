//! LoRA adapters into and out of a [`GgufModel`]: which linears get a trainable pair, starting
//! from an adapter file (a `crunch lowrank` correction, say), and the adapter llama.cpp loads at
//! the end.
//!
//! An adapter's pairs are applied with `scale · alpha / rank` (llama.cpp's rule), so a file whose
//! tensors have different ranks gives them different factors; training keeps each pair's factor,
//! and writing picks one `alpha` (the most common `factor · rank`) and folds any other factor into
//! that pair's `B`, so llama.cpp applies exactly the trained product.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crunch_core::GgmlType;
use crunch_model::lora::{self, LoraAdapter, LoraTensor};
use crunch_model::{LoraSpec, ModelError, Result};

use crate::block::Proj;
use crate::gguf_model::GgufModel;
use crate::init::{init_blocks_from_factors, kaiming_uniform, SplitMix64};
use crate::ops::Lora;

/// The GGUF base-weight names of a model's block linears with their `(n_in, n_out)`.
pub fn linear_shapes(model: &GgufModel) -> BTreeMap<String, (usize, usize)> {
    let mut m = BTreeMap::new();
    for (i, b) in model.blocks.iter().enumerate() {
        for (p, l) in Proj::ALL.iter().zip(&b.linears) {
            m.insert(format!("blk.{i}.{}.weight", p.name()), (l.n_in(), l.n_out()));
        }
    }
    m
}

impl GgufModel {
    /// Give the block linears whose base-weight name (`blk.N.attn_q.weight`) `select` accepts a
    /// fresh LoRA pair of `rank` and factor `scale` as PEFT does (`A` Kaiming-uniform, `B = 0`);
    /// the others get none. `A` is drawn from `seed` in layer and [`Proj::ALL`] order, every
    /// linear drawing whether selected or not, so a linear's start does not depend on the others'.
    /// Returns how many linears were given a pair.
    pub fn init_lora_where(&mut self, rank: usize, scale: f32, seed: u64, select: &dyn Fn(&str) -> bool) -> usize {
        let mut rng = SplitMix64::new(seed);
        let mut n = 0;
        for (i, b) in self.blocks.iter_mut().enumerate() {
            for (p, l) in Proj::ALL.iter().zip(b.linears.iter_mut()) {
                let (n_in, n_out) = (l.n_in(), l.n_out());
                let a: Vec<f32> = kaiming_uniform(&mut rng, rank, n_in).into_iter().map(|v| v as f32).collect();
                l.lora = if select(&format!("blk.{i}.{}.weight", p.name())) {
                    n += 1;
                    Some(Lora { rank, a, b: vec![0.0; n_out * rank], scale })
                } else {
                    None
                };
            }
        }
        n
    }

    /// Start from the adapter `spec` names (its pairs replace those of the linears it adapts;
    /// the others keep theirs): each pair with llama.cpp's factor `scale · alpha / rank`.
    /// Returns the number of pairs read.
    ///
    /// # Errors
    /// A file that is not a LoRA adapter, one for another architecture or model (a tensor the
    /// model does not have, another shape), a pair on a tensor other than a block linear (the
    /// token embedding, the output projection), a type crunch cannot dequantize. Nothing is
    /// changed then.
    pub fn load_adapter(&mut self, spec: &LoraSpec) -> Result<usize> {
        let adapter = Arc::new(LoraAdapter::open(&spec.path)?);
        adapter.refuse_token_embedding()?;
        let arch = self.file().metadata().architecture().unwrap_or(self.config.arch.name()).to_string();
        let shapes = linear_shapes(self);
        let model_name = self.file().path.display().to_string();
        if let Some(p) = adapter.pairs().iter().find(|p| !shapes.contains_key(&p.base) && p.base == "output.weight") {
            return Err(ModelError::Input(format!(
                "{}: tensor {}: crunch trains adapters on the block linears only, not the output projection",
                spec.path.display(),
                p.base
            )));
        }
        adapter.check_model(&model_name, &arch, |n| shapes.get(n).copied())?;
        let mut factors = Vec::with_capacity(adapter.pairs().len());
        for p in adapter.pairs() {
            let (a, b) = adapter.dequantize(p)?;
            let t = LoraTensor { base: p.base.clone(), rank: p.rank, n_in: p.n_in, n_out: p.n_out, a, b };
            factors.push((t, adapter.scale_of(p, spec.scale) as f64));
        }
        let refs: Vec<(&LoraTensor, f64)> = factors.iter().map(|(t, s)| (t, *s)).collect();
        init_blocks_from_factors(&mut self.blocks, &refs)
            .map_err(|e| ModelError::Input(format!("{}: {e}", spec.path.display())))?;
        Ok(factors.len())
    }

    /// The trained pairs as an adapter: `alpha` (the most common `factor · rank`) and the
    /// tensors, `B` of a pair with another factor multiplied by `factor · rank / alpha`, so the
    /// adapter applied at scale 1 adds exactly `factor · B A` to every linear.
    ///
    /// # Errors
    /// No linear has a pair.
    pub fn adapter(&self) -> Result<(f32, Vec<LoraTensor>)> {
        let mut tensors = self.lora_tensors();
        if tensors.is_empty() {
            return Err(ModelError::Input("the model has no LoRA pair to write".into()));
        }
        let scales: Vec<f32> = self
            .blocks
            .iter()
            .flat_map(|b| b.linears.iter().filter_map(|l| l.lora.as_ref().map(|lo| lo.scale * lo.rank as f32)))
            .collect();
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for s in &scales {
            *counts.entry(s.to_bits()).or_default() += 1;
        }
        let alpha = f32::from_bits(*counts.iter().max_by_key(|(s, n)| (**n, **s)).map(|(s, _)| s).expect("a pair"));
        for (t, &s) in tensors.iter_mut().zip(&scales) {
            if s != alpha {
                let f = s / alpha;
                t.b.iter_mut().for_each(|v| *v *= f);
            }
        }
        Ok((alpha, tensors))
    }

    /// Write the trained pairs as a llama.cpp LoRA adapter (atomically, tensors in type `ty`,
    /// one of [`lora::WRITE_TYPES`]). Returns the file's SHA-256.
    ///
    /// # Errors
    /// As [`GgufModel::adapter`] and [`lora::write_adapter`].
    pub fn write_adapter(&self, dest: &Path, ty: GgmlType) -> Result<String> {
        let (alpha, tensors) = self.adapter()?;
        let arch = self.file().metadata().architecture().unwrap_or(self.config.arch.name()).to_string();
        lora::write_adapter(dest, lora::adapter_metadata(&arch, alpha), ty, &tensors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crunch_model::matmul::MatmulMode;
    use crunch_model::tokenizer::Tokenizer;
    use crunch_model::LlamaModel;

    const TEXT: &str = "The quick brown fox jumps over the lazy dog, and the dog does not mind at all.";

    /// An adapter written from the trained pairs, read back into another model and into
    /// crunch-model's engine, gives the same logits: mixed ranks and factors survive the trip.
    #[test]
    fn adapter_round_trip_with_mixed_ranks() {
        let dir = crunch_testkit::Scratch::new("train-adapter-round-trip");
        let path = crunch_testkit::smollm2_gguf();
        let mut m = GgufModel::open(&path, MatmulMode::Exact).unwrap();
        let n = m.init_lora_where(4, 0.5, 3, &|name| name.starts_with("blk.0.") || name.starts_with("blk.5.attn"));
        assert_eq!(n, 7 + 4);
        // Non-zero B, and one pair with another rank and factor.
        for (i, p) in m.lora_params_mut().into_iter().enumerate() {
            for (j, v) in p.iter_mut().enumerate() {
                *v += 1e-3 * (((i * 31 + j) % 17) as f32 - 8.0);
            }
        }
        let (n_in, n_out) = (m.blocks[0].linears[2].n_in(), m.blocks[0].linears[2].n_out());
        let lo = m.blocks[0].linears[2].lora.as_mut().unwrap();
        lo.rank = 2;
        lo.a.truncate(2 * n_in);
        lo.b = (0..n_out * 2).map(|j| 1e-3 * ((j % 5) as f32 - 2.0)).collect();
        lo.scale = 3.0;
        let out = dir.join("a.gguf");
        m.write_adapter(&out, GgmlType::F32).unwrap();

        let file = Arc::new(crunch_core::gguf::GgufFile::open(&path).unwrap());
        let toks = Tokenizer::from_gguf(&file).unwrap().encode(TEXT, false).unwrap();
        let (want, _) = m.forward(&toks).unwrap();
        let mut m2 = GgufModel::open(&path, MatmulMode::Exact).unwrap();
        assert_eq!(m2.load_adapter(&LoraSpec { path: out.clone(), scale: 1.0 }).unwrap(), 11);
        let (got, _) = m2.forward(&toks).unwrap();
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-4, "reloaded adapter differs by {diff}");
        let mut llama = LlamaModel::from_gguf(file).unwrap();
        llama.mode = MatmulMode::Exact;
        llama.add_adapter(Arc::new(LoraAdapter::open(&out).unwrap()), 1.0).unwrap();
        let engine = llama.forward(&toks, &mut llama.new_cache(toks.len())).unwrap();
        assert_eq!(engine.len(), want.len());
        let diff = engine.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-3, "crunch-model with the adapter differs by {diff}");
    }

    #[test]
    fn adapters_that_do_not_fit_are_refused() {
        let dir = crunch_testkit::Scratch::new("train-adapter-refused");
        let path = crunch_testkit::smollm2_gguf();
        let mut m = GgufModel::open(&path, MatmulMode::Exact).unwrap();
        // Not an adapter at all.
        let e = m.load_adapter(&LoraSpec { path: path.clone(), scale: 1.0 }).unwrap_err().to_string();
        assert!(e.contains("adapter"), "{e}");
        // An adapter file for `arch` with one rank-2 zero pair on `base` of `[n_in, n_out]`, loaded.
        let out = dir.join("bad.gguf");
        let mut load = |arch: &str, base: &str, n_in: usize, n_out: usize| {
            let t =
                LoraTensor { base: base.into(), rank: 2, n_in, n_out, a: vec![0.0; 2 * n_in], b: vec![0.0; 2 * n_out] };
            lora::write_adapter(&out, lora::adapter_metadata(arch, 2.0), GgmlType::F32, &[t]).unwrap();
            m.load_adapter(&LoraSpec { path: out.clone(), scale: 1.0 }).unwrap_err().to_string()
        };
        // A tensor the model does not have.
        let e = load("llama", "blk.99.attn_q.weight", 576, 576);
        assert!(e.contains("blk.99.attn_q.weight") && e.contains("bad.gguf"), "{e}");
        // Another shape.
        let e = load("llama", "blk.0.attn_q.weight", 64, 576);
        assert!(e.contains("blk.0.attn_q.weight") && e.contains("576"), "{e}");
        // Another architecture.
        let e = load("qwen2", "blk.0.attn_q.weight", 576, 576);
        assert!(e.contains("qwen2"), "{e}");
        assert!(m.lora_tensors().is_empty(), "nothing changed");
        assert!(m.adapter().is_err(), "no pair to write");
    }
}
