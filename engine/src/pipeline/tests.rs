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
