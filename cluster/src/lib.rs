//! How Tollgate nodes share one deployment over NATS JetStream.
//!
//! In cluster mode every node connects to the same NATS cluster and finds there the resources
//! they share, created idempotently by whichever node starts first ([`Cluster::start`]): the
//! receipts log (one replicated stream, subject `tollgate.rx.<p>` per payer partition, with a
//! duplicate window so a re-published batch part carrying the same `Nats-Msg-Id` is stored once),
//! a meta KV bucket recording the partition count fixed at creation (and each partition's purge
//! floor), a lease KV bucket, an object store for partition checkpoints and one for the
//! partitions' summaries of sealed epochs. A payer belongs to
//! one partition forever ([`partition_of`], a BLAKE3 hash of its key), so its funds check stays
//! local to that partition. Each partition has at most one owner at a time, chosen by a lease in
//! the lease bucket ([`Leases`]): compare-and-set on the key's revision to take it, renewed by
//! heartbeat ([`LeaseKeeper`]), lost when a renewal's compare-and-set fails. Fencing is a
//! primitive for shared writes whose content depends on who writes them (none yet: an epoch
//! summary is the same whichever owner stores it, see `epoch`): a writer stamps a message
//! with its lease's token ([`Fence`]) and a receiver that calls [`Leases::check_fence`] refuses
//! a token that is not the partition's current one. Checkpoints fence their purges with the
//! lease token in the partition's purge floor record instead (`checkpoint`). Nothing on the data path is fenced: an owner
//! writes only its own node's ledger for the partition, and two owners for a moment apply the
//! same log in the same order, so they give the same verdicts (see `node`).
//!
//! **Lease expiry** is judged by the NATS servers alone: the lease bucket's max age is the lease
//! TTL, so the stream leader deletes a lease entry one TTL after the server stamped its last
//! renewal, and a vacant key is what lets another node acquire. No node ever compares its wall
//! clock with another's or with a server timestamp, so a node whose clock is off cannot take a
//! live lease early. The holder, for its part, counts its lease valid for one TTL from when it
//! *sent* the renewal, by its own monotonic clock ([`Lease::valid_until`]): the server stamped
//! the renewal later, so the holder stops before the servers expire it. (NATS 2.9 has no per-key
//! TTL, which arrived in 2.11; a bucket-wide max age does the same for a bucket holding only
//! leases, which is why the partition count lives in its own bucket.)
//!
//! **The data path** ([`Publisher`], [`Node`]): an ingest node verifies a client
//! batch, cuts it into one [`Part`] per partition and publishes each to `tollgate.rx.<p>` with a
//! `Nats-Msg-Id` of (client, producer, session epoch, batch seq, partition); the partition's
//! owner applies the parts to the partition's own ledger in stream order, each with its stream
//! sequence in the same RocksDB write; the ingest node asks the owner for each part's verdicts
//! (`tollgate.ask.<p>`), checks each [`Answer`] fits its part and merges them into the ack a
//! standalone server would give. The owner refuses a part whose receipts are not all its
//! partition's ([`PartRefused`]). A payer's funds are read from any node by asking its
//! partition's owner ([`FundsClient`], `tollgate.funds.<p>`), whose ledger holds everything
//! acked. Modules: `part` (the bytes on the log, of the asks and of the funds queries),
//! `publish` (the ingest side), `owner` (one partition's consumer and answers), `checkpoint`
//! (an owner's checkpoints in the object store, restored by the next owner, with the log
//! purged below them), `funds` (funds
//! queries, both sides), `requests` (how an owner answers a request subject), `node` (which
//! partitions a node owns, by lease), `share` (how many it may hold: rebalancing as nodes join
//! and leave), `retry` (the backoff after NATS failures), `epoch` (the coordinator's marks in
//! every partition's log, each owner's seal at them and its summary for the coordinator:
//! [`Epochs`]), `watch` (the funds watcher's chain news in the payers' partitions' logs:
//! [`FundsLog`]), `mark_log` (how either writes a mark into a log), `objects` (reading an
//! object-store object without a consumer), `listing` (the subjects a stream holds: checkpoints,
//! announced nodes).
//!
//! This crate only knows about payers through [`tollgate_engine::PayerKey`]; the engine itself
//! knows nothing of NATS or tokio.

mod checkpoint;
mod config;
mod epoch;
mod error;
mod fence;
mod funds;
mod kv;
mod lease;
mod listing;
mod mark_log;
mod node;
mod objects;
mod owner;
mod part;
mod partition;
mod publish;
mod requests;
mod resources;
mod retry;
mod share;
pub mod telemetry;
mod watch;

pub use checkpoint::CheckpointError;
pub use config::{ClusterConfig, PARTITIONS_MAX};
pub use epoch::{Epochs, EpochsError, OpenEpochs};
pub use error::{ClusterError, LeaseError, NatsError};
pub use fence::{FENCE_HEADER, Fence, FenceError};
pub use funds::{FundsClient, FundsError};
pub use lease::{COORDINATOR_LEASE, Holder, Lease, LeaseKeeper, Leases, WATCHER_LEASE};
pub use listing::subjects;
pub use node::{Node, NodeLedgers};
pub use owner::{OwnerError, PartRefused, REFUSALS_KEPT};
pub use part::{
    ASK_PREFIX, Answer, Ask, BatchId, DecodeError, FUNDS_PREFIX, FundsAnswer, FundsQuery, Mark,
    Part, Shortfall, Summary, Verdicts, ask_subject, funds_subject, written_off,
};
pub use partition::{SUBJECT_PREFIX, partition_of, subject_of};
pub use publish::{AnswerProblem, PublishError, Publisher};
pub use resources::{Cluster, nats_server_binary};
pub use retry::backoff;
pub use watch::{FundsLog, FundsLogError, HeadSets};
