//! Alert label and annotation templates: the subset of Go `text/template` that
//! Prometheus and Loki rule files use.
//!
//! Owns parsing (at load time, so a broken template rejects the rule file) and expansion
//! with `$labels`/`.Labels`, `$value`/`.Value`, `$externalLabels`, `$externalURL`, pipes,
//! and the functions `humanize`, `humanize1024`, `humanizePercentage`,
//! `humanizeDuration`, `printf`, `toUpper`, `toLower`, `title`, `reReplaceAll` and
//! `index`. Number formatting follows Go's `fmt` so messages read the same as under
//! Loki. It does not own control flow (`if`, `range`) or the `query` function: such
//! templates are refused with a message saying so.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A parsed template, ready to expand many times.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a template could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed action: missing \"}}}}\" after byte {0}")]
    Unclosed(usize),
    #[error("unsupported template syntax {0:?}: Lode supports $labels, $value, $externalLabels, $externalURL, pipes and the humanize*, printf, toUpper, toLower, title, reReplaceAll and index functions")]
    Unsupported(String),
    #[error("unknown template function {0:?}")]
    UnknownFunction(String),
    #[error("function {name} takes {want} arguments, got {got}")]
    Arity {
        name: &'static str,
        want: &'static str,
        got: usize,
    },
    #[error("unterminated string in action {0:?}")]
    UnterminatedString(String),
    #[error("empty action {{{{}}}}")]
    Empty,
}

/// What a template can see when it is expanded.
#[derive(Clone, Copy, Debug)]
pub struct TemplateData<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub value: f64,
    pub external_labels: &'a BTreeMap<String, String>,
    pub external_url: &'a str,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Action(Vec<Command>),
}

#[derive(Clone, Debug, PartialEq)]
struct Command {
    func: Option<Func>,
    args: Vec<Operand>,
}

