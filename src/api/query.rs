//! Loki's read API: `query`, `query_range`, `labels`, `label/<name>/values`, `series`,
//! `index/stats`, `index/volume`, `index/volume_range`, `format_query`, `detected_labels`,
//! `detected_fields`, and their legacy `/api/prom/*` spellings where clients still use them.
//!
//! Owns decoding query parameters (query string and POST form alike, through
//! [`super::params`]), the response envelopes and the plain-text errors with Loki's status
//! codes (reference: `http-api.md` §1, §4, §5). Running queries is the querier's job;
//! serializing results is query-lang's (`QueryResult` writes Loki's `data` object).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use lode_push::LabelSet;
use query_lang::eval::{QueryParams, QueryResult};
use query_lang::{parse_expr, Expr, Matcher};
use serde::Serialize;

use super::error::{ApiError, ApiErrorKind};
use super::params::{self, InstantQuery, ParamError, Params, RangeQuery};
use crate::config::units::ConfigDuration;
use crate::ingester::Ingester;
use crate::querier::{self, Querier};
use crate::tenant::TenantId;

/// The only flag of `X-Loki-Response-Encoding-Flags` that changes a response.
const CATEGORIZE_LABELS: &str = "categorize-labels";

/// What the read API needs.
#[derive(Clone)]
pub struct QueryApi {
    pub querier: Arc<Querier>,
    /// `auth_enabled`: when true every request must name its tenant in `X-Scope-OrgID`.
    pub auth_enabled: bool,
    /// Live pushes for `/loki/api/v1/tail`.
    pub live: Arc<Ingester>,
}

/// The read routes, with their state applied.
pub fn routes(api: QueryApi) -> Router {
    Router::new()
        .route("/loki/api/v1/query", get(instant_query).post(instant_query))
        .route(
            "/loki/api/v1/query_range",
            get(range_query).post(range_query),
        )
        .route("/loki/api/v1/labels", get(labels).post(labels))
        .route("/loki/api/v1/label", get(labels).post(labels))
        .route(
            "/loki/api/v1/label/{name}/values",
            get(label_values).post(label_values),
        )
        .route("/loki/api/v1/series", get(series).post(series))
        .route(
            "/loki/api/v1/index/stats",
            get(index_stats).post(index_stats),
        )
        .route("/loki/api/v1/index/volume", get(volume).post(volume))
        .route(
            "/loki/api/v1/index/volume_range",
            get(volume_range).post(volume_range),
        )
        .route(
            "/loki/api/v1/detected_fields",
            get(detected_fields).post(detected_fields),
        )
        .route(
            "/loki/api/v1/format_query",
            get(format_query).post(format_query),
        )
        .route(
            "/loki/api/v1/detected_labels",
            get(detected_labels).post(detected_labels),
        )
        .route("/loki/api/v1/tail", get(super::tail::tail))
        .route("/api/prom/tail", get(super::tail::tail))
        .route("/api/prom/label", get(labels).post(labels))
        .route(
            "/api/prom/label/{name}/values",
            get(label_values).post(label_values),
        )
        .route("/api/prom/series", get(series).post(series))
        .with_state(Arc::new(api))
}

type ApiState = State<Arc<QueryApi>>;

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> Self {
        ApiError::bad_request(e.0)
    }
}

impl From<querier::Error> for ApiError {
    fn from(e: querier::Error) -> Self {
        let kind = match &e {
            _ if e.is_client_error() => ApiErrorKind::BadRequest,
            querier::Error::Timeout(_) => ApiErrorKind::Timeout,
            querier::Error::Cancelled => ApiErrorKind::ClientClosed,
            _ => ApiErrorKind::Internal,
        };
        ApiError::new(kind, e.to_string())
    }
}

/// Query string and, for POST, the form body, as one parameter list.
fn request_params(
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &Bytes,
) -> Params {
    let mut pairs: Vec<(String, String)> = query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("application/x-www-form-urlencoded"));
    if method == Method::POST && is_form {
        pairs.extend(form_urlencoded::parse(body).into_owned());
    }
    Params(pairs)
}

