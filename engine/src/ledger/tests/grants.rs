//! Session grants in the ledger: what a grant lets its session spend, whose money it is, and
//! every way a grant or revocation is refused without changing anything.

use super::*;
use crate::grant::{
    Allowance, CheckedGrant, CheckedRevocation, Grant, GrantError, PayeeScope, Revocation,
    SignedGrant,
};
use crate::ledger::cache::Cached;
use crate::ledger::record::{
    ChannelKey, ChannelState, GRANT_RECORDS_SPLIT_KEY, LAYOUT_VERSION, Position, SessionWindow,
    grant_key, grant_spend_key, session_window_key,
};
use crate::store::{Cf, Store, StoreBatch};
use crate::verdict::Reason;

const NOW: u64 = 1_000;

fn grant_for(payer: &SigningKey, session: &SigningKey, cap: u64) -> Grant {
    Grant {
        domain: Domain::default(),
        payer: PayerKey(payer.verifying_key().to_bytes()),
        session: PayerKey(session.verifying_key().to_bytes()),
        nonce: 1,
        cap,
        allowance: None,
        valid_from_ms: 0,
        valid_until_ms: 10_000,
        payees: PayeeScope::Any,
    }
}

fn checked(grant: &Grant, payer: &SigningKey) -> CheckedGrant {
    grant
        .sign(payer)
        .check(&Domain::default())
        .expect("a valid grant")
}

fn revocation(payer: &SigningKey, session: &SigningKey) -> CheckedRevocation {
    Revocation {
        domain: Domain::default(),
        payer: PayerKey(payer.verifying_key().to_bytes()),
        session: PayerKey(session.verifying_key().to_bytes()),
        revoked_at_ms: NOW,
    }
    .sign(payer)
    .check(&Domain::default())
    .expect("a valid revocation")
}

/// Receipt `nonce` signed by `session` for payee `[5; 20]`.
fn session_receipt(session: &SigningKey, amount: u64, nonce: u64) -> Receipt {
    UnsignedReceipt {
        session: true,
        ..receipt(session, amount, nonce).unsigned()
    }
    .sign(session, &Domain::default())
}

fn verdicts(ledger: &mut Ledger, seq: u64, receipts: &[Receipt]) -> Vec<Result<(), Reason>> {
    let ack = ledger
        .apply_all(session(seq), &ReceiptBatch::from_receipts(receipts))
        .expect("apply");
    (0..receipts.len() as u32)
        .map(|index| {
            ack.rejections
                .iter()
                .find(|(i, _)| *i == index)
                .map_or(Ok(()), |(_, reason)| Err(*reason))
        })
        .collect()
}

#[test]
fn a_session_spends_its_payers_deposit_up_to_its_cap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = ledger(dir.path());
    let (payer_key, payer) = funded_payer(&mut ledger, 1);
    let agent = SigningKey::from_bytes(&[2; 32]);
    ledger
        .register_grant(&checked(&grant_for(&payer_key, &agent, 30), &payer_key))
        .expect("granted");
    let got = verdicts(
        &mut ledger,
        1,
        &[
            session_receipt(&agent, 20, 1),
            session_receipt(&agent, 11, 2),
            session_receipt(&agent, 10, 3),
            // The payer's own key still pays from the same deposit, beyond the session's cap.
            receipt(&payer_key, 50, 1),
        ],
    );
    assert_eq!(got, vec![Ok(()), Err(Reason::OverGrantCap), Ok(()), Ok(())]);
    ledger.commit().expect("commit");
    let reader = LedgerReader::new(ledger.store());
    let balance = reader.payer(&payer).expect("read").expect("known");
    assert_eq!((balance.pending, balance.receipts), (80, 3));
    let agent_key = PayerKey(agent.verifying_key().to_bytes());
    assert!(
        reader.payer(&agent_key).expect("read").is_none(),
        "a session holds no money"
    );
    let held = reader.grant(&agent_key).expect("read").expect("held");
    assert_eq!(held.spent.total, 30);
    // The channel, and so the leaf, is the payer's.
    let channel = reader.channel(&payer, &Address([5; 20])).expect("read");
    assert_eq!(channel.map(|c| c.cumulative), Some(80));
}

