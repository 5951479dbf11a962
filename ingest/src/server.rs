//! The ingest server: accepts fleet connections, authenticates them, reads SUBMITs and hands each
//! batch to the engine, and writes every ACK once the engine says the batch is durable.
//!
//! ```text
//! accept ─(connections_max)─▶ connection task ──SubmitRequest──▶ Engine::submit
//!                              │ one engine permit per batch      │
//!                              ◀──────── ACK ◀── waiter task ◀────┘ (permit released here)
//! ```
//! Back-pressure: a batch is handed to the engine only with one of `engine_batches_max` semaphore
//! permits, so `Engine::submit` never finds its queue full. A connection waiting for a permit stops
//! reading its socket, and TCP pushes back on the client. A permit is released the moment the
//! engine answers, by a small task per batch, so a client that stops reading its ACKs cannot sit on
//! permits other clients need.
//!
//! Where batches go is the [`Ledger`]: this process's engine (standalone), or in cluster mode a
//! [`ClusterLedger`] that publishes them to the cluster's log and answers once their partitions'
//! owners applied them. Only the engine's path is on the standalone hot path, unchanged: the
//! cluster's is one `match` arm away and costs the standalone server nothing.
//!
//! Every limit is in [`ServerConfig`]. A protocol violation is answered with one ERROR frame and
//! the connection closes; nothing of a frame that fails a check is applied, and batches read
//! before it are still acknowledged first. Shutdown (the `CancellationToken`) stops accepting,
//! stops reading, acknowledges every batch already read, and closes each connection with ERROR
//! `shutting_down`.

use crate::telemetry as names;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::SinkExt;
use futures::future::BoxFuture;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tollgate_engine::grant::{
    CheckedGrant, CheckedRevocation, GrantError, SignedGrant, SignedRevocation,
};
use tollgate_engine::pipeline::{
    BatchAck, Engine, EngineError, LedgerError, SubmitError, SubmitRequest,
};
use tollgate_engine::receipt::RECEIPT_BYTES;
use tollgate_engine::{Address, Domain, Reason};
use tracing::Instrument;

use crate::wire::{
    Ack, Balance, Challenge, Decoded, ErrorCode, ErrorFrame, Frame, FrameCodec, FrameHeader,
    FrameType, GrantRefusal, GrantResult, Hello, HelloOk, QueryBalance, Registration, Submit,
    WireError, decode_frame,
};

/// A fleet client the server accepts.
#[derive(Clone, Debug)]
pub struct ClientAuth {
    /// The id its HELLO names.
    pub client_id: u64,
    /// The ed25519 public key its HELLO must be signed with.
    pub key: [u8; 32],
    /// The payees it may submit receipts for; any other payee's receipt is rejected alone with
    /// [`Reason::PayeeNotAllowed`].
    pub payees: BTreeSet<Address>,
}

/// Every limit of the server, each with a safe default from [`ServerConfig::new`].
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The deployment: HELLOs for another chain or contract are refused.
    pub domain: Domain,
    /// Accepted clients. Empty means open mode (any client, any payee), which is only allowed on
    /// a loopback address.
    pub clients: Vec<ClientAuth>,
    /// Largest frame read, header included; checked before the body is read.
    pub frame_bytes_max: u32,
    /// Most receipts in one SUBMIT.
    pub batch_receipts_max: u32,
    /// Most SUBMITs awaiting their ACK per connection.
    pub batches_in_flight_max: u32,
    /// Open connections; one more gets ERROR `too_many_connections`.
    pub connections_max: usize,
    /// Batches handed to the engine and not yet answered, over all connections. Keep it at or
    /// below the engine's `queue_batches_max` so `Engine::submit` never finds its queue full.
    pub engine_batches_max: usize,
    /// From accept to a valid HELLO.
    pub handshake_timeout_ms: u64,
    /// Silence allowed while no batch is in flight.
    pub idle_timeout_ms: u64,
    /// From the first to the last byte of one frame (defeats clients that trickle bytes).
    pub read_deadline_ms: u64,
    /// Longest one write may block on a client that does not read.
    pub write_deadline_ms: u64,
    /// Longest shutdown waits for connections to finish acknowledging.
    pub shutdown_grace_ms: u64,
}

impl ServerConfig {
    /// Defaults for a server of `domain` with no configured clients (open mode).
    pub fn new(domain: Domain) -> ServerConfig {
        ServerConfig {
            domain,
            clients: Vec::new(),
            frame_bytes_max: crate::wire::FRAME_BYTES_MAX,
            batch_receipts_max: 4096,
            batches_in_flight_max: 16,
            connections_max: 1024,
            engine_batches_max: 128,
            handshake_timeout_ms: 5_000,
            idle_timeout_ms: 60_000,
            read_deadline_ms: 10_000,
            write_deadline_ms: 10_000,
            shutdown_grace_ms: 30_000,
        }
    }

