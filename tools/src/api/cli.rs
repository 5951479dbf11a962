//! The client side of the query API: `tollgate balance PAYER`, `tollgate payee ADDRESS`,
//! `tollgate epochs` and `tollgate proof EPOCH PAYER PAYEE`.
//!
//! Aligned tables for people by default, the API's JSON with `--json` for scripts. Exit codes
//! scripts can rely on:
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | answered |
//! | 1 | not found: unknown payer, payee, epoch or leaf, or no proof yet (epoch not committed, or not final onchain) |
//! | 2 | usage or other error: malformed argument, refused request, unexpected answer |
//! | 3 | server unreachable, timing out or not ready yet: retry later |
//!
//! Every failure is one line on stderr, never a backtrace.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tollgate_engine::{Address, PayerKey};

use super::model::{EpochList, EpochView, ErrorBody, PayeeView, PayerView, ProofView};
use super::{EPOCHS_LIMIT_DEFAULT, EPOCHS_LIMIT_MAX};

/// Where the CLI looks for the server unless told otherwise.
pub const SERVER_DEFAULT: &str = "http://127.0.0.1:7403";
/// How long one request may take before the server counts as unreachable.
const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// Exit code: answered.
pub const EXIT_OK: u8 = 0;
/// Exit code: the thing asked for does not exist (or has no proof yet).
pub const EXIT_NOT_FOUND: u8 = 1;
/// Exit code: usage or other error.
pub const EXIT_ERROR: u8 = 2;
/// Exit code: the server cannot be reached or is not ready; retry later.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Options every query command takes.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Base URL of the Tollgate query API.
    #[arg(long, env = "TOLLGATE_SERVER", default_value = SERVER_DEFAULT)]
    pub server: String,
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `tollgate balance PAYER`.
#[derive(Debug, Clone, Args)]
pub struct BalanceArgs {
    /// The payer's ed25519 public key (64 hex digits).
    pub payer: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `tollgate payee ADDRESS`.
#[derive(Debug, Clone, Args)]
pub struct PayeeArgs {
    /// The payee's EVM address (0x + 40 hex digits).
    pub address: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `tollgate epochs`.
#[derive(Debug, Clone, Args)]
pub struct EpochsArgs {
    /// How many epochs, newest first (the open one included).
    #[arg(long, default_value_t = EPOCHS_LIMIT_DEFAULT,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=EPOCHS_LIMIT_MAX as u64))]
    pub limit: usize,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `tollgate proof EPOCH PAYER PAYEE`.
#[derive(Debug, Clone, Args)]
pub struct ProofArgs {
    /// A committed epoch.
    pub epoch: u64,
    /// The payer's ed25519 public key (64 hex digits).
    pub payer: String,
    /// The payee's EVM address (0x + 40 hex digits).
    pub payee: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The query commands; flatten into the binary's command enum with `#[command(flatten)]`.
#[derive(Debug, Clone, Subcommand)]
pub enum QueryCommand {
    /// A payer's funds and channels.
    Balance(BalanceArgs),
    /// A payee's credits and what it may withdraw.
    Payee(PayeeArgs),
    /// The latest epochs and where their settlement stands.
    Epochs(EpochsArgs),
    /// The Merkle proof of a channel in an epoch final onchain, as Settlement.verifyLeaf takes it.
    Proof(ProofArgs),
}

/// Why a query command failed. Each maps to one exit code.
#[derive(Debug, Error)]
pub enum QueryError {
    /// An argument is malformed; nothing was sent.
    #[error("{0}")]
    Usage(String),
    /// The server knows no such thing (404), or has no proof for it yet (409).
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
            Self::Usage(_) | Self::Refused { .. } | Self::BadResponse { .. } => EXIT_ERROR,
            Self::Unreachable { .. } => EXIT_UNREACHABLE,
        }
    }
}

/// The innermost cause of an error chain: for a refused connection, "Connection refused (os
/// error 111)" rather than reqwest's "error sending request".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
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
        Ok(Self { http, base })
    }

