use ed25519_dalek::SigningKey;

use super::*;
use crate::receipt::{Address, PayerKey, RECEIPT_BYTES, UnsignedReceipt};

fn records(count: usize, payers: u8) -> Vec<[u8; RECEIPT_BYTES]> {
    let domain = Domain::default();
    (0..count)
        .map(|n| {
            let key = SigningKey::from_bytes(&[n as u8 % payers; 32]);
            UnsignedReceipt {
                payer: PayerKey(key.verifying_key().to_bytes()),
                payee: Address([7; 20]),
                amount: 10,
                nonce: n as u64,
                timestamp_ms: 0,
                request_hash: [0; 32],
                session: false,
            }
            .sign(&key, &domain)
            .to_bytes()
        })
        .collect()
}

fn equations_for(records: &[[u8; RECEIPT_BYTES]]) -> (Vec<Verdict>, usize) {
    let verifier = Verifier::new(Domain::default(), VerifyConfig::default());
    let views: Vec<ReceiptView<'_>> = records
        .iter()
        .map(|record| ReceiptView::parse(record).expect("a v1 record"))
        .collect();
    let mut verdicts = vec![Ok(()); views.len()];
    let equations = verifier.batch(&views, &verifier.inner.separator, &mut verdicts);
    (verdicts, equations)
}

#[test]
fn a_good_batch_takes_one_equation() {
    let (verdicts, equations) = equations_for(&records(256, 9));
    assert!(verdicts.iter().all(Result::is_ok));
    assert_eq!(equations, 1);
}

#[test]
fn bisection_isolates_each_bad_signature_with_few_equations() {
    let mut batch = records(256, 9);
    let bad = [3usize, 130, 255];
    for &index in &bad {
        batch[index][RECEIPT_BYTES - 1] ^= 1;
    }
    let (verdicts, equations) = equations_for(&batch);
    for (index, verdict) in verdicts.iter().enumerate() {
        let expected = if bad.contains(&index) {
            Err(Reason::BadSignature)
        } else {
            Ok(())
        };
        assert_eq!(*verdict, expected, "receipt {index}");
    }
    // One whole-batch equation, then at most two per level of the tree per bad receipt: far from
    // one equation per receipt.
    let levels = 8;
    assert!(
        equations <= 1 + bad.len() * 2 * levels,
        "{equations} equations"
    );
}

#[test]
fn coalesced_keys_verify_like_distinct_keys() {
    // One payer for the whole batch: a single A term carries every receipt's coefficient.
    let (verdicts, equations) = equations_for(&records(64, 1));
    assert!(verdicts.iter().all(Result::is_ok));
    assert_eq!(equations, 1);
    let mut one_bad = records(64, 1);
    one_bad[10][60] ^= 1;
    let (verdicts, _) = equations_for(&one_bad);
    assert_eq!(verdicts[10], Err(Reason::BadSignature));
    assert_eq!(verdicts.iter().filter(|v| v.is_ok()).count(), 63);
}

/// The bound on a failing client: while its signatures keep failing its chunks halve down to the
/// floor, every other client in the same calls keeps full chunks, verdicts stay exact, and once
/// it sends clean signatures it is back to full chunks.
#[test]
fn a_failing_client_alone_shrinks_its_chunks_and_recovers() {
    let config = VerifyConfig {
        threads: 2,
        ..VerifyConfig::default()
    };
    let pool =
        VerifyPool::new(Verifier::new(Domain::default(), config.clone()), config).expect("pool");
    let clean = records(512, 16);
    let mut dirty = clean.clone();
    for record in dirty.iter_mut().step_by(10) {
        record[RECEIPT_BYTES - 1] ^= 1;
    }
    let call = |abuser: &[[u8; RECEIPT_BYTES]]| {
        let mut all: Vec<[u8; RECEIPT_BYTES]> = clean.clone();
        all.extend_from_slice(abuser);
        all.extend_from_slice(&clean);
        let views: Vec<ReceiptView<'_>> = all
            .iter()
            .map(|record| ReceiptView::parse(record).expect("a v1 record"))
            .collect();
        let spans =
            [(1, clean.len()), (2, abuser.len()), (3, clean.len())].map(|(client_id, receipts)| {
                ClientSpan {
                    client_id,
                    receipts,
                }
            });
        let verdicts = pool.verify_clients(&views, &spans);
        let expected: Vec<Verdict> = views
            .iter()
            .map(|view| pool.verifier().verify_one(view))
            .collect();
        assert_eq!(verdicts, expected);
        [1, 2, 3].map(|client| pool.client_chunk_receipts(client))
    };
    let mut abuser_chunks = Vec::new();
    for _ in 0..4 {
        let [first, abuser, last] = call(&dirty);
        assert_eq!(
            (first, last),
            (BATCH_RECEIPTS_DEFAULT, BATCH_RECEIPTS_DEFAULT)
        );
        abuser_chunks.push(abuser);
    }
    assert_eq!(abuser_chunks, [128, 64, 32, 32], "halves down to the floor");
    assert_eq!(pool.failing_clients().len(), 1);
    assert_eq!(
        call(&clean),
        [BATCH_RECEIPTS_DEFAULT; 3],
        "a client that stops failing recovers"
    );
    assert!(pool.failing_clients().is_empty());
}
