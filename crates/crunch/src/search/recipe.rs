//! Recipe files for `crunch search`: YAML, schema in docs/RECIPES.md.
//!
//! ```yaml
//! defaults:
//!   method: rtn              # rtn | imatrix | gptq (every recipe unless it says otherwise)
//! recipes:
//!   - preset: Q4_K_M         # a llama.cpp preset, planned exactly as llama-quantize does
//!   - name: fit-4.5
//!     fit: { max_bpw: 4.5 }  # or max_size: 90MiB | max_kld: 0.01 | max_ram: 1GiB (+ ctx: 4096)
//!                            # | min_cosine: 0.999 (sentence encoders)
//!   - name: q4_0-big-down
//!     preset: Q4_0
//!     tensor_types: { "ffn_down": Q6_K }   # regex on the tensor name -> type, first match wins
//! ```
//!
//! Parsing rejects unknown fields; validation names the recipe and the field of every problem.

use crate::calibrate::structured::StructuredOptions;
use crate::error::{Error, Result};
use crate::fit::{parse_size, Target};
use crate::quantize::Ftype;
use crate::sensitivity::Method;
use crunch_core::GgmlType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The file as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub recipes: Vec<RawRecipe>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub method: Option<String>,
}

/// A recipe as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRecipe {
    pub name: Option<String>,
    pub preset: Option<String>,
    pub fit: Option<RawFit>,
    pub method: Option<String>,
    #[serde(default)]
    pub tensor_types: BTreeMap<String, String>,
    /// Structured pruning before quantization (`{ layers: 2 }`, `{ ffn: 0.75 }`, ...).
    #[serde(default)]
    pub prune: Option<StructuredOptions>,
    /// A low-rank correction shipped beside the quantized model as a LoRA adapter
    /// (`{ rank: 64 }`, `{ budget: 4MiB }`); its bytes count against a size target and in the
    /// candidate's size.
    #[serde(default)]
    pub correction: Option<crate::lowrank::CorrectionSpec>,
}

/// A fit target as written: exactly one of the four.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawFit {
    pub max_size: Option<SizeValue>,
    pub max_bpw: Option<f64>,
    pub max_kld: Option<f64>,
    pub max_ram: Option<SizeValue>,
    /// A sentence encoder's smallest mean cosine to the base's embeddings.
    pub min_cosine: Option<f64>,
    /// The size of the file a llama.cpp preset makes from the same model (e.g. `Q4_K_M`).
    pub max_size_of: Option<String>,
    /// Context counted for `max_ram`.
    pub ctx: Option<usize>,
}

/// A size: a number of bytes or a string with a unit (`90MiB`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// What a recipe does.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum RecipeKind {
    /// A llama.cpp preset, optionally with per-tensor overrides.
    Preset {
        #[serde(serialize_with = "ser_ftype")]
        ftype: Ftype,
        tensor_types: Vec<(String, String)>,
    },
    /// A fit target.
    Fit(Target),
    /// A fit whose size budget is the size of a preset's file.
    FitSizeOf {
        #[serde(serialize_with = "ser_ftype")]
        ftype: Ftype,
    },
}

fn ser_ftype<S: serde::Serializer>(f: &Ftype, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(f.name())
}

/// A validated recipe.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Recipe {
    pub name: String,
    pub method: Method,
    pub kind: RecipeKind,
    /// Structured pruning of the base before the recipe quantizes it (the candidate is still
    /// judged against the unpruned base; `max_size_of` still means the preset's size on it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune: Option<StructuredOptions>,
    /// A low-rank correction adapter shipped beside the candidate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correction: Option<crate::lowrank::CorrectionSpec>,
}

