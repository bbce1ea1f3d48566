//! What both server binaries do alike around their routers: the settings they share (logging,
//! the operations listener, connections and TLS), the shutdown signals they obey, and the
//! `migrate` command.

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logs to standard output in `format`, filtered by `filter` (tracing's env-filter syntax), else
/// by `RUST_LOG`, else at `info`.
pub fn init_tracing(format: LogFormat, filter: Option<&str>) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::try_new(f).map_err(|e| format!("log_filter {f:?}: {e}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
    };
    // Colours only for a person at a terminal, never into a file or a log collector.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    installed.map_err(|e| format!("logging: {e}"))
}

/// The `main` of both servers: loads the settings (exiting with clap's or the file's message on
/// a bad one), sets up logging (the serving command's settings; text for the others), runs `run`
/// with the settings and their description (for `--check-config`) on a multi-threaded runtime,
/// and exits 1 with a plain message if it fails.
pub fn server_main<C, Fut>(
    program: &str,
    service: impl FnOnce(&C) -> Option<&ServiceFlags>,
    run: impl FnOnce(C, String) -> Fut,
) where
    C: clap::Parser,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let settings = super::config::load::<C>().unwrap_or_else(|e| e.exit(program));
    let described = settings.describe();
    let cli = settings.cli;
    let logging = match service(&cli) {
        Some(flags) => flags.init_tracing(),
        None => init_tracing(LogFormat::Text, None),
    };
    let result = logging.and_then(|()| {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2);
        tune_allocator(cores);
        // CPU work (HPKE, Prio3) runs on the blocking pool, bounded (tokio's default is 512
        // threads, each with memory of its own) but with room for the jobs in flight to overlap
        // their CPU work with their waits on the database and the peer.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .max_blocking_threads(cores * 4)
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        runtime.block_on(run(cli, described))
    });
    if let Err(e) = result {
        eprintln!("{program}: {e}");
        std::process::exit(1);
    }
}

/// Keeps glibc's allocator from holding memory the servers no longer use, before any thread
/// starts. Measured with `duet bench` (histogram reports on SQLite): the leader's live heap
/// stays under 60 MB, yet with glibc's defaults its resident memory kept growing for minutes,
/// to twice or three times that, because:
/// - every thread that allocates gets an arena of its own, up to 8 per core, and each arena
///   keeps its high-water mark (the runtime's workers, the blocking pool and one thread per
///   SQLite connection all allocate);
/// - the mmap threshold rises to the largest block freed, so after the first request body is
///   freed, bodies of megabytes come from those arenas and fragment them.
///
/// So: one arena per core, and blocks of 256 KiB or more always mapped and unmapped on free.
/// `MALLOC_ARENA_MAX` or `MALLOC_MMAP_THRESHOLD_` in the environment wins over either.
fn tune_allocator(cores: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (parameter, value) in allocator_settings(cores, |name| std::env::var_os(name).is_some()) {
        // SAFETY: mallopt only sets an allocator parameter; no other thread exists yet.
        unsafe { libc::mallopt(parameter, value) };
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = cores;
}

/// The `mallopt` calls of [`tune_allocator`], without those the environment already sets.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn allocator_settings(cores: usize, in_environment: impl Fn(&str) -> bool) -> Vec<(libc::c_int, libc::c_int)> {
    let mut settings = Vec::new();
    if !in_environment("MALLOC_ARENA_MAX") {
        settings.push((libc::M_ARENA_MAX, libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX)));
    }
    if !in_environment("MALLOC_MMAP_THRESHOLD_") {
        settings.push((libc::M_MMAP_THRESHOLD, 256 * 1024));
    }
    settings
}

