//! The report tables: row types, their documented schemas, and conversion to and from polars
//! DataFrames.
//!
//! Each table is declared once with [`table!`]; the declaration gives the Rust row type, the
//! column order, the polars types, nullability and the documentation that
//! `docs/report-schema.md` is generated from (a test fails when that file drifts).

use polars::prelude::*;
use serde::Serialize;

/// Errors converting between rows and DataFrames.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// A column the schema requires is missing.
    #[error("column `{column}` is missing")]
    MissingColumn {
        /// The column's name.
        column: String,
    },
    /// A column has values that cannot be read as the schema's type.
    #[error("column `{column}`: {problem}")]
    BadColumn {
        /// The column's name.
        column: String,
        /// What is wrong with its values.
        problem: ColumnError,
    },
    /// polars refused to build the frame.
    #[error("cannot build the table: {0}")]
    Polars(#[from] PolarsError),
}

/// Result alias of this module.
pub type Result<T, E = TableError> = std::result::Result<T, E>;

/// Why the values of one column cannot be read as the schema's type; [`read_column`] adds
/// the column's name ([`TableError::BadColumn`]).
#[derive(Debug, thiserror::Error)]
pub enum ColumnError {
    /// The column has another type and does not cast to the schema's.
    #[error("has type {found}, expected {expected}: {source}")]
    Cast {
        /// The column's type (boxed: a `DataType` would make every table result large).
        found: Box<DataType>,
        /// The schema's type.
        expected: Box<DataType>,
        /// Why the cast failed.
        source: PolarsError,
    },
    /// polars cannot view the (cast) column as the schema's type.
    #[error(transparent)]
    View(PolarsError),
    /// A column that is never null has a null.
    #[error("row {row} is null, but the column is never null")]
    Null {
        /// The row, 0-based.
        row: usize,
    },
    /// The column has fewer values than the table has rows.
    #[error("shorter than the table")]
    Short,
}

/// One documented column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ColumnSpec {
    /// Column name, as in the files.
    pub name: &'static str,
    /// Type as a reader sees it, e.g. `f64`, `string`, `datetime[ms, UTC]`.
    pub dtype: &'static str,
    /// Whether the column can hold nulls (an `Option` field).
    pub nullable: bool,
    /// What the column holds, from the field's doc comment (see `docs/report-schema.md`).
    pub doc: &'static str,
}

/// A UTC instant in unix milliseconds, stored as `Datetime(ms, "UTC")`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

/// A Rust type that maps to one polars column type.
pub trait ColumnValue: Sized {
    /// True for `Option<T>`: the column can hold nulls.
    const NULLABLE: bool;
    /// Type name for the docs.
    const TYPE_NAME: &'static str;
    /// The polars type the column is stored as.
    fn dtype() -> DataType;
    /// Builds the column `name` from the values.
    fn column(name: &str, values: Vec<Self>) -> Column;
    /// Reads the column's values.
    fn read(col: &Column) -> std::result::Result<Vec<Self>, ColumnError>;
}

fn cast_to(col: &Column, dtype: &DataType) -> std::result::Result<Column, ColumnError> {
    if col.dtype() == dtype {
        return Ok(col.clone());
    }
    col.strict_cast(dtype).map_err(|source| ColumnError::Cast {
        found: Box::new(col.dtype().clone()),
        expected: Box::new(dtype.clone()),
        source,
    })
}

fn null_error(i: usize) -> ColumnError {
    ColumnError::Null { row: i }
}

macro_rules! primitive_column {
    ($t:ty, $dtype:expr, $acc:ident, $name:literal) => {
        impl ColumnValue for $t {
            const NULLABLE: bool = false;
            const TYPE_NAME: &'static str = $name;
            fn dtype() -> DataType {
                $dtype
            }
            fn column(name: &str, values: Vec<Self>) -> Column {
                Column::new(name.into(), values)
            }
            fn read(col: &Column) -> std::result::Result<Vec<Self>, ColumnError> {
                let c = cast_to(col, &Self::dtype())?;
                let ca = c.$acc().map_err(ColumnError::View)?;
                ca.iter()
                    .enumerate()
                    .map(|(i, v)| v.ok_or_else(|| null_error(i)))
                    .collect()
            }
        }
        impl ColumnValue for Option<$t> {
            const NULLABLE: bool = true;
            const TYPE_NAME: &'static str = $name;
            fn dtype() -> DataType {
                $dtype
            }
            fn column(name: &str, values: Vec<Self>) -> Column {
                Column::new(name.into(), values)
            }
            fn read(col: &Column) -> std::result::Result<Vec<Self>, ColumnError> {
                let c = cast_to(col, &Self::dtype())?;
                let ca = c.$acc().map_err(ColumnError::View)?;
                Ok(ca.iter().collect())
            }
        }
    };
}

