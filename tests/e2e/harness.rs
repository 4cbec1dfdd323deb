//! The fixture: start `cairn`, wait for `/ready`, small HTTP clients for
//! push and query, stop gracefully or with SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_wire::proto::{self, WriteRequest};
use prost::Message;
use serde_json::Value;

/// A label set in a test: (name, value) pairs.
pub type TestLabels<'a> = &'a [(&'a str, &'a str)];
/// Streams to push: labels and (ts ns, line) entries.
pub type TestStreams<'a> = [(TestLabels<'a>, Vec<(i64, String)>)];
/// Series to write: labels and (ts ms, value) samples.
pub type TestSeries<'a> = [(TestLabels<'a>, Vec<(i64, f64)>)];

/// A remote_write body (snappy-compressed `WriteRequest`) of `series`.
pub fn write_request(series: &TestSeries<'_>) -> Vec<u8> {
    let req = WriteRequest {
        timeseries: series
            .iter()
            .map(|(labels, samples)| proto::TimeSeries {
                labels: labels
                    .iter()
                    .map(|(n, v)| proto::Label { name: n.to_string(), value: v.to_string() })
                    .collect(),
                samples: samples.iter().map(|&(t, v)| proto::Sample { value: v, timestamp: t }).collect(),
                histograms: vec![],
            })
            .collect(),
        metadata: vec![],
    };
    proto::snappy_compress(&req.encode_to_vec())
}

/// Path of the binary under test.
pub fn cairn_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cairn")
}

/// Now in nanoseconds.
pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
}

/// A running `cairn` process.
pub struct Cairn {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Everything printed on stdout up to the banner.
    pub banner: String,
    http: reqwest::blocking::Client,
}

impl Cairn {
    /// `cairn serve` on a free port with `data_dir`.
    pub fn serve(data_dir: &Path) -> Cairn {
        Self::start(&["serve"], data_dir, &[])
    }

    /// Starts `cairn <args> --listen 127.0.0.1:0 --data-dir <dir> <extra>` and
    /// waits until it answers `/ready`.
    pub fn start(args: &[&str], data_dir: &Path, extra: &[&str]) -> Cairn {
        Self::start_on("127.0.0.1:0", args, data_dir, extra)
    }

    /// Like [`Cairn::start`] on a given listen address.
    pub fn start_on(listen: &str, args: &[&str], data_dir: &Path, extra: &[&str]) -> Cairn {
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Self::start_with_client(listen, args, data_dir, extra, http)
    }

