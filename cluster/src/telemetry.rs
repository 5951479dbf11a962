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

/// Counter, label `outcome`: partition checkpoints `stored` by this node's owners, `failed` to
/// be made or stored, `restored` by a new owner here, and `unusable` ones a new owner passed
/// over for an older one (a corrupt or unreadable checkpoint: a longer replay).
pub const CHECKPOINTS_TOTAL: &str = "tollgate_cluster_checkpoints_total";
/// Gauge, label `partition`: seconds since the partition's newest checkpoint was stored, while
/// its owner here has applied log messages the checkpoint does not hold (0 when it holds them
/// all, however old: an idle partition's checkpoint is not stale, nor one this node does not
/// own).
pub const CHECKPOINT_AGE_SECONDS: &str = "tollgate_cluster_checkpoint_age_seconds";

/// Gauge: the nodes announced in the lease bucket as this node last counted them (itself
/// included); its share of the partitions is ceil(partitions / nodes).
pub const NODES: &str = "tollgate_cluster_nodes";

/// Gauge: 1 while this node holds the coordinator's lease (seals and commits the cluster's
/// epochs), else 0. Summed over the nodes it is 1, or 0 for at most a lease TTL.
pub const COORDINATOR: &str = "tollgate_cluster_coordinator";

/// Gauge: 1 while this node holds the funds watcher's lease (publishes the chain's deposits and
/// exits into the partitions' logs), else 0.
pub const WATCHER: &str = "tollgate_cluster_funds_watcher";

/// The outcomes [`CHECKPOINTS_TOTAL`] counts.
const CHECKPOINT_OUTCOMES: [&str; 4] = ["stored", "failed", "restored", "unusable"];

/// Describes the metrics and creates the unlabelled ones and the ownership and checkpoint
/// counters at zero.
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
    describe_counter!(
        CHECKPOINTS_TOTAL,
        Unit::Count,
        "partition checkpoints stored, failed, restored, or passed over as unusable"
    );
    describe_gauge!(
        CHECKPOINT_AGE_SECONDS,
        Unit::Seconds,
        "seconds since the partition's newest checkpoint, while the owner here applied more"
    );
    describe_gauge!(
        NODES,
        Unit::Count,
        "nodes announced in the cluster as this node last counted them"
    );
    describe_gauge!(
        COORDINATOR,
        Unit::Count,
        "1 while this node coordinates the cluster's epochs"
    );
    describe_gauge!(
        WATCHER,
        Unit::Count,
        "1 while this node publishes the chain's funds events into the partitions' logs"
    );
    metrics::gauge!(PARTITIONS_OWNED).set(0.0);
    metrics::gauge!(COORDINATOR).set(0.0);
    metrics::gauge!(WATCHER).set(0.0);
    for outcome in CHECKPOINT_OUTCOMES {
        metrics::counter!(CHECKPOINTS_TOTAL, "outcome" => outcome).absolute(0);
    }
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

/// Records the nodes counted.
pub(crate) fn nodes(count: u32) {
    metrics::gauge!(NODES).set(f64::from(count));
}

/// The gauge of how far partition `partition`'s owner on this node is behind its log.
pub(crate) fn log_lag(partition: u32) -> metrics::Gauge {
    metrics::gauge!(LOG_LAG_MESSAGES, "partition" => partition.to_string())
}

/// Counts a checkpoint `outcome` (one of [`CHECKPOINT_OUTCOMES`]).
pub(crate) fn checkpoint_done(outcome: &'static str) {
    debug_assert!(CHECKPOINT_OUTCOMES.contains(&outcome));
    metrics::counter!(CHECKPOINTS_TOTAL, "outcome" => outcome).increment(1);
}

/// The gauge of how stale partition `partition`'s newest checkpoint is, as its owner here sees it.
pub(crate) fn checkpoint_age(partition: u32) -> metrics::Gauge {
    metrics::gauge!(CHECKPOINT_AGE_SECONDS, "partition" => partition.to_string())
}
