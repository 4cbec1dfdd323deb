//! `/loki/api/v1/tail` over a raw WebSocket: handshake, the first batch,
//! a live batch after a push, close.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::{Cairn, now_ns};

/// Reads one server frame (unmasked), returning (opcode, payload).
fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    let mut len = (h[1] & 0x7f) as u64;
    if len == 126 {
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        len = u16::from_be_bytes(b) as u64;
    } else if len == 127 {
        let mut b = [0u8; 8];
        s.read_exact(&mut b).unwrap();
        len = u64::from_be_bytes(b);
    }
    let mut p = vec![0u8; len as usize];
    s.read_exact(&mut p).unwrap();
    (h[0] & 0x0f, p)
}

fn lines(payload: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
    v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["values"].as_array().unwrap().iter().map(|e| e[1].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn tail_over_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let t = now_ns() - 10_000_000_000;
    assert_eq!(c.push_logs_json(&[(&[("job", "tail")], vec![(t, "before".into())])]).0, 204);
    let addr = c.url.trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let q = "query=%7Bjob%3D%22tail%22%7D%20%7C%3D%20%22e%22";
    write!(
        s,
        "GET /loki/api/v1/tail?{q} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    let (op, p) = read_frame(&mut s);
    assert_eq!(op, 1);
    assert_eq!(lines(&p), ["before"]);
    // live: a new matching line arrives in a later frame; a non-matching one never does
    assert_eq!(
        c.push_logs_json(&[(&[("job", "tail")], vec![(now_ns(), "xyz".into()), (now_ns() + 1, "live one".into())])]).0,
        204
    );
    let (op, p) = read_frame(&mut s);
    assert_eq!(op, 1);
    assert_eq!(lines(&p), ["live one"]);
    // masked close frame from the client ends the session with a close frame
    s.write_all(&[0x88, 0x80, 1, 2, 3, 4]).unwrap();
    let (op, _) = read_frame(&mut s);
    assert_eq!(op, 8);
    // not a WebSocket request: plain 400
    let (status, body) = c.get_params("/loki/api/v1/tail", &[("query", r#"{job="tail"}"#)]);
    assert_eq!(status, 400, "{body}");
}
