//! `tollgate bench abuse`: what one abusive client costs the others. Eight clients share one
//! chainless `tollgate serve` (fsync on): seven good ones in one `tollgate-load` process and the
//! eighth in a second process started at the same moment. By turns, for `--rounds` rounds, the
//! eighth sends clean signatures, then `--bad-pct` percent bad ones; the report is the seven good
//! clients' rate in each case and their ratio. Each process checks every verdict (the bad ones
//! refused `bad_signature`, the rest accepted) and the server's balances afterwards.
//!
//! The eighth client sends a fair share of receipts (a seventh of the good ones' total), so while
//! it is no slower than a good client the two processes overlap for the whole measured time; when
//! it pays for its own bad signatures it ends last, which can only lower the good clients' rate.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde::Serialize;
use tollgate_load::{Summary, child};

use crate::bench_e2e::{BenchE2eArgs, by_turns, chainless_server_args, load_args, print_report};
use crate::bench_verify::Backends;
use crate::bench_x402::cpu_model;
use crate::serve::process::{ServerProcess, WorkDir};

/// Flags of `tollgate bench abuse`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchAbuseArgs {
    /// Receipts the seven good clients send together in each run.
    #[arg(long, default_value_t = 350_000)]
    pub receipts: u64,
    /// Percent of the abusive client's receipts with a bad signature.
    #[arg(long, default_value_t = 10.0)]
    pub bad_pct: f64,
    /// Rounds: each runs the eight clients once with the eighth clean, then once abusive.
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// Distinct payers of each process.
    #[arg(long, default_value_t = 10_000)]
    pub payers: u32,
    /// Zipf exponent of payer popularity.
    #[arg(long, default_value_t = 1.1)]
    pub zipf: f64,
    /// Receipts per batch.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Batches in flight per client.
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// Verification threads of the server (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// The `tollgate` binary that serves (default: this one): another build's, to compare the
    /// same load against two servers.
    #[arg(long)]
    pub server: Option<std::path::PathBuf>,
    /// Keep the server's data directory and log here instead of a temporary directory.
    #[arg(long)]
    pub work_dir: Option<std::path::PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Good clients in the run: the eighth client is the one that turns abusive.
const GOOD_CLIENTS: u32 = 7;

/// What `tollgate bench abuse` measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The CPU, from /proc/cpuinfo.
    pub cpu_model: String,
    /// Cores the process may use (server and generators share them).
    pub cores: usize,
    /// The curve25519 arithmetic on this CPU.
    pub backend: Backends,
    /// Receipts the good clients sent per run.
    pub receipts: u64,
    /// Percent of the abusive client's receipts with a bad signature.
    pub bad_pct: f64,
    /// Rounds by turns.
    pub rounds: u32,
    /// The seven good clients' rate while the eighth sent clean signatures.
    pub good_receipts_per_s_beside_clean: f64,
    /// The seven good clients' rate while the eighth sent `bad_pct` bad signatures.
    pub good_receipts_per_s_beside_abuser: f64,
    /// The second over the first (the goal: at least 0.9).
    pub ratio: f64,
    /// The eighth client's own rate, clean then abusive.
    pub eighth_receipts_per_s_clean: f64,
    /// The eighth client's own rate while abusive.
    pub eighth_receipts_per_s_abusive: f64,
}

/// Runs the benchmark and prints its report.
pub fn run(args: &BenchAbuseArgs) -> anyhow::Result<()> {
    print_report(&measure(args)?, args.json, print_text)
}

