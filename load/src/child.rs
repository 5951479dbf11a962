//! `tollgate-load` run as a child process and its `--json` summary read back: how `tollgate bench
//! e2e` and `tollgate demo` drive load, so the generator's CPU and memory never count as the
//! server's and its progress bar reaches the terminal.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use thiserror::Error;

use super::Summary;

/// `tollgate-load` could not be found, run, or understood.
#[derive(Debug, Error)]
pub enum ChildError {
    /// The running executable's path is unknown.
    #[error("locating the running executable")]
    CurrentExe(#[source] std::io::Error),
    /// No `tollgate-load` next to the running executable.
    #[error("no tollgate-load beside {}; build both binaries", .0.display())]
    NoSibling(PathBuf),
    /// The binary could not be started.
    #[error("running {}", binary.display())]
    Spawn {
        /// the binary
        binary: PathBuf,
        /// why
        #[source]
        source: std::io::Error,
    },
    /// It printed nothing on stdout.
    #[error("tollgate-load printed no summary ({0})")]
    NoSummary(ExitStatus),
    /// Its last line is not a `--json` summary.
    #[error("tollgate-load's summary ({status}): {line}")]
    BadSummary {
        /// how it exited
        status: ExitStatus,
        /// the last line of its stdout
        line: String,
        /// why it did not parse
        #[source]
        source: serde_json::Error,
    },
}

/// One finished run.
#[derive(Debug)]
pub struct LoadRun {
    /// 0: every verdict and `--check` agreed; 3: some did not (see `tollgate-load --help`).
    pub status: ExitStatus,
    /// The last line of its stdout.
    pub summary: Summary,
}

/// The `tollgate-load` binary built next to the running executable.
pub fn sibling_binary() -> Result<PathBuf, ChildError> {
    let exe = std::env::current_exe().map_err(ChildError::CurrentExe)?;
    exe.parent()
        .map(|dir| dir.join("tollgate-load"))
        .filter(|path| path.is_file())
        .ok_or(ChildError::NoSibling(exe))
}

/// Runs `binary ARGS --json` with stderr (progress, errors) passed through.
pub fn run(binary: &Path, args: &[String]) -> Result<LoadRun, ChildError> {
    let output = Command::new(binary)
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| ChildError::Spawn {
            binary: binary.to_owned(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout
        .lines()
        .last()
        .ok_or(ChildError::NoSummary(output.status))?;
    let summary = serde_json::from_str(last).map_err(|source| ChildError::BadSummary {
        status: output.status,
        line: last.to_owned(),
        source,
    })?;
    Ok(LoadRun {
        status: output.status,
        summary,
    })
}
