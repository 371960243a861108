//! Ingester: per-tenant, per-stream head blocks, chunk cutting and flushing.
//!
//! PLACEHOLDER on the `server` branch only: the agreed interface with an in-memory body so
//! the server compiles and its tests run before the `ingest` branch lands. The real module
//! (branch `ingest`) replaces this file wholesale at merge. It has no WAL and never
//! flushes; do not build on its behaviour.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lode_push::{Entry, LabelSet};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::storage::Storage;
use crate::tenant::TenantId;

/// `ingester:` section of the YAML config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngesterConfig {
    pub chunk_target_size: usize,
    pub chunk_block_size: usize,
    #[serde(with = "humantime_serde")]
    pub max_chunk_age: Duration,
    #[serde(with = "humantime_serde")]
    pub chunk_idle_period: Duration,
    #[serde(with = "humantime_serde")]
    pub flush_check_period: Duration,
    #[serde(with = "humantime_serde")]
    pub out_of_order_time_window: Duration,
    pub wal: crate::wal::WalConfig,
}

impl Default for IngesterConfig {
    fn default() -> Self {
        IngesterConfig {
            chunk_target_size: 1_572_864,
            chunk_block_size: 262_144,
            max_chunk_age: Duration::from_secs(7200),
            chunk_idle_period: Duration::from_secs(1800),
            flush_check_period: Duration::from_secs(30),
            out_of_order_time_window: Duration::from_secs(3600),
            wal: crate::wal::WalConfig::default(),
        }
    }
}

impl IngesterConfig {
    pub fn validate(&self) -> Result<(), Error> {
        self.wal
            .validate()
            .map_err(|e| Error::Config(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
}

#[derive(Debug)]
pub struct Pushed {
    pub tenant: TenantId,
    pub labels: LabelSet,
    pub entries: Vec<Entry>,
}

#[derive(Debug, Default)]
pub struct PushOutcome {
    pub accepted_entries: usize,
    pub accepted_bytes: usize,
    pub rejected: Vec<Rejected>,
}

#[derive(Debug)]
pub struct Rejected {
    pub labels: LabelSet,
    pub entries: usize,
    pub bytes: usize,
    pub reason: &'static str,
    pub message: String,
}

pub struct Ingester {
    cfg: IngesterConfig,
    heads: Mutex<HashMap<(TenantId, LabelSet), Vec<Entry>>>,
    tx: tokio::sync::broadcast::Sender<Arc<Pushed>>,
}

impl std::fmt::Debug for Ingester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingester").finish_non_exhaustive()
    }
}

impl Ingester {
    pub async fn open(
        cfg: IngesterConfig,
        _wal_dir: PathBuf,
        _storage: Arc<Storage>,
    ) -> Result<Arc<Ingester>, Error> {
        Ok(Arc::new(Ingester {
            cfg,
            heads: Mutex::new(HashMap::new()),
            tx: tokio::sync::broadcast::channel(1024).0,
        }))
    }

    pub async fn push(
        &self,
        tenant: &TenantId,
        streams: Vec<(LabelSet, Vec<Entry>)>,
    ) -> Result<PushOutcome, Error> {
        let mut out = PushOutcome::default();
        let window =
            i64::try_from(self.cfg.out_of_order_time_window.as_nanos()).unwrap_or(i64::MAX);
        let mut heads = self.heads.lock();
        for (labels, entries) in streams {
            let head = heads.entry((tenant.clone(), labels.clone())).or_default();
            let mut kept = Vec::new();
            for e in entries {
                let newest = head
                    .iter()
                    .map(|x| x.timestamp_ns)
                    .max()
                    .unwrap_or(i64::MIN);
                if e.timestamp_ns < newest.saturating_sub(window) {
                    out.rejected.push(Rejected {
                        labels: labels.clone(),
                        entries: 1,
                        bytes: e.line.len(),
                        reason: "too_far_behind",
                        message: format!("entry too far behind for stream '{labels}'"),
                    });
                    continue;
                }
                if head
                    .iter()
                    .any(|x| x.timestamp_ns == e.timestamp_ns && x.line == e.line)
                {
                    out.rejected.push(Rejected {
                        labels: labels.clone(),
                        entries: 1,
                        bytes: e.line.len(),
                        reason: "duplicate",
                        message: String::new(),
                    });
                    continue;
                }
                out.accepted_entries += 1;
                out.accepted_bytes += e.line.len();
                head.push(e.clone());
                kept.push(e);
            }
            let _ = self.tx.send(Arc::new(Pushed {
                tenant: tenant.clone(),
                labels,
                entries: kept,
            }));
        }
        Ok(out)
    }

    pub fn head_entries(
        &self,
        tenant: &TenantId,
        labels: &LabelSet,
        start_ns: i64,
        end_ns: i64,
    ) -> Vec<Entry> {
        let heads = self.heads.lock();
        let mut v: Vec<Entry> = heads
            .get(&(tenant.clone(), labels.clone()))
            .map(|h| {
                h.iter()
                    .filter(|e| start_ns <= e.timestamp_ns && e.timestamp_ns < end_ns)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|e| e.timestamp_ns);
        v
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Pushed>> {
        self.tx.subscribe()
    }

    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async {})
    }

    pub async fn flush_all(&self) -> Result<(), Error> {
        Ok(())
    }
}
