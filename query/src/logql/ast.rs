//! LogQL syntax tree.

use std::fmt;

use cairn_wire::Matcher;
use regex::Regex;

/// A parsed LogQL expression.
#[derive(Debug, Clone)]
pub enum Expr {
    /// A log query: a stream selector and its pipeline.
    Log(LogSelector),
}

/// `{matchers} | stages…`
#[derive(Debug, Clone)]
pub struct LogSelector {
    /// Stream matchers.
    pub matchers: Vec<Matcher>,
    /// Line filters in pipeline order.
    pub filters: Vec<LineFilter>,
}

/// Kind of line filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterOp {
    /// `|=`: line contains the string.
    Contains,
    /// `!=`: line does not contain the string.
    NotContains,
    /// `|~`: the regex matches somewhere in the line.
    Match,
    /// `!~`: the regex matches nowhere in the line.
    NotMatch,
}

impl fmt::Display for FilterOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FilterOp::Contains => "|=",
            FilterOp::NotContains => "!=",
            FilterOp::Match => "|~",
            FilterOp::NotMatch => "!~",
        })
    }
}

/// One line filter.
#[derive(Debug, Clone)]
pub struct LineFilter {
    /// Kind.
    pub op: FilterOp,
    /// Literal or regex source.
    pub pattern: String,
    /// Compiled regex for `|~` and `!~` (unanchored, as in Loki).
    pub re: Option<Regex>,
}

impl LineFilter {
    /// Does `line` pass this filter?
    pub fn keep(&self, line: &str) -> bool {
        match self.op {
            FilterOp::Contains => line.contains(self.pattern.as_str()),
            FilterOp::NotContains => !line.contains(self.pattern.as_str()),
            FilterOp::Match => self.re.as_ref().is_some_and(|r| r.is_match(line)),
            FilterOp::NotMatch => !self.re.as_ref().is_some_and(|r| r.is_match(line)),
        }
    }
}

/// Result order of a log query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Oldest first.
    Forward,
    /// Newest first (Loki's default).
    Backward,
}

impl Direction {
    /// Parses Loki's `direction` parameter (case-insensitive).
    pub fn parse(s: &str) -> Option<Direction> {
        match s.to_ascii_lowercase().as_str() {
            "forward" => Some(Direction::Forward),
            "backward" => Some(Direction::Backward),
            _ => None,
        }
    }
}
