//! The ledger's guarantees through the engine's public API: every reason code, exactly-once
//! batches and funds events, reads consistent with acks, epochs, sessions, restarts and a crash.

mod common;

use common::*;
use tollgate_engine::ledger::record::batch_digest;
use tollgate_engine::pipeline::{
    BatchOutcome, EngineConfig, EngineError, EpochStatus, EpochUpdate, FundsEvent, FundsKind,
    LedgerError, LogPosition, PartRecord, SubmitError, UnknownPayers,
};
use tollgate_engine::{Reason, ReceiptBatch};

#[test]
fn every_ledger_reason_rejects_its_receipt_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let alice = signing_key(1);
    let stranger = signing_key(2);
    deposit(&engine, payer_of(&alice), 1_000, 10, 0);

    let mut tampered = receipt(&alice, payee(1), 5, 100);
    tampered.amount = 6; // signed for 5
    let mut malformed = receipt(&alice, payee(1), 5, 101).to_bytes();
    malformed[53] = 1; // reserved bytes (byte 52 holds the flags)
    let mut bytes = Vec::new();
    for record in [
        receipt(&alice, payee(1), 10, 1).to_bytes(), // 0 accepted
        receipt(&alice, payee(1), 10, 1).to_bytes(), // 1 duplicate inside the batch
        receipt(&stranger, payee(1), 10, 1).to_bytes(), // 2 unknown payer
        receipt(&alice, payee(1), 2_000, 2).to_bytes(), // 3 overdraft
        receipt_at(&alice, payee(1), 10, 3, now_ms() + 3_600_000).to_bytes(), // 4 future
        receipt_at(&alice, payee(1), 10, 4, 1).to_bytes(), // 5 ancient
        tampered.to_bytes(),                         // 6 bad signature
        malformed,                                   // 7 malformed
        receipt(&alice, payee(2), 10, 1).to_bytes(), // 8 prejudged
        receipt(&alice, payee(1), 10, 5_000).to_bytes(), // 9 accepted, slides the window
        receipt(&alice, payee(1), 10, 2).to_bytes(), // 10 stale now
    ] {
        bytes.extend_from_slice(&record);
    }
    let mut request = request(1, 1, &[]);
    request.receipts = ReceiptBatch::new(bytes.into()).expect("whole records");
    request.prejudged = vec![(8, Reason::PayeeNotAllowed)];
    let ack = submit(&engine, request).expect("ack");
    assert_eq!(ack.accepted, 2);
    assert_eq!(
        ack.rejections,
        vec![
            (1, Reason::Duplicate),
            (2, Reason::UnknownPayer),
            (3, Reason::InsufficientFunds),
            (4, Reason::TimestampSkew),
            (5, Reason::TimestampSkew),
            (6, Reason::BadSignature),
            (7, Reason::Malformed),
            (8, Reason::PayeeNotAllowed),
            (10, Reason::Stale),
        ]
    );
    let reader = engine.reader();
    let balance = balance(&engine, &payer_of(&alice));
    assert_eq!((balance.pending, balance.available), (20, 980));
    assert_eq!(reader.payer(&payer_of(&stranger)).expect("read"), None);
    let channel = reader
        .channel(&payer_of(&alice), &payee(1))
        .expect("read")
        .expect("exists");
    assert_eq!(
        (channel.cumulative, channel.receipts, channel.highest_nonce),
        (20, 2, Some(5_000))
    );
    assert_eq!(
        reader.channel(&payer_of(&alice), &payee(2)).expect("read"),
        None
    );
    engine.shutdown().expect("clean shutdown");
}

