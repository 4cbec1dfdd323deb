//! Pipeline execution: what happens to one log entry after its stream was
//! selected.
//!
//! Each entry gets a [`LabelsBuilder`] holding its stream labels, its
//! structured metadata and whatever parsers extract, each label tagged with
//! its category (Loki's `categorize-labels` response needs them apart).
//! Stages run in order and may rewrite the line, add or remove labels, or
//! drop the entry. Semantics follow Loki's `pkg/logql/log`:
//! - a parsed label whose name is already a stream label is stored as
//!   `<name>_extracted`; parsed names are sanitized to `[a-zA-Z0-9_]`;
//! - a parser or conversion failure sets `__error__` (`JSONParserErr`,
//!   `LogfmtParserErr`, `LabelFilterErr`, `SampleExtractionErr`, …) and
//!   `__error_details__`; later label filters let erroring entries through
//!   except filters on `__error__` itself;
//! - numeric, duration and bytes label filters drop entries without the label.
//!
//! Templates (`line_format`, `label_format`) implement the part of Go's
//! `text/template` that LogQL queries use in practice: `{{ .field }}`,
//! pipelines with `|`, string and number literals, and the functions listed
//! in [`Template`]'s documentation. Control structures (`if`, `range`, …)
//! are refused at parse time by name.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use cairn_wire::{Labels, MatchOp, Matcher};
use regex::Regex;

use super::ast::{JsonPathPart, LabelFmt, NamedMatcher, Stage};

/// Where a label came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// Stream label.
    Stream,
    /// Structured metadata of the entry.
    Metadata,
    /// Extracted by a parser or set by `label_format`.
    Parsed,
}

/// The label name Loki uses for pipeline errors.
pub const ERROR_LABEL: &str = "__error__";
/// The label name Loki uses for pipeline error details.
pub const ERROR_DETAILS_LABEL: &str = "__error_details__";

/// The labels of one entry while it runs through the pipeline.
#[derive(Debug, Clone, Default)]
pub struct LabelsBuilder {
    labels: Vec<(String, String, Category)>,
    err: Option<String>,
    err_details: Option<String>,
}

impl LabelsBuilder {
    /// Starts from stream labels and an entry's structured metadata.
    pub fn new<'m>(stream: &Labels, metadata: impl IntoIterator<Item = (&'m str, &'m str)>) -> Self {
        let mut labels: Vec<(String, String, Category)> =
            stream.iter().map(|l| (l.name.clone(), l.value.clone(), Category::Stream)).collect();
        for (k, v) in metadata {
            let k = sanitize_label_name(k);
            if let Some(e) = labels.iter_mut().find(|e| e.0 == k) {
                e.1 = v.to_string();
                e.2 = Category::Metadata;
            } else {
                labels.push((k, v.to_string(), Category::Metadata));
            }
        }
        LabelsBuilder { labels, err: None, err_details: None }
    }

    /// The value of `name` (error labels included), if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        match name {
            ERROR_LABEL => self.err.as_deref(),
            ERROR_DETAILS_LABEL => self.err_details.as_deref(),
            _ => self.labels.iter().find(|e| e.0 == name).map(|e| e.1.as_str()),
        }
    }

    fn is_stream_label(&self, name: &str) -> bool {
        self.labels.iter().any(|e| e.0 == name && e.2 == Category::Stream)
    }

    /// Whether a parsed label `name` would be one of `required` (after the
    /// `_extracted` renaming); everything is wanted without a list.
    pub fn wants(&self, name: &str, required: Option<&[String]>) -> bool {
        let Some(r) = required else { return true };
        if self.is_stream_label(name) {
            r.iter().any(|x| x.strip_suffix("_extracted") == Some(name))
        } else {
            r.iter().any(|x| x == name)
        }
    }

    /// Sets a parsed label, renaming it `<name>_extracted` when it clashes
    /// with a stream label.
    pub fn set_parsed(&mut self, name: &str, value: String) {
        let name = if self.is_stream_label(name) { format!("{name}_extracted") } else { name.to_string() };
        self.set(name, value, Category::Parsed);
    }

    /// Sets `name` (any category), replacing an existing value.
    pub fn set(&mut self, name: String, value: String, cat: Category) {
        match name.as_str() {
            ERROR_LABEL => self.err = Some(value),
            ERROR_DETAILS_LABEL => self.err_details = Some(value),
            _ => {
                if let Some(e) = self.labels.iter_mut().find(|e| e.0 == name) {
                    e.1 = value;
                    e.2 = cat;
                } else {
                    self.labels.push((name, value, cat));
                }
            }
        }
    }

    /// Removes `name`.
    pub fn del(&mut self, name: &str) {
        match name {
            ERROR_LABEL => self.err = None,
            ERROR_DETAILS_LABEL => self.err_details = None,
            _ => self.labels.retain(|e| e.0 != name),
        }
    }

    /// Records an error (the first one wins, as in Loki).
    pub fn set_err(&mut self, err: &str, details: impl Into<String>) {
        if self.err.is_none() {
            self.err = Some(err.to_string());
            let d = details.into();
            if !d.is_empty() {
                self.err_details = Some(d);
            }
        }
    }

    /// True when an error is recorded.
    pub fn has_err(&self) -> bool {
        self.err.is_some()
    }

    /// All labels including error labels, as a [`Labels`] (empty values
    /// dropped).
    pub fn labels(&self) -> Labels {
        self.labels_where(|_| true)
    }

    /// Labels of some categories (error labels count as parsed).
    pub fn labels_where(&self, keep: impl Fn(Category) -> bool) -> Labels {
        let mut pairs: Vec<(&str, &str)> =
            self.labels.iter().filter(|e| keep(e.2)).map(|e| (e.0.as_str(), e.1.as_str())).collect();
        if keep(Category::Parsed) {
            if let Some(e) = &self.err {
                pairs.push((ERROR_LABEL, e));
            }
            if let Some(d) = &self.err_details {
                pairs.push((ERROR_DETAILS_LABEL, d));
            }
        }
        // Names are valid by construction (sanitized); fall back to dropping
        // anything invalid rather than failing the query.
        Labels::from_pairs(pairs.iter().copied().filter(|(n, _)| cairn_wire::labels::is_valid_label_name(n)))
            .unwrap_or_default()
    }

    /// (name, value) pairs of one category, sorted by name, empty values dropped.
    pub fn pairs_of(&self, cat: Category) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> =
            self.labels.iter().filter(|e| e.2 == cat && !e.1.is_empty()).map(|e| (e.0.clone(), e.1.clone())).collect();
        if cat == Category::Parsed {
            if let Some(e) = &self.err {
                v.push((ERROR_LABEL.into(), e.clone()));
            }
            if let Some(d) = &self.err_details {
                v.push((ERROR_DETAILS_LABEL.into(), d.clone()));
            }
        }
        v.sort();
        v
    }

    fn names(&self) -> Vec<String> {
        self.labels.iter().map(|e| e.0.clone()).collect()
    }
}

/// Replaces characters not allowed in label names with `_` (and prefixes a
/// leading digit with `_`), as Loki's parsers do.
pub fn sanitize_label_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit()) {
            out.push(c);
        } else if i == 0 && c.is_ascii_digit() {
            out.push('_');
            out.push(c);
        } else {
            out.push('_');
        }
    }
    out
}

/// Comparison operator of numeric label filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==` or `=`
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
}

impl CmpOp {
    fn apply(self, a: f64, b: f64) -> bool {
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Neq => a != b,
            CmpOp::Gt => a > b,
            CmpOp::Gte => a >= b,
            CmpOp::Lt => a < b,
            CmpOp::Lte => a <= b,
        }
    }
}

/// How the value of a numeric label filter is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumKind {
    /// A float.
    Number,
    /// A Go duration (`1.5s`, `250ms`), compared in seconds.
    Duration,
    /// Humanized bytes (`20MB`, `1KiB`).
    Bytes,
}

