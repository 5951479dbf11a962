//! The HTTP client of the query API, and the typed error every caller maps to its own output:
//! the CLI to an exit code, the load generator and the demo to a failed run.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tollgate_engine::{Address, Domain, PayerKey};

use crate::auth::payer_request_headers;

use crate::grants::{GrantList, GrantView};
use crate::model::{
    EpochList, EpochView, ErrorBody, HEADER_NEXT_AFTER, PayeeView, PayerView, ProofView,
    RECEIPTS_OCTET_STREAM,
};

/// How long one request may take before the server counts as unreachable.
const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// Payer requests [`QueryClient::payers`] keeps in flight at once: enough to hide a loopback
/// round trip, few enough not to compete with the engine.
const PAYER_REQUESTS_IN_FLIGHT_MAX: usize = 16;

// The exit codes of `tollgate balance | payee | epochs | proof`, here next to the error they
// classify so every caller of the client gets the same mapping.

/// Exit code: answered.
pub const EXIT_OK: u8 = 0;
/// Exit code: the thing asked for does not exist (or has no proof yet).
pub const EXIT_NOT_FOUND: u8 = 1;
/// Exit code: usage or other error.
pub const EXIT_ERROR: u8 = 2;
/// Exit code: the server cannot be reached or is not ready; retry later.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code of `tollgate grant submit`: the server refused the grant or revocation.
pub const EXIT_REFUSED: u8 = 1;

/// Why a query failed. Each maps to one exit code.
#[derive(Debug, Error)]
pub enum QueryError {
    /// An argument is malformed; nothing was sent.
    #[error("{0}")]
    Usage(String),
    /// The server knows no such thing (404), has no proof for it yet (409), or no longer keeps
    /// it (410).
    #[error("{message}")]
    NotFound {
        /// the API's error code
        code: String,
        /// the API's message
        message: String,
    },
    /// The server refused the request for another reason.
    #[error("server answered {status}: {message}")]
    Refused {
        /// HTTP status
        status: u16,
        /// the API's message
        message: String,
    },
    /// The server refused a grant or revocation; nothing changed.
    #[error("refused: {reason} (code {code}): {message}")]
    GrantRefused {
        /// the grant error's stable name
        reason: String,
        /// its stable wire code
        code: u8,
        /// the API's message
        message: String,
    },
    /// No answer: connection refused, timed out, or the server is not ready.
    #[error("cannot reach the Tollgate server at {server}: {reason}")]
    Unreachable {
        /// the base URL tried
        server: String,
        /// what happened
        reason: String,
    },
    /// The server answered something that is not the API's JSON.
    #[error("unexpected answer from {server}: {problem}")]
    BadResponse {
        /// the base URL
        server: String,
        /// what was wrong with it
        problem: String,
    },
}

impl QueryError {
    /// The process exit code for this failure (see the module documentation).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NotFound { .. } => EXIT_NOT_FOUND,
            Self::GrantRefused { .. } => EXIT_REFUSED,
            Self::Usage(_) | Self::Refused { .. } | Self::BadResponse { .. } => EXIT_ERROR,
            Self::Unreachable { .. } => EXIT_UNREACHABLE,
        }
    }
}

/// The innermost cause of an error chain: for a refused connection, "Connection refused (os
/// error 111)" rather than reqwest's "error sending request". The tools' chain commands print it
/// too.
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// A client of one server's query API.
#[derive(Clone, Debug)]
pub struct QueryClient {
    http: reqwest::Client,
    base: reqwest::Url,
    credentials: Credentials,
}

/// How a [`QueryClient`] proves who it is (see [`crate::auth`]).
#[derive(Clone, Default)]
pub enum Credentials {
    /// Nothing: enough for a server in open mode (loopback, no token configured).
    #[default]
    None,
    /// `Authorization: Bearer` with an operator's or auditor's token.
    Bearer(String),
    /// Every request signed by a payer's deposit key for the server's deployment.
    Payer {
        /// the payer's key
        key: Box<ed25519_dalek::SigningKey>,
        /// the server's chain and contract
        domain: Domain,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Bearer(_) => f.write_str("Bearer(********)"),
            Self::Payer { key, .. } => {
                write!(f, "Payer({})", PayerKey(*key.verifying_key().as_bytes()))
            }
        }
    }
}

