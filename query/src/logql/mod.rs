//! LogQL: parser ([`parse`]), log query evaluation ([`eval_log_query`]) and
//! metric query evaluation ([`eval_metric`]).
//!
//! The parser is written here because the only Rust LogQL parser crate is
//! AGPL-licensed. It is a hand-written lexer plus recursive-descent parser
//! whose errors carry line and column, formatted as Loki formats them:
//! `parse error at line 1, col 8: syntax error: unexpected …`.
//!
//! Supported: stream selectors; line filters (`|=`, `!=`, `|~`, `!~`, `|>`,
//! `!>`, with `or` alternatives); parsers `json`, `logfmt` (`--strict`,
//! `--keep-empty`), `regexp`, `pattern`, `unpack`; label filters (string,
//! numeric, duration, bytes; `and`, `or`, `,`, parentheses); `line_format`,
//! `label_format` (see [`pipeline::Template`] for the template subset);
//! `drop`, `keep`, `decolorize`, `distinct`; range aggregations (`rate`,
//! `count_over_time`, `bytes_rate`, `bytes_over_time`, `absent_over_time`,
//! and with `unwrap` `sum/avg/min/max/stddev/stdvar/quantile/first/last_over_time`
//! and `rate_counter`) with `offset`; vector aggregations (`sum`, `avg`,
//! `min`, `max`, `count`, `stddev`, `stdvar`, `topk`, `bottomk`, `sort`,
//! `sort_desc`) with `by`/`without`; number literals, `vector(n)`, binary
//! operators with `bool` and `on`/`ignoring` matching (with
//! `group_left`/`group_right`);
//! `label_replace`; `ip(…)` line and label filters. Refused by name:
//! template control structures and functions Loki lacks.

mod ast;
mod ctl;
mod detected;
mod eval;
pub mod extract;
mod format;
mod lexer;
mod metric;
mod parser;
mod patterns;
pub mod pipeline;

pub use ast::{
    BinOp, Direction, Expr, FilterOp, Grouping, JsonPathPart, LabelFmt, LineFilter, LogRange, LogSelector,
    NamedMatcher, RangeOp, SampleExpr, Stage, Unwrap, UnwrapConv, VecOp, VectorMatching,
};
pub use ctl::{DETECTED_LEVEL, EvalStats, QueryCtl, known_level, level_from_labels, normalize_level};
pub use detected::{DetectedField, detect_fields, detected_field_values};
pub use eval::{LogEntry, LogQuery, StreamResult, eval_log_query};
pub use format::go_quote;
pub use metric::{EvalError, MAX_POINTS, MetricQuery, MetricValue, Sample, Series, eval_metric};
pub use parser::{ParseError, parse};
pub use patterns::{MAX_PATTERN_LINES, PatternSeries, detect_patterns};