    fn validate(&self, listen: SocketAddr) -> Result<(), ServerError> {
        if self.clients.is_empty() && !listen.ip().is_loopback() {
            return Err(ServerError::OpenModeNotLoopback(listen));
        }
        let checks = [
            (self.batch_receipts_max == 0, "batch_receipts_max is zero"),
            (
                self.batches_in_flight_max == 0,
                "batches_in_flight_max is zero",
            ),
            (self.connections_max == 0, "connections_max is zero"),
            (self.engine_batches_max == 0, "engine_batches_max is zero"),
            (
                (self.frame_bytes_max as usize)
                    < Submit::frame_bytes(self.batch_receipts_max as usize),
                "frame_bytes_max cannot hold a SUBMIT of batch_receipts_max receipts",
            ),
        ];
        match checks.into_iter().find(|(bad, _)| *bad) {
            Some((_, why)) => Err(ServerError::Config(why)),
            None => Ok(()),
        }
    }
}

/// Where a server's batches, balance queries and grants go.
#[derive(Clone, Debug)]
pub enum Ledger {
    /// Standalone: this process's engine judges, applies and answers everything.
    Engine(Engine),
    /// Cluster mode: batches go through the cluster's log to their partitions' owners. HELLO
    /// skips the session-epoch check (the epochs are kept per partition, by the owners, who
    /// refuse a superseded session's batches), and GRANT/REVOKE are refused with
    /// [`ErrorCode::NotInCluster`] (grants do not travel through the log yet).
    Cluster(Arc<dyn ClusterLedger>),
}

/// What a cluster node does with what a connection reads. Its refusals are the ERROR frames the
/// connection closes with.
pub trait ClusterLedger: Send + Sync + std::fmt::Debug + 'static {
    /// The batch's ack once every receipt it accepts is durable in its partition's ledger.
    fn submit(&self, request: SubmitRequest) -> BoxFuture<'static, Result<BatchAck, ErrorFrame>>;
    /// The payer's balance, from its partition's owner (whichever node that is); while the
    /// partition has no owner, or a new one still replays its log,
    /// [`ErrorCode::PartitionNotOwned`]. The connection waits for it, as for a standalone read,
    /// but here it is a round trip to the owner (seconds at worst, when the owner is silent).
    fn balance(&self, query: QueryBalance) -> BoxFuture<'static, Result<Balance, ErrorFrame>>;
}

/// Why the server stopped other than by its shutdown token.
#[derive(Debug, Error)]
pub enum ServerError {
    /// No clients are configured and the address is not loopback: refusing to run open.
    #[error("no clients configured: open mode is only allowed on loopback, not {0}")]
    OpenModeNotLoopback(SocketAddr),
    /// A limit is unusable.
    #[error("invalid server configuration: {0}")]
    Config(&'static str),
    /// The listener has no address.
    #[error("listener: {0}")]
    Listener(std::io::Error),
    /// Fatal: the engine failed (a write or fsync error); the process must exit.
    #[error("engine failed: {0}")]
    Engine(String),
}

struct Shared {
    config: ServerConfig,
    clients: HashMap<u64, ClientAuth>,
    ledger: Ledger,
    engine_permits: Arc<Semaphore>,
    /// Cancelled when the engine fails: every connection stops, `run` returns the error.
    fatal: CancellationToken,
    fatal_error: std::sync::Mutex<Option<String>>,
}

impl Shared {
    fn open_mode(&self) -> bool {
        self.clients.is_empty()
    }

