//! The LogQL lexer: query text to a token list, with Loki's context-free rules.
//!
//! Owns what a token is: strings with Go's exact escape rules and raw backtick strings,
//! `#` (and Go-style `//`, `/* */`) comments, case-insensitive keywords split into
//! always-reserved words and function-like words that are keywords only before `(` (or
//! `by (` / `without (`), the NUMBER / DURATION / BYTES classification by the characters
//! that immediately follow a number (`5m` is minutes, `5M` megabytes), negative
//! durations (`-5m`), `--strict` / `--keep-empty` flags, and `[range]` literals.
//! It does not own grammar: that is `parser`'s job.
//!
//! The character-level recognisers are `nom` combinators; the driving loop is ours
//! because classification needs lookahead over the raw text.

use nom::branch::alt;
use nom::bytes::complete::{tag, take_until, take_while, take_while1};
use nom::character::complete::{char, digit1, one_of, satisfy};
use nom::combinator::{opt, recognize};
use nom::sequence::{pair, preceded};
use nom::{IResult, Parser};

use super::ast::{RangeOp, VectorOp};
use super::units::{parse_bytes, parse_go_duration, parse_prometheus_duration};

/// Longest query accepted, in bytes (Loki refuses 128 KiB and more).
pub const MAX_QUERY_BYTES: usize = 128 * 1024;

/// One token and where it sits in the input (byte offsets, end exclusive).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub kind: Tok,
    pub start: usize,
    pub end: usize,
}

/// Token kinds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Ident(String),
    Str(String),
    /// Raw number text; converted (and possibly rejected, e.g. `0x1F`) by the parser.
    Number(String),
    /// Nanoseconds.
    Duration(i64),
    Bytes(u64),
    /// `[5m]`, nanoseconds.
    Range(i64),
    Flag(Flag),
    Kw(Keyword),
    Sym(Sym),
}

/// `logfmt` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flag {
    Strict,
    KeepEmpty,
}

/// Keywords: the always-reserved ones and the function-like ones (already resolved by
/// lookahead when they appear here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keyword {
    By,
    Without,
    Bool,
    On,
    Ignoring,
    GroupLeft,
    GroupRight,
    Offset,
    Unwrap,
    Or,
    And,
    Unless,
    Json,
    Logfmt,
    Regexp,
    Pattern,
    Unpack,
    LineFormat,
    LabelFormat,
    Decolorize,
    Drop,
    Keep,
    Variants,
    Of,
    Range(RangeOp),
    Vector(VectorOp),
    LabelReplace,
    VectorFn,
    BytesConv,
    DurationConv,
    DurationSecondsConv,
    Ip,
}

impl Keyword {
    fn reserved(word: &str) -> Option<Keyword> {
        Some(match word {
            "by" => Keyword::By,
            "without" => Keyword::Without,
            "bool" => Keyword::Bool,
            "on" => Keyword::On,
            "ignoring" => Keyword::Ignoring,
            "group_left" => Keyword::GroupLeft,
            "group_right" => Keyword::GroupRight,
            "offset" => Keyword::Offset,
            "unwrap" => Keyword::Unwrap,
            "or" => Keyword::Or,
            "and" => Keyword::And,
            "unless" => Keyword::Unless,
            "json" => Keyword::Json,
            "logfmt" => Keyword::Logfmt,
            "regexp" => Keyword::Regexp,
            "pattern" => Keyword::Pattern,
            "unpack" => Keyword::Unpack,
            "line_format" => Keyword::LineFormat,
            "label_format" => Keyword::LabelFormat,
            "decolorize" => Keyword::Decolorize,
            "drop" => Keyword::Drop,
            "keep" => Keyword::Keep,
            "variants" => Keyword::Variants,
            "of" => Keyword::Of,
            _ => return None,
        })
    }

    fn function_like(word: &str) -> Option<Keyword> {
        if let Some(op) = RangeOp::ALL.iter().find(|op| op.as_str() == word) {
            return Some(Keyword::Range(*op));
        }
        if let Some(op) = VectorOp::ALL.iter().find(|op| op.as_str() == word) {
            return Some(Keyword::Vector(*op));
        }
        Some(match word {
            "label_replace" => Keyword::LabelReplace,
            "vector" => Keyword::VectorFn,
            "bytes" => Keyword::BytesConv,
            "duration" => Keyword::DurationConv,
            "duration_seconds" => Keyword::DurationSecondsConv,
            "ip" => Keyword::Ip,
            _ => return None,
        })
    }

