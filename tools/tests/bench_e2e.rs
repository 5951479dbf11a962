//! `tollgate bench e2e` end to end on a small workload: it must run both phases against the real
//! server and report figures that are consistent with each other. Speeds are never asserted.

use std::process::Command;

/// `tollgate bench e2e --json ARGS`, which must succeed: its report.
fn bench_e2e(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["bench", "e2e", "--json"])
        .args(args)
        .output()
        .expect("run tollgate bench e2e");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().expect("a line")).expect("JSON report")
}

/// The number at `path` in `report`.
fn number(report: &serde_json::Value, path: &[&str]) -> f64 {
    path.iter()
        .fold(report, |value, key| &value[*key])
        .as_f64()
        .unwrap_or_else(|| panic!("{path:?} missing in {report}"))
}

#[test]
fn the_end_to_end_bench_reports_consistent_figures() {
    let report = bench_e2e(&[
        "--receipts",
        "6000",
        "--payers",
        "100",
        "--connections",
        "4",
        "--paced-pct",
        "50",
        "--offered-secs",
        "1",
        "--overload",
        "--overload-secs",
        "1",
    ]);
    let number = |path: &[&str]| number(&report, path);
    let ceiling = number(&["verify_ceiling_receipts_per_s"]);
    let e2e = number(&["e2e_receipts_per_s"]);
    assert!(ceiling > 0.0 && e2e > 0.0);
    assert!((number(&["e2e_vs_verify_ceiling"]) - e2e / ceiling).abs() < 1e-9);
    assert!(number(&["receipts_per_fsync"]) >= 1.0);
    assert!(number(&["server_peak_rss_mib"]) > 1.0);
    let latency = ["ack_latency_ms", "p50"];
    assert!(number(&latency) <= number(&["ack_latency_ms", "max"]));
    assert_eq!(number(&["paced", "offered_pct"]), 50.0);
    assert!(number(&["paced", "ack_latency_ms", "p99"]) > 0.0);
    assert_eq!(report["receipts"], 6000);
    assert_eq!(number(&["overload", "offered_pct"]), 400.0);
    assert_eq!(number(&["overload", "connections"]), 16.0);
    assert!(number(&["overload", "server_peak_rss_mib"]) >= number(&["server_peak_rss_mib"]));
}

/// `--cluster-rounds`: the one-node cluster on a real `nats-server` takes the same load as the
/// standalone server, and its figures add up (CPU by role, the log's bytes). Speeds are not
/// asserted.
#[test]
fn the_cluster_comparison_reports_consistent_figures() {
    let report = bench_e2e(&[
        // Enough receipts that each verify thread, and the standalone ledger's threads, run for
        // some ticks of the CPU clock (10 ms): 12,000 left the ledger under one tick on a Zen 5.
        "--receipts",
        "40000",
        "--payers",
        "100",
        "--connections",
        "4",
        "--archive-rounds",
        "0",
        "--paced-pct",
        "50",
        "--offered-secs",
        "1",
        "--cluster-rounds",
        "1",
        "--cluster-partitions",
        "4",
    ]);
    let number = |path: &[&str]| number(&report["cluster"], path);
    let (standalone, node) = (
        number(&["standalone_receipts_per_s"]),
        number(&["cluster_receipts_per_s"]),
    );
    assert!(standalone > 0.0 && node > 0.0);
    assert!((number(&["ratio"]) - node / standalone).abs() < 1e-9);
    assert_eq!(number(&["partitions"]), 4.0);
    // Each thread's time is counted in whole ticks (10 ms), so in a run this short a thread that
    // did a little shows none: the cluster node's dozens of small ledger threads may add up to
    // zero. The standalone server's few busy threads are each counted.
    for side in ["standalone_cpu", "cluster_cpu"] {
        assert!(number(&[side, "total"]) > 0.0, "{side}: no CPU measured");
    }
    // Standalone, the verify stage's threads verify a group of one chunk themselves (a paced
    // run's groups often are); a cluster's ingest side always hands its batches to the pool.
    assert!(
        number(&["standalone_cpu", "verify_pool"]) + number(&["standalone_cpu", "stage"]) > 0.0,
        "standalone: nothing verified"
    );
    assert!(
        number(&["cluster_cpu", "verify_pool"]) > 0.0,
        "cluster: verify pool idle"
    );
    let total = number(&["standalone_cpu", "total"]);
    assert!(
        number(&["standalone_cpu", "ledgers"]) > 0.0,
        "no ledger work found"
    );
    assert!(
        number(&["standalone_cpu", "other"]) < total / 2.0,
        "most of the standalone server's CPU unaccounted for"
    );
    assert!(number(&["nats_server_cpu_us_per_receipt"]) > 0.0);
    // A receipt travels whole (176 bytes as signed) inside a message with its headers.
    assert!(number(&["log_bytes_per_receipt"]) > 176.0);
    assert!(number(&["receipts_per_log_message"]) >= 1.0);
    assert!(number(&["paced", "cluster_ack_latency_ms", "p99"]) > 0.0);
}
