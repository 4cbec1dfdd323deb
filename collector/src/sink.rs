//! Where collected data goes: the [`Sink`] trait, and [`HttpSink`], which
//! speaks the public protocols — Prometheus remote_write 1.0 for metrics and
//! the Loki push API for logs, both protobuf + snappy — so the receiver can
//! be a Cairn aggregator, Prometheus, VictoriaMetrics, Mimir or Loki.
//!
//! A sink answers each batch with success, a retryable error (the batch will
//! be sent again, unchanged, after a backoff) or a permanent error (the
//! receiver refused the batch's content; it is dropped and counted).

use std::future::Future;
use std::time::Duration;

use cairn_wire::proto::{
    EntryAdapter, Label, LabelPairAdapter, MetricMetadata, PushRequest, Sample, StreamAdapter, TimeSeries, Timestamp,
    WriteRequest, snappy_compress,
};
use cairn_wire::{SeriesSamples, StreamEntries};
use prost::Message;

use crate::config::{PushConfig, check_url};

/// Why a push failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying unchanged: the receiver was unreachable, timed out,
    /// overloaded (HTTP 429) or failed (HTTP 5xx).
    #[error("retryable push failure: {0}")]
    Retryable(String),
    /// The receiver is rate-limiting (HTTP 429 or 503 with `Retry-After`):
    /// retry, but not before `retry_after`.
    #[error("push throttled: {msg}")]
    Throttled {
        /// What the receiver said.
        msg: String,
        /// Its `Retry-After`, capped at [`MAX_RETRY_AFTER`].
        retry_after: std::time::Duration,
    },
    /// The receiver refused the content (HTTP 4xx other than 429); sending it
    /// again would fail again, so the batch is dropped and counted.
    #[error("push refused: {0}")]
    Permanent(String),
}

impl SinkError {
    /// True for [`SinkError::Retryable`] and [`SinkError::Throttled`].
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Retryable(_) | SinkError::Throttled { .. })
    }

    /// The least wait before a retry the receiver asked for (zero if none).
    pub fn retry_after(&self) -> std::time::Duration {
        match self {
            SinkError::Throttled { retry_after, .. } => *retry_after,
            _ => std::time::Duration::ZERO,
        }
    }
}

