//! Source-level rewriting of PromQL that `promql-parser` 0.11 does not read
//! yet, before it is parsed:
//!
//! * duration expressions (Prometheus 3.x, `promql-duration-expr`): range,
//!   subquery step and `offset` given as arithmetic (`foo[26m+4m]`,
//!   `foo[step()*2]`, `foo offset -min_of(step(), 1s)`) are evaluated here,
//!   with the query's step and range known, into plain millisecond durations;
//! * the trim operators `</` and `>/` become `<` and `>`, and the parsed
//!   comparison nodes are marked back by operator token ([`mark_trims`]);
//! * the `anchored` and `smoothed` modifiers of vector and range selectors
//!   (Prometheus 3.x extended range selectors) are removed from the text and
//!   recorded as an extra matcher on the selector, named [`EXT_LABEL`], which
//!   the evaluator reads back (and never matches against the store).
//!
//! * string escapes of bytes from 0x80 (`"\xc5"`, `"\305"`): Go reads
//!   them as raw bytes, the crate as the code points U+0080–U+00FF. A run
//!   of them that is valid UTF-8 becomes its characters (`"\xc3\x85"` is
//!   `Å`, as in Go); a byte that is not becomes [`crate::RAW_BYTE_BASE`] + byte, a
//!   private-use character that error messages quote back as `\xNN`
//!   ([`crate::go_quote`]), since a Rust string cannot hold the byte itself.
//!
//! The grammar follows Prometheus's `generated_parser.y`: inside brackets a
//! full duration expression (`+ - * / % ^`, unary sign, parentheses,
//! `step()`, `range()`, `min_of`, `max_of`; bare numbers are seconds); after
//! `offset` only a signed literal, call or parenthesised expression, so that
//! `foo offset 100 + 2` is `(foo offset 100) + 2`.

use std::borrow::Cow;

use super::QueryError;
use crate::RAW_BYTE_BASE;

/// The literal `lit` (with its quotes) with its escapes of bytes from 0x80
/// decoded as Go does (see the module doc), or `None` when it has none.
fn high_byte_escapes(lit: &str) -> Option<String> {
    let b = lit.as_bytes();
    if b.len() < 2 || b[0] == b'`' {
        return None;
    }
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut run: Vec<u8> = Vec::new();
    let mut changed = false;
    fn flush(run: &mut Vec<u8>, out: &mut Vec<u8>) {
        let mut rest = &run[..];
        while !rest.is_empty() {
            match std::str::from_utf8(rest) {
                Ok(v) => {
                    out.extend_from_slice(v.as_bytes());
                    break;
                }
                Err(e) => {
                    let ok = e.valid_up_to();
                    out.extend_from_slice(&rest[..ok]);
                    let bad = e.error_len().unwrap_or(rest.len() - ok);
                    for &x in &rest[ok..ok + bad] {
                        let c = char::from_u32(RAW_BYTE_BASE + u32::from(x)).unwrap_or('\u{fffd}');
                        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                    rest = &rest[ok + bad..];
                }
            }
        }
        run.clear();
    }
    let hex = |c: u8| (c as char).to_digit(16);
    let oct = |c: u8| (b'0'..=b'7').contains(&c).then(|| u32::from(c - b'0'));
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            let e = b[i + 1];
            let v = match (e, b.get(i + 2).copied(), b.get(i + 3).copied()) {
                (b'x', Some(h), Some(l)) => hex(h).zip(hex(l)).map(|(h, l)| h * 16 + l),
                (b'0'..=b'7', Some(m), Some(l)) => {
                    oct(m).zip(oct(l)).map(|(m, l)| u32::from(e - b'0') * 64 + m * 8 + l).filter(|v| *v <= 0xFF)
                }
                _ => None,
            };
            if let Some(v) = v.filter(|v| *v >= 0x80) {
                run.push(v as u8);
                changed = true;
                i += 4;
                continue;
            }
            flush(&mut run, &mut out);
            out.extend_from_slice(&b[i..i + 2]);
            i += 2;
            continue;
        }
        flush(&mut run, &mut out);
        out.push(b[i]);
        i += 1;
    }
    flush(&mut run, &mut out);
    if changed { String::from_utf8(out).ok() } else { None }
}

/// Name of the synthetic matcher carrying `anchored` / `smoothed`.
pub const EXT_LABEL: &str = "__cairn_ext__";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Ident,
    Number,
    Str,
    Punct,
    Space,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Tok,
    start: usize,
    end: usize,
}

/// A lexing problem, with its byte offset.
#[derive(Debug)]
pub(crate) struct LexError {
    pub pos: usize,
    pub msg: String,
}

