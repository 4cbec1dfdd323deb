//! LogQL syntax tree.
//!
//! The tree mirrors Loki's grammar (`pkg/logql/syntax`): a query is either a
//! log query ([`LogSelector`]: stream matchers and a pipeline of [`Stage`]s)
//! or a metric query ([`SampleExpr`]: range aggregations over log ranges,
//! vector aggregations, binary operators, literals). Everything here is
//! compiled (regexes, templates) so evaluation never fails on syntax.

use std::fmt;

use cairn_wire::Matcher;
use regex::Regex;

use super::pipeline::{IpMatcher, LabelFilter, Pattern, Template};

/// A parsed LogQL expression.
#[derive(Debug, Clone)]
pub enum Expr {
    /// A log query: a stream selector and its pipeline.
    Log(LogSelector),
    /// A metric query.
    Sample(SampleExpr),
}

/// `{matchers} | stages…`
#[derive(Debug, Clone)]
pub struct LogSelector {
    /// Stream matchers.
    pub matchers: Vec<Matcher>,
    /// Pipeline stages in order.
    pub pipeline: Vec<Stage>,
}

impl LogSelector {
    /// Substrings every line the pipeline keeps must contain in its original
    /// form: the patterns of single-pattern `|=` filters that come before
    /// any stage rewriting the line. Passed to the store's content index,
    /// which only prunes; the filters themselves still decide.
    pub fn required_substrings(&self) -> Vec<std::borrow::Cow<'_, [u8]>> {
        let mut out = Vec::new();
        for stage in &self.pipeline {
            match stage {
                Stage::LineFormat(_) | Stage::Decolorize => break,
                Stage::LineFilter(f) if f.op == FilterOp::Contains && f.patterns.len() == 1 => {
                    out.push(std::borrow::Cow::Borrowed(f.patterns[0].as_bytes()));
                }
                Stage::LineFilter(f) if f.op == FilterOp::Match && f.patterns.len() == 1 => {
                    out.extend(regex_literal(&f.patterns[0]).map(std::borrow::Cow::Owned));
                }
                _ => {}
            }
        }
        out
    }

    /// The line filters of the pipeline (all of them, in order).
    pub fn line_filters(&self) -> impl Iterator<Item = &LineFilter> {
        self.pipeline.iter().filter_map(|s| match s {
            Stage::LineFilter(f) => Some(f),
            _ => None,
        })
    }
}

/// The longest literal every match of `re` contains (case-sensitive bytes
/// of a top-level concatenation: `error: (\d+) timed out` gives
/// ` timed out`), if any; none for alternations, case-insensitive parts or
/// a regex that does not parse.
fn regex_literal(re: &str) -> Option<Vec<u8>> {
    use regex_syntax::hir::{Hir, HirKind};
    fn required(h: &Hir, out: &mut Vec<Vec<u8>>) {
        match h.kind() {
            HirKind::Literal(l) => out.push(l.0.to_vec()),
            HirKind::Capture(c) => required(&c.sub, out),
            HirKind::Repetition(r) if r.min >= 1 => required(&r.sub, out),
            HirKind::Concat(subs) => subs.iter().for_each(|s| required(s, out)),
            _ => {}
        }
    }
    let hir = regex_syntax::Parser::new().parse(re).ok()?;
    let mut lits = Vec::new();
    required(&hir, &mut lits);
    lits.into_iter().filter(|l| !l.is_empty()).max_by_key(Vec::len)
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
    /// `|>`: the line matches the pattern (`<_>` wildcards).
    PatternMatch,
    /// `!>`: the line does not match the pattern.
    PatternNotMatch,
    /// `|= ip("…")`: an address in the line is in the set.
    IpMatch,
    /// `!= ip("…")`: no address in the line is in the set.
    IpNotMatch,
}

impl fmt::Display for FilterOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FilterOp::Contains => "|=",
            FilterOp::NotContains => "!=",
            FilterOp::Match => "|~",
            FilterOp::NotMatch => "!~",
            FilterOp::PatternMatch => "|>",
            FilterOp::PatternNotMatch => "!>",
            FilterOp::IpMatch => "|= ip",
            FilterOp::IpNotMatch => "!= ip",
        })
    }
}

/// One line filter, possibly with `or` alternatives (`|= "a" or "b"`).
#[derive(Debug, Clone)]
pub struct LineFilter {
    /// Kind.
    pub op: FilterOp,
    /// Literal or regex source; more than one for `or` chains.
    pub patterns: Vec<String>,
    /// Compiled regexes for `|~` and `!~` (unanchored, as in Loki), one per pattern.
    pub res: Vec<Regex>,
    /// Compiled patterns for `|>` and `!>`, one per pattern.
    pub pats: Vec<Pattern>,
    /// Address sets for `ip(…)` filters.
    pub ips: Vec<IpMatcher>,
}

