//! Signature verification: one acceptance rule, a batch path that can never disagree with the
//! single path, and a dedicated rayon pool to run it on.
//!
//! - `rule`: the checks and the cofactored single equation (docs/VERIFICATION.md states the rule
//!   and why each case is accepted or refused).
//! - `batch`: the batch equation with payer keys coalesced, bisection on failure.
//! - `key_cache`: checked payer keys, decompressed once and kept in a bounded cache; refused keys
//!   in a bounded set of their own.
//! - [`VerifyPool`]: chunks a submission across a dedicated rayon pool; verdicts come back in
//!   input order.
//!
//! Nothing here blocks on I/O, and nothing here runs on tokio's threads: the pool's threads are its
//! own, except that the engine's verify stage verifies a call of a single chunk on its own
//! thread ([`VerifyPool::verify_clients_here`]). The bounded queue in front of the pool belongs
//! to `engine::pipeline`; a caller of [`VerifyPool::verify`] blocks until its receipts are done,
//! so work in flight is bounded by the number of callers.

mod batch;
mod key_cache;
mod rule;

use crate::telemetry as names;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use sha2::{Digest, Sha512};
use thiserror::Error;

use crate::receipt::{DOMAIN_BYTES, Domain, ReceiptView};
use crate::verdict::{Reason, Verdict};
use batch::{Candidate, Equations};
use key_cache::KeyCache;
use rule::{CheckedKey, Signed, check_key, equation_holds, prepare};

/// Receipts per batch equation unless configured otherwise. Measured (docs/BENCHMARKS.md):
/// past a few hundred receipts the multiscalar multiplication gains little per receipt, while
/// a failed batch costs bisection work in proportion to its size.
pub const BATCH_RECEIPTS_DEFAULT: usize = 256;
/// Checked payer keys remembered unless configured otherwise (about 200 bytes each, so at most
/// about 50 MiB). The cache's two generations always keep a working set of half this size: at
/// 131,072 a scan over 100,000 distinct payers thrashed it and verification fell to 0.7x
/// ed25519-dalek's (every key re-checked, a full scalar multiplication each).
pub const KEY_CACHE_KEYS_DEFAULT: usize = 262_144;
/// Refused payer keys remembered unless configured otherwise.
pub const REFUSED_KEYS_DEFAULT: usize = 65_536;

/// How verification is sized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyConfig {
    /// Threads in the [`VerifyPool`]. Default: every core the process may use. Callers of
    /// [`VerifyPool::verify_clients_here`] add to them.
    pub threads: usize,
    /// Receipts per batch equation; larger submissions are split into chunks of this size.
    pub batch_receipts_max: usize,
    /// Checked payer keys kept decompressed across batches.
    pub key_cache_keys_max: usize,
    /// Refused payer keys remembered so they are not checked again.
    pub refused_keys_max: usize,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, usize::from),
            batch_receipts_max: BATCH_RECEIPTS_DEFAULT,
            key_cache_keys_max: KEY_CACHE_KEYS_DEFAULT,
            refused_keys_max: REFUSED_KEYS_DEFAULT,
        }
    }
}

/// Why a [`VerifyPool`] could not be built.
#[derive(Debug, Error)]
pub enum VerifyError {
    /// `threads` is zero: a pool with no threads would never return.
    #[error("verify pool needs at least one thread")]
    NoThreads,
    /// `batch_receipts_max` is zero: receipts could never be chunked.
    #[error("batch_receipts_max must be at least 1")]
    EmptyBatch,
    /// The operating system refused to start the pool's threads.
    #[error("could not start the verify pool: {0}")]
    ThreadPool(#[from] rayon::ThreadPoolBuildError),
}

/// A signature over arbitrary bytes, checked under the same rule as receipts. For auditing the
/// rule against published test vectors (ed25519-speccheck) and for tools; receipts use
/// [`Verifier::verify_one`] and [`Verifier::verify_batch`], which hash in place.
#[derive(Clone, Copy, Debug)]
pub struct SignedMessage<'a> {
    /// The signer's public key, compressed.
    pub public_key: [u8; 32],
    /// `R ‖ S`.
    pub signature: [u8; 64],
    /// Every byte that was signed.
    pub message: &'a [u8],
}

impl Signed for SignedMessage<'_> {
    fn public_key(&self) -> [u8; 32] {
        self.public_key
    }
    fn signature(&self) -> [u8; 64] {
        self.signature
    }
    fn absorb_message(&self, _separator: &[u8], hasher: &mut Sha512) {
        hasher.update(self.message);
    }
}

impl Signed for ReceiptView<'_> {
    fn public_key(&self) -> [u8; 32] {
        self.payer().0
    }
    fn signature(&self) -> [u8; 64] {
        ReceiptView::signature(self)
    }
    fn absorb_message(&self, separator: &[u8], hasher: &mut Sha512) {
        hasher.update(separator);
        hasher.update(self.body());
    }
}