primitive_column!(f64, DataType::Float64, f64, "f64");
primitive_column!(u32, DataType::UInt32, u32, "u32");
primitive_column!(u64, DataType::UInt64, u64, "u64");
primitive_column!(bool, DataType::Boolean, bool, "bool");

impl ColumnValue for String {
    const NULLABLE: bool = false;
    const TYPE_NAME: &'static str = "string";
    fn dtype() -> DataType {
        DataType::String
    }
    fn column(name: &str, values: Vec<Self>) -> Column {
        Column::new(name.into(), values)
    }
    fn read(col: &Column) -> std::result::Result<Vec<Self>, ColumnError> {
        let c = cast_to(col, &Self::dtype())?;
        let ca = c.str().map_err(ColumnError::View)?;
        ca.iter()
            .enumerate()
            .map(|(i, v)| v.map(str::to_owned).ok_or_else(|| null_error(i)))
            .collect()
    }
}

impl ColumnValue for Option<String> {
    const NULLABLE: bool = true;
    const TYPE_NAME: &'static str = "string";
    fn dtype() -> DataType {
        DataType::String
    }
    fn column(name: &str, values: Vec<Self>) -> Column {
        Column::new(name.into(), values)
    }
    fn read(col: &Column) -> std::result::Result<Vec<Self>, ColumnError> {
        let c = cast_to(col, &Self::dtype())?;
        let ca = c.str().map_err(ColumnError::View)?;
        Ok(ca.iter().map(|v| v.map(str::to_owned)).collect())
    }
}

/// The one datetime type of every table.
pub fn datetime_dtype() -> DataType {
    DataType::Datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC))
}

/// A datetime column from optional unix milliseconds.
pub fn datetime_column(name: &str, values: &[Option<i64>]) -> Column {
    Series::new(name.into(), values)
        .into_datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC))
        .into_column()
}

fn read_datetime(col: &Column) -> std::result::Result<Vec<Option<i64>>, ColumnError> {
    let c = cast_to(col, &datetime_dtype())?;
    let ca = c.datetime().map_err(ColumnError::View)?;
    Ok(ca.physical().iter().collect())
}

impl ColumnValue for Timestamp {
    const NULLABLE: bool = false;
    const TYPE_NAME: &'static str = "datetime[ms, UTC]";
    fn dtype() -> DataType {
        datetime_dtype()
    }
    fn column(name: &str, values: Vec<Self>) -> Column {
        let v: Vec<Option<i64>> = values.into_iter().map(|t| Some(t.0)).collect();
        datetime_column(name, &v)
    }
    fn read(col: &Column) -> std::result::Result<Vec<Self>, ColumnError> {
        read_datetime(col)?
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.map(Timestamp).ok_or_else(|| null_error(i)))
            .collect()
    }
}

impl ColumnValue for Option<Timestamp> {
    const NULLABLE: bool = true;
    const TYPE_NAME: &'static str = "datetime[ms, UTC]";
    fn dtype() -> DataType {
        datetime_dtype()
    }
    fn column(name: &str, values: Vec<Self>) -> Column {
        let v: Vec<Option<i64>> = values.into_iter().map(|t| t.map(|t| t.0)).collect();
        datetime_column(name, &v)
    }
    fn read(col: &Column) -> std::result::Result<Vec<Self>, ColumnError> {
        Ok(read_datetime(col)?
            .into_iter()
            .map(|v| v.map(Timestamp))
            .collect())
    }
}

/// Reads one column of `df` as `T`, naming the column on error.
pub fn read_column<T: ColumnValue>(df: &DataFrame, name: &str) -> Result<Vec<T>> {
    let col = df.column(name).map_err(|_| TableError::MissingColumn {
        column: name.to_owned(),
    })?;
    T::read(col).map_err(|problem| TableError::BadColumn {
        column: name.to_owned(),
        problem,
    })
}

/// Columns renamed since report schema 1, per table: (old name, new name).
const RENAMED: &[(&str, &str, &str)] = &[
    ("steps", "achieved_rate_rps", "sent_rate_rps"),
    ("steps", "successful_rate_rps", "successes_incl_late_rps"),
    (
        "steps",
        "predicted_achieved_rps",
        "predicted_throughput_rps",
    ),
];

