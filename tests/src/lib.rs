//! The harness of duet's cross-process end-to-end tests: a leader and a helper started as real
//! `duet-leader` and `duet-helper` processes on SQLite files in a temporary folder, tasks
//! provisioned through their admin APIs, and the client and collector SDKs talking to them over
//! loopback.

pub mod inprocess;
pub mod relay;
pub mod runner;

use duet_cli::process::{sibling_binary, Output, ServerProcess};
use duet_client::admin::{provision_task, AdminClient, NewTask};
use duet_common::auth::AuthenticationToken;
use duet_common::messages::{BatchMode, TaskId};
use duet_common::task::TaskParameters;
use duet_common::vdaf::VdafConfig;
use std::time::Duration;

/// Options of a deployment.
#[derive(Clone, Debug)]
pub struct LeaderOptions {
    pub max_job_size: usize,
    /// PostgreSQL (a database per server, dropped afterwards) instead of SQLite files.
    pub postgres: bool,
    /// Both servers log at trace level into this, instead of to standard error.
    pub capture_logs: Option<std::sync::Arc<std::sync::Mutex<Vec<String>>>>,
    /// More flags for the leader (a shorter backoff cap, say).
    pub leader_args: Vec<String>,
    /// More flags for the helper (the sizes of its work queue, say).
    pub helper_args: Vec<String>,
    /// The leader's leases on jobs: short by default (3 s), so that work a crashed leader held
    /// is taken over within seconds; tests that count the requests each job makes take long
    /// ones, since on a loaded machine a lease renewed late lets another driver send again.
    pub lease_seconds: u64,
}

impl Default for LeaderOptions {
    fn default() -> Self {
        Self {
            max_job_size: 100,
            postgres: false,
            capture_logs: None,
            leader_args: Vec::new(),
            helper_args: Vec::new(),
            lease_seconds: 3,
        }
    }
}

impl LeaderOptions {
    pub fn postgres() -> Self {
        Self { postgres: true, ..Self::default() }
    }

    /// The defaults, the leader started with `args` besides.
    pub fn with_leader_args(args: &[&str]) -> Self {
        Self { leader_args: args.iter().map(|a| a.to_string()).collect(), ..Self::default() }
    }
}

/// A leader and a helper process with their databases.
pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub leader: ServerProcess,
    pub helper: ServerProcess,
    pub leader_admin: AuthenticationToken,
    pub helper_admin: AuthenticationToken,
    leader_args: Vec<String>,
    helper_args: Vec<String>,
    leader_db_url: String,
    helper_db_url: String,
    _databases: Vec<PgDatabase>,
    pub http: reqwest::Client,
}

/// The database key of every server and store the tests start (32 bytes, base64url): each
/// test's databases are its own, and a restarted server must open what it sealed before.
pub const DATABASE_KEY: &str = "ZHVldCB0ZXN0IGRhdGFiYXNlIGtleSwgMzIgYnl0ZXM";

/// [`DATABASE_KEY`], for a store a test opens itself.
pub fn database_keys() -> std::sync::Arc<duet_server::sealing::DatabaseKeys> {
    std::sync::Arc::new(duet_server::sealing::DatabaseKeys::parse(DATABASE_KEY).unwrap())
}

/// Starts `duet-leader` or `duet-helper` with `args`, its admin token, and `--listen`.
pub fn spawn(name: &str, args: &[String], admin: &AuthenticationToken, listen: &str) -> ServerProcess {
    spawn_logging(name, args, admin, listen, None)
}

fn spawn_logging(
    name: &str,
    args: &[String],
    admin: &AuthenticationToken,
    listen: &str,
    capture: Option<std::sync::Arc<std::sync::Mutex<Vec<String>>>>,
) -> ServerProcess {
    let binary = sibling_binary(name).unwrap();
    let mut all = args.to_vec();
    all.extend(["--listen".to_string(), listen.to_string()]);
    let (log, output) = match capture {
        Some(lines) => ("trace".to_string(), Output::Capture(lines)),
        None => (std::env::var("DUET_TEST_LOG").unwrap_or_else(|_| "warn".into()), Output::Prefixed(name.to_string())),
    };
    let env = [("DUET_ADMIN_TOKEN", admin.expose()), ("DUET_DATABASE_KEYS", DATABASE_KEY), ("RUST_LOG", &log)];
    ServerProcess::spawn(&binary, &all, &env, output).unwrap()
}

