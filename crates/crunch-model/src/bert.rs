//! BERT encoders (all-MiniLM, bge, sentence-transformers models) on the CPU: sentence embeddings
//! from a GGUF file (llama.cpp's `bert` architecture and tensor names) or straight from a Hugging
//! Face folder (`config.json`, `*.safetensors`, `tokenizer.json`, and sentence-transformers'
//! `modules.json` / `1_Pooling/config.json` / `sentence_bert_config.json`), through the
//! [`TensorStore`].
//!
//! The graph is Hugging Face's `BertModel` (and llama.cpp's `llm_build_bert`): word + position +
//! token-type (type 0) embeddings, LayerNorm; per layer: Q/K/V with biases, bidirectional softmax
//! attention, output projection + residual + LayerNorm, up projection + GELU, down projection +
//! residual + LayerNorm; then mean (or CLS / last-token) pooling and, when the model asks for it,
//! L2 normalisation.
//!
//! GELU is the exact erf form Hugging Face's `"gelu"` uses, for both formats. llama.cpp computes
//! `ggml_gelu`, the tanh approximation `0.5x(1 + tanh(√(2/π)(x + 0.044715x³)))` (on the CPU read
//! from an f16 table), which differs from the erf form by at most about 5e-4 per activation; so
//! crunch reproduces the original model rather than llama.cpp's rounding of it.
//!
//! Several sequences run as one batch of tokens: every linear layer is one matrix product over all
//! their tokens (see [`matmul`]); attention stays within each sequence, so no padding or mask is
//! needed and the result equals running each sequence alone.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value as Json;

use crate::error::{ModelError, Result};
use crate::matmul::{dot_f32, matmul, MatmulMode, WeightView};
use crate::ops::{add_assign, add_bias};
use crate::store::{StoreFormat, TensorStore};
use crate::tokenizer::Tokenizer;
use crate::Observer;

/// How token states become one sentence vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the sequence's tokens (sentence-transformers' `pooling_mode_mean_tokens`).
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// The last token.
    Last,
}

/// Which GELU the feed-forward layers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gelu {
    /// `x Φ(x)` with the error function (Hugging Face `"gelu"`).
    Erf,
    /// The tanh approximation (Hugging Face `"gelu_new"`, `"gelu_pytorch_tanh"`).
    Tanh,
}

/// BERT hyper-parameters and the sentence-embedding settings.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_ff: usize,
    /// Rows of the position embedding (`max_position_embeddings`, GGUF `bert.context_length`).
    pub n_pos: usize,
    pub n_token_types: usize,
    pub norm_eps: f32,
    pub gelu: Gelu,
    pub pooling: Pooling,
    /// L2-normalise the pooled vector (sentence-transformers' `Normalize` module; llama.cpp's
    /// embedding tool also normalises by default, so GGUF models default to true).
    pub normalize: bool,
    /// Longest input in tokens, `[CLS]` and `[SEP]` included; longer texts are cut (keeping
    /// `[SEP]`) as sentence-transformers does. `max_seq_length` of `sentence_bert_config.json`, else
    /// `n_pos`.
    pub max_tokens: usize,
}

