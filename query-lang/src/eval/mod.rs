//! Query evaluation: log queries and metric queries over a [`LogSource`].
//!
//! Owns running a parsed [`Expr`] for given [`QueryParams`]: log queries merge streams by
//! time and stop at `limit`; metric queries evaluate range aggregations in one pass per
//! series over the step grid, then vector aggregations and binary operators. Results are
//! [`QueryResult`]s whose serde form is Loki's `data` object. It does not own parsing
//! (`crate::syntax`), per-line stages (`crate::log`), or HTTP parameter parsing.
//!
//! Entry point: [`eval`].

mod log_query;
mod range;
pub mod result;
mod sample_cache;
pub mod source;
mod variants;
mod vector;

pub use result::{EntryLabels, LogEntry, Point, QueryResult, Sample, Series, Stream};
pub use sample_cache::{BlockOrigin, CachedSamples, SampleCache, SampleKey};
pub use source::{
    required_substrings, BatchIter, BlockCount, Direction, EntryBatch, InMemorySource, LogSource,
    Needle, SelectRequest, SourceError, StreamData,
};

use crate::log::PipelineError;
use crate::syntax::ast::{Expr, MetricExpr, VectorOp};

/// Loki's default `max_query_series`.
pub const DEFAULT_MAX_SERIES: usize = 500;
/// Loki's limit on points per series of a range query (`(end - start) / step`).
pub const DEFAULT_MAX_POINTS: usize = 11_000;
/// Loki's default log query `limit`.
pub const DEFAULT_LIMIT: usize = 100;

/// How to run a query. Build with [`QueryParams::instant`] or [`QueryParams::range`] and
/// adjust the public fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryParams {
    /// Range start (inclusive for log queries), nanoseconds; the time of an instant query.
    pub start_ns: i64,
    /// Range end (exclusive for log queries), nanoseconds; equals `start_ns` for instant.
    pub end_ns: i64,
    /// Step between metric evaluations, nanoseconds; 0 for instant queries.
    pub step_ns: i64,
    /// Log queries: return at most one entry per interval (0 = every entry).
    pub interval_ns: i64,
    /// Log queries: maximum entries returned.
    pub limit: usize,
    pub direction: Direction,
    /// Log queries: key streams by stream labels and report structured metadata and
    /// parsed labels per entry (`X-Loki-Response-Encoding-Flags: categorize-labels`).
    pub categorize_labels: bool,
    /// `max_query_series`: most series one step of a metric range query may have
    /// (instant queries are not limited, as in Loki).
    pub max_series: usize,
    /// Most steps a range query may evaluate.
    pub max_points: usize,
    /// `enable_multi_variant_queries`: whether `variants(...) of (...)` may run. Off by
    /// default, as in Loki.
    pub multi_variant_queries: bool,
    /// Whether `approx_topk` may run (Loki's `shard_aggregations` lists it). Off by
    /// default, as in Loki.
    pub approx_topk: bool,
}

impl QueryParams {
    /// An instant query at `time_ns`.
    pub fn instant(time_ns: i64) -> Self {
        QueryParams {
            start_ns: time_ns,
            end_ns: time_ns,
            step_ns: 0,
            interval_ns: 0,
            limit: DEFAULT_LIMIT,
            direction: Direction::Backward,
            categorize_labels: false,
            max_series: DEFAULT_MAX_SERIES,
            max_points: DEFAULT_MAX_POINTS,
            multi_variant_queries: false,
            approx_topk: false,
        }
    }

    /// A range query over `[start_ns, end_ns]` with the given step.
    pub fn range(start_ns: i64, end_ns: i64, step_ns: i64) -> Self {
        QueryParams {
            start_ns,
            end_ns,
            step_ns,
            ..QueryParams::instant(start_ns)
        }
    }

    /// Loki's rule: instant when `start == end` and `step == 0`.
    pub fn is_instant(&self) -> bool {
        self.start_ns == self.end_ns && self.step_ns == 0
    }
}

