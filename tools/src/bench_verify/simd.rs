//! The `ed25519-simd` contender: a child process (`contenders/ed25519-simd`, built with AVX-512
//! IFMA enabled at compile time, which must never reach `tollgate`) that verifies the workload
//! written to a file each time it is asked, so its passes interleave with the in-process ones.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context, bail};

use super::Workload;

/// Writes what the child reads: `TGSIMD1\n`, the count and the message length (u32 LE), then per
/// receipt the signer's key, the signature and the exact message it signed.
pub fn write_workload(workload: &Workload, path: &Path) -> anyhow::Result<()> {
    let views = workload.views()?;
    let messages = workload.signing_bytes()?;
    let message_len = messages.first().map_or(0, |message| message.len());
    let mut bytes = Vec::with_capacity(16 + views.len() * (96 + message_len));
    bytes.extend_from_slice(b"TGSIMD1\n");
    bytes.extend_from_slice(&u32::try_from(views.len())?.to_le_bytes());
    bytes.extend_from_slice(&u32::try_from(message_len)?.to_le_bytes());
    for (view, message) in views.iter().zip(&messages) {
        bytes.extend_from_slice(&view.payer().0);
        bytes.extend_from_slice(&view.signature());
        bytes.extend_from_slice(message);
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// A running `tollgate-bench-simd`, killed when dropped.
pub struct SimdChild {
    child: Child,
    pipes: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
}

impl SimdChild {
    /// Starts `binary` on the workload at `path` with `threads` verifiers taking `batch` inputs
    /// per call and a key cache of `cache` entries each (0: none). Returns once its untimed
    /// first pass is done, with the count that pass rejected.
    pub fn start(
        binary: &Path,
        path: &Path,
        threads: usize,
        batch: usize,
        cache: usize,
    ) -> anyhow::Result<(Self, usize)> {
        let mut child = Command::new(binary)
            .arg(path)
            .args([threads, batch, cache].map(|n| n.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdin = child.stdin.take().context("the child's stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("the child's stdout")?);
        let started = Self {
            child,
            pipes: Mutex::new((stdin, stdout)),
        };
        let first = started.answer()?;
        let rejected = first
            .strip_prefix("ready ")
            .with_context(|| format!("{} answered {first:?} to its start", binary.display()))?
            .parse()
            .context("the child's first count")?;
        Ok((started, rejected))
    }

    /// One pass over every receipt: how many it rejected.
    pub fn pass(&self) -> anyhow::Result<usize> {
        {
            let mut pipes = self.lock()?;
            pipes.0.write_all(b"pass\n")?;
            pipes.0.flush()?;
        }
        self.answer()?
            .parse()
            .context("the child's count is not a number")
    }

    fn answer(&self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.lock()?.1.read_line(&mut line)? == 0 {
            bail!("tollgate-bench-simd ended (its error is above)");
        }
        Ok(line.trim_end().to_owned())
    }

    fn lock(
        &self,
    ) -> anyhow::Result<std::sync::MutexGuard<'_, (ChildStdin, BufReader<ChildStdout>)>> {
        self.pipes
            .lock()
            .map_err(|_| anyhow::anyhow!("a pass to the simd child panicked"))
    }
}

impl Drop for SimdChild {
    fn drop(&mut self) {
        // Ends it whatever it is doing; it holds nothing worth a clean exit.
        drop(self.child.kill());
        drop(self.child.wait());
    }
}