impl BertConfig {
    fn check(&self, what: &str) -> Result<()> {
        let bad = |reason: String| Err(ModelError::Config(format!("{what}: {reason}")));
        if self.n_embd == 0 || self.n_head == 0 || self.n_layer == 0 || self.n_ff == 0 || self.n_pos == 0 {
            return bad(format!("zero size in {self:?}"));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!("hidden size {} is not a multiple of {} heads", self.n_embd, self.n_head));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return bad(format!("layer norm epsilon {}", self.norm_eps));
        }
        if self.max_tokens < 2 {
            return bad(format!("maximum sequence length {} leaves no room for [CLS] and [SEP]", self.max_tokens));
        }
        Ok(())
    }

    /// From GGUF metadata (`bert.*` keys). `n_vocab` comes from the token embedding's shape.
    pub fn from_gguf(md: &crunch_core::gguf::Metadata, n_vocab: usize) -> Result<Self> {
        let arch = md.architecture().ok_or_else(|| ModelError::MissingKey("general.architecture".into()))?;
        if arch != "bert" {
            return Err(ModelError::WrongArch { what: "BERT encoder".into(), found: arch.into(), expected: "bert" });
        }
        let req = |k: &str| -> Result<usize> {
            let key = format!("bert.{k}");
            let v = md.get(&key).ok_or_else(|| ModelError::MissingKey(key.clone()))?;
            v.as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&v| v > 0 && v < (1 << 31))
                .ok_or(ModelError::BadKey { key, reason: format!("{v} is not a positive integer") })
        };
        let n_pos = req("context_length")?;
        let eps_key = "bert.attention.layer_norm_epsilon";
        let norm_eps = match md.get(eps_key) {
            None => return Err(ModelError::MissingKey(eps_key.into())),
            Some(v) => v.as_f64().filter(|x| x.is_finite() && *x >= 0.0).ok_or(ModelError::BadKey {
                key: eps_key.into(),
                reason: format!("{v} is not a non-negative number"),
            })? as f32,
        };
        let pooling = match md.get_u64("bert.pooling_type") {
            Some(1) => Pooling::Mean,
            Some(2) => Pooling::Cls,
            Some(3) => Pooling::Last,
            None | Some(0) => {
                tracing::warn!("bert.pooling_type is absent or NONE: using mean pooling");
                Pooling::Mean
            }
            Some(v) => {
                return Err(ModelError::BadKey {
                    key: "bert.pooling_type".into(),
                    reason: format!("{v} (crunch pools with 1 = mean, 2 = cls, 3 = last)"),
                })
            }
        };
        let c = BertConfig {
            n_vocab,
            n_embd: req("embedding_length")?,
            n_layer: req("block_count")?,
            n_head: req("attention.head_count")?,
            n_ff: req("feed_forward_length")?,
            n_pos,
            n_token_types: md.get_u64("tokenizer.ggml.token_type_count").unwrap_or(2) as usize,
            norm_eps,
            gelu: Gelu::Erf,
            pooling,
            normalize: true,
            max_tokens: n_pos,
        };
        c.check("GGUF metadata")?;
        Ok(c)
    }

    /// From a Hugging Face folder: `config.json` plus the sentence-transformers files if present.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg = read_json(&cfg_path)?;
        let file = cfg_path.display().to_string();
        let field_err =
            |field: &str, reason: String| ModelError::File { path: file.clone(), reason: format!("{field}: {reason}") };
        let model_type = cfg.get("model_type").and_then(Json::as_str).unwrap_or("");
        let archs: Vec<&str> = cfg
            .get("architectures")
            .and_then(Json::as_array)
            .map(|a| a.iter().filter_map(Json::as_str).collect())
            .unwrap_or_default();
        if model_type != "bert" && !archs.iter().any(|a| a.starts_with("Bert")) {
            let found = if model_type.is_empty() { archs.join(", ") } else { model_type.to_string() };
            return Err(ModelError::WrongArch { what: file.clone(), found, expected: "model_type \"bert\"" });
        }
        let req = |k: &str| -> Result<usize> {
            let v = cfg.get(k).ok_or_else(|| field_err(k, "missing".into()))?;
            v.as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&v| v > 0 && v < (1 << 31))
                .ok_or_else(|| field_err(k, format!("{v} is not a positive integer")))
        };
        if let Some(p) = cfg.get("position_embedding_type").and_then(Json::as_str) {
            if p != "absolute" {
                return Err(field_err("position_embedding_type", format!("{p:?} (crunch supports \"absolute\")")));
            }
        }
        let gelu = match cfg.get("hidden_act").and_then(Json::as_str).unwrap_or("gelu") {
            "gelu" => Gelu::Erf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Gelu::Tanh,
            other => return Err(field_err("hidden_act", format!("{other:?} (crunch supports gelu, gelu_new)"))),
        };
        let norm_eps = match cfg.get("layer_norm_eps") {
            None => 1e-12,
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| field_err("layer_norm_eps", v.to_string()))?,
        } as f32;
        let n_pos = req("max_position_embeddings")?;
        let (pooling, normalize, max_len) = sentence_transformers_settings(dir)?;
        let c = BertConfig {
            n_vocab: req("vocab_size")?,
            n_embd: req("hidden_size")?,
            n_layer: req("num_hidden_layers")?,
            n_head: req("num_attention_heads")?,
            n_ff: req("intermediate_size")?,
            n_pos,
            n_token_types: cfg.get("type_vocab_size").and_then(Json::as_u64).unwrap_or(2) as usize,
            norm_eps,
            gelu,
            pooling,
            normalize,
            max_tokens: max_len.unwrap_or(n_pos).min(n_pos),
        };
        c.check(&file)?;
        Ok(c)
    }
}

