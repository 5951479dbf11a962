//! A cluster's settlement coordinator (docs/CLUSTER.md, "Epochs"): every node runs one, and the
//! one holding the coordinator's lease closes epochs and commits them, one commit per epoch for
//! the whole cluster.
//!
//! It keeps nothing a restart or a new coordinator could lose: the chain says which epoch comes
//! next, the object store holds the partitions' summaries of it, and the log holds the marks.
//! Each step reads them again: when every partition's summary of the next epoch is stored, it
//! builds the epoch tree over the partition roots, nets the credits and commits (the submitter
//! sends only what the chain lacks, so a commit a lost coordinator began is finished, not
//! repeated); the next step, and the first of every term, writes `Committed(e - 1)` into every
//! log for the epoch the chain has last taken (unless the arbiter voided it); when none is stored and the epoch is
//! due and some partition's owner says its open epoch holds receipts (or amounts a voided epoch
//! carried in: funds news and marks alone seal nothing, so an idle cluster commits nothing), it
//! writes `Seal(e)` into every log; when some are, a coordinator that stopped half-way left them,
//! and it writes the seal marks again at once (each partition seals at the first).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use alloy::primitives::B256;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tollgate_cluster::telemetry::COORDINATOR;
use tollgate_cluster::{Epochs, Mark, OpenEpochs, Summary, written_off};
use tollgate_engine::PayerKey;
use tollgate_settle::epoch::EpochConfig;
use tollgate_settle::merkle::{MerkleError, PartitionedTree};
use tollgate_settle::submitter::{EpochCommit, OnchainEpoch, Overdraft, SubmitError, Submitter};
use tollgate_settle::telemetry as names;

use super::role;

/// The coordinator's duties, whenever this node holds the lease.
pub(super) struct Coordinator {
    pub(super) epochs: Epochs,
    pub(super) submitter: Submitter,
    pub(super) config: EpochConfig,
}

/// How often a due epoch whose partitions hold nothing is looked at again: receipts that arrive
/// on an idle cluster are sealed this long after, at most. One read of the log's state, and a
/// query per partition only if the log has grown since they last all said nothing.
const QUIET_RECHECK: Duration = Duration::from_secs(2);

/// How long a due epoch waits for an owner that cannot say what its open epoch holds (no owner
/// yet at a cluster's start, a lease moving, a replay from an older checkpoint, a node of a
/// release without the question) before it is sealed anyway, maybe empty. Short against the
/// epoch interval: the exit check budgets one interval from a receipt's acceptance to its seal,
/// and receipts anywhere else seal the epoch at once (an owner whose open epoch holds something
/// says so without catching up first).
const UNSURE_GRACE: Duration = Duration::from_secs(10);

/// What one coordinating term remembers between steps; a new term starts afresh.
struct Term {
    /// The epoch this term wrote seal marks for, until it is committed.
    marked: Option<u64>,
    /// The epoch whose commit marks this term wrote (or, voided, decided not to write).
    committed_marked: Option<u64>,
    /// When to look next whether the open epoch is to be sealed: an interval after this term's
    /// last seal marks (or its start), then every [`QUIET_RECHECK`] while it holds nothing.
    due: Instant,
    /// The log's last sequence when every owner last said its open epoch holds nothing.
    quiet_at: Option<u64>,
    /// Since when some partition's owner could not say what the epoch to seal holds (and none
    /// said something), and that epoch.
    unsure_since: Option<(u64, Instant)>,
    /// The epoch whose failure was last logged, so a failure repeated every tick is logged once.
    failing: Option<u64>,
    /// Shortfall marks this term wrote (epoch, payer, what the chain held): each is written
    /// again while the commit still reverts, but logged once.
    shortfalls: BTreeSet<(u64, PayerKey, u128)>,
}

