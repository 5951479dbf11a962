//! Wire protocol v1: every frame's byte layout, its encoder and its decoder side by side, and the
//! `tokio_util` codec on top. `docs/PROTOCOL.md` is the same specification in prose; the tests in
//! `ingest/tests/` keep the two from drifting.
//!
//! A frame is a 24-byte header followed by a body:
//!
//! | offset | size | field |
//! | ---: | ---: | --- |
//! | 0 | 4 | magic `TOLL` |
//! | 4 | 1 | protocol version, 1 |
//! | 5 | 1 | frame type ([`FrameType`]) |
//! | 6 | 2 | flags (u16), none defined in v1: must be zero |
//! | 8 | 8 | body length in bytes (u64) |
//! | 16 | 4 | crc32c of the body (u32) |
//! | 20 | 4 | reserved, must be zero |
//!
//! All integers are little-endian. The decoder looks at the header before it buffers a body, so a
//! frame longer than the connection's `frame_bytes_max` is refused before a byte of it is
//! allocated; the body length is a u64 so that no length a peer can write wraps around. A buffer
//! that holds only part of a frame is [`Decoded::Incomplete`], never an error: only bytes that can
//! never become a valid frame are a [`WireError`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use thiserror::Error;
use tollgate_engine::grant::{
    GRANT_BYTES, GrantError, REVOCATION_BYTES, SignedGrant, SignedRevocation,
};
use tollgate_engine::receipt::RECEIPT_BYTES;
use tollgate_engine::{Address, Domain, PayerKey, Reason, ReceiptBatch};

/// The four bytes that open every frame.
pub const MAGIC: [u8; 4] = *b"TOLL";
/// The protocol version this module speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Size of the frame header.
pub const HEADER_BYTES: usize = 24;
/// Default (and recommended) maximum size of one frame, header included: room for a SUBMIT of
/// 4096 receipts with margin. Servers announce their own limit in HELLO_OK.
pub const FRAME_BYTES_MAX: u32 = 1 << 20;
/// Longest ERROR text the encoder writes; longer texts are cut at a character boundary.
pub const ERROR_TEXT_BYTES_MAX: usize = 1024;
/// The string that opens the bytes a client signs in HELLO.
pub const HELLO_AUTH_TAG: &[u8; 17] = b"tollgate-hello-v1";

const MAGIC_AT: std::ops::Range<usize> = 0..4;
const VERSION_AT: usize = 4;
const TYPE_AT: usize = 5;
const FLAGS_AT: std::ops::Range<usize> = 6..8;
const BODY_LEN_AT: std::ops::Range<usize> = 8..16;
const BODY_CRC_AT: std::ops::Range<usize> = 16..20;
const RESERVED_AT: std::ops::Range<usize> = 20..24;
const _: () = assert!(RESERVED_AT.end == HEADER_BYTES);
// Frame sizes are bounded by a u32 limit and indexed as usize.
const _: () = assert!(usize::BITS >= 32);

/// What a frame is. The discriminant is the wire code, never renumbered.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum FrameType {
    /// server → client, first frame on every connection: 32 random bytes to sign.
    Challenge = 1,
    /// client → server: who the client is, its session, the deployment it expects, its signature.
    Hello = 2,
    /// server → client: the handshake succeeded; the server's limits.
    HelloOk = 3,
    /// client → server: one numbered batch of receipts.
    Submit = 4,
    /// server → client: the verdicts for one batch, after they are durable.
    Ack = 5,
    /// client → server: ask for a payer's balance.
    QueryBalance = 6,
    /// server → client: the answer to one QUERY_BALANCE.
    Balance = 7,
    /// either way: are you there?
    Ping = 8,
    /// either way: the answer to one PING.
    Pong = 9,
    /// server → client: a protocol error; the server closes the connection after it.
    Error = 10,
    /// client → server: register a payer's signed grant of a session key.
    Grant = 11,
    /// client → server: register a payer's signed revocation of a session key.
    Revoke = 12,
    /// server → client: the answer to one GRANT or REVOKE, after it is durable.
    GrantResult = 13,
}

impl FrameType {
    /// Every frame type, in code order.
    pub const ALL: [FrameType; 13] = [
        FrameType::Challenge,
        FrameType::Hello,
        FrameType::HelloOk,
        FrameType::Submit,
        FrameType::Ack,
        FrameType::QueryBalance,
        FrameType::Balance,
        FrameType::Ping,
        FrameType::Pong,
        FrameType::Error,
        FrameType::Grant,
        FrameType::Revoke,
        FrameType::GrantResult,
    ];

    /// The wire code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The frame type for a wire code, if the code is known.
    pub fn from_code(code: u8) -> Option<FrameType> {
        FrameType::ALL.into_iter().find(|t| t.code() == code)
    }

    /// The name used in PROTOCOL.md and in logs.
    pub fn name(self) -> &'static str {
        match self {
            FrameType::Challenge => "CHALLENGE",
            FrameType::Hello => "HELLO",
            FrameType::HelloOk => "HELLO_OK",
            FrameType::Submit => "SUBMIT",
            FrameType::Ack => "ACK",
            FrameType::QueryBalance => "QUERY_BALANCE",
            FrameType::Balance => "BALANCE",
            FrameType::Ping => "PING",
            FrameType::Pong => "PONG",
            FrameType::Error => "ERROR",
            FrameType::Grant => "GRANT",
            FrameType::Revoke => "REVOKE",
            FrameType::GrantResult => "GRANT_RESULT",
        }
    }
}

