//! Metrics: the Prometheus registry behind `/metrics` and the metric families of every part.
//!
//! Owns one [`Metrics`] value per process. Families used by several modules are fields here
//! (`distributor`, `ingester`, `wal`, `retention`, `compactor`, `http`) so each part records into them
//! without knowing about the registry; a module that wants families of its own calls
//! [`Metrics::register`] once at start. Names follow `lode_<subsystem>_<thing>_<unit>`;
//! counters are registered without `_total`, which the encoder appends.
//!
//! It does not own what is measured or when; the owning module decides that.

use parking_lot::Mutex;
use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};

/// Labels `{tenant}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

/// Labels `{reason, tenant}` of discarded entries; `reason` is one of [`DiscardReason`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiscardLabels {
    pub reason: &'static str,
    pub tenant: String,
}

/// Labels `{route, method, status}` of HTTP requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

/// Why an entry was not stored. The label values are stable: dashboards and alerts use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiscardReason {
    RateLimited,
    LineTooLong,
    GreaterThanMaxSampleAge,
    TooFarInFuture,
    InvalidLabels,
    MaxLabelNamesPerSeries,
    LabelNameTooLong,
    LabelValueTooLong,
    StreamLimit,
    TooFarBehind,
    Duplicate,
}

impl DiscardReason {
    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DiscardReason::RateLimited => "rate_limited",
            DiscardReason::LineTooLong => "line_too_long",
            DiscardReason::GreaterThanMaxSampleAge => "greater_than_max_sample_age",
            DiscardReason::TooFarInFuture => "too_far_in_future",
            DiscardReason::InvalidLabels => "invalid_labels",
            DiscardReason::MaxLabelNamesPerSeries => "max_label_names_per_series",
            DiscardReason::LabelNameTooLong => "label_name_too_long",
            DiscardReason::LabelValueTooLong => "label_value_too_long",
            DiscardReason::StreamLimit => "stream_limit",
            DiscardReason::TooFarBehind => "too_far_behind",
            DiscardReason::Duplicate => "duplicate",
        }
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// What the distributor counts.
#[derive(Debug, Default)]
pub struct DistributorMetrics {
    /// `lode_distributor_received_lines_total{tenant}`: entries received, before validation.
    pub received_lines: Family<TenantLabels, Counter>,
    /// `lode_distributor_received_bytes_total{tenant}`: line bytes received.
    pub received_bytes: Family<TenantLabels, Counter>,
    /// `lode_discarded_samples_total{reason,tenant}`.
    pub discarded_samples: Family<DiscardLabels, Counter>,
    /// `lode_discarded_bytes_total{reason,tenant}`.
    pub discarded_bytes: Family<DiscardLabels, Counter>,
}

impl DistributorMetrics {
    /// Counts `lines` entries of `bytes` line bytes as discarded for `reason`.
    pub fn discard(&self, reason: DiscardReason, tenant: &str, lines: u64, bytes: u64) {
        self.discard_named(reason.as_str(), tenant, lines, bytes);
    }

    /// Like [`DistributorMetrics::discard`] for a reason named elsewhere (the ingester's
    /// `Rejected::reason`, e.g. `too_far_behind`).
    pub fn discard_named(&self, reason: &'static str, tenant: &str, lines: u64, bytes: u64) {
        let labels = DiscardLabels {
            reason,
            tenant: tenant.to_string(),
        };
        self.discarded_samples.get_or_create(&labels).inc_by(lines);
        self.discarded_bytes.get_or_create(&labels).inc_by(bytes);
    }
}

/// What the write-ahead log records.
#[derive(Debug)]
pub struct WalMetrics {
    /// `lode_wal_fsync_duration_seconds`: one observation per group commit.
    pub fsync_duration: Histogram,
    /// `lode_wal_records_total`.
    pub records: Counter,
    /// `lode_wal_bytes_written_total`.
    pub bytes_written: Counter,
    /// `lode_wal_corruptions_total`: WAL segments whose torn or corrupt tail was cut at
    /// replay.
    pub corruptions: Counter,
}

