//! The garbage collector both servers run: what it may delete and when ([`GcSettings`]), the
//! flags that set it, and the loop that runs a role's passes, jittered, beside the server. Each
//! role's pass is in its store (`leader/src/store/gc.rs`, `helper/src/store/gc.rs`), on the
//! shared SQL in [`crate::sql`]'s `gc.rs`.
//!
//! Every replica may run it: each pass works in short transactions of a bounded number of rows
//! (so uploads and aggregation interleave with it), and every deletion re-checks its condition
//! inside its transaction, so two replicas deleting at once only share the work.

use crate::store_error::StoreError;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;

/// The garbage collector's flags, shared by both servers.
#[derive(Clone, Debug, clap::Args)]
pub struct GcFlags {
    /// Seconds between two garbage-collection passes (each jittered by up to half of it, so
    /// that replicas spread out); 0 turns the collector off.
    #[arg(long, default_value_t = 60)]
    pub gc_interval_seconds: u64,
    /// Seconds finished work is kept before it is deleted when its reports have not expired
    /// (or the task has no expiry age): finished and abandoned aggregation jobs with their
    /// stored answers, released aggregate shares, failed and deleted collection jobs. A peer
    /// that sends a request again within it gets the stored answer.
    #[arg(long, default_value_t = DEFAULT_GRACE_SECONDS)]
    pub gc_grace_seconds: u64,
}

/// [`GcFlags::gc_grace_seconds`]'s default: one day.
pub const DEFAULT_GRACE_SECONDS: u64 = 86_400;

/// Rows one garbage-collection transaction deletes at most.
pub const DEFAULT_BATCH_ROWS: usize = 2_000;

impl GcFlags {
    /// The settings these flags give, with the server's default report expiry age; `None` when
    /// the collector is off.
    pub fn settings(&self, default_report_expiry_seconds: Option<u64>) -> Option<GcSettings> {
        (self.gc_interval_seconds > 0).then(|| GcSettings {
            interval: Duration::from_secs(self.gc_interval_seconds),
            grace_seconds: self.gc_grace_seconds.min(i64::MAX as u64) as i64,
            default_report_expiry_seconds,
            batch_rows: DEFAULT_BATCH_ROWS,
        })
    }
}

/// What one garbage-collection pass may delete, and in what steps.
#[derive(Clone, Debug)]
pub struct GcSettings {
    /// Between two passes (jittered).
    pub interval: Duration,
    /// How long finished work is kept while its reports have not expired ([`GcFlags`]).
    pub grace_seconds: i64,
    /// The report expiry age of tasks provisioned without one.
    pub default_report_expiry_seconds: Option<u64>,
    /// Rows per transaction, at most.
    pub batch_rows: usize,
}

impl GcSettings {
    /// Settings for tests and tools: a pass on demand, `grace_seconds` of grace.
    pub fn with_grace(grace_seconds: i64, default_report_expiry_seconds: Option<u64>) -> Self {
        Self {
            interval: Duration::from_secs(60),
            grace_seconds,
            default_report_expiry_seconds,
            batch_rows: DEFAULT_BATCH_ROWS,
        }
    }
}

/// What a pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Rows deleted, by table.
    pub deleted: BTreeMap<&'static str, u64>,
    /// Tasks deleted because their task interval ended more than the expiry age ago.
    pub tasks_ended: u64,
    /// Age in seconds of the oldest report the server still holds (its timestamp, not its
    /// upload), if it holds any.
    pub oldest_report_age_seconds: Option<i64>,
}

impl GcReport {
    pub fn add(&mut self, table: &'static str, rows: u64) {
        if rows > 0 {
            *self.deleted.entry(table).or_default() += rows;
        }
    }

    pub fn total(&self) -> u64 {
        self.deleted.values().sum()
    }
}

/// Runs `pass` every `settings.interval` (jittered, the first one at a random point of the first
/// interval) until `stop` turns true; records each pass's figures in the metrics. A failed pass
/// is logged and tried again at the next interval.
pub async fn run<F, Fut>(settings: GcSettings, mut stop: watch::Receiver<bool>, pass: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<GcReport, StoreError>>,
{
    let interval = settings.interval.as_secs_f64();
    let mut wait = Duration::from_secs_f64(interval * rand::random::<f64>());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let started = std::time::Instant::now();
        match pass().await {
            Ok(report) => {
                for (table, rows) in &report.deleted {
                    crate::metrics::gc_deleted(table, *rows);
                }
                crate::metrics::oldest_report_age(report.oldest_report_age_seconds.unwrap_or(0));
                if report.total() > 0 || report.tasks_ended > 0 {
                    tracing::info!(
                        deleted = report.total(),
                        tasks_ended = report.tasks_ended,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        tables = ?report.deleted,
                        "garbage collection pass"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "garbage collection pass failed"),
        }
        wait = Duration::from_secs_f64(interval * (0.5 + rand::random::<f64>()));
    }
}
