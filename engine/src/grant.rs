//! Session capabilities: a payer's deposit key grants a session key (an AI agent's, say) a
//! bounded right to spend from its deposit, and can revoke it; both without an onchain
//! transaction. This module is the grant and the revocation as signed records (fixed layouts,
//! encode and decode side by side, docs/PROTOCOL.md), the checks a record owes on its own, and
//! the spending rule a grant imposes on a receipt, which the ledger applies and an auditor
//! replays with the same code.
//!
//! Grant layout (integers little-endian; offsets in bytes):
//!
//! | offset | size | field |
//! | ---: | ---: | --- |
//! | 0 | 8 | chain id |
//! | 8 | 20 | settlement contract |
//! | 28 | 32 | payer: the granting deposit key |
//! | 60 | 32 | session key |
//! | 92 | 8 | grant nonce: the payer's, so no two of its grants are the same bytes |
//! | 100 | 8 | cap: most the session may ever spend |
//! | 108 | 8 | allowance per period (0: none) |
//! | 116 | 8 | period in milliseconds (0 exactly when the allowance is 0) |
//! | 124 | 8 | valid from (unix ms, inclusive) |
//! | 132 | 8 | valid until (unix ms, exclusive) |
//! | 140 | 1 | payees in scope: 0 for any payee, else 1 to 4 |
//! | 141 | 3 | reserved, zero |
//! | 144 | 80 | the payees in scope, 20 bytes each; unused slots zero |
//! | 224 | 64 | signature by the payer over `GRANT_TAG ‖ bytes[0..224]` |
//!
//! Revocation layout: chain id (8), contract (20), payer (32), session key (32), revoked at (8,
//! unix ms, the payer's clock: informative only), then the payer's signature over
//! `REVOCATION_TAG ‖ bytes[0..100]`: 164 bytes.
//!
//! The deployment is in the signed bytes, as for receipts, and also in the record itself, so a
//! grant for another deployment is told apart from a forged one. A revocation ends the session
//! key for good: no later grant revives it (a new session gets a new key).

use ed25519_dalek::{Signer, SigningKey};
use thiserror::Error;

use crate::receipt::{Address, Domain, PayerKey};
use crate::verdict::Reason;
use crate::verify::SignedMessage;

/// Size of an encoded grant, signature included.
pub const GRANT_BYTES: usize = 288;
/// The signed part of a grant.
pub const GRANT_BODY_BYTES: usize = 224;
/// The string that opens every grant's signing message.
pub const GRANT_TAG: &[u8; 17] = b"tollgate-grant-v1";
/// Size of an encoded revocation, signature included.
pub const REVOCATION_BYTES: usize = 164;
/// The signed part of a revocation.
pub const REVOCATION_BODY_BYTES: usize = 100;
/// The string that opens every revocation's signing message.
pub const REVOCATION_TAG: &[u8; 18] = b"tollgate-revoke-v1";
/// Most payees a grant's scope may list.
pub const GRANT_PAYEES_MAX: usize = 4;

const PAYEES_AT: usize = 144;

/// Who a session may pay.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PayeeScope {
    /// Any payee.
    Any,
    /// Only these (1 to [`GRANT_PAYEES_MAX`], distinct).
    Only(Vec<Address>),
}

impl PayeeScope {
    /// True when `payee` is in scope.
    pub fn allows(&self, payee: &Address) -> bool {
        match self {
            PayeeScope::Any => true,
            PayeeScope::Only(payees) => payees.contains(payee),
        }
    }
}

/// A spending limit per period: at most `amount` in each `period_ms` counted from `valid_from`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Allowance {
    /// Most the session may spend in one period.
    pub amount: u64,
    /// Length of a period in milliseconds.
    pub period_ms: u64,
}

/// The fields a payer signs to grant a session key. Sign with [`Grant::sign`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Grant {
    /// The deployment the grant is for.
    pub domain: Domain,
    /// The granting deposit key, charged for the session's receipts.
    pub payer: PayerKey,
    /// The key that signs the session's receipts.
    pub session: PayerKey,
    /// Chosen by the payer so that no two of its grants are the same bytes.
    pub nonce: u64,
    /// Most the session may ever spend.
    pub cap: u64,
    /// Optional limit per period.
    pub allowance: Option<Allowance>,
    /// First millisecond the grant holds (inclusive).
    pub valid_from_ms: u64,
    /// First millisecond it no longer holds.
    pub valid_until_ms: u64,
    /// Who the session may pay.
    pub payees: PayeeScope,
}

