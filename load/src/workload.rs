//! The workload model: who pays whom, how much, with which nonce, and which verdict the engine owes
//! each receipt.
//!
//! Everything here is a pure function of the [`Workload`] parameters (the seed above all), so a run
//! can be replayed and the expected verdicts never depend on timing. Two rules make the model exact
//! although connections race each other at the engine:
//!
//! - A channel (payer, payee) always travels on the same connection, and a connection is applied in
//!   order, so a replay or a stale nonce always reaches the engine after the receipt it refers to.
//! - Funds are never contended: an overdraft asks for more than the payer's whole starting balance
//!   (rejected in any order), and the planner never lets valid receipts spend past that balance (a
//!   payer whose deposit is spent is not sampled again). So every verdict is order-independent
//!   across connections.
//!
//! A session-key workload ([`Sessions`]) signs every receipt with one of its payer's session keys
//! (the session flag set) and charges it to the payer. Its grants are fixed by the seed alone, so
//! a later run re-registers the identical grants. The kinds it adds are order-independent too: an
//! over-cap receipt asks for more than the whole cap, an expired one uses a grant whose validity
//! ended before any run, an out-of-scope one pays a payee its grant does not list, and a revoked
//! one uses a session that signs nothing else, revoked on its connection just before the first
//! such receipt is sent.

use std::collections::HashMap;

use ed25519_dalek::SigningKey;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;
use thiserror::Error;
use tollgate_engine::grant::{Grant, PayeeScope, Revocation, SignedGrant, SignedRevocation};
use tollgate_engine::{Address, Domain, PayerKey, Reason, Receipt, UnsignedReceipt, Verdict};

use crate::population::{Zipf, payee_address, payer_keys, session_key};

/// The kind of receipt the planner injected, which fixes the verdict the engine owes it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Kind {
    /// A well-formed, funded, fresh receipt: accepted.
    Valid,
    /// A signature over other bytes than the ones sent: `BadSignature`.
    BadSignature,
    /// A byte-identical copy of the channel's last accepted receipt: `Duplicate`.
    Replay,
    /// A validly signed receipt with a nonce far below the channel's window: `Stale`.
    Stale,
    /// A validly signed receipt for more than the payer's whole starting balance:
    /// `InsufficientFunds`.
    Overdraft,
    /// A session's receipt for more than its grant's whole cap: `OverGrantCap`.
    OverCap,
    /// Signed by a session whose grant's validity ended: `GrantExpired`.
    Expired,
    /// Signed by a session revoked before it was sent: `GrantRevoked`.
    Revoked,
    /// For a payee its session's grant does not list: `PayeeNotInGrant`.
    OutOfScope,
}

impl Kind {
    /// Every kind, in a stable order for reports.
    pub const ALL: [Kind; 9] = [
        Kind::Valid,
        Kind::BadSignature,
        Kind::Replay,
        Kind::Stale,
        Kind::Overdraft,
        Kind::OverCap,
        Kind::Expired,
        Kind::Revoked,
        Kind::OutOfScope,
    ];

    /// The verdict the engine owes a receipt of this kind.
    pub fn expected_verdict(self) -> Verdict {
        match self {
            Kind::Valid => Ok(()),
            Kind::BadSignature => Err(Reason::BadSignature),
            Kind::Replay => Err(Reason::Duplicate),
            Kind::Stale => Err(Reason::Stale),
            Kind::Overdraft => Err(Reason::InsufficientFunds),
            Kind::OverCap => Err(Reason::OverGrantCap),
            Kind::Expired => Err(Reason::GrantExpired),
            Kind::Revoked => Err(Reason::GrantRevoked),
            Kind::OutOfScope => Err(Reason::PayeeNotInGrant),
        }
    }

    /// A stable snake_case name for JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::BadSignature => "bad_signature",
            Kind::Replay => "replay",
            Kind::Stale => "stale",
            Kind::Overdraft => "overdraft",
            Kind::OverCap => "over_cap",
            Kind::Expired => "expired",
            Kind::Revoked => "revoked",
            Kind::OutOfScope => "out_of_scope",
        }
    }
}

/// What each payer may spend during the run, as the generator assumes it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Funds {
    /// The server checks no funds (chainless mode, `--unknown-payers accept`): nothing is refused
    /// for lack of funds, and overdrafts cannot be injected.
    Unlimited,
    /// The available balance of each payer at the start, indexed like the payer keys.
    Available(Vec<u128>),
}