#[test]
fn replayed_batch_gets_identical_ack_and_changes_nothing() {
    let (dir, engine, alice) = with_alice(100);
    let receipts = [
        receipt(&alice, payee(1), 30, 1),
        receipt(&alice, payee(1), 30, 1),
        receipt(&alice, payee(1), 30, 2),
        receipt(&alice, payee(1), 30, 3),
    ];
    // The re-send is queued before the original is written: same group or the next one.
    let first = engine.submit(request(9, 7, &receipts)).expect("queued");
    let again = engine.submit(request(9, 7, &receipts)).expect("queued");
    let first = wait(first).expect("ack");
    assert_eq!(wait(again).expect("ack"), first);
    assert_eq!(first.accepted, 3);
    assert_eq!(first.rejections, vec![(1, Reason::Duplicate)]);

    // After a restart, from disk; other contents under the same number are not a re-send.
    engine.shutdown().expect("shutdown");
    let engine = open(dir.path());
    assert_eq!(
        submit(&engine, request(9, 7, &receipts)).expect("ack"),
        first
    );
    let other = [receipt(&alice, payee(1), 5, 50)];
    let error = submit(&engine, request(9, 7, &other)).expect_err("not a re-send");
    assert!(
        matches!(
            error,
            EngineError::Ledger(LedgerError::BatchMismatch {
                producer_id: 9,
                session_epoch: 1,
                batch_seq: 7
            })
        ),
        "{error}"
    );
    assert!(error.is_refusal());
    let balance = balance(&engine, &payer_of(&alice));
    assert_eq!(balance.pending, 90);

    // A new batch number is new work, and receipt-level dedup still holds.
    let ack = submit(&engine, request(9, 8, &receipts)).expect("ack");
    assert_eq!(ack.accepted, 0);
    assert_eq!(ack.rejections.len(), 4);
    engine.shutdown().expect("shutdown");
}

/// The payer record carries its receipt and channel counts, so a balance is one read however
/// many payees the payer has paid; they agree with the channels themselves, across a restart.
#[test]
fn payer_record_counts_its_receipts_and_channels() {
    let (dir, engine, alice) = with_alice(10_000);
    for seq in 1..=3u64 {
        let receipts: Vec<_> = (1..=40u8)
            .map(|p| receipt(&alice, payee(p), 1, seq))
            .chain([receipt(&alice, payee(1), 1, seq)]) // a duplicate counts nowhere
            .collect();
        let ack = submit(&engine, request(1, seq, &receipts)).expect("ack");
        assert_eq!(ack.accepted, 40);
    }
    engine.shutdown().expect("shutdown");
    let engine = open(dir.path());
    let reader = engine.reader();
    let balance = balance(&engine, &payer_of(&alice));
    let (_, channels) = reader
        .payer_with_channels(&payer_of(&alice), 1_000)
        .expect("read")
        .expect("alice is known");
    assert_eq!(balance.channels, channels.len() as u64);
    assert_eq!(
        balance.receipts,
        channels.iter().map(|c| c.receipts).sum::<u64>()
    );
    assert_eq!((balance.receipts, balance.channels), (120, 40));
    engine.shutdown().expect("shutdown");
}

#[test]
fn older_session_epoch_is_refused() {
    let (_dir, engine, alice) = with_alice(100);
    let mut newer = request(4, 1, &[receipt(&alice, payee(1), 1, 1)]);
    newer.session_epoch = 5;
    submit(&engine, newer).expect("ack");
    assert_eq!(engine.reader().session_epoch(1, 4).expect("read"), Some(5));

    let mut older = request(4, 2, &[receipt(&alice, payee(1), 1, 2)]);
    older.session_epoch = 4;
    let error = submit(&engine, older).expect_err("superseded");
    assert!(
        matches!(
            error,
            EngineError::Ledger(LedgerError::SessionSuperseded {
                producer_id: 4,
                session_epoch: 4,
                current: 5
            })
        ),
        "{error}"
    );
    let balance = balance(&engine, &payer_of(&alice));
    assert_eq!(balance.pending, 1, "the refused batch changed nothing");

    // The same producer id under another client is another producer, with its own epochs.
    let mut elsewhere = request(4, 2, &[receipt(&alice, payee(1), 1, 3)]);
    elsewhere.client_id = 2;
    elsewhere.session_epoch = 1;
    assert_eq!(submit(&engine, elsewhere).expect("ack").accepted, 1);
    let reader = engine.reader();
    assert_eq!(reader.session_epoch(2, 4).expect("read"), Some(1));
    assert_eq!(reader.session_epoch(1, 4).expect("read"), Some(5));
    engine.shutdown().expect("shutdown");
}

