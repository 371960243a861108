//! Property tests of the parser and the canonical printer: any valid tree prints to text
//! that parses back to the same tree, and no input, however broken, makes `parse_expr`
//! panic.
//!
//! The generator builds only trees the parser accepts (Loki's post-parse rules: a
//! non-empty-compatible selector, unwrap only where the aggregation takes one, no literal
//! legs on set operators, `bool` only on comparisons...), so a failure is a printer or a
//! parser bug, not a generator one.

#![allow(clippy::unwrap_used)] // generators build matchers from known-good regexes

use proptest::prelude::*;
use query_lang::syntax::parse_expr;
use query_lang::*;

// Label names that are no LogQL keyword.
const NAMES: &[&str] = &["app", "env", "pod", "region", "msg", "code", "latency"];
const REGEXES: &[&str] = &[".*", "a|b", "[0-9]+", "x.+", "(?i)err", "ap+"];

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(NAMES).prop_map(str::to_owned)
}

fn names() -> impl Strategy<Value = Vec<String>> {
    prop::sample::subsequence(NAMES, 1..=3).prop_map(|v| v.into_iter().map(str::to_owned).collect())
}

/// Strings with the characters that need escaping in LogQL strings.
fn text() -> impl Strategy<Value = String> {
    "[a-z0-9 _.\"\\\\/\t\n{}|=ä€-]{0,10}"
}

/// Text for templates: no braces, so it never opens a template action.
fn template_text() -> impl Strategy<Value = String> {
    "[a-z0-9 _.\"\\\\/\tä-]{0,10}"
}

fn regex() -> impl Strategy<Value = String> {
    prop::sample::select(REGEXES).prop_map(str::to_owned)
}

fn matcher() -> impl Strategy<Value = Matcher> {
    prop_oneof![
        (name(), text()).prop_map(|(n, v)| Matcher::new(n, MatchOp::Eq, v).unwrap()),
        (name(), text()).prop_map(|(n, v)| Matcher::new(n, MatchOp::Neq, v).unwrap()),
        (name(), regex()).prop_map(|(n, v)| Matcher::new(n, MatchOp::Re, v).unwrap()),
        (name(), regex()).prop_map(|(n, v)| Matcher::new(n, MatchOp::Nre, v).unwrap()),
    ]
}

/// A selector Loki accepts: the first matcher is an equality on a non-empty value.
fn matchers() -> impl Strategy<Value = Vec<Matcher>> {
    (
        name(),
        "[a-z0-9]{1,6}",
        prop::collection::vec(matcher(), 0..3),
    )
        .prop_map(|(n, v, rest)| {
            let mut all = vec![Matcher::new(n, MatchOp::Eq, v).unwrap()];
            all.extend(rest);
            all
        })
}

fn line_filter() -> impl Strategy<Value = LineFilter> {
    let lit = |v: Vec<String>| v.into_iter().map(LineFilterValue::Literal).collect();
    prop_oneof![
        prop::collection::vec(text(), 1..3).prop_map(move |v| LineFilter {
            op: LineFilterOp::Contains,
            values: lit(v),
        }),
        text().prop_map(|v| LineFilter {
            op: LineFilterOp::NotContains,
            values: vec![LineFilterValue::Literal(v)],
        }),
        (regex(), any::<bool>()).prop_map(|(r, neg)| LineFilter {
            op: if neg {
                LineFilterOp::NotMatch
            } else {
                LineFilterOp::Match
            },
            values: vec![LineFilterValue::Literal(r)],
        }),
        Just(LineFilter {
            op: LineFilterOp::Pattern,
            values: vec![LineFilterValue::Literal("<_> error <_>".to_owned())],
        }),
        Just(LineFilter {
            op: LineFilterOp::Contains,
            values: vec![LineFilterValue::Ip("192.168.0.0/16".to_owned())],
        }),
    ]
}

fn cmp_op() -> impl Strategy<Value = CmpOp> {
    prop::sample::select(vec![
        CmpOp::Eq,
        CmpOp::Neq,
        CmpOp::Gt,
        CmpOp::Gte,
        CmpOp::Lt,
        CmpOp::Lte,
    ])
}

