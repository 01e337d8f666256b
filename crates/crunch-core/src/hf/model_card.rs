//! The YAML front matter of a model card (`README.md` between two `---` lines), which llama.cpp
//! reads for `general.*` provenance (license, languages, tags, base models, datasets…).
//!
//! Only the shapes model cards use for those keys are understood: top-level `key: scalar`,
//! `key: [a, b]` and `key:` followed by `- item` lines. Nested maps (e.g. `model-index`) and list
//! items that are maps are recorded as [`CardValue::Other`] and ignored, rather than failing the
//! conversion. Scalars are kept as text (quotes removed), so `license: mit` and `version: 1.0` are
//! both strings.

use std::collections::BTreeMap;

/// A top-level value of the front matter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CardValue {
    Str(String),
    List(Vec<String>),
    /// A nested map, a list of maps, or `null`.
    Other,
}

/// The parsed front matter: top-level keys in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelCard {
    pub entries: Vec<(String, CardValue)>,
}

impl ModelCard {
    pub fn get(&self, key: &str) -> Option<&CardValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A scalar value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            CardValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A list, or a scalar as a one-element list (as llama.cpp's `use_array_model_card_metadata`).
    pub fn get_list(&self, key: &str) -> Option<Vec<String>> {
        match self.get(key)? {
            CardValue::Str(s) => Some(vec![s.clone()]),
            CardValue::List(v) => Some(v.clone()),
            CardValue::Other => None,
        }
    }

    /// Parse the front matter of a model card's text; a card without front matter is empty.
    pub fn parse(text: &str) -> Self {
        let mut lines = text.lines();
        if lines.next() != Some("---") {
            return ModelCard::default();
        }
        let body: Vec<String> = lines.take_while(|l| *l != "---").map(|l| l.replace('\t', "  ")).collect();
        let mut entries: Vec<(String, CardValue)> = Vec::new();
        let mut i = 0;
        while i < body.len() {
            let line = &body[i];
            i += 1;
            if line.trim().is_empty() || line.trim_start().starts_with('#') || line.starts_with(' ') {
                continue;
            }
            let Some((key, rest)) = split_key(line) else { continue };
            let rest = strip_comment(rest).trim();
            let value = if rest.is_empty() {
                // A block: list items or a nested map, indented or not (YAML allows `- x` at column 0).
                let mut items = Vec::new();
                let mut other = false;
                while i < body.len() {
                    let l = &body[i];
                    let t = l.trim_start();
                    if l.trim().is_empty() || t.starts_with('#') {
                        i += 1;
                        continue;
                    }
                    let indented = l.starts_with(' ');
                    if let Some(item) = t.strip_prefix("- ").or_else(|| (t == "-").then_some("")) {
                        let item = strip_comment(item).trim();
                        if split_key(item).is_some() && !is_quoted(item) {
                            other = true; // a list of maps
                        } else {
                            items.push(unquote(item));
                        }
                        i += 1;
                    } else if indented {
                        other = true; // nested map or continuation of a map item
                        i += 1;
                    } else {
                        break;
                    }
                }
                if other || items.is_empty() {
                    CardValue::Other
                } else {
                    CardValue::List(items)
                }
            } else if let Some(inner) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                CardValue::List(
                    split_flow(inner).into_iter().map(|s| unquote(s.trim())).filter(|s| !s.is_empty()).collect(),
                )
            } else if rest == "null"
                || rest == "~"
                || rest.starts_with('{')
                || rest.starts_with('|')
                || rest.starts_with('>')
            {
                CardValue::Other
            } else {
                CardValue::Str(unquote(rest))
            };
            entries.retain(|(k, _)| k != key);
            entries.push((key.to_string(), value));
        }
        ModelCard { entries }
    }
}

fn is_quoted(s: &str) -> bool {
    s.starts_with('"') || s.starts_with('\'')
}

