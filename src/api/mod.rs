//! HTTP API: Loki's routes, request decoding and response encoding.
//!
//! The only module that knows HTTP. It maps every error kind to a status in one place
//! ([`error::ApiError`]). This file owns the router and the small operational endpoints
//! (`/ready`, `/metrics`, `/config`, `/loki/api/v1/status/buildinfo`, `/flush`, the 404
//! fallback), the tenant of a request (`X-Scope-OrgID`, or `fake` when `auth_enabled` is
//! false) and per-route request metrics. Push decoding lives in [`push`]; query routes
//! live in `query` and are merged into [`router`].
//!
//! It does not own what the endpoints do beyond HTTP: validation is the distributor's,
//! storing the ingester's, the state and its lifecycle the server's (`crate::server`).

pub mod error;
pub mod params;
pub mod push;
pub mod query;
pub mod tail;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::config::LodeConfig;
use crate::metrics::RequestLabels;
pub use crate::server::AppState;
use crate::tenant::TenantId;
use error::{ApiError, ApiErrorKind};

/// The Loki version reported by `buildinfo`: the API level Lode implements.
pub const LOKI_API_VERSION: &str = "3.7.6";

/// Every route of the server over `state`.
pub fn router(state: AppState) -> Router {
    let push_body_limit = state.config.distributor.max_recv_msg_size.as_usize();
    let push_routes = Router::new()
        .route("/loki/api/v1/push", post(push::push))
        .route("/api/prom/push", post(push::push))
        .layer(DefaultBodyLimit::max(push_body_limit));
    Router::new()
        .merge(push_routes)
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/config", get(config))
        .route("/loki/api/v1/status/buildinfo", get(buildinfo))
        .route("/flush", post(flush))
        .with_state(state.clone())
        .merge(query::routes(query::QueryApi {
            querier: state.querier.clone(),
            auth_enabled: state.config.auth_enabled,
            live: state.ingester.clone(),
        }))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state, track))
}

/// The tenant a request acts for: `X-Scope-OrgID` when `auth_enabled`, else `fake` (the
/// header is then ignored, as in Loki).
pub fn tenant_of(state: &AppState, headers: &HeaderMap) -> Result<TenantId, ApiError> {
    tenant_from(state.config.auth_enabled, headers)
}

/// [`tenant_of`] for handlers that carry only the `auth_enabled` setting.
pub fn tenant_from(auth_enabled: bool, headers: &HeaderMap) -> Result<TenantId, ApiError> {
    if !auth_enabled {
        return Ok(TenantId::default_tenant());
    }
    let id = headers
        .get("x-scope-orgid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim();
    Ok(TenantId::new(id)?)
}

/// Records `lode_request_duration_seconds{route,method,status}`.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    let labels = RequestLabels {
        route,
        method,
        status: response.status().as_u16(),
    };
    state
        .metrics
        .http
        .request_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn not_found() -> ApiError {
    ApiError::page_not_found()
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.shutdown.is_triggered() {
        return ApiError::new(ApiErrorKind::Unavailable, "not ready: shutting down")
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ready\n",
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct ConfigParams {
    mode: Option<String>,
}

/// `GET /config`: the effective configuration; `?mode=defaults` the embedded defaults;
/// `?mode=diffs` only what differs from them.
async fn config(
    State(state): State<AppState>,
    Query(params): Query<ConfigParams>,
) -> Result<Response, ApiError> {
    let text = match params.mode.as_deref() {
        None | Some("") => state.config.to_redacted_yaml(),
        Some("defaults") => LodeConfig::default().to_redacted_yaml(),
        Some("diffs") => config_diffs(&state.config),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown mode {other:?}: use mode=diffs or mode=defaults, or leave it out"
            )))
        }
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

fn config_diffs(config: &LodeConfig) -> String {
    let parse = |c: &LodeConfig| {
        serde_yaml::from_str::<serde_yaml::Value>(&c.to_redacted_yaml())
            .unwrap_or(serde_yaml::Value::Null)
    };
    let diff = yaml_diff(&parse(config), &parse(&LodeConfig::default()))
        .unwrap_or(serde_yaml::Value::Mapping(Default::default()));
    serde_yaml::to_string(&diff).unwrap_or_default()
}

/// The parts of `a` that differ from `b`, keeping `a`'s nesting.
fn yaml_diff(a: &serde_yaml::Value, b: &serde_yaml::Value) -> Option<serde_yaml::Value> {
    match (a, b) {
        (serde_yaml::Value::Mapping(am), serde_yaml::Value::Mapping(bm)) => {
            let mut out = serde_yaml::Mapping::new();
            for (k, av) in am {
                let d = match bm.get(k) {
                    Some(bv) => yaml_diff(av, bv),
                    None => Some(av.clone()),
                };
                if let Some(d) = d {
                    out.insert(k.clone(), d);
                }
            }
            (!out.is_empty()).then_some(serde_yaml::Value::Mapping(out))
        }
        _ if a == b => None,
        _ => Some(a.clone()),
    }
}

/// `GET /loki/api/v1/status/buildinfo`: unwrapped JSON, as Loki serves it.
async fn buildinfo() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "version": LOKI_API_VERSION,
        "revision": concat!("lode-", env!("CARGO_PKG_VERSION")),
        "branch": "lode",
        "buildUser": "lode",
        "buildDate": "",
        "goVersion": "",
    }))
}

/// `POST /flush`: closes and writes every head now.
async fn flush(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    state
        .ingester
        .flush_all()
        .await
        .map_err(|e| ApiError::internal(format!("flush failed: {e}")))?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_diffs_keep_only_changed_keys() {
        let c = LodeConfig::from_yaml("auth_enabled: true\nlimits_config:\n  max_line_size: 1KB\n")
            .unwrap();
        let text = config_diffs(&c);
        assert!(text.contains("auth_enabled: true"), "{text}");
        assert!(text.contains("max_line_size: 1KB"), "{text}");
        assert!(!text.contains("ingestion_rate_mb"), "{text}");
    }
}
