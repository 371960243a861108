//! A Go `text/template` subset for `line_format` and `label_format`.
//!
//! Owns parsing and rendering templates over a line's labels: `{{.label}}` field access
//! (a missing label renders empty, Loki's `missingkey=zero`), pipelines with `|`,
//! parenthesised sub-pipelines, `{{- -}}` trimming, comments, `if / else if / else /
//! end`, `with`, and the functions Loki users reach for (Go built-ins, Loki's
//! `__line__`/`__timestamp__`/legacy string functions and the common Sprig ones). An
//! unknown function is a parse error, as in Loki. It does not own which labels exist
//! (the caller passes a [`TemplateData`]).

use std::fmt::Write as _;

use regex::Regex;

use super::conversion::{parse_bytes, parse_duration_seconds};

/// A template that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid template {template:?}: {reason}")]
pub struct TemplateError {
    pub template: String,
    pub reason: String,
}

/// What a template can read while rendering.
pub trait TemplateData {
    /// The value of label `name`, if set.
    fn label(&self, name: &str) -> Option<&str>;
    /// The current line (`__line__`).
    fn line(&self) -> &str;
    /// The entry timestamp in nanoseconds (`__timestamp__`).
    fn timestamp_ns(&self) -> i64;
}

#[derive(Clone, Debug, PartialEq)]
enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Time(i64),
    Nil,
}

impl Val {
    fn truthy(&self) -> bool {
        match self {
            Val::Str(s) => !s.is_empty(),
            Val::Int(i) => *i != 0,
            Val::Float(f) => *f != 0.0,
            Val::Bool(b) => *b,
            Val::Time(_) => true,
            Val::Nil => false,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Val::Str(_) => "string",
            Val::Int(_) => "int",
            Val::Float(_) => "float64",
            Val::Bool(_) => "bool",
            Val::Time(_) => "time.Time",
            Val::Nil => "<nil>",
        }
    }

    fn display(&self) -> String {
        match self {
            Val::Str(s) => s.clone(),
            Val::Int(i) => i.to_string(),
            Val::Float(f) => format_go_float(*f),
            Val::Bool(b) => b.to_string(),
            Val::Time(ns) => format_go_time(*ns),
            Val::Nil => "<no value>".to_owned(),
        }
    }

    // Sprig's `cast.ToInt64`-style lenient conversion.
    fn to_i64(&self) -> i64 {
        match self {
            Val::Str(s) => s
                .trim()
                .parse::<i64>()
                .ok()
                .or_else(|| s.trim().parse::<f64>().ok().map(|f| f as i64))
                .unwrap_or(0),
            Val::Int(i) => *i,
            Val::Float(f) => *f as i64,
            Val::Bool(b) => i64::from(*b),
            Val::Time(ns) => *ns / 1_000_000_000,
            Val::Nil => 0,
        }
    }

    fn to_f64(&self) -> f64 {
        match self {
            Val::Str(s) => s.trim().parse().unwrap_or(0.0),
            Val::Int(i) => *i as f64,
            Val::Float(f) => *f,
            Val::Bool(b) => f64::from(u8::from(*b)),
            Val::Time(ns) => *ns as f64 / 1e9,
            Val::Nil => 0.0,
        }
    }
}

