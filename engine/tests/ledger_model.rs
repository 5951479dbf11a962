//! The auditor: random sequences of receipt batches (duplicates, nonces reordered inside the
//! window, stale nonces, overdrafts, timestamp skew, bad signatures; signed by payers or by
//! their session keys), session grants and revocations, re-sent batches, funds
//! events (deposits, withdrawal requests and completions, some delivered twice), epoch events
//! (seals, submissions, commits, disputes of any epoch, some repeated), clean restarts, and
//! crashes: a child process writes batches and is killed with SIGKILL at a random ack, often
//! after its groups are durable but before any ack reached the client, which then re-sends
//! every batch. After every step the engine's acks and every total it reports equal a plain
//! in-memory model's, which computes them on its own, and no session has spent more than its
//! grant's cap.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use tollgate_engine::grant::{Grant, PayeeScope, Revocation};
use tollgate_engine::pipeline::LedgerError;
use tollgate_engine::pipeline::{
    BatchAck, Engine, EngineConfig, EngineError, EpochStatus, EpochUpdate, FundsEvent, FundsKind,
};
use tollgate_engine::{Address, PayerKey, Reason, Receipt, UnsignedReceipt};

const WINDOW_NONCES: u64 = 128;
const PAYERS: usize = 3;
const PAYEES: usize = 2;
/// The payer each session key may be granted by: two agents of payer 0, one of payer 1.
const SESSION_PAYER: [usize; 3] = [0, 0, 1];
const SESSIONS: usize = SESSION_PAYER.len();

/// Who signs a receipt: the payer's own key, or one of the session keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Signer {
    Payer(usize),
    Session(usize),
}

#[derive(Clone, Debug)]
enum Nonce {
    /// `k` above the channel's highest nonce (or `k` for a fresh channel).
    Above(u64),
    /// `k` below the highest: 0 is a duplicate, below the window is stale, else maybe reordered.
    Below(u64),
}

#[derive(Clone, Debug)]
enum Clock {
    Now,
    Future,
    Past,
}

#[derive(Clone, Debug)]
struct Spec {
    payer: usize,
    /// Signed by this session key instead of the payer's (its grant decides whose money).
    session: Option<usize>,
    payee: usize,
    amount: u64,
    nonce: Nonce,
    clock: Clock,
    tampered: bool,
}

#[derive(Clone, Copy, Debug)]
enum Funds {
    Deposit(u128),
    WithdrawalRequested(u128),
    /// Completes whatever the payer has requested.
    WithdrawalCompleted,
}

#[derive(Clone, Debug)]
enum Step {
    Batch(Vec<Spec>),
    ResendLast,
    Funds {
        payer: usize,
        funds: Funds,
        twice: bool,
    },
    Seal,
    /// Marks the n-th (modulo) sealed epoch submitted.
    Submit(usize),
    CommitOldest,
    /// Voids the n-th (modulo) epoch not yet disputed, whatever its status, twice.
    Dispute(usize),
    Restart,
    /// The session's payer grants it `cap`, for one payee or any, valid now or long expired.
    Grant {
        session: usize,
        cap: u64,
        payee: Option<usize>,
        expired: bool,
    },
    /// The session's payer revokes it.
    Revoke(usize),
    /// A child process writes these batches and is killed after `acks` of them were acked.
    Crash {
        batches: Vec<Vec<Spec>>,
        acks: usize,
    },
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0..PAYERS,
        prop_oneof![1 => Just(None), 1 => (0..SESSIONS).prop_map(Some)],
        0..PAYEES,
        0u64..80,
        prop_oneof![
            3 => (1u64..4).prop_map(Nonce::Above),
            3 => (0u64..WINDOW_NONCES + 80).prop_map(Nonce::Below),
        ],
        prop_oneof![8 => Just(Clock::Now), 1 => Just(Clock::Future), 1 => Just(Clock::Past)],
        proptest::bool::weighted(0.08),
    )
        .prop_map(
            |(payer, session, payee, amount, nonce, clock, tampered)| Spec {
                payer: session.map_or(payer, |s| SESSION_PAYER[s]),
                session,
                payee,
                amount,
                nonce,
                clock,
                tampered,
            },
        )
}

