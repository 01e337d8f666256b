//! Tokenizer files -> `tokenizer.ggml.*` metadata, as llama.cpp's converter writes it:
//! - byte-level BPE (`tokenizer.json` with a BPE model): `gpt2`, with merges and the pre-tokenizer
//!   name (see [`super::pretok`]);
//! - SentencePiece (`tokenizer.model`, or a `tokenizer.json` BPE with byte fallback): `llama`, with
//!   scores;
//! - WordPiece (BERT): `bert`, tokens in llama.cpp's "phantom space" form (`##ing` -> `ing`,
//!   `word` -> `▁word`);
//!
//! then the special tokens, add-BOS/EOS flags and chat template as llama.cpp's `SpecialVocab` reads
//! them from `tokenizer.json`, `tokenizer_config.json` and `config.json`.

use super::pretok::{self, PreSource};
use super::spm::SpmModel;
use crate::error::{Error, Result};
use crunch_core::gguf::Value;
use crunch_core::hf::{HfArch, HfConfig, HfError};
use serde_json::{Map, Value as Json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// llama.cpp token types.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}
use token_type::*;

/// The tokenizer part of a converted model.
#[derive(Clone, Debug)]
pub struct VocabMeta {
    /// `tokenizer.*` keys in llama.cpp's order.
    pub entries: Vec<(String, Value)>,
    /// `tokenizer.ggml.model`: `gpt2`, `llama` or `bert`.
    pub model: &'static str,
    pub n_tokens: usize,
    /// The pre-tokenizer and how it was found (byte-level BPE and WordPiece vocabularies).
    pub pre: Option<(String, PreSource)>,
    /// The check-string hash, when one was computed.
    pub pre_hash: Option<String>,
}

/// The tokenizer files of a model folder.
struct Files {
    dir: PathBuf,
    json_bytes: Option<Vec<u8>>,
    json: Option<Json>,
    config: Option<Map<String, Json>>,
}

fn read_obj(path: &Path) -> Result<Option<Map<String, Json>>> {
    if !path.is_file() {
        return Ok(None);
    }
    match crunch_core::hf::params::read_json(path)? {
        Json::Object(m) => Ok(Some(m)),
        _ => {
            Err(HfError::BadField { file: path.into(), field: "(top level)".into(), reason: "not an object".into() }
                .into())
        }
    }
}

impl Files {
    fn load(dir: &Path) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        let (json_bytes, json) = if tj.is_file() {
            let b = std::fs::read(&tj).map_err(|e| Error::io(&tj, e))?;
            let j = serde_json::from_slice(&b).map_err(|e| HfError::Json { file: tj.clone(), source: e })?;
            (Some(b), Some(j))
        } else {
            (None, None)
        };
        let mut config = read_obj(&dir.join("tokenizer_config.json"))?;
        if config.is_none() {
            // llama.cpp reads only tokenizer_config.json; without it, special_tokens_map.json
            // (same `{typ}_token` entries) is the next best source of the special tokens.
            config = read_obj(&dir.join("special_tokens_map.json"))?;
        }
        Ok(Files { dir: dir.to_path_buf(), json_bytes, json, config })
    }

    fn need_json(&self, why: &str) -> Result<&Json> {
        self.json.as_ref().ok_or_else(|| {
            HfError::MissingFile { dir: self.dir.clone(), file: "tokenizer.json".into(), why: why.into() }.into()
        })
    }

    fn tj_path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }

    fn model(&self) -> Option<&Map<String, Json>> {
        self.json.as_ref()?.get("model")?.as_object()
    }

    fn added_tokens(&self) -> Vec<AddedToken> {
        let Some(list) = self.json.as_ref().and_then(|j| j.get("added_tokens")).and_then(Json::as_array) else {
            return Vec::new();
        };
        list.iter()
            .filter_map(|t| {
                Some(AddedToken {
                    id: u32::try_from(t.get("id")?.as_u64()?).ok()?,
                    content: t.get("content")?.as_str()?.to_string(),
                    special: t.get("special").and_then(Json::as_bool).unwrap_or(false),
                })
            })
            .collect()
    }
}

#[derive(Clone, Debug)]
struct AddedToken {
    id: u32,
    content: String,
    special: bool,
}

