//! The Loki HTTP API: push (protobuf+snappy or JSON, optionally gzip or
//! deflate), range queries, build info.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_query::logql::{self, Direction, Expr, LogQuery, MetricQuery, MetricValue};
use cairn_wire::proto::PushRequest;
use cairn_wire::{Entry, Labels, StreamEntries, format_float, loki_json, time};
use prost::Message;
use serde_json::json;

use super::{BodyError, Params, blocking, decode_body, ingest_response, tenant, text_error};
use crate::{Aggregator, Refusal};

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.trim_start().to_ascii_lowercase().starts_with("application/json"))
}

/// Decodes a push body into stream batches; refusals of whole streams for
/// unparsable labels are returned as messages.
/// Streams that decoded, and (entry count, message) of streams refused.
type Decoded = (Vec<StreamEntries>, Vec<(usize, String)>);

fn decode_push(headers: &HeaderMap, raw: &[u8]) -> Result<Decoded, String> {
    let mut refused = Vec::new();
    let mut out = Vec::new();
    if is_json(headers) {
        let req = loki_json::parse(raw).map_err(|e| format!("invalid JSON push body: {e}"))?;
        for s in req.streams {
            let n = s.values.len();
            match Labels::from_pairs(s.stream) {
                Ok(labels) => out.push(StreamEntries {
                    labels,
                    entries: s
                        .values
                        .into_iter()
                        .map(|e| Entry { ts: e.ts_ns, line: e.line, metadata: e.metadata })
                        .collect(),
                }),
                Err(e) => refused.push((n, format!("stream refused: {e}"))),
            }
        }
    } else {
        let req = PushRequest::decode(raw).map_err(|e| format!("invalid Loki push protobuf: {e}"))?;
        for s in req.streams {
            let n = s.entries.len();
            match Labels::parse(&s.labels) {
                Ok(labels) => out.push(StreamEntries {
                    labels,
                    entries: s
                        .entries
                        .into_iter()
                        .map(|e| Entry {
                            ts: e.timestamp.map(|t| t.to_ns()).unwrap_or(0),
                            line: match String::from_utf8(e.line) {
                                Ok(s) => s,
                                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                            },
                            metadata: e.structured_metadata.into_iter().map(|p| (p.name, p.value)).collect(),
                        })
                        .collect(),
                }),
                Err(e) => refused.push((n, format!("stream refused: {e}"))),
            }
        }
    }
    Ok((out, refused))
}

/// `POST /loki/api/v1/push`
pub(crate) async fn push(State(agg): State<Arc<Aggregator>>, headers: HeaderMap, body: Bytes) -> Response {
    let sm = &agg.self_metrics;
    sm.request_bytes.get_or_create(&vec![("api", "loki_push".into())]).inc_by(body.len() as u64);
    let tenant = match tenant(&headers) {
        Ok(t) => t,
        Err(m) => return text_error(StatusCode::BAD_REQUEST, m),
    };
    let limits = agg.limits_for(&tenant);
    if let Err(r) = super::check_body_size(&body, limits) {
        sm.reject("requests", "too_large", 1);
        return r;
    }
    let max = limits.max_decompressed_size.0 as usize;
    // Protobuf pushes are snappy-compressed without saying so; JSON is plain
    // unless Content-Encoding says otherwise.
    let raw = match decode_body(&headers, &body, max, !is_json(&headers)) {
        Ok(r) => r,
        Err(e) => {
            sm.reject("requests", if matches!(e, BodyError::TooLarge(_)) { "too_large" } else { "bad_encoding" }, 1);
            return text_error(e.status(), e.message());
        }
    };
    let (batch, pre_refused) = match decode_push(&headers, &raw) {
        Ok(x) => x,
        Err(m) => {
            sm.reject("requests", "bad_body", 1);
            return text_error(StatusCode::BAD_REQUEST, m);
        }
    };
    for (n, _) in &pre_refused {
        sm.reject("entries", Refusal::InvalidLabels.as_str(), *n as u64);
    }
    if let Err(e) = agg.admit_log_rate(&tenant, &batch) {
        return super::rate_limited(e);
    }
    let res = try_resp!(blocking(move || agg.ingest_logs(&tenant, batch)).await);
    match res {
        Ok(mut report) if !pre_refused.is_empty() => {
            let mut msgs: Vec<String> = pre_refused.iter().map(|(_, m)| m.clone()).collect();
            report.refused += pre_refused.iter().map(|(n, _)| n).sum::<usize>();
            msgs.extend(report.messages);
            msgs.truncate(5);
            report.messages = msgs;
            ingest_response(Ok(report))
        }
        other => ingest_response(other),
    }
}

fn bad(msg: impl Into<String>) -> Response {
    text_error(StatusCode::BAD_REQUEST, msg)
}

fn param_ns(p: &Params, key: &str, default: i64) -> Result<i64, Response> {
    match p.get(key) {
        None => Ok(default),
        Some(s) => time::parse_loki_time_ns(s).map_err(|e| bad(format!("invalid {key} parameter: {e}"))),
    }
}

