//! The v1 codec against generated frames (round trips, arbitrary splits) and against every kind of
//! malformed input, each of which must come back as its own typed error.

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::Decoder;
use tollgate_engine::{Address, Domain, PayerKey, Reason, Receipt, ReceiptBatch};
use tollgate_ingest::wire::{
    Ack, Balance, Challenge, CodecError, Decoded, ErrorCode, ErrorFrame, FRAME_BYTES_MAX, Frame,
    FrameCodec, FrameType, HEADER_BYTES, Hello, HelloOk, Ping, QueryBalance, Submit, WireError,
    decode_frame,
};

fn bytes64() -> impl Strategy<Value = [u8; 64]> {
    any::<[[u8; 32]; 2]>().prop_map(|[a, b]| {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&a);
        out[32..].copy_from_slice(&b);
        out
    })
}

fn receipt() -> impl Strategy<Value = Receipt> {
    (
        any::<[u8; 32]>(),
        any::<[u8; 20]>(),
        any::<(u64, u64, u64)>(),
        any::<[u8; 32]>(),
        bytes64(),
    )
        .prop_map(
            |(payer, payee, (amount, nonce, timestamp_ms), request_hash, signature)| Receipt {
                payer: PayerKey(payer),
                payee: Address(payee),
                amount,
                nonce,
                timestamp_ms,
                request_hash,
                signature,
                session: false,
            },
        )
}

fn reason() -> impl Strategy<Value = Reason> {
    prop::sample::select(Reason::ALL.to_vec())
}

fn ack() -> impl Strategy<Value = Ack> {
    (
        any::<u64>(),
        prop::collection::vec(prop::option::weighted(0.3, reason()), 0..300),
    )
        .prop_map(|(batch_seq, verdicts)| {
            let rejections: Vec<(u32, Reason)> = verdicts
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|r| (i as u32, r)))
                .collect();
            Ack {
                batch_seq,
                accepted: (verdicts.len() - rejections.len()) as u32,
                rejections,
            }
        })
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(|nonce| Frame::Challenge(Challenge { nonce })),
        (
            any::<(u64, u64, u64, u64)>(),
            any::<[u8; 20]>(),
            any::<[u8; 32]>(),
            bytes64()
        )
            .prop_map(
                |((client_id, producer_id, session_epoch, chain_id), contract, key, sig)| {
                    Frame::Hello(Hello {
                        client_id,
                        producer_id,
                        session_epoch,
                        domain: Domain {
                            chain_id,
                            contract: Address(contract),
                        },
                        client_key: key,
                        signature: sig,
                    })
                }
            ),
        any::<(u32, u32, u32, u32)>().prop_map(|(a, b, c, d)| Frame::HelloOk(HelloOk {
            frame_bytes_max: a,
            batch_receipts_max: b,
            batches_in_flight_max: c,
            idle_timeout_ms: d,
        })),
        (any::<u64>(), prop::collection::vec(receipt(), 1..12)).prop_map(|(batch_seq, rs)| {
            Frame::Submit(Submit {
                batch_seq,
                receipts: ReceiptBatch::from_receipts(&rs),
            })
        }),
        ack().prop_map(Frame::Ack),
        (any::<u64>(), any::<[u8; 32]>()).prop_map(|(request_id, payer)| {
            Frame::QueryBalance(QueryBalance {
                request_id,
                payer: PayerKey(payer),
            })
        }),
        (
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<(u128, u128, u128, u128)>(),
            any::<(u64, u64)>()
        )
            .prop_map(
                |(
                    request_id,
                    payer,
                    (net_deposited, settled, pending, available),
                    (receipts, channels),
                )| {
                    Frame::Balance(Balance {
                        request_id,
                        payer: PayerKey(payer),
                        net_deposited,
                        settled,
                        pending,
                        available,
                        receipts,
                        channels,
                    })
                }
            ),
        any::<u64>().prop_map(|nonce| Frame::Ping(Ping { nonce })),
        any::<u64>().prop_map(|nonce| Frame::Pong(Ping { nonce })),
        (any::<u16>(), ".{0,200}").prop_map(|(code, text)| Frame::Error(ErrorFrame { code, text })),
    ]
}

