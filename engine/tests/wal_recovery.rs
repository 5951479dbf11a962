//! Crash recovery from the write-ahead log of a real data directory, written through the engine.
//!
//! Every acked group is one RocksDB write fsynced before its ack, so the WAL holds it whole. A
//! power cut during a write leaves at most an incomplete last record, whose group was never
//! acked: the ledger must start and hold every earlier group exactly once. Damage to a complete
//! record is damage to acked data: the ledger must refuse to start and say so.
//!
//! The tests tamper with the `.log` file itself, so they first check that the WAL really holds
//! every group: the engine does not flush memtables on shutdown, and no table file exists.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use tollgate_engine::Receipt;
use tollgate_engine::pipeline::{BatchAck, Engine, EngineConfig, EngineError, LedgerError};
use tollgate_engine::store::StoreError;

/// Client batches written, each acked before the next is sent: one group, one WAL record each.
const BATCHES: u64 = 20;

/// RocksDB's WAL format (db/log_format.h): 32 KiB blocks of physical records, each a header
/// (crc32c: 4 bytes, payload length: 2, type: 1, and a 4-byte log number for the recyclable
/// types) and its payload. A block's tail too short for a header is padding.
const WAL_BLOCK_BYTES: usize = 32 * 1024;
const WAL_HEADER_BYTES: usize = 7;
const WAL_RECYCLABLE_HEADER_BYTES: usize = 11;
/// Record types that start a logical record (full or first fragment, legacy or recyclable).
const WAL_FIRST_TYPES: [u8; 4] = [1, 2, 5, 6];

/// A client batch with the ack it got.
type AckedBatch = (Vec<Receipt>, BatchAck);

/// One physical WAL record.
#[derive(Clone, Copy, Debug)]
struct WalRecord {
    offset: usize,
    header: usize,
    payload: usize,
    kind: u8,
}

impl WalRecord {
    fn end(&self) -> usize {
        self.offset + self.header + self.payload
    }
}

fn wal_records(bytes: &[u8]) -> Vec<WalRecord> {
    let mut records = Vec::new();
    let mut offset = 0;
    while offset + WAL_HEADER_BYTES <= bytes.len() {
        let block_left = WAL_BLOCK_BYTES - offset % WAL_BLOCK_BYTES;
        if block_left < WAL_HEADER_BYTES {
            offset += block_left;
            continue;
        }
        let payload = usize::from(u16::from_le_bytes([bytes[offset + 4], bytes[offset + 5]]));
        let kind = bytes[offset + 6];
        if kind == 0 && payload == 0 {
            break; // preallocated, never written
        }
        let header = match kind {
            5..=8 | 11 | 131 => WAL_RECYCLABLE_HEADER_BYTES,
            _ => WAL_HEADER_BYTES,
        };
        let record = WalRecord {
            offset,
            header,
            payload,
            kind,
        };
        assert!(record.end() <= bytes.len(), "the WAL as written is whole");
        records.push(record);
        offset = record.end();
    }
    records
}

/// A ledger whose acked groups all sit in its one WAL: a deposit, then `BATCHES` batches of one
/// receipt each (amount = batch number, so a lost and a doubled receipt cannot cancel out),
/// each acked before the next. Returns the WAL, its records, and every batch with its ack.
fn acked_groups(dir: &Path) -> (PathBuf, Vec<WalRecord>, Vec<AckedBatch>) {
    let engine = open(dir);
    let alice = signing_key(1);
    deposit(&engine, payer_of(&alice), 1_000_000, 1, 0);
    let batches: Vec<_> = (1..=BATCHES)
        .map(|seq| {
            let receipts = vec![receipt(&alice, payee(1), seq, seq)];
            let ack = submit(&engine, request(1, seq, &receipts)).expect("ack");
            assert_eq!(ack.accepted, 1);
            (receipts, ack)
        })
        .collect();
    engine.shutdown().expect("shutdown");

    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|entry| entry.expect("entry").path())
        .collect();
    let has = |ext: &str| {
        let mut found: Vec<_> = files
            .iter()
            .filter(|path| path.extension().is_some_and(|e| e == ext))
            .filter(|path| std::fs::metadata(path).is_ok_and(|m| m.len() > 0))
            .cloned()
            .collect();
        found.sort();
        found
    };
    assert_eq!(has("sst"), Vec::<PathBuf>::new(), "nothing was flushed");
    let wals = has("log");
    let [wal] = wals.as_slice() else {
        panic!("one WAL holds every group, found {wals:?}");
    };
    let records = wal_records(&std::fs::read(wal).expect("read wal"));
    let groups = records
        .iter()
        .filter(|r| WAL_FIRST_TYPES.contains(&r.kind))
        .count();
    // The format marker, the deposit and every batch.
    assert!(
        groups >= 2 + BATCHES as usize,
        "{groups} logical records in the WAL"
    );
    (wal.clone(), records, batches)
}

