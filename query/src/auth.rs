//! How a caller proves who it is to the query API, from both sides: the server checks exactly the
//! bytes the client signs, so the message is built in one place.
//!
//! Two kinds of caller exist. An operator or an auditor sends `Authorization: Bearer <token>`, a
//! token the server's configuration names with its scopes. A payer needs no configuration: it
//! signs each request with its deposit key and sends three headers,
//!
//! ```text
//! X-Tollgate-Payer:     the payer key, 64 hex digits
//! X-Tollgate-Timestamp: unix milliseconds when the request was signed
//! X-Tollgate-Signature: 128 hex digits, ed25519 over the message below
//! message = "tollgate-api-v1" ‖ chain id (u64 LE) ‖ contract (20) ‖ timestamp (u64 LE)
//!           ‖ method ‖ " " ‖ path and query, as sent
//! ```
//!
//! The deployment binds a signature to one server's chain and contract, as a receipt's does; the
//! method and path bind it to one request; the timestamp bounds how long a captured request can be
//! replayed (the server refuses one outside its receipt skew window). Replaying a captured read
//! inside the window returns what the payer already saw; it changes nothing.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use tollgate_engine::receipt::parse_hex;
use tollgate_engine::{Domain, PayerKey};

/// The domain tag of a payer-signed API request.
pub const PAYER_REQUEST_TAG: &[u8; 15] = b"tollgate-api-v1";
/// Header carrying the signing payer's key.
pub const HEADER_PAYER: &str = "x-tollgate-payer";
/// Header carrying when the request was signed, unix milliseconds.
pub const HEADER_TIMESTAMP: &str = "x-tollgate-timestamp";
/// Header carrying the signature.
pub const HEADER_SIGNATURE: &str = "x-tollgate-signature";

/// Why a payer-signed request is refused. The text is what the caller is told.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayerAuthError {
    /// A header is missing or not what it should be.
    #[error("{header}: {problem}")]
    Malformed {
        /// the header
        header: &'static str,
        /// what is wrong with it
        problem: String,
    },
    /// Signed too long ago or too far ahead of the server's clock.
    #[error(
        "request signed at {timestamp_ms} ms, {off_by_ms} ms from the server's clock (at most \
         {skew_ms} ms allowed): sign each request when it is sent"
    )]
    Skew {
        /// the signed timestamp
        timestamp_ms: u64,
        /// how far it is from the server's clock
        off_by_ms: u64,
        /// the allowed distance
        skew_ms: u64,
    },
    /// The signature does not verify for this key, deployment, method, path and time.
    #[error(
        "signature does not verify for payer {0} over this server's deployment, this method and \
         path, and the timestamp sent"
    )]
    BadSignature(PayerKey),
}

/// The bytes a payer signs for one request.
pub fn payer_request_message(
    domain: &Domain,
    timestamp_ms: u64,
    method: &str,
    path_and_query: &str,
) -> Vec<u8> {
    let mut message =
        Vec::with_capacity(PAYER_REQUEST_TAG.len() + 36 + method.len() + 1 + path_and_query.len());
    message.extend_from_slice(PAYER_REQUEST_TAG);
    message.extend_from_slice(&domain.chain_id.to_le_bytes());
    message.extend_from_slice(&domain.contract.0);
    message.extend_from_slice(&timestamp_ms.to_le_bytes());
    message.extend_from_slice(method.as_bytes());
    message.push(b' ');
    message.extend_from_slice(path_and_query.as_bytes());
    message
}

/// The three headers that sign one request as `key`'s payer.
pub fn payer_request_headers(
    key: &SigningKey,
    domain: &Domain,
    timestamp_ms: u64,
    method: &str,
    path_and_query: &str,
) -> [(&'static str, String); 3] {
    let message = payer_request_message(domain, timestamp_ms, method, path_and_query);
    let signature = key.sign(&message);
    [
        (HEADER_PAYER, hex::encode(key.verifying_key().as_bytes())),
        (HEADER_TIMESTAMP, timestamp_ms.to_string()),
        (HEADER_SIGNATURE, hex::encode(signature.to_bytes())),
    ]
}

/// The header values of a payer-signed request, as received.
#[derive(Clone, Copy, Debug)]
pub struct PayerRequest<'a> {
    /// `X-Tollgate-Payer`
    pub payer: &'a str,
    /// `X-Tollgate-Timestamp`
    pub timestamp: &'a str,
    /// `X-Tollgate-Signature`
    pub signature: &'a str,
}

