//! The shipper's Prometheus metrics, served on `/metrics`.
//!
//! Owns metric names, types and label sets (`lode_shipper_<thing>_<unit>`, counters end
//! in `_total`, drop reasons are stable snake_case values). Per-file series are labelled
//! by `path` and removed when the file is released, so cardinality follows the number of
//! open files, not history.

use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    pub path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormatLabel {
    pub format: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

/// Every metric the shipper exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub read_bytes: Family<PathLabel, Counter>,
    pub read_lines: Family<PathLabel, Counter>,
    pub file_lag_bytes: Family<PathLabel, Gauge>,
    pub open_files: Gauge,
    pub files_waiting: Gauge,
    pub files_opened: Counter,
    pub files_released: Counter,
    pub truncations: Counter,
    pub rescans: Counter,
    pub watch_errors: Counter,
    pub malformed_lines: Family<FormatLabel, Counter>,
    pub truncated_lines: Counter,
    pub invalid_utf8_lines: Counter,
    pub sent_entries: Counter,
    pub sent_bytes: Counter,
    pub encoded_bytes: Counter,
    pub requests: Family<StatusLabel, Counter>,
    pub retries: Counter,
    pub dropped_entries: Family<ReasonLabel, Counter>,
    pub dropped_bytes: Family<ReasonLabel, Counter>,
    pub buffered_bytes: Gauge,
    pub unacked_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub positions_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub positions_write_failures: Counter,
    pub positions_corrupt: Counter,
    pub disk_buffer_bytes: Gauge,
    pub disk_buffer_batches: Gauge,
    pub spooled_entries: Counter,
    pub disk_buffer_corrupt: Counter,
    pub kubernetes_errors: Counter,
    pub kubernetes_pods: Gauge,
    /// Unix milliseconds of the last successful positions write (0 = never).
    pub positions_written_at_ms: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lode_shipper");
        let m = Metrics {
            read_bytes: Family::default(),
            read_lines: Family::default(),
            file_lag_bytes: Family::default(),
            open_files: Gauge::default(),
            files_waiting: Gauge::default(),
            files_opened: Counter::default(),
            files_released: Counter::default(),
            truncations: Counter::default(),
            rescans: Counter::default(),
            watch_errors: Counter::default(),
            malformed_lines: Family::default(),
            truncated_lines: Counter::default(),
            invalid_utf8_lines: Counter::default(),
            sent_entries: Counter::default(),
            sent_bytes: Counter::default(),
            encoded_bytes: Counter::default(),
            requests: Family::default(),
            retries: Counter::default(),
            dropped_entries: Family::default(),
            dropped_bytes: Family::default(),
            buffered_bytes: Gauge::default(),
            unacked_age_seconds: Gauge::default(),
            positions_age_seconds: Gauge::default(),
            positions_write_failures: Counter::default(),
            positions_corrupt: Counter::default(),
            disk_buffer_bytes: Gauge::default(),
            disk_buffer_batches: Gauge::default(),
            spooled_entries: Counter::default(),
            disk_buffer_corrupt: Counter::default(),
            kubernetes_errors: Counter::default(),
            kubernetes_pods: Gauge::default(),
            positions_written_at_ms: AtomicI64::new(0),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("read_bytes", "Bytes read per file", m.read_bytes.clone());
        r.register(
            "read_lines",
            "Raw lines read per file",
            m.read_lines.clone(),
        );
        r.register(
            "file_lag_bytes",
            "Bytes written to a file but not read yet",
            m.file_lag_bytes.clone(),
        );
        r.register(
            "open_files",
            "Files currently open for tailing",
            m.open_files.clone(),
        );
        r.register(
            "files_waiting",
            "Files found but not opened because discovery.max_open_files is reached",
            m.files_waiting.clone(),
        );
        r.register(
            "files_opened",
            "Files opened for tailing",
            m.files_opened.clone(),
        );
        r.register(
            "files_released",
            "Files closed after being drained (rotated or deleted)",
            m.files_released.clone(),
        );
        r.register(
            "truncations",
            "Files found truncated or rewritten and read again from the start",
            m.truncations.clone(),
        );
        r.register("rescans", "Discovery scans", m.rescans.clone());
        r.register(
            "watch_errors",
            "inotify errors or overflows (discovery falls back to rescans)",
            m.watch_errors.clone(),
        );
        r.register(
            "malformed_lines",
            "Lines that did not parse in a CRI or Docker file, shipped verbatim",
            m.malformed_lines.clone(),
        );
        r.register(
            "truncated_lines",
            "Lines cut to pipeline.max_line_size",
            m.truncated_lines.clone(),
        );
        r.register(
            "invalid_utf8_lines",
            "Lines with invalid UTF-8, shipped with replacement characters",
            m.invalid_utf8_lines.clone(),
        );
        r.register(
            "sent_entries",
            "Entries acknowledged by the server",
            m.sent_entries.clone(),
        );
        r.register(
            "sent_bytes",
            "Line bytes acknowledged by the server",
            m.sent_bytes.clone(),
        );
        r.register(
            "encoded_bytes",
            "Compressed request bytes sent",
            m.encoded_bytes.clone(),
        );
        r.register(
            "requests",
            "Push requests by HTTP status (or `error` for connection failures)",
            m.requests.clone(),
        );
        r.register(
            "retries",
            "Push requests retried after 429, 5xx or a connection error",
            m.retries.clone(),
        );
        r.register(
            "dropped_entries",
            "Entries not shipped, by reason",
            m.dropped_entries.clone(),
        );
        r.register(
            "dropped_bytes",
            "Line bytes not shipped, by reason",
            m.dropped_bytes.clone(),
        );
        r.register(
            "buffered_bytes",
            "Line bytes read but not yet acknowledged",
            m.buffered_bytes.clone(),
        );
        r.register(
            "unacked_age_seconds",
            "Age of the oldest batch not yet acknowledged (0 when none)",
            m.unacked_age_seconds.clone(),
        );
        r.register(
            "positions_age_seconds",
            "Seconds since the positions file was last written",
            m.positions_age_seconds.clone(),
        );
        r.register(
            "positions_write_failures",
            "Failed positions file writes",
            m.positions_write_failures.clone(),
        );
        r.register(
            "positions_corrupt",
            "Positions files found unreadable at start",
            m.positions_corrupt.clone(),
        );
        r.register(
            "disk_buffer_bytes",
            "Bytes of batches waiting in the on-disk buffer",
            m.disk_buffer_bytes.clone(),
        );
        r.register(
            "disk_buffer_batches",
            "Batches waiting in the on-disk buffer",
            m.disk_buffer_batches.clone(),
        );
        r.register(
            "spooled_entries",
            "Entries written to the on-disk buffer after a failed push",
            m.spooled_entries.clone(),
        );
        r.register(
            "disk_buffer_corrupt",
            "Spooled batches found unreadable and deleted",
            m.disk_buffer_corrupt.clone(),
        );
        r.register(
            "kubernetes_errors",
            "Failed pod-list refreshes from the Kubernetes API (pod-label enrichment)",
            m.kubernetes_errors.clone(),
        );
        r.register(
            "kubernetes_pods",
            "Pods of this node in the last successful pod list",
            m.kubernetes_pods.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts `n` entries of `bytes` dropped for `reason`.
    pub fn dropped(&self, reason: &'static str, n: u64, bytes: u64) {
        self.dropped_entries
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n);
        self.dropped_bytes
            .get_or_create(&ReasonLabel { reason })
            .inc_by(bytes);
    }

    /// Forgets the per-file series of `path`.
    pub fn forget_file(&self, path: &str) {
        let l = PathLabel {
            path: path.to_string(),
        };
        self.read_bytes.remove(&l);
        self.read_lines.remove(&l);
        self.file_lag_bytes.remove(&l);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let written = self.positions_written_at_ms.load(Ordering::Relaxed);
        if written > 0 {
            let now = chrono::Utc::now().timestamp_millis();
            self.positions_age_seconds
                .set((now - written).max(0) as f64 / 1000.0);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_uses_the_lode_shipper_prefix_and_reason_labels() {
        let m = Metrics::new();
        m.dropped("bad_request", 2, 10);
        m.read_bytes
            .get_or_create(&PathLabel { path: "/a".into() })
            .inc_by(5);
        let text = m.encode();
        assert!(
            text.contains(r#"lode_shipper_dropped_entries_total{reason="bad_request"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"lode_shipper_read_bytes_total{path="/a"} 5"#),
            "{text}"
        );
        m.forget_file("/a");
        assert!(!m.encode().contains(r#"path="/a""#));
    }
}
