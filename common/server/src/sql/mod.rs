//! The SQL backend both servers stand on, one code path over sqlx's `Any` driver: SQLite (one
//! file in WAL mode, the default) and PostgreSQL (production, several replicas on one
//! database). The migrations of `migrations/sqlite` and `migrations/postgres` are embedded.
//! Each protocol step is one transaction: on SQLite writers take the lock up front (`BEGIN
//! IMMEDIATE`); on PostgreSQL transactions are `SERIALIZABLE` and a step that loses a
//! serialization race is run again ([`SqlStore::retrying`]). This module holds the plumbing
//! (connections, transactions, migrations, statement sizes, SQLite's write-ahead log) and the
//! helpers the steps build statements with; [`Storage`] is implemented in `store.rs`, on
//! what both roles store: tasks (`tasks.rs`), HPKE keys (`keys.rs`) and batch buckets
//! (`buckets.rs`), and the garbage collection both roles share (`gc.rs`). The leader's steps are in duet-leader (`leader/src/store/`), the helper's in
//! duet-helper (`helper/src/store/`), each behind its role's own store trait on [`SqlStore`].

mod buckets;
mod gc;
mod keys;
mod store;
mod tasks;

pub use gc::Param;

use super::storage::*;
use crate::sealing::DatabaseKeys;
use duet_common::clock::SharedClock;
use duet_common::messages::*;
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Executor, Row, Transaction};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// A step's transaction; on SQLite it also holds the process's write gate
/// ([`SqlStore::begin`]) until it commits or is dropped (which rolls it back).
pub struct Tx<'a> {
    // Declared first, so dropped (rolled back) before the gate opens.
    inner: Transaction<'a, Any>,
    _gate: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Tx<'_> {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        let Tx { inner, _gate } = self;
        inner.commit().await
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

/// Which database a store talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a database URL names.
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }

    /// The embedded migrations, `(version, SQL)` in order.
    pub fn migrations(self) -> &'static [(i64, &'static str)] {
        match self {
            Backend::Sqlite => SQLITE_MIGRATIONS,
            Backend::Postgres => POSTGRES_MIGRATIONS,
        }
    }
}

/// The migrations of `migrations/sqlite`, embedded in the binary, in order.
const SQLITE_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../../../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../../../../migrations/sqlite/0002_leader_reports.sql")),
    (3, include_str!("../../../../migrations/sqlite/0003_leader_jobs.sql")),
    (4, include_str!("../../../../migrations/sqlite/0004_privacy_budget.sql")),
    (5, include_str!("../../../../migrations/sqlite/0005_hpke_key_rotation.sql")),
    (6, include_str!("../../../../migrations/sqlite/0006_partial_report_indexes.sql")),
    (7, include_str!("../../../../migrations/sqlite/0007_report_payloads.sql")),
    (8, include_str!("../../../../migrations/sqlite/0008_reports_settle_with_their_job.sql")),
    (9, include_str!("../../../../migrations/sqlite/0009_helper_outages.sql")),
    (10, include_str!("../../../../migrations/sqlite/0010_leader_continuation.sql")),
    (11, include_str!("../../../../migrations/sqlite/0011_report_expiry_age.sql")),
    (12, include_str!("../../../../migrations/sqlite/0012_reports_arrival_order.sql")),
    (13, include_str!("../../../../migrations/sqlite/0013_data_lifecycle.sql")),
    (14, include_str!("../../../../migrations/sqlite/0014_privacy_cost.sql")),
];

/// The same schema in PostgreSQL's dialect (`migrations/postgres`).
const POSTGRES_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../../../migrations/postgres/0001_init.sql")),
    (2, include_str!("../../../../migrations/postgres/0002_leader_reports.sql")),
    (3, include_str!("../../../../migrations/postgres/0003_leader_jobs.sql")),
    (4, include_str!("../../../../migrations/postgres/0004_privacy_budget.sql")),
    (5, include_str!("../../../../migrations/postgres/0005_hpke_key_rotation.sql")),
    (6, include_str!("../../../../migrations/postgres/0006_partial_report_indexes.sql")),
    (7, include_str!("../../../../migrations/postgres/0007_report_payloads.sql")),
    (8, include_str!("../../../../migrations/postgres/0008_reports_settle_with_their_job.sql")),
    (9, include_str!("../../../../migrations/postgres/0009_helper_outages.sql")),
    (10, include_str!("../../../../migrations/postgres/0010_leader_continuation.sql")),
    (11, include_str!("../../../../migrations/postgres/0011_report_expiry_age.sql")),
    (12, include_str!("../../../../migrations/postgres/0012_reports_arrival_order.sql")),
    (13, include_str!("../../../../migrations/postgres/0013_data_lifecycle.sql")),
    (14, include_str!("../../../../migrations/postgres/0014_privacy_cost.sql")),
];

