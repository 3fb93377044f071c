//! Copies finished reports to object storage (`--export-url`), beside the report volume.
//!
//! `s3://bucket/prefix` for S3 and S3-compatible stores, configured by the usual
//! `AWS_*` variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT` for MinIO/Ceph, `AWS_ALLOW_HTTP`); `file:///path` for a mounted file
//! system. A run's files land under `<prefix>/<namespace>/<run id>/`.

use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt as _};

use super::store::Store;

/// An export target.
pub struct Exporter {
    store: Box<dyn ObjectStore>,
    prefix: StorePath,
    url: String,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").field("url", &self.url).finish()
    }
}

impl Exporter {
    /// Parses `url`; S3 settings come from the environment's `AWS_*` variables.
    pub fn new(url: &str) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("{url}: not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "s3" | "s3a" | "file") {
            return Err(format!(
                "{url}: unsupported scheme {:?}; expected s3://bucket/prefix or file:///path",
                parsed.scheme()
            ));
        }
        let options = std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v));
        let (store, prefix) =
            object_store::parse_url_opts(&parsed, options).map_err(|e| format!("{url}: {e}"))?;
        Ok(Self {
            store,
            prefix,
            url: url.trim_end_matches('/').to_string(),
        })
    }

    /// Uploads every report file of a run; returns where they went.
    pub async fn upload_run(&self, local: &Store, ns: &str, run: &str) -> Result<String, String> {
        let dir = local.run_dir(ns, run).map_err(|e| e.to_string())?;
        let files = local.report_files(ns, run).map_err(|e| e.to_string())?;
        for rel in &files {
            let bytes = tokio::fs::read(dir.join(rel))
                .await
                .map_err(|e| format!("{}: {e}", dir.join(rel).display()))?;
            let mut location = self.prefix.clone();
            for part in [ns, run].into_iter().chain(rel.split('/')) {
                location = location.join(part);
            }
            self.store
                .put(&location, bytes.into())
                .await
                .map_err(|e| format!("uploading {rel}: {e}"))?;
        }
        Ok(format!("{}/{ns}/{run}", self.url))
    }
}
