//! Rebalancing: how many partitions a node may hold. Every node announces itself in the lease
//! bucket (`n.<node id>`, written every heartbeat, aged out by the servers one TTL after its last
//! write like a lease, removed when the node stops) and counts the announcements there: with M
//! nodes, a node holds at most ceil(P / M) leases. A node below its share takes vacant
//! partitions; a node above it (the one that was alone when its peers joined) releases its
//! highest-numbered partition, one per heartbeat so partitions move one at a time, by stopping
//! its owner and deleting the lease so another node takes it without waiting out a TTL. A node
//! that stops deletes its leases the same way once its owners stopped. A released lease is
//! taken only within the share; a lapsed one (its holder died, or failed and stopped renewing)
//! beyond it, so no partition waits for a count to catch up, and the extra is handed on again.
//!
//! This module is the arithmetic; the lease keepers ask it before acquiring and after renewing,
//! and the node's announcing loop tells it how many nodes there are.
//!
//! Ownership still changes only through the lease's compare-and-set, and two owners of a
//! partition for a moment give the same verdicts (see `node`): nodes that disagree on M for a
//! heartbeat at worst hold a partition too many or leave one vacant a little longer.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::info;

/// How a vacant lease became vacant, as far as its entry tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Vacancy {
    /// Deleted by its holder (a release): handed on.
    Released,
    /// No entry: never taken, or its holder stopped renewing it a TTL ago (dead or failing).
    Lapsed,
}

/// The partitions one node holds or is acquiring, and how many it may.
#[derive(Debug)]
pub(crate) struct Share {
    partitions: u32,
    /// ceil(partitions / nodes); 0 until the nodes were first counted, so a node that just
    /// started takes nothing before it knows its peers.
    limit: AtomicU32,
    /// Held or being acquired.
    held: Mutex<BTreeSet<u32>>,
    /// At most one release per `pace`.
    last_release: Mutex<Option<Instant>>,
    pace: Duration,
    /// Set once the node is stopping: it takes no partition from then on.
    leaving: AtomicBool,
}

impl Share {
    /// No limit: every partition may be held (a lease keeper outside a node).
    pub(crate) fn unlimited() -> Arc<Share> {
        Arc::new(Share {
            partitions: u32::MAX,
            limit: AtomicU32::new(u32::MAX),
            held: Mutex::default(),
            last_release: Mutex::default(),
            pace: Duration::ZERO,
            leaving: AtomicBool::new(false),
        })
    }

    /// A node's share of `partitions`, releasing at most one per `pace` (the heartbeat).
    pub(crate) fn new(partitions: u32, pace: Duration) -> Arc<Share> {
        Arc::new(Share {
            partitions,
            limit: AtomicU32::new(0),
            held: Mutex::default(),
            last_release: Mutex::default(),
            pace,
            leaving: AtomicBool::new(false),
        })
    }

    fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire) as usize
    }

    /// `nodes` announced themselves (this one included): the share is ceil(P / nodes).
    pub(crate) fn set_nodes(&self, nodes: u32) {
        let limit = self.partitions.div_ceil(nodes.max(1));
        let before = self.limit.swap(limit, Ordering::AcqRel);
        if before != limit {
            info!(nodes, share = limit, "partition share changed");
        }
    }

    /// Reserves a place for the vacant `partition` before acquiring its lease: `false` when this
    /// node is stopping, has not counted the nodes yet, or already holds (or is acquiring) its
    /// share and the lease was released to be handed on. A lease that lapsed (its holder died
    /// or keeps failing) is taken beyond the share: when the shares add up to exactly P, or a
    /// counted node cannot own its share, nobody else would take it; the taker releases it
    /// again, one per heartbeat, while over its share.
    pub(crate) fn reserve(&self, partition: u32, vacancy: Vacancy) -> bool {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let limit = self.limit();
        held.contains(&partition)
            || (!self.leaving.load(Ordering::Acquire)
                && limit > 0
                && (held.len() < limit || vacancy == Vacancy::Lapsed)
                && held.insert(partition))
    }

    /// The node is stopping: it keeps what it holds until its owners stop, and takes nothing
    /// more (not even what its stopping peers release meanwhile).
    pub(crate) fn leave(&self) {
        self.leaving.store(true, Ordering::Release);
    }

    /// `partition`'s lease is not held (any more, or the acquisition failed).
    pub(crate) fn gave_up(&self, partition: u32) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&partition);
    }

    /// Whether to release `partition` now: this node holds more than its share, `partition` is
    /// its highest-numbered one, and nothing was released in the last `pace`.
    pub(crate) fn release_now(&self, partition: u32) -> bool {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.len() <= self.limit() || held.last() != Some(&partition) {
            return false;
        }
        let mut last = self
            .last_release
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < self.pace) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_holds_at_most_its_share_and_releases_its_highest_partition_first() {
        use Vacancy::{Lapsed, Released};
        let share = Share::new(16, Duration::from_secs(3600));
        assert!(
            !share.reserve(0, Lapsed),
            "nothing before the nodes are counted"
        );
        share.set_nodes(1);
        assert!((0..16).all(|p| share.reserve(p, Released)));
        assert!(!share.release_now(15), "alone, it holds them all");
        share.set_nodes(3);
        assert!(!share.release_now(14), "not its highest");
        assert!(share.release_now(15));
        share.gave_up(15);
        assert!(!share.release_now(14), "one release per pace");
        assert!(
            !share.reserve(15, Released),
            "over its share, it takes no released partition"
        );
        let share = Share::new(16, Duration::ZERO);
        share.set_nodes(3);
        assert!((0..6).all(|p| share.reserve(p, Released)));
        assert!(!share.reserve(6, Released), "ceil(16 / 3) = 6");
        assert!(share.reserve(5, Released), "one it holds stays reserved");
        assert!(
            share.reserve(7, Lapsed),
            "a lapsed lease is taken beyond the share"
        );
        assert!(share.release_now(7), "and handed on again");
        share.gave_up(7);
        share.gave_up(0);
        assert!(share.reserve(6, Released));
        share.leave();
        share.gave_up(6);
        assert!(!share.reserve(6, Lapsed), "a stopping node takes nothing");
        assert!(share.reserve(5, Released), "what it holds stays");
    }
}
