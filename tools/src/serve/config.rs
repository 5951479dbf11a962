//! `tollgate serve`'s configuration: one set of options that is at once the command's flags,
//! the keys of the TOML file and the `TOLLGATE_*` environment variables, so the three can never
//! drift apart. Precedence is flag > environment > file > default: clap resolves the first two,
//! [`ServeOptions::overlay`] lays them over the file, and [`ServeOptions::defaults`] fills the
//! rest from the libraries' own defaults (nothing here repeats a default number).
//!
//! Every key of the file is a flag name with `_` for `-` (`--epoch-secs` is `epoch_secs`, and
//! `TOLLGATE_EPOCH_SECS`); fleet clients are `[[client]]` tables or `--client ID:KEY:PAYEES`, query
//! API tokens `[[api_token]]` tables or `--api-token NAME:SCOPES:TOKEN`. Cluster mode is the
//! `[cluster]` table, whose keys are `tollgate_cluster::ClusterConfig`'s; three of them are also
//! flags: `servers` is `--cluster`, and `--node-id`, `--partitions`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use tollgate_cluster::ClusterConfig;
use tollgate_engine::ledger::{LedgerConfig, UnknownPayers};
use tollgate_engine::receipt::parse_hex;
use tollgate_engine::verify::VerifyConfig;
use tollgate_engine::{Address, Domain};
use tollgate_ingest::server::{ClientAuth, ServerConfig};
use tollgate_settle::chain::{DEV_CHAIN_IDS, mask_url};
use tollgate_settle::epoch::EpochConfig;
use tollgate_settle::exit::COMMIT_LATENCY_BUDGET_SECS_DEFAULT;
use tollgate_settle::submitter::SubmitConfig;
use tollgate_settle::watcher::WatchConfig;

use crate::api::auth::{ApiScope, ApiToken};
use crate::keys::{MASK, Secret};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Readable lines for a terminal.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// What to do with a receipt whose payer never deposited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownPayersPolicy {
    /// Refuse it (`unknown_payer`): the normal mode with a chain.
    Reject,
    /// Accept it without a funds check: chainless mode for load tests and benches.
    Accept,
}

/// A fleet client allowed to connect: `ID:PUBLIC_KEY_HEX:PAYEE[,PAYEE...]` on the command line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientOption {
    /// The client id its HELLO names.
    pub id: u64,
    /// Its ed25519 public key, 64 hex digits.
    pub key: String,
    /// Payee addresses it may submit receipts for.
    pub payees: Vec<String>,
}

impl FromStr for ClientOption {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut fields = text.splitn(3, ':');
        let (Some(id), Some(key), Some(payees)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err("expected ID:PUBLIC_KEY_HEX:PAYEE[,PAYEE...]".into());
        };
        Ok(ClientOption {
            id: id.parse().map_err(|e| format!("client id {id:?}: {e}"))?,
            key: key.to_owned(),
            payees: payees.split(',').map(str::to_owned).collect(),
        })
    }
}

/// A query API bearer token: `NAME:SCOPE[,SCOPE]:TOKEN` on the command line, where a scope is
/// `operator` or `auditor` and TOKEN is the token itself or the path of a file holding it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenOption {
    /// What logs call its holder.
    pub name: String,
    /// What it may read.
    pub scopes: Vec<ApiScope>,
    /// The token, or the path of a file holding it.
    pub token: Secret,
}

impl FromStr for ApiTokenOption {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut fields = text.splitn(3, ':');
        let (Some(name), Some(scopes), Some(token)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err("expected NAME:SCOPE[,SCOPE]:TOKEN".into());
        };
        Ok(ApiTokenOption {
            name: name.to_owned(),
            scopes: scopes
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()?,
            token: token.into(),
        })
    }
}

impl ApiTokenOption {
    fn resolve(&self) -> anyhow::Result<ApiToken> {
        let secret = self
            .token
            .read()
            .with_context(|| format!("api token {:?}: reading its file", self.name))?;
        ApiToken::new(&self.name, self.scopes.clone(), &secret).map_err(anyhow::Error::msg)
    }
}

