//! The only code that touches RocksDB.
//!
//! Everything the ledger knows lives in the column families named below. A write is one
//! [`StoreBatch`] applied atomically with [`synced_write_options`]; the first write that fails
//! poisons the store for good, because after a failed fsync the kernel may have dropped dirty pages
//! and nothing we write next can be trusted to sit on top of what we think is there (the
//! "fsyncgate" lesson: retrying an fsync reports success over lost data).
//!
//! Opening refuses anything that is not a whole Tollgate data directory: a non-empty directory
//! without a RocksDB `CURRENT` file, a database missing one of our column families, a WAL whose
//! complete records do not replay (a checksum mismatch, a missing closed WAL), or a directory
//! created but never initialised. The one thing it tolerates is an incomplete last WAL record:
//! see [`db_options`]. The column families added after the first layout ([`CF_ARCHIVE`],
//! [`CF_GRANTS`]) are created empty in a directory made before them (whose format record then
//! says the archive is off; no grants is simply no grants).

use crate::receipt::RECEIPT_BYTES;
use crate::telemetry as names;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DB, DBRecoveryMode, IteratorMode, Options,
    PrefixRange, ReadOptions, WriteBatch, WriteOptions,
};
use thiserror::Error;

/// One RocksDB entry as read: key and value bytes.
pub type KeyValue = (Box<[u8]>, Box<[u8]>);

/// Ledger metadata: format marker, open epoch, sealing epoch, funds cursor.
pub const CF_META: &str = "meta";
/// Channel state keyed by `payer ‖ payee`.
pub const CF_CHANNELS: &str = "channels";
/// Index of channels by payee: `payee ‖ payer` → empty.
pub const CF_PAYEE_CHANNELS: &str = "payee_channels";
/// Per-payer funds keyed by payer key.
pub const CF_PAYERS: &str = "payers";
/// Per-payee credits keyed by address.
pub const CF_PAYEES: &str = "payees";
/// Client sessions: producer records and the acks of their last batches.
pub const CF_SESSIONS: &str = "sessions";
/// What the open epoch (and the epoch being sealed) touched: channels, payers and payees, keyed
/// `epoch ‖ kind ‖ id`.
pub const CF_OPEN_EPOCH: &str = "open_epoch";
/// One record per sealed epoch keyed by big-endian epoch number.
pub const CF_EPOCHS: &str = "epochs";
/// Leaves, debits and credits of sealed epochs keyed by `epoch ‖ kind ‖ id`.
pub const CF_EPOCH_ENTRIES: &str = "epoch_entries";
/// Every accepted receipt as signed (176 bytes) keyed by `epoch ‖ index` (both u64 big-endian):
/// see `ledger::archive`.
pub const CF_ARCHIVE: &str = "archive";
/// Session grants keyed `'g' ‖ session key`, what each session spent keyed `'s' ‖ session key`,
/// and session windows keyed `'w' ‖ session key ‖ payee`: see `ledger::record::grants`.
pub const CF_GRANTS: &str = "grants";

/// A column family of the ledger store.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Cf {
    /// [`CF_META`]
    Meta,
    /// [`CF_CHANNELS`]
    Channels,
    /// [`CF_PAYEE_CHANNELS`]
    PayeeChannels,
    /// [`CF_PAYERS`]
    Payers,
    /// [`CF_PAYEES`]
    Payees,
    /// [`CF_SESSIONS`]
    Sessions,
    /// [`CF_OPEN_EPOCH`]
    OpenEpoch,
    /// [`CF_EPOCHS`]
    Epochs,
    /// [`CF_EPOCH_ENTRIES`]
    EpochEntries,
    /// [`CF_ARCHIVE`]
    Archive,
    /// [`CF_GRANTS`]
    Grants,
}

impl Cf {
    /// Every column family the store opens.
    pub const ALL: [Cf; 11] = [
        Cf::Meta,
        Cf::Channels,
        Cf::PayeeChannels,
        Cf::Payers,
        Cf::Payees,
        Cf::Sessions,
        Cf::OpenEpoch,
        Cf::Epochs,
        Cf::EpochEntries,
        Cf::Archive,
        Cf::Grants,
    ];

