//! The run directory: atomic writes of every table after each step, `run.json`, the report,
//! and reading a directory back (for `meshbench report` and `meshbench compare`).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use polars::prelude::*;

use crate::analyze::StepIndex;
use crate::analyze::{self, Analysis, RunJson, SampleRef, compact_timestamp};
use crate::meta::RunData;
use crate::plots;
use crate::report;
use crate::tables::{self, LatencyRow, RepetitionRow, ServiceRow, StepRow, Table, TimeseriesRow};

/// Errors of the run directory; each names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// Creating, writing or renaming a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory being created, written or renamed.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// A table could not be built or written.
    #[error("{path}: cannot write table: {problem}")]
    Write {
        /// The file that was being written.
        path: PathBuf,
        /// What went wrong, from the writer.
        problem: String,
    },
    /// A table is missing.
    #[error("{path}: table is missing; a run directory has {expected}")]
    Missing {
        /// Where the table was looked for.
        path: PathBuf,
        /// The files a run directory holds, in words.
        expected: String,
    },
    /// A table exists but cannot be read or does not match its schema.
    #[error("{path}: {problem}")]
    Corrupt {
        /// The file that could not be read.
        path: PathBuf,
        /// Why: not Parquet or JSON, or the column or field that does not match.
        problem: String,
    },
    /// A plot could not be drawn.
    #[error("plot {name}: {problem}")]
    Plot {
        /// The plot's file stem.
        name: String,
        /// Why drawing failed.
        problem: plots::PlotError,
    },
}

/// Result alias of this module.
pub type Result<T, E = RunDirError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RunDirError + '_ {
    move |source| RunDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `path` atomically: the bytes go to a hidden temporary file in the same
/// directory, are synced, and the file is renamed over `path`. A crash leaves either the
/// old file or the new one, never a truncated one. A path that exists and is not a regular
/// file (`/dev/null`, a FIFO) is written in place, since a rename would replace the device
/// node itself. An error of `write` becomes [`RunDirError::Write`], with its message.
pub fn write_atomic<E: std::fmt::Display>(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::result::Result<(), E>,
) -> Result<()> {
    if fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        let file = fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        let mut w = BufWriter::new(file);
        write(&mut w).map_err(|e| RunDirError::Write {
            path: path.to_owned(),
            problem: e.to_string(),
        })?;
        return w.flush().map_err(io_err(path));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w = BufWriter::new(file);
        write(&mut w).map_err(|e| RunDirError::Write {
            path: path.to_owned(),
            problem: e.to_string(),
        })?;
        let file = w.into_inner().map_err(|e| RunDirError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_frame(
    dir: &Path,
    stem: &str,
    df: &mut DataFrame,
    written: &mut Vec<String>,
) -> Result<()> {
    let parquet = dir.join(format!("{stem}.parquet"));
    write_atomic(&parquet, |w| {
        ParquetWriter::new(w)
            .with_compression(ParquetCompression::Zstd(None))
            .finish(df)
            .map(|_| ())
    })?;
    let csv = dir.join(format!("{stem}.csv"));
    write_atomic(&csv, |w| {
        CsvWriter::new(w)
            .include_header(true)
            // RFC 3339 (`2024-01-31T12:00:00.000+00:00`): read as UTC by pandas, polars and DuckDB.
            .with_datetime_format(Some("%Y-%m-%dT%H:%M:%S%.3f%:z".into()))
            .finish(df)
    })?;
    written.push(format!("{stem}.parquet"));
    written.push(format!("{stem}.csv"));
    Ok(())
}

/// Writes `rows` as `<dir>/<T::NAME>.parquet` and `.csv`, each atomically; for tables
/// outside a run directory (`search`).
pub fn write_table_files<T: Table>(dir: &Path, rows: &[T]) -> Result<()> {
    write_table(dir, rows, &mut Vec::new())
}

fn write_table<T: Table>(dir: &Path, rows: &[T], written: &mut Vec<String>) -> Result<()> {
    let mut df = T::to_frame(rows).map_err(|e| RunDirError::Write {
        path: dir.join(format!("{}.parquet", T::NAME)),
        problem: e.to_string(),
    })?;
    write_frame(dir, T::NAME, &mut df, written)
}

/// The `timeseries` table, built column by column straight from the samples (it is by far
/// the largest table; no per-row structs).
pub fn timeseries_frame(data: &RunData) -> tables::Result<DataFrame> {
    let index = StepIndex::new(&data.steps);
    let n = data.samples.len();
    let mut ts = Vec::with_capacity(n);
    let mut mesh = Vec::with_capacity(n);
    let mut rep = Vec::with_capacity(n);
    let mut step = Vec::with_capacity(n);
    let mut service = Vec::with_capacity(n);
    let mut pod = Vec::with_capacity(n);
    let mut metric = Vec::with_capacity(n);
    let mut value = Vec::with_capacity(n);
    for s in &data.samples {
        let loc = index.locate(&s.mesh, s.ts_ms, s.step);
        ts.push(Some(s.ts_ms));
        mesh.push(s.mesh.as_str());
        rep.push(loc.map(|l| l.0));
        step.push(loc.map(|l| l.1));
        service.push(s.service.as_str());
        pod.push(s.pod.as_deref());
        metric.push(s.metric.as_str());
        value.push(if s.value.is_finite() {
            Some(s.value)
        } else {
            None
        });
    }
    let columns = vec![
        tables::datetime_column("ts", &ts),
        Column::new("mesh".into(), mesh),
        Column::new("repetition".into(), rep),
        Column::new("step".into(), step),
        Column::new("service".into(), service),
        Column::new("pod".into(), pod),
        Column::new("metric".into(), metric),
        Column::new("value".into(), value),
    ];
    Ok(DataFrame::new(n, columns)?)
}

/// A run's output directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
}

/// Files the report step wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportFiles {
    /// The `report.html` written.
    pub html: PathBuf,
    /// SVG and PNG files of the plots.
    pub plots: Vec<PathBuf>,
}

