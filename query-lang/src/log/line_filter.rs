//! Line filters: `|= != |~ !~ |> !>`, `ip("...")` values and `or` chains.
//!
//! Owns deciding whether a line passes one filter stage. Substrings are found with
//! memchr's memmem; a regex first has its required literals extracted (regex-syntax) and
//! searched with memmem, so most non-matching lines never reach the regex engine, and a
//! regex that is just a literal (or `(?i)` + literal) never compiles a regex at all.
//! It does not own where filters sit in a pipeline (`log::Pipeline`).

use aho_corasick::{AhoCorasick, AhoCorasickBuilder};
use memchr::memmem;
use regex::Regex;
use regex_syntax::hir::{Hir, HirKind};

use super::ip::{IpPattern, IpPatternError};
use super::pattern::{Pattern, PatternError};
use crate::syntax::ast::{LineFilterOp, LineFilterValue};

/// A line filter that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineFilterError {
    #[error("stage '{stage}' : error parsing regexp: {reason}")]
    Regex { stage: String, reason: String },
    #[error("stage '{stage}' : {source}")]
    Pattern { stage: String, source: PatternError },
    #[error("stage '{stage}' : {source}")]
    Ip {
        stage: String,
        source: IpPatternError,
    },
    #[error("stage '{stage}' : ip() is only allowed with |= and !=, not {op}")]
    IpOperator { stage: String, op: &'static str },
}

#[derive(Clone, Debug)]
enum LineMatcher {
    Always,
    Contains(memmem::Finder<'static>),
    ContainsFold(AhoCorasick),
    Regex {
        // A literal every match contains: lines without it cannot match.
        required: Option<memmem::Finder<'static>>,
        regex: Regex,
    },
    Pattern(Pattern),
    Ip(IpPattern),
}

impl LineMatcher {
    fn is_match(&self, line: &str) -> bool {
        match self {
            LineMatcher::Always => true,
            LineMatcher::Contains(f) => f.find(line.as_bytes()).is_some(),
            LineMatcher::ContainsFold(ac) => ac.is_match(line),
            LineMatcher::Regex { required, regex } => {
                if let Some(f) = required {
                    if f.find(line.as_bytes()).is_none() {
                        return false;
                    }
                }
                regex.is_match(line)
            }
            LineMatcher::Pattern(p) => p.matches(line),
            LineMatcher::Ip(p) => p.matches_line(line),
        }
    }

    fn literal(text: &str) -> Self {
        if text.is_empty() {
            LineMatcher::Always
        } else {
            LineMatcher::Contains(memmem::Finder::new(text.as_bytes()).into_owned())
        }
    }

    fn regex(pattern: &str, stage: &str) -> Result<Self, LineFilterError> {
        let bad = |reason: String| LineFilterError::Regex {
            stage: stage.to_owned(),
            reason,
        };
        let hir = regex_syntax::Parser::new()
            .parse(pattern)
            .map_err(|e| bad(format!("{}: `{pattern}`", go_regex_reason(&e))))?;
        if let Some(lit) = whole_literal(&hir) {
            return Ok(LineMatcher::literal(&lit));
        }
        if let Some(lit) = case_folded_literal(pattern) {
            let ac = AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .build([lit.as_str()])
                .map_err(|e| bad(e.to_string()))?;
            return Ok(LineMatcher::ContainsFold(ac));
        }
        let regex = Regex::new(pattern).map_err(|e| bad(e.to_string()))?;
        let mut literals = Vec::new();
        required_literals(&hir, &mut literals);
        let required = literals
            .into_iter()
            .max_by_key(Vec::len)
            .filter(|l| !l.is_empty())
            .map(|l| memmem::Finder::new(&l).into_owned());
        Ok(LineMatcher::Regex { required, regex })
    }
}

// Go's regexp error wording for the mistakes users make most, so messages read like
// Loki's (`missing closing ): ...`).
pub(crate) fn go_regex_reason(e: &regex_syntax::Error) -> String {
    let text = e.to_string();
    if text.contains("unclosed group") {
        "missing closing )".to_owned()
    } else if text.contains("unopened group") {
        "unexpected )".to_owned()
    } else if text.contains("unclosed character class") {
        "missing closing ]".to_owned()
    } else {
        text.lines().last().unwrap_or_default().trim().to_owned()
    }
}

/// The literal a regex matches exactly, if it is nothing but one.
fn whole_literal(hir: &Hir) -> Option<String> {
    match hir.kind() {
        HirKind::Literal(l) => String::from_utf8(l.0.to_vec()).ok(),
        HirKind::Empty => Some(String::new()),
        HirKind::Concat(parts) => {
            let mut out = String::new();
            for p in parts {
                out.push_str(&whole_literal(p)?);
            }
            Some(out)
        }
        HirKind::Capture(c) => whole_literal(&c.sub),
        _ => None,
    }
}

/// `(?i)literal` where the literal is plain ASCII text: searched case-insensitively without
/// a regex.
fn case_folded_literal(pattern: &str) -> Option<String> {
    let lit = pattern.strip_prefix("(?i)")?;
    let plain = !lit.is_empty()
        && lit.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || b == b' '
                || b == b'_'
                || b == b'-'
                || b == b'='
                || b == b':'
        });
    plain.then(|| lit.to_owned())
}