    fn server(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_owned()
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, QueryError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| QueryError::Usage(format!("bad request path {path:?}: {e}")))?;
        let response =
            self.http
                .get(url)
                .query(query)
                .send()
                .await
                .map_err(|e| QueryError::Unreachable {
                    server: self.server(),
                    reason: if e.is_timeout() {
                        format!("no answer within {REQUEST_TIMEOUT_MS} ms")
                    } else {
                        root_cause(&e)
                    },
                })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| QueryError::Unreachable {
                server: self.server(),
                reason: root_cause(&e),
            })?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| QueryError::BadResponse {
                server: self.server(),
                problem: e.to_string(),
            });
        }
        let Ok(error) = serde_json::from_slice::<ErrorBody>(&body) else {
            return Err(QueryError::BadResponse {
                server: self.server(),
                problem: format!("status {status} without an API error body"),
            });
        };
        Err(match status {
            StatusCode::NOT_FOUND | StatusCode::CONFLICT => QueryError::NotFound {
                code: error.error,
                message: error.message,
            },
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

fn parse_payer(text: &str) -> Result<PayerKey, QueryError> {
    PayerKey::from_str(text)
        .map_err(|e| QueryError::Usage(format!("payer {text:?}: {e} (expected 64 hex digits)")))
}

fn parse_payee(text: &str) -> Result<Address, QueryError> {
    if !text.starts_with("0x") {
        return Err(QueryError::Usage(format!(
            "payee {text:?}: expected 0x and 40 hex digits"
        )));
    }
    Address::from_str(text).map_err(|e| {
        QueryError::Usage(format!(
            "payee {text:?}: {e} (expected 0x and 40 hex digits)"
        ))
    })
}

/// Column alignment in a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// Rows under a header, columns padded to their widest cell; numbers right-aligned so digits
/// line up. Cells are ASCII (hex, decimals, words), so byte length is display width.
fn table(header: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|(name, _)| name.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let header_cells: Vec<String> = header.iter().map(|(name, _)| name.to_string()).collect();
    for row in std::iter::once(&header_cells).chain(rows) {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            let width = widths[column];
            let align = header[column].1;
            if column > 0 {
                line.push_str("  ");
            }
            match align {
                Align::Left => {
                    let _ = write!(line, "{cell:<width$}");
                }
                Align::Right => {
                    let _ = write!(line, "{cell:>width$}");
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `name  value` lines with the values aligned.
pub(crate) fn fields(pairs: &[(&str, String)]) -> String {
    let rows: Vec<Vec<String>> = pairs
        .iter()
        .map(|(name, value)| vec![name.to_string(), value.clone()])
        .collect();
    // The header row of a two-column field list is noise: drop it.
    let rendered = table(&[("", Align::Left), ("", Align::Left)], &rows);
    rendered
        .split_once('\n')
        .map(|(_, rest)| rest.to_owned())
        .unwrap_or_default()
}

fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".into())
}

/// The human rendering of a payer.
pub fn render_payer(view: &PayerView) -> String {
    let mut out = fields(&[
        ("payer", view.payer.clone()),
        ("deposited", view.deposited.to_string()),
        (
            "withdrawal requested",
            view.withdrawal_requested.to_string(),
        ),
        ("withdrawn", view.withdrawn.to_string()),
        ("settled", view.settled.to_string()),
        ("pending", view.pending.to_string()),
        ("available", view.available.to_string()),
        ("receipts", view.receipts.to_string()),
        ("channels", view.channel_count.to_string()),
    ]);
    if !view.channels.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = view
            .channels
            .iter()
            .map(|c| {
                vec![
                    c.payee.clone(),
                    c.cumulative.to_string(),
                    c.receipts.to_string(),
                    or_dash(c.highest_nonce.map(|n| n.to_string())),
                    c.last_timestamp_ms.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                ("PAYEE", Align::Left),
                ("CUMULATIVE", Align::Right),
                ("RECEIPTS", Align::Right),
                ("HIGHEST NONCE", Align::Right),
                ("LAST TIMESTAMP MS", Align::Right),
            ],
            &rows,
        ));
        if view.channel_count > view.channels.len() as u64 {
            let _ = writeln!(
                out,
                "({} of {} channels shown)",
                view.channels.len(),
                view.channel_count
            );
        }
    }
    out
}

/// The human rendering of a payee.
pub fn render_payee(view: &PayeeView) -> String {
    let withdrawable = match view.withdrawable {
        Some(amount) => amount.to_string(),
        None => format!("- ({})", serde_label(&view.withdrawable_source)),
    };
    fields(&[
        ("payee", view.payee.clone()),
        ("credited", view.credited.to_string()),
        ("settled", view.settled.to_string()),
        ("pending", view.pending.to_string()),
        ("withdrawable", withdrawable),
    ])
}

/// The snake_case word serde gives a unit enum variant.
fn serde_label(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(label)) => label.replace('_', " "),
        _ => "?".into(),
    }
}

/// The human rendering of an epoch list.
pub fn render_epochs(list: &EpochList) -> String {
    let rows: Vec<Vec<String>> = list
        .epochs
        .iter()
        .map(|e| {
            vec![
                e.epoch.to_string(),
                e.status.as_str().to_owned(),
                e.receipts.to_string(),
                e.debit_total.to_string(),
                or_dash(e.leaves.map(|n| n.to_string())),
                or_dash(e.block.map(|n| n.to_string())),
                or_dash(e.tx_hash.clone()),
                or_dash(e.root.clone()),
            ]
        })
        .collect();
    table(
        &[
            ("EPOCH", Align::Right),
            ("STATUS", Align::Left),
            ("RECEIPTS", Align::Right),
            ("AMOUNT", Align::Right),
            ("LEAVES", Align::Right),
            ("BLOCK", Align::Right),
            ("TX HASH", Align::Left),
            ("ROOT", Align::Left),
        ],
        &rows,
    )
}

/// The human rendering of a proof.
pub fn render_proof(view: &ProofView) -> String {
    let mut pairs = vec![
        ("epoch", view.epoch.to_string()),
        ("payer", view.payer.clone()),
        ("payee", view.payee.clone()),
        ("cumulative", view.cumulative.to_string()),
        ("leaf", view.leaf.clone()),
        ("root", view.root.clone()),
    ];
    if view.proof.is_empty() {
        pairs.push(("proof", "(empty: the leaf is the root)".into()));
    }
    for (index, hash) in view.proof.iter().enumerate() {
        pairs.push((if index == 0 { "proof" } else { "" }, hash.clone()));
    }
    fields(&pairs)
}

fn output<T: Serialize>(
    value: &T,
    json: bool,
    human: impl FnOnce(&T) -> String,
) -> Result<String, QueryError> {
    if json {
        serde_json::to_string_pretty(value)
            .map(|text| text + "\n")
            .map_err(|e| QueryError::Usage(format!("cannot print JSON: {e}")))
    } else {
        Ok(human(value))
    }
}

/// Runs one query command and returns what to print on stdout.
pub async fn execute(command: &QueryCommand) -> Result<String, QueryError> {
    match command {
        QueryCommand::Balance(args) => {
            let payer = parse_payer(&args.payer)?;
            let view = QueryClient::new(&args.server.server)?.payer(&payer).await?;
            output(&view, args.server.json, render_payer)
        }
        QueryCommand::Payee(args) => {
            let payee = parse_payee(&args.address)?;
            let view = QueryClient::new(&args.server.server)?.payee(&payee).await?;
            output(&view, args.server.json, render_payee)
        }
        QueryCommand::Epochs(args) => {
            let list = QueryClient::new(&args.server.server)?
                .epochs(args.limit)
                .await?;
            output(&list, args.server.json, render_epochs)
        }
        QueryCommand::Proof(args) => {
            let payer = parse_payer(&args.payer)?;
            let payee = parse_payee(&args.payee)?;
            let view = QueryClient::new(&args.server.server)?
                .proof(args.epoch, &payer, &payee)
                .await?;
            output(&view, args.server.json, render_proof)
        }
    }
}

/// Runs one query command from a synchronous `main`: prints the answer on stdout, or one line
/// on stderr, and returns the documented exit code.
pub fn run(command: &QueryCommand) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| QueryError::Usage(format!("cannot start the async runtime: {e}")))
        .and_then(|runtime| runtime.block_on(execute(command)));
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::from(EXIT_OK)
        }
        Err(error) => {
            eprintln!("tollgate: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::model::{ChannelView, EpochStatusView, WithdrawableSource};

    #[test]
    fn tables_align_columns_and_right_align_numbers() {
        let rendered = table(
            &[("NAME", Align::Left), ("AMOUNT", Align::Right)],
            &[
                vec!["a".into(), "5".into()],
                vec!["longer".into(), "12345678".into()],
            ],
        );
        assert_eq!(
            rendered,
            "NAME      AMOUNT\n\
             a              5\n\
             longer  12345678\n"
        );
    }

    #[test]
    fn payer_table_lists_fields_then_channels() {
        let view = PayerView {
            payer: "ab".repeat(32),
            deposited: 1_000,
            withdrawal_requested: 0,
            withdrawn: 0,
            settled: 100,
            pending: 20,
            available: 880,
            shortfall: 0,
            receipts: 3,
            channel_count: 2,
            channels: vec![ChannelView {
                payee: format!("0x{}", "01".repeat(20)),
                cumulative: 120,
                receipts: 3,
                last_timestamp_ms: 7,
                highest_nonce: Some(9),
            }],
        };
        let rendered = render_payer(&view);
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(
            lines[0],
            format!("payer                 {}", "ab".repeat(32))
        );
        assert_eq!(lines[6], "available             880");
        assert!(lines[10].starts_with("PAYEE"), "{rendered}");
        assert!(lines[11].contains("  120         3"), "{rendered}");
        assert_eq!(lines[12], "(1 of 2 channels shown)");
    }

    #[test]
    fn payee_and_epochs_show_a_dash_for_what_is_not_known_yet() {
        let payee = render_payee(&PayeeView {
            payee: "0x01".into(),
            credited: 5,
            settled: 0,
            pending: 5,
            shortfall: 0,
            withdrawable: None,
            withdrawable_source: WithdrawableSource::NotConfigured,
        });
        assert!(
            payee.contains("withdrawable  - (not configured)"),
            "{payee}"
        );
        let epochs = render_epochs(&EpochList {
            epochs: vec![EpochView {
                epoch: 2,
                status: EpochStatusView::Open,
                root: None,
                tx_hash: None,
                block: None,
                receipts: 4,
                leaves: None,
                debit_total: 40,
                credit_total: 40,
                debit_count: None,
                credit_count: None,
                shortfall: 0,
                parts: Vec::new(),
            }],
        });
        assert_eq!(
            epochs.lines().nth(1),
            Some("    2  open           4      40       -      -  -        -")
        );
    }

    #[test]
    fn malformed_arguments_are_usage_errors_before_any_request() {
        let command = QueryCommand::Balance(BalanceArgs {
            payer: "xyz".into(),
            server: ServerArgs {
                // Nothing listens on port 9 here; a request would be Unreachable, not Usage.
                server: "http://127.0.0.1:9".into(),
                json: false,
            },
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let error = runtime
            .block_on(execute(&command))
            .expect_err("malformed payer");
        assert_eq!(error.exit_code(), EXIT_ERROR, "{error}");
        assert!(error.to_string().contains("expected 64 hex digits"));

        let error = parse_payee(&"01".repeat(20)).expect_err("no 0x");
        assert_eq!(error.exit_code(), EXIT_ERROR);
        let error = QueryClient::new("ftp://example").expect_err("not http");
        assert_eq!(error.exit_code(), EXIT_ERROR);
    }

    #[test]
    fn a_server_that_is_not_running_is_one_line_and_exit_3() {
        // Bind then drop: the port is free and nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let command = QueryCommand::Epochs(EpochsArgs {
            limit: 5,
            server: ServerArgs {
                server: format!("http://127.0.0.1:{port}"),
                json: true,
            },
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let error = runtime
            .block_on(execute(&command))
            .expect_err("nothing listens");
        assert_eq!(error.exit_code(), EXIT_UNREACHABLE);
        let line = error.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
        assert!(line.to_lowercase().contains("refused"), "{line}");
    }
}