/// Everything a read handler receives, decoded once: the tenant, the query-string and
/// POST-form parameters, and the headers (encoding flags).
pub struct Request {
    pub tenant: TenantId,
    pub params: Params,
    pub headers: HeaderMap,
}

/// Bodies of read requests (POST forms) are small; anything bigger is refused.
const MAX_FORM_BYTES: usize = 4 << 20;

impl FromRequest<Arc<QueryApi>> for Request {
    type Rejection = ApiError;

    async fn from_request(
        req: axum::extract::Request,
        api: &Arc<QueryApi>,
    ) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|e| {
                ApiError::new(
                    ApiErrorKind::PayloadTooLarge,
                    format!("request body over {MAX_FORM_BYTES} bytes or unreadable: {e}"),
                )
            })?;
        Ok(Request {
            tenant: super::tenant_from(api.auth_enabled, &parts.headers)?,
            params: request_params(&parts.method, &parts.headers, parts.uri.query(), &body),
            headers: parts.headers,
        })
    }
}

fn json_response<T: Serialize>(body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => json_bytes(bytes),
        Err(e) => ApiError::internal(format!("encoding the response failed: {e}")).into_response(),
    }
}

fn json_bytes(bytes: Vec<u8>) -> Response {
    let mut r = (StatusCode::OK, bytes).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    r
}

/// Flags of `X-Loki-Response-Encoding-Flags`, as sent (Loki echoes them all).
pub(super) fn encoding_flags(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("X-Loki-Response-Encoding-Flags")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect()
}

