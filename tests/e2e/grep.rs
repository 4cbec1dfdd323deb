//! The CLI (`cairn grep`, `query`, `tail`, `labels`, `series`,
//! `completions`) run as a real binary against a real server loaded with
//! lines of `../shared/datasets/logs/`, and offline against its data
//! directory: output formats, exit codes, context lines, results equal to
//! the equivalent `query_range`, colour on a terminal (a pty) only.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Cairn, TestStreams, cairn_bin, free_port, now_ns, run_cli};

/// `../shared` (or `CAIRN_SHARED`); `None` (test skipped) when absent,
/// a failure when absent under `CI=true`.
fn shared_logs() -> Option<PathBuf> {
    let root = std::env::var_os("CAIRN_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let dir = root.join("datasets/logs");
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing: the CLI tests need the shared log dataset (set CAIRN_SHARED)",
        dir.display()
    );
    println!("skipped: {} not found (set CAIRN_SHARED)", dir.display());
    None
}

fn read_lines(dir: &std::path::Path, file: &str, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    text.lines().filter(|l| !l.is_empty()).take(n).map(str::to_string).collect()
}

/// A server holding apache access lines in two streams and kafka server
/// lines in one, spread over the last 40 minutes; returns it and the base
/// timestamp.
fn loaded(data: &std::path::Path, logs: &std::path::Path) -> (Cairn, i64) {
    let c = Cairn::serve(data);
    let apache = read_lines(logs, "elastic-apache-access.log", 2000);
    let kafka = read_lines(logs, "elastic-kafka-server.log", 600);
    let base = now_ns() - 40 * 60 * 1_000_000_000;
    let step = 1_000_000_000; // 1 s
    let mut a0 = Vec::new();
    let mut a1 = Vec::new();
    for (i, l) in apache.iter().enumerate() {
        let e = (base + i as i64 * step, l.clone());
        if i % 2 == 0 { a0.push(e) } else { a1.push(e) }
    }
    let k: Vec<(i64, String)> =
        kafka.iter().enumerate().map(|(i, l)| (base + i as i64 * step + 500_000_000, l.clone())).collect();
    let streams: &TestStreams<'_> = &[
        (&[("job", "apache"), ("host", "a")], a0),
        (&[("job", "apache"), ("host", "b")], a1),
        (&[("job", "kafka"), ("host", "a")], k),
    ];
    let (st, body) = c.push_logs_json(streams);
    assert_eq!(st, 204, "{body}");
    (c, base)
}

fn cli(c: &Cairn, args: &[&str]) -> (i32, String, String) {
    let mut v: Vec<&str> = args.to_vec();
    if !["grep", "query", "labels", "series", "tail"].contains(&v[0]) {
        v.insert(0, "grep");
    }
    v.extend(["--addr", &c.url]);
    run_cli(&v)
}

