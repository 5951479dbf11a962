//! Partition checkpoints in the object store: a new owner restores a partition instead of
//! replaying its whole log, and the log is purged below what the checkpoints hold.
//!
//! ```text
//! owner, after checkpoint_every_messages parts applied, or checkpoint_every_ms after the last
//! checkpoint when a part came since:
//!   Engine::checkpoint (a RocksDB checkpoint between two group writes, with its log position s)
//!   ─▶ one tar ─▶ object p.<p>.<s, 20 digits> ─▶ delete all but the newest checkpoints_kept
//!   ─▶ purge tollgate.rx.<p> through the oldest kept checkpoint's position
//! new owner: its own ledger of the partition when that is at least as far as the newest
//!   checkpoint; else the newest checkpoint that restores (downloads with its digest right,
//!   unpacks, opens as a ledger, holds the position its name says); then the log from there
//! ```
//!
//! Why this is safe:
//! - **A checkpoint is a function of the log alone.** Every owner applies the same log in the
//!   same order, judged as of the times in it, so the state through position `s` is the same
//!   whichever node made it, an old owner that lost its lease included. A checkpoint is never
//!   refused for who made it; fencing (the lease token checked before each upload and before
//!   the deletions and the purge that follow) only keeps an old owner from doing work that is not its own now.
//! - **Nothing the log lacks is ever needed.** The log is purged only through the oldest kept
//!   checkpoint, once `checkpoints_kept` exist, and only after the purge floor ([`FloorRecord`],
//!   in the meta bucket) was raised to it by a compare-and-set that still carried the owner's
//!   lease token. A new owner first writes its own token into that record, then resumes only
//!   from a ledger at or above the floor it read there: an old owner that lost its lease
//!   mid-purge has either raised the floor before (and the new owner resumes above it) or finds
//!   the new token and purges nothing. A new owner that can use no checkpoint at or above the
//!   floor, and whose own ledger is below it, refuses to own the partition
//!   ([`CheckpointError::NoUsable`]) and tries again with a growing pause, rather than resume
//!   over a gap.
//! - **A corrupt checkpoint costs replay, not money.** The object store checks the SHA-256
//!   digest recorded at upload when the download ends; one that does not unpack, open as a
//!   ledger or hold the position its name says is passed over for the next older one (counted
//!   and logged), and the replay is that much longer.
//!
//! The local ledger a node keeps for a partition is a cache of the log: replacing it with a
//! checkpoint, or losing it in a crash half-way through the replacement, loses nothing.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv::UpdateErrorKind;
use async_nats::jetstream::{kv, object_store, stream};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tollgate_engine::pipeline::{Engine, EngineError, LedgerError, SubmitError};
use tracing::{debug, info, warn};

use crate::config::ClusterConfig;
use crate::error::{LeaseError, NatsError};
use crate::kv::{Latest, latest};
use crate::lease::Leases;
use crate::listing::subjects;
use crate::objects::{ReadError, meta_subject, read_object};
use crate::partition::subject_of;
use crate::retry::backoff;
use crate::telemetry;

/// How often an owner looks whether a checkpoint is due (an atomic load).
const POLICY_TICK: Duration = Duration::from_millis(200);