/// llama.cpp's guess that an added token is a control token although not marked special.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Python truthiness of an optional JSON value.
fn truthy(v: Option<&Json>) -> bool {
    match v {
        None | Some(Json::Null) | Some(Json::Bool(false)) => false,
        Some(Json::String(s)) => !s.is_empty(),
        Some(Json::Array(a)) => !a.is_empty(),
        Some(Json::Object(o)) => !o.is_empty(),
        Some(Json::Number(n)) => n.as_f64() != Some(0.0),
        Some(Json::Bool(true)) => true,
    }
}

fn string_array(items: impl IntoIterator<Item = String>) -> Value {
    Value::strings(items)
}

/// llama.cpp's `SpecialVocab`.
struct Special {
    types: Vec<String>,
    merges: Vec<String>,
    add: Vec<(String, bool)>,
    ids: Vec<(String, u32)>,
    chat_template: Option<String>,
    lowercase: Option<bool>,
    strip_accents: Option<bool>,
    n_vocab: Option<usize>,
}

fn special_id_key(typ: &str) -> Option<&'static str> {
    Some(match typ {
        "bos" => "tokenizer.ggml.bos_token_id",
        "eos" => "tokenizer.ggml.eos_token_id",
        "unk" => "tokenizer.ggml.unknown_token_id",
        "sep" => "tokenizer.ggml.seperator_token_id",
        "pad" => "tokenizer.ggml.padding_token_id",
        "mask" => "tokenizer.ggml.mask_token_id",
        "eot" => "tokenizer.ggml.eot_token_id",
        "eom" => "tokenizer.ggml.eom_token_id",
        _ => return None,
    })
}

impl Special {
    fn set_id(&mut self, typ: &str, tid: Option<&Json>, file: &Path) -> Result<()> {
        let Some(Json::Number(n)) = tid else { return Ok(()) };
        let Some(i) = n.as_i64() else { return Ok(()) };
        if i < 0 {
            return Err(HfError::BadField {
                file: file.into(),
                field: format!("{typ} token"),
                reason: format!("invalid token id {i}"),
            }
            .into());
        }
        if self.n_vocab.is_none_or(|n| (i as u64) < n as u64) {
            if !self.ids.iter().any(|(t, _)| t == typ) {
                self.ids.push((typ.to_string(), i as u32));
            }
        } else {
            tracing::warn!("special token {typ} id {i} is out of range (vocabulary of {:?}), skipped", self.n_vocab);
        }
        Ok(())
    }

    fn set_add(&mut self, typ: &str, v: bool) {
        match self.add.iter_mut().find(|(t, _)| t == typ) {
            Some(e) => e.1 = v,
            None => self.add.push((typ.to_string(), v)),
        }
    }

    fn add_default(&mut self, typ: &str, v: bool) {
        if !self.add.iter().any(|(t, _)| t == typ) {
            self.add.push((typ.to_string(), v));
        }
    }

    fn parse_normalizer(&mut self, n: &Json) {
        match n.get("type").and_then(Json::as_str) {
            Some("Lowercase") => self.lowercase = Some(true),
            Some("StripAccents") => self.strip_accents = Some(true),
            Some("BertNormalizer") => {
                if let Some(v) = n.get("lowercase") {
                    self.lowercase = v.as_bool();
                }
                if let Some(v) = n.get("strip_accents") {
                    self.strip_accents = v.as_bool();
                }
            }
            Some("Sequence") => {
                for m in n.get("normalizers").and_then(Json::as_array).into_iter().flatten() {
                    self.parse_normalizer(m);
                }
            }
            _ => {}
        }
    }

