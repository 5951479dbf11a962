//! Acks wait for the fsync of their group, and a failed write stops the engine for good.

use super::*;

/// No receipt is applied in these tests; refusing every signature keeps it that way.
struct RefuseEverySignature;

impl BatchVerifier for RefuseEverySignature {
    fn verify(&self, receipts: &[ReceiptView<'_>]) -> Vec<Verdict> {
        vec![Err(Reason::BadSignature); receipts.len()]
    }
}

fn deposit(amount: u128, block: u64) -> FundsEvent {
    FundsEvent {
        payer: PayerKey([1; 32]),
        kind: FundsKind::Deposit,
        amount,
        block,
        log_index: 0,
    }
}

/// An ack may only leave after RocksDB fsynced the WAL holding its group. The page cache
/// survives a SIGKILL, so the crash test cannot see a missing fsync; RocksDB's own count of
/// WAL syncs can: with `sync = false` in `synced_write_options` it stays put and this fails.
#[test]
fn every_acked_group_is_fsynced_before_its_ack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(
        EngineConfig::new(dir.path()),
        Arc::new(RefuseEverySignature),
    )
    .expect("open");
    let store = Arc::clone(&engine.inner.store);
    let mut syncs = store.wal_syncs();
    for seq in 1..=5u64 {
        let request = SubmitRequest {
            client_id: 1,
            producer_id: 1,
            session_epoch: 1,
            batch_seq: seq,
            receipts: ReceiptBatch::default(),
            prejudged: Vec::new(),
        };
        let ack = futures::executor::block_on(engine.submit(request).expect("queued"))
            .expect("answered")
            .expect("acked");
        assert_eq!(ack.batch_seq, seq);
        let done = engine.funds(deposit(1, seq)).expect("queued");
        futures::executor::block_on(done)
            .expect("answered")
            .expect("applied");
        let now = store.wal_syncs();
        assert!(
            now >= syncs + 2,
            "batch {seq} and a funds event were acked after {} WAL fsyncs",
            now - syncs
        );
        syncs = now;
    }
    engine.shutdown().expect("clean");
}

#[test]
fn failed_write_poisons_the_engine_and_nothing_more_is_written_or_acked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(
        EngineConfig::new(dir.path()),
        Arc::new(RefuseEverySignature),
    )
    .expect("open");
    let done = engine.funds(deposit(10, 1)).expect("queued");
    futures::executor::block_on(done)
        .expect("answered")
        .expect("written");

    engine.inner.store.fail_next_write();
    let done = engine.funds(deposit(20, 2)).expect("queued");
    let error = futures::executor::block_on(done)
        .expect("answered")
        .expect_err("write failed");
    assert!(
        matches!(error, EngineError::Ledger(LedgerError::Poisoned { .. })),
        "{error}"
    );

    assert_eq!(
        engine.funds(deposit(30, 3)).err(),
        Some(SubmitError::Poisoned)
    );
    let request = SubmitRequest {
        client_id: 1,
        producer_id: 1,
        session_epoch: 0,
        batch_seq: 0,
        receipts: ReceiptBatch::default(),
        prejudged: Vec::new(),
    };
    assert_eq!(engine.submit(request).err(), Some(SubmitError::Poisoned));
    let error = engine.clone().shutdown().expect_err("reports the poison");
    assert!(
        matches!(error, EngineError::Ledger(LedgerError::Poisoned { .. })),
        "{error}"
    );
    drop(engine);

    // Only what was acked is on disk.
    let engine = Engine::open(
        EngineConfig::new(dir.path()),
        Arc::new(RefuseEverySignature),
    )
    .expect("reopen");
    let balance = engine
        .reader()
        .payer(&PayerKey([1; 32]))
        .expect("read")
        .expect("known");
    assert_eq!(balance.deposited, 10);
    engine.shutdown().expect("clean");
}

