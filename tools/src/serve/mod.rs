//! `tollgate serve`: the engine, the fleet protocol, the HTTP API and (with a chain) the deposit
//! watcher and the epoch loop, in one process that shuts down cleanly.
//!
//! Start-up order is what makes the numbers trustworthy: the ledger opens (refusing a corrupt
//! directory), the deposit watcher catches up with the chain, and only then do the TCP port take
//! receipts and `/readyz` say ready, so no receipt is judged against stale deposits. Shutdown runs
//! the other way: the fleet port stops accepting and acks what it read, the loops finish their
//! step, and the engine writes and fsyncs everything before the process exits 0.

mod cluster;
pub mod config;
mod coordinator;
mod funds_watcher;
pub mod process;
mod role;

pub use tollgate_cluster::telemetry::PARTITIONS_OWNED;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tollgate_engine::pipeline::{Engine, EngineConfig};
use tollgate_engine::{Verifier, VerifyPool};
use tollgate_ingest::server::Ledger;
use tollgate_settle::chain::ContractReader;
use tollgate_settle::epoch::{EpochLoop, FundsLoop};
use tollgate_settle::exit::ExitTiming;
use tollgate_settle::submitter::Submitter;
use tollgate_settle::watcher::Watcher;

use crate::api::auth::ApiAccess;
use crate::api::x402::X402Config;
use crate::api::{ApiState, Startup, router};
use config::{ChainSettings, LogFormat, ServeConfig, ServeOptions};

/// `tollgate serve`'s command line.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML file of options (keys are the flag names with `_`); flags and `TOLLGATE_*`
    /// variables override it.
    #[arg(long, env = "TOLLGATE_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Check the configuration, print it as TOML with secrets masked, and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub options: ServeOptions,
}

/// Logged once every part runs and the fleet port takes receipts; [`process::ServerProcess`]
/// waits for it.
pub const READY_MESSAGE: &str = "tollgate ready";

/// How often histogram summaries are refreshed for `/metrics`.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);
/// Beyond the ingest grace period, how long the settlement loops get to finish their step on
/// shutdown. Cutting one short is safe: both resume from the ledger on restart.
const LOOPS_GRACE: Duration = Duration::from_secs(10);

/// Runs the command: prints the configuration, or serves until SIGTERM / ctrl-c.
pub fn run_command(args: &ServeArgs) -> anyhow::Result<()> {
    let options = ServeOptions::effective(args.config.as_deref(), &args.options)?;
    let config = options.resolve().context("invalid configuration")?;
    if args.print_config {
        print!("{}", options.to_masked_toml()?);
        return Ok(());
    }
    init_logging(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tollgate-io")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        serve(config, shutdown).await
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr so stdout stays for what a command prints; colours only on a terminal.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Cancels `shutdown` on ctrl-c or SIGTERM (also what `tollgate watch` stops on).
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; ctrl-c still works");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("ctrl-c: shutting down"),
        () = terminate => tracing::info!("SIGTERM: shutting down"),
    }
    shutdown.cancel();
}

