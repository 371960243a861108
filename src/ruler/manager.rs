//! The ruler's scheduler: which groups run, when, and what happens to their output.
//!
//! Owns loading every tenant's rule files (at start, every `poll_interval`, and right
//! after an API write), reconciling running groups with them (unchanged groups keep
//! running; edited ones keep the alert state of rules with the same name; a file that
//! fails to load keeps its previous groups running and is reported), one task per
//! group ticking at `interval` on a stable per-group phase, metrics, and saving alert
//! state under `rule_path` so a restart neither forgets firing alerts nor restarts
//! long `for` timers. It does not own evaluation itself (`group`) or delivery.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::config::RulerConfig;
use super::group::{evaluate, EvalSettings, GroupKey, GroupRuntime, SavedGroup};
use super::metrics::{RulerMetrics, TenantLabels};
use super::notifier::Notifier;
use super::remote_write::RemoteWriter;
use super::rulefmt::RuleGroup;
use super::store::{RuleStore, StoreError, StoreLimits, TenantRules};
use super::{RuleQuerier, RulerError};
use crate::TenantId;

/// Wall-clock Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The first tick strictly after `now_ms` on the grid `phase + k·interval`.
pub fn next_tick(now_ms: i64, interval_ms: i64, phase_ms: i64) -> i64 {
    let interval_ms = interval_ms.max(1);
    (now_ms - phase_ms).div_euclid(interval_ms) * interval_ms + phase_ms + interval_ms
}

struct GroupHandle {
    def: RuleGroup,
    runtime: Arc<Mutex<GroupRuntime>>,
    task: JoinHandle<()>,
}

impl Drop for GroupHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Inner {
    config: RulerConfig,
    querier: Arc<dyn RuleQuerier>,
    store: RuleStore,
    notifier: Notifier,
    remote: Option<RemoteWriter>,
    metrics: RulerMetrics,
    settings: EvalSettings,
    groups: Mutex<BTreeMap<GroupKey, GroupHandle>>,
    load_errors: Mutex<BTreeMap<TenantId, Vec<String>>>,
    background: Mutex<Vec<JoinHandle<()>>>,
    sync_lock: tokio::sync::Mutex<()>,
    resync: Notify,
}

/// The ruler. Cheap to clone; all clones share one set of groups.
#[derive(Clone)]
pub struct Ruler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ruler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ruler")
            .field("rules_dir", &self.inner.store.dir())
            .field("groups", &self.inner.groups.lock().len())
            .finish()
    }
}

impl Ruler {
    /// Builds the ruler and registers its metrics. Nothing runs until [`Ruler::start`].
    pub fn new(
        config: RulerConfig,
        querier: Arc<dyn RuleQuerier>,
        registry: &crate::metrics::Metrics,
    ) -> Result<Ruler, RulerError> {
        config.validate()?;
        let metrics = RulerMetrics::default();
        metrics.register(registry);
        let notifier = Notifier::new(
            &config.alertmanager_urls(),
            config.notification_queue_capacity,
            config.notification_timeout.as_duration(),
            metrics.clone(),
        );
        let remote = config.remote_write.enabled.then(|| {
            RemoteWriter::new(
                config.remote_write_clients(),
                config.remote_write.add_org_id_header,
                metrics.clone(),
            )
        });
        let settings = EvalSettings {
            external_labels: config.external_labels.clone(),
            external_url: config.external_url.clone(),
            datasource_uid: config.datasource_uid.clone(),
            resend_delay_ms: config.resend_delay.as_millis(),
        };
        Ok(Ruler {
            inner: Arc::new(Inner {
                store: RuleStore::new(config.storage.local.directory.clone()),
                config,
                querier,
                notifier,
                remote,
                metrics,
                settings,
                groups: Mutex::new(BTreeMap::new()),
                load_errors: Mutex::new(BTreeMap::new()),
                background: Mutex::new(Vec::new()),
                sync_lock: tokio::sync::Mutex::new(()),
                resync: Notify::new(),
            }),
        })
    }

