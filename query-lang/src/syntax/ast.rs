//! The LogQL abstract syntax tree: what a parsed query *means*, with no trace of how it
//! was spelled.
//!
//! Owns the types only. Parsing lives in `parser`, the canonical text form (what
//! `/loki/api/v1/format_query` returns) in `printer`, and evaluation in the engine
//! modules of this crate. Syntax that Loki treats as equivalent is normalised here:
//! the four placements of `[range]` all become one [`LogRange`], `,` and juxtaposition
//! between label filters become [`LabelFilter::And`], keywords lose their case,
//! literal-only binary operations are folded into a [`MetricExpr::Literal`], and a
//! leading `-` on a number is part of the literal (LogQL has no unary minus on
//! expressions: `-count_over_time(...)` is a syntax error).
//!
//! Durations (ranges, offsets, duration filters) are nanoseconds in an `i64`, like Go's
//! `time.Duration`. Regexes are kept as source text except inside [`Matcher`], which
//! compiles (and so validates) its anchored regex when it is built.

use crate::Matcher;

/// A whole LogQL query.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `{selector} <pipeline>`: returns log lines.
    Log(LogSelector),
    /// Anything returning samples: range and vector aggregations, binary operations,
    /// literals, `vector(x)`, `label_replace(...)`.
    Metric(MetricExpr),
    /// `variants(m1, m2, ...) of (log_range)`: several metric expressions over one
    /// read of the log range (experimental in Loki, gated per tenant).
    Variants(VariantsExpr),
}

/// `variants(count_over_time({a="b"}[1m]), bytes_over_time({a="b"}[1m])) of ({a="b"}[1m])`.
///
/// The log range decides which lines are read (its selector, pipeline and window); each
/// variant is evaluated over those lines and its series carry `__variant__="<index>"`.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantsExpr {
    /// At least one.
    pub variants: Vec<MetricExpr>,
    pub of: LogRange,
}

/// A stream selector with its pipeline: `{app="x", env=~"p.*"} |= "err" | json`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSelector {
    /// At least one of them does not match the empty string (checked by the parser).
    pub matchers: Vec<Matcher>,
    /// Stages in the order they run.
    pub pipeline: Vec<Stage>,
}

/// One pipeline stage.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// `|= "a" or "b"`, `!~ "re"`, `|> "<_> x"`, `|= ip("10.0.0.0/8")`.
    LineFilter(LineFilter),
    /// `| json` or `| json a="x.y", b`.
    Json(Vec<ExtractParam>),
    /// `| logfmt [--strict] [--keep-empty] [a="key", b]`.
    Logfmt(LogfmtParser),
    /// `| regexp "(?P<name>re)"` (the source text; validated at parse time).
    Regexp(String),
    /// `| pattern "<ip> - <_> <status>"` (the source text; validated at parse time).
    Pattern(String),
    /// `| unpack`.
    Unpack,
    /// `| status >= 500 and level="error"`.
    LabelFilter(LabelFilter),
    /// `| line_format "{{.msg}}"`: the Go template, as written (unescaped).
    LineFormat(String),
    /// `| label_format dst=src, dst2="{{.tmpl}}"`.
    LabelFormat(Vec<LabelFmt>),
    /// `| decolorize`.
    Decolorize,
    /// `| drop a, b="v", c=~"re"`.
    Drop(Vec<NamedMatcher>),
    /// `| keep a, b="v"`.
    Keep(Vec<NamedMatcher>),
}

/// A line filter with its `or` chain. `values` is never empty; the first is the head.
///
/// For negative operators Loki rewrites `!= "a" or "b"` into `!= "a" != "b"`, so the
/// chain means "contains none of them"; for positive ones it means "any of them".
#[derive(Debug, Clone, PartialEq)]
pub struct LineFilter {
    pub op: LineFilterOp,
    pub values: Vec<LineFilterValue>,
}

/// The six line-filter operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LineFilterOp {
    /// `|=` substring
    Contains,
    /// `!=` no substring
    NotContains,
    /// `|~` unanchored regex
    Match,
    /// `!~` regex does not match
    NotMatch,
    /// `|>` pattern with `<_>` wildcards
    Pattern,
    /// `!>` pattern does not match
    NotPattern,
}

