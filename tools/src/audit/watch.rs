//! `tollgate watch`: the arbiter as a service. It follows the contract, audits each epoch as soon
//! as its commit is complete onchain (with the same [`Auditor`] as `tollgate audit`, so one set of
//! rules decides both), and calls `dispute(epoch)` with the arbiter's key while the challenge
//! window is open when the audit finds anything.
//!
//! It refuses to start when the contract's challenge window is not longer than its audit budget
//! plus a poll, since it could then see a wrong epoch turn final before it is done; an audit that
//! takes longer than the budget is logged and shown in `tollgate_watch_audit_seconds`.
//!
//! Metrics on `--metrics`: `tollgate_watch_epochs_audited_total`,
//! `tollgate_watch_findings_total`, `tollgate_watch_disputes_sent_total`,
//! `tollgate_watch_last_audited_epoch`, `tollgate_watch_audit_seconds` (the last audit) and
//! `tollgate_watch_audit_lag_seconds` (from the block that completed the commit to the end of its
//! audit).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use tokio_util::sync::CancellationToken;
use tollgate_engine::ledger::LedgerConfig;
use tollgate_settle::chain::{dispute, load_signer};

use super::{AuditArgs, Auditor};
use crate::keys::Secret;
use crate::query::ServerArgs;

/// `tollgate watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// The operator's query API (with an auditor's `--token`) and its deployment
    /// (`--chain-id`, `--contract`).
    #[command(flatten)]
    pub server: ServerArgs,
    /// Settlement chain JSON-RPC URL.
    #[arg(long, env = "TOLLGATE_RPC_URL")]
    pub rpc_url: String,
    /// The arbiter's EVM key (hex, or a file holding it): the key the contract takes disputes
    /// from.
    #[arg(long, env = "TOLLGATE_ARBITER_KEY", hide_env_values = true)]
    pub arbiter_key: Secret,
    /// Block to read the contract's events from (its deployment block).
    #[arg(long, default_value_t = 0)]
    pub from_block: u64,
    /// The server's anti-replay window, fixed when its data directory was created.
    #[arg(long, default_value_t = LedgerConfig::default().window_nonces)]
    pub window_nonces: u32,
    /// How often to look for newly committed epochs, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    pub poll_ms: u64,
    /// The longest one epoch's audit may take, in seconds.
    #[arg(long, default_value_t = 60)]
    pub audit_budget_secs: u64,
    /// Where to serve Prometheus metrics.
    #[arg(long, default_value = "127.0.0.1:7404")]
    pub metrics: SocketAddr,
}

mod names {
    pub const AUDITED: &str = "tollgate_watch_epochs_audited_total";
    pub const FINDINGS: &str = "tollgate_watch_findings_total";
    pub const DISPUTES: &str = "tollgate_watch_disputes_sent_total";
    pub const LAST_AUDITED: &str = "tollgate_watch_last_audited_epoch";
    pub const AUDIT_SECONDS: &str = "tollgate_watch_audit_seconds";
    pub const AUDIT_LAG: &str = "tollgate_watch_audit_lag_seconds";
}

/// What a watch has done, for whoever runs it in-process.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Watched {
    /// Epochs audited.
    pub audited: Vec<u64>,
    /// Epochs disputed.
    pub disputed: Vec<u64>,
}