impl LineFilter {
    /// Does `line` pass this filter? For the positive kinds any alternative
    /// may match; for the negative kinds none may.
    pub fn keep(&self, line: &str) -> bool {
        match self.op {
            FilterOp::Contains => self.patterns.iter().any(|p| line.contains(p.as_str())),
            FilterOp::NotContains => !self.patterns.iter().any(|p| line.contains(p.as_str())),
            FilterOp::Match => self.res.iter().any(|r| r.is_match(line)),
            FilterOp::NotMatch => !self.res.iter().any(|r| r.is_match(line)),
            FilterOp::PatternMatch => self.pats.iter().any(|p| p.test(line)),
            FilterOp::PatternNotMatch => !self.pats.iter().any(|p| p.test(line)),
            FilterOp::IpMatch => self.ips.iter().any(|m| m.matches_line(line)),
            FilterOp::IpNotMatch => !self.ips.iter().any(|m| m.matches_line(line)),
        }
    }
}

/// A `drop`/`keep` item: a bare label name, or `name op "value"`.
#[derive(Debug, Clone)]
pub struct NamedMatcher {
    /// Label name.
    pub name: String,
    /// Only when the value matches.
    pub matcher: Option<Matcher>,
}

/// One `label_format` item.
#[derive(Debug, Clone)]
pub enum LabelFmt {
    /// `dst=src`: rename.
    Rename {
        /// New name.
        dst: String,
        /// Old name.
        src: String,
    },
    /// `dst="template"`.
    Template {
        /// Label to set.
        dst: String,
        /// Template producing the value.
        tmpl: Template,
    },
}

/// A pipeline stage.
#[derive(Debug, Clone)]
pub enum Stage {
    /// `|= "x"`, `!= "x"`, `|~ "re"`, `!~ "re"`.
    LineFilter(LineFilter),
    /// `| json` or `| json a="path", b`.
    Json(Vec<(String, Vec<JsonPathPart>)>),
    /// `| logfmt [--strict] [--keep-empty] [a="key", b]`.
    Logfmt {
        /// `--strict`: stop at the first malformed pair with an error.
        strict: bool,
        /// `--keep-empty`: keep standalone keys with an empty value.
        keep_empty: bool,
        /// Extraction parameters (label, key); empty means all keys.
        params: Vec<(String, String)>,
    },
    /// `| regexp "re"` with named groups.
    Regexp(Regex),
    /// `| pattern "<a> - <b>"`.
    Pattern(Pattern),
    /// `| unpack`.
    Unpack,
    /// `| label filter expression`.
    LabelFilter(LabelFilter),
    /// `| line_format "template"`.
    LineFormat(Template),
    /// `| label_format a="t", b=c`.
    LabelFormat(Vec<LabelFmt>),
    /// `| drop a, b="v"`.
    Drop(Vec<NamedMatcher>),
    /// `| keep a, b="v"`.
    Keep(Vec<NamedMatcher>),
    /// `| decolorize`.
    Decolorize,
    /// `| distinct a, b`.
    Distinct(Vec<String>),
}

/// A step of a JSON extraction path: `a.b[0]["c"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonPathPart {
    /// Object key.
    Key(String),
    /// Array index.
    Index(usize),
}

/// Conversion applied by `unwrap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnwrapConv {
    /// A plain float.
    Float,
    /// `duration(x)` / `duration_seconds(x)`: Go duration → seconds.
    Duration,
    /// `bytes(x)`: humanized bytes → bytes.
    Bytes,
}

/// `| unwrap [conv(]label[)] [| post-filters]`.
#[derive(Debug, Clone)]
pub struct Unwrap {
    /// Label whose value becomes the sample value.
    pub label: String,
    /// Conversion.
    pub conv: UnwrapConv,
    /// Label filters after the unwrap (e.g. `| __error__=""`).
    pub post_filters: Vec<LabelFilter>,
}

/// `{…} | pipeline [| unwrap …] [range] [offset d]`.
#[derive(Debug, Clone)]
pub struct LogRange {
    /// Selector and pipeline.
    pub selector: LogSelector,
    /// Range in ns.
    pub range: i64,
    /// Offset in ns.
    pub offset: i64,
    /// Unwrapped label, for the `*_over_time` functions over values.
    pub unwrap: Option<Unwrap>,
}

/// Range aggregation functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOp {
    /// `count_over_time`
    Count,
    /// `rate`
    Rate,
    /// `rate_counter`
    RateCounter,
    /// `bytes_over_time`
    Bytes,
    /// `bytes_rate`
    BytesRate,
    /// `absent_over_time`
    Absent,
    /// `sum_over_time`
    Sum,
    /// `avg_over_time`
    Avg,
    /// `min_over_time`
    Min,
    /// `max_over_time`
    Max,
    /// `stddev_over_time`
    Stddev,
    /// `stdvar_over_time`
    Stdvar,
    /// `quantile_over_time`
    Quantile,
    /// `first_over_time`
    First,
    /// `last_over_time`
    Last,
}

