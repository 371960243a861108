//! The template function set: exactly Loki's `line_format`/`label_format` functions —
//! Go's built-ins, Loki's own, and the Sprig subset Loki registers — with their Go
//! semantics.
//!
//! Owns name lookup (an unknown name is a parse error) and calling a function on
//! evaluated arguments. `and`/`or` short-circuit and are evaluated by the executor;
//! everything else gets its arguments here, a piped value last.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use regex::Regex;

use super::gofmt::{go_print, go_sprintf};
use super::gotime::{parse_in, GoTime, Zone};
use super::{TemplateData, Val};
use crate::log::conversion::{parse_bytes, parse_duration_seconds};

/// Longest string `repeat`, `indent` and friends may build (a line bigger than this is
/// a runaway template, not a log line).
const MAX_BUILT_LEN: usize = 16 << 20;

macro_rules! funcs {
    ($($name:literal => $variant:ident,)*) => {
        /// A template function.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(super) enum Func { $($variant,)* }

        /// The function named `name`, if templates may call it.
        pub(super) fn lookup(name: &str) -> Option<Func> {
            Some(match name {
                $($name => Func::$variant,)*
                _ => return None,
            })
        }

        impl Func {
            pub(super) fn name(self) -> &'static str {
                match self { $(Func::$variant => $name,)* }
            }
        }
    };
}

funcs! {
    // Go's text/template built-ins.
    "and" => And,
    "or" => Or,
    "not" => Not,
    "eq" => Eq,
    "ne" => Ne,
    "lt" => Lt,
    "le" => Le,
    "gt" => Gt,
    "ge" => Ge,
    "len" => Len,
    "index" => Index,
    "slice" => Slice,
    "print" => Print,
    "printf" => Printf,
    "println" => Println,
    "html" => Html,
    "js" => Js,
    "urlquery" => Urlquery,
    "call" => Call,
    // Loki's own.
    "__line__" => Line,
    "__timestamp__" => Timestamp,
    "ToLower" => ToLower,
    "ToUpper" => ToUpper,
    "Replace" => ReplaceGo,
    "Trim" => TrimGo,
    "TrimLeft" => TrimLeft,
    "TrimRight" => TrimRight,
    "TrimPrefix" => TrimPrefixGo,
    "TrimSuffix" => TrimSuffixGo,
    "TrimSpace" => TrimSpace,
    "regexReplaceAll" => RegexReplaceAll,
    "regexReplaceAllLiteral" => RegexReplaceAllLiteral,
    "count" => Count,
    "urldecode" => Urldecode,
    "urlencode" => Urlencode,
    "bytes" => Bytes,
    "duration" => Duration,
    "duration_seconds" => DurationSeconds,
    "unixEpochMillis" => UnixEpochMillis,
    "unixEpochNanos" => UnixEpochNanos,
    "toDateInZone" => ToDateInZone,
    "unixToTime" => UnixToTime,
    "alignLeft" => AlignLeft,
    "alignRight" => AlignRight,
    // The Sprig subset Loki registers.
    "b64enc" => B64enc,
    "b64dec" => B64dec,
    "lower" => Lower,
    "upper" => Upper,
    "title" => Title,
    "trunc" => Trunc,
    "substr" => Substr,
    "contains" => Contains,
    "hasPrefix" => HasPrefix,
    "hasSuffix" => HasSuffix,
    "indent" => Indent,
    "nindent" => Nindent,
    "replace" => ReplaceSprig,
    "repeat" => Repeat,
    "trim" => TrimSprig,
    "trimAll" => TrimAll,
    "trimSuffix" => TrimSuffixSprig,
    "trimPrefix" => TrimPrefixSprig,
    "int" => Int,
    "float64" => Float64,
    "add" => Add,
    "sub" => Sub,
    "mul" => Mul,
    "div" => Div,
    "mod" => Mod,
    "addf" => Addf,
    "subf" => Subf,
    "mulf" => Mulf,
    "divf" => Divf,
    "max" => Max,
    "min" => Min,
    "maxf" => Maxf,
    "minf" => Minf,
    "ceil" => Ceil,
    "floor" => Floor,
    "round" => Round,
    "fromJson" => FromJson,
    "date" => Date,
    "toDate" => ToDate,
    "now" => Now,
    "unixEpoch" => UnixEpoch,
    "default" => Default,
}