/// True when the client asked for `categorize-labels` encoding.
fn categorize(headers: &HeaderMap) -> bool {
    headers
        .get_all("x-loki-response-encoding-flags")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|f| f.trim() == "categorize-labels")
}

fn param_limit(p: &Params, agg: &Aggregator, tenant: &str) -> Result<usize, Response> {
    let limit = match p.get("limit").map(str::parse::<u64>) {
        None => 100,
        Some(Ok(l)) => l as usize,
        Some(Err(_)) => return Err(bad("invalid limit parameter: expected a non-negative integer")),
    };
    let max = agg.query_for(tenant).max_entries_limit;
    if limit > max {
        return Err(bad(format!("max entries limit per query exceeded, limit > max_entries_limit ({limit} > {max})")));
    }
    Ok(limit)
}

fn param_direction(p: &Params) -> Result<Direction, Response> {
    match p.get("direction") {
        None => Ok(Direction::Backward),
        Some(d) => {
            Direction::parse(d).ok_or_else(|| bad(format!("invalid direction {d:?}: expected forward or backward")))
        }
    }
}

/// Loki's default step: `max(floor((end - start) / 250 s), 1 s)`.
fn default_step_ns(start: i64, end: i64) -> i64 {
    ((end.saturating_sub(start) / 1_000_000_000) / 250).max(1) * 1_000_000_000
}

/// A float-seconds timestamp from ms, as Loki writes it (`1700000000` or
/// `1700000000.123`).
fn ts_json(ms: i64) -> serde_json::Value {
    if ms % 1000 == 0 { json!(ms / 1000) } else { json!(ms as f64 / 1000.0) }
}

fn pairs_obj(pairs: &[(String, String)]) -> serde_json::Map<String, serde_json::Value> {
    pairs.iter().map(|(k, v)| (k.clone(), json!(v))).collect()
}

fn streams_json(streams: &[logql::StreamResult], categorize: bool) -> Vec<serde_json::Value> {
    streams
        .iter()
        .map(|s| {
            let values: Vec<serde_json::Value> = s
                .entries
                .iter()
                .map(|e| {
                    if categorize && (!e.metadata.is_empty() || !e.parsed.is_empty()) {
                        let mut cat = serde_json::Map::new();
                        if !e.metadata.is_empty() {
                            cat.insert("structuredMetadata".into(), serde_json::Value::Object(pairs_obj(&e.metadata)));
                        }
                        if !e.parsed.is_empty() {
                            cat.insert("parsed".into(), serde_json::Value::Object(pairs_obj(&e.parsed)));
                        }
                        json!([e.ts.to_string(), e.line, cat])
                    } else {
                        json!([e.ts.to_string(), e.line])
                    }
                })
                .collect();
            json!({"stream": s.labels, "values": values})
        })
        .collect()
}

fn metric_json(v: &MetricValue) -> (&'static str, serde_json::Value) {
    match v {
        MetricValue::Scalar(t, x) => ("scalar", json!([ts_json(*t), format_float(*x)])),
        MetricValue::Vector(t, samples) => (
            "vector",
            json!(
                samples
                    .iter()
                    .map(|s| json!({"metric": s.labels, "value": [ts_json(*t), format_float(s.value)]}))
                    .collect::<Vec<_>>()
            ),
        ),
        MetricValue::Matrix(series) => (
            "matrix",
            json!(
                series
                    .iter()
                    .map(|s| json!({
                        "metric": s.labels,
                        "values": s.points.iter().map(|(t, x)| json!([ts_json(*t), format_float(*x)])).collect::<Vec<_>>(),
                    }))
                    .collect::<Vec<_>>()
            ),
        ),
    }
}