impl std::fmt::Display for FrameType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the server refused a connection or a frame. Sent in ERROR frames; the discriminant is the
/// wire code. A code is never renumbered nor reused; new codes take a free number.
#[repr(u16)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ErrorCode {
    /// The frame does not start with the magic `TOLL`.
    BadMagic = 1,
    /// The version byte names a protocol version this server does not speak.
    UnsupportedVersion = 2,
    /// The frame type byte is not a known frame type.
    UnknownFrameType = 3,
    /// A flag bit is set; v1 defines none.
    UnknownFlags = 4,
    /// Reserved bytes (in the header or a body) are not zero.
    ReservedNotZero = 5,
    /// The body's crc32c does not match the header.
    ChecksumMismatch = 6,
    /// The frame is longer than the connection's maximum frame size.
    FrameTooLarge = 7,
    /// The stream ended, or went silent past the read deadline, in the middle of a frame.
    TruncatedFrame = 8,
    /// The body length is wrong for the frame type.
    BadBodyLength = 9,
    /// A SUBMIT body is not a whole number of 176-byte receipts.
    BatchNotWholeReceipts = 10,
    /// A SUBMIT holds no receipt.
    EmptyBatch = 11,
    /// A body breaks a rule of its layout (text not UTF-8, unknown reason code, unsorted indices).
    MalformedBody = 12,
    /// A valid frame at the wrong time: SUBMIT before HELLO, a second HELLO, a server-only frame.
    UnexpectedFrame = 20,
    /// HELLO names a chain id other than the server's.
    WrongChain = 21,
    /// HELLO names a settlement contract other than the server's.
    WrongContract = 22,
    /// HELLO names a client id the server is not configured with.
    UnknownClient = 23,
    /// The HELLO signature does not verify, or the key is not the client's configured key.
    BadClientAuth = 24,
    /// The producer has already used a newer session epoch: this session is fenced off.
    ProducerFenced = 25,
    /// A SUBMIT reuses the (producer, session epoch, batch sequence) of an acknowledged batch with
    /// other receipts: it is not a re-send, and nothing of it was applied.
    BatchMismatch = 26,
    /// A cluster node was asked for a payer balance of a partition that has no owner right now
    /// (its owner died and its lease has not moved yet) or whose new owner is still replaying
    /// its log: ask again shortly.
    PartitionNotOwned = 27,
    /// A request a cluster node cannot serve yet (GRANT, REVOKE: grants do not travel through
    /// the cluster's log); a standalone server serves it.
    NotInCluster = 28,
    /// No HELLO arrived within the handshake timeout.
    HandshakeTimeout = 40,
    /// The connection was silent for longer than the idle timeout.
    IdleTimeout = 41,
    /// A frame was started but not finished within the per-frame read deadline.
    ReadDeadline = 42,
    /// The server is at its connection limit.
    TooManyConnections = 43,
    /// A SUBMIT arrived while the connection already had its maximum of batches in flight.
    TooManyBatchesInFlight = 44,
    /// A SUBMIT holds more receipts than the server's per-batch maximum.
    BatchTooLarge = 45,
    /// The server is shutting down; reconnect later.
    ShuttingDown = 60,
    /// The server failed in a way that is not the client's fault.
    Internal = 61,
}

impl ErrorCode {
    /// Every code, in code order.
    pub const ALL: [ErrorCode; 29] = [
        ErrorCode::BadMagic,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownFrameType,
        ErrorCode::UnknownFlags,
        ErrorCode::ReservedNotZero,
        ErrorCode::ChecksumMismatch,
        ErrorCode::FrameTooLarge,
        ErrorCode::TruncatedFrame,
        ErrorCode::BadBodyLength,
        ErrorCode::BatchNotWholeReceipts,
        ErrorCode::EmptyBatch,
        ErrorCode::MalformedBody,
        ErrorCode::UnexpectedFrame,
        ErrorCode::WrongChain,
        ErrorCode::WrongContract,
        ErrorCode::UnknownClient,
        ErrorCode::BadClientAuth,
        ErrorCode::ProducerFenced,
        ErrorCode::BatchMismatch,
        ErrorCode::PartitionNotOwned,
        ErrorCode::NotInCluster,
        ErrorCode::HandshakeTimeout,
        ErrorCode::IdleTimeout,
        ErrorCode::ReadDeadline,
        ErrorCode::TooManyConnections,
        ErrorCode::TooManyBatchesInFlight,
        ErrorCode::BatchTooLarge,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
    ];

    /// The stable wire code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The error code for a wire code, if the code is known.
    pub fn from_code(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// A stable snake_case name for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadMagic => "bad_magic",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownFrameType => "unknown_frame_type",
            ErrorCode::UnknownFlags => "unknown_flags",
            ErrorCode::ReservedNotZero => "reserved_not_zero",
            ErrorCode::ChecksumMismatch => "checksum_mismatch",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::TruncatedFrame => "truncated_frame",
            ErrorCode::BadBodyLength => "bad_body_length",
            ErrorCode::BatchNotWholeReceipts => "batch_not_whole_receipts",
            ErrorCode::EmptyBatch => "empty_batch",
            ErrorCode::MalformedBody => "malformed_body",
            ErrorCode::UnexpectedFrame => "unexpected_frame",
            ErrorCode::WrongChain => "wrong_chain",
            ErrorCode::WrongContract => "wrong_contract",
            ErrorCode::UnknownClient => "unknown_client",
            ErrorCode::BadClientAuth => "bad_client_auth",
            ErrorCode::ProducerFenced => "producer_fenced",
            ErrorCode::BatchMismatch => "batch_mismatch",
            ErrorCode::PartitionNotOwned => "partition_not_owned",
            ErrorCode::NotInCluster => "not_in_cluster",
            ErrorCode::HandshakeTimeout => "handshake_timeout",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::ReadDeadline => "read_deadline",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::TooManyBatchesInFlight => "too_many_batches_in_flight",
            ErrorCode::BatchTooLarge => "batch_too_large",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

/// Bytes that can never become a valid frame. Each variant maps to one [`ErrorCode`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The first bytes are not [`MAGIC`].
    #[error("bad magic: the stream does not start a Tollgate frame")]
    BadMagic,
    /// The version byte is not [`PROTOCOL_VERSION`].
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The frame type byte is not a [`FrameType`].
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// A flag bit is set.
    #[error("unknown flags {0:#06x}")]
    UnknownFlags(u16),
    /// Reserved bytes are not zero.
    #[error("reserved bytes are not zero in {0}")]
    ReservedNotZero(&'static str),
    /// The header's body length makes the frame longer than allowed.
    #[error("frame of {frame_bytes} bytes is over the maximum of {frame_bytes_max}")]
    FrameTooLarge {
        /// header plus announced body length, saturating
        frame_bytes: u64,
        /// the limit in force
        frame_bytes_max: u32,
    },
    /// The body's crc32c does not match the header.
    #[error("body checksum mismatch: header says {expected:#010x}, body is {computed:#010x}")]
    ChecksumMismatch {
        /// crc32c from the header
        expected: u32,
        /// crc32c of the body received
        computed: u32,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended {buffered_bytes} bytes into a frame")]
    Truncated {
        /// bytes of the unfinished frame that had arrived
        buffered_bytes: usize,
    },
    /// The body length does not fit the frame type's layout.
    #[error("a {frame_type} body cannot be {body_bytes} bytes")]
    BodyLength {
        /// the frame being decoded
        frame_type: FrameType,
        /// its body length
        body_bytes: usize,
    },
    /// A SUBMIT's receipts are not a whole number of records.
    #[error(
        "{receipt_bytes} bytes of receipts is not a whole number of {RECEIPT_BYTES}-byte records"
    )]
    BatchNotWholeReceipts {
        /// body length minus the batch sequence number
        receipt_bytes: usize,
    },
    /// A SUBMIT with no receipt in it.
    #[error("a SUBMIT must carry at least one receipt")]
    EmptyBatch,
    /// A body breaks a rule of its layout.
    #[error("malformed {frame_type} body: {detail}")]
    MalformedBody {
        /// the frame being decoded
        frame_type: FrameType,
        /// which rule
        detail: &'static str,
    },
}

impl WireError {
    /// The code an ERROR frame carries for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::BadMagic => ErrorCode::BadMagic,
            WireError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            WireError::UnknownFrameType(_) => ErrorCode::UnknownFrameType,
            WireError::UnknownFlags(_) => ErrorCode::UnknownFlags,
            WireError::ReservedNotZero(_) => ErrorCode::ReservedNotZero,
            WireError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            WireError::ChecksumMismatch { .. } => ErrorCode::ChecksumMismatch,
            WireError::Truncated { .. } => ErrorCode::TruncatedFrame,
            WireError::BodyLength { .. } => ErrorCode::BadBodyLength,
            WireError::BatchNotWholeReceipts { .. } => ErrorCode::BatchNotWholeReceipts,
            WireError::EmptyBatch => ErrorCode::EmptyBatch,
            WireError::MalformedBody { .. } => ErrorCode::MalformedBody,
        }
    }
}

