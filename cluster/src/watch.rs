//! The funds watcher's way into the partitions' logs: the chain's funds news, for every owner's
//! funds check.
//!
//! One elected node (whichever holds [`WATCHER_LEASE`], [`FundsLog::watch`]) reads the
//! contract's events and publishes each into the log of its payer's partition as a
//! [`Mark::Funds`] (a voided epoch into every partition, as [`Mark::Voided`]). Owners apply them
//! in log order with the parts, so a payer's funds check is the same on every owner that ever
//! applies the log, and exact at the receipt's place in it.
//!
//! **Exactly once.** An owner's ledger ignores a funds event at or before its funds cursor (the
//! chain position of the last one applied), so a partition's events must reach its log in chain
//! order: [`FundsLog::publish`] sends a partition's news one after another, each stored before
//! the next is sent (partitions in parallel). How far the watcher got, the first block whose
//! events are not all in the logs, is recorded in the meta bucket (`funds.next_block`) only after
//! the logs hold them, so a watcher that dies in between, or one that lost its lease while
//! paused, publishes some events again: stored once within the log's duplicate window (by the
//! chain position in the message id), ignored by the cursor after it.
//!
//! **Withdrawal requests not yet confirmed** are refused spend at once, as in standalone mode:
//! each partition gets the set of its payers' unconfirmed requests as one
//! [`Mark::HeadWithdrawals`] that replaces the last, published when the set changes
//! ([`HeadSets`]), to every partition at the start of each term (the last holder's sets are
//! not known), and to every partition again every so often (the caller starts a new
//! [`FundsLog::unknown_head_sets`]), which replaces a stale set a paused old holder published
//! after the new one's.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use async_nats::jetstream;
use bytes::Bytes;
use futures::future::{join_all, try_join_all};
use tollgate_engine::ledger::{FundsKind, HeadWithdrawals};

use crate::error::NatsError;
use crate::kv::{Latest, latest};
use crate::lease::{LeaseKeeper, Leases, WATCHER_LEASE};
use crate::mark_log::publish_mark;
use crate::part::Mark;
use crate::partition::partition_of;
use crate::resources::Cluster;

/// The meta bucket's key for the first block whose funds events are not all in the logs.
const NEXT_BLOCK_KEY: &str = "funds.next_block";

/// Why the watcher's reads or writes of the logs and its progress failed: tried again later.
#[derive(Debug, thiserror::Error)]
pub enum FundsLogError {
    #[error("cannot {what}: {source}")]
    Nats {
        what: &'static str,
        source: NatsError,
    },
    /// The progress record holds something else than a block number.
    #[error("the meta bucket's `{NEXT_BLOCK_KEY}` holds {value:?}, not a block number")]
    BadProgress { value: String },
    /// Only funds events (of a payer: not the standalone ledger's block-scanned cursor moves)
    /// and voided epochs are the watcher's to publish.
    #[error("not a funds watcher's mark: {mark:?}")]
    NotNews { mark: Mark },
}

fn nats(what: &'static str) -> impl FnOnce(NatsError) -> FundsLogError {
    move |source| FundsLogError::Nats { what, source }
}

/// The funds watcher's access to the logs and to its progress record.
#[derive(Clone)]
pub struct FundsLog {
    jetstream: jetstream::Context,
    meta: async_nats::jetstream::kv::Store,
    leases: Leases,
    partitions: NonZeroU32,
}

