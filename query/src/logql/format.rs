//! Canonical text of a parsed LogQL expression (`/loki/api/v1/format_query`).
//!
//! The output parses back to the same tree (a unit test checks the round
//! trip on many queries). It follows Loki's single-line `String()` forms
//! where they are unambiguous — `{a="b"} |= "x" | json`, `rate(…[5m])`,
//! `sum by (a)(…)`, durations like `1h30m` — and parenthesizes every binary
//! operation and every `or`/`and` of label filters. Loki additionally
//! breaks expressions longer than 100 characters over several lines; Cairn
//! always answers one line.

use std::fmt::{self, Write as _};

use cairn_wire::Matcher;

use super::ast::{
    Expr, FilterOp, Group, Grouping, JsonPathPart, LabelFmt, LineFilter, LogRange, LogSelector, NamedMatcher,
    SampleExpr, Stage, UnwrapConv, VecOp, VectorMatching,
};
use super::pipeline::{CmpOp, LabelFilter, NumKind};
pub use crate::go_quote;

/// A finite number as LogQL reads it back: Go's `FormatFloat(v, 'f', -1)`,
/// which is Rust's `Display` (never an exponent).
fn num(v: f64) -> String {
    format!("{v}")
}

fn duration(ns: i64) -> String {
    if ns % 1_000_000 == 0 { cairn_wire::time::format_duration_ms(ns / 1_000_000) } else { format!("{ns}ns") }
}

fn matcher(m: &Matcher) -> String {
    format!("{}{}{}", m.name, m.op, go_quote(&m.value))
}

fn matchers(ms: &[Matcher]) -> String {
    format!("{{{}}}", ms.iter().map(matcher).collect::<Vec<_>>().join(", "))
}

fn line_filter(f: &LineFilter) -> String {
    let op = match f.op {
        FilterOp::Contains => "|=",
        FilterOp::NotContains => "!=",
        FilterOp::Match => "|~",
        FilterOp::NotMatch => "!~",
        FilterOp::PatternMatch => "|>",
        FilterOp::PatternNotMatch => "!>",
        FilterOp::IpMatch => return format!("|= ip({})", go_quote(&f.patterns.join(""))),
        FilterOp::IpNotMatch => return format!("!= ip({})", go_quote(&f.patterns.join(""))),
    };
    format!("{op} {}", f.patterns.iter().map(|p| go_quote(p)).collect::<Vec<_>>().join(" or "))
}

fn label_filter(f: &LabelFilter, top: bool) -> String {
    match f {
        LabelFilter::And(a, b) => {
            let s = format!("{}, {}", label_filter(a, false), label_filter(b, false));
            if top { s } else { format!("({s})") }
        }
        LabelFilter::Or(a, b) => {
            let s = format!("{} or {}", label_filter(a, false), label_filter(b, false));
            if top { s } else { format!("({s})") }
        }
        LabelFilter::String(m) => matcher(m),
        LabelFilter::Ip { name, negate, matcher } => {
            format!("{name}{}ip({})", if *negate { "!=" } else { "=" }, go_quote(matcher.source()))
        }
        LabelFilter::Numeric { name, op, kind, value } => {
            let op = match op {
                CmpOp::Eq => "==",
                CmpOp::Neq => "!=",
                CmpOp::Gt => ">",
                CmpOp::Gte => ">=",
                CmpOp::Lt => "<",
                CmpOp::Lte => "<=",
            };
            let v = num(*value);
            match kind {
                NumKind::Number => format!("{name}{op}{v}"),
                NumKind::Duration => format!("{name}{op}{v}s"),
                NumKind::Bytes => format!("{name}{op}{v}B"),
            }
        }
    }
}

fn json_path(path: &[JsonPathPart]) -> String {
    let mut out = String::new();
    for (i, p) in path.iter().enumerate() {
        match p {
            JsonPathPart::Key(k) if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !k.is_empty() => {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(k);
            }
            JsonPathPart::Key(k) => {
                let _ = write!(out, "[{}]", go_quote(k));
            }
            JsonPathPart::Index(n) => {
                let _ = write!(out, "[{n}]");
            }
        }
    }
    out
}

