//! The `meshbench` command line: argument definitions and dispatch.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meshbench_analysis::gate::{self, Baseline, GateError};
use meshbench_analysis::{Rule, RunTables, ci};
use meshbench_common::logging::{LogArgs, LogFormat};
use meshbench_crds::Bundle;

use crate::exit;

/// meshbench: benchmark autoscaling microservice meshes, in a Kubernetes cluster or on one
/// machine.
///
/// Describe a synthetic mesh in a ServiceMesh resource and a load experiment in a
/// Benchmark resource (YAML, apiVersion meshbench.io/v1alpha1), then check them with
/// `meshbench validate`, predict their capacity with `meshbench plan`, and run them with
/// `meshbench run`.
#[derive(Debug, Parser)]
#[command(
    name = "meshbench",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check ServiceMesh and Benchmark files and report every problem at once.
    ///
    /// Each problem names the file, line and column, the document, the field path, the
    /// bad value and what was expected. A Benchmark may reference meshes defined in any
    /// of the given files. Exit status: 0 when every file is valid, 1 when any problem was
    /// found, 2 on usage errors.
    Validate {
        /// YAML files with one or more documents each (`---` separated).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Print nothing on success.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Run a Benchmark on this machine: processes stand in for pods, the kernel's CFS
    /// quota enforces CPU limits, a local HPA implements the upstream algorithm.
    ///
    /// Writes `<out>/<benchmark>-<UTC timestamp>/` with run.json, steps/services/latency/
    /// timeseries tables (Parquet and CSV), plots and report.html, updated after every
    /// step. Exit status: 0 completed and every SLO held, 1 invalid spec (nothing
    /// started), 2 usage error, 3 an SLO failed, 4 the run failed or was interrupted (the
    /// partial report is kept).
    Run(Box<crate::run::RunArgs>),
    /// Simulate a Benchmark instead of running it: the same experiment (steps, warm-up,
    /// repetitions, meshes) against a discrete-event model of the mesh (requests through
    /// its call graph, CPU threads and CFS quota per replica, readiness, the HPA with the
    /// local runtime's algorithm and timings), in simulated time. Writes the run
    /// directory `meshbench run` writes, marked `platform: simulated`; `meshbench compare
    /// SIMULATED MEASURED` shows how far the model is from a real run. Exit status as
    /// `run`'s.
    Simulate(Box<crate::simulate::SimulateArgs>),
    /// Find the highest constant rate at which a Benchmark's SLOs hold.
    ///
    /// The capacity model brackets the answer (the most the mesh carries at its largest
    /// replica counts), the simulator narrows it by bisection to --precision, and real
    /// `meshbench run`s confirm it (--confirm, default 2: at the simulated answer, then at
    /// the simulated first failure, or lower after a failure). Each rate is held for a
    /// warm-up long enough for the HPA to reach its largest replica count (printed; set
    /// with --warmup), then measured for --measure against the Benchmark's SLOs; only
    /// its target, load bounds, timeout and SLOs are used, not its profile.
    ///
    /// Writes `<out>/<benchmark>-search-<UTC timestamp>/`: search.json (per mesh the
    /// answer and its confidence), search.csv and search.parquet (every rate tried, with
    /// its verdict and figures), candidates/*.yaml (each rate as a runnable Benchmark),
    /// and the tries' run directories under simulated/ and measured/.
    ///
    /// Example: `meshbench search experiments/chain.yaml --warmup 10s --measure 30s`.
    ///
    /// Exit status: 0 every mesh has an answer, 1 invalid spec (a closed loop or no SLOs
    /// too), 2 usage error, 3 some mesh meets its SLOs at no rate tried or the real runs
    /// did not confirm the simulator, 4 a run failed.
    Search(Box<crate::search::SearchArgs>),
    /// Search HPA settings for a Benchmark's load profile: fewest failed SLO steps first,
    /// then fewest pod-seconds.
    ///
    /// Every combination of the --vary values is a candidate; each is simulated against
    /// the whole Benchmark (profile, warm-up, SLOs), ranked, and the best --confirm
    /// (default 2) are run for real with `meshbench run`; the winner is the best real run
    /// (the best simulated one with --confirm 0). Candidate 0 is always the settings as
    /// written, so the table shows what tuning gained.
    ///
    /// Writes `<out>/<benchmark>-tune-<UTC timestamp>/`: tune.json (per mesh the winner
    /// and the settings as written, with their scores), tune.csv and tune.parquet (every
    /// candidate on every platform, ranked), winner-<mesh>.yaml (the ServiceMesh with
    /// the winning settings, ready to `kubectl apply` or `meshbench run`),
    /// candidates/*.yaml and the run directories under simulated/ and measured/.
    ///
    /// Example: `meshbench tune experiments/hpa.yaml --vary target=30,50,70 --vary
    /// scale-down-window=0s,60s,300s --hpa-sync 5s`.
    ///
    /// Exit status: 0 the winner met every SLO, 1 invalid spec (no SLOs or no autoscaled
    /// service too), 2 usage error (a malformed --vary, too many candidates), 3 no
    /// candidate met every SLO (the best is still written), 4 a run failed.
    Tune(Box<crate::tune::TuneArgs>),
    /// Predict capacity from the spec alone: visit ratios, CPU demand, the bottleneck,
    /// maximum throughput, HPA replicas per step and modelled latency.
    Plan {
        /// YAML files with the Benchmark and its ServiceMesh(es).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Print JSON for pipelines instead of a table.
        #[arg(long)]
        json: bool,
        /// Which Benchmark, when the files hold several.
        #[arg(long, value_name = "NAME")]
        benchmark: Option<String>,
        /// Also find the replica allocation that maximises throughput within this many
        /// pods.
        #[arg(long, value_name = "PODS")]
        pod_budget: Option<u32>,
        /// Fit the replicas on one node, as `meshbench run` does: replicas that do not
        /// fit are shown Pending and carry nothing. Uses this machine's allocatable unless
        /// --node-cpu / --node-memory say otherwise (either one alone implies this).
        #[arg(long)]
        local_node: bool,
        /// `--node-cpu` / `--node-memory`: the node to fit the replicas on (either one implies
        /// `--local-node`).
        #[command(flatten)]
        node: crate::run::NodeArgs,
    },
    /// Rebuild report.html and the plots of a run directory from its tables.
    Report {
        /// A run directory written by `meshbench run`.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Compare a run with a baseline step by step, say which differences are outside the
    /// noise, and gate on them.
    ///
    /// BASELINE is a run directory (the differences are printed; `--fail-on` rules turn
    /// them into a verdict) or an expectations file of fixed bounds per step (see
    /// examples/ci/quickstart-expectations.yaml). Exit status: 0 every gate held, 1 a
    /// directory or the expectations file cannot be read or names a mesh or service the run
    /// lacks, 2 usage error (a malformed rule), 3 a gate failed, 4 a --junit or --summary-md
    /// file could not be written.
    Compare(Box<CompareArgs>),
    /// Run one worker (the generic microservice), as a pod's container does.
    ///
    /// The same program as the `meshbench-worker` binary. Exit status: 0 drained after
    /// SIGTERM/SIGINT, 1 invalid config (nothing was bound), 2 usage error (no config
    /// given), 4 the worker could not start or serve.
    Worker(Box<meshbench_worker::WorkerArgs>),
    /// Run the Kubernetes operator: reconciles ServiceMesh resources into Deployments,
    /// Services and HPAs, runs Benchmarks (load Jobs, Prometheus collection, reports on
    /// the report volume) and serves the results endpoint (see deploy/). Needs a
    /// kubeconfig or in-cluster credentials and the CRDs installed
    /// (`meshbench crds | kubectl apply -f -`).
    Operator(Box<crate::k8s::operator::OperatorArgs>),
    /// Run this machine as a Kubernetes node for meshbench's pods (a kubelet for
    /// processes): registers a Node, keeps its Lease, and runs the pods bound to it whose
    /// containers are meshbench commands, each with a loopback IP of its own, its
    /// volumes, environment, CPU and memory limits (cgroups), probes and restart policy,
    /// reporting their status. Other pods are reported Failed with the reason. Needs a
    /// kubeconfig (KUBECONFIG) with a node's rights. Runs until SIGTERM or Ctrl-C, then
    /// stops its pods. Exit status: 0 after a signal, 4 when it cannot start.
    Node(Box<crate::node::NodeAgentArgs>),
    /// Download a Benchmark's report from the operator in the cluster.
    ///
    /// Reads the run from the Benchmark's status and the results token from its Secret
    /// with your kubeconfig's credentials, then fetches every report file through the API
    /// server's service proxy (or `--url`) into `<out>/<run id>/`. Exit status: 0 done,
    /// 1 no such Benchmark or its run has not finished, 2 usage error, 4 the download
    /// failed (nothing is left under the run's name). With `--check`, as `meshbench run`
    /// for the downloaded run: 3 an SLO was violated, 4 the run failed or was cancelled.
    Results(Box<ResultsCommand>),
    /// Print, as YAML, every object the operator would apply for the given files: the
    /// ConfigMap, Deployment, Service and HPA of each ServiceMesh service, and for each
    /// Benchmark the plan ConfigMap and Indexed Job of its first step.
    ///
    /// Rendered by the operator's own code, for review, GitOps, or clusters where the
    /// operator cannot be installed. Exit status: 0 rendered, 1 invalid input, 2 usage.
    Render {
        /// YAML files with ServiceMesh and Benchmark documents.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Image of workers and load generators.
        #[arg(long, default_value_t = crate::k8s::render::default_image())]
        image: String,
        /// Namespace for objects whose document has none.
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Run the load generator (the load Job's entrypoint in a cluster).
    ///
    /// The same program as the `meshbench-loadgen` binary. Exit status: 0 the plan ran to
    /// the end and the result was written (and posted), 1 invalid plan (nothing was sent),
    /// 2 usage error, 4 the run failed (the target unreachable at the preflight request
    /// included) or was interrupted (the partial result is written), 5 the result was
    /// written but posting it to --results-url failed.
    Loadgen(Box<meshbench_loadgen::LoadgenArgs>),
    /// Print the CustomResourceDefinitions of ServiceMesh and Benchmark as YAML.
    ///
    /// The same manifests are committed under deploy/crds/; install them with
    /// `meshbench crds | kubectl apply -f -`.
    Crds,
    /// Convert the prototype's Servicegraph (and measurement config) to meshbench YAML.
    ///
    /// The Servicegraph (apiVersion dipterv.my.domain/v1beta1) becomes a ServiceMesh; the
    /// measurement config (Name, QPS, Load, Prometheus…) becomes a Benchmark sweeping the
    /// same rates. Endpoint delays keep the prototype's meaning (a minimum total response
    /// time) and all callouts of an endpoint still run in parallel. The result is written
    /// to standard output, validated; exit status 1 if the input cannot be converted.
    Import {
        /// The prototype's Servicegraph YAML.
        #[arg(value_name = "SERVICEGRAPH")]
        servicegraph: PathBuf,
        /// The prototype's measurement config (YAML or JSON).
        #[arg(value_name = "MEASUREMENT")]
        measurement: Option<PathBuf>,
    },
}

/// Where to write what CI systems read (`run`, `compare`, `results`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CiArgs {
    /// Write the verdicts as JUnit XML (GitHub, GitLab, Jenkins): one test case per step
    /// and SLO, or per gate check; a failure carries the measured value and the bound.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write a Markdown summary: the steps with pass/fail, the gate checks, and the path
    /// of report.html. Also appended to $GITHUB_STEP_SUMMARY when that is set (GitHub
    /// Actions' job summary; set it empty to skip).
    #[arg(long, value_name = "FILE")]
    pub summary_md: Option<PathBuf>,
}

impl CiArgs {
    /// GitHub Actions' job summary file, when set.
    fn step_summary() -> Option<PathBuf> {
        std::env::var_os("GITHUB_STEP_SUMMARY")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }

    fn wanted(&self) -> bool {
        self.junit.is_some() || self.summary_md.is_some() || Self::step_summary().is_some()
    }

    /// Writes `doc` where asked; false, after saying why, when a file could not be written.
    pub fn write(&self, doc: &ci::Document) -> bool {
        let step_summary = Self::step_summary();
        match doc.write(
            self.junit.as_deref(),
            self.summary_md.as_deref(),
            step_summary.as_deref(),
        ) {
            Ok(_) => true,
            Err(e) => {
                eprintln!("error: writing the CI reports: {e}");
                false
            }
        }
    }
}

/// Writes the CI reports of a run directory (`run`, `results`). Returns `code`, or 4 when
/// a report could not be written: a pipeline must not pass on a missing file.
pub fn run_reports(ci: &CiArgs, dir: &Path, code: u8) -> u8 {
    if !ci.wanted() {
        return code;
    }
    let doc = match RunTables::read(dir) {
        Ok(t) => ci::Document::for_run(&t),
        // The file is still written, with a failing case saying why, so a pipeline that
        // collects it reports the failure instead of a missing file.
        Err(e) => ci::Document::for_unreadable_run(dir, &e.to_string()),
    };
    if ci.write(&doc) {
        code
    } else {
        code.max(exit::RUN_FAILED)
    }
}

/// Arguments of `meshbench compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// The baseline: a run directory, or an expectations file (YAML: per step, figures
    /// with `min` and/or `max`).
    #[arg(value_name = "BASELINE")]
    pub baseline: PathBuf,
    /// The run directory judged against it.
    #[arg(value_name = "NEW")]
    pub candidate: PathBuf,
    /// Gates against a baseline run, comma-separated or repeated:
    /// `[run.]FIGURE[@SERVICE]:(+|-)AMOUNT[%]`, e.g. `latency_p99_ms:+10%`,
    /// `throughput_rps:-5%`, `run.replica_seconds:+15%`, `error_ratio:+0.005`. `+` fails a
    /// rise beyond the tolerance, `-` a fall; `%` is relative to the baseline, a bare
    /// number is in the figure's unit. Each step is judged, or with `run.` the figure over
    /// the whole run; a services figure without `@SERVICE` is summed over the services
    /// (utilization and reaction times: the largest). A difference inside the noise of the
    /// repetitions never fails.
    #[arg(
        long = "fail-on",
        value_name = "RULES",
        value_delimiter = ',',
        value_parser = Rule::parse
    )]
    pub fail_on: Vec<Rule>,
    /// `--junit` / `--summary-md`: the gate checks for CI systems.
    #[command(flatten)]
    pub ci: CiArgs,
}

