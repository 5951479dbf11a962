//! The receipt archive: what is accepted is archived with its group, in apply order, once;
//! nothing else is; states, pruning and corruption as an auditor sees them.

use super::{LedgerReaderFor, funded_payer, ledger, open_ledger, receipt, session, update};
use crate::ledger::archive::archive_key;
use crate::ledger::state::Ledger;
use crate::ledger::{
    ArchiveState, EpochStatus, LedgerConfig, LedgerError, LedgerReader, record::batch_digest,
};
use crate::receipt::{Receipt, ReceiptBatch};
use crate::store::{Cf, StoreBatch, StoreError};
use crate::verdict::Reason;

fn reader(ledger: &Ledger) -> LedgerReader {
    LedgerReader::new(ledger.store())
}

/// The archived bytes of `epoch`, with their indices.
fn archived(ledger: &Ledger, epoch: u64) -> Vec<(u64, Vec<u8>)> {
    reader(ledger)
        .archived_receipts(epoch, None, usize::MAX)
        .expect("read archive")
        .into_iter()
        .map(|entry| (entry.index, entry.bytes.to_vec()))
        .collect()
}

fn bytes(receipts: &[&Receipt]) -> Vec<(u64, Vec<u8>)> {
    receipts
        .iter()
        .enumerate()
        .map(|(index, receipt)| (index as u64, receipt.to_bytes().to_vec()))
        .collect()
}

/// One receipt of 10 from a funded payer, accepted and written.
fn accept_one(ledger: &mut Ledger) {
    let (key, _) = funded_payer(ledger, 4);
    let batch = ReceiptBatch::from_receipts(&[receipt(&key, 10, 1)]);
    ledger.apply_all(session(1), &batch).expect("apply");
    ledger.commit().expect("commit");
}

/// A mixed batch: the accepted receipts are archived in the order judged, with consecutive
/// indices, and no refused one (duplicate, overdraft, bad signature) is.
#[test]
fn accepted_receipts_are_archived_in_order_and_rejected_never() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = ledger(dir.path());
    let (key, _) = funded_payer(&mut ledger, 4);
    let first = receipt(&key, 30, 1);
    let overdraft = receipt(&key, 200, 2);
    let bad_signature = receipt(&key, 5, 3);
    let last = receipt(&key, 20, 4);
    let batch = ReceiptBatch::from_receipts(&[first, first, overdraft, bad_signature, last]);
    let verdicts = [Ok(()), Ok(()), Ok(()), Err(Reason::BadSignature), Ok(())];
    let ack = ledger
        .apply_batch(
            session(1),
            Some(batch_digest(&batch)),
            &batch,
            &verdicts,
            1_000,
        )
        .expect("apply");
    assert_eq!(ack.accepted, 2);
    ledger.commit().expect("commit");
    assert_eq!(archived(&ledger, 1), bytes(&[&first, &last]));

    // The next group continues the epoch's indices; paging resumes after an index.
    let next = receipt(&key, 1, 5);
    let batch = ReceiptBatch::from_receipts(&[next]);
    ledger.apply_all(session(2), &batch).expect("apply");
    ledger.commit().expect("commit");
    let page = reader(&ledger)
        .archived_receipts(1, Some(0), 1)
        .expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!((page[0].index, page[0].bytes), (1, last.to_bytes()));
    assert_eq!(archived(&ledger, 1), bytes(&[&first, &last, &next]));
    assert_eq!(
        reader(&ledger).archive_disk().expect("disk").receipts,
        3,
        "receipts held"
    );
}

/// A batch re-sent under its sequence number, before and after its group is written, gets its
/// ack again and archives nothing twice.
#[test]
fn a_resent_batch_archives_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = ledger(dir.path());
    let (key, _) = funded_payer(&mut ledger, 4);
    let batch = ReceiptBatch::from_receipts(&[receipt(&key, 10, 1), receipt(&key, 10, 2)]);
    ledger.apply_all(session(1), &batch).expect("apply");
    let in_flight = ledger.close_group().expect("close");
    ledger
        .apply_all(session(1), &batch)
        .expect("re-send in flight");
    ledger.store.write(in_flight).expect("write");
    ledger.written();
    ledger.commit().expect("commit");
    ledger.apply_all(session(1), &batch).expect("re-send");
    ledger.commit().expect("commit");
    assert_eq!(archived(&ledger, 1).len(), 2);
}

/// The archive is on disk with the ledger: a reopened ledger reads it, and the states follow
/// the epoch from open through sealed.
#[test]
fn the_archive_survives_a_reopen_and_its_states_follow_the_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = ledger(dir.path());
    let (key, _) = funded_payer(&mut ledger, 4);
    let sent = receipt(&key, 10, 1);
    ledger
        .apply_all(session(1), &ReceiptBatch::from_receipts(&[sent]))
        .expect("apply");
    ledger.commit().expect("commit");
    assert_eq!(
        reader(&ledger).archive_state(1).expect("state"),
        ArchiveState::Open
    );
    drop(ledger);

    let mut ledger = super::ledger(dir.path());
    assert_eq!(archived(&ledger, 1), bytes(&[&sent]));
    ledger.begin_seal().expect("cut");
    ledger.commit().expect("commit");
    assert_eq!(
        reader(&ledger).archive_state(1).expect("state"),
        ArchiveState::Sealing
    );
    ledger.finish_running_seal().expect("seal");
    let state = |epoch| reader(&ledger).archive_state(epoch).expect("state");
    assert_eq!(state(1), ArchiveState::Archived { receipts: 1 });
    assert_eq!(state(2), ArchiveState::Open);
    assert_eq!(state(3), ArchiveState::Unknown);
    assert_eq!(state(0), ArchiveState::Unknown);
}