    /// Families added after the first layout: created empty in a directory made before them.
    const ADDED_LATER: [Cf; 2] = [Cf::Archive, Cf::Grants];

    /// The RocksDB name.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => CF_META,
            Cf::Channels => CF_CHANNELS,
            Cf::PayeeChannels => CF_PAYEE_CHANNELS,
            Cf::Payers => CF_PAYERS,
            Cf::Payees => CF_PAYEES,
            Cf::Sessions => CF_SESSIONS,
            Cf::OpenEpoch => CF_OPEN_EPOCH,
            Cf::Epochs => CF_EPOCHS,
            Cf::EpochEntries => CF_EPOCH_ENTRIES,
            Cf::Archive => CF_ARCHIVE,
            Cf::Grants => CF_GRANTS,
        }
    }
}

/// Why the store could not be opened, read or written.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The directory holds files but no RocksDB `CURRENT` file: half-written, or not ours.
    #[error(
        "data dir {path} is not empty but holds no RocksDB CURRENT file (half-written or not a Tollgate data dir); refusing to start"
    )]
    NotADatabase {
        /// the data directory
        path: PathBuf,
    },
    /// RocksDB refused to open the directory (corruption, WAL that does not replay, missing
    /// column family, lock held by another process...).
    #[error("cannot open data dir {path}: {message}")]
    Open {
        /// the data directory
        path: PathBuf,
        /// RocksDB's explanation
        message: String,
    },
    /// The database opened but was never initialised as a Tollgate ledger, or by another format.
    #[error("data dir {path}: {problem}; refusing to start")]
    Format {
        /// the data directory
        path: PathBuf,
        /// what is wrong with it
        problem: String,
    },
    /// A stored record does not decode: the data on disk is not what we wrote.
    #[error("corrupt record in column family {cf}: {problem}")]
    Corrupt {
        /// column family name
        cf: &'static str,
        /// what failed to decode
        problem: String,
    },
    /// A read failed.
    #[error("read from column family {cf} failed: {message}")]
    Read {
        /// column family name
        cf: &'static str,
        /// RocksDB's explanation
        message: String,
    },
    /// A write or its fsync failed, now or earlier. The store takes no more writes: fatal.
    #[error("store poisoned, no more writes: {cause}")]
    Poisoned {
        /// the failure that poisoned the store
        cause: String,
    },
    /// RocksDB could not write a checkpoint (a copy of the database) to `path`.
    #[error("cannot write a checkpoint to {path}: {message}")]
    Checkpoint {
        /// the checkpoint's directory
        path: PathBuf,
        /// RocksDB's explanation
        message: String,
    },
    /// Creating the data directory failed.
    #[error("cannot create data dir {path}: {source}")]
    CreateDir {
        /// the data directory
        path: PathBuf,
        /// the OS error
        source: std::io::Error,
    },
}

/// The write options of every ledger write: `sync = true` (fsync the WAL before returning) with
/// the WAL on. An ack may only be sent after a write with these options returned `Ok`.
pub fn synced_write_options() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options.disable_wal(false);
    options
}

/// One operation of a [`StoreBatch`]: its keys and values are ranges of the batch's `data`.
enum Op {
    Put(Cf, Range<usize>, Range<usize>),
    Delete(Cf, Range<usize>),
    /// Deletes every key in `[from, to)`: one range tombstone however many keys it covers.
    DeleteRange(Cf, Range<usize>, Range<usize>),
}

/// Bytes of one archive entry in [`StoreBatch`]: its key, then the receipt.
const ARCHIVE_ENTRY_BYTES: usize = ARCHIVE_KEY_BYTES + RECEIPT_BYTES;
/// Bytes of an archive key: `epoch ‖ index`, both u64 big-endian.
pub const ARCHIVE_KEY_BYTES: usize = 16;

/// RocksDB's write batch header: sequence number and count.
const WRITE_BATCH_HEADER_BYTES: usize = 12;
/// Most a record adds to a RocksDB write batch besides its key and value: a type tag, the
/// column family and both lengths as varints.
const WRITE_BATCH_RECORD_OVERHEAD_BYTES: usize = 1 + 5 + 5 + 5;

