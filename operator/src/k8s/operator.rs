//! The operator process (`meshbench operator`): leader election, the ServiceMesh and
//! Benchmark controllers, and an HTTP server with health endpoints, the operator's
//! metrics and the results endpoint ([`super::results`]).
//!
//! Every replica serves `/healthz`, `/readyz`, `/metrics` and the report downloads
//! (`GET /v1/reports/...`) on `--listen`, and the load Jobs' uploads (`POST
//! /v1/results/...`) on `--results-listen` — a port of their own so a NetworkPolicy can
//! open it to load pods only. Only the Lease holder runs the controllers. A replica that
//! loses the Lease exits so its restart starts clean (controller caches and in-flight
//! reconciles cannot be handed over safely); one shutting down releases the Lease so its
//! successor need not wait for it to expire.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::{Controller, watcher};
use meshbench_common::duration::parse as parse_duration;
use meshbench_common::logging::{LogArgs, LogFormat};
use meshbench_crds::{Benchmark, ServiceMesh};
use prometheus_client::registry::Registry;

use super::bench_controller;
use super::export::Exporter;
use super::leader::{LeaderElector, LeaseSettings};
use super::mesh_controller::{self, Context};
use super::metrics::Metrics;
use super::render::{RenderOptions, default_image};
use super::results::{self, ResultsState};
use super::store::Store;
use super::token::TokenKey;

/// Errors of the operator process.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// No Kubernetes client configuration (in-cluster or kubeconfig).
    #[error("cannot configure the Kubernetes client: {0}")]
    Client(kube::Error),
    /// The CRDs are not installed.
    #[error(
        "the ServiceMesh CRD is not installed ({0}); install it with `meshbench crds | kubectl apply -f -` or `kubectl apply -k deploy/`"
    )]
    MissingCrd(kube::Error),
    /// The health/metrics address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// Serving HTTP failed.
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    /// `--export-url` is not usable.
    #[error("--export-url {0}")]
    Export(super::export::ExportError),
    /// Leader election failed or the Lease was lost.
    #[error("leader election: {0}")]
    Leader(#[from] super::leader::LeaderError),
    /// The results token key could not be read or created.
    #[error(transparent)]
    TokenKey(#[from] super::token::TokenError),
}

/// Result alias of this module.
pub type Result<T, E = OperatorError> = std::result::Result<T, E>;

/// Arguments of `meshbench operator`.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {
    /// Address of the HTTP server: health (`/healthz`, `/readyz`), metrics (`/metrics`)
    /// and the results endpoint (`/v1/...`).
    #[arg(long, env = "MESHBENCH_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address of the results upload endpoint (`POST /v1/results/...`), for the load
    /// Jobs only: deploy/operator/networkpolicy.yaml lets only load pods reach it.
    #[arg(long, env = "MESHBENCH_RESULTS_LISTEN", default_value = "0.0.0.0:8081")]
    pub results_listen: SocketAddr,
    /// Image of the workers (and of the load generators unless --loadgen-image is set).
    #[arg(long, env = "MESHBENCH_IMAGE", default_value_t = default_image())]
    pub image: String,
    /// Image of the load generators, when the worker image has no loadgen (the
    /// worker-only image of deploy/docker/Dockerfile.worker).
    #[arg(long, env = "MESHBENCH_LOADGEN_IMAGE")]
    pub loadgen_image: Option<String>,
    /// Command that starts a worker in the image.
    #[arg(
        long,
        env = "MESHBENCH_WORKER_COMMAND",
        default_value = "meshbench worker",
        value_delimiter = ' '
    )]
    pub worker_command: Vec<String>,
    /// Only watch this namespace (default: all namespaces).
    #[arg(long, env = "MESHBENCH_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "meshbench")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "MESHBENCH_LEASE_NAME",
        default_value = "meshbench-operator"
    )]
    pub lease_name: String,
    /// This replica's identity in the Lease (its pod name).
    #[arg(long, env = "POD_NAME", default_value = "meshbench-operator")]
    pub identity: String,
    /// Run the controllers without leader election (a single replica, or development).
    #[arg(long)]
    pub no_leader_election: bool,
    /// The report volume: one directory per run (`<namespace>/<run>/`).
    #[arg(
        long,
        env = "MESHBENCH_DATA_DIR",
        default_value = "/var/lib/meshbench/reports"
    )]
    pub data_dir: std::path::PathBuf,
    /// This operator's URL as load Jobs reach it, for their results
    /// (default `http://meshbench-operator.<lease namespace>.svc:<results-listen port>`).
    #[arg(long, env = "MESHBENCH_RESULTS_URL")]
    pub results_url: Option<String>,
    /// Prometheus to collect replicas, CPU, memory and latency from (e.g.
    /// `http://prometheus-operated.monitoring:9090`). Without it reports hold the load
    /// generators' figures only.
    #[arg(long, env = "MESHBENCH_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// Also copy finished reports here: `s3://bucket/prefix` (credentials and endpoint from
    /// the `AWS_*` variables) or `file:///path`.
    #[arg(long, env = "MESHBENCH_EXPORT_URL")]
    pub export_url: Option<String>,
    /// Prometheus's scrape interval, the longest of the series collected (30s, the default
    /// of kube-prometheus-stack, which scrapes kube-state-metrics at it): collection waits
    /// two after each step, and rates use a window of four.
    #[arg(long, env = "MESHBENCH_SCRAPE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub scrape_interval: Duration,
    /// Remove reports not written to for this long (e.g. `30d`) from the report volume,
    /// checked hourly; runs in progress are kept. Default: keep every report.
    #[arg(long, env = "MESHBENCH_REPORT_RETENTION", value_parser = parse_duration)]
    pub report_retention: Option<Duration>,
    /// How long a mesh may take to become ready before its run fails.
    #[arg(long, env = "MESHBENCH_READY_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub ready_timeout: Duration,
    /// `--log-format`; the operator logs JSON unless told otherwise, as it runs in a cluster.
    #[command(flatten)]
    pub log: LogArgs,
    /// Deprecated spelling of `--log-format json|text` (which wins when both are given);
    /// kept so existing manifests keep working.
    #[arg(
        long,
        env = "MESHBENCH_LOG_JSON",
        hide = true,
        action = clap::ArgAction::Set
    )]
    pub log_json: Option<bool>,
}

