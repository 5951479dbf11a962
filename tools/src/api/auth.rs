//! Who may read what on the query API. Balances, epoch trees and archived receipts say who used
//! which API when and for how much: no route but `/healthz`, `/readyz`, `/metrics` and
//! `/openapi.json` (which holds no ledger data) answers a caller it does not know.
//!
//! A caller is one of:
//! - an operator (`Authorization: Bearer` with a token whose scopes include `operator`): every
//!   route;
//! - an auditor (a token with scope `auditor`): the epochs, their trees, archived receipts and
//!   proofs, but no live balances;
//! - a payer proving its deposit key with a signed, timestamped request ([`tollgate_query::auth`]):
//!   its own balance, the parts of epoch data that are its own channels, and its own session
//!   grants (a session key signing the request reads its own grant);
//! - anyone, in open mode: when no token is configured, which `serve` allows only on a loopback
//!   address (like the fleet port's open mode).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tollgate_engine::grant::Grant;
use tollgate_engine::{Address, Domain, PayerKey};
use tollgate_query::auth::{HEADER_PAYER, HEADER_SIGNATURE, HEADER_TIMESTAMP, PayerRequest};

use super::ApiError;

/// What a bearer token lets its holder read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiScope {
    /// Every route.
    Operator,
    /// Epochs, trees, archived receipts and proofs; no live balances.
    Auditor,
}

impl std::str::FromStr for ApiScope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "operator" => Ok(Self::Operator),
            "auditor" => Ok(Self::Auditor),
            other => Err(format!("unknown scope {other:?} (operator or auditor)")),
        }
    }
}

/// Fewer characters than this is a password someone chose, not a token.
pub const TOKEN_CHARS_MIN: usize = 24;

/// One configured bearer token. Only its digest is kept, so a memory dump or a `Debug` line
/// never shows it, and it is compared in constant time.
#[derive(Clone, Debug)]
pub struct ApiToken {
    name: String,
    scopes: Vec<ApiScope>,
    digest: blake3::Hash,
}

impl ApiToken {
    /// The token `secret`, known in logs as `name`.
    pub fn new(name: &str, scopes: Vec<ApiScope>, secret: &str) -> Result<Self, String> {
        if secret.chars().count() < TOKEN_CHARS_MIN {
            return Err(format!(
                "api token {name:?}: at least {TOKEN_CHARS_MIN} characters (try `openssl rand \
                 -hex 32`)"
            ));
        }
        if scopes.is_empty() {
            return Err(format!("api token {name:?}: lists no scope"));
        }
        Ok(Self {
            name: name.to_owned(),
            scopes,
            digest: blake3::hash(secret.as_bytes()),
        })
    }
}

/// The access policy of one server.
#[derive(Clone, Debug)]
pub struct ApiAccess {
    tokens: Vec<ApiToken>,
    domain: Domain,
    skew_ms: u64,
}

impl ApiAccess {
    /// Tokens for operators and auditors; payers sign for `domain` within `skew_ms` of the
    /// server's clock. No token at all is open mode.
    pub fn new(tokens: Vec<ApiToken>, domain: Domain, skew_ms: u64) -> Self {
        Self {
            tokens,
            domain,
            skew_ms,
        }
    }

    /// Open mode: every caller reads everything.
    pub fn open() -> Self {
        Self::new(Vec::new(), Domain::default(), 0)
    }

