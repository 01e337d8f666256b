//! What a search optimises and the limits it keeps: objectives read off an evaluated candidate
//! (all turned into "smaller is better" for the strategies) and constraints (a violation of 0
//! means every one is met).

use super::Candidate;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// One objective of a search.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// File size in bytes (model plus correction adapter).
    Size,
    /// KL-divergence from the base (`1 − cosine` for an encoder).
    Kld,
    /// Perplexity on the held-out text.
    Ppl,
    /// Same top token as the base (maximised).
    Top1,
    /// Multiple-choice accuracy (maximised; needs choice tasks).
    Acc,
    /// Prompt-processing speed, tokens/s (maximised).
    Pp,
    /// Generation speed, tokens/s (maximised).
    Tg,
    /// Peak resident memory of the evaluation, bytes.
    Ram,
    /// Energy per generated token, joules.
    Energy,
    /// CO2 of the whole trial (write and evaluate), grams.
    Co2,
}

impl Objective {
    pub const ALL: [Objective; 10] = [
        Objective::Size,
        Objective::Kld,
        Objective::Ppl,
        Objective::Top1,
        Objective::Acc,
        Objective::Pp,
        Objective::Tg,
        Objective::Ram,
        Objective::Energy,
        Objective::Co2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Objective::Size => "size",
            Objective::Kld => "kld",
            Objective::Ppl => "ppl",
            Objective::Top1 => "top1",
            Objective::Acc => "acc",
            Objective::Pp => "pp",
            Objective::Tg => "tg",
            Objective::Ram => "ram",
            Objective::Energy => "energy",
            Objective::Co2 => "co2",
        }
    }

    /// Axis label with unit, for tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            Objective::Size => "file size (MiB)",
            Objective::Kld => "KL-divergence",
            Objective::Ppl => "perplexity",
            Objective::Top1 => "same top token (%)",
            Objective::Acc => "multiple-choice accuracy (%)",
            Objective::Pp => "prompt tokens/s",
            Objective::Tg => "generation tokens/s",
            Objective::Ram => "peak RSS (MiB)",
            Objective::Energy => "energy per generated token (J)",
            Objective::Co2 => "CO2 per trial (g)",
        }
    }

    /// Bigger is better (the strategies see the value negated).
    pub fn maximised(self) -> bool {
        matches!(self, Objective::Top1 | Objective::Acc | Objective::Pp | Objective::Tg)
    }

    /// The value as shown (natural units of [`Objective::label`]).
    pub fn shown(self, c: &Candidate) -> Option<f64> {
        let t = &c.t;
        let m = t.measured.as_ref();
        let x = t.extra.as_ref();
        let v = match self {
            Objective::Size => t.file_bytes as f64 / (1 << 20) as f64,
            Objective::Kld => m?.damage(),
            Objective::Ppl => m.filter(|m| m.cosine.is_none())?.ppl,
            Objective::Top1 => m.filter(|m| m.cosine.is_none())?.top1 * 100.0,
            Objective::Acc => x?.acc? * 100.0,
            Objective::Pp => m?.tokens_per_s,
            Objective::Tg => x?.tg_tokens_per_s,
            Objective::Ram => x?.peak_rss_bytes? as f64 / (1 << 20) as f64,
            Objective::Energy => x?.energy_j_per_token,
            Objective::Co2 => x?.co2_g,
        };
        v.is_finite().then_some(v)
    }

    /// The value the strategies minimise.
    pub fn minimised(self, c: &Candidate) -> Option<f64> {
        self.shown(c).map(|v| if self.maximised() { -v } else { v })
    }
}

impl std::str::FromStr for Objective {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Objective::ALL.iter().copied().find(|o| o.name().eq_ignore_ascii_case(s.trim())).ok_or_else(|| {
            let all: Vec<&str> = Objective::ALL.iter().map(|o| o.name()).collect();
            format!("unknown objective {s:?} (known: {})", all.join(", "))
        })
    }
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Parse objective names (`size,kld,tg,energy`), at least two, no repeats.
///
/// # Errors
/// Unknown or repeated names, fewer than two, naming `field`.
pub fn parse_objectives(names: &[String], field: &str) -> Result<Vec<Objective>> {
    let mut out: Vec<Objective> = Vec::new();
    for n in names.iter().flat_map(|n| n.split(',')).filter(|n| !n.trim().is_empty()) {
        let o: Objective = n.parse().map_err(|e: String| Error::field(field, e))?;
        if out.contains(&o) {
            return Err(Error::field(field, format!("{o} is named twice")));
        }
        out.push(o);
    }
    if out.len() < 2 {
        return Err(Error::field(field, "give at least two objectives (e.g. size,kld)"));
    }
    Ok(out)
}

