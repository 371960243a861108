//! A loaded rule group and one evaluation of it.
//!
//! Owns running a group's rules in file order at one timestamp through the
//! [`RuleQuerier`], recording each rule's health, last error and duration, collecting
//! the alerts to send and the series to remote-write (with staleness markers), and the
//! saved form of the alert state that survives restarts. It does not own *when* a
//! group runs (`manager`) or delivery (`notifier`, `remote_write`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::alerting::{Alert, AlertContext, AlertState, AlertingRule};
use super::notifier::{generator_url, to_postable, PostableAlert};
use super::recording::{mark_stale, OutputSeries, RecordingRule};
use super::rulefmt::{RuleDesc, RuleGroup};
use super::RuleQuerier;
use crate::TenantId;

/// Identity of a group: tenant, namespace (file name) and group name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub tenant: TenantId,
    pub namespace: String,
    pub group: String,
}

impl GroupKey {
    /// A stable per-group offset within the interval, so that groups sharing an
    /// interval do not all query at the same instant.
    pub fn phase_ms(&self, interval_ms: i64) -> i64 {
        if interval_ms <= 0 {
            return 0;
        }
        let id = format!("{}\0{}\0{}", self.tenant, self.namespace, self.group);
        i64::from(crc32c::crc32c(id.as_bytes())) % interval_ms
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Ok,
    Err,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Ok => "ok",
            Health::Err => "err",
        }
    }
}

#[derive(Clone, Debug)]
pub enum RuleKind {
    Alerting(AlertingRule),
    Recording(RecordingRule),
}

/// A rule with its last evaluation's outcome.
#[derive(Clone, Debug)]
pub struct RuleEntry {
    pub kind: RuleKind,
    pub health: Health,
    pub last_error: Option<String>,
    pub last_eval_ms: Option<i64>,
    pub eval_seconds: f64,
    previous_series: BTreeSet<BTreeMap<String, String>>,
}

impl RuleEntry {
    fn new(desc: RuleDesc) -> RuleEntry {
        let kind = if desc.is_alerting() {
            RuleKind::Alerting(AlertingRule::new(desc))
        } else {
            RuleKind::Recording(RecordingRule::new(desc))
        };
        RuleEntry {
            kind,
            health: Health::Unknown,
            last_error: None,
            last_eval_ms: None,
            eval_seconds: 0.0,
            previous_series: BTreeSet::new(),
        }
    }

    pub fn desc(&self) -> &RuleDesc {
        match &self.kind {
            RuleKind::Alerting(r) => &r.desc,
            RuleKind::Recording(r) => &r.desc,
        }
    }

    pub fn name(&self) -> &str {
        match &self.kind {
            RuleKind::Alerting(r) => r.name(),
            RuleKind::Recording(r) => r.name(),
        }
    }

    fn fail(&mut self, message: String) {
        self.health = Health::Err;
        self.last_error = Some(message);
    }
}

/// Settings shared by every group of the ruler.
#[derive(Clone, Debug, Default)]
pub struct EvalSettings {
    pub external_labels: BTreeMap<String, String>,
    pub external_url: String,
    pub datasource_uid: String,
    pub resend_delay_ms: i64,
}

/// A group as the ruler runs it.
#[derive(Clone, Debug)]
pub struct GroupRuntime {
    pub key: GroupKey,
    pub def: RuleGroup,
    pub interval_ms: i64,
    /// Queries look this far behind the tick (late logs); recorded samples are
    /// stamped at the query time.
    pub query_offset_ms: i64,
    pub rules: Vec<RuleEntry>,
    pub last_eval_ms: Option<i64>,
    pub eval_seconds: f64,
}

/// What one evaluation produced.
#[derive(Debug, Default)]
pub struct EvalOutput {
    pub alerts: Vec<PostableAlert>,
    pub series: Vec<OutputSeries>,
    pub failures: usize,
}

