//! LoRA initialisation: PEFT's (`A` Kaiming-uniform with `a = √5`, `B = 0`, so training starts
//! from the frozen model exactly) from a seeded generator, or given factors (a `crunch lowrank`
//! correction to start distillation from).

use crunch_model::lora::LoraTensor;
use serde::{Deserialize, Serialize};

use crate::block::{Block, Proj};
use crate::float::Float;
use crate::model::Model;
use crate::ops::Lora;

/// SplitMix64 (Steele, Lea and Flood): a small, fast, fully deterministic generator, the same
/// sequence on every platform. Enough for initialisation and shuffling.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n > 0`; Lemire's multiply-shift, bias below 2⁻⁶⁴·n).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<X>(&mut self, v: &mut [X]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// How the LoRA factors of a model start.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LoraInit {
    /// PEFT's: `A ~ U(−1/√n_in, 1/√n_in)` (`kaiming_uniform_(a=√5)`), `B = 0`.
    Peft { seed: u64 },
}

/// PEFT's `A` of a linear: `rank × n_in` values of `U(−b, b)`, `b = gain·√(3 / fan_in)` with
/// `gain = √(2 / (1 + a²))`, `a = √5`, that is `b = 1 / √n_in`.
pub fn kaiming_uniform(rng: &mut SplitMix64, rank: usize, n_in: usize) -> Vec<f64> {
    let a2: f64 = 5.0;
    let gain = (2.0 / (1.0 + a2)).sqrt();
    let bound = gain * (3.0 / n_in as f64).sqrt();
    (0..rank * n_in).map(|_| (2.0 * rng.uniform() - 1.0) * bound).collect()
}

/// Give every block linear of `model` a fresh LoRA pair of `rank` and factor `scale` (replacing
/// any it had), drawn per `init` layer by layer in [`Proj::ALL`] order, `A` row by row.
pub fn init_lora<T: Float>(model: &mut Model<T>, rank: usize, scale: f64, init: LoraInit) {
    let LoraInit::Peft { seed } = init;
    let mut rng = SplitMix64::new(seed);
    for b in &mut model.blocks {
        for l in b.linears.iter_mut() {
            let (n_in, n_out) = (l.n_in(), l.n_out());
            let a = kaiming_uniform(&mut rng, rank, n_in).into_iter().map(T::from_f64).collect();
            l.lora = Some(Lora { rank, a, b: vec![T::ZERO; n_out * rank], scale: T::from_f64(scale) });
        }
    }
    model.config.rank = rank;
    model.config.lora_scale = scale;
}

/// Factors that do not fit the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FactorMismatch(pub String);

impl std::fmt::Display for FactorMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoRA factors do not fit the model: {}", self.0)
    }
}

impl std::error::Error for FactorMismatch {}

/// Set LoRA pairs from given factors (named by their base weight, `blk.N.attn_q.weight`, as
/// crunch-model's adapters and `crunch lowrank` name them), each with factor `scale`. Linears no
/// factor names keep what they had (call [`init_lora`] first to give them a fresh pair). Nothing
/// is changed when a factor names no linear of the model or does not fit its shape.
pub fn init_from_factors<T: Float>(
    model: &mut Model<T>,
    factors: &[LoraTensor],
    scale: f64,
) -> Result<(), FactorMismatch> {
    let with_scale: Vec<(&LoraTensor, f64)> = factors.iter().map(|f| (f, scale)).collect();
    init_blocks_from_factors(&mut model.blocks, &with_scale)
}

