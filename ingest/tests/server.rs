//! The real server on 127.0.0.1:0 over a real engine (RocksDB in a temp dir, the real verify
//! pool), driven by the client library and by raw frames for everything a client library would
//! never send.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BufMut;
use ed25519_dalek::SigningKey;
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tollgate_engine::grant::{Grant, PayeeScope, Revocation, SignedGrant, SignedRevocation};
use tollgate_engine::pipeline::{
    BatchAck, Engine, EngineConfig, FundsEvent, FundsKind, SubmitRequest,
};
use tollgate_engine::{
    Address, Domain, PayerKey, Reason, Receipt, ReceiptBatch, UnsignedReceipt, Verifier,
    VerifyConfig, VerifyPool,
};
use tollgate_ingest::client::{Client, ClientConfig};
use tollgate_ingest::server::{
    ClientAuth, ClusterLedger, Ledger, ServerConfig, ServerError, bind, run,
};
use tollgate_ingest::wire::{
    Ack, Balance, ErrorCode, ErrorFrame, FRAME_BYTES_MAX, Frame, FrameCodec, FrameType,
    GrantResult, Hello, Ping, QueryBalance, Registration, Submit,
};

fn domain() -> Domain {
    Domain {
        chain_id: 31_337,
        contract: Address([0x33; 20]),
    }
}

const PAYEE: Address = Address([0x11; 20]);
const FLEET_SEED: [u8; 32] = [3; 32];
const PAYER_SEED: [u8; 32] = [9; 32];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

fn receipt(nonce: u64, payee: Address) -> Receipt {
    let key = SigningKey::from_bytes(&PAYER_SEED);
    UnsignedReceipt {
        payer: PayerKey(key.verifying_key().to_bytes()),
        payee,
        amount: 10,
        nonce,
        timestamp_ms: now_ms(),
        request_hash: [0; 32],
        session: false,
    }
    .sign(&key, &domain())
}

struct Harness {
    addr: std::net::SocketAddr,
    engine: Engine,
    shutdown: CancellationToken,
    server: JoinHandle<Result<(), ServerError>>,
    _dir: tempfile::TempDir,
}

/// An engine in `dir` that checks signatures on one verification thread.
fn open_engine(dir: &std::path::Path) -> Engine {
    let verify_config = VerifyConfig {
        threads: 1,
        ..VerifyConfig::default()
    };
    let pool = VerifyPool::new(
        Verifier::new(domain(), verify_config.clone()),
        verify_config,
    )
    .expect("verify pool");
    Engine::open(EngineConfig::new(dir), Arc::new(pool)).expect("engine")
}

impl Harness {
    /// Shuts the server down and checks it stopped cleanly.
    async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.expect("join").expect("clean shutdown");
    }

    /// Stops the server and its engine, then starts both again on the same ledger.
    async fn restart(self) -> Harness {
        self.shutdown.cancel();
        self.server.await.expect("join").expect("clean shutdown");
        self.engine.shutdown().expect("engine stops cleanly");
        start_in(self._dir, |_| {}).await
    }
}

async fn start(adjust: impl FnOnce(&mut ServerConfig)) -> Harness {
    start_in(tempfile::tempdir().expect("tempdir"), adjust).await
}

/// A server over the ledger in `dir`, new or left by an earlier server.
async fn start_in(dir: tempfile::TempDir, adjust: impl FnOnce(&mut ServerConfig)) -> Harness {
    let engine = open_engine(dir.path());
    let payer = PayerKey(
        SigningKey::from_bytes(&PAYER_SEED)
            .verifying_key()
            .to_bytes(),
    );
    engine
        .funds(FundsEvent {
            payer,
            kind: FundsKind::Deposit,
            amount: 1_000_000,
            block: 1,
            log_index: 0,
        })
        .expect("queued")
        .await
        .expect("answered")
        .expect("deposit applied");
    let mut config = ServerConfig::new(domain());
    adjust(&mut config);
    let listener = bind(([127, 0, 0, 1], 0).into()).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(run(
        listener,
        config,
        Ledger::Engine(engine.clone()),
        shutdown.clone(),
    ));
    Harness {
        addr,
        engine,
        shutdown,
        server,
        _dir: dir,
    }
}

fn client_config(addr: std::net::SocketAddr, producer_id: u64) -> ClientConfig {
    let mut config = ClientConfig::new(
        addr.to_string(),
        1,
        SigningKey::from_bytes(&FLEET_SEED),
        producer_id,
        domain(),
    );
    config.reconnect_backoff_ms_min = 10;
    config
}

type Raw = Framed<TcpStream, FrameCodec>;

/// A raw connection that has completed the handshake as client 1, producer `producer_id`.
async fn handshake(addr: std::net::SocketAddr, producer_id: u64, session_epoch: u64) -> Raw {
    let key = SigningKey::from_bytes(&FLEET_SEED);
    handshake_as(addr, 1, &key, producer_id, session_epoch).await
}

/// A raw connection that has completed the handshake as `client_id` signing with `key`.
async fn handshake_as(
    addr: std::net::SocketAddr,
    client_id: u64,
    key: &SigningKey,
    producer_id: u64,
    session_epoch: u64,
) -> Raw {
    let mut raw = Framed::new(
        TcpStream::connect(addr).await.expect("connect"),
        FrameCodec::default(),
    );
    let Some(Ok(Frame::Challenge(challenge))) = raw.next().await else {
        panic!("expected CHALLENGE");
    };
    let hello = Hello::signed(
        client_id,
        producer_id,
        session_epoch,
        domain(),
        key,
        &challenge,
    );
    raw.send(&Frame::Hello(hello)).await.expect("send");
    match raw.next().await {
        Some(Ok(Frame::HelloOk(_))) => raw,
        other => panic!("expected HELLO_OK, got {other:?}"),
    }
}