    fn fail(&self, error: &EngineError) {
        tracing::error!(%error, "engine failed; stopping the server");
        if let Ok(mut slot) = self.fatal_error.lock() {
            slot.get_or_insert_with(|| error.to_string());
        }
        self.fatal.cancel();
    }
}

/// Refusals sent to connections over the limit at once; beyond this they are simply closed, so
/// a flood of connects costs no more than a bounded number of small writes.
const REFUSALS_IN_FLIGHT_MAX: usize = 64;
/// How long a closing connection keeps draining the client's bytes so the ERROR frame is not lost
/// to a TCP reset.
const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// The fleet port's accept queue. tokio's `TcpListener::bind` asks for 1,024; a burst of
/// connects beyond the queue is dropped by the kernel before the server can refuse it with a
/// reason, so ask for more (Linux caps it at `net.core.somaxconn`, 4,096 by default).
const LISTEN_BACKLOG: u32 = 4_096;

/// Binds the fleet port with [`LISTEN_BACKLOG`], ready for [`run`].
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // A restarted server must not wait out TIME_WAIT sockets of its previous run.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `listener` until `shutdown` is cancelled (then returns `Ok` once every connection has
/// acknowledged what it read, or `shutdown_grace_ms` passed) or the engine fails.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    ledger: Ledger,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let listen = listener.local_addr().map_err(ServerError::Listener)?;
    config.validate(listen)?;
    if config.clients.is_empty() {
        tracing::warn!(%listen, "no clients configured: OPEN MODE, any client may submit for any payee");
    }
    tracing::info!(%listen, chain_id = config.domain.chain_id, contract = %config.domain.contract, "ingest listening");
    let connections = Arc::new(Semaphore::new(config.connections_max));
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT_MAX));
    let shared = Arc::new(Shared {
        clients: config
            .clients
            .iter()
            .map(|client| (client.client_id, client.clone()))
            .collect(),
        engine_permits: Arc::new(Semaphore::new(config.engine_batches_max)),
        config,
        ledger,
        fatal: CancellationToken::new(),
        fatal_error: std::sync::Mutex::new(None),
    });
    // Connections watch this one token: cancelled on shutdown or on an engine failure.
    let stop = shutdown.child_token();
    let tracker = TaskTracker::new();
    let connection_limit_bytes = Frame::Error(connection_limit()).to_bytes();
    let mut limit_log = LimitLog::default();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            _ = shared.fatal.cancelled() => { stop.cancel(); break }
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: pause instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        metrics::counter!(names::CONNECTIONS_ACCEPTED_TOTAL).increment(1);
        let _ = stream.set_nodelay(true);
        match Arc::clone(&connections).try_acquire_owned() {
            Ok(slot) => {
                let span = tracing::info_span!(
                    "conn",
                    %peer,
                    client_id = tracing::field::Empty,
                    producer_id = tracing::field::Empty
                );
                let connection = Connection::new(Arc::clone(&shared), stop.clone(), stream);
                tracker.spawn(
                    async move {
                        metrics::gauge!(names::CONNECTIONS_OPEN).increment(1.0);
                        connection.serve().await;
                        metrics::gauge!(names::CONNECTIONS_OPEN).decrement(1.0);
                        drop(slot);
                    }
                    .instrument(span),
                );
            }
            Err(_) => {
                count_refusal(ErrorCode::TooManyConnections);
                limit_log.refused(&peer);
                match Arc::clone(&refusals).try_acquire_owned() {
                    Ok(refusal) => {
                        let deadline = Duration::from_millis(shared.config.write_deadline_ms);
                        tracker.spawn(async move {
                            let _ = timeout(deadline, refuse(stream, connection_limit())).await;
                            drop(refusal);
                        });
                    }
                    // Past the refusals in flight: one non-blocking write of the ready-made frame
                    // into the fresh socket's empty send buffer, then close. A client waiting
                    // for CHALLENGE has sent nothing, so the close is a FIN after the frame, not
                    // a reset that could destroy it; the flood costs one syscall per connect.
                    Err(_) => {
                        let _ = stream.try_write(&connection_limit_bytes);
                    }
                }
            }
        }
    }
    drop(listener);
    tracker.close();
    let grace = Duration::from_millis(shared.config.shutdown_grace_ms);
    if timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            connections = tracker.len(),
            "shutdown grace elapsed with connections still open"
        );
    }
    let fatal = shared.fatal_error.lock().ok().and_then(|mut e| e.take());
    match fatal {
        Some(error) => Err(ServerError::Engine(error)),
        None => Ok(()),
    }
}

/// How often a flood of connections over the limit is logged: a line per refused connect would
/// let the flood fill the disk; the counter in `/metrics` has the exact figure.
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs refusals at the connection limit once per [`LIMIT_LOG_EVERY`], with how many there were.
#[derive(Default)]
struct LimitLog {
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl LimitLog {
    fn refused(&mut self, peer: &std::net::SocketAddr) {
        self.unlogged += 1;
        if self
            .logged_at
            .is_some_and(|at| at.elapsed() < LIMIT_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            %peer,
            refused = self.unlogged,
            "at the connection limit: refusing connections"
        );
        self.logged_at = Some(Instant::now());
        self.unlogged = 0;
    }
}

fn count_refusal(code: ErrorCode) {
    metrics::counter!(names::REFUSALS_TOTAL, "code" => code.name()).increment(1);
}

/// The refusal a connection over `connections_max` gets.
fn connection_limit() -> ErrorFrame {
    ErrorFrame::new(
        ErrorCode::TooManyConnections,
        "server is at its connection limit",
    )
}

/// Sends one ERROR on a connection that gets nothing else, then closes it gently.
async fn refuse(stream: TcpStream, error: ErrorFrame) {
    let (read, write) = stream.into_split();
    let mut writer = FramedWrite::new(write, FrameCodec::default());
    if writer.send(&Frame::Error(error)).await.is_ok() {
        linger_close(read, writer.into_inner()).await;
    }
}

/// Half-closes, then drains what the client still sends for a moment: closing a socket with
/// unread input makes TCP reset the connection, and the client could lose our ERROR frame.
async fn linger_close(mut read: OwnedReadHalf, mut write: OwnedWriteHalf) {
    let _ = write.shutdown().await;
    let mut sink = [0u8; 4096];
    let until = Instant::now() + CLOSE_LINGER;
    while let Ok(Ok(n)) = timeout_at(until, read.read(&mut sink)).await {
        if n == 0 {
            break;
        }
    }
}

/// What a batch's waiter task reports back to its connection.
struct Answered {
    batch_seq: u64,
    result: Result<BatchAck, Unacked>,
}

/// Why a batch got no ack.
enum Unacked {
    /// The engine's error (standalone).
    Engine(EngineError),
    /// The cluster's refusal, as the ERROR to close with.
    Refused(ErrorFrame),
}

/// Who is on the other end, once the HELLO checks out.
struct Session {
    /// The client id the HELLO named and (unless in open mode) proved.
    client_id: u64,
    producer_id: u64,
    session_epoch: u64,
    /// `None` in open mode: every payee is allowed.
    payees: Option<BTreeSet<Address>>,
}

/// Why a connection is closing: the ERROR to send once every batch read is acknowledged, or
/// `None` when the client left or cannot be written to.
struct Closing {
    error: Option<ErrorFrame>,
}

struct Connection {
    shared: Arc<Shared>,
    stop: CancellationToken,
    read: OwnedReadHalf,
    writer: FramedWrite<OwnedWriteHalf, FrameCodec>,
    buf: BytesMut,
    answered_tx: mpsc::Sender<Answered>,
    answered_rx: mpsc::Receiver<Answered>,
    /// Batches read and not yet acknowledged (including one waiting for an engine permit).
    in_flight: usize,
    /// A SUBMIT read and waiting for an engine permit; the socket is not read meanwhile.
    waiting: Option<SubmitRequest>,
    /// When the first byte of the frame being read was seen. Kept here, not in one read call,
    /// because every answer or permit restarts the read: the deadline is per frame, not per call.
    frame_started_at: Option<Instant>,
}

impl Connection {
    fn new(shared: Arc<Shared>, stop: CancellationToken, stream: TcpStream) -> Connection {
        let (read, write) = stream.into_split();
        let in_flight_max = shared.config.batches_in_flight_max as usize;
        // One slot per batch in flight: a waiter task never waits to report.
        let (answered_tx, answered_rx) = mpsc::channel(in_flight_max);
        let frame_bytes_max = shared.config.frame_bytes_max;
        Connection {
            shared,
            stop,
            read,
            writer: FramedWrite::new(write, FrameCodec::new(frame_bytes_max)),
            buf: BytesMut::with_capacity(8 * 1024),
            answered_tx,
            answered_rx,
            in_flight: 0,
            waiting: None,
            frame_started_at: None,
        }
    }

    fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    async fn serve(mut self) {
        let closing = match self.handshake().await {
            Ok(session) => self.stream(session).await,
            Err(closing) => closing,
        };
        self.close(closing).await;
    }

    async fn write(&mut self, frame: &Frame) -> Result<(), Closing> {
        let deadline = Duration::from_millis(self.config().write_deadline_ms);
        match timeout(deadline, self.writer.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            // Nobody left to tell, or nobody listening: close without a word.
            Ok(Err(_)) | Err(_) => Err(Closing { error: None }),
        }
    }

    /// CHALLENGE, then one HELLO within the handshake timeout, checked; answers HELLO_OK.
    async fn handshake(&mut self) -> Result<Session, Closing> {
        let deadline = Instant::now() + Duration::from_millis(self.config().handshake_timeout_ms);
        let challenge = Challenge::random();
        self.write(&Frame::Challenge(challenge)).await?;
        let stop = self.stop.clone();
        let hello = tokio::select! {
            _ = stop.cancelled() => return Err(refusal(ErrorCode::ShuttingDown, "server is shutting down")),
            frame = read_frame(&mut self.read, &mut self.buf, &self.shared.config, &mut self.frame_started_at, Phase::Handshake { deadline }) => match frame? {
                Frame::Hello(hello) => hello,
                other => return Err(refusal(ErrorCode::UnexpectedFrame, format!("expected HELLO, got {}", other.frame_type()))),
            },
        };
        let session = self.check_hello(&hello, &challenge)?;
        let span = tracing::Span::current();
        span.record("client_id", hello.client_id);
        span.record("producer_id", hello.producer_id);
        let config = self.config();
        let limits = HelloOk {
            frame_bytes_max: config.frame_bytes_max,
            batch_receipts_max: config.batch_receipts_max,
            batches_in_flight_max: config.batches_in_flight_max,
            idle_timeout_ms: u32::try_from(config.idle_timeout_ms).unwrap_or(u32::MAX),
        };
        self.write(&Frame::HelloOk(limits)).await?;
        tracing::debug!(session_epoch = session.session_epoch, "handshake complete");
        Ok(session)
    }

    fn check_hello(&self, hello: &Hello, challenge: &Challenge) -> Result<Session, Closing> {
        let ours = self.config().domain;
        if hello.domain.chain_id != ours.chain_id {
            return Err(refusal(
                ErrorCode::WrongChain,
                format!(
                    "this server settles on chain {}, not {}",
                    ours.chain_id, hello.domain.chain_id
                ),
            ));
        }
        if hello.domain.contract != ours.contract {
            return Err(refusal(
                ErrorCode::WrongContract,
                format!(
                    "this server settles on contract {}, not {}",
                    ours.contract, hello.domain.contract
                ),
            ));
        }
        let payees = if self.shared.open_mode() {
            None
        } else {
            let Some(client) = self.shared.clients.get(&hello.client_id) else {
                return Err(refusal(
                    ErrorCode::UnknownClient,
                    format!("client id {} is not configured", hello.client_id),
                ));
            };
            if client.key != hello.client_key {
                return Err(refusal(
                    ErrorCode::BadClientAuth,
                    "the key is not the one configured for this client id",
                ));
            }
            Some(client.payees.clone())
        };
        if let Err(error) = hello.verify(challenge) {
            return Err(refusal(ErrorCode::BadClientAuth, error.to_string()));
        }
        let session = Session {
            client_id: hello.client_id,
            producer_id: hello.producer_id,
            session_epoch: hello.session_epoch,
            payees,
        };
        let reader = match &self.shared.ledger {
            Ledger::Engine(engine) => engine.reader(),
            // The epochs live in the partitions' ledgers: each refuses a superseded session's
            // batches when they reach it.
            Ledger::Cluster(_) => return Ok(session),
        };
        // Sessions are looked up inside the client the HELLO proved: a producer id names nothing
        // of another client's, so the epoch below is this client's own.
        match reader.session_epoch(hello.client_id, hello.producer_id) {
            Ok(Some(current)) if hello.session_epoch < current => Err(refusal(
                ErrorCode::ProducerFenced,
                format!(
                    "producer {} is at session epoch {current}; {} is older",
                    hello.producer_id, hello.session_epoch
                ),
            )),
            Ok(_) => Ok(session),
            Err(error) => {
                tracing::error!(%error, "cannot read the producer's session");
                Err(refusal(
                    ErrorCode::Internal,
                    "cannot read the producer's session",
                ))
            }
        }
    }