/// A parsed header whose every field has been checked.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FrameHeader {
    /// What the body is.
    pub frame_type: FrameType,
    /// Body length in bytes; header plus body is within the limit it was checked against.
    pub body_bytes: u32,
    /// crc32c of the body.
    pub body_crc32c: u32,
}

impl FrameHeader {
    /// The frame type a buffered prefix names, once its type byte has arrived and is a known
    /// type; for telling a peer which frame it sent when the header was refused.
    pub fn peek_type(prefix: &[u8]) -> Option<FrameType> {
        prefix
            .get(TYPE_AT)
            .and_then(|&code| FrameType::from_code(code))
    }

    /// Checks as much of a header as `prefix` holds, field by field in wire order, so garbage is
    /// refused as soon as its first bytes arrive rather than when 24 of them have. `Ok(None)`
    /// means every byte so far is plausible but the header is not complete.
    pub fn check(prefix: &[u8], frame_bytes_max: u32) -> Result<Option<FrameHeader>, WireError> {
        let seen = prefix.len().min(MAGIC.len());
        if prefix[..seen] != MAGIC[..seen] {
            return Err(WireError::BadMagic);
        }
        if let Some(&version) = prefix.get(VERSION_AT)
            && version != PROTOCOL_VERSION
        {
            return Err(WireError::UnsupportedVersion(version));
        }
        let frame_type = match prefix.get(TYPE_AT) {
            Some(&code) => FrameType::from_code(code).ok_or(WireError::UnknownFrameType(code))?,
            None => return Ok(None),
        };
        let Some(header) = prefix.get(..HEADER_BYTES) else {
            return Ok(None);
        };
        let flags = u16::from_le_bytes([header[FLAGS_AT.start], header[FLAGS_AT.start + 1]]);
        if flags != 0 {
            return Err(WireError::UnknownFlags(flags));
        }
        if header[RESERVED_AT].iter().any(|&b| b != 0) {
            return Err(WireError::ReservedNotZero("frame header"));
        }
        let body_len = le_u64(&header[BODY_LEN_AT]);
        let frame_bytes = body_len.saturating_add(HEADER_BYTES as u64);
        if frame_bytes > u64::from(frame_bytes_max) {
            return Err(WireError::FrameTooLarge {
                frame_bytes,
                frame_bytes_max,
            });
        }
        Ok(Some(FrameHeader {
            frame_type,
            // Fits: the frame is at most `frame_bytes_max`, a u32.
            body_bytes: body_len as u32,
            body_crc32c: le_u32(&header[BODY_CRC_AT]),
        }))
    }

    /// Header plus body.
    pub fn frame_bytes(&self) -> usize {
        HEADER_BYTES + self.body_bytes as usize
    }

    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[MAGIC_AT].copy_from_slice(&MAGIC);
        out[VERSION_AT] = PROTOCOL_VERSION;
        out[TYPE_AT] = self.frame_type.code();
        out[BODY_LEN_AT].copy_from_slice(&u64::from(self.body_bytes).to_le_bytes());
        out[BODY_CRC_AT].copy_from_slice(&self.body_crc32c.to_le_bytes());
        out
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// See [`Challenge`].
    Challenge(Challenge),
    /// See [`Hello`].
    Hello(Hello),
    /// See [`HelloOk`].
    HelloOk(HelloOk),
    /// See [`Submit`].
    Submit(Submit),
    /// See [`Ack`].
    Ack(Ack),
    /// See [`QueryBalance`].
    QueryBalance(QueryBalance),
    /// See [`Balance`].
    Balance(Balance),
    /// A liveness probe; the peer answers with a PONG carrying the same nonce.
    Ping(Ping),
    /// The answer to a PING.
    Pong(Ping),
    /// See [`ErrorFrame`].
    Error(ErrorFrame),
    /// A grant to register; see [`Registration`].
    Grant(Registration),
    /// A revocation to register; see [`Registration`].
    Revoke(Registration),
    /// See [`GrantResult`].
    GrantResult(GrantResult),
}