/// `count` epochs sealed with one receipt each (nonces from `nonce`).
fn seal_epochs(ledger: &mut Ledger, key: &ed25519_dalek::SigningKey, count: u64, seq: u64) {
    for n in 0..count {
        let batch = ReceiptBatch::from_receipts(&[receipt(key, 1, seq + n)]);
        ledger.apply_all(session(seq + n), &batch).expect("apply");
        ledger.seal().expect("seal");
    }
}

/// Pruning deletes every epoch through the watermark and nothing after it, never an epoch the
/// ledger has not committed, and never goes back.
#[test]
fn prune_respects_the_watermark_and_is_monotone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = ledger(dir.path());
    let (key, _) = funded_payer(&mut ledger, 4);
    seal_epochs(&mut ledger, &key, 3, 1);
    for epoch in [1, 2] {
        ledger
            .record_epoch(update(epoch, EpochStatus::Committed))
            .expect("commit");
    }
    ledger.commit().expect("write");

    // Epoch 3 is only sealed, epoch 4 open: neither may lose its receipts.
    for through in [3, 4] {
        assert!(matches!(
            ledger.prune_archive(through),
            Err(LedgerError::PruneRefused { .. })
        ));
    }
    assert!(ledger.prune_archive(2).expect("prune"));
    ledger.commit().expect("write");
    let state = |ledger: &Ledger, epoch| reader(ledger).archive_state(epoch).expect("state");
    assert_eq!(state(&ledger, 1), ArchiveState::Pruned);
    assert_eq!(state(&ledger, 2), ArchiveState::Pruned);
    assert_eq!(state(&ledger, 3), ArchiveState::Archived { receipts: 1 });
    assert!(archived(&ledger, 1).is_empty() && archived(&ledger, 2).is_empty());
    assert_eq!(archived(&ledger, 3).len(), 1);
    assert_eq!(reader(&ledger).archive_pruned_through().expect("read"), 2);

    // A lower or equal watermark changes nothing, also after a restart.
    drop(ledger);
    let mut ledger = super::ledger(dir.path());
    assert!(!ledger.prune_archive(1).expect("lower"));
    assert!(!ledger.prune_archive(2).expect("equal"));
    ledger.commit().expect("write");
    assert_eq!(reader(&ledger).archive_pruned_through().expect("read"), 2);
    assert_eq!(reader(&ledger).archive_disk().expect("disk").receipts, 1);
}

/// A directory created without the archive stores nothing and says so, also when a later start
/// asks for it (the directory decides).
#[test]
fn a_disabled_directory_stores_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let off = LedgerConfig {
        archive_receipts: false,
        ..LedgerConfig::default()
    };
    let mut ledger = open_ledger(dir.path(), off);
    accept_one(&mut ledger);
    drop(ledger);
    let ledger = super::ledger(dir.path());
    let reader = reader(&ledger);
    assert_eq!(
        reader.archive_state(1).expect("state"),
        ArchiveState::Disabled
    );
    assert!(
        reader
            .archived_receipts(1, None, 10)
            .expect("read")
            .is_empty()
    );
    assert_eq!(reader.archive_disk().expect("disk").receipts, 0);
}

/// A directory made before the archive existed (its format record ends before the flag, and it
/// has no archive column family) opens, as a ledger without an archive.
#[test]
fn a_directory_from_before_the_archive_opens_without_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let old_families = Cf::ALL
            .iter()
            .filter(|cf| **cf != Cf::Archive)
            .map(|cf| cf.name());
        let db = rocksdb::DB::open_cf(&options, dir.path(), old_families).expect("old db");
        let mut format = super::super::record::FormatRecord {
            layout: super::super::record::LAYOUT_VERSION,
            window_nonces: 1024,
            archive_receipts: false,
        }
        .encode();
        format.pop();
        let meta = db.cf_handle(Cf::Meta.name()).expect("meta");
        db.put_cf(meta, crate::store::FORMAT_KEY, format)
            .expect("format");
    }
    let mut ledger = super::ledger(dir.path());
    accept_one(&mut ledger);
    assert_eq!(
        reader(&ledger).archive_state(1).expect("state"),
        ArchiveState::Disabled
    );
    assert!(archived(&ledger, 1).is_empty());
}

/// A disputed epoch's record names the open epoch its amounts went into.
#[test]
fn a_dispute_records_the_epoch_it_was_carried_into() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = ledger(dir.path());
    let (key, _) = funded_payer(&mut ledger, 4);
    seal_epochs(&mut ledger, &key, 2, 1);
    ledger
        .record_epoch(update(1, EpochStatus::Disputed))
        .expect("dispute");
    ledger.commit().expect("write");
    assert_eq!(LedgerReaderFor(&ledger).epoch(1).carried_into, Some(3));
    assert_eq!(LedgerReaderFor(&ledger).epoch(2).carried_into, None);
}

/// A stored entry that is not 176 bytes is reported with its key, never skipped.
#[test]
fn a_corrupted_archive_entry_is_reported_not_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = ledger(dir.path());
    accept_one(&mut ledger);
    let mut batch = StoreBatch::default();
    let bad = archive_key(1, 1);
    batch.put(Cf::Archive, bad, vec![7; 10]);
    ledger.store.write(batch).expect("write");
    let error = reader(&ledger)
        .archived_receipts(1, None, 10)
        .expect_err("corrupt entry");
    assert!(
        matches!(&error, StoreError::Corrupt { cf: "archive", problem }
            if problem.contains(&hex::encode(bad))),
        "{error}"
    );
}
