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
