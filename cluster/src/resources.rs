//! Joining a cluster: connect to NATS, then create or open every shared resource with the
//! configured settings, and agree on the partition count.

use std::num::NonZeroU32;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use bytes::Bytes;
use tracing::info;

use crate::config::ClusterConfig;
use crate::error::{ClusterError, NatsError};
use crate::kv::{Latest, bucket_stream, latest};
use crate::lease::Leases;
use crate::partition::all_subjects;

/// Key of the meta bucket recording the partition count, written once by the first node.
const PARTITIONS_KEY: &str = "partitions";

/// A node's handle on the cluster's shared resources.
pub struct Cluster {
    config: ClusterConfig,
    partitions: NonZeroU32,
    jetstream: jetstream::Context,
    stream: stream::Stream,
    checkpoints: object_store::ObjectStore,
    /// The stream behind the checkpoint store, whose subjects list the checkpoints.
    checkpoint_stream: stream::Stream,
    summaries: object_store::ObjectStore,
    /// The stream behind the summary store, read directly (see `objects`).
    summary_stream: stream::Stream,
    /// The meta bucket: facts fixed at creation, and each partition's purge floor.
    meta: kv::Store,
    leases: Leases,
}

impl Cluster {
    /// Connects and creates (or opens, when another node created them) the log stream, the meta
    /// and lease buckets and the checkpoint and summary stores. Safe to run on every node at
    /// every start.
    /// Refuses, changing nothing, a resource that exists with other settings or a cluster
    /// created with another partition count.
    pub async fn start(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        config.validate()?;
        let partitions = config.partition_count()?;
        let client = async_nats::ConnectOptions::new()
            .name(&config.node_id)
            .connect(config.servers.as_slice())
            .await
            .map_err(|source| ClusterError::Connect {
                servers: config
                    .servers
                    .iter()
                    .map(|server| without_credentials(server))
                    .collect::<Vec<_>>()
                    .join(","),
                source,
            })?;
        let jetstream = jetstream::new(client);

        // The meta bucket first: a node with the wrong partition count must stop before it
        // creates anything else.
        let meta = open_bucket(
            &jetstream,
            &config.meta_bucket,
            "Tollgate cluster facts fixed at creation",
            config.meta_replicas,
            Duration::ZERO,
        )
        .await?;
        record_partitions(&meta, &config.meta_bucket, partitions.get()).await?;

        let stream = ensure(
            &jetstream,
            Want::stream(&config),
            jetstream.create_stream(stream::Config {
                name: config.stream_name.clone(),
                description: Some("Tollgate receipts log, one subject per payer partition".into()),
                subjects: vec![all_subjects()],
                num_replicas: config.stream_replicas,
                max_bytes: config.stream_max_bytes,
                duplicate_window: config.duplicate_window(),
                // A full log refuses publishes: dropping old messages could drop receipts no
                // owner has applied yet.
                discard: stream::DiscardPolicy::New,
                storage: stream::StorageType::File,
                ..Default::default()
            }),
            async || jetstream.get_stream(&config.stream_name).await,
        )
        .await?;

        let lease_store = open_bucket(
            &jetstream,
            &config.lease_bucket,
            "Tollgate partition leases",
            config.lease_replicas,
            config.lease_ttl(),
        )
        .await?;

        let (checkpoints, checkpoint_stream) = open_objects(
            &jetstream,
            &config.checkpoint_bucket,
            "Tollgate partition checkpoints",
            (config.checkpoint_replicas, config.checkpoint_max_bytes),
        )
        .await?;
        let (summaries, summary_stream) = open_objects(
            &jetstream,
            &config.summary_bucket,
            "Tollgate partitions' summaries of sealed epochs",
            (config.summary_replicas, -1),
        )
        .await?;
        info!(
            node = %config.node_id,
            partitions = partitions.get(),
            stream = %config.stream_name,
            "joined the cluster"
        );
        let leases = Leases::new(
            lease_store,
            config.node_id.clone(),
            config.lease_ttl(),
            config.lease_heartbeat(),
        );
        Ok(Cluster {
            config,
            partitions,
            jetstream,
            stream,
            checkpoints,
            checkpoint_stream,
            summaries,
            summary_stream,
            meta,
            leases,
        })
    }