fn label_filter_leaf() -> impl Strategy<Value = LabelFilter> {
    prop_oneof![
        matcher().prop_map(LabelFilter::Matcher),
        (name(), cmp_op(), -50i32..5000, 0u8..4).prop_map(|(name, op, n, frac)| {
            LabelFilter::Number {
                name,
                op,
                value: f64::from(n) + f64::from(frac) / 4.0,
            }
        }),
        (name(), cmp_op(), 1i64..100_000).prop_map(|(name, op, ms)| LabelFilter::Duration {
            name,
            op,
            value: ms * 1_000_000,
        }),
        (name(), cmp_op(), 1u64..10_000).prop_map(|(name, op, kb)| LabelFilter::Bytes {
            name,
            op,
            value: kb * 1000,
        }),
        (name(), any::<bool>()).prop_map(|(name, negated)| LabelFilter::Ip {
            name,
            negated,
            pattern: "10.0.0.0/8".to_owned(),
        }),
    ]
}

fn label_filter() -> impl Strategy<Value = LabelFilter> {
    label_filter_leaf().prop_recursive(3, 8, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone())
                .prop_map(|(a, b)| LabelFilter::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| LabelFilter::Or(Box::new(a), Box::new(b))),
        ]
    })
}

fn extract_params() -> impl Strategy<Value = Vec<ExtractParam>> {
    prop::collection::vec(
        (
            name(),
            prop::sample::select(vec!["a", "a.b", "a[0]", "x.y.z"]),
        )
            .prop_map(|(l, e)| ExtractParam {
                label: l,
                expr: e.to_owned(),
            }),
        0..3,
    )
}

fn named_matchers() -> impl Strategy<Value = Vec<NamedMatcher>> {
    prop::collection::vec(
        prop_oneof![
            name().prop_map(NamedMatcher::Name),
            matcher().prop_map(NamedMatcher::Matcher),
        ],
        1..3,
    )
}

fn stage() -> impl Strategy<Value = Stage> {
    prop_oneof![
        line_filter().prop_map(Stage::LineFilter),
        extract_params().prop_map(Stage::Json),
        (any::<bool>(), any::<bool>(), extract_params()).prop_map(
            |(strict, keep_empty, params)| Stage::Logfmt(LogfmtParser {
                strict,
                keep_empty,
                params,
            })
        ),
        Just(Stage::Regexp("(?P<code>\\d+) (?P<msg>.*)".to_owned())),
        Just(Stage::Pattern("<_> <code> \"<msg>\"".to_owned())),
        Just(Stage::Unpack),
        label_filter().prop_map(Stage::LabelFilter),
        template_text().prop_map(|t| Stage::LineFormat(format!("{{{{.app}}}} {t}"))),
        (name(), name(), template_text()).prop_filter_map("one label once", |(a, b, t)| {
            (a != b).then(|| {
                Stage::LabelFormat(vec![
                    LabelFmt::Rename { dst: a, src: b },
                    LabelFmt::Template {
                        dst: "route".to_owned(),
                        template: format!("{{{{.code}}}}{t}"),
                    },
                ])
            })
        }),
        Just(Stage::Decolorize),
        named_matchers().prop_map(Stage::Drop),
        named_matchers().prop_map(Stage::Keep),
    ]
}

/// `| keep a != "x"` reads as the matcher `a != "x"` (Loki's parser shifts), so a
/// `drop`/`keep` list ending in a bare name followed by a `!=`/`!~` line filter has no
/// spelling of its own. Parsing never builds that tree; it is left out here and noted in
/// docs/logql.md.
fn unprintable(pipeline: &[Stage]) -> bool {
    pipeline.windows(2).any(|w| match w {
        [Stage::Drop(list) | Stage::Keep(list), Stage::LineFilter(f)] => {
            matches!(list.last(), Some(NamedMatcher::Name(_)))
                && matches!(f.op, LineFilterOp::NotContains | LineFilterOp::NotMatch)
        }
        _ => false,
    })
}

fn selector() -> impl Strategy<Value = LogSelector> {
    (matchers(), prop::collection::vec(stage(), 0..4))
        .prop_filter("has a spelling", |(_, pipeline)| !unprintable(pipeline))
        .prop_map(|(matchers, pipeline)| LogSelector { matchers, pipeline })
}

