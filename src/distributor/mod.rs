//! Distributor: validates pushed streams per tenant before they reach the ingester.
//!
//! Owns Loki's push-side checks, in Loki's order: label syntax, label count and name/value
//! lengths (a bad stream is dropped whole); per entry, timestamps older than
//! `reject_old_samples_max_age` or further than `creation_grace_period` in the future and
//! lines over `max_line_size` (dropped, or cut with `max_line_size_truncate`); then the
//! tenant's token-bucket ingestion rate (the whole push is refused, 429) and the active
//! stream limit (new streams over it are dropped, 429). It adds `service_name` to streams
//! that lack it and `detected_level` metadata to entries ([`discovery`]). Whatever passes
//! goes to the ingester in one call, so valid entries of a bad request are stored (Loki's
//! partial accept); every drop is counted in `lode_discarded_{samples,bytes}_total`.
//!
//! It does not own decoding (`api::push`), durability, ordering or duplicate checks (the
//! ingester's), nor the limit values (`limits`).

pub mod discovery;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lode_push::{Entry, LabelSet, PushRequest};
use parking_lot::Mutex;

use crate::clock::Clock;
use crate::ingester::{self, Ingester};
use crate::limits::{IngestionRateLimiter, Limits, LimitsConfig};
use crate::metrics::{DiscardReason, Metrics, TenantLabels};
use crate::tenant::TenantId;

/// At most this many messages are listed in one error answer; the rest are counted.
const MAX_MESSAGES: usize = 20;
/// Label values quoted in messages are cut to this many bytes.
const MAX_QUOTED: usize = 120;

/// Why a push was not (wholly) stored. Entries not named here were stored.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("error at least one valid stream is required for ingestion")]
    NoStreams,
    /// The whole push was refused; nothing was stored.
    #[error("{0}")]
    RateLimited(String),
    /// Some entries or streams were refused, the rest stored. `limited` is true when a
    /// limit (not bad input) refused some, so the client should retry later (429).
    #[error("{}", join_messages(.messages, *.total))]
    Rejected {
        messages: Vec<String>,
        total: usize,
        limited: bool,
    },
    /// The WAL or storage failed; nothing of this push is acknowledged.
    #[error("push failed: {0}")]
    Ingester(#[from] ingester::Error),
}

fn join_messages(messages: &[String], total: usize) -> String {
    let mut out = messages.join("\n");
    if total > messages.len() {
        out.push_str(&format!("\n... and {} more errors", total - messages.len()));
    }
    out
}

/// What a successful push stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushSummary {
    pub accepted_entries: usize,
    pub accepted_bytes: usize,
}

/// One group of dropped entries and, unless the drop is silent, the message for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discard {
    pub reason: &'static str,
    pub entries: usize,
    pub bytes: usize,
    pub message: Option<String>,
}

/// The outcome of validating one push against one tenant's limits.
#[derive(Debug, Default)]
pub struct Validated {
    pub streams: Vec<(LabelSet, Vec<Entry>)>,
    pub entries: usize,
    pub bytes: usize,
    pub discards: Vec<Discard>,
}

/// Validates streams, enforces rate and stream limits, and hands the rest to the ingester.
pub struct Distributor {
    limits: Arc<Limits>,
    rate: IngestionRateLimiter,
    metrics: Arc<Metrics>,
    ingester: Arc<Ingester>,
    clock: Arc<dyn Clock>,
    active: Mutex<HashMap<TenantId, HashMap<u64, i64>>>,
    stream_idle_ns: i64,
}

impl std::fmt::Debug for Distributor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributor").finish_non_exhaustive()
    }
}

impl Distributor {
    /// `stream_idle` is how long a stream counts as active after its last push towards
    /// `max_global_streams_per_user` (the ingester's `chunk_idle_period`: after it, the
    /// stream's head is flushed and it leaves memory).
    pub fn new(
        limits: Arc<Limits>,
        metrics: Arc<Metrics>,
        ingester: Arc<Ingester>,
        clock: Arc<dyn Clock>,
        stream_idle: Duration,
    ) -> Self {
        Distributor {
            limits,
            rate: IngestionRateLimiter::new(),
            metrics,
            ingester,
            clock,
            active: Mutex::new(HashMap::new()),
            stream_idle_ns: i64::try_from(stream_idle.as_nanos()).unwrap_or(i64::MAX),
        }
    }