    /// After the handshake: reads frames, submits batches, writes ACKs, until something ends it.
    async fn stream(&mut self, session: Session) -> Closing {
        loop {
            let reading = self.waiting.is_none();
            let idle_applies = self.in_flight == 0;
            let result = tokio::select! {
                biased;
                Some(answered) = self.answered_rx.recv() => self.on_answer(answered).await,
                permit = acquire(&self.shared.engine_permits), if self.waiting.is_some() => self.hand_over(permit),
                _ = self.stop.cancelled() => Err(refusal(ErrorCode::ShuttingDown, "server is shutting down")),
                frame = read_frame(&mut self.read, &mut self.buf, &self.shared.config, &mut self.frame_started_at, Phase::Streaming { idle_applies }), if reading => match frame {
                    Ok(frame) => self.on_frame(frame, &session).await,
                    Err(closing) => Err(closing),
                },
            };
            if let Err(closing) = result {
                return closing;
            }
        }
    }

    async fn on_frame(&mut self, frame: Frame, session: &Session) -> Result<(), Closing> {
        match frame {
            Frame::Submit(submit) => self.on_submit(submit, session),
            Frame::QueryBalance(query) => {
                let balance = self.balance(query).await?;
                self.write(&Frame::Balance(balance)).await
            }
            Frame::Grant(registration) => self.on_registration(Record::Grant, registration).await,
            Frame::Revoke(registration) => {
                self.on_registration(Record::Revocation, registration).await
            }
            Frame::Ping(ping) => self.write(&Frame::Pong(ping)).await,
            Frame::Pong(_) => Ok(()),
            other => Err(refusal(
                ErrorCode::UnexpectedFrame,
                format!("{} is not allowed after the handshake", other.frame_type()),
            )),
        }
    }

    fn on_submit(&mut self, submit: Submit, session: &Session) -> Result<(), Closing> {
        let config = self.config();
        let receipts = submit.receipts.len();
        if receipts > config.batch_receipts_max as usize {
            return Err(refusal(
                ErrorCode::BatchTooLarge,
                format!(
                    "{receipts} receipts; at most {} per batch",
                    config.batch_receipts_max
                ),
            ));
        }
        if self.in_flight >= config.batches_in_flight_max as usize {
            return Err(refusal(
                ErrorCode::TooManyBatchesInFlight,
                format!("at most {} batches in flight", config.batches_in_flight_max),
            ));
        }
        metrics::counter!(names::BATCHES_RECEIVED_TOTAL).increment(1);
        metrics::counter!(names::RECEIPTS_RECEIVED_TOTAL).increment(receipts as u64);
        metrics::histogram!(names::BATCH_RECEIPTS).record(receipts as f64);
        let prejudged = match &session.payees {
            None => Vec::new(),
            Some(allowed) => not_allowed(&submit, allowed),
        };
        self.in_flight += 1;
        self.waiting = Some(SubmitRequest {
            client_id: session.client_id,
            producer_id: session.producer_id,
            session_epoch: session.session_epoch,
            batch_seq: submit.batch_seq,
            receipts: submit.receipts,
            prejudged,
        });
        Ok(())
    }

    /// Hands the waiting batch to the engine with its permit, and starts the task that returns the
    /// permit and reports the answer as soon as the engine replies. A batch the engine does not
    /// take leaves the in-flight count: nothing will ever answer for it.
    fn hand_over(&mut self, permit: OwnedSemaphorePermit) -> Result<(), Closing> {
        let Some(request) = self.waiting.take() else {
            return Ok(());
        };
        let batch_seq = request.batch_seq;
        match &self.shared.ledger {
            Ledger::Engine(engine) => {
                let receiver = match engine.submit(request) {
                    Ok(receiver) => receiver,
                    Err(error) => {
                        self.in_flight -= 1;
                        return Err(self.not_taken(error));
                    }
                };
                self.wait_for_answer(batch_seq, permit, async move {
                    receiver
                        .await
                        .unwrap_or(Err(EngineError::Stopped))
                        .map_err(Unacked::Engine)
                });
            }
            Ledger::Cluster(cluster) => {
                let answer = cluster.submit(request);
                self.wait_for_answer(batch_seq, permit, async move {
                    answer.await.map_err(Unacked::Refused)
                });
            }
        }
        Ok(())
    }

