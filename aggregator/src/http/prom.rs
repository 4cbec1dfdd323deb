//! The Prometheus HTTP API: remote_write receiver, instant and range queries,
//! series/labels/label values, metadata, the probes Grafana sends (rules,
//! alerts, exemplars), format_query, and the status endpoints.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_query::promql::{self, QueryError, Value};
use cairn_wire::{Labels, SeriesSamples, format_float, time};
use serde_json::{Value as J, json};

use super::{BodyError, Params, blocking, decode_body, ingest_response, tenant, text_error};
use crate::{Aggregator, Refusal};

/// `POST /api/v1/write`: Prometheus remote_write 1.0.
pub(crate) async fn write(State(agg): State<Arc<Aggregator>>, headers: HeaderMap, body: Bytes) -> Response {
    let sm = &agg.self_metrics;
    sm.request_bytes.get_or_create(&vec![("api", "remote_write".into())]).inc_by(body.len() as u64);
    let tenant = match tenant(&headers) {
        Ok(t) => t,
        Err(m) => return text_error(StatusCode::BAD_REQUEST, m),
    };
    let limits = agg.limits_for(&tenant);
    if let Err(r) = super::check_body_size(&body, limits) {
        sm.reject("requests", "too_large", 1);
        return r;
    }
    // `Content-Type: application/x-protobuf;proto=…` names the message
    // (none: 1.0), as the Remote-Write 2.0 spec has receivers do.
    let proto = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').find_map(|p| p.trim().strip_prefix("proto=")))
        .map(|p| p.trim_matches('"').to_string());
    let v2 = match proto.as_deref() {
        None | Some("prometheus.WriteRequest") => false,
        Some("io.prometheus.write.v2.Request") => true,
        Some(other) => {
            sm.reject("requests", "bad_encoding", 1);
            return text_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unknown remote write message {other:?}: this receiver reads prometheus.WriteRequest (1.0) and \
                     io.prometheus.write.v2.Request (2.0)"
                ),
            );
        }
    };
    let raw = match decode_body(&headers, &body, limits.max_decompressed_size.0 as usize, true) {
        Ok(r) => r,
        Err(e) => {
            sm.reject("requests", if matches!(e, BodyError::TooLarge(_)) { "too_large" } else { "bad_encoding" }, 1);
            return text_error(e.status(), e.message());
        }
    };
    if v2 {
        return write_v2(agg, tenant, &raw).await;
    }
    let req = match cairn_wire::remote_write::decode(raw.as_slice()) {
        Ok(r) => r,
        Err(e) => {
            sm.reject("requests", "bad_protobuf", 1);
            return text_error(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let mut batch = Vec::with_capacity(req.series.len());
    let mut hbatch = Vec::new();
    let mut pre_refused = Vec::new();
    {
        let mut interner = agg.series_labels.lock().unwrap_or_else(|p| p.into_inner());
        let mut scratch = Vec::new();
        for ts in &req.series {
            let n_hist = ts.histograms.len();
            let key = req.label_key(ts, &mut scratch);
            let labels = interner.get(key, || match req.label_pairs(ts) {
                Ok(pairs) => Labels::from_pairs(pairs).map_err(|e| Ok(format!("series refused: {e}"))),
                Err(e) => Err(Err(e)),
            });
            match labels {
                Ok(labels) => {
                    let histograms = histogram_samples(&agg, &labels, &ts.histograms, &mut pre_refused);
                    if !histograms.is_empty() {
                        hbatch.push(cairn_wire::SeriesHistograms { labels: labels.clone(), histograms });
                    }
                    batch.push(SeriesSamples { labels, samples: req.samples(ts).to_vec() })
                }
                Err(Ok(why)) => {
                    sm.reject("samples", Refusal::InvalidLabels.as_str(), (ts.samples.len() + n_hist) as u64);
                    pre_refused.push(why);
                }
                Err(Err(e)) => {
                    // a malformed label message makes the whole request
                    // invalid, as for prost
                    sm.reject("requests", "bad_protobuf", 1);
                    return text_error(StatusCode::BAD_REQUEST, e.to_string());
                }
            }
        }
    }
    for m in &req.metadata {
        agg.metadata.record(
            &tenant,
            &m.metric_family_name,
            crate::metadata::MetricMeta {
                kind: crate::metadata::type_name(m.r#type).to_string(),
                help: m.help.clone(),
                unit: m.unit.clone(),
            },
        );
    }
    if let Err(e) = agg.admit_sample_rate(&tenant, sample_count(&batch, &hbatch)) {
        return super::rate_limited(e);
    }
    let res = blocking(move || store_samples(&agg, &tenant, batch, hbatch)).await;
    let res = try_resp!(res);
    ingest_response(res.map(|(report, _)| with_refusals(report, pre_refused)))
}

/// The native histogram samples of one series as Cairn's model; each
/// malformed one is counted and its refusal noted in `refused`.
fn histogram_samples(
    agg: &Aggregator,
    labels: &Labels,
    hs: &[cairn_wire::proto::Histogram],
    refused: &mut Vec<String>,
) -> Vec<(i64, cairn_wire::Histogram)> {
    let mut out = Vec::with_capacity(hs.len());
    for h in hs {
        match h.to_model() {
            Ok(m) => out.push((h.timestamp, m)),
            Err(e) => {
                agg.self_metrics.reject("samples", Refusal::MalformedHistogram.as_str(), 1);
                refused.push(format!("native histogram at {} for {labels} refused: {e}", h.timestamp));
            }
        }
    }
    out
}

/// Float and histogram samples of a write, for the rate limit.
fn sample_count(batch: &[SeriesSamples], hbatch: &[cairn_wire::SeriesHistograms]) -> usize {
    batch.iter().map(|s| s.samples.len()).sum::<usize>() + hbatch.iter().map(|s| s.histograms.len()).sum::<usize>()
}

/// Stores a write's float then histogram samples: the merged report, and
/// how many histogram samples of it were stored.
fn store_samples(
    agg: &Aggregator,
    tenant: &str,
    batch: Vec<SeriesSamples>,
    hbatch: Vec<cairn_wire::SeriesHistograms>,
) -> Result<(crate::IngestReport, usize), cairn_store::StoreError> {
    let mut r = agg.ingest_metrics(tenant, batch)?;
    let mut hist_written = 0;
    if !hbatch.is_empty() {
        let h = agg.ingest_histograms(tenant, hbatch)?;
        hist_written = h.accepted;
        r.merge(h);
    }
    Ok((r, hist_written))
}

/// `report` with the refusals found before the store (bad labels,
/// malformed histograms) counted and listed first.
fn with_refusals(mut report: crate::IngestReport, mut refused: Vec<String>) -> crate::IngestReport {
    if !refused.is_empty() {
        report.refused += refused.len();
        refused.extend(report.messages);
        report.messages = refused;
        report.messages.truncate(5);
    }
    report
}

/// Remote-Write 2.0 (`io.prometheus.write.v2.Request`): the same ingest
/// as 1.0, plus start timestamps (stored before the samples, so a query
/// after the acknowledgement sees both) and per-series metadata; the
/// answer carries the `X-Prometheus-Remote-Write-*-Written` counts the
/// spec asks for.
async fn write_v2(agg: Arc<Aggregator>, tenant: String, raw: &[u8]) -> Response {
    let sm = &agg.self_metrics;
    let series = match cairn_wire::remote_write_v2::decode(raw) {
        Ok(s) => s,
        Err(e) => {
            sm.reject("requests", "bad_protobuf", 1);
            return text_error(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let (mut batch, mut hbatch, mut st_batch) = (Vec::new(), Vec::new(), Vec::new());
    let mut pre_refused = Vec::new();
    for s in series {
        let n = s.samples.len() + s.histograms.len();
        let labels = match Labels::from_pairs(s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
            Ok(l) => l,
            Err(e) => {
                sm.reject("samples", Refusal::InvalidLabels.as_str(), n as u64);
                pre_refused.push(format!("series refused: {e}"));
                continue;
            }
        };
        if let Some((kind, help, unit)) = s.metadata {
            let name = labels.get(cairn_wire::METRIC_NAME).unwrap_or("");
            // a classic histogram's or summary's series name its family
            let family = match kind {
                "histogram" | "gaugehistogram" | "summary" => ["_bucket", "_count", "_sum", "_created"]
                    .iter()
                    .find_map(|suf| name.strip_suffix(suf))
                    .unwrap_or(name),
                _ => name,
            };
            agg.metadata.record(&tenant, family, crate::metadata::MetricMeta { kind: kind.to_string(), help, unit });
        }
        let histograms = histogram_samples(&agg, &labels, &s.histograms, &mut pre_refused);
        if !s.start_timestamps.is_empty() {
            st_batch.push(cairn_store::metrics::SeriesStartTimestamps {
                labels: labels.clone(),
                pairs: s.start_timestamps,
            });
        }
        if !histograms.is_empty() {
            hbatch.push(cairn_wire::SeriesHistograms { labels: labels.clone(), histograms });
        }
        if !s.samples.is_empty() {
            batch.push(SeriesSamples { labels, samples: s.samples });
        }
    }
    if let Err(e) = agg.admit_sample_rate(&tenant, sample_count(&batch, &hbatch)) {
        return super::rate_limited(e);
    }
    let res = blocking(move || {
        if !st_batch.is_empty() {
            // companion data: a refused start timestamp leaves the sample
            // as a plain sample, it does not refuse it
            agg.metrics.append_start_timestamps(&tenant, st_batch)?;
        }
        store_samples(&agg, &tenant, batch, hbatch)
    })
    .await;
    let res = try_resp!(res);
    // floats written: all accepted items but the histograms
    let written = res.as_ref().ok().map(|(r, hists)| (r.accepted - hists, *hists));
    let mut resp = ingest_response(res.map(|(report, _)| with_refusals(report, pre_refused)));
    if let Some((samples, histograms)) = written {
        let h = resp.headers_mut();
        for (name, n) in [
            ("x-prometheus-remote-write-samples-written", samples),
            ("x-prometheus-remote-write-histograms-written", histograms),
            ("x-prometheus-remote-write-exemplars-written", 0),
        ] {
            h.insert(name, axum::http::HeaderValue::from(n as u64));
        }
    }
    resp
}

/// Prometheus API error body, fields in Prometheus's order.
#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    status: &'static str,
    #[serde(rename = "errorType")]
    error_type: &'a str,
    error: String,
}

/// Prometheus API success body, fields in Prometheus's order.
#[derive(serde::Serialize)]
struct SuccessBody<T> {
    status: &'static str,
    data: T,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    infos: Vec<String>,
}

/// Query result data: `resultType` before `result`, as Prometheus writes it.
/// Serialised straight into the response body (no intermediate JSON tree:
/// a day of points for hundreds of series is millions of values).
struct QueryData<'a>(&'a Value);

impl serde::Serialize for QueryData<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("resultType", self.0.type_name())?;
        match self.0 {
            Value::Scalar(t, v) => m.serialize_entry("result", &Point(*t, *v))?,
            Value::String(t, text) => m.serialize_entry("result", &(Ts(*t), text))?,
            Value::Vector(vs) => m.serialize_entry("result", &VectorResult(vs))?,
            Value::Matrix(ms) => m.serialize_entry("result", &MatrixResult(ms))?,
        }
        m.end()
    }
}

/// Prometheus JSON timestamp: float seconds, integer when whole.
struct Ts(i64);

impl serde::Serialize for Ts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 % 1000 == 0 { s.serialize_i64(self.0 / 1000) } else { s.serialize_f64(self.0 as f64 / 1000.0) }
    }
}

