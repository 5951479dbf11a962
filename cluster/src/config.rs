//! What a node needs to join a cluster: where NATS is, who it is, and the names, replicas and
//! limits of the shared resources. Every node of one cluster must use the same resource settings:
//! the first node creates the resources, later nodes find them and refuse to start if they differ.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ClusterError;

/// One node's view of the cluster (serde: the keys of a `[cluster]` table; missing keys take the
/// defaults below).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers to connect to (`nats://host:port`); the client learns the rest of the NATS
    /// cluster from them, so one live server is enough to start.
    pub servers: Vec<String>,
    /// This node's name: recorded as the holder of the leases it takes and as its NATS connection
    /// name. Unique per node; informational only, never trusted for ownership (the lease's
    /// revision is).
    pub node_id: String,
    /// Number of payer partitions. Fixed when the cluster is created (the first node records it);
    /// a node configured with another number refuses to start.
    pub partitions: u32,

    /// JetStream stream holding every partition's log (subjects `tollgate.rx.<p>`).
    pub stream_name: String,
    /// Copies of the log kept by the NATS cluster (3 survives the loss of one server).
    pub stream_replicas: usize,
    /// Bytes the log may hold before publishes are refused (-1: no limit). The stream never
    /// drops old messages to make room: they may be receipts no owner has applied yet.
    pub stream_max_bytes: i64,
    /// How long the stream remembers a `Nats-Msg-Id` to drop a re-published duplicate; must cover
    /// an ingest node's longest retry of one publish.
    pub duplicate_window_ms: u64,

    /// KV bucket holding one lease per partition (key `p.<p>`).
    pub lease_bucket: String,
    /// Copies of the lease bucket.
    pub lease_replicas: usize,
    /// How long a lease lives without a heartbeat: the bucket's max age, enforced by the NATS
    /// servers (see the crate doc). Also the longest a partition stays ownerless after its owner
    /// dies.
    pub lease_ttl_ms: u64,
    /// How often an owner renews its leases; several heartbeats must fit in one TTL so a slow
    /// renewal does not lose the lease.
    pub lease_heartbeat_ms: u64,

    /// KV bucket holding facts fixed at cluster creation (the partition count).
    pub meta_bucket: String,
    /// Copies of the meta bucket.
    pub meta_replicas: usize,

    /// Object store holding partition checkpoints.
    pub checkpoint_bucket: String,
    /// Copies of each checkpoint.
    pub checkpoint_replicas: usize,
    /// Bytes the checkpoint store may hold before uploads are refused (-1: no limit).
    pub checkpoint_max_bytes: i64,
    /// Log messages of a partition its owner applies between two checkpoints (the size
    /// policy): about what a new owner replays beyond the newest checkpoint.
    pub checkpoint_every_messages: u64,
    /// The longest an owner goes without a checkpoint while its partition's log moves (the
    /// time policy).
    pub checkpoint_every_ms: u64,
    /// Checkpoints kept per partition; the log is purged through the oldest kept once this
    /// many exist. At least 2, so a corrupt newest checkpoint has one to fall back to.
    pub checkpoints_kept: usize,

    /// Object store holding each partition's summary of each sealed epoch, from which the
    /// coordinator commits and any node serves proofs. Its own store, not the checkpoints': a
    /// checkpoint listing reads every object's name, and summaries grow by one per partition per
    /// epoch. No byte limit: a refused summary would stop every epoch.
    pub summary_bucket: String,
    /// Copies of each summary.
    pub summary_replicas: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:4222".to_string()],
            node_id: String::new(),
            partitions: 16,
            stream_name: "tollgate-rx".to_string(),
            stream_replicas: 3,
            stream_max_bytes: -1,
            duplicate_window_ms: 120_000,
            lease_bucket: "tollgate-leases".to_string(),
            lease_replicas: 3,
            lease_ttl_ms: 10_000,
            lease_heartbeat_ms: 2_000,
            meta_bucket: "tollgate-meta".to_string(),
            meta_replicas: 3,
            checkpoint_bucket: "tollgate-checkpoints".to_string(),
            checkpoint_replicas: 3,
            checkpoint_max_bytes: -1,
            checkpoint_every_messages: 100_000,
            checkpoint_every_ms: 300_000,
            checkpoints_kept: 2,
            summary_bucket: "tollgate-summaries".to_string(),
            summary_replicas: 3,
        }
    }
}

/// Most copies JetStream keeps of anything.
const REPLICAS_MAX: usize = 5;
/// The most partitions a cluster may have. Leaves room above for the lease numbers of the
/// coordinator and the funds watcher ([`crate::lease::COORDINATOR_LEASE`],
/// [`crate::lease::WATCHER_LEASE`]).
pub const PARTITIONS_MAX: u32 = 4_096;

