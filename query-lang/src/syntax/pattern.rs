//! The pattern template language shared by the `| pattern "<ip> - <_>"` parser and the
//! `|> "<_> error <_>"` line filter: how a template splits into literals and captures,
//! and which templates each of the two accepts.
//!
//! Owns the template's syntax only; matching lines against it belongs to the pipeline.
//! A capture is `<name>` with `name` matching `[A-Za-z_][A-Za-z0-9_]*`; `<_>` is the
//! unnamed wildcard; every other character (including a `<` that does not open a
//! capture) is literal text.

/// One piece of a pattern template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternPart {
    /// Text that must appear verbatim.
    Literal(String),
    /// `<name>`, or `<_>` when the name is `None`.
    Capture(Option<String>),
}

/// Why a template is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("at least one named capture is required in pattern {pattern:?}")]
    NoNamedCapture { pattern: String },
    #[error("captures cannot be adjacent in pattern {pattern:?}: put a literal between them")]
    AdjacentCaptures { pattern: String },
    #[error("duplicate capture name {name:?} in pattern {pattern:?}")]
    DuplicateCapture { pattern: String, name: String },
    #[error("named capture {name:?} is not allowed in a line filter pattern {pattern:?}: use <_>")]
    NamedCaptureInFilter { pattern: String, name: String },
}

/// Splits a template into parts; never fails (anything unrecognised is literal).
pub fn parse_pattern(template: &str) -> Vec<PatternPart> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = template;
    while let Some(c) = rest.chars().next() {
        if c == '<' {
            if let Some((name, len)) = capture_at(rest) {
                if !literal.is_empty() {
                    parts.push(PatternPart::Literal(std::mem::take(&mut literal)));
                }
                let name = (name != "_").then(|| name.to_string());
                parts.push(PatternPart::Capture(name));
                rest = &rest[len..];
                continue;
            }
        }
        literal.push(c);
        rest = &rest[c.len_utf8()..];
    }
    if !literal.is_empty() {
        parts.push(PatternPart::Literal(literal));
    }
    parts
}

/// `<name>` at the start of `s`: the name and the length of the whole capture.
fn capture_at(s: &str) -> Option<(&str, usize)> {
    let body = s.strip_prefix('<')?;
    let end = body.find('>')?;
    let name = &body[..end];
    let mut chars = name.chars();
    let first = chars.next()?;
    let valid = (first == '_' || first.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric());
    valid.then_some((name, end + 2))
}

fn check_not_adjacent(template: &str, parts: &[PatternPart]) -> Result<(), PatternError> {
    let adjacent = parts
        .windows(2)
        .any(|w| matches!(w, [PatternPart::Capture(_), PatternPart::Capture(_)]));
    if adjacent {
        return Err(PatternError::AdjacentCaptures {
            pattern: template.to_string(),
        });
    }
    Ok(())
}

/// Checks a template for the `pattern` parser: at least one named capture, no two
/// captures side by side, no name twice.
pub fn validate_parser_pattern(template: &str) -> Result<Vec<PatternPart>, PatternError> {
    let parts = parse_pattern(template);
    check_not_adjacent(template, &parts)?;
    let mut seen: Vec<&str> = Vec::new();
    for part in &parts {
        if let PatternPart::Capture(Some(name)) = part {
            if seen.contains(&name.as_str()) {
                return Err(PatternError::DuplicateCapture {
                    pattern: template.to_string(),
                    name: name.clone(),
                });
            }
            seen.push(name);
        }
    }
    if seen.is_empty() {
        return Err(PatternError::NoNamedCapture {
            pattern: template.to_string(),
        });
    }
    Ok(parts)
}

/// Checks a template for the `|>` / `!>` line filters: only `<_>` captures, none adjacent.
pub fn validate_filter_pattern(template: &str) -> Result<Vec<PatternPart>, PatternError> {
    let parts = parse_pattern(template);
    check_not_adjacent(template, &parts)?;
    for part in &parts {
        if let PatternPart::Capture(Some(name)) = part {
            return Err(PatternError::NamedCaptureInFilter {
                pattern: template.to_string(),
                name: name.clone(),
            });
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_into_literals_and_captures() {
        assert_eq!(
            parse_pattern("[<ts>] <_> x<"),
            vec![
                PatternPart::Literal("[".into()),
                PatternPart::Capture(Some("ts".into())),
                PatternPart::Literal("] ".into()),
                PatternPart::Capture(None),
                PatternPart::Literal(" x<".into()),
            ]
        );
        assert_eq!(
            parse_pattern("<1a> <>"),
            vec![PatternPart::Literal("<1a> <>".into())]
        );
    }

    #[test]
    fn parser_patterns_need_a_named_capture_and_no_adjacent_or_duplicate_ones() {
        assert!(validate_parser_pattern("<ip> - <_>").is_ok());
        assert!(matches!(
            validate_parser_pattern("foo"),
            Err(PatternError::NoNamedCapture { .. })
        ));
        assert!(matches!(
            validate_parser_pattern("<a><b>"),
            Err(PatternError::AdjacentCaptures { .. })
        ));
        assert!(matches!(
            validate_parser_pattern("<x> <x>"),
            Err(PatternError::DuplicateCapture { .. })
        ));
    }

    #[test]
    fn filter_patterns_accept_only_wildcards() {
        assert!(validate_filter_pattern("[<_>] [error] <_>").is_ok());
        assert!(validate_filter_pattern("").is_ok());
        assert!(validate_filter_pattern("<x> y").is_err());
        assert!(validate_filter_pattern("<_><_>").is_err());
    }
}