impl SignedMessage<'_> {
    /// The single path without a key cache, for records checked once each (grants,
    /// revocations): `Ok(())`, or `Err(BadPayerKey)` / `Err(BadSignature)`.
    pub fn verify(&self) -> Verdict {
        verify_under(self, &check_key(&self.public_key)?, &[])
    }
}

/// The key check of the acceptance rule alone: canonical, on the curve, prime order.
pub fn check_public_key(bytes: &[u8; 32]) -> Result<(), Reason> {
    check_key(bytes).map(drop)
}

/// The per-signature checks and the single equation under a checked key.
fn verify_under<T: Signed>(item: &T, key: &CheckedKey, separator: &[u8]) -> Verdict {
    let prepared = prepare(item, separator)?;
    if equation_holds(&prepared, key) {
        Ok(())
    } else {
        Err(Reason::BadSignature)
    }
}

/// Verifies receipts of one domain. Cheap to clone: clones share one key cache.
#[derive(Clone, Debug)]
pub struct Verifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    separator: [u8; DOMAIN_BYTES],
    batch_receipts_max: usize,
    keys: KeyCache,
}

impl Verifier {
    /// A verifier for receipts signed under `domain`. A zero `batch_receipts_max` is taken as 1
    /// ([`VerifyPool::new`] refuses it outright).
    pub fn new(domain: Domain, config: VerifyConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                separator: domain.separator(),
                batch_receipts_max: config.batch_receipts_max.max(1),
                keys: KeyCache::new(config.key_cache_keys_max, config.refused_keys_max),
            }),
        }
    }

    /// The single path: `Ok(())`, or `Err(BadPayerKey)` / `Err(BadSignature)`.
    pub fn verify_one(&self, receipt: &ReceiptView<'_>) -> Verdict {
        self.single(receipt, &self.inner.separator)
    }

    /// The batch path: one verdict per receipt, in order, equal to what [`Verifier::verify_one`]
    /// says of each. Runs on the calling thread, in chunks of `batch_receipts_max`.
    pub fn verify_batch(&self, receipts: &[ReceiptView<'_>]) -> Vec<Verdict> {
        let mut verdicts = vec![Ok(()); receipts.len()];
        let chunk = self.inner.batch_receipts_max;
        for (items, out) in receipts.chunks(chunk).zip(verdicts.chunks_mut(chunk)) {
            self.batch(items, &self.inner.separator, out);
        }
        verdicts
    }

    /// [`Verifier::verify_one`] for a signature over arbitrary bytes (no domain separator).
    pub fn verify_message(&self, message: &SignedMessage<'_>) -> Verdict {
        self.single(message, &[])
    }

    /// [`Verifier::verify_batch`] for signatures over arbitrary bytes (no domain separator).
    pub fn verify_messages(&self, messages: &[SignedMessage<'_>]) -> Vec<Verdict> {
        let mut verdicts = vec![Ok(()); messages.len()];
        let chunk = self.inner.batch_receipts_max;
        for (items, out) in messages.chunks(chunk).zip(verdicts.chunks_mut(chunk)) {
            self.batch(items, &[], out);
        }
        verdicts
    }

    /// Payer keys remembered: (accepted, refused).
    pub fn cached_keys(&self) -> (usize, usize) {
        self.inner.keys.len()
    }

    fn single<T: Signed>(&self, item: &T, separator: &[u8]) -> Verdict {
        verify_under(
            item,
            &self.inner.keys.get_or_check(&item.public_key())?,
            separator,
        )
    }

    /// One chunk: the same checks as `single`, in the same order, then one batch equation for
    /// everything that passed them. Returns the number of equations bisection needed.
    fn batch<T: Signed>(&self, items: &[T], separator: &[u8], verdicts: &mut [Verdict]) -> usize {
        debug_assert_eq!(items.len(), verdicts.len());
        let mut keys: Vec<CheckedKey> = Vec::new();
        let mut slots: HashMap<[u8; 32], Result<usize, Reason>> =
            HashMap::with_capacity(items.len());
        let mut candidates = Vec::with_capacity(items.len());
        for (index, (item, verdict)) in items.iter().zip(verdicts.iter_mut()).enumerate() {
            let key_bytes = item.public_key();
            let slot = *slots.entry(key_bytes).or_insert_with(|| {
                self.inner.keys.get_or_check(&key_bytes).map(|key| {
                    keys.push(key);
                    keys.len() - 1
                })
            });
            let candidate = slot.and_then(|key_slot| {
                prepare(item, separator).map(|prepared| Candidate {
                    index,
                    prepared,
                    key_slot,
                })
            });
            match candidate {
                Ok(candidate) => candidates.push(candidate),
                Err(reason) => *verdict = Err(reason),
            }
        }
        let mut equations = Equations::default();
        equations.settle(&candidates, &keys, verdicts);
        metrics::counter!(names::VERIFY_EQUATIONS_TOTAL).increment(equations.computed as u64);
        equations.computed
    }
}

/// A run of consecutive receipts that came from one client, for [`VerifyPool::verify_clients`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientSpan {
    /// The client the receipts came from.
    pub client_id: u64,
    /// How many consecutive receipts are its.
    pub receipts: usize,
}