    pub fn config(&self) -> &RulerConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &RuleStore {
        &self.inner.store
    }

    pub fn store_limits(&self) -> StoreLimits {
        StoreLimits {
            max_rule_groups_per_tenant: self.inner.config.max_rule_groups_per_tenant,
            max_rules_per_rule_group: self.inner.config.max_rules_per_rule_group,
        }
    }

    /// Starts the senders, loads the rules and starts the reload loop. Rule files that
    /// fail to load are logged and reported by [`Ruler::load_errors`], not fatal.
    pub async fn start(&self) -> Result<(), RulerError> {
        let mut background = vec![self.inner.notifier.spawn()];
        if let Some(remote) = &self.inner.remote {
            background.extend(remote.spawn());
        }
        // In the background: an unroutable Alertmanager must not delay the server's start.
        let probe = self.clone();
        background.push(tokio::spawn(async move {
            probe.probe_alertmanagers().await;
        }));
        self.inner.background.lock().extend(background);
        self.sync().await?;
        let this = self.clone();
        let poll = self.inner.config.poll_interval.as_duration();
        let poller = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = this.inner.resync.notified() => {}
                }
                if let Err(e) = this.sync().await {
                    tracing::error!("reloading rules failed: {e}");
                }
            }
        });
        self.inner.background.lock().push(poller);
        Ok(())
    }

    /// Saves every group's alert state and stops all tasks.
    pub async fn shutdown(&self) {
        let saved: Vec<(GroupKey, SavedGroup)> = {
            let groups = self.inner.groups.lock();
            let now = now_ms();
            groups
                .iter()
                .map(|(k, h)| (k.clone(), h.runtime.lock().saved(now)))
                .collect()
        };
        let dir = self.state_dir();
        let _ = tokio::task::spawn_blocking(move || {
            for (key, s) in saved {
                save_state(&dir, &key, &s);
            }
        })
        .await;
        self.abort();
    }

    /// Stops every group and background task now, without saving alert state.
    pub fn abort(&self) {
        self.inner.groups.lock().clear();
        for task in self.inner.background.lock().drain(..) {
            task.abort();
        }
    }

    /// Asks the reload loop to re-read the rules now (after an API write).
    pub fn request_sync(&self) {
        self.inner.resync.notify_one();
    }

    /// Logs each Alertmanager that is not ready: the usual cause of alerts that never
    /// arrive is a wrong URL, which otherwise shows only in metrics.
    async fn probe_alertmanagers(&self) {
        let client = reqwest::Client::new();
        for url in self.inner.config.alertmanager_urls() {
            let ready = format!("{}/-/ready", url.trim_end_matches('/'));
            match client
                .get(&ready)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {
                    tracing::info!(alertmanager = %url, "alertmanager is ready")
                }
                Ok(r) => {
                    tracing::warn!(alertmanager = %url, "alertmanager readiness probe {ready} answered {}", r.status())
                }
                Err(e) => {
                    tracing::warn!(alertmanager = %url, "alertmanager not reachable at {ready}: {e} (check ruler.alertmanager_url)")
                }
            }
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.inner.config.rule_path.join("alerts")
    }

    /// Re-reads every tenant's rules and reconciles the running groups.
    pub async fn sync(&self) -> Result<(), RulerError> {
        let _serial = self.inner.sync_lock.lock().await;
        let store = self.inner.store.clone();
        let loaded: Vec<(TenantId, TenantRules)> = tokio::task::spawn_blocking(move || {
            store
                .tenants()?
                .into_iter()
                .map(|t| store.load_tenant(&t).map(|r| (t, r)))
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .await
        .map_err(|e| RulerError::Task(e.to_string()))??;

        let mut wanted: BTreeMap<GroupKey, RuleGroup> = BTreeMap::new();
        let mut errors: BTreeMap<TenantId, Vec<String>> = BTreeMap::new();
        {
            let running = self.inner.groups.lock();
            for (tenant, rules) in loaded {
                let tenant_errors = errors.entry(tenant.clone()).or_default();
                for (namespace, file) in rules.namespaces {
                    match file {
                        Ok(file) => {
                            for group in file.groups {
                                let key = GroupKey {
                                    tenant: tenant.clone(),
                                    namespace: namespace.clone(),
                                    group: group.name.clone(),
                                };
                                wanted.insert(key, group);
                            }
                        }
                        Err(e) => {
                            tracing::error!(tenant = %tenant, namespace = %namespace, "rule file not loaded, keeping its previous groups: {e}");
                            tenant_errors.push(e.to_string());
                            for (key, handle) in running.iter() {
                                if key.tenant == tenant && key.namespace == namespace {
                                    wanted.insert(key.clone(), handle.def.clone());
                                }
                            }
                        }
                    }
                }
            }
        }
        for (tenant, errs) in &errors {
            let labels = TenantLabels {
                tenant: tenant.to_string(),
            };
            let rules: usize = wanted
                .iter()
                .filter(|(k, _)| &k.tenant == tenant)
                .map(|(_, g)| g.rules.len())
                .sum();
            self.inner
                .metrics
                .rules_loaded
                .get_or_create(&labels)
                .set(i64::try_from(rules).unwrap_or(i64::MAX));
            self.inner
                .metrics
                .config_reload_successful
                .get_or_create(&labels)
                .set(i64::from(errs.is_empty()));
        }
        *self.inner.load_errors.lock() = errors;

        let new_keys: Vec<GroupKey> = {
            let running = self.inner.groups.lock();
            wanted
                .keys()
                .filter(|k| !running.contains_key(*k))
                .cloned()
                .collect()
        };
        let dir = self.state_dir();
        let saved: BTreeMap<GroupKey, SavedGroup> = tokio::task::spawn_blocking(move || {
            new_keys
                .into_iter()
                .filter_map(|k| load_state(&dir, &k).map(|s| (k, s)))
                .collect()
        })
        .await
        .map_err(|e| RulerError::Task(e.to_string()))?;

        let now = now_ms();
        let config = &self.inner.config;
        let mut running = self.inner.groups.lock();
        running.retain(|k, _| wanted.contains_key(k));
        for (key, def) in wanted {
            let previous = match running.get(&key) {
                Some(handle) if handle.def == def => continue,
                Some(handle) => Some(handle.runtime.lock().saved(now)),
                None => None,
            };
            let mut runtime = GroupRuntime::new(
                key.clone(),
                def.clone(),
                config.evaluation_interval.as_millis(),
                config.evaluation_delay.as_millis(),
            );
            if let Some(previous) = previous {
                runtime.adopt(&previous);
            } else if let Some(saved) = saved.get(&key) {
                runtime.restore_after_restart(
                    saved,
                    now,
                    config.for_grace_period.as_millis(),
                    config.for_outage_tolerance.as_millis(),
                );
            }
            let runtime = Arc::new(Mutex::new(runtime));
            let task = tokio::spawn(run_group(
                Arc::clone(&self.inner),
                key.clone(),
                Arc::clone(&runtime),
                self.state_dir(),
            ));
            running.insert(key, GroupHandle { def, runtime, task });
        }
        Ok(())
    }

    /// A copy of the tenant's groups with their current state, sorted by namespace
    /// then group name.
    pub fn groups(&self, tenant: &TenantId) -> Vec<GroupRuntime> {
        self.inner
            .groups
            .lock()
            .iter()
            .filter(|(k, _)| &k.tenant == tenant)
            .map(|(_, h)| h.runtime.lock().clone())
            .collect()
    }

    /// Why some of the tenant's rule files were not loaded at the last reload.
    pub fn load_errors(&self, tenant: &TenantId) -> Vec<String> {
        self.inner
            .load_errors
            .lock()
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }
}

async fn run_group(
    inner: Arc<Inner>,
    key: GroupKey,
    runtime: Arc<Mutex<GroupRuntime>>,
    state_dir: PathBuf,
) {
    let interval = runtime.lock().interval_ms;
    let phase = key.phase_ms(interval);
    let labels = RulerMetrics::group(key.tenant.as_str(), &key.namespace, &key.group);
    let mut tick = next_tick(now_ms(), interval, phase);
    let mut saved_empty = false;
    loop {
        let wait = u64::try_from(tick - now_ms()).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let out = evaluate(&runtime, inner.querier.as_ref(), tick, &inner.settings).await;
        let (seconds, saved) = {
            let g = runtime.lock();
            (g.eval_seconds, g.saved(now_ms()))
        };
        inner.metrics.evaluations.get_or_create(&labels).inc();
        inner
            .metrics
            .evaluation_duration
            .get_or_create(&labels)
            .observe(seconds);
        if out.failures > 0 {
            inner
                .metrics
                .evaluation_failures
                .get_or_create(&labels)
                .inc_by(out.failures as u64);
        } else {
            inner
                .metrics
                .last_success
                .get_or_create(&labels)
                .set(tick as f64 / 1000.0);
        }
        inner.notifier.send(out.alerts);
        if let Some(remote) = &inner.remote {
            remote.enqueue(&key.tenant, out.series);
        }
        // Groups without alerts write their (empty) state once, not every tick.
        if !saved.rules.is_empty() || !saved_empty {
            saved_empty = saved.rules.is_empty();
            let (dir, k) = (state_dir.clone(), key.clone());
            let _ = tokio::task::spawn_blocking(move || save_state(&dir, &k, &saved)).await;
        }
        let next = next_tick(now_ms(), interval, phase);
        let missed = (next - tick) / interval - 1;
        if missed > 0 {
            inner
                .metrics
                .iterations_missed
                .get_or_create(&labels)
                .inc_by(missed as u64);
        }
        tick = next;
    }
}

fn state_path(dir: &std::path::Path, key: &GroupKey) -> PathBuf {
    let id = format!("{}\0{}", key.namespace, key.group);
    dir.join(key.tenant.as_str())
        .join(format!("{:08x}.json", crc32c::crc32c(id.as_bytes())))
}

/// Saved state of a group, if any and if it really is that group's (file names are
/// hashes, so the names inside are checked).
fn load_state(dir: &std::path::Path, key: &GroupKey) -> Option<SavedGroup> {
    let path = state_path(dir, key);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice::<SavedGroup>(&bytes) {
        Ok(s) if s.namespace == key.namespace && s.group == key.group => Some(s),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), "ignoring unreadable saved alert state: {e}");
            None
        }
    }
}