    /// Validates and stores one decoded push of `tenant`.
    pub async fn push(&self, tenant: &TenantId, req: PushRequest) -> Result<PushSummary, Error> {
        if req.streams.is_empty() {
            return Err(Error::NoStreams);
        }
        let limits = self.limits.for_tenant(tenant);
        let (lines, bytes) = req.streams.iter().fold((0u64, 0u64), |(l, b), s| {
            (
                l + s.entries.len() as u64,
                b + s.entries.iter().map(|e| e.line.len() as u64).sum::<u64>(),
            )
        });
        let tenant_labels = TenantLabels {
            tenant: tenant.to_string(),
        };
        let dm = &self.metrics.distributor;
        dm.received_lines
            .get_or_create(&tenant_labels)
            .inc_by(lines);
        dm.received_bytes
            .get_or_create(&tenant_labels)
            .inc_by(bytes);

        let now_ns = self.clock.now_ns();
        let mut validated = validate(req, &limits, now_ns);

        if validated.bytes > 0
            && !self
                .rate
                .allow(tenant, validated.bytes as u64, &limits, Instant::now())
        {
            self.count(
                tenant,
                DiscardReason::RateLimited.as_str(),
                validated.entries,
                validated.bytes,
            );
            for d in &validated.discards {
                self.count(tenant, d.reason, d.entries, d.bytes);
            }
            return Err(Error::RateLimited(format!(
                "ingestion rate limit exceeded for user {tenant} (limit: {} bytes/sec) while attempting to ingest '{}' lines totaling '{}' bytes, reduce log volume or raise limits_config.ingestion_rate_mb ({}) and ingestion_burst_size_mb ({})",
                limits.ingestion_rate_bytes() as u64,
                validated.entries,
                validated.bytes,
                limits.ingestion_rate_mb,
                limits.ingestion_burst_size_mb,
            )));
        }

        self.enforce_stream_limit(tenant, &limits, now_ns, &mut validated);

        let mut summary = PushSummary::default();
        if !validated.streams.is_empty() {
            let outcome = self.ingester.push(tenant, validated.streams).await?;
            summary.accepted_entries = outcome.accepted_entries;
            summary.accepted_bytes = outcome.accepted_bytes;
            for r in outcome.rejected {
                // Loki drops exact duplicates silently; everything else is reported.
                let message = (r.reason != DiscardReason::Duplicate.as_str()).then_some(r.message);
                validated.discards.push(Discard {
                    reason: r.reason,
                    entries: r.entries,
                    bytes: r.bytes,
                    message,
                });
            }
        }

        let mut messages = Vec::new();
        let mut total = 0;
        let mut limited = false;
        for d in &validated.discards {
            self.count(tenant, d.reason, d.entries, d.bytes);
            if let Some(m) = &d.message {
                total += 1;
                limited |= d.reason == DiscardReason::StreamLimit.as_str();
                if messages.len() < MAX_MESSAGES {
                    messages.push(m.clone());
                }
            }
        }
        if total > 0 {
            return Err(Error::Rejected {
                messages,
                total,
                limited,
            });
        }
        Ok(summary)
    }

    fn count(&self, tenant: &TenantId, reason: &'static str, entries: usize, bytes: usize) {
        self.metrics.distributor.discard_named(
            reason,
            tenant.as_str(),
            entries as u64,
            bytes as u64,
        );
    }

    /// Drops streams that would take the tenant over `max_global_streams_per_user`.
    fn enforce_stream_limit(
        &self,
        tenant: &TenantId,
        limits: &LimitsConfig,
        now_ns: i64,
        validated: &mut Validated,
    ) {
        let max = limits.max_global_streams_per_user;
        if max == 0 {
            return;
        }
        let mut active = self.active.lock();
        let seen = active.entry(tenant.clone()).or_default();
        let idle_before = now_ns.saturating_sub(self.stream_idle_ns);
        let mut pruned = false;
        let streams = std::mem::take(&mut validated.streams);
        for (labels, entries) in streams {
            let key = stream_hash(&labels);
            if let Some(last) = seen.get_mut(&key) {
                *last = now_ns;
            } else {
                if seen.len() >= max && !pruned {
                    seen.retain(|_, last| *last >= idle_before);
                    pruned = true;
                }
                if seen.len() >= max {
                    let bytes = entries.iter().map(|e| e.line.len()).sum();
                    validated.discards.push(Discard {
                        reason: DiscardReason::StreamLimit.as_str(),
                        entries: entries.len(),
                        bytes,
                        message: Some(format!(
                            "maximum active stream limit exceeded when pushing to stream '{labels}': tenant '{tenant}' has {} active streams (limits_config.max_global_streams_per_user = {max}); reduce the number of label values or raise the limit",
                            seen.len()
                        )),
                    });
                    continue;
                }
                seen.insert(key, now_ns);
            }
            validated.streams.push((labels, entries));
        }
    }
}