/// Arguments of `meshbench results`: the download, then what to judge and write.
#[derive(Debug, Clone, clap::Args)]
pub struct ResultsCommand {
    /// Which Benchmark to download, where to write it and how to reach the operator.
    #[command(flatten)]
    pub fetch: crate::k8s::results_client::ResultsArgs,
    /// After the download, exit as `meshbench run` would have for the run: 0 it succeeded
    /// and every SLO held, 3 an SLO was violated, 4 it failed or was cancelled.
    #[arg(long)]
    pub check: bool,
    /// `--junit` / `--summary-md`: the downloaded run's verdicts for CI systems.
    #[command(flatten)]
    pub ci: CiArgs,
    /// `--log-format`; logs go to stderr.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Parses the process arguments and runs the command.
pub fn main() -> ExitCode {
    crate::k8s::install_tls_provider();
    let cli = Cli::parse();
    run(cli)
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(args) => run_local(*args),
        Command::Simulate(args) => exit::code(crate::simulate::run(&args)),
        Command::Search(args) => exit::code(crate::search::run(&args)),
        Command::Tune(args) => exit::code(crate::tune::run(&args)),
        Command::Plan {
            files,
            json,
            benchmark,
            pod_budget,
            local_node,
            node,
        } => {
            let on_node = local_node || node.node_cpu.is_some() || node.node_memory.is_some();
            let node = on_node.then(|| node.model());
            crate::capacity_plan::plan(&files, json, benchmark.as_deref(), pod_budget, node)
        }
        Command::Report { dir } => rebuild_report(&dir),
        Command::Compare(args) => exit::code(compare(&args)),
        // The same programs as the standalone binaries, flags, logging and exit codes
        // included.
        Command::Worker(args) => meshbench_worker::main(*args),
        Command::Loadgen(args) => meshbench_loadgen::main(*args),
        Command::Operator(args) => run_operator(*args),
        Command::Node(args) => run_node(*args),
        Command::Validate { files, quiet } => validate(&files, quiet),
        Command::Results(args) => results(&args),
        Command::Render {
            files,
            image,
            namespace,
        } => render_yaml(&files, image, namespace),
        Command::Crds => {
            exit::out(meshbench_crds::crds_yaml());
            exit::code(exit::OK)
        }
        Command::Import {
            servicegraph,
            measurement,
        } => import(&servicegraph, measurement.as_deref()),
    }
}