/// What the ingester records.
#[derive(Debug)]
pub struct IngesterMetrics {
    /// `lode_ingester_streams{tenant}`: streams with data in memory.
    pub active_streams: Family<TenantLabels, Gauge>,
    /// `lode_ingester_flushes_total`: segment objects written.
    pub flushes: Counter,
    /// `lode_ingester_flush_failures_total`.
    pub flush_failures: Counter,
    /// `lode_ingester_chunks_flushed_total`.
    pub chunks_flushed: Counter,
    /// `lode_ingester_chunk_compression_ratio`: raw bytes / compressed bytes per chunk.
    pub chunk_compression_ratio: Histogram,
    /// `lode_ingester_flush_duration_seconds`.
    pub flush_duration: Histogram,
    /// `lode_ingester_memory_bytes`: bytes held in head blocks and unflushed chunks.
    pub memory_bytes: Gauge,
}

/// What retention records.
#[derive(Debug, Default)]
pub struct RetentionMetrics {
    /// `lode_retention_deleted_objects_total{tenant}`.
    pub deleted_objects: Family<TenantLabels, Counter>,
    /// `lode_retention_deleted_bytes_total{tenant}`.
    pub deleted_bytes: Family<TenantLabels, Counter>,
    /// `lode_retention_runs_total`.
    pub runs: Counter,
}

/// What segment compaction records.
#[derive(Debug, Default)]
pub struct CompactorMetrics {
    /// `lode_compactor_compacted_segments_total{tenant}`: segments merged into others
    /// (and deleted).
    pub compacted_segments: Family<TenantLabels, Counter>,
    /// `lode_compactor_written_segments_total{tenant}`: segments written by merges.
    pub written_segments: Family<TenantLabels, Counter>,
    /// `lode_compactor_compacted_bytes_total{tenant}`: object bytes of the merged segments.
    pub compacted_bytes: Family<TenantLabels, Counter>,
    /// `lode_compactor_written_bytes_total{tenant}`: object bytes of the segments written.
    pub written_bytes: Family<TenantLabels, Counter>,
    /// `lode_compactor_failures_total{tenant}`: merges that failed (old segments kept).
    pub failures: Family<TenantLabels, Counter>,
    /// `lode_compactor_runs_total`: compaction passes completed.
    pub runs: Counter,
}

/// What the HTTP layer records.
#[derive(Debug)]
pub struct HttpMetrics {
    /// `lode_request_duration_seconds{route,method,status}`.
    pub request_duration: HistogramFamily<RequestLabels>,
}

