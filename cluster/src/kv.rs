//! KV buckets on a NATS 2.9 server: creating one, and reading a key from its stream's leader.
//!
//! async-nats creates buckets only after an account-info request whose reply it cannot parse from
//! a 2.9 server (it expects the `reserved_memory`/`reserved_storage` fields added in 2.10), so we
//! create the bucket's stream ourselves, laid out as every NATS client expects a bucket (ADR-8:
//! stream `KV_<bucket>`, subjects `$KV.<bucket>.>`, rollups allowed, deletes denied, direct
//! gets), and open it with the client's KV API.
//!
//! The client's own KV reads use direct gets, which any replica may answer, possibly one that has
//! not yet applied the latest write. Lease and fence decisions must see the latest write, so they
//! read through the stream's leader (`STREAM.MSG.GET`), the same server that orders the writes.

use async_nats::jetstream::kv::Store;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use std::time::Duration;

use crate::error::NatsError;

/// The stream behind a bucket keeping one value per key, whose entries the servers delete once
/// they are `max_age` old (zero: never).
pub(crate) fn bucket_stream(
    bucket: &str,
    description: &str,
    replicas: usize,
    max_age: Duration,
) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.to_string()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_bytes: -1,
        max_age,
        num_replicas: replicas,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    }
}

/// The operation header KV writes carry: absent or `PUT` for a value, `DEL`/`PURGE` for a removal.
const OPERATION: &str = "KV-Operation";

/// A key's latest entry.
#[derive(Debug)]
pub(crate) enum Latest {
    /// The key was never written, or every entry aged out (max age).
    Absent,
    /// The last entry removes the key; the next write must expect this revision.
    Removed { revision: u64 },
    /// The key holds a value; its message sequence is its revision.
    Value(StreamMessage),
}

impl Latest {
    /// The revision a compare-and-set writing a fresh value must expect.
    pub(crate) fn vacant_revision(&self) -> Option<u64> {
        match self {
            Latest::Absent => Some(0),
            Latest::Removed { revision } => Some(*revision),
            Latest::Value(_) => None,
        }
    }
}

/// The latest entry of `key` in `store`, as the stream leader has it.
pub(crate) async fn latest(store: &Store, key: &str) -> Result<Latest, NatsError> {
    let subject = format!("{}{key}", store.prefix);
    match store.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(message) => {
            let removed = message
                .headers
                .get(OPERATION)
                .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
            Ok(if removed {
                Latest::Removed {
                    revision: message.sequence,
                }
            } else {
                Latest::Value(message)
            })
        }
        Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(Latest::Absent),
        Err(err) => Err(Box::new(err)),
    }
}
