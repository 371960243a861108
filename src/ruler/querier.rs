//! `EngineQuerier`: the ruler's [`RuleQuerier`] over the server's query engine.
//!
//! Owns turning a rule's `expr` into an instant query at the evaluation tick (parse with
//! query-lang, refuse log queries, apply the tenant's `max_query_series`) and the
//! engine's answer into [`Sample`]s: a vector as is, a scalar as one label-less sample,
//! anything else an error. It does not own running the query (`crate::querier`) nor what
//! the ruler does with the samples (`group`).

use std::sync::Arc;

use lode_push::LabelSet;
use query_lang::eval::{QueryParams, QueryResult};
use query_lang::Expr;

use super::{QueryError, RuleQuerier, Sample};
use crate::querier::Querier;
use crate::TenantId;

/// Runs rule queries through the same engine as `/loki/api/v1/query`.
#[derive(Clone, Debug)]
pub struct EngineQuerier {
    querier: Arc<Querier>,
}

impl EngineQuerier {
    pub fn new(querier: Arc<Querier>) -> EngineQuerier {
        EngineQuerier { querier }
    }
}

#[async_trait::async_trait]
impl RuleQuerier for EngineQuerier {
    async fn instant(
        &self,
        tenant: &TenantId,
        query: &str,
        ts_ns: i64,
    ) -> Result<Vec<Sample>, QueryError> {
        let expr = query_lang::parse_expr(query).map_err(|e| QueryError::new(e.to_string()))?;
        if matches!(expr, Expr::Log(_)) {
            return Err(QueryError::new(
                "rule result is not a vector or scalar: this is a log query, use a metric query",
            ));
        }
        let mut params = QueryParams::instant(ts_ns);
        let limits = self.querier.limits(tenant);
        if limits.max_query_series > 0 {
            params.max_series = limits.max_query_series;
        }
        params.multi_variant_queries = limits.enable_multi_variant_queries;
        params.approx_topk = limits.approx_topk_enabled();
        let (result, _) = self
            .querier
            .query(tenant, expr, params)
            .await
            .map_err(|e| QueryError::new(e.to_string()))?;
        to_samples(result)
    }
}

/// A vector's samples, or a scalar as one label-less sample; other results are errors.
pub fn to_samples(result: QueryResult) -> Result<Vec<Sample>, QueryError> {
    match result {
        QueryResult::Vector(samples) => samples
            .into_iter()
            .map(|s| {
                let labels = LabelSet::from_pairs(s.labels).map_err(|e| {
                    QueryError::new(format!("rule result has an invalid label set: {e}"))
                })?;
                Ok(Sample {
                    labels,
                    value: s.value,
                })
            })
            .collect(),
        QueryResult::Scalar { value, .. } => Ok(vec![Sample {
            labels: LabelSet::default(),
            value,
        }]),
        QueryResult::Matrix(_) => Err(QueryError::new(
            "rule result is not a vector or scalar: got a matrix",
        )),
        QueryResult::Streams { .. } => Err(QueryError::new(
            "rule result is not a vector or scalar: got log streams",
        )),
    }
}

#[cfg(test)]
mod tests {
    use query_lang::eval::{Point, Sample as EngineSample, Series};

    use super::*;

    #[test]
    fn a_vector_keeps_labels_and_values_and_a_scalar_becomes_one_unlabelled_sample() {
        let vector = QueryResult::Vector(vec![
            EngineSample {
                labels: vec![("app".into(), "api".into())],
                timestamp_ms: 1,
                value: 0.1,
            },
            EngineSample {
                labels: vec![("app".into(), "web".into())],
                timestamp_ms: 1,
                value: 2.0,
            },
        ]);
        let got = to_samples(vector).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].labels, LabelSet::parse(r#"{app="api"}"#).unwrap());
        assert_eq!(got[1].value, 2.0);

        let scalar = QueryResult::Scalar {
            timestamp_ms: 1,
            value: 7.0,
        };
        assert_eq!(
            to_samples(scalar).unwrap(),
            vec![Sample {
                labels: LabelSet::default(),
                value: 7.0
            }]
        );
    }

    #[test]
    fn matrices_and_streams_are_errors_naming_what_came_back() {
        let matrix = QueryResult::Matrix(vec![Series {
            labels: vec![],
            points: vec![Point {
                timestamp_ms: 1,
                value: 1.0,
            }],
        }]);
        let err = to_samples(matrix).unwrap_err();
        assert!(err.message.contains("matrix"), "{err}");
        let streams = QueryResult::Streams {
            streams: vec![],
            categorized: false,
        };
        let err = to_samples(streams).unwrap_err();
        assert!(err.message.contains("not a vector or scalar"), "{err}");
    }
}