/// Alert state of one group as saved on disk between runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedGroup {
    pub namespace: String,
    pub group: String,
    pub saved_at_ms: i64,
    /// Alert name → its instances.
    pub rules: BTreeMap<String, Vec<Alert>>,
}

impl GroupRuntime {
    pub fn new(
        key: GroupKey,
        def: RuleGroup,
        default_interval_ms: i64,
        default_offset_ms: i64,
    ) -> GroupRuntime {
        let interval_ms = if def.interval.is_zero() {
            default_interval_ms
        } else {
            def.interval.as_millis()
        };
        let query_offset_ms = if def.query_offset.is_zero() {
            default_offset_ms
        } else {
            def.query_offset.as_millis()
        };
        GroupRuntime {
            key,
            rules: def.rules.iter().cloned().map(RuleEntry::new).collect(),
            def,
            interval_ms: interval_ms.max(1),
            query_offset_ms,
            last_eval_ms: None,
            eval_seconds: 0.0,
        }
    }

    /// Alert instances by alerting rule name.
    pub fn saved(&self, now_ms: i64) -> SavedGroup {
        let mut rules = BTreeMap::new();
        for entry in &self.rules {
            if let RuleKind::Alerting(r) = &entry.kind {
                let alerts: Vec<Alert> = r.alerts().cloned().collect();
                if !alerts.is_empty() {
                    rules.insert(r.name().to_string(), alerts);
                }
            }
        }
        SavedGroup {
            namespace: self.key.namespace.clone(),
            group: self.key.group.clone(),
            saved_at_ms: now_ms,
            rules,
        }
    }

    /// Takes over the alert state of rules with the same name, unchanged (a reload).
    pub fn adopt(&mut self, previous: &SavedGroup) {
        for entry in &mut self.rules {
            if let RuleKind::Alerting(r) = &mut entry.kind {
                if let Some(alerts) = previous.rules.get(r.name()) {
                    r.restore(alerts.iter().cloned());
                }
            }
        }
    }

    /// Restores state saved before a restart, as Prometheus' "for" state restore does:
    /// nothing if the save is older than `outage_tolerance_ms`; firing and resolved
    /// alerts as they were; pending alerts only for rules whose `for` is at least the
    /// grace period, shifted by the downtime and left at least the grace period to go.
    pub fn restore_after_restart(
        &mut self,
        saved: &SavedGroup,
        now_ms: i64,
        grace_ms: i64,
        outage_tolerance_ms: i64,
    ) {
        let downtime = now_ms - saved.saved_at_ms;
        if downtime > outage_tolerance_ms || downtime < 0 {
            return;
        }
        for entry in &mut self.rules {
            let RuleKind::Alerting(r) = &mut entry.kind else {
                continue;
            };
            let Some(alerts) = saved.rules.get(r.name()) else {
                continue;
            };
            let hold = r.desc.for_.as_millis();
            let restored = alerts.iter().cloned().filter_map(|mut a| {
                if a.state != AlertState::Pending {
                    return Some(a);
                }
                if hold < grace_ms {
                    return None;
                }
                a.active_at_ms += downtime;
                let remaining = a.active_at_ms + hold - now_ms;
                if remaining < grace_ms {
                    a.active_at_ms = now_ms + grace_ms - hold;
                }
                Some(a)
            });
            r.restore(restored.collect::<Vec<_>>());
        }
    }
}