#[test]
fn funds_events_apply_exactly_once_and_withdrawals_limit_spend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let alice = signing_key(1);
    let payer = payer_of(&alice);
    deposit(&engine, payer, 100, 5, 1);
    deposit(&engine, payer, 100, 5, 1); // the same log again
    deposit(&engine, payer, 100, 4, 9); // an older one
    let funds = |kind, amount, block, log_index| {
        wait(
            engine
                .funds(FundsEvent {
                    payer,
                    kind,
                    amount,
                    block,
                    log_index,
                })
                .expect("queued"),
        )
        .expect("applied")
    };
    funds(FundsKind::WithdrawalRequested, 60, 6, 0);
    let ack = submit(&engine, request(1, 1, &[receipt(&alice, payee(1), 50, 1)])).expect("ack");
    assert_eq!(ack.rejections, vec![(0, Reason::InsufficientFunds)]);
    funds(FundsKind::WithdrawalCompleted, 60, 7, 0);
    funds(FundsKind::BlockScanned, 0, 9, u64::MAX);
    let reader = engine.reader();
    let balance = balance(&engine, &payer);
    assert_eq!(
        (
            balance.deposited,
            balance.withdrawn,
            balance.withdrawal_requested,
            balance.available
        ),
        (100, 60, 0, 40)
    );
    let cursor = reader.funds_cursor().expect("read").expect("set");
    assert_eq!((cursor.block, cursor.log_index), (9, u64::MAX));
    engine.shutdown().expect("shutdown");
}

#[test]
fn chainless_mode_accepts_unknown_payers_without_funds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = EngineConfig::new(dir.path());
    config.ledger.unknown_payers = UnknownPayers::Accept;
    let engine = open_with(config);
    let bob = signing_key(3);
    let ack = submit(
        &engine,
        request(1, 1, &[receipt(&bob, payee(1), u64::MAX, 1)]),
    )
    .expect("ack");
    assert_eq!((ack.accepted, ack.rejections.len()), (1, 0));
    let balance = balance(&engine, &payer_of(&bob));
    assert_eq!(balance.pending, u128::from(u64::MAX));
    engine.shutdown().expect("shutdown");
}

#[test]
fn epochs_seal_commit_and_dispute_move_money_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let (alice, bob) = (signing_key(1), signing_key(2));
    deposit(&engine, payer_of(&alice), 1_000, 1, 0);
    deposit(&engine, payer_of(&bob), 1_000, 1, 1);
    submit(
        &engine,
        request(
            1,
            1,
            &[
                receipt(&alice, payee(1), 10, 1),
                receipt(&alice, payee(2), 20, 1),
                receipt(&bob, payee(1), 5, 1),
            ],
        ),
    )
    .expect("ack");
    let sealed = seal(&engine);
    assert_eq!(sealed.epoch, 1);
    assert_eq!(sealed.leaves.len(), 3);
    let mut debits = sealed.debits.clone();
    debits.sort();
    assert_eq!(debits, {
        let mut d = vec![(payer_of(&alice), 30), (payer_of(&bob), 5)];
        d.sort();
        d
    });
    assert_eq!(sealed.credits, vec![(payee(1), 15), (payee(2), 10 + 10)]);
    let reader = engine.reader();
    assert_eq!(reader.sealed_epoch(1).expect("read"), Some(sealed.clone()));

    // New receipts go to the next epoch; the channel's leaf carries its all-time total.
    submit(&engine, request(1, 2, &[receipt(&alice, payee(1), 7, 2)])).expect("ack");
    assert_eq!(reader.open_epoch().expect("read").receipts, 1);

    let news = |status| EpochUpdate {
        epoch: 1,
        status,
        root: Some([9; 32]),
        part: Some(PartRecord {
            part: 0,
            tx_hash: [8; 32],
            block: 44,
        }),
    };
    record(&engine, news(EpochStatus::Submitted)).expect("ok");
    for _ in 0..2 {
        record(&engine, news(EpochStatus::Committed)).expect("ok");
    }
    let alice_balance = balance(&engine, &payer_of(&alice));
    assert_eq!(
        (
            alice_balance.settled,
            alice_balance.pending,
            alice_balance.available
        ),
        (30, 7, 963)
    );
    assert_eq!(payee_balance(&engine, &payee(1)).settled, 15);
    let error = record(&engine, news(EpochStatus::Sealed)).expect_err("cannot go back");
    assert!(
        matches!(
            error,
            EngineError::Ledger(LedgerError::EpochTransition { .. })
        ),
        "{error}"
    );
    let error = record(
        &engine,
        EpochUpdate {
            epoch: 2,
            ..news(EpochStatus::Committed)
        },
    )
    .expect_err("never sealed");
    assert!(
        matches!(
            error,
            EngineError::Ledger(LedgerError::UnknownEpoch { epoch: 2 })
        ),
        "{error}"
    );

    // A dispute voids the commit: the amounts are owed again and go into the next seal.
    record(&engine, news(EpochStatus::Disputed)).expect("ok");
    let alice_balance = balance(&engine, &payer_of(&alice));
    assert_eq!((alice_balance.settled, alice_balance.pending), (0, 37));
    let stored = reader.epoch(1).expect("read").expect("exists");
    assert_eq!(
        (stored.status, stored.root, stored.block),
        (EpochStatus::Disputed, Some([9; 32]), Some(44))
    );
    let second = seal(&engine);
    assert_eq!(second.epoch, 2);
    let debit_total: u128 = second.debits.iter().map(|(_, d)| d).sum();
    assert_eq!(debit_total, 35 + 7);
    assert_eq!(second.leaves.len(), 3);
    assert!(second.leaves.contains(&(payer_of(&alice), payee(1), 17)));
    assert_eq!(reader.epochs(None, 10).expect("read").len(), 2);
    engine.shutdown().expect("shutdown");
}