/// Cluster mode's options: the `[cluster]` table of the file (docs/CLUSTER.md), three of them
/// also flags. Cluster mode is on when any is given.
#[derive(Clone, Debug, Default, PartialEq, Args, Serialize, Deserialize)]
pub struct ClusterOptions {
    /// Join the cluster on these NATS servers, `nats://host:port[,...]` (cluster mode,
    /// docs/CLUSTER.md); without it serve runs standalone.
    #[arg(long = "cluster", env = "TOLLGATE_CLUSTER", value_delimiter = ',')]
    pub servers: Option<Vec<String>>,
    /// This node's name in the cluster, unique per node (cluster mode).
    #[arg(long, env = "TOLLGATE_NODE_ID")]
    pub node_id: Option<String>,
    /// Payer partitions, fixed when the cluster is created (cluster mode) [default: 16].
    #[arg(long, env = "TOLLGATE_PARTITIONS")]
    pub partitions: Option<u32>,
    /// The `[cluster]` table's other keys (resource names, replicas, lease timing): file only.
    #[arg(skip)]
    #[serde(flatten)]
    pub settings: toml::Table,
}

impl ClusterOptions {
    fn is_empty(&self) -> bool {
        *self == ClusterOptions::default()
    }

    /// The cluster to join, `None` for standalone mode; an error names the key.
    fn resolve(&self) -> anyhow::Result<Option<ClusterConfig>> {
        if self.is_empty() {
            return Ok(None);
        }
        if self.servers.is_none() {
            anyhow::bail!(
                "cluster: cluster settings are given but no NATS servers to join (--cluster \
                 nats://host:port[,...], or `servers` in the [cluster] table)"
            );
        }
        let config: ClusterConfig = toml::Table::try_from(self)?
            .try_into()
            .context("cluster: invalid [cluster] table")?;
        config.validate().context("cluster")?;
        Ok(Some(config))
    }
}