    fn load(files: &Files, cfg: &HfConfig, load_merges: bool, n_vocab: Option<usize>) -> Result<Self> {
        let mut s = Special {
            types: ["bos", "eos", "unk", "sep", "pad", "cls", "mask"].iter().map(|t| t.to_string()).collect(),
            merges: Vec::new(),
            add: Vec::new(),
            ids: Vec::new(),
            chat_template: None,
            lowercase: None,
            strip_accents: None,
            n_vocab,
        };
        let tc_file = files.dir.join("tokenizer_config.json");
        let added = files.added_tokens();
        let mut tc = files.config.clone();
        if let Some(tj) = &files.json {
            if load_merges {
                s.merges = merges_of(tj, &files.tj_path())?;
            }
            if let Some(n) = tj.get("normalizer").filter(|n| !n.is_null()) {
                s.parse_normalizer(n);
            }
            s.post_processor(tj, &mut tc);
        }
        if load_merges && s.merges.is_empty() {
            s.merges = merges_txt(&files.dir.join("merges.txt"))?;
        }
        if let Some(tc) = tc.as_ref().filter(|m| !m.is_empty()) {
            s.chat_template = chat_template(&files.dir, tc)?;
            let types = s.types.clone();
            for typ in &types {
                if let Some(Json::Bool(v)) = tc.get(&format!("add_{typ}_token")) {
                    match s.add.iter().find(|(t, _)| t == typ) {
                        None => s.add.push((typ.clone(), *v)),
                        Some((_, old)) if old != v => tracing::warn!(
                            "tokenizer_config.json add_{typ}_token ({v}) disagrees with the tokenizer.json post-processor ({old}); using the latter"
                        ),
                        _ => {}
                    }
                }
                let content = match tc.get(&format!("{typ}_token")) {
                    Some(Json::String(c)) => c.clone(),
                    Some(Json::Object(o)) => match o.get("content") {
                        Some(Json::String(c)) => c.clone(),
                        _ => continue,
                    },
                    _ => continue,
                };
                let id = added.iter().find(|a| a.content == content).map(|a| Json::from(a.id));
                s.set_id(typ, id.as_ref(), &tc_file)?;
            }
        }
        let types = s.types.clone();
        for typ in &types {
            let v = cfg.raw.get(&format!("{typ}_token_id")).cloned();
            s.set_id(typ, v.as_ref(), &cfg.path)?;
        }
        Ok(s)
    }