/// Loki's `stats` object for a query that processed `s` and returned
/// `returned` entries in `exec` seconds. Cairn is one process: block
/// chunks are reported as the querier's store, the in-memory head as the
/// ingester's head chunks; caches, splits and shards do not exist (0).
fn stats_json(s: &logql::EvalStats, exec: f64, returned: usize) -> serde_json::Value {
    let per_sec = |n: u64| if exec > 0.0 { (n as f64 / exec) as u64 } else { 0 };
    let chunk_lines = s.lines.saturating_sub(s.head_lines);
    let chunk_bytes = s.line_bytes.saturating_sub(s.head_bytes);
    let downloaded = s.chunks.saturating_sub(s.chunks_skipped);
    let store = |chunk: serde_json::Value, refs: u64, downloaded: u64| {
        json!({
            "totalChunksRef": refs,
            "totalChunksDownloaded": downloaded,
            "chunksDownloadTime": 0,
            "queryReferencedStructuredMetadata": false,
            "chunk": chunk,
            "chunkRefsFetchTime": 0,
            "congestionControlLatency": 0,
            "pipelineWrapperFilteredLines": 0,
        })
    };
    let chunk = |head_bytes: u64, head_lines: u64, dec_bytes: u64, dec_lines: u64, comp: u64| {
        json!({
            "headChunkBytes": head_bytes,
            "headChunkLines": head_lines,
            "decompressedBytes": dec_bytes,
            "decompressedLines": dec_lines,
            "compressedBytes": comp,
            "totalDuplicates": 0,
            "postFilterLines": 0,
            "headChunkStructuredMetadataBytes": 0,
            "decompressedStructuredMetadataBytes": 0,
        })
    };
    let cache = || {
        json!({
            "entriesFound": 0, "entriesRequested": 0, "entriesStored": 0, "bytesReceived": 0,
            "bytesSent": 0, "requests": 0, "downloadTime": 0, "queryLengthServed": 0,
        })
    };
    json!({
        "summary": {
            "bytesProcessedPerSecond": per_sec(s.line_bytes),
            "linesProcessedPerSecond": per_sec(s.lines),
            "totalBytesProcessed": s.line_bytes,
            "totalLinesProcessed": s.lines,
            "execTime": exec,
            "queueTime": 0,
            "subqueries": 0,
            "totalEntriesReturned": returned,
            "splits": 1,
            "shards": 0,
            "totalPostFilterLines": s.post_filter_lines,
            "totalStructuredMetadataBytesProcessed": 0,
        },
        "querier": {"store": store(chunk(0, 0, chunk_bytes, chunk_lines, s.compressed_bytes), s.chunks, downloaded)},
        "ingester": {
            "totalReached": 1,
            "totalChunksMatched": 0,
            "totalBatches": 0,
            "totalLinesSent": s.head_lines,
            "store": store(chunk(s.head_bytes, s.head_lines, 0, 0, 0), 0, 0),
        },
        "cache": {
            "chunk": cache(), "index": cache(), "result": cache(), "statsResult": cache(),
            "volumeResult": cache(), "seriesResult": cache(), "labelResult": cache(),
            "instantMetricResult": cache(),
        },
        "index": {"totalChunks": s.chunks, "postFilterChunks": downloaded},
    })
}

/// What a query evaluated to.
enum QueryOutcome {
    Streams(Vec<logql::StreamResult>),
    Metric(MetricValue),
}

/// A query failure: a 400 with Loki's message, or a 500 when stored data
/// could not be read.
struct QueryFailure(StatusCode, String);

impl QueryFailure {
    fn into_response(self) -> Response {
        text_error(self.0, self.1)
    }
}

impl From<logql::ParseError> for QueryFailure {
    fn from(e: logql::ParseError) -> Self {
        QueryFailure(StatusCode::BAD_REQUEST, e.to_string())
    }
}

impl From<logql::EvalError> for QueryFailure {
    fn from(e: logql::EvalError) -> Self {
        let status = match e {
            logql::EvalError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            logql::EvalError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_REQUEST,
        };
        QueryFailure(status, e.to_string())
    }
}

struct QuerySpec {
    query: String,
    tenant: String,
    start: i64,
    end: i64,
    step: i64,
    limit: usize,
    direction: Direction,
    categorize: bool,
    instant: bool,
}

/// The control of a LogQL request that arrived at `started`: its deadline
/// (`query.logql_timeout`) and, with `limits.discover_log_levels`, the
/// level fields that imply `detected_level` from stream labels.
pub(crate) fn logql_ctl(agg: &Aggregator, tenant: &str, started: Instant) -> logql::QueryCtl {
    let t = agg.query_for(tenant).logql_timeout.0;
    let ctl = logql::QueryCtl::with_deadline((!t.is_zero()).then(|| started + t));
    let l = agg.limits_for(tenant);
    if l.discover_log_levels { ctl.with_level_fields(l.log_level_fields.clone()) } else { ctl }
}