/// `meshbench run`: a Benchmark on this machine.
fn run_local(args: crate::run::RunArgs) -> ExitCode {
    args.log.init(LogFormat::Text, "warn,goose=error");
    let Some(rt) = runtime() else {
        return exit::code(exit::RUN_FAILED);
    };
    let code = rt.block_on(crate::run::run(args));
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    exit::code(code)
}

/// `meshbench report`: report.html and the plots again from a run directory's tables.
fn rebuild_report(dir: &Path) -> ExitCode {
    match meshbench_analysis::rebuild_report(dir) {
        Ok(files) => {
            exit::out(format!("{}\n", files.html.display()));
            exit::code(exit::OK)
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::code(exit::INVALID)
        }
    }
}

/// `meshbench operator`: the Kubernetes operator, until it stops.
fn run_operator(args: crate::k8s::operator::OperatorArgs) -> ExitCode {
    let Some(rt) = runtime() else {
        return exit::code(exit::RUN_FAILED);
    };
    match rt.block_on(crate::k8s::operator::run(args)) {
        Ok(()) => exit::code(exit::OK),
        Err(e) => {
            meshbench_common::error(e);
            exit::code(exit::RUN_FAILED)
        }
    }
}

fn run_node(args: crate::node::NodeAgentArgs) -> ExitCode {
    let Some(rt) = runtime() else {
        return exit::code(exit::RUN_FAILED);
    };
    match rt.block_on(crate::node::run(args)) {
        Ok(()) => exit::code(exit::OK),
        Err(e) => {
            meshbench_common::error(e);
            exit::code(exit::RUN_FAILED)
        }
    }
}

