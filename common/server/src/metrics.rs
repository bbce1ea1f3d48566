//! Operations surface of both servers: Prometheus metrics, liveness and readiness, served on a
//! listener of their own (`--metrics-listen`) so that they are never exposed with the DAP API.
//!
//! Every metric name lives here, behind one function per event, so that the leader and helper
//! record the same names and an operator finds the whole list in one place. Until
//! [`install`] runs, recording is a no-op (in-process tests, servers without the listener).

use super::storage::Store;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Instant;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds: from a fast upload to a slow aggregation job.
const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Requests per group transaction of uploads.
const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0];

/// Installs the process's metrics recorder (once) and returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("duet_upload_group_requests".into()), GROUP_BUCKETS)
                })
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder was installed first, which nothing here does.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("duet_reports_uploaded_total", "Reports the leader accepted and stored.");
    describe_counter!("duet_reports_rejected_total", "Reports the leader refused at upload, by DAP report error.");
    describe_counter!("duet_reports_aggregated_total", "Reports whose output share was added to a batch.");
    describe_counter!("duet_reports_failed_total", "Reports that failed aggregation, by DAP report error.");
    describe_counter!("duet_aggregation_jobs_total", "Aggregation job events: created, finished, retried, abandoned.");
    describe_gauge!("duet_aggregation_jobs", "The leader's aggregation jobs in the database, by state.");
    describe_counter!("duet_collection_jobs_total", "Collection job events: created, finished, failed.");
    describe_counter!(
        "duet_helper_retries_total",
        "Requests to the helper to be sent again later, by step (aggregation_job, aggregate_share) and reason."
    );
    describe_gauge!(
        "duet_jobs_waiting_on_helper",
        "The leader's jobs whose last request did not get through to the helper, or that it deferred, by kind."
    );
    describe_gauge!(
        "duet_oldest_unaggregated_report_age_seconds",
        Unit::Seconds,
        "Age of the oldest report the leader stored and has not aggregated yet (0 when there is none)."
    );
    describe_counter!("duet_aggregate_shares_total", "Aggregate shares the helper released.");
    describe_counter!(
        "duet_requests_refused_for_body_memory_total",
        "Requests answered 503 because the request bodies held in memory left no room for theirs."
    );
    describe_histogram!("duet_step_duration_seconds", Unit::Seconds, "Time spent in one protocol step.");
    describe_counter!("duet_http_requests_total", "HTTP requests answered, by route, method and status.");
    describe_histogram!("duet_http_request_duration_seconds", Unit::Seconds, "HTTP request latency by route.");
    describe_gauge!("duet_db_pool_connections", "Database connections in the pool, by state.");
    describe_gauge!("duet_db_pool_max_connections", "The database pool's connection limit.");
    describe_histogram!(
        "duet_upload_group_requests",
        "Upload requests stored in one transaction (SQLite, where concurrent uploads share one)."
    );
    describe_counter!("duet_gc_deleted_rows_total", "Rows the garbage collector deleted, by table.");
    describe_gauge!(
        "duet_oldest_report_age_seconds",
        Unit::Seconds,
        "Age (by its timestamp) of the oldest report the server still holds, as of the last garbage-collection pass (0 when it holds none)."
    );
}

/// The garbage collector deleted `rows` rows of `table`.
pub fn gc_deleted(table: &'static str, rows: u64) {
    counter!("duet_gc_deleted_rows_total", "table" => table).increment(rows);
}

/// The age in seconds of the oldest report the server holds.
pub fn oldest_report_age(seconds: i64) {
    gauge!("duet_oldest_report_age_seconds").set(seconds.max(0) as f64);
}

/// Reports the leader accepted (`accepted`) and refused, by report error.
pub fn reports_uploaded(accepted: u64, rejected: &[duet_common::messages::ReportError]) {
    counter!("duet_reports_uploaded_total").increment(accepted);
    for error in rejected {
        counter!("duet_reports_rejected_total", "reason" => error.name()).increment(1);
    }
}

/// One transaction stored `requests` upload requests together.
pub fn upload_group(requests: usize) {
    histogram!("duet_upload_group_requests").record(requests as f64);
}

/// Reports an aggregator added to batches, and those that failed, by report error.
pub fn reports_aggregated(
    role: duet_common::messages::Role,
    aggregated: u64,
    failed: &[duet_common::messages::ReportError],
) {
    let role = role_label(role);
    counter!("duet_reports_aggregated_total", "role" => role).increment(aggregated);
    for error in failed {
        counter!("duet_reports_failed_total", "role" => role, "reason" => error.name()).increment(1);
    }
}