/// `key: rest` for a plain or quoted key.
fn split_key(line: &str) -> Option<(&str, &str)> {
    let t = line.trim_start();
    if is_quoted(t) {
        let q = t.as_bytes()[0] as char;
        let end = t[1..].find(q)? + 1;
        let rest = t[end + 1..].strip_prefix(':')?;
        return Some((&t[1..end], rest));
    }
    let pos = t.find(": ").or_else(|| t.ends_with(':').then(|| t.len() - 1))?;
    let key = &t[..pos];
    if key.is_empty() || key.starts_with('-') {
        return None;
    }
    Some((key, &t[pos + 1..]))
}

/// Remove a ` # comment` outside quotes.
fn strip_comment(s: &str) -> &str {
    let mut quote = None;
    let b = s.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'"' || c == b'\'' => quote = Some(c),
            None if c == b'#' && (i == 0 || b[i - 1] == b' ') => return &s[..i],
            None => {}
        }
    }
    s
}

/// Split a flow list body on commas outside quotes.
fn split_flow(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quote) = (0, None);
    for (i, c) in s.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == ',' => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            None => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Remove YAML quotes (with `''` and basic backslash escapes).
fn unquote(s: &str) -> String {
    if s.len() >= 2 && s.starts_with('\'') && s.ends_with('\'') {
        return s[1..s.len() - 1].replace("''", "'");
    }
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        let mut out = String::new();
        let mut chars = s[1..s.len() - 1].chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(o) => out.push(o),
                    None => {}
                }
            } else {
                out.push(c);
            }
        }
        return out;
    }
    s.to_string()
}

/// Quote a string for YAML when needed (used when writing a model card on export).
pub fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| c.is_alphanumeric() || "-_./+ ()".contains(c))
        && !s.starts_with(|c: char| c == '-' || c == ' ' || c.is_ascii_digit())
        && !s.ends_with(' ')
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "yes" | "no" | "true" | "false" | "null" | "on" | "off" | "y" | "n"
        );
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// Render a front matter block from `(key, value)` pairs.
pub fn render(entries: &[(String, CardValue)]) -> String {
    let mut out = String::from("---\n");
    for (k, v) in entries {
        match v {
            CardValue::Str(s) => out.push_str(&format!("{k}: {}\n", yaml_scalar(s))),
            CardValue::List(items) => {
                out.push_str(&format!("{k}:\n"));
                for it in items {
                    out.push_str(&format!("- {}\n", yaml_scalar(it)));
                }
            }
            CardValue::Other => {}
        }
    }
    out.push_str("---\n");
    out
}

/// The card's entries as a map (for tests and reports).
pub fn to_map(card: &ModelCard) -> BTreeMap<String, CardValue> {
    card.entries.iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_shapes_model_cards_use() {
        let text = "---\nlanguage: en\nlicense: apache-2.0 # comment\ntags:\n- a\n- 'b: c'\n  # x\ndatasets:\n  - s2orc\n  - org/name\nbase_model: [\"x/y\", z]\nmodel-index:\n- name: foo\n  results: []\nwidget:\n  text: hi\npipeline_tag: sentence-similarity\n---\n# Title\nlicense: ignored\n";
        let c = ModelCard::parse(text);
        assert_eq!(c.get_str("language"), Some("en"));
        assert_eq!(c.get_str("license"), Some("apache-2.0"));
        assert_eq!(c.get_list("tags").unwrap(), vec!["a", "b: c"]);
        assert_eq!(c.get_list("datasets").unwrap(), vec!["s2orc", "org/name"]);
        assert_eq!(c.get_list("base_model").unwrap(), vec!["x/y", "z"]);
        assert_eq!(c.get("model-index"), Some(&CardValue::Other));
        assert_eq!(c.get("widget"), Some(&CardValue::Other));
        assert_eq!(c.get_str("pipeline_tag"), Some("sentence-similarity"));
        assert_eq!(ModelCard::parse("# no front matter\n"), ModelCard::default());
    }

    #[test]
    fn render_parses_back() {
        let entries = vec![
            ("name".to_string(), CardValue::Str("Smollm2 135M: it's 8k".into())),
            ("language".to_string(), CardValue::List(vec!["en".into(), "no".into()])),
            ("size_label".to_string(), CardValue::Str("135M".into())),
        ];
        let c = ModelCard::parse(&render(&entries));
        assert_eq!(c.entries, entries);
    }
}
