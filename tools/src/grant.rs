//! `tollgate grant`: a payer's session grants and revocations from a shell. `tollgate grant`
//! signs a grant with the payer's deposit key and prints it as one JSON line
//! ([`tollgate_query::grants::GrantTerms`]: the signed bytes in hex and the terms decoded);
//! `tollgate grant revoke` signs a revocation the same way; `tollgate grant submit` posts such
//! lines to a server (`POST /v1/grants`, `/v1/revocations`) and prints what the server then
//! holds. Signing never needs a server: a grant is offchain, and the payer may hand the line to
//! its agent, which delivers it.
//!
//! The same lines are what `tollgate receipts verify --grant FILE` reads ([`GrantBook`]) to judge
//! a session-signed receipt as the server would.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use ed25519_dalek::SigningKey;
use tollgate_engine::grant::{Allowance, Grant, GrantSpend, PayeeScope, Revocation, SignedGrant};
use tollgate_engine::{Address, Domain, PayerKey, Reason, ReceiptView, Verdict};
use tollgate_load::cli::{DomainArgs, parse_duration};
use tollgate_query::grants::{GrantTerms, RevocationTerms};
use tollgate_query::{QueryClient, QueryError};

use crate::keys;
use crate::query::ServerArgs;
use crate::receipts_json::{StreamSummary, each_line};

/// `tollgate grant`: sign a grant, or one of the actions below.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct GrantArgs {
    /// Revoke or submit instead of signing a grant.
    #[command(subcommand)]
    pub action: Option<GrantAction>,
    #[command(flatten)]
    pub sign: SignGrantArgs,
}

/// What `tollgate grant` does besides signing a grant.
#[derive(Debug, Subcommand)]
pub enum GrantAction {
    /// Sign a revocation of a session key (for good) and print it as one JSON line.
    Revoke(RevokeArgs),
    /// Post signed grants and revocations (JSON lines from `tollgate grant`, on stdin) to a
    /// server, each answered once durable; print what the server then holds, one JSON line each.
    Submit(SubmitArgs),
}

/// The payer's key and the session a grant or revocation names.
#[derive(Debug, Clone, Args)]
pub struct PayerAndSession {
    /// The payer's deposit key: 64 hex digits, or a file holding them.
    #[arg(long, env = "TOLLGATE_PAYER_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// The session key: its public key (64 hex digits), or a key file (as `tollgate keygen
    /// --out` or `--new-session` write) whose public key is used.
    #[arg(long)]
    pub session: Option<String>,
    #[command(flatten)]
    pub domain: DomainArgs,
}

/// `tollgate grant` (signing a grant).
#[derive(Debug, Args)]
pub struct SignGrantArgs {
    #[command(flatten)]
    pub who: PayerAndSession,
    /// Make a fresh session key, write its secret to this new file (mode 0600) for the agent,
    /// and grant it.
    #[arg(long, value_name = "FILE", conflicts_with = "session")]
    pub new_session: Option<PathBuf>,
    /// Most the session may ever spend, in token units.
    #[arg(long)]
    pub cap: Option<u64>,
    /// Most it may spend per --period.
    #[arg(long, requires = "period")]
    pub allowance: Option<u64>,
    /// The allowance's period: `30s`, `15m`, `24h`, `500ms` (periods count from --valid-from).
    #[arg(long, value_parser = parse_duration, requires = "allowance")]
    pub period: Option<Duration>,
    /// First unix millisecond the grant holds (default: now).
    #[arg(long)]
    pub valid_from: Option<u64>,
    /// First unix millisecond it no longer holds.
    #[arg(long, conflicts_with = "valid_for")]
    pub valid_until: Option<u64>,
    /// How long it holds from --valid-from: `30m`, `24h`, …
    #[arg(long, value_parser = parse_duration)]
    pub valid_for: Option<Duration>,
    /// A payee the session may pay (0x + 40 hex digits); repeat for up to 4. None: any payee.
    #[arg(long = "payee")]
    pub payees: Vec<Address>,
    /// The payer's grant nonce, so no two of its grants are the same bytes (default: now in
    /// unix ms).
    #[arg(long)]
    pub nonce: Option<u64>,
}

