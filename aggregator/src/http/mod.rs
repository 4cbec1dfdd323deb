//! The HTTP API: ingest endpoints, the Prometheus and Loki query APIs, and
//! the operational endpoints (`/ready`, `/metrics`).

// Handlers return `Result<_, Response>` so an early error is one `?` away;
// the error path runs once per failed request, so its size does not matter.
#![allow(clippy::result_large_err)]

/// `expr?` for handlers that return a plain `Response`: the `Ok` value, or
/// an early return of the `Err` response.
macro_rules! try_resp {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

mod dryrun;
mod loki;
mod prom;
mod tail;

use std::io::Read;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::Aggregator;

/// Cairn's own version.
pub const CAIRN_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds the full router.
pub fn router(agg: Arc<Aggregator>) -> Router {
    // The largest any tenant may send; each write handler then checks its
    // own tenant's limit.
    let body_limit = agg.max_request_size() as usize;
    let read_timeout = agg.config.server.read_timeout.0;
    Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(self_metrics))
        // Prometheus
        .route("/api/v1/write", post(prom::write))
        .route("/api/v1/query", get(prom::query).post(prom::query))
        .route("/api/v1/query_range", get(prom::query_range).post(prom::query_range))
        .route("/api/v1/status/buildinfo", get(prom::buildinfo))
        .route("/api/v1/series", get(prom::series).post(prom::series))
        .route("/api/v1/labels", get(prom::labels).post(prom::labels))
        .route("/api/v1/label/{name}/values", get(prom::label_values))
        .route("/api/v1/metadata", get(prom::metadata))
        .route("/api/v1/query_exemplars", get(prom::query_exemplars).post(prom::query_exemplars))
        .route("/api/v1/rules", get(prom::rules))
        .route("/api/v1/alerts", get(prom::alerts))
        .route("/api/v1/format_query", get(prom::format_query).post(prom::format_query))
        .route("/api/v1/status/runtimeinfo", get(prom::runtimeinfo))
        .route("/api/v1/status/tsdb", get(prom::tsdb_status))
        // Cairn's own
        .route("/api/v1/pipeline/test", post(dryrun::pipeline_test))
        // Loki
        .route("/loki/api/v1/push", post(loki::push))
        .route("/loki/api/v1/query_range", get(loki::query_range).post(loki::query_range))
        .route("/loki/api/v1/query", get(loki::query).post(loki::query))
        .route("/loki/api/v1/labels", get(loki::labels).post(loki::labels))
        .route("/loki/api/v1/label/{name}/values", get(loki::label_values).post(loki::label_values))
        .route("/loki/api/v1/series", get(loki::series).post(loki::series))
        .route("/loki/api/v1/index/stats", get(loki::index_stats).post(loki::index_stats))
        .route("/loki/api/v1/index/volume", get(loki::index_volume).post(loki::index_volume))
        .route("/loki/api/v1/index/volume_range", get(loki::index_volume_range).post(loki::index_volume_range))
        .route("/loki/api/v1/detected_labels", get(loki::detected_labels).post(loki::detected_labels))
        .route("/loki/api/v1/detected_fields", get(loki::detected_fields).post(loki::detected_fields))
        .route(
            "/loki/api/v1/detected_field/{name}/values",
            get(loki::detected_field_values).post(loki::detected_field_values),
        )
        .route("/loki/api/v1/patterns", get(loki::patterns).post(loki::patterns))
        .route("/loki/api/v1/tail", get(tail::tail))
        .route("/loki/api/v1/format_query", get(loki::format_query).post(loki::format_query))
        .route("/loki/api/v1/rules", get(loki::rules_yaml))
        .route("/prometheus/api/v1/rules", get(prom::rules))
        .route("/prometheus/api/v1/alerts", get(prom::alerts))
        .route("/loki/api/v1/status/buildinfo", get(loki::buildinfo))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(move |req, next| {
            crate::serve::body_timeout(read_timeout, body_limit, req, next)
        }))
        .with_state(agg)
}

async fn ready() -> &'static str {
    "ready\n"
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

async fn self_metrics(State(agg): State<Arc<Aggregator>>) -> Response {
    let body = agg.render_self_metrics();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

/// The tenant of a request: `X-Scope-OrgID`, or the default tenant.
pub(crate) fn tenant(headers: &HeaderMap) -> Result<String, String> {
    match headers.get("x-scope-orgid") {
        None => Ok(cairn_wire::DEFAULT_TENANT.to_string()),
        Some(v) => {
            let s = v.to_str().map_err(|_| "X-Scope-OrgID is not valid ASCII".to_string())?.trim();
            if !valid_tenant_id(s) {
                return Err(format!("invalid tenant ID {s:?} in X-Scope-OrgID"));
            }
            Ok(s.to_string())
        }
    }
}

/// Whether `s` may be a tenant ID: 1 to 150 bytes, no `|`, not `.` or `..`.
pub(crate) fn valid_tenant_id(s: &str) -> bool {
    !(s.is_empty() || s.len() > 150 || s.contains('|') || s == "." || s == "..")
}

/// Query parameters from the URL and, for form POSTs, the body; repeated
/// keys (`match[]`) are kept in order.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn parse(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Params {
        let mut v: Vec<(String, String)> = Vec::new();
        if let Some(q) = query {
            v.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
        }
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|c| c.to_str().ok())
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            v.extend(form_urlencoded::parse(body).into_owned());
        }
        Params(v)
    }

    /// Every non-empty value of `key`, in order.
    pub(crate) fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(k, v)| k == key && !v.is_empty()).map(|(_, v)| v.as_str())
    }

    /// The last value of `key`, if present and non-empty.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, v)| k == key && !v.is_empty()).map(|(_, v)| v.as_str())
    }
}

