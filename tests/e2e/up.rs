//! `cairn up`: the embedded default collects this machine's metrics and a
//! file glob, queryable within seconds; SIGTERM exits 0 promptly.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::harness::Cairn;

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn up_collects_node_metrics_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    std::fs::write(logs.join("app.log"), "first line\nsecond line\n").unwrap();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[collector]
host = "e2e-host"
poll_interval = "100ms"
batch_wait = "100ms"

[collector.node]
interval = "1s"

[[collector.files]]
paths = ["{}/*.log"]
labels = {{ job = "e2e" }}
"#,
            logs.display()
        ),
    )
    .unwrap();
    let c = Cairn::start(&["up"], &dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    assert!(c.banner.contains("Loki data source URL"), "{}", c.banner);
    assert!(c.banner.contains("collecting"), "{}", c.banner);

    // Node metrics under node_exporter's names.
    for q in [
        r#"node_cpu_seconds_total{mode="idle",instance="e2e-host",job="node"}"#,
        "node_memory_MemAvailable_bytes",
        "node_memory_MemTotal_bytes",
        "node_load1",
    ] {
        wait_for(q, || {
            let (s, v) = c.prom("/api/v1/query", &[("query", q)]);
            assert_eq!(s, 200, "{v}");
            let r = v["data"]["result"].as_array().unwrap();
            (!r.is_empty()).then_some(())
        });
    }
    // The file's lines, then an appended one.
    wait_for("file lines", || {
        let got = c.loki_lines(&[("query", r#"{job="e2e"}"#), ("direction", "forward")]);
        (got.len() == 2).then_some(())
    });
    let got = c.loki_lines(&[("query", r#"{job="e2e"}"#), ("direction", "forward")]);
    assert_eq!(got[0].2, "first line");
    assert!(got[0].0.contains("app.log"), "filename label: {}", got[0].0);
    let mut f = std::fs::OpenOptions::new().append(true).open(logs.join("app.log")).unwrap();
    writeln!(f, "third line").unwrap();
    drop(f);
    wait_for("appended line", || {
        let got = c.loki_lines(&[("query", r#"{job="e2e"} |= "third""#)]);
        (got.len() == 1).then_some(())
    });

    let started = Instant::now();
    let st = c.stop_within(Duration::from_secs(10));
    assert!(st.success(), "exit status {st}");
    assert!(started.elapsed() < Duration::from_secs(8), "shutdown took {:?}", started.elapsed());
}
