//! `interop-runner --client URL --leader URL --helper URL --collector URL`: runs the interop
//! cases against any four roles' test APIs (duet's or another implementation's) and prints each
//! case's outcome; exits 1 if any failed.

fn arg(name: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned()).unwrap_or_else(|| {
        eprintln!("usage: interop-runner --client URL --leader URL --helper URL --collector URL");
        std::process::exit(2)
    })
}

#[tokio::main]
async fn main() {
    let roles = duet_tests::runner::Roles {
        client: arg("--client"),
        leader: arg("--leader"),
        helper: arg("--helper"),
        collector: arg("--collector"),
    };
    let outcomes = duet_tests::runner::run_all(roles).await;
    let mut failed = 0;
    for o in &outcomes {
        match &o.result {
            Ok(detail) => println!("PASS  {}: {detail}", o.case),
            Err(e) => {
                failed += 1;
                println!("FAIL  {}: {e}", o.case)
            }
        }
    }
    println!("{} cases, {failed} failed", outcomes.len());
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
