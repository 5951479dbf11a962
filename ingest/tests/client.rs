//! The client library against a scripted peer that speaks the wire protocol: batching by size and
//! by linger time, verdict routing, pipelining, reconnect with re-send under the original
//! sequence numbers, refusals, balance queries and close. (The real server is exercised with
//! this client in `server.rs`.)

use std::time::Duration;

use ed25519_dalek::SigningKey;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tollgate_engine::{Address, Domain, PayerKey, Reason, Receipt, UnsignedReceipt};
use tollgate_ingest::client::{Client, ClientConfig, ClientError};
use tollgate_ingest::wire::{
    Ack, Balance, Challenge, ErrorCode, ErrorFrame, Frame, FrameCodec, HelloOk, Submit,
};

fn domain() -> Domain {
    Domain {
        chain_id: 31_337,
        contract: Address([0x33; 20]),
    }
}

fn receipt(nonce: u64, amount: u64) -> Receipt {
    let key = SigningKey::from_bytes(&[9; 32]);
    UnsignedReceipt {
        payer: PayerKey(key.verifying_key().to_bytes()),
        payee: Address([0x11; 20]),
        amount,
        nonce,
        timestamp_ms: 1,
        request_hash: [0; 32],
        session: false,
    }
    .sign(&key, &domain())
}

/// One side of a connection to the client under test.
struct Peer {
    framed: Framed<TcpStream, FrameCodec>,
}

const LIMITS: HelloOk = HelloOk {
    frame_bytes_max: 1 << 20,
    batch_receipts_max: 4096,
    batches_in_flight_max: 4,
    idle_timeout_ms: 60_000,
};

impl Peer {
    /// Accepts one connection and completes the handshake, checking the client's signature.
    async fn accept(listener: &TcpListener, limits: HelloOk) -> Peer {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut framed = Framed::new(stream, FrameCodec::default());
        let challenge = Challenge::random();
        framed
            .send(&Frame::Challenge(challenge))
            .await
            .expect("send");
        let Some(Ok(Frame::Hello(hello))) = framed.next().await else {
            panic!("expected HELLO");
        };
        hello
            .verify(&challenge)
            .expect("HELLO is signed over the challenge");
        assert_eq!(hello.domain, domain());
        framed.send(&Frame::HelloOk(limits)).await.expect("send");
        Peer { framed }
    }

    async fn submit(&mut self) -> Submit {
        loop {
            match self.framed.next().await {
                Some(Ok(Frame::Submit(submit))) => return submit,
                Some(Ok(Frame::Ping(ping))) => {
                    self.framed.send(&Frame::Pong(ping)).await.expect("pong");
                }
                other => panic!("expected SUBMIT, got {other:?}"),
            }
        }
    }

    /// Acks a batch, rejecting receipts with amount 0 as `insufficient_funds`.
    async fn ack(&mut self, submit: &Submit) {
        let rejections: Vec<(u32, Reason)> = submit
            .receipts
            .iter()
            .enumerate()
            .filter(|(_, r)| r.as_ref().expect("valid").amount() == 0)
            .map(|(i, _)| (i as u32, Reason::InsufficientFunds))
            .collect();
        let ack = Ack {
            batch_seq: submit.batch_seq,
            accepted: (submit.receipts.len() - rejections.len()) as u32,
            rejections,
        };
        self.framed.send(&Frame::Ack(ack)).await.expect("send ACK");
    }
}

fn config(addr: std::net::SocketAddr) -> ClientConfig {
    let mut config = ClientConfig::new(
        addr.to_string(),
        42,
        SigningKey::from_bytes(&[3; 32]),
        7,
        domain(),
    );
    config.reconnect_backoff_ms_min = 10;
    config.reconnect_backoff_ms_max = 50;
    config
}

async fn listener() -> (TcpListener, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

#[tokio::test]
async fn batches_fill_by_size_then_by_linger_and_verdicts_reach_each_receipt() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener, LIMITS).await;
        let mut sizes = Vec::new();
        for _ in 0..3 {
            let submit = peer.submit().await;
            sizes.push((submit.batch_seq, submit.receipts.len()));
            peer.ack(&submit).await;
        }
        sizes
    });
    let mut config = config(addr);
    config.batch_receipts_max = 2;
    config.batch_linger_ms = 20;
    let client = Client::connect(config).await.expect("connect");
    let mut verdicts = Vec::new();
    for nonce in 0..5u64 {
        let amount = if nonce == 3 { 0 } else { 10 };
        verdicts.push(client.submit(receipt(nonce, amount)).await.expect("queued"));
    }
    let mut answers = Vec::new();
    for verdict in verdicts {
        answers.push(verdict.await.expect("verdict"));
    }
    assert_eq!(
        answers,
        vec![
            Ok(()),
            Ok(()),
            Ok(()),
            Err(Reason::InsufficientFunds),
            Ok(())
        ]
    );
    // Two full batches, then the fifth receipt alone once it had lingered.
    assert_eq!(server.await.expect("server"), vec![(1, 2), (2, 2), (3, 1)]);
    let stats = client.close().await.expect("close");
    assert_eq!(
        (
            stats.receipts_submitted,
            stats.receipts_accepted,
            stats.receipts_rejected
        ),
        (5, 4, 1)
    );
    assert_eq!((stats.batches_sent, stats.batches_acked), (3, 3));
}

