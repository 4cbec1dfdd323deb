//! `cairn collect` tailing Kubernetes pod logs (CRI format, as kubelet
//! writes them) into a separate `cairn serve`, under the failures a node
//! sees: rotation while the container writes, the collector killed
//! mid-file, the aggregator stopped during writes. Each test asserts, by
//! querying the aggregator's Loki API, that every line arrived exactly once.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{Cairn, cairn_bin, free_port, now_ns, stop_child};

const NS: &str = "shop";
const POD_DIR: &str = "shop_web-5f7c_9a8b7c6d-0000-1111-2222-333344445555";

/// A pod log directory and the collector configuration following it.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new(extra: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pods")).unwrap();
        let cfg = format!(
            "[collector]\nhost = \"h\"\npoll_interval = \"50ms\"\nbatch_wait = \"50ms\"\nbatch_max_bytes = \"16KiB\"\nfiles = []\n{extra}\n\
             [collector.node]\nenabled = false\n\n\
             [collector.pods]\nenabled = true\nroot = \"{}\"\nnode = \"node-a\"\n",
            dir.path().join("pods").display()
        );
        std::fs::write(dir.path().join("collect.toml"), cfg).unwrap();
        Node { dir }
    }

    fn container(&self, name: &str) -> PathBuf {
        let d = self.dir.path().join("pods").join(POD_DIR).join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn collect(&self, url: &str) -> Collector {
        Collector(Some(self.spawn(url)))
    }

    fn spawn(&self, url: &str) -> Child {
        Command::new(cairn_bin())
            .args(["collect", "--push-url", url, "--config"])
            .arg(self.dir.path().join("collect.toml"))
            .arg("--data-dir")
            .arg(self.dir.path().join("state"))
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn cairn collect")
    }
}

/// A running `cairn collect`, killed if the test fails.
struct Collector(Option<Child>);

impl Collector {
    /// SIGTERM, asserting a clean exit.
    fn stop(mut self) {
        let c = self.0.take().unwrap();
        assert!(stop_child(c, "TERM", Duration::from_secs(10)).success());
    }

