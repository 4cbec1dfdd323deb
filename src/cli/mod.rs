//! The terminal side of Cairn: `cairn grep`, `query`, `tail`, `labels`,
//! `series`, `completions`, and `pipeline test` (a dry run of ingest
//! pipeline chains, offline).
//!
//! Every subcommand talks to a [`backend::Backend`]: either a running
//! aggregator over its HTTP API ([`backend::Http`]) or a data directory
//! opened read-only in this process ([`backend::Offline`]), which runs the
//! same LogQL and PromQL engines (`cairn_query`) the server runs. `grep`
//! only ever builds LogQL text and runs it through the backend, so its
//! results are those of the equivalent `query_range`.
//!
//! Exit status: 0 success (for `grep`: something matched), 1 (`grep`
//! only) nothing matched, 2 error — as grep. Ctrl-C exits with 130.

pub mod backend;
pub mod grep;
pub mod labels;
pub mod output;
pub mod pipeline;
pub mod query;
pub mod tail;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;

/// Where the data is: a server (default) or a data directory.
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// Address of the Cairn aggregator.
    #[arg(long, env = "CAIRN_ADDR", default_value = "http://127.0.0.1:3100", value_name = "URL")]
    pub addr: String,
    /// Tenant (sent as X-Scope-OrgID) [default: the single-tenant "fake"].
    #[arg(long, env = "CAIRN_TENANT", value_name = "ID")]
    pub tenant: Option<String>,
    /// Bearer token for the Authorization header.
    #[arg(long, env = "CAIRN_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// For an https:// --addr: PEM file of CA certificates trusted besides
    /// the system's roots (a homelab CA, a self-signed server certificate).
    #[arg(long, env = "CAIRN_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Read this data directory directly instead of asking a server
    /// (read-only; safe while a server is writing it or after a crash).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Time range options shared by the subcommands.
#[derive(Args, Debug, Clone, Default)]
pub struct RangeArgs {
    /// How far back to look from --to (e.g. 15m, 2h, 2d).
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// Start: RFC 3339, Unix seconds, `now-2h`, or a duration meaning that long ago.
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,
    /// End (exclusive) [default: now]; same forms as --from.
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
}

/// When to colour output.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColorChoice {
    /// When stdout is a terminal and NO_COLOR is unset.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// An error of a CLI subcommand: printed as `cairn: error: …`, exit 2.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments, selector, pattern or query (the message says where).
    #[error("{0}")]
    Usage(String),
    /// The server could not be reached.
    #[error(
        "cannot reach Cairn at {addr}: {reason}\n  is `cairn serve` (or `cairn up`) running there? Choose another server with --addr or CAIRN_ADDR, or read a data directory directly with --data-dir DIR"
    )]
    Unreachable { addr: String, reason: String },
    /// The server answered with an error.
    #[error("{url}: HTTP {status}: {message}")]
    Server { url: String, status: u16, message: String },
    /// The data directory could not be read.
    #[error("{0}")]
    Store(String),
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
    /// Writing output failed (other than a closed pipe).
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Output(e)
    }
}

/// Result of a CLI subcommand.
pub type CliResult<T> = Result<T, CliError>;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // Second Ctrl-C: leave now (async-signal-safe: write and _exit).
        let reset = b"\x1b[0m";
        // SAFETY: write(2) and _exit(2) are async-signal-safe.
        unsafe {
            if libc::isatty(1) == 1 {
                libc::write(1, reset.as_ptr().cast(), reset.len());
            }
            libc::_exit(130);
        }
    }
}

/// Installs the Ctrl-C handler: the first Ctrl-C asks the running command
/// to stop at the next batch boundary (it then exits 130 with its output
/// complete up to there); a second one exits at once.
pub fn install_interrupt_handler() {
    // SAFETY: installs a handler that only touches an atomic, write(2)
    // and _exit(2).
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
}

