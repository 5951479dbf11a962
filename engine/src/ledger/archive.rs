//! The receipt archive: every receipt the ledger accepts, exactly as signed, by epoch, so an
//! auditor can recompute each epoch from the payers' own signatures.
//!
//! Layout: the column family [`Cf::Archive`], key `epoch (u64 BE) ‖ index (u64 BE)`, value the
//! 176 signed bytes. `index` is the receipt's position among those accepted into the epoch, in
//! the order the ledger judged them (the order an auditor replays the anti-replay window in);
//! the epoch is the one open when it was applied. The writer adds the entry to the group that
//! holds the receipt's ledger effect, so an acked receipt is always archived and a rejected one
//! never is.
//!
//! Why a column family rather than segment files of our own: the entry rides in the group's one
//! `WriteBatch`, so it shares the group's single WAL write and fsync and is atomic with the
//! ledger for free (segment files would need a second fsync per group, or a recovery protocol
//! that trims them back to what the WAL holds). Keys only ever grow (epochs and indices count
//! up), so flushed files never overlap and compaction moves them down without rewriting; an
//! epoch is one contiguous key range, read in order by one iterator, and pruning is one
//! `DeleteRange` whose files compaction then drops whole. The family is tuned for that (see
//! `archive_options` in the store): no bloom filter, no compression, a large write buffer.
//!
//! Retention: [`LedgerReader::archive_state`] says what an epoch's archive is; settle prunes
//! epochs final onchain plus a retention period with `Engine::prune_archive`, recorded as
//! `archive_pruned_through` in the metadata (monotone).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::receipt::RECEIPT_BYTES;
use crate::store::{ARCHIVE_KEY_BYTES, Cf, FORMAT_KEY, Store, StoreError, StoreSnapshot};
use crate::telemetry as names;

use super::error::{LedgerError, corrupt};
use super::record::{
    ARCHIVE_PRUNED_THROUGH_KEY, EpochRecord, FormatRecord, OPEN_EPOCH_KEY, OpenEpoch,
    SEALING_EPOCH_KEY, SealingEpoch, decode_u64_record, encode_u64_record, epoch_key,
};
use super::state::Ledger;
use super::{EpochStatus, LedgerReader};

/// Where an epoch's archive stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ArchiveState {
    /// The data directory was created without the archive: nothing is kept.
    Disabled,
    /// No such epoch (not opened yet, or 0).
    Unknown,
    /// The open epoch: still accepting receipts.
    Open,
    /// Cut, its entries still being written by the seal (its receipts are all archived).
    Sealing,
    /// Sealed, every receipt it accepted archived.
    Archived {
        /// Receipts it accepted (and the archive holds).
        receipts: u64,
    },
    /// Pruned after being final onchain for the retention period.
    Pruned,
}

/// One archived receipt.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ArchivedReceipt {
    /// Position among the receipts accepted into its epoch, from 0, in the order applied.
    pub index: u64,
    /// The receipt exactly as signed.
    pub bytes: [u8; RECEIPT_BYTES],
}

/// What the archive holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ArchiveDisk {
    /// Bytes of its files and live memtables.
    pub bytes: u64,
    /// Receipts it holds: those of the epochs not pruned.
    pub receipts: u64,
}

