//! `lode query`, `lode labels`, `lode series`: a logcli-like client of any Loki-compatible
//! read API (Lode's own or Loki's).
//!
//! Owns the client flags (address, tenant, time range), the HTTP calls and the three
//! output forms: `default` (`<time> <labels> <line>`, and tables for metric results),
//! `raw` (the line only) and `jsonl` (one JSON object per entry or sample). `--tail`
//! follows new entries over the `/loki/api/v1/tail` WebSocket. It does not own query
//! semantics: the server answers, the client prints.

use std::fmt::Write as _;
use std::io::Write;

use clap::{Args, ValueEnum};
use futures::StreamExt;
use serde_json::Value;

/// Where to send requests and as whom; shared by every client subcommand.
#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// Base URL of the server (logcli's `LOKI_ADDR`).
    #[arg(long, env = "LOKI_ADDR", default_value = "http://localhost:3100")]
    pub addr: String,
    /// Tenant sent as `X-Scope-OrgID` (logcli's `LOKI_ORG_ID`).
    #[arg(long = "org-id", env = "LOKI_ORG_ID")]
    pub org_id: Option<String>,
    /// Look back this far from `--to` (Prometheus duration: 30m, 1h, 2d).
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// Start of the range: RFC3339, unix seconds or unix nanoseconds (wins over --since).
    #[arg(long)]
    pub from: Option<String>,
    /// End of the range (default now), same forms as --from.
    #[arg(long)]
    pub to: Option<String>,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Time, labels and line; metric results as a table.
    #[default]
    Default,
    /// The log line only.
    Raw,
    /// One JSON object per entry or sample.
    Jsonl,
}

/// `lode query <LOGQL>`.
#[derive(Args, Clone, Debug)]
pub struct QueryArgs {
    /// The LogQL query.
    pub query: String,
    #[command(flatten)]
    pub client: ClientArgs,
    /// Most log lines to return.
    #[arg(long, default_value_t = 30)]
    pub limit: u32,
    /// Oldest lines first.
    #[arg(long)]
    pub forward: bool,
    /// Metric query resolution (duration or seconds); the server's default when absent.
    #[arg(long)]
    pub step: Option<String>,
    /// Evaluate a metric query at one instant (`--to`, default now).
    #[arg(long, conflicts_with = "tail")]
    pub instant: bool,
    /// Keep printing new lines as they arrive.
    #[arg(long, short = 't')]
    pub tail: bool,
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Default)]
    pub output: Output,
}

