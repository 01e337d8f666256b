//! The space a search explores: a list of recipes (a recipe file, inline recipes, `--grid`), or a
//! product of choices (types per tensor group, or whole presets and fit targets; calibration
//! method; structured pruning; low-rank correction). A point of the space is one recipe; the
//! strategies of [`super::strategy`] choose which points to evaluate.
//!
//! ```yaml
//! space:
//!   base: Q8_0                 # preset for the tensors no group names (embeddings, norms …)
//!   groups:                    # one dimension per group: a regex on tensor names and its types
//!     - { name: attn, pattern: "attn_(q|k|v|output)", types: [Q4_K, Q5_K, Q6_K] }
//!     - { name: ffn,  pattern: "ffn_(gate|up)",       types: [Q3_K, Q4_K, Q5_K] }
//!   methods: [rtn, imatrix]    # calibration method (a dimension when more than one)
//!   prune: [null, { layers: 2 }]
//!   correction: [null, { rank: 16 }]
//! ```
//!
//! Without `groups`, `presets: [Q4_K_M, …]` and `fit_bpw: [4.5, …]` (fit's exact solver as the
//! inner step) together make the first dimension.

use super::recipe::{self, RawFit, RawRecipe, Recipe, RecipeFile};
use super::strategy::{Dim, Point, Space};
use crate::calibrate::structured::StructuredOptions;
use crate::error::{Error, Result};
use crate::lowrank::CorrectionSpec;
use serde::{Deserialize, Serialize};

/// A product space as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpaceSpec {
    /// The preset of every tensor no group names (default `Q8_0`).
    #[serde(default)]
    pub base: Option<String>,
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
    /// Whole llama.cpp presets as options of the first dimension (without `groups`).
    #[serde(default)]
    pub presets: Vec<String>,
    /// Fit targets in bits per weight as options of the first dimension (without `groups`).
    #[serde(default)]
    pub fit_bpw: Vec<f64>,
    /// Calibration methods (default `[rtn]`).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Structured pruning options (`null` = none).
    #[serde(default)]
    pub prune: Vec<Option<StructuredOptions>>,
    /// Low-rank corrections (`null` = none).
    #[serde(default)]
    pub correction: Vec<Option<CorrectionSpec>>,
}

/// One tensor group: the tensors whose names match `pattern` all get one of `types`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: String,
    pub pattern: String,
    pub types: Vec<String>,
}

/// What the first dimension of a product space chooses among.
#[derive(Clone, Debug, PartialEq)]
enum Shape {
    Groups,
    /// Presets and fit targets.
    Whole(Vec<RawRecipe>),
}

/// A search space ready for a strategy.
#[derive(Clone, Debug)]
pub enum SearchSpace {
    /// Listed recipes: one dimension, a choice among them.
    List(Vec<Recipe>),
    Product(Product),
}

