//! Recursive-descent LogQL parser.

use std::fmt;

use cairn_wire::{MatchOp, Matcher};
use regex::Regex;

use super::ast::{Expr, FilterOp, LineFilter, LogSelector};
use super::lexer::{Tok, Token, lex};

/// A LogQL parse error with its 1-based line and column, displayed as Loki
/// displays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub col: usize,
    /// What is wrong.
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.msg)
        } else {
            write!(f, "parse error at line {}, col {}: {}", self.line, self.col, self.msg)
        }
    }
}

impl std::error::Error for ParseError {}

fn line_col(src: &str, pos: usize) -> (usize, usize) {
    let before = &src[..pos.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Token>,
    i: usize,
}

/// The message Loki gives for a selector every matcher of which accepts "".
pub const EMPTY_SELECTOR_MSG: &str = "queries require at least one regexp or equality matcher that does not have an empty-compatible value. For instance, app=~\".*\" does not meet this requirement, but app=~\".+\" will";

/// Parses a LogQL expression.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let toks = lex(src).map_err(|e| {
        let (line, col) = line_col(src, e.pos);
        ParseError { line, col, msg: format!("syntax error: {}", e.msg) }
    })?;
    let mut p = Parser { src, toks, i: 0 };
    let expr = p.expr()?;
    p.expect_eof()?;
    Ok(expr)
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.i.min(self.toks.len() - 1)].tok
    }

    fn pos(&self) -> usize {
        self.toks[self.i.min(self.toks.len() - 1)].pos
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }

    fn err_at(&self, pos: usize, msg: String) -> ParseError {
        let (line, col) = line_col(self.src, pos);
        ParseError { line, col, msg }
    }

    fn unexpected(&self, expecting: &str) -> ParseError {
        self.err_at(self.pos(), format!("syntax error: unexpected {}, expecting {expecting}", self.peek().describe()))
    }

    fn expect_eof(&self) -> Result<(), ParseError> {
        if *self.peek() == Tok::Eof {
            Ok(())
        } else {
            Err(self.err_at(self.pos(), format!("syntax error: unexpected {}", self.peek().describe())))
        }
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        match self.peek() {
            Tok::OpenBrace => Ok(Expr::Log(self.log_selector()?)),
            Tok::Ident(name) => Err(self.err_at(
                self.pos(),
                format!(
                    "metric query function {name:?} is not supported yet by this Cairn version; only log queries are"
                ),
            )),
            _ => Err(self.unexpected("{")),
        }
    }

    fn log_selector(&mut self) -> Result<LogSelector, ParseError> {
        let start = self.pos();
        let matchers = self.matchers()?;
        if matchers.iter().all(|m| m.matches_empty()) {
            return Err(self.err_at(start, EMPTY_SELECTOR_MSG.to_string()).without_position());
        }
        let mut filters = Vec::new();
        loop {
            let op = match self.peek() {
                Tok::PipeExact => FilterOp::Contains,
                Tok::Neq => FilterOp::NotContains,
                Tok::PipeMatch => FilterOp::Match,
                Tok::Nre => FilterOp::NotMatch,
                Tok::Pipe => {
                    self.next();
                    let what = self.peek().describe();
                    return Err(self.err_at(
                        self.pos(),
                        format!("pipeline stage {what} is not supported yet by this Cairn version; only line filters (|=, !=, |~, !~) are"),
                    ));
                }
                _ => break,
            };
            self.next();
            let pos = self.pos();
            let Tok::Str(pattern) = self.next() else {
                self.i -= 1;
                return Err(self.unexpected("STRING"));
            };
            let re = match op {
                FilterOp::Match | FilterOp::NotMatch => Some(
                    Regex::new(&pattern)
                        .map_err(|e| self.err_at(pos, format!("invalid regular expression {pattern:?}: {e}")))?,
                ),
                _ => None,
            };
            filters.push(LineFilter { op, pattern, re });
        }
        Ok(LogSelector { matchers, filters })
    }

    fn matchers(&mut self) -> Result<Vec<Matcher>, ParseError> {
        if self.next() != Tok::OpenBrace {
            self.i -= 1;
            return Err(self.unexpected("{"));
        }
        let mut out = Vec::new();
        loop {
            let name = match self.next() {
                Tok::Ident(n) => n,
                Tok::CloseBrace if out.is_empty() => {
                    return Err(self.err_at(self.pos(), EMPTY_SELECTOR_MSG.to_string()).without_position());
                }
                _ => {
                    self.i -= 1;
                    return Err(self.unexpected("IDENTIFIER"));
                }
            };
            let op = match self.next() {
                Tok::Eq => MatchOp::Equal,
                Tok::Neq => MatchOp::NotEqual,
                Tok::Re => MatchOp::Regex,
                Tok::Nre => MatchOp::NotRegex,
                _ => {
                    self.i -= 1;
                    return Err(self.unexpected("=, !=, =~ or !~"));
                }
            };
            let pos = self.pos();
            let Tok::Str(value) = self.next() else {
                self.i -= 1;
                return Err(self.unexpected("STRING"));
            };
            out.push(Matcher::new(op, name, value).map_err(|e| self.err_at(pos, e.to_string()))?);
            match self.next() {
                Tok::Comma => continue,
                Tok::CloseBrace => break,
                _ => {
                    self.i -= 1;
                    return Err(self.unexpected(", or }"));
                }
            }
        }
        Ok(out)
    }
}

