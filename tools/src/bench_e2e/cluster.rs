//! `--cluster-rounds`: the price of the log. The same full-speed workload against the standalone
//! server and a one-node cluster (`tollgate serve --cluster` on `--cluster-nats-servers` local
//! `nats-server`s, one by default, every resource with as many replicas), by turns; then the two at one paced rate for their ack latency;
//! then where a receipt's CPU goes on each (per thread, by what its name says it does: see
//! [`CpuPerReceipt`]), in `nats-server`, and how many bytes a receipt takes in the log. The
//! node gets an untimed warm-up run first, as the standalone server had its earlier runs.

use std::cell::RefCell;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Serialize;
use tollgate_load::Summary;
use tollgate_load::stats::LatencyMs;

use super::{BenchE2eArgs, by_turns, chainless_server_args, run_load};
use crate::proc_stat::{TICKS_PER_S, cpu_ticks};
use crate::serve::PARTITIONS_OWNED;
use crate::serve::process::ServerProcess;

/// How long the one-node cluster gets to take every partition's lease.
const OWN_ALL_DEADLINE: Duration = Duration::from_secs(60);

/// The cluster side of the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterCost {
    /// Rounds (one full-speed run on each server per round).
    pub rounds: u32,
    /// Partitions of the one-node cluster (all owned by its one node).
    pub partitions: u32,
    /// Mean full-speed rate of the standalone server.
    pub standalone_receipts_per_s: f64,
    /// Mean full-speed rate of the one-node cluster.
    pub cluster_receipts_per_s: f64,
    /// The second divided by the first.
    pub ratio: f64,
    /// Mean over the rounds of the full-speed runs' p99 ack latency, standalone.
    pub standalone_full_speed_p99_ms: f64,
    /// The same on the cluster.
    pub cluster_full_speed_p99_ms: f64,
    /// Both at one offered rate (`--paced-pct` of the cluster's rate), unless skipped.
    pub paced: Option<PacedPair>,
    /// CPU per receipt over the full-speed runs, standalone.
    pub standalone_cpu: CpuPerReceipt,
    /// CPU per receipt over the full-speed runs, on the cluster node.
    pub cluster_cpu: CpuPerReceipt,
    /// `nats-server`s (and replicas of every resource).
    pub nats_servers: usize,
    /// CPU per receipt of all the `nats-server`s together over the cluster's full-speed runs.
    pub nats_server_cpu_us_per_receipt: f64,
    /// Bytes the receipts log stores per receipt published to it over the measured runs: the
    /// receipts, each part's header and its message headers (message id), and JetStream's own
    /// per-message overhead; storage, not the wire (the asks, answers and publish acks are not
    /// in it).
    pub log_bytes_per_receipt: f64,
    /// Receipts per log message (one message per partition part of a client batch).
    pub receipts_per_log_message: f64,
}

/// Ack latency of both at the same offered rate.
#[derive(Clone, Debug, Serialize)]
pub struct PacedPair {
    /// Receipts per second offered to each.
    pub offered_receipts_per_s: f64,
    /// The standalone server's ack latency.
    pub standalone_ack_latency_ms: LatencyMs,
    /// The cluster node's.
    pub cluster_ack_latency_ms: LatencyMs,
}

/// Microseconds of CPU per receipt, by thread, from the process's threads. The names say what
/// a thread does, not which role it serves: see each field.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct CpuPerReceipt {
    /// Every thread of the process, those that ended during the runs included.
    pub total: f64,
    /// The signature verification pool (`tollgate-verify-N`): the ingest role.
    pub verify_pool: f64,
    /// The engines' verify stages (`tollgate-stage` and its verifying threads
    /// `tollgate-stage1`, `tollgate-stage2`): standalone, the ingest side's grouping and parsing
    /// that drives the pool, and the verification of a group of one chunk; in a cluster, one per
    /// partition ledger, passing the log's already verified parts to the writer (the owner
    /// role).
    pub stage: f64,
    /// Ledger writers and their syncers, archive and seal threads, RocksDB's background threads:
    /// the owner role.
    pub ledgers: f64,
    /// The tokio runtime and its blocking pool (`tollgate-io`): sockets and the protocol, and in
    /// a cluster also splitting batches, publishing, the log consumers and the asks' outcome
    /// reads (both roles).
    pub runtime: f64,
    /// Everything else: the main thread, and threads that ended during the runs.
    pub other: f64,
}

/// What a thread does, by its name (Linux keeps its first 15 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    VerifyPool,
    Stage,
    Ledgers,
    Runtime,
    Other,
}