/// A group of puts and deletes applied atomically by [`Store::write`].
#[derive(Default)]
pub struct StoreBatch {
    ops: Vec<Op>,
    /// Every key and value of `ops`, one after the other. The writer puts several records per
    /// receipt; copying them into one buffer that grows by doubling costs less than a key and a
    /// value allocated per put (and freed again on the thread that writes the batch).
    data: Vec<u8>,
    /// Archive puts packed as `key ‖ receipt`, one after the other: the hot path adds one per
    /// accepted receipt, 192 bytes, apart from `ops` because their keys and sizes are fixed.
    archive: Vec<u8>,
}

impl std::fmt::Debug for StoreBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBatch")
            .field("ops", &self.ops.len())
            .field("archived", &(self.archive.len() / ARCHIVE_ENTRY_BYTES))
            .finish()
    }
}

impl StoreBatch {
    /// An empty batch with room for as much as `previous` held: a writer's groups are about the
    /// same size one after the other, and a batch that starts empty copies itself over as it
    /// doubles, which for the archive's tens of kilobytes per group was a visible share of the
    /// writer's time.
    pub fn with_room_of(previous: &StoreBatch) -> Self {
        Self {
            ops: Vec::with_capacity(previous.ops.len()),
            data: Vec::with_capacity(previous.data.len()),
            archive: Vec::with_capacity(previous.archive.len()),
        }
    }
    /// Sets `key` to `value`.
    pub fn put(&mut self, cf: Cf, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.put_with(cf, key.as_ref(), |out| {
            out.extend_from_slice(value.as_ref())
        });
    }
    /// Sets `key` to what `encode` appends to the buffer it is given: a record encoded in place.
    /// The buffer holds the batch's earlier keys and values: `encode` may only append to it.
    pub fn put_with(&mut self, cf: Cf, key: &[u8], encode: impl FnOnce(&mut Vec<u8>)) {
        let key = self.push(key);
        let start = self.data.len();
        encode(&mut self.data);
        debug_assert!(self.data.len() >= start, "an encoder may only append");
        self.ops.push(Op::Put(cf, key, start..self.data.len()));
    }
    /// Deletes `key`.
    pub fn delete(&mut self, cf: Cf, key: impl AsRef<[u8]>) {
        let key = self.push(key.as_ref());
        self.ops.push(Op::Delete(cf, key));
    }
    /// Deletes every key from `from` (included) to `to` (excluded).
    pub fn delete_range(&mut self, cf: Cf, from: impl AsRef<[u8]>, to: impl AsRef<[u8]>) {
        let from = self.push(from.as_ref());
        let to = self.push(to.as_ref());
        self.ops.push(Op::DeleteRange(cf, from, to));
    }
    /// Puts `receipt` into [`Cf::Archive`] under `key`.
    pub fn archive(&mut self, key: &[u8; ARCHIVE_KEY_BYTES], receipt: &[u8; RECEIPT_BYTES]) {
        self.archive.extend_from_slice(key);
        self.archive.extend_from_slice(receipt);
    }
    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len() + self.archive.len() / ARCHIVE_ENTRY_BYTES
    }
    /// True when the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.archive.is_empty()
    }
    fn push(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        start..self.data.len()
    }
}

/// The RocksDB database behind the ledger.
pub struct Store {
    db: DB,
    path: PathBuf,
    poison: OnceLock<String>,
    /// Whole sealed epochs read back since the store was opened (see
    /// [`crate::ledger::LedgerReader::sealed_epochs_read`]).
    sealed_epochs_read: AtomicU64,
    /// The options the database was opened with; their statistics count the WAL syncs.
    #[cfg(test)]
    options: Options,
    #[cfg(test)]
    fault: std::sync::Mutex<Option<WriteFault>>,
}

/// A failure the next [`Store::write`] suffers, for tests of what happens after a failed write.
#[cfg(test)]
enum WriteFault {
    /// Fail at once.
    Fail,
    /// Report `held`, wait for `release`, then fail: the write is in progress as long as the
    /// test needs.
    HoldThenFail {
        held: crossbeam_channel::Sender<()>,
        release: crossbeam_channel::Receiver<()>,
    },
}