/// What the front of a read buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole, valid frame, now removed from the buffer.
    Frame(Frame),
    /// Not enough bytes yet; nothing was removed. `frame_started` is true when some bytes of the
    /// next frame have arrived (what a per-frame read deadline watches).
    Incomplete {
        /// bytes of an unfinished frame are buffered
        frame_started: bool,
    },
}

/// Takes one frame off the front of `buf`. Never allocates more than `frame_bytes_max` for a frame,
/// and only once the header announcing it has been checked.
pub fn decode_frame(buf: &mut BytesMut, frame_bytes_max: u32) -> Result<Decoded, WireError> {
    let Some(header) = FrameHeader::check(buf, frame_bytes_max)? else {
        return Ok(Decoded::Incomplete {
            frame_started: !buf.is_empty(),
        });
    };
    let frame_bytes = header.frame_bytes();
    if buf.len() < frame_bytes {
        buf.reserve(frame_bytes - buf.len());
        return Ok(Decoded::Incomplete {
            frame_started: true,
        });
    }
    let body = buf.split_to(frame_bytes).freeze().slice(HEADER_BYTES..);
    let computed = crc32c::crc32c(&body);
    if computed != header.body_crc32c {
        return Err(WireError::ChecksumMismatch {
            expected: header.body_crc32c,
            computed,
        });
    }
    Frame::decode_body(header.frame_type, body).map(Decoded::Frame)
}

impl Frame {
    /// The type byte this frame is sent with.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Challenge(_) => FrameType::Challenge,
            Frame::Hello(_) => FrameType::Hello,
            Frame::HelloOk(_) => FrameType::HelloOk,
            Frame::Submit(_) => FrameType::Submit,
            Frame::Ack(_) => FrameType::Ack,
            Frame::QueryBalance(_) => FrameType::QueryBalance,
            Frame::Balance(_) => FrameType::Balance,
            Frame::Ping(_) => FrameType::Ping,
            Frame::Pong(_) => FrameType::Pong,
            Frame::Error(_) => FrameType::Error,
            Frame::Grant(_) => FrameType::Grant,
            Frame::Revoke(_) => FrameType::Revoke,
            Frame::GrantResult(_) => FrameType::GrantResult,
        }
    }

    /// Size of the encoded frame, header included.
    pub fn encoded_bytes(&self) -> usize {
        HEADER_BYTES
            + match self {
                Frame::Challenge(_) => Challenge::BODY_BYTES,
                Frame::Hello(_) => Hello::BODY_BYTES,
                Frame::HelloOk(_) => HelloOk::BODY_BYTES,
                Frame::Submit(submit) => submit.body_bytes(),
                Frame::Ack(ack) => ack.body_bytes(),
                Frame::QueryBalance(_) => QueryBalance::BODY_BYTES,
                Frame::Balance(_) => Balance::BODY_BYTES,
                Frame::Ping(_) | Frame::Pong(_) => Ping::BODY_BYTES,
                Frame::Error(error) => error.body_bytes(),
                Frame::Grant(registration) | Frame::Revoke(registration) => {
                    registration.body_bytes()
                }
                Frame::GrantResult(result) => result.body_bytes(),
            }
    }

    /// Appends the encoded frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_bytes());
        let start = dst.len();
        dst.put_bytes(0, HEADER_BYTES);
        match self {
            Frame::Challenge(challenge) => challenge.encode_body(dst),
            Frame::Hello(hello) => hello.encode_body(dst),
            Frame::HelloOk(ok) => ok.encode_body(dst),
            Frame::Submit(submit) => submit.encode_body(dst),
            Frame::Ack(ack) => ack.encode_body(dst),
            Frame::QueryBalance(query) => query.encode_body(dst),
            Frame::Balance(balance) => balance.encode_body(dst),
            Frame::Ping(ping) | Frame::Pong(ping) => ping.encode_body(dst),
            Frame::Error(error) => error.encode_body(dst),
            Frame::Grant(registration) | Frame::Revoke(registration) => {
                registration.encode_body(dst)
            }
            Frame::GrantResult(result) => result.encode_body(dst),
        }
        let body = &dst[start + HEADER_BYTES..];
        let header = FrameHeader {
            frame_type: self.frame_type(),
            // Bodies are bounded by their types (a SUBMIT by its ReceiptBatch, which a sender keeps
            // under frame_bytes_max); saturating keeps an absurd one refusable by the peer.
            body_bytes: u32::try_from(body.len()).unwrap_or(u32::MAX),
            body_crc32c: crc32c::crc32c(body),
        };
        dst[start..start + HEADER_BYTES].copy_from_slice(&header.encode());
    }

    /// The encoded frame in a fresh buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_bytes());
        self.encode(&mut out);
        out.freeze()
    }

    /// Decodes a body whose length and checksum the header has vouched for.
    pub fn decode_body(frame_type: FrameType, body: Bytes) -> Result<Frame, WireError> {
        Ok(match frame_type {
            FrameType::Challenge => Frame::Challenge(Challenge::decode_body(&body)?),
            FrameType::Hello => Frame::Hello(Hello::decode_body(&body)?),
            FrameType::HelloOk => Frame::HelloOk(HelloOk::decode_body(&body)?),
            FrameType::Submit => Frame::Submit(Submit::decode_body(body)?),
            FrameType::Ack => Frame::Ack(Ack::decode_body(&body)?),
            FrameType::QueryBalance => Frame::QueryBalance(QueryBalance::decode_body(&body)?),
            FrameType::Balance => Frame::Balance(Balance::decode_body(&body)?),
            FrameType::Ping => Frame::Ping(Ping::decode_body(FrameType::Ping, &body)?),
            FrameType::Pong => Frame::Pong(Ping::decode_body(FrameType::Pong, &body)?),
            FrameType::Error => Frame::Error(ErrorFrame::decode_body(&body)?),
            FrameType::Grant => Frame::Grant(Registration::decode_body(FrameType::Grant, body)?),
            FrameType::Revoke => Frame::Revoke(Registration::decode_body(FrameType::Revoke, body)?),
            FrameType::GrantResult => Frame::GrantResult(GrantResult::decode_body(&body)?),
        })
    }
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(word)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

/// A body of a fixed size, checked once so the field reads after it cannot run short.
fn fixed(frame_type: FrameType, body: &[u8], body_bytes: usize) -> Result<&[u8], WireError> {
    if body.len() != body_bytes {
        return Err(WireError::BodyLength {
            frame_type,
            body_bytes: body.len(),
        });
    }
    Ok(body)
}

