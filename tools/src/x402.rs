//! Tollgate as an x402 v2 payment scheme: the JSON types of the facilitator API, the deployment's
//! `PaymentRequirements.extra`, `request_hash`, the checks of a payload against the requirements
//! it claims to meet, and the nonce clock a payer allocates nonces with. docs/X402.md is the
//! specification; this module is its one implementation in Rust, used by the facilitator routes
//! (`api::x402`) and by anything else that builds or judges a payment (CLI, bench), so it knows
//! nothing of HTTP or of the engine's pipeline.
//!
//! Why a module of its own rather than part of the API: a payer (a test, a bench driver, a
//! future `tollgate pay`) signs what the facilitator checks, with the same `request_hash` and the
//! same field names, and must not depend on the server to do so.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tollgate_engine::{Address, Domain, Reason, Receipt};

use crate::receipts_json::ReceiptLine;

/// The x402 protocol version this binding speaks.
pub const X402_VERSION: u64 = 2;
/// The scheme name in `PaymentRequirements.scheme` (x402's own `batch-settlement` is the EVM
/// binding of the scheme family; this one is named after the deployment it settles through).
pub const SCHEME: &str = "tollgate";
/// The text that opens every `request_hash` preimage, so the hash can never be read as another
/// protocol's.
pub const REQUEST_HASH_TAG: &str = "tollgate-x402-v1";
/// The engine client id the facilitator's settles are submitted under, so their signatures share
/// batch equations with each other and never with a fleet client's. Reserved: a fleet client
/// configured with this id is refused (`serve` configuration).
pub const CLIENT_ID: u64 = u64::MAX;

/// The CAIP-2 network of a deployment on EVM chain `chain_id`.
pub fn network(chain_id: u64) -> String {
    format!("eip155:{chain_id}")
}

/// x402 `PaymentRequirements` (field names as x402 spells them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirements {
    /// [`SCHEME`].
    pub scheme: String,
    /// `eip155:<chain id>`.
    pub network: String,
    /// The settlement token's address (informational: the contract fixes the token).
    pub asset: String,
    /// The price in the token's smallest unit, as a decimal string.
    pub amount: String,
    /// The payee's EVM address.
    pub pay_to: String,
    /// How long the server waits for the payment.
    pub max_timeout_seconds: u64,
    /// [`Extra`] and whatever else the server adds.
    #[serde(default)]
    pub extra: Map<String, Value>,
}

/// The fields of `PaymentRequirements.extra` this binding reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Extra {
    /// The settlement chain's id, as a decimal string (the receipt domain's chain id).
    pub chain_id: String,
    /// The Settlement contract's address (the receipt domain's contract).
    pub contract: String,
    /// The deployment's anti-replay window, in nonces per channel.
    pub window_nonces: u32,
    /// How far a receipt's timestamp may be from the facilitator's clock, in milliseconds.
    pub timestamp_skew_ms: u64,
}

impl Extra {
    /// The extra of a deployment.
    pub fn of(domain: &Domain, window_nonces: u32, timestamp_skew_ms: u64) -> Self {
        Self {
            chain_id: domain.chain_id.to_string(),
            contract: domain.contract.to_string(),
            window_nonces,
            timestamp_skew_ms,
        }
    }

    /// As a JSON object, for `extra` fields.
    pub fn to_map(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            // A struct of strings and integers always serializes to an object.
            _ => Map::new(),
        }
    }
}

/// x402 `PaymentPayload`, with this scheme's `payload`: the signed receipt in the JSON form of
/// `receipts_json` (integers as decimal strings, bytes as hex).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayload {
    /// [`X402_VERSION`].
    pub x402_version: u64,
    /// The resource paid for, as the server described it (not read by the facilitator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Value>,
    /// The requirements the payer chose.
    pub accepted: PaymentRequirements,
    /// The signed receipt.
    pub payload: ReceiptLine,
    /// x402 extensions (not read by the facilitator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
}

/// The body of `POST /verify` and `POST /settle`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FacilitatorRequest {
    /// [`X402_VERSION`].
    pub x402_version: u64,
    /// What the payer sent.
    pub payment_payload: PaymentPayload,
    /// What the resource server asks for.
    pub payment_requirements: PaymentRequirements,
}