pub(super) fn parse_query(text: &str) -> Result<Expr, ApiError> {
    parse_expr(text).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// The stream matchers of a selector parameter (`query`, `match[]`); a pipeline after
/// the selector is allowed and ignored, as Loki does for metadata endpoints.
fn selector_matchers(text: &str) -> Result<Vec<Matcher>, ApiError> {
    match parse_query(text)? {
        Expr::Log(sel) => Ok(sel.matchers),
        Expr::Metric(_) | Expr::Variants(_) => Err(ApiError::bad_request(format!(
            "only stream selectors are accepted here, got a metric query: {text}"
        ))),
    }
}

fn optional_matchers(params: &Params) -> Result<Vec<Matcher>, ApiError> {
    match params.get("query") {
        Some(q) => selector_matchers(q),
        None => Ok(Vec::new()),
    }
}

fn max_limit(api: &QueryApi, tenant: &TenantId) -> u32 {
    api.querier.limits(tenant).max_entries_limit_per_query
}

/// Rejects a range longer than the tenant's `max_query_length`.
fn check_length(api: &QueryApi, tenant: &TenantId, start: i64, end: i64) -> Result<(), ApiError> {
    let limit = api.querier.limits(tenant).max_query_length;
    if !limit.is_zero() && end.saturating_sub(start) > limit.as_nanos_i64() {
        let length = ConfigDuration(std::time::Duration::from_nanos(
            u64::try_from(end - start).unwrap_or(0),
        ));
        return Err(ApiError::bad_request(format!(
            "the query time range exceeds the limit (query length: {length}, limit: {limit}); shorten the range or raise max_query_length"
        )));
    }
    Ok(())
}

async fn instant_query(State(api): ApiState, req: Request) -> Result<Response, ApiError> {
    let q = InstantQuery::from_params(&req.params, params::now_ns(), max_limit(&api, &req.tenant))?;
    let mut p = QueryParams::instant(q.time);
    p.limit = q.limit as usize;
    p.direction = q.direction;
    run_query(&api, &req, &q.query, p).await
}

async fn range_query(State(api): ApiState, req: Request) -> Result<Response, ApiError> {
    let q = RangeQuery::from_params(&req.params, params::now_ns(), max_limit(&api, &req.tenant))?;
    let mut p = QueryParams::range(q.start, q.end, q.step);
    p.interval_ns = q.interval;
    p.limit = q.limit as usize;
    p.direction = q.direction;
    run_query(&api, &req, &q.query, p).await
}

async fn run_query(
    api: &QueryApi,
    req: &Request,
    text: &str,
    mut p: QueryParams,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let expr = parse_query(text)?;
    let limits = api.querier.limits(&req.tenant);
    if limits.max_query_series > 0 {
        p.max_series = limits.max_query_series;
    }
    p.multi_variant_queries = limits.enable_multi_variant_queries;
    p.approx_topk = limits.approx_topk_enabled();
    if !p.is_instant() {
        check_length(api, &req.tenant, p.start_ns, p.end_ns)?;
    }
    let flags = encoding_flags(&req.headers);
    p.categorize_labels = flags.iter().any(|f| f == CATEGORIZE_LABELS);
    let (result, processed) = api.querier.query(&req.tenant, expr, p).await?;
    let stats = Stats {
        exec_seconds: started.elapsed().as_secs_f64(),
        processed,
        returned: returned_entries(&result),
    };
    Ok(json_bytes(envelope(&result, &stats)?))
}

fn returned_entries(result: &QueryResult) -> u64 {
    match result {
        QueryResult::Streams { streams, .. } => {
            streams.iter().map(|s| s.entries.len() as u64).sum()
        }
        _ => 0,
    }
}

/// `{"status":"success","data":{<query-lang's data object>,"stats":{...}}}`.
fn envelope(result: &QueryResult, stats: &Stats) -> Result<Vec<u8>, ApiError> {
    let internal =
        |e: serde_json::Error| ApiError::internal(format!("encoding the response failed: {e}"));
    let mut data = serde_json::to_vec(result).map_err(internal)?;
    // The data object ends with its closing brace; the stats go in last, after `result`.
    if data.pop() != Some(b'}') {
        return Err(ApiError::internal(
            "encoding the response failed: result is not an object",
        ));
    }
    let mut out = Vec::with_capacity(data.len() + 512);
    out.extend_from_slice(br#"{"status":"success","data":"#);
    out.extend_from_slice(&data);
    out.extend_from_slice(br#","stats":"#);
    serde_json::to_writer(&mut out, &stats.json()).map_err(internal)?;
    out.extend_from_slice(b"}}");
    Ok(out)
}

/// What Grafana shows of a query's cost (`data.stats`).
struct Stats {
    exec_seconds: f64,
    processed: querier::Processed,
    returned: u64,
}

impl Stats {
    fn json(&self) -> serde_json::Value {
        let secs = self.exec_seconds.max(f64::MIN_POSITIVE);
        let lines = self.processed.lines;
        let bytes = self.processed.bytes;
        serde_json::json!({
            "summary": {
                "bytesProcessedPerSecond": (bytes as f64 / secs) as u64,
                "linesProcessedPerSecond": (lines as f64 / secs) as u64,
                "totalBytesProcessed": bytes,
                "totalLinesProcessed": lines,
                "execTime": self.exec_seconds,
                "queueTime": 0.0,
                "subqueries": 0,
                "totalEntriesReturned": self.returned,
                "splits": 0,
                "shards": 0,
                "totalPostFilterLines": lines,
                "totalStructuredMetadataBytesProcessed": 0,
            },
            "querier": {"store": {"totalChunksRef": 0, "totalChunksDownloaded": 0}},
            "ingester": {"totalReached": 0, "totalChunksMatched": 0, "totalBatches": 0, "totalLinesSent": 0},
        })
    }
}

/// `{"status":"success","data":[...]}`, or without `data` when empty (as Loki writes it).
fn string_list(values: Vec<String>) -> Response {
    if values.is_empty() {
        return json_response(&serde_json::json!({"status": "success"}));
    }
    json_response(&serde_json::json!({"status": "success", "data": values}))
}

async fn labels(State(api): ApiState, req: Request) -> Result<Response, ApiError> {
    let range = params::time_range(&req.params, params::now_ns())?;
    let matchers = optional_matchers(&req.params)?;
    let start = range.start.max(api.querier.cutoff_ns(&req.tenant));
    let names = api.querier.storage().index().label_names(
        &req.tenant,
        &matchers,
        start,
        range.end.saturating_add(1),
    );
    Ok(string_list(names))
}

async fn label_values(
    State(api): ApiState,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let range = params::time_range(&req.params, params::now_ns())?;
    let matchers = optional_matchers(&req.params)?;
    let start = range.start.max(api.querier.cutoff_ns(&req.tenant));
    let values = api.querier.storage().index().label_values(
        &req.tenant,
        &name,
        &matchers,
        start,
        range.end.saturating_add(1),
    );
    Ok(string_list(values))
}

/// The union of streams matched by each `match[]` (Grafana) or `match` (logcli); none,
/// or a lone `{}`, means every stream.
async fn series(State(api): ApiState, req: Request) -> Result<Response, ApiError> {
    let range = params::time_range(&req.params, params::now_ns())?;
    let selectors: Vec<&str> = req
        .params
        .all("match[]")
        .chain(req.params.all("match"))
        .filter(|s| !s.trim().is_empty())
        .collect();
    let end = range.end.saturating_add(1);
    let mut found: Vec<LabelSet> = Vec::new();
    if selectors.iter().all(|s| s.trim() == "{}") {
        found = api.querier.series(&req.tenant, &[], range.start, end);
    } else {
        for s in selectors {
            let matchers = selector_matchers(s)?;
            found.extend(api.querier.series(&req.tenant, &matchers, range.start, end));
        }
    }
    found.sort();
    found.dedup();
    let data: Vec<serde_json::Map<String, serde_json::Value>> = found
        .iter()
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(v)))
                .collect()
        })
        .collect();
    Ok(json_response(
        &serde_json::json!({"status": "success", "data": data}),
    ))
}