fn read_json(path: &Path) -> Result<Json> {
    let bytes = std::fs::read(path)
        .map_err(|e| ModelError::File { path: path.display().to_string(), reason: e.to_string() })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ModelError::File { path: path.display().to_string(), reason: format!("not valid JSON: {e}") })
}

/// `(pooling, normalize, max_seq_length)` from `modules.json`, the pooling module's
/// `config.json` and `sentence_bert_config.json`; mean pooling without normalisation when the
/// folder has no sentence-transformers files.
fn sentence_transformers_settings(dir: &Path) -> Result<(Pooling, bool, Option<usize>)> {
    let mut pooling = Pooling::Mean;
    let mut normalize = false;
    let modules = dir.join("modules.json");
    if modules.is_file() {
        let list = read_json(&modules)?;
        let bad = |reason: String| ModelError::File { path: modules.display().to_string(), reason };
        let list = list.as_array().ok_or_else(|| bad("not a list of modules".into()))?;
        for m in list {
            let ty = m.get("type").and_then(Json::as_str).unwrap_or("");
            if ty.ends_with(".Normalize") {
                normalize = true;
            } else if ty.ends_with(".Pooling") {
                let sub = m.get("path").and_then(Json::as_str).unwrap_or("");
                let pc_path = dir.join(sub).join("config.json");
                let pc = read_json(&pc_path)?;
                let on = |k: &str| pc.get(k).and_then(Json::as_bool).unwrap_or(false);
                pooling = if on("pooling_mode_cls_token") {
                    Pooling::Cls
                } else if on("pooling_mode_lasttoken") {
                    Pooling::Last
                } else if on("pooling_mode_mean_tokens") {
                    Pooling::Mean
                } else {
                    return Err(ModelError::File {
                        path: pc_path.display().to_string(),
                        reason: "no pooling mode crunch supports (mean_tokens, cls_token or lasttoken)".into(),
                    });
                };
            } else if !ty.ends_with(".Transformer") {
                return Err(bad(format!("module {ty:?} is not supported (Transformer, Pooling, Normalize)")));
            }
        }
    }
    let sb = dir.join("sentence_bert_config.json");
    let max_len = if sb.is_file() { read_json(&sb)?.get("max_seq_length").and_then(Json::as_u64) } else { None };
    Ok((pooling, normalize, max_len.map(|v| v as usize)))
}

/// Where each tensor is: llama.cpp's GGUF names or Hugging Face's.
#[derive(Clone, Debug)]
enum Names {
    Gguf,
    /// Hugging Face names after a prefix (`""` for `BertModel`, `"bert."` for `BertForMaskedLM`).
    Hf(String),
}

#[derive(Clone, Copy)]
enum Part {
    Q,
    K,
    V,
    AttnOut,
    AttnNorm,
    Up,
    Down,
    OutNorm,
}