fn step() -> impl Strategy<Value = Step> {
    let funds = prop_oneof![
        3 => (0u128..150).prop_map(Funds::Deposit),
        1 => (0u128..100).prop_map(Funds::WithdrawalRequested),
        1 => Just(Funds::WithdrawalCompleted),
    ];
    prop_oneof![
        8 => proptest::collection::vec(spec(), 0..12).prop_map(Step::Batch),
        1 => Just(Step::ResendLast),
        4 => (0..PAYERS, funds, proptest::bool::weighted(0.2))
            .prop_map(|(payer, funds, twice)| Step::Funds { payer, funds, twice }),
        2 => Just(Step::Seal),
        1 => any::<usize>().prop_map(Step::Submit),
        1 => Just(Step::CommitOldest),
        1 => any::<usize>().prop_map(Step::Dispute),
        1 => Just(Step::Restart),
        4 => (0..SESSIONS, 1u64..120, proptest::option::weighted(0.3, 0..PAYEES), proptest::bool::weighted(0.15))
            .prop_map(|(session, cap, payee, expired)| Step::Grant { session, cap, payee, expired }),
        1 => (0..SESSIONS).prop_map(Step::Revoke),
        1 => (proptest::collection::vec(proptest::collection::vec(spec(), 0..8), 1..4), 0usize..4)
            .prop_map(|(batches, acks)| {
                let acks = acks.min(batches.len());
                Step::Crash { batches, acks }
            }),
    ]
}

/// The money of a (payer, payee) channel, whoever signed.
#[derive(Default, Clone)]
struct ModelChannel {
    cumulative: u128,
    receipts: u64,
}

/// An anti-replay window: a (signer, payee) pair's.
#[derive(Default, Clone)]
struct ModelWindow {
    top: Option<u64>,
    seen: BTreeSet<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct ModelGrant {
    cap: u64,
    payee: Option<usize>,
    expired: bool,
}

#[derive(Default, Clone, Copy, Debug)]
struct ModelSession {
    grant: Option<ModelGrant>,
    revoked: bool,
    spent: u128,
}

#[derive(Default, Clone, Copy, Debug, PartialEq)]
struct ModelPayer {
    deposited: u128,
    withdrawal_requested: u128,
    withdrawn: u128,
    settled: u128,
    pending: u128,
    unsealed: u128,
}

impl ModelPayer {
    /// What may still be spent; withdrawals can take a payer below zero, which leaves nothing.
    fn available(&self) -> u128 {
        let spoken_for = self.withdrawn + self.withdrawal_requested + self.settled + self.pending;
        self.deposited.saturating_sub(spoken_for)
    }
}

#[derive(Default, Clone, Copy, Debug, PartialEq)]
struct ModelPayee {
    credited: u128,
    settled: u128,
    unsealed: u128,
}

#[derive(Clone, Debug)]
struct ModelEpoch {
    number: u64,
    status: EpochStatus,
    debits: [u128; PAYERS],
    credits: [u128; PAYEES],
    leaves: BTreeSet<(usize, usize)>,
}

#[derive(Default)]
struct Model {
    channels: BTreeMap<(usize, usize), ModelChannel>,
    windows: BTreeMap<(Signer, usize), ModelWindow>,
    sessions: [ModelSession; SESSIONS],
    payers: [ModelPayer; PAYERS],
    payees: [ModelPayee; PAYEES],
    /// Channels that moved since the last seal, or were carried back by a dispute.
    touched: BTreeSet<(usize, usize)>,
    /// Every sealed epoch, by number - 1.
    epochs: Vec<ModelEpoch>,
}

impl Spec {
    fn signer(&self) -> Signer {
        self.session
            .map_or(Signer::Payer(self.payer), Signer::Session)
    }
}

impl Model {
    fn nonce(&self, spec: &Spec) -> u64 {
        let top = self
            .windows
            .get(&(spec.signer(), spec.payee))
            .and_then(|w| w.top);
        match (spec.nonce.clone(), top) {
            (Nonce::Above(k), Some(top)) => top + k,
            (Nonce::Above(k), None) => k,
            (Nonce::Below(k), Some(top)) => top.saturating_sub(k),
            (Nonce::Below(k), None) => k,
        }
    }

