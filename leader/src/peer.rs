//! The leader as an HTTP client of the helper: resource creation, polls of deferred resources
//! (DAP-18 "Asynchronous Request Handling") and deletion, with every failure sorted into one
//! worth sending the identical request again for ([`PeerError::Transient`], with its reason) and
//! one the helper decided on ([`PeerError::Rejected`]). The callers decide how long to wait.

use duet_common::auth::{AuthenticationToken, TokenScheme};
use duet_common::media_type;
use duet_common::problem::{DapProblemType, ProblemDocument};
use reqwest::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a request to the helper is worth sending again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// No connection could be made: refused, unreachable, or no answer to the handshake.
    Connect,
    /// The helper did not answer within the request timeout.
    Timeout,
    /// The connection broke before the whole answer arrived (reset, closed): the helper may
    /// have committed the request, which is why it is sent again byte for byte.
    Connection,
    /// A 5xx answer.
    ServerError,
    /// 429 Too Many Requests (or 408): the helper sheds load.
    Overloaded,
    /// An answer no DAP helper gives: a 4xx without a problem document (a proxy's page, say), or
    /// a success in another media type.
    NotDap,
    /// The helper deferred the request and the resource is not ready, or it lost the deferred
    /// work (it no longer knows the job it was polled for).
    Deferred,
    /// The leader's own database was unavailable.
    Database,
}

impl RetryReason {
    pub const ALL: [RetryReason; 8] = [
        RetryReason::Connect,
        RetryReason::Timeout,
        RetryReason::Connection,
        RetryReason::ServerError,
        RetryReason::Overloaded,
        RetryReason::NotDap,
        RetryReason::Deferred,
        RetryReason::Database,
    ];

    /// The label of the `reason` in metrics.
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::Connect => "connect",
            RetryReason::Timeout => "timeout",
            RetryReason::Connection => "connection",
            RetryReason::ServerError => "server_error",
            RetryReason::Overloaded => "overloaded",
            RetryReason::NotDap => "not_dap",
            RetryReason::Deferred => "deferred",
            RetryReason::Database => "database",
        }
    }
}

/// Why a request to the helper did not produce its resource.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Worth sending again later. `retry_after` is the helper's hint, if it gave one.
    #[error("helper unavailable ({}): {detail}", reason.label())]
    Transient { reason: RetryReason, detail: String, retry_after: Option<Duration> },
    /// The helper refused the request with a problem document: sending it again will not help.
    /// `problem` is its DAP type, if it has one.
    #[error("helper refused the request ({status}): {detail}")]
    Rejected { status: u16, problem: Option<DapProblemType>, detail: String },
}

impl PeerError {
    fn transient(reason: RetryReason, detail: String) -> Self {
        PeerError::Transient { reason, detail, retry_after: None }
    }
}

/// A [`Peer::fetch`] that failed, and the resource the helper had accepted the request as, if
/// it deferred it first: the helper may then have done the work before the failure.
#[derive(Debug)]
pub struct FetchError {
    pub error: PeerError,
    pub accepted: Option<Url>,
}

/// What the helper answered a request with.
#[derive(Debug)]
pub enum Answer {
    /// The resource's representation, and its `Location` if the helper gave one.
    Ready { body: Vec<u8>, location: Option<Url> },
    /// The helper deferred the request: the resource is to be polled at `poll_url`, after
    /// `retry_after` if the helper said.
    Deferred { poll_url: Url, retry_after: Option<Duration> },
}

/// An HTTP client for the helper.
#[derive(Clone)]
pub struct Peer {
    http: reqwest::Client,
    /// How the aggregator token is presented to the helper.
    scheme: TokenScheme,
    /// The largest answer read from the helper: a bigger one is refused as it arrives, so that
    /// a faulty or hostile helper cannot make the leader buffer without end.
    max_answer_bytes: usize,
    /// What a `Retry-After` date is read against.
    clock: duet_common::clock::SharedClock,
}

/// `Retry-After` in either of its forms (RFC 9110, 10.2.3): delay-seconds, or an HTTP-date,
/// read as the time from `now` until then (none if it has passed).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Sorts a transport failure: which step failed tells whether the helper can have seen the
/// whole request.
fn transport_reason(e: &reqwest::Error) -> RetryReason {
    if e.is_connect() {
        RetryReason::Connect
    } else if e.is_timeout() {
        RetryReason::Timeout
    } else {
        RetryReason::Connection
    }
}

