//! Golden parse tests: one per construct and per tricky case of the LogQL reference
//! (`shared/reference/logql.md`). Each checks the canonical print (which shows the tree:
//! parentheses appear exactly where the tree needs them), and that the print parses back
//! to the same tree.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use query_lang::syntax::{parse_expr, EMPTY_SELECTOR_MESSAGE};
use query_lang::*;

/// Parses `input`, checks its canonical form, and that the canonical form round-trips.
#[track_caller]
fn canon(input: &str, expected: &str) {
    let expr = parse_expr(input).unwrap_or_else(|e| panic!("{input}: {e}"));
    let printed = expr.to_string();
    assert_eq!(printed, expected, "canonical form of {input}");
    let again = parse_expr(&printed).unwrap_or_else(|e| panic!("reparse {printed}: {e}"));
    assert_eq!(again, expr, "round trip of {input}");
}

#[track_caller]
fn rejects(input: &str) -> String {
    match parse_expr(input) {
        Ok(e) => panic!("{input} should not parse, got {e:?}"),
        Err(e) => e.to_string(),
    }
}

fn label_filter_of(input: &str) -> LabelFilter {
    match parse_expr(input).unwrap() {
        Expr::Log(sel) => match sel.pipeline.last() {
            Some(Stage::LabelFilter(f)) => f.clone(),
            other => panic!("no label filter: {other:?}"),
        },
        other => panic!("not a log query: {other:?}"),
    }
}

fn m(name: &str, value: &str) -> LabelFilter {
    LabelFilter::Matcher(Matcher::new(name, MatchOp::Eq, value).unwrap())
}

fn and(a: LabelFilter, b: LabelFilter) -> LabelFilter {
    LabelFilter::And(Box::new(a), Box::new(b))
}

fn or(a: LabelFilter, b: LabelFilter) -> LabelFilter {
    LabelFilter::Or(Box::new(a), Box::new(b))
}

#[test]
fn selectors_print_with_comma_space_and_keep_matcher_order() {
    canon(
        r#"{app="x",env!="prod" , pod=~"a.*",x!~"b"}"#,
        r#"{app="x", env!="prod", pod=~"a.*", x!~"b"}"#,
    );
}

