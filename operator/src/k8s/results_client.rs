//! `meshbench results NAME`: downloads a Benchmark's report from the operator.
//!
//! The run id comes from the Benchmark's status and the token from its Secret, both read
//! with the user's own Kubernetes credentials — so whoever may read that Secret may read
//! the report. The files come through the API server's service proxy (no port-forward
//! needed), or straight from `--url`.

use std::path::{Path, PathBuf};

use futures::AsyncReadExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use meshbench_crds::Benchmark;
use meshbench_crds::benchmark::Phase;
use serde::Deserialize;

use super::render::{TOKEN_KEY, token_secret_name};
use super::results::TOKEN_HEADER;
use super::store::valid_component;

/// Arguments of `meshbench results`.
#[derive(Debug, Clone, clap::Args)]
pub struct ResultsArgs {
    /// Name of the Benchmark.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Directory to write the report into, as `<DIR>/<run id>/`.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// The operator's URL (e.g. `http://localhost:8080` with `kubectl port-forward`);
    /// default: through the API server's service proxy.
    #[arg(long)]
    pub url: Option<String>,
    /// Namespace of the operator's Service (for the service proxy).
    #[arg(long, default_value = "meshbench")]
    pub operator_namespace: String,
    /// Name and port name of the operator's Service (for the service proxy).
    #[arg(long, default_value = "meshbench-operator:http")]
    pub operator_service: String,
    /// Download the report of a run that has not finished (rebuilt after every step).
    #[arg(long)]
    pub partial: bool,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum ResultsClientError {
    /// The Benchmark does not exist.
    #[error("no Benchmark {name} in namespace {namespace}")]
    NotFound {
        /// Name.
        name: String,
        /// Namespace.
        namespace: String,
    },
    /// The run has not started or finished.
    #[error("{0}")]
    NotReady(String),
    /// The Kubernetes API failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The client error.
        source: kube::Error,
    },
    /// The operator answered with an error, or not at all.
    #[error("{url}: {message}")]
    Http {
        /// What was fetched.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A local file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl ResultsClientError {
    /// The exit code (see the README): 1 for a missing or unfinished benchmark, 4 for a
    /// failed download.
    pub fn exit_code(&self) -> u8 {
        match self {
            ResultsClientError::NotFound { .. } | ResultsClientError::NotReady(_) => {
                crate::exit::INVALID
            }
            _ => crate::exit::RUN_FAILED,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Listing {
    run: String,
    files: Vec<String>,
}

enum Transport<'a> {
    Direct(reqwest::Client, String),
    Proxy(&'a Client, String),
}

impl Transport<'_> {
    async fn get(&self, path: &str, token: &str) -> Result<Vec<u8>, ResultsClientError> {
        match self {
            Transport::Direct(http, base) => {
                let url = format!("{}{path}", base.trim_end_matches('/'));
                let fail = |message: String| ResultsClientError::Http {
                    url: url.clone(),
                    message,
                };
                let resp = http
                    .get(&url)
                    .header(TOKEN_HEADER, token)
                    .send()
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let status = resp.status();
                let body = resp.bytes().await.map_err(|e| fail(e.to_string()))?;
                if !status.is_success() {
                    return Err(fail(format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&body).trim()
                    )));
                }
                Ok(body.to_vec())
            }
            Transport::Proxy(client, base) => {
                let url = format!("{base}{path}");
                let req = http::Request::get(&url)
                    .header(TOKEN_HEADER, token)
                    .body(Vec::new())
                    .map_err(|e| ResultsClientError::Http {
                        url: url.clone(),
                        message: e.to_string(),
                    })?;
                let mut body = Vec::new();
                client
                    .request_stream(req)
                    .await
                    .map_err(|source| ResultsClientError::Kube {
                        action: format!("GET {url} through the API server"),
                        source,
                    })?
                    .read_to_end(&mut body)
                    .await
                    .map_err(|e| ResultsClientError::Http {
                        url,
                        message: e.to_string(),
                    })?;
                Ok(body)
            }
        }
    }
}

/// Whether `rel` is a safe relative path inside the report directory.
fn safe_relative(rel: &str) -> bool {
    let p = Path::new(rel);
    !rel.is_empty()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(n) if valid_component(&n.to_string_lossy())))
}

/// The Benchmark `args` names, with the namespace it was looked up in.
async fn read_benchmark(
    client: &Client,
    args: &ResultsArgs,
) -> Result<(String, Option<Benchmark>), ResultsClientError> {
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let benches: Api<Benchmark> = Api::namespaced(client.clone(), &namespace);
    let bench = benches
        .get_opt(&args.name)
        .await
        .map_err(|source| ResultsClientError::Kube {
            action: format!("reading Benchmark {}", args.name),
            source,
        })?;
    Ok((namespace, bench))
}