fn format_go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e21).contains(&abs) {
        let s = format!("{f:e}");
        // Go writes exponents with a sign and at least two digits: 1e+21, 1e-05.
        if let Some((m, e)) = s.split_once('e') {
            let (sign, digits) = match e.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', e),
            };
            return format!("{m}e{sign}{digits:0>2}");
        }
        return s;
    }
    format!("{f}")
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Go's default `time.Time` printing, in UTC: `2006-01-02 15:04:05.999999999 +0000 UTC`.
fn format_go_time(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let mut s = format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    );
    if frac != 0 {
        let f = format!("{frac:09}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push_str(" +0000 UTC");
    s
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Func {
    Line,
    Timestamp,
    And,
    Or,
    Not,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Len,
    Print,
    Printf,
    Println,
    ToUpper,
    ToLower,
    Title,
    ReplaceGo,
    ReplaceSprig,
    TrimGo,
    TrimLeft,
    TrimRight,
    TrimPrefixGo,
    TrimSuffixGo,
    TrimSpace,
    TrimSprig,
    TrimAll,
    TrimPrefixSprig,
    TrimSuffixSprig,
    RegexReplaceAll,
    RegexReplaceAllLiteral,
    Count,
    Default,
    Substr,
    Trunc,
    Contains,
    HasPrefix,
    HasSuffix,
    Repeat,
    Int,
    Float64,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Addf,
    Subf,
    Mulf,
    Divf,
    Max,
    Min,
    Maxf,
    Minf,
    Ceil,
    Floor,
    Round,
    Bytes,
    Duration,
    UnixEpoch,
    UnixEpochMillis,
    UnixEpochNanos,
    UnixToTime,
    AlignLeft,
    AlignRight,
    Urlencode,
    Urldecode,
}

fn lookup_func(name: &str) -> Option<Func> {
    Some(match name {
        "__line__" => Func::Line,
        "__timestamp__" => Func::Timestamp,
        "and" => Func::And,
        "or" => Func::Or,
        "not" => Func::Not,
        "eq" => Func::Eq,
        "ne" => Func::Ne,
        "lt" => Func::Lt,
        "le" => Func::Le,
        "gt" => Func::Gt,
        "ge" => Func::Ge,
        "len" => Func::Len,
        "print" => Func::Print,
        "printf" => Func::Printf,
        "println" => Func::Println,
        "ToUpper" | "upper" => Func::ToUpper,
        "ToLower" | "lower" => Func::ToLower,
        "title" => Func::Title,
        "Replace" => Func::ReplaceGo,
        "replace" => Func::ReplaceSprig,
        "Trim" => Func::TrimGo,
        "TrimLeft" => Func::TrimLeft,
        "TrimRight" => Func::TrimRight,
        "TrimPrefix" => Func::TrimPrefixGo,
        "TrimSuffix" => Func::TrimSuffixGo,
        "TrimSpace" => Func::TrimSpace,
        "trim" => Func::TrimSprig,
        "trimAll" => Func::TrimAll,
        "trimPrefix" => Func::TrimPrefixSprig,
        "trimSuffix" => Func::TrimSuffixSprig,
        "regexReplaceAll" => Func::RegexReplaceAll,
        "regexReplaceAllLiteral" => Func::RegexReplaceAllLiteral,
        "count" => Func::Count,
        "default" => Func::Default,
        "substr" => Func::Substr,
        "trunc" => Func::Trunc,
        "contains" => Func::Contains,
        "hasPrefix" => Func::HasPrefix,
        "hasSuffix" => Func::HasSuffix,
        "repeat" => Func::Repeat,
        "int" => Func::Int,
        "float64" => Func::Float64,
        "add" => Func::Add,
        "sub" => Func::Sub,
        "mul" => Func::Mul,
        "div" => Func::Div,
        "mod" => Func::Mod,
        "addf" => Func::Addf,
        "subf" => Func::Subf,
        "mulf" => Func::Mulf,
        "divf" => Func::Divf,
        "max" => Func::Max,
        "min" => Func::Min,
        "maxf" => Func::Maxf,
        "minf" => Func::Minf,
        "ceil" => Func::Ceil,
        "floor" => Func::Floor,
        "round" => Func::Round,
        "bytes" => Func::Bytes,
        "duration" | "duration_seconds" => Func::Duration,
        "unixEpoch" => Func::UnixEpoch,
        "unixEpochMillis" => Func::UnixEpochMillis,
        "unixEpochNanos" => Func::UnixEpochNanos,
        "unixToTime" => Func::UnixToTime,
        "alignLeft" => Func::AlignLeft,
        "alignRight" => Func::AlignRight,
        "urlencode" | "urlquery" => Func::Urlencode,
        "urldecode" => Func::Urldecode,
        _ => return None,
    })
}

#[derive(Clone, Debug)]
enum Arg {
    Func(Func),
    Field(String),
    Dot,
    Lit(Val),
    Sub(Pipeline),
}

#[derive(Clone, Debug)]
struct Pipeline {
    cmds: Vec<Vec<Arg>>,
}

#[derive(Clone, Debug)]
enum Node {
    Text(String),
    Action(Pipeline),
    If {
        branches: Vec<(Pipeline, Vec<Node>)>,
        otherwise: Vec<Node>,
    },
    With {
        pipe: Pipeline,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

/// A parsed template.
#[derive(Clone, Debug)]
pub struct Template {
    nodes: Vec<Node>,
    uses_line: bool,
    fields: Vec<String>,
}

// ---------- lexing of one action ----------

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Field(String),
    Dot,
    Str(String),
    Num(Val),
    Pipe,
    Open,
    Close,
}

fn lex_action(src: &str) -> Result<Vec<Tok>, String> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'|' => {
                out.push(Tok::Pipe);
                i += 1;
            }
            b'(' => {
                out.push(Tok::Open);
                i += 1;
            }
            b')' => {
                out.push(Tok::Close);
                i += 1;
            }
            b'"' => {
                let mut j = i + 1;
                while j < b.len() && b[j] != b'"' {
                    if b[j] == b'\\' {
                        j += 1;
                    }
                    j += 1;
                }
                if j >= b.len() {
                    return Err("unterminated quoted string".to_owned());
                }
                let (s, _) = lode_push::labels::unquote_go(&src[i..=j])
                    .map_err(|(_, e)| format!("bad string literal: {e}"))?;
                out.push(Tok::Str(s));
                i = j + 1;
            }
            b'`' => {
                let end = src[i + 1..]
                    .find('`')
                    .ok_or_else(|| "unterminated raw string".to_owned())?;
                out.push(Tok::Str(src[i + 1..i + 1 + end].to_owned()));
                i += end + 2;
            }
            b'.' => {
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                if j == i + 1 {
                    out.push(Tok::Dot);
                } else {
                    out.push(Tok::Field(src[i + 1..j].to_owned()));
                }
                i = j;
            }
            b'-' | b'+' | b'0'..=b'9' => {
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'.') {
                    j += 1;
                }
                let text = &src[i..j];
                let v = if let Ok(n) = text.parse::<i64>() {
                    Val::Int(n)
                } else if let Ok(f) = text.parse::<f64>() {
                    Val::Float(f)
                } else {
                    return Err(format!("bad number syntax: {text:?}"));
                };
                out.push(Tok::Num(v));
                i = j;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                out.push(Tok::Ident(src[i..j].to_owned()));
                i = j;
            }
            _ => {
                return Err(format!(
                    "unexpected {:?} in command",
                    src[i..].chars().next().unwrap_or(' ')
                ))
            }
        }
    }
    Ok(out)
}