/// Why a checkpoint could not be made, stored or restored.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    // The causes are in the messages: these errors end in log lines, which show one message.
    #[error("object store: cannot {what}: {source}")]
    Store {
        what: &'static str,
        source: NatsError,
    },
    #[error("checkpoint files: cannot {what}: {source}")]
    Files {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the ledger: {0}")]
    Ledger(#[from] EngineError),
    #[error("the ledger did not take the checkpoint request: {0}")]
    Submit(#[from] SubmitError),
    #[error("reading the lease: {0}")]
    Lease(#[from] LeaseError),
    /// Our lease on the partition is gone: the checkpoints are the next owner's work now.
    #[error("the lease on the partition is no longer ours")]
    Fenced,
    #[error("the checkpoint holds log position {found}, its name says {named}")]
    Position { named: u64, found: u64 },
    #[error("the checkpoint does not open as a ledger: {0}")]
    Unopenable(String),
    /// Its bytes are not a checkpoint: the digest differs (on every try), or the tar does not
    /// unpack.
    #[error("the checkpoint is corrupt: cannot {what}: {source}")]
    Corrupt {
        what: &'static str,
        source: std::io::Error,
    },
    /// No checkpoint newer than the node's own ledger restored, and that ledger is below the
    /// partition's purge floor, so the log no longer holds what it lacks.
    #[error(
        "no usable checkpoint: {tried} newer than this node's ledger (at {local}) failed to \
         restore, and the log is purged through {floor}"
    )]
    NoUsable {
        tried: usize,
        local: u64,
        floor: u64,
    },
}

fn store_error<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> CheckpointError {
    move |source| CheckpointError::Store {
        what,
        source: Box::new(source),
    }
}

fn files_error(what: &'static str) -> impl FnOnce(std::io::Error) -> CheckpointError {
    move |source| CheckpointError::Files { what, source }
}

/// Reading a checkpoint failed: its bytes are to blame unless this node's disk is.
fn reading_error(what: &'static str) -> impl FnOnce(std::io::Error) -> CheckpointError {
    move |source| match source.kind() {
        std::io::ErrorKind::StorageFull
        | std::io::ErrorKind::PermissionDenied
        | std::io::ErrorKind::ReadOnlyFilesystem => CheckpointError::Files { what, source },
        _ => CheckpointError::Corrupt { what, source },
    }
}

impl CheckpointError {
    /// The checkpoint itself is unusable (not the store, the lease or this node's disk): the
    /// next older one is tried instead.
    fn is_the_checkpoints_fault(&self) -> bool {
        matches!(
            self,
            CheckpointError::Corrupt { .. }
                | CheckpointError::Position { .. }
                | CheckpointError::Unopenable(_)
        )
    }
}

/// When an owner checkpoints its partition and how many checkpoints it keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    every_messages: u64,
    every: Duration,
    kept: usize,
}

impl Policy {
    pub(crate) fn of(config: &ClusterConfig) -> Policy {
        Policy {
            every_messages: config.checkpoint_every_messages,
            every: Duration::from_millis(config.checkpoint_every_ms),
            kept: config.checkpoints_kept,
        }
    }
}

/// A checkpoint in the object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    name: String,
    /// The log position it holds: a ledger restored from it resumes after this.
    seq: u64,
}

/// The object name of partition `partition`'s checkpoint through log position `seq`; zero-padded
/// so names sort as positions do.
fn object_name(partition: u32, seq: u64) -> String {
    format!("p.{partition}.{seq:020}")
}

/// Opens a partition ledger in a directory (the node's ledger settings).
pub(crate) trait OpenLedger: Fn(PathBuf) -> Self::Opening + Send + Sync {
    type Opening: Future<Output = Result<Engine, EngineError>> + Send;
}

impl<F, O> OpenLedger for F
where
    F: Fn(PathBuf) -> O + Send + Sync,
    O: Future<Output = Result<Engine, EngineError>> + Send,
{
    type Opening = O;
}

/// How far a partition's log is purged, key `floor.<p>` of the meta bucket: the log holds
/// nothing of the partition at or below `floor`. Written by compare-and-set only, with the
/// lease token of the owner that wrote it: a new owner writes its token there before it
/// chooses where to resume (and reads the floor it must resume at or above), an owner raises
/// the floor before it purges, and only while the record still carries its token. So an old
/// owner that lost its lease while it was about to purge either raised the floor before the new
/// owner read it, or finds the new owner's token and purges nothing.
#[derive(Debug, Serialize, Deserialize)]
struct FloorRecord {
    floor: u64,
    token: u64,
}

/// One partition's checkpoints, as its owner (or a node about to own it) sees them.
#[derive(Clone)]
pub(crate) struct Checkpoints {
    store: object_store::ObjectStore,
    /// The meta bucket, where the partition's purge floor is recorded ([`FloorRecord`]).
    meta: kv::Store,
    /// The object store's own stream: one metadata subject per object, listed to find the
    /// partition's checkpoints.
    objects: stream::Stream,
    stream: stream::Stream,
    leases: Leases,
    partition: u32,
    policy: Policy,
    /// Where checkpoints are made and unpacked: beside the partition's ledger, on its
    /// filesystem, so a RocksDB checkpoint hard-links its table files and a restored ledger is
    /// renamed into place.
    work: PathBuf,
}