/// x402 `VerifyResponse`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    /// Whether `/settle` would take the payment now.
    pub is_valid: bool,
    /// x402's reason code when not valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// Tollgate's stable reason name, then why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_message: Option<String>,
    /// The receipt's signing key (64 hex digits), when the receipt parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
}

/// x402 `SettleResponse`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleResponse {
    /// Whether the receipt is durably in the ledger.
    pub success: bool,
    /// x402's reason code when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    /// Tollgate's stable reason name, then why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The receipt's signing key (64 hex digits), when the receipt parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// The commitment identifier ([`transaction_id`]); empty when not settled.
    pub transaction: String,
    /// The network of the requirements.
    pub network: String,
}

/// One entry of `GET /supported`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedKind {
    /// [`X402_VERSION`].
    pub x402_version: u64,
    /// [`SCHEME`].
    pub scheme: String,
    /// [`network`].
    pub network: String,
    /// [`Extra`].
    pub extra: Extra,
}

/// x402 `SupportedResponse`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupportedResponse {
    /// The one kind a deployment accepts.
    pub kinds: Vec<SupportedKind>,
    /// x402 extensions supported: none.
    pub extensions: Vec<String>,
    /// Facilitator signers by CAIP family: none (a settle signs no transaction of its own).
    pub signers: Map<String, Value>,
}

impl SupportedResponse {
    /// What a deployment supports.
    pub fn of(domain: &Domain, window_nonces: u32, timestamp_skew_ms: u64) -> Self {
        Self {
            kinds: vec![SupportedKind {
                x402_version: X402_VERSION,
                scheme: SCHEME.into(),
                network: network(domain.chain_id),
                extra: Extra::of(domain, window_nonces, timestamp_skew_ms),
            }],
            extensions: Vec::new(),
            signers: Map::new(),
        }
    }
}

/// x402's reason codes this binding answers with (the `invalidReason` / `errorReason` field).
pub mod reason {
    /// `x402Version` is not 2.
    pub const INVALID_X402_VERSION: &str = "invalid_x402_version";
    /// The scheme is not `tollgate`.
    pub const UNSUPPORTED_SCHEME: &str = "unsupported_scheme";
    /// The network is not this deployment's.
    pub const INVALID_NETWORK: &str = "invalid_network";
    /// The body, payload or receipt does not parse.
    pub const INVALID_PAYLOAD: &str = "invalid_payload";
    /// The requirements are not this deployment's, or do not parse.
    pub const INVALID_PAYMENT_REQUIREMENTS: &str = "invalid_payment_requirements";
    /// The payer has no deposit, or not enough left.
    pub const INSUFFICIENT_FUNDS: &str = "insufficient_funds";
    /// The signature (or the key) does not verify under this deployment.
    pub const SIGNATURE: &str = "invalid_tollgate_payload_signature";
    /// The receipt's amount is below the price.
    pub const AMOUNT: &str = "invalid_tollgate_payload_amount";
    /// The receipt's payee is not `payTo`.
    pub const RECIPIENT_MISMATCH: &str = "invalid_tollgate_payload_recipient_mismatch";
    /// The receipt's `request_hash` is not the requirements'.
    pub const REQUEST_HASH: &str = "invalid_tollgate_payload_request_hash";
    /// The nonce was used already, or is below the anti-replay window.
    pub const REPLAY: &str = "invalid_tollgate_payload_replay";
    /// The receipt's timestamp is too far from the facilitator's clock.
    pub const TIMESTAMP: &str = "invalid_tollgate_payload_timestamp";
    /// A session receipt the session's grant does not admit.
    pub const GRANT: &str = "invalid_tollgate_payload_grant";
    /// Verification failed for a reason of the facilitator's own.
    pub const UNEXPECTED_VERIFY: &str = "unexpected_verify_error";
    /// Settlement failed for a reason of the facilitator's own (retry: a settle is idempotent).
    pub const UNEXPECTED_SETTLE: &str = "unexpected_settle_error";
}

/// Why a payment is refused: x402's code and a message that opens with Tollgate's stable name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    /// x402's reason code ([`reason`]).
    pub code: &'static str,
    /// `<tollgate reason name>: <why>`.
    pub message: String,
}