/// `[ts, "value"]`.
struct Point(i64, f64);

impl serde::Serialize for Point {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (Ts(self.0), format_float(self.1)).serialize(s)
    }
}

/// A native histogram as Prometheus's API writes it: `{"count": "…",
/// "sum": "…", "buckets": [[boundary_rule, "lower", "upper", "count"], …]}`
/// (empty buckets left out, no `buckets` key without any).
struct HistJson<'a>(&'a promql::Histogram);

impl serde::Serialize for HistJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let buckets: Vec<(u8, String, String, String)> = self
            .0
            .buckets()
            .into_iter()
            .filter(|b| b.count != 0.0)
            .map(|b| (b.boundary_rule(), format_float(b.lower), format_float(b.upper), format_float(b.count)))
            .collect();
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("count", &format_float(self.0.count))?;
        m.serialize_entry("sum", &format_float(self.0.sum))?;
        if !buckets.is_empty() {
            m.serialize_entry("buckets", &buckets)?;
        }
        m.end()
    }
}

struct VectorResult<'a>(&'a [promql::Sample]);

impl serde::Serialize for VectorResult<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        struct One<'a>(&'a promql::Sample);
        impl serde::Serialize for One<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("metric", &self.0.labels)?;
                match &self.0.h {
                    None => m.serialize_entry("value", &Point(self.0.t, self.0.v))?,
                    Some(h) => m.serialize_entry("histogram", &(Ts(self.0.t), HistJson(h)))?,
                }
                m.end()
            }
        }
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for x in self.0 {
            seq.serialize_element(&One(x))?;
        }
        seq.end()
    }
}