/// Why a step did not finish: tried again at the next tick.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("the chain: {0}")]
    Chain(#[from] tollgate_settle::ChainError),
    #[error("the cluster: {0}")]
    Cluster(#[from] tollgate_cluster::EpochsError),
    /// Boxed: the submitter's error is large, and every step's result would carry its size.
    #[error("epoch {epoch}: {source}")]
    Commit {
        epoch: u64,
        source: Box<SubmitError>,
    },
    #[error("epoch {epoch}: {why}")]
    Summaries { epoch: u64, why: String },
}

impl Coordinator {
    /// Competes for the coordinator's lease until `shutdown`, coordinating while it holds it.
    pub(super) async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let keeper = self.epochs.coordinate();
        role::hold(
            "settlement coordinator",
            COORDINATOR,
            keeper,
            shutdown,
            || self.coordinate(),
        )
        .await;
        Ok(())
    }

    /// One term: a step every tick, forever (it ends when the lease is lost or on shutdown).
    async fn coordinate(&self) {
        let interval = Duration::from_millis(self.config.epoch_interval_ms);
        let mut term = Term {
            marked: None,
            committed_marked: None,
            due: Instant::now() + interval,
            quiet_at: None,
            unsure_since: None,
            failing: None,
            shortfalls: BTreeSet::new(),
        };
        loop {
            match self.step(&mut term, interval).await {
                Ok(()) => term.failing = None,
                Err((epoch, error)) => {
                    if term.failing != Some(epoch) {
                        tracing::error!(epoch, error = %error, "settlement: cannot close the epoch yet; trying again every tick");
                        term.failing = Some(epoch);
                    } else {
                        tracing::debug!(epoch, error = %error, "settlement: still failing");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(self.config.tick_ms)).await;
        }
    }

    async fn step(&self, term: &mut Term, interval: Duration) -> Result<(), (u64, StepError)> {
        let position = self
            .submitter
            .position()
            .await
            .map_err(|error| (0, error.into()))?;
        let (next, _) = position.next();
        let failed = |error: StepError| (next, error);
        // The commit marks of the epoch before, once per term and until they are all written:
        // the coordinator before may have stopped, or a publish failed, between the commit and
        // its marks, and the chain's position has moved past the epoch since. Never for a voided
        // epoch, whose amounts the chain did not move: the funds watcher's voided marks carry
        // them into each partition's open epoch.
        if let Some(previous) = next.checked_sub(1).filter(|&epoch| epoch > 0)
            && term.committed_marked != Some(previous)
        {
            if position.voided(previous) {
                tracing::warn!(
                    epoch = previous,
                    "the arbiter voided the epoch: no commit marks; the partitions carry its amounts into a later epoch at the funds watcher's voided marks"
                );
            } else {
                self.epochs
                    .mark(Mark::Committed(previous))
                    .await
                    .map_err(|error| failed(error.into()))?;
            }
            term.committed_marked = Some(previous);
        }
        let summaries = self
            .epochs
            .summaries(next)
            .await
            .map_err(|error| failed(error.into()))?;
        if summaries.iter().all(Option::is_some) {
            // Its commit marks go out at the next step, from the chain's position.
            self.commit(term, next, summaries.into_iter().flatten().collect())
                .await
                .map_err(failed)?;
            term.marked = None;
            return Ok(());
        }
        if term.marked == Some(next) {
            // The owners are sealing (or catching up first).
            return Ok(());
        }
        let left_half_done = summaries.iter().any(Option::is_some);
        if !left_half_done && Instant::now() < term.due {
            return Ok(());
        }
        if !left_half_done {
            let recheck = Instant::now() + interval.min(QUIET_RECHECK);
            // Read before asking: what lands later is past it.
            let tail = self
                .epochs
                .log_tail()
                .await
                .map_err(|error| failed(error.into()))?;
            if term.quiet_at == Some(tail) {
                term.due = recheck;
                return Ok(());
            }
            match self.epochs.open_epochs(next).await {
                OpenEpochs::Something => {}
                OpenEpochs::Nothing => {
                    term.quiet_at = Some(tail);
                    term.unsure_since = None;
                    term.due = recheck;
                    return Ok(());
                }
                OpenEpochs::Unsure => {
                    let since = match term.unsure_since {
                        Some((epoch, since)) if epoch == next => since,
                        _ => term.unsure_since.insert((next, Instant::now())).1,
                    };
                    if since.elapsed() < UNSURE_GRACE {
                        term.due = recheck;
                        return Ok(());
                    }
                    tracing::warn!(
                        epoch = next,
                        grace = ?UNSURE_GRACE,
                        "some partition's owner has not said what its open epoch holds: sealing anyway"
                    );
                }
            }
        }
        term.unsure_since = None;
        self.epochs
            .mark(Mark::Seal(next))
            .await
            .map_err(|error| failed(error.into()))?;
        term.marked = Some(next);
        term.due = Instant::now() + interval;
        metrics::gauge!(names::LAST_SEALED_EPOCH).set(next as f64);
        tracing::info!(
            epoch = next,
            "epoch marks written: every partition seals the epoch at its mark"
        );
        Ok(())
    }

    /// Writes the shortfall of `overdraft` into its payer's partition, based on the payer's cut
    /// in `summaries` (what the failed commit was built from); logged the first time this term.
    async fn shortfall(
        &self,
        term: &mut Term,
        summaries: &[Summary],
        overdraft: &Overdraft,
    ) -> Result<(), StepError> {
        let Overdraft {
            epoch,
            part,
            payer,
            available,
            amount,
        } = *overdraft;
        let based_on = written_off(
            summaries.iter().flat_map(|summary| &summary.shortfalls),
            Some(&payer),
        );
        self.epochs
            .shortfall(epoch, payer, (available, based_on))
            .await?;
        if term.shortfalls.insert((epoch, payer, available)) {
            tracing::warn!(
                epoch,
                part,
                payer = %payer,
                available,
                debited = amount,
                "payer's exit overtook its debit: the epoch is committed without the uncovered amount (shortfall) once the payer's partition has recorded it"
            );
        }
        Ok(())
    }

    /// Builds epoch `epoch`'s tree and net amounts from the partitions' summaries and commits
    /// it, returning once the commit is final. When a payer's exit has overtaken its debit
    /// (`Overdraft`), it writes a shortfall mark into the payer's partition instead and returns:
    /// the owner records the cut and stores its summary again, and a later step commits the
    /// epoch without the uncovered amount, so one payer never stops settlement for everyone.
    async fn commit(
        &self,
        term: &mut Term,
        epoch: u64,
        summaries: Vec<Summary>,
    ) -> Result<(), StepError> {
        let commit = epoch_commit(epoch, &summaries)?;
        let outcome = match self.submitter.submit(&commit).await {
            Ok(outcome) => outcome,
            Err(SubmitError::Overdraft(overdraft)) => {
                return self.shortfall(term, &summaries, &overdraft).await;
            }
            Err(source) => {
                return Err(StepError::Commit {
                    epoch,
                    source: Box::new(source),
                });
            }
        };
        match outcome.onchain {
            OnchainEpoch::Committed => {
                // Counted by the coordinator whose commit completes the epoch, so once.
                let written_off = written_off(
                    summaries.iter().flat_map(|summary| &summary.shortfalls),
                    None,
                );
                metrics::counter!(names::SHORTFALL)
                    .increment(u64::try_from(written_off).unwrap_or(u64::MAX));
                metrics::gauge!(names::LAST_COMMITTED_EPOCH).set(epoch as f64);
                tracing::info!(
                    epoch,
                    root = %commit.root,
                    debits = commit.debits.len(),
                    written_off,
                    credits = commit.credits.len(),
                    parts = outcome.parts,
                    sent = outcome.landed.len(),
                    "epoch committed for the whole cluster"
                );
            }
            // No commit marks for it (the next step sees it voided on the chain).
            OnchainEpoch::Voided => {
                tracing::warn!(epoch, "the arbiter voided the epoch");
            }
        }
        Ok(())
    }
}

/// The cluster's commit of `epoch`: the root of the tree over the partitions' trees (zero when
/// no partition has a leaf, as for a standalone epoch without leaves), every partition's debits
/// (payers are in one partition each) and the credits netted over the partitions, less the
/// shortfalls the partitions recorded.
fn epoch_commit(epoch: u64, summaries: &[Summary]) -> Result<EpochCommit, StepError> {
    let broken = |why: String| StepError::Summaries { epoch, why };
    let tree = PartitionedTree::from_sealed(epoch, summaries.iter().map(|summary| &summary.sealed));
    let root = match tree {
        Ok(tree) => tree.root(),
        Err(MerkleError::Empty) => B256::ZERO,
        Err(error) => return Err(broken(error.to_string())),
    };
    let mut debits = Vec::new();
    let mut credits = BTreeMap::new();
    for summary in summaries {
        debits.extend_from_slice(&summary.sealed.debits);
        for &(payee, amount) in &summary.sealed.credits {
            let total: &mut u128 = credits.entry(payee).or_default();
            *total = total
                .checked_add(amount)
                .ok_or_else(|| broken(format!("payee {payee}'s credits overflow")))?;
        }
    }
    let debited = sum(debits.iter().map(|(_, amount)| *amount));
    let credited = sum(credits.values().copied());
    if debited.is_none() || debited != credited {
        return Err(broken(format!(
            "the partitions debit {debited:?} and credit {credited:?}"
        )));
    }
    debits.sort_unstable_by_key(|(payer, _)| *payer);
    let shortfalls: Vec<_> = summaries
        .iter()
        .flat_map(|summary| summary.shortfalls.iter().copied())
        .collect();
    EpochCommit {
        epoch,
        root,
        debits,
        credits: credits.into_iter().collect(),
    }
    .less_shortfalls(&shortfalls)
    .ok_or_else(|| broken("a shortfall exceeds what it cuts".to_string()))
}

/// The sum of `amounts`, `None` past u128.
fn sum(mut amounts: impl Iterator<Item = u128>) -> Option<u128> {
    amounts.try_fold(0u128, u128::checked_add)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_engine::ledger::SealedEpoch;
    use tollgate_engine::{Address, PayerKey};

    fn summary(partition: u32, entries: &[(u8, u8, u128)]) -> Summary {
        let mut sealed = SealedEpoch {
            epoch: 3,
            ..SealedEpoch::default()
        };
        let mut credits = BTreeMap::new();
        for &(payer, payee, amount) in entries {
            sealed
                .leaves
                .push((PayerKey([payer; 32]), Address([payee; 20]), amount));
            sealed.debits.push((PayerKey([payer; 32]), amount));
            *credits.entry(Address([payee; 20])).or_insert(0u128) += amount;
        }
        sealed.credits = credits.into_iter().collect();
        Summary {
            partition,
            sealed,
            shortfalls: Vec::new(),
        }
    }

    #[test]
    fn credits_are_netted_over_partitions_and_the_root_covers_every_leaf() {
        let summaries = [
            summary(0, &[(1, 9, 5), (2, 8, 7)]),
            summary(1, &[]),
            summary(2, &[(3, 9, 11)]),
        ];
        let commit = epoch_commit(3, &summaries).expect("balanced");
        assert_eq!(
            commit.credits,
            vec![(Address([8; 20]), 7), (Address([9; 20]), 16)]
        );
        assert_eq!(commit.debits.len(), 3);
        let tree =
            PartitionedTree::from_sealed(3, summaries.iter().map(|s| &s.sealed)).expect("leaves");
        assert_eq!(commit.root, tree.root());
        assert_eq!(tree.proofs().count(), 3);

        let empty = epoch_commit(3, &[summary(0, &[]), summary(1, &[])]).expect("empty");
        assert_eq!(empty.root, B256::ZERO);

        let mut unbalanced = summaries.to_vec();
        unbalanced[2].sealed.credits[0].1 += 1;
        assert!(epoch_commit(3, &unbalanced).is_err());
    }

    #[test]
    fn a_recorded_shortfall_is_left_out_of_the_debit_and_the_netted_credit_under_the_same_root() {
        let mut summaries = [
            summary(0, &[(1, 9, 5), (2, 8, 7)]),
            summary(1, &[(3, 9, 11)]),
        ];
        let full = epoch_commit(3, &summaries).expect("balanced");
        // Payer 3's exit left 7 of its 11: the 4 it did not cover is cut from payee 9, whose
        // credit is netted over both partitions (5 + 11).
        summaries[1].shortfalls = vec![(PayerKey([3; 32]), Address([9; 20]), 4)];
        let covered = epoch_commit(3, &summaries).expect("covered");
        assert_eq!(covered.root, full.root, "the leaves are as sealed");
        assert_eq!(
            covered.debits,
            vec![
                (PayerKey([1; 32]), 5),
                (PayerKey([2; 32]), 7),
                (PayerKey([3; 32]), 7)
            ]
        );
        assert_eq!(
            covered.credits,
            vec![(Address([8; 20]), 7), (Address([9; 20]), 12)]
        );
        // A cut beyond what it cuts is refused, not committed.
        summaries[1].shortfalls = vec![(PayerKey([3; 32]), Address([9; 20]), 12)];
        assert!(epoch_commit(3, &summaries).is_err());
    }
}
