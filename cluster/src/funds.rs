//! A payer's funds from any node. The owner of the payer's partition answers funds queries on
//! `tollgate.funds.<p>` from its ledger ([`answer_funds`]); [`FundsClient`] asks it.
//!
//! Routed to the owner rather than read from a replicated view: the owner's ledger is the only
//! copy that already holds everything acked (an ingest node acks a batch only after the owner
//! applied it), so a client that reads its balance right after an ack sees the ack in it. A view
//! replicated from the log would lag behind by its own consumer, and would be one more copy of
//! every partition on every node. The price is one request and reply per query, and no answer
//! while a partition has no owner (at most a lease TTL after its owner dies).

use std::num::NonZeroU32;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tollgate_engine::PayerKey;
use tollgate_engine::ledger::{LedgerReader, PayerBalance};
use tracing::warn;

use crate::error::NatsError;
use crate::part::{DecodeError, FundsAnswer, FundsQuery, funds_subject};
use crate::partition::partition_of;
use crate::resources::Cluster;

/// How long a query waits for the owner's answer: the owner reads one record.
const FUNDS_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a payer's funds could not be read from its partition's owner.
#[derive(Debug, thiserror::Error)]
pub enum FundsError {
    /// Nobody owns the partition right now (its owner died and the lease has not moved yet).
    #[error("partition {partition} has no owner right now; ask again shortly")]
    NoOwner { partition: u32 },
    /// The owner did not answer in time.
    #[error("partition {partition}: no answer within {waited:?}")]
    Timeout { partition: u32, waited: Duration },
    /// The request could not be sent or its reply not received.
    #[error("partition {partition}: {source}")]
    Nats {
        partition: u32,
        #[source]
        source: NatsError,
    },
    /// The owner's reply does not parse.
    #[error("partition {partition}: {source}")]
    Unreadable {
        partition: u32,
        #[source]
        source: DecodeError,
    },
    /// The owner says the payer is not in its partition: the two nodes disagree on the
    /// partition count, so neither answer could be trusted.
    #[error("partition {partition}'s owner says the payer is not in it")]
    OtherPartition { partition: u32 },
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
        let partition = partition_of(&payer, self.partitions);
        let request = self
            .client
            .request(funds_subject(partition), FundsQuery { payer }.encode());
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
            FundsAnswer::Known(funds) => Ok(Some(funds)),
            FundsAnswer::UnknownPayer => Ok(None),
            FundsAnswer::OtherPartition => Err(FundsError::OtherPartition { partition }),
        }
    }
}

/// Answers partition `partition`'s funds queries from `reader` until `stop` is cancelled or the
/// subscription ends. One read at a time: each is one record, off the runtime.
pub(crate) async fn answer_funds(
    client: async_nats::Client,
    mut queries: async_nats::Subscriber,
    partition: u32,
    partitions: NonZeroU32,
    reader: LedgerReader,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return,
            message = queries.next() => match message {
                Some(message) => message,
                None => return,
            },
        };
        let (Some(reply), Ok(query)) = (message.reply, FundsQuery::decode(&message.payload)) else {
            warn!(subject = %message.subject, "unreadable funds query; ignored");
            continue;
        };
        let answer = if partition_of(&query.payer, partitions) == partition {
            let reader = reader.clone();
            match tokio::task::spawn_blocking(move || reader.payer(&query.payer)).await {
                Ok(Ok(Some(funds))) => FundsAnswer::Known(funds),
                Ok(Ok(None)) => FundsAnswer::UnknownPayer,
                Ok(Err(error)) => {
                    // No answer: the asker times out, as if the owner were gone.
                    warn!(partition, %error, "cannot read a payer's funds");
                    continue;
                }
                Err(error) => {
                    warn!(partition, %error, "funds read panicked");
                    continue;
                }
            }
        } else {
            FundsAnswer::OtherPartition
        };
        if let Err(error) = client.publish(reply, answer.encode()).await {
            warn!(partition, %error, "cannot send a funds answer");
        }
    }
}
