//! Removing what a job that did not finish left behind: the temporary files crunch writes beside
//! an output (`.NAME.crunch-tmp-PID-N`, see `crunch_core::output::temp_path_for`), the
//! calibration scratch (`OUTPUT.calib-tmp`), and outputs the job created (with their `.sha256`
//! sidecars). Outputs that existed before the job started are left alone.

use std::path::{Path, PathBuf};

/// Whether `name` is a temporary file of the output named `output_name`.
fn is_temp_of(name: &str, output_name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|rest| rest.strip_prefix(output_name))
        .is_some_and(|rest| rest.starts_with(".crunch-tmp-"))
}

fn remove_any(p: &Path) -> bool {
    match p.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).is_ok(),
        Ok(_) => std::fs::remove_file(p).is_ok(),
        Err(_) => false,
    }
}

/// Temporary files left inside a folder output (each file of it is written atomically).
fn temp_files_within(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if name.starts_with('.') && name.contains(".crunch-tmp-") {
            found.push(p);
        } else if is_dir && depth > 0 {
            temp_files_within(&p, depth - 1, found);
        }
    }
}

/// Remove the temporary files of `outputs`, and `new_outputs` themselves (the outputs the job
/// created). Returns what was removed.
pub fn remove_leftovers(outputs: &[PathBuf], new_outputs: &[PathBuf]) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for out in outputs {
        let Some(name) = out.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
        let mut doomed = Vec::new();
        if let Some(dir) = out.parent() {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    if is_temp_of(&e.file_name().to_string_lossy(), &name) {
                        doomed.push(e.path());
                    }
                }
            }
        }
        doomed.push(PathBuf::from(format!("{}.calib-tmp", out.display())));
        if out.is_dir() {
            temp_files_within(out, 4, &mut doomed);
        }
        if new_outputs.contains(out) {
            doomed.push(crunch_core::output::sidecar_path(out));
            doomed.push(out.clone());
        }
        for p in doomed {
            if remove_any(&p) {
                removed.push(p);
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_and_new_outputs_go_old_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let new = d.join("new.gguf");
        let old = d.join("old.gguf");
        for f in [".new.gguf.crunch-tmp-12-0", ".old.gguf.crunch-tmp-12-1", "new.gguf", "new.gguf.sha256", "old.gguf"] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        std::fs::create_dir(d.join("new.gguf.calib-tmp")).unwrap();
        std::fs::write(d.join(".unrelated.crunch-tmp-1-0"), b"x").unwrap();
        let removed = remove_leftovers(&[new.clone(), old.clone()], std::slice::from_ref(&new));
        assert_eq!(removed.len(), 5, "{removed:?}");
        let mut left: Vec<String> =
            std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, vec![".unrelated.crunch-tmp-1-0", "old.gguf"]);
    }
}