#[derive(Clone, Debug, PartialEq)]
enum Operand {
    Labels(Option<String>),
    ExternalLabels(Option<String>),
    Value,
    ExternalUrl,
    Str(String),
    Num(f64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Func {
    Humanize,
    Humanize1024,
    HumanizePercentage,
    HumanizeDuration,
    Printf,
    ToUpper,
    ToLower,
    Title,
    ReReplaceAll,
    Index,
}

impl Func {
    fn by_name(name: &str) -> Option<Func> {
        Some(match name {
            "humanize" => Func::Humanize,
            "humanize1024" => Func::Humanize1024,
            "humanizePercentage" => Func::HumanizePercentage,
            "humanizeDuration" => Func::HumanizeDuration,
            "printf" => Func::Printf,
            "toUpper" => Func::ToUpper,
            "toLower" => Func::ToLower,
            "title" => Func::Title,
            "reReplaceAll" => Func::ReReplaceAll,
            "index" => Func::Index,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Func::Humanize => "humanize",
            Func::Humanize1024 => "humanize1024",
            Func::HumanizePercentage => "humanizePercentage",
            Func::HumanizeDuration => "humanizeDuration",
            Func::Printf => "printf",
            Func::ToUpper => "toUpper",
            Func::ToLower => "toLower",
            Func::Title => "title",
            Func::ReReplaceAll => "reReplaceAll",
            Func::Index => "index",
        }
    }

    /// (minimum, maximum, text for errors) argument counts, the piped value included.
    fn arity(self) -> (usize, usize, &'static str) {
        match self {
            Func::Printf => (1, usize::MAX, "at least 1"),
            Func::ReReplaceAll => (3, 3, "3"),
            Func::Index => (2, 2, "2"),
            _ => (1, 1, "1"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Val {
    Str(String),
    Num(f64),
    Map(BTreeMap<String, String>),
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        let mut trim_next_text = false;
        while let Some(open) = rest.find("{{") {
            let mut literal = &rest[..open];
            if trim_next_text {
                literal = literal.trim_start();
            }
            let after_open = &rest[open + 2..];
            let (trim_left, inner_start) = match after_open.strip_prefix("- ") {
                Some(s) => (true, s),
                None => (false, after_open),
            };
            if trim_left {
                literal = literal.trim_end();
            }
            if !literal.is_empty() {
                parts.push(Part::Text(literal.to_string()));
            }
            let close = inner_start
                .find("}}")
                .ok_or(TemplateError::Unclosed(offset + open))?;
            let mut inner = &inner_start[..close];
            trim_next_text = false;
            if let Some(s) = inner.strip_suffix(" -") {
                inner = s;
                trim_next_text = true;
            }
            let inner = inner.trim();
            if !(inner.starts_with("/*") && inner.ends_with("*/")) {
                parts.push(Part::Action(parse_pipeline(inner)?));
            }
            let consumed = rest.len() - inner_start.len() + close + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        let literal = if trim_next_text {
            rest.trim_start()
        } else {
            rest
        };
        if !literal.is_empty() {
            parts.push(Part::Text(literal.to_string()));
        }
        Ok(Template { parts })
    }

    /// A template that always expands to `text`, for a rule whose template was refused
    /// (files are validated first, so this only shows the error in the alert).
    pub fn literal(text: String) -> Template {
        Template {
            parts: vec![Part::Text(text)],
        }
    }

    /// Expands the template. A failure becomes the text Prometheus writes,
    /// `<error expanding template: ...>`, so one bad alert never stops an evaluation.
    pub fn expand(&self, data: &TemplateData<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Action(pipeline) => match run_pipeline(pipeline, data) {
                    Ok(v) => out.push_str(&render(&v)),
                    Err(e) => return format!("<error expanding template: {e}>"),
                },
            }
        }
        out
    }

    /// Parses and expands in one go; a parse error is rendered like an expansion error.
    pub fn expand_text(text: &str, data: &TemplateData<'_>) -> String {
        match Template::parse(text) {
            Ok(t) => t.expand(data),
            Err(e) => format!("<error expanding template: {e}>"),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Pipe,
}

fn tokenize(action: &str) -> Result<Vec<Token>, TemplateError> {
    let mut tokens = Vec::new();
    let mut chars = action.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '|' => {
                chars.next();
                tokens.push(Token::Pipe);
            }
            '"' => {
                let (s, used) = lode_push::labels::unquote_go(&action[i..])
                    .map_err(|_| TemplateError::UnterminatedString(action.to_string()))?;
                tokens.push(Token::Str(s));
                while chars.peek().is_some_and(|&(j, _)| j < i + used) {
                    chars.next();
                }
            }
            '`' => {
                let body = &action[i + 1..];
                let end = body
                    .find('`')
                    .ok_or_else(|| TemplateError::UnterminatedString(action.to_string()))?;
                tokens.push(Token::Str(body[..end].to_string()));
                while chars.peek().is_some_and(|&(j, _)| j <= i + 1 + end) {
                    chars.next();
                }
            }
            '(' | ')' | ':' | '=' | ',' => {
                return Err(TemplateError::Unsupported(action.to_string()));
            }
            _ => {
                let mut word = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '|' | '"' | '`' | '(' | ')') {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Ok(tokens)
}

fn parse_pipeline(action: &str) -> Result<Vec<Command>, TemplateError> {
    let tokens = tokenize(action)?;
    if tokens.is_empty() {
        return Err(TemplateError::Empty);
    }
    let mut commands = Vec::new();
    for (position, segment) in tokens.split(|t| *t == Token::Pipe).enumerate() {
        let mut func = None;
        let mut args = Vec::new();
        for (i, token) in segment.iter().enumerate() {
            match token {
                Token::Str(s) => args.push(Operand::Str(s.clone())),
                Token::Pipe => {}
                Token::Word(w) => {
                    if i == 0 && !w.starts_with('$') && !w.starts_with('.') {
                        if let Ok(n) = w.parse::<f64>() {
                            args.push(Operand::Num(n));
                            continue;
                        }
                        if matches!(w.as_str(), "if" | "else" | "end" | "range" | "with")
                            || w == "query"
                            || w == "define"
                            || w == "template"
                        {
                            return Err(TemplateError::Unsupported(action.to_string()));
                        }
                        func = Some(
                            Func::by_name(w)
                                .ok_or_else(|| TemplateError::UnknownFunction(w.clone()))?,
                        );
                    } else {
                        args.push(parse_operand(w, action)?);
                    }
                }
            }
        }
        let piped = usize::from(position > 0);
        match func {
            Some(f) => {
                let (min, max, want) = f.arity();
                let got = args.len() + piped;
                if got < min || got > max {
                    return Err(TemplateError::Arity {
                        name: f.name(),
                        want,
                        got,
                    });
                }
            }
            None if args.len() + piped != 1 => {
                return Err(TemplateError::Unsupported(action.to_string()))
            }
            None => {}
        }
        commands.push(Command { func, args });
    }
    Ok(commands)
}

fn parse_operand(word: &str, action: &str) -> Result<Operand, TemplateError> {
    if let Ok(n) = word.parse::<f64>() {
        return Ok(Operand::Num(n));
    }
    let (head, key) = match word.split_once('.') {
        Some((h, k)) if !h.is_empty() => (h, Some(k)),
        _ => match word.strip_prefix('.') {
            Some(rest) => match rest.split_once('.') {
                Some((h, k)) => (h, Some(k)),
                None => (rest, None),
            },
            None => (word, None),
        },
    };
    let key = key.map(str::to_string);
    Ok(match (head, key) {
        ("$labels" | "Labels", key) => Operand::Labels(key),
        ("$externalLabels" | "ExternalLabels", key) => Operand::ExternalLabels(key),
        ("$value" | "Value", None) => Operand::Value,
        ("$externalURL" | "ExternalURL", None) => Operand::ExternalUrl,
        _ => return Err(TemplateError::Unsupported(action.to_string())),
    })
}

fn operand_value(op: &Operand, data: &TemplateData<'_>) -> Val {
    // Prometheus runs templates with missingkey=zero: an absent label is "".
    let lookup = |map: &BTreeMap<String, String>, key: &Option<String>| match key {
        Some(k) => Val::Str(map.get(k).cloned().unwrap_or_default()),
        None => Val::Map(map.clone()),
    };
    match op {
        Operand::Labels(key) => lookup(data.labels, key),
        Operand::ExternalLabels(key) => lookup(data.external_labels, key),
        Operand::Value => Val::Num(data.value),
        Operand::ExternalUrl => Val::Str(data.external_url.to_string()),
        Operand::Str(s) => Val::Str(s.clone()),
        Operand::Num(n) => Val::Num(*n),
    }
}

fn run_pipeline(pipeline: &[Command], data: &TemplateData<'_>) -> Result<Val, String> {
    let mut piped: Option<Val> = None;
    for command in pipeline {
        let mut args: Vec<Val> = command
            .args
            .iter()
            .map(|a| operand_value(a, data))
            .collect();
        args.extend(piped.take());
        piped = Some(match command.func {
            None => args.pop().ok_or("empty command")?,
            Some(f) => call(f, args)?,
        });
    }
    piped.ok_or_else(|| "empty pipeline".to_string())
}

fn to_f64(v: &Val) -> Result<f64, String> {
    match v {
        Val::Num(n) => Ok(*n),
        Val::Str(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("cannot convert {s:?} to a number")),
        Val::Map(_) => Err("cannot convert a map to a number".to_string()),
    }
}

fn to_str(v: &Val) -> String {
    render(v)
}

fn call(f: Func, args: Vec<Val>) -> Result<Val, String> {
    let first = args.first().ok_or("missing argument")?;
    Ok(Val::Str(match f {
        Func::Humanize => humanize(to_f64(first)?),
        Func::Humanize1024 => humanize1024(to_f64(first)?),
        Func::HumanizePercentage => format!("{}%", go_g(to_f64(first)? * 100.0, 4)),
        Func::HumanizeDuration => humanize_duration(to_f64(first)?),
        Func::ToUpper => to_str(first).to_uppercase(),
        Func::ToLower => to_str(first).to_lowercase(),
        Func::Title => title(&to_str(first)),
        Func::Printf => sprintf(&to_str(first), args.get(1..).unwrap_or(&[])),
        Func::ReReplaceAll => {
            let [pattern, replacement, text] = args.as_slice() else {
                return Err("reReplaceAll takes 3 arguments".into());
            };
            let re = regex::Regex::new(&to_str(pattern)).map_err(|e| e.to_string())?;
            re.replace_all(&to_str(text), to_str(replacement).as_str())
                .into_owned()
        }
        Func::Index => {
            let [map, key] = args.as_slice() else {
                return Err("index takes 2 arguments".into());
            };
            match map {
                Val::Map(m) => m.get(&to_str(key)).cloned().unwrap_or_default(),
                _ => return Err("index of a non-map value".into()),
            }
        }
    }))
}

fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut at_word_start = true;
    for c in s.chars() {
        if at_word_start && c.is_alphanumeric() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        at_word_start = !c.is_alphanumeric();
    }
    out
}

fn render(v: &Val) -> String {
    match v {
        Val::Str(s) => s.clone(),
        Val::Num(n) => go_float(*n),
        Val::Map(m) => {
            let items: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("map[{}]", items.join(" "))
        }
    }
}

/// Go's `%v` for a float64: shortest digits, exponent form below 1e-4 or from 1e21.
pub fn go_float(v: f64) -> String {
    if let Some(special) = special_float(v) {
        return special.to_string();
    }
    let (_, exp) = shortest_e(v);
    if !(-4..21).contains(&exp) {
        go_e(v)
    } else {
        format!("{v}")
    }
}

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)`: `7e-02`, `1.2e+01`, `NaN`, `+Inf`.
pub fn go_e(v: f64) -> String {
    if let Some(special) = special_float(v) {
        return special.to_string();
    }
    let (mantissa, exp) = shortest_e(v);
    format!("{mantissa}e{}", exp_suffix(exp))
}

fn special_float(v: f64) -> Option<&'static str> {
    if v.is_nan() {
        Some("NaN")
    } else if v == f64::INFINITY {
        Some("+Inf")
    } else if v == f64::NEG_INFINITY {
        Some("-Inf")
    } else {
        None
    }
}

fn exp_suffix(exp: i32) -> String {
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{sign}{:02}", exp.unsigned_abs())
}

/// Rust's shortest `{:e}` split into mantissa text and exponent.
fn shortest_e(v: f64) -> (String, i32) {
    split_e(&format!("{v:e}"))
}

fn split_e(s: &str) -> (String, i32) {
    match s.split_once('e') {
        Some((m, e)) => (m.to_string(), e.parse().unwrap_or(0)),
        None => (s.to_string(), 0),
    }
}

/// Go's `%.<prec>g`: `prec` significant digits, trailing zeros dropped, exponent form
/// when the exponent is below -4 or at least the number of digits kept.
pub fn go_g(v: f64, prec: usize) -> String {
    if let Some(special) = special_float(v) {
        return special.to_string();
    }
    let prec = prec.max(1);
    let (mantissa, exp) = split_e(&format!("{v:.*e}", prec - 1));
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let nd = digits.len() as i32;
    let dp = exp + 1;
    let mut eprec = prec as i32;
    if eprec > nd && nd >= dp {
        eprec = nd;
    }
    let sign = if negative { "-" } else { "" };
    if v != 0.0 && (exp < -4 || exp >= eprec) {
        let (head, tail) = digits.split_at(1);
        let dot = if tail.is_empty() { "" } else { "." };
        format!("{sign}{head}{dot}{tail}e{}", exp_suffix(exp))
    } else {
        let decimals = usize::try_from(nd - dp).unwrap_or(0);
        format!("{:.*}", decimals, v)
    }
}

fn humanize(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return go_g(v, 4);
    }
    let mut v = v;
    let mut prefix = "";
    if v.abs() >= 1.0 {
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
    } else {
        for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
            if v.abs() >= 1.0 {
                break;
            }
            prefix = p;
            v *= 1000.0;
        }
    }
    format!("{}{prefix}", go_g(v, 4))
}

fn humanize1024(v: f64) -> String {
    if v.abs() <= 1.0 || !v.is_finite() {
        return go_g(v, 4);
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", go_g(v, 4))
}

fn humanize_duration(v: f64) -> String {
    if !v.is_finite() {
        return go_g(v, 4);
    }
    if v == 0.0 {
        return "0s".to_string();
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        let v = v.abs();
        let total = v as i64;
        let (seconds, minutes, hours, days) = (
            total % 60,
            (total / 60) % 60,
            (total / 3600) % 24,
            total / 86400,
        );
        return if days != 0 {
            format!("{sign}{days}d {hours}h {minutes}m {seconds}s")
        } else if hours != 0 {
            format!("{sign}{hours}h {minutes}m {seconds}s")
        } else if minutes != 0 {
            format!("{sign}{minutes}m {seconds}s")
        } else {
            format!("{sign}{}s", go_g(v, 4))
        };
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", go_g(v, 4))
}

/// Go's `fmt.Sprintf` for the verbs alert templates use: `%s %v %d %f %e %g %q %%`
/// with optional `-`/`0` flags, width and precision.
fn sprintf(format: &str, args: &[Val]) -> String {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut left = false;
        let mut zero = false;
        while let Some(&f) = chars.peek() {
            match f {
                '-' => left = true,
                '0' => zero = true,
                '+' | ' ' | '#' => {}
                _ => break,
            }
            chars.next();
        }
        let mut width = String::new();
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(d);
            chars.next();
        }
        let mut precision: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                p.push(d);
                chars.next();
            }
            precision = Some(p.parse().unwrap_or(0));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.next() else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        let text = match (verb, arg) {
            ('d', v) => match to_f64(v) {
                Ok(n) => format!("{}", n.trunc() as i64),
                Err(_) => format!("%!d({})", render(v)),
            },
            ('f' | 'F', v) => match to_f64(v) {
                Ok(n) => format!("{:.*}", precision.unwrap_or(6), n),
                Err(_) => format!("%!f({})", render(v)),
            },
            ('e', v) => match to_f64(v) {
                Ok(n) => {
                    let (m, e) = split_e(&format!("{:.*e}", precision.unwrap_or(6), n));
                    format!("{m}e{}", exp_suffix(e))
                }
                Err(_) => format!("%!e({})", render(v)),
            },
            ('g', v) => match to_f64(v) {
                Ok(n) => match precision {
                    Some(p) => go_g(n, p),
                    None => go_float(n),
                },
                Err(_) => format!("%!g({})", render(v)),
            },
            ('q', v) => format!("{:?}", render(v)),
            ('s' | 'v', v) => {
                let s = render(v);
                match precision {
                    Some(p) if verb == 's' => s.chars().take(p).collect(),
                    _ => s,
                }
            }
            (other, v) => format!("%!{other}({})", render(v)),
        };
        let width: usize = width.parse().unwrap_or(0);
        let pad = width.saturating_sub(text.chars().count());
        if left {
            out.push_str(&text);
            out.extend(std::iter::repeat_n(' ', pad));
        } else if zero && text.starts_with('-') {
            out.push('-');
            out.extend(std::iter::repeat_n('0', pad));
            out.push_str(&text[1..]);
        } else {
            out.extend(std::iter::repeat_n(if zero { '0' } else { ' ' }, pad));
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn expand(text: &str, value: f64) -> String {
        let labels = BTreeMap::from([
            ("app".to_string(), "api".to_string()),
            ("pod".to_string(), "api-1".to_string()),
        ]);
        let external = BTreeMap::from([("cluster".to_string(), "eu-1".to_string())]);
        let data = TemplateData {
            labels: &labels,
            value,
            external_labels: &external,
            external_url: "http://grafana:3000",
        };
        Template::parse(text).unwrap().expand(&data)
    }

    #[test]
    fn labels_and_value_expand_in_both_spellings() {
        assert_eq!(
            expand("{{ $labels.app }} is at {{ $value }}", 0.07),
            "api is at 0.07"
        );
        assert_eq!(expand("{{ .Labels.pod }}/{{ .Value }}", 12.0), "api-1/12");
        assert_eq!(expand("{{ $labels.missing }}|", 1.0), "|");
        assert_eq!(
            expand("{{ $externalLabels.cluster }} {{ $externalURL }}", 1.0),
            "eu-1 http://grafana:3000"
        );
        assert_eq!(expand(r#"{{ index $labels "app" }}"#, 1.0), "api");
    }

    #[test]
    fn humanize_functions_match_prometheus_output() {
        assert_eq!(expand("{{ $value | humanizePercentage }}", 0.07), "7%");
        assert_eq!(
            expand("{{ $value | humanizePercentage }}", 0.123456),
            "12.35%"
        );
        assert_eq!(expand("{{ humanize $value }}", 1234567.0), "1.235M");
        assert_eq!(expand("{{ humanize $value }}", 0.0012), "1.2m");
        assert_eq!(expand("{{ humanize $value }}", 0.0), "0");
        assert_eq!(expand("{{ $value | humanize1024 }}", 2048.0), "2ki");
        assert_eq!(expand("{{ humanizeDuration $value }}", 3661.0), "1h 1m 1s");
        assert_eq!(expand("{{ humanizeDuration $value }}", 1.5), "1.5s");
        assert_eq!(expand("{{ humanizeDuration $value }}", 0.25), "250ms");
    }

    #[test]
    fn printf_formats_like_go() {
        assert_eq!(expand(r#"{{ printf "%.2f" $value }}"#, 1.23456), "1.23");
        assert_eq!(
            expand(r#"{{ printf "%d errors" $value }}"#, 42.9),
            "42 errors"
        );
        assert_eq!(
            expand(r#"{{ printf "%s=%5.1f%%" $labels.app $value }}"#, 7.25),
            "api=  7.2%"
        );
        assert_eq!(expand(r#"{{ $labels.app | toUpper }}"#, 0.0), "API");
        assert_eq!(expand(r#"{{ "hello world" | title }}"#, 0.0), "Hello World");
        assert_eq!(
            expand(r#"{{ reReplaceAll "-[0-9]+$" "" $labels.pod }}"#, 0.0),
            "api"
        );
    }

    #[test]
    fn trim_markers_and_comments_are_honoured() {
        assert_eq!(expand("a  {{- $labels.app -}}  b", 0.0), "aapib");
        assert_eq!(expand("x{{/* note */}}y", 0.0), "xy");
    }

    #[test]
    fn unsupported_or_broken_templates_fail_to_parse() {
        assert!(matches!(
            Template::parse("{{ $labels.app"),
            Err(TemplateError::Unclosed(_))
        ));
        assert!(matches!(
            Template::parse("{{ if $value }}x{{ end }}"),
            Err(TemplateError::Unsupported(_))
        ));
        assert!(matches!(
            Template::parse("{{ nosuch $value }}"),
            Err(TemplateError::UnknownFunction(_))
        ));
        assert!(matches!(
            Template::parse("{{ humanize }}"),
            Err(TemplateError::Arity { .. })
        ));
        assert!(matches!(
            Template::parse("{{ }}"),
            Err(TemplateError::Empty)
        ));
    }

    #[test]
    fn expansion_errors_become_prometheus_error_text() {
        let out = expand("{{ $labels.app | humanize }}", 0.0);
        assert!(out.starts_with("<error expanding template:"), "{out}");
    }

    #[test]
    fn go_number_formats_match_go() {
        assert_eq!(go_e(0.07), "7e-02");
        assert_eq!(go_e(12.0), "1.2e+01");
        assert_eq!(go_e(f64::NAN), "NaN");
        assert_eq!(go_e(f64::INFINITY), "+Inf");
        assert_eq!(go_e(0.0), "0e+00");
        assert_eq!(go_float(1e21), "1e+21");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(100000.0), "100000");
        assert_eq!(go_g(100.0, 4), "100");
        assert_eq!(go_g(1234567.0, 4), "1.235e+06");
        assert_eq!(go_g(0.5, 4), "0.5");
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(s in ".{0,60}") {
            if let Ok(t) = Template::parse(&s) {
                let labels = BTreeMap::new();
                let _ = t.expand(&TemplateData {
                    labels: &labels,
                    value: 1.0,
                    external_labels: &labels,
                    external_url: "",
                });
            }
        }
    }
}
