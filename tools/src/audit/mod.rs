//! `tollgate audit`: recompute epochs from the payers' own signed receipts and compare every
//! figure with what the operator's API serves and what the contract holds.
//!
//! For each sealed epoch in order (all of them, or `--epoch N`), it reads the epoch's archived
//! receipts and tree (from the API, or a directory saved with `--save`), and with `--rpc-url`
//! the epoch's commit onchain and the payers' deposits; [`recompute`] does the rest. Epochs
//! before the first audited one are read as trees only (validated, and against their committed
//! roots onchain when a chain is given) to learn each channel's cumulative so far.
//!
//! One line per finding, then a summary; exit 0 only when everything agrees (1 when something
//! does not, 2 when the audit itself could not run). `--json` prints one JSON object instead.

pub mod recompute;
pub mod source;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tollgate_engine::ledger::LedgerConfig;
use tollgate_engine::{Verifier, VerifyConfig};
use tollgate_query::model::EpochStatusView;
use tollgate_settle::ContractReader;

use crate::query::ServerArgs;
use recompute::{EpochEvidence, Finding, Recompute, Served};
use source::Source;

/// Exit code: every audited figure agrees.
pub const EXIT_AGREES: u8 = 0;
/// Exit code: at least one finding.
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code: the audit could not run.
pub const EXIT_ERROR: u8 = 2;

/// `tollgate audit`.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// The server's query API (with an auditor's `--token`), its deployment (`--chain-id`,
    /// `--contract`), and `--json`.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Read epochs from this directory (written by `--save`) instead of the API.
    #[arg(long, conflicts_with = "save")]
    pub archive: Option<PathBuf>,
    /// Also save what is read from the API in this directory, to audit it again offline.
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Audit only this epoch (the trees of the epochs before it give the cumulatives so far).
    #[arg(long)]
    pub epoch: Option<u64>,
    /// Settlement chain JSON-RPC URL: also compare with what the contract holds.
    #[arg(long, env = "TOLLGATE_RPC_URL")]
    pub rpc_url: Option<String>,
    /// Block to read the contract's events from (its deployment block).
    #[arg(long, default_value_t = 0)]
    pub from_block: u64,
    /// The server's anti-replay window, fixed when its data directory was created.
    #[arg(long, default_value_t = LedgerConfig::default().window_nonces)]
    pub window_nonces: u32,
}

/// One audited epoch in the report.
#[derive(Debug, Serialize)]
pub struct EpochLine {
    /// The epoch.
    pub epoch: u64,
    /// Its status per the API.
    pub status: String,
    /// Receipts read.
    pub receipts: u64,
    /// Leaves recomputed.
    pub leaves: usize,
    /// Findings in it.
    pub findings: usize,
    /// Why it was not audited, if it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// What `tollgate audit` found.
#[derive(Debug, Serialize)]
pub struct AuditReport {
    /// Every epoch looked at.
    pub epochs: Vec<EpochLine>,
    /// Every finding, in epoch order.
    pub findings: Vec<Finding>,
    /// Whether the chain was compared.
    pub chain_checked: bool,
}

impl AuditReport {
    /// Whether everything agrees: no finding, and no epoch left unaudited.
    pub fn agrees(&self) -> bool {
        self.findings.is_empty() && self.epochs.iter().all(|line| line.skipped.is_none())
    }

    /// The text form: one line per finding, one per epoch, a summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for finding in &self.findings {
            out.push_str(&format!("FINDING {finding}\n"));
        }
        for line in &self.epochs {
            match &line.skipped {
                Some(why) => out.push_str(&format!("epoch {}: not audited: {why}\n", line.epoch)),
                None => out.push_str(&format!(
                    "epoch {} ({}): {} receipts, {} leaves, {} findings\n",
                    line.epoch, line.status, line.receipts, line.leaves, line.findings
                )),
            }
        }
        let audited = self.epochs.iter().filter(|l| l.skipped.is_none()).count();
        out.push_str(&format!(
            "{}: {audited} epochs audited, {} findings{}\n",
            if self.agrees() { "AGREES" } else { "DISAGREES" },
            self.findings.len(),
            if self.chain_checked {
                ", checked against the chain"
            } else {
                " (no --rpc-url: the chain was not compared)"
            }
        ));
        out
    }
}