    /// What the `tokenizer.json` post-processor says about BOS/EOS/SEP (llama.cpp's crude parse).
    fn post_processor(&mut self, tj: &Json, tc: &mut Option<Map<String, Json>>) {
        let tc_truthy = |tc: &Option<Map<String, Json>>| tc.as_ref().is_some_and(|m| !m.is_empty());
        let get = |tc: &Option<Map<String, Json>>, k: &str| tc.as_ref().and_then(|m| m.get(k)).cloned();
        let mut bos = get(tc, "bos_token");
        let mut cls = get(tc, "cls_token");
        let mut eos = get(tc, "eos_token");
        let mut sep = get(tc, "sep_token");
        let set = |tc: &mut Option<Map<String, Json>>, k: &str, v: &Option<Json>| {
            if let (Some(m), Some(v)) = (tc.as_mut(), v) {
                m.insert(k.to_string(), v.clone());
            }
        };
        if !truthy(bos.as_ref()) && truthy(cls.as_ref()) && tc_truthy(tc) {
            bos = cls.clone();
            set(tc, "bos_token", &bos);
        }
        if !truthy(eos.as_ref()) && truthy(sep.as_ref()) && tc_truthy(tc) {
            eos = sep.clone();
            set(tc, "eos_token", &eos);
        }
        let Some(pp) = tj.get("post_processor").filter(|p| truthy(Some(p))) else { return };
        let procs: Vec<Json> = match pp.get("processors").and_then(Json::as_array) {
            Some(list) => list.clone(),
            None => vec![pp.clone()],
        };
        let special_id = |x: Option<&Json>| -> Option<Json> {
            x?.get("SpecialToken")?.get("id").filter(|v| truthy(Some(v))).cloned()
        };
        for p in &procs {
            match p.get("type").and_then(Json::as_str) {
                Some("ByteLevel") => {
                    self.add_default("bos", false);
                    self.add_default("eos", false);
                }
                Some("RobertaProcessing") => {
                    self.set_add("bos", true);
                    self.set_add("eos", true);
                    self.set_add("sep", true);
                    if !truthy(cls.as_ref()) && tc_truthy(tc) {
                        cls = p.get("cls").and_then(|c| c.get(0)).cloned().or_else(|| bos.clone());
                        set(tc, "cls_token", &cls);
                    }
                    if !truthy(sep.as_ref()) && tc_truthy(tc) {
                        sep = p.get("sep").and_then(|c| c.get(0)).cloned().or_else(|| eos.clone());
                        set(tc, "sep_token", &sep);
                    }
                }
                Some("TemplateProcessing") => {
                    let single = p.get("single").and_then(Json::as_array).cloned().unwrap_or_default();
                    let pair = p.get("pair").and_then(Json::as_array).cloned().unwrap_or_default();
                    let mut first = None;
                    let mut last = None;
                    if single.len() > 1 {
                        first = special_id(single.first());
                        if let Some(f) = &first {
                            if !tc_truthy(tc) {
                                bos = Some(f.clone());
                            } else if Some(f) != bos.as_ref() && Some(f) != cls.as_ref() {
                                if !truthy(bos.as_ref()) {
                                    bos = Some(f.clone());
                                    set(tc, "bos_token", &bos);
                                }
                                if !truthy(cls.as_ref()) {
                                    cls = Some(f.clone());
                                    set(tc, "cls_token", &cls);
                                }
                            }
                            let is_bos = Some(f) == bos.as_ref() || Some(f) == cls.as_ref();
                            self.set_add("bos", is_bos);
                            if !is_bos {
                                tracing::warn!("unknown leading special token {f} in TemplateProcessing");
                            }
                        }
                        last = special_id(single.last());
                        if let Some(l) = &last {
                            if !tc_truthy(tc) {
                                eos = Some(l.clone());
                            } else if Some(l) != eos.as_ref() {
                                for extra in ["eot", "eom"] {
                                    if !self.types.iter().any(|t| t == extra) {
                                        self.types.push(extra.into());
                                        set(tc, &format!("{extra}_token"), &eos);
                                        break;
                                    }
                                }
                                eos = Some(l.clone());
                                set(tc, "eos_token", &eos);
                            }
                            self.set_add("eos", Some(l) == eos.as_ref());
                        }
                    }
                    if !pair.is_empty() {
                        let start = usize::from(first.is_some() && special_id(pair.first()) == first);
                        let stop = usize::from(last.is_some() && special_id(pair.last()) == last);
                        let tp: Vec<Json> = if pair.len() >= start + stop {
                            pair[start..pair.len() - stop].to_vec()
                        } else {
                            Vec::new()
                        };
                        if !tp.is_empty() {
                            let seq = |x: &Json| {
                                x.get("Sequence").and_then(|s| s.get("id")).and_then(Json::as_str).map(str::to_string)
                            };
                            let (a, b) = (seq(&tp[0]), seq(&tp[tp.len() - 1]));
                            if a.as_deref() == Some("A") && b.as_deref() == Some("B") && tp.len() > 2 {
                                let mid = &tp[1..tp.len() - 1];
                                let is_sep = |e: &Json| Some(e) == sep.as_ref() || Some(e) == eos.as_ref();
                                let mut add_sep = false;
                                if let Some(e) = special_id(mid.first()) {
                                    if is_sep(&e) && last.is_none() {
                                        add_sep = true;
                                    }
                                }
                                if mid.len() == 2 {
                                    if let Some(e) = special_id(mid.get(1)) {
                                        if is_sep(&e) {
                                            add_sep = true;
                                        }
                                    }
                                }
                                self.set_add("sep", add_sep);
                                if add_sep && !truthy(sep.as_ref()) && tc_truthy(tc) {
                                    set(tc, "sep_token", &eos);
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn entries(&self, out: &mut Vec<(String, Value)>) {
        if !self.merges.is_empty() {
            out.push(("tokenizer.ggml.merges".into(), string_array(self.merges.iter().cloned())));
        }
        for (typ, id) in &self.ids {
            if let Some(k) = special_id_key(typ) {
                out.push((k.into(), Value::U32(*id)));
            }
        }
        for (typ, v) in &self.add {
            if matches!(typ.as_str(), "bos" | "eos" | "sep") {
                out.push((format!("tokenizer.ggml.add_{typ}_token"), Value::Bool(*v)));
            }
        }
        if let Some(t) = &self.chat_template {
            out.push(("tokenizer.chat_template".into(), Value::string(t.clone())));
        }
        if let Some(v) = self.lowercase {
            out.push(("tokenizer.ggml.normalizer.lowercase".into(), Value::Bool(v)));
        }
        if let Some(v) = self.strip_accents {
            out.push(("tokenizer.ggml.normalizer.strip_accents".into(), Value::Bool(v)));
        }
    }
}

/// `model.merges` of a `tokenizer.json`: `"a b"` strings, or `[a, b]` pairs (spaces inside a part
/// encoded as U+0120, as llama.cpp does).
fn merges_of(tj: &Json, file: &Path) -> Result<Vec<String>> {
    let Some(list) = tj.get("model").and_then(|m| m.get("merges")).and_then(Json::as_array) else {
        return Ok(Vec::new());
    };
    let bad = || HfError::BadField {
        file: file.into(),
        field: "model.merges".into(),
        reason: "unknown merges format".into(),
    };
    let enc = |s: &str| s.chars().map(|c| if c == ' ' { '\u{120}' } else { c }).collect::<String>();
    list.iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                (Some(a), Some(b)) => Ok(format!("{} {}", enc(a), enc(b))),
                _ => Err(bad().into()),
            },
            _ => Err(bad().into()),
        })
        .collect()
}

fn merges_txt(path: &Path) -> Result<Vec<String>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines = text.lines().peekable();
    if lines.peek().is_some_and(|l| l.trim().starts_with('#')) {
        lines.next();
    }
    Ok(lines
        .filter_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            (parts.len() == 2).then(|| format!("{} {}", parts[0], parts[1]))
        })
        .collect())
}

fn chat_template(dir: &Path, tc: &Map<String, Json>) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    let json = dir.join("chat_template.json");
    let alt = if jinja.is_file() {
        Some(Json::String(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?))
    } else if json.is_file() {
        crunch_core::hf::params::read_json(&json)?.get("chat_template").cloned()
    } else {
        None
    };
    let t = match tc.get("chat_template") {
        Some(v) => Some(v.clone()),
        None => alt,
    };
    Ok(match t {
        Some(Json::String(s)) => Some(s),
        Some(Json::Array(list)) => {
            // Named templates: llama.cpp writes them all; crunch keeps the default one.
            tracing::warn!("several chat templates; only the one named \"default\" is kept");
            list.iter()
                .find(|e| e.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|e| e.get("template"))
                .and_then(Json::as_str)
                .map(str::to_string)
        }
        Some(Json::Null) | None => None,
        Some(_) => {
            tracing::warn!("chat_template in tokenizer_config.json is neither text nor a list; ignored");
            None
        }
    })
}

/// Tokens and types of a BPE or WordPiece `tokenizer.json` (llama.cpp's `get_vocab_base`).
fn vocab_base(files: &Files, cfg: &HfConfig) -> Result<(Vec<String>, Vec<i32>)> {
    let file = files.tj_path();
    let vocab = files.model().and_then(|m| m.get("vocab")).and_then(Json::as_object).ok_or_else(|| {
        HfError::BadField { file: file.clone(), field: "model.vocab".into(), reason: "missing or not a map".into() }
    })?;
    let added = files.added_tokens();
    let mut reverse: HashMap<u32, String> = HashMap::with_capacity(vocab.len() + added.len());
    let mut n_unique = 0usize;
    let mut all: HashMap<&str, u32> = HashMap::with_capacity(vocab.len());
    for (tok, id) in vocab {
        let id = id.as_u64().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| HfError::BadField {
            file: file.clone(),
            field: format!("model.vocab[{tok:?}]"),
            reason: "not a token id".into(),
        })?;
        all.insert(tok, id);
        reverse.insert(id, tok.clone());
    }
    for a in &added {
        all.insert(&a.content, a.id);
        reverse.insert(a.id, a.content.clone());
    }
    n_unique += all.len();
    let vocab_size = cfg.vocab_size()?.map(|v| v as usize).unwrap_or(n_unique);
    if let Some(max) = all.values().max() {
        if *max as usize >= vocab_size {
            return Err(HfError::BadField {
                file: cfg.path.clone(),
                field: "vocab_size".into(),
                reason: format!("{vocab_size} is too small for token id {max} in {}", file.display()),
            }
            .into());
        }
    }
    let added_by_content: HashMap<&str, &AddedToken> = added.iter().map(|a| (a.content.as_str(), a)).collect();
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for i in 0..vocab_size as u32 {
        match reverse.get(&i) {
            None => {
                tokens.push(format!("[PAD{i}]"));
                types.push(UNUSED);
            }
            Some(tok) => match added_by_content.get(tok.as_str()) {
                Some(a) if a.special || looks_special(tok) => {
                    tokens.push(tok.clone());
                    types.push(CONTROL);
                }
                Some(_) => {
                    tokens.push(tok.replace('\u{2581}', " "));
                    types.push(USER_DEFINED);
                }
                None => {
                    tokens.push(tok.clone());
                    types.push(NORMAL);
                }
            },
        }
    }
    Ok((tokens, types))
}