async fn run_query(agg: &Arc<Aggregator>, spec: QuerySpec, api: &'static str) -> Response {
    let started = Instant::now();
    let agg2 = agg.clone();
    let categorize = spec.categorize;
    let ctl = logql_ctl(agg, &spec.tenant, started);
    let res = blocking(move || {
        let out = evaluate(&agg2, &spec, &ctl);
        (out, ctl.stats())
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    agg.self_metrics.observe_query(api, elapsed);
    let (out, stats) = match res {
        Ok((Ok(o), stats)) => (o, stats),
        Ok((Err(f), _)) => return f.into_response(),
        Err(r) => return r,
    };
    let (result_type, result, returned) = match &out {
        QueryOutcome::Streams(streams) => {
            ("streams", json!(streams_json(streams, categorize)), streams.iter().map(|s| s.entries.len()).sum())
        }
        QueryOutcome::Metric(v) => {
            let (t, r) = metric_json(v);
            (t, r, 0usize)
        }
    };
    let mut data = json!({
        "resultType": result_type,
        "result": result,
        "stats": stats_json(&stats, elapsed, returned),
    });
    if categorize && result_type == "streams" {
        data["encodingFlags"] = json!(["categorize-labels"]);
    }
    Json(json!({"status": "success", "data": data})).into_response()
}

/// Evaluates a query request (blocking).
fn evaluate(agg: &Aggregator, spec: &QuerySpec, ctl: &logql::QueryCtl) -> Result<QueryOutcome, QueryFailure> {
    match logql::parse(&spec.query)? {
        Expr::Log(sel) => {
            if spec.instant {
                return Err(QueryFailure(
                    StatusCode::BAD_REQUEST,
                    "log queries are not supported as an instant query type, please change your query to a range query type"
                        .into(),
                ));
            }
            let q = LogQuery {
                tenant: &spec.tenant,
                start: spec.start,
                end: spec.end,
                limit: spec.limit,
                direction: spec.direction,
                categorize: spec.categorize,
                ctl,
            };
            Ok(QueryOutcome::Streams(logql::eval_log_query(&agg.logs, &sel, &q)?))
        }
        Expr::Sample(e) => {
            let q = MetricQuery {
                tenant: &spec.tenant,
                start: spec.start,
                end: spec.end,
                step: if spec.instant { 0 } else { spec.step },
                ctl,
            };
            let v = logql::eval_metric(&agg.logs, &e, &q)?;
            let series = match &v {
                logql::MetricValue::Scalar(..) => 1,
                logql::MetricValue::Vector(_, s) => s.len(),
                logql::MetricValue::Matrix(m) => m.len(),
            };
            let max = agg.query_for(&spec.tenant).logql_max_series;
            if max > 0 && series > max {
                return Err(QueryFailure(
                    StatusCode::BAD_REQUEST,
                    format!("maximum number of series ({max}) reached for a single query"),
                ));
            }
            Ok(QueryOutcome::Metric(v))
        }
    }
}

/// `GET|POST /loki/api/v1/query_range`
pub(crate) async fn query_range(
    State(agg): State<Arc<Aggregator>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = Params::parse(q.as_deref(), &headers, &body);
    let spec = try_resp!(range_spec(&p, &headers, &agg));
    run_query(&agg, spec, "loki_query_range").await
}

fn range_spec(p: &Params, headers: &HeaderMap, agg: &Aggregator) -> Result<QuerySpec, Response> {
    let tenant = tenant(headers).map_err(bad)?;
    let query = p.get("query").ok_or_else(|| bad("query parameter is required"))?.to_string();
    let now = time::now_ns();
    let end = param_ns(p, "end", now)?;
    let since = match p.get("since") {
        None => 3_600_000_000_000,
        Some(s) => time::parse_loki_duration_ns(s).map_err(|e| bad(format!("invalid since parameter: {e}")))?,
    };
    let start = param_ns(p, "start", end.saturating_sub(since))?;
    if end < start {
        return Err(bad("end timestamp must not be before or equal to start time"));
    }
    let step = match p.get("step") {
        None => default_step_ns(start, end),
        Some(s) => time::parse_loki_duration_ns(s).map_err(|e| bad(format!("invalid step parameter: {e}")))?,
    };
    if step <= 0 {
        return Err(bad("zero or negative query resolution step widths are not accepted. Try a positive integer"));
    }
    let max_len = agg.query_for(&tenant).logql_max_query_length.0;
    if !max_len.is_zero() && end.saturating_sub(start) > i64::try_from(max_len.as_nanos()).unwrap_or(i64::MAX) {
        return Err(bad(format!(
            "the query time range exceeds the limit (query length: {}, limit: {})",
            go_duration(end.saturating_sub(start)),
            go_duration(i64::try_from(max_len.as_nanos()).unwrap_or(i64::MAX))
        )));
    }
    if end.saturating_sub(start) / step > logql::MAX_POINTS {
        return Err(bad(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ));
    }
    let limit = param_limit(p, agg, &tenant)?;
    Ok(QuerySpec {
        query,
        tenant,
        start,
        end,
        step,
        limit,
        direction: param_direction(p)?,
        categorize: categorize(headers),
        instant: false,
    })
}

/// `GET|POST /loki/api/v1/query`: instant query at `time` (default now).
pub(crate) async fn query(
    State(agg): State<Arc<Aggregator>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = Params::parse(q.as_deref(), &headers, &body);
    let spec = (|| {
        let tenant = tenant(&headers).map_err(bad)?;
        let query = p.get("query").ok_or_else(|| bad("query parameter is required"))?.to_string();
        let t = param_ns(&p, "time", time::now_ns())?;
        let limit = param_limit(&p, &agg, &tenant)?;
        Ok::<_, Response>(QuerySpec {
            query,
            tenant,
            start: t,
            end: t,
            step: 0,
            limit,
            direction: param_direction(&p)?,
            categorize: categorize(&headers),
            instant: true,
        })
    })();
    match spec {
        Ok(spec) => run_query(&agg, spec, "loki_query").await,
        Err(r) => r,
    }
}

/// `GET /loki/api/v1/status/buildinfo`, in Loki's bare shape. `version` is
/// the Loki API level Cairn answers as; Cairn's own version is in `revision`.
pub(crate) async fn buildinfo() -> Response {
    Json(json!({
        "version": "3.4.0",
        "revision": format!("cairn-{}", super::CAIRN_VERSION),
        "branch": "cairn",
        "buildUser": "cairn",
        "buildDate": "",
        "goVersion": "none (Rust)",
    }))
    .into_response()
}

/// Start/end of a metadata request: `end` defaults to now, `start` to
/// `end - since` (`since` defaults to 6 h), as Loki's label APIs do.
fn meta_range(p: &Params) -> Result<(i64, i64), Response> {
    let end = param_ns(p, "end", time::now_ns())?;
    let since = match p.get("since") {
        None => 6 * 3_600_000_000_000,
        Some(s) => time::parse_loki_duration_ns(s).map_err(|e| bad(format!("invalid since parameter: {e}")))?,
    };
    let start = param_ns(p, "start", end.saturating_sub(since))?;
    if end < start {
        return Err(bad("end timestamp must not be before or equal to start time"));
    }
    Ok((start, end))
}

/// The stream matchers of a selector (a pipeline after it is allowed and
/// ignored, as Loki's index endpoints do).
fn selector_matchers(q: &str) -> Result<Vec<cairn_wire::Matcher>, Response> {
    match logql::parse(q).map_err(|e| bad(e.to_string()))? {
        Expr::Log(sel) => Ok(sel.matchers),
        Expr::Sample(_) => Err(bad(format!("only log stream selectors are accepted here, got a metric query: {q}"))),
    }
}

fn optional_matchers(p: &Params) -> Result<Vec<cairn_wire::Matcher>, Response> {
    match p.get("query") {
        None => Ok(Vec::new()),
        Some(q) => selector_matchers(q),
    }
}

fn success(data: serde_json::Value) -> Response {
    Json(json!({"status": "success", "data": data})).into_response()
}

struct MetaRequest {
    agg: Arc<Aggregator>,
    p: Params,
    tenant: String,
}

fn meta_request(
    agg: Arc<Aggregator>,
    q: Option<String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<MetaRequest, Response> {
    let p = Params::parse(q.as_deref(), headers, body);
    let tenant = tenant(headers).map_err(bad)?;
    Ok(MetaRequest { agg, p, tenant })
}

/// `GET|POST /loki/api/v1/labels[?query=…]`: label names of the streams
/// with data in the range, sorted.
pub(crate) async fn labels(
    State(agg): State<Arc<Aggregator>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = try_resp!(meta_request(agg, q, &headers, &body));
    let (start, end, matchers) = try_resp!(meta_range(&r.p).and_then(|(s, e)| Ok((s, e, optional_matchers(&r.p)?))));
    let res = blocking(move || {
        let mut names: Vec<String> = Vec::new();
        for (l, _) in r.agg.logs.streams(&r.tenant, &matchers, start, end) {
            names.extend(l.iter().map(|x| x.name.clone()));
        }
        names.sort();
        names.dedup();
        names
    })
    .await;
    match res {
        Ok(names) => success(json!(names)),
        Err(e) => e,
    }
}

/// `GET|POST /loki/api/v1/label/<name>/values[?query=…]`
pub(crate) async fn label_values(
    State(agg): State<Arc<Aggregator>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = try_resp!(meta_request(agg, q, &headers, &body));
    let (start, end, matchers) = try_resp!(meta_range(&r.p).and_then(|(s, e)| Ok((s, e, optional_matchers(&r.p)?))));
    let res = blocking(move || {
        let mut values: Vec<String> = r
            .agg
            .logs
            .streams(&r.tenant, &matchers, start, end)
            .into_iter()
            .filter_map(|(l, _)| l.get(&name).map(str::to_string))
            .collect();
        values.sort();
        values.dedup();
        values
    })
    .await;
    match res {
        Ok(v) => success(json!(v)),
        Err(e) => e,
    }
}

/// `GET|POST /loki/api/v1/series?match[]=…`: label sets of the streams
/// matching any selector. With no `match[]`, every stream (Loki requires
/// one; Cairn is lenient).
pub(crate) async fn series(
    State(agg): State<Arc<Aggregator>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = try_resp!(meta_request(agg, q, &headers, &body));
    let (start, end) = try_resp!(meta_range(&r.p));
    let mut sets = Vec::new();
    for m in r.p.all("match[]") {
        match selector_matchers(m) {
            Ok(ms) => sets.push(ms),
            Err(e) => return e,
        }
    }
    if sets.is_empty() {
        sets.push(Vec::new());
    }
    let res = blocking(move || {
        let mut all: Vec<Labels> = Vec::new();
        for ms in &sets {
            all.extend(r.agg.logs.streams(&r.tenant, ms, start, end).into_iter().map(|(l, _)| l));
        }
        all.sort();
        all.dedup();
        all
    })
    .await;
    match res {
        Ok(v) => success(json!(v)),
        Err(e) => e,
    }
}

/// `GET|POST /loki/api/v1/index/stats?query=…`: bare `{streams, chunks,
/// entries, bytes}`.
pub(crate) async fn index_stats(
    State(agg): State<Arc<Aggregator>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = try_resp!(meta_request(agg, q, &headers, &body));
    let (start, end) = try_resp!(meta_range(&r.p));
    let Some(query) = r.p.get("query") else {
        return bad("query parameter is required");
    };
    let matchers = try_resp!(selector_matchers(query));
    let res = blocking(move || {
        let s = r.agg.logs.streams(&r.tenant, &matchers, start, end);
        let (mut chunks, mut entries, mut bytes) = (0u64, 0u64, 0u64);
        for (_, st) in &s {
            chunks += st.chunks;
            entries += st.entries;
            bytes += st.bytes;
        }
        json!({"streams": s.len(), "chunks": chunks, "entries": entries, "bytes": bytes})
    })
    .await;
    match res {
        Ok(v) => Json(v).into_response(),
        Err(e) => e,
    }
}

/// A volume group: (label, value) pairs.
type VolumeKey = Vec<(String, String)>;

/// How `/index/volume` groups streams.
struct VolumeSpec {
    matchers: Vec<cairn_wire::Matcher>,
    targets: Vec<String>,
    by_labels: bool,
    limit: usize,
}

fn volume_spec(p: &Params) -> Result<VolumeSpec, Response> {
    let query = p.get("query").ok_or_else(|| bad("query parameter is required"))?;
    let matchers = selector_matchers(query)?;
    let targets: Vec<String> = match p.get("targetLabels") {
        Some(t) => t.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        None => {
            let mut v: Vec<String> = matchers.iter().map(|m| m.name.clone()).collect();
            v.dedup();
            v
        }
    };
    let by_labels = match p.get("aggregateBy") {
        None | Some("series") => false,
        Some("labels") => true,
        Some(o) => return Err(bad(format!("invalid aggregateBy {o:?}: expected series or labels"))),
    };
    let limit = match p.get("limit").map(str::parse::<usize>) {
        None => 100,
        Some(Ok(l)) if l > 0 => l,
        _ => return Err(bad("invalid limit parameter: expected a positive integer")),
    };
    Ok(VolumeSpec { matchers, targets, by_labels, limit })
}

/// The volume groups a stream counts in: one key of its target label
/// pairs (`aggregateBy=series`), or one `{name: ""}` key per target label
/// it has (`aggregateBy=labels`).
fn volume_keys(spec: &VolumeSpec, l: &Labels) -> Vec<VolumeKey> {
    if spec.by_labels {
        return spec.targets.iter().filter(|t| l.get(t).is_some()).map(|t| vec![(t.clone(), String::new())]).collect();
    }
    let key: VolumeKey = spec.targets.iter().filter_map(|t| l.get(t).map(|v| (t.clone(), v.to_string()))).collect();
    if key.is_empty() { Vec::new() } else { vec![key] }
}

fn volume_metric(key: &[(String, String)]) -> serde_json::Value {
    serde_json::Value::Object(key.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

/// `GET|POST /loki/api/v1/index/volume`: bytes per target-label group over
/// the range, as a Prometheus-style vector at `end`, largest first.
pub(crate) async fn index_volume(
    State(agg): State<Arc<Aggregator>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = try_resp!(meta_request(agg, q, &headers, &body));
    let (start, end, spec) = try_resp!(meta_range(&r.p).and_then(|(s, e)| Ok((s, e, volume_spec(&r.p)?))));
    let res = blocking(move || {
        let mut groups: std::collections::HashMap<VolumeKey, u64> = Default::default();
        for (l, st) in r.agg.logs.streams(&r.tenant, &spec.matchers, start, end) {
            for key in volume_keys(&spec, &l) {
                *groups.entry(key).or_default() += st.bytes;
            }
        }
        let mut v: Vec<(VolumeKey, u64)> = groups.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(spec.limit);
        let t = ts_json(end.div_euclid(1_000_000));
        v.into_iter()
            .map(|(k, b)| json!({"metric": volume_metric(&k), "value": [t.clone(), b.to_string()]}))
            .collect::<Vec<_>>()
    })
    .await;
    match res {
        Ok(v) => success(json!({"resultType": "vector", "result": v})),
        Err(e) => e,
    }
}

/// `GET|POST /loki/api/v1/index/volume_range`: bytes per group per step;
/// an entry at `ts` counts for the step `t` with `t - step < ts <= t`.
pub(crate) async fn index_volume_range(
    State(agg): State<Arc<Aggregator>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = try_resp!(meta_request(agg, q, &headers, &body));
    let (start, end, spec) = try_resp!(meta_range(&r.p).and_then(|(s, e)| Ok((s, e, volume_spec(&r.p)?))));
    let step = match r.p.get("step") {
        None => default_step_ns(start, end),
        Some(s) => match time::parse_loki_duration_ns(s) {
            Ok(v) if v > 0 => v,
            _ => return bad("invalid step parameter: expected a positive duration or number of seconds"),
        },
    };
    if end.saturating_sub(start) / step > logql::MAX_POINTS {
        return bad(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        );
    }
    let res = blocking(move || {
        let nsteps = (end.saturating_sub(start) / step + 1) as usize;
        let mut groups: std::collections::HashMap<VolumeKey, Vec<u64>> = Default::default();
        let scanned = r.agg.logs.scan_timestamps(
            &r.tenant,
            &spec.matchers,
            start.saturating_sub(step).saturating_add(1),
            end.saturating_add(1),
            true,
            &mut |l, ts, lens, _| {
                for key in volume_keys(&spec, l) {
                    let buckets = groups.entry(key).or_insert_with(|| vec![0; nsteps]);
                    for (&t, &len) in ts.iter().zip(lens) {
                        // smallest k with start + k*step >= ts
                        let k =
                            ((t as i128 - start as i128 + step as i128 - 1).div_euclid(step as i128)).max(0) as usize;
                        if let Some(b) = buckets.get_mut(k) {
                            *b += u64::from(len);
                        }
                    }
                }
            },
        );
        if let Err(e) = scanned {
            tracing::error!(error = %e, "log block read failed; volume is incomplete");
        }
        let mut v: Vec<(VolumeKey, Vec<u64>)> = groups.into_iter().collect();
        v.sort_by(|a, b| b.1.iter().sum::<u64>().cmp(&a.1.iter().sum::<u64>()).then(a.0.cmp(&b.0)));
        v.truncate(spec.limit);
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.into_iter()
            .map(|(k, buckets)| {
                let values: Vec<serde_json::Value> = buckets
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| **b > 0)
                    .map(|(i, b)| {
                        json!([ts_json(start.saturating_add(i as i64 * step).div_euclid(1_000_000)), b.to_string()])
                    })
                    .collect();
                json!({"metric": volume_metric(&k), "values": values})
            })
            .collect::<Vec<_>>()
    })
    .await;
    match res {
        Ok(v) => success(json!({"resultType": "matrix", "result": v})),
        Err(e) => e,
    }
}

/// `GET|POST /loki/api/v1/detected_labels`: stream label names with their
/// number of distinct values over the range (`{"detectedLabels": […]}`).
pub(crate) async fn detected_labels(
    State(agg): State<Arc<Aggregator>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = try_resp!(meta_request(agg, q, &headers, &body));
    let (start, end, matchers) = try_resp!(meta_range(&r.p).and_then(|(s, e)| Ok((s, e, optional_matchers(&r.p)?))));
    let res = blocking(move || {
        let mut values: std::collections::BTreeMap<String, std::collections::HashSet<String>> = Default::default();
        for (l, _) in r.agg.logs.streams(&r.tenant, &matchers, start, end) {
            for x in l.iter() {
                values.entry(x.name.clone()).or_default().insert(x.value.clone());
            }
        }
        values.into_iter().map(|(label, vs)| json!({"label": label, "cardinality": vs.len()})).collect::<Vec<_>>()
    })
    .await;
    match res {
        Ok(v) => Json(json!({"detectedLabels": v})).into_response(),
        Err(e) => e,
    }
}

/// `GET /loki/api/v1/rules`: Cairn evaluates no rules; the ruler API's
/// YAML answer for "no rule groups" is an empty mapping.
pub(crate) async fn rules_yaml() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], "{}\n").into_response()
}

/// `GET|POST /loki/api/v1/format_query?query=…`: the query in canonical
/// single-line form (see `cairn_query::logql` `format.rs`).
pub(crate) async fn format_query(RawQuery(q): RawQuery, headers: HeaderMap, body: Bytes) -> Response {
    let p = Params::parse(q.as_deref(), &headers, &body);
    let Some(query) = p.get("query") else {
        return bad("query parameter is required");
    };
    match logql::parse(query) {
        Ok(e) => success(json!(e.to_string())),
        Err(e) => bad(e.to_string()),
    }
}

fn log_selector_param(p: &Params) -> Result<logql::LogSelector, Response> {
    let q = p.get("query").ok_or_else(|| bad("query parameter is required"))?;
    match logql::parse(q).map_err(|e| bad(e.to_string()))? {
        Expr::Log(sel) => Ok(sel),
        Expr::Sample(_) => Err(bad("detected fields need a log query, not a metric query")),
    }
}

fn usize_param(p: &Params, keys: &[&str], default: usize) -> Result<usize, Response> {
    for k in keys {
        if let Some(v) = p.get(k) {
            return v
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(format!("invalid {k} parameter: expected a positive integer")));
        }
    }
    Ok(default)
}