/// True once Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails with [`CliError::Interrupted`] once Ctrl-C was pressed.
pub fn check_interrupt() -> CliResult<()> {
    if interrupted() { Err(CliError::Interrupted) } else { Ok(()) }
}

/// Parses a time option: RFC 3339, Unix seconds (or ns), `now`,
/// `now-2h`, or a bare duration meaning that long before `now_ns`.
pub fn parse_time_arg(s: &str, now_ns: i64, what: &str) -> CliResult<i64> {
    let t = s.trim();
    if t == "now" {
        return Ok(now_ns);
    }
    if let Some(d) = t.strip_prefix("now-") {
        let ns = parse_duration_arg(d, what)?;
        return Ok(now_ns.saturating_sub(ns));
    }
    if let Ok(ms) = cairn_wire::time::parse_duration_ms(t) {
        return Ok(now_ns.saturating_sub(ms.saturating_mul(1_000_000)));
    }
    cairn_wire::time::parse_loki_time_ns(t).map_err(|_| {
        CliError::Usage(format!(
            "invalid {what} {s:?}: expected RFC 3339 (2026-01-02T15:04:05Z), Unix seconds, `now`, `now-2h` or a duration such as 2h (meaning 2h ago)"
        ))
    })
}

/// Parses a duration option (`15m`, `2h`, `2d`) into nanoseconds.
pub fn parse_duration_arg(s: &str, what: &str) -> CliResult<i64> {
    cairn_wire::time::parse_duration_ms(s.trim())
        .map(|ms| ms.saturating_mul(1_000_000))
        .map_err(|e| CliError::Usage(format!("invalid {what} {s:?}: {e} (examples: 30s, 15m, 2h, 2d)")))
}

impl RangeArgs {
    /// `[start, end)` in ns; `default_since` when neither --since nor --from.
    pub fn resolve(&self, default_since_ns: i64) -> CliResult<(i64, i64)> {
        let now = cairn_wire::time::now_ns();
        let end = match &self.to {
            Some(t) => parse_time_arg(t, now, "--to")?,
            None => now,
        };
        let start = match (&self.from, &self.since) {
            (Some(_), Some(_)) => return Err(CliError::Usage("give either --from or --since, not both".into())),
            (Some(f), None) => parse_time_arg(f, now, "--from")?,
            (None, Some(s)) => end.saturating_sub(parse_duration_arg(s, "--since")?),
            (None, None) => end.saturating_sub(default_since_ns),
        };
        if start >= end {
            return Err(CliError::Usage(format!(
                "empty time range: start {} is not before end {}",
                cairn_wire::time::format_rfc3339_ns(start),
                cairn_wire::time::format_rfc3339_ns(end)
            )));
        }
        Ok((start, end))
    }
}

/// One hour in ns.
pub const HOUR_NS: i64 = 3_600_000_000_000;

/// Shows an error with a caret under `col` (1-based, in characters) of `text`.
pub fn caret(text: &str, col: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    format!("\n  {line}\n  {}^", " ".repeat(col.saturating_sub(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_args() {
        let now = 1_700_000_000_000_000_000;
        assert_eq!(parse_time_arg("now", now, "x").unwrap(), now);
        assert_eq!(parse_time_arg("now-1h", now, "x").unwrap(), now - HOUR_NS);
        assert_eq!(parse_time_arg("2h", now, "x").unwrap(), now - 2 * HOUR_NS);
        assert_eq!(parse_time_arg("2023-11-14T22:13:20Z", now, "x").unwrap(), now);
        assert_eq!(parse_time_arg("1700000000", now, "x").unwrap(), now);
        assert!(parse_time_arg("yesterday", now, "x").is_err());
        let r = RangeArgs { since: Some("2d".into()), from: None, to: Some("1700000000".into()) };
        assert_eq!(r.resolve(HOUR_NS).unwrap(), (now - 48 * HOUR_NS, now));
        let r = RangeArgs { since: Some("1h".into()), from: Some("2h".into()), to: None };
        assert!(r.resolve(HOUR_NS).is_err());
    }
}