/// A validated product space.
#[derive(Clone, Debug)]
pub struct Product {
    spec: SpaceSpec,
    shape: Shape,
    /// The dimensions that vary, by what they choose.
    axes: Vec<Axis>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Axis {
    Group(usize),
    Whole,
    Method,
    Prune,
    Correction,
}

const AT: &str = "search.space";

fn field(at: String, msg: impl std::fmt::Display) -> Error {
    Error::field(at, msg.to_string())
}

impl SearchSpace {
    /// Validate a product space: every type, pattern, method, pruning and correction is checked
    /// by building (and validating) one recipe per option.
    ///
    /// # Errors
    /// Field errors naming `search.space.<field>[i]`.
    pub fn product(spec: &SpaceSpec) -> Result<SearchSpace> {
        let base = spec.base.clone().unwrap_or_else(|| "Q8_0".into());
        let shape = if spec.groups.is_empty() {
            let mut whole: Vec<RawRecipe> =
                spec.presets.iter().map(|p| RawRecipe { preset: Some(p.clone()), ..Default::default() }).collect();
            whole.extend(spec.fit_bpw.iter().map(|b| RawRecipe {
                fit: Some(RawFit { max_bpw: Some(*b), ..Default::default() }),
                ..Default::default()
            }));
            if whole.is_empty() {
                return Err(field(format!("{AT}.groups"), "give groups, or presets / fit_bpw"));
            }
            Shape::Whole(whole)
        } else {
            if !spec.presets.is_empty() || !spec.fit_bpw.is_empty() {
                return Err(field(format!("{AT}.presets"), "presets and fit_bpw go without groups"));
            }
            Shape::Groups
        };
        for (i, g) in spec.groups.iter().enumerate() {
            if g.types.is_empty() {
                return Err(field(format!("{AT}.groups[{i}].types"), "give at least one type"));
            }
            if g.name.trim().is_empty() || spec.groups[..i].iter().any(|o| o.name == g.name) {
                return Err(field(format!("{AT}.groups[{i}].name"), format!("{:?}: empty or used twice", g.name)));
            }
        }
        let mut axes = Vec::new();
        match &shape {
            Shape::Groups => {
                axes.extend((0..spec.groups.len()).filter(|&i| spec.groups[i].types.len() > 1).map(Axis::Group))
            }
            Shape::Whole(w) if w.len() > 1 => axes.push(Axis::Whole),
            Shape::Whole(_) => {}
        }
        if spec.methods.len() > 1 {
            axes.push(Axis::Method);
        }
        if spec.prune.len() > 1 {
            axes.push(Axis::Prune);
        }
        if spec.correction.len() > 1 {
            axes.push(Axis::Correction);
        }
        let p = Product { spec: SpaceSpec { base: Some(base), ..spec.clone() }, shape, axes };
        // Every option once, each in a recipe with the others at their first option.
        let dims = p.dims();
        for (d, dim) in dims.dims.iter().enumerate() {
            let Dim::Choice(n) = dim else { continue };
            for k in 0..*n {
                let mut pt = vec![0.0; dims.dims.len()];
                pt[d] = k as f64;
                p.recipe(&pt).map_err(|e| field(format!("{AT}.{}[{k}]", p.axis_name(p.axes[d])), e))?;
            }
        }
        if dims.dims.is_empty() {
            p.recipe(&[]).map_err(|e| field(AT.into(), e))?;
        }
        Ok(SearchSpace::Product(p))
    }

    /// The strategy's view: one choice per dimension.
    pub fn dims(&self) -> Space {
        match self {
            SearchSpace::List(r) => Space { dims: vec![Dim::Choice(r.len())] },
            SearchSpace::Product(p) => p.dims(),
        }
    }

    /// The calibration methods the space's recipes use (each needs a session).
    pub fn methods(&self) -> Vec<crate::method::Method> {
        let mut v: Vec<crate::method::Method> = match self {
            SearchSpace::List(r) => r.iter().map(|r| r.method).collect(),
            // Validated when the space was built: every name parses.
            SearchSpace::Product(p) => p.spec.methods.iter().filter_map(|m| m.parse().ok()).collect(),
        };
        if v.is_empty() {
            v.push(crate::method::Method::Rtn);
        }
        let mut seen = Vec::new();
        v.retain(|m| {
            if seen.contains(m) {
                false
            } else {
                seen.push(*m);
                true
            }
        });
        v
    }