/// A label filter expression.
#[derive(Debug, Clone)]
pub enum LabelFilter {
    /// Both must pass.
    And(Box<LabelFilter>, Box<LabelFilter>),
    /// Either passes.
    Or(Box<LabelFilter>, Box<LabelFilter>),
    /// `name op "string"`.
    String(Matcher),
    /// `name = ip("…")` or `name != ip("…")`.
    Ip {
        /// Label name.
        name: String,
        /// `!=`.
        negate: bool,
        /// The address set.
        matcher: IpMatcher,
    },
    /// `name op number|duration|bytes`.
    Numeric {
        /// Label name.
        name: String,
        /// Comparison.
        op: CmpOp,
        /// Kind of value.
        kind: NumKind,
        /// Right-hand value (seconds for durations).
        value: f64,
    },
}

impl LabelFilter {
    /// Appends the label names the filter reads.
    pub fn names<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            LabelFilter::And(a, b) | LabelFilter::Or(a, b) => {
                a.names(out);
                b.names(out);
            }
            LabelFilter::String(m) => out.push(&m.name),
            LabelFilter::Ip { name, .. } | LabelFilter::Numeric { name, .. } => out.push(name),
        }
    }

    /// Runs the filter; may set an error label on conversion failures.
    pub fn process(&self, lbs: &mut LabelsBuilder) -> bool {
        match self {
            LabelFilter::And(a, b) => a.process(lbs) && b.process(lbs),
            LabelFilter::Or(a, b) => {
                let l = a.process(lbs);
                let r = b.process(lbs);
                l || r
            }
            LabelFilter::String(m) => {
                if m.name == ERROR_LABEL || m.name == ERROR_DETAILS_LABEL {
                    return m.matches(lbs.get(&m.name).unwrap_or(""));
                }
                if lbs.has_err() {
                    return true;
                }
                m.matches(lbs.get(&m.name).unwrap_or(""))
            }
            LabelFilter::Ip { name, negate, matcher } => {
                if lbs.has_err() {
                    return true;
                }
                matcher.matches_str(lbs.get(name).unwrap_or("")) != *negate
            }
            LabelFilter::Numeric { name, op, kind, value } => {
                if lbs.has_err() {
                    return true;
                }
                let Some(v) = lbs.get(name) else {
                    return false;
                };
                let parsed = match kind {
                    NumKind::Number => {
                        v.trim().parse::<f64>().map_err(|e| format!("strconv.ParseFloat: parsing {v:?}: {e}"))
                    }
                    NumKind::Duration => parse_go_duration(v).ok_or_else(|| format!("time: invalid duration {v:?}")),
                    NumKind::Bytes => parse_bytes(v).ok_or_else(|| format!("invalid bytes value {v:?}")),
                };
                match parsed {
                    Ok(x) => op.apply(x, *value),
                    Err(details) => {
                        lbs.set_err("LabelFilterErr", details);
                        true
                    }
                }
            }
        }
    }
}

/// Parses a Go duration (`1h2m3.5s`, `250ms`, `10us`, `-1s`) into seconds.
pub fn parse_go_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if n == 0 {
            return None;
        }
        let num: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let mult = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[u..];
        total += num * mult;
    }
    Some(if neg { -total } else { total })
}

/// Parses humanized bytes (`42`, `20MB`, `1.5 KiB`, `3k`) as go-humanize's
/// `ParseBytes` does: SI units are powers of 1000, IEC units of 1024.
pub fn parse_bytes(s: &str) -> Option<f64> {
    let s = s.trim();
    let n = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    if n == 0 {
        return None;
    }
    let num: f64 = s[..n].parse().ok()?;
    let unit = s[n..].trim().to_ascii_lowercase();
    let mult: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "p" | "pb" => 1e15,
        "e" | "eb" => 1e18,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024f64.powi(4),
        "pi" | "pib" => 1024f64.powi(5),
        "ei" | "eib" => 1024f64.powi(6),
        _ => return None,
    };
    Some(num * mult)
}

/// An `ip("…")` matcher: a single address, a CIDR block or an inclusive
/// range `a-b`, IPv4 or IPv6.
#[derive(Debug, Clone)]
pub struct IpMatcher {
    src: String,
    lo: std::net::IpAddr,
    hi: std::net::IpAddr,
}

fn ip_bits(ip: std::net::IpAddr) -> (bool, u128) {
    match ip {
        std::net::IpAddr::V4(a) => (true, u32::from(a) as u128),
        std::net::IpAddr::V6(a) => (false, u128::from(a)),
    }
}

impl IpMatcher {
    /// Parses `192.168.0.1`, `10.0.0.0/8`, `10.0.0.1-10.0.0.9`, or IPv6 forms.
    pub fn new(src: &str) -> Result<IpMatcher, String> {
        let bad = || format!("invalid ip() argument {src:?}: expected an address, a CIDR block or a range a-b");
        let s = src.trim();
        let (lo, hi) = if let Some((a, b)) = s.split_once('-') {
            (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?)
        } else if let Some((a, n)) = s.split_once('/') {
            let base: std::net::IpAddr = a.trim().parse().map_err(|_| bad())?;
            let n: u32 = n.trim().parse().map_err(|_| bad())?;
            let (v4, bits) = ip_bits(base);
            let width = if v4 { 32 } else { 128 };
            if n > width {
                return Err(bad());
            }
            let host = if n == width { 0 } else { (u128::MAX >> (128 - width)) >> n };
            let lo = bits & !host;
            let hi = lo | host;
            let mk = |x: u128| -> std::net::IpAddr {
                if v4 { std::net::Ipv4Addr::from(x as u32).into() } else { std::net::Ipv6Addr::from(x).into() }
            };
            (mk(lo), mk(hi))
        } else {
            let a: std::net::IpAddr = s.parse().map_err(|_| bad())?;
            (a, a)
        };
        if ip_bits(lo).0 != ip_bits(hi).0 || ip_bits(lo).1 > ip_bits(hi).1 {
            return Err(bad());
        }
        Ok(IpMatcher { src: src.to_string(), lo, hi })
    }

    /// The argument as written.
    pub fn source(&self) -> &str {
        &self.src
    }

    /// Is `ip` inside?
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let (v4, x) = ip_bits(ip);
        let (lv4, lo) = ip_bits(self.lo);
        v4 == lv4 && lo <= x && x <= ip_bits(self.hi).1
    }

    /// Does the text parse as an address inside?
    pub fn matches_str(&self, s: &str) -> bool {
        s.trim().parse().is_ok_and(|ip| self.contains(ip))
    }

    /// Does any address-looking token of `line` fall inside?
    pub fn matches_line(&self, line: &str) -> bool {
        line.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
            .filter(|t| t.contains('.') || t.contains(':'))
            .any(|t| self.matches_str(t) || self.matches_str(t.trim_matches(|c| c == '.' || c == ':')))
    }
}

/// A compiled `pattern` expression: literals and `<name>` captures.
#[derive(Debug, Clone)]
pub struct Pattern {
    src: String,
    parts: Vec<PatternPart>,
}

#[derive(Debug, Clone)]
enum PatternPart {
    Lit(String),
    /// `None` for `<_>`.
    Cap(Option<String>),
}

impl Pattern {
    /// Compiles a pattern for the `pattern` parser: at least one named
    /// capture, no two consecutive captures, no duplicate names.
    pub fn new(src: &str) -> Result<Pattern, String> {
        let p = Self::new_filter(src)?;
        if !p.parts.iter().any(|x| matches!(x, PatternPart::Cap(Some(_)))) {
            return Err("at least one capture is required".into());
        }
        Ok(p)
    }