    /// The keyword as written (lower case), for error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Keyword::By => "by",
            Keyword::Without => "without",
            Keyword::Bool => "bool",
            Keyword::On => "on",
            Keyword::Ignoring => "ignoring",
            Keyword::GroupLeft => "group_left",
            Keyword::GroupRight => "group_right",
            Keyword::Offset => "offset",
            Keyword::Unwrap => "unwrap",
            Keyword::Or => "or",
            Keyword::And => "and",
            Keyword::Unless => "unless",
            Keyword::Json => "json",
            Keyword::Logfmt => "logfmt",
            Keyword::Regexp => "regexp",
            Keyword::Pattern => "pattern",
            Keyword::Unpack => "unpack",
            Keyword::LineFormat => "line_format",
            Keyword::LabelFormat => "label_format",
            Keyword::Decolorize => "decolorize",
            Keyword::Drop => "drop",
            Keyword::Keep => "keep",
            Keyword::Variants => "variants",
            Keyword::Of => "of",
            Keyword::Range(op) => op.as_str(),
            Keyword::Vector(op) => op.as_str(),
            Keyword::LabelReplace => "label_replace",
            Keyword::VectorFn => "vector",
            Keyword::BytesConv => "bytes",
            Keyword::DurationConv => "duration",
            Keyword::DurationSecondsConv => "duration_seconds",
            Keyword::Ip => "ip",
        }
    }
}

/// Punctuation and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sym {
    LBrace,
    RBrace,
    LParen,
    RParen,
    Comma,
    /// `=`
    Eq,
    /// `!=`
    Neq,
    /// `=~`
    Re,
    /// `!~`
    Nre,
    /// `|=`
    PipeExact,
    /// `|~`
    PipeMatch,
    /// `|>`
    PipePattern,
    /// `!>`
    NotPattern,
    /// `|`
    Pipe,
    /// `==`
    EqEq,
    Gt,
    Gte,
    Lt,
    Lte,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
}

impl Sym {
    pub fn as_str(self) -> &'static str {
        match self {
            Sym::LBrace => "{",
            Sym::RBrace => "}",
            Sym::LParen => "(",
            Sym::RParen => ")",
            Sym::Comma => ",",
            Sym::Eq => "=",
            Sym::Neq => "!=",
            Sym::Re => "=~",
            Sym::Nre => "!~",
            Sym::PipeExact => "|=",
            Sym::PipeMatch => "|~",
            Sym::PipePattern => "|>",
            Sym::NotPattern => "!>",
            Sym::Pipe => "|",
            Sym::EqEq => "==",
            Sym::Gt => ">",
            Sym::Gte => ">=",
            Sym::Lt => "<",
            Sym::Lte => "<=",
            Sym::Add => "+",
            Sym::Sub => "-",
            Sym::Mul => "*",
            Sym::Div => "/",
            Sym::Mod => "%",
            Sym::Pow => "^",
        }
    }
}

impl Tok {
    /// How a token is named in "unexpected X" messages, as Loki names it.
    /// Whether Loki's lexer reads this token past its first character one character at a
    /// time (`Next` after `Scan`: ranges, numbers with a unit, negative durations, parser
    /// flags, two-character operators), which leaves its reported line at 0.
    pub fn loki_reads_past_start(&self) -> bool {
        match self {
            Tok::Range(_) | Tok::Duration(_) | Tok::Bytes(_) | Tok::Flag(_) => true,
            Tok::Sym(s) => s.as_str().len() == 2,
            Tok::Ident(_) | Tok::Str(_) | Tok::Number(_) | Tok::Kw(_) => false,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(_) => "IDENTIFIER".into(),
            Tok::Str(_) => "STRING".into(),
            Tok::Number(_) => "NUMBER".into(),
            Tok::Duration(_) => "DURATION".into(),
            Tok::Bytes(_) => "BYTES".into(),
            Tok::Range(_) => "RANGE".into(),
            Tok::Flag(_) => "PARSER_FLAG".into(),
            Tok::Kw(k) => k.as_str().into(),
            Tok::Sym(s) => s.as_str().into(),
        }
    }
}