fn parse_pipeline(toks: &[Tok], pos: &mut usize, nested: bool) -> Result<Pipeline, String> {
    let mut cmds = Vec::new();
    let mut cmd: Vec<Arg> = Vec::new();
    while let Some(t) = toks.get(*pos) {
        *pos += 1;
        match t {
            Tok::Pipe => {
                if cmd.is_empty() {
                    return Err("missing command before '|'".to_owned());
                }
                cmds.push(std::mem::take(&mut cmd));
            }
            Tok::Close if nested => {
                if !cmd.is_empty() {
                    cmds.push(cmd);
                }
                if cmds.is_empty() {
                    return Err("empty parenthesised pipeline".to_owned());
                }
                return Ok(Pipeline { cmds });
            }
            Tok::Close => return Err("unexpected right paren".to_owned()),
            Tok::Open => cmd.push(Arg::Sub(parse_pipeline(toks, pos, true)?)),
            Tok::Dot => cmd.push(Arg::Dot),
            Tok::Field(f) => cmd.push(Arg::Field(f.clone())),
            Tok::Str(s) => cmd.push(Arg::Lit(Val::Str(s.clone()))),
            Tok::Num(v) => cmd.push(Arg::Lit(v.clone())),
            Tok::Ident(id) => match id.as_str() {
                "true" => cmd.push(Arg::Lit(Val::Bool(true))),
                "false" => cmd.push(Arg::Lit(Val::Bool(false))),
                "nil" => cmd.push(Arg::Lit(Val::Nil)),
                _ => match lookup_func(id) {
                    Some(f) => cmd.push(Arg::Func(f)),
                    None => return Err(format!("function {id:?} not defined")),
                },
            },
        }
    }
    if nested {
        return Err("unclosed left paren".to_owned());
    }
    if !cmd.is_empty() {
        cmds.push(cmd);
    }
    if cmds.is_empty() {
        return Err("missing value for command".to_owned());
    }
    Ok(Pipeline { cmds })
}

fn pipeline_of(src: &str) -> Result<Pipeline, String> {
    let toks = lex_action(src)?;
    let mut pos = 0;
    parse_pipeline(&toks, &mut pos, false)
}

enum Item {
    Text(String),
    Action(String),
}

fn split_items(src: &str) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut rest = src;
    let mut trim_next_text = false;
    while let Some(open) = rest.find("{{") {
        let mut text = &rest[..open];
        if trim_next_text {
            text = text.trim_start();
        }
        let after = &rest[open + 2..];
        let trim_left =
            after.starts_with("- ") || after.starts_with("-\t") || after.starts_with("-\n");
        if trim_left {
            text = text.trim_end();
        }
        items.push(Item::Text(text.to_owned()));
        let body_start = if trim_left { 1 } else { 0 };
        let close =
            find_action_end(&after[body_start..]).ok_or_else(|| "unclosed action".to_owned())?;
        let mut body = &after[body_start..body_start + close];
        trim_next_text = false;
        if body.ends_with(" -") || body.ends_with("\t-") || body.ends_with("\n-") {
            body = &body[..body.len() - 1];
            trim_next_text = true;
        }
        items.push(Item::Action(body.trim().to_owned()));
        rest = &after[body_start + close + 2..];
    }
    let text = if trim_next_text {
        rest.trim_start()
    } else {
        rest
    };
    items.push(Item::Text(text.to_owned()));
    Ok(items)
}

// The end of an action, skipping `}}` inside string literals.
fn find_action_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i + 1 < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            b'}' if b[i + 1] == b'}' => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

#[allow(clippy::enum_variant_names)] // `End` is the `{{end}}` action, not the enum's name.
enum End {
    Eof,
    Else(Option<Pipeline>),
    End,
}

fn parse_nodes(items: &mut std::vec::IntoIter<Item>) -> Result<(Vec<Node>, End), String> {
    let mut nodes = Vec::new();
    while let Some(item) = items.next() {
        match item {
            Item::Text(t) => {
                if !t.is_empty() {
                    nodes.push(Node::Text(t));
                }
            }
            Item::Action(a) => {
                if a.starts_with("/*") {
                    continue;
                }
                let (word, rest) = match a.split_once(|c: char| c.is_whitespace()) {
                    Some((w, r)) => (w, r.trim()),
                    None => (a.as_str(), ""),
                };
                match word {
                    "end" => return Ok((nodes, End::End)),
                    "else" => {
                        let cond = match rest.strip_prefix("if") {
                            Some(c) if c.starts_with(char::is_whitespace) => Some(pipeline_of(c)?),
                            _ if rest.is_empty() => None,
                            _ => return Err(format!("unexpected {rest:?} after else")),
                        };
                        return Ok((nodes, End::Else(cond)));
                    }
                    "if" => {
                        let mut branches = Vec::new();
                        let mut cond = pipeline_of(rest)?;
                        let otherwise;
                        loop {
                            let (body, end) = parse_nodes(items)?;
                            branches.push((cond, body));
                            match end {
                                End::End => {
                                    otherwise = Vec::new();
                                    break;
                                }
                                End::Else(Some(next)) => cond = next,
                                End::Else(None) => {
                                    let (body, end) = parse_nodes(items)?;
                                    if !matches!(end, End::End) {
                                        return Err("expected end after else".to_owned());
                                    }
                                    otherwise = body;
                                    break;
                                }
                                End::Eof => return Err("unexpected EOF in if".to_owned()),
                            }
                        }
                        nodes.push(Node::If {
                            branches,
                            otherwise,
                        });
                    }
                    "with" => {
                        let pipe = pipeline_of(rest)?;
                        let (body, end) = parse_nodes(items)?;
                        let otherwise = match end {
                            End::End => Vec::new(),
                            End::Else(None) => {
                                let (o, end) = parse_nodes(items)?;
                                if !matches!(end, End::End) {
                                    return Err("expected end after else".to_owned());
                                }
                                o
                            }
                            _ => return Err("unexpected EOF in with".to_owned()),
                        };
                        nodes.push(Node::With {
                            pipe,
                            body,
                            otherwise,
                        });
                    }
                    "range" | "define" | "template" | "block" => {
                        return Err(format!("{word:?} actions are not supported"))
                    }
                    _ => nodes.push(Node::Action(pipeline_of(&a)?)),
                }
            }
        }
    }
    Ok((nodes, End::Eof))
}