/// The newest `limit` entries of `[start, end)`, as the detected-fields and
/// patterns endpoints read them.
fn meta_log_query<'a>(tenant: &'a str, start: i64, end: i64, limit: usize, ctl: &'a logql::QueryCtl) -> LogQuery<'a> {
    LogQuery { tenant, start, end, limit, direction: Direction::Backward, categorize: true, ctl }
}

/// `GET /loki/api/v1/detected_fields`: bare `{"fields": […], "limit": N}`
/// from the newest `line_limit` lines (default 1000) of the query.
pub(crate) async fn detected_fields(
    State(agg): State<Arc<Aggregator>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = try_resp!(meta_request(agg, q, &headers, &body));
    let parsed = (|| {
        let (start, end) = meta_range(&r.p)?;
        let sel = log_selector_param(&r.p)?;
        let line_limit = usize_param(&r.p, &["line_limit"], 1000)?.min(r.agg.query_for(&r.tenant).max_entries_limit);
        let field_limit = usize_param(&r.p, &["field_limit", "limit"], 1000)?;
        Ok::<_, Response>((start, end, sel, line_limit, field_limit))
    })();
    let (start, end, sel, line_limit, field_limit) = try_resp!(parsed);
    let ctl = logql_ctl(&r.agg, &r.tenant, Instant::now());
    let res = blocking(move || {
        let q = meta_log_query(&r.tenant, start, end, line_limit, &ctl);
        let fields = logql::detect_fields(&r.agg.logs, &sel, &q, field_limit)
            .map_err(|e| QueryFailure::from(e).into_response())?;
        Ok::<_, Response>(
            fields
                .into_iter()
                .map(|f| {
                    let mut o = json!({
                        "label": f.label,
                        "type": f.kind,
                        "cardinality": f.cardinality,
                        "parsers": if f.parsers.is_empty() { serde_json::Value::Null } else { json!(f.parsers) },
                    });
                    if !f.json_path.is_empty() {
                        o["jsonPath"] = json!(f.json_path);
                    }
                    o
                })
                .collect::<Vec<_>>(),
        )
    })
    .await;
    match res {
        Ok(Ok(fields)) => Json(json!({"fields": fields, "limit": field_limit})).into_response(),
        Ok(Err(e)) | Err(e) => e,
    }
}