/// The ERROR the server ends the connection with (skipping ACKs and PONGs before it).
async fn error_code(raw: &mut Raw) -> Option<ErrorCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), raw.next()).await {
            Ok(Some(Ok(Frame::Error(error)))) => return error.error_code(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected an ERROR frame, got {other:?}"),
        }
    }
}

async fn fresh_connection(addr: std::net::SocketAddr) -> Raw {
    let mut raw = Framed::new(
        TcpStream::connect(addr).await.expect("connect"),
        FrameCodec::default(),
    );
    let Some(Ok(Frame::Challenge(_))) = raw.next().await else {
        panic!("expected CHALLENGE");
    };
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_library_gets_durable_verdicts_and_balance() {
    let h = start(|_| {}).await;
    let client = Client::connect(client_config(h.addr, 1))
        .await
        .expect("connect");
    let first = client.submit(receipt(1, PAYEE)).await.expect("queued");
    let again = client.submit(receipt(1, PAYEE)).await.expect("queued");
    assert_eq!(first.await, Ok(Ok(())));
    assert_eq!(again.await, Ok(Err(Reason::Duplicate)));
    let payer = PayerKey(
        SigningKey::from_bytes(&PAYER_SEED)
            .verifying_key()
            .to_bytes(),
    );
    let balance = client.balance(payer).await.expect("balance");
    assert_eq!(
        (balance.pending, balance.receipts, balance.channels),
        (10, 1, 1)
    );
    client.close().await.expect("close");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_get_their_error_code_and_a_close() {
    let h = start(|config| {
        config.batch_receipts_max = 2;
        config.frame_bytes_max = 4096;
    })
    .await;
    // Garbage on connect.
    let mut raw = fresh_connection(h.addr).await;
    raw.get_mut()
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(error_code(&mut raw).await, Some(ErrorCode::BadMagic));
    // SUBMIT before HELLO.
    let mut raw = fresh_connection(h.addr).await;
    let submit = Frame::Submit(Submit {
        batch_seq: 1,
        receipts: ReceiptBatch::from_receipts(&[receipt(1, PAYEE)]),
    });
    raw.send(&submit).await.expect("send");
    assert_eq!(error_code(&mut raw).await, Some(ErrorCode::UnexpectedFrame));
    // HELLO for another chain, then another contract.
    for (wrong, code) in [
        (
            Domain {
                chain_id: 1,
                ..domain()
            },
            ErrorCode::WrongChain,
        ),
        (
            Domain {
                contract: Address([0x44; 20]),
                ..domain()
            },
            ErrorCode::WrongContract,
        ),
    ] {
        let mut raw = Framed::new(
            TcpStream::connect(h.addr).await.expect("connect"),
            FrameCodec::default(),
        );
        let Some(Ok(Frame::Challenge(challenge))) = raw.next().await else {
            panic!("challenge")
        };
        let hello = Hello::signed(
            1,
            1,
            1,
            wrong,
            &SigningKey::from_bytes(&FLEET_SEED),
            &challenge,
        );
        raw.send(&Frame::Hello(hello)).await.expect("send");
        assert_eq!(error_code(&mut raw).await, Some(code));
    }
    // A HELLO signed over another challenge.
    let mut raw = fresh_connection(h.addr).await;
    let hello = Hello::signed(
        1,
        1,
        1,
        domain(),
        &SigningKey::from_bytes(&FLEET_SEED),
        &tollgate_ingest::wire::Challenge { nonce: [0; 32] },
    );
    raw.send(&Frame::Hello(hello)).await.expect("send");
    assert_eq!(error_code(&mut raw).await, Some(ErrorCode::BadClientAuth));
    // After the handshake: a batch over the receipt limit, a 10 GB length prefix, a second HELLO.
    let mut raw = handshake(h.addr, 1, 1).await;
    let receipts: Vec<Receipt> = (1..=3).map(|n| receipt(n, PAYEE)).collect();
    raw.send(&Frame::Submit(Submit {
        batch_seq: 1,
        receipts: ReceiptBatch::from_receipts(&receipts),
    }))
    .await
    .expect("send");
    assert_eq!(error_code(&mut raw).await, Some(ErrorCode::BatchTooLarge));
    let mut raw = handshake(h.addr, 1, 1).await;
    let mut header = bytes::BytesMut::new();
    header.put_slice(&Frame::Ping(Ping { nonce: 0 }).to_bytes()[..24]);
    header[5] = 4;
    header[8..16].copy_from_slice(&10_000_000_000u64.to_le_bytes());
    raw.get_mut().write_all(&header).await.expect("write");
    assert_eq!(error_code(&mut raw).await, Some(ErrorCode::FrameTooLarge));
    let mut raw = handshake(h.addr, 1, 1).await;
    let mut half = Frame::Ping(Ping { nonce: 0 }).to_bytes().to_vec();
    half[16] ^= 0xff;
    raw.get_mut().write_all(&half).await.expect("write");
    assert_eq!(
        error_code(&mut raw).await,
        Some(ErrorCode::ChecksumMismatch)
    );
    // Half a frame, then the client closes its side.
    let mut raw = handshake(h.addr, 1, 1).await;
    raw.get_mut()
        .write_all(&Frame::Ping(Ping { nonce: 0 }).to_bytes()[..10])
        .await
        .expect("write");
    raw.get_mut().shutdown().await.expect("half-close");
    assert_eq!(error_code(&mut raw).await, Some(ErrorCode::TruncatedFrame));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_clients_are_authenticated_and_limited_to_their_payees() {
    let fleet = SigningKey::from_bytes(&FLEET_SEED);
    let h = start(|config| {
        config.clients = vec![ClientAuth {
            client_id: 1,
            key: fleet.verifying_key().to_bytes(),
            payees: BTreeSet::from([PAYEE]),
        }];
    })
    .await;
    let client = Client::connect(client_config(h.addr, 1))
        .await
        .expect("connect");
    let verdicts = client
        .submit_batch(vec![receipt(1, PAYEE), receipt(2, Address([0x55; 20]))])
        .await
        .expect("queued")
        .await
        .expect("verdicts");
    assert_eq!(verdicts, vec![Ok(()), Err(Reason::PayeeNotAllowed)]);
    let mut unknown = client_config(h.addr, 2);
    unknown.client_id = 99;
    let error = Client::connect(unknown).await.expect_err("unknown client");
    assert_eq!(error.code(), Some(ErrorCode::UnknownClient));
    let mut impostor = client_config(h.addr, 3);
    impostor.client_key = SigningKey::from_bytes(&[4; 32]);
    let error = Client::connect(impostor).await.expect_err("wrong key");
    assert_eq!(error.code(), Some(ErrorCode::BadClientAuth));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_resent_after_reconnect_gets_the_identical_ack_and_counts_once() {
    let h = start(|_| {}).await;
    let receipts = vec![receipt(1, PAYEE), receipt(2, PAYEE)];
    let submit = Frame::Submit(Submit {
        batch_seq: 7,
        receipts: ReceiptBatch::from_receipts(&receipts),
    });
    let mut first = handshake(h.addr, 5, 1).await;
    first.send(&submit).await.expect("send");
    let Some(Ok(Frame::Ack(ack))) = first.next().await else {
        panic!("ACK")
    };
    drop(first);
    let mut second = handshake(h.addr, 5, 1).await;
    second.send(&submit).await.expect("re-send");
    let Some(Ok(Frame::Ack(again))) = second.next().await else {
        panic!("ACK")
    };
    assert_eq!(again, ack);
    assert_eq!(
        ack,
        Ack {
            batch_seq: 7,
            accepted: 2,
            rejections: vec![]
        }
    );
    let payer = PayerKey(
        SigningKey::from_bytes(&PAYER_SEED)
            .verifying_key()
            .to_bytes(),
    );
    let funds = h
        .engine
        .reader()
        .payer(&payer)
        .expect("read")
        .expect("known payer");
    assert_eq!(funds.pending, 20, "two receipts of 10, counted once");
    // An older session of the same producer is fenced off.
    let mut newer = handshake(h.addr, 5, 2).await;
    newer
        .send(&Frame::Submit(Submit {
            batch_seq: 1,
            receipts: ReceiptBatch::from_receipts(&[receipt(3, PAYEE)]),
        }))
        .await
        .expect("send");
    let Some(Ok(Frame::Ack(_))) = newer.next().await else {
        panic!("ACK")
    };
    let mut raw = Framed::new(
        TcpStream::connect(h.addr).await.expect("connect"),
        FrameCodec::default(),
    );
    let Some(Ok(Frame::Challenge(challenge))) = raw.next().await else {
        panic!("challenge")
    };
    let hello = Hello::signed(
        1,
        5,
        1,
        domain(),
        &SigningKey::from_bytes(&FLEET_SEED),
        &challenge,
    );
    raw.send(&Frame::Hello(hello)).await.expect("send");
    assert_eq!(error_code(&mut raw).await, Some(ErrorCode::ProducerFenced));
    h.stop().await;
}

/// Each timeout gets a server where it is the only short one, so the test never depends on how
/// fast this machine completes a handshake or starts a frame: a short handshake timeout beside
/// the idle check would turn a slow handshake into the wrong error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_connection_limits_are_enforced() {
    let h = start(|config| config.handshake_timeout_ms = 300).await;
    let mut silent = fresh_connection(h.addr).await;
    assert_eq!(
        error_code(&mut silent).await,
        Some(ErrorCode::HandshakeTimeout)
    );
    h.stop().await;

    let h = start(|config| config.idle_timeout_ms = 300).await;
    let mut idle = handshake(h.addr, 1, 1).await;
    assert_eq!(error_code(&mut idle).await, Some(ErrorCode::IdleTimeout));
    h.stop().await;

    let h = start(|config| config.read_deadline_ms = 300).await;
    let mut trickle = handshake(h.addr, 1, 1).await;
    trickle
        .get_mut()
        .write_all(&Frame::Ping(Ping { nonce: 0 }).to_bytes()[..5])
        .await
        .expect("write");
    assert_eq!(
        error_code(&mut trickle).await,
        Some(ErrorCode::ReadDeadline)
    );
    h.stop().await;

    let h = start(|config| config.batches_in_flight_max = 1).await;
    // Two batches back to back in one write with one allowed in flight: the server reads the
    // second from its buffer while the first (512 signatures to verify, then an fsync) is still
    // in the engine. The first is made large so that margin grows with the machine's slowness
    // instead of shrinking.
    let mut eager = handshake(h.addr, 2, 1).await;
    let first: Vec<_> = (1_000..1_512).map(|nonce| receipt(nonce, PAYEE)).collect();
    for (seq, receipts) in [(1, first), (2, vec![receipt(11, PAYEE)])] {
        eager
            .feed(&Frame::Submit(Submit {
                batch_seq: seq,
                receipts: ReceiptBatch::from_receipts(&receipts),
            }))
            .await
            .expect("feed");
    }
    SinkExt::<&Frame>::flush(&mut eager).await.expect("flush");
    assert_eq!(
        error_code(&mut eager).await,
        Some(ErrorCode::TooManyBatchesInFlight)
    );
    h.stop().await;
    // Three open connections fill a fresh server; the fourth is refused.
    let h = start(|config| config.connections_max = 3).await;
    let _held: Vec<Raw> = futures::future::join_all((0..3).map(|_| fresh_connection(h.addr))).await;
    let mut refused = Framed::new(
        TcpStream::connect(h.addr).await.expect("connect"),
        FrameCodec::default(),
    );
    assert_eq!(
        error_code(&mut refused).await,
        Some(ErrorCode::TooManyConnections)
    );
    h.stop().await;
}

/// An honest client's receipts with nonces `1..=count`, each submitted after the previous one was
/// answered: every one must be accepted, and none may wait long, whatever else hits the server.
async fn answered_one_by_one(client: &Client, count: u64) {
    for nonce in 1..=count {
        let verdict = tokio::time::timeout(Duration::from_secs(30), async {
            client
                .submit(receipt(nonce, PAYEE))
                .await
                .expect("queued")
                .await
        })
        .await
        .expect("honest client is answered");
        assert_eq!(verdict, Ok(Ok(())));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_slowloris_connections_do_not_stop_an_honest_client() {
    let h = start(|config| {
        config.read_deadline_ms = 2_000;
        config.connections_max = 256;
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut raw = handshake(h.addr, 9, 1).await;
        raw.get_mut().write_all(b"TO").await.expect("write");
        slow.push(raw);
    }
    let client = Client::connect(client_config(h.addr, 1))
        .await
        .expect("connect");
    answered_one_by_one(&client, 20).await;
    for raw in &mut slow {
        assert_eq!(error_code(raw).await, Some(ErrorCode::ReadDeadline));
    }
    h.stop().await;
}

/// What one of the 10,000 connection attempts got from the server.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Attempt {
    /// A slot: the server greeted it with CHALLENGE.
    Served,
    /// An ERROR frame saying the server is full.
    RefusedWithReason,
    /// The connect failed, or the connection closed without a frame: the test allows none.
    Closed,
    /// No answer at all: the kernel's accept queue overflowed and dropped the handshake, so the
    /// server never saw this attempt.
    NeverAccepted,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connection_attempts_at_once_leave_the_honest_client_served() {
    const ATTEMPTS: usize = 10_000;
    let h = start(|config| config.connections_max = 64).await;
    let client = Client::connect(client_config(h.addr, 1))
        .await
        .expect("connect");
    // Every attempt keeps its socket until all have been answered, so a slot once given is not
    // freed for the next attempt.
    let flood = futures::future::join_all((0..ATTEMPTS).map(|_| async move {
        let Ok(stream) = TcpStream::connect(h.addr).await else {
            return (Attempt::Closed, None);
        };
        let mut raw = Framed::new(stream, FrameCodec::default());
        let attempt = match tokio::time::timeout(Duration::from_secs(10), raw.next()).await {
            Err(_) => Attempt::NeverAccepted,
            Ok(Some(Ok(Frame::Challenge(_)))) => Attempt::Served,
            Ok(Some(Ok(Frame::Error(error))))
                if error.error_code() == Some(ErrorCode::TooManyConnections) =>
            {
                Attempt::RefusedWithReason
            }
            Ok(None | Some(Err(_))) => Attempt::Closed,
            Ok(other) => panic!("unexpected answer to a connection attempt: {other:?}"),
        };
        (attempt, Some(raw))
    }));
    let (attempts, ()) = tokio::join!(flood, answered_one_by_one(&client, 20));
    let mut counts = std::collections::BTreeMap::new();
    for (attempt, _) in &attempts {
        *counts.entry(attempt).or_insert(0usize) += 1;
    }
    let served = counts.get(&Attempt::Served).copied().unwrap_or(0);
    let refused = counts
        .get(&Attempt::RefusedWithReason)
        .copied()
        .unwrap_or(0);
    assert!(
        served <= 63,
        "the honest client holds one of 64 slots: {counts:?}"
    );
    eprintln!("10,000 connection attempts: {counts:?}");
    assert!(
        refused > 0 && !counts.contains_key(&Attempt::Closed),
        "every attempt the server saw and could not serve is told why: {counts:?}"
    );
    // The flood is gone; the server still takes new clients.
    drop(attempts);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = Client::connect(client_config(h.addr, 2))
        .await
        .expect("a new client after the flood");
    let verdict = late
        .submit(receipt(100, PAYEE))
        .await
        .expect("queued")
        .await;
    assert_eq!(verdict, Ok(Ok(())));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_acks_every_batch_it_read_then_says_so() {
    let h = start(|_| {}).await;
    let mut raw = handshake(h.addr, 1, 1).await;
    for seq in 1..=8u64 {
        raw.feed(&Frame::Submit(Submit {
            batch_seq: seq,
            receipts: ReceiptBatch::from_receipts(&[receipt(100 + seq, PAYEE)]),
        }))
        .await
        .expect("feed");
    }
    // The PONG proves the server has read every SUBMIT before it.
    raw.send(&Frame::Ping(Ping { nonce: 42 }))
        .await
        .expect("send");
    let mut acked = BTreeSet::new();
    loop {
        match raw.next().await {
            Some(Ok(Frame::Pong(Ping { nonce: 42 }))) => break,
            Some(Ok(Frame::Ack(ack))) => {
                acked.insert(ack.batch_seq);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    h.shutdown.cancel();
    let code = loop {
        match raw.next().await {
            Some(Ok(Frame::Ack(ack))) => {
                acked.insert(ack.batch_seq);
            }
            Some(Ok(Frame::Error(error))) => break error.error_code(),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, Some(ErrorCode::ShuttingDown));
    assert_eq!(acked, (1..=8).collect::<BTreeSet<u64>>());
    h.server.await.expect("join").expect("clean shutdown");
}

#[tokio::test]
async fn open_mode_is_refused_off_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open_engine(dir.path());
    let listener = TcpListener::bind("0.0.0.0:0").await.expect("bind");
    let result = run(
        listener,
        ServerConfig::new(domain()),
        Ledger::Engine(engine),
        CancellationToken::new(),
    )
    .await;
    assert!(
        matches!(result, Err(ServerError::OpenModeNotLoopback(_))),
        "{result:?}"
    );
}

fn payer() -> PayerKey {
    PayerKey(
        SigningKey::from_bytes(&PAYER_SEED)
            .verifying_key()
            .to_bytes(),
    )
}

fn pending(h: &Harness) -> u128 {
    h.engine
        .reader()
        .payer(&payer())
        .expect("read")
        .expect("known payer")
        .pending
}

fn submit_frame(batch_seq: u64, nonces: &[u64]) -> Frame {
    let receipts: Vec<Receipt> = nonces.iter().map(|&n| receipt(n, PAYEE)).collect();
    Frame::Submit(Submit {
        batch_seq,
        receipts: ReceiptBatch::from_receipts(&receipts),
    })
}

async fn next_ack(raw: &mut Raw) -> Ack {
    match raw.next().await {
        Some(Ok(Frame::Ack(ack))) => ack,
        other => panic!("expected an ACK, got {other:?}"),
    }
}

/// Each `Client` numbers its batches from 1: a second one made from the same config must run in
/// a session of its own, or the server answers its batches with the first one's acks and never
/// applies its receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_from_one_config_each_get_their_receipts_applied() {
    let h = start(|_| {}).await;
    let config = client_config(h.addr, 1);
    for nonces in [[1, 2, 3], [4, 5, 6]] {
        let client = Client::connect(config.clone()).await.expect("connect");
        for nonce in nonces {
            let verdict = client
                .submit(receipt(nonce, PAYEE))
                .await
                .expect("queued")
                .await;
            assert_eq!(verdict, Ok(Ok(())));
        }
        client.close().await.expect("close");
    }
    assert_eq!(pending(&h), 60, "six receipts of 10, every one applied");
    h.stop().await;
}

/// A re-send must be the batch it claims to be: the same number with other receipts gets
/// `batch_mismatch`, never the first batch's ack, and applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_batch_number_with_other_receipts_is_refused_and_applies_nothing() {
    let h = start(|_| {}).await;
    let original = submit_frame(7, &[1]);
    let mut raw = handshake(h.addr, 5, 1).await;
    raw.send(&original).await.expect("send");
    assert_eq!(next_ack(&mut raw).await.accepted, 1);
    drop(raw);

    let mut raw = handshake(h.addr, 5, 1).await;
    raw.send(&submit_frame(7, &[2])).await.expect("send");
    match raw.next().await {
        Some(Ok(Frame::Error(error))) => {
            assert_eq!(
                error.error_code(),
                Some(ErrorCode::BatchMismatch),
                "{error:?}"
            )
        }
        other => panic!("expected ERROR batch_mismatch, got {other:?}"),
    }
    assert_eq!(pending(&h), 10, "only the original batch was applied");
    // The original bytes still get the original ack.
    let mut raw = handshake(h.addr, 5, 1).await;
    raw.send(&original).await.expect("send");
    assert_eq!(next_ack(&mut raw).await.accepted, 1);
    h.stop().await;
}

/// Producer ids belong to the authenticated client: another configured client using the same
/// producer id, even with the largest session epoch, neither fences it nor learns its epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_fence_another_clients_producer() {
    let fleet = SigningKey::from_bytes(&FLEET_SEED);
    let rival = SigningKey::from_bytes(&[5; 32]);
    let h = start(|config| {
        config.clients = [(1, &fleet), (2, &rival)]
            .into_iter()
            .map(|(client_id, key)| ClientAuth {
                client_id,
                key: key.verifying_key().to_bytes(),
                payees: BTreeSet::from([PAYEE]),
            })
            .collect();
    })
    .await;
    let mut own = handshake_as(h.addr, 1, &fleet, 5, 1).await;
    own.send(&submit_frame(1, &[1])).await.expect("send");
    assert_eq!(next_ack(&mut own).await.accepted, 1);
    drop(own);

    let mut taken = handshake_as(h.addr, 2, &rival, 5, u64::MAX).await;
    taken.send(&submit_frame(1, &[2, 3])).await.expect("send");
    assert_eq!(next_ack(&mut taken).await.accepted, 2);
    drop(taken);

    // Client 1's producer 5 carries on in its own session, and its batch 2 is its own.
    let mut own = handshake_as(h.addr, 1, &fleet, 5, 1).await;
    own.send(&submit_frame(2, &[4])).await.expect("send");
    assert_eq!(next_ack(&mut own).await.accepted, 1);
    assert_eq!(pending(&h), 40);
    // Fencing still works inside client 2's own namespace.
    let mut raw = Framed::new(
        TcpStream::connect(h.addr).await.expect("connect"),
        FrameCodec::default(),
    );
    let Some(Ok(Frame::Challenge(challenge))) = raw.next().await else {
        panic!("challenge")
    };
    let hello = Hello::signed(2, 5, 1, domain(), &rival, &challenge);
    raw.send(&Frame::Hello(hello)).await.expect("send");
    assert_eq!(error_code(&mut raw).await, Some(ErrorCode::ProducerFenced));
    h.stop().await;
}

/// A batch read after the engine stopped cannot be handed over; the connection must still say
/// why and close, not wait forever for an answer that will never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_stopped_engine_cannot_take_is_refused_and_the_connection_closes() {
    let h = start(|_| {}).await;
    let mut raw = handshake(h.addr, 1, 1).await;
    h.engine.clone().shutdown().expect("engine stops cleanly");
    raw.send(&submit_frame(1, &[1])).await.expect("send");
    // `error_code` gives up after 20 s: a connection that never closes fails here.
    assert_eq!(error_code(&mut raw).await, Some(ErrorCode::ShuttingDown));
    h.stop().await;
}

/// Before HELLO_OK the only frame a client may send is one HELLO: a header announcing anything
/// larger is refused at once, before the server sets memory aside for its body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_hello_a_frame_larger_than_hello_is_refused_at_its_header() {
    let h = start(|config| config.handshake_timeout_ms = 60_000).await;
    for (frame_type, code) in [
        (FrameType::Hello, ErrorCode::FrameTooLarge),
        (FrameType::Submit, ErrorCode::UnexpectedFrame),
    ] {
        let mut raw = fresh_connection(h.addr).await;
        let mut header = Frame::Ping(Ping { nonce: 0 }).to_bytes()[..24].to_vec();
        header[5] = frame_type.code();
        let body_bytes = u64::from(FRAME_BYTES_MAX) - 24;
        header[8..16].copy_from_slice(&body_bytes.to_le_bytes());
        raw.get_mut().write_all(&header).await.expect("write");
        assert_eq!(error_code(&mut raw).await, Some(code), "{frame_type}");
    }
    h.stop().await;
}

/// The read deadline runs from a frame's first byte, however many ACKs the server writes
/// meanwhile: a PING whose bytes take three deadlines must be refused, not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_deadline_runs_from_a_frames_first_byte_while_acks_keep_coming() {
    const BATCHES: u64 = 128;
    const DEADLINE_MS: u64 = 200;
    let h = start(|config| {
        config.read_deadline_ms = DEADLINE_MS;
        config.batches_in_flight_max = BATCHES as u32;
    })
    .await;
    // Answers for these keep arriving while the PING trickles in: the first batch is accepted,
    // every later copy is verified again and rejected as duplicates.
    let receipts: Vec<Receipt> = (1..=2048).map(|n| receipt(n, PAYEE)).collect();
    let receipts = ReceiptBatch::from_receipts(&receipts);
    let mut raw = handshake(h.addr, 1, 1).await;
    for batch_seq in 1..=BATCHES {
        let submit = Submit {
            batch_seq,
            receipts: receipts.clone(),
        };
        raw.feed(&Frame::Submit(submit)).await.expect("feed");
    }
    SinkExt::<&Frame>::flush(&mut raw).await.expect("flush");
    let ping = Frame::Ping(Ping { nonce: 7 }).to_bytes();
    raw.get_mut().write_all(&ping[..1]).await.expect("write");
    tokio::time::sleep(Duration::from_millis(3 * DEADLINE_MS)).await;
    // The server may have closed already.
    let _ = raw.get_mut().write_all(&ping[1..]).await;
    let mut acks = 0;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(60), raw.next()).await {
            Ok(Some(Ok(Frame::Ack(_)))) => acks += 1,
            Ok(Some(Ok(Frame::Error(error)))) => break error.error_code(),
            other => panic!("expected ACKs then ERROR read_deadline, got {other:?}"),
        }
    };
    assert_eq!(code, Some(ErrorCode::ReadDeadline));
    assert_eq!(
        acks, BATCHES,
        "every batch read is acknowledged before the ERROR"
    );
    h.stop().await;
}

const SESSION_SEED: [u8; 32] = [21; 32];

fn session_key() -> PayerKey {
    PayerKey(
        SigningKey::from_bytes(&SESSION_SEED)
            .verifying_key()
            .to_bytes(),
    )
}

/// The harness payer's grant to the session key: a cap of 25 (two receipts of 10), valid for
/// the next hour, for [`PAYEE`] only.
fn grant() -> Grant {
    // One moment per test process, so every call gives the same grant bytes.
    static GRANTED_AT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let granted_at = *GRANTED_AT.get_or_init(now_ms);
    Grant {
        domain: domain(),
        payer: payer(),
        session: session_key(),
        nonce: 1,
        cap: 25,
        allowance: None,
        valid_from_ms: granted_at - 60_000,
        valid_until_ms: granted_at + 3_600_000,
        payees: PayeeScope::Only(vec![PAYEE]),
    }
}

fn signed_grant() -> SignedGrant {
    grant().sign(&SigningKey::from_bytes(&PAYER_SEED))
}

/// The harness payer's revocation of `session`.
fn revocation(session: PayerKey) -> SignedRevocation {
    Revocation {
        domain: domain(),
        payer: payer(),
        session,
        revoked_at_ms: now_ms(),
    }
    .sign(&SigningKey::from_bytes(&PAYER_SEED))
}

fn session_receipt(nonce: u64, payee: Address) -> Receipt {
    UnsignedReceipt {
        payer: session_key(),
        payee,
        amount: 10,
        nonce,
        timestamp_ms: now_ms(),
        request_hash: [0; 32],
        session: true,
    }
    .sign(&SigningKey::from_bytes(&SESSION_SEED), &domain())
}

async fn verdicts(client: &Client, receipts: Vec<Receipt>) -> Vec<tollgate_engine::Verdict> {
    client
        .submit_batch(receipts)
        .await
        .expect("queued")
        .await
        .expect("acked")
}

/// A session's receipts count only once its payer's grant is registered, are charged to the
/// payer, and stop at the grant's cap, its scope and its revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_session_receipts_are_charged_to_the_payer_until_cap_and_revocation() {
    let h = start(|_| {}).await;
    let client = Client::connect(client_config(h.addr, 1))
        .await
        .expect("connect");
    assert_eq!(
        verdicts(&client, vec![session_receipt(1, PAYEE)]).await,
        vec![Err(Reason::NoGrant)]
    );
    assert_eq!(client.grant(&signed_grant()).await, Ok(Ok(())));
    // The identical grant again is fine: a fleet registers what its client presents.
    assert_eq!(client.grant(&signed_grant()).await, Ok(Ok(())));
    assert_eq!(
        verdicts(
            &client,
            vec![
                session_receipt(1, PAYEE),
                session_receipt(2, Address([0x12; 20])),
                session_receipt(3, PAYEE),
                session_receipt(4, PAYEE),
            ]
        )
        .await,
        vec![
            Ok(()),
            Err(Reason::PayeeNotInGrant),
            Ok(()),
            Err(Reason::OverGrantCap),
        ]
    );
    assert_eq!(pending(&h), 20, "charged to the granting payer's deposit");

    assert_eq!(client.revoke(&revocation(session_key())).await, Ok(Ok(())));
    assert_eq!(
        verdicts(&client, vec![session_receipt(5, PAYEE)]).await,
        vec![Err(Reason::GrantRevoked)]
    );
    assert_eq!(pending(&h), 20);
    client.close().await.expect("close");
    h.stop().await;
}

/// Every bad grant or revocation is refused with its own code, for that request alone: the
/// connection carries on, and nothing of it was registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_grant_gets_its_own_code_and_the_connection_keeps_working() {
    let h = start(|_| {}).await;
    let client = Client::connect(client_config(h.addr, 1))
        .await
        .expect("connect");
    let payer_key = SigningKey::from_bytes(&PAYER_SEED);
    let other_payer = SigningKey::from_bytes(&[10; 32]);
    let other_domain = Domain {
        chain_id: 1,
        ..domain()
    };
    let cases = [
        ("bad_signature", grant().sign(&other_payer)),
        (
            "wrong_deployment",
            Grant {
                domain: other_domain,
                ..grant()
            }
            .sign(&payer_key),
        ),
        ("zero_cap", Grant { cap: 0, ..grant() }.sign(&payer_key)),
        (
            "empty_validity",
            Grant {
                valid_until_ms: grant().valid_from_ms,
                ..grant()
            }
            .sign(&payer_key),
        ),
        (
            "session_key_is_payer",
            Grant {
                session: payer(),
                ..grant()
            }
            .sign(&payer_key),
        ),
    ];
    for (name, bad) in cases {
        let refused = client.grant(&bad).await.expect("answered").expect_err(name);
        assert_eq!(refused.name(), name, "{refused}");
    }
    assert_eq!(client.grant(&signed_grant()).await, Ok(Ok(())));
    let stateful = [
        (
            "granted_by_another_payer",
            Grant {
                payer: PayerKey(other_payer.verifying_key().to_bytes()),
                ..grant()
            }
            .sign(&other_payer),
        ),
        (
            "already_granted",
            Grant {
                nonce: 2,
                ..grant()
            }
            .sign(&payer_key),
        ),
    ];
    for (name, bad) in stateful {
        let refused = client.grant(&bad).await.expect("answered").expect_err(name);
        assert_eq!(refused.name(), name, "{refused}");
    }
    let foreign_revocation = Revocation {
        domain: domain(),
        payer: PayerKey(other_payer.verifying_key().to_bytes()),
        session: session_key(),
        revoked_at_ms: now_ms(),
    }
    .sign(&other_payer);
    let refused = client
        .revoke(&foreign_revocation)
        .await
        .expect("answered")
        .expect_err("not the granter");
    assert_eq!(refused.name(), "not_the_granter");
    // A record that does not parse is the request's `malformed`, not a protocol error.
    let mut raw = handshake(h.addr, 2, 1).await;
    let mut garbage = Registration::grant(9, &signed_grant());
    if let Frame::Grant(registration) = &mut garbage {
        let mut record = registration.record.to_vec();
        record[141] = 1;
        registration.record = record.into();
    }
    raw.send(&garbage).await.expect("send");
    match raw.next().await {
        Some(Ok(Frame::GrantResult(GrantResult {
            request_id: 9,
            outcome: Err(refusal),
        }))) => assert_eq!(refusal.name(), "malformed"),
        other => panic!("expected GRANT_RESULT malformed, got {other:?}"),
    }
    // The first grant stands, and both connections still work.
    assert_eq!(
        verdicts(&client, vec![session_receipt(1, PAYEE)]).await,
        vec![Ok(())]
    );
    raw.send(&Frame::Ping(Ping { nonce: 3 }))
        .await
        .expect("send");
    assert!(matches!(
        raw.next().await,
        Some(Ok(Frame::Pong(Ping { nonce: 3 })))
    ));
    client.close().await.expect("close");
    h.stop().await;
}

