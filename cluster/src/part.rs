//! What travels between nodes, encoders and decoders side by side: a batch *part* (the receipts
//! of one client batch that belong to one partition, as published to the partition's log
//! subject), the *ask* an ingest node sends a partition's owner for the part's verdicts, and the
//! owner's *answer*; a *funds* query any node sends a partition's owner for one payer's balance,
//! and the owner's *funds answer*; the coordinator's *open* query for what a partition's open
//! epoch holds, and the owner's *open answer*; the *marks* in partitions' logs (the coordinator's: seal the
//! epoch here, the epoch is committed onchain; the funds watcher's: a payer's deposit or
//! withdrawal, the unconfirmed withdrawal requests, a voided epoch), and the partition *summary*
//! an owner stores for each sealed epoch.
//!
//! All integers little-endian, fixed widths, a version byte first (1; 2 for the funds query and
//! answer; 0x80 for a mark, which shares the log with parts and is told from one by that
//! byte); nothing here is serde, so the log's bytes never change with a library.
//!
//! ```text
//! part   = version 1 | partition u32 | client u64 | producer u64 | session epoch u64
//!          | batch seq u64 | published ms u64 | receipts (176 bytes each)
//! mark   = version 0x80 | kind u8 | kind body
//!          seal (1), committed (2), voided (3): epoch u64
//!          funds (4): payer [32] | funds kind u8 (1 deposit, 2 withdrawal requested,
//!                     3 withdrawal completed) | amount u128 | block u64 | log index u64
//!          head withdrawals (5): count u32 | (payer [32] | amount u128)*
//!          shortfall (6): epoch u64 | payer [32] | available u128 | based on u128
//! summary = version 2 | partition u32 | epoch u64 | leaves u64 | debits u64 | credits u64
//!          | shortfalls u64 | (payer [32] | payee [20] | cumulative u128)*
//!          | (payer [32] | amount u128)* | (payee [20] | amount u128)*
//!          | (payer [32] | payee [20] | shortfall u128)*
//! ask    = version 1 | log seq u64 | digest [32]
//! answer = version 1 | log seq u64 (the ask's) | status u8 | status body
//!          acked:      batch seq u64 | accepted u32 | rejections u32 | (index u32 | reason u8)*
//!          superseded: current epoch u64
//!          mismatch, unknown, refused: nothing
//! funds  = version 2 | payer [32] | channels to list u16
//! funds answer = version 2 | status u8 | status body
//!          known:      deposited u128 | withdrawal requested u128 | withdrawn u128
//!                      | settled u128 | pending u128 | available u128 | shortfall u128
//!                      | receipts u64 | channels u64 | payer [32] | listed u16
//!                      | (payee [20] | cumulative u128 | receipts u64 | last timestamp ms u64
//!                         | has nonce u8 | highest nonce u64)*
//!          unknown payer, other partition, catching up, failed: nothing
//! open   = version 1
//! open answer = version 1 | status u8 (0 holds, 1 catching up, 2 failed) | status body
//!          holds:      epoch u64 | receipts u64 | amount u128
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use tollgate_engine::ledger::record::BatchDigest;
use tollgate_engine::ledger::{
    ChannelInfo, FundsEvent, FundsKind, HeadWithdrawals, PayerBalance, SealedEpoch,
};
use tollgate_engine::pipeline::{BatchAck, BatchOutcome};
use tollgate_engine::{Address, PayerKey, Reason, ReceiptBatch};

const VERSION: u8 = 1;
/// The funds query and answer's own version: 2 since they carry a payer's channels. A node of
/// the version before refuses them as of another version (and its queries are refused here)
/// rather than misreading them: both sides of a funds query must run the same release.
const FUNDS_VERSION: u8 = 2;
/// The summary's own version: 2 since it carries the epoch's shortfalls. A summary of the
/// version before is refused rather than misread: the owners and the coordinator must run the
/// same release.
const SUMMARY_VERSION: u8 = 2;

/// Subject prefix on which the owner of partition `p` answers asks: `tollgate.ask.<p>`.
pub const ASK_PREFIX: &str = "tollgate.ask";

/// The subject on which partition `partition`'s owner answers asks.
pub fn ask_subject(partition: u32) -> String {
    format!("{ASK_PREFIX}.{partition}")
}

/// Bytes that do not decode as the message they should be.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed {what}: {why}")]
pub struct DecodeError {
    what: &'static str,
    why: String,
}

fn malformed(what: &'static str, why: impl Into<String>) -> DecodeError {
    DecodeError {
        what,
        why: why.into(),
    }
}

/// A client batch's producer session and number: with the partition, a part's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BatchId {
    /// The client the fleet connection authenticated as.
    pub client_id: u64,
    /// The producer inside that client.
    pub producer_id: u64,
    /// The producer's session epoch.
    pub session_epoch: u64,
    /// The batch's number in the session.
    pub batch_seq: u64,
}

impl BatchId {
    fn put(&self, out: &mut BytesMut) {
        out.put_u64_le(self.client_id);
        out.put_u64_le(self.producer_id);
        out.put_u64_le(self.session_epoch);
        out.put_u64_le(self.batch_seq);
    }

    fn take(reader: &mut Reader<'_>) -> Result<BatchId, DecodeError> {
        Ok(BatchId {
            client_id: reader.u64()?,
            producer_id: reader.u64()?,
            session_epoch: reader.u64()?,
            batch_seq: reader.u64()?,
        })
    }

    /// The part's `Nats-Msg-Id`: the log stores a re-publish of the same part (from any node,
    /// within the duplicate window) once.
    pub fn message_id(&self, partition: u32) -> String {
        format!(
            "{}.{}.{}.{}.{partition}",
            self.client_id, self.producer_id, self.session_epoch, self.batch_seq
        )
    }
}

/// The receipts of one client batch that belong to one partition, already verified by the ingest
/// node that publishes it.
#[derive(Clone, Debug)]
pub struct Part {
    /// The partition every receipt's payer belongs to.
    pub partition: u32,
    /// The client batch it was cut from.
    pub batch: BatchId,
    /// When the ingest node published it (ms since the Unix epoch): the owner judges timestamp
    /// skew against this, so every replay of the log judges the same.
    pub published_ms: u64,
    /// The receipts, in the order they had in the client batch.
    pub receipts: ReceiptBatch,
}

