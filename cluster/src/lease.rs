//! Partition leases: at most one node owns a partition at a time.
//!
//! Each partition's lease is the key `p.<partition>` of the lease bucket, whose value names the
//! holder and the lease's token. Every write is a compare-and-set on the key's revision (the
//! stream sequence of its latest entry), so of two nodes writing from the same revision exactly
//! one succeeds. The bucket's max age is the lease TTL: the servers delete an entry once it is
//! older than that, so a lease not renewed in time disappears and the key is vacant again.
//!
//! - **Acquire**: read the key from the stream leader; when it is vacant, write our record
//!   expecting the vacant revision (0 when no entry is left). A live entry is never overwritten.
//! - **Renew** (every heartbeat): write the same record expecting our last revision. A failed
//!   compare-and-set means the entry expired or another node took it: the lease is lost.
//! - **Release**: a holder that stops cleanly, or holds more than its share of the partitions
//!   (see `share`), deletes its entry expecting its last revision: the key is vacant at once
//!   (its delete marker's revision is what the next acquire expects), not a TTL later. After a
//!   failure the holder only stops renewing, and the lease lapses.
//! - **Token**: the revision at which the lease was acquired. It stays the same across renewals
//!   and grows with every new owner (stream sequences never go back), so it fences writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::kv::{self, UpdateErrorKind};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::error::{LeaseError, NatsError};
use crate::fence::Fence;
use crate::kv::{Latest, latest};
use crate::listing::subjects;
use crate::share::{Share, Vacancy};

/// A lease's stored value.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    holder: String,
    /// The lease's token; 0 in the acquiring write, which cannot know its own revision, means
    /// "this entry's revision".
    token: u64,
}

/// Who holds a partition now, as the lease bucket's leader has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub node: String,
    pub token: u64,
    /// Revision of the latest renewal.
    pub revision: u64,
}

/// A lease this node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    partition: u32,
    token: u64,
    revision: u64,
    /// When the write that last extended the lease was sent. The servers stamped it later, so
    /// their expiry comes after `sent + ttl` (as long as clocks run at the same rate; their
    /// settings need not agree).
    sent: Instant,
    ttl: Duration,
}

impl Lease {
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The fencing token: the revision at which this lease was acquired.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lease bucket revision of the latest acquisition or renewal: grows with every
    /// heartbeat, while the token stays.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The fence this owner stamps on its writes.
    pub fn fence(&self) -> Fence {
        Fence {
            partition: self.partition,
            token: self.token,
        }
    }

    /// Until when this node may act as the owner without a further renewal, by its own
    /// monotonic clock (never by comparing wall clocks).
    pub fn valid_until(&self) -> Instant {
        self.sent + self.ttl
    }
}

/// This node's access to the lease bucket.
#[derive(Debug, Clone)]
pub struct Leases {
    store: kv::Store,
    node: String,
    ttl: Duration,
    heartbeat: Duration,
}

/// The settlement coordinator's lease (`coordinator` in the bucket), kept like a partition's
/// under a number no partition has (a cluster has at most [`crate::PARTITIONS_MAX`]).
pub const COORDINATOR_LEASE: u32 = u32::MAX;

/// The funds watcher's lease (`watcher` in the bucket), kept the same way.
pub const WATCHER_LEASE: u32 = u32::MAX - 1;

/// The lease's key in the bucket, which also names it in the log: `p.<partition>`,
/// `coordinator` or `watcher`.
fn key(partition: u32) -> String {
    match partition {
        COORDINATOR_LEASE => "coordinator".to_owned(),
        WATCHER_LEASE => "watcher".to_owned(),
        _ => format!("p.{partition}"),
    }
}

/// The lease bucket's keys that announce nodes: `n.<node id>`.
const NODE_KEY_PREFIX: &str = "n.";

fn node_key(node: &str) -> String {
    format!("{NODE_KEY_PREFIX}{node}")
}

impl Leases {
    pub(crate) fn new(store: kv::Store, node: String, ttl: Duration, heartbeat: Duration) -> Self {
        Self {
            store,
            node,
            ttl,
            heartbeat,
        }
    }

    /// This node's name, as written in the leases it holds.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// How often leases are renewed (and this node announced).
    pub(crate) fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Counts the nodes announced (this one included), then writes this node's announcement
    /// (`n.<node id>`, aged out one TTL after its last write). Nothing is written when the count
    /// fails: a node that cannot count its peers cannot keep to its share, so it must not be
    /// counted by them either.
    pub(crate) async fn announce(&self) -> Result<u32, NatsError> {
        let own = node_key(&self.node);
        let subjects = subjects(
            &self.store.stream,
            format!("{}{NODE_KEY_PREFIX}>", self.store.prefix),
        )
        .await?;
        let counted = subjects
            .keys()
            .any(|subject| subject.strip_prefix(&self.store.prefix) == Some(own.as_str()));
        self.store.put(own, Bytes::from(self.node.clone())).await?;
        let nodes = subjects.len() + usize::from(!counted);
        Ok(u32::try_from(nodes).unwrap_or(u32::MAX))
    }