/// Follows the chain until `shutdown`, auditing and disputing; returns what it did, and shows it
/// in `progress` as it goes.
pub async fn watch(
    args: &WatchArgs,
    shutdown: CancellationToken,
    progress: tokio::sync::watch::Sender<Watched>,
) -> anyhow::Result<Watched> {
    let audit_args = AuditArgs {
        server: args.server.clone(),
        archive: None,
        save: None,
        epoch: None,
        rpc_url: Some(args.rpc_url.clone()),
        from_block: args.from_block,
        window_nonces: args.window_nonces,
    };
    let mut auditor = Auditor::connect(&audit_args).await?;
    let chain = auditor
        .chain()
        .context("the watchtower needs the chain")?
        .clone();
    let arbiter = load_signer(args.arbiter_key.expose()).context("--arbiter-key")?;
    let contract_arbiter = chain.arbiter().await?;
    if contract_arbiter != arbiter.address() {
        bail!(
            "--arbiter-key is {}, but the contract takes disputes only from {contract_arbiter}",
            arbiter.address()
        );
    }
    let window = chain.exit_terms().await?.challenge_window_secs;
    let needed = args
        .audit_budget_secs
        .saturating_add(args.poll_ms.div_ceil(1_000));
    if window <= needed {
        bail!(
            "the contract's challenge window is {window} s, not longer than the audit budget \
             ({} s, --audit-budget-secs) plus a poll ({} ms): a wrong epoch could turn final \
             before its audit ends",
            args.audit_budget_secs,
            args.poll_ms
        );
    }
    tracing::info!(window, budget = args.audit_budget_secs, arbiter = %arbiter.address(), "watching");
    let mut watched = Watched::default();
    let mut next = 1u64;
    while !shutdown.is_cancelled() {
        let last = match auditor.last_sealed().await {
            Ok(last) => last,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "the operator's API did not answer");
                0
            }
        };
        while next <= last && !shutdown.is_cancelled() {
            let Some(onchain) = chain.onchain_epoch(next, args.from_block).await? else {
                break;
            };
            if !onchain.complete() && !onchain.disputed {
                break;
            }
            let started = Instant::now();
            let (line, findings) = auditor.audit_epoch(next, Some(onchain.clone())).await?;
            let took = started.elapsed();
            metrics::counter!(names::AUDITED).increment(1);
            metrics::counter!(names::FINDINGS).increment(findings.len() as u64);
            metrics::gauge!(names::LAST_AUDITED).set(next as f64);
            metrics::gauge!(names::AUDIT_SECONDS).set(took.as_secs_f64());
            let now_secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs());
            metrics::gauge!(names::AUDIT_LAG)
                .set(now_secs.saturating_sub(onchain.completed_at) as f64);
            if took > Duration::from_secs(args.audit_budget_secs) {
                tracing::warn!(
                    epoch = next,
                    secs = took.as_secs_f64(),
                    "audit took longer than its budget"
                );
            }
            if let Some(skipped) = &line.skipped {
                tracing::warn!(epoch = next, reason = %skipped, "epoch not audited");
            }
            watched.audited.push(next);
            if findings.is_empty() {
                tracing::info!(
                    epoch = next,
                    receipts = line.receipts,
                    leaves = line.leaves,
                    "epoch agrees"
                );
            } else if onchain.disputed {
                tracing::info!(
                    epoch = next,
                    findings = findings.len(),
                    "epoch already voided"
                );
            } else {
                for finding in &findings {
                    tracing::warn!(epoch = next, %finding, "audit finding");
                }
                let contract = alloy::primitives::Address::from(args.server.domain.contract.0);
                if dispute(&args.rpc_url, arbiter.clone(), contract, next).await? {
                    metrics::counter!(names::DISPUTES).increment(1);
                    watched.disputed.push(next);
                    auditor.voided(next);
                    tracing::warn!(epoch = next, "disputed");
                } else {
                    tracing::error!(
                        epoch = next,
                        "wrong epoch no longer disputable (final or replaced)"
                    );
                }
            }
            if onchain.disputed {
                auditor.voided(next);
            }
            progress.send_replace(watched.clone());
            next += 1;
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(args.poll_ms)) => {}
        }
    }
    Ok(watched)
}

/// `tollgate watch` from a synchronous `main`: serves metrics, watches until ctrl-c or SIGTERM.
pub fn run(args: &WatchArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_target(false).init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(args.metrics)
            .install()
            .with_context(|| format!("serving metrics on {}", args.metrics))?;
        let shutdown = CancellationToken::new();
        tokio::spawn(crate::serve::cancel_on_signal(shutdown.clone()));
        let (progress, _) = tokio::sync::watch::channel(Watched::default());
        watch(args, shutdown, progress).await.map(|_| ())
    })
}