/// `tollgate grant revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub who: PayerAndSession,
}

/// `tollgate grant submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The server's query API (`--server`); posting needs no credentials (the payer's
    /// signature authorizes the record).
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The wall clock in unix milliseconds, as grants and receipts state time.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

fn millis(duration: Duration, flag: &str) -> anyhow::Result<u64> {
    u64::try_from(duration.as_millis()).with_context(|| format!("{flag}: too long"))
}

fn public(key: &SigningKey) -> PayerKey {
    PayerKey(key.verifying_key().to_bytes())
}

impl PayerAndSession {
    /// The payer's key (`--key` is required, checked here so `tollgate grant revoke` and
    /// `submit` parse without the signing flags).
    fn payer_key(&self) -> anyhow::Result<SigningKey> {
        keys::load(self.key.as_deref().context("--key is required")?).context("--key")
    }
}

/// `--session`: a key file's public key, or a public key in hex.
fn session_key(text: &str) -> anyhow::Result<PayerKey> {
    if Path::new(text).is_file() {
        return Ok(public(&keys::load(text).context("--session")?));
    }
    text.parse::<PayerKey>()
        .with_context(|| format!("--session {text:?}: not a key file nor 64 hex digits"))
}

impl SignGrantArgs {
    /// The grant these flags describe, signed; makes the session key file first with
    /// `--new-session`.
    pub fn signed(&self) -> anyhow::Result<SignedGrant> {
        let payer = self.who.payer_key()?;
        let session = match (&self.new_session, &self.who.session) {
            (Some(path), _) => {
                let key = keys::generate();
                keys::write_new(path, &key)?;
                public(&key)
            }
            (None, Some(text)) => session_key(text)?,
            (None, None) => bail!("give --session or --new-session"),
        };
        let valid_from_ms = self.valid_from.unwrap_or_else(now_ms);
        let valid_until_ms = match (self.valid_until, self.valid_for) {
            (Some(until), _) => until,
            (None, Some(duration)) => valid_from_ms
                .checked_add(millis(duration, "--valid-for")?)
                .context("--valid-for: past the end of time")?,
            (None, None) => bail!("give --valid-until or --valid-for"),
        };
        let allowance = match (self.allowance, self.period) {
            (Some(amount), Some(period)) => Some(Allowance {
                amount,
                period_ms: millis(period, "--period")?,
            }),
            _ => None,
        };
        let grant = Grant {
            domain: self.who.domain.domain(),
            payer: public(&payer),
            session,
            nonce: self.nonce.unwrap_or_else(now_ms),
            cap: self.cap.context("--cap is required")?,
            allowance,
            valid_from_ms,
            valid_until_ms,
            payees: if self.payees.is_empty() {
                PayeeScope::Any
            } else {
                PayeeScope::Only(self.payees.clone())
            },
        };
        let signed = grant.sign(&payer);
        // Refuse here what every server would refuse, with the same stable reason.
        signed
            .clone()
            .check(&grant.domain)
            .map_err(|e| anyhow::anyhow!("the grant would be refused: {} ({e})", e.name()))?;
        Ok(signed)
    }
}

