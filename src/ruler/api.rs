//! The ruler's HTTP APIs, as Loki serves them and Grafana calls them.
//!
//! Owns the config API (`/loki/api/v1/rules…` and its alias `/api/prom/rules…`: list,
//! get, set and delete groups as YAML, with the status codes and 404 texts Grafana and
//! lokitool rely on) and the Prometheus-compatible status API
//! (`/prometheus/api/v1/rules`, `/prometheus/api/v1/alerts`, JSON). Every handler acts
//! for one tenant (`X-Scope-OrgID`, or `fake` when auth is off). It does not own the
//! server's router or its other routes: [`routes`] returns a router the server merges.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::alerting::{Alert, AlertState};
use super::group::{GroupRuntime, RuleKind};
use super::manager::Ruler;
use super::rulefmt::{parse_api_group, to_yaml, RuleGroup};
use super::store::StoreError;
use super::template::go_e;
use crate::tenant::TenantError;
use crate::TenantId;

/// State of the ruler routes.
#[derive(Clone, Debug)]
pub struct RulerApi {
    pub ruler: Ruler,
    /// When false every request acts as tenant `fake`, as in Loki.
    pub auth_enabled: bool,
}

/// The ruler's routes, ready to `merge` into the server's router.
pub fn routes<S: Clone + Send + Sync + 'static>(api: RulerApi) -> Router<S> {
    let mut router = Router::new()
        .route("/prometheus/api/v1/rules", get(prometheus_rules))
        .route("/prometheus/api/v1/alerts", get(prometheus_alerts));
    for prefix in ["/loki/api/v1/rules", "/api/prom/rules"] {
        router = router
            .route(prefix, get(list_rules))
            .route(
                &format!("{prefix}/{{namespace}}"),
                get(get_namespace).post(set_group).delete(delete_namespace),
            )
            .route(
                &format!("{prefix}/{{namespace}}/{{group}}"),
                get(get_group).delete(delete_group),
            );
    }
    router.with_state(api)
}

/// Every way a ruler request fails, mapped to a status in one place.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Tenant(#[from] TenantError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unable to decode rule group: {0}")]
    Body(String),
    #[error("{0}")]
    BadParam(String),
    #[error("no rule groups found")]
    NoGroups,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Tenant(_) => StatusCode::UNAUTHORIZED,
            ApiError::Store(StoreError::NamespaceNotFound | StoreError::GroupNotFound)
            | ApiError::NoGroups => StatusCode::NOT_FOUND,
            ApiError::Store(
                StoreError::Format(_)
                | StoreError::InvalidName { .. }
                | StoreError::TooManyGroups { .. }
                | StoreError::TooManyRules { .. },
            )
            | ApiError::Body(_)
            | ApiError::BadParam(_) => StatusCode::BAD_REQUEST,
            ApiError::Store(StoreError::Io { .. } | StoreError::Serialize(_))
            | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Config-API errors are plain text, as Loki's (Grafana shows them raw).
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status(),
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.to_string(),
        )
            .into_response()
    }
}

/// Status-API errors are Prometheus JSON envelopes.
struct PromError(ApiError);

impl IntoResponse for PromError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let error_type = if status.is_server_error() {
            "server_error"
        } else {
            "bad_data"
        };
        let body = json!({"status": "error", "data": null, "errorType": error_type, "error": self.0.to_string()});
        (status, axum::Json(body)).into_response()
    }
}

fn tenant(api: &RulerApi, headers: &HeaderMap) -> Result<TenantId, ApiError> {
    if !api.auth_enabled {
        return Ok(TenantId::default_tenant());
    }
    let id = headers
        .get("X-Scope-OrgID")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Ok(TenantId::new(id.trim())?)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from)
}

fn yaml_response<T: serde::Serialize>(value: &T) -> Result<Response, ApiError> {
    let text = to_yaml(value).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/yaml")],
        text,
    )
        .into_response())
}

fn accepted() -> Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"status": "success", "data": null, "errorType": "", "error": ""})),
    )
        .into_response()
}

/// `?labels=k:v,k2:v2`: keep only rules whose static labels include every pair.
fn filter_by_labels(
    mut namespaces: BTreeMap<String, Vec<RuleGroup>>,
    params: &[(String, String)],
) -> BTreeMap<String, Vec<RuleGroup>> {
    let wanted: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k == "labels")
        .flat_map(|(_, v)| v.split(','))
        .filter_map(|pair| pair.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    if wanted.is_empty() {
        return namespaces;
    }
    for groups in namespaces.values_mut() {
        for group in groups.iter_mut() {
            group.rules.retain(|r| {
                wanted
                    .iter()
                    .all(|(k, v)| r.labels.get(k).is_some_and(|have| have == v))
            });
        }
        groups.retain(|g| !g.rules.is_empty());
    }
    namespaces.retain(|_, groups| !groups.is_empty());
    namespaces
}

