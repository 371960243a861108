//! Loki's pattern language: `<name>` captures, `<_>` wildcards, everything else literal.
//!
//! Owns parsing a pattern and its two uses: the `|>` / `!>` line filter (does the line
//! match?) and the `pattern` parser (which captures does the line yield?). Literals are
//! located with memchr's memmem, so a pattern costs a few substring searches per line.

use memchr::memmem;

/// A pattern that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("invalid pattern {pattern:?}: at least one named capture <name> is required")]
    NoCapture { pattern: String },
    #[error("invalid pattern {pattern:?}: captures {first:?} and {second:?} are adjacent; put a literal between them")]
    Adjacent {
        pattern: String,
        first: String,
        second: String,
    },
    #[error("invalid pattern {pattern:?}: capture {name:?} appears twice")]
    Duplicate { pattern: String, name: String },
    #[error("invalid pattern {pattern:?}: a line filter pattern takes only <_> wildcards, not the named capture {name:?}")]
    NamedInFilter { pattern: String, name: String },
}

#[derive(Clone, Debug)]
enum Part {
    Literal(Box<memmem::Finder<'static>>),
    // `None` is the `<_>` wildcard.
    Capture(Option<String>),
}

/// A compiled pattern.
#[derive(Clone, Debug)]
pub struct Pattern {
    parts: Vec<Part>,
}

fn is_capture_name(s: &str) -> bool {
    s == "_" || lode_push::labels::is_valid_label_name(s)
}

impl Pattern {
    fn compile(pattern: &str) -> Result<Self, PatternError> {
        let mut parts: Vec<Part> = Vec::new();
        let mut literal = String::new();
        let mut rest = pattern;
        while let Some(open) = rest.find('<') {
            let after = &rest[open + 1..];
            let capture = after
                .find('>')
                .map(|close| &after[..close])
                .filter(|name| is_capture_name(name));
            match capture {
                Some(name) => {
                    literal.push_str(&rest[..open]);
                    if !literal.is_empty() {
                        let lit = std::mem::take(&mut literal);
                        parts.push(Part::Literal(Box::new(
                            memmem::Finder::new(lit.as_bytes()).into_owned(),
                        )));
                    }
                    if let Some(Part::Capture(prev)) = parts.last() {
                        return Err(PatternError::Adjacent {
                            pattern: pattern.to_owned(),
                            first: prev.clone().unwrap_or_else(|| "_".to_owned()),
                            second: name.to_owned(),
                        });
                    }
                    parts.push(Part::Capture((name != "_").then(|| name.to_owned())));
                    rest = &after[name.len() + 1..];
                }
                None => {
                    literal.push_str(&rest[..=open]);
                    rest = after;
                }
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(Box::new(
                memmem::Finder::new(literal.as_bytes()).into_owned(),
            )));
        }
        Ok(Pattern { parts })
    }