fn lex(q: &str) -> Result<Vec<Token>, LexError> {
    let b = q.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        let kind = if c.is_ascii_whitespace() {
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            Tok::Space
        } else if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            Tok::Space
        } else if c == b'"' || c == b'\'' || c == b'`' {
            i += 1;
            loop {
                if i >= b.len() {
                    return Err(LexError { pos: start, msg: "unterminated quoted string".into() });
                }
                if b[i] == b'\\' && c != b'`' {
                    i += 2;
                    continue;
                }
                if b[i] == c {
                    i += 1;
                    break;
                }
                i += 1;
            }
            Tok::Str
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            while i < b.len() {
                let d = b[i];
                let exponent_sign = (d == b'+' || d == b'-')
                    && matches!(b[i - 1], b'e' | b'E')
                    && !q[start..i].starts_with("0x")
                    && !q[start..i].bytes().any(|x| matches!(x, b'm' | b's' | b'h' | b'd' | b'w' | b'y'));
                if d.is_ascii_alphanumeric() || d == b'.' || d == b'_' || exponent_sign {
                    i += 1;
                } else {
                    break;
                }
            }
            Tok::Number
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            Tok::Ident
        } else {
            // Multi-byte operators are irrelevant here except as one unit.
            let two = q.get(i..i + 2).unwrap_or("");
            i += if matches!(two, "==" | "!=" | ">=" | "<=" | "=~" | "!~") {
                2
            } else {
                q[i..].chars().next().map_or(1, char::len_utf8)
            };
            Tok::Punct
        };
        out.push(Token { kind, start, end: i });
    }
    Ok(out)
}

const KEYWORDS: [&str; 12] =
    ["and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "atan2"];

struct Rw<'a> {
    q: &'a str,
    /// Significant tokens (no spaces or comments).
    t: Vec<Token>,
    step_s: f64,
    range_s: f64,
    edits: Vec<(usize, usize, String)>,
}

