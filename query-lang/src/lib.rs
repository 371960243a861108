//! LogQL for Lode: lexer, parser, canonical printer, pipeline stages and evaluation.
//!
//! This crate knows nothing of HTTP, async runtimes or storage: the server supplies
//! streams through a source trait and serializes the results. That keeps the language
//! testable on its own and shared by the query API and the ruler.

pub mod eval;
pub mod log;
pub mod matcher;
pub mod syntax;

pub use matcher::{MatchOp, Matcher, MatcherError};
pub use syntax::ast::*;
pub use syntax::{parse_expr, ParseError};