fn save_state(dir: &std::path::Path, key: &GroupKey, saved: &SavedGroup) {
    let path = state_path(dir, key);
    let write = || -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(saved)?)?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        tracing::warn!(path = %path.display(), "cannot save alert state (ruler.rule_path): {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_aligned_to_the_interval_plus_phase_and_strictly_in_the_future() {
        assert_eq!(next_tick(0, 60_000, 0), 60_000);
        assert_eq!(next_tick(59_999, 60_000, 0), 60_000);
        assert_eq!(next_tick(60_000, 60_000, 0), 120_000);
        assert_eq!(next_tick(67_000, 60_000, 7_000), 127_000);
        assert_eq!(next_tick(66_000, 60_000, 7_000), 67_000);
    }

    #[test]
    fn saved_state_round_trips_and_is_checked_against_the_group_name() {
        let dir = tempfile::tempdir().unwrap();
        let key = GroupKey {
            tenant: TenantId::default_tenant(),
            namespace: "api.yaml".into(),
            group: "errors".into(),
        };
        let saved = SavedGroup {
            namespace: "api.yaml".into(),
            group: "errors".into(),
            saved_at_ms: 42,
            rules: BTreeMap::new(),
        };
        save_state(dir.path(), &key, &saved);
        assert_eq!(load_state(dir.path(), &key), Some(saved.clone()));
        let other = GroupKey {
            group: "other".into(),
            ..key.clone()
        };
        assert_eq!(load_state(dir.path(), &other), None);
    }
}