    /// Compiles a pattern for the `|>` / `!>` line filters (no named
    /// capture needed).
    pub fn new_filter(src: &str) -> Result<Pattern, String> {
        let mut parts = Vec::new();
        let mut rest = src;
        let mut lit = String::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('<')
                && let Some(end) = after.find('>')
            {
                let name = &after[..end];
                if name == "_" || cairn_wire::labels::is_valid_label_name(name) {
                    if !lit.is_empty() {
                        parts.push(PatternPart::Lit(std::mem::take(&mut lit)));
                    }
                    if matches!(parts.last(), Some(PatternPart::Cap(_))) {
                        return Err("found consecutive capture: pattern captures must be separated by a literal".into());
                    }
                    parts.push(PatternPart::Cap(if name == "_" { None } else { Some(name.to_string()) }));
                    rest = &after[end + 1..];
                    continue;
                }
            }
            let c = rest.chars().next().unwrap_or(' ');
            lit.push(c);
            rest = &rest[c.len_utf8()..];
        }
        if !lit.is_empty() {
            parts.push(PatternPart::Lit(lit));
        }
        let names: Vec<&String> =
            parts.iter().filter_map(|p| if let PatternPart::Cap(Some(n)) = p { Some(n) } else { None }).collect();
        let uniq: HashSet<&&String> = names.iter().collect();
        if uniq.len() != names.len() {
            return Err("duplicate capture name".into());
        }
        Ok(Pattern { src: src.to_string(), parts })
    }

    /// The pattern as written.
    pub fn source(&self) -> &str {
        &self.src
    }

    /// Does `line` match, as Loki's pattern line filter tests it: each
    /// literal found after the previous one, no empty capture before a
    /// literal; a pattern ending in a literal must consume the whole line,
    /// one ending in a capture must leave something for it.
    pub fn test(&self, line: &str) -> bool {
        if line.is_empty() || self.parts.is_empty() {
            return line.is_empty() && self.parts.is_empty();
        }
        let mut off = 0;
        for (i, p) in self.parts.iter().enumerate() {
            let PatternPart::Lit(lit) = p else { continue };
            let Some(j) = line[off..].find(lit.as_str()) else {
                return false;
            };
            if i != 0 && j == 0 {
                return false;
            }
            off += j + lit.len();
        }
        let ends_in_capture = matches!(self.parts.last(), Some(PatternPart::Cap(_)));
        ends_in_capture == (off != line.len())
    }

    /// Captures of `line`, (name, value), as Loki's pattern matcher finds them.
    pub fn matches<'a>(&'a self, line: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut out = Vec::new();
        if line.is_empty() {
            return out;
        }
        let mut input = line;
        let mut parts = &self.parts[..];
        if let Some(PatternPart::Lit(l)) = parts.first() {
            if !input.starts_with(l.as_str()) {
                return out;
            }
            input = &input[l.len()..];
            parts = &parts[1..];
        }
        while let Some(PatternPart::Cap(name)) = parts.first() {
            let lit = match parts.get(1) {
                Some(PatternPart::Lit(l)) => l,
                _ => {
                    if let Some(n) = name {
                        out.push((n.as_str(), input));
                    }
                    return out;
                }
            };
            parts = &parts[2..];
            match input.find(lit.as_str()) {
                None => {
                    if let Some(n) = name {
                        out.push((n.as_str(), input));
                    }
                    return out;
                }
                Some(i) => {
                    if let Some(n) = name {
                        out.push((n.as_str(), &input[..i]));
                    }
                    input = &input[i + lit.len()..];
                }
            }
        }
        out
    }
}

/// A compiled Go-style template.
///
/// Supported: literal text; actions `{{ pipeline }}` (with `{{-`/`-}}` trim
/// markers) where a pipeline is commands joined by `|`, the previous result
/// passed as the last argument; arguments `.label`, `"string"`, `` `raw` ``,
/// numbers, and nested `(…)`. Functions: `__line__`, `__timestamp__` (in
/// the `2006-01-02 15:04:05 +0000 UTC` form Go prints), `ToLower`,
/// `ToUpper`, `lower`, `upper`, `title`, `Title`,
/// `TrimSpace`, `trimSpace`, `trim`, `Trim`, `TrimLeft`, `TrimRight`,
/// `TrimPrefix`, `TrimSuffix`, `trimPrefix`, `trimSuffix`, `trimAll`,
/// `Replace`, `replace`, `default`, `contains`, `hasPrefix`, `hasSuffix`,
/// `repeat`, `trunc`, `substr`, `regexReplaceAll`, `regexReplaceAllLiteral`,
/// `printf` (verbs `%s %v %d %q %f` and `%%`; labels are strings, so `%d`
/// of a label prints Go's `%!d(string=…)`), `len`, `count`, `abs`,
/// `add`, `sub`, `mul`, `div`, `mod`, `alignLeft`, `alignRight`.
#[derive(Debug, Clone)]
pub struct Template {
    src: String,
    nodes: Vec<TNode>,
    /// `regexReplaceAll` patterns compiled so far (at most
    /// [`TEMPLATE_REGEX_CACHE`]), so a pattern is not compiled per line.
    regexes: std::sync::Arc<std::sync::Mutex<HashMap<String, Regex>>>,
}

/// Compiled `regexReplaceAll` patterns one template keeps.
const TEMPLATE_REGEX_CACHE: usize = 16;

#[derive(Debug, Clone)]
enum TNode {
    Text(String),
    Pipe(Vec<TCmd>),
}

#[derive(Debug, Clone)]
struct TCmd {
    /// Function name, or `None` when the command is a single operand.
    func: Option<String>,
    args: Vec<TArg>,
}

#[derive(Debug, Clone)]
enum TArg {
    Field(String),
    Str(String),
    Num(f64),
    Sub(Vec<TCmd>),
    Dot,
}

/// Largest string a template function may build.
const MAX_TEMPLATE_OUTPUT: usize = 1 << 20;

const TEMPLATE_FUNCS: &[&str] = &[
    "__line__",
    "__timestamp__",
    "ToLower",
    "ToUpper",
    "lower",
    "upper",
    "title",
    "Title",
    "TrimSpace",
    "trimSpace",
    "trim",
    "Trim",
    "TrimLeft",
    "TrimRight",
    "TrimPrefix",
    "TrimSuffix",
    "trimPrefix",
    "trimSuffix",
    "trimAll",
    "Replace",
    "replace",
    "default",
    "contains",
    "hasPrefix",
    "hasSuffix",
    "repeat",
    "trunc",
    "substr",
    "regexReplaceAll",
    "regexReplaceAllLiteral",
    "printf",
    "len",
    "count",
    "abs",
    "add",
    "sub",
    "mul",
    "div",
    "mod",
    "alignLeft",
    "alignRight",
];

impl Template {
    /// Compiles `src`; unsupported actions and functions are refused by name.
    pub fn new(src: &str) -> Result<Template, String> {
        let mut nodes = Vec::new();
        let mut rest = src;
        let mut trim_next = false;
        while !rest.is_empty() {
            match rest.find("{{") {
                None => {
                    let t = if trim_next { rest.trim_start() } else { rest };
                    nodes.push(TNode::Text(t.to_string()));
                    break;
                }
                Some(i) => {
                    let mut text = &rest[..i];
                    if trim_next {
                        text = text.trim_start();
                    }
                    let mut inner_start = i + 2;
                    if rest[inner_start..].starts_with("- ") {
                        text = text.trim_end();
                        inner_start += 1;
                    }
                    if !text.is_empty() {
                        nodes.push(TNode::Text(text.to_string()));
                    }
                    let close = find_action_end(&rest[inner_start..])
                        .ok_or_else(|| "template: unclosed action".to_string())?
                        + inner_start;
                    let mut inner = &rest[inner_start..close];
                    trim_next = false;
                    if inner.ends_with(" -") {
                        inner = &inner[..inner.len() - 1];
                        trim_next = true;
                    }
                    let inner = inner.trim();
                    if inner.starts_with("/*") {
                        rest = &rest[close + 2..];
                        continue;
                    }
                    let toks = ttokens(inner)?;
                    check_template_nesting(&toks)?;
                    let mut p = 0;
                    let cmds = tpipeline(&toks, &mut p)?;
                    if p != toks.len() {
                        return Err(format!("template: unexpected {:?} in action", toks[p]));
                    }
                    nodes.push(TNode::Pipe(cmds));
                    rest = &rest[close + 2..];
                }
            }
        }
        Ok(Template { src: src.to_string(), nodes, regexes: Default::default() })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.src
    }

    /// Renders with the entry's labels, line and timestamp.
    pub fn render(&self, lbs: &LabelsBuilder, line: &str, ts: i64) -> Result<String, String> {
        let mut out = String::new();
        let ctx = Ctx { lbs, line, ts, regexes: &self.regexes };
        for n in &self.nodes {
            match n {
                TNode::Text(t) => out.push_str(t),
                TNode::Pipe(cmds) => out.push_str(&ctx.pipeline(cmds)?.as_string()),
            }
        }
        Ok(out)
    }
}

