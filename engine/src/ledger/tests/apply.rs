//! Receipt application: re-sends, refused batches, overflow.
use ed25519_dalek::SigningKey;

use super::{funded_payer, ledger, receipt, session};
use crate::ledger::error::LedgerError;
use crate::ledger::record::{ChannelKey, ChannelState};
use crate::ledger::state::{Ledger, SessionId};
use crate::ledger::{FundsEvent, FundsKind};
use crate::receipt::{Address, PayerKey, ReceiptBatch};
use crate::verdict::Reason;

/// The re-send arrives while the original's group is closed but its write has not returned:
/// the answer comes from the group in flight, and nothing is applied twice.
#[test]
fn resend_while_the_original_is_in_flight_gets_the_same_ack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = ledger(dir.path());
    let (key, payer) = funded_payer(&mut ledger, 3);
    let batch = ReceiptBatch::from_receipts(&[receipt(&key, 10, 1), receipt(&key, 10, 1)]);
    let ack = ledger.apply_all(session(5), &batch).expect("apply");
    let in_flight = ledger.close_group().expect("close");

    let again = ledger.apply_all(session(5), &batch).expect("resend");
    assert_eq!(again, ack);
    assert!(ledger.group_is_empty(), "the re-send changed nothing");
    ledger.store.write(in_flight).expect("write");
    ledger.written();

    let from_disk = ledger.apply_all(session(5), &batch).expect("resend");
    assert_eq!(from_disk, ack);
    assert_eq!(ledger.payers.get(&payer).map(|p| p.pending), Some(10));
}

/// An unsequenced batch leaves nothing but its accepted receipts: one refused for its signature
/// takes nothing, so the receipt its payer signs under the same nonce is accepted after it, and
/// the accepted one sent again is judged again, a replay now, not answered with its first ack.
/// (Sequenced, the forged batch's ack would be answered to the genuine one.)
#[test]
fn an_unsequenced_batch_is_judged_each_time_and_a_refused_one_takes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = ledger(dir.path());
    let (key, payer) = funded_payer(&mut ledger, 3);
    let batch = ReceiptBatch::from_receipts(&[receipt(&key, 10, 1)]);
    let mut apply = |verdict| {
        ledger
            .apply_batch(session(0), None, &batch, &[verdict], 1_000)
            .expect("apply")
    };
    let forged = apply(Err(Reason::BadSignature));
    assert_eq!(forged.rejections, vec![(0, Reason::BadSignature)]);
    let genuine = apply(Ok(()));
    assert_eq!((genuine.accepted, genuine.rejections), (1, Vec::new()));
    let again = apply(Ok(()));
    assert_eq!(again.rejections, vec![(0, Reason::Duplicate)]);
    assert_eq!(ledger.payers.get(&payer).map(|p| p.pending), Some(10));
    assert!(
        ledger.producers.get(&session(0).producer()).is_none(),
        "an unsequenced batch loaded or kept a producer session"
    );
}

/// Another batch under a remembered number is refused wherever the original's ack is kept:
/// in the open group, in the group being written, and on disk.
#[test]
fn other_receipts_under_a_remembered_number_are_refused_wherever_the_ack_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = ledger(dir.path());
    let (key, payer) = funded_payer(&mut ledger, 3);
    let original = ReceiptBatch::from_receipts(&[receipt(&key, 10, 1)]);
    let other = ReceiptBatch::from_receipts(&[receipt(&key, 20, 2)]);
    let refused = |ledger: &mut Ledger| {
        let result = ledger.apply_all(session(5), &other);
        assert!(
            matches!(
                result,
                Err(LedgerError::BatchMismatch {
                    producer_id: 1,
                    session_epoch: 0,
                    batch_seq: 5
                })
            ),
            "{result:?}"
        );
    };
    ledger.apply_all(session(5), &original).expect("apply");
    refused(&mut ledger);
    let in_flight = ledger.close_group().expect("close");
    refused(&mut ledger);
    ledger.store.write(in_flight).expect("write");
    ledger.written();
    refused(&mut ledger);
    assert!(ledger.group_is_empty(), "the refusals changed nothing");

    // The same producer id under another client is another producer.
    let elsewhere = SessionId {
        client_id: 2,
        ..session(5)
    };
    let ack = ledger.apply_all(elsewhere, &other).expect("apply");
    assert_eq!(ack.accepted, 1);
    assert_eq!(ledger.payers.get(&payer).map(|p| p.pending), Some(30));
}

/// Overflow cannot be reached with u64 amounts and real deposits in a test's lifetime, so the
/// state is seeded close to the limit.
#[test]
fn a_total_that_would_overflow_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = ledger(dir.path());
    let key = SigningKey::from_bytes(&[3; 32]);
    let payer = PayerKey(key.verifying_key().to_bytes());
    ledger
        .apply_funds(FundsEvent {
            payer,
            kind: FundsKind::Deposit,
            amount: u128::MAX,
            block: 1,
            log_index: 0,
        })
        .expect("deposit");
    let channel = ChannelKey {
        payer,
        payee: Address([5; 20]),
    };
    ledger
        .channels
        .load(&ledger.store, &channel, || ChannelState::empty(1024))
        .expect("load");
    ledger
        .channels
        .get_mut(&channel)
        .expect("cached")
        .cumulative = u128::MAX - 1;
    let batch = ReceiptBatch::from_receipts(&[receipt(&key, 2, 1), receipt(&key, 1, 2)]);
    let ack = ledger.apply_all(session(0), &batch).expect("apply");
    assert_eq!(ack.rejections, vec![(0, Reason::Overflow)]);
    assert_eq!(ack.accepted, 1);
    assert_eq!(
        ledger.channels.get(&channel).expect("cached").cumulative,
        u128::MAX
    );
    assert_eq!(ledger.payers.get(&payer).expect("cached").pending, 1);
}
