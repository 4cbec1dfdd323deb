//! `kill -9` at random moments during ingest, several rounds on one data
//! directory: after each restart every acknowledged log line and sample is
//! there exactly once (an unacknowledged one may or may not be). Small heads
//! make flushes, and so compactions, happen while the writers run, so kills
//! also land inside those.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::{Cairn, now_ns};

/// xorshift64: deterministic kill moments.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[derive(Default)]
struct Ledger {
    /// Line ids acknowledged / sent.
    lines_acked: Vec<u64>,
    lines_sent: u64,
    /// Sample timestamps (ms) acknowledged / sent.
    samples_acked: Vec<i64>,
    samples_sent: u64,
}

const LINES_PER_PUSH: u64 = 200;
const SAMPLES_PER_WRITE: i64 = 200;

/// Pushes logs and samples until `stop`; records what was acknowledged.
fn writer(url: String, t0_ns: i64, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>) {
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    while !stop.load(Ordering::Relaxed) {
        let (first_line, first_ts) = {
            let l = ledger.lock().unwrap();
            (l.lines_sent, t0_ns / 1_000_000 + l.samples_sent as i64)
        };
        let values: Vec<serde_json::Value> = (first_line..first_line + LINES_PER_PUSH)
            .map(|id| {
                serde_json::json!([
                    (t0_ns + id as i64 * 1000).to_string(),
                    format!("crash test line id={id:08} {}", "p".repeat(120))
                ])
            })
            .collect();
        let body = serde_json::json!({"streams": [{"stream": {"job": "crash"}, "values": values}]});
        ledger.lock().unwrap().lines_sent += LINES_PER_PUSH;
        let ok = http
            .post(format!("{url}/loki/api/v1/push"))
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .send()
            .is_ok_and(|r| r.status().as_u16() == 204);
        if ok {
            ledger.lock().unwrap().lines_acked.extend(first_line..first_line + LINES_PER_PUSH);
        }
        let samples: Vec<(i64, f64)> = (0..SAMPLES_PER_WRITE).map(|i| (first_ts + i, (first_ts + i) as f64)).collect();
        ledger.lock().unwrap().samples_sent += SAMPLES_PER_WRITE as u64;
        let req = crate::harness::write_request(&[(&[("__name__", "crash_metric")], samples.clone())]);
        let ok = http
            .post(format!("{url}/api/v1/write"))
            .header("Content-Type", "application/x-protobuf")
            .header("Content-Encoding", "snappy")
            .body(req)
            .send()
            .is_ok_and(|r| r.status().as_u16() == 204);
        if ok {
            ledger.lock().unwrap().samples_acked.extend(samples.iter().map(|s| s.0));
        }
    }
}

/// Every line of the test stream: id → times seen.
fn line_counts(c: &Cairn, t0_ns: i64, sent: u64) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    // ids are 1 µs apart; 4,000 per query stays under the entry limit
    let mut from = 0u64;
    while from < sent {
        let start = t0_ns + from as i64 * 1000;
        let end = t0_ns + (from + 4000) as i64 * 1000;
        for (_, _, line) in c.loki_lines(&[
            ("query", r#"{job="crash"}"#),
            ("start", &start.to_string()),
            ("end", &end.to_string()),
            ("limit", "5000"),
        ]) {
            let id: u64 = line.strip_prefix("crash test line id=").and_then(|r| r.get(..8)).unwrap().parse().unwrap();
            *counts.entry(id).or_default() += 1;
        }
        from += 4000;
    }
    counts
}

#[test]
fn kill_9_during_ingest_loses_and_duplicates_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(
        &cfg,
        "[storage.logs]\nhead_max_size = \"256KiB\"\n[storage.metrics]\nhead_max_samples = 2000\n\
         out_of_order_window = \"1h\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let args = ["--config", cfg.to_str().unwrap()];
    let t0_ns = (now_ns() / 1_000_000_000 - 1800) * 1_000_000_000;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let rounds = 5;
    for round in 0..rounds {
        let c = Cairn::start(&["serve"], &data, &args);
        let stop = Arc::new(AtomicBool::new(false));
        let w = {
            let (url, ledger, stop) = (c.url.clone(), ledger.clone(), stop.clone());
            std::thread::spawn(move || writer(url, t0_ns, ledger, stop))
        };
        std::thread::sleep(Duration::from_millis(150 + next(&mut rng) % 600));
        c.kill9();
        stop.store(true, Ordering::Relaxed);
        w.join().unwrap();
        let l = ledger.lock().unwrap();
        eprintln!(
            "round {round}: {} of {} lines and {} of {} samples acknowledged so far",
            l.lines_acked.len(),
            l.lines_sent,
            l.samples_acked.len(),
            l.samples_sent
        );
    }
    let c = Cairn::start(&["serve"], &data, &args);
    let l = ledger.lock().unwrap();
    assert!(l.lines_acked.len() as u64 >= LINES_PER_PUSH * rounds, "too little was acknowledged to test anything");
    let counts = line_counts(&c, t0_ns, l.lines_sent);
    for id in &l.lines_acked {
        assert_eq!(counts.get(id).copied().unwrap_or(0), 1, "acknowledged line {id}");
    }
    assert!(counts.values().all(|&n| n == 1), "a line appears twice");
    // samples: the raw samples of the written range, as an instant query
    // of a range selector returns them; every acknowledged timestamp once
    let first = t0_ns / 1_000_000;
    let (s, v) = c.prom(
        "/api/v1/query",
        &[
            ("query", &format!("crash_metric[{}ms]", l.samples_sent + 1)),
            ("time", &format!("{:.3}", (first + l.samples_sent as i64) as f64 / 1000.0)),
        ],
    );
    assert_eq!(s, 200, "{v}");
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for p in v["data"]["result"][0]["values"].as_array().unwrap() {
        let t = (p[0].as_f64().unwrap() * 1000.0).round() as i64;
        *seen.entry(t).or_default() += 1;
    }
    for t in &l.samples_acked {
        assert_eq!(seen.get(t).copied().unwrap_or(0), 1, "acknowledged sample at {t}");
    }
    c.stop();
}