#[tokio::test]
async fn submit_batch_splits_at_the_limit_and_answers_in_input_order() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(
            &listener,
            HelloOk {
                batch_receipts_max: 3,
                ..LIMITS
            },
        )
        .await;
        let first = peer.submit().await;
        let second = peer.submit().await;
        // Out of order on purpose: ACKs name their batch.
        peer.ack(&second).await;
        peer.ack(&first).await;
        (first.receipts.len(), second.receipts.len())
    });
    let client = Client::connect(config(addr)).await.expect("connect");
    let receipts: Vec<Receipt> = (0..5).map(|n| receipt(n, n % 2)).collect();
    let verdicts = client
        .submit_batch(receipts)
        .await
        .expect("queued")
        .await
        .expect("verdicts");
    let expected: Vec<_> = (0..5)
        .map(|n| {
            if n % 2 == 0 {
                Err(Reason::InsufficientFunds)
            } else {
                Ok(())
            }
        })
        .collect();
    assert_eq!(verdicts, expected);
    // The server's limit of 3 beats the client's default of 1024.
    assert_eq!(server.await.expect("server"), (3, 2));
}

#[tokio::test]
async fn reconnect_resends_unacked_batches_under_their_original_numbers() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener, LIMITS).await;
        let one = first.submit().await;
        let two = first.submit().await;
        first.ack(&one).await;
        // The connection dies with batch 2 unacknowledged.
        drop(first);
        let mut second = Peer::accept(&listener, LIMITS).await;
        let again = second.submit().await;
        second.ack(&again).await;
        (two, again)
    });
    let client = Client::connect(config(addr)).await.expect("connect");
    let one = client
        .submit_batch(vec![receipt(1, 5)])
        .await
        .expect("queued");
    let two = client
        .submit_batch(vec![receipt(2, 0), receipt(3, 5)])
        .await
        .expect("queued");
    assert_eq!(one.await.expect("verdicts"), vec![Ok(())]);
    assert_eq!(
        two.await.expect("verdicts after reconnect"),
        vec![Err(Reason::InsufficientFunds), Ok(())]
    );
    let (sent, resent) = server.await.expect("server");
    assert_eq!(resent.batch_seq, 2);
    assert_eq!(resent, sent, "the same batch, byte for byte");
    let stats = client.stats();
    assert_eq!((stats.reconnects, stats.batches_resent), (1, 1));
}

#[tokio::test]
async fn refused_handshake_is_a_typed_error_at_connect() {
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut framed = Framed::new(stream, FrameCodec::default());
        framed
            .send(&Frame::Challenge(Challenge::random()))
            .await
            .expect("send");
        let _hello = framed.next().await;
        framed
            .send(&Frame::Error(ErrorFrame::new(
                ErrorCode::WrongChain,
                "not ours",
            )))
            .await
            .expect("send");
    });
    let error = Client::connect(config(addr)).await.expect_err("refused");
    assert_eq!(error.code(), Some(ErrorCode::WrongChain));
}

#[tokio::test]
async fn unreachable_server_is_a_typed_error_at_connect() {
    let (listener, addr) = listener().await;
    drop(listener);
    let error = Client::connect(config(addr))
        .await
        .expect_err("nobody there");
    assert!(matches!(error, ClientError::Connect { .. }), "{error}");
}

#[tokio::test]
async fn giving_up_on_reconnect_fails_waiting_receipts_with_disconnected() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener, LIMITS).await;
        let _ = peer.submit().await;
        // Close the connection and stop listening: every reconnect fails.
    });
    let mut config = config(addr);
    config.reconnect_attempts_max = 3;
    let client = Client::connect(config).await.expect("connect");
    let verdict = client
        .submit_batch(vec![receipt(1, 1)])
        .await
        .expect("queued");
    server.await.expect("server");
    let error = tokio::time::timeout(Duration::from_secs(10), verdict)
        .await
        .expect("gives up in bounded time")
        .expect_err("no verdict");
    assert!(
        matches!(error, ClientError::Disconnected { attempts: 3, .. }),
        "{error}"
    );
    assert_eq!(
        client.submit(receipt(2, 1)).await.err(),
        Some(ClientError::Closed)
    );
}

#[tokio::test]
async fn balance_query_is_matched_by_request_id() {
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        let mut peer = Peer::accept(&listener, LIMITS).await;
        while let Some(Ok(frame)) = peer.framed.next().await {
            if let Frame::QueryBalance(query) = frame {
                let balance = Balance {
                    request_id: query.request_id,
                    payer: query.payer,
                    net_deposited: u128::MAX,
                    settled: 1,
                    pending: 2,
                    available: 3,
                    receipts: 4,
                    channels: 5,
                };
                peer.framed
                    .send(&Frame::Balance(balance))
                    .await
                    .expect("send");
            }
        }
    });
    let client = Client::connect(config(addr)).await.expect("connect");
    let balance = client.balance(PayerKey([8; 32])).await.expect("balance");
    assert_eq!(
        (
            balance.payer,
            balance.net_deposited,
            balance.available,
            balance.channels
        ),
        (PayerKey([8; 32]), u128::MAX, 3, 5)
    );
}

#[tokio::test]
async fn empty_batch_is_answered_without_a_round_trip() {
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        let mut peer = Peer::accept(&listener, LIMITS).await;
        let _ = peer.framed.next().await;
    });
    let client = Client::connect(config(addr)).await.expect("connect");
    let verdicts = client.submit_batch(Vec::new()).await.expect("queued").await;
    assert_eq!(verdicts, Ok(Vec::new()));
}
