//! The LogQL parser: tokens to a validated [`Expr`].
//!
//! Owns the grammar (Loki 3.7's, restated in `shared/reference/logql.md` §2), including
//! the resolutions Loki's LALR parser makes by shifting: `and` binds tighter than `or`
//! in label filters while `,` and juxtaposition take everything to their right; `or`
//! after a line filter always extends its or-chain; an identifier after `json`/`logfmt`
//! starts the parameter list. It also owns the checks Loki runs after a query parses
//! (§2.5): non-empty-compatible selectors, unwrap/grouping/parameter rules of the
//! aggregations, metric-only binary legs, set operators without literals, regexes and
//! pattern templates that compile. Literal-only binary operations are folded here.
//!
//! It is recursive descent with precedence climbing over the token list from `lexer`,
//! because Loki-style errors ("unexpected X, expecting Y or Z") need the expected
//! tokens at the point of failure, which a token-level parser knows directly.

use regex::Regex;

use super::ast::*;
use super::lexer::{tokenize, Flag, Keyword, Sym, Tok, Token, MAX_QUERY_BYTES};
use super::pattern::{validate_filter_pattern, validate_parser_pattern};
use crate::log::line_filter::go_regex_reason;
use crate::{MatchOp, Matcher};

/// Why a query was rejected. Displays exactly like Loki's errors:
/// `parse error at line 1, col 14: syntax error: unexpected $end, expecting } or ,` for
/// text that does not fit the grammar, `parse error : <reason>` for a query that parses
/// but breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The text does not fit the grammar (or does not lex). Line and column are 1-based.
    #[error("parse error at line {line}, col {col}: {message}")]
    Syntax {
        line: u32,
        col: u32,
        message: String,
    },
    /// The query parses but is not allowed (empty-compatible selector, bad regex, ...).
    #[error("parse error : {message}")]
    Invalid { message: String },
}

impl ParseError {
    /// 1-based line of a syntax error (0 where Loki says 0, see `Parser::unexpected`);
    /// 0 for validation errors, as Loki reports.
    pub fn line(&self) -> u32 {
        match self {
            ParseError::Syntax { line, .. } => *line,
            ParseError::Invalid { .. } => 0,
        }
    }

    /// 1-based column (in characters) of a syntax error; 0 for validation errors.
    pub fn col(&self) -> u32 {
        match self {
            ParseError::Syntax { col, .. } => *col,
            ParseError::Invalid { .. } => 0,
        }
    }

    /// The message without the `parse error ...:` prefix.
    pub fn message(&self) -> &str {
        match self {
            ParseError::Syntax { message, .. } | ParseError::Invalid { message } => message,
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        ParseError::Invalid {
            message: message.into(),
        }
    }
}

/// The message Loki gives for a selector whose matchers all accept the empty string.
pub const EMPTY_SELECTOR_MESSAGE: &str = "queries require at least one regexp or equality matcher that does not have an empty-compatible value. For instance, app=~\".*\" does not meet this requirement, but app=~\".+\" will";

/// Parses and validates a LogQL query.
pub fn parse_expr(input: &str) -> Result<Expr, ParseError> {
    if input.len() >= MAX_QUERY_BYTES {
        return Err(ParseError::invalid(format!(
            "input size too long ({} > {} bytes); shorten the query",
            input.len(),
            MAX_QUERY_BYTES - 1
        )));
    }
    let tokens = tokenize(input).map_err(|e| {
        let (line, col) = line_col(input, e.offset);
        ParseError::Syntax {
            line,
            col,
            message: e.message,
        }
    })?;
    let mut parser = Parser {
        input,
        tokens,
        pos: 0,
    };
    let expr = if parser.at_kw(Keyword::Variants) {
        Expr::Variants(parser.variants()?)
    } else {
        parser.binary(1)?
    };
    if parser.pos < parser.tokens.len() {
        return Err(parser.unexpected(&[]));
    }
    Ok(expr)
}

/// 1-based line and character column of a byte offset.
fn line_col(input: &str, offset: usize) -> (u32, u32) {
    let offset = offset.min(input.len());
    let before = input.get(..offset).unwrap_or(input);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(col).unwrap_or(u32::MAX),
    )
}

struct Parser<'a> {
    input: &'a str,
    tokens: Vec<Token>,
    pos: usize,
}

type Parsed<T> = Result<T, ParseError>;

