//! Upload: the build's output directory into the object store, with a manifest.
//!
//! ```text
//! deployments/<id>/files/<path>     each file, uploaded concurrently
//! deployments/<id>/manifest.json    written last: path → size, sha256, content type
//! ```
//!
//! The manifest is what the proxy serves from: a file not in it does not exist. Symlinks
//! are skipped with a warning and never followed; `.git` is never uploaded. Runs on the
//! host, outside the build container, after the container is gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::storage::deployment_prefix;

const CONCURRENT_UPLOADS: usize = 16;

/// One file of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
}

/// Every file of a deployment, by path relative to the output directory (`a/b.html`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub files: BTreeMap<String, ManifestEntry>,
}

/// Limits on one deployment's output.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    pub max_files: u64,
    pub max_bytes: u64,
}

/// What an upload did, for the log and the deployment row.
#[derive(Debug, Clone)]
pub struct UploadSummary {
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Paths skipped because they are symlinks (relative to the output).
    pub skipped_symlinks: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the output has more than {0} files (builder.max_files)")]
    TooManyFiles(u64),
    #[error("the output is larger than {0} MiB (builder.max_output_mb)")]
    TooLarge(u64),
    #[error("cannot read the output: {0}")]
    Read(String),
    #[error("upload to the artifact store failed: {0}")]
    Store(String),
}

/// Where a file of a deployment is stored.
pub fn file_location(deployment_id: &str, rel: &str) -> StorePath {
    let mut parts = vec![
        "deployments".to_string(),
        deployment_id.to_string(),
        "files".to_string(),
    ];
    parts.extend(rel.split('/').map(str::to_string));
    StorePath::from_iter(parts)
}

pub fn manifest_location(deployment_id: &str) -> StorePath {
    deployment_prefix(deployment_id).join("manifest.json")
}

/// The `Content-Type` of a path, with `charset=utf-8` for text.
pub fn content_type_for(path: &str) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let essence = mime.essence_str();
    let texty = mime.type_() == mime_guess::mime::TEXT
        || matches!(
            essence,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "image/svg+xml"
                | "application/manifest+json"
        );
    if texty {
        format!("{essence}; charset=utf-8")
    } else {
        essence.to_string()
    }
}

/// Reads the manifest of a deployment.
pub async fn read_manifest(
    store: &dyn ObjectStore,
    deployment_id: &str,
) -> anyhow::Result<Manifest> {
    let bytes = store
        .get(&manifest_location(deployment_id))
        .await?
        .bytes()
        .await?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// Uploads every regular file under `output` and then the manifest.
pub async fn upload(
    store: Arc<dyn ObjectStore>,
    deployment_id: &str,
    output: &Path,
    limits: UploadLimits,
) -> Result<UploadSummary, UploadError> {
    let started = Instant::now();
    let (files, skipped_symlinks) = {
        let output = output.to_path_buf();
        tokio::task::spawn_blocking(move || collect(&output, limits))
            .await
            .map_err(|e| UploadError::Read(e.to_string()))??
    };
    let entries: Vec<(String, ManifestEntry)> = futures::stream::iter(files)
        .map(|(rel, path)| {
            let store = store.clone();
            async move {
                let data = tokio::fs::read(&path)
                    .await
                    .map_err(|e| UploadError::Read(format!("{rel}: {e}")))?;
                let entry = ManifestEntry {
                    size: data.len() as u64,
                    sha256: hex::encode(Sha256::digest(&data)),
                    content_type: content_type_for(&rel),
                };
                store
                    .put(&file_location(deployment_id, &rel), PutPayload::from(data))
                    .await
                    .map_err(|e| UploadError::Store(e.to_string()))?;
                Ok::<_, UploadError>((rel, entry))
            }
        })
        .buffer_unordered(CONCURRENT_UPLOADS)
        .try_collect()
        .await?;
    let manifest = Manifest {
        files: entries.into_iter().collect(),
    };
    let bytes: u64 = manifest.files.values().map(|e| e.size).sum();
    let json = serde_json::to_vec(&manifest).map_err(|e| UploadError::Store(e.to_string()))?;
    store
        .put(&manifest_location(deployment_id), PutPayload::from(json))
        .await
        .map_err(|e| UploadError::Store(e.to_string()))?;
    Ok(UploadSummary {
        files: manifest.files.len() as u64,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        skipped_symlinks,
    })
}

type Collected = (Vec<(String, PathBuf)>, Vec<String>);

/// Walks `output` without following symlinks; enforces the limits as it goes.
fn collect(output: &Path, limits: UploadLimits) -> Result<Collected, UploadError> {
    let mut files = Vec::new();
    let mut symlinks = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![(output.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| UploadError::Read(e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| UploadError::Read(e.to_string()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let kind = entry
                .file_type()
                .map_err(|e| UploadError::Read(e.to_string()))?;
            if kind.is_symlink() {
                symlinks.push(rel);
            } else if kind.is_dir() {
                if name != ".git" {
                    stack.push((entry.path(), rel));
                }
            } else if kind.is_file() {
                let size = entry
                    .metadata()
                    .map_err(|e| UploadError::Read(e.to_string()))?
                    .len();
                total += size;
                if files.len() as u64 >= limits.max_files {
                    return Err(UploadError::TooManyFiles(limits.max_files));
                }
                if total > limits.max_bytes {
                    return Err(UploadError::TooLarge(limits.max_bytes / (1024 * 1024)));
                }
                files.push((rel, entry.path()));
            }
        }
    }
    symlinks.sort();
    Ok((files, symlinks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(content_type_for("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type_for("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type_for("a.css"), "text/css; charset=utf-8");
        assert_eq!(content_type_for("logo.png"), "image/png");
        assert_eq!(content_type_for("icon.svg"), "image/svg+xml; charset=utf-8");
        assert_eq!(
            content_type_for("data.json"),
            "application/json; charset=utf-8"
        );
        assert_eq!(content_type_for("blob"), "application/octet-stream");
    }

    #[tokio::test]
    async fn uploads_files_skips_symlinks_and_enforces_limits() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        std::fs::create_dir_all(out.join("a/.git")).unwrap();
        std::fs::write(out.join("index.html"), "<h1>hi</h1>").unwrap();
        std::fs::write(out.join("a/b.css"), "body{}").unwrap();
        std::fs::write(out.join("a/.git/config"), "secret").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", out.join("passwd")).unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let limits = UploadLimits {
            max_files: 10,
            max_bytes: 1 << 20,
        };
        let summary = upload(store.clone(), "d1", out, limits).await.unwrap();
        assert_eq!(summary.files, 2);
        assert_eq!(summary.bytes, 17);
        assert_eq!(summary.skipped_symlinks, ["passwd"]);
        let manifest = read_manifest(store.as_ref(), "d1").await.unwrap();
        assert_eq!(
            manifest.files.keys().collect::<Vec<_>>(),
            ["a/b.css", "index.html"]
        );
        assert_eq!(
            manifest.files["index.html"].sha256,
            hex::encode(Sha256::digest(b"<h1>hi</h1>"))
        );
        let body = store
            .get(&file_location("d1", "a/b.css"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&body[..], b"body{}");

        let tight = UploadLimits {
            max_files: 1,
            max_bytes: 1 << 20,
        };
        assert!(matches!(
            upload(store.clone(), "d2", out, tight).await,
            Err(UploadError::TooManyFiles(1))
        ));
        let small = UploadLimits {
            max_files: 10,
            max_bytes: 5,
        };
        assert!(matches!(
            upload(store, "d3", out, small).await,
            Err(UploadError::TooLarge(_))
        ));
    }
}
