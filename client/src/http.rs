//! HTTP plumbing shared by the client and collector SDKs: turning aggregator endpoints into
//! request URLs, resolving `Location`, retrying idempotent requests with backoff and
//! `Retry-After`, reading bounded bodies, and turning error answers into [`ClientError`]s
//! carrying their problem documents.

use crate::error::{ClientError, Result};
use crate::timefmt;
use duet_common::media_type;
use duet_common::problem::ProblemDocument;
use rand::Rng;
use reqwest::header::{HeaderMap, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{RequestBuilder, Response, StatusCode};
use std::time::Duration;
use url::Url;

/// The largest response body we read; DAP messages of realistic tasks are far smaller, and a
/// misbehaving server must not make us allocate without bound.
pub(crate) const MAX_BODY: usize = 64 << 20;
/// Problem documents are short; more than this is not one.
const MAX_PROBLEM_BODY: usize = 64 << 10;

/// An aggregator's base URL, ready for [`Url::join`]: DAP endpoints are prefixes such as
/// `https://example.com/api/dap/`, and without the trailing slash `join` would replace the last
/// path segment instead of appending to it.
pub fn endpoint_base(endpoint: &str) -> Result<Url> {
    let bad = |reason: &str| ClientError::Url { url: endpoint.to_string(), reason: reason.to_string() };
    let mut url = Url::parse(endpoint.trim()).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("only http and https endpoints are supported"));
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(bad("not a base URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("an endpoint cannot have a query or fragment"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// `{endpoint}{relative}` for an endpoint from [`endpoint_base`].
pub fn join(base: &Url, relative: &str) -> Result<Url> {
    base.join(relative.trim_start_matches('/'))
        .map_err(|e| ClientError::Url { url: format!("{base}{relative}"), reason: e.to_string() })
}

/// Resolves a `Location` header value against the leader's base URL. The resolved URL must stay
/// on the leader's origin: the collector's token goes with every request to it.
pub fn resolve_location(base: &Url, location: &str) -> Result<Url> {
    let bad = |reason: &str| ClientError::Url { url: location.to_string(), reason: reason.to_string() };
    let location = location.trim();
    if location.is_empty() {
        return Err(bad("empty Location"));
    }
    let url = base.join(location).map_err(|e| bad(&e.to_string()))?;
    if url.origin() != base.origin() {
        return Err(bad(&format!("Location points away from the leader ({})", base.origin().ascii_serialization())));
    }
    Ok(url)
}

/// How often and how patiently to retry a request that failed for a transient reason.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// Exponential backoff with jitter for the `attempt`-th retry (0-based), so that many
    /// clients failing together do not come back together.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.initial_backoff.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let capped = exp.min(self.max_backoff);
        capped.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// What to wait before the next attempt: the server's `Retry-After` when it gave one (but
    /// never longer than the policy's cap), else the backoff.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(d) => d.min(self.max_backoff),
            None => self.backoff(attempt),
        }
    }
}

/// Statuses worth retrying: the server's fault or load, not the request's.
pub(crate) fn is_transient(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT
}

/// Sends an idempotent request, retrying transport failures and transient statuses. Returns the
/// first non-transient response (success or not) for the caller to interpret, or the last
/// failure once the attempts are used up.
pub(crate) async fn send_with_retry(
    policy: &RetryPolicy,
    context: &str,
    build: impl Fn() -> RequestBuilder,
) -> Result<Response> {
    let attempts = policy.max_attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last = attempt >= attempts;
        match build().send().await {
            Ok(resp) if is_transient(resp.status()) && !last => {
                let delay = policy.delay(attempt - 1, retry_after(resp.headers()));
                tracing::debug!(
                    status = resp.status().as_u16(),
                    ?delay,
                    attempt,
                    "{context}: transient status, retrying"
                );
                tokio::time::sleep(delay).await;
            }
            Ok(resp) => return Ok(resp),
            Err(e) if !last => {
                let delay = policy.backoff(attempt - 1);
                tracing::debug!(error = %e, ?delay, attempt, "{context}: request failed, retrying");
                tokio::time::sleep(delay).await;
            }
            // The context already names the URL.
            Err(source) => {
                return Err(ClientError::Http { context: context.to_string(), source: source.without_url() })
            }
        }
    }
}

