//! Builds run directories from synthetic inputs with known answers, reads them back with
//! polars and checks the values, the schemas, atomic writes, errors and the report.

use std::fs;
use std::path::Path;

use chrono::{DateTime, Utc};
use meshbench_analysis::capacity::{
    CallModel, CapacityInput, EndpointModel, EntryPoint, HpaModel, Overhead, ServiceModel,
};
use meshbench_analysis::synthetic::{self, SecondSpec};
use meshbench_analysis::tables::{
    LatencyRow, RepetitionRow, ServiceRow, StepRow, Table, TimeseriesRow, schema_markdown,
};
use meshbench_analysis::{
    Enforcement, LimitsEnforcement, Platform, RunData, RunDir, RunMeta, Sample, Slo, StepLoad,
    StepMeta, metric,
};
use polars::prelude::*;

const T: i64 = 1_700_000_000_000;
const MB: f64 = 1_000_000.0;

fn started() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(T).expect("valid")
}

fn meta() -> RunMeta {
    RunMeta {
        benchmark: "known".into(),
        spec: serde_json::json!({"benchmark": {"name": "known"}}),
        meshbench_version: "0.1.0-test".into(),
        platform: Platform::Local,
        limits: LimitsEnforcement {
            mode: Enforcement::Enforced,
            reason: "test".into(),
        },
        warnings: vec![],
        phases: vec![],
        started_at: started(),
        finished_at: DateTime::from_timestamp_millis(T + 30_000),
        steps_planned: Some(3),
        partial: false,
        deviations: Vec::new(),
    }
}

fn step(index: u32, target: f64) -> StepMeta {
    let start = T + i64::from(index) * 10_000;
    StepMeta {
        mesh: "m".into(),
        repetition: 0,
        index,
        name: format!("s{index}"),
        start_ms: start,
        end_ms: start + 10_000,
        target_rate: Some(target),
        users: None,
        warmup: false,
    }
}

fn model() -> CapacityInput {
    CapacityInput {
        entry: EntryPoint {
            service: "api".into(),
            path: "/".into(),
        },
        services: vec![
            ServiceModel {
                name: "api".into(),
                replicas: 1,
                cpu_request_cores: 0.5,
                cpu_limit_cores: Some(1.0),
                hpa: Some(HpaModel {
                    min: 1,
                    max: 4,
                    target_utilization_percent: 70.0,
                }),
                idle_cpu_cores: 0.0,
                memory_request_bytes: 0.0,
                endpoints: vec![EndpointModel {
                    path: "/".into(),
                    cpu_seconds: 0.01,
                    delay_seconds_mean: 0.0,
                    call_groups: vec![vec![CallModel {
                        service: "db".into(),
                        path: "/q".into(),
                        probability: 1.0,
                        repeat: 1,
                    }]],
                    ..Default::default()
                }],
            },
            ServiceModel {
                name: "db".into(),
                replicas: 1,
                cpu_request_cores: 1.0,
                cpu_limit_cores: Some(1.0),
                hpa: None,
                idle_cpu_cores: 0.0,
                memory_request_bytes: 0.0,
                endpoints: vec![EndpointModel {
                    path: "/q".into(),
                    cpu_seconds: 0.02,
                    delay_seconds_mean: 0.0,
                    call_groups: vec![],
                    ..Default::default()
                }],
            },
        ],
        // The spec's figures alone, so the predictions below are exact arithmetic.
        overhead: Overhead::NONE,
        node: None,
    }
}

