//! `duet-leader`: runs the leader aggregator: its HTTP API and, in the same process, the job
//! creator and the aggregation and collection job drivers. Settings come from flags, `DUET_*`
//! environment variables and a TOML file (`--config`), in that order of precedence.

use clap::{Parser, Subcommand};
use duet_common::auth::AuthenticationToken;
use duet_leader::{router, spawn_workers, LeaderConfig, LeaderState};
use duet_server::runtime::{
    check_common, migrate, serve, server_main, shutdown_signal, ConnectionFlags, ConnectionLimits, ServiceFlags,
};
use std::time::Duration;

#[derive(Parser)]
#[command(name = "duet-leader", about = "The duet DAP-18 leader aggregator", args_conflicts_with_subcommands = true)]
struct Cli {
    /// TOML configuration file; its keys are the settings' flag names with underscores, e.g.
    /// `max_job_size = 500`. Flags and DUET_* environment variables override it.
    #[arg(long, global = true, env = "DUET_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Args,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the database's pending migrations and exit (serving applies them too).
    Migrate {
        /// Database URL (sqlite:PATH or postgres://...).
        #[arg(long, env = "DUET_DATABASE", default_value = "sqlite:duet-leader.db")]
        database: String,
        /// The database keys (see --database-keys of serving).
        #[arg(long, env = "DUET_DATABASE_KEYS", hide_env_values = true)]
        database_keys: Option<String>,
    },
    /// Serve the interop test API (`/internal/test/*`) and DAP on one port, for interop runners,
    /// with the job creator and drivers on short intervals. Never for production: tasks come
    /// from the runner, unauthenticated.
    Interop(InteropArgs),
}

#[derive(clap::Args)]
struct InteropArgs {
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    /// Database URL; without it, a fresh SQLite file in a temporary folder. Several interop
    /// leaders may share one PostgreSQL database.
    #[arg(long)]
    database: Option<String>,
    /// The database keys: required with --database; without --database, a key that lives as
    /// long as the process and its temporary database.
    #[arg(long, env = "DUET_DATABASE_KEYS", hide_env_values = true)]
    database_keys: Option<String>,
}

#[derive(clap::Args)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "DUET_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Database URL (sqlite:PATH or postgres://...).
    #[arg(long, env = "DUET_DATABASE", default_value = "sqlite:duet-leader.db")]
    database: String,
    /// Bearer token of the admin API (read from the environment rather than the command line
    /// where you can).
    #[arg(long, env = "DUET_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Keys that seal the secrets the database keeps (verify keys, tokens, HPKE private keys):
    /// comma-separated, the first seals, every one opens (rotation). Make one with `duet
    /// database-key`; keep them outside the database and its backups.
    #[arg(long, env = "DUET_DATABASE_KEYS", hide_env_values = true)]
    database_keys: Option<String>,
    /// Seconds a report's timestamp may lie in the future.
    #[arg(long, default_value_t = 300)]
    clock_skew_seconds: u64,
    /// Seconds after which a report is too old to take (report_dropped, at upload and at
    /// aggregation), for tasks provisioned without a report_expiry_age of their own. Unset: no
    /// limit.
    #[arg(long)]
    default_report_expiry_seconds: Option<u64>,
    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    max_body_bytes: usize,
    /// The most reports one upload request may carry; larger requests get 413 and store
    /// nothing (the client SDK sends 1,000 a request).
    #[arg(long, default_value_t = 10_000)]
    max_reports_per_upload: usize,
    /// Smallest aggregation job, unless its reports have waited --max-job-delay-seconds.
    #[arg(long, default_value_t = 1)]
    min_job_size: usize,
    /// Largest aggregation job.
    #[arg(long, default_value_t = 1000)]
    max_job_size: usize,
    /// How long reports wait for a job of --min-job-size.
    #[arg(long, default_value_t = 10)]
    max_job_delay_seconds: i64,
    /// Milliseconds between job creator passes.
    #[arg(long, default_value_t = 1000)]
    creator_interval_ms: u64,
    /// Milliseconds between driver passes when idle.
    #[arg(long, default_value_t = 500)]
    driver_interval_ms: u64,
    /// Aggregation jobs driven at once.
    #[arg(long, default_value_t = 4)]
    max_concurrent_jobs: usize,
    /// Seconds a replica owns a job it took; a crashed replica's jobs are taken over after this.
    #[arg(long, default_value_t = 120)]
    lease_seconds: i64,
    /// Longest pause, in seconds, between two attempts to reach a helper that is down, slow or
    /// overloaded (jobs wait for it as long as it takes; the helper's Retry-After is honoured up
    /// to this).
    #[arg(long, default_value_t = 600)]
    max_retry_delay_seconds: u64,
    /// Seconds one request to the helper may take, from connecting to the answer's last byte.
    #[arg(long, default_value_t = 300)]
    helper_timeout_seconds: u64,
    /// Collection jobs driven at once.
    #[arg(long, default_value_t = 8)]
    max_concurrent_collections: usize,
    #[command(flatten)]
    gc: duet_server::gc::GcFlags,
    #[command(flatten)]
    connection: ConnectionFlags,
    /// Extra trust roots (PEM) for the helper's TLS certificate, besides the bundled Mozilla
    /// roots (webpki-roots).
    #[arg(long, env = "DUET_HELPER_CA_FILE")]
    helper_ca_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    service: ServiceFlags,
}