/// Every option of `tollgate serve`. All are optional here; [`ServeOptions::defaults`] says what
/// an absent one means, and `--print-config` shows the result.
#[derive(Clone, Debug, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeOptions {
    /// TCP address for fleets' binary protocol [default: 127.0.0.1:7402].
    #[arg(long, env = "TOLLGATE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// HTTP address for the query API, /metrics, /healthz and /readyz [default: 127.0.0.1:7403].
    #[arg(long, env = "TOLLGATE_HTTP")]
    pub http: Option<SocketAddr>,
    /// RocksDB directory of the ledger [default: tollgate-data].
    #[arg(long, env = "TOLLGATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log lines as readable text or JSON [default: text].
    #[arg(long, env = "TOLLGATE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Receipts of payers that never deposited: reject, or accept without a funds check
    /// (chainless mode; required when no chain is configured) [default: reject].
    #[arg(long, env = "TOLLGATE_UNKNOWN_PAYERS")]
    pub unknown_payers: Option<UnknownPayersPolicy>,

    /// EVM chain id receipts are signed for [default: 31337].
    #[arg(long, env = "TOLLGATE_CHAIN_ID")]
    pub chain_id: Option<u64>,
    /// Settlement contract address; with --rpc-url it turns settlement on.
    #[arg(long, env = "TOLLGATE_CONTRACT")]
    pub contract: Option<String>,
    /// JSON-RPC URL of the settlement chain; with --contract it turns settlement on. Logs and
    /// --print-config show its scheme, host and port only (it often carries an API key).
    #[arg(long, env = "TOLLGATE_RPC_URL")]
    pub rpc_url: Option<String>,
    /// The operator's secp256k1 key that signs epoch commits: 64 hex digits, or a file (mode
    /// 0600; a file group or others may read is refused) holding them. Prefer the environment
    /// or a file to a flag.
    #[arg(long, env = "TOLLGATE_OPERATOR_KEY", hide_env_values = true)]
    pub operator_key: Option<Secret>,
    /// Block to read deposits from on a fresh data directory (the contract's deployment block)
    /// [default: 0].
    #[arg(long, env = "TOLLGATE_START_BLOCK")]
    pub start_block: Option<u64>,
    /// Blocks on top before a deposit counts and before an epoch commit is final (the ledger
    /// settles it only then) [default: 0 on dev chains, 12 elsewhere].
    #[arg(long, env = "TOLLGATE_CONFIRMATIONS")]
    pub confirmations: Option<u64>,
    /// How often to poll the chain for deposits once caught up, in milliseconds [default: 1000].
    #[arg(long, env = "TOLLGATE_FUNDS_POLL_MS")]
    pub funds_poll_ms: Option<u64>,
    /// Seal an epoch at least this often, in seconds [default: 60].
    #[arg(long, env = "TOLLGATE_EPOCH_SECS")]
    pub epoch_secs: Option<u64>,
    /// Seal an epoch as soon as it holds this many receipts [default: 1000000].
    #[arg(long, env = "TOLLGATE_EPOCH_RECEIPTS")]
    pub epoch_receipts: Option<u64>,
    /// Debits plus credits per commit transaction; larger epochs go in numbered parts
    /// [default: 1500].
    #[arg(long, env = "TOLLGATE_PART_ENTRIES_MAX")]
    pub part_entries_max: Option<usize>,
    /// Seconds a sealed epoch's commit may take to land, beyond the challenge window and the
    /// confirmations (sending, fee bumps, a slow chain). At start the contract's
    /// withdrawalDelaySecs must exceed epoch_secs + challenge window + this + confirmations x
    /// block time + funds_poll_ms, or serve refuses to start: a payer's exit could overtake
    /// receipts already accepted [default: 30].
    #[arg(long, env = "TOLLGATE_COMMIT_LATENCY_BUDGET_SECS")]
    pub commit_latency_budget_secs: Option<u64>,

    /// Signature verification threads [default: every core].
    #[arg(long, env = "TOLLGATE_VERIFY_THREADS")]
    pub verify_threads: Option<usize>,
    /// Receipts per batch equation [default: 256].
    #[arg(long, env = "TOLLGATE_VERIFY_BATCH")]
    pub verify_batch: Option<usize>,
    /// Anti-replay window per channel, in nonces (a multiple of 64; fixed when the data
    /// directory is created) [default: 1024].
    #[arg(long, env = "TOLLGATE_WINDOW_NONCES")]
    pub window_nonces: Option<u32>,
    /// Keep every accepted receipt, as signed, in the receipt archive: without it nobody can
    /// audit your epochs. Fixed when the data directory is created [default: true].
    #[arg(long, env = "TOLLGATE_ARCHIVE_RECEIPTS")]
    pub archive_receipts: Option<bool>,
    /// Epochs the archive keeps after an epoch is final onchain before pruning it
    /// [default: 24].
    #[arg(long, env = "TOLLGATE_ARCHIVE_RETENTION_EPOCHS")]
    pub archive_retention_epochs: Option<u64>,
    /// Receipts timestamped further than this from the server clock are refused, in
    /// milliseconds [default: 300000].
    #[arg(long, env = "TOLLGATE_TIMESTAMP_SKEW_MS")]
    pub timestamp_skew_ms: Option<u64>,
    /// Channels kept in memory between write groups [default: 100000].
    #[arg(long, env = "TOLLGATE_CHANNELS_CACHED_MAX")]
    pub channels_cached_max: Option<usize>,
    /// Session anti-replay windows, one per (session key, payee), kept in memory between write
    /// groups [default: 300000].
    #[arg(long, env = "TOLLGATE_SESSION_WINDOWS_CACHED_MAX")]
    pub session_windows_cached_max: Option<usize>,

    /// Largest frame accepted, header included, in bytes.
    #[arg(long, env = "TOLLGATE_FRAME_BYTES_MAX")]
    pub frame_bytes_max: Option<u32>,
    /// Most receipts in one batch [default: 4096].
    #[arg(long, env = "TOLLGATE_BATCH_RECEIPTS_MAX")]
    pub batch_receipts_max: Option<u32>,
    /// Most batches awaiting their ack per connection [default: 16].
    #[arg(long, env = "TOLLGATE_BATCHES_IN_FLIGHT_MAX")]
    pub batches_in_flight_max: Option<u32>,
    /// Open connections; one more is refused [default: 1024].
    #[arg(long, env = "TOLLGATE_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,
    /// Milliseconds from connect to a valid HELLO [default: 5000].
    #[arg(long, env = "TOLLGATE_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Milliseconds of silence allowed with nothing in flight [default: 60000].
    #[arg(long, env = "TOLLGATE_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Milliseconds from a frame's first byte to its last [default: 10000].
    #[arg(long, env = "TOLLGATE_READ_DEADLINE_MS")]
    pub read_deadline_ms: Option<u64>,
    /// Milliseconds one write may wait on a client that does not read [default: 10000].
    #[arg(long, env = "TOLLGATE_WRITE_DEADLINE_MS")]
    pub write_deadline_ms: Option<u64>,
    /// Milliseconds shutdown waits for connections to finish acknowledging [default: 30000].
    #[arg(long, env = "TOLLGATE_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,

    /// A fleet client, `ID:PUBLIC_KEY_HEX:PAYEE[,PAYEE...]`; repeat for more (`;` between them
    /// in the environment). None configured: open mode, loopback only.
    #[arg(long = "client", env = "TOLLGATE_CLIENTS", value_delimiter = ';')]
    #[serde(rename = "client")]
    pub clients: Option<Vec<ClientOption>>,

    /// A query API bearer token, `NAME:SCOPE[,SCOPE]:TOKEN` (scopes `operator`, `auditor`;
    /// TOKEN inline or a file path); repeat for more (`;` between them in the environment).
    /// None configured: the API is open to anyone, which needs a loopback `http` address.
    #[arg(long = "api-token", env = "TOLLGATE_API_TOKENS", value_delimiter = ';')]
    #[serde(rename = "api_token")]
    pub api_tokens: Option<Vec<ApiTokenOption>>,

    /// Cluster mode (the `[cluster]` table).
    #[command(flatten)]
    #[serde(default, skip_serializing_if = "ClusterOptions::is_empty")]
    pub cluster: ClusterOptions,
}

