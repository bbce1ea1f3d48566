//! The promises of the crate layout: an app that embeds the client and collector SDKs
//! (duet-client) pulls no server crate into its build.

use std::process::Command;

#[test]
fn the_client_sdk_pulls_no_server_crate() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-p", "duet-client", "-e", "normal,features", "--prefix", "none"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: std::collections::BTreeSet<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(crates.contains("reqwest") && crates.contains("duet-common"), "{crates:?}");
    for server in ["sqlx", "axum", "duet-leader", "duet-helper", "tokio-postgres", "rusqlite"] {
        assert!(!crates.contains(server), "duet-client pulls {server}:\n{tree}");
    }
    // hyper comes with reqwest, as an HTTP client only.
    assert!(tree.contains("hyper feature \"client\""), "{tree}");
    assert!(!tree.contains("hyper feature \"server\""), "duet-client pulls an HTTP server:\n{tree}");
}
