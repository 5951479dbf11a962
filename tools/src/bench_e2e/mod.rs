//! `tollgate bench e2e`: the durable end-to-end rate next to the verify-only ceiling, measured in
//! one run on one machine so their ratio means something on any hardware.
//!
//! 1. The ceiling: the workload's receipts presigned in process and verified by Tollgate's
//!    [`VerifyPool`] on every core, nothing else running.
//! 2. The real thing: `tollgate serve` (a child process, fsync on, chainless) fed over loopback
//!    by `tollgate-load --presign`, which checks every verdict and the server's balances.
//! 3. A paced run at a fraction of the rate just measured, for the ack latency a deployment sees
//!    when it is not saturated.
//! 4. With `--overload`, four times that rate from four times the connections: the server's
//!    memory must stay bounded (it stops reading sockets) and every verdict must still be right.
//! 5. The receipt archive's cost: a second server whose data directory is created without the
//!    archive takes the same load, alternating with the first for `--archive-rounds` rounds;
//!    both rates, their ratio and the archive's bytes per million receipts are reported.
//! 6. With `--session-rounds R` and `--sessions-per-payer N`: what delegating to session keys
//!    costs. The same full-speed workload signed by the payers' own keys and by N session keys
//!    per payer, alternating on the first server for R rounds; both rates and their ratio.
//!
//! 7. With `--cluster-rounds R`: the price of the log (issue 19). The same full-speed workload
//!    against the first server and a one-node cluster on a local `nats-server`, by turns; both
//!    at one paced rate; CPU per receipt by role and in `nats-server`; bytes per receipt on the
//!    log (module `cluster`).
//!
//! Receipts per fsync come from the server's own `/metrics`; its peak RSS from `/proc`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rayon::prelude::*;
use serde::Serialize;
use tollgate_engine::{Address, Domain, ReceiptBatch};
use tollgate_load::stats::LatencyMs;
use tollgate_load::{Funds, Planner, Sessions, Summary, Workload, child};

use crate::bench_verify::{Backends, tollgate_pool};
use crate::serve::process::{ServerProcess, WorkDir};

mod cluster;

pub use cluster::{ClusterCost, CpuPerReceipt, PacedPair};

/// The generator's replay window bound; nothing stale is injected, so only its floor matters.
const WINDOW_NONCES: u64 = 4096;

/// Flags of `tollgate bench e2e`. Defaults are the workload of issue 8.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchE2eArgs {
    /// Receipts in the full-speed run (and in the verify-only pass).
    #[arg(long, default_value_t = 1_000_000)]
    pub receipts: u64,
    /// Distinct payers.
    #[arg(long, default_value_t = 10_000)]
    pub payers: u32,
    /// Payees.
    #[arg(long, default_value_t = 16)]
    pub payees: u32,
    /// Zipf exponent of payer popularity.
    #[arg(long, default_value_t = 1.1)]
    pub zipf: f64,
    /// Generator connections.
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
    /// Receipts per batch.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Batches in flight per connection.
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// Seed of the workload.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Sign every receipt with one of N session keys per payer (granted before each run)
    /// instead of the payer's own key; 0 signs with payer keys. The same workload either way, for
    /// comparing the two rates.
    #[arg(long, default_value_t = 0)]
    pub sessions_per_payer: u32,
    /// The paced run offers this percentage of the full-speed rate (0 skips it).
    #[arg(long, default_value_t = 80)]
    pub paced_pct: u32,
    /// Length of the paced run, in seconds of offered load.
    #[arg(long, default_value_t = 10)]
    pub offered_secs: u64,
    /// Length of the overload run, in seconds of offered load (the server takes about four
    /// times as long to work through it).
    #[arg(long, default_value_t = 3)]
    pub overload_secs: u64,
    /// Also offer 4x the full-speed rate from 4x the connections, and report the server's
    /// memory: back-pressure must keep it bounded.
    #[arg(long)]
    pub overload: bool,
    /// Verification threads, for the ceiling and the server (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Rounds of the archive comparison: each runs the full-speed load once against a server
    /// without the archive, then once against the one with it (0 skips it).
    #[arg(long, default_value_t = 2)]
    pub archive_rounds: u32,
    /// Rounds of the session comparison (needs `--sessions-per-payer`): each runs the
    /// full-speed load signed by payer keys, then signed by session keys (0 skips it).
    #[arg(long, default_value_t = 0)]
    pub session_rounds: u32,
    /// Rounds of the cluster comparison: each runs the full-speed load once against the first
    /// server, then once against a one-node cluster (`tollgate serve --cluster` on a local
    /// `nats-server`, every resource one replica) started beside it (0 skips it).
    #[arg(long, default_value_t = 0)]
    pub cluster_rounds: u32,
    /// Partitions of that one-node cluster.
    #[arg(long, default_value_t = 16)]
    pub cluster_partitions: u32,
    /// `nats-server`s under it, clustered on loopback when more than one; every resource gets
    /// as many replicas (3 measures the R3 log's price on this machine).
    #[arg(long, default_value_t = 1)]
    pub cluster_nats_servers: usize,
    /// Keep the server's data directory and log here instead of a temporary directory.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A run offering a fixed rate, as a percentage of the full-speed rate.
