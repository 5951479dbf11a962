//! Every error the API answers with: one enum, one status and one stable code per variant, so
//! the OpenAPI document, the server and the CLI's exit codes agree.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use thiserror::Error;
use tollgate_engine::grant::GrantError;
use tollgate_query::model::ErrorBody;

/// An API error. The `Display` text is the `message` of the JSON body.
#[derive(Debug, Error)]
pub enum ApiError {
    /// A payer key that is not 32 bytes of hex.
    #[error("malformed payer key {given:?}: {problem} (expected 64 hex digits)")]
    MalformedPayer {
        /// the text given
        given: String,
        /// why it does not parse
        problem: String,
    },
    /// A payee that is not a 20-byte hex address.
    #[error("malformed address {given:?}: {problem} (expected 0x and 40 hex digits)")]
    MalformedAddress {
        /// the text given
        given: String,
        /// why it does not parse
        problem: String,
    },
    /// An epoch number that is not a decimal u64.
    #[error("malformed epoch {given:?}: expected a decimal epoch number")]
    MalformedEpoch {
        /// the text given
        given: String,
    },
    /// A query string the route does not accept (missing or malformed parameter).
    #[error("bad query: {problem}")]
    BadQuery {
        /// what is wrong
        problem: String,
    },
    /// The ledger has never heard of this payer.
    #[error("unknown payer {0}")]
    UnknownPayer(String),
    /// Nothing was ever credited to this payee.
    #[error("unknown payee {0}")]
    UnknownPayee(String),
    /// No such epoch (neither sealed nor open).
    #[error("unknown epoch {0}")]
    UnknownEpoch(u64),
    /// The channel has no leaf in this epoch: it did not move in it (its latest leaf is in an
    /// earlier epoch) or it never existed.
    #[error("no leaf for payer {payer} and payee {payee} in epoch {epoch}")]
    UnknownLeaf {
        /// the epoch
        epoch: u64,
        /// the payer
        payer: String,
        /// the payee
        payee: String,
    },
    /// No route has this path.
    #[error("no route {0}")]
    UnknownRoute(String),
    /// The route exists but not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// A proof was asked for an epoch that is not committed onchain: the contract would not
    /// accept it yet (or no longer, if disputed).
    #[error("epoch {epoch} is {status}, not committed: no proof the contract accepts")]
    EpochNotCommitted {
        /// the epoch
        epoch: u64,
        /// its current status
        status: &'static str,
    },
    /// The epoch is committed but not final onchain: its last part has not landed or its
    /// challenge window is still open, so the arbiter may still void it and the contract's
    /// `verifyLeaf` does not accept its proofs yet.
    #[error("epoch {epoch} is committed but not final onchain yet: no proof the contract accepts")]
    EpochNotFinal {
        /// the epoch
        epoch: u64,
    },
    /// Whether the epoch is final onchain cannot be told now: no chain is configured, or it did
    /// not answer.
    #[error("cannot tell whether epoch {epoch} is final onchain: {reason}")]
    FinalityUnknown {
        /// the epoch
        epoch: u64,
        /// why the chain could not say
        reason: String,
    },
    /// The request carries no credentials the server accepts.
    #[error("unauthenticated: {problem}")]
    Unauthenticated {
        /// what is missing or wrong
        problem: String,
    },
    /// The caller is known but may not read this.
    #[error("forbidden: {problem}")]
    Forbidden {
        /// what it may not read
        problem: String,
    },
    /// The epoch is still open (or its seal is still being written): it has no tree and its
    /// receipts are still arriving.
    #[error("epoch {epoch} is not sealed yet: its tree and receipts are served once it is")]
    EpochNotSealed {
        /// the epoch
        epoch: u64,
    },
    /// The epoch's receipts were pruned from the archive after its retention period.
    #[error(
        "epoch {epoch}'s receipts were pruned: the archive keeps an epoch until it is final \
         onchain plus the retention period (archive_retention_epochs)"
    )]
    EpochPruned {
        /// the epoch
        epoch: u64,
    },
    /// This server was created without the receipt archive.
    #[error(
        "this server keeps no receipt archive (archive_receipts was off when its data directory was created)"
    )]
    ArchiveDisabled,
    /// A grant or revocation refused, by its own checks or by the ledger: nothing changed.
    /// The answer carries the grant error's stable name and code.
    #[error("grant refused: {0}")]
    GrantRefused(GrantError),
    /// No grant is held for this session key.
    #[error("no grant for session key {0}")]
    UnknownGrant(String),
    /// The server is starting (or stopping) and does not answer ledger queries yet.
    #[error("not ready: {waiting_for}")]
    NotReady {
        /// What it waits for (catching up with the chain, a failing node, shutting down).
        waiting_for: String,
    },
    /// A route a cluster node does not serve yet: it needs the whole cluster's ledger, which is
    /// split by partition over the nodes.
    #[error(
        "{0} is not served in cluster mode yet: payers are at /v1/payers/{{payer}} on any node (and QUERY_BALANCE on the fleet port), read from the payer's partition owner"
    )]
    NotInCluster(String),
    /// Cluster mode: the payer's partition has no owner right now (its owner died and no node
    /// took its lease yet), or its new owner is still replaying the partition's log.
    #[error("{0}")]
    PartitionNotOwned(String),
    /// Reading the ledger failed, or what it holds does not add up.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedPayer { .. }
            | Self::MalformedAddress { .. }
            | Self::MalformedEpoch { .. }
            | Self::BadQuery { .. } => StatusCode::BAD_REQUEST,
            Self::UnknownPayer(_)
            | Self::UnknownPayee(_)
            | Self::UnknownEpoch(_)
            | Self::UnknownLeaf { .. }
            | Self::UnknownRoute(_)
            | Self::EpochNotSealed { .. }
            | Self::UnknownGrant(_)
            | Self::ArchiveDisabled => StatusCode::NOT_FOUND,
            Self::GrantRefused(error) => grant_status(error),
            Self::EpochPruned { .. } => StatusCode::GONE,
            Self::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::EpochNotCommitted { .. } | Self::EpochNotFinal { .. } => StatusCode::CONFLICT,
            Self::FinalityUnknown { .. } | Self::NotReady { .. } | Self::PartitionNotOwned(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::NotInCluster(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine code of the answer; never renamed.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedPayer { .. } => "malformed_payer",
            Self::MalformedAddress { .. } => "malformed_address",
            Self::MalformedEpoch { .. } => "malformed_epoch",
            Self::BadQuery { .. } => "bad_query",
            Self::UnknownPayer(_) => "unknown_payer",
            Self::UnknownPayee(_) => "unknown_payee",
            Self::UnknownEpoch(_) => "unknown_epoch",
            Self::UnknownLeaf { .. } => "unknown_leaf",
            Self::UnknownRoute(_) => "unknown_route",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::EpochNotCommitted { .. } => "epoch_not_committed",
            Self::EpochNotFinal { .. } => "epoch_not_final",
            Self::FinalityUnknown { .. } => "finality_unknown",
            Self::Unauthenticated { .. } => "unauthenticated",
            Self::Forbidden { .. } => "forbidden",
            Self::EpochNotSealed { .. } => "epoch_not_sealed",
            Self::EpochPruned { .. } => "epoch_pruned",
            Self::ArchiveDisabled => "archive_disabled",
            Self::GrantRefused(_) => "grant_refused",
            Self::UnknownGrant(_) => "unknown_grant",
            Self::NotReady { .. } => "not_ready",
            Self::NotInCluster(_) => "not_in_cluster",
            Self::PartitionNotOwned(_) => "partition_not_owned",
            Self::Internal(_) => "internal",
        }
    }
}

