//! Stages that rewrite lines or labels: `line_format`, `label_format`, `drop`, `keep`,
//! `decolorize`.
//!
//! Owns applying those stages to one line and its [`LabelsBuilder`]. Template parsing
//! and functions live in `template`; filtering lives in `line_filter`/`label_filter`.

use std::sync::OnceLock;

use regex::Regex;

use super::labels::{LabelsBuilder, ERROR_DETAILS_LABEL, ERROR_LABEL, TEMPLATE_FORMAT_ERR};
use super::template::{Template, TemplateData, TemplateError};
use crate::syntax::ast::{LabelFmt, NamedMatcher};

struct BuilderData<'b, 'a> {
    lb: &'b LabelsBuilder<'a>,
    line: &'b str,
    ts: i64,
}

impl TemplateData for BuilderData<'_, '_> {
    fn label(&self, name: &str) -> Option<&str> {
        self.lb.get(name)
    }
    fn labels(&self) -> Vec<(String, String)> {
        self.lb.labels()
    }
    fn line(&self) -> &str {
        self.line
    }
    fn timestamp_ns(&self) -> i64 {
        self.ts
    }
}

struct SnapshotData<'b> {
    labels: &'b [(String, String)],
    line: &'b str,
    ts: i64,
}

impl TemplateData for SnapshotData<'_> {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn labels(&self) -> Vec<(String, String)> {
        self.labels.to_vec()
    }
    fn line(&self) -> &str {
        self.line
    }
    fn timestamp_ns(&self) -> i64 {
        self.ts
    }
}

/// `| line_format "template"`.
#[derive(Clone, Debug)]
pub struct LineFormatter {
    template: Template,
}

impl LineFormatter {
    /// Parses the template.
    pub fn new(template: &str) -> Result<Self, TemplateError> {
        Ok(LineFormatter {
            template: Template::parse(template)?,
        })
    }

    /// The labels the template reads.
    pub fn fields(&self) -> &[String] {
        self.template.fields()
    }

    /// The new line, or `None` (line unchanged, `TemplateFormatErr` set) on a render error.
    pub fn process(&self, ts: i64, line: &str, lb: &mut LabelsBuilder<'_>) -> Option<String> {
        let rendered = self.template.render(&BuilderData { lb, line, ts });
        match rendered {
            Ok(s) => Some(s),
            Err(details) => {
                lb.set_error(TEMPLATE_FORMAT_ERR, details);
                None
            }
        }
    }
}

/// A `label_format` stage that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelFormatError {
    #[error("label_format: label {name:?} is assigned more than once in one stage")]
    Duplicate { name: String },
    #[error("label_format: {name:?} cannot be assigned; use drop to remove errors")]
    ErrorLabel { name: String },
    #[error("label_format: {0}")]
    Template(#[from] TemplateError),
}

#[derive(Clone, Debug)]
enum Assignment {
    Rename { dst: String, src: String },
    Template { dst: String, template: Template },
}

/// `| label_format dst=src, dst2="{{template}}"`.
#[derive(Clone, Debug)]
pub struct LabelFormatter {
    assignments: Vec<Assignment>,
}

impl LabelFormatter {
    /// Builds the stage; a label may be assigned once and `__error__` not at all.
    pub fn new(fmts: &[LabelFmt]) -> Result<Self, LabelFormatError> {
        let mut seen: Vec<&str> = Vec::new();
        let mut assignments = Vec::with_capacity(fmts.len());
        for f in fmts {
            let dst = f.dst();
            if dst == ERROR_LABEL || dst == ERROR_DETAILS_LABEL {
                return Err(LabelFormatError::ErrorLabel {
                    name: dst.to_owned(),
                });
            }
            if seen.contains(&dst) {
                return Err(LabelFormatError::Duplicate {
                    name: dst.to_owned(),
                });
            }
            seen.push(dst);
            assignments.push(match f {
                LabelFmt::Rename { dst, src } => Assignment::Rename {
                    dst: dst.clone(),
                    src: src.clone(),
                },
                LabelFmt::Template { dst, template } => Assignment::Template {
                    dst: dst.clone(),
                    template: Template::parse(template)?,
                },
            });
        }
        Ok(LabelFormatter { assignments })
    }