/// Step 0: 9 s of 100 × 1 ms and 1 s of 100 × 100 ms (+ 5 errors, 1 timeout); step 1: a load
/// result without requests; step 2: no load result at all.
fn known_run(steps: u32) -> RunData {
    let mut data = RunData::new(meta());
    data.options.settle_window_ms = 5_000;
    data.models.insert("m".into(), model());
    data.slos = vec![
        Slo::Latency {
            percentile: 99.0,
            max_ms: 50.0,
        },
        Slo::ErrorRate { max_ratio: 0.01 },
    ];
    let mut seconds: Vec<SecondSpec> = (0..10)
        .map(|i| SecondSpec {
            ok_latencies_us: vec![if i == 9 { 100_000 } else { 1_000 }; 100],
            errors: 0,
            timeouts: 0,
        })
        .collect();
    seconds[0].errors = 5;
    seconds[0].timeouts = 1;
    if steps >= 1 {
        data.steps.push(step(0, 100.0));
        data.load.push(StepLoad {
            mesh: "m".into(),
            repetition: 0,
            step: 0,
            stage: synthetic::stage(0, "s0", T, Some(100.0), &seconds),
        });
    }
    if steps >= 2 {
        data.steps.push(step(1, 10.0));
        data.load.push(StepLoad {
            mesh: "m".into(),
            repetition: 0,
            step: 1,
            stage: synthetic::stage(
                1,
                "s1",
                T + 10_000,
                Some(10.0),
                &vec![SecondSpec::default(); 10],
            ),
        });
    }
    if steps >= 3 {
        data.steps.push(step(2, 20.0));
    }
    let s = |dt: i64, m: &str, v: f64| Sample::service(T + dt, "m", "api", m, v);
    let p = |dt: i64, pod: &str, m: &str, v: f64| Sample::pod(T + dt, "m", "api", pod, m, v);
    data.samples = vec![
        s(-5_000, metric::REPLICAS, 1.0),
        s(-5_000, metric::CPU_REQUEST_CORES, 0.5),
        s(-5_000, metric::HPA_TARGET_UTILIZATION, 0.7),
        s(2_000, metric::REPLICAS, 3.0),
        s(4_000, metric::REPLICAS, 2.0),
        p(1_000, "api-a", metric::CPU_CORES, 0.2),
        p(1_000, "api-b", metric::CPU_CORES, 0.4),
        p(3_000, "api-a", metric::CPU_CORES, 0.3),
        p(3_000, "api-b", metric::CPU_CORES, 0.5),
        p(1_000, "api-a", metric::MEMORY_BYTES, 100.0 * MB),
        p(1_000, "api-b", metric::MEMORY_BYTES, 300.0 * MB),
        p(3_000, "api-a", metric::MEMORY_BYTES, 200.0 * MB),
        p(3_000, "api-b", metric::MEMORY_BYTES, 200.0 * MB),
        s(1_000, metric::WORKER_REQUESTS_PER_S, 100.0),
        s(3_000, metric::WORKER_REQUESTS_PER_S, 300.0),
        s(1_000, metric::WORKER_LATENCY_MEAN_MS, 2.0),
        s(3_000, metric::WORKER_LATENCY_MEAN_MS, 4.0),
        s(3_000, metric::WORKER_LATENCY_P99_MS, 9.0),
        s(1_000, "custom_metric", 42.0),
    ];
    data
}

fn read(dir: &Path, stem: &str) -> DataFrame {
    let f = fs::File::open(dir.join(format!("{stem}.parquet"))).expect("table exists");
    ParquetReader::new(f).finish().expect("readable parquet")
}

fn f64s(df: &DataFrame, col: &str) -> Vec<Option<f64>> {
    df.column(col)
        .unwrap_or_else(|_| panic!("column {col}"))
        .f64()
        .unwrap_or_else(|_| panic!("{col} is f64"))
        .iter()
        .collect()
}

fn u64s(df: &DataFrame, col: &str) -> Vec<Option<u64>> {
    df.column(col).unwrap().u64().unwrap().iter().collect()
}

fn close(a: Option<f64>, b: f64, rel: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() <= rel * b.abs().max(1e-12))
}

fn no_nan(df: &DataFrame) {
    for c in df.columns() {
        if let Ok(ca) = c.f64() {
            assert!(
                ca.iter().flatten().all(|v| !v.is_nan()),
                "NaN in {}",
                c.name()
            );
        }
    }
}

