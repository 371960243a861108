//! Delivery of alerts to Alertmanager's v2 API.
//!
//! Owns the wire form (`POST <alertmanager_url>/api/v2/alerts`, a JSON array of
//! `labels`, `annotations`, `startsAt`, `endsAt`, `generatorURL`), adding external
//! labels, the `generatorURL` link, and a bounded queue drained in batches of at most
//! 256 by a background task that posts each batch to every Alertmanager with a timeout
//! and a few retries. When the queue is full the oldest alerts are dropped and counted:
//! evaluation never waits for Alertmanager. It does not own deciding what to send
//! (`alerting`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::alerting::Alert;
use super::metrics::{AlertmanagerLabels, RulerMetrics};

/// At most this many alerts per POST, as Prometheus' notifier.
pub const MAX_BATCH: usize = 256;
/// Attempts per batch and Alertmanager, for network errors and 5xx.
const ATTEMPTS: u32 = 3;

/// One alert as Alertmanager's v2 API takes it (`postableAlert`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PostableAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    #[serde(rename = "endsAt")]
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

/// Formats Unix ms as RFC 3339 with milliseconds, UTC.
pub fn rfc3339_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The link in `generatorURL`: Grafana Explore when `external_url` is set (with the
/// data source UID if known), else Lode's own query endpoint (a relative URL, which
/// Alertmanager accepts).
pub fn generator_url(external_url: &str, datasource_uid: &str, expr: &str) -> String {
    let expr = expr.trim();
    if external_url.is_empty() {
        // Any base will do: only the path and the encoded query are kept.
        return match reqwest::Url::parse_with_params(
            "http://lode.invalid/loki/api/v1/query",
            [("query", expr)],
        ) {
            Ok(url) => format!("{}?{}", url.path(), url.query().unwrap_or_default()),
            Err(_) => "/loki/api/v1/query".to_string(),
        };
    }
    let mut datasource = serde_json::json!({"type": "loki"});
    if !datasource_uid.is_empty() {
        datasource["uid"] = serde_json::Value::String(datasource_uid.to_string());
    }
    let left = serde_json::json!({
        "queries": [{"refId": "A", "expr": expr, "queryType": "range", "datasource": datasource}],
        "range": {"from": "now-1h", "to": "now"},
    });
    let explore = format!("{}/explore", external_url.trim_end_matches('/'));
    match reqwest::Url::parse_with_params(&explore, [("left", left.to_string())]) {
        Ok(url) => url.to_string(),
        Err(_) => explore,
    }
}

/// Builds the wire alert: `startsAt` = when it fired, `endsAt` = when it resolved or,
/// while firing, the validity deadline after which Alertmanager resolves it by itself.
pub fn to_postable(
    alert: &Alert,
    external_labels: &BTreeMap<String, String>,
    generator_url: &str,
) -> PostableAlert {
    let mut labels = alert.labels.clone();
    for (k, v) in external_labels {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let ends_at = alert
        .resolved_at_ms
        .or(alert.valid_until_ms)
        .unwrap_or(alert.active_at_ms);
    PostableAlert {
        labels,
        annotations: alert.annotations.clone(),
        starts_at: rfc3339_ms(alert.fired_at_ms.unwrap_or(alert.active_at_ms)),
        ends_at: rfc3339_ms(ends_at),
        generator_url: generator_url.to_string(),
    }
}

struct Inner {
    queue: Mutex<VecDeque<PostableAlert>>,
    capacity: usize,
    wake: Notify,
    endpoints: Vec<String>,
    timeout: Duration,
    client: reqwest::Client,
    metrics: RulerMetrics,
}

/// The alert queue and its sender; clones share the queue.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("endpoints", &self.inner.endpoints)
            .finish()
    }
}

impl Notifier {
    /// `alertmanager_urls` are base URLs; any path is kept as a prefix of `/api/v2/alerts`.
    pub fn new(
        alertmanager_urls: &[String],
        capacity: usize,
        timeout: Duration,
        metrics: RulerMetrics,
    ) -> Notifier {
        let endpoints = alertmanager_urls
            .iter()
            .map(|u| format!("{}/api/v2/alerts", u.trim_end_matches('/')))
            .collect();
        Notifier {
            inner: Arc::new(Inner {
                queue: Mutex::new(VecDeque::new()),
                capacity: capacity.max(1),
                wake: Notify::new(),
                endpoints,
                timeout,
                client: reqwest::Client::new(),
                metrics,
            }),
        }
    }

    /// True when at least one Alertmanager is configured.
    pub fn is_enabled(&self) -> bool {
        !self.inner.endpoints.is_empty()
    }

    /// Queues alerts; the oldest are dropped when the queue is full.
    pub fn send(&self, alerts: Vec<PostableAlert>) {
        if alerts.is_empty() || !self.is_enabled() {
            return;
        }
        let mut queue = self.inner.queue.lock();
        queue.extend(alerts);
        let overflow = queue.len().saturating_sub(self.inner.capacity);
        if overflow > 0 {
            queue.drain(..overflow);
            self.inner
                .metrics
                .notifications_dropped
                .inc_by(overflow as u64);
            tracing::warn!(
                "alert notification queue full: dropped {overflow} oldest alerts (ruler.notification_queue_capacity = {})",
                self.inner.capacity
            );
        }
        self.inner
            .metrics
            .notification_queue_length
            .set(i64::try_from(queue.len()).unwrap_or(i64::MAX));
        drop(queue);
        self.inner.wake.notify_one();
    }

