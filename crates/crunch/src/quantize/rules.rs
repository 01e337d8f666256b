//! Which type each tensor gets under a preset: llama.cpp's per-tensor rules (`llama-quant.cpp`),
//! reproduced so that `crunch quantize MODEL Q4_K_M` plans exactly what `llama-quantize` plans.
//!
//! The rules look at the tensor's role (attention V, FFN down, output…), its layer, and a few
//! model facts (grouped-query ratio, experts, 70B), and bump sensitive tensors to more bits.
//! Tensors are visited in llama.cpp's order (non-layer tensors first, then by layer, then by
//! name), because some rules count tensors as they go.

use super::ftype::Ftype;
use crunch_core::GgmlType;

/// Broad role of a tensor, from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    Output,
    TokenEmbd,
    AttnQkv,
    AttnKvB,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

impl Category {
    pub fn of(name: &str) -> Category {
        let has = |s: &str| name.contains(s);
        if name == "output.weight" {
            Category::Output
        } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            Category::TokenEmbd
        } else if has("attn_qkv.weight") {
            Category::AttnQkv
        } else if has("attn_kv_b.weight") {
            Category::AttnKvB
        } else if has("attn_v.weight") {
            Category::AttnV
        } else if has("attn_k.weight") {
            Category::AttnK
        } else if has("attn_q.weight") {
            Category::AttnQ
        } else if has("attn_output.weight") {
            Category::AttnOutput
        } else if has("ffn_up") {
            Category::FfnUp
        } else if has("ffn_gate") {
            Category::FfnGate
        } else if has("ffn_down") {
            Category::FfnDown
        } else {
            Category::Other
        }
    }

    /// Attention-V-like tensors, the most sensitive to quantization.
    fn is_attn_v(self) -> bool {
        matches!(self, Category::AttnV | Category::AttnQkv | Category::AttnKvB)
    }
}

/// Model facts the rules depend on (from GGUF metadata).
#[derive(Clone, Debug, Default)]
pub struct ModelFacts {
    pub arch: String,
    pub n_layer: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub n_expert: u32,
    /// llama.cpp's LLM_TYPE_70B (Llama with 80 layers).
    pub is_70b: bool,
}

impl ModelFacts {
    fn n_gqa(&self) -> u32 {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }
    fn is_falcon(&self) -> bool {
        self.arch == "falcon"
    }
}

/// Name substrings of 2-D weights that are never quantized (small, or not matrices in use).
const NEVER_QUANTIZE: &[&str] = &[
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
];

/// Number of dimensions ignoring trailing 1s (ggml_n_dims).
pub fn n_dims(dims: &[u64]) -> usize {
    dims.iter().rposition(|&d| d > 1).map(|i| i + 1).unwrap_or(1)
}

/// Whether a tensor is a candidate for quantization at all (2-D+ weights that are not norms,
/// routers, position embeddings…).
pub fn allows_quantization(name: &str, dims: &[u64], quantize_output: bool) -> bool {
    n_dims(dims) >= 2
        && name.ends_with("weight")
        && (quantize_output || name != "output.weight")
        && name != "position_embd.weight"
        && name != "token_types.weight"
        && !NEVER_QUANTIZE.iter().any(|s| name.contains(s))
}

/// Counters the rules keep while walking the tensors.
#[derive(Clone, Debug, Default)]
pub struct RuleState {
    pub n_attention_wv: u32,
    pub i_attention_wv: u32,
    pub i_ffn_down: u32,
    pub i_ffn_gate: u32,
    pub i_ffn_up: u32,
    pub has_tied_embeddings: bool,
    pub has_imatrix: bool,
}

fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

/// Layer of a tensor for the layer-dependent rules: the running counter, or (for MoE models,
/// whose expert tensors are not in layer order) the number in the name.
fn layer_of(counter: u32, facts: &ModelFacts, name: &str) -> Result<(i64, i64), String> {
    let n_layer = facts.n_layer as i64;
    if facts.n_expert > 1 {
        let layer = name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| format!("cannot determine the layer of tensor {name}"))?;
        if layer < 0 || layer >= n_layer {
            return Err(format!("tensor {name} is in layer {layer}, but the model has {n_layer} layers"));
        }
        return Ok((layer, n_layer));
    }
    Ok((counter as i64, n_layer))
}