impl Work {
    fn of(name: &str) -> Work {
        match name {
            "tollgate-verify" => Work::VerifyPool,
            "tollgate-io" => Work::Runtime,
            name if name.starts_with("tollgate-stage") => Work::Stage,
            name if name.starts_with("tollgate-ledger")
                || name.starts_with("tollgate-archiv")
                || name.starts_with("tollgate-seal")
                || name.starts_with("rocksdb:") =>
            {
                Work::Ledgers
            }
            _ => Work::Other,
        }
    }
}

/// A process's CPU ticks, in all and per live thread.
#[derive(Clone, Debug, Default)]
struct Snapshot {
    total: u64,
    threads: std::collections::HashMap<u32, (Work, u64)>,
}

impl Snapshot {
    fn of(pid: u32) -> anyhow::Result<Self> {
        let mut snapshot = Snapshot {
            total: cpu_ticks(&format!("/proc/{pid}/stat"))?.1,
            ..Snapshot::default()
        };
        let tasks = format!("/proc/{pid}/task");
        for task in std::fs::read_dir(&tasks).with_context(|| format!("listing {tasks}"))? {
            let task = task?;
            let Some(tid) = task.file_name().to_str().and_then(|tid| tid.parse().ok()) else {
                continue;
            };
            // A thread may end between the listing and the read: it is in `total` then.
            let Ok((name, used)) = cpu_ticks(&task.path().join("stat").display().to_string())
            else {
                continue;
            };
            snapshot.threads.insert(tid, (Work::of(&name), used));
        }
        Ok(snapshot)
    }

    /// The ticks spent between `before` and this snapshot, per kind of work: per thread, so a
    /// thread that started in between counts from zero, and one that ended in between leaves
    /// its share in `total` alone (so in `other`).
    fn since(&self, before: &Snapshot) -> Ticks {
        let mut ticks = Ticks {
            total: self.total.saturating_sub(before.total),
            ..Ticks::default()
        };
        for (tid, (work, used)) in &self.threads {
            let earlier = before.threads.get(tid).map_or(0, |(_, used)| *used);
            let spent = used.saturating_sub(earlier);
            match work {
                Work::VerifyPool => ticks.verify_pool += spent,
                Work::Stage => ticks.stage += spent,
                Work::Ledgers => ticks.ledgers += spent,
                Work::Runtime => ticks.runtime += spent,
                Work::Other => {}
            }
        }
        ticks
    }
}

/// Ticks of CPU by kind of work.
#[derive(Clone, Copy, Debug, Default)]
struct Ticks {
    total: u64,
    verify_pool: u64,
    stage: u64,
    ledgers: u64,
    runtime: u64,
}

impl Ticks {
    fn plus(self, other: Ticks) -> Ticks {
        Ticks {
            total: self.total + other.total,
            verify_pool: self.verify_pool + other.verify_pool,
            stage: self.stage + other.stage,
            ledgers: self.ledgers + other.ledgers,
            runtime: self.runtime + other.runtime,
        }
    }

    fn per_receipt(self, receipts: f64) -> CpuPerReceipt {
        let us = |ticks: u64| micros(ticks) / receipts;
        let classified = self.verify_pool + self.stage + self.ledgers + self.runtime;
        CpuPerReceipt {
            total: us(self.total),
            verify_pool: us(self.verify_pool),
            stage: us(self.stage),
            ledgers: us(self.ledgers),
            runtime: us(self.runtime),
            other: us(self.total.saturating_sub(classified)),
        }
    }
}

/// One local `nats-server` with JetStream and its monitoring port, killed when dropped.
struct NatsServer {
    child: Child,
    url: String,
    monitor: SocketAddr,
}

/// `count` local `nats-server`s with JetStream, routed to each other when more than one, so the
/// cluster's resources can have `count` replicas.
struct NatsServers(Vec<NatsServer>);

