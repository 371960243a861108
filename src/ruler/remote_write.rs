//! Remote write v1: recorded series to Prometheus (or Mimir, Thanos receive...).
//!
//! Owns the `prompb` messages (prost derive, no protoc), the snappy *block* encoded
//! body, and a bounded queue per destination drained by a background task that retries
//! 5xx, 429 and network errors with exponential backoff and drops a batch on other 4xx
//! (Prometheus answers 400 for out-of-bounds or duplicate samples; retrying cannot fix
//! those). It does not own producing the series (`recording`, `alerting`).
//!
//! ```text
//! POST <url>
//!   Content-Encoding: snappy            body = snappy block( WriteRequest )
//!   Content-Type: application/x-protobuf
//!   X-Prometheus-Remote-Write-Version: 0.1.0
//!   X-Scope-OrgID: <tenant>             unless add_org_id_header = false
//! WriteRequest { repeated TimeSeries timeseries = 1; }
//! TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
//! Label        { string name = 1; string value = 2; }       sorted by name
//! Sample       { double value = 1; int64 timestamp = 2; }   Unix ms
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prost::Message;
use tokio::sync::Notify;

use super::config::RemoteWriteClientConfig;
use super::metrics::RulerMetrics;
use super::recording::OutputSeries;
use crate::TenantId;