/// Why a query could not be answered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A stage that fails to build (bad regex, template...): Loki answers 400.
    #[error("parse error : {0}")]
    Pipeline(#[from] PipelineError),
    #[error("log queries are not supported as an instant query type, please change your query to a range query type")]
    LogQueryInstant,
    #[error("pipeline error: '{kind}' for series: '{series}'.\nUse a label filter to intentionally skip this error. (e.g | __error__!=\"{kind}\").\nTo skip all potential errors you can match empty errors.(e.g __error__=\"\")\nThe label filter can also be specified after unwrap. (e.g | unwrap latency | __error__=\"\" )\n")]
    SeriesError { kind: String, series: String },
    #[error("maximum number of series ({limit}) reached for a single query; consider reducing query cardinality by adding more filters to the stream selector or using a stricter matcher (max_query_series = {limit})")]
    MaxSeries { limit: usize },
    #[error("exceeded maximum resolution of {limit} points per timeseries: {points} steps from start to end; try increasing the step (step = {step_ns}ns)")]
    MaxPoints {
        points: i64,
        limit: usize,
        step_ns: i64,
    },
    #[error("invalid query parameters: {0}")]
    InvalidParams(String),
    #[error("multiple matches for labels: many-to-one matching must be explicit (group_left/group_right); left-hand series {series}")]
    ManyToOne { series: String },
    #[error("found duplicate series on the {side} hand-side of the operation: {series}; many-to-many matching not allowed: matching labels must be unique on one side")]
    DuplicateSeries { side: &'static str, series: String },
    #[error("invalid regex {regex:?} in label_replace: {reason}")]
    LabelReplaceRegex { regex: String, reason: String },
    /// The tenant has not enabled `enable_multi_variant_queries`.
    #[error("multi variant queries are disabled for this instance")]
    VariantsDisabled,
    /// `unwrap` in the log range of `variants(...) of (...)`: each variant unwraps.
    #[error("unwrap is not supported in the log range of variants(...) of (...); unwrap inside each variant")]
    VariantsUnwrap,
    /// The tenant's `shard_aggregations` does not list `approx_topk` (Loki's text; a 500
    /// there, from its query planner).
    #[error("approx_topk is not enabled. See -limits.shard_aggregations")]
    ApproxTopkDisabled,
    /// `approx_topk` in a range query (Loki's text; a 500 there).
    #[error("count min sketches are only supported on instant queries")]
    ApproxTopkNotInstant,
}

impl EvalError {
    /// True for errors caused by the query or its parameters (HTTP 400), false for
    /// failures of the store and the errors Loki answers with 500 (HTTP 500).
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            EvalError::Source(_) | EvalError::ApproxTopkDisabled | EvalError::ApproxTopkNotInstant
        )
    }
}

/// Runs `expr` over `source`.
///
/// Log queries need a range (`!params.is_instant()`); metric queries run at one time
/// (instant, returning a vector or scalar) or over the step grid (returning a matrix).
pub fn eval(
    expr: &Expr,
    params: &QueryParams,
    source: &dyn LogSource,
) -> Result<QueryResult, EvalError> {
    let uses_approx_topk = match expr {
        Expr::Log(_) => false,
        Expr::Metric(m) => contains_approx_topk(m),
        Expr::Variants(v) => v.variants.iter().any(contains_approx_topk),
    };
    if uses_approx_topk {
        if !params.approx_topk {
            return Err(EvalError::ApproxTopkDisabled);
        }
        if !params.is_instant() {
            return Err(EvalError::ApproxTopkNotInstant);
        }
    }
    match expr {
        Expr::Log(sel) => {
            if params.is_instant() {
                return Err(EvalError::LogQueryInstant);
            }
            log_query::eval_log(sel, params, source)
        }
        Expr::Metric(m) => {
            let params = metric_params(params)?;
            let grid = range::StepGrid::new(&params);
            let ctx = range::Ctx {
                source,
                grid: &grid,
            };
            let value = vector::eval_value(m, &ctx, &range::Hint::default())?;
            metric_result(value, &params, &grid, contains_sort(m))
        }
        Expr::Variants(v) => {
            if !params.multi_variant_queries {
                return Err(EvalError::VariantsDisabled);
            }
            let params = metric_params(params)?;
            let grid = range::StepGrid::new(&params);
            let value = variants::eval_variants(v, &grid, source)?;
            let sorted = v.variants.iter().any(contains_sort);
            metric_result(value, &params, &grid, sorted)
        }
    }
}

/// Whether `approx_topk` appears anywhere in `e`.
fn contains_approx_topk(e: &MetricExpr) -> bool {
    any_vector_op(e, &|op| op == VectorOp::ApproxTopk)
}