    /// Like [`Cairn::start_on`], talking to the server through `http`
    /// (e.g. a client that trusts a test CA, for an HTTPS server).
    pub fn start_with_client(
        listen: &str,
        args: &[&str],
        data_dir: &Path,
        extra: &[&str],
        http: reqwest::blocking::Client,
    ) -> Cairn {
        let mut child = Command::new(cairn_bin())
            .args(args)
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn cairn");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut banner = String::new();
        let mut url = None;
        while !banner.contains("Stop with Ctrl-C") {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    banner.push_str(&line);
                    banner.push('\n');
                    if let Some(rest) = line.split("Prometheus data source URL").nth(1) {
                        url = Some(rest.trim().to_string());
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("cairn did not print its banner within 60s; got:\n{banner}");
                }
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        let c = Cairn { child: Some(child), url: url.unwrap(), banner, http };
        c.wait_ready();
        c
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{}/ready", self.url)).send()
                && r.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "cairn at {} never became ready", self.url);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The HTTP client the fixture uses.
    pub fn client(&self) -> &reqwest::blocking::Client {
        &self.http
    }

    /// GET `path` (with query string) and return status and body.
    pub fn get(&self, path_and_query: &str) -> (u16, String) {
        let r = self.http.get(format!("{}{}", self.url, path_and_query)).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    /// GET with query parameters, returning status and body.
    pub fn get_params(&self, path: &str, params: &[(&str, &str)]) -> (u16, String) {
        let r = self.http.get(format!("{}{}", self.url, path)).query(params).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    /// GET with query parameters and headers, returning status and body.
    pub fn get_with(&self, path: &str, params: &[(&str, &str)], headers: &[(&str, &str)]) -> (u16, String) {
        let mut req = self.http.get(format!("{}{}", self.url, path)).query(params);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    /// POST a form, returning status and body.
    pub fn post_form(&self, path: &str, params: &[(&str, &str)]) -> (u16, String) {
        let r = self.http.post(format!("{}{}", self.url, path)).form(params).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    /// POST raw bytes with headers.
    pub fn post_raw(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, String) {
        let mut req = self.http.post(format!("{}{}", self.url, path)).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    /// Loki JSON push of `streams` = [(labels, [(ts_ns, line)])].
    pub fn push_logs_json(&self, streams: &TestStreams<'_>) -> (u16, String) {
        let body = serde_json::json!({
            "streams": streams.iter().map(|(labels, entries)| serde_json::json!({
                "stream": labels.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
                "values": entries.iter().map(|(ts, l)| serde_json::json!([ts.to_string(), l])).collect::<Vec<_>>(),
            })).collect::<Vec<_>>()
        });
        self.post_raw("/loki/api/v1/push", &[("Content-Type", "application/json")], serde_json::to_vec(&body).unwrap())
    }

    /// Remote-write `series` = [(labels, [(ts_ms, value)])] as snappy protobuf.
    pub fn remote_write(&self, series: &TestSeries<'_>) -> (u16, String) {
        self.post_raw(
            "/api/v1/write",
            &[
                ("Content-Type", "application/x-protobuf"),
                ("Content-Encoding", "snappy"),
                ("X-Prometheus-Remote-Write-Version", "0.1.0"),
            ],
            write_request(series),
        )
    }

    /// Loki query_range returning the parsed JSON (asserting 200).
    pub fn loki_query_range(&self, params: &[(&str, &str)]) -> Value {
        let (status, body) = self.get_params("/loki/api/v1/query_range", params);
        assert_eq!(status, 200, "query_range {params:?} failed: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Lines returned by a Loki query, as (labels JSON, ts, line) in response order.
    pub fn loki_lines(&self, params: &[(&str, &str)]) -> Vec<(String, i64, String)> {
        let v = self.loki_query_range(params);
        assert_eq!(v["status"], "success");
        assert_eq!(v["data"]["resultType"], "streams");
        let mut out = Vec::new();
        for s in v["data"]["result"].as_array().unwrap() {
            for e in s["values"].as_array().unwrap() {
                out.push((
                    s["stream"].to_string(),
                    e[0].as_str().unwrap().parse().unwrap(),
                    e[1].as_str().unwrap().to_string(),
                ));
            }
        }
        out
    }

    /// Prometheus API call (GET) returning status and parsed JSON.
    pub fn prom(&self, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let (s, b) = self.get_params(path, params);
        (s, serde_json::from_str(&b).unwrap_or_else(|e| panic!("not JSON ({e}): {b}")))
    }

    /// Sends SIGTERM and waits for exit (at most `within`).
    pub fn stop_within(mut self, within: Duration) -> ExitStatus {
        stop_child(self.child.take().unwrap(), "TERM", within)
    }

    /// Graceful stop, asserting exit status 0.
    pub fn stop(self) {
        let st = self.stop_within(Duration::from_secs(10));
        assert!(st.success(), "cairn exited with {st}");
    }

    /// SIGKILL: the crash case.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Sends `sig` to a child and waits for it, returning its exit status.
pub fn stop_child(mut child: Child, sig: &str, within: Duration) -> ExitStatus {
    signal(&child, sig);
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {within:?} of SIG{sig}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status().unwrap();
    assert!(st.success());
}

impl Drop for Cairn {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `cairn <args>` to completion, returning (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(cairn_bin()).args(args).stdin(Stdio::null()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A scrape target on a free 127.0.0.1 port: answers every request with
/// `body(n)` (n = 0, 1, … per scrape) as Prometheus text format, until
/// dropped.
pub struct MetricsTarget {
    /// `127.0.0.1:PORT`
    pub addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsTarget {
    /// Starts serving.
    pub fn start(body: impl Fn(u64) -> String + Send + 'static) -> MetricsTarget {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut scrapes = 0u64;
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut req = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                            match c.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(k) => req.extend_from_slice(&buf[..k]),
                            }
                        }
                        let body = body(scrapes);
                        scrapes += 1;
                        let _ = write!(
                            c,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        MetricsTarget { addr, stop, thread: Some(thread) }
    }
}

impl Drop for MetricsTarget {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
