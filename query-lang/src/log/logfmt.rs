//! The `logfmt` parser, with `--strict`, `--keep-empty` and extraction parameters.
//!
//! Owns reading `key=value` pairs (bare or double-quoted values with Go escapes) into
//! labels. Non-strict parsing skips malformed pairs and never sets an error; `--strict`
//! stops at the first malformed pair with `LogfmtParserErr`. Keys without `=` and empty
//! values are dropped unless `--keep-empty`.

use std::borrow::Cow;

use super::json::{bytes_equal, quote_or_backslash, Required, Wanted, HIGHS, ONES};
use super::labels::{
    is_clean_label_name, name_bit, sanitize_label_name, LabelsBuilder, LOGFMT_PARSER_ERR,
};

/// `| logfmt [--strict] [--keep-empty] [label="key", ...]`.
#[derive(Clone, Debug)]
pub struct LogfmtParser {
    strict: bool,
    keep_empty: bool,
    // `(label, key)`: only these keys, renamed. Empty means every key.
    params: Vec<(String, String)>,
    pub(crate) wanted: Wanted,
    wanted_bits: u64,
    required: Required,
}

enum Pair<'l> {
    Kv(&'l str, RawValue<'l>),
    Malformed(usize, &'static str),
}

/// A value as written: bare, or the body of a quoted value whose escapes were already
/// checked by the scanner, so decoding it cannot fail and is only done for values that
/// are stored.
struct RawValue<'l> {
    text: &'l str,
    escaped: bool,
}

impl<'l> RawValue<'l> {
    fn bare(text: &'l str) -> Self {
        RawValue {
            text,
            escaped: false,
        }
    }

    fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    fn decode(&self) -> Cow<'l, str> {
        if !self.escaped {
            return Cow::Borrowed(self.text);
        }
        let mut out = String::with_capacity(self.text.len());
        unquote(self.text, Some(&mut out));
        Cow::Owned(out)
    }
}

/// Bytes that end a key or a bare value: spaces and control bytes, `=` and `"`.
const ENDS_PAIR_PART: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i <= b' ' as usize {
        t[i] = true;
        i += 1;
    }
    t[b'=' as usize] = true;
    t[b'"' as usize] = true;
    t
};

/// The first position at or after `from` holding a space or control byte, `=` or `"`
/// (where a key or a bare value ends), or the line's length. Eight bytes at a time
/// while eight remain (timestamps and ids are longer than a word), then a table lookup
/// per byte.
#[inline]
fn pair_stop(b: &[u8], from: usize) -> usize {
    let mut i = from;
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        // High bit of each byte below 0x21 (exact up to the lowest such byte, as with
        // `bytes_equal`), or equal to `=` or `"`.
        let m = (x.wrapping_sub(ONES * 0x21) & !x & HIGHS)
            | bytes_equal(x, b'=')
            | bytes_equal(x, b'"');
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if ENDS_PAIR_PART[usize::from(c)] {
            return i;
        }
        i += 1;
    }
    b.len()
}

struct Scanner<'l> {
    line: &'l str,
    pos: usize,
}

impl<'l> Scanner<'l> {
    fn skip_to_space(&mut self) {
        let b = self.line.as_bytes();
        while self.pos < b.len() && b[self.pos] > b' ' {
            self.pos += 1;
        }
    }

    fn next_pair(&mut self) -> Option<Pair<'l>> {
        let b = self.line.as_bytes();
        while self.pos < b.len() && b[self.pos] <= b' ' {
            self.pos += 1;
        }
        if self.pos >= b.len() {
            return None;
        }
        let start = self.pos;
        self.pos = pair_stop(b, self.pos);
        let key = self.line.get(start..self.pos).unwrap_or_default();
        match b.get(self.pos) {
            Some(b'"') => {
                let at = self.pos;
                self.skip_to_space();
                return Some(Pair::Malformed(at, "unexpected '\"'"));
            }
            Some(b'=') if key.is_empty() => {
                let at = self.pos;
                self.skip_to_space();
                return Some(Pair::Malformed(at, "unexpected '='"));
            }
            Some(b'=') => {}
            _ => return Some(Pair::Kv(key, RawValue::bare(""))),
        }
        self.pos += 1;
        if b.get(self.pos) == Some(&b'"') {
            let open = self.pos;
            let mut i = open + 1;
            let mut escaped = false;
            loop {
                match quote_or_backslash(b, i).and_then(|at| Some((at, *b.get(at)?))) {
                    None => {
                        self.pos = b.len();
                        return Some(Pair::Malformed(open, "unterminated quoted value"));
                    }
                    Some((at, b'\\')) => {
                        escaped = true;
                        i = at + 2;
                    }
                    Some((at, _)) => {
                        i = at;
                        break;
                    }
                }
            }
            self.pos = i + 1;
            let inner = self.line.get(open + 1..i).unwrap_or_default();
            if escaped && !unquote(inner, None) {
                return Some(Pair::Malformed(open, "invalid quoted value"));
            }
            let value = RawValue {
                text: inner,
                escaped,
            };
            if b.get(self.pos).is_some_and(|c| *c > b' ') {
                let at = self.pos;
                self.skip_to_space();
                return Some(Pair::Malformed(
                    at,
                    "unexpected character after quoted value",
                ));
            }
            return Some(Pair::Kv(key, value));
        }
        let vstart = self.pos;
        self.pos = pair_stop(b, self.pos);
        if let Some(&c @ (b'"' | b'=')) = b.get(self.pos) {
            let at = self.pos;
            let what = if c == b'"' {
                "unexpected '\"'"
            } else {
                "unexpected '='"
            };
            self.skip_to_space();
            return Some(Pair::Malformed(at, what));
        }
        Some(Pair::Kv(
            key,
            RawValue::bare(self.line.get(vstart..self.pos).unwrap_or_default()),
        ))
    }
}