/// `lode labels [NAME]`.
#[derive(Args, Clone, Debug)]
pub struct LabelsArgs {
    /// List this label's values instead of label names.
    pub name: Option<String>,
    /// Only streams matching this selector.
    #[arg(long)]
    pub query: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `lode series <SELECTOR>...`.
#[derive(Args, Clone, Debug)]
pub struct SeriesArgs {
    /// Stream selectors; their union is listed (`{}` for every stream).
    #[arg(required = true)]
    pub selectors: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A client failure, printed by `main`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("request to {url} failed: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("cannot read the answer of {url}: {reason}")]
    Decode { url: String, reason: String },
    #[error("tail connection to {url} failed: {reason}")]
    Tail { url: String, reason: String },
    #[error("{0}")]
    Param(String),
    #[error("writing output failed: {0}")]
    Io(#[from] std::io::Error),
}

struct Client {
    http: reqwest::Client,
    args: ClientArgs,
}

impl Client {
    fn new(args: ClientArgs) -> Client {
        Client {
            http: reqwest::Client::new(),
            args,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.args.addr.trim_end_matches('/'))
    }

    /// `start`/`end`/`since` as the server parses them.
    fn range_params(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if let Some(to) = &self.args.to {
            p.push(("end", to.clone()));
        }
        match &self.args.from {
            Some(from) => p.push(("start", from.clone())),
            None => p.push(("since", self.args.since.clone())),
        }
        p
    }

    async fn get(&self, path: &str, params: &[(&str, String)]) -> Result<Value, Error> {
        let url = self.url(path);
        let mut req = self.http.get(&url).query(params);
        if let Some(org) = &self.args.org_id {
            req = req.header("X-Scope-OrgID", org);
        }
        let resp = req.send().await.map_err(|source| Error::Http {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        let body = resp.text().await.map_err(|source| Error::Http {
            url: url.clone(),
            source,
        })?;
        if !status.is_success() {
            return Err(Error::Status {
                url,
                status: status.as_u16(),
                body: body.trim_end().to_string(),
            });
        }
        serde_json::from_str(&body).map_err(|e| Error::Decode {
            url,
            reason: e.to_string(),
        })
    }
}

/// Runs `lode query`.
pub async fn query(args: QueryArgs) -> Result<(), Error> {
    let output = args.output;
    let client = Client::new(args.client.clone());
    if args.tail {
        return tail(&client, &args).await;
    }
    let mut params = vec![("query", args.query.clone())];
    let path = if args.instant {
        if let Some(to) = &args.client.to {
            params.push(("time", to.clone()));
        }
        "/loki/api/v1/query"
    } else {
        params.extend(client.range_params());
        params.push(("limit", args.limit.to_string()));
        let direction = if args.forward { "forward" } else { "backward" };
        params.push(("direction", direction.to_string()));
        if let Some(step) = &args.step {
            params.push(("step", step.clone()));
        }
        "/loki/api/v1/query_range"
    };
    let body = client.get(path, &params).await?;
    let data = body.get("data").cloned().unwrap_or(Value::Null);
    let text = render(&data, output, args.forward);
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

/// Runs `lode labels`.
pub async fn labels(args: LabelsArgs) -> Result<(), Error> {
    let client = Client::new(args.client.clone());
    let mut params = client.range_params();
    if let Some(q) = &args.query {
        params.push(("query", q.clone()));
    }
    let path = match &args.name {
        Some(name) => format!("/loki/api/v1/label/{name}/values"),
        None => "/loki/api/v1/labels".to_string(),
    };
    let body = client.get(&path, &params).await?;
    let mut out = String::new();
    for v in body
        .get("data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(s) = v.as_str() {
            let _ = writeln!(out, "{s}");
        }
    }
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}

/// Runs `lode series`.
pub async fn series(args: SeriesArgs) -> Result<(), Error> {
    let client = Client::new(args.client.clone());
    let mut params = client.range_params();
    for s in &args.selectors {
        params.push(("match[]", s.clone()));
    }
    let body = client.get("/loki/api/v1/series", &params).await?;
    let mut out = String::new();
    for s in body
        .get("data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let _ = writeln!(out, "{}", label_string(s));
    }
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}

/// `{a="1", b="2"}` from a JSON object of labels.
fn label_string(labels: &Value) -> String {
    let mut out = String::from("{");
    if let Some(map) = labels.as_object() {
        for (i, (k, v)) in map.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{k}={}", Value::from(v.as_str().unwrap_or_default()));
        }
    }
    out.push('}');
    out
}

/// Nanoseconds since the epoch as RFC3339 with nanoseconds, UTC.
fn format_ns(ns: i64) -> String {
    let dt = chrono::DateTime::from_timestamp(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    );
    dt.map_or_else(
        || ns.to_string(),
        |d| d.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
    )
}

/// Renders a query's `data` object.
pub fn render(data: &Value, output: Output, forward: bool) -> String {
    let result = data.get("result").cloned().unwrap_or(Value::Null);
    match data.get("resultType").and_then(Value::as_str) {
        Some("streams") => render_streams(&result, output, forward),
        Some("matrix") => render_matrix(&result, output),
        Some("vector") => render_vector(&result, output),
        Some("scalar") => {
            let v = result.get(1).and_then(Value::as_str).unwrap_or_default();
            format!("{v}\n")
        }
        _ => String::new(),
    }
}

struct Line<'a> {
    ts: i64,
    labels: &'a Value,
    line: &'a str,
}

fn render_streams(result: &Value, output: Output, forward: bool) -> String {
    let mut lines: Vec<Line<'_>> = Vec::new();
    for s in result.as_array().into_iter().flatten() {
        let labels = s.get("stream").unwrap_or(&Value::Null);
        for v in s
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ts = v
                .get(0)
                .and_then(Value::as_str)
                .and_then(|t| t.parse().ok());
            let line = v.get(1).and_then(Value::as_str);
            if let (Some(ts), Some(line)) = (ts, line) {
                lines.push(Line { ts, labels, line });
            }
        }
    }
    // Streams arrive grouped by label set; a reader wants one timeline.
    lines.sort_by_key(|l| l.ts);
    if !forward {
        lines.reverse();
    }
    let mut out = String::new();
    for l in lines {
        let _ = match output {
            Output::Raw => writeln!(out, "{}", l.line),
            Output::Jsonl => writeln!(
                out,
                "{}",
                serde_json::json!({"timestamp": format_ns(l.ts), "labels": l.labels, "line": l.line})
            ),
            Output::Default => {
                writeln!(
                    out,
                    "{} {} {}",
                    format_ns(l.ts),
                    label_string(l.labels),
                    l.line
                )
            }
        };
    }
    out
}

fn render_matrix(result: &Value, output: Output) -> String {
    let mut out = String::new();
    for s in result.as_array().into_iter().flatten() {
        let metric = s.get("metric").unwrap_or(&Value::Null);
        let values = s.get("values").and_then(Value::as_array);
        if output == Output::Jsonl {
            for p in values.into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({"metric": metric, "timestamp": p.get(0), "value": p.get(1)})
                );
            }
            continue;
        }
        let _ = writeln!(out, "{}", label_string(metric));
        for p in values.into_iter().flatten() {
            let t = p.get(0).and_then(Value::as_f64).unwrap_or_default();
            let v = p.get(1).and_then(Value::as_str).unwrap_or_default();
            let _ = writeln!(out, "  {}  {v}", format_ns((t * 1e9) as i64));
        }
    }
    out
}