#[derive(Clone, Debug, Serialize)]
pub struct Offered {
    /// Percentage of the full-speed rate offered.
    pub offered_pct: u32,
    /// Generator connections.
    pub connections: u32,
    /// Receipts per second offered.
    pub offered_receipts_per_s: f64,
    /// Receipts per second acked.
    pub receipts_per_s: f64,
    /// Its ack latency, measured from when each batch was due (so queueing counts).
    pub ack_latency_ms: LatencyMs,
    /// The server's peak resident memory so far, MiB.
    pub server_peak_rss_mib: f64,
}

/// The receipt archive's cost, measured on two servers taking the same load by turns.
#[derive(Clone, Debug, Serialize)]
pub struct ArchiveCost {
    /// Rounds (one run on each server per round).
    pub rounds: u32,
    /// Mean durable rate of the server with the archive.
    pub with_archive_receipts_per_s: f64,
    /// Mean durable rate of the server without it.
    pub without_archive_receipts_per_s: f64,
    /// The first divided by the second.
    pub ratio: f64,
    /// The archive's bytes (files and live memtables) per million receipts it holds, from the
    /// server's `tollgate_archive_bytes` and `tollgate_archive_receipts`.
    pub bytes_per_million_receipts: f64,
}

/// What signing by session keys costs, measured by turns on one server.
#[derive(Clone, Debug, Serialize)]
pub struct SessionCost {
    /// Rounds (one run of each signing per round).
    pub rounds: u32,
    /// Session keys per payer in the session-signed runs.
    pub sessions_per_payer: u32,
    /// Mean durable rate, receipts signed by the payers' own keys.
    pub payer_keys_receipts_per_s: f64,
    /// Mean durable rate, receipts signed by session keys (every one checked against its grant).
    pub session_keys_receipts_per_s: f64,
    /// The second divided by the first.
    pub ratio: f64,
}

/// Everything the benchmark measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Receipts in the full-speed run.
    pub receipts: u64,
    /// Payers.
    pub payers: u32,
    /// Session keys per payer signing the receipts (0: the payers' own keys).
    pub sessions_per_payer: u32,
    /// Zipf exponent.
    pub zipf: f64,
    /// Connections.
    pub connections: u32,
    /// Cores the process may use.
    pub cores: usize,
    /// The curve arithmetic in use.
    pub backend: Backends,
    /// Verify-only ceiling on every core.
    pub verify_ceiling_receipts_per_s: f64,
    /// Durable end-to-end rate (fsync before ack, verdicts checked).
    pub e2e_receipts_per_s: f64,
    /// The two above divided.
    pub e2e_vs_verify_ceiling: f64,
    /// Ack latency of the full-speed run.
    pub ack_latency_ms: LatencyMs,
    /// Receipts made durable per RocksDB sync write, from the server's metrics.
    pub receipts_per_fsync: f64,
    /// The paced run, unless skipped.
    pub paced: Option<Offered>,
    /// The server's peak resident memory over the full-speed and paced runs, MiB.
    pub server_peak_rss_mib: f64,
    /// The overload run, when asked for.
    pub overload: Option<Offered>,
    /// The archive comparison, unless skipped.
    pub archive: Option<ArchiveCost>,
    /// The session-key comparison, unless skipped.
    pub sessions: Option<SessionCost>,
    /// The one-node cluster comparison, unless skipped.
    pub cluster: Option<ClusterCost>,
}

/// Runs the benchmark and prints the report.
pub fn run(args: &BenchE2eArgs) -> anyhow::Result<()> {
    print_report(&measure(args)?, args.json, print_text)
}