/// A logged batch (verified by the ingest node that published it) is not verified again: the
/// verifier here refuses every signature, yet the logged batch is accepted, and the same kind of
/// receipt submitted the usual way is refused. A record that does not parse is refused either
/// way.
#[test]
fn a_logged_batch_skips_the_verifier_but_not_the_parse() {
    use crate::receipt::{Address, RECEIPT_BYTES, UnsignedReceipt};

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = EngineConfig::new(dir.path());
    config.ledger.unknown_payers = UnknownPayers::Accept;
    let engine = Engine::open(config, Arc::new(RefuseEverySignature)).expect("open");
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let batch = |nonce| {
        ReceiptBatch::from_receipts(&[UnsignedReceipt {
            payer: PayerKey(key.verifying_key().to_bytes()),
            payee: Address([2; 20]),
            amount: 5,
            nonce,
            timestamp_ms: now_ms,
            request_hash: [0; 32],
            session: false,
        }
        .sign(&key, &crate::Domain::default())])
    };
    let request = |producer_id, receipts| SubmitRequest {
        client_id: 1,
        producer_id,
        session_epoch: 1,
        batch_seq: 1,
        receipts,
        prejudged: Vec::new(),
    };
    let answer = |rx: AckReceiver| {
        let ack = futures::executor::block_on(rx)
            .expect("answered")
            .expect("acked");
        (ack.accepted, ack.rejections)
    };

    let at = |seq| LogPosition {
        seq,
        time_ms: now_ms,
    };
    let checked = engine
        .submit_logged(request(1, batch(1)), at(1))
        .expect("queued");
    assert_eq!(answer(checked), (1, Vec::new()));
    let unchecked = engine.submit(request(2, batch(2))).expect("queued");
    assert_eq!(answer(unchecked), (0, vec![(0, Reason::BadSignature)]));
    let mut garbage = batch(3).as_bytes().to_vec();
    garbage[..RECEIPT_BYTES].fill(0xff);
    let garbage = ReceiptBatch::new(garbage.into()).expect("whole records");
    let malformed = engine
        .submit_logged(request(3, garbage), at(2))
        .expect("queued");
    assert_eq!(answer(malformed), (0, vec![(0, Reason::Malformed)]));
    engine.shutdown().expect("clean");
}

/// Verifies with a real pool and records, per call, which clients' payers the receipts came
/// from. It keeps the default `verify_clients`, which calls `verify` once per span: a call that
/// holds two clients' receipts means the stage handed it a span mixing them.
struct RecordClientsPerCall {
    pool: crate::verify::VerifyPool,
    client_of_payer: std::collections::HashMap<PayerKey, u64>,
    calls: Mutex<Vec<std::collections::BTreeSet<u64>>>,
}

impl BatchVerifier for RecordClientsPerCall {
    fn verify(&self, receipts: &[ReceiptView<'_>]) -> Vec<Verdict> {
        let clients = receipts
            .iter()
            .map(|view| self.client_of_payer[&view.payer()])
            .collect();
        self.calls.lock().expect("calls").push(clients);
        self.pool.verify(receipts)
    }
}

/// A group mixing one client's bad signatures with other clients' good ones: every verdict is
/// exact and in its batch's order, and no verifier call (so no batch equation and no bisection)
/// holds the bad client's receipts together with anyone else's. Clients are interleaved in the
/// group, and client 3 sends two batches in it.
#[test]
fn a_group_never_mixes_clients_in_one_verification() {
    use crate::receipt::{Address, UnsignedReceipt};
    use crate::verify::{Verifier, VerifyConfig, VerifyPool};

    let domain = crate::Domain::default();
    let config = VerifyConfig {
        threads: 2,
        ..VerifyConfig::default()
    };
    let pool = VerifyPool::new(Verifier::new(domain, config.clone()), config).expect("pool");
    let clients = [3u64, 1, 3, 2];
    let bad_client = 1;
    let mut client_of_payer = std::collections::HashMap::new();
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for (batch, &client_id) in clients.iter().enumerate() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[client_id as u8; 32]);
        client_of_payer.insert(PayerKey(key.verifying_key().to_bytes()), client_id);
        let mut receipts = Vec::new();
        let mut verdicts = Vec::new();
        for nonce in 0..100u64 {
            let mut receipt = UnsignedReceipt {
                payer: PayerKey(key.verifying_key().to_bytes()),
                payee: Address([2; 20]),
                amount: 5,
                nonce: batch as u64 * 1000 + nonce,
                timestamp_ms: 0,
                request_hash: [0; 32],
                session: false,
            }
            .sign(&key, &domain);
            let bad = client_id == bad_client && nonce % 10 == 3;
            if bad {
                receipt.signature[40] ^= 1;
            }
            receipts.push(receipt);
            verdicts.push(if bad {
                Err(Reason::BadSignature)
            } else {
                Ok(())
            });
        }
        requests.push(SubmitRequest {
            client_id,
            producer_id: 1,
            session_epoch: 1,
            batch_seq: batch as u64 + 1,
            receipts: ReceiptBatch::from_receipts(&receipts),
            prejudged: Vec::new(),
        });
        expected.push(verdicts);
    }
    let verifier = RecordClientsPerCall {
        pool,
        client_of_payer,
        calls: Mutex::new(Vec::new()),
    };
    let group: Vec<(&SubmitRequest, Signatures)> = requests
        .iter()
        .map(|request| (request, Signatures::Unchecked))
        .collect();
    assert_eq!(group_verdicts(&verifier, &group), expected);
    let calls = verifier.calls.into_inner().expect("calls");
    for clients in &calls {
        assert_eq!(
            clients.len(),
            1,
            "one verification mixed clients {clients:?}"
        );
    }
    assert_eq!(calls.len(), 3, "one verification per client");
}

