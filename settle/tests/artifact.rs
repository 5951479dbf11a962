//! The committed contract artifacts must be what the pinned solc makes of the committed sources.

mod common;

#[test]
fn committed_artifacts_match_a_fresh_compile() {
    let root = common::workspace_root();
    let solc = root.join("node_modules/solc/package.json");
    assert!(
        solc.is_file(),
        "{} missing: run `npm ci` at the repository root to install the pinned solc",
        solc.display()
    );
    let output = common::run_node(
        "settle/scripts/compile.js",
        &["--check".as_ref()],
        "to recompile the contracts",
    );
    assert!(
        output.status.success(),
        "settle/artifacts is stale:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