fn grouping() -> impl Strategy<Value = Grouping> {
    prop_oneof![
        names().prop_map(Grouping::By),
        names().prop_map(Grouping::Without)
    ]
}

fn unwrap_expr() -> impl Strategy<Value = Unwrap> {
    (
        name(),
        prop::sample::select(vec![
            Conversion::Float,
            Conversion::Bytes,
            Conversion::Duration,
            Conversion::DurationSeconds,
        ]),
        prop::collection::vec(label_filter(), 0..2),
    )
        .prop_map(|(label, conversion, post_filters)| Unwrap {
            label,
            conversion,
            post_filters,
        })
}

fn range_aggregation() -> impl Strategy<Value = MetricExpr> {
    use RangeOp::*;
    let plain = prop::sample::select(vec![
        CountOverTime,
        Rate,
        BytesOverTime,
        BytesRate,
        AbsentOverTime,
    ]);
    let unwrapped = prop::sample::select(vec![
        Rate,
        RateCounter,
        AvgOverTime,
        SumOverTime,
        MinOverTime,
        MaxOverTime,
        StdvarOverTime,
        StddevOverTime,
        QuantileOverTime,
        FirstOverTime,
        LastOverTime,
        AbsentOverTime,
    ]);
    let op_unwrap = prop_oneof![
        plain.prop_map(|op| (op, None)),
        (unwrapped, unwrap_expr()).prop_map(|(op, u)| (op, Some(u))),
    ];
    (
        op_unwrap,
        selector(),
        1i64..7200,
        prop_oneof![Just(0i64), 1i64..3600],
        prop::option::of(grouping()),
        0u8..=100,
    )
        .prop_map(|((op, unwrap), selector, range_s, offset_s, grouping, q)| {
            let groupable = matches!(
                op,
                AvgOverTime
                    | MinOverTime
                    | MaxOverTime
                    | StddevOverTime
                    | StdvarOverTime
                    | QuantileOverTime
                    | FirstOverTime
                    | LastOverTime
            );
            MetricExpr::RangeAggregation(RangeAggregation {
                op,
                param: (op == QuantileOverTime).then_some(f64::from(q) / 100.0),
                range: LogRange {
                    selector,
                    unwrap,
                    range: range_s * 1_000_000_000,
                    offset: offset_s * 1_000_000_000,
                },
                grouping: grouping.filter(|_| groupable),
            })
        })
}

fn bin_op() -> impl Strategy<Value = BinOp> {
    prop::sample::select(vec![
        BinOp::Or,
        BinOp::And,
        BinOp::Unless,
        BinOp::Eq,
        BinOp::Neq,
        BinOp::Gt,
        BinOp::Gte,
        BinOp::Lt,
        BinOp::Lte,
        BinOp::Add,
        BinOp::Sub,
        BinOp::Mul,
        BinOp::Div,
        BinOp::Mod,
        BinOp::Pow,
    ])
}

fn literal(e: &MetricExpr) -> bool {
    matches!(e, MetricExpr::Literal(_))
}