fn find_action_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i + 1 < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            b'}' if b[i + 1] == b'}' => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

#[derive(Debug, Clone, PartialEq)]
enum TTok {
    Ident(String),
    Field(String),
    Dot,
    Str(String),
    Num(f64),
    Pipe,
    Open,
    Close,
}

fn ttokens(s: &str) -> Result<Vec<TTok>, String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'|' => {
                out.push(TTok::Pipe);
                i += 1;
            }
            b'(' => {
                out.push(TTok::Open);
                i += 1;
            }
            b')' => {
                out.push(TTok::Close);
                i += 1;
            }
            b'.' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                if j == start {
                    out.push(TTok::Dot);
                } else {
                    out.push(TTok::Field(s[start..j].to_string()));
                }
                i = j;
            }
            b'"' => {
                let (v, end) = scan_quoted(s, i).ok_or_else(|| "template: unterminated string".to_string())?;
                out.push(TTok::Str(v));
                i = end;
            }
            b'`' => {
                let end = s[i + 1..].find('`').ok_or_else(|| "template: unterminated raw string".to_string())?;
                out.push(TTok::Str(s[i + 1..i + 1 + end].to_string()));
                i = i + 1 + end + 1;
            }
            _ if c.is_ascii_digit() || c == b'-' => {
                let start = i;
                i += 1;
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                    i += 1;
                }
                let n: f64 = s[start..i].parse().map_err(|_| format!("template: bad number {:?}", &s[start..i]))?;
                out.push(TTok::Num(n));
            }
            _ if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push(TTok::Ident(s[start..i].to_string()));
            }
            b'$' => return Err("template: variables ($) are not supported by Cairn's line_format/label_format".into()),
            _ => return Err(format!("template: unexpected character {:?}", c as char)),
        }
    }
    Ok(out)
}

/// Deepest parenthesis nesting a template action may have: parsing and
/// evaluating recurse once per level.
const MAX_TEMPLATE_NESTING: usize = 64;

