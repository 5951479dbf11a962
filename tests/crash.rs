//! The crash test: kill -9 the real server while a fleet streams to it, again and again, and
//! prove that no acked receipt is lost and none is counted twice.
//!
//! The real `ingest::client` streams 200,000 receipts from 1,000 payers to a `tollgate serve`
//! child process on a temp data directory; every fifth payer's receipts are signed by a session
//! key whose grant caps it at about half of what its receipts ask. The test kills the child with
//! SIGKILL at random points of the stream (at least five), restarts it on the same port and
//! directory, and the client reconnects and re-sends every batch it holds no ack for, under its
//! original sequence number. At the end every payer's totals from the HTTP API must equal the sum
//! of the receipts the client saw accepted: a lost receipt would show as a shortfall, a double
//! count as an excess (amounts differ per nonce, so the two cannot cancel out). Every session
//! must have spent exactly what was accepted of it, and never more than its cap. The receipt
//! archive must then hold every accepted receipt, byte for byte, exactly once.
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
use tollgate_engine::grant::{Grant, PayeeScope};
use tollgate_engine::pipeline::{BatchVerifier, Engine, EngineConfig, UnknownPayers};
use tollgate_engine::verdict::Verdict;
use tollgate_engine::{Address, Domain, PayerKey, Reason, Receipt, ReceiptView, UnsignedReceipt};
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
/// Every this-many-th payer signs through a session key.
const SESSION_EVERY: u32 = 5;

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
         {} reconnects, lost 0, double 0; {} session receipts refused over their caps, \
         0 sessions over cap ({:.1} s)",
        figures.kills,
        figures.acked,
        figures.resent,
        figures.reconnects,
        figures.over_cap_refused,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

struct Figures {
    over_cap_refused: usize,
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

/// The session key payer `index` signs through, if it is one that does.
fn session_key(index: u32) -> Option<SigningKey> {
    index.is_multiple_of(SESSION_EVERY).then(|| {
        SigningKey::from_bytes(
            blake3::hash(&[b"crash-session".as_slice(), &index.to_le_bytes()].concat()).as_bytes(),
        )
    })
}

/// Every receipt of the run, signed, grouped into client batches; producers take batches round
/// robin. Amount `nonce % 97 + 1` makes a lost and a doubled receipt unlikely to cancel out.
fn signed_batches(domain: &Domain) -> Vec<Vec<Receipt>> {
    let keys: Vec<SigningKey> = (0..PAYERS).map(|i| payer_key(SEED, i)).collect();
    let sessions: Vec<Option<SigningKey>> = (0..PAYERS).map(session_key).collect();
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
            let signer = sessions[payer].as_ref().unwrap_or(&keys[payer]);
            UnsignedReceipt {
                payer: PayerKey(signer.verifying_key().to_bytes()),
                payee,
                amount: nonce % 97 + 1,
                nonce,
                timestamp_ms: now_ms,
                request_hash: *blake3::hash(&i.to_le_bytes()).as_bytes(),
                session: sessions[payer].is_some(),
            }
            .sign(signer, domain)
        })
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(<[Receipt]>::to_vec)
        .collect()
}

/// Grants every session half of what its receipts ask, written to the data directory before the
/// server first starts (the grant paths themselves have their own tests). Returns each session
/// key with its payer and cap.
async fn grant_sessions(
    data_dir: &std::path::Path,
    domain: &Domain,
    batches: &[Vec<Receipt>],
) -> anyhow::Result<HashMap<PayerKey, (PayerKey, u64)>> {
    let mut asked: HashMap<PayerKey, u64> = HashMap::new();
    for receipt in batches.iter().flatten().filter(|r| r.session) {
        *asked.entry(receipt.payer).or_default() += receipt.amount;
    }
    // The server accepts unknown payers (chainless), so its payers may grant without deposits.
    let mut config = EngineConfig::new(data_dir);
    config.ledger.unknown_payers = UnknownPayers::Accept;
    let engine = Engine::open(config, Arc::new(NoVerifier))?;
    let mut sessions = HashMap::new();
    for index in 0..PAYERS {
        let Some(session) = session_key(index) else {
            continue;
        };
        let payer = payer_key(SEED, index);
        let payer_public = PayerKey(payer.verifying_key().to_bytes());
        let session = PayerKey(session.verifying_key().to_bytes());
        let cap = asked.get(&session).copied().unwrap_or(0) / 2 + 1;
        let grant = Grant {
            domain: *domain,
            payer: payer_public,
            session,
            nonce: 1,
            cap,
            allowance: None,
            valid_from_ms: 0,
            valid_until_ms: u64::MAX,
            payees: PayeeScope::Any,
        }
        .sign(&payer)
        .check(domain)?;
        engine.grant(grant)?.await??;
        sessions.insert(session, (payer_public, cap));
    }
    engine.shutdown()?;
    Ok(sessions)
}