#[test]
fn session_windows_are_their_own_and_checks_come_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = ledger(dir.path());
    let (payer_key, _) = funded_payer(&mut ledger, 1);
    let (a, b) = (
        SigningKey::from_bytes(&[2; 32]),
        SigningKey::from_bytes(&[3; 32]),
    );
    for agent in [&a, &b] {
        ledger
            .register_grant(&checked(&grant_for(&payer_key, agent, 1_000), &payer_key))
            .expect("granted");
    }
    let stranger = SigningKey::from_bytes(&[4; 32]);
    let got = verdicts(
        &mut ledger,
        1,
        &[
            session_receipt(&a, 1, 7),
            // Another session of the same payer may use the same nonce with the same payee...
            session_receipt(&b, 1, 7),
            // ...and the payer's own key too.
            receipt(&payer_key, 1, 7),
            session_receipt(&a, 1, 7),
            session_receipt(&stranger, 1, 1),
            // A payer-signed receipt is never read as a session's, and the reverse.
            UnsignedReceipt {
                session: false,
                ..session_receipt(&a, 1, 8).unsigned()
            }
            .sign(&a, &Domain::default()),
            // Duplicate beats over cap: a re-sent receipt is told it was accepted before.
            session_receipt(&a, 5_000, 7),
        ],
    );
    assert_eq!(
        got,
        vec![
            Ok(()),
            Ok(()),
            Ok(()),
            Err(Reason::Duplicate),
            Err(Reason::NoGrant),
            Err(Reason::UnknownPayer),
            Err(Reason::Duplicate),
        ]
    );
}

#[test]
fn validity_scope_and_allowance_are_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = ledger(dir.path());
    let (payer_key, _) = funded_payer(&mut ledger, 1);
    let agent = SigningKey::from_bytes(&[2; 32]);
    let grant = Grant {
        valid_from_ms: 500,
        valid_until_ms: 1_500,
        allowance: Some(Allowance {
            amount: 10,
            period_ms: 100,
        }),
        payees: PayeeScope::Only(vec![Address([5; 20])]),
        ..grant_for(&payer_key, &agent, 1_000)
    };
    ledger
        .register_grant(&checked(&grant, &payer_key))
        .expect("granted");
    let at = |ms: u64, amount: u64, nonce: u64| {
        UnsignedReceipt {
            timestamp_ms: ms,
            ..session_receipt(&agent, amount, nonce).unsigned()
        }
        .sign(&agent, &Domain::default())
    };
    let elsewhere = UnsignedReceipt {
        payee: Address([6; 20]),
        ..session_receipt(&agent, 1, 9).unsigned()
    }
    .sign(&agent, &Domain::default());
    let got = verdicts(
        &mut ledger,
        1,
        &[
            at(499, 1, 1),
            at(1_500, 1, 2),
            elsewhere,
            at(900, 10, 3),
            at(999, 1, 4),
            at(1_000, 10, 5),
        ],
    );
    assert_eq!(
        got,
        vec![
            Err(Reason::GrantNotYetValid),
            Err(Reason::GrantExpired),
            Err(Reason::PayeeNotInGrant),
            Ok(()),
            Err(Reason::OverGrantAllowance),
            Ok(()),
        ]
    );
    // At acceptance after valid_until, a receipt signed inside the validity is refused too.
    let late = ReceiptBatch::from_receipts(&[at(1_400, 1, 6)]);
    let ack = ledger
        .apply_batch(
            session(2),
            Some(batch_digest(&late)),
            &late,
            &[Ok(())],
            1_500,
        )
        .expect("apply");
    assert_eq!(ack.rejections, vec![(0, Reason::GrantExpired)]);
}