fn check_template_nesting(toks: &[TTok]) -> Result<(), String> {
    let mut depth = 0usize;
    for t in toks {
        match t {
            TTok::Open => {
                depth += 1;
                if depth > MAX_TEMPLATE_NESTING {
                    return Err(format!("template: parentheses nested more than {MAX_TEMPLATE_NESTING} deep"));
                }
            }
            TTok::Close => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn tpipeline(toks: &[TTok], p: &mut usize) -> Result<Vec<TCmd>, String> {
    let mut cmds = vec![tcommand(toks, p)?];
    while toks.get(*p) == Some(&TTok::Pipe) {
        *p += 1;
        cmds.push(tcommand(toks, p)?);
    }
    Ok(cmds)
}

fn tcommand(toks: &[TTok], p: &mut usize) -> Result<TCmd, String> {
    let mut func = None;
    if let Some(TTok::Ident(name)) = toks.get(*p) {
        match name.as_str() {
            "if" | "else" | "end" | "range" | "with" | "define" | "template" | "block" | "break" | "continue" => {
                return Err(format!(
                    "template action {name:?} is not supported by Cairn's line_format/label_format (only pipelines of fields and functions are)"
                ));
            }
            "true" | "false" | "nil" => {}
            _ if !TEMPLATE_FUNCS.contains(&name.as_str()) => {
                return Err(format!("template: function {name:?} not defined"));
            }
            _ => {}
        }
        func = Some(name.clone());
        *p += 1;
    }
    let mut args = Vec::new();
    loop {
        match toks.get(*p) {
            Some(TTok::Field(f)) => args.push(TArg::Field(f.clone())),
            Some(TTok::Dot) => args.push(TArg::Dot),
            Some(TTok::Str(s)) => args.push(TArg::Str(s.clone())),
            Some(TTok::Num(n)) => args.push(TArg::Num(*n)),
            Some(TTok::Open) => {
                *p += 1;
                let inner = tpipeline(toks, p)?;
                if toks.get(*p) != Some(&TTok::Close) {
                    return Err("template: unclosed parenthesis".into());
                }
                args.push(TArg::Sub(inner));
            }
            Some(TTok::Ident(name)) if matches!(name.as_str(), "true" | "false") => args.push(TArg::Str(name.clone())),
            Some(TTok::Ident(name)) => {
                if !TEMPLATE_FUNCS.contains(&name.as_str()) {
                    return Err(format!("template: function {name:?} not defined"));
                }
                args.push(TArg::Sub(vec![TCmd { func: Some(name.clone()), args: vec![] }]));
            }
            _ => break,
        }
        *p += 1;
    }
    if func.is_none() && args.len() != 1 {
        return Err("template: empty command".into());
    }
    Ok(TCmd { func, args })
}

#[derive(Debug, Clone)]
enum TVal {
    Str(String),
    Num(f64),
}

impl TVal {
    fn as_string(&self) -> String {
        match self {
            TVal::Str(s) => s.clone(),
            TVal::Num(n) => cairn_wire::format_float(*n),
        }
    }
    fn as_num(&self) -> Result<f64, String> {
        match self {
            TVal::Num(n) => Ok(*n),
            TVal::Str(s) => s.trim().parse().map_err(|_| format!("cannot convert {s:?} to a number")),
        }
    }
}

struct Ctx<'a> {
    lbs: &'a LabelsBuilder,
    line: &'a str,
    ts: i64,
    regexes: &'a std::sync::Mutex<HashMap<String, Regex>>,
}

impl Ctx<'_> {
    fn pipeline(&self, cmds: &[TCmd]) -> Result<TVal, String> {
        let mut prev: Option<TVal> = None;
        for c in cmds {
            let mut args: Vec<TVal> = c.args.iter().map(|a| self.arg(a)).collect::<Result<_, _>>()?;
            if let Some(pv) = prev.take() {
                args.push(pv);
            }
            prev = Some(match &c.func {
                None => args.pop().ok_or_else(|| "template: empty command".to_string())?,
                Some(f) => self.call(f, args)?,
            });
        }
        prev.ok_or_else(|| "template: empty pipeline".to_string())
    }

    fn arg(&self, a: &TArg) -> Result<TVal, String> {
        Ok(match a {
            TArg::Field(f) => TVal::Str(self.lbs.get(f).unwrap_or("").to_string()),
            TArg::Dot => TVal::Str(String::new()),
            TArg::Str(s) => TVal::Str(s.clone()),
            TArg::Num(n) => TVal::Num(*n),
            TArg::Sub(cmds) => self.pipeline(cmds)?,
        })
    }

    fn call(&self, f: &str, a: Vec<TVal>) -> Result<TVal, String> {
        let s = |i: usize| a.get(i).map(|v| v.as_string()).unwrap_or_default();
        let n = |i: usize| a.get(i).map(|v| v.as_num()).unwrap_or(Ok(0.0));
        let need = |k: usize| {
            if a.len() != k {
                Err(format!("template: wrong number of args for {f}: want {k} got {}", a.len()))
            } else {
                Ok(())
            }
        };
        let st = |x: String| Ok(TVal::Str(x));
        match f {
            "__line__" => st(self.line.to_string()),
            // Go prints the time.Time Loki passes as `2006-01-02 15:04:05.999999999 +0000 UTC`.
            "__timestamp__" => {
                let r = cairn_wire::time::format_rfc3339_ns(self.ts);
                st(format!("{} +0000 UTC", r.trim_end_matches('Z').replacen('T', " ", 1)))
            }
            "ToLower" | "lower" => {
                need(1)?;
                st(s(0).to_lowercase())
            }
            "ToUpper" | "upper" => {
                need(1)?;
                st(s(0).to_uppercase())
            }
            "title" | "Title" => {
                need(1)?;
                let mut out = String::new();
                let mut start = true;
                for c in s(0).chars() {
                    if start && c.is_alphabetic() {
                        out.extend(c.to_uppercase());
                    } else {
                        out.push(c);
                    }
                    start = !c.is_alphanumeric();
                }
                st(out)
            }
            "TrimSpace" | "trimSpace" | "trim" => {
                need(1)?;
                st(s(0).trim().to_string())
            }
            "Trim" => {
                need(2)?;
                let cut = s(1);
                st(s(0).trim_matches(|c| cut.contains(c)).to_string())
            }
            "trimAll" => {
                need(2)?;
                let cut = s(0);
                st(s(1).trim_matches(|c| cut.contains(c)).to_string())
            }
            "TrimLeft" => {
                need(2)?;
                let cut = s(1);
                st(s(0).trim_start_matches(|c| cut.contains(c)).to_string())
            }
            "TrimRight" => {
                need(2)?;
                let cut = s(1);
                st(s(0).trim_end_matches(|c| cut.contains(c)).to_string())
            }
            "TrimPrefix" => {
                need(2)?;
                let (x, p) = (s(0), s(1));
                st(x.strip_prefix(p.as_str()).unwrap_or(&x).to_string())
            }
            "TrimSuffix" => {
                need(2)?;
                let (x, p) = (s(0), s(1));
                st(x.strip_suffix(p.as_str()).unwrap_or(&x).to_string())
            }
            "trimPrefix" => {
                need(2)?;
                let (p, x) = (s(0), s(1));
                st(x.strip_prefix(p.as_str()).unwrap_or(&x).to_string())
            }
            "trimSuffix" => {
                need(2)?;
                let (p, x) = (s(0), s(1));
                st(x.strip_suffix(p.as_str()).unwrap_or(&x).to_string())
            }
            "Replace" => {
                need(4)?;
                let k = n(3)?;
                let (x, old, new) = (s(0), s(1), s(2));
                if k < 0.0 { st(x.replace(&old, &new)) } else { st(x.replacen(&old, &new, k as usize)) }
            }
            "replace" => {
                need(3)?;
                st(s(2).replace(&s(0), &s(1)))
            }
            "default" => {
                need(2)?;
                let given = s(1);
                st(if given.is_empty() { s(0) } else { given })
            }
            "contains" => {
                need(2)?;
                st(s(1).contains(&s(0)).to_string())
            }
            "hasPrefix" => {
                need(2)?;
                st(s(1).starts_with(&s(0)).to_string())
            }
            "hasSuffix" => {
                need(2)?;
                st(s(1).ends_with(&s(0)).to_string())
            }
            "repeat" => {
                need(2)?;
                let k = n(0)?.clamp(0.0, 10_000.0) as usize;
                let x = s(1);
                if x.len().saturating_mul(k) > MAX_TEMPLATE_OUTPUT {
                    return Err(format!("template: repeat output exceeds {MAX_TEMPLATE_OUTPUT} bytes"));
                }
                st(x.repeat(k))
            }
            "trunc" => {
                need(2)?;
                let k = n(0)?;
                let x: Vec<char> = s(1).chars().collect();
                let out: String = if k >= 0.0 {
                    x.iter().take(k as usize).collect()
                } else {
                    x.iter().skip(x.len().saturating_sub((-k) as usize)).collect()
                };
                st(out)
            }
            "substr" => {
                need(3)?;
                let x: Vec<char> = s(2).chars().collect();
                let (a0, b0) = (n(0)?, n(1)?);
                let start = if a0 < 0.0 { 0 } else { (a0 as usize).min(x.len()) };
                let end = if b0 < 0.0 || b0 as usize > x.len() { x.len() } else { b0 as usize };
                st(if start >= end { String::new() } else { x[start..end].iter().collect() })
            }
            "regexReplaceAll" | "regexReplaceAllLiteral" => {
                need(3)?;
                let src = s(0);
                let cached = self.regexes.lock().ok().and_then(|m| m.get(&src).cloned());
                let re = match cached {
                    Some(re) => re,
                    None => {
                        let re = Regex::new(&src).map_err(|e| format!("template: {f}: {e}"))?;
                        if let Ok(mut m) = self.regexes.lock()
                            && m.len() < TEMPLATE_REGEX_CACHE
                        {
                            m.insert(src, re.clone());
                        }
                        re
                    }
                };
                let (x, repl) = (s(1), s(2));
                if f == "regexReplaceAll" {
                    st(re.replace_all(&x, go_replacement(&repl).as_str()).into_owned())
                } else {
                    st(re.replace_all(&x, regex::NoExpand(&repl)).into_owned())
                }
            }
            "printf" => {
                if a.is_empty() {
                    return Err("template: printf needs a format".into());
                }
                st(go_printf(&s(0), &a[1..]))
            }
            "len" | "count" => {
                if f == "count" {
                    need(2)?;
                    return Ok(TVal::Num(s(1).matches(&s(0)).count() as f64));
                }
                need(1)?;
                Ok(TVal::Num(s(0).len() as f64))
            }
            "abs" => {
                need(1)?;
                Ok(TVal::Num(n(0)?.abs()))
            }
            "add" | "sub" | "mul" | "div" | "mod" => {
                need(2)?;
                let (x, y) = (n(0)?, n(1)?);
                Ok(TVal::Num(match f {
                    "add" => x + y,
                    "sub" => x - y,
                    "mul" => x * y,
                    "div" => x / y,
                    _ => x % y,
                }))
            }
            "alignLeft" | "alignRight" => {
                need(2)?;
                let k = n(0)?.clamp(0.0, 10_000.0) as usize;
                let x: Vec<char> = s(1).chars().collect();
                let out: String = if x.len() >= k {
                    x[..k].iter().collect()
                } else if f == "alignLeft" {
                    format!("{}{}", x.iter().collect::<String>(), " ".repeat(k - x.len()))
                } else {
                    format!("{}{}", " ".repeat(k - x.len()), x.iter().collect::<String>())
                };
                st(out)
            }
            other => Err(format!("template: function {other:?} not defined")),
        }
    }
}

/// Go's `$1`/`${name}` replacement syntax is Rust regex's too; only `$$` vs
/// `$` differ in corner cases we do not emulate.
fn go_replacement(s: &str) -> String {
    s.to_string()
}

fn go_printf(fmt: &str, args: &[TVal]) -> String {
    let mut out = String::new();
    let mut it = args.iter();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        while let Some(&d) = chars.peek() {
            if d.is_ascii_digit() || d == '.' || d == '-' || d == '+' {
                spec.push(d);
                chars.next();
            } else {
                break;
            }
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = it.next() else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        let prec: Option<usize> = spec.split_once('.').and_then(|(_, p)| p.parse().ok());
        let width: usize = spec.split('.').next().unwrap_or("").trim_start_matches(['-', '+']).parse().unwrap_or(0);
        let body = match verb {
            // Labels are strings in Loki's templates, so %d/%f of a label
            // is Go's bad-verb output; only number literals and arithmetic
            // results format as numbers.
            'd' => match arg {
                TVal::Num(v) => format!("{}", v.trunc() as i64),
                TVal::Str(s) => format!("%!d(string={s})"),
            },
            'f' => match arg {
                TVal::Num(v) => format!("{:.*}", prec.unwrap_or(6), v),
                TVal::Str(s) => format!("%!f(string={s})"),
            },
            'q' => format!("{:?}", arg.as_string()),
            _ => arg.as_string(),
        };
        if body.chars().count() < width {
            let pad = " ".repeat(width - body.chars().count());
            if spec.starts_with('-') {
                out.push_str(&body);
                out.push_str(&pad);
            } else {
                out.push_str(&pad);
                out.push_str(&body);
            }
        } else {
            out.push_str(&body);
        }
    }
    out
}

/// Removes ANSI color escape sequences (`ESC [ … m` and other CSI sequences).
pub fn decolorize(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The label names a stream-decided rejection rests on, when `stages` drop
/// every entry of a stream with labels `stream` whatever its line: a label
/// filter false on the stream's labels, reached with no pipeline error
/// possible (a filter passes entries that carry one) and before any stage
/// that can change or remove labels or that keeps state. Parsers never
/// overwrite a stream label (a clashing one becomes `<name>_extracted`), but
/// an entry's structured metadata does: entries with metadata named like
/// one of the returned names must still run the pipeline.
pub fn stream_rejects<'a>(stages: &'a [Stage], stream: &Labels) -> Option<Vec<&'a str>> {
    fn decide(f: &LabelFilter, stream: &Labels) -> Option<bool> {
        match f {
            LabelFilter::String(m) if m.name != ERROR_LABEL && m.name != ERROR_DETAILS_LABEL => {
                stream.get(&m.name).map(|v| m.matches(v))
            }
            LabelFilter::And(a, b) => match (decide(a, stream), decide(b, stream)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            LabelFilter::Or(a, b) => match (decide(a, stream), decide(b, stream)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            _ => None,
        }
    }
    /// True when the filter rejects every entry that carries an error.
    fn requires_no_error(f: &LabelFilter) -> bool {
        match f {
            LabelFilter::String(m) if m.name == ERROR_LABEL => m.op == MatchOp::Equal && m.value.is_empty(),
            LabelFilter::And(a, b) => requires_no_error(a) || requires_no_error(b),
            _ => false,
        }
    }
    let mut may_err = false;
    for st in stages {
        match st {
            Stage::LabelFilter(f) => {
                if !may_err && decide(f, stream) == Some(false) {
                    let mut out = Vec::new();
                    f.names(&mut out);
                    return Some(out);
                }
                if requires_no_error(f) {
                    may_err = false;
                } else if !matches!(f, LabelFilter::String(_)) {
                    // numeric and ip filters may record a conversion error
                    may_err = true;
                }
            }
            Stage::LineFilter(_) | Stage::Regexp(_) | Stage::Pattern(_) | Stage::Decolorize => {}
            Stage::Json(_) | Stage::Logfmt { .. } | Stage::Unpack | Stage::LineFormat(_) => may_err = true,
            Stage::LabelFormat(_) | Stage::Drop(_) | Stage::Keep(_) | Stage::Distinct(_) => return None,
        }
    }
    None
}

/// True when an entry's structured metadata names one of `names` (it then
/// overrides the stream label of that name, see [`stream_rejects`]).
pub fn metadata_names_any<'m>(metadata: impl IntoIterator<Item = (&'m str, &'m str)>, names: &[&str]) -> bool {
    metadata.into_iter().any(|(k, _)| names.iter().any(|n| sanitize_label_name(k) == *n))
}

/// Per-query state of stateful stages (`distinct`), and what the query
/// reads of the labels parsers extract.
#[derive(Debug, Default)]
pub struct PipelineState {
    distinct: Vec<HashSet<Vec<String>>>,
    /// The only labels anything after the parsers reads (see
    /// [`required_labels`]); `None`: all of them.
    required: Option<Vec<String>>,
}

impl PipelineState {
    /// State for a query whose later stages read only `required` of the
    /// parsed labels (`None`: all).
    pub fn reading(required: Option<Vec<String>>) -> Self {
        PipelineState { required, ..Default::default() }
    }

    /// True when parsers set only some labels.
    pub fn reads_some(&self) -> bool {
        self.required.is_some()
    }
}

/// The label names a metric query can read after its parsers, when that
/// set is known: the labels of a `by` grouping that decides the result's
/// labels, plus every label the stages and the unwrap name. `None` when a
/// template (`line_format`, `label_format`) could read any label. Parsers
/// then set only these (a clashing name counts as `<name>_extracted`);
/// errors are recorded as before, so `__error__` handling is unchanged.
pub fn required_labels(stages: &[Stage], by: &[String], unwrap: Option<(&str, &[LabelFilter])>) -> Option<Vec<String>> {
    let mut names: Vec<&str> = by.iter().map(String::as_str).collect();
    for st in stages {
        match st {
            Stage::LabelFilter(f) => f.names(&mut names),
            Stage::Drop(items) | Stage::Keep(items) => names.extend(items.iter().map(|it| it.name.as_str())),
            Stage::Distinct(ds) => names.extend(ds.iter().map(String::as_str)),
            Stage::LineFormat(_) => return None,
            Stage::LabelFormat(items) => {
                for it in items {
                    match it {
                        LabelFmt::Rename { dst, src } => names.extend([dst.as_str(), src.as_str()]),
                        LabelFmt::Template { .. } => return None,
                    }
                }
            }
            Stage::LineFilter(_)
            | Stage::Json(_)
            | Stage::Logfmt { .. }
            | Stage::Regexp(_)
            | Stage::Pattern(_)
            | Stage::Unpack
            | Stage::Decolorize => {}
        }
    }
    if let Some((label, post)) = unwrap {
        names.push(label);
        for f in post {
            f.names(&mut names);
        }
    }
    names.sort_unstable();
    names.dedup();
    Some(names.into_iter().map(str::to_string).collect())
}

/// Runs `stages` over one entry. Returns the (possibly rewritten) line, or
/// `None` when the entry is filtered out.
pub fn run_stages(
    stages: &[Stage],
    state: &mut PipelineState,
    lbs: &mut LabelsBuilder,
    line: &str,
    ts: i64,
) -> Option<String> {
    let mut line = std::borrow::Cow::Borrowed(line);
    let mut distinct_idx = 0;
    for st in stages {
        match st {
            Stage::LineFilter(f) => {
                if !f.keep(&line) {
                    return None;
                }
            }
            Stage::Json(params) => json_stage(params, &line, lbs, state.required.as_deref()),
            Stage::Logfmt { strict, keep_empty, params } => {
                logfmt_stage(*strict, *keep_empty, params, &line, lbs, state.required.as_deref())
            }
            Stage::Regexp(re) => {
                if let Some(caps) = re.captures(&line) {
                    for name in re.capture_names().flatten() {
                        if let Some(m) = caps.name(name) {
                            lbs.set_parsed(name, m.as_str().to_string());
                        }
                    }
                }
            }
            Stage::Pattern(p) => {
                for (k, v) in p.matches(&line) {
                    lbs.set_parsed(k, v.to_string());
                }
            }
            Stage::Unpack => {
                if let Some(new_line) = unpack_stage(&line, lbs) {
                    line = std::borrow::Cow::Owned(new_line);
                }
            }
            Stage::LabelFilter(f) => {
                if !f.process(lbs) {
                    return None;
                }
            }
            Stage::LineFormat(t) => match t.render(lbs, &line, ts) {
                Ok(s) => line = std::borrow::Cow::Owned(s),
                Err(e) => lbs.set_err("TemplateFormatErr", e),
            },
            Stage::LabelFormat(items) => {
                let mut sets: Vec<(String, Option<String>)> = Vec::new();
                for it in items {
                    match it {
                        LabelFmt::Rename { dst, src } => {
                            let v = lbs.get(src).map(str::to_string);
                            sets.push((src.clone(), None));
                            if let Some(v) = v {
                                sets.push((dst.clone(), Some(v)));
                            }
                        }
                        LabelFmt::Template { dst, tmpl } => match tmpl.render(lbs, &line, ts) {
                            Ok(v) => sets.push((dst.clone(), Some(v))),
                            Err(e) => lbs.set_err("TemplateFormatErr", e),
                        },
                    }
                }
                for (k, v) in sets {
                    match v {
                        Some(v) => lbs.set(k, v, Category::Parsed),
                        None => lbs.del(&k),
                    }
                }
            }
            Stage::Drop(items) => {
                for it in items {
                    if matches_named(it, lbs) {
                        lbs.del(&it.name);
                    }
                }
            }
            Stage::Keep(items) => {
                let names = lbs.names();
                for n in names {
                    let keep = items.iter().any(|it| it.name == n && matches_named(it, lbs));
                    if !keep {
                        lbs.del(&n);
                    }
                }
            }
            Stage::Decolorize => line = std::borrow::Cow::Owned(decolorize(&line)),
            Stage::Distinct(names) => {
                if state.distinct.len() <= distinct_idx {
                    state.distinct.push(HashSet::new());
                }
                let key: Vec<String> = names.iter().map(|n| lbs.get(n).unwrap_or("").to_string()).collect();
                let all_empty = key.iter().all(|k| k.is_empty());
                let seen = &mut state.distinct[distinct_idx];
                distinct_idx += 1;
                if !all_empty && !seen.insert(key) {
                    return None;
                }
            }
        }
    }
    Some(line.into_owned())
}

fn matches_named(it: &NamedMatcher, lbs: &LabelsBuilder) -> bool {
    match &it.matcher {
        None => true,
        Some(m) => lbs.get(&it.name).is_some_and(|v| m.matches(v)),
    }
}

fn json_stage(
    params: &[(String, Vec<JsonPathPart>)],
    line: &str,
    lbs: &mut LabelsBuilder,
    required: Option<&[String]>,
) {
    if params.is_empty() {
        let mut emit = |k: &str, v: &str| {
            if lbs.wants(k, required) {
                lbs.set_parsed(k, v.to_string())
            }
        };
        if let Err(e) = super::extract::flatten_json(line, &mut emit) {
            lbs.set_err("JSONParserErr", e.to_string());
        }
        return;
    }
    let v: serde_json::Value = match serde_json::from_str(line) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        Ok(_) => {
            lbs.set_err("JSONParserErr", super::extract::JsonError::NotAnObject.to_string());
            return;
        }
        Err(e) => {
            lbs.set_err("JSONParserErr", e.to_string());
            return;
        }
    };
    for (label, path) in params {
        let val = super::extract::json_path_value(&v, path).unwrap_or_default();
        lbs.set_parsed(label, val);
    }
}

