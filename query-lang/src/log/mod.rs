//! Log pipelines: the stages after a stream selector, run per line.
//!
//! Owns compiling an AST pipeline ([`crate::syntax::ast::Stage`]) into runnable stages
//! and running them over one line and its [`LabelsBuilder`]: line filters, parsers
//! (`json`, `logfmt`, `regexp`, `pattern`, `unpack`), label filters, `line_format`,
//! `label_format`, `drop`, `keep` and `decolorize`. Each stage family has its own module.
//! It does not own stream selection, merging or aggregation (`crate::eval`).

pub mod conversion;
pub mod format;
pub mod ip;
pub mod json;
pub mod label_filter;
pub mod labels;
pub mod line_filter;
pub mod logfmt;
pub mod pattern;
pub mod template;

use std::borrow::Cow;

use regex::Regex;

pub use json::Wanted;
pub use labels::{
    CategorizedLabels, LabelBuffers, Labels, LabelsBuilder, ERROR_DETAILS_LABEL, ERROR_LABEL,
};

use crate::syntax::ast;

/// A pipeline that cannot be built (Loki reports these as `stage '...' : ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    LineFilter(#[from] line_filter::LineFilterError),
    #[error("invalid regexp parser {pattern:?}: {reason}")]
    Regexp { pattern: String, reason: String },
    #[error(transparent)]
    Pattern(#[from] pattern::PatternError),
    #[error(transparent)]
    JsonExpression(#[from] json::JsonExpressionError),
    #[error(transparent)]
    Ip(#[from] ip::IpPatternError),
    #[error("line_format: {0}")]
    LineFormat(template::TemplateError),
    #[error(transparent)]
    LabelFormat(#[from] format::LabelFormatError),
}

#[derive(Clone, Debug)]
enum Compiled {
    LineFilter(line_filter::LineFilter),
    Json(json::JsonParser, Option<Box<Probe>>),
    JsonParams(json::JsonExtractor),
    Logfmt(logfmt::LogfmtParser, Option<Box<Probe>>),
    Regexp(Regex, Vec<(usize, String)>),
    Pattern(pattern::Pattern),
    Unpack,
    LabelFilter(label_filter::LabelFilter),
    LineFormat(format::LineFormatter),
    LabelFormat(format::LabelFormatter),
    Decolorize,
    Drop(Vec<ast::NamedMatcher>),
    Keep(Vec<ast::NamedMatcher>),
}

impl Compiled {
    fn changes_labels(&self) -> bool {
        !matches!(
            self,
            Compiled::LineFilter(_) | Compiled::LineFormat(_) | Compiled::Decolorize
        )
    }
}

/// The label filters that directly follow a `json` or `logfmt` parser, run first over a
/// parse that stores only the labels they read. Most lines of `| json | status >= 500`
/// are dropped by the filter, and for those the labels nobody reads are never copied.
/// The probing parse checks the line exactly as the full parse does (same error on the
/// same lines) and stores the read labels as the full parse would (same values,
/// `_extracted` renames and first-wins order), so a line the probe drops is a line the
/// full pipeline drops. A line the probe keeps is rolled back and parsed in full, and the
/// filters run again as ordinary stages.
///
/// When the filters look neither at the error labels nor at whether there is an error
/// (`ip()` predicates pass lines with errors), their verdict depends only on the labels
/// they read, so the probing parse stops as soon as those are settled.
#[derive(Clone, Debug)]
struct Probe {
    store: Wanted,
    stop_when_settled: bool,
    filters: Vec<label_filter::LabelFilter>,
}

impl Probe {
    /// The probe for a parser producing `wanted` followed by `stages`, when the filters
    /// at their head read fewer labels than the parser produces.
    fn after(wanted: &Wanted, stages: &[Compiled]) -> Option<Box<Probe>> {
        let filters: Vec<label_filter::LabelFilter> = stages
            .iter()
            .map_while(|s| match s {
                Compiled::LabelFilter(f) => Some(f.clone()),
                _ => None,
            })
            .collect();
        if filters.is_empty() {
            return None;
        }
        let mut names = Vec::new();
        for f in &filters {
            f.names(&mut names);
        }
        if let Wanted::Only(produced) = wanted {
            if produced.iter().all(|p| names.contains(p)) {
                return None;
            }
        }
        let stop_when_settled = !filters.iter().any(label_filter::LabelFilter::reads_error)
            && !names
                .iter()
                .any(|n| n == ERROR_LABEL || n == ERROR_DETAILS_LABEL);
        Some(Box::new(Probe {
            store: Wanted::Only(names),
            stop_when_settled,
            filters,
        }))
    }

    /// Whether the filters keep the line once `parse` has stored the labels they read;
    /// `lb` is left as it was when they do.
    fn keeps(
        &self,
        lb: &mut LabelsBuilder<'_>,
        parse: impl FnOnce(&Wanted, bool, &mut LabelsBuilder<'_>),
    ) -> bool {
        let before = lb.checkpoint();
        parse(&self.store, self.stop_when_settled, lb);
        if !self.filters.iter().all(|f| f.keep(lb)) {
            return false;
        }
        lb.rollback(before);
        true
    }
}

/// A compiled pipeline.
#[derive(Clone, Debug, Default)]
pub struct Pipeline {
    stages: Vec<Compiled>,
}

fn compile_regexp(pattern: &str) -> Result<Compiled, PipelineError> {
    let bad = |reason: String| PipelineError::Regexp {
        pattern: pattern.to_owned(),
        reason,
    };
    let re = Regex::new(pattern).map_err(|e| bad(e.to_string()))?;
    let names: Vec<(usize, String)> = re
        .capture_names()
        .enumerate()
        .filter_map(|(i, n)| n.map(|n| (i, labels::sanitize_label_name(n))))
        .collect();
    if names.is_empty() {
        return Err(bad(
            "at least one named capture group (?P<name>...) is required".to_owned(),
        ));
    }
    Ok(Compiled::Regexp(re, names))
}

impl Pipeline {
    /// Compiles the stages for a log query (every parser produces every label).
    pub fn new(stages: &[ast::Stage]) -> Result<Self, PipelineError> {
        Self::with_wanted(stages, &Wanted::All)
    }

    /// Compiles the stages for a metric query that only reads the `wanted` labels: parsers
    /// then skip other labels, and are skipped entirely when nothing they produce is read
    /// (Loki's parser hints; this decides whether malformed lines raise errors).
    pub fn with_wanted(stages: &[ast::Stage], wanted: &Wanted) -> Result<Self, PipelineError> {
        let nothing_wanted = matches!(wanted, Wanted::Only(names) if names.is_empty());
        let mut out = Vec::with_capacity(stages.len());
        for stage in stages {
            let compiled = match stage {
                ast::Stage::LineFilter(f) => {
                    let lf = line_filter::LineFilter::new(f.op, &f.values)?;
                    if lf.is_noop() {
                        continue;
                    }
                    Compiled::LineFilter(lf)
                }
                ast::Stage::Json(params) if params.is_empty() => {
                    if nothing_wanted {
                        continue;
                    }
                    Compiled::Json(json::JsonParser::with_wanted(wanted), None)
                }
                ast::Stage::Json(params) => {
                    if nothing_wanted {
                        continue;
                    }
                    let pairs: Vec<(String, String)> = params
                        .iter()
                        .map(|p| (p.label.clone(), p.expr.clone()))
                        .collect();
                    Compiled::JsonParams(json::JsonExtractor::new(&pairs)?)
                }
                ast::Stage::Logfmt(p) => {
                    if nothing_wanted {
                        continue;
                    }
                    let params = p
                        .params
                        .iter()
                        .map(|e| (e.label.clone(), e.expr.clone()))
                        .collect();
                    let parser = logfmt::LogfmtParser::new(p.strict, p.keep_empty, params)
                        .with_wanted(wanted);
                    Compiled::Logfmt(parser, None)
                }
                ast::Stage::Regexp(re) => {
                    let c = compile_regexp(re)?;
                    if nothing_wanted {
                        continue;
                    }
                    c
                }
                ast::Stage::Pattern(p) => {
                    let c = Compiled::Pattern(pattern::Pattern::parser(p)?);
                    if nothing_wanted {
                        continue;
                    }
                    c
                }
                ast::Stage::Unpack => Compiled::Unpack,
                ast::Stage::LabelFilter(f) => {
                    Compiled::LabelFilter(label_filter::LabelFilter::new(f)?)
                }
                ast::Stage::LineFormat(t) => Compiled::LineFormat(
                    format::LineFormatter::new(t).map_err(PipelineError::LineFormat)?,
                ),
                ast::Stage::LabelFormat(f) => {
                    Compiled::LabelFormat(format::LabelFormatter::new(f)?)
                }
                ast::Stage::Decolorize => Compiled::Decolorize,
                ast::Stage::Drop(items) => Compiled::Drop(items.clone()),
                ast::Stage::Keep(items) => Compiled::Keep(items.clone()),
            };
            out.push(compiled);
        }
        for i in 0..out.len() {
            let (head, rest) = out.split_at_mut(i + 1);
            match head.last_mut() {
                Some(Compiled::Json(p, probe)) => *probe = Probe::after(&p.wanted, rest),
                Some(Compiled::Logfmt(p, probe)) if p.extracts_all_keys() => {
                    *probe = Probe::after(&p.wanted, rest)
                }
                _ => {}
            }
        }
        Ok(Pipeline { stages: out })
    }

    /// The same pipeline with every parser probe removed: the reference the probes are
    /// tested against.
    #[cfg(test)]
    fn without_probes(mut self) -> Self {
        for stage in &mut self.stages {
            if let Compiled::Json(_, probe) | Compiled::Logfmt(_, probe) = stage {
                *probe = None;
            }
        }
        self
    }

    /// The same pipeline with parsers reading every line to its end.
    #[cfg(test)]
    fn without_early_stop(mut self) -> Self {
        for stage in &mut self.stages {
            match stage {
                Compiled::Json(p, _) => *p = p.clone().without_early_stop(),
                Compiled::Logfmt(p, _) => *p = p.clone().without_early_stop(),
                _ => {}
            }
        }
        self
    }

    /// Whether some parser of the pipeline runs its filters over a probe first.
    #[cfg(test)]
    fn has_probe(&self) -> bool {
        self.stages
            .iter()
            .any(|s| matches!(s, Compiled::Json(_, Some(_)) | Compiled::Logfmt(_, Some(_))))
    }

    /// True when the pipeline has no stages: every line passes unchanged.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// True when some stage may change a line's labels; when false, every line keeps its
    /// stream's labels and callers can key series by stream.
    pub fn changes_labels(&self) -> bool {
        self.stages.iter().any(Compiled::changes_labels)
    }

    /// Runs the stages over one line. `None` means a filter dropped it; otherwise the
    /// (possibly rewritten) line, with `lb` holding its final labels.
    pub fn process<'l>(
        &self,
        ts: i64,
        line: &'l str,
        lb: &mut LabelsBuilder<'_>,
    ) -> Option<Cow<'l, str>> {
        let mut line: Cow<'l, str> = Cow::Borrowed(line);
        for stage in &self.stages {
            match stage {
                Compiled::LineFilter(f) => {
                    if !f.keep(&line) {
                        return None;
                    }
                }
                Compiled::Json(p, probe) => {
                    if let Some(probe) = probe {
                        if !probe.keeps(lb, |store, stop, lb| p.probe(&line, store, stop, lb)) {
                            return None;
                        }
                    }
                    p.process(&line, lb)
                }
                Compiled::JsonParams(p) => p.process(&line, lb),
                Compiled::Logfmt(p, probe) => {
                    if let Some(probe) = probe {
                        if !probe.keeps(lb, |store, stop, lb| p.probe(&line, store, stop, lb)) {
                            return None;
                        }
                    }
                    p.process(&line, lb)
                }
                Compiled::Regexp(re, names) => {
                    if let Some(caps) = re.captures(&line) {
                        for (i, name) in names {
                            if let Some(m) = caps.get(*i) {
                                lb.add_extracted(name, m.as_str());
                            }
                        }
                    }
                }
                Compiled::Pattern(p) => {
                    for (name, value) in p.captures(&line) {
                        lb.add_extracted(name, value);
                    }
                }
                Compiled::Unpack => {
                    if let Some(entry) = json::Unpacker.process(&line, lb) {
                        line = Cow::Owned(entry);
                    }
                }
                Compiled::LabelFilter(f) => {
                    if !f.keep(lb) {
                        return None;
                    }
                }
                Compiled::LineFormat(f) => {
                    if let Some(new_line) = f.process(ts, &line, lb) {
                        line = Cow::Owned(new_line);
                    }
                }
                Compiled::LabelFormat(f) => f.process(ts, &line, lb),
                Compiled::Decolorize => {
                    if let Some(clean) = format::decolorize(&line) {
                        line = Cow::Owned(clean);
                    }
                }
                Compiled::Drop(items) => format::drop_labels(items, lb),
                Compiled::Keep(items) => format::keep_labels(items, lb),
            }
        }
        Some(line)
    }
}

/// Label names the stages read: label-filter names, template fields and `label_format`
/// sources. `*` means "every label" (a template handed the whole map).
pub fn referenced_labels(stages: &[ast::Stage], out: &mut Vec<String>) {
    for stage in stages {
        match stage {
            ast::Stage::LabelFilter(f) => label_filter_names(f, out),
            ast::Stage::LineFormat(t) => match template::Template::parse(t) {
                Ok(t) => out.extend_from_slice(t.fields()),
                Err(_) => out.push("*".to_owned()),
            },
            ast::Stage::LabelFormat(fmts) => {
                for f in fmts {
                    match f {
                        ast::LabelFmt::Rename { src, .. } => out.push(src.clone()),
                        ast::LabelFmt::Template { template, .. } => {
                            match template::Template::parse(template) {
                                Ok(t) => out.extend_from_slice(t.fields()),
                                Err(_) => out.push("*".to_owned()),
                            }
                        }
                    }
                }
            }
            ast::Stage::Keep(items) | ast::Stage::Drop(items) => {
                out.extend(items.iter().map(|i| i.name().to_owned()))
            }
            _ => {}
        }
    }
}

/// Label names an AST label filter reads.
pub fn label_filter_names(f: &ast::LabelFilter, out: &mut Vec<String>) {
    match f {
        ast::LabelFilter::And(a, b) | ast::LabelFilter::Or(a, b) => {
            label_filter_names(a, out);
            label_filter_names(b, out);
        }
        ast::LabelFilter::Matcher(m) => out.push(m.name.clone()),
        ast::LabelFilter::Number { name, .. }
        | ast::LabelFilter::Duration { name, .. }
        | ast::LabelFilter::Bytes { name, .. }
        | ast::LabelFilter::Ip { name, .. } => out.push(name.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MatchOp, Matcher};
    use lode_push::LabelSet;

    fn json_then_status_at_least(n: f64) -> Vec<ast::Stage> {
        vec![
            ast::Stage::Json(vec![]),
            ast::Stage::LabelFilter(ast::LabelFilter::Number {
                name: "status".to_owned(),
                op: ast::CmpOp::Gte,
                value: n,
            }),
        ]
    }

    #[test]
    fn stages_run_in_order_and_filters_see_rewritten_lines() {
        let s = LabelSet::from_pairs([("app", "x")]).unwrap();
        let stages = vec![
            ast::Stage::Logfmt(ast::LogfmtParser::default()),
            ast::Stage::LineFormat("{{.method}} {{.path}}".to_owned()),
            ast::Stage::LineFilter(ast::LineFilter {
                op: ast::LineFilterOp::Contains,
                values: vec![ast::LineFilterValue::Literal("GET /".to_owned())],
            }),
        ];
        let p = Pipeline::new(&stages).unwrap();
        let mut lb = LabelsBuilder::new(&s);
        let out = p.process(0, "method=GET path=/a status=200", &mut lb);
        assert_eq!(out.as_deref(), Some("GET /a"));
        lb.reset(&[]);
        assert!(p.process(0, "method=PUT path=/a", &mut lb).is_none());
    }

    #[test]
    fn json_error_lines_face_typed_filters_with_the_labels_parsed_before_the_error() {
        let s = LabelSet::from_pairs([("app", "x")]).unwrap();
        let p = Pipeline::new(&json_then_status_at_least(500.0)).unwrap();
        let mut lb = LabelsBuilder::new(&s);
        assert!(p.process(0, r#"{"status":200}"#, &mut lb).is_none());
        lb.reset(&[]);
        assert!(p.process(0, r#"{"status":503}"#, &mut lb).is_some());
        lb.reset(&[]);
        // Truncated before `status`: the typed filter has no label to compare and drops it.
        assert!(p.process(0, r#"{"status":"#, &mut lb).is_none());
        lb.reset(&[]);
        assert!(p
            .process(0, r#"{"status":503,"msg":"cut"#, &mut lb)
            .is_some());
        assert_eq!(lb.get(ERROR_LABEL), Some("JSONParserErr"));
        let mut stages = json_then_status_at_least(0.0);
        stages.push(ast::Stage::LabelFilter(ast::LabelFilter::Matcher(
            Matcher::new(ERROR_LABEL, MatchOp::Eq, "").unwrap(),
        )));
        let p = Pipeline::new(&stages).unwrap();
        lb.reset(&[]);
        assert!(p.process(0, r#"{"status":"#, &mut lb).is_none());
    }

    #[test]
    fn parser_is_skipped_when_a_metric_query_reads_none_of_its_labels() {
        let s = LabelSet::from_pairs([("app", "x")]).unwrap();
        let p = Pipeline::with_wanted(&[ast::Stage::Json(vec![])], &Wanted::Only(vec![])).unwrap();
        assert!(p.is_empty());
        let p = Pipeline::with_wanted(
            &[ast::Stage::Json(vec![])],
            &Wanted::Only(vec!["level".to_owned()]),
        )
        .unwrap();
        let mut lb = LabelsBuilder::new(&s);
        p.process(0, r#"{"level":"info","other":"x"}"#, &mut lb);
        assert_eq!(lb.get("level"), Some("info"));
        assert_eq!(lb.get("other"), None);
    }

    #[test]
    fn regexp_and_pattern_parsers_add_named_captures() {
        let s = LabelSet::from_pairs([("app", "x")]).unwrap();
        let p = Pipeline::new(&[
            ast::Stage::Regexp(r"firstTokenLatency=(?P<ftl>\d+)".to_owned()),
            ast::Stage::Pattern("<lvl> <_>".to_owned()),
        ])
        .unwrap();
        let mut lb = LabelsBuilder::new(&s);
        p.process(0, "INFO done firstTokenLatency=795 x", &mut lb);
        assert_eq!(lb.get("ftl"), Some("795"));
        assert_eq!(lb.get("lvl"), Some("INFO"));
        assert!(Pipeline::new(&[ast::Stage::Regexp("(x)".to_owned())]).is_err());
    }

    fn log_pipeline(query: &str) -> Vec<ast::Stage> {
        match crate::parse_expr(query) {
            Ok(ast::Expr::Log(sel)) => sel.pipeline,
            other => panic!("{query}: {other:?}"),
        }
    }

    /// Queries whose parser is followed by label filters, over the labels such lines
    /// produce, the error labels and a stream label (`app`) the parsers collide with.
    const PROBED_QUERIES: &[&str] = &[
        r#"{app="x"} | json | status >= 500"#,
        r#"{app="x"} | json | status >= 500 | level="error""#,
        r#"{app="x"} | json | level!="info" or status < 300"#,
        r#"{app="x"} | json | http_method="GET", latency_ms > 1s"#,
        r#"{app="x"} | json | app="x" | app_extracted=~"y.*""#,
        r#"{app="x"} | json | __error__="" | status != 200"#,
        r#"{app="x"} | json | __error__!="" or __error_details__=~"Value.*""#,
        r#"{app="x"} | json | status > 1 | status != ip("10.0.0.0/8")"#,
        r#"{app="x"} | json | s_tatus="1" or status="é""#,
        r#"{app="x"} | logfmt | duration > 2s"#,
        r#"{app="x"} | logfmt | level="error" or status >= 500"#,
        r#"{app="x"} | logfmt | app_extracted!="" | msg=~".*out""#,
        r#"{app="x"} | logfmt --strict | __error__="" | status=200"#,
        r#"{app="x"} | logfmt --keep-empty | empty="" | status>0"#,
        r#"{app="x"} | logfmt | json | status >= 500"#,
        r#"{app="x"} | json | logfmt | status >= 500 | level=~"e.*""#,
    ];

    fn run_lines(p: &Pipeline, lines: &[String]) -> Vec<Option<(String, Labels)>> {
        let s = LabelSet::from_pairs([("app", "x")]).unwrap();
        let mut lb = LabelsBuilder::new(&s);
        lines
            .iter()
            .map(|l| {
                lb.reset(&[]);
                p.process(0, l, &mut lb)
                    .map(|out| (out.into_owned(), lb.labels()))
            })
            .collect()
    }

    /// Parser hints of metric queries over the probed queries: names their filters read,
    /// a grouping label, a stream label (never extracted under its own name), an
    /// `_extracted` name and the error label.
    const HINTS: &[&[&str]] = &[
        &["level"],
        &["msg", "http_method"],
        &["app"],
        &["app_extracted", "duration"],
        &["__error__"],
        &["latency_ms", "level", "status", "empty"],
    ];

    /// The pipelines of `query` a metric query builds for each of [`HINTS`]: the hint's
    /// names plus those the stages read.
    fn hinted(query: &str) -> Vec<Pipeline> {
        let stages = log_pipeline(query);
        HINTS
            .iter()
            .map(|hint| {
                let mut names: Vec<String> = hint.iter().map(|n| (*n).to_owned()).collect();
                referenced_labels(&stages, &mut names);
                Pipeline::with_wanted(&stages, &Wanted::Only(names)).unwrap()
            })
            .collect()
    }

    fn assert_probe_matches_full_parse(lines: &[String]) {
        for q in PROBED_QUERIES {
            let stages = log_pipeline(q);
            let probed = Pipeline::new(&stages).unwrap();
            assert!(probed.has_probe(), "{q}");
            let full = probed.clone().without_probes();
            assert_eq!(run_lines(&probed, lines), run_lines(&full, lines), "{q}");
            // Under parser hints, parsers also stop once the required labels are
            // extracted: a probe must stop where the full parse stops.
            for probed in hinted(q) {
                let full = probed.clone().without_probes();
                assert_eq!(
                    run_lines(&probed, lines),
                    run_lines(&full, lines),
                    "{q} {probed:?}"
                );
            }
        }
    }

    /// Parsers under hints, each alone and with a filter reading the error.
    const HINTED_PARSERS: &[&str] = &[
        r#"{app="x"} | json"#,
        r#"{app="x"} | logfmt"#,
        r#"{app="x"} | logfmt --strict"#,
        r#"{app="x"} | logfmt --keep-empty"#,
        r#"{app="x"} | logfmt | json"#,
        r#"{app="x"} | json | __error__="""#,
    ];

    /// A parser that stops early answers as the one reading to the end, except that a
    /// syntax error after the stop is not reported (Loki's parsers do not see it); the
    /// stages after it then see a line without that error.
    fn assert_early_stop_only_skips_later_errors(lines: &[String]) {
        let parse_error = |r: &Option<(String, Labels)>| {
            r.as_ref().is_some_and(|(_, labels)| {
                labels.iter().any(|(k, v)| {
                    k == ERROR_LABEL
                        && (v == labels::JSON_PARSER_ERR || v == labels::LOGFMT_PARSER_ERR)
                })
            })
        };
        let without_errors = |labels: &Labels| -> Labels {
            labels
                .iter()
                .filter(|(k, _)| k != ERROR_LABEL && k != ERROR_DETAILS_LABEL)
                .cloned()
                .collect()
        };
        for q in HINTED_PARSERS.iter().chain(PROBED_QUERIES) {
            for stopping in hinted(q) {
                let to_end = stopping.clone().without_early_stop();
                let got = run_lines(&stopping, lines);
                let want = run_lines(&to_end, lines);
                for ((got, want), line) in got.iter().zip(&want).zip(lines) {
                    if parse_error(got) || !parse_error(want) {
                        assert_eq!(got, want, "{q} {stopping:?} on {line:?}");
                    } else if let (Some((gl, g)), Some((wl, w))) = (got, want) {
                        assert_eq!(gl, wl, "{q} on {line:?}");
                        assert_eq!(without_errors(g), without_errors(w), "{q} on {line:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn parsers_under_hints_stop_once_every_required_label_is_extracted() {
        let s = LabelSet::from_pairs([("app", "x")]).unwrap();
        let run = |query: &str, wanted: &[&str], line: &str| {
            let stages = log_pipeline(query);
            let wanted = Wanted::Only(wanted.iter().map(|n| (*n).to_owned()).collect());
            let p = Pipeline::with_wanted(&stages, &wanted).unwrap();
            let mut lb = LabelsBuilder::new(&s);
            p.process(0, line, &mut lb).map(|_| lb.labels())
        };
        let level = |v: &str| ("level".to_owned(), v.to_owned());
        let app = ("app".to_owned(), "x".to_owned());
        // Found `level`: the broken rest is never read, as in Loki.
        let got = run(
            r#"{app="x"} | json"#,
            &["level"],
            r#"{"level":"info","a":nope"#,
        );
        assert_eq!(got, Some(vec![app.clone(), level("info")]));
        let got = run(
            r#"{app="x"} | logfmt --strict"#,
            &["level"],
            "level=warn =oops",
        );
        assert_eq!(got, Some(vec![app.clone(), level("warn")]));
        // A stream label is never extracted under its name: the line is read to its end.
        let got = run(
            r#"{app="x"} | json"#,
            &["level", "app"],
            r#"{"level":"info","a":nope"#,
        );
        assert!(got.unwrap().iter().any(|(k, _)| k == ERROR_LABEL));
        // Nor is `__error__`, so a query reading errors sees every one.
        let got = run(
            r#"{app="x"} | json"#,
            &["level", "__error__"],
            r#"{"level":"a",x"#,
        );
        assert!(got.unwrap().iter().any(|(k, _)| k == ERROR_LABEL));
        // First values win, later duplicates change nothing.
        let got = run(r#"{app="x"} | logfmt"#, &["level"], "level=a level=b");
        assert_eq!(got, Some(vec![app, level("a")]));
    }

    #[test]
    fn probed_filters_keep_and_label_the_same_lines_as_the_full_parse() {
        let lines: Vec<String> = [
            r#"{"status":503,"level":"error","msg":"x"}"#,
            r#"{"status":200,"level":"info"}"#,
            r#"{"status":"abc"}"#,
            r#"{"status":503,"msg":"cut"#,
            r#"{"msg":"a\qb","status":503}"#,
            r#"{"msg":"\ud83d\ude00 \u00e9","status":504,"level":"warn"}"#,
            r#"{"s\u0074atus":502,"status":200}"#,
            r#"{"status":200,"status":500}"#,
            r#"{" status ":501}"#,
            r#"{"app":"yes","app":"no","app_extracted":"z"}"#,
            r#"{"app_extracted":"first","app":"second"}"#,
            r#"{"http":{"method":"GET","path":"/"},"latency_ms":"2s"}"#,
            r#"{"http":{"method":"GET","x":nope},"status":500}"#,
            r#"{"a":[1,{"b":nul}],"status":500}"#,
            r#"{"status":null,"level":true}"#,
            r#"{"status":5e2}"#,
            r#"["status",500]"#,
            r#"not json status=503"#,
            r#""#,
            r#"level=error status=503 duration=3s msg="timed out""#,
            r#"level=info status=200 duration=1s app=y"#,
            r#"status=503 =oops duration=5s"#,
            r#"status="50\x33" duration="2\q""#,
            r#"status=503"garbage duration=9s"#,
            r#"empty= status=1 app= msg="ok""#,
            r#"app=y app_extracted=z status=500 level=error"#,
            r#"status=500 status=200 duration=3s"#,
            r#"f\u00e9=1 status=1.5e3 duration=1h"#,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        assert_probe_matches_full_parse(&lines);
    }

    #[test]
    fn parser_hints_narrower_than_the_filters_leave_no_probe() {
        let stages = log_pipeline(r#"{app="x"} | json | status >= 500"#);
        let p = Pipeline::with_wanted(&stages, &Wanted::Only(vec!["status".to_owned()]));
        assert!(!p.unwrap().has_probe());
        let p = Pipeline::with_wanted(
            &stages,
            &Wanted::Only(vec!["status".to_owned(), "route".to_owned()]),
        );
        assert!(p.unwrap().has_probe());
        assert!(!Pipeline::new(&log_pipeline(r#"{app="x"} | json"#))
            .unwrap()
            .has_probe());
        assert!(
            !Pipeline::new(&log_pipeline(r#"{app="x"} | logfmt status | status > 1"#))
                .unwrap()
                .has_probe()
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn fragment() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "{",
                "}",
                "[",
                "]",
                ":",
                ",",
                "\"",
                "\\",
                "\\u00e9",
                "\\ud83d\\ude00",
                "\\ud800",
                "\\q",
                "\\n",
                "\\x41",
                "a",
                "app",
                "status",
                "level",
                "error",
                "1",
                "503",
                "-2.5",
                "true",
                "nul",
                "null",
                " ",
                "é",
                "a.b",
                "=",
                "1s",
                "3s",
                "\"status\":",
                "\"level\":",
                "\"app\":",
                "\"http\":{\"method\":",
                "\"GET\"",
                "\"\":",
                "\" \":",
                "status=",
                "level=",
                "duration=",
                "app=",
                "app_extracted=",
                "\"s\\u0074atus\":",
                "\"error\"",
                "\"2s\"",
                "__error__",
                "\t",
            ])
        }

        fn json_line() -> impl Strategy<Value = String> {
            let key = prop::sample::select(vec![
                "status",
                "level",
                "app",
                "app_extracted",
                "msg",
                "http",
                " status ",
                "s\\u0074atus",
                "a.b",
                "é",
                "",
                "1x",
                "latency_ms",
                "stat\\qus",
            ]);
            let value = prop::sample::select(vec![
                "503",
                "200",
                "\"error\"",
                "\"info\"",
                "\"a\\qb\"",
                "\"\\u00e9\"",
                "\"\\ud800\"",
                "\"\\ud83d\\ude00\"",
                "null",
                "true",
                "nope",
                "tru",
                "[1,{\"b\":nul}]",
                "{\"method\":\"GET\",\"x\":nope}",
                "{\"method\":\"GET\"}",
                "{\"status\":{\"code\":500}}",
                "\"2s\"",
                "5e2",
                "-1",
                "\"503\"",
                "{}",
                "[]",
            ]);
            let pairs = prop::collection::vec((key, value), 0..7);
            (pairs, 0usize..200, fragment(), 0u8..4).prop_map(|(pairs, at, frag, mutation)| {
                let body: Vec<String> = pairs.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                let line = format!("{{{}}}", body.join(","));
                mutate(line, at, frag, mutation)
            })
        }

        fn logfmt_line() -> impl Strategy<Value = String> {
            let key = prop::sample::select(vec![
                "status",
                "level",
                "app",
                "app_extracted",
                "msg",
                "duration",
                "empty",
                "a.b",
                "é",
                "",
                "1x",
            ]);
            let value = prop::sample::select(vec![
                "503",
                "200",
                "error",
                "info",
                "3s",
                "1s",
                "",
                "\"timed out\"",
                "\"a\\qb\"",
                "\"\\x41\\u00e9\"",
                "\"x\"garbage",
                "=oops",
                "\"open",
                "a\"b",
                "1.5e3",
            ]);
            let pairs = prop::collection::vec((key, value, any::<bool>()), 0..7);
            (pairs, 0usize..120, fragment(), 0u8..4).prop_map(|(pairs, at, frag, mutation)| {
                let body: Vec<String> = pairs
                    .iter()
                    .map(|(k, v, bare)| {
                        if *bare {
                            (*k).to_owned()
                        } else {
                            format!("{k}={v}")
                        }
                    })
                    .collect();
                mutate(body.join(" "), at, frag, mutation)
            })
        }

        /// Leaves the line alone, cuts it, or inserts a fragment, at a char boundary.
        fn mutate(mut line: String, at: usize, frag: &str, mutation: u8) -> String {
            let mut at = at.min(line.len());
            while !line.is_char_boundary(at) {
                at -= 1;
            }
            match mutation {
                0 => line.truncate(at),
                1 => line.insert_str(at, frag),
                _ => {}
            }
            line
        }

        fn line() -> impl Strategy<Value = String> {
            prop_oneof![json_line(), logfmt_line()]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn probed_pipelines_agree_with_full_parses_on_random_lines(
                lines in prop::collection::vec(line(), 1..8)
            ) {
                assert_probe_matches_full_parse(&lines);
            }

            #[test]
            fn parsers_stopping_early_differ_from_full_reads_only_in_later_errors(
                lines in prop::collection::vec(line(), 1..8)
            ) {
                assert_early_stop_only_skips_later_errors(&lines);
            }
        }
    }
}