/// A grant error's status: a record that does not parse is a bad request; one that fails its
/// own checks cannot be processed; one at odds with what the ledger holds is a conflict (and a
/// revocation of a session nobody granted names nothing there).
fn grant_status(error: &GrantError) -> StatusCode {
    match error {
        GrantError::Malformed(_) => StatusCode::BAD_REQUEST,
        GrantError::NoGrant(_) => StatusCode::NOT_FOUND,
        GrantError::WrongDeployment { .. }
        | GrantError::BadSignature
        | GrantError::BadPayerKey
        | GrantError::BadSessionKey
        | GrantError::ZeroCap
        | GrantError::BadAllowance
        | GrantError::EmptyValidity { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        GrantError::SessionKeyIsPayer(_)
        | GrantError::GrantedByAnotherPayer { .. }
        | GrantError::AlreadyGranted { .. }
        | GrantError::Revoked(_)
        | GrantError::NotTheGranter(_)
        | GrantError::PayerIsSessionKey(_)
        | GrantError::UnknownPayer(_) => StatusCode::CONFLICT,
    }
}

/// Every code with its status, for the OpenAPI document.
pub const ERROR_CODES: &[(&str, u16, &str)] = &[
    ("malformed_payer", 400, "payer key is not 64 hex digits"),
    (
        "malformed_address",
        400,
        "address is not 0x + 40 hex digits",
    ),
    ("malformed_epoch", 400, "epoch is not a decimal number"),
    ("bad_query", 400, "missing or malformed query parameter"),
    ("unknown_payer", 404, "the ledger never heard of the payer"),
    (
        "unknown_payee",
        404,
        "nothing was ever credited to the payee",
    ),
    ("unknown_epoch", 404, "no such epoch"),
    ("unknown_leaf", 404, "the channel has no leaf in that epoch"),
    ("unknown_route", 404, "no such route"),
    ("method_not_allowed", 405, "the route takes GET"),
    (
        "epoch_not_committed",
        409,
        "proofs exist only for committed epochs",
    ),
    (
        "epoch_not_final",
        409,
        "the epoch can still be voided onchain (parts missing or inside its challenge window)",
    ),
    (
        "finality_unknown",
        503,
        "the chain cannot say now whether the epoch is final; retry",
    ),
    (
        "unauthenticated",
        401,
        "no bearer token or payer signature the server accepts",
    ),
    (
        "forbidden",
        403,
        "the caller may not read this (another payer's data, or balances for an auditor)",
    ),
    (
        "epoch_not_sealed",
        404,
        "the epoch is still open: no tree, receipts still arriving",
    ),
    (
        "epoch_pruned",
        410,
        "the epoch's receipts were pruned after its retention period",
    ),
    (
        "archive_disabled",
        404,
        "the server was created without the receipt archive",
    ),
    (
        "grant_refused",
        400,
        "the grant or revocation is refused (its `reason` and `code` say why; status 400 \
         malformed, 422 a check of its own, 404 no_grant, 409 what the ledger holds)",
    ),
    ("unknown_grant", 404, "no grant is held for the session key"),
    ("not_ready", 503, "the server is starting; retry"),
    (
        "not_in_cluster",
        501,
        "a cluster node does not serve the route yet (docs/CLUSTER.md)",
    ),
    (
        "partition_not_owned",
        503,
        "cluster mode: the payer's partition has no owner right now, or its new owner is still \
         replaying its log; retry after the Retry-After seconds",
    ),
    ("internal", 500, "reading the ledger failed"),
];

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self, Self::Internal(_)) {
            tracing::error!(error = %self, "query API internal error");
        }
        let grant_error = match &self {
            Self::GrantRefused(error) => Some(error),
            _ => None,
        };
        let body = ErrorBody {
            error: self.code().to_owned(),
            message: self.to_string(),
            reason: grant_error.map(|error| error.name().to_owned()),
            code: grant_error.map(GrantError::code),
        };
        let mut response = (self.status(), Json(body)).into_response();
        if matches!(self, Self::PartitionNotOwned(_)) {
            // A lease moves within its TTL; a replay ends sooner than a client's patience.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, Self::Unauthenticated { .. }) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tollgate\", Tollgate-Payer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_documented_with_its_status() {
        let samples = [
            ApiError::MalformedPayer {
                given: String::new(),
                problem: String::new(),
            },
            ApiError::MalformedAddress {
                given: String::new(),
                problem: String::new(),
            },
            ApiError::MalformedEpoch {
                given: String::new(),
            },
            ApiError::BadQuery {
                problem: String::new(),
            },
            ApiError::UnknownPayer(String::new()),
            ApiError::UnknownPayee(String::new()),
            ApiError::UnknownEpoch(1),
            ApiError::UnknownLeaf {
                epoch: 1,
                payer: String::new(),
                payee: String::new(),
            },
            ApiError::UnknownRoute(String::new()),
            ApiError::MethodNotAllowed,
            ApiError::EpochNotCommitted {
                epoch: 1,
                status: "open",
            },
            ApiError::EpochNotFinal { epoch: 1 },
            ApiError::FinalityUnknown {
                epoch: 1,
                reason: String::new(),
            },
            ApiError::Unauthenticated {
                problem: String::new(),
            },
            ApiError::Forbidden {
                problem: String::new(),
            },
            ApiError::EpochNotSealed { epoch: 1 },
            ApiError::EpochPruned { epoch: 1 },
            ApiError::ArchiveDisabled,
            ApiError::GrantRefused(GrantError::Malformed(String::new())),
            ApiError::UnknownGrant(String::new()),
            ApiError::NotReady {
                waiting_for: String::new(),
            },
            ApiError::NotInCluster(String::new()),
            ApiError::PartitionNotOwned(String::new()),
            ApiError::Internal(String::new()),
        ];
        assert_eq!(samples.len(), ERROR_CODES.len());
        for error in samples {
            assert!(
                ERROR_CODES
                    .iter()
                    .any(|(code, status, _)| *code == error.code()
                        && *status == error.status().as_u16()),
                "{} ({}) is not in ERROR_CODES",
                error.code(),
                error.status()
            );
        }
    }
}
