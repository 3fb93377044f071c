//! Copies finished reports to object storage (`--export-url`), beside the report volume.
//!
//! `s3://bucket/prefix` for S3 and S3-compatible stores, configured by the usual
//! `AWS_*` variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT` for MinIO/Ceph, `AWS_ALLOW_HTTP`); `file:///path` for a mounted file
//! system. A run's files land under `<prefix>/<namespace>/<run id>/`.

use std::path::PathBuf;

use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt as _};

use super::store::{self, Store};

/// Errors of the export: a bad `--export-url`, or a run that could not be copied.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The export URL does not parse.
    #[error("{url}: not a URL: {source}")]
    NotUrl {
        /// The URL as given.
        url: String,
        /// The parse error.
        source: url::ParseError,
    },
    /// The URL's scheme is neither S3 nor a file system.
    #[error("{url}: unsupported scheme {scheme:?}; expected s3://bucket/prefix or file:///path")]
    Scheme {
        /// The URL as given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// object_store cannot make a store of the URL.
    #[error("{url}: {source}")]
    Store {
        /// The URL as given.
        url: String,
        /// The object store's error.
        source: object_store::Error,
    },
    /// The run's directory or file list on the report volume is not usable.
    #[error(transparent)]
    Volume(#[from] store::StoreError),
    /// A report file could not be read from the volume.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A report file could not be uploaded.
    #[error("uploading {file}: {source}")]
    Upload {
        /// The file, relative to the run directory.
        file: String,
        /// The object store's error.
        source: object_store::Error,
    },
}

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
    pub fn new(url: &str) -> Result<Self, ExportError> {
        let parsed = url::Url::parse(url).map_err(|source| ExportError::NotUrl {
            url: url.to_owned(),
            source,
        })?;
        if !matches!(parsed.scheme(), "s3" | "s3a" | "file") {
            return Err(ExportError::Scheme {
                url: url.to_owned(),
                scheme: parsed.scheme().to_owned(),
            });
        }
        let options = std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v));
        let (store, prefix) = object_store::parse_url_opts(&parsed, options).map_err(|source| {
            ExportError::Store {
                url: url.to_owned(),
                source,
            }
        })?;
        Ok(Self {
            store,
            prefix,
            url: url.trim_end_matches('/').to_string(),
        })
    }

    /// Uploads every report file of a run; returns where they went.
    pub async fn upload_run(
        &self,
        local: &Store,
        ns: &str,
        run: &str,
    ) -> Result<String, ExportError> {
        let dir = local.run_dir(ns, run)?;
        let files = local.report_files(ns, run)?;
        for rel in &files {
            let bytes =
                tokio::fs::read(dir.join(rel))
                    .await
                    .map_err(|source| ExportError::Read {
                        path: dir.join(rel),
                        source,
                    })?;
            let mut location = self.prefix.clone();
            for part in [ns, run].into_iter().chain(rel.split('/')) {
                location = location.join(part);
            }
            self.store
                .put(&location, bytes.into())
                .await
                .map_err(|source| ExportError::Upload {
                    file: rel.clone(),
                    source,
                })?;
        }
        Ok(format!("{}/{ns}/{run}", self.url))
    }
}
