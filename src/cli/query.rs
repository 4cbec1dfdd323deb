//! `cairn query EXPR`: a LogQL or PromQL query, instant or range, printed
//! as lines (log queries), a table (vectors, matrices), CSV or JSON.

use std::io::Write;

use cairn_query::logql::{self, Expr};
use cairn_query::promql;
use clap::Args;

use super::backend::{self, Backend, Dir};
use super::grep::split_selector;
use super::output::{self, LineFormat, TableFormat};
use super::{CliError, CliResult, ColorChoice, ConnArgs, HOUR_NS, parse_duration_arg, parse_time_arg};

/// `cairn query`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  cairn query 'sum by (level) (count_over_time({job=\"bench\"}[1h]))'
  cairn query 'rate(node_cpu_seconds_total{mode=\"idle\"}[5m])' --range 1h --step 1m
  cairn query '{job=\"nginx\"} |= \"GET\"' --limit 20
  cairn query up --csv")]
pub struct QueryArgs {
    /// The expression (LogQL or PromQL; detected, or see --logql/--promql).
    #[arg(value_name = "EXPR")]
    pub expr: String,
    /// The expression is LogQL.
    #[arg(long, conflicts_with = "promql")]
    pub logql: bool,
    /// The expression is PromQL.
    #[arg(long)]
    pub promql: bool,
    /// Instant query at this time [default: now] (RFC 3339, Unix seconds, now-1h, …).
    #[arg(long, value_name = "TIME", conflicts_with_all = ["range", "from"])]
    pub time: Option<String>,
    /// Range query over this long, ending at --to (log queries: default 1h).
    #[arg(long, value_name = "DURATION")]
    pub range: Option<String>,
    /// Range query start (instead of --range).
    #[arg(long, value_name = "TIME", conflicts_with = "range")]
    pub from: Option<String>,
    /// Range query end [default: now].
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
    /// Range query resolution [default: range / 250, at least 1s].
    #[arg(long, value_name = "DURATION")]
    pub step: Option<String>,
    /// Log queries: most lines to return.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Log queries: oldest lines first (default: newest first, as Loki).
    #[arg(long)]
    pub forward: bool,
    /// Print JSON (the API's `data` shape; log lines: one object per line).
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV (metric results).
    #[arg(long)]
    pub csv: bool,
    /// Log lines without their labels.
    #[arg(long)]
    pub no_labels: bool,
    /// Only the log line.
    #[arg(long)]
    pub only_line: bool,
    /// Colour (auto: when stdout is a terminal).
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// The query language of an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// LogQL.
    LogQL,
    /// PromQL.
    PromQL,
}

/// Decides the language: whichever parser accepts the expression; when
/// both do (`rate({job="x"}[5m])`), LogQL if its selector matches log
/// streams of the last `since`, else PromQL.
pub fn detect(expr: &str, be: &dyn Backend) -> CliResult<Lang> {
    let l = logql::parse(expr);
    let p = promql::parse(expr);
    match (l, p) {
        (Ok(_), Err(_)) => Ok(Lang::LogQL),
        (Err(_), Ok(_)) => Ok(Lang::PromQL),
        (Err(le), Err(pe)) => {
            let looks_logql =
                ["|=", "|~", "!=\"", "!~\"", "| json", "| logfmt", "| line_format", "| pattern", "| regexp"]
                    .iter()
                    .any(|t| expr.contains(t));
            Err(CliError::Usage(if looks_logql {
                format!("invalid LogQL: {le}{}", if le.line == 1 { super::caret(expr, le.col) } else { String::new() })
            } else {
                format!("invalid query (as PromQL: {pe}; as LogQL: {le})")
            }))
        }
        (Ok(_), Ok(_)) => {
            let sel = expr.find('{').and_then(|i| split_selector(&expr[i..])).map(|(inner, _)| format!("{{{inner}}}"));
            let now = cairn_wire::time::now_ns();
            let has_logs = match sel {
                Some(s) => !be.log_series(Some(&s), now - 24 * HOUR_NS, now).unwrap_or_default().is_empty(),
                None => false,
            };
            Ok(if has_logs { Lang::LogQL } else { Lang::PromQL })
        }
    }
}

/// Runs `cairn query`.
pub fn run(a: QueryArgs) -> CliResult<i32> {
    let be = backend::open(&a.conn)?;
    let lang = if a.logql {
        Lang::LogQL
    } else if a.promql {
        Lang::PromQL
    } else {
        detect(&a.expr, be.as_ref())?
    };
    let now = cairn_wire::time::now_ns();
    let end = match &a.to {
        Some(t) => parse_time_arg(t, now, "--to")?,
        None => match &a.time {
            Some(t) => parse_time_arg(t, now, "--time")?,
            None => now,
        },
    };
    let start = match (&a.from, &a.range) {
        (Some(f), _) => Some(parse_time_arg(f, now, "--from")?),
        (None, Some(r)) => Some(end - parse_duration_arg(r, "--range")?),
        (None, None) => None,
    };
    if let Some(s) = start
        && s >= end
    {
        return Err(CliError::Usage("empty range: --from must be before --to".into()));
    }
    let step = |start: i64| -> CliResult<i64> {
        match &a.step {
            Some(s) => parse_duration_arg(s, "--step"),
            None => Ok((((end - start) / 1_000_000_000) / 250).max(1) * 1_000_000_000),
        }
    };
    let table = if a.json {
        TableFormat::Json
    } else if a.csv {
        TableFormat::Csv
    } else {
        TableFormat::Table
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let res = match lang {
        Lang::PromQL => {
            let m = match start {
                Some(s) => be.promql(&a.expr, s / 1_000_000, end / 1_000_000, Some(step(s)? / 1_000_000))?,
                None => be.promql(&a.expr, end / 1_000_000, end / 1_000_000, None)?,
            };
            output::write_metric(&mut out, &m, table)
        }
        Lang::LogQL => match logql::parse(&a.expr) {
            Err(e) => {
                let pos = if e.line == 1 { super::caret(&a.expr, e.col) } else { String::new() };
                return Err(CliError::Usage(format!("invalid LogQL: {e}{pos}")));
            }
            Ok(Expr::Sample(_)) => {
                let m = match start {
                    Some(s) => be.log_metric(&a.expr, s, end, Some(step(s)?))?,
                    None => be.log_metric(&a.expr, end, end, None)?,
                };
                output::write_metric(&mut out, &m, table)
            }
            Ok(Expr::Log(_)) => {
                let s = start.unwrap_or(end - HOUR_NS);
                let dir = if a.forward { Dir::Forward } else { Dir::Backward };
                let streams = be.log_query(&a.expr, s, end, a.limit, dir, false)?;
                let mut items: Vec<(&backend::Pairs, &backend::LogLine)> =
                    streams.iter().flat_map(|s| s.entries.iter().map(move |e| (&s.labels, e))).collect();
                items.sort_by(|x, y| x.1.ts.cmp(&y.1.ts).then_with(|| x.0.cmp(y.0)));
                if !a.forward {
                    items.reverse();
                }
                let fmt = LineFormat {
                    color: output::use_color(a.color),
                    json: a.json,
                    no_labels: a.no_labels,
                    only_line: a.only_line,
                    mark_context: false,
                    highlight: None,
                };
                (|| -> CliResult<()> {
                    for (l, e) in items {
                        output::write_line(&mut out, &fmt, l, e, false)?;
                    }
                    Ok(())
                })()
            }
        },
    };
    match res.and_then(|_| out.flush().map_err(CliError::Output)) {
        Ok(()) => Ok(0),
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e),
    }
}