    /// The task that returns the batch's permit the moment `answer` resolves and reports it.
    fn wait_for_answer(
        &self,
        batch_seq: u64,
        permit: OwnedSemaphorePermit,
        answer: impl Future<Output = Result<BatchAck, Unacked>> + Send + 'static,
    ) {
        metrics::gauge!(names::ENGINE_BATCHES_IN_FLIGHT).increment(1.0);
        let answered = self.answered_tx.clone();
        tokio::spawn(async move {
            let result = answer.await;
            drop(permit);
            metrics::gauge!(names::ENGINE_BATCHES_IN_FLIGHT).decrement(1.0);
            // The connection may be gone; the batch is durable (or failed) either way.
            let _ = answered.send(Answered { batch_seq, result }).await;
        });
    }

    /// Why a batch the engine did not take ends the connection.
    fn not_taken(&self, error: SubmitError) -> Closing {
        match error {
            SubmitError::Closed => refusal(ErrorCode::ShuttingDown, "the engine is shutting down"),
            SubmitError::Poisoned => {
                self.shared
                    .fail(&EngineError::Ledger(LedgerError::Poisoned {
                        cause: "submit refused: ledger poisoned".into(),
                    }));
                refusal(ErrorCode::Internal, "the ledger has failed")
            }
            error => {
                tracing::error!(%error, "engine refused a batch");
                refusal(ErrorCode::Internal, error.to_string())
            }
        }
    }

    async fn on_answer(&mut self, answered: Answered) -> Result<(), Closing> {
        self.in_flight -= 1;
        match answered.result {
            Ok(ack) => {
                metrics::counter!(names::RECEIPTS_ACCEPTED_TOTAL)
                    .increment(u64::from(ack.accepted));
                for (_, reason) in &ack.rejections {
                    metrics::counter!(names::RECEIPTS_REJECTED_TOTAL, "reason" => reason.name())
                        .increment(1);
                }
                let ack = Ack {
                    batch_seq: ack.batch_seq,
                    accepted: ack.accepted,
                    rejections: ack.rejections,
                };
                self.write(&Frame::Ack(ack)).await
            }
            Err(Unacked::Refused(error)) => Err(Closing { error: Some(error) }),
            Err(Unacked::Engine(EngineError::Ledger(LedgerError::SessionSuperseded {
                current,
                ..
            }))) => Err(refusal(
                ErrorCode::ProducerFenced,
                format!(
                    "batch {}: the producer is now at session epoch {current}",
                    answered.batch_seq
                ),
            )),
            Err(Unacked::Engine(
                error @ EngineError::Ledger(LedgerError::BatchMismatch { .. }),
            )) => Err(refusal(ErrorCode::BatchMismatch, error.to_string())),
            Err(Unacked::Engine(error)) if error.is_refusal() => {
                tracing::warn!(%error, batch_seq = answered.batch_seq, "engine refused a batch");
                Err(refusal(ErrorCode::Internal, error.to_string()))
            }
            Err(Unacked::Engine(EngineError::Stopped)) => {
                Err(refusal(ErrorCode::ShuttingDown, "the engine stopped"))
            }
            Err(Unacked::Engine(error)) => {
                self.shared.fail(&error);
                Err(refusal(ErrorCode::Internal, "the ledger has failed"))
            }
        }
    }

    /// Registers a grant or a revocation and answers once it is durable or refused. The
    /// connection reads nothing else meanwhile, so a SUBMIT sent after a GRANT reaches the engine
    /// only once the grant is applied: its receipts are judged under it. A record that fails a
    /// check is refused for this request alone.
    async fn on_registration(
        &mut self,
        kind: Record,
        registration: Registration,
    ) -> Result<(), Closing> {
        let engine = match &self.shared.ledger {
            Ledger::Engine(engine) => engine.clone(),
            Ledger::Cluster(_) => {
                return Err(refusal(
                    ErrorCode::NotInCluster,
                    "grants and revocations do not travel through the cluster's log yet; \
                     register them with a standalone server",
                ));
            }
        };
        let domain = self.config().domain;
        let record = registration.record;
        // A signature verification: kept off the runtime's worker threads.
        let checked = tokio::task::spawn_blocking(move || kind.check(&record, &domain))
            .await
            .map_err(|error| refusal(ErrorCode::Internal, error.to_string()))?;
        let outcome = match checked {
            Ok(checked) => self.register(&engine, checked).await?,
            Err(error) => Err(GrantRefusal::from(&error)),
        };
        if let Err(refused) = &outcome {
            tracing::info!(code = refused.code, text = %refused.text, "grant or revocation refused");
        }
        let answer = GrantResult {
            request_id: registration.request_id,
            outcome,
        };
        self.write(&Frame::GrantResult(answer)).await
    }