fn visit_args(nodes: &[Node], f: &mut impl FnMut(&Arg)) {
    fn pipe(p: &Pipeline, f: &mut impl FnMut(&Arg)) {
        for c in &p.cmds {
            for a in c {
                f(a);
                if let Arg::Sub(s) = a {
                    pipe(s, f);
                }
            }
        }
    }
    for n in nodes {
        match n {
            Node::Text(_) => {}
            Node::Action(p) => pipe(p, f),
            Node::If {
                branches,
                otherwise,
            } => {
                for (c, b) in branches {
                    pipe(c, f);
                    visit_args(b, f);
                }
                visit_args(otherwise, f);
            }
            Node::With {
                pipe: p,
                body,
                otherwise,
            } => {
                pipe(p, f);
                visit_args(body, f);
                visit_args(otherwise, f);
            }
        }
    }
}

impl Template {
    /// Parses a template; unknown functions and malformed actions are errors.
    pub fn parse(src: &str) -> Result<Self, TemplateError> {
        let err = |reason: String| TemplateError {
            template: src.to_owned(),
            reason,
        };
        let items = split_items(src).map_err(err)?;
        let (nodes, end) = parse_nodes(&mut items.into_iter()).map_err(err)?;
        if !matches!(end, End::Eof) {
            return Err(err("unexpected {{end}} or {{else}}".to_owned()));
        }
        let mut uses_line = false;
        let mut fields = Vec::new();
        visit_args(&nodes, &mut |a| match a {
            Arg::Func(Func::Line) => uses_line = true,
            Arg::Field(f) => fields.push(f.clone()),
            // `.` hands the whole label map to a function: treat as reading every label.
            Arg::Dot => fields.push("*".to_owned()),
            _ => {}
        });
        Ok(Template {
            nodes,
            uses_line,
            fields,
        })
    }

    /// Whether the template reads `__line__`.
    pub fn uses_line(&self) -> bool {
        self.uses_line
    }

    /// Label names the template reads (`*` when it reads them all).
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// Renders the template; a runtime error (bad argument, bad regex) is returned as
    /// text for `__error_details__`.
    pub fn render(&self, data: &dyn TemplateData) -> Result<String, String> {
        let mut out = String::new();
        render_nodes(&self.nodes, data, &mut out)?;
        Ok(out)
    }
}

fn render_nodes(nodes: &[Node], data: &dyn TemplateData, out: &mut String) -> Result<(), String> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Action(p) => out.push_str(&eval_pipeline(p, data)?.display()),
            Node::If {
                branches,
                otherwise,
            } => {
                let mut done = false;
                for (cond, body) in branches {
                    if eval_pipeline(cond, data)?.truthy() {
                        render_nodes(body, data, out)?;
                        done = true;
                        break;
                    }
                }
                if !done {
                    render_nodes(otherwise, data, out)?;
                }
            }
            Node::With {
                pipe,
                body,
                otherwise,
            } => {
                if eval_pipeline(pipe, data)?.truthy() {
                    render_nodes(body, data, out)?;
                } else {
                    render_nodes(otherwise, data, out)?;
                }
            }
        }
    }
    Ok(())
}

fn eval_arg(a: &Arg, data: &dyn TemplateData) -> Result<Val, String> {
    Ok(match a {
        Arg::Field(f) => Val::Str(data.label(f).unwrap_or("").to_owned()),
        Arg::Dot => Val::Str(String::new()),
        Arg::Lit(v) => v.clone(),
        Arg::Sub(p) => eval_pipeline(p, data)?,
        Arg::Func(f) => call(*f, Vec::new(), data)?,
    })
}

fn eval_pipeline(p: &Pipeline, data: &dyn TemplateData) -> Result<Val, String> {
    let mut piped: Option<Val> = None;
    for cmd in &p.cmds {
        let Some(first) = cmd.first() else {
            return Err("empty command".to_owned());
        };
        let val = match first {
            Arg::Func(f) => {
                let mut args = Vec::with_capacity(cmd.len());
                for a in &cmd[1..] {
                    args.push(eval_arg(a, data)?);
                }
                if let Some(v) = piped.take() {
                    args.push(v);
                }
                call(*f, args, data)?
            }
            other => {
                if cmd.len() > 1 || piped.is_some() {
                    return Err("can't give argument to non-function".to_owned());
                }
                eval_arg(other, data)?
            }
        };
        piped = Some(val);
    }
    Ok(piped.unwrap_or(Val::Nil))
}