impl LineFilterOp {
    /// The operator as written in LogQL.
    pub fn as_str(self) -> &'static str {
        match self {
            LineFilterOp::Contains => "|=",
            LineFilterOp::NotContains => "!=",
            LineFilterOp::Match => "|~",
            LineFilterOp::NotMatch => "!~",
            LineFilterOp::Pattern => "|>",
            LineFilterOp::NotPattern => "!>",
        }
    }

    /// True for `!=`, `!~`, `!>`.
    pub fn is_negative(self) -> bool {
        matches!(
            self,
            LineFilterOp::NotContains | LineFilterOp::NotMatch | LineFilterOp::NotPattern
        )
    }
}

/// One operand of a line filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LineFilterValue {
    /// A string: substring, regex or pattern depending on the operator.
    Literal(String),
    /// `ip("192.168.0.0/16")`: an address, CIDR or range (only with `|=` / `!=`).
    Ip(String),
}

/// One extraction of `json` or `logfmt` with parameters: `label="expression"`.
/// A bare `b` is stored as `label: "b", expr: "b"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExtractParam {
    /// The label to create (used verbatim).
    pub label: String,
    /// For `json` a path (`a.b[0]["x-y"]`); for `logfmt` a plain key.
    pub expr: String,
}

/// `logfmt` with its flags and optional parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LogfmtParser {
    /// `--strict`: stop at the first malformed pair and set `LogfmtParserErr`.
    pub strict: bool,
    /// `--keep-empty`: keep standalone keys and empty values as `""`.
    pub keep_empty: bool,
    /// Empty means "extract everything".
    pub params: Vec<ExtractParam>,
}

/// A label filter expression. Parentheses are not kept: the tree shape says it all.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelFilter {
    /// Both hold (`and`, `,` or two filters side by side).
    And(Box<LabelFilter>, Box<LabelFilter>),
    /// Either holds.
    Or(Box<LabelFilter>, Box<LabelFilter>),
    /// `name op "string"`: a Prometheus matcher; a missing label compares as `""`.
    Matcher(Matcher),
    /// `name op 1.5`: the label value is parsed as a float.
    Number { name: String, op: CmpOp, value: f64 },
    /// `name op 250ms`: the label value is parsed as a Go duration. Nanoseconds.
    Duration { name: String, op: CmpOp, value: i64 },
    /// `name op 20KB`: the label value is parsed as a humanized byte size.
    Bytes { name: String, op: CmpOp, value: u64 },
    /// `name = ip("10.0.0.0/8")` or `!=`.
    Ip {
        name: String,
        negated: bool,
        pattern: String,
    },
}

/// Comparison operators of typed label filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `=` or `==` (both mean equality; printed as `==`)
    Eq,
    /// `!=`
    Neq,
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// `<`
    Lt,
    /// `<=`
    Lte,
}

impl CmpOp {
    /// The operator as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Neq => "!=",
            CmpOp::Gt => ">",
            CmpOp::Gte => ">=",
            CmpOp::Lt => "<",
            CmpOp::Lte => "<=",
        }
    }
}

/// One assignment of `label_format`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LabelFmt {
    /// `dst=src`: move the value of `src` to `dst`.
    Rename { dst: String, src: String },
    /// `dst="{{.tmpl}}"`: set `dst` to the rendered Go template (kept as source text).
    Template { dst: String, template: String },
}

impl LabelFmt {
    /// The label this assignment writes.
    pub fn dst(&self) -> &str {
        match self {
            LabelFmt::Rename { dst, .. } | LabelFmt::Template { dst, .. } => dst,
        }
    }
}

/// An item of `drop` / `keep`: a bare label name or a matcher on the label's value.
#[derive(Debug, Clone, PartialEq)]
pub enum NamedMatcher {
    Name(String),
    Matcher(Matcher),
}

impl NamedMatcher {
    /// The label the item names.
    pub fn name(&self) -> &str {
        match self {
            NamedMatcher::Name(n) => n,
            NamedMatcher::Matcher(m) => &m.name,
        }
    }
}

/// `| unwrap [conv(]label[)] {| label_filter}` at the end of a range pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Unwrap {
    pub label: String,
    pub conversion: Conversion,
    /// Label filters after the unwrap (typically `| __error__=""`), each its own stage.
    pub post_filters: Vec<LabelFilter>,
}

