//! Reading an object of a JetStream object store without a consumer.
//!
//! async-nats reads an object's chunks through an ephemeral ordered push consumer. With one
//! server of three down, NATS 2.9.10 (Debian bookworm's `nats-server`) may place that consumer on
//! the server that is down, and the read then waits until it times out: seen in the cluster test
//! after it killed a NATS server, where every read of an epoch's partition summaries failed
//! (sixteen reads, each failing about one time in three) and checkpoints were judged corrupt.
//! Direct gets need no consumer and any live replica answers them, so this reads the object's
//! info by direct get, then each chunk as the next message on the object's chunk subject, and
//! checks the size and SHA-256 digest the info records. Hand-written because the library has no
//! consumer-free read; writes still go through the library's `put`, which uses none.

use async_nats::jetstream::object_store::ObjectInfo;
use async_nats::jetstream::stream;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::error::NatsError;

/// Why an object could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// No such object (never stored, or deleted).
    #[error("no such object")]
    NotFound,
    /// Asking the servers failed: worth another try.
    #[error("{0}")]
    Failed(NatsError),
    /// Writing the bytes out failed.
    #[error("writing the object out: {0}")]
    Write(std::io::Error),
    /// The chunks are not the object the info describes (size or digest).
    #[error("the object's bytes differ from its info: {0}")]
    Corrupt(String),
}

/// The subject of the object store's metadata message about the object whose name is
/// `encoded` (base64url, as the store encodes names; `*` for every object), in the store whose
/// stream is `objects`.
pub(crate) fn meta_subject(objects: &stream::Stream, encoded: &str) -> String {
    format!("$O.{}.M.{encoded}", bucket_of(objects))
}

/// The object store's name: its stream is `OBJ_<bucket>`.
fn bucket_of(objects: &stream::Stream) -> &str {
    let stream = &objects.cached_info().config.name;
    stream.strip_prefix("OBJ_").unwrap_or(stream)
}

/// Writes object `name` of the object store whose stream is `objects` to `out`, chunk by chunk,
/// and checks it against the info the store recorded for it. A failed read may have written
/// part of it.
pub(crate) async fn read_object(
    objects: &stream::Stream,
    name: &str,
    out: &mut (impl AsyncWrite + Unpin),
) -> Result<ObjectInfo, ReadError> {
    let failed = |error: NatsError| ReadError::Failed(error);
    let meta = meta_subject(objects, &URL_SAFE.encode(name));
    let info = match objects.direct_get_last_for_subject(meta).await {
        Ok(message) => message.payload,
        Err(error)
            if error.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound =>
        {
            return Err(ReadError::NotFound);
        }
        Err(error) => return Err(failed(error.into())),
    };
    let info: ObjectInfo = serde_json::from_slice(&info)
        .map_err(|error| ReadError::Corrupt(format!("unreadable info: {error}")))?;
    if info.deleted {
        return Err(ReadError::NotFound);
    }
    let chunks = format!("$O.{}.C.{}", bucket_of(objects), info.nuid);
    let mut digest = Sha256::new();
    let (mut read, mut from) = (0usize, 1u64);
    for _ in 0..info.chunks {
        let chunk = objects
            .direct_get_next_for_subject(chunks.as_str(), Some(from))
            .await
            .map_err(|error| failed(error.into()))?;
        from = chunk.sequence.saturating_add(1);
        read = read.saturating_add(chunk.payload.len());
        digest.update(&chunk.payload);
        out.write_all(&chunk.payload)
            .await
            .map_err(ReadError::Write)?;
    }
    out.flush().await.map_err(ReadError::Write)?;
    if read != info.size {
        return Err(ReadError::Corrupt(format!(
            "{read} bytes in {} chunks, the info says {}",
            info.chunks, info.size
        )));
    }
    let found = format!("SHA-256={}", URL_SAFE.encode(digest.finalize()));
    match &info.digest {
        Some(recorded) if *recorded == found => Ok(info),
        recorded => Err(ReadError::Corrupt(format!(
            "digest {found}, the info says {recorded:?}"
        ))),
    }
}
