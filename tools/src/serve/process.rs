//! A `tollgate serve` child process, for whoever must run the real server from outside: the
//! crash test kills it, the end-to-end bench measures its memory, the demo starts and stops it.
//!
//! The child logs JSON; its "tollgate ready" line names the addresses it bound, so callers can
//! ask for port 0 and never race another process for a fixed port.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process};
use tollgate_settle::chain::DeployedAddresses;

/// How long a child may take to open its ledger and catch up with the chain.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Log lines kept to explain a child that died before it was ready.
const TAIL_LINES: usize = 20;

/// Where a child keeps its data directory and log: the directory the user named (kept
/// afterwards, to look into), or a temporary one removed with this value.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    _temporary: Option<tempfile::TempDir>,
}

impl WorkDir {
    /// `given`, or a new temporary directory when there is none.
    pub fn given_or_temporary(given: Option<&Path>) -> std::io::Result<Self> {
        Ok(match given {
            Some(path) => Self {
                path: path.to_owned(),
                _temporary: None,
            },
            None => {
                let temporary = tempfile::tempdir()?;
                Self {
                    path: temporary.path().to_owned(),
                    _temporary: Some(temporary),
                }
            }
        })
    }

    /// The child's ledger directory.
    pub fn data(&self) -> PathBuf {
        self.path.join("data")
    }

    /// The child's log file.
    pub fn log(&self) -> PathBuf {
        self.path.join("server.log")
    }
}

/// The flags that run a child on a dev chain where `deployed` lives: settlement on, deposits
/// acted on at once (no confirmations), ports chosen by the kernel, the ledger in `data_dir`.
/// The operator key is not among them: it goes through the environment.
pub fn dev_chain_args(rpc_url: &str, deployed: &DeployedAddresses, data_dir: &Path) -> Vec<String> {
    [
        "--rpc-url",
        rpc_url,
        "--contract",
        &deployed.settlement.to_string(),
        "--chain-id",
        &deployed.chain_id.to_string(),
        "--start-block",
        &deployed.block.to_string(),
        "--confirmations",
        "0",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--data-dir",
        &data_dir.display().to_string(),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// A running `tollgate serve`. Dropping it kills the child.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    /// Where fleets connect.
    pub listen: SocketAddr,
    /// The HTTP API.
    pub http: SocketAddr,
}

enum LogEvent {
    Ready {
        listen: SocketAddr,
        http: SocketAddr,
    },
    Line(String),
}

impl ServerProcess {
    /// Starts `binary serve ARGS --log-format json` with `env` added to its environment, and
    /// waits until it is ready. Its log lines are appended to `log_file` when given.
    pub fn start(
        binary: &Path,
        args: &[String],
        log_file: Option<&Path>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .envs(env.iter().copied())
            .arg("serve")
            .args(args)
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().context("child stderr")?;
        let log = match log_file {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?,
            ),
            None => None,
        };
        let (events, ready) = mpsc::sync_channel(TAIL_LINES);
        std::thread::spawn(move || forward_log(BufReader::new(stderr), log, &events));

        let deadline = Instant::now() + READY_TIMEOUT;
        let mut tail = std::collections::VecDeque::with_capacity(TAIL_LINES);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready.recv_timeout(left) {
                Ok(LogEvent::Ready { listen, http }) => {
                    return Ok(ServerProcess {
                        child,
                        listen,
                        http,
                    });
                }
                Ok(LogEvent::Line(line)) => {
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
                Err(_) => {
                    // Timed out, or stderr closed: the child died.
                    drop(child.kill());
                    let status = child.wait().ok();
                    let tail: Vec<String> = tail.into_iter().collect();
                    bail!(
                        "tollgate serve was not ready ({}); last log lines:\n{}",
                        status.map_or_else(|| "timed out".to_owned(), |s| s.to_string()),
                        tail.join("\n")
                    );
                }
            }
        }
    }

    /// The child's process id.
    /// The value of the unlabelled series `name` in the child's `/metrics` (a counter, a gauge, a
    /// summary's `_count` or `_sum`); `None` when the child does not show it.
    pub async fn metric(&self, name: &str) -> anyhow::Result<Option<f64>> {
        let url = format!("http://{}/metrics", self.http);
        let text = reqwest::get(&url)
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("GET {url}"))?
            .text()
            .await
            .with_context(|| format!("GET {url}"))?;
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
            .with_context(|| format!("{url} is not Prometheus text"))?;
        Ok(scrape
            .samples
            .into_iter()
            .find(|sample| sample.metric == name && sample.labels.is_empty())
            .and_then(|sample| match sample.value {
                prometheus_parse::Value::Counter(value)
                | prometheus_parse::Value::Gauge(value)
                | prometheus_parse::Value::Untyped(value) => Some(value),
                _ => None,
            }))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory of the child so far (Linux `VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .context("reading the child's /proc status")?;
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .context("no VmHWM in /proc status")?;
        let kib: u64 = line
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .context("VmHWM is not a number")?;
        Ok(kib * 1024)
    }

    /// SIGTERM, then waits for the clean shutdown (acks flushed, ledger fsynced) up to `timeout`.
    pub fn terminate(mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::TERM)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for the child")? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("tollgate serve did not stop within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the crash the ledger must survive. Returns once the child is gone.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.signal(Signal::KILL)?;
        self.child.wait().context("reaping the killed child")?;
        Ok(())
    }

    fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let raw = i32::try_from(self.child.id()).context("pid out of range")?;
        let pid = Pid::from_raw(raw).context("pid 0")?;
        kill_process(pid, signal).with_context(|| format!("sending {signal:?}"))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            drop(self.child.kill());
            drop(self.child.wait());
        }
    }
}

/// Copies the child's log to `log` and reports its lines until it is ready, then only copies.
fn forward_log(
    stderr: impl BufRead,
    mut log: Option<std::fs::File>,
    events: &mpsc::SyncSender<LogEvent>,
) {
    let mut waiting = true;
    for line in stderr.lines() {
        let Ok(line) = line else { return };
        if let Some(file) = log.as_mut() {
            drop(writeln!(file, "{line}"));
        }
        if waiting {
            let event = match ready_addresses(&line) {
                Some((listen, http)) => {
                    waiting = false;
                    LogEvent::Ready { listen, http }
                }
                None => LogEvent::Line(line),
            };
            if events.send(event).is_err() {
                waiting = false;
            }
        }
    }
}

fn ready_addresses(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    if fields.get("message")?.as_str()? != super::READY_MESSAGE {
        return None;
    }
    let address = |name: &str| fields.get(name)?.as_str()?.parse().ok();
    Some((address("listen")?, address("http")?))
}