/// Serves `config` until `shutdown` is cancelled or a part fails; then stops every part, writes
/// and fsyncs what was accepted, and returns the first failure, if any.
pub async fn serve(config: ServeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = install_metrics()?;
    if let Some(cluster) = config.cluster.clone() {
        return cluster::serve(config, cluster, metrics, shutdown).await;
    }
    let engine = open_engine(&config).await?;
    let (fleet_listener, http_listener) = bind(&config).await?;

    // Logged as bound, so a port of 0 in the configuration shows the one the kernel chose.
    let fleet_address = fleet_listener.local_addr().context("listen")?;
    let http_address = http_listener.local_addr().context("http")?;
    let settlement = match &config.chain {
        Some(chain) => match connect_settlement(&config, chain, &engine).await {
            Ok(settlement) => Some(settlement),
            Err(error) => {
                stop_engine(engine).await?;
                return Err(error);
            }
        },
        None => {
            tracing::warn!(
                "CHAINLESS MODE: no chain configured; no settlement, and receipts of payers that \
                 never deposited are accepted without a funds check"
            );
            None
        }
    };

    let ready = Arc::new(AtomicBool::new(false));
    let startup = Startup::default();
    let mut api = ApiState::new(engine.reader(), Arc::clone(&ready), metrics.clone())
        .with_startup(startup.clone())
        .with_engine(engine.clone(), config.domain)
        .with_access(ApiAccess::new(
            config.api_tokens.clone(),
            config.domain,
            config.ledger.timestamp_skew_ms,
        ))
        .with_x402(X402Config {
            window_nonces: config.ledger.window_nonces,
            timestamp_skew_ms: config.ledger.timestamp_skew_ms,
            unknown_payers: config.ledger.unknown_payers,
            verify: config.verify.clone(),
        });
    if let Some(settlement) = &settlement {
        api = api.with_chain(Arc::new(settlement.reader.clone()));
    }
    let mut tasks = Tasks::new();
    spawn_http(&mut tasks, http_listener, router(api), &shutdown);
    tasks.spawn(named("metrics upkeep", upkeep(metrics, shutdown.clone())));

    if let Some(settlement) = settlement
        && let Err(error) = settlement.start(&mut tasks, &shutdown, &startup).await
    {
        shutdown.cancel();
        drain(&mut tasks, Duration::ZERO).await;
        stop_engine(engine).await?;
        return Err(error);
    }

    spawn_ingest(
        &mut tasks,
        fleet_listener,
        &config,
        Ledger::Engine(engine.clone()),
        &shutdown,
    );
    ready.store(true, Ordering::Release);
    tracing::info!(
        listen = %fleet_address,
        http = %http_address,
        data_dir = %config.data_dir.display(),
        "{READY_MESSAGE}"
    );

    // The first part to end, for whatever reason (a signal, a poisoned ledger, a broken chain
    // loop), ends the others.
    let mut failure = match tasks.join_next().await {
        Some(outcome) => failure_of(outcome),
        None => None,
    };
    shutdown.cancel();
    startup.waiting_for("shutting down");
    ready.store(false, Ordering::Release);
    let grace = Duration::from_millis(config.server.shutdown_grace_ms) + LOOPS_GRACE;
    let late_failure = drain(&mut tasks, grace).await;
    failure = failure.or(late_failure);
    let stopped = stop_engine(engine).await;
    if let Some(error) = failure {
        return Err(error);
    }
    stopped?;
    tracing::info!("tollgate stopped cleanly");
    Ok(())
}

/// The parts of `serve` that run until shutdown, each named for the log when it fails.
type Tasks = JoinSet<(&'static str, anyhow::Result<()>)>;

/// Binds the fleet port and the HTTP port.
async fn bind(config: &ServeConfig) -> anyhow::Result<(TcpListener, TcpListener)> {
    let fleet = tollgate_ingest::server::bind(config.listen)
        .with_context(|| format!("listen: cannot bind {}", config.listen))?;
    let http = TcpListener::bind(config.http)
        .await
        .with_context(|| format!("http: cannot bind {}", config.http))?;
    Ok((fleet, http))
}

/// Serves `app` on the HTTP port until `shutdown`.
fn spawn_http(
    tasks: &mut Tasks,
    listener: TcpListener,
    app: axum::Router,
    shutdown: &CancellationToken,
) {
    let shutdown = shutdown.clone();
    tasks.spawn(named("http", async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("http server")
    }));
}

/// Serves the fleet port, handing what it reads to `ledger`, until `shutdown`.
fn spawn_ingest(
    tasks: &mut Tasks,
    listener: TcpListener,
    config: &ServeConfig,
    ledger: Ledger,
    shutdown: &CancellationToken,
) {
    let server_config = config.server.clone();
    let shutdown = shutdown.clone();
    tasks.spawn(named("ingest", async move {
        tollgate_ingest::server::run(listener, server_config, ledger, shutdown)
            .await
            .context("ingest server")
    }));
}

