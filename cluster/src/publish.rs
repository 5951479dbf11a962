//! The ingest node's half of the data path: verify a client batch, split it by partition,
//! publish each part to its partition's log, ask each part's owner for its verdicts, and put
//! them back together as the one ack the fleet would get from a standalone server.
//!
//! ```text
//! SubmitRequest ─▶ verify (VerifyPool, off the runtime) ─▶ split by partition_of(payer)
//!   ─▶ per part: publish tollgate.rx.<p> (Nats-Msg-Id) ─▶ seq ─▶ ask tollgate.ask.<p> ─▶ verdicts
//!   ─▶ merged BatchAck (indices of the original batch)
//! ```
//! The log is the durable point, but the fleet's ACK waits for every part's owner to have
//! written it, so an ACK means the same as in standalone mode: the receipts it accepts are
//! counted in a synced ledger. Verdicts come back by request and reply (`tollgate.ask.<p>`)
//! rather than on a per-node subject: an owner answers from its ledger, by the part's sequence
//! and batch number, so the same question works for a first publish, for a re-publish that the
//! log deduplicated (its owner never sees it again) and after either side restarted, and the
//! owner keeps no state per ingest node.
//!
//! Session-key receipts are refused here as [`Reason::NoGrant`]: the partition of a session
//! receipt is its granting payer's, which only the grant says, and grants do not travel through
//! the log yet, so no owner could hold one.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::BytesMut;
use futures::future::try_join_all;
use tokio::time::Instant;
use tollgate_engine::ledger::record::batch_digest;
use tollgate_engine::pipeline::{BatchAck, BatchOutcome, BatchVerifier, SubmitRequest};
use tollgate_engine::{Reason, ReceiptBatch, ReceiptView, Verdict};
use tracing::warn;

use crate::error::NatsError;
use crate::part::{Answer, Ask, BatchId, Part, Verdicts, ask_subject};
use crate::partition::{partition_of, subject_of};
use crate::resources::Cluster;

/// How long one ask waits for its answer before it is sent again: an owner that is catching up
/// answers late, one that died never does.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts when nobody answers or a publish fails.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How an owner's answer fails to fit the part it was asked about.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerProblem {
    #[error("it answers for log seq {answered}")]
    Sequence { answered: u64 },
    #[error("it acks batch {answered}")]
    BatchSeq { answered: u64 },
    #[error("it accepts {accepted} and rejects {rejected} of the part's {receipts} receipts")]
    Count {
        receipts: usize,
        accepted: u32,
        rejected: usize,
    },
    /// Out of the part, or not after the previous rejection's (each receipt is judged once).
    #[error("it rejects receipt {index} out of order or out of the part's {receipts}")]
    Index { index: u32, receipts: usize },
}

/// Why a batch has no ack. Every one leaves the batch safe to re-send: a re-send gets the same
/// parts, the same message ids and so the same verdicts.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A part's owner holds another batch under this batch's number.
    #[error(
        "batch {batch_seq} of producer {producer_id} (session {session_epoch}) was already used for other receipts"
    )]
    BatchMismatch {
        producer_id: u64,
        session_epoch: u64,
        batch_seq: u64,
    },
    /// A part's owner knows the producer at a later session epoch.
    #[error("producer {producer_id} is now at session epoch {current}")]
    SessionSuperseded { producer_id: u64, current: u64 },
    /// A part's owner no longer holds this batch's verdicts: re-published after the stream's
    /// duplicate window with `acks_kept_per_producer` newer batches since (applied once, its
    /// ack gone), or refused whole by an owner that restarted since (nothing charged).
    #[error("partition {partition} no longer holds the verdicts of batch {batch_seq}")]
    VerdictsGone { partition: u32, batch_seq: u64 },
    /// No verdict before the deadline: the part is in the log (or its publish failed) and will
    /// be applied when its partition has an owner; a re-send gets its verdicts then.
    #[error("partition {partition}: no verdicts within {waited:?}: {last}")]
    Timeout {
        partition: u32,
        waited: Duration,
        last: String,
    },
    /// The part's owner refused it whole (mis-split or unreadable, see the owner's log):
    /// nothing of it was charged.
    #[error("partition {partition} refused the part at log seq {seq}; nothing of it was charged")]
    PartRefused { partition: u32, seq: u64 },
    /// The owner's answer does not fit the part asked about: not trusted, nothing acked.
    #[error("partition {partition}: the answer for log seq {seq} does not fit the part: {problem}")]
    BadAnswer {
        partition: u32,
        seq: u64,
        problem: AnswerProblem,
    },
    /// The verifier's thread failed.
    #[error("verification failed: {0}")]
    Verify(String),
}