/// A short tag for a structured pruning in recipe names: `prune-4L-ffn75-kv1`.
pub fn prune_tag(p: &StructuredOptions) -> String {
    let mut t = vec!["prune".to_string()];
    if let Some(n) = p.layers {
        t.push(format!("{n}L"));
    }
    if let Some(v) = &p.remove_layers {
        t.push(format!("L{}", v.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(".")));
    }
    if let Some(f) = p.ffn {
        t.push(format!("ffn{:.0}", f * 100.0));
    }
    if let Some(d) = p.drop_kv_groups {
        t.push(format!("kv{d}"));
    }
    t.join("-")
}

/// Parse and validate a recipe file's text (`source` names it in errors).
///
/// # Errors
/// YAML syntax and schema errors (with line and column), and validation errors naming the
/// recipe (`recipes[2]` or its name) and the field.
pub fn parse(text: &str, source: &str) -> Result<Vec<Recipe>> {
    let file: RecipeFile = serde_saphyr::from_str(text).map_err(|e| Error::Invalid(format!("{source}: {e}")))?;
    validate(&file, source)
}

fn bad(source: &str, at: &str, msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{source}: {at}: {msg}"))
}

fn parse_method(s: &str, source: &str, at: &str) -> Result<Method> {
    let m = s.parse::<Method>().map_err(|e| bad(source, at, e))?;
    if !crate::sensitivity::profiles(m) {
        return Err(bad(source, at, format!("{m}: search measures rtn and imatrix")));
    }
    Ok(m)
}

