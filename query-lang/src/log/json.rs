//! The `json` parser (full flattening or `json a="path"` extraction) and `unpack`.
//!
//! Owns reading JSON lines into labels with Loki's rules: nested keys joined with `_`,
//! names sanitised, arrays and `null` skipped, strings unescaped, numbers kept as written,
//! labels seen before a syntax error kept and the error reported as `JSONParserErr` with
//! the same wording Loki's JSON library uses. A hand-rolled single-pass scanner is used
//! instead of serde_json because Loki's answers depend on streaming behaviour (partial
//! labels before an error, raw number text) and because it avoids building a tree per line.
//!
//! The scanner borrows keys and values from the line (strings are cut at ASCII quotes, so
//! the pieces of a `&str` stay valid UTF-8 without re-checking) and copies only the
//! labels it stores. Which labels are stored is separate from how much of the line is
//! checked: [`JsonParser::probe`] checks exactly what [`JsonParser::process`] checks, so
//! it fails on the same lines with the same error, but stores only a few names.

use std::borrow::Cow;

use super::labels::{
    is_clean_label_name, name_bit, sanitize_label_name, LabelsBuilder, JSON_PARSER_ERR,
};

const MALFORMED_OBJECT: &str = "Value looks like object, but can't find closing '}' symbol";
const MALFORMED_STRING: &str = "Value is string, but can't find closing '\"' symbol";
const MALFORMED_ARRAY: &str = "Value is array, but can't find closing ']' symbol";
const MALFORMED_VALUE: &str =
    "Value looks like Number/Boolean/None, but can't find its end: ',' or '}' symbol";
const UNKNOWN_VALUE: &str = "Unknown value type";
const MALFORMED_ESCAPE: &str = "Encountered an invalid escape sequence in a string";
const NOT_AN_OBJECT: &str = "expecting json object(6), but it is not";
// Nesting deeper than this is treated as malformed rather than risking the stack.
const MAX_DEPTH: usize = 128;

type JsonResult<T> = Result<T, &'static str>;

/// Bytes that end a number, `true`, `false` or `null`.
const ENDS_SCALAR: [bool; 256] = {
    let mut t = [false; 256];
    t[b',' as usize] = true;
    t[b'}' as usize] = true;
    t[b']' as usize] = true;
    t[b' ' as usize] = true;
    t[b'\t' as usize] = true;
    t[b'\n' as usize] = true;
    t[b'\r' as usize] = true;
    t
};

pub(super) const ONES: u64 = 0x0101_0101_0101_0101;
pub(super) const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` equal to `b`, exact up to the lowest such byte
/// (bytes above it may be flagged falsely): enough to find the first one.
#[inline]
pub(super) fn bytes_equal(x: u64, b: u8) -> u64 {
    let y = x ^ (ONES * u64::from(b));
    y.wrapping_sub(ONES) & !y & HIGHS
}

/// The first `"` or `\\` at or after `from`: eight bytes at a time over the first 64
/// (keys and values of log lines are mostly short, and for those this beats setting up
/// a vector search), then a vector search.
#[inline]
pub(super) fn quote_or_backslash(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(chunk) = b.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        let m = bytes_equal(word, b'"') | bytes_equal(word, b'\\');
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
        if i - from >= 64 {
            return memchr::memchr2(b'"', b'\\', b.get(i..)?).map(|at| i + at);
        }
    }
    b.get(i..)?
        .iter()
        .position(|&c| c == b'"' || c == b'\\')
        .map(|at| i + at)
}

struct Scanner<'l> {
    s: &'l str,
    b: &'l [u8],
    pos: usize,
}