impl Refusal {
    fn new(code: &'static str, name: &str, why: impl std::fmt::Display) -> Self {
        Self {
            code,
            message: format!("{name}: {why}"),
        }
    }

    /// The refusal for a receipt the ledger (or its verifier) refused with `reason`.
    pub fn of(reason: Reason) -> Self {
        let code = match reason {
            Reason::BadSignature | Reason::BadPayerKey => reason::SIGNATURE,
            Reason::Duplicate | Reason::Stale => reason::REPLAY,
            Reason::TimestampSkew => reason::TIMESTAMP,
            Reason::UnknownPayer | Reason::InsufficientFunds => reason::INSUFFICIENT_FUNDS,
            Reason::Malformed | Reason::Overflow => reason::INVALID_PAYLOAD,
            Reason::PayeeNotAllowed => reason::RECIPIENT_MISMATCH,
            Reason::NoGrant
            | Reason::GrantNotYetValid
            | Reason::GrantExpired
            | Reason::GrantRevoked
            | Reason::OverGrantCap
            | Reason::OverGrantAllowance
            | Reason::PayeeNotInGrant => reason::GRANT,
        };
        Self::new(
            code,
            reason.name(),
            format_args!("the ledger refuses the receipt (code {})", reason.code()),
        )
    }
}

/// `request_hash` of a payment for `requirements`: SHA-256 of the UTF-8 text
/// `tollgate-x402-v1 \n network \n payTo \n amount \n asset \n resource` (joined by one `\n`
/// each, no trailing one), where `payTo` is lowercase `0x` hex, `amount` canonical decimal and
/// `resource` is `extra.resource` when it is a string, else empty. See docs/X402.md.
pub fn request_hash(requirements: &PaymentRequirements) -> Result<[u8; 32], Refusal> {
    let pay_to = parse_pay_to(requirements)?;
    let amount = parse_price(requirements)?;
    let resource = requirements
        .extra
        .get("resource")
        .and_then(Value::as_str)
        .unwrap_or("");
    let preimage = format!(
        "{REQUEST_HASH_TAG}\n{}\n{pay_to}\n{amount}\n{}\n{resource}",
        requirements.network, requirements.asset
    );
    Ok(Sha256::digest(preimage.as_bytes()).into())
}

fn parse_pay_to(requirements: &PaymentRequirements) -> Result<Address, Refusal> {
    requirements.pay_to.parse::<Address>().map_err(|e| {
        Refusal::new(
            reason::INVALID_PAYMENT_REQUIREMENTS,
            "malformed",
            format_args!("payTo {:?}: {e}", requirements.pay_to),
        )
    })
}

fn parse_price(requirements: &PaymentRequirements) -> Result<u64, Refusal> {
    requirements.amount.parse::<u64>().map_err(|_| {
        Refusal::new(
            reason::INVALID_PAYMENT_REQUIREMENTS,
            "malformed",
            format_args!(
                "amount {:?} is not a decimal u64 in the token's smallest unit",
                requirements.amount
            ),
        )
    })
}

/// Checks that `requirements` are this deployment's kind: scheme, network and `extra`.
fn check_kind(domain: &Domain, requirements: &PaymentRequirements) -> Result<(), Refusal> {
    if requirements.scheme != SCHEME {
        return Err(Refusal::new(
            reason::UNSUPPORTED_SCHEME,
            "wrong_scheme",
            format_args!(
                "scheme {:?}, this facilitator takes {SCHEME:?}",
                requirements.scheme
            ),
        ));
    }
    let ours = network(domain.chain_id);
    if requirements.network != ours {
        return Err(Refusal::new(
            reason::INVALID_NETWORK,
            "wrong_network",
            format_args!(
                "network {:?}, this deployment is {ours:?}",
                requirements.network
            ),
        ));
    }
    let deployment = |field: &str, given: Option<&Value>, want: String| {
        let matches = given
            .and_then(Value::as_str)
            .is_some_and(|text| text.eq_ignore_ascii_case(&want));
        if matches {
            Ok(())
        } else {
            Err(Refusal::new(
                reason::INVALID_PAYMENT_REQUIREMENTS,
                "wrong_deployment",
                format_args!("extra.{field} is {given:?}, this deployment's is {want:?}"),
            ))
        }
    };
    deployment(
        "chainId",
        requirements.extra.get("chainId"),
        domain.chain_id.to_string(),
    )?;
    deployment(
        "contract",
        requirements.extra.get("contract"),
        domain.contract.to_string(),
    )
}