fn main() {
    server_main(
        "duet-leader",
        |cli: &Cli| cli.command.is_none().then_some(&cli.serve.service),
        |cli, described| async move {
            match cli.command {
                Some(Command::Migrate { database, database_keys }) => {
                    migrate(&database, database_keys.as_deref()).await
                }
                Some(Command::Interop(args)) => interop(args).await,
                None => run(cli.serve, &described).await,
            }
        },
    );
}

/// The leader's settings, checked: everything `run` needs besides the database.
fn leader_config(args: &Args) -> Result<LeaderConfig, String> {
    if args.min_job_size == 0 || args.max_job_size < args.min_job_size {
        return Err("job sizes must satisfy 1 <= min_job_size <= max_job_size".into());
    }
    if args.lease_seconds < 1 {
        return Err("lease_seconds must be at least 1".into());
    }
    if args.max_job_delay_seconds < 0 {
        return Err("max_job_delay_seconds must not be negative".into());
    }
    if args.max_concurrent_jobs == 0
        || args.max_concurrent_collections == 0
        || args.creator_interval_ms == 0
        || args.driver_interval_ms == 0
    {
        return Err(
            "max_concurrent_jobs, max_concurrent_collections, creator_interval_ms and driver_interval_ms must be at least 1"
                .into(),
        );
    }
    if args.max_retry_delay_seconds == 0 || args.helper_timeout_seconds == 0 {
        return Err("max_retry_delay_seconds and helper_timeout_seconds must be at least 1".into());
    }
    let defaults = LeaderConfig::default();
    Ok(LeaderConfig {
        tolerable_clock_skew_seconds: args.clock_skew_seconds,
        max_body_bytes: args.max_body_bytes,
        max_reports_per_upload: args.max_reports_per_upload.max(1),
        default_report_expiry_seconds: args.default_report_expiry_seconds,
        job_sizes: duet_leader::store::JobSizes {
            min: args.min_job_size,
            max: args.max_job_size,
            max_delay_seconds: args.max_job_delay_seconds,
            ..defaults.job_sizes
        },
        creator_interval: Duration::from_millis(args.creator_interval_ms),
        driver_interval: Duration::from_millis(args.driver_interval_ms),
        max_concurrent_jobs: args.max_concurrent_jobs,
        max_concurrent_collections: args.max_concurrent_collections,
        lease_seconds: args.lease_seconds,
        max_retry_delay: Duration::from_secs(args.max_retry_delay_seconds),
        helper_timeout: Duration::from_secs(args.helper_timeout_seconds),
        gc: args.gc.settings(args.default_report_expiry_seconds),
        helper_ca_pem: match &args.helper_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| format!("helper_ca_file {}: {e}", path.display()))?),
            None => None,
        },
        ..defaults
    })
}

