//! `cairn labels [NAME]` and `cairn series SELECTOR`: label names, label
//! values, and the streams and series a selector picks, for logs and
//! metrics.

use std::io::Write;

use clap::Args;

use super::backend::{self, Pairs};
use super::output;
use super::{CliError, CliResult, ConnArgs, RangeArgs};

/// Which signal to list.
#[derive(Args, Debug, Clone, Default)]
pub struct Which {
    /// Logs only.
    #[arg(long, conflicts_with = "metrics")]
    pub logs: bool,
    /// Metrics only.
    #[arg(long)]
    pub metrics: bool,
}

impl Which {
    fn logs(&self) -> bool {
        !self.metrics
    }
    fn metrics(&self) -> bool {
        !self.logs
    }
}

/// `cairn labels`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  cairn labels                       label names of logs and metrics (last 6h)
  cairn labels job --logs            values of `job` on log streams
  cairn labels __name__ --metrics    metric names
  cairn labels pod -s '{namespace=\"prod\"}'")]
pub struct LabelsArgs {
    /// Show the values of this label instead of the label names.
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// Only streams/series matching this selector.
    #[arg(short = 's', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    #[command(flatten)]
    pub which: Which,
    /// JSON: {"logs": [...], "metrics": [...]}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub range: RangeArgs,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// `cairn series`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  cairn series '{job=\"nginx\"}'
  cairn series 'node_load1' --metrics")]
pub struct SeriesArgs {
    /// A selector: `{job="x"}` (logs and metrics) or `metric{…}` (metrics).
    #[arg(value_name = "SELECTOR")]
    pub selector: Option<String>,
    #[command(flatten)]
    pub which: Which,
    /// One JSON object per line: {"type": "logs"|"metrics", "labels": {…}}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub range: RangeArgs,
    #[command(flatten)]
    pub conn: ConnArgs,
}

const SIX_HOURS: i64 = 6 * super::HOUR_NS;

/// True when `s` can be a log stream selector (`{…}` with no metric name).
fn is_log_selector(s: &str) -> bool {
    s.trim_start().starts_with('{')
}

fn finish(out: &mut impl Write) -> CliResult<i32> {
    match out.flush() {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(CliError::Output(e)),
    }
}

/// Runs `cairn labels`.
pub fn run_labels(a: LabelsArgs) -> CliResult<i32> {
    let (start, end) = a.range.resolve(SIX_HOURS)?;
    let be = backend::open(&a.conn)?;
    let sel = a.selector.as_deref();
    let log_ok = a.which.logs() && sel.is_none_or(is_log_selector);
    let values = |series: Vec<Pairs>, name: &str| -> Vec<String> {
        let mut v: Vec<String> =
            series.into_iter().filter_map(|p| p.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)).collect();
        v.sort();
        v.dedup();
        v
    };
    let logs = if log_ok {
        match &a.name {
            None => be.log_labels(sel, start, end)?,
            Some(n) => values(be.log_series(sel, start, end)?, n),
        }
    } else {
        Vec::new()
    };
    let metrics = if a.which.metrics() {
        let (s, e) = (start / 1_000_000, end / 1_000_000);
        match &a.name {
            None => be.metric_labels(sel, s, e)?,
            Some(n) => values(be.metric_series(sel, s, e)?, n),
        }
    } else {
        Vec::new()
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let r = (|| -> std::io::Result<()> {
        if a.json {
            writeln!(out, "{}", serde_json::json!({"logs": logs, "metrics": metrics}))?;
        } else {
            let mut all: Vec<&String> = logs.iter().chain(metrics.iter()).collect();
            all.sort();
            all.dedup();
            for x in all {
                writeln!(out, "{x}")?;
            }
        }
        Ok(())
    })();
    match r {
        Ok(()) => finish(&mut out),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(CliError::Output(e)),
    }
}

/// `name{a="1"}` for a series with a metric name, `{…}` otherwise.
fn series_text(p: &Pairs) -> String {
    match p.iter().find(|(k, _)| k == "__name__") {
        Some((_, name)) => {
            let rest: Pairs = p.iter().filter(|(k, _)| k != "__name__").cloned().collect();
            if rest.is_empty() { name.clone() } else { format!("{name}{}", output::labels_text(&rest)) }
        }
        None => output::labels_text(p),
    }
}

/// Runs `cairn series`.
pub fn run_series(a: SeriesArgs) -> CliResult<i32> {
    let (start, end) = a.range.resolve(SIX_HOURS)?;
    let be = backend::open(&a.conn)?;
    let sel = a.selector.as_deref();
    let logs =
        if a.which.logs() && sel.is_none_or(is_log_selector) { be.log_series(sel, start, end)? } else { Vec::new() };
    let metrics =
        if a.which.metrics() { be.metric_series(sel, start / 1_000_000, end / 1_000_000)? } else { Vec::new() };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let r = (|| -> std::io::Result<()> {
        for (kind, set) in [("logs", &logs), ("metrics", &metrics)] {
            for p in set {
                if a.json {
                    let labels: serde_json::Map<_, _> =
                        p.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect();
                    writeln!(out, "{}", serde_json::json!({"type": kind, "labels": labels}))?;
                } else {
                    writeln!(out, "{}", series_text(p))?;
                }
            }
        }
        Ok(())
    })();
    match r {
        Ok(()) => finish(&mut out),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(CliError::Output(e)),
    }
}
