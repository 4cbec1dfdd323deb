//! Recursive-descent LogQL parser.

use std::fmt;

use cairn_wire::{MatchOp, Matcher};
use regex::Regex;

use super::ast::{
    BinOp, Expr, FilterOp, Group, Grouping, JsonPathPart, LabelFmt, LineFilter, LogRange, LogSelector, NamedMatcher,
    RangeOp, SampleExpr, Stage, Unwrap, UnwrapConv, VecOp, VectorMatching,
};
use super::lexer::{Tok, Token, lex};
use super::pipeline::{CmpOp, IpMatcher, LabelFilter, NumKind, Pattern, Template, parse_bytes, parse_go_duration};

/// Deepest nesting of sub-expressions accepted (guards the stack).
const MAX_DEPTH: usize = 200;

/// A LogQL parse error with its 1-based line and column, displayed as Loki
/// displays it; errors Loki reports without a position (line 0) read
/// `parse error : <msg>`.
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
            write!(f, "parse error : {}", self.msg)
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
    /// Current nesting of recursive rules, at most [`MAX_DEPTH`].
    depth: usize,
    /// Binary, unary and label-filter nodes built so far, at most
    /// [`MAX_NODES`]: chains like `a + b + c …` or `x="1" or x="2" or …`
    /// parse in a loop but make trees as deep as they are long, which
    /// evaluation and drop then walk recursively.
    nodes: usize,
}

/// Most operator nodes one query may have (see `Parser::nodes`).
const MAX_NODES: usize = 1000;

/// The message Loki gives for a selector every matcher of which accepts "".
pub const EMPTY_SELECTOR_MSG: &str = "queries require at least one regexp or equality matcher that does not have an empty-compatible value. For instance, app=~\".*\" does not meet this requirement, but app=~\".+\" will";

