//! Where the CLI's queries go: a running aggregator over HTTP ([`Http`]) or
//! a data directory opened read-only in this process ([`Offline`]). Both
//! return the same types, filled from the same engines: [`Http`] parses the
//! Loki/Prometheus JSON the server built from `cairn_query` results,
//! [`Offline`] calls `cairn_query` itself the way the server's handlers do.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use cairn_query::logql::{self, Direction, Expr, LogQuery, MetricQuery, MetricValue};
use cairn_query::promql;
use cairn_store::logs::LogStore;
use cairn_store::metrics::MetricsStore;
use cairn_wire::{Labels, Matcher, format_float};
use serde_json::Value;

use super::{CliError, CliResult, ConnArgs};

/// Label pairs, sorted by name.
pub type Pairs = Vec<(String, String)>;

/// One log line of a result.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogLine {
    /// Timestamp, ns.
    pub ts: i64,
    /// The line.
    pub line: String,
    /// Structured metadata and parsed labels (categorized results).
    pub extra: Pairs,
}

/// One stream of a log query result.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    /// Stream labels.
    pub labels: Pairs,
    /// Entries in the query's direction.
    pub entries: Vec<LogLine>,
}

/// A metric result (LogQL metric query or PromQL); values are formatted as
/// the APIs format them, timestamps in ms.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// A scalar.
    Scalar(i64, String),
    /// A string (PromQL only).
    Str(i64, String),
    /// An instant vector.
    Vector(Vec<(Pairs, i64, String)>),
    /// A range result.
    Matrix(Vec<(Pairs, Vec<(i64, String)>)>),
}

/// Size of a stream selection in a range (`/loki/api/v1/index/stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Streams with data in the range.
    pub streams: u64,
    /// Entries.
    pub entries: u64,
    /// Bytes of lines.
    pub bytes: u64,
}

/// Which direction a log query returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Oldest first.
    Forward,
    /// Newest first.
    Backward,
}

/// What the CLI needs from a server or a data directory. Times are ns for
/// logs, ms for metrics, as in the respective APIs.
pub trait Backend {
    /// "http://…" or "data directory …", for messages.
    fn describe(&self) -> String;
    /// A LogQL log query over `[start, end)`: `categorize` groups by stream
    /// labels (parsed labels and metadata go to [`LogLine::extra`]).
    fn log_query(
        &self,
        q: &str,
        start: i64,
        end: i64,
        limit: usize,
        dir: Dir,
        categorize: bool,
    ) -> CliResult<Vec<Stream>>;
    /// A LogQL metric query: a range query with `step`, or instant at `end`.
    fn log_metric(&self, q: &str, start: i64, end: i64, step: Option<i64>) -> CliResult<Metric>;
    /// A PromQL query: a range query with `step`, or instant at `end` (ms).
    fn promql(&self, q: &str, start: i64, end: i64, step: Option<i64>) -> CliResult<Metric>;
    /// Label sets of the log streams matching `selector` (all when `None`).
    fn log_series(&self, selector: Option<&str>, start: i64, end: i64) -> CliResult<Vec<Pairs>>;
    /// Stats of the streams matching `selector`.
    fn log_stats(&self, selector: &str, start: i64, end: i64) -> CliResult<Stats>;
    /// Metric series matching `selector` (all when `None`), ms.
    fn metric_series(&self, selector: Option<&str>, start: i64, end: i64) -> CliResult<Vec<Pairs>>;
    /// Log label names (of streams matching `selector`).
    fn log_labels(&self, selector: Option<&str>, start: i64, end: i64) -> CliResult<Vec<String>> {
        let mut v: Vec<String> =
            self.log_series(selector, start, end)?.into_iter().flat_map(|p| p.into_iter().map(|(k, _)| k)).collect();
        v.sort();
        v.dedup();
        Ok(v)
    }
    /// Metric label names (of series matching `selector`), ms.
    fn metric_labels(&self, selector: Option<&str>, start: i64, end: i64) -> CliResult<Vec<String>> {
        let mut v: Vec<String> =
            self.metric_series(selector, start, end)?.into_iter().flat_map(|p| p.into_iter().map(|(k, _)| k)).collect();
        v.sort();
        v.dedup();
        Ok(v)
    }
}

/// Opens the backend the options ask for.
pub fn open(c: &ConnArgs) -> CliResult<Box<dyn Backend>> {
    match &c.data_dir {
        Some(d) => Ok(Box::new(Offline::new(d, c.tenant.clone())?)),
        None => Ok(Box::new(Http::new(c)?)),
    }
}