/// The contract can void an epoch before its commit lands: a dispute of a sealed or a submitted
/// epoch owes its amounts again in the open epoch (nothing was settled, so nothing is
/// unsettled), once however often it is repeated.
#[test]
fn dispute_of_a_sealed_or_submitted_epoch_carries_its_amounts_once() {
    let (_dir, engine, alice) = with_alice(1_000);
    let payer = payer_of(&alice);
    submit(
        &engine,
        request(
            1,
            1,
            &[
                receipt(&alice, payee(1), 10, 1),
                receipt(&alice, payee(2), 20, 1),
            ],
        ),
    )
    .expect("ack");
    let reader = engine.reader();
    let owed = || {
        let balance = balance(&engine, &payer);
        (balance.pending, balance.settled, balance.available)
    };

    let first = seal(&engine);
    assert_eq!(first.debits, vec![(payer, 30)]);
    for _ in 0..2 {
        record(&engine, update(1, EpochStatus::Disputed)).expect("a sealed epoch can be voided");
    }
    assert_eq!(owed(), (30, 0, 970));
    submit(&engine, request(1, 2, &[receipt(&alice, payee(1), 5, 2)])).expect("ack");

    // The voided epoch's amounts and leaves are in the next seal, once.
    let second = seal(&engine);
    assert_eq!(second.debits, vec![(payer, 35)]);
    assert_eq!(second.credits, vec![(payee(1), 15), (payee(2), 20)]);
    assert_eq!(
        second.leaves,
        vec![(payer, payee(1), 15), (payer, payee(2), 20)]
    );
    record(&engine, update(2, EpochStatus::Submitted)).expect("submitted");
    for _ in 0..2 {
        record(&engine, update(2, EpochStatus::Disputed)).expect("a submitted epoch can be voided");
    }
    assert_eq!(owed(), (35, 0, 965));
    // News of its commit after the dispute is older than the dispute: taken, and nothing moves.
    record(&engine, update(2, EpochStatus::Committed)).expect("stale commit news is a no-op");
    assert_eq!(owed(), (35, 0, 965), "a voided epoch stays void");

    let third = seal(&engine);
    assert_eq!(third.debits, vec![(payer, 35)]);
    assert_eq!(third.credits, vec![(payee(1), 15), (payee(2), 20)]);
    record(&engine, update(3, EpochStatus::Committed)).expect("committed");
    assert_eq!(owed(), (0, 35, 965));
    let statuses: Vec<_> = (1..=3)
        .map(|epoch| reader.epoch(epoch).expect("read").expect("exists").status)
        .collect();
    assert_eq!(
        statuses,
        vec![
            EpochStatus::Disputed,
            EpochStatus::Disputed,
            EpochStatus::Committed
        ]
    );
    engine.shutdown().expect("shutdown");
}

/// The child side of the crash below (a no-op in a normal run).
#[test]
fn crash_child() {
    common::crash_child();
}