/// The engine reads the data directory between runs; nothing it is given needs a signature.
struct NoVerifier;

impl BatchVerifier for NoVerifier {
    fn verify(&self, receipts: &[ReceiptView<'_>]) -> Vec<Verdict> {
        vec![Ok(()); receipts.len()]
    }
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
    let sessions = grant_sessions(&server.data_dir, &domain, &batches).await?;
    let session_receipts = batches.iter().flatten().filter(|r| r.session).count();
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
    let accepted = stream.await??;
    // Every payer's spend, through its own key or its session's, from what was accepted.
    let mut expected: HashMap<PayerKey, (u128, u64)> = HashMap::new();
    let mut session_spent: HashMap<PayerKey, u128> = HashMap::new();
    for receipt in &accepted {
        let payer = match sessions.get(&receipt.payer) {
            Some((payer, _)) if receipt.session => {
                *session_spent.entry(receipt.payer).or_default() += u128::from(receipt.amount);
                *payer
            }
            _ => receipt.payer,
        };
        let entry = expected.entry(payer).or_default();
        entry.0 += u128::from(receipt.amount);
        entry.1 += 1;
    }
    let payers: Vec<PayerKey> = expected.keys().copied().collect();
    let over_cap_refused = session_receipts - accepted.iter().filter(|r| r.session).count();
    let accepted: HashSet<[u8; 176]> = accepted.iter().map(Receipt::to_bytes).collect();

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
    check_archive(&server.data_dir, &accepted, &sessions, &session_spent)?;
    Ok(Figures {
        over_cap_refused,
        kills,
        acked: acked.load(Ordering::Acquire),
        resent,
        reconnects,
    })
}

/// The archive of the one epoch of a chainless server must hold each accepted receipt once,
/// nothing else; every session must have spent what was accepted of it, within its cap.
fn check_archive(
    data_dir: &std::path::Path,
    accepted: &HashSet<[u8; 176]>,
    sessions: &HashMap<PayerKey, (PayerKey, u64)>,
    session_spent: &HashMap<PayerKey, u128>,
) -> anyhow::Result<()> {
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
        archived == *accepted,
        "archive holds {} receipts, {} accepted, {} accepted ones missing",
        archived.len(),
        accepted.len(),
        accepted.difference(&archived).count()
    );
    for (session, (_, cap)) in sessions {
        let held = reader
            .grant(session)?
            .with_context(|| format!("grant of session {session} is gone"))?;
        let spent = session_spent.get(session).copied().unwrap_or(0);
        ensure!(
            held.spent.total == spent && spent <= u128::from(*cap),
            "session {session}: accepted {spent}, ledger says spent {}, cap {cap}",
            held.spent.total
        );
    }
    engine.shutdown()?;
    Ok(())
}

/// Submits every batch (producers round robin), checks every verdict and returns the receipts
/// accepted: all are valid and fresh, so every receipt must come back accepted, crash or no
/// crash, but for a session's past its cap.
async fn stream_all(
    clients: Vec<Client>,
    batches: Vec<Vec<Receipt>>,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<Vec<Receipt>> {
    let mut verdicts = tokio::task::JoinSet::new();
    let mut accepted = Vec::new();
    for (index, batch) in batches.into_iter().enumerate() {
        let client = &clients[index % clients.len()];
        let size = batch.len() as u64;
        let pending = client.submit_batch(batch.clone()).await?;
        let acked = Arc::clone(&acked);
        verdicts.spawn(async move {
            let verdicts = pending.await?;
            let mut accepted = Vec::with_capacity(batch.len());
            for (position, (receipt, verdict)) in batch.into_iter().zip(verdicts).enumerate() {
                match verdict {
                    Ok(()) => accepted.push(receipt),
                    Err(Reason::OverGrantCap) if receipt.session => {}
                    Err(reason) => {
                        bail!("batch {index} receipt {position} was refused: {reason:?}")
                    }
                }
            }
            acked.fetch_add(size, Ordering::AcqRel);
            Ok(accepted)
        });
        // Keep a bounded number of answers outstanding.
        while verdicts.len() > 256 {
            if let Some(done) = verdicts.join_next().await {
                accepted.extend(done??);
            }
        }
    }
    while let Some(done) = verdicts.join_next().await {
        accepted.extend(done??);
    }
    Ok(accepted)
}