impl Names {
    fn word(&self) -> String {
        self.global("token_embd", "embeddings.word_embeddings")
    }
    fn pos(&self) -> String {
        self.global("position_embd", "embeddings.position_embeddings")
    }
    fn types(&self) -> String {
        self.global("token_types", "embeddings.token_type_embeddings")
    }
    fn embd_norm(&self, bias: bool) -> String {
        let stem = match self {
            Names::Gguf => "token_embd_norm".to_string(),
            Names::Hf(p) => format!("{p}embeddings.LayerNorm"),
        };
        format!("{stem}.{}", if bias { "bias" } else { "weight" })
    }
    fn global(&self, gguf: &str, hf: &str) -> String {
        match self {
            Names::Gguf => format!("{gguf}.weight"),
            Names::Hf(p) => format!("{p}{hf}.weight"),
        }
    }
    fn layer(&self, i: usize, part: Part, bias: bool) -> String {
        let suffix = if bias { "bias" } else { "weight" };
        match self {
            Names::Gguf => {
                let stem = match part {
                    Part::Q => "attn_q",
                    Part::K => "attn_k",
                    Part::V => "attn_v",
                    Part::AttnOut => "attn_output",
                    Part::AttnNorm => "attn_output_norm",
                    Part::Up => "ffn_up",
                    Part::Down => "ffn_down",
                    Part::OutNorm => "layer_output_norm",
                };
                format!("blk.{i}.{stem}.{suffix}")
            }
            Names::Hf(p) => {
                let stem = match part {
                    Part::Q => "attention.self.query",
                    Part::K => "attention.self.key",
                    Part::V => "attention.self.value",
                    Part::AttnOut => "attention.output.dense",
                    Part::AttnNorm => "attention.output.LayerNorm",
                    Part::Up => "intermediate.dense",
                    Part::Down => "output.dense",
                    Part::OutNorm => "output.LayerNorm",
                };
                format!("{p}encoder.layer.{i}.{stem}.{suffix}")
            }
        }
    }
    /// llama.cpp's fused Q/K/V weight, which some GGUF files carry instead of three.
    fn fused_qkv(&self, i: usize, bias: bool) -> Option<String> {
        match self {
            Names::Gguf => Some(format!("blk.{i}.attn_qkv.{}", if bias { "bias" } else { "weight" })),
            Names::Hf(_) => None,
        }
    }
}

/// Per-layer vectors (biases and norms), small enough to keep as f32.
struct LayerVecs {
    /// Q, K, V biases (zeros when the file has none), each `n_embd`.
    bq: Vec<f32>,
    bk: Vec<f32>,
    bv: Vec<f32>,
    fused_qkv: bool,
    bo: Option<Vec<f32>>,
    attn_norm: (Vec<f32>, Vec<f32>),
    b_up: Option<Vec<f32>>,
    b_down: Option<Vec<f32>>,
    out_norm: (Vec<f32>, Vec<f32>),
}

/// A BERT encoder whose matrices stay in the memory-mapped file, in their stored types.
pub struct BertModel {
    store: TensorStore,
    pub config: BertConfig,
    tokenizer: Tokenizer,
    names: Names,
    embd_norm: (Vec<f32>, Vec<f32>),
    /// Token-type embedding row 0 ("sentence A"), or zeros if the model has none.
    type0: Vec<f32>,
    layers: Vec<LayerVecs>,
    /// How quantized weights are multiplied (default: as llama.cpp does).
    pub mode: MatmulMode,
}

impl std::fmt::Debug for BertModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertModel").field("path", &self.store.path()).field("config", &self.config).finish()
    }
}

/// Most tokens run through the layers at once by [`BertModel::embed_texts`].
pub const BATCH_TOKENS: usize = 2048;

impl BertModel {
    /// Open a GGUF file, or a Hugging Face folder (or a safetensors file inside one).
    ///
    /// # Errors
    /// Unreadable files, another architecture, missing or misshapen tensors, types without kernels,
    /// bad configuration values; each error names the file, key or tensor.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let store = TensorStore::open(path)?;
        match store.format() {
            StoreFormat::Gguf => {
                let gguf = store.gguf().ok_or_else(|| ModelError::Input("GGUF store without a file".into()))?;
                let md = gguf.metadata();
                // Check the architecture before looking for BERT's tensors.
                if let Some(arch) = md.architecture().filter(|&a| a != "bert") {
                    return Err(ModelError::WrongArch {
                        what: path.display().to_string(),
                        found: arch.into(),
                        expected: "bert",
                    });
                }
                let n_vocab = store.meta("token_embd.weight")?.dims.get(1).copied().unwrap_or(0) as usize;
                let config = BertConfig::from_gguf(md, n_vocab)?;
                let tokenizer = Tokenizer::from_gguf(gguf)?;
                Self::build(store, config, tokenizer, Names::Gguf)
            }
            StoreFormat::Safetensors => {
                let dir: PathBuf = if path.is_dir() {
                    path.to_path_buf()
                } else {
                    path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
                };
                let config = BertConfig::from_hf_dir(&dir)?;
                let tokenizer = Tokenizer::from_hf_file(dir.join("tokenizer.json"))?;
                let prefix = if store.contains("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
                Self::build(store, config, tokenizer, Names::Hf(prefix.into()))
            }
        }
    }