fn named(items: &[NamedMatcher]) -> String {
    items
        .iter()
        .map(|it| match &it.matcher {
            None => it.name.clone(),
            Some(m) => matcher(m),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn stage(s: &Stage) -> String {
    match s {
        Stage::LineFilter(f) => line_filter(f),
        Stage::Json(params) if params.is_empty() => "| json".into(),
        Stage::Json(params) => format!(
            "| json {}",
            params.iter().map(|(l, p)| format!("{l}={}", go_quote(&json_path(p)))).collect::<Vec<_>>().join(", ")
        ),
        Stage::Logfmt { strict, keep_empty, params } => {
            let mut out = String::from("| logfmt");
            if *strict {
                out.push_str(" --strict");
            }
            if *keep_empty {
                out.push_str(" --keep-empty");
            }
            if !params.is_empty() {
                out.push(' ');
                out.push_str(
                    &params.iter().map(|(l, k)| format!("{l}={}", go_quote(k))).collect::<Vec<_>>().join(", "),
                );
            }
            out
        }
        Stage::Regexp(re) => format!("| regexp {}", go_quote(re.as_str())),
        Stage::Pattern(p) => format!("| pattern {}", go_quote(p.source())),
        Stage::Unpack => "| unpack".into(),
        Stage::LabelFilter(f) => format!("| {}", label_filter(f, true)),
        Stage::LineFormat(t) => format!("| line_format {}", go_quote(t.source())),
        Stage::LabelFormat(items) => format!(
            "| label_format {}",
            items
                .iter()
                .map(|it| match it {
                    LabelFmt::Rename { dst, src } => format!("{dst}={src}"),
                    LabelFmt::Template { dst, tmpl } => format!("{dst}={}", go_quote(tmpl.source())),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Stage::Drop(items) => format!("| drop {}", named(items)),
        Stage::Keep(items) => format!("| keep {}", named(items)),
        Stage::Decolorize => "| decolorize".into(),
        Stage::Distinct(names) => format!("| distinct {}", names.join(", ")),
    }
}

fn selector(sel: &LogSelector) -> String {
    let mut out = matchers(&sel.matchers);
    for s in &sel.pipeline {
        out.push(' ');
        out.push_str(&stage(s));
    }
    out
}

fn log_range(r: &LogRange) -> String {
    let mut out = selector(&r.selector);
    if let Some(u) = &r.unwrap {
        out.push_str(" | unwrap ");
        match u.conv {
            UnwrapConv::Float => out.push_str(&u.label),
            UnwrapConv::Duration => {
                let _ = write!(out, "duration({})", u.label);
            }
            UnwrapConv::Bytes => {
                let _ = write!(out, "bytes({})", u.label);
            }
        }
        for f in &u.post_filters {
            out.push_str(" | ");
            out.push_str(&label_filter(f, true));
        }
    }
    let _ = write!(out, "[{}]", duration(r.range));
    if r.offset != 0 {
        let _ = write!(out, " offset {}", duration(r.offset));
    }
    out
}

fn grouping(g: &Grouping) -> String {
    format!(" {} ({})", if g.without { "without" } else { "by" }, g.labels.join(", "))
}

fn vec_op(op: VecOp) -> &'static str {
    match op {
        VecOp::Sum => "sum",
        VecOp::Avg => "avg",
        VecOp::Min => "min",
        VecOp::Max => "max",
        VecOp::Count => "count",
        VecOp::Stddev => "stddev",
        VecOp::Stdvar => "stdvar",
        VecOp::Topk => "topk",
        VecOp::Bottomk => "bottomk",
        VecOp::Sort => "sort",
        VecOp::SortDesc => "sort_desc",
    }
}

fn matching(m: &VectorMatching) -> String {
    let mut out = format!(" {}({})", if m.on { "on" } else { "ignoring" }, m.labels.join(", "));
    match &m.group {
        None => {}
        Some(Group::Left(l)) => out.push_str(&format!(" group_left({})", l.join(", "))),
        Some(Group::Right(l)) => out.push_str(&format!(" group_right({})", l.join(", "))),
    }
    out
}

fn sample(e: &SampleExpr) -> String {
    match e {
        // Folded literals can be non-finite; LogQL has no literal for
        // them, so write an expression that folds back to the same value.
        SampleExpr::Literal(v) if v.is_nan() => "(0 / 0)".into(),
        SampleExpr::Literal(v) if v.is_infinite() => if *v > 0.0 { "(1 / 0)" } else { "(-1 / 0)" }.into(),
        SampleExpr::Literal(v) => num(*v),
        SampleExpr::VectorLit(v) => format!("vector({})", num(*v)),
        SampleExpr::Range { op, param, range, grouping: g } => {
            let p = param.map(|p| format!("{},", num(p))).unwrap_or_default();
            let g = g.as_ref().map(grouping).unwrap_or_default();
            format!("{}({p}{}){g}", op.name(), log_range(range))
        }
        SampleExpr::Vector { op, grouping: g, param, inner } => {
            let p = param.map(|p| format!("{},", num(p))).unwrap_or_default();
            let g = g.as_ref().map(grouping).unwrap_or_default();
            format!("{}{g}({p}{})", vec_op(*op), sample(inner))
        }
        SampleExpr::LabelReplace { inner, dst, replacement, src, regex_src, .. } => format!(
            "label_replace({},{},{},{},{})",
            sample(inner),
            go_quote(dst),
            go_quote(replacement),
            go_quote(src),
            go_quote(regex_src)
        ),
        SampleExpr::Binary { op, return_bool, matching: m, lhs, rhs } => {
            use super::ast::BinOp::*;
            let o = match op {
                Or => "or",
                And => "and",
                Unless => "unless",
                Eq => "==",
                Neq => "!=",
                Gt => ">",
                Gte => ">=",
                Lt => "<",
                Lte => "<=",
                Add => "+",
                Sub => "-",
                Mul => "*",
                Div => "/",
                Mod => "%",
                Pow => "^",
            };
            let b = if *return_bool { " bool" } else { "" };
            let m = m.as_ref().map(matching).unwrap_or_default();
            format!("({} {o}{b}{m} {})", sample(lhs), sample(rhs))
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Log(sel) => f.write_str(&selector(sel)),
            Expr::Sample(e) => f.write_str(&sample(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::logql::parse;

    #[test]
    fn round_trips() {
        for q in [
            r#"{foo=   "bar"}"#,
            r#"{job="x", env!="dev", a=~"b.+", c!~"d\n\x1b"} |= "a" or "b" != `c` |~ "d(e)" !~ "f""#,
            r#"{job="x"} | json | json a="b.c", d="e[0]", f="g[\"h i\"]" | logfmt --strict --keep-empty a, b="c""#,
            r#"{job="x"} | regexp "(?P<ip>\\S+)" | pattern "<a> - <_>" | unpack | decolorize | distinct a, b"#,
            r#"{job="x"} | logfmt | status >= 500 and duration > 1.5s or size > 20MB, (a="b" or c!="d") e=~"f""#,
            r#"{job="x"} | line_format "{{.a | ToUpper}} \"q\"" | label_format a="{{.b}}", c=d | drop a, b="c" | keep e"#,
            "vector(1)+vector(1)",
            "1 + 2 * 3",
            r#"sum by (level, detected_level) (count_over_time({job="x"} |= "x" | drop __error__ [1m]))"#,
            r#"topk(5, sum without (a) (rate({job="x"}[5m] offset 1h))) > bool on(a) vector(2)"#,
            r#"quantile_over_time(0.99, {job="x"} | json | unwrap duration(latency) | __error__="" [5m]) by (path)"#,
            r#"sum_over_time({job="x"} | logfmt | unwrap bytes(size) [90s]) / ignoring(b) avg(bytes_rate({a="b"}[1h30m]))"#,
            r#"count_over_time({job="x"}[1m]) and count_over_time({job="y"}[1m]) unless absent_over_time({z="w"}[1m])"#,
            r#"label_replace(rate({job="x"}[1m]), "dst", "$1-x", "job", "(.*)")"#,
            r#"{job="x"} |> "<_> level=error <_>" or "x <_>" !> "<_> debug""#,
            r#"sum by (a, b) (rate({x="y"}[1m])) / on(a) group_left(c) sum by (a, c) (rate({x="y"}[1m]))"#,
            r#"vector(1) + ignoring(a) group_right vector(2)"#,
            "0.0000001 * vector(0.0000002) > bool 1e21",
            r#"{job="x"} |= ip("10.0.0.0/8") != ip("10.1.0.1-10.1.0.9") | logfmt | addr = ip("::1") or src != ip("1.2.3.4")"#,
        ] {
            let first = parse(q).unwrap_or_else(|e| panic!("{q}: {e}")).to_string();
            let second = parse(&first).unwrap_or_else(|e| panic!("{q} -> {first}: {e}")).to_string();
            assert_eq!(first, second, "{q}");
        }
        assert_eq!(parse(r#"{foo=   "bar"}"#).unwrap().to_string(), r#"{foo="bar"}"#);
        assert_eq!(parse(r#"rate({a="b"}|="x"[5m])"#).unwrap().to_string(), r#"rate({a="b"} |= "x"[5m])"#);
        assert_eq!(parse(r#"sum(rate({a="b"}[5m])) by (c)"#).unwrap().to_string(), r#"sum by (c)(rate({a="b"}[5m]))"#);
    }

    /// Every query of the golden LogQL cases that parses formats to text
    /// that parses back to the same text.
    #[test]
    fn golden_queries_round_trip() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/golden/logql");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|x| x != "txt") {
                continue;
            }
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let Some(rest) = line.strip_prefix("## ") else { continue };
                let Some((kind, q)) = rest.split_once(' ') else { continue };
                if kind == "get" {
                    continue;
                }
                let Ok(e) = parse(q) else { continue };
                let first = e.to_string();
                let second = parse(&first).unwrap_or_else(|err| panic!("{q}\n-> {first}\n: {err}")).to_string();
                assert_eq!(first, second, "{q}");
                n += 1;
            }
        }
        assert!(n > 150, "only {n} golden queries parsed");
    }
}