    /// Points in the space.
    pub fn len(&self) -> usize {
        self.dims()
            .dims
            .iter()
            .map(|d| match d {
                Dim::Choice(n) => *n,
                Dim::Real { .. } => usize::MAX,
            })
            .fold(1usize, |a, n| a.saturating_mul(n))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The recipe at a point.
    ///
    /// # Errors
    /// A point outside the space; recipe validation errors.
    pub fn recipe(&self, p: &[f64]) -> Result<Recipe> {
        match self {
            SearchSpace::List(r) => {
                let i = index(p, 0, r.len())?;
                Ok(r[i].clone())
            }
            SearchSpace::Product(s) => s.recipe(p),
        }
    }

    /// Every point, in the grid's order (the last dimension fastest).
    pub fn points(&self) -> Vec<Point> {
        let dims: Vec<usize> = self
            .dims()
            .dims
            .iter()
            .map(|d| match d {
                Dim::Choice(n) => *n,
                Dim::Real { .. } => 1,
            })
            .collect();
        let mut out = vec![Vec::new()];
        for n in dims {
            out = out.into_iter().flat_map(|p| (0..n).map(move |k| [p.clone(), vec![k as f64]].concat())).collect();
        }
        out
    }
}

fn index(p: &[f64], d: usize, n: usize) -> Result<usize> {
    let v = *p.get(d).ok_or_else(|| Error::Invalid(format!("point {p:?} has no coordinate {d}")))?;
    if !(v >= 0.0 && v.fract() == 0.0 && (v as usize) < n) {
        return Err(Error::Invalid(format!("point {p:?}: coordinate {d} is not one of 0..{n}")));
    }
    Ok(v as usize)
}

impl Product {
    fn dims(&self) -> Space {
        let n = |a: &Axis| match a {
            Axis::Group(i) => self.spec.groups[*i].types.len(),
            Axis::Whole => match &self.shape {
                Shape::Whole(w) => w.len(),
                Shape::Groups => 1,
            },
            Axis::Method => self.spec.methods.len(),
            Axis::Prune => self.spec.prune.len(),
            Axis::Correction => self.spec.correction.len(),
        };
        Space { dims: self.axes.iter().map(|a| Dim::Choice(n(a))).collect() }
    }

    fn axis_name(&self, a: Axis) -> String {
        match a {
            Axis::Group(i) => format!("groups[{i}].types"),
            Axis::Whole => "presets".into(),
            Axis::Method => "methods".into(),
            Axis::Prune => "prune".into(),
            Axis::Correction => "correction".into(),
        }
    }

    /// The option chosen on an axis (0 for an axis that does not vary).
    fn pick(&self, p: &[f64], a: Axis) -> Result<usize> {
        match self.axes.iter().position(|x| *x == a) {
            Some(d) => index(p, d, if let Dim::Choice(n) = self.dims().dims[d] { n } else { 1 }),
            None => Ok(0),
        }
    }