/// Where the settlement chain is, when settlement is on.
#[derive(Clone, Debug)]
pub struct ChainSettings {
    /// JSON-RPC URL.
    pub rpc_url: String,
    /// The operator key, as given (hex or a file path).
    pub operator_key: Secret,
    /// Deposit watcher start on a fresh data directory.
    pub start_block: u64,
    /// Funds poll interval once caught up.
    pub funds_poll_ms: u64,
    /// Time a commit may take to land, for the start-up check against the payer exit delay.
    pub commit_latency_budget_secs: u64,
    /// Deposit watcher limits.
    pub watch: WatchConfig,
    /// Epoch sealing.
    pub epochs: EpochConfig,
    /// Commit transaction limits.
    pub submit: SubmitConfig,
}

/// The checked configuration `serve` runs with.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Fleet protocol address.
    pub listen: SocketAddr,
    /// HTTP API address.
    pub http: SocketAddr,
    /// Who may read the query API; none is open mode (loopback only).
    pub api_tokens: Vec<ApiToken>,
    /// Ledger directory.
    pub data_dir: PathBuf,
    /// Log line format.
    pub log_format: LogFormat,
    /// The deployment receipts are signed for.
    pub domain: Domain,
    /// Ledger policies.
    pub ledger: LedgerConfig,
    /// Verify pool.
    pub verify: VerifyConfig,
    /// Ingest limits and clients.
    pub server: ServerConfig,
    /// `None`: chainless mode.
    pub chain: Option<ChainSettings>,
    /// `None`: standalone mode.
    pub cluster: Option<ClusterConfig>,
}