const PART_HEADER_BYTES: usize = 1 + 4 + 32 + 8;

impl Part {
    /// The bytes published to the log.
    pub fn encode(&self) -> Bytes {
        let receipts = self.receipts.as_bytes();
        let mut out = BytesMut::with_capacity(PART_HEADER_BYTES + receipts.len());
        out.put_u8(VERSION);
        out.put_u32_le(self.partition);
        self.batch.put(&mut out);
        out.put_u64_le(self.published_ms);
        out.put_slice(receipts);
        out.freeze()
    }

    /// Inverse of [`Part::encode`]; the receipts are not copied.
    pub fn decode(bytes: &Bytes) -> Result<Part, DecodeError> {
        let mut reader = Reader::new(bytes, "part")?;
        let partition = reader.u32()?;
        let batch = BatchId::take(&mut reader)?;
        let published_ms = reader.u64()?;
        let receipts = ReceiptBatch::new(bytes.slice(reader.at..))
            .map_err(|error| malformed("part", error.to_string()))?;
        if receipts.is_empty() {
            return Err(malformed("part", "no receipts"));
        }
        Ok(Part {
            partition,
            batch,
            published_ms,
            receipts,
        })
    }
}

/// An ingest node's question to a partition's owner: the verdicts of the part the log holds at
/// `seq`, which must be the part it published there (the log seq came with its msg id), with
/// receipt bytes hashing to `digest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    /// The part's stream sequence (from the publish ack, also for a deduplicated re-publish).
    pub seq: u64,
    /// blake3 of the part's receipt bytes (`batch_digest`).
    pub digest: BatchDigest,
}

impl Ask {
    /// The request's payload.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(1 + 8 + 32);
        out.put_u8(VERSION);
        out.put_u64_le(self.seq);
        out.put_slice(&self.digest);
        out.freeze()
    }

    /// Inverse of [`Ask::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Ask, DecodeError> {
        let mut reader = Reader::new(bytes, "ask")?;
        let seq = reader.u64()?;
        let digest = reader.array::<32>()?;
        reader.finish()?;
        Ok(Ask { seq, digest })
    }
}

const ACKED: u8 = 0;
const MISMATCH: u8 = 1;
const SUPERSEDED: u8 = 2;
const UNKNOWN: u8 = 3;
const REFUSED: u8 = 4;

/// The owner's answer to an ask, naming the log sequence it answers for so the ingest node can
/// check it got the answer to its own question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The ask's log sequence.
    pub seq: u64,
    pub verdicts: Verdicts,
}

/// What the owner holds for the part at the asked sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdicts {
    /// What its ledger holds, once it applied the log through the part's sequence.
    Ledger(BatchOutcome),
    /// The owner refused the part without applying any of it (mis-split or unreadable: see
    /// the owner's log).
    Refused,
}

impl Answer {
    /// The reply's payload.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(VERSION);
        out.put_u64_le(self.seq);
        let outcome = match &self.verdicts {
            Verdicts::Ledger(outcome) => outcome,
            Verdicts::Refused => {
                out.put_u8(REFUSED);
                return out.freeze();
            }
        };
        match outcome {
            BatchOutcome::Acked(ack) => {
                out.put_u8(ACKED);
                out.put_u64_le(ack.batch_seq);
                out.put_u32_le(ack.accepted);
                // At most one rejection per receipt of a part, which a u32 counts.
                out.put_u32_le(u32::try_from(ack.rejections.len()).unwrap_or(u32::MAX));
                for (index, reason) in &ack.rejections {
                    out.put_u32_le(*index);
                    out.put_u8(reason.code());
                }
            }
            BatchOutcome::Mismatch => out.put_u8(MISMATCH),
            BatchOutcome::Superseded { current } => {
                out.put_u8(SUPERSEDED);
                out.put_u64_le(*current);
            }
            BatchOutcome::Unknown => out.put_u8(UNKNOWN),
        }
        out.freeze()
    }

    /// Inverse of [`Answer::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Answer, DecodeError> {
        let mut reader = Reader::new(bytes, "answer")?;
        let seq = reader.u64()?;
        let outcome = match reader.u8()? {
            ACKED => {
                let batch_seq = reader.u64()?;
                let accepted = reader.u32()?;
                let count = reader.u32()?;
                let mut rejections = Vec::new();
                for _ in 0..count {
                    let index = reader.u32()?;
                    let code = reader.u8()?;
                    let reason = Reason::from_code(code).ok_or_else(|| {
                        malformed("answer", format!("unknown reason code {code}"))
                    })?;
                    rejections.push((index, reason));
                }
                BatchOutcome::Acked(BatchAck {
                    batch_seq,
                    accepted,
                    rejections,
                })
            }
            MISMATCH => BatchOutcome::Mismatch,
            SUPERSEDED => BatchOutcome::Superseded {
                current: reader.u64()?,
            },
            UNKNOWN => BatchOutcome::Unknown,
            REFUSED => {
                reader.finish()?;
                return Ok(Answer {
                    seq,
                    verdicts: Verdicts::Refused,
                });
            }
            other => return Err(malformed("answer", format!("unknown status {other}"))),
        };
        reader.finish()?;
        Ok(Answer {
            seq,
            verdicts: Verdicts::Ledger(outcome),
        })
    }
}

/// Subject prefix on which the owner of partition `p` answers funds queries: `tollgate.funds.<p>`.
pub const FUNDS_PREFIX: &str = "tollgate.funds";

/// The subject on which partition `partition`'s owner answers funds queries.
pub fn funds_subject(partition: u32) -> String {
    format!("{FUNDS_PREFIX}.{partition}")
}

/// A query for one payer's funds, sent to its partition's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FundsQuery {
    /// The payer (deposit key).
    pub payer: PayerKey,
    /// How many of the payer's channels to list with its funds, in payee order (0 for the funds
    /// alone); the owner lists at most [`FUNDS_CHANNELS_LISTED_MAX`].
    pub channels: u16,
}