/// The test's side of a write held by [`Store::hold_next_write_then_fail`].
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct HeldWrite {
    held: crossbeam_channel::Receiver<()>,
    release: crossbeam_channel::Sender<()>,
}

#[cfg(test)]
impl HeldWrite {
    /// Blocks until the write has started and is held.
    pub(crate) fn wait_until_held(&self) {
        self.held.recv().expect("the store holds the write");
    }

    /// Lets the held write go on, and fail.
    pub(crate) fn release_with_failure(self) {
        self.release.send(()).expect("the write is still held");
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("poisoned", &self.poison.get())
            .finish()
    }
}

/// The RocksDB `CURRENT` file: present in every database that finished its creation.
const CURRENT_FILE: &str = "CURRENT";
/// The metadata key that marks a directory as an initialised ledger.
pub const FORMAT_KEY: &[u8] = b"format";

/// All memtables together stay below this; RocksDB flushes the largest when it is reached.
const MEMTABLES_BYTES_MAX: usize = 128 << 20;
/// Bloom filter size: about 1% false positives.
const BLOOM_BITS_PER_KEY: f64 = 10.0;

/// Share of a memtable's size given to its bloom filter.
const MEMTABLE_BLOOM_RATIO: f64 = 0.05;

/// Column family options: a bloom filter on every family, because most of the writer's reads are
/// point lookups of keys that do not exist yet (a new channel, a new payer), and without a filter
/// every such miss reads an index and a data block from each level.
fn cf_options() -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
    let mut options = Options::default();
    options.set_block_based_table_factory(&table);
    options
}

/// The families the writer reads a key of for every receipt (accounts, channels, producer
/// sessions, grants and session windows) also get a memtable bloom filter: without it, each miss
/// (and each read of a key already flushed) first searched the memtable's skip list, which was the
/// writer's second-largest cost under load. Only these: a memtable's filter is allocated whole
/// when the memtable is, and counts against `MEMTABLES_BYTES_MAX`.
fn point_read_options() -> Options {
    let mut options = cf_options();
    options.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
    options.set_memtable_whole_key_filtering(true);
    options
}

/// Memtable of the archive: it takes one 192-byte entry per accepted receipt, so a larger buffer
/// means fewer, larger flushes (each one L0 file of whole epochs' consecutive keys).
const ARCHIVE_WRITE_BUFFER_BYTES: usize = 64 << 20;
/// Target size of archive files: a pruned epoch's files are dropped whole by compaction.
const ARCHIVE_FILE_BYTES: u64 = 64 << 20;

/// The archive's options: written once in key order, read in key order, deleted by range.
/// No bloom filter (nothing reads a missing key) and no compression: of a receipt's 176 bytes,
/// the signature and request hash (96) are random, and only the payer key and payee repeat, so
/// LZ4 would spend flush and compaction CPU on the two background threads the ledger shares
/// for little (not measured yet: see BENCHMARKS). A large write buffer: fewer, larger flushes.
fn archive_options() -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_size(64 << 10);
    let mut options = Options::default();
    options.set_block_based_table_factory(&table);
    options.set_compression_type(rocksdb::DBCompressionType::None);
    options.set_write_buffer_size(ARCHIVE_WRITE_BUFFER_BYTES);
    options.set_target_file_size_base(ARCHIVE_FILE_BYTES);
    options
}

impl Cf {
    fn options(self) -> Options {
        match self {
            Cf::Archive => archive_options(),
            Cf::Channels | Cf::Payers | Cf::Payees | Cf::Sessions | Cf::Grants => {
                point_read_options()
            }
            _ => cf_options(),
        }
    }
}