impl<'a> Rw<'a> {
    fn text(&self, i: usize) -> &'a str {
        self.t.get(i).map_or("", |t| &self.q[t.start..t.end])
    }

    fn is(&self, i: usize, s: &str) -> bool {
        self.t.get(i).is_some_and(|t| t.kind != Tok::Str && self.q[t.start..t.end].eq_ignore_ascii_case(s))
    }

    fn err(&self, i: usize, msg: impl Into<String>) -> QueryError {
        let pos = self.t.get(i).map_or(self.q.len(), |t| t.start);
        QueryError::Parse(super::parse_error_at(self.q, pos, &msg.into()))
    }

    /// Index of the token closing the group opened at `i`.
    fn matching(&self, i: usize) -> Result<usize, QueryError> {
        let (open, close) = match self.text(i) {
            "(" => ("(", ")"),
            "[" => ("[", "]"),
            _ => ("{", "}"),
        };
        let mut depth = 0usize;
        for j in i..self.t.len() {
            if self.t[j].kind != Tok::Punct {
                continue;
            }
            let s = self.text(j);
            if s == open {
                depth += 1;
            } else if s == close {
                depth -= 1;
                if depth == 0 {
                    return Ok(j);
                }
            }
        }
        Err(self.err(i, format!("unclosed {open}")))
    }

    /// True when token `i` ends an operand (so what follows is in operator
    /// position).
    fn ends_operand(&self, i: usize) -> bool {
        let Some(t) = self.t.get(i) else { return false };
        match t.kind {
            Tok::Number | Tok::Str => true,
            Tok::Ident => !KEYWORDS.iter().any(|k| self.is(i, k)),
            Tok::Punct => matches!(self.text(i), ")" | "]" | "}"),
            Tok::Space => false,
        }
    }

    fn run(&mut self) -> Result<(), QueryError> {
        // Where to insert the extended-selector matcher of the most recent
        // selector: (byte offset, braces present and non-empty).
        let mut last_sel: Option<(usize, Option<bool>)> = None;
        let mut i = 0;
        while i < self.t.len() {
            let tok = self.t[i];
            let s = self.text(i);
            match tok.kind {
                Tok::Ident
                    if (self.is(i, "anchored") || self.is(i, "smoothed")) && i > 0 && self.ends_operand(i - 1) =>
                {
                    let Some((at, braces)) = last_sel else {
                        return Err(self.err(i, format!("unexpected {s}")));
                    };
                    let m = format!("{EXT_LABEL}=\"{}\"", s.to_ascii_lowercase());
                    let ins = match braces {
                        None => format!("{{{m}}}"),
                        Some(true) => format!("{m},"),
                        Some(false) => m,
                    };
                    self.edits.push((at, at, ins));
                    self.edits.push((tok.start, tok.end, String::new()));
                    i += 1;
                }
                Tok::Ident
                    if ["by", "without", "on", "ignoring", "group_left", "group_right"]
                        .iter()
                        .any(|k| self.is(i, k)) =>
                {
                    // Label lists: skip them whole.
                    if self.text(i + 1) == "(" {
                        i = self.matching(i + 1)? + 1;
                    } else {
                        i += 1;
                    }
                }
                Tok::Ident if self.is(i, "offset") && i > 0 && self.ends_operand(i - 1) => {
                    i = self.offset(i + 1)?;
                }
                Tok::Ident if self.is(i, "info") && self.text(i + 1) == "(" => {
                    // info()'s label selector may match only empty values
                    // (`{data=~".*"}`), which the parser refuses for a
                    // selector: mark it, so it is one.
                    let close = self.matching(i + 1)?;
                    if let Some(c) = (i + 2..close).find(|&j| self.text(j) == "," && self.depth_in(i + 2, j) == 0)
                        && self.text(c + 1) == "{"
                    {
                        let empty = self.text(c + 2) == "}";
                        let m = format!("{EXT_LABEL}=\"info\"");
                        self.edits.push((
                            self.t[c + 1].end,
                            self.t[c + 1].end,
                            if empty { m } else { format!("{m},") },
                        ));
                    }
                    i += 2;
                }
                Tok::Ident => {
                    let next = self.text(i + 1);
                    if next == "(" || KEYWORDS.iter().any(|k| self.is(i, k)) || self.is(i, "inf") || self.is(i, "nan") {
                        i += 1;
                    } else if next == "{" {
                        let close = self.matching(i + 1)?;
                        last_sel = Some((self.t[i + 1].end, Some(close > i + 2)));
                        i = close + 1;
                    } else {
                        last_sel = Some((tok.end, None));
                        i += 1;
                    }
                }
                Tok::Punct if s == "{" => {
                    let close = self.matching(i)?;
                    last_sel = Some((tok.end, Some(close > i + 1)));
                    i = close + 1;
                }
                Tok::Punct if s == "[" => {
                    let close = self.matching(i)?;
                    let colon = (i + 1..close).find(|&j| self.text(j) == ":" && self.depth_in(i + 1, j) == 0);
                    let range_end = colon.unwrap_or(close);
                    self.bracket_part(i + 1, range_end, "range")?;
                    if let Some(c) = colon
                        && c + 1 < close
                    {
                        self.bracket_part(c + 1, close, "step")?;
                    }
                    i = close + 1;
                }
                _ => i += 1,
            }
        }
        Ok(())
    }

    /// Paren/bracket depth at token `j` counting from `from`.
    fn depth_in(&self, from: usize, j: usize) -> i32 {
        let mut d = 0;
        for k in from..j {
            match self.text(k) {
                "(" | "[" => d += 1,
                ")" | "]" => d -= 1,
                _ => {}
            }
        }
        d
    }

    /// A range or subquery step `[lo, hi)`: plain literals stay, anything
    /// else is evaluated into milliseconds.
    fn bracket_part(&mut self, lo: usize, hi: usize, what: &str) -> Result<(), QueryError> {
        if hi == lo + 1 && self.t[lo].kind == Tok::Number && self.text(lo).bytes().any(|c| c.is_ascii_alphabetic()) {
            return Ok(());
        }
        if hi == lo {
            return Ok(());
        }
        let mut p = lo;
        let v = self.expr(&mut p, hi)?;
        if p != hi {
            return Err(self.err(p, format!("unexpected {} in duration expression", self.text(p))));
        }
        let ms = secs_to_ms(v).ok_or_else(|| self.err(lo, format!("invalid {what} duration {v}")))?;
        if ms <= 0 {
            return Err(self.err(lo, format!("{what} duration must be greater than 0, got {}", fmt_secs(v))));
        }
        self.edits.push((self.t[lo].start, self.t[hi - 1].end, format!("{ms}ms")));
        Ok(())
    }

    /// `offset` argument starting at token `i`; returns the next token index.
    fn offset(&mut self, i: usize) -> Result<usize, QueryError> {
        let n = self.t.len();
        if i >= n {
            return Err(self.err(i, "unexpected end of input in offset, expected duration"));
        }
        let mut p = i;
        let mut sign = 1.0;
        if self.text(p) == "-" || self.text(p) == "+" {
            if self.text(p) == "-" {
                sign = -1.0;
            }
            p += 1;
        }
        let lit = self.t.get(p).is_some_and(|t| t.kind == Tok::Number);
        if lit && self.text(p).bytes().any(|c| c.is_ascii_alphabetic()) && !self.text(p).starts_with("0x") {
            // `offset 5m` / `offset -5m`: the parser reads these.
            return Ok(p + 1);
        }
        let v = if lit {
            p += 1;
            self.number(p - 1)?
        } else {
            self.primary(&mut p, n)?
        };
        let v = sign * v;
        let ms = secs_to_ms(v).ok_or_else(|| self.err(i, format!("invalid offset {v}")))?;
        if ms == 0 {
            // `offset 0` is no offset (the parser refuses a zero duration).
            self.edits.push((self.t[i - 1].start, self.t[p - 1].end, String::new()));
            return Ok(p);
        }
        let text = if ms < 0 { format!("-{}ms", -ms) } else { format!("{ms}ms") };
        self.edits.push((self.t[i].start, self.t[p - 1].end, text));
        Ok(p)
    }

    fn number(&self, i: usize) -> Result<f64, QueryError> {
        let s = self.text(i);
        parse_number_or_duration(s).ok_or_else(|| self.err(i, format!("bad number or duration syntax: \"{s}\"")))
    }

    // duration_expr := term (('+'|'-') term)*
    fn expr(&self, p: &mut usize, hi: usize) -> Result<f64, QueryError> {
        let mut v = self.term(p, hi)?;
        while *p < hi && matches!(self.text(*p), "+" | "-") {
            let op = self.text(*p);
            *p += 1;
            let r = self.term(p, hi)?;
            v = if op == "+" { v + r } else { v - r };
        }
        Ok(v)
    }

    fn term(&self, p: &mut usize, hi: usize) -> Result<f64, QueryError> {
        let mut v = self.unary(p, hi)?;
        while *p < hi && matches!(self.text(*p), "*" | "/" | "%") {
            let op = self.text(*p);
            let at = *p;
            *p += 1;
            let r = self.unary(p, hi)?;
            v = match op {
                "*" => v * r,
                "/" if r == 0.0 => return Err(self.err(at, "division by zero")),
                "/" => v / r,
                _ if r == 0.0 => return Err(self.err(at, "modulo by zero")),
                _ => v % r,
            };
        }
        Ok(v)
    }

    fn unary(&self, p: &mut usize, hi: usize) -> Result<f64, QueryError> {
        if *p < hi && matches!(self.text(*p), "+" | "-") {
            let neg = self.text(*p) == "-";
            *p += 1;
            let v = self.unary(p, hi)?;
            return Ok(if neg { -v } else { v });
        }
        let base = self.primary(p, hi)?;
        if *p < hi && self.text(*p) == "^" {
            *p += 1;
            let e = self.unary(p, hi)?;
            return Ok(base.powf(e));
        }
        Ok(base)
    }

    fn primary(&self, p: &mut usize, hi: usize) -> Result<f64, QueryError> {
        if *p >= hi {
            return Err(self.err(*p, "unexpected end of duration expression"));
        }
        let i = *p;
        match self.t[i].kind {
            Tok::Number => {
                *p += 1;
                self.number(i)
            }
            Tok::Punct if self.text(i) == "(" => {
                let close = self.matching(i)?;
                if close >= hi {
                    return Err(self.err(i, "unclosed ("));
                }
                let mut q = i + 1;
                let v = self.expr(&mut q, close)?;
                if q != close {
                    return Err(self.err(q, format!("unexpected {} in duration expression", self.text(q))));
                }
                *p = close + 1;
                Ok(v)
            }
            Tok::Ident if (self.is(i, "step") || self.is(i, "range")) && self.text(i + 1) == "(" => {
                if self.text(i + 2) != ")" {
                    return Err(self.err(i + 2, format!("{}() takes no arguments", self.text(i))));
                }
                *p = i + 3;
                Ok(if self.is(i, "step") { self.step_s } else { self.range_s })
            }
            Tok::Ident if (self.is(i, "min_of") || self.is(i, "max_of")) && self.text(i + 1) == "(" => {
                let close = self.matching(i + 1)?;
                let mut q = i + 2;
                let a = self.expr(&mut q, close)?;
                if self.text(q) != "," {
                    return Err(self.err(q, format!("{}() takes two durations", self.text(i))));
                }
                q += 1;
                let b = self.expr(&mut q, close)?;
                if q != close {
                    return Err(self.err(q, format!("{}() takes two durations", self.text(i))));
                }
                *p = close + 1;
                Ok(if self.is(i, "min_of") { a.min(b) } else { a.max(b) })
            }
            _ => Err(self.err(i, format!("unexpected {} in duration expression", self.text(i)))),
        }
    }
}

