//! The client library API fleets use to stream receipts to a Tollgate server.
//!
//! [`Client::submit`] queues one receipt and hands back a future of its verdict; receipts are
//! gathered into batches that are sent when full or when the oldest has waited `batch_linger_ms`.
//! Up to `batches_in_flight_max` batches await their ACK at once. Each [`Client`] is one producer
//! session: its session epoch is taken when it connects, larger than any taken before in this
//! process, and its batches are numbered from 1 in it. When the connection breaks, the client
//! reconnects with exponential backoff in the same session and re-sends every unacknowledged batch
//! under its original sequence number, so the server's client sessions answer with the original
//! ACK and nothing is counted twice.
//!
//! ```no_run
//! use ed25519_dalek::SigningKey;
//! use tollgate_engine::{Address, Domain, PayerKey, UnsignedReceipt};
//! use tollgate_ingest::client::{Client, ClientConfig};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let domain = Domain { chain_id: 31_337, contract: "0x5fbdb2315678afecb367f032d93f642f64180aa3".parse()? };
//! let fleet_key = SigningKey::from_bytes(&[7; 32]); // the key configured for client id 1
//! let client = Client::connect(ClientConfig::new("127.0.0.1:7402", 1, fleet_key, 1, domain)).await?;
//!
//! // For every paid API call: the payer signed this receipt; submit it and await the verdict.
//! let payer = SigningKey::from_bytes(&[9; 32]);
//! let receipt = UnsignedReceipt {
//!     payer: PayerKey(payer.verifying_key().to_bytes()),
//!     payee: Address([0x11; 20]),
//!     amount: 1_500,
//!     nonce: 1,
//!     timestamp_ms: 1_764_000_000_000,
//!     request_hash: [0; 32],
//!     session: false,
//! }
//! .sign(&payer, &domain);
//! let verdict = client.submit(receipt).await?.await?; // Ok(()) once durable, or Err(reason)
//! println!("{verdict:?}");
//! println!("{:?}", client.close().await?);
//! # Ok(())
//! # }
//! ```
//!
//! One task per client owns the socket and every piece of state; handles talk to it through a
//! bounded channel, so a caller that outpaces the server waits in `submit` (back-pressure) rather
//! than growing a queue.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use futures::{SinkExt, StreamExt};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::codec::{FramedRead, FramedWrite};
use tollgate_engine::grant::{SignedGrant, SignedRevocation};
use tollgate_engine::receipt::RECEIPT_BYTES;
use tollgate_engine::{Domain, PayerKey, Receipt, ReceiptBatch, Verdict};

use crate::wire::{
    Ack, Balance, CodecError, ErrorCode, ErrorFrame, Frame, FrameCodec, GrantRefusal, GrantResult,
    Hello, HelloOk, Ping, QueryBalance, Registration, Submit,
};

/// What became of a grant or revocation the server answered: `Ok` once it is durable, or the
/// server's refusal (which changed nothing).
pub type GrantOutcome = Result<(), GrantRefusal>;

/// How a client connects and batches. Build with [`ClientConfig::new`], then adjust fields.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Server address, `host:port`; for a cluster, several separated by commas. Every connect
    /// and reconnect takes the first that accepts a TCP connection, in order, in the same
    /// session: when a node is down its unacknowledged batches are re-sent through the next.
    pub addr: String,
    /// The client id the server is configured with (any value for a server in open mode).
    pub client_id: u64,
    /// The key whose public half the server has for `client_id`.
    pub client_key: SigningKey,
    /// This producer's id: one per process streaming batches. A [`Client`] made later from the
    /// same config starts a newer session of the producer, which fences off the older one.
    pub producer_id: u64,
    /// The deployment the receipts are signed for; the server refuses a HELLO for another.
    pub domain: Domain,
    /// Most receipts per batch (lowered to the server's limit if that is smaller).
    pub batch_receipts_max: u32,
    /// Longest a receipt waits for its batch to fill before the batch is sent anyway.
    pub batch_linger_ms: u64,
    /// Most batches awaiting their ACK (lowered to the server's limit if that is smaller).
    pub batches_in_flight_max: u32,
    /// First reconnect delay; doubles per failed attempt up to `reconnect_backoff_ms_max`.
    pub reconnect_backoff_ms_min: u64,
    /// Longest reconnect delay.
    pub reconnect_backoff_ms_max: u64,
    /// Failed reconnect attempts in a row after which every waiting request fails with
    /// [`ClientError::Disconnected`] and the client stops.
    pub reconnect_attempts_max: u32,
    /// Time allowed for TCP connect plus handshake.
    pub connect_timeout_ms: u64,
    /// Requests (submits, balance queries) queued between handles and the connection task
    /// before `submit` waits.
    pub queue_requests_max: usize,
}