struct MatrixResult<'a>(&'a [promql::Series]);

impl serde::Serialize for MatrixResult<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        struct Points<'a>(&'a [(i64, f64)]);
        impl serde::Serialize for Points<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for &(t, v) in self.0 {
                    seq.serialize_element(&Point(t, v))?;
                }
                seq.end()
            }
        }
        struct One<'a>(&'a promql::Series);
        impl serde::Serialize for One<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("metric", &self.0.labels)?;
                if !self.0.points.is_empty() || self.0.hist.is_empty() {
                    m.serialize_entry("values", &Points(&self.0.points))?;
                }
                if !self.0.hist.is_empty() {
                    let hs: Vec<(Ts, HistJson<'_>)> = self.0.hist.iter().map(|(t, h)| (Ts(*t), HistJson(h))).collect();
                    m.serialize_entry("histograms", &hs)?;
                }
                m.end()
            }
        }
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for x in self.0 {
            seq.serialize_element(&One(x))?;
        }
        seq.end()
    }
}

/// Prometheus API error body.
fn api_error(status: StatusCode, error_type: &str, msg: impl Into<String>) -> Response {
    (status, Json(ErrorBody { status: "error", error_type, error: msg.into() })).into_response()
}

fn query_error(e: QueryError) -> Response {
    let status = match e {
        QueryError::Execution(_) | QueryError::TooManySamples { .. } | QueryError::TooManySeries { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        QueryError::Timeout => StatusCode::SERVICE_UNAVAILABLE,
        QueryError::Parse(m) => {
            return api_error(StatusCode::BAD_REQUEST, "bad_data", format!("invalid parameter \"query\": {m}"));
        }
        _ => StatusCode::BAD_REQUEST,
    };
    api_error(status, e.error_type(), e.to_string())
}

fn param_time(p: &Params, key: &str) -> Result<Option<i64>, Response> {
    match p.get(key) {
        None => Ok(None),
        Some(s) => time::parse_prom_time_ms(s).map(Some).map_err(|_| {
            api_error(
                StatusCode::BAD_REQUEST,
                "bad_data",
                format!("invalid parameter \"{key}\": cannot parse \"{s}\" to a valid timestamp"),
            )
        }),
    }
}

/// `timeout` parameter (a Prometheus duration or float seconds).
fn param_timeout(p: &Params) -> Result<Option<std::time::Duration>, Response> {
    match p.get("timeout") {
        None => Ok(None),
        Some(s) => time::parse_prom_duration_ms(s)
            .ok()
            .filter(|ms| *ms > 0)
            .map(|ms| Some(std::time::Duration::from_millis(ms as u64)))
            .ok_or_else(|| {
                api_error(
                    StatusCode::BAD_REQUEST,
                    "bad_data",
                    format!("invalid parameter \"timeout\": cannot parse \"{s}\" to a valid duration"),
                )
            }),
    }
}

/// Engine options for a request: `[query]` limits, the deadline from
/// `query.timeout` shortened by the request's `timeout`.
fn query_options(
    agg: &Aggregator,
    tenant: &str,
    started: Instant,
    timeout: Option<std::time::Duration>,
) -> promql::QueryOptions {
    let cfg = agg.query_for(tenant);
    let limit = std::time::Duration::from_millis(cfg.timeout.as_millis().max(0) as u64);
    let t = match timeout {
        Some(t) if limit.is_zero() => t,
        Some(t) => t.min(limit),
        None => limit,
    };
    promql::QueryOptions {
        lookback_ms: cfg.lookback_delta.as_millis(),
        deadline: (!t.is_zero()).then(|| started + t),
        max_samples: cfg.max_samples,
        max_series: cfg.max_series,
    }
}

/// The `query` parameter, or Prometheus's error for a request without one.
fn query_param(p: &Params) -> Result<&str, Response> {
    p.get("query").ok_or_else(|| {
        api_error(
            StatusCode::BAD_REQUEST,
            "bad_data",
            "invalid parameter \"query\": unknown position: parse error: no expression found in input",
        )
    })
}

/// Runs a PromQL evaluation for `api`: engine options from the config and
/// the request's `timeout`, a `query.max_concurrency` slot, a blocking
/// thread, and the latency in `cairn_query_duration_seconds`.
async fn evaluate<T: Send + 'static>(
    agg: &Arc<Aggregator>,
    api: &'static str,
    tenant: &str,
    timeout: Option<std::time::Duration>,
    f: impl FnOnce(&Aggregator, &promql::QueryOptions) -> Result<T, QueryError> + Send + 'static,
) -> Result<Result<T, QueryError>, Response> {
    let started = Instant::now();
    let opts = query_options(agg, tenant, started, timeout);
    let agg2 = agg.clone();
    // Waiting for a slot counts toward the deadline, as in Prometheus.
    let acquire = agg.query_slots.clone().acquire_owned();
    let slot = match opts.deadline {
        Some(d) => match tokio::time::timeout_at(d.into(), acquire).await {
            Ok(s) => s,
            Err(_) => {
                agg.self_metrics.observe_query(api, started.elapsed().as_secs_f64());
                return Err(api_error(StatusCode::SERVICE_UNAVAILABLE, "timeout", "query timed out in query queue"));
            }
        },
        None => acquire.await,
    };
    let res = match slot {
        Ok(slot) => {
            blocking(move || {
                let _slot = slot;
                f(&agg2, &opts)
            })
            .await
        }
        Err(_) => Err(api_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "query slots closed")),
    };
    agg.self_metrics.observe_query(api, started.elapsed().as_secs_f64());
    res
}

