//! The crash test: kill -9 the real server while a fleet streams to it, again and again, and
//! prove that no acked receipt is lost and none is counted twice.
//!
//! The real `ingest::client` streams 200,000 receipts from 1,000 payers to a `tollgate serve`
//! child process on a temp data directory. The test kills the child with SIGKILL at random
//! points of the stream (at least five), restarts it on the same port and directory, and the
//! client reconnects and re-sends every batch it holds no ack for, under its original sequence
//! number. At the end every payer's totals from the HTTP API must equal the sum of the receipts
//! the client saw accepted: a lost receipt would show as a shortfall, a double count as an excess
//! (amounts differ per nonce, so the two cannot cancel out). The receipt archive must then hold
//! every acked receipt, byte for byte, exactly once.
//!
//! The child is this very test binary re-executed with `TOLLGATE_CRASH_TEST_SERVER` set, running
//! `tollgate_tools::serve`, so the test needs no other binary built first. Harness-less for that.
//!
//! SIGKILL kills the process, not the machine: the page cache survives, so this test passes even
//! if nothing is ever fsynced. Durability has its own checks: every acked group is fsynced before
//! its ack (`engine::pipeline` test `every_acked_group_is_fsynced_before_its_ack`, on RocksDB's
//! count of WAL syncs), and what a power cut can leave behind, a torn WAL tail, recovers every
//! acked group (engine/tests/wal_recovery.rs).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use ed25519_dalek::SigningKey;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;
use tollgate_engine::pipeline::{BatchVerifier, Engine, EngineConfig};
use tollgate_engine::verdict::Verdict;
use tollgate_engine::{Address, Domain, PayerKey, Receipt, ReceiptView, UnsignedReceipt};
use tollgate_ingest::client::{Client, ClientConfig};
use tollgate_load::check::fetch_balances;
use tollgate_load::population::{payee_address, payer_key};
use tollgate_tools::serve::ServeArgs;
use tollgate_tools::serve::process::ServerProcess;

const AS_SERVER: &str = "TOLLGATE_CRASH_TEST_SERVER";
const RECEIPTS: u64 = 200_000;
const PAYERS: u32 = 1_000;
const PAYEES: u32 = 4;
const KILLS: usize = 6;
const BATCH: usize = 256;
const PRODUCERS: u64 = 4;
const SEED: u64 = 0xC4A5;

#[derive(Parser)]
enum ChildCommand {
    Serve(Box<ServeArgs>),
}