impl RunDir {
    /// Creates `<out_root>/<benchmark>-<UTC timestamp>/` (with a `-N` suffix if that exists).
    pub fn create(out_root: &Path, benchmark: &str, started_at: DateTime<Utc>) -> Result<RunDir> {
        fs::create_dir_all(out_root).map_err(io_err(out_root))?;
        let base = format!("{benchmark}-{}", compact_timestamp(started_at));
        for attempt in 0..1000 {
            let name = if attempt == 0 {
                base.clone()
            } else {
                format!("{base}-{attempt}")
            };
            let path = out_root.join(name);
            match fs::create_dir(&path) {
                Ok(()) => return Ok(RunDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Err(RunDirError::Io {
            path: out_root.join(base),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "1000 directories of this name exist",
            ),
        })
    }

    /// An existing run directory.
    pub fn open(path: &Path) -> RunDir {
        RunDir {
            path: path.to_owned(),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Analyses `data` and (re)writes every table, `run.json` and `report.html`. Call after
    /// every completed step: the directory is complete and consistent after each call.
    pub fn update(&self, data: &RunData) -> Result<Analysis> {
        let mut analysis = analyze::analyze(data);
        let mut written = Vec::new();
        let dir = &self.path;
        write_table(dir, &analysis.steps, &mut written)?;
        write_table(dir, &analysis.services, &mut written)?;
        write_table(dir, &analysis.latency, &mut written)?;
        write_table(dir, &analysis.repetitions, &mut written)?;
        let mut ts = timeseries_frame(data).map_err(|e| RunDirError::Write {
            path: dir.join("timeseries.parquet"),
            problem: e.to_string(),
        })?;
        write_frame(dir, TimeseriesRow::NAME, &mut ts, &mut written)?;
        drop(ts);
        written.push("run.json".into());
        written.push("report.html".into());
        analysis.run.tables = written;
        write_run_json(dir, &analysis.run)?;
        report::write_report(dir, &analysis, false)?;
        Ok(analysis)
    }

    /// Final update: tables, `run.json`, `report.html`, and the plots as SVG and PNG files.
    pub fn finish(&self, data: &RunData) -> Result<ReportFiles> {
        let analysis = self.update(data)?;
        report::write_report(&self.path, &analysis, true)
    }
}

fn write_run_json(dir: &Path, run: &RunJson) -> Result<()> {
    // serde_json's error converts into io::Error with the same message.
    write_atomic(&dir.join("run.json"), |w| -> std::io::Result<()> {
        serde_json::to_writer_pretty(&mut *w, run)?;
        w.write_all(b"\n")
    })
}

fn read_parquet(path: &Path) -> Result<DataFrame> {
    let file = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            RunDirError::Missing {
                path: path.to_owned(),
                expected:
                    "steps, services, latency, timeseries and repetitions as .parquet, and run.json"
                        .into(),
            }
        } else {
            io_err(path)(e)
        }
    })?;
    ParquetReader::new(file)
        .finish()
        .map_err(|e| RunDirError::Corrupt {
            path: path.to_owned(),
            problem: format!("not a readable Parquet file: {e}"),
        })
}

pub(crate) fn read_table<T: Table>(dir: &Path) -> Result<Vec<T>> {
    let path = dir.join(format!("{}.parquet", T::NAME));
    let df =
        tables::upgrade_frame::<T>(read_parquet(&path)?).map_err(|e| RunDirError::Corrupt {
            path: path.clone(),
            problem: e.to_string(),
        })?;
    T::from_frame(&df).map_err(|e| RunDirError::Corrupt {
        path,
        problem: format!("does not match the `{}` schema: {e}", T::NAME),
    })
}

/// Reads `run.json`.
pub fn read_run_json(dir: &Path) -> Result<RunJson> {
    let path = dir.join("run.json");
    let text = fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            RunDirError::Missing {
                path: path.clone(),
                expected: "run.json beside the tables".into(),
            }
        } else {
            io_err(&path)(e)
        }
    })?;
    serde_json::from_str(&text).map_err(|e| RunDirError::Corrupt {
        path,
        problem: format!("not a meshbench run.json: {e}"),
    })
}