/// The preset's choice for one quantizable tensor (before user overrides and the block-size
/// fallback). `new_type` starts as the preset's default type.
pub fn preset_type(
    st: &mut RuleState,
    facts: &ModelFacts,
    ftype: Ftype,
    name: &str,
    row_len: u64,
    category: Category,
    output_type: Option<GgmlType>,
) -> Result<GgmlType, String> {
    use Ftype as F;
    use GgmlType as T;
    let mut new_type = ftype.default_type();
    let gqa = facts.n_gqa();
    let is = |list: &[Ftype]| list.contains(&ftype);

    if category == Category::Output || (st.has_tied_embeddings && category == Category::TokenEmbd) {
        if let Some(t) = output_type {
            return Ok(t);
        }
        if facts.is_falcon() || !row_len.is_multiple_of(new_type.block_size() as u64) {
            new_type = T::Q8_0;
        } else if is(&[F::IQ2_XXS, F::IQ2_XS, F::IQ3_XXS, F::IQ1_S, F::IQ2_S, F::IQ2_M, F::IQ1_M]) {
            new_type = T::Q5_K;
        } else if new_type != T::Q8_0 {
            new_type = T::Q6_K;
        }
        return Ok(new_type);
    }
    match category {
        Category::TokenEmbd => {
            // (--token-embedding-type was applied by the caller before the rules run)
            if is(&[F::IQ2_XXS, F::IQ2_XS, F::IQ1_S, F::IQ1_M]) {
                new_type = T::Q2_K;
            } else if is(&[F::IQ2_S, F::IQ2_M, F::IQ3_XXS]) {
                new_type = T::IQ3_S;
            } else if is(&[F::TQ1_0, F::TQ2_0]) {
                new_type = T::Q4_K;
            }
        }
        _ if is(&[F::IQ2_XXS, F::IQ2_XS, F::IQ1_S, F::IQ2_S, F::IQ2_M, F::IQ1_M]) => {
            let iq2sm = is(&[F::IQ2_S, F::IQ2_M]);
            if category.is_attn_v() {
                new_type = if gqa >= 4 || facts.n_expert >= 4 {
                    T::Q4_K
                } else if iq2sm {
                    T::IQ3_S
                } else {
                    T::Q2_K
                };
                st.i_attention_wv += 1;
            } else if facts.n_expert == 8 && category == Category::AttnK {
                new_type = T::Q4_K;
            } else if category == Category::FfnDown {
                if (st.i_ffn_down as i64) < facts.n_layer as i64 / 8 {
                    new_type = if iq2sm { T::IQ3_S } else { T::Q2_K };
                }
                st.i_ffn_down += 1;
            } else if category == Category::AttnOutput {
                if facts.n_expert == 8 {
                    new_type = T::Q5_K;
                } else if is(&[F::IQ1_S, F::IQ1_M]) {
                    new_type = T::IQ2_XXS;
                } else if iq2sm {
                    new_type = T::IQ3_S;
                }
            }
        }
        c if c.is_attn_v() => {
            if ftype == F::Q2_K {
                new_type = if gqa >= 4 { T::Q4_K } else { T::Q3_K };
            } else if ftype == F::Q2_K_S && gqa >= 4 {
                new_type = T::Q4_K;
            } else if ftype == F::IQ3_XXS {
                new_type = if gqa >= 4 {
                    T::Q4_K
                } else if !st.has_imatrix {
                    T::IQ3_S
                } else {
                    T::IQ3_XXS
                };
            } else if (is(&[F::IQ3_XS, F::IQ3_S]) && gqa >= 4) || ftype == F::IQ3_M {
                new_type = T::Q4_K;
            } else if ftype == F::Q3_K_M {
                new_type = if st.i_attention_wv < 2 { T::Q5_K } else { T::Q4_K };
            } else if ftype == F::Q3_K_L || (is(&[F::IQ4_NL, F::IQ4_XS]) && gqa >= 4) {
                new_type = T::Q5_K;
            } else if is(&[F::Q4_K_M, F::Q5_K_M]) && use_more_bits(st.i_attention_wv as i64, st.n_attention_wv as i64) {
                new_type = T::Q6_K;
            } else if ftype == F::Q4_K_S && st.i_attention_wv < 4 {
                new_type = T::Q5_K;
            }
            if facts.is_70b && matches!(new_type, T::Q3_K | T::Q4_K) {
                new_type = T::Q5_K;
            }
            if facts.n_expert == 8 {
                new_type = T::Q8_0;
            }
            st.i_attention_wv += 1;
        }
        Category::AttnK => {
            if facts.n_expert == 8 {
                new_type = T::Q8_0;
            } else if ftype == F::IQ3_XS {
                new_type = T::IQ3_XXS;
            } else if ftype == F::IQ3_XXS {
                new_type = T::IQ2_S;
            }
        }
        Category::AttnQ => {
            if ftype == F::IQ3_XS {
                new_type = T::IQ3_XXS;
            } else if ftype == F::IQ3_XXS {
                new_type = T::IQ2_S;
            }
        }
        Category::FfnDown => {
            let (i_layer, n_layer) = layer_of(st.i_ffn_down, facts, name)?;
            let falcon = facts.is_falcon();
            if ftype == F::Q2_K {
                new_type = T::Q3_K;
            } else if ftype == F::Q2_K_S {
                if i_layer < n_layer / 8 {
                    new_type = T::Q4_K;
                }
            } else if ftype == F::IQ3_XXS && !st.has_imatrix {
                new_type = if i_layer < n_layer / 8 { T::Q4_K } else { T::Q3_K };
            } else if ftype == F::Q3_K_M {
                new_type = if i_layer < n_layer / 16 {
                    T::Q5_K
                } else if !falcon || use_more_bits(i_layer, n_layer) {
                    T::Q4_K
                } else {
                    T::Q3_K
                };
            } else if ftype == F::IQ3_M
                && (i_layer < n_layer / 8 || (facts.n_expert == 8 && use_more_bits(i_layer, n_layer)))
            {
                new_type = T::Q4_K;
            } else if ftype == F::Q3_K_L {
                new_type = if falcon { T::Q4_K } else { T::Q5_K };
            } else if ftype == F::Q4_K_M {
                if falcon {
                    new_type = if i_layer < n_layer / 16 {
                        T::Q6_K
                    } else if use_more_bits(i_layer, n_layer) {
                        T::Q5_K
                    } else {
                        T::Q4_K
                    };
                } else if use_more_bits(i_layer, n_layer) {
                    new_type = T::Q6_K;
                }
            } else if i_layer < n_layer / 8 && is(&[F::IQ4_NL, F::IQ4_XS]) && !st.has_imatrix {
                new_type = T::Q5_K;
            } else if ftype == F::Q5_K_M && use_more_bits(i_layer, n_layer) {
                new_type = T::Q6_K;
            } else if ftype == F::Q4_K_S && !falcon && i_layer < n_layer / 8 {
                new_type = T::Q5_K;
            } else if is(&[F::Q4_0, F::Q5_0]) && st.has_imatrix && i_layer < n_layer / 8 {
                new_type = if ftype == F::Q4_0 { T::Q4_1 } else { T::Q5_1 };
            }
            st.i_ffn_down += 1;
        }
        Category::AttnOutput => {
            if !facts.is_falcon() {
                if facts.n_expert == 8 {
                    if is(&[
                        F::Q2_K,
                        F::IQ3_XS,
                        F::IQ3_XXS,
                        F::Q3_K_S,
                        F::Q3_K_M,
                        F::IQ4_NL,
                        F::Q4_K_S,
                        F::Q4_K_M,
                        F::IQ3_S,
                        F::IQ3_M,
                        F::IQ4_XS,
                    ]) {
                        new_type = T::Q5_K;
                    }
                } else if ftype == F::Q2_K {
                    new_type = T::Q3_K;
                } else if ftype == F::IQ3_XXS {
                    new_type = T::IQ3_S;
                } else if ftype == F::Q3_K_M || ftype == F::IQ3_M {
                    new_type = T::Q4_K;
                } else if ftype == F::Q3_K_L {
                    new_type = T::Q5_K;
                }
            } else if ftype == F::Q3_K_L {
                new_type = T::Q4_K;
            }
        }
        Category::AttnQkv => {
            // unreachable in practice: attn_qkv is attn-V-like and handled above
        }
        Category::FfnGate | Category::FfnUp => {
            let counter = if category == Category::FfnGate { st.i_ffn_gate } else { st.i_ffn_up };
            let (i_layer, n_layer) = layer_of(counter, facts, name)?;
            if ftype == F::IQ3_XS && i_layer >= n_layer / 8 && i_layer < 7 * n_layer / 8 {
                new_type = T::IQ3_XXS;
            }
            if category == Category::FfnGate {
                st.i_ffn_gate += 1;
            } else {
                st.i_ffn_up += 1;
            }
        }
        _ => {}
    }
    Ok(new_type)
}

