//! Fixture git repositories, made by the tests with git2.

use std::path::{Path, PathBuf};

use git2::{Repository, Signature};

/// A repository at `dir` with `files` committed on `main`; returns its path.
pub fn repo(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let repo = Repository::init_opts(dir, git2::RepositoryInitOptions::new().initial_head("main"))
        .unwrap();
    commit(&repo, files, "Initial commit\n\nWith a body.");
    dir.to_path_buf()
}

/// Writes `files` (a `->` prefix makes a symlink) and commits them on HEAD.
pub fn commit(repo: &Repository, files: &[(&str, &str)], message: &str) -> String {
    let root = repo.workdir().unwrap().to_path_buf();
    for (path, content) in files {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        if let Some(target) = content.strip_prefix("->") {
            let _ = std::fs::remove_file(&full);
            std::os::unix::fs::symlink(target, &full).unwrap();
        } else {
            std::fs::write(&full, content).unwrap();
        }
    }
    let mut index = repo.index().unwrap();
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = Signature::now("Test", "test@example.com").unwrap();
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
        .unwrap()
        .to_string()
}

/// Creates branch `name` at HEAD.
pub fn branch(repo_dir: &Path, name: &str) {
    let repo = Repository::open(repo_dir).unwrap();
    let head = repo.head().unwrap().peel_to_commit().unwrap();
    repo.branch(name, &head, true).unwrap();
}
