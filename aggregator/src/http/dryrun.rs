//! `POST /api/v1/pipeline/test`: the dry run of `cairn pipeline test` over
//! HTTP. Body: `{"labels": "{job=\"app\"}", "lines": ["…", …]}`, plus an
//! optional `"pipeline": [ … ]` (the `[[pipeline]]` chains as JSON) to try
//! chains other than the server's. The chains are compiled afresh for the
//! request, so counters, label-value counts, rate-limit buckets and derived
//! metrics of the running pipeline are never touched, and nothing is
//! stored. The tenant is `X-Scope-OrgID`'s.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use super::{blocking, tenant};
use crate::Aggregator;
use crate::pipeline::{PipelineConfig, dry_run};

/// Most lines one dry run takes.
const MAX_LINES: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DryRunRequest {
    labels: String,
    lines: Vec<String>,
    #[serde(default)]
    pipeline: Option<Vec<PipelineConfig>>,
}

fn bad(msg: impl Into<String>) -> Response {
    let body = serde_json::json!({"status": "error", "errorType": "bad_data", "error": msg.into()});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

pub(crate) async fn pipeline_test(State(agg): State<Arc<Aggregator>>, headers: HeaderMap, body: Bytes) -> Response {
    let tenant = match tenant(&headers) {
        Ok(t) => t,
        Err(e) => return bad(e),
    };
    let req: DryRunRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("invalid request body: {e}")),
    };
    let labels = match cairn_wire::Labels::parse(&req.labels) {
        Ok(l) if !l.is_empty() => l,
        Ok(_) => return bad("labels: at least one label is needed"),
        Err(e) => return bad(format!("labels: {e}")),
    };
    if req.lines.len() > MAX_LINES {
        return bad(format!("{} lines: at most {MAX_LINES} per dry run", req.lines.len()));
    }
    let chains = req.pipeline.unwrap_or_else(|| agg.config.pipeline.clone());
    let limits = agg.config.pipeline_limits();
    let now = cairn_wire::time::now_ns();
    let res = try_resp!(blocking(move || dry_run(&chains, limits, &tenant, labels, req.lines, now)).await);
    match res {
        Err(e) => bad(e.to_string()),
        Ok(crate::pipeline::DryRun { pipelines, traced, metrics }) => {
            let metrics: Vec<serde_json::Value> = metrics
                .iter()
                .map(|(l, v)| serde_json::json!({"labels": l, "value": cairn_wire::format_float(*v)}))
                .collect();
            let results: Vec<serde_json::Value> = traced.iter().map(|t| t.to_json(now)).collect();
            let body = serde_json::json!({
                "status": "success",
                "data": {"pipelines": pipelines, "results": results, "metrics": metrics},
            });
            Json(body).into_response()
        }
    }
}