impl ClientConfig {
    /// A config with the defaults: batches of up to 1024 receipts or 5 ms, 8 in flight, reconnect
    /// backoff 50 ms to 5 s for up to 20 attempts.
    pub fn new(
        addr: impl Into<String>,
        client_id: u64,
        client_key: SigningKey,
        producer_id: u64,
        domain: Domain,
    ) -> ClientConfig {
        ClientConfig {
            addr: addr.into(),
            client_id,
            client_key,
            producer_id,
            domain,
            batch_receipts_max: 1024,
            batch_linger_ms: 5,
            batches_in_flight_max: 8,
            reconnect_backoff_ms_min: 50,
            reconnect_backoff_ms_max: 5_000,
            reconnect_attempts_max: 20,
            connect_timeout_ms: 5_000,
            queue_requests_max: 1024,
        }
    }

    fn validate(&self) -> Result<(), ClientError> {
        let checks = [
            (self.batch_receipts_max == 0, "batch_receipts_max is zero"),
            (
                self.batches_in_flight_max == 0,
                "batches_in_flight_max is zero",
            ),
            (self.queue_requests_max == 0, "queue_requests_max is zero"),
            (
                self.reconnect_backoff_ms_min == 0,
                "reconnect_backoff_ms_min is zero",
            ),
            (
                self.reconnect_backoff_ms_max < self.reconnect_backoff_ms_min,
                "reconnect_backoff_ms_max is below reconnect_backoff_ms_min",
            ),
        ];
        match checks.into_iter().find(|(bad, _)| *bad) {
            Some((_, why)) => Err(ClientError::Config(why)),
            None => Ok(()),
        }
    }
}

/// Why a request did not get its answer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The configuration cannot work.
    #[error("invalid client configuration: {0}")]
    Config(&'static str),
    /// The server could not be reached, or the connection failed during the handshake.
    #[error("cannot reach {addr}: {detail}")]
    Connect {
        /// the address tried
        addr: String,
        /// what failed
        detail: String,
    },
    /// The server refused with an ERROR frame and closed the connection.
    #[error("server refused: {}: {text}", ErrorCode::from_code(*code).map_or_else(|| format!("code {code}"), |c| c.to_string()))]
    Refused {
        /// the wire code ([`ErrorCode`])
        code: u16,
        /// the server's explanation
        text: String,
    },
    /// The server sent something the protocol does not allow.
    #[error("server broke the protocol: {0}")]
    Protocol(String),
    /// The client gave up reconnecting. Receipts without a verdict may or may not have been
    /// applied: submit them again (a new `Client` is fine): none is counted twice, and one that
    /// was applied comes back rejected as `duplicate`.
    #[error("gave up after {attempts} reconnect attempts: {last}")]
    Disconnected {
        /// attempts made
        attempts: u32,
        /// the last failure
        last: String,
    },
    /// The client was closed, or stopped after an earlier error, before answering.
    #[error("client is closed")]
    Closed,
}

impl ClientError {
    /// The server's error code, when the server refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => ErrorCode::from_code(*code),
            _ => None,
        }
    }

    /// True when reconnecting may help: the network or the server's state, not the request.
    fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. } => true,
            ClientError::Refused { .. } => matches!(
                self.code(),
                Some(
                    ErrorCode::ShuttingDown
                        | ErrorCode::Internal
                        | ErrorCode::IdleTimeout
                        | ErrorCode::TooManyConnections
                        | ErrorCode::HandshakeTimeout
                        | ErrorCode::ReadDeadline
                )
            ),
            _ => false,
        }
    }

    fn refused(error: ErrorFrame) -> ClientError {
        ClientError::Refused {
            code: error.code,
            text: error.text,
        }
    }
}

/// Counters since the client was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Receipts handed to `submit` / `submit_batch`.
    pub receipts_submitted: u64,
    /// Receipts the server accepted.
    pub receipts_accepted: u64,
    /// Receipts the server rejected.
    pub receipts_rejected: u64,
    /// SUBMIT frames written, re-sends included.
    pub batches_sent: u64,
    /// SUBMIT frames written again after a reconnect.
    pub batches_resent: u64,
    /// ACKs received.
    pub batches_acked: u64,
    /// Successful reconnects.
    pub reconnects: u64,
}

