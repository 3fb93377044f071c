//! The exit codes of `meshbench`, `meshbench-worker` and `meshbench-loadgen` (and of the
//! `meshbench worker` / `meshbench loadgen` subcommands, which are the same programs).
//! Documented in the README ("Exit codes") so CI pipelines and scripts can rely on them.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | invalid input (spec, worker config, load plan, file); nothing was started |
//! | 2 | usage error (unknown flag, missing or conflicting argument, malformed value) |
//! | 3 | completed, but a verdict failed (an SLO; a `compare` gate) |
//! | 4 | the run failed or was interrupted; what was measured is kept, marked partial |
//! | 5 | loadgen: the result was written but could not be posted to `--results-url` |

use std::process::ExitCode;

/// Success: specs valid; a run completed and every SLO held; a worker drained after
/// SIGTERM/SIGINT; a load plan ran to the end and its result was written (and posted).
pub const OK: u8 = 0;
/// The input is invalid: a spec (`validate`, `import`, `plan`, `render`, `run` before
/// anything starts), a worker config, a load plan or its file; a run directory or
/// expectations file `compare` cannot read. Nothing was started.
pub const INVALID: u8 = 1;
/// Usage error: unknown flag, missing or conflicting argument, malformed value or
/// `--fail-on` rule (clap's own code), no worker config or load plan given.
pub const USAGE: u8 = 2;
/// The run completed but at least one SLO was violated; for `compare`, a gate failed; for
/// `results --check`, the downloaded run violated an SLO.
pub const SLO_FAILED: u8 = 3;
/// The run itself failed (a platform, network or I/O error) or was interrupted; any
/// partial report or load result is kept and marked partial. Also: a worker could not
/// bind or serve; the loadgen's preflight request failed (nothing was sent); a `--junit`
/// or `--summary-md` file could not be written; for `results --check`, the run in the
/// cluster failed or was cancelled.
pub const RUN_FAILED: u8 = 4;
/// Loadgen only: the result was written (to `--out`) but posting it to `--results-url`
/// failed.
pub const UPLOAD_FAILED: u8 = 5;

/// Converts one of the codes above into an [`ExitCode`].
pub fn code(c: u8) -> ExitCode {
    ExitCode::from(c)
}

/// Writes `text` to standard output. A closed pipe (`meshbench plan … | head`) ends the
/// output quietly instead of panicking, as `println!` would.
pub fn out(text: impl AsRef<str>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_ref().as_bytes())
        .and_then(|()| stdout.flush());
}