/// Whether some vector aggregation anywhere in `e` has an operation `pred` accepts.
fn any_vector_op(e: &MetricExpr, pred: &dyn Fn(VectorOp) -> bool) -> bool {
    match e {
        MetricExpr::VectorAggregation(v) => pred(v.op) || any_vector_op(&v.inner, pred),
        MetricExpr::BinOp(b) => any_vector_op(&b.lhs, pred) || any_vector_op(&b.rhs, pred),
        MetricExpr::LabelReplace(l) => any_vector_op(&l.inner, pred),
        _ => false,
    }
}

/// Loki's query frontend aligns metric range queries to the step: the start is rounded
/// down and the end rounded up to a multiple of the step (since the Unix epoch), so a
/// 7m step over a 1h range evaluates 9 points, the last one after `end`.
fn align_to_step(params: &QueryParams) -> QueryParams {
    let step = params.step_ns;
    let start_ns = params.start_ns - params.start_ns.rem_euclid(step);
    let rem = params.end_ns.rem_euclid(step);
    let end_ns = if rem == 0 {
        params.end_ns
    } else {
        params.end_ns.saturating_add(step - rem)
    };
    QueryParams {
        start_ns,
        end_ns,
        ..params.clone()
    }
}

/// Whether `sort` or `sort_desc` appears anywhere in `e`.
fn contains_sort(e: &MetricExpr) -> bool {
    any_vector_op(e, &|op| matches!(op, VectorOp::Sort | VectorOp::SortDesc))
}

/// Checks a metric query's step parameters; range queries come back aligned to the step.
fn metric_params(params: &QueryParams) -> Result<QueryParams, EvalError> {
    if params.is_instant() {
        return Ok(params.clone());
    }
    if params.step_ns <= 0 {
        return Err(EvalError::InvalidParams(format!(
            "zero or negative query resolution step widths are not accepted (step = {}ns); try a positive integer",
            params.step_ns
        )));
    }
    if params.end_ns < params.start_ns {
        return Err(EvalError::InvalidParams(format!(
            "end ({}) must not be before start ({})",
            params.end_ns, params.start_ns
        )));
    }
    let points = (params.end_ns - params.start_ns) / params.step_ns;
    if points > params.max_points as i64 {
        return Err(EvalError::MaxPoints {
            points,
            limit: params.max_points,
            step_ns: params.step_ns,
        });
    }
    Ok(align_to_step(params))
}

/// A metric query's answer from its evaluated value: a scalar or vector for instant
/// queries (vector samples sorted by labels unless the query sorts), a matrix sorted by
/// labels for range queries.
fn metric_result(
    value: vector::Value,
    params: &QueryParams,
    grid: &range::StepGrid,
    keeps_order: bool,
) -> Result<QueryResult, EvalError> {
    let instant = params.is_instant();
    let matrix = match value {
        vector::Value::Scalar(v) => {
            if instant {
                return Ok(QueryResult::Scalar {
                    timestamp_ms: grid.timestamp_ms(0),
                    value: v,
                });
            }
            vector::constant_series(v, grid)
        }
        vector::Value::Vector(m) => m,
    };
    // Loki 3.7 limits the series of each step of a range query (707 series over the range
    // pass if no step has more than 500) and does not limit instant queries: an instant
    // `quantile_over_time` without grouping returns one series per line.
    if !instant {
        let mut per_step = vec![0usize; grid.len()];
        for s in &matrix.series {
            for (step, _) in &s.points {
                if let Some(c) = per_step.get_mut(*step as usize) {
                    *c += 1;
                    if *c > params.max_series {
                        return Err(EvalError::MaxSeries {
                            limit: params.max_series,
                        });
                    }
                }
            }
        }
    }
    if instant {
        let mut samples: Vec<Sample> = matrix
            .series
            .into_iter()
            .filter_map(|s| {
                s.points.first().map(|(_, v)| Sample {
                    labels: s.labels,
                    timestamp_ms: grid.timestamp_ms(0),
                    value: *v,
                })
            })
            .collect();
        if !keeps_order {
            samples.sort_by(|a, b| a.labels.cmp(&b.labels));
        }
        return Ok(QueryResult::Vector(samples));
    }
    let mut series: Vec<Series> = matrix
        .series
        .into_iter()
        .filter(|s| !s.points.is_empty())
        .map(|s| Series {
            points: s
                .points
                .iter()
                .map(|(step, v)| Point {
                    timestamp_ms: grid.timestamp_ms(*step as usize),
                    value: *v,
                })
                .collect(),
            labels: s.labels,
        })
        .collect();
    series.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(QueryResult::Matrix(series))
}