pub fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(e.to_string())
}

/// An ID read back from a BLOB column.
pub fn id_of<T: for<'a> TryFrom<&'a [u8]>>(bytes: Vec<u8>, what: &str) -> Result<T, StoreError> {
    T::try_from(bytes.as_slice()).map_err(|_| StoreError::Corrupt(format!("stored {what} is corrupt")))
}

/// `($1, $2, $3, S), ($4, $5, $6, S), ...`: `rows` tuples of `columns` placeholders numbered
/// from 1, each ending with the SQL `suffix` (constants, or a parameter every row shares).
pub fn value_rows(rows: usize, columns: usize, suffix: &str) -> String {
    let mut out = String::with_capacity(rows * (columns * 6 + suffix.len() + 4));
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..columns {
            if c > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!("${}", r * columns + c + 1));
        }
        if !suffix.is_empty() {
            out.push_str(", ");
            out.push_str(suffix);
        }
        out.push(')');
    }
    out
}

/// `(?, ?, ?, S), (?, ?, ?, S), ...`: as [`value_rows`] with anonymous placeholders, bound in
/// order, and a `suffix` of constants only.
pub fn anonymous_value_rows(rows: usize, columns: usize, suffix: &str) -> String {
    let mut row = vec!["?"; columns];
    if !suffix.is_empty() {
        row.push(suffix);
    }
    let row = format!("({})", row.join(", "));
    vec![row; rows].join(", ")
}

/// Chunks of `max` items, then the rest in decreasing powers of two.
fn power_of_two_chunks<T>(items: &[T], max: usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let take = if rest.len() >= max { max } else { 1 << (usize::BITS - 1 - rest.len().leading_zeros()) };
        let (chunk, tail) = rest.split_at(take);
        out.push(chunk);
        rest = tail;
    }
    out
}

/// The file a `sqlite:` URL names, if it names one (not an in-memory database).
fn sqlite_file(url: &str) -> Option<String> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let file = rest.split('?').next().unwrap_or_default();
    (!file.is_empty() && file != ":memory:" && !url.contains("mode=memory")).then(|| file.to_string())
}

/// `$first, $first+1, ...`: `n` placeholders for an `IN (...)` list.
pub fn placeholder_list(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// The tasks as this process last read them, and the IDs it found no task under, each with
/// when (seconds by the clock).
#[derive(Default)]
struct TaskCache {
    known: HashMap<TaskId, (Arc<Task>, i64)>,
    unknown: HashMap<TaskId, i64>,
}

/// The HPKE keys, opened, and when they were read (seconds by the clock).
type CachedKeys = (i64, Vec<(duet_common::hpke::HpkeKeypair, HpkeKeyState)>);

/// How long a replica serves a task from memory before it reads it again: the bound on how
/// long a task deleted (or re-provisioned) through another replica goes on being served here.
pub const TASK_CACHE_SECONDS: i64 = 10;

/// How long a replica remembers that a task ID is unknown, so that requests naming it are
/// refused without a database query; a task provisioned through another replica meanwhile is
/// seen here after this. At most [`UNKNOWN_TASKS_CACHED`] IDs are remembered.
pub const UNKNOWN_TASK_CACHE_SECONDS: i64 = 2;
const UNKNOWN_TASKS_CACHED: usize = 10_000;

/// How long a replica serves the HPKE keys from memory; a change made through this replica is
/// seen at once, one made through another replica after this.
pub const KEY_CACHE_SECONDS: i64 = 10;

/// Rows each batch bucket is spread over on PostgreSQL.
pub const BUCKET_SHARDS: u8 = 16;

/// A SQL database, and a cache of provisioned tasks.
#[derive(Clone)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    tasks: Arc<RwLock<TaskCache>>,
    /// The HPKE keys, opened, as last read (seconds by the clock): `/hpke_config` and every
    /// job's decryption are served from memory ([`KEY_CACHE_SECONDS`]).
    keypairs: Arc<RwLock<Option<CachedKeys>>>,
    /// When [`Self::refresh_statistics`] last looked (milliseconds since the epoch).
    statistics_checked_ms: Arc<std::sync::atomic::AtomicU64>,
    /// SQLite file: its write-ahead log ([`Self::after_commit`]).
    wal: Option<Arc<Wal>>,
    /// SQLite file: the one connection of this process's write transactions ([`Self::begin`]).
    writer: Option<AnyPool>,
    /// SQLite: taken by every write transaction of this process, in turn ([`Self::begin`]).
    write_gate: Arc<tokio::sync::Mutex<()>>,
    /// Behind every time this store writes or compares (leases, retries, key ages).
    clock: SharedClock,
    /// Seal the secrets this store keeps ([`crate::sealing`]).
    keys: Arc<DatabaseKeys>,
}