impl ClusterConfig {
    /// Refuses settings the servers would reject later or that break a guarantee, naming the key.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let invalid = |key: &'static str, why: &str| {
            Err(ClusterError::InvalidConfig {
                key,
                why: why.to_string(),
            })
        };
        if self.servers.is_empty() {
            return invalid("servers", "at least one nats:// URL is needed");
        }
        if self.node_id.is_empty() {
            return invalid("node_id", "every node needs a name");
        }
        // It is a key of the lease bucket (`n.<node id>`), so NATS's key rules apply.
        let key_text = |c: char| c.is_ascii_alphanumeric() || "-_=/.".contains(c);
        if !self.node_id.chars().all(key_text)
            || self.node_id.starts_with('.')
            || self.node_id.ends_with('.')
            || self.node_id.contains("..")
        {
            return invalid(
                "node_id",
                "letters, digits, `-`, `_`, `=`, `/` and `.` (not first, last or twice in a row)",
            );
        }
        if self.partitions == 0 || self.partitions > PARTITIONS_MAX {
            return invalid(
                "partitions",
                "between 1 and 4096 (each is a lease, an owner and a ledger directory)",
            );
        }
        for (key, replicas) in [
            ("stream_replicas", self.stream_replicas),
            ("lease_replicas", self.lease_replicas),
            ("meta_replicas", self.meta_replicas),
            ("checkpoint_replicas", self.checkpoint_replicas),
            ("summary_replicas", self.summary_replicas),
        ] {
            if !(1..=REPLICAS_MAX).contains(&replicas) {
                return invalid(key, "JetStream keeps 1 to 5 replicas");
            }
        }
        for (key, bytes) in [
            ("stream_max_bytes", self.stream_max_bytes),
            ("checkpoint_max_bytes", self.checkpoint_max_bytes),
        ] {
            if bytes == 0 || bytes < -1 {
                return invalid(key, "-1 (no limit) or a positive number of bytes");
            }
        }
        if self.checkpoint_every_messages == 0 || self.checkpoint_every_ms == 0 {
            let key = if self.checkpoint_every_messages == 0 {
                "checkpoint_every_messages"
            } else {
                "checkpoint_every_ms"
            };
            return invalid(key, "a checkpoint policy needs a positive interval");
        }
        if self.checkpoints_kept < 2 {
            return invalid(
                "checkpoints_kept",
                "at least 2: a corrupt newest checkpoint needs one to fall back to",
            );
        }
        if self.duplicate_window_ms == 0 {
            return invalid("duplicate_window_ms", "deduplication needs a window");
        }
        // At least two heartbeats per TTL: one late renewal must not cost the lease.
        if self.lease_heartbeat_ms == 0
            || self.lease_heartbeat_ms.saturating_mul(2) > self.lease_ttl_ms
        {
            return invalid(
                "lease_heartbeat_ms",
                "must be positive and at most half of lease_ttl_ms",
            );
        }
        Ok(())
    }

    /// The partition count, once validated.
    pub fn partition_count(&self) -> Result<NonZeroU32, ClusterError> {
        NonZeroU32::new(self.partitions).ok_or(ClusterError::InvalidConfig {
            key: "partitions",
            why: "at least one partition is needed".to_string(),
        })
    }

    pub(crate) fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    pub(crate) fn lease_heartbeat(&self) -> Duration {
        Duration::from_millis(self.lease_heartbeat_ms)
    }

    pub(crate) fn duplicate_window(&self) -> Duration {
        Duration::from_millis(self.duplicate_window_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named() -> ClusterConfig {
        ClusterConfig {
            node_id: "n1".to_string(),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn defaults_with_a_node_id_are_valid() {
        assert!(named().validate().is_ok());
    }

    #[test]
    fn each_bad_setting_is_named() {
        type Break = fn(&mut ClusterConfig);
        let cases: [(&str, Break); 13] = [
            ("node_id", |c| c.node_id.clear()),
            ("node_id", |c| c.node_id = "node 1".into()),
            ("node_id", |c| c.node_id = "n1.".into()),
            ("partitions", |c| c.partitions = 0),
            ("partitions", |c| c.partitions = PARTITIONS_MAX + 1),
            ("stream_replicas", |c| c.stream_replicas = 6),
            ("stream_max_bytes", |c| c.stream_max_bytes = 0),
            ("lease_heartbeat_ms", |c| {
                c.lease_heartbeat_ms = c.lease_ttl_ms
            }),
            ("servers", |c| c.servers.clear()),
            ("checkpoint_every_messages", |c| {
                c.checkpoint_every_messages = 0
            }),
            ("checkpoint_every_ms", |c| c.checkpoint_every_ms = 0),
            ("checkpoints_kept", |c| c.checkpoints_kept = 1),
            ("summary_replicas", |c| c.summary_replicas = 0),
        ];
        for (want, break_it) in cases {
            let mut config = named();
            break_it(&mut config);
            match config.validate() {
                Err(ClusterError::InvalidConfig { key, .. }) => assert_eq!(key, want),
                other => panic!("{want}: {other:?}"),
            }
        }
    }

    #[test]
    fn missing_keys_take_the_defaults() {
        let config: ClusterConfig =
            serde_json::from_str(r#"{"node_id": "a", "partitions": 4}"#).expect("valid config");
        assert_eq!(config.partitions, 4);
        assert_eq!(config.stream_name, ClusterConfig::default().stream_name);
    }
}