/// Prints a bench's report: one JSON object with `json`, else as `text` writes it.
pub(crate) fn print_report<R: Serialize>(
    report: &R,
    json: bool,
    text: fn(&R),
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        text(report);
    }
    Ok(())
}

/// Runs the benchmark.
pub fn measure(args: &BenchE2eArgs) -> anyhow::Result<Report> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = args.threads.unwrap_or(cores);
    let exe = std::env::current_exe().context("locating the tollgate binary")?;
    let load_binary = child::sibling_binary()?;

    let ceiling = verify_ceiling(args, threads)?;
    eprintln!("verify-only ceiling: {ceiling:.0} receipts/s on {threads} threads");

    let work_dir = WorkDir::given_or_temporary(args.work_dir.as_deref())?;
    let server_args = |data: &Path| chainless_server_args(data, threads);
    let log = work_dir.log();
    let server = ServerProcess::start(&exe, &server_args(&work_dir.data()), Some(&log), &[])?;
    let full = run_load(&load_binary, &server, args, &[], true)?;
    eprintln!("end to end: {:.0} receipts/s", full.receipts_per_s);
    let receipts_per_fsync = receipts_per_fsync(&server)?;

    let offered = |pct: u32, connections: u32, in_flight: usize, secs: u64| {
        let rate = full.receipts_per_s * f64::from(pct) / 100.0;
        let receipts = ((rate * secs as f64) as u64).max(1);
        let run_args = BenchE2eArgs {
            receipts,
            connections,
            in_flight,
            ..args.clone()
        };
        let summary = run_load(
            &load_binary,
            &server,
            &run_args,
            &["--rate".to_owned(), format!("{rate:.0}")],
            true,
        )?;
        anyhow::Ok(Offered {
            offered_pct: pct,
            connections,
            offered_receipts_per_s: rate,
            receipts_per_s: summary.receipts_per_s,
            ack_latency_ms: summary.ack_latency_ms,
            server_peak_rss_mib: mib(server.peak_rss_bytes()?),
        })
    };
    let paced = match args.paced_pct {
        0 => None,
        pct => Some(offered(
            pct,
            args.connections,
            args.in_flight,
            args.offered_secs,
        )?),
    };
    let peak_rss = server.peak_rss_bytes()?;
    // Four times the connections, each with twice the batches in flight, offering four times
    // what the server just managed: the server must push back through TCP, not buffer.
    let overload = if args.overload {
        eprintln!("overload: 4x the rate from 4x the connections");
        Some(offered(
            400,
            args.connections * 4,
            args.in_flight * 2,
            args.overload_secs,
        )?)
    } else {
        None
    };
    let archive = match args.archive_rounds {
        0 => None,
        rounds => {
            let data = work_dir.data().with_file_name("data-without-archive");
            let mut without_args = server_args(&data);
            without_args.extend(["--archive-receipts".to_owned(), "false".to_owned()]);
            let log = log.with_file_name("server-without-archive.log");
            let without = ServerProcess::start(&exe, &without_args, Some(&log), &[])?;
            let cost = archive_cost(&load_binary, &server, &without, args, rounds)?;
            let status = without.terminate(Duration::from_secs(60))?;
            ensure!(
                status.success(),
                "the server without archive exited with {status}"
            );
            Some(cost)
        }
    };
    let sessions = match (args.session_rounds, args.sessions_per_payer) {
        (0, _) => None,
        (_, 0) => bail!("--session-rounds needs --sessions-per-payer"),
        (rounds, per_payer) => {
            let payer_signed = BenchE2eArgs {
                sessions_per_payer: 0,
                ..args.clone()
            };
            let (payer_rate, session_rate) = by_turns(
                rounds,
                "session",
                || Ok(run_load(&load_binary, &server, &payer_signed, &[], true)?.receipts_per_s),
                || Ok(run_load(&load_binary, &server, args, &[], true)?.receipts_per_s),
            )?;
            Some(SessionCost {
                rounds,
                sessions_per_payer: per_payer,
                payer_keys_receipts_per_s: payer_rate,
                session_keys_receipts_per_s: session_rate,
                ratio: session_rate / payer_rate,
            })
        }
    };
    let cluster = match args.cluster_rounds {
        0 => None,
        _ => Some(cluster::cluster_cost(
            &exe,
            &load_binary,
            &server,
            args,
            threads,
            &work_dir.data().with_file_name("cluster"),
        )?),
    };
    let status = server.terminate(Duration::from_secs(60))?;
    ensure!(status.success(), "the server exited with {status}");

    Ok(Report {
        receipts: args.receipts,
        payers: args.payers,
        sessions_per_payer: args.sessions_per_payer,
        zipf: args.zipf,
        connections: args.connections,
        cores,
        backend: Backends::detect(),
        verify_ceiling_receipts_per_s: ceiling,
        e2e_receipts_per_s: full.receipts_per_s,
        e2e_vs_verify_ceiling: full.receipts_per_s / ceiling,
        ack_latency_ms: full.ack_latency_ms,
        receipts_per_fsync,
        paced,
        server_peak_rss_mib: mib(peak_rss),
        overload,
        archive,
        sessions,
        cluster,
    })
}