/// The client [`VerifyPool::verify`] charges: callers that do not say whose receipts they are
/// share one adaptation state.
const UNNAMED_CLIENT: u64 = u64::MAX;

/// Clients whose chunk size is remembered while their batches fail. A client past this bound
/// keeps full chunks: since chunks never mix clients, forgetting it costs only that client.
const FAILING_CLIENTS_MAX: usize = 65_536;

/// A dedicated rayon pool running a [`Verifier`]. Never tokio's threads.
#[derive(Debug)]
pub struct VerifyPool {
    verifier: Verifier,
    pool: rayon::ThreadPool,
    batch_receipts_max: usize,
    /// Receipts per batch equation of each client whose batches have been failing (see
    /// [`VerifyPool::adapt`]); a client not here gets `batch_receipts_max`.
    failing: Mutex<HashMap<u64, usize>>,
}

/// Where a call that makes a single chunk is verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LoneChunk {
    Pool,
    Caller,
}

/// The smallest chunk [`VerifyPool::adapt`] shrinks to: below it the multiscalar multiplication
/// loses more per point than bisection saves.
const CHUNK_RECEIPTS_MIN: usize = 32;

impl VerifyPool {
    /// Starts `config.threads` threads named `tollgate-verify-N`.
    pub fn new(verifier: Verifier, config: VerifyConfig) -> Result<Self, VerifyError> {
        if config.threads == 0 {
            return Err(VerifyError::NoThreads);
        }
        if config.batch_receipts_max == 0 {
            return Err(VerifyError::EmptyBatch);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads)
            .thread_name(|index| format!("tollgate-verify-{index}"))
            .build()?;
        Ok(Self {
            verifier,
            pool,
            batch_receipts_max: config.batch_receipts_max,
            failing: Mutex::new(HashMap::new()),
        })
    }

    /// The verifier the pool runs.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Threads in the pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Receipts per batch equation the next [`VerifyPool::verify`] call starts with (see
    /// [`VerifyPool::adapt`]).
    pub fn chunk_receipts(&self) -> usize {
        self.client_chunk_receipts(UNNAMED_CLIENT)
    }

    /// Receipts per batch equation the next call starts with for `client_id`'s receipts.
    pub fn client_chunk_receipts(&self, client_id: u64) -> usize {
        self.failing_clients()
            .get(&client_id)
            .copied()
            .unwrap_or(self.batch_receipts_max)
    }

