//! The 12 vectors of "Taming the many EdDSAs" (eprint 2020/1244, published in
//! novifinancial/ed25519-speccheck): the fixture states each vector's published shape and the
//! verdict Tollgate's rule owes it. The test first recomputes the shape from the bytes, then
//! checks that the single path, the batch path alone and the batch path mixed into honest
//! batches all give that verdict.

mod verify_support;

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::Signer;
use rand::RngExt;
use rand::seq::SliceRandom;
use serde::Deserialize;
use tollgate_engine::{Reason, SignedMessage, Verdict, Verifier, VerifyConfig};

#[derive(Deserialize)]
struct Fixture {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    number: usize,
    case: String,
    message: String,
    pub_key: String,
    signature: String,
    expected: String,
    a_order: String,
    a_canonical: bool,
    r_order: String,
    r_canonical: bool,
    s_canonical: bool,
}

struct Decoded {
    public_key: [u8; 32],
    signature: [u8; 64],
    message: Vec<u8>,
    expected: Verdict,
}

fn load() -> Vec<(Vector, Decoded)> {
    let text = include_str!("fixtures/speccheck.json");
    let fixture: Fixture = serde_json::from_str(text).expect("fixture parses");
    assert_eq!(fixture.vectors.len(), 12);
    fixture
        .vectors
        .into_iter()
        .map(|vector| {
            let decoded = Decoded {
                public_key: hex::decode(&vector.pub_key)
                    .expect("hex")
                    .try_into()
                    .expect("32 bytes"),
                signature: hex::decode(&vector.signature)
                    .expect("hex")
                    .try_into()
                    .expect("64 bytes"),
                message: hex::decode(&vector.message).expect("hex"),
                expected: match vector.expected.as_str() {
                    "ok" => Ok(()),
                    name => Err(Reason::from_name(name).expect("known reason")),
                },
            };
            (vector, decoded)
        })
        .collect()
}

fn order_class(point: &EdwardsPoint) -> &'static str {
    if point.is_small_order() {
        "small"
    } else if point.is_torsion_free() {
        "prime"
    } else {
        "mixed"
    }
}

fn canonical(bytes: [u8; 32]) -> bool {
    CompressedEdwardsY(bytes)
        .decompress()
        .is_some_and(|point| point.compress().to_bytes() == bytes)
}

#[test]
fn fixture_describes_the_published_vectors() {
    for (vector, decoded) in load() {
        let a = CompressedEdwardsY(decoded.public_key)
            .decompress()
            .expect("every speccheck key decompresses");
        let mut r_bytes = [0u8; 32];
        r_bytes.copy_from_slice(&decoded.signature[..32]);
        let r = CompressedEdwardsY(r_bytes)
            .decompress()
            .expect("every speccheck R decompresses");
        let mut s_bytes = [0u8; 32];
        s_bytes.copy_from_slice(&decoded.signature[32..]);
        let shape = (
            order_class(&a),
            canonical(decoded.public_key),
            order_class(&r),
            canonical(r_bytes),
            bool::from(Scalar::from_canonical_bytes(s_bytes).is_some()),
        );
        assert_eq!(
            shape,
            (
                vector.a_order.as_str(),
                vector.a_canonical,
                vector.r_order.as_str(),
                vector.r_canonical,
                vector.s_canonical
            ),
            "vector {}: {}",
            vector.number,
            vector.case
        );
    }
}

fn signed(decoded: &Decoded) -> SignedMessage<'_> {
    SignedMessage {
        public_key: decoded.public_key,
        signature: decoded.signature,
        message: &decoded.message,
    }
}

#[test]
fn single_and_batch_give_the_expected_verdict_for_each_vector() {
    let vectors = load();
    // A fresh verifier per path: the key cache must not be what makes them agree.
    let single = Verifier::new(verify_support::domain(), VerifyConfig::default());
    let batch = Verifier::new(verify_support::domain(), VerifyConfig::default());
    for (vector, decoded) in &vectors {
        let message = signed(decoded);
        assert_eq!(
            single.verify_message(&message),
            decoded.expected,
            "single, vector {}: {}",
            vector.number,
            vector.case
        );
        assert_eq!(
            batch.verify_messages(&[message]),
            vec![decoded.expected],
            "batch of one, vector {}",
            vector.number
        );
    }
    let all: Vec<SignedMessage<'_>> = vectors.iter().map(|(_, decoded)| signed(decoded)).collect();
    let expected: Vec<Verdict> = vectors
        .iter()
        .map(|(_, decoded)| decoded.expected)
        .collect();
    let fresh = Verifier::new(verify_support::domain(), VerifyConfig::default());
    assert_eq!(
        fresh.verify_messages(&all),
        expected,
        "all twelve in one batch"
    );
}

#[test]
fn vectors_mixed_into_honest_batches_keep_their_verdicts() {
    let vectors = load();
    let mut rng = verify_support::rng(0x5eec);
    let keys: Vec<_> = (0..16).map(verify_support::signing_key).collect();
    let messages: Vec<Vec<u8>> = (0..200u32)
        .map(|n| {
            let mut message = n.to_le_bytes().to_vec();
            message.extend_from_slice(&rng.random::<[u8; 28]>());
            message
        })
        .collect();
    let honest: Vec<([u8; 32], [u8; 64], &[u8])> = messages
        .iter()
        .enumerate()
        .map(|(n, message)| {
            let key = &keys[n % keys.len()];
            (
                key.verifying_key().to_bytes(),
                key.sign(message).to_bytes(),
                message.as_slice(),
            )
        })
        .collect();
    for round in 0..100 {
        // Batch sizes from 2 to 200, so the vectors land in chunks and sub-batches of all sizes.
        let size = rng.random_range(2..=200);
        let mut entries: Vec<(SignedMessage<'_>, Verdict)> = honest[..size]
            .iter()
            .map(|&(public_key, signature, message)| {
                (
                    SignedMessage {
                        public_key,
                        signature,
                        message,
                    },
                    Ok(()),
                )
            })
            .collect();
        let mixed_in = rng.random_range(1..=12);
        let mut chosen: Vec<&(Vector, Decoded)> = vectors.iter().collect();
        chosen.shuffle(&mut rng);
        for (_, decoded) in chosen.into_iter().take(mixed_in) {
            let position = rng.random_range(0..=entries.len());
            entries.insert(position, (signed(decoded), decoded.expected));
        }
        let (batch, expected): (Vec<SignedMessage<'_>>, Vec<Verdict>) = entries.into_iter().unzip();
        let config = VerifyConfig {
            batch_receipts_max: rng.random_range(1..=256),
            ..VerifyConfig::default()
        };
        let verifier = Verifier::new(verify_support::domain(), config);
        let single: Vec<Verdict> = batch.iter().map(|m| verifier.verify_message(m)).collect();
        assert_eq!(single, expected, "round {round}: single path");
        let batched = Verifier::new(verify_support::domain(), VerifyConfig::default());
        assert_eq!(
            batched.verify_messages(&batch),
            expected,
            "round {round}: batch"
        );
        assert_eq!(
            verifier.verify_messages(&batch),
            expected,
            "round {round}: warm cache"
        );
    }
}
