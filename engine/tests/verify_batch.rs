//! Batch path against single path on random mixes (proptest), and the awkward inputs: empty,
//! one, all bad, duplicates, a million receipts.

mod verify_support;

use std::sync::OnceLock;

use proptest::prelude::*;
use tollgate_engine::{Reason, Receipt, ReceiptView, Verdict, Verifier, VerifyConfig, VerifyPool};

/// Receipts of every kind, built once: honest ones from a few payers, and the adversarial cases.
fn corpus() -> &'static Vec<(Receipt, Verdict)> {
    static CORPUS: OnceLock<Vec<(Receipt, Verdict)>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut rng = verify_support::rng(0xc0de);
        let mut corpus: Vec<(Receipt, Verdict)> = verify_support::honest(48, 6, &mut rng)
            .into_iter()
            .map(|receipt| (receipt, Ok(())))
            .collect();
        // Honest receipts with one signature bit flipped: R or S bytes.
        for (receipt, (byte, bit)) in [(0usize, 0u8), (5, 3), (31, 6), (32, 0), (40, 7), (60, 2)]
            .into_iter()
            .enumerate()
        {
            let mut broken = corpus[receipt].0;
            broken.signature[byte] ^= 1 << bit;
            corpus.push((broken, Err(Reason::BadSignature)));
        }
        corpus.extend(
            verify_support::adversarial_cases(&mut rng)
                .into_iter()
                .map(|case| (case.receipt, case.expected)),
        );
        corpus
    })
}

fn views(records: &[[u8; 176]]) -> Vec<ReceiptView<'_>> {
    records
        .iter()
        .map(|record| ReceiptView::parse(record).expect("a v1 record"))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn batch_with_bisection_equals_single_path_receipt_by_receipt(
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..160),
        batch_receipts_max in 1usize..80,
    ) {
        let corpus = corpus();
        let chosen: Vec<&(Receipt, Verdict)> = picks.iter().map(|pick| pick.get(corpus)).collect();
        let records: Vec<[u8; 176]> = chosen.iter().map(|(receipt, _)| receipt.to_bytes()).collect();
        let views = views(&records);
        let config = VerifyConfig { threads: 2, batch_receipts_max, ..VerifyConfig::default() };
        let single_verifier = Verifier::new(verify_support::domain(), config.clone());
        let single: Vec<Verdict> = views.iter().map(|v| single_verifier.verify_one(v)).collect();
        let expected: Vec<Verdict> = chosen.iter().map(|(_, verdict)| *verdict).collect();
        prop_assert_eq!(&single, &expected);
        let batch_verifier = Verifier::new(verify_support::domain(), config.clone());
        prop_assert_eq!(&batch_verifier.verify_batch(&views), &single);
        let pool = VerifyPool::new(batch_verifier, config).expect("pool starts");
        prop_assert_eq!(&pool.verify(&views), &single);
    }
}

fn pool(batch_receipts_max: usize) -> VerifyPool {
    let config = VerifyConfig {
        threads: 2,
        batch_receipts_max,
        ..VerifyConfig::default()
    };
    VerifyPool::new(
        Verifier::new(verify_support::domain(), config.clone()),
        config,
    )
    .expect("pool starts")
}

#[test]
fn empty_batch_gets_no_verdicts() {
    assert!(pool(64).verify(&[]).is_empty());
    let verifier = Verifier::new(verify_support::domain(), VerifyConfig::default());
    assert!(verifier.verify_batch(&[]).is_empty());
}

#[test]
fn batch_of_one_good_and_one_bad() {
    let mut rng = verify_support::rng(1);
    let good = verify_support::honest(1, 1, &mut rng)[0];
    let mut bad = good;
    bad.amount += 1;
    for (receipt, expected) in [(good, Ok(())), (bad, Err(Reason::BadSignature))] {
        let records = [receipt.to_bytes()];
        assert_eq!(pool(64).verify(&views(&records)), vec![expected]);
    }
}