/// Longest `Retry-After` honoured: a receiver asking for more is retried
/// after this, so a misconfigured limit cannot park the collector for hours.
pub const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// `Retry-After` in seconds (the HTTP-date form is not used by Loki,
/// Prometheus or Cairn), capped at [`MAX_RETRY_AFTER`].
fn parse_retry_after(v: Option<&reqwest::header::HeaderValue>) -> Option<std::time::Duration> {
    let secs: u64 = v?.to_str().ok()?.trim().parse().ok()?;
    Some(std::time::Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// A destination for collected metrics and logs. Implementations must be
/// cancel-safe in the sense that a dropped push future may or may not have
/// delivered its batch (the collector then sends it again: at-least-once).
pub trait Sink: Send + Sync + 'static {
    /// Delivers metric samples; `Ok` means the receiver has accepted them.
    fn push_metrics(&self, batch: Vec<SeriesSamples>) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// Delivers log entries; `Ok` means the receiver has accepted them, and
    /// only then are the files' positions checkpointed.
    fn push_logs(&self, batch: Vec<StreamEntries>) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// Delivers log entries already encoded as a Loki push body (protobuf,
    /// snappy block format), as the on-disk queue holds them. The default
    /// decodes the body and calls [`Sink::push_logs`]; [`HttpSink`] sends
    /// it as it is.
    fn push_log_body(&self, body: Vec<u8>) -> impl Future<Output = Result<(), SinkError>> + Send {
        async move {
            let streams = decode_push_request(&body).map_err(SinkError::Permanent)?;
            self.push_logs(streams).await
        }
    }
    /// Delivers the type and help of metric families (remote_write
    /// metadata), sent now and then beside the samples as Prometheus does.
    /// Best effort; the default drops them.
    fn push_metadata(&self, metadata: Vec<MetricMetadata>) -> impl Future<Output = Result<(), SinkError>> + Send {
        let _ = metadata;
        async { Ok(()) }
    }
}

/// The HTTP sink could not be set up from its configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkSetupError {
    /// No URL for metrics or logs.
    #[error("no {what} URL: set collector.push.url (or collector.push.{key})")]
    NoUrl {
        /// "metrics" or "logs".
        what: &'static str,
        /// The overriding key, `metrics_url` or `logs_url`.
        key: &'static str,
    },
    /// A URL is unusable.
    #[error("collector.push: {0}")]
    BadUrl(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// The bearer token could not be read.
    #[error("collector.push.bearer_token_file: {0}")]
    Token(String),
    /// The CA file could not be read.
    #[error("collector.push.ca_file: {0}")]
    Ca(String),
}

/// Pushes over HTTP: remote_write 1.0 to the metrics URL and Loki push
/// (protobuf) to the logs URL, with `X-Scope-OrgID` when a tenant is set.
#[derive(Debug, Clone)]
pub struct HttpSink {
    client: reqwest::Client,
    metrics_url: String,
    logs_url: String,
    tenant: Option<String>,
    bearer: Option<Secret>,
    retry_auth_errors: bool,
}

/// A header value kept out of `Debug` output.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// `User-Agent` of every push.
pub const USER_AGENT: &str = concat!("cairn-collector/", env!("CARGO_PKG_VERSION"));

/// Longest part of a receiver's error body kept in an error message.
const MAX_ERROR_BODY: usize = 1024;

impl HttpSink {
    /// Builds the sink from `[collector.push]`: URLs are resolved (the
    /// overrides, else `url` + the standard paths) and checked.
    pub fn new(cfg: &PushConfig) -> Result<HttpSink, SinkSetupError> {
        let metrics_url =
            cfg.resolved_metrics_url().ok_or(SinkSetupError::NoUrl { what: "metrics", key: "metrics_url" })?;
        let logs_url = cfg.resolved_logs_url().ok_or(SinkSetupError::NoUrl { what: "logs", key: "logs_url" })?;
        check_url(&metrics_url).map_err(SinkSetupError::BadUrl)?;
        check_url(&logs_url).map_err(SinkSetupError::BadUrl)?;
        let timeout = if cfg.timeout.0.is_zero() { Duration::from_secs(10) } else { cfg.timeout.0 };
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)));
        if !cfg.ca_file.as_os_str().is_empty() {
            let pem = std::fs::read(&cfg.ca_file)
                .map_err(|e| SinkSetupError::Ca(format!("{}: {e}", cfg.ca_file.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| SinkSetupError::Ca(format!("{}: {e}", cfg.ca_file.display())))?;
            if certs.is_empty() {
                return Err(SinkSetupError::Ca(format!("{}: no PEM certificate in it", cfg.ca_file.display())));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build().map_err(|e| SinkSetupError::Client(e.to_string()))?;
        let tenant = Some(cfg.tenant.trim().to_string()).filter(|t| !t.is_empty());
        let token = if cfg.bearer_token_file.as_os_str().is_empty() {
            cfg.bearer_token.trim().to_string()
        } else {
            std::fs::read_to_string(&cfg.bearer_token_file)
                .map_err(|e| SinkSetupError::Token(format!("{}: {e}", cfg.bearer_token_file.display())))?
                .trim()
                .to_string()
        };
        if token.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
            return Err(SinkSetupError::Token("the bearer token must be printable ASCII".into()));
        }
        let bearer = Some(token).filter(|t| !t.is_empty()).map(|t| Secret(format!("Bearer {t}")));
        Ok(HttpSink { client, metrics_url, logs_url, tenant, bearer, retry_auth_errors: cfg.retry_auth_errors })
    }

    /// The remote_write URL in use.
    pub fn metrics_url(&self) -> &str {
        &self.metrics_url
    }

    /// The Loki push URL in use.
    pub fn logs_url(&self) -> &str {
        &self.logs_url
    }

    async fn post(&self, url: &str, body: Vec<u8>, remote_write: bool) -> Result<(), SinkError> {
        let mut req = self.client.post(url).header("Content-Type", "application/x-protobuf").body(body);
        if remote_write {
            req = req.header("Content-Encoding", "snappy").header("X-Prometheus-Remote-Write-Version", "0.1.0");
        }
        if let Some(t) = &self.tenant {
            req = req.header("X-Scope-OrgID", t.as_str());
        }
        if let Some(b) = &self.bearer {
            req = req.header("Authorization", b.0.as_str());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_builder() => {
                return Err(SinkError::Permanent(format!("cannot build request to {url}: {e}")));
            }
            Err(e) => return Err(SinkError::Retryable(format!("POST {url}: {}", error_chain(&e)))),
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = parse_retry_after(resp.headers().get(reqwest::header::RETRY_AFTER));
        let body = resp.bytes().await.map(|b| body_excerpt(&b)).unwrap_or_default();
        let msg = format!("POST {url}: HTTP {status}: {body}");
        if let Some(retry_after) = retry_after
            && (status.as_u16() == 429 || status.is_server_error())
        {
            return Err(SinkError::Throttled { msg, retry_after });
        }
        // 401/403: the credentials (collector.push.bearer_token or the
        // aggregator's [auth]) are wrong, not the data; with
        // `retry_auth_errors` it stays queued until an operator fixes them.
        let auth = matches!(status.as_u16(), 401 | 403);
        if status.as_u16() == 429 || status.is_server_error() || (auth && self.retry_auth_errors) {
            Err(SinkError::Retryable(msg))
        } else {
            Err(SinkError::Permanent(msg))
        }
    }
}

impl Sink for HttpSink {
    async fn push_metrics(&self, batch: Vec<SeriesSamples>) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let body = encode_off_reactor(move || encode_write_request(&batch)).await?;
        self.post(&self.metrics_url, body, true).await
    }

    async fn push_logs(&self, batch: Vec<StreamEntries>) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let body = encode_off_reactor(move || encode_push_request(&batch)).await?;
        self.post(&self.logs_url, body, false).await
    }

    async fn push_log_body(&self, body: Vec<u8>) -> Result<(), SinkError> {
        self.post(&self.logs_url, body, false).await
    }

    async fn push_metadata(&self, metadata: Vec<MetricMetadata>) -> Result<(), SinkError> {
        if metadata.is_empty() {
            return Ok(());
        }
        let body = snappy_compress(&WriteRequest { timeseries: Vec::new(), metadata }.encode_to_vec());
        self.post(&self.metrics_url, body, true).await
    }
}

