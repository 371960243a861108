//! `variants(m1, m2, ...) of (log_range)`: several metric expressions over one read of
//! the log range.
//!
//! Owns the shared scan and how variants see it. The `of` range decides what is read:
//! its selector, its pipeline and its window (`(t - offset - range, t - offset]` over
//! the step grid) are applied once; the surviving lines, with the labels the pipeline
//! gave them, become an in-memory source that every variant then evaluates over with
//! its own range, offset and stages (its own selector is not consulted, as in Loki).
//! Each variant's series carry `__variant__="<index>"`: the label is part of every
//! grouping a variant makes (`sum(...)` is `sum by (__variant__)`), and `without`
//! drops it, as Loki's answers show. Also as in Loki, a variant that is a bare range
//! aggregation applies only its unwrap (and the filters after it), not its own
//! pipeline stages. It does not own the per-tenant gate (`QueryParams`) or result
//! shaping (`super::metric_result`).

use std::collections::HashMap;
use std::sync::Arc;

use lode_push::{Entry, LabelSet};

use super::log_query::{leading_line_filters, print_labels};
use super::range::{Ctx, Hint, Matrix, StepGrid};
use super::source::{Direction, EntryBatch, LogSource, SelectRequest, SourceError, StreamData};
use super::vector::{self, Value};
use super::EvalError;
use crate::log::{Labels, LabelsBuilder, Pipeline};
use crate::syntax::ast::{Grouping, LogRange, MetricExpr, VariantsExpr, VectorOp};

/// The label naming the variant a series came from (its index in `variants(...)`).
pub const VARIANT_LABEL: &str = "__variant__";

/// Lines the `of` range kept, grouped by their labels after its pipeline.
struct ScannedSource {
    streams: Vec<(LabelSet, Arc<Vec<Entry>>)>,
}

impl LogSource for ScannedSource {
    /// Every scanned stream with entries in the range; matchers are not consulted (a
    /// variant's own selector does not narrow the shared read, as in Loki).
    fn select(&self, req: &SelectRequest<'_>) -> Result<Vec<StreamData>, SourceError> {
        let mut out = Vec::new();
        for (labels, entries) in &self.streams {
            let lo = entries.partition_point(|e| e.timestamp_ns < req.start_ns);
            let hi = entries.partition_point(|e| e.timestamp_ns < req.end_ns);
            if lo >= hi {
                continue;
            }
            let batch = EntryBatch {
                entries: Arc::clone(entries),
                start: lo,
                end: hi,
                origin: None,
                cached: None,
            };
            out.push(StreamData {
                labels: labels.clone(),
                batches: Box::new(std::iter::once(Ok(batch))),
                counts: Vec::new(),
            });
        }
        Ok(out)
    }
}

/// Reads the `of` range once: its lines in the window of every step, run through its
/// pipeline, keyed by their final labels. A line the pipeline marks with an error fails
/// the query, as an unfiltered pipeline error fails any metric query.
fn scan(
    of: &LogRange,
    grid: &StepGrid,
    source: &dyn LogSource,
) -> Result<Vec<(Labels, Vec<Entry>)>, EvalError> {
    let from = grid.first_ns() - of.offset - of.range;
    let to = grid.last_ns() - of.offset;
    let pipeline = Pipeline::new(&of.selector.pipeline)?;
    let hints = leading_line_filters(&of.selector.pipeline);
    let req = SelectRequest {
        matchers: &of.selector.matchers,
        start_ns: from.saturating_add(1),
        end_ns: to.saturating_add(1),
        direction: Direction::Forward,
        line_filters: &hints,
        count_edges: None,
        any_order: false,
        samples: None,
    };
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut out: Vec<(Labels, Vec<Entry>)> = Vec::new();
    for stream in source.select(&req)? {
        let stream_labels = stream.labels;
        for batch in stream.batches {
            let batch = batch?;
            for entry in batch.as_slice() {
                let ts = entry.timestamp_ns;
                if ts <= from || ts > to {
                    continue;
                }
                let mut lb = LabelsBuilder::new(&stream_labels);
                lb.reset(&entry.structured_metadata);
                let Some(line) = pipeline.process(ts, &entry.line, &mut lb) else {
                    continue;
                };
                if let Some(kind) = lb.error() {
                    return Err(EvalError::SeriesError {
                        kind: kind.to_owned(),
                        series: print_labels(&lb.labels()),
                    });
                }
                let labels = lb.labels();
                let slot = match index.get(&labels) {
                    Some(&i) => i,
                    None => {
                        index.insert(labels.clone(), out.len());
                        out.push((labels, Vec::new()));
                        out.len() - 1
                    }
                };
                if let Some((_, entries)) = out.get_mut(slot) {
                    entries.push(Entry {
                        timestamp_ns: ts,
                        line: line.into_owned(),
                        structured_metadata: Default::default(),
                    });
                }
            }
        }
    }
    for (_, entries) in &mut out {
        // Streams that merged into one label set interleave in time.
        entries.sort_by_key(|e| e.timestamp_ns);
    }
    Ok(out)
}