#[derive(Debug, Default)]
struct SharedStats {
    receipts_submitted: AtomicU64,
    receipts_accepted: AtomicU64,
    receipts_rejected: AtomicU64,
    batches_sent: AtomicU64,
    batches_resent: AtomicU64,
    batches_acked: AtomicU64,
    reconnects: AtomicU64,
}

impl SharedStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ClientStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClientStats {
            receipts_submitted: get(&self.receipts_submitted),
            receipts_accepted: get(&self.receipts_accepted),
            receipts_rejected: get(&self.receipts_rejected),
            batches_sent: get(&self.batches_sent),
            batches_resent: get(&self.batches_resent),
            batches_acked: get(&self.batches_acked),
            reconnects: get(&self.reconnects),
        }
    }
}

type VerdictsReply = oneshot::Sender<Result<Vec<Verdict>, ClientError>>;

#[derive(Debug)]
enum Command {
    Submit {
        receipts: Vec<Receipt>,
        /// Send the open batch right after these receipts instead of waiting for the linger time.
        flush: bool,
        reply: VerdictsReply,
    },
    Balance {
        payer: PayerKey,
        reply: oneshot::Sender<Result<Balance, ClientError>>,
    },
    /// A GRANT or REVOKE; its request id is set when the task numbers it.
    Register {
        frame: Frame,
        reply: oneshot::Sender<Result<GrantOutcome, ClientError>>,
    },
    Close {
        reply: oneshot::Sender<ClientStats>,
    },
}

/// A handle to a connection task. Cheap to clone; every clone feeds the same batches.
#[derive(Clone, Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    stats: Arc<SharedStats>,
}

/// The verdict of one receipt, once its batch is acknowledged.
#[derive(Debug)]
pub struct VerdictFuture {
    reply: oneshot::Receiver<Result<Vec<Verdict>, ClientError>>,
}

impl Future for VerdictFuture {
    type Output = Result<Verdict, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.reply).poll(cx).map(|answer| {
            answer
                .unwrap_or(Err(ClientError::Closed))?
                .first()
                .copied()
                .ok_or(ClientError::Protocol("no verdict for the receipt".into()))
        })
    }
}

/// The verdicts of a batch of receipts, in input order, once every one is acknowledged.
#[derive(Debug)]
pub struct BatchVerdictsFuture {
    reply: oneshot::Receiver<Result<Vec<Verdict>, ClientError>>,
}

impl Future for BatchVerdictsFuture {
    type Output = Result<Vec<Verdict>, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.reply)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(ClientError::Closed)))
    }
}

/// The last session epoch this process took.
static LAST_SESSION_EPOCH: AtomicU64 = AtomicU64::new(0);

/// A session epoch larger than any this process took before, even for two clients connecting in
/// the same instant, and (the wall clock in nanoseconds) larger than any an earlier run took.
fn next_session_epoch() -> u64 {
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        });
    let next = |last: u64| now_ns.max(last.saturating_add(1));
    match LAST_SESSION_EPOCH.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
        Some(next(last))
    }) {
        Ok(last) | Err(last) => next(last),
    }
}

