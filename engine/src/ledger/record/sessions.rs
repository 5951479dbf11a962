//! Producer sessions and the acks kept for re-sent batches.

use super::*;

/// A producer's client session: its current session epoch and the sequence numbers of the
/// batches whose acks are kept (oldest first). Keyed by (client id, producer id): a producer id
/// means something only inside the authenticated client that uses it.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ProducerState {
    /// Highest session epoch seen; older ones are refused.
    pub session_epoch: u64,
    /// Sequence numbers of the kept acks, oldest first, at most the configured count.
    pub recent: VecDeque<u64>,
}

/// A producer as the ledger knows it: the authenticated client and the producer id it chose.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ProducerKey {
    /// The client the connection authenticated as.
    pub client_id: u64,
    /// The producer id inside that client.
    pub producer_id: u64,
}

/// Key of a producer record in the sessions column family: `'p' ‖ client ‖ producer` (BE).
pub fn producer_key(producer: ProducerKey) -> [u8; 17] {
    let mut out = [0u8; 17];
    out[0] = b'p';
    out[1..9].copy_from_slice(&producer.client_id.to_be_bytes());
    out[9..].copy_from_slice(&producer.producer_id.to_be_bytes());
    out
}

/// Key of a stored ack: `'a' ‖ client ‖ producer ‖ session epoch ‖ batch seq` (all BE).
pub fn ack_key(producer: ProducerKey, session_epoch: u64, batch_seq: u64) -> [u8; 33] {
    let mut out = [0u8; 33];
    out[0] = b'a';
    out[1..9].copy_from_slice(&producer.client_id.to_be_bytes());
    out[9..17].copy_from_slice(&producer.producer_id.to_be_bytes());
    out[17..25].copy_from_slice(&session_epoch.to_be_bytes());
    out[25..].copy_from_slice(&batch_seq.to_be_bytes());
    out
}

/// blake3 of a batch's receipt bytes, kept beside its ack so a re-send can be told apart from
/// another batch under the same number.
pub type BatchDigest = [u8; 32];

/// The digest a batch's ack is stored with: blake3 of its receipt bytes as received.
pub fn batch_digest(batch: &ReceiptBatch) -> BatchDigest {
    *blake3::hash(batch.as_bytes()).as_bytes()
}

impl ProducerState {
    /// session_epoch u64, count u32, seqs u64 each.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = encoder(12 + 8 * self.recent.len());
        out.extend_from_slice(&self.session_epoch.to_le_bytes());
        out.extend_from_slice(&(self.recent.len() as u32).to_le_bytes());
        for seq in &self.recent {
            out.extend_from_slice(&seq.to_le_bytes());
        }
        out
    }

    /// Inverse of [`ProducerState::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, "producer")?;
        let session_epoch = d.u64()?;
        let count = d.u32()?;
        let recent = (0..count).map(|_| d.u64()).collect::<Result<_, _>>()?;
        d.finish()?;
        Ok(Self {
            session_epoch,
            recent,
        })
    }
}

/// digest 32 bytes, batch_seq u64, accepted u32, count u32, then (index u32, reason code u8)
/// each.
pub fn encode_ack(ack: &BatchAck, digest: &BatchDigest) -> Vec<u8> {
    let mut out = encoder(32 + 16 + 5 * ack.rejections.len());
    out.extend_from_slice(digest);
    out.extend_from_slice(&ack.batch_seq.to_le_bytes());
    out.extend_from_slice(&ack.accepted.to_le_bytes());
    out.extend_from_slice(&(ack.rejections.len() as u32).to_le_bytes());
    for (index, reason) in &ack.rejections {
        out.extend_from_slice(&index.to_le_bytes());
        out.push(reason.code());
    }
    out
}

/// Inverse of [`encode_ack`].
pub fn decode_ack(bytes: &[u8]) -> Result<(BatchAck, BatchDigest), DecodeError> {
    let mut d = Decoder::new(bytes, "ack")?;
    let digest = d.take::<32>()?;
    let batch_seq = d.u64()?;
    let accepted = d.u32()?;
    let count = d.u32()?;
    let rejections = (0..count)
        .map(|_| {
            let index = d.u32()?;
            let code = d.u8()?;
            let reason = Reason::from_code(code)
                .ok_or_else(|| DecodeError(format!("ack: unknown reason code {code}")))?;
            Ok((index, reason))
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    d.finish()?;
    Ok((
        BatchAck {
            batch_seq,
            accepted,
            rejections,
        },
        digest,
    ))
}

impl CacheValue for ProducerState {
    type Key = ProducerKey;
    fn receipt_money(&self) -> u128 {
        0
    }
}

impl Cached for ProducerState {
    const CF: Cf = Cf::Sessions;
    fn key_bytes(key: &ProducerKey) -> Vec<u8> {
        producer_key(*key).to_vec()
    }
    fn encode(&self) -> Vec<u8> {
        ProducerState::encode(self)
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        ProducerState::decode(bytes)
    }
}