/// `meshbench results`: the download, the optional check, then the CI reports.
fn results(args: &ResultsCommand) -> ExitCode {
    args.log.init(LogFormat::Text, "warn");
    let Some(rt) = runtime() else {
        return exit::code(exit::RUN_FAILED);
    };
    let result = rt.block_on(async {
        let client = kube::Client::try_default().await.map_err(|e| {
            eprintln!("error: cannot configure the Kubernetes client: {e}");
            exit::RUN_FAILED
        })?;
        let dir = crate::k8s::results_client::fetch(&client, &args.fetch)
            .await
            .map_err(|e| {
                eprintln!("error: {e}");
                e.exit_code()
            })?;
        let code = if args.check {
            crate::k8s::results_client::check(&client, &args.fetch, &dir).await
        } else {
            exit::OK
        };
        Ok::<_, u8>((dir, code))
    });
    match result {
        Ok((dir, code)) => {
            eprintln!("report: {}", dir.join("report.html").display());
            exit::code(run_reports(&args.ci, &dir, code))
        }
        Err(code) => exit::code(code),
    }
}

/// `meshbench render`: every object the operator would apply, as YAML.
fn render_yaml(files: &[PathBuf], image: String, namespace: Option<String>) -> ExitCode {
    let bundle = Bundle::load_files(files);
    let opts = crate::k8s::render::RenderOptions {
        image,
        namespace,
        ..crate::k8s::render::RenderOptions::default()
    };
    match crate::k8s::render::render_bundle_yaml_with(&bundle, &opts) {
        Ok(yaml) => {
            exit::out(yaml);
            exit::code(exit::OK)
        }
        Err(e) => {
            meshbench_common::error(e);
            exit::code(exit::INVALID)
        }
    }
}