/// A client that sends a GRANT and, without waiting for its answer, a SUBMIT of the session's
/// receipts on the same connection has them judged under the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_right_behind_a_grant_is_judged_under_it() {
    let h = start(|_| {}).await;
    let mut raw = handshake(h.addr, 1, 1).await;
    raw.feed(&Registration::grant(1, &signed_grant()))
        .await
        .expect("feed");
    let receipts = ReceiptBatch::from_receipts(&[session_receipt(1, PAYEE)]);
    raw.feed(&Frame::Submit(Submit {
        batch_seq: 1,
        receipts,
    }))
    .await
    .expect("feed");
    SinkExt::<&Frame>::flush(&mut raw).await.expect("flush");
    match raw.next().await {
        Some(Ok(Frame::GrantResult(GrantResult {
            request_id: 1,
            outcome: Ok(()),
        }))) => {}
        other => panic!("expected GRANT_RESULT ok, got {other:?}"),
    }
    let ack = next_ack(&mut raw).await;
    assert_eq!((ack.accepted, ack.rejections), (1, vec![]));
    h.stop().await;
}

/// A grant and a revocation are on disk once answered: a restarted server still charges the
/// session to its payer, within what it already spent, and still refuses a revoked session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_and_revocations_survive_a_restart() {
    let h = start(|_| {}).await;
    let client = Client::connect(client_config(h.addr, 1))
        .await
        .expect("connect");
    assert_eq!(client.grant(&signed_grant()).await, Ok(Ok(())));
    assert_eq!(
        verdicts(&client, vec![session_receipt(1, PAYEE)]).await,
        vec![Ok(())]
    );
    let revoked_seed = [22; 32];
    let revoked_key = SigningKey::from_bytes(&revoked_seed);
    let revoked = PayerKey(revoked_key.verifying_key().to_bytes());
    let payer_key = SigningKey::from_bytes(&PAYER_SEED);
    let second = Grant {
        session: revoked,
        ..grant()
    }
    .sign(&payer_key);
    assert_eq!(client.grant(&second).await, Ok(Ok(())));
    assert_eq!(client.revoke(&revocation(revoked)).await, Ok(Ok(())));
    client.close().await.expect("close");

    let h = h.restart().await;
    let client = Client::connect(client_config(h.addr, 1))
        .await
        .expect("connect");
    let revoked_receipt = UnsignedReceipt {
        payer: revoked,
        ..session_receipt(1, PAYEE).unsigned()
    }
    .sign(&revoked_key, &domain());
    assert_eq!(
        verdicts(
            &client,
            vec![
                session_receipt(2, PAYEE),
                session_receipt(3, PAYEE),
                revoked_receipt
            ]
        )
        .await,
        vec![Ok(()), Err(Reason::OverGrantCap), Err(Reason::GrantRevoked)]
    );
    assert_eq!(pending(&h), 20);
    client.close().await.expect("close");
    h.stop().await;
}

