//! Tells the tests whether this machine lets them create network namespaces and veth pairs
//! (`ip netns`, `ip link`, as root): the test across two hosts is then compiled to run, and
//! otherwise marked ignored with the reason, so that it is reported as skipped rather than
//! passed. The answer is kept with the build: after a change of the machine's permissions,
//! `touch tests/build.rs` asks again.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(duet_netns)");
    println!("cargo:rerun-if-changed=build.rs");
    let pid = std::process::id();
    let (netns, veth) = (format!("duet-probe-{pid}"), format!("dprobe{pid}"));
    let ip = |args: &[&str]| std::process::Command::new("ip").args(args).output().is_ok_and(|o| o.status.success());
    if ip(&["netns", "add", &netns]) {
        let veth_ok = ip(&["link", "add", &veth, "type", "veth", "peer", "name", &format!("{veth}p")]);
        if veth_ok {
            ip(&["link", "del", &veth]);
        }
        ip(&["netns", "del", &netns]);
        if veth_ok {
            println!("cargo:rustc-cfg=duet_netns");
        }
    }
}
