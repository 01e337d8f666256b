//! `crunch eval choice`: multiple-choice accuracy from a JSONL task file.
//!
//! One task per line: `{"context": "...", "endings": ["...", "..."], "label": 0}`. `label` is the
//! index of the correct ending (a number or a numeric string); `ctx` is accepted for `context`
//! (HellaSwag's field name). Blank lines are skipped. Scoring is llama.cpp's HellaSwag scoring, see
//! [`crunch_model::choice`].

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crunch_model::choice::{score_task, Accuracy, ChoiceTask, TaskScore};
use crunch_model::LoraSpec;

use super::{check_cancel, model_err, open_model_with};
use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};

#[derive(Deserialize)]
#[serde(untagged)]
enum Label {
    Index(usize),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskLine {
    #[serde(alias = "ctx")]
    context: String,
    endings: Vec<String>,
    label: Label,
    /// Ignored (HellaSwag metadata).
    #[serde(default)]
    #[allow(dead_code)]
    activity_label: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    id: Option<serde_json::Value>,
}

/// Read a JSONL task file; errors name the line.
pub fn load_tasks(path: &Path) -> Result<Vec<ChoiceTask>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| Error::Invalid(format!("{} line {}: {why}", path.display(), i + 1));
        let t: TaskLine = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let label = match t.label {
            Label::Index(n) => n,
            Label::Text(s) => s.trim().parse().map_err(|_| bad(format!("label {s:?} is not an index")))?,
        };
        if t.endings.len() < 2 {
            return Err(bad(format!("{} ending(s); a task needs at least 2", t.endings.len())));
        }
        if label >= t.endings.len() {
            return Err(bad(format!("label {label} but {} endings", t.endings.len())));
        }
        tasks.push(ChoiceTask { context: t.context, endings: t.endings, label });
    }
    if tasks.is_empty() {
        return Err(Error::Invalid(format!("{}: no tasks", path.display())));
    }
    Ok(tasks)
}

/// Options of `crunch eval choice`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChoiceOptions {
    /// Score only the first `limit` tasks.
    pub limit: Option<usize>,
    pub exact: bool,
    /// LoRA adapters applied to the model, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lora: Vec<LoraSpec>,
}

/// The result of `crunch eval choice`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChoiceReport {
    pub model: String,
    pub tasks: String,
    pub n_tasks: usize,
    /// Best summed log-likelihood of the ending.
    pub acc: Accuracy,
    /// Best mean log-likelihood per ending token (llama.cpp's HellaSwag score).
    pub acc_norm: Accuracy,
    /// Accuracy of always guessing: mean of 1 / number of endings, in percent.
    pub chance_pct: f64,
    pub scores: Vec<TaskScore>,
    pub seconds: f64,
}

/// `crunch eval choice MODEL --tasks FILE.jsonl`.
pub fn choice(
    model_path: &Path,
    tasks_path: &Path,
    opts: &ChoiceOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<ChoiceReport> {
    let mut tasks = load_tasks(tasks_path)?;
    if let Some(n) = opts.limit {
        tasks.truncate(n.max(1));
    }
    let loaded = open_model_with(model_path, opts.exact, &opts.lora, "choice.lora")?;
    let t0 = Instant::now();
    let mut cache = loaded.model.new_cache(loaded.model.config.n_ctx_train.min(4096));
    let (mut acc, mut acc_norm) = (0usize, 0usize);
    let mut scores = Vec::with_capacity(tasks.len());
    progress.start("tasks", tasks.len() as u64);
    for (i, t) in tasks.iter().enumerate() {
        check_cancel(cancel)?;
        let s = score_task(&loaded.model, &loaded.tokenizer, t, &mut cache).map_err(model_err(format!(
            "{} task {}",
            tasks_path.display(),
            i + 1
        )))?;
        acc += (s.pred == t.label) as usize;
        acc_norm += (s.pred_norm == t.label) as usize;
        let a = Accuracy::new(acc_norm, i + 1);
        progress.advance(i as u64 + 1, &format!("{}\t{:.8}%\t[{:.4}%, {:.4}%]", i + 1, a.pct, a.ci_low, a.ci_high));
        scores.push(s);
    }
    let n = tasks.len();
    let chance = 100.0 * tasks.iter().map(|t| 1.0 / t.endings.len() as f64).sum::<f64>() / n as f64;
    let report = ChoiceReport {
        model: model_path.display().to_string(),
        tasks: tasks_path.display().to_string(),
        n_tasks: n,
        acc: Accuracy::new(acc, n),
        acc_norm: Accuracy::new(acc_norm, n),
        chance_pct: chance,
        scores,
        seconds: t0.elapsed().as_secs_f64(),
    };
    progress.finish(&format!("acc {:.2}%, acc_norm {:.2}%", report.acc.pct, report.acc_norm.pct));
    Ok(report)
}