impl RangeOp {
    /// From a function name.
    pub fn from_name(s: &str) -> Option<RangeOp> {
        Some(match s {
            "count_over_time" => RangeOp::Count,
            "rate" => RangeOp::Rate,
            "rate_counter" => RangeOp::RateCounter,
            "bytes_over_time" => RangeOp::Bytes,
            "bytes_rate" => RangeOp::BytesRate,
            "absent_over_time" => RangeOp::Absent,
            "sum_over_time" => RangeOp::Sum,
            "avg_over_time" => RangeOp::Avg,
            "min_over_time" => RangeOp::Min,
            "max_over_time" => RangeOp::Max,
            "stddev_over_time" => RangeOp::Stddev,
            "stdvar_over_time" => RangeOp::Stdvar,
            "quantile_over_time" => RangeOp::Quantile,
            "first_over_time" => RangeOp::First,
            "last_over_time" => RangeOp::Last,
            _ => return None,
        })
    }

    /// The function name.
    pub fn name(self) -> &'static str {
        match self {
            RangeOp::Count => "count_over_time",
            RangeOp::Rate => "rate",
            RangeOp::RateCounter => "rate_counter",
            RangeOp::Bytes => "bytes_over_time",
            RangeOp::BytesRate => "bytes_rate",
            RangeOp::Absent => "absent_over_time",
            RangeOp::Sum => "sum_over_time",
            RangeOp::Avg => "avg_over_time",
            RangeOp::Min => "min_over_time",
            RangeOp::Max => "max_over_time",
            RangeOp::Stddev => "stddev_over_time",
            RangeOp::Stdvar => "stdvar_over_time",
            RangeOp::Quantile => "quantile_over_time",
            RangeOp::First => "first_over_time",
            RangeOp::Last => "last_over_time",
        }
    }

    /// True for the functions that need `| unwrap`.
    pub fn needs_unwrap(self) -> bool {
        matches!(
            self,
            RangeOp::RateCounter
                | RangeOp::Sum
                | RangeOp::Avg
                | RangeOp::Min
                | RangeOp::Max
                | RangeOp::Stddev
                | RangeOp::Stdvar
                | RangeOp::Quantile
                | RangeOp::First
                | RangeOp::Last
        )
    }
}

/// Vector aggregation operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VecOp {
    /// `sum`
    Sum,
    /// `avg`
    Avg,
    /// `min`
    Min,
    /// `max`
    Max,
    /// `count`
    Count,
    /// `stddev`
    Stddev,
    /// `stdvar`
    Stdvar,
    /// `topk`
    Topk,
    /// `bottomk`
    Bottomk,
    /// `sort`
    Sort,
    /// `sort_desc`
    SortDesc,
}

impl VecOp {
    /// From an operator name.
    pub fn from_name(s: &str) -> Option<VecOp> {
        Some(match s {
            "sum" => VecOp::Sum,
            "avg" => VecOp::Avg,
            "min" => VecOp::Min,
            "max" => VecOp::Max,
            "count" => VecOp::Count,
            "stddev" => VecOp::Stddev,
            "stdvar" => VecOp::Stdvar,
            "topk" => VecOp::Topk,
            "bottomk" => VecOp::Bottomk,
            "sort" => VecOp::Sort,
            "sort_desc" => VecOp::SortDesc,
            _ => return None,
        })
    }
}

/// `by (…)` or `without (…)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouping {
    /// `without` rather than `by`.
    pub without: bool,
    /// Label names.
    pub labels: Vec<String>,
}

/// Binary operators, by precedence group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `or`
    Or,
    /// `and`
    And,
    /// `unless`
    Unless,
    /// `==`
    Eq,
    /// `!=`
    Neq,
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// `<`
    Lt,
    /// `<=`
    Lte,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Mod,
    /// `^`
    Pow,
}

impl BinOp {
    /// Binding strength; higher binds tighter.
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And | BinOp::Unless => 2,
            BinOp::Eq | BinOp::Neq | BinOp::Gt | BinOp::Gte | BinOp::Lt | BinOp::Lte => 3,
            BinOp::Add | BinOp::Sub => 4,
            BinOp::Mul | BinOp::Div | BinOp::Mod => 5,
            BinOp::Pow => 6,
        }
    }

    /// True for comparison operators.
    pub fn is_comparison(self) -> bool {
        matches!(self, BinOp::Eq | BinOp::Neq | BinOp::Gt | BinOp::Gte | BinOp::Lt | BinOp::Lte)
    }

    /// True for `and`, `or`, `unless`.
    pub fn is_set(self) -> bool {
        matches!(self, BinOp::Or | BinOp::And | BinOp::Unless)
    }
}