/// Decompresses a request body per `Content-Encoding` (gzip, deflate, snappy,
/// identity), refusing output larger than `max`.
pub(crate) fn decode_body(
    headers: &HeaderMap,
    body: &[u8],
    max: usize,
    default_snappy: bool,
) -> Result<Vec<u8>, BodyError> {
    let enc =
        headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("").trim().to_ascii_lowercase();
    let enc = if enc.is_empty() && default_snappy { "snappy".to_string() } else { enc };
    match enc.as_str() {
        "" | "identity" => Ok(body.to_vec()),
        "snappy" => cairn_wire::proto::snappy_decompress(body, max).map_err(|e| match e {
            cairn_wire::proto::SnappyError::TooLarge { .. } => BodyError::TooLarge(e.to_string()),
            other => BodyError::Bad(other.to_string()),
        }),
        "gzip" | "x-gzip" => read_limited(flate2::read::GzDecoder::new(body), max, "gzip"),
        "deflate" => read_limited(flate2::read::ZlibDecoder::new(body), max, "deflate"),
        other => Err(BodyError::Bad(format!("unsupported Content-Encoding {other:?} (use gzip, deflate or snappy)"))),
    }
}

fn read_limited(r: impl Read, max: usize, what: &str) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    r.take(max as u64 + 1).read_to_end(&mut out).map_err(|e| BodyError::Bad(format!("invalid {what} body: {e}")))?;
    if out.len() > max {
        return Err(BodyError::TooLarge(format!(
            "decompressed body exceeds limits.max_decompressed_size = {max} bytes"
        )));
    }
    Ok(out)
}

/// A request body could not be decoded.
pub(crate) enum BodyError {
    /// Malformed.
    Bad(String),
    /// Over a size limit.
    TooLarge(String),
}

impl BodyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            BodyError::Bad(_) => StatusCode::BAD_REQUEST,
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    pub(crate) fn message(&self) -> &str {
        match self {
            BodyError::Bad(m) | BodyError::TooLarge(m) => m,
        }
    }
}

/// Plain-text error response, as Loki and the remote-write receiver answer.
pub(crate) fn text_error(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut m = msg.into();
    m.push('\n');
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], m).into_response()
}

/// HTTP 413 when a write body (as sent) is over the tenant's
/// `limits.max_request_size`.
pub(crate) fn check_body_size(body: &[u8], limits: &crate::config::LimitsConfig) -> Result<(), Response> {
    let max = limits.max_request_size.0;
    if body.len() as u64 > max {
        return Err(text_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body of {} bytes exceeds limits.max_request_size = {}",
                body.len(),
                limits.max_request_size
            ),
        ));
    }
    Ok(())
}

/// HTTP 429 with `Retry-After` for a write over its tenant's ingestion rate.
pub(crate) fn rate_limited(e: crate::limits::RateLimited) -> Response {
    let mut resp = text_error(StatusCode::TOO_MANY_REQUESTS, e.message);
    if let Ok(v) = header::HeaderValue::from_str(&e.retry_after_secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// Runs blocking work off the reactor; a panic inside becomes a 500.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Response> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "blocking task failed");
        text_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the server log")
    })
}

/// Maps an ingest result to the response remote_write and Loki push clients
/// expect: 204 when everything was stored, 400 naming what was refused
/// (after storing the rest), 507 while the disk is full (clients retry 5xx,
/// so nothing is lost once space returns), 500 when the store failed
/// otherwise.
pub(crate) fn ingest_response(res: Result<crate::IngestReport, cairn_store::StoreError>) -> Response {
    match res {
        Ok(r) if r.refused == 0 => StatusCode::NO_CONTENT.into_response(),
        Ok(r) => text_error(StatusCode::BAD_REQUEST, r.error_message()),
        Err(e) if e.is_disk_full() => {
            tracing::error!(error = %e, "write refused: disk full");
            let mut resp = text_error(
                StatusCode::INSUFFICIENT_STORAGE,
                format!(
                    "disk full: nothing from this request was stored ({e}); writes resume by themselves once \
                     space is freed (free disk space, or lower storage.logs.retention_size / \
                     storage.metrics.retention_size)"
                ),
            );
            resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("30"));
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "write failed");
            text_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("write failed, nothing from this request was acknowledged: {e}"),
            )
        }
    }
}
