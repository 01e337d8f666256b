//! `general.*` provenance of a converted model, gathered as llama.cpp's `gguf.Metadata.load` does:
//! the model card's front matter first, then the model id in `config.json` (`_name_or_path`), then
//! the folder name, then a size label computed from the parameter count; sampling defaults come
//! from `generation_config.json`.

use super::naming::{id_to_title, model_id_components, size_label, IdParts};
use crunch_core::gguf::Value;
use crunch_core::hf::{CardValue, ModelCard};
use serde_json::{Map, Value as Json};
use std::path::Path;

/// A base model or dataset entry (`general.base_model.N.*`, `general.dataset.N.*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Source {
    name: Option<String>,
    version: Option<String>,
    organization: Option<String>,
    repo_url: Option<String>,
}

/// The authorship fields llama.cpp fills.
#[derive(Clone, Debug, Default)]
struct Fields {
    name: Option<String>,
    author: Option<String>,
    version: Option<String>,
    organization: Option<String>,
    finetune: Option<String>,
    basename: Option<String>,
    description: Option<String>,
    size_label: Option<String>,
    license: Option<String>,
    license_name: Option<String>,
    license_link: Option<String>,
    source_url: Option<String>,
    source_doi: Option<String>,
    source_uuid: Option<String>,
    source_repo_url: Option<String>,
    base_models: Option<Vec<Source>>,
    datasets: Option<Vec<Source>>,
    tags: Option<Vec<String>>,
    languages: Option<Vec<String>>,
}

fn fill(slot: &mut Option<String>, v: Option<String>) {
    if slot.is_none() {
        *slot = v;
    }
}

/// A base model or dataset given as an id or URL.
fn source_from(id: &str, total_params: i64) -> Source {
    let mut s = Source::default();
    if id.starts_with("http://") || id.starts_with("https://") || id.starts_with("ssh://") {
        s.repo_url = Some(id.to_string());
        if id.contains("huggingface.co") {
            let rest = id.split_once("huggingface.co/").map(|(_, r)| r).unwrap_or("");
            let ok = (id.starts_with("http://huggingface.co/") || id.starts_with("https://huggingface.co/"))
                && rest.split('/').count() == 2
                && rest.split('/').all(|p| !p.is_empty());
            if ok {
                let p = model_id_components(rest, total_params);
                s.name = Some(id_to_title(&p.full));
                s.organization = p.org.as_deref().map(id_to_title);
                s.version = p.version;
            }
        }
    } else {
        let p = model_id_components(id, total_params);
        s.name = Some(id_to_title(&p.full));
        s.organization = p.org.as_deref().map(id_to_title);
        s.version = p.version.clone();
        if let Some(org) = &p.org {
            s.repo_url = Some(format!("https://huggingface.co/{org}/{}", p.full));
        }
    }
    s
}

fn apply_id(f: &mut Fields, p: IdParts) {
    fill(&mut f.name, Some(id_to_title(&p.full)));
    fill(&mut f.organization, p.org.as_deref().map(id_to_title));
    fill(&mut f.basename, p.basename);
    fill(&mut f.finetune, p.finetune);
    fill(&mut f.version, p.version);
    fill(&mut f.size_label, p.size_label);
}