/// `index/stats`: streams, chunks, bytes and entries of the selected streams in the range,
/// counted by Loki 3.7's rule so Grafana's query-size hint matches Loki's for the same
/// data; the rule, and the doubt about it, are on [`querier::IndexStats`].
async fn index_stats(State(api): ApiState, req: Request) -> Result<Response, ApiError> {
    let range = params::time_range(&req.params, params::now_ns())?;
    let matchers = match req.params.get("query") {
        Some(q) => selector_matchers(q)?,
        None => {
            return Err(ApiError::bad_request(
                "query parameter is required: send query=<stream selector>",
            ))
        }
    };
    let stats = api.querier.stats(
        &req.tenant,
        &matchers,
        range.start,
        range.end.saturating_add(1),
    );
    Ok(json_response(&stats))
}

/// The query in its canonical form: `{"status":"success","data":"<query>"}`; a query that
/// does not parse is a 400 with Loki's JSON body for this endpoint,
/// `{"status":"invalid-query","error":"parse error at line 1, col 12: ..."}`.
async fn format_query(req: Request) -> Response {
    let parsed = match req.params.get("query") {
        Some(text) => parse_expr(text).map_err(|e| e.to_string()),
        None => Err("query parameter is required: send query=<LogQL>".to_string()),
    };
    match parsed {
        Ok(expr) => {
            json_response(&serde_json::json!({"status": "success", "data": expr.to_string()}))
        }
        Err(error) => {
            let mut r =
                json_response(&serde_json::json!({"status": "invalid-query", "error": error}));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            r
        }
    }
}

/// Indexed labels of the selected streams (`query`, optional) with their value counts,
/// so Grafana's newest editor and Logs Drilldown can offer them: from the index, as Loki
/// answers, leaving out labels whose values all look like ids ([`looks_like_ids`]) but
/// always keeping `cluster`, `namespace`, `instance` and `pod`. Sorted by label name.
async fn detected_labels(State(api): ApiState, req: Request) -> Result<Response, ApiError> {
    let range = params::time_range(&req.params, params::now_ns())?;
    let matchers = optional_matchers(&req.params)?;
    let streams = api.querier.series(
        &req.tenant,
        &matchers,
        range.start,
        range.end.saturating_add(1),
    );
    let mut values: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> =
        Default::default();
    for labels in &streams {
        for (k, v) in labels.iter() {
            values.entry(k).or_default().insert(v);
        }
    }
    let detected: Vec<serde_json::Value> = values
        .iter()
        .filter(|(label, v)| ALWAYS_DETECTED.contains(label) || !looks_like_ids(v))
        .map(|(label, v)| serde_json::json!({"label": label, "cardinality": v.len()}))
        .collect();
    // Loki omits the empty list, answering `{}`; Grafana then falls back to the label and
    // series APIs.
    let body = if detected.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::json!({"detectedLabels": detected})
    };
    Ok(json_response(&body))
}