enum Value<'l> {
    Str(&'l str, bool),
    Raw(&'l str),
    Null,
    Skipped,
}

impl<'l> Scanner<'l> {
    fn new(line: &'l str) -> Self {
        Scanner {
            s: line,
            b: line.as_bytes(),
            pos: 0,
        }
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(&c) = self.b.get(self.pos) {
            if c == b' ' || c == b'\t' || c == b'\n' || c == b'\r' {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    /// The text between two byte offsets that sit on ASCII bytes (quotes, delimiters),
    /// hence on character boundaries.
    #[inline]
    fn text(&self, from: usize, to: usize) -> &'l str {
        self.s.get(from..to).unwrap_or_default()
    }

    /// Reads a string whose opening quote is at `pos`; returns the raw text between the
    /// quotes and whether it contains escapes.
    #[inline]
    fn string(&mut self) -> JsonResult<(&'l str, bool)> {
        let start = self.pos + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            let j = quote_or_backslash(self.b, i).ok_or(MALFORMED_STRING)?;
            if self.b.get(j) == Some(&b'"') {
                self.pos = j + 1;
                return Ok((self.text(start, j), escaped));
            }
            escaped = true;
            i = j + 2;
        }
    }

    #[inline]
    fn scalar_end(&mut self) -> JsonResult<&'l str> {
        let start = self.pos;
        while let Some(&c) = self.b.get(self.pos) {
            if ENDS_SCALAR[usize::from(c)] {
                return Ok(self.text(start, self.pos));
            }
            self.pos += 1;
        }
        Err(MALFORMED_VALUE)
    }

    /// Skips any value starting at `pos`, returning its raw span.
    fn skip_value(&mut self, depth: usize) -> JsonResult<&'l str> {
        if depth > MAX_DEPTH {
            return Err(MALFORMED_OBJECT);
        }
        let start = self.pos;
        match self.peek() {
            Some(b'"') => {
                self.string()?;
            }
            Some(b'{') => {
                self.pos += 1;
                self.skip_ws();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                } else {
                    loop {
                        self.skip_ws();
                        if self.peek() != Some(b'"') {
                            return Err(MALFORMED_OBJECT);
                        }
                        self.string()?;
                        self.skip_ws();
                        if self.peek() != Some(b':') {
                            return Err(MALFORMED_OBJECT);
                        }
                        self.pos += 1;
                        self.skip_ws();
                        self.skip_value(depth + 1)?;
                        self.skip_ws();
                        match self.peek() {
                            Some(b',') => self.pos += 1,
                            Some(b'}') => {
                                self.pos += 1;
                                break;
                            }
                            _ => return Err(MALFORMED_OBJECT),
                        }
                    }
                }
            }
            Some(b'[') => {
                self.pos += 1;
                self.skip_ws();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                } else {
                    loop {
                        self.skip_ws();
                        self.skip_value(depth + 1).map_err(|e| {
                            if e == MALFORMED_VALUE {
                                MALFORMED_ARRAY
                            } else {
                                e
                            }
                        })?;
                        self.skip_ws();
                        match self.peek() {
                            Some(b',') => self.pos += 1,
                            Some(b']') => {
                                self.pos += 1;
                                break;
                            }
                            _ => return Err(MALFORMED_ARRAY),
                        }
                    }
                }
            }
            Some(b't' | b'f' | b'n' | b'-' | b'0'..=b'9') => {
                self.scalar_end()?;
            }
            _ => return Err(UNKNOWN_VALUE),
        }
        Ok(self.text(start, self.pos))
    }

    #[inline]
    fn value(&mut self) -> JsonResult<Value<'l>> {
        match self.peek() {
            Some(b'"') => {
                let (raw, escaped) = self.string()?;
                Ok(Value::Str(raw, escaped))
            }
            Some(b'[') => {
                self.skip_value(1)?;
                Ok(Value::Skipped)
            }
            Some(b't' | b'f' | b'n' | b'-' | b'0'..=b'9') => {
                let raw = self.scalar_end()?;
                match raw {
                    "null" => Ok(Value::Null),
                    "true" | "false" => Ok(Value::Raw(raw)),
                    _ if raw
                        .as_bytes()
                        .first()
                        .is_some_and(|c| *c == b'-' || c.is_ascii_digit()) =>
                    {
                        Ok(Value::Raw(raw))
                    }
                    _ => Err(UNKNOWN_VALUE),
                }
            }
            _ => Err(UNKNOWN_VALUE),
        }
    }
}

