//! The hot-object cache of the proxy: manifests and small files of deployments, in
//! memory, bounded by `proxy.cache_mb`, so popular files are served without a store
//! round trip. Deployments are immutable, so an entry never goes stale; entries of a
//! deployment that no hostname serves any more are dropped.

use std::sync::Arc;

use bytes::Bytes;
use moka::future::Cache;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::builder::upload::{Manifest, file_location, read_manifest};

pub struct SiteCache {
    manifests: Cache<Arc<str>, Arc<Manifest>>,
    files: Cache<(Arc<str>, Arc<str>), Bytes>,
    /// Files larger than this are read from the store each time.
    max_entry: u64,
}

impl SiteCache {
    pub fn new(max_bytes: u64) -> SiteCache {
        SiteCache {
            manifests: Cache::builder()
                .max_capacity(10_000)
                .support_invalidation_closures()
                .build(),
            files: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|(_, path): &(Arc<str>, Arc<str>), body: &Bytes| {
                    (body.len() + path.len() + 64)
                        .try_into()
                        .unwrap_or(u32::MAX)
                })
                .support_invalidation_closures()
                .build(),
            max_entry: (max_bytes / 16).max(64 * 1024),
        }
    }

    /// The manifest of a deployment, read from the store once.
    pub async fn manifest(
        &self,
        store: &Arc<dyn ObjectStore>,
        deployment_id: &Arc<str>,
    ) -> anyhow::Result<Arc<Manifest>> {
        if let Some(m) = self.manifests.get(deployment_id).await {
            return Ok(m);
        }
        let m = Arc::new(read_manifest(store.as_ref(), deployment_id).await?);
        self.manifests
            .insert(deployment_id.clone(), m.clone())
            .await;
        Ok(m)
    }

    /// The bytes of one file of a deployment.
    pub async fn file(
        &self,
        store: &Arc<dyn ObjectStore>,
        deployment_id: &Arc<str>,
        path: &str,
        size: u64,
    ) -> anyhow::Result<Bytes> {
        let key = (deployment_id.clone(), Arc::<str>::from(path));
        if let Some(body) = self.files.get(&key).await {
            return Ok(body);
        }
        let body = store
            .get(&file_location(deployment_id, path))
            .await?
            .bytes()
            .await?;
        if size <= self.max_entry {
            self.files.insert(key, body.clone()).await;
        }
        Ok(body)
    }

    /// Drops every entry of these deployments.
    pub fn forget(&self, deployment_ids: &[Arc<str>]) {
        if deployment_ids.is_empty() {
            return;
        }
        let gone: std::collections::HashSet<Arc<str>> = deployment_ids.iter().cloned().collect();
        let g = gone.clone();
        let _ = self
            .manifests
            .invalidate_entries_if(move |id, _| g.contains(id));
        let _ = self
            .files
            .invalidate_entries_if(move |(id, _), _| gone.contains(id));
    }

    /// Bytes of files held now (for tests and metrics).
    pub async fn weighted_size(&self) -> u64 {
        self.files.run_pending_tasks().await;
        self.files.weighted_size()
    }
}
