//! Label filters: `| status >= 500 and level="error"`, durations, bytes, `ip()`.
//!
//! Owns evaluating a compiled label-filter tree against a line's labels with Loki's
//! rules: string matchers see a missing label as `""`; typed predicates drop lines
//! lacking the label (error or not) and keep a line whose value does not convert while
//! marking it `LabelFilterErr`; `ip()` predicates pass lines that already carry an error.

use super::conversion::{parse_bytes, parse_duration_seconds, parse_float};
use super::ip::{IpPattern, IpPatternError};
use super::labels::{LabelsBuilder, LABEL_FILTER_ERR};
use crate::syntax::ast::{self, CmpOp};
use crate::Matcher;

/// How a typed label filter converts the label value.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Number,
    Duration,
    Bytes,
}

/// A compiled label filter.
#[derive(Clone, Debug)]
pub enum LabelFilter {
    And(Box<LabelFilter>, Box<LabelFilter>),
    Or(Box<LabelFilter>, Box<LabelFilter>),
    Matcher(Matcher),
    Typed {
        name: String,
        op: CmpOp,
        kind: Kind,
        // Numbers as floats, durations in seconds, bytes as a count.
        value: f64,
    },
    Ip {
        name: String,
        negated: bool,
        pattern: IpPattern,
    },
}

fn compare(op: CmpOp, a: f64, b: f64) -> bool {
    match op {
        CmpOp::Eq => a == b,
        CmpOp::Neq => a != b,
        CmpOp::Gt => a > b,
        CmpOp::Gte => a >= b,
        CmpOp::Lt => a < b,
        CmpOp::Lte => a <= b,
    }
}

impl LabelFilter {
    /// Compiles the AST filter.
    pub fn new(f: &ast::LabelFilter) -> Result<Self, IpPatternError> {
        Ok(match f {
            ast::LabelFilter::And(a, b) => {
                LabelFilter::And(Box::new(Self::new(a)?), Box::new(Self::new(b)?))
            }
            ast::LabelFilter::Or(a, b) => {
                LabelFilter::Or(Box::new(Self::new(a)?), Box::new(Self::new(b)?))
            }
            ast::LabelFilter::Matcher(m) => LabelFilter::Matcher(m.clone()),
            ast::LabelFilter::Number { name, op, value } => LabelFilter::Typed {
                name: name.clone(),
                op: *op,
                kind: Kind::Number,
                value: *value,
            },
            ast::LabelFilter::Duration { name, op, value } => LabelFilter::Typed {
                name: name.clone(),
                op: *op,
                kind: Kind::Duration,
                value: *value as f64 / 1e9,
            },
            ast::LabelFilter::Bytes { name, op, value } => LabelFilter::Typed {
                name: name.clone(),
                op: *op,
                kind: Kind::Bytes,
                value: *value as f64,
            },
            ast::LabelFilter::Ip {
                name,
                negated,
                pattern,
            } => LabelFilter::Ip {
                name: name.clone(),
                negated: *negated,
                pattern: IpPattern::parse(pattern)?,
            },
        })
    }

    /// Whether the line passes; may set `__error__` on conversion failures.
    pub fn keep(&self, lb: &mut LabelsBuilder<'_>) -> bool {
        match self {
            LabelFilter::And(a, b) => {
                let left = a.keep(lb);
                let right = b.keep(lb);
                left && right
            }
            LabelFilter::Or(a, b) => a.keep(lb) || b.keep(lb),
            LabelFilter::Matcher(m) => m.matches(lb.get(&m.name).unwrap_or("")),
            LabelFilter::Typed {
                name,
                op,
                kind,
                value,
            } => {
                // Loki 3.7 drops a line lacking the label even when a parser already
                // marked it with `__error__` (a truncated JSON line has no `status`).
                let Some(raw) = lb.get(name) else {
                    return false;
                };
                let converted = match kind {
                    Kind::Number => parse_float(raw),
                    Kind::Duration => parse_duration_seconds(raw),
                    Kind::Bytes => parse_bytes(raw),
                };
                match converted {
                    Ok(v) => compare(*op, v, *value),
                    Err(details) => {
                        lb.set_error_if_none(LABEL_FILTER_ERR, details);
                        true
                    }
                }
            }
            LabelFilter::Ip {
                name,
                negated,
                pattern,
            } => {
                if lb.has_error() {
                    return true;
                }
                let Some(raw) = lb.get(name) else {
                    return false;
                };
                pattern.matches_value(raw) != *negated
            }
        }
    }

