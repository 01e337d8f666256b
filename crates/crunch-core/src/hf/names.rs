//! Tensor names: Hugging Face checkpoint names <-> the GGUF names llama.cpp uses, with each
//! tensor's role (so shapes can be checked against `config.json`). One table per family, read in
//! both directions.

use super::config::HfArch;

/// What a tensor is, independent of the naming scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    TokenEmbd,
    PosEmbd,
    TokenTypes,
    EmbdNorm,
    Output,
    OutputNorm,
    AttnNorm,
    AttnQ,
    AttnK,
    AttnV,
    AttnOut,
    AttnOutNorm,
    FfnNorm,
    FfnGate,
    FfnUp,
    FfnDown,
    LayerOutNorm,
    /// Gemma 3's per-head RMSNorm of the queries (`head_dim` wide).
    AttnQNorm,
    /// Gemma 3's per-head RMSNorm of the keys (`head_dim` wide).
    AttnKNorm,
    /// Gemma 3's norm of the attention output, before the residual add.
    PostAttnNorm,
    /// Gemma 3's norm of the FFN output, before the residual add.
    PostFfwNorm,
}

/// `.weight` or `.bias`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    Weight,
    Bias,
}

impl Part {
    pub fn suffix(self) -> &'static str {
        match self {
            Part::Weight => "weight",
            Part::Bias => "bias",
        }
    }
}

/// One tensor identified: its role, layer (for per-layer tensors) and part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorId {
    pub role: Role,
    pub layer: Option<u32>,
    pub part: Part,
}

/// `(hf stem, gguf stem, role)`; `{L}` stands for the layer number; `.weight`/`.bias` are appended.
type Entry = (&'static str, &'static str, Role);

const LLAMA: &[Entry] = &[
    ("model.embed_tokens", "token_embd", Role::TokenEmbd),
    ("model.norm", "output_norm", Role::OutputNorm),
    ("lm_head", "output", Role::Output),
    ("model.layers.{L}.input_layernorm", "blk.{L}.attn_norm", Role::AttnNorm),
    ("model.layers.{L}.self_attn.q_proj", "blk.{L}.attn_q", Role::AttnQ),
    ("model.layers.{L}.self_attn.k_proj", "blk.{L}.attn_k", Role::AttnK),
    ("model.layers.{L}.self_attn.v_proj", "blk.{L}.attn_v", Role::AttnV),
    ("model.layers.{L}.self_attn.o_proj", "blk.{L}.attn_output", Role::AttnOut),
    ("model.layers.{L}.post_attention_layernorm", "blk.{L}.ffn_norm", Role::FfnNorm),
    ("model.layers.{L}.mlp.gate_proj", "blk.{L}.ffn_gate", Role::FfnGate),
    ("model.layers.{L}.mlp.up_proj", "blk.{L}.ffn_up", Role::FfnUp),
    ("model.layers.{L}.mlp.down_proj", "blk.{L}.ffn_down", Role::FfnDown),
];

