//! Shared by the ledger tests: the production verifier, signing helpers, a way to wait for the
//! engine's oneshot replies without an async runtime, and crashes: a child copy of the test
//! binary that writes through its own engine and is killed with SIGKILL.
#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use tollgate_engine::ledger::{PayeeBalance, PayerBalance};
use tollgate_engine::pipeline::{
    BatchAck, Engine, EngineConfig, EngineError, EpochStatus, EpochUpdate, FundsEvent, FundsKind,
    SealedEpoch, SubmitRequest,
};
use tollgate_engine::{
    Address, Domain, PayerKey, Receipt, ReceiptBatch, UnsignedReceipt, Verifier, VerifyConfig,
    VerifyPool,
};

pub const DOMAIN: Domain = Domain {
    chain_id: 31_337,
    contract: Address([0xc0; 20]),
};

/// The production verifier, on one thread: the ledger tests charge only for signatures the
/// engine's own rule accepts, as a server would.
pub fn verifier() -> Arc<VerifyPool> {
    let config = VerifyConfig {
        threads: 1,
        ..VerifyConfig::default()
    };
    Arc::new(VerifyPool::new(Verifier::new(DOMAIN, config.clone()), config).expect("verify pool"))
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

pub fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn payer_of(key: &SigningKey) -> PayerKey {
    PayerKey(key.verifying_key().to_bytes())
}

pub fn payee(n: u8) -> Address {
    Address([n; 20])
}

pub fn receipt_at(
    key: &SigningKey,
    payee: Address,
    amount: u64,
    nonce: u64,
    timestamp_ms: u64,
) -> Receipt {
    UnsignedReceipt {
        payer: payer_of(key),
        payee,
        amount,
        nonce,
        timestamp_ms,
        request_hash: [7; 32],
        session: false,
    }
    .sign(key, &DOMAIN)
}

pub fn receipt(key: &SigningKey, payee: Address, amount: u64, nonce: u64) -> Receipt {
    receipt_at(key, payee, amount, nonce, now_ms())
}

pub fn open(dir: &Path) -> Engine {
    open_with(EngineConfig::new(dir))
}

pub fn open_with(config: EngineConfig) -> Engine {
    Engine::open(config, verifier()).expect("engine opens")
}

pub fn wait<T>(
    rx: futures_channel::oneshot::Receiver<Result<T, EngineError>>,
) -> Result<T, EngineError> {
    futures::executor::block_on(rx).expect("engine answered")
}

pub fn request(producer_id: u64, batch_seq: u64, receipts: &[Receipt]) -> SubmitRequest {
    SubmitRequest {
        client_id: 1,
        producer_id,
        session_epoch: 1,
        batch_seq,
        receipts: ReceiptBatch::from_receipts(receipts),
        prejudged: Vec::new(),
    }
}

pub fn submit(engine: &Engine, request: SubmitRequest) -> Result<BatchAck, EngineError> {
    wait(engine.submit(request).expect("queued"))
}

pub fn deposit(engine: &Engine, payer: PayerKey, amount: u128, block: u64, log_index: u64) {
    wait(
        engine
            .funds(FundsEvent {
                payer,
                kind: FundsKind::Deposit,
                amount,
                block,
                log_index,
            })
            .expect("queued"),
    )
    .expect("deposit applied");
}

/// A new engine in a temporary directory, with alice (`signing_key(1)`) holding `deposited`
/// from block 1: where most ledger guarantees start.
pub fn with_alice(deposited: u128) -> (tempfile::TempDir, Engine, SigningKey) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let alice = signing_key(1);
    deposit(&engine, payer_of(&alice), deposited, 1, 0);
    (dir, engine, alice)
}

/// The durable balance of a payer the ledger knows.
pub fn balance(engine: &Engine, payer: &PayerKey) -> PayerBalance {
    engine.reader().payer(payer).expect("read").expect("known")
}

/// The durable balance of a payee the ledger knows.
pub fn payee_balance(engine: &Engine, payee: &Address) -> PayeeBalance {
    engine.reader().payee(payee).expect("read").expect("known")
}

