//! `tollgate audit`: recompute epochs from the payers' own signed receipts and compare every
//! figure with what the operator's API serves and what the contract holds.
//!
//! For each sealed epoch in order (all of them, or `--epoch N`), it reads the epoch's archived
//! receipts and tree (from the API, or a directory saved with `--save`), and with `--rpc-url`
//! the epoch's commit onchain and the payers' deposits; [`recompute`] does the rest. Epochs
//! before the first audited one are read as trees only (validated, and against their committed
//! roots onchain when a chain is given) to learn each channel's cumulative so far. Before each
//! epoch it reads the session grants the operator serves (`GET /v1/grants`, or the directory's
//! `grants.jsonl`), re-checks each payer signature and replays the session receipts under them.
//!
//! One line per finding, then a summary; exit 0 only when everything agrees (1 when something
//! does not, 2 when the audit itself could not run). `--json` prints one JSON object instead.

pub mod recompute;
pub mod source;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tollgate_engine::ledger::LedgerConfig;
use tollgate_engine::{Domain, Verifier, VerifyConfig};
use tollgate_query::model::{EpochStatusView, EpochView};
use tollgate_settle::ContractReader;
use tollgate_settle::onchain::OnchainEpoch;

use crate::query::ServerArgs;
use recompute::{EpochEvidence, Finding, Recompute, Served, checked_grant};
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

/// An audit in progress: where it reads, what it remembers between epochs (audited in order).
#[derive(Debug)]
pub struct Auditor {
    source: Source,
    save: Option<PathBuf>,
    chain: Option<ContractReader>,
    from_block: u64,
    recompute: Recompute,
    /// Disputed epochs seen, and the epoch the ledger carried each into once it says.
    disputed: BTreeMap<u64, Option<u64>>,
    /// The deployment grants must be signed for.
    domain: Domain,
    /// Grant findings already reported, so a bad grant is named once, not every epoch.
    grant_findings: BTreeSet<String>,
}

impl Auditor {
    /// An auditor reading what `args` names, connected to the chain when `--rpc-url` is given.
    pub async fn connect(args: &AuditArgs) -> anyhow::Result<Self> {
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
        Ok(Self {
            source,
            save: args.save.clone(),
            chain,
            from_block: args.from_block,
            recompute: Recompute::new(
                Verifier::new(domain, VerifyConfig::default()),
                args.window_nonces,
            ),
            disputed: BTreeMap::new(),
            domain,
            grant_findings: BTreeSet::new(),
        })
    }

    /// Reads the grants the operator serves now and holds those whose signatures check; the
    /// findings about the others (each named once per run).
    async fn refresh_grants(&mut self) -> anyhow::Result<Vec<Finding>> {
        let mut findings = Vec::new();
        for view in self.source.grants(self.save.as_deref()).await? {
            let (held, found) = checked_grant(&view, &self.domain);
            if let Some(held) = held {
                self.recompute.hold_grant(held);
            }
            findings.extend(
                found
                    .into_iter()
                    .filter(|finding| self.grant_findings.insert(finding.to_string())),
            );
        }
        Ok(findings)
    }

    /// The chain, when one was given.
    pub fn chain(&self) -> Option<&ContractReader> {
        self.chain.as_ref()
    }

    /// The newest sealed epoch.
    pub async fn last_sealed(&self) -> anyhow::Result<u64> {
        self.source.last_sealed().await
    }

    /// Learns the channels' cumulatives from the trees of epochs `1..first`, each validated.
    pub async fn remember_before(&mut self, first: u64) -> anyhow::Result<()> {
        for epoch in 1..first {
            let data = self.source.epoch(epoch, self.save.as_deref()).await?;
            self.note_dispute(epoch, &data.record);
            let tree = data
                .tree
                .into_tree()
                .with_context(|| format!("epoch {epoch}'s tree is invalid"))?;
            self.recompute.remember(&tree);
        }
        Ok(())
    }

    /// Notes that `epoch` was voided onchain, so the epoch the ledger carries it into is
    /// audited with its amounts (the ledger names that epoch once it records the dispute).
    pub fn voided(&mut self, epoch: u64) {
        self.disputed.entry(epoch).or_insert(None);
    }

    fn note_dispute(&mut self, epoch: u64, record: &EpochView) {
        if record.status == EpochStatusView::Disputed {
            self.disputed.insert(epoch, record.carried_into);
        }
    }

    /// Audits `epoch`, the next after those audited so far, against `onchain` (what the chain
    /// holds of it, when known; a voided commit is not compared, its amounts are owed again).
    pub async fn audit_epoch(
        &mut self,
        epoch: u64,
        onchain: Option<OnchainEpoch>,
    ) -> anyhow::Result<(EpochLine, Vec<Finding>)> {
        // A dispute recorded since its epoch was read says now where its amounts went.
        let unplaced: Vec<u64> = self
            .disputed
            .iter()
            .filter(|(_, into)| into.is_none())
            .map(|(disputed, _)| *disputed)
            .collect();
        for disputed in unplaced {
            let record = self.source.record(disputed).await?;
            self.note_dispute(disputed, &record);
        }
        let data = self.source.epoch(epoch, self.save.as_deref()).await?;
        self.note_dispute(epoch, &data.record);
        let status = data.record.status;
        let mut line = EpochLine {
            epoch,
            status: status.as_str().into(),
            receipts: 0,
            leaves: 0,
            findings: 0,
            skipped: None,
        };
        let receipts = match data.receipts {
            Ok(receipts) => receipts,
            Err(unavailable) => {
                line.skipped = Some(unavailable.0);
                return Ok((line, Vec::new()));
            }
        };
        // After the epoch's own data: a grant the epoch's receipts need was served by then.
        let mut findings = self.refresh_grants().await?;
        let deposits = match &self.chain {
            Some(chain) => Some(chain.deposits(self.from_block).await?),
            None => None,
        };
        let evidence = EpochEvidence {
            epoch,
            receipts,
            carried: self
                .disputed
                .iter()
                .filter(|(_, into)| **into == Some(epoch))
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
            onchain: onchain.filter(|onchain| !onchain.disputed),
            deposits,
        };
        let audited = self.recompute.audit(&evidence);
        findings.extend(audited.findings);
        line.receipts = audited.receipts;
        line.leaves = audited.leaves;
        line.findings = findings.len();
        Ok((line, findings))
    }
}

/// Runs the audit and returns its report.
pub async fn audit(args: &AuditArgs) -> anyhow::Result<AuditReport> {
    let mut auditor = Auditor::connect(args).await?;
    let last = auditor.last_sealed().await?;
    let (first, last) = match args.epoch {
        Some(epoch) if epoch == 0 || epoch > last => {
            anyhow::bail!("epoch {epoch} is not sealed (sealed epochs: 1 to {last})")
        }
        Some(epoch) => (epoch, epoch),
        None => (1, last),
    };
    auditor.remember_before(first).await?;
    let mut report = AuditReport {
        epochs: Vec::new(),
        findings: Vec::new(),
        chain_checked: auditor.chain.is_some(),
    };
    for epoch in first..=last {
        let onchain = match auditor.chain() {
            Some(chain) => chain.onchain_epoch(epoch, args.from_block).await?,
            None => None,
        };
        let (line, findings) = auditor.audit_epoch(epoch, onchain).await?;
        report.epochs.push(line);
        report.findings.extend(findings);
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