/// Database options, WAL recovery above all.
///
/// Every acked write was fsynced whole (`sync = true`), so after a power cut the only damage an
/// honest disk leaves is an incomplete last record: a write that was under way, whose group was
/// never acked. `TolerateCorruptedTailRecords` drops exactly that (in RocksDB 11.8, a truncated
/// header, or a record whose length runs past the end of the last WAL) and refuses everything
/// else: a checksum mismatch anywhere, a torn record followed by more data. A refusal means an
/// acked write may be damaged; starting anyway would serve balances that silently miss it.
/// (`AbsoluteConsistency`, used before, also refused the torn tail, so a power cut needed manual
/// repair; `PointInTimeRecovery` would silently stop at a damaged acked record.)
///
/// Two more checks at open: `track_and_verify_wals_in_manifest` records each closed WAL's
/// synced size in the MANIFEST and refuses a closed WAL that is missing or shorter (the live
/// WAL is covered by the record checksums above); `paranoid_checks` turns any other
/// inconsistency RocksDB finds into an error rather than a warning.
fn db_options(create: bool) -> Options {
    let mut options = Options::default();
    options.set_db_write_buffer_size(MEMTABLES_BYTES_MAX);
    options.create_if_missing(create);
    options.create_missing_column_families(create);
    options.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    options.set_track_and_verify_wals_in_manifest(true);
    options.set_paranoid_checks(true);
    options.set_max_background_jobs(2);
    #[cfg(test)]
    options.enable_statistics();
    options
}

