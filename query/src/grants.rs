//! Session grants and revocations as JSON, for every side that shows or carries one: the lines
//! `tollgate grant` prints, the bodies `POST /v1/grants` and `POST /v1/revocations` take, and
//! `GET /v1/grants[/{session_key}]` answers. The signed bytes travel in hex (`grant`,
//! `revocation`) and are the only thing a reader trusts: the decoded terms next to them are for
//! people, and [`GrantTerms::signed`] decodes the bytes, never the terms.
//!
//! ```json
//! {"grant":"<576 hex>","payer":"<64 hex>","session_key":"<64 hex>","chain_id":31337,
//!  "contract":"0x…","nonce":"1","cap":"5000","allowance":{"amount":"100","period_ms":3600000},
//!  "valid_from_ms":1764000000000,"valid_until_ms":1764086400000,"payees":["0x…"]}
//! ```
//! `payees` is null for any payee; `allowance` null for none.

use serde::{Deserialize, Serialize};
use tollgate_engine::grant::{Allowance, GrantError, PayeeScope, SignedGrant, SignedRevocation};
use tollgate_engine::ledger::record::{GrantRecord, Position};

use crate::model::decimal;

/// Grants one `GET /v1/grants` answers unless `limit` says otherwise.
pub const GRANTS_PAGE_DEFAULT: usize = 1_000;
/// The most `limit` may ask for.
pub const GRANTS_PAGE_MAX: usize = 10_000;

/// A grant's allowance per period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowanceView {
    /// Most the session may spend in one period (a u64).
    #[serde(with = "decimal")]
    pub amount: u128,
    /// The period's length in milliseconds, counted from `valid_from_ms`.
    pub period_ms: u64,
}

/// A signed grant and its terms: one line of `tollgate grant`, and the body of
/// `POST /v1/grants` (which reads `grant` alone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantTerms {
    /// The signed record, 288 bytes in hex (docs/PROTOCOL.md).
    pub grant: String,
    /// The granting deposit key, charged for the session's receipts.
    pub payer: String,
    /// The key that signs the session's receipts.
    pub session_key: String,
    /// The deployment's chain id.
    pub chain_id: u64,
    /// The deployment's settlement contract.
    pub contract: String,
    /// The payer's grant nonce (a u64).
    #[serde(with = "decimal")]
    pub nonce: u128,
    /// Most the session may ever spend (a u64).
    #[serde(with = "decimal")]
    pub cap: u128,
    /// The allowance per period; null for none.
    pub allowance: Option<AllowanceView>,
    /// First millisecond the grant holds (inclusive).
    pub valid_from_ms: u64,
    /// First millisecond it no longer holds.
    pub valid_until_ms: u64,
    /// The payees the session may pay; null for any.
    pub payees: Option<Vec<String>>,
}

/// Why a grant or revocation in JSON cannot be read: the stable [`GrantError::Malformed`].
fn malformed(what: &str, problem: impl std::fmt::Display) -> GrantError {
    GrantError::Malformed(format!("{what}: {problem}"))
}

impl GrantTerms {
    /// The terms of `signed`, with its bytes.
    pub fn of(signed: &SignedGrant) -> Self {
        let grant = &signed.grant;
        Self {
            grant: hex::encode(signed.to_bytes()),
            payer: grant.payer.to_string(),
            session_key: grant.session.to_string(),
            chain_id: grant.domain.chain_id,
            contract: grant.domain.contract.to_string(),
            nonce: u128::from(grant.nonce),
            cap: u128::from(grant.cap),
            allowance: grant
                .allowance
                .map(|Allowance { amount, period_ms }| AllowanceView {
                    amount: u128::from(amount),
                    period_ms,
                }),
            valid_from_ms: grant.valid_from_ms,
            valid_until_ms: grant.valid_until_ms,
            payees: match &grant.payees {
                PayeeScope::Any => None,
                PayeeScope::Only(payees) => Some(payees.iter().map(ToString::to_string).collect()),
            },
        }
    }

    /// The signed grant its `grant` bytes hold (layout only: check it before trusting it).
    pub fn signed(&self) -> Result<SignedGrant, GrantError> {
        decode_grant_hex(&self.grant)
    }
}

/// A grant from hex (with or without `0x`), layout only.
pub fn decode_grant_hex(text: &str) -> Result<SignedGrant, GrantError> {
    let bytes =
        hex::decode(text.trim().trim_start_matches("0x")).map_err(|e| malformed("grant hex", e))?;
    SignedGrant::decode(&bytes)
}

/// A revocation from hex (with or without `0x`), layout only.
pub fn decode_revocation_hex(text: &str) -> Result<SignedRevocation, GrantError> {
    let bytes = hex::decode(text.trim().trim_start_matches("0x"))
        .map_err(|e| malformed("revocation hex", e))?;
    SignedRevocation::decode(&bytes)
}