#[test]
fn a_revocation_refuses_every_receipt_applied_after_it_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = SigningKey::from_bytes(&[2; 32]);
    let agent_key = PayerKey(agent.verifying_key().to_bytes());
    {
        let mut ledger = ledger(dir.path());
        let (payer_key, _) = funded_payer(&mut ledger, 1);
        ledger
            .register_grant(&checked(&grant_for(&payer_key, &agent, 100), &payer_key))
            .expect("granted");
        assert_eq!(
            verdicts(&mut ledger, 1, &[session_receipt(&agent, 1, 1)]),
            vec![Ok(())]
        );
        ledger
            .revoke_grant(&revocation(&payer_key, &agent))
            .expect("revoked");
        // In the same group as the revocation, before anything is on disk.
        assert_eq!(
            verdicts(&mut ledger, 2, &[session_receipt(&agent, 1, 2)]),
            vec![Err(Reason::GrantRevoked)]
        );
        ledger.commit().expect("commit");
    }
    let mut ledger = ledger(dir.path());
    assert_eq!(
        verdicts(&mut ledger, 3, &[session_receipt(&agent, 1, 3)]),
        vec![Err(Reason::GrantRevoked)]
    );
    let held = LedgerReader::new(ledger.store())
        .grant(&agent_key)
        .expect("read")
        .expect("held");
    let (_, revoked_at) = held.revoked.expect("revoked");
    // Revoked after the one accepted receipt: archive index 1 onward is after it.
    assert_eq!((revoked_at.epoch, revoked_at.index), (1, 1));
    assert_eq!((held.granted_at.epoch, held.granted_at.index), (1, 0));
    assert_eq!(held.spent.total, 1);
}

#[test]
fn grants_and_revocations_that_do_not_fit_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = ledger(dir.path());
    let (payer_key, payer) = funded_payer(&mut ledger, 1);
    let other_key = SigningKey::from_bytes(&[9; 32]);
    deposit(
        &mut ledger,
        PayerKey(other_key.verifying_key().to_bytes()),
        100,
        2,
    );
    let agent = SigningKey::from_bytes(&[2; 32]);
    let agent_key = PayerKey(agent.verifying_key().to_bytes());
    let grant = grant_for(&payer_key, &agent, 100);
    let refused = |ledger: &mut Ledger, grant: &CheckedGrant| match ledger.register_grant(grant) {
        Err(LedgerError::Grant(error)) => error,
        other => panic!("expected a refusal, got {other:?}"),
    };

    assert_eq!(
        ledger
            .revoke_grant(&revocation(&payer_key, &agent))
            .err()
            .map(|e| e.to_string()),
        Some(LedgerError::Grant(GrantError::NoGrant(agent_key)).to_string())
    );
    // A deposit key cannot be a session key.
    assert_eq!(
        refused(
            &mut ledger,
            &checked(&grant_for(&payer_key, &other_key, 5), &payer_key)
        ),
        GrantError::SessionKeyIsPayer(PayerKey(other_key.verifying_key().to_bytes()))
    );
    ledger
        .register_grant(&checked(&grant, &payer_key))
        .expect("granted");
    ledger
        .register_grant(&checked(&grant, &payer_key))
        .expect("the same grant again is fine");
    assert_eq!(
        refused(
            &mut ledger,
            &checked(
                &Grant {
                    nonce: 2,
                    cap: 1_000,
                    ..grant.clone()
                },
                &payer_key
            )
        ),
        GrantError::AlreadyGranted {
            session: agent_key,
            nonce: 1
        }
    );
    assert_eq!(
        refused(
            &mut ledger,
            &checked(
                &Grant {
                    payer: PayerKey(other_key.verifying_key().to_bytes()),
                    ..grant.clone()
                },
                &other_key
            )
        ),
        GrantError::GrantedByAnotherPayer { session: agent_key }
    );
    // A payer with nothing deposited cannot store grants.
    let penniless = SigningKey::from_bytes(&[8; 32]);
    assert_eq!(
        refused(
            &mut ledger,
            &checked(
                &grant_for(&penniless, &SigningKey::from_bytes(&[6; 32]), 5),
                &penniless
            )
        ),
        GrantError::UnknownPayer(PayerKey(penniless.verifying_key().to_bytes()))
    );
    // A session cannot grant further.
    let sub_agent = SigningKey::from_bytes(&[3; 32]);
    assert_eq!(
        refused(
            &mut ledger,
            &checked(&grant_for(&agent, &sub_agent, 5), &agent)
        ),
        GrantError::PayerIsSessionKey(agent_key)
    );
    assert!(matches!(
        ledger.revoke_grant(&revocation(&other_key, &agent)),
        Err(LedgerError::Grant(GrantError::NotTheGranter(_)))
    ));
    ledger
        .revoke_grant(&revocation(&payer_key, &agent))
        .expect("revoked");
    ledger
        .revoke_grant(&revocation(&payer_key, &agent))
        .expect("a second revocation is fine");
    assert_eq!(
        refused(&mut ledger, &checked(&grant, &payer_key)),
        GrantError::Revoked(agent_key)
    );
    ledger.commit().expect("commit");
    let reader = LedgerReader::new(ledger.store());
    let held = reader.grants(None, 10).expect("read");
    assert_eq!(held.len(), 1, "only the one grant is held");
    assert_eq!(held[0].grant.grant.cap, 100);
    assert_eq!(held[0].grant.grant.payer, payer);
}