/// `GET|POST /api/v1/query`
pub(crate) async fn query(
    State(agg): State<Arc<Aggregator>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = Params::parse(q.as_deref(), &headers, &body);
    let tenant = match tenant(&headers) {
        Ok(t) => t,
        Err(m) => return api_error(StatusCode::BAD_REQUEST, "bad_data", m),
    };
    let qs = try_resp!(query_param(&p)).to_string();
    let t = match param_time(&p, "time") {
        Ok(t) => t.unwrap_or_else(time::now_ms),
        Err(r) => return r,
    };
    let (limit, timeout) = match (param_limit(&p), param_timeout(&p)) {
        (Ok(l), Ok(t)) => (l, t),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let res = evaluate(&agg, "prometheus_query", &tenant.clone(), timeout, move |agg, opts| {
        let expr = promql::parse(&qs)?;
        promql::instant_query_annotated(&agg.metrics, &tenant, &expr, t, opts)
    })
    .await;
    match res {
        Ok(Ok((mut v, ann))) => {
            let truncated = match &mut v {
                Value::Vector(vs) => truncate(vs, limit),
                Value::Matrix(ms) => truncate(ms, limit),
                _ => false,
            };
            query_success(&v, truncated, ann)
        }
        Ok(Err(e)) => query_error(e),
        Err(r) => r,
    }
}

/// `GET|POST /api/v1/query_range`
pub(crate) async fn query_range(
    State(agg): State<Arc<Aggregator>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = Params::parse(q.as_deref(), &headers, &body);
    let tenant = match tenant(&headers) {
        Ok(t) => t,
        Err(m) => return api_error(StatusCode::BAD_REQUEST, "bad_data", m),
    };
    let qs = try_resp!(query_param(&p)).to_string();
    let (start, end) = match (param_time(&p, "start"), param_time(&p, "end")) {
        (Ok(Some(s)), Ok(Some(e))) => (s, e),
        (Err(r), _) | (_, Err(r)) => return r,
        (Ok(None), _) => return api_error(StatusCode::BAD_REQUEST, "bad_data", "invalid parameter \"start\": missing"),
        (_, Ok(None)) => return api_error(StatusCode::BAD_REQUEST, "bad_data", "invalid parameter \"end\": missing"),
    };
    let step = match p.get("step").map(time::parse_prom_duration_ms) {
        Some(Ok(s)) => s,
        Some(Err(_)) | None => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "bad_data",
                format!(
                    "invalid parameter \"step\": cannot parse \"{}\" to a valid duration",
                    p.get("step").unwrap_or("")
                ),
            );
        }
    };
    let (limit, timeout) = match (param_limit(&p), param_timeout(&p)) {
        (Ok(l), Ok(t)) => (l, t),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    // VictoriaMetrics's switch for its result cache.
    let nocache = matches!(p.get("nocache"), Some("1" | "true"));
    let res = evaluate(&agg, "prometheus_query_range", &tenant.clone(), timeout, move |agg, opts| {
        let (m, ann, _) = agg.query_cache.range_query(
            &agg.metrics,
            &tenant,
            &qs,
            (start, end, step),
            opts,
            time::now_ms(),
            nocache,
        )?;
        Ok((m, ann))
    })
    .await;
    match res {
        Ok(Ok((mut m, ann))) => {
            let truncated = truncate(&mut m, limit);
            query_success(&Value::Matrix(m), truncated, ann)
        }
        Ok(Err(e)) => query_error(e),
        Err(r) => r,
    }
}