/// SQLite's write-ahead log, which the leader checkpoints itself ([`SqlStore::after_commit`]).
struct Wal {
    path: std::path::PathBuf,
    /// Held by the running checkpoint, so that there is one at a time and writers can wait for
    /// it ([`SqlStore::begin`]).
    checkpoint: Arc<tokio::sync::Mutex<()>>,
}

impl Wal {
    fn bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }
}

/// Bound data per multi-row statement, about ([`SqlStore::statement_chunks_sized`]).
const STATEMENT_BYTES: usize = 384 << 10;

/// Bound parameters per SQLite statement with anonymous placeholders
/// ([`SqlStore::statement_chunks_sized`]): binding them costs no name lookups, so a statement
/// may carry many. Each statement of a write transaction is a round trip between a tokio task
/// and SQLite's thread, which idles meanwhile, and every other writer waits for the
/// transaction; with the budget of numbered statements (256) an upload group of 8,000 histogram
/// reports took about 280 statements, with this one (and [`STATEMENT_BYTES`]) about 110. In
/// alternating runs of 200,000 histogram uploads the leader spent 4% less CPU storing them
/// (10.38 against 10.83 s, means of three) and uploads ran at 20,300 against 17,800/s.
const SQLITE_ANONYMOUS_PARAMS: usize = 4096;

/// The page cache of each SQLite connection of the pool, in KiB: reads go through the mapped
/// file, so it holds little but the pages a write changes, and memory stays bounded however
/// large the database grows.
const SQLITE_CACHE_KIB: u32 = 1024;

/// The page cache of the SQLite connection that writes, in KiB. Reports arrive with random IDs,
/// so each upload changes pages all over the report-ID index; with the pool's 1 MiB cache most
/// of them were gone again before the transaction ended, and SQLite wrote them to the log
/// early, read them back and wrote them again (reads from the log took 11% of the writer
/// thread during uploads, 18% during aggregation; uploads of histogram reports ran about 15%
/// faster with this cache in alternating runs). The cache is a fixed bound: it fills as the
/// index grows, then stays.
const SQLITE_WRITER_CACHE_KIB: u32 = 16 << 10;

/// The page size of new SQLite databases. Reports are stored in page-sized units: a histogram
/// report's payload (2.7 KB) took a 4 KiB page of its own, a third of it empty, and SQLite
/// writes each page to the log in two system calls, then copies it to the database at the
/// checkpoint. With 16 KiB pages six payloads share a page, and the writer thread, the upload
/// bottleneck, made a third as many writes a report and no reads from the log (under strace, 4
/// seconds of uploads: 5,455 writes and 4 reads, against 11,962 and 5,642 with 4 KiB pages, at
/// a similar rate). In alternating runs of 200,000 histogram uploads:
/// 21,784, 24,854 and 19,927 reports/s against 16,854, 17,225 and 16,369 with 4 KiB pages (8
/// KiB: 20,256, 19,869, 16,783; 32 KiB: 19,908; 64 KiB: 14,087). Count reports (small) lose
/// some, as each upload rewrites larger pages of the random report-ID index: 35,445
/// and 43,729 against 45,120 and 49,256 reports/s, well above what histograms reach.
const SQLITE_PAGE_SIZE: u32 = 16 << 10;