/// `grouping` with `__variant__` added: to `by` (and to no grouping, which becomes
/// `by (__variant__)`) so series of different variants never merge, and to `without`.
fn with_variant(grouping: &Option<Grouping>) -> Option<Grouping> {
    let add = |names: &[String]| {
        let mut names = names.to_vec();
        if !names.iter().any(|n| n == VARIANT_LABEL) {
            names.push(VARIANT_LABEL.to_owned());
        }
        names
    };
    Some(match grouping {
        None => Grouping::By(vec![VARIANT_LABEL.to_owned()]),
        Some(Grouping::By(names)) => Grouping::By(add(names)),
        Some(Grouping::Without(names)) => Grouping::Without(add(names)),
    })
}

/// A variant as it is evaluated over the shared scan.
fn rewrite(expr: &MetricExpr, top: bool) -> MetricExpr {
    match expr {
        MetricExpr::RangeAggregation(agg) => {
            let mut agg = agg.clone();
            if top {
                // Loki applies only the unwrap of a bare range aggregation variant.
                agg.range.selector.pipeline.clear();
            }
            if agg.grouping.is_some() {
                agg.grouping = with_variant(&agg.grouping);
            }
            MetricExpr::RangeAggregation(agg)
        }
        MetricExpr::VectorAggregation(v) => {
            let mut v = v.clone();
            v.inner = Box::new(rewrite(&v.inner, false));
            let groupable = !matches!(
                v.op,
                VectorOp::Sort | VectorOp::SortDesc | VectorOp::ApproxTopk
            );
            if groupable {
                v.grouping = with_variant(&v.grouping);
            }
            MetricExpr::VectorAggregation(v)
        }
        MetricExpr::BinOp(b) => {
            let mut b = b.clone();
            b.lhs = Box::new(rewrite(&b.lhs, false));
            b.rhs = Box::new(rewrite(&b.rhs, false));
            MetricExpr::BinOp(b)
        }
        MetricExpr::LabelReplace(l) => {
            let mut l = l.clone();
            l.inner = Box::new(rewrite(&l.inner, false));
            MetricExpr::LabelReplace(l)
        }
        other => other.clone(),
    }
}