/// How an unwrapped label value becomes a sample value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Conversion {
    /// Plain `unwrap x`: `strconv.ParseFloat`.
    #[default]
    Float,
    /// `bytes(x)`: humanized byte size.
    Bytes,
    /// `duration(x)`: Go duration, in seconds.
    Duration,
    /// `duration_seconds(x)`: same as `duration`.
    DurationSeconds,
}

impl Conversion {
    /// The function name as written, or `None` for a plain unwrap.
    pub fn function_name(self) -> Option<&'static str> {
        match self {
            Conversion::Float => None,
            Conversion::Bytes => Some("bytes"),
            Conversion::Duration => Some("duration"),
            Conversion::DurationSeconds => Some("duration_seconds"),
        }
    }
}

/// The log part of a range aggregation: `{sel} <pipeline> [| unwrap x] [5m] offset 1h`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRange {
    pub selector: LogSelector,
    pub unwrap: Option<Unwrap>,
    /// The window, nanoseconds (> 0 is not required by Loki's grammar; `[0s]` parses).
    pub range: i64,
    /// `offset`, nanoseconds; may be negative. 0 when absent.
    pub offset: i64,
}

/// Any expression producing samples.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricExpr {
    /// `rate({...}[5m])` and friends.
    RangeAggregation(RangeAggregation),
    /// `sum by (x) (...)` and friends.
    VectorAggregation(VectorAggregation),
    /// `a / on(x) group_left b`, `a > bool 1`, `a or vector(0)`.
    BinOp(BinOpExpr),
    /// A number, sign included (`-1`). Also the result of folding `1 + 2 * 3`.
    Literal(f64),
    /// `vector(1)`: one label-less sample at every step.
    Vector(f64),
    /// `label_replace(v, "dst", "replacement", "src", "regex")`.
    LabelReplace(LabelReplace),
}

/// A range aggregation over a log range.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeAggregation {
    pub op: RangeOp,
    /// Only `quantile_over_time` has one (φ).
    pub param: Option<f64>,
    pub range: LogRange,
    /// Only after the call, and only for the ops that accept it (checked by the parser).
    pub grouping: Option<Grouping>,
}

/// The range aggregation functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RangeOp {
    CountOverTime,
    Rate,
    RateCounter,
    BytesOverTime,
    BytesRate,
    AvgOverTime,
    SumOverTime,
    MinOverTime,
    MaxOverTime,
    StdvarOverTime,
    StddevOverTime,
    QuantileOverTime,
    FirstOverTime,
    LastOverTime,
    AbsentOverTime,
}

impl RangeOp {
    /// Every range op, for tables and tests.
    pub const ALL: [RangeOp; 15] = [
        RangeOp::CountOverTime,
        RangeOp::Rate,
        RangeOp::RateCounter,
        RangeOp::BytesOverTime,
        RangeOp::BytesRate,
        RangeOp::AvgOverTime,
        RangeOp::SumOverTime,
        RangeOp::MinOverTime,
        RangeOp::MaxOverTime,
        RangeOp::StdvarOverTime,
        RangeOp::StddevOverTime,
        RangeOp::QuantileOverTime,
        RangeOp::FirstOverTime,
        RangeOp::LastOverTime,
        RangeOp::AbsentOverTime,
    ];

    /// The function name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            RangeOp::CountOverTime => "count_over_time",
            RangeOp::Rate => "rate",
            RangeOp::RateCounter => "rate_counter",
            RangeOp::BytesOverTime => "bytes_over_time",
            RangeOp::BytesRate => "bytes_rate",
            RangeOp::AvgOverTime => "avg_over_time",
            RangeOp::SumOverTime => "sum_over_time",
            RangeOp::MinOverTime => "min_over_time",
            RangeOp::MaxOverTime => "max_over_time",
            RangeOp::StdvarOverTime => "stdvar_over_time",
            RangeOp::StddevOverTime => "stddev_over_time",
            RangeOp::QuantileOverTime => "quantile_over_time",
            RangeOp::FirstOverTime => "first_over_time",
            RangeOp::LastOverTime => "last_over_time",
            RangeOp::AbsentOverTime => "absent_over_time",
        }
    }
}

/// `by (a, b)` or `without (a, b)`. An empty list is meaningful (`by ()` is one group).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Grouping {
    By(Vec<String>),
    Without(Vec<String>),
}

