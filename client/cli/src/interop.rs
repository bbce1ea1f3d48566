//! The client and collector sides of the interop test API (`duet interop-client` and
//! `duet interop-collector`): a runner drives the client SDK and the collector SDK over
//! `/internal/test/*`, so that duet's client and collector can be paired with any
//! implementation's aggregators. Test-only: never expose these servers.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use duet_client::collect::{leader_selected_query, CollectionJob, Collector, CollectorOptions, PollStatus};
use duet_client::upload::Client;
use duet_common::auth::{AuthenticationToken, TokenScheme};
use duet_common::hpke::HpkeKeypair;
use duet_common::interop::{self, VdafObject};
use duet_common::messages::{BatchMode, HpkeConfigId, ReportError, TaskId};
use duet_common::task::{hpke_config_to_b64, CollectorCredentials, TaskParameters};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Mutex;

fn ok(fields: Value) -> Json<Value> {
    Json(interop::success(fields.as_object().cloned().unwrap_or_default()))
}

fn fail(message: impl std::fmt::Display) -> Json<Value> {
    Json(interop::error(message))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Json<Value>> {
    serde_json::from_slice(body).map_err(|e| fail(format!("malformed {what} request: {e}")))
}

async fn ready() -> Json<Value> {
    ok(json!({}))
}

async fn not_found() -> (StatusCode, Json<Value>) {
    (StatusCode::NOT_FOUND, fail("no such test API"))
}

fn with_common_routes<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router.route("/internal/test/ready", post(ready)).route("/internal/test/{*rest}", axum::routing::any(not_found))
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build().unwrap_or_default()
}

// ---- client ----

/// An SDK client per task, so HPKE configurations are fetched once per task.
type Clients = HashMap<TaskId, (TaskParameters, Arc<Client>)>;

#[derive(Clone, Default)]
struct ClientState {
    clients: Arc<Mutex<Clients>>,
}

#[derive(Deserialize)]
struct Upload {
    task_id: String,
    leader: String,
    helper: String,
    vdaf: VdafObject,
    measurement: Value,
    #[serde(default)]
    time: Option<u64>,
    time_precision: u64,
    #[serde(default = "one")]
    min_batch_size: u64,
    #[serde(alias = "query_type", default = "one")]
    batch_mode: u64,
}

fn one() -> u64 {
    1
}

/// The interop client's routes.
pub fn client_router() -> Router {
    with_common_routes(Router::new().route("/internal/test/upload", post(upload))).with_state(ClientState::default())
}

async fn upload(State(s): State<ClientState>, body: axum::body::Bytes) -> Json<Value> {
    let req: Upload = match parse(&body, "upload") {
        Ok(r) => r,
        Err(e) => return e,
    };
    let params = match interop::task_parameters(
        &req.task_id,
        &req.leader,
        &req.helper,
        &req.vdaf,
        req.batch_mode,
        req.min_batch_size,
        req.time_precision,
        None,
    ) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let measurement = match interop::parse_measurement(&params.vdaf, &req.measurement) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let client = {
        let mut clients = s.clients.lock().await;
        match clients.get(&params.task_id) {
            Some((p, c)) if *p == params => c.clone(),
            _ => match Client::new(params.clone(), http_client()) {
                Ok(c) => {
                    let c = Arc::new(c);
                    clients.insert(params.task_id, (params.clone(), c.clone()));
                    c
                }
                Err(e) => return fail(e),
            },
        }
    };
    let time = req.time.unwrap_or_else(duet_client::timefmt::now_seconds);
    match client.upload(&[(measurement, time)]).await {
        Ok(outcome) if outcome.rejected.is_empty() => ok(json!({})),
        Ok(outcome) => {
            let reasons: Vec<&str> = outcome.rejected.iter().map(|(_, e)| ReportError::name(*e)).collect();
            fail(format!("the leader rejected the report: {}", reasons.join(", ")))
        }
        Err(e) => fail(e),
    }
}

// ---- collector ----

#[derive(Clone, Default)]
struct CollectorState {
    tasks: Arc<Mutex<HashMap<TaskId, Arc<Collector>>>>,
    jobs: Arc<Mutex<HashMap<String, CollectorJob>>>,
}

