//! Exit codes of `meshbench`, documented in the README so CI pipelines can rely on them.

use std::process::ExitCode;

/// Everything requested succeeded (all specs valid; the run completed and every SLO held).
pub const OK: u8 = 0;
/// The input is invalid (`validate`, `import`, `plan`, `run` before anything starts; a run
/// directory or expectations file `compare` cannot read).
pub const INVALID: u8 = 1;
/// Usage error: unknown flag, missing argument, malformed `--fail-on` rule (clap's own code).
pub const USAGE: u8 = 2;
/// The run completed but at least one SLO was violated; for `compare`, a gate failed; for
/// `results --check`, the downloaded run violated an SLO.
pub const SLO_FAILED: u8 = 3;
/// The run itself failed (a platform or I/O error, or interrupted); any partial report
/// is kept and marked partial. Also: a `--junit` or `--summary-md` file could not be
/// written, and for `results --check` the run in the cluster failed or was cancelled.
pub const RUN_FAILED: u8 = 4;

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