/// A session-key workload: each payer grants session keys, which sign all its receipts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sessions {
    /// Session keys per payer that sign its ordinary receipts; 0 is a payer-key workload (the
    /// other fields must then be 0).
    pub per_payer: u32,
    /// Percentages of injected session receipts, counted with the other bad receipts.
    pub over_cap_pct: f64,
    /// See `over_cap_pct`.
    pub expired_pct: f64,
    /// See `over_cap_pct`.
    pub revoked_pct: f64,
    /// See `over_cap_pct`; needs at least two payees.
    pub out_of_scope_pct: f64,
}

/// The cap of an ordinary session's grant: no run spends it, and an over-cap receipt asks for
/// one more than all of it.
pub const SESSION_CAP: u64 = 1 << 62;

/// Which of a payer's session keys signs: ordinary slots are `0..per_payer`; these three sign
/// only their kind. Fixed numbers, so they name the same keys whatever `per_payer` is.
const EXPIRED_SLOT: u32 = u32::MAX - 2;
const REVOKED_SLOT: u32 = u32::MAX - 1;
const SCOPED_SLOT: u32 = u32::MAX;

/// The parameters of a workload. Everything the engine receives follows from these.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Seed for payer keys, payee addresses and every random choice.
    pub seed: u64,
    /// Receipts to plan; `None` plans until told to stop (only without presigning).
    pub receipts: Option<u64>,
    /// Number of payers (distinct ed25519 keys).
    pub payers: u32,
    /// Number of payees (distinct addresses).
    pub payees: u32,
    /// Zipf exponent of payer popularity; 0 is uniform.
    pub zipf_exponent: f64,
    /// Amount of each valid receipt, smallest unit.
    pub amount: u64,
    /// Percentages of injected bad receipts (each 0..=100, summing to at most 100).
    pub bad_signature_pct: f64,
    /// See `bad_signature_pct`.
    pub replay_pct: f64,
    /// See `bad_signature_pct`.
    pub stale_pct: f64,
    /// See `bad_signature_pct`.
    pub overdraft_pct: f64,
    /// The server's anti-replay window in nonces (an upper bound of it is enough): stale receipts
    /// are placed two windows below the channel's highest accepted nonce.
    pub window_nonces: u64,
    /// First nonce of every channel. Runs against the same server must use increasing bases, or the
    /// second run's receipts are duplicates of the first's; the default derives it from the clock.
    pub nonce_base: u64,
    /// Timestamp written into every receipt, unix milliseconds.
    pub timestamp_ms: u64,
    /// The deployment receipts are signed for.
    pub domain: Domain,
    /// Connections receipts are spread over (by channel).
    pub connections: u32,
    /// What each payer may spend.
    pub funds: Funds,
    /// Session keys, if they sign instead of the payers' keys.
    pub sessions: Sessions,
}

/// A workload that cannot be planned.
#[derive(Debug, Error, PartialEq)]
pub enum WorkloadError {
    /// A count that must be positive is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// A percentage is outside 0..=100, or the percentages add up to more than 100.
    #[error("bad receipt percentages must each be in 0..=100 and sum to at most 100, got {0}")]
    Percentages(f64),
    /// The Zipf exponent is negative or not finite.
    #[error("the Zipf exponent must be a finite number >= 0, got {0}")]
    ZipfExponent(f64),
    /// Overdrafts need a known starting balance per payer.
    #[error("--overdraft-pct needs known funds (--deposit AMOUNT or --deposit api)")]
    OverdraftWithoutFunds,
    /// The funds list does not have one entry per payer.
    #[error("funds given for {got} payers, the workload has {expected}")]
    FundsLength {
        /// payers in the workload
        expected: usize,
        /// balances given
        got: usize,
    },
    /// A payer's starting balance is so large that no u64 amount overdraws it.
    #[error("payer #{0} has more than u64::MAX available: an overdraft cannot be expressed")]
    BalanceTooLarge(u32),
    /// The nonce base leaves no room for stale nonces two windows below it.
    #[error("--nonce-base must be at least 3 x --window-nonces ({0})")]
    NonceBaseTooSmall(u64),
    /// A channel ran out of u64 nonces.
    #[error("nonce overflow on a channel")]
    NonceOverflow,
    /// Presigning needs a bounded number of receipts.
    #[error("presigning needs --receipts")]
    Unbounded,
    /// Session receipts were asked for without session keys.
    #[error("over-cap, expired, revoked and out-of-scope receipts need --sessions-per-payer")]
    SessionKindsWithoutSessions,
    /// Out-of-scope receipts need a payee outside the scope.
    #[error("--out-of-scope-pct needs at least two payees")]
    OutOfScopeNeedsTwoPayees,
    /// A starting balance at or over the session cap: an overdraft would be over cap first.
    #[error("payer #{0} has {SESSION_CAP} or more available: too much for a session workload")]
    BalanceOverSessionCap(u32),
    /// More session keys than the generator numbers.
    #[error("--payers x --sessions-per-payer is too large")]
    TooManySessions,
}