/// A grant with its payer's signature.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedGrant {
    /// What was granted.
    pub grant: Grant,
    /// `R ‖ S` by the payer over [`Grant::signing_bytes`].
    pub signature: [u8; 64],
}

/// A grant that passed [`SignedGrant::check`] for this deployment: the only kind the ledger
/// takes, so none is stored unchecked.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CheckedGrant(SignedGrant);

impl CheckedGrant {
    /// The grant as signed.
    pub fn signed(&self) -> &SignedGrant {
        &self.0
    }
}

/// A revocation that passed [`SignedRevocation::check`] for this deployment.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CheckedRevocation(SignedRevocation);

impl CheckedRevocation {
    /// The revocation as signed.
    pub fn signed(&self) -> &SignedRevocation {
        &self.0
    }
}

/// The fields a payer signs to revoke a session key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Revocation {
    /// The deployment.
    pub domain: Domain,
    /// The payer that granted the session.
    pub payer: PayerKey,
    /// The session key revoked, for good.
    pub session: PayerKey,
    /// When the payer signed it (its clock; informative only: the revocation holds from the
    /// moment the ledger has it on disk).
    pub revoked_at_ms: u64,
}

/// A revocation with its payer's signature.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SignedRevocation {
    /// What was revoked.
    pub revocation: Revocation,
    /// `R ‖ S` by the payer over [`Revocation::signing_bytes`].
    pub signature: [u8; 64],
}

/// Why a grant or revocation was refused. Nothing was changed. The code is the wire code
/// (docs/PROTOCOL.md): never renumbered, never reused.
#[derive(Clone, PartialEq, Eq, Debug, Error)]
pub enum GrantError {
    /// The record does not parse.
    #[error("malformed: {0}")]
    Malformed(String),
    /// Signed for another chain or contract.
    #[error("signed for chain {chain_id} contract {contract}, not this deployment")]
    WrongDeployment {
        /// its chain id
        chain_id: u64,
        /// its contract
        contract: Address,
    },
    /// The payer's signature does not verify.
    #[error("the payer's signature does not verify")]
    BadSignature,
    /// The payer key is not a canonical, prime-order point.
    #[error("the payer key is not a valid ed25519 key (non-canonical or small order)")]
    BadPayerKey,
    /// The session key is not a canonical, prime-order point.
    #[error("the session key is not a valid ed25519 key (non-canonical or small order)")]
    BadSessionKey,
    /// A cap of zero grants nothing.
    #[error("the cap is zero")]
    ZeroCap,
    /// An allowance without a period, or a period without an allowance.
    #[error("an allowance needs a period and a period an allowance (both zero for none)")]
    BadAllowance,
    /// `valid_until` is not after `valid_from`.
    #[error("valid until {until} is not after valid from {from}")]
    EmptyValidity {
        /// valid from, ms
        from: u64,
        /// valid until, ms
        until: u64,
    },
    /// The session key is the payer's own key, or some payer's deposit key.
    #[error("the session key {0} is a deposit key")]
    SessionKeyIsPayer(PayerKey),
    /// Another payer already granted this session key.
    #[error("session key {session} is granted by another payer")]
    GrantedByAnotherPayer {
        /// the session key
        session: PayerKey,
    },
    /// The session key already holds another grant from this payer. A session key holds one
    /// grant for its lifetime: more spending for an agent is a new session key.
    #[error("session key {session} already holds the payer's grant nonce {nonce}")]
    AlreadyGranted {
        /// the session key
        session: PayerKey,
        /// the nonce of the grant it holds
        nonce: u64,
    },
    /// The session key was revoked: it can never be granted again.
    #[error("session key {0} is revoked")]
    Revoked(PayerKey),
    /// A revocation for a session key nobody granted.
    #[error("session key {0} has no grant")]
    NoGrant(PayerKey),
    /// A revocation signed by a payer other than the one that granted the session.
    #[error("session key {0} was granted by another payer")]
    NotTheGranter(PayerKey),
    /// The granting key is itself a session key: a session cannot delegate further.
    #[error("the payer key {0} is a session key")]
    PayerIsSessionKey(PayerKey),
    /// The granting payer never deposited (and the server refuses unknown payers): nobody may
    /// fill the ledger with grants that could never be paid from.
    #[error("payer {0} has no deposit")]
    UnknownPayer(PayerKey),
}