/// The pre-tokenizer of a `tokenizer.json`: `--pre`, else the check-string hash, else its rules.
fn pre_tokenizer(files: &Files, pre_override: Option<&str>) -> Result<(String, PreSource, Option<String>)> {
    if let Some(p) = pre_override {
        if crunch_model::tokenizer::pre_catalog::patterns(p).is_err() {
            tracing::warn!("pre-tokenizer {p:?} is not one crunch knows; written as given");
        }
        return Ok((p.to_string(), PreSource::Override, None));
    }
    let bytes = files.json_bytes.as_deref().unwrap_or_default();
    let tok = crunch_model::tokenizer::Tokenizer::from_hf_json(bytes)?;
    let ids = tok.encode(pretok::CHKTXT, true)?;
    let hash = pretok::ids_hash(&ids);
    if let Some(name) = pretok::name_for_hash(&hash) {
        return Ok((name.to_string(), PreSource::Hash, Some(hash)));
    }
    let rules = files.json.as_ref().and_then(|j| j.get("pre_tokenizer")).and_then(pretok::hf_patterns);
    if let Some(name) = rules.as_deref().and_then(pretok::name_for_patterns) {
        tracing::warn!(
            "pre-tokenizer recognised from the tokenizer.json split rules as {name:?} (check-string hash {hash} is not in llama.cpp's table); pass --pre to choose another name"
        );
        return Ok((name.to_string(), PreSource::Rules, Some(hash)));
    }
    Err(Error::Invalid(format!(
        "{}: the BPE pre-tokenizer is not recognised (check-string hash {hash} is not in llama.cpp's table and its split rules match no known pre-tokenizer); pass --pre NAME with one of: {}",
        files.tj_path().display(),
        crunch_model::tokenizer::pre_catalog::KNOWN_PRE_TOKENIZERS.join(", ")
    )))
}

