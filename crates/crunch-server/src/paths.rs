//! Confining a job's paths: every input must resolve (after symlinks) inside a `--models` root
//! or the `--out` root, every output inside the `--out` root; anything else is a `403` naming the
//! field. Relative inputs are taken from the first models root, relative outputs from the out
//! root. Output folders that do not exist yet are created inside the out root.
//!
//! Outputs may not contain `..` at all (an output's folders are created, so they are checked
//! component by component); inputs may, as long as what they resolve to is inside a root.

use crate::error::ApiError;
use crunch::job::{Job, PathRole};
use std::path::{Component, Path, PathBuf};

/// The folders a server's jobs may touch, canonical.
#[derive(Clone, Debug)]
pub struct Roots {
    pub models: Vec<PathBuf>,
    pub out: PathBuf,
}

fn canonical_dir(p: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let c = p.canonicalize().map_err(|e| anyhow::anyhow!("{what} {}: {e}", p.display()))?;
    if !c.is_dir() {
        anyhow::bail!("{what} {} is not a folder", p.display());
    }
    Ok(c)
}

impl Roots {
    /// Canonicalize the roots (the out root is created if missing).
    ///
    /// # Errors
    /// A models root that does not exist or is not a folder; an out root that cannot be created.
    pub fn new(models: &[PathBuf], out: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("creating the out folder {}: {e}", out.display()))?;
        let models = models.iter().map(|m| canonical_dir(m, "models folder")).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Roots { models, out: canonical_dir(out, "out folder")? })
    }

    fn readable(&self, p: &Path) -> bool {
        p.starts_with(&self.out) || self.models.iter().any(|m| p.starts_with(m))
    }

    /// Resolve an input path: relative to the first models root, symlinks followed, inside a
    /// models root or the out root.
    ///
    /// # Errors
    /// `403` outside the roots, `400` for a path inside them that does not exist.
    pub fn input(&self, field: &str, p: &Path) -> Result<PathBuf, ApiError> {
        if p.as_os_str().is_empty() {
            return Err(ApiError::field(field, "empty path"));
        }
        let abs = if p.is_absolute() { p.to_path_buf() } else { self.models[0].join(p) };
        match abs.canonicalize() {
            Ok(c) if self.readable(&c) => Ok(c),
            Ok(_) => Err(ApiError::forbidden(
                field,
                format!("{} is outside the model folders and the out folder", p.display()),
            )),
            Err(e) => {
                // Say nothing about files outside the roots, not even whether they exist.
                let lexical_inside =
                    !abs.components().any(|c| c == Component::ParentDir) && self.readable(&lexical(&abs));
                if lexical_inside {
                    Err(ApiError::field(field, format!("{}: {e}", p.display())))
                } else {
                    Err(ApiError::forbidden(
                        field,
                        format!("{} is outside the model folders and the out folder", p.display()),
                    ))
                }
            }
        }
    }

    /// Resolve an output path: relative to the out root, no `..`, its folder inside the out root
    /// after symlinks (created if missing), and the file itself, if it exists, too.
    /// Returns the path and the folders that have to be created.
    ///
    /// # Errors
    /// `403` outside the out root, `400` for a path with no file name.
    pub fn output(&self, field: &str, p: &Path) -> Result<(PathBuf, Option<PathBuf>), ApiError> {
        let outside = || ApiError::forbidden(field, format!("{} is outside the out folder", p.display()));
        if p.as_os_str().is_empty() {
            return Err(ApiError::field(field, "empty path"));
        }
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(ApiError::forbidden(field, format!("{}: `..` is not allowed in an output path", p.display())));
        }
        let abs = if p.is_absolute() { p.to_path_buf() } else { self.out.join(p) };
        let abs = lexical(&abs);
        let name =
            abs.file_name().ok_or_else(|| ApiError::field(field, format!("{} has no file name", p.display())))?;
        let parent = abs.parent().ok_or_else(outside)?;
        // The deepest folder that exists, and the names below it still to create.
        let mut existing = parent.to_path_buf();
        let mut missing: Vec<std::ffi::OsString> = Vec::new();
        while existing.symlink_metadata().is_err() {
            let Some(n) = existing.file_name() else { return Err(outside()) };
            missing.push(n.to_os_string());
            existing = existing.parent().ok_or_else(outside)?.to_path_buf();
        }
        let base = existing.canonicalize().map_err(|_| outside())?;
        if !base.starts_with(&self.out) {
            return Err(outside());
        }
        if !base.is_dir() {
            return Err(ApiError::field(field, format!("{} is not a folder", existing.display())));
        }
        let mut dir = base;
        for n in missing.iter().rev() {
            dir.push(n);
        }
        let dest = dir.join(name);
        if dest.symlink_metadata().is_ok() {
            // An existing output (or a symlink planted in the out folder) must resolve inside too.
            let c = dest.canonicalize().map_err(|_| outside())?;
            if !c.starts_with(&self.out) || c == self.out {
                return Err(outside());
            }
            return Ok((c, None));
        }
        if dest == self.out {
            return Err(outside());
        }
        Ok((dest, (!missing.is_empty()).then_some(dir)))
    }

    /// Resolve and confine every path of `job` in place, then create the output folders.
    ///
    /// # Errors
    /// The first field at fault (`403` outside its roots, `400` missing input), or an output that
    /// is also an input (`403`).
    pub fn confine(&self, job: &mut Job) -> Result<(), ApiError> {
        if let Some((field, p)) = job.programs().first() {
            return Err(ApiError::forbidden(
                *field,
                format!(
                    "{}: the server does not start programs a request names (it runs its own binary, and the Python in $CRUNCH_RAY_PYTHON)",
                    p.display()
                ),
            ));
        }
        let mut to_create = Vec::new();
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        for (field, role, path) in job.paths_mut() {
            match role {
                PathRole::Input => {
                    *path = self.input(field, path)?;
                    inputs.push(path.clone());
                }
                PathRole::Output => {
                    let (p, mkdir) = self.output(field, path)?;
                    *path = p;
                    outputs.push((field, path.clone()));
                    to_create.extend(mkdir);
                }
            }
        }
        for (field, o) in &outputs {
            if inputs.iter().any(|i| i == o || i.starts_with(o)) {
                return Err(ApiError::forbidden(
                    *field,
                    format!("{} is an input of this job; inputs are never written", o.display()),
                ));
            }
        }
        for d in to_create {
            std::fs::create_dir_all(&d)
                .map_err(|e| ApiError::internal(format!("creating the folder {}: {e}", d.display())))?;
        }
        Ok(())
    }
}

