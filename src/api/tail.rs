//! Live tail: `GET /loki/api/v1/tail` over a WebSocket (reference: `http-api.md` §6).
//!
//! Owns the tail session: the query is validated before the upgrade (a bad query is a
//! plain-text 400, never a socket), then the replay of up to `limit` stored entries from
//! `start`, oldest first, then the entries pushed since, run through the query's pipeline,
//! every `delay_for` seconds or half a second, with a ping every second. Fatal errors and
//! the one-hour session limit close the socket with code 1011 and the reason. It does not
//! own pipeline semantics: each batch of live entries is evaluated by query-lang over an
//! in-memory source, so a tail prints exactly what a query over the same entries would.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use lode_push::{Entry, LabelSet};
use query_lang::eval::{self, Direction, InMemorySource, QueryParams, QueryResult};
use query_lang::Expr;
use tokio::sync::broadcast;

use super::error::ApiError;
use super::params;
use super::query::{decode, encoding_flags, parse_query, QueryApi};
use crate::ingester::Pushed;
use crate::tenant::TenantId;

/// Loki's cap on `delay_for`, seconds.
const MAX_DELAY_FOR_SECS: u64 = 5;
/// Loki's `tail_max_duration`.
const MAX_TAIL_DURATION: Duration = Duration::from_secs(3600);
/// How often buffered live entries are sent when no delay is asked for.
const POLL: Duration = Duration::from_millis(500);
/// Loki's cap on entries per tail message.
const MAX_ENTRIES_PER_MESSAGE: usize = 100;

/// `GET /loki/api/v1/tail`.
pub async fn tail(
    State(api): State<Arc<QueryApi>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let req = decode(&api, &method, headers, query, &Bytes::new())?;
    let text = req
        .params
        .get("query")
        .ok_or_else(|| ApiError::bad_request("query parameter is required: send query=<LogQL>"))?;
    let expr = parse_query(text)?;
    if !matches!(expr, Expr::Log(_)) {
        return Err(ApiError::bad_request(
            "only log queries can be tailed; remove the metric aggregation",
        ));
    }
    let limit = match req.params.get("limit") {
        Some(s) => s.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::bad_request(format!("invalid limit {s:?}: expected a positive integer"))
        })?,
        None => params::DEFAULT_LIMIT as usize,
    };
    let now = params::now_ns();
    let start = match req.params.get("start") {
        Some(s) => params::parse_timestamp(s)?,
        None => now - 3_600_000_000_000,
    };
    let delay_secs = match req.params.get("delay_for") {
        Some(s) => s
            .parse::<u64>()
            .ok()
            .filter(|d| *d <= MAX_DELAY_FOR_SECS)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "delay_for must be an integer number of seconds between 0 and {MAX_DELAY_FOR_SECS}, got {s:?}"
                ))
            })?,
        None => 0,
    };
    let ws =
        ws.map_err(|e| ApiError::bad_request(format!("tail needs a WebSocket upgrade: {e}")))?;
    let categorize = encoding_flags(&req.headers)
        .iter()
        .any(|f| f == "categorize-labels");
    let session = Session {
        api: api.clone(),
        tenant: req.tenant,
        expr,
        limit,
        start,
        delay: Duration::from_secs(delay_secs),
        categorize,
        live: api.live.subscribe(),
        replayed: HashSet::new(),
    };
    Ok(ws
        .on_upgrade(move |socket| session.run(socket))
        .into_response())
}

struct Session {
    api: Arc<QueryApi>,
    tenant: TenantId,
    expr: Expr,
    limit: usize,
    start: i64,
    delay: Duration,
    categorize: bool,
    live: broadcast::Receiver<Arc<Pushed>>,
    /// Entries the replay sent, `(timestamp, line)`: not sent again when a racing push
    /// brings them live.
    replayed: HashSet<(i64, String)>,
}