fn fmt_secs(v: f64) -> String {
    format!("{v}s")
}

fn secs_to_ms(v: f64) -> Option<i64> {
    let ms = (v * 1000.0).round();
    (ms.is_finite() && ms.abs() < 9.0e15).then_some(ms as i64)
}

/// A PromQL number (decimal, hex, `Inf`, `NaN`) or duration (`1h30m`,
/// `500ms`), in seconds.
pub(crate) fn parse_number_or_duration(s: &str) -> Option<f64> {
    let clean: String = s.chars().filter(|&c| c != '_').collect();
    if let Some(h) = clean.strip_prefix("0x").or_else(|| clean.strip_prefix("0X")) {
        return i64::from_str_radix(h, 16).ok().map(|v| v as f64);
    }
    if let Ok(v) = clean.parse::<f64>() {
        return Some(v);
    }
    // Duration: (digits unit)+ with units y w d h m s ms.
    let b = clean.as_bytes();
    let mut i = 0;
    let mut total = 0f64;
    while i < b.len() {
        let st = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if st == i {
            return None;
        }
        let n: f64 = clean[st..i].parse().ok()?;
        let us = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let mult = match &clean[us..i] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "w" => 7.0 * 86400.0,
            "y" => 365.0 * 86400.0,
            _ => return None,
        };
        total += n * mult;
    }
    Some(total)
}