/// The most channels an owner lists in one funds answer (about 61 bytes each).
pub const FUNDS_CHANNELS_LISTED_MAX: u16 = 1_000;

/// One listed channel's bytes: payee, cumulative, receipts, last timestamp, has nonce, nonce.
const LISTED_CHANNEL_BYTES: usize = 20 + 16 + 8 + 8 + 1 + 8;

impl FundsQuery {
    /// The request's payload.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(1 + 32 + 2);
        out.put_u8(FUNDS_VERSION);
        out.put_slice(&self.payer.0);
        out.put_u16_le(self.channels);
        out.freeze()
    }

    /// Parses a request's payload.
    pub fn decode(bytes: &[u8]) -> Result<FundsQuery, DecodeError> {
        let mut reader = Reader::of_version(bytes, "funds query", FUNDS_VERSION)?;
        let payer = PayerKey(reader.array()?);
        let channels = reader.u16()?;
        reader.finish()?;
        Ok(FundsQuery { payer, channels })
    }
}

const KNOWN: u8 = 0;
const UNKNOWN_PAYER: u8 = 1;
const OTHER_PARTITION: u8 = 2;
const CATCHING_UP: u8 = 3;
const FAILED: u8 = 4;

/// The owner's answer to a funds query: what its ledger holds once it has applied its log through
/// the log's tail at the query's arrival, so everything acked before the query is in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FundsAnswer {
    /// The payer's funds, with the first channels the query asked for (the payer's, read from
    /// one snapshot together with the funds). `payer` is the one asked about, which the asker
    /// checks: funds answered about another payer are never taken for the one asked about.
    Known {
        payer: PayerKey,
        funds: PayerBalance,
        channels: Vec<ChannelInfo>,
    },
    /// The ledger has never seen the payer.
    UnknownPayer,
    /// The payer is not in the partition asked: the asking node computed another partition
    /// (another partition count), which nothing should answer for.
    OtherPartition,
    /// The owner has not applied its log that far yet (a takeover's replay): ask again.
    CatchingUp,
    /// The owner could not read its ledger or its log's tail.
    Failed,
}

impl FundsAnswer {
    /// The reply's payload.
    pub fn encode(&self) -> Bytes {
        let listed = match self {
            FundsAnswer::Known { channels, .. } => channels.len(),
            _ => 0,
        };
        let mut out =
            BytesMut::with_capacity(2 + 7 * 16 + 2 * 8 + 32 + 2 + listed * LISTED_CHANNEL_BYTES);
        out.put_u8(FUNDS_VERSION);
        match self {
            FundsAnswer::Known {
                payer,
                funds,
                channels,
            } => {
                out.put_u8(KNOWN);
                for amount in [
                    funds.deposited,
                    funds.withdrawal_requested,
                    funds.withdrawn,
                    funds.settled,
                    funds.pending,
                    funds.available,
                    funds.shortfall,
                ] {
                    out.put_u128_le(amount);
                }
                out.put_u64_le(funds.receipts);
                out.put_u64_le(funds.channels);
                out.put_slice(&payer.0);
                // Never more than the query's u16 asked for.
                out.put_u16_le(u16::try_from(channels.len()).unwrap_or(u16::MAX));
                for channel in channels.iter().take(usize::from(u16::MAX)) {
                    out.put_slice(&channel.payee.0);
                    out.put_u128_le(channel.cumulative);
                    out.put_u64_le(channel.receipts);
                    out.put_u64_le(channel.last_timestamp_ms);
                    out.put_u8(u8::from(channel.highest_nonce.is_some()));
                    out.put_u64_le(channel.highest_nonce.unwrap_or(0));
                }
            }
            FundsAnswer::UnknownPayer => out.put_u8(UNKNOWN_PAYER),
            FundsAnswer::OtherPartition => out.put_u8(OTHER_PARTITION),
            FundsAnswer::CatchingUp => out.put_u8(CATCHING_UP),
            FundsAnswer::Failed => out.put_u8(FAILED),
        }
        out.freeze()
    }

    /// Parses a reply's payload.
    pub fn decode(bytes: &[u8]) -> Result<FundsAnswer, DecodeError> {
        let mut reader = Reader::of_version(bytes, "funds answer", FUNDS_VERSION)?;
        let answer = match reader.u8()? {
            KNOWN => {
                let funds = PayerBalance {
                    deposited: reader.u128()?,
                    withdrawal_requested: reader.u128()?,
                    withdrawn: reader.u128()?,
                    settled: reader.u128()?,
                    pending: reader.u128()?,
                    available: reader.u128()?,
                    shortfall: reader.u128()?,
                    receipts: reader.u64()?,
                    channels: reader.u64()?,
                };
                let payer = PayerKey(reader.array()?);
                let listed = reader.u16()?;
                let channels = (0..listed)
                    .map(|_| {
                        Ok(ChannelInfo {
                            payer,
                            payee: Address(reader.array()?),
                            cumulative: reader.u128()?,
                            receipts: reader.u64()?,
                            last_timestamp_ms: reader.u64()?,
                            highest_nonce: match (reader.u8()?, reader.u64()?) {
                                (0, 0) => None,
                                (1, nonce) => Some(nonce),
                                (flag, nonce) => {
                                    return Err(malformed(
                                        "funds answer",
                                        format!("nonce flag {flag} with nonce {nonce}"),
                                    ));
                                }
                            },
                        })
                    })
                    .collect::<Result<Vec<_>, DecodeError>>()?;
                FundsAnswer::Known {
                    payer,
                    funds,
                    channels,
                }
            }
            UNKNOWN_PAYER => FundsAnswer::UnknownPayer,
            OTHER_PARTITION => FundsAnswer::OtherPartition,
            CATCHING_UP => FundsAnswer::CatchingUp,
            FAILED => FundsAnswer::Failed,
            other => {
                return Err(malformed("funds answer", format!("unknown status {other}")));
            }
        };
        reader.finish()?;
        Ok(answer)
    }
}