/// Reads a body of at most `limit` bytes.
pub(crate) async fn read_body(mut resp: Response, limit: usize, context: &str) -> Result<Vec<u8>> {
    if resp.content_length().is_some_and(|len| len > limit as u64) {
        return Err(ClientError::Protocol(format!("{context}: response body larger than {limit} bytes")));
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(ClientError::Protocol(format!("{context}: response body larger than {limit} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            // The context already names the URL.
            Err(source) => {
                return Err(ClientError::Http { context: context.to_string(), source: source.without_url() })
            }
        }
    }
}

/// The error for an unsuccessful answer, with its problem document when it has one. Servers
/// sometimes send problem JSON under a generic media type, so any body that parses as one is
/// taken.
pub(crate) async fn status_error(resp: Response, context: &str) -> ClientError {
    let status = resp.status().as_u16();
    let is_problem = content_type(resp.headers()).is_some_and(|ct| {
        let essence = ct.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case(media_type::PROBLEM_JSON) || essence.eq_ignore_ascii_case("application/json")
    });
    let problem = match read_body(resp, MAX_PROBLEM_BODY, context).await {
        Ok(body) if !body.is_empty() => serde_json::from_slice::<ProblemDocument>(&body)
            .ok()
            .filter(|p| is_problem || p.type_uri != "about:blank" || p.detail.is_some())
            .map(Box::new),
        _ => None,
    };
    ClientError::Status { context: context.to_string(), status, problem }
}

pub(crate) fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok())
}

/// Checks that a non-empty body has the expected DAP media type.
pub(crate) fn expect_media_type(headers: &HeaderMap, expected: &'static str, context: &str) -> Result<()> {
    match content_type(headers) {
        Some(ct) if media_type::matches(ct, expected) => Ok(()),
        other => Err(ClientError::ContentType {
            context: context.to_string(),
            content_type: other.map(str::to_string),
            expected,
        }),
    }
}

/// `Retry-After` as a delay: either delta-seconds or an HTTP-date (RFC 9110, Section 10.2.3).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    parse_retry_after(value, timefmt::now_seconds())
}

pub(crate) fn parse_retry_after(value: &str, now_seconds: u64) -> Option<Duration> {
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = timefmt::parse_http_date(value)?;
    Some(Duration::from_secs(at.saturating_sub(now_seconds)))
}