/// `GET|POST /loki/api/v1/patterns?query&start&end&step`: Drain patterns of
/// the newest lines of the range (see [`logql::detect_patterns`]),
/// `{"status": "success", "data": [{"pattern", "level", "samples": [[s, n]…]}]}`.
pub(crate) async fn patterns(
    State(agg): State<Arc<Aggregator>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = try_resp!(meta_request(agg, q, &headers, &body));
    let parsed = (|| {
        let (start, end) = meta_range(&r.p)?;
        let sel = log_selector_param(&r.p)?;
        let step = match r.p.get("step") {
            None => default_step_ns(start, end),
            Some(s) => time::parse_loki_duration_ns(s).map_err(|e| bad(format!("invalid step parameter: {e}")))?,
        };
        if step <= 0 {
            return Err(bad("zero or negative query resolution step widths are not accepted. Try a positive integer"));
        }
        Ok::<_, Response>((start, end, sel, step))
    })();
    let (start, end, sel, step) = try_resp!(parsed);
    let ctl = logql_ctl(&r.agg, &r.tenant, Instant::now());
    let res = blocking(move || {
        let q = meta_log_query(&r.tenant, start, end, logql::MAX_PATTERN_LINES, &ctl);
        logql::detect_patterns(&r.agg.logs, &sel, &q, step).map_err(|e| QueryFailure::from(e).into_response())
    })
    .await;
    match res {
        Ok(Ok(series)) => {
            let data: Vec<serde_json::Value> =
                series.iter().map(|p| json!({"pattern": p.pattern, "level": p.level, "samples": p.samples})).collect();
            Json(json!({"status": "success", "data": data})).into_response()
        }
        Ok(Err(e)) | Err(e) => e,
    }
}