    fn build(store: TensorStore, config: BertConfig, tokenizer: Tokenizer, names: Names) -> Result<Self> {
        let c = &config;
        let e = c.n_embd;
        // Check every matrix now so that a bad file fails at open, not mid-run.
        store.matrix(&names.word(), e, c.n_vocab)?;
        store.matrix(&names.pos(), e, c.n_pos)?;
        let type0 = if store.contains(&names.types()) {
            let t = store.matrix(&names.types(), e, c.n_token_types)?;
            let mut row = vec![0f32; e];
            t.dequantize_row(0, &mut row)?;
            row
        } else {
            vec![0f32; e]
        };
        let embd_norm = (store.vector(&names.embd_norm(false), e)?, store.vector(&names.embd_norm(true), e)?);
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let n = |p: Part, bias: bool| names.layer(i, p, bias);
            let fused = names.fused_qkv(i, false).filter(|f| store.contains(f));
            let (bq, bk, bv) = if let Some(f) = &fused {
                store.matrix(f, e, 3 * e)?;
                let b = names.fused_qkv(i, true).map(|b| store.optional_vector(&b, 3 * e)).transpose()?.flatten();
                let b = b.unwrap_or_else(|| vec![0f32; 3 * e]);
                (b[..e].to_vec(), b[e..2 * e].to_vec(), b[2 * e..].to_vec())
            } else {
                for p in [Part::Q, Part::K, Part::V] {
                    store.matrix(&n(p, false), e, e)?;
                }
                let zero_if_none = |v: Option<Vec<f32>>| v.unwrap_or_else(|| vec![0f32; e]);
                (
                    zero_if_none(store.optional_vector(&n(Part::Q, true), e)?),
                    zero_if_none(store.optional_vector(&n(Part::K, true), e)?),
                    zero_if_none(store.optional_vector(&n(Part::V, true), e)?),
                )
            };
            store.matrix(&n(Part::AttnOut, false), e, e)?;
            store.matrix(&n(Part::Up, false), e, c.n_ff)?;
            store.matrix(&n(Part::Down, false), c.n_ff, e)?;
            layers.push(LayerVecs {
                bq,
                bk,
                bv,
                fused_qkv: fused.is_some(),
                bo: store.optional_vector(&n(Part::AttnOut, true), e)?,
                attn_norm: (store.vector(&n(Part::AttnNorm, false), e)?, store.vector(&n(Part::AttnNorm, true), e)?),
                b_up: store.optional_vector(&n(Part::Up, true), c.n_ff)?,
                b_down: store.optional_vector(&n(Part::Down, true), e)?,
                out_norm: (store.vector(&n(Part::OutNorm, false), e)?, store.vector(&n(Part::OutNorm, true), e)?),
            });
        }
        if tokenizer.vocab_size() > c.n_vocab {
            return Err(ModelError::Config(format!(
                "the tokenizer has {} tokens but the embedding only {} rows",
                tokenizer.vocab_size(),
                c.n_vocab
            )));
        }
        Ok(BertModel { store, config, tokenizer, names, embd_norm, type0, layers, mode: MatmulMode::Native })
    }

    pub fn store(&self) -> &TensorStore {
        &self.store
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.config.n_embd
    }

    /// Token ids of `text` with `[CLS]` and `[SEP]`, cut to [`BertConfig::max_tokens`] (the last
    /// token, `[SEP]`, is kept).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(text, true)?;
        let max = self.config.max_tokens;
        if ids.len() > max {
            let last = ids[ids.len() - 1];
            ids.truncate(max - 1);
            ids.push(last);
        }
        Ok(ids)
    }

    fn matrix(&self, name: &str, n_in: usize, n_out: usize) -> Result<WeightView<'_>> {
        self.store.matrix(name, n_in, n_out)
    }

    /// `x Wᵀ + b` over all tokens; `obs` sees the input first.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        x: &[f32],
        n_tok: usize,
        name: &str,
        n_in: usize,
        n_out: usize,
        bias: Option<&[f32]>,
        obs: &mut Option<&mut dyn Observer>,
    ) -> Result<Vec<f32>> {
        if let Some(o) = obs.as_mut() {
            o.observe(name, x, n_tok);
        }
        let w = self.matrix(name, n_in, n_out)?;
        let mut y = matmul(x, n_tok, &w, self.mode)?;
        if let Some(b) = bias {
            add_bias(&mut y, b);
        }
        Ok(y)
    }

    /// The last hidden states of several sequences run as one batch: `Σ len × n_embd`, the
    /// sequences' tokens one after another.
    ///
    /// # Errors
    /// An empty sequence, one longer than the position embedding, or a token id out of range.
    pub fn hidden_states(&self, seqs: &[&[u32]]) -> Result<Vec<f32>> {
        self.hidden_states_with(seqs, None)
    }

    /// [`BertModel::hidden_states`], showing `obs` the input of every linear layer (by weight
    /// name) before it is applied: how calibration collects activation statistics.
    ///
    /// # Errors
    /// As [`BertModel::hidden_states`].
    pub fn hidden_states_with(&self, seqs: &[&[u32]], mut obs: Option<&mut dyn Observer>) -> Result<Vec<f32>> {
        let c = &self.config;
        let e = c.n_embd;
        let mut ranges = Vec::with_capacity(seqs.len());
        let mut start = 0;
        for s in seqs {
            if s.is_empty() {
                return Err(ModelError::Input("an empty token sequence cannot be embedded".into()));
            }
            if s.len() > c.n_pos {
                return Err(ModelError::Input(format!(
                    "a sequence of {} tokens is longer than the model's {} positions",
                    s.len(),
                    c.n_pos
                )));
            }
            if let Some(&id) = s.iter().find(|&&id| id as usize >= c.n_vocab) {
                return Err(ModelError::TokenOutOfRange { id, n: c.n_vocab });
            }
            ranges.push((start, s.len()));
            start += s.len();
        }
        let n_tok = start;
        if n_tok == 0 {
            return Ok(Vec::new());
        }
        // Embeddings: word + position + type 0, then LayerNorm.
        let word = self.matrix(&self.names.word(), e, c.n_vocab)?;
        let pos = self.matrix(&self.names.pos(), e, c.n_pos)?;
        let toks: Vec<(u32, usize)> = seqs.iter().flat_map(|s| s.iter().enumerate().map(|(p, &id)| (id, p))).collect();
        let mut x = vec![0f32; n_tok * e];
        x.par_chunks_mut(e).zip(toks.par_iter()).try_for_each(|(row, &(id, p))| -> Result<()> {
            let mut prow = vec![0f32; e];
            word.dequantize_row(id as usize, row)?;
            pos.dequantize_row(p, &mut prow)?;
            for ((v, a), b) in row.iter_mut().zip(&prow).zip(&self.type0) {
                *v += a + b;
            }
            Ok(())
        })?;
        layer_norm(&mut x, &self.embd_norm.0, &self.embd_norm.1, c.norm_eps);

        let n_ff = c.n_ff;
        for (i, l) in self.layers.iter().enumerate() {
            let nm = |p: Part, bias: bool| self.names.layer(i, p, bias);
            let (q, k, v) = if l.fused_qkv {
                let name = self.names.fused_qkv(i, false).unwrap_or_default();
                let qkv = self.linear(&x, n_tok, &name, e, 3 * e, None, &mut obs)?;
                let mut q = vec![0f32; n_tok * e];
                let mut k = vec![0f32; n_tok * e];
                let mut v = vec![0f32; n_tok * e];
                for (t, row) in qkv.chunks_exact(3 * e).enumerate() {
                    q[t * e..(t + 1) * e].copy_from_slice(&row[..e]);
                    k[t * e..(t + 1) * e].copy_from_slice(&row[e..2 * e]);
                    v[t * e..(t + 1) * e].copy_from_slice(&row[2 * e..]);
                }
                for (m, b) in [(&mut q, &l.bq), (&mut k, &l.bk), (&mut v, &l.bv)] {
                    add_bias(m, b);
                }
                (q, k, v)
            } else {
                (
                    self.linear(&x, n_tok, &nm(Part::Q, false), e, e, Some(&l.bq), &mut obs)?,
                    self.linear(&x, n_tok, &nm(Part::K, false), e, e, Some(&l.bk), &mut obs)?,
                    self.linear(&x, n_tok, &nm(Part::V, false), e, e, Some(&l.bv), &mut obs)?,
                )
            };
            let a = bidirectional_attention(&q, &k, &v, &ranges, c.n_head, e / c.n_head);
            let mut o = self.linear(&a, n_tok, &nm(Part::AttnOut, false), e, e, l.bo.as_deref(), &mut obs)?;
            add_assign(&mut o, &x);
            layer_norm(&mut o, &l.attn_norm.0, &l.attn_norm.1, c.norm_eps);
            x = o;
            let mut h = self.linear(&x, n_tok, &nm(Part::Up, false), e, n_ff, l.b_up.as_deref(), &mut obs)?;
            gelu_in_place(&mut h, c.gelu);
            let mut d = self.linear(&h, n_tok, &nm(Part::Down, false), n_ff, e, l.b_down.as_deref(), &mut obs)?;
            add_assign(&mut d, &x);
            layer_norm(&mut d, &l.out_norm.0, &l.out_norm.1, c.norm_eps);
            x = d;
        }
        Ok(x)
    }

    /// Pooled (and, if configured, normalised) embeddings of token sequences, run as one batch.
    pub fn embed_ids(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        self.embed_ids_with(seqs, None)
    }

    /// [`BertModel::embed_ids`] with an observer of every linear layer's input.
    ///
    /// # Errors
    /// As [`BertModel::hidden_states`].
    pub fn embed_ids_with(&self, seqs: &[&[u32]], obs: Option<&mut dyn Observer>) -> Result<Vec<Vec<f32>>> {
        let h = self.hidden_states_with(seqs, obs)?;
        let e = self.config.n_embd;
        let mut out = Vec::with_capacity(seqs.len());
        let mut start = 0;
        for s in seqs {
            let rows = &h[start * e..(start + s.len()) * e];
            start += s.len();
            out.push(self.pool(rows));
        }
        Ok(out)
    }

    fn pool(&self, rows: &[f32]) -> Vec<f32> {
        let e = self.config.n_embd;
        let n = rows.len() / e;
        let mut v = match self.config.pooling {
            Pooling::Cls => rows[..e].to_vec(),
            Pooling::Last => rows[(n - 1) * e..].to_vec(),
            Pooling::Mean => {
                let mut acc = vec![0f64; e];
                for r in rows.chunks_exact(e) {
                    acc.iter_mut().zip(r).for_each(|(a, &x)| *a += x as f64);
                }
                acc.iter().map(|a| (a / n as f64) as f32).collect()
            }
        };
        if self.config.normalize {
            let norm = v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
        }
        v
    }

    /// Sentence embeddings of texts: tokenized, cut to `max_tokens`, run in batches of about
    /// [`BATCH_TOKENS`] tokens.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| self.tokenize(t)).collect::<Result<_>>()?;
        let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        self.embed_batched(&refs)
    }

    /// [`BertModel::embed_ids`] over any number of sequences, in batches of about [`BATCH_TOKENS`].
    pub fn embed_batched(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(seqs.len());
        for r in batch_ranges(seqs, BATCH_TOKENS) {
            out.extend(self.embed_ids(&seqs[r])?);
        }
        Ok(out)
    }
}