/// Validate a parsed file.
///
/// # Errors
/// See [`parse`].
pub fn validate(file: &RecipeFile, source: &str) -> Result<Vec<Recipe>> {
    let default_method = match &file.defaults.method {
        Some(m) => parse_method(m, source, "defaults.method")?,
        None => Method::Rtn,
    };
    if file.recipes.is_empty() {
        return Err(bad(source, "recipes", "no recipes (give a list under `recipes:`)"));
    }
    let mut out: Vec<Recipe> = Vec::new();
    for (i, r) in file.recipes.iter().enumerate() {
        let at = format!("recipes[{i}]{}", r.name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default());
        let method = match &r.method {
            Some(m) => parse_method(m, source, &format!("{at}.method"))?,
            None => default_method,
        };
        if let Some(p) = &r.prune {
            if p.is_empty() {
                return Err(bad(source, &format!("{at}.prune"), "give layers, remove_layers, ffn or drop_kv_groups"));
            }
        }
        let prefix = r.prune.as_ref().map(|p| format!("{}+", prune_tag(p))).unwrap_or_default();
        if let Some(c) = &r.correction {
            crate::lowrank::rank_choice(c.rank, c.budget.as_deref(), "correction")
                .map_err(|e| bad(source, &format!("{at}.correction"), e))?;
            crate::lowrank::adapter_type(c.adapter_type.as_deref().unwrap_or("f16"), "adapter_type")
                .map_err(|e| bad(source, &format!("{at}.correction"), e))?;
        }
        let suffix = r.correction.as_ref().map(|c| format!("+{}", c.tag())).unwrap_or_default();
        let kind = match (&r.preset, &r.fit) {
            (Some(_), Some(_)) => return Err(bad(source, &at, "give either `preset` or `fit`, not both")),
            (None, None) => {
                return Err(bad(
                    source,
                    &at,
                    "give `preset: NAME` or `fit: {max_size|max_bpw|max_kld|max_ram|min_cosine: …}`",
                ))
            }
            (Some(p), None) => {
                let ftype: Ftype = p.parse().map_err(|e: String| bad(source, &format!("{at}.preset"), e))?;
                if !ftype.default_type().is_quantized() && !r.tensor_types.is_empty() {
                    return Err(bad(source, &format!("{at}.tensor_types"), "overrides need a quantized preset"));
                }
                let mut tt = Vec::new();
                for (pat, ty) in &r.tensor_types {
                    let f = format!("{at}.tensor_types.{pat}");
                    regex::Regex::new(pat).map_err(|e| bad(source, &f, format!("bad pattern: {e}")))?;
                    let t: GgmlType = ty.parse().map_err(|_| bad(source, &f, format!("unknown tensor type {ty:?}")))?;
                    if crunch_quant::kernels(t).is_none() {
                        return Err(bad(source, &f, format!("crunch cannot write {t}")));
                    }
                    tt.push((pat.clone(), t.name().to_string()));
                }
                RecipeKind::Preset { ftype, tensor_types: tt }
            }
            (None, Some(f)) => {
                if !r.tensor_types.is_empty() {
                    return Err(bad(source, &format!("{at}.tensor_types"), "only preset recipes take overrides"));
                }
                let fa = format!("{at}.fit");
                let n = [
                    f.max_size.is_some(),
                    f.max_bpw.is_some(),
                    f.max_kld.is_some(),
                    f.max_ram.is_some(),
                    f.min_cosine.is_some(),
                    f.max_size_of.is_some(),
                ]
                .iter()
                .filter(|x| **x)
                .count();
                if n != 1 {
                    return Err(bad(
                        source,
                        &fa,
                        "give exactly one of max_size, max_size_of, max_bpw, max_kld, max_ram, min_cosine",
                    ));
                }
                if f.ctx.is_some() && f.max_ram.is_none() {
                    return Err(bad(source, &format!("{fa}.ctx"), "ctx only counts for max_ram"));
                }
                let size = |v: &SizeValue, field: &str| -> Result<u64> {
                    match v {
                        SizeValue::Bytes(0) => Err(bad(source, &format!("{fa}.{field}"), "must be at least one byte")),
                        SizeValue::Bytes(b) => Ok(*b),
                        SizeValue::Text(s) => parse_size(s, &format!("{source}: {fa}.{field}")),
                    }
                };
                let positive = |v: f64, field: &str| -> Result<f64> {
                    if v > 0.0 && v.is_finite() {
                        Ok(v)
                    } else {
                        Err(bad(source, &format!("{fa}.{field}"), format!("{v} must be a positive number")))
                    }
                };
                if let Some(p) = &f.max_size_of {
                    let ftype: Ftype = p.parse().map_err(|e: String| bad(source, &format!("{fa}.max_size_of"), e))?;
                    let name = r.name.clone().unwrap_or_else(|| {
                        let m = if method == Method::Rtn { String::new() } else { format!("+{}", method.name()) };
                        format!("{prefix}fit-size-of-{}{m}{suffix}", ftype.name())
                    });
                    if out.iter().any(|o| o.name == name) {
                        return Err(bad(
                            source,
                            &format!("{at}.name"),
                            format!("{name:?} is used by an earlier recipe"),
                        ));
                    }
                    out.push(Recipe {
                        name,
                        method,
                        kind: RecipeKind::FitSizeOf { ftype },
                        prune: r.prune.clone(),
                        correction: r.correction.clone(),
                    });
                    continue;
                }
                let t = if let Some(v) = &f.max_size {
                    Target::MaxSize(size(v, "max_size")?)
                } else if let Some(v) = f.max_bpw {
                    Target::MaxBpw(positive(v, "max_bpw")?)
                } else if let Some(v) = f.max_kld {
                    Target::MaxKld(positive(v, "max_kld")?)
                } else if let Some(v) = f.min_cosine {
                    if !(v > 0.0 && v < 1.0) {
                        return Err(bad(source, &format!("{fa}.min_cosine"), format!("{v}: must be between 0 and 1")));
                    }
                    Target::MinCosine(v)
                } else if let Some(v) = &f.max_ram {
                    let ctx = f.ctx.unwrap_or(4096);
                    if ctx == 0 {
                        return Err(bad(source, &format!("{fa}.ctx"), "must be at least 1"));
                    }
                    Target::MaxRam { bytes: size(v, "max_ram")?, ctx }
                } else {
                    unreachable!("exactly one target is set")
                };
                RecipeKind::Fit(t)
            }
        };
        let name = r.name.clone().unwrap_or_else(|| format!("{prefix}{}{suffix}", default_name(&kind, method)));
        if name.trim().is_empty() {
            return Err(bad(source, &format!("{at}.name"), "must not be empty"));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(bad(source, &format!("{at}.name"), format!("{name:?} is used by an earlier recipe")));
        }
        out.push(Recipe { name, method, kind, prune: r.prune.clone(), correction: r.correction.clone() });
    }
    Ok(out)
}