/// Runs the benchmark.
pub fn measure(args: &BenchAbuseArgs) -> anyhow::Result<Report> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = args.threads.unwrap_or(cores);
    let exe = match &args.server {
        Some(server) => server.clone(),
        None => std::env::current_exe().context("locating the tollgate binary")?,
    };
    let load_binary = child::sibling_binary()?;
    let work_dir = WorkDir::given_or_temporary(args.work_dir.as_deref())?;
    let server = ServerProcess::start(
        &exe,
        &chainless_server_args(&work_dir.data(), threads),
        Some(&work_dir.log()),
        &[],
    )?;
    // Each run uses fresh seeds: fresh payers, so nothing is a replay of an earlier run.
    let seeds = std::sync::atomic::AtomicU64::new(1);
    let eighth_rates = std::sync::Mutex::new((0.0, 0.0));
    let turn = |bad_pct: f64| {
        let seed = seeds.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        let (good, eighth) = eight_clients(&load_binary, &server, args, seed, bad_pct)?;
        let mut rates = eighth_rates
            .lock()
            .map_err(|_| anyhow::anyhow!("a round panicked"))?;
        if bad_pct > 0.0 {
            rates.1 += eighth.receipts_per_s;
        } else {
            rates.0 += eighth.receipts_per_s;
        }
        anyhow::Ok(good.receipts_per_s)
    };
    let (clean, abused) = by_turns(args.rounds, "abuse", || turn(0.0), || turn(args.bad_pct))?;
    let status = server.terminate(Duration::from_secs(60))?;
    ensure!(status.success(), "the server exited with {status}");
    let (eighth_clean, eighth_abusive) = eighth_rates
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a round panicked"))?;
    let rounds = f64::from(args.rounds.max(1));
    Ok(Report {
        cpu_model: cpu_model(),
        cores,
        backend: Backends::detect(),
        receipts: args.receipts,
        bad_pct: args.bad_pct,
        rounds: args.rounds,
        good_receipts_per_s_beside_clean: clean,
        good_receipts_per_s_beside_abuser: abused,
        ratio: abused / clean,
        eighth_receipts_per_s_clean: eighth_clean / rounds,
        eighth_receipts_per_s_abusive: eighth_abusive / rounds,
    })
}

/// One run: the seven good clients and the eighth, started together; both summaries once both
/// are done and every verdict checked.
fn eight_clients(
    load_binary: &Path,
    server: &ServerProcess,
    args: &BenchAbuseArgs,
    seed: u64,
    bad_pct: f64,
) -> anyhow::Result<(Summary, Summary)> {
    let workload = |receipts: u64, connections: u32, seed: u64| BenchE2eArgs {
        receipts,
        payers: args.payers,
        zipf: args.zipf,
        connections,
        batch: args.batch,
        in_flight: args.in_flight,
        seed,
        payees: 16,
        sessions_per_payer: 0,
        // The rest are `bench e2e`'s own phases, which `load_args` does not read.
        paced_pct: 0,
        offered_secs: 0,
        overload_secs: 0,
        overload: false,
        threads: None,
        archive_rounds: 0,
        session_rounds: 0,
        cluster_rounds: 0,
        cluster_partitions: 0,
        cluster_nats_servers: 0,
        work_dir: None,
        json: false,
    };
    let good_args = load_args(server, &workload(args.receipts, GOOD_CLIENTS, seed), true);
    let mut eighth_args = load_args(
        server,
        &workload(args.receipts / u64::from(GOOD_CLIENTS), 1, seed + 1),
        true,
    );
    eighth_args.extend(["--bad-sig-pct".to_owned(), bad_pct.to_string()]);
    let (good, eighth) = std::thread::scope(|scope| {
        let good = scope.spawn(|| child::run(load_binary, &good_args));
        let eighth = child::run(load_binary, &eighth_args);
        (good.join(), eighth)
    });
    let good = good.map_err(|_| anyhow::anyhow!("the good clients' thread panicked"))??;
    let eighth = eighth?;
    for (who, run) in [("good clients", &good), ("eighth client", &eighth)] {
        let summary = &run.summary;
        let refused = summary.rejected.values().sum::<u64>();
        let bad = summary.rejected.get("bad_signature").copied().unwrap_or(0);
        ensure!(
            run.status.success()
                && summary.verdict_mismatches == 0
                && summary.acked == summary.sent
                && summary.accepted + bad == summary.sent
                && refused == bad,
            "{who} ({}): {} of {} acked, {} accepted, {} refused ({} bad_signature), \
             {} verdict mismatches",
            run.status,
            summary.acked,
            summary.sent,
            summary.accepted,
            refused,
            bad,
            summary.verdict_mismatches
        );
    }
    ensure!(
        good.summary.accepted == good.summary.sent,
        "a good client's receipt was refused"
    );
    Ok((good.summary, eighth.summary))
}

fn print_text(report: &Report) {
    println!(
        "cpu: {} ({} cores), backend: {}",
        report.cpu_model, report.cores, report.backend.curve25519_dalek_5
    );
    println!(
        "eight clients, one of them sending {}% bad signatures ({} rounds by turns, {} receipts \
         from the seven good clients per run)",
        report.bad_pct, report.rounds, report.receipts
    );
    println!(
        "seven good clients: {:.0} receipts/s beside a clean eighth, {:.0} beside the abuser \
         = {:.3}",
        report.good_receipts_per_s_beside_clean,
        report.good_receipts_per_s_beside_abuser,
        report.ratio
    );
    println!(
        "the eighth client itself: {:.0} receipts/s clean, {:.0} abusive",
        report.eighth_receipts_per_s_clean, report.eighth_receipts_per_s_abusive
    );
}