/// A 64-bit mix (splitmix64's finaliser): spreads channels over connections evenly.
fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The request hash of a receipt: blake3 over its channel and nonce, so it is deterministic and a
/// replay carries the same one.
pub fn request_hash(payer: &PayerKey, payee: &Address, nonce: u64) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"tollgate-load v1 request");
    hasher.update(&payer.0);
    hasher.update(&payee.0);
    hasher.update(&nonce.to_le_bytes());
    *hasher.finalize().as_bytes()
}

/// One receipt the planner decided to send.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Planned {
    /// The receipt's fields (the payer field is the key of `signer`).
    pub unsigned: UnsignedReceipt,
    /// Index of the payer charged.
    pub payer_index: u32,
    /// Index of the signing key in [`Planner::signing_keys`].
    pub signer: u32,
    /// What the planner meant it to be.
    pub kind: Kind,
    /// Connection it travels on.
    pub connection: u32,
    /// The payer's revocation ([`Planner::revocations`]) must be durable before this receipt is
    /// sent: the first of its payer's revoked receipts.
    pub revoke_first: bool,
}

impl Planned {
    /// Signs as its kind requires: a bad-signature receipt carries a valid signature over other
    /// bytes (its request hash with one bit flipped), so it parses and fails only the equation.
    pub fn sign(&self, key: &SigningKey, domain: &Domain) -> Receipt {
        let mut receipt = self.unsigned.sign(key, domain);
        if self.kind == Kind::BadSignature {
            receipt.request_hash[0] ^= 1;
        }
        receipt
    }
}

#[derive(Clone, Copy, Debug)]
struct Channel {
    next_nonce: u64,
    /// The last receipt planned valid, and its signer.
    last_accepted: Option<(UnsignedReceipt, u32)>,
}

/// Turns a [`Workload`] into a deterministic stream of [`Planned`] receipts.
#[derive(Debug)]
pub struct Planner {
    workload: Workload,
    keys: Vec<SigningKey>,
    payers: Vec<PayerKey>,
    /// The session keys, `slots` per payer, when sessions sign.
    session_keys: Vec<SigningKey>,
    /// The slot of each index within a payer's session keys.
    slots: Vec<u32>,
    /// One per payer when revoked receipts are planned.
    revocations: Vec<SignedRevocation>,
    /// Payers whose first revoked receipt was planned.
    revoke_planned: Vec<bool>,
    payees: Vec<Address>,
    zipf: Zipf,
    rng: Xoshiro256PlusPlus,
    channels: HashMap<(u32, u32), Channel>,
    /// Channels with an accepted receipt, in the order they got their first one: replays and stale
    /// receipts pick from here.
    warm: Vec<(u32, u32)>,
    spent: Vec<u128>,
    planned: u64,
}

/// A payer drawn this many times in a row with its deposit spent ends the plan: the workload has
/// run out of money.
const EXHAUSTED_DRAWS_MAX: u32 = 64;