impl ParseError {
    fn without_position(mut self) -> Self {
        self.line = 0;
        self.col = 0;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(q: &str) -> LogSelector {
        match parse(q).unwrap() {
            Expr::Log(s) => s,
        }
    }

    #[test]
    fn selectors_and_filters() {
        let s = sel(
            r#"{job="x", env!="dev", app=~"a.+", pod!~"b.*"} |= "err" != `debug` |~ "time(d)? ?out" !~ "(?i)health""#,
        );
        assert_eq!(s.matchers.len(), 4);
        assert_eq!(s.matchers[2].op, MatchOp::Regex);
        assert_eq!(s.filters.len(), 4);
        assert!(s.filters[0].keep("an err here"));
        assert!(!s.filters[1].keep("debug stuff"));
        assert!(s.filters[2].keep("timed out"));
        assert!(!s.filters[3].keep("HEALTH check"));
    }

    #[test]
    fn errors_have_positions() {
        let e = parse(r#"{job="x"} |= 5"#).unwrap_err();
        assert_eq!((e.line, e.col), (1, 14));
        assert!(e.to_string().starts_with("parse error at line 1, col 14: syntax error: unexpected NUMBER 5"), "{e}");
        let e = parse("{job=\"x\"\n ,}").unwrap_err();
        assert_eq!((e.line, e.col), (2, 3));
        assert!(parse(r#"{job=~".*"}"#).unwrap_err().to_string().starts_with("queries require at least one"));
        assert!(parse("{}").is_err());
        assert!(parse(r#"{job="x"} |~ "(""#).is_err());
        assert!(parse(r#"{job="x"} | json"#).unwrap_err().to_string().contains("not supported yet"));
        assert!(parse(r#"rate({job="x"}[1m])"#).unwrap_err().to_string().contains("not supported yet"));
        assert!(parse(r#"{job="x"} extra"#).is_err());
        for junk in ["", "{", "{job", "{job=", "{job=\"x\"", "}", "|=", "{job=\"x\"} |="] {
            assert!(parse(junk).is_err(), "{junk:?}");
        }
    }

    /// Deterministic garbage and mutations of valid queries: errors, never panics.
    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet: Vec<char> = "{}()[],=!~|\"`\\ abcé0123456789.#\n".chars().collect();
        let seed = r#"{job="x", a=~"b.*"} |= "err" != `d` |~ "(?i)t" !~ "u""#;
        for round in 0..20_000 {
            let q: String = if round % 2 == 0 {
                (0..next() % 40).map(|_| alphabet[(next() as usize) % alphabet.len()]).collect()
            } else {
                let mut c: Vec<char> = seed.chars().collect();
                for _ in 0..1 + next() % 3 {
                    let i = (next() as usize) % c.len();
                    c[i] = alphabet[(next() as usize) % alphabet.len()];
                }
                c.into_iter().collect()
            };
            if let Err(e) = parse(&q) {
                let _ = e.to_string();
            }
        }
    }
}