/// A ledger where a session (cap 30) spent 25 with one payee, rewritten in an older layout by
/// `older`, then reopened: the session has still spent 25, so 6 more is over its cap and 5 is
/// not.
fn spend_survives_reopening_from(older: impl FnOnce(&Store, &SignedGrant, Position, PayerKey)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = ledger(dir.path());
    let (payer_key, _) = funded_payer(&mut ledger, 1);
    let agent = SigningKey::from_bytes(&[2; 32]);
    let agent_key = PayerKey(agent.verifying_key().to_bytes());
    let grant = grant_for(&payer_key, &agent, 30);
    ledger
        .register_grant(&checked(&grant, &payer_key))
        .expect("granted");
    assert_eq!(
        verdicts(&mut ledger, 1, &[session_receipt(&agent, 25, 1)]),
        vec![Ok(())]
    );
    ledger.commit().expect("commit");
    let granted_at = LedgerReader::new(ledger.store())
        .grant(&agent_key)
        .expect("read")
        .expect("held")
        .granted_at;
    older(
        &ledger.store(),
        &grant.sign(&payer_key),
        granted_at,
        agent_key,
    );
    // Marked as the layout those records belong to.
    let store = ledger.store();
    mark_layout(&store, 2);
    drop((store, ledger));

    let mut reopened = super::ledger(dir.path());
    // Upgraded, so a build of the older layout refuses the directory from now on.
    assert_eq!(
        crate::ledger::format::read(&reopened.store())
            .expect("format")
            .layout,
        LAYOUT_VERSION
    );
    let held = LedgerReader::new(reopened.store())
        .grant(&agent_key)
        .expect("read")
        .expect("held");
    assert_eq!((held.spent.total, held.granted_at), (25, granted_at));
    let got = verdicts(
        &mut reopened,
        2,
        &[session_receipt(&agent, 6, 2), session_receipt(&agent, 5, 3)],
    );
    assert_eq!(got, vec![Err(Reason::OverGrantCap), Ok(())]);
}

/// The session's window (payee 5) rewritten as version 2: the window alone, stored whole, no
/// spent part.
fn window_without_its_part(store: &Store, session: PayerKey, batch: &mut StoreBatch) {
    let key = session_window_key(&ChannelKey {
        payer: session,
        payee: Address([5; 20]),
    });
    let version_4 = stored(store, Cf::Grants, &key);
    assert_eq!(version_4[0], 4);
    let window = SessionWindow::decode(&version_4).expect("decode").window;
    let version_2 = [&[2u8][..], &window_stored_whole(&window)].concat();
    batch.put(Cf::Grants, key, version_2);
}