fn want(args: &[Val], n: usize, name: &str) -> Result<(), String> {
    if args.len() != n {
        return Err(format!(
            "wrong number of args for {name}: want {n} got {}",
            args.len()
        ));
    }
    Ok(())
}

fn s(v: &Val) -> String {
    v.display()
}

fn compare(a: &Val, b: &Val) -> Result<std::cmp::Ordering, String> {
    use std::cmp::Ordering;
    match (a, b) {
        (Val::Str(x), Val::Str(y)) => Ok(x.cmp(y)),
        (Val::Int(x), Val::Int(y)) => Ok(x.cmp(y)),
        (Val::Int(_) | Val::Float(_), Val::Int(_) | Val::Float(_)) => Ok(a
            .to_f64()
            .partial_cmp(&b.to_f64())
            .unwrap_or(Ordering::Equal)),
        (Val::Bool(x), Val::Bool(y)) => Ok(x.cmp(y)),
        _ => Err("incompatible types for comparison".to_owned()),
    }
}

fn regex_of(pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|e| format!("error parsing regexp: {e}"))
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

fn url_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("invalid URL escape {:?}", s.get(i..).unwrap_or("")))?;
                out.push(hex);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn call(f: Func, args: Vec<Val>, data: &dyn TemplateData) -> Result<Val, String> {
    use Func::*;
    Ok(match f {
        Line => Val::Str(data.line().to_owned()),
        Timestamp => Val::Time(data.timestamp_ns()),
        And => args
            .iter()
            .find(|v| !v.truthy())
            .or(args.last())
            .cloned()
            .unwrap_or(Val::Nil),
        Or => args
            .iter()
            .find(|v| v.truthy())
            .or(args.last())
            .cloned()
            .unwrap_or(Val::Nil),
        Not => {
            want(&args, 1, "not")?;
            Val::Bool(!args[0].truthy())
        }
        Eq => {
            if args.len() < 2 {
                return Err("missing argument for comparison".to_owned());
            }
            let mut any = false;
            for b in &args[1..] {
                if compare(&args[0], b)? == std::cmp::Ordering::Equal {
                    any = true;
                }
            }
            Val::Bool(any)
        }
        Ne | Lt | Le | Gt | Ge => {
            want(&args, 2, "comparison")?;
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
            want(&args, 1, "len")?;
            match &args[0] {
                Val::Str(x) => Val::Int(x.len() as i64),
                other => return Err(format!("len of type {}", other.type_name())),
            }
        }
        Print => Val::Str(go_print(&args, false)),
        Println => Val::Str(go_print(&args, true)),
        Printf => {
            let Some((fmt, rest)) = args.split_first() else {
                return Err("wrong number of args for printf: want at least 1 got 0".to_owned());
            };
            Val::Str(go_sprintf(&s(fmt), rest))
        }
        ToUpper => {
            want(&args, 1, "ToUpper")?;
            Val::Str(s(&args[0]).to_uppercase())
        }
        ToLower => {
            want(&args, 1, "ToLower")?;
            Val::Str(s(&args[0]).to_lowercase())
        }
        Title => {
            want(&args, 1, "title")?;
            let text = s(&args[0]);
            let mut out = String::with_capacity(text.len());
            let mut at_start = true;
            for c in text.chars() {
                if at_start && c.is_alphabetic() {
                    out.extend(c.to_uppercase());
                } else {
                    out.push(c);
                }
                at_start = !c.is_alphanumeric();
            }
            Val::Str(out)
        }
        ReplaceGo => {
            want(&args, 4, "Replace")?;
            let (src, old, new, n) = (s(&args[0]), s(&args[1]), s(&args[2]), args[3].to_i64());
            Val::Str(if n < 0 {
                src.replace(&old, &new)
            } else {
                src.replacen(&old, &new, usize::try_from(n).unwrap_or(0))
            })
        }
        ReplaceSprig => {
            want(&args, 3, "replace")?;
            Val::Str(s(&args[2]).replace(&s(&args[0]), &s(&args[1])))
        }
        TrimGo | TrimLeft | TrimRight => {
            want(&args, 2, "Trim")?;
            let cut: Vec<char> = s(&args[1]).chars().collect();
            let src = s(&args[0]);
            Val::Str(match f {
                TrimGo => src.trim_matches(cut.as_slice()).to_owned(),
                TrimLeft => src.trim_start_matches(cut.as_slice()).to_owned(),
                _ => src.trim_end_matches(cut.as_slice()).to_owned(),
            })
        }
        TrimPrefixGo | TrimSuffixGo => {
            want(&args, 2, "TrimPrefix")?;
            let (src, affix) = (s(&args[0]), s(&args[1]));
            Val::Str(trim_affix(&src, &affix, f == TrimPrefixGo))
        }
        TrimPrefixSprig | TrimSuffixSprig => {
            want(&args, 2, "trimPrefix")?;
            let (affix, src) = (s(&args[0]), s(&args[1]));
            Val::Str(trim_affix(&src, &affix, f == TrimPrefixSprig))
        }
        TrimSpace | TrimSprig => {
            want(&args, 1, "trim")?;
            Val::Str(s(&args[0]).trim().to_owned())
        }
        TrimAll => {
            want(&args, 2, "trimAll")?;
            let cut: Vec<char> = s(&args[0]).chars().collect();
            Val::Str(s(&args[1]).trim_matches(cut.as_slice()).to_owned())
        }
        RegexReplaceAll | RegexReplaceAllLiteral => {
            want(&args, 3, "regexReplaceAll")?;
            let re = regex_of(&s(&args[0]))?;
            let src = s(&args[1]);
            let repl = s(&args[2]);
            Val::Str(if f == RegexReplaceAll {
                re.replace_all(&src, repl.as_str()).into_owned()
            } else {
                re.replace_all(&src, regex::NoExpand(&repl)).into_owned()
            })
        }
        Count => {
            want(&args, 2, "count")?;
            let re = regex_of(&s(&args[0]))?;
            Val::Int(re.find_iter(&s(&args[1])).count() as i64)
        }
        Default => {
            if args.is_empty() || args.len() > 2 {
                return Err("wrong number of args for default: want 1 or 2".to_owned());
            }
            match args.get(1) {
                Some(given) if given.truthy() => given.clone(),
                _ => args[0].clone(),
            }
        }
        Substr => {
            want(&args, 3, "substr")?;
            let (start, end, src) = (args[0].to_i64(), args[1].to_i64(), s(&args[2]));
            let len = src.len() as i64;
            let (start, end) = if start < 0 {
                (0, end.min(len))
            } else if end < 0 || end > len {
                (start.min(len), len)
            } else {
                (start.min(end), end)
            };
            Val::Str(
                src.get(usize::try_from(start).unwrap_or(0)..usize::try_from(end).unwrap_or(0))
                    .unwrap_or("")
                    .to_owned(),
            )
        }
        Trunc => {
            want(&args, 2, "trunc")?;
            let (n, src) = (args[0].to_i64(), s(&args[1]));
            let len = src.len() as i64;
            let out = if n < 0 {
                src.get(usize::try_from((len + n).max(0)).unwrap_or(0)..)
            } else {
                src.get(..usize::try_from(n.min(len)).unwrap_or(0))
            };
            Val::Str(out.unwrap_or(&src).to_owned())
        }
        Contains => {
            want(&args, 2, "contains")?;
            Val::Bool(s(&args[1]).contains(&s(&args[0])))
        }
        HasPrefix => {
            want(&args, 2, "hasPrefix")?;
            Val::Bool(s(&args[1]).starts_with(&s(&args[0])))
        }
        HasSuffix => {
            want(&args, 2, "hasSuffix")?;
            Val::Bool(s(&args[1]).ends_with(&s(&args[0])))
        }
        Repeat => {
            want(&args, 2, "repeat")?;
            let n = usize::try_from(args[0].to_i64()).unwrap_or(0).min(10_000);
            Val::Str(s(&args[1]).repeat(n))
        }
        Int => {
            want(&args, 1, "int")?;
            Val::Int(args[0].to_i64())
        }
        Float64 => {
            want(&args, 1, "float64")?;
            Val::Float(args[0].to_f64())
        }
        Add | Mul => {
            let mut acc = if f == Add { 0i64 } else { 1i64 };
            for a in &args {
                acc = if f == Add {
                    acc.wrapping_add(a.to_i64())
                } else {
                    acc.wrapping_mul(a.to_i64())
                };
            }
            Val::Int(acc)
        }
        Sub | Div | Mod => {
            want(&args, 2, "sub")?;
            let (a, b) = (args[0].to_i64(), args[1].to_i64());
            if (f == Div || f == Mod) && b == 0 {
                return Err("integer divide by zero".to_owned());
            }
            Val::Int(match f {
                Sub => a.wrapping_sub(b),
                Div => a.wrapping_div(b),
                _ => a.wrapping_rem(b),
            })
        }
        Addf | Mulf => {
            let mut acc = if f == Addf { 0.0 } else { 1.0 };
            for a in &args {
                if f == Addf {
                    acc += a.to_f64();
                } else {
                    acc *= a.to_f64();
                }
            }
            Val::Float(acc)
        }
        Subf | Divf => {
            let Some((first, rest)) = args.split_first() else {
                return Err("wrong number of args: want at least 1".to_owned());
            };
            let mut acc = first.to_f64();
            for a in rest {
                if f == Subf {
                    acc -= a.to_f64();
                } else {
                    acc /= a.to_f64();
                }
            }
            Val::Float(acc)
        }
        Max | Min => {
            let Some(first) = args.first() else {
                return Err("wrong number of args: want at least 1".to_owned());
            };
            let mut acc = first.to_i64();
            for a in &args[1..] {
                acc = if f == Max {
                    acc.max(a.to_i64())
                } else {
                    acc.min(a.to_i64())
                };
            }
            Val::Int(acc)
        }
        Maxf | Minf => {
            let Some(first) = args.first() else {
                return Err("wrong number of args: want at least 1".to_owned());
            };
            let mut acc = first.to_f64();
            for a in &args[1..] {
                acc = if f == Maxf {
                    acc.max(a.to_f64())
                } else {
                    acc.min(a.to_f64())
                };
            }
            Val::Float(acc)
        }
        Ceil | Floor => {
            want(&args, 1, "ceil")?;
            let v = args[0].to_f64();
            Val::Float(if f == Ceil { v.ceil() } else { v.floor() })
        }
        Round => {
            if args.is_empty() {
                return Err("wrong number of args for round".to_owned());
            }
            let places = args.get(1).map(Val::to_i64).unwrap_or(0);
            let pow = 10f64.powi(i32::try_from(places).unwrap_or(0));
            Val::Float((args[0].to_f64() * pow).round() / pow)
        }
        Bytes => {
            want(&args, 1, "bytes")?;
            Val::Float(parse_bytes(&s(&args[0]))?)
        }
        Duration => {
            want(&args, 1, "duration")?;
            Val::Float(parse_duration_seconds(&s(&args[0]))?)
        }
        UnixEpoch | UnixEpochMillis | UnixEpochNanos => {
            want(&args, 1, "unixEpoch")?;
            let ns = match &args[0] {
                Val::Time(ns) => *ns,
                other => return Err(format!("expected time.Time, got {}", other.type_name())),
            };
            Val::Int(match f {
                UnixEpoch => ns.div_euclid(1_000_000_000),
                UnixEpochMillis => ns.div_euclid(1_000_000),
                _ => ns,
            })
        }
        UnixToTime => {
            want(&args, 1, "unixToTime")?;
            let text = s(&args[0]);
            let n: i64 = text
                .parse()
                .map_err(|_| format!("unable to parse {text:?} as a unix timestamp"))?;
            // Loki picks the unit from the number of digits.
            let ns = match text.trim_start_matches('-').len() {
                0..=10 => n.saturating_mul(1_000_000_000),
                11..=13 => n.saturating_mul(1_000_000),
                14..=16 => n.saturating_mul(1_000),
                _ => n,
            };
            Val::Time(ns)
        }
        AlignLeft | AlignRight => {
            want(&args, 2, "alignLeft")?;
            let n = usize::try_from(args[0].to_i64()).unwrap_or(0);
            let src = s(&args[1]);
            let len = src.chars().count();
            Val::Str(if len >= n {
                src.chars().take(n).collect()
            } else if f == AlignLeft {
                format!("{src}{}", " ".repeat(n - len))
            } else {
                format!("{}{src}", " ".repeat(n - len))
            })
        }
        Urlencode => {
            want(&args, 1, "urlencode")?;
            Val::Str(url_encode(&s(&args[0])))
        }
        Urldecode => {
            want(&args, 1, "urldecode")?;
            Val::Str(url_decode(&s(&args[0]))?)
        }
    })
}

