//! Every metric cluster mode exports, named once. [`register`] describes them; the per-partition
//! series appear as a node first owns each partition.

use metrics::{Unit, describe_counter, describe_gauge};

/// Gauge: the partitions whose lease this node holds and whose ledger it applies now.
pub const PARTITIONS_OWNED: &str = "tollgate_cluster_partitions_owned";
/// Counter, label `change` (`taken`, `released`): partitions this node started or stopped
/// owning. A steady cluster's counters stand still; a climbing one means leases move.
pub const OWNERSHIP_CHANGES_TOTAL: &str = "tollgate_cluster_ownership_changes_total";
/// Gauge, label `partition`: log messages of the partition not yet delivered to its owner here,
/// as of the last one delivered (0 when it has caught up).
pub const LOG_LAG_MESSAGES: &str = "tollgate_cluster_log_lag_messages";

/// Describes the metrics and creates the unlabelled ones and both ownership counters at zero.
pub fn register() {
    describe_gauge!(
        PARTITIONS_OWNED,
        Unit::Count,
        "partitions this node owns now"
    );
    describe_counter!(
        OWNERSHIP_CHANGES_TOTAL,
        Unit::Count,
        "partitions this node started (taken) or stopped (released) owning"
    );
    describe_gauge!(
        LOG_LAG_MESSAGES,
        Unit::Count,
        "log messages of the partition not yet delivered to its owner on this node"
    );
    metrics::gauge!(PARTITIONS_OWNED).set(0.0);
    for change in ["taken", "released"] {
        metrics::counter!(OWNERSHIP_CHANGES_TOTAL, "change" => change).absolute(0);
    }
}

/// Counts a partition taken (`true`) or released, in the counter and the owned gauge (moved by
/// one, not set, so it stays the node's count however its partitions come and go).
pub(crate) fn ownership_changed(taken: bool) {
    let change = if taken { "taken" } else { "released" };
    metrics::counter!(OWNERSHIP_CHANGES_TOTAL, "change" => change).increment(1);
    let owned = metrics::gauge!(PARTITIONS_OWNED);
    if taken {
        owned.increment(1.0);
    } else {
        owned.decrement(1.0);
    }
}

/// The gauge of how far partition `partition`'s owner on this node is behind its log.
pub(crate) fn log_lag(partition: u32) -> metrics::Gauge {
    metrics::gauge!(LOG_LAG_MESSAGES, "partition" => partition.to_string())
}
