//! An interop test runner: the "Test Runner Operation" of draft-dcook-ppm-dap-interop-test-design
//! (DAP-18 dialect) over HTTP alone, given the base URLs of the four roles' test APIs. Any
//! implementation's role can be swapped in; `interop-runner` (a binary of this package) runs
//! [`run_all`] against URLs given on its command line.

use duet_common::interop::VdafObject;
use duet_common::messages::{ReportUploadStatus, TaskId, UploadErrors, UploadRequest};
use duet_common::task::TaskParameters;
use duet_common::vdaf::{AggregateResult, VdafConfig, VerifyKey};
use duet_common::{Decode, Encode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The four roles' test API base URLs (each ending in `/`).
#[derive(Clone, Debug)]
pub struct Roles {
    pub client: String,
    pub leader: String,
    pub helper: String,
    pub collector: String,
}

/// A provisioned interop task, as the runner knows it.
#[derive(Clone, Debug)]
pub struct InteropTask {
    pub task_id: TaskId,
    pub leader_endpoint: String,
    pub helper_endpoint: String,
    pub vdaf: VdafConfig,
    pub batch_mode: u64,
    pub min_batch_size: u64,
    pub time_precision: u64,
    pub leader_token: String,
    pub collector_token: String,
}

pub struct Runner {
    pub roles: Roles,
    pub http: reqwest::Client,
}

fn join(base: &str, path: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), path.trim_start_matches('/'))
}

fn random_token() -> String {
    duet_common::auth::AuthenticationToken::random().expose().to_string()
}

impl Runner {
    pub fn new(roles: Roles) -> Self {
        Self { roles, http: reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap() }
    }