    /// Label names the stage reads (sources and template fields).
    pub fn fields(&self) -> Vec<String> {
        let mut out = Vec::new();
        for a in &self.assignments {
            match a {
                Assignment::Rename { src, .. } => out.push(src.clone()),
                Assignment::Template { template, .. } => out.extend_from_slice(template.fields()),
            }
        }
        out
    }

    /// Applies the assignments to `lb`.
    pub fn process(&self, ts: i64, line: &str, lb: &mut LabelsBuilder<'_>) {
        // Loki builds the template data once, at the first template of the stage.
        let mut snapshot: Option<Vec<(String, String)>> = None;
        for a in &self.assignments {
            match a {
                Assignment::Rename { dst, src } => {
                    if let Some(v) = lb.get(src).map(str::to_owned) {
                        lb.delete(src);
                        lb.set(dst, v);
                    }
                }
                Assignment::Template { dst, template } => {
                    let labels = snapshot.get_or_insert_with(|| lb.labels());
                    match template.render(&SnapshotData { labels, line, ts }) {
                        Ok(v) => lb.set(dst, v),
                        Err(details) => lb.set_error(TEMPLATE_FORMAT_ERR, details),
                    }
                }
            }
        }
    }
}

fn ansi_regex() -> Option<&'static Regex> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    RE.get_or_init(|| {
        // The common ANSI escape grammar (CSI and OSC sequences), as terminals emit them.
        Regex::new(
            r"[\x1b\x{9b}][\[\]()#;?]*(?:(?:(?:[a-zA-Z\d]*(?:;[a-zA-Z\d]*)*)?\x07)|(?:(?:\d{1,4}(?:;\d{0,4})*)?[\dA-PRZcf-ntqry=><~]))",
        )
        .ok()
    })
    .as_ref()
}

/// `| decolorize`: the line without ANSI escape sequences, or `None` if it had none.
pub fn decolorize(line: &str) -> Option<String> {
    memchr::memchr2(0x1b, 0xc2, line.as_bytes())?;
    match ansi_regex()?.replace_all(line, "") {
        std::borrow::Cow::Borrowed(_) => None,
        std::borrow::Cow::Owned(s) => Some(s),
    }
}

/// `| drop a, b="v"`: removes the named labels, or those whose value matches.
pub fn drop_labels(items: &[NamedMatcher], lb: &mut LabelsBuilder<'_>) {
    for item in items {
        match item {
            NamedMatcher::Name(n) => lb.delete(n),
            NamedMatcher::Matcher(m) => {
                if lb.get(&m.name).is_some_and(|v| m.matches(v)) {
                    lb.delete(&m.name);
                }
            }
        }
    }
}