    /// The verdict the ledger must give, applying the receipt when it passes.
    fn apply(&mut self, spec: &Spec, nonce: u64) -> Result<(), Reason> {
        if spec.tampered {
            return Err(Reason::BadSignature);
        }
        if !matches!(spec.clock, Clock::Now) {
            return Err(Reason::TimestampSkew);
        }
        if let Some(session) = spec.session {
            let session = self.sessions[session];
            let grant = session.grant.ok_or(Reason::NoGrant)?;
            if session.revoked {
                return Err(Reason::GrantRevoked);
            }
            if grant.expired {
                return Err(Reason::GrantExpired);
            }
            if grant.payee.is_some_and(|payee| payee != spec.payee) {
                return Err(Reason::PayeeNotInGrant);
            }
        }
        let payer = self.payers[spec.payer];
        if payer.deposited == 0 {
            return Err(Reason::UnknownPayer);
        }
        let window = self.windows.entry((spec.signer(), spec.payee)).or_default();
        if let Some(top) = window.top
            && nonce <= top
            && top - nonce >= WINDOW_NONCES
        {
            return Err(Reason::Stale);
        }
        if window.seen.contains(&nonce) {
            return Err(Reason::Duplicate);
        }
        let amount = u128::from(spec.amount);
        if let Some(session) = spec.session {
            let session = &self.sessions[session];
            let cap = session.grant.map_or(0, |grant| grant.cap);
            if session.spent + amount > u128::from(cap) {
                return Err(Reason::OverGrantCap);
            }
        }
        if amount > payer.available() {
            return Err(Reason::InsufficientFunds);
        }
        window.seen.insert(nonce);
        window.top = Some(window.top.map_or(nonce, |t| t.max(nonce)));
        if let Some(session) = spec.session {
            self.sessions[session].spent += amount;
        }
        let channel = self.channels.entry((spec.payer, spec.payee)).or_default();
        channel.cumulative += amount;
        channel.receipts += 1;
        let payer = &mut self.payers[spec.payer];
        payer.pending += amount;
        payer.unsealed += amount;
        let payee = &mut self.payees[spec.payee];
        payee.credited += amount;
        payee.unsealed += amount;
        self.touched.insert((spec.payer, spec.payee));
        Ok(())
    }

    /// The answer the ledger must give a grant of `session`, holding it when it is new.
    fn grant(&mut self, session: usize, grant: ModelGrant) -> Result<(), &'static str> {
        let payer_deposited = self.payers[SESSION_PAYER[session]].deposited > 0;
        let held = &mut self.sessions[session];
        match held.grant {
            None if !payer_deposited => Err("unknown_payer"),
            None => {
                held.grant = Some(grant);
                Ok(())
            }
            Some(_) if held.revoked => Err("revoked"),
            Some(same) if same == grant => Ok(()),
            Some(_) => Err("already_granted"),
        }
    }

