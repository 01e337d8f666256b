//! llama.cpp's guesses about a model from its id (`org/name-135M-instruct-v2`): name, organization,
//! basename, size label, fine-tune and version, plus its title-casing and size labels. These fill
//! `general.*` when the model card does not say.

use regex::Regex;
use std::sync::OnceLock;

/// The parts of a model id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdParts {
    /// The name part (after `org/`).
    pub full: String,
    pub org: Option<String>,
    pub basename: Option<String>,
    pub finetune: Option<String>,
    pub version: Option<String>,
    pub size_label: Option<String>,
}

struct Patterns {
    version: Regex,
    qtype: Regex,
    size: Regex,
    finetune: Regex,
    version_word: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| Patterns {
        version: Regex::new(r"(?i)^(?:v|iter)?\d+(?:[.]\d+)*$").expect("valid"),
        qtype: Regex::new(r"(?i)^(?:i?q\d(?:_\w)*|b?fp?(?:16|32))$").expect("valid"),
        size: Regex::new(r"(?i)^(?:(?:(?:[A]|\d+[x])?\d+(?:[._]\d+)?[KMBT][\d]?)|small|mini|medium|large|x?xl)$")
            .expect("valid"),
        finetune: Regex::new(r"(?i)^(?:chat|instruct|vision|lora)$").expect("valid"),
        version_word: Regex::new(r"^(?:v\d+(?:\.\d+)*|\d.*)$").expect("valid"),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Version,
    Type,
    Size,
    Finetune,
    Basename,
}

/// Split a model id into its parts, as llama.cpp's `Metadata.get_model_id_components` does.
/// `total_params` (0 if unknown) tells a size label from a context length (`8k`).
pub fn model_id_components(model_id: &str, total_params: i64) -> IdParts {
    if model_id.contains(' ') {
        return IdParts { full: model_id.to_string(), ..Default::default() };
    }
    let (org, full) = match model_id.split_once('/') {
        Some((o, f)) => (Some(o.to_string()), f.to_string()),
        None => (None, model_id.to_string()),
    };
    let org = org.filter(|o| !o.starts_with('.'));
    let p = patterns();
    let mut parts: Vec<String> = full.split('-').filter(|s| !s.is_empty()).map(str::to_string).collect();
    let mut kinds: Vec<Vec<Kind>> = vec![Vec::new(); parts.len()];
    for i in 0..parts.len() {
        let part = parts[i].clone();
        if p.version.is_match(&part) {
            kinds[i].push(Kind::Version);
        } else if p.qtype.is_match(&part) {
            kinds[i].push(Kind::Type);
            parts[i] = part.to_uppercase();
        } else if i > 0 && p.size.is_match(&part) {
            let mut part: Vec<char> = part.replace('_', ".").chars().collect();
            let n = part.len();
            // bloom-7b1 style: "7b1" -> "7.1b"
            if part[n - 1].is_ascii_digit() && n >= 2 {
                let (a, b) = (part[n - 2], part[n - 1]);
                part.truncate(n - 2);
                part.extend(['.', b, a]);
            }
            let n = part.len();
            if n > 1 && part[n - 2].is_ascii_digit() && "kmbt".contains(part[n - 1]) {
                part[n - 1] = part[n - 1].to_ascii_uppercase();
            }
            if total_params != 0 {
                let n = part.len();
                let num: String = part[..n - 1].iter().collect();
                let scale = " KMBT".find(part[n - 1]).map(|e| 1000f64.powi(e as i32));
                if let (Ok(x), Some(scale)) = (num.parse::<f64>(), scale) {
                    let label = x * scale;
                    let t = total_params as f64;
                    let small = total_params < 0 && label < (total_params.unsigned_abs() / 8) as f64;
                    let far = total_params > 0 && (label - t).abs() > (7 * total_params / 8) as f64;
                    if small || far {
                        kinds[i].push(Kind::Finetune);
                        let last = part[n - 1].to_ascii_lowercase();
                        part[n - 1] = last;
                    }
                }
            }
            if kinds[i].is_empty() {
                kinds[i].push(Kind::Size);
            }
            parts[i] = part.into_iter().collect();
        } else if i > 0 && p.finetune.is_match(&part) {
            if total_params < 0 && part.eq_ignore_ascii_case("lora") {
                kinds[i].push(Kind::Type);
            } else {
                kinds[i].push(Kind::Finetune);
            }
        }
    }
    // Word-based size labels are dropped when a number-based one exists.
    let numeric_size =
        parts.iter().zip(&kinds).any(|(n, k)| k.contains(&Kind::Size) && n.chars().any(|c| c.is_ascii_digit()));
    if numeric_size {
        for (n, k) in parts.iter().zip(kinds.iter_mut()) {
            if k.contains(&Kind::Size) && n.chars().all(char::is_alphabetic) {
                k.retain(|x| *x != Kind::Size);
            }
        }
    }
    let mut at_start = true;
    for (part, k) in parts.iter().zip(kinds.iter_mut()) {
        let alpha_start = part.chars().next().is_some_and(char::is_alphabetic);
        if at_start && ((k.is_empty() && alpha_start) || k.contains(&Kind::Version)) {
            k.push(Kind::Basename);
        } else {
            at_start = false;
            if k.is_empty() {
                k.push(Kind::Finetune);
            }
        }
    }
    for k in kinds.iter_mut().rev() {
        if k.contains(&Kind::Basename) && k.len() > 1 {
            k.retain(|x| *x != Kind::Basename);
        } else {
            break;
        }
    }
    let join = |f: &dyn Fn(&Vec<Kind>) -> bool| -> Option<String> {
        let mut seen: Vec<&str> = Vec::new();
        for (n, k) in parts.iter().zip(&kinds) {
            if f(k) {
                seen.push(n);
            }
        }
        (!seen.is_empty()).then(|| seen.join("-"))
    };
    let mut basename = join(&|k| k.contains(&Kind::Basename));
    let size_label = {
        let mut uniq: Vec<&str> = Vec::new();
        for (n, k) in parts.iter().zip(&kinds) {
            if k.contains(&Kind::Size) && !uniq.contains(&n.as_str()) {
                uniq.push(n);
            }
        }
        (!uniq.is_empty()).then(|| uniq.join("-"))
    };
    let finetune = join(&|k| k.contains(&Kind::Finetune));
    let version = join(&|k| k.contains(&Kind::Version) && !k.contains(&Kind::Basename));
    if size_label.is_none() && finetune.is_none() && version.is_none() {
        basename = None;
    }
    IdParts { full, org, basename, finetune, version, size_label }
}

/// Python's `str.title()`: the first cased character after an uncased one is upper-cased, the
/// others lower-cased.
fn py_title(w: &str) -> String {
    let mut out = String::with_capacity(w.len());
    let mut prev_cased = false;
    for c in w.chars() {
        let cased = c.is_lowercase() || c.is_uppercase();
        if cased {
            if prev_cased {
                out.extend(c.to_lowercase());
            } else {
                out.extend(c.to_uppercase());
            }
        } else {
            out.push(c);
        }
        prev_cased = cased;
    }
    out
}

/// Python's `str.islower()`: some cased character, none upper-case.
fn py_islower(w: &str) -> bool {
    w.chars().any(char::is_lowercase) && !w.chars().any(char::is_uppercase)
}

/// llama.cpp's `Metadata.id_to_title`: dashes become spaces, all-lower-case words are title-cased
/// unless they look like versions or numbers.
pub fn id_to_title(s: &str) -> String {
    let p = patterns();
    s.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| if py_islower(w) && !p.version_word.is_match(w) { py_title(w) } else { w.to_string() })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `gguf.size_label`: a parameter count as `135M`, `7.2B`, `23M` (at least two significant digits).
pub fn size_label(total_params: u64) -> String {
    let n = total_params as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let rounded = scaled.round_ties_even() as u64;
    let digits = if rounded == 0 { 0 } else { rounded.to_string().len() };
    let fix = 2usize.saturating_sub(digits);
    format!("{scaled:.fix$}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm2_id() {
        let p = model_id_components("HuggingFaceTB/smollm2-135M-8k-lc100k-mix1-ep2", 134_515_008);
        assert_eq!(p.org.as_deref(), Some("HuggingFaceTB"));
        assert_eq!(p.basename.as_deref(), Some("smollm2"));
        assert_eq!(p.size_label.as_deref(), Some("135M"));
        assert_eq!(p.finetune.as_deref(), Some("8k-lc100k-mix1-ep2"));
        assert_eq!(p.version, None);
        assert_eq!(id_to_title(&p.full), "Smollm2 135M 8k Lc100K Mix1 Ep2");
    }

    #[test]
    fn other_ids() {
        let p = model_id_components("nreimers/MiniLM-L6-H384-uncased", 22_713_216);
        assert_eq!((p.basename, p.finetune, p.size_label), (None, None, None));
        assert_eq!(id_to_title("MiniLM-L6-H384-uncased"), "MiniLM L6 H384 Uncased");
        assert_eq!(id_to_title("nreimers"), "Nreimers");
        assert_eq!(id_to_title("stackexchange_xml"), "Stackexchange_Xml");
        assert_eq!(id_to_title("s2orc"), "S2Orc");
        let p = model_id_components("Mistral-7B-Instruct-v0.3", 7_248_023_552);
        assert_eq!(p.basename.as_deref(), Some("Mistral"));
        assert_eq!(p.size_label.as_deref(), Some("7B"));
        assert_eq!(p.finetune.as_deref(), Some("Instruct"));
        assert_eq!(p.version.as_deref(), Some("v0.3"));
        let p = model_id_components("bloom-7b1", 7_000_000_000);
        assert_eq!(p.size_label.as_deref(), Some("7.1B"));
        let p = model_id_components("Qwen2.5-0.5B-Instruct", 494_032_768);
        assert_eq!(p.basename.as_deref(), Some("Qwen2.5"));
        assert_eq!(p.size_label.as_deref(), Some("0.5B"));
    }

    #[test]
    fn size_labels() {
        assert_eq!(size_label(134_515_008), "135M");
        assert_eq!(size_label(22_713_216), "23M");
        assert_eq!(size_label(6_738_415_616), "6.7B");
        assert_eq!(size_label(494_032_768), "494M");
        assert_eq!(size_label(1_500_000), "1.5M");
    }
}