fn trim_affix(src: &str, affix: &str, prefix: bool) -> String {
    if prefix {
        src.strip_prefix(affix).unwrap_or(src).to_owned()
    } else {
        src.strip_suffix(affix).unwrap_or(src).to_owned()
    }
}

fn go_print(args: &[Val], ln: bool) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        // Print adds spaces between operands when neither is a string; Println always.
        if i > 0 && (ln || !(matches!(a, Val::Str(_)) || matches!(args[i - 1], Val::Str(_)))) {
            out.push(' ');
        }
        out.push_str(&a.display());
    }
    if ln {
        out.push('\n');
    }
    out
}

struct Spec {
    minus: bool,
    plus: bool,
    zero: bool,
    space: bool,
    sharp: bool,
    width: Option<usize>,
    prec: Option<usize>,
}

fn pad(spec: &Spec, body: String, numeric: bool) -> String {
    let Some(w) = spec.width else {
        return body;
    };
    let len = body.chars().count();
    if len >= w {
        return body;
    }
    let fill = w - len;
    if spec.minus {
        format!("{body}{}", " ".repeat(fill))
    } else if spec.zero {
        if numeric && (body.starts_with('-') || body.starts_with('+')) {
            let (sign, digits) = body.split_at(1);
            format!("{sign}{}{digits}", "0".repeat(fill))
        } else {
            format!("{}{body}", "0".repeat(fill))
        }
    } else {
        format!("{}{body}", " ".repeat(fill))
    }
}