/// `tokenizer.json` is a SentencePiece-style BPE (byte fallback, decoder sequence), which llama.cpp
/// converts as a `llama` vocabulary.
fn is_llama_hf(files: &Files) -> bool {
    let Some(m) = files.model() else { return false };
    let bpe = m.get("type").and_then(Json::as_str) == Some("BPE");
    let fallback = m.get("byte_fallback").and_then(Json::as_bool).unwrap_or(false);
    let seq = files.json.as_ref().and_then(|j| j.get("decoder")).and_then(|d| d.get("type")).and_then(Json::as_str)
        == Some("Sequence");
    bpe && fallback && seq
}

/// Build the `tokenizer.*` metadata of the model in `dir`.
///
/// # Errors
/// Missing or malformed tokenizer files, an unrecognised pre-tokenizer (use `pre_override`).
pub fn tokenizer_metadata(dir: &Path, cfg: &HfConfig, pre_override: Option<&str>) -> Result<VocabMeta> {
    let files = Files::load(dir)?;
    let mut out: Vec<(String, Value)> = Vec::new();
    let spm_path = dir.join("tokenizer.model");
    let meta = match cfg.arch {
        HfArch::Llama | HfArch::Qwen2 | HfArch::Gemma3 => {
            if cfg.arch == HfArch::Llama {
                if let Some(Json::Bool(p)) = files.config.as_ref().and_then(|c| c.get("add_prefix_space")) {
                    out.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(*p)));
                }
            }
            if spm_path.is_file() {
                let m = spm_vocab(&files, cfg, &spm_path, &mut out)?;
                if cfg.arch == HfArch::Gemma3 {
                    // llama.cpp's Gemma3Model: a SentencePiece vocabulary without the dummy prefix.
                    out.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)));
                }
                m
            } else if cfg.arch == HfArch::Llama && is_llama_hf(&files) {
                llama_hf_vocab(&files, cfg, &mut out)?
            } else {
                files.need_json("the vocabulary (or a SentencePiece tokenizer.model)")?;
                let ty = files.model().and_then(|m| m.get("type")).and_then(Json::as_str).unwrap_or("BPE");
                if ty != "BPE" {
                    return Err(Error::Invalid(format!(
                        "{}: a {ty} tokenizer cannot be converted for {} (byte-level BPE or SentencePiece expected)",
                        files.tj_path().display(),
                        cfg.hf_arch
                    )));
                }
                let (tokens, types) = vocab_base(&files, cfg)?;
                let (pre, how, hash) = pre_tokenizer(&files, pre_override)?;
                let n = tokens.len();
                out.push(("tokenizer.ggml.model".into(), Value::string("gpt2")));
                out.push(("tokenizer.ggml.pre".into(), Value::string(pre.clone())));
                out.push(("tokenizer.ggml.tokens".into(), string_array(tokens)));
                out.push(("tokenizer.ggml.token_type".into(), Value::from(types)));
                Special::load(&files, cfg, true, None)?.entries(&mut out);
                VocabMeta { entries: Vec::new(), model: "gpt2", n_tokens: n, pre: Some((pre, how)), pre_hash: hash }
            }
        }
        HfArch::Bert => {
            files.need_json("the WordPiece vocabulary")?;
            let (tokens, types) = vocab_base(&files, cfg)?;
            let (pre, how, hash) = pre_tokenizer(&files, pre_override)?;
            let type_count = cfg.find_u32(&["type_vocab_size"])?.unwrap_or(1);
            out.push(("tokenizer.ggml.token_type_count".into(), Value::U32(type_count)));
            let tokens: Vec<String> = tokens
                .into_iter()
                .zip(&types)
                .map(|(t, &ty)| {
                    if ty == CONTROL {
                        t
                    } else if let Some(rest) = t.strip_prefix("##") {
                        rest.to_string()
                    } else {
                        format!("\u{2581}{t}")
                    }
                })
                .collect();
            let n = tokens.len();
            out.push(("tokenizer.ggml.model".into(), Value::string("bert")));
            out.push(("tokenizer.ggml.pre".into(), Value::string(pre.clone())));
            out.push(("tokenizer.ggml.tokens".into(), string_array(tokens)));
            out.push(("tokenizer.ggml.token_type".into(), Value::from(types)));
            Special::load(&files, cfg, false, Some(n))?.entries(&mut out);
            VocabMeta { entries: Vec::new(), model: "bert", n_tokens: n, pre: Some((pre, how)), pre_hash: hash }
        }
    };
    let mut meta = meta;
    if cfg.arch == HfArch::Llama && cfg.vocab_size()? == Some(49152) {
        // llama.cpp: "granite small models" (and SmolLM) never add BOS.
        match out.iter_mut().find(|(k, _)| k == "tokenizer.ggml.add_bos_token") {
            Some(e) => e.1 = Value::Bool(false),
            None => out.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(false))),
        }
    }
    meta.entries = out;
    Ok(meta)
}