/// Labels `detected_labels` keeps whatever their values, as Loki does.
const ALWAYS_DETECTED: [&str; 4] = ["cluster", "namespace", "instance", "pod"];

/// Loki's test for a label not worth offering as a filter: every value is a number or a
/// UUID (request ids, ports, counters), except one or two values all `0`/`1` (a flag).
fn looks_like_ids(values: &std::collections::BTreeSet<&str>) -> bool {
    if values.len() <= 2 && values.iter().all(|v| *v == "0" || *v == "1") {
        return false;
    }
    values
        .iter()
        .all(|v| v.parse::<f64>().is_ok() || is_uuid(v))
}

/// A UUID as Go's `uuid.Parse` reads one: 32 hex digits, bare or as 8-4-4-4-12 with
/// dashes, optionally in braces or after `urn:uuid:`.
fn is_uuid(text: &str) -> bool {
    let inner = text
        .strip_prefix("urn:uuid:")
        .or_else(|| text.strip_prefix('{').and_then(|t| t.strip_suffix('}')))
        .unwrap_or(text);
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    match inner.len() {
        32 => hex(inner),
        36 => {
            let groups: Vec<&str> = inner.split('-').collect();
            groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]) && groups.iter().all(|g| hex(g))
        }
        _ => false,
    }
}

async fn volume(State(api): ApiState, req: Request) -> Result<Response, ApiError> {
    volume_response(&api, &req, false)
}

async fn volume_range(State(api): ApiState, req: Request) -> Result<Response, ApiError> {
    volume_response(&api, &req, true)
}

/// Loki's JSON number for a sample time: seconds with millisecond precision.
fn seconds(ns: i64) -> serde_json::Value {
    let ms = ns.div_euclid(1_000_000);
    if ms % 1000 == 0 {
        serde_json::Value::from(ms / 1000)
    } else {
        serde_json::Value::from(ms as f64 / 1000.0)
    }
}

