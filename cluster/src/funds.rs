//! A payer's funds (and, asked for, its first channels) from any node. The owner of the payer's
//! partition answers funds queries on `tollgate.funds.<p>` from its ledger ([`answer_queries`]);
//! [`FundsClient`] asks it, for the fleet port's QUERY_BALANCE and the HTTP `/v1/payers/{payer}`.
//!
//! Routed to the owner rather than read from a replicated view: the owner's ledger is the only
//! copy that already holds everything acked (an ingest node acks a batch only after the owner
//! applied it), so a client that reads its balance right after an ack sees the ack in it. A view
//! replicated from the log would lag behind by its own consumer, and would be one more copy of
//! every partition on every node. The owner answers as of its log's tail when the query arrives
//! (it waits, briefly, until it has applied that far), so an owner that just took over and is
//! still replaying answers "catching up" rather than a balance missing acked receipts. The price
//! is a request and reply plus a read of the log's tail per query, and no answer while a
//! partition has no owner (usually within a lease TTL of its owner's death).
//!
//! The coordinator asks the same way what a partition's open epoch holds (`tollgate.open.<p>`,
//! [`crate::Epochs::open_epochs`]), answered as of the log's tail too: it seals
//! only an epoch with receipts in it, as a standalone server does.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tollgate_engine::PayerKey;
use tollgate_engine::ledger::{ChannelInfo, LedgerReader, PayerBalance};
use tracing::warn;

use crate::error::NatsError;
use crate::part::{
    DecodeError, FUNDS_CHANNELS_LISTED_MAX, FundsAnswer, FundsQuery, OpenAnswer, OpenQuery,
    funds_subject,
};
use crate::partition::{partition_of, subject_of};
use crate::requests::answer_each;
use crate::resources::Cluster;

/// How long a query waits for the owner's answer: the owner reads one record.
const FUNDS_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a payer's funds could not be read from its partition's owner.
#[derive(Debug, thiserror::Error)]
pub enum FundsError {
    /// Nobody owns the partition right now (its owner died and the lease has not moved yet).
    #[error("partition {partition} has no owner right now; ask again shortly")]
    NoOwner { partition: u32 },
    /// The partition's owner has not applied its log as far as the query's moment yet (a new
    /// owner replaying it).
    #[error("partition {partition}'s owner is still applying its log; ask again shortly")]
    CatchingUp { partition: u32 },
    /// The owner could not read its ledger or its log's tail (its log says why).
    #[error("partition {partition}'s owner could not read the payer's funds")]
    OwnerFailed { partition: u32 },
    /// The owner did not answer in time.
    #[error("partition {partition}: no answer within {waited:?}")]
    Timeout { partition: u32, waited: Duration },
    /// The request could not be sent or its reply not received.
    #[error("partition {partition}: the funds request failed")]
    Nats {
        partition: u32,
        #[source]
        source: NatsError,
    },
    /// The owner's reply does not parse.
    #[error("partition {partition}: the owner's funds answer does not parse")]
    Unreadable {
        partition: u32,
        #[source]
        source: DecodeError,
    },
    /// The owner says the payer is not in its partition: the two nodes disagree on the
    /// partition count, so neither answer could be trusted.
    #[error("partition {partition}'s owner says the payer is not in it")]
    OtherPartition { partition: u32 },
    /// The owner answered about another payer than the one asked about.
    #[error("partition {partition}'s owner answered about another payer")]
    OtherPayer { partition: u32 },
}

/// Asks partitions' owners for payers' funds. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FundsClient {
    client: async_nats::Client,
    partitions: NonZeroU32,
}

impl FundsClient {
    /// A client on `cluster`'s connection.
    pub fn new(cluster: &Cluster) -> FundsClient {
        FundsClient {
            client: cluster.jetstream().client(),
            partitions: cluster.partitions(),
        }
    }