/// How long a response may be cached per `Cache-Control` (RFC 9111): `max-age` less any `Age`,
/// zero for `no-store`/`no-cache`, `None` when the server says nothing.
pub(crate) fn cache_lifetime(headers: &HeaderMap) -> Option<Duration> {
    let mut max_age: Option<u64> = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let directive = directive.trim();
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (directive, None),
            };
            if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
                return Some(Duration::ZERO);
            }
            if name.eq_ignore_ascii_case("max-age") {
                // An unparsable max-age makes the response stale (RFC 9111, Section 4.2.1).
                max_age = Some(arg.and_then(|a| a.parse().ok()).unwrap_or(0));
            }
        }
    }
    let age = headers
        .get(reqwest::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    max_age.map(|m| Duration::from_secs(m.saturating_sub(age)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn endpoints_join_with_or_without_trailing_slash() {
        let task = "8BY0RzZMzxvA46_8ymhzycOB9krN-QIGYvg_RsByGec";
        for endpoint in
            ["https://example.com/api/dap", "https://example.com/api/dap/", " https://example.com/api/dap/ "]
        {
            let base = endpoint_base(endpoint).unwrap();
            assert_eq!(base.as_str(), "https://example.com/api/dap/");
            assert_eq!(join(&base, "hpke_config").unwrap().as_str(), "https://example.com/api/dap/hpke_config");
            assert_eq!(
                join(&base, &format!("tasks/{task}/reports")).unwrap().as_str(),
                format!("https://example.com/api/dap/tasks/{task}/reports")
            );
        }
        let root = endpoint_base("http://127.0.0.1:8080").unwrap();
        assert_eq!(join(&root, "hpke_config").unwrap().as_str(), "http://127.0.0.1:8080/hpke_config");
        // A stray leading slash must not escape the endpoint's path prefix.
        let base = endpoint_base("https://example.com/leader/").unwrap();
        assert_eq!(join(&base, "/hpke_config").unwrap().as_str(), "https://example.com/leader/hpke_config");
        for bad in ["ftp://example.com/", "not a url", "https://example.com/?x=1", "mailto:a@b"] {
            assert!(matches!(endpoint_base(bad), Err(ClientError::Url { .. })), "{bad} accepted");
        }
    }

    #[test]
    fn location_relative_and_absolute() {
        let base = endpoint_base("https://example.com/leader/").unwrap();
        let job = "tasks/T/collection_jobs/J";
        assert_eq!(
            resolve_location(&base, "/leader/tasks/T/collection_jobs/J").unwrap().as_str(),
            "https://example.com/leader/tasks/T/collection_jobs/J"
        );
        assert_eq!(
            resolve_location(&base, job).unwrap().as_str(),
            "https://example.com/leader/tasks/T/collection_jobs/J"
        );
        assert_eq!(
            resolve_location(&base, "https://example.com/leader/tasks/T/collection_jobs/J").unwrap().as_str(),
            "https://example.com/leader/tasks/T/collection_jobs/J"
        );
        // Another origin would receive the collector's token: refused.
        for away in
            ["https://evil.example/tasks/T/collection_jobs/J", "//evil.example/x", "http://example.com/leader/x"]
        {
            assert!(matches!(resolve_location(&base, away), Err(ClientError::Url { .. })), "{away} accepted");
        }
        assert!(resolve_location(&base, "  ").is_err());
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("120", 0), Some(Duration::from_secs(120)));
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example date).
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777 - 30), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777 + 5), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", 0), None);
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static(" 7 "));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
    }

    #[test]
    fn cache_control_lifetimes() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            h
        };
        assert_eq!(cache_lifetime(&headers(&[])), None);
        assert_eq!(cache_lifetime(&headers(&[("cache-control", "max-age=86400")])), Some(Duration::from_secs(86400)));
        assert_eq!(
            cache_lifetime(&headers(&[("cache-control", "public, Max-Age=\"60\""), ("age", "10")])),
            Some(Duration::from_secs(50))
        );
        assert_eq!(cache_lifetime(&headers(&[("cache-control", "max-age=60, no-cache")])), Some(Duration::ZERO));
        assert_eq!(cache_lifetime(&headers(&[("cache-control", "max-age=soon")])), Some(Duration::ZERO));
        assert_eq!(cache_lifetime(&headers(&[("cache-control", "public")])), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        };
        for attempt in 0..40 {
            let d = p.backoff(attempt);
            let full = Duration::from_millis(100).saturating_mul(1 << attempt.min(20)).min(Duration::from_secs(2));
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?} vs {full:?}");
        }
        assert_eq!(p.delay(0, Some(Duration::from_secs(1))), Duration::from_secs(1));
        assert_eq!(p.delay(0, Some(Duration::from_secs(3600))), Duration::from_secs(2));
        assert!(is_transient(StatusCode::SERVICE_UNAVAILABLE));
        assert!(is_transient(StatusCode::TOO_MANY_REQUESTS));
        assert!(!is_transient(StatusCode::BAD_REQUEST));
        assert!(!is_transient(StatusCode::NOT_FOUND));
    }
}