fn sign(spec: &Spec, negative: bool, body: String) -> String {
    if negative {
        format!("-{body}")
    } else if spec.plus {
        format!("+{body}")
    } else if spec.space {
        format!(" {body}")
    } else {
        body
    }
}

fn format_one(verb: char, spec: &Spec, arg: &Val) -> Option<String> {
    let out = match (verb, arg) {
        ('v', _) => pad(spec, arg.display(), false),
        ('s', Val::Str(x)) => {
            let x = match spec.prec {
                Some(p) => x.chars().take(p).collect(),
                None => x.clone(),
            };
            pad(spec, x, false)
        }
        ('q', Val::Str(x)) => pad(spec, format!("{x:?}"), false),
        ('d', Val::Int(i)) => pad(spec, sign(spec, *i < 0, i.unsigned_abs().to_string()), true),
        ('x' | 'X', Val::Int(i)) => {
            let h = if verb == 'x' {
                format!("{:x}", i.unsigned_abs())
            } else {
                format!("{:X}", i.unsigned_abs())
            };
            let h = if spec.sharp { format!("0x{h}") } else { h };
            pad(spec, sign(spec, *i < 0, h), true)
        }
        ('x' | 'X', Val::Str(x)) => {
            let mut h = String::new();
            for b in x.bytes() {
                let _ = if verb == 'x' {
                    write!(h, "{b:02x}")
                } else {
                    write!(h, "{b:02X}")
                };
            }
            pad(spec, h, false)
        }
        ('f' | 'F' | 'e' | 'g', Val::Float(_) | Val::Int(_)) => {
            let v = arg.to_f64();
            let p = spec.prec;
            let body = match verb {
                'e' => format!("{:.*e}", p.unwrap_or(6), v.abs()),
                'g' => match p {
                    Some(p) => format!("{:.*}", p, v.abs()),
                    None => format_go_float(v.abs()),
                },
                _ => format!("{:.*}", p.unwrap_or(6), v.abs()),
            };
            pad(
                spec,
                sign(spec, v.is_sign_negative() && v != 0.0, body),
                true,
            )
        }
        ('t', Val::Bool(b)) => pad(spec, b.to_string(), false),
        ('c', Val::Int(i)) => pad(
            spec,
            u32::try_from(*i)
                .ok()
                .and_then(char::from_u32)
                .unwrap_or('\u{FFFD}')
                .to_string(),
            false,
        ),
        _ => return None,
    };
    Some(out)
}