    /// Whether any caller reads everything.
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    fn caller(&self, request: &Request) -> Result<Caller, ApiError> {
        if self.is_open() {
            return Ok(Caller::Open);
        }
        let headers = request.headers();
        let text = |name: &str| {
            headers
                .get(name)
                .map(|value| {
                    value.to_str().map_err(|_| ApiError::Unauthenticated {
                        problem: format!("{name}: not visible ASCII"),
                    })
                })
                .transpose()
        };
        if let Some(authorization) = text("authorization")? {
            let token =
                authorization
                    .strip_prefix("Bearer ")
                    .ok_or_else(|| ApiError::Unauthenticated {
                        problem: "Authorization: expected `Bearer <token>`".into(),
                    })?;
            let digest = blake3::hash(token.trim().as_bytes());
            // blake3::Hash compares in constant time; every token is compared, so the time
            // taken does not say which one nearly matched.
            let found = self.tokens.iter().fold(None, |found, known| {
                found.or((known.digest == digest).then_some(known))
            });
            let token = found.ok_or_else(|| ApiError::Unauthenticated {
                problem: "unknown bearer token".into(),
            })?;
            return Ok(if token.scopes.contains(&ApiScope::Operator) {
                Caller::Operator(token.name.clone())
            } else {
                Caller::Auditor(token.name.clone())
            });
        }
        match (
            text(HEADER_PAYER)?,
            text(HEADER_TIMESTAMP)?,
            text(HEADER_SIGNATURE)?,
        ) {
            (None, None, None) => Err(ApiError::Unauthenticated {
                problem: format!(
                    "no credentials: send `Authorization: Bearer <token>`, or sign the request \
                     as a payer ({HEADER_PAYER}, {HEADER_TIMESTAMP}, {HEADER_SIGNATURE})"
                ),
            }),
            (Some(payer), Some(timestamp), Some(signature)) => {
                let path_and_query = request
                    .uri()
                    .path_and_query()
                    .map_or_else(|| request.uri().path(), |pq| pq.as_str());
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |since| since.as_millis() as u64);
                PayerRequest {
                    payer,
                    timestamp,
                    signature,
                }
                .verify(
                    &self.domain,
                    request.method().as_str(),
                    path_and_query,
                    now_ms,
                    self.skew_ms,
                )
                .map(Caller::Payer)
                .map_err(|e| ApiError::Unauthenticated {
                    problem: e.to_string(),
                })
            }
            _ => Err(ApiError::Unauthenticated {
                problem: format!(
                    "a payer-signed request needs all three of {HEADER_PAYER}, \
                     {HEADER_TIMESTAMP} and {HEADER_SIGNATURE}"
                ),
            }),
        }
    }
}

/// Who is asking, as the handlers see it.
#[derive(Clone, Debug)]
pub enum Caller {
    /// Open mode: no token configured, loopback only.
    Open,
    /// A token with the operator scope, by its configured name.
    Operator(String),
    /// A token with the auditor scope only.
    Auditor(String),
    /// A payer that signed this request with its deposit key.
    Payer(PayerKey),
}

/// Which receipts and leaves of an epoch a caller may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochDataView {
    /// All of them.
    All,
    /// Only this payer's channels.
    Payer(PayerKey),
}

impl EpochDataView {
    /// Whether a channel of `payer` is in view.
    pub fn shows(&self, payer: &PayerKey) -> bool {
        match self {
            Self::All => true,
            Self::Payer(own) => own == payer,
        }
    }
}

impl Caller {
    fn forbidden(&self, what: String) -> ApiError {
        let who = match self {
            Self::Open | Self::Operator(_) => "this caller".to_owned(),
            Self::Auditor(name) => format!("auditor token {name:?}"),
            Self::Payer(payer) => format!("payer {payer}"),
        };
        ApiError::Forbidden {
            problem: format!("{who} may not read {what}"),
        }
    }

    /// A payer's balance and channels: the payer itself or an operator.
    pub fn may_read_payer(&self, payer: &PayerKey) -> Result<(), ApiError> {
        match self {
            Self::Open | Self::Operator(_) => Ok(()),
            Self::Payer(own) if own == payer => Ok(()),
            _ => Err(self.forbidden(format!("payer {payer}'s balance"))),
        }
    }

    /// A payee's balance: operators only (a payee has no key the API could check).
    pub fn may_read_payee(&self, payee: &Address) -> Result<(), ApiError> {
        match self {
            Self::Open | Self::Operator(_) => Ok(()),
            _ => Err(self.forbidden(format!("payee {payee}'s balance"))),
        }
    }

    /// A channel's leaf and proof: its payer, an auditor or an operator.
    pub fn may_read_channel(&self, payer: &PayerKey) -> Result<(), ApiError> {
        match self.epoch_data_view() {
            view if view.shows(payer) => Ok(()),
            _ => Err(self.forbidden(format!("the channels of payer {payer}"))),
        }
    }

    /// A session grant: operators and auditors, and a payer-signed request by the granting
    /// payer or by the session key itself.
    pub fn may_read_grant(&self, grant: &Grant) -> Result<(), ApiError> {
        match self {
            Self::Open | Self::Operator(_) | Self::Auditor(_) => Ok(()),
            Self::Payer(own) if *own == grant.payer || *own == grant.session => Ok(()),
            _ => Err(self.forbidden(format!("the grant of session key {}", grant.session))),
        }
    }

    /// Which receipts and leaves of an epoch this caller sees.
    pub fn epoch_data_view(&self) -> EpochDataView {
        match self {
            Self::Open | Self::Operator(_) | Self::Auditor(_) => EpochDataView::All,
            Self::Payer(own) => EpochDataView::Payer(*own),
        }
    }
}

/// Middleware: names the caller for the handlers, or answers 401.
pub async fn authenticate(
    State(access): State<Arc<ApiAccess>>,
    mut request: Request,
    next: Next,
) -> Response {
    match access.caller(&request) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}
