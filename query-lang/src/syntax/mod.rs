//! LogQL syntax: the AST, the lexer and parser that build it, the validation Loki
//! applies after parsing, and the canonical printer.
//!
//! Owns turning query text into a checked [`Expr`] and back. It does not own running
//! anything: pipeline stages and evaluation live elsewhere in this crate.
//!
//! ```
//! use query_lang::syntax::parse_expr;
//! let expr = parse_expr(r#"SUM BY (level) (count_over_time({app="x"} | json [5m]))"#).unwrap();
//! assert_eq!(
//!     expr.to_string(),
//!     r#"sum by (level) (count_over_time({app="x"} | json [5m]))"#
//! );
//! ```

pub mod ast;
mod lexer;
mod parser;
pub mod pattern;
mod printer;
pub mod units;

pub use ast::*;
pub use lexer::MAX_QUERY_BYTES;
pub use parser::{parse_expr, ParseError, EMPTY_SELECTOR_MESSAGE};

/// Entry point for a `cargo fuzz` target: parses arbitrary bytes (when they are UTF-8)
/// and prints what parsed. Any panic inside is a bug.
pub fn fuzz_parse(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(expr) = parse_expr(text) {
            let _printed = expr.to_string();
        }
    }
}
