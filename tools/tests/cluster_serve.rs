//! `tollgate serve --cluster` as real processes: a real 3-server NATS JetStream cluster, three
//! spawned `tollgate serve --cluster` nodes with 16 partitions, and a fleet of Rust clients
//! streaming receipts from many payers through all three. The first node takes every partition
//! and hands all but its share to the other two as they join (rebalancing); it is then killed
//! with SIGKILL mid-stream; the clients re-send what it left unacked through the next
//! node in their lists, the surviving nodes take its partitions over (the killed node had
//! checkpointed them and purged their logs, so the survivors restore checkpoints and replay the
//! rest of the logs), then one of the three NATS servers is killed with SIGKILL after two thirds
//! of the stream (the R3 log keeps its quorum), and every acked receipt must be counted exactly
//! once: each payer's total in
//! the partition ledgers (read after the nodes stopped) equals what the acks accepted. Also checked: QUERY_BALANCE is
//! answered by every node for every payer (routed to the payer's partition owner) with what was
//! acked, and so is `GET /v1/payers/{payer}` on the HTTP port (with the standalone access
//! policy), GRANT is refused as `not_in_cluster`, and the HTTP port serves `/healthz` and refuses
//! the routes that need the whole cluster's ledger. The funds check is on (`unknown_payers =
//! reject`): deposits and withdrawal requests reach the partitions only through the funds
//! watcher's marks in their logs, so the fleet streams only once every deposit shows, a payer
//! funded mid-run spends exactly its deposit, a withdrawal request stops spending once confirmed
//! (anvil's blocks count at once here, `--confirmations 0`, so the unconfirmed-requests set is
//! always empty: `cluster/tests/data_path.rs` covers that set), and an unfunded payer is refused.
//! Any node serves a channel's proof in a final epoch, rebuilt from the partitions' summaries,
//! which the contract accepts. A second test has a payer's exit overtake debits the cluster
//! accepted while the chain was out of its reach: the epoch is committed without the uncovered
//! amount (a shortfall) and settling goes on. A third has an idle cluster commit nothing while
//! deposits and marks reach the logs. The tests take turns: each needs both cores.

mod common;
#[path = "../../cluster/tests/harness/mod.rs"]
#[allow(dead_code)]
mod harness;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy::primitives::B256;
use ed25519_dalek::SigningKey;
use harness::NatsCluster;
use tollgate_cluster::partition_of;
use tollgate_engine::grant::{Grant, PayeeScope};
use tollgate_engine::pipeline::{Engine, EngineConfig};
use tollgate_engine::{
    Address, Domain, PayerKey, Reason, Receipt, UnsignedReceipt, Verifier, VerifyConfig, VerifyPool,
};
use tollgate_ingest::client::{Client, ClientConfig, ClientError};
use tollgate_ingest::wire::ErrorCode;
use tollgate_query::client::{Credentials, QueryClient, QueryError};
use tollgate_settle::merkle::{self, MerkleError, PartitionedTree};
use tollgate_tools::serve::PARTITIONS_OWNED;
use tollgate_tools::serve::process::ServerProcess;

const TOLLGATE: &str = env!("CARGO_BIN_EXE_tollgate");
const PARTITIONS: u32 = 16;
const NODES: usize = 3;
const PAYERS: u32 = 1_000;
/// Producers (fleet clients), two starting at each node.
const PRODUCERS: u64 = 6;
/// Receipts each producer streams: 201,600 in all (the issue asks for at least 200,000), about
/// 50 s on two cores. `TOLLGATE_CLUSTER_RECEIPTS` (a total, rounded down to a multiple of
/// `PRODUCERS * CHUNK`) runs the same test at another scale.
const RECEIPTS_PER_PRODUCER_DEFAULT: u64 = 33_600;

fn receipts_per_producer() -> u64 {
    std::env::var("TOLLGATE_CLUSTER_RECEIPTS").map_or(RECEIPTS_PER_PRODUCER_DEFAULT, |total| {
        let total: u64 = total
            .parse()
            .expect("TOLLGATE_CLUSTER_RECEIPTS: a number of receipts");
        (total / PRODUCERS / CHUNK).max(1) * CHUNK
    })
}
/// Receipts a producer submits before awaiting their verdicts.
const CHUNK: u64 = 400;
/// Bound for anything that must happen eventually (elections, lease expiry, replays).
const DEADLINE: Duration = Duration::from_secs(60);
/// Each payer's deposit onchain: far above what the fleet spends.
const DEPOSIT: u128 = 1_000_000_000;
/// The deposit of a payer funded while the cluster runs (index `PAYERS`), which it then spends
/// to the last unit.
const LATE_DEPOSIT: u128 = 50;

/// Short leases so the killed node's partitions move within seconds, and a checkpoint every few
/// log messages so the logs are purged and the new owners must restore checkpoints.
const CLUSTER_TABLE: &str = "[cluster]\nlease_ttl_ms = 2000\nlease_heartbeat_ms = 500\n\
                             checkpoint_every_messages = 5\ncheckpoint_every_ms = 200\n";

/// The query API's operator token on every node: the API is not open, so the cluster router
/// must apply the same access policy as a standalone server.
const OPERATOR_TOKEN: &str = "cluster-serve-test-operator-token-0123456789";

