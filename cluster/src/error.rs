//! Why joining the cluster, or taking, keeping or checking a lease, failed.

use crate::fence::FenceError;

/// Any error the NATS client returns, kept as the cause of one of ours.
pub type NatsError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Starting a node: the configuration, the connection and the shared resources.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster config `{key}`: {why}")]
    InvalidConfig { key: &'static str, why: String },
    #[error("cannot connect to NATS at {servers}")]
    Connect {
        servers: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot create or open {resource}")]
    Resource {
        resource: String,
        #[source]
        source: NatsError,
    },
    #[error("{resource} has no leader after {waited:?}: are a majority of its servers up?")]
    NoLeader {
        resource: String,
        waited: std::time::Duration,
    },
    /// The resource exists with other settings than ours: every node of a cluster must use the
    /// same ones, and we never change a live cluster's resources behind the other nodes.
    #[error("{resource} exists with {field} = {theirs}, this node is configured with {ours}")]
    Mismatch {
        resource: String,
        field: &'static str,
        ours: String,
        theirs: String,
    },
    /// The partition count is fixed when the cluster is created: payers map to partitions by it.
    #[error("the cluster has {cluster} partitions, this node is configured with {ours}")]
    PartitionCount { cluster: u32, ours: u32 },
    #[error("the cluster's partition record holds {value:?}, not a partition count")]
    PartitionRecord { value: String },
}

/// Taking, renewing or reading a partition's lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another node holds a live lease on the partition.
    #[error("partition {partition} is held by {holder} (token {token})")]
    Held {
        partition: u32,
        holder: String,
        token: u64,
    },
    /// Another node took the partition between our read and our write.
    #[error("partition {partition} was taken by another node while we claimed it")]
    Contended { partition: u32 },
    /// Our lease expired or was taken over: whatever we do for the partition must stop.
    #[error("lease on partition {partition} (token {token}) is lost")]
    Lost { partition: u32, token: u64 },
    #[error("the lease record of partition {partition} is unreadable: {why}")]
    Record { partition: u32, why: String },
    #[error("lease bucket request for partition {partition} failed")]
    Nats {
        partition: u32,
        #[source]
        source: NatsError,
    },
    #[error(transparent)]
    Fenced(#[from] FenceError),
}