/// [`init_from_factors`] on a model's blocks (the tiny [`Model`]'s or a
/// [`crate::GgufModel`]'s), each factor with its own `scale` (an adapter's tensors of different
/// ranks are applied with different factors, `alpha / rank`).
///
/// # Errors
/// As [`init_from_factors`] (nothing is changed).
pub fn init_blocks_from_factors<T: Float>(
    blocks: &mut [Block<T>],
    factors: &[(&LoraTensor, f64)],
) -> Result<(), FactorMismatch> {
    let mut at = Vec::with_capacity(factors.len());
    for (f, _) in factors {
        let found = blocks.iter().enumerate().find_map(|(i, b)| {
            Proj::ALL
                .iter()
                .position(|p| f.base == format!("blk.{i}.{}.weight", p.name()))
                .map(|pi| (i, pi, b.linears[pi].n_in(), b.linears[pi].n_out()))
        });
        let Some((i, pi, n_in, n_out)) = found else {
            return Err(FactorMismatch(format!("{} is not a block linear of the model", f.base)));
        };
        if f.rank == 0
            || (f.n_in, f.n_out) != (n_in, n_out)
            || f.a.len() != f.rank * n_in
            || f.b.len() != n_out * f.rank
        {
            return Err(FactorMismatch(format!(
                "{}: rank {} {}×{} with A of {} and B of {} values, the weight is {n_in}×{n_out}",
                f.base,
                f.rank,
                f.n_in,
                f.n_out,
                f.a.len(),
                f.b.len()
            )));
        }
        at.push((i, pi));
    }
    for ((f, scale), (i, pi)) in factors.iter().zip(at) {
        blocks[i].linears[pi].lora = Some(Lora {
            rank: f.rank,
            a: f.a.iter().map(|&v| T::from_f32(v)).collect(),
            b: f.b.iter().map(|&v| T::from_f32(v)).collect(),
            scale: T::from_f64(*scale),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use crunch_model::config::RopeMode;

    fn tiny() -> Model<f64> {
        let c = ModelConfig {
            n_vocab: 7,
            n_embd: 8,
            n_ff: 12,
            n_head: 2,
            n_head_kv: 1,
            n_layer: 2,
            n_rot: 4,
            rope_mode: RopeMode::Normal,
            rope_freq_base: 10000.0,
            rms_eps: 1e-5,
            qkv_bias: false,
            rank: 0,
            lora_scale: 1.0,
        };
        let mut rng = SplitMix64::new(1);
        Model::random(&c, &mut || rng.uniform() - 0.5)
    }

    #[test]
    fn splitmix_is_the_reference_sequence() {
        // The first outputs for seed 1234567 of the reference implementation (Vigna's splitmix64.c).
        let mut r = SplitMix64::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
        let mut r = SplitMix64::new(3);
        for _ in 0..1000 {
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
            assert!(r.below(5) < 5);
        }
        let mut v: Vec<usize> = (0..20).collect();
        r.shuffle(&mut v);
        let mut s = v.clone();
        s.sort();
        assert_eq!(s, (0..20).collect::<Vec<_>>());
        assert_ne!(v, s);
    }

    #[test]
    fn peft_init_is_kaiming_uniform_and_zero_b() {
        let mut m = tiny();
        let toks = [1u32, 4, 2, 6, 0];
        let (frozen, _) = m.forward(&toks);
        init_lora(&mut m, 3, 0.5, LoraInit::Peft { seed: 9 });
        // B = 0: the model is the frozen model.
        assert_eq!(m.forward(&toks).0, frozen);
        for b in &m.blocks {
            for l in &b.linears {
                let lo = l.lora.as_ref().unwrap();
                assert_eq!((lo.rank, lo.scale), (3, 0.5));
                assert!(lo.b.iter().all(|&v| v == 0.0));
                let bound = 1.0 / (l.n_in() as f64).sqrt();
                assert_eq!(lo.a.len(), 3 * l.n_in());
                assert!(lo.a.iter().all(|v| v.abs() < bound));
                // Spread over the interval, not bunched.
                assert!(lo.a.iter().fold(0f64, |m, v| m.max(v.abs())) > 0.5 * bound);
            }
        }
        // Seeded: the same seed gives the same A, another seed another.
        let a0 = m.blocks[1].linears[6].lora.clone().unwrap().a;
        init_lora(&mut m, 3, 0.5, LoraInit::Peft { seed: 9 });
        assert_eq!(m.blocks[1].linears[6].lora.as_ref().unwrap().a, a0);
        init_lora(&mut m, 3, 0.5, LoraInit::Peft { seed: 10 });
        assert_ne!(m.blocks[1].linears[6].lora.as_ref().unwrap().a, a0);
        // Many draws: the variance of U(−b, b) is b²/3.
        let a = kaiming_uniform(&mut SplitMix64::new(5), 100, 400);
        let var = a.iter().map(|v| v * v).sum::<f64>() / a.len() as f64;
        assert!((var / (1.0 / 400.0 / 3.0) - 1.0).abs() < 0.02, "{var}");
    }

    #[test]
    fn factors_are_set_by_name_and_checked() {
        let mut m = tiny();
        init_lora(&mut m, 2, 1.0, LoraInit::Peft { seed: 1 });
        let f = LoraTensor {
            base: "blk.1.ffn_down.weight".into(),
            rank: 4,
            n_in: 12,
            n_out: 8,
            a: (0..48).map(|i| i as f32 * 0.01).collect(),
            b: (0..32).map(|i| -(i as f32) * 0.02).collect(),
        };
        init_from_factors(&mut m, std::slice::from_ref(&f), 0.25).unwrap();
        let lo = m.blocks[1].linears[Proj::Down as usize].lora.as_ref().unwrap();
        assert_eq!((lo.rank, lo.scale), (4, 0.25));
        assert_eq!(lo.a[5], f.a[5] as f64);
        assert_eq!(lo.b[31], f.b[31] as f64);
        // Others untouched.
        assert_eq!(m.blocks[0].linears[Proj::Down as usize].lora.as_ref().unwrap().rank, 2);
        let mut bad = f.clone();
        bad.base = "blk.2.ffn_down.weight".into();
        let e = init_from_factors(&mut m, &[bad], 1.0).unwrap_err();
        assert!(e.to_string().contains("blk.2.ffn_down.weight is not a block linear"), "{e}");
        let mut bad = f;
        bad.n_in = 8;
        assert!(init_from_factors(&mut m, &[bad], 1.0).is_err());
    }
}