async fn run(args: Args, described: &str) -> Result<(), String> {
    let common = check_common(
        &args.listen,
        &args.database,
        args.admin_token.as_deref(),
        args.database_keys.as_deref(),
        &args.connection,
        &args.service,
    )?;
    let config = leader_config(&args)?;
    if args.service.check_config {
        // The trust roots must parse too, not only be readable (serving checks this in
        // `LeaderState::new`).
        duet_leader::peer::Peer::new(
            config.helper_timeout,
            config.helper_token_scheme,
            config.helper_ca_pem.as_deref(),
            config.max_body_bytes,
        )?;
        print!("{described}");
        println!("duet-leader: configuration OK");
        return Ok(());
    }
    args.connection.limit_bodies_in_memory(args.max_body_bytes);
    let store =
        duet_leader::store::open(&args.database, common.database_keys.clone()).await.map_err(|e| e.to_string())?;
    let state = LeaderState::new(store.clone(), config)?;
    let limits = args.connection.limits();
    let gauges: std::sync::Arc<dyn duet_server::metrics::RoleGauges> =
        std::sync::Arc::new(duet_leader::gauges::LeaderGauges(store.clone()));
    let ops = args.service.start_operations(store, Some(gauges)).await?;
    let (app, admin) = match args.service.admin_listen {
        Some(_) => {
            let admin = duet_leader::admin_router(&state, common.admin_token);
            (router(state.clone(), None), args.service.start_admin(admin, common.tls.clone(), limits).await?)
        }
        None => (router(state.clone(), Some(common.admin_token)), None),
    };
    let served = serve_leader(state, app, &args.listen, &args.database, common.tls, limits).await;
    for listener in [ops, admin].into_iter().flatten() {
        listener.abort();
    }
    served
}

/// Serves `app` on `listen` with the workers running, until SIGINT or SIGTERM.
async fn serve_leader(
    state: LeaderState,
    app: axum::Router,
    listen: &str,
    database: &str,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ConnectionLimits,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("listen {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = spawn_workers(state, stop_rx);
    tracing::info!(%addr, database = %duet_server::runtime::redact_url(database), "duet-leader listening");
    // Tests and the demo read this line to learn the port when listening on port 0. It goes to
    // standard error, so that standard output holds nothing but log lines (JSON ones included).
    eprintln!("listening on {addr}");
    // The workers are told to stop when the signal arrives, so that they finish the job in hand
    // while requests drain: the two waits overlap and shutdown takes at most about 30 s.
    let signalled = std::sync::Arc::new(std::sync::OnceLock::new());
    let at = signalled.clone();
    let stop_workers = async move {
        shutdown_signal().await;
        let _ = at.set(std::time::Instant::now());
        let _ = stop_tx.send(true);
    };
    let served = serve(listener, app, tls, limits, stop_workers).await;
    // A job cut short is taken over by another replica once its lease lapses.
    let since = signalled.get().map(|t| t.elapsed()).unwrap_or_default();
    let left = Duration::from_secs(30).saturating_sub(since).max(Duration::from_secs(5));
    let _ = tokio::time::timeout(left, async { while workers.join_next().await.is_some() {} }).await;
    served
}

async fn interop(args: InteropArgs) -> Result<(), String> {
    let keys = duet_server::runtime::interop_database_keys(args.database_keys.as_deref(), args.database.is_some())?;
    let (_dir, database) = duet_server::runtime::interop_database(args.database, "leader")?;
    let store = duet_leader::store::open(&database, keys).await.map_err(|e| e.to_string())?;
    let defaults = LeaderConfig::default();
    let config = LeaderConfig {
        job_sizes: duet_leader::store::JobSizes { min: 1, max_delay_seconds: 0, ..defaults.job_sizes },
        creator_interval: Duration::from_millis(200),
        driver_interval: Duration::from_millis(100),
        lease_seconds: 15,
        // The interop draft has the leader present its token in DAP-Auth-Token.
        helper_token_scheme: duet_common::auth::TokenScheme::DapAuthToken,
        ..defaults
    };
    let state = LeaderState::new(store.clone(), config)?;
    let app = router(state.clone(), Some(AuthenticationToken::random()))
        .merge(duet_server::interop::router(store, duet_common::messages::Role::Leader));
    serve_leader(state, app, &format!("{}:{}", args.host, args.port), &database, None, ConnectionLimits::default())
        .await
}
