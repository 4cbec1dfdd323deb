//! `GET /loki/api/v1/tail`: Loki's live tail over WebSocket (Grafana's Live
//! mode, `logcli query --tail`).
//!
//! The handshake (RFC 6455 §4.2) is answered here and the upgraded
//! connection carries one text frame per batch, `{"streams": […]}` as Loki
//! sends it. The first batch holds the newest `limit` (default 100) entries
//! since `start` (default one hour ago); then, once a second, the
//! entries newer than the last one sent and older than `delay_for`
//! seconds (0–5). As in Loki this is best effort: entries that arrive
//! late with older timestamps are not re-sent. A close frame, EOF or a
//! write error ends the session. The WebSocket protocol itself (handshake,
//! framing, pings) is axum's `ws` support on tokio-tungstenite.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use cairn_query::logql::{self, Direction, Expr, LogQuery};
use cairn_wire::time;
use serde_json::json;

use super::{Params, tenant, text_error};
use crate::Aggregator;

pub(crate) async fn tail(
    State(agg): State<Arc<Aggregator>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let bad = |m: String| text_error(StatusCode::BAD_REQUEST, m);
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return bad(format!("the tail endpoint is a WebSocket: {e}")),
    };
    let p = Params::parse(q.as_deref(), &headers, &[]);
    let tenant = match tenant(&headers) {
        Ok(t) => t,
        Err(m) => return bad(m),
    };
    let Some(query) = p.get("query") else {
        return bad("query parameter is required".into());
    };
    let sel = match logql::parse(query) {
        Ok(Expr::Log(sel)) => sel,
        Ok(Expr::Sample(_)) => return bad("tail needs a log query, not a metric query".into()),
        Err(e) => return bad(e.to_string()),
    };
    let now = time::now_ns();
    let start = match p.get("start").map(time::parse_loki_time_ns) {
        None => now.saturating_sub(3_600_000_000_000),
        Some(Ok(t)) => t,
        Some(Err(e)) => return bad(format!("invalid start parameter: {e}")),
    };
    let limit = match p.get("limit").map(str::parse::<usize>) {
        None => 100,
        Some(Ok(l)) if l <= agg.query_for(&tenant).max_entries_limit => l,
        _ => return bad(format!("invalid limit parameter: expected 0..={}", agg.query_for(&tenant).max_entries_limit)),
    };
    let delay_ns = match p.get("delay_for").map(str::parse::<u64>) {
        None => 0,
        Some(Ok(d)) if d <= 5 => d as i64 * 1_000_000_000,
        _ => return bad("invalid delay_for parameter: expected 0 to 5 seconds".into()),
    };
    ws.on_upgrade(move |socket| session(socket, agg, sel, tenant, start, limit, delay_ns))
}

/// One tail session: sends batches until the client closes or a send fails.
async fn session(
    mut socket: WebSocket,
    agg: Arc<Aggregator>,
    sel: logql::LogSelector,
    tenant: String,
    start: i64,
    limit: usize,
    delay_ns: i64,
) {
    let mut from = start;
    let mut first = true;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut closing = false;
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                // The stream ends after the close handshake completes.
                None | Some(Err(_)) => return,
                // tungstenite queues the close reply; the next read flushes
                // it and then ends the stream.
                Some(Ok(Message::Close(_))) => {
                    closing = true;
                    continue;
                }
                // pings are answered by tungstenite; other frames are ignored
                Some(Ok(_)) => continue,
            },
            _ = tick.tick(), if !closing => {}
        }
        let to = time::now_ns().saturating_sub(delay_ns).saturating_add(1);
        let (agg2, sel2, tenant2) = (agg.clone(), sel.clone(), tenant.clone());
        let lim = if first { limit } else { agg.query_for(&tenant).max_entries_limit };
        let direction = if first { Direction::Backward } else { Direction::Forward };
        let res = tokio::task::spawn_blocking(move || {
            let ctl = super::loki::logql_ctl(&agg2, &tenant2, std::time::Instant::now());
            let q = LogQuery {
                tenant: &tenant2,
                start: from,
                end: to,
                limit: lim,
                direction,
                categorize: false,
                ctl: &ctl,
            };
            logql::eval_log_query(&agg2.logs, &sel2, &q)
        })
        .await;
        first = false;
        let Ok(res) = res else { break };
        let streams = match res {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "live tail query failed; retrying");
                continue;
            }
        };
        if let Some(max) = streams.iter().flat_map(|s| s.entries.iter().map(|e| e.ts)).max() {
            from = max.saturating_add(1);
            let body = json!({
                "streams": streams.iter().map(|s| {
                    let mut es: Vec<_> = s.entries.iter().collect();
                    es.sort_by_key(|e| e.ts);
                    json!({"stream": s.labels, "values": es.iter().map(|e| json!([e.ts.to_string(), e.line])).collect::<Vec<_>>()})
                }).collect::<Vec<_>>()
            });
            if socket.send(Message::Text(body.to_string().into())).await.is_err() {
                break;
            }
        }
    }
    // We end the session (a failed evaluation or send): say so.
    let _ = socket.send(Message::Close(None)).await;
}