impl Deployment {
    pub async fn start(options: LeaderOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut databases = Vec::new();
        let (leader_db, helper_db) = if options.postgres {
            let (l, h) = (PgDatabase::create().await, PgDatabase::create().await);
            let urls = (l.url.clone(), h.url.clone());
            databases.extend([l, h]);
            urls
        } else {
            let db = |name: &str| format!("sqlite:{}", dir.path().join(name).display());
            (db("leader.db"), db("helper.db"))
        };
        // A small body limit, so that the bad-input suite can try one cheaply.
        // Every deployment serves metrics too, so that recording them runs in every scenario.
        let mut helper_args = vec![
            "--database".into(),
            helper_db.clone(),
            "--max-body-bytes".into(),
            "1048576".into(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ];
        let mut leader_args = vec![
            "--database".into(),
            leader_db.clone(),
            "--creator-interval-ms".into(),
            "200".into(),
            "--driver-interval-ms".into(),
            "100".into(),
            "--max-job-size".into(),
            options.max_job_size.to_string(),
            "--max-body-bytes".into(),
            "1048576".into(),
            "--lease-seconds".into(),
            options.lease_seconds.to_string(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ];
        leader_args.extend(options.leader_args.iter().cloned());
        helper_args.extend(options.helper_args.iter().cloned());
        let (leader_admin, helper_admin) = (AuthenticationToken::random(), AuthenticationToken::random());
        let helper =
            spawn_logging("duet-helper", &helper_args, &helper_admin, "127.0.0.1:0", options.capture_logs.clone());
        let leader =
            spawn_logging("duet-leader", &leader_args, &leader_admin, "127.0.0.1:0", options.capture_logs.clone());
        Self {
            dir,
            leader,
            helper,
            leader_admin,
            helper_admin,
            leader_args,
            helper_args,
            leader_db_url: leader_db,
            helper_db_url: helper_db,
            _databases: databases,
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap(),
        }
    }

    /// The URL of the leader's database.
    pub fn leader_db_url(&self) -> String {
        self.leader_db_url.clone()
    }

    /// The URL of the helper's database.
    pub fn helper_db_url(&self) -> String {
        self.helper_db_url.clone()
    }

    /// The leader's database, for checks on what it stored (queries use `$1` parameters).
    pub async fn leader_db(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        let url = if self.leader_db_url.starts_with("sqlite:") {
            format!("{}?mode=ro", self.leader_db_url)
        } else {
            self.leader_db_url.clone()
        };
        sqlx::AnyPool::connect(&url).await.unwrap()
    }

    /// Waits until the leader has aggregated (or failed) every report it stored.
    pub async fn wait_aggregated(&self) {
        use sqlx::Row;
        let db = self.leader_db().await;
        for _ in 0..600 {
            let pending: i64 = sqlx::query(PENDING_REPORTS_SQL).fetch_one(&db).await.unwrap().get(0);
            if pending == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("reports still waiting for aggregation after 60 s");
    }

    /// Stops both servers gracefully and starts them again on the same ports and databases.
    pub fn restart(&mut self) {
        self.leader.terminate(Duration::from_secs(40));
        self.helper.terminate(Duration::from_secs(40));
        let (l, h) = (self.leader.addr.to_string(), self.helper.addr.to_string());
        self.helper = spawn("duet-helper", &self.helper_args, &self.helper_admin, &h);
        self.leader = spawn("duet-leader", &self.leader_args, &self.leader_admin, &l);
    }

    /// SIGKILLs the leader (no chance to clean up, like a crash) and starts it again on the same
    /// port and database.
    pub fn crash_leader(&mut self) {
        self.leader.kill();
        let addr = self.leader.addr.to_string();
        self.leader = spawn("duet-leader", &self.leader_args, &self.leader_admin, &addr);
    }

    /// SIGKILLs the helper; [`Deployment::start_helper_again`] brings it back.
    pub fn kill_helper(&mut self) {
        self.helper.kill();
    }

    pub fn start_helper_again(&mut self) {
        let addr = self.helper.addr.to_string();
        self.helper = spawn("duet-helper", &self.helper_args, &self.helper_admin, &addr);
    }

    /// Provisions a task on both servers. `helper_endpoint` overrides the helper's URL (a proxy
    /// in front of it, for instance).
    pub async fn create_task(
        &self,
        vdaf: VdafConfig,
        batch_mode: BatchMode,
        min_batch_size: u64,
        max_batch_size: Option<u64>,
        helper_endpoint: Option<String>,
    ) -> NewTask {
        self.create_task_with_dp(vdaf, batch_mode, min_batch_size, max_batch_size, helper_endpoint, None).await
    }

    /// [`Deployment::create_task`], with differential-privacy settings.
    pub async fn create_task_with_dp(
        &self,
        vdaf: VdafConfig,
        batch_mode: BatchMode,
        min_batch_size: u64,
        max_batch_size: Option<u64>,
        helper_endpoint: Option<String>,
        dp: Option<duet_common::dp::DpConfig>,
    ) -> NewTask {
        let params = TaskParameters {
            task_id: TaskId::random(),
            task_info: "duet end-to-end test".into(),
            leader_endpoint: self.leader.url(),
            helper_endpoint: helper_endpoint.unwrap_or_else(|| self.helper.url()),
            time_precision: 3600,
            min_batch_size,
            batch_mode,
            vdaf,
            task_interval_seconds: None,
            dp,
        };
        let task = NewTask::generate(params, max_batch_size);
        let leader = AdminClient::new(self.http.clone(), &self.leader.url(), self.leader_admin.clone()).unwrap();
        let helper = AdminClient::new(self.http.clone(), &self.helper.url(), self.helper_admin.clone()).unwrap();
        provision_task(&leader, &task.leader_request, &helper, &task.helper_request).await.unwrap();
        task
    }
}

/// The parameters of a Prio3Count time-interval task (one-hour precision, `min_batch_size` 10)
/// between two endpoints, for tests that provision a task themselves.
pub fn count_task(task_info: &str, leader_endpoint: String, helper_endpoint: String) -> TaskParameters {
    TaskParameters {
        task_id: TaskId::random(),
        task_info: task_info.into(),
        leader_endpoint,
        helper_endpoint,
        time_precision: 3600,
        min_batch_size: 10,
        batch_mode: BatchMode::TimeInterval,
        vdaf: VdafConfig::Prio3Count,
        task_interval_seconds: None,
        dp: None,
    }
}

/// A metric in a Prometheus text exposition: the sum of the series whose labels include all of
/// `labels`; `None` when no such series exists.
pub use duet_cli::bench::metric_sum as metric;

/// Counts the leader's reports still waiting for their outcome: without a job, or in a job still
/// active (a report that did not fail keeps the state `in_job` once its job is finished).
pub const PENDING_REPORTS_SQL: &str = "SELECT (SELECT COUNT(*) FROM client_reports WHERE state = 'unaggregated')
    + (SELECT COUNT(*) FROM client_reports r WHERE r.state = 'in_job' AND EXISTS
       (SELECT 1 FROM leader_aggregation_jobs j WHERE j.task_id = r.task_id AND j.job_id = r.job_id AND j.state = 'active'))";

/// Each of a task's reports (`$1`) on the leader: its ID, its state as the leader reads it
/// (`aggregated` for a report in a finished job that did not fail) and its report error.
pub const REPORT_STATES_SQL: &str = "SELECT r.report_id,
      CASE WHEN r.state = 'in_job' AND j.state = 'finished' THEN 'aggregated' ELSE r.state END, r.report_error
    FROM client_reports r LEFT JOIN leader_aggregation_jobs j ON j.task_id = r.task_id AND j.job_id = r.job_id
    WHERE r.task_id = $1";

/// Counts the leader's aggregated reports: those in finished jobs that did not fail.
pub const AGGREGATED_REPORTS_SQL: &str = "SELECT COUNT(*) FROM client_reports r JOIN leader_aggregation_jobs j
    ON j.task_id = r.task_id AND j.job_id = r.job_id WHERE r.state = 'in_job' AND j.state = 'finished'";

/// GETs a path of a server's operations listener: (status, body).
pub async fn ops_get(server: &ServerProcess, path: &str) -> (u16, String) {
    let addr = server.metrics_addr.expect("the server has a metrics listener");
    let resp = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The start of the hour two hours ago, as POSIX seconds: a report time in the past (accepted)
/// and aligned to the tests' one-hour time precision. Fixed at its first use in the process
/// (nextest runs each test in a process of its own), so that a test's reports and its queries
/// name the same hour even when the clock's hour turns over between them: before, a test that
/// stamped its reports at 05:59:57 and asked for "the hour" at 06:00:03 waited for ever on an
/// empty batch.
pub fn past_hour() -> u64 {
    static HOUR: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HOUR.get_or_init(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        (now / 3600 - 2) * 3600
    })
}

/// One of each Prio3 variant, small enough for quick tests.
pub fn all_vdafs() -> Vec<VdafConfig> {
    vec![
        VdafConfig::Prio3Count,
        VdafConfig::Prio3Sum { max_measurement: 255 },
        VdafConfig::Prio3SumVec { length: 8, max_measurement: 3, chunk_length: 4 },
        VdafConfig::Prio3Histogram { length: 12, chunk_length: 4 },
        VdafConfig::Prio3MultihotCountVec { length: 10, chunk_length: 4, max_weight: 4 },
    ]
}

/// The PostgreSQL server tests use (trust authentication), overridable with
/// `DUET_TEST_POSTGRES`.
pub fn postgres_admin_url() -> String {
    std::env::var("DUET_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A PostgreSQL database of its own for one test, dropped when this value is.
pub struct PgDatabase {
    pub url: String,
    name: String,
}

impl PgDatabase {
    pub async fn create() -> Self {
        use sqlx::{Connection, Executor};
        let admin = postgres_admin_url();
        let name = format!(
            "duet_test_{}",
            TaskId::random().as_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("PostgreSQL on 127.0.0.1:5432");
        conn.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(admin);
        Self { url: format!("{base}/{name}"), name }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async code; a small runtime of its own does the clean-up.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                use sqlx::{Connection, Executor};
                if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                    let _ = conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
                }
            })
        })
        .join();
    }
}

/// A TCP load balancer on loopback: each new connection goes to the next backend in turn, or to
/// the one after when that one does not answer (a replica that is down). Counts connections per
/// backend.
pub struct Balancer {
    pub addr: std::net::SocketAddr,
    pub connections: std::sync::Arc<Vec<std::sync::atomic::AtomicUsize>>,
}

impl Balancer {
    pub async fn start(backends: Vec<std::net::SocketAddr>) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: std::sync::Arc<Vec<AtomicUsize>> =
            std::sync::Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let counts = connections.clone();
        tokio::spawn(async move {
            let next = AtomicUsize::new(0);
            while let Ok((mut inbound, _)) = listener.accept().await {
                let start = next.fetch_add(1, Ordering::Relaxed);
                let (backends, counts) = (backends.clone(), counts.clone());
                tokio::spawn(async move {
                    for i in 0..backends.len() {
                        let which = (start + i) % backends.len();
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(backends[which]).await {
                            counts[which].fetch_add(1, Ordering::Relaxed);
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, connections }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn counts(&self) -> Vec<usize> {
        self.connections.iter().map(|c| c.load(std::sync::atomic::Ordering::Relaxed)).collect()
    }
}

/// A TCP proxy that can be cut: while cut, every open connection is dropped and new ones are
/// closed at once, as when a database host goes away; restored, it forwards again.
pub struct CuttableProxy {
    pub addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl CuttableProxy {
    pub async fn start(target: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Default::default();
        let (c, cs) = (cut.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: the connection closes at once
                }
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                cs.lock().unwrap().push(handle);
            }
        });
        Self { addr, cut, conns }
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl PgDatabase {
    /// This database's URL through another host and port (a proxy in front of the server).
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        let (_, db) = self.url.rsplit_once('/').unwrap();
        format!("postgres://postgres@{addr}/{db}")
    }
}

/// A Prio3Count leader task for storage-level tests, with placeholder endpoints.
pub fn storage_task_request(task_info: &str) -> duet_common::task::AggregatorTaskRequest {
    use duet_common::hpke::HpkeKeypair;
    use duet_common::messages::HpkeConfigId;
    duet_common::task::AggregatorTaskRequest {
        parameters: TaskParameters {
            task_id: TaskId::random(),
            task_info: task_info.into(),
            leader_endpoint: "http://leader.example/".into(),
            helper_endpoint: "http://helper.example/".into(),
            time_precision: 60,
            min_batch_size: 1,
            batch_mode: BatchMode::TimeInterval,
            vdaf: VdafConfig::Prio3Count,
            task_interval_seconds: None,
            dp: None,
        },
        vdaf_verify_key: duet_common::vdaf::VerifyKey::random().to_base64(),
        aggregator_auth_token: AuthenticationToken::random().expose().into(),
        collector_auth_token: Some(AuthenticationToken::random().expose().into()),
        collector_hpke_config: duet_common::task::hpke_config_to_b64(
            HpkeKeypair::generate_default(HpkeConfigId(1)).config(),
        ),
        max_batch_size: None,
        report_expiry_age: None,
    }
}

/// A report whose shares are placeholders of `payload_len` bytes (storage never opens them).
pub fn stub_report(time: u64, payload_len: usize) -> duet_common::messages::Report {
    use duet_common::messages::*;
    let ct = |id| HpkeCiphertext { config_id: HpkeConfigId(id), enc: vec![1; 32], payload: vec![7; payload_len] };
    Report {
        report_metadata: ReportMetadata {
            report_id: ReportId::random(),
            time: duet_common::time::Time::from_units(time),
            public_extensions: vec![],
        },
        public_share: vec![],
        leader_encrypted_input_share: ct(1),
        helper_encrypted_input_share: ct(2),
    }
}

/// Stores `reports` with [`LeaderStore::put_reports`](duet_leader::store::LeaderStore::put_reports), which
/// takes reports as they arrive on the wire: encoded, then read in place as the leader reads them.
pub async fn put_reports(
    store: &dyn duet_leader::store::LeaderStore,
    task: &duet_server::storage::Task,
    reports: impl IntoIterator<Item = &duet_common::messages::Report>,
) -> Result<Vec<Option<duet_common::messages::ReportError>>, duet_server::storage::StoreError> {
    use duet_common::Encode;
    let mut body = Vec::new();
    for report in reports {
        report.encode(&mut body).expect("a report encodes");
    }
    let encoded = duet_common::messages::UploadRequest::decode_in_place(&body).expect("the reports read back");
    store.put_reports(task, &encoded.iter().collect::<Vec<_>>()).await
}

/// Uploads `reports` as they are (their bytes, IDs and times) to the leader at `leader_url`;
/// the statuses of those it refused.
pub async fn upload_raw(
    http: &reqwest::Client,
    leader_url: &str,
    task: &TaskId,
    reports: Vec<duet_common::messages::Report>,
) -> Vec<duet_common::messages::ReportUploadStatus> {
    use duet_common::{Decode, Encode};
    let resp = http
        .post(format!("{}/tasks/{task}/reports", leader_url.trim_end_matches('/')))
        .header("content-type", duet_common::media_type::UPLOAD_REQ)
        .body(duet_common::messages::UploadRequest { reports }.get_encoded().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    if body.is_empty() {
        Vec::new()
    } else {
        duet_common::messages::UploadErrors::get_decoded(&body).unwrap().status
    }
}

/// The first column of the one row `sql` returns (a `COUNT(*)`, say), over a connection of the
/// caller's own to the database at `url`.
pub async fn count_rows(url: &str, sql: &str) -> i64 {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.expect("the test database");
    let n = sqlx::query(sql).fetch_one(&pool).await.expect("a row").get::<i64, _>(0);
    pool.close().await;
    n
}