impl Planner {
    /// Checks the workload and derives keys and addresses.
    pub fn new(workload: Workload) -> Result<Self, WorkloadError> {
        if workload.payers == 0 {
            return Err(WorkloadError::Zero("--payers"));
        }
        if workload.payees == 0 {
            return Err(WorkloadError::Zero("--payees"));
        }
        if workload.connections == 0 {
            return Err(WorkloadError::Zero("--connections"));
        }
        if workload.amount == 0 {
            return Err(WorkloadError::Zero("--amount"));
        }
        if workload.window_nonces == 0 {
            return Err(WorkloadError::Zero("--window-nonces"));
        }
        let sessions = &workload.sessions;
        let session_pcts = [
            sessions.over_cap_pct,
            sessions.expired_pct,
            sessions.revoked_pct,
            sessions.out_of_scope_pct,
        ];
        let pcts = [
            workload.bad_signature_pct,
            workload.replay_pct,
            workload.stale_pct,
            workload.overdraft_pct,
            session_pcts[0],
            session_pcts[1],
            session_pcts[2],
            session_pcts[3],
        ];
        let sum: f64 = pcts.iter().sum();
        if pcts.iter().any(|p| !(0.0..=100.0).contains(p)) || !(0.0..=100.0).contains(&sum) {
            return Err(WorkloadError::Percentages(sum));
        }
        if !workload.zipf_exponent.is_finite() || workload.zipf_exponent < 0.0 {
            return Err(WorkloadError::ZipfExponent(workload.zipf_exponent));
        }
        if sessions.per_payer == 0 && session_pcts.iter().any(|p| *p > 0.0) {
            return Err(WorkloadError::SessionKindsWithoutSessions);
        }
        if sessions.out_of_scope_pct > 0.0 && workload.payees < 2 {
            return Err(WorkloadError::OutOfScopeNeedsTwoPayees);
        }
        if workload.nonce_base / 3 < workload.window_nonces {
            return Err(WorkloadError::NonceBaseTooSmall(workload.window_nonces));
        }
        match &workload.funds {
            Funds::Unlimited if workload.overdraft_pct > 0.0 => {
                return Err(WorkloadError::OverdraftWithoutFunds);
            }
            Funds::Available(balances) => {
                if balances.len() != workload.payers as usize {
                    return Err(WorkloadError::FundsLength {
                        expected: workload.payers as usize,
                        got: balances.len(),
                    });
                }
                if let Some(index) = balances.iter().position(|&b| b >= u128::from(u64::MAX)) {
                    return Err(WorkloadError::BalanceTooLarge(index as u32));
                }
                if sessions.per_payer > 0
                    && let Some(index) = balances.iter().position(|&b| b >= u128::from(SESSION_CAP))
                {
                    return Err(WorkloadError::BalanceOverSessionCap(index as u32));
                }
            }
            Funds::Unlimited => {}
        }
        let keys = payer_keys(workload.seed, workload.payers);
        let payers = keys
            .iter()
            .map(|key| PayerKey(key.verifying_key().to_bytes()))
            .collect();
        let payees = (0..workload.payees)
            .map(|index| payee_address(workload.seed, index))
            .collect();
        let slots: Vec<u32> = if sessions.per_payer == 0 {
            Vec::new()
        } else {
            (0..sessions.per_payer)
                .chain([EXPIRED_SLOT, REVOKED_SLOT, SCOPED_SLOT])
                .collect()
        };
        (workload.payers as usize)
            .checked_mul(slots.len())
            .filter(|n| u32::try_from(*n).is_ok())
            .ok_or(WorkloadError::TooManySessions)?;
        let session_keys: Vec<SigningKey> = (0..workload.payers)
            .into_par_iter()
            .flat_map_iter(|payer| {
                slots
                    .iter()
                    .map(move |&slot| session_key(workload.seed, payer, slot))
            })
            .collect();
        let mut planner = Self {
            zipf: Zipf::new(workload.payers, workload.zipf_exponent),
            rng: Xoshiro256PlusPlus::seed_from_u64(workload.seed),
            spent: vec![0; workload.payers as usize],
            keys,
            payers,
            payees,
            session_keys,
            slots,
            revocations: Vec::new(),
            revoke_planned: vec![false; workload.payers as usize],
            channels: HashMap::new(),
            warm: Vec::new(),
            planned: 0,
            workload,
        };
        if planner.workload.sessions.revoked_pct > 0.0 {
            planner.revocations = (0..planner.workload.payers)
                .into_par_iter()
                .map(|payer| planner.revocation(payer))
                .collect();
        }
        Ok(planner)
    }

    /// The keys that sign receipts, indexed by [`Planned::signer`]: the payers' keys, or in a
    /// session workload their session keys.
    pub fn signing_keys(&self) -> &[SigningKey] {
        if self.slots.is_empty() {
            &self.keys
        } else {
            &self.session_keys
        }
    }

    /// In a session workload, one revocation per payer (by index) of its revoked session; empty
    /// when no revoked receipt is planned.
    pub fn revocations(&self) -> &[SignedRevocation] {
        &self.revocations
    }

    /// The signer index of `payer`'s session in `slot`.
    fn session_signer(&self, payer: u32, slot: u32) -> u32 {
        let local = self.slots.iter().position(|&s| s == slot).unwrap_or(0);
        // Fits: `new` checked payers x slots against u32.
        (payer as usize * self.slots.len() + local) as u32
    }

    fn session_public(&self, payer: u32, slot: u32) -> PayerKey {
        let key = &self.session_keys[self.session_signer(payer, slot) as usize];
        PayerKey(key.verifying_key().to_bytes())
    }

