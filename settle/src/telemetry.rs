//! Every metric settlement exports, named once. [`register`] describes them and creates each at
//! zero, so a fresh server's `/metrics` already has them.

use metrics::{describe_counter, describe_gauge};

/// Gauge: sealed epochs waiting to be committed onchain.
pub const BACKLOG_EPOCHS: &str = "tollgate_settle_backlog_epochs";
/// Gauge: the newest sealed epoch.
pub const LAST_SEALED_EPOCH: &str = "tollgate_settle_last_sealed_epoch";
/// Gauge: the newest epoch committed onchain.
pub const LAST_COMMITTED_EPOCH: &str = "tollgate_settle_last_committed_epoch";

/// Counter: commit transactions replaced at their nonce with higher fees (stuck or underpriced).
pub const TX_REPLACEMENTS: &str = "tollgate_settle_tx_replacements_total";

/// Counter: epochs the arbiter voided (their amounts were carried into a later epoch).
pub const EPOCHS_VOIDED: &str = "tollgate_settle_epochs_voided_total";

/// Counter: debited amounts committed without being covered onchain, in token units: a payer's
/// exit overtook its debits (`Overdraft`) and the epoch went onchain without the uncovered part.
pub const SHORTFALL: &str = "tollgate_settle_shortfall_total";

/// Describes settlement's metrics and creates each at zero in the installed recorder.
pub fn register() {
    describe_gauge!(
        BACKLOG_EPOCHS,
        "sealed epochs waiting to be committed onchain"
    );
    describe_gauge!(LAST_SEALED_EPOCH, "the newest sealed epoch");
    describe_gauge!(LAST_COMMITTED_EPOCH, "the newest epoch committed onchain");
    describe_counter!(
        TX_REPLACEMENTS,
        "commit transactions replaced at their nonce with higher fees"
    );
    describe_counter!(
        EPOCHS_VOIDED,
        "epochs the arbiter voided; their amounts were carried into a later epoch"
    );
    describe_counter!(
        SHORTFALL,
        "debits committed without cover onchain because the payer's exit overtook them (token units)"
    );
    for gauge in [BACKLOG_EPOCHS, LAST_SEALED_EPOCH, LAST_COMMITTED_EPOCH] {
        metrics::gauge!(gauge).set(0.0);
    }
    for counter in [TX_REPLACEMENTS, EPOCHS_VOIDED, SHORTFALL] {
        metrics::counter!(counter).absolute(0);
    }
}