fn metric() -> impl Strategy<Value = MetricExpr> {
    let leaf = prop_oneof![
        4 => range_aggregation(),
        1 => (0u16..1000).prop_map(|v| MetricExpr::Literal(f64::from(v))),
        1 => (0u16..10).prop_map(|v| MetricExpr::Vector(f64::from(v))),
    ];
    leaf.prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (
                prop::sample::select(VectorOp::ALL.to_vec()),
                1i64..10,
                inner.clone(),
                prop::option::of(grouping()),
            )
                .prop_filter_map("aggregates a vector", |(op, k, inner, grouping)| {
                    if literal(&inner) {
                        return None;
                    }
                    let takes_k = matches!(op, VectorOp::Topk | VectorOp::Bottomk);
                    let sorts = matches!(op, VectorOp::Sort | VectorOp::SortDesc);
                    (op != VectorOp::ApproxTopk).then(|| {
                        MetricExpr::VectorAggregation(VectorAggregation {
                            op,
                            param: takes_k.then_some(k),
                            inner: Box::new(inner),
                            grouping: grouping.filter(|_| !sorts),
                        })
                    })
                }),
            (
                bin_op(),
                inner.clone(),
                inner.clone(),
                any::<bool>(),
                prop::option::of((any::<bool>(), names())),
            )
                .prop_filter_map(
                    "a valid binary operation",
                    |(op, lhs, rhs, want_bool, matching)| {
                        if literal(&lhs) && literal(&rhs) {
                            return None;
                        }
                        if op.is_set_operator() && (literal(&lhs) || literal(&rhs)) {
                            return None;
                        }
                        let vectors = !literal(&lhs) && !literal(&rhs);
                        Some(MetricExpr::BinOp(BinOpExpr {
                            op,
                            lhs: Box::new(lhs),
                            rhs: Box::new(rhs),
                            modifier: BinOpModifier {
                                return_bool: want_bool && op.is_comparison(),
                                matching: matching.filter(|_| vectors).map(|(on, labels)| {
                                    VectorMatching {
                                        on,
                                        labels,
                                        group: None,
                                    }
                                }),
                            },
                        }))
                    }
                ),
            (inner, text()).prop_filter_map("relabels a vector", |(inner, r)| {
                (!literal(&inner)).then(|| {
                    MetricExpr::LabelReplace(LabelReplace {
                        inner: Box::new(inner),
                        dst: "dst".to_owned(),
                        replacement: format!("$1{r}"),
                        src: "pod".to_owned(),
                        regex: "(.*)-[0-9]+".to_owned(),
                    })
                })
            }),
        ]
    })
}

fn log_range() -> impl Strategy<Value = LogRange> {
    (
        selector(),
        prop::option::of(unwrap_expr()),
        1i64..7200,
        prop_oneof![Just(0i64), 1i64..3600],
    )
        .prop_map(|(selector, unwrap, range_s, offset_s)| LogRange {
            selector,
            unwrap,
            range: range_s * 1_000_000_000,
            offset: offset_s * 1_000_000_000,
        })
}

fn expr() -> impl Strategy<Value = Expr> {
    prop_oneof![
        1 => selector().prop_map(Expr::Log),
        3 => metric().prop_map(Expr::Metric),
        1 => (prop::collection::vec(metric(), 1..4), log_range())
            .prop_map(|(variants, of)| Expr::Variants(VariantsExpr { variants, of })),
    ]
}

/// Fragments of LogQL, so random inputs get deep into the grammar before they break.
const FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "(",
    ")",
    "[5m]",
    "[",
    "]",
    "app",
    "=",
    "!=",
    "=~",
    "!~",
    "\"x\"",
    "`y`",
    "|",
    "|=",
    "|~",
    "|>",
    "!>",
    "json",
    "logfmt",
    "--strict",
    "unwrap",
    "duration(",
    "bytes(",
    "line_format",
    "label_format",
    "drop",
    "keep",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "bool",
    "sum",
    "rate",
    "count_over_time",
    "quantile_over_time",
    "topk",
    "vector(",
    "label_replace(",
    "variants(",
    " of ",
    "offset",
    "1m",
    "0.5",
    "-1",
    "+",
    "/",
    "^",
    "and",
    "or",
    "unless",
    ",",
    " ",
    "\n",
    "#",
    "ip(",
    "\"\\",
    "5KB",
    "250ms",
    "1e3",
    "\u{e9}",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn printed_trees_parse_back_to_the_same_tree(e in expr()) {
        let printed = e.to_string();
        let parsed = parse_expr(&printed)
            .map_err(|err| TestCaseError::fail(format!("{printed}\n  does not parse: {err}")))?;
        prop_assert_eq!(&parsed, &e, "printed as {}", printed);
    }

    #[test]
    fn parser_never_panics_on_arbitrary_text(s in any::<String>()) {
        let _ = parse_expr(&s);
    }

    #[test]
    fn parser_never_panics_on_logql_fragment_soup(
        parts in prop::collection::vec(prop::sample::select(FRAGMENTS), 0..24)
    ) {
        let _ = parse_expr(&parts.concat());
    }
}
