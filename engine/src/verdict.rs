//! Per-receipt verdicts and their stable reason codes.
//!
//! A code is a promise to every client ever written: it is never renumbered and never reused.
//! New reasons take the next free number. `docs/PROTOCOL.md` lists the same table.

use std::fmt;

/// Why a receipt was not accepted. The discriminant is the wire code.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Reason {
    /// The record does not parse as a v1 receipt (reserved bytes not zero).
    Malformed = 1,
    /// The signature does not verify under the acceptance rule (docs/VERIFICATION.md).
    BadSignature = 2,
    /// The payer key is not a canonical encoding, is of small order, or has a torsion component.
    /// Such a key is refused for good.
    BadPayerKey = 3,
    /// This (payer, payee, nonce) was already accepted.
    Duplicate = 4,
    /// The nonce is below the channel's anti-replay window: it can no longer be checked for replay.
    Stale = 5,
    /// The timestamp is outside the configured skew window around the server's clock.
    TimestampSkew = 6,
    /// No deposit was ever seen for this payer, and the server refuses unknown payers.
    UnknownPayer = 7,
    /// Accepting would take the payer's available balance below zero.
    InsufficientFunds = 8,
    /// Accepting would overflow a total.
    Overflow = 9,
    /// The submitting client is not authorised to submit receipts for this payee.
    PayeeNotAllowed = 10,
    /// Signed by a session key (the session flag is set) that no payer granted.
    NoGrant = 11,
    /// The session's grant does not hold yet at the receipt's time or at its acceptance.
    GrantNotYetValid = 12,
    /// The session's grant no longer holds at the receipt's time or at its acceptance.
    GrantExpired = 13,
    /// The payer revoked the session key before the receipt was accepted.
    GrantRevoked = 14,
    /// Accepting would take the session past its grant's cap.
    OverGrantCap = 15,
    /// Accepting would take the session past its grant's allowance for the period.
    OverGrantAllowance = 16,
    /// The payee is not in the session's grant.
    PayeeNotInGrant = 17,
}

impl Reason {
    /// Every reason, in code order.
    pub const ALL: [Reason; 17] = [
        Reason::Malformed,
        Reason::BadSignature,
        Reason::BadPayerKey,
        Reason::Duplicate,
        Reason::Stale,
        Reason::TimestampSkew,
        Reason::UnknownPayer,
        Reason::InsufficientFunds,
        Reason::Overflow,
        Reason::PayeeNotAllowed,
        Reason::NoGrant,
        Reason::GrantNotYetValid,
        Reason::GrantExpired,
        Reason::GrantRevoked,
        Reason::OverGrantCap,
        Reason::OverGrantAllowance,
        Reason::PayeeNotInGrant,
    ];

    /// The stable wire code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The reason for a wire code, if the code is known.
    pub fn from_code(code: u8) -> Option<Reason> {
        Reason::ALL.into_iter().find(|reason| reason.code() == code)
    }

    /// A stable snake_case name for logs, JSON and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::BadSignature => "bad_signature",
            Reason::BadPayerKey => "bad_payer_key",
            Reason::Duplicate => "duplicate",
            Reason::Stale => "stale",
            Reason::TimestampSkew => "timestamp_skew",
            Reason::UnknownPayer => "unknown_payer",
            Reason::InsufficientFunds => "insufficient_funds",
            Reason::Overflow => "overflow",
            Reason::PayeeNotAllowed => "payee_not_allowed",
            Reason::NoGrant => "no_grant",
            Reason::GrantNotYetValid => "grant_not_yet_valid",
            Reason::GrantExpired => "grant_expired",
            Reason::GrantRevoked => "grant_revoked",
            Reason::OverGrantCap => "over_grant_cap",
            Reason::OverGrantAllowance => "over_grant_allowance",
            Reason::PayeeNotInGrant => "payee_not_in_grant",
        }
    }

    /// The reason for a name produced by [`Reason::name`].
    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|reason| reason.name() == name)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The outcome for one receipt: accepted, or rejected for a reason.
pub type Verdict = Result<(), Reason>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_round_trip() {
        // The numbers are part of the protocol: this list changes only by appending.
        let expected: [(u8, &str); 17] = [
            (1, "malformed"),
            (2, "bad_signature"),
            (3, "bad_payer_key"),
            (4, "duplicate"),
            (5, "stale"),
            (6, "timestamp_skew"),
            (7, "unknown_payer"),
            (8, "insufficient_funds"),
            (9, "overflow"),
            (10, "payee_not_allowed"),
            (11, "no_grant"),
            (12, "grant_not_yet_valid"),
            (13, "grant_expired"),
            (14, "grant_revoked"),
            (15, "over_grant_cap"),
            (16, "over_grant_allowance"),
            (17, "payee_not_in_grant"),
        ];
        for (reason, (code, name)) in Reason::ALL.into_iter().zip(expected) {
            assert_eq!((reason.code(), reason.name()), (code, name));
            assert_eq!(Reason::from_code(code), Some(reason));
            assert_eq!(Reason::from_name(name), Some(reason));
        }
        assert_eq!(Reason::from_code(0), None);
        assert_eq!(Reason::from_code(18), None);
    }
}
