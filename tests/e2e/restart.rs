//! What was acknowledged survives a graceful restart and a SIGKILL.

use crate::harness::{Cairn, now_ns};

fn push_both(c: &Cairn, tag: &str, t0: i64) {
    let lines: Vec<(i64, String)> = (0..50).map(|i| (t0 + i, format!("{tag} {i}"))).collect();
    let (s, b) = c.push_logs_json(&[(&[("job", tag)], lines)]);
    assert_eq!(s, 204, "{b}");
    let samples: Vec<(i64, f64)> = (0..50).map(|i| (t0 / 1_000_000 + i * 1000, i as f64)).collect();
    let (s, b) = c.remote_write(&[(&[("__name__", "restart_metric"), ("tag", tag)], samples)]);
    assert_eq!(s, 204, "{b}");
}

fn count_both(c: &Cairn, tag: &str, t0: i64) -> (usize, usize) {
    let lines =
        c.loki_lines(&[("query", &format!(r#"{{job="{tag}"}}"#)), ("start", &(t0 - 1).to_string()), ("limit", "1000")]);
    let start = (t0 / 1_000_000_000).to_string();
    let end = (t0 / 1_000_000_000 + 49).to_string();
    let (s, v) = c.prom(
        "/api/v1/query_range",
        &[("query", &format!(r#"restart_metric{{tag="{tag}"}}"#)), ("start", &start), ("end", &end), ("step", "1")],
    );
    assert_eq!(s, 200, "{v}");
    let points =
        v["data"]["result"].as_array().unwrap().first().map(|s| s["values"].as_array().unwrap().len()).unwrap_or(0);
    (lines.len(), points)
}

#[test]
fn survives_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = (now_ns() / 1_000_000_000 - 120) * 1_000_000_000;
    let c = Cairn::serve(dir.path());
    push_both(&c, "graceful", t0);
    assert_eq!(count_both(&c, "graceful", t0), (50, 50));
    c.stop();
    let c = Cairn::serve(dir.path());
    assert_eq!(count_both(&c, "graceful", t0), (50, 50));
    // and keeps accepting writes after the restart
    push_both(&c, "second", t0);
    assert_eq!(count_both(&c, "second", t0), (50, 50));
    c.stop();
}

#[test]
fn survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = (now_ns() / 1_000_000_000 - 120) * 1_000_000_000;
    let c = Cairn::serve(dir.path());
    push_both(&c, "crash", t0);
    c.kill9();
    let c = Cairn::serve(dir.path());
    assert_eq!(count_both(&c, "crash", t0), (50, 50));
    c.stop();
}

#[test]
fn second_process_on_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let (code, _, err) =
        crate::harness::run_cli(&["serve", "--listen", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("in use by another process"), "{err}");
    c.stop();
}
