//! A settlement chain that stops answering does not stop ingest: `tollgate serve` keeps acking
//! receipts, keeps sealing epochs, shows them queued in `/metrics`, and commits every one of them
//! in order once the chain answers again, after which the chain agrees with the engine.
//!
//! The chain is a real anvil frozen with SIGSTOP: its sockets stay open, so every RPC request
//! hangs until the client's timeout, the hardest way for a node to be down.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;
use tollgate_engine::PayerKey;
use tollgate_load::child;
use tollgate_load::population::payer_keys;
use tollgate_settle::chain::{ContractReader, DeployParams};
use tollgate_tools::serve::process::{ServerProcess, dev_chain_args};

const SEED: u64 = 11;
const PAYERS: u32 = 20;
const RECEIPTS: u32 = 3_000;

async fn get_json(url: &str) -> Value {
    reqwest::get(url)
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|error| panic!("GET {url}: {error}"))
        .json()
        .await
        .unwrap_or_else(|error| panic!("GET {url}: not JSON: {error}"))
}

/// The value of an unlabelled gauge in the Prometheus text of `/metrics`.
async fn gauge(server: &ServerProcess, name: &str) -> Option<f64> {
    server.metric(name).await.expect("GET /metrics")
}

fn signal(pid: Pid, signal: Signal) {
    kill_process(pid, signal).unwrap_or_else(|error| panic!("{signal:?} to anvil: {error}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_chain_does_not_stop_ingest_and_queued_epochs_commit_when_it_returns() {
    let anvil = common::spawn_anvil();
    let rpc_url = anvil.endpoint();
    let deployed = common::deploy(&anvil, &DeployParams::dev()).await;
    let payers: Vec<PayerKey> = payer_keys(SEED, PAYERS)
        .iter()
        .map(|key| PayerKey(key.verifying_key().to_bytes()))
        .collect();
    common::fund(&anvil, &deployed, &payers, 1_000_000).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::start_dev_server(&anvil, &deployed, dir.path(), &["--epoch-secs", "1"]);
    let api = format!("http://{}", server.http);

    let anvil_pid = Pid::from_raw(i32::try_from(anvil.child().id()).expect("pid")).expect("pid");
    signal(anvil_pid, Signal::STOP);

    // Ingest goes on with the chain frozen: every receipt acked, every verdict and balance right.
    let load_args: Vec<String> = [
        "--addr",
        &server.listen.to_string(),
        "--check",
        &api,
        "--contract",
        &deployed.settlement.to_string(),
        "--deposit",
        "api",
        "--seed",
        &SEED.to_string(),
        "--payers",
        &PAYERS.to_string(),
        "--receipts",
        &RECEIPTS.to_string(),
        "--rate",
        "1000",
        "--connections",
        "2",
    ]
    .map(str::to_owned)
    .to_vec();
    let load = child::run(env!("CARGO_BIN_EXE_tollgate-load").as_ref(), &load_args)
        .expect("run tollgate-load");
    assert!(load.status.success(), "{:?}", load.summary);
    assert_eq!(load.summary.acked, u64::from(RECEIPTS));
    assert_eq!(load.summary.accepted, u64::from(RECEIPTS));

    // Epochs keep sealing and queue up, visibly.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let backlog = gauge(&server, "tollgate_settle_backlog_epochs").await;
        if backlog.is_some_and(|epochs| epochs >= 2.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no backlog of 2 sealed epochs while the chain was down: {backlog:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    signal(anvil_pid, Signal::CONT);

    // Back: everything commits, in order, and nothing stays queued.
    let deadline = Instant::now() + Duration::from_secs(180);
    let epochs = loop {
        let listed = get_json(&format!("{api}/v1/epochs?limit=100")).await;
        let epochs = listed["epochs"].as_array().expect("epochs").clone();
        let settled = epochs.iter().all(|epoch| {
            matches!(epoch["status"].as_str(), Some("committed" | "open"))
                && (epoch["status"] == "committed" || epoch["receipts"] == 0)
        });
        if settled && gauge(&server, "tollgate_settle_backlog_epochs").await == Some(0.0) {
            break epochs;
        }
        assert!(
            Instant::now() < deadline,
            "queued epochs not committed after the chain came back: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let committed = epochs
        .iter()
        .filter(|epoch| epoch["status"] == "committed")
        .count();
    assert!(committed >= 2, "{epochs:?}");

    let chain = ContractReader::connect(&rpc_url, deployed.chain_id, deployed.settlement)
        .await
        .expect("contract reader");
    for payer in &payers {
        let engine = get_json(&format!("{api}/v1/payers/{payer}")).await;
        let onchain = chain.available(payer).await.expect("available onchain");
        assert_eq!(engine["pending"], "0", "{engine}");
        assert_eq!(engine["available"], onchain.to_string(), "payer {payer}");
    }
    let status = server
        .terminate(Duration::from_secs(60))
        .expect("stops on SIGTERM");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_catch_up_waits_out_a_failing_node_and_readyz_says_what_it_waits_for() {
    let anvil = common::spawn_anvil();
    let deployed = common::deploy(&anvil, &DeployParams::dev()).await;
    let failing = Arc::new(AtomicBool::new(true));
    // Every `eth_getLogs` fails while `failing` is set, as with an overloaded provider.
    let refusing = failing.clone();
    let rpc_url = common::RpcProxy::start(anvil.endpoint(), move |method, _| {
        refusing.load(Ordering::SeqCst) && method == "eth_getLogs"
    })
    .await
    .url;

    // A port for the API known before the server is ready (the ready line names it too late).
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = dev_chain_args(&rpc_url, &deployed, &dir.path().join("data"));
    let at = args.iter().position(|arg| arg == "--http").expect("--http") + 1;
    args[at] = http.to_string();
    let operator_key = hex::encode(common::dev_key(&anvil, 0).to_bytes());
    let starting = tokio::task::spawn_blocking(move || {
        ServerProcess::start(
            env!("CARGO_BIN_EXE_tollgate").as_ref(),
            &args,
            None,
            &[("TOLLGATE_OPERATOR_KEY", &operator_key)],
        )
    });

    let readyz = format!("http://{http}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    let waiting = loop {
        if starting.is_finished() {
            let outcome = starting.await.expect("start task");
            panic!(
                "serve should wait out the failing node, but: {:?}",
                outcome.map(|server| server.http)
            );
        }
        if let Ok(answer) = reqwest::get(&readyz).await {
            assert_eq!(answer.status(), 503, "not ready while the node fails");
            let body: Value = answer.json().await.expect("JSON error body");
            let message = body["message"].as_str().unwrap_or_default().to_owned();
            if message.contains("provider overloaded") {
                break message;
            }
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never named the failing node"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(waiting.contains("funds events"), "{waiting}");

    failing.store(false, Ordering::SeqCst);
    let server = starting
        .await
        .expect("start task")
        .expect("ready once the node answers");
    let ready = get_json(&format!("http://{}/readyz", server.http)).await;
    assert_eq!(ready["status"], "ready");
    let status = server
        .terminate(Duration::from_secs(60))
        .expect("stops on SIGTERM");
    assert!(status.success(), "exit status {status}");
}
