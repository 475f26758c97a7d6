//! The hot-object cache of the proxy, in memory and bounded by `proxy.cache_mb`:
//!
//! - each deployment's manifest, *prepared* once into a [`Site`]: every header value a
//!   response needs is built when the manifest is read, not per request;
//! - the bodies of small files, as stored and compressed (gzip, brotli), so a popular
//!   file is served without a store round trip and compressed once, not per request;
//! - with a local (`file://`) store, open files for large bodies sent as stored: the
//!   listener sends them with `sendfile`, from the page cache, as nginx does.
//!
//! Deployments are immutable, so an entry never goes stale; entries of a deployment
//! that no hostname serves any more are dropped.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use axum::http::HeaderValue;
use bytes::Bytes;
use moka::sync::Cache;
use object_store::local::LocalFileSystem;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::builder::upload::{Manifest, file_location, read_manifest};

/// Text smaller than this is sent as it is: compressing would not pay.
const MIN_COMPRESS: u64 = 256;
/// Text up to this many times the largest kept body is compressed: text shrinks at
/// least that much, so the compressed body is kept and compressing happens once.
const COMPRESS_RATIO: u64 = 4;
/// Bodies sent as stored from this size on come from an open file when the store is
/// local: below it, one copy from memory costs less than the extra system call.
const SENDFILE_MIN: u64 = 32 * 1024;
/// Open files kept, each one file descriptor.
const OPEN_FILES: u64 = 256;

/// How a body is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Identity,
    Gzip,
    Brotli,
}

impl Encoding {
    pub fn header(self) -> Option<HeaderValue> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip => Some(HeaderValue::from_static("gzip")),
            Encoding::Brotli => Some(HeaderValue::from_static("br")),
        }
    }
}

/// One file of a deployment, with the header values of its responses.
pub struct SiteFile {
    /// Its position in the manifest: with the deployment, the key of its cached bodies.
    pub index: u32,
    pub size: u64,
    pub content_type: HeaderValue,
    /// The strong ETag of each encoding (they are different bytes).
    pub etag: HeaderValue,
    pub etag_gzip: HeaderValue,
    pub etag_brotli: HeaderValue,
    pub html: bool,
    /// Text large enough to be worth compressing.
    pub compressible: bool,
}

impl SiteFile {
    pub fn etag(&self, encoding: Encoding) -> &HeaderValue {
        match encoding {
            Encoding::Identity => &self.etag,
            Encoding::Gzip => &self.etag_gzip,
            Encoding::Brotli => &self.etag_brotli,
        }
    }
}

/// A deployment's manifest, ready to serve from.
pub struct Site {
    pub files: HashMap<Box<str>, SiteFile>,
}