/// Subject prefix on which the owner of partition `p` answers what its open epoch holds:
/// `tollgate.open.<p>`.
pub const OPEN_PREFIX: &str = "tollgate.open";

/// The subject on which partition `partition`'s owner answers open-epoch queries.
pub fn open_subject(partition: u32) -> String {
    format!("{OPEN_PREFIX}.{partition}")
}

/// The coordinator's question to a partition's owner: what does your open epoch hold?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenQuery;

impl OpenQuery {
    /// The request's payload.
    pub fn encode(&self) -> Bytes {
        Bytes::from_static(&[VERSION])
    }

    /// Parses a request's payload.
    pub fn decode(bytes: &[u8]) -> Result<OpenQuery, DecodeError> {
        Reader::of_version(bytes, "open-epoch query", VERSION)?.finish()?;
        Ok(OpenQuery)
    }
}

const OPEN_HOLDS: u8 = 0;
const OPEN_CATCHING_UP: u8 = 1;
const OPEN_FAILED: u8 = 2;

/// The owner's answer to an open-epoch query, as of the log's tail at the query's arrival (like
/// a funds answer), so every receipt acked before the query is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenAnswer {
    /// The partition's open epoch: its number, the receipts accepted into it and the amount it
    /// will debit (theirs, plus what a voided epoch carried in). An owner whose open epoch holds
    /// something says so at once, however far behind the log's tail it is: it holds something
    /// until it seals, so the answer cannot go stale.
    Holds {
        epoch: u64,
        receipts: u64,
        amount: u128,
    },
    /// The owner has not applied its log that far yet (a takeover's replay).
    CatchingUp,
    /// The owner could not read its ledger or its log's tail.
    Failed,
}

impl OpenAnswer {
    /// Whether the open epoch holds something to seal, as a standalone server judges its own:
    /// receipts, or an amount a voided epoch carried in.
    pub fn fills(&self) -> bool {
        matches!(self, OpenAnswer::Holds { receipts, amount, .. } if *receipts > 0 || *amount > 0)
    }

    /// The reply's payload.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(2 + 8 + 8 + 16);
        out.put_u8(VERSION);
        match self {
            OpenAnswer::Holds {
                epoch,
                receipts,
                amount,
            } => {
                out.put_u8(OPEN_HOLDS);
                out.put_u64_le(*epoch);
                out.put_u64_le(*receipts);
                out.put_u128_le(*amount);
            }
            OpenAnswer::CatchingUp => out.put_u8(OPEN_CATCHING_UP),
            OpenAnswer::Failed => out.put_u8(OPEN_FAILED),
        }
        out.freeze()
    }

    /// Parses a reply's payload.
    pub fn decode(bytes: &[u8]) -> Result<OpenAnswer, DecodeError> {
        const WHAT: &str = "open-epoch answer";
        let mut reader = Reader::of_version(bytes, WHAT, VERSION)?;
        let answer = match reader.u8()? {
            OPEN_HOLDS => OpenAnswer::Holds {
                epoch: reader.u64()?,
                receipts: reader.u64()?,
                amount: reader.u128()?,
            },
            OPEN_CATCHING_UP => OpenAnswer::CatchingUp,
            OPEN_FAILED => OpenAnswer::Failed,
            other => return Err(malformed(WHAT, format!("unknown status {other}"))),
        };
        reader.finish()?;
        Ok(answer)
    }
}

/// A mark's version byte, which no part starts with: it tells the two apart in the log.
const MARK_VERSION: u8 = 0x80;
const MARK_SEAL: u8 = 1;
const MARK_COMMITTED: u8 = 2;
const MARK_VOIDED: u8 = 3;
const MARK_FUNDS: u8 = 4;
const MARK_HEAD_WITHDRAWALS: u8 = 5;
const MARK_SHORTFALL: u8 = 6;

/// A funds event's kind on the log. Stored: never renumber. `BlockScanned` (the standalone
/// ledger's cursor move without an event) never travels: a partition's cursor moves only with
/// its own payers' events, and one scanned block would skip the rest of its block.
const FUNDS_KINDS: [(FundsKind, u8); 3] = [
    (FundsKind::Deposit, 1),
    (FundsKind::WithdrawalRequested, 2),
    (FundsKind::WithdrawalCompleted, 3),
];

/// What the cluster's elected roles write into partitions' logs besides the parts: the
/// coordinator's epoch marks (into every partition) and shortfalls (into the payer's
/// partition), and the funds watcher's chain news (a payer's funds event into the payer's
/// partition; a voided epoch into every partition).
/// Applied in log order with the parts, so every owner that applies the log makes the same cut
/// and the same funds check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mark {
    /// The barrier: the partition's open epoch, which must be this one, is sealed after every
    /// part before the mark and before every part after it.
    Seal(u64),
    /// The epoch is committed onchain and final: the partition's ledger settles it.
    Committed(u64),
    /// The arbiter voided the epoch: its amounts go back to pending and into the open epoch.
    Voided(u64),
    /// A confirmed deposit or withdrawal of one of the partition's payers, applied once by its
    /// chain position.
    Funds(FundsEvent),
    /// The withdrawal requests of the partition's payers in the blocks not yet confirmed,
    /// replacing the last such set.
    HeadWithdrawals(HeadWithdrawals),
    /// A payer's exit overtook its debit in a sealed epoch: see [`Shortfall`].
    Shortfall(Shortfall),
}

/// The chain holds only `available` of `payer`'s debit in `epoch`, sealed and not yet
/// committed: the payer's exit overtook it and the commit reverted with `Overdraft`. The owner
/// records the uncovered rest as the epoch's shortfall and stores the partition's summary again
/// with it, so the coordinator commits the epoch without it. Only if the payer's cut in the
/// epoch is still `based_on`, the cut in the summary the failed commit was built from: a mark
/// written from an out-of-date summary must not replace a cut a later commit relies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shortfall {
    pub epoch: u64,
    pub payer: PayerKey,
    pub available: u128,
    pub based_on: u128,
}