    /// Verifies `receipts` in chunks across the pool and returns one verdict per receipt, in
    /// input order, as if they all came from one client (see [`VerifyPool::verify_clients`]).
    pub fn verify(&self, receipts: &[ReceiptView<'_>]) -> Vec<Verdict> {
        self.verify_clients(
            receipts,
            &[ClientSpan {
                client_id: UNNAMED_CLIENT,
                receipts: receipts.len(),
            }],
        )
    }

    /// Verifies `receipts`, which `spans` divides into consecutive runs of one client each, in
    /// chunks across the pool, and returns one verdict per receipt in input order. A chunk (and
    /// so every batch equation and bisection step) holds one span's receipts only: a client's bad
    /// signatures make only its own equations fail, and each client's chunk size adapts to its
    /// own failures. Receipts past the last span are verified as one unnamed client's, so none
    /// is ever left unverified. The verdict vector is the only allocation that grows with the
    /// input: each chunk works in its own batch-sized scratch space. Verdicts never depend on
    /// the chunking: only the work does.
    pub fn verify_clients(
        &self,
        receipts: &[ReceiptView<'_>],
        spans: &[ClientSpan],
    ) -> Vec<Verdict> {
        self.verify_spans(receipts, spans, LoneChunk::Pool)
    }

    /// [`VerifyPool::verify_clients`] for a caller whose own thread may verify (the engine's
    /// verify stage, never tokio's threads): a call whose receipts make a single chunk runs on
    /// it. Handing one chunk to the pool costs two thread wake-ups, and the pool's threads spin
    /// and yield before they sleep again: 8% of a 2-core machine under x402's small groups of
    /// settles (docs/BENCHMARKS.md). Such calls add to the pool's threads.
    pub fn verify_clients_here(
        &self,
        receipts: &[ReceiptView<'_>],
        spans: &[ClientSpan],
    ) -> Vec<Verdict> {
        self.verify_spans(receipts, spans, LoneChunk::Caller)
    }

    fn verify_spans(
        &self,
        receipts: &[ReceiptView<'_>],
        spans: &[ClientSpan],
        lone_chunk: LoneChunk,
    ) -> Vec<Verdict> {
        let mut spans = spans.to_vec();
        let covered: usize = spans.iter().map(|span| span.receipts).sum();
        if covered < receipts.len() {
            spans.push(ClientSpan {
                client_id: UNNAMED_CLIENT,
                receipts: receipts.len() - covered,
            });
        }
        let chunks: Vec<usize> = {
            let failing = self.failing_clients();
            spans
                .iter()
                .map(|span| {
                    failing
                        .get(&span.client_id)
                        .copied()
                        .unwrap_or(self.batch_receipts_max)
                })
                .collect()
        };
        let failed: Vec<AtomicUsize> = spans.iter().map(|_| AtomicUsize::new(0)).collect();
        let mut verdicts = vec![Ok(()); receipts.len()];
        let separator = &self.verifier.inner.separator;
        // Every chunk of every span in one list, so the pool spreads all of them over its
        // threads as it did when chunks crossed batch boundaries.
        let mut work = Vec::new();
        let mut rest: (&[ReceiptView<'_>], &mut [Verdict]) = (receipts, &mut verdicts);
        for ((span, &chunk), failed) in spans.iter().zip(&chunks).zip(&failed) {
            let len = span.receipts.min(rest.0.len());
            let (items, items_rest) = rest.0.split_at(len);
            let (out, out_rest) = std::mem::take(&mut rest.1).split_at_mut(len);
            rest = (items_rest, out_rest);
            work.extend(
                items
                    .chunks(chunk)
                    .zip(out.chunks_mut(chunk))
                    .map(|(items, out)| (items, out, failed)),
            );
        }
        let verify_chunk =
            |(items, out, failed): (&[ReceiptView<'_>], &mut [Verdict], &AtomicUsize)| {
                // More than one equation: the chunk's own failed and bisection ran.
                if self.verifier.batch(items, separator, out) > 1 {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            };
        if work.len() == 1 && lone_chunk == LoneChunk::Caller {
            work.into_iter().for_each(verify_chunk);
        } else {
            self.pool
                .install(|| work.into_par_iter().for_each(verify_chunk));
        }
        let mut failing = self.failing_clients();
        for ((span, &chunk), failed) in spans.iter().zip(&chunks).zip(failed) {
            let chunks = span.receipts.div_ceil(chunk);
            self.adapt(
                &mut failing,
                span.client_id,
                chunk,
                chunks,
                failed.into_inner(),
            );
        }
        let smallest = failing.values().copied().min();
        metrics::gauge!(names::VERIFY_CHUNK_RECEIPTS)
            .set(smallest.unwrap_or(self.batch_receipts_max) as f64);
        metrics::gauge!(names::VERIFY_FAILING_CLIENTS).set(failing.len() as f64);
        verdicts
    }

    /// The failing clients' chunk sizes. Only the verify stage's thread calls in production, so
    /// the lock is uncontended; a poisoned lock only means a panic mid-update of sizes, which
    /// are advice, never verdicts.
    fn failing_clients(&self) -> std::sync::MutexGuard<'_, HashMap<u64, usize>> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Halves a client's chunk while most of its chunks fail, and returns it to
    /// `batch_receipts_max` once none do. With 1% bad signatures a 256-receipt chunk holds 2.6
    /// of them on average, almost every chunk fails, and bisection redoes about four chunks'
    /// worth of multiscalar work; at 64 about half of them fail and the extra work roughly
    /// halves. Per client, because this is also the bound on what one client's failures cost:
    /// a client that keeps failing is held at small chunks, where isolating each bad signature
    /// takes at most 2·log2(chunk) small equations over its own receipts, while every other
    /// client keeps the largest, fastest chunk. A client that stops failing recovers on its next
    /// clean call.
    fn adapt(
        &self,
        failing: &mut HashMap<u64, usize>,
        client_id: u64,
        chunk: usize,
        chunks: usize,
        failed: usize,
    ) {
        let next = if failed == 0 {
            self.batch_receipts_max
        } else if failed * 2 > chunks {
            (chunk / 2).max(CHUNK_RECEIPTS_MIN.min(self.batch_receipts_max))
        } else {
            chunk
        };
        if next == self.batch_receipts_max {
            failing.remove(&client_id);
        } else if failing.len() < FAILING_CLIENTS_MAX || failing.contains_key(&client_id) {
            failing.insert(client_id, next);
        }
    }
}

#[cfg(test)]
mod tests;
