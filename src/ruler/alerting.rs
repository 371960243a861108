//! Alerting rules: the state machine inactive → pending → firing → resolved, and which
//! alerts need sending to Alertmanager after an evaluation.
//!
//! Owns the per-instance state and its transitions, Prometheus' semantics exactly
//! (`for`, `keep_firing_for`, 15 minutes of resolved retention, `limit`, resend every
//! `resend_delay` with `endsAt = t + 4·max(interval, resend_delay)`), and the synthetic
//! `ALERTS` / `ALERTS_FOR_STATE` series. Time is an explicit argument (Unix ms) so the
//! machine is tested with a fake clock. It does not own running queries (`group`) or
//! delivering alerts (`notifier`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::recording::OutputSeries;
use super::rulefmt::RuleDesc;
use super::template::{Template, TemplateData};
use super::Sample;

/// How long a resolved alert is kept (and re-sent) so Alertmanager hears about it.
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// Identity of an alert instance: its final label set, sorted.
pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One alert instance (one output series of the rule's query). Times are Unix ms;
/// absent times are `None` where Prometheus uses Go's zero time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub labels: Labels,
    pub annotations: BTreeMap<String, String>,
    pub value: f64,
    pub state: AlertState,
    pub active_at_ms: i64,
    pub fired_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    pub last_sent_at_ms: Option<i64>,
    pub valid_until_ms: Option<i64>,
    pub keep_firing_since_ms: Option<i64>,
}

impl Alert {
    /// Pending alerts are never sent; a resolution is always sent once; otherwise an
    /// alert is re-sent when `resend_delay` has passed since the last send.
    fn needs_sending(&self, ts_ms: i64, resend_delay_ms: i64) -> bool {
        if self.state == AlertState::Pending {
            return false;
        }
        let last_sent = self.last_sent_at_ms.unwrap_or(i64::MIN);
        if self.resolved_at_ms.is_some_and(|r| r > last_sent) {
            return true;
        }
        last_sent.saturating_add(resend_delay_ms) < ts_ms
    }
}

/// Settings every evaluation of a rule needs besides the query result.
#[derive(Clone, Copy, Debug)]
pub struct AlertContext<'a> {
    pub external_labels: &'a BTreeMap<String, String>,
    pub external_url: &'a str,
    /// Group `limit`: maximum pending + firing instances; 0 = unlimited.
    pub limit: u64,
}

/// An alerting rule and the state of its instances.
#[derive(Clone, Debug)]
pub struct AlertingRule {
    pub desc: RuleDesc,
    name: String,
    hold_ms: i64,
    keep_firing_for_ms: i64,
    label_templates: Vec<(String, Template)>,
    annotation_templates: Vec<(String, Template)>,
    active: BTreeMap<Labels, Alert>,
}

