//! How the binaries end: an error becomes one `error: ...` line with its
//! causes (`{:#}`, as anyhow prints a chain) and exit status 1, never
//! `Debug` output with a backtrace, so journald and terminals show the
//! reason whole.

use std::fmt::Display;
use std::process::ExitCode;

/// The exit status for `result`, printing the error to stderr.
pub fn report<E: Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