/// Rewrites `q` for the parser (see the module docs); `step_ms` and
/// `range_ms` are what `step()` and `range()` stand for.
#[cfg(test)]
pub(crate) fn rewrite(q: &str, step_ms: i64, range_ms: i64) -> Result<Cow<'_, str>, QueryError> {
    rewrite_full(q, step_ms, range_ms).map(|(text, _)| text)
}

/// A trim operator (`</` upper, `>/` lower) found by [`rewrite_full`]:
/// which of the query's `<` `>` `<=` `>=` operators (in source order) it
/// became, and whether it trims the upper side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Trim {
    pub ordinal: usize,
    pub upper: bool,
}

/// [`rewrite`], also turning the trim operators `</` and `>/` (Prometheus
/// 3.x, which `promql-parser` does not know) into `<` and `>`, reported so
/// that the parsed comparison nodes can be marked back ([`mark_trims`]):
/// they share the comparisons' precedence and associativity, so the tree
/// has the same shape.
pub(crate) fn rewrite_full(q: &str, step_ms: i64, range_ms: i64) -> Result<(Cow<'_, str>, Vec<Trim>), QueryError> {
    let toks = lex(q).map_err(|e| QueryError::Parse(super::parse_error_at(q, e.pos, &e.msg)))?;
    let mut sig: Vec<Token> = toks.into_iter().filter(|t| t.kind != Tok::Space).collect();
    let mut trims = Vec::new();
    let mut trim_edits = Vec::new();
    let mut ordinal = 0;
    let mut i = 0;
    while i < sig.len() {
        let t = sig[i];
        let s = &q[t.start..t.end];
        if t.kind == Tok::Punct && matches!(s, "<" | ">" | "<=" | ">=") {
            if matches!(s, "<" | ">")
                && let Some(n) = sig.get(i + 1)
                && n.kind == Tok::Punct
                && n.start == t.end
                && &q[n.start..n.end] == "/"
            {
                trims.push(Trim { ordinal, upper: s == "<" });
                trim_edits.push((n.start, n.end, " ".to_string()));
                sig.remove(i + 1);
            }
            ordinal += 1;
        }
        i += 1;
    }
    for t in sig.iter().filter(|t| t.kind == Tok::Str) {
        if let Some(lit) = high_byte_escapes(&q[t.start..t.end]) {
            trim_edits.push((t.start, t.end, lit));
        }
    }
    let mut rw =
        Rw { q, t: sig, step_s: step_ms as f64 / 1000.0, range_s: range_ms as f64 / 1000.0, edits: trim_edits };
    rw.run()?;
    Ok((rw.apply(), trims))
}

/// Marks the comparison nodes [`rewrite_full`] made of trim operators:
/// their operator becomes [`TRIM_UPPER`] or [`TRIM_LOWER`], token ids the
/// parser never produces, which the evaluator reads.
pub(crate) fn mark_trims(e: &mut promql_parser::parser::Expr, trims: &[Trim]) {
    use promql_parser::parser::Expr;
    fn walk(e: &mut Expr, trims: &[Trim], n: &mut usize) {
        match e {
            Expr::Binary(b) => {
                walk(&mut b.lhs, trims, n);
                if matches!(b.op.to_string().as_str(), "<" | ">" | "<=" | ">=") {
                    if let Some(t) = trims.iter().find(|t| t.ordinal == *n) {
                        b.op =
                            promql_parser::parser::token::TokenType::new(if t.upper { TRIM_UPPER } else { TRIM_LOWER });
                    }
                    *n += 1;
                }
                walk(&mut b.rhs, trims, n);
            }
            Expr::Aggregate(a) => {
                if let Some(p) = &mut a.param {
                    walk(p, trims, n);
                }
                walk(&mut a.expr, trims, n);
            }
            Expr::Call(c) => {
                for a in &mut c.args.args {
                    walk(a, trims, n);
                }
            }
            Expr::Paren(p) => walk(&mut p.expr, trims, n),
            Expr::Unary(u) => walk(&mut u.expr, trims, n),
            Expr::Subquery(s) => walk(&mut s.expr, trims, n),
            Expr::VectorSelector(_)
            | Expr::MatrixSelector(_)
            | Expr::NumberLiteral(_)
            | Expr::StringLiteral(_)
            | Expr::Extension(_) => {}
        }
    }
    let mut n = 0;
    walk(e, trims, &mut n);
}

