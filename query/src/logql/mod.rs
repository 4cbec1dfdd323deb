//! LogQL: parser ([`parse`]) and evaluator ([`eval_log_query`]).
//!
//! The parser is written here because the only Rust LogQL parser crate is
//! AGPL-licensed. It is a hand-written lexer plus recursive-descent parser
//! whose errors carry line and column, formatted as Loki formats them:
//! `parse error at line 1, col 8: syntax error: unexpected …`.

mod ast;
mod eval;
mod lexer;
mod parser;

pub use ast::{Direction, Expr, FilterOp, LineFilter, LogSelector};
pub use eval::{LogQuery, StreamResult, eval_log_query};
pub use parser::{ParseError, parse};