impl Mark {
    /// The bytes published to the log.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(2 + 8);
        out.put_u8(MARK_VERSION);
        match self {
            Mark::Seal(epoch) | Mark::Committed(epoch) | Mark::Voided(epoch) => {
                out.put_u8(match self {
                    Mark::Seal(_) => MARK_SEAL,
                    Mark::Committed(_) => MARK_COMMITTED,
                    _ => MARK_VOIDED,
                });
                out.put_u64_le(*epoch);
            }
            Mark::Funds(event) => {
                out.put_u8(MARK_FUNDS);
                out.put_slice(&event.payer.0);
                let kind = FUNDS_KINDS.iter().find(|(kind, _)| *kind == event.kind);
                out.put_u8(kind.map_or(0, |(_, code)| *code));
                out.put_u128_le(event.amount);
                out.put_u64_le(event.block);
                out.put_u64_le(event.log_index);
            }
            Mark::HeadWithdrawals(requests) => {
                out.put_u8(MARK_HEAD_WITHDRAWALS);
                out.put_u32_le(requests.0.len() as u32);
                for (payer, amount) in &requests.0 {
                    out.put_slice(&payer.0);
                    out.put_u128_le(*amount);
                }
            }
            Mark::Shortfall(Shortfall {
                epoch,
                payer,
                available,
                based_on,
            }) => {
                out.put_u8(MARK_SHORTFALL);
                out.put_u64_le(*epoch);
                out.put_slice(&payer.0);
                out.put_u128_le(*available);
                out.put_u128_le(*based_on);
            }
        }
        out.freeze()
    }

    /// The payer a mark is about, for marks that belong in that payer's partition only (a
    /// funds event, a shortfall).
    pub fn payer(&self) -> Option<&PayerKey> {
        match self {
            Mark::Funds(event) => Some(&event.payer),
            Mark::Shortfall(shortfall) => Some(&shortfall.payer),
            Mark::Seal(_) | Mark::Committed(_) | Mark::Voided(_) | Mark::HeadWithdrawals(_) => None,
        }
    }

    /// Whether the log message `bytes` is a mark (else it is a part, or nothing readable).
    pub fn is_mark(bytes: &[u8]) -> bool {
        bytes.first() == Some(&MARK_VERSION)
    }

    /// Inverse of [`Mark::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Mark, DecodeError> {
        const WHAT: &str = "mark";
        let mut reader = Reader::of_version(bytes, WHAT, MARK_VERSION)?;
        let mark = match reader.u8()? {
            MARK_SEAL => Mark::Seal(reader.u64()?),
            MARK_COMMITTED => Mark::Committed(reader.u64()?),
            MARK_VOIDED => Mark::Voided(reader.u64()?),
            MARK_FUNDS => {
                let payer = PayerKey(reader.array()?);
                let code = reader.u8()?;
                let kind = FUNDS_KINDS
                    .iter()
                    .find(|(_, known)| *known == code)
                    .map(|(kind, _)| *kind)
                    .ok_or_else(|| malformed(WHAT, format!("unknown funds kind {code}")))?;
                Mark::Funds(FundsEvent {
                    payer,
                    kind,
                    amount: reader.u128()?,
                    block: reader.u64()?,
                    log_index: reader.u64()?,
                })
            }
            MARK_HEAD_WITHDRAWALS => {
                let count = reader.u32()? as usize;
                if count.checked_mul(HEAD_WITHDRAWAL_BYTES) != Some(bytes.len() - reader.at) {
                    return Err(malformed(
                        WHAT,
                        format!("{count} requests in {} bytes", bytes.len() - reader.at),
                    ));
                }
                let mut requests = std::collections::BTreeMap::new();
                for _ in 0..count {
                    let payer = PayerKey(reader.array()?);
                    if requests.insert(payer, reader.u128()?).is_some() {
                        return Err(malformed(WHAT, format!("payer {payer} listed twice")));
                    }
                }
                Mark::HeadWithdrawals(HeadWithdrawals(requests))
            }
            MARK_SHORTFALL => Mark::Shortfall(Shortfall {
                epoch: reader.u64()?,
                payer: PayerKey(reader.array()?),
                available: reader.u128()?,
                based_on: reader.u128()?,
            }),
            other => return Err(malformed(WHAT, format!("unknown kind {other}"))),
        };
        reader.finish()?;
        Ok(mark)
    }

    /// The mark's `Nats-Msg-Id` in `partition`'s log, if it has one: a role that publishes it
    /// again (after a restart, or a new holder finishing the last one's work) within the
    /// duplicate window is stored once; beyond it, applying a mark twice changes nothing (a
    /// funds event at or before the ledger's funds cursor is ignored). A head-withdrawals set
    /// has none: each replaces the last, so the newest must land even if an older one was the
    /// same. Nor has a shortfall: one applied twice finds the cut it was based on gone and
    /// changes nothing, and each that arrives makes the owner store its summary again, which
    /// is what a coordinator reading an out-of-date summary needs.
    pub fn message_id(&self, partition: u32) -> Option<String> {
        match self {
            Mark::Seal(epoch) => Some(format!("seal.{epoch}.{partition}")),
            Mark::Committed(epoch) => Some(format!("committed.{epoch}.{partition}")),
            Mark::Voided(epoch) => Some(format!("voided.{epoch}.{partition}")),
            // A chain position names one event, which goes into one partition.
            Mark::Funds(event) => Some(format!("funds.{}.{}", event.block, event.log_index)),
            Mark::HeadWithdrawals(_) | Mark::Shortfall(_) => None,
        }
    }
}

/// Bytes per payer in a head-withdrawals mark: payer key and amount.
const HEAD_WITHDRAWAL_BYTES: usize = 32 + 16;

/// One partition's share of a sealed epoch, as its owner stores it for the coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub partition: u32,
    /// The partition ledger's sealed epoch: its leaves, debits and credits.
    pub sealed: SealedEpoch,
    /// What the epoch's commit leaves out, per (payer, payee) channel in that order: recorded
    /// at [`Mark::Shortfall`]s, nearly always none.
    pub shortfalls: Vec<(PayerKey, Address, u128)>,
}