/// `GET /api/v1/status/buildinfo`. `version` is the Prometheus API level
/// Cairn answers as (Grafana gates features on it); Cairn's own version is
/// in `revision`.
pub(crate) async fn buildinfo() -> Response {
    /// Prometheus's `PrometheusVersion`, in its field order.
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct BuildInfo {
        version: &'static str,
        revision: String,
        branch: &'static str,
        build_user: &'static str,
        build_date: &'static str,
        go_version: &'static str,
    }
    success(BuildInfo {
        version: "2.53.0",
        revision: format!("cairn-{}", super::CAIRN_VERSION),
        branch: "cairn",
        build_user: "cairn",
        build_date: "",
        go_version: "none (Rust)",
    })
}

fn success<T: serde::Serialize>(data: T) -> Response {
    success_truncated(data, false)
}

/// A query's success response. A matrix (range queries, and instant
/// queries of range selectors) is written by hand: it can hold millions of
/// points, and serde's float formatting of every timestamp was most of the
/// response time. The bytes are the same as the serde path's.
fn query_success(v: &Value, truncated: bool, ann: promql::Annotations) -> Response {
    // Histograms take the serde path (they are rare and their JSON nested).
    let Value::Matrix(ms) = v else {
        return success_annotated(QueryData(v), truncated, ann);
    };
    if ms.iter().any(|s| !s.hist.is_empty()) {
        return success_annotated(QueryData(v), truncated, ann);
    }
    let points: usize = ms.iter().map(|s| s.points.len()).sum();
    let mut out = String::with_capacity(64 + ms.len() * 256 + points * 36);
    out.push_str(r#"{"status":"success","data":{"resultType":"matrix","result":["#);
    for (i, s) in ms.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"metric":"#);
        match serde_json::to_string(&s.labels) {
            Ok(l) => out.push_str(&l),
            Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        }
        out.push_str(r#","values":["#);
        for (k, &(t, v)) in s.points.iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            out.push('[');
            write_ts(&mut out, t);
            out.push_str(",\"");
            cairn_wire::format_float_into(&mut out, v);
            out.push_str("\"]");
        }
        out.push_str("]}");
    }
    out.push_str("]}");
    let mut warnings = ann.warnings;
    if truncated {
        warnings.push("results truncated due to limit".into());
    }
    for (key, list) in [("warnings", &warnings), ("infos", &ann.infos)] {
        if !list.is_empty() {
            match serde_json::to_string(list) {
                Ok(j) => {
                    out.push_str(&format!(",\"{key}\":"));
                    out.push_str(&j);
                }
                Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
            }
        }
    }
    out.push('}');
    ([(axum::http::header::CONTENT_TYPE, "application/json")], out).into_response()
}

/// [`Ts`] without serde: seconds, then up to three decimals without
/// trailing zeros (what shortest-float formatting of `t / 1000` gives).
fn write_ts(out: &mut String, t: i64) {
    if t < 0 {
        // rare; leave it to the general float formatter
        let _ = serde_json::to_string(&Ts(t)).map(|s| out.push_str(&s));
        return;
    }
    out.push_str(itoa::Buffer::new().format(t / 1000));
    let ms = t % 1000;
    if ms != 0 {
        let digits = [b'0' + (ms / 100) as u8, b'0' + (ms / 10 % 10) as u8, b'0' + (ms % 10) as u8];
        let n = if ms % 100 == 0 {
            1
        } else if ms % 10 == 0 {
            2
        } else {
            3
        };
        out.push('.');
        out.extend(digits[..n].iter().map(|&d| d as char));
    }
}