impl OperatorArgs {
    /// The log format: `--log-format`, else the deprecated `--log-json`, else JSON (the
    /// operator runs in a cluster).
    fn log_format(&self) -> LogFormat {
        self.log.log_format.unwrap_or(match self.log_json {
            Some(false) => LogFormat::Text,
            Some(true) | None => LogFormat::Json,
        })
    }
}

/// Shared state of the HTTP server.
#[derive(Debug)]
pub struct AppState {
    /// The metrics registry.
    pub registry: Registry,
    /// True once the controllers run (leader) or stand by (follower) with a working client.
    pub ready: AtomicBool,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The operator's HTTP routes.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The render options of both controllers.
pub fn render_options(args: &OperatorArgs) -> RenderOptions {
    RenderOptions {
        image: args.image.clone(),
        loadgen_image: args.loadgen_image.clone(),
        worker_command: args.worker_command.clone(),
        results_base_url: args.results_url.clone().unwrap_or_else(|| {
            format!(
                "http://meshbench-operator.{}.svc:{}",
                args.lease_namespace,
                args.results_listen.port()
            )
        }),
        ..RenderOptions::default()
    }
}

async fn run_controllers(
    client: Client,
    args: &OperatorArgs,
    metrics: Arc<Metrics>,
    export: Option<Arc<Exporter>>,
    token_key: TokenKey,
) {
    let render = render_options(args);
    let ctx = Arc::new(Context::new(
        client.clone(),
        render.clone(),
        metrics.clone(),
        Some(args.identity.clone()),
    ));
    let bench_ctx = Arc::new(bench_controller::Context::new(
        client.clone(),
        render,
        Store::new(&args.data_dir),
        bench_controller::Settings {
            prometheus_url: args.prometheus_url.clone(),
            scrape_interval: args.scrape_interval,
            ready_timeout: args.ready_timeout,
            export,
            ..bench_controller::Settings::default()
        },
        metrics,
        token_key,
        Some(args.identity.clone()),
    ));
    fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let ns = &args.watch_namespace;
    let owned =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=meshbench-operator");
    let benchmarks = Controller::new(api::<Benchmark>(&client, ns), watcher::Config::default())
        .owns(api::<Job>(&client, ns), owned.clone())
        .shutdown_on_signal()
        .run(
            bench_controller::reconcile,
            bench_controller::error_policy,
            bench_ctx,
        )
        .for_each(|r| async move {
            match r {
                Ok((o, _)) => tracing::debug!(object = %o, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        });
    let meshes = Controller::new(api::<ServiceMesh>(&client, ns), watcher::Config::default())
        .owns(api::<ConfigMap>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned.clone())
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<HorizontalPodAutoscaler>(&client, ns), owned)
        .shutdown_on_signal()
        .run(
            mesh_controller::reconcile,
            mesh_controller::error_policy,
            ctx,
        )
        .for_each(|r| async move {
            match r {
                Ok((o, _)) => tracing::debug!(object = %o, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        });
    let store = Store::new(&args.data_dir);
    tokio::select! {
        _ = futures::future::join(meshes, benchmarks) => {}
        () = prune_reports(api::<Benchmark>(&client, ns), store, args.report_retention) => {}
    }
}

/// Every hour, removes the reports older than `retention` (never one of a run in
/// progress). Runs until the process ends; without a retention it only waits.
async fn prune_reports(benchmarks: Api<Benchmark>, store: Store, retention: Option<Duration>) {
    let Some(retention) = retention else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let list = match benchmarks.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list Benchmarks; not pruning reports now");
                continue;
            }
        };
        let active = list
            .items
            .iter()
            .filter_map(|b| {
                let status = b.status.as_ref()?;
                let running = !status.phase.is_terminal() && status.state.is_some();
                let run = (b.metadata.namespace.clone()?, status.run_id.clone()?);
                running.then_some(run)
            })
            .collect();
        let cutoff = std::time::SystemTime::now()
            .checked_sub(retention)
            .unwrap_or(std::time::UNIX_EPOCH);
        let store = store.clone();
        let removed = tokio::task::spawn_blocking(move || store.prune(cutoff, &active))
            .await
            .unwrap_or_default();
        for dir in removed {
            tracing::info!(dir = %dir.display(), "removed a report past its retention");
        }
    }
}

/// Runs the operator until SIGTERM/Ctrl-C or until the Lease is lost.
pub async fn run(args: OperatorArgs) -> Result<()> {
    // A subscriber set by the embedding binary (or a test) wins.
    meshbench_common::logging::init(args.log_format(), "info,kube=warn");
    // A bad export URL is a configuration error: refuse to start rather than lose reports.
    let export = match &args.export_url {
        Some(url) => Some(Arc::new(Exporter::new(url).map_err(OperatorError::Export)?)),
        None => None,
    };
    let client = Client::try_default().await.map_err(OperatorError::Client)?;
    // Refuse to start without the CRDs, with an install hint.
    Api::<ServiceMesh>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
        .map_err(OperatorError::MissingCrd)?;

    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let state = Arc::new(AppState {
        registry,
        ready: AtomicBool::new(false),
    });
    let token_key = TokenKey::load_or_create(client.clone(), &args.lease_namespace).await?;
    let results = Arc::new(ResultsState {
        client: client.clone(),
        store: Store::new(&args.data_dir),
        token_key: token_key.clone(),
    });
    let main = app(state.clone()).merge(results::report_routes(results.clone()));
    let servers = [
        serve(args.listen, main, "health, metrics and report downloads").await?,
        serve(
            args.results_listen,
            results::upload_routes(results),
            "results uploads",
        )
        .await?,
    ];
    // The client works and the CRDs exist: a follower is ready to take over.
    state.ready.store(true, Ordering::Relaxed);

    let result = if args.no_leader_election {
        run_controllers(client, &args, metrics, export, token_key).await;
        Ok(())
    } else {
        lead(client, &args, metrics, export, token_key).await
    };
    for s in servers {
        s.abort();
    }
    result
}

/// Serves `router` on `addr` in a task of its own.
async fn serve(
    addr: SocketAddr,
    router: Router,
    what: &str,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| OperatorError::Bind { addr, source })?;
    tracing::info!(listen = %addr, "serving {what}");
    Ok(tokio::spawn(async move {
        axum::serve(listener, router.into_make_service()).await
    }))
}

/// Runs the controllers while holding the Lease; gives it back on shutdown.
async fn lead(
    client: Client,
    args: &OperatorArgs,
    metrics: Arc<Metrics>,
    export: Option<Arc<Exporter>>,
    token_key: TokenKey,
) -> Result<()> {
    let mut elector = LeaderElector::new(
        Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
        LeaseSettings::client_go_defaults(args.lease_name.clone(), args.identity.clone()),
    );
    tracing::info!(lease = %args.lease_name, identity = %args.identity, "waiting for leadership");
    elector.acquire().await?;
    metrics.leader.set(1);
    tracing::info!("leading; starting controllers");
    let result = tokio::select! {
        () = run_controllers(client, args, metrics.clone(), export, token_key) => Ok(()),
        lost = elector.hold() => Err(OperatorError::Leader(lost)),
    };
    metrics.leader.set(0);
    if result.is_ok() {
        // Shut down cleanly: the next replica need not wait out the lease.
        if let Err(e) = elector.release().await {
            tracing::warn!(error = %e, "could not release the Lease; it expires by itself");
        }
    }
    result
}
