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
//! write error ends the session. Hand-written because the WebSocket crates
//! are not among the workspace's dependencies and the server side needs
//! only this much: SHA-1 + base64 for the accept key, unmasked text frames
//! out, and close detection in.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_query::logql::{self, Direction, Expr, LogQuery};
use cairn_wire::time;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Params, tenant, text_error};
use crate::Aggregator;

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// SHA-1 (FIPS 180-4), only for the WebSocket accept key.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in chunk.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let (mut a, mut b, mut c, mut d, mut e) = (h[0], h[1], h[2], h[3], h[4]);
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        h[0] = h[0].wrapping_add(a);
        h[1] = h[1].wrapping_add(b);
        h[2] = h[2].wrapping_add(c);
        h[3] = h[3].wrapping_add(d);
        h[4] = h[4].wrapping_add(e);
    }
    let mut out = [0u8; 20];
    for (i, v) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { A[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { A[n as usize & 63] as char } else { '=' });
    }
    out
}

/// The `Sec-WebSocket-Accept` value for a client key.
fn accept_key(key: &str) -> String {
    base64(&sha1(format!("{}{WS_GUID}", key.trim()).as_bytes()))
}

/// An unmasked server frame.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n < 65536 => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// `GET /loki/api/v1/tail` (WebSocket).
pub(crate) async fn tail(State(agg): State<Arc<Aggregator>>, RawQuery(q): RawQuery, mut req: Request) -> Response {
    let headers = req.headers().clone();
    let bad = |m: String| text_error(StatusCode::BAD_REQUEST, m);
    if !header_has(&headers, header::UPGRADE, "websocket") || !header_has(&headers, header::CONNECTION, "upgrade") {
        return bad("the tail endpoint is a WebSocket: send Connection: Upgrade and Upgrade: websocket".into());
    }
    let Some(key) = headers.get("sec-websocket-key").and_then(|v| v.to_str().ok()).map(str::to_string) else {
        return bad("missing Sec-WebSocket-Key header".into());
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
        Some(Ok(l)) if l <= agg.config.query.max_entries_limit => l,
        _ => return bad(format!("invalid limit parameter: expected 0..={}", agg.config.query.max_entries_limit)),
    };
    let delay_ns = match p.get("delay_for").map(str::parse::<u64>) {
        None => 0,
        Some(Ok(d)) if d <= 5 => d as i64 * 1_000_000_000,
        _ => return bad("invalid delay_for parameter: expected 0 to 5 seconds".into()),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "tail upgrade failed");
                return;
            }
        };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let (mut rd, mut wr) = tokio::io::split(io);
        let closed = Arc::new(AtomicBool::new(false));
        let closed_r = closed.clone();
        // Reader: any close frame, EOF or error ends the session.
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if buf[..n].first().is_some_and(|b| b & 0x0f == 0x8) {
                            break;
                        }
                    }
                }
            }
            closed_r.store(true, Ordering::Relaxed);
        });
        let mut from = start;
        let mut first = true;
        while !closed.load(Ordering::Relaxed) {
            let to = time::now_ns().saturating_sub(delay_ns).saturating_add(1);
            let (agg2, sel2, tenant2) = (agg.clone(), sel.clone(), tenant.clone());
            let lim = if first { limit } else { agg.config.query.max_entries_limit };
            let direction = if first { Direction::Backward } else { Direction::Forward };
            let res = tokio::task::spawn_blocking(move || {
                let q = LogQuery { tenant: &tenant2, start: from, end: to, limit: lim, direction, categorize: false };
                logql::eval_log_query(&agg2.logs, &sel2, &q)
            })
            .await;
            first = false;
            let Ok(streams) = res else { break };
            if let Some(max) = streams.iter().flat_map(|s| s.entries.iter().map(|e| e.ts)).max() {
                from = max.saturating_add(1);
                let body = json!({
                    "streams": streams.iter().map(|s| {
                        let mut es: Vec<_> = s.entries.iter().collect();
                        es.sort_by_key(|e| e.ts);
                        json!({"stream": s.labels, "values": es.iter().map(|e| json!([e.ts.to_string(), e.line])).collect::<Vec<_>>()})
                    }).collect::<Vec<_>>()
                });
                let text = body.to_string();
                if wr.write_all(&frame(0x1, text.as_bytes())).await.is_err() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let _ = wr.write_all(&frame(0x8, &[])).await;
        let _ = wr.shutdown().await;
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept_key(&key)) {
        h.insert("sec-websocket-accept", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_accept_key_and_frames() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(frame(1, b"hi"), vec![0x81, 2, b'h', b'i']);
        assert_eq!(&frame(1, &[0; 300])[..4], &[0x81, 126, 1, 44]);
    }
}
