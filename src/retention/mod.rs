//! Retention: the compactor loop that deletes data older than a tenant's retention period,
//! and the cut-off reads apply so they never return such data even before it is deleted.
//!
//! Owns enforcing the `compactor:` section (`retention_enabled`, `compaction_interval`;
//! the struct is [`crate::config::CompactorConfig`]) and its loop — each interval a
//! retention pass, then a segment compaction pass ([`crate::compaction`], which leaves
//! alone any segment holding data past retention) — the cut-off arithmetic (`limits_config.retention_period`, per-tenant overrides, per-stream
//! `retention_stream` rules where the highest priority match wins), and the deletion
//! itself: a segment whose every chunk is past its stream's cut-off is deleted as a whole
//! object; a segment where only some streams' chunks are past theirs is rewritten without
//! them (the new segment names the old one in `replaces`, so a crash mid-rewrite is
//! finished at the next start) and the old object deleted. Segments are immutable: nothing
//! is ever edited in place.
//!
//! It does not own where retention values come from (`limits`), the segment format or the
//! object store (`storage`), nor filtering query results (the read path calls
//! [`Retention::cutoff_ns`] / [`Retention::stream_cutoff_ns`]).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use lode_push::LabelSet;
use parking_lot::Mutex;
use query_lang::Matcher;

use crate::compaction::{CompactionOptions, Compactor};
pub use crate::config::CompactorConfig;
use crate::limits::{Limits, LimitsConfig};
use crate::metrics::{Metrics, TenantLabels};
use crate::storage::segment::CopiedChunk;
use crate::storage::{SegmentMeta, Storage};
use crate::tenant::TenantId;

/// Why a retention pass could not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] crate::storage::Error),
    #[error("{0}")]
    Config(String),
}

/// What one retention pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Segment objects deleted whole.
    pub deleted_segments: usize,
    /// Segments rewritten without their expired streams.
    pub rewritten_segments: usize,
    /// Object bytes deleted (the old object's size, for rewrites too).
    pub deleted_bytes: u64,
}

/// The cut-off of a tenant from its limits alone: entries older than this are past
/// retention. `i64::MIN` when `retention_period` is 0 (keep forever).
pub fn cutoff_ns(limits: &Limits, tenant: &TenantId, now_ns: i64) -> i64 {
    period_cutoff(&limits.for_tenant(tenant).retention_period.0, now_ns)
}

fn period_cutoff(period: &Duration, now_ns: i64) -> i64 {
    if period.is_zero() {
        return i64::MIN;
    }
    let period = i64::try_from(period.as_nanos()).unwrap_or(i64::MAX);
    now_ns.saturating_sub(period)
}

/// A parsed `retention_stream` rule.
#[derive(Clone, Debug)]
struct StreamRule {
    matchers: Vec<Matcher>,
    priority: u32,
    period: Duration,
}

/// The compactor: retention cut-offs and the loop that enforces them.
pub struct Retention {
    cfg: CompactorConfig,
    storage: Arc<Storage>,
    limits: Arc<Limits>,
    /// Parsed rule sets, keyed by the selector text, so reads do not re-parse per stream.
    rules: Mutex<HashMap<String, Option<Vec<Matcher>>>>,
    metrics: arc_swap::ArcSwapOption<Metrics>,
    /// Segment compaction, run after each retention pass; `None` when disabled.
    compactor: Option<Compactor>,
}

impl std::fmt::Debug for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Retention {
    pub fn new(
        cfg: CompactorConfig,
        storage: Arc<Storage>,
        limits: Arc<Limits>,
    ) -> Result<Arc<Retention>, Error> {
        if cfg.compaction_interval.0.is_zero() {
            return Err(Error::Config(
                "compactor.compaction_interval is 0s: use a positive duration such as 10m".into(),
            ));
        }
        let compactor = cfg
            .segment_compaction_enabled
            .then(|| Compactor::new(CompactionOptions::from_config(&cfg), storage.clone()));
        Ok(Arc::new(Retention {
            cfg,
            storage,
            limits,
            compactor,
            rules: Mutex::new(HashMap::new()),
            metrics: arc_swap::ArcSwapOption::empty(),
        }))
    }