    /// How many announcements in a row may fail before this node withdraws: by then the last
    /// one it wrote is about to age out anyway.
    pub(crate) fn announce_failures_max(&self) -> u32 {
        let beats = self.ttl.as_millis() / self.heartbeat.as_millis().max(1);
        u32::try_from(beats).unwrap_or(u32::MAX).max(1)
    }

    /// Removes this node's announcement, leaving nothing behind to count (a KV delete would
    /// leave a marker, counted until it ages out).
    pub(crate) async fn withdraw(&self) -> Result<(), NatsError> {
        self.store
            .stream
            .purge()
            .filter(format!("{}{}", self.store.prefix, node_key(&self.node)))
            .await?;
        Ok(())
    }

    /// Gives `lease` up at once rather than letting it age out: deletes its entry, expecting
    /// its last revision, so another node may acquire it at the next heartbeat. Harmless when
    /// the lease was lost meanwhile (the compare-and-set fails).
    pub(crate) async fn release(&self, lease: &Lease) {
        let partition = lease.partition;
        match self
            .store
            .delete_expect_revision(key(partition), Some(lease.revision))
            .await
        {
            Ok(()) => info!(lease = %key(partition), token = lease.token, "lease released"),
            Err(error) => {
                debug!(lease = %key(partition), %error, "lease not released; it ages out instead")
            }
        }
    }

    async fn latest(&self, partition: u32) -> Result<Latest, LeaseError> {
        latest(&self.store, &key(partition))
            .await
            .map_err(|source| LeaseError::Nats { partition, source })
    }

    fn holder_of(partition: u32, latest: &Latest) -> Result<Option<Holder>, LeaseError> {
        let Latest::Value(message) = latest else {
            return Ok(None);
        };
        let record: Record =
            serde_json::from_slice(&message.payload).map_err(|err| LeaseError::Record {
                partition,
                why: err.to_string(),
            })?;
        Ok(Some(Holder {
            node: record.holder,
            token: if record.token == 0 {
                message.sequence
            } else {
                record.token
            },
            revision: message.sequence,
        }))
    }

    /// The current holder of `partition`, `None` when its lease expired or was never taken.
    pub async fn holder(&self, partition: u32) -> Result<Option<Holder>, LeaseError> {
        Self::holder_of(partition, &self.latest(partition).await?)
    }

    fn record(&self, partition: u32, token: u64) -> Result<Bytes, LeaseError> {
        let record = Record {
            holder: self.node.clone(),
            token,
        };
        serde_json::to_vec(&record)
            .map(Bytes::from)
            .map_err(|err| LeaseError::Record {
                partition,
                why: err.to_string(),
            })
    }

    /// Takes `partition` if nobody holds it. Refused with [`LeaseError::Held`] while another
    /// node's lease is live, and with [`LeaseError::Contended`] when another node won the race.
    pub async fn acquire(&self, partition: u32) -> Result<Lease, LeaseError> {
        self.acquire_if(partition, |_| true)
            .await?
            .ok_or(LeaseError::Contended { partition })
    }

    /// [`Leases::acquire`], asking `admit` once the partition is found vacant (never for a held
    /// one, so a node's share is spent only on partitions it can get) and how; `None` when
    /// refused.
    async fn acquire_if(
        &self,
        partition: u32,
        admit: impl FnOnce(Vacancy) -> bool,
    ) -> Result<Option<Lease>, LeaseError> {
        let latest = self.latest(partition).await?;
        let Some(expect) = latest.vacant_revision() else {
            let holder = Self::holder_of(partition, &latest)?;
            return Err(match holder {
                Some(h) => LeaseError::Held {
                    partition,
                    holder: h.node,
                    token: h.token,
                },
                None => LeaseError::Contended { partition },
            });
        };
        let vacancy = match latest {
            Latest::Absent => Vacancy::Lapsed,
            _ => Vacancy::Released,
        };
        if !admit(vacancy) {
            return Ok(None);
        }
        let sent = Instant::now();
        match self
            .store
            .update(key(partition), self.record(partition, 0)?, expect)
            .await
        {
            Ok(revision) => Ok(Some(Lease {
                partition,
                token: revision,
                revision,
                sent,
                ttl: self.ttl,
            })),
            Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => {
                Err(LeaseError::Contended { partition })
            }
            Err(err) => Err(LeaseError::Nats {
                partition,
                source: Box::new(err),
            }),
        }
    }

    /// Extends `lease` by one TTL. [`LeaseError::Lost`] when it expired or another node took it.
    pub async fn renew(&self, lease: &mut Lease) -> Result<(), LeaseError> {
        let sent = Instant::now();
        match self
            .store
            .update(
                key(lease.partition),
                self.record(lease.partition, lease.token)?,
                lease.revision,
            )
            .await
        {
            Ok(revision) => {
                lease.revision = revision;
                lease.sent = sent;
                Ok(())
            }
            Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => Err(LeaseError::Lost {
                partition: lease.partition,
                token: lease.token,
            }),
            Err(err) => Err(LeaseError::Nats {
                partition: lease.partition,
                source: Box::new(err),
            }),
        }
    }