/// Runs the audit and returns its report.
pub async fn audit(args: &AuditArgs) -> anyhow::Result<AuditReport> {
    let domain = args.server.domain.domain();
    let source = match &args.archive {
        Some(dir) => Source::Dir(dir.clone()),
        None => Source::Api(args.server.client()?),
    };
    let chain = match &args.rpc_url {
        Some(url) => Some(
            ContractReader::connect(
                url,
                domain.chain_id,
                alloy::primitives::Address::from(domain.contract.0),
            )
            .await
            .context("connecting to the chain")?,
        ),
        None => None,
    };
    let deposits = match &chain {
        Some(chain) => Some(chain.deposits(args.from_block).await?),
        None => None,
    };
    let verifier = Verifier::new(domain, VerifyConfig::default());
    let mut recompute = Recompute::new(verifier, args.window_nonces);
    let last = source.last_sealed().await?;
    let (first, last) = match args.epoch {
        Some(epoch) if epoch == 0 || epoch > last => {
            anyhow::bail!("epoch {epoch} is not sealed (sealed epochs: 1 to {last})")
        }
        Some(epoch) => (epoch, epoch),
        None => (1, last),
    };
    let mut report = AuditReport {
        epochs: Vec::new(),
        findings: Vec::new(),
        chain_checked: chain.is_some(),
    };
    // Epochs before the first audited one: their trees, validated, give the cumulatives.
    for epoch in 1..first {
        let data = source.epoch(epoch, args.save.as_deref()).await?;
        let tree = data
            .tree
            .into_tree()
            .with_context(|| format!("epoch {epoch}'s tree is invalid"))?;
        recompute.remember(&tree);
    }
    // Disputed epochs and where their amounts went, from the records.
    let mut carried_into: Vec<(u64, u64)> = Vec::new();
    for epoch in first..=last {
        let data = source.epoch(epoch, args.save.as_deref()).await?;
        if let Some(into) = data.record.carried_into {
            carried_into.push((epoch, into));
        }
        let status = data.record.status;
        let receipts = match data.receipts {
            Ok(receipts) => receipts,
            Err(unavailable) => {
                report.epochs.push(EpochLine {
                    epoch,
                    status: status.as_str().into(),
                    receipts: 0,
                    leaves: 0,
                    findings: 0,
                    skipped: Some(unavailable.0),
                });
                continue;
            }
        };
        let onchain = match &chain {
            Some(chain) => chain.onchain_epoch(epoch, args.from_block).await?,
            None => None,
        };
        let evidence = EpochEvidence {
            epoch,
            receipts,
            carried: carried_into
                .iter()
                .filter(|(_, into)| *into == epoch)
                .map(|(disputed, _)| *disputed)
                .collect(),
            served: Served {
                tree: Some(data.tree),
                root: data
                    .record
                    .root
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .with_context(|| format!("epoch {epoch}: root"))?,
                debit_total: Some(data.record.debit_total),
                shortfall: data.record.shortfall,
            },
            // A voided commit's amounts are owed again, so they are not compared.
            onchain: onchain
                .filter(|onchain| !onchain.disputed && status != EpochStatusView::Disputed),
            deposits: deposits.clone(),
        };
        let audited = recompute.audit(&evidence);
        report.epochs.push(EpochLine {
            epoch,
            status: status.as_str().into(),
            receipts: audited.receipts,
            leaves: audited.leaves,
            findings: audited.findings.len(),
            skipped: None,
        });
        report.findings.extend(audited.findings);
    }
    Ok(report)
}

/// `tollgate audit` from a synchronous `main`: prints the report and returns the exit code.
pub fn run(args: &AuditArgs) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(audit(args)));
    match result {
        Ok(report) => {
            if args.server.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(error) => {
                        eprintln!("tollgate audit: {error}");
                        return ExitCode::from(EXIT_ERROR);
                    }
                }
            } else {
                print!("{}", report.render());
            }
            ExitCode::from(if report.agrees() {
                EXIT_AGREES
            } else {
                EXIT_FINDINGS
            })
        }
        Err(error) => {
            eprintln!("tollgate audit: {}", crate::output::one_line(&error));
            ExitCode::from(EXIT_ERROR)
        }
    }
}