    /// `payer`'s funds as its partition's owner holds them now; `None` for a payer it has never
    /// seen.
    pub async fn funds(&self, payer: PayerKey) -> Result<Option<PayerBalance>, FundsError> {
        Ok(self.payer(payer, 0).await?.map(|(funds, _)| funds))
    }

    /// `payer`'s funds with its first `channels` channels in payee order (at most
    /// [`FUNDS_CHANNELS_LISTED_MAX`]), as its partition's owner holds them now, read together;
    /// `None` for a payer it has never seen.
    pub async fn payer(
        &self,
        payer: PayerKey,
        channels: u16,
    ) -> Result<Option<(PayerBalance, Vec<ChannelInfo>)>, FundsError> {
        let partition = partition_of(&payer, self.partitions);
        let request = self.client.request(
            funds_subject(partition),
            FundsQuery { payer, channels }.encode(),
        );
        let reply = match tokio::time::timeout(FUNDS_TIMEOUT, request).await {
            Err(_) => {
                return Err(FundsError::Timeout {
                    partition,
                    waited: FUNDS_TIMEOUT,
                });
            }
            Ok(Err(error))
                if error.kind() == async_nats::client::RequestErrorKind::NoResponders =>
            {
                return Err(FundsError::NoOwner { partition });
            }
            Ok(Err(error)) => {
                return Err(FundsError::Nats {
                    partition,
                    source: error.into(),
                });
            }
            Ok(Ok(reply)) => reply,
        };
        match FundsAnswer::decode(&reply.payload)
            .map_err(|source| FundsError::Unreadable { partition, source })?
        {
            FundsAnswer::Known {
                payer: answered,
                funds,
                channels,
            } if answered == payer => Ok(Some((funds, channels))),
            FundsAnswer::Known { .. } => Err(FundsError::OtherPayer { partition }),
            FundsAnswer::UnknownPayer => Ok(None),
            FundsAnswer::OtherPartition => Err(FundsError::OtherPartition { partition }),
            FundsAnswer::CatchingUp => Err(FundsError::CatchingUp { partition }),
            FundsAnswer::Failed => Err(FundsError::OwnerFailed { partition }),
        }
    }
}

/// How long an owner waits to apply its log through a query's tail before it answers that it
/// is still catching up (a takeover's replay), which the asker may retry.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);

/// Queries of one kind an owner works on at once per partition; beyond, a query is dropped and
/// its asker times out.
const QUERIES_WAITING_MAX: usize = 256;

/// What an owner answers funds and open-epoch queries with: its partition's log (for the tail) and ledger, and
/// how far it has applied the log.
pub(crate) struct QuerySource {
    pub(crate) client: async_nats::Client,
    pub(crate) stream: stream::Stream,
    pub(crate) partition: u32,
    pub(crate) partitions: NonZeroU32,
    pub(crate) reader: LedgerReader,
    pub(crate) applied: watch::Receiver<u64>,
}

/// Answers the partition's funds queries and open-epoch queries until `stop` is cancelled or a
/// subscription ends. Each answer is as of the log's tail when the query arrived: everything
/// acked before it is in the log by then, so a reader sees its acks even from an owner that just
/// took over.
pub(crate) async fn answer_queries(
    source: QuerySource,
    (funds, open): (async_nats::Subscriber, async_nats::Subscriber),
    stop: CancellationToken,
) {
    let source = Arc::new(source);
    let funds_answers = answer_each(
        funds,
        "funds query",
        QUERIES_WAITING_MAX,
        FundsQuery::decode,
        |query, to| {
            let source = Arc::clone(&source);
            async move {
                let answer = source.answer(query).await;
                source.reply(to, answer.encode()).await;
            }
        },
        stop.clone(),
    );
    let open_answers = answer_each(
        open,
        "open-epoch query",
        QUERIES_WAITING_MAX,
        OpenQuery::decode,
        |OpenQuery, to| {
            let source = Arc::clone(&source);
            async move {
                let answer = source.open_epoch().await;
                source.reply(to, answer.encode()).await;
            }
        },
        stop,
    );
    tokio::join!(funds_answers, open_answers);
}