impl NatsServers {
    fn start(dir: &Path, count: usize) -> anyhow::Result<Self> {
        let binary = tollgate_cluster::nats_server_binary().context(
            "nats-server not found on PATH or in /usr/sbin: scripts/bootstrap.sh installs \
             Debian's nats-server package",
        )?;
        // All held at once so none repeats; released just before the servers bind them.
        let listeners = (0..3 * count)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()?;
        let ports = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<Result<Vec<_>, _>>()?;
        drop(listeners);
        let routes: Vec<String> = ports[2 * count..]
            .iter()
            .map(|route| format!("nats://{route}"))
            .collect();
        let mut servers = Vec::with_capacity(count);
        for i in 0..count {
            let (client, monitor, route) = (ports[i], ports[count + i], ports[2 * count + i]);
            let log = std::fs::File::create(dir.join(format!("nats-server-{i}.log")))?;
            let mut command = Command::new(&binary);
            command
                .args(["-a", "127.0.0.1", "-p", &client.port().to_string()])
                .args(["-m", &monitor.port().to_string(), "-n", &format!("n{i}")])
                .args(["-js", "-sd"])
                .arg(dir.join(format!("nats-store-{i}")));
            if count > 1 {
                command
                    .args(["--cluster_name", "tollgate-bench", "--cluster"])
                    .arg(format!("nats://{route}"))
                    .args(["--routes", &routes.join(",")]);
            }
            let child = command
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            servers.push(NatsServer {
                child,
                url: format!("nats://{client}"),
                monitor,
            });
        }
        let servers = NatsServers(servers);
        // Healthy, and once clustered, agreeing on a JetStream meta leader.
        let deadline = Instant::now() + Duration::from_secs(60);
        for server in &servers.0 {
            loop {
                let ready = server.monitoring("jsz").is_ok_and(|jsz| {
                    count == 1
                        || jsz["meta_cluster"]["leader"]
                            .as_str()
                            .is_some_and(|l| !l.is_empty())
                });
                if ready {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "nats-server {} not ready in 60 s (logs in {})",
                        server.url,
                        dir.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(servers)
    }

    fn urls(&self) -> String {
        self.0
            .iter()
            .map(|server| server.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn pids(&self) -> Vec<u32> {
        self.0.iter().map(|server| server.child.id()).collect()
    }

    /// Messages and bytes of one replica of the stream `name`.
    fn stream_state(&self, name: &str) -> anyhow::Result<(u64, u64)> {
        self.0
            .iter()
            .find_map(|server| server.stream_state(name).ok())
            .with_context(|| format!("no nats-server lists the stream {name}"))
    }
}

impl NatsServer {
    /// A monitoring endpoint's JSON.
    fn monitoring(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let url = format!("http://{}/{path}", self.monitor);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let response = reqwest::get(&url).await?.error_for_status()?;
            anyhow::Ok(response.json().await?)
        })
    }

    /// Messages and bytes the stream `name` holds here.
    fn stream_state(&self, name: &str) -> anyhow::Result<(u64, u64)> {
        let jsz = self.monitoring("jsz?streams=true")?;
        let stream = jsz["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
            .find(|stream| stream["name"] == name)
            .with_context(|| format!("nats-server does not list the stream {name}"))?;
        let count = |field: &str| {
            stream["state"][field]
                .as_u64()
                .with_context(|| format!("stream {name}: no state.{field}"))
        };
        Ok((count("messages")?, count("bytes")?))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

/// Starts the one-node cluster beside `standalone` with its files in `dir`, runs the
/// comparison, and stops it.
pub(super) fn cluster_cost(
    exe: &Path,
    load_binary: &Path,
    standalone: &ServerProcess,
    args: &BenchE2eArgs,
    threads: usize,
    dir: &Path,
) -> anyhow::Result<ClusterCost> {
    std::fs::create_dir_all(dir)?;
    let replicas = args.cluster_nats_servers.max(1);
    let nats = NatsServers::start(dir, replicas)?;
    let config = dir.join("cluster.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nstream_replicas = {replicas}\nmeta_replicas = {replicas}\n\
             lease_replicas = {replicas}\ncheckpoint_replicas = {replicas}\n\
             summary_replicas = {replicas}\n"
        ),
    )?;
    let mut node_args = chainless_server_args(&dir.join("data"), threads);
    let partitions = args.cluster_partitions;
    node_args.extend(
        [
            ("--config", config.display().to_string()),
            ("--cluster", nats.urls()),
            ("--node-id", "bench".to_owned()),
            ("--partitions", partitions.to_string()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_owned(), value]),
    );
    let node = ServerProcess::start(exe, &node_args, Some(&dir.join("node.log")), &[])?;
    wait_owning(&node, partitions)?;
    // The standalone server is warm from the runs before; this untimed run warms the node's
    // partition ledgers and the log alike.
    let warm_up = BenchE2eArgs {
        receipts: (args.receipts / 10).max(1),
        ..args.clone()
    };
    run_load(load_binary, &node, &warm_up, &[], false)?;
    let stream = tollgate_cluster::ClusterConfig::default().stream_name;
    let log_before = nats.stream_state(&stream)?;

    let standalone_tally = RefCell::new(Tally::default());
    let cluster_tally = RefCell::new(Tally::default());
    let (standalone_rate, cluster_rate) = by_turns(
        args.cluster_rounds,
        "cluster (standalone, one-node cluster)",
        || {
            standalone_tally
                .borrow_mut()
                .run(standalone.pid(), &[], || {
                    run_load(load_binary, standalone, args, &[], true)
                })
        },
        || {
            cluster_tally
                .borrow_mut()
                .run(node.pid(), &nats.pids(), || {
                    run_load(load_binary, &node, args, &[], false)
                })
        },
    )?;
    let (standalone_tally, cluster_tally) =
        (standalone_tally.into_inner(), cluster_tally.into_inner());
    let rounds = f64::from(args.cluster_rounds);

    let paced = match args.paced_pct {
        0 => None,
        pct => {
            let rate = cluster_rate * f64::from(pct) / 100.0;
            let run_args = BenchE2eArgs {
                receipts: ((rate * args.offered_secs as f64) as u64).max(1),
                ..args.clone()
            };
            let pace = ["--rate".to_owned(), format!("{rate:.0}")];
            let standalone_run = run_load(load_binary, standalone, &run_args, &pace, true)?;
            let cluster_run = run_load(load_binary, &node, &run_args, &pace, false)?;
            let pair = PacedPair {
                offered_receipts_per_s: rate,
                standalone_ack_latency_ms: standalone_run.ack_latency_ms,
                cluster_ack_latency_ms: cluster_run.ack_latency_ms,
            };
            Some((pair, cluster_run.sent))
        }
    };
    // Every receipt sent to the node was valid (the runs check it), so each was published once.
    let published = (cluster_tally.receipts + paced.as_ref().map_or(0, |p| p.1)) as f64;
    let paced = paced.map(|(pair, _)| pair);
    let log_after = nats.stream_state(&stream)?;
    let (messages, bytes) = (
        log_after.0.saturating_sub(log_before.0),
        log_after.1.saturating_sub(log_before.1),
    );
    ensure!(messages > 0, "the runs added nothing to the receipts log");
    let status = node.terminate(Duration::from_secs(60))?;
    ensure!(status.success(), "the cluster node exited with {status}");
    Ok(ClusterCost {
        rounds: args.cluster_rounds,
        partitions,
        standalone_receipts_per_s: standalone_rate,
        cluster_receipts_per_s: cluster_rate,
        ratio: cluster_rate / standalone_rate,
        standalone_full_speed_p99_ms: standalone_tally.p99_ms_sum / rounds,
        cluster_full_speed_p99_ms: cluster_tally.p99_ms_sum / rounds,
        paced,
        standalone_cpu: standalone_tally.cpu_per_receipt(),
        cluster_cpu: cluster_tally.cpu_per_receipt(),
        nats_servers: replicas,
        nats_server_cpu_us_per_receipt: micros(cluster_tally.nats_ticks)
            / cluster_tally.receipts as f64,
        log_bytes_per_receipt: bytes as f64 / published,
        receipts_per_log_message: published / messages as f64,
    })
}

/// What one side's full-speed runs added up to.
#[derive(Default)]
struct Tally {
    receipts: u64,
    p99_ms_sum: f64,
    ticks: Ticks,
    nats_ticks: u64,
}

impl Tally {
    /// Runs `load` against the process `pid` (and the `nats` servers'), adding what it cost.
    fn run(
        &mut self,
        pid: u32,
        nats: &[u32],
        load: impl FnOnce() -> anyhow::Result<Summary>,
    ) -> anyhow::Result<f64> {
        let nats_ticks = || -> anyhow::Result<u64> {
            nats.iter()
                .map(|pid| cpu_ticks(&format!("/proc/{pid}/stat")).map(|(_, t)| t))
                .sum()
        };
        let before = (Snapshot::of(pid)?, nats_ticks()?);
        let summary = load()?;
        self.ticks = self.ticks.plus(Snapshot::of(pid)?.since(&before.0));
        self.nats_ticks += nats_ticks()?.saturating_sub(before.1);
        self.receipts += summary.sent;
        self.p99_ms_sum += summary.ack_latency_ms.p99;
        Ok(summary.receipts_per_s)
    }

    fn cpu_per_receipt(&self) -> CpuPerReceipt {
        self.ticks.per_receipt(self.receipts as f64)
    }
}

/// Microseconds of CPU in `ticks`.
fn micros(ticks: u64) -> f64 {
    ticks as f64 / TICKS_PER_S * 1e6
}

/// Waits until `node` owns all `partitions`.
fn wait_owning(node: &ServerProcess, partitions: u32) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = Instant::now() + OWN_ALL_DEADLINE;
    loop {
        let owned = runtime.block_on(node.metric(PARTITIONS_OWNED))?;
        if owned == Some(f64::from(partitions)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the cluster node owns {owned:?} of {partitions} partitions after {OWN_ALL_DEADLINE:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