/// A vector aggregation over an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorAggregation {
    pub op: VectorOp,
    /// `k` of `topk`, `bottomk`, `approx_topk` (> 0); `None` for every other op.
    pub param: Option<i64>,
    pub inner: Box<MetricExpr>,
    pub grouping: Option<Grouping>,
}

/// The vector aggregation operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VectorOp {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    Stddev,
    Stdvar,
    Topk,
    Bottomk,
    Sort,
    SortDesc,
    ApproxTopk,
}

impl VectorOp {
    /// Every vector op, for tables and tests.
    pub const ALL: [VectorOp; 12] = [
        VectorOp::Sum,
        VectorOp::Avg,
        VectorOp::Min,
        VectorOp::Max,
        VectorOp::Count,
        VectorOp::Stddev,
        VectorOp::Stdvar,
        VectorOp::Topk,
        VectorOp::Bottomk,
        VectorOp::Sort,
        VectorOp::SortDesc,
        VectorOp::ApproxTopk,
    ];

    /// The operator name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            VectorOp::Sum => "sum",
            VectorOp::Avg => "avg",
            VectorOp::Min => "min",
            VectorOp::Max => "max",
            VectorOp::Count => "count",
            VectorOp::Stddev => "stddev",
            VectorOp::Stdvar => "stdvar",
            VectorOp::Topk => "topk",
            VectorOp::Bottomk => "bottomk",
            VectorOp::Sort => "sort",
            VectorOp::SortDesc => "sort_desc",
            VectorOp::ApproxTopk => "approx_topk",
        }
    }
}

/// A binary operation between two metric expressions (never two literals: those fold).
#[derive(Debug, Clone, PartialEq)]
pub struct BinOpExpr {
    pub op: BinOp,
    pub lhs: Box<MetricExpr>,
    pub rhs: Box<MetricExpr>,
    pub modifier: BinOpModifier,
}

/// Binary operators, lowest precedence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinOp {
    Or,
    And,
    Unless,
    Eq,
    Neq,
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

impl BinOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            BinOp::Or => "or",
            BinOp::And => "and",
            BinOp::Unless => "unless",
            BinOp::Eq => "==",
            BinOp::Neq => "!=",
            BinOp::Gt => ">",
            BinOp::Gte => ">=",
            BinOp::Lt => "<",
            BinOp::Lte => "<=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Pow => "^",
        }
    }

    /// Precedence level, 1 (`or`) to 6 (`^`), as in Loki's grammar.
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And | BinOp::Unless => 2,
            BinOp::Eq | BinOp::Neq | BinOp::Gt | BinOp::Gte | BinOp::Lt | BinOp::Lte => 3,
            BinOp::Add | BinOp::Sub => 4,
            BinOp::Mul | BinOp::Div | BinOp::Mod => 5,
            BinOp::Pow => 6,
        }
    }

    /// `^` is the only right-associative operator.
    pub fn is_right_associative(self) -> bool {
        self == BinOp::Pow
    }

    /// `and`, `or`, `unless`.
    pub fn is_set_operator(self) -> bool {
        matches!(self, BinOp::Or | BinOp::And | BinOp::Unless)
    }

    /// `== != > >= < <=`.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Neq | BinOp::Gt | BinOp::Gte | BinOp::Lt | BinOp::Lte
        )
    }
}

/// `bool` and vector matching of a binary operation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct BinOpModifier {
    /// `bool`: comparisons return 0/1 instead of filtering. Ignored for other operators.
    pub return_bool: bool,
    /// `on(...)` / `ignoring(...)` with optional `group_left/right`.
    pub matching: Option<VectorMatching>,
}

/// How samples of the two sides are paired.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VectorMatching {
    /// `on` when true, `ignoring` when false.
    pub on: bool,
    pub labels: Vec<String>,
    pub group: Option<GroupSide>,
}

/// Many-to-one / one-to-many matching, with the labels to copy from the "one" side.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GroupSide {
    Left(Vec<String>),
    Right(Vec<String>),
}

/// `label_replace(inner, dst, replacement, src, regex)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelReplace {
    pub inner: Box<MetricExpr>,
    pub dst: String,
    pub replacement: String,
    pub src: String,
    /// Source text; compiled anchored as `^(?:regex)$` and validated by the parser.
    pub regex: String,
}