/// Consecutive groups of sequences of at most `max_tokens` tokens each (a longer sequence forms a
/// group of its own).
pub fn batch_ranges(seqs: &[&[u32]], max_tokens: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let mut j = i;
        let mut n = 0;
        while j < seqs.len() && (j == i || n + seqs[j].len() <= max_tokens) {
            n += seqs[j].len();
            j += 1;
        }
        out.push(i..j);
        i = j;
    }
    out
}

/// Row-wise LayerNorm in place: `(x - mean) / sqrt(var + eps) * w + b`, statistics in f64.
pub fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = w.len();
    if n == 0 {
        return;
    }
    x.par_chunks_mut(n).for_each(|r| {
        let mean = r.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = r.iter().map(|&v| (v as f64 - mean) * (v as f64 - mean)).sum::<f64>() / n as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for ((v, &g), &bb) in r.iter_mut().zip(w).zip(b) {
            *v = (((*v as f64) - mean) * inv) as f32 * g + bb;
        }
    });
}

/// GELU of one value.
#[inline]
pub fn gelu(x: f32, kind: Gelu) -> f32 {
    match kind {
        Gelu::Erf => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
        Gelu::Tanh => {
            const SQRT_2_OVER_PI: f32 = 0.797_884_6;
            0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
        }
    }
}

