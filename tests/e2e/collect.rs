//! `cairn collect --push-url`: the collector alone, shipping over
//! remote_write and Loki push to a separate aggregator — including while the
//! aggregator is still down (retry) and across a collector restart
//! (positions: no line lost, none repeated).

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Cairn, cairn_bin, free_port, stop_child};

fn start_collect(url: &str, cfg: &std::path::Path, state: &std::path::Path) -> Child {
    Command::new(cairn_bin())
        .args(["collect", "--push-url", url, "--config"])
        .arg(cfg)
        .arg("--data-dir")
        .arg(state)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn cairn collect")
}

fn lines(c: &Cairn) -> Vec<String> {
    c.loki_lines(&[("query", r#"{job="collected"}"#), ("direction", "forward")]).into_iter().map(|l| l.2).collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn collect_pushes_survives_outage_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    std::fs::write(logs.join("app.log"), "one\ntwo\n").unwrap();
    let cfg = dir.path().join("collect.toml");
    std::fs::write(
        &cfg,
        format!(
            "[collector]\nhost = \"collect-host\"\npoll_interval = \"100ms\"\nbatch_wait = \"100ms\"\n\n[collector.node]\ninterval = \"1s\"\n\n[[collector.files]]\npaths = [\"{}/*.log\"]\nlabels = {{ job = \"collected\" }}\n",
            logs.display()
        ),
    )
    .unwrap();
    let state = dir.path().join("collector-state");
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{listen}");

    // The collector starts first: the aggregator is down, so it must retry.
    let collector = start_collect(&url, &cfg, &state);
    std::thread::sleep(Duration::from_millis(1500));
    let c = Cairn::start_on(&listen, &["serve"], &dir.path().join("agg"), &[]);
    wait_for("the file's lines", || lines(&c).len() >= 2);
    wait_for("node metrics", || {
        let (_, v) = c.prom("/api/v1/query", &[("query", r#"node_load1{instance="collect-host"}"#)]);
        v["data"]["result"].as_array().is_some_and(|r| !r.is_empty())
    });
    assert_eq!(lines(&c), ["one", "two"]);

    // A restarted collector resumes from its positions.
    let st = stop_child(collector, "TERM", Duration::from_secs(10));
    assert!(st.success(), "cairn collect exited with {st}");
    let mut f = std::fs::OpenOptions::new().append(true).open(logs.join("app.log")).unwrap();
    writeln!(f, "three").unwrap();
    drop(f);
    let collector = start_collect(&url, &cfg, &state);
    wait_for("the appended line", || lines(&c).len() >= 3);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lines(&c), ["one", "two", "three"], "no line lost or repeated across the restart");
    let st = stop_child(collector, "TERM", Duration::from_secs(10));
    assert!(st.success());
    c.stop();
}