/// Decodes the escapes of the text between a JSON string's quotes into `out`, or only
/// checks them when `out` is `None` (same errors either way). Lone or unpaired UTF-16
/// surrogates become a space, as Loki's library writes them.
fn decode_escapes(raw: &str, mut out: Option<&mut String>) -> JsonResult<()> {
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let Some(at) = memchr::memchr(b'\\', b.get(i..).unwrap_or_default()) else {
            if let Some(out) = out.as_deref_mut() {
                out.push_str(raw.get(i..).unwrap_or_default());
            }
            return Ok(());
        };
        let j = i + at;
        if let Some(out) = out.as_deref_mut() {
            out.push_str(raw.get(i..j).unwrap_or_default());
        }
        let esc = *b.get(j + 1).ok_or(MALFORMED_ESCAPE)?;
        i = j + 2;
        let ch = match esc {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hex = |at: usize| -> JsonResult<u32> {
                    let digits = raw.get(at..at + 4).ok_or(MALFORMED_ESCAPE)?;
                    u32::from_str_radix(digits, 16).map_err(|_| MALFORMED_ESCAPE)
                };
                let hi = hex(i)?;
                i += 4;
                if (0xD800..0xDC00).contains(&hi)
                    && b.get(i) == Some(&b'\\')
                    && b.get(i + 1) == Some(&b'u')
                {
                    let lo = hex(i + 2)?;
                    if (0xDC00..0xE000).contains(&lo) {
                        i += 6;
                        char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                            .unwrap_or(' ')
                    } else {
                        ' '
                    }
                } else {
                    char::from_u32(hi).unwrap_or(' ')
                }
            }
            _ => return Err(MALFORMED_ESCAPE),
        };
        if let Some(out) = out.as_deref_mut() {
            out.push(ch);
        }
    }
    Ok(())
}

/// Decodes the text between a JSON string's quotes, borrowing when nothing is escaped
/// (most keys and values: no allocation per field).
#[inline]
fn unescape(raw: &str, escaped: bool) -> JsonResult<Cow<'_, str>> {
    if !escaped {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = String::with_capacity(raw.len());
    decode_escapes(raw, Some(&mut out))?;
    Ok(Cow::Owned(out))
}

/// Which labels a `json`/`logfmt` parser needs to produce: all, or only those a metric
/// query reads (Loki's parser hints).
#[derive(Clone, Debug, Default)]
pub enum Wanted {
    #[default]
    All,
    Only(Vec<String>),
}

impl Wanted {
    #[inline]
    pub(crate) fn wants(&self, name: &str) -> bool {
        match self {
            Wanted::All => true,
            Wanted::Only(names) => names.iter().any(|n| {
                n == name
                    || n.strip_suffix("_extracted")
                        .is_some_and(|base| base == name)
            }),
        }
    }

    /// Whether no later parsed label can change what `lb` answers for any of these
    /// names: each is already a parsed label (first wins) or a stream or metadata label
    /// (a parser's label of that name would be renamed `_extracted`). Never for `All`.
    pub(crate) fn settled(&self, lb: &LabelsBuilder<'_>) -> bool {
        match self {
            Wanted::All => false,
            Wanted::Only(names) => names
                .iter()
                .all(|n| lb.has_parsed(n) || lb.is_stream_or_metadata(n)),
        }
    }

    /// The `name_bit`s of every name [`Self::wants`] may say yes to: a name whose bit is
    /// not set is not wanted, without comparing strings.
    pub(crate) fn bits(&self) -> u64 {
        match self {
            Wanted::All => u64::MAX,
            Wanted::Only(names) => names.iter().fold(0, |m, n| {
                let base = n.strip_suffix(EXTRACTED_SUFFIX).map_or(0, name_bit);
                m | name_bit(n) | base
            }),
        }
    }

    fn wants_prefix(&self, prefix: &str) -> bool {
        match self {
            Wanted::All => true,
            Wanted::Only(names) => names.iter().any(|n| n.starts_with(prefix)),
        }
    }
}

/// The labels a parser under parser hints must extract before it may stop reading a
/// line: Loki's "all required labels extracted". Loki's parsers end a line there, without
/// looking at the rest, so a syntax error after that point is no error; this is the same
/// point. A name is extracted once a parser (or `label_format`) has set it as a parsed
/// label under that exact name: a required stream-label name (`by (app)`) never is, nor
/// `__error__`, and such queries read every line to its end, as Loki does.
#[derive(Clone, Debug, Default)]
pub(crate) struct Required {
    // The wanted names, plus `x` for each wanted `x_extracted` (Loki adds both, since
    // a parser cannot know before it reads a key whether it will collide). Empty when
    // the parser never stops early: every label wanted, or more names than `Progress`
    // has bits for.
    names: Vec<String>,
}

/// Which [`Required`] names one parse of one line has extracted, one bit each.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Progress {
    seen: u64,
    full: u64,
}

impl Progress {
    /// Whether the parse may stop early at all (not when every label is wanted).
    #[inline]
    pub(crate) fn done_possible(&self) -> bool {
        self.full != 0
    }

    /// Whether every required name is extracted (never when the parser reads to the end).
    #[inline]
    pub(crate) fn done(&self) -> bool {
        self.full != 0 && self.seen == self.full
    }
}