#[test]
fn steps_table_has_merged_percentiles_counts_and_explicit_nulls() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::create(tmp.path(), "known", started()).unwrap();
    assert!(
        dir.path().ends_with("known-20231114T221320Z"),
        "{}",
        dir.path().display()
    );
    dir.update(&known_run(3)).unwrap();
    let df = read(dir.path(), "steps");
    assert_eq!(df.height(), 3);
    no_nan(&df);
    // 900 × 1 ms and 100 × 100 ms: merged p99 is 100 ms (averaging per-second p99s would give 10.9).
    let p99 = f64s(&df, "latency_p99_ms");
    assert!(close(p99[0], 100.0, 0.001), "{p99:?}");
    assert!(close(f64s(&df, "latency_p50_ms")[0], 1.0, 0.001));
    assert!(close(f64s(&df, "latency_p90_ms")[0], 1.0, 0.001));
    assert!(close(f64s(&df, "latency_mean_ms")[0], 10.9, 0.001));
    assert_eq!(u64s(&df, "requests"), vec![Some(1006), Some(0), None]);
    assert_eq!(u64s(&df, "successes"), vec![Some(1000), Some(0), None]);
    assert_eq!(u64s(&df, "errors")[0], Some(5));
    assert_eq!(u64s(&df, "timeouts")[0], Some(1));
    assert!(close(f64s(&df, "error_ratio")[0], 6.0 / 1006.0, 1e-9));
    assert!(close(f64s(&df, "sent_rate_rps")[0], 100.6, 1e-9));
    assert!(close(f64s(&df, "successes_incl_late_rps")[0], 100.0, 1e-9));
    // Empty step: explicit nulls, never NaN.
    assert_eq!(f64s(&df, "latency_p99_ms")[1], None);
    assert_eq!(f64s(&df, "error_ratio")[1], None);
    assert_eq!(f64s(&df, "sent_rate_rps")[2], None);
    let partial: Vec<Option<bool>> = df
        .column("partial")
        .unwrap()
        .bool()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(partial, vec![Some(false), Some(false), Some(true)]);
    // Predictions: db (1 replica, 20 ms) limits the mesh to 50 rps.
    assert!(close(
        f64s(&df, "predicted_max_throughput_rps")[0],
        50.0,
        1e-9
    ));
    let bottleneck: Vec<Option<&str>> = df
        .column("predicted_bottleneck")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(bottleneck[0], Some("db"));
    assert!(close(f64s(&df, "predicted_throughput_rps")[1], 10.0, 1e-9));
    assert_eq!(
        f64s(&df, "predicted_latency_mean_ms")[0],
        None,
        "100 rps saturates db"
    );
    assert!(f64s(&df, "predicted_latency_mean_ms")[1].is_some());
    // SLOs.
    let pass: Vec<Option<bool>> = df
        .column("slo_pass")
        .unwrap()
        .bool()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(pass[0], Some(false));
    let why: Vec<Option<&str>> = df
        .column("slo_violations")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .collect();
    assert!(why[0].unwrap().contains("latency p99 ≤ 50 ms"), "{why:?}");
    assert!(
        !why[0].unwrap().contains("error rate"),
        "0.6 % errors pass: {why:?}"
    );
    // Timestamps are UTC datetimes.
    assert_eq!(
        df.column("start").unwrap().dtype(),
        &DataType::Datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC))
    );
    let starts: Vec<Option<i64>> = df
        .column("start")
        .unwrap()
        .datetime()
        .unwrap()
        .physical()
        .iter()
        .collect();
    assert_eq!(starts[1], Some(T + 10_000));

    let run: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join("run.json")).unwrap()).unwrap();
    assert_eq!(run["slo"]["pass"], false);
    assert_eq!(run["platform"], "local");
    assert_eq!(run["partial"], true, "step 2 has no load result");
    assert!(
        run["slo"]["summary"][0]
            .as_str()
            .unwrap()
            .contains("step 0 (s0): latency p99")
    );
    assert_eq!(run["predictions"]["m"]["bottleneck"], "db");
}