/// `index/volume` (a vector at `end`) and `index/volume_range` (a matrix over steps):
/// line bytes grouped by `targetLabels`, or by the selector's label names, per series or
/// (`aggregateBy=labels`) per label name.
fn volume_response(api: &QueryApi, req: &Request, ranged: bool) -> Result<Response, ApiError> {
    use std::collections::BTreeMap;

    let range = params::time_range(&req.params, params::now_ns())?;
    let text = req.params.get("query").ok_or_else(|| {
        ApiError::bad_request("query parameter is required: send query=<stream selector>")
    })?;
    let matchers = selector_matchers(text)?;
    let limit = match req.params.get("limit") {
        None => 100,
        Some(s) => match s.parse::<usize>() {
            Ok(0) => 100,
            Ok(n) => n,
            Err(_) => {
                return Err(ApiError::bad_request(format!(
                    "invalid limit {s:?}: expected a non-negative integer"
                )))
            }
        },
    };
    let targets: Vec<&str> = req
        .params
        .get("targetLabels")
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let by_labels = match req.params.get("aggregateBy") {
        None | Some("series") => false,
        Some("labels") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid aggregateBy {other:?}: use \"series\" or \"labels\""
            )))
        }
    };
    let names: Vec<&str> = if targets.is_empty() {
        matchers.iter().map(|m| m.name.as_str()).collect()
    } else {
        targets
    };
    let step = match req.params.get("step") {
        Some(s) if ranged => params::parse_seconds_or_duration(s)?,
        _ => params::default_step(range.start, range.end),
    };
    if step <= 0 {
        return Err(ApiError::bad_request(
            "zero or negative query resolution step widths are not accepted. Try a positive integer",
        ));
    }
    let end = range.end.saturating_add(1);
    type Key = Vec<(String, String)>;
    let mut groups: BTreeMap<Key, BTreeMap<i64, u64>> = BTreeMap::new();
    for (labels, pieces) in api.querier.volume(&req.tenant, &matchers, range.start, end) {
        let present = names.iter().filter_map(|n| labels.get(n).map(|v| (*n, v)));
        let keys: Vec<Key> = if by_labels {
            present
                .map(|(n, _)| vec![(n.to_string(), String::new())])
                .collect()
        } else {
            vec![present
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()]
        };
        for key in keys {
            let buckets = groups.entry(key).or_default();
            for &(ts, bytes) in &pieces {
                // A sample at t counts what lies in (t - step, t], as metric queries do.
                let t = if ranged {
                    let k = (ts - range.start + step - 1).div_euclid(step);
                    (range.start + k * step).min(range.end)
                } else {
                    range.end
                };
                *buckets.entry(t).or_default() += bytes;
            }
        }
    }
    let mut series: Vec<(Key, BTreeMap<i64, u64>, u64)> = groups
        .into_iter()
        .map(|(k, b)| {
            let total = b.values().sum();
            (k, b, total)
        })
        .collect();
    series.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    series.truncate(limit);
    let metric = |k: &Key| -> serde_json::Map<String, serde_json::Value> {
        k.iter()
            .map(|(n, v)| (n.clone(), v.clone().into()))
            .collect()
    };
    let all_single = series.iter().all(|(_, b, _)| b.len() == 1);
    let (result_type, result): (&str, Vec<serde_json::Value>) = if !ranged || all_single {
        (
            "vector",
            series
                .iter()
                .map(|(k, b, total)| {
                    let t = b.keys().next().copied().unwrap_or(range.end);
                    serde_json::json!({"metric": metric(k), "value": [seconds(t), total.to_string()]})
                })
                .collect(),
        )
    } else {
        (
            "matrix",
            series
                .iter()
                .map(|(k, b, _)| {
                    let values: Vec<serde_json::Value> = b
                        .iter()
                        .map(|(t, v)| serde_json::json!([seconds(*t), v.to_string()]))
                        .collect();
                    serde_json::json!({"metric": metric(k), "values": values})
                })
                .collect(),
        )
    };
    Ok(json_response(&serde_json::json!({
        "status": "success",
        "data": {"resultType": result_type, "result": result},
    })))
}

/// What `detected_fields` learned of one field.
#[derive(Default)]
struct FieldSeen {
    values: std::collections::BTreeSet<String>,
    /// `None` for structured metadata (Grafana tests for `"parsers": null`).
    parsers: Option<std::collections::BTreeSet<&'static str>>,
}

/// Loki's field type names, from the values seen: the narrowest type all of them fit.
fn field_type(values: &std::collections::BTreeSet<String>) -> &'static str {
    use query_lang::syntax::units::{parse_bytes, parse_go_duration};
    let all = |f: &dyn Fn(&str) -> bool| values.iter().all(|v| f(v));
    if all(&|v| v.parse::<i64>().is_ok()) {
        "int"
    } else if all(&|v| v.parse::<f64>().is_ok()) {
        "float"
    } else if all(&|v| v == "true" || v == "false") {
        "boolean"
    } else if all(&|v| parse_go_duration(v).is_some()) {
        "duration"
    } else if all(&|v| parse_bytes(v).is_some()) {
        "bytes"
    } else {
        "string"
    }
}

