//! The ruler's `lode_ruler_*` metrics.
//!
//! Owns the metric families and the names under which they are registered. It does not
//! own the registry or `/metrics` (`crate::metrics`): the server passes its registry to
//! [`RulerMetrics::register`].

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub tenant: String,
    /// `<namespace>;<group>`, as Loki labels rule groups.
    pub rule_group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertmanagerLabels {
    pub alertmanager: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    pub destination: String,
}

type DurationHistogram = Family<GroupLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 4.0, 10))
}

/// All ruler metrics; clones share the same series.
#[derive(Clone, Debug)]
pub struct RulerMetrics {
    pub evaluations: Family<GroupLabels, Counter>,
    pub evaluation_failures: Family<GroupLabels, Counter>,
    pub evaluation_duration: DurationHistogram,
    pub last_success: Family<GroupLabels, Gauge<f64, AtomicU64>>,
    pub iterations_missed: Family<GroupLabels, Counter>,
    pub rules_loaded: Family<TenantLabels, Gauge>,
    pub config_reload_successful: Family<TenantLabels, Gauge>,
    pub notifications_sent: Family<AlertmanagerLabels, Counter>,
    pub notification_errors: Family<AlertmanagerLabels, Counter>,
    pub notifications_dropped: Counter,
    pub notification_queue_length: Gauge,
    pub remote_write_samples: Family<DestinationLabels, Counter>,
    pub remote_write_dropped: Family<DestinationLabels, Counter>,
    pub remote_write_retries: Family<DestinationLabels, Counter>,
}

impl Default for RulerMetrics {
    fn default() -> Self {
        RulerMetrics {
            evaluations: Family::default(),
            evaluation_failures: Family::default(),
            evaluation_duration: Family::new_with_constructor(duration_histogram),
            last_success: Family::default(),
            iterations_missed: Family::default(),
            rules_loaded: Family::default(),
            config_reload_successful: Family::default(),
            notifications_sent: Family::default(),
            notification_errors: Family::default(),
            notifications_dropped: Counter::default(),
            notification_queue_length: Gauge::default(),
            remote_write_samples: Family::default(),
            remote_write_dropped: Family::default(),
            remote_write_retries: Family::default(),
        }
    }
}

impl RulerMetrics {
    /// Registers every family; counters get `_total` appended by the encoder.
    pub fn register(&self, registry: &crate::metrics::Metrics) {
        registry.register(
            "lode_ruler_evaluations",
            "Rule group evaluations",
            self.evaluations.clone(),
        );
        registry.register(
            "lode_ruler_evaluation_failures",
            "Rule evaluations that failed (query error, limit, duplicate label sets)",
            self.evaluation_failures.clone(),
        );
        registry.register(
            "lode_ruler_group_evaluation_duration_seconds",
            "Time to evaluate all rules of a group",
            self.evaluation_duration.clone(),
        );
        registry.register(
            "lode_ruler_group_last_evaluation_success_timestamp_seconds",
            "Unix time of the last evaluation of a group in which every rule succeeded",
            self.last_success.clone(),
        );
        registry.register(
            "lode_ruler_group_iterations_missed",
            "Evaluation ticks skipped because the previous evaluation overran",
            self.iterations_missed.clone(),
        );
        registry.register(
            "lode_ruler_rules_loaded",
            "Rules currently loaded",
            self.rules_loaded.clone(),
        );
        registry.register(
            "lode_ruler_config_last_reload_successful",
            "1 if every rule file of the tenant loaded at the last reload, else 0",
            self.config_reload_successful.clone(),
        );
        registry.register(
            "lode_ruler_notifications_sent",
            "Alerts delivered to an Alertmanager",
            self.notifications_sent.clone(),
        );
        registry.register(
            "lode_ruler_notifications_errors",
            "Alerts that could not be delivered to an Alertmanager",
            self.notification_errors.clone(),
        );
        registry.register(
            "lode_ruler_notifications_dropped",
            "Alerts dropped because the notification queue was full",
            self.notifications_dropped.clone(),
        );
        registry.register(
            "lode_ruler_notification_queue_length",
            "Alerts waiting to be sent",
            self.notification_queue_length.clone(),
        );
        registry.register(
            "lode_ruler_remote_write_samples",
            "Recorded samples accepted by a remote-write destination",
            self.remote_write_samples.clone(),
        );
        registry.register(
            "lode_ruler_remote_write_samples_dropped",
            "Recorded samples dropped (rejected, queue full or retries exhausted)",
            self.remote_write_dropped.clone(),
        );
        registry.register(
            "lode_ruler_remote_write_retries",
            "Remote-write requests retried after a 5xx, 429 or network error",
            self.remote_write_retries.clone(),
        );
    }

    pub fn group(tenant: &str, namespace: &str, group: &str) -> GroupLabels {
        GroupLabels {
            tenant: tenant.to_string(),
            rule_group: format!("{namespace};{group}"),
        }
    }

    pub fn remote_write_sent(&self, destination: &str, samples: u64) {
        self.remote_write_samples
            .get_or_create(&DestinationLabels {
                destination: destination.to_string(),
            })
            .inc_by(samples);
    }

    pub fn remote_write_dropped(&self, destination: &str, samples: u64) {
        self.remote_write_dropped
            .get_or_create(&DestinationLabels {
                destination: destination.to_string(),
            })
            .inc_by(samples);
    }

    pub fn remote_write_retried(&self, destination: &str) {
        self.remote_write_retries
            .get_or_create(&DestinationLabels {
                destination: destination.to_string(),
            })
            .inc();
    }
}