#[test]
fn services_table_has_time_weighted_replicas_utilization_and_scaling_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::create(tmp.path(), "known", started()).unwrap();
    dir.update(&known_run(2)).unwrap();
    let df = read(dir.path(), "services");
    no_nan(&df);
    // (api, db) × 2 steps, ordered by step then service.
    let svc: Vec<Option<&str>> = df
        .column("service")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(svc, vec![Some("api"), Some("db"), Some("api"), Some("db")]);
    let g = |c: &str| f64s(&df, c);
    // Replicas 1 (carried in) → 3 at 2 s → 2 at 4 s over a 10 s step: 20 replica-seconds.
    assert!(close(g("replica_seconds")[0], 20.0, 1e-12));
    assert!(close(g("replicas_avg")[0], 2.0, 1e-12));
    assert_eq!(
        (
            g("replicas_min")[0],
            g("replicas_max")[0],
            g("replicas_final")[0]
        ),
        (Some(1.0), Some(3.0), Some(2.0))
    );
    assert_eq!(g("scale_up_reaction_s")[0], Some(2.0));
    assert_eq!(g("settle_time_s")[0], Some(4.0));
    assert_eq!(g("overshoot_replicas")[0], Some(1.0));
    let dc: Vec<Option<u32>> = df
        .column("direction_changes")
        .unwrap()
        .u32()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(dc[0], Some(1));
    // CPU: sums 0.6 and 0.8 cores; utilization of a 0.5-core request with 2 pods: 0.6, 0.8.
    assert!(close(g("cpu_cores_avg")[0], 0.7, 1e-12));
    assert!(close(g("cpu_cores_max")[0], 0.8, 1e-12));
    assert!(close(g("cpu_utilization_avg")[0], 0.7, 1e-12));
    assert!(close(g("cpu_utilization_max")[0], 0.8, 1e-12));
    assert!(close(g("cpu_utilization_vs_target")[0], 1.0, 1e-12));
    assert_eq!(g("cpu_request_cores")[0], Some(0.5));
    // Memory: per-pod mean 200 MB, largest pod 300 MB, largest total 400 MB.
    assert!(close(g("memory_bytes_avg")[0], 200.0 * MB, 1e-12));
    assert!(close(g("memory_bytes_max")[0], 300.0 * MB, 1e-12));
    assert!(close(g("memory_bytes_total_max")[0], 400.0 * MB, 1e-12));
    // Worker latency weighted by request rate: (100·2 + 300·4) / 400 = 3.5 ms.
    assert!(close(g("worker_latency_mean_ms")[0], 3.5, 1e-12));
    assert_eq!(g("worker_latency_p99_ms_max")[0], Some(9.0));
    // Step 1: replicas carried in (2), unchanged; no CPU samples → nulls.
    assert_eq!(g("replicas_avg")[2], Some(2.0));
    assert_eq!(g("settle_time_s")[2], Some(0.0));
    assert_eq!(g("scale_up_reaction_s")[2], None);
    assert_eq!(g("cpu_cores_avg")[2], None);
    assert_eq!(g("cpu_utilization_avg")[2], None);
    // db has no samples at all: a row of nulls, with the model's prediction.
    assert_eq!(g("replicas_avg")[1], None);
    let pred: Vec<Option<u32>> = df
        .column("predicted_replicas")
        .unwrap()
        .u32()
        .unwrap()
        .iter()
        .collect();
    // api at 100 rps: ceil(100 · 0.01 / (0.5 · 0.7)) = ceil(2.86) = 3; db has no HPA.
    assert_eq!(pred, vec![Some(3), Some(1), Some(1), Some(1)]);
    let samples = u64s(&df, "samples");
    assert_eq!(samples[0], Some(16), "samples of api inside step 0");
}

