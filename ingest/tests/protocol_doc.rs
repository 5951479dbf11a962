//! `docs/PROTOCOL.md` is the specification other implementations are written from: these tests
//! read it and check it against the code, byte for byte, so the two cannot drift apart.

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use tollgate_engine::grant::{
    Allowance, Grant, GrantError, PayeeScope, Revocation, SignedGrant, SignedRevocation,
};
use tollgate_engine::{
    Address, Domain, PayerKey, Reason, ReceiptBatch, ReceiptView, UnsignedReceipt,
};
use tollgate_ingest::wire::{
    Challenge, Decoded, ErrorCode, FRAME_BYTES_MAX, Frame, FrameType, Hello, Registration, Submit,
    decode_frame,
};

fn protocol_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    std::fs::read_to_string(path).expect("docs/PROTOCOL.md is readable")
}

/// The bytes of the fenced block opened by "```hex <name>", whitespace ignored.
fn hex_block(doc: &str, name: &str) -> Vec<u8> {
    let opening = format!("```hex {name}\n");
    let start = doc
        .find(&opening)
        .unwrap_or_else(|| panic!("PROTOCOL.md has no ```hex {name} block"))
        + opening.len();
    let len = doc[start..].find("```").expect("block is closed");
    let digits: String = doc[start..start + len]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    hex::decode(digits).unwrap_or_else(|e| panic!("block {name} is not hex: {e}"))
}