/// The `general.*` keys (and `general.sampling.*`) for a model folder, in llama.cpp's order,
/// starting after `general.architecture` and `general.type`.
///
/// `config` is `config.json`; `card` the model card (empty if none); `generation` the
/// `generation_config.json` (empty if none); `total_params` the number of weights written.
pub fn general_metadata(
    dir: &Path,
    config: &Map<String, Json>,
    card: &ModelCard,
    generation: &Map<String, Json>,
    total_params: u64,
    name_override: Option<&str>,
) -> Vec<(String, Value)> {
    let tp = total_params as i64;
    let mut f = Fields::default();
    let s = |k: &str| card.get_str(k).map(str::to_string);
    for (slot, keys) in [
        (&mut f.name, ["name", "model_name"]),
        (&mut f.author, ["author", "model_author"]),
        (&mut f.version, ["version", "model_version"]),
        (&mut f.organization, ["organization", "model_organization"]),
        (&mut f.description, ["description", "model_description"]),
        (&mut f.finetune, ["finetune", "model_finetune"]),
        (&mut f.basename, ["basename", "model_basename"]),
        (&mut f.size_label, ["size_label", "model_size_label"]),
        (&mut f.source_url, ["url", "model_url"]),
        (&mut f.source_doi, ["doi", "model_doi"]),
        (&mut f.source_uuid, ["uuid", "model_uuid"]),
        (&mut f.source_repo_url, ["repo_url", "model_repo_url"]),
    ] {
        for k in keys {
            fill(slot, s(k));
        }
    }
    fill(&mut f.author, s("model_creator"));
    fill(&mut f.basename, s("model_type"));
    for (keys, slot) in [
        (["base_model", "base_models", "base_model_sources"], &mut f.base_models),
        (["datasets", "dataset", "dataset_sources"], &mut f.datasets),
    ] {
        if let Some(k) = keys.iter().find(|k| card.get(k).is_some()) {
            let list = card.get_list(k).unwrap_or_default();
            *slot = Some(list.iter().map(|id| source_from(id, tp)).collect());
        }
    }
    match card.get("license") {
        Some(CardValue::Str(l)) => f.license = Some(l.clone()),
        Some(CardValue::List(l)) => f.license = Some(l.join(",")),
        _ => {}
    }
    fill(&mut f.license_name, s("license_name"));
    fill(&mut f.license_link, s("license_link"));
    for (slot, keys) in [(&mut f.tags, ["tags", "pipeline_tag"]), (&mut f.languages, ["languages", "language"])] {
        for k in keys {
            if let Some(v) = card.get_list(k) {
                slot.get_or_insert_with(Vec::new).extend(v);
            }
        }
    }
    if let Some(id) = config.get("_name_or_path").and_then(Json::as_str) {
        if id.matches('/').count() <= 1 {
            apply_id(&mut f, model_id_components(id, tp));
        }
    }
    let dir_name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    apply_id(&mut f, model_id_components(&dir_name, tp));
    if let Some(n) = name_override {
        f.name = Some(n.to_string());
    }
    fill(&mut f.name, Some(dir_name));
    if f.size_label.is_none() && total_params > 0 {
        f.size_label = Some(size_label(total_params));
    }

    let mut out: Vec<(String, Value)> = Vec::new();
    sampling(generation, &mut out);
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            out.push((format!("general.{k}"), Value::string(v.clone())));
        }
    };
    put("name", &f.name);
    put("author", &f.author);
    put("version", &f.version);
    put("organization", &f.organization);
    put("finetune", &f.finetune);
    put("basename", &f.basename);
    put("description", &f.description);
    put("size_label", &f.size_label);
    put("license", &f.license);
    put("license.name", &f.license_name);
    put("license.link", &f.license_link);
    put("source.url", &f.source_url);
    put("source.doi", &f.source_doi);
    put("source.uuid", &f.source_uuid);
    put("source.repo_url", &f.source_repo_url);
    for (what, list) in [("base_model", &f.base_models), ("dataset", &f.datasets)] {
        if let Some(list) = list {
            out.push((format!("general.{what}.count"), Value::U32(list.len() as u32)));
            for (i, src) in list.iter().enumerate() {
                for (k, v) in [
                    ("name", &src.name),
                    ("version", &src.version),
                    ("organization", &src.organization),
                    ("repo_url", &src.repo_url),
                ] {
                    if let Some(v) = v {
                        out.push((format!("general.{what}.{i}.{k}"), Value::string(v.clone())));
                    }
                }
            }
        }
    }
    for (k, list) in [("tags", &f.tags), ("languages", &f.languages)] {
        if let Some(list) = list.as_ref().filter(|l| !l.is_empty()) {
            out.push((format!("general.{k}"), Value::strings(list)));
        }
    }
    out
}

/// `general.sampling.*` from `generation_config.json`.
fn sampling(g: &Map<String, Json>, out: &mut Vec<(String, Value)>) {
    let int = |k: &str| g.get(k).and_then(Json::as_i64).map(|v| Value::I32(v as i32));
    let float = |k: &str| g.get(k).and_then(Json::as_f64).map(|v| Value::F32(v as f32));
    let entries: [(&str, Option<Value>); 12] = [
        ("sequence", g.get("sequence").and_then(Json::as_str).map(Value::string)),
        ("top_k", int("top_k")),
        ("top_p", float("top_p")),
        ("min_p", float("min_p")),
        ("xtc_probability", float("xtc_probability")),
        ("xtc_threshold", float("xtc_threshold")),
        ("temp", float("temperature")),
        ("penalty_last_n", int("penalty_last_n")),
        ("penalty_repeat", float("penalty_repeat").or_else(|| float("repetition_penalty"))),
        ("mirostat", int("mirostat")),
        ("mirostat_tau", float("mirostat_tau")),
        ("mirostat_eta", float("mirostat_eta")),
    ];
    for (k, v) in entries {
        if let Some(v) = v {
            out.push((format!("general.sampling.{k}"), v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_then_model_id_then_folder() {
        let card = ModelCard::parse("---\nlicense: apache-2.0\nlanguage: en\ndatasets:\n- s2orc\n- org/stackexchange_xml\ntags:\n- a\npipeline_tag: b\n---\n");
        let config: Map<String, Json> =
            serde_json::from_str(r#"{"_name_or_path": "nreimers/MiniLM-L6-H384-uncased"}"#).unwrap();
        let m = general_metadata(Path::new("/x/model"), &config, &card, &Map::new(), 22_713_216, None);
        let get = |k: &str| m.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.to_string());
        assert_eq!(get("general.name").unwrap(), "\"MiniLM L6 H384 Uncased\"");
        assert_eq!(get("general.organization").unwrap(), "\"Nreimers\"");
        assert_eq!(get("general.size_label").unwrap(), "\"23M\"");
        assert_eq!(get("general.license").unwrap(), "\"apache-2.0\"");
        assert_eq!(get("general.dataset.count").unwrap(), "2");
        assert_eq!(get("general.dataset.0.name").unwrap(), "\"S2Orc\"");
        assert_eq!(get("general.dataset.1.repo_url").unwrap(), "\"https://huggingface.co/org/stackexchange_xml\"");
        assert_eq!(get("general.tags").unwrap(), "[String; 2] = \"a\", \"b\"");
        let keys: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
        assert!(keys.iter().position(|k| *k == "general.name") < keys.iter().position(|k| *k == "general.license"));
    }
}