impl Peer {
    /// `timeout` bounds each request, from connecting to the last byte of the answer, and
    /// `max_answer_bytes` each answer's body.
    pub fn new(
        timeout: Duration,
        scheme: TokenScheme,
        extra_roots_pem: Option<&[u8]>,
        max_answer_bytes: usize,
    ) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = extra_roots_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("helper CA: {e}"))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            // The aggregator token must never follow a redirect elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10).min(timeout))
            // Well within the helper's idle deadline (duet's closes idle connections after 60 s),
            // so that a request never goes out on a connection the helper is closing.
            .pool_idle_timeout(Duration::from_secs(30))
            .timeout(timeout)
            .user_agent(concat!("duet-leader/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self { http, scheme, max_answer_bytes, clock: Arc::new(duet_common::clock::SystemClock) })
    }

    /// Reads `Retry-After` dates against `clock` (the store's, so that tests can move it).
    pub fn with_clock(mut self, clock: duet_common::clock::SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Sends `body` (of `media`) to `url` with `method`. The answer is the resource (of media
    /// type `expect`), or the helper's deferral.
    async fn send(
        &self,
        method: Method,
        url: Url,
        token: &AuthenticationToken,
        media: &'static str,
        body: Vec<u8>,
        expect: &'static str,
    ) -> Result<Answer, PeerError> {
        let (name, value) = token.header(self.scheme);
        let request = self.http.request(method, url.clone()).header(name, value).header(CONTENT_TYPE, media).body(body);
        self.exchange(&url, request, expect).await
    }

    /// POSTs `body` (of `media`) to `url` and, if the helper defers it, polls the resource
    /// (paced by its `Retry-After`, between 100 ms and `max_wait`) until it is ready, as long
    /// as that takes; `on_deferred` runs once, at the first deferral. Returns the resource (of
    /// media type `expect`) and its URL, if the helper named it. A poll that finds the job gone
    /// (the helper lost the deferred work) is transient: the identical request starts it again.
    /// A failure after the helper deferred the request names the resource it accepted.
    #[allow(clippy::too_many_arguments)]
    pub async fn fetch<F, Fut>(
        &self,
        url: Url,
        token: &AuthenticationToken,
        media: &'static str,
        body: Vec<u8>,
        expect: &'static str,
        max_wait: Duration,
        on_deferred: F,
    ) -> Result<(Vec<u8>, Option<Url>), FetchError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut answer = self
            .send(Method::POST, url, token, media, body, expect)
            .await
            .map_err(|error| FetchError { error, accepted: None })?;
        let mut on_deferred = Some(on_deferred);
        let mut location = None;
        loop {
            match answer {
                Answer::Ready { body, location: at } => return Ok((body, at.or(location))),
                Answer::Deferred { poll_url, retry_after } => {
                    if let Some(f) = on_deferred.take() {
                        f().await;
                    }
                    let wait =
                        retry_after.unwrap_or(Duration::from_secs(1)).clamp(Duration::from_millis(100), max_wait);
                    tokio::time::sleep(wait).await;
                    location = Some(poll_url.clone());
                    answer = match self.poll(poll_url.clone(), token, expect).await {
                        Ok(answer) => answer,
                        Err(PeerError::Rejected {
                            problem: Some(DapProblemType::UnrecognizedAggregationJob),
                            detail,
                            ..
                        }) => {
                            let error = PeerError::transient(RetryReason::Deferred, detail);
                            return Err(FetchError { error, accepted: None });
                        }
                        Err(error) => return Err(FetchError { error, accepted: Some(poll_url) }),
                    };
                }
            }
        }
    }

    /// Polls a deferred resource (a `GET`).
    async fn poll(&self, url: Url, token: &AuthenticationToken, expect: &'static str) -> Result<Answer, PeerError> {
        let (name, value) = token.header(self.scheme);
        let request = self.http.get(url.clone()).header(name, value);
        self.exchange(&url, request, expect).await
    }

    /// Deletes a resource (DAP-18 "Aggregation Job Abandonment and Deletion").
    pub async fn delete(&self, url: Url, token: &AuthenticationToken) -> Result<(), PeerError> {
        let (name, value) = token.header(self.scheme);
        let request = self.http.delete(url.clone()).header(name, value);
        self.exchange(&url, request, "").await.map(|_| ())
    }

    async fn exchange(
        &self,
        url: &Url,
        request: reqwest::RequestBuilder,
        expect: &'static str,
    ) -> Result<Answer, PeerError> {
        let mut resp =
            request.send().await.map_err(|e| PeerError::transient(transport_reason(&e), format!("{url}: {e}")))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, UNIX_EPOCH + Duration::from_secs(self.clock.now_seconds())));
        let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        // The answer cut off mid-flight is a broken connection, as if it never arrived.
        let mut bytes = Vec::new();
        loop {
            let chunk = resp.chunk().await.map_err(|e| PeerError::Transient {
                reason: RetryReason::Connection,
                detail: format!("{url}: reading the answer: {e}"),
                retry_after,
            })?;
            let Some(chunk) = chunk else { break };
            if bytes.len() + chunk.len() > self.max_answer_bytes {
                return Err(PeerError::Rejected {
                    status: status.as_u16(),
                    problem: None,
                    detail: format!("{url}: the answer is larger than {} bytes", self.max_answer_bytes),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        // Resolved against the request's URL, and only on the helper's own origin: the leader
        // presents its token wherever it polls, so a Location elsewhere would hand it over.
        let location = headers.get(LOCATION).and_then(|v| v.to_str().ok()).and_then(|loc| url.join(loc).ok());
        if let Some(elsewhere) = location.as_ref().filter(|l| l.origin() != url.origin()) {
            return Err(PeerError::Rejected {
                status: status.as_u16(),
                problem: None,
                detail: format!("{url}: Location {elsewhere} is not on the helper's origin"),
            });
        }
        if status.is_success() {
            if bytes.is_empty() {
                if expect.is_empty() {
                    return Ok(Answer::Ready { body: Vec::new(), location });
                }
                // Deferred: poll the Location, else the URL itself.
                return Ok(Answer::Deferred { poll_url: location.unwrap_or_else(|| url.clone()), retry_after });
            }
            if !expect.is_empty() && !content_type.as_deref().is_some_and(|ct| media_type::matches(ct, expect)) {
                return Err(PeerError::Transient {
                    reason: RetryReason::NotDap,
                    detail: format!("{url}: {status} in {content_type:?}, not {expect}"),
                    retry_after,
                });
            }
            return Ok(Answer::Ready { body: bytes.to_vec(), location });
        }
        let is_problem = content_type.as_deref().is_some_and(|v| media_type::matches(v, media_type::PROBLEM_JSON));
        let problem: Option<ProblemDocument> = if is_problem { serde_json::from_slice(&bytes).ok() } else { None };
        let detail = match &problem {
            Some(p) => p.to_string(),
            None => String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
        };
        let reason = if status.is_server_error() {
            Some(RetryReason::ServerError)
        } else if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT {
            Some(RetryReason::Overloaded)
        } else if problem.is_none() {
            // A 4xx that is not a problem document did not come from a DAP helper's decision.
            Some(RetryReason::NotDap)
        } else {
            None
        };
        match reason {
            Some(reason) => {
                Err(PeerError::Transient { reason, detail: format!("{url}: {status}: {detail}"), retry_after })
            }
            None => Err(PeerError::Rejected {
                status: status.as_u16(),
                problem: problem.as_ref().and_then(|p| p.dap_type()),
                detail: format!("{url}: {detail}"),
            }),
        }
    }
}

/// `{endpoint}{path}` where the endpoint is a base URL ending in `/` (it is normalised here).
pub fn endpoint_url(endpoint: &str, path: &str) -> Result<Url, String> {
    let mut base = endpoint.to_string();
    if !base.ends_with('/') {
        base.push('/');
    }
    Url::parse(&base).and_then(|b| b.join(path)).map_err(|e| format!("bad endpoint {endpoint:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A helper of a few routes on loopback; its base URL.
    async fn serve(routes: axum::Router) -> Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, routes).await.unwrap() });
        Url::parse(&format!("http://{addr}/")).unwrap()
    }

    #[tokio::test]
    async fn a_location_off_the_helpers_origin_and_an_oversized_answer_are_refused() {
        use axum::routing::post;
        const RESP: &str = media_type::AGGREGATION_JOB_RESP;
        let routes = axum::Router::new()
            .route(
                "/elsewhere",
                post(|| async { (StatusCode::CREATED, [(LOCATION, "http://elsewhere.example/job")], "") }),
            )
            .route("/big", post(|| async { ([(CONTENT_TYPE, RESP)], vec![0u8; 2048]) }))
            .route("/fine", post(|| async { ([(CONTENT_TYPE, RESP), (LOCATION, "/tasks/t/job")], vec![1u8; 1024]) }));
        let base = serve(routes).await;
        let peer = Peer::new(Duration::from_secs(5), TokenScheme::Bearer, None, 1024).unwrap();
        let token = AuthenticationToken::random();
        let send = |path: &str| {
            let url = base.join(path).unwrap();
            peer.send(Method::POST, url, &token, media_type::AGGREGATION_JOB_INIT_REQ, vec![], RESP)
        };
        match send("elsewhere").await {
            Err(PeerError::Rejected { detail, .. }) => {
                assert!(detail.contains("not on the helper's origin"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        match send("big").await {
            Err(PeerError::Rejected { detail, .. }) => assert!(detail.contains("larger than 1024 bytes"), "{detail}"),
            other => panic!("{other:?}"),
        }
        // At the bound, on the helper's origin: taken.
        match send("fine").await {
            Ok(Answer::Ready { body, location }) => {
                assert_eq!(body, vec![1u8; 1024]);
                assert_eq!(location, Some(base.join("/tasks/t/job").unwrap()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn endpoint_urls_keep_the_base_path() {
        assert_eq!(
            endpoint_url("https://h.example/dap", "tasks/x/aggregation_jobs").unwrap().as_str(),
            "https://h.example/dap/tasks/x/aggregation_jobs"
        );
        assert_eq!(endpoint_url("http://127.0.0.1:9/", "tasks/y").unwrap().as_str(), "http://127.0.0.1:9/tasks/y");
        assert!(endpoint_url("not a url", "x").is_err());
    }

    #[test]
    fn retry_after_in_both_forms() {
        let now = httpdate::parse_http_date("Fri, 04 Dec 2026 17:00:00 GMT").unwrap();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Fri, 04 Dec 2026 17:01:30 GMT", now), Some(Duration::from_secs(90)));
        // A date in the past means at once.
        assert_eq!(parse_retry_after("Fri, 04 Dec 2026 16:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