/// The record under `key` in `cf`, which must be there.
fn stored(store: &Store, cf: Cf, key: &[u8]) -> Vec<u8> {
    store.get(cf, key).expect("read").expect("stored")
}

/// A layout-3 ledger (windows stored word by word: channel records of version 1, session windows
/// of version 3) opens as layout 4, keeps refusing every nonce it accepted, and rewrites each
/// window as runs when it is next used.
#[test]
fn windows_stored_whole_by_layout_3_keep_refusing_replays_and_are_rewritten_as_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = ledger(dir.path());
    let (payer_key, payer) = funded_payer(&mut ledger, 1);
    let agent = SigningKey::from_bytes(&[2; 32]);
    let agent_key = PayerKey(agent.verifying_key().to_bytes());
    ledger
        .register_grant(&checked(&grant_for(&payer_key, &agent, 30), &payer_key))
        .expect("granted");
    let accepted = [
        receipt(&payer_key, 1, 1),
        receipt(&payer_key, 1, 70),
        session_receipt(&agent, 2, 3),
    ];
    assert_eq!(verdicts(&mut ledger, 1, &accepted), vec![Ok(()); 3]);
    ledger.commit().expect("commit");
    let channel_key = ChannelKey {
        payer,
        payee: Address([5; 20]),
    }
    .to_bytes();
    let window_key = session_window_key(&ChannelKey {
        payer: agent_key,
        payee: Address([5; 20]),
    });
    let store = ledger.store();
    let channel = stored(&store, Cf::Channels, &channel_key);
    let session_window = stored(&store, Cf::Grants, &window_key);
    assert_eq!((channel[0], session_window[0]), (2, 4));
    let channel_v1 = [
        &[1u8][..],
        &channel[1..41],
        &window_stored_whole(&ChannelState::decode(&channel).expect("decode").window),
    ]
    .concat();
    let session_window_v3 = [
        &[3u8][..],
        &session_window[1..41],
        &window_stored_whole(
            &SessionWindow::decode(&session_window)
                .expect("decode")
                .window,
        ),
    ]
    .concat();
    assert!(channel_v1.len() > channel.len() + 100);
    let mut batch = StoreBatch::default();
    batch.put(Cf::Channels, channel_key, channel_v1);
    batch.put(Cf::Grants, window_key, session_window_v3);
    store.write(batch).expect("write");
    mark_layout(&store, 3);
    drop((store, ledger));

    let mut reopened = super::ledger(dir.path());
    let store = reopened.store();
    assert_eq!(
        crate::ledger::format::read(&store).expect("format").layout,
        LAYOUT_VERSION
    );
    // Still stored whole until used, and read as such.
    assert_eq!(stored(&store, Cf::Channels, &channel_key)[0], 1);
    assert_eq!(
        verdicts(&mut reopened, 2, &accepted),
        vec![Err(Reason::Duplicate); 3]
    );
    let next = [receipt(&payer_key, 1, 2), session_receipt(&agent, 2, 4)];
    assert_eq!(verdicts(&mut reopened, 3, &next), vec![Ok(()); 2]);
    reopened.commit().expect("commit");
    let channel = stored(&store, Cf::Channels, &channel_key);
    let session_window = stored(&store, Cf::Grants, &window_key);
    assert_eq!((channel[0], session_window[0]), (2, 4));
    let held = LedgerReader::new(store)
        .grant(&agent_key)
        .expect("read")
        .expect("held");
    assert_eq!(held.spent.total, 4);
}