    /// The cluster's partition count (the one recorded at creation, equal to ours).
    pub fn partitions(&self) -> NonZeroU32 {
        self.partitions
    }

    /// The configuration this node joined with.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// JetStream on this node's connection, for publishing to and consuming the log.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The receipts log.
    pub fn stream(&self) -> &stream::Stream {
        &self.stream
    }

    /// The checkpoint store.
    pub fn checkpoints(&self) -> &object_store::ObjectStore {
        &self.checkpoints
    }

    /// The stream behind the checkpoint store.
    pub(crate) fn checkpoint_stream(&self) -> &stream::Stream {
        &self.checkpoint_stream
    }

    /// The summary store.
    pub(crate) fn summaries(&self) -> &object_store::ObjectStore {
        &self.summaries
    }

    /// The stream behind the summary store.
    pub(crate) fn summary_stream(&self) -> &stream::Stream {
        &self.summary_stream
    }

    /// The meta bucket.
    pub(crate) fn meta(&self) -> &kv::Store {
        &self.meta
    }

    /// This node's access to the partition leases.
    pub fn leases(&self) -> &Leases {
        &self.leases
    }
}

// The object store handle has no Debug.
impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("config", &self.config)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

/// The settings of one resource that every node must agree on, as the server reports them back
/// (each KV bucket and object store is a stream underneath).
#[derive(Debug)]
struct Want {
    resource: String,
    stream: String,
    subjects: Option<Vec<String>>,
    replicas: usize,
    max_age: Duration,
    max_bytes: i64,
    per_subject: i64,
    duplicate_window: Option<Duration>,
}

impl Want {
    fn stream(config: &ClusterConfig) -> Want {
        Want {
            resource: format!("stream {}", config.stream_name),
            stream: config.stream_name.clone(),
            subjects: Some(vec![all_subjects()]),
            replicas: config.stream_replicas,
            max_age: Duration::ZERO,
            max_bytes: config.stream_max_bytes,
            per_subject: -1,
            duplicate_window: Some(config.duplicate_window()),
        }
    }

    fn kv(bucket: &str, replicas: usize, max_age: Duration) -> Want {
        Want {
            resource: format!("KV bucket {bucket}"),
            stream: format!("KV_{bucket}"),
            subjects: Some(vec![format!("$KV.{bucket}.>")]),
            replicas,
            max_age,
            max_bytes: -1,
            per_subject: 1,
            duplicate_window: None,
        }
    }

    fn objects(bucket: &str, replicas: usize, max_bytes: i64) -> Want {
        Want {
            resource: format!("object store {bucket}"),
            stream: format!("OBJ_{bucket}"),
            subjects: None,
            replicas,
            max_age: Duration::ZERO,
            max_bytes,
            per_subject: -1,
            duplicate_window: None,
        }
    }

    /// The first setting in which the existing resource differs from ours.
    fn mismatch(&self, theirs: &stream::Config) -> Option<ClusterError> {
        // The server reports "no limit" as -1 whatever the request said.
        let limit = |n: i64| if n <= 0 { -1 } else { n };
        let mut differences = vec![
            (
                "replicas",
                self.replicas.to_string(),
                theirs.num_replicas.to_string(),
            ),
            (
                "max_age",
                format!("{:?}", self.max_age),
                format!("{:?}", theirs.max_age),
            ),
            (
                "max_bytes",
                limit(self.max_bytes).to_string(),
                limit(theirs.max_bytes).to_string(),
            ),
            (
                "max_msgs_per_subject",
                limit(self.per_subject).to_string(),
                limit(theirs.max_messages_per_subject).to_string(),
            ),
        ];
        if let Some(subjects) = &self.subjects {
            differences.push(("subjects", subjects.join(","), theirs.subjects.join(",")));
        }
        if let Some(window) = self.duplicate_window {
            differences.push((
                "duplicate_window",
                format!("{window:?}"),
                format!("{:?}", theirs.duplicate_window),
            ));
        }
        differences
            .into_iter()
            .find(|(_, ours, theirs)| ours != theirs)
            .map(|(field, ours, theirs)| ClusterError::Mismatch {
                resource: self.resource.clone(),
                field,
                ours,
                theirs,
            })
    }
}