/// Evaluates every rule of the group at tick `ts_ms`. The lock is held only between
/// queries, so API readers never wait for a slow query.
pub async fn evaluate(
    group: &Mutex<GroupRuntime>,
    querier: &dyn RuleQuerier,
    ts_ms: i64,
    settings: &EvalSettings,
) -> EvalOutput {
    let started = Instant::now();
    let (tenant, exprs, query_ts_ms) = {
        let g = group.lock();
        let exprs: Vec<String> = g.rules.iter().map(|r| r.desc().expr.clone()).collect();
        (g.key.tenant.clone(), exprs, ts_ms - g.query_offset_ms)
    };
    let mut out = EvalOutput::default();
    for (i, expr) in exprs.iter().enumerate() {
        let rule_started = Instant::now();
        let result = querier
            .instant(&tenant, expr, query_ts_ms.saturating_mul(1_000_000))
            .await;
        let mut g = group.lock();
        let (interval_ms, limit) = (g.interval_ms, g.def.limit);
        let Some(entry) = g.rules.get_mut(i) else {
            break;
        };
        entry.last_eval_ms = Some(ts_ms);
        let samples = match result {
            Ok(s) => s,
            Err(e) => {
                entry.fail(e.to_string());
                entry.eval_seconds = rule_started.elapsed().as_secs_f64();
                out.failures += 1;
                continue;
            }
        };
        let applied = match &mut entry.kind {
            RuleKind::Alerting(rule) => {
                let ctx = AlertContext {
                    external_labels: &settings.external_labels,
                    external_url: &settings.external_url,
                    limit,
                };
                rule.apply(ts_ms, samples, &ctx).map(|series| {
                    let link = generator_url(
                        &settings.external_url,
                        &settings.datasource_uid,
                        &rule.desc.expr,
                    );
                    let to_send = rule.alerts_to_send(ts_ms, settings.resend_delay_ms, interval_ms);
                    out.alerts.extend(
                        to_send
                            .iter()
                            .map(|a| to_postable(a, &settings.external_labels, &link)),
                    );
                    (series, ts_ms)
                })
            }
            RuleKind::Recording(rule) => rule
                .apply(query_ts_ms, samples, limit)
                .map(|series| (series, query_ts_ms)),
        };
        match applied {
            Ok((mut series, stamp_ms)) => {
                entry.previous_series = mark_stale(&entry.previous_series, &mut series, stamp_ms);
                entry.health = Health::Ok;
                entry.last_error = None;
                out.series.extend(series);
            }
            Err(e) => {
                entry.fail(e);
                out.failures += 1;
            }
        }
        entry.eval_seconds = rule_started.elapsed().as_secs_f64();
    }
    let mut g = group.lock();
    g.last_eval_ms = Some(ts_ms);
    g.eval_seconds = started.elapsed().as_secs_f64();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruler::duration::PromDuration;
    use crate::ruler::{QueryError, Sample};
    use lode_push::LabelSet;

    /// Answers each query from a table, or fails it.
    struct TableQuerier(BTreeMap<String, Result<Vec<(String, f64)>, String>>);

    #[async_trait::async_trait]
    impl RuleQuerier for TableQuerier {
        async fn instant(
            &self,
            _tenant: &TenantId,
            query: &str,
            _ts_ns: i64,
        ) -> Result<Vec<Sample>, QueryError> {
            match self.0.get(query) {
                Some(Ok(rows)) => Ok(rows
                    .iter()
                    .map(|(app, v)| Sample {
                        labels: LabelSet::from_pairs([("app", app.as_str())]).unwrap(),
                        value: *v,
                    })
                    .collect()),
                Some(Err(e)) => Err(QueryError::new(e.clone())),
                None => Ok(vec![]),
            }
        }
    }

    fn runtime() -> GroupRuntime {
        let def = RuleGroup {
            name: "g".into(),
            rules: vec![
                RuleDesc {
                    alert: Some("Errors".into()),
                    expr: "alert_q".into(),
                    for_: PromDuration::parse("10m").unwrap(),
                    ..RuleDesc::default()
                },
                RuleDesc {
                    record: Some("app:errors:rate5m".into()),
                    expr: "record_q".into(),
                    ..RuleDesc::default()
                },
            ],
            ..RuleGroup::default()
        };
        let key = GroupKey {
            tenant: TenantId::default_tenant(),
            namespace: "ns.yaml".into(),
            group: "g".into(),
        };
        GroupRuntime::new(key, def, 60_000, 30_000)
    }

    #[tokio::test]
    async fn a_query_error_marks_only_that_rule_unhealthy_and_keeps_alert_state() {
        let group = Mutex::new(runtime());
        let ok = TableQuerier(BTreeMap::from([
            ("alert_q".to_string(), Ok(vec![("api".to_string(), 1.0)])),
            ("record_q".to_string(), Ok(vec![("api".to_string(), 2.0)])),
        ]));
        let out = evaluate(&group, &ok, 120_000, &EvalSettings::default()).await;
        assert_eq!(out.failures, 0);
        let recorded: Vec<_> = out
            .series
            .iter()
            .filter(|s| s.labels["__name__"] == "app:errors:rate5m")
            .collect();
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].timestamp_ms, 90_000, "stamped at tick - offset");

        let failing = TableQuerier(BTreeMap::from([(
            "alert_q".to_string(),
            Err("query timed out".to_string()),
        )]));
        let out = evaluate(&group, &failing, 180_000, &EvalSettings::default()).await;
        assert_eq!(out.failures, 1);
        assert!(out.alerts.is_empty());
        let g = group.lock();
        assert_eq!(g.rules[0].health, Health::Err);
        assert_eq!(g.rules[0].last_error.as_deref(), Some("query timed out"));
        assert_eq!(g.rules[1].health, Health::Ok);
        let RuleKind::Alerting(rule) = &g.rules[0].kind else {
            panic!("first rule is alerting")
        };
        assert_eq!(
            rule.state(),
            AlertState::Pending,
            "state survives the error"
        );
    }

    #[test]
    fn restart_restores_firing_alerts_and_shifts_long_pending_ones() {
        let mut before = runtime();
        let RuleKind::Alerting(rule) = &mut before.rules[0].kind else {
            panic!("first rule is alerting")
        };
        let pending = Alert {
            labels: BTreeMap::from([("alertname".into(), "Errors".into())]),
            annotations: BTreeMap::new(),
            value: 1.0,
            state: AlertState::Pending,
            active_at_ms: 0,
            fired_at_ms: None,
            resolved_at_ms: None,
            last_sent_at_ms: None,
            valid_until_ms: None,
            keep_firing_since_ms: None,
        };
        let mut firing = pending.clone();
        firing.labels.insert("app".into(), "b".into());
        firing.state = AlertState::Firing;
        firing.fired_at_ms = Some(1_000);
        rule.restore([pending, firing]);
        let saved = before.saved(9 * 60_000);

        let mut after = runtime();
        after.restore_after_restart(&saved, 10 * 60_000, 5 * 60_000, 3_600_000);
        let RuleKind::Alerting(rule) = &after.rules[0].kind else {
            panic!("first rule is alerting")
        };
        let alerts: Vec<_> = rule.alerts().collect();
        assert_eq!(alerts.len(), 2);
        let pending = alerts
            .iter()
            .find(|a| a.state == AlertState::Pending)
            .unwrap();
        // 9m of 10m had passed; downtime 1m shifts it, then the 5m grace applies.
        assert_eq!(pending.active_at_ms, 10 * 60_000 + 5 * 60_000 - 10 * 60_000);

        let mut too_late = runtime();
        too_late.restore_after_restart(&saved, 2 * 3_600_000, 5 * 60_000, 3_600_000);
        let RuleKind::Alerting(rule) = &too_late.rules[0].kind else {
            panic!("first rule is alerting")
        };
        assert_eq!(rule.alerts().count(), 0);
    }

    #[test]
    fn phase_is_stable_and_within_the_interval() {
        let key = runtime().key;
        assert_eq!(key.phase_ms(60_000), key.phase_ms(60_000));
        assert!((0..60_000).contains(&key.phase_ms(60_000)));
    }
}
