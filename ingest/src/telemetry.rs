//! Every metric ingest exports, named once. [`register`] describes them and creates each series at
//! zero, so a fresh server's `/metrics` already has them.

use metrics::{describe_counter, describe_gauge, describe_histogram};
use tollgate_engine::Reason;

use crate::wire::ErrorCode;

/// Gauge: fleet connections open now.
pub const CONNECTIONS_OPEN: &str = "tollgate_ingest_connections_open";
/// Counter: fleet connections accepted.
pub const CONNECTIONS_ACCEPTED_TOTAL: &str = "tollgate_ingest_connections_accepted_total";
/// Counter, label `code`: connections or frames refused, by protocol error code.
pub const REFUSALS_TOTAL: &str = "tollgate_ingest_refusals_total";
/// Counter: SUBMIT batches received.
pub const BATCHES_RECEIVED_TOTAL: &str = "tollgate_ingest_batches_received_total";
/// Counter: receipts received.
pub const RECEIPTS_RECEIVED_TOTAL: &str = "tollgate_ingest_receipts_received_total";
/// Histogram: receipts per client batch.
pub const BATCH_RECEIPTS: &str = "tollgate_ingest_batch_receipts";
/// Counter: receipts acked as accepted.
pub const RECEIPTS_ACCEPTED_TOTAL: &str = "tollgate_ingest_receipts_accepted_total";
/// Counter, label `reason`: receipts acked as rejected.
pub const RECEIPTS_REJECTED_TOTAL: &str = "tollgate_ingest_receipts_rejected_total";
/// Gauge: batches handed to the engine and not yet acked.
pub const ENGINE_BATCHES_IN_FLIGHT: &str = "tollgate_ingest_engine_batches_in_flight";

/// Describes ingest's metrics and creates every series at zero (each error code and rejection
/// reason included) in the installed recorder.
pub fn register() {
    describe_gauge!(CONNECTIONS_OPEN, "fleet connections open now");
    describe_counter!(CONNECTIONS_ACCEPTED_TOTAL, "fleet connections accepted");
    describe_counter!(
        REFUSALS_TOTAL,
        "connections or frames refused, by protocol error code"
    );
    describe_counter!(BATCHES_RECEIVED_TOTAL, "SUBMIT batches received");
    describe_counter!(RECEIPTS_RECEIVED_TOTAL, "receipts received");
    describe_histogram!(BATCH_RECEIPTS, "receipts per client batch");
    describe_counter!(RECEIPTS_ACCEPTED_TOTAL, "receipts acked as accepted");
    describe_counter!(
        RECEIPTS_REJECTED_TOTAL,
        "receipts acked as rejected, by reason"
    );
    describe_gauge!(
        ENGINE_BATCHES_IN_FLIGHT,
        "batches handed to the engine and not yet acked"
    );

    for gauge in [CONNECTIONS_OPEN, ENGINE_BATCHES_IN_FLIGHT] {
        metrics::gauge!(gauge).set(0.0);
    }
    for counter in [
        CONNECTIONS_ACCEPTED_TOTAL,
        BATCHES_RECEIVED_TOTAL,
        RECEIPTS_RECEIVED_TOTAL,
        RECEIPTS_ACCEPTED_TOTAL,
    ] {
        metrics::counter!(counter).absolute(0);
    }
    for code in ErrorCode::ALL {
        metrics::counter!(REFUSALS_TOTAL, "code" => code.name()).absolute(0);
    }
    for reason in Reason::ALL {
        metrics::counter!(RECEIPTS_REJECTED_TOTAL, "reason" => reason.name()).absolute(0);
    }
    // Registering the handle is what makes the exporter list it.
    drop(metrics::histogram!(BATCH_RECEIPTS));
}