/// Gemma 3: Llama's names, but `post_attention_layernorm` is the norm *after* attention (GGUF
/// `post_attention_norm`) and the FFN's input norm is `pre_feedforward_layernorm` (GGUF `ffn_norm`).
const GEMMA3: &[Entry] = &[
    ("model.embed_tokens", "token_embd", Role::TokenEmbd),
    ("model.norm", "output_norm", Role::OutputNorm),
    ("lm_head", "output", Role::Output),
    ("model.layers.{L}.input_layernorm", "blk.{L}.attn_norm", Role::AttnNorm),
    ("model.layers.{L}.self_attn.q_proj", "blk.{L}.attn_q", Role::AttnQ),
    ("model.layers.{L}.self_attn.k_proj", "blk.{L}.attn_k", Role::AttnK),
    ("model.layers.{L}.self_attn.v_proj", "blk.{L}.attn_v", Role::AttnV),
    ("model.layers.{L}.self_attn.o_proj", "blk.{L}.attn_output", Role::AttnOut),
    ("model.layers.{L}.self_attn.q_norm", "blk.{L}.attn_q_norm", Role::AttnQNorm),
    ("model.layers.{L}.self_attn.k_norm", "blk.{L}.attn_k_norm", Role::AttnKNorm),
    ("model.layers.{L}.post_attention_layernorm", "blk.{L}.post_attention_norm", Role::PostAttnNorm),
    ("model.layers.{L}.pre_feedforward_layernorm", "blk.{L}.ffn_norm", Role::FfnNorm),
    ("model.layers.{L}.post_feedforward_layernorm", "blk.{L}.post_ffw_norm", Role::PostFfwNorm),
    ("model.layers.{L}.mlp.gate_proj", "blk.{L}.ffn_gate", Role::FfnGate),
    ("model.layers.{L}.mlp.up_proj", "blk.{L}.ffn_up", Role::FfnUp),
    ("model.layers.{L}.mlp.down_proj", "blk.{L}.ffn_down", Role::FfnDown),
];

const BERT: &[Entry] = &[
    ("embeddings.word_embeddings", "token_embd", Role::TokenEmbd),
    ("embeddings.position_embeddings", "position_embd", Role::PosEmbd),
    ("embeddings.token_type_embeddings", "token_types", Role::TokenTypes),
    ("embeddings.LayerNorm", "token_embd_norm", Role::EmbdNorm),
    ("encoder.layer.{L}.attention.self.query", "blk.{L}.attn_q", Role::AttnQ),
    ("encoder.layer.{L}.attention.self.key", "blk.{L}.attn_k", Role::AttnK),
    ("encoder.layer.{L}.attention.self.value", "blk.{L}.attn_v", Role::AttnV),
    ("encoder.layer.{L}.attention.output.dense", "blk.{L}.attn_output", Role::AttnOut),
    ("encoder.layer.{L}.attention.output.LayerNorm", "blk.{L}.attn_output_norm", Role::AttnOutNorm),
    ("encoder.layer.{L}.intermediate.dense", "blk.{L}.ffn_up", Role::FfnUp),
    ("encoder.layer.{L}.output.dense", "blk.{L}.ffn_down", Role::FfnDown),
    ("encoder.layer.{L}.output.LayerNorm", "blk.{L}.layer_output_norm", Role::LayerOutNorm),
];

fn table(arch: HfArch) -> &'static [Entry] {
    match arch {
        HfArch::Llama | HfArch::Qwen2 => LLAMA,
        HfArch::Gemma3 => GEMMA3,
        HfArch::Bert => BERT,
    }
}

/// What to do with a checkpoint tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mapped {
    /// Convert it under this GGUF name.
    Tensor { gguf: String, id: TensorId },
    /// Not used by llama.cpp (rotary caches, BERT pooler and heads, position ids): leave it out.
    Skip,
}

/// Match `name` against a stem pattern with an optional `{L}`, returning the layer number.
fn match_stem(pattern: &str, name: &str) -> Option<Option<u32>> {
    match pattern.split_once("{L}") {
        None => (pattern == name).then_some(None),
        Some((pre, post)) => {
            let rest = name.strip_prefix(pre)?;
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits == 0 || (digits > 1 && rest.starts_with('0')) {
                return None;
            }
            if &rest[digits..] != post {
                return None;
            }
            rest[..digits].parse().ok().map(Some)
        }
    }
}

fn split_part(name: &str) -> Option<(&str, Part)> {
    if let Some(s) = name.strip_suffix(".weight") {
        Some((s, Part::Weight))
    } else {
        name.strip_suffix(".bias").map(|s| (s, Part::Bias))
    }
}

