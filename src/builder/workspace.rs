//! A build's workspace on the host: a fresh directory holding the checkout, removed
//! when the build ends.
//!
//! The checkout is untrusted: any path inside it may be a symlink to the host's `/etc`.
//! Host-side code reaches into it only through [`Workspace::resolve`], which refuses a
//! path with a symlink, `..` or an absolute part anywhere along it.

use std::path::{Component, Path, PathBuf};

pub struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    /// A new, empty workspace under `parent`.
    pub fn create(parent: &Path) -> std::io::Result<Workspace> {
        std::fs::create_dir_all(parent)?;
        let dir = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(parent)?;
        std::fs::create_dir(dir.path().join("src"))?;
        Ok(Workspace { dir })
    }

    /// The whole workspace, mounted into the build container as `/workspace`.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Where the repository is checked out (`/workspace/src` in the container).
    pub fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }

    /// `rel` inside the checkout, if every part of it is a real directory entry (no
    /// symlink, no `..`, not absolute). `Ok(None)` when it does not exist.
    pub fn resolve(&self, rel: &str) -> Result<Option<PathBuf>, String> {
        resolve_under(&self.src(), rel)
    }
}

/// [`Workspace::resolve`] for any root.
pub fn resolve_under(root: &Path, rel: &str) -> Result<Option<PathBuf>, String> {
    let mut path = root.to_path_buf();
    for part in Path::new(rel).components() {
        match part {
            Component::CurDir => continue,
            Component::Normal(name) => path.push(name),
            _ => return Err(format!("'{rel}' must stay inside the repository")),
        }
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "'{rel}' goes through a symlink, which is not followed"
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read '{rel}': {e}")),
        }
    }
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_symlinks_and_escapes() {
        let ws = Workspace::create(&std::env::temp_dir().join("scalemesh-ws-test")).unwrap();
        std::fs::create_dir_all(ws.src().join("app/dist")).unwrap();
        std::os::unix::fs::symlink("/etc", ws.src().join("evil")).unwrap();
        assert_eq!(
            ws.resolve("app/dist").unwrap(),
            Some(ws.src().join("app/dist"))
        );
        assert_eq!(ws.resolve(".").unwrap(), Some(ws.src()));
        assert_eq!(ws.resolve("missing").unwrap(), None);
        assert!(ws.resolve("evil").is_err());
        assert!(ws.resolve("evil/passwd").is_err());
        assert!(ws.resolve("../x").is_err());
        assert!(ws.resolve("/etc").is_err());
        let root = ws.root().to_path_buf();
        drop(ws);
        assert!(!root.exists(), "the workspace is removed");
    }
}