/// Go `strconv.Unquote` of a double-quoted body (the quotes already removed), written to
/// `out`, or only checked when `out` is `None`; false when an escape is invalid.
fn unquote(inner: &str, mut out: Option<&mut String>) -> bool {
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        let ch = if c != '\\' {
            c
        } else {
            let Some(e) = chars.next() else {
                return false;
            };
            let decoded = match e {
                'n' => Some('\n'),
                't' => Some('\t'),
                'r' => Some('\r'),
                '\\' => Some('\\'),
                '"' => Some('"'),
                '\'' => Some('\''),
                'a' => Some('\u{7}'),
                'b' => Some('\u{8}'),
                'f' => Some('\u{c}'),
                'v' => Some('\u{b}'),
                'x' => {
                    let h: String = chars.by_ref().take(2).collect();
                    u8::from_str_radix(&h, 16).ok().map(char::from)
                }
                'u' | 'U' => {
                    let n = if e == 'u' { 4 } else { 8 };
                    let h: String = chars.by_ref().take(n).collect();
                    u32::from_str_radix(&h, 16).ok().and_then(char::from_u32)
                }
                _ => None,
            };
            match decoded {
                Some(ch) => ch,
                None => return false,
            }
        };
        if let Some(out) = out.as_deref_mut() {
            out.push(ch);
        }
    }
    true
}

impl Default for LogfmtParser {
    fn default() -> Self {
        LogfmtParser::new(false, false, Vec::new())
    }
}

impl LogfmtParser {
    /// Builds the parser; `params` are `(label, key)` pairs.
    pub fn new(strict: bool, keep_empty: bool, params: Vec<(String, String)>) -> Self {
        LogfmtParser {
            strict,
            keep_empty,
            params,
            wanted: Wanted::All,
            wanted_bits: u64::MAX,
            required: Required::default(),
        }
    }

    /// The parser producing only the `wanted` labels (Loki's parser hints). Without
    /// extraction parameters it ends a line as soon as it has extracted all of them, as
    /// Loki's does: first values win, so the rest of the line cannot change them, and
    /// `--strict` reports a malformed pair only if it comes before that point.
    pub(crate) fn with_wanted(mut self, wanted: &Wanted) -> Self {
        self.wanted = wanted.clone();
        self.wanted_bits = wanted.bits();
        if self.params.is_empty() {
            self.required = Required::of(wanted);
        }
        self
    }

    /// The same parser reading every line to its end: the reference its early stop is
    /// tested against.
    #[cfg(test)]
    pub(crate) fn without_early_stop(mut self) -> Self {
        self.required = Required::default();
        self
    }

    /// Parses `line` into `lb`.
    pub fn process(&self, line: &str, lb: &mut LabelsBuilder<'_>) {
        self.run(line, &Wanted::All, false, lb);
    }

    /// Whether the parser takes every key (no extraction parameters), so that
    /// [`Self::probe`] applies.
    pub(crate) fn extracts_all_keys(&self) -> bool {
        self.params.is_empty()
    }

    /// Like [`Self::process`] (same error on the same lines) but storing only the
    /// labels `store` wants, as `process` would produce them; with `stop_when_settled`,
    /// ending without error once they are settled (see `JsonParser::probe`).
    pub(crate) fn probe(
        &self,
        line: &str,
        store: &Wanted,
        stop_when_settled: bool,
        lb: &mut LabelsBuilder<'_>,
    ) {
        if stop_when_settled && store.settled(lb) {
            return;
        }
        self.run(line, store, stop_when_settled, lb);
    }

