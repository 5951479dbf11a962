//! The epoch state machine: commits, disputes and shortfalls move money once.

use std::path::Path;

use super::{
    all_channels, expected, funded_payer, ledger, pay, receipt, sealing_ledger, session, update,
};
use crate::ledger::state::Ledger;
use crate::ledger::{EpochStatus, LedgerReader};
use crate::receipt::{Address, PayerKey, ReceiptBatch};

/// A ledger in `dir` whose first epoch, returned, is sealed with one receipt of 30 from its
/// payer.
fn one_receipt_sealed(dir: &Path) -> (Ledger, PayerKey, u64) {
    let mut ledger = ledger(dir);
    let (key, payer) = funded_payer(&mut ledger, 4);
    let batch = ReceiptBatch::from_receipts(&[receipt(&key, 30, 1)]);
    ledger.apply_all(session(1), &batch).expect("apply");
    let sealed = ledger.seal().expect("seal");
    (ledger, payer, sealed.epoch)
}

/// A repeated `Committed` while the first one's write is in flight moves the money once.
#[test]
fn repeated_commit_while_the_first_is_in_flight_settles_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut ledger, payer, sealed) = one_receipt_sealed(dir.path());
    let committed = update(sealed, EpochStatus::Committed);
    ledger.record_epoch(committed).expect("commit");
    let in_flight = ledger.close_group().expect("close");
    ledger.record_epoch(committed).expect("repeat");
    ledger.store.write(in_flight).expect("write");
    ledger.written();
    ledger.commit().expect("commit");
    let state = ledger.payers.get(&payer).copied().expect("cached");
    assert_eq!((state.pending, state.settled), (0, 30));
}

/// The commit loop can finish an epoch just after the funds loop recorded the arbiter's
/// dispute of it: that `Committed` is older news than the dispute and must neither fail (it
/// stopped serve) nor settle the carried amounts.
#[test]
fn commit_news_after_a_dispute_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut ledger, payer, sealed) = one_receipt_sealed(dir.path());
    ledger
        .record_epoch(update(sealed, EpochStatus::Disputed))
        .expect("dispute");
    for stale in [
        EpochStatus::Committed,
        EpochStatus::Submitted,
        EpochStatus::Sealed,
    ] {
        ledger
            .record_epoch(update(sealed, stale))
            .expect("stale news");
    }
    ledger.commit().expect("commit");
    assert_eq!(
        ledger.epoch_record(sealed).expect("record").status,
        EpochStatus::Disputed
    );
    let state = ledger.payers.get(&payer).copied().expect("cached");
    assert_eq!(
        (state.pending, state.settled, state.unsealed),
        (30, 0, 30),
        "still owed, carried into the open epoch, never settled"
    );
}

/// A dispute carried into the open epoch while the previous one is being sealed: payers,
/// payees and channels the seal has not reached give their amounts to the sealing epoch
/// first, so the carried amounts land in the next epoch only.
#[test]
fn a_dispute_carried_during_a_seal_lands_in_the_next_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = sealing_ledger(dir.path());
    let channels = all_channels();
    pay(&mut ledger, 1, 1, &channels);
    let first = ledger.seal().expect("seal 1");
    ledger
        .record_epoch(update(1, EpochStatus::Committed))
        .expect("commit");
    pay(&mut ledger, 2, 2, &channels);
    ledger.commit().expect("commit");
    ledger.begin_seal().expect("cut 2");
    ledger.commit().expect("commit");
    ledger
        .record_epoch(update(1, EpochStatus::Disputed))
        .expect("dispute");
    ledger.commit().expect("commit");
    let second = ledger.finish_running_seal().expect("seal 2");
    assert_eq!(second, expected(2, 2, &channels));
    let third = ledger.seal().expect("seal 3");
    assert_eq!(third.debits, first.debits);
    assert_eq!(third.credits, first.credits);
    // The carried channels are leaves again, at their cumulative now.
    assert_eq!(third.leaves, second.leaves);
}

/// An overdraft's uncovered amount is cut from what the payer paid in the epoch (its leaf
/// minus the previous one, not its cumulative), in payee order; committing writes it off
/// instead of settling it, and a dispute of that commit puts everything back.
#[test]
fn a_shortfall_is_written_off_on_commit_and_put_back_by_a_dispute() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = sealing_ledger(dir.path());
    let channels = [(0, 0), (0, 1), (1, 0)];
    pay(&mut ledger, 1, 1, &channels);
    ledger.seal().expect("seal 1");
    ledger
        .record_epoch(update(1, EpochStatus::Committed))
        .expect("commit 1");
    pay(&mut ledger, 2, 2, &channels);
    ledger.seal().expect("seal 2");
    let payer = PayerKey([1; 32]);
    let (first, second) = (Address([1; 20]), Address([2; 20]));
    // Debited 2,000 + 2,001 in epoch 2; the chain holds 1,000 of it. Asking twice replaces.
    for _ in 0..2 {
        ledger.record_shortfall(2, payer, 1_000).expect("shortfall");
        ledger.commit().expect("write");
    }
    let reader = LedgerReader::new(ledger.store());
    assert_eq!(
        reader.epoch_shortfalls(2).expect("read"),
        vec![(payer, first, 2_000), (payer, second, 1_001)]
    );
    ledger
        .record_epoch(update(2, EpochStatus::Committed))
        .expect("commit 2");
    ledger.commit().expect("write");
    let balances = |reader: &LedgerReader| {
        let payer = reader.payer(&payer).expect("read").expect("payer");
        let first = reader.payee(&first).expect("read").expect("payee");
        let second = reader.payee(&second).expect("read").expect("payee");
        (
            (payer.pending, payer.settled, payer.shortfall),
            (first.settled, first.shortfall),
            (second.settled, second.shortfall),
        )
    };
    assert_eq!(
        balances(&reader),
        ((0, 2_001 + 1_000, 3_001), (4_020, 2_000), (2_001, 1_001))
    );
    assert_eq!(
        ledger
            .record_shortfall(2, payer, 0)
            .map_err(|e| e.to_string()),
        Err("epoch 2 cannot go from Committed to Committed".to_string()),
        "a committed epoch's amounts are final"
    );
    ledger
        .record_epoch(update(2, EpochStatus::Disputed))
        .expect("dispute 2");
    ledger.commit().expect("write");
    assert_eq!(
        balances(&reader),
        ((4_001, 2_001, 0), (2_010, 0), (1_001, 0)),
        "back to pending, to be carried into epoch 3"
    );
}