impl AlertingRule {
    /// Builds the rule; templates that do not parse are expanded to Prometheus' error
    /// text at evaluation (files are validated before they get here).
    pub fn new(desc: RuleDesc) -> AlertingRule {
        let compile = |map: &BTreeMap<String, String>| {
            map.iter()
                .map(|(k, v)| {
                    let t = Template::parse(v).unwrap_or_else(|e| {
                        Template::literal(format!("<error expanding template: {e}>"))
                    });
                    (k.clone(), t)
                })
                .collect()
        };
        AlertingRule {
            name: desc.name().to_string(),
            hold_ms: desc.for_.as_millis(),
            keep_firing_for_ms: desc.keep_firing_for.as_millis(),
            label_templates: compile(&desc.labels),
            annotation_templates: compile(&desc.annotations),
            desc,
            active: BTreeMap::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// All known instances, including resolved ones still retained.
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.active.values()
    }

    /// The rule's state for the API: the highest state of its instances.
    pub fn state(&self) -> AlertState {
        self.active
            .values()
            .map(|a| a.state)
            .max()
            .unwrap_or(AlertState::Inactive)
    }

    /// Replaces the instance state, e.g. from the state saved before a restart or from
    /// the previous definition of an edited rule.
    pub fn restore(&mut self, alerts: impl IntoIterator<Item = Alert>) {
        self.active = alerts.into_iter().map(|a| (a.labels.clone(), a)).collect();
    }

    /// Applies one successful query result at evaluation time `ts_ms`, moving every
    /// instance through the state machine. Returns the `ALERTS`/`ALERTS_FOR_STATE`
    /// series of the pending and firing instances, or an error (duplicate label sets,
    /// `limit` exceeded) after which the caller sends nothing this round.
    pub fn apply(
        &mut self,
        ts_ms: i64,
        samples: Vec<Sample>,
        ctx: &AlertContext<'_>,
    ) -> Result<Vec<OutputSeries>, String> {
        let mut fresh: BTreeMap<Labels, Alert> = BTreeMap::new();
        for sample in samples {
            let series: Labels = sample
                .labels
                .iter()
                .filter(|(k, _)| *k != "__name__")
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let data = TemplateData {
                labels: &series,
                value: sample.value,
                external_labels: ctx.external_labels,
                external_url: ctx.external_url,
            };
            let mut labels = series.clone();
            for (name, template) in &self.label_templates {
                labels.insert(name.clone(), template.expand(&data));
            }
            labels.insert("alertname".to_string(), self.name.clone());
            let annotations = self
                .annotation_templates
                .iter()
                .map(|(name, t)| (name.clone(), t.expand(&data)))
                .collect();
            let alert = Alert {
                labels: labels.clone(),
                annotations,
                value: sample.value,
                state: AlertState::Pending,
                active_at_ms: ts_ms,
                fired_at_ms: None,
                resolved_at_ms: None,
                last_sent_at_ms: None,
                valid_until_ms: None,
                keep_firing_since_ms: None,
            };
            if fresh.insert(labels, alert).is_some() {
                return Err(
                    "vector contains metrics with the same labelset after applying alert labels"
                        .to_string(),
                );
            }
        }

        let mut present = Vec::with_capacity(fresh.len());
        for (labels, alert) in fresh {
            present.push(labels.clone());
            match self.active.get_mut(&labels) {
                Some(known) if known.state != AlertState::Inactive => {
                    known.value = alert.value;
                    known.annotations = alert.annotations;
                }
                _ => {
                    self.active.insert(labels, alert);
                }
            }
        }

        let mut active_or_pending: u64 = 0;
        let mut series = Vec::new();
        let hold_ms = self.hold_ms;
        let keep_firing_for_ms = self.keep_firing_for_ms;
        self.active.retain(|labels, alert| {
            let is_present = present.binary_search(labels).is_ok();
            if is_present {
                alert.keep_firing_since_ms = None;
            } else {
                let mut keep_firing = false;
                if alert.state == AlertState::Firing && keep_firing_for_ms > 0 {
                    let since = *alert.keep_firing_since_ms.get_or_insert(ts_ms);
                    keep_firing = ts_ms - since < keep_firing_for_ms;
                }
                let expired = alert
                    .resolved_at_ms
                    .is_some_and(|r| ts_ms - r > RESOLVED_RETENTION_MS);
                if alert.state == AlertState::Pending || expired {
                    return false;
                }
                if alert.state != AlertState::Inactive && !keep_firing {
                    alert.state = AlertState::Inactive;
                    alert.resolved_at_ms = Some(ts_ms);
                }
                if !keep_firing {
                    return true;
                }
            }
            active_or_pending += 1;
            if alert.state == AlertState::Pending && ts_ms - alert.active_at_ms >= hold_ms {
                alert.state = AlertState::Firing;
                alert.fired_at_ms = Some(ts_ms);
            }
            series.extend(synthetic_series(alert, ts_ms));
            true
        });

        if ctx.limit > 0 && active_or_pending > ctx.limit {
            self.active.clear();
            return Err(format!(
                "exceeded limit of {} with {} alerts (group limit)",
                ctx.limit, active_or_pending
            ));
        }
        Ok(series)
    }

    /// Marks and returns the instances Alertmanager must hear about now.
    pub fn alerts_to_send(
        &mut self,
        ts_ms: i64,
        resend_delay_ms: i64,
        interval_ms: i64,
    ) -> Vec<Alert> {
        let delta = resend_delay_ms.max(interval_ms);
        let mut out = Vec::new();
        for alert in self.active.values_mut() {
            if alert.needs_sending(ts_ms, resend_delay_ms) {
                alert.last_sent_at_ms = Some(ts_ms);
                alert.valid_until_ms = Some(ts_ms + 4 * delta);
                out.push(alert.clone());
            }
        }
        out
    }
}

/// `ALERTS{..., alertstate} 1` and `ALERTS_FOR_STATE{...} <activeAt seconds>`.
fn synthetic_series(alert: &Alert, ts_ms: i64) -> [OutputSeries; 2] {
    let mut alerts_labels = alert.labels.clone();
    alerts_labels.insert("__name__".to_string(), "ALERTS".to_string());
    alerts_labels.insert("alertstate".to_string(), alert.state.as_str().to_string());
    let mut for_state_labels = alert.labels.clone();
    for_state_labels.insert("__name__".to_string(), "ALERTS_FOR_STATE".to_string());
    [
        OutputSeries {
            labels: alerts_labels,
            value: 1.0,
            timestamp_ms: ts_ms,
        },
        OutputSeries {
            labels: for_state_labels,
            value: (alert.active_at_ms / 1000) as f64,
            timestamp_ms: ts_ms,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruler::duration::PromDuration;
    use lode_push::LabelSet;

    const MIN: i64 = 60_000;

    fn rule(for_: &str, keep_firing_for: &str) -> AlertingRule {
        AlertingRule::new(RuleDesc {
            alert: Some("HighErrorRate".into()),
            expr: "sum by (app) (rate({app=\"api\"}[5m])) > 0.05".into(),
            for_: PromDuration::parse(for_).unwrap(),
            keep_firing_for: PromDuration::parse(keep_firing_for).unwrap(),
            labels: BTreeMap::from([("severity".into(), "page".into())]),
            annotations: BTreeMap::from([(
                "summary".into(),
                "{{ $labels.app }} error ratio {{ $value | humanizePercentage }}".into(),
            )]),
            ..RuleDesc::default()
        })
    }

    fn sample(app: &str, value: f64) -> Sample {
        Sample {
            labels: LabelSet::from_pairs([("app", app)]).unwrap(),
            value,
        }
    }

    fn apply(r: &mut AlertingRule, ts: i64, samples: Vec<Sample>) -> Vec<OutputSeries> {
        apply_limited(r, ts, samples, 0).unwrap()
    }

    fn apply_limited(
        r: &mut AlertingRule,
        ts: i64,
        samples: Vec<Sample>,
        limit: u64,
    ) -> Result<Vec<OutputSeries>, String> {
        let external = BTreeMap::new();
        let ctx = AlertContext {
            external_labels: &external,
            external_url: "",
            limit,
        };
        r.apply(ts, samples, &ctx)
    }

    #[test]
    fn for_zero_fires_on_the_first_evaluation() {
        let mut r = rule("0s", "0s");
        apply(&mut r, MIN, vec![sample("api", 0.07)]);
        assert_eq!(r.state(), AlertState::Firing);
        let sent = r.alerts_to_send(MIN, MIN, MIN);
        assert_eq!(sent.len(), 1);
        let a = &sent[0];
        assert_eq!(a.labels["alertname"], "HighErrorRate");
        assert_eq!(a.labels["severity"], "page");
        assert_eq!(a.labels["app"], "api");
        assert_eq!(a.annotations["summary"], "api error ratio 7%");
        assert_eq!(a.fired_at_ms, Some(MIN));
        assert_eq!(a.valid_until_ms, Some(MIN + 4 * MIN));
    }

    #[test]
    fn pending_alert_fires_after_for_and_is_never_sent_while_pending() {
        let mut r = rule("2m", "0s");
        apply(&mut r, 0, vec![sample("api", 0.07)]);
        assert_eq!(r.state(), AlertState::Pending);
        assert!(r.alerts_to_send(0, MIN, MIN).is_empty());
        apply(&mut r, MIN, vec![sample("api", 0.08)]);
        assert_eq!(r.state(), AlertState::Pending);
        apply(&mut r, 2 * MIN, vec![sample("api", 0.09)]);
        assert_eq!(r.state(), AlertState::Firing);
        let sent = r.alerts_to_send(2 * MIN, MIN, MIN);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].active_at_ms, 0);
        assert_eq!(sent[0].value, 0.09);
    }

    #[test]
    fn pending_alert_that_disappears_is_deleted_without_notification() {
        let mut r = rule("5m", "0s");
        apply(&mut r, 0, vec![sample("api", 0.07)]);
        apply(&mut r, MIN, vec![]);
        assert_eq!(r.alerts().count(), 0);
        assert!(r.alerts_to_send(MIN, MIN, MIN).is_empty());
    }

    #[test]
    fn firing_alert_resolves_is_sent_resolved_and_dropped_after_retention() {
        let mut r = rule("0s", "0s");
        apply(&mut r, 0, vec![sample("api", 0.07)]);
        assert_eq!(r.alerts_to_send(0, MIN, MIN).len(), 1);
        apply(&mut r, MIN, vec![]);
        assert_eq!(r.state(), AlertState::Inactive);
        let sent = r.alerts_to_send(MIN, MIN, MIN);
        assert_eq!(sent.len(), 1, "a resolution is sent at once");
        assert_eq!(sent[0].resolved_at_ms, Some(MIN));
        // Re-sent every resend_delay while retained, so a restarted Alertmanager learns it.
        assert!(r.alerts_to_send(MIN + 30_000, MIN, MIN).is_empty());
        assert_eq!(r.alerts_to_send(2 * MIN + 1, MIN, MIN).len(), 1);
        apply(&mut r, MIN + RESOLVED_RETENTION_MS, vec![]);
        assert_eq!(r.alerts().count(), 1);
        apply(&mut r, MIN + RESOLVED_RETENTION_MS + 1, vec![]);
        assert_eq!(r.alerts().count(), 0);
    }

    #[test]
    fn firing_alert_is_resent_only_after_resend_delay() {
        let mut r = rule("0s", "0s");
        apply(&mut r, 0, vec![sample("api", 0.07)]);
        assert_eq!(r.alerts_to_send(0, MIN, 10_000).len(), 1);
        for ts in [10_000, 20_000, 60_000] {
            apply(&mut r, ts, vec![sample("api", 0.07)]);
            assert!(r.alerts_to_send(ts, MIN, 10_000).is_empty(), "at {ts}");
        }
        apply(&mut r, 70_000, vec![sample("api", 0.07)]);
        let sent = r.alerts_to_send(70_000, MIN, 10_000);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].valid_until_ms, Some(70_000 + 4 * MIN));
    }

    #[test]
    fn keep_firing_for_holds_a_firing_alert_after_the_condition_clears() {
        let mut r = rule("0s", "2m");
        apply(&mut r, 0, vec![sample("api", 0.07)]);
        // As in Prometheus, the hold starts at the first evaluation that finds the
        // condition false (MIN), not at the last one that found it true.
        apply(&mut r, MIN, vec![]);
        assert_eq!(r.state(), AlertState::Firing);
        apply(&mut r, 2 * MIN, vec![]);
        assert_eq!(r.state(), AlertState::Firing);
        apply(&mut r, 3 * MIN, vec![]);
        assert_eq!(r.state(), AlertState::Inactive);
        let resolved = r.alerts().next().unwrap();
        assert_eq!(resolved.resolved_at_ms, Some(3 * MIN));
    }

    #[test]
    fn returning_condition_resets_keep_firing_since() {
        let mut r = rule("0s", "2m");
        apply(&mut r, 0, vec![sample("api", 0.07)]);
        apply(&mut r, MIN, vec![]);
        apply(&mut r, 2 * MIN, vec![sample("api", 0.07)]);
        apply(&mut r, 3 * MIN, vec![]);
        apply(&mut r, 4 * MIN, vec![]);
        assert_eq!(r.state(), AlertState::Firing);
        apply(&mut r, 5 * MIN, vec![]);
        assert_eq!(r.state(), AlertState::Inactive);
    }

    #[test]
    fn exceeding_the_limit_clears_all_state_and_errors() {
        let mut r = rule("0s", "0s");
        apply(&mut r, 0, vec![sample("a", 1.0)]);
        let err =
            apply_limited(&mut r, MIN, vec![sample("a", 1.0), sample("b", 1.0)], 1).unwrap_err();
        assert!(err.contains("exceeded limit of 1 with 2 alerts"), "{err}");
        assert_eq!(r.alerts().count(), 0);
    }

    #[test]
    fn duplicate_label_sets_after_rule_labels_are_an_error() {
        let mut r = AlertingRule::new(RuleDesc {
            alert: Some("Dup".into()),
            expr: "x".into(),
            labels: BTreeMap::from([("app".into(), "same".into())]),
            ..RuleDesc::default()
        });
        let err =
            apply_limited(&mut r, 0, vec![sample("a", 1.0), sample("b", 1.0)], 0).unwrap_err();
        assert!(err.contains("same labelset"), "{err}");
    }

    #[test]
    fn synthetic_series_describe_pending_and_firing_instances() {
        let mut r = rule("1m", "0s");
        let out = apply(&mut r, 120_000, vec![sample("api", 0.07)]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].labels["__name__"], "ALERTS");
        assert_eq!(out[0].labels["alertstate"], "pending");
        assert_eq!(out[1].labels["__name__"], "ALERTS_FOR_STATE");
        assert!(!out[1].labels.contains_key("alertstate"));
        assert_eq!(out[1].value, 120.0);
    }

    #[test]
    fn a_resolved_alert_that_returns_starts_pending_again() {
        let mut r = rule("1m", "0s");
        apply(&mut r, 0, vec![sample("api", 1.0)]);
        apply(&mut r, MIN, vec![sample("api", 1.0)]);
        assert_eq!(r.state(), AlertState::Firing);
        apply(&mut r, 2 * MIN, vec![]);
        apply(&mut r, 3 * MIN, vec![sample("api", 1.0)]);
        assert_eq!(r.state(), AlertState::Pending);
        assert_eq!(r.alerts().next().unwrap().active_at_ms, 3 * MIN);
    }
}
