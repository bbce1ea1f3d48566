//! The aggregators' admin API as the `duet` CLI uses it: provisioning a task on the leader and
//! the helper (and taking it back from the leader when the helper refuses it), and rotating an
//! aggregator's HPKE keys.
//!
//! Requests carry the operator's admin token and the task's secrets (verify key, tokens); none
//! of them is logged or put into an error.

use crate::error::{ClientError, Result};
use crate::http::{self, RetryPolicy};
use duet_common::auth::{AuthenticationToken, TokenScheme};
use duet_common::hpke::HpkeKeypair;
use duet_common::keys::{HpkeKeyInfo, HpkeKeyList, NewHpkeKey};
use duet_common::messages::{HpkeConfigId, TaskId};
use duet_common::task::{hpke_config_to_b64, AggregatorTaskRequest, CollectorCredentials, TaskParameters};
use duet_common::vdaf::VerifyKey;
use std::time::Duration;
use url::Url;

/// An admin API client for one aggregator.
#[derive(Debug, Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    endpoint: Url,
    token: AuthenticationToken,
    policy: RetryPolicy,
}

impl AdminClient {
    /// `endpoint` is the aggregator's base URL (with or without the trailing slash).
    pub fn new(http: reqwest::Client, endpoint: &str, token: AuthenticationToken) -> Result<Self> {
        Ok(Self {
            http,
            endpoint: http::endpoint_base(endpoint)?,
            token,
            policy: RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(500),
                max_backoff: Duration::from_secs(5),
            },
        })
    }

    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// `POST {endpoint}admin/tasks` with the task as JSON.
    pub async fn create_task(&self, request: &AggregatorTaskRequest) -> Result<()> {
        let url = http::join(&self.endpoint, "admin/tasks")?;
        let context = format!("POST {url}");
        let (name, value) = self.token.header(TokenScheme::Bearer);
        let resp = http::send_with_retry(&self.policy, &context, || {
            self.http.post(url.clone()).header(name.clone(), value.clone()).json(request)
        })
        .await?;
        if !resp.status().is_success() {
            return Err(http::status_error(resp, &context).await);
        }
        tracing::info!(endpoint = %self.endpoint, task_id = %request.parameters.task_id, "task provisioned");
        Ok(())
    }

    /// `GET {endpoint}admin/hpke_keys`.
    pub async fn hpke_keys(&self) -> Result<HpkeKeyList> {
        self.key_call(reqwest::Method::GET, "admin/hpke_keys", None, true).await
    }

    /// `POST {endpoint}admin/hpke_keys`: a new pending key. Sent once: a retry after a lost
    /// answer could add a second key.
    pub async fn add_hpke_key(&self, key: &NewHpkeKey) -> Result<HpkeKeyInfo> {
        let body = serde_json::to_vec(key).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.key_call(reqwest::Method::POST, "admin/hpke_keys", Some(body), false).await
    }

    /// `POST {endpoint}admin/hpke_keys/{id}/activate`: advertise the key.
    pub async fn activate_hpke_key(&self, id: u8) -> Result<HpkeKeyInfo> {
        self.key_call(reqwest::Method::POST, &format!("admin/hpke_keys/{id}/activate"), None, true).await
    }

    /// `POST {endpoint}admin/hpke_keys/{id}/retire`: stop advertising the key, keep accepting it.
    pub async fn retire_hpke_key(&self, id: u8) -> Result<HpkeKeyInfo> {
        self.key_call(reqwest::Method::POST, &format!("admin/hpke_keys/{id}/retire"), None, true).await
    }

    /// `DELETE {endpoint}admin/hpke_keys/{id}`; `force` drops a recently retired key.
    pub async fn delete_hpke_key(&self, id: u8, force: bool) -> Result<()> {
        self.delete(&format!("admin/hpke_keys/{id}{}", if force { "?force=true" } else { "" })).await
    }

    /// One admin request about keys, answered with JSON. Every one of them but adding a key is
    /// idempotent, so only those are retried.
    async fn key_call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        retry: bool,
    ) -> Result<T> {
        let url = http::join(&self.endpoint, path)?;
        let context = format!("{method} {url}");
        let (name, value) = self.token.header(TokenScheme::Bearer);
        let policy = if retry { self.policy } else { RetryPolicy { max_attempts: 1, ..self.policy } };
        let resp = http::send_with_retry(&policy, &context, || {
            let req = self.http.request(method.clone(), url.clone()).header(name.clone(), value.clone());
            match &body {
                Some(b) => req.header(reqwest::header::CONTENT_TYPE, "application/json").body(b.clone()),
                None => req,
            }
        })
        .await?;
        if !resp.status().is_success() {
            return Err(http::status_error(resp, &context).await);
        }
        let bytes = http::read_body(resp, 1 << 20, &context).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(format!("{context}: unexpected answer: {e}")))
    }

    /// `DELETE {endpoint}admin/tasks/{task-id}`.
    pub async fn delete_task(&self, task_id: &TaskId) -> Result<()> {
        self.delete(&format!("admin/tasks/{task_id}")).await
    }

    /// A DELETE under the endpoint (idempotent, so retried).
    async fn delete(&self, path: &str) -> Result<()> {
        let url = http::join(&self.endpoint, path)?;
        let context = format!("DELETE {url}");
        let (name, value) = self.token.header(TokenScheme::Bearer);
        let resp = http::send_with_retry(&self.policy, &context, || {
            self.http.delete(url.clone()).header(name.clone(), value.clone())
        })
        .await?;
        if !resp.status().is_success() {
            return Err(http::status_error(resp, &context).await);
        }
        Ok(())
    }
}

