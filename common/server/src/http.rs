//! HTTP glue for axum: DAP errors as problem-document responses, request bodies checked for
//! their media type, and bearer-token checks.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use duet_common::auth::{AuthenticationToken, TokenHash};
use duet_common::media_type;
use duet_common::messages::TaskId;
use duet_common::problem::DapError;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// An error answered as `application/problem+json`.
#[derive(Debug)]
pub struct ErrorResponse(pub DapError);

impl From<DapError> for ErrorResponse {
    fn from(e: DapError) -> Self {
        ErrorResponse(e)
    }
}

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        let (status, doc) = self.0.problem_document();
        match &self.0 {
            DapError::Internal(detail) => tracing::error!(%detail, "internal error"),
            DapError::Unavailable(detail) => tracing::warn!(%detail, "unavailable"),
            other => tracing::debug!(error = %other, "request refused"),
        }
        let body = serde_json::to_vec(&doc).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type::PROBLEM_JSON));
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        resp
    }
}

pub type HttpResult<T> = Result<T, ErrorResponse>;

/// Checks the request's `Content-Type` against the DAP media type it must carry.
pub fn require_media_type(headers: &HeaderMap, expected: &'static str) -> Result<(), DapError> {
    let ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| media_type::matches(v, expected));
    if ok {
        Ok(())
    } else {
        Err(DapError::UnsupportedMediaType { expected })
    }
}

/// Checks that the request presents `expected` (in either header form), in constant time.
pub fn require_token(headers: &HeaderMap, expected: &TokenHash, task_id: Option<TaskId>) -> Result<(), DapError> {
    let what = task_id.map(|t| format!(" for task {t}")).unwrap_or_default();
    match AuthenticationToken::from_headers(headers) {
        Ok(Some(token)) if expected.matches(&token) => Ok(()),
        Ok(Some(_)) => Err(DapError::Unauthorized(format!("wrong token{what}"))),
        Ok(None) => Err(DapError::Unauthorized(format!("missing token{what}"))),
        Err(e) => Err(DapError::Unauthorized(e.to_string())),
    }
}

/// Request bodies this process holds in memory at once, in KiB, when limited
/// ([`limit_bodies_in_memory`]).
static BODY_ROOM: std::sync::OnceLock<(Arc<Semaphore>, u32)> = std::sync::OnceLock::new();

/// How long a request waits for room for its body before it is answered 503.
const BODY_ROOM_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Bounds the request bodies this process holds in memory at once to `bytes` (set once, at
/// start-up): without it, the bound is only `max_body_bytes` × connections × streams.
pub fn limit_bodies_in_memory(bytes: usize) {
    // Counted in KiB, as many as one request may take at once (`acquire_many` takes a `u32`).
    let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).max(1);
    let _ = BODY_ROOM.set((Arc::new(Semaphore::new(kib as usize)), kib));
}

/// A request body read into memory, and its room among the bodies held at once, given back
/// when it is dropped.
pub struct RequestBody {
    bytes: axum::body::Bytes,
    _room: Option<OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for RequestBody {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl std::ops::Deref for RequestBody {
    type Target = axum::body::Bytes;
    fn deref(&self) -> &axum::body::Bytes {
        &self.bytes
    }
}

/// Reads a request's body, at most `limit` bytes (413 beyond). Handlers of authenticated
/// requests take the body unread and call this once the token is checked, so that a client
/// without the token cannot make the server read (and hold) a large body first. With bodies in
/// memory limited, the body waits for room for its announced length (the whole `limit` when
/// it announces none) first, and is answered 503 if none comes within a few seconds.
pub async fn read_body(body: axum::body::Body, limit: usize) -> Result<RequestBody, DapError> {
    use http_body::Body as _;
    let hint = body.size_hint();
    if hint.lower() > limit as u64 {
        return Err(DapError::PayloadTooLarge);
    }
    let room = match BODY_ROOM.get() {
        None => None,
        Some((room, total)) => {
            let announced = hint.upper().unwrap_or(limit as u64).min(limit as u64);
            let kib = u32::try_from(announced.div_ceil(1024)).unwrap_or(u32::MAX).min(*total);
            let waited = tokio::time::timeout(BODY_ROOM_WAIT, room.clone().acquire_many_owned(kib)).await;
            match waited {
                Ok(Ok(permit)) => Some(permit),
                _ => {
                    crate::metrics::bodies_refused_for_memory();
                    return Err(DapError::Unavailable("request bodies fill the memory set aside for them".into()));
                }
            }
        }
    };
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let e = e.into_inner();
        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            DapError::PayloadTooLarge
        } else {
            DapError::BadRequest(format!("could not read the request body: {e}"))
        }
    })?;
    Ok(RequestBody { bytes, _room: room })
}

/// A DAP message body with its media type.
pub fn dap_response(status: StatusCode, media: &'static str, body: Vec<u8>) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    resp
}

/// Parses a task ID path segment; a malformed one is `invalidMessage` (it cannot name a task).
pub fn parse_task_id(s: &str) -> Result<TaskId, DapError> {
    s.parse().map_err(|_| DapError::invalid_message(None, format!("{s:?} is not a task ID")))
}

impl From<super::storage::StoreError> for ErrorResponse {
    fn from(e: super::storage::StoreError) -> Self {
        ErrorResponse(e.into())
    }
}

/// Turns the plain-text errors axum produces by itself (405 for a wrong method, 413 for a body
/// over the limit, 400/422 for unreadable requests) into problem documents, so that every error
/// a client sees has the same shape. Use with `axum::middleware::map_response`.
pub async fn problem_for_plain_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| media_type::matches(v, media_type::PROBLEM_JSON));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return resp;
    }
    let error = match status {
        StatusCode::METHOD_NOT_ALLOWED => DapError::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => DapError::PayloadTooLarge,
        StatusCode::NOT_FOUND => DapError::NotFound("no such resource".into()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => DapError::UnsupportedMediaType { expected: "a DAP media type" },
        s if s.is_server_error() => DapError::Internal(format!("{s} without a problem document")),
        _ => DapError::BadRequest(status.canonical_reason().unwrap_or("bad request").into()),
    };
    let mut out = ErrorResponse(error).into_response();
    // Keep the original status (e.g. 422) even where the mapping is coarser.
    *out.status_mut() = status;
    out
}

/// The layers every duet server's routes sit behind: the body limit, a last-resort catch of
/// panics (a logged 500), a request timeout (408 after 300 s, body included, so a slow client
/// cannot hold a connection and its buffers forever) and, outermost, problem documents for
/// every plain error (even a caught panic's).
pub fn guarded(router: axum::Router, max_body_bytes: usize) -> axum::Router {
    router
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            std::time::Duration::from_secs(300),
        ))
        .layer(axum::middleware::map_response(problem_for_plain_errors))
        .layer(axum::middleware::from_fn(super::metrics::track_requests))
}