/// A verifier that miscounts within spans but gets the total right (two verdicts for a lone
/// receipt, one too few for three) must not have its verdicts shifted onto other receipts: the
/// whole group is refused.
#[test]
fn a_verifier_miscounting_one_clients_span_gets_the_group_refused() {
    struct Miscounting;
    impl BatchVerifier for Miscounting {
        fn verify(&self, receipts: &[ReceiptView<'_>]) -> Vec<Verdict> {
            let count = if receipts.len() == 1 {
                2
            } else {
                receipts.len() - 1
            };
            vec![Ok(()); count]
        }
    }
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let request = |client_id: u64, receipts: u64| SubmitRequest {
        client_id,
        producer_id: 1,
        session_epoch: 1,
        batch_seq: 1,
        receipts: ReceiptBatch::from_receipts(
            &(0..receipts)
                .map(|nonce| {
                    crate::receipt::UnsignedReceipt {
                        payer: PayerKey(key.verifying_key().to_bytes()),
                        payee: crate::receipt::Address([2; 20]),
                        amount: 5,
                        nonce,
                        timestamp_ms: 0,
                        request_hash: [0; 32],
                        session: false,
                    }
                    .sign(&key, &crate::Domain::default())
                })
                .collect::<Vec<_>>(),
        ),
        prejudged: Vec::new(),
    };
    let requests = [request(1, 1), request(2, 3)];
    let group: Vec<(&SubmitRequest, Signatures)> = requests
        .iter()
        .map(|request| (request, Signatures::Unchecked))
        .collect();
    let verdicts = group_verdicts(&Miscounting, &group);
    assert_eq!(
        verdicts,
        vec![
            vec![Err(Reason::BadSignature)],
            vec![Err(Reason::BadSignature); 3]
        ]
    );
}

/// Accepts every signature. Its first call returns only once a later call has returned (or
/// after 10 s), and says which happened: two groups verified at once, or one at a time.
#[derive(Default)]
struct FirstCallWaitsForTheSecond {
    calls: std::sync::atomic::AtomicUsize,
    second_done: Mutex<bool>,
    second_done_changed: std::sync::Condvar,
    overtaken: AtomicBool,
}

impl BatchVerifier for FirstCallWaitsForTheSecond {
    fn verify(&self, receipts: &[ReceiptView<'_>]) -> Vec<Verdict> {
        let mut second_done = self.second_done.lock().expect("flag");
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            let (second_done, _) = self
                .second_done_changed
                .wait_timeout_while(second_done, std::time::Duration::from_secs(10), |done| {
                    !*done
                })
                .expect("flag");
            self.overtaken.store(*second_done, Ordering::SeqCst);
        } else {
            *second_done = true;
            self.second_done_changed.notify_all();
        }
        vec![Ok(()); receipts.len()]
    }
}

/// Returns once `reached` holds, looking every millisecond.
fn wait_until(reached: impl Fn() -> bool) {
    while !reached() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// An engine that accepts unknown payers, its verifier, and a request for batch `batch_seq` of
/// one producer: one receipt, nonce `batch_seq`.
fn engine_and_request<V: BatchVerifier>(
    dir: &std::path::Path,
    verifier: V,
) -> (Engine, Arc<V>, impl Fn(u64) -> SubmitRequest) {
    use crate::receipt::{Address, UnsignedReceipt};

    let mut config = EngineConfig::new(dir);
    config.ledger.unknown_payers = UnknownPayers::Accept;
    let verifier = Arc::new(verifier);
    let engine =
        Engine::open(config, Arc::clone(&verifier) as Arc<dyn BatchVerifier>).expect("open");
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let request = move |batch_seq: u64| SubmitRequest {
        client_id: 1,
        producer_id: 1,
        session_epoch: 1,
        batch_seq,
        receipts: ReceiptBatch::from_receipts(&[UnsignedReceipt {
            payer: PayerKey(key.verifying_key().to_bytes()),
            payee: Address([2; 20]),
            amount: 5,
            nonce: batch_seq,
            timestamp_ms: now_ms,
            request_hash: [0; 32],
            session: false,
        }
        .sign(&key, &crate::Domain::default())]),
        prejudged: Vec::new(),
    };
    (engine, verifier, request)
}

/// Two groups verify at once, and the writer still takes them in submission order: a second
/// batch whose verification ends while the first's is still running is applied, and acked,
/// only after the first. (Fails with the stage handing groups on as they finish: the second
/// batch is acked while the first still verifies; and with one group at a time.)
#[test]
fn a_group_verified_sooner_waits_for_the_one_submitted_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, verifier, request) =
        engine_and_request(dir.path(), FirstCallWaitsForTheSecond::default());

    let mut first = engine.submit(request(1)).expect("queued");
    wait_until(|| verifier.calls.load(Ordering::SeqCst) > 0);
    let second = engine.submit(request(2)).expect("queued");
    let second = futures::executor::block_on(second)
        .expect("answered")
        .expect("acked");
    assert_eq!((second.accepted, second.rejections), (1, Vec::new()));
    assert!(
        verifier.overtaken.load(Ordering::SeqCst),
        "the second batch was not verified while the first was"
    );
    let first = first
        .try_recv()
        .expect("answered")
        .expect("the first batch is acked before the second")
        .expect("acked");
    assert_eq!(first.accepted, 1);
    engine.shutdown().expect("clean");
}

