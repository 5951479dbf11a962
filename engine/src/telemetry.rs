//! Every metric the engine exports, named once. [`register`] describes them and creates each
//! series at zero, so a fresh server's `/metrics` already has them (dashboards and `absent()`
//! alerts need the series before the first receipt arrives).

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

use crate::verdict::Reason;

/// Gauge: batches submitted and waiting for signature verification.
pub const VERIFY_QUEUE_BATCHES: &str = "tollgate_verify_queue_batches";
/// Histogram: time to verify one group of batches (two groups may verify at once, sharing the
/// pool, so these can add up to more than the time that passed).
pub const VERIFY_SECONDS: &str = "tollgate_verify_seconds";
/// Counter: batch equations computed (bisection shows here).
pub const VERIFY_EQUATIONS_TOTAL: &str = "tollgate_verify_equations_total";
/// Gauge: receipts per batch equation now (shrinks while batches fail).
pub const VERIFY_CHUNK_RECEIPTS: &str = "tollgate_verify_chunk_receipts";
/// Gauge: clients whose batch equations are held at smaller chunks because their signatures
/// keep failing.
pub const VERIFY_FAILING_CLIENTS: &str = "tollgate_verify_failing_clients";
/// Gauge: verified batches waiting for the ledger writer.
pub const LEDGER_QUEUE_BATCHES: &str = "tollgate_ledger_queue_batches";
/// Histogram: one group commit (`WriteBatch` + fsync).
pub const LEDGER_WRITE_SECONDS: &str = "tollgate_ledger_write_seconds";
/// Histogram: receipts per group commit.
pub const LEDGER_GROUP_RECEIPTS: &str = "tollgate_ledger_group_receipts";
/// Counter: receipts the ledger applied.
pub const LEDGER_RECEIPTS_ACCEPTED_TOTAL: &str = "tollgate_ledger_receipts_accepted_total";
/// Counter, label `reason`: receipts the ledger refused.
pub const LEDGER_RECEIPTS_REJECTED_TOTAL: &str = "tollgate_ledger_receipts_rejected_total";
/// Gauge: 1 once a write or fsync failed.
pub const LEDGER_POISONED: &str = "tollgate_ledger_poisoned";
/// Gauge: bytes of the receipt archive (files and live memtables).
pub const ARCHIVE_BYTES: &str = "tollgate_archive_bytes";
/// Gauge: receipts the archive holds (every epoch not pruned).
pub const ARCHIVE_RECEIPTS: &str = "tollgate_archive_receipts";
/// Gauge: the highest epoch whose archive was pruned (0: none).
pub const ARCHIVE_PRUNED_THROUGH: &str = "tollgate_archive_pruned_through";

/// Describes the engine's metrics and creates every series at zero (each rejection reason
/// included) in the installed recorder.
pub fn register() {
    describe_gauge!(
        VERIFY_QUEUE_BATCHES,
        "batches submitted and waiting for signature verification"
    );
    describe_histogram!(
        VERIFY_SECONDS,
        Unit::Seconds,
        "time to verify one group of batches (two may verify at once)"
    );
    describe_counter!(VERIFY_EQUATIONS_TOTAL, "batch equations computed");
    describe_gauge!(
        VERIFY_CHUNK_RECEIPTS,
        "receipts per batch equation now (the smallest any client has)"
    );
    describe_gauge!(
        VERIFY_FAILING_CLIENTS,
        "clients held at smaller batch equations because their signatures keep failing"
    );
    describe_gauge!(
        LEDGER_QUEUE_BATCHES,
        "verified batches waiting for the ledger writer"
    );
    describe_histogram!(
        LEDGER_WRITE_SECONDS,
        Unit::Seconds,
        "one group commit: WriteBatch and fsync"
    );
    describe_histogram!(LEDGER_GROUP_RECEIPTS, "receipts per group commit");
    describe_counter!(
        LEDGER_RECEIPTS_ACCEPTED_TOTAL,
        "receipts the ledger applied"
    );
    describe_counter!(
        LEDGER_RECEIPTS_REJECTED_TOTAL,
        "receipts the ledger refused, by reason"
    );
    describe_gauge!(LEDGER_POISONED, "1 once a write or fsync failed");
    describe_gauge!(
        ARCHIVE_BYTES,
        Unit::Bytes,
        "bytes of the receipt archive: files and live memtables"
    );
    describe_gauge!(
        ARCHIVE_RECEIPTS,
        "receipts the archive holds: every epoch not pruned"
    );
    describe_gauge!(
        ARCHIVE_PRUNED_THROUGH,
        "the highest epoch whose archive was pruned (0: none)"
    );

    for gauge in [
        VERIFY_QUEUE_BATCHES,
        VERIFY_CHUNK_RECEIPTS,
        VERIFY_FAILING_CLIENTS,
        LEDGER_QUEUE_BATCHES,
        LEDGER_POISONED,
        ARCHIVE_BYTES,
        ARCHIVE_RECEIPTS,
        ARCHIVE_PRUNED_THROUGH,
    ] {
        metrics::gauge!(gauge).set(0.0);
    }
    for counter in [VERIFY_EQUATIONS_TOTAL, LEDGER_RECEIPTS_ACCEPTED_TOTAL] {
        metrics::counter!(counter).absolute(0);
    }
    for reason in Reason::ALL {
        metrics::counter!(LEDGER_RECEIPTS_REJECTED_TOTAL, "reason" => reason.name()).absolute(0);
    }
    for histogram in [VERIFY_SECONDS, LEDGER_WRITE_SECONDS, LEDGER_GROUP_RECEIPTS] {
        // Registering the handle is what makes the exporter list it.
        drop(metrics::histogram!(histogram));
    }
}