fn success_truncated<T: serde::Serialize>(data: T, truncated: bool) -> Response {
    success_annotated(data, truncated, promql::Annotations::default())
}

/// A query result with its PromQL annotations (`warnings`, `infos`), as
/// Prometheus writes them.
fn success_annotated<T: serde::Serialize>(data: T, truncated: bool, ann: promql::Annotations) -> Response {
    let mut warnings = ann.warnings;
    if truncated {
        warnings.push("results truncated due to limit".into());
    }
    Json(SuccessBody { status: "success", data, warnings, infos: ann.infos }).into_response()
}

/// `limit` parameter: 0 or absent means no limit.
fn param_limit(p: &Params) -> Result<usize, Response> {
    match p.get("limit") {
        None => Ok(0),
        Some(s) => s.parse::<usize>().map_err(|_| {
            api_error(
                StatusCode::BAD_REQUEST,
                "bad_data",
                format!("invalid parameter \"limit\": cannot parse \"{s}\" to a valid limit"),
            )
        }),
    }
}

/// Common parameters of the series/labels/label-values endpoints.
struct MetaQuery {
    tenant: String,
    groups: Vec<Vec<cairn_wire::Matcher>>,
    start: i64,
    end: i64,
    limit: usize,
}

fn meta_query(q: Option<&str>, headers: &HeaderMap, body: &[u8], match_required: bool) -> Result<MetaQuery, Response> {
    let p = Params::parse(q, headers, body);
    let tenant = tenant(headers).map_err(|m| api_error(StatusCode::BAD_REQUEST, "bad_data", m))?;
    let start = param_time(&p, "start")?.unwrap_or(i64::MIN);
    let end = param_time(&p, "end")?.unwrap_or(i64::MAX);
    if end < start {
        return Err(api_error(StatusCode::BAD_REQUEST, "bad_data", "end timestamp must not be before start time"));
    }
    let limit = param_limit(&p)?;
    let mut groups = Vec::new();
    for m in p.all("match[]") {
        let g = promql::parse_series_selector(m).map_err(|e| {
            api_error(StatusCode::BAD_REQUEST, "bad_data", format!("invalid parameter \"match[]\": {e}"))
        })?;
        groups.extend(g);
    }
    if match_required && groups.is_empty() {
        return Err(api_error(StatusCode::BAD_REQUEST, "bad_data", "no match[] parameter provided"));
    }
    Ok(MetaQuery { tenant, groups, start, end, limit })
}

/// Series matching any matcher group (all series without groups), sorted.
fn matching_series(agg: &Aggregator, m: &MetaQuery) -> Vec<Labels> {
    if m.groups.is_empty() {
        return agg.metrics.series(&m.tenant, &[], m.start, m.end);
    }
    let mut all: Vec<Labels> = Vec::new();
    for g in &m.groups {
        all.extend(agg.metrics.series(&m.tenant, g, m.start, m.end));
    }
    all.sort();
    all.dedup();
    all
}

fn truncate<T>(v: &mut Vec<T>, limit: usize) -> bool {
    if limit > 0 && v.len() > limit {
        v.truncate(limit);
        true
    } else {
        false
    }
}

/// `GET|POST /api/v1/series`
pub(crate) async fn series(
    State(agg): State<Arc<Aggregator>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let m = try_resp!(meta_query(q.as_deref(), &headers, &body, true));
    let limit = m.limit;
    match blocking(move || matching_series(&agg, &m)).await {
        Ok(mut v) => {
            let t = truncate(&mut v, limit);
            success_truncated(json!(v), t)
        }
        Err(r) => r,
    }
}

/// `GET|POST /api/v1/labels`
pub(crate) async fn labels(
    State(agg): State<Arc<Aggregator>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let m = try_resp!(meta_query(q.as_deref(), &headers, &body, false));
    let limit = m.limit;
    let res = blocking(move || {
        let names: std::collections::BTreeSet<String> = matching_series(&agg, &m)
            .iter()
            .flat_map(|ls| ls.iter().map(|l| l.name.clone()).collect::<Vec<_>>())
            .collect();
        names.into_iter().collect::<Vec<_>>()
    })
    .await;
    match res {
        Ok(mut v) => {
            let t = truncate(&mut v, limit);
            success_truncated(json!(v), t)
        }
        Err(r) => r,
    }
}

/// `GET|POST /api/v1/label/{name}/values`
pub(crate) async fn label_values(
    State(agg): State<Arc<Aggregator>>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !cairn_wire::labels::is_valid_label_name(&name) {
        return api_error(StatusCode::BAD_REQUEST, "bad_data", format!("invalid label name: {name:?}"));
    }
    let m = try_resp!(meta_query(q.as_deref(), &headers, &body, false));
    let limit = m.limit;
    let res = blocking(move || {
        let values: std::collections::BTreeSet<String> =
            matching_series(&agg, &m).iter().filter_map(|ls| ls.get(&name).map(str::to_string)).collect();
        values.into_iter().collect::<Vec<_>>()
    })
    .await;
    match res {
        Ok(mut v) => {
            let t = truncate(&mut v, limit);
            success_truncated(json!(v), t)
        }
        Err(r) => r,
    }
}

