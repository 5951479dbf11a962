//! The auditor: random sequences of receipt batches (duplicates, nonces reordered inside the
//! window, stale nonces, overdrafts, timestamp skew, bad signatures), re-sent batches, deposits
//! (some delivered twice), seals, commits and restarts on the same directory. After every step
//! the engine's acks and every total it reports equal a plain in-memory model's.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use common::*;
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use tollgate_engine::pipeline::{
    BatchAck, Engine, EngineConfig, EpochStatus, EpochUpdate, FundsEvent, FundsKind,
};
use tollgate_engine::{Address, PayerKey, Reason, Receipt};

const WINDOW_NONCES: u64 = 128;
const PAYERS: usize = 3;
const PAYEES: usize = 2;

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
    payee: usize,
    amount: u64,
    nonce: Nonce,
    clock: Clock,
    tampered: bool,
}

#[derive(Clone, Debug)]
enum Step {
    Batch(Vec<Spec>),
    ResendLast,
    Deposit {
        payer: usize,
        amount: u128,
        twice: bool,
    },
    Seal,
    CommitOldest,
    Restart,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0..PAYERS,
        0..PAYEES,
        0u64..80,
        prop_oneof![
            3 => (1u64..4).prop_map(Nonce::Above),
            3 => (0u64..WINDOW_NONCES + 80).prop_map(Nonce::Below),
        ],
        prop_oneof![8 => Just(Clock::Now), 1 => Just(Clock::Future), 1 => Just(Clock::Past)],
        proptest::bool::weighted(0.08),
    )
        .prop_map(|(payer, payee, amount, nonce, clock, tampered)| Spec {
            payer,
            payee,
            amount,
            nonce,
            clock,
            tampered,
        })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => proptest::collection::vec(spec(), 0..12).prop_map(Step::Batch),
        1 => Just(Step::ResendLast),
        3 => (0..PAYERS, 0u128..150, proptest::bool::weighted(0.2))
            .prop_map(|(payer, amount, twice)| Step::Deposit { payer, amount, twice }),
        1 => Just(Step::Seal),
        1 => Just(Step::CommitOldest),
        1 => Just(Step::Restart),
    ]
}

#[derive(Default, Clone)]
struct ModelChannel {
    top: Option<u64>,
    seen: BTreeSet<u64>,
    cumulative: u128,
    receipts: u64,
}

#[derive(Default, Clone, Copy, Debug, PartialEq)]
struct ModelPayer {
    deposited: u128,
    settled: u128,
    pending: u128,
    unsealed: u128,
}

#[derive(Default)]
struct Model {
    channels: BTreeMap<(usize, usize), ModelChannel>,
    payers: [ModelPayer; PAYERS],
    credited: [u128; PAYEES],
    /// Sealed epochs not yet committed, oldest first: (epoch, debit per payer).
    sealed: VecDeque<(u64, [u128; PAYERS])>,
    next_epoch: u64,
}

impl Model {
    fn nonce(&self, spec: &Spec) -> u64 {
        let top = self
            .channels
            .get(&(spec.payer, spec.payee))
            .and_then(|c| c.top);
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
        let payer = self.payers[spec.payer];
        if payer.deposited == 0 {
            return Err(Reason::UnknownPayer);
        }
        let channel = self.channels.entry((spec.payer, spec.payee)).or_default();
        if let Some(top) = channel.top
            && nonce <= top
            && top - nonce >= WINDOW_NONCES
        {
            return Err(Reason::Stale);
        }
        if channel.seen.contains(&nonce) {
            return Err(Reason::Duplicate);
        }
        let amount = u128::from(spec.amount);
        let available = payer.deposited - payer.settled - payer.pending;
        if amount > available {
            return Err(Reason::InsufficientFunds);
        }
        channel.seen.insert(nonce);
        channel.top = Some(channel.top.map_or(nonce, |t| t.max(nonce)));
        channel.cumulative += amount;
        channel.receipts += 1;
        let payer = &mut self.payers[spec.payer];
        payer.pending += amount;
        payer.unsealed += amount;
        self.credited[spec.payee] += amount;
        Ok(())
    }
}

struct World {
    keys: Vec<SigningKey>,
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
            payees: (0..PAYEES as u8).map(|i| payee(i + 1)).collect(),
            dir,
            engine,
            model: Model {
                next_epoch: 1,
                ..Model::default()
            },
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