#[test]
fn latency_and_timeseries_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::create(tmp.path(), "known", started()).unwrap();
    dir.update(&known_run(2)).unwrap();
    let lat = read(dir.path(), "latency");
    assert_eq!(lat.height(), 20);
    let p99 = f64s(&lat, "latency_p99_ms");
    assert!(close(p99[0], 1.0, 0.001));
    assert!(close(p99[9], 100.0, 0.001));
    assert_eq!(p99[10], None, "a second without successes has null latency");
    assert_eq!(u64s(&lat, "requests")[0], Some(106));
    no_nan(&lat);

    let ts = read(dir.path(), "timeseries");
    assert_eq!(ts.height(), 19);
    let steps: Vec<Option<u32>> = ts.column("step").unwrap().u32().unwrap().iter().collect();
    assert_eq!(steps[0], None, "a sample before the first step has no step");
    assert_eq!(steps[3], Some(0));
    let pods: Vec<Option<&str>> = ts.column("pod").unwrap().str().unwrap().iter().collect();
    assert_eq!(pods[5], Some("api-a"));
    assert_eq!(pods[0], None);
}

/// Response time (from the actual send) and lateness come from the stage's own histograms;
/// the services table puts the model's utilization error beside its prediction.
#[test]
fn response_time_lateness_and_utilization_error_columns() {
    use meshbench_loadgen::result::{EncodedHistogram, new_histogram};
    let mut data = known_run(2);
    let stage = &mut data.load[0].stage;
    let (mut resp, mut late) = (new_histogram(), new_histogram());
    for i in 0..100u64 {
        resp.record(800).unwrap();
        late.record(if i < 98 { 50 } else { 3_000 }).unwrap();
    }
    stage.response_time_ok = EncodedHistogram::encode(&resp);
    stage.lateness = EncodedHistogram::encode(&late);
    stage.recompute_summary().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::create(tmp.path(), "resp", started()).unwrap();
    dir.update(&data).unwrap();
    let steps = read(dir.path(), "steps");
    assert!(close(f64s(&steps, "response_time_p50_ms")[0], 0.8, 0.001));
    assert!(close(f64s(&steps, "response_time_p99_ms")[0], 0.8, 0.001));
    assert!(close(f64s(&steps, "lateness_p99_ms")[0], 3.0, 0.001));
    assert_eq!(
        f64s(&steps, "response_time_p99_ms")[1],
        None,
        "no successes"
    );
    let services = read(dir.path(), "services");
    let (pred, meas, err) = (
        f64s(&services, "predicted_cpu_utilization"),
        f64s(&services, "cpu_utilization_avg"),
        f64s(&services, "predicted_cpu_utilization_error"),
    );
    let row = (0..pred.len())
        .find(|&i| pred[i].is_some() && meas[i].is_some_and(|m| m > 0.0))
        .expect("a service with a prediction and a measurement");
    let expected = (pred[row].unwrap() - meas[row].unwrap()) / meas[row].unwrap();
    assert!(close(err[row], expected, 1e-9), "{err:?}");
}

/// A sender stalled through second 3 sent its requests in second 4: the sent counts show
/// the gap and the burst, while the outcomes stay with the second they were planned in and
/// no phantom errors appear where sends and outcomes fall in different seconds.
#[test]
fn a_stall_shows_in_the_sent_counts_not_as_errors() {
    let mut data = known_run(1);
    let secs = &mut data.load[0].stage.seconds;
    secs[4].counts.sent += secs[3].counts.sent;
    secs[3].counts.sent = 0;
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::create(tmp.path(), "stall", started()).unwrap();
    dir.update(&data).unwrap();
    let lat = read(dir.path(), "latency");
    let (sent, requests, errors) = (
        u64s(&lat, "sent"),
        u64s(&lat, "requests"),
        u64s(&lat, "errors"),
    );
    assert_eq!((sent[3], sent[4]), (Some(0), Some(200)), "{sent:?}");
    assert_eq!((requests[3], requests[4]), (Some(100), Some(100)));
    assert_eq!(
        errors[..6],
        [Some(5), Some(0), Some(0), Some(0), Some(0), Some(0)]
    );
}

