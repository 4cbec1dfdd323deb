//! Scraping Prometheus `/metrics` endpoints from a static list
//! (`[[collector.scrape]]`) or discovered on Kubernetes ([`crate::kube`]),
//! with Prometheus's semantics:
//!
//! - **Request**: `GET http://<target><path>` with Prometheus's `Accept`
//!   header (OpenMetrics preferred, text 0.0.4 accepted) and
//!   `X-Prometheus-Scrape-Timeout-Seconds`; the response's `Content-Type`
//!   picks the parser ([`parse`]). Bodies over `body_size_limit` fail the
//!   scrape.
//! - **Target labels**: `job`, `instance` (the target as written,
//!   `host:port`) and the group's `labels`.
//! - **`honor_labels = false`** (default): a scraped label that clashes
//!   with a target label is kept as `exported_<name>` (`exported_job`,
//!   `exported_instance`, …; repeated `exported_` while that name is taken
//!   too) and the target label wins. **`honor_labels = true`**: the scraped
//!   value wins and the target label is dropped for that series (use it for
//!   federation or a Pushgateway). Empty label values mean "no label".
//! - **`honor_timestamps = true`** (default): a sample's own timestamp is
//!   kept; otherwise every sample gets the scrape's start time.
//! - **Report series**, with the target labels only, as Prometheus adds
//!   them: `up` (1 scraped and parsed, 0 failed), `scrape_duration_seconds`,
//!   `scrape_samples_scraped`, `scrape_samples_post_metric_relabeling`
//!   (equal: there is no metric relabelling).
//! - A failed scrape (connection, HTTP status other than 200, timeout,
//!   oversize body, any malformed line) stores no sample of the target, only
//!   the report series with `up 0`.
//!
//! Not done (yet): staleness markers for series that disappear,
//! relabelling, auth,
//! `sample_limit`, native histograms, gzip responses.

pub mod parse;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_wire::proto::MetricMetadata;
use cairn_wire::{Labels, METRIC_NAME, SeriesSamples};

use crate::config::ScrapeConfig;
use parse::{Entry, Format, Parser, SampleLabels};

/// `Accept` header of a scrape, as Prometheus 2.x sends it.
pub const ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

/// Most metric families whose metadata is remembered per target.
const MAX_FAMILIES: usize = 10_000;

