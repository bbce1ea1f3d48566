//! `duet-helper`: runs the helper aggregator.

use clap::Parser;
use duet_common::auth::AuthenticationToken;
use duet_helper::{router, HelperConfig};

#[derive(Parser)]
#[command(name = "duet-helper", about = "The duet DAP-18 helper aggregator")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "DUET_LISTEN", default_value = "127.0.0.1:8081")]
    listen: String,
    /// Database URL.
    #[arg(long, env = "DUET_DATABASE", default_value = "sqlite:duet-helper.db")]
    database: String,
    /// Bearer token of the admin API (read from the environment rather than the command line
    /// where you can).
    #[arg(long, env = "DUET_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// Seconds a report's timestamp may lie in the future.
    #[arg(long, default_value_t = 300)]
    clock_skew_seconds: u64,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("duet-helper: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let admin_token = AuthenticationToken::new(args.admin_token).map_err(|e| format!("admin token: {e}"))?;
    let store = duet_common::server::storage::open(&args.database).await.map_err(|e| e.to_string())?;
    let config = HelperConfig { tolerable_clock_skew_seconds: args.clock_skew_seconds, ..Default::default() };
    let listener =
        tokio::net::TcpListener::bind(&args.listen).await.map_err(|e| format!("listen {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, "duet-helper listening");
    // Tests and the demo read this line to learn the port when listening on port 0.
    println!("listening on {addr}");
    axum::serve(listener, router(store, config, admin_token))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())
}