#[test]
fn grant_records_of_the_first_layout_are_split_at_open_and_keep_their_spend() {
    spend_survives_reopening_from(|store, signed, granted_at, session| {
        // What the first layout wrote: version 1, the grant, granted_at, the spend, no
        // revocation; windows without a part; and the split not marked done.
        let Position { epoch, index } = granted_at;
        let first_layout = [
            &[1u8][..],
            &signed.to_bytes(),
            &epoch.to_le_bytes(),
            &index.to_le_bytes(),
            &25u128.to_le_bytes(),
            &0u64.to_le_bytes(),
            &0u128.to_le_bytes(),
            &[0],
        ]
        .concat();
        let mut batch = StoreBatch::default();
        batch.put(Cf::Grants, grant_key(&session), first_layout);
        window_without_its_part(store, session, &mut batch);
        batch.delete(Cf::Meta, GRANT_RECORDS_SPLIT_KEY);
        store.write(batch).expect("write");
    });
}

#[test]
fn spend_records_are_folded_into_the_sessions_window_at_open() {
    spend_survives_reopening_from(|store, _, _, session| {
        // What the layout before the fold wrote: the spend in its own record, windows without
        // a part.
        let spend_record = [
            &[1u8][..],
            &25u128.to_le_bytes(),
            &0u64.to_le_bytes(),
            &0u128.to_le_bytes(),
        ]
        .concat();
        let mut batch = StoreBatch::default();
        batch.put(Cf::Grants, grant_spend_key(&session), spend_record);
        window_without_its_part(store, session, &mut batch);
        store.write(batch).expect("write");
    });
}

/// A session's spend is cached apart from its windows and derived from them when it is not: with
/// room for one entry per cache, entries come and go every group, and each group is applied
/// while the one before it is still being written, as in the writer. Two sessions spending with
/// three payees still stop exactly at their caps.
#[test]
fn a_sessions_spend_stays_exact_while_its_cache_entries_come_and_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = open_ledger(
        dir.path(),
        LedgerConfig {
            accounts_cached_max: 1,
            channels_cached_max: 1,
            session_windows_cached_max: 1,
            ..LedgerConfig::default()
        },
    );
    let (payer_key, _) = funded_payer(&mut ledger, 1);
    let agents = [3u8, 4].map(|seed| SigningKey::from_bytes(&[seed; 32]));
    for agent in &agents {
        ledger
            .register_grant(&checked(&grant_for(&payer_key, agent, 30), &payer_key))
            .expect("granted");
    }
    ledger.commit().expect("commit");
    let paying = |agent: &SigningKey, amount: u64, round: u64, payee: u64| {
        UnsignedReceipt {
            payee: Address([10 + payee as u8; 20]),
            session: true,
            ..receipt(agent, amount, round + 1).unsigned()
        }
        .sign(agent, &Domain::default())
    };
    let mut in_flight = None;
    let mut got = Vec::new();
    for round in 0..12 {
        got.push(verdicts(
            &mut ledger,
            round + 1,
            &[
                paying(&agents[0], 4, round, round % 3),
                paying(&agents[1], 3, round, (round + 1) % 3),
            ],
        ));
        if let Some(batch) = in_flight.take() {
            ledger.store().write(batch).expect("write");
            ledger.written();
        }
        in_flight = Some(ledger.close_group().expect("close"));
    }
    if let Some(batch) = in_flight {
        ledger.store().write(batch).expect("write");
        ledger.written();
    }
    // 4 a round fits 30 seven times, 3 a round ten times.
    let want: Vec<_> = (0..12)
        .map(|round| {
            let under = |amount: u64| {
                if (round + 1) * amount <= 30 {
                    Ok(())
                } else {
                    Err(Reason::OverGrantCap)
                }
            };
            vec![under(4), under(3)]
        })
        .collect();
    assert_eq!(got, want);
    let reader = LedgerReader::new(ledger.store());
    let spent = agents.map(|agent| {
        reader
            .grant(&PayerKey(agent.verifying_key().to_bytes()))
            .expect("read")
            .expect("held")
            .spent
            .total
    });
    assert_eq!(spent, [28, 30]);
}