/// `meshbench compare`: the comparison (against a run), the gates, the CI reports; returns
/// the exit code.
fn compare(args: &CompareArgs) -> u8 {
    let baseline = match Baseline::load(&args.baseline) {
        Ok(b) => b,
        Err(e) => return gate_error(e),
    };
    if matches!(baseline, Baseline::Expectations(_)) && !args.fail_on.is_empty() {
        eprintln!(
            "error: --fail-on needs a run directory as BASELINE; {} is an expectations file, \
             whose bounds are the gates",
            args.baseline.display()
        );
        return exit::USAGE;
    }
    let new = match RunTables::read(&args.candidate) {
        Ok(t) => t,
        Err(e) => return gate_error(e.into()),
    };
    let judged = match &baseline {
        Baseline::Run(a) => {
            match meshbench_analysis::compare(&args.baseline, &args.candidate) {
                Ok(c) => exit::out(c.to_string()),
                Err(e) => return gate_error(e.into()),
            }
            gate::judge_runs(&args.fail_on, a, &new)
        }
        Baseline::Expectations(exp) => gate::judge_expectations(exp, &args.baseline, &new),
    };
    let report = match judged {
        Ok(r) => r,
        Err(e) => return gate_error(e),
    };
    if !report.checks.is_empty() {
        exit::out(format!("\n{report}"));
    }
    if !args.ci.write(&ci::Document::for_gates(&report, Some(&new))) {
        return exit::RUN_FAILED;
    }
    if report.passed() {
        exit::OK
    } else {
        exit::SLO_FAILED
    }
}