    /// Sends `lode_retention_*` counters to the process's registry from now on.
    pub fn set_metrics(&self, metrics: Arc<Metrics>) {
        if let Some(c) = &self.compactor {
            c.set_metrics(metrics.clone());
        }
        self.metrics.store(Some(metrics));
    }

    /// Entries of `tenant` older than this are past retention; `i64::MIN` when retention
    /// is disabled or the tenant's `retention_period` is 0.
    pub fn cutoff_ns(&self, tenant: &TenantId, now_ns: i64) -> i64 {
        if !self.cfg.retention_enabled {
            return i64::MIN;
        }
        cutoff_ns(&self.limits, tenant, now_ns)
    }

    /// The cut-off of one stream: its highest-priority matching `retention_stream` rule,
    /// else the tenant's.
    pub fn stream_cutoff_ns(&self, tenant: &TenantId, labels: &LabelSet, now_ns: i64) -> i64 {
        if !self.cfg.retention_enabled {
            return i64::MIN;
        }
        let limits = self.limits.for_tenant(tenant);
        let rules = self.stream_rules(&limits);
        stream_cutoff(&rules, &limits, labels, now_ns)
    }

    fn stream_rules(&self, limits: &LimitsConfig) -> Vec<StreamRule> {
        let mut cache = self.rules.lock();
        limits
            .retention_stream
            .iter()
            .filter_map(|r| {
                let parsed = cache
                    .entry(r.selector.clone())
                    .or_insert_with(|| parse_selector(&r.selector));
                parsed.as_ref().map(|matchers| StreamRule {
                    matchers: matchers.clone(),
                    priority: r.priority,
                    period: r.period.0,
                })
            })
            .collect()
    }