impl GrantError {
    /// Every code in order, with its stable name.
    pub const CODES: [(u8, &'static str); 16] = [
        (1, "malformed"),
        (2, "wrong_deployment"),
        (3, "bad_signature"),
        (4, "bad_payer_key"),
        (5, "bad_session_key"),
        (6, "zero_cap"),
        (7, "bad_allowance"),
        (8, "empty_validity"),
        (9, "session_key_is_payer"),
        (10, "granted_by_another_payer"),
        (11, "already_granted"),
        (12, "revoked"),
        (13, "no_grant"),
        (14, "not_the_granter"),
        (15, "payer_is_session_key"),
        (16, "unknown_payer"),
    ];

    /// The stable wire code.
    pub fn code(&self) -> u8 {
        match self {
            GrantError::Malformed(_) => 1,
            GrantError::WrongDeployment { .. } => 2,
            GrantError::BadSignature => 3,
            GrantError::BadPayerKey => 4,
            GrantError::BadSessionKey => 5,
            GrantError::ZeroCap => 6,
            GrantError::BadAllowance => 7,
            GrantError::EmptyValidity { .. } => 8,
            GrantError::SessionKeyIsPayer(_) => 9,
            GrantError::GrantedByAnotherPayer { .. } => 10,
            GrantError::AlreadyGranted { .. } => 11,
            GrantError::Revoked(_) => 12,
            GrantError::NoGrant(_) => 13,
            GrantError::NotTheGranter(_) => 14,
            GrantError::PayerIsSessionKey(_) => 15,
            GrantError::UnknownPayer(_) => 16,
        }
    }

    /// The stable snake_case name of [`GrantError::code`].
    pub fn name(&self) -> &'static str {
        let code = self.code();
        Self::CODES
            .iter()
            .find(|(c, _)| *c == code)
            .map_or("unknown", |(_, name)| name)
    }
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

fn put_domain(out: &mut [u8], domain: &Domain) {
    out[0..8].copy_from_slice(&domain.chain_id.to_le_bytes());
    out[8..28].copy_from_slice(&domain.contract.0);
}

fn read_domain(bytes: &[u8]) -> Domain {
    Domain {
        chain_id: le_u64(bytes, 0),
        contract: Address(array(bytes, 8)),
    }
}

/// `tag ‖ body`, the bytes a payer signs.
fn signing_bytes(tag: &[u8], body: &[u8]) -> Vec<u8> {
    [tag, body].concat()
}

/// The checks both records owe before anything is stored: the deployment, then the payer key
/// and signature under the receipts' acceptance rule (docs/VERIFICATION.md).
fn check_signed(
    record_domain: &Domain,
    domain: &Domain,
    payer: &PayerKey,
    signature: &[u8; 64],
    message: &[u8],
) -> Result<(), GrantError> {
    if record_domain != domain {
        return Err(GrantError::WrongDeployment {
            chain_id: record_domain.chain_id,
            contract: record_domain.contract,
        });
    }
    let signed = SignedMessage {
        public_key: payer.0,
        signature: *signature,
        message,
    };
    match signed.verify() {
        Ok(()) => Ok(()),
        Err(Reason::BadPayerKey) => Err(GrantError::BadPayerKey),
        Err(_) => Err(GrantError::BadSignature),
    }
}

impl Grant {
    /// The signed part of the record.
    pub fn body(&self) -> [u8; GRANT_BODY_BYTES] {
        let mut out = [0u8; GRANT_BODY_BYTES];
        put_domain(&mut out, &self.domain);
        out[28..60].copy_from_slice(&self.payer.0);
        out[60..92].copy_from_slice(&self.session.0);
        out[92..100].copy_from_slice(&self.nonce.to_le_bytes());
        out[100..108].copy_from_slice(&self.cap.to_le_bytes());
        let allowance = self.allowance.unwrap_or(Allowance {
            amount: 0,
            period_ms: 0,
        });
        out[108..116].copy_from_slice(&allowance.amount.to_le_bytes());
        out[116..124].copy_from_slice(&allowance.period_ms.to_le_bytes());
        out[124..132].copy_from_slice(&self.valid_from_ms.to_le_bytes());
        out[132..140].copy_from_slice(&self.valid_until_ms.to_le_bytes());
        if let PayeeScope::Only(payees) = &self.payees {
            // A scope longer than the layout holds is cut here and refused by `check`.
            out[140] = payees.len().min(GRANT_PAYEES_MAX) as u8;
            for (slot, payee) in payees.iter().take(GRANT_PAYEES_MAX).enumerate() {
                let at = PAYEES_AT + 20 * slot;
                out[at..at + 20].copy_from_slice(&payee.0);
            }
        }
        out
    }