impl Credentials {
    fn authorize(&self, request: &mut reqwest::Request) -> Result<(), QueryError> {
        let header = |name: &str, value: &str| {
            Ok::<_, QueryError>((
                reqwest::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| QueryError::Usage(format!("header {name}: {e}")))?,
                reqwest::header::HeaderValue::from_str(value)
                    .map_err(|e| QueryError::Usage(format!("header {name}: {e}")))?,
            ))
        };
        let headers = match self {
            Self::None => Vec::new(),
            Self::Bearer(token) => vec![header("authorization", &format!("Bearer {token}"))?],
            Self::Payer { key, domain } => {
                let url = request.url();
                let path_and_query = match url.query() {
                    Some(query) => format!("{}?{query}", url.path()),
                    None => url.path().to_owned(),
                };
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_millis() as u64);
                payer_request_headers(
                    key,
                    domain,
                    now_ms,
                    request.method().as_str(),
                    &path_and_query,
                )
                .iter()
                .map(|(name, value)| header(name, value))
                .collect::<Result<_, _>>()?
            }
        };
        request.headers_mut().extend(headers);
        Ok(())
    }
}

impl QueryClient {
    /// A client of the server at `server` (e.g. `http://127.0.0.1:7403`).
    pub fn new(server: &str) -> Result<Self, QueryError> {
        let base = reqwest::Url::parse(server)
            .map_err(|e| QueryError::Usage(format!("--server {server:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(QueryError::Usage(format!(
                "--server {server:?}: expected an http:// URL"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .build()
            .map_err(|e| QueryError::Usage(format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            credentials: Credentials::None,
        })
    }

    /// The same client, proving itself with `credentials` on every request.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    fn server(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_owned()
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, QueryError> {
        let (_, body) = self.fetch(path, query, "application/json").await?;
        serde_json::from_slice(&body).map_err(|e| QueryError::BadResponse {
            server: self.server(),
            problem: e.to_string(),
        })
    }

    /// One authenticated GET: a success's headers and whole body, or the API's error as a
    /// [`QueryError`].
    pub async fn fetch(
        &self,
        path: &str,
        query: &[(&str, String)],
        accept: &str,
    ) -> Result<(reqwest::header::HeaderMap, bytes::Bytes), QueryError> {
        let url = self.url(path)?;
        let request = self
            .http
            .get(url)
            .query(query)
            .header(reqwest::header::ACCEPT, accept)
            .build()
            .map_err(|e| QueryError::Usage(format!("bad request {path:?}: {e}")))?;
        self.execute(request).await
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, QueryError> {
        self.base
            .join(path)
            .map_err(|e| QueryError::Usage(format!("bad request path {path:?}: {e}")))
    }

    /// One authenticated request: a success's headers and whole body, or the API's error.
    async fn execute(
        &self,
        mut request: reqwest::Request,
    ) -> Result<(reqwest::header::HeaderMap, bytes::Bytes), QueryError> {
        self.credentials.authorize(&mut request)?;
        let unreachable = |e: reqwest::Error| QueryError::Unreachable {
            server: self.server(),
            reason: if e.is_timeout() {
                format!("no answer within {REQUEST_TIMEOUT_MS} ms")
            } else {
                root_cause(&e)
            },
        };
        let response = self.http.execute(request).await.map_err(unreachable)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(unreachable)?;
        if status.is_success() {
            return Ok((headers, body));
        }
        let Ok(error) = serde_json::from_slice::<ErrorBody>(&body) else {
            return Err(QueryError::BadResponse {
                server: self.server(),
                problem: format!("status {status} without an API error body"),
            });
        };
        if let (Some(reason), Some(code)) = (error.reason, error.code) {
            return Err(QueryError::GrantRefused {
                reason,
                code,
                message: error.message,
            });
        }
        Err(match status {
            StatusCode::NOT_FOUND | StatusCode::CONFLICT | StatusCode::GONE => {
                QueryError::NotFound {
                    code: error.error,
                    message: error.message,
                }
            }
            StatusCode::SERVICE_UNAVAILABLE => QueryError::Unreachable {
                server: self.server(),
                reason: error.message,
            },
            _ => QueryError::Refused {
                status: status.as_u16(),
                message: error.message,
            },
        })
    }

    /// `GET /v1/payers/{payer}`.
    pub async fn payer(&self, payer: &PayerKey) -> Result<PayerView, QueryError> {
        self.get(&format!("v1/payers/{payer}"), &[]).await
    }

    /// `GET /v1/payers/{payer}` for every payer, in order, a few requests at a time; `None` for a
    /// payer the server has never heard of.
    pub async fn payers(&self, payers: &[PayerKey]) -> Result<Vec<Option<PayerView>>, QueryError> {
        futures::stream::iter(payers.iter().map(|payer| async move {
            match self.payer(payer).await {
                Ok(view) => Ok(Some(view)),
                Err(QueryError::NotFound { .. }) => Ok(None),
                Err(error) => Err(error),
            }
        }))
        .buffered(PAYER_REQUESTS_IN_FLIGHT_MAX)
        .try_collect()
        .await
    }

    /// `GET /v1/payees/{payee}`.
    pub async fn payee(&self, payee: &Address) -> Result<PayeeView, QueryError> {
        self.get(&format!("v1/payees/{payee}"), &[]).await
    }

    /// `GET /v1/epochs?limit=N`.
    pub async fn epochs(&self, limit: usize) -> Result<EpochList, QueryError> {
        self.get("v1/epochs", &[("limit", limit.to_string())]).await
    }

    /// `GET /v1/epochs/{epoch}`.
    pub async fn epoch(&self, epoch: u64) -> Result<EpochView, QueryError> {
        self.get(&format!("v1/epochs/{epoch}"), &[]).await
    }

    /// `GET /v1/grants/{session_key}`.
    pub async fn grant(&self, session: &PayerKey) -> Result<GrantView, QueryError> {
        self.get(&format!("v1/grants/{session}"), &[]).await
    }

    /// `GET /v1/grants` page by page: every grant the caller may read, in session key order.
    pub async fn grants(&self) -> Result<Vec<GrantView>, QueryError> {
        let mut grants = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let query: Vec<(&str, String)> = after.iter().map(|a| ("after", a.clone())).collect();
            let (headers, body) = self.fetch("v1/grants", &query, "application/json").await?;
            let page: GrantList =
                serde_json::from_slice(&body).map_err(|e| QueryError::BadResponse {
                    server: self.server(),
                    problem: e.to_string(),
                })?;
            grants.extend(page.grants);
            match headers
                .get(HEADER_NEXT_AFTER)
                .map(|value| value.to_str().map(str::to_owned))
            {
                Some(Ok(next)) => after = Some(next),
                Some(Err(e)) => {
                    return Err(QueryError::BadResponse {
                        server: self.server(),
                        problem: format!("{HEADER_NEXT_AFTER}: {e}"),
                    });
                }
                None => return Ok(grants),
            }
        }
    }

    /// `POST path` with a signed record's raw bytes (`/v1/grants`, `/v1/revocations`): the
    /// grant as the server now holds it, once durable.
    pub async fn post_record(&self, path: &str, record: &[u8]) -> Result<GrantView, QueryError> {
        let url = self.url(path)?;
        let request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, RECEIPTS_OCTET_STREAM)
            .header(reqwest::header::ACCEPT, "application/json")
            .body(record.to_vec())
            .build()
            .map_err(|e| QueryError::Usage(format!("bad request {path:?}: {e}")))?;
        let (_, body) = self.execute(request).await?;
        serde_json::from_slice(&body).map_err(|e| QueryError::BadResponse {
            server: self.server(),
            problem: e.to_string(),
        })
    }

    /// `GET /v1/epochs/{epoch}/proof?payer=…&payee=…`.
    pub async fn proof(
        &self,
        epoch: u64,
        payer: &PayerKey,
        payee: &Address,
    ) -> Result<ProofView, QueryError> {
        self.get(
            &format!("v1/epochs/{epoch}/proof"),
            &[("payer", payer.to_string()), ("payee", payee.to_string())],
        )
        .await
    }
}
