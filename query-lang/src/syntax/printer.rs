//! The canonical LogQL printer: `Display` for the AST, producing normalised text that
//! parses back to the same tree (what `/loki/api/v1/format_query` returns, on one line).
//!
//! Owns spelling only: keywords lower-case, strings double-quoted with Go escapes,
//! matchers `{a="b", c=~"d"}`, one space around pipeline stages and binary operators,
//! ranges in Prometheus form (`[1h30m]`), the range after the pipeline, groupings before
//! the aggregated expression (`sum by (app) (...)`), parentheses only where precedence
//! needs them. Non-finite literals (from folding `0/0`) print as `NaN`, `+Inf`, `-Inf`,
//! which LogQL cannot read back; every other tree round-trips.

use std::fmt::{self, Display, Formatter, Write};

use lode_push::labels::write_quoted;

use super::ast::*;
use super::units::{format_bytes, format_duration};

fn quoted(f: &mut Formatter<'_>, s: &str) -> fmt::Result {
    write_quoted(f, s)
}

fn write_list(f: &mut Formatter<'_>, items: &[String]) -> fmt::Result {
    f.write_char('(')?;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        f.write_str(item)?;
    }
    f.write_char(')')
}

fn write_number(f: &mut Formatter<'_>, v: f64) -> fmt::Result {
    if v.is_nan() {
        f.write_str("NaN")
    } else if v.is_infinite() {
        f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
    } else {
        write!(f, "{v}")
    }
}

impl Display for Expr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Log(selector) => selector.fmt(f),
            Expr::Metric(m) => m.fmt(f),
            Expr::Variants(v) => v.fmt(f),
        }
    }
}

impl Display for VariantsExpr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str("variants(")?;
        for (i, v) in self.variants.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            v.fmt(f)?;
        }
        write!(f, ") of ({})", self.of)
    }
}

impl Display for LogSelector {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_char('{')?;
        for (i, m) in self.matchers.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            m.fmt(f)?;
        }
        f.write_char('}')?;
        for stage in &self.pipeline {
            f.write_char(' ')?;
            stage.fmt(f)?;
        }
        Ok(())
    }
}

impl Display for Stage {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Stage::LineFilter(filter) => filter.fmt(f),
            Stage::Json(params) => {
                f.write_str("| json")?;
                write_params(f, params)
            }
            Stage::Logfmt(parser) => {
                f.write_str("| logfmt")?;
                if parser.strict {
                    f.write_str(" --strict")?;
                }
                if parser.keep_empty {
                    f.write_str(" --keep-empty")?;
                }
                write_params(f, &parser.params)
            }
            Stage::Regexp(re) => {
                f.write_str("| regexp ")?;
                quoted(f, re)
            }
            Stage::Pattern(p) => {
                f.write_str("| pattern ")?;
                quoted(f, p)
            }
            Stage::Unpack => f.write_str("| unpack"),
            Stage::LabelFilter(filter) => write!(f, "| {filter}"),
            Stage::LineFormat(template) => {
                f.write_str("| line_format ")?;
                quoted(f, template)
            }
            Stage::LabelFormat(fmts) => {
                f.write_str("| label_format ")?;
                for (i, fmt) in fmts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    match fmt {
                        LabelFmt::Rename { dst, src } => write!(f, "{dst}={src}")?,
                        LabelFmt::Template { dst, template } => {
                            write!(f, "{dst}=")?;
                            quoted(f, template)?;
                        }
                    }
                }
                Ok(())
            }
            Stage::Decolorize => f.write_str("| decolorize"),
            Stage::Drop(items) => write_named_matchers(f, "drop", items),
            Stage::Keep(items) => write_named_matchers(f, "keep", items),
        }
    }
}

fn write_params(f: &mut Formatter<'_>, params: &[ExtractParam]) -> fmt::Result {
    for (i, p) in params.iter().enumerate() {
        f.write_str(if i == 0 { " " } else { ", " })?;
        write!(f, "{}=", p.label)?;
        quoted(f, &p.expr)?;
    }
    Ok(())
}

fn write_named_matchers(f: &mut Formatter<'_>, word: &str, items: &[NamedMatcher]) -> fmt::Result {
    write!(f, "| {word} ")?;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        match item {
            NamedMatcher::Name(n) => f.write_str(n)?,
            NamedMatcher::Matcher(m) => m.fmt(f)?,
        }
    }
    Ok(())
}

impl Display for LineFilter {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(self.op.as_str())?;
        for (i, value) in self.values.iter().enumerate() {
            f.write_str(if i == 0 { " " } else { " or " })?;
            value.fmt(f)?;
        }
        Ok(())
    }
}

impl Display for LineFilterValue {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            LineFilterValue::Literal(s) => quoted(f, s),
            LineFilterValue::Ip(p) => {
                f.write_str("ip(")?;
                quoted(f, p)?;
                f.write_char(')')
            }
        }
    }
}

