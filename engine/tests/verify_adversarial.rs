//! Adversarial signatures built on real receipts (docs/VERIFICATION.md has the table): each gets
//! its verdict from the single path, the batch path alone, the batch path among honest receipts
//! and the pool, and every one of them agrees.

mod verify_support;

use rand::RngExt;
use tollgate_engine::{ReceiptView, Verdict, Verifier, VerifyConfig, VerifyPool};

#[test]
fn every_adversarial_case_gets_its_verdict_on_every_path() {
    let mut rng = verify_support::rng(0xad5e);
    let cases = verify_support::adversarial_cases(&mut rng);
    let honest = verify_support::honest(96, 7, &mut rng);
    let config = VerifyConfig {
        threads: 2,
        batch_receipts_max: 32,
        ..VerifyConfig::default()
    };
    for case in &cases {
        let bytes = case.receipt.to_bytes();
        let view = ReceiptView::parse(&bytes).expect("a v1 record");
        let single = Verifier::new(verify_support::domain(), config.clone());
        assert_eq!(
            single.verify_one(&view),
            case.expected,
            "single: {}",
            case.name
        );
        let alone = Verifier::new(verify_support::domain(), config.clone());
        assert_eq!(
            alone.verify_batch(&[view]),
            vec![case.expected],
            "alone: {}",
            case.name
        );

        let mut records: Vec<[u8; 176]> = honest.iter().map(|r| r.to_bytes()).collect();
        let position = rng.random_range(0..=records.len());
        records.insert(position, bytes);
        let views: Vec<ReceiptView<'_>> = records
            .iter()
            .map(|record| ReceiptView::parse(record).expect("a v1 record"))
            .collect();
        let mut expected: Vec<Verdict> = vec![Ok(()); views.len()];
        expected[position] = case.expected;
        let mixed = Verifier::new(verify_support::domain(), config.clone());
        assert_eq!(mixed.verify_batch(&views), expected, "mixed: {}", case.name);
        let pool = VerifyPool::new(mixed, config.clone()).expect("pool starts");
        assert_eq!(pool.verify(&views), expected, "pool: {}", case.name);
    }
}

#[test]
fn every_adversarial_case_in_one_batch() {
    let mut rng = verify_support::rng(0xba7c);
    let cases = verify_support::adversarial_cases(&mut rng);
    let records: Vec<[u8; 176]> = cases.iter().map(|case| case.receipt.to_bytes()).collect();
    let views: Vec<ReceiptView<'_>> = records
        .iter()
        .map(|record| ReceiptView::parse(record).expect("a v1 record"))
        .collect();
    let expected: Vec<Verdict> = cases.iter().map(|case| case.expected).collect();
    let verifier = Verifier::new(verify_support::domain(), VerifyConfig::default());
    assert_eq!(verifier.verify_batch(&views), expected);
    // Second time round the refused keys come from the refusal set: same verdicts.
    assert_eq!(verifier.verify_batch(&views), expected);
    let single: Vec<Verdict> = views.iter().map(|v| verifier.verify_one(v)).collect();
    assert_eq!(single, expected);
}

#[test]
fn dalek_strict_and_lenient_paths_disagree_where_the_rule_decides() {
    // Why one rule: the R-with-torsion case passes our cofactored equation but fails dalek's
    // cofactorless verify_strict. Tollgate accepts it on every path, because the signer made it
    // and the cofactored equation is the one batch verification can check.
    let mut rng = verify_support::rng(0x70c5);
    let cases = verify_support::adversarial_cases(&mut rng);
    let torsioned_r = cases
        .iter()
        .find(|case| case.name == "R with a small-order component added")
        .expect("case exists");
    let key = ed25519_dalek::VerifyingKey::from_bytes(&torsioned_r.receipt.payer.0).expect("key");
    let signature = ed25519_dalek::Signature::from_bytes(&torsioned_r.receipt.signature);
    let message = torsioned_r
        .receipt
        .unsigned()
        .signing_bytes(&verify_support::domain());
    assert!(key.verify_strict(&message, &signature).is_err());
    assert_eq!(torsioned_r.expected, Ok(()));
}
