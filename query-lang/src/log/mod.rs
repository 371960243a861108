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
    Json(json::JsonParser),
    JsonParams(json::JsonExtractor),
    Logfmt(logfmt::LogfmtParser),
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
                    Compiled::Json(json::JsonParser {
                        wanted: wanted.clone(),
                    })
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
                    let mut parser = logfmt::LogfmtParser::new(p.strict, p.keep_empty, params);
                    parser.wanted = wanted.clone();
                    Compiled::Logfmt(parser)
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
        Ok(Pipeline { stages: out })
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
                Compiled::Json(p) => p.process(&line, lb),
                Compiled::JsonParams(p) => p.process(&line, lb),
                Compiled::Logfmt(p) => p.process(&line, lb),
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
}