/// Normalise a Hugging Face name the way llama.cpp's per-family filters do before mapping
/// (`bert.` prefix, `gamma`/`beta`, a bare `LlamaModel`'s missing `model.` prefix).
fn normalise(arch: HfArch, name: &str) -> String {
    match arch {
        HfArch::Bert => {
            let mut n = name.strip_prefix("bert.").unwrap_or(name).to_string();
            if let Some(s) = n.strip_suffix(".gamma") {
                n = format!("{s}.weight");
            } else if let Some(s) = n.strip_suffix(".beta") {
                n = format!("{s}.bias");
            }
            n
        }
        HfArch::Llama | HfArch::Qwen2 | HfArch::Gemma3 => name.to_string(),
    }
}

/// Map a checkpoint tensor name to its GGUF name.
///
/// Returns `None` for a name that belongs to no known tensor of the family (the caller reports
/// it, naming the tensor).
pub fn hf_to_gguf(arch: HfArch, name: &str) -> Option<Mapped> {
    let n = normalise(arch, name);
    // Tensors llama.cpp drops.
    if n.ends_with(".rotary_emb.inv_freq") || n.ends_with(".attention.masked_bias") || n.ends_with(".attention.bias") {
        return Some(Mapped::Skip);
    }
    if arch == HfArch::Bert
        && (n == "embeddings.position_ids"
            || n.starts_with("pooler.")
            || n.starts_with("cls.predictions")
            || n.starts_with("cls.seq_relationship"))
    {
        return Some(Mapped::Skip);
    }
    let (stem, part) = split_part(&n)?;
    for &(hf, gguf, role) in table(arch) {
        if let Some(layer) = match_stem(hf, stem) {
            let g = match layer {
                Some(l) => gguf.replace("{L}", &l.to_string()),
                None => gguf.to_string(),
            };
            return Some(Mapped::Tensor { gguf: format!("{g}.{}", part.suffix()), id: TensorId { role, layer, part } });
        }
    }
    None
}

/// Map a GGUF tensor name back to the Hugging Face name (for export), with its identity.
pub fn gguf_to_hf(arch: HfArch, name: &str) -> Option<(String, TensorId)> {
    let (stem, part) = split_part(name)?;
    for &(hf, gguf, role) in table(arch) {
        if let Some(layer) = match_stem(gguf, stem) {
            let h = match layer {
                Some(l) => hf.replace("{L}", &l.to_string()),
                None => hf.to_string(),
            };
            return Some((format!("{h}.{}", part.suffix()), TensorId { role, layer, part }));
        }
    }
    None
}

/// The GGUF name of a tensor.
pub fn gguf_name(arch: HfArch, id: TensorId) -> String {
    let (_, g, _) = table(arch).iter().find(|(_, _, r)| *r == id.role).copied().unwrap_or(("", "", id.role));
    let stem = match id.layer {
        Some(l) => g.replace("{L}", &l.to_string()),
        None => g.to_string(),
    };
    format!("{stem}.{}", id.part.suffix())
}

/// The Hugging Face name of a tensor.
pub fn hf_name(arch: HfArch, id: TensorId) -> String {
    let (h, _, _) = table(arch).iter().find(|(_, _, r)| *r == id.role).copied().unwrap_or(("", "", id.role));
    let stem = match id.layer {
        Some(l) => h.replace("{L}", &l.to_string()),
        None => h.to_string(),
    };
    format!("{stem}.{}", id.part.suffix())
}