/// What `shortfalls` (`(payer, payee, cut)` entries, as a summary and a ledger hold them) write
/// off in all, or of `payer` alone: the coordinator bases a shortfall mark on this sum over the
/// summaries and the owner checks its ledger's against it, so both must count alike.
pub fn written_off<'a>(
    shortfalls: impl IntoIterator<Item = &'a (PayerKey, Address, u128)>,
    payer: Option<&PayerKey>,
) -> u128 {
    shortfalls
        .into_iter()
        .filter(|(cut_payer, _, _)| payer.is_none_or(|payer| payer == cut_payer))
        .fold(0u128, |total, (_, _, cut)| total.saturating_add(*cut))
}

const LEAF_BYTES: usize = 32 + 20 + 16;
const DEBIT_BYTES: usize = 32 + 16;
const CREDIT_BYTES: usize = 20 + 16;
const SHORTFALL_BYTES: usize = 32 + 20 + 16;
const SUMMARY_HEADER_BYTES: usize = 1 + 4 + 8 + 4 * 8;

impl Summary {
    /// The stored bytes.
    pub fn encode(&self) -> Bytes {
        let SealedEpoch {
            epoch,
            leaves,
            debits,
            credits,
        } = &self.sealed;
        let shortfalls = &self.shortfalls;
        let mut out = BytesMut::with_capacity(
            SUMMARY_HEADER_BYTES
                + leaves.len() * LEAF_BYTES
                + debits.len() * DEBIT_BYTES
                + credits.len() * CREDIT_BYTES
                + shortfalls.len() * SHORTFALL_BYTES,
        );
        out.put_u8(SUMMARY_VERSION);
        out.put_u32_le(self.partition);
        out.put_u64_le(*epoch);
        for entries in [leaves.len(), debits.len(), credits.len(), shortfalls.len()] {
            out.put_u64_le(entries as u64);
        }
        put_channel_amounts(&mut out, leaves);
        for (payer, amount) in debits {
            out.put_slice(&payer.0);
            out.put_u128_le(*amount);
        }
        for (payee, amount) in credits {
            out.put_slice(&payee.0);
            out.put_u128_le(*amount);
        }
        put_channel_amounts(&mut out, shortfalls);
        out.freeze()
    }

    /// Inverse of [`Summary::encode`]. The counts are checked against the bytes there are
    /// before anything is allocated for them.
    pub fn decode(bytes: &[u8]) -> Result<Summary, DecodeError> {
        let mut reader = Reader::of_version(bytes, "summary", SUMMARY_VERSION)?;
        let partition = reader.u32()?;
        let epoch = reader.u64()?;
        let counts = [reader.u64()?, reader.u64()?, reader.u64()?, reader.u64()?];
        let needed = counts
            .iter()
            .zip([LEAF_BYTES, DEBIT_BYTES, CREDIT_BYTES, SHORTFALL_BYTES])
            .try_fold(0u64, |total, (n, size)| {
                total.checked_add(n.checked_mul(size as u64)?)
            });
        if needed != Some((bytes.len() - reader.at) as u64) {
            return Err(malformed(
                "summary",
                format!("{counts:?} entries in {} bytes", bytes.len() - reader.at),
            ));
        }
        // Each count is at most the bytes there are, so it fits a usize.
        let [leaves, debits, credits, shortfalls] = counts.map(|n| n as usize);
        let mut sealed = SealedEpoch {
            epoch,
            leaves: channel_amounts(&mut reader, leaves)?,
            debits: Vec::with_capacity(debits),
            credits: Vec::with_capacity(credits),
        };
        for _ in 0..debits {
            sealed
                .debits
                .push((PayerKey(reader.array()?), reader.u128()?));
        }
        for _ in 0..credits {
            sealed
                .credits
                .push((Address(reader.array()?), reader.u128()?));
        }
        let shortfalls = channel_amounts(&mut reader, shortfalls)?;
        reader.finish()?;
        Ok(Summary {
            partition,
            sealed,
            shortfalls,
        })
    }
}

/// Per-channel amounts (leaves, shortfalls): payer key, payee, amount.
fn put_channel_amounts(out: &mut BytesMut, entries: &[(PayerKey, Address, u128)]) {
    for (payer, payee, amount) in entries {
        out.put_slice(&payer.0);
        out.put_slice(&payee.0);
        out.put_u128_le(*amount);
    }
}

fn channel_amounts(
    reader: &mut Reader<'_>,
    count: usize,
) -> Result<Vec<(PayerKey, Address, u128)>, DecodeError> {
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        entries.push((
            PayerKey(reader.array()?),
            Address(reader.array()?),
            reader.u128()?,
        ));
    }
    Ok(entries)
}