/// The type used instead when the row length is not a multiple of the chosen type's block size
/// (llama.cpp's fallback table), or `None` when no fallback exists.
pub fn fallback(target: GgmlType, row_len: u64) -> Option<GgmlType> {
    use GgmlType as T;
    if row_len.is_multiple_of(target.block_size() as u64) {
        return Some(target);
    }
    let alt = match target {
        T::IQ1_S | T::IQ1_M | T::IQ2_XXS | T::IQ2_XS | T::IQ2_S | T::IQ3_XXS | T::IQ3_S | T::IQ4_XS => T::IQ4_NL,
        T::Q2_K | T::Q3_K | T::TQ1_0 | T::TQ2_0 => T::Q4_0,
        T::Q4_K => T::Q5_0,
        T::Q5_K => T::Q5_1,
        T::Q6_K => T::Q8_0,
        t if t.block_size() <= 32 => t,
        _ => return None,
    };
    Some(if !row_len.is_multiple_of(alt.block_size() as u64) { T::F16 } else { alt })
}

/// Whether llama.cpp insists on an importance matrix for this tensor and type.
pub fn requires_imatrix(name: &str, ty: GgmlType, ftype: Ftype) -> bool {
    if matches!(Category::of(name), Category::TokenEmbd | Category::Output) {
        return false;
    }
    match ty {
        GgmlType::IQ3_XXS
        | GgmlType::IQ2_XXS
        | GgmlType::IQ2_XS
        | GgmlType::IQ2_S
        | GgmlType::IQ1_M
        | GgmlType::IQ1_S => true,
        GgmlType::Q2_K => ftype == Ftype::Q2_K_S,
        _ => false,
    }
}