impl Required {
    /// The names a parser producing `wanted` must extract before it stops.
    pub(crate) fn of(wanted: &Wanted) -> Self {
        let Wanted::Only(wanted) = wanted else {
            return Required::default();
        };
        let mut names: Vec<String> = Vec::new();
        for n in wanted {
            let base = n.strip_suffix(EXTRACTED_SUFFIX);
            for name in std::iter::once(n.as_str()).chain(base) {
                if !names.iter().any(|m| m == name) {
                    names.push(name.to_owned());
                }
            }
        }
        if names.len() > 64 {
            names.clear();
        }
        Required { names }
    }

    /// The progress of a parse starting on `lb`: names earlier stages already set count.
    #[inline]
    pub(crate) fn begin(&self, lb: &LabelsBuilder<'_>) -> Progress {
        if self.names.is_empty() {
            return Progress { seen: 0, full: 0 };
        }
        let full = u64::MAX >> (64 - self.names.len());
        let mut seen = 0;
        for (i, n) in self.names.iter().enumerate() {
            if lb.has_parsed(n) {
                seen |= 1 << i;
            }
        }
        Progress { seen, full }
    }

    /// Records that the parser extracts the key `name` (whether or not this parse stores
    /// it): it becomes the parsed label `name`, or `name_extracted` when a stream or
    /// metadata label has that name. Returns whether every required name is extracted.
    #[inline]
    pub(crate) fn note(&self, p: &mut Progress, name: &str, lb: &LabelsBuilder<'_>) -> bool {
        if p.full == 0 {
            return false;
        }
        let collides = lb.is_stream_or_metadata(name);
        for (i, r) in self.names.iter().enumerate() {
            let hit = if collides {
                r.strip_suffix(EXTRACTED_SUFFIX) == Some(name)
            } else {
                r == name
            };
            if hit {
                p.seen |= 1 << i;
            }
        }
        p.done()
    }
}

const EXTRACTED_SUFFIX: &str = "_extracted";

/// Not an error: the parse ends here because every label it must produce is known
/// (all required labels extracted, or a probe's stored labels settled).
const SETTLED: &str = "settled";

/// Where one parse puts its labels.
struct Walk<'w, 'b, 'a> {
    store: &'w Wanted,
    stop: bool,
    required: &'w Required,
    progress: Progress,
    lb: &'b mut LabelsBuilder<'a>,
}

impl Walk<'_, '_, '_> {
    #[inline]
    fn add(&mut self, name: &str, value: &str) -> JsonResult<()> {
        self.lb.add_extracted(name, value);
        if self.progress.done_possible() && self.required.note(&mut self.progress, name, self.lb)
            || self.stop && self.store.settled(self.lb)
        {
            return Err(SETTLED);
        }
        Ok(())
    }

    /// A value the full parse stores as `name` but this parse does not.
    #[inline]
    fn pass(&mut self, name: &str) -> JsonResult<()> {
        if self.required.note(&mut self.progress, name, self.lb) {
            return Err(SETTLED);
        }
        Ok(())
    }
}

/// `| json` without parameters: every scalar field, flattened.
#[derive(Clone, Debug)]
pub struct JsonParser {
    pub(crate) wanted: Wanted,
    wanted_bits: u64,
    required: Required,
}

impl Default for JsonParser {
    fn default() -> Self {
        JsonParser::new()
    }
}

impl JsonParser {
    /// A parser producing every label.
    pub fn new() -> Self {
        JsonParser::with_wanted(&Wanted::All)
    }

    /// A parser producing only the `wanted` labels (Loki's parser hints), which ends a
    /// line as soon as it has extracted all of them.
    pub(crate) fn with_wanted(wanted: &Wanted) -> Self {
        JsonParser {
            wanted: wanted.clone(),
            wanted_bits: wanted.bits(),
            required: Required::of(wanted),
        }
    }

    /// The same parser reading every line to its end: the reference its early stop is
    /// tested against.
    #[cfg(test)]
    pub(crate) fn without_early_stop(mut self) -> Self {
        self.required = Required::default();
        self
    }

    /// Parses `line` into `lb`, setting `JSONParserErr` on malformed input.
    pub fn process(&self, line: &str, lb: &mut LabelsBuilder<'_>) {
        // `field` already asks `self.wanted`; a store that takes all adds no second check.
        self.run(line, &Wanted::All, false, lb);
    }