#[test]
fn tables_match_the_documented_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::create(tmp.path(), "known", started()).unwrap();
    dir.update(&known_run(3)).unwrap();
    fn check<T: Table>(dir: &Path) {
        let df = read(dir, T::NAME);
        let names: Vec<&str> = df.get_column_names().iter().map(|s| s.as_str()).collect();
        let spec = T::schema();
        let expected: Vec<&str> = spec.iter().map(|c| c.name).collect();
        assert_eq!(names, expected, "columns of {}", T::NAME);
        for (c, s) in df.columns().iter().zip(&spec) {
            let want = match s.dtype {
                "f64" => DataType::Float64,
                "u32" => DataType::UInt32,
                "u64" => DataType::UInt64,
                "bool" => DataType::Boolean,
                "string" => DataType::String,
                "datetime[ms, UTC]" => {
                    DataType::Datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC))
                }
                other => panic!("undocumented type {other}"),
            };
            assert_eq!(c.dtype(), &want, "{}.{}", T::NAME, s.name);
            if !s.nullable {
                assert_eq!(
                    c.null_count(),
                    0,
                    "{}.{} is documented as never null",
                    T::NAME,
                    s.name
                );
            }
        }
        let csv = fs::read_to_string(dir.join(format!("{}.csv", T::NAME))).unwrap();
        assert_eq!(csv.lines().next().unwrap(), expected.join(","));
    }
    check::<StepRow>(dir.path());
    check::<ServiceRow>(dir.path());
    check::<LatencyRow>(dir.path());
    check::<TimeseriesRow>(dir.path());
    check::<RepetitionRow>(dir.path());
    let csv = fs::read_to_string(dir.path().join("steps.csv")).unwrap();
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .contains("2023-11-14T22:13:20.000+00:00"),
        "{csv}"
    );
}

#[test]
fn schema_doc_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/report-schema.md");
    let want = schema_markdown();
    if std::env::var_os("UPDATE_SCHEMA_DOC").is_some() {
        fs::write(&path, &want).unwrap();
    }
    let have = fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is out of date; regenerate with UPDATE_SCHEMA_DOC=1",
        path.display()
    );
}

#[test]
fn every_step_leaves_a_usable_directory_and_no_temporary_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::create(tmp.path(), "known", started()).unwrap();
    for n in 1..=3 {
        let mut data = known_run(n);
        data.meta.finished_at = None;
        dir.update(&data).unwrap();
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with('.')),
            "temporary files left: {names:?}"
        );
        let back = meshbench_analysis::load(dir.path()).unwrap();
        assert_eq!(back.steps.len(), n as usize);
        assert!(back.run.meta.partial, "an unfinished run is partial");
        let html = fs::read_to_string(dir.path().join("report.html")).unwrap();
        assert!(
            html.contains("Partial run"),
            "the report says it is partial"
        );
    }
    // A second directory for the same benchmark and second gets a suffix.
    let again = RunDir::create(tmp.path(), "known", started()).unwrap();
    assert!(again.path().ends_with("known-20231114T221320Z-1"));
}

#[test]
fn round_trip_through_parquet_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::create(tmp.path(), "known", started()).unwrap();
    let written = dir.update(&known_run(3)).unwrap();
    let back = meshbench_analysis::load(dir.path()).unwrap();
    assert_eq!(back.steps, written.steps);
    assert_eq!(back.services, written.services);
    assert_eq!(back.latency, written.latency);
    assert_eq!(back.repetitions, written.repetitions);
    assert_eq!(back.run, written.run);
    assert_eq!(back.series, written.series);
}

#[test]
fn missing_or_corrupt_tables_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::create(tmp.path(), "known", started()).unwrap();
    dir.update(&known_run(2)).unwrap();
    fs::write(dir.path().join("steps.parquet"), b"this is not parquet").unwrap();
    let err = meshbench_analysis::rebuild_report(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("steps.parquet") && err.contains("not a readable Parquet file"),
        "{err}"
    );

    dir.update(&known_run(2)).unwrap();
    fs::remove_file(dir.path().join("latency.parquet")).unwrap();
    let err = meshbench_analysis::rebuild_report(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("latency.parquet") && err.contains("missing"),
        "{err}"
    );

    // A Parquet file of the wrong table.
    dir.update(&known_run(2)).unwrap();
    fs::copy(
        dir.path().join("latency.parquet"),
        dir.path().join("services.parquet"),
    )
    .unwrap();
    let err = meshbench_analysis::rebuild_report(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("services.parquet")
            && err.contains("`services` schema")
            && err.contains("missing"),
        "{err}"
    );

    fs::write(dir.path().join("run.json"), b"{").unwrap();
    let err = meshbench_analysis::rebuild_report(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("run.json") && err.contains("not a meshbench run.json"),
        "{err}"
    );
}