/// Verifies, splits, publishes and collects verdicts for client batches: what an ingest node
/// does with a SUBMIT in cluster mode. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    partitions: NonZeroU32,
    verifier: Arc<dyn BatchVerifier>,
    verdict_timeout: Duration,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("partitions", &self.partitions)
            .field("verdict_timeout", &self.verdict_timeout)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher on `cluster`'s connection that checks signatures with `verifier` and gives up
    /// on a batch's verdicts after `verdict_timeout`.
    pub fn new(
        cluster: &Cluster,
        verifier: Arc<dyn BatchVerifier>,
        verdict_timeout: Duration,
    ) -> Publisher {
        Publisher {
            client: cluster.jetstream().client(),
            jetstream: cluster.jetstream().clone(),
            partitions: cluster.partitions(),
            verifier,
            verdict_timeout,
        }
    }

    /// The batch's ack once every part's owner has written it: the same ack, receipt indices
    /// and all, that a standalone server gives.
    pub async fn submit(&self, request: SubmitRequest) -> Result<BatchAck, PublishError> {
        let deadline = Instant::now() + self.verdict_timeout;
        let batch = BatchId {
            client_id: request.client_id,
            producer_id: request.producer_id,
            session_epoch: request.session_epoch,
            batch_seq: request.batch_seq,
        };
        let verifier = Arc::clone(&self.verifier);
        let partitions = self.partitions;
        let receipts = request.receipts.clone();
        let prejudged = request.prejudged.clone();
        let (rejections, parts) = tokio::task::spawn_blocking(move || {
            split(verifier.as_ref(), &receipts, &prejudged, partitions)
        })
        .await
        .map_err(|error| PublishError::Verify(error.to_string()))?;
        let published_ms = now_ms();
        let answers = try_join_all(parts.into_iter().map(|(partition, cut)| {
            let part = Part {
                partition,
                batch,
                published_ms,
                receipts: cut.receipts,
            };
            async move {
                let ack = self.verdicts(&part, deadline).await?;
                Ok::<_, PublishError>((cut.indices, ack))
            }
        }))
        .await?;
        Ok(merge(request.batch_seq, rejections, answers))
    }

    /// Publishes `part` (again, if it was before: the log keeps it once) and asks its owner for
    /// its verdicts until they come or `deadline` passes.
    async fn verdicts(&self, part: &Part, deadline: Instant) -> Result<BatchAck, PublishError> {
        let partition = part.partition;
        let timeout = |last: String| PublishError::Timeout {
            partition,
            waited: self.verdict_timeout,
            last,
        };
        let message_id = part.batch.message_id(partition);
        let payload = part.encode();
        let seq = loop {
            let published = async {
                let message = PublishMessage::build()
                    .message_id(&message_id)
                    .payload(payload.clone());
                let ack = self
                    .jetstream
                    .send_publish(subject_of(partition), message)
                    .await?
                    .await?;
                Ok::<u64, NatsError>(ack.sequence)
            };
            // Bounded by the batch's deadline, not by the client's own publish-ack timeout (30 s
            // by default, and its wait for a free ack slot has none): a batch is answered or
            // refused within its verdict timeout. A publish that lands after all is kept once
            // by its message id when the client re-sends.
            let published = match tokio::time::timeout_at(deadline, published).await {
                Ok(published) => published,
                Err(_) => return Err(timeout("publish: no ack before the deadline".into())),
            };
            match published {
                Ok(seq) => break seq,
                Err(error) if Instant::now() + RETRY_PAUSE < deadline => {
                    warn!(partition, %error, "publish failed, retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(error) => return Err(timeout(format!("publish: {error}"))),
            }
        };
        let ask = Ask {
            seq,
            digest: batch_digest(&part.receipts),
        }
        .encode();
        loop {
            let wait = ASK_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
            let answer = tokio::time::timeout(
                wait,
                self.client.request(ask_subject(partition), ask.clone()),
            )
            .await;
            let last = match answer {
                Ok(Ok(message)) => match Answer::decode(&message.payload) {
                    Ok(answer) => return fitting(part, seq, answer),
                    Err(error) => error.to_string(),
                },
                // No owner yet (no responders) or the request failed.
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {wait:?}"),
            };
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(timeout(last));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// The part's ack from its owner's `answer` to the ask for log seq `seq`, once the answer is
/// checked to fit the part: it answers that seq, acks the part's batch number, and judges each
/// of the part's receipts exactly once (rejections in order, within the part; accepted plus
/// rejected is the part's size). So [`merge`] maps every rejection to a receipt of the batch.
fn fitting(part: &Part, seq: u64, answer: Answer) -> Result<BatchAck, PublishError> {
    let BatchId {
        producer_id,
        session_epoch,
        batch_seq,
        ..
    } = part.batch;
    let partition = part.partition;
    let bad = |problem| PublishError::BadAnswer {
        partition,
        seq,
        problem,
    };
    if answer.seq != seq {
        return Err(bad(AnswerProblem::Sequence {
            answered: answer.seq,
        }));
    }
    let outcome = match answer.verdicts {
        Verdicts::Ledger(outcome) => outcome,
        Verdicts::Refused => return Err(PublishError::PartRefused { partition, seq }),
    };
    let ack = match outcome {
        BatchOutcome::Acked(ack) => ack,
        BatchOutcome::Mismatch => {
            return Err(PublishError::BatchMismatch {
                producer_id,
                session_epoch,
                batch_seq,
            });
        }
        BatchOutcome::Superseded { current } => {
            return Err(PublishError::SessionSuperseded {
                producer_id,
                current,
            });
        }
        BatchOutcome::Unknown => {
            return Err(PublishError::VerdictsGone {
                partition,
                batch_seq,
            });
        }
    };
    if ack.batch_seq != batch_seq {
        return Err(bad(AnswerProblem::BatchSeq {
            answered: ack.batch_seq,
        }));
    }
    let receipts = part.receipts.len();
    let judged = usize::try_from(ack.accepted)
        .ok()
        .and_then(|accepted| accepted.checked_add(ack.rejections.len()));
    if judged != Some(receipts) {
        return Err(bad(AnswerProblem::Count {
            receipts,
            accepted: ack.accepted,
            rejected: ack.rejections.len(),
        }));
    }
    let mut next = 0usize;
    for (index, _) in &ack.rejections {
        let at = usize::try_from(*index).unwrap_or(usize::MAX);
        if at < next || at >= receipts {
            return Err(bad(AnswerProblem::Index {
                index: *index,
                receipts,
            }));
        }
        next = at + 1;
    }
    Ok(ack)
}

/// The receipts of one partition cut from a batch, with their indices in the batch.
#[derive(Debug)]
struct Cut {
    indices: Vec<u32>,
    receipts: ReceiptBatch,
}

/// Judges what the ingest node can (prejudged, malformed, signatures, session receipts) and
/// cuts the rest into one part per partition, in batch order. The same batch always gives the
/// same rejections and parts, so a re-send publishes each part under the same message id (with
/// its own publish time: the log keeps the first within the duplicate window).
fn split(
    verifier: &dyn BatchVerifier,
    receipts: &ReceiptBatch,
    prejudged: &[(u32, Reason)],
    partitions: NonZeroU32,
) -> (Vec<(u32, Reason)>, BTreeMap<u32, Cut>) {
    let mut verdicts: Vec<Option<Verdict>> = vec![None; receipts.len()];
    for (index, reason) in prejudged {
        if let Some(slot) = verdicts.get_mut(*index as usize) {
            *slot = Some(Err(*reason));
        }
    }
    let mut views: Vec<(usize, ReceiptView<'_>)> = Vec::with_capacity(receipts.len());
    for (index, record) in receipts.iter().enumerate() {
        match (record, verdicts[index].is_some()) {
            (_, true) => {}
            (Ok(view), false) => views.push((index, view)),
            (Err(_), false) => verdicts[index] = Some(Err(Reason::Malformed)),
        }
    }
    let checked: Vec<ReceiptView<'_>> = views.iter().map(|(_, view)| *view).collect();
    let signatures = verifier.verify(&checked);
    let mut rejections = Vec::new();
    let mut cuts: BTreeMap<u32, (Vec<u32>, BytesMut)> = BTreeMap::new();
    let mut judged = views.iter().zip(
        signatures
            .into_iter()
            .map(Some)
            .chain(std::iter::repeat(None)),
    );
    for (index, verdict) in verdicts.iter().enumerate() {
        // Batches hold at most u32::MAX receipts (the wire's count field).
        let at = u32::try_from(index).unwrap_or(u32::MAX);
        if let Some(Err(reason)) = verdict {
            rejections.push((at, *reason));
            continue;
        }
        let Some(((_, view), signature)) = judged.next() else {
            break;
        };
        // A verifier that answered fewer verdicts than receipts charges nobody for the rest.
        match signature.unwrap_or(Err(Reason::BadSignature)) {
            Err(reason) => rejections.push((at, reason)),
            Ok(()) if view.is_session() => rejections.push((at, Reason::NoGrant)),
            Ok(()) => {
                let (indices, bytes) = cuts
                    .entry(partition_of(&view.payer(), partitions))
                    .or_default();
                indices.push(at);
                bytes.extend_from_slice(view.as_bytes());
            }
        }
    }
    let cuts = cuts
        .into_iter()
        .filter_map(|(partition, (indices, bytes))| {
            let receipts = ReceiptBatch::new(bytes.freeze()).ok()?;
            Some((partition, Cut { indices, receipts }))
        })
        .collect();
    (rejections, cuts)
}

/// One ack for the whole batch: the ingest node's rejections and each part's, with each part's
/// indices mapped back to the batch's, sorted by index like a standalone ack. Each part's ack
/// was checked to fit it ([`fitting`]): every rejection names one of the part's receipts, and
/// the parts' accepted receipts are disjoint pieces of one batch, whose count is a u32.
fn merge(
    batch_seq: u64,
    mut rejections: Vec<(u32, Reason)>,
    parts: Vec<(Vec<u32>, BatchAck)>,
) -> BatchAck {
    let mut accepted = 0u32;
    for (indices, ack) in parts {
        accepted = accepted.saturating_add(ack.accepted);
        rejections.extend(ack.rejections.into_iter().filter_map(|(index, reason)| {
            Some((*indices.get(usize::try_from(index).ok()?)?, reason))
        }));
    }
    rejections.sort_unstable_by_key(|(index, _)| *index);
    BatchAck {
        batch_seq,
        accepted,
        rejections,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use tollgate_engine::{Address, Domain, PayerKey, Receipt, UnsignedReceipt, Verifier};
    use tollgate_engine::{VerifyConfig, VerifyPool};

    const DOMAIN: Domain = Domain {
        chain_id: 31_337,
        contract: Address([0xc0; 20]),
    };

    fn signed(seed: u8, nonce: u64, session: bool) -> Receipt {
        let key = SigningKey::from_bytes(&[seed; 32]);
        UnsignedReceipt {
            payer: PayerKey(key.verifying_key().to_bytes()),
            payee: Address([1; 20]),
            amount: 5,
            nonce,
            timestamp_ms: 1,
            request_hash: [2; 32],
            session,
        }
        .sign(&key, &DOMAIN)
    }

    #[test]
    fn split_judges_what_ingest_can_and_merge_restores_the_batch_indices() {
        let config = VerifyConfig {
            threads: 1,
            ..VerifyConfig::default()
        };
        let pool = VerifyPool::new(Verifier::new(DOMAIN, config.clone()), config).expect("pool");
        let mut forged = signed(3, 1, false);
        forged.amount += 1;
        let receipts = [
            signed(1, 1, false), // 0 to its payer's partition
            forged,              // 1 bad signature
            signed(2, 1, false), // 2 prejudged (payee not allowed)
            signed(4, 1, true),  // 3 session key: no grant in cluster mode
            signed(5, 1, false), // 4
            signed(1, 2, false), // 5 same payer as 0
        ];
        let mut bytes = BytesMut::new();
        for receipt in &receipts {
            bytes.extend_from_slice(&receipt.to_bytes());
        }
        bytes.extend_from_slice(&[0xff; 176]); // 6 malformed
        let batch = ReceiptBatch::new(bytes.freeze()).expect("whole records");
        let partitions = NonZeroU32::new(4).expect("non-zero");
        let (rejections, cuts) = split(&pool, &batch, &[(2, Reason::PayeeNotAllowed)], partitions);
        assert_eq!(
            rejections,
            vec![
                (1, Reason::BadSignature),
                (2, Reason::PayeeNotAllowed),
                (3, Reason::NoGrant),
                (6, Reason::Malformed),
            ]
        );
        let mut placed: Vec<u32> = cuts.values().flat_map(|cut| cut.indices.clone()).collect();
        placed.sort_unstable();
        assert_eq!(placed, vec![0, 4, 5]);
        for (partition, cut) in &cuts {
            assert_eq!(cut.receipts.len(), cut.indices.len());
            for (record, index) in cut.receipts.iter().zip(&cut.indices) {
                let view = record.expect("whole receipt");
                assert_eq!(partition_of(&view.payer(), partitions), *partition);
                assert_eq!(view.as_bytes(), &receipts[*index as usize].to_bytes());
            }
        }

        // Each part's owner rejects its second receipt (if any): mapped back to the batch.
        let parts = cuts
            .into_values()
            .map(|cut| {
                let rejections = if cut.indices.len() > 1 {
                    vec![(1, Reason::Duplicate)]
                } else {
                    Vec::new()
                };
                let accepted = 1;
                let second = cut.indices.get(1).copied();
                (
                    cut.indices,
                    BatchAck {
                        batch_seq: 9,
                        accepted,
                        rejections,
                    },
                    second,
                )
            })
            .collect::<Vec<_>>();
        let duplicate = parts.iter().find_map(|(_, _, second)| *second);
        let merged = merge(
            9,
            rejections.clone(),
            parts
                .into_iter()
                .map(|(indices, ack, _)| (indices, ack))
                .collect(),
        );
        let mut expected = rejections;
        if let Some(index) = duplicate {
            expected.push((index, Reason::Duplicate));
            expected.sort_unstable_by_key(|(index, _)| *index);
        }
        assert_eq!(merged.rejections, expected);
        assert_eq!(merged.batch_seq, 9);
    }
}