/// `GET /loki/api/v1/detected_field/<name>/values`: bare
/// `{"values": […], "limit": N}`.
pub(crate) async fn detected_field_values(
    State(agg): State<Arc<Aggregator>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = try_resp!(meta_request(agg, q, &headers, &body));
    let parsed = (|| {
        let (start, end) = meta_range(&r.p)?;
        let sel = log_selector_param(&r.p)?;
        let line_limit = usize_param(&r.p, &["line_limit"], 1000)?.min(r.agg.query_for(&r.tenant).max_entries_limit);
        let limit = usize_param(&r.p, &["limit"], 1000)?;
        Ok::<_, Response>((start, end, sel, line_limit, limit))
    })();
    let (start, end, sel, line_limit, limit) = try_resp!(parsed);
    let ctl = logql_ctl(&r.agg, &r.tenant, Instant::now());
    let res = blocking(move || {
        let q = meta_log_query(&r.tenant, start, end, line_limit, &ctl);
        let mut v = logql::detected_field_values(&r.agg.logs, &sel, &q, &name)
            .map_err(|e| QueryFailure::from(e).into_response())?;
        v.truncate(limit);
        Ok::<_, Response>(v)
    })
    .await;
    match res {
        Ok(Ok(values)) => Json(json!({"values": values, "limit": limit})).into_response(),
        Ok(Err(e)) | Err(e) => e,
    }
}

/// A duration (ns, at least a second) as Go's `time.Duration` prints it
/// (`721h0m0s`, `1m30.5s`), for Loki-worded errors.
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = if ns < 0 { "-" } else { "" };
    let ns = ns.unsigned_abs();
    let (h, rest) = (ns / 3_600_000_000_000, ns % 3_600_000_000_000);
    let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let (s, frac) = (rest / 1_000_000_000, rest % 1_000_000_000);
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{frac:09}");
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => format!("{neg}{secs}"),
        (0, m) => format!("{neg}{m}m{secs}"),
        (h, m) => format!("{neg}{h}h{m}m{secs}"),
    }
}

#[cfg(test)]
mod go_duration_tests {
    #[test]
    fn prints_as_go_does() {
        assert_eq!(super::go_duration(721 * 3_600_000_000_000), "721h0m0s");
        assert_eq!(super::go_duration(90_500_000_000), "1m30.5s");
        assert_eq!(super::go_duration(0), "0s");
    }
}