/// Go's `fmt.Sprintf` for the verbs templates use, with Go's `%!verb(type=value)` output
/// for mismatched arguments.
fn go_sprintf(fmt: &str, args: &[Val]) -> String {
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    let mut next_arg = 0;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = Spec {
            minus: false,
            plus: false,
            zero: false,
            space: false,
            sharp: false,
            width: None,
            prec: None,
        };
        while let Some(&f) = chars.peek() {
            match f {
                '-' => spec.minus = true,
                '+' => spec.plus = true,
                '0' => spec.zero = true,
                ' ' => spec.space = true,
                '#' => spec.sharp = true,
                _ => break,
            }
            chars.next();
        }
        let mut digits = String::new();
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(d);
            chars.next();
        }
        spec.width = digits.parse().ok();
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut digits = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(d);
                chars.next();
            }
            spec.prec = Some(digits.parse().unwrap_or(0));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next_arg) else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        next_arg += 1;
        match format_one(verb, &spec, arg) {
            Some(s) => out.push_str(&s),
            None => {
                let shown = format_one('v', &spec, arg).unwrap_or_default();
                let _ = write!(out, "%!{verb}({}={shown})", arg.type_name());
            }
        }
    }
    if next_arg < args.len() {
        out.push_str("%!(EXTRA ");
        for (i, a) in args[next_arg..].iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{}={}", a.type_name(), a.display());
        }
        out.push(')');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Data(Vec<(&'static str, &'static str)>);

    impl TemplateData for Data {
        fn label(&self, name: &str) -> Option<&str> {
            self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
        }
        fn line(&self) -> &str {
            "the line"
        }
        fn timestamp_ns(&self) -> i64 {
            1_767_225_600_500_000_000
        }
    }

    fn render(t: &str, labels: Vec<(&'static str, &'static str)>) -> String {
        Template::parse(t).unwrap().render(&Data(labels)).unwrap()
    }

    #[test]
    fn fields_render_and_missing_labels_render_empty() {
        assert_eq!(
            render(
                "{{.method}} {{.path}} took {{.nope}}!",
                vec![("method", "GET"), ("path", "/a")]
            ),
            "GET /a took !"
        );
    }

    #[test]
    fn pipes_pass_the_value_as_last_argument() {
        assert_eq!(
            render(
                r#"{{ .op | ToUpper }} {{ .x | replace "a" "b" }}"#,
                vec![("op", "complete"), ("x", "aa")]
            ),
            "COMPLETE bb"
        );
        assert_eq!(render(r#"{{ .missing | default "none" }}"#, vec![]), "none");
        assert_eq!(
            render(r#"{{ substr 0 3 .x }}"#, vec![("x", "abcdef")]),
            "abc"
        );
        assert_eq!(
            render(
                r#"{{ regexReplaceAll "(\\d+)" .x "<$1>" }}"#,
                vec![("x", "a12b")]
            ),
            "a<12>b"
        );
    }

    #[test]
    fn printf_follows_go_including_bad_verb_output() {
        assert_eq!(
            render(
                r#"{{ printf "%05d" .latency_ms }}"#,
                vec![("latency_ms", "1022")]
            ),
            "%!d(string=01022)"
        );
        assert_eq!(
            render(r#"{{ printf "%05d|%-4s|%.2f" 42 "ab" 3.14159 }}"#, vec![]),
            "00042|ab  |3.14"
        );
        assert_eq!(render(r#"{{ printf "%d" }}"#, vec![]), "%!d(MISSING)");
    }

    #[test]
    fn if_else_and_trim_markers() {
        let t =
            r#"{{ if eq .level "error" -}} BAD {{- else if .level -}} ok {{- else }}none{{ end }}"#;
        assert_eq!(render(t, vec![("level", "error")]), "BAD");
        assert_eq!(render(t, vec![("level", "info")]), "ok");
        assert_eq!(render(t, vec![]), "none");
        assert_eq!(
            render("{{ if contains \"x\" .a }}y{{end}}", vec![("a", "axb")]),
            "y"
        );
    }

    #[test]
    fn line_and_timestamp_functions_read_the_entry() {
        assert_eq!(render("{{ __line__ }}", vec![]), "the line");
        assert_eq!(
            render("{{ __timestamp__ | unixEpoch }}", vec![]),
            "1767225600"
        );
        assert_eq!(
            render("{{ __timestamp__ }}", vec![]),
            "2026-01-01 00:00:00.5 +0000 UTC"
        );
    }

    #[test]
    fn unknown_functions_and_unclosed_actions_fail_to_parse() {
        assert!(Template::parse("{{ nosuchfunc .a }}").is_err());
        assert!(Template::parse("{{ .a ").is_err());
        assert!(Template::parse("{{ if .a }}x").is_err());
    }

    #[test]
    fn runtime_errors_are_reported_not_panicked() {
        let t = Template::parse("{{ div 1 0 }}").unwrap();
        assert!(t.render(&Data(vec![])).is_err());
    }
}