fn zero(reserved: &[u8], place: &'static str) -> Result<(), WireError> {
    if reserved.iter().any(|&b| b != 0) {
        return Err(WireError::ReservedNotZero(place));
    }
    Ok(())
}

fn array<const N: usize>(body: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    body.copy_to_slice(&mut out);
    out
}

/// CHALLENGE body: 32 random bytes the client signs in its HELLO, so a recorded HELLO is useless on
/// another connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Fresh random bytes.
    pub nonce: [u8; 32],
}

impl Challenge {
    /// Body size.
    pub const BODY_BYTES: usize = 32;

    /// A challenge from the operating system's random source.
    pub fn random() -> Challenge {
        use rand::Rng;
        let mut nonce = [0u8; 32];
        rand::rng().fill_bytes(&mut nonce);
        Challenge { nonce }
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_slice(&self.nonce);
    }

    fn decode_body(body: &[u8]) -> Result<Challenge, WireError> {
        let mut body = fixed(FrameType::Challenge, body, Self::BODY_BYTES)?;
        Ok(Challenge {
            nonce: array(&mut body),
        })
    }
}

/// HELLO body: the client's identity and session, the deployment it expects, and its signature
/// over `HELLO_AUTH_TAG ‖ challenge ‖ body[0..88]`.
///
/// | offset | size | field |
/// | ---: | ---: | --- |
/// | 0 | 8 | client id (u64) |
/// | 8 | 8 | producer id (u64) |
/// | 16 | 8 | session epoch (u64) |
/// | 24 | 8 | chain id (u64) |
/// | 32 | 20 | settlement contract |
/// | 52 | 4 | reserved, zero |
/// | 56 | 32 | client ed25519 public key |
/// | 88 | 64 | signature |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The client id the server's configuration knows this client by.
    pub client_id: u64,
    /// The producer whose batch numbers this connection continues.
    pub producer_id: u64,
    /// Bumped by a producer that restarts without its old batch numbers; fences older sessions.
    pub session_epoch: u64,
    /// The deployment the client's receipts are signed for.
    pub domain: Domain,
    /// The client's ed25519 public key.
    pub client_key: [u8; 32],
    /// Signature by the client key over [`Hello::signing_bytes`].
    pub signature: [u8; 64],
}

/// What a HELLO signature is checked against.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum HelloAuthError {
    /// The client key is not a valid ed25519 point encoding.
    #[error("client key is not a valid ed25519 public key")]
    BadKey,
    /// The signature does not verify.
    #[error("HELLO signature does not verify")]
    BadSignature,
}

impl Hello {
    /// Body size.
    pub const BODY_BYTES: usize = 152;
    /// Size of a whole HELLO frame, header included: the most a server reads before HELLO_OK.
    pub const FRAME_BYTES: u32 = (HEADER_BYTES + Self::BODY_BYTES) as u32;
    /// The signed part of the body.
    pub const SIGNED_BODY_BYTES: usize = 88;
    /// Size of the bytes a client signs.
    pub const SIGNING_BYTES: usize = HELLO_AUTH_TAG.len() + 32 + Self::SIGNED_BODY_BYTES;

    /// A HELLO signed by `key` for `challenge`.
    pub fn signed(
        client_id: u64,
        producer_id: u64,
        session_epoch: u64,
        domain: Domain,
        key: &SigningKey,
        challenge: &Challenge,
    ) -> Hello {
        let mut hello = Hello {
            client_id,
            producer_id,
            session_epoch,
            domain,
            client_key: key.verifying_key().to_bytes(),
            signature: [0; 64],
        };
        hello.signature = key.sign(&hello.signing_bytes(challenge)).to_bytes();
        hello
    }

    /// `HELLO_AUTH_TAG ‖ challenge ‖ body[0..88]`.
    pub fn signing_bytes(&self, challenge: &Challenge) -> [u8; Self::SIGNING_BYTES] {
        let mut out = [0u8; Self::SIGNING_BYTES];
        let mut body = BytesMut::with_capacity(Self::BODY_BYTES);
        self.encode_body(&mut body);
        let tag = HELLO_AUTH_TAG.len();
        out[..tag].copy_from_slice(HELLO_AUTH_TAG);
        out[tag..tag + 32].copy_from_slice(&challenge.nonce);
        out[tag + 32..].copy_from_slice(&body[..Self::SIGNED_BODY_BYTES]);
        out
    }

    /// Checks the signature against the key in the HELLO itself (strict RFC 8032: canonical S,
    /// no small-order key). Whether that key is the one configured for the client id is the
    /// server's question.
    pub fn verify(&self, challenge: &Challenge) -> Result<(), HelloAuthError> {
        let key = VerifyingKey::from_bytes(&self.client_key).map_err(|_| HelloAuthError::BadKey)?;
        key.verify_strict(
            &self.signing_bytes(challenge),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| HelloAuthError::BadSignature)
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u64_le(self.client_id);
        dst.put_u64_le(self.producer_id);
        dst.put_u64_le(self.session_epoch);
        dst.put_u64_le(self.domain.chain_id);
        dst.put_slice(&self.domain.contract.0);
        dst.put_bytes(0, 4);
        dst.put_slice(&self.client_key);
        dst.put_slice(&self.signature);
    }

    fn decode_body(body: &[u8]) -> Result<Hello, WireError> {
        let mut body = fixed(FrameType::Hello, body, Self::BODY_BYTES)?;
        let client_id = body.get_u64_le();
        let producer_id = body.get_u64_le();
        let session_epoch = body.get_u64_le();
        let chain_id = body.get_u64_le();
        let contract = Address(array(&mut body));
        zero(&array::<4>(&mut body), "HELLO")?;
        Ok(Hello {
            client_id,
            producer_id,
            session_epoch,
            domain: Domain { chain_id, contract },
            client_key: array(&mut body),
            signature: array(&mut body),
        })
    }
}

/// HELLO_OK body: the limits the server enforces on this connection. A client that stays within
/// them is never refused for size or pace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloOk {
    /// Largest frame the server accepts, header included.
    pub frame_bytes_max: u32,
    /// Most receipts in one SUBMIT.
    pub batch_receipts_max: u32,
    /// Most SUBMITs awaiting their ACK at once on this connection.
    pub batches_in_flight_max: u32,
    /// Silence after which the server closes the connection; send PINGs more often than this.
    pub idle_timeout_ms: u32,
}