    /// A pattern for the `pattern` parser: at least one named capture, names unique.
    pub fn parser(pattern: &str) -> Result<Self, PatternError> {
        let p = Self::compile(pattern)?;
        let names: Vec<&str> = p.capture_names().collect();
        if names.is_empty() {
            return Err(PatternError::NoCapture {
                pattern: pattern.to_owned(),
            });
        }
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(PatternError::Duplicate {
                    pattern: pattern.to_owned(),
                    name: (*n).to_owned(),
                });
            }
        }
        Ok(p)
    }

    /// A pattern for the `|>` / `!>` line filters: only `<_>` wildcards.
    pub fn filter(pattern: &str) -> Result<Self, PatternError> {
        let p = Self::compile(pattern)?;
        if let Some(name) = p.capture_names().next() {
            return Err(PatternError::NamedInFilter {
                pattern: pattern.to_owned(),
                name: name.to_owned(),
            });
        }
        Ok(p)
    }

    /// The named captures in order.
    pub fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Capture(Some(n)) => Some(n.as_str()),
            _ => None,
        })
    }

    /// Line-filter semantics: literals in order (the first one searched anywhere), each
    /// wildcard consuming at least one byte, a trailing literal ending the line and a
    /// trailing wildcard needing something left.
    pub fn matches(&self, line: &str) -> bool {
        let mut rest = line.as_bytes();
        if self.parts.is_empty() {
            return rest.is_empty();
        }
        let mut after_capture = false;
        for (i, part) in self.parts.iter().enumerate() {
            match part {
                Part::Capture(_) => after_capture = true,
                Part::Literal(finder) => {
                    let is_last = i + 1 == self.parts.len();
                    let needle_len = finder.needle().len();
                    let skip = usize::from(after_capture);
                    if rest.len() < skip {
                        return false;
                    }
                    let found = if is_last && after_capture {
                        // A trailing literal must end the line.
                        (rest.len() >= needle_len + skip && rest.ends_with(finder.needle()))
                            .then(|| rest.len() - needle_len)
                    } else {
                        finder.find(&rest[skip..]).map(|at| at + skip)
                    };
                    let Some(at) = found else {
                        return false;
                    };
                    rest = &rest[at + needle_len..];
                    if is_last && !after_capture && i > 0 {
                        return rest.is_empty();
                    }
                    after_capture = false;
                }
            }
        }
        if after_capture {
            return !rest.is_empty();
        }
        // Patterns made of one literal only need it to occur; otherwise the last literal
        // must have ended the line.
        self.parts.len() == 1 || rest.is_empty()
    }

    /// Parser semantics: the captures the line yields, `(name, value)`; empty when a
    /// leading literal does not start the line.
    pub fn captures<'l>(&self, line: &'l str) -> Vec<(&str, &'l str)> {
        let mut out = Vec::new();
        let mut rest = line;
        let mut pending: Option<&Option<String>> = None;
        for (i, part) in self.parts.iter().enumerate() {
            match part {
                Part::Capture(name) => pending = Some(name),
                Part::Literal(finder) => {
                    let needle_len = finder.needle().len();
                    match pending.take() {
                        None => {
                            if i == 0 && !rest.as_bytes().starts_with(finder.needle()) {
                                return Vec::new();
                            }
                            rest = rest.get(needle_len..).unwrap_or_default();
                        }
                        Some(name) => match finder.find(rest.as_bytes()) {
                            Some(at) => {
                                if let Some(n) = name {
                                    out.push((n.as_str(), rest.get(..at).unwrap_or_default()));
                                }
                                rest = rest.get(at + needle_len..).unwrap_or_default();
                            }
                            None => {
                                if let Some(n) = name {
                                    out.push((n.as_str(), rest));
                                }
                                return out;
                            }
                        },
                    }
                }
            }
        }
        if let Some(Some(n)) = pending {
            out.push((n.as_str(), rest));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_pattern_searches_first_literal_and_needs_something_after_trailing_wildcard() {
        let p = Pattern::filter("[<_>] [error] <_>").unwrap();
        assert!(p.matches("[Sun Dec 04 04:47:44 2005] [error] mod_jk child"));
        assert!(!p.matches("[Sun Dec 04 04:47:44 2005] [notice] jk2_init()"));
        assert!(!p.matches("[Sun Dec 04 04:47:44 2005] [error] "));
        assert!(p.matches("x [a] [error] y"));
    }

    #[test]
    fn filter_pattern_with_trailing_literal_must_end_the_line() {
        let p = Pattern::filter("<_> done").unwrap();
        assert!(p.matches("job done"));
        assert!(!p.matches("job done twice"));
        assert!(!p.matches(" done"));
        assert!(Pattern::filter("").unwrap().matches(""));
        assert!(!Pattern::filter("").unwrap().matches("x"));
    }

    #[test]
    fn parser_pattern_captures_up_to_next_literal_and_takes_rest_when_missing() {
        let p = Pattern::parser("[<ts>] [<lvl>] <msg>").unwrap();
        let caps = p.captures("[Sun Dec 04] [error] boom now");
        assert_eq!(
            caps,
            vec![("ts", "Sun Dec 04"), ("lvl", "error"), ("msg", "boom now")]
        );
        let p = Pattern::parser("<ip> - <user> [").unwrap();
        assert_eq!(
            p.captures("1.2.3.4 - bob"),
            vec![("ip", "1.2.3.4"), ("user", "bob")]
        );
        assert!(Pattern::parser("x<a>").unwrap().captures("y1").is_empty());
    }

    #[test]
    fn invalid_patterns_are_rejected_with_reason() {
        assert!(matches!(
            Pattern::parser("foo"),
            Err(PatternError::NoCapture { .. })
        ));
        assert!(matches!(
            Pattern::parser("<a><b>"),
            Err(PatternError::Adjacent { .. })
        ));
        assert!(matches!(
            Pattern::parser("<x> <x>"),
            Err(PatternError::Duplicate { .. })
        ));
        assert!(matches!(
            Pattern::filter("<x> y"),
            Err(PatternError::NamedInFilter { .. })
        ));
    }
}
