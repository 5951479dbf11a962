//! Every record round-trips, and refuses trailing or missing bytes.

use super::*;

#[test]
fn records_round_trip_and_refuse_trailing_or_short_bytes() {
    let mut window = NonceWindow::new(128);
    window.insert(77);
    let channel = ChannelState {
        cumulative: u128::MAX - 3,
        receipts: 9,
        last_timestamp_ms: 123,
        indexed_epoch: 4,
        window,
    };
    let bytes = channel.encode();
    assert_eq!(ChannelState::decode(&bytes), Ok(channel));
    assert!(ChannelState::decode(&bytes[..bytes.len() - 1]).is_err());
    assert!(ChannelState::decode(&[bytes.as_slice(), &[0]].concat()).is_err());

    let payer = PayerState {
        deposited: 1,
        withdrawal_requested: 2,
        withdrawn: 3,
        settled: 4,
        pending: 5,
        unsealed: 6,
        receipts: 7,
        channels: 8,
        indexed_epoch: 7,
        shortfall: 9,
    };
    assert_eq!(PayerState::decode(&payer.encode()), Ok(payer));
    // Records written before shortfalls existed end before the field: it reads as zero.
    let bytes = payer.encode();
    assert_eq!(
        PayerState::decode(&bytes[..bytes.len() - 16]),
        Ok(PayerState {
            shortfall: 0,
            ..payer
        })
    );
    assert!(PayerState::decode(&bytes[..bytes.len() - 1]).is_err());
    let head = HeadWithdrawals([(PayerKey([3; 32]), 40), (PayerKey([9; 32]), u128::MAX)].into());
    let bytes = head.encode();
    assert_eq!(HeadWithdrawals::decode(&bytes), Ok(head));
    assert!(HeadWithdrawals::decode(&bytes[..bytes.len() - 1]).is_err());
    assert_eq!(
        HeadWithdrawals::decode(&HeadWithdrawals::default().encode()),
        Ok(HeadWithdrawals::default())
    );
    let payee = PayeeState {
        credited: 1,
        settled: 2,
        unsealed: 3,
        indexed_epoch: 4,
        shortfall: 5,
    };
    assert_eq!(PayeeState::decode(&payee.encode()), Ok(payee));
    let bytes = payee.encode();
    assert_eq!(
        PayeeState::decode(&bytes[..bytes.len() - 16]),
        Ok(PayeeState {
            shortfall: 0,
            ..payee
        })
    );

    for (cursor, counts) in [
        (None, None),
        (
            Some(index_suffix(IndexKind::Payee, &[9; 20])),
            Some(EntryCounts {
                debits: 2,
                credits: 3,
            }),
        ),
    ] {
        let sealing = SealingEpoch {
            epoch: 3,
            receipts: 4,
            amount: 5,
            leaves: 6,
            debits: 7,
            credits: 8,
            counts,
            cursor,
        };
        let bytes = sealing.encode();
        assert_eq!(SealingEpoch::decode(&bytes), Ok(sealing));
        assert!(SealingEpoch::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    let ack = BatchAck {
        batch_seq: 5,
        accepted: 2,
        rejections: vec![(0, Reason::Duplicate), (3, Reason::Stale)],
    };
    assert_eq!(decode_ack(&encode_ack(&ack, &[9; 32])), Ok((ack, [9; 32])));

    let producer = ProducerState {
        session_epoch: 3,
        recent: [1, 2, 3].into(),
    };
    assert_eq!(ProducerState::decode(&producer.encode()), Ok(producer));

    let epoch = EpochRecord {
        epoch: 2,
        status: EpochStatus::Submitted,
        leaves: 10,
        receipts: 11,
        amount: 12,
        root: Some([1; 32]),
        tx_hash: Some([3; 32]),
        block: Some(99),
        counts: Some(EntryCounts {
            debits: 4,
            credits: 5,
        }),
        parts: vec![
            PartRecord {
                part: 0,
                tx_hash: [2; 32],
                block: 98,
            },
            PartRecord {
                part: 1,
                tx_hash: [3; 32],
                block: 99,
            },
        ],
        carried_into: Some(4),
    };
    let bytes = epoch.encode();
    assert_eq!(EpochRecord::decode(&bytes), Ok(epoch));
    assert!(EpochRecord::decode(&bytes[..bytes.len() - 1]).is_err());
    let mut wrong_version = PayeeState::default().encode();
    wrong_version[0] = 9;
    assert!(PayeeState::decode(&wrong_version).is_err());
}

/// Records written before counts and parts were kept (version 1) still decode, without them.
#[test]
fn version_1_epoch_and_sealing_records_decode() {
    let mut epoch = vec![1];
    epoch.extend_from_slice(&7u64.to_le_bytes());
    epoch.push(EpochStatus::Committed.code());
    epoch.extend_from_slice(&3u64.to_le_bytes());
    epoch.extend_from_slice(&4u64.to_le_bytes());
    epoch.extend_from_slice(&5u128.to_le_bytes());
    epoch.extend_from_slice(&[1; 33]);
    epoch.extend_from_slice(&[1; 33]);
    epoch.push(1);
    epoch.extend_from_slice(&9u64.to_le_bytes());
    assert_eq!(
        EpochRecord::decode(&epoch),
        Ok(EpochRecord {
            epoch: 7,
            status: EpochStatus::Committed,
            leaves: 3,
            receipts: 4,
            amount: 5,
            root: Some([1; 32]),
            tx_hash: Some([1; 32]),
            block: Some(9),
            counts: None,
            parts: Vec::new(),
            carried_into: None,
        })
    );

    let mut sealing = vec![1];
    for value in [3u64, 4] {
        sealing.extend_from_slice(&value.to_le_bytes());
    }
    sealing.extend_from_slice(&5u128.to_le_bytes());
    sealing.extend_from_slice(&6u64.to_le_bytes());
    sealing.extend_from_slice(&7u128.to_le_bytes());
    sealing.extend_from_slice(&7u128.to_le_bytes());
    sealing.push(0);
    let decoded = SealingEpoch::decode(&sealing).expect("version 1 decodes");
    assert_eq!((decoded.epoch, decoded.counts), (3, None));

    let mut unknown = EpochRecord::decode(&epoch).expect("decodes").encode();
    unknown[0] = 4;
    assert!(EpochRecord::decode(&unknown).is_err());
}

#[test]
fn grant_records_round_trip_and_refuse_trailing_or_short_bytes() {
    use crate::grant::{Allowance, Grant, GrantSpend, PayeeScope, Revocation};
    use crate::receipt::Domain;
    use ed25519_dalek::SigningKey;

    let payer = SigningKey::from_bytes(&[1; 32]);
    let session = PayerKey(SigningKey::from_bytes(&[2; 32]).verifying_key().to_bytes());
    let grant = Grant {
        domain: Domain::default(),
        payer: PayerKey(payer.verifying_key().to_bytes()),
        session,
        nonce: 3,
        cap: 500,
        allowance: Some(Allowance {
            amount: 50,
            period_ms: 60_000,
        }),
        valid_from_ms: 10,
        valid_until_ms: 20,
        payees: PayeeScope::Only(vec![Address([7; 20])]),
    }
    .sign(&payer);
    let revocation = Revocation {
        domain: Domain::default(),
        payer: grant.grant.payer,
        session,
        revoked_at_ms: 15,
    }
    .sign(&payer);
    for revoked in [None, Some((revocation, Position { epoch: 2, index: 9 }))] {
        let held = HeldGrant {
            grant: grant.clone(),
            granted_at: Position { epoch: 1, index: 4 },
            revoked,
        };
        let bytes = held.encode();
        assert_eq!(HeldGrant::decode(&bytes), Ok(held));
        assert!(HeldGrant::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(HeldGrant::decode(&[bytes.as_slice(), &[0]].concat()).is_err());
    }

    // The spend record of the layout before it moved into the windows, read when a ledger
    // opens.
    let legacy_spend = [
        &[1u8][..],
        &(u128::MAX - 1).to_le_bytes(),
        &7u64.to_le_bytes(),
        &40u128.to_le_bytes(),
    ]
    .concat();
    let spend = GrantSpend {
        total: u128::MAX - 1,
        period: 7,
        period_total: 40,
    };
    assert_eq!(decode_legacy_grant_spend(&legacy_spend), Ok(spend));
    assert!(decode_legacy_grant_spend(&legacy_spend[..legacy_spend.len() - 1]).is_err());
    assert!(decode_legacy_grant_spend(&[legacy_spend.as_slice(), &[0]].concat()).is_err());

    let mut window = NonceWindow::new(128);
    window.insert(900);
    let stored_whole = crate::ledger::tests::window_stored_whole(&window);
    // The first layout stored a session's window as a whole channel state (version 1, its
    // window word by word).
    let first_layout = [
        &[1u8][..],
        &5888u128.to_le_bytes(),
        &3u64.to_le_bytes(),
        &44u64.to_le_bytes(),
        &2u64.to_le_bytes(),
        &stored_whole,
    ]
    .concat();
    // The first two layouts had no spent part; the first three stored the window word by word.
    let second_layout = [&[2u8][..], &stored_whole].concat();
    let third_layout = [&[3u8][..], &legacy_spend[1..], &stored_whole].concat();
    let bare = SessionWindow {
        window,
        spent: GrantSpend::default(),
    };
    assert_eq!(SessionWindow::decode(&first_layout), Ok(bare.clone()));
    assert_eq!(SessionWindow::decode(&second_layout), Ok(bare.clone()));
    let window = SessionWindow {
        spent: spend,
        ..bare
    };
    assert_eq!(SessionWindow::decode(&third_layout), Ok(window.clone()));
    let bytes = window.encode();
    assert_eq!(SessionWindow::decode(&bytes), Ok(window));
    assert!(SessionWindow::decode(&bytes[..bytes.len() - 1]).is_err());
    assert!(SessionWindow::decode(&[bytes.as_slice(), &[0]].concat()).is_err());
}

/// A window from `nonces` accepted in turn (each one the window would still take).
fn window_of(window_nonces: u32, nonces: &[u64]) -> NonceWindow {
    let mut window = NonceWindow::new(window_nonces);
    for &nonce in nonces {
        if window.check(nonce).is_ok() {
            window.insert(nonce);
        }
    }
    window
}

#[test]
fn windows_are_stored_as_runs_and_refuse_runs_that_do_not_add_up() {
    let channel = |window| ChannelState {
        window,
        ..ChannelState::empty(1024)
    };
    // Unused: one tag after the top flag and the word count.
    let unused = channel(NonceWindow::new(1024)).encode();
    assert_eq!(unused.len(), 1 + 40 + 1 + 2 + 1);
    // Over nonces taken in order: ones, the word at the top, zeros (with the ring's seam).
    let in_order = channel(window_of(1024, &(1..=5_000).collect::<Vec<_>>()));
    let bytes = in_order.encode();
    assert!(
        bytes.len() <= 1 + 40 + 9 + 2 + 4 + 8,
        "{} bytes",
        bytes.len()
    );
    assert_eq!(ChannelState::decode(&bytes), Ok(in_order));
    // 65 words of ones (the top's word full too): a run of 64 ones, its limit, then one more.
    let full = channel(window_of(64 * 64, &(0..20_032).collect::<Vec<_>>()));
    let bytes = full.encode();
    assert_eq!(&bytes[bytes.len() - 2..], [1 << 6 | 63, 1 << 6]);
    let decoded = ChannelState::decode(&bytes).expect("decode");
    assert_eq!(decoded.window.check(20_031), Err(Reason::Duplicate));
    assert_eq!(
        decoded.window.check(20_032 - 64 * 64),
        Err(Reason::Duplicate)
    );
    assert_eq!(decoded.window.check(20_032), Ok(()));
    assert_eq!(decoded, full);
    // 65 zero words take two tags: a run holds at most 64.
    let wide = channel(NonceWindow::new(64 * 64)).encode();
    assert_eq!(&wide[wide.len() - 2..], [63, 0]);
    assert_eq!(
        ChannelState::decode(&wide),
        Ok(channel(NonceWindow::new(64 * 64)))
    );

    let body = |tags: &[u8]| [&unused[..unused.len() - 1], tags].concat();
    // 17 words: a run of 18 zeros goes past them, 16 stop short, kind 3 does not exist, and a
    // literal run needs its words.
    for (tags, why) in [
        (&[17u8][..], "runs past"),
        (&[15], "too short"),
        (&[3 << 6 | 16], "kind 3"),
        (&[2 << 6 | 16, 0, 0], "too short"),
    ] {
        let refused = ChannelState::decode(&body(tags)).expect_err(why);
        assert!(refused.0.contains(why), "{why}: {refused:?}");
    }
    assert_eq!(
        ChannelState::decode(&body(&[16])),
        Ok(channel(NonceWindow::new(1024)))
    );
}

proptest::proptest! {
    /// Every window, stored as runs, reads back as itself, in channel records and in session
    /// windows alike.
    #[test]
    fn windows_round_trip_as_runs(
        nonces in proptest::collection::vec(0u64..3_000, 0..400),
        ranges in proptest::collection::vec((0u64..3_000, 0u64..2_000), 0..4),
        jumps in proptest::collection::vec(proptest::prelude::any::<u64>(), 0..3),
    ) {
        // Dense ranges fill whole words (runs of ones), scattered nonces make literal words.
        let dense = ranges.into_iter().flat_map(|(start, length)| start..start + length);
        let window = window_of(1024, &[dense.collect(), nonces, jumps].concat());
        let channel = ChannelState {
            window: window.clone(),
            ..ChannelState::empty(1024)
        };
        proptest::prop_assert_eq!(ChannelState::decode(&channel.encode()), Ok(channel));
        let session = SessionWindow {
            window,
            spent: crate::grant::GrantSpend::default(),
        };
        proptest::prop_assert_eq!(SessionWindow::decode(&session.encode()), Ok(session));
    }
}