    /// Like [`Self::process`], and failing on exactly the same lines with the same error,
    /// but storing only the labels `store` wants: the labels of that set come out as
    /// `process` would produce them (values, `_extracted` renames, first-wins order).
    /// With `stop_when_settled` the parse ends, without error, as soon as every name of
    /// `store` is settled (see [`Wanted::settled`]): for callers that only read those
    /// labels and not the error.
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
        let progress = self.required.begin(lb);
        if progress.done() {
            // Earlier stages set every required label: Loki skips the parser.
            return;
        }
        let mut sc = Scanner::new(line);
        sc.skip_ws();
        let mut prefix = lb.take_scratch();
        let mut walk = Walk {
            store,
            stop,
            required: &self.required,
            progress,
            lb,
        };
        let result = if sc.peek() == Some(b'{') {
            self.object(&mut sc, &mut prefix, &mut walk, 0)
        } else {
            Err(MALFORMED_OBJECT)
        };
        lb.put_scratch(prefix);
        match result {
            Ok(()) => {}
            Err(details) if details == SETTLED => {}
            Err(details) => lb.set_error(JSON_PARSER_ERR, details),
        }
    }

    /// Reads the non-object value at `sc`, storing it as `name` when it has one that is
    /// wanted.
    #[inline]
    fn field(
        &self,
        sc: &mut Scanner<'_>,
        name: Option<&str>,
        walk: &mut Walk<'_, '_, '_>,
    ) -> JsonResult<()> {
        let name = name.filter(|n| {
            self.wanted_bits == u64::MAX
                || self.wanted_bits & name_bit(n) != 0 && self.wanted.wants(n)
        });
        match sc.value()? {
            Value::Str(raw, escaped) => {
                if let Some(name) = name {
                    if walk.store.wants(name) {
                        if escaped {
                            walk.add(name, &unescape(raw, true)?)?;
                        } else {
                            walk.add(name, raw)?;
                        }
                    } else {
                        if escaped {
                            decode_escapes(raw, None)?;
                        }
                        walk.pass(name)?;
                    }
                }
            }
            Value::Raw(raw) => {
                if let Some(name) = name {
                    if walk.store.wants(name) {
                        walk.add(name, raw)?;
                    } else {
                        walk.pass(name)?;
                    }
                }
            }
            Value::Null | Value::Skipped => {}
        }
        Ok(())
    }

    /// Reads the object at `sc`. Which nested objects are walked and which values have
    /// their escapes checked follows `self.wanted` (that decides which lines are
    /// malformed); only names `store` wants are added to `lb`.
    fn object(
        &self,
        sc: &mut Scanner<'_>,
        prefix: &mut String,
        walk: &mut Walk<'_, '_, '_>,
        depth: usize,
    ) -> JsonResult<()> {
        if depth > MAX_DEPTH {
            return Err(MALFORMED_OBJECT);
        }
        sc.pos += 1;
        sc.skip_ws();
        if sc.peek() == Some(b'}') {
            sc.pos += 1;
            return Ok(());
        }
        let prefix_len = prefix.len();
        loop {
            sc.skip_ws();
            if sc.peek() != Some(b'"') {
                return Err(MALFORMED_OBJECT);
            }
            let (raw_key, key_escaped) = sc.string()?;
            sc.skip_ws();
            if sc.peek() != Some(b':') {
                return Err(MALFORMED_OBJECT);
            }
            sc.pos += 1;
            sc.skip_ws();
            let key = if key_escaped {
                unescape(raw_key, true)?
            } else {
                Cow::Borrowed(raw_key)
            };
            if prefix_len == 0 && sc.peek() != Some(b'{') && is_clean_label_name(&key) {
                // The common case, a top-level field with a clean key: its name is the key.
                self.field(sc, Some(&key), walk)?;
            } else {
                let segment = if is_clean_label_name(&key) {
                    key
                } else {
                    Cow::Owned(sanitize_label_name(&key))
                };
                if !segment.is_empty() {
                    if !prefix.is_empty() {
                        prefix.push('_');
                    }
                    prefix.push_str(&segment);
                }
                let named = !prefix.is_empty() && (prefix_len > 0 || !segment.is_empty());
                if sc.peek() == Some(b'{') {
                    if named && self.wanted.wants_prefix(prefix) {
                        self.object(sc, prefix, walk, depth + 1)?;
                    } else {
                        sc.skip_value(depth + 1)?;
                    }
                } else {
                    self.field(sc, named.then_some(prefix.as_str()), walk)?;
                }
                prefix.truncate(prefix_len);
            }
            sc.skip_ws();
            match sc.peek() {
                Some(b',') => sc.pos += 1,
                Some(b'}') => {
                    sc.pos += 1;
                    return Ok(());
                }
                _ => return Err(MALFORMED_OBJECT),
            }
        }
    }
}