/// `path` with `.` removed (no file system access; `..` is left in place).
fn lexical(path: &Path) -> PathBuf {
    path.components().filter(|c| *c != Component::CurDir).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_named_in_a_job_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        std::fs::create_dir_all(&models).unwrap();
        let roots = Roots::new(std::slice::from_ref(&models), &dir.path().join("out")).unwrap();
        let body = br#"{"kind": "search", "model": "m.gguf", "settings": {"text": "t.txt"}, "grid": ["preset=Q4_0"],
                        "ray": {"address": "127.0.0.1:6379", "python": "/bin/sh"}}"#;
        let mut job = crunch::job::from_json(body).unwrap();
        let e = roots.confine(&mut job).unwrap_err();
        assert_eq!(e.status, 403);
        assert!(format!("{e:?}").contains("ray.python"), "{e:?}");
    }

    #[test]
    fn outputs_stay_in_the_out_root() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        let out = dir.path().join("out");
        std::fs::create_dir_all(&models).unwrap();
        let roots = Roots::new(std::slice::from_ref(&models), &out).unwrap();
        let (p, mk) = roots.output("output", Path::new("a/b/x.gguf")).unwrap();
        assert_eq!(p, roots.out.join("a/b/x.gguf"));
        assert_eq!(mk, Some(roots.out.join("a/b")));
        assert_eq!(roots.output("output", Path::new("./x.gguf")).unwrap().0, roots.out.join("x.gguf"));
        for bad in ["../x.gguf", "a/../../x.gguf"] {
            assert_eq!(roots.output("output", Path::new(bad)).unwrap_err().status, 403, "{bad}");
        }
        let abs_outside = dir.path().join("elsewhere.gguf");
        assert_eq!(roots.output("output", &abs_outside).unwrap_err().status, 403);
        assert_eq!(roots.output("output", &roots.out).unwrap_err().status, 403);
        assert_eq!(roots.output("output", Path::new("/")).unwrap_err().status, 400);
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_followed_before_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        let out = dir.path().join("out");
        let secret = dir.path().join("secret");
        std::fs::create_dir_all(&models).unwrap();
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(secret.join("key"), b"x").unwrap();
        std::fs::write(models.join("m.gguf"), b"x").unwrap();
        let roots = Roots::new(std::slice::from_ref(&models), &out).unwrap();
        std::os::unix::fs::symlink(&secret, models.join("link")).unwrap();
        std::os::unix::fs::symlink(&secret, roots.out.join("escape")).unwrap();
        std::os::unix::fs::symlink(secret.join("key"), roots.out.join("file")).unwrap();
        assert_eq!(roots.input("model", Path::new("link/key")).unwrap_err().status, 403);
        assert_eq!(roots.input("model", Path::new("../secret/key")).unwrap_err().status, 403);
        assert_eq!(roots.input("model", &secret.join("nope")).unwrap_err().status, 403);
        assert_eq!(roots.input("model", Path::new("nope.gguf")).unwrap_err().status, 400);
        assert_eq!(roots.input("model", Path::new("m.gguf")).unwrap(), roots.models[0].join("m.gguf"));
        assert_eq!(roots.output("output", Path::new("escape/x.gguf")).unwrap_err().status, 403);
        assert_eq!(roots.output("output", Path::new("escape/new/x.gguf")).unwrap_err().status, 403);
        assert_eq!(roots.output("output", Path::new("file")).unwrap_err().status, 403);
        // Outputs may be read back as inputs.
        std::fs::write(roots.out.join("q.gguf"), b"x").unwrap();
        assert_eq!(roots.input("model", &roots.out.join("q.gguf")).unwrap(), roots.out.join("q.gguf"));
    }
}