/// Installs the Prometheus recorder with every metric of the README's table present from the
/// start, at zero.
fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    tollgate_engine::telemetry::register();
    tollgate_ingest::telemetry::register();
    tollgate_settle::telemetry::register();
    tollgate_cluster::telemetry::register();
    Ok(handle)
}

async fn upkeep(metrics: PrometheusHandle, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(METRICS_UPKEEP);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => metrics.run_upkeep(),
        }
    }
}

async fn open_engine(config: &ServeConfig) -> anyhow::Result<Engine> {
    let verifier = Verifier::new(config.domain, config.verify.clone());
    let pool = VerifyPool::new(verifier, config.verify.clone()).context("verify pool")?;
    let engine_config = EngineConfig {
        ledger: config.ledger.clone(),
        ..EngineConfig::new(&config.data_dir)
    };
    let data_dir = config.data_dir.display().to_string();
    // Opening replays RocksDB's log: blocking work, kept off the async threads.
    tokio::task::spawn_blocking(move || Engine::open(engine_config, Arc::new(pool)))
        .await
        .context("opening the ledger")?
        .with_context(|| format!("data_dir: cannot open the ledger in {data_dir}"))
}

async fn stop_engine(engine: Engine) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .context("stopping the engine")?
        .context("the ledger stopped with an error")
}

/// The chain side of `serve`: connected and checked, not yet running.
struct Settlement {
    funds: FundsLoop,
    epochs: EpochLoop,
    reader: ContractReader,
}

/// What settlement needs from the chain, in standalone and cluster mode alike: the deposit
/// watcher, the epoch submitter and a contract reader.
struct ChainLinks {
    watcher: Watcher,
    submitter: Submitter,
    reader: ContractReader,
}

/// Connects the deposit watcher, the epoch submitter and the contract reader (each checks the
/// chain id and the contract's code, the submitter that the key is the operator's), and refuses
/// to start when a payer's exit could overtake a receipt accepted before it.
async fn connect_chain(config: &ServeConfig, chain: &ChainSettings) -> anyhow::Result<ChainLinks> {
    let domain = config.domain;
    let contract = alloy::primitives::Address::from(domain.contract.0);
    let operator =
        tollgate_settle::chain::load_signer(chain.operator_key.expose()).context("operator_key")?;
    let rpc_url = tollgate_settle::chain::mask_url(&chain.rpc_url);
    tracing::info!(operator = %operator.address(), %rpc_url, %contract, "settlement on");
    let watcher = Watcher::connect(
        &chain.rpc_url,
        domain.chain_id,
        contract,
        chain.watch.clone(),
    )
    .await
    .context("rpc_url: deposit watcher")?;
    let submitter = connect_submitter(config, chain, operator).await?;
    let reader = ContractReader::connect(&chain.rpc_url, domain.chain_id, contract)
        .await
        .context("rpc_url: contract reader")?;
    check_exit_timing(chain, &reader).await?;
    Ok(ChainLinks {
        watcher,
        submitter,
        reader,
    })
}

/// The standalone server's settlement loops over its ledger, on the chain's links.
async fn connect_settlement(
    config: &ServeConfig,
    chain: &ChainSettings,
    engine: &Engine,
) -> anyhow::Result<Settlement> {
    let ChainLinks {
        watcher,
        submitter,
        reader,
    } = connect_chain(config, chain).await?;
    Ok(Settlement {
        funds: FundsLoop::new(
            engine.clone(),
            watcher,
            chain.start_block,
            chain.funds_poll_ms,
        ),
        epochs: EpochLoop::new(engine.clone(), submitter, chain.epochs.clone()),
        reader,
    })
}

/// The epoch submitter, its chain id and contract code checked, and its key the operator's.
async fn connect_submitter(
    config: &ServeConfig,
    chain: &ChainSettings,
    operator: alloy::signers::local::PrivateKeySigner,
) -> anyhow::Result<Submitter> {
    Submitter::connect(
        &chain.rpc_url,
        config.domain.chain_id,
        alloy::primitives::Address::from(config.domain.contract.0),
        operator,
        chain.submit.clone(),
    )
    .await
    .context("rpc_url: epoch submitter")
}