#[test]
fn acked_state_survives_kill_9_and_reads_list_channels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = signing_key(1);
    let bob = signing_key(2);
    {
        let engine = open(dir.path());
        deposit(&engine, payer_of(&alice), 500, 1, 0);
        deposit(&engine, payer_of(&bob), 500, 1, 1);
        engine.shutdown().expect("shutdown");
    }
    // The batches are acked by a child process that is then killed with SIGKILL: no shutdown,
    // no drain, no join (dropping an engine would do all three).
    let batches = (1..=3)
        .zip([3, 1, 2])
        .map(|(seq, nonce)| {
            CrashBatch::new(
                1,
                seq,
                &[
                    receipt(&alice, payee(nonce as u8), 10, nonce),
                    receipt(&bob, payee(1), 1, nonce),
                ],
            )
        })
        .collect();
    crash_after(
        &CrashJob {
            data_dir: dir.path().to_path_buf(),
            window_nonces: EngineConfig::new(dir.path()).ledger.window_nonces,
            batches,
        },
        3,
    );
    let engine = open(dir.path());
    let reader = engine.reader();
    // The funds with the first channels, from one snapshot: the counts cover every channel.
    let (funds, alice_channels) = reader
        .payer_with_channels(&payer_of(&alice), 10)
        .expect("read")
        .expect("alice is known");
    assert_eq!(
        alice_channels
            .iter()
            .map(|c| (c.payee, c.cumulative))
            .collect::<Vec<_>>(),
        vec![(payee(1), 10), (payee(2), 10), (payee(3), 10)]
    );
    assert_eq!((funds.receipts, funds.channels, funds.pending), (3, 3, 30));
    let (_, first) = reader
        .payer_with_channels(&payer_of(&alice), 2)
        .expect("read")
        .expect("alice is known");
    assert_eq!(first[..], alice_channels[..2]);
    let (_, none) = reader
        .payer_with_channels(&payer_of(&alice), 0)
        .expect("read")
        .expect("alice is known");
    assert!(none.is_empty());
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[0x99; 32]);
    assert!(
        reader
            .payer_with_channels(&payer_of(&stranger), 5)
            .expect("read")
            .is_none()
    );
    let payee_channels = reader.payee_channels(&payee(1), None, 10).expect("read");
    assert_eq!(payee_channels.len(), 2);
    assert_eq!(payee_balance(&engine, &payee(1)).credited, 13);
    // The window survived: nonce 2 for bob is a duplicate now.
    let ack = submit(&engine, request(1, 4, &[receipt(&bob, payee(1), 1, 2)])).expect("ack");
    assert_eq!(ack.rejections, vec![(0, Reason::Duplicate)]);
    engine.shutdown().expect("shutdown");
}

#[test]
fn submit_refuses_bad_requests_and_after_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let alice = signing_key(1);
    let mut bad = request(1, 1, &[receipt(&alice, payee(1), 1, 1)]);
    bad.prejudged = vec![(1, Reason::PayeeNotAllowed)];
    assert_eq!(
        engine.submit(bad).err(),
        Some(SubmitError::PrejudgedOutOfRange {
            index: 1,
            receipts: 1
        })
    );
    let handle = engine.clone();
    engine.shutdown().expect("shutdown");
    assert_eq!(
        handle.submit(request(1, 2, &[])).err(),
        Some(SubmitError::Closed)
    );
}

#[test]
fn only_the_last_acks_are_kept_and_older_resends_fall_back_to_receipt_dedup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = EngineConfig::new(dir.path());
    config.ledger.acks_kept_per_producer = 2;
    let engine = open_with(config);
    let alice = signing_key(1);
    deposit(&engine, payer_of(&alice), 100, 1, 0);
    let batches: Vec<_> = (1..=3u64)
        .map(|seq| vec![receipt(&alice, payee(1), 1, seq)])
        .collect();
    let acks: Vec<_> = (1..=3u64)
        .zip(&batches)
        .map(|(seq, receipts)| submit(&engine, request(2, seq, receipts)).expect("ack"))
        .collect();
    assert!(acks.iter().all(|ack| ack.accepted == 1));
    assert_eq!(
        submit(&engine, request(2, 3, &batches[2])).expect("ack"),
        acks[2]
    );
    // Batch 1's ack was dropped: the re-send is judged again and its receipt is a duplicate.
    let again = submit(&engine, request(2, 1, &batches[0])).expect("ack");
    assert_eq!(again.rejections, vec![(0, Reason::Duplicate)]);
    let balance = balance(&engine, &payer_of(&alice));
    assert_eq!(balance.pending, 3);
    engine.shutdown().expect("shutdown");
}