/// The trim nodes of `e` in source order: true for `</`.
pub(crate) fn marked_trims(e: &promql_parser::parser::Expr) -> Vec<bool> {
    use promql_parser::parser::Expr;
    fn walk(e: &Expr, out: &mut Vec<bool>) {
        match e {
            Expr::Binary(b) => {
                walk(&b.lhs, out);
                match b.op.id() {
                    TRIM_UPPER => out.push(true),
                    TRIM_LOWER => out.push(false),
                    _ => {}
                }
                walk(&b.rhs, out);
            }
            Expr::Aggregate(a) => {
                if let Some(p) = &a.param {
                    walk(p, out);
                }
                walk(&a.expr, out);
            }
            Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, out)),
            Expr::Paren(p) => walk(&p.expr, out),
            Expr::Unary(u) => walk(&u.expr, out),
            Expr::Subquery(s) => walk(&s.expr, out),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(e, &mut out);
    out
}

/// Token id marking a `</` (trim upper) binary node.
pub(crate) const TRIM_UPPER: u16 = 0xff01;
/// Token id marking a `>/` (trim lower) binary node.
pub(crate) const TRIM_LOWER: u16 = 0xff02;

impl<'a> Rw<'a> {
    /// The query with the edits applied.
    fn apply(self) -> Cow<'a, str> {
        let q = self.q;
        if self.edits.is_empty() {
            return Cow::Borrowed(q);
        }
        let mut edits = self.edits;
        edits.sort_by_key(|e| (e.0, e.1));
        let mut out = String::with_capacity(q.len() + 32);
        let mut at = 0;
        for (s, e, text) in edits {
            if s < at {
                continue;
            }
            out.push_str(&q[at..s]);
            out.push_str(&text);
            at = e;
        }
        out.push_str(&q[at..]);
        Cow::Owned(out)
    }
}

/// Binary operators (and the keywords that act as one).
const BINARY_OPS: [&str; 16] =
    ["+", "-", "*", "/", "%", "^", "==", "!=", ">", "<", ">=", "<=", "and", "or", "unless", "atan2"];

fn describe(q: &str, t: &Token) -> String {
    let s = &q[t.start..t.end];
    match t.kind {
        Tok::Ident => format!("identifier {s:?}"),
        Tok::Number => format!("number {s:?}"),
        Tok::Str => format!("string {s:?}"),
        _ => match s {
            "(" => "left parenthesis \"(\"".into(),
            ")" => "right parenthesis \")\"".into(),
            "[" => "left bracket \"[\"".into(),
            "]" => "right bracket \"]\"".into(),
            "{" => "left brace \"{\"".into(),
            "}" => "right brace \"}\"".into(),
            "," => "\",\"".into(),
            _ => format!("{s:?}"),
        },
    }
}

