//! `cairn tail SELECTOR [PATTERN…]`: follow new log lines.
//!
//! Against a server: Loki's tail WebSocket (`/loki/api/v1/tail`). When the
//! connection drops, it reconnects (backing off up to 5 s) asking for the
//! lines since the newest one printed, and skips the ones already printed,
//! so nothing is shown twice. With `--data-dir`: the directory is reopened
//! read-only every `--interval` and the lines newer than the last printed
//! are queried.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use clap::Args;

use super::backend::{self, Dir, LogLine, Pairs};
use super::grep::{PatternOpts, label_matcher, line_filter, split_selector, validate_logql};
use super::output::{self, LineFormat};
use super::{CliError, CliResult, ColorChoice, ConnArgs, check_interrupt, interrupted, parse_duration_arg};

/// `cairn tail`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  cairn tail '{job=\"nginx\"}'
  cairn tail '{namespace=\"prod\"}' -i error
  cairn tail -l host=node-1 --since 10m")]
pub struct TailArgs {
    /// A LogQL selector (a pipeline after it is allowed), then patterns
    /// that lines must match (any of them), as in grep.
    #[arg(value_name = "SELECTOR [PATTERN]…")]
    pub args: Vec<String>,
    /// Patterns are fixed strings.
    #[arg(short = 'F', long)]
    pub fixed_strings: bool,
    /// Ignore case.
    #[arg(short = 'i', long)]
    pub ignore_case: bool,
    /// Lines that do NOT match.
    #[arg(short = 'v', long)]
    pub invert_match: bool,
    /// Whole words.
    #[arg(short = 'w', long)]
    pub word_regexp: bool,
    /// Only streams with this label (`key=value`, …); repeatable.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Show the lines of this last period first.
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    pub since: String,
    /// At most this many old lines first.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// With --data-dir: how often to look for new lines.
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    pub interval: String,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Leave the labels out.
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

/// Prints lines once: remembers the newest timestamp printed and the lines
/// at that timestamp.
struct Dedup {
    last: i64,
    at_last: HashSet<(Pairs, String)>,
}

impl Dedup {
    fn fresh(&mut self, labels: &Pairs, e: &LogLine) -> bool {
        if e.ts < self.last {
            return false;
        }
        let k = (labels.clone(), e.line.clone());
        if e.ts == self.last {
            return self.at_last.insert(k);
        }
        self.last = e.ts;
        self.at_last.clear();
        self.at_last.insert(k);
        true
    }
}

fn print_batch(
    out: &mut impl Write,
    fmt: &LineFormat,
    dedup: &mut Dedup,
    mut items: Vec<(Pairs, LogLine)>,
) -> std::io::Result<()> {
    items.sort_by(|x, y| x.1.ts.cmp(&y.1.ts).then_with(|| x.0.cmp(&y.0)));
    for (l, e) in items {
        if dedup.fresh(&l, &e) {
            output::write_line(out, fmt, &l, &e, false)?;
        }
    }
    out.flush()
}

impl TailArgs {
    /// The LogQL query this tail follows.
    pub fn query(&self) -> CliResult<(String, Option<regex::Regex>)> {
        let (sel, patterns) = match self.args.split_first() {
            Some((s, rest)) if s.trim_start().starts_with('{') => (Some(s.as_str()), rest.to_vec()),
            _ => (None, self.args.clone()),
        };
        let mut matchers = Vec::new();
        let mut rest = String::new();
        if let Some(s) = sel {
            let Some((inner, r)) = split_selector(s) else {
                return Err(CliError::Usage(format!("invalid selector {s:?}: expected {{…}}")));
            };
            if self.labels.is_empty() {
                validate_logql(s, "selector")?;
            }
            if !inner.trim().is_empty() {
                matchers.push(inner.trim().to_string());
            }
            rest = r.trim().to_string();
        }
        for l in &self.labels {
            matchers.push(label_matcher(l)?);
        }
        if matchers.is_empty() {
            return Err(CliError::Usage(
                "cairn tail needs a selector ('{job=\"x\"}') or -l KEY=VALUE: which streams to follow".into(),
            ));
        }
        let mut q = format!("{{{}}}", matchers.join(", "));
        let mut hl = None;
        if !patterns.is_empty() {
            let opts = PatternOpts {
                fixed_strings: self.fixed_strings,
                ignore_case: self.ignore_case,
                invert_match: self.invert_match,
                word_regexp: self.word_regexp,
            };
            let (f, h) = line_filter(&opts, &patterns)?;
            q = format!("{q} {f}");
            hl = h;
        }
        if !rest.is_empty() {
            q = format!("{q} {rest}");
        }
        validate_logql(&q, "query")?;
        Ok((q, hl))
    }
}

/// Runs `cairn tail` until Ctrl-C.
pub fn run(a: TailArgs) -> CliResult<i32> {
    let (q, hl) = a.query()?;
    let since = parse_duration_arg(&a.since, "--since")?;
    let fmt = LineFormat {
        color: output::use_color(a.color),
        json: a.json,
        no_labels: a.no_labels,
        only_line: a.only_line,
        mark_context: false,
        highlight: hl,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::LineWriter::new(stdout.lock());
    let mut dedup = Dedup { last: i64::MIN, at_last: HashSet::new() };
    let res = match &a.conn.data_dir {
        Some(_) => offline(&a, &q, since, &fmt, &mut out, &mut dedup),
        None => online(&a, &q, since, &fmt, &mut out, &mut dedup),
    };
    match res {
        Ok(()) | Err(CliError::Interrupted) => Ok(if interrupted() { 130 } else { 0 }),
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e),
    }
}

fn offline(
    a: &TailArgs,
    q: &str,
    since: i64,
    fmt: &LineFormat,
    out: &mut impl Write,
    dedup: &mut Dedup,
) -> CliResult<()> {
    let every = Duration::from_nanos(parse_duration_arg(&a.interval, "--interval")?.max(10_000_000) as u64);
    let now = cairn_wire::time::now_ns();
    let be = backend::open(&a.conn)?;
    let first = be.log_query(q, now - since, now + 1, a.limit, Dir::Backward, false)?;
    print_batch(out, fmt, dedup, flatten(first))?;
    let mut from = now + 1;
    if dedup.last != i64::MIN {
        from = from.min(dedup.last);
    }
    loop {
        let deadline = std::time::Instant::now() + every;
        while std::time::Instant::now() < deadline {
            check_interrupt()?;
            std::thread::sleep(Duration::from_millis(50));
        }
        // Reopen: the read-only store is a snapshot.
        let be = backend::open(&a.conn)?;
        let to = cairn_wire::time::now_ns() + 1;
        let lo = if dedup.last == i64::MIN { from } else { dedup.last };
        let got = be.log_query(q, lo, to, super::grep::BATCH, Dir::Forward, false)?;
        print_batch(out, fmt, dedup, flatten(got))?;
    }
}

fn flatten(streams: Vec<backend::Stream>) -> Vec<(Pairs, LogLine)> {
    streams.into_iter().flat_map(|s| s.entries.into_iter().map(move |e| (s.labels.clone(), e))).collect()
}

fn online(
    a: &TailArgs,
    q: &str,
    since: i64,
    fmt: &LineFormat,
    out: &mut impl Write,
    dedup: &mut Dedup,
) -> CliResult<()> {
    let http = backend::Http::new(&a.conn)?;
    let ws_base = http.base().replacen("http", "ws", 1);
    let tls = if ws_base.starts_with("wss://") { Some(tls_config(http.extra_roots())?) } else { None };
    let mut backoff = Duration::from_millis(250);
    let mut connected_once = false;
    let mut start = cairn_wire::time::now_ns() - since;
    let mut limit = a.limit;
    loop {
        check_interrupt()?;
        let mut url = reqwest::Url::parse(&format!("{ws_base}/loki/api/v1/tail"))
            .map_err(|e| CliError::Usage(format!("--addr {}: {e}", http.base())))?;
        url.query_pairs_mut()
            .append_pair("query", q)
            .append_pair("start", &start.to_string())
            .append_pair("limit", &limit.to_string());
        let conn = connect(&url, &http, tls.as_ref());
        let mut socket = match conn {
            Ok(s) => s,
            Err(TailError::Fatal(e)) => return Err(e),
            Err(TailError::Retry(reason)) => {
                if !connected_once && backoff >= Duration::from_secs(2) {
                    return Err(CliError::Unreachable { addr: http.base().to_string(), reason });
                }
                if connected_once {
                    eprintln!("cairn: tail connection lost ({reason}); reconnecting…");
                }
                sleep_checked(backoff)?;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        connected_once = true;
        backoff = Duration::from_millis(250);
        let reason = loop {
            if interrupted() {
                let _ = socket.close(None);
                let _ = socket.flush();
                return Err(CliError::Interrupted);
            }
            match socket.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    let v: serde_json::Value = match serde_json::from_str(t.as_str()) {
                        Ok(v) => v,
                        Err(e) => break format!("bad message from the server: {e}"),
                    };
                    let streams = match backend::parse_result(
                        &serde_json::json!({"resultType": "streams", "result": v["streams"]}),
                    ) {
                        Ok(Ok(s)) => s,
                        _ => break "bad message from the server".to_string(),
                    };
                    print_batch(out, fmt, dedup, flatten(streams))?;
                }
                Ok(tungstenite::Message::Close(_)) => break "closed by the server".to_string(),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => break e.to_string(),
            }
        };
        eprintln!("cairn: tail connection lost ({reason}); reconnecting…");
        // Resume at the newest line printed; lines already printed at that
        // timestamp are skipped by `dedup`.
        if dedup.last != i64::MIN {
            start = dedup.last;
        }
        limit = super::grep::BATCH;
        sleep_checked(backoff)?;
    }
}

enum TailError {
    Retry(String),
    Fatal(CliError),
}

type Socket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

/// The rustls client configuration of `wss://`: the system's roots plus
/// `extra` (PEM, from --ca-file), with aws-lc-rs as reqwest uses it.
fn tls_config(extra: &[u8]) -> CliResult<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    for c in CertificateDer::pem_slice_iter(extra) {
        let c = c.map_err(|e| CliError::Usage(format!("--ca-file: {e}")))?;
        roots.add(c).map_err(|e| CliError::Usage(format!("--ca-file: {e}")))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CliError::Usage(format!("cannot set up TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(cfg))
}

fn connect(
    url: &reqwest::Url,
    http: &backend::Http,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Socket, TailError> {
    use tungstenite::client::IntoClientRequest;
    let mut req = url.as_str().into_client_request().map_err(|e| TailError::Fatal(CliError::Usage(e.to_string())))?;
    for (k, v) in http.headers() {
        if let Ok(v) = v.parse() {
            req.headers_mut().insert(k, v);
        }
    }
    let addrs = url.socket_addrs(|| None).map_err(|e| TailError::Retry(e.to_string()))?;
    let tcp = std::net::TcpStream::connect(&addrs[..]).map_err(|e| TailError::Retry(e.to_string()))?;
    let connector = tls.map(|c| tungstenite::Connector::Rustls(c.clone()));
    let res = tungstenite::client_tls_with_config(req, tcp, None, connector).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => {
            tungstenite::Error::Io(std::io::Error::other("handshake interrupted"))
        }
    });
    match res {
        Ok((mut s, _)) => {
            let tcp = match s.get_mut() {
                tungstenite::stream::MaybeTlsStream::Plain(t) => Some(&*t),
                tungstenite::stream::MaybeTlsStream::Rustls(t) => Some(t.get_ref()),
                _ => None,
            };
            if let Some(t) = tcp {
                let _ = t.set_read_timeout(Some(Duration::from_millis(200)));
            }
            Ok(s)
        }
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).trim().to_string()).unwrap_or_default();
            let status = resp.status().as_u16();
            Err(TailError::Fatal(if status == 400 {
                CliError::Usage(body)
            } else {
                CliError::Server { url: url.to_string(), status, message: body }
            }))
        }
        Err(e) => Err(TailError::Retry(e.to_string())),
    }
}

fn sleep_checked(d: Duration) -> CliResult<()> {
    let until = std::time::Instant::now() + d;
    while std::time::Instant::now() < until {
        check_interrupt()?;
        std::thread::sleep(Duration::from_millis(50).min(d));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_skips_what_was_printed() {
        let mut d = Dedup { last: i64::MIN, at_last: HashSet::new() };
        let l: Pairs = vec![("a".into(), "1".into())];
        let e = |ts, s: &str| LogLine { ts, line: s.into(), extra: vec![] };
        assert!(d.fresh(&l, &e(5, "x")));
        assert!(d.fresh(&l, &e(5, "y")));
        assert!(!d.fresh(&l, &e(5, "x")));
        assert!(!d.fresh(&l, &e(4, "z")));
        assert!(d.fresh(&l, &e(6, "x")));
    }
}