/// Fields of the selected lines, for Grafana's field autocomplete: what `| json`, or for
/// lines that are not JSON `| logfmt`, extracts from the newest `line_limit` lines, plus
/// structured metadata (`"parsers": null`).
async fn detected_fields(State(api): ApiState, req: Request) -> Result<Response, ApiError> {
    use query_lang::eval::LogEntry;
    use std::collections::BTreeMap;

    let range = params::time_range(&req.params, params::now_ns())?;
    let text = req.params.get("query").ok_or_else(|| {
        ApiError::bad_request("query parameter is required: send query=<log query>")
    })?;
    let expr = parse_query(text)?;
    if !matches!(expr, Expr::Log(_)) {
        return Err(ApiError::bad_request(
            "detected_fields needs a log query, not a metric query",
        ));
    }
    let positive = |name: &str, default: usize| -> Result<usize, ApiError> {
        match req.params.get(name) {
            None => Ok(default),
            Some(s) => s.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ApiError::bad_request(format!("invalid {name} {s:?}: expected a positive integer"))
            }),
        }
    };
    let line_limit = positive("line_limit", 100)?;
    let field_limit = match req.params.get("field_limit") {
        Some(_) => positive("field_limit", 1000)?,
        None => positive("limit", 1000)?,
    };
    let mut fields: BTreeMap<String, FieldSeen> = BTreeMap::new();
    let mut json_lines = std::collections::HashSet::new();
    for parser in ["json", "logfmt"] {
        let expr = parse_query(&format!("{expr} | {parser}"))?;
        let mut p = QueryParams::range(
            range.start,
            range.end,
            params::default_step(range.start, range.end),
        );
        p.limit = line_limit;
        p.categorize_labels = true;
        let (result, _) = api.querier.query(&req.tenant, expr, p).await?;
        let QueryResult::Streams { streams, .. } = result else {
            continue;
        };
        let entries = streams.iter().flat_map(|s| &s.entries);
        for LogEntry {
            timestamp_ns,
            line,
            categorized,
        } in entries
        {
            let Some(labels) = categorized else { continue };
            let key = (*timestamp_ns, line.clone());
            if parser == "logfmt" && json_lines.contains(&key) {
                continue;
            }
            let failed = labels.parsed.iter().any(|(k, _)| k == "__error__");
            if parser == "json" && !failed {
                json_lines.insert(key);
            }
            if parser == "json" {
                for (k, v) in labels.structured_metadata.iter() {
                    fields
                        .entry(k.to_string())
                        .or_default()
                        .values
                        .insert(v.to_string());
                }
            }
            if failed {
                continue;
            }
            for (k, v) in labels.parsed.iter() {
                let seen = fields.entry(k.to_string()).or_default();
                seen.values.insert(v.to_string());
                seen.parsers
                    .get_or_insert_with(Default::default)
                    .insert(parser);
            }
        }
    }
    let detected: Vec<serde_json::Value> = fields
        .iter()
        .take(field_limit)
        .map(|(label, seen)| {
            serde_json::json!({
                "label": label,
                "type": field_type(&seen.values),
                "cardinality": seen.values.len(),
                "parsers": seen.parsers,
            })
        })
        .collect();
    Ok(json_response(
        &serde_json::json!({"fields": detected, "limit": field_limit}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set<'a>(values: &[&'a str]) -> std::collections::BTreeSet<&'a str> {
        values.iter().copied().collect()
    }

    #[test]
    fn labels_of_numbers_or_uuids_look_like_ids_but_flags_and_names_do_not() {
        assert!(looks_like_ids(&set(&["8080", "9090", "3100"])));
        assert!(looks_like_ids(&set(&[
            "0b0f6c9e-3d6a-4c1e-9a51-2f4f7c1d9e10",
            "{0B0F6C9E-3D6A-4C1E-9A51-2F4F7C1D9E11}",
            "0b0f6c9e3d6a4c1e9a512f4f7c1d9e12",
            "1.5",
        ])));
        assert!(!looks_like_ids(&set(&["0", "1"])));
        assert!(!looks_like_ids(&set(&["8080", "api"])));
        assert!(!looks_like_ids(&set(&[
            "0b0f6c9e-3d6a-4c1e-9a51-2f4f7c1d9e1"
        ])));
    }
}
