//! `tollgate bench e2e` end to end on a small workload: it must run both phases against the real
//! server and report figures that are consistent with each other. Speeds are never asserted.

use std::process::Command;

#[test]
fn the_end_to_end_bench_reports_consistent_figures() {
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["bench", "e2e", "--json"])
        .args([
            "--receipts",
            "6000",
            "--payers",
            "100",
            "--connections",
            "4",
        ])
        .args([
            "--paced-pct",
            "50",
            "--offered-secs",
            "1",
            "--overload",
            "--overload-secs",
            "1",
        ])
        .output()
        .expect("run tollgate bench e2e");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a line")).expect("JSON report");
    let number = |path: &[&str]| {
        path.iter()
            .fold(&report, |value, key| &value[*key])
            .as_f64()
            .unwrap_or_else(|| panic!("{path:?} missing in {report}"))
    };
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