fn unpack_stage(line: &str, lbs: &mut LabelsBuilder) -> Option<String> {
    let v: serde_json::Value = match serde_json::from_str(line) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        Ok(_) => {
            lbs.set_err("JSONParserErr", "expecting json object");
            return None;
        }
        Err(e) => {
            lbs.set_err("JSONParserErr", e.to_string());
            return None;
        }
    };
    let mut entry = None;
    if let serde_json::Value::Object(m) = v {
        for (k, val) in m {
            if let serde_json::Value::String(s) = val {
                if k == "_entry" {
                    entry = Some(s);
                } else {
                    lbs.set_parsed(&sanitize_label_name(&k), s);
                }
            }
        }
    }
    entry
}

/// A logfmt key and its value (`None` for a bare key).
pub type LogfmtPair = (String, Option<String>);

/// Splits a logfmt line into (key, value) pairs (value `None` for a bare
/// key). Bytes up to `' '` separate pairs. A malformed pair is reported in
/// the second element (the first one only) and skipped up to the next
/// separator; callers in `--strict` mode stop at it.
pub fn logfmt_pairs(line: &str) -> (Vec<LogfmtPair>, Option<(usize, String)>) {
    let mut out = Vec::new();
    let mut first_err: Option<(usize, String)> = None;
    let b = line.as_bytes();
    let mut i = 0;
    let skip_token = |i: &mut usize| {
        while *i < b.len() && b[*i] > b' ' {
            *i += 1;
        }
    };
    loop {
        while i < b.len() && b[i] <= b' ' {
            i += 1;
        }
        if i >= b.len() {
            return (out, first_err);
        }
        let pair_start = out.len();
        let ks = i;
        while i < b.len() && b[i] > b' ' && b[i] != b'=' && b[i] != b'"' {
            i += 1;
        }
        if i == ks || (i < b.len() && b[i] == b'"') {
            first_err.get_or_insert((
                pair_start,
                format!("logfmt syntax error at pos {}: unexpected '{}'", i + 1, b[i] as char),
            ));
            skip_token(&mut i);
            continue;
        }
        let key = line[ks..i].to_string();
        if i >= b.len() || b[i] != b'=' {
            out.push((key, None));
            continue;
        }
        i += 1;
        if i < b.len() && b[i] == b'"' {
            match scan_quoted(line, i) {
                Some((v, e)) => {
                    i = e;
                    out.push((key, Some(v)));
                }
                None => {
                    first_err.get_or_insert((
                        pair_start,
                        format!("logfmt syntax error at pos {}: unterminated quoted value", b.len() + 1),
                    ));
                    return (out, first_err);
                }
            }
        } else {
            let vs = i;
            while i < b.len() && b[i] > b' ' && b[i] != b'"' && b[i] != b'=' {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'=') {
                first_err.get_or_insert((
                    pair_start,
                    format!("logfmt syntax error at pos {}: unexpected '{}'", i + 1, b[i] as char),
                ));
                skip_token(&mut i);
                continue;
            }
            out.push((key, Some(line[vs..i].to_string())));
        }
    }
}

