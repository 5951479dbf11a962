//! Whether a data directory is a ledger this build can run with this configuration, and how a new
//! one is made: the format record written at creation (layout version, window size, whether
//! receipts are archived) and the checks made on every start.

use std::path::Path;

use crate::store::{Cf, FORMAT_KEY, Store, StoreBatch};

use super::LedgerConfig;
use super::error::{LedgerError, corrupt};
use super::record::{FormatRecord, LAYOUT_VERSION, UPGRADABLE_LAYOUTS};
use super::window::WINDOW_WORD_BITS;

/// Checks what can be checked about a configuration before anything is opened.
pub(crate) fn validate(config: &LedgerConfig) -> Result<(), LedgerError> {
    let words = config.window_nonces / WINDOW_WORD_BITS;
    if config.window_nonces == 0
        || !config.window_nonces.is_multiple_of(WINDOW_WORD_BITS)
        || words >= u32::from(u16::MAX)
    {
        return Err(LedgerError::Config {
            problem: format!(
                "window_nonces must be a non-zero multiple of {WINDOW_WORD_BITS} below {}, got {}",
                u32::from(u16::MAX) * WINDOW_WORD_BITS,
                config.window_nonces
            ),
        });
    }
    if config.acks_kept_per_producer == 0
        || config.group_receipts_max == 0
        || config.seal_chunk_keys == 0
    {
        return Err(LedgerError::Config {
            problem: "acks_kept_per_producer, group_receipts_max and seal_chunk_keys must be at \
                      least 1"
                .into(),
        });
    }
    Ok(())
}

/// Opens the store in `data_dir`, creating it with the format record of `config` if it does not
/// exist; true if it was created. Whether an existing one fits `config` is [`check`]'s question.
pub(crate) fn open_store(
    data_dir: &Path,
    config: &LedgerConfig,
) -> Result<(Store, bool), LedgerError> {
    let format = FormatRecord {
        layout: LAYOUT_VERSION,
        window_nonces: config.window_nonces,
        archive_receipts: config.archive_receipts,
    }
    .encode();
    Ok(Store::open(data_dir, |batch| {
        batch.put(Cf::Meta, FORMAT_KEY, format)
    })?)
}

/// The format record of `store`.
pub(crate) fn read(store: &Store) -> Result<FormatRecord, LedgerError> {
    let format_bytes = store
        .get(Cf::Meta, FORMAT_KEY)?
        .ok_or_else(|| LedgerError::Config {
            problem: "data dir has no format record".into(),
        })?;
    Ok(FormatRecord::decode(&format_bytes).map_err(corrupt(Cf::Meta))?)
}

/// Refuses a store whose format record is missing, of a layout this build neither writes nor
/// upgrades, or of another window size than `config`'s (stored windows have that many words);
/// returns the record.
///
/// Whether receipts are archived is the directory's, not the configuration's: a directory made
/// before the archive existed (or with it off) runs without one, with a warning when the
/// configuration asks for it, rather than being refused, because the ledger it holds is whole
/// and turning the archive on halfway would leave its open epoch unauditable anyway.
pub(crate) fn check(store: &Store, config: &LedgerConfig) -> Result<FormatRecord, LedgerError> {
    let format = read(store)?;
    if format.layout != LAYOUT_VERSION && !UPGRADABLE_LAYOUTS.contains(&format.layout) {
        return Err(LedgerError::Config {
            problem: format!(
                "data dir {} has layout {}, this build reads layout {LAYOUT_VERSION}",
                store.path().display(),
                format.layout
            ),
        });
    }
    if format.window_nonces != config.window_nonces {
        return Err(LedgerError::Config {
            problem: format!(
                "data dir {} was created with window_nonces = {}, configured {}; the window \
                 size cannot change on an existing ledger",
                store.path().display(),
                format.window_nonces,
                config.window_nonces
            ),
        });
    }
    if format.archive_receipts != config.archive_receipts {
        tracing::warn!(
            data_dir = %store.path().display(),
            archived = format.archive_receipts,
            "archive_receipts is fixed when a data dir is created; this one keeps its setting \
             (without the archive nobody can audit your epochs)"
        );
    }
    Ok(format)
}

/// Marks a store of an older layout (see [`UPGRADABLE_LAYOUTS`]) as being of this build's.
/// Written before the upgrade steps run, which resume at any layout (the grant split is marked
/// done by its own key, the spend fold runs at every open), so that a crash halfway leaves a
/// directory an older build refuses rather than one holding records it cannot read (session
/// windows folded by this build are stored as runs).
pub(crate) fn upgraded(store: &Store, format: FormatRecord) -> Result<(), LedgerError> {
    if format.layout == LAYOUT_VERSION {
        return Ok(());
    }
    let mut batch = StoreBatch::default();
    batch.put(
        Cf::Meta,
        FORMAT_KEY,
        FormatRecord {
            layout: LAYOUT_VERSION,
            ..format
        }
        .encode(),
    );
    Ok(store.write(batch)?)
}
