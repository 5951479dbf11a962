//! The query commands: `tollgate balance PAYER`, `tollgate payee ADDRESS`, `tollgate epochs` and
//! `tollgate proof EPOCH PAYER PAYEE`, over `tollgate_query`'s client and model.
//!
//! Aligned tables for people by default, the API's JSON with `--json` for scripts. Exit codes
//! scripts can rely on (the `EXIT_*` constants of `tollgate_query::client`):
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

use clap::{Args, Subcommand};
use serde::Serialize;
use tollgate_engine::{Address, Domain, PayerKey};
use tollgate_load::cli::DomainArgs;
use tollgate_query::client::EXIT_OK;
use tollgate_query::model::{
    EPOCHS_LIMIT_DEFAULT, EPOCHS_LIMIT_MAX, EpochList, PayeeView, PayerView, ProofView,
};
use tollgate_query::{Credentials, QueryClient, QueryError};

use crate::keys::{self, Secret};
use crate::output::{Align, fields, table};

/// Where the CLI looks for the server unless told otherwise.
pub const SERVER_DEFAULT: &str = "http://127.0.0.1:7403";

/// Options every query command takes.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Base URL of the Tollgate query API.
    #[arg(long, env = "TOLLGATE_SERVER", default_value = SERVER_DEFAULT)]
    pub server: String,
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub caller: CallerArgs,
    /// The server's deployment, which a payer's requests are signed for.
    #[command(flatten)]
    pub domain: DomainArgs,
}

/// How a command proves who it is to the query API (see `tollgate_query::auth`). Nothing given:
/// no credentials, which a server in open mode (loopback, no token configured) accepts.
#[derive(Debug, Clone, Default, Args)]
pub struct CallerArgs {
    /// An operator's or auditor's bearer token, or the path of a file holding it.
    #[arg(long, env = "TOLLGATE_API_TOKEN", conflicts_with = "payer_key")]
    pub token: Option<Secret>,
    /// Sign every request as this payer: its key (64 hex digits) or a key file, for the
    /// deployment `--chain-id` and `--contract` name.
    #[arg(long)]
    pub payer_key: Option<Secret>,
}

impl CallerArgs {
    /// The credentials these options describe; a payer signs for `domain`.
    pub fn credentials(&self, domain: Domain) -> Result<Credentials, QueryError> {
        if let Some(token) = &self.token {
            let token = token
                .read()
                .map_err(|e| QueryError::Usage(format!("--token: reading its file: {e}")))?;
            return Ok(Credentials::Bearer(token));
        }
        let Some(key) = &self.payer_key else {
            return Ok(Credentials::None);
        };
        Ok(Credentials::Payer {
            key: Box::new(
                keys::load(key.expose())
                    .map_err(|e| QueryError::Usage(format!("--payer-key: {e:#}")))?,
            ),
            domain,
        })
    }
}

impl ServerArgs {
    /// A client of `--server` with these credentials.
    pub fn client(&self) -> Result<QueryClient, QueryError> {
        Ok(QueryClient::new(&self.server)?
            .with_credentials(self.caller.credentials(self.domain.domain())?))
    }
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
            let view = args.server.client()?.payer(&payer).await?;
            output(&view, args.server.json, render_payer)
        }
        QueryCommand::Payee(args) => {
            let payee = parse_payee(&args.address)?;
            let view = args.server.client()?.payee(&payee).await?;
            output(&view, args.server.json, render_payee)
        }
        QueryCommand::Epochs(args) => {
            let list = args.server.client()?.epochs(args.limit).await?;
            output(&list, args.server.json, render_epochs)
        }
        QueryCommand::Proof(args) => {
            let payer = parse_payer(&args.payer)?;
            let payee = parse_payee(&args.payee)?;
            let view = args
                .server
                .client()?
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
    use tollgate_query::client::{EXIT_ERROR, EXIT_UNREACHABLE};
    use tollgate_query::model::{ChannelView, EpochStatusView, EpochView, WithdrawableSource};

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(future)
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
                carried_into: None,
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
                caller: CallerArgs::default(),
                domain: DomainArgs::default(),
            },
        });
        let error = block_on(execute(&command)).expect_err("malformed payer");
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
                caller: CallerArgs::default(),
                domain: DomainArgs::default(),
            },
        });
        let error = block_on(execute(&command)).expect_err("nothing listens");
        assert_eq!(error.exit_code(), EXIT_UNREACHABLE);
        let line = error.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
        assert!(line.to_lowercase().contains("refused"), "{line}");
    }
}