/// A size as written in a recipe when it is a whole number of a unit (`1MB`, `4GiB`), else rounded.
fn size_label(b: u64) -> String {
    const UNITS: [(u64, &str); 6] =
        [(1 << 30, "GiB"), (1_000_000_000, "GB"), (1 << 20, "MiB"), (1_000_000, "MB"), (1 << 10, "KiB"), (1_000, "kB")];
    match UNITS.iter().find(|(u, _)| b > 0 && b.is_multiple_of(*u)) {
        Some((u, name)) => format!("{}{name}", b / u),
        None => crate::inspect::human_bytes(b).replace(' ', ""),
    }
}

/// A readable name for an unnamed recipe.
pub fn default_name(kind: &RecipeKind, method: Method) -> String {
    let m = if method == Method::Rtn { String::new() } else { format!("+{}", method.name()) };
    match kind {
        RecipeKind::Preset { ftype, tensor_types } if tensor_types.is_empty() => format!("{}{m}", ftype.name()),
        RecipeKind::Preset { ftype, .. } => format!("{}-custom{m}", ftype.name()),
        RecipeKind::FitSizeOf { ftype } => format!("fit-size-of-{}{m}", ftype.name()),
        RecipeKind::Fit(Target::MaxSize(b)) => {
            format!("fit-size-{}{m}", size_label(*b))
        }
        RecipeKind::Fit(Target::MaxBpw(b)) => format!("fit-bpw-{b}{m}"),
        RecipeKind::Fit(Target::MaxKld(k)) => format!("fit-kld-{k}{m}"),
        RecipeKind::Fit(Target::MinCosine(c)) => format!("fit-cosine-{c}{m}"),
        RecipeKind::Fit(Target::MaxRam { bytes, ctx }) => {
            format!("fit-ram-{}-ctx{ctx}{m}", size_label(*bytes))
        }
    }
}