impl std::fmt::Debug for FundsLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FundsLog")
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl FundsLog {
    pub fn new(cluster: &Cluster) -> FundsLog {
        FundsLog {
            jetstream: cluster.jetstream().clone(),
            meta: cluster.meta().clone(),
            leases: cluster.leases().clone(),
            partitions: cluster.partitions(),
        }
    }

    /// Competes for the funds watcher's lease, and keeps it while held.
    pub fn watch(&self) -> LeaseKeeper {
        self.leases.keep(WATCHER_LEASE)
    }

    /// The first block whose events are not all in the logs; `None` before the first record.
    pub async fn next_block(&self) -> Result<Option<u64>, FundsLogError> {
        // From the stream's leader: a replica behind it would send the watcher further back
        // (harmless, but work).
        let entry = latest(&self.meta, NEXT_BLOCK_KEY)
            .await
            .map_err(nats("read the funds watcher's progress"))?;
        let Latest::Value(message) = entry else {
            return Ok(None);
        };
        let value = String::from_utf8_lossy(&message.payload).into_owned();
        value
            .parse()
            .map(Some)
            .map_err(|_| FundsLogError::BadProgress { value })
    }

    /// Records that every funds event before `block` is in the logs.
    pub async fn record_next_block(&self, block: u64) -> Result<(), FundsLogError> {
        self.meta
            .put(NEXT_BLOCK_KEY, Bytes::from(block.to_string()))
            .await
            .map_err(|error| nats("record the funds watcher's progress")(error.into()))?;
        Ok(())
    }

    /// Publishes `news` (funds events and voided epochs, in chain order): a funds event into
    /// its payer's partition, a voided epoch into every partition; each partition's in order,
    /// each stored before the next is sent. Returns once the logs hold all of it.
    pub async fn publish(&self, news: &[Mark]) -> Result<(), FundsLogError> {
        let mut by_partition: BTreeMap<u32, Vec<&Mark>> = BTreeMap::new();
        for mark in news {
            match mark {
                Mark::Funds(event) if event.kind != FundsKind::BlockScanned => by_partition
                    .entry(partition_of(&event.payer, self.partitions))
                    .or_default()
                    .push(mark),
                Mark::Voided(_) => {
                    for partition in 0..self.partitions.get() {
                        by_partition.entry(partition).or_default().push(mark);
                    }
                }
                other => {
                    return Err(FundsLogError::NotNews {
                        mark: other.clone(),
                    });
                }
            }
        }
        try_join_all(
            by_partition
                .into_iter()
                .map(|(partition, marks)| async move {
                    for mark in marks {
                        publish_mark(&self.jetstream, partition, mark).await?;
                    }
                    Ok::<(), NatsError>(())
                }),
        )
        .await
        .map_err(nats("publish funds news"))?;
        Ok(())
    }

    /// Publishes into each partition whose set of unconfirmed withdrawal requests (its payers'
    /// share of `requests`) differs from the one `sets` last published there.
    pub async fn publish_head(
        &self,
        requests: &HeadWithdrawals,
        sets: &mut HeadSets,
    ) -> Result<(), FundsLogError> {
        let mut split = vec![HeadWithdrawals::default(); sets.0.len()];
        for (payer, amount) in &requests.0 {
            let partition = partition_of(payer, self.partitions) as usize;
            if let Some(set) = split.get_mut(partition) {
                set.0.insert(*payer, *amount);
            }
        }
        let changed: Vec<_> = split
            .into_iter()
            .enumerate()
            .filter(|(partition, set)| sets.0[*partition].as_ref() != Some(set))
            .collect();
        // A publish that fails may still have been stored: until one is known to be, the
        // partition's set is unknown, so the next call publishes it whatever it is.
        for (partition, _) in &changed {
            sets.0[*partition] = None;
        }
        let published = join_all(changed.into_iter().map(|(partition, set)| async move {
            let mark = Mark::HeadWithdrawals(set.clone());
            let stored = publish_mark(&self.jetstream, partition as u32, &mark).await;
            (partition, stored.map(|()| set))
        }))
        .await;
        let mut failed = None;
        for (partition, stored) in published {
            match stored {
                Ok(set) => sets.0[partition] = Some(set),
                Err(error) => failed = Some(error),
            }
        }
        match failed {
            None => Ok(()),
            Some(error) => Err(nats("publish unconfirmed withdrawal requests")(error)),
        }
    }

    /// No partition's set known: the first [`FundsLog::publish_head`] publishes into every one.
    pub fn unknown_head_sets(&self) -> HeadSets {
        HeadSets(vec![None; self.partitions.get() as usize])
    }
}

/// Per partition, the set of unconfirmed withdrawal requests last published into its log by
/// this watcher (`None`: not known).
#[derive(Debug)]
pub struct HeadSets(Vec<Option<HeadWithdrawals>>);
