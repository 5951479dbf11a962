//! The writer thread over a real RocksDB: replies wait for their group's write, and a seal
//! does not hold up the batches queued behind it.

use super::*;
use crate::ledger::record::batch_digest;
use crate::ledger::tests::{open_ledger, session};
use crate::ledger::{LedgerConfig, UnknownPayers};
use crate::receipt::{Address, Domain, PayerKey, Receipt, UnsignedReceipt};
use ed25519_dalek::SigningKey;
use futures::executor::block_on;

/// A batch re-sent while its original group is being written is answered from that group,
/// so its reply waits in the next group, which has nothing to write. If the original write
/// fails, neither reply may be an ack: the real writer and sync thread over a real RocksDB,
/// with the original write held until the re-send was handled.
#[test]
fn resend_answered_from_a_group_whose_write_fails_is_not_acked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LedgerConfig {
        unknown_payers: UnknownPayers::Accept,
        ..LedgerConfig::default()
    };
    let ledger = open_ledger(dir.path(), config.clone());
    let store = ledger.store();
    let (batches, batches_rx) = bounded(4);
    let (control, control_rx) = bounded(4);
    let (handled_tx, handled) = bounded(4);
    let mut writer =
        Writer::<LedgerError>::new(ledger, batches_rx, control_rx, config.group_receipts_max)
            .expect("writer");
    writer.handled = Some(handled_tx);
    let writer = std::thread::spawn(move || writer.run());

    let key = SigningKey::from_bytes(&[3; 32]);
    let receipt = UnsignedReceipt {
        payer: PayerKey(key.verifying_key().to_bytes()),
        payee: Address([5; 20]),
        amount: 10,
        nonce: 1,
        timestamp_ms: now_ms(),
        request_hash: [0; 32],
        session: false,
    }
    .sign(&key, &Domain::default());
    let receipts = ReceiptBatch::from_receipts(&[receipt]);
    let digest = batch_digest(&receipts);
    let send = || {
        let (reply, answer) = oneshot::channel();
        batches
            .send(WriterMsg::Batch {
                session: SessionId {
                    client_id: 1,
                    producer_id: 1,
                    session_epoch: 1,
                    batch_seq: 1,
                },
                key: BatchKey::Sequenced { digest, log: None },
                receipts: receipts.clone(),
                verdicts: vec![Ok(())],
                reply,
            })
            .expect("writer is running");
        answer
    };

    let held = store.hold_next_write_then_fail();
    let original = send();
    held.wait_until_held();
    let resend = send();
    for _ in 0..2 {
        handled.recv().expect("writer handled the batch");
    }
    held.release_with_failure();

    let answers = [original, resend]
        .map(|answer| futures::executor::block_on(answer).expect("writer answered"));
    for (which, answer) in ["original", "re-send"].iter().zip(&answers) {
        assert!(
            matches!(answer, Err(LedgerError::Poisoned { .. })),
            "{which}: {answer:?}"
        );
    }
    drop((batches, control));
    let result = writer.join().expect("writer thread");
    assert!(
        matches!(result, Err(LedgerError::Poisoned { .. })),
        "{result:?}"
    );
}

/// Receipt `nonce` of channel `c` (8 payers × 8 payees).
fn receipt(c: u8, nonce: u64, now_ms: u64) -> Receipt {
    Receipt {
        payer: PayerKey([c / 8 + 1; 32]),
        payee: Address([c % 8 + 1; 20]),
        amount: u64::from(c) + 1,
        nonce,
        timestamp_ms: now_ms,
        request_hash: [0; 32],
        session: false,
        // The verdicts sent with the batch are what the writer trusts.
        signature: [0; 64],
    }
}

fn batch(channels: impl Iterator<Item = u8>, nonce: u64) -> (ReceiptBatch, Vec<Verdict>) {
    let now = now_ms();
    let receipts: Vec<Receipt> = channels.map(|c| receipt(c, nonce, now)).collect();
    let verdicts = vec![Ok(()); receipts.len()];
    (ReceiptBatch::from_receipts(&receipts), verdicts)
}

/// The seal of a 64-channel epoch takes 40 chunks of 2 keys. Batches queued behind the seal
/// request are applied between its chunks, in the next epoch, and acked before the seal's
/// answer: the seal no longer holds the writer for its whole length.
#[test]
fn batches_queued_behind_a_seal_are_acked_before_it_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LedgerConfig {
        seal_chunk_keys: 2,
        unknown_payers: UnknownPayers::Accept,
        ..LedgerConfig::default()
    };
    let mut ledger = open_ledger(dir.path(), config.clone());
    let (receipts, verdicts) = batch(0..64, 1);
    let ack = ledger
        .apply_batch(
            session(1),
            Some(batch_digest(&receipts)),
            &receipts,
            &verdicts,
            now_ms(),
        )
        .expect("epoch 1");
    assert_eq!(ack.accepted, 64);
    ledger.commit().expect("commit");

    // Everything is queued before the writer starts, so the order it sees is fixed: the
    // seal first (control messages go first), then four batches of epoch 2 touching
    // channels, payers and payees the seal has not reached.
    let (batches_tx, batches_rx) = bounded(8);
    let (control_tx, control_rx) = bounded(8);
    let (seal_tx, seal_rx) = oneshot::channel();
    control_tx
        .send(WriterMsg::Seal { reply: seal_tx })
        .expect("queue seal");
    let mut acks = Vec::new();
    for seq in 2..6u8 {
        let (receipts, verdicts) = batch((0..64).filter(|c| c % 4 == seq - 2), 2);
        let (reply, ack) = oneshot::channel();
        batches_tx
            .send(WriterMsg::Batch {
                session: session(u64::from(seq)),
                key: BatchKey::Sequenced {
                    digest: batch_digest(&receipts),
                    log: None,
                },
                receipts,
                verdicts,
                reply,
            })
            .expect("queue batch");
        acks.push(ack);
    }
    let writer =
        Writer::<LedgerError>::new(ledger, batches_rx, control_rx, config.group_receipts_max)
            .expect("writer");
    let running = std::thread::spawn(move || writer.run());

    let sealed = block_on(seal_rx).expect("answered").expect("sealed");
    // The sync thread answers groups in order, so a batch applied between the seal's chunks
    // has its ack out before the seal's answer.
    for (index, mut ack) in acks.into_iter().enumerate() {
        match ack.try_recv() {
            Ok(Some(Ok(ack))) => assert_eq!(ack.accepted, 16, "{:?}", ack.rejections),
            other => panic!(
                "batch {index} queued behind the seal was not acked when the seal was \
                 answered: {other:?}"
            ),
        }
    }
    assert_eq!(sealed.epoch, 1);
    assert_eq!(sealed.leaves.len(), 64);
    // Every leaf is at its epoch-1 cumulative: epoch 2's receipts did not leak in.
    assert!(
        sealed
            .leaves
            .iter()
            .all(|(payer, payee, cumulative)| *cumulative
                == u128::from((payer.0[0] - 1) * 8 + payee.0[0])),
        "{:?}",
        sealed.leaves
    );
    let debits: u128 = sealed.debits.iter().map(|(_, d)| d).sum();
    assert_eq!(debits, (1..=64).sum::<u128>());

    control_tx.send(WriterMsg::Shutdown).expect("shutdown");
    running.join().expect("writer thread").expect("clean stop");
}