/// (labels JSON, ts, line) of `cairn grep --json` output.
fn grep_json(out: &str) -> Vec<(String, i64, String)> {
    out.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            (
                v["labels"].to_string(),
                v["ts"].as_str().unwrap().parse().unwrap(),
                v["line"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The same query through query_range, forward, oldest first.
fn api_lines(c: &Cairn, query: &str, start: i64, end: i64) -> Vec<(String, i64, String)> {
    let (s, e) = (start.to_string(), end.to_string());
    let mut v =
        c.loki_lines(&[("query", query), ("start", &s), ("end", &e), ("limit", "5000"), ("direction", "forward")]);
    // `cairn grep` prints stream labels; the API's uncategorized streams also
    // carry structured metadata (the ingest-time `detected_level`).
    for l in &mut v {
        let mut labels: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&l.0).unwrap();
        labels.remove("detected_level");
        l.0 = serde_json::Value::Object(labels).to_string();
    }
    v.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    v
}

#[test]
fn grep_is_query_range_with_grep_exit_codes() {
    let Some(logs) = shared_logs() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (c, base) = loaded(dir.path(), &logs);
    let (start, end) = (base - 60_000_000_000, now_ns() + 60_000_000_000);
    let (from, to) = ((start / 1_000_000_000).to_string(), (end / 1_000_000_000).to_string());
    let (start, end) = (start / 1_000_000_000 * 1_000_000_000, end / 1_000_000_000 * 1_000_000_000);
    let range = ["--from", &from, "--to", &to];

    for (args, logql) in [
        (vec!["Googlebot", "{job=\"apache\"}"], r#"{job="apache"} |~ "Googlebot""#),
        (vec!["-F", "-i", "googlebot/2.1", "{job=\"apache\"}"], r#"{job="apache"} |~ "(?i)googlebot/2\\.1""#),
        (vec!["-v", "GET", "-l", "job=apache", "-l", "host=b"], r#"{job="apache", host="b"} !~ "GET""#),
        (vec!["-w", "INFO", "{host=\"a\"}"], r#"{host="a"} |~ "\\b(?:INFO)\\b""#),
    ] {
        let mut a = args.clone();
        a.extend(["--logql"]);
        a.extend(range);
        let (code, out, err) = cli(&c, &a);
        assert_eq!((code, out.trim()), (0, logql), "{args:?}: {err}");
        let mut a = args.clone();
        a.extend(["--json"]);
        a.extend(range);
        let (code, out, err) = cli(&c, &a);
        assert_eq!(code, 0, "{args:?}: {err}");
        let got = grep_json(&out);
        let want = api_lines(&c, logql, start, end);
        assert!(!want.is_empty(), "{logql} matched nothing");
        assert_eq!(got, want, "{args:?}");
        // -c: the same count, per stream
        let mut a = args.clone();
        a.extend(["-c", "--json"]);
        a.extend(range);
        let (code, out, err) = cli(&c, &a);
        assert_eq!(code, 0, "{args:?}: {err}");
        let total: u64 =
            out.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["count"].as_u64().unwrap()).sum();
        assert_eq!(total as usize, want.len(), "{args:?} -c: {out}");
    }

    // No selector: every stream (apache and kafka lines alike).
    let (code, out, err) = cli(&c, &["--json", "-i", "(googlebot|kafka)", "--since", "2h"]);
    assert_eq!(code, 0, "{err}");
    let jobs: std::collections::BTreeSet<String> = grep_json(&out).into_iter().map(|x| x.0).collect();
    assert!(jobs.iter().any(|j| j.contains("kafka")) && jobs.iter().any(|j| j.contains("apache")), "{jobs:?}");

    // Output forms.
    let (code, out, _) = cli(&c, &["-m", "3", "Googlebot", "{job=\"apache\"}", "--since", "2h"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].contains(" {host=\"a\", job=\"apache\", service_name=\"apache\"} ")
            || lines[0].contains(" {host=\"b\", job=\"apache\", service_name=\"apache\"} "),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "colour codes in piped output");
    let (_, out, _) = cli(&c, &["-m", "3", "--only-line", "Googlebot", "{job=\"apache\"}", "--since", "2h"]);
    assert!(out.lines().all(|l| l.contains("Googlebot") && !l.starts_with("20")), "{out}");
    let (_, out, _) = cli(&c, &["-m", "1", "--no-labels", "Googlebot", "{job=\"apache\"}", "--since", "2h"]);
    assert!(!out.contains("job=") && out.starts_with("20"), "{out}");

    // Exit codes and errors a person can act on.
    let (code, out, err) = cli(&c, &["-q", "Googlebot", "--since", "2h"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let (code, out, err) = cli(&c, &["no-such-token-anywhere", "{job=\"apache\"}", "--since", "2h"]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(!err.contains("no log data"), "{err}");
    let (code, _, err) = cli(&c, &["x", "{job=\"nobody\"}"]);
    assert_eq!(code, 1);
    assert!(err.contains("no log data in range") && err.contains("{job=\"nobody\"}"), "{err}");
    let (code, _, err) = cli(&c, &["a(b"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid pattern") && err.contains('^'), "{err}");
    let (code, _, err) = cli(&c, &["x", "{job~\"a\"}"]);
    assert_eq!(code, 2);
    assert!(err.contains("col 5") && err.contains("    ^"), "{err}");
    let port = free_port();
    let dead = format!("http://127.0.0.1:{port}");
    let (code, _, err) = run_cli(&["grep", "x", "{job=\"a\"}", "--addr", &dead]);
    assert_eq!(code, 2);
    assert!(err.contains(&dead) && err.contains("refused"), "{err}");
    c.stop();
}

#[test]
fn context_lines_come_from_the_same_stream_as_grep_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let base = now_ns() - 10 * 60 * 1_000_000_000;
    let text: Vec<String> = (0..100)
        .map(|i| if [10, 12, 50, 51, 98].contains(&i) { format!("line {i} MATCH") } else { format!("line {i}") })
        .collect();
    // Another stream interleaved in time, also matching: its lines must not
    // show up as context of the first stream's matches.
    let other: Vec<(i64, String)> = (0..100).map(|i| (base + i * 1_000_000 + 1, format!("other {i} MATCH"))).collect();
    let streams: &TestStreams<'_> = &[
        (&[("job", "ctx")], text.iter().enumerate().map(|(i, l)| (base + i as i64 * 1_000_000, l.clone())).collect()),
        (&[("job", "noise")], other),
    ];
    assert_eq!(c.push_logs_json(streams).0, 204);
    let file = dir.path().join("lines.txt");
    std::fs::write(&file, text.join("\n") + "\n").unwrap();
    for opts in [["-C", "2"], ["-A", "1"], ["-B", "3"], ["-C", "0"]] {
        let want = Command::new("grep").args(opts).arg("MATCH").arg(&file).output().expect("grep");
        let (code, out, err) = cli(&c, &[opts[0], opts[1], "--only-line", "MATCH", "{job=\"ctx\"}"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, String::from_utf8_lossy(&want.stdout), "{opts:?}");
    }
    // With timestamps: matches marked ':' and context '-', as grep marks them with file names.
    let (_, out, _) = cli(&c, &["-A", "1", "-m", "1", "--no-labels", "MATCH", "{job=\"ctx\"}"]);
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l.len(), 2, "{out}");
    assert!(l[0].ends_with("Z:line 10 MATCH") && l[1].ends_with("Z-line 11"), "{out}");
    c.stop();
}

/// Every file under `dir` with size and modification time.
fn snapshot(dir: &std::path::Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), m.len(), m.modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn offline_mode_reads_a_live_and_a_crashed_data_directory() {
    let Some(logs) = shared_logs() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = loaded(dir.path(), &logs);
    let t = (now_ns() / 1_000_000_000).to_string();
    let series: &crate::harness::TestSeries<'_> =
        &[(&[("__name__", "up"), ("job", "node")], vec![(now_ns() / 1_000_000 - 1000, 1.0)])];
    assert_eq!(c.remote_write(series).0, 204);
    let d = dir.path().to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["grep", "--json", "-i", "googlebot|info", "--since", "2h", "--to", &t],
        vec!["grep", "-c", "GET", "{job=\"apache\"}", "--since", "2h", "--to", &t],
        vec!["grep", "-C", "1", "-m", "5", "Googlebot", "{host=\"b\"}", "--since", "2h", "--to", &t],
        vec!["query", "sum by (host) (count_over_time({job=~\".+\"} |= \"GET\" [2h]))", "--time", &t, "--json"],
        vec!["query", "up", "--time", &t, "--csv"],
        vec!["labels", "--since", "2h"],
        vec!["labels", "host", "--since", "2h"],
        vec!["series", "{host=\"a\"}", "--since", "2h"],
    ];
    let online: Vec<String> = cases
        .iter()
        .map(|a| {
            let (code, out, err) = cli(&c, a);
            assert_eq!(code, 0, "{a:?}: {err}");
            assert!(!out.is_empty(), "{a:?}");
            out
        })
        .collect();
    // While the server runs (and holds its lock): same answers, nothing changed.
    let before = snapshot(dir.path());
    for (a, want) in cases.iter().zip(&online) {
        let mut v = a.clone();
        v.extend(["--data-dir", d]);
        let (code, out, err) = run_cli(&v);
        assert_eq!(code, 0, "{a:?}: {err}");
        assert_eq!(&out, want, "{a:?} offline differs");
    }
    assert_eq!(snapshot(dir.path()), before, "offline reads changed the data directory");
    // After a crash (kill -9: nothing flushed, the WAL holds it all).
    c.kill9();
    let before = snapshot(dir.path());
    for (a, want) in cases.iter().zip(&online) {
        let mut v = a.clone();
        v.extend(["--data-dir", d]);
        let (code, out, err) = run_cli(&v);
        assert_eq!(code, 0, "{a:?}: {err}");
        assert_eq!(&out, want, "{a:?} after a crash differs");
    }
    assert_eq!(snapshot(dir.path()), before, "offline reads changed the crashed data directory");
    let (code, _, err) = run_cli(&["grep", "x", "--data-dir", "/nonexistent/cairn-data"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/cairn-data") && err.contains("does not exist"), "{err}");
}

/// Runs `cairn args…` with stdout on a pseudo-terminal; returns what it wrote.
fn run_on_pty(args: &[&str]) -> String {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two descriptors we then own.
    let r = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(r, 0, "openpty failed");
    // SAFETY: fresh descriptors from openpty, owned from here on.
    let (master, slave) = unsafe { (std::fs::File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut child = Command::new(cairn_bin())
        .args(args)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::from(slave))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut master = master;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // EIO once the child (the last holder of the slave side) exits.
        while let Ok(n) = master.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf
    });
    assert!(child.wait().unwrap().success());
    String::from_utf8_lossy(&reader.join().unwrap()).into_owned()
}

#[test]
fn colour_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let streams: &TestStreams<'_> = &[(&[("job", "c")], vec![(now_ns() - 1_000_000_000, "an error here".to_string())])];
    assert_eq!(c.push_logs_json(streams).0, 204);
    let out = run_on_pty(&["grep", "error", "{job=\"c\"}", "--addr", &c.url]);
    assert!(out.contains("an \x1b[1;31merror\x1b[0m here"), "{out:?}");
    let (_, piped, _) = cli(&c, &["grep", "error", "{job=\"c\"}"]);
    assert!(piped.ends_with("an error here\n") && !piped.contains('\x1b'), "{piped:?}");
    let (_, forced, _) = cli(&c, &["grep", "--color", "always", "error", "{job=\"c\"}"]);
    assert!(forced.contains("\x1b[1;31merror"), "{forced:?}");
    c.stop();
}

#[test]
fn query_labels_series_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let now_ms = now_ns() / 1_000_000;
    let series: &crate::harness::TestSeries<'_> = &[
        (&[("__name__", "up"), ("job", "node"), ("instance", "a:9100")], vec![(now_ms - 1000, 1.0)]),
        (&[("__name__", "up"), ("job", "node"), ("instance", "b:9100")], vec![(now_ms - 1000, 0.0)]),
    ];
    assert_eq!(c.remote_write(series).0, 204);
    let streams: &TestStreams<'_> = &[(
        &[("job", "web"), ("level", "info")],
        (0..10).map(|i| (now_ns() - (10 - i) * 1_000_000_000, format!("GET /x{i}"))).collect(),
    )];
    assert_eq!(c.push_logs_json(streams).0, 204);
    let t = (now_ms / 1000).to_string();

    let (code, out, err) = cli(&c, &["query", "up", "--time", &t]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert!(rows[0].starts_with("__NAME__") && rows[0].contains("INSTANCE") && rows[0].ends_with("VALUE"), "{out}");
    assert_eq!(rows.len(), 3, "{out}");
    let (_, out, _) = cli(&c, &["query", "sum(up)", "--time", &t, "--csv"]);
    assert!(out.starts_with("time,value\n") && out.trim_end().ends_with(",1"), "{out}");
    // JSON equals the API's data.
    let (_, out, _) = cli(&c, &["query", "up", "--time", &t, "--json"]);
    let got: Value = serde_json::from_str(&out).unwrap();
    let (_, api) = c.prom("/api/v1/query", &[("query", "up"), ("time", &t)]);
    let norm = |v: &Value| {
        let mut r: Vec<String> = v["result"].as_array().unwrap().iter().map(|x| x.to_string()).collect();
        r.sort();
        r
    };
    assert_eq!(norm(&got), norm(&api["data"]));
    // LogQL detected; metric and log queries.
    let (code, out, err) = cli(&c, &["query", "count_over_time({job=\"web\"}[1m])", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"10\""), "{out}");
    let (_, out, _) = cli(&c, &["query", "{job=\"web\"} |= \"GET\"", "--limit", "3", "--only-line"]);
    assert_eq!(out, "GET /x9\nGET /x8\nGET /x7\n");
    let (_, out, _) = cli(&c, &["query", "{job=\"web\"}", "--limit", "2", "--forward", "--only-line"]);
    assert_eq!(out, "GET /x0\nGET /x1\n");
    // Both parsers accept `rate({…}[1m])`: the language whose data the
    // selector matches wins.
    let (_, out, _) = cli(&c, &["query", "rate({job=\"web\"}[1m])", "--json"]);
    assert!(out.contains("\"level\":\"info\"") && out.contains("0.16666"), "{out}");
    let (_, out, _) = cli(&c, &["query", "count_over_time({job=\"node\"}[5m])", "--json"]);
    assert!(out.contains("\"instance\":\"a:9100\"") && out.contains("\"1\""), "{out}");
    let (code, _, err) = cli(&c, &["query", "sum(rate({job=\"web\"} |= [1m]))"]);
    assert_eq!(code, 2);
    assert!(err.contains("col"), "{err}");
    // Range query over PromQL: a matrix table, one row per point.
    let (code, out, err) = cli(&c, &["query", "up", "--range", "2m", "--step", "1m", "--csv", "--to", &t]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("__name__,instance,job,time,value\n"), "{out}");

    let (_, out, _) = cli(&c, &["labels"]);
    for l in ["__name__", "instance", "job", "level"] {
        assert!(out.lines().any(|x| x == l), "{l} missing: {out}");
    }
    let (_, out, _) = cli(&c, &["labels", "job", "--logs"]);
    assert_eq!(out, "web\n");
    let (_, out, _) = cli(&c, &["labels", "job", "--metrics"]);
    assert_eq!(out, "node\n");
    let (_, out, _) = cli(&c, &["series", "up"]);
    assert_eq!(out, "up{instance=\"a:9100\", job=\"node\"}\nup{instance=\"b:9100\", job=\"node\"}\n");
    let (_, out, _) = cli(&c, &["series", "{job=\"web\"}"]);
    assert_eq!(out, "{job=\"web\", level=\"info\", service_name=\"web\"}\n");

    let (code, out, _) = run_cli(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("cairn") && out.contains("grep") && out.contains("--data-dir"),
        "{}",
        &out[..200.min(out.len())]
    );
    let (code, out, _) = run_cli(&["completions", "zsh"]);
    assert_eq!(code, 0);
    assert!(out.contains("#compdef cairn"));
    c.stop();
}

#[test]
fn tail_follows_and_resumes_after_a_server_restart_without_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let c = Cairn::start_on(&listen, &["serve"], dir.path(), &[]);
    let push = |c: &Cairn, from: i64, n: i64| {
        let t = now_ns();
        let s: &TestStreams<'_> =
            &[(&[("job", "t")], (from..from + n).map(|i| (t + i - from, format!("tail line {i}"))).collect())];
        assert_eq!(c.push_logs_json(s).0, 204);
    };
    push(&c, 0, 3);
    let mut child = Command::new(cairn_bin())
        .args(["tail", "{job=\"t\"}", "--only-line", "--addr", &c.url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let wait_for = |n: usize, got: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.len() < n && Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                got.push(l);
            }
        }
    };
    wait_for(3, &mut got);
    push(&c, 3, 2);
    wait_for(5, &mut got);
    // Restart the server on the same address: tail reconnects and resumes.
    c.stop();
    let c = Cairn::start_on(&listen, &["serve"], dir.path(), &[]);
    push(&c, 5, 2);
    wait_for(7, &mut got);
    // A little longer: nothing is printed twice.
    std::thread::sleep(Duration::from_millis(1500));
    while let Ok(l) = rx.try_recv() {
        got.push(l);
    }
    let want: Vec<String> = (0..7).map(|i| format!("tail line {i}")).collect();
    // Ctrl-C: a clean stop with grep's 130.
    let st = crate::harness::stop_child(child, "INT", Duration::from_secs(5));
    assert_eq!(got, want);
    assert_eq!(st.code(), Some(130), "{st}");
    c.stop();
}

#[test]
fn every_cli_subcommand_has_help() {
    let (_, top, _) = run_cli(&["--help"]);
    for sub in ["grep", "query", "tail", "labels", "series", "completions"] {
        assert!(top.contains(sub), "top-level help lacks {sub}: {top}");
        let (code, out, err) = run_cli(&[sub, "--help"]);
        assert_eq!(code, 0, "{sub} --help: {err}");
        assert!(out.contains("Usage") && (sub == "completions" || out.contains("--data-dir")), "{out}");
    }
    // A usage error is exit 2, as grep.
    let (code, _, err) = run_cli(&["grep"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("PATTERN"), "{err}");
}

#[test]
fn grep_pages_within_a_smaller_server_entry_limit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[query]\nmax_entries_limit = 50\n").unwrap();
    let c = Cairn::start(&["serve"], &dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    let base = now_ns() - 60_000_000_000;
    // 130 lines, some sharing a timestamp across a page boundary.
    let entries: Vec<(i64, String)> = (0..130).map(|i| (base + (i / 3) * 1_000_000, format!("entry {i:03}"))).collect();
    assert_eq!(c.push_logs_json(&[(&[("job", "p")], entries)]).0, 204);
    let (code, out, err) = cli(&c, &["--only-line", "entry", "{job=\"p\"}"]);
    assert_eq!(code, 0, "{err}");
    let want: String = (0..130).map(|i| format!("entry {i:03}\n")).collect();
    assert_eq!(out, want);
    c.stop();
}