async fn list_rules(
    State(api): State<RulerApi>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let tenant = tenant(&api, &headers)?;
    let store = api.ruler.store().clone();
    let all = blocking(move || store.list(&tenant)).await?;
    let all = filter_by_labels(all, &params);
    if all.is_empty() {
        return Err(ApiError::NoGroups);
    }
    yaml_response(&all)
}

async fn get_namespace(
    State(api): State<RulerApi>,
    headers: HeaderMap,
    Path(namespace): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let tenant = tenant(&api, &headers)?;
    let store = api.ruler.store().clone();
    let ns = namespace.clone();
    let groups = match blocking(move || store.get_namespace(&tenant, &ns)).await {
        Err(ApiError::Store(StoreError::NamespaceNotFound)) => return Err(ApiError::NoGroups),
        other => other?,
    };
    let filtered = filter_by_labels(BTreeMap::from([(namespace, groups)]), &params);
    if filtered.is_empty() {
        return Err(ApiError::NoGroups);
    }
    yaml_response(&filtered)
}

async fn get_group(
    State(api): State<RulerApi>,
    headers: HeaderMap,
    Path((namespace, group)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let tenant = tenant(&api, &headers)?;
    let store = api.ruler.store().clone();
    let found = blocking(move || store.get_group(&tenant, &namespace, &group)).await?;
    yaml_response(&found)
}

async fn set_group(
    State(api): State<RulerApi>,
    headers: HeaderMap,
    Path(namespace): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tenant = tenant(&api, &headers)?;
    let text = std::str::from_utf8(&body).map_err(|e| ApiError::Body(e.to_string()))?;
    // Grafana sends no reliable Content-Type; YAML parsing also accepts JSON.
    let group = parse_api_group(&namespace, text).map_err(|e| match e {
        super::rulefmt::RuleFormatError::Yaml { message, .. } => ApiError::Body(message),
        invalid => ApiError::Store(StoreError::Format(invalid)),
    })?;
    let store = api.ruler.store().clone();
    let limits = api.ruler.store_limits();
    blocking(move || store.set_group(&tenant, &namespace, group, limits)).await?;
    resync(&api.ruler).await;
    Ok(accepted())
}

async fn delete_namespace(
    State(api): State<RulerApi>,
    headers: HeaderMap,
    Path(namespace): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = tenant(&api, &headers)?;
    let store = api.ruler.store().clone();
    blocking(move || store.delete_namespace(&tenant, &namespace)).await?;
    resync(&api.ruler).await;
    Ok(accepted())
}

async fn delete_group(
    State(api): State<RulerApi>,
    headers: HeaderMap,
    Path((namespace, group)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let tenant = tenant(&api, &headers)?;
    let store = api.ruler.store().clone();
    blocking(move || store.delete_group(&tenant, &namespace, &group)).await?;
    resync(&api.ruler).await;
    Ok(accepted())
}

/// Applies a config change at once so the status API reflects it in the next call.
async fn resync(ruler: &Ruler) {
    if let Err(e) = ruler.sync().await {
        tracing::error!("reloading rules after an API change failed: {e}");
    }
}

/// Go's zero time for "never", else RFC 3339 with nanoseconds.
fn rfc3339_nanos(ms: Option<i64>) -> String {
    match ms.and_then(DateTime::<Utc>::from_timestamp_millis) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => "0001-01-01T00:00:00Z".to_string(),
    }
}

fn alert_json(alert: &Alert) -> Value {
    let mut v = json!({
        "labels": alert.labels,
        "annotations": alert.annotations,
        "state": alert.state.as_str(),
        "activeAt": rfc3339_nanos(Some(alert.active_at_ms)),
        "value": go_e(alert.value),
    });
    if let Some(since) = alert.keep_firing_since_ms {
        v["keepFiringSince"] = Value::String(rfc3339_nanos(Some(since)));
    }
    v
}

fn shown(alert: &Alert) -> bool {
    alert.state != AlertState::Inactive
}

/// Which rules the caller asked for: Loki's plain and Prometheus' `[]` spellings both.
struct RuleFilter {
    kind: Option<&'static str>,
    files: Vec<String>,
    groups: Vec<String>,
    names: Vec<String>,
    exclude_alerts: bool,
}

impl RuleFilter {
    fn parse(params: &[(String, String)]) -> Result<RuleFilter, ApiError> {
        let values = |key: &str| -> Vec<String> {
            params
                .iter()
                .filter(|(k, _)| k == key || k.strip_suffix("[]") == Some(key))
                .map(|(_, v)| v.clone())
                .collect()
        };
        let kind = match values("type").first().map(String::as_str) {
            None | Some("") => None,
            Some("alert") => Some("alerting"),
            Some("record") => Some("recording"),
            Some(other) => {
                return Err(ApiError::BadParam(format!(
                    "unsupported rule type {other:?}: use type=alert or type=record"
                )))
            }
        };
        Ok(RuleFilter {
            kind,
            files: values("file"),
            groups: values("rule_group"),
            names: values("rule_name"),
            exclude_alerts: values("exclude_alerts").iter().any(|v| v == "true"),
        })
    }

    fn group_matches(&self, g: &GroupRuntime) -> bool {
        (self.files.is_empty() || self.files.contains(&g.key.namespace))
            && (self.groups.is_empty() || self.groups.contains(&g.key.group))
    }
}

async fn prometheus_rules(
    State(api): State<RulerApi>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, PromError> {
    let tenant = tenant(&api, &headers).map_err(PromError)?;
    let filter = RuleFilter::parse(&params).map_err(PromError)?;
    let mut groups = Vec::new();
    for g in api.ruler.groups(&tenant) {
        if !filter.group_matches(&g) {
            continue;
        }
        let mut rules = Vec::new();
        for entry in &g.rules {
            let desc = entry.desc();
            if !filter.names.is_empty() && !filter.names.iter().any(|n| n == entry.name()) {
                continue;
            }
            let mut rule = json!({
                "name": entry.name(),
                "query": desc.expr.trim(),
                "labels": desc.labels,
                "health": entry.health.as_str(),
                "lastError": entry.last_error.clone().unwrap_or_default(),
                "lastEvaluation": rfc3339_nanos(entry.last_eval_ms),
                "evaluationTime": entry.eval_seconds,
            });
            match &entry.kind {
                RuleKind::Alerting(a) => {
                    if filter.kind == Some("recording") {
                        continue;
                    }
                    rule["type"] = json!("alerting");
                    rule["state"] = json!(a.state().as_str());
                    rule["duration"] = json!(desc.for_.as_secs_f64());
                    rule["keepFiringFor"] = json!(desc.keep_firing_for.as_secs_f64());
                    rule["annotations"] = json!(desc.annotations);
                    let alerts: Vec<Value> = if filter.exclude_alerts {
                        Vec::new()
                    } else {
                        a.alerts().filter(|x| shown(x)).map(alert_json).collect()
                    };
                    rule["alerts"] = Value::Array(alerts);
                }
                RuleKind::Recording(_) => {
                    if filter.kind == Some("alerting") {
                        continue;
                    }
                    rule["type"] = json!("recording");
                }
            }
            rules.push(rule);
        }
        if rules.is_empty() && (filter.kind.is_some() || !filter.names.is_empty()) {
            continue;
        }
        groups.push(json!({
            "name": g.key.group,
            "file": g.key.namespace,
            "rules": rules,
            "interval": g.interval_ms as f64 / 1000.0,
            "limit": g.def.limit,
            "evaluationTime": g.eval_seconds,
            "lastEvaluation": rfc3339_nanos(g.last_eval_ms),
        }));
    }
    Ok(axum::Json(json!({
        "status": "success",
        "data": {"groups": groups},
        "errorType": "",
        "error": "",
    }))
    .into_response())
}

async fn prometheus_alerts(
    State(api): State<RulerApi>,
    headers: HeaderMap,
) -> Result<Response, PromError> {
    let tenant = tenant(&api, &headers).map_err(PromError)?;
    let mut alerts = Vec::new();
    for g in api.ruler.groups(&tenant) {
        for entry in &g.rules {
            if let RuleKind::Alerting(a) = &entry.kind {
                alerts.extend(a.alerts().filter(|x| shown(x)).map(alert_json));
            }
        }
    }
    Ok(axum::Json(json!({
        "status": "success",
        "data": {"alerts": alerts},
        "errorType": "",
        "error": "",
    }))
    .into_response())
}