impl HelloOk {
    /// Body size.
    pub const BODY_BYTES: usize = 16;

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u32_le(self.frame_bytes_max);
        dst.put_u32_le(self.batch_receipts_max);
        dst.put_u32_le(self.batches_in_flight_max);
        dst.put_u32_le(self.idle_timeout_ms);
    }

    fn decode_body(body: &[u8]) -> Result<HelloOk, WireError> {
        let mut body = fixed(FrameType::HelloOk, body, Self::BODY_BYTES)?;
        Ok(HelloOk {
            frame_bytes_max: body.get_u32_le(),
            batch_receipts_max: body.get_u32_le(),
            batches_in_flight_max: body.get_u32_le(),
            idle_timeout_ms: body.get_u32_le(),
        })
    }
}

/// SUBMIT body: a batch sequence number (u64) then one or more 176-byte receipts back to back.
/// The receipts stay in the frame's buffer: decoding slices it, it never copies records.
#[derive(Clone, Debug)]
pub struct Submit {
    /// The producer's number for this batch; a re-send uses the same number.
    pub batch_seq: u64,
    /// The receipts, in the order their verdicts are indexed.
    pub receipts: ReceiptBatch,
}

impl PartialEq for Submit {
    fn eq(&self, other: &Self) -> bool {
        self.batch_seq == other.batch_seq && self.receipts.as_bytes() == other.receipts.as_bytes()
    }
}
impl Eq for Submit {}

impl Submit {
    /// Size of the fixed part before the receipts.
    pub const PREFIX_BYTES: usize = 8;

    /// Frame size of a SUBMIT carrying `receipts` receipts.
    pub const fn frame_bytes(receipts: usize) -> usize {
        HEADER_BYTES + Self::PREFIX_BYTES + receipts * RECEIPT_BYTES
    }

    fn body_bytes(&self) -> usize {
        Self::PREFIX_BYTES + self.receipts.as_bytes().len()
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u64_le(self.batch_seq);
        dst.put_slice(self.receipts.as_bytes());
    }

    fn decode_body(mut body: Bytes) -> Result<Submit, WireError> {
        if body.len() < Self::PREFIX_BYTES {
            return Err(WireError::BodyLength {
                frame_type: FrameType::Submit,
                body_bytes: body.len(),
            });
        }
        let batch_seq = body.get_u64_le();
        if body.is_empty() {
            return Err(WireError::EmptyBatch);
        }
        let receipts = ReceiptBatch::new(body)
            .map_err(|e| WireError::BatchNotWholeReceipts { receipt_bytes: e.0 })?;
        Ok(Submit {
            batch_seq,
            receipts,
        })
    }
}

/// ACK body: the verdicts of one batch, sent once they are durable.
///
/// | offset | size | field |
/// | ---: | ---: | --- |
/// | 0 | 8 | batch seq (u64) |
/// | 8 | 4 | accepted count (u32) |
/// | 12 | 4 | rejection count R (u32) |
/// | 16 | 8 × R | rejections: index (u32), reason code (u8), 3 reserved zero bytes |
///
/// Rejection indices are strictly increasing and below `accepted + R`, the batch's size.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Ack {
    /// The batch answered.
    pub batch_seq: u64,
    /// How many receipts of the batch were accepted.
    pub accepted: u32,
    /// The index and reason of every receipt that was not, sorted by index.
    pub rejections: Vec<(u32, Reason)>,
}

impl Ack {
    /// Size of the fixed part before the rejections.
    pub const PREFIX_BYTES: usize = 16;
    /// Size of one rejection entry.
    pub const REJECTION_BYTES: usize = 8;

    /// The number of receipts in the batch answered.
    pub fn batch_receipts(&self) -> u64 {
        u64::from(self.accepted) + self.rejections.len() as u64
    }

    fn body_bytes(&self) -> usize {
        Self::PREFIX_BYTES + self.rejections.len() * Self::REJECTION_BYTES
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u64_le(self.batch_seq);
        dst.put_u32_le(self.accepted);
        // A batch has at most FRAME_BYTES_MAX / 176 receipts, far below u32::MAX.
        dst.put_u32_le(u32::try_from(self.rejections.len()).unwrap_or(u32::MAX));
        for &(index, reason) in &self.rejections {
            dst.put_u32_le(index);
            dst.put_u8(reason.code());
            dst.put_bytes(0, 3);
        }
    }

    fn decode_body(body: &[u8]) -> Result<Ack, WireError> {
        let malformed = |detail| WireError::MalformedBody {
            frame_type: FrameType::Ack,
            detail,
        };
        let wrong_length = WireError::BodyLength {
            frame_type: FrameType::Ack,
            body_bytes: body.len(),
        };
        let Some(mut entries) = body.get(Self::PREFIX_BYTES..) else {
            return Err(wrong_length);
        };
        let mut prefix = &body[..Self::PREFIX_BYTES];
        let batch_seq = prefix.get_u64_le();
        let accepted = prefix.get_u32_le();
        let count = prefix.get_u32_le();
        if entries.len() as u64 != u64::from(count) * Self::REJECTION_BYTES as u64 {
            return Err(wrong_length);
        }
        let batch_receipts = u64::from(accepted) + u64::from(count);
        if batch_receipts > u64::from(u32::MAX) {
            return Err(malformed("accepted + rejected overflows u32"));
        }
        // Bounded by the frame: the length check above ties `count` to bytes actually received.
        let mut rejections = Vec::with_capacity(count as usize);
        while entries.has_remaining() {
            let index = entries.get_u32_le();
            let code = entries.get_u8();
            zero(&array::<3>(&mut entries), "ACK rejection")?;
            let reason = Reason::from_code(code).ok_or(malformed("unknown reason code"))?;
            if u64::from(index) >= batch_receipts {
                return Err(malformed("rejection index beyond the batch"));
            }
            if rejections.last().is_some_and(|&(last, _)| last >= index) {
                return Err(malformed("rejection indices not strictly increasing"));
            }
            rejections.push((index, reason));
        }
        Ok(Ack {
            batch_seq,
            accepted,
            rejections,
        })
    }
}