/// Why an owner cannot answer as of a query's moment.
enum Behind {
    /// It has not applied its log through the tail yet.
    CatchingUp,
    /// It could not read the tail, or stopped applying.
    Failed,
}

impl QuerySource {
    async fn reply(&self, to: async_nats::Subject, answer: bytes::Bytes) {
        if let Err(error) = self.client.publish(to, answer).await {
            warn!(partition = self.partition, %error, "cannot send an answer");
        }
    }

    /// Waits until the ledger has applied the partition's log through its tail as it is now.
    async fn caught_up(&self) -> Result<(), Behind> {
        let partition = self.partition;
        let tail = match self
            .stream
            .get_last_raw_message_by_subject(&subject_of(partition))
            .await
        {
            Ok(last) => last.sequence,
            Err(error) if matches!(error.kind(), LastRawMessageErrorKind::NoMessageFound) => 0,
            Err(error) => {
                warn!(partition, %error, "cannot read the log's tail for a query");
                return Err(Behind::Failed);
            }
        };
        let mut applied = self.applied.clone();
        match tokio::time::timeout(CATCH_UP_WAIT, applied.wait_for(|at| *at >= tail)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Behind::Failed),
            Err(_) => Err(Behind::CatchingUp),
        }
    }

    async fn answer(&self, query: FundsQuery) -> FundsAnswer {
        let FundsQuery { payer, channels } = query;
        let listed = usize::from(channels.min(FUNDS_CHANNELS_LISTED_MAX));
        let partition = self.partition;
        if partition_of(&payer, self.partitions) != partition {
            return FundsAnswer::OtherPartition;
        }
        match self.caught_up().await {
            Ok(()) => {}
            Err(Behind::CatchingUp) => return FundsAnswer::CatchingUp,
            Err(Behind::Failed) => return FundsAnswer::Failed,
        }
        let reader = self.reader.clone();
        match tokio::task::spawn_blocking(move || reader.payer_with_channels(&payer, listed)).await
        {
            Ok(Ok(Some((funds, channels)))) => FundsAnswer::Known {
                payer,
                funds,
                channels,
            },
            Ok(Ok(None)) => FundsAnswer::UnknownPayer,
            Ok(Err(error)) => {
                warn!(partition, %error, "cannot read a payer's funds");
                FundsAnswer::Failed
            }
            Err(error) => {
                warn!(partition, %error, "funds read panicked");
                FundsAnswer::Failed
            }
        }
    }

    /// What the partition's open epoch holds, for the coordinator's decision to seal: at once
    /// when it holds something (a busy owner is often behind the tail, and what it holds stays
    /// until the next seal), else once the ledger has applied the log through the tail.
    async fn open_epoch(&self) -> OpenAnswer {
        let now = self.read_open_epoch().await;
        if now.fills() {
            return now;
        }
        match self.caught_up().await {
            Ok(()) => self.read_open_epoch().await,
            Err(Behind::CatchingUp) => OpenAnswer::CatchingUp,
            Err(Behind::Failed) => OpenAnswer::Failed,
        }
    }

    async fn read_open_epoch(&self) -> OpenAnswer {
        let reader = self.reader.clone();
        match tokio::task::spawn_blocking(move || reader.open_epoch()).await {
            Ok(Ok(open)) => OpenAnswer::Holds {
                epoch: open.epoch,
                receipts: open.receipts,
                amount: open.amount,
            },
            Ok(Err(error)) => {
                warn!(partition = self.partition, %error, "cannot read the open epoch");
                OpenAnswer::Failed
            }
            Err(error) => {
                warn!(partition = self.partition, %error, "open epoch read panicked");
                OpenAnswer::Failed
            }
        }
    }
}
