//! The verify stage: between `submit` and the ledger writer, it groups queued batches, verifies
//! each group's signatures in one call, two groups at a time, and hands them on in submission
//! order.

use std::collections::VecDeque;

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, bounded};

use super::{
    BatchVerifier, ClientSpan, EngineError, QueuedBatch, Signatures, SubmitRequest, VerifyMsg,
};
use crate::ledger::state::SessionId;
use crate::ledger::writer::WriterMsg;
use crate::telemetry as names;
use crate::verdict::{Reason, Verdict};

/// A group takes queued batches until it holds this many and [`GROUP_RECEIPTS`] receipts:
/// enough chunks to keep a small pool busy, few enough that the first batch of a group does not
/// wait long for the last. Measured on 2 cores with batches of 256 (docs/BENCHMARKS.md), p99 ack
/// latency at 80% load: 32-39 ms with 4, 45-57 ms with 8, 63 ms with 16, 84 ms with 64; full
/// speed with 4 is about 6% below 8, a trade taken for the latency target.
const GROUP_BATCHES: usize = 4;

/// What the latency above depends on is the receipts a group verifies, not its batches: four
/// batches of the load generator's 256. Smaller batches (x402's one-receipt settles) fill a
/// group up to as many receipts, so their signatures share batch equations and their writes
/// share an fsync.
const GROUP_RECEIPTS: usize = 4 * 256;

/// Groups verified at once. With one, the pool waited for a group's slowest chunk at the end of
/// every group, one core idle; with two, the next group's chunks fill that gap (rayon runs a
/// call's chunks before it takes the next call from its queue, so the older group still ends
/// first). Measured in docs/BENCHMARKS.md, "Two groups in flight".
const GROUPS_IN_FLIGHT: usize = 2;

/// Batches verified in one call, in submission order.
type Group = Vec<QueuedBatch>;

/// A group and one verdict per record of each of its batches.
struct Verified {
    group: Group,
    verdicts: Vec<Vec<Verdict>>,
}

/// The verify stage. Its thread takes every batch already queued (up to a bound) as a group and
/// gives it to one of [`GROUPS_IN_FLIGHT`] verifying threads, which verifies the group in one
/// call so the pool spreads its receipts over all its threads: one client batch is often a single
/// batch equation, which alone would keep one core busy and leave the others idle. A lone batch
/// goes at once, so a quiet server adds no latency. Groups are handed to the writer oldest
/// first, each when it and every group before it are verified. True when it told the writer to
/// stop, after handing on every batch submitted before [`VerifyMsg::Shutdown`].
pub(super) fn verify_stage(
    verifier: &dyn BatchVerifier,
    requests: Receiver<VerifyMsg>,
    verified: Sender<WriterMsg<EngineError>>,
) -> bool {
    let (jobs, jobs_rx) = bounded::<(Group, Sender<Verified>)>(GROUPS_IN_FLIGHT);
    std::thread::scope(|scope| {
        for lane in 1..=GROUPS_IN_FLIGHT {
            let jobs = &jobs_rx;
            let spawned = std::thread::Builder::new()
                .name(format!("tollgate-stage{lane}"))
                .spawn_scoped(scope, move || verify_groups(verifier, jobs));
            if let Err(error) = spawned {
                // Nothing may verify a batch: closing the queue makes `submit` say so.
                tracing::error!(%error, "cannot start a verify stage thread");
                return false;
            }
        }
        let stopped =
            take_groups(&requests, &jobs, &verified) && verified.send(WriterMsg::Shutdown).is_ok();
        // The verifying threads end when `jobs` closes, before the scope waits for them.
        drop(jobs);
        stopped
    })
}

