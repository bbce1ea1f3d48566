//! Tells the tests whether this machine lets them create network namespaces (`ip netns`, as
//! root): the test across two hosts is then compiled to run, and otherwise marked ignored with
//! the reason, so that it is reported as skipped rather than passed.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(duet_netns)");
    println!("cargo:rerun-if-changed=build.rs");
    let name = format!("duet-probe-{}", std::process::id());
    let ip = |args: &[&str]| std::process::Command::new("ip").args(args).output().is_ok_and(|o| o.status.success());
    if ip(&["netns", "add", &name]) {
        ip(&["netns", "del", &name]);
        println!("cargo:rustc-cfg=duet_netns");
    }
}