/// Encoding and compression are CPU work: keep them off the async reactor.
async fn encode_off_reactor(f: impl FnOnce() -> Vec<u8> + Send + 'static) -> Result<Vec<u8>, SinkError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| SinkError::Retryable(format!("encoding task failed: {e}")))
}

/// The text of an error and its sources ("error sending request: connection refused").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn body_excerpt(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s = s.trim();
    if s.len() <= MAX_ERROR_BODY {
        return s.to_string();
    }
    let mut end = MAX_ERROR_BODY;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A remote_write 1.0 body: `prometheus.WriteRequest`, snappy block format.
/// Samples of each series are sent in timestamp order.
pub fn encode_write_request(batch: &[SeriesSamples]) -> Vec<u8> {
    let req = WriteRequest {
        timeseries: batch
            .iter()
            .map(|s| {
                let mut samples: Vec<Sample> =
                    s.samples.iter().map(|&(timestamp, value)| Sample { value, timestamp }).collect();
                samples.sort_by_key(|x| x.timestamp);
                TimeSeries {
                    labels: s.labels.iter().map(|l| Label { name: l.name.clone(), value: l.value.clone() }).collect(),
                    samples,
                    histograms: Vec::new(),
                }
            })
            .collect(),
        metadata: Vec::new(),
    };
    snappy_compress(&req.encode_to_vec())
}

/// Decodes a body made by [`encode_push_request`].
pub fn decode_push_request(body: &[u8]) -> Result<Vec<StreamEntries>, String> {
    let raw = cairn_wire::proto::snappy_decompress(body, 1 << 30).map_err(|e| format!("queued batch: {e}"))?;
    let req = PushRequest::decode(raw.as_slice()).map_err(|e| format!("queued batch: {e}"))?;
    req.streams
        .into_iter()
        .map(|s| {
            let labels = cairn_wire::Labels::parse(&s.labels).map_err(|e| format!("queued batch: labels: {e}"))?;
            let entries = s
                .entries
                .into_iter()
                .map(|e| cairn_wire::Entry {
                    ts: e.timestamp.map_or(0, Timestamp::to_ns),
                    line: String::from_utf8(e.line)
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                    metadata: e.structured_metadata.into_iter().map(|p| (p.name, p.value)).collect(),
                })
                .collect();
            Ok(StreamEntries { labels, entries })
        })
        .collect()
}