/// How long a SQLite statement waits for a lock another process holds.
const SQLITE_BUSY_TIMEOUT: &str = "PRAGMA busy_timeout = 30000";

/// The size past which the leader restarts SQLite's write-ahead log (and to which SQLite trims
/// the file when it restarts): big enough that restarts are rare (one per few thousand
/// reports), small enough that the log is rewritten in place, in pages the kernel holds. The
/// log grows on while the leader checkpoints it beside the writers ([`SqlStore::after_commit`]),
/// up to [`WAL_HOLD_BYTES`].
const WAL_RESTART_BYTES: u64 = 32 << 20;

/// The size of the write-ahead log past which a write transaction waits for the running
/// checkpoint before it begins ([`SqlStore::begin`]). Without it the log's peak depended on
/// how fast the disk took the checkpoint's copy against how fast uploads came: 83 to 94 MB in
/// five quiet runs of a test that writes 160 MB of reports, 107 MB with other tests beside it.
/// With it the log peaks here, plus what the writers already queued at the gate write.
const WAL_HOLD_BYTES: u64 = 2 * WAL_RESTART_BYTES;

impl SqlStore {
    /// Connects to the database a `sqlite:` or `postgres:` URL names (creating a SQLite file if
    /// needed), without migrating it.
    pub async fn connect(url: &str, keys: Arc<DatabaseKeys>) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url).ok_or_else(|| {
            StoreError::Database(format!("unsupported database URL {:?}", super::runtime::redact_url(url)))
        })?;
        let url = match backend {
            // Create the file on first use.
            Backend::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
            }
            _ => url.to_string(),
        };
        let max = if backend == Backend::Sqlite { 8 } else { 16 };
        let pool = Self::pool_options(backend, max, SQLITE_CACHE_KIB).connect(&url).await?;
        let wal = (backend == Backend::Sqlite)
            .then(|| sqlite_file(&url))
            .flatten()
            .map(|file| Arc::new(Wal { path: format!("{file}-wal").into(), checkpoint: Arc::default() }));
        // SQLite file: the write transactions of this process, which take turns at the write
        // gate anyway, share one connection of their own with a larger page cache
        // ([`SQLITE_WRITER_CACHE_KIB`]). (An in-memory database is one per connection: there
        // the writers stay in the pool.)
        let writer = match &wal {
            Some(_) => Some(Self::pool_options(backend, 1, SQLITE_WRITER_CACHE_KIB).connect(&url).await?),
            None => None,
        };
        Ok(Self {
            pool,
            writer,
            backend,
            tasks: Arc::default(),
            keypairs: Arc::default(),
            statistics_checked_ms: Arc::default(),
            wal,
            write_gate: Arc::default(),
            clock: duet_common::clock::system(),
            keys,
        })
    }

    /// The same store reading the time from `clock` (tests move time this way).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// A pool of up to `max` connections, each SQLite one set up with a page cache of
    /// `cache_kib`.
    fn pool_options(backend: Backend, max: u32, cache_kib: u32) -> AnyPoolOptions {
        AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // The page size only takes on a new database (before its first
                        // table); an existing one keeps its own.
                        conn.execute(format!("PRAGMA page_size = {SQLITE_PAGE_SIZE}").as_str()).await?;
                        // So does the vacuum mode: a new file gives the pages of deleted rows
                        // back in steps ([`SqlStore::reclaim_space`]); an older one is converted
                        // at start-up ([`SqlStore::use_incremental_vacuum`]).
                        conn.execute("PRAGMA auto_vacuum = INCREMENTAL").await?;
                        // WAL with NORMAL sync survives process crashes (only power loss can
                        // lose the last transactions); writers wait for each other.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON",
                        )
                        .await?;
                        conn.execute(SQLITE_BUSY_TIMEOUT).await?;
                        // Reads go through the mapped file (no copies into each connection's
                        // cache), so the page cache only holds pages being written.
                        conn.execute(
                            format!(
                                "PRAGMA temp_store = MEMORY; PRAGMA mmap_size = 268435456; PRAGMA cache_size = -{cache_kib}"
                            )
                            .as_str(),
                        )
                        .await?;
                        // The leader's own checkpoints ([`SqlStore::after_commit`]) keep the
                        // log under [`WAL_RESTART_BYTES`]; SQLite's, which would run inline in
                        // the writer, only past twice that (counted in the file's pages), should
                        // a step that does not checkpoint write much.
                        let page: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(&mut *conn).await?;
                        conn.execute(
                            format!(
                                "PRAGMA journal_size_limit = {WAL_RESTART_BYTES}; PRAGMA wal_autocheckpoint = {}",
                                2 * WAL_RESTART_BYTES / page.max(512) as u64
                            )
                            .as_str(),
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
    }

    /// Connects, applies the migrations not yet applied, and seals the secrets stored in the
    /// clear or under an older database key ([`Self::seal_stored_secrets`]).
    pub async fn open(url: &str, keys: Arc<DatabaseKeys>) -> Result<Self, StoreError> {
        let store = Self::connect(url, keys).await?;
        store.migrate().await?;
        store.use_incremental_vacuum().await?;
        store.seal_stored_secrets().await?;
        Ok(store)
    }

    /// Seals what a database written before secrets were sealed holds in the clear (and digests
    /// the tokens the server only checks), and seals again under the first database key what an
    /// older key sealed, so that the older key may go once every replica ran this. Idempotent,
    /// and cheap once done: it reads the task and key tables, which hold a row per task and
    /// per HPKE key. A secret that no configured key opens stops the start with an error
    /// naming its row.
    pub async fn seal_stored_secrets(&self) -> Result<(), StoreError> {
        let tasks = self.retrying(|| self.seal_stored_task_secrets()).await?;
        let keys = self.retrying(|| self.seal_stored_private_keys()).await?;
        self.forget_keypairs();
        if tasks + keys > 0 {
            tracing::info!(tasks, hpke_keys = keys, "sealed secrets under the current database key");
        }
        Ok(())
    }

    /// The shard of a batch bucket a commit adds to. On PostgreSQL, replicas committing into
    /// one bucket at once would serialise on its row, so each commit picks one of
    /// [`BUCKET_SHARDS`] rows at random and collection sums them (DAP-18 "Distributed-systems
    /// and synchronization concerns"). SQLite has one writer at a time anyway.
    pub fn bucket_shard(&self) -> i64 {
        match self.backend {
            Backend::Sqlite => 0,
            Backend::Postgres => i64::from(rand::random::<u8>() % BUCKET_SHARDS),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Rows per multi-row statement of `params_per_row` parameters: few round trips (to
    /// PostgreSQL, or to SQLite's worker thread), well under the databases' limits on bound
    /// parameters. SQLite looks a numbered parameter's name up by a linear scan, so binding
    /// costs grow with the square of a statement's parameters there: its statements stay small.
    pub fn rows_per_statement(&self, params_per_row: usize) -> usize {
        let budget = match self.backend {
            Backend::Sqlite => 256,
            Backend::Postgres => 8192,
        };
        (budget / params_per_row.max(1)).max(1)
    }

    /// A multi-row `VALUES` list of `rows` rows of `columns` parameters, bound row after row,
    /// each row closed by `suffix` (constants only). On SQLite the parameters are anonymous
    /// (`?`): sqlx looks a numbered parameter's name up for every parameter it binds, and SQLite
    /// finds a name by scanning the statement's list of names, so numbered parameters cost the
    /// square of their number to bind (a twentieth of an upload's time in SQLite's thread).
    pub fn value_rows(&self, rows: usize, columns: usize, suffix: &str) -> String {
        match self.backend {
            Backend::Sqlite => anonymous_value_rows(rows, columns, suffix),
            Backend::Postgres => value_rows(rows, columns, suffix),
        }
    }

    /// `items` cut for multi-row statements of `params_per_row` parameters. On SQLite: full
    /// chunks, then the rest in power-of-two pieces, because each distinct row count is a
    /// distinct statement that every connection compiles and caches in its own memory; with
    /// powers of two there are a handful, however the lengths of requests and jobs vary.
    pub fn statement_chunks<'a, T>(&self, items: &'a [T], params_per_row: usize) -> Vec<&'a [T]> {
        self.chunks_of(items, self.rows_per_statement(params_per_row))
    }

    fn chunks_of<'a, T>(&self, items: &'a [T], max: usize) -> Vec<&'a [T]> {
        match self.backend {
            Backend::Sqlite => power_of_two_chunks(items, max),
            // PostgreSQL keeps prepared statements in the server, and each extra statement is
            // a round trip and a plan there: one statement per chunk.
            Backend::Postgres => items.chunks(max).collect(),
        }
    }

    /// As [`Self::statement_chunks`], for statements built with [`Self::value_rows`] (anonymous
    /// placeholders on SQLite, so up to [`SQLITE_ANONYMOUS_PARAMS`] of them), with fewer rows to
    /// a statement when rows are large: at most about [`STATEMENT_BYTES`] of bound data in one
    /// statement. The PostgreSQL driver encodes a statement's arguments into buffers of its own
    /// before sending them, so a statement that carried a whole upload request (2.7 MB of
    /// histogram reports) held that much again for every request in flight: the leader's memory
    /// during uploads fell from about 68 to 35 MiB with this limit, at the same upload rate.
    pub fn statement_chunks_sized<'a, T>(
        &self,
        items: &'a [T],
        params_per_row: usize,
        bytes_per_row: usize,
    ) -> Vec<&'a [T]> {
        let rows = match self.backend {
            Backend::Sqlite => (SQLITE_ANONYMOUS_PARAMS / params_per_row.max(1)).max(1),
            Backend::Postgres => self.rows_per_statement(params_per_row),
        };
        self.chunks_of(items, rows.min((STATEMENT_BYTES / bytes_per_row.max(1)).max(1)))
    }

    /// Called after a step's transaction that wrote much (uploads, jobs): on SQLite, restarts
    /// the write-ahead log once it passed [`WAL_RESTART_BYTES`]. SQLite's own checkpoints are
    /// passive: they copy to the database only what no reader still needs, so on a busy server,
    /// where some read overlaps every commit, they never complete and the log grows without end
    /// (1.4 GB over an upload of 200,000 histogram reports), every write extending a file that
    /// the kernel must first zero, and every read searching a larger log index. So the leader
    /// checkpoints itself, in a task of its own (one at a time), in two phases: a passive
    /// checkpoint, beside the writers, copies what is in the log; then a RESTART checkpoint,
    /// with the writers of this process held at the write gate, copies what they wrote
    /// meanwhile, waits for the readers of older snapshots (milliseconds) and makes the next
    /// writer begin the log again from its start. SQLite's automatic checkpoints run inline in
    /// the committing connection: the copy and its syncs were the writer thread's, the upload
    /// bottleneck, while the other core idled (in a profile of histogram uploads, the
    /// checkpoints' threads took 398 samples beside the writer's 1,375). A failure is logged
    /// and leaves the log to SQLite's own checkpoints.
    pub async fn after_commit(&self) {
        let Some(wal) = &self.wal else { return };
        if wal.bytes() <= WAL_RESTART_BYTES {
            return;
        }
        let Ok(running) = wal.checkpoint.clone().try_lock_owned() else { return };
        let store = self.clone();
        tokio::spawn(async move {
            store.checkpoint().await;
            drop(running);
        });
    }

    /// The two phases of [`Self::after_commit`]'s checkpoint.
    async fn checkpoint(&self) {
        let started = std::time::Instant::now();
        let result = async {
            let mut conn = self.pool.acquire().await?;
            let passive = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").fetch_optional(&mut *conn).await?;
            let passive_ms = started.elapsed().as_millis() as u64;
            let gate = self.write_gate.lock().await;
            // A reader that holds its snapshot for long must not stall every writer behind
            // the gate: the checkpoint waits for it a second at most, then gives up (busy).
            conn.execute("PRAGMA busy_timeout = 1000").await?;
            let restart = sqlx::query("PRAGMA wal_checkpoint(RESTART)").fetch_optional(&mut *conn).await;
            drop(gate);
            conn.execute(SQLITE_BUSY_TIMEOUT).await?;
            Ok::<_, sqlx::Error>((passive, passive_ms, restart?))
        }
        .await;
        let figures = |row: Option<sqlx::any::AnyRow>| {
            row.map(|r| (r.try_get::<i64, _>(0).ok(), r.try_get::<i64, _>(1).ok(), r.try_get::<i64, _>(2).ok()))
                .unwrap_or_default()
        };
        match result {
            Ok((passive, passive_ms, restart)) => {
                let (_, log, passive_done) = figures(passive);
                let (busy, _, done) = figures(restart);
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    passive_ms,
                    ?log,
                    ?passive_done,
                    ?busy,
                    ?done,
                    "write-ahead log checkpoint"
                )
            }
            Err(e) => tracing::warn!(error = %e, "could not checkpoint the write-ahead log"),
        }
    }

    /// Keeps PostgreSQL's planner statistics of a hot table current (SQLite needs none: its
    /// planner prefers an index whatever the statistics say). Without statistics PostgreSQL
    /// guesses that a task holds a thousand rows and that a list of report IDs matches all of
    /// them, and then reads the task's whole primary key for each job it creates: cost in the
    /// square of the reports waiting. A table filled faster than autovacuum looks (a minute by
    /// default), or a server with autovacuum off, would be planned that way, so the leader
    /// analyses the table itself once a fifth of it changed since the last analysis, as
    /// autovacuum would. Looks at most once a second per process; a failure (a role that may
    /// not analyse the table) is logged and otherwise ignored.
    pub async fn refresh_statistics(&self, table: &'static str) {
        use std::sync::atomic::Ordering;
        if self.backend != Backend::Postgres {
            return;
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let last = self.statistics_checked_ms.load(Ordering::Relaxed);
        if now_ms < last + 1000
            || self.statistics_checked_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        let stale = sqlx::query(
            "SELECT n_mod_since_analyze > 1000 + n_live_tup / 5 FROM pg_stat_user_tables WHERE relid = to_regclass($1)",
        )
        .bind(table)
        .fetch_optional(&self.pool)
        .await
        .and_then(|row| row.map(|r| r.try_get::<bool, _>(0)).transpose());
        let result = match stale {
            Ok(Some(true)) => {
                let started = std::time::Instant::now();
                let result = self.pool.execute(format!("ANALYZE {table}").as_str()).await;
                if result.is_ok() {
                    tracing::debug!(
                        table,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "table statistics refreshed"
                    );
                }
                result.map(|_| ())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(table, error = %e, "could not refresh the table's planner statistics");
        }
    }

    /// Applies the embedded migrations not yet applied, each in its own transaction. Safe to run
    /// from several replicas at once: on PostgreSQL an advisory lock serialises them.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        if self.backend == Backend::Postgres {
            conn.execute("SELECT pg_advisory_lock(7305545)").await?;
        }
        let result = self.migrate_on(&mut conn).await;
        if self.backend == Backend::Postgres {
            conn.execute("SELECT pg_advisory_unlock(7305545)").await?;
        }
        result
    }

    async fn migrate_on(&self, conn: &mut sqlx::pool::PoolConnection<Any>) -> Result<(), StoreError> {
        conn.execute(
            "CREATE TABLE IF NOT EXISTS duet_migrations (version BIGINT PRIMARY KEY, applied_at_seconds BIGINT NOT NULL)",
        )
        .await?;
        for (version, sql) in self.backend.migrations() {
            let mut tx = sqlx::Connection::begin(&mut **conn).await?;
            let done = sqlx::query("SELECT 1 FROM duet_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
            if done.is_none() {
                sqlx::raw_sql(sql).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO duet_migrations (version, applied_at_seconds) VALUES ($1, $2)")
                    .bind(version)
                    .bind(self.now_seconds())
                    .execute(&mut *tx)
                    .await?;
                tracing::info!(version, "applied database migration");
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// The newest migration applied.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT MAX(version) FROM duet_migrations").fetch_one(&self.pool).await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.unwrap_or(0))
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A step's transaction. SQLite: `BEGIN IMMEDIATE` takes the write lock up front, so two
    /// writers wait for each other instead of failing when they upgrade; and the writers of this
    /// process first queue for its write gate, in order. SQLite alone would have them poll the
    /// lock, asleep between tries (up to 100 ms at a time), so the lock would lie idle while
    /// writers slept and a checkpoint could wait seconds for its turn. A writer that finds the
    /// log past [`WAL_HOLD_BYTES`] first waits for the running checkpoint. PostgreSQL:
    /// `SERIALIZABLE`, so concurrent replicas cannot interleave into an inconsistent state.
    pub async fn begin(&self) -> Result<Tx<'static>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => {
                // Waits outside the gate: the checkpoint takes the gate for its second phase.
                // The log's size is read only while a checkpoint runs, since otherwise there
                // is none to wait for, which spares most write transactions the `stat`.
                if let Some(wal) = &self.wal {
                    if wal.checkpoint.try_lock().is_err() && wal.bytes() > WAL_HOLD_BYTES {
                        drop(wal.checkpoint.lock().await);
                    }
                }
                let gate = self.write_gate.clone().lock_owned().await;
                let pool = self.writer.as_ref().unwrap_or(&self.pool);
                Tx { inner: pool.begin_with("BEGIN IMMEDIATE").await?, _gate: Some(gate) }
            }
            Backend::Postgres => {
                Tx { inner: self.pool.begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE").await?, _gate: None }
            }
        })
    }

    /// A transaction for steps that claim work (job creation, leasing) and lock what they
    /// claim: on PostgreSQL at READ COMMITTED with row and advisory locks, so that replicas
    /// take disjoint work instead of aborting each other; on SQLite as [`Self::begin`]. Also for
    /// the single-row updates of a lease's holder (renew, pin, retry later): READ COMMITTED
    /// re-checks the row's condition under its lock, and unlike SERIALIZABLE never aborts them
    /// in a race with the scans of other steps. (Under load such an abort, ten times in a row,
    /// left a job leased to no one until its lease lapsed.)
    pub async fn begin_claiming(&self) -> Result<Tx<'static>, StoreError> {
        match self.backend {
            Backend::Sqlite => self.begin().await,
            Backend::Postgres => {
                Ok(Tx { inner: self.pool.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED").await?, _gate: None })
            }
        }
    }

    /// A transaction that only reads: a consistent snapshot, no lock, no gate.
    pub async fn begin_read(&self) -> Result<Tx<'static>, StoreError> {
        Ok(Tx { inner: self.pool.begin().await?, _gate: None })
    }

    /// `FOR UPDATE SKIP LOCKED` where the backend has it.
    pub fn skip_locked(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// Runs a step (one transaction) again when it lost a serialization race (PostgreSQL), a few
    /// times with a short growing pause; the step's transaction was rolled back, so running it
    /// again is safe. Every step of both roles runs through here: the one place that decides
    /// what is retried, how often and how long apart.
    pub async fn retrying<T, Step>(&self, mut step: impl FnMut() -> Step) -> Result<T, StoreError>
    where
        Step: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 0u32;
        loop {
            match step().await {
                Err(StoreError::Retry(_)) if attempt < 10 => {
                    attempt += 1;
                    let jitter = u64::from(rand::random::<u8>() % 20);
                    tokio::time::sleep(std::time::Duration::from_millis(5 * u64::from(attempt) + jitter)).await;
                }
                other => return other,
            }
        }
    }

    /// Holds a per-task lock until `tx` ends (PostgreSQL; SQLite's transactions already exclude
    /// each other).
    pub async fn lock_task(&self, tx: &mut Tx<'_>, task: &Task) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            let mut key = [0u8; 8];
            key.copy_from_slice(&task.id.as_bytes()[..8]);
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(i64::from_be_bytes(key)).execute(&mut **tx).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod placeholder_tests {
    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(super::value_rows(2, 3, ""), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(super::value_rows(2, 1, "'x', $3"), "($1, 'x', $3), ($2, 'x', $3)");
        assert_eq!(super::anonymous_value_rows(2, 3, ""), "(?, ?, ?), (?, ?, ?)");
        assert_eq!(super::anonymous_value_rows(2, 2, "'x'"), "(?, ?, 'x'), (?, ?, 'x')");
        assert_eq!(super::placeholder_list(4, 3), "$4, $5, $6");
    }

    #[test]
    fn chunks_are_full_then_powers_of_two() {
        let items: Vec<u32> = (0..1000).collect();
        let sizes: Vec<usize> = super::power_of_two_chunks(&items, 256).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![256, 256, 256, 128, 64, 32, 8]);
        let joined: Vec<u32> = super::power_of_two_chunks(&items, 256).concat();
        assert_eq!(joined, items, "every item once, in order");
        assert_eq!(super::power_of_two_chunks(&items[..3], 256).iter().map(|c| c.len()).collect::<Vec<_>>(), [2, 1]);
        assert!(super::power_of_two_chunks::<u32>(&[], 256).is_empty());
        // A limit that is not a power of two still caps every chunk.
        assert!(super::power_of_two_chunks(&items, 36).iter().all(|c| c.len() <= 36));
    }
}