/// Everything a new task needs: what to provision on each aggregator and what the collector
/// keeps. The secrets (verify key, tokens, the collector's key pair) are fresh and random.
#[derive(Clone)]
pub struct NewTask {
    pub leader_request: AggregatorTaskRequest,
    pub helper_request: AggregatorTaskRequest,
    pub credentials: CollectorCredentials,
}

impl NewTask {
    pub fn generate(params: TaskParameters, max_batch_size: Option<u64>) -> Self {
        let collector_keypair = HpkeKeypair::generate_default(HpkeConfigId(0));
        let collector_token = AuthenticationToken::random();
        let leader_request = AggregatorTaskRequest {
            parameters: params.clone(),
            vdaf_verify_key: VerifyKey::random().to_base64(),
            aggregator_auth_token: AuthenticationToken::random().expose().to_string(),
            collector_auth_token: Some(collector_token.expose().to_string()),
            collector_hpke_config: hpke_config_to_b64(collector_keypair.config()),
            max_batch_size,
            report_expiry_age: None,
        };
        // The helper never hears from the collector, so it gets no collector token.
        let helper_request = AggregatorTaskRequest { collector_auth_token: None, ..leader_request.clone() };
        let credentials = CollectorCredentials {
            task: params,
            collector_auth_token: collector_token.expose().to_string(),
            hpke_config: hpke_config_to_b64(collector_keypair.config()),
            hpke_private_key: collector_keypair.private_key().to_base64(),
        };
        Self { leader_request, helper_request, credentials }
    }

    /// The task's report expiry age in seconds, on both aggregators (DAP-18 "Reducing Storage
    /// Requirements"): reports older are refused, and the servers delete them. At least the
    /// task's time precision; `None` leaves each server's default.
    pub fn with_report_expiry_age(mut self, seconds: Option<u64>) -> Self {
        self.leader_request.report_expiry_age = seconds;
        self.helper_request.report_expiry_age = seconds;
        self
    }
}

/// Provisions the task on the leader, then on the helper; if the helper fails, deletes the task
/// from the leader again so that no half-provisioned task remains. The error says whether that
/// clean-up worked.
pub async fn provision_task(
    leader: &AdminClient,
    leader_request: &AggregatorTaskRequest,
    helper: &AdminClient,
    helper_request: &AggregatorTaskRequest,
) -> Result<(), ProvisionError> {
    leader.create_task(leader_request).await.map_err(|e| ProvisionError { error: e, rollback: None })?;
    if let Err(error) = helper.create_task(helper_request).await {
        let task_id = leader_request.parameters.task_id;
        let rollback = match leader.delete_task(&task_id).await {
            Ok(()) => Rollback::Done,
            Err(e) => Rollback::Failed(e),
        };
        return Err(ProvisionError { error, rollback: Some((task_id, rollback)) });
    }
    Ok(())
}

/// What became of the leader's copy of a task the helper refused.
#[derive(Debug)]
pub enum Rollback {
    Done,
    Failed(ClientError),
}

/// A failed provisioning, with the clean-up that followed it if any.
#[derive(Debug)]
pub struct ProvisionError {
    pub error: ClientError,
    pub rollback: Option<(TaskId, Rollback)>,
}

impl std::fmt::Display for ProvisionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.rollback {
            None => write!(f, "{}", self.error),
            Some((_, Rollback::Done)) => {
                write!(f, "{}; the task was deleted from the leader again", self.error)
            }
            Some((task_id, Rollback::Failed(e))) => write!(
                f,
                "{}; deleting task {task_id} from the leader failed too ({e}): delete it there by hand",
                self.error
            ),
        }
    }
}

impl std::error::Error for ProvisionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provision_errors_tell_what_happened_to_the_leader() {
        let task_id = TaskId::from_bytes([0; 32]);
        let refused =
            || ClientError::Status { context: "POST https://h/admin/tasks".into(), status: 400, problem: None };
        let done = ProvisionError { error: refused(), rollback: Some((task_id, Rollback::Done)) };
        assert_eq!(
            done.to_string(),
            "POST https://h/admin/tasks: HTTP 400 Bad Request; the task was deleted from the leader again"
        );
        let failed = ProvisionError {
            error: refused(),
            rollback: Some((
                task_id,
                Rollback::Failed(ClientError::Status { context: "DELETE x".into(), status: 500, problem: None }),
            )),
        };
        assert_eq!(
            failed.to_string(),
            "POST https://h/admin/tasks: HTTP 400 Bad Request; deleting task AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA \
             from the leader failed too (DELETE x: HTTP 500 Internal Server Error): delete it there by hand"
        );
    }

    #[test]
    fn admin_client_does_not_print_its_token() {
        let token = AuthenticationToken::new("admin-secret-123").unwrap();
        let c = AdminClient::new(reqwest::Client::new(), "https://leader.example/x", token).unwrap();
        assert_eq!(c.endpoint().as_str(), "https://leader.example/x/");
        assert!(!format!("{c:?}").contains("admin-secret-123"));
    }
}