    /// Hands a checked record to the ledger and waits until it is durable; the ledger's
    /// refusal (a session granted by another payer, say) is the request's answer.
    async fn register(
        &self,
        engine: &Engine,
        checked: Checked,
    ) -> Result<Result<(), GrantRefusal>, Closing> {
        let receiver = loop {
            let queued = match &checked {
                Checked::Grant(grant) => engine.grant(grant.clone()),
                Checked::Revocation(revocation) => engine.revoke(*revocation),
            };
            match queued {
                Ok(receiver) => break receiver,
                // The control queue is shared with settlement's few messages and drains with
                // the ledger's next write.
                Err(SubmitError::Full) => tokio::select! {
                    _ = self.stop.cancelled() => {
                        return Err(refusal(ErrorCode::ShuttingDown, "server is shutting down"));
                    }
                    _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                },
                Err(error) => return Err(self.not_taken(error)),
            }
        };
        match receiver.await.unwrap_or(Err(EngineError::Stopped)) {
            Ok(()) => Ok(Ok(())),
            Err(EngineError::Ledger(LedgerError::Grant(error))) => {
                Ok(Err(GrantRefusal::from(&error)))
            }
            Err(EngineError::Stopped) => {
                Err(refusal(ErrorCode::ShuttingDown, "the engine stopped"))
            }
            Err(error) if error.is_refusal() => {
                tracing::warn!(%error, "engine refused a grant or revocation");
                Err(refusal(ErrorCode::Internal, error.to_string()))
            }
            Err(error) => {
                self.shared.fail(&error);
                Err(refusal(ErrorCode::Internal, "the ledger has failed"))
            }
        }
    }

    async fn balance(&self, query: QueryBalance) -> Result<Balance, Closing> {
        let reader = match &self.shared.ledger {
            Ledger::Engine(engine) => engine.reader(),
            Ledger::Cluster(cluster) => {
                return cluster
                    .balance(query)
                    .await
                    .map_err(|error| Closing { error: Some(error) });
            }
        };
        let read = tokio::task::spawn_blocking(move || payer_balance(&reader, query)).await;
        match read {
            Ok(Ok(balance)) => Ok(balance),
            Ok(Err(error)) => {
                tracing::error!(%error, "balance read failed");
                Err(refusal(ErrorCode::Internal, "cannot read the ledger"))
            }
            Err(error) => Err(refusal(ErrorCode::Internal, error.to_string())),
        }
    }

    /// Acknowledges every batch already read (without reading more), then sends the ERROR and
    /// closes. Batches the engine has taken are durable whatever happens to the socket.
    async fn close(mut self, closing: Closing) {
        tracing::debug!(
            in_flight = self.in_flight,
            waiting = self.waiting.is_some(),
            refusal = closing.error.as_ref().map(|error| error.code),
            "closing"
        );
        if self.waiting.is_some() {
            let permit = acquire(&self.shared.engine_permits).await;
            // Already closing for another reason, which is the one the client is told.
            let _ = self.hand_over(permit);
        }
        let mut writable = true;
        while self.in_flight > 0 {
            let Some(answered) = self.answered_rx.recv().await else {
                break;
            };
            if !writable {
                self.in_flight -= 1;
                continue;
            }
            match self.on_answer(answered).await {
                Ok(()) => {}
                // Nobody to write to any more.
                Err(Closing { error: None }) => writable = false,
                // Another batch refused: the client is told the first refusal and re-sends
                // every batch without an ack, this one too; the acks of the others still go out.
                Err(Closing { error: Some(error) }) => {
                    tracing::debug!(code = error.code, text = %error.text, "another batch refused while closing");
                }
            }
        }
        let Some(error) = closing.error else {
            tracing::debug!("connection closed");
            return;
        };
        if let Some(code) = error.error_code() {
            count_refusal(code);
        }
        tracing::info!(code = error.code, text = %error.text, "refused; closing");
        if writable && self.write(&Frame::Error(error)).await.is_ok() {
            linger_close(self.read, self.writer.into_inner()).await;
        }
    }
}

/// Which record a GRANT or REVOKE carries.
#[derive(Clone, Copy)]
enum Record {
    Grant,
    Revocation,
}

/// A record that passed its own checks, ready for the ledger.
enum Checked {
    Grant(CheckedGrant),
    Revocation(CheckedRevocation),
}

impl Record {
    /// Parses and checks the record (signature included) for `domain`.
    fn check(self, record: &[u8], domain: &Domain) -> Result<Checked, GrantError> {
        Ok(match self {
            Record::Grant => Checked::Grant(SignedGrant::decode(record)?.check(domain)?),
            Record::Revocation => {
                Checked::Revocation(SignedRevocation::decode(record)?.check(domain)?)
            }
        })
    }
}

/// Where a connection is, for what a read may take.
#[derive(Clone, Copy)]
enum Phase {
    /// Before HELLO_OK: one HELLO, whole by `deadline`, and nothing larger than a HELLO frame.
    Handshake { deadline: Instant },
    /// After HELLO_OK: the per-frame read deadline and, when `idle_applies`, the idle timeout.
    Streaming { idle_applies: bool },
}

/// Reads one whole frame. Before HELLO_OK a frame may be no larger than a HELLO, so an
/// unauthenticated peer cannot make the server set aside a full `frame_bytes_max`; after it, a
/// frame must be whole within the read deadline of its first byte (`frame_started_at`, which
/// outlives a cancelled call) and, when the idle timeout applies, begin within it.
async fn read_frame(
    read: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    config: &ServerConfig,
    frame_started_at: &mut Option<Instant>,
    phase: Phase,
) -> Result<Frame, Closing> {
    let idle_ms = config.idle_timeout_ms;
    let per_frame_ms = config.read_deadline_ms;
    let frame_bytes_max = match phase {
        Phase::Handshake { .. } => Hello::FRAME_BYTES,
        Phase::Streaming { .. } => config.frame_bytes_max,
    };
    let idle_since = Instant::now();
    loop {
        let frame_started = match decode_frame(buf, frame_bytes_max) {
            Ok(Decoded::Frame(frame)) => {
                *frame_started_at = None;
                return Ok(frame);
            }
            Ok(Decoded::Incomplete { frame_started }) => frame_started,
            Err(error) => return Err(frame_refusal(buf, phase, error)),
        };
        if !frame_started {
            *frame_started_at = None;
        }
        let limit = match phase {
            Phase::Handshake { deadline } => Some((
                deadline,
                ErrorCode::HandshakeTimeout,
                "no HELLO within the handshake timeout".to_owned(),
            )),
            Phase::Streaming { .. } if frame_started => {
                let started = *frame_started_at.get_or_insert_with(Instant::now);
                Some((
                    started + Duration::from_millis(per_frame_ms),
                    ErrorCode::ReadDeadline,
                    format!("frame not finished within {per_frame_ms} ms"),
                ))
            }
            Phase::Streaming { idle_applies } => idle_applies.then(|| {
                (
                    idle_since + Duration::from_millis(idle_ms),
                    ErrorCode::IdleTimeout,
                    format!("nothing received for {idle_ms} ms"),
                )
            }),
        };
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(4096);
        }
        let read = match limit {
            Some((until, code, text)) => match timeout_at(until, read.read_buf(buf)).await {
                Ok(read) => read,
                Err(_) => return Err(refusal(code, text)),
            },
            None => read.read_buf(buf).await,
        };
        match read {
            Ok(0) if buf.is_empty() => return Err(Closing { error: None }),
            Ok(0) => {
                return Err(refusal(
                    ErrorCode::TruncatedFrame,
                    format!("stream ended {} bytes into a frame", buf.len()),
                ));
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, "read failed");
                return Err(Closing { error: None });
            }
        }
    }
}