type R = Result<Val, String>;

fn arity(f: Func, args: &[Val], n: usize) -> Result<(), String> {
    if args.len() != n {
        return Err(format!(
            "wrong number of args for {}: want {n} got {}",
            f.name(),
            args.len()
        ));
    }
    Ok(())
}

fn at_least(f: Func, args: &[Val], n: usize) -> Result<(), String> {
    if args.len() < n {
        return Err(format!(
            "wrong number of args for {}: want at least {n} got {}",
            f.name(),
            args.len()
        ));
    }
    Ok(())
}

/// A `string` parameter: Go refuses any other type.
fn string(v: &Val) -> Result<&str, String> {
    match v {
        Val::Str(s) => Ok(s),
        other => Err(format!(
            "wrong type for value; expected string; got {}",
            other.type_name()
        )),
    }
}

/// An `int` parameter.
fn int(v: &Val) -> Result<i64, String> {
    match v {
        Val::Int(i) => Ok(*i),
        other => Err(format!(
            "wrong type for value; expected int; got {}",
            other.type_name()
        )),
    }
}

/// A `time.Time` parameter.
fn time(v: &Val) -> Result<GoTime, String> {
    match v {
        Val::Time(t) => Ok(*t),
        other => Err(format!(
            "wrong type for value; expected time.Time; got {}",
            other.type_name()
        )),
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: sign, `0x`/`0o`/`0b`/leading-`0` bases, `_`
/// between digits.
pub(super) fn parse_go_int(text: &str) -> Option<i64> {
    let (neg, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d, true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d, true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d, true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..], true)
    } else {
        (10, lower.as_str(), false)
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    if digits.contains('_') && !prefixed && radix == 10 && body.starts_with('_') {
        return None;
    }
    let clean: String = digits.chars().filter(|c| *c != '_').collect();
    let magnitude = i128::from_str_radix(&clean, radix).ok()?;
    let v = if neg { -magnitude } else { magnitude };
    i64::try_from(v).ok()
}

/// spf13/cast's `ToInt64` as Sprig uses it: errors become 0; `"1.0"` counts as 1 but
/// `"1.5"` does not parse.
pub(super) fn cast_i64(v: &Val) -> i64 {
    match v {
        Val::Str(s) => {
            let trimmed = match s.split_once('.') {
                Some((int, frac))
                    if !int.is_empty() && !frac.is_empty() && frac.bytes().all(|b| b == b'0') =>
                {
                    int
                }
                _ => s.as_str(),
            };
            parse_go_int(trimmed).unwrap_or(0)
        }
        Val::Int(i) => *i,
        Val::Float(f) => *f as i64,
        Val::Bool(b) => i64::from(*b),
        _ => 0,
    }
}

/// spf13/cast's `ToFloat64`: errors become 0.
pub(super) fn cast_f64(v: &Val) -> f64 {
    match v {
        Val::Str(s) => parse_go_float(s).unwrap_or(0.0),
        Val::Int(i) => *i as f64,
        Val::Float(f) => *f,
        Val::Bool(b) => f64::from(u8::from(*b)),
        _ => 0.0,
    }
}

/// Go's `strconv.ParseFloat(s, 64)` for decimal input (Rust also takes `inf`/`nan`
/// spellings Go takes).
fn parse_go_float(s: &str) -> Option<f64> {
    if s.is_empty() || s.contains(char::is_whitespace) {
        return None;
    }
    s.parse::<f64>().ok()
}

/// A float through shopspring/decimal, as Sprig's `addf`/`subf`/`mulf` compute: the
/// shortest decimal of each operand, exact arithmetic, rounded back to the nearest
/// float (`addf 0.1 0.2` is `0.3`). Falls back to float arithmetic when an exact value
/// would not fit 38 digits.
#[derive(Clone, Copy)]
struct Dec {
    mantissa: i128,
    exp: i32,
}

impl Dec {
    fn of(f: f64) -> Option<Dec> {
        if !f.is_finite() {
            return None;
        }
        let s = format!("{f:e}");
        let (m, e) = s.split_once('e')?;
        let exp: i32 = e.parse().ok()?;
        let (int, frac) = m.split_once('.').unwrap_or((m, ""));
        let mantissa: i128 = format!("{int}{frac}").parse().ok()?;
        Some(Dec {
            mantissa,
            exp: exp - frac.len() as i32,
        })
    }

    fn align(a: Dec, b: Dec) -> Option<(i128, i128, i32)> {
        let exp = a.exp.min(b.exp);
        let scale = |d: Dec| -> Option<i128> {
            let shift = u32::try_from(d.exp - exp).ok()?;
            d.mantissa.checked_mul(10i128.checked_pow(shift)?)
        };
        Some((scale(a)?, scale(b)?, exp))
    }

    fn to_f64(self) -> f64 {
        format!("{}e{}", self.mantissa, self.exp)
            .parse()
            .unwrap_or(f64::NAN)
    }
}

fn decimal_op(a: f64, b: f64, op: char) -> f64 {
    let exact = (|| {
        let (x, y) = (Dec::of(a)?, Dec::of(b)?);
        match op {
            '*' => Some(Dec {
                mantissa: x.mantissa.checked_mul(y.mantissa)?,
                exp: x.exp + y.exp,
            }),
            _ => {
                let (mx, my, exp) = Dec::align(x, y)?;
                let mantissa = if op == '+' {
                    mx.checked_add(my)?
                } else {
                    mx.checked_sub(my)?
                };
                Some(Dec { mantissa, exp })
            }
        }
    })();
    match exact {
        Some(d) => d.to_f64(),
        None => match op {
            '*' => a * b,
            '+' => a + b,
            _ => a - b,
        },
    }
}

fn regex_of(pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|e| format!("error parsing regexp: {e}"))
}

