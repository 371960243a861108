//! Go's `text/template` for `line_format` and `label_format`, with exactly Loki's
//! function set.
//!
//! Owns parsing a template (an unknown function or variable is a parse error, raised
//! when the pipeline is built, as in Loki) and rendering it over one line's labels with
//! Loki's `missingkey=zero`: the data is the `map[string]string` of the line's labels,
//! so `{{.missing}}` renders empty. Supported: field chains, variables (`$x := …`,
//! `$x = …`, `$`), pipelines with `|`, parenthesised pipelines with field access,
//! `{{- -}}` trimming, comments, `if`/`else if`/`else`, `with`/`else with`, `range` (with
//! `else`, `break`, `continue`) over maps, lists and integers, and `define`/`template`/
//! `block`, and `time.Time` methods (`__timestamp__.Unix`, `(…).Format "2006"`). A
//! runtime error is returned as text for `__error_details__`; the caller
//! keeps the line and sets `TemplateFormatErr`. It does not own which labels exist (the
//! caller passes a [`TemplateData`]); functions live in `funcs`, Go's `fmt` in `gofmt`,
//! time values and layouts in `gotime`.

mod funcs;
mod gofmt;
mod gotime;

use std::collections::BTreeMap;
use std::sync::Arc;

use funcs::Func;
use gotime::GoTime;

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
    /// Every label, sorted by name (what `{{ . }}`, `range` and `len .` see).
    fn labels(&self) -> Vec<(String, String)>;
    /// The current line (`__line__`).
    fn line(&self) -> &str;
    /// The entry timestamp in nanoseconds (`__timestamp__`).
    fn timestamp_ns(&self) -> i64;
}

/// A value while rendering, named by the Go type it stands for.
#[derive(Clone, Debug)]
enum Val {
    Str(String),
    /// Go's `int`/`int64`.
    Int(i64),
    Float(f64),
    Bool(bool),
    Time(GoTime),
    /// A nil interface: `fromJson` of bad JSON, a missing key of a JSON object.
    Nil,
    /// A JSON object (`map[string]interface {}`).
    Map(Arc<BTreeMap<String, Val>>),
    /// A JSON array (`[]interface {}`).
    List(Arc<Vec<Val>>),
    /// The labels (`map[string]string`), sorted by name.
    StrMap(Arc<Vec<(String, String)>>),
    /// The template data before it is needed as a whole: field access reads one label.
    Root,
}

impl Val {
    /// Go's template truth: non-zero, non-empty.
    fn truthy(&self) -> bool {
        match self {
            Val::Str(s) => !s.is_empty(),
            Val::Int(i) => *i != 0,
            Val::Float(f) => *f != 0.0,
            Val::Bool(b) => *b,
            Val::Time(_) | Val::Root => true,
            Val::Nil => false,
            Val::Map(m) => !m.is_empty(),
            Val::List(l) => !l.is_empty(),
            Val::StrMap(m) => !m.is_empty(),
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
            Val::Map(_) => "map[string]interface {}",
            Val::List(_) => "[]interface {}",
            Val::StrMap(_) | Val::Root => "map[string]string",
        }
    }

    /// Go's `%v`.
    fn display(&self) -> String {
        match self {
            Val::Str(s) => s.clone(),
            Val::Int(i) => i.to_string(),
            Val::Float(f) => gofmt::format_float(*f),
            Val::Bool(b) => b.to_string(),
            Val::Time(t) => t.go_string(),
            Val::Nil => "<nil>".to_owned(),
            Val::Map(m) => {
                let items: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("{k}:{}", v.display()))
                    .collect();
                format!("map[{}]", items.join(" "))
            }
            Val::List(l) => {
                let items: Vec<String> = l.iter().map(Val::display).collect();
                format!("[{}]", items.join(" "))
            }
            Val::StrMap(m) => {
                let items: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("map[{}]", items.join(" "))
            }
            Val::Root => "map[]".to_owned(),
        }
    }
}

// ---------- syntax ----------

#[derive(Clone, Debug)]
enum Arg {
    Func(Func),
    /// `.a.b`: fields of dot.
    Field(Vec<String>),
    Dot,
    /// `$x.a.b` (`$` alone is the template data).
    Var(String, Vec<String>),
    Lit(Val),
    /// `(pipeline).a.b`.
    Sub(Box<Pipeline>, Vec<String>),
}

#[derive(Clone, Debug)]
struct Pipeline {
    /// Variables declared (`:=`) or assigned (`=`) by this pipeline.
    decl: Vec<String>,
    assign: bool,
    cmds: Vec<Vec<Arg>>,
}

/// A condition and the nodes it guards.
type Branch = (Pipeline, Vec<Node>);

#[derive(Clone, Debug)]
enum Node {
    Text(String),
    Action(Pipeline),
    If {
        branches: Vec<Branch>,
        otherwise: Vec<Node>,
    },
    With {
        branches: Vec<Branch>,
        otherwise: Vec<Node>,
    },
    Range {
        pipe: Pipeline,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
    Template {
        name: String,
        pipe: Option<Pipeline>,
    },
    Break,
    Continue,
}

/// A parsed template.
#[derive(Clone, Debug)]
pub struct Template {
    nodes: Vec<Node>,
    defines: Arc<Vec<(String, Vec<Node>)>>,
    uses_line: bool,
    fields: Vec<String>,
}

// ---------- lexing of one action ----------

#[derive(Clone, Debug)]
enum Tok {
    Ident(String),
    Field(Vec<String>),
    /// A field chain glued to a closing parenthesis: `(…).a`.
    Chain(Vec<String>),
    Dot,
    Var(String, Vec<String>),
    Str(String),
    Num(Val),
    Pipe,
    Open,
    Close,
    Declare,
    Assign,
    Comma,
}

fn ident_end(b: &[u8], mut j: usize) -> usize {
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        j += 1;
    }
    j
}

/// `.a.b.c` starting at `i` (a `.`): the names and the end.
fn field_chain(src: &str, mut i: usize) -> (Vec<String>, usize) {
    let b = src.as_bytes();
    let mut names = Vec::new();
    while i < b.len() && b[i] == b'.' {
        let j = ident_end(b, i + 1);
        if j == i + 1 {
            break;
        }
        names.push(src[i + 1..j].to_owned());
        i = j;
    }
    (names, i)
}

fn number(text: &str) -> Result<Val, String> {
    if let Some(c) = text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
        let (s, _) = lode_push::labels::unquote_go(&format!("\"{c}\""))
            .map_err(|_| format!("bad character constant: {text}"))?;
        let mut chars = s.chars();
        return match (chars.next(), chars.next()) {
            (Some(ch), None) => Ok(Val::Int(i64::from(u32::from(ch)))),
            _ => Err(format!("bad character constant: {text}")),
        };
    }
    if let Some(i) = funcs::parse_go_int(text) {
        return Ok(Val::Int(i));
    }
    let looks_float = text
        .bytes()
        .all(|c| c.is_ascii_digit() || b"+-.eE_".contains(&c));
    match text.replace('_', "").parse::<f64>() {
        Ok(f) if looks_float => Ok(Val::Float(f)),
        _ => Err(format!("bad number syntax: {text:?}")),
    }
}