/// A `tokenizer.model` vocabulary (llama.cpp's `_create_vocab_sentencepiece`).
fn spm_vocab(files: &Files, cfg: &HfConfig, path: &Path, out: &mut Vec<(String, Value)>) -> Result<VocabMeta> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let sp = SpmModel::parse(&bytes)
        .map_err(|e| Error::Invalid(format!("{}: not a SentencePiece model: {e}", path.display())))?;
    let vocab_size = match cfg.find_u32(&["vocab_size_per_layer_input", "vocab_size"])? {
        Some(v) if v > 0 => v as usize,
        _ => sp.pieces.len(),
    };
    let mut tokens: Vec<String> = (0..vocab_size).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000f32; vocab_size];
    let mut types = vec![UNUSED; vocab_size];
    for (i, p) in sp.pieces.iter().enumerate() {
        if i >= vocab_size {
            tracing::warn!("{}: pieces from id {i} on are beyond vocab_size {vocab_size}, ignored", path.display());
            break;
        }
        tokens[i] = p.piece.clone();
        scores[i] = p.score;
        types[i] = match p.kind {
            2 => UNKNOWN,
            3 => CONTROL,
            5 => UNUSED,
            6 => BYTE,
            _ => NORMAL,
        };
    }
    let added_json = files.dir.join("added_tokens.json");
    if let Some(m) = read_obj(&added_json)? {
        for (k, v) in m {
            match v.as_u64().map(|i| i as usize) {
                Some(i) if i < vocab_size => {
                    tokens[i] = k;
                    scores[i] = -1000.0;
                    types[i] = USER_DEFINED;
                }
                _ => tracing::warn!("{}: token {k:?} id {v} out of range, ignored", added_json.display()),
            }
        }
    }
    if let Some(dec) = files.config.as_ref().and_then(|c| c.get("added_tokens_decoder")).and_then(Json::as_object) {
        for (id, data) in dec {
            let (Ok(i), Some(content)) = (id.parse::<usize>(), data.get("content").and_then(Json::as_str)) else {
                continue;
            };
            if i >= vocab_size {
                continue;
            }
            let special = data.get("special").and_then(Json::as_bool).unwrap_or(false);
            if special || looks_special(content) {
                types[i] = CONTROL;
                tokens[i] = content.to_string();
            } else {
                types[i] = USER_DEFINED;
                tokens[i] = content.replace('\u{2581}', " ");
            }
            scores[i] = -1000.0;
        }
    }
    let n = tokens.len();
    push_llama(out, tokens, scores, types);
    Special::load(files, cfg, false, Some(n))?.entries(out);
    Ok(VocabMeta { entries: Vec::new(), model: "llama", n_tokens: n, pre: None, pre_hash: None })
}