/// Sort key reproducing llama.cpp's tensor order: non-layer tensors first, then by layer number,
/// then by name.
pub fn llama_order_key(name: &str) -> (i64, String) {
    let layer = name
        .strip_prefix("blk.")
        .and_then(|r| {
            let digits: String = r.chars().take_while(|c| c.is_ascii_digit()).collect();
            if r[digits.len()..].starts_with('.') {
                digits.parse::<i64>().ok()
            } else {
                None
            }
        })
        .unwrap_or(-1);
    (layer, name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_and_candidates() {
        assert_eq!(Category::of("blk.3.attn_v.weight"), Category::AttnV);
        assert_eq!(Category::of("blk.3.ffn_down.weight"), Category::FfnDown);
        assert_eq!(Category::of("token_embd.weight"), Category::TokenEmbd);
        assert!(allows_quantization("blk.0.attn_q.weight", &[576, 576], true));
        assert!(!allows_quantization("blk.0.attn_norm.weight", &[576], true));
        assert!(!allows_quantization("blk.0.ffn_norm.weight", &[576, 4], true));
        assert!(!allows_quantization("output.weight", &[576, 100], false));
        assert!(!allows_quantization("blk.0.attn_q.bias", &[576, 2], true));
        assert!(!allows_quantization("x.weight", &[576, 1, 1], true));
    }

    #[test]
    fn fallback_table() {
        assert_eq!(fallback(GgmlType::Q4_K, 576), Some(GgmlType::Q5_0));
        assert_eq!(fallback(GgmlType::Q6_K, 576), Some(GgmlType::Q8_0));
        assert_eq!(fallback(GgmlType::Q4_K, 1536), Some(GgmlType::Q4_K));
        assert_eq!(fallback(GgmlType::IQ4_XS, 576), Some(GgmlType::IQ4_NL));
        assert_eq!(fallback(GgmlType::Q3_K, 100), Some(GgmlType::F16));
        assert_eq!(fallback(GgmlType::Q4_0, 100), Some(GgmlType::F16));
    }

    #[test]
    fn llama_order() {
        let mut names = vec!["blk.10.a", "blk.2.b", "output.weight", "blk.2.a", "token_embd.weight"];
        names.sort_by_key(|n| llama_order_key(n));
        assert_eq!(names, vec!["output.weight", "token_embd.weight", "blk.2.a", "blk.2.b", "blk.10.a"]);
    }

    #[test]
    fn use_more_bits_matches_llama_pattern() {
        let picked: Vec<i64> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(picked, vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
    }
}