fn lex_action(src: &str) -> Result<Vec<Tok>, String> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
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
            b',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            b':' if b.get(i + 1) == Some(&b'=') => {
                out.push(Tok::Declare);
                i += 2;
            }
            b'=' => {
                out.push(Tok::Assign);
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
                    .ok_or_else(|| "unterminated raw quoted string".to_owned())?;
                out.push(Tok::Str(src[i + 1..i + 1 + end].to_owned()));
                i += end + 2;
            }
            b'\'' => {
                let mut j = i + 1;
                while j < b.len() && b[j] != b'\'' {
                    if b[j] == b'\\' {
                        j += 1;
                    }
                    j += 1;
                }
                if j >= b.len() {
                    return Err("unterminated character constant".to_owned());
                }
                out.push(Tok::Num(number(&src[i..=j])?));
                i = j + 1;
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let j = number_end(b, i);
                out.push(Tok::Num(number(&src[i..j])?));
                i = j;
            }
            b'.' => {
                // `(…).a`, `now.Unix`: a chain on the value before it.
                let glued = i > 0
                    && (b[i - 1] == b')' || b[i - 1] == b'_' || b[i - 1].is_ascii_alphanumeric());
                let (names, j) = field_chain(src, i);
                if names.is_empty() {
                    out.push(Tok::Dot);
                    i += 1;
                } else {
                    out.push(if glued {
                        Tok::Chain(names)
                    } else {
                        Tok::Field(names)
                    });
                    i = j;
                }
            }
            b'$' => {
                let j = ident_end(b, i + 1);
                let name = src[i..j].to_owned();
                let (chain, k) = field_chain(src, j);
                out.push(Tok::Var(name, chain));
                i = k;
            }
            b'-' | b'+' | b'0'..=b'9' => {
                let j = number_end(b, i);
                out.push(Tok::Num(number(&src[i..j])?));
                i = j;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let j = ident_end(b, i);
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

fn number_end(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < b.len()
        && (b[j].is_ascii_alphanumeric()
            || b[j] == b'.'
            || b[j] == b'_'
            || ((b[j] == b'+' || b[j] == b'-') && matches!(b[j - 1], b'e' | b'E' | b'p' | b'P')))
    {
        j += 1;
    }
    j
}

// ---------- parsing ----------

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
        let body_start = usize::from(trim_left);
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

// The end of an action, skipping `}}` inside string literals and comments.
fn find_action_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    if s.starts_with("/*") {
        let end = s.find("*/")?;
        return s[end + 2..].find("}}").map(|k| end + 2 + k);
    }
    while i + 1 < b.len() {
        match b[i] {
            q @ (b'"' | b'\'') => {
                i += 1;
                while i < b.len() && b[i] != q {
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

/// How a list of nodes ended.
#[allow(clippy::enum_variant_names)] // `End` is the `{{end}}` action, not the enum's name.
enum End {
    Eof,
    Else(Option<(String, Pipeline)>),
    End,
}

struct Parser {
    items: std::vec::IntoIter<Item>,
    /// Variables in scope, innermost last.
    vars: Vec<String>,
    defines: Vec<(String, Vec<Node>)>,
    /// Depth of enclosing `range`s (for `break`/`continue`).
    in_range: usize,
}

impl Parser {
    fn pipeline(&mut self, src: &str, allow_decl: usize) -> Result<Pipeline, String> {
        let toks = lex_action(src)?;
        let mut pos = 0;
        let mut decl = Vec::new();
        let mut assign = false;
        // `$x :=`, `$x =`, `$i, $e :=`.
        let mut k = 0;
        let mut names = Vec::new();
        while let Some(Tok::Var(name, chain)) = toks.get(k) {
            if !chain.is_empty() {
                break;
            }
            names.push(name.clone());
            match toks.get(k + 1) {
                Some(Tok::Comma) if names.len() < 2 => k += 2,
                Some(Tok::Declare) | Some(Tok::Assign) => {
                    if names.len() > allow_decl.max(1) {
                        return Err("too many declarations".to_owned());
                    }
                    assign = matches!(toks.get(k + 1), Some(Tok::Assign));
                    if assign {
                        for n in &names {
                            if !self.vars.contains(n) {
                                return Err(format!("undefined variable \"{n}\""));
                            }
                        }
                    }
                    decl = std::mem::take(&mut names);
                    pos = k + 2;
                    break;
                }
                _ => break,
            }
        }
        let mut p = self.parse_cmds(&toks, &mut pos, false)?;
        if !assign {
            self.vars.extend(decl.iter().cloned());
        }
        p.decl = decl;
        p.assign = assign;
        Ok(p)
    }

    fn parse_cmds(&self, toks: &[Tok], pos: &mut usize, nested: bool) -> Result<Pipeline, String> {
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
                        return Err("missing value for parenthesized pipeline".to_owned());
                    }
                    return Ok(Pipeline {
                        decl: Vec::new(),
                        assign: false,
                        cmds,
                    });
                }
                Tok::Close => return Err("unexpected right paren".to_owned()),
                Tok::Open => {
                    let sub = self.parse_cmds(toks, pos, true)?;
                    let chain = match toks.get(*pos) {
                        Some(Tok::Chain(c)) => {
                            *pos += 1;
                            c.clone()
                        }
                        _ => Vec::new(),
                    };
                    cmd.push(Arg::Sub(Box::new(sub), chain));
                }
                Tok::Chain(_) => return Err("unexpected field chain".to_owned()),
                Tok::Dot => cmd.push(Arg::Dot),
                Tok::Field(f) => cmd.push(Arg::Field(f.clone())),
                Tok::Var(name, chain) => {
                    if name != "$" && !self.vars.contains(name) {
                        return Err(format!("undefined variable \"{name}\""));
                    }
                    cmd.push(Arg::Var(name.clone(), chain.clone()));
                }
                Tok::Str(s) => cmd.push(Arg::Lit(Val::Str(s.clone()))),
                Tok::Num(v) => cmd.push(Arg::Lit(v.clone())),
                Tok::Declare | Tok::Assign | Tok::Comma => {
                    return Err("unexpected declaration in command".to_owned())
                }
                Tok::Ident(id) => match id.as_str() {
                    "true" => cmd.push(Arg::Lit(Val::Bool(true))),
                    "false" => cmd.push(Arg::Lit(Val::Bool(false))),
                    "nil" => cmd.push(Arg::Lit(Val::Nil)),
                    _ => match funcs::lookup(id) {
                        // `__timestamp__.Unix`: the function's result, then the chain.
                        Some(f) => match toks.get(*pos) {
                            Some(Tok::Chain(c)) => {
                                *pos += 1;
                                let call = Pipeline {
                                    decl: Vec::new(),
                                    assign: false,
                                    cmds: vec![vec![Arg::Func(f)]],
                                };
                                cmd.push(Arg::Sub(Box::new(call), c.clone()));
                            }
                            _ => cmd.push(Arg::Func(f)),
                        },
                        None => return Err(format!("function \"{id}\" not defined")),
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
        Ok(Pipeline {
            decl: Vec::new(),
            assign: false,
            cmds,
        })
    }

    /// `if`/`with` chains: branches until `end`, `else if`/`else with` adding a branch.
    fn branches(&mut self, word: &str, rest: &str) -> Result<(Vec<Branch>, Vec<Node>), String> {
        let mark = self.vars.len();
        let mut branches = Vec::new();
        let mut cond = self.pipeline(rest, 1)?;
        let otherwise = loop {
            let (body, end) = self.nodes()?;
            branches.push((cond, body));
            match end {
                End::End => break Vec::new(),
                End::Else(Some((w, next))) if w == word => cond = next,
                End::Else(Some((w, _))) => {
                    return Err(format!("unexpected \"else {w}\" in {word}"))
                }
                End::Else(None) => {
                    let (body, end) = self.nodes()?;
                    if !matches!(end, End::End) {
                        return Err(format!("expected end; found else in {word}"));
                    }
                    break body;
                }
                End::Eof => return Err(format!("unexpected EOF in {word}")),
            }
        };
        self.vars.truncate(mark);
        Ok((branches, otherwise))
    }

    fn nodes(&mut self) -> Result<(Vec<Node>, End), String> {
        let mut nodes = Vec::new();
        while let Some(item) = self.items.next() {
            let a = match item {
                Item::Text(t) => {
                    if !t.is_empty() {
                        nodes.push(Node::Text(t));
                    }
                    continue;
                }
                Item::Action(a) => a,
            };
            if a.starts_with("/*") {
                if !a.ends_with("*/") {
                    return Err("comment ends before closing delimiter".to_owned());
                }
                continue;
            }
            let (word, rest) = match a.split_once(|c: char| c.is_whitespace()) {
                Some((w, r)) => (w, r.trim()),
                None => (a.as_str(), ""),
            };
            match word {
                "end" => return Ok((nodes, End::End)),
                "else" => {
                    let cond = match rest.split_once(|c: char| c.is_whitespace()) {
                        Some((w @ ("if" | "with"), c)) => {
                            // The `else if` pipeline's variables live in its branch.
                            Some((w.to_owned(), self.pipeline(c, 1)?))
                        }
                        _ if rest.is_empty() => None,
                        _ => return Err(format!("unexpected {rest:?} in else")),
                    };
                    return Ok((nodes, End::Else(cond)));
                }
                "if" => {
                    let (branches, otherwise) = self.branches("if", rest)?;
                    nodes.push(Node::If {
                        branches,
                        otherwise,
                    });
                }
                "with" => {
                    let (branches, otherwise) = self.branches("with", rest)?;
                    nodes.push(Node::With {
                        branches,
                        otherwise,
                    });
                }
                "range" => {
                    let mark = self.vars.len();
                    let pipe = self.pipeline(rest, 2)?;
                    self.in_range += 1;
                    let (body, end) = self.nodes()?;
                    self.in_range -= 1;
                    let otherwise = match end {
                        End::End => Vec::new(),
                        End::Else(None) => {
                            let (o, end) = self.nodes()?;
                            if !matches!(end, End::End) {
                                return Err("expected end; found else in range".to_owned());
                            }
                            o
                        }
                        _ => return Err("unexpected EOF in range".to_owned()),
                    };
                    self.vars.truncate(mark);
                    nodes.push(Node::Range {
                        pipe,
                        body,
                        otherwise,
                    });
                }
                "break" | "continue" => {
                    if self.in_range == 0 {
                        return Err(format!("{{{{{word}}}}} outside {{{{range}}}}"));
                    }
                    if !rest.is_empty() {
                        return Err(format!("unexpected {rest:?} in {{{{{word}}}}}"));
                    }
                    nodes.push(if word == "break" {
                        Node::Break
                    } else {
                        Node::Continue
                    });
                }
                "define" | "block" | "template" => {
                    let toks = lex_action(rest)?;
                    let Some(Tok::Str(name)) = toks.first() else {
                        return Err(format!("unexpected {rest:?} in {word} clause"));
                    };
                    let name = name.clone();
                    let pipe = if toks.len() > 1 {
                        let mut pos = 1;
                        Some(self.parse_cmds(&toks, &mut pos, false)?)
                    } else {
                        None
                    };
                    if word == "define" && pipe.is_some() {
                        return Err("unexpected input after define name".to_owned());
                    }
                    if word != "template" {
                        // A defined template sees only its own `$`.
                        let saved = std::mem::take(&mut self.vars);
                        let saved_range = std::mem::replace(&mut self.in_range, 0);
                        let (body, end) = self.nodes()?;
                        self.vars = saved;
                        self.in_range = saved_range;
                        if !matches!(end, End::End) {
                            return Err(format!("unexpected EOF in {word}"));
                        }
                        if let Some(slot) = self.defines.iter_mut().find(|(n, _)| *n == name) {
                            slot.1 = body;
                        } else {
                            self.defines.push((name.clone(), body));
                        }
                    }
                    if word != "define" {
                        nodes.push(Node::Template { name, pipe });
                    }
                }
                _ => nodes.push(Node::Action(self.pipeline(&a, 1)?)),
            }
        }
        Ok((nodes, End::Eof))
    }
}

fn visit_args(nodes: &[Node], f: &mut impl FnMut(&Arg)) {
    fn pipe(p: &Pipeline, f: &mut impl FnMut(&Arg)) {
        for c in &p.cmds {
            for a in c {
                f(a);
                if let Arg::Sub(s, _) = a {
                    pipe(s, f);
                }
            }
        }
    }
    for n in nodes {
        match n {
            Node::Text(_) | Node::Break | Node::Continue => {}
            Node::Action(p) => pipe(p, f),
            Node::If {
                branches,
                otherwise,
            }
            | Node::With {
                branches,
                otherwise,
            } => {
                for (c, b) in branches {
                    pipe(c, f);
                    visit_args(b, f);
                }
                visit_args(otherwise, f);
            }
            Node::Range {
                pipe: p,
                body,
                otherwise,
            } => {
                pipe(p, f);
                visit_args(body, f);
                visit_args(otherwise, f);
            }
            Node::Template { pipe: p, .. } => {
                if let Some(p) = p {
                    pipe(p, f);
                }
            }
        }
    }
}

impl Template {
    /// Parses a template; unknown functions or variables and malformed actions are
    /// errors.
    pub fn parse(src: &str) -> Result<Self, TemplateError> {
        let err = |reason: String| TemplateError {
            template: src.to_owned(),
            reason,
        };
        let items = split_items(src).map_err(err)?;
        let mut parser = Parser {
            items: items.into_iter(),
            vars: Vec::new(),
            defines: Vec::new(),
            in_range: 0,
        };
        let (nodes, end) = parser.nodes().map_err(err)?;
        match end {
            End::Eof => {}
            End::End => return Err(err("unexpected {{end}}".to_owned())),
            End::Else(_) => return Err(err("unexpected {{else}}".to_owned())),
        }
        let mut uses_line = false;
        let mut fields = Vec::new();
        let mut note = |a: &Arg| match a {
            Arg::Func(Func::Line) => uses_line = true,
            Arg::Field(chain) if !chain.is_empty() => fields.push(chain[0].clone()),
            Arg::Var(name, chain) if name == "$" && !chain.is_empty() => {
                fields.push(chain[0].clone())
            }
            // The whole label map handed on: the template may read any label.
            Arg::Dot => fields.push("*".to_owned()),
            Arg::Var(name, _) if name == "$" => fields.push("*".to_owned()),
            _ => {}
        };
        visit_args(&nodes, &mut note);
        for (_, body) in &parser.defines {
            visit_args(body, &mut note);
        }
        Ok(Template {
            nodes,
            defines: Arc::new(parser.defines),
            uses_line,
            fields,
        })
    }

    /// Whether the template reads `__line__`.
    pub fn uses_line(&self) -> bool {
        self.uses_line
    }

    /// Label names the template reads (`*` when it may read them all).
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// Renders the template; a runtime error is returned as text for
    /// `__error_details__`.
    pub fn render(&self, data: &dyn TemplateData) -> Result<String, String> {
        let mut exec = Exec {
            data,
            defines: &self.defines,
            root: Val::Root,
            vars: Vec::new(),
            depth: 0,
            steps: 0,
            out: String::new(),
        };
        exec.nodes(&self.nodes, &Val::Root)?;
        Ok(exec.out)
    }
}

// ---------- execution ----------

/// Most nested `template` calls (Go allows 100000; a line template needs few).
const MAX_DEPTH: usize = 1000;
/// Most iterations of one `range` over an integer.
const MAX_RANGE: i64 = 100_000;
/// Most nodes one render may execute: recursion through `template` inside `range` can
/// otherwise grow exponentially, and one line must not take a query worker hostage.
const MAX_STEPS: u64 = 1_000_000;

enum Flow {
    Normal,
    Break,
    Continue,
}

struct Exec<'a> {
    data: &'a dyn TemplateData,
    defines: &'a [(String, Vec<Node>)],
    /// `$`: the template data, or the value a `{{template}}` call was given.
    root: Val,
    /// Declared variables in scope, innermost last.
    vars: Vec<(String, Val)>,
    depth: usize,
    /// Nodes executed so far (see [`MAX_STEPS`]).
    steps: u64,
    out: String,
}

impl Exec<'_> {
    fn nodes(&mut self, nodes: &[Node], dot: &Val) -> Result<Flow, String> {
        for n in nodes {
            self.steps += 1;
            if self.steps > MAX_STEPS {
                return Err(format!("template execution exceeded {MAX_STEPS} steps"));
            }
            match n {
                Node::Text(t) => self.out.push_str(t),
                Node::Action(p) => {
                    let v = self.pipeline(p, dot)?;
                    if p.decl.is_empty() {
                        // A nil interface prints as Go's `<no value>`.
                        let v = self.whole(v);
                        match v {
                            Val::Nil => self.out.push_str("<no value>"),
                            Val::Str(s) => self.out.push_str(&s),
                            v => self.out.push_str(&v.display()),
                        }
                    }
                }
                Node::If {
                    branches,
                    otherwise,
                }
                | Node::With {
                    branches,
                    otherwise,
                } => {
                    let with = matches!(n, Node::With { .. });
                    let mark = self.vars.len();
                    let mut taken = None;
                    for (cond, body) in branches {
                        let v = self.pipeline(cond, dot)?;
                        let v = self.whole(v);
                        if v.truthy() {
                            taken = Some((body, v));
                            break;
                        }
                    }
                    let flow = match taken {
                        Some((body, v)) => {
                            let d = if with { v } else { dot.clone() };
                            self.nodes(body, &d)?
                        }
                        None => self.nodes(otherwise, dot)?,
                    };
                    self.vars.truncate(mark);
                    if !matches!(flow, Flow::Normal) {
                        return Ok(flow);
                    }
                }
                Node::Range {
                    pipe,
                    body,
                    otherwise,
                } => {
                    let mark = self.vars.len();
                    let v = self.pipeline_value(pipe, dot)?;
                    let v = self.whole(v);
                    let items: Vec<(Val, Val)> = match &v {
                        Val::List(l) => l
                            .iter()
                            .enumerate()
                            .map(|(i, e)| (Val::Int(i as i64), e.clone()))
                            .collect(),
                        Val::Map(m) => m
                            .iter()
                            .map(|(k, e)| (Val::Str(k.clone()), e.clone()))
                            .collect(),
                        Val::StrMap(m) => m
                            .iter()
                            .map(|(k, e)| (Val::Str(k.clone()), Val::Str(e.clone())))
                            .collect(),
                        Val::Int(n) if *n > MAX_RANGE => {
                            return Err(format!("range over {n} exceeds {MAX_RANGE} iterations"))
                        }
                        Val::Int(n) => (0..*n).map(|i| (Val::Int(i), Val::Int(i))).collect(),
                        Val::Nil => Vec::new(),
                        other => {
                            return Err(format!("range can't iterate over {}", other.display()))
                        }
                    };
                    if items.is_empty() {
                        let flow = self.nodes(otherwise, dot)?;
                        if !matches!(flow, Flow::Normal) {
                            return Ok(flow);
                        }
                        continue;
                    }
                    for (key, elem) in items {
                        self.vars.truncate(mark);
                        // Declared variables take (key, element), or the element alone.
                        match pipe.decl.as_slice() {
                            [e] => self.set_var(e, elem.clone(), pipe.assign),
                            [k, e] => {
                                self.set_var(k, key, pipe.assign);
                                self.set_var(e, elem.clone(), pipe.assign);
                            }
                            _ => {}
                        }
                        if matches!(self.nodes(body, &elem)?, Flow::Break) {
                            break;
                        }
                    }
                    self.vars.truncate(mark);
                }
                Node::Template { name, pipe } => {
                    let Some((_, body)) = self.defines.iter().find(|(n, _)| n == name) else {
                        return Err(format!("no such template {name:?}"));
                    };
                    if self.depth >= MAX_DEPTH {
                        return Err(format!("exceeded maximum template depth ({MAX_DEPTH})"));
                    }
                    let d = match pipe {
                        Some(p) => self.pipeline(p, dot)?,
                        None => Val::Nil,
                    };
                    let saved_vars = std::mem::take(&mut self.vars);
                    let saved_root = std::mem::replace(&mut self.root, d.clone());
                    self.depth += 1;
                    let r = self.nodes(body, &d);
                    self.depth -= 1;
                    self.vars = saved_vars;
                    self.root = saved_root;
                    r?;
                }
                Node::Break => return Ok(Flow::Break),
                Node::Continue => return Ok(Flow::Continue),
            }
        }
        Ok(Flow::Normal)
    }

    fn set_var(&mut self, name: &str, v: Val, assign: bool) {
        if assign {
            if let Some(slot) = self.vars.iter_mut().rev().find(|(n, _)| n == name) {
                slot.1 = v;
            }
        } else {
            self.vars.push((name.to_owned(), v));
        }
    }

    /// The template data as a whole map, when a value must be complete.
    fn whole(&self, v: Val) -> Val {
        match v {
            Val::Root => Val::StrMap(Arc::new(self.data.labels())),
            v => v,
        }
    }

    fn field(&self, recv: Val, name: &str) -> Result<Val, String> {
        match recv {
            Val::Root => Ok(Val::Str(self.data.label(name).unwrap_or("").to_owned())),
            Val::StrMap(m) => Ok(Val::Str(
                m.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default(),
            )),
            Val::Map(m) => Ok(m.get(name).cloned().unwrap_or(Val::Nil)),
            Val::Time(t) => time_method(t, name, &[]),
            Val::Nil => Err(format!("nil pointer evaluating interface {{}}.{name}")),
            other => Err(format!(
                "can't evaluate field {name} in type {}",
                other.type_name()
            )),
        }
    }

    fn chain(&self, mut v: Val, chain: &[String]) -> Result<Val, String> {
        for name in chain {
            v = self.field(v, name)?;
        }
        Ok(v)
    }

    fn arg(&mut self, a: &Arg, dot: &Val) -> Result<Val, String> {
        match a {
            Arg::Field(chain) => self.chain(dot.clone(), chain),
            Arg::Dot => Ok(dot.clone()),
            Arg::Var(name, chain) => {
                let v = if name == "$" {
                    self.root.clone()
                } else {
                    self.vars
                        .iter()
                        .rev()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.clone())
                        .ok_or_else(|| format!("undefined variable: {name}"))?
                };
                self.chain(v, chain)
            }
            Arg::Lit(v) => Ok(v.clone()),
            Arg::Sub(p, chain) => {
                let v = self.pipeline(p, dot)?;
                self.chain(v, chain)
            }
            Arg::Func(f) => self.call(*f, &[], None, dot),
        }
    }

    fn call(
        &mut self,
        f: Func,
        args: &[Arg],
        piped: Option<Val>,
        dot: &Val,
    ) -> Result<Val, String> {
        let err = |e: String| format!("error calling {}: {e}", f.name());
        if matches!(f, Func::And | Func::Or) {
            // Go evaluates `and`/`or` arguments lazily and stops at the deciding one.
            let total = args.len() + usize::from(piped.is_some());
            if total == 0 {
                return Err(format!(
                    "wrong number of args for {}: want at least 1 got 0",
                    f.name()
                ));
            }
            let mut last = Val::Nil;
            for a in args {
                last = self.arg(a, dot)?;
                if last.truthy() != (f == Func::And) {
                    return Ok(last);
                }
            }
            if let Some(p) = piped {
                last = p;
            }
            return Ok(last);
        }
        let mut vals = Vec::with_capacity(args.len() + 1);
        for a in args {
            let v = self.arg(a, dot)?;
            vals.push(self.whole(v));
        }
        if let Some(p) = piped {
            vals.push(self.whole(p));
        }
        funcs::call(f, vals, self.data).map_err(err)
    }

    /// Evaluates `p` and binds its declared or assigned variable.
    fn pipeline(&mut self, p: &Pipeline, dot: &Val) -> Result<Val, String> {
        let v = self.pipeline_value(p, dot)?;
        if let [name] = p.decl.as_slice() {
            self.set_var(name, v.clone(), p.assign);
        }
        Ok(v)
    }

    /// Evaluates `p`'s commands, each one's value the last argument of the next.
    fn pipeline_value(&mut self, p: &Pipeline, dot: &Val) -> Result<Val, String> {
        let mut piped: Option<Val> = None;
        for cmd in &p.cmds {
            let Some(first) = cmd.first() else {
                return Err("empty command".to_owned());
            };
            let val = match first {
                Arg::Func(f) => self.call(*f, &cmd[1..], piped.take(), dot)?,
                // `(__timestamp__).Format "2006"`: a method with arguments ends the chain.
                Arg::Field(c) | Arg::Var(_, c) | Arg::Sub(_, c)
                    if !c.is_empty() && (cmd.len() > 1 || piped.is_some()) =>
                {
                    let Some((method, head)) = c.split_last() else {
                        return Err("empty field chain".to_owned());
                    };
                    let recv = match first {
                        Arg::Field(_) => self.chain(dot.clone(), head)?,
                        Arg::Var(name, _) => {
                            self.arg(&Arg::Var(name.clone(), head.to_vec()), dot)?
                        }
                        Arg::Sub(p, _) => {
                            let v = self.pipeline(p, dot)?;
                            self.chain(v, head)?
                        }
                        _ => Val::Nil,
                    };
                    let mut args = Vec::with_capacity(cmd.len());
                    for a in &cmd[1..] {
                        let v = self.arg(a, dot)?;
                        args.push(self.whole(v));
                    }
                    if let Some(v) = piped.take() {
                        args.push(self.whole(v));
                    }
                    match recv {
                        Val::Time(t) => time_method(t, method, &args)?,
                        other => {
                            return Err(format!(
                                "can't give argument to non-function {}.{method} of type {}",
                                describe(first).trim_end_matches(&format!(".{method}")),
                                other.type_name()
                            ))
                        }
                    }
                }
                other => {
                    if cmd.len() > 1 || piped.is_some() {
                        return Err(format!(
                            "can't give argument to non-function {}",
                            describe(other)
                        ));
                    }
                    self.arg(other, dot)?
                }
            };
            piped = Some(val);
        }
        Ok(piped.unwrap_or(Val::Nil))
    }
}

/// Methods of Go's `time.Time` a template may call.
fn time_method(t: GoTime, name: &str, args: &[Val]) -> Result<Val, String> {
    let no_args = || -> Result<(), String> {
        if args.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "wrong number of args for {name}: want 0 got {}",
                args.len()
            ))
        }
    };
    let int = |v: i64| -> Result<Val, String> {
        no_args()?;
        Ok(Val::Int(v))
    };
    match name {
        "Format" => match args {
            [Val::Str(layout)] => Ok(Val::Str(t.format(layout))),
            [other] => Err(format!(
                "wrong type for value; expected string; got {}",
                other.type_name()
            )),
            _ => Err(format!(
                "wrong number of args for Format: want 1 got {}",
                args.len()
            )),
        },
        "Unix" => int(t.unix()),
        "UnixMilli" => int(t.unix_millis()),
        "UnixMicro" => int(t.unix_nanos() / 1000),
        "UnixNano" => int(t.unix_nanos()),
        "Year" => int(t.format("2006").parse().unwrap_or(0)),
        "YearDay" => int(t.format("002").parse().unwrap_or(0)),
        "Day" => int(t.format("2").parse().unwrap_or(0)),
        "Hour" => int(t.format("15").parse().unwrap_or(0)),
        "Minute" => int(t.format("4").parse().unwrap_or(0)),
        "Second" => int(t.format("5").parse().unwrap_or(0)),
        "Nanosecond" => int(t.unix_nanos().rem_euclid(1_000_000_000)),
        "Month" => {
            no_args()?;
            Ok(Val::Str(t.format("January")))
        }
        "Weekday" => {
            no_args()?;
            Ok(Val::Str(t.format("Monday")))
        }
        "UTC" | "Local" => {
            no_args()?;
            Ok(Val::Time(t.in_zone(gotime::Zone::Utc)))
        }
        "String" => {
            no_args()?;
            Ok(Val::Str(t.go_string()))
        }
        "IsZero" => {
            no_args()?;
            Ok(Val::Bool(t == GoTime::zero()))
        }
        _ => Err(format!("can't evaluate field {name} in type time.Time")),
    }
}