#[test]
fn selectors_need_a_matcher_that_rejects_the_empty_string() {
    for q in [
        "{}",
        r#"{foo=""}"#,
        r#"{foo!="bar"}"#,
        r#"{app=~".*"}"#,
        r#"{foo!~"a|b"}"#,
        r#"sum(rate({app=~".*"}[5m]))"#,
    ] {
        assert_eq!(
            rejects(q),
            format!("parse error : {EMPTY_SELECTOR_MESSAGE}"),
            "{q}"
        );
    }
    canon(r#"{foo!=""}"#, r#"{foo!=""}"#);
}

#[test]
fn line_filters_chain_and_or_continues_the_chain() {
    canon(
        r#"{a="b"} |= "x" != "y" |~ `\d+` !~ "z" |> "<_> err" !> "ok <_>""#,
        r#"{a="b"} |= "x" != "y" |~ "\\d+" !~ "z" |> "<_> err" !> "ok <_>""#,
    );
    let Expr::Log(sel) = parse_expr(r#"{a="b"} |= "test" |= "foo" or "bar""#).unwrap() else {
        panic!("log query expected")
    };
    assert_eq!(sel.pipeline.len(), 2);
    assert_eq!(
        sel.pipeline[1],
        Stage::LineFilter(LineFilter {
            op: LineFilterOp::Contains,
            values: vec![
                LineFilterValue::Literal("foo".into()),
                LineFilterValue::Literal("bar".into())
            ],
        })
    );
    rejects(r#"{a="b"} |= "a" or |= "b""#);
}

#[test]
fn ip_line_filters_take_only_contains_operators() {
    canon(
        r#"{a="b"} |= ip("10.0.0.0/8") or "x""#,
        r#"{a="b"} |= ip("10.0.0.0/8") or "x""#,
    );
    assert!(rejects(r#"{a="b"} |~ ip("10.0.0.1")"#).contains("ip()"));
}

#[test]
fn line_filter_regexes_and_patterns_are_checked_at_parse_time() {
    let e = rejects(r#"{app="apache"} |~ "(unclosed""#);
    assert!(
        e.starts_with(r#"parse error : stage '|~ "(unclosed"' : error parsing regexp:"#),
        "{e}"
    );
    assert!(rejects(r#"{a="b"} |> "<name> x""#).contains("<_>"));
}

#[test]
fn parsers_print_with_params_and_flags() {
    canon(r#"{a="b"} | JSON"#, r#"{a="b"} | json"#);
    canon(
        r#"{a="b"} | json m="http.method", p"#,
        r#"{a="b"} | json m="http.method", p="p""#,
    );
    canon(
        r#"{a="b"} | logfmt --strict --keep-empty host, ip="fwd""#,
        r#"{a="b"} | logfmt --strict --keep-empty host="host", ip="fwd""#,
    );
    canon(
        r#"{a="b"} | regexp "(?P<ftl>\\d+)" | pattern "<ip> - <_>" | unpack | decolorize"#,
        r#"{a="b"} | regexp "(?P<ftl>\\d+)" | pattern "<ip> - <_>" | unpack | decolorize"#,
    );
}

#[test]
fn identifier_after_json_starts_its_parameter_list() {
    let Expr::Log(sel) = parse_expr(r#"{a="b"} | json foo"#).unwrap() else {
        panic!("log query expected")
    };
    assert_eq!(
        sel.pipeline,
        vec![Stage::Json(vec![ExtractParam {
            label: "foo".into(),
            expr: "foo".into()
        }])]
    );
    rejects(r#"{a="b"} | json a=b"#);
}

#[test]
fn regexp_and_pattern_parsers_need_named_captures() {
    assert!(rejects(r#"{a="b"} | regexp "(foo)""#).contains("named capture"));
    assert!(rejects(r#"{a="b"} | regexp "(?P<x>""#).contains("invalid regexp parser"));
    assert!(rejects(r#"{a="b"} | pattern "foo""#).contains("invalid pattern parser"));
    assert!(rejects(r#"{a="b"} | pattern "<a><b>""#).contains("adjacent"));
    assert!(rejects(r#"{a="b"} | pattern "<x> <x>""#).contains("duplicate"));
}

#[test]
fn label_filter_and_binds_tighter_than_or() {
    assert_eq!(
        label_filter_of(r#"{x="y"} | a="1" and b="2" or c="3""#),
        or(and(m("a", "1"), m("b", "2")), m("c", "3"))
    );
    assert_eq!(
        label_filter_of(r#"{x="y"} | a="1" or b="2" and c="3""#),
        or(m("a", "1"), and(m("b", "2"), m("c", "3")))
    );
}

#[test]
fn label_filter_comma_and_juxtaposition_take_everything_to_their_right() {
    assert_eq!(
        label_filter_of(r#"{x="y"} | a="1" , b="2" or c="3""#),
        and(m("a", "1"), or(m("b", "2"), m("c", "3")))
    );
    assert_eq!(
        label_filter_of(r#"{x="y"} | a="1" or b="2" , c="3""#),
        or(m("a", "1"), and(m("b", "2"), m("c", "3")))
    );
    assert_eq!(
        label_filter_of(r#"{x="y"} | a="1" b="2", c="3" or d="4""#),
        and(m("a", "1"), and(m("b", "2"), or(m("c", "3"), m("d", "4"))))
    );
    let fuzz = LabelFilter::Number {
        name: "fuzz".into(),
        op: CmpOp::Eq,
        value: 5.0,
    };
    let expected = and(
        m("foo", "bar"),
        and(
            LabelFilter::Matcher(Matcher::new("buzz", MatchOp::Neq, "blip").unwrap()),
            or(
                LabelFilter::Matcher(Matcher::new("blop", MatchOp::Re, "boop").unwrap()),
                fuzz,
            ),
        ),
    );
    assert_eq!(
        label_filter_of(r#"{x="y"} | foo="bar" buzz!="blip", blop=~"boop" or fuzz==5"#),
        expected
    );
    canon(
        r#"{x="y"} | a="1" , b="2" or c="3""#,
        r#"{x="y"} | a="1" and (b="2" or c="3")"#,
    );
    canon(
        r#"{x="y"} | (a="1" or b="2") and c="3""#,
        r#"{x="y"} | (a="1" or b="2") and c="3""#,
    );
}

#[test]
fn typed_label_filters_use_the_literal_token_type() {
    assert_eq!(
        label_filter_of(r#"{x="y"} | latency > 250ms"#),
        LabelFilter::Duration {
            name: "latency".into(),
            op: CmpOp::Gt,
            value: 250_000_000
        }
    );
    assert_eq!(
        label_filter_of(r#"{x="y"} | size >= 5M"#),
        LabelFilter::Bytes {
            name: "size".into(),
            op: CmpOp::Gte,
            value: 5_000_000
        }
    );
    assert_eq!(
        label_filter_of(r#"{x="y"} | d > -1.5h"#),
        LabelFilter::Duration {
            name: "d".into(),
            op: CmpOp::Gt,
            value: -5_400_000_000_000
        }
    );
    assert_eq!(
        label_filter_of(r#"{x="y"} | count > -1"#),
        LabelFilter::Number {
            name: "count".into(),
            op: CmpOp::Gt,
            value: -1.0
        }
    );
    canon(
        r#"{x="y"} | status=404 or latency_ms > 3500 | size >= 800KB | addr = ip("10.0.1.0/24")"#,
        r#"{x="y"} | status==404 or latency_ms>3500 | size>=800kB | addr=ip("10.0.1.0/24")"#,
    );
    rejects(r#"{x="y"} | status=5xx"#);
    rejects(r#"{x="y"} | size > -1KB"#);
}

#[test]
fn function_words_are_plain_labels_when_no_call_follows() {
    canon(
        r#"{x="y"} | rate="a" | count > -1 | ip="1.2.3.4""#,
        r#"{x="y"} | rate="a" | count>-1 | ip="1.2.3.4""#,
    );
    canon(
        r#"sum_over_time({x="y"} | unwrap bytes [5m])"#,
        r#"sum_over_time({x="y"} | unwrap bytes [5m])"#,
    );
}

#[test]
fn reserved_words_are_never_label_names() {
    rejects(r#"{by="x"}"#);
    rejects(r#"{app="foo"} | json | offset="5m""#);
}

#[test]
fn formatting_and_label_stages_keep_templates_as_source_text() {
    canon(
        r#"{a="b"} | line_format "{{.method}} {{.path}}" | label_format code=status, route="{{.m}}:{{.p}}""#,
        r#"{a="b"} | line_format "{{.method}} {{.path}}" | label_format code=status, route="{{.m}}:{{.p}}""#,
    );
    canon(
        r#"{a="b"} | drop a, b="v", c=~"r.*" | keep app, level"#,
        r#"{a="b"} | drop a, b="v", c=~"r.*" | keep app, level"#,
    );
    assert!(rejects(r#"{a="b"} | label_format a=b, a="x""#).contains("more than once"));
}

#[test]
fn all_range_placements_normalise_to_range_after_pipeline() {
    let expected = r#"count_over_time({a="b"} |= "x" [5m] offset 1m)"#;
    canon(
        r#"count_over_time({a="b"} |= "x" [5m] offset 1m)"#,
        expected,
    );
    canon(r#"count_over_time({a="b"}[5m] offset 1m |= "x")"#, expected);
    canon(
        r#"count_over_time(({a="b"} |= "x")[5m] offset 1m)"#,
        expected,
    );
    canon(
        r#"count_over_time(({a="b"} |= "x" [5m] offset 1m))"#,
        expected,
    );
    canon(
        r#"sum_over_time(({a="b"})[5m] | unwrap x)"#,
        r#"sum_over_time({a="b"} | unwrap x [5m])"#,
    );
    rejects(r#"sum_over_time(({a="b"} | json)[5m] | unwrap x)"#);
    rejects(r#"count_over_time({a="b"} | json [5m] | unwrap x)"#);
    rejects(r#"count_over_time({a="b"}[5m] | json offset 5m)"#);
    rejects(r#"count_over_time({job="mysql"}[5m]) offset 5m"#);
}

#[test]
fn unwrap_takes_conversions_and_post_filters_and_only_lives_in_ranges() {
    canon(
        r#"quantile_over_time(0.99, {a="b"} | json | unwrap duration(took) | __error__="" [1m]) by (route)"#,
        r#"quantile_over_time(0.99, {a="b"} | json | unwrap duration(took) | __error__="" [1m]) by (route)"#,
    );
    canon(
        r#"sum_over_time({a="b"} | unwrap bytes(size) [10m])"#,
        r#"sum_over_time({a="b"} | unwrap bytes(size) [10m])"#,
    );
    rejects(r#"{app="foo"} | json | unwrap latency"#);
    rejects(r#"sum_over_time({a="b"} | unwrap x | json [5m])"#);
}

#[test]
fn range_aggregation_rules_match_loki() {
    assert_eq!(
        rejects(r#"sum_over_time({a="b"} | json [5m])"#),
        "parse error : invalid aggregation sum_over_time without unwrap"
    );
    assert!(rejects(r#"rate_counter({a="b"}[5m])"#).contains("without unwrap"));
    assert!(rejects(r#"count_over_time({a="b"} | unwrap x [5m])"#).contains("with unwrap"));
    assert!(rejects(r#"bytes_rate({a="b"} | unwrap x [5m])"#).contains("with unwrap"));
    for q in [
        r#"count_over_time({a="b"}[5m]) by (x)"#,
        r#"rate({a="b"}[5m]) by (x)"#,
        r#"sum_over_time({a="b"} | unwrap x [5m]) by (x)"#,
        r#"absent_over_time({a="b"}[5m]) by (x)"#,
        r#"count_over_time({a="b"}[5m]) by ()"#,
    ] {
        assert!(rejects(q).contains("grouping not allowed"), "{q}");
    }
    assert!(
        rejects(r#"quantile_over_time({a="b"} | unwrap x [5m])"#).contains("parameter required")
    );
    assert!(rejects(r#"sum_over_time(50, {a="b"} | unwrap x [5m])"#).contains("not supported"));
    rejects(r#"avg_over_time by (h) ({a="b"} | unwrap x [5m])"#);
    canon(
        r#"rate_counter({a="b"} | unwrap x [5m])"#,
        r#"rate_counter({a="b"} | unwrap x [5m])"#,
    );
}

#[test]
fn vector_aggregations_take_grouping_before_or_after_once() {
    let expected = r#"sum by (level) (count_over_time({a="b"}[5m]))"#;
    canon(r#"sum by (level) (count_over_time({a="b"}[5m]))"#, expected);
    canon(r#"sum(count_over_time({a="b"}[5m])) by (level)"#, expected);
    canon(r#"SUM BY (level) (Count_Over_Time({a="b"}[5m]))"#, expected);
    rejects(r#"sum by (a) (count_over_time({a="b"}[5m])) by (b)"#);
    canon(
        r#"topk(2, sum without (pod) (rate({a="b"}[1m])))"#,
        r#"topk(2, sum without (pod) (rate({a="b"}[1m])))"#,
    );
    canon(
        r#"sort_desc(count_over_time({a="b"}[5m]))"#,
        r#"sort_desc(count_over_time({a="b"}[5m]))"#,
    );
}

#[test]
fn vector_aggregation_parameters_are_checked() {
    assert!(rejects(r#"topk(0, rate({a="b"}[1m]))"#).contains("invalid parameter"));
    assert!(rejects(r#"bottomk(1.2, rate({a="b"}[1m]))"#).contains("invalid parameter"));
    assert!(rejects(r#"sum(3, rate({a="b"}[1m]))"#).contains("unsupported parameter"));
    assert!(rejects(r#"topk(rate({a="b"}[1m]))"#).contains("parameter required"));
    assert!(rejects(r#"sort(rate({a="b"}[1m])) by (app)"#).contains("sort and sort_desc"));
    assert!(rejects(r#"approx_topk by (a) (2, rate({a="b"}[1m]))"#).contains("approx_topk"));
}

#[test]
fn binary_operators_follow_loki_precedence_and_associativity() {
    let r = r#"rate({a="b"}[1m])"#;
    canon(&format!("{r} / {r} > 0.05"), &format!("{r} / {r} > 0.05"));
    canon(&format!("{r} - ({r} - {r})"), &format!("{r} - ({r} - {r})"));
    canon(&format!("({r} - {r}) - {r}"), &format!("{r} - {r} - {r}"));
    canon(&format!("{r} ^ {r} ^ {r}"), &format!("{r} ^ {r} ^ {r}"));
    canon(&format!("({r} ^ {r}) ^ {r}"), &format!("({r} ^ {r}) ^ {r}"));
    canon(
        &format!("{r} or {r} and {r} unless {r}"),
        &format!("{r} or {r} and {r} unless {r}"),
    );
    canon(&format!("({r} or {r}) * 2"), &format!("({r} or {r}) * 2"));
    let Expr::Metric(MetricExpr::BinOp(top)) = parse_expr(&format!("{r} + {r} * {r}")).unwrap()
    else {
        panic!("binop expected")
    };
    assert_eq!(top.op, BinOp::Add);
}

#[test]
fn literal_arithmetic_folds_at_parse_time() {
    canon("1 + 2 * 3", "7");
    canon("1 > 2", "0");
    canon("1 >= 1 > 1", "0");
    canon("1+1--1", "3");
    canon("2 ^ 3 ^ 2", "512");
    canon("-2 ^ 2", "4");
    let Expr::Metric(MetricExpr::Literal(v)) = parse_expr("1 / 0").unwrap() else {
        panic!("literal expected")
    };
    assert!(v.is_nan());
}

#[test]
fn binary_modifiers_print_in_canonical_order() {
    let r = r#"rate({a="b"}[1m])"#;
    canon(&format!("{r} > BOOL {r}"), &format!("{r} > bool {r}"));
    canon(
        &format!("{r} / on(app) {r}"),
        &format!("{r} / on (app) {r}"),
    );
    canon(
        &format!("{r} / ignoring(ns) group_left {r}"),
        &format!("{r} / ignoring (ns) group_left () {r}"),
    );
    canon(
        &format!("{r} * on() group_right(a, b) {r}"),
        &format!("{r} * on () group_right (a, b) {r}"),
    );
    rejects(&format!("{r} / group_left {r}"));
}

#[test]
fn log_queries_cannot_be_binary_operands() {
    assert_eq!(
        rejects(r#"{app="apache"} / 2"#),
        "parse error : unexpected type for left leg of binary operation (/): *syntax.MatchersExpr"
    );
    assert!(rejects(r#"{a="b"} + {a="b"}"#).contains("left leg"));
    assert!(rejects(r#"2 * {a="b"} |= "x""#).contains("right leg"));
}

#[test]
fn set_operators_reject_literal_legs() {
    let r = r#"rate({a="b"}[1m])"#;
    assert!(rejects(&format!("{r} or 1")).contains("logical/set"));
    assert!(rejects(&format!("1 unless {r}")).contains("logical/set"));
    assert!(rejects("1 and vector(1)").contains("logical/set"));
    canon(
        &format!("sum({r}) or vector(0)"),
        &format!("sum({r}) or vector(0)"),
    );
}

#[test]
fn vector_and_label_replace_parse_and_check_their_arguments() {
    canon("vector(1)+vector(1)", "vector(1) + vector(1)");
    rejects("vector(-1)");
    rejects("vector(abc)");
    canon(
        r#"label_replace(rate({a="b"}[1m]), "n", "$1", "pod", "gateway-(.*)")"#,
        r#"label_replace(rate({a="b"}[1m]), "n", "$1", "pod", "gateway-(.*)")"#,
    );
    assert!(
        rejects(r#"label_replace(rate({a="b"}[1m]), "n", "$1", "pod", "(")"#)
            .contains("invalid regex in label_replace")
    );
}

#[test]
fn durations_and_numbers_are_classified_without_context() {
    rejects(r#"rate({a="b"}[5m]) > 5m"#);
    canon(
        r#"count_over_time({a="b"}[1h30m] offset 1.5h)"#,
        r#"count_over_time({a="b"}[1h30m] offset 1h30m)"#,
    );
    canon(
        r#"count_over_time({a="b"}[5m] offset -5m)"#,
        r#"count_over_time({a="b"}[5m] offset -5m)"#,
    );
    assert!(rejects(r#"count_over_time({a="b"}[1.5m])"#).contains("not a valid duration"));
    rejects(r#"count_over_time({a="b"}[ 5m ])"#);
    assert!(rejects("0x1F").contains("unable to parse literal"));
}

#[test]
fn comments_are_skipped_outside_strings() {
    canon(
        "{app=\"#\"} # the selector\n |= \"x\" # the filter",
        r##"{app="#"} |= "x""##,
    );
    let e = rejects(r#"#{app="foo"} | json"#);
    assert!(e.contains("unexpected $end"), "{e}");
}

#[test]
fn strings_follow_go_escape_rules() {
    assert!(rejects(r#"{app="foo"} |~ "\w+""#).contains("invalid char escape"));
    rejects("{app='foo'}");
    canon(
        r#"{app="foo"} |= "tab\there" |= `raw\n`"#,
        r#"{app="foo"} |= "tab\there" |= "raw\\n""#,
    );
}

#[test]
fn syntax_errors_point_at_the_offending_token() {
    assert_eq!(
        rejects(r#"{app="apache""#),
        "parse error at line 1, col 14: syntax error: unexpected $end, expecting } or ,"
    );
    assert_eq!(
        rejects(r#"count_over_time({app="apache"})"#),
        "parse error at line 1, col 31: syntax error: unexpected )"
    );
    assert_eq!(
        rejects("count_over_time([5m])"),
        "parse error at line 0, col 17: syntax error: unexpected RANGE, expecting NUMBER or { or ("
    );
    // Loki's line 0 for tokens its lexer reads past their start: two-character operators,
    // durations, byte sizes; one-character tokens keep their line.
    assert_eq!(
        rejects("{app=\"a\"}\n|= |= \"x\""),
        "parse error at line 0, col 4: syntax error: unexpected |=, expecting STRING or ip"
    );
    let e = parse_expr("sum(\n  rate({a=\"b\"} 5m))").unwrap_err();
    assert_eq!((e.line(), e.col()), (0, 16), "{e}");
    let e = parse_expr("sum(\n  rate({a=\"b\"} }))").unwrap_err();
    assert_eq!((e.line(), e.col()), (2, 16), "{e}");
    let e = parse_expr("sum(\n  rate({a=\"b\"}[5m]) $\n)").unwrap_err();
    assert_eq!((e.line(), e.col()), (2, 21), "{e}");
}

#[test]
fn overly_long_queries_are_rejected_with_the_limit() {
    let q = format!(r#"{{a="{}"}}"#, "x".repeat(131_072));
    assert!(rejects(&q).contains("input size too long"));
}

#[test]
fn variants_parse_and_print_canonically() {
    canon(
        r#"variants(count_over_time({a="b"}[1m]),bytes_over_time({a="b"}[1m])) of ({a="b"}|="x"[1m])"#,
        r#"variants(count_over_time({a="b"}[1m]), bytes_over_time({a="b"}[1m])) of ({a="b"} |= "x" [1m])"#,
    );
    canon(
        r#"VARIANTS(sum by (app) (rate({a="b"} | json [5m]))) OF ({a="b"} | json [5m] offset 1m)"#,
        r#"variants(sum by (app) (rate({a="b"} | json [5m]))) of ({a="b"} | json [5m] offset 1m)"#,
    );
    // The range may sit right after the selector, as anywhere a log range is read.
    canon(
        r#"variants(count_over_time({a="b"}[1m])) of ({a="b"}[1m] | logfmt)"#,
        r#"variants(count_over_time({a="b"}[1m])) of ({a="b"} | logfmt [1m])"#,
    );
}

#[test]
fn variants_are_whole_queries_with_a_log_range() {
    for bad in [
        r#"variants() of ({a="b"}[1m])"#,
        r#"variants(count_over_time({a="b"}[1m]))"#,
        r#"variants(count_over_time({a="b"}[1m])) of {a="b"}[1m]"#,
        r#"variants(count_over_time({a="b"}[1m])) of ({a="b"})"#,
        r#"variants({a="b"}) of ({a="b"}[1m])"#,
        r#"variants(count_over_time({a="b"}[1m])) of ({a="b"}[1m]) + 1"#,
        r#"sum(variants(count_over_time({a="b"}[1m])) of ({a="b"}[1m]))"#,
    ] {
        assert!(
            rejects(bad).starts_with("parse error at line 1"),
            "{bad}: {}",
            rejects(bad)
        );
    }
    assert!(
        rejects(r#"variants(count_over_time({a=""}[1m])) of ({a="b"}[1m])"#)
            .contains("empty-compatible")
    );
    assert!(
        rejects(r#"variants(count_over_time({a="b"}[1m])) of ({a=~".*"}[1m])"#)
            .contains("empty-compatible")
    );
}