/// The longest literal every match of `pattern` contains, when it has one of at least
/// `min_len` bytes (so a store can skip text without it), and whether it is to be found
/// ignoring ASCII case (`(?i)` + a plain literal). `None` for invalid patterns, other
/// case-insensitive ones and patterns without such a literal.
pub fn regex_required_literal(pattern: &str, min_len: usize) -> Option<(String, bool)> {
    if let Some(lit) = case_folded_literal(pattern) {
        return (lit.len() >= min_len).then_some((lit, true));
    }
    case_sensitive_required_literal(pattern, min_len).map(|l| (l, false))
}

fn case_sensitive_required_literal(pattern: &str, min_len: usize) -> Option<String> {
    let hir = regex_syntax::Parser::new().parse(pattern).ok()?;
    if let Some(lit) = whole_literal(&hir) {
        return (lit.len() >= min_len).then_some(lit);
    }
    let mut literals = Vec::new();
    required_literals(&hir, &mut literals);
    literals
        .into_iter()
        .max_by_key(Vec::len)
        .filter(|l| l.len() >= min_len)
        .and_then(|l| String::from_utf8(l).ok())
}

/// Collects literals that every match of `hir` must contain.
fn required_literals(hir: &Hir, out: &mut Vec<Vec<u8>>) {
    match hir.kind() {
        HirKind::Literal(l) => out.push(l.0.to_vec()),
        HirKind::Capture(c) => required_literals(&c.sub, out),
        HirKind::Concat(parts) => {
            let mut run: Vec<u8> = Vec::new();
            for p in parts {
                if let HirKind::Literal(l) = p.kind() {
                    run.extend_from_slice(&l.0);
                } else {
                    if !run.is_empty() {
                        out.push(std::mem::take(&mut run));
                    }
                    required_literals(p, out);
                }
            }
            if !run.is_empty() {
                out.push(run);
            }
        }
        HirKind::Repetition(r) if r.min > 0 => required_literals(&r.sub, out),
        _ => {}
    }
}

/// One compiled line-filter stage, an `or` chain included.
#[derive(Clone, Debug)]
pub struct LineFilter {
    matchers: Vec<LineMatcher>,
    negate: bool,
}

impl LineFilter {
    /// Builds the filter `op v1 or v2 ...`. A positive chain keeps lines matching any
    /// value; a negative one keeps lines matching none (Loki's `!= a or b` rewrite).
    pub fn new(op: LineFilterOp, values: &[LineFilterValue]) -> Result<Self, LineFilterError> {
        let stage = describe(op, values);
        let mut matchers = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            let m = match value {
                LineFilterValue::Ip(p) => {
                    // Loki ignores `ip()` at the head of a positive or-chain and matches
                    // its text instead; kept for answer parity.
                    if i == 0 && values.len() > 1 && !op.is_negative() {
                        match op {
                            LineFilterOp::Match => LineMatcher::regex(p, &stage)?,
                            _ => LineMatcher::literal(p),
                        }
                    } else {
                        if !matches!(op, LineFilterOp::Contains | LineFilterOp::NotContains) {
                            return Err(LineFilterError::IpOperator {
                                stage,
                                op: op.as_str(),
                            });
                        }
                        LineMatcher::Ip(IpPattern::parse(p).map_err(|source| {
                            LineFilterError::Ip {
                                stage: stage.clone(),
                                source,
                            }
                        })?)
                    }
                }
                LineFilterValue::Literal(t) => match op {
                    LineFilterOp::Contains | LineFilterOp::NotContains => LineMatcher::literal(t),
                    LineFilterOp::Match | LineFilterOp::NotMatch => LineMatcher::regex(t, &stage)?,
                    LineFilterOp::Pattern | LineFilterOp::NotPattern => {
                        LineMatcher::Pattern(Pattern::filter(t).map_err(|source| {
                            LineFilterError::Pattern {
                                stage: stage.clone(),
                                source,
                            }
                        })?)
                    }
                },
            };
            matchers.push(m);
        }
        Ok(LineFilter {
            matchers,
            negate: op.is_negative(),
        })
    }

    /// Whether the line passes.
    #[inline]
    pub fn keep(&self, line: &str) -> bool {
        let any = self.matchers.iter().any(|m| m.is_match(line));
        any != self.negate
    }

    /// True for filters that keep every line (`|= ""`), which a pipeline can skip.
    pub fn is_noop(&self) -> bool {
        !self.negate
            && self
                .matchers
                .iter()
                .any(|m| matches!(m, LineMatcher::Always))
    }
}

