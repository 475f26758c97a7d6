//! The artifact store: `object_store::ObjectStore` itself, opened from `storage.url`.
//!
//! A deployment's files live under `deployments/<id>/`, written once by the builder and
//! never changed. Nothing here wraps the store in another abstraction; these are the
//! two functions every user of it shares: opening it and removing a deployment.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;

/// Opens the store named by `url`: `file:///dir` (created when missing), `memory://`,
/// or `s3://bucket/prefix` with credentials and region from the usual `AWS_*`
/// environment variables (`AWS_ENDPOINT` for S3-compatible services).
pub fn open(url: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    if let Some(dir) = local_dir(url) {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("storage.url: cannot create {dir}: {e}"))?;
        return Ok(Arc::new(LocalFileSystem::new_with_prefix(dir)?));
    }
    if url.starts_with("memory://") {
        return Ok(Arc::new(InMemory::new()));
    }
    if url.starts_with("s3://") {
        let parsed = url::Url::parse(url)?;
        let s3 = AmazonS3Builder::from_env().with_url(url).build()?;
        let prefix = parsed.path().trim_matches('/');
        if prefix.is_empty() {
            return Ok(Arc::new(s3));
        }
        return Ok(Arc::new(PrefixStore::new(s3, prefix)));
    }
    anyhow::bail!("storage.url: unsupported scheme in {url}")
}

/// The directory of a `file://` store; `None` for a remote or in-memory one.
pub fn local_dir(url: &str) -> Option<&str> {
    url.strip_prefix("file://")
}

/// Where a deployment's files live in the store.
pub fn deployment_prefix(deployment_id: &str) -> Path {
    Path::from_iter(["deployments", deployment_id])
}

/// Removes every object of a deployment.
pub async fn delete_deployment(store: &dyn ObjectStore, deployment_id: &str) -> anyhow::Result<()> {
    let prefix = deployment_prefix(deployment_id);
    let locations = store
        .list(Some(&prefix))
        .map_ok(|meta| meta.location)
        .boxed();
    store
        .delete_stream(locations)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}