impl Checkpoints {
    pub(crate) fn new(
        (store, objects, meta): (object_store::ObjectStore, stream::Stream, kv::Store),
        stream: stream::Stream,
        leases: Leases,
        partition: u32,
        policy: Policy,
        data_dir: &Path,
    ) -> Checkpoints {
        Checkpoints {
            store,
            meta,
            objects,
            stream,
            leases,
            partition,
            policy,
            work: data_dir.join(format!("checkpoints-{partition}")),
        }
    }

    /// The partition's checkpoints, oldest first, the newest with the time it was stored.
    ///
    /// Read from the object store's stream (its metadata subjects, `$O.<bucket>.M.<name in
    /// base64>`) in one request, not with the object store's own listing: that one ends on a
    /// message with nothing pending after it, and never ends when a concurrent delete rolls up
    /// the message it waits for (seen with 16 owners checkpointing at once). A deleted
    /// checkpoint leaves no subject behind ([`Checkpoints::delete`]).
    async fn list(&self) -> Result<Vec<Stored>, CheckpointError> {
        let subjects = subjects(&self.objects, self.meta_subject("*"))
            .await
            .map_err(|source| CheckpointError::Store {
                what: "list the checkpoints",
                source,
            })?;
        let prefix = format!("p.{}.", self.partition);
        let mut found: Vec<Stored> = subjects
            .keys()
            .filter_map(|subject| {
                let encoded = subject.rsplit('.').next()?;
                let name = String::from_utf8(URL_SAFE.decode(encoded).ok()?).ok()?;
                let seq = name.strip_prefix(&prefix)?.parse().ok()?;
                Some(Stored { name, seq })
            })
            .collect();
        found.sort_by_key(|stored| stored.seq);
        Ok(found)
    }

    /// When `checkpoint` was stored, by the clock of the node that stored it; only for the age
    /// metric, so an object a replica does not show yet is not an error, just unknown.
    async fn stored_at(&self, checkpoint: &Stored) -> Option<SystemTime> {
        let info = self.store.info(&checkpoint.name).await.ok()?;
        let secs = u64::try_from(info.modified?.unix_timestamp()).ok()?;
        Some(UNIX_EPOCH + Duration::from_secs(secs))
    }

    fn floor_key(&self) -> String {
        format!("floor.{}", self.partition)
    }

    /// The partition's floor record, if written, and the revision a write must expect.
    async fn read_floor(&self) -> Result<(Option<FloorRecord>, u64), CheckpointError> {
        let read = |source: NatsError| CheckpointError::Store {
            what: "read the purge floor",
            source,
        };
        match latest(&self.meta, &self.floor_key()).await.map_err(read)? {
            Latest::Value(message) => {
                let record = serde_json::from_slice(&message.payload)
                    .map_err(|error| read(Box::new(error)))?;
                Ok((Some(record), message.sequence))
            }
            other => Ok((None, other.vacant_revision().unwrap_or(0))),
        }
    }

