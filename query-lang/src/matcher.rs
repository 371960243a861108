//! Label matchers: `name = "v"`, `!=`, `=~`, `!~`, with Prometheus semantics.
//!
//! Owns matching one label value; it does not own selector validation (the parser's) or
//! how a store resolves matchers to streams (the server's index). Regex matchers are
//! fully anchored (`^(?s:re)$`), and a missing label compares as the empty string.

use std::fmt;

use regex::Regex;

/// The four matcher operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatchOp {
    /// `=`
    Eq,
    /// `!=`
    Neq,
    /// `=~`
    Re,
    /// `!~`
    Nre,
}

impl MatchOp {
    /// The operator as written in LogQL.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Eq => "=",
            MatchOp::Neq => "!=",
            MatchOp::Re => "=~",
            MatchOp::Nre => "!~",
        }
    }
}

/// One `name op "value"` matcher. The regex, for `=~` and `!~`, is compiled once here.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Regex>,
}

/// A regex matcher whose pattern does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid regex {pattern:?} in matcher for label {name:?}: {reason}")]
pub struct MatcherError {
    pub name: String,
    pub pattern: String,
    pub reason: String,
}

impl Matcher {
    /// Builds a matcher, compiling the anchored regex for `=~` / `!~`.
    pub fn new(
        name: impl Into<String>,
        op: MatchOp,
        value: impl Into<String>,
    ) -> Result<Self, MatcherError> {
        let name = name.into();
        let value = value.into();
        let regex = match op {
            MatchOp::Re | MatchOp::Nre => Some(Regex::new(&format!("^(?s:{value})$")).map_err(
                |e| MatcherError {
                    name: name.clone(),
                    pattern: value.clone(),
                    reason: e.to_string(),
                },
            )?),
            MatchOp::Eq | MatchOp::Neq => None,
        };
        Ok(Matcher {
            name,
            op,
            value,
            regex,
        })
    }

    /// Whether a label value (`""` when the label is absent) satisfies the matcher.
    pub fn matches(&self, value: &str) -> bool {
        match (self.op, &self.regex) {
            (MatchOp::Eq, _) => value == self.value,
            (MatchOp::Neq, _) => value != self.value,
            (MatchOp::Re, Some(re)) => re.is_match(value),
            (MatchOp::Nre, Some(re)) => !re.is_match(value),
            // Unreachable by construction: regex ops always carry a compiled regex.
            (MatchOp::Re | MatchOp::Nre, None) => false,
        }
    }

    /// Whether a stream's labels satisfy every one of `matchers` (a stream selector).
    pub fn select(matchers: &[Matcher], labels: &lode_push::LabelSet) -> bool {
        matchers
            .iter()
            .all(|m| m.matches(labels.get(&m.name).unwrap_or("")))
    }

    /// True when the matcher accepts the empty string, i.e. it also selects streams that
    /// lack the label. A selector needs at least one matcher for which this is false.
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }

    /// The compiled anchored regex, for `=~` / `!~` (lets an index scan a value
    /// dictionary once per matcher).
    pub fn regex(&self) -> Option<&Regex> {
        self.regex.as_ref()
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl Eq for Matcher {}

impl std::hash::Hash for Matcher {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.op.hash(state);
        self.value.hash(state);
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        f.write_str(self.op.as_str())?;
        lode_push::labels::write_quoted(f, &self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_matchers_are_fully_anchored_and_dot_matches_newline() {
        let m = Matcher::new("app", MatchOp::Re, "api|web").unwrap();
        assert!(m.matches("api"));
        assert!(!m.matches("api-2"));
        let m = Matcher::new("msg", MatchOp::Re, "a.b").unwrap();
        assert!(m.matches("a\nb"));
    }

    #[test]
    fn missing_label_compares_as_empty() {
        let m = Matcher::new("env", MatchOp::Neq, "prod").unwrap();
        assert!(m.matches_empty());
        let m = Matcher::new("env", MatchOp::Re, ".+").unwrap();
        assert!(!m.matches_empty());
    }

    #[test]
    fn bad_regex_names_label_and_pattern() {
        let e = Matcher::new("app", MatchOp::Re, "(").unwrap_err();
        assert_eq!(e.name, "app");
        assert_eq!(e.pattern, "(");
    }
}
