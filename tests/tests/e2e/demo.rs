//! `duet demo` as a user runs it: its own leader and helper processes, uploads, a collection,
//! and a result that must equal the histogram computed in the clear.

use std::process::Command;

#[test]
fn the_demo_collects_the_true_histogram() {
    let duet = duet_cli::process::sibling_binary("duet").unwrap();
    let out = Command::new(duet).args(["demo", "--reports", "500", "--buckets", "6"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("Reports in the batch: 500. The collected histogram equals the one computed in the clear."));
    assert!(stdout.contains("do not collude"), "the privacy statement is shown");
    // One table row per bucket, each with equal collected and clear counts.
    let rows: Vec<Vec<u64>> = stdout
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() >= 3 && cols[0].parse::<u64>().is_ok())
                .then(|| cols[..3].iter().map(|c| c.parse().unwrap()).collect())
        })
        .collect();
    assert_eq!(rows.len(), 6, "{stdout}");
    assert!(rows.iter().all(|r| r[1] == r[2]), "{stdout}");
    assert_eq!(rows.iter().map(|r| r[1]).sum::<u64>(), 500);
}