/// Runs `create`, which succeeds when the resource is new or exists with exactly our settings
/// (JetStream's create is idempotent). When it fails and the resource exists, names the
/// setting that differs, or opens it with `open` when none does: another node's create raced
/// ours (a 2.9 server may leave the second of two simultaneous creates unanswered).
async fn ensure<T, E, O, F>(
    jetstream: &jetstream::Context,
    want: Want,
    create: impl Future<Output = Result<T, E>>,
    open: F,
) -> Result<T, ClusterError>
where
    E: std::error::Error + Send + Sync + 'static,
    O: std::error::Error + Send + Sync + 'static,
    F: AsyncFnOnce() -> Result<T, O>,
{
    let err = match create.await {
        Ok(made) => {
            await_leader(jetstream, &want).await?;
            return Ok(made);
        }
        Err(err) => err,
    };
    let Ok(existing) = jetstream.get_stream(&want.stream).await else {
        return Err(ClusterError::Resource {
            resource: want.resource,
            source: Box::new(err),
        });
    };
    if let Some(mismatch) = want.mismatch(&existing.cached_info().config) {
        return Err(mismatch);
    }
    let opened = open().await.map_err(|source| ClusterError::Resource {
        resource: want.resource.clone(),
        source: Box::new(source),
    })?;
    await_leader(jetstream, &want).await?;
    Ok(opened)
}

/// How long a new replicated stream may take to elect its leader before we give up.
const LEADER_DEADLINE: Duration = Duration::from_secs(30);