    /// The answer the ledger must give a revocation of `session`.
    fn revoke(&mut self, session: usize) -> Result<(), &'static str> {
        let held = &mut self.sessions[session];
        if held.grant.is_none() {
            return Err("no_grant");
        }
        held.revoked = true;
        Ok(())
    }

    /// Applies one funds event; returns its amount.
    fn funds(&mut self, payer: usize, funds: Funds) -> (FundsKind, u128) {
        let payer = &mut self.payers[payer];
        match funds {
            Funds::Deposit(amount) => {
                payer.deposited += amount;
                (FundsKind::Deposit, amount)
            }
            Funds::WithdrawalRequested(amount) => {
                payer.withdrawal_requested += amount;
                (FundsKind::WithdrawalRequested, amount)
            }
            Funds::WithdrawalCompleted => {
                let amount = std::mem::take(&mut payer.withdrawal_requested);
                payer.withdrawn += amount;
                (FundsKind::WithdrawalCompleted, amount)
            }
        }
    }

    /// Freezes the open epoch.
    fn seal(&mut self) -> ModelEpoch {
        let epoch = ModelEpoch {
            number: self.epochs.len() as u64 + 1,
            status: EpochStatus::Sealed,
            debits: self
                .payers
                .each_mut()
                .map(|p| std::mem::take(&mut p.unsealed)),
            credits: self
                .payees
                .each_mut()
                .map(|p| std::mem::take(&mut p.unsealed)),
            leaves: std::mem::take(&mut self.touched),
        };
        self.epochs.push(epoch.clone());
        epoch
    }

    /// Moves `epoch` to `status`, moving money the way settlement must.
    fn transition(&mut self, index: usize, status: EpochStatus) {
        let epoch = self.epochs[index].clone();
        if status == EpochStatus::Committed || epoch.status == EpochStatus::Committed {
            let settle = status == EpochStatus::Committed;
            for (payer, debit) in self.payers.iter_mut().zip(epoch.debits) {
                if settle {
                    payer.pending -= debit;
                    payer.settled += debit;
                } else {
                    payer.settled -= debit;
                    payer.pending += debit;
                }
            }
            for (payee, credit) in self.payees.iter_mut().zip(epoch.credits) {
                if settle {
                    payee.settled += credit;
                } else {
                    payee.settled -= credit;
                }
            }
        }
        if status == EpochStatus::Disputed {
            for (payer, debit) in self.payers.iter_mut().zip(epoch.debits) {
                payer.unsealed += debit;
            }
            for (payee, credit) in self.payees.iter_mut().zip(epoch.credits) {
                payee.unsealed += credit;
            }
            self.touched.extend(epoch.leaves);
        }
        self.epochs[index].status = status;
    }

    /// Totals that must agree whatever happened: what payers owe is what payees are owed.
    fn check_conservation(&self) -> Result<(), TestCaseError> {
        let owed: u128 = self.payers.iter().map(|p| p.pending + p.settled).sum();
        let credited: u128 = self.payees.iter().map(|p| p.credited).sum();
        let cumulative: u128 = self.channels.values().map(|c| c.cumulative).sum();
        let settled: (u128, u128) = (
            self.payers.iter().map(|p| p.settled).sum(),
            self.payees.iter().map(|p| p.settled).sum(),
        );
        prop_assert_eq!(owed, credited);
        prop_assert_eq!(owed, cumulative);
        prop_assert_eq!(settled.0, settled.1);
        Ok(())
    }
}