/// Cluster mode's owner: a part applied at a log position is judged as of the position's time,
/// the position is stored with its effect (and survives a restart), and what each part got can
/// be read back by its position without applying anything, the same after the producer moved on
/// to a new session.
#[test]
fn a_checkpoint_holds_what_was_answered_before_it_and_its_log_position() {
    let (_dir, engine, alice) = with_alice(1_000);
    let published_ms = now_ms();
    let part = |batch_seq, amount, nonce| {
        request(
            4,
            batch_seq,
            &[receipt_at(&alice, payee(1), amount, nonce, published_ms)],
        )
    };
    let at = |seq| LogPosition {
        seq,
        time_ms: published_ms,
    };
    wait(engine.submit_logged(part(1, 10, 1), at(7)).expect("queued")).expect("ack");
    let copies = tempfile::tempdir().expect("tempdir");
    let copy = copies.path().join("checkpoint");
    let position = wait(engine.checkpoint(copy.clone()).expect("queued")).expect("checkpoint");
    assert_eq!(position, Some(7));
    // Answered after the checkpoint: in the live ledger only.
    wait(engine.submit_logged(part(2, 5, 2), at(9)).expect("queued")).expect("ack");
    assert_eq!(balance(&engine, &payer_of(&alice)).pending, 15);
    // A second checkpoint into a directory that exists is refused, and the ledger goes on.
    let refused = wait(engine.checkpoint(copy.clone()).expect("queued"));
    assert!(refused.is_err(), "{refused:?}");
    wait(engine.submit_logged(part(3, 1, 3), at(10)).expect("queued")).expect("ack");
    engine.shutdown().expect("shutdown");

    let restored = open(&copy);
    assert_eq!(restored.reader().log_position().expect("read"), Some(7));
    assert_eq!(balance(&restored, &payer_of(&alice)).pending, 10);
    restored.shutdown().expect("shutdown");
}

#[test]
fn logged_batch_stores_its_position_and_its_outcome_reads_back() {
    let (dir, engine, alice) = with_alice(1_000);
    assert_eq!(engine.reader().log_position().expect("read"), None);
    // Published an hour ago: judged against that time, so a replay years later agrees.
    let published_ms = now_ms() - 3_600_000;
    let receipts = [
        receipt_at(&alice, payee(1), 10, 1, published_ms),
        receipt_at(&alice, payee(1), 10, 1, published_ms),
    ];
    let part = request(4, 9, &receipts);
    let digest = batch_digest(&part.receipts);
    let at = |seq| LogPosition {
        seq,
        time_ms: published_ms,
    };
    let ack = wait(engine.submit_logged(part.clone(), at(7)).expect("queued")).expect("ack");
    assert_eq!(
        (ack.accepted, ack.rejections.clone()),
        (1, vec![(1, Reason::Duplicate)])
    );
    assert_eq!(engine.reader().log_position().expect("read"), Some(7));
    let outcome =
        |seq, digest: &[u8; 32]| engine.reader().logged_outcome(seq, digest).expect("read");
    assert_eq!(outcome(7, &digest), BatchOutcome::Acked(ack.clone()));
    assert_eq!(outcome(7, &[0; 32]), BatchOutcome::Mismatch);
    assert_eq!(outcome(10, &digest), BatchOutcome::Unknown);

    // The same part delivered again later in the log: the original ack, nothing charged twice,
    // and the position moves on (it was consumed).
    let again = wait(engine.submit_logged(part.clone(), at(8)).expect("queued")).expect("ack");
    assert_eq!(again, ack);
    engine.shutdown().expect("shutdown");
    let engine = open(dir.path());
    assert_eq!(engine.reader().log_position().expect("read"), Some(8));
    assert_eq!(balance(&engine, &payer_of(&alice)).pending, 10);
    assert_eq!(
        engine.reader().logged_outcome(8, &digest).expect("read"),
        BatchOutcome::Acked(ack.clone())
    );
    // A later session epoch drops the producer's kept acks; the parts' outcomes stay, and the
    // old session's part delivered again is refused as superseded, which is recorded too.
    let mut newer = request(4, 1, &[receipt(&alice, payee(1), 5, 2)]);
    newer.session_epoch = 2;
    submit(&engine, newer).expect("ack");
    let refused = wait(engine.submit_logged(part, at(11)).expect("queued"));
    assert!(refused.is_err(), "{refused:?}");
    let reader = engine.reader();
    assert_eq!(
        reader.logged_outcome(7, &digest).expect("read"),
        BatchOutcome::Acked(ack)
    );
    assert_eq!(
        reader.logged_outcome(11, &digest).expect("read"),
        BatchOutcome::Superseded { current: 2 }
    );
    engine.shutdown().expect("shutdown");
}