fn pairs(l: &Labels) -> Pairs {
    l.iter().map(|x| (x.name.to_string(), x.value.to_string())).collect()
}

// ---------------------------------------------------------------- HTTP

/// A running aggregator.
pub struct Http {
    base: String,
    client: reqwest::blocking::Client,
    tenant: Option<String>,
    token: Option<String>,
    extra_roots: Vec<u8>,
}

impl Http {
    /// A client for `c.addr`.
    pub fn new(c: &ConnArgs) -> CliResult<Http> {
        let mut base = c.addr.trim().trim_end_matches('/').to_string();
        if !base.contains("://") {
            base = format!("http://{base}");
        }
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(CliError::Usage(format!("--addr {:?}: expected http://HOST:PORT", c.addr)));
        }
        let mut builder = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(600));
        let mut extra_roots = Vec::new();
        if let Some(p) = &c.ca_file {
            let pem = std::fs::read(p).map_err(|e| CliError::Usage(format!("--ca-file {}: {e}", p.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| CliError::Usage(format!("--ca-file {}: {e}", p.display())))?;
            if certs.is_empty() {
                return Err(CliError::Usage(format!("--ca-file {}: no PEM certificate in it", p.display())));
            }
            builder = builder.tls_certs_merge(certs);
            extra_roots = pem;
        }
        let client = builder.build().map_err(|e| CliError::Usage(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Http { base, client, tenant: c.tenant.clone(), token: c.token.clone(), extra_roots })
    }

    /// PEM of the CAs trusted besides the system's roots (`--ca-file`).
    pub fn extra_roots(&self) -> &[u8] {
        &self.extra_roots
    }

    /// Base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Headers every request carries (tenant, token).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = Vec::new();
        if let Some(t) = &self.tenant {
            h.push(("X-Scope-OrgID", t.clone()));
        }
        if let Some(t) = &self.token {
            h.push(("Authorization", format!("Bearer {t}")));
        }
        h
    }

    fn get(&self, path: &str, params: &[(&str, String)], categorize: bool) -> CliResult<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.client.get(&url).query(params);
        for (k, v) in self.headers() {
            req = req.header(k, v);
        }
        if categorize {
            req = req.header("X-Loki-Response-Encoding-Flags", "categorize-labels");
        }
        let resp = req.send().map_err(|e| {
            // The innermost cause reads best ("Connection refused (os error 111)").
            let mut reason = e.to_string();
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
            while let Some(s) = src {
                reason = s.to_string();
                src = s.source();
            }
            if e.is_timeout() {
                CliError::Server { url: url.clone(), status: 0, message: format!("timed out: {reason}") }
            } else {
                CliError::Unreachable { addr: self.base.clone(), reason }
            }
        })?;
        let status = resp.status().as_u16();
        let body = resp.text().map_err(|e| CliError::Unreachable { addr: self.base.clone(), reason: e.to_string() })?;
        if status != 200 {
            // Loki answers errors as text, Prometheus as JSON.
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| body.trim().to_string());
            return Err(if status == 400 || status == 422 {
                CliError::Usage(message)
            } else {
                CliError::Server { url, status, message }
            });
        }
        serde_json::from_str(&body).map_err(|e| CliError::Server {
            url,
            status,
            message: format!("response is not JSON ({e})"),
        })
    }

    fn data(&self, path: &str, params: &[(&str, String)], categorize: bool) -> CliResult<Value> {
        let v = self.get(path, params, categorize)?;
        if v["status"] != "success" {
            return Err(CliError::Server {
                url: format!("{}{path}", self.base),
                status: 200,
                message: v["error"].as_str().unwrap_or("unexpected response").to_string(),
            });
        }
        Ok(v["data"].clone())
    }
}

fn json_pairs(v: &Value) -> Pairs {
    let mut p: Pairs = v
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default();
    p.sort();
    p
}

/// A JSON timestamp in float seconds (Loki/Prometheus) as ms.
fn json_ms(v: &Value) -> i64 {
    v.as_f64().map(|f| (f * 1000.0).round() as i64).unwrap_or(0)
}