/// `GET /api/v1/metadata` (`metric`, `limit`, `limit_per_metric`).
pub(crate) async fn metadata(
    State(agg): State<Arc<Aggregator>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = Params::parse(q.as_deref(), &headers, &[]);
    let tenant = match tenant(&headers) {
        Ok(t) => t,
        Err(m) => return api_error(StatusCode::BAD_REQUEST, "bad_data", m),
    };
    let parse_limit = |key: &str| -> Result<Option<usize>, Response> {
        match p.get(key) {
            None => Ok(None),
            Some(s) => match s.parse::<i64>() {
                Ok(n) if n >= 0 => Ok(Some(n as usize)),
                Ok(_) => Ok(None),
                Err(_) => Err(api_error(StatusCode::BAD_REQUEST, "bad_data", format!("{key} must be a number"))),
            },
        }
    };
    let (limit, per_metric) = match (parse_limit("limit"), parse_limit("limit_per_metric")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let mut out = serde_json::Map::new();
    for (name, mut entries) in agg.metadata.get(&tenant, p.get("metric")) {
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        if let Some(n) = per_metric {
            entries.truncate(n);
        }
        out.insert(name, json!(entries));
    }
    success(J::Object(out))
}

/// `GET|POST /api/v1/query_exemplars`: Cairn stores no exemplars.
pub(crate) async fn query_exemplars(RawQuery(q): RawQuery, headers: HeaderMap, body: Bytes) -> Response {
    let p = Params::parse(q.as_deref(), &headers, &body);
    if let Err(e) = promql::parse(try_resp!(query_param(&p))) {
        return api_error(StatusCode::BAD_REQUEST, "bad_data", format!("invalid parameter \"query\": {e}"));
    }
    for key in ["start", "end"] {
        if let Err(r) = param_time(&p, key) {
            return r;
        }
    }
    success(json!([]))
}

/// `GET /api/v1/rules`: Cairn evaluates no rules.
pub(crate) async fn rules() -> Response {
    success(json!({"groups": []}))
}

/// `GET /api/v1/alerts`: Cairn evaluates no alerting rules.
pub(crate) async fn alerts() -> Response {
    success(json!({"alerts": []}))
}

/// `GET|POST /api/v1/format_query`
pub(crate) async fn format_query(RawQuery(q): RawQuery, headers: HeaderMap, body: Bytes) -> Response {
    let p = Params::parse(q.as_deref(), &headers, &body);
    let qs = try_resp!(query_param(&p));
    match promql::format_query(qs) {
        Ok(text) => success(json!(text)),
        Err(e) => api_error(StatusCode::BAD_REQUEST, "bad_data", format!("invalid parameter \"query\": {e}")),
    }
}

/// RFC 3339 with nanoseconds, as Go's `time.Time` marshals.
fn rfc3339(t: std::time::SystemTime) -> String {
    let ns = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    time::format_rfc3339_ns(ns)
}

/// `GET /api/v1/status/runtimeinfo`
pub(crate) async fn runtimeinfo(State(agg): State<Arc<Aggregator>>) -> Response {
    let cwd = std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default();
    let hostname =
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let replay = agg.metrics.replay_stats();
    /// Prometheus's `RuntimeInfo`, in its field order.
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct RuntimeInfo {
        start_time: String,
        #[serde(rename = "CWD")]
        cwd: String,
        hostname: String,
        server_time: String,
        reload_config_success: bool,
        last_config_time: String,
        corruption_count: usize,
        goroutine_count: usize,
        #[serde(rename = "GOMAXPROCS")]
        gomaxprocs: usize,
        #[serde(rename = "GOMEMLIMIT")]
        gomemlimit: i64,
        #[serde(rename = "GOGC")]
        gogc: &'static str,
        #[serde(rename = "GODEBUG")]
        godebug: &'static str,
        storage_retention: &'static str,
    }
    success(RuntimeInfo {
        start_time: rfc3339(agg.started_at),
        cwd,
        hostname,
        server_time: rfc3339(std::time::SystemTime::now()),
        reload_config_success: true,
        last_config_time: rfc3339(agg.started_at),
        corruption_count: replay.corrupt_segments,
        goroutine_count: 0,
        gomaxprocs: threads,
        gomemlimit: i64::MAX,
        gogc: "",
        godebug: "",
        storage_retention: "unlimited",
    })
}

/// Oldest and newest sample time of `tenant`, found by binary search over
/// `MetricsStore::series` (which copies no samples); Prometheus's empty-head
/// values `(i64::MAX, i64::MIN)` when there is no data.
fn time_bounds(agg: &Aggregator, tenant: &str, any: bool) -> (i64, i64) {
    if !any {
        return (i64::MAX, i64::MIN);
    }
    let has = |lo: i64, hi: i64| !agg.metrics.series(tenant, &[], lo, hi).is_empty();
    // Smallest t with a sample in [MIN, t].
    let (mut lo, mut hi) = (i64::MIN, i64::MAX);
    while lo < hi {
        let mid = (lo as i128 + (hi as i128 - lo as i128) / 2) as i64;
        if has(i64::MIN, mid) { hi = mid } else { lo = mid + 1 }
    }
    let min_t = lo;
    // Largest t with a sample in [t, MAX].
    let (mut lo, mut hi) = (i64::MIN, i64::MAX);
    while lo < hi {
        let mid = (hi as i128 - (hi as i128 - lo as i128) / 2) as i64;
        if has(mid, i64::MAX) { lo = mid } else { hi = mid - 1 }
    }
    (min_t, lo)
}

/// Prometheus's `HeadStats`, in its field order.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct HeadStats {
    num_series: usize,
    num_label_pairs: usize,
    chunk_count: usize,
    min_time: i64,
    max_time: i64,
}

