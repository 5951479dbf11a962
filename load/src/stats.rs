//! What a run saw: counts by verdict, verdict mismatches, ack latency, throughput over time, and the
//! accepted spend per payer that `--check` compares with the server.
//!
//! Each connection keeps its own [`Stats`] (no lock on the ack path) and the run merges them at the
//! end; only the progress counters are shared.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tollgate_engine::{Reason, Verdict};

use super::workload::{Kind, Planned};

/// Width of one throughput sample.
pub const TIMELINE_BUCKET_MS: u64 = 100;
/// Latencies above this are recorded as this (one hour).
const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Mismatches and errors described in full; the rest are only counted.
const EXAMPLES_MAX: usize = 10;

/// What the generator keeps of each receipt it sends, to judge its verdict when the ack comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Index of the payer.
    pub payer_index: u32,
    /// The payee's address.
    pub payee: tollgate_engine::Address,
    /// Nonce of the receipt.
    pub nonce: u64,
    /// Amount of the receipt.
    pub amount: u64,
    /// What the planner meant it to be.
    pub kind: Kind,
}

impl From<&Planned> for Sent {
    fn from(planned: &Planned) -> Self {
        Self {
            payer_index: planned.payer_index,
            payee: planned.unsigned.payee,
            nonce: planned.unsigned.nonce,
            amount: planned.unsigned.amount,
            kind: planned.kind,
        }
    }
}

/// Accepted spend of one payer as the acks reported it.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct PayerTally {
    /// Sum of amounts the engine acked as accepted.
    pub accepted_amount: u128,
    /// Receipts the engine acked as accepted.
    pub accepted_receipts: u64,
    /// Sum of amounts of receipts in failed batches that should have been accepted: the engine may
    /// or may not have applied them (an ack lost with a connection).
    pub unknown_amount: u128,
    /// Receipts behind `unknown_amount`.
    pub unknown_receipts: u64,
}

/// Counters and distributions of one connection, or of a whole run once merged.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Receipts handed to the client.
    pub sent: u64,
    /// Receipts with a verdict from the engine.
    pub acked: u64,
    /// Receipts whose batch failed (no verdict): `sent = acked + failed` once the run is over.
    pub failed: u64,
    /// Acked as accepted.
    pub accepted: u64,
    /// Acked as rejected, by reason.
    pub rejected: BTreeMap<Reason, u64>,
    /// Receipts sent, by the kind the planner meant them to be.
    pub sent_by_kind: BTreeMap<Kind, u64>,
    /// Acked receipts whose verdict differs from the expected one.
    pub verdict_mismatches: u64,
    /// The first few mismatches, described.
    pub mismatch_examples: Vec<String>,
    /// The first few connection or batch errors, described.
    pub errors: Vec<String>,
    /// Ack latency of every acked receipt (its batch's), microseconds.
    pub latency_us: Histogram<u64>,
    /// Receipts acked in each [`TIMELINE_BUCKET_MS`] since the clock started.
    pub timeline: Vec<u64>,
    /// Accepted spend by payer index.
    pub payers: HashMap<u32, PayerTally>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            sent: 0,
            acked: 0,
            failed: 0,
            accepted: 0,
            rejected: BTreeMap::new(),
            sent_by_kind: BTreeMap::new(),
            verdict_mismatches: 0,
            mismatch_examples: Vec::new(),
            errors: Vec::new(),
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("constant histogram bounds are valid"),
            timeline: Vec::new(),
            payers: HashMap::new(),
        }
    }
}

/// Formats a verdict the way JSON and the acked log name it.
pub fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Ok(()) => "accepted",
        Err(reason) => reason.name(),
    }
}

impl Stats {
    /// Counts a batch as handed to the client.
    pub fn record_sent(&mut self, sent: &[Sent]) {
        self.sent += sent.len() as u64;
        for receipt in sent {
            *self.sent_by_kind.entry(receipt.kind).or_insert(0) += 1;
        }
    }