/// Everything about a payment that needs no ledger and no signature check: the requirements are
/// this deployment's, the payload was made for them, the receipt parses, pays `payTo` at least
/// the price, and carries their `request_hash`. Returns the receipt.
pub fn check_payment(
    domain: &Domain,
    payload: &PaymentPayload,
    requirements: &PaymentRequirements,
) -> Result<Receipt, Refusal> {
    if payload.x402_version != X402_VERSION {
        return Err(Refusal::new(
            reason::INVALID_X402_VERSION,
            "wrong_version",
            format_args!("paymentPayload.x402Version {}", payload.x402_version),
        ));
    }
    check_kind(domain, requirements)?;
    if payload.accepted.scheme != requirements.scheme
        || payload.accepted.network != requirements.network
    {
        return Err(Refusal::new(
            reason::INVALID_PAYMENT_REQUIREMENTS,
            "wrong_kind",
            "paymentPayload.accepted names another scheme or network than paymentRequirements",
        ));
    }
    let receipt = payload
        .payload
        .to_receipt()
        .map_err(|e| Refusal::new(reason::INVALID_PAYLOAD, "malformed", format_args!("{e:#}")))?;
    let pay_to = parse_pay_to(requirements)?;
    if receipt.payee != pay_to {
        return Err(Refusal::new(
            reason::RECIPIENT_MISMATCH,
            "wrong_payee",
            format_args!("the receipt pays {}, payTo is {pay_to}", receipt.payee),
        ));
    }
    let price = parse_price(requirements)?;
    if receipt.amount < price {
        return Err(Refusal::new(
            reason::AMOUNT,
            "underpaid",
            format_args!("the receipt pays {}, the price is {price}", receipt.amount),
        ));
    }
    if receipt.request_hash != request_hash(requirements)? {
        return Err(Refusal::new(
            reason::REQUEST_HASH,
            "wrong_request_hash",
            "the receipt's request_hash is not the requirements' (docs/X402.md, request_hash)",
        ));
    }
    Ok(receipt)
}

/// The commitment identifier `/settle` answers in `transaction`: `0x` and the BLAKE3 hash of the
/// receipt's 176 signed bytes. Anyone holding the payload can recompute it, and find the receipt
/// in its epoch's archive (`GET /v1/epochs/{n}/receipts`) and the epoch's root onchain.
pub fn transaction_id(receipt: &Receipt) -> String {
    format!(
        "0x{}",
        hex::encode(blake3::hash(&receipt.to_bytes()).as_bytes())
    )
}

/// A payer's nonces for one channel without stored state: a counter that starts at the clock
/// (`now_ms` for the first, then `last + 1`). Within a process they strictly increase (no two
/// requests share one, however concurrent); a restarted process starts at the clock, above every
/// nonce an earlier one issued unless that one made more payments than milliseconds passed since
/// its first. Nonces do not follow the clock after the first, so any payments fewer than a window
/// apart may be reordered, however long one is held up: see docs/X402.md, "Nonces".
#[derive(Debug, Default)]
pub struct NonceClock {
    last: AtomicU64,
}