/// An aggregation job event: `created`, `finished`, `retried` or `abandoned`.
pub fn aggregation_jobs(role: duet_common::messages::Role, outcome: &'static str, n: u64) {
    counter!("duet_aggregation_jobs_total", "role" => role_label(role), "outcome" => outcome).increment(n);
}

/// A request to the helper that will be sent again: `step` is `aggregation_job` or
/// `aggregate_share`, `reason` a bounded label (see the leader's `RetryReason`).
pub fn helper_retry(step: &'static str, reason: &'static str) {
    counter!("duet_helper_retries_total", "step" => step, "reason" => reason).increment(1);
}

/// A collection job event: `created`, `finished` or `failed`.
pub fn collection_job(outcome: &'static str) {
    counter!("duet_collection_jobs_total", "outcome" => outcome).increment(1);
}

/// A request answered 503 because the bodies held in memory left no room for its own.
pub fn bodies_refused_for_memory() {
    counter!("duet_requests_refused_for_body_memory_total").increment(1);
}

/// The helper released an aggregate share.
pub fn aggregate_share_released() {
    counter!("duet_aggregate_shares_total").increment(1);
}

fn role_label(role: duet_common::messages::Role) -> &'static str {
    match role {
        duet_common::messages::Role::Leader => "leader",
        duet_common::messages::Role::Helper => "helper",
        _ => "other",
    }
}

/// Times one protocol step; the time is recorded when the value is dropped, so every way out of
/// the step counts.
pub struct StepTimer {
    step: &'static str,
    start: Instant,
}

impl StepTimer {
    pub fn start(step: &'static str) -> Self {
        Self { step, start: Instant::now() }
    }
}

impl Drop for StepTimer {
    fn drop(&mut self) {
        histogram!("duet_step_duration_seconds", "step" => self.step).record(self.start.elapsed().as_secs_f64());
    }
}

/// Middleware counting and timing every request by route template (never the concrete path,
/// whose task and job IDs would make a series per ID).
pub async fn track_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = method_label(request.method());
    let start = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    histogram!("duet_http_request_duration_seconds", "route" => route.clone()).record(start.elapsed().as_secs_f64());
    counter!("duet_http_requests_total", "route" => route, "method" => method, "status" => status).increment(1);
    response
}

/// A request method as a metric label: the standard methods by name, any other as `other`, so
/// that clients cannot mint one time series per made-up method.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    static STANDARD: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::PATCH,
        Method::CONNECT,
        Method::TRACE,
    ];
    STANDARD.iter().find(|m| *m == method).map_or("other", |m| m.as_str())
}

/// A role's own gauges, read from its database at scrape time (the leader's job counts and
/// backlog); what both roles show (the pool) is read here.
#[async_trait::async_trait]
pub trait RoleGauges: Send + Sync {
    /// Sets the role's gauges; a failure to read them is logged, and leaves the last values.
    async fn refresh(&self);
}

#[derive(Clone)]
struct OpsState {
    handle: PrometheusHandle,
    store: Store,
    gauges: Option<Arc<dyn RoleGauges>>,
}

/// The operations listener's routes: `/metrics`, `/healthz` (the process is serving) and
/// `/readyz` (the database answers too).
pub fn router(handle: PrometheusHandle, store: Store, gauges: Option<Arc<dyn RoleGauges>>) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(OpsState { handle, store, gauges })
}

async fn render(State(s): State<OpsState>) -> Response {
    // Gauges that live in the database or the pool are read at scrape time.
    let pool = s.store.pool_status();
    gauge!("duet_db_pool_connections", "state" => "idle").set(pool.idle as f64);
    gauge!("duet_db_pool_connections", "state" => "in_use").set(pool.size.saturating_sub(pool.idle) as f64);
    gauge!("duet_db_pool_max_connections").set(pool.max as f64);
    if let Some(gauges) = &s.gauges {
        gauges.refresh().await;
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.handle.render()).into_response()
}

async fn ready(State(s): State<OpsState>) -> Response {
    match s.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response(),
    }
}

/// Serves the operations routes on `listen` until `shutdown` resolves.
pub async fn serve(
    listen: &str,
    handle: PrometheusHandle,
    store: Store,
    gauges: Option<Arc<dyn RoleGauges>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("metrics listener {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, "metrics, /healthz and /readyz listening");
    // Tests read this line (on standard error, away from the log lines) to learn the port.
    eprintln!("metrics listening on {addr}");
    let app = router(handle, store, gauges);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_standard_methods_are_labels() {
        use axum::http::Method;
        assert_eq!(super::method_label(&Method::GET), "GET");
        assert_eq!(super::method_label(&Method::DELETE), "DELETE");
        assert_eq!(super::method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
        assert_eq!(super::method_label(&Method::from_bytes(b"X-1234").unwrap()), "other");
    }
}