    /// Spawns the sender; it runs until the runtime stops.
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move { this.run().await })
    }

    async fn run(&self) {
        loop {
            let batch: Vec<PostableAlert> = {
                let mut queue = self.inner.queue.lock();
                let n = queue.len().min(MAX_BATCH);
                let batch = queue.drain(..n).collect();
                self.inner
                    .metrics
                    .notification_queue_length
                    .set(i64::try_from(queue.len()).unwrap_or(i64::MAX));
                batch
            };
            if batch.is_empty() {
                self.inner.wake.notified().await;
                continue;
            }
            let body = match serde_json::to_vec(&batch) {
                Ok(b) => bytes::Bytes::from(b),
                Err(e) => {
                    tracing::error!("cannot encode alerts: {e}");
                    continue;
                }
            };
            let sends = self
                .inner
                .endpoints
                .iter()
                .map(|url| self.post_with_retries(url, body.clone(), batch.len() as u64));
            futures::future::join_all(sends).await;
        }
    }

    async fn post_with_retries(&self, url: &str, body: bytes::Bytes, count: u64) {
        let labels = AlertmanagerLabels {
            alertmanager: url.to_string(),
        };
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=ATTEMPTS {
            let result = self
                .inner
                .client
                .post(url)
                .timeout(self.inner.timeout)
                .header("Content-Type", "application/json")
                .header(
                    "User-Agent",
                    concat!("lode-ruler/", env!("CARGO_PKG_VERSION")),
                )
                .body(body.clone())
                .send()
                .await;
            let (retry, why) = match result {
                Ok(r) if r.status().is_success() => {
                    self.inner
                        .metrics
                        .notifications_sent
                        .get_or_create(&labels)
                        .inc_by(count);
                    return;
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    (
                        status.is_server_error() || status.as_u16() == 429,
                        format!("{status}: {}", text.trim()),
                    )
                }
                Err(e) => (true, e.to_string()),
            };
            tracing::warn!(
                alertmanager = url,
                attempt,
                "sending {count} alerts failed: {why}{}",
                if why.starts_with("404") {
                    " (is the Alertmanager behind a path prefix? put it in ruler.alertmanager_url)"
                } else {
                    ""
                }
            );
            if !retry || attempt == ATTEMPTS {
                break;
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        self.inner
            .metrics
            .notification_errors
            .get_or_create(&labels)
            .inc_by(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruler::alerting::AlertState;

    fn firing() -> Alert {
        Alert {
            labels: BTreeMap::from([
                ("alertname".into(), "HighErrorRate".into()),
                ("cluster".into(), "from-rule".into()),
            ]),
            annotations: BTreeMap::from([("summary".into(), "7%".into())]),
            value: 0.07,
            state: AlertState::Firing,
            active_at_ms: 1_000,
            fired_at_ms: Some(61_000),
            resolved_at_ms: None,
            last_sent_at_ms: Some(61_000),
            valid_until_ms: Some(301_000),
            keep_firing_since_ms: None,
        }
    }

    #[test]
    fn firing_alert_ends_at_valid_until_and_keeps_its_own_labels_over_external_ones() {
        let external = BTreeMap::from([
            ("cluster".to_string(), "eu-1".to_string()),
            ("region".to_string(), "eu".to_string()),
        ]);
        let p = to_postable(&firing(), &external, "http://g/explore");
        assert_eq!(p.starts_at, "1970-01-01T00:01:01.000Z");
        assert_eq!(p.ends_at, "1970-01-01T00:05:01.000Z");
        assert_eq!(p.labels["cluster"], "from-rule");
        assert_eq!(p.labels["region"], "eu");
        let json = serde_json::to_value(&p).unwrap();
        assert!(json.get("generatorURL").is_some());
        assert!(json.get("startsAt").is_some());
    }

    #[test]
    fn resolved_alert_ends_at_its_resolution_time() {
        let mut a = firing();
        a.state = AlertState::Inactive;
        a.resolved_at_ms = Some(121_000);
        let p = to_postable(&a, &BTreeMap::new(), "");
        assert_eq!(p.ends_at, "1970-01-01T00:02:01.000Z");
    }

    #[test]
    fn generator_url_links_to_grafana_explore_or_to_lode() {
        let g = generator_url(
            "http://grafana:3000/",
            "abc",
            "sum(rate({app=\"api\"}[5m]))",
        );
        assert!(g.starts_with("http://grafana:3000/explore?left=%7B"), "{g}");
        assert!(reqwest::Url::parse(&g).is_ok(), "{g}");
        assert!(g.contains("abc"), "{g}");
        assert!(!g.contains(' ') && !g.contains('"'), "{g}");
        let own = generator_url("", "", "sum(rate({app=\"api\"}[5m]))");
        assert_eq!(
            own,
            "/loki/api/v1/query?query=sum%28rate%28%7Bapp%3D%22api%22%7D%5B5m%5D%29%29"
        );
    }

    #[test]
    fn full_queue_drops_the_oldest_alerts_and_counts_them() {
        let metrics = RulerMetrics::default();
        let n = Notifier::new(
            &["http://127.0.0.1:9".to_string()],
            2,
            Duration::from_secs(1),
            metrics.clone(),
        );
        let alert = |name: &str| {
            let mut a = to_postable(&firing(), &BTreeMap::new(), "");
            a.labels.insert("alertname".into(), name.into());
            a
        };
        n.send(vec![alert("a"), alert("b"), alert("c")]);
        let queue = n.inner.queue.lock();
        let names: Vec<_> = queue
            .iter()
            .map(|a| a.labels["alertname"].clone())
            .collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(metrics.notifications_dropped.get(), 1);
    }
}