/// Seals the open epoch and waits for it.
pub fn seal(engine: &Engine) -> SealedEpoch {
    wait(engine.seal_epoch().expect("queued")).expect("sealed")
}

/// Settle's news about an epoch, answered once durable.
pub fn record(engine: &Engine, update: EpochUpdate) -> Result<(), EngineError> {
    wait(engine.record_epoch(update).expect("queued"))
}

/// News that `epoch` is now `status`, without root or part.
pub fn update(epoch: u64, status: EpochStatus) -> EpochUpdate {
    EpochUpdate {
        epoch,
        status,
        root: None,
        part: None,
    }
}

/// The test every crashing test binary declares, running [`crash_child`]:
/// `#[test] fn crash_child() { common::crash_child() }`.
pub const CRASH_CHILD_TEST: &str = "crash_child";
/// Set in the child: the path of its [`CrashJob`].
const CRASH_JOB_ENV: &str = "TOLLGATE_TEST_CRASH_JOB";
/// The line the child prints after each ack.
const CRASH_ACK: &str = "tollgate-crash-child: ack";

/// What a child process does before it is killed: open the ledger in `data_dir` and submit
/// every batch at once (so some groups are in flight when the kill lands), reporting each ack.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct CrashJob {
    pub data_dir: PathBuf,
    pub window_nonces: u32,
    pub batches: Vec<CrashBatch>,
}

/// One client batch of a [`CrashJob`].
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct CrashBatch {
    pub producer_id: u64,
    pub batch_seq: u64,
    /// Receipt records, back to back.
    pub receipts: Vec<u8>,
}

impl CrashBatch {
    /// The batch `request(producer_id, batch_seq, receipts)` would send.
    pub fn new(producer_id: u64, batch_seq: u64, receipts: &[Receipt]) -> Self {
        Self {
            producer_id,
            batch_seq,
            receipts: receipts.iter().flat_map(|r| r.to_bytes()).collect(),
        }
    }
}

/// Runs `job` in a child copy of this test binary and kills it with SIGKILL once it reported
/// `acks` acks (0: at once, wherever it is). Nothing of the child's engine is shut down: no
/// drain, no join, no close; what survives is what its writes made durable.
pub fn crash_after(job: &CrashJob, acks: usize) {
    let job_file = tempfile::NamedTempFile::new().expect("job file");
    std::fs::write(
        job_file.path(),
        serde_json::to_vec(job).expect("job encodes"),
    )
    .expect("write");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            CRASH_CHILD_TEST,
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_JOB_ENV, job_file.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the child");
    let mut reported = 0;
    if acks > 0 {
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        for line in stdout.lines() {
            let line = line.expect("read the child");
            // The harness may have started the line with the test's name.
            if line.ends_with(CRASH_ACK) {
                reported += 1;
                if reported == acks {
                    break;
                }
            }
        }
    }
    child.kill().expect("kill -9");
    let status = child.wait().expect("reap the child");
    assert_eq!(
        (reported, status.signal()),
        (acks, Some(9)),
        "the child must be killed after {acks} acks ({status})"
    );
}

/// The child side of [`crash_after`]; a no-op in a normal test run.
pub fn crash_child() {
    let Some(job) = std::env::var_os(CRASH_JOB_ENV) else {
        return;
    };
    let job: CrashJob =
        serde_json::from_slice(&std::fs::read(job).expect("read job")).expect("job decodes");
    let mut config = EngineConfig::new(&job.data_dir);
    config.ledger.window_nonces = job.window_nonces;
    let engine = open_with(config);
    let answers: Vec<_> = job
        .batches
        .into_iter()
        .map(|batch| {
            let receipts = ReceiptBatch::new(batch.receipts.into()).expect("whole records");
            engine
                .submit(SubmitRequest {
                    receipts,
                    ..request(batch.producer_id, batch.batch_seq, &[])
                })
                .expect("queued")
        })
        .collect();
    for answer in answers {
        wait(answer).expect("acked");
        println!("{CRASH_ACK}");
    }
    // The parent kills us now. Should it be gone instead, stdin closes: stop without shutting
    // the engine down, as a crash would.
    drop(std::io::copy(&mut std::io::stdin(), &mut std::io::sink()));
    std::process::exit(1);
}