/// The arguments of a chainless `tollgate serve` (fsync on, unknown payers accepted, ports
/// chosen by the system) with its ledger in `data`.
pub(crate) fn chainless_server_args(data: &Path, threads: usize) -> Vec<String> {
    vec![
        "--unknown-payers".to_owned(),
        "accept".to_owned(),
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--http".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--data-dir".to_owned(),
        data.display().to_string(),
        "--verify-threads".to_owned(),
        threads.to_string(),
    ]
}

/// Mean rates of `first` and `second`, run by turns for `rounds` rounds so drift of the machine
/// over the run falls on both alike. The order alternates (first then second in odd rounds,
/// second then first in even ones), so neither always runs right after the other has filled
/// the server's memtables and caches.
pub(crate) fn by_turns(
    rounds: u32,
    what: &str,
    first: impl Fn() -> anyhow::Result<f64>,
    second: impl Fn() -> anyhow::Result<f64>,
) -> anyhow::Result<(f64, f64)> {
    let (mut first_total, mut second_total) = (0.0, 0.0);
    for round in 1..=rounds {
        let (first_rate, second_rate) = if round % 2 == 1 {
            let first_rate = first()?;
            (first_rate, second()?)
        } else {
            let second_rate = second()?;
            (first()?, second_rate)
        };
        let order = if round % 2 == 1 {
            "first ran first"
        } else {
            "second ran first"
        };
        eprintln!(
            "{what} round {round} ({order}): {first_rate:.0} and {second_rate:.0} receipts/s"
        );
        first_total += first_rate;
        second_total += second_rate;
    }
    let rounds = f64::from(rounds);
    Ok((first_total / rounds, second_total / rounds))
}

