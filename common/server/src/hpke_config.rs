//! `GET /hpke_config` (DAP-18 "HPKE Configuration Request"), served alike by both aggregators.

use super::http::{dap_response, HttpResult};
use super::storage::Store;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use duet_common::media_type;
use duet_common::messages::HpkeConfigList;
use duet_common::problem::DapError;
use duet_common::Encode;

/// How long clients may cache the list. Keys are kept at least twice this long after they stop
/// being advertised, as the spec recommends.
pub const CACHE_MAX_AGE_SECONDS: u64 = 86_400;

pub async fn hpke_config(State(datastore): State<Store>) -> HttpResult<Response> {
    let keys = datastore.hpke_keypairs().await?;
    // Pending and retired keys are not advertised; clients see active keys, newest first.
    let configs = keys
        .iter()
        .filter(|(_, state)| *state == super::storage::HpkeKeyState::Active)
        .map(|(kp, _)| kp.config().clone())
        .collect();
    let body = HpkeConfigList(configs).get_encoded().map_err(|e| DapError::Internal(e.to_string()))?;
    let mut resp = dap_response(StatusCode::OK, media_type::HPKE_CONFIG_LIST, body);
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&format!("max-age={CACHE_MAX_AGE_SECONDS}"))
            .unwrap_or(HeaderValue::from_static("max-age=3600")),
    );
    Ok(resp)
}