/// Hex in 32-byte lines, the way the document prints it, for pasting when an example changes.
fn lines(bytes: &[u8]) -> String {
    bytes
        .chunks(32)
        .map(hex::encode)
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_block(doc: &str, name: &str, actual: &[u8]) {
    assert!(
        hex_block(doc, name) == actual,
        "```hex {name} in PROTOCOL.md differs from the code, which gives:\n{}",
        lines(actual)
    );
}

/// The example's fields, as the table in PROTOCOL.md states them.
fn example_domain() -> Domain {
    Domain {
        chain_id: 31_337,
        contract: "0x5fbdb2315678afecb367f032d93f642f64180aa3"
            .parse()
            .expect("address"),
    }
}

fn example_receipt(payer: PayerKey) -> UnsignedReceipt {
    UnsignedReceipt {
        payer,
        payee: Address([0x11; 20]),
        amount: 1_500,
        nonce: 7,
        timestamp_ms: 1_764_000_000_000,
        request_hash: [0x22; 32],
        session: false,
    }
}

#[test]
fn worked_example_in_protocol_md_is_reproduced_byte_for_byte() {
    let doc = protocol_md();
    let seed: [u8; 32] = hex_block(&doc, "payer-seed").try_into().expect("32 bytes");
    let key = SigningKey::from_bytes(&seed);
    let payer = PayerKey(key.verifying_key().to_bytes());
    assert_block(&doc, "payer-key", &payer.0);

    let domain = example_domain();
    let unsigned = example_receipt(payer);
    assert_block(&doc, "signing-bytes", &unsigned.signing_bytes(&domain));

    let receipt = unsigned.sign(&key, &domain);
    assert_block(&doc, "signature", &receipt.signature);
    assert_block(&doc, "receipt", &receipt.to_bytes());
    VerifyingKey::from_bytes(&payer.0)
        .expect("valid key")
        .verify_strict(
            &unsigned.signing_bytes(&domain),
            &Signature::from_bytes(&receipt.signature),
        )
        .expect("the documented signature verifies");

    let submit = Frame::Submit(Submit {
        batch_seq: 1,
        receipts: ReceiptBatch::from_receipts(&[receipt]),
    });
    let frame = hex_block(&doc, "submit-frame");
    assert_block(&doc, "submit-frame", &submit.to_bytes());
    let mut buf = bytes::BytesMut::from(&frame[..]);
    assert_eq!(
        decode_frame(&mut buf, FRAME_BYTES_MAX),
        Ok(Decoded::Frame(submit))
    );
}

/// The key whose seed the ```hex `name` block holds, after checking the public key in the
/// ```hex `key_block` block.
fn seeded_key(doc: &str, name: &str, key_block: &str) -> SigningKey {
    let seed: [u8; 32] = hex_block(doc, name).try_into().expect("32 bytes");
    let key = SigningKey::from_bytes(&seed);
    assert_block(doc, key_block, key.verifying_key().as_bytes());
    key
}

/// `frame` is the document's block `name`, and decodes back to itself.
fn assert_frame(doc: &str, name: &str, frame: &Frame) {
    assert_block(doc, name, &frame.to_bytes());
    let mut buf = bytes::BytesMut::from(&hex_block(doc, name)[..]);
    assert_eq!(
        decode_frame(&mut buf, FRAME_BYTES_MAX),
        Ok(Decoded::Frame(frame.clone()))
    );
}

#[test]
fn session_example_in_protocol_md_is_reproduced_byte_for_byte() {
    let doc = protocol_md();
    let payer_key = seeded_key(&doc, "payer-seed", "payer-key");
    let session_key = seeded_key(&doc, "session-seed", "session-key");
    let payer = PayerKey(payer_key.verifying_key().to_bytes());
    let session = PayerKey(session_key.verifying_key().to_bytes());
    let domain = example_domain();

    let grant = Grant {
        domain,
        payer,
        session,
        nonce: 1,
        cap: 1_000_000,
        allowance: Some(Allowance {
            amount: 100_000,
            period_ms: 3_600_000,
        }),
        valid_from_ms: 1_764_000_000_000,
        valid_until_ms: 1_764_086_400_000,
        payees: PayeeScope::Only(vec![Address([0x11; 20])]),
    };
    assert_block(&doc, "grant-signing-bytes", &grant.signing_bytes());
    let signed = grant.sign(&payer_key);
    assert_block(&doc, "grant", &signed.to_bytes());
    assert_eq!(
        SignedGrant::decode(&hex_block(&doc, "grant")),
        Ok(signed.clone())
    );
    signed
        .clone()
        .check(&domain)
        .expect("the documented grant checks out");
    assert_frame(&doc, "grant-frame", &Registration::grant(1, &signed));

    let receipt = UnsignedReceipt {
        payer: session,
        timestamp_ms: 1_764_000_060_000,
        session: true,
        ..example_receipt(payer)
    }
    .sign(&session_key, &domain);
    assert_block(&doc, "session-receipt", &receipt.to_bytes());
    let record = hex_block(&doc, "session-receipt");
    let view = ReceiptView::parse(&record).expect("parses");
    assert!(view.is_session());
    assert_eq!(
        signed
            .grant
            .admits(&view.payee(), view.timestamp_ms(), view.timestamp_ms()),
        Ok(())
    );

    let revocation = Revocation {
        domain,
        payer,
        session,
        revoked_at_ms: 1_764_003_600_000,
    }
    .sign(&payer_key);
    assert_block(&doc, "revocation", &revocation.to_bytes());
    assert_eq!(
        SignedRevocation::decode(&hex_block(&doc, "revocation")),
        Ok(revocation)
    );
    revocation
        .check(&domain)
        .expect("the documented revocation checks out");
    assert_frame(
        &doc,
        "revoke-frame",
        &Registration::revocation(2, &revocation),
    );
}

#[test]
fn hello_example_in_protocol_md_is_reproduced_byte_for_byte() {
    let doc = protocol_md();
    let seed: [u8; 32] = hex_block(&doc, "client-seed").try_into().expect("32 bytes");
    let key = SigningKey::from_bytes(&seed);
    let challenge = Challenge {
        nonce: hex_block(&doc, "challenge-nonce")
            .try_into()
            .expect("32 bytes"),
    };
    let hello = Hello::signed(42, 1, 1, example_domain(), &key, &challenge);
    assert_block(
        &doc,
        "hello-signing-bytes",
        &hello.signing_bytes(&challenge),
    );
    assert_block(&doc, "hello-frame", &Frame::Hello(hello).to_bytes());
    assert_eq!(hello.verify(&challenge), Ok(()));
}

#[test]
fn code_tables_in_protocol_md_match_the_code() {
    let doc = protocol_md();
    for frame_type in FrameType::ALL {
        let row = format!("| {} | {} |", frame_type.code(), frame_type.name());
        assert!(doc.contains(&row), "PROTOCOL.md lacks the row `{row}`");
    }
    for code in ErrorCode::ALL {
        let row = format!("| {} | `{}` |", code.code(), code.name());
        assert!(doc.contains(&row), "PROTOCOL.md lacks the row `{row}`");
    }
    for reason in Reason::ALL {
        let row = format!("| {} | `{}` |", reason.code(), reason.name());
        assert!(doc.contains(&row), "PROTOCOL.md lacks the row `{row}`");
    }
    let start = doc
        .find("### Grant error codes")
        .expect("PROTOCOL.md has the grant error codes");
    let table = &doc[start..];
    let table = &table[..table[4..].find("###").map_or(table.len(), |end| end + 4)];
    for (code, name) in GrantError::CODES {
        let row = format!("| {code} | `{name}` |");
        assert!(
            table.contains(&row),
            "PROTOCOL.md's grant error codes lack the row `{row}`"
        );
    }
}
