//! Where an audit reads epochs from: the operator's query API, or a directory an earlier run
//! saved from it (`tollgate audit --save DIR`, then `--archive DIR` offline). A saved directory
//! holds, per sealed epoch `n`, `epoch-n.json` (the API's epoch record), `epoch-n.tree.json` (its
//! standard-v1 tree dump) and `epoch-n.receipts` (its archived receipts, raw 176-byte records in
//! archive order), and `grants.jsonl` the session grants the API served (one `GET /v1/grants`
//! item per line; a directory saved before grants existed has none). A file that is truncated or
//! does not parse is an error naming the file and the position, never skipped.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tollgate_engine::receipt::RECEIPT_BYTES;
use tollgate_query::grants::GrantView;
use tollgate_query::model::{
    EpochView, HEADER_NEXT_AFTER, RECEIPTS_OCTET_STREAM, RECEIPTS_PAGE_MAX,
};
use tollgate_query::{QueryClient, QueryError};
use tollgate_settle::merkle::StandardDump;

use super::recompute::Archived;

/// An epoch's data as read.
#[derive(Debug)]
pub struct EpochData {
    /// The API's record of it.
    pub record: EpochView,
    /// Its tree dump.
    pub tree: StandardDump,
    /// Its receipts, or why there are none to read.
    pub receipts: Result<Vec<Archived>, Unavailable>,
}

/// Why an epoch's receipts cannot be read.
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

/// The operator's API or a saved directory.
#[derive(Debug)]
pub enum Source {
    /// A server's query API.
    Api(QueryClient),
    /// A directory written by `--save`.
    Dir(PathBuf),
}

/// The saved grants' file in a `--save` directory.
pub const GRANTS_FILE: &str = "grants.jsonl";

fn file(dir: &Path, epoch: u64, suffix: &str) -> PathBuf {
    dir.join(format!("epoch-{epoch}{suffix}"))
}

/// Splits raw records into receipts, refusing a length that is not a whole number of them.
pub fn records(epoch: u64, bytes: &[u8], whence: &str) -> anyhow::Result<Vec<Archived>> {
    let whole = bytes.len() / RECEIPT_BYTES * RECEIPT_BYTES;
    if whole != bytes.len() {
        bail!(
            "{whence}: truncated: {} bytes is not a whole number of {RECEIPT_BYTES}-byte records \
             (record {} at byte {whole} has only {} bytes)",
            bytes.len(),
            whole / RECEIPT_BYTES,
            bytes.len() - whole
        );
    }
    Ok(bytes
        .chunks_exact(RECEIPT_BYTES)
        .enumerate()
        .map(|(index, chunk)| {
            let mut record = [0u8; RECEIPT_BYTES];
            record.copy_from_slice(chunk);
            Archived {
                epoch,
                index: index as u64,
                bytes: record,
            }
        })
        .collect())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // serde_json's error names the line and column.
    serde_json::from_slice(&text).with_context(|| format!("{} does not parse", path.display()))
}

impl Source {
    /// The number of the newest sealed epoch (0 when none is).
    pub async fn last_sealed(&self) -> anyhow::Result<u64> {
        match self {
            Self::Api(client) => {
                let list = client.epochs(1).await?;
                Ok(list
                    .epochs
                    .first()
                    .map_or(0, |open| open.epoch.saturating_sub(1)))
            }
            Self::Dir(dir) => {
                let mut last = 0;
                for entry in std::fs::read_dir(dir)
                    .with_context(|| format!("reading archive directory {}", dir.display()))?
                {
                    let name = entry?.file_name();
                    let name = name.to_string_lossy();
                    if let Some(number) = name
                        .strip_prefix("epoch-")
                        .and_then(|rest| rest.strip_suffix(".json"))
                        .filter(|rest| !rest.contains('.'))
                    {
                        last = last.max(number.parse::<u64>().with_context(|| {
                            format!("{}: {name} is not epoch-N.json", dir.display())
                        })?);
                    }
                }
                Ok(last)
            }
        }
    }