impl Client {
    /// Connects and completes the handshake, so a wrong address, key or deployment fails here;
    /// then starts the connection task. The client runs in a new session of its producer, kept
    /// across its reconnects.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        config.validate()?;
        let session_epoch = next_session_epoch();
        let connection = Connection::open(&config, session_epoch).await?;
        let (commands, receiver) = mpsc::channel(config.queue_requests_max);
        let stats = Arc::new(SharedStats::default());
        let task = Task::new(
            config,
            session_epoch,
            receiver,
            Arc::clone(&stats),
            &connection.limits,
        );
        tokio::spawn(task.run(connection));
        Ok(Client { commands, stats })
    }

    /// Queues one receipt; awaits only when the client is saturated. The returned future resolves
    /// to the receipt's verdict once its batch is acknowledged.
    pub async fn submit(&self, receipt: Receipt) -> Result<VerdictFuture, ClientError> {
        let reply = self.send_receipts(vec![receipt], false).await?;
        Ok(VerdictFuture { reply })
    }

    /// Queues a batch the caller already formed and sends it without waiting for the linger time
    /// (split if it exceeds the batch limit). The future resolves to the verdicts in input order.
    pub async fn submit_batch(
        &self,
        receipts: Vec<Receipt>,
    ) -> Result<BatchVerdictsFuture, ClientError> {
        let reply = self.send_receipts(receipts, true).await?;
        Ok(BatchVerdictsFuture { reply })
    }

    async fn send_receipts(
        &self,
        receipts: Vec<Receipt>,
        flush: bool,
    ) -> Result<oneshot::Receiver<Result<Vec<Verdict>, ClientError>>, ClientError> {
        let (reply, answer) = oneshot::channel();
        if receipts.is_empty() {
            // Nothing to send: answer at once rather than make a round trip.
            let _ = reply.send(Ok(Vec::new()));
            return Ok(answer);
        }
        let count = receipts.len() as u64;
        self.commands
            .send(Command::Submit {
                receipts,
                flush,
                reply,
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        SharedStats::add(&self.stats.receipts_submitted, count);
        Ok(answer)
    }

    /// A payer's balance as the server's durable ledger has it.
    pub async fn balance(&self, payer: PayerKey) -> Result<Balance, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Balance { payer, reply })
            .await
            .map_err(|_| ClientError::Closed)?;
        answer.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Registers a payer's signed grant of a session key; resolves once the server has it on
    /// disk, or with its refusal. Receipts submitted after this resolves are judged under the
    /// grant.
    pub async fn grant(&self, grant: &SignedGrant) -> Result<GrantOutcome, ClientError> {
        self.register(Registration::grant(0, grant)).await
    }

    /// Registers a payer's signed revocation of a session key; resolves once the server has it
    /// on disk (receipts of the session applied from then on are refused `grant_revoked`), or
    /// with its refusal.
    pub async fn revoke(&self, revocation: &SignedRevocation) -> Result<GrantOutcome, ClientError> {
        self.register(Registration::revocation(0, revocation)).await
    }

    async fn register(&self, frame: Frame) -> Result<GrantOutcome, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Register { frame, reply })
            .await
            .map_err(|_| ClientError::Closed)?;
        answer.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Counters so far.
    pub fn stats(&self) -> ClientStats {
        self.stats.snapshot()
    }

    /// Sends what is queued, waits for every ACK, then closes the connection. Other handles'
    /// later requests fail with [`ClientError::Closed`].
    pub async fn close(self) -> Result<ClientStats, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Close { reply })
            .await
            .map_err(|_| ClientError::Closed)?;
        answer.await.map_err(|_| ClientError::Closed)
    }
}

/// One established, handshaken connection.
struct Connection {
    reader: FramedRead<OwnedReadHalf, FrameCodec>,
    writer: FramedWrite<OwnedWriteHalf, FrameCodec>,
    limits: HelloOk,
}

impl Connection {
    async fn open(config: &ClientConfig, session_epoch: u64) -> Result<Connection, ClientError> {
        let deadline = Duration::from_millis(config.connect_timeout_ms);
        timeout(deadline, Self::handshake(config, session_epoch))
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Connect {
                    addr: config.addr.clone(),
                    detail: format!("no HELLO_OK within {} ms", config.connect_timeout_ms),
                })
            })
    }

    async fn handshake(
        config: &ClientConfig,
        session_epoch: u64,
    ) -> Result<Connection, ClientError> {
        let unreachable = |detail: String| ClientError::Connect {
            addr: config.addr.clone(),
            detail,
        };
        let stream = connect_first(&config.addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| unreachable(e.to_string()))?;
        let (read, write) = stream.into_split();
        let mut reader = FramedRead::new(read, FrameCodec::default());
        let mut writer = FramedWrite::new(write, FrameCodec::default());
        let challenge = match next_frame(&mut reader).await {
            Ok(Frame::Challenge(challenge)) => challenge,
            Ok(other) => return Err(unexpected(&other, "CHALLENGE")),
            Err(Failure::Broken(detail)) => return Err(unreachable(detail)),
            Err(Failure::Fatal(error)) => return Err(error),
        };
        let hello = Hello::signed(
            config.client_id,
            config.producer_id,
            session_epoch,
            config.domain,
            &config.client_key,
            &challenge,
        );
        writer
            .send(&Frame::Hello(hello))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let limits = match next_frame(&mut reader).await {
            Ok(Frame::HelloOk(limits)) => limits,
            Ok(other) => return Err(unexpected(&other, "HELLO_OK")),
            Err(Failure::Broken(detail)) => return Err(unreachable(detail)),
            Err(Failure::Fatal(error)) => return Err(error),
        };
        if limits.batch_receipts_max == 0 || limits.batches_in_flight_max == 0 {
            return Err(ClientError::Protocol(format!(
                "HELLO_OK allows nothing: {limits:?}"
            )));
        }
        *writer.encoder_mut() = FrameCodec::new(limits.frame_bytes_max);
        Ok(Connection {
            reader,
            writer,
            limits,
        })
    }
}