    /// POSTs a test API command; the parsed answer (whatever its `status`).
    pub async fn call(&self, base: &str, command: &str, body: Value) -> Result<Value, String> {
        let url = join(base, &format!("internal/test/{command}"));
        let resp = self.http.post(&url).json(&body).send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
        if status != 200 {
            return Err(format!("{url}: HTTP {status}: {text}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("{url}: not JSON ({e}): {text}"))
    }

    /// Like [`Runner::call`], but an answer with `"status": "error"` is an error.
    pub async fn command(&self, base: &str, command: &str, body: Value) -> Result<Value, String> {
        let answer = self.call(base, command, body).await?;
        match answer["status"].as_str() {
            Some("success") | Some("complete") | Some("in progress") => Ok(answer),
            _ => Err(format!("{command}: {}", answer["error"].as_str().unwrap_or("error without a message"))),
        }
    }

    /// Asks every role's `/internal/test/ready` until all answer.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        for base in [&self.roles.client, &self.roles.leader, &self.roles.helper, &self.roles.collector] {
            loop {
                match self.call(base, "ready", json!({})).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => return Err(format!("not ready: {e}")),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        Ok(())
    }

    async fn endpoint(&self, base: &str, task_id: &TaskId, role: &str) -> Result<String, String> {
        let host = reqwest::Url::parse(base).map_err(|e| e.to_string())?.host_str().unwrap_or("localhost").to_string();
        let answer = self
            .command(
                base,
                "endpoint_for_task",
                json!({ "task_id": task_id.to_string(), "role": role, "hostname": host }),
            )
            .await?;
        let endpoint = answer["endpoint"].as_str().ok_or("endpoint_for_task: no endpoint")?;
        // A relative endpoint is served on the test API's own host and port.
        Ok(if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
            endpoint.to_string()
        } else {
            join(base, endpoint)
        })
    }

    /// Sets a task up on all roles (steps 4 to 10 of "Test Runner Operation").
    pub async fn add_task(
        &self,
        vdaf: VdafConfig,
        batch_mode: u64,
        min_batch_size: u64,
        time_precision: u64,
    ) -> Result<InteropTask, String> {
        let task_id = TaskId::random();
        let leader_endpoint = self.endpoint(&self.roles.leader, &task_id, "leader").await?;
        let helper_endpoint = self.endpoint(&self.roles.helper, &task_id, "helper").await?;
        let vdaf_json = serde_json::to_value(VdafObject::from_config(&vdaf).map_err(|e| e.to_string())?).unwrap();
        let (leader_token, collector_token) = (random_token(), random_token());
        let answer = self
            .command(
                &self.roles.collector,
                "add_task",
                json!({
                    "task_id": task_id.to_string(), "leader": leader_endpoint, "helper": helper_endpoint,
                    "vdaf": vdaf_json, "collector_authentication_token": collector_token,
                    "batch_mode": batch_mode, "min_batch_size": min_batch_size, "time_precision": time_precision,
                }),
            )
            .await?;
        let collector_hpke_config =
            answer["collector_hpke_config"].as_str().ok_or("collector add_task: no collector_hpke_config")?.to_string();
        let verify_key = VerifyKey::random().to_base64();
        for (base, role) in [(&self.roles.leader, "leader"), (&self.roles.helper, "helper")] {
            let mut body = json!({
                "task_id": task_id.to_string(), "leader": leader_endpoint, "helper": helper_endpoint,
                "vdaf": vdaf_json, "leader_authentication_token": leader_token, "role": role,
                "vdaf_verify_key": verify_key, "batch_mode": batch_mode, "min_batch_size": min_batch_size,
                "time_precision": time_precision, "collector_hpke_config": collector_hpke_config,
                "max_batch_query_count": 1,
            });
            if role == "leader" {
                body["collector_authentication_token"] = json!(collector_token);
            }
            self.command(base, "add_task", body).await?;
        }
        Ok(InteropTask {
            task_id,
            leader_endpoint,
            helper_endpoint,
            vdaf,
            batch_mode,
            min_batch_size,
            time_precision,
            leader_token,
            collector_token,
        })
    }

    /// One report through the client role.
    pub async fn upload(&self, task: &InteropTask, measurement: Value, time: Option<u64>) -> Result<(), String> {
        let mut body = json!({
            "task_id": task.task_id.to_string(), "leader": task.leader_endpoint, "helper": task.helper_endpoint,
            "vdaf": VdafObject::from_config(&task.vdaf).map_err(|e| e.to_string())?, "measurement": measurement,
            "time_precision": task.time_precision, "min_batch_size": task.min_batch_size,
            "batch_mode": task.batch_mode,
        });
        if let Some(t) = time {
            body["time"] = json!(t);
        }
        self.command(&self.roles.client, "upload", body).await.map(|_| ())
    }

    /// Starts a collection and polls it to its end; the `complete` answer.
    pub async fn collect(&self, task: &InteropTask, query: Value, timeout: Duration) -> Result<Value, String> {
        let answer = self
            .command(
                &self.roles.collector,
                "collection_start",
                json!({ "task_id": task.task_id.to_string(), "agg_param": "", "query": query }),
            )
            .await?;
        let handle = answer["handle"].as_str().ok_or("collection_start: no handle")?.to_string();
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.command(&self.roles.collector, "collection_poll", json!({ "handle": handle })).await?;
            if answer["status"] == "complete" {
                return Ok(answer);
            }
            if Instant::now() > deadline {
                return Err("collection still in progress at the deadline".into());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The DAP task parameters every role derived (for runner-made reports).
    pub fn parameters(&self, task: &InteropTask) -> TaskParameters {
        duet_common::interop::task_parameters(
            &task.task_id.to_string(),
            &task.leader_endpoint,
            &task.helper_endpoint,
            &VdafObject::from_config(&task.vdaf).unwrap(),
            task.batch_mode,
            task.min_batch_size,
            task.time_precision,
            None,
        )
        .unwrap()
    }
}

/// The result field of a `complete` answer, as numbers.
pub fn result_of(answer: &Value) -> Result<AggregateResult, String> {
    let num = |v: &Value| v.as_str().and_then(|s| s.parse::<u128>().ok()).ok_or(format!("bad result {v}"));
    match &answer["result"] {
        Value::Array(items) => Ok(AggregateResult::Vector(items.iter().map(num).collect::<Result<_, _>>()?)),
        v => Ok(AggregateResult::Scalar(num(v)? as u64)),
    }
}

/// One case's outcome.
#[derive(Debug)]
pub struct Outcome {
    pub case: String,
    pub result: Result<String, String>,
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A time-interval query for the hour starting at `start`.
fn hour(start: u64) -> Value {
    json!({ "type": 1, "batch_interval_start": start, "batch_interval_duration": 3600 })
}

fn check(cond: bool, what: impl Into<String>) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what.into())
    }
}

/// Test measurements for a VDAF and their sum in the clear, as the API spells them.
fn measurements(vdaf: &VdafConfig, n: usize) -> (Vec<Value>, AggregateResult) {
    match *vdaf {
        VdafConfig::Prio3Count => {
            let ms: Vec<u64> = (0..n).map(|i| (i % 3 == 0) as u64).collect();
            (ms.iter().map(|m| json!(m.to_string())).collect(), AggregateResult::Scalar(ms.iter().sum()))
        }
        VdafConfig::Prio3Sum { max_measurement } => {
            let ms: Vec<u64> = (0..n as u64).map(|i| (i * 7) % (max_measurement + 1)).collect();
            (ms.iter().map(|m| json!(m.to_string())).collect(), AggregateResult::Scalar(ms.iter().sum()))
        }
        VdafConfig::Prio3SumVec { length, max_measurement, .. } => {
            let mut total = vec![0u128; length as usize];
            let ms = (0..n)
                .map(|i| {
                    let v: Vec<u64> = (0..length as usize).map(|j| ((i + j) as u64) % (max_measurement + 1)).collect();
                    total.iter_mut().zip(&v).for_each(|(t, x)| *t += u128::from(*x));
                    json!(v.iter().map(|x| x.to_string()).collect::<Vec<_>>())
                })
                .collect();
            (ms, AggregateResult::Vector(total))
        }
        VdafConfig::Prio3Histogram { length, .. } => {
            let mut total = vec![0u128; length as usize];
            let ms = (0..n)
                .map(|i| {
                    let b = (i * i) % length as usize;
                    total[b] += 1;
                    json!(b.to_string())
                })
                .collect();
            (ms, AggregateResult::Vector(total))
        }
        VdafConfig::Prio3MultihotCountVec { .. } => (vec![], AggregateResult::Scalar(0)),
        // The test VDAF of a test build: not one the interop API knows.
        #[allow(unreachable_patterns)]
        _ => (vec![], AggregateResult::Scalar(0)),
    }
}

/// The VDAFs the interop API knows.
pub fn interop_vdafs() -> Vec<VdafConfig> {
    vec![
        VdafConfig::Prio3Count,
        VdafConfig::Prio3Sum { max_measurement: 255 },
        VdafConfig::Prio3SumVec { length: 6, max_measurement: 3, chunk_length: 3 },
        VdafConfig::Prio3Histogram { length: 8, chunk_length: 3 },
    ]
}

const COLLECT: Duration = Duration::from_secs(120);

/// Uploads `n` reports at `time` and collects them: the collected answer equals the clear sum.
async fn aggregate(r: &Runner, vdaf: VdafConfig, batch_mode: u64, n: usize) -> Result<String, String> {
    let time = (now() / 3600 - 1) * 3600;
    let task = r.add_task(vdaf.clone(), batch_mode, n as u64, 3600).await?;
    let (ms, expected) = measurements(&vdaf, n);
    for m in ms {
        r.upload(&task, m, Some(time + 60)).await?;
    }
    let query = if batch_mode == 1 { hour(time) } else { json!({ "type": 2 }) };
    let answer = r.collect(&task, query, COLLECT).await?;
    check(answer["report_count"] == json!(n), format!("report_count {} != {n}", answer["report_count"]))?;
    let got = result_of(&answer)?;
    check(got == expected, format!("result {got:?} != {expected:?}"))?;
    Ok(format!("{n} reports, result {got}"))
}

/// Every case of the draft's list, against the given roles.
pub async fn run_all(roles: Roles) -> Vec<Outcome> {
    let r = Runner::new(roles);
    let mut out = Vec::new();
    if let Err(e) = r.wait_ready(Duration::from_secs(60)).await {
        out.push(Outcome { case: "ready".into(), result: Err(e) });
        return out;
    }
    for vdaf in interop_vdafs() {
        for (mode, name) in [(1, "time-interval"), (2, "leader-selected")] {
            let result = aggregate(&r, vdaf.clone(), mode, 12).await;
            out.push(Outcome { case: format!("{vdaf}, {name}"), result });
        }
    }
    out.push(Outcome { case: "2000 reports".into(), result: aggregate(&r, VdafConfig::Prio3Count, 1, 2000).await });
    out.push(Outcome { case: "report far in the future".into(), result: future_report(&r).await });
    out.push(Outcome { case: "wrong tokens".into(), result: wrong_tokens(&r).await });
    out.push(Outcome { case: "overlap and repeated collection".into(), result: overlap_and_late(&r).await });
    out.push(Outcome { case: "replayed report".into(), result: replay(&r).await });
    out
}

async fn future_report(r: &Runner) -> Result<String, String> {
    let task = r.add_task(VdafConfig::Prio3Count, 1, 1, 3600).await?;
    match r.upload(&task, json!("1"), Some(now() + 7 * 86400)).await {
        Err(e) => Ok(format!("refused: {e}")),
        Ok(()) => Err("a report a week ahead was accepted".into()),
    }
}

async fn wrong_tokens(r: &Runner) -> Result<String, String> {
    let task = r.add_task(VdafConfig::Prio3Count, 1, 1, 3600).await?;
    let start = (now() / 3600 - 1) * 3600;
    // The leader: a collection job with a wrong collector token.
    let req = duet_common::messages::CollectionJobReq {
        query: duet_common::messages::Query::TimeInterval(duet_common::messages::TimeIntervalQueryConfig {
            batch_interval: duet_common::time::Interval::new(
                duet_common::time::Time::from_units(start / 3600),
                duet_common::time::Duration::ONE,
            ),
        }),
        agg_param: vec![],
        extensions: vec![],
    };
    let url = join(&task.leader_endpoint, &format!("tasks/{}/collection_jobs", task.task_id));
    let leader = r
        .http
        .post(&url)
        .header("content-type", duet_common::media_type::COLLECTION_JOB_REQ)
        .header("dap-auth-token", "wrong-token")
        .body(req.get_encoded().unwrap())
        .send()
        .await
        .map_err(|e| e.to_string())?
        .status();
    check(leader.is_client_error(), format!("leader answered {leader} to a wrong collector token"))?;
    // The helper: an aggregation job with a wrong leader token (and the right one passes auth).
    let body = duet_common::messages::AggregationJobInitReq {
        verification_key_id: 0,
        agg_param: vec![],
        extensions: vec![],
        verify_inits: vec![],
    }
    .get_encoded()
    .unwrap();
    let url = join(&task.helper_endpoint, &format!("tasks/{}/aggregation_jobs", task.task_id));
    let send = |token: String| {
        r.http
            .post(&url)
            .header("content-type", duet_common::media_type::AGGREGATION_JOB_INIT_REQ)
            .header("dap-auth-token", token)
            .body(body.clone())
            .send()
    };
    let wrong = send("wrong-token".into()).await.map_err(|e| e.to_string())?.status();
    check(wrong == 401 || wrong == 403, format!("helper answered {wrong} to a wrong leader token"))?;
    let right = send(task.leader_token.clone()).await.map_err(|e| e.to_string())?.status();
    check(right != 401 && right != 403, format!("helper refused the right token ({right})"))?;
    Ok(format!("leader {leader}, helper {wrong}"))
}

async fn overlap_and_late(r: &Runner) -> Result<String, String> {
    let time = (now() / 3600 - 1) * 3600;
    let task = r.add_task(VdafConfig::Prio3Count, 1, 5, 3600).await?;
    for i in 0..6 {
        r.upload(&task, json!(if i % 2 == 0 { "1" } else { "0" }), Some(time + 10)).await?;
    }
    let first = r.collect(&task, hour(time), COLLECT).await?;
    check(first["result"] == json!("3"), format!("first result {}", first["result"]))?;
    // A late report for the collected hour changes nothing; the same query gives the same answer.
    let late = r.upload(&task, json!("1"), Some(time + 20)).await;
    let again = r.collect(&task, hour(time), COLLECT).await?;
    check(again == first, format!("repeated collection differs: {again} vs {first}"))?;
    // A query overlapping the collected hour is refused (each report is collected at most once).
    let wider = json!({ "type": 1, "batch_interval_start": time - 3600, "batch_interval_duration": 7200 });
    match r.collect(&task, wider, Duration::from_secs(20)).await {
        Err(e) => Ok(format!("late upload: {late:?}; overlap refused: {e}")),
        Ok(a) => Err(format!("an overlapping query was answered: {a}")),
    }
}

async fn replay(r: &Runner) -> Result<String, String> {
    let time = (now() / 3600 - 1) * 3600;
    let task = r.add_task(VdafConfig::Prio3Count, 1, 5, 3600).await?;
    for _ in 0..5 {
        r.upload(&task, json!("1"), Some(time + 5)).await?;
    }
    // A canned report made by the runner, sent to the leader twice.
    let client = duet_client::upload::Client::new(r.parameters(&task), r.http.clone()).map_err(|e| e.to_string())?;
    let report = client
        .prepare_report(&duet_common::vdaf::Measurement::Count(true), time + 5)
        .await
        .map_err(|e| e.to_string())?;
    let body = UploadRequest { reports: vec![report.clone()] }.get_encoded().unwrap();
    let url = join(&task.leader_endpoint, &format!("tasks/{}/reports", task.task_id));
    let mut answers = Vec::new();
    for _ in 0..2 {
        let resp = r
            .http
            .post(&url)
            .header("content-type", duet_common::media_type::UPLOAD_REQ)
            .body(body.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        let errors: Vec<ReportUploadStatus> = if bytes.is_empty() {
            vec![]
        } else {
            UploadErrors::get_decoded(&bytes).map_err(|e| e.to_string())?.status
        };
        answers.push((status.as_u16(), errors));
    }
    let answer = r.collect(&task, hour(time), COLLECT).await?;
    check(answer["report_count"] == json!(6), format!("report_count {} != 6", answer["report_count"]))?;
    check(answer["result"] == json!("6"), format!("result {} != 6", answer["result"]))?;
    Ok(format!("counted once; second upload answered {:?}", answers[1]))
}