/// A cluster that refuses every batch once `together` batches were handed to it, as
/// `serve --cluster` does when a partition's owner cannot be reached within the verdict timeout
/// (a NATS server down). The seam (`ClusterLedger`) is the only part not real here: what is
/// tested is the server's connection closing, which is the same whoever refuses.
#[derive(Debug)]
struct RefusingCluster {
    together: usize,
    handed: Arc<std::sync::atomic::AtomicUsize>,
}

impl ClusterLedger for RefusingCluster {
    fn submit(&self, _: SubmitRequest) -> BoxFuture<'static, Result<BatchAck, ErrorFrame>> {
        use std::sync::atomic::Ordering;
        self.handed.fetch_add(1, Ordering::SeqCst);
        let (handed, together) = (Arc::clone(&self.handed), self.together);
        Box::pin(async move {
            // Every refusal comes with all the batches in flight: the close then has more
            // answers to wait for than the one that started it.
            while handed.load(Ordering::SeqCst) < together {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(ErrorFrame::new(ErrorCode::Internal, "no verdicts in time"))
        })
    }

    fn balance(&self, _: QueryBalance) -> BoxFuture<'static, Result<Balance, ErrorFrame>> {
        Box::pin(async { Err(ErrorFrame::new(ErrorCode::PartitionNotOwned, "no owner")) })
    }
}

