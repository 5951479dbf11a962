//! Receipts for the verification tests: honest ones, and adversarial ones built with the curve
//! arithmetic directly (a signer who controls its nonce and key can make every one of these).

#![allow(dead_code)] // each test binary uses its own subset

use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sha2::{Digest, Sha512};
use tollgate_engine::{Address, Domain, PayerKey, Reason, Receipt, UnsignedReceipt, Verdict};

pub fn domain() -> Domain {
    Domain {
        chain_id: 31_337,
        contract: Address([0x5a; 20]),
    }
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn unsigned(payer: [u8; 32], nonce: u64, rng: &mut StdRng) -> UnsignedReceipt {
    UnsignedReceipt {
        payer: PayerKey(payer),
        payee: Address([0x11; 20]),
        amount: rng.random_range(1..1_000_000),
        nonce,
        timestamp_ms: 1_764_000_000_000 + nonce,
        request_hash: rng.random(),
        session: false,
    }
}

pub fn signing_key(index: u64) -> SigningKey {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&index.to_le_bytes());
    secret[31] = 0x42;
    SigningKey::from_bytes(&secret)
}

/// `count` honest receipts from `payers` keys, round robin.
pub fn honest(count: usize, payers: u64, rng: &mut StdRng) -> Vec<Receipt> {
    let keys: Vec<SigningKey> = (0..payers).map(signing_key).collect();
    (0..count)
        .map(|n| {
            let key = &keys[n % keys.len()];
            unsigned(key.verifying_key().to_bytes(), n as u64, rng).sign(key, &domain())
        })
        .collect()
}

/// An ed25519 signature made by hand: the signer picks its secret scalar, the bytes it
/// publishes as its key, its nonce and the bytes it publishes as R.
pub fn sign_raw(
    secret: Scalar,
    key_bytes: [u8; 32],
    nonce: Scalar,
    r_bytes: [u8; 32],
    message: &[u8],
) -> [u8; 64] {
    let k = Scalar::from_hash(
        Sha512::new()
            .chain_update(r_bytes)
            .chain_update(key_bytes)
            .chain_update(message),
    );
    let s = nonce + k * secret;
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(&r_bytes);
    signature[32..].copy_from_slice(&s.to_bytes());
    signature
}

fn receipt_signed_raw(
    secret: Scalar,
    key_bytes: [u8; 32],
    nonce: Scalar,
    r_bytes: [u8; 32],
    rng: &mut StdRng,
) -> Receipt {
    let unsigned = unsigned(key_bytes, rng.random(), rng);
    let signature = sign_raw(
        secret,
        key_bytes,
        nonce,
        r_bytes,
        &unsigned.signing_bytes(&domain()),
    );
    unsigned.with_signature(signature)
}

/// The point of order 8 among the eight torsion points.
pub fn order_eight_point() -> EdwardsPoint {
    EIGHT_TORSION[1]
}

/// L, the order of the prime-order subgroup, little-endian.
pub const GROUP_ORDER_LE: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// `S + L` as a 256-bit integer: the same scalar mod L, but not its canonical encoding.
pub fn add_group_order(s: [u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(s[i]) + u16::from(GROUP_ORDER_LE[i]) + carry;
        out[i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0, "S + L fits in 256 bits since S < L < 2^253");
    out
}

/// The identity encoded with y = p + 1 instead of y = 1.
pub fn identity_with_y_above_p() -> [u8; 32] {
    let mut bytes = [0xffu8; 32];
    bytes[0] = 0xee;
    bytes[31] = 0x7f;
    bytes
}

/// The identity encoded with the sign bit set although x = 0.
pub fn identity_with_negative_zero_x() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[0] = 1;
    bytes[31] = 0x80;
    bytes
}

/// A y < 19 that is on the curve and of large order, encoded as y + p: a non-canonical encoding
/// of a key nobody knows the secret of.
pub fn large_order_point_with_y_above_p() -> [u8; 32] {
    for y in 2u8..19 {
        for sign in [0u8, 0x80] {
            let mut bytes = identity_with_y_above_p();
            bytes[0] = 0xed + y;
            bytes[31] |= sign;
            if let Some(point) = CompressedEdwardsY(bytes).decompress()
                && !point.is_small_order()
            {
                return bytes;
            }
        }
    }
    panic!("some y below 19 is on the curve with large order");
}

/// A 32-byte string that is not the y coordinate of any curve point.
pub fn not_on_curve() -> [u8; 32] {
    (2u8..)
        .map(|y| {
            let mut bytes = [0u8; 32];
            bytes[0] = y;
            bytes
        })
        .find(|bytes| CompressedEdwardsY(*bytes).decompress().is_none())
        .expect("about half of all y are off the curve")
}

/// One adversarial case: what it is, the receipt, and the verdict the rule owes it.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    pub receipt: Receipt,
    pub expected: Verdict,
}