impl ServeOptions {
    /// Every option at its default, taken from the libraries' own defaults.
    pub fn defaults() -> Self {
        let server = ServerConfig::new(Domain::default());
        let ledger = LedgerConfig::default();
        let verify = VerifyConfig::default();
        let epochs = EpochConfig::default();
        ServeOptions {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 7402))),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 7403))),
            data_dir: Some(PathBuf::from("tollgate-data")),
            log_format: Some(LogFormat::Text),
            unknown_payers: Some(UnknownPayersPolicy::Reject),
            chain_id: Some(DEV_CHAIN_IDS[0]),
            contract: None,
            rpc_url: None,
            operator_key: None,
            start_block: Some(0),
            // Depends on the chain id; filled in by `with_chain_defaults`.
            confirmations: None,
            funds_poll_ms: Some(1_000),
            epoch_secs: Some(epochs.epoch_interval_ms / 1_000),
            epoch_receipts: Some(epochs.epoch_receipts_max),
            part_entries_max: Some(SubmitConfig::default().part_entries_max),
            commit_latency_budget_secs: Some(COMMIT_LATENCY_BUDGET_SECS_DEFAULT),
            verify_threads: Some(verify.threads),
            verify_batch: Some(verify.batch_receipts_max),
            window_nonces: Some(ledger.window_nonces),
            archive_receipts: Some(ledger.archive_receipts),
            archive_retention_epochs: Some(epochs.archive_retention_epochs),
            timestamp_skew_ms: Some(ledger.timestamp_skew_ms),
            channels_cached_max: Some(ledger.channels_cached_max),
            session_windows_cached_max: Some(ledger.session_windows_cached_max),
            frame_bytes_max: Some(server.frame_bytes_max),
            batch_receipts_max: Some(server.batch_receipts_max),
            batches_in_flight_max: Some(server.batches_in_flight_max),
            connections_max: Some(server.connections_max),
            handshake_timeout_ms: Some(server.handshake_timeout_ms),
            idle_timeout_ms: Some(server.idle_timeout_ms),
            read_deadline_ms: Some(server.read_deadline_ms),
            write_deadline_ms: Some(server.write_deadline_ms),
            shutdown_grace_ms: Some(server.shutdown_grace_ms),
            clients: Some(Vec::new()),
            api_tokens: Some(Vec::new()),
            cluster: ClusterOptions::default(),
        }
    }

    /// Reads a TOML file of options; an unknown key or a bad value is named in the error.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// `self` with every option `over` sets replacing ours (key by key inside the `[cluster]`
    /// table). Done through TOML tables so no option can be forgotten here when one is added.
    pub fn overlay(self, over: &ServeOptions) -> anyhow::Result<Self> {
        let mut merged = toml::Table::try_from(self)?;
        for (key, value) in toml::Table::try_from(over)? {
            match (merged.get_mut(&key), value) {
                (Some(toml::Value::Table(ours)), toml::Value::Table(theirs)) => ours.extend(theirs),
                (_, value) => {
                    merged.insert(key, value);
                }
            }
        }
        Ok(merged.try_into()?)
    }

    /// Defaults, then the file, then the environment and flags (already merged by clap).
    pub fn effective(file: Option<&Path>, given: &ServeOptions) -> anyhow::Result<Self> {
        let mut options = ServeOptions::defaults();
        if let Some(path) = file {
            options = options.overlay(&ServeOptions::from_file(path)?)?;
        }
        options = options.overlay(given)?;
        if options.confirmations.is_none() {
            let dev_chain = options
                .chain_id
                .is_some_and(|id| DEV_CHAIN_IDS.contains(&id));
            let confirmations = if dev_chain {
                0
            } else {
                WatchConfig::default().confirmations
            };
            options.confirmations = Some(confirmations);
        }
        Ok(options)
    }

    /// The options as a TOML file, secrets masked: what `--print-config` prints.
    pub fn to_masked_toml(&self) -> anyhow::Result<String> {
        let mut shown = self.clone();
        if shown
            .operator_key
            .as_ref()
            .is_some_and(|key| !key.is_file())
        {
            shown.operator_key = Some(MASK.into());
        }
        shown.rpc_url = shown.rpc_url.as_deref().map(mask_url);
        // NATS URLs may carry a user and password too.
        for server in shown.cluster.servers.iter_mut().flatten() {
            *server = mask_url(server);
        }
        for token in shown.api_tokens.iter_mut().flatten() {
            if !token.token.is_file() {
                token.token = MASK.into();
            }
        }
        Ok(toml::to_string(&shown)?)
    }

    /// Checks every option and builds the configuration; an error names the key and the reason.
    pub fn resolve(&self) -> anyhow::Result<ServeConfig> {
        let chain_id = required(self.chain_id, "chain_id")?;
        let contract = self
            .contract
            .as_deref()
            .map(|text| parse_option::<Address>("contract", text))
            .transpose()?;
        let domain = Domain {
            chain_id,
            contract: contract.unwrap_or_default(),
        };
        let unknown_payers = required(self.unknown_payers, "unknown_payers")?;
        let chain = match (&self.rpc_url, contract) {
            (Some(rpc_url), Some(_)) => Some(self.chain_settings(rpc_url)?),
            (None, None) => None,
            (Some(_), None) => anyhow::bail!("rpc_url: settlement also needs contract"),
            (None, Some(_)) => anyhow::bail!("contract: settlement also needs rpc_url"),
        };
        let cluster = self.cluster.resolve()?;
        if chain.is_none() && unknown_payers == UnknownPayersPolicy::Reject {
            anyhow::bail!(
                "unknown_payers: with no chain configured (rpc_url and contract) no payer can \
                 deposit, so `reject` would refuse every receipt; set unknown_payers = accept for \
                 chainless mode"
            );
        }

        let mut ledger = LedgerConfig {
            window_nonces: required(self.window_nonces, "window_nonces")?,
            timestamp_skew_ms: required(self.timestamp_skew_ms, "timestamp_skew_ms")?,
            unknown_payers: match unknown_payers {
                UnknownPayersPolicy::Reject => UnknownPayers::Reject,
                UnknownPayersPolicy::Accept => UnknownPayers::Accept,
            },
            channels_cached_max: required(self.channels_cached_max, "channels_cached_max")?,
            session_windows_cached_max: required(
                self.session_windows_cached_max,
                "session_windows_cached_max",
            )?,
            archive_receipts: required(self.archive_receipts, "archive_receipts")?,
            ..LedgerConfig::default()
        };
        // More producers than connections can never be live at once.
        ledger.producers_cached_max = ledger
            .producers_cached_max
            .max(required(self.connections_max, "connections_max")?);
        let verify = VerifyConfig {
            threads: positive(self.verify_threads, "verify_threads")?,
            batch_receipts_max: positive(self.verify_batch, "verify_batch")?,
            ..VerifyConfig::default()
        };

        let mut server = ServerConfig::new(domain);
        server.clients = self.client_auths()?;
        server.frame_bytes_max = required(self.frame_bytes_max, "frame_bytes_max")?;
        server.batch_receipts_max = required(self.batch_receipts_max, "batch_receipts_max")?;
        server.batches_in_flight_max =
            required(self.batches_in_flight_max, "batches_in_flight_max")?;
        server.connections_max = required(self.connections_max, "connections_max")?;
        server.handshake_timeout_ms = required(self.handshake_timeout_ms, "handshake_timeout_ms")?;
        server.idle_timeout_ms = required(self.idle_timeout_ms, "idle_timeout_ms")?;
        server.read_deadline_ms = required(self.read_deadline_ms, "read_deadline_ms")?;
        server.write_deadline_ms = required(self.write_deadline_ms, "write_deadline_ms")?;
        server.shutdown_grace_ms = required(self.shutdown_grace_ms, "shutdown_grace_ms")?;

        let listen = required(self.listen, "listen")?;
        if server.clients.is_empty() && !listen.ip().is_loopback() {
            anyhow::bail!(
                "listen: {listen} is not a loopback address and no client is configured; open \
                 mode (any client, any payee) is only allowed on loopback"
            );
        }
        let http = required(self.http, "http")?;
        let api_tokens = self.api_tokens()?;
        if api_tokens.is_empty() && !http.ip().is_loopback() {
            anyhow::bail!(
                "http: {http} is not a loopback address and no api_token is configured; an open \
                 query API (anyone reads every balance) is only allowed on loopback"
            );
        }
        Ok(ServeConfig {
            listen,
            http,
            api_tokens,
            data_dir: required(self.data_dir.clone(), "data_dir")?,
            log_format: required(self.log_format, "log_format")?,
            domain,
            ledger,
            verify,
            server,
            chain,
            cluster,
        })
    }

    fn chain_settings(&self, rpc_url: &str) -> anyhow::Result<ChainSettings> {
        tollgate_settle::chain::parse_url(rpc_url).context("rpc_url")?;
        let operator_key = self.operator_key.clone().context(
            "operator_key: settlement needs the operator's key (TOLLGATE_OPERATOR_KEY, or a file)",
        )?;
        let epoch_secs = positive(self.epoch_secs, "epoch_secs")?;
        let confirmations = required(self.confirmations, "confirmations")?;
        Ok(ChainSettings {
            rpc_url: rpc_url.to_owned(),
            operator_key,
            start_block: required(self.start_block, "start_block")?,
            funds_poll_ms: positive(self.funds_poll_ms, "funds_poll_ms")?,
            commit_latency_budget_secs: required(
                self.commit_latency_budget_secs,
                "commit_latency_budget_secs",
            )?,
            watch: WatchConfig {
                confirmations,
                ..WatchConfig::default()
            },
            epochs: EpochConfig {
                epoch_interval_ms: epoch_secs
                    .checked_mul(1_000)
                    .context("epoch_secs: too large")?,
                epoch_receipts_max: positive(self.epoch_receipts, "epoch_receipts")?,
                archive_retention_epochs: required(
                    self.archive_retention_epochs,
                    "archive_retention_epochs",
                )?,
                ..EpochConfig::default()
            },
            submit: SubmitConfig {
                part_entries_max: positive(self.part_entries_max, "part_entries_max")?,
                // One depth for both directions: a deposit counts, and a commit is final (the
                // ledger settles it), once that many blocks are on top.
                confirmations,
                ..SubmitConfig::default()
            },
        })
    }

    fn api_tokens(&self) -> anyhow::Result<Vec<ApiToken>> {
        let mut names = BTreeSet::new();
        let mut tokens = Vec::new();
        for option in self.api_tokens.iter().flatten() {
            if !names.insert(option.name.as_str()) {
                anyhow::bail!("api token {:?}: configured twice", option.name);
            }
            tokens.push(option.resolve()?);
        }
        Ok(tokens)
    }

    fn client_auths(&self) -> anyhow::Result<Vec<ClientAuth>> {
        let mut seen = BTreeSet::new();
        let mut auths = Vec::new();
        for client in self.clients.iter().flatten() {
            let key = format!("client {}", client.id);
            if !seen.insert(client.id) {
                anyhow::bail!("{key}: configured twice");
            }
            if client.id == crate::x402::CLIENT_ID {
                anyhow::bail!("{key}: the id is reserved for the x402 facilitator's settles");
            }
            let payees = client
                .payees
                .iter()
                .map(|payee| parse_option::<Address>(&key, payee))
                .collect::<anyhow::Result<BTreeSet<_>>>()?;
            if payees.is_empty() {
                anyhow::bail!("{key}: lists no payee");
            }
            auths.push(ClientAuth {
                client_id: client.id,
                key: parse_hex::<32>(&client.key)
                    .map_err(|e| anyhow::anyhow!("{key}: key: {e}"))?,
                payees,
            });
        }
        Ok(auths)
    }
}

