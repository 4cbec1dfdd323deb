//! `cairn collect` on Kubernetes, against a protocol-level stand-in for the
//! API server: an HTTPS server (a CA made by the test) answering
//! `GET /api/v1/pods` with a real `PodList` (`collector/tests/data/podlist.json`,
//! in the API's shape), checked for the bearer token and the node's field
//! selector. The collector must scrape the annotated pod with the
//! `kubernetes-pods` labels, report `up 0` for the annotated pod that does
//! not answer, and put the pod's labels on its log stream. A second test
//! ships to an aggregator behind a TLS-terminating proxy (`https://`
//! push URL, the CA given as `collector.push.ca_file`).

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Cairn, MetricsTarget, cairn_bin, free_port, now_ns, stop_child};
use crate::tls::{TestCa, TlsServer, forward, json_response};

/// A `cairn collect` child, killed if the test fails before stopping it.
struct Collector(Option<Child>);

impl Collector {
    /// SIGTERM and wait; the exit status must be success.
    fn stop(mut self) {
        let child = self.0.take().unwrap();
        let st = stop_child(child, "TERM", Duration::from_secs(10));
        assert!(st.success(), "cairn collect exited with {st}");
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_collect(url: &str, cfg: &std::path::Path, state: &std::path::Path) -> Collector {
    Collector(Some(spawn_collect(url, cfg, state, Stdio::null())))
}

fn spawn_collect(url: &str, cfg: &std::path::Path, state: &std::path::Path, stderr: Stdio) -> Child {
    Command::new(cairn_bin())
        .args(["collect", "--push-url", url, "--config"])
        .arg(cfg)
        .arg("--data-dir")
        .arg(state)
        .env("RUST_LOG", "warn")
        .env_remove("NODE_NAME")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn cairn collect")
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `query`'s result as (sorted labels without `__name__`, value) pairs.
fn series(c: &Cairn, query: &str) -> Vec<(Vec<(String, String)>, String)> {
    let (_, v) = c.prom("/api/v1/query", &[("query", query)]);
    let mut out: Vec<(Vec<(String, String)>, String)> = v["data"]["result"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let mut l: Vec<(String, String)> = r["metric"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| *k != "__name__")
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            l.sort();
            (l, r["value"][1].as_str().unwrap_or_default().to_string())
        })
        .collect();
    out.sort();
    out
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    v.sort();
    v
}

#[test]
fn annotated_pods_of_this_node_are_scraped_and_pod_labels_reach_pod_logs() {
    let dir = tempfile::tempdir().unwrap();
    let agg = Cairn::serve(&dir.path().join("agg"));
    let target = MetricsTarget::start(|n| format!("# TYPE shop_orders_total counter\nshop_orders_total {n}\n"));
    let web_port = target.addr.rsplit(':').next().unwrap().to_string();
    let closed_port = free_port().to_string();

    // The PodList as the API server sends it, with the pods' IPs and ports
    // pointed at this machine: `web` at the test target, `api` (https) at a
    // closed port.
    let list =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/collector/tests/data/podlist.json")).unwrap();
    assert_eq!(list.matches("9102").count(), 2, "the fixture names web's port twice");
    assert_eq!(list.matches("8443").count(), 2, "the fixture names api's port twice");
    let list = list
        .replace("10.42.0.17", "127.0.0.1")
        .replace("10.42.0.18", "127.0.0.1")
        .replace("9102", &web_port)
        .replace("8443", &closed_port);
    serde_json::from_str::<Value>(&list).expect("still JSON");

    let ca = TestCa::new();
    let requests: Arc<Mutex<Vec<crate::tls::Request>>> = Arc::default();
    let seen = requests.clone();
    let api = TlsServer::start(&ca, move |req| {
        seen.lock().unwrap().push(req.clone());
        if req.header("authorization") != Some("Bearer e2e-token-1") {
            let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;
            return format!(
                "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes();
        }
        json_response(&list)
    });

    // kubelet's layout: <root>/<namespace>_<pod>_<uid>/<container>/0.log, CRI.
    let pods = dir.path().join("pods");
    let log_dir = pods.join("shop_web-7d4b9c-x2x8q_0f3c6a44-1b2d-4e5f-8a9b-0c1d2e3f4a5b/web");
    std::fs::create_dir_all(&log_dir).unwrap();
    let ts = cairn_wire::time::format_rfc3339_ns;
    let t0 = now_ns();
    std::fs::write(
        log_dir.join("0.log"),
        format!("{} stdout F order 1 placed\n{} stderr F order 2 failed\n", ts(t0), ts(t0 + 1_000)),
    )
    .unwrap();

    std::fs::write(dir.path().join("ca.crt"), &ca.ca_pem).unwrap();
    std::fs::write(dir.path().join("token"), "e2e-token-1\n").unwrap();
    let cfg = dir.path().join("collect.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[collector]
host = "node-1"
files = []
poll_interval = "100ms"
batch_wait = "100ms"

[collector.node]
enabled = false
interval = "1s"

[collector.pods]
enabled = true
root = "{pods}"

[collector.kubernetes]
enabled = true
api_url = "https://localhost:{api_port}"
ca_file = "{dir}/ca.crt"
token_file = "{dir}/token"
node = "node-1"
refresh_interval = "1s"
scrape_interval = "1s"
scrape_timeout = "1s"
"#,
            pods = pods.display(),
            api_port = api.port,
            dir = dir.path().display(),
        ),
    )
    .unwrap();
    let collector = start_collect(&agg.url, &cfg, &dir.path().join("state"));

    let web = pairs(&[
        ("app", "web"),
        ("app_kubernetes_io_name", "shop-web"),
        ("container", "web"),
        ("instance", &format!("127.0.0.1:{web_port}")),
        ("job", "kubernetes-pods"),
        ("namespace", "shop"),
        ("node", "node-1"),
        ("pod", "web-7d4b9c-x2x8q"),
    ]);
    let api_pod = pairs(&[
        ("container", "sidecar"),
        ("instance", &format!("127.0.0.1:{closed_port}")),
        ("job", "kubernetes-pods"),
        ("namespace", "shop"),
        ("node", "node-1"),
        ("pod", "api-5f6d7-abcde"),
    ]);
    wait_for("up of both annotated pods", || series(&agg, r#"up{job="kubernetes-pods"}"#).len() == 2);
    let up = series(&agg, r#"up{job="kubernetes-pods"}"#);
    assert_eq!(up, [(web.clone(), "1".to_string()), (api_pod.clone(), "0".to_string())]);
    wait_for("the scraped counter", || !series(&agg, "shop_orders_total").is_empty());
    assert_eq!(series(&agg, "shop_orders_total")[0].0, web, "the pod's series carry the target labels");
    let durations = series(&agg, r#"scrape_duration_seconds{job="kubernetes-pods"}"#);
    assert_eq!(durations.iter().map(|d| d.0.clone()).collect::<Vec<_>>(), [web, api_pod]);

    // The pod log stream carries the pod's labels from the API.
    let query = r#"{namespace="shop", app="web", app_kubernetes_io_name="shop-web"}"#;
    wait_for("the pod's log lines", || agg.loki_lines(&[("query", query)]).len() >= 2);
    let (_, v) = agg.get_params("/loki/api/v1/series", &[("match[]", query)]);
    let v: Value = serde_json::from_str(&v).unwrap();
    let streams = v["data"].as_array().unwrap();
    assert_eq!(streams.len(), 2, "stdout and stderr: {v}");
    for s in streams {
        assert_eq!(s["pod"], "web-7d4b9c-x2x8q");
        assert_eq!(s["container"], "web");
        assert_eq!(s["node"], "node-1");
    }

    // The collector's own gauge counts both targets.
    wait_for("cairn_collector_kubernetes_pod_targets", || {
        series(&agg, r#"cairn_collector_kubernetes_pod_targets{instance="node-1"}"#).first().map(|s| s.1.as_str())
            == Some("2")
    });

    // Every listing asked for this node's pods only, with the token.
    let reqs = requests.lock().unwrap().clone();
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert_eq!(r.method, "GET");
        assert!(r.target.starts_with("/api/v1/pods?"), "{}", r.target);
        assert!(r.target.contains("fieldSelector=spec.nodeName%3Dnode-1"), "{}", r.target);
        assert_eq!(r.header("authorization"), Some("Bearer e2e-token-1"));
    }

    collector.stop();
    drop(api);
    agg.stop();
}

#[test]
fn collect_ships_to_an_https_aggregator_trusting_a_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let agg = Cairn::serve(&dir.path().join("agg"));
    let upstream = agg.url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let ca = TestCa::new();
    let forwarded = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let n = forwarded.clone();
    let proxy = TlsServer::start(&ca, move |req| {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        forward(req, &upstream)
    });
    std::fs::write(dir.path().join("ca.crt"), &ca.ca_pem).unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    std::fs::write(logs.join("app.log"), "over tls 1\nover tls 2\n").unwrap();
    let cfg = dir.path().join("collect.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[collector]
host = "tls-host"
poll_interval = "100ms"
batch_wait = "100ms"

[collector.node]
interval = "1s"

[[collector.files]]
paths = ["{logs}/*.log"]
labels = {{ job = "tls" }}

[collector.push]
ca_file = "{dir}/ca.crt"
"#,
            logs = logs.display(),
            dir = dir.path().display(),
        ),
    )
    .unwrap();
    let url = format!("https://localhost:{}", proxy.port);
    let collector = start_collect(&url, &cfg, &dir.path().join("state"));
    let lines = || -> Vec<String> {
        agg.loki_lines(&[("query", r#"{job="tls"}"#), ("direction", "forward")]).into_iter().map(|l| l.2).collect()
    };
    wait_for("the lines, through TLS", || lines().len() >= 2);
    assert_eq!(lines(), ["over tls 1", "over tls 2"]);
    wait_for("node metrics, through TLS", || !series(&agg, r#"node_load1{instance="tls-host"}"#).is_empty());
    assert!(forwarded.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    collector.stop();

    // Without the CA file the aggregator's certificate is not trusted:
    // nothing gets through, and the collector says why.
    let cfg2 = dir.path().join("collect-no-ca.toml");
    let text =
        std::fs::read_to_string(&cfg).unwrap().replace(&format!("ca_file = \"{}/ca.crt\"", dir.path().display()), "");
    std::fs::write(&cfg2, text.replace("job = \"tls\"", "job = \"tls-untrusted\"")).unwrap();
    let before = forwarded.load(std::sync::atomic::Ordering::Relaxed);
    let mut child = Collector(Some(spawn_collect(&url, &cfg2, &dir.path().join("state2"), Stdio::piped())));
    let stderr = child.0.as_mut().unwrap().stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut log = String::new();
    while !log.to_ascii_lowercase().contains("certificate") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                log.push_str(&l);
                log.push('\n');
            }
            Err(_) => panic!("no certificate error logged within 30s:\n{log}"),
        }
    }
    child.stop();
    assert_eq!(forwarded.load(std::sync::atomic::Ordering::Relaxed), before, "no request got past the handshake");
    assert!(lines().len() == 2);
    drop(proxy);
    agg.stop();
}
