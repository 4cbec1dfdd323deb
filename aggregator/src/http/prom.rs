//! The Prometheus HTTP API: remote_write receiver, instant and range queries,
//! build info.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_query::promql::{self, QueryError, Value};
use cairn_wire::proto::WriteRequest;
use cairn_wire::{Labels, SeriesSamples, format_float, time};
use prost::Message;
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
    let raw = match decode_body(&headers, &body, agg.config.limits.max_decompressed_size.0 as usize, true) {
        Ok(r) => r,
        Err(e) => {
            sm.reject("requests", if matches!(e, BodyError::TooLarge(_)) { "too_large" } else { "bad_encoding" }, 1);
            return text_error(e.status(), e.message());
        }
    };
    let req = match WriteRequest::decode(raw.as_slice()) {
        Ok(r) => r,
        Err(e) => {
            sm.reject("requests", "bad_protobuf", 1);
            return text_error(StatusCode::BAD_REQUEST, format!("invalid remote_write protobuf: {e}"));
        }
    };
    let mut batch = Vec::with_capacity(req.timeseries.len());
    let mut pre_refused = Vec::new();
    for ts in req.timeseries {
        let n_hist = ts.histograms.len();
        let labels = Labels::from_pairs(ts.labels.into_iter().map(|l| (l.name, l.value)));
        match labels {
            Ok(labels) => {
                if n_hist > 0 {
                    sm.reject("samples", Refusal::NativeHistogram.as_str(), n_hist as u64);
                    pre_refused.push(format!(
                        "{n_hist} native histogram samples for {labels} refused: native histograms are not stored by this Cairn version"
                    ));
                }
                batch.push(SeriesSamples {
                    labels,
                    samples: ts.samples.into_iter().map(|s| (s.timestamp, s.value)).collect(),
                })
            }
            Err(e) => {
                sm.reject("samples", Refusal::InvalidLabels.as_str(), (ts.samples.len() + n_hist) as u64);
                pre_refused.push(format!("series refused: {e}"));
            }
        }
    }
    let res = blocking(move || agg.ingest_metrics(&tenant, batch)).await;
    let res = match res {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match res {
        Ok(mut report) if !pre_refused.is_empty() => {
            report.refused += pre_refused.len();
            pre_refused.extend(report.messages);
            report.messages = pre_refused;
            report.messages.truncate(5);
            ingest_response(Ok(report))
        }
        other => ingest_response(other),
    }
}

/// Prometheus API error body.
fn api_error(status: StatusCode, error_type: &str, msg: impl Into<String>) -> Response {
    (status, Json(json!({"status": "error", "errorType": error_type, "error": msg.into()}))).into_response()
}

fn query_error(e: QueryError) -> Response {
    let status = match e {
        QueryError::Execution(_) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::BAD_REQUEST,
    };
    api_error(status, e.error_type(), e.to_string())
}

/// Prometheus JSON timestamp: float seconds, integer when whole.
fn ts_json(ms: i64) -> J {
    if ms % 1000 == 0 { json!(ms / 1000) } else { json!(ms as f64 / 1000.0) }
}

fn point_json(ms: i64, v: f64) -> J {
    json!([ts_json(ms), format_float(v)])
}

fn value_json(v: &Value) -> J {
    match v {
        Value::Scalar(t, v) => json!({"resultType": "scalar", "result": point_json(*t, *v)}),
        Value::String(t, s) => json!({"resultType": "string", "result": [ts_json(*t), s]}),
        Value::Vector(vs) => json!({
            "resultType": "vector",
            "result": vs.iter().map(|s| json!({"metric": s.labels, "value": point_json(s.t, s.v)})).collect::<Vec<_>>(),
        }),
        Value::Matrix(ms) => matrix_json(ms),
    }
}

fn matrix_json(ms: &[promql::Series]) -> J {
    json!({
        "resultType": "matrix",
        "result": ms.iter().map(|s| json!({
            "metric": s.labels,
            "values": s.points.iter().map(|&(t, v)| point_json(t, v)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
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
    let Some(qs) = p.get("query").map(str::to_string) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "bad_data",
            "invalid parameter \"query\": unknown position: parse error: no expression found in input",
        );
    };
    let t = match param_time(&p, "time") {
        Ok(t) => t.unwrap_or_else(time::now_ms),
        Err(r) => return r,
    };
    let started = Instant::now();
    let lookback = agg.config.query.lookback_delta.as_millis();
    let agg2 = agg.clone();
    let res = blocking(move || {
        let expr = promql::parse(&qs)?;
        promql::instant_query(&agg2.metrics, &tenant, &expr, t, lookback)
    })
    .await;
    agg.self_metrics.observe_query("prometheus_query", started.elapsed().as_secs_f64());
    match res {
        Ok(Ok(v)) => Json(json!({"status": "success", "data": value_json(&v)})).into_response(),
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
    let Some(qs) = p.get("query").map(str::to_string) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "bad_data",
            "invalid parameter \"query\": unknown position: parse error: no expression found in input",
        );
    };
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
    let started = Instant::now();
    let lookback = agg.config.query.lookback_delta.as_millis();
    let agg2 = agg.clone();
    let res = blocking(move || {
        let expr = promql::parse(&qs)?;
        promql::range_query(&agg2.metrics, &tenant, &expr, start, end, step, lookback)
    })
    .await;
    agg.self_metrics.observe_query("prometheus_query_range", started.elapsed().as_secs_f64());
    match res {
        Ok(Ok(m)) => Json(json!({"status": "success", "data": matrix_json(&m)})).into_response(),
        Ok(Err(e)) => query_error(e),
        Err(r) => r,
    }
}

/// `GET /api/v1/status/buildinfo`. `version` is the Prometheus API level
/// Cairn answers as (Grafana gates features on it); Cairn's own version is
/// in `revision`.
pub(crate) async fn buildinfo() -> Response {
    Json(json!({
        "status": "success",
        "data": {
            "version": "2.53.0",
            "revision": format!("cairn-{}", super::CAIRN_VERSION),
            "branch": "cairn",
            "buildUser": "cairn",
            "buildDate": "",
            "goVersion": "none (Rust)",
        }
    }))
    .into_response()
}