impl Site {
    pub fn prepare(manifest: Manifest) -> Site {
        let files = manifest
            .files
            .into_iter()
            .enumerate()
            .map(|(index, (path, entry))| {
                let hash = &entry.sha256[..32.min(entry.sha256.len())];
                let etag = |suffix: &str| {
                    HeaderValue::from_str(&format!("\"{hash}{suffix}\""))
                        .unwrap_or(HeaderValue::from_static("\"\""))
                };
                let content_type = HeaderValue::from_str(&entry.content_type)
                    .unwrap_or(HeaderValue::from_static("application/octet-stream"));
                let file = SiteFile {
                    index: index as u32,
                    size: entry.size,
                    etag: etag(""),
                    etag_gzip: etag("-gz"),
                    etag_brotli: etag("-br"),
                    html: entry.content_type.starts_with("text/html"),
                    compressible: entry.content_type.contains("charset=utf-8")
                        && entry.size >= MIN_COMPRESS,
                    content_type,
                };
                (path.into_boxed_str(), file)
            })
            .collect();
        Site { files }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct BodyKey {
    deployment: Arc<str>,
    file: u32,
    encoding: Encoding,
}

pub struct SiteCache {
    sites: Cache<Arc<str>, Arc<Site>>,
    bodies: Cache<BodyKey, Bytes>,
    /// Bodies larger than this are not kept: they are read from the store each time.
    max_entry: u64,
    /// The store's directory, when it is local.
    local: Option<LocalFileSystem>,
    files: Cache<BodyKey, Arc<File>>,
}

impl SiteCache {
    /// A cache of `max_bytes` of bodies; `local_store` is the directory of a
    /// `file://` store, whose large files are then sent from disk.
    pub fn new(max_bytes: u64, local_store: Option<&str>) -> anyhow::Result<SiteCache> {
        let local = local_store
            .map(LocalFileSystem::new_with_prefix)
            .transpose()?;
        Ok(SiteCache {
            local,
            files: Cache::builder()
                .max_capacity(OPEN_FILES)
                .support_invalidation_closures()
                .build(),
            sites: Cache::builder()
                .max_capacity(10_000)
                .support_invalidation_closures()
                .build(),
            bodies: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, body: &Bytes| (body.len() + 96).try_into().unwrap_or(u32::MAX))
                .support_invalidation_closures()
                .build(),
            max_entry: (max_bytes / 16).max(64 * 1024),
        })
    }

    /// The prepared manifest of a deployment, read from the store on a miss.
    pub async fn site(
        &self,
        store: &Arc<dyn ObjectStore>,
        deployment_id: &Arc<str>,
    ) -> anyhow::Result<Arc<Site>> {
        match self.sites.get(deployment_id) {
            Some(site) => Ok(site),
            // Boxed: every request's future (kept per connection) stays small.
            None => Box::pin(self.load_site(store, deployment_id)).await,
        }
    }

    async fn load_site(
        &self,
        store: &Arc<dyn ObjectStore>,
        deployment_id: &Arc<str>,
    ) -> anyhow::Result<Arc<Site>> {
        let manifest = read_manifest(store.as_ref(), deployment_id).await?;
        let site = Arc::new(Site::prepare(manifest));
        self.sites.insert(deployment_id.clone(), site.clone());
        Ok(site)
    }

    /// The encoding a file is sent in, given what the client accepts: compressed when
    /// it pays.
    pub fn encoding_for(&self, file: &SiteFile, accepted: Encoding) -> Encoding {
        if file.compressible && file.size <= self.max_entry * COMPRESS_RATIO {
            accepted
        } else {
            Encoding::Identity
        }
    }

    /// A file's body in `encoding`, if it is in memory.
    fn body_cached(
        &self,
        deployment_id: &Arc<str>,
        file: &SiteFile,
        encoding: Encoding,
    ) -> Option<Bytes> {
        self.bodies.get(&BodyKey {
            deployment: deployment_id.clone(),
            file: file.index,
            encoding,
        })
    }

    /// A file's body in `encoding`: from memory, else read from the store (and
    /// compressed, off the async threads) and kept when it is small enough: a large
    /// bundle may be kept compressed though not as stored.
    pub async fn body(
        &self,
        store: &Arc<dyn ObjectStore>,
        deployment_id: &Arc<str>,
        path: &str,
        file: &SiteFile,
        encoding: Encoding,
    ) -> anyhow::Result<Bytes> {
        match self.body_cached(deployment_id, file, encoding) {
            Some(body) => Ok(body),
            None => Box::pin(self.load_body(store, deployment_id, path, file, encoding)).await,
        }
    }

    async fn load_body(
        &self,
        store: &Arc<dyn ObjectStore>,
        deployment_id: &Arc<str>,
        path: &str,
        file: &SiteFile,
        encoding: Encoding,
    ) -> anyhow::Result<Bytes> {
        let identity = match self.body_cached(deployment_id, file, Encoding::Identity) {
            Some(body) => body,
            None => {
                let body = store
                    .get(&file_location(deployment_id, path))
                    .await?
                    .bytes()
                    .await?;
                self.keep(deployment_id, file, Encoding::Identity, &body);
                body
            }
        };
        if encoding == Encoding::Identity {
            return Ok(identity);
        }
        let body = tokio::task::spawn_blocking(move || compress(&identity, encoding)).await??;
        self.keep(deployment_id, file, encoding, &body);
        Ok(body)
    }

    /// An open file holding a body sent as stored, when the store is local and the
    /// body large enough for `sendfile` to pay; `None` means: use [`body`](Self::body).
    pub fn file(&self, deployment_id: &Arc<str>, path: &str, file: &SiteFile) -> Option<Arc<File>> {
        let local = self.local.as_ref().filter(|_| file.size >= SENDFILE_MIN)?;
        let key = BodyKey {
            deployment: deployment_id.clone(),
            file: file.index,
            encoding: Encoding::Identity,
        };
        if let Some(open) = self.files.get(&key) {
            return Some(open);
        }
        let on_disk = local
            .path_to_filesystem(&file_location(deployment_id, path))
            .ok()?;
        match File::open(&on_disk) {
            Ok(open) => {
                let open = Arc::new(open);
                self.files.insert(key, open.clone());
                Some(open)
            }
            Err(e) => {
                tracing::warn!(path = %on_disk.display(), error = %e, "cannot open a stored file; reading it through the store");
                None
            }
        }
    }

    fn keep(&self, deployment_id: &Arc<str>, file: &SiteFile, encoding: Encoding, body: &Bytes) {
        if body.len() as u64 <= self.max_entry {
            let key = BodyKey {
                deployment: deployment_id.clone(),
                file: file.index,
                encoding,
            };
            self.bodies.insert(key, body.clone());
        }
    }

    /// Drops every entry of these deployments.
    pub fn forget(&self, deployment_ids: &[Arc<str>]) {
        if deployment_ids.is_empty() {
            return;
        }
        let gone: std::collections::HashSet<Arc<str>> = deployment_ids.iter().cloned().collect();
        let g = gone.clone();
        let _ = self
            .sites
            .invalidate_entries_if(move |id, _| g.contains(id));
        let g = gone.clone();
        let _ = self
            .files
            .invalidate_entries_if(move |key, _| g.contains(&key.deployment));
        let _ = self
            .bodies
            .invalidate_entries_if(move |key, _| gone.contains(&key.deployment));
    }

    /// Bytes of bodies held now (for tests and metrics).
    pub fn weighted_size(&self) -> u64 {
        self.bodies.run_pending_tasks();
        self.bodies.weighted_size()
    }
}

/// Compresses a body once; brotli at a level that is fast enough on a miss and still
/// well ahead of gzip.
fn compress(body: &[u8], encoding: Encoding) -> std::io::Result<Bytes> {
    let mut out = Vec::with_capacity(body.len() / 3 + 64);
    match encoding {
        Encoding::Identity => return Ok(Bytes::copy_from_slice(body)),
        Encoding::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(&mut out, flate2::Compression::new(6));
            gz.write_all(body)?;
            gz.finish()?;
        }
        Encoding::Brotli => {
            let mut br = brotli::CompressorWriter::new(&mut out, 4096, 6, 22);
            br.write_all(body)?;
            drop(br); // finishes the stream
        }
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn compressed_bodies_decode_to_the_original() {
        let text = "body { color: red }\n".repeat(200);
        let gz = compress(text.as_bytes(), Encoding::Gzip).unwrap();
        let mut back = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, text);
        let br = compress(text.as_bytes(), Encoding::Brotli).unwrap();
        let mut back = String::new();
        brotli::Decompressor::new(&br[..], 4096)
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, text);
        assert!(br.len() < text.len() / 10 && gz.len() < text.len() / 10);
    }
}