/// Forms groups and hands them on in order until the queue closes or asks to stop, then hands on
/// the groups still verifying. True when it stopped on [`VerifyMsg::Shutdown`] with every group
/// before it handed on; false when the queue closed, the writer is gone or a verifying thread
/// died.
fn take_groups(
    requests: &Receiver<VerifyMsg>,
    jobs: &Sender<(Group, Sender<Verified>)>,
    verified: &Sender<WriterMsg<EngineError>>,
) -> bool {
    let mut in_flight: VecDeque<Receiver<Verified>> = VecDeque::with_capacity(GROUPS_IN_FLIGHT);
    let mut stopping = false;
    let mut closed = false;
    loop {
        if stopping || closed || in_flight.len() == GROUPS_IN_FLIGHT {
            let Some(oldest) = in_flight.pop_front() else {
                return stopping;
            };
            let handed_on = oldest.recv().is_ok_and(|done| hand_on(done, verified));
            if !handed_on {
                return false;
            }
            continue;
        }
        let oldest_ready = {
            let mut select = Select::new();
            select.recv(requests);
            if let Some(oldest) = in_flight.front() {
                select.recv(oldest);
            }
            select.ready() == 1
        };
        if oldest_ready {
            // `ready` may wake without a message: look again on the next round.
            match in_flight.front().map(Receiver::try_recv) {
                Some(Ok(done)) => {
                    in_flight.pop_front();
                    if !hand_on(done, verified) {
                        return false;
                    }
                }
                Some(Err(TryRecvError::Disconnected)) => return false,
                Some(Err(TryRecvError::Empty)) | None => {}
            }
            continue;
        }
        let first = match requests.try_recv() {
            Ok(first) => first,
            Err(TryRecvError::Empty) => continue,
            Err(TryRecvError::Disconnected) => {
                closed = true;
                continue;
            }
        };
        let mut group = Vec::with_capacity(GROUP_BATCHES);
        let mut receipts = 0;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                VerifyMsg::Batch(batch) => {
                    // An empty batch counts as one receipt, so a group stays bounded whatever
                    // a caller submits.
                    receipts += batch.request.receipts.len().max(1);
                    group.push(batch);
                }
                VerifyMsg::Shutdown => stopping = true,
            }
            let full = group.len() >= GROUP_BATCHES && receipts >= GROUP_RECEIPTS;
            if !stopping && !full {
                next = requests.try_recv().ok();
            }
        }
        metrics::gauge!(names::VERIFY_QUEUE_BATCHES).set(requests.len() as f64);
        if group.is_empty() {
            continue;
        }
        let (done, done_rx) = bounded(1);
        if jobs.send((group, done)).is_err() {
            return false;
        }
        in_flight.push_back(done_rx);
    }
}

/// A verifying thread: verifies each group it is given and sends it back with its verdicts.
fn verify_groups(verifier: &dyn BatchVerifier, jobs: &Receiver<(Group, Sender<Verified>)>) {
    for (group, done) in jobs {
        let requests: Vec<(&SubmitRequest, Signatures)> = group
            .iter()
            .map(|batch| (&batch.request, batch.signatures))
            .collect();
        let started = std::time::Instant::now();
        let verdicts = group_verdicts(verifier, &requests);
        metrics::histogram!(names::VERIFY_SECONDS).record(started.elapsed());
        if done.send(Verified { group, verdicts }).is_err() {
            return;
        }
    }
}

/// Hands a verified group's batches to the writer; false once the writer is gone.
fn hand_on(done: Verified, verified: &Sender<WriterMsg<EngineError>>) -> bool {
    for (batch, verdicts) in done.group.into_iter().zip(done.verdicts) {
        let msg = WriterMsg::Batch {
            session: SessionId {
                client_id: batch.request.client_id,
                producer_id: batch.request.producer_id,
                session_epoch: batch.request.session_epoch,
                batch_seq: batch.request.batch_seq,
            },
            key: batch.key,
            receipts: batch.request.receipts,
            verdicts,
            reply: batch.reply,
        };
        if verified.send(msg).is_err() {
            return false;
        }
    }
    metrics::gauge!(names::LEDGER_QUEUE_BATCHES).set(verified.len() as f64);
    true
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
    let checked = verifier.verify_clients_here(&views, &spans);
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