fn describe(op: LineFilterOp, values: &[LineFilterValue]) -> String {
    let mut s = String::from(op.as_str());
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            s.push_str(" or");
        }
        s.push(' ');
        match v {
            LineFilterValue::Literal(t) => s.push_str(&format!("{t:?}")),
            LineFilterValue::Ip(p) => s.push_str(&format!("ip({p:?})")),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> LineFilterValue {
        LineFilterValue::Literal(s.to_owned())
    }

    #[test]
    fn contains_and_not_contains_are_byte_substring_tests() {
        let f = LineFilter::new(LineFilterOp::Contains, &[text("error")]).unwrap();
        assert!(f.keep("an error here"));
        assert!(!f.keep("an Error here"));
        let f = LineFilter::new(LineFilterOp::NotContains, &[text("")]).unwrap();
        assert!(!f.keep("anything"));
        assert!(LineFilter::new(LineFilterOp::Contains, &[text("")])
            .unwrap()
            .is_noop());
    }

    #[test]
    fn positive_or_chain_is_any_and_negative_chain_is_none() {
        let f = LineFilter::new(LineFilterOp::Contains, &[text("openai"), text("tts")]).unwrap();
        assert!(f.keep("kind=tts"));
        assert!(f.keep("provider=openai"));
        assert!(!f.keep("kind=validation"));
        let f = LineFilter::new(LineFilterOp::NotContains, &[text("a"), text("b")]).unwrap();
        assert!(f.keep("xyz"));
        assert!(!f.keep("xbz"));
    }

    #[test]
    fn regex_is_unanchored_and_case_insensitive_literal_takes_fast_path() {
        let f = LineFilter::new(LineFilterOp::Match, &[text("error state [78]")]).unwrap();
        assert!(f.keep("x error state 7 y"));
        assert!(!f.keep("error state 9"));
        let f = LineFilter::new(LineFilterOp::Match, &[text("(?i)error")]).unwrap();
        assert!(matches!(f.matchers[0], LineMatcher::ContainsFold(_)));
        assert!(f.keep("An ERROR"));
        assert!(!f.keep("fine"));
        let f = LineFilter::new(LineFilterOp::NotMatch, &[text("status=(200|301)")]).unwrap();
        assert!(!f.keep("status=301 x"));
        assert!(f.keep("status=500"));
    }

    #[test]
    fn regex_required_literal_is_extracted_for_prefiltering() {
        let f = LineFilter::new(LineFilterOp::Match, &[text(r"clientId=chat-1\d{3}\b")]).unwrap();
        match &f.matchers[0] {
            LineMatcher::Regex { required, .. } => {
                assert_eq!(required.as_ref().unwrap().needle(), b"clientId=chat-1");
            }
            other => panic!("expected a regex matcher, got {other:?}"),
        }
        assert!(f.keep("x clientId=chat-1234 y"));
        assert!(!f.keep("x clientId=chat-12345 y"));
    }

    #[test]
    fn unclosed_regex_group_is_reported_like_go() {
        let e = LineFilter::new(LineFilterOp::Match, &[text("(unclosed")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "stage '|~ \"(unclosed\"' : error parsing regexp: missing closing ): `(unclosed`"
        );
    }

    #[test]
    fn ip_filter_only_with_contains_operators() {
        let ip = LineFilterValue::Ip("192.168.1.0/24".to_owned());
        let f = LineFilter::new(LineFilterOp::Contains, std::slice::from_ref(&ip)).unwrap();
        assert!(f.keep("client_ip=192.168.1.9"));
        assert!(!f.keep("client_ip=192.168.2.9"));
        assert!(matches!(
            LineFilter::new(LineFilterOp::Match, &[ip]),
            Err(LineFilterError::IpOperator { .. })
        ));
    }
}
