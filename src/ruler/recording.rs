//! Recording rules: a query result renamed to the rule's metric, plus staleness markers
//! for series that stopped.
//!
//! Owns turning samples into output series (`__name__` = `record`, rule labels
//! overwriting, duplicate label sets and `limit` refused) and remembering last round's
//! series so a vanished one gets Prometheus' stale NaN. It does not own sending them
//! (`remote_write`).

use std::collections::{BTreeMap, BTreeSet};

use super::rulefmt::RuleDesc;
use super::Sample;

/// Prometheus' staleness marker: a NaN with this exact bit pattern.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// One sample of a rule's output, labels including `__name__`.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputSeries {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    pub timestamp_ms: i64,
}

/// A recording rule.
#[derive(Clone, Debug)]
pub struct RecordingRule {
    pub desc: RuleDesc,
    name: String,
}

impl RecordingRule {
    pub fn new(desc: RuleDesc) -> RecordingRule {
        RecordingRule {
            name: desc.name().to_string(),
            desc,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renames and relabels one query result stamped at `ts_ms`.
    pub fn apply(
        &self,
        ts_ms: i64,
        samples: Vec<Sample>,
        limit: u64,
    ) -> Result<Vec<OutputSeries>, String> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(samples.len());
        for sample in samples {
            let mut labels: BTreeMap<String, String> = sample
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            labels.insert("__name__".to_string(), self.name.clone());
            for (k, v) in &self.desc.labels {
                labels.insert(k.clone(), v.clone());
            }
            if !seen.insert(labels.clone()) {
                return Err(
                    "vector contains metrics with the same labelset after applying rule labels"
                        .to_string(),
                );
            }
            out.push(OutputSeries {
                labels,
                value: sample.value,
                timestamp_ms: ts_ms,
            });
        }
        if limit > 0 && out.len() as u64 > limit {
            return Err(format!(
                "exceeded limit of {limit} with {} series (group limit)",
                out.len()
            ));
        }
        Ok(out)
    }
}

/// Appends a stale marker at `ts_ms` for every series of `previous` absent from `current`,
/// and returns the label sets of `current` for the next round.
pub fn mark_stale(
    previous: &BTreeSet<BTreeMap<String, String>>,
    current: &mut Vec<OutputSeries>,
    ts_ms: i64,
) -> BTreeSet<BTreeMap<String, String>> {
    let now: BTreeSet<_> = current.iter().map(|s| s.labels.clone()).collect();
    for gone in previous.difference(&now) {
        current.push(OutputSeries {
            labels: gone.clone(),
            value: f64::from_bits(STALE_NAN_BITS),
            timestamp_ms: ts_ms,
        });
    }
    now
}

#[cfg(test)]
mod tests {
    use super::*;
    use lode_push::LabelSet;

    fn recording() -> RecordingRule {
        RecordingRule::new(RuleDesc {
            record: Some("app:log_errors:rate5m".into()),
            expr: "sum by (app) (rate({app=\"api\"} |= \"error\" [5m]))".into(),
            labels: BTreeMap::from([("source".into(), "lode".into())]),
            ..RuleDesc::default()
        })
    }

    fn sample(pairs: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            labels: LabelSet::from_pairs(pairs.iter().copied()).unwrap(),
            value,
        }
    }

    #[test]
    fn output_is_renamed_and_rule_labels_overwrite_series_labels() {
        let out = recording()
            .apply(
                5_000,
                vec![sample(&[("app", "api"), ("source", "x")], 2.5)],
                0,
            )
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].labels["__name__"], "app:log_errors:rate5m");
        assert_eq!(out[0].labels["source"], "lode");
        assert_eq!(out[0].labels["app"], "api");
        assert_eq!(out[0].value, 2.5);
        assert_eq!(out[0].timestamp_ms, 5_000);
    }

    #[test]
    fn duplicates_after_relabelling_and_limit_overflow_are_errors() {
        let r = recording();
        let dup = r.apply(
            0,
            vec![
                sample(&[("app", "api"), ("source", "a")], 1.0),
                sample(&[("app", "api"), ("source", "b")], 1.0),
            ],
            0,
        );
        assert!(dup.unwrap_err().contains("same labelset"));
        let over = r.apply(
            0,
            vec![sample(&[("app", "a")], 1.0), sample(&[("app", "b")], 1.0)],
            1,
        );
        assert!(over
            .unwrap_err()
            .contains("exceeded limit of 1 with 2 series"));
    }

    #[test]
    fn series_that_vanish_get_one_stale_marker() {
        let r = recording();
        let mut first = r
            .apply(
                0,
                vec![sample(&[("app", "a")], 1.0), sample(&[("app", "b")], 1.0)],
                0,
            )
            .unwrap();
        let seen = mark_stale(&BTreeSet::new(), &mut first, 0);
        assert_eq!(first.len(), 2);
        let mut second = r
            .apply(1_000, vec![sample(&[("app", "a")], 1.0)], 0)
            .unwrap();
        let seen = mark_stale(&seen, &mut second, 1_000);
        assert_eq!(second.len(), 2);
        let stale = &second[1];
        assert_eq!(stale.labels["app"], "b");
        assert_eq!(stale.value.to_bits(), STALE_NAN_BITS);
        let mut third = r
            .apply(2_000, vec![sample(&[("app", "a")], 1.0)], 0)
            .unwrap();
        mark_stale(&seen, &mut third, 2_000);
        assert_eq!(third.len(), 1, "a stale marker is written once");
    }
}