#[cfg(test)]
mod tests {
    use lode_push::{Entry, LabelSet};

    use super::*;
    use crate::parse_expr;

    const MIN: i64 = 60_000_000_000;

    /// One line a minute for an hour in each of `pods`.
    fn source(pods: &[&str]) -> InMemorySource {
        let mut src = InMemorySource::new();
        for pod in pods {
            let labels = LabelSet::from_pairs([("app", "x"), ("pod", *pod)]).unwrap();
            src.push(
                labels,
                (0..60).map(|i| Entry {
                    timestamp_ns: i * MIN + 1,
                    line: "l".to_owned(),
                    structured_metadata: Default::default(),
                }),
            );
        }
        src
    }

    #[test]
    fn range_queries_are_aligned_to_the_step_like_lokis_frontend() {
        let expr = parse_expr(r#"sum(count_over_time({app="x"}[7m]))"#).unwrap();
        let params = QueryParams::range(MIN / 2, 60 * MIN, 7 * MIN);
        let QueryResult::Matrix(series) = eval(&expr, &params, &source(&["a"])).unwrap() else {
            panic!("not a matrix");
        };
        let stamps: Vec<i64> = series[0].points.iter().map(|p| p.timestamp_ms).collect();
        // Start rounded down to 0, end rounded up to 63m: 0m has no data, so 7m..63m.
        let want: Vec<i64> = (1..=9).map(|k| k * 7 * MIN / 1_000_000).collect();
        assert_eq!(stamps, want);
    }

    #[test]
    fn series_limit_applies_per_step_of_range_queries_but_not_to_instant_ones() {
        let expr = parse_expr(r#"count_over_time({app="x"}[5m])"#).unwrap();
        let src = source(&["a", "b"]);
        let mut range = QueryParams::range(10 * MIN, 20 * MIN, MIN);
        range.max_series = 1;
        assert_eq!(
            eval(&expr, &range, &src),
            Err(EvalError::MaxSeries { limit: 1 })
        );
        let mut instant = QueryParams::instant(20 * MIN);
        instant.max_series = 1;
        let QueryResult::Vector(v) = eval(&expr, &instant, &src).unwrap() else {
            panic!("not a vector");
        };
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn approx_topk_is_gated_and_instant_only_with_lokis_errors() {
        let expr =
            parse_expr(r#"approx_topk(1, sum by (pod) (count_over_time({app="x"}[5m])))"#).unwrap();
        let src = source(&["a", "b"]);
        // Off by default, as Loki's shard_aggregations is empty by default.
        let err = eval(&expr, &QueryParams::instant(20 * MIN), &src).unwrap_err();
        assert_eq!(
            err.to_string(),
            "approx_topk is not enabled. See -limits.shard_aggregations"
        );
        assert!(!err.is_client_error(), "Loki answers 500");
        let mut range = QueryParams::range(10 * MIN, 20 * MIN, MIN);
        range.approx_topk = true;
        let err = eval(&expr, &range, &src).unwrap_err();
        assert_eq!(
            err.to_string(),
            "count min sketches are only supported on instant queries"
        );
        assert!(!err.is_client_error());
        let mut instant = QueryParams::instant(20 * MIN);
        instant.approx_topk = true;
        let QueryResult::Vector(v) = eval(&expr, &instant, &src).unwrap() else {
            panic!("not a vector");
        };
        // Exact: both pods have 5 lines; topk keeps one of them with its labels.
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].value, 5.0);
        assert_eq!(v[0].labels[0].0, "pod");
    }

    #[test]
    fn approx_topk_validation_matches_lokis_parse_errors() {
        for (query, want) in [
            (
                r#"approx_topk(2, count_over_time({app="x"}[5m])) by (pod)"#,
                "parse error : grouping not allowed for approx_topk aggregation",
            ),
            (
                r#"approx_topk(0, count_over_time({app="x"}[5m]))"#,
                "parse error : invalid parameter (must be greater than 0) approx_topk(0",
            ),
            (
                r#"approx_topk(count_over_time({app="x"}[5m]))"#,
                "parse error : parameter required for operation approx_topk",
            ),
        ] {
            assert_eq!(parse_expr(query).unwrap_err().to_string(), want, "{query}");
        }
    }

    /// Streams of JSON and logfmt lines with `detected_level` metadata, some malformed.
    fn mixed_source() -> InMemorySource {
        let mut src = InMemorySource::new();
        let levels = ["info", "warn", "error", "debug"];
        for (pod, ns) in [("a", "prod"), ("b", "prod"), ("c", "dev")] {
            let labels =
                LabelSet::from_pairs([("app", "x"), ("namespace", ns), ("pod", pod)]).unwrap();
            src.push(
                labels,
                (0..300).map(|i: usize| {
                    let level = levels[(i * 7 + pod.len()) % 4];
                    let line = match i % 5 {
                        0 => format!("level={level} status={} took={}ms", 200 + i % 4 * 100, i),
                        1 => format!(r#"{{"level":"{level}","path":"/p{}","size":{i}}}"#, i % 3),
                        2 => format!(r#"{{"path":"/q","level":"{level}","bad":"#),
                        3 => format!("error {level} {i}"),
                        _ => format!(r#"{{"level":"{level}","status":{}}}"#, 200 + i % 4 * 100),
                    };
                    Entry {
                        timestamp_ns: i as i64 * 20_000_000_000 + 7,
                        line,
                        structured_metadata: if i % 6 == 0 {
                            Default::default()
                        } else {
                            vec![("detected_level".to_owned(), level.to_owned())].into()
                        },
                    }
                }),
            );
        }
        src
    }

    fn matrix(query: &str, src: &InMemorySource) -> Result<Vec<Series>, EvalError> {
        let expr = parse_expr(query).unwrap();
        let params = QueryParams::range(0, 100 * MIN, MIN);
        match eval(&expr, &params, src)? {
            QueryResult::Matrix(series) => Ok(series),
            other => panic!("{query}: {other:?}"),
        }
    }

    #[test]
    fn sums_of_counts_keyed_by_the_sums_labels_equal_sums_of_every_series() {
        let src = mixed_source();
        for (inner, by) in [
            (r#"count_over_time({app="x"} | logfmt [5m])"#, "by (level)"),
            (r#"rate({namespace="prod"} |= "error" [5m])"#, "by (app)"),
            (
                r#"bytes_over_time({app="x"} | json | __error__="" [3m])"#,
                "by (path, level)",
            ),
            (
                r#"count_over_time({app="x"} | json | drop __error__, __error_details__ [5m])"#,
                "by (level)",
            ),
            (
                r#"count_over_time({app="x"} | json | status >= 300 [5m])"#,
                "",
            ),
            (
                r#"bytes_rate({app="x"} | logfmt | label_format level=status [5m])"#,
                "by (level, pod)",
            ),
            (r#"count_over_time({app="x"} [10m])"#, "by (detected_level)"),
        ] {
            // `* 1` puts a binary operation between the sum and the range aggregation,
            // which then keys its series by their full label sets.
            let pushed = matrix(&format!("sum {by} ({inner})"), &src);
            let full = matrix(&format!("sum {by} ({inner} * 1)"), &src);
            match (pushed, full) {
                (Ok(pushed), Ok(full)) => {
                    assert_eq!(pushed.len(), full.len(), "{inner}");
                    assert!(!pushed.is_empty(), "{inner}");
                    for (p, f) in pushed.iter().zip(&full) {
                        assert_eq!(p.labels, f.labels, "{inner}");
                        let stamps = |s: &Series| -> Vec<i64> {
                            s.points.iter().map(|p| p.timestamp_ms).collect()
                        };
                        assert_eq!(stamps(p), stamps(f), "{inner}");
                        for (a, b) in p.points.iter().zip(&f.points) {
                            assert!(
                                (a.value - b.value).abs() <= 1e-12 * b.value.abs(),
                                "{inner}"
                            );
                        }
                    }
                }
                (pushed, full) => assert_eq!(pushed.is_err(), full.is_err(), "{inner}"),
            }
        }
    }
}