/// A lexing failure: byte offset and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LexError {
    pub offset: usize,
    pub message: String,
}

fn lex_error(offset: usize, message: impl Into<String>) -> LexError {
    LexError {
        offset,
        message: message.into(),
    }
}

/// Splits `input` into tokens. Whitespace and comments are dropped.
pub(crate) fn tokenize(input: &str) -> Result<Vec<Token>, LexError> {
    let mut tokens = Vec::new();
    let mut pos = skip_trivia(input, 0)?;
    while pos < input.len() {
        let rest = &input[pos..];
        let (kind, len) = next_token(input, pos, rest)?;
        tokens.push(Token {
            kind,
            start: pos,
            end: pos + len,
        });
        pos = skip_trivia(input, pos + len)?;
    }
    Ok(tokens)
}

/// Skips whitespace and comments from `pos`; returns the new position.
fn skip_trivia(input: &str, mut pos: usize) -> Result<usize, LexError> {
    loop {
        let rest = &input[pos..];
        let trimmed = rest.trim_start_matches([' ', '\t', '\n', '\r']);
        pos += rest.len() - trimmed.len();
        if trimmed.starts_with('#') || trimmed.starts_with("//") {
            let line_len = trimmed.find('\n').unwrap_or(trimmed.len());
            pos += line_len;
        } else if let Some(body) = trimmed.strip_prefix("/*") {
            let Some(close) = body.find("*/") else {
                return Err(lex_error(pos, "comment not terminated"));
            };
            pos += 2 + close + 2;
        } else {
            return Ok(pos);
        }
    }
}

type Lexed = Result<(Tok, usize), LexError>;

fn next_token(input: &str, pos: usize, rest: &str) -> Lexed {
    let Some(first) = rest.chars().next() else {
        return Err(lex_error(pos, "unexpected end of input"));
    };
    match first {
        '"' => lex_quoted(pos, rest),
        '`' => lex_raw(pos, rest),
        '\'' => Err(lex_error(pos, "invalid char literal")),
        '[' => lex_range(pos, rest),
        '-' => lex_minus(pos, rest),
        c if c.is_ascii_digit() => lex_numeric(pos, rest),
        '.' if rest[1..].starts_with(|c: char| c.is_ascii_digit()) => lex_numeric(pos, rest),
        c if c == '_' || c.is_alphabetic() => Ok(lex_word(input, pos, rest)),
        _ => Ok(lex_symbol(rest).unwrap_or_else(|| {
            // Loki's scanner hands any other character on as a one-character
            // identifier, which the grammar then rejects with "unexpected IDENTIFIER".
            (Tok::Ident(first.to_string()), first.len_utf8())
        })),
    }
}

fn lex_symbol(rest: &str) -> Option<(Tok, usize)> {
    let two: IResult<&str, &str> = alt((
        tag("|="),
        tag("|~"),
        tag("|>"),
        tag("!="),
        tag("!~"),
        tag("!>"),
        tag("=~"),
        tag("=="),
        tag(">="),
        tag("<="),
    ))
    .parse(rest);
    if let Ok((_, op)) = two {
        let sym = match op {
            "|=" => Sym::PipeExact,
            "|~" => Sym::PipeMatch,
            "|>" => Sym::PipePattern,
            "!=" => Sym::Neq,
            "!~" => Sym::Nre,
            "!>" => Sym::NotPattern,
            "=~" => Sym::Re,
            "==" => Sym::EqEq,
            ">=" => Sym::Gte,
            _ => Sym::Lte,
        };
        return Some((Tok::Sym(sym), 2));
    }
    let one: IResult<&str, char> = one_of("{}(),=|><+-*/%^").parse(rest);
    let (_, c) = one.ok()?;
    let sym = match c {
        '{' => Sym::LBrace,
        '}' => Sym::RBrace,
        '(' => Sym::LParen,
        ')' => Sym::RParen,
        ',' => Sym::Comma,
        '=' => Sym::Eq,
        '|' => Sym::Pipe,
        '>' => Sym::Gt,
        '<' => Sym::Lt,
        '+' => Sym::Add,
        '-' => Sym::Sub,
        '*' => Sym::Mul,
        '/' => Sym::Div,
        '%' => Sym::Mod,
        _ => Sym::Pow,
    };
    Some((Tok::Sym(sym), 1))
}

