//! Label matchers with Prometheus semantics.

use regex::Regex;
use std::fmt;

use crate::Labels;

/// The four matcher kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~` (fully anchored)
    Regex,
    /// `!~` (fully anchored)
    NotRegex,
}

impl fmt::Display for MatchOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        })
    }
}

/// Why a matcher could not be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MatcherError {
    /// The regular expression does not compile.
    #[error("invalid regular expression {pattern:?} for label {name:?}: {reason}")]
    BadRegex { name: String, pattern: String, reason: String },
}

/// `pattern` compiled anchored at both ends with `.` matching newlines
/// (`^(?s:pattern)$`, PromQL's and LogQL's label-regex semantics), from a
/// process-wide cache: a dashboard sends the same few patterns on every
/// refresh, and `label_replace` in a range query asks at every step, while
/// compiling one costs tens of microseconds (its DFA is built up front).
pub fn anchored_regex(pattern: &str) -> Result<Regex, regex::Error> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    /// Patterns kept; past it the cache starts over (patterns come from
    /// queries, so their number is not bounded otherwise).
    const MAX: usize = 1024;
    static CACHE: OnceLock<Mutex<HashMap<String, Regex>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(re) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(pattern) {
        return Ok(re.clone());
    }
    let re = Regex::new(&format!("^(?s:{pattern})$"))?;
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    if c.len() >= MAX {
        c.clear();
    }
    c.insert(pattern.to_string(), re.clone());
    Ok(re)
}

/// One label matcher: `name op "value"`.
#[derive(Clone, Debug)]
pub struct Matcher {
    /// Label name.
    pub name: String,
    /// Kind of match.
    pub op: MatchOp,
    /// Literal value or regex source.
    pub value: String,
    re: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl Matcher {
    /// Builds a matcher; regexes are compiled anchored (`^(?:…)$`).
    pub fn new(op: MatchOp, name: impl Into<String>, value: impl Into<String>) -> Result<Self, MatcherError> {
        let name = name.into();
        let value = value.into();
        let re =
            match op {
                MatchOp::Regex | MatchOp::NotRegex => Some(anchored_regex(&value).map_err(|e| {
                    MatcherError::BadRegex { name: name.clone(), pattern: value.clone(), reason: e.to_string() }
                })?),
                _ => None,
            };
        Ok(Matcher { name, op, value, re })
    }

    /// Shorthand for an `=` matcher.
    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Matcher { name: name.into(), op: MatchOp::Equal, value: value.into(), re: None }
    }

    /// Does `value` (the label's value, or "" when absent) satisfy this matcher?
    pub fn matches(&self, value: &str) -> bool {
        match self.op {
            MatchOp::Equal => value == self.value,
            MatchOp::NotEqual => value != self.value,
            MatchOp::Regex => self.re.as_ref().is_some_and(|r| r.is_match(value)),
            MatchOp::NotRegex => !self.re.as_ref().is_some_and(|r| r.is_match(value)),
        }
    }

    /// True when the matcher accepts the empty string, i.e. also matches
    /// series that lack the label entirely.
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }

    /// Does the label set satisfy this matcher?
    pub fn matches_labels(&self, labels: &Labels) -> bool {
        self.matches(labels.get(&self.name).unwrap_or(""))
    }
}

/// True when every matcher accepts the label set.
pub fn matches_all(matchers: &[Matcher], labels: &Labels) -> bool {
    matchers.iter().all(|m| m.matches_labels(labels))
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_regexes_keep_their_pattern_and_anchoring() {
        // more distinct patterns than the cache holds, each asked twice
        for i in 0..1500 {
            let p = format!("x{i}|y.*");
            for _ in 0..2 {
                let re = anchored_regex(&p).unwrap();
                assert!(re.is_match(&format!("x{i}")) && re.is_match("y\nz"));
                assert!(!re.is_match(&format!("ax{i}")) && !re.is_match(&format!("x{}", i + 1)));
            }
        }
        assert!(anchored_regex("(").is_err(), "errors are not cached as answers");
        assert!(anchored_regex("(").is_err());
    }

    #[test]
    fn four_kinds() {
        let l = Labels::from_pairs([("job", "api"), ("env", "prod")]).unwrap();
        assert!(Matcher::new(MatchOp::Equal, "job", "api").unwrap().matches_labels(&l));
        assert!(Matcher::new(MatchOp::NotEqual, "job", "web").unwrap().matches_labels(&l));
        assert!(Matcher::new(MatchOp::Regex, "job", "a.*").unwrap().matches_labels(&l));
        // anchored: "p" alone does not match "api"
        assert!(!Matcher::new(MatchOp::Regex, "job", "p").unwrap().matches_labels(&l));
        assert!(Matcher::new(MatchOp::NotRegex, "job", "w.*").unwrap().matches_labels(&l));
        // absent label matches ""
        assert!(Matcher::new(MatchOp::Equal, "missing", "").unwrap().matches_labels(&l));
        assert!(Matcher::new(MatchOp::Regex, "missing", ".*").unwrap().matches_empty());
        assert!(Matcher::new(MatchOp::Regex, "x", "(").is_err());
    }
}
