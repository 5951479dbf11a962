//! A data directory the ledger cannot trust is refused at start with a message naming the
//! problem, never served from. (Damage to the WAL itself: wal_recovery.rs.)

mod common;

use std::path::Path;

use common::*;
use tollgate_engine::pipeline::{Engine, EngineConfig, EngineError, LedgerError};
use tollgate_engine::store::StoreError;

fn open_err(config: EngineConfig) -> EngineError {
    Engine::open(config, verifier()).expect_err("must refuse to start")
}

/// A ledger with a few acked receipts, closed cleanly.
fn populated(dir: &Path) {
    let engine = open(dir);
    let alice = signing_key(1);
    deposit(&engine, payer_of(&alice), 1_000, 1, 0);
    for seq in 1..=20 {
        let ack = submit(
            &engine,
            request(1, seq, &[receipt(&alice, payee(1), 1, seq)]),
        )
        .expect("ack");
        assert_eq!(ack.accepted, 1);
    }
    engine.shutdown().expect("shutdown");
}

/// The store error a start in `dir` is refused with.
fn refused_by_store(dir: &Path) -> StoreError {
    match open_err(EngineConfig::new(dir)) {
        EngineError::Ledger(LedgerError::Store(error)) => error,
        other => panic!("refused for another reason than the store: {other}"),
    }
}

#[test]
fn garbage_current_file_refuses_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path());
    std::fs::write(dir.path().join("CURRENT"), b"MANIFEST-999999\n").expect("write");
    let error = refused_by_store(dir.path());
    assert!(matches!(error, StoreError::Open { .. }), "{error}");
}

#[test]
fn half_written_or_foreign_dir_refuses_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("000004.sst"), b"not ours").expect("write");
    let error = refused_by_store(dir.path());
    assert!(matches!(error, StoreError::NotADatabase { .. }), "{error}");
    assert!(error.to_string().contains("half-written"), "{error}");
}

#[test]
fn missing_current_in_a_real_ledger_refuses_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path());
    std::fs::remove_file(dir.path().join("CURRENT")).expect("remove");
    let error = refused_by_store(dir.path());
    assert!(matches!(error, StoreError::NotADatabase { .. }), "{error}");
}

#[test]
fn changed_window_size_refuses_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path());
    let mut config = EngineConfig::new(dir.path());
    config.ledger.window_nonces = 128;
    let error = open_err(config);
    assert!(
        matches!(error, EngineError::Ledger(LedgerError::Config { .. })),
        "{error}"
    );
    assert!(error.to_string().contains("window_nonces"), "{error}");
    // The directory itself is fine.
    let engine = open(dir.path());
    assert_eq!(balance(&engine, &payer_of(&signing_key(1))).pending, 20);
    engine.shutdown().expect("shutdown");
}