    /// Judges a batch's verdicts. `since_start` places the ack on the timeline.
    pub fn record_acked(
        &mut self,
        sent: &[Sent],
        verdicts: &[Verdict],
        latency: Duration,
        since_start: Duration,
    ) {
        if sent.len() != verdicts.len() {
            self.record_failed(
                sent,
                &format!(
                    "{} verdicts for a batch of {} receipts",
                    verdicts.len(),
                    sent.len()
                ),
            );
            return;
        }
        let n = sent.len() as u64;
        self.acked += n;
        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us
            .saturating_record_n(latency_us.clamp(1, LATENCY_US_MAX), n);
        let bucket = (since_start.as_millis() / u128::from(TIMELINE_BUCKET_MS)) as usize;
        if self.timeline.len() <= bucket {
            self.timeline.resize(bucket + 1, 0);
        }
        self.timeline[bucket] += n;
        for (receipt, &verdict) in sent.iter().zip(verdicts) {
            match verdict {
                Ok(()) => {
                    self.accepted += 1;
                    let tally = self.payers.entry(receipt.payer_index).or_default();
                    tally.accepted_amount += u128::from(receipt.amount);
                    tally.accepted_receipts += 1;
                }
                Err(reason) => *self.rejected.entry(reason).or_insert(0) += 1,
            }
            let expected = receipt.kind.expected_verdict();
            if verdict != expected {
                self.verdict_mismatches += 1;
                if self.mismatch_examples.len() < EXAMPLES_MAX {
                    self.mismatch_examples.push(format!(
                        "payer #{} payee {} nonce {} ({}): expected {}, got {}",
                        receipt.payer_index,
                        receipt.payee,
                        receipt.nonce,
                        receipt.kind.name(),
                        verdict_name(expected),
                        verdict_name(verdict)
                    ));
                }
            }
        }
    }

    /// Counts a batch that got no verdicts. What it would have added is kept apart as unknown.
    pub fn record_failed(&mut self, sent: &[Sent], error: &str) {
        self.failed += sent.len() as u64;
        for receipt in sent.iter().filter(|r| r.kind == Kind::Valid) {
            let tally = self.payers.entry(receipt.payer_index).or_default();
            tally.unknown_amount += u128::from(receipt.amount);
            tally.unknown_receipts += 1;
        }
        self.note_error(error);
    }

    /// Keeps an error's description if there is room.
    pub fn note_error(&mut self, error: &str) {
        if self.errors.len() < EXAMPLES_MAX {
            self.errors.push(error.to_owned());
        }
    }

    /// Adds another connection's stats.
    pub fn merge(&mut self, other: Stats) {
        self.sent += other.sent;
        self.acked += other.acked;
        self.failed += other.failed;
        self.accepted += other.accepted;
        for (reason, n) in other.rejected {
            *self.rejected.entry(reason).or_insert(0) += n;
        }
        for (kind, n) in other.sent_by_kind {
            *self.sent_by_kind.entry(kind).or_insert(0) += n;
        }
        self.verdict_mismatches += other.verdict_mismatches;
        for example in other.mismatch_examples {
            if self.mismatch_examples.len() < EXAMPLES_MAX {
                self.mismatch_examples.push(example);
            }
        }
        for error in other.errors {
            self.note_error(&error);
        }
        // Same bounds on both sides, so adding cannot fail.
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share bounds");
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), 0);
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(other.timeline) {
            *mine += theirs;
        }
        for (payer, tally) in other.payers {
            let mine = self.payers.entry(payer).or_default();
            mine.accepted_amount += tally.accepted_amount;
            mine.accepted_receipts += tally.accepted_receipts;
            mine.unknown_amount += tally.unknown_amount;
            mine.unknown_receipts += tally.unknown_receipts;
        }
    }

    /// The figures `--json` prints.
    pub fn summary(&self, elapsed: Duration) -> Summary {
        let ms = |quantile: f64| {
            if self.latency_us.is_empty() {
                0.0
            } else {
                self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
            }
        };
        let elapsed_s = elapsed.as_secs_f64();
        Summary {
            sent: self.sent,
            acked: self.acked,
            failed: self.failed,
            accepted: self.accepted,
            rejected: self
                .rejected
                .iter()
                .map(|(reason, &n)| (reason.name().to_owned(), n))
                .collect(),
            injected: self
                .sent_by_kind
                .iter()
                .filter(|(kind, _)| **kind != Kind::Valid)
                .map(|(kind, &n)| (kind.name().to_owned(), n))
                .collect(),
            verdict_mismatches: self.verdict_mismatches,
            receipts_per_s: if elapsed_s > 0.0 {
                self.acked as f64 / elapsed_s
            } else {
                0.0
            },
            ack_latency_ms: LatencyMs {
                p50: ms(0.5),
                p99: ms(0.99),
                p999: ms(0.999),
                max: if self.latency_us.is_empty() {
                    0.0
                } else {
                    self.latency_us.max() as f64 / 1000.0
                },
            },
            elapsed_s,
        }
    }
}