/// A SentencePiece-style `tokenizer.json` (llama.cpp's `LlamaHfVocab`: scores are all -1000).
fn llama_hf_vocab(files: &Files, cfg: &HfConfig, out: &mut Vec<(String, Value)>) -> Result<VocabMeta> {
    let file = files.tj_path();
    let vocab = files.model().and_then(|m| m.get("vocab")).and_then(Json::as_object).ok_or_else(|| {
        HfError::BadField { file: file.clone(), field: "model.vocab".into(), reason: "missing or not a map".into() }
    })?;
    let base = vocab.len();
    let mut reverse: HashMap<usize, &str> = HashMap::with_capacity(base);
    for (t, id) in vocab {
        if let Some(i) = id.as_u64() {
            reverse.insert(i as usize, t);
        }
    }
    let added = files.added_tokens();
    let mut specials: Vec<u32> = added.iter().filter(|a| a.special).map(|a| a.id).collect();
    if let Some(tc) = &files.config {
        for typ in ["bos", "eos", "unk", "sep", "pad", "cls", "mask"] {
            let content = match tc.get(&format!("{typ}_token")) {
                Some(Json::String(c)) => Some(c.as_str()),
                Some(Json::Object(o)) => o.get("content").and_then(Json::as_str),
                _ => None,
            };
            if let Some(id) = content.and_then(|c| vocab.get(c)).and_then(Json::as_u64) {
                specials.push(id as u32);
            }
        }
    }
    let byte_re = regex::Regex::new(r"^<0x[0-9A-Fa-f]{2}>$").expect("valid");
    let (mut tokens, mut scores, mut types) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..base {
        let t = reverse.get(&i).ok_or_else(|| HfError::BadField {
            file: file.clone(),
            field: "model.vocab".into(),
            reason: format!("no token has id {i} (ids must be 0..{base})"),
        })?;
        tokens.push(t.to_string());
        scores.push(-1000.0);
        types.push(if byte_re.is_match(t) {
            BYTE
        } else if specials.contains(&(i as u32)) {
            CONTROL
        } else {
            NORMAL
        });
    }
    let mut extra: Vec<&AddedToken> = added.iter().filter(|a| a.id as usize >= base).collect();
    extra.sort_by_key(|a| a.id);
    for a in extra {
        tokens.push(a.content.clone());
        scores.push(-1000.0);
        types.push(if a.special { CONTROL } else { USER_DEFINED });
    }
    let n = tokens.len();
    push_llama(out, tokens, scores, types);
    Special::load(files, cfg, false, Some(n))?.entries(out);
    Ok(VocabMeta { entries: Vec::new(), model: "llama", n_tokens: n, pre: None, pre_hash: None })
}

fn push_llama(out: &mut Vec<(String, Value)>, tokens: Vec<String>, scores: Vec<f32>, types: Vec<i32>) {
    out.push(("tokenizer.ggml.model".into(), Value::string("llama")));
    out.push(("tokenizer.ggml.pre".into(), Value::string("default")));
    out.push(("tokenizer.ggml.tokens".into(), string_array(tokens)));
    out.push(("tokenizer.ggml.scores".into(), Value::from(scores)));
    out.push(("tokenizer.ggml.token_type".into(), Value::from(types)));
}