    /// Whether the verdict depends on the line having an error, apart from the labels
    /// it names: `ip()` predicates pass lines that carry one.
    pub fn reads_error(&self) -> bool {
        match self {
            LabelFilter::And(a, b) | LabelFilter::Or(a, b) => a.reads_error() || b.reads_error(),
            LabelFilter::Ip { .. } => true,
            LabelFilter::Matcher(_) | LabelFilter::Typed { .. } => false,
        }
    }

    /// Label names the filter reads.
    pub fn names(&self, out: &mut Vec<String>) {
        match self {
            LabelFilter::And(a, b) | LabelFilter::Or(a, b) => {
                a.names(out);
                b.names(out);
            }
            LabelFilter::Matcher(m) => out.push(m.name.clone()),
            LabelFilter::Typed { name, .. } | LabelFilter::Ip { name, .. } => {
                out.push(name.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::labels::ERROR_LABEL;
    use crate::MatchOp;
    use lode_push::LabelSet;

    fn num(name: &str, op: CmpOp, value: f64) -> ast::LabelFilter {
        ast::LabelFilter::Number {
            name: name.to_owned(),
            op,
            value,
        }
    }

    fn eq(name: &str, v: &str) -> ast::LabelFilter {
        ast::LabelFilter::Matcher(Matcher::new(name, MatchOp::Eq, v).unwrap())
    }

    fn run(f: &ast::LabelFilter, labels: &[(&str, &str)]) -> (bool, Option<String>) {
        let s = LabelSet::from_pairs([("app", "x")]).unwrap();
        let mut lb = LabelsBuilder::new(&s);
        for (k, v) in labels {
            lb.add_extracted(k, v);
        }
        let kept = LabelFilter::new(f).unwrap().keep(&mut lb);
        (kept, lb.get(ERROR_LABEL).map(str::to_owned))
    }

    #[test]
    fn typed_filter_drops_missing_label_and_marks_unconvertible_value() {
        let f = ast::LabelFilter::Duration {
            name: "latency".to_owned(),
            op: CmpOp::Gt,
            value: 250_000_000,
        };
        assert_eq!(run(&f, &[("latency", "300ms")]), (true, None));
        assert_eq!(run(&f, &[("latency", "100ms")]), (false, None));
        assert_eq!(run(&f, &[]), (false, None));
        assert_eq!(
            run(&f, &[("latency", "abc")]),
            (true, Some(LABEL_FILTER_ERR.to_owned()))
        );
    }

    #[test]
    fn typed_filter_drops_a_parser_error_line_that_lacks_the_label() {
        let f = num("status", CmpOp::Gte, 500.0);
        let s = LabelSet::from_pairs([("app", "x")]).unwrap();
        let mut lb = LabelsBuilder::new(&s);
        lb.set_error_if_none("JSONParserErr", "truncated".to_owned());
        assert!(!LabelFilter::new(&f).unwrap().keep(&mut lb));
        lb.add_extracted("status", "502");
        assert!(LabelFilter::new(&f).unwrap().keep(&mut lb));
    }

    #[test]
    fn string_matcher_sees_missing_label_as_empty() {
        let f = ast::LabelFilter::Matcher(Matcher::new("foo", MatchOp::Neq, "x").unwrap());
        assert!(run(&f, &[]).0);
        assert!(run(&eq("foo", ""), &[]).0);
    }

    #[test]
    fn and_or_trees_follow_their_shape() {
        // a="1" and (b="2" or c="3")
        let f = ast::LabelFilter::And(
            Box::new(eq("a", "1")),
            Box::new(ast::LabelFilter::Or(
                Box::new(eq("b", "2")),
                Box::new(eq("c", "3")),
            )),
        );
        assert!(run(&f, &[("a", "1"), ("c", "3")]).0);
        assert!(!run(&f, &[("c", "3")]).0);
        let f = ast::LabelFilter::Or(Box::new(num("s", CmpOp::Eq, 404.0)), Box::new(eq("x", "y")));
        assert!(run(&f, &[("s", "404")]).0);
        assert!(!run(&f, &[("s", "200")]).0);
    }

    #[test]
    fn bytes_and_ip_filters_convert_values() {
        let f = ast::LabelFilter::Bytes {
            name: "size".to_owned(),
            op: CmpOp::Gte,
            value: 800_000,
        };
        assert!(run(&f, &[("size", "800KB")]).0);
        assert!(!run(&f, &[("size", "799KB")]).0);
        let f = ast::LabelFilter::Ip {
            name: "ip".to_owned(),
            negated: false,
            pattern: "10.0.1.0/24".to_owned(),
        };
        assert!(run(&f, &[("ip", "10.0.1.9")]).0);
        assert!(!run(&f, &[("ip", "10.0.2.9")]).0);
    }
}