/// Finds where a query the parser refused goes wrong: a byte offset and a
/// message in Prometheus's words, for the syntax errors a token scan can
/// see (unbalanced or stray brackets, characters PromQL has no use for, an
/// operand where an operator belongs or the reverse, a missing operand at
/// the end). `None` when the scan sees nothing wrong.
pub(crate) fn locate_syntax_error(q: &str) -> Option<(usize, String)> {
    let toks: Vec<Token> = match lex(q) {
        Ok(t) => t.into_iter().filter(|t| t.kind != Tok::Space).collect(),
        Err(e) => return Some((e.pos, e.msg)),
    };
    if toks.is_empty() {
        return Some((0, "no expression found in input".into()));
    }
    let text = |t: &Token| &q[t.start..t.end];
    let is_kw = |t: &Token, k: &str| t.kind == Tok::Ident && text(t).eq_ignore_ascii_case(k);
    // Bracket balance first.
    let mut stack: Vec<&Token> = Vec::new();
    for t in &toks {
        if t.kind != Tok::Punct {
            continue;
        }
        match text(t) {
            "(" | "[" | "{" => stack.push(t),
            c @ (")" | "]" | "}") => {
                let want = match c {
                    ")" => "(",
                    "]" => "[",
                    _ => "{",
                };
                match stack.pop() {
                    Some(o) if text(o) == want => {}
                    _ => return Some((t.start, format!("unexpected {}", describe(q, t)))),
                }
            }
            "$" | "&" | "|" | ";" | "?" | "\\" | "'" | "#" => {
                return Some((t.start, format!("unexpected character: {:?}", text(t))));
            }
            _ => {}
        }
    }
    if let Some(o) = stack.pop() {
        let what = match text(o) {
            "(" => "unclosed left parenthesis",
            "[" => "unclosed left bracket",
            _ => "unexpected end of input inside braces",
        };
        // Prometheus's lexer reports these at the end of the input.
        return Some((q.len(), what.into()));
    }
    // Operand / operator alternation, outside braces and brackets.
    let mut want_operand = true;
    let mut i = 0;
    while i < toks.len() {
        let t = &toks[i];
        let s = text(t);
        if t.kind == Tok::Punct && (s == "{" || s == "[") {
            // Skip the group: label matchers or a range/subquery.
            let close = if s == "{" { "}" } else { "]" };
            let mut depth = 0;
            let mut j = i;
            while j < toks.len() {
                let x = text(&toks[j]);
                if x == s {
                    depth += 1;
                } else if x == close {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                j += 1;
            }
            if s == "[" && want_operand {
                return Some((t.start, format!("unexpected {}", describe(q, t))));
            }
            want_operand = false;
            i = j + 1;
            continue;
        }
        if want_operand {
            match t.kind {
                Tok::Number | Tok::Str => want_operand = false,
                Tok::Ident if ["bool", "on", "ignoring", "group_left", "group_right"].iter().any(|k| is_kw(t, k)) => {
                    // Binary-operator modifiers: the operand still follows.
                    if toks.get(i + 1).map(text) == Some("(") {
                        while i < toks.len() && text(&toks[i]) != ")" {
                            i += 1;
                        }
                    }
                }
                Tok::Ident => {
                    let next = toks.get(i + 1);
                    if next.is_some_and(|n| is_kw(n, "by") || is_kw(n, "without")) {
                        // `sum by (x) (...)`: skip the grouping list; the
                        // aggregation's parenthesis follows.
                        i += 2;
                        if toks.get(i).map(text) == Some("(") {
                            while i < toks.len() && text(&toks[i]) != ")" {
                                i += 1;
                            }
                        }
                    } else if next.map(text) != Some("(") {
                        // A selector (a call keeps wanting its parenthesis).
                        want_operand = false;
                    }
                }
                Tok::Punct if s == "(" || s == "-" || s == "+" => {}
                Tok::Punct if s == ")" && i > 0 && text(&toks[i - 1]) == "(" => want_operand = false,
                _ => return Some((t.start, format!("unexpected {}", describe(q, t)))),
            }
        } else {
            match t.kind {
                Tok::Punct if s == ")" || s == "," => want_operand = s == ",",
                Tok::Punct if BINARY_OPS.contains(&s) => want_operand = true,
                Tok::Punct if s == "@" => {
                    // `@ <number>` or `@ start()` / `@ end()`.
                    i += 1;
                    if toks.get(i).map(text) == Some("-") || toks.get(i).map(text) == Some("+") {
                        i += 1;
                    }
                    if toks.get(i).is_some_and(|n| is_kw(n, "start") || is_kw(n, "end")) {
                        i += 2;
                    }
                }
                Tok::Ident if BINARY_OPS.iter().any(|k| is_kw(t, k)) => want_operand = true,
                Tok::Ident
                    if ["bool", "on", "ignoring", "group_left", "group_right", "by", "without"]
                        .iter()
                        .any(|k| is_kw(t, k)) =>
                {
                    if toks.get(i + 1).map(text) == Some("(") {
                        while i < toks.len() && text(&toks[i]) != ")" {
                            i += 1;
                        }
                    }
                }
                Tok::Ident if is_kw(t, "offset") => {
                    // The offset's duration (signed, maybe an expression).
                    i += 1;
                    if matches!(toks.get(i).map(text), Some("-" | "+")) {
                        i += 1;
                    }
                }
                Tok::Ident if is_kw(t, "anchored") || is_kw(t, "smoothed") => {}
                _ => return Some((t.start, format!("unexpected {}", describe(q, t)))),
            }
        }
        i += 1;
    }
    if want_operand {
        return Some((q.len(), "unexpected end of input".into()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_byte_escapes_read_as_go_bytes() {
        let raw = |b: u32| char::from_u32(RAW_BYTE_BASE + b).unwrap();
        // a valid UTF-8 run is its character; an invalid byte its stand-in
        assert_eq!(high_byte_escapes(r#""a\xc3\x85z""#).as_deref(), Some("\"aÅz\""));
        assert_eq!(high_byte_escapes(r#""a\xc5z""#), Some(format!("\"a{}z\"", raw(0xc5))));
        assert_eq!(high_byte_escapes(r#"'\305\x41'"#), Some(format!("'{}\\x41'", raw(0xc5))));
        assert_eq!(high_byte_escapes(r#""\xe2\x82""#), Some(format!("\"{}{}\"", raw(0xe2), raw(0x82))));
        // nothing to do: low bytes, an escaped backslash, raw strings
        for lit in [r#""\x41\n""#, r#""\\xc5""#, r#"`\xc5`"#, r#""é""#] {
            assert_eq!(high_byte_escapes(lit), None, "{lit}");
        }
        assert_eq!(crate::go_quote(&format!("a{}z\u{85}\"", raw(0xc5))), r#""a\xc5z\u0085\"""#);
        let q = rewrite(r#"count_values("a\xc5z", x)"#, 0, 0).unwrap();
        assert_eq!(q, format!("count_values(\"a{}z\", x)", raw(0xc5)));
    }

    fn rw(q: &str) -> String {
        rewrite(q, 5000, 10_000).unwrap().into_owned()
    }

    #[test]
    fn plain_queries_are_untouched() {
        for q in ["rate(foo[5m])", "foo offset 5m", "foo offset -1h", "sum by (job) (foo{a=\"[x]\"})", "foo[5m:1m]"] {
            assert!(matches!(rewrite(q, 0, 0).unwrap(), Cow::Borrowed(_)), "{q}");
        }
    }

    #[test]
    fn duration_expressions_are_evaluated() {
        assert_eq!(rw("changes(x[26m+4m])"), "changes(x[1800000ms])");
        assert_eq!(rw("changes(x[30m1s-30m1s % 1m])"), "changes(x[1800000ms])");
        assert_eq!(rw("x[1+(step()-5)*2]"), "x[1000ms]");
        assert_eq!(rw("x[max_of(min_of(step()+1,1h),1ms)]"), "x[6000ms]");
        assert_eq!(rw("x[29s+1s:5s+5s]"), "x[30000ms:10000ms]");
        assert_eq!(rw("x[range()]"), "x[10000ms]");
        assert!(rewrite("x[1m-2m]", 0, 0).is_err());
    }

    #[test]
    fn offset_takes_a_signed_primary_only() {
        assert_eq!(rw("x offset 100 + 2"), "x offset 100000ms + 2");
        assert_eq!(rw("x offset -2 ^ 2"), "x offset -2000ms ^ 2");
        assert_eq!(rw("x offset (-2 ^ 2)"), "x offset -4000ms");
        assert_eq!(rw("x offset -(min_of(step(), 2s)-5)+8000"), "x offset 3000ms+8000");
        assert_eq!(rw("x offset step()*0"), "x offset 5000ms*0");
    }

    #[test]
    fn syntax_errors_are_located() {
        let at = |q: &str| locate_syntax_error(q);
        assert_eq!(at("sum(rate(x[5m])"), Some((15, "unclosed left parenthesis".into())));
        assert_eq!(at("foo bar"), Some((4, "unexpected identifier \"bar\"".into())));
        assert_eq!(at("1 +"), Some((3, "unexpected end of input".into())));
        assert_eq!(at("up{job=\"x\"}) "), Some((11, "unexpected right parenthesis \")\"".into())));
        assert_eq!(at("up $ 1"), Some((3, "unexpected character: \"$\"".into())));
        for ok in [
            "sum by (job) (rate(x[5m]))",
            "sum(rate(x{a=\"b\"}[5m] offset 1m)) by (job) / on(job) group_left(x) y",
            "x @ start() + x @ 100",
            "-x offset -5m",
            "x > bool 1 and on() y",
            "topk(3, x)",
            "time()",
        ] {
            assert_eq!(at(ok), None, "{ok}");
        }
    }

    #[test]
    fn modifiers_become_matchers() {
        assert_eq!(rw("rate(x[5m] anchored)"), "rate(x{__cairn_ext__=\"anchored\"}[5m] )");
        assert_eq!(rw("x{a=\"b\"} offset -100 smoothed"), "x{__cairn_ext__=\"smoothed\",a=\"b\"} offset -100000ms ");
        assert_eq!(rw("{} smoothed"), "{__cairn_ext__=\"smoothed\"} ");
        // A metric called `anchored` is still a metric.
        assert_eq!(rw("anchored + 1"), "anchored + 1");
    }

    #[test]
    fn trim_operators_become_marked_comparisons() {
        use promql_parser::parser::Expr;
        let q = "a < b >/ 3 and sum(h </ on(x) c) <= 2";
        let (text, trims) = rewrite_full(q, 0, 0).unwrap();
        assert_eq!(text, "a < b >  3 and sum(h <  on(x) c) <= 2");
        assert_eq!(trims, [Trim { ordinal: 1, upper: false }, Trim { ordinal: 2, upper: true }]);
        let e = crate::promql::parse(q).unwrap();
        let mut ops = Vec::new();
        fn collect(e: &Expr, ops: &mut Vec<u16>) {
            match e {
                Expr::Binary(b) => {
                    collect(&b.lhs, ops);
                    ops.push(b.op.id());
                    collect(&b.rhs, ops);
                }
                Expr::Aggregate(a) => collect(&a.expr, ops),
                Expr::Paren(p) => collect(&p.expr, ops),
                _ => {}
            }
        }
        collect(&e, &mut ops);
        assert_eq!(ops[1], TRIM_LOWER);
        assert_eq!(ops[3], TRIM_UPPER);
        assert!(ops[0] != TRIM_LOWER && ops[0] != TRIM_UPPER && ops[4] != TRIM_UPPER);
        assert_eq!(crate::promql::format_query("h </ 3 + x >/ on(a) y").unwrap(), "h </ 3 + x >/ on (a) y");
        // A `<` then a division is not a trim.
        assert!(rewrite_full("a < /x/", 0, 0).map(|r| r.1.is_empty()).unwrap_or(true));
        assert!(rewrite_full("a < b / 2", 0, 0).unwrap().1.is_empty());
    }
}