/// QUERY_BALANCE body: request id (u64) then the payer key (32 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryBalance {
    /// Echoed in the BALANCE answer.
    pub request_id: u64,
    /// Whose balance.
    pub payer: PayerKey,
}

impl QueryBalance {
    /// Body size.
    pub const BODY_BYTES: usize = 40;

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u64_le(self.request_id);
        dst.put_slice(&self.payer.0);
    }

    fn decode_body(body: &[u8]) -> Result<QueryBalance, WireError> {
        let mut body = fixed(FrameType::QueryBalance, body, Self::BODY_BYTES)?;
        Ok(QueryBalance {
            request_id: body.get_u64_le(),
            payer: PayerKey(array(&mut body)),
        })
    }
}

/// BALANCE body: a payer's balance as of the durable ledger (amounts u128, smallest unit).
///
/// | offset | size | field |
/// | ---: | ---: | --- |
/// | 0 | 8 | request id (u64) |
/// | 8 | 32 | payer |
/// | 40 | 16 | net deposited (u128) |
/// | 56 | 16 | settled (u128) |
/// | 72 | 16 | pending (u128) |
/// | 88 | 16 | available (u128) |
/// | 104 | 8 | accepted receipts (u64) |
/// | 112 | 8 | channels (u64) |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balance {
    /// The QUERY_BALANCE answered.
    pub request_id: u64,
    /// Whose balance.
    pub payer: PayerKey,
    /// Deposited onchain in all minus the withdrawals completed: what the contract holds for
    /// the payer before settlement (the ledger's and the HTTP API's `deposited` is gross).
    pub net_deposited: u128,
    /// Spent in epochs already committed onchain.
    pub settled: u128,
    /// Spent in receipts accepted but not yet settled.
    pub pending: u128,
    /// net_deposited − settled − pending (and minus withdrawals in progress).
    pub available: u128,
    /// Receipts accepted from this payer.
    pub receipts: u64,
    /// Payees this payer has paid.
    pub channels: u64,
}

impl Balance {
    /// Body size.
    pub const BODY_BYTES: usize = 120;

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u64_le(self.request_id);
        dst.put_slice(&self.payer.0);
        dst.put_u128_le(self.net_deposited);
        dst.put_u128_le(self.settled);
        dst.put_u128_le(self.pending);
        dst.put_u128_le(self.available);
        dst.put_u64_le(self.receipts);
        dst.put_u64_le(self.channels);
    }

    fn decode_body(body: &[u8]) -> Result<Balance, WireError> {
        let mut body = fixed(FrameType::Balance, body, Self::BODY_BYTES)?;
        Ok(Balance {
            request_id: body.get_u64_le(),
            payer: PayerKey(array(&mut body)),
            net_deposited: body.get_u128_le(),
            settled: body.get_u128_le(),
            pending: body.get_u128_le(),
            available: body.get_u128_le(),
            receipts: body.get_u64_le(),
            channels: body.get_u64_le(),
        })
    }
}

/// PING and PONG body: a nonce (u64) the PONG echoes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ping {
    /// Chosen by the pinger.
    pub nonce: u64,
}

impl Ping {
    /// Body size.
    pub const BODY_BYTES: usize = 8;

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u64_le(self.nonce);
    }

    fn decode_body(frame_type: FrameType, body: &[u8]) -> Result<Ping, WireError> {
        let mut body = fixed(frame_type, body, Self::BODY_BYTES)?;
        Ok(Ping {
            nonce: body.get_u64_le(),
        })
    }
}

/// ERROR body: code (u16), 2 reserved zero bytes, then UTF-8 text to the end of the body. The code
/// is kept as a number so a client can report a code newer than itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorFrame {
    /// The wire code; see [`ErrorCode`].
    pub code: u16,
    /// Human-readable detail, at most [`ERROR_TEXT_BYTES_MAX`] bytes.
    pub text: String,
}

impl ErrorFrame {
    /// Size of the fixed part before the text.
    pub const PREFIX_BYTES: usize = 4;

    /// An ERROR with `code` and `text`, cut to [`ERROR_TEXT_BYTES_MAX`] bytes.
    pub fn new(code: ErrorCode, text: impl Into<String>) -> ErrorFrame {
        ErrorFrame {
            code: code.code(),
            text: cut_text(text.into()),
        }
    }

    /// The code, if this build knows it.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_code(self.code)
    }

    fn body_bytes(&self) -> usize {
        Self::PREFIX_BYTES + self.text.len()
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u16_le(self.code);
        dst.put_bytes(0, 2);
        dst.put_slice(self.text.as_bytes());
    }

    fn decode_body(body: &[u8]) -> Result<ErrorFrame, WireError> {
        let Some(text) = body.get(Self::PREFIX_BYTES..) else {
            return Err(WireError::BodyLength {
                frame_type: FrameType::Error,
                body_bytes: body.len(),
            });
        };
        zero(&body[2..Self::PREFIX_BYTES], "ERROR")?;
        Ok(ErrorFrame {
            code: u16::from_le_bytes([body[0], body[1]]),
            text: utf8(FrameType::Error, text)?,
        })
    }
}

