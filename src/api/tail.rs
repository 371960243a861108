//! Live tail: `GET /loki/api/v1/tail` over a WebSocket (reference: `http-api.md` §6).
//!
//! Owns the tail session: the query is validated before the upgrade (a bad query is a
//! plain-text 400, never a socket), then the replay of up to `limit` stored entries from
//! `start` (the newest ones, sent oldest first), then the entries pushed since, run through
//! the query's pipeline and sent every half second once `delay_for` seconds have passed
//! since their timestamps, with a ping every second. Fatal errors and
//! the one-hour session limit close the socket with code 1011 and the reason. It does not
//! own pipeline semantics: each batch of live entries is evaluated by query-lang over an
//! in-memory source, so a tail prints exactly what a query over the same entries would.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use lode_push::{Entry, LabelSet};
use query_lang::eval::{self, Direction, InMemorySource, QueryParams, QueryResult};
use query_lang::{Expr, Matcher};
use tokio::sync::broadcast;

use super::error::ApiError;
use super::params;
use super::query::{encoding_flags, parse_query, QueryApi, Request};
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
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    req: Request,
) -> Result<Response, ApiError> {
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
        Some(s) => {
            let secs = s.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid delay_for {s:?}: expected a whole number of seconds from 0 to {MAX_DELAY_FOR_SECS}"
                ))
            })?;
            if secs > MAX_DELAY_FOR_SECS {
                // Loki's words, then the value.
                return Err(ApiError::bad_request(format!(
                    "delay_for can't be greater than {MAX_DELAY_FOR_SECS} (got {secs})"
                )));
            }
            secs
        }
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
        // Loki replays the newest `limit` entries (a backward query), oldest first.
        params.direction = Direction::Backward;
        params.categorize_labels = self.categorize;
        match self
            .api
            .querier
            .query(&self.tenant, self.expr.clone(), params)
            .await
        {
            Ok((mut result, _)) => {
                if let QueryResult::Streams { streams, .. } = &mut result {
                    for s in streams.iter_mut() {
                        s.entries.reverse();
                    }
                    streams.sort_by_key(|s| s.entries.first().map(|e| e.timestamp_ns));
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
        let mut flush = tokio::time::interval(POLL);
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
                    let batch = self.due(&mut pending, params::now_ns());
                    if batch.is_empty() {
                        continue;
                    }
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
                    // Only what the selector takes waits for its delay.
                    Ok(p) if p.tenant == self.tenant && self.selects(&p) => pending.push(p),
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

    /// Takes out of `pending` the entries due at `now_ns`: as in Loki, an entry is sent
    /// once `delay_for` has passed since its timestamp (so slow senders' entries can
    /// still be merged in order); the rest stay pending.
    fn due(&self, pending: &mut Vec<Arc<Pushed>>, now_ns: i64) -> Vec<Arc<Pushed>> {
        // Without a delay everything goes at once, entries stamped a little ahead of this
        // clock (within the creation grace period) too.
        if self.delay.is_zero() {
            return std::mem::take(pending);
        }
        let delay_ns = i64::try_from(self.delay.as_nanos()).unwrap_or(i64::MAX);
        let due_before = now_ns.saturating_sub(delay_ns);
        let mut due = Vec::new();
        let mut held = Vec::new();
        for p in pending.drain(..) {
            if p.entries.iter().all(|e| e.timestamp_ns < due_before) {
                due.push(p);
            } else if p.entries.iter().all(|e| e.timestamp_ns >= due_before) {
                held.push(p);
            } else {
                let (now, later): (Vec<Entry>, Vec<Entry>) = p
                    .entries
                    .iter()
                    .cloned()
                    .partition(|e| e.timestamp_ns < due_before);
                let part = |entries| {
                    Arc::new(Pushed {
                        tenant: p.tenant.clone(),
                        labels: p.labels.clone(),
                        entries,
                    })
                };
                due.push(part(now));
                held.push(part(later));
            }
        }
        *pending = held;
        due
    }

    /// True when the query's stream selector takes the pushed stream.
    fn selects(&self, p: &Pushed) -> bool {
        let Expr::Log(sel) = &self.expr else {
            return false;
        };
        Matcher::select(&sel.matchers, &p.labels)
    }

    /// The query's answer over a batch of live pushes (of streams the selector takes),
    /// through the pipeline, oldest first.
    fn live_result(&mut self, batch: &[Arc<Pushed>]) -> Result<Option<QueryResult>, String> {
        if !matches!(self.expr, Expr::Log(_)) {
            return Ok(None);
        }
        let mut source = InMemorySource::new();
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for p in batch {
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