/// Why a scrape failed (`up 0`).
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// Connection, timeout or transfer failure.
    #[error("GET {url}: {reason}")]
    Http {
        /// The scrape URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The target answered with a status other than 200.
    #[error("GET {url}: HTTP {status}")]
    Status {
        /// The scrape URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The body is larger than `body_size_limit`.
    #[error("GET {url}: body larger than {limit} bytes")]
    TooLarge {
        /// The scrape URL.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// The exposition is malformed.
    #[error("GET {url}: {source}")]
    Parse {
        /// The scrape URL.
        url: String,
        /// Where and what.
        source: parse::ParseError,
    },
}

/// How a target's samples are labelled (see the module doc).
#[derive(Debug, Clone)]
pub struct TargetLabels {
    /// `job`, `instance` and the static labels, sorted by name.
    pub labels: Vec<(String, String)>,
    /// Keep scraped labels that clash with target labels.
    pub honor_labels: bool,
    /// Keep the timestamps the target gives.
    pub honor_timestamps: bool,
}

/// What one parse produced besides the samples.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParseOutcome {
    /// Samples read from the exposition.
    pub samples: usize,
}

/// Parses `text` and appends one [`SeriesSamples`] per sample to `out`,
/// labelled for `target`; family metadata goes to `meta`. On error nothing
/// is appended (the target's scrape is all or nothing).
pub fn append_exposition(
    text: &str,
    format: Format,
    target: &TargetLabels,
    ts_ms: i64,
    out: &mut Vec<SeriesSamples>,
    meta: &mut BTreeMap<String, (parse::Kind, String)>,
) -> Result<ParseOutcome, parse::ParseError> {
    let start_len = out.len();
    let res = append_inner(text, format, target, ts_ms, out, meta);
    if res.is_err() {
        out.truncate(start_len);
    }
    res
}

fn append_inner(
    text: &str,
    format: Format,
    target: &TargetLabels,
    ts_ms: i64,
    out: &mut Vec<SeriesSamples>,
    meta: &mut BTreeMap<String, (parse::Kind, String)>,
) -> Result<ParseOutcome, parse::ParseError> {
    let mut p = Parser::new(text, format);
    let mut labels: SampleLabels<'_> = Vec::new();
    let mut n = 0;
    while let Some(e) = p.next_entry(&mut labels)? {
        match e {
            Entry::Sample { name, value, timestamp_ms } => {
                n += 1;
                let mut pairs: Vec<(Cow<'_, str>, &str)> = Vec::with_capacity(labels.len() + target.labels.len() + 1);
                pairs.push((Cow::Borrowed(METRIC_NAME), name));
                for (k, v) in &labels {
                    if v.is_empty() {
                        continue;
                    }
                    let clash = target.labels.iter().any(|(tk, _)| tk == k);
                    if clash && !target.honor_labels {
                        let mut renamed = format!("exported_{k}");
                        while labels.iter().any(|(o, _)| *o == renamed)
                            || target.labels.iter().any(|(tk, _)| *tk == renamed)
                        {
                            renamed.insert_str(0, "exported_");
                        }
                        pairs.push((Cow::Owned(renamed), v.as_ref()));
                    } else {
                        pairs.push((Cow::Borrowed(*k), v.as_ref()));
                    }
                }
                for (k, v) in &target.labels {
                    let scraped = labels.iter().any(|(sk, sv)| sk == k && !sv.is_empty());
                    if !(scraped && target.honor_labels) {
                        pairs.push((Cow::Borrowed(k.as_str()), v.as_str()));
                    }
                }
                // Names were checked by the parser and renaming avoids
                // clashes, so this fails only on a label the parser let
                // through twice; the scrape then fails as a whole.
                let l = Labels::from_pairs(pairs.iter().map(|(k, v)| (k.as_ref(), *v)))
                    .map_err(|e| parse::ParseError { line: 0, reason: format!("sample {name}: {e}") })?;
                let ts = match timestamp_ms {
                    Some(t) if target.honor_timestamps => t,
                    _ => ts_ms,
                };
                out.push(SeriesSamples { labels: l, samples: vec![(ts, value)] });
            }
            Entry::Type { name, kind } => {
                if meta.len() < MAX_FAMILIES || meta.contains_key(name) {
                    meta.entry(name.to_string()).or_insert_with(|| (kind, String::new())).0 = kind;
                }
            }
            Entry::Help { name, help } => {
                if meta.len() < MAX_FAMILIES || meta.contains_key(name) {
                    meta.entry(name.to_string()).or_insert_with(|| (parse::Kind::Unknown, String::new())).1 =
                        help.into_owned();
                }
            }
            Entry::Unit { .. } => {}
        }
    }
    Ok(ParseOutcome { samples: n })
}

/// One target of a `[[collector.scrape]]` group.
#[derive(Debug)]
pub struct Scraper {
    client: reqwest::Client,
    url: String,
    timeout: Duration,
    body_limit: u64,
    target: TargetLabels,
    meta: BTreeMap<String, (parse::Kind, String)>,
    last_error: Option<String>,
}

impl Scraper {
    /// A scraper of `target` (`host:port`) of `cfg`. The config must have
    /// been validated.
    pub fn new(cfg: &ScrapeConfig, target: &str, client: reqwest::Client) -> Scraper {
        let mut labels: Vec<(String, String)> =
            vec![("job".to_string(), cfg.job.clone()), ("instance".to_string(), target.to_string())];
        for (k, v) in &cfg.labels {
            labels.retain(|(n, _)| n != k);
            labels.push((k.clone(), v.clone()));
        }
        labels.sort();
        Scraper::with_target(
            cfg.url_of(target),
            TargetLabels { labels, honor_labels: cfg.honor_labels, honor_timestamps: cfg.honor_timestamps },
            cfg.timeout.0,
            cfg.body_size_limit.0,
            client,
        )
    }

    /// A scraper of `url` whose series get `target`'s labels (sorted by
    /// name); e.g. a discovered Kubernetes pod ([`crate::kube::PodTarget`]).
    pub fn with_target(
        url: String,
        target: TargetLabels,
        timeout: Duration,
        body_limit: u64,
        client: reqwest::Client,
    ) -> Scraper {
        Scraper { client, url, timeout, body_limit, target, meta: BTreeMap::new(), last_error: None }
    }

    /// The scrape URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Scrapes once at `ts_ms` and returns the target's samples plus the
    /// report series (`up`, …). Never fails: a failure is `up 0`.
    pub async fn scrape(&mut self, ts_ms: i64) -> Vec<SeriesSamples> {
        let started = Instant::now();
        let mut out = Vec::new();
        let res = self.fetch_and_parse(ts_ms, &mut out).await;
        let took = started.elapsed().as_secs_f64();
        let (up, scraped) = match res {
            Ok(n) => {
                if self.last_error.take().is_some() {
                    tracing::info!(url = %self.url, "scrape target is up again");
                }
                (1.0, n as f64)
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, "scrape failed");
                }
                self.last_error = Some(msg);
                (0.0, 0.0)
            }
        };
        for (name, v) in [
            ("up", up),
            ("scrape_duration_seconds", took),
            ("scrape_samples_scraped", scraped),
            ("scrape_samples_post_metric_relabeling", scraped),
        ] {
            let pairs = std::iter::once((METRIC_NAME, name))
                .chain(self.target.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            if let Ok(labels) = Labels::from_pairs(pairs) {
                out.push(SeriesSamples { labels, samples: vec![(ts_ms, v)] });
            }
        }
        out
    }

    async fn fetch_and_parse(&mut self, ts_ms: i64, out: &mut Vec<SeriesSamples>) -> Result<usize, ScrapeError> {
        let http = |reason: String| ScrapeError::Http { url: self.url.clone(), reason };
        let mut resp = self
            .client
            .get(&self.url)
            .timeout(self.timeout)
            .header("Accept", ACCEPT)
            .header("X-Prometheus-Scrape-Timeout-Seconds", format!("{}", self.timeout.as_secs_f64()))
            .send()
            .await
            .map_err(|e| http(crate::sink::error_chain(&e)))?;
        if resp.status().as_u16() != 200 {
            return Err(ScrapeError::Status { url: self.url.clone(), status: resp.status().as_u16() });
        }
        let format = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(Format::from_content_type)
            .unwrap_or(Format::Text);
        let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0).min(self.body_limit) as usize);
        while let Some(chunk) = resp.chunk().await.map_err(|e| http(e.to_string()))? {
            if body.len() as u64 + chunk.len() as u64 > self.body_limit {
                return Err(ScrapeError::TooLarge { url: self.url.clone(), limit: self.body_limit });
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&body);
        append_exposition(&text, format, &self.target, ts_ms, out, &mut self.meta)
            .map(|o| o.samples)
            .map_err(|source| ScrapeError::Parse { url: self.url.clone(), source })
    }

    /// Type and help of the families seen on this target, and of the report
    /// series.
    pub fn metadata(&self) -> Vec<MetricMetadata> {
        let report = [
            ("up", "gauge", "Whether the last scrape of the target succeeded (1) or failed (0)."),
            ("scrape_duration_seconds", "gauge", "Duration of the last scrape of the target."),
            ("scrape_samples_scraped", "gauge", "Samples the target exposed in the last scrape."),
            (
                "scrape_samples_post_metric_relabeling",
                "gauge",
                "Samples kept after metric relabelling in the last scrape.",
            ),
        ];
        let mut out: Vec<MetricMetadata> = report
            .iter()
            .map(|(n, k, h)| MetricMetadata {
                r#type: crate::node::metric_type_code(k),
                metric_family_name: n.to_string(),
                help: h.to_string(),
                unit: String::new(),
            })
            .collect();
        out.extend(self.meta.iter().map(|(name, (kind, help))| MetricMetadata {
            r#type: crate::node::metric_type_code(kind.as_str()),
            metric_family_name: name.clone(),
            help: help.clone(),
            unit: String::new(),
        }));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(honor: bool) -> TargetLabels {
        TargetLabels {
            labels: vec![
                ("env".into(), "prod".into()),
                ("instance".into(), "h:9100".into()),
                ("job".into(), "app".into()),
            ],
            honor_labels: honor,
            honor_timestamps: true,
        }
    }

    fn render(out: &[SeriesSamples]) -> Vec<String> {
        out.iter().map(|s| format!("{} {:?}", s.labels, s.samples)).collect()
    }

    #[test]
    fn target_labels_and_honor_labels() {
        let text = "# TYPE reqs counter\n# HELP reqs Requests.\nreqs{job=\"inner\",code=\"200\",exported_job=\"x\",empty=\"\"} 5 1000\nplain 1\n";
        let mut out = Vec::new();
        let mut meta = BTreeMap::new();
        let o = append_exposition(text, Format::Text, &target(false), 7, &mut out, &mut meta).unwrap();
        assert_eq!(o.samples, 2);
        assert_eq!(
            render(&out),
            [
                r#"{__name__="reqs", code="200", env="prod", exported_exported_job="inner", exported_job="x", instance="h:9100", job="app"} [(1000, 5.0)]"#,
                r#"{__name__="plain", env="prod", instance="h:9100", job="app"} [(7, 1.0)]"#,
            ]
        );
        assert_eq!(meta.get("reqs"), Some(&(parse::Kind::Counter, "Requests.".to_string())));

        let mut out = Vec::new();
        let mut t = target(true);
        t.honor_timestamps = false;
        append_exposition("reqs{job=\"inner\",instance=\"\"} 5 1000\n", Format::Text, &t, 7, &mut out, &mut meta)
            .unwrap();
        assert_eq!(render(&out), [r#"{__name__="reqs", env="prod", instance="h:9100", job="inner"} [(7, 5.0)]"#]);
    }

    #[test]
    fn a_bad_line_drops_the_whole_scrape() {
        let mut out = vec![];
        let mut meta = BTreeMap::new();
        let e =
            append_exposition("a 1\nb 2\nc{ 3\n", Format::Text, &target(false), 0, &mut out, &mut meta).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(out.is_empty());
    }

    #[test]
    fn node_exporter_reference_through_target_labels() {
        let shared = std::env::var("CAIRN_SHARED")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
        let path = shared.join("datasets/node-exporter/node-exporter-1.5.0.prom");
        let Ok(text) = std::fs::read_to_string(&path) else {
            assert!(std::env::var("CI").is_err(), "{} is missing in CI", path.display());
            return;
        };
        let mut out = Vec::new();
        let mut meta = BTreeMap::new();
        let o = append_exposition(&text, Format::Text, &target(false), 0, &mut out, &mut meta).unwrap();
        assert_eq!(o.samples, out.len());
        assert!(o.samples > 500);
        assert!(out.iter().all(|s| s.labels.get("job") == Some("app")));
        assert_eq!(meta.get("node_load1").map(|m| m.0), Some(parse::Kind::Gauge));
    }
}