/// One step of a `json` extraction path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathSegment {
    Field(String),
    Index(usize),
}

/// A `json` extraction expression that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid json expression {expression:?} for label {label:?}: {reason}")]
pub struct JsonExpressionError {
    pub label: String,
    pub expression: String,
    pub reason: String,
}

/// Parses `a.b[0]["x-y"]` into path segments.
pub fn parse_json_path(label: &str, expr: &str) -> Result<Vec<PathSegment>, JsonExpressionError> {
    let bad = |reason: &str| JsonExpressionError {
        label: label.to_owned(),
        expression: expr.to_owned(),
        reason: reason.to_owned(),
    };
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut expect_field = true;
    while i < b.len() {
        match b[i] {
            b'.' if !expect_field => {
                i += 1;
                expect_field = true;
            }
            b'[' => {
                i += 1;
                if b.get(i) == Some(&b'"') {
                    let close = expr[i + 1..]
                        .find('"')
                        .ok_or_else(|| bad("unterminated quoted key"))?;
                    out.push(PathSegment::Field(expr[i + 1..i + 1 + close].to_owned()));
                    i += close + 2;
                } else {
                    let close = expr[i..].find(']').ok_or_else(|| bad("missing ']'"))?;
                    let idx = expr[i..i + close]
                        .trim()
                        .parse()
                        .map_err(|_| bad("array index must be a non-negative integer"))?;
                    out.push(PathSegment::Index(idx));
                    i += close;
                }
                if b.get(i) != Some(&b']') {
                    return Err(bad("missing ']'"));
                }
                i += 1;
                expect_field = false;
            }
            c if expect_field && (c.is_ascii_alphabetic() || c == b'_') => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push(PathSegment::Field(expr[start..i].to_owned()));
                expect_field = false;
            }
            _ => {
                return Err(bad(
                    "fields must match [A-Za-z_][A-Za-z0-9_]*; use [\"...\"] otherwise",
                ))
            }
        }
    }
    if out.is_empty() || expect_field && !b.is_empty() && b.last() == Some(&b'.') {
        return Err(bad("empty path"));
    }
    Ok(out)
}

/// `| json a="path", b`: only the listed labels.
#[derive(Clone, Debug)]
pub struct JsonExtractor {
    params: Vec<(String, Vec<PathSegment>)>,
}

impl JsonExtractor {
    /// Builds the extractor from `(label, expression)` pairs.
    pub fn new(params: &[(String, String)]) -> Result<Self, JsonExpressionError> {
        let params = params
            .iter()
            .map(|(label, expr)| Ok((label.clone(), parse_json_path(label, expr)?)))
            .collect::<Result<_, JsonExpressionError>>()?;
        Ok(JsonExtractor { params })
    }

    /// The label names this extractor produces.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|(l, _)| l.as_str())
    }

    /// Extracts the listed paths from `line` into `lb`.
    pub fn process(&self, line: &str, lb: &mut LabelsBuilder<'_>) {
        let first = line.trim_start().as_bytes().first().copied();
        if !matches!(first, Some(b'{' | b'[' | b'"')) {
            lb.set_error(JSON_PARSER_ERR, MALFORMED_OBJECT);
            return;
        }
        for (label, path) in &self.params {
            let value = match find_path(line, path) {
                Ok(Some(v)) => v,
                Ok(None) => String::new(),
                Err(details) => {
                    lb.set_error(JSON_PARSER_ERR, details);
                    return;
                }
            };
            lb.add_extracted(label, &value);
        }
    }
}

