//! The verify stage: the thread between `submit` and the ledger writer that groups queued
//! batches, verifies their signatures in one call, and hands them on in submission order.

use crossbeam_channel::{Receiver, Sender};

use super::{BatchVerifier, ClientSpan, EngineError, Signatures, SubmitRequest, VerifyMsg};
use crate::ledger::state::SessionId;
use crate::ledger::writer::WriterMsg;
use crate::telemetry as names;
use crate::verdict::{Reason, Verdict};

/// Most queued batches verified together: enough chunks to keep a small pool busy, few enough
/// that the first batch of a group does not wait long for the last. Measured on 2 cores
/// (docs/BENCHMARKS.md), p99 ack latency at 80% load: 32-39 ms with 4, 45-57 ms with 8, 63 ms
/// with 16, 84 ms with 64; full speed with 4 is about 6% below 8, a trade taken for the
/// latency target.
const VERIFY_GROUP_BATCHES_MAX: usize = 4;

/// The verify stage. It takes every batch already queued (up to a bound) and verifies them in
/// one call, so the pool spreads their receipts over all its threads: one client batch is often
/// a single batch equation, which alone would keep one core busy and leave the others idle. A
/// lone batch goes at once, so a quiet server adds no latency. Results leave in submission order.
pub(super) fn verify_stage(
    verifier: &dyn BatchVerifier,
    requests: Receiver<VerifyMsg>,
    verified: Sender<WriterMsg<EngineError>>,
) {
    let mut group = Vec::with_capacity(VERIFY_GROUP_BATCHES_MAX);
    let mut stopping = false;
    while !stopping {
        let Ok(first) = requests.recv() else { return };
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                VerifyMsg::Batch(request, digest, signatures, log, reply) => {
                    group.push((request, digest, signatures, log, reply));
                }
                VerifyMsg::Shutdown => stopping = true,
            }
            if !stopping && group.len() < VERIFY_GROUP_BATCHES_MAX {
                next = requests.try_recv().ok();
            }
        }
        metrics::gauge!(names::VERIFY_QUEUE_BATCHES).set(requests.len() as f64);
        let requests_in_group: Vec<(&SubmitRequest, Signatures)> =
            group.iter().map(|(r, _, s, _, _)| (r, *s)).collect();
        let started = std::time::Instant::now();
        let verdicts = group_verdicts(verifier, &requests_in_group);
        metrics::histogram!(names::VERIFY_SECONDS).record(started.elapsed());
        for ((request, digest, _, log, reply), verdicts) in group.drain(..).zip(verdicts) {
            let msg = WriterMsg::Batch {
                session: SessionId {
                    client_id: request.client_id,
                    producer_id: request.producer_id,
                    session_epoch: request.session_epoch,
                    batch_seq: request.batch_seq,
                },
                digest,
                receipts: request.receipts,
                verdicts,
                log,
                reply,
            };
            if verified.send(msg).is_err() {
                return;
            }
        }
        metrics::gauge!(names::LEDGER_QUEUE_BATCHES).set(verified.len() as f64);
    }
    drop(verified.send(WriterMsg::Shutdown));
}

/// One verdict per record of each request: prejudged reasons, `Malformed` for records that do
/// not parse, and the verifier's verdict for the rest (unless the caller checked them), from a
/// single call over the whole group, each client's receipts in a span of their own.
pub(super) fn group_verdicts(
    verifier: &dyn BatchVerifier,
    requests: &[(&SubmitRequest, Signatures)],
) -> Vec<Vec<Verdict>> {
    let mut verdicts: Vec<Vec<Verdict>> = requests
        .iter()
        .map(|(request, _)| {
            let mut verdicts: Vec<Verdict> = vec![Ok(()); request.receipts.len()];
            for &(index, reason) in &request.prejudged {
                if let Some(verdict) = verdicts.get_mut(index as usize) {
                    *verdict = Err(reason);
                }
            }
            verdicts
        })
        .collect();
    // Each client's receipts side by side (batches in submission order within a client), so
    // the verifier can keep every batch equation within one client.
    let mut by_client: Vec<usize> = (0..requests.len()).collect();
    by_client.sort_by_key(|&batch| requests[batch].0.client_id);
    let mut views = Vec::new();
    let mut positions = Vec::new();
    let mut spans: Vec<ClientSpan> = Vec::new();
    for batch in by_client {
        let (request, signatures) = &requests[batch];
        let before = views.len();
        for (index, record) in request.receipts.iter().enumerate() {
            if verdicts[batch][index].is_err() {
                continue;
            }
            match record {
                Ok(_) if *signatures == Signatures::CheckedByCaller => {}
                Ok(view) => {
                    views.push(view);
                    positions.push((batch, index));
                }
                Err(_) => verdicts[batch][index] = Err(Reason::Malformed),
            }
        }
        let added = views.len() - before;
        match spans.last_mut() {
            Some(span) if span.client_id == request.client_id => span.receipts += added,
            _ if added == 0 => {}
            _ => spans.push(ClientSpan {
                client_id: request.client_id,
                receipts: added,
            }),
        }
    }
    if views.is_empty() {
        return verdicts;
    }
    let checked = verifier.verify_clients(&views, &spans);
    if checked.len() != views.len() {
        // A verifier that answers for the wrong number of receipts cannot be trusted on any:
        // nobody is charged on its word.
        tracing::error!(
            expected = views.len(),
            got = checked.len(),
            "verifier returned the wrong number of verdicts; rejecting the group's signatures"
        );
        for (batch, index) in positions {
            verdicts[batch][index] = Err(Reason::BadSignature);
        }
        return verdicts;
    }
    for ((batch, index), verdict) in positions.into_iter().zip(checked) {
        verdicts[batch][index] = verdict;
    }
    verdicts
}