struct World {
    keys: Vec<SigningKey>,
    session_keys: Vec<SigningKey>,
    payees: Vec<Address>,
    dir: tempfile::TempDir,
    engine: Option<Engine>,
    model: Model,
    next_seq: u64,
    last: Option<(u64, Vec<Receipt>, BatchAck)>,
    next_log: u64,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Some(Self::open(dir.path()));
        Self {
            keys: (0..PAYERS as u8).map(|i| signing_key(i + 1)).collect(),
            session_keys: (0..SESSIONS as u8).map(|i| signing_key(i + 101)).collect(),
            payees: (0..PAYEES as u8).map(|i| payee(i + 1)).collect(),
            dir,
            engine,
            model: Model::default(),
            next_seq: 1,
            last: None,
            next_log: 0,
        }
    }

    fn open(path: &std::path::Path) -> Engine {
        let mut config = EngineConfig::new(path);
        config.ledger.window_nonces = WINDOW_NONCES as u32;
        // A tiny cache so that cold loads from RocksDB are exercised all the time.
        config.ledger.channels_cached_max = 2;
        config.ledger.accounts_cached_max = 2;
        open_with(config)
    }

    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("engine is open")
    }

    fn payer(&self, index: usize) -> PayerKey {
        payer_of(&self.keys[index])
    }

    fn payer_index(&self, payer: &PayerKey) -> usize {
        (0..PAYERS)
            .find(|i| self.payer(*i) == *payer)
            .expect("a known payer")
    }

    fn payee_index(&self, payee: &Address) -> usize {
        (0..PAYEES)
            .find(|i| self.payees[*i] == *payee)
            .expect("a known payee")
    }

    /// Signs the batch the specs describe, under the next sequence number, and applies it to
    /// the model: the receipts and the ack the engine must give.
    fn next_batch(&mut self, specs: &[Spec]) -> (u64, Vec<Receipt>, BatchAck) {
        let now = now_ms();
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut receipts = Vec::new();
        let mut expected = BatchAck {
            batch_seq: seq,
            ..BatchAck::default()
        };
        for (index, spec) in specs.iter().enumerate() {
            let nonce = self.model.nonce(spec);
            let timestamp = match spec.clock {
                Clock::Now => now,
                Clock::Future => now + 3_600_000,
                Clock::Past => now - 3_600_000,
            };
            let mut receipt = match spec.session {
                None => receipt_at(
                    &self.keys[spec.payer],
                    self.payees[spec.payee],
                    spec.amount,
                    nonce,
                    timestamp,
                ),
                Some(session) => {
                    let key = &self.session_keys[session];
                    UnsignedReceipt {
                        session: true,
                        ..receipt_at(key, self.payees[spec.payee], spec.amount, nonce, timestamp)
                            .unsigned()
                    }
                    .sign(key, &DOMAIN)
                }
            };
            if spec.tampered {
                receipt.amount += 1;
            }
            receipts.push(receipt);
            match self.model.apply(spec, nonce) {
                Ok(()) => expected.accepted += 1,
                Err(reason) => expected.rejections.push((index as u32, reason)),
            }
        }
        (seq, receipts, expected)
    }

    fn submit(&self, seq: u64, receipts: &[Receipt]) -> Result<BatchAck, TestCaseError> {
        submit(self.engine(), request(1, seq, receipts))
            .map_err(|e| TestCaseError::fail(e.to_string()))
    }

    fn record(&self, epoch: u64, status: EpochStatus) -> Result<(), EngineError> {
        wait(
            self.engine()
                .record_epoch(EpochUpdate {
                    epoch,
                    status,
                    root: Some([1; 32]),
                    part: None,
                })
                .expect("queued"),
        )
    }

    fn run(&mut self, step: Step) -> Result<(), TestCaseError> {
        let fail = |e: EngineError| TestCaseError::fail(e.to_string());
        match step {
            Step::Batch(specs) => {
                let (seq, receipts, expected) = self.next_batch(&specs);
                let ack = self.submit(seq, &receipts)?;
                prop_assert_eq!(&ack, &expected);
                self.last = Some((seq, receipts, ack));
            }
            Step::ResendLast => {
                if let Some((seq, receipts, ack)) = self.last.clone() {
                    prop_assert_eq!(self.submit(seq, &receipts)?, ack);
                }
            }
            Step::Funds {
                payer,
                funds,
                twice,
            } => {
                self.next_log += 1;
                let (kind, amount) = self.model.funds(payer, funds);
                let event = FundsEvent {
                    payer: self.payer(payer),
                    kind,
                    amount,
                    block: self.next_log / 3,
                    log_index: self.next_log % 3,
                };
                for _ in 0..if twice { 2 } else { 1 } {
                    wait(self.engine().funds(event).expect("queued")).map_err(fail)?;
                }
            }
            Step::Seal => {
                let sealed = wait(self.engine().seal_epoch().expect("queued")).map_err(fail)?;
                let mut debits = [0u128; PAYERS];
                for (payer, debit) in &sealed.debits {
                    debits[self.payer_index(payer)] = *debit;
                }
                let mut credits = [0u128; PAYEES];
                for (payee, credit) in &sealed.credits {
                    credits[self.payee_index(payee)] = *credit;
                }
                let leaves: BTreeSet<(usize, usize, u128)> = sealed
                    .leaves
                    .iter()
                    .map(|(payer, payee, cumulative)| {
                        (
                            self.payer_index(payer),
                            self.payee_index(payee),
                            *cumulative,
                        )
                    })
                    .collect();
                let model = self.model.seal();
                let model_leaves: BTreeSet<(usize, usize, u128)> = model
                    .leaves
                    .iter()
                    .map(|&(payer, payee)| {
                        (
                            payer,
                            payee,
                            self.model.channels[&(payer, payee)].cumulative,
                        )
                    })
                    .collect();
                prop_assert_eq!(sealed.epoch, model.number);
                prop_assert_eq!(debits, model.debits);
                prop_assert_eq!(credits, model.credits);
                prop_assert_eq!(leaves, model_leaves);
            }
            Step::Submit(pick) => {
                let sealed: Vec<usize> = (0..self.model.epochs.len())
                    .filter(|&i| self.model.epochs[i].status == EpochStatus::Sealed)
                    .collect();
                if !sealed.is_empty() {
                    let index = sealed[pick % sealed.len()];
                    self.record(index as u64 + 1, EpochStatus::Submitted)
                        .map_err(fail)?;
                    self.model.transition(index, EpochStatus::Submitted);
                }
            }
            Step::CommitOldest => {
                let oldest =
                    self.model.epochs.iter().position(|e| {
                        matches!(e.status, EpochStatus::Sealed | EpochStatus::Submitted)
                    });
                if let Some(index) = oldest {
                    self.record(index as u64 + 1, EpochStatus::Committed)
                        .map_err(fail)?;
                    self.model.transition(index, EpochStatus::Committed);
                }
            }
            Step::Dispute(pick) => {
                let open: Vec<usize> = (0..self.model.epochs.len())
                    .filter(|&i| self.model.epochs[i].status != EpochStatus::Disputed)
                    .collect();
                if !open.is_empty() {
                    let index = open[pick % open.len()];
                    let epoch = index as u64 + 1;
                    for _ in 0..2 {
                        self.record(epoch, EpochStatus::Disputed).map_err(fail)?;
                    }
                    self.model.transition(index, EpochStatus::Disputed);
                    // News of its commit arriving after the dispute is older than the dispute:
                    // accepted, and nothing moves (the totals compared after this step show it).
                    self.record(epoch, EpochStatus::Committed).map_err(fail)?;
                }
            }
            Step::Grant {
                session,
                cap,
                payee,
                expired,
            } => {
                let payer = &self.keys[SESSION_PAYER[session]];
                let grant = Grant {
                    domain: DOMAIN,
                    payer: payer_of(payer),
                    session: payer_of(&self.session_keys[session]),
                    nonce: 1,
                    cap,
                    allowance: None,
                    valid_from_ms: 0,
                    valid_until_ms: if expired { 1_000 } else { u64::MAX },
                    payees: payee
                        .map_or(PayeeScope::Any, |p| PayeeScope::Only(vec![self.payees[p]])),
                }
                .sign(payer)
                .check(&DOMAIN)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let expected = self.model.grant(
                    session,
                    ModelGrant {
                        cap,
                        payee,
                        expired,
                    },
                );
                let got = wait(self.engine().grant(grant).expect("queued"));
                prop_assert_eq!(refusal_name(got)?, expected.err());
            }
            Step::Revoke(session) => {
                let payer = &self.keys[SESSION_PAYER[session]];
                let revocation = Revocation {
                    domain: DOMAIN,
                    payer: payer_of(payer),
                    session: payer_of(&self.session_keys[session]),
                    revoked_at_ms: now_ms(),
                }
                .sign(payer)
                .check(&DOMAIN)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let expected = self.model.revoke(session);
                let got = wait(self.engine().revoke(revocation).expect("queued"));
                prop_assert_eq!(refusal_name(got)?, expected.err());
            }
            Step::Restart => {
                let engine = self.engine.take().expect("engine is open");
                engine.shutdown().map_err(fail)?;
                self.engine = Some(Self::open(self.dir.path()));
            }
            Step::Crash { batches, acks } => {
                let batches: Vec<_> = batches.iter().map(|specs| self.next_batch(specs)).collect();
                let engine = self.engine.take().expect("engine is open");
                engine.shutdown().map_err(fail)?;
                crash_after(
                    &CrashJob {
                        data_dir: self.dir.path().to_path_buf(),
                        window_nonces: WINDOW_NONCES as u32,
                        batches: batches
                            .iter()
                            .map(|(seq, receipts, _)| CrashBatch::new(1, *seq, receipts))
                            .collect(),
                    },
                    acks,
                );
                self.engine = Some(Self::open(self.dir.path()));
                // The client saw no ack: it re-sends every batch. Those the crashed process made
                // durable answer with their stored ack, the others are judged now; either way
                // each gets the ack the model gave it, and nothing counts twice.
                for (seq, receipts, expected) in batches {
                    let ack = self.submit(seq, &receipts)?;
                    prop_assert_eq!(&ack, &expected);
                    self.last = Some((seq, receipts, ack));
                }
            }
        }
        self.check()
    }

    /// Every total the engine reports equals the model's.
    fn check(&self) -> Result<(), TestCaseError> {
        self.model.check_conservation()?;
        let reader = self.engine().reader();
        for (index, model) in self.model.payers.iter().enumerate() {
            let balance = reader
                .payer(&self.payer(index))
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .unwrap_or_default();
            prop_assert_eq!(
                (
                    balance.deposited,
                    balance.withdrawal_requested,
                    balance.withdrawn,
                    balance.settled,
                    balance.pending,
                    balance.available
                ),
                (
                    model.deposited,
                    model.withdrawal_requested,
                    model.withdrawn,
                    model.settled,
                    model.pending,
                    model.available()
                ),
                "payer {}",
                index
            );
        }
        for (index, model) in self.model.payees.iter().enumerate() {
            let balance = reader
                .payee(&self.payees[index])
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .unwrap_or_default();
            prop_assert_eq!(
                (balance.credited, balance.settled),
                (model.credited, model.settled),
                "payee {}",
                index
            );
        }
        for payer in 0..PAYERS {
            for payee in 0..PAYEES {
                let got = reader
                    .channel(&self.payer(payer), &self.payees[payee])
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .map(|c| (c.cumulative, c.receipts, c.highest_nonce));
                let top = self
                    .model
                    .windows
                    .get(&(Signer::Payer(payer), payee))
                    .and_then(|w| w.top);
                let want = self
                    .model
                    .channels
                    .get(&(payer, payee))
                    .filter(|c| c.receipts > 0)
                    .map(|c| (c.cumulative, c.receipts, top));
                prop_assert_eq!(got, want, "channel {} -> {}", payer, payee);
            }
        }
        for (index, model) in self.model.sessions.iter().enumerate() {
            let held = reader
                .grant(&payer_of(&self.session_keys[index]))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got = held.map(|record| {
                let cap = u128::from(record.grant.grant.cap);
                prop_assert!(record.spent.total <= cap, "session {} over its cap", index);
                Ok((record.spent.total, record.revoked.is_some()))
            });
            let want = model.grant.map(|_| (model.spent, model.revoked));
            prop_assert_eq!(got.transpose()?, want, "session {}", index);
        }
        for epoch in &self.model.epochs {
            let status = reader
                .epoch(epoch.number)
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .map(|record| record.status);
            prop_assert_eq!(status, Some(epoch.status), "epoch {}", epoch.number);
        }
        Ok(())
    }
}

/// The stable name of a grant refusal, `None` for success; any other failure fails the case.
fn refusal_name(result: Result<(), EngineError>) -> Result<Option<&'static str>, TestCaseError> {
    match result {
        Ok(()) => Ok(None),
        Err(EngineError::Ledger(LedgerError::Grant(error))) => Ok(Some(error.name())),
        Err(other) => Err(TestCaseError::fail(other.to_string())),
    }
}

/// The child side of the crash steps (a no-op in a normal run).
#[test]
fn crash_child() {
    common::crash_child();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    })]

    #[test]
    fn ledger_totals_equal_the_model_after_every_step(
        steps in proptest::collection::vec(step(), 1..30),
    ) {
        let mut world = World::new();
        for step in steps {
            world.run(step)?;
        }
        if let Some(engine) = world.engine.take() {
            engine.shutdown().map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
    }
}