/// Limits a candidate must keep to count as feasible, and the search's carbon budget.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    /// Largest file (model plus adapter), bytes.
    #[serde(default)]
    pub max_size: Option<u64>,
    /// Largest measured KL-divergence (`1 − cosine` for an encoder).
    #[serde(default)]
    pub max_kld: Option<f64>,
    /// Largest drop of multiple-choice accuracy below the base's, in points (0.05 = 5 points).
    #[serde(default)]
    pub max_acc_drop: Option<f64>,
    /// Slowest generation, tokens/s (a latency limit: 1000 / ms per token).
    #[serde(default)]
    pub min_tg: Option<f64>,
    /// Slowest prompt processing, tokens/s.
    #[serde(default)]
    pub min_pp: Option<f64>,
    /// Carbon budget of the whole search, grams CO2: no trial starts once it is spent.
    #[serde(default)]
    pub max_co2_g: Option<f64>,
}

impl Constraints {
    /// Check the values (names the field).
    ///
    /// # Errors
    /// A limit that is not a positive finite number.
    pub fn check(&self, at: &str) -> Result<()> {
        let pos = |v: Option<f64>, f: &str| match v {
            Some(x) if !(x.is_finite() && x >= 0.0) => {
                Err(Error::field(format!("{at}.{f}"), format!("{x}: must be a number, 0 or more")))
            }
            _ => Ok(()),
        };
        pos(self.max_kld, "max_kld")?;
        pos(self.max_acc_drop, "max_acc_drop")?;
        pos(self.min_tg, "min_tg")?;
        pos(self.min_pp, "min_pp")?;
        pos(self.max_co2_g, "max_co2_g")?;
        if self.max_size == Some(0) {
            return Err(Error::field(format!("{at}.max_size"), "must be at least one byte"));
        }
        Ok(())
    }

    /// How far a candidate is outside the limits: 0 when it keeps every one, otherwise the sum of
    /// the relative excesses. `base_acc`: the base model's accuracy, for `max_acc_drop`.
    pub fn violation(&self, c: &Candidate, base_acc: Option<f64>) -> f64 {
        let over = |v: f64, limit: f64| if v > limit { (v - limit) / limit.abs().max(1e-12) } else { 0.0 };
        let under = |v: f64, limit: f64| if v < limit { (limit - v) / limit.abs().max(1e-12) } else { 0.0 };
        let t = &c.t;
        let mut s = 0.0;
        if let Some(l) = self.max_size {
            s += over(t.file_bytes as f64, l as f64);
        }
        let m = t.measured.as_ref();
        let x = t.extra.as_ref();
        if let (Some(l), Some(m)) = (self.max_kld, m) {
            s += over(m.damage(), l);
        }
        if let (Some(l), Some(b), Some(a)) = (self.max_acc_drop, base_acc, x.and_then(|x| x.acc)) {
            s += over(b - a, l).min(1e6);
        }
        if let (Some(l), Some(x)) = (self.min_tg, x) {
            s += under(x.tg_tokens_per_s, l);
        }
        if let (Some(l), Some(m)) = (self.min_pp, m) {
            s += under(m.tokens_per_s, l);
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        *self == Constraints::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for o in Objective::ALL {
            assert_eq!(o.name().parse::<Objective>().unwrap(), o);
        }
        let v = parse_objectives(&["size,kld".into(), "tg".into()], "search.objectives").unwrap();
        assert_eq!(v, vec![Objective::Size, Objective::Kld, Objective::Tg]);
        assert!(parse_objectives(&["size".into()], "f").unwrap_err().to_string().contains("at least two"));
        assert!(parse_objectives(&["size,size".into()], "f").unwrap_err().to_string().contains("twice"));
        assert!(parse_objectives(&["size,speed".into()], "f").unwrap_err().to_string().contains("known"));
    }
}