struct CollectorJob {
    collector: Arc<Collector>,
    job: CollectionJob,
    /// The answer once complete, kept so that repeated polls give it again.
    done: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct CollectorAddTask {
    task_id: String,
    leader: String,
    helper: String,
    vdaf: VdafObject,
    collector_authentication_token: String,
    #[serde(alias = "query_type")]
    batch_mode: u64,
    #[serde(default = "one")]
    min_batch_size: u64,
    #[serde(default = "one")]
    time_precision: u64,
}

#[derive(Deserialize)]
struct QueryObject {
    #[serde(rename = "type")]
    batch_mode: u64,
    #[serde(default)]
    batch_interval_start: Option<u64>,
    #[serde(default)]
    batch_interval_duration: Option<u64>,
}

#[derive(Deserialize)]
struct CollectionStart {
    task_id: String,
    #[serde(default)]
    agg_param: String,
    query: QueryObject,
}

#[derive(Deserialize)]
struct CollectionPoll {
    handle: String,
}

/// The interop collector's routes.
pub fn collector_router() -> Router {
    with_common_routes(
        Router::new()
            .route("/internal/test/add_task", post(collector_add_task))
            .route("/internal/test/collection_start", post(collection_start))
            .route("/internal/test/collection_poll", post(collection_poll)),
    )
    .with_state(CollectorState::default())
}

async fn collector_add_task(State(s): State<CollectorState>, body: axum::body::Bytes) -> Json<Value> {
    let req: CollectorAddTask = match parse(&body, "add_task") {
        Ok(r) => r,
        Err(e) => return e,
    };
    let params = match interop::task_parameters(
        &req.task_id,
        &req.leader,
        &req.helper,
        &req.vdaf,
        req.batch_mode,
        req.min_batch_size,
        req.time_precision,
        None,
    ) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    if let Err(e) = AuthenticationToken::new(req.collector_authentication_token.clone()) {
        return fail(e);
    }
    let keypair = HpkeKeypair::generate_default(HpkeConfigId(0));
    let credentials = CollectorCredentials {
        task: params.clone(),
        collector_auth_token: req.collector_authentication_token,
        hpke_config: hpke_config_to_b64(keypair.config()),
        hpke_private_key: keypair.private_key().to_base64(),
    };
    // The interop draft has the collector present its token in DAP-Auth-Token.
    let options = CollectorOptions { token_scheme: TokenScheme::DapAuthToken, ..CollectorOptions::default() };
    match Collector::with_options(&credentials, http_client(), options) {
        Ok(c) => {
            s.tasks.lock().await.insert(params.task_id, Arc::new(c));
            ok(json!({ "collector_hpke_config": credentials.hpke_config }))
        }
        Err(e) => fail(e),
    }
}

async fn collection_start(State(s): State<CollectorState>, body: axum::body::Bytes) -> Json<Value> {
    let req: CollectionStart = match parse(&body, "collection_start") {
        Ok(r) => r,
        Err(e) => return e,
    };
    if !req.agg_param.is_empty() {
        return fail("Prio3 takes an empty aggregation parameter");
    }
    let Ok(task_id) = req.task_id.parse::<TaskId>() else {
        return fail(format!("{:?} is not a task ID", req.task_id));
    };
    let Some(collector) = s.tasks.lock().await.get(&task_id).cloned() else {
        return fail(format!("unknown task {task_id}"));
    };
    let query = match interop::batch_mode(req.query.batch_mode) {
        Ok(BatchMode::TimeInterval) => {
            match collector.query(req.query.batch_interval_start.zip(req.query.batch_interval_duration)) {
                Ok(q) => q,
                Err(e) => return fail(e),
            }
        }
        Ok(BatchMode::LeaderSelected) => leader_selected_query(),
        Err(e) => return fail(e),
    };
    match collector.start(query).await {
        Ok(job) => {
            let handle = TaskId::random().to_string();
            s.jobs.lock().await.insert(handle.clone(), CollectorJob { collector, job, done: None });
            ok(json!({ "handle": handle }))
        }
        Err(e) => fail(e),
    }
}

async fn collection_poll(State(s): State<CollectorState>, body: axum::body::Bytes) -> Json<Value> {
    let req: CollectionPoll = match parse(&body, "collection_poll") {
        Ok(r) => r,
        Err(e) => return e,
    };
    let mut jobs = s.jobs.lock().await;
    let Some(entry) = jobs.get_mut(&req.handle) else {
        return fail(format!("unknown handle {:?}", req.handle));
    };
    if let Some(done) = &entry.done {
        return Json(Value::Object(done.clone()));
    }
    match entry.collector.poll_status(&entry.job).await {
        Ok(PollStatus::Ready(result)) => {
            let (start, end) = result.interval_seconds;
            let answer = json!({
                "status": "complete",
                "report_count": result.report_count,
                "interval_start": start,
                "interval_duration": end - start,
                "result": interop::result_json(&result.result),
            });
            let answer = answer.as_object().cloned().unwrap_or_default();
            entry.done = Some(answer.clone());
            // A leader-selected request names its job until the job is deleted; deleting it
            // lets the runner's next identical request collect the next batch.
            if matches!(entry.job.request().query, duet_common::messages::Query::LeaderSelected(_)) {
                let _ = entry.collector.delete(&entry.job).await;
            }
            Json(Value::Object(answer))
        }
        Ok(PollStatus::Pending { .. }) => Json(json!({ "status": "in progress" })),
        Err(e) => fail(e),
    }
}