fn is_ident_continue(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

fn identifier(s: &str) -> IResult<&str, &str> {
    recognize(pair(
        satisfy(|c| c == '_' || c.is_alphabetic()),
        take_while(is_ident_continue),
    ))
    .parse(s)
}

fn lex_word(input: &str, pos: usize, rest: &str) -> (Tok, usize) {
    let word = match identifier(rest) {
        Ok((_, word)) => word,
        Err(_) => &rest[..rest.chars().next().map_or(0, char::len_utf8)],
    };
    let lower = word.to_lowercase();
    if let Some(kw) = Keyword::reserved(&lower) {
        return (Tok::Kw(kw), word.len());
    }
    if let Some(kw) = Keyword::function_like(&lower) {
        if followed_by_call(input, pos + word.len()) {
            return (Tok::Kw(kw), word.len());
        }
    }
    (Tok::Ident(word.to_string()), word.len())
}

/// True when the text after a function-like word makes it a keyword: `(` next, or
/// `by (` / `without (`. Comments count as whitespace here, as in Loki's scanner.
fn followed_by_call(input: &str, pos: usize) -> bool {
    let Ok(pos) = skip_trivia(input, pos) else {
        return false;
    };
    let rest = &input[pos..];
    if rest.starts_with('(') {
        return true;
    }
    let Ok((after, word)) = identifier(rest) else {
        return false;
    };
    let lower = word.to_lowercase();
    if lower != "by" && lower != "without" {
        return false;
    }
    let after_pos = input.len() - after.len();
    skip_trivia(input, after_pos).is_ok_and(|p| input[p..].starts_with('('))
}

/// Go's number syntax, loosely: decimal with fraction and exponent, or a prefixed
/// hex/octal/binary literal (which later fails conversion, as in Loki).
fn go_number(s: &str) -> IResult<&str, &str> {
    let prefixed = recognize(pair(
        pair(char('0'), one_of("xXoObB")),
        take_while(|c: char| c.is_ascii_hexdigit() || c == '_'),
    ));
    let digits = |s| take_while1(|c: char| c.is_ascii_digit() || c == '_').parse(s);
    let exponent = recognize((one_of("eE"), opt(one_of("+-")), digit1));
    let decimal = recognize((
        alt((
            recognize(pair(digits, opt(pair(char('.'), opt(digits))))),
            recognize(pair(char('.'), digits)),
        )),
        opt(exponent),
    ));
    alt((prefixed, decimal)).parse(s)
}

const DURATION_CHARS: &str = "0123456789.nuµmshdwy";
const BYTES_CHARS: &str = "0123456789.BikKMGTP";

/// A number and the classification of what immediately follows it.
fn lex_numeric(pos: usize, rest: &str) -> Lexed {
    let (after, number) =
        go_number(rest).map_err(|_| lex_error(pos, "malformed number literal"))?;
    let number_len = number.len();
    let duration_run = after
        .char_indices()
        .find(|(_, c)| !DURATION_CHARS.contains(*c))
        .map_or(after.len(), |(i, _)| i);
    if duration_run > 0 {
        let text = &rest[..number_len + duration_run];
        if let Some(ns) = parse_prometheus_duration(text).or_else(|| parse_go_duration(text)) {
            return Ok((Tok::Duration(ns), text.len()));
        }
    }
    let bytes_run = after
        .char_indices()
        .find(|(_, c)| !BYTES_CHARS.contains(*c))
        .map_or(after.len(), |(i, _)| i);
    if bytes_run > 0 {
        let text = &rest[..number_len + bytes_run];
        if let Some(b) = parse_bytes(text) {
            return Ok((Tok::Bytes(b), text.len()));
        }
    }
    Ok((Tok::Number(number.to_string()), number_len))
}

/// `-` is a negative DURATION when a duration follows directly, a flag when `-strict` or
/// `-keep-empty` follows, and the SUB operator otherwise (`-1` is SUB NUMBER).
fn lex_minus(pos: usize, rest: &str) -> Lexed {
    let after = &rest[1..];
    for (flag, text) in [(Flag::Strict, "-strict"), (Flag::KeepEmpty, "-keep-empty")] {
        if let Some(tail) = after.strip_prefix(text) {
            if !tail.starts_with(is_ident_continue) {
                return Ok((Tok::Flag(flag), 1 + text.len()));
            }
        }
    }
    let starts_number = after.starts_with(|c: char| c.is_ascii_digit())
        || (after.starts_with('.') && after[1..].starts_with(|c: char| c.is_ascii_digit()));
    if starts_number {
        if let Ok((Tok::Duration(ns), len)) = lex_numeric(pos + 1, after) {
            let negated = ns
                .checked_neg()
                .ok_or_else(|| lex_error(pos, "duration out of range"))?;
            return Ok((Tok::Duration(negated), 1 + len));
        }
    }
    Ok((Tok::Sym(Sym::Sub), 1))
}

fn lex_range(pos: usize, rest: &str) -> Lexed {
    let body: IResult<&str, &str> = preceded(char('['), take_until("]")).parse(rest);
    let Ok((_, body)) = body else {
        return Err(lex_error(pos, "missing closing ']' in duration"));
    };
    let ns = parse_prometheus_duration(body)
        .ok_or_else(|| lex_error(pos, format!("not a valid duration string: {body:?}")))?;
    Ok((Tok::Range(ns), body.len() + 2))
}

fn lex_raw(pos: usize, rest: &str) -> Lexed {
    let body: IResult<&str, &str> = preceded(char('`'), take_until("`")).parse(rest);
    let Ok((_, body)) = body else {
        return Err(lex_error(pos, "literal not terminated"));
    };
    Ok((Tok::Str(body.to_string()), body.len() + 2))
}

/// A Go interpreted string literal: exactly Go's escapes, no raw newlines, and the
/// unescaped bytes must be UTF-8.
fn lex_quoted(pos: usize, rest: &str) -> Lexed {
    let mut out: Vec<u8> = Vec::new();
    let mut chars = rest.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                let value =
                    String::from_utf8(out).map_err(|_| lex_error(pos, "invalid UTF-8 encoding"))?;
                return Ok((Tok::Str(value), i + 1));
            }
            '\n' => return Err(lex_error(pos, "literal not terminated")),
            '\\' => {
                let Some((j, e)) = chars.next() else {
                    return Err(lex_error(pos, "literal not terminated"));
                };
                let at = pos + j;
                match e {
                    'a' => out.push(0x07),
                    'b' => out.push(0x08),
                    'f' => out.push(0x0c),
                    'n' => out.push(b'\n'),
                    'r' => out.push(b'\r'),
                    't' => out.push(b'\t'),
                    'v' => out.push(0x0b),
                    '\\' => out.push(b'\\'),
                    '"' => out.push(b'"'),
                    '0'..='7' => {
                        let mut value = e.to_digit(8).unwrap_or(0);
                        for _ in 0..2 {
                            let digit = chars
                                .next()
                                .and_then(|(_, d)| d.to_digit(8))
                                .ok_or_else(|| lex_error(at, "invalid char escape"))?;
                            value = value * 8 + digit;
                        }
                        let byte = u8::try_from(value)
                            .map_err(|_| lex_error(at, "octal escape value > 255"))?;
                        out.push(byte);
                    }
                    'x' | 'u' | 'U' => {
                        let width = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let mut value: u32 = 0;
                        for _ in 0..width {
                            let digit = chars
                                .next()
                                .and_then(|(_, d)| d.to_digit(16))
                                .ok_or_else(|| lex_error(at, "invalid char escape"))?;
                            value = value * 16 + digit;
                        }
                        if e == 'x' {
                            out.push(u8::try_from(value).unwrap_or(u8::MAX));
                        } else {
                            let ch = char::from_u32(value).ok_or_else(|| {
                                lex_error(at, "escape sequence is invalid Unicode code point")
                            })?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                    _ => return Err(lex_error(at, "invalid char escape")),
                }
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    Err(lex_error(pos, "literal not terminated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(input: &str) -> Vec<Tok> {
        tokenize(input)
            .unwrap()
            .into_iter()
            .map(|t| t.kind)
            .collect()
    }

    #[test]
    fn five_m_is_minutes_and_five_capital_m_is_megabytes() {
        assert_eq!(kinds("5m"), vec![Tok::Duration(300_000_000_000)]);
        assert_eq!(kinds("5M"), vec![Tok::Bytes(5_000_000)]);
        assert_eq!(kinds("2.5KiB"), vec![Tok::Bytes(2560)]);
        assert_eq!(kinds("1.5h"), vec![Tok::Duration(5_400_000_000_000)]);
        assert_eq!(kinds("1e3"), vec![Tok::Number("1e3".into())]);
        assert_eq!(kinds(".99998"), vec![Tok::Number(".99998".into())]);
    }

    #[test]
    fn number_followed_by_letters_is_number_then_identifier() {
        assert_eq!(
            kinds("5xx"),
            vec![Tok::Number("5".into()), Tok::Ident("xx".into())]
        );
    }

    #[test]
    fn minus_before_duration_is_negative_duration_but_before_number_is_sub() {
        assert_eq!(kinds("-5m"), vec![Tok::Duration(-300_000_000_000)]);
        assert_eq!(
            kinds("-1"),
            vec![Tok::Sym(Sym::Sub), Tok::Number("1".into())]
        );
        assert_eq!(
            kinds("1--1"),
            vec![
                Tok::Number("1".into()),
                Tok::Sym(Sym::Sub),
                Tok::Sym(Sym::Sub),
                Tok::Number("1".into())
            ]
        );
    }

    #[test]
    fn logfmt_flags_are_single_tokens_and_other_double_dashes_are_not() {
        assert_eq!(
            kinds("--strict --keep-empty"),
            vec![Tok::Flag(Flag::Strict), Tok::Flag(Flag::KeepEmpty)]
        );
        assert_eq!(
            kinds("--foo"),
            vec![
                Tok::Sym(Sym::Sub),
                Tok::Sym(Sym::Sub),
                Tok::Ident("foo".into())
            ]
        );
    }

    #[test]
    fn function_words_are_keywords_only_before_a_call() {
        assert_eq!(kinds("rate")[0], Tok::Ident("rate".into()));
        assert_eq!(kinds("rate(")[0], Tok::Kw(Keyword::Range(RangeOp::Rate)));
        assert_eq!(
            kinds("SUM BY (x) (")[0],
            Tok::Kw(Keyword::Vector(VectorOp::Sum))
        );
        assert_eq!(kinds("bytes [5m]")[0], Tok::Ident("bytes".into()));
        assert_eq!(kinds("Json")[0], Tok::Kw(Keyword::Json));
    }

    #[test]
    fn go_escapes_are_exact_and_unknown_escapes_fail() {
        assert_eq!(
            kinds(r#""a\tb\x41\101\u00e9""#),
            vec![Tok::Str("a\tbAAé".into())]
        );
        assert!(tokenize(r#""\w+""#).is_err());
        assert!(tokenize("\"a\nb\"").is_err());
        assert!(tokenize(r#""\xff""#).is_err());
        assert_eq!(kinds("`\\w+\n`"), vec![Tok::Str("\\w+\n".into())]);
        assert!(tokenize("'x'").is_err());
    }

    #[test]
    fn comments_end_at_newline_but_not_inside_strings() {
        assert_eq!(
            kinds("{app=\"#\"} # trailing\n"),
            vec![
                Tok::Sym(Sym::LBrace),
                Tok::Ident("app".into()),
                Tok::Sym(Sym::Eq),
                Tok::Str("#".into()),
                Tok::Sym(Sym::RBrace)
            ]
        );
    }

    #[test]
    fn ranges_accept_only_prometheus_durations() {
        assert_eq!(kinds("[1h30m]"), vec![Tok::Range(5_400_000_000_000)]);
        assert_eq!(
            tokenize("[1.5m]").unwrap_err().message,
            "not a valid duration string: \"1.5m\""
        );
        assert_eq!(
            tokenize("[5m").unwrap_err().message,
            "missing closing ']' in duration"
        );
    }

    #[test]
    fn unknown_characters_become_one_character_identifiers() {
        assert_eq!(kinds("$"), vec![Tok::Ident("$".into())]);
    }
}