    /// The bytes the payer signs: `GRANT_TAG ‖ body`.
    pub fn signing_bytes(&self) -> Vec<u8> {
        signing_bytes(GRANT_TAG, &self.body())
    }

    /// Signs with the payer's deposit key. Signing with another key yields a grant that fails
    /// [`SignedGrant::check`].
    pub fn sign(&self, payer: &SigningKey) -> SignedGrant {
        SignedGrant {
            grant: self.clone(),
            signature: payer.sign(&self.signing_bytes()).to_bytes(),
        }
    }

    /// Whether the grant holds at `time_ms`: before `valid_from` it is not valid yet, from
    /// `valid_until` on it has expired.
    pub fn holds_at(&self, time_ms: u64) -> Result<(), Reason> {
        if time_ms < self.valid_from_ms {
            Err(Reason::GrantNotYetValid)
        } else if time_ms >= self.valid_until_ms {
            Err(Reason::GrantExpired)
        } else {
            Ok(())
        }
    }

    /// Whether the grant admits a receipt of its session at all: its signed time and the
    /// server's time at acceptance within the validity, and its payee in scope. Revocation is
    /// the caller's check: it depends on when the revocation became durable, which the grant
    /// cannot know.
    pub fn admits(
        &self,
        payee: &Address,
        timestamp_ms: u64,
        accepted_at_ms: u64,
    ) -> Result<(), Reason> {
        self.holds_at(timestamp_ms)?;
        self.holds_at(accepted_at_ms)?;
        if !self.payees.allows(payee) {
            return Err(Reason::PayeeNotInGrant);
        }
        Ok(())
    }

    /// Whether an admitted receipt's amount fits the cap and the period's allowance given what
    /// the session has spent; if so, what it will have spent once the receipt is accepted.
    /// `timestamp_ms` must be one [`Grant::admits`] accepted (it picks the period).
    pub fn charge(
        &self,
        spent: &GrantSpend,
        amount: u64,
        timestamp_ms: u64,
    ) -> Result<GrantSpend, Reason> {
        let total = spent
            .total
            .checked_add(u128::from(amount))
            .filter(|total| *total <= u128::from(self.cap))
            .ok_or(Reason::OverGrantCap)?;
        let Some(allowance) = self.allowance else {
            return Ok(GrantSpend { total, ..*spent });
        };
        // Periods count from valid_from. A receipt signed in a period older than the newest one
        // charged is charged to the newest: the older period's total is no longer kept, and
        // charging it there can only be stricter.
        let elapsed = timestamp_ms.saturating_sub(self.valid_from_ms);
        let period = (elapsed / allowance.period_ms.max(1)).max(spent.period);
        let before = if period == spent.period {
            spent.period_total
        } else {
            0
        };
        let period_total = before
            .checked_add(u128::from(amount))
            .filter(|sum| *sum <= u128::from(allowance.amount))
            .ok_or(Reason::OverGrantAllowance)?;
        Ok(GrantSpend {
            total,
            period,
            period_total,
        })
    }
}

/// What a session has spent under its grant, as [`Grant::charge`] keeps it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct GrantSpend {
    /// Everything the session spent.
    pub total: u128,
    /// The newest period charged (0 is the one starting at `valid_from`).
    pub period: u64,
    /// Spent in that period.
    pub period_total: u128,
}