#[test]
fn report_is_self_contained_with_all_plots_and_can_be_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::create(tmp.path(), "known", started()).unwrap();
    let files = dir.finish(&known_run(3)).unwrap();
    let html = fs::read_to_string(&files.html).unwrap();
    for id in [
        "sweep-rate",
        "sweep-latency",
        "replicas-m",
        "cpu-m",
        "memory-m",
        "latency-m",
    ] {
        assert!(
            html.contains(&format!("id=\"plot-{id}\"><svg")),
            "plot {id} missing"
        );
        let png = fs::read(dir.path().join("plots").join(format!("{id}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{id}.png is a PNG");
        assert!(dir.path().join("plots").join(format!("{id}.svg")).exists());
    }
    assert!(
        !html.contains("<script") && !html.contains("<link") && !html.contains("src="),
        "no external resources"
    );
    assert!(html.contains("SLOs FAIL"));
    assert!(
        html.contains("predicted mean ms"),
        "predictions beside measurements"
    );
    assert!(html.contains("Capacity model"));

    fs::remove_file(&files.html).unwrap();
    fs::remove_dir_all(dir.path().join("plots")).unwrap();
    let rebuilt = meshbench_analysis::rebuild_report(dir.path()).unwrap();
    let again = fs::read_to_string(&rebuilt.html).unwrap();
    assert!(again.contains("id=\"plot-replicas-m\"><svg"));
    assert_eq!(rebuilt.plots.len(), files.plots.len());
}

fn repeated(dir: &Path, name: &str, latency_scale: f64) -> std::path::PathBuf {
    let mut size = synthetic::Size::one_hour_100_pods();
    size.services = 2;
    size.max_pods_per_service = 2;
    size.steps = 2;
    size.step_seconds = 5;
    size.repetitions = 3;
    let mut data = synthetic::run(&size, "m", started());
    data.meta.benchmark = name.into();
    for (i, l) in data.load.iter_mut().enumerate() {
        let seconds: Vec<SecondSpec> = (0..5)
            .map(|s| SecondSpec {
                ok_latencies_us: vec![
                    ((10_000 + 300 * ((i * 7 + s) % 5)) as f64 * latency_scale)
                        as u64;
                    20
                ],
                errors: 0,
                timeouts: 0,
            })
            .collect();
        l.stage = synthetic::stage(
            l.step,
            "x",
            l.stage.started_unix_ms as i64,
            l.stage.target_rate,
            &seconds,
        );
    }
    let d = RunDir::create(dir, name, started()).unwrap();
    d.update(&data).unwrap();
    d.path().to_owned()
}

#[test]
fn compare_separates_real_differences_from_noise() {
    let tmp = tempfile::tempdir().unwrap();
    let a = repeated(tmp.path(), "a", 1.0);
    let b = repeated(tmp.path(), "b", 2.0);
    let c = repeated(tmp.path(), "c", 1.0);
    let ab = meshbench_analysis::compare(&a, &b).unwrap();
    let p99: Vec<_> = ab
        .rows
        .iter()
        .filter(|r| r.figure == "latency_p99_ms")
        .collect();
    assert_eq!(p99.len(), 2);
    assert!(
        p99.iter()
            .all(|r| r.significance == meshbench_analysis::stats::Significance::Significant),
        "{ab}"
    );
    assert!(p99.iter().all(|r| r.a.n == 3 && r.a.ci95_low.is_some()));
    let ac = meshbench_analysis::compare(&a, &c).unwrap();
    assert!(
        ac.rows
            .iter()
            .filter(|r| r.figure == "latency_p99_ms")
            .all(|r| r.significance != meshbench_analysis::stats::Significance::Significant)
    );
    let text = ab.to_string();
    assert!(
        text.contains("DIFFERENT") && text.contains("latency_p99_ms"),
        "{text}"
    );
    let files = ab.write_plots(&tmp.path().join("cmp")).unwrap();
    assert_eq!(files.len(), 4);

    let reps = read(&a, "repetitions");
    let n: Vec<Option<u32>> = reps.column("n").unwrap().u32().unwrap().iter().collect();
    assert!(n.iter().all(|n| *n == Some(3)));
}

fn drop_columns(dir: &Path, stem: &str, columns: &[&str]) {
    let mut df = read(dir, stem).drop_many(columns.iter().copied());
    let mut f = fs::File::create(dir.join(format!("{stem}.parquet"))).unwrap();
    ParquetWriter::new(&mut f).finish(&mut df).unwrap();
}

/// Rewrites a current run directory as schema 1 wrote it (without the columns schema 2
/// and 3 added): the old rate names, no saturation columns, `schema_version: 1` and no `saturation` in run.json.
fn downgrade_to_schema_1(dir: &Path) {
    let path = dir.join("steps.parquet");
    let mut df = read(dir, "steps");
    for (new, old) in [
        ("sent_rate_rps", "achieved_rate_rps"),
        ("successes_incl_late_rps", "successful_rate_rps"),
        ("predicted_throughput_rps", "predicted_achieved_rps"),
    ] {
        df.rename(new, old.into()).unwrap();
    }
    let mut df = df
        .drop_many([
            "throughput_ratio",
            "latency_growth",
            "saturated",
            "saturation",
            "response_time_p50_ms",
            "response_time_p99_ms",
            "lateness_p99_ms",
        ])
        .clone();
    let mut f = fs::File::create(&path).unwrap();
    ParquetWriter::new(&mut f).finish(&mut df).unwrap();
    drop_columns(dir, "latency", &["sent"]);
    drop_columns(dir, "services", &["predicted_cpu_utilization_error"]);
    let run_json = dir.join("run.json");
    let mut run: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&run_json).unwrap()).unwrap();
    run["schema_version"] = 1.into();
    run.as_object_mut().unwrap().remove("saturation");
    fs::write(&run_json, run.to_string()).unwrap();
}