/// Blocks whose timestamps give the chain's block time for the start-up exit check.
const BLOCK_TIME_SAMPLE: u64 = 100;

/// Refuses to start when a payer's exit could overtake a receipt accepted before it (see
/// [`ExitTiming`]): the contract's delay against this server's settings.
async fn check_exit_timing(chain: &ChainSettings, reader: &ContractReader) -> anyhow::Result<()> {
    let terms = reader
        .exit_terms()
        .await
        .context("rpc_url: reading the contract's challenge window and withdrawal delay")?;
    let confirmations = chain.watch.confirmations;
    let block_secs = match confirmations {
        0 => 0,
        _ => reader
            .block_secs(BLOCK_TIME_SAMPLE)
            .await
            .context("rpc_url: measuring the block time")?,
    };
    let timing = ExitTiming {
        epoch_interval_ms: chain.epochs.epoch_interval_ms,
        funds_poll_ms: chain.funds_poll_ms,
        commit_latency_budget_secs: chain.commit_latency_budget_secs,
        confirmations,
        block_secs,
    };
    timing
        .check(&terms)
        .context("refusing settings under which a payer's exit can overtake accepted receipts")?;
    tracing::info!(
        challenge_window_secs = terms.challenge_window_secs,
        withdrawal_delay_secs = terms.withdrawal_delay_secs,
        block_secs,
        "payer exits cannot overtake accepted receipts"
    );
    Ok(())
}

impl Settlement {
    /// Catches the deposit watcher up with the chain (waiting out a failing node, and telling
    /// `startup` how far it got), then runs both loops as tasks.
    async fn start(
        self,
        tasks: &mut Tasks,
        shutdown: &CancellationToken,
        startup: &Startup,
    ) -> anyhow::Result<()> {
        tracing::info!("catching up with deposits on the chain");
        startup.waiting_for("catching up with the chain's funds events");
        let caught_up = self
            .funds
            .catch_up(shutdown, |what| startup.waiting_for(what))
            .await
            .context("deposit watcher")?;
        if !caught_up {
            return Ok(());
        }
        tracing::info!("deposits caught up");
        let Settlement { funds, epochs, .. } = self;
        let funds_shutdown = shutdown.clone();
        tasks.spawn(named("deposit watcher", async move {
            funds.run(funds_shutdown).await.context("deposit watcher")
        }));
        let epochs_shutdown = shutdown.clone();
        tasks.spawn(named("epoch loop", async move {
            epochs.run(epochs_shutdown).await.context("epoch loop")
        }));
        Ok(())
    }
}

async fn named(
    name: &'static str,
    task: impl Future<Output = anyhow::Result<()>>,
) -> (&'static str, anyhow::Result<()>) {
    (name, task.await)
}

type Outcome = Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>;

fn failure_of(outcome: Outcome) -> Option<anyhow::Error> {
    match outcome {
        Ok((_, Ok(()))) => None,
        Ok((name, Err(error))) => {
            tracing::error!(task = name, error = %format!("{error:#}"), "stopped with an error");
            Some(error)
        }
        Err(join_error) if join_error.is_cancelled() => None,
        Err(join_error) => Some(anyhow::anyhow!("a task panicked: {join_error}")),
    }
}

/// Waits up to `grace` for every task, then aborts the ones still running (safe: every part
/// resumes from the ledger). Returns the first failure.
async fn drain(tasks: &mut Tasks, grace: Duration) -> Option<anyhow::Error> {
    let mut first_failure = None;
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(outcome)) => {
                if let Some(error) = failure_of(outcome) {
                    first_failure.get_or_insert(error);
                }
            }
            Ok(None) => return first_failure,
            Err(_) => {
                tracing::warn!(
                    left = tasks.len(),
                    "still busy after the grace period; aborting"
                );
                tasks.shutdown().await;
                return first_failure;
            }
        }
    }
}