    /// The grant of `payer`'s session in `slot`: fixed by the seed, so every run registers
    /// the identical grant.
    fn grant(&self, payer: u32, slot: u32) -> SignedGrant {
        let ordinary = Grant {
            domain: self.workload.domain,
            payer: self.payers[payer as usize],
            session: self.session_public(payer, slot),
            nonce: u64::from(slot),
            cap: SESSION_CAP,
            allowance: None,
            valid_from_ms: 0,
            valid_until_ms: u64::MAX,
            payees: PayeeScope::Any,
        };
        let grant = match slot {
            // Ended in the first millisecond of 1970: expired for every receipt ever sent.
            EXPIRED_SLOT => Grant {
                valid_until_ms: 1,
                ..ordinary
            },
            SCOPED_SLOT => Grant {
                payees: PayeeScope::Only(vec![self.payees[0]]),
                ..ordinary
            },
            _ => ordinary,
        };
        grant.sign(&self.keys[payer as usize])
    }

    fn revocation(&self, payer: u32) -> SignedRevocation {
        Revocation {
            domain: self.workload.domain,
            payer: self.payers[payer as usize],
            session: self.session_public(payer, REVOKED_SLOT),
            revoked_at_ms: 0,
        }
        .sign(&self.keys[payer as usize])
    }

    /// Every grant a session workload needs registered before it runs (none for a payer-key
    /// workload): each payer's ordinary sessions, and a session for each kind planned.
    pub fn grants(&self) -> Vec<SignedGrant> {
        let sessions = &self.workload.sessions;
        let slots: Vec<u32> = self
            .slots
            .iter()
            .copied()
            .filter(|&slot| match slot {
                EXPIRED_SLOT => sessions.expired_pct > 0.0,
                REVOKED_SLOT => sessions.revoked_pct > 0.0,
                SCOPED_SLOT => sessions.out_of_scope_pct > 0.0,
                _ => true,
            })
            .collect();
        (0..self.workload.payers)
            .into_par_iter()
            .flat_map_iter(|payer| slots.iter().map(move |&slot| self.grant(payer, slot)))
            .collect()
    }

    /// The payers' public keys, by index.
    pub fn payers(&self) -> &[PayerKey] {
        &self.payers
    }

    /// The payees' addresses, by index.
    pub fn payees(&self) -> &[Address] {
        &self.payees
    }

    /// The workload being planned.
    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    fn connection_of(&self, payer: u32, payee: u32) -> u32 {
        let channel = (u64::from(payer) << 32) | u64::from(payee);
        (mix64(channel ^ self.workload.seed) % u64::from(self.workload.connections)) as u32
    }

    fn remaining(&self, payer: u32) -> Option<u128> {
        match &self.workload.funds {
            Funds::Unlimited => None,
            Funds::Available(balances) => {
                Some(balances[payer as usize].saturating_sub(self.spent[payer as usize]))
            }
        }
    }

    fn draw_kind(&mut self) -> Kind {
        let w = &self.workload;
        let point = self.rng.random::<f64>() * 100.0;
        let mut edge = 0.0;
        for (kind, pct) in [
            (Kind::BadSignature, w.bad_signature_pct),
            (Kind::Replay, w.replay_pct),
            (Kind::Stale, w.stale_pct),
            (Kind::Overdraft, w.overdraft_pct),
            (Kind::OverCap, w.sessions.over_cap_pct),
            (Kind::Expired, w.sessions.expired_pct),
            (Kind::Revoked, w.sessions.revoked_pct),
            (Kind::OutOfScope, w.sessions.out_of_scope_pct),
        ] {
            edge += pct;
            if point < edge {
                return kind;
            }
        }
        Kind::Valid
    }

    /// A payer that can afford a valid receipt, or `None` when draws keep hitting spent payers.
    fn draw_funded_payer(&mut self) -> Option<u32> {
        for _ in 0..EXHAUSTED_DRAWS_MAX {
            let payer = self.zipf.sample(&mut self.rng);
            match self.remaining(payer) {
                Some(left) if left < u128::from(self.workload.amount) => continue,
                _ => return Some(payer),
            }
        }
        None
    }

    /// Who signs a fresh receipt of `kind` for `payer`: its own key, or the session its kind
    /// calls for (an ordinary one drawn at random), and whether the payer's revocation must go
    /// first.
    fn signer(&mut self, payer: u32, kind: Kind) -> (u32, PayerKey, bool) {
        if self.slots.is_empty() {
            return (payer, self.payers[payer as usize], false);
        }
        let slot = match kind {
            Kind::Expired => EXPIRED_SLOT,
            Kind::Revoked => REVOKED_SLOT,
            Kind::OutOfScope => SCOPED_SLOT,
            _ => self.rng.random_range(0..self.workload.sessions.per_payer),
        };
        let revoke_first = kind == Kind::Revoked
            && !std::mem::replace(&mut self.revoke_planned[payer as usize], true);
        (
            self.session_signer(payer, slot),
            self.session_public(payer, slot),
            revoke_first,
        )
    }