impl GrantSpend {
    /// The spend of a session from the parts charged with each payee (the order does not
    /// matter): the totals add up, and the period is the newest any part was charged in, with
    /// the parts charged in it. `None` on overflow, which a ledger's own parts never reach (the
    /// cap bounds their sum).
    pub fn combine(self, part: GrantSpend) -> Option<GrantSpend> {
        let total = self.total.checked_add(part.total)?;
        let (period, period_total) = match self.period.cmp(&part.period) {
            std::cmp::Ordering::Less => (part.period, part.period_total),
            std::cmp::Ordering::Greater => (self.period, self.period_total),
            std::cmp::Ordering::Equal => (
                self.period,
                self.period_total.checked_add(part.period_total)?,
            ),
        };
        Some(GrantSpend {
            total,
            period,
            period_total,
        })
    }

    /// This part (what the session spent with one payee) once a receipt with that payee took
    /// the session's spend from `before` to `after` (both from [`Grant::charge`]), so that the
    /// parts still [`combine`](GrantSpend::combine) to the session's spend. `None` on overflow.
    pub fn part_after(
        self,
        before: &GrantSpend,
        after: &GrantSpend,
        amount: u64,
    ) -> Option<GrantSpend> {
        let total = self.total.checked_add(u128::from(amount))?;
        // What the receipt added to the newest period's total (nothing without an allowance).
        let period_before = if after.period == before.period {
            before.period_total
        } else {
            0
        };
        let added = after.period_total.checked_sub(period_before)?;
        let period_total = if self.period == after.period {
            self.period_total.checked_add(added)?
        } else {
            added
        };
        Some(GrantSpend {
            total,
            period: after.period,
            period_total,
        })
    }
}

impl SignedGrant {
    /// The encoded record.
    pub fn to_bytes(&self) -> [u8; GRANT_BYTES] {
        let mut out = [0u8; GRANT_BYTES];
        out[..GRANT_BODY_BYTES].copy_from_slice(&self.grant.body());
        out[GRANT_BODY_BYTES..].copy_from_slice(&self.signature);
        out
    }

    /// Parses a record. Only the layout is checked here: [`SignedGrant::check`] says whether it
    /// is a grant this deployment can hold.
    pub fn decode(bytes: &[u8]) -> Result<Self, GrantError> {
        if bytes.len() != GRANT_BYTES {
            return Err(GrantError::Malformed(format!(
                "a grant is {GRANT_BYTES} bytes, got {}",
                bytes.len()
            )));
        }
        if bytes[141..144] != [0u8; 3] {
            return Err(GrantError::Malformed("reserved bytes are not zero".into()));
        }
        let count = usize::from(bytes[140]);
        if count > GRANT_PAYEES_MAX {
            return Err(GrantError::Malformed(format!(
                "{count} payees in scope, at most {GRANT_PAYEES_MAX}"
            )));
        }
        let slots: Vec<Address> = (0..GRANT_PAYEES_MAX)
            .map(|slot| Address(array(bytes, PAYEES_AT + 20 * slot)))
            .collect();
        if slots[count..].iter().any(|unused| unused.0 != [0u8; 20]) {
            return Err(GrantError::Malformed(
                "unused payee slots are not zero".into(),
            ));
        }
        let payees = if count == 0 {
            PayeeScope::Any
        } else {
            PayeeScope::Only(slots[..count].to_vec())
        };
        let allowance = Allowance {
            amount: le_u64(bytes, 108),
            period_ms: le_u64(bytes, 116),
        };
        Ok(SignedGrant {
            grant: Grant {
                domain: read_domain(bytes),
                payer: PayerKey(array(bytes, 28)),
                session: PayerKey(array(bytes, 60)),
                nonce: le_u64(bytes, 92),
                cap: le_u64(bytes, 100),
                allowance: (allowance
                    != Allowance {
                        amount: 0,
                        period_ms: 0,
                    })
                .then_some(allowance),
                valid_from_ms: le_u64(bytes, 124),
                valid_until_ms: le_u64(bytes, 132),
                payees,
            },
            signature: array(bytes, GRANT_BODY_BYTES),
        })
    }