    /// Writes `record` if the floor record is still at revision `expect`; `false` when another
    /// write came first.
    async fn write_floor(
        &self,
        record: &FloorRecord,
        expect: u64,
    ) -> Result<bool, CheckpointError> {
        let bytes = serde_json::to_vec(record).map_err(|error| CheckpointError::Store {
            what: "encode the purge floor",
            source: Box::new(error),
        })?;
        match self
            .meta
            .update(self.floor_key(), bytes.into(), expect)
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(error) => Err(store_error("write the purge floor")(error)),
        }
    }

    /// Writes `token` into the floor record, keeping its floor (`if_absent` when there is no
    /// record), so that no earlier owner can raise it (and purge) any more; the floor, which the
    /// new owner must resume at or above. `Fenced` when a later owner's token is there already
    /// (lease tokens only grow): this node's lease lapsed while it was taking over.
    async fn claim_floor(&self, token: u64, if_absent: u64) -> Result<u64, CheckpointError> {
        let mut contended = 0u32;
        loop {
            let (record, expect) = self.read_floor().await?;
            if record.as_ref().is_some_and(|record| record.token > token) {
                return Err(CheckpointError::Fenced);
            }
            let floor = record.map_or(if_absent, |record| record.floor);
            if self
                .write_floor(&FloorRecord { floor, token }, expect)
                .await?
            {
                return Ok(floor);
            }
            contended = contended.saturating_add(1);
            tokio::time::sleep(backoff(contended)).await;
        }
    }

    /// The metadata subject of the object whose name encodes to `encoded` (or a wildcard).
    fn meta_subject(&self, encoded: &str) -> String {
        meta_subject(&self.objects, encoded)
    }

    /// Deletes a checkpoint and its metadata subject: the object store keeps a deleted object's
    /// metadata as a marker, which would pile up, one per checkpoint ever made, in every
    /// listing. Deleting one already gone is harmless (an interrupted deletion is finished).
    async fn delete(&self, name: &str) -> Result<(), CheckpointError> {
        match self.store.delete(name).await {
            Ok(()) => {}
            Err(error) if error.kind() == object_store::DeleteErrorKind::NotFound => {}
            Err(error) => return Err(store_error("delete an old checkpoint")(error)),
        }
        self.objects
            .purge()
            .filter(self.meta_subject(&URL_SAFE.encode(name)))
            .await
            .map_err(store_error("drop an old checkpoint's marker"))?;
        Ok(())
    }

    /// The ledger a new owner of the partition starts from, open, and the newest checkpoint
    /// listed. Claims the purge floor for `token` first. Then: the node's own ledger
    /// (`ledger_dir`) when it is at least as far as every checkpoint and the floor; else the
    /// newest checkpoint at or above the floor that restores, moved into `ledger_dir`; when
    /// none restores, the node's own ledger again if it is at or above the floor (the log holds
    /// the rest); else [`CheckpointError::NoUsable`]. A failure that is not the checkpoint's
    /// (the store, the disk) is returned, to be tried again, rather than answered with an older
    /// checkpoint. An unusable checkpoint stays in the store (for an operator to look at).
    pub(crate) async fn ledger_for_owner(
        &self,
        ledger_dir: &Path,
        token: u64,
        open: &impl OpenLedger,
    ) -> Result<(Engine, Option<Stored>), CheckpointError> {
        let partition = self.partition;
        let stored = self.list().await?;
        // A cluster whose record is missing (made before the floor existed, or deleted by
        // hand) was purged at most through its oldest checkpoint, as purges always were.
        let floor = self
            .claim_floor(token, stored.first().map_or(0, |c| c.seq))
            .await?;
        let newest = stored.last().cloned();
        let (engine, local) = open_at(open, ledger_dir).await?;
        // Only a checkpoint at or above the floor has the log after it.
        let newer: Vec<&Stored> = stored
            .iter()
            .rev()
            .filter(|c| c.seq > local && c.seq >= floor)
            .collect();
        if newer.is_empty() && local >= floor {
            return Ok((engine, newest));
        }
        shut(engine).await?;
        for checkpoint in &newer {
            match self.restore(checkpoint, ledger_dir, open).await {
                Ok(engine) => {
                    telemetry::checkpoint_done("restored");
                    info!(
                        partition,
                        checkpoint = checkpoint.name,
                        local,
                        "restored the partition's ledger from its checkpoint"
                    );
                    return Ok((engine, newest));
                }
                // Not the checkpoint's fault (the store did not answer, the disk is full): try
                // again later rather than resume from further back.
                Err(error) if !error.is_the_checkpoints_fault() => return Err(error),
                Err(error) => {
                    telemetry::checkpoint_done("unusable");
                    warn!(
                        partition, checkpoint = checkpoint.name, %error,
                        "checkpoint unusable; trying the next older one (a longer replay)"
                    );
                }
            }
        }
        // A failed restore may have left the ledger directory empty or missing: judge by the
        // ledger that actually opens now, not by the one read before.
        let (engine, local) = open_at(open, ledger_dir).await?;
        if local < floor {
            shut(engine).await?;
            return Err(CheckpointError::NoUsable {
                tried: newer.len(),
                local,
                floor,
            });
        }
        warn!(
            partition,
            local, "no newer checkpoint restored; replaying the log from this node's own ledger"
        );
        Ok((engine, newest))
    }

    /// Downloads `checkpoint`, checks it opens as a ledger at the position its name says, and
    /// puts it in place of `ledger_dir`, opened.
    async fn restore(
        &self,
        checkpoint: &Stored,
        ledger_dir: &Path,
        open: &impl OpenLedger,
    ) -> Result<Engine, CheckpointError> {
        let work = self.work.join("restore");
        renew_dir(&work).await?;
        let archive = work.join("checkpoint.tar");
        self.download(&checkpoint.name, &archive).await?;
        let restored = work.join("ledger");
        blocking({
            let (archive, restored) = (archive.clone(), restored.clone());
            move || {
                let file = std::fs::File::open(&archive)?;
                tar::Archive::new(std::io::BufReader::new(file)).unpack(&restored)
            }
        })
        .await
        .map_err(reading_error("unpack the checkpoint"))?;
        // Durable before it replaces the ledger: torn table files after a power cut would leave
        // a ledger that does not open.
        blocking({
            let restored = restored.clone();
            move || sync_tree(&restored)
        })
        .await
        .map_err(files_error("sync the unpacked checkpoint"))?;
        // A checkpoint that does not open is the checkpoint's fault, not the ledger's.
        let unopenable = |error: EngineError| CheckpointError::Unopenable(error.to_string());
        let (engine, found) = open_at(open, &restored).await.map_err(unopenable)?;
        shut(engine).await?;
        if found != checkpoint.seq {
            return Err(CheckpointError::Position {
                named: checkpoint.seq,
                found,
            });
        }
        let (ledger_dir, replaced) = (ledger_dir.to_path_buf(), work.join("replaced"));
        blocking({
            let ledger_dir = ledger_dir.clone();
            move || replace_dir(&ledger_dir, &restored, &replaced)
        })
        .await
        .map_err(files_error("move the restored ledger into place"))?;
        self.clear_work().await;
        Ok(open(ledger_dir).await?)
    }

    /// Removes what an interrupted checkpoint or restore left in the work directory: its hard
    /// links would keep table files the ledger deleted on disk.
    pub(crate) async fn clear_work(&self) {
        match tokio::fs::remove_dir_all(&self.work).await {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => warn!(
                partition = self.partition, work = %self.work.display(), %error,
                "cannot clear the checkpoint work directory"
            ),
        }
    }

    /// Downloads `name` to `archive` (without a consumer: see `objects`). A read that fails is
    /// tried twice more before it counts: a digest that differs fails every time, a dropped
    /// connection does not, and judging a good checkpoint unusable costs a longer replay.
    async fn download(&self, name: &str, archive: &Path) -> Result<(), CheckpointError> {
        let mut failures = 0u32;
        loop {
            let mut file = tokio::fs::File::create(archive)
                .await
                .map_err(files_error("create the download"))?;
            let error = match read_object(&self.objects, name, &mut file).await {
                Ok(_) => return Ok(()),
                Err(ReadError::Write(error)) => {
                    return Err(files_error("write the download")(error));
                }
                Err(error) => error,
            };
            if failures >= 2 {
                return Err(match error {
                    ReadError::Corrupt(why) => CheckpointError::Corrupt {
                        what: "download the checkpoint",
                        source: std::io::Error::other(why),
                    },
                    other => store_error("get the checkpoint")(other),
                });
            }
            failures += 1;
            tokio::time::sleep(backoff(failures)).await;
        }
    }

    /// Checkpoints the partition while this node owns it: whenever the policy says so, until
    /// `stop` or the lease is found lost. `applied` counts the log messages the owner applied;
    /// `newest` is the newest checkpoint when it started.
    pub(crate) async fn keep_taking(
        self,
        engine: Engine,
        applied: Arc<AtomicU64>,
        token: u64,
        newest: Option<Stored>,
        stop: CancellationToken,
    ) {
        let partition = self.partition;
        let age = telemetry::checkpoint_age(partition);
        let mut newest_seq = newest.as_ref().map_or(0, |c| c.seq);
        let newest_stored_at = match &newest {
            Some(checkpoint) => self.stored_at(checkpoint).await,
            None => None,
        };
        let mut stored_at = newest_stored_at.unwrap_or_else(SystemTime::now);
        let mut applied_then = 0;
        let (mut failures, mut retry_at) = (0u32, Instant::now());
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(POLICY_TICK) => {}
            }
            let applied_now = applied.load(Ordering::Relaxed);
            let since = applied_now.saturating_sub(applied_then);
            let elapsed = stored_at.elapsed().unwrap_or_default();
            // An idle partition's checkpoint holds everything: not stale, however old.
            age.set(if since == 0 {
                0.0
            } else {
                elapsed.as_secs_f64()
            });
            let due =
                since >= self.policy.every_messages || (since > 0 && elapsed >= self.policy.every);
            if !due || Instant::now() < retry_at {
                continue;
            }
            // The prune also runs when nothing new was stored: it finishes one that failed.
            let taken = tokio::select! {
                () = stop.cancelled() => return,
                taken = async {
                    let stored = self.take(&engine, token, newest_seq).await;
                    if let Ok(Some(seq)) = stored {
                        telemetry::checkpoint_done("stored");
                        debug!(partition, seq, "checkpoint stored");
                        (newest_seq, stored_at) = (seq, SystemTime::now());
                    }
                    match stored {
                        Err(error) => Err(error),
                        Ok(stored) => self.prune(&engine, token).await.map(|()| stored),
                    }
                } => taken,
            };
            match taken {
                Ok(_) => {
                    applied_then = applied_now;
                    if failures > 0 {
                        info!(partition, failures, "checkpoints stored again");
                        failures = 0;
                    }
                }
                Err(CheckpointError::Fenced) => {
                    info!(
                        partition,
                        "lease lost: no more checkpoints of the partition here"
                    );
                    return;
                }
                Err(error) => {
                    telemetry::checkpoint_done("failed");
                    failures = failures.saturating_add(1);
                    let pause = backoff(failures);
                    retry_at = Instant::now() + pause;
                    if failures == 1 {
                        warn!(partition, %error, ?pause, "checkpoint failed; retrying with a growing pause");
                    } else {
                        debug!(partition, %error, failures, "checkpoint failed again");
                    }
                }
            }
        }
    }

    /// Makes and stores a checkpoint: the position stored, `None` when the ledger is not past
    /// `newest`.
    async fn take(
        &self,
        engine: &Engine,
        token: u64,
        newest: u64,
    ) -> Result<Option<u64>, CheckpointError> {
        self.check_lease(token).await?;
        let made = self.work.join("take");
        renew_dir(&self.work).await?;
        let position = engine
            .checkpoint(made.clone())?
            .await
            .unwrap_or(Err(EngineError::Stopped))?;
        let Some(seq) = position.filter(|&seq| seq > newest) else {
            return Ok(None);
        };
        let archive = self.work.join("take.tar");
        blocking({
            let archive = archive.clone();
            move || pack(&made, &archive)
        })
        .await
        .map_err(files_error("pack the checkpoint"))?;
        let mut file = tokio::fs::File::open(&archive)
            .await
            .map_err(files_error("open the packed checkpoint"))?;
        let meta = object_store::ObjectMetadata {
            name: object_name(self.partition, seq),
            description: Some(format!(
                "Tollgate partition {} through log position {seq}",
                self.partition
            )),
            metadata: HashMap::from([
                ("seq".to_string(), seq.to_string()),
                ("holder".to_string(), self.leases.node_id().to_string()),
                ("token".to_string(), token.to_string()),
            ]),
            ..Default::default()
        };
        self.store
            .put(meta, &mut file)
            .await
            .map_err(store_error("store the checkpoint"))?;
        drop(file);
        self.clear_work().await;
        Ok(Some(seq))
    }

    /// Deletes all but the newest `kept` checkpoints and purges the partition's log through
    /// the oldest kept, after raising the purge floor there (`Fenced` if a later owner claimed
    /// it); nothing while fewer than `kept` exist (a corrupt newest one must have one before it
    /// to fall back to) or while `engine` has not applied the log that far.
    async fn prune(&self, engine: &Engine, token: u64) -> Result<(), CheckpointError> {
        let stored = self.list().await?;
        let Some(excess) = stored.len().checked_sub(self.policy.kept) else {
            return Ok(());
        };
        let floor = stored[excess].seq;
        // An owner still replaying below the floor (it resumed from its own ledger, short of
        // checkpoints it could not restore) must not purge what it has yet to apply.
        if position_of(engine)? < floor {
            return Ok(());
        }
        let (record, expect) = self.read_floor().await?;
        let Some(record) = record.filter(|record| record.token == token) else {
            // A later owner claimed the partition: its purges now.
            return Err(CheckpointError::Fenced);
        };
        if floor > record.floor
            && !self
                .write_floor(&FloorRecord { floor, token }, expect)
                .await?
        {
            return Err(CheckpointError::Fenced);
        }
        debug!(
            partition = self.partition,
            floor,
            kept = ?stored[excess..].iter().map(|stored| stored.seq).collect::<Vec<_>>(),
            deleted = ?stored[..excess].iter().map(|stored| stored.seq).collect::<Vec<_>>(),
            "pruning the partition's checkpoints and purging its log through the floor"
        );
        for old in &stored[..excess] {
            self.delete(&old.name).await?;
        }
        self.stream
            .purge()
            .filter(subject_of(self.partition))
            .sequence(floor.saturating_add(1))
            .await
            .map_err(store_error("purge the partition's log"))?;
        Ok(())
    }

    /// `Fenced` unless the partition's lease still carries `token`.
    async fn check_lease(&self, token: u64) -> Result<(), CheckpointError> {
        match self.leases.holder(self.partition).await? {
            Some(holder) if holder.token == token => Ok(()),
            _ => Err(CheckpointError::Fenced),
        }
    }
}