/// `text` cut at a character boundary to at most [`ERROR_TEXT_BYTES_MAX`] bytes.
fn cut_text(mut text: String) -> String {
    if text.len() > ERROR_TEXT_BYTES_MAX {
        let mut cut = ERROR_TEXT_BYTES_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

fn utf8(frame_type: FrameType, text: &[u8]) -> Result<String, WireError> {
    std::str::from_utf8(text)
        .map(str::to_owned)
        .map_err(|_| WireError::MalformedBody {
            frame_type,
            detail: "text is not UTF-8",
        })
}

/// GRANT and REVOKE body: a request id (u64), echoed in the GRANT_RESULT, then the payer's
/// signed record: a 288-byte grant or a 164-byte revocation (`tollgate_engine::grant`). The record
/// travels as bytes and is parsed by the server: one that does not parse is refused for this
/// request alone (GRANT_RESULT `malformed`), not as a protocol error, like a receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// Chosen by the client, echoed in the answer.
    pub request_id: u64,
    /// The record's bytes; their length is the frame type's.
    pub record: Bytes,
}

impl Registration {
    /// Size of the fixed part before the record.
    pub const PREFIX_BYTES: usize = 8;

    /// A GRANT registering `grant`.
    pub fn grant(request_id: u64, grant: &SignedGrant) -> Frame {
        Frame::Grant(Registration {
            request_id,
            record: Bytes::copy_from_slice(&grant.to_bytes()),
        })
    }

    /// A REVOKE registering `revocation`.
    pub fn revocation(request_id: u64, revocation: &SignedRevocation) -> Frame {
        Frame::Revoke(Registration {
            request_id,
            record: Bytes::copy_from_slice(&revocation.to_bytes()),
        })
    }

    /// The size of the record a frame of `frame_type` carries.
    fn record_bytes(frame_type: FrameType) -> usize {
        if frame_type == FrameType::Grant {
            GRANT_BYTES
        } else {
            REVOCATION_BYTES
        }
    }

    fn body_bytes(&self) -> usize {
        Self::PREFIX_BYTES + self.record.len()
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u64_le(self.request_id);
        dst.put_slice(&self.record);
    }

    fn decode_body(frame_type: FrameType, mut body: Bytes) -> Result<Registration, WireError> {
        fixed(
            frame_type,
            &body,
            Self::PREFIX_BYTES + Self::record_bytes(frame_type),
        )?;
        let request_id = body.get_u64_le();
        Ok(Registration {
            request_id,
            record: body,
        })
    }
}

/// Why the server refused a grant or a revocation: a `tollgate_engine::grant::GrantError` as
/// the wire carries it.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{} ({code}): {text}", self.name())]
pub struct GrantRefusal {
    /// The stable code, one of `GrantError::CODES`.
    pub code: u8,
    /// The server's explanation, at most [`ERROR_TEXT_BYTES_MAX`] bytes.
    pub text: String,
}

impl GrantRefusal {
    /// The stable snake_case name of the code.
    pub fn name(&self) -> &'static str {
        GrantError::CODES
            .iter()
            .find(|(code, _)| *code == self.code)
            .map_or("unknown", |(_, name)| name)
    }
}

impl From<&GrantError> for GrantRefusal {
    fn from(error: &GrantError) -> GrantRefusal {
        GrantRefusal {
            code: error.code(),
            text: cut_text(error.to_string()),
        }
    }
}

/// GRANT_RESULT body: the answer to one GRANT or REVOKE, sent once the record is durable (or
/// refused, which changed nothing).
///
/// | offset | size | field |
/// | ---: | ---: | --- |
/// | 0 | 8 | request id (u64) |
/// | 8 | 1 | 0: accepted; else the refusal's `GrantError` code |
/// | 9 | 3 | reserved, zero |
/// | 12 | rest | UTF-8 text, empty when accepted |
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantResult {
    /// The GRANT or REVOKE answered.
    pub request_id: u64,
    /// `Ok` once the record is durable.
    pub outcome: Result<(), GrantRefusal>,
}

impl GrantResult {
    /// Size of the fixed part before the text.
    pub const PREFIX_BYTES: usize = 12;

    fn body_bytes(&self) -> usize {
        Self::PREFIX_BYTES + self.outcome.as_ref().err().map_or(0, |r| r.text.len())
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u64_le(self.request_id);
        match &self.outcome {
            Ok(()) => {
                dst.put_u8(0);
                dst.put_bytes(0, 3);
            }
            Err(refusal) => {
                dst.put_u8(refusal.code);
                dst.put_bytes(0, 3);
                dst.put_slice(refusal.text.as_bytes());
            }
        }
    }

    fn decode_body(body: &[u8]) -> Result<GrantResult, WireError> {
        let malformed = |detail| WireError::MalformedBody {
            frame_type: FrameType::GrantResult,
            detail,
        };
        let Some(text) = body.get(Self::PREFIX_BYTES..) else {
            return Err(WireError::BodyLength {
                frame_type: FrameType::GrantResult,
                body_bytes: body.len(),
            });
        };
        let mut prefix = &body[..Self::PREFIX_BYTES];
        let request_id = prefix.get_u64_le();
        let code = prefix.get_u8();
        zero(prefix, "GRANT_RESULT")?;
        let outcome = if code == 0 {
            if !text.is_empty() {
                return Err(malformed("an accepted GRANT_RESULT carries no text"));
            }
            Ok(())
        } else {
            if !GrantError::CODES.iter().any(|(known, _)| *known == code) {
                return Err(malformed("unknown grant error code"));
            }
            Err(GrantRefusal {
                code,
                text: utf8(FrameType::GrantResult, text)?,
            })
        };
        Ok(GrantResult {
            request_id,
            outcome,
        })
    }
}

/// Errors of the `tokio_util` codec: the stream's, or the protocol's.
#[derive(Debug, Error)]
pub enum CodecError {
    /// The bytes broke the protocol; answer with an ERROR carrying `.code()` and close.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// `tokio_util` codec for v1 frames, enforcing `frame_bytes_max` both ways.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    frame_bytes_max: u32,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(FRAME_BYTES_MAX)
    }
}

impl FrameCodec {
    /// A codec refusing frames longer than `frame_bytes_max` (header included).
    pub fn new(frame_bytes_max: u32) -> FrameCodec {
        FrameCodec { frame_bytes_max }
    }

    /// The limit in force.
    pub fn frame_bytes_max(&self) -> u32 {
        self.frame_bytes_max
    }
}

impl tokio_util::codec::Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match decode_frame(src, self.frame_bytes_max)? {
            Decoded::Frame(frame) => Ok(Some(frame)),
            Decoded::Incomplete { .. } => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(WireError::Truncated {
                buffered_bytes: src.len(),
            }
            .into()),
        }
    }
}

impl tokio_util::codec::Encoder<&Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let frame_bytes = frame.encoded_bytes();
        if frame_bytes > self.frame_bytes_max as usize {
            return Err(WireError::FrameTooLarge {
                frame_bytes: frame_bytes as u64,
                frame_bytes_max: self.frame_bytes_max,
            }
            .into());
        }
        frame.encode(dst);
        Ok(())
    }
}

impl tokio_util::codec::Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        <Self as tokio_util::codec::Encoder<&Frame>>::encode(self, &frame, dst)
    }
}
