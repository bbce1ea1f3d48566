//! `duet-helper`: runs the helper aggregator (`duet-helper [OPTIONS]`), or applies database
//! migrations (`duet-helper migrate`). Settings come from flags, `DUET_*` environment variables
//! and a TOML file (`--config`), in that order of precedence.

use clap::{Args, Parser, Subcommand};
use duet_common::auth::AuthenticationToken;
use duet_helper::queue::QueueLimits;
use duet_helper::{router, HelperConfig};
use duet_server::runtime::{
    check_common, migrate, serve, server_main, shutdown_signal, ConnectionFlags, ConnectionLimits, ServiceFlags,
};

#[derive(Parser)]
#[command(name = "duet-helper", about = "The duet DAP-18 helper aggregator", args_conflicts_with_subcommands = true)]
struct Cli {
    /// TOML configuration file; its keys are the settings' flag names with underscores, e.g.
    /// `max_body_bytes = 1048576`. Flags and DUET_* environment variables override it.
    #[arg(long, global = true, env = "DUET_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the database's pending migrations and exit (serving applies them too).
    Migrate {
        /// Database URL (sqlite:PATH or postgres://...).
        #[arg(long, env = "DUET_DATABASE", default_value = "sqlite:duet-helper.db")]
        database: String,
        /// The database keys (see --database-keys of serving).
        #[arg(long, env = "DUET_DATABASE_KEYS", hide_env_values = true)]
        database_keys: Option<String>,
    },
    /// Serve the interop test API (`/internal/test/*`) and DAP on one port, for interop runners.
    /// Never for production: tasks come from the runner, unauthenticated.
    Interop(InteropArgs),
}

#[derive(Args)]
struct InteropArgs {
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    /// Database URL; without it, a fresh SQLite file in a temporary folder.
    #[arg(long)]
    database: Option<String>,
    /// The database keys: required with --database; without --database, a key that lives as
    /// long as the process and its temporary database.
    #[arg(long, env = "DUET_DATABASE_KEYS", hide_env_values = true)]
    database_keys: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "DUET_LISTEN", default_value = "127.0.0.1:8081")]
    listen: String,
    /// Database URL (sqlite:PATH or postgres://...).
    #[arg(long, env = "DUET_DATABASE", default_value = "sqlite:duet-helper.db")]
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
    /// Aggregation jobs verified at once (default: one per CPU).
    #[arg(long)]
    aggregation_workers: Option<usize>,
    /// Aggregation jobs admitted (verifying or waiting) from which on a new one is answered
    /// asynchronously (default: twice the workers; 0 answers every job asynchronously).
    #[arg(long)]
    async_queue_threshold: Option<usize>,
    /// Aggregation jobs admitted from which on a new one is refused with 503 and Retry-After.
    #[arg(long, default_value_t = 64)]
    max_queued_jobs: usize,
    #[command(flatten)]
    gc: duet_server::gc::GcFlags,
    #[command(flatten)]
    connection: ConnectionFlags,
    #[command(flatten)]
    service: ServiceFlags,
}

fn main() {
    server_main(
        "duet-helper",
        |cli: &Cli| cli.command.is_none().then_some(&cli.serve.service),
        |cli, described| async move {
            match cli.command {
                Some(Command::Migrate { database, database_keys }) => {
                    migrate(&database, database_keys.as_deref()).await
                }
                Some(Command::Interop(args)) => interop(args).await,
                None => serve_helper(cli.serve, &described).await,
            }
        },
    );
}

/// The work queue's sizes, checked.
fn queue_limits(args: &ServeArgs) -> Result<QueueLimits, String> {
    let defaults = QueueLimits::default();
    let workers = args.aggregation_workers.unwrap_or(defaults.workers);
    let limits = QueueLimits {
        workers,
        async_threshold: args.async_queue_threshold.unwrap_or(2 * workers),
        max_queued: args.max_queued_jobs,
    };
    if limits.workers == 0 || limits.max_queued == 0 {
        return Err("aggregation_workers and max_queued_jobs must be at least 1".into());
    }
    if limits.async_threshold > limits.max_queued {
        return Err("async_queue_threshold must not exceed max_queued_jobs".into());
    }
    Ok(limits)
}

async fn serve_helper(args: ServeArgs, described: &str) -> Result<(), String> {
    let common = check_common(
        &args.listen,
        &args.database,
        args.admin_token.as_deref(),
        args.database_keys.as_deref(),
        &args.connection,
        &args.service,
    )?;
    let queue = queue_limits(&args)?;
    if args.service.check_config {
        print!("{described}");
        println!("duet-helper: configuration OK");
        return Ok(());
    }
    args.connection.limit_bodies_in_memory(args.max_body_bytes);
    let store =
        duet_helper::store::open(&args.database, common.database_keys.clone()).await.map_err(|e| e.to_string())?;
    let config = HelperConfig {
        tolerable_clock_skew_seconds: args.clock_skew_seconds,
        max_body_bytes: args.max_body_bytes,
        queue,
        default_report_expiry_seconds: args.default_report_expiry_seconds,
    };
    let (stop_gc, stop_rx) = tokio::sync::watch::channel(false);
    let gc = args
        .gc
        .settings(args.default_report_expiry_seconds)
        .map(|settings| duet_helper::spawn_garbage_collector(store.clone(), settings, stop_rx));
    let tls = common.tls;
    let listener =
        tokio::net::TcpListener::bind(&args.listen).await.map_err(|e| format!("listen {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let ops = args.service.start_operations(store.clone(), None).await?;
    let limits = args.connection.limits();
    let (app, admin) = match args.service.admin_listen {
        Some(_) => {
            let admin = duet_helper::admin_router(store.clone(), &config, common.admin_token);
            (router(store, config, None), args.service.start_admin(admin, tls.clone(), limits).await?)
        }
        None => (router(store, config, Some(common.admin_token)), None),
    };
    tracing::info!(%addr, tls = tls.is_some(), "duet-helper listening");
    // Tests and the demo read this line to learn the port when listening on port 0. It goes to
    // standard error, so that standard output holds nothing but log lines (JSON ones included).
    eprintln!("listening on {addr}");
    let served = serve(listener, app, tls, limits, shutdown_signal()).await;
    let _ = stop_gc.send(true);
    for listener in [ops, admin, gc].into_iter().flatten() {
        listener.abort();
    }
    served
}

async fn interop(args: InteropArgs) -> Result<(), String> {
    let keys = duet_server::runtime::interop_database_keys(args.database_keys.as_deref(), args.database.is_some())?;
    let (_dir, database) = duet_server::runtime::interop_database(args.database, "helper")?;
    let store = duet_helper::store::open(&database, keys).await.map_err(|e| e.to_string())?;
    let app = router(store.clone(), HelperConfig::default(), Some(AuthenticationToken::random()))
        .merge(duet_server::interop::router(store, duet_common::messages::Role::Helper));
    let listen = format!("{}:{}", args.host, args.port);
    let listener = tokio::net::TcpListener::bind(&listen).await.map_err(|e| format!("listen {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, %database, "duet-helper interop API listening");
    eprintln!("listening on {addr}");
    serve(listener, app, None, ConnectionLimits::default(), shutdown_signal()).await
}
