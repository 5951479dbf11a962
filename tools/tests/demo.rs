//! The settlement path through the real server, as `tollgate demo` runs it on a small scale:
//! anvil, deploy, deposits for 30 payers, `tollgate serve` with settlement on, receipts streamed
//! by `tollgate-load` (bad ones included; an overdraft must be refused before it reaches the
//! chain), at least two epochs committed, every payer's and payee's balance equal to the
//! contract's, a proof accepted by `verifyLeaf` while a tampered leaf is not, a payee withdrawing
//! exactly what it is owed, and the last epoch commit reverting when sent again.

use std::process::Command;

#[test]
fn the_demo_agrees_with_the_chain_on_a_small_run() {
    let anvil = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["demo", "--anvil", anvil])
        .args(["--payers", "30", "--receipts", "12000", "--rate", "6000"])
        .args(["--epoch-secs", "1", "--connections", "3"])
        .output()
        .expect("run tollgate demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("AGREED in"), "{stdout}");
    assert!(
        stdout.contains("insufficient_funds"),
        "no overdraft refused: {stdout}"
    );
    assert!(
        stdout.contains("verifyLeaf: true; with cumulative + 1: false"),
        "{stdout}"
    );
    assert!(
        stdout.contains(" withdrew ") && !stdout.contains("WRONG"),
        "{stdout}"
    );
    assert!(
        stdout.contains("replayed: reverts with UnexpectedPart"),
        "a resubmitted epoch must revert: {stdout}"
    );
    let committed = stdout
        .lines()
        .filter(|line| line.contains(" committed "))
        .count();
    assert!(committed >= 2, "{committed} epochs committed: {stdout}");
}