/// Cuts the WAL `into` bytes into its last record, as a power cut during that write would.
fn tear_last_record(dir: &Path, into: impl Fn(&WalRecord) -> usize) -> Vec<AckedBatch> {
    let (wal, records, batches) = acked_groups(dir);
    let last = records.last().expect("records");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .expect("open wal");
    file.set_len((last.offset + into(last)) as u64)
        .expect("truncate");
    file.sync_all().expect("sync");
    batches
}

/// After a torn tail the ledger starts; every group before the torn one is intact (its re-send
/// gets the stored ack), the torn batch is judged afresh and gets the ack it got before, and in
/// the end every receipt counts exactly once.
fn recovers_every_group_before_the_tear(dir: &Path, batches: &[AckedBatch]) {
    let engine = open(dir);
    let alice = payer_of(&signing_key(1));
    let (torn, intact) = batches.split_last().expect("batches");
    let intact_amount: u128 = (1..BATCHES).map(u128::from).sum();
    let pending = |engine: &Engine| {
        engine
            .reader()
            .payer(&alice)
            .expect("read")
            .expect("known")
            .pending
    };
    assert_eq!(
        pending(&engine),
        intact_amount,
        "the groups before the tear"
    );
    for (seq, (receipts, ack)) in (1..).zip(intact) {
        assert_eq!(
            &submit(&engine, request(1, seq, receipts)).expect("ack"),
            ack
        );
    }
    assert_eq!(
        &submit(&engine, request(1, BATCHES, &torn.0)).expect("ack"),
        &torn.1,
        "the torn batch, sent again"
    );
    let expected: u128 = (1..=BATCHES).map(u128::from).sum();
    let counted = pending(&engine);
    let (lost, double) = (
        expected.saturating_sub(counted),
        counted.saturating_sub(expected),
    );
    println!("torn WAL tail: lost {lost}, double {double}");
    assert_eq!((lost, double), (0, 0));
    engine.shutdown().expect("shutdown");
}

#[test]
fn wal_torn_inside_the_last_record_body_recovers_every_acked_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let batches = tear_last_record(dir.path(), |last| last.header + last.payload / 2);
    recovers_every_group_before_the_tear(dir.path(), &batches);
}

#[test]
fn wal_torn_inside_the_last_record_header_recovers_every_acked_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let batches = tear_last_record(dir.path(), |last| last.header / 2);
    recovers_every_group_before_the_tear(dir.path(), &batches);
}

/// Flipped bytes inside a complete record, in the middle of the WAL or in its last record, are
/// corruption of an acked group: the ledger refuses to start and names it.
#[test]
fn corrupt_complete_wal_record_refuses_start() {
    let picks: [fn(usize) -> usize; 2] = [|n| n / 2, |n| n - 1];
    for pick in picks {
        let dir = tempfile::tempdir().expect("tempdir");
        let (wal, records, _) = acked_groups(dir.path());
        let record = records[pick(records.len())];
        let mut bytes = std::fs::read(&wal).expect("read wal");
        let middle = record.offset + record.header + record.payload / 2;
        for byte in &mut bytes[middle..middle + 4] {
            *byte ^= 0x5a;
        }
        std::fs::write(&wal, bytes).expect("write wal");

        let error = Engine::open(EngineConfig::new(dir.path()), verifier())
            .expect_err("must refuse to start");
        assert!(
            matches!(
                error,
                EngineError::Ledger(LedgerError::Store(StoreError::Open { .. }))
            ),
            "{error}"
        );
        let message = error.to_string();
        assert!(message.contains("Corruption"), "{message}");
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
    }
}