impl Store {
    /// Opens the ledger at `path`, creating it when the directory is missing or empty.
    ///
    /// A fresh database is created with every column family; `init` then writes the format
    /// marker (synced) so that a directory which crashed during creation is recognised as
    /// half-written on the next start. An existing one must already carry the marker.
    pub fn open(
        path: &Path,
        init: impl FnOnce(&mut StoreBatch),
    ) -> Result<(Store, bool), StoreError> {
        let fresh = is_missing_or_empty(path)?;
        if !fresh && !path.join(CURRENT_FILE).is_file() {
            return Err(StoreError::NotADatabase {
                path: path.to_path_buf(),
            });
        }
        if fresh {
            std::fs::create_dir_all(path).map_err(|source| StoreError::CreateDir {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let open_error = |e: rocksdb::Error| StoreError::Open {
            path: path.to_path_buf(),
            message: e.into_string(),
        };
        // A directory made before a family existed lacks only that family: opened without it,
        // then given an empty one. Any other missing family is still refused by RocksDB.
        let missing: Vec<Cf> = if fresh {
            Vec::new()
        } else {
            let present = DB::list_cf(&Options::default(), path).map_err(open_error)?;
            Cf::ADDED_LATER
                .into_iter()
                .filter(|cf| !present.iter().any(|name| name == cf.name()))
                .collect()
        };
        let descriptors = Cf::ALL
            .iter()
            .filter(|cf| !missing.contains(cf))
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf.options()));
        let options = db_options(fresh);
        let mut db = DB::open_cf_descriptors(&options, path, descriptors).map_err(open_error)?;
        for cf in missing {
            db.create_cf(cf.name(), &cf.options()).map_err(open_error)?;
        }
        let store = Store {
            db,
            path: path.to_path_buf(),
            poison: OnceLock::new(),
            sealed_epochs_read: AtomicU64::new(0),
            #[cfg(test)]
            options,
            #[cfg(test)]
            fault: std::sync::Mutex::new(None),
        };
        if fresh {
            let mut batch = StoreBatch::default();
            init(&mut batch);
            store.write(batch)?;
        } else if store.get(Cf::Meta, FORMAT_KEY)?.is_none() {
            return Err(StoreError::Format {
                path: path.to_path_buf(),
                problem: "database was created but never initialised as a Tollgate ledger \
                          (crash during creation?)"
                    .into(),
            });
        }
        Ok((store, fresh))
    }

    /// Writes a consistent copy of the database to `dir`, which must not exist: table files are
    /// hard-linked when `dir` is on the same filesystem, the rest copied. The copy opens like
    /// any data directory.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), StoreError> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|checkpoint| checkpoint.create_checkpoint(dir))
            .map_err(|e| StoreError::Checkpoint {
                path: dir.to_path_buf(),
                message: e.into_string(),
            })
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True once a write has failed.
    pub fn is_poisoned(&self) -> bool {
        self.poison.get().is_some()
    }

    fn poisoned(&self) -> Option<StoreError> {
        self.poison.get().map(|cause| StoreError::Poisoned {
            cause: cause.clone(),
        })
    }

    /// Applies `batch` atomically and fsyncs the WAL before returning. Any failure poisons the
    /// store: this and every later write return [`StoreError::Poisoned`].
    ///
    /// An empty batch writes nothing but still answers with the store's health, so a caller
    /// that releases replies after a write (even of nothing) never releases them after a
    /// failure.
    pub fn write(&self, batch: StoreBatch) -> Result<(), StoreError> {
        if let Some(error) = self.poisoned() {
            return Err(error);
        }
        if batch.is_empty() {
            return Ok(());
        }
        #[cfg(test)]
        let fault = self
            .fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        #[cfg(test)]
        if let Some(fault) = fault {
            if let WriteFault::HoldThenFail { held, release } = fault {
                let _ = held.send(());
                let _ = release.recv();
            }
            // A real RocksDB failure: sync without a WAL is refused as an invalid argument.
            let mut invalid = synced_write_options();
            invalid.disable_wal(true);
            return self.write_with(batch, &invalid);
        }
        self.write_with(batch, &synced_write_options())
    }

    fn write_with(&self, batch: StoreBatch, options: &WriteOptions) -> Result<(), StoreError> {
        // Room for every record up front: RocksDB's batch is one string that would otherwise
        // copy itself over each time it doubles.
        let records = batch.ops.len() + batch.archive.len() / ARCHIVE_ENTRY_BYTES;
        let mut write_batch = WriteBatch::with_capacity_bytes(
            WRITE_BATCH_HEADER_BYTES
                + batch.data.len()
                + batch.archive.len()
                + records * WRITE_BATCH_RECORD_OVERHEAD_BYTES,
        );
        let handle = |cf: Cf| {
            self.db
                .cf_handle(cf.name())
                .ok_or_else(|| self.poison(format!("column family {} is gone", cf.name())))
        };
        let data = &batch.data;
        for op in batch.ops {
            match op {
                Op::Put(cf, key, value) => {
                    write_batch.put_cf(handle(cf)?, &data[key], &data[value])
                }
                Op::Delete(cf, key) => write_batch.delete_cf(handle(cf)?, &data[key]),
                Op::DeleteRange(cf, from, to) => {
                    write_batch.delete_range_cf(handle(cf)?, &data[from], &data[to])
                }
            }
        }
        if !batch.archive.is_empty() {
            let archive = handle(Cf::Archive)?;
            for entry in batch.archive.chunks_exact(ARCHIVE_ENTRY_BYTES) {
                let (key, receipt) = entry.split_at(ARCHIVE_KEY_BYTES);
                write_batch.put_cf(archive, key, receipt);
            }
        }
        self.db
            .write_opt(write_batch, options)
            .map_err(|e| self.poison(format!("write failed: {}", e.into_string())))
    }

    /// Poisons the store: this and every later write fail. Used by the writer when an invariant
    /// breaks, so that nothing more is written over state it no longer trusts.
    pub(crate) fn poison(&self, cause: String) -> StoreError {
        let cause = self.poison.get_or_init(|| cause).clone();
        metrics::gauge!(names::LEDGER_POISONED).set(1.0);
        tracing::error!(path = %self.path.display(), %cause, "ledger store poisoned");
        StoreError::Poisoned { cause }
    }

    #[cfg(test)]
    fn inject(&self, fault: WriteFault) {
        *self
            .fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fault);
    }

    /// Test hook: the next write fails inside RocksDB (and so poisons the store).
    #[cfg(test)]
    pub(crate) fn fail_next_write(&self) {
        self.inject(WriteFault::Fail);
    }

    /// Test hook: the next write is held until the test releases it, then fails inside RocksDB.
    #[cfg(test)]
    pub(crate) fn hold_next_write_then_fail(&self) -> HeldWrite {
        let (held_tx, held) = crossbeam_channel::bounded(1);
        let (release, release_rx) = crossbeam_channel::bounded(1);
        self.inject(WriteFault::HoldThenFail {
            held: held_tx,
            release: release_rx,
        });
        HeldWrite { held, release }
    }