async fn feed(connection: &mut Connection, frame: &Frame) -> Result<(), Failure> {
    connection.writer.feed(frame).await.map_err(write_failure)
}

async fn send(connection: &mut Connection, frame: &Frame) -> Result<(), Failure> {
    connection.writer.send(frame).await.map_err(write_failure)
}

fn write_failure(error: CodecError) -> Failure {
    match error {
        CodecError::Io(error) => Failure::Broken(error.to_string()),
        // Only a frame over the server's limit: a bug here, not in the network.
        CodecError::Wire(error) => Failure::Fatal(ClientError::Protocol(error.to_string())),
    }
}

fn unexpected(frame: &Frame, wanted: &str) -> ClientError {
    ClientError::Protocol(format!("expected {wanted}, got {}", frame.frame_type()))
}

/// How a connection ended, from the client's point of view.
enum Failure {
    /// The connection broke (EOF, socket error, retryable refusal): reconnect and re-send.
    Broken(String),
    /// Reconnecting cannot help: fail every waiting request with this.
    Fatal(ClientError),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        if error.is_retryable() {
            Failure::Broken(error.to_string())
        } else {
            Failure::Fatal(error)
        }
    }
}

/// A TCP connection to the first of `addrs` (comma-separated) that accepts one.
async fn connect_first(addrs: &str) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in addrs.split(',').map(str::trim) {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no server address")
    }))
}

/// The next frame from the server; an ERROR frame comes back as a failure.
async fn next_frame(reader: &mut FramedRead<OwnedReadHalf, FrameCodec>) -> Result<Frame, Failure> {
    match reader.next().await {
        Some(Ok(Frame::Error(error))) => Err(ClientError::refused(error).into()),
        Some(Ok(frame)) => Ok(frame),
        Some(Err(CodecError::Wire(error))) => {
            Err(Failure::Fatal(ClientError::Protocol(error.to_string())))
        }
        Some(Err(CodecError::Io(error))) => Err(Failure::Broken(error.to_string())),
        None => Err(Failure::Broken("server closed the connection".into())),
    }
}

/// A run of one request's receipts inside a batch.
#[derive(Debug)]
struct Segment {
    request: u64,
    request_offset: usize,
    batch_offset: usize,
    len: usize,
}

/// A numbered batch, kept until its ACK arrives so it can be re-sent unchanged.
#[derive(Debug)]
struct SealedBatch {
    submit: Submit,
    segments: Vec<Segment>,
    /// Written on some connection already: writing it again is a re-send.
    written: bool,
}

/// A request answered by its own frame, matched by request id.
#[derive(Debug)]
enum Query {
    Balance(PayerKey, oneshot::Sender<Result<Balance, ClientError>>),
    /// The GRANT or REVOKE frame, kept to be re-sent after a reconnect.
    Registration(Frame, oneshot::Sender<Result<GrantOutcome, ClientError>>),
}