/// Recipes from `--grid KEY=V1,V2,…` specs (keys: preset, max-size, max-bpw, max-kld, max-ram,
/// min-cosine),
/// each crossed with every method in `methods`.
///
/// # Errors
/// Unknown keys or values, naming the spec.
pub fn grid(specs: &[String], methods: &[Method]) -> Result<Vec<Recipe>> {
    let mut raw = Vec::new();
    for spec in specs {
        let (key, vals) = spec
            .split_once('=')
            .ok_or_else(|| Error::Invalid(format!("grid {spec:?}: expected KEY=V1,V2,… (e.g. preset=Q4_0,Q4_K_M)")))?;
        for v in vals.split(',').map(str::trim).filter(|v| !v.is_empty()) {
            let mut r = RawRecipe::default();
            let mut f = RawFit::default();
            match key.trim().replace('_', "-").as_str() {
                "preset" => r.preset = Some(v.to_string()),
                "max-size" => f.max_size = Some(SizeValue::Text(v.to_string())),
                "max-ram" => f.max_ram = Some(SizeValue::Text(v.to_string())),
                "max-bpw" => {
                    f.max_bpw =
                        Some(v.parse().map_err(|_| Error::Invalid(format!("grid {spec:?}: {v:?} is not a number")))?)
                }
                "max-kld" => {
                    f.max_kld =
                        Some(v.parse().map_err(|_| Error::Invalid(format!("grid {spec:?}: {v:?} is not a number")))?)
                }
                "min-cosine" => {
                    f.min_cosine =
                        Some(v.parse().map_err(|_| Error::Invalid(format!("grid {spec:?}: {v:?} is not a number")))?)
                }
                k => {
                    return Err(Error::Invalid(format!(
                        "grid {spec:?}: unknown key {k:?} (use preset, max-size, max-bpw, max-kld, max-ram, min-cosine)"
                    )))
                }
            }
            if r.preset.is_none() {
                r.fit = Some(f);
            }
            for m in methods {
                let mut r = r.clone();
                r.method = Some(m.name().to_string());
                raw.push(r);
            }
        }
    }
    validate(&RecipeFile { defaults: Defaults::default(), recipes: raw }, "grid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_presets_and_fits() {
        let y = "defaults:\n  method: rtn\nrecipes:\n  - preset: q4_k_m\n  - name: small\n    fit:\n      max_size: 90MiB\n  - fit: { max_bpw: 4.5 }\n    method: imatrix\n  - fit: { max_ram: 1GiB, ctx: 2048 }\n  - preset: Q4_0\n    tensor_types: { ffn_down: q6_k }\n  - fit: { max_size_of: Q4_K_M }\n";
        let r = parse(y, "r.yaml").unwrap();
        assert_eq!(r.len(), 6);
        assert_eq!(r[5].name, "fit-size-of-Q4_K_M");
        assert_eq!(r[0].name, "Q4_K_M");
        assert_eq!(r[1].kind, RecipeKind::Fit(Target::MaxSize(90 << 20)));
        assert_eq!(r[2].method, Method::Imatrix);
        assert_eq!(r[2].name, "fit-bpw-4.5+imatrix");
        assert_eq!(r[3].kind, RecipeKind::Fit(Target::MaxRam { bytes: 1 << 30, ctx: 2048 }));
        assert!(matches!(&r[4].kind, RecipeKind::Preset { tensor_types, .. } if tensor_types[0].1 == "Q6_K"));
    }

    fn err(y: &str) -> String {
        parse(y, "r.yaml").unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err("recipes:\n  - preset: Q9_Z\n").contains("recipes[0].preset"));
        assert!(err("recipes:\n  - name: a\n    fit: { max_bpw: -1 }\n").contains("recipes[0] (a).fit.max_bpw"));
        assert!(err("recipes:\n  - fit: { max_size: 4 parsecs }\n").contains("fit.max_size"));
        assert!(err("recipes:\n  - fit: { max_bpw: 4, max_kld: 0.1 }\n").contains("exactly one"));
        assert!(err("recipes:\n  - preset: Q4_0\n    fit: { max_bpw: 4 }\n").contains("not both"));
        assert!(err("recipes:\n  - name: x\n").contains("give `preset"));
        assert!(err("recipes:\n  - preset: Q4_0\n  - preset: Q4_0\n").contains("recipes[1].name"));
        assert!(err("recipes:\n  - preset: Q4_0\n    method: magic\n").contains("recipes[0].method"));
        assert!(err("recipes:\n  - preset: Q4_0\n    tensor_types: { '(': Q4_0 }\n").contains("tensor_types.("));
        assert!(err("recipes:\n  - preset: Q4_0\n    tensor_types: { ffn: Q9 }\n").contains("unknown tensor type"));
        assert!(err("recipes: []\n").contains("no recipes"));
        // Schema errors from the YAML layer: unknown field, wrong type, bad syntax.
        let e = err("recipes:\n  - preset: Q4_0\n    bogus: 1\n");
        assert!(e.contains("bogus") && e.contains("r.yaml"), "{e}");
        assert!(err("recipes:\n  - fit: { max_bpw: lots }\n").contains("r.yaml"));
        assert!(err("recipes: [\n").contains("r.yaml"));
    }

    #[test]
    fn grids() {
        let r = grid(&["preset=Q4_0,Q5_K_M".into(), "max-bpw=4.5,5".into()], &[Method::Rtn, Method::Imatrix]).unwrap();
        assert_eq!(r.len(), 8);
        assert!(grid(&["colour=red".into()], &[Method::Rtn]).unwrap_err().to_string().contains("unknown key"));
        assert!(grid(&["max-kld=x".into()], &[Method::Rtn]).is_err());
    }
}
