//! Which subjects a stream holds messages on: the checkpoints (the object store's metadata
//! subjects), the announced nodes (the lease bucket's keys), the partitions' logs.

use std::collections::BTreeMap;

use async_nats::jetstream::stream;
use futures::TryStreamExt;

use crate::error::NatsError;

/// The subjects matching `filter` that `stream` holds messages on, each once, with its message
/// count: every subject held when the listing began; one added while it pages may be missing.
///
/// Deduplicated here because async-nats (0.51) pages the listing by offset: its first page is
/// the server's whole map, the next ones are slices of the server's sorted list, so a subject
/// added between the two requests shifts that list and a subject of the first page comes back
/// in the second. Seen as the same checkpoint listed twice while other partitions stored
/// theirs, which made an owner prune its only other checkpoint and purge its log through the
/// newest.
pub async fn subjects(
    stream: &stream::Stream,
    filter: String,
) -> Result<BTreeMap<String, usize>, NatsError> {
    let pages = stream.info_with_subjects(filter).await?;
    Ok(pages.try_collect().await?)
}