/// Downloads the report; returns its directory.
pub async fn fetch(client: &Client, args: &ResultsArgs) -> Result<PathBuf, ResultsClientError> {
    let (namespace, bench) = read_benchmark(client, args).await?;
    let bench = bench.ok_or_else(|| ResultsClientError::NotFound {
        name: args.name.clone(),
        namespace: namespace.clone(),
    })?;
    let status = bench.status.unwrap_or_default();
    let Some(run) = status.run_id.clone() else {
        return Err(ResultsClientError::NotReady(format!(
            "Benchmark {} has not started a run yet (phase {:?})",
            args.name, status.phase
        )));
    };
    if !status.phase.is_terminal() && !args.partial {
        return Err(ResultsClientError::NotReady(format!(
            "run {run} of Benchmark {} is still in phase {:?}; wait for it, or pass --partial for the report so far",
            args.name, status.phase
        )));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret_name = token_secret_name(&args.name);
    let token = secrets
        .get(&secret_name)
        .await
        .map_err(|source| ResultsClientError::Kube {
            action: format!("reading Secret {secret_name} (the results token)"),
            source,
        })?
        .data
        .and_then(|mut d| d.remove(TOKEN_KEY))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .ok_or_else(|| {
            ResultsClientError::NotReady(format!("Secret {secret_name} holds no {TOKEN_KEY}"))
        })?;

    let transport = match &args.url {
        Some(url) => Transport::Direct(reqwest::Client::new(), url.clone()),
        None => Transport::Proxy(
            client,
            format!(
                "/api/v1/namespaces/{}/services/{}/proxy",
                args.operator_namespace, args.operator_service
            ),
        ),
    };
    let base = format!("/v1/reports/{namespace}/{}/{run}", args.name);
    let listing: Listing =
        serde_json::from_slice(&transport.get(&base, &token).await?).map_err(|e| {
            ResultsClientError::Http {
                url: base.clone(),
                message: format!("not a report listing: {e}"),
            }
        })?;
    if listing.run != run {
        return Err(ResultsClientError::Http {
            url: base,
            message: format!("listed run {} instead of {run}", listing.run),
        });
    }

    let target = args.out.join(&run);
    if target.exists() {
        return Err(ResultsClientError::Io {
            path: target,
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "already exists; remove it or choose another --out",
            ),
        });
    }
    // Download beside the target and rename at the end: an interrupted download leaves
    // no half report under the run's name.
    let staging = args
        .out
        .join(format!(".{run}.download-{}", std::process::id()));
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ResultsClientError::Io { path, source }
    };
    let result = async {
        for rel in &listing.files {
            if !safe_relative(rel) {
                return Err(ResultsClientError::Http {
                    url: base.clone(),
                    message: format!("refusing the file name {rel:?}"),
                });
            }
            let bytes = transport.get(&format!("{base}/{rel}"), &token).await?;
            let path = staging.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::write(&path, bytes).map_err(io(&path))?;
        }
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        std::fs::rename(&staging, &target).map_err(io(&target))
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result.map(|()| target)
}

/// `meshbench results --check`, after the download: the exit code `meshbench run` gives such
/// a run. 4 when the Benchmark's run failed or was cancelled (its phase, or a partial
/// report), else 3 when the downloaded `run.json` records a violated SLO, else 0.
pub async fn check(client: &Client, args: &ResultsArgs, dir: &Path) -> u8 {
    use crate::exit;
    use meshbench_analysis::gate::{Outcome, RunTables};
    let run = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match run_failure(client, args, &run).await {
        Ok(Some(why)) => {
            eprintln!("run {run} failed: {why}");
            return exit::RUN_FAILED;
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("error: {e}");
            return exit::RUN_FAILED;
        }
    }
    match RunTables::read(dir).map(|t| t.outcome()) {
        Ok(Outcome::Passed) => {
            eprintln!("run {run}: completed, SLO: PASS");
            exit::OK
        }
        Ok(Outcome::SloFailed) => {
            eprintln!("run {run}: SLO: FAIL");
            exit::SLO_FAILED
        }
        Ok(Outcome::Incomplete) => {
            eprintln!("run {run}: the report is partial");
            exit::RUN_FAILED
        }
        Err(e) => {
            eprintln!("error: the downloaded report cannot be read: {e}");
            exit::RUN_FAILED
        }
    }
}

/// Why the Benchmark's run `run` failed when its phase is `Failed` (the `Failed`
/// condition's reason and message); `None` when it succeeded or the Benchmark has moved on
/// to another run (the report then speaks for itself).
async fn run_failure(
    client: &Client,
    args: &ResultsArgs,
    run: &str,
) -> Result<Option<String>, ResultsClientError> {
    let (_, bench) = read_benchmark(client, args).await?;
    let Some(status) = bench.and_then(|b| b.status) else {
        return Ok(None);
    };
    if status.run_id.as_deref() != Some(run) || status.phase != Phase::Failed {
        return Ok(None);
    }
    let why = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed")
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_else(|| "phase Failed".into());
    Ok(Some(why))
}