/// Every adversarial case of docs/VERIFICATION.md, built fresh from `rng`.
pub fn adversarial_cases(rng: &mut StdRng) -> Vec<Case> {
    let basepoint = ED25519_BASEPOINT_POINT;
    let secret = Scalar::from(rng.random::<u128>()) * Scalar::from(rng.random::<u128>());
    let nonce = Scalar::from(rng.random::<u128>()) * Scalar::from(rng.random::<u128>());
    let key = (basepoint * secret).compress().to_bytes();
    let r_honest = (basepoint * nonce).compress().to_bytes();
    let torsion = order_eight_point();
    let mut cases = Vec::new();

    cases.push(Case {
        name: "honest signature (hand-made)",
        receipt: receipt_signed_raw(secret, key, nonce, r_honest, rng),
        expected: Ok(()),
    });

    let r_torsioned = (basepoint * nonce + torsion).compress().to_bytes();
    cases.push(Case {
        name: "R with a small-order component added",
        receipt: receipt_signed_raw(secret, key, nonce, r_torsioned, rng),
        expected: Ok(()),
    });

    let key_torsioned = (basepoint * secret + torsion).compress().to_bytes();
    cases.push(Case {
        name: "payer key with a torsion component",
        receipt: receipt_signed_raw(secret, key_torsioned, nonce, r_honest, rng),
        expected: Err(Reason::BadPayerKey),
    });

    let honest = receipt_signed_raw(secret, key, nonce, r_honest, rng);
    let mut s_plus_l = honest;
    let mut s = [0u8; 32];
    s.copy_from_slice(&honest.signature[32..]);
    s_plus_l.signature[32..].copy_from_slice(&add_group_order(s));
    cases.push(Case {
        name: "S + L instead of S (S >= L)",
        receipt: s_plus_l,
        expected: Err(Reason::BadSignature),
    });

    let mut s_max = honest;
    s_max.signature[32..].fill(0xff);
    cases.push(Case {
        name: "S = 2^256 - 1",
        receipt: s_max,
        expected: Err(Reason::BadSignature),
    });

    // R = identity, so S = k·a satisfies the equation for whichever R encoding k hashed.
    cases.push(Case {
        name: "non-canonical R: identity with y = p + 1",
        receipt: receipt_signed_raw(secret, key, Scalar::ZERO, identity_with_y_above_p(), rng),
        expected: Err(Reason::BadSignature),
    });
    cases.push(Case {
        name: "non-canonical R: identity with x = -0",
        receipt: receipt_signed_raw(
            secret,
            key,
            Scalar::ZERO,
            identity_with_negative_zero_x(),
            rng,
        ),
        expected: Err(Reason::BadSignature),
    });
    cases.push(Case {
        name: "canonical R = identity (S = k·a)",
        receipt: receipt_signed_raw(
            secret,
            key,
            Scalar::ZERO,
            EdwardsPoint::default().compress().to_bytes(),
            rng,
        ),
        expected: Ok(()),
    });

    cases.push(Case {
        name: "R not on the curve",
        receipt: receipt_signed_raw(secret, key, nonce, not_on_curve(), rng),
        expected: Err(Reason::BadSignature),
    });

    // A small-order key: [8][k]A vanishes, so S = r satisfies the cofactored equation for any
    // message. This is why such keys are refused outright.
    for (index, point) in EIGHT_TORSION.iter().enumerate() {
        let name = [
            "small-order key: identity",
            "small-order key: order 8 (1)",
            "small-order key: order 4 (1)",
            "small-order key: order 8 (2)",
            "small-order key: order 2",
            "small-order key: order 8 (3)",
            "small-order key: order 4 (2)",
            "small-order key: order 8 (4)",
        ][index];
        cases.push(Case {
            name,
            receipt: receipt_signed_raw(
                Scalar::ZERO,
                point.compress().to_bytes(),
                nonce,
                r_honest,
                rng,
            ),
            expected: Err(Reason::BadPayerKey),
        });
    }

    cases.push(Case {
        name: "non-canonical key: identity with y = p + 1",
        receipt: receipt_signed_raw(
            Scalar::ZERO,
            identity_with_y_above_p(),
            nonce,
            r_honest,
            rng,
        ),
        expected: Err(Reason::BadPayerKey),
    });
    cases.push(Case {
        name: "non-canonical key: identity with x = -0",
        receipt: receipt_signed_raw(
            Scalar::ZERO,
            identity_with_negative_zero_x(),
            nonce,
            r_honest,
            rng,
        ),
        expected: Err(Reason::BadPayerKey),
    });
    cases.push(Case {
        name: "non-canonical key of large order (y + p, y < 19)",
        receipt: receipt_signed_raw(
            secret,
            large_order_point_with_y_above_p(),
            nonce,
            r_honest,
            rng,
        ),
        expected: Err(Reason::BadPayerKey),
    });
    cases.push(Case {
        name: "payer key not on the curve",
        receipt: receipt_signed_raw(secret, not_on_curve(), nonce, r_honest, rng),
        expected: Err(Reason::BadPayerKey),
    });

    let mut tampered = honest;
    tampered.amount += 1;
    cases.push(Case {
        name: "amount changed after signing",
        receipt: tampered,
        expected: Err(Reason::BadSignature),
    });

    let other_domain = Domain {
        chain_id: 1,
        ..domain()
    };
    let mut foreign = honest.unsigned();
    foreign.nonce = rng.random();
    let foreign_signature = sign_raw(
        secret,
        key,
        nonce,
        r_honest,
        &foreign.signing_bytes(&other_domain),
    );
    cases.push(Case {
        name: "signed for another chain id",
        receipt: foreign.with_signature(foreign_signature),
        expected: Err(Reason::BadSignature),
    });

    // A key with torsion signing with a torsioned R too: still refused for the key.
    let r_torsioned_again = (basepoint * nonce + EIGHT_TORSION[2]).compress().to_bytes();
    cases.push(Case {
        name: "torsioned key and torsioned R",
        receipt: receipt_signed_raw(secret, key_torsioned, nonce, r_torsioned_again, rng),
        expected: Err(Reason::BadPayerKey),
    });
    cases
}