/// The ERROR for bytes that can never become an acceptable frame. Before HELLO_OK a header too
/// large for a HELLO is refused as soon as it is read; one that is not a HELLO at all is told so.
fn frame_refusal(buf: &BytesMut, phase: Phase, error: WireError) -> Closing {
    if let (Phase::Handshake { .. }, WireError::FrameTooLarge { .. }) = (phase, &error)
        && let Some(frame_type) = FrameHeader::peek_type(buf)
        && frame_type != FrameType::Hello
    {
        return refusal(
            ErrorCode::UnexpectedFrame,
            format!("expected HELLO, got {frame_type}"),
        );
    }
    refusal(error.code(), error.to_string())
}

fn refusal(code: ErrorCode, text: impl Into<String>) -> Closing {
    Closing {
        error: Some(ErrorFrame::new(code, text)),
    }
}

async fn acquire(permits: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    match Arc::clone(permits).acquire_owned().await {
        Ok(permit) => permit,
        // The semaphore is never closed; waiting forever is the honest answer if it were.
        Err(_) => std::future::pending().await,
    }
}

/// Receipts in `submit` whose payee the client may not submit for.
fn not_allowed(submit: &Submit, allowed: &BTreeSet<Address>) -> Vec<(u32, Reason)> {
    submit
        .receipts
        .as_bytes()
        .chunks_exact(RECEIPT_BYTES)
        .enumerate()
        .filter_map(|(index, record)| {
            let mut payee = [0u8; 20];
            payee.copy_from_slice(&record[32..52]);
            (!allowed.contains(&Address(payee))).then_some((index as u32, Reason::PayeeNotAllowed))
        })
        .collect()
}

/// The answer to QUERY_BALANCE from the payer's one record, which keeps its receipt and channel
/// counts: one point read however many payees the payer has paid.
pub fn payer_balance(
    reader: &tollgate_engine::pipeline::LedgerReader,
    query: QueryBalance,
) -> Result<Balance, tollgate_engine::store::StoreError> {
    let funds = reader.payer(&query.payer)?.unwrap_or_default();
    Ok(balance_frame(query, funds))
}

/// The BALANCE frame answering `query` with `funds` (zero for a payer the ledger never saw).
pub fn balance_frame(query: QueryBalance, funds: tollgate_engine::ledger::PayerBalance) -> Balance {
    Balance {
        request_id: query.request_id,
        payer: query.payer,
        net_deposited: funds.deposited.saturating_sub(funds.withdrawn),
        settled: funds.settled,
        pending: funds.pending,
        available: funds.available,
        receipts: funds.receipts,
        channels: funds.channels,
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}