fn find_path(line: &str, path: &[PathSegment]) -> JsonResult<Option<String>> {
    let mut sc = Scanner::new(line);
    sc.skip_ws();
    for seg in path {
        match (seg, sc.peek()) {
            (PathSegment::Field(name), Some(b'{')) => {
                sc.pos += 1;
                let mut found = false;
                sc.skip_ws();
                if sc.peek() == Some(b'}') {
                    return Ok(None);
                }
                loop {
                    sc.skip_ws();
                    if sc.peek() != Some(b'"') {
                        return Err(MALFORMED_OBJECT);
                    }
                    let (raw, esc) = sc.string()?;
                    sc.skip_ws();
                    if sc.peek() != Some(b':') {
                        return Err(MALFORMED_OBJECT);
                    }
                    sc.pos += 1;
                    sc.skip_ws();
                    if unescape(raw, esc)? == *name {
                        found = true;
                        break;
                    }
                    sc.skip_value(1)?;
                    sc.skip_ws();
                    match sc.peek() {
                        Some(b',') => sc.pos += 1,
                        Some(b'}') => break,
                        _ => return Err(MALFORMED_OBJECT),
                    }
                }
                if !found {
                    return Ok(None);
                }
            }
            (PathSegment::Index(idx), Some(b'[')) => {
                sc.pos += 1;
                sc.skip_ws();
                if sc.peek() == Some(b']') {
                    return Ok(None);
                }
                let mut n = 0;
                loop {
                    sc.skip_ws();
                    if n == *idx {
                        break;
                    }
                    sc.skip_value(1)?;
                    sc.skip_ws();
                    match sc.peek() {
                        Some(b',') => sc.pos += 1,
                        Some(b']') => return Ok(None),
                        _ => return Err(MALFORMED_ARRAY),
                    }
                    n += 1;
                }
            }
            _ => return Ok(None),
        }
    }
    let raw = sc.skip_value(1)?;
    Ok(Some(match raw.as_bytes().first() {
        Some(b'"') => {
            let inner = raw.get(1..raw.len().saturating_sub(1)).unwrap_or_default();
            unescape(inner, inner.contains('\\'))?.into_owned()
        }
        _ if raw == "null" => String::new(),
        _ => raw.to_owned(),
    }))
}

/// `| unpack`: for Promtail's `pack` output.
#[derive(Clone, Debug, Default)]
pub struct Unpacker;

impl Unpacker {
    /// Adds the top-level string fields as labels and returns the `_entry` value as the
    /// new line; returns `None` (line unchanged) when there is no `_entry`.
    pub fn process(&self, line: &str, lb: &mut LabelsBuilder<'_>) -> Option<String> {
        let mut sc = Scanner::new(line);
        sc.skip_ws();
        if sc.peek() != Some(b'{') {
            lb.set_error(JSON_PARSER_ERR, NOT_AN_OBJECT);
            return None;
        }
        match unpack_fields(&mut sc) {
            Ok((fields, Some(entry))) => {
                for (k, v) in fields {
                    let name = sanitize_label_name(&k);
                    if !name.is_empty() {
                        lb.add_extracted(&name, &v);
                    }
                }
                Some(entry)
            }
            Ok((_, None)) => None,
            Err(details) => {
                lb.set_error(JSON_PARSER_ERR, details);
                None
            }
        }
    }
}

type Fields = Vec<(String, String)>;