    /// SIGKILL: the crash case.
    fn kill9(mut self) {
        let mut c = self.0.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
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

/// How a writer rotates its file.
#[derive(Clone, Copy)]
enum Rotate {
    /// kubelet: rename `0.log` to `0.log.<n>`, continue in a new `0.log`.
    Rename,
    /// logrotate's copytruncate: copy to `0.log.<n>`, truncate `0.log`.
    CopyTruncate,
}

/// Writes `n` lines `<container> line <i>` in CRI format into
/// `<dir>/0.log`, every 5th split into a `P` and an `F` part and every 7th
/// on stderr, rotating every `every` lines, pausing 3 ms every 10 lines. Returns
/// the expected lines.
fn write_cri(dir: &Path, name: &str, n: usize, every: usize, rotate: Rotate, stop: Arc<AtomicBool>) -> Vec<String> {
    let base = now_ns() - 120_000_000_000;
    let file = dir.join("0.log");
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(&file).unwrap();
    let mut want = Vec::new();
    for i in 0..n {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if i > 0 && i % every == 0 {
            let to = dir.join(format!("0.log.{i}"));
            match rotate {
                Rotate::Rename => {
                    std::fs::rename(&file, &to).unwrap();
                    out = std::fs::OpenOptions::new().create(true).append(true).open(&file).unwrap();
                }
                Rotate::CopyTruncate => {
                    std::fs::copy(&file, &to).unwrap();
                    out.set_len(0).unwrap();
                }
            }
        }
        let ts = cairn_wire::time::format_rfc3339_ns(base + i as i64 * 1000);
        let stream = if i % 7 == 0 { "stderr" } else { "stdout" };
        let line = format!("{name} line {i:05}");
        if i % 5 == 0 {
            let (a, b) = line.split_at(4);
            write!(out, "{ts} {stream} P {a}\n{ts} {stream} F {b}\n").unwrap();
        } else {
            writeln!(out, "{ts} {stream} F {line}").unwrap();
        }
        want.push(line);
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    want
}

/// Every line of the container `name` stored in the aggregator, sorted,
/// after checking the stream labels.
fn stored(c: &Cairn, name: &str) -> Vec<String> {
    let q = format!(r#"{{namespace="{NS}", container="{name}"}}"#);
    let start = (now_ns() - 600_000_000_000).to_string();
    let end = (now_ns() + 60_000_000_000).to_string();
    let v = c.loki_query_range(&[("query", &q), ("start", &start), ("end", &end), ("limit", "5000")]);
    let mut lines = Vec::new();
    for s in v["data"]["result"].as_array().unwrap() {
        let l = &s["stream"];
        assert_eq!(l["pod"], "web-5f7c", "{l}");
        assert_eq!(l["node"], "node-a", "{l}");
        assert_eq!(l["job"], format!("{NS}/{name}"), "{l}");
        assert!(l["stream"] == "stdout" || l["stream"] == "stderr", "{l}");
        for e in s["values"].as_array().unwrap() {
            let line = e[1].as_str().unwrap().to_string();
            let i: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert_eq!(l["stream"] == "stderr", i.is_multiple_of(7), "line {line} in the wrong stream {l}");
            lines.push(line);
        }
    }
    lines.sort();
    lines
}

fn wait_for_all(c: &Cairn, name: &str, want: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = stored(c, name);
        if got.len() >= want.len() {
            // Let late duplicates show up, if any.
            std::thread::sleep(Duration::from_millis(300));
            let got = stored(c, name);
            assert_eq!(got.len(), want.len(), "{name}: lines duplicated");
            assert_eq!(got, want, "{name}: not every line exactly once");
            return;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).take(10).collect();
            panic!("{name}: {} of {} lines after 30s; missing e.g. {missing:?}", got.len(), want.len());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn pod_logs_rotated_while_writing_arrive_exactly_once() {
    let node = Node::new("");
    let agg = Cairn::serve(&node.dir.path().join("agg"));
    let collector = node.collect(&agg.url);
    let stop = Arc::new(AtomicBool::new(false));
    let (d1, d2) = (node.container("api"), node.container("worker"));
    let (s1, s2) = (stop.clone(), stop.clone());
    let w1 = std::thread::spawn(move || write_cri(&d1, "api", 3000, 700, Rotate::Rename, s1));
    let w2 = std::thread::spawn(move || write_cri(&d2, "worker", 1500, 400, Rotate::CopyTruncate, s2));
    let (want1, want2) = (w1.join().unwrap(), w2.join().unwrap());
    wait_for_all(&agg, "api", &sorted(want1));
    wait_for_all(&agg, "worker", &sorted(want2));
    collector.stop();
    agg.stop();
}

#[test]
fn collector_killed_mid_file_resumes_without_loss_or_duplicates() {
    let node = Node::new("");
    let agg = Cairn::serve(&node.dir.path().join("agg"));
    let dir = node.container("api");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let writer = std::thread::spawn(move || write_cri(&dir, "api", 4000, 1500, Rotate::Rename, s));
    for _ in 0..2 {
        let collector = node.collect(&agg.url);
        std::thread::sleep(Duration::from_millis(600));
        collector.kill9();
        std::thread::sleep(Duration::from_millis(200));
    }
    let collector = node.collect(&agg.url);
    let want = writer.join().unwrap();
    assert!(!stored(&agg, "api").is_empty());
    wait_for_all(&agg, "api", &sorted(want));
    collector.stop();
    agg.stop();
}

#[test]
fn aggregator_stopped_during_writes_gets_every_line_once() {
    let node = Node::new("");
    let listen = format!("127.0.0.1:{}", free_port());
    let agg_dir = node.dir.path().join("agg");
    let agg = Cairn::start_on(&listen, &["serve"], &agg_dir, &[]);
    let collector = node.collect(&agg.url);
    let dir = node.container("api");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let writer = std::thread::spawn(move || write_cri(&dir, "api", 4000, 1000, Rotate::Rename, s));
    std::thread::sleep(Duration::from_millis(400));
    agg.stop();
    // Writes (and rotations) go on while the aggregator is down.
    std::thread::sleep(Duration::from_millis(1200));
    let agg = Cairn::start_on(&listen, &["serve"], &agg_dir, &[]);
    let want = writer.join().unwrap();
    wait_for_all(&agg, "api", &sorted(want));
    collector.stop();
    agg.stop();
}

const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

/// Writes `n` journal entries (export format through the real
/// `systemd-journal-remote`) as the journal file `file`.
fn write_journal(file: &Path, from: usize, n: usize) -> Vec<String> {
    let base_us = (now_ns() / 1000) - 60_000_000;
    let mut export = Vec::new();
    let mut want = Vec::new();
    for i in from..from + n {
        let msg = format!("journal line {i:05}");
        write!(
            export,
            "__REALTIME_TIMESTAMP={}\n_HOSTNAME=node-j\n_SYSTEMD_UNIT={}\nPRIORITY={}\nMESSAGE={msg}\n\n",
            base_us + i as i64,
            if i.is_multiple_of(2) { "app.service" } else { "db.service" },
            if i % 3 == 0 { 3 } else { 6 }
        )
        .unwrap();
        want.push(msg);
    }
    let mut child = Command::new(JOURNAL_REMOTE)
        .arg(format!("--output={}", file.display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&export).unwrap();
    assert!(child.wait().unwrap().success());
    want
}

fn journal_lines(c: &Cairn) -> Vec<String> {
    let start = (now_ns() - 600_000_000_000).to_string();
    let end = (now_ns() + 60_000_000_000).to_string();
    let v = c.loki_query_range(&[
        ("query", r#"{job="systemd-journal"}"#),
        ("start", &start),
        ("end", &end),
        ("limit", "5000"),
    ]);
    let mut out = Vec::new();
    for s in v["data"]["result"].as_array().unwrap() {
        let l = &s["stream"];
        assert_eq!(l["hostname"], "node-j", "{l}");
        for e in s["values"].as_array().unwrap() {
            let line = e[1].as_str().unwrap().to_string();
            let i: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert_eq!(l["unit"], if i.is_multiple_of(2) { "app.service" } else { "db.service" }, "{l} {line}");
            assert_eq!(l["priority"], if i.is_multiple_of(3) { "err" } else { "info" }, "{l} {line}");
            out.push(line);
        }
    }
    out.sort();
    out
}

/// The journal through the real `journalctl`, resumed after the saved
/// cursor across a restart, new journal files followed while running.
#[test]
fn journal_entries_arrive_once_across_a_restart() {
    if !Path::new(JOURNAL_REMOTE).exists() || Command::new("journalctl").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "systemd-journal-remote and journalctl are needed (Debian: systemd-journal-remote)"
        );
        println!("skipped: needs journalctl and {JOURNAL_REMOTE} (Debian package systemd-journal-remote)");
        return;
    }
    let jdir = tempfile::tempdir().unwrap();
    let node = Node::new(&format!(
        "[collector.journal]\nenabled = true\ndirectory = \"{}\"\nmax_age = \"1h\"\n",
        jdir.path().display()
    ));
    let mut want = write_journal(&jdir.path().join("a.journal"), 0, 300);
    let agg = Cairn::serve(&node.dir.path().join("agg"));
    let collector = node.collect(&agg.url);
    let wait = |want: &[String]| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = journal_lines(&agg);
            if got.len() >= want.len() || Instant::now() > deadline {
                std::thread::sleep(Duration::from_millis(300));
                let got = journal_lines(&agg);
                let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).take(5).collect();
                assert!(
                    got == sorted(want.to_vec()),
                    "every journal entry exactly once: got {} of {}, missing e.g. {missing:?}",
                    got.len(),
                    want.len()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait(&want);
    collector.stop();
    // Written while the collector is stopped: read after the saved cursor.
    want.extend(write_journal(&jdir.path().join("b.journal"), 300, 200));
    let collector = node.collect(&agg.url);
    wait(&want);
    collector.stop();
    agg.stop();
}