impl NonceClock {
    /// A clock that has issued nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next nonce; `now_ms` is read only for the first.
    pub fn next(&self, now_ms: u64) -> u64 {
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            // 0 is never issued (it is 1970), so it marks a clock that has issued nothing.
            let next = if last == 0 {
                now_ms.max(1)
            } else {
                last.saturating_add(1)
            };
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use tollgate_engine::{PayerKey, UnsignedReceipt};

    use crate::receipts_json::tests::domain;

    fn requirements() -> PaymentRequirements {
        PaymentRequirements {
            scheme: SCHEME.into(),
            network: network(31_337),
            asset: "0x5555555555555555555555555555555555555555".into(),
            amount: "1000".into(),
            pay_to: "0x1111111111111111111111111111111111111111".into(),
            max_timeout_seconds: 60,
            extra: Extra::of(&domain(), 1024, 300_000).to_map(),
        }
    }

    fn payment(amount: u64, payee: Address, requirements: &PaymentRequirements) -> PaymentPayload {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let receipt = UnsignedReceipt {
            payer: PayerKey(key.verifying_key().to_bytes()),
            payee,
            amount,
            nonce: 1,
            timestamp_ms: 1_764_000_000_000,
            request_hash: request_hash(requirements).expect("hash"),
            session: false,
        }
        .sign(&key, &domain());
        PaymentPayload {
            x402_version: X402_VERSION,
            resource: None,
            accepted: requirements.clone(),
            payload: ReceiptLine::from_receipt(&receipt),
            extensions: None,
        }
    }

    #[test]
    fn requirements_the_receipt_does_not_meet_are_refused() {
        let asked = requirements();
        let payee = Address([0x11; 20]);
        assert!(check_payment(&domain(), &payment(1000, payee, &asked), &asked).is_ok());
        assert!(check_payment(&domain(), &payment(1500, payee, &asked), &asked).is_ok());
        let code = |payload: &PaymentPayload, asked: &PaymentRequirements| {
            check_payment(&domain(), payload, asked)
                .expect_err("refused")
                .code
        };
        assert_eq!(code(&payment(999, payee, &asked), &asked), reason::AMOUNT);
        assert_eq!(
            code(&payment(1000, Address([0x12; 20]), &asked), &asked),
            reason::RECIPIENT_MISMATCH
        );
        let mut dearer = asked.clone();
        dearer.amount = "2000".into();
        assert_eq!(
            code(&payment(2000, payee, &asked), &dearer),
            reason::REQUEST_HASH
        );
        let mut other_chain = asked.clone();
        other_chain.network = network(1);
        assert_eq!(
            code(&payment(1000, payee, &other_chain), &other_chain),
            reason::INVALID_NETWORK
        );
        let mut other_scheme = asked.clone();
        other_scheme.scheme = "exact".into();
        assert_eq!(
            code(&payment(1000, payee, &other_scheme), &other_scheme),
            reason::UNSUPPORTED_SCHEME
        );
        let mut other_contract = asked.clone();
        other_contract.extra.insert(
            "contract".into(),
            Value::from(Address([0x45; 20]).to_string()),
        );
        assert_eq!(
            code(&payment(1000, payee, &other_contract), &other_contract),
            reason::INVALID_PAYMENT_REQUIREMENTS
        );
        let mut old = payment(1000, payee, &asked);
        old.x402_version = 1;
        assert_eq!(code(&old, &asked), reason::INVALID_X402_VERSION);
    }

    #[test]
    fn request_hash_reads_the_resource_and_canonical_fields() {
        let plain = requirements();
        let mut upper = plain.clone();
        upper.pay_to = upper.pay_to.to_uppercase().replace("0X", "0x");
        assert_eq!(request_hash(&plain), request_hash(&upper));
        let mut routed = plain.clone();
        routed
            .extra
            .insert("resource".into(), Value::from("https://api.example/v1/q"));
        assert_ne!(request_hash(&plain), request_hash(&routed));
        let mut bad = plain.clone();
        bad.amount = "-1".into();
        assert_eq!(
            request_hash(&bad).expect_err("refused").code,
            reason::INVALID_PAYMENT_REQUIREMENTS
        );
    }

    #[test]
    fn nonce_clock_starts_at_the_clock_and_counts() {
        let clock = NonceClock::new();
        assert_eq!(clock.next(1_000), 1_000);
        assert_eq!(clock.next(1_000), 1_001);
        assert_eq!(
            clock.next(999),
            1_002,
            "a clock step back never reuses a nonce"
        );
        assert_eq!(
            clock.next(5_000),
            1_003,
            "time passing does not move the nonces: a held-up payment stays inside the window"
        );
        let shared = std::sync::Arc::new(NonceClock::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let clock = std::sync::Arc::clone(&shared);
                std::thread::spawn(move || (0..1000).map(|_| clock.next(7)).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|thread| thread.join().expect("thread"))
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 4000);
    }
}