fn decode_all(mut buf: BytesMut) -> Result<Vec<Frame>, WireError> {
    let mut frames = Vec::new();
    while let Decoded::Frame(frame) = decode_frame(&mut buf, FRAME_BYTES_MAX)? {
        frames.push(frame);
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    Ok(frames)
}

proptest! {
    #[test]
    fn every_frame_type_round_trips(frame in frame()) {
        let bytes = frame.to_bytes();
        prop_assert_eq!(bytes.len(), frame.encoded_bytes());
        let decoded = decode_all(BytesMut::from(&bytes[..])).expect("valid frame");
        prop_assert_eq!(decoded, vec![frame]);
    }

    #[test]
    fn frames_survive_any_split_of_the_stream(
        frames in prop::collection::vec(frame(), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut stream = BytesMut::new();
        for frame in &frames {
            frame.encode(&mut stream);
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len())).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut from = 0;
        for cut in cuts {
            buf.extend_from_slice(&stream[from..cut]);
            from = cut;
            while let Some(frame) = codec.decode(&mut buf).expect("valid stream") {
                decoded.push(frame);
            }
        }
        prop_assert_eq!(codec.decode_eof(&mut buf).expect("clean end"), None);
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_all(BytesMut::from(&bytes[..]));
    }
}

/// A frame assembled by hand from the layout in PROTOCOL.md, independent of the encoder, with a
/// correct checksum so that only the field under test is wrong.
fn raw_frame(frame_type: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_slice(b"TOLL");
    out.put_u8(1);
    out.put_u8(frame_type);
    out.put_u16_le(0);
    out.put_u64_le(body.len() as u64);
    out.put_u32_le(crc32c::crc32c(body));
    out.put_u32_le(0);
    out.put_slice(body);
    out
}

fn decode_one(mut buf: BytesMut) -> Result<Decoded, WireError> {
    decode_frame(&mut buf, FRAME_BYTES_MAX)
}

fn ping() -> BytesMut {
    raw_frame(FrameType::Ping.code(), &7u64.to_le_bytes())
}

#[test]
fn hand_built_frame_matches_the_encoder() {
    assert_eq!(&ping()[..], &Frame::Ping(Ping { nonce: 7 }).to_bytes()[..]);
}

#[test]
fn wrong_magic_is_refused_from_the_first_byte() {
    let mut frame = ping();
    frame[3] = b'X';
    assert_eq!(decode_one(frame), Err(WireError::BadMagic));
    // An HTTP client that dialled the wrong port is refused before a whole header arrives.
    assert_eq!(
        decode_one(BytesMut::from(&b"GE"[..])),
        Err(WireError::BadMagic)
    );
    assert_eq!(WireError::BadMagic.code(), ErrorCode::BadMagic);
}

#[test]
fn unknown_version_is_refused() {
    let mut frame = ping();
    frame[4] = 2;
    let error = decode_one(frame).expect_err("version 2");
    assert_eq!(error, WireError::UnsupportedVersion(2));
    assert_eq!(error.code(), ErrorCode::UnsupportedVersion);
}

#[test]
fn unknown_frame_type_is_refused() {
    for code in [0u8, 11, 255] {
        let error = decode_one(raw_frame(code, &[])).expect_err("unknown type");
        assert_eq!(error, WireError::UnknownFrameType(code));
        assert_eq!(error.code(), ErrorCode::UnknownFrameType);
    }
}

#[test]
fn set_flags_are_refused() {
    let mut frame = ping();
    frame[7] = 0x80;
    let error = decode_one(frame).expect_err("flags");
    assert_eq!(error, WireError::UnknownFlags(0x8000));
    assert_eq!(error.code(), ErrorCode::UnknownFlags);
}

#[test]
fn non_zero_reserved_bytes_are_refused_in_header_and_bodies() {
    let mut frame = ping();
    frame[23] = 1;
    let error = decode_one(frame).expect_err("header reserved");
    assert_eq!(error, WireError::ReservedNotZero("frame header"));
    assert_eq!(error.code(), ErrorCode::ReservedNotZero);

    let mut hello = [0u8; Hello::BODY_BYTES];
    hello[52] = 1;
    assert_eq!(
        decode_one(raw_frame(FrameType::Hello.code(), &hello)),
        Err(WireError::ReservedNotZero("HELLO"))
    );

    let mut ack = BytesMut::new();
    ack.put_u64_le(1);
    ack.put_u32_le(0);
    ack.put_u32_le(1);
    ack.put_slice(&[0, 0, 0, 0, Reason::Duplicate.code(), 0, 9, 0]);
    assert_eq!(
        decode_one(raw_frame(FrameType::Ack.code(), &ack)),
        Err(WireError::ReservedNotZero("ACK rejection"))
    );
    assert_eq!(
        decode_one(raw_frame(FrameType::Error.code(), &[1, 0, 0, 1])),
        Err(WireError::ReservedNotZero("ERROR"))
    );
}

#[test]
fn checksum_mismatch_is_refused() {
    let mut frame = ping();
    frame[HEADER_BYTES] ^= 1;
    let error = decode_one(frame).expect_err("flipped body bit");
    assert!(
        matches!(error, WireError::ChecksumMismatch { .. }),
        "{error}"
    );
    assert_eq!(error.code(), ErrorCode::ChecksumMismatch);
}

#[test]
fn length_over_the_maximum_is_refused_before_the_body_arrives() {
    let max = 4096u32;
    let mut frame = raw_frame(FrameType::Submit.code(), &[]);
    frame[8..16].copy_from_slice(&u64::from(max - HEADER_BYTES as u32 + 1).to_le_bytes());
    assert_eq!(
        decode_frame(&mut frame, max),
        Err(WireError::FrameTooLarge {
            frame_bytes: u64::from(max) + 1,
            frame_bytes_max: max,
        })
    );
    // Exactly at the limit is fine: the decoder waits for the body.
    let mut frame = raw_frame(FrameType::Submit.code(), &[]);
    frame[8..16].copy_from_slice(&u64::from(max - HEADER_BYTES as u32).to_le_bytes());
    assert_eq!(
        decode_frame(&mut frame, max),
        Ok(Decoded::Incomplete {
            frame_started: true
        })
    );
}

#[test]
fn ten_gigabyte_length_prefix_is_refused_without_allocating() {
    for body_len in [10_000_000_000u64, u64::MAX] {
        let mut header = BytesMut::with_capacity(HEADER_BYTES);
        header.put_slice(&raw_frame(FrameType::Submit.code(), &[])[..HEADER_BYTES]);
        header[8..16].copy_from_slice(&body_len.to_le_bytes());
        let capacity_before = header.capacity();
        let error = decode_frame(&mut header, FRAME_BYTES_MAX).expect_err("10 GB");
        assert_eq!(
            error,
            WireError::FrameTooLarge {
                frame_bytes: body_len.saturating_add(HEADER_BYTES as u64),
                frame_bytes_max: FRAME_BYTES_MAX,
            }
        );
        assert_eq!(error.code(), ErrorCode::FrameTooLarge);
        assert_eq!(header.capacity(), capacity_before, "nothing reserved");
    }
}

#[test]
fn truncated_frame_is_incomplete_until_the_stream_ends() {
    let frame = Frame::Ping(Ping { nonce: 1 }).to_bytes();
    for cut in [1, HEADER_BYTES - 1, HEADER_BYTES, frame.len() - 1] {
        let mut buf = BytesMut::from(&frame[..cut]);
        assert_eq!(
            decode_frame(&mut buf, FRAME_BYTES_MAX),
            Ok(Decoded::Incomplete {
                frame_started: true
            })
        );
        assert_eq!(buf.len(), cut, "nothing consumed");
        match FrameCodec::default().decode_eof(&mut buf) {
            Err(CodecError::Wire(error)) => {
                assert_eq!(
                    error,
                    WireError::Truncated {
                        buffered_bytes: cut
                    }
                );
                assert_eq!(error.code(), ErrorCode::TruncatedFrame);
            }
            other => panic!("expected Truncated, got {other:?}"),
        }
    }
    assert_eq!(
        decode_frame(&mut BytesMut::new(), FRAME_BYTES_MAX),
        Ok(Decoded::Incomplete {
            frame_started: false
        })
    );
}

#[test]
fn batch_that_is_not_whole_receipts_is_refused() {
    let mut body = 9u64.to_le_bytes().to_vec();
    body.extend_from_slice(&[0u8; 176 + 100]);
    let error = decode_one(raw_frame(FrameType::Submit.code(), &body)).expect_err("276 bytes");
    assert_eq!(
        error,
        WireError::BatchNotWholeReceipts { receipt_bytes: 276 }
    );
    assert_eq!(error.code(), ErrorCode::BatchNotWholeReceipts);
}

#[test]
fn empty_batch_is_refused() {
    let error = decode_one(raw_frame(FrameType::Submit.code(), &9u64.to_le_bytes()))
        .expect_err("no receipts");
    assert_eq!(error, WireError::EmptyBatch);
    assert_eq!(error.code(), ErrorCode::EmptyBatch);
}

#[test]
fn wrong_body_length_for_the_type_is_refused() {
    for (frame_type, body_bytes) in [
        (FrameType::Ping, 7),
        (FrameType::Pong, 9),
        (FrameType::Challenge, 31),
        (FrameType::Hello, 151),
        (FrameType::HelloOk, 17),
        (FrameType::QueryBalance, 0),
        (FrameType::Balance, 119),
        (FrameType::Submit, 7),
        (FrameType::Ack, 15),
        (FrameType::Ack, 17),
        (FrameType::Error, 3),
    ] {
        let error = decode_one(raw_frame(frame_type.code(), &vec![0u8; body_bytes]))
            .expect_err("wrong length");
        assert_eq!(
            error,
            WireError::BodyLength {
                frame_type,
                body_bytes
            }
        );
        assert_eq!(error.code(), ErrorCode::BadBodyLength);
    }
}

#[test]
fn malformed_bodies_are_refused() {
    let ack = |accepted: u32, entries: &[(u32, u8)]| {
        let mut body = BytesMut::new();
        body.put_u64_le(1);
        body.put_u32_le(accepted);
        body.put_u32_le(entries.len() as u32);
        for &(index, code) in entries {
            body.put_u32_le(index);
            body.put_slice(&[code, 0, 0, 0]);
        }
        raw_frame(FrameType::Ack.code(), &body)
    };
    let malformed = |detail| {
        Err(WireError::MalformedBody {
            frame_type: FrameType::Ack,
            detail,
        })
    };
    assert_eq!(
        decode_one(ack(1, &[(0, 0)])),
        malformed("unknown reason code")
    );
    assert_eq!(
        decode_one(ack(1, &[(0, 200)])),
        malformed("unknown reason code")
    );
    assert_eq!(
        decode_one(ack(1, &[(2, 4)])),
        malformed("rejection index beyond the batch")
    );
    assert_eq!(
        decode_one(ack(3, &[(1, 4), (1, 4)])),
        malformed("rejection indices not strictly increasing")
    );
    assert_eq!(
        decode_one(ack(u32::MAX, &[(0, 4)])),
        malformed("accepted + rejected overflows u32")
    );
    let error =
        decode_one(raw_frame(FrameType::Error.code(), &[1, 0, 0, 0, 0xff])).expect_err("not UTF-8");
    assert_eq!(
        error,
        WireError::MalformedBody {
            frame_type: FrameType::Error,
            detail: "text is not UTF-8"
        }
    );
    assert_eq!(error.code(), ErrorCode::MalformedBody);
}

#[test]
fn encoder_refuses_a_frame_over_its_limit() {
    let receipts = ReceiptBatch::from_receipts(&[Receipt::decode(&[0u8; 176]).expect("zeros")]);
    let frame = Frame::Submit(Submit {
        batch_seq: 1,
        receipts,
    });
    let mut codec = FrameCodec::new(Submit::frame_bytes(1) as u32 - 1);
    let mut out = BytesMut::new();
    let result = tokio_util::codec::Encoder::encode(&mut codec, &frame, &mut out);
    assert!(
        matches!(
            result,
            Err(CodecError::Wire(WireError::FrameTooLarge { .. }))
        ),
        "{result:?}"
    );
    assert!(out.is_empty());
}

#[test]
fn error_text_is_cut_at_a_character_boundary() {
    let long = "é".repeat(1000);
    let frame = ErrorFrame::new(ErrorCode::Internal, long);
    assert!(frame.text.len() <= tollgate_ingest::wire::ERROR_TEXT_BYTES_MAX);
    assert_eq!(frame.error_code(), Some(ErrorCode::Internal));
    assert_eq!(
        decode_all(BytesMut::from(&Frame::Error(frame.clone()).to_bytes()[..])),
        Ok(vec![Frame::Error(frame)])
    );
}

#[test]
fn hello_signature_binds_the_challenge() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
    let challenge = Challenge { nonce: [1; 32] };
    let domain = Domain {
        chain_id: 31_337,
        contract: Address([0x33; 20]),
    };
    let hello = Hello::signed(7, 8, 9, domain, &key, &challenge);
    assert_eq!(hello.verify(&challenge), Ok(()));
    assert!(hello.verify(&Challenge { nonce: [2; 32] }).is_err());
    let mut tampered = hello;
    tampered.producer_id += 1;
    assert!(tampered.verify(&challenge).is_err());
}