    fn fresh(
        &mut self,
        payer: u32,
        payee: u32,
        amount: u64,
        kind: Kind,
    ) -> Result<Planned, WorkloadError> {
        let (signer, signer_key, revoke_first) = self.signer(payer, kind);
        let base = self.workload.nonce_base;
        let channel = self.channels.entry((payer, payee)).or_insert(Channel {
            next_nonce: base,
            last_accepted: None,
        });
        let nonce = channel.next_nonce;
        channel.next_nonce = nonce.checked_add(1).ok_or(WorkloadError::NonceOverflow)?;
        let payee_address = self.payees[payee as usize];
        let unsigned = UnsignedReceipt {
            payer: signer_key,
            payee: payee_address,
            amount,
            nonce,
            timestamp_ms: self.workload.timestamp_ms,
            request_hash: request_hash(&signer_key, &payee_address, nonce),
            session: !self.slots.is_empty(),
        };
        if kind == Kind::Valid {
            if channel.last_accepted.is_none() {
                self.warm.push((payer, payee));
            }
            channel.last_accepted = Some((unsigned, signer));
            self.spent[payer as usize] =
                self.spent[payer as usize].saturating_add(u128::from(amount));
        }
        Ok(Planned {
            unsigned,
            payer_index: payer,
            signer,
            kind,
            connection: self.connection_of(payer, payee),
            revoke_first,
        })
    }

    /// A receipt on a channel that already has an accepted one (replay or stale), if any exists.
    fn on_warm_channel(&mut self, kind: Kind) -> Option<Planned> {
        if self.warm.is_empty() {
            return None;
        }
        let (payer, payee) = self.warm[self.rng.random_range(0..self.warm.len())];
        let (last, signer) = self.channels.get(&(payer, payee))?.last_accepted?;
        let unsigned = match kind {
            Kind::Replay => last,
            _ => {
                // Two windows below the highest accepted nonce: stale whatever the exact window
                // edge convention. The base is at least three windows, so this never underflows.
                let nonce = last.nonce - 2 * self.workload.window_nonces;
                UnsignedReceipt {
                    nonce,
                    request_hash: request_hash(&last.payer, &last.payee, nonce),
                    ..last
                }
            }
        };
        Some(Planned {
            unsigned,
            payer_index: payer,
            signer,
            kind,
            connection: self.connection_of(payer, payee),
            revoke_first: false,
        })
    }

    /// The next receipt, or `None` when the plan is complete (the receipt count is reached, or the
    /// payers' deposits are spent).
    pub fn next_planned(&mut self) -> Result<Option<Planned>, WorkloadError> {
        if self.workload.receipts.is_some_and(|n| self.planned >= n) {
            return Ok(None);
        }
        let mut kind = self.draw_kind();
        if matches!(kind, Kind::Replay | Kind::Stale) {
            if let Some(planned) = self.on_warm_channel(kind) {
                self.planned += 1;
                return Ok(Some(planned));
            }
            // Nothing accepted yet to refer to: this receipt is a valid one instead.
            kind = Kind::Valid;
        }
        let payer = if kind == Kind::Valid {
            match self.draw_funded_payer() {
                Some(payer) => payer,
                None => return Ok(None),
            }
        } else {
            self.zipf.sample(&mut self.rng)
        };
        let payee = match kind {
            // A payer's revoked receipts share one channel, so they travel on the connection
            // that revokes the session before the first of them.
            Kind::Revoked => 0,
            // The scoped session's grant lists payee 0 only.
            Kind::OutOfScope => self.rng.random_range(1..self.workload.payees),
            _ => self.rng.random_range(0..self.workload.payees),
        };
        let amount = match (kind, &self.workload.funds) {
            (Kind::Overdraft, Funds::Available(balances)) => {
                // More than the whole starting balance: refused whatever else was applied first.
                u64::try_from(balances[payer as usize] + 1)
                    .map_err(|_| WorkloadError::BalanceTooLarge(payer))?
            }
            // More than the whole cap: refused whatever the session spent before.
            (Kind::OverCap, _) => SESSION_CAP + 1,
            _ => self.workload.amount,
        };
        let planned = self.fresh(payer, payee, amount, kind)?;
        self.planned += 1;
        Ok(Some(planned))
    }