    /// Every session grant the operator serves, also saved under `save` when given.
    pub async fn grants(&self, save: Option<&Path>) -> anyhow::Result<Vec<GrantView>> {
        let grants = match self {
            Self::Api(client) => client.grants().await?,
            Self::Dir(dir) => {
                let path = dir.join(GRANTS_FILE);
                if !path.exists() {
                    return Ok(Vec::new());
                }
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                text.lines()
                    .enumerate()
                    .filter(|(_, line)| !line.trim().is_empty())
                    .map(|(number, line)| {
                        serde_json::from_str(line).with_context(|| {
                            format!("{} line {}: not a grant", path.display(), number + 1)
                        })
                    })
                    .collect::<anyhow::Result<_>>()?
            }
        };
        if let Some(dir) = save {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut text = String::new();
            for grant in &grants {
                text.push_str(&serde_json::to_string(grant)?);
                text.push('\n');
            }
            let path = dir.join(GRANTS_FILE);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(grants)
    }

    /// Epoch `epoch`'s record alone (what a dispute's `carried_into` is read from).
    pub async fn record(&self, epoch: u64) -> anyhow::Result<EpochView> {
        match self {
            Self::Api(client) => Ok(client.epoch(epoch).await?),
            Self::Dir(dir) => read_json(&file(dir, epoch, ".json")),
        }
    }

    /// Reads epoch `epoch`, also saving it under `save` when given.
    pub async fn epoch(&self, epoch: u64, save: Option<&Path>) -> anyhow::Result<EpochData> {
        let data = match self {
            Self::Api(client) => {
                let record = client.epoch(epoch).await?;
                let (_, tree) = client
                    .fetch(&format!("v1/epochs/{epoch}/tree"), &[], "application/json")
                    .await?;
                let tree: StandardDump = serde_json::from_slice(&tree)
                    .with_context(|| format!("epoch {epoch}: the served tree does not parse"))?;
                let receipts = match api_receipts(client, epoch).await {
                    Ok(receipts) => Ok(receipts),
                    Err(QueryError::NotFound { message, .. }) => Err(Unavailable(message)),
                    Err(error) => return Err(error.into()),
                };
                EpochData {
                    record,
                    tree,
                    receipts,
                }
            }
            Self::Dir(dir) => {
                let receipts_file = file(dir, epoch, ".receipts");
                let receipts = if receipts_file.exists() {
                    let bytes = std::fs::read(&receipts_file)
                        .with_context(|| format!("reading {}", receipts_file.display()))?;
                    Ok(records(
                        epoch,
                        &bytes,
                        &receipts_file.display().to_string(),
                    )?)
                } else {
                    Err(Unavailable(format!(
                        "{} is missing",
                        receipts_file.display()
                    )))
                };
                EpochData {
                    record: read_json(&file(dir, epoch, ".json"))?,
                    tree: read_json(&file(dir, epoch, ".tree.json"))?,
                    receipts,
                }
            }
        };
        if let Some(dir) = save {
            save_epoch(dir, epoch, &data)?;
        }
        Ok(data)
    }
}

/// Every archived receipt of `epoch`, page by page, as raw records.
async fn api_receipts(client: &QueryClient, epoch: u64) -> Result<Vec<Archived>, QueryError> {
    let mut receipts = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let mut query = vec![("limit", RECEIPTS_PAGE_MAX.to_string())];
        if let Some(after) = after {
            query.push(("after", after.to_string()));
        }
        let (headers, body) = client
            .fetch(
                &format!("v1/epochs/{epoch}/receipts"),
                &query,
                RECEIPTS_OCTET_STREAM,
            )
            .await?;
        let first = receipts.len() as u64;
        let page = records(
            epoch,
            &body,
            &format!("epoch {epoch} receipts page after {after:?}"),
        )
        .map_err(|e| QueryError::BadResponse {
            server: "the API".into(),
            problem: format!("{e:#}"),
        })?;
        receipts.extend(page.into_iter().map(|mut archived| {
            archived.index += first;
            archived
        }));
        let next = headers
            .get(HEADER_NEXT_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::parse::<u64>)
            .transpose()
            .map_err(|e| QueryError::BadResponse {
                server: "the API".into(),
                problem: format!("{HEADER_NEXT_AFTER}: {e}"),
            })?;
        match next {
            Some(next) => after = Some(next),
            None => return Ok(receipts),
        }
    }
}

fn save_epoch(dir: &Path, epoch: u64, data: &EpochData) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |path: PathBuf, bytes: &[u8]| {
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    };
    write(
        file(dir, epoch, ".json"),
        &serde_json::to_vec_pretty(&data.record)?,
    )?;
    write(
        file(dir, epoch, ".tree.json"),
        &serde_json::to_vec(&data.tree)?,
    )?;
    if let Ok(receipts) = &data.receipts {
        let bytes: Vec<u8> = receipts.iter().flat_map(|r| r.bytes).collect();
        write(file(dir, epoch, ".receipts"), &bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_archive_is_refused_with_its_position() {
        let error =
            records(3, &[0u8; 2 * RECEIPT_BYTES + 80], "epoch-3.receipts").expect_err("truncated");
        let text = error.to_string();
        assert!(text.contains("epoch-3.receipts"), "{text}");
        assert!(
            text.contains("record 2 at byte 352 has only 80 bytes"),
            "{text}"
        );
        let whole = records(3, &[0u8; 2 * RECEIPT_BYTES], "x").expect("whole records");
        assert_eq!(whole.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 1]);
    }
}