impl PayerRequest<'_> {
    /// The payer this request proves to come from, checked against `domain`, the request's
    /// `method` and `path_and_query`, and the server's clock `now_ms` within `skew_ms`.
    pub fn verify(
        &self,
        domain: &Domain,
        method: &str,
        path_and_query: &str,
        now_ms: u64,
        skew_ms: u64,
    ) -> Result<PayerKey, PayerAuthError> {
        let malformed = |header, problem: String| PayerAuthError::Malformed { header, problem };
        let payer = PayerKey(
            parse_hex::<32>(self.payer).map_err(|e| malformed(HEADER_PAYER, e.to_string()))?,
        );
        let timestamp_ms: u64 = self.timestamp.parse().map_err(|_| {
            malformed(
                HEADER_TIMESTAMP,
                format!("{:?} is not unix milliseconds", self.timestamp),
            )
        })?;
        let signature = Signature::from_bytes(
            &parse_hex::<64>(self.signature)
                .map_err(|e| malformed(HEADER_SIGNATURE, e.to_string()))?,
        );
        let off_by_ms = now_ms.abs_diff(timestamp_ms);
        if off_by_ms > skew_ms {
            return Err(PayerAuthError::Skew {
                timestamp_ms,
                off_by_ms,
                skew_ms,
            });
        }
        // verify_strict refuses small-order keys and non-canonical encodings: a key that anyone
        // could sign for proves nothing.
        let key =
            VerifyingKey::from_bytes(&payer.0).map_err(|_| PayerAuthError::BadSignature(payer))?;
        key.verify_strict(
            &payer_request_message(domain, timestamp_ms, method, path_and_query),
            &signature,
        )
        .map_err(|_| PayerAuthError::BadSignature(payer))?;
        Ok(payer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_engine::Address;

    const NOW: u64 = 1_800_000_000_000;

    fn domain() -> Domain {
        Domain {
            chain_id: 31_337,
            contract: Address([0x5e; 20]),
        }
    }

    fn signed(
        key: &SigningKey,
        domain: &Domain,
        at: u64,
        path: &str,
    ) -> [(&'static str, String); 3] {
        payer_request_headers(key, domain, at, "GET", path)
    }

    fn request<'a>(headers: &'a [(&'static str, String); 3]) -> PayerRequest<'a> {
        PayerRequest {
            payer: &headers[0].1,
            timestamp: &headers[1].1,
            signature: &headers[2].1,
        }
    }

    #[test]
    fn a_signed_request_names_its_payer() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let headers = signed(&key, &domain(), NOW, "/v1/payers/ab?x=1");
        let payer = request(&headers)
            .verify(
                &domain(),
                "GET",
                "/v1/payers/ab?x=1",
                NOW + 300_000,
                300_000,
            )
            .expect("verifies");
        assert_eq!(payer.0, *key.verifying_key().as_bytes());
    }

    #[test]
    fn another_path_method_deployment_or_time_refuses_it() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let headers = signed(&key, &domain(), NOW, "/v1/payers/ab");
        let signed_request = request(&headers);
        let other_chain = Domain {
            chain_id: 1,
            ..domain()
        };
        for (domain, method, path) in [
            (domain(), "GET", "/v1/payers/cd"),
            (domain(), "POST", "/v1/payers/ab"),
            (other_chain, "GET", "/v1/payers/ab"),
        ] {
            assert!(matches!(
                signed_request.verify(&domain, method, path, NOW, 300_000),
                Err(PayerAuthError::BadSignature(_))
            ));
        }
        assert!(matches!(
            signed_request.verify(&domain(), "GET", "/v1/payers/ab", NOW + 300_001, 300_000),
            Err(PayerAuthError::Skew {
                off_by_ms: 300_001,
                ..
            })
        ));
        let mut forged = headers.clone();
        forged[1].1 = (NOW + 1).to_string();
        assert!(matches!(
            request(&forged).verify(&domain(), "GET", "/v1/payers/ab", NOW, 300_000),
            Err(PayerAuthError::BadSignature(_))
        ));
    }

    #[test]
    fn malformed_headers_name_the_header() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let headers = signed(&key, &domain(), NOW, "/");
        for (index, header) in [HEADER_PAYER, HEADER_TIMESTAMP, HEADER_SIGNATURE]
            .into_iter()
            .enumerate()
        {
            let mut bad = headers.clone();
            bad[index].1 = "zz".into();
            match request(&bad).verify(&domain(), "GET", "/", NOW, 300_000) {
                Err(PayerAuthError::Malformed { header: named, .. }) => assert_eq!(named, header),
                other => panic!("{header}: {other:?}"),
            }
        }
    }
}
