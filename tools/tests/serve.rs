//! `tollgate serve` as an operator runs it: the real binary, its configuration precedence, its
//! refusals of bad configuration, and a chainless run fed by the real `tollgate-load` that
//! survives a clean restart with the same balances.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use tollgate_load::{Summary, child};
use tollgate_tools::serve::process::ServerProcess;

const TOLLGATE: &str = env!("CARGO_BIN_EXE_tollgate");
const TOLLGATE_LOAD: &str = env!("CARGO_BIN_EXE_tollgate-load");
const EXAMPLE_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tollgate.example.toml");

/// A command with no `TOLLGATE_*` variable inherited from whoever runs the tests.
fn tollgate() -> Command {
    let mut command = Command::new(TOLLGATE);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TOLLGATE_") {
            command.env_remove(name);
        }
    }
    command
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn printed(dir: &Path, file: &str, env: &[(&str, &str)], flags: &[&str]) -> Output {
    let config = dir.join("tollgate.toml");
    std::fs::write(&config, file).expect("write config");
    let mut command = tollgate();
    command
        .args(["serve", "--print-config", "--config"])
        .arg(&config)
        .args(flags)
        .envs(env.iter().copied());
    command.output().expect("run tollgate")
}

#[test]
fn flags_beat_environment_beat_file_beat_defaults_and_secrets_are_masked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "ab".repeat(32);
    let output = printed(
        dir.path(),
        "unknown_payers = \"accept\"\nepoch_secs = 5\nverify_batch = 128\nwindow_nonces = 2048\n",
        &[
            ("TOLLGATE_EPOCH_SECS", "9"),
            ("TOLLGATE_VERIFY_BATCH", "64"),
            ("TOLLGATE_OPERATOR_KEY", &secret),
        ],
        &["--epoch-secs", "11"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let shown: toml::Table = toml::from_str(&stdout(&output)).expect("printed config is TOML");
    let int = |key: &str| shown.get(key).and_then(toml::Value::as_integer);
    assert_eq!(int("epoch_secs"), Some(11), "flag over environment");
    assert_eq!(int("verify_batch"), Some(64), "environment over file");
    assert_eq!(int("window_nonces"), Some(2048), "file over default");
    assert_eq!(int("connections_max"), Some(1024), "default");
    assert_eq!(
        shown.get("listen").and_then(toml::Value::as_str),
        Some("127.0.0.1:7402")
    );
    assert_eq!(
        shown.get("operator_key").and_then(toml::Value::as_str),
        Some("********")
    );
    assert!(!stdout(&output).contains(&secret), "the secret leaked");
}

#[test]
fn an_invalid_configuration_names_the_key_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&str, &[&str], &str); 6] = [
        ("epoch_second = 3\n", &[], "epoch_second"),
        ("epoch_secs = \"soon\"\n", &[], "epoch_secs"),
        (
            "unknown_payers = \"accept\"\n",
            &["--contract", "0x12"],
            "contract",
        ),
        ("", &[], "unknown_payers"),
        (
            "unknown_payers = \"accept\"\n",
            &["--listen", "0.0.0.0:7402"],
            "listen",
        ),
        (
            "unknown_payers = \"accept\"\n[[client]]\nid = 1\nkey = \"00\"\npayees = []\n",
            &[],
            "client 1",
        ),
    ];
    for (file, flags, key) in cases {
        let output = printed(dir.path(), file, &[], flags);
        assert!(!output.status.success(), "accepted {file:?} {flags:?}");
        assert!(
            stderr(&output).contains(key),
            "error for {file:?} {flags:?} does not name {key}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn the_example_configuration_is_valid() {
    let output = tollgate()
        .args(["serve", "--print-config", "--config", EXAMPLE_CONFIG])
        .env("TOLLGATE_OPERATOR_KEY", "11".repeat(32))
        .output()
        .expect("run tollgate");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("rpc_url"));
}

fn start_chainless(data_dir: &Path) -> ServerProcess {
    let args: Vec<String> = [
        "--unknown-payers",
        "accept",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--data-dir",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([data_dir.display().to_string()])
    .collect();
    ServerProcess::start(Path::new(TOLLGATE), &args, None, &[]).expect("server ready")
}

/// Every metric name in the README's metrics table.
fn readme_metric_names() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let table = readme
        .split("### Metrics")
        .nth(1)
        .and_then(|section| section.split("\n## ").next())
        .expect("a metrics section");
    let name = regex::Regex::new(r"`(tollgate_[a-z_]+)").expect("regex");
    let names: Vec<String> = name.captures_iter(table).map(|c| c[1].to_owned()).collect();
    assert!(names.len() > 20, "metrics table not found: {names:?}");
    names
}