/// Reads fixed-width little-endian fields after checking the version byte.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Result<Reader<'a>, DecodeError> {
        Self::of_version(bytes, what, VERSION)
    }

    fn of_version(
        bytes: &'a [u8],
        what: &'static str,
        version: u8,
    ) -> Result<Reader<'a>, DecodeError> {
        let mut reader = Reader { bytes, at: 0, what };
        match reader.u8()? {
            found if found == version => Ok(reader),
            other => Err(malformed(
                what,
                format!("version {other}, expected {version}"),
            )),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let end = self.at + N;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or_else(|| malformed(self.what, format!("ends at byte {}", self.bytes.len())))?;
        self.at = end;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn u128(&mut self) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.array()?))
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            extra => Err(malformed(self.what, format!("{extra} bytes past the end"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;
    use tollgate_engine::receipt::RECEIPT_BYTES;

    fn batch() -> BatchId {
        BatchId {
            client_id: 7,
            producer_id: 8,
            session_epoch: 9,
            batch_seq: 10,
        }
    }

    #[test]
    fn part_round_trips_and_refuses_cut_or_foreign_bytes() {
        let part = Part {
            partition: 3,
            batch: batch(),
            published_ms: 1_700_000_000_000,
            receipts: ReceiptBatch::new(Bytes::from(vec![5u8; 2 * RECEIPT_BYTES]))
                .expect("whole records"),
        };
        let bytes = part.encode();
        assert_eq!(bytes.len(), PART_HEADER_BYTES + 2 * RECEIPT_BYTES);
        let decoded = Part::decode(&bytes).expect("decodes");
        assert_eq!(
            (decoded.partition, decoded.batch, decoded.published_ms),
            (part.partition, part.batch, part.published_ms)
        );
        assert_eq!(decoded.receipts.as_bytes(), part.receipts.as_bytes());
        assert!(Part::decode(&bytes.slice(..bytes.len() - 1)).is_err());
        assert!(Part::decode(&bytes.slice(..PART_HEADER_BYTES)).is_err());
        let mut other_version = BytesMut::from(&bytes[..]);
        other_version[0] = 2;
        assert!(Part::decode(&other_version.freeze()).is_err());
        assert_eq!(batch().message_id(3), "7.8.9.10.3");
    }

    #[test]
    fn ask_and_every_answer_round_trip() {
        let ask = Ask {
            seq: 42,
            digest: [9; 32],
        };
        assert_eq!(Ask::decode(&ask.encode()), Ok(ask));
        assert!(Ask::decode(&ask.encode()[1..]).is_err());
        for verdicts in [
            Verdicts::Ledger(BatchOutcome::Acked(BatchAck {
                batch_seq: 10,
                accepted: 2,
                rejections: vec![(1, Reason::Duplicate), (4, Reason::TimestampSkew)],
            })),
            Verdicts::Ledger(BatchOutcome::Mismatch),
            Verdicts::Ledger(BatchOutcome::Superseded { current: 12 }),
            Verdicts::Ledger(BatchOutcome::Unknown),
            Verdicts::Refused,
        ] {
            let answer = Answer { seq: 42, verdicts };
            assert_eq!(Answer::decode(&answer.encode()), Ok(answer));
        }
        let mut unknown_status = vec![VERSION];
        unknown_status.extend_from_slice(&42u64.to_le_bytes());
        unknown_status.push(9);
        assert!(Answer::decode(&unknown_status).is_err());
    }

    #[test]
    fn written_off_sums_every_cut_or_one_payers() {
        let (a, b) = (PayerKey([1; 32]), PayerKey([2; 32]));
        let cuts = [
            (a, Address([7; 20]), 3),
            (b, Address([7; 20]), 5),
            (a, Address([8; 20]), u128::MAX),
        ];
        assert_eq!(written_off(&cuts[..2], None), 8);
        assert_eq!(written_off(&cuts[..2], Some(&a)), 3);
        assert_eq!(written_off(&cuts, Some(&b)), 5);
        assert_eq!(written_off(&cuts, Some(&PayerKey([3; 32]))), 0);
        // Saturates rather than wraps: the owner's check then refuses the mark.
        assert_eq!(written_off(&cuts, Some(&a)), u128::MAX);
    }

    #[test]
    fn open_query_and_every_open_answer_round_trip() {
        assert_eq!(OpenQuery::decode(&OpenQuery.encode()), Ok(OpenQuery));
        assert!(OpenQuery::decode(&[VERSION, 0]).is_err());
        assert!(OpenQuery::decode(&[FUNDS_VERSION]).is_err());
        for answer in [
            OpenAnswer::Holds {
                epoch: 7,
                receipts: 0,
                amount: u128::MAX,
            },
            OpenAnswer::CatchingUp,
            OpenAnswer::Failed,
        ] {
            assert_eq!(OpenAnswer::decode(&answer.encode()), Ok(answer));
        }
        let holds = OpenAnswer::Holds {
            epoch: 7,
            receipts: 1,
            amount: 5,
        }
        .encode();
        assert_eq!(holds.len(), 2 + 8 + 8 + 16);
        assert!(OpenAnswer::decode(&holds[..holds.len() - 1]).is_err());
        assert!(OpenAnswer::decode(&[VERSION, 3]).is_err());
        let holding = |receipts, amount| OpenAnswer::Holds {
            epoch: 2,
            receipts,
            amount,
        };
        assert!(!holding(0, 0).fills());
        assert!(holding(1, 0).fills());
        // An amount a voided epoch carried in, without a receipt of the epoch's own.
        assert!(holding(0, 9).fills());
        assert!(!OpenAnswer::CatchingUp.fills());
    }

    #[test]
    fn marks_round_trip_and_are_told_from_parts() {
        let funds = |kind| {
            Mark::Funds(FundsEvent {
                payer: PayerKey([5; 32]),
                kind,
                amount: u128::MAX,
                block: 17,
                log_index: 3,
            })
        };
        let head = HeadWithdrawals([(PayerKey([1; 32]), 40), (PayerKey([2; 32]), 7)].into());
        for mark in [
            Mark::Seal(3),
            Mark::Committed(u64::MAX),
            Mark::Voided(2),
            funds(FundsKind::Deposit),
            funds(FundsKind::WithdrawalRequested),
            funds(FundsKind::WithdrawalCompleted),
            Mark::HeadWithdrawals(head),
            Mark::HeadWithdrawals(HeadWithdrawals::default()),
            Mark::Shortfall(Shortfall {
                epoch: 4,
                payer: PayerKey([6; 32]),
                available: u128::MAX - 1,
                based_on: 7,
            }),
        ] {
            let bytes = mark.encode();
            assert!(Mark::is_mark(&bytes));
            assert_eq!(Mark::decode(&bytes), Ok(mark.clone()));
            assert!(Mark::decode(&bytes[..bytes.len() - 1]).is_err());
            let mut longer = bytes.to_vec();
            longer.push(0);
            assert!(Mark::decode(&longer).is_err());
            // A mark is never read as a part.
            assert!(Part::decode(&bytes).is_err());
        }
        let mut unknown_kind = Mark::Seal(1).encode().to_vec();
        unknown_kind[1] = 9;
        assert!(Mark::decode(&unknown_kind).is_err());
        let mut unknown_funds = funds(FundsKind::Deposit).encode().to_vec();
        unknown_funds[2 + 32] = 4;
        assert!(Mark::decode(&unknown_funds).is_err());
        assert!(Mark::decode(&funds(FundsKind::BlockScanned).encode()).is_err());
        let twice = HeadWithdrawals([(PayerKey([1; 32]), 40), (PayerKey([2; 32]), 7)].into());
        let mut listed_twice = Mark::HeadWithdrawals(twice).encode().to_vec();
        listed_twice.copy_within(6..6 + 32, 6 + 48);
        assert!(Mark::decode(&listed_twice).is_err());
        assert!(!Mark::is_mark(&[VERSION, 0, 0]));
        assert_eq!(Mark::Seal(4).message_id(2).as_deref(), Some("seal.4.2"));
        assert_eq!(
            Mark::Committed(4).message_id(2).as_deref(),
            Some("committed.4.2")
        );
        assert_eq!(
            funds(FundsKind::Deposit).message_id(2).as_deref(),
            Some("funds.17.3")
        );
        assert_eq!(
            Mark::HeadWithdrawals(HeadWithdrawals::default()).message_id(2),
            None
        );
    }

    proptest::proptest! {
        #[test]
        fn summaries_round_trip_and_refuse_counts_their_bytes_do_not_hold(
            partition in proptest::num::u32::ANY,
            epoch in proptest::num::u64::ANY,
            leaves in proptest::collection::vec(
                (proptest::array::uniform32(proptest::num::u8::ANY),
                 proptest::array::uniform20(proptest::num::u8::ANY),
                 proptest::num::u128::ANY), 0..5),
            debits in proptest::collection::vec(
                (proptest::array::uniform32(proptest::num::u8::ANY), proptest::num::u128::ANY), 0..5),
            credits in proptest::collection::vec(
                (proptest::array::uniform20(proptest::num::u8::ANY), proptest::num::u128::ANY), 0..5),
            shortfalls in proptest::collection::vec(
                (proptest::array::uniform32(proptest::num::u8::ANY),
                 proptest::array::uniform20(proptest::num::u8::ANY),
                 proptest::num::u128::ANY), 0..3),
        ) {
            let channels = |entries: Vec<([u8; 32], [u8; 20], u128)>| -> Vec<(PayerKey, Address, u128)> {
                entries.into_iter().map(|(a, b, c)| (PayerKey(a), Address(b), c)).collect()
            };
            let summary = Summary {
                partition,
                sealed: SealedEpoch {
                    epoch,
                    leaves: channels(leaves),
                    debits: debits.into_iter().map(|(a, b)| (PayerKey(a), b)).collect(),
                    credits: credits.into_iter().map(|(a, b)| (Address(a), b)).collect(),
                },
                shortfalls: channels(shortfalls),
            };
            let bytes = summary.encode();
            proptest::prop_assert_eq!(Summary::decode(&bytes), Ok(summary));
            proptest::prop_assert!(Summary::decode(&bytes[..bytes.len() - 1]).is_err());
            let mut longer = bytes.to_vec();
            longer.push(0);
            proptest::prop_assert!(Summary::decode(&longer).is_err());
            // A count far beyond the bytes is refused before anything is allocated for it.
            let mut huge = bytes.to_vec();
            huge[13..21].copy_from_slice(&u64::MAX.to_le_bytes());
            proptest::prop_assert!(Summary::decode(&huge).is_err());
            // A summary of the version before (no shortfalls) is refused, not misread.
            let mut older = bytes.to_vec();
            older[0] = VERSION;
            proptest::prop_assert!(Summary::decode(&older).is_err());
        }
    }

    fn any_channel(payer: [u8; 32]) -> impl proptest::strategy::Strategy<Value = ChannelInfo> {
        use proptest::prelude::*;
        (
            proptest::array::uniform20(any::<u8>()),
            any::<u128>(),
            any::<u64>(),
            any::<u64>(),
            any::<Option<u64>>(),
        )
            .prop_map(
                move |(payee, cumulative, receipts, last_timestamp_ms, highest_nonce)| {
                    ChannelInfo {
                        payer: PayerKey(payer),
                        payee: Address(payee),
                        cumulative,
                        receipts,
                        last_timestamp_ms,
                        highest_nonce,
                    }
                },
            )
    }

    proptest::proptest! {
        #[test]
        fn funds_queries_and_answers_round_trip(
            (payer, channels) in proptest::array::uniform32(proptest::num::u8::ANY)
                .prop_flat_map(|payer| (
                    proptest::strategy::Just(payer),
                    proptest::collection::vec(any_channel(payer), 0..4),
                )),
            listed in proptest::num::u16::ANY,
            amounts in proptest::array::uniform7(proptest::num::u128::ANY),
            counts in proptest::array::uniform2(proptest::num::u64::ANY),
        ) {
            let query = FundsQuery { payer: PayerKey(payer), channels: listed };
            proptest::prop_assert_eq!(FundsQuery::decode(&query.encode()), Ok(query));
            let [deposited, withdrawal_requested, withdrawn, settled, pending, available, shortfall] =
                amounts;
            let known = FundsAnswer::Known {
                payer: PayerKey(payer),
                funds: PayerBalance {
                    deposited,
                    withdrawal_requested,
                    withdrawn,
                    settled,
                    pending,
                    available,
                    shortfall,
                    receipts: counts[0],
                    channels: counts[1],
                },
                channels,
            };
            for answer in [
                known,
                FundsAnswer::UnknownPayer,
                FundsAnswer::OtherPartition,
                FundsAnswer::CatchingUp,
                FundsAnswer::Failed,
            ] {
                let bytes = answer.encode();
                proptest::prop_assert_eq!(FundsAnswer::decode(&bytes), Ok(answer.clone()));
                // Cut short or with a byte too many, it is refused.
                proptest::prop_assert!(FundsAnswer::decode(&bytes[..bytes.len() - 1]).is_err());
                let mut longer = bytes.to_vec();
                longer.push(0);
                proptest::prop_assert!(FundsAnswer::decode(&longer).is_err());
                // An answer of the version before (no channels) is refused, not misread.
                let mut older = bytes.to_vec();
                older[0] = VERSION;
                proptest::prop_assert!(FundsAnswer::decode(&older).is_err());
            }
        }
    }
}