/// Several batches in flight, all refused: the connection is told the first refusal, closes once
/// every batch it read is answered, and the server then stops at once. (The close used to stop
/// counting answers after the second refusal, so it waited forever for answers already
/// received: the client heard nothing, and the server's shutdown waited out its grace.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_batches_are_all_refused_closes_and_the_server_stops() {
    let listener = bind(([127, 0, 0, 1], 0).into()).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut config = ServerConfig::new(domain());
    config.shutdown_grace_ms = 10_000;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(run(
        listener,
        config,
        Ledger::Cluster(Arc::new(RefusingCluster {
            together: 4,
            handed: Arc::default(),
        })),
        shutdown.clone(),
    ));
    let mut raw = handshake(addr, 1, 1).await;
    for seq in 1..=4u64 {
        raw.feed(&Frame::Submit(Submit {
            batch_seq: seq,
            receipts: ReceiptBatch::from_receipts(&[receipt(100 + seq, PAYEE)]),
        }))
        .await
        .expect("feed");
    }
    SinkExt::<&Frame>::flush(&mut raw).await.expect("flush");
    assert_eq!(error_code(&mut raw).await, Some(ErrorCode::Internal));
    match tokio::time::timeout(Duration::from_secs(5), raw.next()).await {
        Ok(None | Some(Err(_))) => {}
        other => panic!("the server must close after the ERROR, got {other:?}"),
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops without waiting out its grace")
        .expect("join")
        .expect("clean shutdown");
}