    fn recipe(&self, p: &[f64]) -> Result<Recipe> {
        if p.len() != self.axes.len() {
            return Err(Error::Invalid(format!("point {p:?}: the space has {} dimensions", self.axes.len())));
        }
        let mut parts: Vec<String> = Vec::new();
        let mut raw = match &self.shape {
            Shape::Groups => {
                let mut r = RawRecipe { preset: self.spec.base.clone(), ..Default::default() };
                for (i, g) in self.spec.groups.iter().enumerate() {
                    let ty = &g.types[self.pick(p, Axis::Group(i))?];
                    r.tensor_types.insert(g.pattern.clone(), ty.clone());
                    parts.push(format!("{}={ty}", g.name));
                }
                r
            }
            Shape::Whole(w) => {
                let r = w[self.pick(p, Axis::Whole)?].clone();
                parts.push(match (&r.preset, &r.fit) {
                    (Some(p), _) => p.clone(),
                    (None, Some(f)) => format!("fit-bpw-{}", f.max_bpw.unwrap_or_default()),
                    (None, None) => unreachable!("built with one of the two"),
                });
                r
            }
        };
        if let Some(m) = self.spec.methods.get(self.pick(p, Axis::Method)?) {
            raw.method = Some(m.clone());
            if m != "rtn" {
                parts.push(m.clone());
            }
        }
        if let Some(Some(pr)) = self.spec.prune.get(self.pick(p, Axis::Prune)?) {
            parts.push(recipe::prune_tag(pr));
            raw.prune = Some(pr.clone());
        }
        if let Some(Some(c)) = self.spec.correction.get(self.pick(p, Axis::Correction)?) {
            parts.push(c.tag());
            raw.correction = Some(c.clone());
        }
        raw.name = Some(parts.join(","));
        let file = RecipeFile { recipes: vec![raw], ..Default::default() };
        let mut r = recipe::validate(&file, AT)?;
        Ok(r.remove(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(y: &str) -> SpaceSpec {
        serde_saphyr::from_str(y).unwrap()
    }

    #[test]
    fn groups_make_one_dimension_each() {
        let s = SearchSpace::product(&spec(
            "groups:\n  - { name: attn, pattern: 'attn_', types: [Q4_K, Q6_K] }\n  - { name: ffn, pattern: 'ffn_', types: [Q3_K, Q4_K, Q5_K] }\nmethods: [rtn, imatrix]\n",
        ))
        .unwrap();
        assert_eq!(s.len(), 12);
        let pts = s.points();
        assert_eq!(pts.len(), 12);
        let r = s.recipe(&[1.0, 2.0, 1.0]).unwrap();
        assert_eq!(r.name, "attn=Q6_K,ffn=Q5_K,imatrix");
        assert_eq!(r.method, crate::method::Method::Imatrix);
        assert_eq!(s.methods(), [crate::method::Method::Rtn, crate::method::Method::Imatrix]);
        match &r.kind {
            recipe::RecipeKind::Preset { ftype, tensor_types } => {
                assert_eq!(ftype.name(), "Q8_0");
                assert!(tensor_types.contains(&("ffn_".into(), "Q5_K".into())));
            }
            k => panic!("{k:?}"),
        }
        let names: std::collections::BTreeSet<String> = pts.iter().map(|p| s.recipe(p).unwrap().name).collect();
        assert_eq!(names.len(), 12);
        assert!(s.recipe(&[2.0, 0.0, 0.0]).is_err());
    }

    #[test]
    fn presets_and_fits_share_a_dimension() {
        let s = SearchSpace::product(&spec("presets: [Q4_K_M, Q4_0]\nfit_bpw: [4.5]\n")).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.recipe(&[2.0]).unwrap().name, "fit-bpw-4.5");
    }

    #[test]
    fn pruning_and_corrections_are_dimensions() {
        let s = SearchSpace::product(&spec(
            "presets: [Q4_K_M, Q3_K_M]\nfit_bpw: [4.5]\nmethods: [rtn, imatrix]\nprune: [null, { layers: 2 }]\ncorrection: [null, { rank: 16 }]\n",
        ))
        .unwrap();
        assert_eq!(s.dims().dims.len(), 4);
        assert_eq!(s.len(), 3 * 2 * 2 * 2);
        let r = s.recipe(&[2.0, 1.0, 1.0, 1.0]).unwrap();
        assert_eq!(r.name, "fit-bpw-4.5,imatrix,prune-2L,r16");
        assert!(r.prune.is_some() && r.correction.is_some());
        assert!(matches!(r.kind, recipe::RecipeKind::Fit(crate::fit::Target::MaxBpw(b)) if b == 4.5));
        let plain = s.recipe(&[0.0, 0.0, 0.0, 0.0]).unwrap();
        assert_eq!(plain.name, "Q4_K_M");
        assert!(plain.prune.is_none() && plain.correction.is_none());
        // Options that do not vary are not dimensions.
        let one = SearchSpace::product(&spec("presets: [Q4_0]\nmethods: [imatrix]\n")).unwrap();
        assert_eq!(one.dims().dims.len(), 0);
        assert_eq!(one.points(), vec![Vec::<f64>::new()]);
        assert_eq!(one.recipe(&[]).unwrap().name, "Q4_0,imatrix");
    }

    #[test]
    fn errors_name_the_option() {
        let e = SearchSpace::product(&spec("groups:\n  - { name: a, pattern: 'x', types: [Q4_K, Q9] }\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("search.space.groups[0].types[1]"), "{e}");
        let e =
            SearchSpace::product(&spec("presets: [Q4_0, Q4_K_M]\nmethods: [rtn, magic]\n")).unwrap_err().to_string();
        assert!(e.contains("search.space.methods[1]"), "{e}");
        assert!(SearchSpace::product(&spec("methods: [rtn]\n")).unwrap_err().to_string().contains("groups"));
    }
}