/// The process's metrics and the registry that encodes them.
pub struct Metrics {
    pub distributor: DistributorMetrics,
    pub wal: WalMetrics,
    pub ingester: IngesterMetrics,
    pub retention: RetentionMetrics,
    pub compactor: CompactorMetrics,
    pub http: HttpMetrics,
    registry: Mutex<Registry>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates every shared family and registers it.
    pub fn new() -> Self {
        let metrics = Metrics {
            distributor: DistributorMetrics::default(),
            wal: WalMetrics {
                fsync_duration: latency_histogram(),
                records: Counter::default(),
                bytes_written: Counter::default(),
                corruptions: Counter::default(),
            },
            ingester: IngesterMetrics {
                active_streams: Family::default(),
                flushes: Counter::default(),
                flush_failures: Counter::default(),
                chunks_flushed: Counter::default(),
                chunk_compression_ratio: Histogram::new(exponential_buckets(1.0, 1.5, 12)),
                flush_duration: latency_histogram(),
                memory_bytes: Gauge::default(),
            },
            retention: RetentionMetrics::default(),
            compactor: CompactorMetrics::default(),
            http: HttpMetrics {
                request_duration: Family::new_with_constructor(latency_histogram),
            },
            registry: Mutex::new(Registry::default()),
        };
        {
            let mut r = metrics.registry.lock();
            let d = &metrics.distributor;
            r.register(
                "lode_distributor_received_lines",
                "Entries received by the distributor, before validation",
                d.received_lines.clone(),
            );
            r.register(
                "lode_distributor_received_bytes",
                "Line bytes received by the distributor, before validation",
                d.received_bytes.clone(),
            );
            r.register(
                "lode_discarded_samples",
                "Entries not stored, by reason",
                d.discarded_samples.clone(),
            );
            r.register(
                "lode_discarded_bytes",
                "Line bytes not stored, by reason",
                d.discarded_bytes.clone(),
            );
            let w = &metrics.wal;
            r.register(
                "lode_wal_fsync_duration_seconds",
                "Time to fsync one WAL group commit",
                w.fsync_duration.clone(),
            );
            r.register(
                "lode_wal_records",
                "WAL records appended",
                w.records.clone(),
            );
            r.register(
                "lode_wal_bytes_written",
                "WAL bytes appended",
                w.bytes_written.clone(),
            );
            r.register(
                "lode_wal_corruptions",
                "WAL segments whose torn or corrupt tail was cut at replay",
                w.corruptions.clone(),
            );
            let i = &metrics.ingester;
            r.register(
                "lode_ingester_streams",
                "Streams with data in the ingester's memory",
                i.active_streams.clone(),
            );
            r.register(
                "lode_ingester_flushes",
                "Segment objects written",
                i.flushes.clone(),
            );
            r.register(
                "lode_ingester_flush_failures",
                "Segment flushes that failed and will be retried",
                i.flush_failures.clone(),
            );
            r.register(
                "lode_ingester_chunks_flushed",
                "Chunks written into segments",
                i.chunks_flushed.clone(),
            );
            r.register(
                "lode_ingester_chunk_compression_ratio",
                "Raw line bytes divided by compressed bytes, per flushed chunk",
                i.chunk_compression_ratio.clone(),
            );
            r.register(
                "lode_ingester_flush_duration_seconds",
                "Time to write one segment",
                i.flush_duration.clone(),
            );
            r.register(
                "lode_ingester_memory_bytes",
                "Bytes held in head blocks and unflushed chunks",
                i.memory_bytes.clone(),
            );
            let t = &metrics.retention;
            r.register(
                "lode_retention_deleted_objects",
                "Segment objects deleted by retention",
                t.deleted_objects.clone(),
            );
            r.register(
                "lode_retention_deleted_bytes",
                "Bytes deleted by retention",
                t.deleted_bytes.clone(),
            );
            r.register(
                "lode_retention_runs",
                "Retention passes completed",
                t.runs.clone(),
            );
            let c = &metrics.compactor;
            r.register(
                "lode_compactor_compacted_segments",
                "Segments merged into larger ones by compaction",
                c.compacted_segments.clone(),
            );
            r.register(
                "lode_compactor_written_segments",
                "Segments written by compaction",
                c.written_segments.clone(),
            );
            r.register(
                "lode_compactor_compacted_bytes",
                "Object bytes of the segments compaction merged",
                c.compacted_bytes.clone(),
            );
            r.register(
                "lode_compactor_written_bytes",
                "Object bytes of the segments compaction wrote",
                c.written_bytes.clone(),
            );
            r.register(
                "lode_compactor_failures",
                "Segment merges that failed; their segments stay and are retried",
                c.failures.clone(),
            );
            r.register(
                "lode_compactor_runs",
                "Segment compaction passes completed",
                c.runs.clone(),
            );
            r.register(
                "lode_request_duration_seconds",
                "HTTP request latency by route, method and status",
                metrics.http.request_duration.clone(),
            );
        }
        metrics
    }

    /// Registers a family owned by another module. `name` follows `lode_<subsystem>_...`;
    /// for a counter, leave out `_total`.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry.lock().register(name, help, metric);
    }

    /// The OpenMetrics text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String only fails if a Display impl fails, which ours do not.
        let _ = encode(&mut out, &self.registry.lock());
        out
    }
}

/// `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discards_are_exposed_with_reason_and_tenant() {
        let m = Metrics::new();
        m.distributor
            .discard(DiscardReason::LineTooLong, "team-a", 2, 600_000);
        let text = m.encode();
        assert!(
            text.contains(
                r#"lode_discarded_samples_total{reason="line_too_long",tenant="team-a"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"lode_discarded_bytes_total{reason="line_too_long",tenant="team-a"} 600000"#
        ));
    }

    #[test]
    fn other_modules_can_register_their_own_families() {
        let m = Metrics::new();
        let c: Counter = Counter::default();
        m.register("lode_querier_queries", "Queries run", c.clone());
        c.inc();
        assert!(m.encode().contains("lode_querier_queries_total 1"));
    }
}
