//! `docs/X402.md` is what x402 payers and resource servers in other languages are written from:
//! this test rebuilds its worked example from the code (a fixed payer seed, the binding's types
//! and `request_hash`) and checks every value and base64 header in the document byte for byte,
//! so the two cannot drift apart.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use serde::Serialize;
use serde_json::{Value, json};
use tollgate_engine::verify::{Verifier, VerifyConfig};
use tollgate_engine::{Domain, PayerKey, ReceiptView, UnsignedReceipt};
use tollgate_tools::receipts_json::ReceiptLine;
use tollgate_tools::x402::{
    self, Extra, FacilitatorRequest, PaymentPayload, PaymentRequirements, SettleResponse,
};

fn x402_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/X402.md");
    std::fs::read_to_string(path).expect("docs/X402.md is readable")
}

/// The text of the fenced block opened by "```<kind> <name>", without its final newline.
fn block(doc: &str, kind: &str, name: &str) -> String {
    let opening = format!("```{kind} {name}\n");
    let start = doc
        .find(&opening)
        .unwrap_or_else(|| panic!("X402.md has no ```{kind} {name} block"))
        + opening.len();
    let len = doc[start..].find("```").expect("block is closed");
    doc[start..start + len].trim_end().to_owned()
}

fn assert_block(doc: &str, kind: &str, name: &str, actual: &str) {
    assert!(
        block(doc, kind, name) == actual,
        "```{kind} {name} in X402.md differs from the code, which gives:\n{actual}"
    );
}

/// A JSON value as the document prints it (two-space indent) and as a header carries it
/// (compact, then standard base64 with padding, like x402's `safeBase64Encode`).
fn pretty(value: &impl Serialize) -> String {
    serde_json::to_string_pretty(value).expect("json")
}

fn header(value: &impl Serialize) -> String {
    STANDARD.encode(serde_json::to_string(value).expect("json"))
}

#[test]
fn worked_example_in_x402_md_is_reproduced_byte_for_byte() {
    let doc = x402_md();
    let seed: [u8; 32] = hex::decode(block(&doc, "hex", "payer-seed"))
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let key = SigningKey::from_bytes(&seed);
    let domain = Domain {
        chain_id: 31_337,
        contract: "0x5fbdb2315678afecb367f032d93f642f64180aa3"
            .parse()
            .expect("address"),
    };
    let resource = "https://api.example.com/v1/forecast";
    let mut extra = Extra::of(&domain, 1024, 300_000).to_map();
    extra.insert("resource".into(), Value::from(resource));
    let requirements = PaymentRequirements {
        scheme: x402::SCHEME.into(),
        network: x402::network(domain.chain_id),
        asset: "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512".into(),
        amount: "1000".into(),
        pay_to: "0x1111111111111111111111111111111111111111".into(),
        max_timeout_seconds: 60,
        extra,
    };
    let resource_info = json!({
        "url": resource,
        "description": "Tomorrow's forecast",
        "mimeType": "application/json",
    });
    let payment_required = json!({
        "x402Version": 2,
        "error": "Payment required",
        "resource": resource_info,
        "accepts": [requirements],
    });
    assert_block(&doc, "json", "payment-required", &pretty(&payment_required));
    assert_block(&doc, "text", "PAYMENT-REQUIRED", &header(&payment_required));

    let request_hash = x402::request_hash(&requirements).expect("request hash");
    assert_block(&doc, "hex", "request-hash", &hex::encode(request_hash));

    let receipt = UnsignedReceipt {
        payer: PayerKey(key.verifying_key().to_bytes()),
        payee: requirements.pay_to.parse().expect("payTo"),
        amount: 1000,
        nonce: 1_764_000_000_000,
        timestamp_ms: 1_764_000_000_000,
        request_hash,
        session: false,
    }
    .sign(&key, &domain);
    let bytes = receipt.to_bytes();
    assert_eq!(
        Verifier::new(domain, VerifyConfig::default())
            .verify_one(&ReceiptView::parse(&bytes).expect("receipt")),
        Ok(()),
        "the example's receipt verifies under the engine's rule"
    );
    let payment = PaymentPayload {
        x402_version: x402::X402_VERSION,
        resource: Some(resource_info),
        accepted: requirements.clone(),
        payload: ReceiptLine::from_receipt(&receipt),
        extensions: None,
    };
    assert_eq!(
        x402::check_payment(&domain, &payment, &requirements),
        Ok(receipt),
        "the example meets its own requirements"
    );
    assert_block(&doc, "json", "payment-payload", &pretty(&payment));
    assert_block(&doc, "text", "PAYMENT-SIGNATURE", &header(&payment));

    let settle_request = FacilitatorRequest {
        x402_version: x402::X402_VERSION,
        payment_payload: payment,
        payment_requirements: requirements.clone(),
    };
    let body = block(&doc, "json", "settle-request");
    assert_eq!(
        serde_json::from_str::<FacilitatorRequest>(&body).expect("the body parses"),
        settle_request,
        "```json settle-request is the example's payment and requirements"
    );

    let settled = SettleResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: Some(receipt.payer.to_string()),
        transaction: x402::transaction_id(&receipt),
        network: requirements.network.clone(),
    };
    assert_block(&doc, "json", "settle-response", &pretty(&settled));
    assert_block(&doc, "text", "PAYMENT-RESPONSE", &header(&settled));
}