/// Go's `url.QueryEscape`.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Go's `url.QueryUnescape`, with its error text.
fn query_unescape(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                let Some(hex) = hex else {
                    let bad: String = String::from_utf8_lossy(&b[i..(i + 3).min(b.len())]).into();
                    return Err(format!("invalid URL escape {bad:?}"));
                };
                out.push(hex);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Go's `template.HTMLEscapeString`.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\0' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Go's `template.JSEscapeString`.
fn js_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u00{:02X}", c as u32)),
            c if (c as u32) >= 0x80 && c.is_control() => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// What `html`, `js` and `urlquery` escape: one string as is, else `fmt.Sprint(args)`.
fn escaper_input(args: &[Val]) -> String {
    match args {
        [Val::Str(s)] => s.clone(),
        _ => go_print(args, false),
    }
}

fn runes_slice(s: &str, from: usize, to: usize) -> String {
    s.chars().skip(from).take(to.saturating_sub(from)).collect()
}

fn json_to_val(v: serde_json::Value) -> Val {
    use serde_json::Value as J;
    match v {
        J::Null => Val::Nil,
        J::Bool(b) => Val::Bool(b),
        J::Number(n) => Val::Float(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Val::Str(s),
        J::Array(a) => Val::List(Arc::new(a.into_iter().map(json_to_val).collect())),
        J::Object(o) => Val::Map(Arc::new(
            o.into_iter()
                .map(|(k, v)| (k, json_to_val(v)))
                .collect::<BTreeMap<_, _>>(),
        )),
    }
}

fn checked_len(len: usize) -> Result<(), String> {
    if len > MAX_BUILT_LEN {
        return Err(format!(
            "result of {len} bytes exceeds the {MAX_BUILT_LEN}-byte template limit"
        ));
    }
    Ok(())
}

/// Go's `index` of one key.
fn index_one(item: &Val, key: &Val) -> R {
    let pos = |len: usize| -> Result<usize, String> {
        let i = match key {
            Val::Int(i) => *i,
            other => {
                return Err(format!(
                    "cannot index slice/array with type {}",
                    other.type_name()
                ))
            }
        };
        usize::try_from(i)
            .ok()
            .filter(|i| *i < len)
            .ok_or_else(|| format!("index out of range: {i}"))
    };
    match item {
        Val::Map(m) => Ok(m.get(string(key)?).cloned().unwrap_or(Val::Nil)),
        Val::StrMap(m) => {
            let k = string(key)?;
            Ok(Val::Str(
                m.iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default(),
            ))
        }
        Val::List(l) => Ok(l[pos(l.len())?].clone()),
        Val::Str(s) => Ok(Val::Int(i64::from(s.as_bytes()[pos(s.len())?]))),
        Val::Nil => Err("index of untyped nil".to_owned()),
        other => Err(format!("can't index item of type {}", other.type_name())),
    }
}

/// Go's `slice`: `item[i:j]` over bytes of a string or elements of a list.
fn slice(args: &[Val]) -> R {
    let Some((item, idx)) = args.split_first() else {
        return Err("wrong number of args for slice: want at least 1 got 0".to_owned());
    };
    let len = match item {
        Val::Str(s) => s.len(),
        Val::List(l) => l.len(),
        Val::Nil => return Err("slice of untyped nil".to_owned()),
        other => return Err(format!("can't slice item of type {}", other.type_name())),
    };
    if idx.len() > 3 || (idx.len() == 3 && matches!(item, Val::Str(_))) {
        return Err(format!("too many slice indexes: {}", idx.len()));
    }
    let mut bounds = [0usize, len, len];
    for (n, v) in idx.iter().enumerate() {
        let i = usize::try_from(int(v)?).map_err(|_| format!("index out of range: {v:?}"))?;
        if i > len {
            return Err(format!("index out of range: {i}"));
        }
        bounds[n] = i;
    }
    if bounds[0] > bounds[1] {
        return Err(format!(
            "invalid slice index: {} > {}",
            bounds[0], bounds[1]
        ));
    }
    Ok(match item {
        Val::Str(s) => {
            Val::Str(String::from_utf8_lossy(&s.as_bytes()[bounds[0]..bounds[1]]).into_owned())
        }
        Val::List(l) => Val::List(Arc::new(l[bounds[0]..bounds[1]].to_vec())),
        _ => Val::Nil,
    })
}

/// Go's `eq`/`lt`... on basic kinds; other pairs are errors, as in Go.
pub(super) fn compare(a: &Val, b: &Val) -> Result<std::cmp::Ordering, String> {
    use std::cmp::Ordering;
    match (a, b) {
        (Val::Str(x), Val::Str(y)) => Ok(x.cmp(y)),
        (Val::Int(x), Val::Int(y)) => Ok(x.cmp(y)),
        (Val::Float(x), Val::Float(y)) => Ok(x.partial_cmp(y).unwrap_or(Ordering::Equal)),
        (Val::Bool(x), Val::Bool(y)) => Ok(x.cmp(y)),
        (Val::Nil, _) | (_, Val::Nil) => Err("invalid type for comparison".to_owned()),
        (x, y) if x.type_name() != y.type_name() => {
            Err("incompatible types for comparison".to_owned())
        }
        _ => Err("invalid type for comparison".to_owned()),
    }
}

fn trim_affix(src: &str, affix: &str, prefix: bool) -> String {
    if prefix {
        src.strip_prefix(affix).unwrap_or(src).to_owned()
    } else {
        src.strip_suffix(affix).unwrap_or(src).to_owned()
    }
}

/// Sprig's `round`: half away from zero for positives, but `math.Floor`-based below,
/// so `round -2.5 0` is `-3` and so is `round -2.4 0`.
fn sprig_round(v: f64, places: i64, round_on: f64) -> f64 {
    let pow = 10f64.powi(i32::try_from(places).unwrap_or(0));
    let digit = pow * v;
    let frac = digit.fract();
    let r = if frac >= round_on {
        digit.ceil()
    } else {
        digit.floor()
    };
    r / pow
}

/// Sprig's `date`/`dateInZone` argument: a time, or Unix seconds; anything else is
/// "now", as in Sprig.
fn date_arg(v: &Val) -> GoTime {
    match v {
        Val::Time(t) => *t,
        Val::Int(i) => GoTime::from_unix(*i),
        _ => GoTime::now(),
    }
}

/// Calls `f` (not `and`/`or`, which the executor short-circuits).
pub(super) fn call(f: Func, args: Vec<Val>, data: &dyn TemplateData) -> R {
    use Func::*;
    let s = |i: usize| -> Result<&str, String> { string(&args[i]) };
    Ok(match f {
        And | Or => args.last().cloned().unwrap_or(Val::Nil),
        Not => {
            arity(f, &args, 1)?;
            Val::Bool(!args[0].truthy())
        }
        Eq => {
            at_least(f, &args, 2)?;
            let mut any = false;
            for b in &args[1..] {
                if compare(&args[0], b)?.is_eq() {
                    any = true;
                }
            }
            Val::Bool(any)
        }
        Ne | Lt | Le | Gt | Ge => {
            arity(f, &args, 2)?;
            let o = compare(&args[0], &args[1])?;
            Val::Bool(match f {
                Ne => o.is_ne(),
                Lt => o.is_lt(),
                Le => o.is_le(),
                Gt => o.is_gt(),
                _ => o.is_ge(),
            })
        }
        Len => {
            arity(f, &args, 1)?;
            Val::Int(match &args[0] {
                Val::Str(x) => x.len(),
                Val::Map(m) => m.len(),
                Val::StrMap(m) => m.len(),
                Val::List(l) => l.len(),
                other => return Err(format!("len of type {}", other.type_name())),
            } as i64)
        }
        Index => {
            at_least(f, &args, 1)?;
            let mut item = args[0].clone();
            for key in &args[1..] {
                item = index_one(&item, key)?;
            }
            item
        }
        Slice => slice(&args)?,
        Print => Val::Str(go_print(&args, false)),
        Println => Val::Str(go_print(&args, true)),
        Printf => {
            at_least(f, &args, 1)?;
            Val::Str(go_sprintf(s(0)?, &args[1..]))
        }
        Html => Val::Str(html_escape(&escaper_input(&args))),
        Js => Val::Str(js_escape(&escaper_input(&args))),
        Urlquery => Val::Str(query_escape(&escaper_input(&args))),
        Call => {
            at_least(f, &args, 1)?;
            return Err(match &args[0] {
                Val::Nil => "call of nil".to_owned(),
                other => format!("non-function of type {}", other.type_name()),
            });
        }
        Line => {
            arity(f, &args, 0)?;
            Val::Str(data.line().to_owned())
        }
        Timestamp => {
            arity(f, &args, 0)?;
            Val::Time(GoTime::from_unix_nanos(data.timestamp_ns()))
        }
        ToLower | Lower => {
            arity(f, &args, 1)?;
            Val::Str(s(0)?.to_lowercase())
        }
        ToUpper | Upper => {
            arity(f, &args, 1)?;
            Val::Str(s(0)?.to_uppercase())
        }
        Title => {
            arity(f, &args, 1)?;
            let mut out = String::new();
            let mut at_start = true;
            for c in s(0)?.chars() {
                if at_start && c.is_alphabetic() {
                    out.extend(c.to_uppercase());
                } else {
                    out.push(c);
                }
                // Go's strings.Title: letters, digits and `_` continue a word.
                at_start = !(c.is_alphanumeric() || c == '_');
            }
            Val::Str(out)
        }
        ReplaceGo => {
            arity(f, &args, 4)?;
            let (src, old, new, n) = (s(0)?, s(1)?, s(2)?, int(&args[3])?);
            Val::Str(if n < 0 {
                src.replace(old, new)
            } else {
                src.replacen(old, new, usize::try_from(n).unwrap_or(0))
            })
        }
        ReplaceSprig => {
            arity(f, &args, 3)?;
            Val::Str(s(2)?.replace(s(0)?, s(1)?))
        }
        TrimGo | TrimLeft | TrimRight => {
            arity(f, &args, 2)?;
            let cut: Vec<char> = s(1)?.chars().collect();
            let src = s(0)?;
            Val::Str(
                match f {
                    TrimGo => src.trim_matches(cut.as_slice()),
                    TrimLeft => src.trim_start_matches(cut.as_slice()),
                    _ => src.trim_end_matches(cut.as_slice()),
                }
                .to_owned(),
            )
        }
        TrimPrefixGo | TrimSuffixGo => {
            arity(f, &args, 2)?;
            Val::Str(trim_affix(s(0)?, s(1)?, f == TrimPrefixGo))
        }
        TrimPrefixSprig | TrimSuffixSprig => {
            arity(f, &args, 2)?;
            Val::Str(trim_affix(s(1)?, s(0)?, f == TrimPrefixSprig))
        }
        TrimSpace | TrimSprig => {
            arity(f, &args, 1)?;
            Val::Str(s(0)?.trim().to_owned())
        }
        TrimAll => {
            arity(f, &args, 2)?;
            let cut: Vec<char> = s(0)?.chars().collect();
            Val::Str(s(1)?.trim_matches(cut.as_slice()).to_owned())
        }
        RegexReplaceAll | RegexReplaceAllLiteral => {
            arity(f, &args, 3)?;
            let re = regex_of(s(0)?)?;
            let (src, repl) = (s(1)?, s(2)?);
            Val::Str(if f == RegexReplaceAll {
                re.replace_all(src, repl).into_owned()
            } else {
                re.replace_all(src, regex::NoExpand(repl)).into_owned()
            })
        }
        Count => {
            arity(f, &args, 2)?;
            Val::Int(regex_of(s(0)?)?.find_iter(s(1)?).count() as i64)
        }
        Urlencode => {
            arity(f, &args, 1)?;
            Val::Str(query_escape(s(0)?))
        }
        Urldecode => {
            arity(f, &args, 1)?;
            Val::Str(query_unescape(s(0)?)?)
        }
        Bytes => {
            arity(f, &args, 1)?;
            Val::Float(parse_bytes(s(0)?)?)
        }
        Duration | DurationSeconds => {
            arity(f, &args, 1)?;
            Val::Float(parse_duration_seconds(s(0)?)?)
        }
        UnixEpoch | UnixEpochMillis | UnixEpochNanos => {
            arity(f, &args, 1)?;
            let t = time(&args[0])?;
            Val::Str(
                match f {
                    UnixEpoch => t.unix(),
                    UnixEpochMillis => t.unix_millis(),
                    _ => t.unix_nanos(),
                }
                .to_string(),
            )
        }
        ToDateInZone => {
            arity(f, &args, 3)?;
            let zone = Zone::load(s(1)?).unwrap_or(Zone::Utc);
            Val::Time(parse_in(s(0)?, s(2)?, zone).unwrap_or_else(|_| GoTime::zero()))
        }
        ToDate => {
            arity(f, &args, 2)?;
            Val::Time(parse_in(s(0)?, s(1)?, Zone::Utc).unwrap_or_else(|_| GoTime::zero()))
        }
        Date => {
            arity(f, &args, 2)?;
            // Sprig's `date` shows the time in the local zone (UTC here).
            Val::Str(date_arg(&args[1]).in_zone(Zone::Utc).format(s(0)?))
        }
        Now => {
            arity(f, &args, 0)?;
            Val::Time(GoTime::now())
        }
        UnixToTime => {
            arity(f, &args, 1)?;
            let text = s(0)?;
            let n = text
                .parse::<i64>()
                .map_err(|_| format!("unable to parse time '{text}': strconv.ParseInt: parsing {text:?}: invalid syntax"))?;
            // Loki picks the unit from the number of characters.
            Val::Time(match text.len() {
                5 => GoTime::from_unix(n.saturating_mul(86_400)),
                10 => GoTime::from_unix(n),
                13 => GoTime::from_unix_nanos(n.saturating_mul(1_000_000)),
                16 => GoTime::from_unix_nanos(n.saturating_mul(1_000)),
                19 => GoTime::from_unix_nanos(n),
                _ => return Err(format!("unable to parse time '{text}': %!w(<nil>)")),
            })
        }
        AlignLeft | AlignRight => {
            arity(f, &args, 2)?;
            let (n, src) = (int(&args[0])?, s(1)?);
            let len = src.chars().count() as i64;
            Val::Str(if n < 0 || n == len {
                src.to_owned()
            } else if n > len {
                checked_len(n as usize)?;
                let pad = " ".repeat((n - len) as usize);
                if f == AlignLeft {
                    format!("{src}{pad}")
                } else {
                    format!("{pad}{src}")
                }
            } else if f == AlignLeft {
                src.chars().take(n as usize).collect()
            } else {
                src.chars().skip((len - n) as usize).collect()
            })
        }
        B64enc => {
            arity(f, &args, 1)?;
            Val::Str(base64::engine::general_purpose::STANDARD.encode(s(0)?))
        }
        B64dec => {
            arity(f, &args, 1)?;
            // Sprig returns the decoder's error text instead of failing.
            Val::Str(
                match base64::engine::general_purpose::STANDARD.decode(s(0)?) {
                    Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                    Err(e) => go_base64_error(&e),
                },
            )
        }
        Trunc => {
            arity(f, &args, 2)?;
            let (c, src) = (int(&args[0])?, s(1)?);
            let l = src.chars().count() as i64;
            Val::Str(if c < 0 && l + c > 0 {
                runes_slice(src, (l + c) as usize, l as usize)
            } else if c >= 0 && l > c {
                runes_slice(src, 0, c as usize)
            } else {
                src.to_owned()
            })
        }
        Substr => {
            arity(f, &args, 3)?;
            let (start, end, src) = (int(&args[0])?, int(&args[1])?, s(2)?);
            let l = src.chars().count() as i64;
            let (start, end) = (start.min(l), end.min(l));
            Val::Str(if start < 0 {
                if end < 0 {
                    String::new()
                } else {
                    runes_slice(src, 0, end as usize)
                }
            } else if end < 0 {
                runes_slice(src, start as usize, l as usize)
            } else if start > end {
                String::new()
            } else {
                runes_slice(src, start as usize, end as usize)
            })
        }
        Contains => {
            arity(f, &args, 2)?;
            Val::Bool(s(1)?.contains(s(0)?))
        }
        HasPrefix => {
            arity(f, &args, 2)?;
            Val::Bool(s(1)?.starts_with(s(0)?))
        }
        HasSuffix => {
            arity(f, &args, 2)?;
            Val::Bool(s(1)?.ends_with(s(0)?))
        }
        Indent | Nindent => {
            arity(f, &args, 2)?;
            let n = usize::try_from(int(&args[0])?)
                .map_err(|_| "strings: negative Repeat count".to_owned())?;
            let src = s(1)?;
            checked_len(
                src.len()
                    .saturating_add(n.saturating_mul(src.matches('\n').count() + 1)),
            )?;
            let pad = " ".repeat(n);
            let body = format!("{pad}{}", src.replace('\n', &format!("\n{pad}")));
            Val::Str(if f == Nindent {
                format!("\n{body}")
            } else {
                body
            })
        }
        Repeat => {
            arity(f, &args, 2)?;
            let n = usize::try_from(int(&args[0])?)
                .map_err(|_| "strings: negative Repeat count".to_owned())?;
            let src = s(1)?;
            checked_len(src.len().saturating_mul(n))?;
            Val::Str(src.repeat(n))
        }
        Int => {
            arity(f, &args, 1)?;
            Val::Int(cast_i64(&args[0]))
        }
        Float64 => {
            arity(f, &args, 1)?;
            Val::Float(cast_f64(&args[0]))
        }
        Add => Val::Int(
            args.iter()
                .fold(0i64, |acc, a| acc.wrapping_add(cast_i64(a))),
        ),
        Mul => {
            at_least(f, &args, 1)?;
            Val::Int(
                args[1..]
                    .iter()
                    .fold(cast_i64(&args[0]), |acc, a| acc.wrapping_mul(cast_i64(a))),
            )
        }
        Sub | Div | Mod => {
            arity(f, &args, 2)?;
            let (a, b) = (cast_i64(&args[0]), cast_i64(&args[1]));
            if f != Sub && b == 0 {
                return Err("runtime error: integer divide by zero".to_owned());
            }
            Val::Int(match f {
                Sub => a.wrapping_sub(b),
                Div => a.wrapping_div(b),
                _ => a.wrapping_rem(b),
            })
        }
        Max | Min => {
            at_least(f, &args, 1)?;
            let init = cast_i64(&args[0]);
            Val::Int(args[1..].iter().map(cast_i64).fold(init, |acc, v| {
                if f == Max {
                    acc.max(v)
                } else {
                    acc.min(v)
                }
            }))
        }
        Addf => Val::Float(
            args.iter()
                .fold(0.0, |acc, a| decimal_op(acc, cast_f64(a), '+')),
        ),
        Subf | Mulf => {
            at_least(f, &args, 1)?;
            let op = if f == Subf { '-' } else { '*' };
            Val::Float(args[1..].iter().fold(cast_f64(&args[0]), |acc, a| {
                decimal_op(acc, cast_f64(a), op)
            }))
        }
        Divf => {
            at_least(f, &args, 1)?;
            let mut acc = cast_f64(&args[0]);
            for a in &args[1..] {
                let d = cast_f64(a);
                if d == 0.0 {
                    return Err("decimal division by zero".to_owned());
                }
                acc /= d;
            }
            Val::Float(acc)
        }
        Maxf | Minf => {
            at_least(f, &args, 1)?;
            let init = cast_f64(&args[0]);
            Val::Float(args[1..].iter().map(cast_f64).fold(init, |acc, v| {
                if f == Maxf {
                    acc.max(v)
                } else {
                    acc.min(v)
                }
            }))
        }
        Ceil | Floor => {
            arity(f, &args, 1)?;
            let v = cast_f64(&args[0]);
            Val::Float(if f == Ceil { v.ceil() } else { v.floor() })
        }
        Round => {
            at_least(f, &args, 2)?;
            let round_on = args.get(2).map_or(0.5, cast_f64);
            Val::Float(sprig_round(cast_f64(&args[0]), int(&args[1])?, round_on))
        }
        FromJson => {
            arity(f, &args, 1)?;
            // Sprig ignores decoding errors: bad JSON is nil (`<no value>`).
            serde_json::from_str(s(0)?).map_or(Val::Nil, json_to_val)
        }
        Default => {
            at_least(f, &args, 1)?;
            match args.get(1) {
                Some(given) if given.truthy() => given.clone(),
                _ => args[0].clone(),
            }
        }
    })
}

/// Go's `base64.CorruptInputError` text for a decoding failure.
fn go_base64_error(e: &base64::DecodeError) -> String {
    use base64::DecodeError as D;
    let at = match e {
        D::InvalidByte(at, _) | D::InvalidLastSymbol(at, _) => *at,
        D::InvalidLength(len) => *len,
        D::InvalidPadding => 0,
    };
    format!("illegal base64 data at input byte {at}")
}