/// Archive key of a receipt: `epoch ‖ index`, both big-endian so keys sort by epoch then index.
pub(crate) fn archive_key(epoch: u64, index: u64) -> [u8; ARCHIVE_KEY_BYTES] {
    let mut key = [0u8; ARCHIVE_KEY_BYTES];
    key[..8].copy_from_slice(&epoch.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The highest epoch pruned as of `snapshot` (0: none).
fn pruned_through(snapshot: &StoreSnapshot<'_>) -> Result<u64, StoreError> {
    snapshot
        .get(Cf::Meta, ARCHIVE_PRUNED_THROUGH_KEY)?
        .map(|bytes| decode_u64_record(&bytes, "epoch number").map_err(corrupt(Cf::Meta)))
        .transpose()
        .map(Option::unwrap_or_default)
}

fn archived(snapshot: &StoreSnapshot<'_>) -> Result<bool, StoreError> {
    let bytes = snapshot
        .get(Cf::Meta, FORMAT_KEY)?
        .ok_or_else(|| StoreError::Corrupt {
            cf: Cf::Meta.name(),
            problem: "format record missing".into(),
        })?;
    Ok(FormatRecord::decode(&bytes)
        .map_err(corrupt(Cf::Meta))?
        .archive_receipts)
}

fn open_epoch(snapshot: &StoreSnapshot<'_>) -> Result<OpenEpoch, StoreError> {
    snapshot
        .get(Cf::Meta, OPEN_EPOCH_KEY)?
        .map(|bytes| OpenEpoch::decode(&bytes).map_err(corrupt(Cf::Meta)))
        .transpose()
        .map(Option::unwrap_or_default)
}

fn sealing_epoch(snapshot: &StoreSnapshot<'_>) -> Result<Option<SealingEpoch>, StoreError> {
    snapshot
        .get(Cf::Meta, SEALING_EPOCH_KEY)?
        .map(|bytes| SealingEpoch::decode(&bytes).map_err(corrupt(Cf::Meta)))
        .transpose()
}

/// A stored entry that is not an archive entry of `epoch`: corruption, named by its key.
fn corrupt_entry(key: &[u8], problem: &str) -> StoreError {
    StoreError::Corrupt {
        cf: Cf::Archive.name(),
        problem: format!("key {}: {problem}", hex::encode(key)),
    }
}

impl LedgerReader {
    /// Where `epoch`'s archive stands (one snapshot).
    pub fn archive_state(&self, epoch: u64) -> Result<ArchiveState, StoreError> {
        let snapshot = self.store.snapshot();
        if !archived(&snapshot)? {
            return Ok(ArchiveState::Disabled);
        }
        if epoch == 0 {
            return Ok(ArchiveState::Unknown);
        }
        if epoch <= pruned_through(&snapshot)? {
            return Ok(ArchiveState::Pruned);
        }
        if epoch == open_epoch(&snapshot)?.epoch {
            return Ok(ArchiveState::Open);
        }
        if sealing_epoch(&snapshot)?.is_some_and(|sealing| sealing.epoch == epoch) {
            return Ok(ArchiveState::Sealing);
        }
        match snapshot.get(Cf::Epochs, &epoch_key(epoch))? {
            Some(bytes) => Ok(ArchiveState::Archived {
                receipts: EpochRecord::decode(&bytes)
                    .map_err(corrupt(Cf::Epochs))?
                    .receipts,
            }),
            None => Ok(ArchiveState::Unknown),
        }
    }

    /// Receipts of `epoch` with index > `after` (all when None), at most `limit`, in index order.
    /// An entry whose key is not `epoch ‖ index` or whose value is not 176 bytes is reported as
    /// corruption naming its key, never skipped.
    pub fn archived_receipts(
        &self,
        epoch: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ArchivedReceipt>, StoreError> {
        let prefix = epoch.to_be_bytes();
        let after = after.map(|index| archive_key(epoch, index));
        self.store
            .snapshot()
            .scan(Cf::Archive, &prefix, after.as_ref().map(|a| &a[..]), limit)?
            .into_iter()
            .map(|(key, value)| {
                let index = <[u8; 8]>::try_from(&key[prefix.len()..])
                    .map_err(|_| corrupt_entry(&key, "not an epoch ‖ index key"))?;
                let bytes = <[u8; RECEIPT_BYTES]>::try_from(&value[..]).map_err(|_| {
                    corrupt_entry(&key, &format!("value of {} bytes, not 176", value.len()))
                })?;
                Ok(ArchivedReceipt {
                    index: u64::from_be_bytes(index),
                    bytes,
                })
            })
            .collect()
    }

    /// Bytes the archive holds on disk (files and live memtables) and the receipts in it: those
    /// of every epoch not pruned, sealed or not.
    pub fn archive_disk(&self) -> Result<ArchiveDisk, StoreError> {
        let bytes = self.store.cf_bytes(Cf::Archive)?;
        let snapshot = self.store.snapshot();
        if !archived(&snapshot)? {
            return Ok(ArchiveDisk { bytes, receipts: 0 });
        }
        let after = epoch_key(pruned_through(&snapshot)?);
        let mut receipts = open_epoch(&snapshot)?.receipts;
        if let Some(sealing) = sealing_epoch(&snapshot)? {
            receipts = receipts.saturating_add(sealing.receipts);
        }
        for (_, value) in snapshot.scan(Cf::Epochs, &[], Some(&after), usize::MAX)? {
            let record = EpochRecord::decode(&value).map_err(corrupt(Cf::Epochs))?;
            receipts = receipts.saturating_add(record.receipts);
        }
        Ok(ArchiveDisk { bytes, receipts })
    }

    /// The highest epoch whose archive was pruned (0: none).
    pub fn archive_pruned_through(&self) -> Result<u64, StoreError> {
        pruned_through(&self.store.snapshot())
    }
}

/// Sets the archive gauges from the store, at most once per [`GAUGES_EVERY`]: called after each
/// group write, it costs a few metadata reads and one scan of the unpruned epochs' records.
pub(crate) struct ArchiveGauges {
    reader: LedgerReader,
    last: Option<Instant>,
}

/// How often [`ArchiveGauges`] reads the store.
const GAUGES_EVERY: Duration = Duration::from_secs(1);

impl ArchiveGauges {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Self {
            reader: LedgerReader::new(store),
            last: None,
        }
    }

    /// Refreshes the gauges if they are older than [`GAUGES_EVERY`] (always when `force`).
    pub(crate) fn refresh(&mut self, force: bool) {
        if !force && self.last.is_some_and(|last| last.elapsed() < GAUGES_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let read = self
            .reader
            .archive_disk()
            .and_then(|disk| Ok((disk, self.reader.archive_pruned_through()?)));
        match read {
            Ok((disk, pruned)) => {
                metrics::gauge!(names::ARCHIVE_BYTES).set(disk.bytes as f64);
                metrics::gauge!(names::ARCHIVE_RECEIPTS).set(disk.receipts as f64);
                metrics::gauge!(names::ARCHIVE_PRUNED_THROUGH).set(pruned as f64);
            }
            Err(error) => tracing::warn!(%error, "cannot read the archive's size"),
        }
    }
}

impl Ledger {
    /// Deletes the archive of every epoch up to `through` (one range tombstone) and records
    /// `through` as pruned, in the current group. A `through` at or below what is pruned already
    /// changes nothing (`Ok(false)`). Refused, changing nothing, for an epoch not sealed and
    /// committed or disputed: settle decides what is final onchain, the ledger only makes sure
    /// nothing it still has to commit loses its receipts. `Ok(true)` when something was pruned.
    pub(crate) fn prune_archive(&mut self, through: u64) -> Result<bool, LedgerError> {
        if !self.archive || through <= self.archive_pruned_through {
            return Ok(false);
        }
        let unsealed = self
            .sealing
            .as_ref()
            .map_or(self.open.epoch, |sealing| sealing.epoch);
        if through >= unsealed {
            return Err(LedgerError::PruneRefused {
                through,
                problem: format!("epoch {unsealed} is not sealed yet"),
            });
        }
        for epoch in self.archive_pruned_through.saturating_add(1)..=through {
            let status = self.epoch_record(epoch)?.status;
            if !matches!(status, EpochStatus::Committed | EpochStatus::Disputed) {
                return Err(LedgerError::PruneRefused {
                    through,
                    problem: format!("epoch {epoch} is {status:?}, not committed or disputed"),
                });
            }
        }
        // Fits: `through` is below the open epoch.
        let end = archive_key(through + 1, 0);
        self.group
            .batch
            .delete_range(Cf::Archive, archive_key(0, 0), end);
        self.group.batch.put(
            Cf::Meta,
            ARCHIVE_PRUNED_THROUGH_KEY,
            encode_u64_record(through),
        );
        self.archive_pruned_through = through;
        Ok(true)
    }
}

/// Compacts the archive below `through`'s end on a thread of its own, so the files a prune's
/// range tombstone covers are dropped now rather than whenever compaction gets there. A hint:
/// if the thread cannot start, the space comes back later all the same.
pub(crate) fn compact_pruned(store: Arc<Store>, through: u64) {
    let end = archive_key(through.saturating_add(1), 0);
    let spawned = std::thread::Builder::new()
        .name("tollgate-archive-compact".into())
        .spawn(move || {
            if let Err(error) = store.compact_below(Cf::Archive, &end) {
                tracing::warn!(%error, through, "compacting the pruned archive failed");
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the thread that compacts the pruned archive");
    }
}