/// A signed revocation and its terms: one line of `tollgate grant revoke`, and the body of
/// `POST /v1/revocations` (which reads `revocation` alone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationTerms {
    /// The signed record, 164 bytes in hex (docs/PROTOCOL.md).
    pub revocation: String,
    /// The payer that granted the session.
    pub payer: String,
    /// The session key revoked, for good.
    pub session_key: String,
    /// The deployment's chain id.
    pub chain_id: u64,
    /// The deployment's settlement contract.
    pub contract: String,
    /// When the payer signed it, by its own clock (informative only: the revocation holds from
    /// when the server has it on disk, `effective_at`).
    pub revoked_at_ms: u64,
}

impl RevocationTerms {
    /// The terms of `signed`, with its bytes.
    pub fn of(signed: &SignedRevocation) -> Self {
        let revocation = &signed.revocation;
        Self {
            revocation: hex::encode(signed.to_bytes()),
            payer: revocation.payer.to_string(),
            session_key: revocation.session.to_string(),
            chain_id: revocation.domain.chain_id,
            contract: revocation.domain.contract.to_string(),
            revoked_at_ms: revocation.revoked_at_ms,
        }
    }

    /// The signed revocation its `revocation` bytes hold (layout only).
    pub fn signed(&self) -> Result<SignedRevocation, GrantError> {
        decode_revocation_hex(&self.revocation)
    }
}

/// Where in the ledger's order something took effect: the open epoch and the receipts it had
/// accepted. An archived receipt at (epoch, index) at or after it was applied after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PositionView {
    /// The epoch open then.
    pub epoch: u64,
    /// Receipts that epoch had accepted then.
    pub index: u64,
}

impl From<Position> for PositionView {
    fn from(position: Position) -> Self {
        Self {
            epoch: position.epoch,
            index: position.index,
        }
    }
}

/// What a session has spent under its grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpentView {
    /// Everything the session spent.
    #[serde(with = "decimal")]
    pub total: u128,
    /// The newest allowance period charged (0 is the one starting at `valid_from_ms`).
    pub period: u64,
    /// Spent in that period.
    #[serde(with = "decimal")]
    pub period_total: u128,
}

/// A revocation the server holds, and when it took effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationView {
    /// The revocation as signed, and its terms.
    #[serde(flatten)]
    pub terms: RevocationTerms,
    /// When it took effect in the ledger: receipts applied from there on are refused.
    pub effective_at: PositionView,
}

/// `GET /v1/grants/{session_key}`, one item of `GET /v1/grants`, and the answer to
/// `POST /v1/grants` and `POST /v1/revocations`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantView {
    /// The grant as signed, and its terms.
    #[serde(flatten)]
    pub terms: GrantTerms,
    /// When it took effect in the ledger: the session's receipts are judged under it from
    /// there on.
    pub granted_at: PositionView,
    /// What the session has spent.
    pub spent: SpentView,
    /// Its revocation; null while it stands.
    pub revocation: Option<RevocationView>,
}

impl GrantView {
    /// The view of a grant the ledger holds.
    pub fn of(record: &GrantRecord) -> Self {
        Self {
            terms: GrantTerms::of(&record.grant),
            granted_at: record.granted_at.into(),
            spent: SpentView {
                total: record.spent.total,
                period: record.spent.period,
                period_total: record.spent.period_total,
            },
            revocation: record
                .revoked
                .as_ref()
                .map(|(revocation, position)| RevocationView {
                    terms: RevocationTerms::of(revocation),
                    effective_at: (*position).into(),
                }),
        }
    }
}

/// `GET /v1/grants`: one page in session key order; the `X-Tollgate-Next-After` header carries
/// the session key the next page starts after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantList {
    /// The grants.
    pub grants: Vec<GrantView>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use tollgate_engine::grant::Grant;
    use tollgate_engine::{Address, Domain, PayerKey};

    #[test]
    fn a_grant_line_carries_its_bytes_and_reads_back_from_them_alone() {
        let payer = SigningKey::from_bytes(&[1; 32]);
        let session = SigningKey::from_bytes(&[2; 32]);
        let signed = Grant {
            domain: Domain {
                chain_id: 31_337,
                contract: Address([0xc0; 20]),
            },
            payer: PayerKey(payer.verifying_key().to_bytes()),
            session: PayerKey(session.verifying_key().to_bytes()),
            nonce: u64::MAX,
            cap: 5_000,
            allowance: Some(Allowance {
                amount: 100,
                period_ms: 60_000,
            }),
            valid_from_ms: 1,
            valid_until_ms: 2,
            payees: PayeeScope::Only(vec![Address([0x11; 20])]),
        }
        .sign(&payer);
        let terms = GrantTerms::of(&signed);
        let json = serde_json::to_value(&terms).expect("serializes");
        assert_eq!(json["nonce"], u64::MAX.to_string(), "u64 survives as text");
        assert_eq!(json["payees"][0], Address([0x11; 20]).to_string());
        let back: GrantTerms = serde_json::from_value(json).expect("parses");
        assert_eq!(back.signed(), Ok(signed.clone()));
        // The terms are for people: the bytes decide.
        let mut lying = back;
        lying.cap = 1;
        assert_eq!(lying.signed(), Ok(signed));
        lying.grant.push('0');
        assert_eq!(lying.signed().map_err(|e| e.code()), Err(1));
    }
}