/// The arguments of node `name` of a cluster on `servers` with `partitions`, its config file
/// (`cluster.toml`), data directory and log in `dir`.
fn node_args(
    dir: &Path,
    servers: &str,
    name: &str,
    (partitions, unknown_payers): (u32, &str),
) -> Vec<String> {
    [
        "--config",
        &dir.join("cluster.toml").display().to_string(),
        "--cluster",
        servers,
        "--node-id",
        name,
        "--partitions",
        &partitions.to_string(),
        "--unknown-payers",
        unknown_payers,
        "--verify-threads",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--api-token",
        &format!("ops:operator:{OPERATOR_TOKEN}"),
        "--data-dir",
        &dir.join(name).display().to_string(),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// The settlement chain every node commits the cluster's epochs to: a real anvil with the
/// contract deployed (dev key 0 operates it) and every payer funded.
struct Chain {
    anvil: alloy::node_bindings::AnvilInstance,
    deployed: tollgate_settle::DeployedAddresses,
    domain: Domain,
}

impl Chain {
    async fn start(payers: &[PayerKey]) -> Chain {
        let anvil = common::spawn_anvil();
        let deployed = common::deploy(&anvil, &tollgate_settle::DeployParams::dev()).await;
        common::fund(&anvil, &deployed, payers, DEPOSIT).await;
        let domain = Domain {
            chain_id: deployed.chain_id,
            contract: Address(deployed.settlement.0.0),
        };
        Chain {
            anvil,
            deployed,
            domain,
        }
    }

    /// Settlement on, every epoch a second, deposits and commits final at once.
    fn args(&self) -> Vec<String> {
        self.args_via(&self.anvil.endpoint())
    }

    /// [`Chain::args`] with the chain reached at `rpc_url`.
    fn args_via(&self, rpc_url: &str) -> Vec<String> {
        [
            "--rpc-url",
            rpc_url,
            "--contract",
            &self.deployed.settlement.to_string(),
            "--chain-id",
            &self.deployed.chain_id.to_string(),
            "--start-block",
            &self.deployed.block.to_string(),
            "--confirmations",
            "0",
            "--epoch-secs",
            "1",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect()
    }

    async fn reader(&self) -> tollgate_settle::ContractReader {
        tollgate_settle::ContractReader::connect(
            &self.anvil.endpoint(),
            self.deployed.chain_id,
            self.deployed.settlement,
        )
        .await
        .expect("a contract reader")
    }
}

fn start_node(nats: &NatsCluster, dir: &Path, name: &str, chain: &Chain) -> ServerProcess {
    // A payer without a deposit is refused: the funds check is on.
    let mut args = node_args(dir, &nats.urls().join(","), name, (PARTITIONS, "reject"));
    args.extend(chain.args());
    let operator_key = hex::encode(common::dev_key(&chain.anvil, 0).to_bytes());
    ServerProcess::start(
        TOLLGATE.as_ref(),
        &args,
        Some(&dir.join(format!("{name}.log"))),
        &[("TOLLGATE_OPERATOR_KEY", &operator_key)],
    )
    .expect("tollgate serve --cluster starts")
}

fn query_client(node: &ServerProcess, credentials: Credentials) -> QueryClient {
    QueryClient::new(&format!("http://{}", node.http))
        .expect("a query client")
        .with_credentials(credentials)
}

async fn owned(node: &ServerProcess) -> u32 {
    node.metric(PARTITIONS_OWNED)
        .await
        .expect("metrics")
        .expect("the partitions-owned gauge") as u32
}

/// The value of the series `series` (name and labels, as printed) in the node's `/metrics`.
async fn series(node: &ServerProcess, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{}/metrics", node.http))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until the live nodes own every partition between them, each no more than its share
/// (ceil(partitions / nodes)); returns each one's count.
async fn balanced(nodes: &[&ServerProcess]) -> Vec<u32> {
    let share = PARTITIONS.div_ceil(nodes.len() as u32);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut counts = Vec::new();
        for node in nodes {
            counts.push(owned(node).await);
        }
        if counts.iter().sum::<u32>() == PARTITIONS && counts.iter().all(|&n| n <= share) {
            return counts;
        }
        assert!(
            Instant::now() < deadline,
            "partitions not all owned within each node's share of {share}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn payer_key(n: u32) -> SigningKey {
    let mut seed = [9u8; 32];
    seed[..4].copy_from_slice(&n.to_le_bytes());
    SigningKey::from_bytes(&seed)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn client_config(addr: String, producer_id: u64, domain: Domain) -> ClientConfig {
    let mut config = ClientConfig::new(
        addr,
        1,
        SigningKey::from_bytes(&[producer_id as u8; 32]),
        producer_id,
        domain,
    );
    config.batch_receipts_max = 200;
    config
}

/// What one producer had acked: per payer, receipts and amount.
type Acked = BTreeMap<u32, (u64, u128)>;

/// Streams `per_producer` receipts through `addr` (a node list) and returns what the
/// acks accepted; every receipt must be accepted (each is new, and a re-sent batch gets its
/// original ack).
async fn produce(
    addr: String,
    (producer_id, per_producer): (u64, u64),
    (keys, domain): (Arc<Vec<SigningKey>>, Domain),
    progress: Arc<AtomicU64>,
) -> Acked {
    let client = Client::connect(client_config(addr, producer_id, domain))
        .await
        .expect("the fleet connects");
    let payee = Address([producer_id as u8; 20]);
    let mut acked = Acked::new();
    let mut sent = 0u64;
    while sent < per_producer {
        let mut verdicts = Vec::new();
        for k in sent..sent + CHUNK {
            let payer = ((k * PRODUCERS + producer_id) % u64::from(PAYERS)) as u32;
            let key = &keys[payer as usize];
            let amount = 1 + k % 7;
            let receipt = UnsignedReceipt {
                payer: PayerKey(key.verifying_key().to_bytes()),
                payee,
                amount,
                // Unique per (payer, payee) channel: this producer is the channel's only sender.
                nonce: k + 1,
                timestamp_ms: now_ms(),
                request_hash: [producer_id as u8; 32],
                session: false,
            }
            .sign(key, &domain);
            let verdict = client.submit(receipt).await.expect("submit");
            verdicts.push((payer, amount, verdict));
        }
        for (payer, amount, verdict) in verdicts {
            let verdict = verdict.await.expect("every receipt gets a verdict");
            assert_eq!(verdict, Ok(()), "producer {producer_id}, payer {payer}");
            let entry = acked.entry(payer).or_default();
            entry.0 += 1;
            entry.1 += u128::from(amount);
        }
        sent += CHUNK;
        progress.fetch_add(CHUNK, Ordering::Relaxed);
    }
    client.close().await.expect("close");
    acked
}

/// For each partition the ledger under `dirs` that applied the most of its log (all apply the
/// same log in the same order, so the furthest holds everything any other holds), opened.
fn furthest_ledgers(dirs: &[std::path::PathBuf], domain: Domain) -> Vec<Engine> {
    let config = VerifyConfig {
        threads: 1,
        ..VerifyConfig::default()
    };
    let verifier =
        Arc::new(VerifyPool::new(Verifier::new(domain, config.clone()), config).expect("pool"));
    (0..PARTITIONS)
        .map(|partition| {
            let mut furthest: Option<(u64, Engine)> = None;
            for dir in dirs {
                let path = dir.join(format!("partition-{partition}"));
                if !path.exists() {
                    continue;
                }
                let engine = Engine::open(EngineConfig::new(&path), verifier.clone())
                    .expect("a partition ledger opens");
                let position = engine
                    .reader()
                    .log_position()
                    .expect("log position")
                    .unwrap_or(0);
                match &furthest {
                    Some((best, _)) if *best >= position => engine.shutdown().expect("close"),
                    _ => {
                        if let Some((_, older)) = furthest.replace((position, engine)) {
                            older.shutdown().expect("close");
                        }
                    }
                }
            }
            furthest.expect("some node owned every partition").1
        })
        .collect()
}

/// Per payer, receipts, amount (settled or pending) and amount still pending in `ledgers`.
fn ledger_totals(ledgers: &[Engine], payers: &[PayerKey]) -> BTreeMap<u32, (u64, u128, u128)> {
    let partitions = std::num::NonZeroU32::new(PARTITIONS).expect("non-zero");
    let mut totals = BTreeMap::new();
    for (index, payer) in payers.iter().enumerate() {
        let reader = ledgers[partition_of(payer, partitions) as usize].reader();
        if let Some(balance) = reader.payer(payer).expect("payer read") {
            totals.insert(
                index as u32,
                (
                    balance.receipts,
                    balance.settled + balance.pending,
                    balance.pending,
                ),
            );
        }
    }
    totals
}

/// One cluster test at a time: two would share the machine's two cores.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_of_serve_processes_counts_every_acked_receipt_once_across_a_kill_9() {
    let _alone = ONE_CLUSTER.lock().await;
    let started = Instant::now();
    let mut nats = NatsCluster::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("cluster.toml"), CLUSTER_TABLE).expect("config file");
    // The fleet's payers, and one more (index PAYERS) funded only while the cluster runs.
    let keys: Arc<Vec<SigningKey>> = Arc::new((0..=PAYERS).map(payer_key).collect());
    let payers: Vec<PayerKey> = keys
        .iter()
        .map(|key| PayerKey(key.verifying_key().to_bytes()))
        .collect();
    let chain = Chain::start(&payers[..PAYERS as usize]).await;
    let domain = chain.domain;
    let names = ["n0", "n1", "n2"];
    // n0 first: alone, it takes every partition.
    let mut nodes: Vec<Option<ServerProcess>> =
        vec![Some(start_node(&nats, dir.path(), names[0], &chain))];
    let alone = balanced(&[nodes[0].as_ref().expect("n0")]).await;
    assert_eq!(alone, [PARTITIONS]);
    for name in &names[1..] {
        nodes.push(Some(start_node(&nats, dir.path(), name, &chain)));
    }
    // Rebalancing: as n1 and n2 join, n0 releases partitions beyond its share of
    // ceil(16 / 3) = 6, one per heartbeat, and the newcomers take them.
    let live: Vec<&ServerProcess> = nodes.iter().flatten().collect();
    let before = balanced(&live).await;
    assert!(
        before.iter().all(|&n| n >= 4),
        "each node owns a share: {before:?}"
    );
    let listens: Vec<String> = live.iter().map(|n| n.listen.to_string()).collect();
    let https: Vec<String> = live.iter().map(|n| n.http.to_string()).collect();

    // The HTTP port: health and metrics, routes that need the whole cluster's ledger refused as
    // not served in cluster mode.
    let health = reqwest::get(format!("http://{}/healthz", https[1]))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let refused = reqwest::get(format!("http://{}/v1/epochs", https[1]))
        .await
        .expect("a ledger route");
    assert_eq!(refused.status(), 501);
    let body: serde_json::Value = refused.json().await.expect("json error body");
    assert_eq!(body["error"], "not_in_cluster", "{body}");

    // The funds check is on: a node knows a payer's deposit once the funds watcher (whichever
    // node holds its lease) has published it into the payer's partition and the owner applied
    // it. Every receipt of the fleet must be accepted, so it waits for every deposit.
    let funds_view = query_client(live[1], Credentials::Bearer(OPERATOR_TOKEN.into()));
    let funded = Instant::now();
    deposited(&funds_view, &payers[..PAYERS as usize], DEPOSIT).await;
    let deposits_seen = funded.elapsed();

    let per_producer = receipts_per_producer();
    // Waits and the time budget grow with a larger run.
    let scale = per_producer.div_ceil(RECEIPTS_PER_PRODUCER_DEFAULT) as u32;
    let progress = Arc::new(AtomicU64::new(0));
    let mut producers = tokio::task::JoinSet::new();
    for producer in 0..PRODUCERS {
        // Each producer starts at its own node and falls over to the next ones.
        let first = producer as usize % NODES;
        let addr = (0..NODES)
            .map(|i| listens[(first + i) % NODES].clone())
            .collect::<Vec<_>>()
            .join(",");
        producers.spawn(produce(
            addr,
            (producer + 1, per_producer),
            (Arc::clone(&keys), domain),
            Arc::clone(&progress),
        ));
    }

    let deadline = Instant::now() + DEADLINE * scale;
    // Receipts acked over all producers before the owning node is killed: a third.
    while progress.load(Ordering::Relaxed) < PRODUCERS * per_producer / 3 {
        assert!(Instant::now() < deadline, "the fleet made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And n0 has checkpointed, as many times as it owns partitions (how many log messages a
    // third of the stream makes per partition depends on how the clients batch).
    let n0 = nodes[0].as_ref().expect("n0");
    while series(
        n0,
        r#"tollgate_cluster_checkpoints_total{outcome="stored"}"#,
    )
    .await
    .unwrap_or(0.0)
        < f64::from(before[0])
    {
        assert!(Instant::now() < deadline, "n0 stored no checkpoints");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acked_at_kill = progress.load(Ordering::Relaxed);
    nodes[0].take().expect("n0").kill().expect("kill -9 n0");
    let killed_at = Instant::now();

    // kill -9 of one NATS server of three after two thirds of the stream; the R3 stream keeps
    // its quorum and everything above must hold as before. `TOLLGATE_CLUSTER_KILL_NATS=0` leaves
    // it out (about 35 s less, for a quicker look at the rest).
    let kill_nats = std::env::var("TOLLGATE_CLUSTER_KILL_NATS").map_or(true, |set| set != "0");
    if kill_nats {
        let deadline = Instant::now() + DEADLINE * 4 * scale;
        while progress.load(Ordering::Relaxed) < PRODUCERS * per_producer * 2 / 3 {
            assert!(Instant::now() < deadline, "the fleet made no progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        nats.kill("n2");
    }

    let mut acked = Acked::new();
    while let Some(done) = producers.join_next().await {
        for (payer, (receipts, amount)) in done.expect("a producer finished") {
            let entry = acked.entry(payer).or_default();
            entry.0 += receipts;
            entry.1 += amount;
        }
    }
    let streamed = started.elapsed();
    let survivors: Vec<&ServerProcess> = nodes.iter().flatten().collect();
    // The survivors split the killed node's partitions (each within its share of 8 once n0's
    // announcement aged out): they took the 16 partitions (at least once each, at the join or
    // after the kill), and show how far behind their logs they are.
    let after = balanced(&survivors).await;
    let mut taken = 0.0;
    for node in &survivors {
        taken += series(
            node,
            r#"tollgate_cluster_ownership_changes_total{change="taken"}"#,
        )
        .await
        .expect("the ownership counter");
    }
    assert!(
        taken >= f64::from(PARTITIONS),
        "partitions taken over: {taken}"
    );
    // The killed node had checkpointed its partitions and purged their logs: the survivors,
    // which never owned them, restored checkpoints and replayed only the rest, and checkpoint
    // in turn.
    let mut checkpoints = [0.0; 2];
    for node in &survivors {
        for (count, outcome) in checkpoints.iter_mut().zip(["restored", "stored"]) {
            *count += series(
                node,
                &format!(r#"tollgate_cluster_checkpoints_total{{outcome="{outcome}"}}"#),
            )
            .await
            .expect("the checkpoint counter");
        }
    }
    assert!(
        checkpoints.iter().all(|&count| count >= 1.0),
        "checkpoints restored, stored by the survivors: {checkpoints:?}"
    );
    let lag_shown = futures::future::join_all(
        survivors
            .iter()
            .map(|node| series(node, r#"tollgate_cluster_log_lag_messages{partition="0"}"#)),
    )
    .await;
    assert!(
        lag_shown.iter().any(Option::is_some),
        "partition 0's log lag is on its owner's /metrics"
    );

    // The funds check through the logs, on the survivors: a payer funded now can spend exactly
    // its deposit; a withdrawal request takes what it asks for out of spending at once; a payer
    // nobody funded is refused.
    let late = PAYERS as usize;
    common::fund(&chain.anvil, &chain.deployed, &payers[late..], LATE_DEPOSIT).await;
    deposited(&funds_view, &payers[late..], LATE_DEPOSIT).await;
    let spender = Client::connect(client_config(survivors[1].listen.to_string(), 102, domain))
        .await
        .expect("connect");
    let spend = |key: &SigningKey, amount: u64, nonce: u64| -> Receipt {
        UnsignedReceipt {
            payer: PayerKey(key.verifying_key().to_bytes()),
            payee: Address([0xee; 20]),
            amount,
            nonce,
            timestamp_ms: now_ms(),
            request_hash: [0xee; 32],
            session: false,
        }
        .sign(key, &domain)
    };
    let mut verdicts = Vec::new();
    for (nonce, amount) in [(1, 20), (2, 20), (3, 20), (4, 10)] {
        let verdict = spender
            .submit(spend(&keys[late], amount, nonce))
            .await
            .expect("submit");
        verdicts.push(verdict.await.expect("a verdict"));
    }
    assert_eq!(
        verdicts,
        [Ok(()), Ok(()), Err(Reason::InsufficientFunds), Ok(())],
        "a deposit of {LATE_DEPOSIT}, spent in 20, 20, 20 (one too many) and 10"
    );
    acked.insert(PAYERS, (3, LATE_DEPOSIT));
    let spendable = DEPOSIT - acked[&1].1;
    tollgate_settle::chain::request_withdrawal(
        &chain.anvil.endpoint(),
        common::dev_key(&chain.anvil, 1),
        chain.deployed.settlement,
        &payers[1],
        spendable,
    )
    .await
    .expect("payer 1's owner asks for what payer 1 has not spent");
    let deadline = Instant::now() + DEADLINE;
    while funds_view
        .payer(&payers[1])
        .await
        .map_or(0, |view| view.withdrawal_requested)
        != spendable
    {
        assert!(
            Instant::now() < deadline,
            "the withdrawal request never reached payer 1's partition"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stranger_key = SigningKey::from_bytes(&[0x77; 32]);
    for (key, why) in [
        (&keys[1], Reason::InsufficientFunds),
        (&stranger_key, Reason::UnknownPayer),
    ] {
        let verdict = spender
            .submit(spend(key, 1, 1))
            .await
            .expect("submit")
            .await
            .expect("a verdict");
        assert_eq!(verdict, Err(why));
    }
    spender.close().await.expect("close");

    // QUERY_BALANCE: every survivor answers for every payer, the one that does not own the
    // payer's partition by asking the one that does (so at least 20 of the 40 answers were
    // routed), with everything acked in it.
    for payer in 0..20u32 {
        for node in &survivors {
            let client = Client::connect(client_config(node.listen.to_string(), 100, domain))
                .await
                .expect("connect");
            let balance = client
                .balance(payers[payer as usize])
                .await
                .unwrap_or_else(|error| panic!("payer {payer} at {}: {error}", node.listen));
            assert_eq!(
                (balance.receipts, balance.settled + balance.pending),
                acked[&payer]
            );
            client.close().await.expect("close");
        }
    }

    // GET /v1/payers/{payer}: the same from every survivor, routed like QUERY_BALANCE, with the
    // payer's channels read in the same snapshot as its totals; under the standalone access
    // policy (a token or the payer's own signature; nothing else).
    for payer in 0..20u32 {
        for node in &survivors {
            let view = query_client(node, Credentials::Bearer(OPERATOR_TOKEN.into()))
                .payer(&payers[payer as usize])
                .await
                .unwrap_or_else(|error| panic!("payer {payer} at {}: {error}", node.http));
            assert_eq!(
                (view.receipts, view.settled + view.pending),
                acked[&payer],
                "payer {payer}"
            );
            assert_eq!(view.channel_count, view.channels.len() as u64);
            assert_eq!(
                view.channels.iter().map(|c| c.cumulative).sum::<u128>(),
                view.settled + view.pending
            );
        }
    }
    let own = query_client(
        survivors[1],
        Credentials::Payer {
            key: Box::new(keys[0].clone()),
            domain,
        },
    );
    let view = own.payer(&payers[0]).await.expect("a payer reads itself");
    assert_eq!((view.receipts, view.settled + view.pending), acked[&0]);
    match own.payer(&payers[1]).await {
        Err(QueryError::Refused { status: 403, .. }) => {}
        other => panic!("a payer reading another payer: {other:?}"),
    }
    match query_client(survivors[0], Credentials::None)
        .payer(&payers[0])
        .await
    {
        Err(QueryError::Refused { status: 401, .. }) => {}
        other => panic!("no credentials: {other:?}"),
    }
    let stranger = PayerKey(stranger_key.verifying_key().to_bytes());
    match query_client(survivors[0], Credentials::Bearer(OPERATOR_TOKEN.into()))
        .payer(&stranger)
        .await
    {
        Err(QueryError::NotFound { code, .. }) => assert_eq!(code, "unknown_payer"),
        other => panic!("a payer nobody paid for: {other:?}"),
    }

    // GRANT: refused with its own code, nothing registered.
    let session = SigningKey::from_bytes(&[0x5e; 32]);
    let grant = Grant {
        domain,
        payer: payers[0],
        session: PayerKey(session.verifying_key().to_bytes()),
        nonce: 1,
        cap: 1_000,
        allowance: None,
        valid_from_ms: 0,
        valid_until_ms: u64::MAX,
        payees: PayeeScope::Any,
    }
    .sign(&keys[0]);
    let client = Client::connect(client_config(survivors[0].listen.to_string(), 101, domain))
        .await
        .expect("connect");
    match client.grant(&grant).await {
        Err(ClientError::Refused { code, .. }) => {
            assert_eq!(ErrorCode::from_code(code), Some(ErrorCode::NotInCluster));
        }
        other => panic!("a grant in cluster mode: {other:?}"),
    }
    // No connection of ours left open for the nodes' shutdown to wait for (the refused one is
    // closed by the node already).
    client.close().await.ok();
    drop(own);

    // Epochs: the coordinator (whichever node holds its lease; n0 may have held it when it was
    // killed) seals every partition at its marks and commits each epoch once, with one root
    // over the partitions' roots, until the chain holds every acked amount; each partition's
    // ledger then settles what was committed.
    let acked_amount: u128 = acked.values().map(|(_, amount)| amount).sum();
    let contract = chain.reader().await;
    let settling = Instant::now() + DEADLINE * scale;
    let committed = loop {
        let committed = onchain_epochs(&contract).await;
        let amount: u128 = committed
            .iter()
            .flat_map(|epoch| epoch.debits.values())
            .sum();
        if amount == acked_amount {
            break committed;
        }
        assert!(
            amount < acked_amount && Instant::now() < settling,
            "committed onchain {amount} of {acked_amount} acked"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // An epoch the coordinator sealed while an owner could not say what its open epoch held
    // (a partition moving after the kill) may be committed empty (root zero, no debits), as the
    // chain needs every epoch in turn.
    let with_receipts = committed
        .iter()
        .filter(|epoch| !epoch.debits.is_empty())
        .count();
    assert!(
        with_receipts >= 2,
        "at least two epochs with receipts: {with_receipts} of {}",
        committed.len()
    );
    let operator = query_client(survivors[0], Credentials::Bearer(OPERATOR_TOKEN.into()));
    // The late payer spent in the last epoch: its commit marks must be applied before the stop.
    for payer in (0..20u32).chain([PAYERS]) {
        loop {
            let view = operator
                .payer(&payers[payer as usize])
                .await
                .expect("payer");
            if view.pending == 0 {
                assert_eq!(view.settled, acked[&payer].1, "payer {payer}");
                break;
            }
            assert!(
                Instant::now() < settling,
                "payer {payer} never settled: {view:?}, acked {:?}",
                acked[&payer]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Proofs from any node, rebuilt from the partitions' summaries: in every epoch with
    // receipts, payer 0's channels (to whichever producers' payees it moved in that epoch)
    // come with a proof the contract accepts under the committed root, from both survivors;
    // a channel without a leaf there is 404 `unknown_leaf`.
    // Per (epoch, producer), the nodes that served payer 0's channel to the producer's payee;
    // checked against the partition ledgers' sealed leaves once the nodes have stopped.
    let mut served_by: BTreeMap<(u64, u8), usize> = BTreeMap::new();
    for epoch in committed.iter().filter(|epoch| !epoch.debits.is_empty()) {
        for producer in 1..=PRODUCERS {
            let payee = Address([producer as u8; 20]);
            for node in &survivors {
                let asked = query_client(node, Credentials::Bearer(OPERATOR_TOKEN.into()))
                    .proof(epoch.epoch, &payers[0], &payee)
                    .await;
                let view = match asked {
                    Ok(view) => view,
                    Err(QueryError::NotFound { code, .. }) if code == "unknown_leaf" => continue,
                    Err(error) => panic!("epoch {} proof from {}: {error}", epoch.epoch, node.http),
                };
                assert_eq!(view.root, epoch.root.to_string(), "epoch {}", epoch.epoch);
                let (leaf, proof) = view.decode().expect("a well-formed proof");
                assert!(
                    contract
                        .verify_leaf(epoch.epoch, &leaf, &proof)
                        .await
                        .expect("verifyLeaf"),
                    "epoch {} payer 0 payee {producer}",
                    epoch.epoch
                );
                *served_by.entry((epoch.epoch, producer as u8)).or_default() += 1;
            }
        }
    }
    let proofs_served: usize = served_by.values().sum();
    // Under the standalone access policy: a payer reads its own channels' proofs only; and an
    // epoch the chain does not hold final has none.
    let payee = Address([1; 20]);
    let newest = committed.last().map_or(1, |epoch| epoch.epoch);
    let as_payer_0 = query_client(
        survivors[0],
        Credentials::Payer {
            key: Box::new(keys[0].clone()),
            domain,
        },
    );
    match as_payer_0.proof(newest, &payers[1], &payee).await {
        Err(QueryError::Refused { status: 403, .. }) => {}
        other => panic!("payer 0 asking for payer 1's proof: {other:?}"),
    }
    match operator.proof(newest + 100, &payers[0], &payee).await {
        Err(QueryError::NotFound { code, .. }) if code == "epoch_not_final" => {}
        other => panic!("a proof in an epoch not committed: {other:?}"),
    }

    for node in nodes.into_iter().flatten() {
        let status = node
            .terminate(Duration::from_secs(30))
            .expect("a clean stop");
        assert!(status.success(), "{status}");
    }
    let dirs: Vec<_> = names.iter().map(|name| dir.path().join(name)).collect();
    let ledgers = furthest_ledgers(&dirs, domain);
    // The proofs served are exactly payer 0's leaves, each from both survivors.
    let payer_0_ledger = &ledgers[partition_of(
        &payers[0],
        std::num::NonZeroU32::new(PARTITIONS).expect("non-zero"),
    ) as usize];
    let mut leaves_of_payer_0 = BTreeMap::new();
    for epoch in committed.iter().filter(|epoch| !epoch.debits.is_empty()) {
        let sealed = payer_0_ledger
            .reader()
            .sealed_epoch(epoch.epoch)
            .expect("read")
            .expect("sealed");
        for (payer, payee, _) in &sealed.leaves {
            if *payer == payers[0] {
                leaves_of_payer_0.insert((epoch.epoch, payee.0[0]), NODES - 1);
            }
        }
    }
    assert_eq!(served_by, leaves_of_payer_0, "proofs served vs leaves");
    let totals = ledger_totals(&ledgers, &payers);
    let acked_receipts: u64 = acked.values().map(|(n, _)| n).sum();
    assert_eq!(acked_receipts, PRODUCERS * per_producer + 3);
    let mut lost = 0u64;
    let mut double = 0u64;
    let mut debited: BTreeMap<PayerKey, u128> = BTreeMap::new();
    for epoch in &committed {
        for (payer, amount) in &epoch.debits {
            *debited.entry(*payer).or_default() += amount;
        }
    }
    for payer in 0..=PAYERS {
        let want = acked.get(&payer).copied().unwrap_or_default();
        let (receipts, amount, pending) = totals.get(&payer).copied().unwrap_or_default();
        lost += want.0.saturating_sub(receipts);
        double += receipts.saturating_sub(want.0);
        assert_eq!(
            (receipts, amount),
            want,
            "payer {payer}: ledger vs acked (receipts, amount)"
        );
        assert_eq!(pending, 0, "payer {payer}: everything committed is settled");
        assert_eq!(
            debited.get(&payers[payer as usize]).copied().unwrap_or(0),
            want.1,
            "payer {payer}: debited onchain vs acked"
        );
    }
    // Each committed root is the tree over the partitions' sealed epochs, and its proofs (a
    // partition proof, then the partition root's) verify in the contract.
    let mut leaves = 0usize;
    for epoch in &committed {
        let sealed: Vec<_> = ledgers
            .iter()
            .map(|ledger| {
                ledger
                    .reader()
                    .sealed_epoch(epoch.epoch)
                    .expect("read")
                    .expect("every partition sealed the epoch")
            })
            .collect();
        let tree = match PartitionedTree::from_sealed(epoch.epoch, &sealed) {
            Err(MerkleError::Empty) => {
                assert_eq!(epoch.root, B256::ZERO, "empty epoch {}", epoch.epoch);
                assert!(epoch.debits.is_empty(), "empty epoch {}", epoch.epoch);
                continue;
            }
            tree => tree.expect("leaves"),
        };
        assert_eq!(tree.root(), epoch.root, "epoch {}", epoch.epoch);
        for (index, (leaf, proof)) in tree.proofs().enumerate() {
            assert!(merkle::verify(
                tree.root(),
                merkle::leaf_hash(epoch.epoch, &leaf),
                &proof
            ));
            if index < 5 {
                assert!(
                    contract
                        .verify_leaf(epoch.epoch, &leaf, &proof)
                        .await
                        .expect("verifyLeaf"),
                    "epoch {} leaf {index}",
                    epoch.epoch
                );
            }
        }
        leaves += tree.len();
    }
    for ledger in ledgers {
        ledger.shutdown().expect("close");
    }
    println!(
        "cluster of {NODES} serve nodes, {PARTITIONS} partitions, {PAYERS} payers: \
         {acked_receipts} receipts acked in {streamed:.1?} ({acked_at_kill} before kill -9 of n0, \
         which owned {before:?}; survivors then owned {after:?}, {:.1?} after the kill, \
         restoring {} checkpoints and storing {}); lost {lost} / double {double}; {} epochs \
         committed onchain ({with_receipts} with receipts), one root each over the partition roots ({leaves} leaves, every proof \
         checked, 5 per epoch by the contract, {proofs_served} served by the nodes); NATS server \
         killed mid-stream: {kill_nats}; funds checked in the partitions: {PAYERS} \
         deposits published and applied {deposits_seen:.1?} after the nodes were up, a late \
         deposit spent to the unit, a withdrawal request and an unfunded payer refused",
        killed_at.elapsed(),
        checkpoints[0],
        checkpoints[1],
        committed.len(),
    );
    // Three minutes for the suite's receipts, more for a larger run.
    assert!(started.elapsed() < Duration::from_secs(180) * scale);
}

/// Waits until every one of `payers` shows `deposit` deposited, asking `view`'s node (which
/// routes each query to the payer's partition owner).
async fn deposited(view: &QueryClient, payers: &[PayerKey], deposit: u128) {
    use futures::stream::StreamExt;
    let deadline = Instant::now() + DEADLINE;
    let mut waiting = payers.to_vec();
    loop {
        let views: Vec<_> = futures::stream::iter(&waiting)
            .map(|payer| view.payer(payer))
            .buffered(16)
            .collect()
            .await;
        let mut last = None;
        waiting = waiting
            .into_iter()
            .zip(views)
            .filter_map(|(payer, view)| match view {
                Ok(view) if view.deposited == deposit => None,
                other => {
                    last = Some(format!("{other:?}"));
                    Some(payer)
                }
            })
            .collect();
        if waiting.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} payers' deposits not applied; the last: {last:?}",
            waiting.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every epoch committed onchain so far, from the first.
async fn onchain_epochs(
    contract: &tollgate_settle::ContractReader,
) -> Vec<tollgate_settle::onchain::OnchainEpoch> {
    let mut epochs = Vec::new();
    for epoch in 1.. {
        match contract
            .onchain_epoch(epoch, 0)
            .await
            .expect("read the chain")
        {
            Some(committed) if committed.complete() => epochs.push(committed),
            _ => return epochs,
        }
    }
    epochs
}

/// NATS down when `serve --cluster` starts: the node waits (its ports stay closed, one warning
/// in its log, not one per try) and joins as soon as a server answers on the configured port,
/// then owns every partition.
#[test]
fn a_node_started_before_nats_joins_once_nats_answers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    std::fs::write(
        dir.path().join("cluster.toml"),
        "[cluster]\nstream_replicas = 1\nmeta_replicas = 1\nlease_replicas = 1\n\
         checkpoint_replicas = 1\nsummary_replicas = 1\n",
    )
    .expect("config");
    let args = node_args(
        dir.path(),
        &format!("nats://127.0.0.1:{port}"),
        "early",
        (4, "accept"),
    );
    let log = dir.path().join("early.log");
    let starting = {
        let log = log.clone();
        std::thread::spawn(move || ServerProcess::start(TOLLGATE.as_ref(), &args, Some(&log), &[]))
    };
    // Several tries fail meanwhile (the pause doubles from 100 ms).
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !starting.is_finished(),
        "the node must wait for NATS, not exit or open its ports"
    );
    let binary =
        tollgate_cluster::nats_server_binary().expect("nats-server: run scripts/bootstrap.sh");
    let mut nats = std::process::Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path().join("nats"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start nats-server");
    let node = starting
        .join()
        .expect("the starting thread")
        .expect("the node is ready once NATS answers");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let deadline = Instant::now() + DEADLINE;
    while runtime.block_on(owned(&node)) < 4 {
        assert!(Instant::now() < deadline, "partitions not all owned");
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&log).expect("the node's log");
    let warnings = text
        .lines()
        .filter(|line| line.contains("cannot join the NATS cluster yet"))
        .count();
    assert_eq!(warnings, 1, "one warning for the whole wait:\n{text}");
    node.terminate(Duration::from_secs(30)).expect("stops");
    drop(nats.kill());
    drop(nats.wait());
}

/// Moves anvil's clock `secs` ahead and mines a block at the new time.
async fn advance_chain(chain: &Chain, secs: u64) {
    use alloy::providers::Provider;
    let provider = alloy::providers::ProviderBuilder::new()
        .connect_http(chain.anvil.endpoint().parse().expect("url"));
    let _: serde_json::Value = provider
        .raw_request("evm_increaseTime".into(), (secs,))
        .await
        .expect("increase time");
    let _: serde_json::Value = provider
        .raw_request("evm_mine".into(), ())
        .await
        .expect("mine");
}

/// Waits until `payer`'s view on `view` satisfies `wanted`, and returns it.
async fn payer_when(
    view: &QueryClient,
    payer: &PayerKey,
    what: &str,
    wanted: impl Fn(&tollgate_query::model::PayerView) -> bool,
) -> tollgate_query::model::PayerView {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let seen = view.payer(payer).await;
        if let Ok(seen) = &seen
            && wanted(seen)
        {
            return seen.clone();
        }
        assert!(Instant::now() < deadline, "{what}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Submits one receipt of `key`'s through `client`: its verdict.
async fn submit_one(
    client: &Client,
    domain: Domain,
    key: &SigningKey,
    (payee, amount, nonce): (Address, u64, u64),
) -> Result<(), Reason> {
    let receipt = UnsignedReceipt {
        payer: PayerKey(key.verifying_key().to_bytes()),
        payee,
        amount,
        nonce,
        timestamp_ms: now_ms(),
        request_hash: [0x5f; 32],
        session: false,
    }
    .sign(key, &domain);
    let verdict = client.submit(receipt).await.expect("submit");
    verdict.await.expect("a verdict")
}

/// A payer's exit overtakes debits the cluster accepted while the chain was out of its reach
/// for longer than the withdrawal delay: the epoch's commit reverts with `Overdraft`. The
/// coordinator writes a shortfall mark into the payer's partition, its owner records the
/// uncovered rest (cut from what the payer paid in the epoch, in payee order) and stores its
/// summary again, and the epoch is committed without it: the other payer's debits in the same
/// epoch settle in full, the next epoch settles too, and every balance equals the chain's.
/// Before shortfalls reached cluster mode, the coordinator retried the reverting commit every
/// tick and settlement stopped for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exit_that_overtakes_debits_while_the_chain_is_out_of_reach_is_committed_as_a_shortfall()
{
    let _alone = ONE_CLUSTER.lock().await;
    let nats = NatsCluster::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("cluster.toml"), CLUSTER_TABLE).expect("config file");
    let (exiting_key, staying_key) = (payer_key(0x5e), payer_key(0x57));
    let [exiting, staying] =
        [&exiting_key, &staying_key].map(|key| PayerKey(key.verifying_key().to_bytes()));
    let chain = Chain::start(&[exiting, staying]).await;
    let domain = chain.domain;
    // The node reaches the chain through a proxy the test can cut.
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cutting = Arc::clone(&cut);
    let proxy = common::RpcProxy::start(chain.anvil.endpoint(), move |_, _| {
        cutting.load(Ordering::SeqCst)
    })
    .await;
    let mut args = node_args(
        dir.path(),
        &nats.urls().join(","),
        "n0",
        (PARTITIONS, "reject"),
    );
    args.extend(chain.args_via(&proxy.url));
    let operator_key = hex::encode(common::dev_key(&chain.anvil, 0).to_bytes());
    let node = ServerProcess::start(
        TOLLGATE.as_ref(),
        &args,
        Some(&dir.path().join("n0.log")),
        &[("TOLLGATE_OPERATOR_KEY", &operator_key)],
    )
    .expect("the node starts");
    balanced(&[&node]).await;
    let view = query_client(&node, Credentials::Bearer(OPERATOR_TOKEN.into()));
    deposited(&view, &[exiting, staying], DEPOSIT).await;
    let client = Client::connect(client_config(node.listen.to_string(), 7, domain))
        .await
        .expect("connect");
    let (payee_a, payee_b) = (Address([0x0a; 20]), Address([0x0b; 20]));
    let pay = async |key: &SigningKey, payee: Address, amount: u64, nonce: u64| {
        let verdict = submit_one(&client, domain, key, (payee, amount, nonce)).await;
        assert_eq!(verdict, Ok(()));
    };

    pay(&exiting_key, payee_a, 3_000, 1).await;
    pay(&staying_key, payee_a, 2_000, 1).await;
    payer_when(&view, &exiting, "epoch 1 settled", |seen| {
        seen.settled == 3_000
    })
    .await;

    // The chain is out of reach: nothing is committed, and the funds watcher hears nothing.
    cut.store(true, Ordering::SeqCst);
    // The exiting payer pays a 2,000 more (its leaf grows from 3,000 to 5,000) and b 4,000;
    // the staying payer pays both too.
    pay(&exiting_key, payee_a, 2_000, 2).await;
    pay(&exiting_key, payee_b, 4_000, 3).await;
    pay(&staying_key, payee_a, 1_000, 2).await;
    pay(&staying_key, payee_b, 500, 3).await;
    // Its owner exits with all but 2,000 of what the chain holds: 2,000 of the 6,000 debit is
    // covered.
    let owner = common::dev_key(&chain.anvil, 1);
    let rpc = chain.anvil.endpoint();
    let settlement = chain.deployed.settlement;
    tollgate_settle::chain::request_withdrawal(
        &rpc,
        owner.clone(),
        settlement,
        &exiting,
        DEPOSIT - 3_000 - 2_000,
    )
    .await
    .expect("the exit is requested");
    advance_chain(
        &chain,
        tollgate_settle::DeployParams::dev().withdrawal_delay_secs + 1,
    )
    .await;
    tollgate_settle::chain::complete_withdrawal(&rpc, owner, settlement, &exiting)
        .await
        .expect("the exit completes");

    cut.store(false, Ordering::SeqCst);
    // 4,000 uncovered: all 2,000 the payer paid a in epoch 2, then 2,000 of b's 4,000.
    let cut = payer_when(&view, &exiting, "epoch 2 committed", |seen| {
        seen.pending == 0 && seen.settled > 3_000
    })
    .await;
    assert_eq!((cut.settled, cut.shortfall), (5_000, 4_000), "{cut:?}");
    // Settling goes on, for the other payer in full.
    pay(&staying_key, payee_b, 700, 4).await;
    let full = payer_when(&view, &staying, "epoch 3 committed", |seen| {
        seen.pending == 0 && seen.settled == 4_200
    })
    .await;
    assert_eq!(full.shortfall, 0);
    let shortfall_counted = series(&node, tollgate_settle::telemetry::SHORTFALL)
        .await
        .expect("the shortfall counter");
    assert_eq!(shortfall_counted, 4_000.0);

    // The chain agrees: what it still holds for each payer, what each payee can withdraw.
    let contract = chain.reader().await;
    for (payer, seen) in [(exiting, &cut), (staying, &full)] {
        let onchain = contract.available(&payer).await.expect("read the chain");
        let held = payer_when(&view, &payer, "withdrawal seen", |seen| {
            seen.withdrawal_requested == 0
        })
        .await;
        assert_eq!(
            onchain,
            held.deposited - held.withdrawn - held.settled,
            "{payer}: {seen:?}"
        );
    }
    for (payee, settled) in [(payee_a, 6_000), (payee_b, 3_200)] {
        assert_eq!(
            contract.withdrawable(payee).await.expect("read the chain"),
            settled,
            "{payee}"
        );
    }
    println!(
        "shortfall in cluster mode: payer's exit overtook a 6000 debit, 4000 uncovered and \
         written off, the epoch committed with the rest and the next one after it"
    );
    client.close().await.expect("close");
    node.terminate(Duration::from_secs(30)).expect("stops");
}

/// An idle cluster commits nothing: deposits reach the partitions' logs as the funds watcher's
/// marks, the coordinator's commit marks follow every epoch, and a refused receipt's part lands
/// in its partition's log, but none of them is anything to settle. The coordinator seals, as a
/// standalone server does, only when an owner's open epoch holds receipts (or a voided epoch's
/// amounts): before, every epoch interval in which the logs had grown sealed and committed an
/// empty epoch, a transaction and its gas (once a minute on an idle cluster, whose watcher
/// re-sends its sets of unconfirmed withdrawal requests every minute). Each receipt is settled
/// well within the 10 s the coordinator waits for an owner that cannot answer: the owners did
/// answer, and what they said sealed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn funds_news_and_marks_alone_commit_no_epoch() {
    let _alone = ONE_CLUSTER.lock().await;
    let nats = NatsCluster::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("cluster.toml"), CLUSTER_TABLE).expect("config file");
    let key = payer_key(0x1d);
    let payer = PayerKey(key.verifying_key().to_bytes());
    let chain = Chain::start(&[payer]).await;
    let node = start_node(&nats, dir.path(), "n0", &chain);
    balanced(&[&node]).await;
    let view = query_client(&node, Credentials::Bearer(OPERATOR_TOKEN.into()));
    let contract = chain.reader().await;
    // Epochs are a second long: three intervals with nothing but the deposit's marks.
    let idle = Duration::from_secs(3);
    deposited(&view, &[payer], DEPOSIT).await;
    tokio::time::sleep(idle).await;
    assert_eq!(onchain_epochs(&contract).await.len(), 0, "a deposit alone");

    let client = Client::connect(client_config(node.listen.to_string(), 3, chain.domain))
        .await
        .expect("connect");
    let payee = Address([0x1e; 20]);
    // Pays `amount` and waits until the payer's settled total is `settled`: the epoch that
    // holds the receipt is committed. Within a few epoch intervals, not the 10 s a seal waits
    // for an owner that cannot say: the owners answered, and their answers sealed it.
    let settles = async |amount: u64, nonce: u64, settled: u128, epochs: usize| {
        let paid_at = Instant::now();
        let paid = submit_one(&client, chain.domain, &key, (payee, amount, nonce)).await;
        assert_eq!(paid, Ok(()));
        payer_when(&view, &payer, "the receipt settled", |seen| {
            seen.settled == settled
        })
        .await;
        let took = paid_at.elapsed();
        assert!(
            took < Duration::from_secs(8),
            "settled {took:?} after it was paid"
        );
        assert_eq!(
            onchain_epochs(&contract).await.len(),
            epochs,
            "{amount}'s epoch"
        );
        took
    };
    let first = settles(700, 1, 700, 1).await;

    // A second deposit, the first epoch's commit marks, and a part whose one receipt is refused
    // (its payer never deposited) are all the log gets.
    common::fund(&chain.anvil, &chain.deployed, &[payer], DEPOSIT).await;
    deposited(&view, &[payer], 2 * DEPOSIT).await;
    let refused = submit_one(&client, chain.domain, &payer_key(0x1f), (payee, 5, 1)).await;
    assert_eq!(refused, Err(Reason::UnknownPayer));
    tokio::time::sleep(idle).await;
    assert_eq!(
        onchain_epochs(&contract).await.len(),
        1,
        "a deposit, commit marks and a refused receipt alone"
    );

    let second = settles(300, 2, 1_000, 2).await;
    println!(
        "idle cluster: two deposits, an epoch's commit marks and a refused receipt sealed nothing; \
         two receipts sealed and committed two epochs, settled {first:.1?} and {second:.1?} after \
         they were paid"
    );
    client.close().await.expect("close");
    node.terminate(Duration::from_secs(30)).expect("stops");
}