/// The log position `engine`'s ledger holds (0: none yet).
fn position_of(engine: &Engine) -> Result<u64, EngineError> {
    let position = engine.reader().log_position().map_err(LedgerError::from)?;
    Ok(position.unwrap_or(0))
}

/// Opens the ledger in `dir` with its log position (closed again when that cannot be read).
async fn open_at(open: &impl OpenLedger, dir: &Path) -> Result<(Engine, u64), EngineError> {
    let engine = open(dir.to_path_buf()).await?;
    match position_of(&engine) {
        Ok(position) => Ok((engine, position)),
        Err(error) => {
            shut(engine).await?;
            Err(error)
        }
    }
}

/// Runs blocking file work off the runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("checkpoint file work panicked")))
}

async fn shut(engine: Engine) -> Result<(), EngineError> {
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .unwrap_or(Err(EngineError::Stopped))
}

/// `dir` empty, whatever an interrupted attempt left there.
async fn renew_dir(dir: &Path) -> Result<(), CheckpointError> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(files_error("clear the work directory")(source)),
    }
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(files_error("create the work directory"))
}

/// One tar of a RocksDB checkpoint directory.
fn pack(dir: &Path, archive: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(archive)?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    builder.append_dir_all(".", dir)?;
    builder.into_inner()?.flush()
}

