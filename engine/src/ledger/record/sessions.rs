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
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
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

/// digest 32 bytes, then the ack's body ([`put_ack_body`]).
pub fn encode_ack(ack: &BatchAck, digest: &BatchDigest) -> Vec<u8> {
    let mut out = encoder(32 + 16 + 5 * ack.rejections.len());
    out.extend_from_slice(digest);
    put_ack_body(&mut out, ack);
    out
}

/// batch_seq u64, accepted u32, count u32, then (index u32, reason code u8) each.
fn put_ack_body(out: &mut Vec<u8>, ack: &BatchAck) {
    out.extend_from_slice(&ack.batch_seq.to_le_bytes());
    out.extend_from_slice(&ack.accepted.to_le_bytes());
    out.extend_from_slice(&(ack.rejections.len() as u32).to_le_bytes());
    for (index, reason) in &ack.rejections {
        out.extend_from_slice(&index.to_le_bytes());
        out.push(reason.code());
    }
}

/// Inverse of [`put_ack_body`].
fn take_ack_body(d: &mut Decoder<'_>) -> Result<BatchAck, DecodeError> {
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
    Ok(BatchAck {
        batch_seq,
        accepted,
        rejections,
    })
}

/// Inverse of [`encode_ack`].
pub fn decode_ack(bytes: &[u8]) -> Result<(BatchAck, BatchDigest), DecodeError> {
    let mut d = Decoder::new(bytes, "ack")?;
    let digest = d.take::<32>()?;
    let ack = take_ack_body(&mut d)?;
    d.finish()?;
    Ok((ack, digest))
}

/// Key of the outcome of the part a cluster partition's log holds at stream sequence `seq`:
/// `'l' ‖ seq` (BE). Unlike a producer's acks (the newest `acks_kept_per_producer`, dropped
/// with an old session), it stays, so the owner answers an ask for that part the same however
/// many parts or sessions followed it.
pub fn logged_outcome_key(seq: u64) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = b'l';
    out[1..].copy_from_slice(&seq.to_be_bytes());
    out
}

const LOGGED_ACKED: u8 = 0;
const LOGGED_MISMATCH: u8 = 1;
const LOGGED_SUPERSEDED: u8 = 2;
const LOGGED_UNKNOWN: u8 = 3;

/// status u8, the part's digest (32 bytes), then for an ack its body ([`put_ack_body`]), for a
/// superseded session the current epoch u64.
pub fn encode_logged_outcome(outcome: &BatchOutcome, digest: &BatchDigest) -> Vec<u8> {
    let mut out = encoder(1 + 32 + 16);
    let status = match outcome {
        BatchOutcome::Acked(_) => LOGGED_ACKED,
        BatchOutcome::Mismatch => LOGGED_MISMATCH,
        BatchOutcome::Superseded { .. } => LOGGED_SUPERSEDED,
        BatchOutcome::Unknown => LOGGED_UNKNOWN,
    };
    out.push(status);
    out.extend_from_slice(digest);
    match outcome {
        BatchOutcome::Acked(ack) => put_ack_body(&mut out, ack),
        BatchOutcome::Superseded { current } => out.extend_from_slice(&current.to_le_bytes()),
        BatchOutcome::Mismatch | BatchOutcome::Unknown => {}
    }
    out
}

/// Inverse of [`encode_logged_outcome`].
pub fn decode_logged_outcome(bytes: &[u8]) -> Result<(BatchOutcome, BatchDigest), DecodeError> {
    let mut d = Decoder::new(bytes, "logged outcome")?;
    let status = d.u8()?;
    let digest = d.take::<32>()?;
    let outcome = match status {
        LOGGED_ACKED => BatchOutcome::Acked(take_ack_body(&mut d)?),
        LOGGED_MISMATCH => BatchOutcome::Mismatch,
        LOGGED_SUPERSEDED => BatchOutcome::Superseded { current: d.u64()? },
        LOGGED_UNKNOWN => BatchOutcome::Unknown,
        other => {
            return Err(DecodeError(format!(
                "logged outcome: unknown status {other}"
            )));
        }
    };
    d.finish()?;
    Ok((outcome, digest))
}

impl CacheValue for ProducerState {
    type Key = ProducerKey;
    fn receipt_money(&self) -> u128 {
        0
    }
}

impl Cached for ProducerState {
    const CF: Cf = Cf::Sessions;
    type KeyBytes = [u8; 17];
    fn key_bytes(key: &ProducerKey) -> Self::KeyBytes {
        producer_key(*key)
    }
    /// Once per batch, not per receipt: through the owned encoding.
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&ProducerState::encode(self))
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        ProducerState::decode(bytes)
    }
}
