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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_workload_file_holds_each_receipt_as_signed() {
        let workload = Workload::generate(5, 3, 1.1, 0.0, 2).expect("generates");
        let file = tempfile::NamedTempFile::new().expect("temp file");
        write_workload(&workload, file.path()).expect("writes");
        let bytes = std::fs::read(file.path()).expect("reads");
        let messages = workload.signing_bytes().expect("signing bytes");
        let message_len = messages[0].len();
        assert_eq!(&bytes[..8], b"TGSIMD1\n");
        assert_eq!(bytes[8..12], 5u32.to_le_bytes());
        assert_eq!(
            bytes[12..16],
            u32::try_from(message_len).expect("fits").to_le_bytes()
        );
        let views = workload.views().expect("views");
        for (i, record) in bytes[16..].chunks_exact(96 + message_len).enumerate() {
            assert_eq!(record[..32], views[i].payer().0);
            assert_eq!(record[32..96], views[i].signature());
            assert_eq!(record[96..], messages[i]);
        }
    }

    /// The protocol against a stand-in child: its arguments, `ready`, one count per `pass`, and
    /// a clear error once it is gone.
    #[test]
    fn a_child_answers_each_pass_and_its_end_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("child.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$2 $3 $4\" = \"2 64 7\" ] || exit 1\necho ready 3\n\
             read line && echo 3\nread line && echo 4\n",
        )
        .expect("script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let (child, first) =
            SimdChild::start(&script, Path::new("workload"), 2, 64, 7).expect("starts");
        assert_eq!(first, 3);
        assert_eq!(child.pass().expect("a count"), 3);
        assert_eq!(child.pass().expect("a count"), 4);
        assert!(child.pass().is_err(), "the child has ended");
    }
}
