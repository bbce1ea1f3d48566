//! The promises of the crate layout: an app that embeds the client and collector SDKs
//! (duet-client) pulls no server crate into its build; the wire layer (duet-common) pulls none
//! either; and each role's code is in its own crate, apart from the other role's.

use std::collections::BTreeSet;
use std::process::Command;

/// `cargo tree` of a workspace crate's normal dependencies, with features: the text and the
/// crates it names.
fn tree(package: &str) -> (String, BTreeSet<String>) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-p", package, "-e", "normal,features", "--prefix", "none"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout).into_owned();
    let crates = tree.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect();
    (tree, crates)
}

#[test]
fn the_wire_layer_and_each_role_stand_apart() {
    let (text, common) = tree("duet-common");
    assert!(common.contains("prio") && common.contains("hpke"), "{text}");
    for server in ["sqlx", "axum", "hyper", "tokio", "duet-server"] {
        assert!(!common.contains(server), "duet-common pulls {server}:\n{text}");
    }
    let (text, leader) = tree("duet-leader");
    assert!(leader.contains("duet-server") && leader.contains("sqlx"), "{text}");
    assert!(
        !leader.contains("duet-helper") && !leader.contains("duet-client"),
        "duet-leader pulls another role:\n{text}"
    );
    let (text, helper) = tree("duet-helper");
    assert!(helper.contains("duet-server"), "{text}");
    assert!(
        !helper.contains("duet-leader") && !helper.contains("duet-client"),
        "duet-helper pulls another role:\n{text}"
    );
}

#[test]
fn the_client_sdk_pulls_no_server_crate() {
    let (text, crates) = tree("duet-client");
    assert!(crates.contains("reqwest") && crates.contains("duet-common"), "{crates:?}");
    for server in ["sqlx", "axum", "duet-server", "duet-leader", "duet-helper", "tokio-postgres", "rusqlite"] {
        assert!(!crates.contains(server), "duet-client pulls {server}:\n{text}");
    }
    // hyper comes with reqwest, as an HTTP client only.
    assert!(text.contains("hyper feature \"client\""), "{text}");
    assert!(!text.contains("hyper feature \"server\""), "duet-client pulls an HTTP server:\n{text}");
}
