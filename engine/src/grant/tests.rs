use super::*;

fn domain() -> Domain {
    Domain {
        chain_id: 31_337,
        contract: Address([0x33; 20]),
    }
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn public(key: &SigningKey) -> PayerKey {
    PayerKey(key.verifying_key().to_bytes())
}

fn grant() -> Grant {
    Grant {
        domain: domain(),
        payer: public(&key(1)),
        session: public(&key(2)),
        nonce: 1,
        cap: 10_000,
        allowance: Some(Allowance {
            amount: 4_000,
            period_ms: 60_000,
        }),
        valid_from_ms: 1_000_000,
        valid_until_ms: 2_000_000,
        payees: PayeeScope::Only(vec![Address([0x11; 20]), Address([0x12; 20])]),
    }
}

#[test]
fn grant_and_revocation_round_trip_and_check() {
    for payees in [PayeeScope::Any, grant().payees] {
        let signed = Grant { payees, ..grant() }.sign(&key(1));
        let decoded = SignedGrant::decode(&signed.to_bytes()).expect("decodes");
        assert_eq!(decoded, signed);
        decoded.check(&domain()).expect("a valid grant");
    }
    let revocation = Revocation {
        domain: domain(),
        payer: public(&key(1)),
        session: public(&key(2)),
        revoked_at_ms: 1_500_000,
    }
    .sign(&key(1));
    let decoded = SignedRevocation::decode(&revocation.to_bytes()).expect("decodes");
    assert_eq!(decoded, revocation);
    decoded.check(&domain()).expect("a valid revocation");
    let forged = Revocation {
        payer: public(&key(3)),
        ..revocation.revocation
    }
    .sign(&key(1));
    assert_eq!(
        forged.check(&domain()).err(),
        Some(GrantError::BadSignature)
    );
}

#[test]
fn each_bad_grant_gets_its_own_error() {
    let other = Domain {
        chain_id: 1,
        ..domain()
    };
    // The small-order point of order 4: (0, -1) ... any encoding of a torsion point.
    let mut small_order = [0u8; 32];
    small_order[0] = 1;
    let cases: Vec<(Grant, SigningKey, GrantError)> = vec![
        (
            Grant {
                domain: other,
                ..grant()
            },
            key(1),
            GrantError::WrongDeployment {
                chain_id: 1,
                contract: Address([0x33; 20]),
            },
        ),
        (grant(), key(9), GrantError::BadSignature),
        (Grant { cap: 0, ..grant() }, key(1), GrantError::ZeroCap),
        (
            Grant {
                allowance: Some(Allowance {
                    amount: 5,
                    period_ms: 0,
                }),
                ..grant()
            },
            key(1),
            GrantError::BadAllowance,
        ),
        (
            Grant {
                valid_until_ms: 1_000_000,
                ..grant()
            },
            key(1),
            GrantError::EmptyValidity {
                from: 1_000_000,
                until: 1_000_000,
            },
        ),
        (
            Grant {
                session: public(&key(1)),
                ..grant()
            },
            key(1),
            GrantError::SessionKeyIsPayer(public(&key(1))),
        ),
        (
            Grant {
                session: PayerKey(small_order),
                ..grant()
            },
            key(1),
            GrantError::BadSessionKey,
        ),
        (
            Grant {
                payer: PayerKey(small_order),
                ..grant()
            },
            key(1),
            GrantError::BadPayerKey,
        ),
        (
            Grant {
                payees: PayeeScope::Only(vec![Address([1; 20]), Address([1; 20])]),
                ..grant()
            },
            key(1),
            GrantError::Malformed("a scope lists 1 to 4 distinct payees".into()),
        ),
    ];
    for (grant, signer, expected) in cases {
        let signed = grant.sign(&signer);
        assert_eq!(
            signed.check(&domain()).err(),
            Some(expected.clone()),
            "{grant:?}"
        );
        assert_eq!(
            GrantError::CODES
                .iter()
                .find(|(code, _)| *code == expected.code())
                .map(|(_, name)| *name),
            Some(expected.name())
        );
    }
}

#[test]
fn malformed_records_are_refused_by_the_decoder() {
    let bytes = grant().sign(&key(1)).to_bytes();
    assert!(matches!(
        SignedGrant::decode(&bytes[..GRANT_BYTES - 1]),
        Err(GrantError::Malformed(_))
    ));
    let mut reserved = bytes;
    reserved[142] = 1;
    assert!(matches!(
        SignedGrant::decode(&reserved),
        Err(GrantError::Malformed(_))
    ));
    let mut too_many = bytes;
    too_many[140] = 5;
    assert!(matches!(
        SignedGrant::decode(&too_many),
        Err(GrantError::Malformed(_))
    ));
    let mut stray_slot = bytes;
    stray_slot[PAYEES_AT + 20 * 3] = 1;
    assert!(matches!(
        SignedGrant::decode(&stray_slot),
        Err(GrantError::Malformed(_))
    ));
    assert!(matches!(
        SignedRevocation::decode(&[0u8; 10]),
        Err(GrantError::Malformed(_))
    ));
}

#[test]
fn admits_and_charge_enforce_validity_scope_cap_and_allowance() {
    let grant = grant();
    let payee = Address([0x11; 20]);
    let at = 1_000_000;
    assert_eq!(
        grant.admits(&payee, at - 1, at),
        Err(Reason::GrantNotYetValid)
    );
    assert_eq!(
        grant.admits(&payee, at, 2_000_000),
        Err(Reason::GrantExpired),
        "the acceptance time counts as much as the signed one"
    );
    assert_eq!(
        grant.admits(&Address([0x13; 20]), at, at),
        Err(Reason::PayeeNotInGrant)
    );
    assert_eq!(grant.admits(&payee, 1_999_999, 1_999_999), Ok(()));
    let spent = grant
        .charge(&GrantSpend::default(), 4_000, at)
        .expect("within");
    assert_eq!(
        grant.charge(&spent, 1, at + 59_999),
        Err(Reason::OverGrantAllowance)
    );
    // The next period starts afresh; the cap still counts everything.
    let spent = grant
        .charge(&spent, 4_000, at + 60_000)
        .expect("next period");
    assert_eq!(spent.period, 1);
    // A receipt signed in the older period is charged to the newest one.
    assert_eq!(grant.charge(&spent, 1, at), Err(Reason::OverGrantAllowance));
    let spent = grant.charge(&spent, 2_000, at + 120_000).expect("third");
    assert_eq!(spent.total, 10_000);
    assert_eq!(
        grant.charge(&spent, 1, at + 180_000),
        Err(Reason::OverGrantCap)
    );
}

proptest::proptest! {
    /// A session's spend kept as one part per payee (what the ledger stores) always combines to
    /// the spend [`Grant::charge`] keeps for the session as a whole, in any order of parts,
    /// across periods, with and without an allowance.
    #[test]
    fn parts_per_payee_combine_to_the_sessions_spend(
        allowance in proptest::bool::ANY,
        charges in proptest::collection::vec((0usize..4, 0u64..1_500, 0u64..400_000), 1..120),
    ) {
        let grant = Grant {
            allowance: allowance.then_some(grant().allowance).flatten(),
            ..grant()
        };
        let mut spent = GrantSpend::default();
        let mut parts = [GrantSpend::default(); 4];
        for (payee, amount, elapsed) in charges {
            let Ok(after) = grant.charge(&spent, amount, grant.valid_from_ms + elapsed) else {
                continue;
            };
            parts[payee] = parts[payee].part_after(&spent, &after, amount).expect("fits");
            spent = after;
            let forward = parts.iter().try_fold(GrantSpend::default(), |sum, part| sum.combine(*part));
            let backward = parts.iter().rev().try_fold(GrantSpend::default(), |sum, part| sum.combine(*part));
            proptest::prop_assert_eq!(forward, Some(spent));
            proptest::prop_assert_eq!(backward, Some(spent));
        }
    }
}