fn json_str(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Parses the `data` object of a query response.
pub fn parse_result(data: &Value) -> CliResult<Result<Vec<Stream>, Metric>> {
    let result = &data["result"];
    let empty = Vec::new();
    let arr = result.as_array().unwrap_or(&empty);
    Ok(match data["resultType"].as_str().unwrap_or("") {
        "streams" => Ok(arr
            .iter()
            .map(|s| Stream {
                labels: json_pairs(&s["stream"]),
                entries: s["values"]
                    .as_array()
                    .unwrap_or(&empty)
                    .iter()
                    .map(|e| {
                        let mut extra = Vec::new();
                        if let Some(cat) = e.get(2) {
                            extra.extend(json_pairs(&cat["structuredMetadata"]));
                            extra.extend(json_pairs(&cat["parsed"]));
                        }
                        LogLine {
                            ts: e[0].as_str().and_then(|t| t.parse().ok()).unwrap_or(0),
                            line: json_str(&e[1]),
                            extra,
                        }
                    })
                    .collect(),
            })
            .collect()),
        "vector" => Err(Metric::Vector(
            arr.iter().map(|s| (json_pairs(&s["metric"]), json_ms(&s["value"][0]), json_str(&s["value"][1]))).collect(),
        )),
        "matrix" => Err(Metric::Matrix(
            arr.iter()
                .map(|s| {
                    (
                        json_pairs(&s["metric"]),
                        s["values"]
                            .as_array()
                            .unwrap_or(&empty)
                            .iter()
                            .map(|p| (json_ms(&p[0]), json_str(&p[1])))
                            .collect(),
                    )
                })
                .collect(),
        )),
        "scalar" => Err(Metric::Scalar(json_ms(&result[0]), json_str(&result[1]))),
        "string" => Err(Metric::Str(json_ms(&result[0]), json_str(&result[1]))),
        other => {
            return Err(CliError::Server {
                url: String::new(),
                status: 200,
                message: format!("unknown resultType {other:?}"),
            });
        }
    })
}

fn secs_param(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

impl Backend for Http {
    fn describe(&self) -> String {
        self.base.clone()
    }

    fn log_query(
        &self,
        q: &str,
        start: i64,
        end: i64,
        limit: usize,
        dir: Dir,
        categorize: bool,
    ) -> CliResult<Vec<Stream>> {
        let params = [
            ("query", q.to_string()),
            ("start", start.to_string()),
            ("end", end.to_string()),
            ("limit", limit.to_string()),
            ("direction", if dir == Dir::Forward { "forward" } else { "backward" }.to_string()),
        ];
        let data = self.data("/loki/api/v1/query_range", &params, categorize)?;
        match parse_result(&data)? {
            Ok(s) => Ok(s),
            Err(_) => Err(CliError::Usage(format!("{q} is a metric query, not a log query"))),
        }
    }

    fn log_metric(&self, q: &str, start: i64, end: i64, step: Option<i64>) -> CliResult<Metric> {
        let data = match step {
            Some(step) => self.data(
                "/loki/api/v1/query_range",
                &[
                    ("query", q.to_string()),
                    ("start", start.to_string()),
                    ("end", end.to_string()),
                    ("step", format!("{}ms", (step / 1_000_000).max(1))),
                ],
                false,
            )?,
            None => self.data("/loki/api/v1/query", &[("query", q.to_string()), ("time", end.to_string())], false)?,
        };
        match parse_result(&data)? {
            Err(m) => Ok(m),
            Ok(_) => Err(CliError::Usage(format!("{q} is a log query, not a metric query"))),
        }
    }

    fn promql(&self, q: &str, start: i64, end: i64, step: Option<i64>) -> CliResult<Metric> {
        let data = match step {
            Some(step) => self.data(
                "/api/v1/query_range",
                &[
                    ("query", q.to_string()),
                    ("start", secs_param(start)),
                    ("end", secs_param(end)),
                    ("step", secs_param(step)),
                ],
                false,
            )?,
            None => self.data("/api/v1/query", &[("query", q.to_string()), ("time", secs_param(end))], false)?,
        };
        match parse_result(&data)? {
            Err(m) => Ok(m),
            Ok(_) => {
                Err(CliError::Server { url: self.base.clone(), status: 200, message: "unexpected streams".into() })
            }
        }
    }

    fn log_series(&self, selector: Option<&str>, start: i64, end: i64) -> CliResult<Vec<Pairs>> {
        let mut params = vec![("start", start.to_string()), ("end", end.to_string())];
        if let Some(s) = selector {
            params.push(("match[]", s.to_string()));
        }
        let data = self.data("/loki/api/v1/series", &params, false)?;
        let mut v: Vec<Pairs> = data.as_array().map(|a| a.iter().map(json_pairs).collect()).unwrap_or_default();
        v.sort();
        Ok(v)
    }

    fn log_stats(&self, selector: &str, start: i64, end: i64) -> CliResult<Stats> {
        let v = self.get(
            "/loki/api/v1/index/stats",
            &[("query", selector.to_string()), ("start", start.to_string()), ("end", end.to_string())],
            false,
        )?;
        Ok(Stats {
            streams: v["streams"].as_u64().unwrap_or(0),
            entries: v["entries"].as_u64().unwrap_or(0),
            bytes: v["bytes"].as_u64().unwrap_or(0),
        })
    }

    fn metric_series(&self, selector: Option<&str>, start: i64, end: i64) -> CliResult<Vec<Pairs>> {
        let params = [
            ("match[]", selector.unwrap_or("{__name__=~\".+\"}").to_string()),
            ("start", secs_param(start)),
            ("end", secs_param(end)),
        ];
        let data = self.data("/api/v1/series", &params, false)?;
        let mut v: Vec<Pairs> = data.as_array().map(|a| a.iter().map(json_pairs).collect()).unwrap_or_default();
        v.sort();
        Ok(v)
    }
}

// ---------------------------------------------------------------- offline

/// A data directory, opened read-only.
pub struct Offline {
    dir: PathBuf,
    tenant: String,
    logs: OnceLock<Result<LogStore, String>>,
    metrics: OnceLock<Result<MetricsStore, String>>,
}

impl Offline {
    /// Checks `dir` looks like a Cairn data directory; the stores are
    /// opened on first use.
    pub fn new(dir: &Path, tenant: Option<String>) -> CliResult<Offline> {
        let logs = cairn_store::layout::logs_dir(dir);
        let metrics = cairn_store::layout::metrics_dir(dir);
        if !dir.is_dir() {
            return Err(CliError::Store(format!("data directory {} does not exist", dir.display())));
        }
        if !logs.is_dir() && !metrics.is_dir() {
            return Err(CliError::Store(format!(
                "{} is not a Cairn data directory (no {}/ or {}/ in it)",
                dir.display(),
                cairn_store::layout::LOGS_DIR,
                cairn_store::layout::METRICS_DIR
            )));
        }
        Ok(Offline {
            dir: dir.to_path_buf(),
            tenant: tenant.unwrap_or_else(|| cairn_wire::DEFAULT_TENANT.to_string()),
            logs: OnceLock::new(),
            metrics: OnceLock::new(),
        })
    }

    /// The log store (opened read-only on first use).
    pub fn logs(&self) -> CliResult<&LogStore> {
        let r = self.logs.get_or_init(|| {
            let d = cairn_store::layout::logs_dir(&self.dir);
            LogStore::open_read_only(&d).map_err(|e| format!("cannot read the log store in {}: {e}", d.display()))
        });
        r.as_ref().map_err(|e| CliError::Store(e.clone()))
    }

    fn metrics(&self) -> CliResult<&MetricsStore> {
        let r = self.metrics.get_or_init(|| {
            let d = cairn_store::layout::metrics_dir(&self.dir);
            MetricsStore::open_read_only(&d)
                .map_err(|e| format!("cannot read the metrics store in {}: {e}", d.display()))
        });
        r.as_ref().map_err(|e| CliError::Store(e.clone()))
    }

    fn selector(q: &str) -> CliResult<Vec<Matcher>> {
        match logql::parse(q).map_err(|e| CliError::Usage(e.to_string()))? {
            Expr::Log(sel) => Ok(sel.matchers),
            Expr::Sample(_) => Err(CliError::Usage(format!("expected a stream selector, got a metric query: {q}"))),
        }
    }
}

fn eval_err(e: logql::EvalError) -> CliError {
    match e {
        logql::EvalError::Store(_) => CliError::Store(e.to_string()),
        _ => CliError::Usage(e.to_string()),
    }
}

fn metric_from_logql(v: MetricValue) -> Metric {
    match v {
        MetricValue::Scalar(t, x) => Metric::Scalar(t, format_float(x)),
        MetricValue::Vector(t, samples) => {
            Metric::Vector(samples.iter().map(|s| (pairs(&s.labels), t, format_float(s.value))).collect())
        }
        MetricValue::Matrix(series) => Metric::Matrix(
            series
                .iter()
                .map(|s| (pairs(&s.labels), s.points.iter().map(|(t, x)| (*t, format_float(*x))).collect()))
                .collect(),
        ),
    }
}

fn prom_err(e: promql::QueryError) -> CliError {
    CliError::Usage(e.to_string())
}

impl Backend for Offline {
    fn describe(&self) -> String {
        format!("data directory {}", self.dir.display())
    }

    fn log_query(
        &self,
        q: &str,
        start: i64,
        end: i64,
        limit: usize,
        dir: Dir,
        categorize: bool,
    ) -> CliResult<Vec<Stream>> {
        let sel = match logql::parse(q).map_err(|e| CliError::Usage(e.to_string()))? {
            Expr::Log(sel) => sel,
            Expr::Sample(_) => return Err(CliError::Usage(format!("{q} is a metric query, not a log query"))),
        };
        let lq = LogQuery {
            tenant: &self.tenant,
            start,
            end,
            limit,
            direction: if dir == Dir::Forward { Direction::Forward } else { Direction::Backward },
            categorize,
            ctl: &logql::QueryCtl::default(),
        };
        let res = logql::eval_log_query(self.logs()?, &sel, &lq).map_err(eval_err)?;
        Ok(res
            .into_iter()
            .map(|s| Stream {
                labels: pairs(&s.labels),
                entries: s
                    .entries
                    .into_iter()
                    .map(|e| {
                        let mut extra = e.metadata;
                        extra.sort();
                        let mut parsed = e.parsed;
                        parsed.sort();
                        extra.extend(parsed);
                        LogLine { ts: e.ts, line: e.line, extra }
                    })
                    .collect(),
            })
            .collect())
    }

    fn log_metric(&self, q: &str, start: i64, end: i64, step: Option<i64>) -> CliResult<Metric> {
        let e = match logql::parse(q).map_err(|e| CliError::Usage(e.to_string()))? {
            Expr::Sample(e) => e,
            Expr::Log(_) => return Err(CliError::Usage(format!("{q} is a log query, not a metric query"))),
        };
        let ctl = logql::QueryCtl::default();
        let mq = match step {
            Some(step) => MetricQuery { tenant: &self.tenant, start, end, step, ctl: &ctl },
            None => MetricQuery { tenant: &self.tenant, start: end, end, step: 0, ctl: &ctl },
        };
        Ok(metric_from_logql(logql::eval_metric(self.logs()?, &e, &mq).map_err(eval_err)?))
    }

    fn promql(&self, q: &str, start: i64, end: i64, step: Option<i64>) -> CliResult<Metric> {
        let store = self.metrics()?;
        let opts = promql::QueryOptions::default();
        match step {
            Some(step) => {
                let expr = promql::parse_for(q, step, end - start).map_err(prom_err)?;
                let m = promql::range_query(store, &self.tenant, &expr, start, end, step, &opts).map_err(prom_err)?;
                Ok(Metric::Matrix(
                    m.iter()
                        .map(|s| (pairs(&s.labels), s.points.iter().map(|(t, v)| (*t, format_float(*v))).collect()))
                        .collect(),
                ))
            }
            None => {
                let expr = promql::parse(q).map_err(prom_err)?;
                Ok(match promql::instant_query(store, &self.tenant, &expr, end, &opts).map_err(prom_err)? {
                    promql::Value::Scalar(t, v) => Metric::Scalar(t, format_float(v)),
                    promql::Value::String(t, s) => Metric::Str(t, s),
                    promql::Value::Vector(vs) => {
                        Metric::Vector(vs.iter().map(|s| (pairs(&s.labels), end, format_float(s.v))).collect())
                    }
                    promql::Value::Matrix(m) => Metric::Matrix(
                        m.iter()
                            .map(|s| (pairs(&s.labels), s.points.iter().map(|(t, v)| (*t, format_float(*v))).collect()))
                            .collect(),
                    ),
                })
            }
        }
    }

    fn log_series(&self, selector: Option<&str>, start: i64, end: i64) -> CliResult<Vec<Pairs>> {
        let matchers = match selector {
            Some(s) => Self::selector(s)?,
            None => Vec::new(),
        };
        Ok(self.logs()?.streams(&self.tenant, &matchers, start, end).iter().map(|(l, _)| pairs(l)).collect())
    }

    fn log_stats(&self, selector: &str, start: i64, end: i64) -> CliResult<Stats> {
        let matchers = Self::selector(selector)?;
        let mut st = Stats::default();
        for (_, s) in self.logs()?.streams(&self.tenant, &matchers, start, end) {
            st.streams += 1;
            st.entries += s.entries;
            st.bytes += s.bytes;
        }
        Ok(st)
    }

    fn metric_series(&self, selector: Option<&str>, start: i64, end: i64) -> CliResult<Vec<Pairs>> {
        let groups = match selector {
            Some(s) => promql::parse_series_selector(s).map_err(prom_err)?,
            None => vec![vec![]],
        };
        let store = self.metrics()?;
        let mut out: Vec<Pairs> = Vec::new();
        for g in groups {
            out.extend(store.series(&self.tenant, &g, start, end).iter().map(pairs));
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}