fn describe(a: &Arg) -> String {
    match a {
        Arg::Field(c) => format!(".{}", c.join(".")),
        Arg::Dot => ".".to_owned(),
        Arg::Var(n, c) if c.is_empty() => n.clone(),
        Arg::Var(n, c) => format!("{n}.{}", c.join(".")),
        Arg::Lit(v) => v.display(),
        Arg::Sub(..) => "(pipeline)".to_owned(),
        Arg::Func(f) => f.name().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Data(Vec<(&'static str, &'static str)>);

    impl TemplateData for Data {
        fn label(&self, name: &str) -> Option<&str> {
            self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
        }
        fn labels(&self) -> Vec<(String, String)> {
            let mut v: Vec<(String, String)> = self
                .0
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            v.sort();
            v
        }
        fn line(&self) -> &str {
            "the line"
        }
        fn timestamp_ns(&self) -> i64 {
            1_767_225_600_500_000_000
        }
    }

    fn try_render(t: &str, labels: &[(&'static str, &'static str)]) -> Result<String, String> {
        Template::parse(t)
            .map_err(|e| e.reason)?
            .render(&Data(labels.to_vec()))
    }

    fn render(t: &str, labels: &[(&'static str, &'static str)]) -> String {
        try_render(t, labels).unwrap_or_else(|e| panic!("{t}: {e}"))
    }

    /// Golden cases: template, labels, expected output (from Go/Sprig/Loki semantics).
    type Labels = &'static [(&'static str, &'static str)];

    fn golden(cases: &[(&str, Labels, &str)]) {
        for (t, labels, want) in cases {
            assert_eq!(render(t, labels), *want, "template {t}");
        }
    }

    #[test]
    fn fields_render_and_missing_labels_render_empty() {
        golden(&[
            (
                "{{.method}} {{.path}} took {{.nope}}!",
                &[("method", "GET"), ("path", "/a")],
                "GET /a took !",
            ),
            ("{{ $.method }}", &[("method", "GET")], "GET"),
            ("{{ . }}", &[("b", "2"), ("a", "1")], "map[a:1 b:2]"),
            ("{{ len . }}", &[("b", "2"), ("a", "1")], "2"),
            (
                "{{ index . \"a\" }}|{{ index . \"zz\" }}|",
                &[("a", "1")],
                "1||",
            ),
        ]);
    }

    #[test]
    fn go_builtins_follow_text_template() {
        golden(&[
            (
                "{{ if and .a .b }}both{{ else }}not{{ end }}",
                &[("a", "1")],
                "not",
            ),
            ("{{ or .a .b \"none\" }}", &[], "none"),
            ("{{ and .a .b }}", &[("a", "x"), ("b", "y")], "y"),
            ("{{ not .a }}", &[], "true"),
            (
                "{{ eq .level \"warn\" \"error\" }}",
                &[("level", "error")],
                "true",
            ),
            (
                "{{ ne 1 2 }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt \"b\" \"a\" }} {{ ge 1 3 }}",
                &[],
                "true true true true false",
            ),
            ("{{ len .a }}", &[("a", "héllo")], "6"),
            ("{{ index .a 1 }}", &[("a", "abc")], "98"),
            (
                "{{ slice .a 1 3 }}|{{ slice .a 2 }}",
                &[("a", "abcd")],
                "bc|cd",
            ),
            ("{{ print 1 2 \"a\" 3 }}", &[], "1 2a3"),
            ("{{ println .a }}", &[("a", "x")], "x\n"),
            ("{{ printf \"%s=%q\" \"k\" .a }}", &[("a", "v")], "k=\"v\""),
            (
                "{{ html .a }}",
                &[("a", "<a href='x'>&\"</a>")],
                "&lt;a href=&#39;x&#39;&gt;&amp;&#34;&lt;/a&gt;",
            ),
            (
                "{{ js .a }}",
                &[("a", "it's <b>=\"x\"\\\n")],
                "it\\'s \\u003Cb\\u003E\\u003D\\\"x\\\"\\\\\\u000A",
            ),
            (
                "{{ urlquery .a }}",
                &[("a", "a b&c=d/é")],
                "a+b%26c%3Dd%2F%C3%A9",
            ),
            (
                "{{ 0x1F }} {{ 017 }} {{ 1_000 }} {{ 'a' }} {{ 2.50 }} {{ -3 }}",
                &[],
                "31 15 1000 97 2.5 -3",
            ),
        ]);
    }

    #[test]
    fn variables_with_range_and_define_work_like_go() {
        golden(&[
            (
                "{{ $x := .a }}{{ $x = print $x \"!\" }}{{ $x }}",
                &[("a", "hi")],
                "hi!",
            ),
            ("{{ if $v := .a }}[{{ $v }}]{{ end }}", &[("a", "1")], "[1]"),
            ("{{ with .a }}<{{ . }}>{{ else }}none{{ end }}", &[], "none"),
            (
                "{{ with .a }}<{{ . }}>{{ else with .b }}b={{ . }}{{ end }}",
                &[("b", "2")],
                "b=2",
            ),
            (
                "{{ range $k, $v := . }}{{ $k }}={{ $v }};{{ end }}",
                &[("z", "1"), ("a", "2")],
                "a=2;z=1;",
            ),
            (
                "{{ range $i := 4 }}{{ if eq $i 2 }}{{ continue }}{{ end }}{{ $i }}{{ end }}",
                &[],
                "013",
            ),
            (
                "{{ range 10 }}{{ if eq . 3 }}{{ break }}{{ end }}{{ . }}{{ end }}",
                &[],
                "012",
            ),
            (
                "{{ range (fromJson .j).xs }}[{{ . }}]{{ else }}empty{{ end }}",
                &[("j", "{\"xs\":[1,\"a\",true]}")],
                "[1][a][true]",
            ),
            (
                "{{ range (fromJson .j).xs }}x{{ else }}empty{{ end }}",
                &[("j", "{\"xs\":[]}")],
                "empty",
            ),
            (
                "{{ define \"kv\" }}{{ .k }}={{ .v }}{{ end }}{{ template \"kv\" . }}",
                &[("k", "a"), ("v", "b")],
                "a=b",
            ),
            (
                "{{ define \"t\" }}[{{ $ }}]{{ end }}{{ template \"t\" .a }}{{ $.a }}",
                &[("a", "x")],
                "[x]x",
            ),
            (
                "{{ block \"b\" .a }}<{{ . }}>{{ end }}",
                &[("a", "x")],
                "<x>",
            ),
            ("{{- /* a comment */ -}} x {{- \" y\" }}", &[], "x y"),
        ]);
    }

    #[test]
    fn loki_functions_follow_loki() {
        golden(&[
            ("{{ __line__ }}", &[], "the line"),
            ("{{ __timestamp__ }}", &[], "2026-01-01 00:00:00.5 +0000 UTC"),
            ("{{ __timestamp__ | unixEpoch }} {{ __timestamp__ | unixEpochMillis }} {{ __timestamp__ | unixEpochNanos }}", &[], "1767225600 1767225600500 1767225600500000000"),
            ("{{ ToUpper .a }} {{ ToLower .a }} {{ Replace .a \"b\" \"x\" 1 }} {{ Replace .a \"b\" \"x\" -1 }}", &[("a", "aBbb")], "ABBB abbb aBxb aBxx"),
            ("{{ Trim .a \"-\" }}|{{ TrimLeft .a \"-\" }}|{{ TrimRight .a \"-\" }}|{{ TrimPrefix .a \"-\" }}|{{ TrimSuffix .a \"--\" }}|{{ TrimSpace \"  x \" }}", &[("a", "--x--")], "x|x--|--x|-x--|--x|x"),
            ("{{ regexReplaceAll \"(\\\\d+)\" .a \"<$1>\" }} {{ regexReplaceAllLiteral \"(\\\\d+)\" .a \"<$1>\" }}", &[("a", "a12b")], "a<12>b a<$1>b"),
            ("{{ count \"a+\" .a }}", &[("a", "aa b a")], "2"),
            ("{{ urlencode .a }} {{ urldecode .b }}", &[("a", "x y/z"), ("b", "x+y%2Fz")], "x+y%2Fz x y/z"),
            ("{{ bytes .a }} {{ bytes .b }} {{ duration .c }} {{ duration_seconds .d }}", &[("a", "1MB"), ("b", "1KiB"), ("c", "1m30s"), ("d", "250ms")], "1e+06 1024 90 0.25"),
            ("{{ alignLeft 5 .a }}|{{ alignRight 5 .a }}|{{ alignLeft 2 .a }}|{{ alignRight 2 .a }}", &[("a", "abc")], "abc  |  abc|ab|bc"),
            ("{{ unixToTime .s }}|{{ unixToTime .ms }}|{{ unixToTime .d }}", &[("s", "1700000000"), ("ms", "1700000000123"), ("d", "19673")], "2023-11-14 22:13:20 +0000 UTC|2023-11-14 22:13:20.123 +0000 UTC|2023-11-12 00:00:00 +0000 UTC"),
            ("{{ unixToTime .us | unixEpochNanos }}", &[("us", "1700000000123456")], "1700000000123456000"),
            ("{{ toDateInZone \"2006-01-02 15:04\" \"Europe/Paris\" .a }}", &[("a", "2024-07-01 12:00")], "2024-07-01 12:00:00 +0200 CEST"),
            ("{{ toDateInZone \"2006-01-02\" \"Not/AZone\" .a | unixEpoch }}", &[("a", "2024-07-01")], "1719792000"),
            ("{{ toDateInZone \"2006-01-02\" \"UTC\" \"garbage\" }}", &[], "0001-01-01 00:00:00 +0000 UTC"),
        ]);
    }

    #[test]
    fn sprig_string_functions_follow_sprig() {
        golden(&[
            ("{{ b64enc .a }} {{ b64dec .b }}", &[("a", "hello"), ("b", "aGVsbG8=")], "aGVsbG8= hello"),
            ("{{ b64dec .a }}", &[("a", "a!==")], "illegal base64 data at input byte 1"),
            ("{{ lower .a }} {{ upper .a }} {{ title .b }}", &[("a", "MiX"), ("b", "hello wOrld foo_bar")], "mix MIX Hello WOrld Foo_bar"),
            ("{{ trunc 3 .a }}|{{ trunc -3 .a }}|{{ trunc 10 .a }}|{{ trunc 2 .b }}", &[("a", "abcdef"), ("b", "héllo")], "abc|def|abcdef|hé"),
            ("{{ substr 1 3 .a }}|{{ substr -1 2 .a }}|{{ substr 4 -1 .a }}|{{ substr 4 2 .a }}|{{ substr 0 99 .a }}", &[("a", "abcdef")], "bc|ab|ef||abcdef"),
            ("{{ contains \"b\" .a }} {{ hasPrefix \"ab\" .a }} {{ hasSuffix \"x\" .a }}", &[("a", "abc")], "true true false"),
            ("{{ indent 2 .a }}|{{ nindent 2 .a }}", &[("a", "x\ny")], "  x\n  y|\n  x\n  y"),
            ("{{ replace \"a\" \"b\" .a }} {{ repeat 3 .b }}", &[("a", "aXa"), ("b", "ab")], "bXb ababab"),
            ("{{ trim .a }}|{{ trimAll \"$\" .b }}|{{ trimPrefix \"$\" .b }}|{{ trimSuffix \"$\" .b }}", &[("a", "  x "), ("b", "$$5$")], "x|5|$5$|$$5"),
            ("{{ .missing | default \"none\" }} {{ default \"d\" .a }}", &[("a", "set")], "none set"),
        ]);
    }

    #[test]
    fn sprig_math_uses_casts_and_go_number_printing() {
        golden(&[
            ("{{ int .a }} {{ int .b }} {{ int .c }} {{ int .d }}", &[("a", "42"), ("b", "12.0"), ("c", "12.5"), ("d", "0x1F")], "42 12 0 31"),
            ("{{ float64 .a }} {{ float64 .b }}", &[("a", "1234567"), ("b", "nope")], "1.234567e+06 0"),
            ("{{ add 1 2 .a }} {{ sub .a 1 }} {{ mul 2 3 4 }} {{ div 7 2 }} {{ mod 7 2 }}", &[("a", "3")], "6 2 24 3 1"),
            ("{{ max 1 5 3 }} {{ min 4 .a 9 }}", &[("a", "-2")], "5 -2"),
            ("{{ addf 0.1 0.2 }} {{ subf 1 0.9 }} {{ mulf 1.1 3 }} {{ divf 1 3 }}", &[], "0.3 0.1 3.3 0.3333333333333333"),
            ("{{ mulf 1000 1000 }} {{ maxf 1.5 .a }} {{ minf 1.5 .a }}", &[("a", "2")], "1e+06 2 1.5"),
            ("{{ ceil 1.2 }} {{ floor -1.2 }} {{ round 3.14159 2 }} {{ round 2.5 0 }} {{ round -2.4 0 }}", &[], "2 -2 3.14 3 -3"),
            ("{{ div (bytes .a) 1024 }}", &[("a", "2KiB")], "2"),
        ]);
    }

    #[test]
    fn json_and_dates_follow_sprig() {
        golden(&[
            (
                "{{ (fromJson .j).a.b }}",
                &[("j", "{\"a\":{\"b\":\"deep\"}}")],
                "deep",
            ),
            (
                "{{ (fromJson .j).n }} {{ (fromJson .j).missing }}",
                &[("j", "{\"n\":1000000}")],
                "1e+06 <no value>",
            ),
            (
                "{{ fromJson .j }}",
                &[("j", "{\"b\":[1,2],\"a\":null}")],
                "map[a:<nil> b:[1 2]]",
            ),
            ("{{ fromJson .j }}", &[("j", "not json")], "<no value>"),
            (
                "{{ index (fromJson .j) \"k\" }}",
                &[("j", "{\"k\":\"v\"}")],
                "v",
            ),
            (
                "{{ __timestamp__ | date \"2006-01-02T15:04:05.000Z07:00 Mon Jan\" }}",
                &[],
                "2026-01-01T00:00:00.500Z Thu Jan",
            ),
            (
                "{{ toDateInZone \"2006-01-02 15:04\" \"Europe/Paris\" .a | date \"15:04 MST\" }}",
                &[("a", "2024-07-01 12:00")],
                "10:00 UTC",
            ),
            (
                "{{ __timestamp__.Unix }} {{ (__timestamp__).UnixMilli }} {{ __timestamp__.Format \"2006\" }}",
                &[],
                "1767225600 1767225600500 2026",
            ),
            (
                "{{ $t := unixToTime .a }}{{ $t.Year }}-{{ $t.Month }}-{{ $t.Day }} {{ $t.Weekday }} {{ $t.Format \"15h04\" }}",
                &[("a", "1700000000")],
                "2023-November-14 Tuesday 22h13",
            ),
            ("{{ (toDate \"2006\" \"x\").IsZero }}", &[], "true"),
            ("{{ date \"15:04\" 1700000000 }}", &[], "22:13"),
            (
                "{{ toDate \"02/01/2006 15h04\" .a | unixEpoch }}",
                &[("a", "14/11/2023 22h13")],
                "1699999980",
            ),
            (
                "{{ toDate \"2006-01-02\" .a }}",
                &[("a", "bad")],
                "0001-01-01 00:00:00 +0000 UTC",
            ),
        ]);
        let now: i64 = render("{{ now | unixEpoch }}", &[]).parse().unwrap();
        assert!(now > 1_700_000_000);
    }

    #[test]
    fn printf_follows_go_including_bad_verb_output() {
        golden(&[
            (
                r#"{{ printf "%05d" .latency_ms }}"#,
                &[("latency_ms", "1022")],
                "%!d(string=01022)",
            ),
            (
                r#"{{ printf "%05d|%-4s|%.2f" 42 "ab" 3.14159 }}"#,
                &[],
                "00042|ab  |3.14",
            ),
            (r#"{{ printf "%d" }}"#, &[], "%!d(MISSING)"),
            (r#"{{ printf "%v %v" (float64 "3") 3.0 }}"#, &[], "3 3"),
        ]);
    }

    #[test]
    fn runtime_errors_are_reported_not_panicked() {
        for (t, labels, want) in [
            (
                "{{ div 1 0 }}",
                &[][..],
                "error calling div: runtime error: integer divide by zero",
            ),
            (
                "{{ divf 1 0 }}",
                &[],
                "error calling divf: decimal division by zero",
            ),
            (
                "{{ regexReplaceAll \"(\" .a \"\" }}",
                &[("a", "x")],
                "error calling regexReplaceAll: error parsing regexp",
            ),
            (
                "{{ urldecode .a }}",
                &[("a", "%zz")],
                "error calling urldecode: invalid URL escape \"%zz\"",
            ),
            (
                "{{ unixToTime .a }}",
                &[("a", "123")],
                "error calling unixToTime: unable to parse time '123': %!w(<nil>)",
            ),
            (
                "{{ unixToTime .a }}",
                &[("a", "12x45")],
                "error calling unixToTime: unable to parse time '12x45'",
            ),
            (
                "{{ gt .a 3 }}",
                &[("a", "5")],
                "incompatible types for comparison",
            ),
            (
                "{{ .a.b }}",
                &[("a", "x")],
                "can't evaluate field b in type string",
            ),
            ("{{ index .a 9 }}", &[("a", "x")], "index out of range: 9"),
            (
                "{{ ToUpper 3 }}",
                &[],
                "wrong type for value; expected string; got int",
            ),
            (
                "{{ unixEpoch .a }}",
                &[("a", "1")],
                "expected time.Time; got string",
            ),
            (
                "{{ round 1.5 }}",
                &[],
                "wrong number of args for round: want at least 2 got 1",
            ),
            (
                "{{ range .a }}{{ end }}",
                &[("a", "x")],
                "range can't iterate over x",
            ),
            (
                "{{ call .a }}",
                &[("a", "x")],
                "non-function of type string",
            ),
            ("{{ template \"nope\" }}", &[], "no such template \"nope\""),
            ("{{ repeat 100000000 \"abc\" }}", &[], "exceeds"),
        ] {
            let err = try_render(t, labels).expect_err(t);
            assert!(err.contains(want), "{t}: {err}");
        }
    }

    #[test]
    fn runaway_templates_stop_with_an_error() {
        let wide = "{{ range 100000 }}{{ range 100000 }}x{{ end }}{{ end }}";
        let err = try_render(wide, &[]).unwrap_err();
        assert_eq!(err, "template execution exceeded 1000000 steps");
        let deep = "{{ define \"a\" }}{{ template \"a\" }}{{ end }}{{ template \"a\" }}";
        let err = try_render(deep, &[]).unwrap_err();
        assert!(err.contains("exceeded maximum template depth"), "{err}");
    }

    const FRAGMENTS: &[&str] = &[
        "{{",
        "}}",
        "{{- ",
        " -}}",
        " ",
        ".a",
        ".j",
        ".",
        "$",
        "$x",
        "$x := ",
        "$x = ",
        "|",
        "(",
        ")",
        ")",
        "if ",
        "else ",
        "else if ",
        "end",
        "range ",
        "with ",
        "define \"d\"",
        "template \"d\" ",
        "block \"b\" ",
        "break",
        "continue",
        "\"s\"",
        "`r`",
        "'c'",
        "1",
        "-2",
        "2.5",
        "0x1F",
        "nil",
        "true",
        "printf \"%v%d\" ",
        "index ",
        "slice ",
        "len ",
        "fromJson ",
        "toDate \"2006\" ",
        "date \"Jan _2 15:04:05.000\" ",
        "__timestamp__",
        ".Unix",
        ".Format \"2006\"",
        "substr ",
        "trunc ",
        "repeat ",
        "div ",
        "divf ",
        "round ",
        "unixToTime ",
        "b64dec ",
        "urldecode ",
        "eq ",
        "lt ",
        "and ",
        "or ",
        "not ",
        "/* c */",
        "é",
        "\\",
        "\"",
        "}",
        "{",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn templates_never_panic_when_parsed_or_rendered(
            parts in proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..24)
        ) {
            if let Ok(t) = Template::parse(&parts.concat()) {
                let _ = t.render(&Data(vec![("a", "1700000000"), ("j", "{\"a\":[1,{\"b\":null}]}")]));
            }
        }

        #[test]
        fn arbitrary_text_never_panics_the_template_parser(s in proptest::prelude::any::<String>()) {
            if let Ok(t) = Template::parse(&s) {
                let _ = t.render(&Data(vec![]));
            }
        }
    }

    #[test]
    fn unknown_functions_variables_and_unclosed_actions_fail_to_parse() {
        for bad in [
            "{{ nosuchfunc .a }}",
            "{{ sha256sum .a }}",
            "{{ toJson .a }}",
            "{{ .a ",
            "{{ if .a }}x",
            "{{ $undefined }}",
            "{{ $x = 1 }}",
            "{{ break }}",
            "{{ end }}",
            "{{ if .a }}{{ $v := 1 }}{{ end }}{{ $v }}",
            "{{ range $a, $b, $c := . }}{{ end }}",
            "{{ (.a }}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn fields_lists_the_labels_a_template_reads() {
        let t = Template::parse("{{ .a }}{{ with .b }}{{ $.c }}{{ end }}{{ __line__ }}").unwrap();
        assert_eq!(t.fields(), ["a", "b", "c"]);
        assert!(t.uses_line());
        let t = Template::parse("{{ range $k, $v := . }}{{ end }}").unwrap();
        assert!(t.fields().iter().any(|f| f == "*"));
    }
}