fn unpack_fields(sc: &mut Scanner<'_>) -> JsonResult<(Fields, Option<String>)> {
    let mut fields = Vec::new();
    let mut entry = None;
    sc.pos += 1;
    sc.skip_ws();
    if sc.peek() == Some(b'}') {
        return Ok((fields, entry));
    }
    loop {
        sc.skip_ws();
        if sc.peek() != Some(b'"') {
            return Err(MALFORMED_OBJECT);
        }
        let (raw, esc) = sc.string()?;
        let key = unescape(raw, esc)?.into_owned();
        sc.skip_ws();
        if sc.peek() != Some(b':') {
            return Err(MALFORMED_OBJECT);
        }
        sc.pos += 1;
        sc.skip_ws();
        if sc.peek() == Some(b'"') {
            let (raw, esc) = sc.string()?;
            let value = unescape(raw, esc)?.into_owned();
            if key == "_entry" {
                entry = Some(value);
            } else {
                fields.push((key, value));
            }
        } else {
            sc.skip_value(1)?;
        }
        sc.skip_ws();
        match sc.peek() {
            Some(b',') => sc.pos += 1,
            Some(b'}') => return Ok((fields, entry)),
            _ => return Err(MALFORMED_OBJECT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::labels::{ERROR_DETAILS_LABEL, ERROR_LABEL};
    use lode_push::LabelSet;

    fn labels_of(stream: &LabelSet, line: &str) -> Vec<(String, String)> {
        let mut lb = LabelsBuilder::new(stream);
        JsonParser::new().process(line, &mut lb);
        lb.labels()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn nested_objects_flatten_arrays_skip_and_conflicts_get_suffix() {
        let s = LabelSet::from_pairs([("app", "x"), ("cluster", "c1")]).unwrap();
        let got = labels_of(
            &s,
            r#"{"level":"error","cluster":"c2","req":{"id":7,"tags":["a"]}}"#,
        );
        assert_eq!(
            got,
            pairs(&[
                ("app", "x"),
                ("cluster", "c1"),
                ("cluster_extracted", "c2"),
                ("level", "error"),
                ("req_id", "7"),
            ])
        );
    }

    #[test]
    fn keys_are_sanitised_numbers_kept_raw_and_null_skipped() {
        let s = LabelSet::from_pairs([("app", "x")]).unwrap();
        let got = labels_of(
            &s,
            r#"{"a.b":{"c":"d"},"e":"f\n\u00e9","n":1.50,"ok":true,"z":null,"1x":"y"}"#,
        );
        assert_eq!(
            got,
            pairs(&[
                ("_1x", "y"),
                ("a_b_c", "d"),
                ("app", "x"),
                ("e", "f\né"),
                ("n", "1.50"),
                ("ok", "true"),
            ])
        );
    }

    #[test]
    fn truncated_line_keeps_earlier_labels_and_reports_the_json_error() {
        let s = LabelSet::from_pairs([("app", "x")]).unwrap();
        let got = labels_of(&s, r#"{"level":"info","msg":"truncated json"#);
        assert!(got.contains(&("level".to_owned(), "info".to_owned())));
        assert!(got.contains(&(ERROR_LABEL.to_owned(), JSON_PARSER_ERR.to_owned())));
        assert!(got.contains(&(ERROR_DETAILS_LABEL.to_owned(), MALFORMED_STRING.to_owned())));
        let got = labels_of(&s, "plain text");
        assert!(got.contains(&(ERROR_LABEL.to_owned(), JSON_PARSER_ERR.to_owned())));
    }

    #[test]
    fn duplicate_keys_keep_the_first_value() {
        let s = LabelSet::from_pairs([("app", "x")]).unwrap();
        let got = labels_of(&s, r#"{"a":"1","a":"2"}"#);
        assert_eq!(got, pairs(&[("a", "1"), ("app", "x")]));
    }

    #[test]
    fn extraction_params_follow_paths_and_store_raw_json_for_objects() {
        let s = LabelSet::from_pairs([("app", "x")]).unwrap();
        let ex = JsonExtractor::new(&[
            ("m".to_owned(), "http.method".to_owned()),
            ("t".to_owned(), "tags[1]".to_owned()),
            ("h".to_owned(), "http".to_owned()),
            ("k".to_owned(), r#"odd["x-y"]"#.to_owned()),
            ("missing".to_owned(), "nope.nope".to_owned()),
        ])
        .unwrap();
        let mut lb = LabelsBuilder::new(&s);
        ex.process(
            r#"{"http":{"method":"PUT","path":"/a"},"tags":["a","b"],"odd":{"x-y":3}}"#,
            &mut lb,
        );
        assert_eq!(lb.get("m"), Some("PUT"));
        assert_eq!(lb.get("t"), Some("b"));
        assert_eq!(lb.get("h"), Some(r#"{"method":"PUT","path":"/a"}"#));
        assert_eq!(lb.get("k"), Some("3"));
        assert_eq!(lb.get("missing"), Some(""));
        assert!(parse_json_path("x", "a-b").is_err());
    }

    #[test]
    fn unpack_replaces_line_only_when_entry_is_present() {
        let s = LabelSet::from_pairs([("app", "x")]).unwrap();
        let mut lb = LabelsBuilder::new(&s);
        let line = Unpacker.process(r#"{"_entry":"hello","pod":"p1","n":3}"#, &mut lb);
        assert_eq!(line.as_deref(), Some("hello"));
        assert_eq!(lb.get("pod"), Some("p1"));
        assert_eq!(lb.get("n"), None);
        let mut lb = LabelsBuilder::new(&s);
        assert_eq!(Unpacker.process(r#"{"pod":"p1"}"#, &mut lb), None);
        assert_eq!(lb.get("pod"), None);
        let mut lb = LabelsBuilder::new(&s);
        Unpacker.process("[x] not json", &mut lb);
        assert_eq!(lb.get(ERROR_DETAILS_LABEL), Some(NOT_AN_OBJECT));
    }
}