#[test]
fn all_bad_batch_rejects_every_receipt() {
    let mut rng = verify_support::rng(2);
    let records: Vec<[u8; 176]> = verify_support::honest(300, 5, &mut rng)
        .into_iter()
        .map(|mut receipt| {
            receipt.nonce ^= 1;
            receipt.to_bytes()
        })
        .collect();
    let verdicts = pool(128).verify(&views(&records));
    assert_eq!(verdicts, vec![Err(Reason::BadSignature); 300]);
}

#[test]
fn duplicate_receipts_in_one_batch_are_each_verified() {
    let mut rng = verify_support::rng(3);
    let receipts = verify_support::honest(3, 2, &mut rng);
    let mut bad = receipts[1];
    bad.signature[40] ^= 4;
    let order = [receipts[0], receipts[0], bad, receipts[2], bad, receipts[0]];
    let records: Vec<[u8; 176]> = order.iter().map(Receipt::to_bytes).collect();
    let expected = vec![
        Ok(()),
        Ok(()),
        Err(Reason::BadSignature),
        Ok(()),
        Err(Reason::BadSignature),
        Ok(()),
    ];
    assert_eq!(pool(4).verify(&views(&records)), expected);
}

#[test]
fn chunks_shrink_while_most_fail_and_return_on_clean_traffic() {
    let mut rng = verify_support::rng(4);
    let honest = verify_support::honest(1024, 16, &mut rng);
    let clean: Vec<[u8; 176]> = honest.iter().map(Receipt::to_bytes).collect();
    // One bad S every 50 receipts (R stays a valid point, so only the equation can catch it):
    // every chunk of 64 or more fails, and most chunks of 32.
    let mixed: Vec<[u8; 176]> = honest
        .iter()
        .enumerate()
        .map(|(index, receipt)| {
            let mut receipt = *receipt;
            if index % 50 == 7 {
                receipt.signature[40] ^= 1;
            }
            receipt.to_bytes()
        })
        .collect();
    let expected_mixed: Vec<Verdict> = (0..mixed.len())
        .map(|index| {
            if index % 50 == 7 {
                Err(Reason::BadSignature)
            } else {
                Ok(())
            }
        })
        .collect();
    let pool = pool(256);
    let mut chunks = vec![pool.chunk_receipts()];
    for _ in 0..4 {
        assert_eq!(pool.verify(&views(&mixed)), expected_mixed);
        chunks.push(pool.chunk_receipts());
    }
    assert_eq!(chunks, [256, 128, 64, 32, 32], "halves down to the floor");
    assert_eq!(pool.verify(&views(&clean)), vec![Ok(()); clean.len()]);
    assert_eq!(
        pool.chunk_receipts(),
        256,
        "clean traffic restores the largest chunk"
    );
}

#[test]
fn bad_configuration_is_a_typed_error() {
    let verifier = Verifier::new(verify_support::domain(), VerifyConfig::default());
    let no_threads = VerifyConfig {
        threads: 0,
        ..VerifyConfig::default()
    };
    assert!(matches!(
        VerifyPool::new(verifier.clone(), no_threads),
        Err(tollgate_engine::VerifyError::NoThreads)
    ));
    let empty_batch = VerifyConfig {
        batch_receipts_max: 0,
        ..VerifyConfig::default()
    };
    assert!(matches!(
        VerifyPool::new(verifier, empty_batch),
        Err(tollgate_engine::VerifyError::EmptyBatch)
    ));
}

#[test]
fn refused_keys_are_cached_apart_and_stay_refused() {
    let mut rng = verify_support::rng(4);
    let cases = verify_support::adversarial_cases(&mut rng);
    let verifier = Verifier::new(verify_support::domain(), VerifyConfig::default());
    for case in &cases {
        let record = case.receipt.to_bytes();
        let view = ReceiptView::parse(&record).expect("a v1 record");
        assert_eq!(verifier.verify_one(&view), case.expected, "{}", case.name);
        assert_eq!(
            verifier.verify_one(&view),
            case.expected,
            "{} again",
            case.name
        );
    }
    let (accepted, refused) = verifier.cached_keys();
    assert_eq!(accepted, 1, "every honest-key case shares one key");
    assert!(refused >= 12, "refused keys remembered: {refused}");
}