#[test]
fn compare_reads_a_schema_1_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let a = repeated(tmp.path(), "a", 1.0);
    let b = repeated(tmp.path(), "b", 2.0);
    downgrade_to_schema_1(&a);
    let ab = meshbench_analysis::compare(&a, &b).unwrap();
    assert!(
        ab.notes.iter().any(|n| n.contains("report schema 1")),
        "{:?}",
        ab.notes
    );
    let sent: Vec<_> = ab
        .rows
        .iter()
        .filter(|r| r.figure == "sent_rate_rps")
        .collect();
    assert_eq!(sent.len(), 2, "{ab}");
    assert!(sent.iter().all(|r| r.a.n == 3), "{ab}");
    let old = meshbench_analysis::load(&a).unwrap();
    assert!(old.steps.iter().all(|r| r.saturated.is_none()));
    assert!(old.steps.iter().all(|r| r.response_time_p99_ms.is_none()));
    assert!(old.latency.iter().all(|r| r.sent.is_none()));
    assert!(old.run.saturation.is_empty());
}

/// A path that is a device or a FIFO is written through, never renamed over: a rename
/// once turned the machine's /dev/null into a plain file.
#[test]
fn write_atomic_writes_through_a_fifo() {
    use std::io::Write as _;
    use std::os::unix::fs::FileTypeExt as _;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("out.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || fs::read_to_string(fifo).unwrap())
    };
    meshbench_analysis::rundir::write_atomic(&fifo, |w| {
        w.write_all(b"through").map_err(|e| e.to_string())
    })
    .unwrap();
    // Checked before joining: had the FIFO been replaced, its reader would never finish.
    assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert_eq!(reader.join().unwrap(), "through");
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary left"
    );
}