    /// Test hook: how many times RocksDB has fsynced the WAL since the store was opened.
    #[cfg(test)]
    pub(crate) fn wal_syncs(&self) -> u64 {
        self.options
            .get_ticker_count(rocksdb::statistics::Ticker::WalFileSynced)
    }

    /// Counts one whole sealed epoch read back.
    pub(crate) fn count_sealed_epoch_read(&self) {
        self.sealed_epochs_read.fetch_add(1, Ordering::Relaxed);
    }

    /// Whole sealed epochs read back since the store was opened.
    pub(crate) fn sealed_epochs_read(&self) -> u64 {
        self.sealed_epochs_read.load(Ordering::Relaxed)
    }

    /// Bytes the column family holds on disk and in memory: its SST files and its live
    /// memtables (what is not flushed yet is in the WAL too, counted once here).
    pub fn cf_bytes(&self, cf: Cf) -> Result<u64, StoreError> {
        let handle = self.handle(cf)?;
        let mut total = 0u64;
        for property in [
            rocksdb::properties::TOTAL_SST_FILES_SIZE,
            rocksdb::properties::CUR_SIZE_ALL_MEM_TABLES,
        ] {
            let value = self
                .db
                .property_int_value_cf(handle, property)
                .map_err(|e| StoreError::Read {
                    cf: cf.name(),
                    message: e.into_string(),
                })?
                .unwrap_or(0);
            total = total.saturating_add(value);
        }
        Ok(total)
    }

    /// Compacts the keys of `cf` below `to`: after a range deletion, this is what gives the
    /// space back (files wholly under the tombstone are dropped without being read). Blocks for
    /// as long as the compaction runs, so never on the writer's threads.
    pub fn compact_below(&self, cf: Cf, to: &[u8]) -> Result<(), StoreError> {
        let handle = self.handle(cf)?;
        self.db.compact_range_cf(handle, None::<&[u8]>, Some(to));
        Ok(())
    }

    /// Reads the latest written value of `key`.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let handle = self.handle(cf)?;
        self.db
            .get_pinned_cf(handle, key)
            .map(|value| value.map(|v| v.to_vec()))
            .map_err(|e| StoreError::Read {
                cf: cf.name(),
                message: e.into_string(),
            })
    }

    /// A consistent point-in-time view for reads that span several keys. Holding it never
    /// blocks the writer.
    pub fn snapshot(&self) -> StoreSnapshot<'_> {
        StoreSnapshot {
            store: self,
            snapshot: self.db.snapshot(),
        }
    }

    fn handle(&self, cf: Cf) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db.cf_handle(cf.name()).ok_or(StoreError::Read {
            cf: cf.name(),
            message: "column family missing".into(),
        })
    }
}

fn is_missing_or_empty(path: &Path) -> Result<bool, StoreError> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(StoreError::CreateDir {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A point-in-time view of the store (a RocksDB snapshot).
pub struct StoreSnapshot<'a> {
    store: &'a Store,
    snapshot: rocksdb::Snapshot<'a>,
}

impl std::fmt::Debug for StoreSnapshot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSnapshot")
            .field("sequence", &self.snapshot.sequence_number())
            .finish()
    }
}

impl StoreSnapshot<'_> {
    /// Reads `key` as of the snapshot.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let handle = self.store.handle(cf)?;
        self.snapshot
            .get_cf(handle, key)
            .map_err(|e| StoreError::Read {
                cf: cf.name(),
                message: e.into_string(),
            })
    }

    /// Up to `limit` entries whose key starts with `prefix`, in key order, starting after
    /// `after` when given.
    pub fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let handle = self.store.handle(cf)?;
        let mut options = ReadOptions::default();
        options.set_iterate_range(PrefixRange(prefix));
        let start = after.unwrap_or(prefix);
        let iter = self.snapshot.iterator_cf_opt(
            handle,
            options,
            IteratorMode::From(start, rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(|e| StoreError::Read {
                cf: cf.name(),
                message: e.into_string(),
            })?;
            if after.is_some_and(|after| *key == *after) {
                continue;
            }
            if out.len() >= limit {
                break;
            }
            out.push((key, value));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