/// The settings of both servers that are about running them rather than about DAP.
#[derive(clap::Args, Debug, Clone)]
pub struct ServiceFlags {
    /// Address of the operations listener: Prometheus `/metrics`, liveness `/healthz` and
    /// readiness `/readyz` (off when unset). Keep it off the public network.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Address of a listener of its own for the admin API (`/admin/...`), e.g. an internal
    /// interface; the public listener then serves no `/admin`. Unset: the admin API is served
    /// beside DAP on `listen`.
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Log line format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Which events to log, in tracing's env-filter syntax (e.g. `info,duet_leader=debug`);
    /// when unset, RUST_LOG, else `info`.
    #[arg(long)]
    pub log_filter: Option<String>,
    /// Check the settings, print the effective ones (secrets redacted) with where each came
    /// from, and exit without serving.
    #[arg(long)]
    pub check_config: bool,
}

impl ServiceFlags {
    pub fn init_tracing(&self) -> Result<(), String> {
        init_tracing(self.log_format, self.log_filter.as_deref())
    }

    /// Starts the operations listener if one is configured. It stops with the process.
    pub async fn start_operations(
        &self,
        store: super::storage::Store,
        gauges: Option<std::sync::Arc<dyn super::metrics::RoleGauges>>,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, String> {
        let Some(listen) = &self.metrics_listen else { return Ok(None) };
        let handle = super::metrics::install();
        super::metrics::serve(listen, handle, store, gauges, shutdown_signal()).await.map(Some)
    }

    /// Starts the admin API's own listener if `admin_listen` is set (with the public
    /// listener's TLS and connection limits): the admin routes served there, `None` when they
    /// belong on the public listener. It stops with the process.
    pub async fn start_admin(
        &self,
        admin: axum::Router,
        tls: Option<tokio_rustls::TlsAcceptor>,
        limits: ConnectionLimits,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, String> {
        let Some(listen) = &self.admin_listen else { return Ok(None) };
        let listener =
            tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("admin listener {listen}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%addr, "admin API listening");
        // Tests read this line (on standard error, like the public listener's) to learn the port.
        eprintln!("admin listening on {addr}");
        Ok(Some(tokio::spawn(async move {
            if let Err(e) = serve(listener, admin, tls, limits, shutdown_signal()).await {
                tracing::error!(error = %e, "admin listener failed");
            }
        })))
    }
}

/// Checks that a listen address is `HOST:PORT`, naming the setting in the message.
pub fn check_listen_address(setting: &str, value: &str) -> Result<(), String> {
    let bad = || format!("{setting} {value:?} is not HOST:PORT (e.g. 0.0.0.0:8080 or [::1]:8080)");
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(())
}

/// Checks a database URL's scheme, so that a typo fails at start-up with a clear message.
pub fn check_database_url(value: &str) -> Result<(), String> {
    if super::sql::Backend::of_url(value).is_none() {
        return Err(format!("database {:?} must start with sqlite: or postgres://", redact_url(value)));
    }
    Ok(())
}

/// The shortest admin token accepted: 32 characters (`openssl rand -hex 32` makes 64).
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// What [`check_common`] built while checking: the admin token and the TLS acceptor (its files
/// read and parsed once, here).
pub struct CommonSettings {
    pub admin_token: duet_common::auth::AuthenticationToken,
    pub database_keys: std::sync::Arc<crate::sealing::DatabaseKeys>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Checks the settings both servers share; `Err` names the first bad one. (The log filter was
/// checked when logging was set up.)
pub fn check_common(
    listen: &str,
    database: &str,
    admin_token: Option<&str>,
    database_keys: Option<&str>,
    connection: &ConnectionFlags,
    service: &ServiceFlags,
) -> Result<CommonSettings, String> {
    check_listen_address("listen", listen)?;
    check_database_url(database)?;
    // The same port on an overlapping address (equal hosts, or a wildcard on either side) would
    // fail at bind time with a less helpful message.
    let split = |a: &str| a.rsplit_once(':').map(|(h, p)| (h.to_string(), p.to_string())).unwrap_or_default();
    let wildcard = |h: &str| h == "0.0.0.0" || h == "[::]";
    let clash = |a: &str, b: &str| {
        let ((ah, ap), (bh, bp)) = (split(a), split(b));
        ap == bp && ap != "0" && (ah == bh || wildcard(&ah) || wildcard(&bh))
    };
    if let Some(m) = &service.metrics_listen {
        check_listen_address("metrics_listen", m)?;
        if clash(m, listen) {
            let port = split(m).1;
            return Err(format!(
                "metrics_listen {m} and listen {listen} share port {port}; the operations listener needs its own port"
            ));
        }
    }
    if let Some(a) = &service.admin_listen {
        check_listen_address("admin_listen", a)?;
        for (name, other) in [("listen", Some(listen)), ("metrics_listen", service.metrics_listen.as_deref())] {
            if other.is_some_and(|o| clash(a, o)) {
                let port = split(a).1;
                return Err(format!("admin_listen {a} and {name} share port {port}; the admin API needs its own port"));
            }
        }
    }
    let tls = connection.tls()?;
    let token = admin_token.ok_or("admin_token is required: set DUET_ADMIN_TOKEN (or --admin-token)")?;
    let admin_token =
        duet_common::auth::AuthenticationToken::new(token.to_string()).map_err(|e| format!("admin_token: {e}"))?;
    // Whoever holds the admin token provisions tasks (their secrets included) and keys: a token
    // short enough to guess would hand that over.
    if token.len() < MIN_ADMIN_TOKEN_LEN {
        return Err(format!(
            "admin_token must be at least {MIN_ADMIN_TOKEN_LEN} characters (it has {}); make one with `openssl rand -hex 32`",
            token.len()
        ));
    }
    let database_keys = check_database_keys(database_keys)?;
    Ok(CommonSettings { admin_token, database_keys, tls })
}

/// The database keys ([`crate::sealing`]): required, since the secrets a server stores are
/// sealed under them.
pub fn check_database_keys(value: Option<&str>) -> Result<std::sync::Arc<crate::sealing::DatabaseKeys>, String> {
    let value = value.filter(|v| !v.trim().is_empty()).ok_or(
        "database_keys is required: set DUET_DATABASE_KEYS (or --database-keys) to a key made with \
         `duet database-key`; the secrets the database keeps are sealed under it (OPERATIONS.md, \
         \"Secrets at rest\")",
    )?;
    let keys = crate::sealing::DatabaseKeys::parse(value).map_err(|e| format!("database_keys: {e}"))?;
    Ok(std::sync::Arc::new(keys))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM, the signals a service manager stops us with.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// `migrate`: applies the database's pending migrations, seals the secrets stored in the clear
/// or under an older database key, and reports the schema version.
pub async fn migrate(database: &str, database_keys: Option<&str>) -> Result<(), String> {
    let keys = check_database_keys(database_keys)?;
    let store = super::sql::SqlStore::open(database, keys).await.map_err(|e| e.to_string())?;
    println!(
        "database {} is at schema version {}",
        redact_url(database),
        store.schema_version().await.map_err(|e| e.to_string())?
    );
    Ok(())
}

/// The database keys of an interop aggregator: those given, else, for the temporary database
/// ([`interop_database`]), a key that lives as long as the process; a database given with
/// `--database` outlives the process, and so must the key that seals its secrets.
pub fn interop_database_keys(
    keys: Option<&str>,
    database_given: bool,
) -> Result<std::sync::Arc<crate::sealing::DatabaseKeys>, String> {
    match (keys, database_given) {
        (Some(keys), _) => check_database_keys(Some(keys)),
        (None, false) => Ok(std::sync::Arc::new(crate::sealing::DatabaseKeys::ephemeral())),
        (None, true) => Err("database_keys is required with --database: the database outlives this process, and \
                             so must the key that seals its secrets (set DUET_DATABASE_KEYS)"
            .into()),
    }
}

/// The database of an interop aggregator: the URL given, or a fresh SQLite file in a temporary
/// folder (kept while the returned guard lives).
pub fn interop_database(url: Option<String>, role: &str) -> Result<(Option<tempfile::TempDir>, String), String> {
    match url {
        Some(url) => Ok((None, url)),
        None => {
            let dir = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
            let url = format!("sqlite:{}", dir.path().join(format!("{role}.db")).display());
            Ok((Some(dir), url))
        }
    }
}

pub use duet_common::auth::redact_url;

#[cfg(test)]
mod tests {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_allocator_settings_yield_to_the_environment() {
        use libc::{M_ARENA_MAX, M_MMAP_THRESHOLD};
        let unset = |_: &str| false;
        assert_eq!(super::allocator_settings(4, unset), vec![(M_ARENA_MAX, 4), (M_MMAP_THRESHOLD, 262144)]);
        let arenas_set = |name: &str| name == "MALLOC_ARENA_MAX";
        assert_eq!(super::allocator_settings(4, arenas_set), vec![(M_MMAP_THRESHOLD, 262144)]);
        let threshold_set = |name: &str| name == "MALLOC_MMAP_THRESHOLD_";
        assert_eq!(super::allocator_settings(2, threshold_set), vec![(M_ARENA_MAX, 2)]);
        assert!(super::allocator_settings(2, |_| true).is_empty());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(super::redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(super::redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact_url("sqlite:x.db"), "sqlite:x.db");
    }
}

/// TLS for a server: a certificate chain and its private key, both PEM files.
pub fn tls_acceptor(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("TLS certificate {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("TLS certificate {}: no certificate in the file", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("TLS key {}: {e}", key_file.display()))?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("TLS certificate and key do not fit: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

pub use crate::connections::{serve, ConnectionLimits};

/// The connection flags both servers take: TLS and the connection limits.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectionFlags {
    /// TLS certificate chain (PEM); with --tls-key, the server speaks HTTPS only.
    #[arg(long, env = "DUET_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// TLS private key (PEM) for --tls-cert.
    #[arg(long, env = "DUET_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Connections served at once; more are closed on arrival.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Connections served at once from one IP address (an IPv6 one by its /64 prefix); more from
    /// it are closed on arrival. Behind a load balancer or proxy that connects from a few
    /// addresses, raise it to max_connections.
    #[arg(long, default_value_t = 64)]
    pub max_connections_per_address: usize,
    /// Seconds a new connection has to finish the TLS handshake and send its first bytes.
    #[arg(long, default_value_t = 10)]
    pub first_bytes_timeout_seconds: u64,
    /// Seconds a client has to send a request's headers.
    #[arg(long, default_value_t = 30)]
    pub header_read_timeout_seconds: u64,
    /// Seconds a connection may stay open with no request in flight (HTTP/1 keep-alive and
    /// HTTP/2 alike).
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_seconds: u64,
    /// Requests in flight at once on one HTTP/2 connection.
    #[arg(long, default_value_t = 32)]
    pub max_streams_per_connection: u32,
    /// Bytes of request bodies held in memory at once, all connections together (at least
    /// max_body_bytes): a request waits up to 5 s for room for its body, then gets 503.
    #[arg(long, default_value_t = 1 << 30)]
    pub max_body_memory_bytes: usize,
}

impl ConnectionFlags {
    /// The TLS acceptor, when a certificate and key were given.
    pub fn tls(&self) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => tls_acceptor(cert, key).map(Some),
            _ => Ok(None),
        }
    }

    /// Bounds the request bodies this process holds at once ([`crate::http::limit_bodies_in_memory`]),
    /// to room for one of `max_body_bytes` at least.
    pub fn limit_bodies_in_memory(&self, max_body_bytes: usize) {
        crate::http::limit_bodies_in_memory(self.max_body_memory_bytes.max(max_body_bytes));
    }

    pub fn limits(&self) -> ConnectionLimits {
        let seconds = |s: u64| std::time::Duration::from_secs(s.max(1));
        ConnectionLimits {
            max_connections: self.max_connections.max(1),
            max_connections_per_address: self.max_connections_per_address.max(1),
            first_bytes_timeout: seconds(self.first_bytes_timeout_seconds),
            header_read_timeout: seconds(self.header_read_timeout_seconds),
            idle_timeout: seconds(self.idle_timeout_seconds),
            max_streams_per_connection: self.max_streams_per_connection.max(1),
        }
    }
}