impl Query {
    fn fail(self, error: ClientError) {
        match self {
            Query::Balance(_, reply) => {
                let _ = reply.send(Err(error));
            }
            Query::Registration(_, reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

#[derive(Debug)]
struct PendingRequest {
    verdicts: Vec<Verdict>,
    outstanding: usize,
    reply: VerdictsReply,
}

/// The connection task: owns the socket, the open batch, every batch not yet acknowledged and
/// every request waiting for an answer.
struct Task {
    config: ClientConfig,
    /// This client's session of its producer, the same on every reconnect.
    session_epoch: u64,
    commands: mpsc::Receiver<Command>,
    stats: Arc<SharedStats>,
    batch_receipts_max: usize,
    in_flight_max: usize,
    ping_interval: Duration,
    requests: HashMap<u64, PendingRequest>,
    next_request: u64,
    open: Vec<Receipt>,
    open_segments: Vec<Segment>,
    open_deadline: Option<Instant>,
    next_seq: u64,
    /// Sealed, not yet written on the current connection, in sequence order.
    unsent: VecDeque<SealedBatch>,
    /// Written, awaiting their ACK.
    in_flight: BTreeMap<u64, SealedBatch>,
    /// Balance queries, grants and revocations awaiting their answer, by request id: ordered, so
    /// a reconnect re-sends a grant before the revocation that follows it.
    queries: BTreeMap<u64, Query>,
    unsent_queries: VecDeque<u64>,
    next_query: u64,
    closing: Option<Option<oneshot::Sender<ClientStats>>>,
}

impl Task {
    fn new(
        config: ClientConfig,
        session_epoch: u64,
        commands: mpsc::Receiver<Command>,
        stats: Arc<SharedStats>,
        limits: &HelloOk,
    ) -> Task {
        let mut task = Task {
            config,
            session_epoch,
            commands,
            stats,
            batch_receipts_max: 1,
            in_flight_max: 1,
            ping_interval: Duration::from_secs(1),
            requests: HashMap::new(),
            next_request: 0,
            open: Vec::new(),
            open_segments: Vec::new(),
            open_deadline: None,
            next_seq: 1,
            unsent: VecDeque::new(),
            in_flight: BTreeMap::new(),
            queries: BTreeMap::new(),
            unsent_queries: VecDeque::new(),
            next_query: 1,
            closing: None,
        };
        task.adopt_limits(limits);
        task
    }

    fn adopt_limits(&mut self, limits: &HelloOk) {
        let by_frame = (limits.frame_bytes_max as usize).saturating_sub(Submit::frame_bytes(0))
            / RECEIPT_BYTES;
        self.batch_receipts_max = (self.config.batch_receipts_max as usize)
            .min(limits.batch_receipts_max as usize)
            .min(by_frame)
            .max(1);
        self.in_flight_max = self
            .config
            .batches_in_flight_max
            .min(limits.batches_in_flight_max) as usize;
        // Well inside the server's idle timeout, so a quiet but healthy connection stays open.
        self.ping_interval = Duration::from_millis(u64::from(limits.idle_timeout_ms / 3).max(10));
    }

    async fn run(mut self, mut connection: Connection) {
        loop {
            let failure = match self.serve(&mut connection).await {
                Ok(()) => return self.finish(),
                Err(failure) => failure,
            };
            // Whatever was written and not acknowledged goes out again, first and in order.
            while let Some((_, batch)) = self.in_flight.pop_last() {
                self.unsent.push_front(batch);
            }
            self.unsent_queries = self.queries.keys().copied().collect();
            let error = match failure {
                Failure::Broken(detail) => {
                    tracing::warn!(addr = %self.config.addr, %detail, "connection lost, reconnecting");
                    match self.reconnect(detail).await {
                        Ok(fresh) => {
                            connection = fresh;
                            continue;
                        }
                        Err(error) => error,
                    }
                }
                Failure::Fatal(error) => error,
            };
            tracing::error!(addr = %self.config.addr, %error, "client stopping");
            return self.fail_everything(error).await;
        }
    }

    async fn reconnect(&mut self, mut last: String) -> Result<Connection, ClientError> {
        let mut backoff_ms = self.config.reconnect_backoff_ms_min;
        for attempt in 1..=self.config.reconnect_attempts_max {
            sleep(Duration::from_millis(backoff_ms)).await;
            backoff_ms = (backoff_ms * 2).min(self.config.reconnect_backoff_ms_max);
            match Connection::open(&self.config, self.session_epoch).await {
                Ok(connection) => {
                    SharedStats::add(&self.stats.reconnects, 1);
                    self.adopt_limits(&connection.limits);
                    return Ok(connection);
                }
                Err(error) if error.is_retryable() => {
                    tracing::debug!(attempt, %error, "reconnect failed");
                    last = error.to_string();
                }
                Err(error) => return Err(error),
            }
        }
        Err(ClientError::Disconnected {
            attempts: self.config.reconnect_attempts_max,
            last,
        })
    }

    /// Drives one connection until the client is closed and drained (`Ok`) or it fails.
    async fn serve(&mut self, connection: &mut Connection) -> Result<(), Failure> {
        let mut last_received = Instant::now();
        let mut ping_due = Instant::now() + self.ping_interval;
        let mut ping_outstanding = false;
        loop {
            self.write_ready(connection).await?;
            if self.closing.is_some()
                && self.open.is_empty()
                && self.unsent.is_empty()
                && self.in_flight.is_empty()
                && self.queries.is_empty()
            {
                return Ok(());
            }
            let accepting = self.closing.is_none() && self.unsent.len() < self.in_flight_max;
            let linger = self.open_deadline;
            tokio::select! {
                frame = next_frame(&mut connection.reader) => {
                    last_received = Instant::now();
                    ping_outstanding = false;
                    self.on_frame(frame?, connection).await?;
                }
                command = self.commands.recv(), if accepting => match command {
                    Some(command) => self.on_command(command),
                    // Every handle is gone: finish what was queued, as `close` would.
                    None => {
                        self.seal();
                        self.closing = Some(None);
                    }
                },
                _ = sleep_until(linger.unwrap_or_else(Instant::now)), if linger.is_some() => self.seal(),
                _ = sleep_until(ping_due) => {
                    let waiting = ping_outstanding || !self.in_flight.is_empty();
                    if waiting && last_received.elapsed() > self.ping_interval * 3 {
                        return Err(Failure::Broken("server silent past its idle timeout".into()));
                    }
                    ping_due = Instant::now() + self.ping_interval;
                    if !ping_outstanding {
                        ping_outstanding = true;
                        send(connection, &Frame::Ping(Ping { nonce: self.next_seq })).await?;
                    }
                }
            }
        }
    }

    /// Writes queued queries and as many sealed batches as the in-flight window allows.
    async fn write_ready(&mut self, connection: &mut Connection) -> Result<(), Failure> {
        let mut wrote = false;
        while let Some(request_id) = self.unsent_queries.pop_front() {
            let query = match self.queries.get(&request_id) {
                Some(Query::Balance(payer, _)) => Frame::QueryBalance(QueryBalance {
                    request_id,
                    payer: *payer,
                }),
                Some(Query::Registration(frame, _)) => frame.clone(),
                None => continue,
            };
            feed(connection, &query).await?;
            wrote = true;
        }
        while self.in_flight.len() < self.in_flight_max {
            let Some(mut batch) = self.unsent.pop_front() else {
                break;
            };
            feed(connection, &Frame::Submit(batch.submit.clone())).await?;
            if batch.written {
                SharedStats::add(&self.stats.batches_resent, 1);
            }
            batch.written = true;
            SharedStats::add(&self.stats.batches_sent, 1);
            self.in_flight.insert(batch.submit.batch_seq, batch);
            wrote = true;
        }
        if wrote {
            SinkExt::<&Frame>::flush(&mut connection.writer)
                .await
                .map_err(write_failure)?;
        }
        Ok(())
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Submit {
                receipts,
                flush,
                reply,
            } => {
                let request = self.next_request;
                self.next_request += 1;
                self.requests.insert(
                    request,
                    PendingRequest {
                        verdicts: vec![Ok(()); receipts.len()],
                        outstanding: receipts.len(),
                        reply,
                    },
                );
                let mut request_offset = 0;
                for chunk in receipts.chunks(self.batch_receipts_max) {
                    let mut chunk = chunk;
                    while !chunk.is_empty() {
                        let room = self.batch_receipts_max - self.open.len();
                        let (now, later) = chunk.split_at(room.min(chunk.len()));
                        self.open_segments.push(Segment {
                            request,
                            request_offset,
                            batch_offset: self.open.len(),
                            len: now.len(),
                        });
                        self.open.extend_from_slice(now);
                        request_offset += now.len();
                        chunk = later;
                        if self.open.len() == self.batch_receipts_max {
                            self.seal();
                        }
                    }
                }
                if flush {
                    self.seal();
                } else if !self.open.is_empty() && self.open_deadline.is_none() {
                    self.open_deadline =
                        Some(Instant::now() + Duration::from_millis(self.config.batch_linger_ms));
                }
            }
            Command::Balance { payer, reply } => {
                self.query(Query::Balance(payer, reply));
            }
            Command::Register { mut frame, reply } => {
                if let Frame::Grant(registration) | Frame::Revoke(registration) = &mut frame {
                    registration.request_id = self.next_query;
                }
                self.query(Query::Registration(frame, reply));
            }
            Command::Close { reply } => {
                self.seal();
                self.closing = Some(Some(reply));
            }
        }
    }

    /// Numbers a query and queues it for sending.
    fn query(&mut self, query: Query) {
        let request_id = self.next_query;
        self.next_query += 1;
        self.queries.insert(request_id, query);
        self.unsent_queries.push_back(request_id);
    }

    /// Numbers the open batch and queues it for sending.
    fn seal(&mut self) {
        self.open_deadline = None;
        if self.open.is_empty() {
            return;
        }
        let batch_seq = self.next_seq;
        self.next_seq += 1;
        let receipts = ReceiptBatch::from_receipts(&self.open);
        self.open.clear();
        self.unsent.push_back(SealedBatch {
            submit: Submit {
                batch_seq,
                receipts,
            },
            segments: std::mem::take(&mut self.open_segments),
            written: false,
        });
    }

    async fn on_frame(&mut self, frame: Frame, connection: &mut Connection) -> Result<(), Failure> {
        match frame {
            Frame::Ack(ack) => self.on_ack(ack),
            Frame::Balance(balance) => {
                if let Some(Query::Balance(_, reply)) = self.queries.remove(&balance.request_id) {
                    let _ = reply.send(Ok(balance));
                }
                Ok(())
            }
            Frame::GrantResult(GrantResult {
                request_id,
                outcome,
            }) => {
                if let Some(Query::Registration(_, reply)) = self.queries.remove(&request_id) {
                    let _ = reply.send(Ok(outcome));
                }
                Ok(())
            }
            Frame::Ping(ping) => send(connection, &Frame::Pong(ping)).await,
            Frame::Pong(_) => Ok(()),
            other => Err(Failure::Fatal(unexpected(
                &other,
                "ACK, BALANCE, GRANT_RESULT, PING or PONG",
            ))),
        }
    }

    fn on_ack(&mut self, ack: Ack) -> Result<(), Failure> {
        let Some(batch) = self.in_flight.remove(&ack.batch_seq) else {
            return Err(Failure::Fatal(ClientError::Protocol(format!(
                "ACK for batch {} which is not in flight",
                ack.batch_seq
            ))));
        };
        let batch_len = batch.submit.receipts.len();
        if ack.batch_receipts() != batch_len as u64 {
            return Err(Failure::Fatal(ClientError::Protocol(format!(
                "ACK for batch {} covers {} receipts, the batch has {batch_len}",
                ack.batch_seq,
                ack.batch_receipts()
            ))));
        }
        SharedStats::add(&self.stats.batches_acked, 1);
        SharedStats::add(&self.stats.receipts_accepted, u64::from(ack.accepted));
        SharedStats::add(&self.stats.receipts_rejected, ack.rejections.len() as u64);
        let mut verdicts = vec![Ok(()); batch_len];
        for (index, reason) in ack.rejections {
            verdicts[index as usize] = Err(reason);
        }
        for segment in batch.segments {
            let Some(request) = self.requests.get_mut(&segment.request) else {
                continue;
            };
            request.verdicts[segment.request_offset..segment.request_offset + segment.len]
                .copy_from_slice(
                    &verdicts[segment.batch_offset..segment.batch_offset + segment.len],
                );
            request.outstanding -= segment.len;
            if request.outstanding == 0
                && let Some(done) = self.requests.remove(&segment.request)
            {
                let _ = done.reply.send(Ok(done.verdicts));
            }
        }
        Ok(())
    }

    fn finish(mut self) {
        if let Some(Some(reply)) = self.closing.take() {
            let _ = reply.send(self.stats.snapshot());
        }
    }

    /// Answers every waiting request, and every request still queued in the channel, with `error`.
    async fn fail_everything(mut self, error: ClientError) {
        for (_, request) in self.requests.drain() {
            let _ = request.reply.send(Err(error.clone()));
        }
        for (_, query) in std::mem::take(&mut self.queries) {
            query.fail(error.clone());
        }
        if let Some(Some(reply)) = self.closing.take() {
            let _ = reply.send(self.stats.snapshot());
        }
        self.commands.close();
        while let Some(command) = self.commands.recv().await {
            match command {
                Command::Submit { reply, .. } => {
                    let _ = reply.send(Err(error.clone()));
                }
                Command::Balance { reply, .. } => {
                    let _ = reply.send(Err(error.clone()));
                }
                Command::Register { reply, .. } => {
                    let _ = reply.send(Err(error.clone()));
                }
                Command::Close { reply } => {
                    let _ = reply.send(self.stats.snapshot());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_epochs_taken_in_one_instant_still_grow() {
        let epochs: Vec<u64> = (0..1_000).map(|_| next_session_epoch()).collect();
        assert!(epochs.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