/// A shutdown asked for while two groups verify waits for both: each is applied and acked, in
/// order, and the engine stops cleanly.
#[test]
fn a_shutdown_while_two_groups_verify_finishes_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, verifier, request) =
        engine_and_request(dir.path(), FirstCallWaitsForTheSecond::default());
    let first = engine.submit(request(1)).expect("queued");
    wait_until(|| verifier.calls.load(Ordering::SeqCst) > 0);
    let second = engine.submit(request(2)).expect("queued");
    engine.shutdown().expect("clean");
    for (seq, ack) in [(1, first), (2, second)] {
        let ack = futures::executor::block_on(ack)
            .expect("answered")
            .expect("acked");
        assert_eq!((ack.batch_seq, ack.accepted), (seq, 1));
    }
}

/// Records the receipts of each call; its first two calls wait until released (10 s at most),
/// so what is submitted meanwhile queues up in front of the stage. Refuses every signature.
#[derive(Default)]
struct HoldsTheFirstTwoCalls {
    calls: Mutex<Vec<usize>>,
    released: Mutex<bool>,
    wake: std::sync::Condvar,
}

impl HoldsTheFirstTwoCalls {
    fn started(&self) -> usize {
        self.calls.lock().expect("calls").len()
    }

    fn release(&self) {
        *self.released.lock().expect("released") = true;
        self.wake.notify_all();
    }
}

impl BatchVerifier for HoldsTheFirstTwoCalls {
    fn verify(&self, receipts: &[ReceiptView<'_>]) -> Vec<Verdict> {
        let call = {
            let mut calls = self.calls.lock().expect("calls");
            calls.push(receipts.len());
            calls.len()
        };
        if call <= 2 {
            let released = self.released.lock().expect("released");
            let timeout = std::time::Duration::from_secs(10);
            drop(
                self.wake
                    .wait_timeout_while(released, timeout, |released| !*released),
            );
        }
        vec![Err(Reason::BadSignature); receipts.len()]
    }
}

/// One-receipt batches (x402's settles) queued while both verifying threads are busy are
/// verified in one call: a group takes them all, up to as many receipts as four batches of 256,
/// not just four. And an unsequenced batch's signatures are the stage's to check, like any
/// other's: this verifier refuses them all. (With groups of at most four batches, the last eight
/// took two calls.)
#[test]
fn queued_one_receipt_batches_share_one_verification() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, verifier, request) =
        engine_and_request(dir.path(), HoldsTheFirstTwoCalls::default());
    let submit = |nonce| {
        engine
            .submit_unsequenced(1, request(nonce).receipts)
            .expect("queued")
    };
    let mut acks = vec![submit(1)];
    wait_until(|| verifier.started() >= 1);
    acks.push(submit(2));
    wait_until(|| verifier.started() >= 2);
    acks.extend((3..=10).map(submit));
    verifier.release();
    for ack in acks {
        let ack = futures::executor::block_on(ack)
            .expect("answered")
            .expect("acked");
        assert_eq!(ack.rejections, vec![(0, Reason::BadSignature)]);
    }
    assert_eq!(*verifier.calls.lock().expect("calls"), vec![1, 1, 8]);
    engine.shutdown().expect("clean");
}

struct Panics;

impl BatchVerifier for Panics {
    fn verify(&self, _: &[ReceiptView<'_>]) -> Vec<Verdict> {
        panic!("a verifier bug");
    }
}

/// A verifier that panics stops the engine with an error instead of hanging it: the batch gets
/// no ack, and `shutdown` says the stage panicked. (Hung before: the stage never told the writer
/// to stop, and the writer waited for control messages from the handle being shut down.)
#[test]
fn a_verifier_panic_ends_the_engine_with_an_error_not_a_hang() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, _, request) = engine_and_request(dir.path(), Panics);
    let ack = engine.submit(request(1)).expect("queued");
    assert!(
        futures::executor::block_on(ack).is_err(),
        "a batch the verifier never judged was answered"
    );
    let (done, stopped) = std::sync::mpsc::channel();
    std::thread::spawn(move || drop(done.send(engine.shutdown())));
    let stopped = stopped
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("shutdown returned within 30 s");
    assert!(
        stopped.is_err(),
        "a panicked stage was reported as a clean stop"
    );
}