#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<PromSample>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PromSample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// Why a remote-write body could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum RemoteWriteError {
    #[error("snappy compression of a remote-write body failed: {0}")]
    Snappy(#[from] snap::Error),
    #[error("malformed remote-write protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

/// Encodes series as a snappy-block compressed `WriteRequest`. Labels are already
/// sorted (they come from a `BTreeMap`), which receivers expect.
pub fn encode(series: &[OutputSeries]) -> Result<Vec<u8>, RemoteWriteError> {
    let request = WriteRequest {
        timeseries: series
            .iter()
            .map(|s| TimeSeries {
                labels: s
                    .labels
                    .iter()
                    .map(|(name, value)| Label {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                samples: vec![PromSample {
                    value: s.value,
                    timestamp: s.timestamp_ms,
                }],
            })
            .collect(),
    };
    Ok(snap::raw::Encoder::new().compress_vec(&request.encode_to_vec())?)
}

/// Decodes a body produced by [`encode`] (for tests and debugging tools).
pub fn decode(body: &[u8]) -> Result<WriteRequest, RemoteWriteError> {
    let raw = snap::raw::Decoder::new().decompress_vec(body)?;
    Ok(WriteRequest::decode(raw.as_slice())?)
}

struct Batch {
    tenant: TenantId,
    series: Vec<OutputSeries>,
}

struct Destination {
    name: String,
    config: RemoteWriteClientConfig,
    queue: Mutex<VecDeque<Batch>>,
    wake: Notify,
}

/// Sends recorded series to every configured destination; cloning shares the queues.
#[derive(Clone)]
pub struct RemoteWriter {
    destinations: Arc<Vec<Arc<Destination>>>,
    client: reqwest::Client,
    add_org_id_header: bool,
    metrics: RulerMetrics,
}

impl std::fmt::Debug for RemoteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.destinations.iter().map(|d| d.name.as_str()).collect();
        f.debug_struct("RemoteWriter")
            .field("destinations", &names)
            .finish()
    }
}

impl RemoteWriter {
    pub fn new(
        clients: Vec<(String, RemoteWriteClientConfig)>,
        add_org_id_header: bool,
        metrics: RulerMetrics,
    ) -> RemoteWriter {
        let destinations = clients
            .into_iter()
            .map(|(name, config)| {
                Arc::new(Destination {
                    name,
                    config,
                    queue: Mutex::new(VecDeque::new()),
                    wake: Notify::new(),
                })
            })
            .collect();
        RemoteWriter {
            destinations: Arc::new(destinations),
            client: reqwest::Client::new(),
            add_org_id_header,
            metrics,
        }
    }

    /// Queues series for every destination; when a queue is full its oldest batch is
    /// dropped (and counted) so evaluation never waits on a slow receiver.
    pub fn enqueue(&self, tenant: &TenantId, series: Vec<OutputSeries>) {
        if series.is_empty() {
            return;
        }
        for dest in self.destinations.iter() {
            let mut queue = dest.queue.lock();
            while queue.len() >= dest.config.queue_capacity.max(1) {
                if let Some(dropped) = queue.pop_front() {
                    self.metrics
                        .remote_write_dropped(&dest.name, dropped.series.len() as u64);
                }
            }
            queue.push_back(Batch {
                tenant: tenant.clone(),
                series: series.clone(),
            });
            drop(queue);
            dest.wake.notify_one();
        }
    }

    /// Spawns one sender task per destination; they run until the runtime stops.
    pub fn spawn(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.destinations
            .iter()
            .map(|dest| {
                let this = self.clone();
                let dest = Arc::clone(dest);
                tokio::spawn(async move { this.run_destination(dest).await })
            })
            .collect()
    }

    async fn run_destination(&self, dest: Arc<Destination>) {
        loop {
            let batch = dest.queue.lock().pop_front();
            match batch {
                Some(batch) => self.send_with_retries(&dest, batch).await,
                None => dest.wake.notified().await,
            }
        }
    }

    async fn send_with_retries(&self, dest: &Destination, batch: Batch) {
        let count = batch.series.len() as u64;
        let body = match encode(&batch.series) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(destination = %dest.name, error = %e, "remote write: encoding failed; dropping batch");
                self.metrics.remote_write_dropped(&dest.name, count);
                return;
            }
        };
        let mut backoff = dest
            .config
            .min_backoff
            .as_duration()
            .max(Duration::from_millis(1));
        let max_backoff = dest.config.max_backoff.as_duration().max(backoff);
        for attempt in 0..=dest.config.max_retries {
            match self.post(dest, &batch.tenant, body.clone()).await {
                Ok(()) => {
                    self.metrics.remote_write_sent(&dest.name, count);
                    return;
                }
                Err(SendError::Permanent(why)) => {
                    tracing::warn!(destination = %dest.name, url = %dest.config.url, tenant = %batch.tenant, "remote write rejected, dropping {count} samples: {why}");
                    self.metrics.remote_write_dropped(&dest.name, count);
                    return;
                }
                Err(SendError::Retryable(why)) => {
                    self.metrics.remote_write_retried(&dest.name);
                    tracing::warn!(destination = %dest.name, url = %dest.config.url, attempt, "remote write failed, retrying in {backoff:?}: {why}");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(max_backoff);
        }
        tracing::error!(destination = %dest.name, url = %dest.config.url, "remote write: giving up after {} retries; dropping {count} samples (ruler.remote_write.clients.max_retries)", dest.config.max_retries);
        self.metrics.remote_write_dropped(&dest.name, count);
    }

    async fn post(
        &self,
        dest: &Destination,
        tenant: &TenantId,
        body: Vec<u8>,
    ) -> Result<(), SendError> {
        let mut request = self
            .client
            .post(&dest.config.url)
            .timeout(dest.config.remote_timeout.as_duration())
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .header(
                "User-Agent",
                concat!("lode-ruler/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in &dest.config.headers {
            if !k.eq_ignore_ascii_case("x-scope-orgid") {
                request = request.header(k, v);
            }
        }
        if self.add_org_id_header {
            request = request.header("X-Scope-OrgID", tenant.as_str());
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Retryable(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let why = format!("{status}: {}", text.trim());
        if status.is_server_error() || status.as_u16() == 429 {
            Err(SendError::Retryable(why))
        } else {
            Err(SendError::Permanent(why))
        }
    }
}

enum SendError {
    Retryable(String),
    Permanent(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn encoded_body_is_a_snappy_block_write_request_with_sorted_labels() {
        let series = vec![OutputSeries {
            labels: BTreeMap::from([
                ("app".to_string(), "api".to_string()),
                ("__name__".to_string(), "app:errors:rate5m".to_string()),
            ]),
            value: 0.5,
            timestamp_ms: 1_700_000_000_000,
        }];
        let body = encode(&series).unwrap();
        let request = decode(&body).unwrap();
        assert_eq!(request.timeseries.len(), 1);
        let ts = &request.timeseries[0];
        assert_eq!(ts.labels[0].name, "__name__");
        assert_eq!(ts.labels[1].name, "app");
        assert_eq!(ts.samples[0].value, 0.5);
        assert_eq!(ts.samples[0].timestamp, 1_700_000_000_000);
    }
}