/// Prometheus's `TSDBStatus`, in its field order.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct TsdbStatus {
    head_stats: HeadStats,
    series_count_by_metric_name: J,
    label_value_count_by_label_name: J,
    memory_in_bytes_by_label_name: J,
    series_count_by_label_value_pair: J,
}

/// `GET /api/v1/status/tsdb` (`limit`, default 10): head statistics of the
/// requesting tenant, computed from its series.
pub(crate) async fn tsdb_status(
    State(agg): State<Arc<Aggregator>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = Params::parse(q.as_deref(), &headers, &[]);
    let tenant = match tenant(&headers) {
        Ok(t) => t,
        Err(m) => return api_error(StatusCode::BAD_REQUEST, "bad_data", m),
    };
    let limit = match p.get("limit").map(str::parse::<usize>) {
        None => 10,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => return api_error(StatusCode::BAD_REQUEST, "bad_data", "limit must be a positive number"),
    };
    let res = blocking(move || {
        use std::collections::{HashMap, HashSet};
        let all = agg.metrics.series(&tenant, &[], i64::MIN, i64::MAX);
        let mut by_name: HashMap<&str, u64> = HashMap::new();
        let mut values_by_label: HashMap<&str, HashSet<&str>> = HashMap::new();
        let mut bytes_by_label: HashMap<&str, u64> = HashMap::new();
        let mut by_pair: HashMap<String, u64> = HashMap::new();
        for ls in &all {
            if let Some(n) = ls.get(cairn_wire::METRIC_NAME) {
                *by_name.entry(n).or_default() += 1;
            }
            for l in ls.iter() {
                if values_by_label.entry(&l.name).or_default().insert(&l.value) {
                    *bytes_by_label.entry(&l.name).or_default() += l.value.len() as u64;
                }
                *by_pair.entry(format!("{}={}", l.name, l.value)).or_default() += 1;
            }
        }
        let pairs: usize = values_by_label.values().map(HashSet::len).sum();
        let top = |m: Vec<(String, u64)>| -> J {
            let mut m = m;
            m.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            m.truncate(limit);
            J::Array(m.into_iter().map(|(name, value)| json!({"name": name, "value": value})).collect())
        };
        let (min_t, max_t) = time_bounds(&agg, &tenant, !all.is_empty());
        TsdbStatus {
            head_stats: HeadStats {
                num_series: all.len(),
                num_label_pairs: pairs,
                chunk_count: 0,
                min_time: min_t,
                max_time: max_t,
            },
            series_count_by_metric_name: top(by_name.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
            label_value_count_by_label_name: top(values_by_label
                .iter()
                .map(|(k, v)| (k.to_string(), v.len() as u64))
                .collect()),
            memory_in_bytes_by_label_name: top(bytes_by_label.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
            series_count_by_label_value_pair: top(by_pair.into_iter().collect()),
        }
    })
    .await;
    match res {
        Ok(v) => success(v),
        Err(r) => r,
    }
}

#[cfg(test)]
mod json_tests {
    use super::*;

    async fn body(r: Response) -> String {
        let b = axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap();
        String::from_utf8(b.to_vec()).unwrap()
    }

    /// The hand-written matrix body is byte for byte what serde writes.
    #[tokio::test]
    async fn matrix_body_matches_serde() {
        let labels = Labels::from_pairs([("__name__", "a\"b"), ("job", "x\ny")]).unwrap();
        let mut points = vec![(0, 0.0), (1, -0.0), (10, 1.5), (100, 1e21), (1001, f64::NAN), (-1500, 2.0)];
        for (i, t) in
            [999i64, 1_732_460_000_123, 1_732_460_000_120, 1_732_460_000_100, 1_732_460_015_000].into_iter().enumerate()
        {
            points.push((t, i as f64 * 0.1 + 1234.5678));
            points.push((t + 1, f64::from_bits(cairn_wire::STALE_NAN_BITS)));
            points.push((t + 2, -1e-7 * i as f64));
        }
        let series = vec![
            promql::Series { labels: labels.clone(), points: points.clone(), hist: Vec::new() },
            promql::Series { labels: Labels::empty(), points: vec![], hist: Vec::new() },
        ];
        let noted = promql::Annotations {
            warnings: vec!["PromQL warning: \"x\"".into()],
            infos: vec!["PromQL info: y".into(), "z".into()],
        };
        for truncated in [false, true] {
            for ann in [promql::Annotations::default(), noted.clone()] {
                let v = Value::Matrix(series.clone());
                let fast = body(query_success(&v, truncated, ann.clone())).await;
                let slow = body(success_annotated(QueryData(&v), truncated, ann)).await;
                assert_eq!(fast, slow);
            }
        }
    }
}
