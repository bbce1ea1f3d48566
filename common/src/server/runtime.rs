//! What both server binaries do alike around their routers: logging set-up, the shutdown
//! signals they obey, and the `migrate` command.

/// Logs to standard output, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
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

/// `migrate`: applies the database's pending migrations and reports the schema version.
pub async fn migrate(database: &str) -> Result<(), String> {
    let store = super::sql::SqlStore::connect(database).await.map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    println!(
        "database {} is at schema version {}",
        redact_url(database),
        store.schema_version().await.map_err(|e| e.to_string())?
    );
    Ok(())
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

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(super::redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(super::redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact_url("sqlite:x.db"), "sqlite:x.db");
    }
}