impl Session {
    async fn run(mut self, mut socket: WebSocket) {
        // Subscribed before the replay, so nothing pushed in between is missed; entries
        // the replay already returned are skipped by timestamp below.
        let end = params::now_ns();
        let mut params = QueryParams::range(self.start, end, 1_000_000_000);
        params.limit = self.limit;
        params.direction = Direction::Forward;
        params.categorize_labels = self.categorize;
        match self
            .api
            .querier
            .query(&self.tenant, self.expr.clone(), params)
            .await
        {
            Ok((result, _)) => {
                if let QueryResult::Streams { streams, .. } = &result {
                    for e in streams.iter().flat_map(|s| &s.entries) {
                        self.replayed.insert((e.timestamp_ns, e.line.clone()));
                    }
                }
                for msg in self.messages(&result) {
                    if socket.send(Message::Text(msg.into())).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => return close_with_error(socket, &e.to_string()).await,
        }
        let deadline = tokio::time::Instant::now() + MAX_TAIL_DURATION;
        let mut ping = tokio::time::interval(Duration::from_secs(1));
        let mut flush = tokio::time::interval(self.delay.max(POLL));
        let mut pending: Vec<Arc<Pushed>> = Vec::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    return close_with_error(socket, "reached tail max duration limit").await;
                }
                _ = ping.tick() => {
                    if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                        return;
                    }
                }
                _ = flush.tick() => {
                    if pending.is_empty() {
                        continue;
                    }
                    let batch = std::mem::take(&mut pending);
                    match self.live_result(&batch) {
                        Ok(Some(result)) => {
                            for msg in self.messages(&result) {
                                if socket.send(Message::Text(msg.into())).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Ok(None) => {}
                        Err(e) => return close_with_error(socket, &e).await,
                    }
                }
                pushed = self.live.recv() => match pushed {
                    Ok(p) if p.tenant == self.tenant => pending.push(p),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(tenant = %self.tenant, skipped = n, "tail client too slow; live pushes dropped");
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return close_with_error(socket, "the server is shutting down").await;
                    }
                },
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                },
            }
        }
    }

    /// The query's answer over a batch of live pushes: streams matching the selector,
    /// through the pipeline, oldest first.
    fn live_result(&mut self, batch: &[Arc<Pushed>]) -> Result<Option<QueryResult>, String> {
        let Expr::Log(sel) = &self.expr else {
            return Ok(None);
        };
        let mut source = InMemorySource::new();
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for p in batch {
            if !sel
                .matchers
                .iter()
                .all(|m| m.matches(p.labels.get(&m.name).unwrap_or("")))
            {
                continue;
            }
            // A push racing the replay may already have been sent by it.
            let entries: Vec<Entry> = p
                .entries
                .iter()
                .filter(|e| {
                    self.replayed.is_empty()
                        || !self.replayed.remove(&(e.timestamp_ns, e.line.clone()))
                })
                .cloned()
                .collect();
            for e in &entries {
                lo = lo.min(e.timestamp_ns);
                hi = hi.max(e.timestamp_ns);
            }
            if !entries.is_empty() {
                source.push(LabelSet::clone(&p.labels), entries);
            }
        }
        if source.is_empty() {
            return Ok(None);
        }
        let mut params = QueryParams::range(lo, hi.saturating_add(1), 1_000_000_000);
        params.limit = usize::MAX;
        params.direction = Direction::Forward;
        params.categorize_labels = self.categorize;
        eval::eval(&self.expr, &params, &source)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Tail messages of at most [`MAX_ENTRIES_PER_MESSAGE`] entries each:
    /// `{"streams":[...]}` (plus top-level `encodingFlags` when categorized).
    fn messages(&self, result: &QueryResult) -> Vec<String> {
        let QueryResult::Streams {
            streams,
            categorized,
        } = result
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut chunk = Vec::new();
        let mut count = 0;
        for s in streams {
            for part in s.entries.chunks(MAX_ENTRIES_PER_MESSAGE) {
                if count + part.len() > MAX_ENTRIES_PER_MESSAGE && !chunk.is_empty() {
                    out.push(render(std::mem::take(&mut chunk), *categorized));
                    count = 0;
                }
                count += part.len();
                chunk.push(query_lang::eval::Stream {
                    labels: s.labels.clone(),
                    entries: part.to_vec(),
                });
            }
        }
        if !chunk.is_empty() {
            out.push(render(chunk, *categorized));
        }
        out.retain(|m| !m.is_empty());
        out
    }
}

/// One tail message from result streams, reusing query-lang's stream encoding.
fn render(streams: Vec<query_lang::eval::Stream>, categorized: bool) -> String {
    let result = QueryResult::Streams {
        streams,
        categorized,
    };
    let Ok(serde_json::Value::Object(mut data)) = serde_json::to_value(&result) else {
        return String::new();
    };
    let mut msg = serde_json::Map::new();
    if categorized {
        msg.insert(
            "encodingFlags".to_string(),
            serde_json::json!(["categorize-labels"]),
        );
    }
    msg.insert(
        "streams".to_string(),
        data.remove("result")
            .unwrap_or_else(|| serde_json::json!([])),
    );
    serde_json::Value::Object(msg).to_string()
}

async fn close_with_error(mut socket: WebSocket, reason: &str) {
    let frame = CloseFrame {
        code: axum::extract::ws::close_code::ERROR,
        reason: reason.chars().take(120).collect::<String>().into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}