/// A Loki push body: `logproto.PushRequest`, snappy block format.
pub fn encode_push_request(batch: &[StreamEntries]) -> Vec<u8> {
    let req = PushRequest {
        streams: batch
            .iter()
            .map(|s| StreamAdapter {
                labels: s.labels.to_string(),
                entries: s
                    .entries
                    .iter()
                    .map(|e| EntryAdapter {
                        timestamp: Some(Timestamp::from_ns(e.ts)),
                        line: e.line.as_bytes().to_vec(),
                        structured_metadata: e
                            .metadata
                            .iter()
                            .map(|(n, v)| LabelPairAdapter { name: n.clone(), value: v.clone() })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    };
    snappy_compress(&req.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_wire::proto::snappy_decompress;
    use cairn_wire::{Entry, Labels};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One request as the test server saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        head: String,
        body: Vec<u8>,
    }

    /// A minimal HTTP/1.1 server answering every request with `status` and
    /// `reply`, recording what it received. One request per connection.
    async fn server(status: u16, reply: &'static str) -> (String, Arc<Mutex<Vec<Seen>>>) {
        server_with(status, "", reply).await
    }

    /// [`server`] adding `extra` (header lines, each ending in `\r\n`).
    async fn server_with(status: u16, extra: &'static str, reply: &'static str) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut c, _)) = l.accept().await else { return };
                let seen = s2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    let head_end = loop {
                        let n = c.read(&mut tmp).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&tmp[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let n = c.read(&mut tmp).await.unwrap();
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&tmp[..n]);
                    }
                    seen.lock().unwrap().push(Seen { head, body: buf[head_end..].to_vec() });
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{reply}",
                        reply.len()
                    );
                    let _ = c.write_all(resp.as_bytes()).await;
                });
            }
        });
        (format!("http://{addr}"), seen)
    }

    fn cfg(url: &str) -> PushConfig {
        PushConfig { url: url.into(), tenant: "team-a".into(), bearer_token: "s3cret".into(), ..PushConfig::default() }
    }

    fn has_header(head: &str, name: &str, value: &str) -> bool {
        head.lines().any(|l| l.split_once(':').is_some_and(|(n, v)| n.eq_ignore_ascii_case(name) && v.trim() == value))
    }

    #[tokio::test]
    async fn sends_remote_write_and_loki_push() {
        let (url, seen) = server(204, "").await;
        let sink = HttpSink::new(&cfg(&url)).unwrap();
        let labels = Labels::from_pairs([("__name__", "node_load1"), ("instance", "h")]).unwrap();
        sink.push_metrics(vec![SeriesSamples { labels: labels.clone(), samples: vec![(2000, 2.0), (1000, 1.5)] }])
            .await
            .unwrap();
        let stream = Labels::from_pairs([("job", "varlogs"), ("filename", "/var/log/x.log")]).unwrap();
        sink.push_logs(vec![StreamEntries {
            labels: stream.clone(),
            entries: vec![Entry { ts: 1_500_000_000_000_000_123, line: "hello ü".into(), metadata: vec![] }],
        }])
        .await
        .unwrap();

        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        let m = seen.iter().find(|s| s.head.starts_with("POST /api/v1/write ")).unwrap();
        for (n, v) in [
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "snappy"),
            ("x-prometheus-remote-write-version", "0.1.0"),
            ("user-agent", USER_AGENT),
            ("x-scope-orgid", "team-a"),
            ("authorization", "Bearer s3cret"),
        ] {
            assert!(has_header(&m.head, n, v), "{n}: {v} missing in {}", m.head);
        }
        let wr = WriteRequest::decode(snappy_decompress(&m.body, 1 << 20).unwrap().as_slice()).unwrap();
        assert_eq!(wr.timeseries.len(), 1);
        assert_eq!(wr.timeseries[0].labels[0].name, "__name__");
        assert_eq!(
            wr.timeseries[0].samples,
            vec![Sample { value: 1.5, timestamp: 1000 }, Sample { value: 2.0, timestamp: 2000 }]
        );

        let l = seen.iter().find(|s| s.head.starts_with("POST /loki/api/v1/push ")).unwrap();
        assert!(has_header(&l.head, "content-type", "application/x-protobuf"));
        assert!(has_header(&l.head, "x-scope-orgid", "team-a"));
        let pr = PushRequest::decode(snappy_decompress(&l.body, 1 << 20).unwrap().as_slice()).unwrap();
        assert_eq!(Labels::parse(&pr.streams[0].labels).unwrap(), stream);
        let e = &pr.streams[0].entries[0];
        assert_eq!(e.timestamp.unwrap().to_ns(), 1_500_000_000_000_000_123);
        assert_eq!(e.line, "hello ü".as_bytes());
    }

    #[tokio::test]
    async fn classifies_failures() {
        let batch = || {
            vec![SeriesSamples { labels: Labels::from_pairs([("__name__", "x")]).unwrap(), samples: vec![(1, 1.0)] }]
        };

        let (url, _) = server(503, "ingester unavailable").await;
        let e = HttpSink::new(&cfg(&url)).unwrap().push_metrics(batch()).await.unwrap_err();
        assert!(e.is_retryable() && e.to_string().contains("ingester unavailable"), "{e}");

        let (url, _) = server(429, "slow down").await;
        let e = HttpSink::new(&cfg(&url)).unwrap().push_metrics(batch()).await.unwrap_err();
        assert!(e.is_retryable() && e.retry_after().is_zero(), "{e}");
        // Retry-After is honoured (as a lower bound on the backoff), capped.
        for (header, want) in [("retry-after: 7\r\n", 7), ("Retry-After: 99999\r\n", 300)] {
            let (url, _) = server_with(429, header, "rate limited").await;
            let e = HttpSink::new(&cfg(&url)).unwrap().push_logs(vec![]).await;
            assert!(e.is_ok(), "an empty batch is not sent");
            let e = HttpSink::new(&cfg(&url)).unwrap().push_metrics(batch()).await.unwrap_err();
            assert!(matches!(&e, SinkError::Throttled { msg, .. } if msg.contains("rate limited")), "{e}");
            assert!(e.is_retryable());
            assert_eq!(e.retry_after(), std::time::Duration::from_secs(want));
        }
        // on a 400 it changes nothing: still refused for good
        let (url, _) = server_with(400, "retry-after: 5\r\n", "bad").await;
        let e = HttpSink::new(&cfg(&url)).unwrap().push_metrics(batch()).await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");

        for status in [401, 403] {
            let (url, _) = server(status, "invalid bearer token").await;
            let e = HttpSink::new(&cfg(&url)).unwrap().push_metrics(batch()).await.unwrap_err();
            assert!(!e.is_retryable() && e.to_string().contains("invalid bearer token"), "{e}");
            let retrying = PushConfig { retry_auth_errors: true, ..cfg(&url) };
            let e = HttpSink::new(&retrying).unwrap().push_metrics(batch()).await.unwrap_err();
            assert!(e.is_retryable() && e.to_string().contains("invalid bearer token"), "{e}");
        }

        let (url, _) = server(400, "out of order sample").await;
        let e = HttpSink::new(&cfg(&url)).unwrap().push_metrics(batch()).await.unwrap_err();
        assert!(matches!(&e, SinkError::Permanent(m) if m.contains("out of order sample") && m.contains("400")), "{e}");

        // Nobody listening: a connect error, retryable.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = HttpSink::new(&cfg(&format!("http://{addr}"))).unwrap().push_metrics(batch()).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
    }

    #[test]
    fn setup_errors() {
        assert!(matches!(HttpSink::new(&PushConfig::default()), Err(SinkSetupError::NoUrl { what: "metrics", .. })));
        let c = PushConfig { metrics_url: "http://a/api/v1/write".into(), ..PushConfig::default() };
        assert!(matches!(HttpSink::new(&c), Err(SinkSetupError::NoUrl { what: "logs", .. })));
        let c = PushConfig {
            metrics_url: "http://a:9090/api/v1/write".into(),
            logs_url: "http://b:3100/loki/api/v1/push".into(),
            ..PushConfig::default()
        };
        let s = HttpSink::new(&c).unwrap();
        assert_eq!(s.metrics_url(), "http://a:9090/api/v1/write");
        assert_eq!(s.logs_url(), "http://b:3100/loki/api/v1/push");
        assert!(matches!(HttpSink::new(&cfg("ftp://x")), Err(SinkSetupError::BadUrl(_))));
    }
}