/// Parses a LogQL expression.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let toks = lex(src).map_err(|e| {
        let (line, col) = line_col(src, e.pos);
        ParseError { line, col, msg: format!("syntax error: {}", e.msg) }
    })?;
    let mut p = Parser { src, toks, i: 0, depth: 0, nodes: 0 };
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

    /// Consumes a token. Always advances (past the end, `peek` keeps
    /// answering end of input), so `self.i -= 1` undoes it exactly.
    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        self.i += 1;
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
        if *self.peek() == Tok::OpenBrace {
            let sel = self.log_selector()?;
            if *self.peek() == Tok::OpenBracket {
                return Err(self.unexpected("end of input or a pipeline stage (a range is only allowed inside a range aggregation such as count_over_time)"));
            }
            return Ok(Expr::Log(sel));
        }
        Ok(Expr::Sample(self.sample_expr(0)?))
    }

    fn binop(&self) -> Option<BinOp> {
        Some(match self.peek() {
            Tok::Add => BinOp::Add,
            Tok::Sub => BinOp::Sub,
            Tok::Mul => BinOp::Mul,
            Tok::Div => BinOp::Div,
            Tok::Mod => BinOp::Mod,
            Tok::Pow => BinOp::Pow,
            Tok::CmpEq => BinOp::Eq,
            Tok::Neq => BinOp::Neq,
            Tok::Gt => BinOp::Gt,
            Tok::Gte => BinOp::Gte,
            Tok::Lt => BinOp::Lt,
            Tok::Lte => BinOp::Lte,
            Tok::Ident(s) if s == "or" => BinOp::Or,
            Tok::Ident(s) if s == "and" => BinOp::And,
            Tok::Ident(s) if s == "unless" => BinOp::Unless,
            _ => return None,
        })
    }

    /// One level deeper into a recursive rule (undo with `self.depth -= 1`).
    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err_at(self.pos(), "syntax error: expression nested too deeply".into()));
        }
        Ok(())
    }

    /// Counts one operator node against [`MAX_NODES`].
    fn node(&mut self) -> Result<(), ParseError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(self.err_at(
                self.pos(),
                format!("syntax error: expression too complex (more than {MAX_NODES} operators)"),
            ));
        }
        Ok(())
    }

    /// Precedence climbing over binary operators; `^` is right-associative.
    fn sample_expr(&mut self, min_prec: u8) -> Result<SampleExpr, ParseError> {
        self.enter()?;
        let mut lhs = self.unary()?;
        while let Some(op) = self.binop() {
            let prec = op.precedence();
            if prec < min_prec {
                break;
            }
            self.next();
            let mut return_bool = false;
            if matches!(self.peek(), Tok::Ident(s) if s == "bool") {
                if !op.is_comparison() {
                    return Err(
                        self.err_at(self.pos(), "bool modifier can only be used on comparison operators".into())
                    );
                }
                self.next();
                return_bool = true;
            }
            let mut matching = None;
            if let Tok::Ident(s) = self.peek()
                && (s == "on" || s == "ignoring")
                && self.toks.get(self.i + 1).is_some_and(|t| t.tok == Tok::OpenParen)
            {
                let on = s == "on";
                self.next();
                let labels = self.label_list()?;
                let mut group = None;
                if let Tok::Ident(g) = self.peek().clone()
                    && (g == "group_left" || g == "group_right")
                {
                    let gpos = self.pos();
                    if op.is_set() {
                        return Err(
                            self.err_at(gpos, format!("no grouping allowed for \"{}\" operation", binop_name(op)))
                        );
                    }
                    self.next();
                    let include = if *self.peek() == Tok::OpenParen { self.label_list()? } else { Vec::new() };
                    group = Some(if g == "group_left" { Group::Left(include) } else { Group::Right(include) });
                }
                matching = Some(VectorMatching { on, labels, group });
            } else if let Tok::Ident(g) = self.peek()
                && (g == "group_left" || g == "group_right")
            {
                return Err(self.unexpected("on or ignoring before group_left/group_right"));
            }
            let next_min = if op == BinOp::Pow { prec } else { prec + 1 };
            let rhs = self.sample_expr(next_min)?;
            self.node()?;
            lhs = fold(op, return_bool, matching, lhs, rhs);
        }
        self.depth -= 1;
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<SampleExpr, ParseError> {
        match self.peek() {
            Tok::Sub | Tok::Add => {
                let neg = *self.peek() == Tok::Sub;
                self.next();
                self.node()?;
                self.enter()?;
                let e = self.unary()?;
                self.depth -= 1;
                if !neg {
                    return Ok(e);
                }
                Ok(match e {
                    SampleExpr::Literal(v) => SampleExpr::Literal(-v),
                    other => SampleExpr::Binary {
                        op: BinOp::Mul,
                        return_bool: false,
                        matching: None,
                        lhs: Box::new(SampleExpr::Literal(-1.0)),
                        rhs: Box::new(other),
                    },
                })
            }
            _ => self.primary(),
        }
    }

    fn number(&mut self) -> Result<f64, ParseError> {
        let neg = if *self.peek() == Tok::Sub {
            self.next();
            true
        } else {
            false
        };
        let pos = self.pos();
        match self.next() {
            Tok::Number(n) => {
                let v =
                    parse_number(&n).ok_or_else(|| self.err_at(pos, format!("syntax error: invalid number {n:?}")))?;
                Ok(if neg { -v } else { v })
            }
            _ => {
                self.i -= 1;
                Err(self.unexpected("NUMBER"))
            }
        }
    }

    fn primary(&mut self) -> Result<SampleExpr, ParseError> {
        let pos = self.pos();
        match self.peek().clone() {
            Tok::Number(_) => Ok(SampleExpr::Literal(self.number()?)),
            Tok::OpenParen => {
                self.next();
                let e = self.sample_expr(0)?;
                self.expect(Tok::CloseParen, ")")?;
                Ok(e)
            }
            Tok::OpenBrace => Err(self.err_at(
                pos,
                "syntax error: unexpected {, a log selector must be wrapped in a range aggregation such as count_over_time({…}[1m]) inside a metric query".into(),
            )),
            Tok::Ident(name) => {
                if let Some(op) = RangeOp::from_name(&name) {
                    self.next();
                    return self.range_agg(op);
                }
                if let Some(op) = VecOp::from_name(&name) {
                    self.next();
                    return self.vector_agg(op);
                }
                match name.as_str() {
                    "vector" => {
                        self.next();
                        self.expect(Tok::OpenParen, "(")?;
                        let v = self.number()?;
                        self.expect(Tok::CloseParen, ")")?;
                        Ok(SampleExpr::VectorLit(v))
                    }
                    "label_replace" => {
                        self.next();
                        self.label_replace()
                    }
                    "absent" | "approx_topk" | "count_values" | "group" | "sum_of_squares" | "timestamp" => Err(self.err_at(
                        pos,
                        format!("{name} is not supported by this Cairn version"),
                    )),
                    _ => Err(self.unexpected("a metric expression")),
                }
            }
            _ => Err(self.unexpected("a metric expression")),
        }
    }

    fn expect(&mut self, t: Tok, what: &str) -> Result<(), ParseError> {
        if *self.peek() == t {
            self.next();
            Ok(())
        } else {
            Err(self.unexpected(what))
        }
    }

    fn grouping(&mut self) -> Result<Option<Grouping>, ParseError> {
        let without = match self.peek() {
            Tok::Ident(s) if s == "by" => false,
            Tok::Ident(s) if s == "without" => true,
            _ => return Ok(None),
        };
        self.next();
        let labels = self.label_list()?;
        Ok(Some(Grouping { without, labels }))
    }

    /// `( a, b, … )`, possibly empty.
    fn label_list(&mut self) -> Result<Vec<String>, ParseError> {
        self.expect(Tok::OpenParen, "(")?;
        let mut out = Vec::new();
        if *self.peek() == Tok::CloseParen {
            self.next();
            return Ok(out);
        }
        loop {
            match self.next() {
                Tok::Ident(n) => out.push(n),
                _ => {
                    self.i -= 1;
                    return Err(self.unexpected("IDENTIFIER"));
                }
            }
            match self.next() {
                Tok::Comma => continue,
                Tok::CloseParen => return Ok(out),
                _ => {
                    self.i -= 1;
                    return Err(self.unexpected(", or )"));
                }
            }
        }
    }

    fn label_replace(&mut self) -> Result<SampleExpr, ParseError> {
        self.expect(Tok::OpenParen, "(")?;
        let inner = self.sample_expr(0)?;
        let mut args = Vec::with_capacity(4);
        let mut positions = Vec::with_capacity(4);
        for _ in 0..4 {
            self.expect(Tok::Comma, ",")?;
            positions.push(self.pos());
            args.push(self.string()?);
        }
        self.expect(Tok::CloseParen, ")")?;
        let (dst, replacement, src, regex_src) = (args[0].clone(), args[1].clone(), args[2].clone(), args[3].clone());
        if !cairn_wire::labels::is_valid_label_name(&dst) {
            return Err(self.err_at(positions[0], format!("invalid destination label name in label_replace(): {dst}")));
        }
        let regex = cairn_wire::matcher::anchored_regex(&regex_src).map_err(|e| {
            self.err_at(positions[3], format!("invalid regular expression in label_replace(): {regex_src}: {e}"))
        })?;
        Ok(SampleExpr::LabelReplace { inner: Box::new(inner), dst, replacement, src, regex_src, regex })
    }

    fn vector_agg(&mut self, op: VecOp) -> Result<SampleExpr, ParseError> {
        let pre = self.grouping()?;
        self.expect(Tok::OpenParen, "(")?;
        let param = if matches!(op, VecOp::Topk | VecOp::Bottomk) {
            let ppos = self.pos();
            let k = self.number()?;
            if k.fract() != 0.0 || k <= 0.0 {
                return Err(self
                    .err_at(ppos, format!("invalid parameter (must be an integer greater than 0): {k}"))
                    .without_position());
            }
            self.expect(Tok::Comma, ",")?;
            Some(k)
        } else {
            None
        };
        let inner = self.sample_expr(0)?;
        self.expect(Tok::CloseParen, ")")?;
        let post = self.grouping()?;
        if pre.is_some() && post.is_some() {
            return Err(self.unexpected("end of expression (grouping given twice)"));
        }
        Ok(SampleExpr::Vector { op, grouping: post.or(pre), param, inner: Box::new(inner) })
    }

    fn range_agg(&mut self, op: RangeOp) -> Result<SampleExpr, ParseError> {
        let fpos = self.pos();
        let pre = self.grouping()?;
        self.expect(Tok::OpenParen, "(")?;
        let param = if op == RangeOp::Quantile {
            let v = self.number()?;
            self.expect(Tok::Comma, ",")?;
            Some(v)
        } else {
            None
        };
        let range = self.log_range()?;
        self.expect(Tok::CloseParen, ")")?;
        let post = self.grouping()?;
        let grouping = post.or(pre);
        // Loki's RangeAggregationExpr.validate(), same order and messages.
        if grouping.is_some()
            && !matches!(
                op,
                RangeOp::Avg
                    | RangeOp::Stddev
                    | RangeOp::Stdvar
                    | RangeOp::Quantile
                    | RangeOp::Max
                    | RangeOp::Min
                    | RangeOp::First
                    | RangeOp::Last
            )
        {
            return Err(self
                .err_at(fpos, format!("grouping not allowed for {} aggregation", op.name()))
                .without_position());
        }
        match (&range.unwrap, op.needs_unwrap()) {
            (None, true) => {
                return Err(self
                    .err_at(fpos, format!("invalid aggregation {} without unwrap", op.name()))
                    .without_position());
            }
            (Some(_), false) if !matches!(op, RangeOp::Rate | RangeOp::Absent) => {
                return Err(self
                    .err_at(fpos, format!("invalid aggregation {} with unwrap", op.name()))
                    .without_position());
            }
            _ => {}
        }
        Ok(SampleExpr::Range { op, param, range, grouping })
    }

    fn log_range(&mut self) -> Result<LogRange, ParseError> {
        if *self.peek() == Tok::OpenParen {
            // `(selector | pipeline)[range]`
            self.next();
            let mut r = self.log_range_inner(true)?;
            self.expect(Tok::CloseParen, ")")?;
            let (range, offset) = self.range_and_offset()?;
            r.range = range;
            r.offset = offset;
            return Ok(r);
        }
        self.log_range_inner(false)
    }

    fn range_and_offset(&mut self) -> Result<(i64, i64), ParseError> {
        self.expect(Tok::OpenBracket, "[")?;
        let range = self.duration_ns()?;
        self.expect(Tok::CloseBracket, "]")?;
        let mut offset = 0;
        if matches!(self.peek(), Tok::Ident(s) if s == "offset") {
            self.next();
            offset = self.duration_ns()?;
        }
        Ok((range, offset))
    }

    fn duration_ns(&mut self) -> Result<i64, ParseError> {
        let pos = self.pos();
        match self.next() {
            Tok::Number(n) => {
                let secs = parse_go_duration(&n)
                    .or_else(|| cairn_wire::time::parse_duration_ms(&n).ok().map(|ms| ms as f64 / 1000.0))
                    .ok_or_else(|| self.err_at(pos, format!("syntax error: invalid duration {n:?}")))?;
                if !(0.0..=9.2e9).contains(&secs) {
                    return Err(self.err_at(pos, format!("syntax error: duration {n:?} out of range")));
                }
                Ok((secs * 1e9).round() as i64)
            }
            _ => {
                self.i -= 1;
                Err(self.unexpected("DURATION"))
            }
        }
    }

    /// `selector [range] pipeline [unwrap] [range] [offset]`; when
    /// `in_parens`, the range follows the closing parenthesis.
    fn log_range_inner(&mut self, in_parens: bool) -> Result<LogRange, ParseError> {
        let matchers = self.selector_matchers()?;
        let mut range_off = None;
        if !in_parens && *self.peek() == Tok::OpenBracket {
            range_off = Some(self.range_and_offset()?);
        }
        let (pipeline, unwrap) = self.pipeline(true)?;
        if !in_parens && range_off.is_none() {
            range_off = Some(self.range_and_offset()?);
        }
        let (range, offset) = range_off.unwrap_or((0, 0));
        Ok(LogRange { selector: LogSelector { matchers, pipeline }, range, offset, unwrap })
    }

    fn selector_matchers(&mut self) -> Result<Vec<Matcher>, ParseError> {
        let start = self.pos();
        let matchers = self.matchers()?;
        if matchers.iter().all(|m| m.matches_empty()) {
            return Err(self.err_at(start, EMPTY_SELECTOR_MSG.to_string()).without_position());
        }
        Ok(matchers)
    }

    fn log_selector(&mut self) -> Result<LogSelector, ParseError> {
        let matchers = self.selector_matchers()?;
        let (pipeline, _) = self.pipeline(false)?;
        Ok(LogSelector { matchers, pipeline })
    }

    fn string(&mut self) -> Result<String, ParseError> {
        match self.next() {
            Tok::Str(s) => Ok(s),
            _ => {
                self.i -= 1;
                Err(self.unexpected("STRING"))
            }
        }
    }

    /// `("spec")` after `ip`.
    fn ip_arg(&mut self) -> Result<IpMatcher, ParseError> {
        self.expect(Tok::OpenParen, "(")?;
        let pos = self.pos();
        let spec = self.string()?;
        self.expect(Tok::CloseParen, ")")?;
        IpMatcher::new(&spec).map_err(|e| self.err_at(pos, e))
    }

    fn line_filter(&mut self, op: FilterOp) -> Result<LineFilter, ParseError> {
        let mut patterns = Vec::new();
        let mut res = Vec::new();
        let mut pats = Vec::new();
        loop {
            let pos = self.pos();
            if matches!(self.peek(), Tok::Ident(s) if s == "ip") {
                let op = match op {
                    FilterOp::Contains => FilterOp::IpMatch,
                    FilterOp::NotContains => FilterOp::IpNotMatch,
                    _ => return Err(self.err_at(pos, "ip() is only allowed after |= and !=".into())),
                };
                self.next();
                let m = self.ip_arg()?;
                return Ok(LineFilter { op, patterns: vec![m.source().to_string()], res, pats, ips: vec![m] });
            }
            let pattern = self.string()?;
            if matches!(op, FilterOp::Match | FilterOp::NotMatch) {
                res.push(
                    Regex::new(&pattern)
                        .map_err(|e| self.err_at(pos, format!("invalid regular expression {pattern:?}: {e}")))?,
                );
            }
            if matches!(op, FilterOp::PatternMatch | FilterOp::PatternNotMatch) {
                pats.push(Pattern::new_filter(&pattern).map_err(|e| self.err_at(pos, e))?);
            }
            patterns.push(pattern);
            if matches!(self.peek(), Tok::Ident(s) if s == "or")
                && matches!(self.toks.get(self.i + 1).map(|t| &t.tok), Some(Tok::Str(_)))
            {
                self.next();
                continue;
            }
            return Ok(LineFilter { op, patterns, res, pats, ips: Vec::new() });
        }
    }

    /// Pipeline stages; with `allow_unwrap`, a final `| unwrap …` (and the
    /// label filters after it) is returned separately.
    fn pipeline(&mut self, allow_unwrap: bool) -> Result<(Vec<Stage>, Option<Unwrap>), ParseError> {
        let mut stages = Vec::new();
        loop {
            let op = match self.peek() {
                Tok::PipeExact => FilterOp::Contains,
                Tok::Neq => FilterOp::NotContains,
                Tok::PipeMatch => FilterOp::Match,
                Tok::Nre => FilterOp::NotMatch,
                Tok::PipePattern => FilterOp::PatternMatch,
                Tok::NotPipePattern => FilterOp::PatternNotMatch,
                Tok::Pipe => {
                    self.next();
                    if matches!(self.peek(), Tok::Ident(s) if s == "unwrap") {
                        let upos = self.pos();
                        if !allow_unwrap {
                            return Err(self.err_at(
                                upos,
                                "syntax error: unexpected unwrap, unwrap is only allowed in a range aggregation".into(),
                            ));
                        }
                        self.next();
                        let u = self.unwrap_expr()?;
                        return Ok((stages, Some(u)));
                    }
                    stages.push(self.stage()?);
                    continue;
                }
                _ => return Ok((stages, None)),
            };
            self.next();
            stages.push(Stage::LineFilter(self.line_filter(op)?));
        }
    }

    fn unwrap_expr(&mut self) -> Result<Unwrap, ParseError> {
        let pos = self.pos();
        let Tok::Ident(first) = self.next() else {
            self.i -= 1;
            return Err(self.unexpected("IDENTIFIER"));
        };
        let (label, conv) = if *self.peek() == Tok::OpenParen {
            let conv = match first.as_str() {
                "duration" | "duration_seconds" => UnwrapConv::Duration,
                "bytes" => UnwrapConv::Bytes,
                other => return Err(self.err_at(pos, format!("syntax error: unknown unwrap conversion {other:?}"))),
            };
            self.next();
            let Tok::Ident(l) = self.next() else {
                self.i -= 1;
                return Err(self.unexpected("IDENTIFIER"));
            };
            self.expect(Tok::CloseParen, ")")?;
            (l, conv)
        } else {
            (first, UnwrapConv::Float)
        };
        let mut post_filters = Vec::new();
        while *self.peek() == Tok::Pipe {
            self.next();
            post_filters.push(self.label_filter_or()?);
        }
        Ok(Unwrap { label, conv, post_filters })
    }

    fn stage(&mut self) -> Result<Stage, ParseError> {
        let pos = self.pos();
        let name = match self.peek().clone() {
            Tok::Ident(n) => n,
            Tok::OpenParen => return Ok(Stage::LabelFilter(self.label_filter_or()?)),
            _ => return Err(self.unexpected("a pipeline stage")),
        };
        // `| name op value` is a label filter even when `name` is a keyword.
        let next_is_op = matches!(
            self.toks.get(self.i + 1).map(|t| &t.tok),
            Some(Tok::Eq | Tok::CmpEq | Tok::Neq | Tok::Re | Tok::Nre | Tok::Gt | Tok::Gte | Tok::Lt | Tok::Lte)
        );
        if next_is_op && name != "label_format" {
            return Ok(Stage::LabelFilter(self.label_filter_or()?));
        }
        self.next();
        match name.as_str() {
            "json" => {
                let mut params = Vec::new();
                for (label, expr) in self.extraction_params()? {
                    let path = parse_json_path(&expr)
                        .ok_or_else(|| self.err_at(pos, format!("invalid JSON expression {expr:?}")))?;
                    params.push((label, path));
                }
                Ok(Stage::Json(params))
            }
            "logfmt" => {
                let mut strict = false;
                let mut keep_empty = false;
                while let Tok::Flag(f) = self.peek().clone() {
                    match f.as_str() {
                        "strict" => strict = true,
                        "keep-empty" => keep_empty = true,
                        other => {
                            return Err(self.err_at(self.pos(), format!("syntax error: unknown logfmt flag --{other}")));
                        }
                    }
                    self.next();
                }
                let params = self.extraction_params()?;
                Ok(Stage::Logfmt { strict, keep_empty, params })
            }
            "regexp" => {
                let spos = self.pos();
                let src = self.string()?;
                let re =
                    Regex::new(&src).map_err(|e| self.err_at(spos, format!("invalid regular expression {src:?}: {e}")))?;
                if re.capture_names().flatten().next().is_none() {
                    return Err(self.err_at(spos, "at least one named capture must be supported".into()));
                }
                for n in re.capture_names().flatten() {
                    if !cairn_wire::labels::is_valid_label_name(n) {
                        return Err(self.err_at(spos, format!("invalid extracted label name '{n}'")));
                    }
                }
                Ok(Stage::Regexp(re))
            }
            "pattern" => {
                let spos = self.pos();
                let src = self.string()?;
                Ok(Stage::Pattern(Pattern::new(&src).map_err(|e| self.err_at(spos, e))?))
            }
            "unpack" => Ok(Stage::Unpack),
            "decolorize" => Ok(Stage::Decolorize),
            "line_format" => {
                let spos = self.pos();
                let src = self.string()?;
                Ok(Stage::LineFormat(Template::new(&src).map_err(|e| self.err_at(spos, e))?))
            }
            "label_format" => {
                let mut items = Vec::new();
                loop {
                    let Tok::Ident(dst) = self.next() else {
                        self.i -= 1;
                        return Err(self.unexpected("IDENTIFIER"));
                    };
                    self.expect(Tok::Eq, "=")?;
                    let vpos = self.pos();
                    match self.next() {
                        Tok::Ident(src) => items.push(LabelFmt::Rename { dst, src }),
                        Tok::Str(t) => items.push(LabelFmt::Template {
                            dst,
                            tmpl: Template::new(&t).map_err(|e| self.err_at(vpos, e))?,
                        }),
                        _ => {
                            self.i -= 1;
                            return Err(self.unexpected("IDENTIFIER or STRING"));
                        }
                    }
                    if *self.peek() == Tok::Comma {
                        self.next();
                        continue;
                    }
                    return Ok(Stage::LabelFormat(items));
                }
            }
            "drop" | "keep" => {
                let mut items = Vec::new();
                loop {
                    let Tok::Ident(n) = self.next() else {
                        self.i -= 1;
                        return Err(self.unexpected("IDENTIFIER"));
                    };
                    let op = match self.peek() {
                        Tok::Eq | Tok::CmpEq => Some(MatchOp::Equal),
                        Tok::Neq => Some(MatchOp::NotEqual),
                        Tok::Re => Some(MatchOp::Regex),
                        Tok::Nre => Some(MatchOp::NotRegex),
                        _ => None,
                    };
                    let matcher = match op {
                        None => None,
                        Some(op) => {
                            self.next();
                            let vpos = self.pos();
                            let v = self.string()?;
                            Some(Matcher::new(op, n.clone(), v).map_err(|e| self.err_at(vpos, e.to_string()))?)
                        }
                    };
                    items.push(NamedMatcher { name: n, matcher });
                    if *self.peek() == Tok::Comma {
                        self.next();
                        continue;
                    }
                    break;
                }
                Ok(if name == "drop" { Stage::Drop(items) } else { Stage::Keep(items) })
            }
            "distinct" => {
                let mut names = Vec::new();
                loop {
                    let Tok::Ident(n) = self.next() else {
                        self.i -= 1;
                        return Err(self.unexpected("IDENTIFIER"));
                    };
                    names.push(n);
                    if *self.peek() == Tok::Comma {
                        self.next();
                        continue;
                    }
                    break;
                }
                Ok(Stage::Distinct(names))
            }
            other => Err(self.err_at(
                pos,
                format!("syntax error: unexpected IDENTIFIER {other}, expecting a pipeline stage (json, logfmt, regexp, pattern, unpack, line_format, label_format, drop, keep, decolorize, distinct, unwrap or a label filter)"),
            )),
        }
    }

    /// `a="expr", b, …` after `json` / `logfmt` (possibly none).
    fn extraction_params(&mut self) -> Result<Vec<(String, String)>, ParseError> {
        let mut out = Vec::new();
        while let Tok::Ident(label) = self.peek().clone() {
            // Stop at a keyword that cannot start a parameter.
            if matches!(self.toks.get(self.i + 1).map(|t| &t.tok), Some(Tok::Ident(_) | Tok::OpenParen)) {
                break;
            }
            self.next();
            let expr = if *self.peek() == Tok::Eq {
                self.next();
                self.string()?
            } else {
                label.clone()
            };
            out.push((label, expr));
            if *self.peek() == Tok::Comma {
                self.next();
                continue;
            }
            break;
        }
        Ok(out)
    }

    fn label_filter_or(&mut self) -> Result<LabelFilter, ParseError> {
        let mut lhs = self.label_filter_and()?;
        while matches!(self.peek(), Tok::Ident(s) if s == "or") {
            self.next();
            let rhs = self.label_filter_and()?;
            self.node()?;
            lhs = LabelFilter::Or(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn label_filter_and(&mut self) -> Result<LabelFilter, ParseError> {
        let mut lhs = self.label_filter_unary()?;
        loop {
            let more = match self.peek() {
                Tok::Ident(s) if s == "and" => {
                    self.next();
                    true
                }
                Tok::Comma => {
                    self.next();
                    true
                }
                // juxtaposition: `| a="b" c="d"`
                Tok::Ident(s) if s != "or" && s != "offset" && s != "by" && s != "without" => {
                    matches!(
                        self.toks.get(self.i + 1).map(|t| &t.tok),
                        Some(
                            Tok::Eq
                                | Tok::CmpEq
                                | Tok::Neq
                                | Tok::Re
                                | Tok::Nre
                                | Tok::Gt
                                | Tok::Gte
                                | Tok::Lt
                                | Tok::Lte
                        )
                    )
                }
                Tok::OpenParen => true,
                _ => false,
            };
            if !more {
                return Ok(lhs);
            }
            let rhs = self.label_filter_unary()?;
            self.node()?;
            lhs = LabelFilter::And(Box::new(lhs), Box::new(rhs));
        }
    }

    fn label_filter_unary(&mut self) -> Result<LabelFilter, ParseError> {
        if *self.peek() == Tok::OpenParen {
            self.next();
            self.enter()?;
            let f = self.label_filter_or()?;
            self.depth -= 1;
            self.expect(Tok::CloseParen, ")")?;
            return Ok(f);
        }
        let Tok::Ident(name) = self.next() else {
            self.i -= 1;
            return Err(self.unexpected("IDENTIFIER"));
        };
        let opos = self.pos();
        let op = self.next();
        let vpos = self.pos();
        let val = self.next();
        let str_op = match op {
            Tok::Eq | Tok::CmpEq => Some(MatchOp::Equal),
            Tok::Neq => Some(MatchOp::NotEqual),
            Tok::Re => Some(MatchOp::Regex),
            Tok::Nre => Some(MatchOp::NotRegex),
            _ => None,
        };
        let cmp = match op {
            Tok::Eq | Tok::CmpEq => Some(CmpOp::Eq),
            Tok::Neq => Some(CmpOp::Neq),
            Tok::Gt => Some(CmpOp::Gt),
            Tok::Gte => Some(CmpOp::Gte),
            Tok::Lt => Some(CmpOp::Lt),
            Tok::Lte => Some(CmpOp::Lte),
            _ => None,
        };
        match (val, str_op, cmp) {
            (Tok::Str(v), Some(mop), _) => {
                let m = Matcher::new(mop, name, v).map_err(|e| self.err_at(vpos, e.to_string()))?;
                Ok(LabelFilter::String(m))
            }
            (Tok::Number(n), _, Some(op)) => {
                let (kind, value) = if let Some(v) = parse_number(&n) {
                    (NumKind::Number, v)
                } else if let Some(v) = parse_go_duration(&n) {
                    (NumKind::Duration, v)
                } else if let Some(v) = parse_bytes(&n) {
                    (NumKind::Bytes, v)
                } else {
                    return Err(self.err_at(vpos, format!("syntax error: invalid number, duration or bytes {n:?}")));
                };
                Ok(LabelFilter::Numeric { name, op, kind, value })
            }
            (Tok::Ident(f), Some(MatchOp::Equal | MatchOp::NotEqual), _) if f == "ip" => {
                let negate = str_op == Some(MatchOp::NotEqual);
                let matcher = self.ip_arg()?;
                Ok(LabelFilter::Ip { name, negate, matcher })
            }
            (Tok::Ident(f), _, _) if f == "ip" => {
                Err(self.err_at(vpos, "ip() label filters allow only = and !=".into()))
            }
            (Tok::Sub, _, Some(op)) => {
                self.i -= 1;
                let v = self.number()?;
                Ok(LabelFilter::Numeric { name, op, kind: NumKind::Number, value: v })
            }
            (_, None, None) => {
                self.i -= 2;
                let _ = opos;
                Err(self.unexpected("=, !=, =~, !~, ==, >, >=, < or <="))
            }
            _ => {
                self.i -= 1;
                Err(self.unexpected("STRING or NUMBER"))
            }
        }
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

/// Parses a number literal (decimal, float, exponent, hex).
fn parse_number(s: &str) -> Option<f64> {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return i64::from_str_radix(h, 16).ok().map(|v| v as f64);
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'e' || b == b'E') {
        return s.parse().ok().filter(|v: &f64| v.is_finite());
    }
    None
}

/// Parses a JSON extraction expression: `a.b[0]["c d"]`.
pub fn parse_json_path(s: &str) -> Option<Vec<JsonPathPart>> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    let mut expect_key = true;
    while i < b.len() {
        match b[i] {
            b'.' => {
                i += 1;
                expect_key = true;
            }
            b'[' => {
                let end = s[i..].find(']')? + i;
                let inner = s[i + 1..end].trim();
                if let Some(q) = inner.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
                    out.push(JsonPathPart::Key(q.to_string()));
                } else {
                    out.push(JsonPathPart::Index(inner.parse().ok()?));
                }
                i = end + 1;
                expect_key = false;
            }
            _ if expect_key => {
                let start = i;
                while i < b.len() && b[i] != b'.' && b[i] != b'[' {
                    i += 1;
                }
                out.push(JsonPathPart::Key(s[start..i].to_string()));
                expect_key = false;
            }
            _ => return None,
        }
    }
    if out.is_empty() { None } else { Some(out) }
}

fn binop_name(op: BinOp) -> &'static str {
    match op {
        BinOp::Or => "or",
        BinOp::And => "and",
        BinOp::Unless => "unless",
        _ => "arithmetic",
    }
}

/// Builds a binary node, folding literal–literal arithmetic as Loki does.
fn fold(
    op: BinOp,
    return_bool: bool,
    matching: Option<VectorMatching>,
    lhs: SampleExpr,
    rhs: SampleExpr,
) -> SampleExpr {
    if let (SampleExpr::Literal(a), SampleExpr::Literal(b)) = (&lhs, &rhs)
        && !op.is_set()
    {
        return SampleExpr::Literal(super::metric::scalar_op(op, *a, *b, true).unwrap_or(f64::NAN));
    }
    SampleExpr::Binary { op, return_bool, matching, lhs: Box::new(lhs), rhs: Box::new(rhs) }
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
            Expr::Sample(e) => panic!("not a log query: {e:?}"),
        }
    }

    #[test]
    fn selectors_and_filters() {
        let s = sel(
            r#"{job="x", env!="dev", app=~"a.+", pod!~"b.*"} |= "err" != `debug` |~ "time(d)? ?out" !~ "(?i)health""#,
        );
        assert_eq!(s.matchers.len(), 4);
        assert_eq!(s.matchers[2].op, MatchOp::Regex);
        let f: Vec<&LineFilter> = s.line_filters().collect();
        assert_eq!(f.len(), 4);
        assert!(f[0].keep("an err here"));
        assert!(!f[1].keep("debug stuff"));
        assert!(f[2].keep("timed out"));
        assert!(!f[3].keep("HEALTH check"));
    }

    #[test]
    fn errors_have_positions() {
        let e = parse(r#"{job="x"} |= 5"#).unwrap_err();
        assert_eq!((e.line, e.col), (1, 14));
        assert!(e.to_string().starts_with("parse error at line 1, col 14: syntax error: unexpected NUMBER 5"), "{e}");
        let e = parse("{job=\"x\"\n ,}").unwrap_err();
        assert_eq!((e.line, e.col), (2, 3));
        assert!(
            parse(r#"{job=~".*"}"#).unwrap_err().to_string().starts_with("parse error : queries require at least one")
        );
        assert!(parse("{}").is_err());
        assert!(parse(r#"{job="x"} |~ "(""#).is_err());
        assert!(parse(r#"{job="x"} |> "<_> x""#).is_ok());
        assert!(parse(r#"{job="x"} |> "<_><_>""#).is_err());
        assert!(parse(r#"label_replace(rate({job="x"}[1m]), "a", "b", "c", "d")"#).is_ok());
        assert!(parse(r#"label_replace(rate({job="x"}[1m]), "1a", "b", "c", "d")"#).is_err());
        assert!(parse(r#"label_replace(rate({job="x"}[1m]), "a", "b", "c", "(")"#).is_err());
        assert!(parse(r#"absent(rate({job="x"}[1m]))"#).unwrap_err().to_string().contains("absent is not supported"));
        assert!(parse(r#"rate({job="x"})"#).is_err());
        assert!(parse(r#"{job="x"}[1m]"#).is_err());
        assert_eq!(
            parse(r#"sum_over_time({job="x"}[1m])"#).unwrap_err().to_string(),
            "parse error : invalid aggregation sum_over_time without unwrap"
        );
        assert_eq!(
            parse(r#"sum_over_time({job="x"} | unwrap a [1m]) by (b)"#).unwrap_err().to_string(),
            "parse error : grouping not allowed for sum_over_time aggregation"
        );
        assert!(parse(r#"absent_over_time({job="x"} | unwrap a [1m])"#).is_ok());
        assert!(parse(r#"topk(0, rate({job="x"}[1m]))"#).is_err());
        assert!(
            parse(r#"count_over_time({job="x"} | unwrap a [1m])"#).unwrap_err().to_string().contains("with unwrap")
        );
        assert!(parse(r#"{job="x"} | unwrap a"#).is_err());
        assert!(parse(r#"{job="x"} | line_format "{{ if .a }}{{ end }}""#).unwrap_err().to_string().contains("\"if\""));
        assert!(parse(r#"{job="x"} | nosuchstage"#).is_err());
        assert!(parse("1 + bool 2").is_err());
        assert!(parse(r#"sum(rate({a="b"}[1m])) * group_left sum(rate({a="b"}[1m]))"#).is_err());
        assert!(parse(r#"sum(rate({a="b"}[1m])) * on(a) group_left(c) sum(rate({a="b"}[1m]))"#).is_ok());
        assert!(parse(r#"sum(rate({a="b"}[1m])) and on(a) group_left sum(rate({a="b"}[1m]))"#).is_err());
        assert!(parse(r#"{job="x"} extra"#).is_err());
        for junk in ["", "{", "{job", "{job=", "{job=\"x\"", "}", "|=", "{job=\"x\"} |="] {
            assert!(parse(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn metric_queries_parse() {
        for q in [
            "vector(1)+vector(1)",
            "1 + 1",
            "-1",
            r#"rate({job="x"}[5m])"#,
            r#"rate({job="x"} |= "err" [5m] offset 1h)"#,
            r#"rate({job="x"}[5m] |= "err")"#,
            r#"count_over_time(({job="x"} |= "err")[5m])"#,
            r#"bytes_rate({job="x"}[1m])"#,
            r#"bytes_over_time({job="x"}[1m])"#,
            r#"absent_over_time({job="x"}[1m])"#,
            r#"sum by (level, detected_level) (count_over_time({job="x"} |= "x" | drop __error__ [1m]))"#,
            r#"sum(count_over_time({job="x"}[1m])) by (level)"#,
            r#"sum without (pod) (rate({job="x"}[1m]))"#,
            r#"topk(5, sum by (a) (rate({job="x"}[1m])))"#,
            r#"bottomk(2, rate({job="x"}[1m]))"#,
            r#"sort_desc(rate({job="x"}[1m]))"#,
            r#"avg(rate({job="x"}[1m])) / ignoring(a) avg(rate({job="y"}[1m]))"#,
            r#"sum by (a) (rate({job="x"}[1m])) > on(a) sum by (a) (rate({job="y"}[1m]))"#,
            r#"sum(rate({job="x"}[1m])) > bool 2"#,
            r#"quantile_over_time(0.99, {job="x"} | json | unwrap duration(latency) | __error__="" [5m]) by (path)"#,
            r#"sum_over_time({job="x"} | logfmt | unwrap bytes(size) [5m])"#,
            r#"rate_counter({job="x"} | logfmt | unwrap total [5m])"#,
            r#"rate({job="x"} | logfmt | unwrap n [5m])"#,
            r#"stddev(rate({job="x"}[1m])) and stdvar(rate({job="x"}[1m])) or count(rate({job="x"}[1m])) unless min(rate({job="x"}[1m]))"#,
            "2 ^ 3 ^ 2",
            // exactly as Grafana's log volume histogram sends it
            r#"sum by (level, detected_level) (count_over_time({job="x"} |= "x" | drop __error__[1m0s]))"#,
            r#"sum by (level, detected_level) (count_over_time({job="x"} | drop __error__[1h0m0s]))"#,
        ] {
            match parse(q) {
                Ok(Expr::Sample(_)) => {}
                other => panic!("{q}: {other:?}"),
            }
        }
        let Ok(Expr::Sample(SampleExpr::Literal(v))) = parse("2 ^ 3 ^ 2") else { panic!() };
        assert_eq!(v, 512.0, "^ is right-associative");
        let Ok(Expr::Sample(SampleExpr::Literal(v))) = parse("1 + 2 * 3 - 4 / 2") else { panic!() };
        assert_eq!(v, 5.0);
    }

    #[test]
    fn pipelines_parse() {
        for q in [
            r#"{job="x"} | json"#,
            r#"{job="x"} | json a="b.c", d="e[0]", f"#,
            r#"{job="x"} | logfmt --strict --keep-empty a, b="c""#,
            r#"{job="x"} | regexp "(?P<ip>\\S+) (?P<rest>.*)""#,
            r#"{job="x"} | pattern "<ip> - <_>""#,
            r#"{job="x"} | unpack"#,
            r#"{job="x"} | logfmt | status >= 500 and duration > 1.5s or size > 20MB"#,
            r#"{job="x"} | logfmt | (a="b" or c!~"d.*"), e=~"f" g<=3"#,
            r#"{job="x"} | line_format "{{.a}} {{ .b | ToUpper }}""#,
            r#"{job="x"} | label_format a="{{.b}}", c=d"#,
            r#"{job="x"} | drop a, b="c", __error__"#,
            r#"{job="x"} | keep a, b"#,
            r#"{job="x"} | decolorize"#,
            r#"{job="x"} | distinct a, b"#,
            r#"{job="x"} |= "a" or "b" != "c""#,
            r#"{job="x"} | json | __error__ != "JSONParserErr""#,
        ] {
            match parse(q) {
                Ok(Expr::Log(_)) => {}
                other => panic!("{q}: {other:?}"),
            }
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
        let alphabet: Vec<char> = "{}()[],=!~|\"`\\ abcé0123456789.#\n<>+-*/^%".chars().collect();
        let seeds = [
            r#"{job="x", a=~"b.*"} |= "err" != `d` |~ "(?i)t" !~ "u""#,
            r#"sum by (a) (rate({job="x"} | json | b > 2 [1m] offset 5m)) / on(a) vector(1)"#,
            r#"quantile_over_time(0.9, {a="b"} | logfmt | line_format "{{.a | lower}}" | unwrap duration(d) [5m])"#,
        ];
        for round in 0..20_000 {
            let q: String = if round % 2 == 0 {
                (0..next() % 40).map(|_| alphabet[(next() as usize) % alphabet.len()]).collect()
            } else {
                let mut c: Vec<char> = seeds[(next() as usize) % seeds.len()].chars().collect();
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

#[cfg(test)]
mod depth_tests {
    use super::*;

    /// On a thread with the server's 8 MiB stack, pathological nesting of
    /// every recursive construct is refused (or parsed) without overflowing
    /// the stack; dropping what was parsed must not overflow either.
    #[test]
    fn pathological_nesting_never_overflows() {
        let r = std::thread::Builder::new()
            .stack_size(8 << 20)
            .spawn(|| {
                let n = 100_000;
                let ok_sum = format!("{}count_over_time({{a=\"b\"}}[1m]){}", "sum(".repeat(150), ")".repeat(150));
                assert!(parse(&ok_sum).is_ok());
                // a flat list, not a tree: any length parses
                assert!(parse(&format!("{{a=\"b\"}} |= \"a\"{}", " or \"b\"".repeat(n))).is_ok());
                for q in [
                    format!("{}count_over_time({{a=\"b\"}}[1m]){}", "sum(".repeat(n), ")".repeat(n)),
                    format!("{}1{}", "(".repeat(n), ")".repeat(n)),
                    format!("{}vector(1)", "- ".repeat(n)),
                    format!("vector(1){}", " + vector(1)".repeat(n)),
                    format!("{{a=\"b\"}} | x=\"1\"{}", " or x=\"1\"".repeat(n)),
                    format!("{{a=\"b\"}} | {}x=\"1\"{}", "(".repeat(n), ")".repeat(n)),
                    format!("{{a=\"b\"}} | line_format \"{{{{ {}.a{} }}}}\"", "(".repeat(n), ")".repeat(n)),
                    format!("{{a=\"b\"}} | label_format x=\"{{{{ {}.a{} }}}}\"", "(".repeat(n), ")".repeat(n)),
                ] {
                    let r = parse(&q);
                    assert!(r.is_err(), "a query of {} bytes starting {:?} parsed", q.len(), &q[..40]);
                }
            })
            .unwrap()
            .join();
        assert!(r.is_ok());
    }
}