    /// Everything a grant owes on its own, the signature last: at most four distinct payees, a
    /// non-zero cap, an allowance with its period, a validity that is not empty, a
    /// session key that is a valid key other than the payer's, signed for `domain`, and the
    /// payer's signature. Whether it fits what the ledger holds (an earlier grant, a
    /// revocation, a deposit under the session key) is the ledger's question.
    pub fn check(self, domain: &Domain) -> Result<CheckedGrant, GrantError> {
        let grant = &self.grant;
        if let PayeeScope::Only(payees) = &grant.payees {
            let mut sorted = payees.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if payees.is_empty() || payees.len() > GRANT_PAYEES_MAX || sorted.len() != payees.len()
            {
                return Err(GrantError::Malformed(format!(
                    "a scope lists 1 to {GRANT_PAYEES_MAX} distinct payees"
                )));
            }
        }
        if grant.cap == 0 {
            return Err(GrantError::ZeroCap);
        }
        if let Some(allowance) = grant.allowance
            && (allowance.amount == 0 || allowance.period_ms == 0)
        {
            return Err(GrantError::BadAllowance);
        }
        if grant.valid_until_ms <= grant.valid_from_ms {
            return Err(GrantError::EmptyValidity {
                from: grant.valid_from_ms,
                until: grant.valid_until_ms,
            });
        }
        if grant.session == grant.payer {
            return Err(GrantError::SessionKeyIsPayer(grant.session));
        }
        if crate::verify::check_public_key(&grant.session.0).is_err() {
            return Err(GrantError::BadSessionKey);
        }
        check_signed(
            &grant.domain,
            domain,
            &grant.payer,
            &self.signature,
            &grant.signing_bytes(),
        )?;
        Ok(CheckedGrant(self))
    }
}

impl Revocation {
    /// The signed part of the record.
    pub fn body(&self) -> [u8; REVOCATION_BODY_BYTES] {
        let mut out = [0u8; REVOCATION_BODY_BYTES];
        put_domain(&mut out, &self.domain);
        out[28..60].copy_from_slice(&self.payer.0);
        out[60..92].copy_from_slice(&self.session.0);
        out[92..100].copy_from_slice(&self.revoked_at_ms.to_le_bytes());
        out
    }

    /// The bytes the payer signs: `REVOCATION_TAG ‖ body`.
    pub fn signing_bytes(&self) -> Vec<u8> {
        signing_bytes(REVOCATION_TAG, &self.body())
    }

    /// Signs with the payer's deposit key.
    pub fn sign(&self, payer: &SigningKey) -> SignedRevocation {
        SignedRevocation {
            revocation: *self,
            signature: payer.sign(&self.signing_bytes()).to_bytes(),
        }
    }
}

impl SignedRevocation {
    /// The encoded record.
    pub fn to_bytes(&self) -> [u8; REVOCATION_BYTES] {
        let mut out = [0u8; REVOCATION_BYTES];
        out[..REVOCATION_BODY_BYTES].copy_from_slice(&self.revocation.body());
        out[REVOCATION_BODY_BYTES..].copy_from_slice(&self.signature);
        out
    }

    /// Parses a record (layout only; see [`SignedRevocation::check`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, GrantError> {
        if bytes.len() != REVOCATION_BYTES {
            return Err(GrantError::Malformed(format!(
                "a revocation is {REVOCATION_BYTES} bytes, got {}",
                bytes.len()
            )));
        }
        Ok(SignedRevocation {
            revocation: Revocation {
                domain: read_domain(bytes),
                payer: PayerKey(array(bytes, 28)),
                session: PayerKey(array(bytes, 60)),
                revoked_at_ms: le_u64(bytes, 92),
            },
            signature: array(bytes, REVOCATION_BODY_BYTES),
        })
    }

    /// Signed for `domain` by the payer it names. Whether that payer granted the session is the
    /// ledger's question.
    pub fn check(self, domain: &Domain) -> Result<CheckedRevocation, GrantError> {
        let revocation = &self.revocation;
        check_signed(
            &revocation.domain,
            domain,
            &revocation.payer,
            &self.signature,
            &revocation.signing_bytes(),
        )?;
        Ok(CheckedRevocation(self))
    }
}

#[cfg(test)]
mod tests;