    /// Spawns the compactor loop: every `compaction_interval` (the first at once) a
    /// retention pass, then a segment compaction pass. Ends when the `Retention` is
    /// dropped; does nothing when both retention and segment compaction are off.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Retention> = Arc::downgrade(self);
        let period = self.cfg.compaction_interval.0;
        let enabled = self.cfg.retention_enabled || self.compactor.is_some();
        tokio::spawn(async move {
            if !enabled {
                return;
            }
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(r) = weak.upgrade() else {
                    return;
                };
                let now = r.storage.clock().now_ns();
                match r.run_once(now).await {
                    Ok(s) if s.deleted_segments + s.rewritten_segments > 0 => {
                        tracing::info!(
                            deleted = s.deleted_segments,
                            rewritten = s.rewritten_segments,
                            bytes = s.deleted_bytes,
                            "retention pass"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "retention pass failed; retrying next interval")
                    }
                }
                r.compact_once(now).await;
            }
        })
    }

    /// One segment compaction pass (nothing when `segment_compaction_enabled` is off).
    /// Segments holding anything past retention as of `now_ns` are left to retention.
    pub async fn compact_once(&self, now_ns: i64) -> crate::compaction::PassStats {
        let Some(compactor) = &self.compactor else {
            return crate::compaction::PassStats::default();
        };
        let skip = |seg: &SegmentMeta| self.expires_any(seg, now_ns);
        compactor.run_once(&skip).await
    }

    /// Whether retention would delete or rewrite `seg` as of `now_ns`.
    fn expires_any(&self, seg: &SegmentMeta, now_ns: i64) -> bool {
        if !self.cfg.retention_enabled {
            return false;
        }
        let limits = self.limits.for_tenant(&seg.footer.tenant);
        let rules = self.stream_rules(&limits);
        seg.footer.streams.iter().any(|s| {
            let cut = stream_cutoff(&rules, &limits, &s.labels, now_ns);
            s.chunks.iter().any(|c| c.meta.max_ts < cut)
        })
    }

    /// One retention pass over every tenant's segments as of `now_ns`.
    pub async fn run_once(&self, now_ns: i64) -> Result<PassStats, Error> {
        let mut stats = PassStats::default();
        if !self.cfg.retention_enabled {
            return Ok(stats);
        }
        let metrics = self.metrics.load_full();
        for tenant in self.storage.tenants() {
            let limits = self.limits.for_tenant(&tenant);
            let rules = self.stream_rules(&limits);
            let before = stats.clone();
            for seg in self.storage.segments(&tenant) {
                self.expire_segment(&tenant, &seg, &rules, &limits, now_ns, &mut stats)
                    .await?;
            }
            if let Some(m) = &metrics {
                let labels = TenantLabels {
                    tenant: tenant.to_string(),
                };
                let objects = stats.deleted_segments + stats.rewritten_segments
                    - before.deleted_segments
                    - before.rewritten_segments;
                m.retention
                    .deleted_objects
                    .get_or_create(&labels)
                    .inc_by(objects as u64);
                m.retention
                    .deleted_bytes
                    .get_or_create(&labels)
                    .inc_by(stats.deleted_bytes - before.deleted_bytes);
            }
        }
        if let Some(m) = &metrics {
            m.retention.runs.inc();
        }
        Ok(stats)
    }

    async fn expire_segment(
        &self,
        tenant: &TenantId,
        seg: &Arc<SegmentMeta>,
        rules: &[StreamRule],
        limits: &LimitsConfig,
        now_ns: i64,
        stats: &mut PassStats,
    ) -> Result<(), Error> {
        let footer = &seg.footer;
        let mut kept = Vec::new();
        let mut dropped = 0usize;
        for s in &footer.streams {
            let cut = stream_cutoff(rules, limits, &s.labels, now_ns);
            for c in &s.chunks {
                if c.meta.max_ts < cut {
                    dropped += 1;
                } else {
                    kept.push((s.labels.clone(), c.clone()));
                }
            }
        }
        if dropped == 0 {
            return Ok(());
        }
        if kept.is_empty() {
            // Readers stop seeing it first, so no query reads a vanished object.
            self.storage.forget(tenant, footer.day, seg.id);
            self.storage.delete_object(&seg.path).await?;
            stats.deleted_segments += 1;
            stats.deleted_bytes += seg.size;
            return Ok(());
        }
        let mut copied = Vec::with_capacity(kept.len());
        for (labels, info) in kept {
            let bytes = self
                .storage
                .read_range(seg, info.offset..info.offset + info.len)
                .await?;
            copied.push(CopiedChunk {
                labels,
                info,
                bytes,
            });
        }
        self.storage
            .write_segment(tenant, footer.day, Vec::new(), copied, vec![seg.id])
            .await?;
        self.storage.delete_object(&seg.path).await?;
        stats.rewritten_segments += 1;
        stats.deleted_bytes += seg.size;
        Ok(())
    }
}

fn stream_cutoff(
    rules: &[StreamRule],
    limits: &LimitsConfig,
    labels: &LabelSet,
    now_ns: i64,
) -> i64 {
    let rule = rules
        .iter()
        .filter(|r| Matcher::select(&r.matchers, labels))
        .max_by_key(|r| r.priority);
    match rule {
        Some(r) => period_cutoff(&r.period, now_ns),
        None => period_cutoff(&limits.retention_period.0, now_ns),
    }
}

/// Matchers of a `{...}` stream selector; `None` (rule ignored, logged) when it is not one.
/// `limits_config` validation already refused malformed selectors at load.
fn parse_selector(selector: &str) -> Option<Vec<Matcher>> {
    match query_lang::parse_expr(selector) {
        Ok(query_lang::Expr::Log(sel)) if sel.pipeline.is_empty() => Some(sel.matchers),
        Ok(_) => {
            tracing::error!(
                selector,
                "retention_stream selector has a pipeline; rule ignored"
            );
            None
        }
        Err(e) => {
            tracing::error!(selector, error = %e, "retention_stream selector does not parse; rule ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests;