impl Display for LabelFilter {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        // Parentheses exactly where the parser would otherwise build another tree:
        // `and` is left-associative and binds tighter than `or`.
        let wrapped = |f: &mut Formatter<'_>, child: &LabelFilter, wrap: bool| {
            if wrap {
                write!(f, "({child})")
            } else {
                child.fmt(f)
            }
        };
        match self {
            LabelFilter::And(lhs, rhs) => {
                wrapped(f, lhs, matches!(**lhs, LabelFilter::Or(..)))?;
                f.write_str(" and ")?;
                wrapped(
                    f,
                    rhs,
                    matches!(**rhs, LabelFilter::Or(..) | LabelFilter::And(..)),
                )
            }
            LabelFilter::Or(lhs, rhs) => {
                lhs.fmt(f)?;
                f.write_str(" or ")?;
                wrapped(f, rhs, matches!(**rhs, LabelFilter::Or(..)))
            }
            LabelFilter::Matcher(m) => m.fmt(f),
            LabelFilter::Number { name, op, value } => {
                write!(f, "{name}{}", op.as_str())?;
                write_number(f, *value)
            }
            LabelFilter::Duration { name, op, value } => {
                write!(f, "{name}{}{}", op.as_str(), format_duration(*value))
            }
            LabelFilter::Bytes { name, op, value } => {
                write!(f, "{name}{}{}", op.as_str(), format_bytes(*value))
            }
            LabelFilter::Ip {
                name,
                negated,
                pattern,
            } => {
                write!(f, "{name}{}ip(", if *negated { "!=" } else { "=" })?;
                quoted(f, pattern)?;
                f.write_char(')')
            }
        }
    }
}

impl Display for Unwrap {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str("| unwrap ")?;
        match self.conversion.function_name() {
            Some(conv) => write!(f, "{conv}({})", self.label)?,
            None => f.write_str(&self.label)?,
        }
        for filter in &self.post_filters {
            write!(f, " | {filter}")?;
        }
        Ok(())
    }
}

impl Display for LogRange {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        self.selector.fmt(f)?;
        if let Some(unwrap) = &self.unwrap {
            write!(f, " {unwrap}")?;
        }
        if !self.selector.pipeline.is_empty() || self.unwrap.is_some() {
            f.write_char(' ')?;
        }
        write!(f, "[{}]", format_duration(self.range))?;
        if self.offset != 0 {
            write!(f, " offset {}", format_duration(self.offset))?;
        }
        Ok(())
    }
}

impl Display for Grouping {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let (word, labels) = match self {
            Grouping::By(l) => ("by", l),
            Grouping::Without(l) => ("without", l),
        };
        write!(f, "{word} ")?;
        write_list(f, labels)
    }
}

impl Display for MetricExpr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            MetricExpr::RangeAggregation(agg) => {
                write!(f, "{}(", agg.op.as_str())?;
                if let Some(p) = agg.param {
                    write_number(f, p)?;
                    f.write_str(", ")?;
                }
                write!(f, "{})", agg.range)?;
                if let Some(g) = &agg.grouping {
                    write!(f, " {g}")?;
                }
                Ok(())
            }
            MetricExpr::VectorAggregation(agg) => {
                f.write_str(agg.op.as_str())?;
                if let Some(g) = &agg.grouping {
                    write!(f, " {g} ")?;
                }
                f.write_char('(')?;
                if let Some(k) = agg.param {
                    write!(f, "{k}, ")?;
                }
                write!(f, "{})", agg.inner)
            }
            MetricExpr::BinOp(bin) => bin.fmt(f),
            MetricExpr::Literal(v) => write_number(f, *v),
            MetricExpr::Vector(v) => {
                f.write_str("vector(")?;
                write_number(f, *v)?;
                f.write_char(')')
            }
            MetricExpr::LabelReplace(lr) => {
                write!(f, "label_replace({}, ", lr.inner)?;
                for (i, s) in [&lr.dst, &lr.replacement, &lr.src, &lr.regex]
                    .into_iter()
                    .enumerate()
                {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    quoted(f, s)?;
                }
                f.write_char(')')
            }
        }
    }
}

impl Display for BinOpExpr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let level = self.op.precedence();
        let right_assoc = self.op.is_right_associative();
        let needs_parens = |child: &MetricExpr, is_left: bool| match child {
            MetricExpr::BinOp(c) => {
                let child_level = c.op.precedence();
                child_level < level || (child_level == level && (is_left == right_assoc))
            }
            // `-2 ^ 2` reads as `(-2) ^ 2` in LogQL, so a negative literal is safe
            // everywhere; nothing else needs parentheses.
            _ => false,
        };
        let side = |f: &mut Formatter<'_>, child: &MetricExpr, is_left: bool| {
            if needs_parens(child, is_left) {
                write!(f, "({child})")
            } else {
                child.fmt(f)
            }
        };
        side(f, &self.lhs, true)?;
        write!(f, " {}", self.op.as_str())?;
        if self.modifier.return_bool {
            f.write_str(" bool")?;
        }
        if let Some(m) = &self.modifier.matching {
            f.write_str(if m.on { " on " } else { " ignoring " })?;
            write_list(f, &m.labels)?;
            match &m.group {
                Some(GroupSide::Left(labels)) => {
                    f.write_str(" group_left ")?;
                    write_list(f, labels)?;
                }
                Some(GroupSide::Right(labels)) => {
                    f.write_str(" group_right ")?;
                    write_list(f, labels)?;
                }
                None => {}
            }
        }
        f.write_char(' ')?;
        side(f, &self.rhs, false)
    }
}
