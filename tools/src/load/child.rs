//! `tollgate-load` run as a child process and its `--json` summary read back: how `tollgate bench
//! e2e` and `tollgate demo` drive load, so the generator's CPU and memory never count as the
//! server's and its progress bar reaches the terminal.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::Context;

use super::Summary;

/// One finished run.
#[derive(Debug)]
pub struct LoadRun {
    /// 0: every verdict and `--check` agreed; 3: some did not (see `tollgate-load --help`).
    pub status: ExitStatus,
    /// The last line of its stdout.
    pub summary: Summary,
}

/// The `tollgate-load` binary built next to the running executable.
pub fn sibling_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    exe.parent()
        .map(|dir| dir.join("tollgate-load"))
        .filter(|path| path.is_file())
        .with_context(|| {
            format!(
                "no tollgate-load beside {}; build both binaries",
                exe.display()
            )
        })
}

/// Runs `binary ARGS --json` with stderr (progress, errors) passed through.
pub fn run(binary: &Path, args: &[String]) -> anyhow::Result<LoadRun> {
    let output = Command::new(binary)
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout
        .lines()
        .last()
        .with_context(|| format!("tollgate-load printed no summary ({})", output.status))?;
    let summary = serde_json::from_str(last)
        .with_context(|| format!("tollgate-load's summary ({}): {last}", output.status))?;
    Ok(LoadRun {
        status: output.status,
        summary,
    })
}