fn stream_hash(labels: &LabelSet) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    labels.hash(&mut h);
    h.finish()
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

fn quoted(s: &str) -> String {
    if s.len() <= MAX_QUOTED {
        s.to_string()
    } else {
        format!("{}...", cut(s, MAX_QUOTED))
    }
}

/// RFC 3339 with nanoseconds, as Loki prints timestamps in its messages.
fn format_ts(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Checks one push against one tenant's limits, without side effects: the pure part of
/// [`Distributor::push`].
pub fn validate(req: PushRequest, limits: &LimitsConfig, now_ns: i64) -> Validated {
    let mut out = Validated::default();
    let oldest_ns = now_ns.saturating_sub(limits.reject_old_samples_max_age.as_nanos_i64());
    let newest_ns = now_ns.saturating_add(limits.creation_grace_period.as_nanos_i64());
    let max_line = limits.max_line_size.as_usize();
    let mut by_stream: HashMap<LabelSet, usize> = HashMap::new();

    for stream in req.streams {
        let entries = stream.entries.len();
        let bytes: usize = stream.entries.iter().map(|e| e.line.len()).sum();
        let drop_stream = |reason: DiscardReason, message: String| Discard {
            reason: reason.as_str(),
            entries,
            bytes,
            message: Some(message),
        };
        let labels = match LabelSet::parse(&stream.labels) {
            Ok(l) if l.is_empty() => {
                out.discards.push(drop_stream(
                    DiscardReason::InvalidLabels,
                    "error at least one label pair is required per stream".into(),
                ));
                continue;
            }
            Ok(l) => l,
            Err(e) => {
                out.discards.push(drop_stream(
                    DiscardReason::InvalidLabels,
                    format!(
                        "error parsing labels '{}' with error: {e}",
                        quoted(&stream.labels)
                    ),
                ));
                continue;
            }
        };
        if let Some(d) = check_labels(&labels, limits) {
            out.discards.push(drop_stream(d.0, d.1));
            continue;
        }
        let labels = discovery::with_service_name(labels, &limits.discover_service_name);
        let stream_level = discovery::stream_level(&labels);

        let mut kept = Vec::with_capacity(stream.entries.len());
        for mut entry in stream.entries {
            let len = entry.line.len();
            let mut reject = |reason: DiscardReason, message: String| {
                out.discards.push(Discard {
                    reason: reason.as_str(),
                    entries: 1,
                    bytes: len,
                    message: Some(message),
                })
            };
            if limits.reject_old_samples && entry.timestamp_ns < oldest_ns {
                reject(
                    DiscardReason::GreaterThanMaxSampleAge,
                    format!(
                        "entry for stream '{labels}' has timestamp too old: {}, oldest acceptable timestamp is: {} (limits_config.reject_old_samples_max_age = {})",
                        format_ts(entry.timestamp_ns),
                        format_ts(oldest_ns),
                        limits.reject_old_samples_max_age
                    ),
                );
                continue;
            }
            if entry.timestamp_ns > newest_ns {
                reject(
                    DiscardReason::TooFarInFuture,
                    format!(
                        "entry for stream '{labels}' has timestamp too new: {}, newest acceptable timestamp is: {} (limits_config.creation_grace_period = {})",
                        format_ts(entry.timestamp_ns),
                        format_ts(newest_ns),
                        limits.creation_grace_period
                    ),
                );
                continue;
            }
            if max_line > 0 && len > max_line {
                if limits.max_line_size_truncate {
                    let keep = cut(&entry.line, max_line).len();
                    entry.line.truncate(keep);
                } else {
                    reject(
                        DiscardReason::LineTooLong,
                        format!(
                            "line too long: {len} bytes for stream '{labels}' (limits_config.max_line_size = {}); shorten the line, raise the limit or set max_line_size_truncate",
                            limits.max_line_size
                        ),
                    );
                    continue;
                }
            }
            if limits.discover_log_levels {
                discovery::add_detected_level(stream_level, &mut entry);
            }
            out.entries += 1;
            out.bytes += entry.line.len();
            kept.push(entry);
        }
        if kept.is_empty() {
            continue;
        }
        // Several streams of one push may name the same label set in different orders.
        match by_stream.get(&labels) {
            Some(&i) => {
                if let Some((_, v)) = out.streams.get_mut(i) {
                    v.extend(kept);
                }
            }
            None => {
                by_stream.insert(labels.clone(), out.streams.len());
                out.streams.push((labels, kept));
            }
        }
    }
    out
}

/// Label count and length checks; `Some` drops the whole stream.
fn check_labels(labels: &LabelSet, limits: &LimitsConfig) -> Option<(DiscardReason, String)> {
    if labels.len() > limits.max_label_names_per_series {
        return Some((
            DiscardReason::MaxLabelNamesPerSeries,
            format!(
                "entry for stream '{labels}' has {} label names; limit {} (limits_config.max_label_names_per_series)",
                labels.len(),
                limits.max_label_names_per_series
            ),
        ));
    }
    for (name, value) in labels.iter() {
        if name.len() > limits.max_label_name_length {
            return Some((
                DiscardReason::LabelNameTooLong,
                format!(
                    "stream '{}' has label name too long: '{}' ({} bytes, limits_config.max_label_name_length = {})",
                    quoted(&labels.to_string()),
                    quoted(name),
                    name.len(),
                    limits.max_label_name_length
                ),
            ));
        }
        if value.len() > limits.max_label_value_length {
            return Some((
                DiscardReason::LabelValueTooLong,
                format!(
                    "stream '{}' has label value too long: '{}' ({} bytes, limits_config.max_label_value_length = {})",
                    quoted(&labels.to_string()),
                    quoted(value),
                    value.len(),
                    limits.max_label_value_length
                ),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::ByteSize;
    use lode_push::PushStream;

    const NOW: i64 = 1_700_000_000_000_000_000;
    const HOUR: i64 = 3_600_000_000_000;

    fn entry(ts: i64, line: &str) -> Entry {
        Entry {
            timestamp_ns: ts,
            line: line.into(),
            structured_metadata: Default::default(),
        }
    }

    fn push(streams: &[(&str, Vec<Entry>)]) -> PushRequest {
        PushRequest {
            streams: streams
                .iter()
                .map(|(l, e)| PushStream {
                    labels: l.to_string(),
                    entries: e.clone(),
                })
                .collect(),
        }
    }

    fn plain_limits() -> LimitsConfig {
        LimitsConfig {
            discover_log_levels: false,
            discover_service_name: vec![],
            ..Default::default()
        }
    }

    fn messages(v: &Validated) -> Vec<String> {
        v.discards
            .iter()
            .filter_map(|d| d.message.clone())
            .collect()
    }

    #[test]
    fn valid_entries_pass_and_bad_ones_are_named() {
        let v = validate(
            push(&[
                (
                    r#"{app="api"}"#,
                    vec![
                        entry(NOW, "ok"),
                        entry(NOW - 200 * HOUR, "old"),
                        entry(NOW + HOUR, "future"),
                    ],
                ),
                (r#"{app="#, vec![entry(NOW, "x")]),
                ("{}", vec![entry(NOW, "y")]),
            ]),
            &plain_limits(),
            NOW,
        );
        assert_eq!(v.entries, 1);
        assert_eq!(v.streams.len(), 1);
        assert_eq!(v.streams[0].1[0].line, "ok");
        let m = messages(&v);
        assert_eq!(m.len(), 4, "{m:?}");
        assert!(
            m[0].starts_with(r#"entry for stream '{app="api"}' has timestamp too old: "#),
            "{}",
            m[0]
        );
        assert!(
            m[0].contains("reject_old_samples_max_age = 168h"),
            "{}",
            m[0]
        );
        assert!(m[1].contains("timestamp too new"), "{}", m[1]);
        assert!(m[1].contains("creation_grace_period"), "{}", m[1]);
        assert!(
            m[2].starts_with("error parsing labels '{app=' with error:"),
            "{}",
            m[2]
        );
        assert_eq!(m[3], "error at least one label pair is required per stream");
    }

    #[test]
    fn old_samples_pass_when_reject_old_samples_is_off() {
        let limits = LimitsConfig {
            reject_old_samples: false,
            ..plain_limits()
        };
        let v = validate(
            push(&[(r#"{a="b"}"#, vec![entry(1, "ancient")])]),
            &limits,
            NOW,
        );
        assert_eq!(v.entries, 1);
        assert!(v.discards.is_empty());
    }

    #[test]
    fn sixteen_label_names_drop_the_stream() {
        let labels: Vec<String> = (0..16).map(|i| format!("l{i}=\"v\"")).collect();
        let sel = format!("{{{}}}", labels.join(","));
        let v = validate(
            push(&[(&sel, vec![entry(NOW, "a"), entry(NOW, "b")])]),
            &plain_limits(),
            NOW,
        );
        assert_eq!(v.entries, 0);
        assert_eq!(v.discards[0].reason, "max_label_names_per_series");
        assert_eq!(v.discards[0].entries, 2);
        assert!(v.discards[0]
            .message
            .as_deref()
            .unwrap_or("")
            .contains("has 16 label names; limit 15"));
    }

    #[test]
    fn long_label_values_and_names_are_refused() {
        let limits = LimitsConfig {
            max_label_value_length: 4,
            max_label_name_length: 6,
            ..plain_limits()
        };
        let v = validate(
            push(&[(r#"{a="12345"}"#, vec![entry(NOW, "x")])]),
            &limits,
            NOW,
        );
        assert_eq!(v.discards[0].reason, "label_value_too_long");
        let v = validate(
            push(&[(r#"{abcdefg="1"}"#, vec![entry(NOW, "x")])]),
            &limits,
            NOW,
        );
        assert_eq!(v.discards[0].reason, "label_name_too_long");
        assert!(v.discards[0]
            .message
            .as_deref()
            .unwrap_or("")
            .contains("max_label_name_length = 6"));
    }

    #[test]
    fn long_lines_are_refused_or_truncated() {
        let mut limits = LimitsConfig {
            max_line_size: ByteSize(5),
            ..plain_limits()
        };
        let v = validate(
            push(&[(r#"{a="b"}"#, vec![entry(NOW, "123456"), entry(NOW, "123")])]),
            &limits,
            NOW,
        );
        assert_eq!(v.entries, 1);
        assert_eq!(v.discards[0].reason, "line_too_long");
        assert_eq!(v.discards[0].bytes, 6);
        assert!(
            v.discards[0].message.as_deref().unwrap_or("").starts_with(
                "line too long: 6 bytes for stream '{a=\"b\"}' (limits_config.max_line_size = 5)"
            ),
            "{:?}",
            v.discards[0].message
        );
        limits.max_line_size_truncate = true;
        let v = validate(
            push(&[(r#"{a="b"}"#, vec![entry(NOW, "12345é")])]),
            &limits,
            NOW,
        );
        assert_eq!(v.streams[0].1[0].line, "12345");
    }

    #[test]
    fn streams_with_the_same_labels_are_merged() {
        let v = validate(
            push(&[
                (r#"{a="1",b="2"}"#, vec![entry(NOW, "x")]),
                (r#"{b="2",a="1"}"#, vec![entry(NOW + 1, "y")]),
            ]),
            &plain_limits(),
            NOW,
        );
        assert_eq!(v.streams.len(), 1);
        assert_eq!(v.streams[0].1.len(), 2);
    }

    #[test]
    fn service_name_and_detected_level_are_added_by_default() {
        let v = validate(
            push(&[(r#"{app="api"}"#, vec![entry(NOW, "level=error msg=boom")])]),
            &LimitsConfig::default(),
            NOW,
        );
        let (labels, entries) = &v.streams[0];
        assert_eq!(labels.get("service_name"), Some("api"));
        assert_eq!(
            entries[0].structured_metadata,
            vec![("detected_level".to_string(), "error".to_string())]
        );
    }
}