/// Ack latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct LatencyMs {
    /// median
    pub p50: f64,
    /// 99th percentile
    pub p99: f64,
    /// 99.9th percentile
    pub p999: f64,
    /// largest seen
    pub max: f64,
}

/// The one JSON object `--json` prints last.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Receipts handed to the client.
    pub sent: u64,
    /// Receipts with a verdict.
    pub acked: u64,
    /// Receipts whose batch got no verdict; `sent = acked + failed`.
    pub failed: u64,
    /// Acked as accepted.
    pub accepted: u64,
    /// Acked as rejected, by reason name.
    pub rejected: BTreeMap<String, u64>,
    /// Bad receipts sent on purpose, by kind.
    pub injected: BTreeMap<String, u64>,
    /// Acked receipts whose verdict is not the expected one.
    pub verdict_mismatches: u64,
    /// Acked receipts per second of `elapsed_s`.
    pub receipts_per_s: f64,
    /// Ack latency, per receipt (each receipt counts its batch's latency).
    pub ack_latency_ms: LatencyMs,
    /// From the first submission (after presigning and connecting) to the last ack.
    pub elapsed_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_engine::Address;

    fn sent(kind: Kind, payer_index: u32, amount: u64) -> Sent {
        Sent {
            payer_index,
            payee: Address([1; 20]),
            nonce: 5,
            amount,
            kind,
        }
    }

    #[test]
    fn verdicts_are_judged_against_their_kind() {
        let mut stats = Stats::default();
        let batch = [
            sent(Kind::Valid, 0, 10),
            sent(Kind::Replay, 0, 10),
            sent(Kind::BadSignature, 1, 10),
            sent(Kind::Valid, 1, 7),
        ];
        stats.record_sent(&batch);
        let verdicts = [
            Ok(()),
            Err(Reason::Duplicate),
            Ok(()), // a bad signature accepted: the worst mismatch there is
            Err(Reason::Stale),
        ];
        stats.record_acked(
            &batch,
            &verdicts,
            Duration::from_millis(3),
            Duration::from_millis(250),
        );
        assert_eq!((stats.sent, stats.acked, stats.accepted), (4, 4, 2));
        assert_eq!(stats.verdict_mismatches, 2);
        assert_eq!(stats.mismatch_examples.len(), 2);
        assert!(stats.mismatch_examples[0].contains("expected bad_signature, got accepted"));
        assert_eq!(stats.payers[&0].accepted_amount, 10);
        assert_eq!(stats.payers[&1].accepted_amount, 10);
        assert_eq!(stats.timeline, vec![0, 0, 4]);
        let summary = stats.summary(Duration::from_secs(2));
        assert_eq!(summary.rejected["duplicate"], 1);
        assert_eq!(summary.rejected["stale"], 1);
        assert_eq!(summary.injected["replay"], 1);
        assert_eq!(summary.receipts_per_s, 2.0);
        assert!((2.9..3.1).contains(&summary.ack_latency_ms.p50));
    }

    #[test]
    fn failed_batches_keep_the_sum_whole_and_their_spend_unknown() {
        let mut stats = Stats::default();
        let batch = [sent(Kind::Valid, 3, 10), sent(Kind::Overdraft, 3, 99)];
        stats.record_sent(&batch);
        stats.record_failed(&batch, "connection reset");
        let mut other = Stats::default();
        other.record_sent(&batch);
        other.record_acked(&batch, &[Ok(())], Duration::ZERO, Duration::ZERO);
        stats.merge(other);
        assert_eq!(stats.sent, stats.acked + stats.failed);
        assert_eq!(stats.failed, 4);
        assert_eq!(stats.payers[&3].unknown_amount, 20);
        assert_eq!(stats.payers[&3].accepted_amount, 0);
        assert_eq!(stats.errors.len(), 2);
    }
}