    fn run(&self, line: &str, store: &Wanted, stop: bool, lb: &mut LabelsBuilder<'_>) {
        let mut progress = self.required.begin(lb);
        if progress.done() {
            // Earlier stages set every required label: Loki skips the parser.
            return;
        }
        if !self.params.is_empty() {
            for (label, _) in &self.params {
                lb.add_extracted(label, "");
            }
        }
        let mut sc = Scanner { line, pos: 0 };
        while let Some(pair) = sc.next_pair() {
            match pair {
                Pair::Malformed(pos, what) => {
                    if self.strict {
                        lb.set_error(
                            LOGFMT_PARSER_ERR,
                            format!("logfmt syntax error at pos {} : {what}", pos + 1),
                        );
                        return;
                    }
                }
                Pair::Kv(key, value) => {
                    if value.is_empty() && !self.keep_empty {
                        continue;
                    }
                    if !self.params.is_empty() {
                        if let Some((label, _)) = self.params.iter().find(|(_, k)| k == key) {
                            lb.set(label, value.decode().into_owned());
                        }
                        continue;
                    }
                    let sanitized;
                    let name = if is_clean_label_name(key) {
                        key
                    } else {
                        sanitized = sanitize_label_name(key);
                        sanitized.as_str()
                    };
                    if name.is_empty()
                        || self.wanted_bits != u64::MAX
                            && (self.wanted_bits & name_bit(name) == 0 || !self.wanted.wants(name))
                    {
                        continue;
                    }
                    // A name the full parse stores counts towards the early stop even
                    // when a probe does not store it.
                    let stored = store.wants(name);
                    if stored {
                        lb.add_extracted(name, &value.decode());
                    }
                    if progress.done_possible() && self.required.note(&mut progress, name, lb)
                        || stored && stop && store.settled(lb)
                    {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::labels::{ERROR_LABEL, LOGFMT_PARSER_ERR};

    #[test]
    fn pair_parts_end_at_the_first_space_control_byte_equals_or_quote() {
        let bytewise = |b: &[u8], from: usize| {
            (from..b.len())
                .find(|&i| ENDS_PAIR_PART[usize::from(b[i])])
                .unwrap_or(b.len())
        };
        let samples: [&[u8]; 6] = [
            b"2026-01-01T00:00:00.000Z level=info",
            b"abcdefgh\x7fijklmnop=q",
            "caf\u{e9}-\u{1f600}-\u{7f}\tx".as_bytes(),
            b"0123456789abcdef\"",
            b"!!!!!!!!!!!!!!!!!!!!\x20",
            b"\x80\xff\x21\x20",
        ];
        for b in samples {
            for from in 0..=b.len() {
                assert_eq!(pair_stop(b, from), bytewise(b, from), "{b:?} from {from}");
            }
        }
    }
    use lode_push::LabelSet;

    fn parse(p: &LogfmtParser, line: &str) -> Vec<(String, String)> {
        let s = LabelSet::from_pairs([("app", "x")]).unwrap();
        let mut lb = LabelsBuilder::new(&s);
        p.process(line, &mut lb);
        lb.labels()
    }

    fn has(labels: &[(String, String)], k: &str, v: &str) -> bool {
        labels.contains(&(k.to_owned(), v.to_owned()))
    }

    #[test]
    fn standalone_keys_and_empty_values_drop_unless_keep_empty() {
        let line = r#"level=info msg="hi there" dangling empty="#;
        let got = parse(&LogfmtParser::default(), line);
        assert!(has(&got, "level", "info"));
        assert!(has(&got, "msg", "hi there"));
        assert!(!got.iter().any(|(k, _)| k == "dangling" || k == "empty"));
        let got = parse(&LogfmtParser::new(false, true, vec![]), line);
        assert!(has(&got, "dangling", ""));
        assert!(has(&got, "empty", ""));
    }

    #[test]
    fn malformed_pairs_are_skipped_unless_strict() {
        let line = r#"a=1 =oops b="q\"x" c=2"#;
        let got = parse(&LogfmtParser::default(), line);
        assert!(has(&got, "a", "1"));
        assert!(has(&got, "b", "q\"x"));
        assert!(has(&got, "c", "2"));
        assert!(!got.iter().any(|(k, _)| k == ERROR_LABEL));
        let got = parse(&LogfmtParser::new(true, false, vec![]), line);
        assert!(has(&got, "a", "1"));
        assert!(has(&got, ERROR_LABEL, LOGFMT_PARSER_ERR));
        assert!(!got.iter().any(|(k, _)| k == "c"));
    }

    #[test]
    fn params_extract_only_named_keys_and_precreate_them_empty() {
        let p = LogfmtParser::new(
            false,
            false,
            vec![
                ("host".to_owned(), "host".to_owned()),
                ("fwd_ip".to_owned(), "fwd".to_owned()),
                ("none".to_owned(), "none".to_owned()),
            ],
        );
        let got = parse(&p, "host=h1 fwd=1.2.3.4 other=z");
        assert!(has(&got, "host", "h1"));
        assert!(has(&got, "fwd_ip", "1.2.3.4"));
        assert!(has(&got, "none", ""));
        assert!(!got.iter().any(|(k, _)| k == "other"));
    }

    #[test]
    fn colliding_key_is_suffixed_and_odd_keys_sanitised() {
        let got = parse(&LogfmtParser::default(), "app=y foo.bar=1");
        assert!(has(&got, "app", "x"));
        assert!(has(&got, "app_extracted", "y"));
        assert!(has(&got, "foo_bar", "1"));
    }
}
