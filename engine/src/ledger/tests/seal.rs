//! Sealing in chunks between receipt groups, and resuming a seal after a crash.
use super::{LedgerReaderFor, PAYERS, all_channels, expected, pay, sealing_ledger};
use crate::ledger::record::EntryCounts;
use crate::ledger::{LedgerReader, SealedEpoch};
use crate::store::Cf;

/// Receipts of the next epoch arrive between the chunks of a seal and touch channels, payers
/// and payees the seal has and has not reached yet: the sealed epoch holds exactly its own
/// receipts (leaves at the cut), and the next one exactly the rest.
#[test]
fn receipts_between_seal_chunks_land_in_the_next_epoch_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = sealing_ledger(dir.path());
    let channels = all_channels();
    pay(&mut ledger, 1, 1, &channels);
    ledger.commit().expect("commit");
    assert_eq!(ledger.begin_seal().expect("cut"), 1);
    ledger.commit().expect("commit");
    // The seal reaches the first two channels; everything else is still ahead of it.
    assert_eq!(ledger.seal_chunk().expect("chunk"), None);
    ledger.commit().expect("commit");
    // Epoch 2 pays every channel again, a few at a time, each batch sharing its group with
    // one more chunk of the seal.
    for (seq, batch) in channels.chunks(5).enumerate() {
        pay(&mut ledger, 2 + seq as u64, 2, batch);
        assert_eq!(ledger.seal_chunk().expect("chunk"), None);
        ledger.commit().expect("commit");
    }
    let first = ledger.finish_running_seal().expect("seal 1");
    assert_eq!(first, expected(1, 1, &channels));
    let record = LedgerReaderFor(&ledger).epoch(1);
    assert_eq!((record.receipts, record.leaves), (12, 12));
    assert_eq!(
        record.counts,
        counts_of(&first),
        "the seal counted the entries it wrote, those frozen early included"
    );
    assert_eq!(
        record.amount,
        first.debits.iter().map(|(_, d)| d).sum::<u128>()
    );

    let second = ledger.seal().expect("seal 2");
    assert_eq!(second, expected(2, 2, &channels));
    assert_eq!(ledger.open.epoch, 3);
    assert!(ledger.sealing.is_none());
    assert_eq!(
        ledger
            .store
            .snapshot()
            .scan(Cf::OpenEpoch, &[], None, 10)
            .expect("scan"),
        Vec::new(),
        "every index key of both epochs was consumed"
    );
}

/// A crash after chunk k (with receipts of the next epoch written between chunks, and a
/// group that never reached the disk) loses nothing: the restarted ledger knows the seal is
/// running, resumes it from the disk, and produces the same epoch as a seal that ran through.
#[test]
fn a_seal_cut_short_by_a_crash_resumes_to_the_same_epoch() {
    let channels = all_channels();
    let reference_dir = tempfile::tempdir().expect("tempdir");
    let mut reference = sealing_ledger(reference_dir.path());
    pay(&mut reference, 1, 1, &channels);
    let reference = reference.seal().expect("seal");

    for crash_after in [0, 1, 3, 5] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ledger = sealing_ledger(dir.path());
        pay(&mut ledger, 1, 1, &channels);
        ledger.commit().expect("commit");
        ledger.begin_seal().expect("cut");
        ledger.commit().expect("commit");
        for chunk in 0..crash_after {
            // Receipts of epoch 2 on every other chunk, ahead of the seal and behind it.
            if chunk % 2 == 0 {
                let (p, q) = channels[(chunk * 5) % channels.len()];
                pay(
                    &mut ledger,
                    2 + chunk as u64,
                    2,
                    &[(p, q), (PAYERS - 1 - p, q)],
                );
            }
            assert_eq!(ledger.seal_chunk().expect("chunk"), None);
            ledger.commit().expect("commit");
        }
        // The group being applied when the process dies: a chunk and a receipt, never
        // written, never acked.
        pay(&mut ledger, 100, 3, &[(3, 2)]);
        ledger.seal_chunk().expect("chunk");
        drop(ledger);

        let mut ledger = sealing_ledger(dir.path());
        assert_eq!(
            LedgerReader::new(ledger.store())
                .sealing_epoch()
                .expect("read")
                .map(|s| s.epoch),
            Some(1),
            "crash after chunk {crash_after}"
        );
        assert_eq!(ledger.sealing_epoch(), Some(1));
        let resumed = ledger.finish_running_seal().expect("resume");
        assert_eq!(resumed, reference, "crash after chunk {crash_after}");
        let record = LedgerReaderFor(&ledger).epoch(1);
        assert_eq!(record.leaves, 12);
        assert_eq!(
            record.counts,
            counts_of(&reference),
            "crash after chunk {crash_after}"
        );
    }
}

/// The entry counts a seal of `sealed` must have stored: one debit per payer, one credit per
/// payee.
fn counts_of(sealed: &SealedEpoch) -> Option<EntryCounts> {
    Some(EntryCounts {
        debits: sealed.debits.len() as u64,
        credits: sealed.credits.len() as u64,
    })
}