/// The same full-speed load against `without` then `with` (the server with the archive), for
/// `rounds` rounds, so drift of the machine over the run falls on both alike.
fn archive_cost(
    load_binary: &Path,
    with: &ServerProcess,
    without: &ServerProcess,
    args: &BenchE2eArgs,
    rounds: u32,
) -> anyhow::Result<ArchiveCost> {
    let (without_rate, with_rate) = by_turns(
        rounds,
        "archive (without, with)",
        || Ok(run_load(load_binary, without, args, &[], true)?.receipts_per_s),
        || Ok(run_load(load_binary, with, args, &[], true)?.receipts_per_s),
    )?;
    // The gauges are refreshed after a write at most once a second, both from one read: their
    // ratio is right even when the last second of the run is not in them.
    let [bytes, receipts] = metrics(
        with,
        ["tollgate_archive_bytes", "tollgate_archive_receipts"],
    )?;
    ensure!(receipts > 0.0, "the server reports an empty archive");
    Ok(ArchiveCost {
        rounds,
        with_archive_receipts_per_s: with_rate,
        without_archive_receipts_per_s: without_rate,
        ratio: with_rate / without_rate,
        bytes_per_million_receipts: bytes / receipts * 1e6,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn workload(args: &BenchE2eArgs, receipts: u64) -> Workload {
    Workload {
        seed: args.seed,
        receipts: Some(receipts),
        payers: args.payers,
        payees: args.payees,
        zipf_exponent: args.zipf,
        amount: 1,
        bad_signature_pct: 0.0,
        replay_pct: 0.0,
        stale_pct: 0.0,
        overdraft_pct: 0.0,
        window_nonces: WINDOW_NONCES,
        nonce_base: 3 * WINDOW_NONCES,
        timestamp_ms: tollgate_load::driver::unix_ms(),
        domain: Domain {
            chain_id: 31_337,
            contract: Address::default(),
        },
        connections: args.connections,
        funds: Funds::Unlimited,
        sessions: Sessions {
            per_payer: args.sessions_per_payer,
            ..Sessions::default()
        },
    }
}

/// The workload's receipts, signed before the clock starts, through one fresh pool on `threads`.
fn verify_ceiling(args: &BenchE2eArgs, threads: usize) -> anyhow::Result<f64> {
    let workload = workload(args, args.receipts);
    let domain = workload.domain;
    let mut planner = Planner::new(workload)?;
    let mut planned = Vec::new();
    while let Some(receipt) = planner.next_planned()? {
        planned.push(receipt);
    }
    let keys = planner.signing_keys();
    let signed: Vec<_> = planned
        .par_iter()
        .map(|p| p.sign(&keys[p.signer as usize], &domain))
        .collect();
    let batch = ReceiptBatch::from_receipts(&signed);
    drop(signed);
    let views = (0..batch.len())
        .map(|i| match batch.get(i) {
            Some(Ok(view)) => Ok(view),
            _ => bail!("presigned receipt {i} does not parse"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pool = tollgate_pool(&domain, threads, args.batch)?;
    let started = Instant::now();
    let verdicts = pool.verify(&views);
    let elapsed = started.elapsed().as_secs_f64();
    let refused = verdicts.iter().filter(|verdict| verdict.is_err()).count();
    ensure!(
        refused == 0,
        "the verifier refused {refused} valid receipts"
    );
    Ok(views.len() as f64 / elapsed)
}

/// One `tollgate-load` run of `args`' workload against `server`; every receipt must be acked
/// accepted, and with `check_balances` every payer's balance must be what the acks say (a
/// cluster node does not serve balances over HTTP yet).
fn run_load(
    load_binary: &Path,
    server: &ServerProcess,
    args: &BenchE2eArgs,
    extra: &[String],
    check_balances: bool,
) -> anyhow::Result<Summary> {
    let mut load_args = load_args(server, args, check_balances);
    load_args.extend_from_slice(extra);
    let run = child::run(load_binary, &load_args)?;
    let summary = run.summary;
    ensure!(
        run.status.success() && summary.verdict_mismatches == 0 && summary.acked == summary.sent,
        "tollgate-load ({}): {} of {} acked, {} verdict mismatches",
        run.status,
        summary.acked,
        summary.sent,
        summary.verdict_mismatches
    );
    ensure!(
        summary.accepted == summary.sent,
        "only {} of {} valid receipts accepted",
        summary.accepted,
        summary.sent
    );
    Ok(summary)
}

/// The `tollgate-load` arguments of `args`' workload against `server`, presigned, and with
/// `check_balances` checked against the server's balances afterwards.
pub(crate) fn load_args(
    server: &ServerProcess,
    args: &BenchE2eArgs,
    check_balances: bool,
) -> Vec<String> {
    let mut load_args: Vec<String> = [
        ("--addr", server.listen.to_string()),
        ("--receipts", args.receipts.to_string()),
        ("--payers", args.payers.to_string()),
        ("--payees", args.payees.to_string()),
        ("--zipf", args.zipf.to_string()),
        ("--connections", args.connections.to_string()),
        ("--batch", args.batch.to_string()),
        ("--in-flight", args.in_flight.to_string()),
        ("--seed", args.seed.to_string()),
        ("--sessions-per-payer", args.sessions_per_payer.to_string()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_owned(), value])
    .collect();
    load_args.push("--presign".to_owned());
    if check_balances {
        load_args.extend(["--check".to_owned(), format!("http://{}", server.http)]);
    }
    load_args
}

/// The values of `names` in the server's Prometheus text.
pub(crate) fn metrics<const N: usize>(
    server: &ServerProcess,
    names: [&str; N],
) -> anyhow::Result<[f64; N]> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut values = [0.0; N];
    for (value, name) in values.iter_mut().zip(names) {
        *value = runtime
            .block_on(server.metric(name))?
            .with_context(|| format!("{name} missing from /metrics"))?;
    }
    Ok(values)
}

/// Receipts received per ledger write so far, from the server's Prometheus text.
fn receipts_per_fsync(server: &ServerProcess) -> anyhow::Result<f64> {
    let [receipts, writes] = metrics(
        server,
        [
            "tollgate_ingest_receipts_received_total",
            "tollgate_ledger_write_seconds_count",
        ],
    )?;
    ensure!(writes > 0.0, "the server reports no ledger writes");
    Ok(receipts / writes)
}

fn print_text(report: &Report) {
    println!(
        "workload: {} receipts, {} payers ({} session keys each), Zipf({}), {} connections, {} cores",
        report.receipts,
        report.payers,
        report.sessions_per_payer,
        report.zipf,
        report.connections,
        report.cores
    );
    println!("backend: {}", report.backend.curve25519_dalek_5);
    println!(
        "verify-only ceiling   {:>10.0} receipts/s",
        report.verify_ceiling_receipts_per_s
    );
    println!(
        "end to end (durable)  {:>10.0} receipts/s  = {:.2} of the ceiling",
        report.e2e_receipts_per_s, report.e2e_vs_verify_ceiling
    );
    let latency = |l: &LatencyMs| {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
            l.p50, l.p99, l.p999, l.max
        )
    };
    println!(
        "ack latency at full speed: {}",
        latency(&report.ack_latency_ms)
    );
    if let Some(paced) = &report.paced {
        println!(
            "ack latency at {}% ({:.0} receipts/s offered): {}",
            paced.offered_pct,
            paced.offered_receipts_per_s,
            latency(&paced.ack_latency_ms)
        );
    }
    println!("receipts per fsync: {:.0}", report.receipts_per_fsync);
    println!("server peak RSS: {:.0} MiB", report.server_peak_rss_mib);
    if let Some(archive) = &report.archive {
        println!(
            "receipt archive ({} rounds): {:.0} receipts/s with, {:.0} without = {:.3}; \
             {:.0} MB per million receipts",
            archive.rounds,
            archive.with_archive_receipts_per_s,
            archive.without_archive_receipts_per_s,
            archive.ratio,
            archive.bytes_per_million_receipts / 1e6
        );
    }
    if let Some(sessions) = &report.sessions {
        println!(
            "session keys ({} rounds, {} per payer): {:.0} receipts/s signed by session keys, \
             {:.0} by payer keys = {:.3}",
            sessions.rounds,
            sessions.sessions_per_payer,
            sessions.session_keys_receipts_per_s,
            sessions.payer_keys_receipts_per_s,
            sessions.ratio
        );
    }
    if let Some(cluster) = &report.cluster {
        print_cluster(cluster, &latency);
    }
    if let Some(overload) = &report.overload {
        println!(
            "overload ({:.0} receipts/s offered on {} connections): {:.0} receipts/s acked, \
             server peak RSS {:.0} MiB, {}",
            overload.offered_receipts_per_s,
            overload.connections,
            overload.receipts_per_s,
            overload.server_peak_rss_mib,
            latency(&overload.ack_latency_ms)
        );
    }
}

fn print_cluster(cluster: &ClusterCost, latency: &dyn Fn(&LatencyMs) -> String) {
    println!(
        "one-node cluster ({} rounds, {} partitions, {} nats-server(s)): {:.0} receipts/s, \
         standalone {:.0} = {:.3}; full-speed p99 {:.1} ms against {:.1} ms",
        cluster.rounds,
        cluster.partitions,
        cluster.nats_servers,
        cluster.cluster_receipts_per_s,
        cluster.standalone_receipts_per_s,
        cluster.ratio,
        cluster.cluster_full_speed_p99_ms,
        cluster.standalone_full_speed_p99_ms
    );
    if let Some(paced) = &cluster.paced {
        println!(
            "  both at {:.0} receipts/s: cluster {}; standalone {}",
            paced.offered_receipts_per_s,
            latency(&paced.cluster_ack_latency_ms),
            latency(&paced.standalone_ack_latency_ms)
        );
    }
    let cpu = |name: &str, cpu: &CpuPerReceipt| {
        println!(
            "  CPU per receipt, {name}: {:.2} us = verify pool {:.2} + stage {:.2} + \
             ledgers {:.2} + runtime {:.2} + other {:.2}",
            cpu.total, cpu.verify_pool, cpu.stage, cpu.ledgers, cpu.runtime, cpu.other
        );
    };
    cpu("standalone", &cluster.standalone_cpu);
    cpu("cluster node", &cluster.cluster_cpu);
    println!(
        "  nats-server {:.2} us per receipt; the log holds {:.1} bytes per receipt, \
         {:.1} receipts per message",
        cluster.nats_server_cpu_us_per_receipt,
        cluster.log_bytes_per_receipt,
        cluster.receipts_per_log_message
    );
}