/// Brings a table written by an older schema to the current one: renamed columns get their
/// new names, and nullable columns added since are filled with nulls (a figure the old
/// version did not compute is unknown, not zero). A missing column that cannot be null
/// stays missing, so reading fails and names it.
pub fn upgrade_frame<T: Table>(mut df: DataFrame) -> Result<DataFrame> {
    for (_, old, new) in RENAMED.iter().filter(|(t, ..)| *t == T::NAME) {
        let has = |n: &str| df.get_column_names().iter().any(|c| c.as_str() == n);
        if has(old) && !has(new) {
            df.rename(old, (*new).into())?;
        }
    }
    for c in T::schema().into_iter().filter(|c| c.nullable) {
        if df.column(c.name).is_err() {
            let dtype = T::dtype_of(c.name).unwrap_or(DataType::Null);
            let col = Column::full_null(c.name.into(), df.height(), &dtype);
            df.with_column(col)?;
        }
    }
    Ok(df)
}

/// A documented table: its name, description and columns.
pub trait Table: Sized {
    /// File stem, e.g. `steps`.
    const NAME: &'static str;
    /// What one row is.
    const DESCRIPTION: &'static str;
    /// The documented columns, in column order.
    fn schema() -> Vec<ColumnSpec>;
    /// The polars type of a column.
    fn dtype_of(column: &str) -> Option<DataType>;
    /// Builds the DataFrame of `rows`, columns in schema order.
    fn to_frame(rows: &[Self]) -> Result<DataFrame>;
    /// Reads the rows back, checking each column against the schema.
    fn from_frame(df: &DataFrame) -> Result<Vec<Self>>;
}