/// Dashboards and `absent()` alerts need every series before the first receipt: a fresh server
/// exports each metric of the README's table, at zero, rejection reasons and refusal codes
/// included.
#[test]
fn a_fresh_server_exports_every_metric_at_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_chainless(&dir.path().join("ledger"));
    let metrics = http_get(&format!("http://{}/metrics", server.http));
    for name in readme_metric_names() {
        assert!(
            metrics.lines().any(|line| line.starts_with(&name)),
            "no {name} in a fresh server's /metrics:\n{metrics}"
        );
    }
    for series in [
        "tollgate_ingest_receipts_accepted_total 0",
        "tollgate_ledger_receipts_rejected_total{reason=\"insufficient_funds\"} 0",
        "tollgate_ingest_refusals_total{code=\"bad_client_auth\"} 0",
        "tollgate_ingest_connections_open 0",
    ] {
        assert!(
            metrics.lines().any(|line| line == series),
            "no `{series}` in a fresh server's /metrics:\n{metrics}"
        );
    }
    let status = server
        .terminate(Duration::from_secs(60))
        .expect("stops on SIGTERM");
    assert!(status.success(), "exit status {status}");
}

fn load(server: &ServerProcess, receipts: u32, extra: &[&str]) -> Summary {
    let mut args: Vec<String> = [
        "--addr",
        &server.listen.to_string(),
        "--check",
        &format!("http://{}", server.http),
        "--receipts",
        &receipts.to_string(),
        "--payers",
        "200",
        "--connections",
        "3",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let run = child::run(Path::new(TOLLGATE_LOAD), &args).expect("run tollgate-load");
    assert!(
        run.status.success(),
        "tollgate-load failed: {:?}",
        run.summary
    );
    run.summary
}

#[test]
fn a_chainless_server_takes_load_checks_out_and_keeps_it_across_a_clean_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let acked_log = dir.path().join("acked.jsonl");
    let server = start_chainless(&data_dir);
    let summary = load(
        &server,
        20_000,
        &[
            "--bad-sig-pct",
            "2",
            "--replay-pct",
            "2",
            "--stale-pct",
            "1",
            "--acked-log",
            &acked_log.display().to_string(),
        ],
    );
    assert_eq!(summary.sent, 20_000);
    assert_eq!(summary.acked, 20_000);
    assert_eq!(summary.verdict_mismatches, 0);
    let accepted = summary.accepted;
    assert!(accepted > 0 && accepted < 20_000, "{summary:?}");

    let metrics = http_get(&format!("http://{}/metrics", server.http));
    assert!(
        metrics.contains("tollgate_ingest_receipts_received_total 20000"),
        "{metrics}"
    );
    // Everything the README's metrics table promises for a chainless server under load.
    for name in [
        "tollgate_ingest_connections_open",
        "tollgate_ingest_connections_accepted_total",
        "tollgate_ingest_batches_received_total",
        "tollgate_ingest_batch_receipts",
        "tollgate_ingest_receipts_accepted_total",
        "tollgate_ingest_receipts_rejected_total{reason=\"bad_signature\"}",
        "tollgate_ingest_receipts_rejected_total{reason=\"duplicate\"}",
        "tollgate_ingest_engine_batches_in_flight",
        "tollgate_verify_queue_batches",
        "tollgate_ledger_queue_batches",
        "tollgate_verify_seconds",
        "tollgate_verify_equations_total",
        "tollgate_ledger_write_seconds",
        "tollgate_ledger_group_receipts",
        "tollgate_ledger_receipts_accepted_total",
        "tollgate_ledger_receipts_rejected_total{reason=\"duplicate\"}",
    ] {
        assert!(metrics.contains(name), "no {name} in /metrics:\n{metrics}");
    }
    let log = std::fs::read_to_string(&acked_log).expect("acked log");
    let first: serde_json::Value =
        serde_json::from_str(log.lines().next().expect("a line")).expect("JSON line");
    let payer = first["payer"].as_str().expect("payer hex").to_owned();
    let balance_url = |server: &ServerProcess| format!("http://{}/v1/payers/{payer}", server.http);
    let before = http_get(&balance_url(&server));
    assert!(before.contains("\"pending\""), "{before}");
    let status = server
        .terminate(Duration::from_secs(60))
        .expect("stops on SIGTERM");
    assert!(status.success(), "exit status {status}");

    let server = start_chainless(&data_dir);
    assert_eq!(
        http_get(&balance_url(&server)),
        before,
        "balance changed across a restart"
    );
    // The same seed continues the same channels; --check compares deltas, so it still holds.
    let again = load(&server, 5_000, &[]);
    assert_eq!(again.acked, 5_000);
    assert_eq!(again.verdict_mismatches, 0);
    let status = server
        .terminate(Duration::from_secs(60))
        .expect("stops on SIGTERM");
    assert!(status.success(), "exit status {status}");
}