/// Prints `value` as one JSON line.
fn print_line(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// `tollgate grant` and its actions: prints on stdout, returns the exit code.
pub fn run(args: &GrantArgs) -> anyhow::Result<u8> {
    match &args.action {
        None => {
            print_line(&GrantTerms::of(&args.sign.signed()?))?;
            Ok(0)
        }
        Some(GrantAction::Revoke(revoke)) => {
            let payer = revoke.who.payer_key()?;
            let session = session_key(
                revoke
                    .who
                    .session
                    .as_deref()
                    .context("--session is required")?,
            )?;
            let signed = Revocation {
                domain: revoke.who.domain.domain(),
                payer: public(&payer),
                session,
                revoked_at_ms: now_ms(),
            }
            .sign(&payer);
            print_line(&RevocationTerms::of(&signed))?;
            Ok(0)
        }
        Some(GrantAction::Submit(submit)) => {
            let client = submit.server.client()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let summary = submit_stream(
                &client,
                &runtime,
                std::io::stdin().lock(),
                std::io::stdout().lock(),
                std::io::stderr().lock(),
            )?;
            Ok(if summary.failed == 0 {
                0
            } else {
                tollgate_query::client::EXIT_REFUSED
            })
        }
    }
}

/// The record a line carries: its route and raw bytes.
fn line_record(line: &str) -> anyhow::Result<(&'static str, Vec<u8>)> {
    let value: serde_json::Value = serde_json::from_str(line)?;
    if value.get("grant").is_some() {
        let terms: GrantTerms = serde_json::from_value(value)?;
        Ok(("v1/grants", terms.signed()?.to_bytes().to_vec()))
    } else if value.get("revocation").is_some() {
        let terms: RevocationTerms = serde_json::from_value(value)?;
        Ok(("v1/revocations", terms.signed()?.to_bytes().to_vec()))
    } else {
        bail!("neither a grant nor a revocation line (no \"grant\" or \"revocation\" field)")
    }
}

/// Posts every line of `input` in order. A refused or malformed line is reported on `errors`
/// and does not stop the rest; a server that cannot be reached stops the stream.
pub fn submit_stream(
    client: &QueryClient,
    runtime: &tokio::runtime::Runtime,
    input: impl BufRead,
    mut output: impl Write,
    mut errors: impl Write,
) -> anyhow::Result<StreamSummary> {
    let summary = each_line(input, |line_number, line| {
        let (path, bytes) = match line_record(line) {
            Ok(record) => record,
            Err(error) => {
                writeln!(errors, "line {line_number}: {error:#}")?;
                return Ok(false);
            }
        };
        match runtime.block_on(client.post_record(path, &bytes)) {
            Ok(view) => {
                serde_json::to_writer(&mut output, &view)?;
                writeln!(output)?;
                Ok(true)
            }
            Err(error @ (QueryError::GrantRefused { .. } | QueryError::Refused { .. })) => {
                writeln!(errors, "line {line_number}: {error}")?;
                Ok(false)
            }
            Err(error) => Err(anyhow::Error::from(error).context(format!("line {line_number}"))),
        }
    })?;
    output.flush()?;
    Ok(summary)
}

/// Grants an auditor holds, by session key, each checked (signature and fields) for one
/// deployment: what `tollgate receipts verify --grant FILE` judges session receipts by.
#[derive(Debug, Default)]
pub struct GrantBook {
    grants: HashMap<PayerKey, Grant>,
}

impl GrantBook {
    /// Reads JSON lines of `tollgate grant` (or `GET /v1/grants` items) from `path`; a line
    /// that does not parse or whose grant fails its checks for `domain` is an error naming it.
    pub fn load(path: &Path, domain: &Domain) -> anyhow::Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let mut book = Self::default();
        each_line(std::io::BufReader::new(file), |line_number, line| {
            let at = || format!("{} line {line_number}", path.display());
            let terms: GrantTerms = serde_json::from_str(line).with_context(at)?;
            let checked = terms
                .signed()
                .and_then(|signed| signed.check(domain))
                .map_err(|e| anyhow::anyhow!("{}: grant refused: {} ({e})", at(), e.name()))?;
            let grant = checked.signed().grant.clone();
            book.grants.insert(grant.session, grant);
            Ok(true)
        })?;
        Ok(book)
    }

    /// The grant rule for one receipt judged alone, after its signature: a session receipt
    /// needs a grant for its key that admits it (validity at its timestamp, which stands in for
    /// the server's acceptance time an auditor cannot know, and payee scope), and its amount
    /// alone must fit the cap and allowance (what the session spent before is the ledger's).
    /// A payer-signed receipt is not the grants' business.
    pub fn judge(&self, receipt: &ReceiptView<'_>) -> Verdict {
        if !receipt.is_session() {
            return Ok(());
        }
        let grant = self.grants.get(&receipt.payer()).ok_or(Reason::NoGrant)?;
        let at = receipt.timestamp_ms();
        grant.admits(&receipt.payee(), at, at)?;
        grant
            .charge(&GrantSpend::default(), receipt.amount(), at)
            .map(drop)
    }
}