/// Waits until the resource's stream has a leader: a create returns once the stream is
/// assigned to servers, and requests reaching it before its replicas elected a leader go
/// unanswered.
async fn await_leader(jetstream: &jetstream::Context, want: &Want) -> Result<(), ClusterError> {
    let deadline = tokio::time::Instant::now() + LEADER_DEADLINE;
    loop {
        let led = match jetstream.get_stream(&want.stream).await {
            Ok(stream) => stream
                .cached_info()
                .cluster
                .as_ref()
                .is_none_or(|c| c.leader.is_some()),
            Err(_) => false,
        };
        if led {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ClusterError::NoLeader {
                resource: want.resource.clone(),
                waited: LEADER_DEADLINE,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates (or finds with our settings) a bucket keeping one value per key, and opens it.
async fn open_bucket(
    jetstream: &jetstream::Context,
    bucket: &str,
    description: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<kv::Store, ClusterError> {
    let want = Want::kv(bucket, replicas, max_age);
    let resource = want.resource.clone();
    ensure(
        jetstream,
        want,
        jetstream.create_stream(bucket_stream(bucket, description, replicas, max_age)),
        async || jetstream.get_stream(format!("KV_{bucket}")).await,
    )
    .await?;
    jetstream
        .get_key_value(bucket)
        .await
        .map_err(|err| ClusterError::Resource {
            resource,
            source: Box::new(err),
        })
}

/// Creates (or finds with our settings) an object store, and opens it and the stream behind it
/// (read directly: see `objects`). `(replicas, max_bytes)` as configured.
async fn open_objects(
    jetstream: &jetstream::Context,
    bucket: &str,
    description: &str,
    (replicas, max_bytes): (usize, i64),
) -> Result<(object_store::ObjectStore, stream::Stream), ClusterError> {
    let store = ensure(
        jetstream,
        Want::objects(bucket, replicas, max_bytes),
        jetstream.create_object_store(object_store::Config {
            bucket: bucket.to_string(),
            description: Some(description.to_string()),
            num_replicas: replicas,
            max_bytes,
            ..Default::default()
        }),
        async || jetstream.get_object_store(bucket).await,
    )
    .await?;
    let stream = jetstream
        .get_stream(format!("OBJ_{bucket}"))
        .await
        .map_err(|source| ClusterError::Resource {
            resource: format!("object store {bucket}"),
            source: source.into(),
        })?;
    Ok((store, stream))
}

/// Records `ours` as the cluster's partition count if none is recorded yet, else checks it.
/// Retried while the bucket does not answer (a just-created bucket may still be settling its
/// leader): a retried write that had landed fails its compare-and-set and reads back our count.
async fn record_partitions(meta: &kv::Store, bucket: &str, ours: u32) -> Result<(), ClusterError> {
    let deadline = tokio::time::Instant::now() + LEADER_DEADLINE;
    loop {
        match try_record_partitions(meta, bucket, ours).await {
            Err(ClusterError::Resource { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            done => return done,
        }
    }
}

async fn try_record_partitions(
    meta: &kv::Store,
    bucket: &str,
    ours: u32,
) -> Result<(), ClusterError> {
    let failed = |source: NatsError| ClusterError::Resource {
        resource: format!("KV bucket {bucket}"),
        source,
    };
    let mut current = latest(meta, PARTITIONS_KEY).await.map_err(failed)?;
    if let Some(expect) = current.vacant_revision() {
        match meta
            .update(PARTITIONS_KEY, Bytes::from(ours.to_string()), expect)
            .await
        {
            Ok(_) => {
                info!(partitions = ours, "created the cluster's partition record");
                return Ok(());
            }
            // Another node recorded it first: check its count like any later node.
            Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                current = latest(meta, PARTITIONS_KEY).await.map_err(failed)?;
            }
            Err(err) => return Err(failed(Box::new(err))),
        }
    }
    let Latest::Value(message) = current else {
        return Err(ClusterError::PartitionRecord {
            value: "(removed)".to_string(),
        });
    };
    let value = String::from_utf8_lossy(&message.payload).into_owned();
    let cluster: u32 = value
        .parse()
        .map_err(|_| ClusterError::PartitionRecord { value })?;
    if cluster != ours {
        return Err(ClusterError::PartitionCount { cluster, ours });
    }
    Ok(())
}

/// `url` without a `user:password@` (or token) before its host, for errors and logs. Only the
/// authority's credentials: a NATS URL carries nothing else secret. (The RPC URL's masking in
/// `tools` also hides paths, which an RPC provider may put a key in.)
fn without_credentials(url: &str) -> String {
    let Some((credentials, host)) = url.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once("://") {
        Some((scheme, _)) => format!("{scheme}://***@{host}"),
        None => format!("***@{host}"),
    }
}

/// Where `nats-server` is on this machine: on PATH, or in /usr/sbin where Debian's package puts it
/// (not on a non-root user's PATH). For the tests and benches that start real servers.
pub fn nats_server_binary() -> Option<std::path::PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([std::path::PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::without_credentials;

    #[test]
    fn connect_errors_name_servers_without_their_credentials() {
        for (url, shown) in [
            ("nats://alice:s3cret@h1:4222", "nats://***@h1:4222"),
            ("nats://tok3n@h2:4222", "nats://***@h2:4222"),
            ("nats://h3:4222", "nats://h3:4222"),
            ("u:p@h4:4222", "***@h4:4222"),
            ("h5:4222", "h5:4222"),
        ] {
            assert_eq!(without_credentials(url), shown);
        }
    }
}