    fn run(&mut self, step: Step) -> Result<(), TestCaseError> {
        match step {
            Step::Batch(specs) => {
                let now = now_ms();
                let mut receipts = Vec::new();
                let mut expected = BatchAck {
                    batch_seq: self.next_seq,
                    ..BatchAck::default()
                };
                for (index, spec) in specs.iter().enumerate() {
                    let nonce = self.model.nonce(spec);
                    let timestamp = match spec.clock {
                        Clock::Now => now,
                        Clock::Future => now + 3_600_000,
                        Clock::Past => now - 3_600_000,
                    };
                    let mut receipt = receipt_at(
                        &self.keys[spec.payer],
                        self.payees[spec.payee],
                        spec.amount,
                        nonce,
                        timestamp,
                    );
                    if spec.tampered {
                        receipt.amount += 1;
                    }
                    receipts.push(receipt);
                    match self.model.apply(spec, nonce) {
                        Ok(()) => expected.accepted += 1,
                        Err(reason) => expected.rejections.push((index as u32, reason)),
                    }
                }
                let ack = submit(self.engine(), request(1, self.next_seq, &receipts))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&ack, &expected);
                self.last = Some((self.next_seq, receipts, ack));
                self.next_seq += 1;
            }
            Step::ResendLast => {
                if let Some((seq, receipts, ack)) = self.last.clone() {
                    let again = submit(self.engine(), request(1, seq, &receipts))
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(again, ack);
                }
            }
            Step::Deposit {
                payer,
                amount,
                twice,
            } => {
                self.next_log += 1;
                let event = FundsEvent {
                    payer: self.payer(payer),
                    kind: FundsKind::Deposit,
                    amount,
                    block: self.next_log / 3,
                    log_index: self.next_log % 3,
                };
                for _ in 0..if twice { 2 } else { 1 } {
                    wait(self.engine().funds(event).expect("queued"))
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                self.model.payers[payer].deposited += amount;
            }
            Step::Seal => {
                let sealed = wait(self.engine().seal_epoch().expect("queued"))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(sealed.epoch, self.model.next_epoch);
                let mut debits = [0u128; PAYERS];
                for (i, payer) in self.model.payers.iter_mut().enumerate() {
                    debits[i] = std::mem::take(&mut payer.unsealed);
                }
                let mut got = [0u128; PAYERS];
                for (payer, debit) in &sealed.debits {
                    let index = (0..PAYERS)
                        .find(|i| payer_of(&self.keys[*i]) == *payer)
                        .expect("a known payer");
                    got[index] = *debit;
                }
                prop_assert_eq!(got, debits);
                self.model.sealed.push_back((sealed.epoch, debits));
                self.model.next_epoch += 1;
            }
            Step::CommitOldest => {
                if let Some((epoch, debits)) = self.model.sealed.pop_front() {
                    wait(
                        self.engine()
                            .record_epoch(EpochUpdate {
                                epoch,
                                status: EpochStatus::Committed,
                                root: Some([1; 32]),
                                tx_hash: None,
                                block: None,
                            })
                            .expect("queued"),
                    )
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    for (payer, debit) in self.model.payers.iter_mut().zip(debits) {
                        payer.pending -= debit;
                        payer.settled += debit;
                    }
                }
            }
            Step::Restart => {
                let engine = self.engine.take().expect("engine is open");
                engine
                    .shutdown()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                self.engine = Some(Self::open(self.dir.path()));
            }
        }
        self.check()
    }

    /// Every total the engine reports equals the model's.
    fn check(&self) -> Result<(), TestCaseError> {
        let reader = self.engine().reader();
        for (index, model) in self.model.payers.iter().enumerate() {
            let balance = reader
                .payer(&self.payer(index))
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .unwrap_or_default();
            prop_assert_eq!(
                (
                    balance.deposited,
                    balance.settled,
                    balance.pending,
                    balance.available
                ),
                (
                    model.deposited,
                    model.settled,
                    model.pending,
                    model.deposited - model.settled - model.pending
                ),
                "payer {}",
                index
            );
        }
        for (index, credited) in self.model.credited.iter().enumerate() {
            let balance = reader
                .payee(&self.payees[index])
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .unwrap_or_default();
            prop_assert_eq!(balance.credited, *credited, "payee {}", index);
        }
        for payer in 0..PAYERS {
            for payee in 0..PAYEES {
                let got = reader
                    .channel(&self.payer(payer), &self.payees[payee])
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .map(|c| (c.cumulative, c.receipts, c.highest_nonce));
                let want = self
                    .model
                    .channels
                    .get(&(payer, payee))
                    .filter(|c| c.receipts > 0)
                    .map(|c| (c.cumulative, c.receipts, c.top));
                prop_assert_eq!(got, want, "channel {} -> {}", payer, payee);
            }
        }
        Ok(())
    }
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