/// `on(…)` / `ignoring(…)` for vector–vector operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorMatching {
    /// `on` rather than `ignoring`.
    pub on: bool,
    /// Label names.
    pub labels: Vec<String>,
    /// `group_left`/`group_right` (many-to-one / one-to-many).
    pub group: Option<Group>,
}

/// Many-to-one or one-to-many matching, with the labels to copy from the
/// "one" side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Group {
    /// `group_left(…)`: many on the left.
    Left(Vec<String>),
    /// `group_right(…)`: many on the right.
    Right(Vec<String>),
}

/// A metric expression.
#[derive(Debug, Clone)]
pub enum SampleExpr {
    /// `op(log range)`, e.g. `rate({a="b"}[1m])`.
    Range {
        /// Function.
        op: RangeOp,
        /// `quantile_over_time`'s φ.
        param: Option<f64>,
        /// What is aggregated.
        range: LogRange,
        /// Optional grouping (allowed for unwrapped ranges).
        grouping: Option<Grouping>,
    },
    /// `op [by (…)] ([k,] expr)`.
    Vector {
        /// Operator.
        op: VecOp,
        /// Grouping.
        grouping: Option<Grouping>,
        /// `topk`/`bottomk`'s k.
        param: Option<f64>,
        /// Operand.
        inner: Box<SampleExpr>,
    },
    /// `lhs op [bool] [on|ignoring (…)] rhs`.
    Binary {
        /// Operator.
        op: BinOp,
        /// Comparison returns 0/1 instead of filtering.
        return_bool: bool,
        /// Label matching for vector–vector operations.
        matching: Option<VectorMatching>,
        /// Left operand.
        lhs: Box<SampleExpr>,
        /// Right operand.
        rhs: Box<SampleExpr>,
    },
    /// `label_replace(inner, "dst", "replacement", "src", "regex")`.
    LabelReplace {
        /// Operand.
        inner: Box<SampleExpr>,
        /// Label to write.
        dst: String,
        /// Replacement with `$1` / `${name}` references.
        replacement: String,
        /// Label to read.
        src: String,
        /// The regex as written (matched fully anchored).
        regex_src: String,
        /// `^(?s:regex)$`, compiled.
        regex: Regex,
    },
    /// A number.
    Literal(f64),
    /// `vector(n)`.
    VectorLit(f64),
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

#[cfg(test)]
mod tests {
    use crate::logql::{Expr, parse};

    fn needles(q: &str) -> Vec<String> {
        let Ok(Expr::Log(sel)) = parse(q) else { panic!("{q} is not a log query") };
        sel.required_substrings().into_iter().map(|b| String::from_utf8_lossy(&b).into_owned()).collect()
    }

    /// `|~` contributes the longest literal every match must contain;
    /// `!~`, alternations and case-insensitive regexes contribute nothing.
    #[test]
    fn regex_filters_give_their_required_literal() {
        assert_eq!(needles(r#"{a="b"} |~ "error: (\\d+) timed out""#), [" timed out"]);
        assert_eq!(needles(r#"{a="b"} |~ "ZQX9rare(TOKEN)+""#), ["ZQX9rare"]);
        assert_eq!(needles(r#"{a="b"} |~ "(?i)exception""#), Vec::<String>::new());
        assert_eq!(needles(r#"{a="b"} |~ "foo|bar""#), Vec::<String>::new());
        assert_eq!(needles(r#"{a="b"} |~ "(foo)?bar""#), ["bar"]);
        assert_eq!(needles(r#"{a="b"} |~ "x*""#), Vec::<String>::new());
        assert_eq!(needles(r#"{a="b"} !~ "foo""#), Vec::<String>::new());
        assert_eq!(needles(r#"{a="b"} |~ "foo" or "bar""#), Vec::<String>::new());
        assert_eq!(needles(r#"{a="b"} |~ "é+x""#), ["é"]);
    }

    #[test]
    fn required_substrings_stop_at_line_rewrites() {
        assert_eq!(needles(r#"{a="b"} |= "x" != "y" |~ "z" |= "w""#), ["x", "z", "w"]);
        assert_eq!(needles(r#"{a="b"} |= "x" or "y""#), Vec::<String>::new(), "alternatives are not required");
        assert_eq!(needles(r#"{a="b"} | json | line_format "{{.a}}" |= "x""#), Vec::<String>::new());
        assert_eq!(needles(r#"{a="b"} |= "x" | logfmt |= "y" | decolorize |= "z""#), ["x", "y"]);
    }
}
