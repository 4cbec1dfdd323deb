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
    let max = agg.config.limits.max_decompressed_size.0 as usize;
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
    let res = match blocking(move || agg.ingest_logs(&tenant, batch)).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
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

fn param_limit(p: &Params, agg: &Aggregator) -> Result<usize, Response> {
    let limit = match p.get("limit").map(str::parse::<u64>) {
        None => 100,
        Some(Ok(l)) => l as usize,
        Some(Err(_)) => return Err(bad("invalid limit parameter: expected a non-negative integer")),
    };
    let max = agg.config.query.max_entries_limit;
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
    (((end - start) / 1_000_000_000) / 250).max(1) * 1_000_000_000
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

/// What a query evaluated to.
enum QueryOutcome {
    Streams(Vec<logql::StreamResult>),
    Metric(MetricValue),
}

/// A query failure: a 400 with Loki's message.
struct QueryFailure(String);

impl From<logql::ParseError> for QueryFailure {
    fn from(e: logql::ParseError) -> Self {
        QueryFailure(e.to_string())
    }
}

impl From<logql::EvalError> for QueryFailure {
    fn from(e: logql::EvalError) -> Self {
        QueryFailure(e.to_string())
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

async fn run_query(agg: &Arc<Aggregator>, spec: QuerySpec, api: &'static str) -> Response {
    let started = Instant::now();
    let agg2 = agg.clone();
    let categorize = spec.categorize;
    let res = blocking(move || -> Result<QueryOutcome, QueryFailure> {
        match logql::parse(&spec.query)? {
            Expr::Log(sel) => {
                if spec.instant {
                    return Err(QueryFailure(
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
                };
                Ok(QueryOutcome::Streams(logql::eval_log_query(&agg2.logs, &sel, &q)))
            }
            Expr::Sample(e) => {
                let q = MetricQuery {
                    tenant: &spec.tenant,
                    start: spec.start,
                    end: spec.end,
                    step: if spec.instant { 0 } else { spec.step },
                };
                Ok(QueryOutcome::Metric(logql::eval_metric(&agg2.logs, &e, &q)?))
            }
        }
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    agg.self_metrics.observe_query(api, elapsed);
    let out = match res {
        Ok(Ok(o)) => o,
        Ok(Err(QueryFailure(m))) => return bad(m),
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
        "stats": {"summary": {"execTime": elapsed, "totalEntriesReturned": returned}},
    });
    if categorize && result_type == "streams" {
        data["encodingFlags"] = json!(["categorize-labels"]);
    }
    Json(json!({"status": "success", "data": data})).into_response()
}

/// `GET|POST /loki/api/v1/query_range`
pub(crate) async fn query_range(
    State(agg): State<Arc<Aggregator>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = Params::parse(q.as_deref(), &headers, &body);
    let spec = match range_spec(&p, &headers, &agg) {
        Ok(s) => s,
        Err(r) => return r,
    };
    run_query(&agg, spec, "loki_query_range").await
}

fn range_spec(p: &Params, headers: &HeaderMap, agg: &Aggregator) -> Result<QuerySpec, Response> {
    let tenant = tenant(headers).map_err(bad)?;
    let query = p.get("query").ok_or_else(|| bad("query parameter is required"))?.to_string();
    let now = time::now_ns();
    let end = param_ns(p, "end", now)?;
    let start = param_ns(p, "start", end - 3_600_000_000_000)?;
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
    if (end - start) / step > logql::MAX_POINTS {
        return Err(bad(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ));
    }
    Ok(QuerySpec {
        query,
        tenant,
        start,
        end,
        step,
        limit: param_limit(p, agg)?,
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
        Ok::<_, Response>(QuerySpec {
            query,
            tenant,
            start: t,
            end: t,
            step: 0,
            limit: param_limit(&p, &agg)?,
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