macro_rules! table {
    (
        $(#[doc = $tdoc:literal])*
        pub struct $name:ident = $table:literal {
            $( $(#[doc = $doc:literal])+ pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[doc = $tdoc])*
        #[derive(Debug, Clone, PartialEq, Serialize)]
        pub struct $name {
            $( $(#[doc = $doc])+ pub $field: $ty, )*
        }

        impl Table for $name {
            const NAME: &'static str = $table;
            const DESCRIPTION: &'static str = concat!($($tdoc),*);
            fn schema() -> Vec<ColumnSpec> {
                vec![$(ColumnSpec {
                    name: stringify!($field),
                    dtype: <$ty as ColumnValue>::TYPE_NAME,
                    nullable: <$ty as ColumnValue>::NULLABLE,
                    doc: concat!($($doc),+),
                }),*]
            }
            fn dtype_of(column: &str) -> Option<DataType> {
                $( if column == stringify!($field) {
                    return Some(<$ty as ColumnValue>::dtype());
                } )*
                None
            }
            fn to_frame(rows: &[Self]) -> Result<DataFrame> {
                let columns = vec![$(
                    <$ty as ColumnValue>::column(
                        stringify!($field),
                        rows.iter().map(|r| r.$field.clone()).collect(),
                    )
                ),*];
                Ok(DataFrame::new(rows.len(), columns)?)
            }
            fn from_frame(df: &DataFrame) -> Result<Vec<Self>> {
                $( let mut $field = read_column::<$ty>(df, stringify!($field))?.into_iter(); )*
                let mut rows = Vec::with_capacity(df.height());
                for _ in 0..df.height() {
                    rows.push($name {
                        $( $field: $field.next().ok_or_else(|| TableError::BadColumn {
                            column: stringify!($field).to_owned(),
                            problem: ColumnError::Short,
                        })?, )*
                    });
                }
                Ok(rows)
            }
        }
    };
}

table! {
    /// One row per (mesh, repetition, step): offered, sent and served load, outcomes, latency
    /// of successes from the step's merged HDR histogram, the model's predictions and the
    /// SLO verdict and whether the step saturated the mesh.
    pub struct StepRow = "steps" {
        /// Mesh name.
        pub mesh: String,
        /// Repetition, 0-based.
        pub repetition: u32,
        /// Position of the step in the profile, 0-based (a warm-up step is 0).
        pub step: u32,
        /// Step name from the profile.
        pub step_name: String,
        /// Warm-up step: excluded from SLO verdicts, repetition statistics and sweep plots.
        pub warmup: bool,
        /// Start of the step's load (UTC).
        pub start: Timestamp,
        /// End of the step's load (UTC, exclusive).
        pub end: Timestamp,
        /// Length of the step in seconds (the load generator's elapsed time when known).
        pub duration_s: f64,
        /// Offered rate (open loop), requests per second; null for closed-loop steps.
        pub target_rate_rps: Option<f64>,
        /// Users (closed loop); null for open-loop steps.
        pub users: Option<u32>,
        /// Requests due: sent plus dropped (dropped = too late to send). Null without a load result.
        pub requests: Option<u64>,
        /// Requests sent.
        pub sent: Option<u64>,
        /// Successes: a 2xx response within the timeout.
        pub successes: Option<u64>,
        /// Sent requests that got a non-2xx response or a connection/other error (timeouts
        /// excluded). Requests in flight when a stop aborted the step have no outcome: they
        /// count in `sent` and `error_ratio`, in none of successes, errors and timeouts.
        pub errors: Option<u64>,
        /// Requests without a response within the timeout.
        pub timeouts: Option<u64>,
        /// Planned requests never sent because they were too late (open loop).
        pub dropped: Option<u64>,
        /// Sent rate: requests the load generator sent per second of the time they took to
        /// leave, from the step's start to its last send (at least the step's length), so a
        /// sender that fell behind shows a lower rate. An open loop sends at its target
        /// whatever the mesh does, so this is the offered load, not what was served.
        pub sent_rate_rps: Option<f64>,
        /// Served throughput, the headline rate: successes per second of the time they took
        /// to arrive, from the step's start to its last success (at least the step's
        /// length) — vegeta's definition. Past capacity it stays at what the mesh served
        /// and does not credit the step with the backlog answered after it ended.
        pub throughput_rps: Option<f64>,
        /// Successes of the step's requests per second of the step, including responses
        /// that arrived after the step ended: past capacity this counts the backlog as if
        /// it had been served in time.
        pub successes_incl_late_rps: Option<f64>,
        /// throughput_rps ÷ target_rate_rps (open loop): what the `minAchievedRatio` SLO
        /// checks; null for closed-loop steps.
        pub throughput_ratio: Option<f64>,
        /// (requests − successes) ÷ requests; null when no request was due.
        pub error_ratio: Option<f64>,
        /// Mean latency of successes, ms; null when there were none.
        pub latency_mean_ms: Option<f64>,
        /// Median latency of successes, ms (merged histogram, not an average of percentiles).
        pub latency_p50_ms: Option<f64>,
        /// 90th percentile latency of successes, ms.
        pub latency_p90_ms: Option<f64>,
        /// 95th percentile latency of successes, ms.
        pub latency_p95_ms: Option<f64>,
        /// 99th percentile latency of successes, ms.
        pub latency_p99_ms: Option<f64>,
        /// 99.9th percentile latency of successes, ms.
        pub latency_p999_ms: Option<f64>,
        /// Largest latency of a success, ms.
        pub latency_max_ms: Option<f64>,
        /// Median response time of successes, ms: from the moment the request actually left,
        /// so latency minus response time is what the load generator added (sending late).
        pub response_time_p50_ms: Option<f64>,
        /// 99th percentile response time of successes, ms.
        pub response_time_p99_ms: Option<f64>,
        /// 99th percentile of how late requests left after their planned time, ms (open
        /// loop; every request's, from 0); null for closed-loop steps.
        pub lateness_p99_ms: Option<f64>,
        /// Median latency of the last third of the step's seconds ÷ that of the first third
        /// (per-second medians of successes, averaged): well above 1 when a queue builds up
        /// through the step; null with fewer than 3 seconds with successes.
        pub latency_growth: Option<f64>,
        /// The step was past what the mesh could serve: served throughput below 90 % of the
        /// target rate, or latency growing through the step (queue build-up: growth ≥ 2 and
        /// at least 20 ms). Null without a load result.
        pub saturated: Option<bool>,
        /// Why the step counts as saturated, with the predicted bottleneck, and whether
        /// goodput collapsed (timeouts while throughput fell below that of an earlier,
        /// lower-rate step of the same sweep); null when not saturated.
        pub saturation: Option<String>,
        /// Model: the most the mesh can carry (bottleneck capacity at its largest replica count), rps.
        pub predicted_max_throughput_rps: Option<f64>,
        /// Model: the bottleneck service.
        pub predicted_bottleneck: Option<String>,
        /// Model: min(target rate, predicted maximum throughput), the served throughput the
        /// model expects, rps.
        pub predicted_throughput_rps: Option<f64>,
        /// Model (a G/G/c station per replica, see `meshbench plan`): mean latency at the target rate with the HPAs' steady-state replicas, ms; null when saturated.
        pub predicted_latency_mean_ms: Option<f64>,
        /// Model: 99th percentile latency at the target rate, ms; null when saturated.
        pub predicted_latency_p99_ms: Option<f64>,
        /// The model's error on the served throughput: (predicted − measured) ÷ measured (0.1 = predicted 10 % high).
        pub predicted_throughput_error: Option<f64>,
        /// The model's error on the mean latency, as above; null when either is missing.
        pub predicted_latency_mean_error: Option<f64>,
        /// The model's error on the p99 latency, as above; null when either is missing.
        pub predicted_latency_p99_error: Option<f64>,
        /// SLO verdict of the step; null when the benchmark has no SLOs.
        pub slo_pass: Option<bool>,
        /// Violated SLOs with the measured values, `; `-separated; null when none.
        pub slo_violations: Option<String>,
        /// The step was cut short or its load result is missing.
        pub partial: bool,
    }
}

table! {
    /// One row per (mesh, repetition, step, service): replicas (time-weighted), CPU in cores
    /// and as utilization of the request, memory, worker-side figures and the scaling figures.
    pub struct ServiceRow = "services" {
        /// Mesh name.
        pub mesh: String,
        /// Repetition, 0-based.
        pub repetition: u32,
        /// Position of the step in the profile.
        pub step: u32,
        /// Step name.
        pub step_name: String,
        /// Service name.
        pub service: String,
        /// Samples of this service attributed to the step.
        pub samples: u64,
        /// Time-weighted mean of `replicas` over the step (the count carried in from before the step counts from the step's start).
        pub replicas_avg: Option<f64>,
        /// Smallest replica count during the step.
        pub replicas_min: Option<f64>,
        /// Largest replica count during the step.
        pub replicas_max: Option<f64>,
        /// Replica count at the end of the step.
        pub replicas_final: Option<f64>,
        /// Time-weighted mean of ready replicas.
        pub replicas_ready_avg: Option<f64>,
        /// Largest replica count the HPA asked for.
        pub replicas_desired_max: Option<f64>,
        /// Most replicas left Pending at once for want of room on the node; null when not
        /// recorded (a cluster run).
        pub replicas_pending_max: Option<f64>,
        /// CPU of all pods, in cores, averaged over the step's sampling instants.
        pub cpu_cores_avg: Option<f64>,
        /// Largest CPU of all pods at one instant, cores.
        pub cpu_cores_max: Option<f64>,
        /// CPU request of one pod, cores.
        pub cpu_request_cores: Option<f64>,
        /// CPU limit of one pod, cores; null when unlimited or unknown.
        pub cpu_limit_cores: Option<f64>,
        /// Mean over instants of (mean over pods of CPU ÷ request): the utilization the HPA sees, as a fraction (0.7 = 70 %).
        pub cpu_utilization_avg: Option<f64>,
        /// Largest such utilization at one instant.
        pub cpu_utilization_max: Option<f64>,
        /// HPA target utilization, fraction of the request; null without an HPA.
        pub hpa_target_utilization: Option<f64>,
        /// cpu_utilization_avg ÷ hpa_target_utilization (1 = on target).
        pub cpu_utilization_vs_target: Option<f64>,
        /// Mean memory working set per pod, bytes.
        pub memory_bytes_avg: Option<f64>,
        /// Largest memory working set of one pod, bytes.
        pub memory_bytes_max: Option<f64>,
        /// Largest memory of all pods at one instant, bytes.
        pub memory_bytes_total_max: Option<f64>,
        /// Worker-side requests per second, mean over the step.
        pub worker_requests_per_s: Option<f64>,
        /// Worker-side errors per second, mean over the step.
        pub worker_errors_per_s: Option<f64>,
        /// Worker-side mean latency, weighted by request rate, ms.
        pub worker_latency_mean_ms: Option<f64>,
        /// Largest worker-side p99 latency of a sampling interval, ms (percentiles are not averaged).
        pub worker_latency_p99_ms_max: Option<f64>,
        /// Seconds from the step's start to the first scale-up; null without one.
        pub scale_up_reaction_s: Option<f64>,
        /// Seconds from the step's start to the last replica change, when the count then stayed unchanged for the settle window (run.json `options.settle_window_ms`); 0 without a change; null when still changing at the end.
        pub settle_time_s: Option<f64>,
        /// Highest replica count at or after the first scale-up minus the final count (≥ 0).
        pub overshoot_replicas: Option<f64>,
        /// Replica count changes during the step.
        pub scale_events: Option<u32>,
        /// Changes whose direction reverses the previous one (thrashing).
        pub direction_changes: Option<u32>,
        /// ∫ replicas dt over the step, replica-seconds (cost).
        pub replica_seconds: Option<f64>,
        /// Model: replicas the HPA settles on at the step's target rate.
        pub predicted_replicas: Option<u32>,
        /// Model: fewest replicas the HPA can rest at for that rate (within its 10 % tolerance, reached from below); null without an HPA.
        pub predicted_replicas_low: Option<u32>,
        /// Model: most replicas the HPA can rest at for that rate (reached from above); null without an HPA.
        pub predicted_replicas_high: Option<u32>,
        /// Model: CPU utilization of the request at those replicas (fraction).
        pub predicted_cpu_utilization: Option<f64>,
        /// The model's error on the utilization: (predicted − `cpu_utilization_avg`) ÷ `cpu_utilization_avg` (0.1 = predicted 10 % high).
        pub predicted_cpu_utilization_error: Option<f64>,
        /// Model: of `predicted_replicas`, those the node has no room for (local runs).
        pub predicted_replicas_pending: Option<u32>,
    }
}

table! {
    /// One row per second of each step: outcomes of the requests planned (open loop) or
    /// sent (closed loop) in that second and the latency of their successes, and the
    /// requests that actually left in that second (a stalled sender shows as a gap, then a
    /// burst).
    pub struct LatencyRow = "latency" {
        /// Start of the second (UTC).
        pub ts: Timestamp,
        /// Mesh name.
        pub mesh: String,
        /// Repetition, 0-based.
        pub repetition: u32,
        /// Position of the step in the profile.
        pub step: u32,
        /// Offset of the second in the step, 0-based.
        pub second: u32,
        /// Requests planned in this second (open loop; dropped ones included) or sent in it (closed loop).
        pub requests: u64,
        /// Requests that left in this second, whenever they were planned; null in directories
        /// written before schema 3.
        pub sent: Option<u64>,
        /// Successes among the requests planned in this second.
        pub successes: u64,
        /// Non-2xx responses and connection/other errors among the requests planned in this second.
        pub errors: u64,
        /// Timeouts among the requests planned in this second.
        pub timeouts: u64,
        /// Mean latency of this second's successes, ms; null when there were none.
        pub latency_mean_ms: Option<f64>,
        /// Median latency, ms.
        pub latency_p50_ms: Option<f64>,
        /// 90th percentile latency, ms.
        pub latency_p90_ms: Option<f64>,
        /// 99th percentile latency, ms.
        pub latency_p99_ms: Option<f64>,
        /// Largest latency, ms.
        pub latency_max_ms: Option<f64>,
    }
}

table! {
    /// Long format: one row per sample as collected, with the step it falls in.
    pub struct TimeseriesRow = "timeseries" {
        /// Instant of the sample (UTC).
        pub ts: Timestamp,
        /// Mesh name.
        pub mesh: String,
        /// Repetition of the step the sample falls in; null between steps.
        pub repetition: Option<u32>,
        /// Step the sample falls in (by time); null between steps.
        pub step: Option<u32>,
        /// Service name.
        pub service: String,
        /// Pod name for per-pod metrics; null for per-service metrics.
        pub pod: Option<String>,
        /// Metric name (see the metric vocabulary); the unit is part of the name.
        pub metric: String,
        /// Value.
        pub value: f64,
    }
}

table! {
    /// Repetition statistics: one row per (mesh, step, service, figure) with the mean and
    /// 95 % confidence interval (Student t) over repetitions. Warm-up steps are excluded.
    pub struct RepetitionRow = "repetitions" {
        /// Mesh name.
        pub mesh: String,
        /// Position of the step in the profile.
        pub step: u32,
        /// Step name.
        pub step_name: String,
        /// Service for per-service figures (from `services`); null for step figures (from `steps`).
        pub service: Option<String>,
        /// Column name of the figure in `steps` or `services`.
        pub figure: String,
        /// Repetitions with a value.
        pub n: u32,
        /// Mean over repetitions.
        pub mean: f64,
        /// Sample standard deviation; null for n < 2.
        pub std: Option<f64>,
        /// Lower bound of the 95 % confidence interval of the mean; null for n < 2.
        pub ci95_low: Option<f64>,
        /// Upper bound of the 95 % confidence interval of the mean; null for n < 2.
        pub ci95_high: Option<f64>,
    }
}

table! {
    /// `meshbench search`: one row per rate tried, in the order tried, per mesh; the
    /// capacity model's bracket first (`platform` = `model`), then simulated runs, then
    /// the real runs that confirm them.
    pub struct SearchRow = "search" {
        /// Mesh name.
        pub mesh: String,
        /// Where the figure comes from: `model` (the capacity model's most the mesh can
        /// carry at its largest replica counts), `simulated` (`meshbench simulate`) or
        /// `measured` (`meshbench run`).
        pub platform: String,
        /// The constant open-loop rate held, requests per second.
        pub rate_rps: f64,
        /// Every SLO held over the measured part; null for the model's row.
        pub slo_pass: Option<bool>,
        /// Violated SLOs with their values, `; `-separated; null when none.
        pub slo_violations: Option<String>,
        /// Served throughput of the measured part, requests per second.
        pub throughput_rps: Option<f64>,
        /// Failed requests ÷ requests sent.
        pub error_ratio: Option<f64>,
        /// Mean latency of successes, ms.
        pub latency_mean_ms: Option<f64>,
        /// 99th percentile latency of successes, ms.
        pub latency_p99_ms: Option<f64>,
        /// Run directory of the try, relative to the search directory; null for the model.
        pub run_dir: Option<String>,
    }
}

table! {
    /// `meshbench tune`: one row per candidate HPA setting and platform, simulated
    /// candidates in the order generated, then the real runs that confirm the best. A
    /// candidate's score: steps that failed an SLO first, then pod-seconds.
    pub struct TuneRow = "tune" {
        /// Mesh name.
        pub mesh: String,
        /// Candidate number (0: the settings as written).
        pub candidate: u32,
        /// The settings tried, `SERVICE.KEY=VALUE` separated by spaces.
        pub settings: String,
        /// `simulated` or `measured`.
        pub platform: String,
        /// Rank among the candidates of this platform (1 = best); null when not run.
        pub rank: Option<u32>,
        /// Steps of the Benchmark's profile.
        pub steps: u32,
        /// Steps that failed an SLO (or were cut short).
        pub steps_failed: u32,
        /// Replica-seconds summed over the services and steps: what the settings cost.
        pub pod_seconds: Option<f64>,
        /// Highest 99th percentile latency of any step, ms.
        pub latency_p99_ms_max: Option<f64>,
        /// Highest error ratio of any step.
        pub error_ratio_max: Option<f64>,
        /// Run directory, relative to the tune directory; null when not run.
        pub run_dir: Option<String>,
        /// Why a candidate was not run (its settings are invalid); null otherwise.
        pub note: Option<String>,
    }
}

fn markdown_for<T: Table>(out: &mut String) {
    out.push_str(&format!(
        "## `{}`\n\n{}\n\n",
        T::NAME,
        T::DESCRIPTION.trim()
    ));
    out.push_str("| column | type | nullable | meaning |\n|---|---|---|---|\n");
    for c in T::schema() {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            c.name,
            c.dtype,
            if c.nullable { "yes" } else { "no" },
            c.doc.trim().replace('|', "\\|")
        ));
    }
    out.push('\n');
}

/// The text of `docs/report-schema.md`, generated from the table declarations.
pub fn schema_markdown() -> String {
    let mut out = String::from(
        "# meshbench report schema\n\n\
         <!-- Generated from analysis/src/tables.rs by `schema_markdown()`; a test fails when \
         this file drifts. Regenerate with `UPDATE_SCHEMA_DOC=1 cargo test -p \
         meshbench-analysis --test run_dir`. -->\n\n\
         A run directory `<out>/<benchmark>-<UTC timestamp>/` holds:\n\n\
         | file | content |\n|---|---|\n\
         | `run.json` | spec, versions, platform, limits enforcement, warnings, phases, partial flag, SLO verdicts, capacity plans, options |\n\
         | `steps.parquet`, `steps.csv` | one row per (mesh, repetition, step) |\n\
         | `services.parquet`, `services.csv` | one row per (mesh, repetition, step, service) |\n\
         | `latency.parquet`, `latency.csv` | one row per second of every step |\n\
         | `timeseries.parquet`, `timeseries.csv` | every sample, long format |\n\
         | `repetitions.parquet`, `repetitions.csv` | mean and 95 % CI over repetitions |\n\
         | `report.html` | self-contained report (inline SVG plots, no network); rewritten after every step |\n\
         | `plots/*.svg`, `plots/*.png` | the report's plots as files, written at the end of the run and by `meshbench report DIR` |\n\n\
         Conventions: Parquet files are zstd-compressed; timestamps are `datetime[ms, UTC]` \
         (CSV: ISO 8601 with offset); units are part of column names (`_ms`, `_s`, `_rps`, \
         `_cores`, `_bytes`; utilizations are fractions, 0.7 = 70 %); a figure that cannot be \
         computed (e.g. latency of a step without successes) is null, never NaN. Every file is \
         written to a temporary name and renamed, after every completed step.\n\n\
         Reading: `pl.read_parquet(\"steps.parquet\")`; DuckDB `SELECT * FROM \
         'steps.parquet'` (timestamps arrive as `TIMESTAMP WITH TIME ZONE`); pandas \
         `pd.read_parquet(\"steps.parquet\", dtype_backend=\"pyarrow\")` keeps nullable integer \
         columns as integers (with the default backend pandas turns an integer column with \
         nulls into floats with NaN; timestamps arrive as `datetime64[ms, UTC]` either way).\n\n",
    );
    markdown_for::<StepRow>(&mut out);
    markdown_for::<ServiceRow>(&mut out);
    markdown_for::<LatencyRow>(&mut out);
    markdown_for::<TimeseriesRow>(&mut out);
    markdown_for::<RepetitionRow>(&mut out);
    out.push_str(
        "`meshbench search` writes a search directory `<out>/<benchmark>-search-<UTC \
         timestamp>/` instead: `search.json` (per mesh: the answer, how it was confirmed, the \
         rates tried), `search.parquet` and `search.csv` (below), `candidates/*.yaml` (the \
         Benchmark held at each rate, runnable as it is), and the run directories of the \
         tries under `simulated/` and `measured/`.\n\n",
    );
    markdown_for::<SearchRow>(&mut out);
    out.push_str(
        "`meshbench tune` writes `<out>/<benchmark>-tune-<UTC timestamp>/`: `tune.json` (per \
         mesh the winning settings and the settings as written, with their scores), \
         `tune.parquet` and `tune.csv` (below), `winner-<mesh>.yaml` (the ServiceMesh with the \
         winning settings, ready to apply), `candidates/*.yaml`, and the tries' run \
         directories under `simulated/` and `measured/`.\n\n",
    );
    markdown_for::<TuneRow>(&mut out);
    out.push_str("## Metric vocabulary (`timeseries.metric`)\n\n");
    out.push_str("| metric | per | meaning |\n|---|---|---|\n");
    for (name, per_pod, doc) in crate::samples::metric::ALL {
        out.push_str(&format!(
            "| `{name}` | {} | {doc} |\n",
            if *per_pod { "pod" } else { "service" }
        ));
    }
    out.push_str(
        "\nOther metric names, and known metrics reported at the other level (per pod instead of \
         per service or the reverse), are kept in `timeseries` but not summarised. When a service has \
         no `replicas` samples, its replica count at an instant is the number of its pods with \
         a `cpu_cores` sample at that instant.\n\n\
         ## `run.json`\n\n\
         The runner's metadata (`benchmark`, `spec`, `meshbench_version`, `platform` = \
         `local`|`kubernetes`|`simulated`, `limits` = {`mode`: `enforced`|`partial`|`not_enforced`, \
         `reason`}, `warnings`, `phases` [{`name`, `started_at`, `finished_at`}], \
         `started_at`, `finished_at`, `steps_planned`, `partial`) plus: `schema_version`, \
         `analysis_version`, `steps_completed`, `partial` (also true when fewer steps \
         completed than planned or the run has not finished), `partial_reason`, `slos`, \
         `slo` {`pass` (null without SLOs), `steps` [per-step verdicts with violations], \
         `summary` [one line per failing step]}, `predictions` {mesh: capacity plan at the \
         run's target rates}, `options`, `tables` (files written), `saturation` [per mesh: \
         `first_saturated_rate_rps`, `saturated_throughput_rps` (the measured capacity), \
         `max_rate_within_slos_rps`, `max_throughput_rps`, `predicted_bottleneck`, \
         `predicted_max_throughput_rps`, `summary`].\n",
    );
    out
}