fn gelu_in_place(x: &mut [f32], kind: Gelu) {
    x.par_chunks_mut(4096).for_each(|c| c.iter_mut().for_each(|v| *v = gelu(*v, kind)));
}

/// Softmax attention of every token over all tokens of its own sequence (no causal mask).
/// `q`, `k`, `v` are `n_tokens × (n_head · head_dim)`; `ranges` are the sequences' `(start, len)`.
pub fn bidirectional_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ranges: &[(usize, usize)],
    n_head: usize,
    head_dim: usize,
) -> Vec<f32> {
    let d = head_dim;
    let row = n_head * d;
    let mut out = vec![0f32; q.len()];
    if d == 0 {
        return out;
    }
    let scale = 1.0 / (d as f32).sqrt();
    let seq_of: Vec<(usize, usize)> = ranges.iter().flat_map(|&r| std::iter::repeat_n(r, r.1)).collect();
    out.par_chunks_mut(row).zip(q.par_chunks(row)).zip(seq_of.par_iter()).for_each(|((o, qt), &(s0, len))| {
        let mut scores = vec![0f32; len];
        for h in 0..n_head {
            let qh = &qt[h * d..(h + 1) * d];
            let mut max = f32::NEG_INFINITY;
            for (j, sc) in scores.iter_mut().enumerate() {
                let kj = &k[(s0 + j) * row + h * d..][..d];
                *sc = dot_f32(qh, kj) * scale;
                max = max.max(*sc);
            }
            let mut sum = 0f32;
            for sc in scores.iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc;
            }
            let inv = 1.0 / sum;
            let oh = &mut o[h * d..(h + 1) * d];
            for (j, &p) in scores.iter().enumerate() {
                let vj = &v[(s0 + j) * row + h * d..][..d];
                let p = p * inv;
                oh.iter_mut().zip(vj).for_each(|(a, &b)| *a += p * b);
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_forms() {
        // Values of x Φ(x).
        for (x, want) in [(0.0f32, 0.0f32), (1.0, 0.841_344_7), (-1.0, -0.158_655_26), (3.0, 2.995_950_3)] {
            assert!((gelu(x, Gelu::Erf) - want).abs() < 1e-6, "{x}");
            assert!((gelu(x, Gelu::Tanh) - want).abs() < 1e-3, "{x}");
        }
    }

    #[test]
    fn layer_norm_zero_mean_unit_variance() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0, -5.0, 5.0, -5.0, 5.0];
        layer_norm(&mut x, &[1.0; 4], &[0.0; 4], 0.0);
        for r in x.chunks(4) {
            let m: f32 = r.iter().sum::<f32>() / 4.0;
            let v: f32 = r.iter().map(|a| (a - m) * (a - m)).sum::<f32>() / 4.0;
            assert!(m.abs() < 1e-6 && (v - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn batched_attention_equals_one_sequence_at_a_time() {
        let mut s = 7u64;
        let mut rand = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                })
                .collect()
        };
        let (nh, d) = (3, 4);
        let row = nh * d;
        let (q, k, v) = (rand(7 * row), rand(7 * row), rand(7 * row));
        let all = bidirectional_attention(&q, &k, &v, &[(0, 3), (3, 4)], nh, d);
        let a = bidirectional_attention(&q[..3 * row], &k[..3 * row], &v[..3 * row], &[(0, 3)], nh, d);
        let b = bidirectional_attention(&q[3 * row..], &k[3 * row..], &v[3 * row..], &[(0, 4)], nh, d);
        assert_eq!(&all[..3 * row], &a[..]);
        assert_eq!(&all[3 * row..], &b[..]);
        // Each output is a convex combination of the values: within their range.
        let (lo, hi) = v.iter().fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
        assert!(all.iter().all(|&x| x >= lo - 1e-6 && x <= hi + 1e-6));
    }
}