    /// Dates the receipts planned from now on. A long run without presigning keeps its
    /// timestamps current, so the server's skew window never turns into a rejection.
    pub fn set_timestamp_ms(&mut self, timestamp_ms: u64) {
        self.workload.timestamp_ms = timestamp_ms;
    }

    /// Receipts planned so far.
    pub fn planned(&self) -> u64 {
        self.planned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::population::payer_key;

    pub(crate) fn workload() -> Workload {
        Workload {
            seed: 7,
            receipts: Some(5_000),
            payers: 50,
            payees: 4,
            zipf_exponent: 1.1,
            amount: 10,
            bad_signature_pct: 2.0,
            replay_pct: 2.0,
            stale_pct: 2.0,
            overdraft_pct: 2.0,
            window_nonces: 1024,
            nonce_base: 1 << 40,
            timestamp_ms: 1_764_000_000_000,
            domain: Domain {
                chain_id: 31_337,
                contract: Address([0x55; 20]),
            },
            connections: 4,
            funds: Funds::Available(vec![1_000_000; 50]),
            sessions: Sessions::default(),
        }
    }

    fn plan(workload: Workload) -> Vec<Planned> {
        let mut planner = Planner::new(workload).expect("valid workload");
        std::iter::from_fn(|| planner.next_planned().expect("plannable")).collect()
    }

    #[test]
    fn same_seed_same_plan_other_seed_other_plan() {
        assert_eq!(plan(workload()), plan(workload()));
        let other = Workload {
            seed: 8,
            ..workload()
        };
        assert_ne!(plan(workload()), plan(other));
    }

    #[test]
    fn every_kind_is_injected_in_proportion() {
        let planned = plan(workload());
        assert_eq!(planned.len(), 5_000);
        for kind in [
            Kind::BadSignature,
            Kind::Replay,
            Kind::Stale,
            Kind::Overdraft,
        ] {
            let n = planned.iter().filter(|p| p.kind == kind).count();
            assert!((50..160).contains(&n), "{kind:?}: {n}");
        }
    }

    #[test]
    fn expected_verdicts_follow_an_independent_ledger_model() {
        // A plain model of the ledger's rules, applied per connection in order: what the engine
        // must answer. The planner's kinds must agree with it receipt by receipt.
        let w = workload();
        let Funds::Available(balances) = w.funds.clone() else {
            panic!("funded workload")
        };
        let planner_payers = Planner::new(w.clone()).expect("valid").payers().to_vec();
        let planned = plan(w.clone());
        let mut highest: HashMap<(PayerKey, Address), u64> = HashMap::new();
        let mut seen: std::collections::HashSet<(PayerKey, Address, u64)> = Default::default();
        let mut spent: HashMap<PayerKey, u128> = HashMap::new();
        for connection in 0..w.connections {
            for p in planned.iter().filter(|p| p.connection == connection) {
                let r = p.sign(&payer_key(w.seed, p.payer_index), &w.domain);
                let ok_sig = ed25519_dalek::VerifyingKey::from_bytes(&r.payer.0)
                    .expect("key")
                    .verify_strict(
                        &r.unsigned().signing_bytes(&w.domain),
                        &ed25519_dalek::Signature::from_bytes(&r.signature),
                    )
                    .is_ok();
                let channel = (r.payer, r.payee);
                let payer_index = planner_payers
                    .iter()
                    .position(|k| *k == r.payer)
                    .expect("known payer");
                let verdict = if !ok_sig {
                    Err(Reason::BadSignature)
                } else if highest
                    .get(&channel)
                    .is_some_and(|&h| r.nonce + w.window_nonces <= h)
                {
                    Err(Reason::Stale)
                } else if seen.contains(&(r.payer, r.payee, r.nonce)) {
                    Err(Reason::Duplicate)
                } else if spent.get(&r.payer).copied().unwrap_or(0) + u128::from(r.amount)
                    > balances[payer_index]
                {
                    Err(Reason::InsufficientFunds)
                } else {
                    seen.insert((r.payer, r.payee, r.nonce));
                    let h = highest.entry(channel).or_insert(r.nonce);
                    *h = (*h).max(r.nonce);
                    *spent.entry(r.payer).or_insert(0) += u128::from(r.amount);
                    Ok(())
                };
                assert_eq!(verdict, p.kind.expected_verdict(), "{p:?}");
            }
        }
    }

    #[test]
    fn session_plans_owe_each_kind_its_verdict_under_the_grant_rule() {
        let w = Workload {
            sessions: Sessions {
                per_payer: 3,
                over_cap_pct: 2.0,
                expired_pct: 2.0,
                revoked_pct: 2.0,
                out_of_scope_pct: 2.0,
            },
            ..workload()
        };
        let planner = Planner::new(w.clone()).expect("valid workload");
        let grants: HashMap<PayerKey, Grant> = planner
            .grants()
            .into_iter()
            .map(|signed| {
                signed.clone().check(&w.domain).expect("a good grant");
                (signed.grant.session, signed.grant)
            })
            .collect();
        let mut revocation_connection: HashMap<u32, u32> = HashMap::new();
        let planned = plan(w.clone());
        for p in &planned {
            let signer = &planner.signing_keys()[p.signer as usize];
            assert_eq!(signer.verifying_key().to_bytes(), p.unsigned.payer.0);
            assert!(p.unsigned.session, "{p:?}");
            let grant = &grants[&p.unsigned.payer];
            assert_eq!(grant.payer, planner.payers()[p.payer_index as usize]);
            let at = p.unsigned.timestamp_ms;
            let admitted = grant.admits(&p.unsigned.payee, at, at);
            let charged = grant.charge(&Default::default(), p.unsigned.amount, at);
            match p.kind {
                Kind::Expired => assert_eq!(admitted, Err(Reason::GrantExpired)),
                Kind::OutOfScope => assert_eq!(admitted, Err(Reason::PayeeNotInGrant)),
                Kind::OverCap => assert_eq!(charged, Err(Reason::OverGrantCap)),
                _ => assert_eq!(admitted, Ok(()), "{p:?}"),
            }
            if p.kind == Kind::Revoked {
                // The first of a payer's revoked receipts carries the revocation, and the rest
                // follow it on the same connection.
                let first = !revocation_connection.contains_key(&p.payer_index);
                assert_eq!(p.revoke_first, first);
                let connection = revocation_connection
                    .entry(p.payer_index)
                    .or_insert(p.connection);
                assert_eq!(*connection, p.connection);
                let revocation = planner.revocations()[p.payer_index as usize];
                assert_eq!(revocation.revocation.session, p.unsigned.payer);
            } else {
                assert!(!p.revoke_first);
            }
        }
        for kind in [
            Kind::OverCap,
            Kind::Expired,
            Kind::Revoked,
            Kind::OutOfScope,
        ] {
            let n = planned.iter().filter(|p| p.kind == kind).count();
            assert!((50..160).contains(&n), "{kind:?}: {n}");
        }
    }

    #[test]
    fn session_kinds_need_sessions() {
        let w = Workload {
            sessions: Sessions {
                expired_pct: 1.0,
                ..Sessions::default()
            },
            ..workload()
        };
        assert_eq!(
            Planner::new(w).err(),
            Some(WorkloadError::SessionKindsWithoutSessions)
        );
    }

    #[test]
    fn a_channel_never_changes_connection() {
        let mut by_channel = HashMap::new();
        for p in plan(workload()) {
            let channel = (p.unsigned.payer, p.unsigned.payee);
            assert_eq!(
                *by_channel.entry(channel).or_insert(p.connection),
                p.connection
            );
        }
        assert!(
            by_channel
                .values()
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 1
        );
    }

    #[test]
    fn plan_ends_when_deposits_are_spent() {
        let w = Workload {
            receipts: None,
            overdraft_pct: 0.0,
            funds: Funds::Available(vec![100; 50]),
            ..workload()
        };
        let planned = plan(w);
        let valid = planned.iter().filter(|p| p.kind == Kind::Valid).count();
        // 50 payers x 100 / 10 per receipt = 500 at most; the plan stops near that.
        assert!((400..=500).contains(&valid), "{valid}");
    }

    #[test]
    fn bad_workloads_are_refused_by_name() {
        let refuse = |w: Workload| Planner::new(w).err();
        assert_eq!(
            refuse(Workload {
                funds: Funds::Unlimited,
                ..workload()
            }),
            Some(WorkloadError::OverdraftWithoutFunds)
        );
        assert_eq!(
            refuse(Workload {
                replay_pct: 99.0,
                ..workload()
            }),
            Some(WorkloadError::Percentages(105.0))
        );
        assert_eq!(
            refuse(Workload {
                nonce_base: 3000,
                ..workload()
            }),
            Some(WorkloadError::NonceBaseTooSmall(1024))
        );
        assert_eq!(
            refuse(Workload {
                payers: 0,
                ..workload()
            }),
            Some(WorkloadError::Zero("--payers"))
        );
    }
}