/// Reads a run directory back into an [`Analysis`] (series for plots from `timeseries`).
pub fn load(dir: &Path) -> Result<Analysis> {
    let run = read_run_json(dir)?;
    let steps = read_table::<StepRow>(dir)?;
    let services = read_table::<ServiceRow>(dir)?;
    let latency = read_table::<LatencyRow>(dir)?;
    let repetitions = read_table::<RepetitionRow>(dir)?;
    let ts_path = dir.join("timeseries.parquet");
    let df = read_parquet(&ts_path)?;
    let series = series_from_timeseries(&df).map_err(|e| RunDirError::Corrupt {
        path: ts_path,
        problem: format!("does not match the `timeseries` schema: {e}"),
    })?;
    Ok(Analysis {
        run,
        steps,
        services,
        latency,
        repetitions,
        series,
    })
}

fn series_from_timeseries(df: &DataFrame) -> tables::Result<analyze::SeriesMap> {
    let ts: Vec<tables::Timestamp> = tables::read_column(df, "ts")?;
    let mesh: Vec<String> = tables::read_column(df, "mesh")?;
    let service: Vec<String> = tables::read_column(df, "service")?;
    let pod: Vec<Option<String>> = tables::read_column(df, "pod")?;
    let metric: Vec<String> = tables::read_column(df, "metric")?;
    let value: Vec<Option<f64>> = tables::read_column(df, "value")?;
    let it = (0..ts.len()).filter_map(|i| {
        Some(SampleRef {
            ts_ms: ts[i].0,
            mesh: &mesh[i],
            service: &service[i],
            pod: pod[i].as_deref(),
            metric: &metric[i],
            value: value[i]?,
        })
    });
    Ok(analyze::group_samples(it))
}

/// Rebuilds `report.html` and the plot files of a run directory from its tables
/// (`meshbench report DIR`).
pub fn rebuild_report(dir: &Path) -> Result<ReportFiles> {
    let analysis = load(dir)?;
    report::write_report(dir, &analysis, true)
}

/// Writes one plot as `<dir>/plots/<name>.svg` and `.png`.
pub(crate) fn write_plot_files(dir: &Path, plot: &plots::Chart, svg: &str) -> Result<Vec<PathBuf>> {
    let plots_dir = dir.join("plots");
    fs::create_dir_all(&plots_dir).map_err(io_err(&plots_dir))?;
    let svg_path = plots_dir.join(format!("{}.svg", plot.name));
    write_atomic(&svg_path, |w| w.write_all(svg.as_bytes()))?;
    let png_path = plots_dir.join(format!("{}.png", plot.name));
    // The bitmap backend picks the format from the extension, so the temporary name ends
    // in .png too.
    let tmp = plots_dir.join(format!(".{}.tmp-{}.png", plot.name, std::process::id()));
    if let Err(problem) = plots::render_png(plot, &tmp) {
        let _ = fs::remove_file(&tmp);
        return Err(RunDirError::Plot {
            name: plot.name.clone(),
            problem,
        });
    }
    fs::rename(&tmp, &png_path).map_err(io_err(&png_path))?;
    Ok(vec![svg_path, png_path])
}