fn required<T>(value: Option<T>, key: &str) -> anyhow::Result<T> {
    value.with_context(|| format!("{key}: missing"))
}

fn positive<T: Default + PartialEq>(value: Option<T>, key: &str) -> anyhow::Result<T> {
    let value = required(value, key)?;
    if value == T::default() {
        anyhow::bail!("{key}: must be greater than zero");
    }
    Ok(value)
}

fn parse_option<T: FromStr>(key: &str, text: &str) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| anyhow::anyhow!("{key}: {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_flags_and_the_cluster_table_merge_key_by_key() {
        assert!(
            ServeOptions::defaults()
                .cluster
                .resolve()
                .expect("ok")
                .is_none(),
            "standalone by default"
        );
        let file: ServeOptions = toml::from_str(
            "unknown_payers = \"accept\"\n[cluster]\nnode_id = \"file\"\nlease_ttl_ms = 4000\n\
             lease_heartbeat_ms = 1000\n",
        )
        .expect("a config file");
        let flags = ServeOptions {
            cluster: ClusterOptions {
                servers: Some(vec!["nats://tollgate:s3cret@127.0.0.1:4222".into()]),
                node_id: Some("flag".into()),
                ..ClusterOptions::default()
            },
            ..ServeOptions::default()
        };
        let merged = ServeOptions::defaults()
            .overlay(&file)
            .and_then(|options| options.overlay(&flags))
            .expect("merged");
        let cluster = merged
            .resolve()
            .expect("valid")
            .cluster
            .expect("cluster mode");
        assert_eq!(cluster.node_id, "flag", "a flag beats the file");
        assert_eq!(cluster.lease_ttl_ms, 4_000, "the file's other keys stay");
        assert_eq!(
            cluster.servers,
            vec!["nats://tollgate:s3cret@127.0.0.1:4222".to_string()]
        );
        let shown = merged.to_masked_toml().expect("toml");
        assert!(
            !shown.contains("s3cret") && shown.contains("127.0.0.1:4222"),
            "{shown}"
        );
        assert_eq!(cluster.partitions, ClusterConfig::default().partitions);

        let with_chain = ServeOptions {
            rpc_url: Some("http://127.0.0.1:8545".into()),
            contract: Some("0x00000000000000000000000000000000000000aa".into()),
            operator_key: Some("7e".repeat(32).as_str().into()),
            confirmations: Some(0),
            unknown_payers: Some(UnknownPayersPolicy::Accept),
            ..merged.clone()
        };
        let settling = with_chain.resolve().expect("settlement in cluster mode");
        assert!(settling.chain.is_some() && settling.cluster.is_some());
        // The funds check works in cluster mode too: deposits travel through the logs.
        let rejecting = ServeOptions {
            unknown_payers: Some(UnknownPayersPolicy::Reject),
            ..with_chain
        };
        let checked = rejecting.resolve().expect("a funds check in cluster mode");
        assert_eq!(checked.ledger.unknown_payers, UnknownPayers::Reject);

        let no_servers = ServeOptions::defaults().overlay(&file).expect("merged");
        let refused = no_servers
            .resolve()
            .expect_err("cluster keys without servers");
        assert!(refused.to_string().contains("--cluster"), "{refused}");

        let typo: ServeOptions = toml::from_str(
            "[cluster]\nservers = [\"nats://h:1\"]\nnode_id = \"a\"\nlease_tll_ms = 1\n",
        )
        .expect("parses as a table");
        let refused = typo.cluster.resolve().expect_err("an unknown cluster key");
        assert!(
            format!("{refused:#}").contains("lease_tll_ms"),
            "{refused:#}"
        );
    }

    #[test]
    fn the_example_cluster_table_lists_every_key_with_its_default() {
        let example = include_str!("../../../tollgate.example.toml");
        let table: String = example
            .lines()
            .skip_while(|line| *line != "# [cluster]")
            .take_while(|line| line.starts_with("# "))
            .map(|line| format!("{}\n", &line[2..]))
            .collect();
        let options: ServeOptions = toml::from_str(&table).expect("the uncommented table parses");
        let documented = toml::Table::try_from(&options.cluster).expect("a table");
        let all = toml::Table::try_from(ClusterConfig::default()).expect("a table");
        assert_eq!(
            documented.keys().collect::<BTreeSet<_>>(),
            all.keys().collect::<BTreeSet<_>>()
        );
        let config = options.cluster.resolve().expect("valid").expect("cluster");
        assert_eq!(
            config,
            ClusterConfig {
                servers: config.servers.clone(),
                node_id: config.node_id.clone(),
                ..ClusterConfig::default()
            },
            "every documented value is the default"
        );
    }

    #[test]
    fn debug_never_shows_the_operator_key() {
        let key = "7e".repeat(32);
        let options = ServeOptions {
            rpc_url: Some("http://127.0.0.1:8545".into()),
            contract: Some("0x00000000000000000000000000000000000000aa".into()),
            operator_key: Some(key.as_str().into()),
            confirmations: Some(0),
            ..ServeOptions::defaults()
        };
        let config = options.resolve().expect("valid options");
        let chain = config.chain.as_ref().expect("settlement on");
        for shown in [
            format!("{options:?}"),
            format!("{config:?}"),
            format!("{chain:?}"),
        ] {
            assert!(!shown.contains(&key), "operator key in {shown}");
        }
    }

    #[test]
    fn an_open_query_api_is_refused_off_loopback_and_tokens_are_never_shown() {
        let public = ServeOptions {
            http: Some("0.0.0.0:7403".parse().expect("address")),
            unknown_payers: Some(UnknownPayersPolicy::Accept),
            ..ServeOptions::defaults()
        };
        let refused = public.resolve().expect_err("open API off loopback");
        assert!(refused.to_string().contains("no api_token"), "{refused}");

        let token = "s3cret-token-with-enough-characters";
        let with_token = ServeOptions {
            api_tokens: Some(vec![
                format!("ops:operator,auditor:{token}")
                    .parse()
                    .expect("token option"),
            ]),
            ..public
        };
        let config = with_token.resolve().expect("a token closes the API");
        assert_eq!(config.api_tokens.len(), 1);
        for shown in [
            format!("{with_token:?}"),
            format!("{config:?}"),
            with_token.to_masked_toml().expect("toml"),
        ] {
            assert!(!shown.contains(token), "token in {shown}");
        }

        let short = ServeOptions {
            api_tokens: Some(vec!["ops:operator:short".parse().expect("token option")]),
            unknown_payers: Some(UnknownPayersPolicy::Accept),
            ..ServeOptions::defaults()
        };
        let refused = short.resolve().expect_err("a short token");
        assert!(refused.to_string().contains("at least"), "{refused}");
        assert!("ops:root:x".parse::<ApiTokenOption>().is_err());
    }
}