/// Evaluates every variant over one scan of `v.of` and returns their series together.
pub(crate) fn eval_variants(
    v: &VariantsExpr,
    grid: &StepGrid,
    source: &dyn LogSource,
) -> Result<Value, EvalError> {
    if v.of.unwrap.is_some() {
        return Err(EvalError::VariantsUnwrap);
    }
    let scanned = scan(&v.of, grid, source)?;
    let entries: Vec<(Labels, Arc<Vec<Entry>>)> = scanned
        .into_iter()
        .map(|(labels, entries)| (labels, Arc::new(entries)))
        .collect();
    let mut all = Matrix::default();
    for (i, variant) in v.variants.iter().enumerate() {
        let id = i.to_string();
        let streams = entries
            .iter()
            .map(|(labels, entries)| {
                let mut pairs = labels.clone();
                pairs.retain(|(k, _)| k != VARIANT_LABEL);
                pairs.push((VARIANT_LABEL.to_owned(), id.clone()));
                LabelSet::from_pairs(pairs)
                    .map(|set| (set, Arc::clone(entries)))
                    .map_err(|e| EvalError::InvalidParams(format!("variant labels: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let variant_source = ScannedSource { streams };
        let ctx = Ctx {
            source: &variant_source,
            grid,
        };
        let matrix = match vector::eval_value(&rewrite(variant, true), &ctx, &Hint::default())? {
            Value::Vector(m) => m,
            Value::Scalar(x) => vector::constant_series(x, grid),
        };
        all.series.extend(matrix.series);
    }
    Ok(Value::Vector(all))
}

#[cfg(test)]
mod tests {
    use lode_push::{Entry, LabelSet};

    use crate::eval::{eval, EvalError, InMemorySource, QueryParams, QueryResult};
    use crate::parse_expr;

    const S: i64 = 1_000_000_000;

    /// `api` logs "keep a" at 10, 20, 25 s and "drop" at 15 s; `web` "keep b" at 10, 30 s.
    fn source() -> InMemorySource {
        let mut src = InMemorySource::new();
        let mut add = |app: &str, lines: &[(i64, &str)]| {
            src.push(
                LabelSet::from_pairs([("app", app)]).unwrap(),
                lines.iter().map(|(t, l)| Entry {
                    timestamp_ns: t * S,
                    line: (*l).to_owned(),
                    structured_metadata: Default::default(),
                }),
            );
        };
        add(
            "api",
            &[(10, "keep a"), (15, "drop"), (20, "keep a"), (25, "keep a")],
        );
        add("web", &[(10, "keep b"), (30, "keep b")]);
        add("numeric", &[(10, "n=2"), (20, "n=5")]);
        src
    }

    fn instant(query: &str) -> Result<Vec<(String, f64)>, EvalError> {
        let mut p = QueryParams::instant(40 * S);
        p.multi_variant_queries = true;
        let expr = parse_expr(query).unwrap();
        match eval(&expr, &p, &source())? {
            QueryResult::Vector(v) => Ok(v
                .into_iter()
                .map(|s| {
                    let labels: Vec<String> =
                        s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    (labels.join(","), s.value)
                })
                .collect()),
            other => panic!("not a vector: {other:?}"),
        }
    }

    fn rows(v: &[(&str, f64)]) -> Vec<(String, f64)> {
        v.iter().map(|(l, x)| (l.to_string(), *x)).collect()
    }

    #[test]
    fn variants_share_the_of_range_and_carry_their_index() {
        let got = instant(
            r#"variants(count_over_time({app="ignored"}[1m]), bytes_over_time({app="ignored"}[1m])) of ({app=~"api|web"} |= "keep" [1m])"#,
        )
        .unwrap();
        assert_eq!(
            got,
            rows(&[
                ("__variant__=0,app=api", 3.0),
                ("__variant__=0,app=web", 2.0),
                ("__variant__=1,app=api", 18.0),
                ("__variant__=1,app=web", 12.0),
            ])
        );
    }

    #[test]
    fn variant_groupings_keep_the_variant_label_except_without() {
        let got = instant(
            r#"variants(sum by (app) (count_over_time({app="x"}[1m])), sum(count_over_time({app="x"}[1m]))) of ({app=~"api|web"} |= "keep" [1m])"#,
        )
        .unwrap();
        assert_eq!(
            got,
            rows(&[
                ("__variant__=0,app=api", 3.0),
                ("__variant__=0,app=web", 2.0),
                ("__variant__=1", 5.0),
            ])
        );
        let got = instant(
            r#"variants(sum without (app) (count_over_time({app="x"}[1m]))) of ({app=~"api|web"} |= "keep" [1m])"#,
        )
        .unwrap();
        assert_eq!(got, rows(&[("", 5.0)]));
    }

    #[test]
    fn each_variant_has_its_own_window_within_the_of_window() {
        let got = instant(
            r#"variants(count_over_time({app="x"}[5s]), count_over_time({app="x"}[1m] offset 20s)) of ({app=~"api|web"} |= "keep" [1m])"#,
        )
        .unwrap();
        assert_eq!(
            got,
            rows(&[
                ("__variant__=1,app=api", 2.0),
                ("__variant__=1,app=web", 1.0)
            ])
        );
        // The of range bounds the read: nothing before 35 s is seen.
        let got = instant(
            r#"variants(count_over_time({app="x"}[1m])) of ({app=~"api|web"} |= "keep" [5s])"#,
        )
        .unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn wrapped_variants_keep_their_pipeline_bare_ones_only_their_unwrap() {
        let got = instant(
            r#"variants(sum by (app) (count_over_time({app="x"} |= "a" [1m]))) of ({app=~"api|web"} |= "keep" [1m])"#,
        )
        .unwrap();
        assert_eq!(got, rows(&[("__variant__=0,app=api", 3.0)]));
        let got = instant(
            r#"variants(sum_over_time({app="x"} | json | unwrap n | __error__="" [1m])) of ({app="numeric"} | logfmt [1m])"#,
        )
        .unwrap();
        assert_eq!(got, rows(&[("__variant__=0,app=numeric", 7.0)]));
    }

    #[test]
    fn variants_are_refused_unless_enabled() {
        let expr =
            parse_expr(r#"variants(count_over_time({app="x"}[1m])) of ({app="api"}[1m])"#).unwrap();
        let err = eval(&expr, &QueryParams::instant(40 * S), &source()).unwrap_err();
        assert_eq!(err, EvalError::VariantsDisabled);
        assert_eq!(
            err.to_string(),
            "multi variant queries are disabled for this instance"
        );
        assert!(err.is_client_error());
    }

    #[test]
    fn range_queries_return_a_matrix_per_variant() {
        let expr = parse_expr(
            r#"variants(count_over_time({app="x"}[10s]), rate({app="x"}[10s])) of ({app="api"} |= "keep" [10s])"#,
        )
        .unwrap();
        let mut p = QueryParams::range(20 * S, 30 * S, 10 * S);
        p.multi_variant_queries = true;
        let QueryResult::Matrix(series) = eval(&expr, &p, &source()).unwrap() else {
            panic!("not a matrix");
        };
        let got: Vec<(String, Vec<f64>)> = series
            .iter()
            .map(|s| {
                (
                    s.labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(","),
                    s.points.iter().map(|p| p.value).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("__variant__=0,app=api".to_owned(), vec![1.0, 1.0]),
                ("__variant__=1,app=api".to_owned(), vec![0.1, 0.1]),
            ]
        );
    }

    #[test]
    fn errors_of_the_of_pipeline_fail_the_query() {
        let err =
            instant(r#"variants(count_over_time({app="x"}[1m])) of ({app="api"} | json [1m])"#)
                .unwrap_err();
        assert!(matches!(err, EvalError::SeriesError { ref kind, .. } if kind == "JSONParserErr"));
        let ok = instant(
            r#"variants(count_over_time({app="x"}[1m])) of ({app="api"} | json | __error__="" [1m])"#,
        )
        .unwrap();
        assert!(ok.is_empty());
    }
}
