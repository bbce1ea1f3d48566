//! The leader as an HTTP client of the helper: resource creation and continuation requests,
//! answered either at once or asynchronously (an empty body, then `GET` polls paced by
//! `Retry-After`, DAP-18 "Asynchronous Request Handling"), with failures sorted into those worth
//! retrying later and those the helper refused for good.

use duet_common::auth::{AuthenticationToken, TokenScheme};
use duet_common::media_type;
use duet_common::problem::{DapProblemType, ProblemDocument};
use reqwest::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use std::time::{Duration, Instant};

/// Why a request to the helper did not produce its resource.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Worth trying again later: transport failures, 5xx, 429, or a resource still not ready
    /// when we stopped polling. `retry_after` is the helper's hint, if it gave one.
    #[error("helper unavailable: {detail}")]
    Transient { detail: String, retry_after: Option<Duration> },
    /// The helper refused the request; repeating it will not help.
    #[error("helper refused the request ({status}): {detail}")]
    Rejected { status: u16, problem: Option<DapProblemType>, detail: String },
}

/// An HTTP client for the helper.
#[derive(Clone)]
pub struct Peer {
    http: reqwest::Client,
    /// How long one call keeps polling an asynchronous answer before giving up for now.
    max_poll: Duration,
    /// How the aggregator token is presented to the helper.
    scheme: TokenScheme,
}

fn parse_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

impl Peer {
    pub fn new(max_poll: Duration, scheme: TokenScheme, extra_roots_pem: Option<&[u8]>) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = extra_roots_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("helper CA: {e}"))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            // The aggregator token must never follow a redirect elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .user_agent(concat!("duet-leader/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self { http, max_poll, scheme })
    }

    /// Sends `body` (of `media`) to `url` with `method`, then, if the helper defers, polls the
    /// resource until it is ready. Returns the resource's URL and representation.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        token: &AuthenticationToken,
        media: &'static str,
        body: Vec<u8>,
    ) -> Result<(Url, Vec<u8>), PeerError> {
        let (name, value) = token.header(self.scheme);
        let resp = self
            .http
            .request(method, url.clone())
            .header(name.clone(), value.clone())
            .header(CONTENT_TYPE, media)
            .body(body)
            .send()
            .await
            .map_err(|e| PeerError::Transient { detail: format!("{url}: {e}"), retry_after: None })?;
        let (location, mut retry_after, bytes) = Self::read(&url, resp).await?;
        if !bytes.is_empty() {
            return Ok((location.unwrap_or(url), bytes));
        }
        // Deferred: poll the resource (the Location, else the URL we sent to).
        let poll_url = location.unwrap_or(url);
        let deadline = Instant::now() + self.max_poll;
        loop {
            let wait = retry_after.unwrap_or(Duration::from_secs(1)).clamp(Duration::from_millis(100), self.max_poll);
            if Instant::now() + wait > deadline {
                return Err(PeerError::Transient {
                    detail: format!("{poll_url} is still being processed"),
                    retry_after: Some(wait),
                });
            }
            tokio::time::sleep(wait).await;
            let resp = self
                .http
                .get(poll_url.clone())
                .header(name.clone(), value.clone())
                .send()
                .await
                .map_err(|e| PeerError::Transient { detail: format!("{poll_url}: {e}"), retry_after: None })?;
            let (_, ra, bytes) = Self::read(&poll_url, resp).await?;
            if !bytes.is_empty() {
                let mut resource = poll_url.clone();
                // The resource's own URL, without the polling step parameter.
                resource.set_query(None);
                return Ok((resource, bytes));
            }
            retry_after = ra;
        }
    }

    /// The Location (resolved), Retry-After and body of a successful response, or the error.
    async fn read(url: &Url, resp: reqwest::Response) -> Result<(Option<Url>, Option<Duration>, Vec<u8>), PeerError> {
        let status = resp.status();
        let retry_after = parse_retry_after(resp.headers());
        let location = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()).and_then(|loc| url.join(loc).ok());
        let is_problem = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| media_type::matches(v, media_type::PROBLEM_JSON));
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| PeerError::Transient { detail: format!("{url}: reading the body: {e}"), retry_after })?;
        if status.is_success() {
            return Ok((location, retry_after, bytes.to_vec()));
        }
        let problem: Option<ProblemDocument> = if is_problem { serde_json::from_slice(&bytes).ok() } else { None };
        let detail = match &problem {
            Some(p) => p.to_string(),
            None => String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
        };
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT
        {
            return Err(PeerError::Transient { detail: format!("{url}: {status}: {detail}"), retry_after });
        }
        Err(PeerError::Rejected {
            status: status.as_u16(),
            problem: problem.as_ref().and_then(|p| p.dap_type()),
            detail: format!("{url}: {detail}"),
        })
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

    #[test]
    fn endpoint_urls_keep_the_base_path() {
        assert_eq!(
            endpoint_url("https://h.example/dap", "tasks/x/aggregation_jobs").unwrap().as_str(),
            "https://h.example/dap/tasks/x/aggregation_jobs"
        );
        assert_eq!(endpoint_url("http://127.0.0.1:9/", "tasks/y").unwrap().as_str(), "http://127.0.0.1:9/tasks/y");
        assert!(endpoint_url("not a url", "x").is_err());
    }
}