/// Prints why a comparison cannot be made (expectation problems at file:line:column, as
/// `meshbench validate` places spec problems) and returns exit code 1.
fn gate_error(e: GateError) -> u8 {
    match e {
        GateError::Expectations(mut x) => {
            let docs = meshbench_crds::locate::index_documents(&x.text);
            if let Some(doc) = docs.first() {
                x.locate(|path| doc.find(path).map(|p| (p.line, p.column)));
            }
            eprintln!("{x}");
            eprintln!("{} problem(s) in {}", x.problems.len(), x.file);
        }
        other => eprintln!("error: {other}"),
    }
    exit::INVALID
}

fn validate(files: &[PathBuf], quiet: bool) -> ExitCode {
    let bundle = Bundle::load_files(files);
    let mut err = std::io::stderr().lock();
    for d in &bundle.diagnostics {
        let _ = writeln!(err, "{d}");
    }
    if bundle.is_valid() {
        if !quiet {
            exit::out(format!(
                "valid: {} ServiceMesh, {} Benchmark in {} file(s)\n",
                bundle.meshes.len(),
                bundle.benchmarks.len(),
                files.len()
            ));
        }
        exit::code(exit::OK)
    } else {
        let _ = writeln!(
            err,
            "{} problem(s) found in {} file(s)",
            bundle.diagnostics.len(),
            files.len()
        );
        exit::code(exit::INVALID)
    }
}

/// Why an input file of `meshbench import` cannot be read, in `meshbench validate`'s
/// `file: error: ...` form.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The file cannot be read.
    #[error("{path}: error: cannot read file: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not UTF-8.
    #[error("{path}: error: is not UTF-8 text; expected YAML")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },
}

fn read(path: &std::path::Path) -> Result<String, CliError> {
    let bytes = std::fs::read(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| CliError::NotUtf8 {
        path: path.to_owned(),
    })
}

fn import(graph: &std::path::Path, measurement: Option<&std::path::Path>) -> ExitCode {
    let run = || -> Result<String, Vec<String>> {
        let gtext = read(graph).map_err(|e| vec![e.to_string()])?;
        let mtext = match measurement {
            Some(m) => Some(read(m).map_err(|e| vec![e.to_string()])?),
            None => None,
        };
        let gname = graph.display().to_string();
        let mname = measurement.map(|m| m.display().to_string());
        let imported =
            meshbench_crds::import::import(&gname, &gtext, mname.as_deref().zip(mtext.as_deref()))
                .map_err(|ds| ds.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let yaml = imported.to_yaml();
        // The output must itself be valid; a callout to a node that does not exist, for
        // example, is caught here with the field path in the generated mesh.
        let check = Bundle::from_str("<imported>", &yaml);
        if !check.is_valid() {
            return Err(check.diagnostics.iter().map(ToString::to_string).collect());
        }
        Ok(yaml)
    };
    match run() {
        Ok(yaml) => {
            exit::out(yaml);
            exit::code(exit::OK)
        }
        Err(msgs) => {
            for m in msgs {
                eprintln!("{m}");
            }
            exit::code(exit::INVALID)
        }
    }
}