/// `tollgate-load --sessions-per-payer` over the network: grants registered over GRANT, a
/// session revoked over REVOKE during the run, and every session kind given the verdict it is
/// owed; a second run with the same seed re-registers the same grants.
#[test]
fn a_session_key_workload_over_the_network_gets_every_expected_verdict_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_chainless(&dir.path().join("data"));
    let flags = [
        "--sessions-per-payer",
        "2",
        "--replay-pct",
        "1",
        "--over-cap-pct",
        "1",
        "--expired-pct",
        "1",
        "--revoked-pct",
        "1",
        "--out-of-scope-pct",
        "1",
    ];
    for _ in 0..2 {
        let summary = load(&server, 10_000, &flags);
        assert_eq!((summary.sent, summary.acked), (10_000, 10_000));
        assert_eq!(summary.verdict_mismatches, 0, "{summary:?}");
        for reason in [
            "duplicate",
            "over_grant_cap",
            "grant_expired",
            "grant_revoked",
            "payee_not_in_grant",
        ] {
            assert!(
                summary.rejected.get(reason).copied().unwrap_or(0) > 0,
                "{reason}: {:?}",
                summary.rejected
            );
        }
    }
    let status = server
        .terminate(Duration::from_secs(60))
        .expect("stops on SIGTERM");
    assert!(status.success(), "exit status {status}");
}

/// A GET from a plain thread: the tests here are synchronous.
fn http_get(url: &str) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        reqwest::get(url)
            .await
            .expect("GET")
            .text()
            .await
            .expect("body")
    })
}

#[test]
fn print_config_masks_the_rpc_url_path_query_and_userinfo() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rpc_url = "https://user:PASSWORD@eth.example.com:8443/v2/PATHKEY?apikey=QUERYKEY";
    let output = printed(
        dir.path(),
        "",
        &[
            ("TOLLGATE_RPC_URL", rpc_url),
            ("TOLLGATE_OPERATOR_KEY", &"cd".repeat(32)),
        ],
        &["--contract", "0x00000000000000000000000000000000000000aa"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    for secret in ["PASSWORD", "PATHKEY", "QUERYKEY", "user"] {
        assert!(!printed.contains(secret), "{secret} shown in\n{printed}");
    }
    let shown: toml::Table = toml::from_str(&printed).expect("printed config is TOML");
    assert_eq!(
        shown.get("rpc_url").and_then(toml::Value::as_str),
        Some("https://eth.example.com:8443/***"),
        "scheme, host and port stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_settings_under_which_a_payer_exit_can_overtake_accepted_receipts() {
    use tollgate_settle::chain::DeployParams;
    use tollgate_tools::serve::process::dev_chain_args;

    let anvil = common::spawn_anvil();
    let rpc_url = anvil.endpoint();
    let params = DeployParams {
        challenge_window_secs: 10,
        withdrawal_delay_secs: 30,
        arbiter: Some(anvil.addresses()[9]),
        ..DeployParams::dev()
    };
    let deployed = common::deploy(&anvil, &params).await;
    let operator_key = hex::encode(common::dev_key(&anvil, 0).to_bytes());
    let dir = tempfile::tempdir().expect("tempdir");
    let start = |extra: &[&str]| {
        let mut args = dev_chain_args(&rpc_url, &deployed, &dir.path().join("data"));
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        ServerProcess::start(
            TOLLGATE.as_ref(),
            &args,
            None,
            &[("TOLLGATE_OPERATOR_KEY", &operator_key)],
        )
    };
    let refused = |extra: &[&str]| match start(extra) {
        Ok(_) => panic!("serve started with {extra:?} against a 10 s window and a 30 s exit delay"),
        Err(error) => format!("{error:#}"),
    };

    // 15 s epochs + 10 s window + 30 s default budget + 1,000 ms funds poll reach the 30 s delay.
    let error = refused(&["--epoch-secs", "15"]);
    for named in [
        "withdrawalDelaySecs (30 s)",
        "epoch_secs 15 s",
        "challengeWindowSecs 10 s",
        "commit_latency_budget_secs 30 s",
        "funds_poll_ms 1000 ms",
        "= 56000 ms",
    ] {
        assert!(error.contains(named), "{named:?} not in: {error}");
    }
    // Epochs no longer than the window queue without bound, whatever the delay.
    let error = refused(&["--epoch-secs", "10", "--commit-latency-budget-secs", "0"]);
    assert!(
        error.contains("epoch_secs (10 s) must be above the contract's challengeWindowSecs (10 s)"),
        "{error}"
    );
    // 15 + 10 + 3 + 1 = 29 s: inside the delay.
    let server = start(&["--epoch-secs", "15", "--commit-latency-budget-secs", "3"])
        .expect("serve starts with settings the exit delay covers");
    let status = server
        .terminate(Duration::from_secs(60))
        .expect("stops on SIGTERM");
    assert!(status.success(), "{status}");
}
