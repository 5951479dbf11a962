//! The committed contract artifacts must be what the pinned solc makes of the committed sources.

mod common;

use std::process::Command;

#[test]
fn committed_artifacts_match_a_fresh_compile() {
    let root = common::workspace_root();
    let solc = root.join("node_modules/solc/package.json");
    assert!(
        solc.is_file(),
        "{} missing: run `npm ci` at the repository root to install the pinned solc",
        solc.display()
    );
    let output = Command::new("node")
        .arg(root.join("settle/scripts/compile.js"))
        .arg("--check")
        .current_dir(&root)
        .output()
        .unwrap_or_else(|error| {
            panic!("could not run node (needed to recompile the contracts): {error}")
        });
    assert!(
        output.status.success(),
        "settle/artifacts is stale:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
