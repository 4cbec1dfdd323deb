//! The Loki HTTP API: push (protobuf+snappy or JSON, optionally gzip or
//! deflate), range queries, build info.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_query::logql::{self, Direction, Expr, LogQuery};
use cairn_wire::proto::PushRequest;
use cairn_wire::{Entry, Labels, StreamEntries, loki_json, time};
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

/// `GET /loki/api/v1/query_range`
pub(crate) async fn query_range(
    State(agg): State<Arc<Aggregator>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = Params::parse(q.as_deref(), &headers, &[]);
    let tenant = match tenant(&headers) {
        Ok(t) => t,
        Err(m) => return bad(m),
    };
    let Some(qs) = p.get("query").map(str::to_string) else {
        return bad("query parameter is required");
    };
    let now = time::now_ns();
    let end = match param_ns(&p, "end", now) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let start = match param_ns(&p, "start", end - 3_600_000_000_000) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if end < start {
        return bad("end timestamp must not be before or equal to start time");
    }
    let limit = match p.get("limit").map(str::parse::<u64>) {
        None => 100,
        Some(Ok(l)) => l as usize,
        Some(Err(_)) => return bad("invalid limit parameter: expected a non-negative integer"),
    };
    let max = agg.config.query.max_entries_limit;
    if limit > max {
        return bad(format!("max entries limit per query exceeded, limit > max_entries_limit ({limit} > {max})"));
    }
    let direction = match p.get("direction") {
        None => Direction::Backward,
        Some(d) => match Direction::parse(d) {
            Some(d) => d,
            None => return bad(format!("invalid direction {d:?}: expected forward or backward")),
        },
    };
    let started = Instant::now();
    let agg2 = agg.clone();
    let res = blocking(move || {
        let expr = logql::parse(&qs)?;
        let Expr::Log(sel) = expr;
        let q = LogQuery { tenant: &tenant, start, end, limit, direction };
        Ok::<_, logql::ParseError>(logql::eval_log_query(&agg2.logs, &sel, &q))
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    agg.self_metrics.observe_query("loki_query_range", elapsed);
    match res {
        Ok(Ok(streams)) => {
            let lines: usize = streams.iter().map(|s| s.entries.len()).sum();
            let result: Vec<_> = streams
                .iter()
                .map(|s| {
                    json!({
                        "stream": s.labels,
                        "values": s.entries.iter().map(|(ts, line)| json!([ts.to_string(), line])).collect::<Vec<_>>(),
                    })
                })
                .collect();
            Json(json!({
                "status": "success",
                "data": {
                    "resultType": "streams",
                    "result": result,
                    "stats": {"summary": {
                        "execTime": elapsed,
                        "totalEntriesReturned": lines,
                    }},
                }
            }))
            .into_response()
        }
        Ok(Err(e)) => bad(e.to_string()),
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
