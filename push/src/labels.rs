//! Label sets: the identity of a stream.
//!
//! Owns the parsing and printing of Loki's label-set strings (`{app="api", pod="a-1"}`)
//! and the canonical in-memory form (names sorted, each once). It does not own limits
//! (how many labels, how long): those are per-tenant settings checked by the server's
//! distributor.

use std::fmt;

/// A sorted set of `name="value"` pairs, each name at most once.
///
/// Two label sets with the same pairs compare equal and print identically whatever order
/// they were written in, so the printed form is a stable stream key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSet(Vec<(String, String)>);

/// For maps that clone a borrowed key only when inserting it (hashbrown's `entry_ref`).
impl From<&LabelSet> for LabelSet {
    fn from(l: &LabelSet) -> Self {
        l.clone()
    }
}

/// Why a label-set string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("invalid label set {input:?} at byte {pos}: {what}")]
    Syntax {
        input: String,
        pos: usize,
        what: String,
    },
    #[error("duplicate label name {name:?} in {input:?}")]
    Duplicate { input: String, name: String },
    #[error("invalid label name {name:?}: must match [a-zA-Z_][a-zA-Z0-9_]*")]
    InvalidName { name: String },
}

impl LabelSet {
    /// Builds a label set from pairs, sorting them; a repeated name is an error.
    pub fn from_pairs<I, K, V>(pairs: I) -> Result<Self, LabelError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut v: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        for (name, _) in &v {
            if !is_valid_label_name(name) {
                return Err(LabelError::InvalidName { name: name.clone() });
            }
        }
        v.sort();
        if let Some(w) = v.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(LabelError::Duplicate {
                input: format!("{v:?}"),
                name: w[0].0.clone(),
            });
        }
        Ok(LabelSet(v))
    }

    /// Parses Loki's label-set syntax: `{name="value", ...}`. Values may be
    /// double-quoted (Go escapes) or back-quoted (raw). `{}` is the empty set.
    pub fn parse(input: &str) -> Result<Self, LabelError> {
        Parser { input, pos: 0 }.label_set()
    }

    /// The pairs, sorted by name.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .and_then(|i| self.0.get(i))
            .map(|(_, v)| v.as_str())
    }

    /// Number of label names.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for `{}`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates `(name, value)` in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Consumes the set, returning the sorted pairs.
    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.0
    }
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, Prometheus' label-name rule that Loki enforces on push.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Writes `s` as a Go-style double-quoted string (what Loki prints in label sets).
pub fn write_quoted(f: &mut impl fmt::Write, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            '\u{7}' => f.write_str("\\a")?,
            '\u{8}' => f.write_str("\\b")?,
            '\u{c}' => f.write_str("\\f")?,
            '\u{b}' => f.write_str("\\v")?,
            c if (c as u32) < 0x20 || c == '\u{7f}' => write!(f, "\\x{:02x}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(k)?;
            f.write_str("=")?;
            write_quoted(f, v)?;
        }
        f.write_str("}")
    }
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, what: impl Into<String>) -> LabelError {
        LabelError::Syntax {
            input: self.input.to_string(),
            pos: self.pos,
            what: what.into(),
        }
    }

    fn rest(&self) -> &str {
        self.input.get(self.pos..).unwrap_or("")
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.input.len() - trimmed.len();
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.rest().starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn label_set(mut self) -> Result<LabelSet, LabelError> {
        if !self.eat('{') {
            return Err(self.err("expected '{'"));
        }
        let mut pairs = Vec::new();
        if !self.eat('}') {
            loop {
                let name = self.name()?;
                if !self.eat('=') {
                    return Err(self.err(format!("expected '=' after label name {name:?}")));
                }
                self.skip_ws();
                let value = self.value()?;
                pairs.push((name, value));
                if self.eat(',') {
                    // A trailing comma before '}' is tolerated, as Prometheus does.
                    if self.eat('}') {
                        break;
                    }
                    continue;
                }
                if self.eat('}') {
                    break;
                }
                return Err(self.err("expected ',' or '}'"));
            }
        }
        self.skip_ws();
        if !self.rest().is_empty() {
            return Err(self.err("unexpected text after '}'"));
        }
        let input = self.input.to_string();
        pairs.sort();
        if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(LabelError::Duplicate {
                input,
                name: w[0].0.clone(),
            });
        }
        Ok(LabelSet(pairs))
    }

    fn name(&mut self) -> Result<String, LabelError> {
        self.skip_ws();
        let rest = self.rest();
        let len = rest
            .char_indices()
            .find(|&(i, c)| !(c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
            .map_or(rest.len(), |(i, _)| i);
        if len == 0 {
            return Err(self.err("expected a label name"));
        }
        let name = rest[..len].to_string();
        self.pos += len;
        Ok(name)
    }

    fn value(&mut self) -> Result<String, LabelError> {
        let rest = self.rest();
        if let Some(raw) = rest.strip_prefix('`') {
            let end = raw
                .find('`')
                .ok_or_else(|| self.err("unterminated back-quoted value"))?;
            let v = raw[..end].to_string();
            self.pos += end + 2;
            return Ok(v);
        }
        if !rest.starts_with('"') {
            return Err(self.err("expected a quoted label value"));
        }
        let (value, used) = unquote_go(rest).map_err(|(off, what)| {
            let mut p = Parser {
                input: self.input,
                pos: self.pos + off,
            };
            p.pos = p.pos.min(self.input.len());
            p.err(what)
        })?;
        self.pos += used;
        Ok(value)
    }
}

/// Reads one Go double-quoted string at the start of `s` (which starts with `"`).
/// Returns the unescaped value and the bytes consumed, or the failing offset and why.
pub fn unquote_go(s: &str) -> Result<(String, usize), (usize, String)> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1).peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            '\\' => {
                let Some((j, e)) = chars.next() else {
                    return Err((i, "unterminated escape".into()));
                };
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'a' => out.push('\u{7}'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'v' => out.push('\u{b}'),
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    '\'' => out.push('\''),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let mut v: u32 = 0;
                        for _ in 0..n {
                            let d = chars
                                .next()
                                .and_then(|(_, h)| h.to_digit(16))
                                .ok_or((j, format!("invalid \\{e} escape")))?;
                            v = v * 16 + d;
                        }
                        let ch = char::from_u32(v).ok_or((j, "invalid code point".to_string()))?;
                        out.push(ch);
                    }
                    '0'..='7' => {
                        let mut v = e.to_digit(8).unwrap_or(0);
                        for _ in 0..2 {
                            let d = chars
                                .next()
                                .and_then(|(_, h)| h.to_digit(8))
                                .ok_or((j, "invalid octal escape".to_string()))?;
                            v = v * 8 + d;
                        }
                        let ch = char::from_u32(v).ok_or((j, "invalid code point".to_string()))?;
                        out.push(ch);
                    }
                    other => return Err((j, format!("unknown escape sequence \\{other}"))),
                }
            }
            c => out.push(c),
        }
    }
    Err((s.len(), "unterminated quoted string".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_sorts_and_prints_canonically() {
        let l = LabelSet::parse(r#"{pod="a-1",app = "api" }"#).unwrap();
        assert_eq!(l.to_string(), r#"{app="api", pod="a-1"}"#);
        assert_eq!(l.get("pod"), Some("a-1"));
        assert_eq!(l.get("nope"), None);
    }

    #[test]
    fn parse_rejects_duplicates_and_bad_syntax() {
        assert!(matches!(
            LabelSet::parse(r#"{a="1", a="2"}"#),
            Err(LabelError::Duplicate { .. })
        ));
        assert!(LabelSet::parse(r#"{a="1""#).is_err());
        assert!(LabelSet::parse(r#"{1a="1"}"#).is_err());
        assert!(LabelSet::parse(r#"a="1""#).is_err());
        assert!(LabelSet::parse(r#"{a=1}"#).is_err());
    }

    #[test]
    fn escapes_round_trip() {
        let l = LabelSet::from_pairs([("msg", "a \"q\" \\ \n\u{1}")]).unwrap();
        let printed = l.to_string();
        assert_eq!(printed, r#"{msg="a \"q\" \\ \n\x01"}"#);
        assert_eq!(LabelSet::parse(&printed).unwrap(), l);
    }

    #[test]
    fn empty_set_and_backticks() {
        assert!(LabelSet::parse("{}").unwrap().is_empty());
        let l = LabelSet::parse(r#"{a=`x\y`}"#).unwrap();
        assert_eq!(l.get("a"), Some(r"x\y"));
    }

    proptest! {
        #[test]
        fn printed_label_sets_parse_back(pairs in proptest::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,8}", ".{0,12}", 0..6)) {
            let l = LabelSet::from_pairs(pairs).unwrap();
            prop_assert_eq!(LabelSet::parse(&l.to_string()).unwrap(), l);
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = LabelSet::parse(&s);
        }
    }
}