/// The tensors a model of this family must have (the output projection is optional: tied
/// embeddings), in llama.cpp's usual order.
pub fn required(arch: HfArch, n_layer: u32) -> Vec<TensorId> {
    let w = |role, layer| TensorId { role, layer, part: Part::Weight };
    let b = |role, layer| TensorId { role, layer, part: Part::Bias };
    let mut out = Vec::new();
    match arch {
        HfArch::Llama | HfArch::Qwen2 => {
            out.push(w(Role::TokenEmbd, None));
            out.push(w(Role::OutputNorm, None));
            for l in 0..n_layer {
                for r in [
                    Role::AttnNorm,
                    Role::AttnQ,
                    Role::AttnK,
                    Role::AttnV,
                    Role::AttnOut,
                    Role::FfnNorm,
                    Role::FfnGate,
                    Role::FfnUp,
                    Role::FfnDown,
                ] {
                    out.push(w(r, Some(l)));
                }
                if arch == HfArch::Qwen2 {
                    for r in [Role::AttnQ, Role::AttnK, Role::AttnV] {
                        out.push(b(r, Some(l)));
                    }
                }
            }
        }
        HfArch::Gemma3 => {
            out.push(w(Role::TokenEmbd, None));
            out.push(w(Role::OutputNorm, None));
            for l in 0..n_layer {
                for r in [
                    Role::AttnNorm,
                    Role::AttnQ,
                    Role::AttnK,
                    Role::AttnV,
                    Role::AttnOut,
                    Role::AttnQNorm,
                    Role::AttnKNorm,
                    Role::PostAttnNorm,
                    Role::FfnNorm,
                    Role::FfnGate,
                    Role::FfnUp,
                    Role::FfnDown,
                    Role::PostFfwNorm,
                ] {
                    out.push(w(r, Some(l)));
                }
            }
        }
        HfArch::Bert => {
            out.extend([w(Role::TokenEmbd, None), w(Role::PosEmbd, None), w(Role::TokenTypes, None)]);
            out.extend([w(Role::EmbdNorm, None), b(Role::EmbdNorm, None)]);
            for l in 0..n_layer {
                for r in [
                    Role::AttnQ,
                    Role::AttnK,
                    Role::AttnV,
                    Role::AttnOut,
                    Role::AttnOutNorm,
                    Role::FfnUp,
                    Role::FfnDown,
                    Role::LayerOutNorm,
                ] {
                    out.push(w(r, Some(l)));
                    out.push(b(r, Some(l)));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_names_both_ways() {
        let m = hf_to_gguf(HfArch::Llama, "model.layers.12.self_attn.k_proj.weight").unwrap();
        let Mapped::Tensor { gguf, id } = m else { panic!() };
        assert_eq!(gguf, "blk.12.attn_k.weight");
        assert_eq!(id, TensorId { role: Role::AttnK, layer: Some(12), part: Part::Weight });
        assert_eq!(gguf_to_hf(HfArch::Llama, &gguf).unwrap().0, "model.layers.12.self_attn.k_proj.weight");
        assert_eq!(gguf_name(HfArch::Llama, id), gguf);
        assert_eq!(
            hf_to_gguf(HfArch::Llama, "lm_head.weight").unwrap(),
            Mapped::Tensor {
                gguf: "output.weight".into(),
                id: TensorId { role: Role::Output, layer: None, part: Part::Weight }
            }
        );
        assert_eq!(hf_to_gguf(HfArch::Llama, "model.layers.0.self_attn.rotary_emb.inv_freq"), Some(Mapped::Skip));
        assert_eq!(hf_to_gguf(HfArch::Llama, "model.layers.01.mlp.up_proj.weight"), None);
        assert_eq!(hf_to_gguf(HfArch::Llama, "model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(hf_to_gguf(HfArch::Llama, "vision_tower.weight"), None);
    }

    #[test]
    fn bert_names_and_filters() {
        let g = |n| match hf_to_gguf(HfArch::Bert, n) {
            Some(Mapped::Tensor { gguf, .. }) => gguf,
            other => format!("{other:?}"),
        };
        assert_eq!(g("bert.embeddings.LayerNorm.gamma"), "token_embd_norm.weight");
        assert_eq!(g("encoder.layer.5.output.LayerNorm.bias"), "blk.5.layer_output_norm.bias");
        assert_eq!(g("encoder.layer.5.attention.output.LayerNorm.weight"), "blk.5.attn_output_norm.weight");
        assert_eq!(g("pooler.dense.weight"), "Some(Skip)");
        assert_eq!(g("embeddings.position_ids"), "Some(Skip)");
        assert_eq!(gguf_to_hf(HfArch::Bert, "blk.0.ffn_up.bias").unwrap().0, "encoder.layer.0.intermediate.dense.bias");
        assert_eq!(required(HfArch::Bert, 6).len(), 5 + 6 * 16);
    }

    /// Gemma 3's table as llama.cpp's `tensor_mapping.py` has it (note `post_attention_layernorm`,
    /// which is Llama's FFN norm but Gemma's post-attention norm), read both ways, for every role.
    #[test]
    fn gemma3_names_both_ways() {
        let pairs = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
            ("model.layers.7.input_layernorm.weight", "blk.7.attn_norm.weight"),
            ("model.layers.7.self_attn.q_proj.weight", "blk.7.attn_q.weight"),
            ("model.layers.7.self_attn.k_proj.weight", "blk.7.attn_k.weight"),
            ("model.layers.7.self_attn.v_proj.weight", "blk.7.attn_v.weight"),
            ("model.layers.7.self_attn.o_proj.weight", "blk.7.attn_output.weight"),
            ("model.layers.7.self_attn.q_norm.weight", "blk.7.attn_q_norm.weight"),
            ("model.layers.7.self_attn.k_norm.weight", "blk.7.attn_k_norm.weight"),
            ("model.layers.7.post_attention_layernorm.weight", "blk.7.post_attention_norm.weight"),
            ("model.layers.7.pre_feedforward_layernorm.weight", "blk.7.ffn_norm.weight"),
            ("model.layers.7.post_feedforward_layernorm.weight", "blk.7.post_ffw_norm.weight"),
            ("model.layers.7.mlp.gate_proj.weight", "blk.7.ffn_gate.weight"),
            ("model.layers.7.mlp.up_proj.weight", "blk.7.ffn_up.weight"),
            ("model.layers.7.mlp.down_proj.weight", "blk.7.ffn_down.weight"),
        ];
        assert_eq!(pairs.len(), GEMMA3.len());
        for (hf, gguf) in pairs {
            let Some(Mapped::Tensor { gguf: g, id }) = hf_to_gguf(HfArch::Gemma3, hf) else { panic!("{hf}") };
            assert_eq!(g, gguf);
            assert_eq!(gguf_to_hf(HfArch::Gemma3, gguf).unwrap(), (hf.to_string(), id));
            assert_eq!((gguf_name(HfArch::Gemma3, id), hf_name(HfArch::Gemma3, id)), (g.clone(), hf.to_string()));
        }
        // Llama's reading of the same name is different: the table is per family.
        let Some(Mapped::Tensor { gguf, .. }) =
            hf_to_gguf(HfArch::Llama, "model.layers.0.post_attention_layernorm.weight")
        else {
            panic!()
        };
        assert_eq!(gguf, "blk.0.ffn_norm.weight");
        assert_eq!(hf_to_gguf(HfArch::Gemma3, "model.layers.0.self_attn.q_norm.bias").map(|_| ()), Some(()));
        assert_eq!(hf_to_gguf(HfArch::Gemma3, "vision_tower.x.weight"), None);
        let req = required(HfArch::Gemma3, 18);
        assert_eq!(req.len(), 2 + 18 * 13);
        assert!(req.iter().all(|id| id.part == Part::Weight));
        // Every norm and only the norms get llama.cpp's +1.
        for (hf, _) in pairs {
            let shifted = hf.ends_with("norm.weight");
            assert_eq!(HfArch::Gemma3.norm_shift(hf), if shifted { 1.0 } else { 0.0 }, "{hf}");
            assert_eq!(HfArch::Llama.norm_shift(hf), 0.0);
        }
        assert!(!HfArch::Gemma3.permutes_qk());
    }
}