impl Parser<'_> {
    // ---------- token plumbing ----------

    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|t| &t.kind)
    }

    fn peek_at(&self, ahead: usize) -> Option<&Tok> {
        self.tokens.get(self.pos + ahead).map(|t| &t.kind)
    }

    fn at_sym(&self, sym: Sym) -> bool {
        self.peek() == Some(&Tok::Sym(sym))
    }

    fn at_kw(&self, kw: Keyword) -> bool {
        self.peek() == Some(&Tok::Kw(kw))
    }

    fn eat_sym(&mut self, sym: Sym) -> bool {
        let hit = self.at_sym(sym);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn eat_kw(&mut self, kw: Keyword) -> bool {
        let hit = self.at_kw(kw);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn expect_sym(&mut self, sym: Sym, expecting: &[&str]) -> Parsed<()> {
        if self.eat_sym(sym) {
            Ok(())
        } else {
            Err(self.unexpected(expecting))
        }
    }

    /// "syntax error: unexpected X[, expecting A or B]" at the current token.
    ///
    /// The position is Loki's: the token's line and column, except that a token Loki's
    /// lexer finishes reading character by character (see [`Tok::loki_reads_past_start`])
    /// is reported on line 0, because reading that way invalidates the line (not the
    /// column) of Go's `text/scanner` position: `count_over_time([5m])` fails at
    /// `line 0, col 17`.
    fn unexpected(&self, expecting: &[&str]) -> ParseError {
        let (what, offset, line_zero) = match self.tokens.get(self.pos) {
            Some(t) => (t.kind.describe(), t.start, t.kind.loki_reads_past_start()),
            None => {
                // Loki reports `$end` one past the last character of the last token.
                let end = self.tokens.last().map_or(0, |t| t.end);
                ("$end".to_string(), end, false)
            }
        };
        let (line, col) = line_col(self.input, offset);
        let line = if line_zero { 0 } else { line };
        let mut message = format!("syntax error: unexpected {what}");
        if !expecting.is_empty() {
            message.push_str(", expecting ");
            message.push_str(&expecting.join(" or "));
        }
        ParseError::Syntax { line, col, message }
    }

    fn string(&mut self, expecting: &[&str]) -> Parsed<String> {
        match self.peek() {
            Some(Tok::Str(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => Err(self.unexpected(expecting)),
        }
    }

    fn ident(&mut self, expecting: &[&str]) -> Parsed<String> {
        match self.peek() {
            Some(Tok::Ident(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => Err(self.unexpected(expecting)),
        }
    }

    fn number(&mut self, expecting: &[&str]) -> Parsed<f64> {
        match self.peek() {
            Some(Tok::Number(text)) => {
                let value = parse_number(text)?;
                self.pos += 1;
                Ok(value)
            }
            _ => Err(self.unexpected(expecting)),
        }
    }

    // ---------- expressions ----------

    /// Precedence climbing over binary operators; `min` is the lowest level accepted.
    fn binary(&mut self, min: u8) -> Parsed<Expr> {
        let mut lhs = self.operand()?;
        while let Some(op) = self.peek().and_then(binop_of) {
            let level = op.precedence();
            if level < min {
                break;
            }
            self.pos += 1;
            let modifier = self.modifier()?;
            let next_min = if op.is_right_associative() {
                level
            } else {
                level + 1
            };
            let rhs = self.binary(next_min)?;
            lhs = combine(op, modifier, lhs, rhs)?;
        }
        Ok(lhs)
    }

    fn operand(&mut self) -> Parsed<Expr> {
        match self.peek() {
            Some(Tok::Sym(Sym::LBrace)) => {
                let selector = self.log_selector()?;
                Ok(Expr::Log(selector))
            }
            Some(Tok::Sym(Sym::LParen)) => {
                self.pos += 1;
                let inner = self.binary(1)?;
                self.expect_sym(Sym::RParen, &[")"])?;
                Ok(inner)
            }
            Some(Tok::Number(_)) => Ok(metric(MetricExpr::Literal(self.number(&[])?))),
            Some(Tok::Sym(Sym::Add | Sym::Sub)) => {
                let negative = self.at_sym(Sym::Sub);
                self.pos += 1;
                let value = self.number(&["NUMBER"])?;
                Ok(metric(MetricExpr::Literal(if negative {
                    -value
                } else {
                    value
                })))
            }
            Some(Tok::Kw(Keyword::Range(op))) => {
                let op = *op;
                self.range_aggregation(op).map(metric)
            }
            Some(Tok::Kw(Keyword::Vector(op))) => {
                let op = *op;
                self.vector_aggregation(op).map(metric)
            }
            Some(Tok::Kw(Keyword::VectorFn)) => {
                self.pos += 1;
                self.expect_sym(Sym::LParen, &["("])?;
                let value = self.number(&["NUMBER"])?;
                self.expect_sym(Sym::RParen, &[")"])?;
                Ok(metric(MetricExpr::Vector(value)))
            }
            Some(Tok::Kw(Keyword::LabelReplace)) => self.label_replace().map(metric),
            // `variants(...) of (...)` is a whole query, never an operand.
            _ => Err(self.unexpected(&[])),
        }
    }

    /// An operand that must be a metric expression (inside an aggregation or function).
    fn metric_operand(&mut self) -> Parsed<MetricExpr> {
        match self.binary(1)? {
            Expr::Metric(m) => Ok(m),
            Expr::Log(_) | Expr::Variants(_) => Err(self.unexpected(&["RANGE"])),
        }
    }

    /// `variants ( metric {, metric} ) of ( log_range )`.
    fn variants(&mut self) -> Parsed<VariantsExpr> {
        self.pos += 1;
        self.expect_sym(Sym::LParen, &["("])?;
        let mut variants = vec![self.metric_operand()?];
        while self.eat_sym(Sym::Comma) {
            variants.push(self.metric_operand()?);
        }
        self.expect_sym(Sym::RParen, &[")", ","])?;
        if !self.eat_kw(Keyword::Of) {
            return Err(self.unexpected(&["of"]));
        }
        self.expect_sym(Sym::LParen, &["("])?;
        let of = self.log_range()?;
        self.expect_sym(Sym::RParen, &[")"])?;
        Ok(VariantsExpr { variants, of })
    }

    fn modifier(&mut self) -> Parsed<BinOpModifier> {
        let return_bool = self.eat_kw(Keyword::Bool);
        let on = if self.eat_kw(Keyword::On) {
            true
        } else if self.eat_kw(Keyword::Ignoring) {
            false
        } else {
            return Ok(BinOpModifier {
                return_bool,
                matching: None,
            });
        };
        let labels = self.label_list()?;
        let group = if self.eat_kw(Keyword::GroupLeft) {
            Some(GroupSide::Left(self.optional_label_list()?))
        } else if self.eat_kw(Keyword::GroupRight) {
            Some(GroupSide::Right(self.optional_label_list()?))
        } else {
            None
        };
        Ok(BinOpModifier {
            return_bool,
            matching: Some(VectorMatching { on, labels, group }),
        })
    }

    /// `( [a {, b}] )`
    fn label_list(&mut self) -> Parsed<Vec<String>> {
        self.expect_sym(Sym::LParen, &["("])?;
        let mut labels = Vec::new();
        if self.eat_sym(Sym::RParen) {
            return Ok(labels);
        }
        loop {
            labels.push(self.ident(&["IDENTIFIER"])?);
            if self.eat_sym(Sym::RParen) {
                return Ok(labels);
            }
            self.expect_sym(Sym::Comma, &[")", ","])?;
        }
    }

    fn optional_label_list(&mut self) -> Parsed<Vec<String>> {
        if self.at_sym(Sym::LParen) {
            self.label_list()
        } else {
            Ok(Vec::new())
        }
    }

    fn grouping(&mut self) -> Parsed<Option<Grouping>> {
        if self.eat_kw(Keyword::By) {
            Ok(Some(Grouping::By(self.label_list()?)))
        } else if self.eat_kw(Keyword::Without) {
            Ok(Some(Grouping::Without(self.label_list()?)))
        } else {
            Ok(None)
        }
    }

    fn range_aggregation(&mut self, op: RangeOp) -> Parsed<MetricExpr> {
        self.pos += 1;
        self.expect_sym(Sym::LParen, &["("])?;
        let param = match (self.peek(), self.peek_at(1)) {
            (Some(Tok::Number(_)), Some(Tok::Sym(Sym::Comma))) => {
                let value = self.number(&[])?;
                self.pos += 1;
                Some(value)
            }
            (Some(Tok::Sym(Sym::LBrace | Sym::LParen)), _) => None,
            _ => return Err(self.unexpected(&["NUMBER", "{", "("])),
        };
        let range = self.log_range()?;
        self.expect_sym(Sym::RParen, &[])?;
        let grouping = self.grouping()?;
        let agg = RangeAggregation {
            op,
            param,
            range,
            grouping,
        };
        validate_range_aggregation(&agg)?;
        Ok(MetricExpr::RangeAggregation(agg))
    }

    fn vector_aggregation(&mut self, op: VectorOp) -> Parsed<MetricExpr> {
        self.pos += 1;
        let before = self.grouping()?;
        self.expect_sym(Sym::LParen, &["("])?;
        let param = match (self.peek(), self.peek_at(1)) {
            (Some(Tok::Number(text)), Some(Tok::Sym(Sym::Comma))) => {
                let text = text.clone();
                self.pos += 2;
                Some(text)
            }
            _ => None,
        };
        let inner = self.metric_operand()?;
        self.expect_sym(Sym::RParen, &[")"])?;
        let grouping = match before {
            Some(g) => Some(g),
            None => self.grouping()?,
        };
        let param = vector_param(op, param.as_deref())?;
        if let Some(g) = &grouping {
            let labels = match g {
                Grouping::By(l) | Grouping::Without(l) => l,
            };
            if op == VectorOp::ApproxTopk {
                return Err(ParseError::invalid(
                    "grouping not allowed for approx_topk aggregation",
                ));
            }
            if matches!(op, VectorOp::Sort | VectorOp::SortDesc) && !labels.is_empty() {
                return Err(ParseError::invalid(
                    "sort and sort_desc doesn't allow grouping by",
                ));
            }
        }
        Ok(MetricExpr::VectorAggregation(VectorAggregation {
            op,
            param,
            inner: Box::new(inner),
            grouping,
        }))
    }

    fn label_replace(&mut self) -> Parsed<MetricExpr> {
        self.pos += 1;
        self.expect_sym(Sym::LParen, &["("])?;
        let inner = self.metric_operand()?;
        let mut args = Vec::with_capacity(4);
        for _ in 0..4 {
            self.expect_sym(Sym::Comma, &[","])?;
            args.push(self.string(&["STRING"])?);
        }
        self.expect_sym(Sym::RParen, &[")"])?;
        let [dst, replacement, src, regex] = <[String; 4]>::try_from(args)
            .map_err(|_| ParseError::invalid("label_replace takes exactly four strings"))?;
        Regex::new(&format!("^(?:{regex})$")).map_err(|e| {
            ParseError::invalid(format!(
                "invalid regex in label_replace: {regex:?}: {}",
                regex_reason(&e)
            ))
        })?;
        Ok(MetricExpr::LabelReplace(LabelReplace {
            inner: Box::new(inner),
            dst,
            replacement,
            src,
            regex,
        }))
    }

    // ---------- log side ----------

    fn selector(&mut self) -> Parsed<Vec<Matcher>> {
        self.expect_sym(Sym::LBrace, &["{"])?;
        let mut matchers = Vec::new();
        if !self.eat_sym(Sym::RBrace) {
            loop {
                matchers.push(self.matcher()?);
                if self.eat_sym(Sym::RBrace) {
                    break;
                }
                self.expect_sym(Sym::Comma, &["}", ","])?;
            }
        }
        if !matchers.iter().any(|m| !m.matches_empty()) {
            return Err(ParseError::invalid(EMPTY_SELECTOR_MESSAGE));
        }
        Ok(matchers)
    }

    /// `name op "value"` with a string match operator.
    fn matcher(&mut self) -> Parsed<Matcher> {
        let name = self.ident(&["IDENTIFIER"])?;
        let op = match self.peek().and_then(match_op_of) {
            Some(op) => op,
            None => return Err(self.unexpected(&["=", "!=", "=~", "!~"])),
        };
        self.pos += 1;
        let value = self.string(&["STRING"])?;
        new_matcher(name, op, value)
    }

    fn log_selector(&mut self) -> Parsed<LogSelector> {
        let matchers = self.selector()?;
        let (pipeline, _) = self.pipeline(false)?;
        Ok(LogSelector { matchers, pipeline })
    }

    /// Every placement of `[range]` Loki accepts (reference §2.2 `log_range`).
    fn log_range(&mut self) -> Parsed<LogRange> {
        if self.eat_sym(Sym::LParen) {
            if self.at_sym(Sym::LParen) {
                let range = self.log_range()?;
                self.expect_sym(Sym::RParen, &[")"])?;
                return Ok(range);
            }
            let matchers = self.selector()?;
            if let Some(range) = self.eat_range() {
                let log_range = self.after_range_first(matchers, range)?;
                self.expect_sym(Sym::RParen, &[")"])?;
                return Ok(log_range);
            }
            let (pipeline, unwrap) = self.pipeline(true)?;
            if let Some(range) = self.eat_range() {
                let offset = self.offset()?;
                self.expect_sym(Sym::RParen, &[")"])?;
                return Ok(LogRange {
                    selector: LogSelector { matchers, pipeline },
                    unwrap,
                    range,
                    offset,
                });
            }
            self.expect_sym(Sym::RParen, &[")", "RANGE"])?;
            let range = self.expect_range()?;
            let offset = self.offset()?;
            let unwrap = if pipeline.is_empty() && unwrap.is_none() && self.at_unwrap() {
                self.pos += 2;
                Some(self.unwrap()?)
            } else {
                unwrap
            };
            return Ok(LogRange {
                selector: LogSelector { matchers, pipeline },
                unwrap,
                range,
                offset,
            });
        }
        let matchers = self.selector()?;
        if let Some(range) = self.eat_range() {
            return self.after_range_first(matchers, range);
        }
        let (pipeline, unwrap) = self.pipeline(true)?;
        let range = self.expect_range()?;
        let offset = self.offset()?;
        Ok(LogRange {
            selector: LogSelector { matchers, pipeline },
            unwrap,
            range,
            offset,
        })
    }

    /// `selector RANGE [offset] [pipeline] [unwrap]`, after the RANGE.
    fn after_range_first(&mut self, matchers: Vec<Matcher>, range: i64) -> Parsed<LogRange> {
        let offset = self.offset()?;
        let (pipeline, unwrap) = self.pipeline(true)?;
        Ok(LogRange {
            selector: LogSelector { matchers, pipeline },
            unwrap,
            range,
            offset,
        })
    }

    fn eat_range(&mut self) -> Option<i64> {
        match self.peek() {
            Some(Tok::Range(ns)) => {
                let ns = *ns;
                self.pos += 1;
                Some(ns)
            }
            _ => None,
        }
    }

    fn expect_range(&mut self) -> Parsed<i64> {
        self.eat_range().ok_or_else(|| self.unexpected(&[]))
    }

    fn offset(&mut self) -> Parsed<i64> {
        if !self.eat_kw(Keyword::Offset) {
            return Ok(0);
        }
        match self.peek() {
            Some(Tok::Duration(ns)) => {
                let ns = *ns;
                self.pos += 1;
                Ok(ns)
            }
            _ => Err(self.unexpected(&["DURATION"])),
        }
    }

    fn at_unwrap(&self) -> bool {
        self.at_sym(Sym::Pipe) && self.peek_at(1) == Some(&Tok::Kw(Keyword::Unwrap))
    }

    /// Stages until something that cannot continue a pipeline. With `allow_unwrap`, a
    /// `| unwrap` ends the pipeline (only label filters may follow it).
    fn pipeline(&mut self, allow_unwrap: bool) -> Parsed<(Vec<Stage>, Option<Unwrap>)> {
        let mut stages = Vec::new();
        loop {
            match self.peek() {
                Some(Tok::Sym(sym)) if line_filter_op_of(*sym).is_some() => {
                    stages.push(Stage::LineFilter(self.line_filter()?));
                }
                Some(Tok::Sym(Sym::Pipe)) => {
                    if self.at_unwrap() {
                        if !allow_unwrap {
                            self.pos += 1;
                            return Err(self.unexpected(&[]));
                        }
                        self.pos += 2;
                        return Ok((stages, Some(self.unwrap()?)));
                    }
                    self.pos += 1;
                    stages.push(self.pipe_stage()?);
                }
                _ => return Ok((stages, None)),
            }
        }
    }

    fn line_filter(&mut self) -> Parsed<LineFilter> {
        let op = match self.peek() {
            Some(Tok::Sym(sym)) => line_filter_op_of(*sym),
            _ => None,
        };
        let Some(op) = op else {
            return Err(self.unexpected(&[]));
        };
        self.pos += 1;
        let mut values = vec![self.line_filter_value()?];
        while self.eat_kw(Keyword::Or) {
            values.push(self.line_filter_value()?);
        }
        let filter = LineFilter { op, values };
        validate_line_filter(&filter)?;
        Ok(filter)
    }

    fn line_filter_value(&mut self) -> Parsed<LineFilterValue> {
        match self.peek() {
            Some(Tok::Str(_)) => Ok(LineFilterValue::Literal(self.string(&[])?)),
            Some(Tok::Kw(Keyword::Ip)) => {
                self.pos += 1;
                Ok(LineFilterValue::Ip(self.ip_argument()?))
            }
            _ => Err(self.unexpected(&["STRING", "ip"])),
        }
    }

    /// `( "pattern" )` after `ip`.
    fn ip_argument(&mut self) -> Parsed<String> {
        self.expect_sym(Sym::LParen, &["("])?;
        let pattern = self.string(&["STRING"])?;
        self.expect_sym(Sym::RParen, &[")"])?;
        Ok(pattern)
    }

    /// The stage after a `|`.
    fn pipe_stage(&mut self) -> Parsed<Stage> {
        let stage = match self.peek() {
            Some(Tok::Kw(Keyword::Json)) => {
                self.pos += 1;
                Stage::Json(self.extract_params()?)
            }
            Some(Tok::Kw(Keyword::Logfmt)) => {
                self.pos += 1;
                let mut parser = LogfmtParser::default();
                while let Some(Tok::Flag(flag)) = self.peek() {
                    match flag {
                        Flag::Strict => parser.strict = true,
                        Flag::KeepEmpty => parser.keep_empty = true,
                    }
                    self.pos += 1;
                }
                parser.params = self.extract_params()?;
                Stage::Logfmt(parser)
            }
            Some(Tok::Kw(Keyword::Regexp)) => {
                self.pos += 1;
                let re = self.string(&["STRING"])?;
                validate_regexp_parser(&re)?;
                Stage::Regexp(re)
            }
            Some(Tok::Kw(Keyword::Pattern)) => {
                self.pos += 1;
                let template = self.string(&["STRING"])?;
                validate_parser_pattern(&template)
                    .map_err(|e| ParseError::invalid(format!("invalid pattern parser: {e}")))?;
                Stage::Pattern(template)
            }
            Some(Tok::Kw(Keyword::Unpack)) => {
                self.pos += 1;
                Stage::Unpack
            }
            Some(Tok::Kw(Keyword::Decolorize)) => {
                self.pos += 1;
                Stage::Decolorize
            }
            Some(Tok::Kw(Keyword::LineFormat)) => {
                self.pos += 1;
                Stage::LineFormat(self.string(&["STRING"])?)
            }
            Some(Tok::Kw(Keyword::LabelFormat)) => {
                self.pos += 1;
                Stage::LabelFormat(self.label_fmts()?)
            }
            Some(Tok::Kw(Keyword::Drop)) => {
                self.pos += 1;
                Stage::Drop(self.named_matchers()?)
            }
            Some(Tok::Kw(Keyword::Keep)) => {
                self.pos += 1;
                Stage::Keep(self.named_matchers()?)
            }
            Some(Tok::Ident(_) | Tok::Sym(Sym::LParen)) => Stage::LabelFilter(self.label_filter()?),
            _ => return Err(self.unexpected(&[])),
        };
        Ok(stage)
    }

    /// `[a="expr" {, b}]` after `json` / `logfmt`.
    fn extract_params(&mut self) -> Parsed<Vec<ExtractParam>> {
        let mut params = Vec::new();
        if !matches!(self.peek(), Some(Tok::Ident(_))) {
            return Ok(params);
        }
        loop {
            let label = self.ident(&["IDENTIFIER"])?;
            let expr = if self.eat_sym(Sym::Eq) {
                self.string(&["STRING"])?
            } else {
                label.clone()
            };
            params.push(ExtractParam { label, expr });
            if !self.eat_sym(Sym::Comma) {
                return Ok(params);
            }
        }
    }

    fn label_fmts(&mut self) -> Parsed<Vec<LabelFmt>> {
        let mut fmts: Vec<LabelFmt> = Vec::new();
        loop {
            let dst = self.ident(&["IDENTIFIER"])?;
            self.expect_sym(Sym::Eq, &["="])?;
            let fmt = match self.peek() {
                Some(Tok::Ident(src)) => {
                    let src = src.clone();
                    self.pos += 1;
                    LabelFmt::Rename { dst, src }
                }
                Some(Tok::Str(template)) => {
                    let template = template.clone();
                    self.pos += 1;
                    LabelFmt::Template { dst, template }
                }
                _ => return Err(self.unexpected(&["IDENTIFIER", "STRING"])),
            };
            if fmt.dst() == "__error__" {
                return Err(ParseError::invalid(
                    "label_format cannot set __error__: filter or drop it instead",
                ));
            }
            if fmts.iter().any(|f| f.dst() == fmt.dst()) {
                return Err(ParseError::invalid(format!(
                    "label_format assigns label {:?} more than once; use one assignment or chain stages",
                    fmt.dst()
                )));
            }
            fmts.push(fmt);
            if !self.eat_sym(Sym::Comma) {
                return Ok(fmts);
            }
        }
    }

    fn named_matchers(&mut self) -> Parsed<Vec<NamedMatcher>> {
        let mut items = Vec::new();
        loop {
            let name = self.ident(&["IDENTIFIER"])?;
            let item = match self.peek().and_then(match_op_of) {
                Some(op) => {
                    self.pos += 1;
                    let value = self.string(&["STRING"])?;
                    NamedMatcher::Matcher(new_matcher(name, op, value)?)
                }
                None => NamedMatcher::Name(name),
            };
            items.push(item);
            if !self.eat_sym(Sym::Comma) {
                return Ok(items);
            }
        }
    }

    /// After `| unwrap`: the label, its conversion and the label filters that follow.
    fn unwrap(&mut self) -> Parsed<Unwrap> {
        let conversion = match self.peek() {
            Some(Tok::Kw(Keyword::BytesConv)) => Conversion::Bytes,
            Some(Tok::Kw(Keyword::DurationConv)) => Conversion::Duration,
            Some(Tok::Kw(Keyword::DurationSecondsConv)) => Conversion::DurationSeconds,
            _ => Conversion::Float,
        };
        let label = if conversion == Conversion::Float {
            self.ident(&["IDENTIFIER"])?
        } else {
            self.pos += 1;
            self.expect_sym(Sym::LParen, &["("])?;
            let label = self.ident(&["IDENTIFIER"])?;
            self.expect_sym(Sym::RParen, &[")"])?;
            label
        };
        let mut post_filters = Vec::new();
        while self.eat_sym(Sym::Pipe) {
            post_filters.push(self.label_filter()?);
        }
        Ok(Unwrap {
            label,
            conversion,
            post_filters,
        })
    }

    // ---------- label filters ----------
    // `and` binds tighter than `or`; `,` and juxtaposition take the whole rest
    // (Loki's parser shifts on them), see the reference §2.4(1).

    fn label_filter(&mut self) -> Parsed<LabelFilter> {
        let mut lhs = self.label_filter_and()?;
        while self.eat_kw(Keyword::Or) {
            let rhs = self.label_filter_and()?;
            lhs = LabelFilter::Or(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn label_filter_and(&mut self) -> Parsed<LabelFilter> {
        let mut lhs = self.label_filter_juxtaposed()?;
        while self.eat_kw(Keyword::And) {
            let rhs = self.label_filter_juxtaposed()?;
            lhs = LabelFilter::And(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn label_filter_juxtaposed(&mut self) -> Parsed<LabelFilter> {
        let first = self.label_filter_atom()?;
        let continues = if self.eat_sym(Sym::Comma) {
            true
        } else {
            matches!(self.peek(), Some(Tok::Ident(_) | Tok::Sym(Sym::LParen)))
        };
        if !continues {
            return Ok(first);
        }
        let rest = self.label_filter()?;
        Ok(LabelFilter::And(Box::new(first), Box::new(rest)))
    }

    fn label_filter_atom(&mut self) -> Parsed<LabelFilter> {
        if self.eat_sym(Sym::LParen) {
            let inner = self.label_filter()?;
            self.expect_sym(Sym::RParen, &[")"])?;
            return Ok(inner);
        }
        let name = self.ident(&["IDENTIFIER", "("])?;
        let op = match self.peek() {
            Some(Tok::Sym(sym)) => *sym,
            _ => return Err(self.unexpected(&["=", "!=", "=~", "!~", "==", ">", ">=", "<", "<="])),
        };
        let cmp = match op {
            Sym::Re | Sym::Nre => None,
            Sym::Eq => Some(CmpOp::Eq),
            Sym::Neq => Some(CmpOp::Neq),
            Sym::EqEq => Some(CmpOp::Eq),
            Sym::Gt => Some(CmpOp::Gt),
            Sym::Gte => Some(CmpOp::Gte),
            Sym::Lt => Some(CmpOp::Lt),
            Sym::Lte => Some(CmpOp::Lte),
            _ => return Err(self.unexpected(&["=", "!=", "=~", "!~", "==", ">", ">=", "<", "<="])),
        };
        self.pos += 1;
        let string_op = match_op_of(&Tok::Sym(op));
        match (self.peek(), string_op, cmp) {
            (Some(Tok::Str(_)), Some(op), _) => {
                let value = self.string(&[])?;
                Ok(LabelFilter::Matcher(new_matcher(name, op, value)?))
            }
            (Some(Tok::Kw(Keyword::Ip)), Some(MatchOp::Eq | MatchOp::Neq), _) => {
                self.pos += 1;
                let pattern = self.ip_argument()?;
                Ok(LabelFilter::Ip {
                    name,
                    negated: op == Sym::Neq,
                    pattern,
                })
            }
            (Some(Tok::Duration(ns)), _, Some(op)) => {
                let value = *ns;
                self.pos += 1;
                Ok(LabelFilter::Duration { name, op, value })
            }
            (Some(Tok::Bytes(b)), _, Some(op)) => {
                let value = *b;
                self.pos += 1;
                Ok(LabelFilter::Bytes { name, op, value })
            }
            (Some(Tok::Number(_)), _, Some(op)) => {
                let value = self.number(&[])?;
                Ok(LabelFilter::Number { name, op, value })
            }
            (Some(Tok::Sym(sign @ (Sym::Add | Sym::Sub))), _, Some(op)) => {
                let negative = *sign == Sym::Sub;
                self.pos += 1;
                let value = self.number(&["NUMBER"])?;
                let value = if negative { -value } else { value };
                Ok(LabelFilter::Number { name, op, value })
            }
            (_, Some(_), _) => {
                Err(self.unexpected(&["STRING", "NUMBER", "DURATION", "BYTES", "ip"]))
            }
            _ => Err(self.unexpected(&["NUMBER", "DURATION", "BYTES"])),
        }
    }
}

fn metric(m: MetricExpr) -> Expr {
    Expr::Metric(m)
}

/// Go's `strconv.ParseFloat` on a NUMBER token (hex, octal and `_` forms are rejected,
/// as Loki rejects them).
fn parse_number(text: &str) -> Parsed<f64> {
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
    match text.parse::<f64>() {
        Ok(v) if plain => Ok(v),
        _ => Err(ParseError::invalid(format!(
            "unable to parse literal as a float: {text:?}"
        ))),
    }
}

fn binop_of(tok: &Tok) -> Option<BinOp> {
    Some(match tok {
        Tok::Kw(Keyword::Or) => BinOp::Or,
        Tok::Kw(Keyword::And) => BinOp::And,
        Tok::Kw(Keyword::Unless) => BinOp::Unless,
        Tok::Sym(Sym::EqEq) => BinOp::Eq,
        Tok::Sym(Sym::Neq) => BinOp::Neq,
        Tok::Sym(Sym::Gt) => BinOp::Gt,
        Tok::Sym(Sym::Gte) => BinOp::Gte,
        Tok::Sym(Sym::Lt) => BinOp::Lt,
        Tok::Sym(Sym::Lte) => BinOp::Lte,
        Tok::Sym(Sym::Add) => BinOp::Add,
        Tok::Sym(Sym::Sub) => BinOp::Sub,
        Tok::Sym(Sym::Mul) => BinOp::Mul,
        Tok::Sym(Sym::Div) => BinOp::Div,
        Tok::Sym(Sym::Mod) => BinOp::Mod,
        Tok::Sym(Sym::Pow) => BinOp::Pow,
        _ => return None,
    })
}

fn match_op_of(tok: &Tok) -> Option<MatchOp> {
    match tok {
        Tok::Sym(Sym::Eq) => Some(MatchOp::Eq),
        Tok::Sym(Sym::Neq) => Some(MatchOp::Neq),
        Tok::Sym(Sym::Re) => Some(MatchOp::Re),
        Tok::Sym(Sym::Nre) => Some(MatchOp::Nre),
        _ => None,
    }
}

fn line_filter_op_of(sym: Sym) -> Option<LineFilterOp> {
    match sym {
        Sym::PipeExact => Some(LineFilterOp::Contains),
        Sym::Neq => Some(LineFilterOp::NotContains),
        Sym::PipeMatch => Some(LineFilterOp::Match),
        Sym::Nre => Some(LineFilterOp::NotMatch),
        Sym::PipePattern => Some(LineFilterOp::Pattern),
        Sym::NotPattern => Some(LineFilterOp::NotPattern),
        _ => None,
    }
}

fn new_matcher(name: String, op: MatchOp, value: String) -> Parsed<Matcher> {
    Matcher::new(name, op, value).map_err(|e| {
        ParseError::invalid(format!(
            "error parsing regexp {:?} for label {:?}: {}",
            e.pattern,
            e.name,
            last_line(&e.reason)
        ))
    })
}

/// The regex crate's errors span several lines (pattern, caret, reason); Loki's are one
/// line, so keep the reason.
fn regex_reason(e: &regex::Error) -> String {
    last_line(&e.to_string()).to_string()
}

fn last_line(text: &str) -> &str {
    let line = text.trim_end().lines().last().unwrap_or(text);
    line.trim().trim_start_matches("error: ")
}

/// Combines two operands, enforcing Loki's leg rules and folding literal pairs.
fn combine(op: BinOp, modifier: BinOpModifier, lhs: Expr, rhs: Expr) -> Parsed<Expr> {
    let lhs = metric_leg(op, "left", lhs)?;
    let rhs = metric_leg(op, "right", rhs)?;
    if op.is_set_operator() {
        for (side, leg) in [("left", &lhs), ("right", &rhs)] {
            if let MetricExpr::Literal(v) = leg {
                return Err(ParseError::invalid(format!(
                    "unexpected literal for {side} leg of logical/set binary operation ({}): {v:.6}",
                    op.as_str()
                )));
            }
        }
    }
    if let (MetricExpr::Literal(a), MetricExpr::Literal(b)) = (&lhs, &rhs) {
        return Ok(metric(MetricExpr::Literal(fold(op, *a, *b))));
    }
    Ok(metric(MetricExpr::BinOp(BinOpExpr {
        op,
        lhs: Box::new(lhs),
        rhs: Box::new(rhs),
        modifier,
    })))
}

fn metric_leg(op: BinOp, side: &str, leg: Expr) -> Parsed<MetricExpr> {
    match leg {
        Expr::Metric(m) => Ok(m),
        Expr::Log(selector) => {
            // Loki names its Go type here; users of Grafana have seen these strings.
            let kind = if selector.pipeline.is_empty() {
                "*syntax.MatchersExpr"
            } else {
                "*syntax.PipelineExpr"
            };
            Err(ParseError::invalid(format!(
                "unexpected type for {side} leg of binary operation ({}): {kind}",
                op.as_str()
            )))
        }
        // The parser reads `variants` only as a whole query, so no operand is one.
        Expr::Variants(_) => Err(ParseError::invalid(format!(
            "unexpected variants expression for {side} leg of binary operation ({})",
            op.as_str()
        ))),
    }
}

/// Literal ⊕ literal, as Loki folds it: comparisons give 0/1, `/ 0` and `% 0` give NaN.
fn fold(op: BinOp, a: f64, b: f64) -> f64 {
    let truth = |c: bool| if c { 1.0 } else { 0.0 };
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div if b == 0.0 => f64::NAN,
        BinOp::Div => a / b,
        BinOp::Mod if b == 0.0 => f64::NAN,
        BinOp::Mod => a % b,
        BinOp::Pow => a.powf(b),
        BinOp::Eq => truth(a == b),
        BinOp::Neq => truth(a != b),
        BinOp::Gt => truth(a > b),
        BinOp::Gte => truth(a >= b),
        BinOp::Lt => truth(a < b),
        BinOp::Lte => truth(a <= b),
        // Set operators reject literal legs before folding.
        BinOp::Or | BinOp::And | BinOp::Unless => f64::NAN,
    }
}

fn validate_range_aggregation(agg: &RangeAggregation) -> Parsed<()> {
    use RangeOp::*;
    let name = agg.op.as_str();
    let with_unwrap = agg.range.unwrap.is_some();
    let allowed = if with_unwrap {
        !matches!(agg.op, CountOverTime | BytesOverTime | BytesRate)
    } else {
        matches!(
            agg.op,
            CountOverTime | Rate | BytesOverTime | BytesRate | AbsentOverTime
        )
    };
    if !allowed {
        let how = if with_unwrap { "with" } else { "without" };
        return Err(ParseError::invalid(format!(
            "invalid aggregation {name} {how} unwrap"
        )));
    }
    let groupable = matches!(
        agg.op,
        AvgOverTime
            | MinOverTime
            | MaxOverTime
            | StddevOverTime
            | StdvarOverTime
            | QuantileOverTime
            | FirstOverTime
            | LastOverTime
    );
    if agg.grouping.is_some() && !groupable {
        return Err(ParseError::invalid(format!(
            "grouping not allowed for {name} aggregation"
        )));
    }
    match (agg.op, agg.param) {
        (QuantileOverTime, None) => Err(ParseError::invalid(format!(
            "parameter required for operation {name}"
        ))),
        (QuantileOverTime, Some(_)) | (_, None) => Ok(()),
        (_, Some(p)) => Err(ParseError::invalid(format!(
            "parameter {p} not supported for operation {name}"
        ))),
    }
}

/// The `k` of `topk`/`bottomk`/`approx_topk` (a positive integer, Go `Atoi` syntax);
/// any other op must not have a parameter.
fn vector_param(op: VectorOp, param: Option<&str>) -> Parsed<Option<i64>> {
    let name = op.as_str();
    let takes_param = matches!(
        op,
        VectorOp::Topk | VectorOp::Bottomk | VectorOp::ApproxTopk
    );
    match (takes_param, param) {
        (false, None) => Ok(None),
        (false, Some(p)) => Err(ParseError::invalid(format!(
            "unsupported parameter for operation {name}({p},"
        ))),
        (true, None) => Err(ParseError::invalid(format!(
            "parameter required for operation {name}"
        ))),
        (true, Some(p)) => {
            let k: i64 = p
                .parse()
                .map_err(|_| ParseError::invalid(format!("invalid parameter {name}({p},")))?;
            if k <= 0 {
                return Err(ParseError::invalid(format!(
                    "invalid parameter (must be greater than 0) {name}({p}"
                )));
            }
            Ok(Some(k))
        }
    }
}

/// Checks what Loki only checks when it builds the pipeline, so that the user hears about
/// it at parse time: regexes compile, `ip()` only with `|=`/`!=`, filter patterns valid.
fn validate_line_filter(filter: &LineFilter) -> Parsed<()> {
    let stage = || Stage::LineFilter(filter.clone()).to_string();
    for value in &filter.values {
        match (filter.op, value) {
            (LineFilterOp::Contains | LineFilterOp::NotContains, _) => {}
            (_, LineFilterValue::Ip(_)) => {
                return Err(ParseError::invalid(format!(
                    "stage '{}' : ip() can only be used with |= or !=",
                    stage()
                )))
            }
            (LineFilterOp::Match | LineFilterOp::NotMatch, LineFilterValue::Literal(re)) => {
                let go_style = regex_syntax::Parser::new()
                    .parse(re)
                    .map_err(|e| format!("{}: `{re}`", go_regex_reason(&e)));
                go_style
                    .and_then(|_| Regex::new(re).map_err(|e| regex_reason(&e)))
                    .map_err(|reason| {
                        ParseError::invalid(format!(
                            "stage '{}' : error parsing regexp: {reason}",
                            stage()
                        ))
                    })?;
            }
            (LineFilterOp::Pattern | LineFilterOp::NotPattern, LineFilterValue::Literal(p)) => {
                validate_filter_pattern(p)
                    .map_err(|e| ParseError::invalid(format!("stage '{}' : {e}", stage())))?;
            }
        }
    }
    Ok(())
}

/// `| regexp`: valid, with at least one named group (the regex crate rejects
/// duplicate names itself).
fn validate_regexp_parser(re: &str) -> Parsed<()> {
    let compiled = Regex::new(re).map_err(|e| {
        ParseError::invalid(format!(
            "invalid regexp parser {re:?}: {}",
            regex_reason(&e)
        ))
    })?;
    if compiled.capture_names().flatten().next().is_none() {
        return Err(ParseError::invalid(format!(
            "invalid regexp parser {re:?}: at least one named capture group (?P<name>...) is required"
        )));
    }
    Ok(())
}