    /// The receiver's fencing check on a message about `partition`: admitted only when it carries
    /// the token of the partition's current lease. Returns the fence it carried.
    pub async fn check_fence(
        &self,
        partition: u32,
        headers: Option<&HeaderMap>,
    ) -> Result<Fence, LeaseError> {
        let fence = Fence::read(headers)?;
        let current = self.holder(partition).await?.map(|h| h.token);
        fence.admit(partition, current)?;
        Ok(fence)
    }

    /// Starts taking and keeping `partition`: tries to acquire it every heartbeat while vacant,
    /// renews it every heartbeat while held.
    pub fn keep(&self, partition: u32) -> LeaseKeeper {
        self.keep_within(partition, Share::unlimited())
    }

    /// [`Leases::keep`] within this node's `share`: acquires only while the node holds less
    /// than its share, and releases the lease when the share says so.
    pub(crate) fn keep_within(&self, partition: u32, share: Arc<Share>) -> LeaseKeeper {
        let (held_tx, held) = watch::channel(None);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(keep(self.clone(), partition, share, held_tx, stopped));
        LeaseKeeper { held, stop, task }
    }
}

/// A running heartbeat for one partition (see [`Leases::keep`]). Dropping it stops the heartbeat.
#[derive(Debug)]
pub struct LeaseKeeper {
    held: watch::Receiver<Option<Lease>>,
    /// Dropped to stop the heartbeat; `true` first to give the lease up at once.
    stop: watch::Sender<bool>,
    task: JoinHandle<Option<Lease>>,
}

impl LeaseKeeper {
    /// The lease while this node holds it, `None` while it does not; changes on acquisition,
    /// every renewal and loss.
    pub fn held(&self) -> watch::Receiver<Option<Lease>> {
        self.held.clone()
    }

    /// Stops heartbeating and gives up the lease last held (deleted, so another node may take
    /// it at once; if that fails, the servers expire it one TTL after the last renewal), which
    /// it returns. For a clean stop, once the owner has stopped.
    pub async fn stop(self) -> Option<Lease> {
        self.stop.send_replace(true);
        self.lapse().await
    }

    /// Stops heartbeating and lets the lease last held lapse (the servers expire it one TTL after
    /// the last renewal), which it returns. After a failure: the partition is left to whichever
    /// node takes it first once it lapsed, rather than handed straight back to this one.
    pub async fn lapse(self) -> Option<Lease> {
        drop(self.stop);
        self.task.await.ok().flatten()
    }
}

async fn keep(
    leases: Leases,
    partition: u32,
    share: Arc<Share>,
    held_tx: watch::Sender<Option<Lease>>,
    mut stopped: watch::Receiver<bool>,
) -> Option<Lease> {
    let mut held: Option<Lease> = None;
    // Acquire failures in a row: an unreachable bucket is logged once, not every heartbeat.
    let mut failures = 0u32;
    loop {
        held = match held {
            None => match leases
                .acquire_if(partition, |vacancy| share.reserve(partition, vacancy))
                .await
            {
                Ok(Some(lease)) => {
                    info!(lease = %key(partition), token = lease.token, node = %leases.node, failures, "lease acquired");
                    failures = 0;
                    Some(lease)
                }
                // Vacant, but this node holds its share.
                Ok(None) => {
                    failures = 0;
                    None
                }
                Err(LeaseError::Held { .. } | LeaseError::Contended { .. }) => {
                    failures = 0;
                    None
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        warn!(lease = %key(partition), error = %err, "lease acquire failed; retrying every heartbeat");
                    } else {
                        debug!(lease = %key(partition), error = %err, failures, "lease acquire failed");
                    }
                    None
                }
            },
            Some(mut lease) => match leases.renew(&mut lease).await {
                Ok(()) if share.release_now(partition) => {
                    // The owner stops on seeing the lease gone; two owners for a moment give
                    // the same verdicts, so the next one need not wait for it.
                    held_tx.send_replace(None);
                    info!(
                        lease = %key(partition),
                        "releasing the lease: this node holds more than its share"
                    );
                    leases.release(&lease).await;
                    None
                }
                Ok(()) => Some(lease),
                Err(err @ LeaseError::Lost { .. }) => {
                    warn!(lease = %key(partition), error = %err, "lease lost");
                    None
                }
                // The servers may still count us as the holder: keep trying until our own
                // deadline for the lease passes.
                Err(err) if Instant::now() < lease.valid_until() => {
                    warn!(lease = %key(partition), error = %err, "lease renewal failed, retrying");
                    Some(lease)
                }
                Err(err) => {
                    warn!(lease = %key(partition), error = %err, "lease expired without a renewal");
                    None
                }
            },
        };
        if held.is_none() {
            share.gave_up(partition);
        }
        held_tx.send_replace(held.clone());
        tokio::select! {
            () = tokio::time::sleep(leases.heartbeat) => {}
            _ = stopped.changed() => break,
        }
    }
    if let Some(lease) = &held
        && *stopped.borrow()
    {
        leases.release(lease).await;
    }
    share.gave_up(partition);
    held
}