fn main() -> anyhow::Result<()> {
    if std::env::var_os(AS_SERVER).is_some() {
        let ChildCommand::Serve(args) = ChildCommand::parse();
        return tollgate_tools::serve::run_command(&args);
    }
    let started = Instant::now();
    let figures = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(crash_test())?;
    println!(
        "crash test: {} kills, {} receipts acked, {} batches re-sent after reconnects, \
         {} reconnects, lost 0, double 0 ({:.1} s)",
        figures.kills,
        figures.acked,
        figures.resent,
        figures.reconnects,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

struct Figures {
    kills: usize,
    acked: u64,
    resent: u64,
    reconnects: u64,
}

/// A server child on a fixed port and directory, restartable.
struct Server {
    port: u16,
    data_dir: PathBuf,
    log: PathBuf,
}

impl Server {
    fn start(&self) -> anyhow::Result<ServerProcess> {
        let exe = std::env::current_exe()?;
        let args = vec![
            "--unknown-payers".to_owned(),
            "accept".to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{}", self.port),
            "--http".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--data-dir".to_owned(),
            self.data_dir.display().to_string(),
        ];
        ServerProcess::start(&exe, &args, Some(&self.log), &[(AS_SERVER, "1")])
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Every receipt of the run, signed, grouped into client batches; producers take batches round
/// robin. Amount `nonce % 97 + 1` makes a lost and a doubled receipt unlikely to cancel out.
fn signed_batches(domain: &Domain) -> Vec<Vec<Receipt>> {
    let keys: Vec<SigningKey> = (0..PAYERS).map(|i| payer_key(SEED, i)).collect();
    let payees: Vec<Address> = (0..PAYEES).map(|i| payee_address(SEED, i)).collect();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64);
    (0..RECEIPTS)
        .into_par_iter()
        .map(|i| {
            let payer = (i % u64::from(PAYERS)) as usize;
            let channel_round = i / u64::from(PAYERS);
            let payee = payees[(channel_round % u64::from(PAYEES)) as usize];
            let nonce = channel_round / u64::from(PAYEES);
            UnsignedReceipt {
                payer: PayerKey(keys[payer].verifying_key().to_bytes()),
                payee,
                amount: nonce % 97 + 1,
                nonce,
                timestamp_ms: now_ms,
                request_hash: *blake3::hash(&i.to_le_bytes()).as_bytes(),
                session: false,
            }
            .sign(&keys[payer], domain)
        })
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(<[Receipt]>::to_vec)
        .collect()
}

async fn crash_test() -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let server = Server {
        port: free_port()?,
        data_dir: dir.path().join("data"),
        log: dir.path().join("server.log"),
    };
    // The server's default deployment: anvil's chain id, no contract (chainless).
    let domain = Domain {
        chain_id: 31_337,
        contract: Address::default(),
    };
    let batches = tokio::task::spawn_blocking(move || signed_batches(&domain)).await?;
    let mut process = server.start()?;

    let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
    let mut clients = Vec::new();
    for producer in 0..PRODUCERS {
        let mut config = ClientConfig::new(
            addr.to_string(),
            0,
            SigningKey::from_bytes(&[7; 32]),
            producer,
            domain,
        );
        config.reconnect_backoff_ms_min = 20;
        config.reconnect_backoff_ms_max = 500;
        // A restart replays RocksDB's log: give it a minute before the client gives up.
        config.reconnect_attempts_max = 200;
        clients.push(Client::connect(config).await?);
    }

    // Kill points: random counts of acked receipts, at least KILLS of them inside the stream.
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let mut kill_points: Vec<u64> = (0..KILLS)
        .map(|_| rng.random_range(RECEIPTS / 20..RECEIPTS * 19 / 20))
        .collect();
    kill_points.sort_unstable();

    let acked = Arc::new(AtomicU64::new(0));
    let mut expected: HashMap<PayerKey, (u128, u64)> = HashMap::new();
    for receipt in batches.iter().flatten() {
        let entry = expected.entry(receipt.payer).or_default();
        entry.0 += u128::from(receipt.amount);
        entry.1 += 1;
    }
    let payers: Vec<PayerKey> = expected.keys().copied().collect();
    let sent: HashSet<[u8; 176]> = batches.iter().flatten().map(Receipt::to_bytes).collect();

    let stream = tokio::spawn(stream_all(clients.clone(), batches, Arc::clone(&acked)));
    let mut kills = 0;
    for point in kill_points {
        while acked.load(Ordering::Acquire) < point {
            if stream.is_finished() {
                bail!("the stream ended before kill point {point}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        process.kill().context("kill -9 the server")?;
        kills += 1;
        process = tokio::task::block_in_place(|| server.start())?;
    }
    stream.await??;

    let mut resent = 0;
    let mut reconnects = 0;
    for client in clients {
        let stats = client.close().await?;
        resent += stats.batches_resent;
        reconnects += stats.reconnects;
    }
    ensure!(kills >= 5, "only {kills} kills");
    ensure!(
        reconnects >= 5,
        "only {reconnects} reconnects: the kills missed the stream"
    );

    // One more crash after the last ack: nothing acked may depend on a clean shutdown.
    process.kill()?;
    let process = tokio::task::block_in_place(|| server.start())?;
    let balances = fetch_balances(&format!("http://{}", process.http), &payers).await?;
    let mut lost = 0u128;
    let mut double = 0u128;
    for (payer, balance) in payers.iter().zip(&balances) {
        let (amount, count) = expected[payer];
        let counted = balance.spent().context("pending + settled overflows")?;
        lost += amount.saturating_sub(counted);
        double += counted.saturating_sub(amount);
        ensure!(
            balance.receipts == Some(u128::from(count)),
            "payer {payer}: {count} receipts acked, ledger counts {:?}",
            balance.receipts
        );
    }
    ensure!(
        lost == 0 && double == 0,
        "lost {lost}, counted twice {double} (token units)"
    );
    let status = process.terminate(Duration::from_secs(60))?;
    ensure!(status.success(), "clean shutdown exited with {status}");
    check_archive(&server.data_dir, &sent)?;
    Ok(Figures {
        kills,
        acked: acked.load(Ordering::Acquire),
        resent,
        reconnects,
    })
}

/// Every receipt was acked (the stream checked each verdict): the archive of the one epoch of a
/// chainless server must hold each of them once, nothing else.
fn check_archive(data_dir: &std::path::Path, sent: &HashSet<[u8; 176]>) -> anyhow::Result<()> {
    struct NoVerifier;
    impl BatchVerifier for NoVerifier {
        fn verify(&self, receipts: &[ReceiptView<'_>]) -> Vec<Verdict> {
            vec![Ok(()); receipts.len()]
        }
    }
    let engine = Engine::open(EngineConfig::new(data_dir), Arc::new(NoVerifier))?;
    let reader = engine.reader();
    let mut archived = HashSet::new();
    let mut after = None;
    loop {
        let page = reader.archived_receipts(1, after, 10_000)?;
        let Some(last) = page.last() else { break };
        after = Some(last.index);
        for entry in page {
            ensure!(
                archived.insert(entry.bytes),
                "receipt archived twice (index {})",
                entry.index
            );
        }
    }
    ensure!(
        archived == *sent,
        "archive holds {} receipts, {} acked, {} acked ones missing",
        archived.len(),
        sent.len(),
        sent.difference(&archived).count()
    );
    engine.shutdown()?;
    Ok(())
}

/// Submits every batch (producers round robin) and checks every verdict: all are valid and
/// fresh, so every receipt must come back accepted, crash or no crash.
async fn stream_all(
    clients: Vec<Client>,
    batches: Vec<Vec<Receipt>>,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut verdicts = tokio::task::JoinSet::new();
    for (index, batch) in batches.into_iter().enumerate() {
        let client = &clients[index % clients.len()];
        let size = batch.len() as u64;
        let pending = client.submit_batch(batch).await?;
        let acked = Arc::clone(&acked);
        verdicts.spawn(async move {
            let verdicts = pending.await?;
            if let Some((position, reason)) = verdicts
                .iter()
                .enumerate()
                .find_map(|(i, verdict)| verdict.err().map(|reason| (i, reason)))
            {
                bail!("batch {index} receipt {position} was refused: {reason:?}");
            }
            acked.fetch_add(size, Ordering::AcqRel);
            Ok(())
        });
        // Keep a bounded number of answers outstanding.
        while verdicts.len() > 256 {
            if let Some(done) = verdicts.join_next().await {
                done??;
            }
        }
    }
    while let Some(done) = verdicts.join_next().await {
        done??;
    }
    Ok(())
}