/// Every file and directory under `dir`, and `dir` itself, on disk.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path)?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Puts `restored` where `ledger_dir` is: the old ledger is moved to `replaced` first (and back
/// if the second move fails) and deleted after, the parent directory synced in between, so a
/// crash leaves the old ledger, no ledger (the next owner restores again), or the restored
/// one, never a mix.
fn replace_dir(ledger_dir: &Path, restored: &Path, replaced: &Path) -> std::io::Result<()> {
    let had_one = ledger_dir.exists();
    if had_one {
        std::fs::rename(ledger_dir, replaced)?;
    }
    if let Err(error) = std::fs::rename(restored, ledger_dir) {
        if had_one {
            std::fs::rename(replaced, ledger_dir)?;
        }
        return Err(error);
    }
    if let Some(parent) = ledger_dir.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    std::fs::remove_dir_all(replaced).or_else(|error| match error.kind() {
        std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(error),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_as_positions_and_stay_apart_per_partition() {
        let mut names = [
            object_name(1, 900),
            object_name(1, 10_000),
            object_name(1, 7),
        ];
        names.sort();
        assert_eq!(
            names,
            [
                object_name(1, 7),
                object_name(1, 900),
                object_name(1, 10_000)
            ]
        );
        assert!(!object_name(10, 5).starts_with("p.1."));
        assert_eq!(object_name(3, 42), "p.3.00000000000000000042");
    }
}