/// `| keep a, b="v"`: removes every label not listed (error labels always stay).
pub fn keep_labels(items: &[NamedMatcher], lb: &mut LabelsBuilder<'_>) {
    for name in lb.names() {
        if name == ERROR_LABEL || name == ERROR_DETAILS_LABEL {
            continue;
        }
        let value = lb.get(&name).unwrap_or("");
        let kept = items.iter().any(|item| match item {
            NamedMatcher::Name(n) => *n == name,
            NamedMatcher::Matcher(m) => m.name == name && m.matches(value),
        });
        if !kept {
            lb.delete(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MatchOp, Matcher};
    use lode_push::LabelSet;

    fn stream() -> LabelSet {
        LabelSet::from_pairs([("app", "gw"), ("pod", "p1")]).unwrap()
    }

    #[test]
    fn label_format_renames_and_templates_see_stage_start_labels() {
        let s = stream();
        let mut lb = LabelsBuilder::new(&s);
        lb.add_extracted("status", "404");
        lb.add_extracted("method", "GET");
        let f = LabelFormatter::new(&[
            LabelFmt::Rename {
                dst: "code".to_owned(),
                src: "status".to_owned(),
            },
            LabelFmt::Template {
                dst: "route".to_owned(),
                template: "{{.method}}:{{.code}}".to_owned(),
            },
            LabelFmt::Template {
                dst: "again".to_owned(),
                template: "{{.route}}".to_owned(),
            },
        ])
        .unwrap();
        f.process(0, "line", &mut lb);
        assert_eq!(lb.get("status"), None);
        assert_eq!(lb.get("code"), Some("404"));
        assert_eq!(lb.get("route"), Some("GET:404"));
        assert_eq!(lb.get("again"), Some(""));
    }

    #[test]
    fn template_runtime_errors_keep_the_line_and_set_template_format_err() {
        let s = stream();
        let mut lb = LabelsBuilder::new(&s);
        lb.add_extracted("n", "0");
        let f = LineFormatter::new("{{ div 10 (int .n) }}").unwrap();
        assert_eq!(f.process(0, "original", &mut lb), None);
        assert_eq!(lb.get(ERROR_LABEL), Some(TEMPLATE_FORMAT_ERR));
        assert_eq!(
            lb.get(ERROR_DETAILS_LABEL),
            Some("error calling div: runtime error: integer divide by zero")
        );
        let mut lb = LabelsBuilder::new(&s);
        let f = LabelFormatter::new(&[LabelFmt::Template {
            dst: "t".to_owned(),
            template: "{{ unixEpoch .app }}".to_owned(),
        }])
        .unwrap();
        f.process(0, "line", &mut lb);
        assert_eq!(lb.get("t"), None);
        assert_eq!(lb.get(ERROR_LABEL), Some(TEMPLATE_FORMAT_ERR));
    }

    #[test]
    fn templates_read_every_label_through_dot() {
        let s = stream();
        let mut lb = LabelsBuilder::new(&s);
        lb.add_extracted("level", "warn");
        let f = LineFormatter::new("{{ range $k, $v := . }}{{ $k }}={{ $v }} {{ end }}{{ len . }}")
            .unwrap();
        assert_eq!(
            f.process(0, "x", &mut lb).as_deref(),
            Some("app=gw level=warn pod=p1 3")
        );
    }

    #[test]
    fn unknown_template_functions_fail_when_the_stage_is_built() {
        let err = LineFormatter::new("{{ .a | sha1sum }}").unwrap_err();
        assert!(
            err.to_string().contains("function \"sha1sum\" not defined"),
            "{err}"
        );
    }

    #[test]
    fn label_format_rejects_duplicates_and_error_targets() {
        let dup = [
            LabelFmt::Rename {
                dst: "a".to_owned(),
                src: "b".to_owned(),
            },
            LabelFmt::Rename {
                dst: "a".to_owned(),
                src: "c".to_owned(),
            },
        ];
        assert!(matches!(
            LabelFormatter::new(&dup),
            Err(LabelFormatError::Duplicate { .. })
        ));
        let err = [LabelFmt::Rename {
            dst: ERROR_LABEL.to_owned(),
            src: "c".to_owned(),
        }];
        assert!(LabelFormatter::new(&err).is_err());
    }

    #[test]
    fn decolorize_strips_ansi_sequences_only() {
        assert_eq!(
            decolorize("\x1b[31mERROR\x1b[0m job failed").as_deref(),
            Some("ERROR job failed")
        );
        assert_eq!(decolorize("plain"), None);
    }

    #[test]
    fn drop_and_keep_honour_matchers_and_never_keep_away_errors() {
        let s = stream();
        let mut lb = LabelsBuilder::new(&s);
        lb.add_extracted("level", "info");
        lb.set_error("JSONParserErr", "x");
        drop_labels(
            &[
                NamedMatcher::Name("pod".to_owned()),
                NamedMatcher::Matcher(Matcher::new("level", MatchOp::Eq, "debug").unwrap()),
            ],
            &mut lb,
        );
        assert_eq!(lb.get("pod"), None);
        assert_eq!(lb.get("level"), Some("info"));
        keep_labels(&[NamedMatcher::Name("level".to_owned())], &mut lb);
        assert_eq!(lb.get("app"), None);
        assert_eq!(lb.get("level"), Some("info"));
        assert!(lb.has_error());
    }
}