fn render_vector(result: &Value, output: Output) -> String {
    let rows: Vec<(String, String)> = result
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let metric = s.get("metric").unwrap_or(&Value::Null);
            let v = s
                .get("value")
                .and_then(|v| v.get(1))
                .and_then(Value::as_str)
                .unwrap_or_default();
            (label_string(metric), v.to_string())
        })
        .collect();
    let mut out = String::new();
    if output == Output::Jsonl {
        for s in result.as_array().into_iter().flatten() {
            let _ = writeln!(out, "{s}");
        }
        return out;
    }
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    for (labels, v) in rows {
        let _ = writeln!(out, "{labels:<width$}  {v}");
    }
    out
}

async fn tail(client: &Client, args: &QueryArgs) -> Result<(), Error> {
    let base = client.url("/loki/api/v1/tail");
    let ws_base = base
        .replacen("http://", "ws://", 1)
        .replacen("https://", "wss://", 1);
    let mut params = vec![
        ("query", args.query.clone()),
        ("limit", args.limit.to_string()),
    ];
    // As logcli: the replay starts at --from, else --since before now.
    let start = match &args.client.from {
        Some(from) => from.clone(),
        None => {
            let since = crate::api::params::parse_prom_duration(&args.client.since)
                .map_err(|e| Error::Param(format!("--since: {}", e.0)))?;
            crate::api::params::now_ns()
                .saturating_sub(since)
                .to_string()
        }
    };
    params.push(("start", start));
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    let url = format!("{ws_base}?{query}");
    let tail_err = |reason: String| Error::Tail {
        url: url.clone(),
        reason,
    };
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            url.as_str(),
        )
        .map_err(|e| tail_err(e.to_string()))?;
    if let Some(org) = &args.client.org_id {
        let value = org
            .parse()
            .map_err(|_| tail_err(format!("bad org id {org:?}")))?;
        request.headers_mut().insert("X-Scope-OrgID", value);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| tail_err(e.to_string()))?;
    while let Some(msg) = ws.next().await {
        let msg = msg.map_err(|e| tail_err(e.to_string()))?;
        let text = match msg {
            tokio_tungstenite::tungstenite::Message::Text(t) => t,
            tokio_tungstenite::tungstenite::Message::Close(_) => break,
            _ => continue,
        };
        let body: Value =
            serde_json::from_str(text.as_str()).map_err(|e| tail_err(e.to_string()))?;
        let streams = body.get("streams").cloned().unwrap_or(Value::Null);
        let out = render_streams(&streams, args.output, true);
        std::io::stdout().lock().write_all(out.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_print_as_one_timeline_newest_first_by_default() {
        let data = serde_json::json!({
            "resultType": "streams",
            "result": [
                {"stream": {"app": "a"}, "values": [["2000000000", "two"], ["1000000000", "one"]]},
                {"stream": {"app": "b"}, "values": [["1500000000", "mid"]]}
            ]
        });
        assert_eq!(
            render(&data, Output::Default, false),
            "1970-01-01T00:00:02.000000000Z {app=\"a\"} two\n\
             1970-01-01T00:00:01.500000000Z {app=\"b\"} mid\n\
             1970-01-01T00:00:01.000000000Z {app=\"a\"} one\n"
        );
        assert_eq!(render(&data, Output::Raw, true), "one\nmid\ntwo\n");
    }

    #[test]
    fn vectors_print_as_an_aligned_table() {
        let data = serde_json::json!({
            "resultType": "vector",
            "result": [
                {"metric": {"app": "api"}, "value": [1, "0.5"]},
                {"metric": {"app": "gateway"}, "value": [1, "12"]}
            ]
        });
        assert_eq!(
            render(&data, Output::Default, false),
            "{app=\"api\"}      0.5\n{app=\"gateway\"}  12\n"
        );
    }
}
