//! The settlement path through the real server, as `tollgate demo` runs it on a small scale:
//! anvil, deploy with a real challenge window and a separate arbiter, deposits for 30 payers,
//! `tollgate serve` with settlement on, receipts streamed by `tollgate-load` (bad ones included;
//! an overdraft must be refused before it reaches the chain), one epoch disputed by the arbiter and
//! its amounts committed again, one payer's exit, every payer's and payee's balance equal to the
//! contract's (before and after the exit), a proof accepted by `verifyLeaf` while a tampered leaf
//! is not, a payee withdrawing exactly what it is owed, and the last epoch commit reverting with
//! `UnexpectedPart` when sent again. Each check below looks for the demo's own line of that step,
//! never for a word that a header or another step could print.

use std::process::Command;

/// Rows of the demo's epoch table: `(epoch, status)` for each line that starts with a number.
fn epoch_rows(stdout: &str) -> Vec<(u64, String)> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let epoch = fields.next()?.parse().ok()?;
            let status = fields.next()?.to_owned();
            Some((epoch, status))
        })
        .collect()
}

fn line_starting<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?}: {stdout}"))
}

#[test]
fn the_demo_agrees_with_the_chain_on_a_small_run() {
    let anvil = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["demo", "--anvil", anvil])
        .args(["--payers", "30", "--receipts", "12000", "--rate", "6000"])
        .args([
            "--epoch-secs",
            "3",
            "--window-secs",
            "2",
            "--connections",
            "3",
        ])
        .output()
        .expect("run tollgate demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("\nAGREED in"), "{stdout}");
    assert!(!stdout.contains("WRONG"), "{stdout}");
    assert!(
        stdout.contains("insufficient_funds"),
        "no overdraft refused: {stdout}"
    );

    // The contract was deployed with a window and an arbiter that is not the operator.
    let roles = line_starting(&stdout, "operator ");
    let words: Vec<&str> = roles.split_whitespace().collect();
    assert_ne!(
        words[1].trim_end_matches(','),
        words[3].trim_end_matches(','),
        "{roles}"
    );
    assert!(roles.contains("challenge window 2 s"), "{roles}");

    // One epoch disputed, shown as such, and its amounts committed again in a later one.
    let disputed: u64 = line_starting(&stdout, "arbiter ")
        .rsplit(' ')
        .next()
        .and_then(|epoch| epoch.parse().ok())
        .expect("the disputed epoch");
    let rows = epoch_rows(&stdout);
    assert!(
        rows.contains(&(disputed, "disputed".to_owned())),
        "{rows:?}"
    );
    let committed: Vec<u64> = rows
        .iter()
        .filter(|(_, status)| status == "committed")
        .map(|(epoch, _)| *epoch)
        .collect();
    assert!(committed.len() >= 2, "{rows:?}");
    let recommitted = line_starting(&stdout, &format!("epoch {disputed}: disputed with "));
    assert!(
        !recommitted.contains("recommitted in epoch none"),
        "{recommitted}"
    );

    // The agent's session stopped at its cap, its payer's deposit still paying.
    let agent = line_starting(&stdout, "the agent paid ");
    assert!(
        agent.contains("14 calls of 7 (98); call 15 was refused: over_grant_cap"),
        "{agent}"
    );
    assert!(
        line_starting(&stdout, "the payer's available balance went from ")
            .contains("its own key still pays")
    );

    // A payer exit, paid in full, seen by the engine.
    let exit = line_starting(&stdout, "payer ");
    assert!(
        exit.contains(" 0 left requested")
            && exit.contains("stopped its spend at the request: true")
            && exit.contains("shows it withdrawn: true"),
        "{exit}"
    );
    assert_eq!(
        stdout.matches("\nall agree").count(),
        2,
        "balances compared before and after the exit: {stdout}"
    );

    assert!(
        stdout.contains("verifyLeaf: true; with cumulative + 1: false"),
        "{stdout}"
    );
    assert!(stdout.contains(" withdrew "), "{stdout}");
    assert!(
        stdout.contains("replayed: reverts with UnexpectedPart"),
        "a resubmitted epoch must revert: {stdout}"
    );
}