fn logfmt_stage(
    strict: bool,
    keep_empty: bool,
    params: &[(String, String)],
    line: &str,
    lbs: &mut LabelsBuilder,
    required: Option<&[String]>,
) {
    let (mut pairs, err) = logfmt_pairs(line);
    if let Some((at, e)) = err
        && strict
    {
        // --strict: keep what came before the malformed pair, then fail.
        pairs.truncate(at);
        lbs.set_err("LogfmtParserErr", e);
    }
    if params.is_empty() {
        for (k, v) in pairs {
            let v = match v {
                Some(v) => v,
                None if keep_empty => String::new(),
                None => continue,
            };
            let k = sanitize_label_name(&k);
            if lbs.wants(&k, required) {
                lbs.set_parsed(&k, v);
            }
        }
    } else {
        for (label, key) in params {
            if let Some((_, v)) = pairs.iter().find(|(k, _)| k == key) {
                lbs.set_parsed(label, v.clone().unwrap_or_default());
            }
        }
    }
}

/// Reads a double-quoted string whose opening quote is at byte `open` of
/// `s`, with `\n`, `\t`, `\r` escapes (any other escaped character stands
/// for itself). Returns the value and the index after the closing quote,
/// or `None` when the string is unterminated. Used by templates and logfmt.
fn scan_quoted(s: &str, open: usize) -> Option<(String, usize)> {
    let mut v = String::new();
    let mut chars = s[open + 1..].char_indices();
    while let Some((off, c)) = chars.next() {
        match c {
            '"' => return Some((v, open + 1 + off + 1)),
            '\\' => match chars.next()? {
                (_, 'n') => v.push('\n'),
                (_, 't') => v.push('\t'),
                (_, 'r') => v.push('\r'),
                (_, e) => v.push(e),
            },
            c => v.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whenever `stream_rejects` says a stream's entries are dropped, the
    /// pipeline drops every one of them, lines and metadata alike (unless
    /// the metadata names a label the decision rests on).
    #[test]
    fn stream_rejections_agree_with_the_pipeline() {
        let queries = [
            r#"{job="x"} | json | __error__="" | level="info""#,
            r#"{job="x"} | json | level="info""#,
            r#"{job="x"} | level="info" or level="warn""#,
            r#"{job="x"} | level=~"i.*" and app!="a""#,
            r#"{job="x"} |= "a" | logfmt | __error__="" | level!="info", app="b""#,
            r#"{job="x"} | label_format level="info" | level="info""#,
            r#"{job="x"} | drop level | level="""#,
            r#"{job="x"} | distinct msg | level="info""#,
            r#"{job="x"} | json | __error__="JSONParserErr" | level="info""#,
            r#"{job="x"} | json | __error__!="x" | level="info""#,
            r#"{job="x"} | line_format "{{.level}}" | __error__="" | level="warn""#,
            r#"{job="x"} | regexp `(?P<level>\w+)` | level="info""#,
            r#"{job="x"} | status > 200 | level="info""#,
        ];
        let streams = [
            Labels::from_pairs([("job", "x"), ("level", "info")]).unwrap(),
            Labels::from_pairs([("job", "x"), ("level", "warn"), ("app", "a")]).unwrap(),
            Labels::from_pairs([("job", "x"), ("app", "b")]).unwrap(),
        ];
        let lines = [r#"{"level":"info","msg":"m"}"#, "level=warn app=b msg=m", "not json", r#"{"status":500}"#];
        let metas: [&[(&str, &str)]; 3] = [&[], &[("level", "info")], &[("trace", "t")]];
        let mut pruned = 0;
        for q in queries {
            let Ok(super::super::ast::Expr::Log(sel)) = super::super::parser::parse(q) else { panic!("{q}") };
            for st in &streams {
                let Some(names) = stream_rejects(&sel.pipeline, st) else { continue };
                for meta in metas {
                    if metadata_names_any(meta.iter().copied(), &names) {
                        continue;
                    }
                    pruned += 1;
                    for line in lines {
                        let mut lbs = LabelsBuilder::new(st, meta.iter().copied());
                        let mut state = PipelineState::default();
                        let out = run_stages(&sel.pipeline, &mut state, &mut lbs, line, 0);
                        assert!(out.is_none(), "{q} on {st:?} {meta:?} {line}: kept as {:?}", lbs.labels());
                    }
                }
            }
        }
        assert!(pruned >= 10, "the cases exercise the pruning ({pruned})");
        // what must not be decided per stream
        let warn = &streams[1];
        for q in [&queries[1], &queries[5], &queries[6], &queries[7], &queries[8], &queries[9], &queries[12]] {
            let Ok(super::super::ast::Expr::Log(sel)) = super::super::parser::parse(q) else { panic!("{q}") };
            assert_eq!(stream_rejects(&sel.pipeline, warn), None, "{q}");
        }
    }

    /// Parsers that set only the required labels give the same verdicts,
    /// lines, errors and required labels as parsers that set them all.
    #[test]
    fn required_labels_change_nothing_that_is_read() {
        let pipelines = [
            r#"{job="x"} | json | __error__="" | level="info""#,
            r#"{job="x"} | json | status >= 300"#,
            r#"{job="x"} | logfmt | msg=~"m.*" | drop app"#,
            r#"{job="x"} | logfmt --keep-empty | keep app, msg"#,
            r#"{job="x"} | json | label_format lvl=level_extracted | lvl!="""#,
            r#"{job="x"} | json | distinct msg"#,
            r#"{job="x"} | json | line_format "{{.msg}}""#,
        ];
        let stream = Labels::from_pairs([("job", "x"), ("level", "warn")]).unwrap();
        let lines = [
            r#"{"level":"info","msg":"m1","status":500,"app":"a","nested":{"k":"v"}}"#,
            r#"{"msg":"m1","status":"x"}"#,
            "level=info msg=m2 app=b status=200 bare",
            "not json",
            r#"{"level":"debug","msg":"","app":"c"}"#,
        ];
        let mut checked = 0;
        for q in pipelines {
            let Ok(super::super::ast::Expr::Log(sel)) = super::super::parser::parse(q) else { panic!("{q}") };
            for by in [vec![], vec!["app".to_string()], vec!["source".to_string(), "msg".to_string()]] {
                let required = required_labels(&sel.pipeline, &by, None);
                if required.is_some() {
                    checked += 1;
                }
                let (mut all, mut some) = (PipelineState::default(), PipelineState::reading(required.clone()));
                for line in lines {
                    let (mut a, mut b) = (LabelsBuilder::new(&stream, []), LabelsBuilder::new(&stream, []));
                    let ra = run_stages(&sel.pipeline, &mut all, &mut a, line, 0);
                    let rb = run_stages(&sel.pipeline, &mut some, &mut b, line, 0);
                    assert_eq!(ra, rb, "{q} {line}");
                    let read = |l: &LabelsBuilder| -> Vec<(String, Option<String>)> {
                        let mut names: Vec<String> = required.clone().unwrap_or_else(|| l.names());
                        names.extend([ERROR_LABEL.to_string(), "job".into(), "level".into()]);
                        names.into_iter().map(|n| (n.clone(), l.get(&n).map(str::to_string))).collect()
                    };
                    assert_eq!(read(&a), read(&b), "{q} by {by:?} on {line}");
                }
            }
        }
        assert!(checked >= 12, "most pipelines have a known set ({checked})");
        let Ok(super::super::ast::Expr::Log(sel)) = super::super::parser::parse(pipelines[6]) else { panic!() };
        assert_eq!(required_labels(&sel.pipeline, &[], None), None, "templates read any label");
    }

    fn b() -> LabelsBuilder {
        LabelsBuilder::new(&Labels::from_pairs([("job", "x"), ("level", "info")]).unwrap(), [])
    }

    #[test]
    fn pattern_matching() {
        let p = Pattern::new(r#"<ip> - - [<_>] "<method> <uri> <_>" <status> <size>"#).unwrap();
        let m = p.matches(r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326"#);
        assert_eq!(
            m,
            vec![("ip", "1.2.3.4"), ("method", "GET"), ("uri", "/a.gif"), ("status", "200"), ("size", "2326")]
        );
        assert!(Pattern::new("<a><b>").is_err());
        let m = IpMatcher::new("192.168.4.5-192.168.4.20").unwrap();
        assert!(m.matches_line("from 192.168.4.7: ok") && !m.matches_line("from 192.168.4.21"));
        let m = IpMatcher::new("10.0.0.0/8").unwrap();
        assert!(m.matches_str("10.255.0.1") && !m.matches_str("11.0.0.1") && !m.matches_str("::1"));
        assert!(IpMatcher::new("::1").unwrap().matches_line("[::1]:80"));
        assert!(IpMatcher::new("fe80::/10").unwrap().matches_str("fe80::1"));
        assert!(IpMatcher::new("10.0.0.0/33").is_err() && IpMatcher::new("x").is_err());
        let f = Pattern::new_filter("<_> bar <_>").unwrap();
        assert!(f.test("foo bar baz"));
        assert!(!f.test(" bar baz"), "empty capture before a literal");
        assert!(!f.test("foo bar "), "empty final capture");
        assert!(!Pattern::new_filter("<_> bar").unwrap().test("foo bar baz"));
        assert!(Pattern::new_filter("<_> baz").unwrap().test("foo bar baz"));
        assert!(Pattern::new_filter("foo <_>").unwrap().test("foo bar baz"));
        assert!(Pattern::new("abc").is_err());
    }

    #[test]
    fn templates() {
        let mut l = b();
        l.set_parsed("msg", "Hello World".into());
        let r = |t: &str, l: &LabelsBuilder| Template::new(t).unwrap().render(l, "the line", 0).unwrap();
        assert_eq!(r("{{.job}} {{ .msg | ToUpper }}", &l), "x HELLO WORLD");
        assert_eq!(r(r#"{{ default "none" .missing }}"#, &l), "none");
        assert_eq!(r(r#"{{ replace "World" "There" .msg }}"#, &l), "Hello There");
        assert_eq!(r(r#"{{ printf "%s=%d" .job 42 }}"#, &l), "x=42");
        assert_eq!(r(r#"{{ printf "%d" .job }}"#, &l), "%!d(string=x)");
        assert_eq!(r("{{ __timestamp__ }}", &l), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(r(r#"{{ __line__ | lower }}"#, &l), "the line");
        assert_eq!(r(r#"{{ .msg | trunc 5 }}"#, &l), "Hello");
        assert!(Template::new("{{ if .a }}x{{ end }}").unwrap_err().contains("\"if\""));
        assert!(Template::new("{{ nope .a }}").is_err());
        assert!(Template::new("{{ .a ").is_err());
    }

    #[test]
    fn parsers_and_errors() {
        let mut l = b();
        json_stage(&[], r#"{"level":"error","a":{"b":1.5,"c":[1]},"n":null,"t":true}"#, &mut l, None);
        assert_eq!(l.get("level_extracted"), Some("error"));
        assert_eq!(l.get("a_b"), Some("1.5"));
        assert_eq!(l.get("t"), Some("true"));
        assert_eq!(l.get("a_c"), None);
        let mut l = b();
        json_stage(&[], "not json", &mut l, None);
        assert_eq!(l.get(ERROR_LABEL), Some("JSONParserErr"));
        let mut l = b();
        logfmt_stage(false, false, &[], r#"a=1 b="x y" c d=" "#, &mut l, None);
        assert_eq!((l.get("a"), l.get("b"), l.get("c")), (Some("1"), Some("x y"), None));
        assert!(!l.has_err());
        let mut l = b();
        logfmt_stage(true, false, &[], r#"a=1 b="x"#, &mut l, None);
        assert_eq!(l.get(ERROR_LABEL), Some("LogfmtParserErr"));
        assert_eq!(parse_go_duration("1m30s"), Some(90.0));
        assert_eq!(parse_go_duration("250ms"), Some(0.25));
        assert_eq!(parse_bytes("20MB"), Some(20e6));
        assert_eq!(parse_bytes("1KiB"), Some(1024.0));
        assert_eq!(decolorize("\x1b[31mred\x1b[0m"), "red");
    }
}
