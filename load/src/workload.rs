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

use std::collections::HashMap;

use ed25519_dalek::SigningKey;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use thiserror::Error;
use tollgate_engine::{Address, Domain, PayerKey, Reason, Receipt, UnsignedReceipt, Verdict};

use crate::population::{Zipf, payee_address, payer_keys};

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
}

impl Kind {
    /// Every kind, in a stable order for reports.
    pub const ALL: [Kind; 5] = [
        Kind::Valid,
        Kind::BadSignature,
        Kind::Replay,
        Kind::Stale,
        Kind::Overdraft,
    ];

    /// The verdict the engine owes a receipt of this kind.
    pub fn expected_verdict(self) -> Verdict {
        match self {
            Kind::Valid => Ok(()),
            Kind::BadSignature => Err(Reason::BadSignature),
            Kind::Replay => Err(Reason::Duplicate),
            Kind::Stale => Err(Reason::Stale),
            Kind::Overdraft => Err(Reason::InsufficientFunds),
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
    /// The receipt's fields (the payer field matches `payer_index`'s key).
    pub unsigned: UnsignedReceipt,
    /// Index of the payer (and of its key).
    pub payer_index: u32,
    /// What the planner meant it to be.
    pub kind: Kind,
    /// Connection it travels on.
    pub connection: u32,
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
    last_accepted: Option<UnsignedReceipt>,
}

/// Turns a [`Workload`] into a deterministic stream of [`Planned`] receipts.
#[derive(Debug)]
pub struct Planner {
    workload: Workload,
    keys: Vec<SigningKey>,
    payers: Vec<PayerKey>,
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
        let pcts = [
            workload.bad_signature_pct,
            workload.replay_pct,
            workload.stale_pct,
            workload.overdraft_pct,
        ];
        let sum: f64 = pcts.iter().sum();
        if pcts.iter().any(|p| !(0.0..=100.0).contains(p)) || !(0.0..=100.0).contains(&sum) {
            return Err(WorkloadError::Percentages(sum));
        }
        if !workload.zipf_exponent.is_finite() || workload.zipf_exponent < 0.0 {
            return Err(WorkloadError::ZipfExponent(workload.zipf_exponent));
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
        Ok(Self {
            zipf: Zipf::new(workload.payers, workload.zipf_exponent),
            rng: Xoshiro256PlusPlus::seed_from_u64(workload.seed),
            spent: vec![0; workload.payers as usize],
            keys,
            payers,
            payees,
            channels: HashMap::new(),
            warm: Vec::new(),
            planned: 0,
            workload,
        })
    }

    /// The payers' signing keys, by index.
    pub fn keys(&self) -> &[SigningKey] {
        &self.keys
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

    fn fresh(
        &mut self,
        payer: u32,
        payee: u32,
        amount: u64,
        kind: Kind,
    ) -> Result<Planned, WorkloadError> {
        let base = self.workload.nonce_base;
        let channel = self.channels.entry((payer, payee)).or_insert(Channel {
            next_nonce: base,
            last_accepted: None,
        });
        let nonce = channel.next_nonce;
        channel.next_nonce = nonce.checked_add(1).ok_or(WorkloadError::NonceOverflow)?;
        let payer_key = self.payers[payer as usize];
        let payee_address = self.payees[payee as usize];
        let unsigned = UnsignedReceipt {
            payer: payer_key,
            payee: payee_address,
            amount,
            nonce,
            timestamp_ms: self.workload.timestamp_ms,
            request_hash: request_hash(&payer_key, &payee_address, nonce),
            session: false,
        };
        if kind == Kind::Valid {
            if channel.last_accepted.is_none() {
                self.warm.push((payer, payee));
            }
            channel.last_accepted = Some(unsigned);
            self.spent[payer as usize] =
                self.spent[payer as usize].saturating_add(u128::from(amount));
        }
        Ok(Planned {
            unsigned,
            payer_index: payer,
            kind,
            connection: self.connection_of(payer, payee),
        })
    }

    /// A receipt on a channel that already has an accepted one (replay or stale), if any exists.
    fn on_warm_channel(&mut self, kind: Kind) -> Option<Planned> {
        if self.warm.is_empty() {
            return None;
        }
        let (payer, payee) = self.warm[self.rng.random_range(0..self.warm.len())];
        let last = self.channels.get(&(payer, payee))?.last_accepted?;
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
            kind,
            connection: self.connection_of(payer, payee),
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
        let payee = self.rng.random_range(0..self.workload.payees);
        let amount = match (kind, &self.workload.funds) {
            (Kind::Overdraft, Funds::Available(balances)) => {
                // More than the whole starting balance: refused whatever else was applied first.
                u64::try_from(balances[payer as usize] + 1)
                    .map_err(|_| WorkloadError::BalanceTooLarge(payer))?
            }
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
